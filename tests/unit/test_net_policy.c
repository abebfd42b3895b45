/* Sandbox network policies (api/sandbox/net_policy.c): the CIDRs accepted, E2B's
 * allowInternetAccess/allowOut/denyOut and the Mitos template posture mapped onto one
 * policy, and the record form read back. Hostile strings must be refused, never
 * half-read: a policy is a firewall. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/sandbox/net_policy.h"

static const char *fmt(const struct net_cidr *c)
{
	static char s[24];
	net_cidr_format(c, s, sizeof(s));
	return s;
}

START_TEST(cidrs)
{
	struct net_cidr c;
	ck_assert_int_eq(net_cidr_parse("1.1.1.1", &c), 0);
	ck_assert_str_eq(fmt(&c), "1.1.1.1/32");
	ck_assert_int_eq(net_cidr_parse("10.1.2.3/8", &c), 0);
	ck_assert_str_eq(fmt(&c), "10.0.0.0/8"); /* host bits cleared */
	ck_assert_int_eq(net_cidr_parse("0.0.0.0/0", &c), 0);
	ck_assert_uint_eq(c.len, 0);
	const char *bad[] = { "", "1.1.1", "1.1.1.1/33", "1.1.1.1/", "1.1.1.1/-1", "1.1.1.1/08", "01.1.1.1",
			      "1.1.1.256", "::1", "fe80::/10", "example.com", "1.1.1.1 ", " 1.1.1.1", "1.1.1.1/3x",
			      "0x1.1.1.1", "1.1.1.1/32/1", "255.255.255.255255" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(net_cidr_parse(bad[i], &c) != 0, "accepted '%s'", bad[i]);
}
END_TEST

static const char *e2b(const char *body, struct net_policy *p)
{
	cJSON *b = cJSON_Parse(body);
	ck_assert_ptr_nonnull(b);
	const char *msg = net_policy_from_e2b(cJSON_GetObjectItem(b, "allow_internet_access"),
					      cJSON_GetObjectItem(b, "network"), p);
	cJSON_Delete(b);
	return msg;
}

