/* Fuzz target: a sandbox's network policy as a client gives it (api/sandbox/net_policy.c):
 * E2B's create or updateNetwork body and a Mitos template's "network", from one JSON
 * document. A policy is a firewall: what is accepted must be whole (at most
 * NET_CIDRS_MAX disjoint CIDRs per list, host bits clear), and its record form must
 * read back to the same policy. */
#include <assert.h>
#include <cjson/cJSON.h>
#include <string.h>

#include "api/sandbox/net_policy.h"
#include "tests/fuzz/fuzz.h"

static void check_list(const struct net_cidr *c, unsigned n)
{
	assert(n <= NET_CIDRS_MAX);
	for (unsigned i = 0; i < n; i++) {
		assert(c[i].len <= 32);
		uint32_t mask = c[i].len ? ~0u << (32 - c[i].len) : 0;
		assert((c[i].addr & ~mask) == 0);
		/* Disjoint: none holds another (an interval set takes no overlap). */
		for (unsigned j = 0; j < n; j++) {
			if (i == j)
				continue;
			uint32_t mi = mask;
			assert(!(c[i].len <= c[j].len && (c[j].addr & mi) == c[i].addr));
		}
	}
}

static void check(const struct net_policy *p)
{
	check_list(p->allow, p->nallow);
	check_list(p->deny, p->ndeny);
	cJSON *j = net_policy_json(p);
	struct net_policy q;
	assert(net_policy_from_json(j, &q) == 0);
	cJSON_Delete(j);
	assert(q.internet == p->internet && q.nallow == p->nallow && q.ndeny == p->ndeny);
	assert(!memcmp(q.allow, p->allow, p->nallow * sizeof(p->allow[0])));
	assert(!memcmp(q.deny, p->deny, p->ndeny * sizeof(p->deny[0])));
	cJSON_Delete(net_policy_e2b_json(p));
	cJSON_Delete(net_policy_mitos_json(p));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	cJSON *b = cJSON_ParseWithLength((const char *)data, size);
	if (!b)
		return 0;
	struct net_policy p;
	if (!net_policy_from_e2b(cJSON_GetObjectItemCaseSensitive(b, "allow_internet_access"),
				 cJSON_GetObjectItemCaseSensitive(b, "network"), &p))
		check(&p);
	if (!net_policy_from_mitos(cJSON_GetObjectItemCaseSensitive(b, "network"), &p))
		check(&p);
	if (!net_policy_from_json(b, &p))
		check(&p);
	cJSON_Delete(b);
	return 0;
}

void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	static const char *const seeds[] = {
		"{\"allow_internet_access\":false,\"network\":{\"allowOut\":[\"10.0.0.0/8\",\"10.1.0.0/16\"],"
		"\"denyOut\":[\"0.0.0.0/0\",\"8.8.8.8\"]}}",
		"{\"network\":{\"egress\":\"allow\",\"allow_cidrs\":[\"1.2.3.4/24\",\"1.2.3.0/24\"],\"block\":false}}",
		"{\"internet\":true,\"allow\":[\"192.168.0.0/16\"],\"deny\":[\"1.1.1.1/32\"]}",
		"{\"network\":{\"rules\":{},\"allowOut\":[\"255.255.255.255/32\",\"0.0.0.0/1\",\"128.0.0.0/1\"]}}",
	};
	for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++)
		add(seeds[i], strlen(seeds[i]));
}
