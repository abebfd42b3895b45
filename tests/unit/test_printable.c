/* Untrusted text made printable (lib/printable.c): what reaches serve's log and clients'
 * errors from an agent, a console or a VMM. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "lib/printable.h"

START_TEST(controls_and_high_bytes)
{
	char out[64];
	const char in[] = "a\nb\r\x1b[31m\x7f\x80\xff~ ";
	ck_assert_uint_eq(printable_copy(out, sizeof(out), in, sizeof(in) - 1, 0), 14);
	ck_assert_str_eq(out, "a?b??[31m???~ ");
}
END_TEST

START_TEST(newlines_joined)
{
	char out[64];
	ck_assert_uint_eq(printable_copy(out, sizeof(out), "one\ntwo\n", 8, '|'), 8);
	ck_assert_str_eq(out, "one|two|");
}
END_TEST

START_TEST(bounds)
{
	char out[4] = "xxx";
	/* Room for three bytes and the NUL, whatever n says. */
	ck_assert_uint_eq(printable_copy(out, sizeof(out), "abcdef", 6, 0), 3);
	ck_assert_str_eq(out, "abc");
	/* A NUL ends the input early: what follows it is not read. */
	ck_assert_uint_eq(printable_copy(out, sizeof(out), "a\0bc", 4, 0), 1);
	ck_assert_str_eq(out, "a");
	ck_assert_uint_eq(printable_copy(out, sizeof(out), "", 0, 0), 0);
	ck_assert_str_eq(out, "");
	/* No room at all: nothing written. */
	out[0] = 'z';
	ck_assert_uint_eq(printable_copy(out, 0, "abc", 3, 0), 0);
	ck_assert_int_eq(out[0], 'z');
}
END_TEST

START_TEST(in_place)
{
	char buf[] = "ok\x01\nfine";
	ck_assert_uint_eq(printable_copy(buf, sizeof(buf), buf, sizeof(buf), '|'), 8);
	ck_assert_str_eq(buf, "ok?|fine");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("printable");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, controls_and_high_bytes);
	tcase_add_test(tc, newlines_joined);
	tcase_add_test(tc, bounds);
	tcase_add_test(tc, in_place);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
