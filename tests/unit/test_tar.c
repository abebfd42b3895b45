/* The agent's tar codec (agent/tar.c): headers it writes read back the same in
 * any piece sizes, the forms other writers use (ustar prefix, GNU long names, pax
 * path records, base-256 sizes), damaged headers, and member names that try to
 * leave the destination. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/tar.h"

struct member {
	char name[PATH_MAX];
	char type;
	uint64_t size;
	char data[64];
	size_t got;
};

/* Decodes buf fed in pieces of `piece` bytes; returns the members seen and whether
 * the end blocks came. */
static int decode(const uint8_t *buf, size_t len, size_t piece, struct member *m, int max, bool *ended,
		  const char **err)
{
	struct tar_dec d;
	tar_dec_init(&d);
	int n = -1;
	*ended = false;
	*err = NULL;
	for (size_t off = 0; off < len;) {
		size_t k = len - off < piece ? len - off : piece;
		const uint8_t *p = buf + off;
		size_t left = k;
		while (left) {
			const uint8_t *data;
			size_t dl;
			enum tar_ev ev = tar_dec_feed(&d, &p, &left, &data, &dl);
			if (ev == TAR_ERROR) {
				*err = d.err;
				tar_dec_free(&d);
				return n + 1;
			}
			if (ev == TAR_END)
				*ended = true;
			if (ev == TAR_ENTRY && ++n < max) {
				snprintf(m[n].name, sizeof(m[n].name), "%s", d.e.name);
				m[n].type = d.e.type;
				m[n].size = d.e.size;
				m[n].got = 0;
			}
			if (ev == TAR_DATA && n >= 0 && n < max) {
				for (size_t i = 0; i < dl && m[n].got < sizeof(m[n].data); i++)
					m[n].data[m[n].got++] = (char)data[i];
			}
		}
		off += k;
	}
	ck_assert(tar_dec_complete(&d));
	tar_dec_free(&d);
	return n + 1;
}

/* An archive of members (name, type, content) as the agent writes it. */
static size_t build(uint8_t *out, const char *const *names, const char *types, const char *const *contents, int n)
{
	size_t off = 0;
	for (int i = 0; i < n; i++) {
		size_t clen = contents[i] ? strlen(contents[i]) : 0;
		size_t h = tar_header(out + off, names[i], types[i], 0644, clen, 1700000000);
		ck_assert_uint_gt(h, 0);
		off += h;
		memcpy(out + off, contents[i] ? contents[i] : "", clen);
		off += clen;
		memset(out + off, 0, tar_padding(clen));
		off += tar_padding(clen);
	}
	memset(out + off, 0, 2 * TAR_BLOCK);
	return off + 2 * TAR_BLOCK;
}

static char long_a[160], long_b[400];

START_TEST(round_trip_in_any_pieces)
{
	memset(long_a, 'a', sizeof(long_a) - 1);
	long_a[60] = '/'; /* 60 bytes of prefix, 99 of name: ustar splits it */
	long_a[sizeof(long_a) - 1] = 0;
	memset(long_b, 'b', sizeof(long_b) - 1);
	long_b[200] = '/'; /* no split fits: a GNU long-name record */
	long_b[sizeof(long_b) - 1] = 0;
	const char *names[] = { "dir/", "dir/hello.txt", long_a, long_b, "empty" };
	const char types[] = { TAR_DIR, TAR_REG, TAR_REG, TAR_REG, TAR_REG };
	const char *contents[] = { NULL, "hello, world\n", "x", "a member with a very long name", NULL };
	static uint8_t buf[64 << 10];
	size_t len = build(buf, names, types, contents, 5);
	ck_assert_uint_eq(len % TAR_BLOCK, 0);
	size_t pieces[] = { 1, 7, 511, 512, 513, len };
	for (size_t pi = 0; pi < sizeof(pieces) / sizeof(pieces[0]); pi++) {
		struct member m[8];
		bool ended;
		const char *err;
		int n = decode(buf, len, pieces[pi], m, 8, &ended, &err);
		ck_assert_ptr_null(err);
		ck_assert(ended);
		ck_assert_int_eq(n, 5);
		for (int i = 0; i < 5; i++) {
			ck_assert_str_eq(m[i].name, names[i]);
			ck_assert_int_eq(m[i].type, types[i]);
			size_t clen = contents[i] ? strlen(contents[i]) : 0;
			ck_assert_uint_eq(m[i].size, clen);
			ck_assert_uint_eq(m[i].got, clen);
			ck_assert(!memcmp(m[i].data, contents[i] ? contents[i] : "", clen));
		}
	}
}
END_TEST