START_TEST(e2b_bodies)
{
	struct net_policy p;
	ck_assert_ptr_null(e2b("{}", &p));
	ck_assert(p.internet && !p.nallow && !p.ndeny); /* E2B's default */
	ck_assert_ptr_null(e2b("{\"allow_internet_access\": false}", &p));
	ck_assert(!net_policy_any(&p));
	ck_assert_ptr_null(e2b("{\"network\": {\"denyOut\": [\"0.0.0.0/0\"], \"allowOut\": [\"1.1.1.1\"]}}", &p));
	ck_assert(!p.internet);
	ck_assert_uint_eq(p.nallow, 1);
	ck_assert_uint_eq(p.ndeny, 0); /* 0.0.0.0/0 is "no internet", not a set entry */
	ck_assert(net_policy_any(&p));
	ck_assert_ptr_null(e2b("{\"network\": {\"denyOut\": [\"8.8.8.8\", \"9.9.0.0/16\"]}}", &p));
	ck_assert(p.internet);
	ck_assert_uint_eq(p.ndeny, 2);
	ck_assert_ptr_null(e2b("{\"network\": {\"rules\": {}, \"allowPublicTraffic\": true}}", &p));
	const char *bad[] = { "{\"allow_internet_access\": 1}", "{\"network\": []}",
			      "{\"network\": {\"allowOut\": \"1.1.1.1\"}}", "{\"network\": {\"allowOut\": [1]}}",
			      "{\"network\": {\"allowOut\": [\"pypi.org\"]}}", "{\"network\": {\"denyOut\": [\"::/0\"]}}",
			      "{\"network\": {\"rules\": {\"a.com\": []}}}", "{\"network\": {\"egressProxy\": {}}}" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(e2b(bad[i], &p) != NULL, "accepted %s", bad[i]);
	/* At most NET_CIDRS_MAX entries. */
	char body[8192] = "{\"network\": {\"allowOut\": [";
	for (int i = 0; i <= NET_CIDRS_MAX; i++)
		snprintf(body + strlen(body), sizeof(body) - strlen(body), "%s\"1.1.%d.1\"", i ? "," : "", i);
	strcat(body, "]}}");
	ck_assert_ptr_nonnull(e2b(body, &p));
}
END_TEST

static const char *mitos(const char *net, struct net_policy *p)
{
	cJSON *n = cJSON_Parse(net);
	ck_assert_ptr_nonnull(n);
	const char *msg = net_policy_from_mitos(n, p);
	cJSON_Delete(n);
	return msg;
}

START_TEST(mitos_postures)
{
	struct net_policy p;
	ck_assert_ptr_null(net_policy_from_mitos(NULL, &p));
	ck_assert(!net_policy_any(&p)); /* the secure default */
	ck_assert_ptr_null(mitos("{\"egress\": \"allow\", \"inbound\": \"deny\"}", &p));
	ck_assert(p.internet);
	ck_assert_ptr_null(mitos("{\"egress\": \"allow\", \"block\": true, \"allow_cidrs\": [\"1.0.0.0/8\"]}", &p));
	ck_assert(!net_policy_any(&p)); /* block wins */
	ck_assert_ptr_null(mitos("{\"allow_cidrs\": [\"1.0.0.0/8\"], \"allow_domains\": []}", &p));
	ck_assert(!p.internet && p.nallow == 1);
	cJSON *j = net_policy_mitos_json(&p);
	char *s = cJSON_PrintUnformatted(j);
	ck_assert_str_eq(s, "{\"egress\":\"deny\",\"inbound\":\"deny\",\"allow_cidrs\":[\"1.0.0.0/8\"]}");
	free(s);
	cJSON_Delete(j);
	const char *bad[] = { "[]", "{\"egress\": \"open\"}", "{\"egress\": 1}", "{\"inbound\": \"allow\"}",
			      "{\"allow_domains\": [\"pypi.org\"]}", "{\"inbound_cidrs\": [\"1.0.0.0/8\"]}",
			      "{\"allow_cidrs\": [\"x\"]}", "{\"block\": \"yes\"}", "{\"other\": 1}" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(mitos(bad[i], &p) != NULL, "accepted %s", bad[i]);
}
END_TEST

START_TEST(record_round_trip)
{
	struct net_policy p, q;
	ck_assert_ptr_null(e2b("{\"network\": {\"allowOut\": [\"10.0.0.0/8\"], \"denyOut\": [\"8.8.8.8\"]}}", &p));
	cJSON *j = net_policy_json(&p);
	ck_assert_int_eq(net_policy_from_json(j, &q), 0);
	cJSON_Delete(j);
	ck_assert(q.internet == p.internet && q.nallow == 1 && q.ndeny == 1);
	ck_assert_str_eq(fmt(&q.allow[0]), "10.0.0.0/8");
	ck_assert_str_eq(fmt(&q.deny[0]), "8.8.8.8/32");
	j = net_policy_e2b_json(&q);
	char *s = cJSON_PrintUnformatted(j);
	ck_assert_str_eq(s, "{\"allowOut\":[\"10.0.0.0/8\"],\"denyOut\":[\"8.8.8.8/32\"]}");
	free(s);
	cJSON_Delete(j);
	/* A record someone edited into nonsense is refused whole. */
	cJSON *bad = cJSON_Parse("{\"internet\": true, \"allow\": [\"1.1.1.1; drop table\"]}");
	ck_assert_int_ne(net_policy_from_json(bad, &q), 0);
	cJSON_Delete(bad);
	struct net_policy *d = net_policy_dup(&p);
	ck_assert_ptr_nonnull(d);
	ck_assert_uint_eq(d->nallow, 1);
	free(d);
	struct net_policy none = { 0 };
	ck_assert_ptr_null(net_policy_dup(&none));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("net_policy");
	TCase *tc = tcase_create("all");
	tcase_add_test(tc, cidrs);
	tcase_add_test(tc, e2b_bodies);
	tcase_add_test(tc, mitos_postures);
	tcase_add_test(tc, record_round_trip);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
