/* Unit tests of the frame codec, the JSON reader/writer and the ring buffer. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "agent/base64.h"
#include "agent/json.h"
#include "agent/proto.h"
#include "agent/ring.h"

static size_t encode_frame(uint8_t *out, uint8_t type, uint32_t stream, uint8_t ch, const char *p, size_t n)
{
	struct proto_header h = { .length = (uint32_t)n, .stream = stream, .type = type, .channel = ch };
	proto_header_encode(&h, out);
	memcpy(out + PROTO_HEADER_SIZE, p, n);
	return PROTO_HEADER_SIZE + n;
}

START_TEST(header_roundtrip)
{
	uint8_t b[PROTO_HEADER_SIZE];
	struct proto_header h = { 0xdeadbeef, 0x7fffffff, PROTO_DATA, PROTO_FLAG_FIN, 2, 0 }, g;
	proto_header_encode(&h, b);
	ck_assert_int_eq(b[0], 0xde); /* big-endian on the wire */
	proto_header_decode(b, &g);
	ck_assert_mem_eq(&h, &g, sizeof(h));
	ck_assert_str_eq(proto_type_name(PROTO_WINDOW), "window");
	ck_assert(!proto_type_known(0) && !proto_type_known(9) && proto_type_known(8));
	ck_assert_str_eq(proto_err_code(proto_err_from_errno(-2)), "not_found");
	ck_assert_str_eq(proto_err_code(proto_err_from_errno(28)), "no_space");
}
END_TEST

/* A sequence of frames, cut at every split point (and byte by byte), parses
 * to the same frames. */
START_TEST(every_split_parses)
{
	uint8_t buf[512];
	size_t n = 0;
	n += encode_frame(buf + n, PROTO_OPEN, 1, 0, "{\"op\":\"health\"}", 15);
	n += encode_frame(buf + n, PROTO_DATA, 3, 1, "", 0);
	n += encode_frame(buf + n, PROTO_DATA, 3, 2, "a\0b", 3);
	n += encode_frame(buf + n, PROTO_END, 5, 0, "{}", 2);
	for (size_t cut = 0; cut <= n; cut++) {
		for (int bytewise = 0; bytewise < 2; bytewise++) {
			struct proto_parser p;
			proto_parser_init(&p, 0);
			int frames = 0;
			size_t pos = 0;
			while (pos < n) {
				size_t piece = bytewise ? 1 : (pos < cut ? cut - pos : n - pos);
				const uint8_t *q = buf + pos;
				size_t len = piece;
				pos += piece;
				while (len) {
					struct proto_header h;
					const uint8_t *pl;
					enum proto_parse_event ev = proto_parse(&p, &q, &len, &h, &pl);
					ck_assert_int_ne(ev, PROTO_PARSE_OVERSIZED);
					if (ev != PROTO_PARSE_FRAME)
						continue;
					switch (frames++) {
					case 0:
						ck_assert_int_eq(h.type, PROTO_OPEN);
						ck_assert_mem_eq(pl, "{\"op\":\"health\"}", 15);
						break;
					case 1: ck_assert_int_eq(h.length, 0); break;
					case 2:
						ck_assert_int_eq(h.channel, 2);
						ck_assert_mem_eq(pl, "a\0b", 3);
						break;
					case 3: ck_assert_int_eq(h.stream, 5); break;
					}
				}
			}
			ck_assert_int_eq(frames, 4);
			proto_parser_free(&p);
		}
	}
}
END_TEST

START_TEST(oversized_is_skipped)
{
	struct proto_parser p;
	uint8_t buf[64];
	proto_parser_init(&p, 16);
	struct proto_header h = { .length = 20, .stream = 9, .type = PROTO_DATA };
	proto_header_encode(&h, buf);
	memset(buf + 12, 'x', 20);
	size_t n = 32 + encode_frame(buf + 32, PROTO_END, 7, 0, "{}", 2);
	const uint8_t *q = buf;
	size_t len = n;
	struct proto_header g;
	const uint8_t *pl;
	ck_assert_int_eq(proto_parse(&p, &q, &len, &g, &pl), PROTO_PARSE_OVERSIZED);
	ck_assert_int_eq(g.stream, 9);
	ck_assert_int_eq(proto_parse(&p, &q, &len, &g, &pl), PROTO_PARSE_FRAME);
	ck_assert_int_eq(g.stream, 7);
	ck_assert_int_eq(len, 0);
	proto_parser_free(&p);
}
END_TEST

