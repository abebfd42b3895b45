/* A chunked body's framing as a strict proxy reads it (api/http/chunk_framing.c),
 * whole and byte by byte. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "api/http/chunk_framing.h"

/* Feeds s whole, then again one byte at a time: both say the same. */
static const char *feed(const char *s)
{
	struct chunk_framing whole, bytes;
	chunk_framing_reset(&whole);
	chunk_framing_reset(&bytes);
	const char *a = chunk_framing_feed(&whole, (const uint8_t *)s, strlen(s)), *b = NULL;
	for (size_t i = 0; s[i] && !b; i++)
		b = chunk_framing_feed(&bytes, (const uint8_t *)s + i, 1);
	ck_assert_msg(!a == !b, "whole and byte by byte disagree on %s", s);
	return a;
}

START_TEST(well_framed)
{
	ck_assert_ptr_null(feed("5\r\nhello\r\n0\r\n\r\n"));
	ck_assert_ptr_null(feed("A\r\n0123456789\r\na;ext=\"q\\\"t\"\r\n0123456789\r\n0\r\n\r\n"));
	ck_assert_ptr_null(feed("5 ;x\r\nhe\r\nl\r\n0\r\nTrailer: one\r\nOther: two\r\n\r\n"));
	ck_assert_ptr_null(feed("ffffffffffffffff\r\n")); /* a size's 16 digits, data to come */
	ck_assert_ptr_null(feed("3\r\n\r\n\r\r\n")); /* CR and LF are data like any byte */
}
END_TEST

START_TEST(refused)
{
	/* What the lenient parser takes: two bytes after data that are not CRLF... */
	ck_assert_ptr_nonnull(feed("5\r\nhelloXX0\r\n\r\n"));
	ck_assert_ptr_nonnull(feed("5\r\nhello\n0\r\n\r\n"));
	ck_assert_ptr_nonnull(feed("5\r\nhello\r0\r\n\r\n"));
	/* ...and any byte after a size line's CR. */
	ck_assert_ptr_nonnull(feed("5\rXhello\r\n0\r\n\r\n"));
	ck_assert_ptr_nonnull(feed("5\nhello\r\n"));
	ck_assert_ptr_nonnull(feed("5;a\nb\r\nhello\r\n"));
	ck_assert_ptr_nonnull(feed("x\r\n"));
	ck_assert_ptr_nonnull(feed("1 0\r\nx\r\n")); /* only whitespace, then ';', after a size */
	ck_assert_ptr_nonnull(feed("\r\n"));
	ck_assert_ptr_nonnull(feed("10000000000000000\r\n")); /* 17 digits */
	ck_assert_ptr_nonnull(feed("0\r\nBad: x\n\r\n"));
	ck_assert_ptr_nonnull(feed("0\r\nA: x\r\n folded\r\n\r\n"));
	ck_assert_ptr_nonnull(feed("0\r\nX : y\r\n\r\n")); /* a space before the colon */
	ck_assert_ptr_nonnull(feed("0\r\nX: \x01\r\n\r\n"));
	ck_assert_ptr_nonnull(feed("0\r\nno-colon\r\n\r\n"));
	ck_assert_ptr_nonnull(feed("0\r\n\r\r"));
	ck_assert_ptr_nonnull(feed("0\r\n\n"));
	/* Once wrong, it stays wrong. */
	struct chunk_framing f;
	chunk_framing_reset(&f);
	ck_assert_ptr_nonnull(chunk_framing_feed(&f, (const uint8_t *)"z", 1));
	ck_assert_ptr_nonnull(chunk_framing_feed(&f, (const uint8_t *)"0\r\n\r\n", 5));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("chunk_framing");
	TCase *tc = tcase_create("framing");
	tcase_add_test(tc, well_framed);
	tcase_add_test(tc, refused);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
