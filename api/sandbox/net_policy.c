#include "api/sandbox/net_policy.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool net_policy_any(const struct net_policy *p)
{
	return p && (p->internet || p->nallow);
}

struct net_policy *net_policy_dup(const struct net_policy *p)
{
	if (!net_policy_any(p))
		return NULL;
	struct net_policy *c = malloc(sizeof(*c));
	if (c)
		*c = *p;
	return c;
}

int net_cidr_parse(const char *s, struct net_cidr *c)
{
	char buf[32];
	size_t n = strlen(s);
	if (!n || n >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, s, n + 1);
	unsigned len = 32;
	char *slash = strchr(buf, '/');
	if (slash) {
		*slash = 0;
		char *end;
		unsigned long l = strtoul(slash + 1, &end, 10);
		if (!slash[1] || *end || l > 32 || (slash[1] == '0' && slash[2]))
			return -EINVAL;
		len = (unsigned)l;
	}
	struct in_addr a;
	/* inet_pton takes only the four-part dotted quad, no octal or short forms. */
	if (inet_pton(AF_INET, buf, &a) != 1)
		return -EINVAL;
	uint32_t mask = len ? ~0u << (32 - len) : 0;
	c->addr = ntohl(a.s_addr) & mask;
	c->len = (uint8_t)len;
	return 0;
}

void net_cidr_format(const struct net_cidr *c, char *out, size_t n)
{
	uint32_t a = c->addr;
	snprintf(out, n, "%u.%u.%u.%u/%u", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255, c->len);
}

static cJSON *cidrs_json(const struct net_cidr *c, unsigned n)
{
	cJSON *arr = cJSON_CreateArray();
	for (unsigned i = 0; i < n; i++) {
		char s[24];
		net_cidr_format(&c[i], s, sizeof(s));
		cJSON_AddItemToArray(arr, cJSON_CreateString(s));
	}
	return arr;
}

static bool contains(const struct net_cidr *a, const struct net_cidr *b)
{
	uint32_t mask = a->len ? ~0u << (32 - a->len) : 0;
	return a->len <= b->len && (b->addr & mask) == a->addr;
}

/* Two CIDRs are nested or disjoint: without the ones another holds, the list is
 * disjoint (what an interval set takes) and means the same. */
static void cidrs_normalize(struct net_cidr *c, unsigned *n)
{
	unsigned k = 0;
	for (unsigned i = 0; i < *n; i++) {
		bool held = false;
		for (unsigned j = 0; j < *n && !held; j++)
			held = j != i && contains(&c[j], &c[i]) && (c[j].len != c[i].len || j < i);
		if (!held)
			c[k++] = c[i];
	}
	*n = k;
}

/* Appends the strings of arr (NULL: nothing) to c; a message on the first bad one. */
static const char *cidrs_add(const cJSON *arr, const char *what, struct net_cidr *c, unsigned *n)
{
	static char msg[400];
	if (!arr || cJSON_IsNull(arr))
		return NULL;
	if (!cJSON_IsArray(arr)) {
		snprintf(msg, sizeof(msg), "%s must be an array of IPv4 addresses or CIDRs", what);
		return msg;
	}
	const cJSON *v;
	cJSON_ArrayForEach(v, arr) {
		if (*n >= NET_CIDRS_MAX) {
			snprintf(msg, sizeof(msg), "%s has more than %d entries", what, NET_CIDRS_MAX);
			return msg;
		}
		if (!cJSON_IsString(v) || net_cidr_parse(v->valuestring, &c[*n])) {
			snprintf(msg, sizeof(msg), "%s: %.64s is not an IPv4 address or CIDR (a.b.c.d or a.b.c.d/n; "
				 "IPv6 is not routed to sandboxes, and host names need an egress proxy this node "
				 "does not have)", what, cJSON_IsString(v) ? v->valuestring : "(not a string)");
			return msg;
		}
		(*n)++;
	}
	cidrs_normalize(c, n);
	return NULL;
}

cJSON *net_policy_json(const struct net_policy *p)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddBoolToObject(o, "internet", p->internet);
	cJSON_AddItemToObject(o, "allow", cidrs_json(p->allow, p->nallow));
	cJSON_AddItemToObject(o, "deny", cidrs_json(p->deny, p->ndeny));
	return o;
}

int net_policy_from_json(const cJSON *o, struct net_policy *p)
{
	memset(p, 0, sizeof(*p));
	if (!cJSON_IsObject(o))
		return -EINVAL;
	p->internet = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "internet"));
	if (cidrs_add(cJSON_GetObjectItemCaseSensitive(o, "allow"), "allow", p->allow, &p->nallow) ||
	    cidrs_add(cJSON_GetObjectItemCaseSensitive(o, "deny"), "deny", p->deny, &p->ndeny))
		return -EINVAL;
	return 0;
}

static bool is_all(const struct net_cidr *c)
{
	return c->len == 0;
}