START_TEST(garbage_never_crashes)
{
	static uint8_t buf[1 << 16];
	srand(1234);
	for (int round = 0; round < 200; round++) {
		struct proto_parser p;
		proto_parser_init(&p, 4096);
		size_t n = (size_t)(rand() % (int)sizeof(buf));
		for (size_t i = 0; i < n; i++)
			buf[i] = (uint8_t)rand();
		const uint8_t *q = buf;
		size_t len = n;
		while (len) {
			struct proto_header h;
			const uint8_t *pl;
			size_t before = len;
			enum proto_parse_event ev = proto_parse(&p, &q, &len, &h, &pl);
			if (ev == PROTO_PARSE_FRAME) {
				ck_assert_uint_le(h.length, 4096);
				/* and the JSON reader survives whatever payload it gets */
				struct json *j = NULL;
				if (json_parse((const char *)pl, h.length, &j) == 0)
					json_free(j);
			}
			ck_assert(len < before || ev != PROTO_PARSE_NEED_MORE);
		}
		proto_parser_free(&p);
	}
}
END_TEST

START_TEST(json_parse_and_write)
{
	const char *doc = "{\"a\":[1,-2,3.5,true,false,null],\"s\":\"x\\u00e9\\ud83d\\ude00\\n\\\"\",\"o\":{\"k\":\"v\"},"
			  "\"z\":\"a\\u0000b\"}";
	struct json *j;
	ck_assert_int_eq(json_parse(doc, strlen(doc), &j), 0);
	int64_t v;
	ck_assert_int_eq(json_get_int(json_get(j, "a")->items[1], "x", 0, 0, &v), -ENOENT);
	ck_assert_int_eq(json_get(j, "a")->items[1]->i, -2);
	ck_assert_str_eq(json_get_str(j, "s"), "x\xc3\xa9\xf0\x9f\x98\x80\n\"");
	ck_assert_int_eq(json_get(j, "z")->len, 3);
	ck_assert_str_eq(json_get_str(json_get(j, "o"), "k"), "v");
	struct jw w;
	const char *out;
	size_t n;
	jw_init(&w);
	jw_value(&w, j);
	ck_assert_int_eq(jw_finish(&w, &out, &n), 0);
	struct json *j2;
	ck_assert_int_eq(json_parse(out, n, &j2), 0);
	ck_assert_str_eq(json_get_str(j2, "s"), json_get_str(j, "s"));
	json_free(j2);
	jw_free(&w);
	json_free(j);

	const char *bad[] = { "", "{", "{\"a\"}", "[1,]", "tru", "\"\\x\"", "{\"a\":1}x", "\"\x01\"", "01x",
			      "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct json *x = NULL;
		ck_assert_msg(json_parse(bad[i], strlen(bad[i]), &x) != 0, "accepted %s", bad[i]);
	}
	/* invalid UTF-8 is replaced, control characters escaped */
	jw_init(&w);
	jw_strn(&w, "a\xff\x01", 3);
	ck_assert_int_eq(jw_finish(&w, &out, &n), 0);
	ck_assert_str_eq(out, "\"a\xef\xbf\xbd\\u0001\"");
	jw_free(&w);
}
END_TEST

START_TEST(base64_and_ring)
{
	uint8_t out[16];
	size_t n;
	ck_assert_int_eq(base64_decode("aGVsbG8=", 8, out, &n), 0);
	ck_assert_int_eq(n, 5);
	ck_assert_mem_eq(out, "hello", 5);
	ck_assert_int_eq(base64_decode("_-8", 3, out, &n), 0);
	ck_assert_int_eq(n, 2);
	ck_assert_int_ne(base64_decode("a$==", 4, out, &n), 0);

	struct ring r;
	const uint8_t *p;
	ring_init(&r, 8);
	ck_assert_uint_eq(ring_write(&r, "abcdef", 6), 6);
	ring_consume(&r, 4);
	ck_assert_uint_eq(ring_write(&r, "ghijklmn", 8), 6); /* wraps, capped */
	ck_assert_uint_eq(ring_used(&r), 8);
	ck_assert_uint_eq(ring_peek(&r, &p), 4); /* contiguous part only */
	ck_assert_mem_eq(p, "efgh", 4);
	ck_assert_uint_eq(ring_write_overwrite(&r, "XYZ", 3), 3); /* drops e,f,g */
	ring_consume(&r, 6);
	ck_assert_uint_eq(ring_peek(&r, &p), 2);
	ck_assert_mem_eq(p, "YZ", 2);
	ring_free(&r);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("agent_proto");
	TCase *tc = tcase_create("codec");
	tcase_add_test(tc, header_roundtrip);
	tcase_add_test(tc, every_split_parses);
	tcase_add_test(tc, oversized_is_skipped);
	tcase_add_test(tc, garbage_never_crashes);
	tcase_add_test(tc, json_parse_and_write);
	tcase_add_test(tc, base64_and_ring);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
