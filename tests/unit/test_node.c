/* The node tag (api/sandbox/node.c): which tags are accepted, the ids a node makes (valid
 * sandbox ids that end in their node's tag) and the ids it gives sandboxes whose
 * client chose one. The router (tools/cluster-config) relies on exactly these rules. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/http/errors.h"
#include "api/sandbox/node.h"

START_TEST(tags)
{
	ck_assert(node_tag_valid("n1"));
	ck_assert(node_tag_valid("a"));
	ck_assert(node_tag_valid("0123456789abcdef"));
	ck_assert(!node_tag_valid(NULL));
	ck_assert(!node_tag_valid(""));
	ck_assert(!node_tag_valid("0123456789abcdef0")); /* 17 */
	const char *bad[] = { "N1", "n-1", "n_1", "n.1", "n 1", "n/1", "n\x80", "n1\n" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!node_tag_valid(bad[i]), "accepted %s", bad[i]);
	ck_assert_int_eq(node_set_tag("N1"), -EINVAL);
	ck_assert_str_eq(node_tag(), "");
}
END_TEST

START_TEST(standalone_ids)
{
	char id[80];
	node_new_sandbox_id(id, sizeof(id));
	ck_assert_uint_eq(strlen(id), 19);
	ck_assert(!strncmp(id, "sb-", 3));
	ck_assert(api_valid_id(id));
	char out[80];
	ck_assert_int_eq(node_sandbox_id_for("sandbox-1a2b3c4d", out, sizeof(out)), 0);
	ck_assert_str_eq(out, "sandbox-1a2b3c4d");
}
END_TEST

START_TEST(tagged_ids)
{
	ck_assert_int_eq(node_set_tag("n2"), 0);
	char a[80], b[80];
	node_new_sandbox_id(a, sizeof(a));
	node_new_sandbox_id(b, sizeof(b));
	ck_assert_uint_eq(strlen(a), 22);
	ck_assert(!strncmp(a, "sb-", 3));
	ck_assert_str_eq(a + 19, "-n2");
	ck_assert(api_valid_id(a));
	ck_assert_str_ne(a, b);
	/* Client-chosen ids get the tag unless they carry it already. */
	char out[80];
	const char *in[][2] = { { "sandbox-1a2b3c4d", "sandbox-1a2b3c4d-n2" }, { "mine-n2", "mine-n2" },
				{ "n2", "n2-n2" }, { "mine-n1", "mine-n1-n2" }, { "mine-xn2", "mine-xn2-n2" },
				{ "mine_n2", "mine_n2-n2" } };
	for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
		ck_assert_int_eq(node_sandbox_id_for(in[i][0], out, sizeof(out)), 0);
		ck_assert_str_eq(out, in[i][1]);
		ck_assert(api_valid_id(out));
	}
	/* 61 + "-n2" is 64: still an id; 62 + "-n2" is not. */
	char longid[70];
	memset(longid, 'a', 61);
	longid[61] = 0;
	ck_assert_int_eq(node_sandbox_id_for(longid, out, sizeof(out)), 0);
	ck_assert_uint_eq(strlen(out), 64);
	strcat(longid, "a");
	ck_assert_int_eq(node_sandbox_id_for(longid, out, sizeof(out)), -ENAMETOOLONG);
	ck_assert_int_eq(node_sandbox_id_for("abc", out, 5), -ENAMETOOLONG);
	/* The longest tag still makes ids that fit a DNS label with "-65535". */
	ck_assert_int_eq(node_set_tag("0123456789abcdef"), 0);
	node_new_sandbox_id(a, sizeof(a));
	ck_assert_uint_le(strlen(a) + 6, 63);
	ck_assert(api_valid_id(a));
}
END_TEST

START_TEST(drain)
{
	ck_assert(!node_draining());
	node_set_draining(true);
	ck_assert(node_draining());
	node_set_draining(false);
	ck_assert(!node_draining());
}
END_TEST

int main(void)
{
	Suite *s = suite_create("node");
	TCase *tc = tcase_create("node");
	/* Order matters: the tag is process-wide and set once. */
	tcase_add_test(tc, tags);
	tcase_add_test(tc, standalone_ids);
	tcase_add_test(tc, tagged_ids);
	tcase_add_test(tc, drain);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_NOFORK);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