const char *net_policy_from_e2b(const cJSON *allow_internet, const cJSON *network, struct net_policy *p)
{
	memset(p, 0, sizeof(*p));
	if (allow_internet && !cJSON_IsNull(allow_internet) && !cJSON_IsBool(allow_internet))
		return "allow_internet_access must be a boolean";
	p->internet = !cJSON_IsFalse(allow_internet);
	if (!network || cJSON_IsNull(network))
		return NULL;
	if (!cJSON_IsObject(network))
		return "network must be an object";
	const char *bad = cidrs_add(cJSON_GetObjectItemCaseSensitive(network, "allowOut"), "network.allowOut",
				    p->allow, &p->nallow);
	if (!bad)
		bad = cidrs_add(cJSON_GetObjectItemCaseSensitive(network, "denyOut"), "network.denyOut", p->deny,
				&p->ndeny);
	if (bad)
		return bad;
	/* Rewriting requests on their way out takes an egress proxy: refused rather than
	 * silently not applied. */
	const cJSON *rules = cJSON_GetObjectItemCaseSensitive(network, "rules");
	if (rules && !cJSON_IsNull(rules) && !(cJSON_IsObject(rules) && !rules->child))
		return "network.rules (request transforms) need an egress proxy, which this node does not have";
	const cJSON *proxy = cJSON_GetObjectItemCaseSensitive(network, "egressProxy");
	if (proxy && !cJSON_IsNull(proxy))
		return "network.egressProxy is not supported on this node";
	/* denyOut 0.0.0.0/0 is "no internet"; what allowOut opens stays open. */
	unsigned k = 0;
	for (unsigned i = 0; i < p->ndeny; i++) {
		if (is_all(&p->deny[i]))
			p->internet = false;
		else
			p->deny[k++] = p->deny[i];
	}
	p->ndeny = k;
	return NULL;
}

cJSON *net_policy_e2b_json(const struct net_policy *p)
{
	cJSON *o = cJSON_CreateObject();
	if (p->nallow)
		cJSON_AddItemToObject(o, "allowOut", cidrs_json(p->allow, p->nallow));
	if (p->ndeny || !p->internet) {
		cJSON *d = cidrs_json(p->deny, p->ndeny);
		if (!p->internet)
			cJSON_AddItemToArray(d, cJSON_CreateString("0.0.0.0/0"));
		cJSON_AddItemToObject(o, "denyOut", d);
	}
	return o;
}

static bool is_allow_deny(const cJSON *v, const char **msg, const char *name)
{
	static char buf[120];
	if (!v || cJSON_IsNull(v))
		return false;
	if (!cJSON_IsString(v) || (strcmp(v->valuestring, "") && strcmp(v->valuestring, "deny") &&
				   strcmp(v->valuestring, "allow"))) {
		snprintf(buf, sizeof(buf), "network.%s must be \"deny\" or \"allow\"", name);
		*msg = buf;
		return false;
	}
	return !strcmp(v->valuestring, "allow");
}

const char *net_policy_from_mitos(const cJSON *net, struct net_policy *p)
{
	memset(p, 0, sizeof(*p));
	if (!net || cJSON_IsNull(net))
		return NULL;
	if (!cJSON_IsObject(net))
		return "network must be an object";
	const char *msg = NULL;
	bool block = false;
	const cJSON *v;
	cJSON_ArrayForEach(v, net) {
		const char *k = v->string;
		if (!strcmp(k, "block")) {
			if (!cJSON_IsBool(v))
				return "network.block must be a boolean";
			block = cJSON_IsTrue(v);
		} else if (!strcmp(k, "egress")) {
			p->internet = is_allow_deny(v, &msg, k);
		} else if (!strcmp(k, "inbound")) {
			if (is_allow_deny(v, &msg, k))
				return "network.inbound \"allow\" cannot be honoured: nothing outside reaches a sandbox "
				       "here (use a preview or a forward to reach its ports)";
		} else if (!strcmp(k, "allow_cidrs")) {
			const char *bad = cidrs_add(v, "network.allow_cidrs", p->allow, &p->nallow);
			if (bad)
				return bad;
		} else if (!strcmp(k, "allow_domains") || !strcmp(k, "inbound_cidrs")) {
			if (!cJSON_IsArray(v))
				return "network allowlists must be arrays of strings";
			if (cJSON_GetArraySize(v))
				return !strcmp(k, "allow_domains")
					       ? "network.allow_domains needs a DNS-enforcing resolver, which this node "
						 "does not have: allow the addresses with allow_cidrs"
					       : "network.inbound_cidrs cannot be honoured: nothing outside reaches a "
						 "sandbox here";
		} else {
			return "network has an unknown field (known: block, egress, allow_domains, allow_cidrs, "
			       "inbound, inbound_cidrs)";
		}
		if (msg)
			return msg;
	}
	if (block)
		memset(p, 0, sizeof(*p));
	return NULL;
}

cJSON *net_policy_mitos_json(const struct net_policy *p)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "egress", p && p->internet ? "allow" : "deny");
	cJSON_AddStringToObject(o, "inbound", "deny");
	if (p && p->nallow)
		cJSON_AddItemToObject(o, "allow_cidrs", cidrs_json(p->allow, p->nallow));
	return o;
}