START_TEST(pax_path_and_big_sizes)
{
	static uint8_t buf[8 << 10];
	const char *rec = "30 path=from/a/pax/record.txt\n";
	ck_assert_uint_eq(strlen(rec), 30);
	size_t off = tar_header(buf, "PaxHeader/x", 'x', 0644, strlen(rec), 0);
	memcpy(buf + off, rec, strlen(rec));
	off += strlen(rec) + tar_padding(strlen(rec));
	off += tar_header(buf + off, "short-name", TAR_REG, 0644, 3, 0);
	memcpy(buf + off, "abc", 3);
	off += 3 + tar_padding(3);
	/* Over 8 GiB: the size field switches to base-256; only the header is checked. */
	size_t h = tar_header(buf + off, "huge", TAR_REG, 0600, 10ull << 30, 0);
	ck_assert_uint_eq(buf[off + 124], 0x80);
	struct tar_dec d;
	tar_dec_init(&d);
	const uint8_t *p = buf + off;
	size_t left = h;
	const uint8_t *data;
	size_t dl;
	ck_assert_int_eq(tar_dec_feed(&d, &p, &left, &data, &dl), TAR_ENTRY);
	ck_assert_uint_eq(d.e.size, 10ull << 30);
	ck_assert(!tar_dec_complete(&d)); /* its content never came */
	tar_dec_free(&d);

	struct member m[2];
	bool ended;
	const char *err;
	ck_assert_int_eq(decode(buf, off, 100, m, 2, &ended, &err), 1);
	ck_assert_ptr_null(err);
	ck_assert_str_eq(m[0].name, "from/a/pax/record.txt");
	ck_assert_uint_eq(m[0].got, 3);
}
END_TEST

START_TEST(damage_is_an_error)
{
	static uint8_t buf[4 << 10];
	const char *names[] = { "f" };
	const char types[] = { TAR_REG };
	const char *contents[] = { "data" };
	size_t len = build(buf, names, types, contents, 1);
	struct member m[1];
	bool ended;
	const char *err;
	buf[0] ^= 1; /* the name changes, the checksum does not */
	decode(buf, len, len, m, 1, &ended, &err);
	ck_assert_ptr_nonnull(err);
	buf[0] ^= 1;
	memcpy(buf + 124, "99999999999", 11); /* not octal */
	decode(buf, len, len, m, 1, &ended, &err);
	ck_assert_ptr_nonnull(err);
	/* Plain text is not an archive. */
	memset(buf, 'A', TAR_BLOCK);
	decode(buf, TAR_BLOCK, 13, m, 1, &ended, &err);
	ck_assert_ptr_nonnull(err);
}
END_TEST

START_TEST(names_stay_inside)
{
	char out[PATH_MAX];
	ck_assert_int_eq(tar_clean_name("a/b", out), 0);
	ck_assert_str_eq(out, "a/b");
	ck_assert_int_eq(tar_clean_name("./a//b/", out), 0);
	ck_assert_str_eq(out, "a/b");
	ck_assert_int_eq(tar_clean_name("a/../b", out), 0);
	ck_assert_str_eq(out, "b");
	ck_assert_int_eq(tar_clean_name("a/b/../../c/./d", out), 0);
	ck_assert_str_eq(out, "c/d");
	ck_assert_int_eq(tar_clean_name(".", out), 1);
	ck_assert_int_eq(tar_clean_name("./", out), 1);
	ck_assert_int_eq(tar_clean_name("a/..", out), 1);
	ck_assert_int_eq(tar_clean_name("../x", out), -EPERM);
	ck_assert_int_eq(tar_clean_name("a/../../x", out), -EPERM);
	ck_assert_int_eq(tar_clean_name("/etc/passwd", out), -EPERM);
	ck_assert_int_eq(tar_clean_name("..", out), -EPERM);
	ck_assert_int_eq(tar_clean_name("a/../b/../..", out), -EPERM);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("tar");
	TCase *tc = tcase_create("tar");
	tcase_add_test(tc, round_trip_in_any_pieces);
	tcase_add_test(tc, pax_path_and_big_sizes);
	tcase_add_test(tc, damage_is_an_error);
	tcase_add_test(tc, names_stay_inside);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
