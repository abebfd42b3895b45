/* What a sandbox may reach on the network (egress only: nothing outside reaches a
 * sandbox unless it answers the sandbox's own connection). IPv4; the node's own
 * addresses are never reachable, its DNS resolvers always are once a sandbox has an
 * interface (api/engines/sandbox_net.c enforces it). Both APIs map onto it: E2B's
 * allow_internet_access and network.allowOut/denyOut, the Mitos template's network
 * posture (egress, allow_cidrs, block). */
#ifndef MITOS_API_NET_POLICY_H
#define MITOS_API_NET_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cJSON;

#define NET_CIDRS_MAX 64

struct net_cidr {
	uint32_t addr; /* host byte order, host bits cleared */
	uint8_t len;
};

struct net_policy {
	/* Public IPv4 addresses (not private or special ranges) not in deny. */
	bool internet;
	/* Checked in order: allow (any range, private ones included), then deny. */
	unsigned nallow, ndeny;
	struct net_cidr allow[NET_CIDRS_MAX], deny[NET_CIDRS_MAX];
};

/* Anything at all reachable: the sandbox needs an interface. */
bool net_policy_any(const struct net_policy *p);

/* A heap copy of p when it lets anything through, else NULL. */
struct net_policy *net_policy_dup(const struct net_policy *p);

/* "a.b.c.d" or "a.b.c.d/len": 0, or -EINVAL (also for IPv6 and names). */
int net_cidr_parse(const char *s, struct net_cidr *c);
void net_cidr_format(const struct net_cidr *c, char *out, size_t n);

/* The record form, {"internet": bool, "allow": [...], "deny": [...]}, and back
 * (-EINVAL for a malformed record). */
struct cJSON *net_policy_json(const struct net_policy *p);
int net_policy_from_json(const struct cJSON *o, struct net_policy *p);

/* E2B's create body: allow_internet_access (false is denyOut 0.0.0.0/0) and network
 * {allowOut, denyOut, ...}; allowOut wins over denyOut, as on E2B. NULL, or why the
 * request cannot be honoured (a message for a 400). */
const char *net_policy_from_e2b(const struct cJSON *allow_internet, const struct cJSON *network,
				struct net_policy *p);
/* E2B's view: allowOut/denyOut as given (0.0.0.0/0 in denyOut for no internet). */
struct cJSON *net_policy_e2b_json(const struct net_policy *p);

/* A Mitos template's "network" ({block, egress, allow_cidrs, allow_domains, inbound,
 * inbound_cidrs}; absent: deny everything). NULL, or why it cannot be honoured. */
const char *net_policy_from_mitos(const struct cJSON *network, struct net_policy *p);
/* The posture the Mitos API reports: {"egress", "inbound": "deny", "allow_cidrs"?}. */
struct cJSON *net_policy_mitos_json(const struct net_policy *p);

#endif
