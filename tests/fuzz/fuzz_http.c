/* Fuzz target of the HTTP glue (api/http/http.c, and h2.c for input that opens
 * with the HTTP/2 preface): feeds arbitrary bytes, cut into arbitrary pieces (the
 * first byte picks their size), through the same path server.c uses, with the socket
 * layer and the router replaced by stubs. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "api/http/h2.h"
#include "api/http/http.h"
#include "api/http/router.h"
#include "api/http/server.h"
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/http_stubs.h"

/* Requests a streamed-body handler holds: until it answers one or is told it is gone
 * (abort), the request must stay alive; drive() reads each after every step, so a
 * protocol that frees one under its handler is a use after free ASan reports. */
#define HELD_MAX 128
static struct http_req *held[HELD_MAX];

static void hold(struct http_req *r)
{
	for (size_t i = 0; i < HELD_MAX; i++)
		if (!held[i]) {
			held[i] = r;
			return;
		}
}

static void let_go(struct http_req *r)
{
	for (size_t i = 0; i < HELD_MAX; i++)
		if (held[i] == r)
			held[i] = NULL;
}

static void touch_held(void)
{
	for (size_t i = 0; i < HELD_MAX; i++)
		if (held[i])
			assert(!held[i]->finished); /* answered by the protocol, not let go of */
}

/* A streamed-body handler that pauses after every chunk, and an async one. */
static void sink_body(struct http_req *r, const uint8_t *p, size_t n)
{
	(void)p;
	(void)n;
	http_req_pause_body(r);
}

static void sink_end(struct http_req *r)
{
	let_go(r);
	http_reply_json(r, 200, "{}");
}

static void abort_cb(struct http_req *r)
{
	let_go(r);
	r->ctx = NULL;
}

static const struct http_req_ops sink_ops = { .body = sink_body, .body_end = sink_end, .abort = abort_cb };
static const struct http_req_ops async_ops = { .abort = abort_cb };
static struct http_req *pending_async;

static void h_plain(struct http_req *r) { http_reply_json(r, 200, "{\"ok\":true}"); }
static void h_stream(struct http_req *r)
{
	r->ops = &sink_ops;
	hold(r);
}
static void h_async(struct http_req *r)
{
	r->ops = &async_ops;
	pending_async = r;
}
static void h_chunked(struct http_req *r)
{
	http_stream_start(r, 200, "application/connect+json", NULL);
	http_stream_write(r, "abc", 3);
	http_stream_finish(r);
}

static const struct route rt_plain = { "plain", h_plain, false, false, false };
static const struct route rt_stream = { "stream", h_stream, true, true, false };
static const struct route rt_async = { "async", h_async, false, false, false };
static const struct route rt_chunked = { "chunked", h_chunked, false, false, false };

void router_headers(struct http_req *r)
{
	r->body_limit = 4096;
	if (!strncmp(r->path, "/stream", 7)) {
		/* Small, so that bodies past the limit come often. */
		r->route = &rt_stream;
		r->body_limit = 64;
		r->body_streamed = true;
	} else if (!strncmp(r->path, "/async", 6)) {
		r->route = &rt_async;
	} else if (!strncmp(r->path, "/chunked", 8)) {
		r->route = &rt_chunked;
	} else if (!strncmp(r->path, "/err", 4)) {
		r->early_err = AE_NOT_FOUND;
	} else {
		r->route = &rt_plain;
	}
	(void)http_req_header(r, "x-sandbox-id");
}

void router_dispatch(struct http_req *r) { r->route->fn(r); }

static void drive(struct conn *c)
{
	for (int i = 0; i < 10000; i++) {
		stub_kicked = 0;
		http_conn_process(c);
		touch_held();
		/* The sink takes the next chunk (HTTP/2: on any stream). */
		for (size_t i = 0; i < HELD_MAX; i++)
			if (held[i] && held[i]->body_paused)
				http_req_resume_body(held[i]);
		if (pending_async && c->req == pending_async && !pending_async->finished) {
			struct http_req *r = pending_async;
			pending_async = NULL;
			http_reply_json(r, 200, "{}");
		}
		if (!stub_kicked)
			break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!size)
		return 0;
	srv_cfg.max_json_body = 4096;
	srv_cfg.header_timeout_ms = 10;
	srv_cfg.body_timeout_ms = 10;
	srv_cfg.idle_timeout_ms = 10;
	struct conn *c = calloc(1, sizeof(*c));
	assert(c);
	http_conn_init(c);
	stub_out_head_len = 0;
	pending_async = NULL;
	memset(held, 0, sizeof(held));
	/* The first byte picks how the rest is cut into reads. */
	size_t piece = 1 + data[0] % 64;
	data++;
	size--;
	for (size_t off = 0; off < size && !c->close_after; off += piece) {
		size_t n = size - off < piece ? size - off : piece;
		stub_conn_feed(c, data + off, n);
		drive(c);
		c->out.bytes = 0;
	}
	if (!c->close_after) {
		c->read_eof = true;
		drive(c);
		if (c->req && !c->req->complete)
			http_conn_eof(c);
	}
	http_conn_check_deadlines(c, 1000000);
	touch_held();
	bool h2 = size >= H2_PREFACE_LEN && !memcmp(data, H2_PREFACE, H2_PREFACE_LEN);
	if (stub_out_head_len >= 9 && !h2)
		assert(!memcmp(stub_out_head, "HTTP/1.1 ", 9));
	if (stub_out_head_len >= 4 && h2)
		assert(stub_out_head[3] == 4); /* HTTP/2 answers open with its SETTINGS frame */
	http_conn_abort(c);
	free(c->pend);
	free(c);
	return 0;
}

static const char *const seeds[] = {
	"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n",
	"POST /plain HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /chunked HTTP/1.1\r\n\r\n",
	"POST /stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n",
	"POST /async HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /err HTTP/1.1\r\n\r\nGET /plain HTTP/1.0\r\n\r\n",
	"POST /err HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
	"GET /plain?x=%41%42 HTTP/1.1\r\nA: b\r\nA: c\r\n\r\n",
	/* A streamed body past its limit (64 bytes), and one refused in its head. */
	("POST /stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n"
	 "01234567890123456789012345678901234567890123456789012345678901234567890123456789\r\n0\r\n\r\n"),
	"POST /stream HTTP/1.1\r\nX: a\r\n b\r\nContent-Length: 3\r\n\r\nabc",
	/* Chunk framing: an extension and a trailer, then two bytes after data that are not CRLF. */
	"POST /stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: v\r\n\r\nGET /plain HTTP/1.1\r\n\r\n",
	"POST /stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\nGET /plain HTTP/1.1\r\n\r\n",
	/* What http_parser reads leniently: CONNECT's body, a bare CR, a list of codings. */
	"CONNECT x:1 HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\nGET /plain HTTP/1.1\r\n\r\n",
	"\r\nGET /plain HTTP/1.1\r\nFoo:\rXContent-Length: 3\r\n\r\nabc",
	"POST /stream HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
};

/* HTTP/2: the preface, an empty SETTINGS, then per request a HEADERS frame (HPACK:
 * :method POST or GET, :scheme http, :authority and :path as literals; nghttp2 resets a
 * stream without :authority or host) and DATA frames. */
#define H2_FRAME(len, type, flags, id) 0, 0, (len), (type), (flags), 0, 0, 0, (id)
static const uint8_t h2_seed[] = {
	'P', 'R', 'I', ' ', '*', ' ', 'H', 'T', 'T', 'P', '/', '2', '.', '0', '\r', '\n', '\r', '\n',
	'S', 'M', '\r', '\n', '\r', '\n',
	H2_FRAME(0, 4, 0, 0),
	H2_FRAME(14, 1, 4, 1), 0x83, 0x86, 0x01, 1, 'x', 0x04, 7, '/', 's', 't', 'r', 'e', 'a', 'm',
	H2_FRAME(5, 0, 0, 1), 'h', 'e', 'l', 'l', 'o',
	H2_FRAME(3, 0, 1, 1), 'a', 'b', 'c',
	H2_FRAME(13, 1, 5, 3), 0x82, 0x86, 0x01, 1, 'x', 0x04, 6, '/', 'p', 'l', 'a', 'i', 'n',
	H2_FRAME(15, 1, 5, 5), 0x82, 0x86, 0x01, 1, 'x', 0x04, 8, '/', 'c', 'h', 'u', 'n', 'k', 'e', 'd',
	H2_FRAME(13, 1, 4, 7), 0x83, 0x86, 0x01, 1, 'x', 0x04, 6, '/', 'a', 's', 'y', 'n', 'c',
	H2_FRAME(2, 0, 1, 7), '{', '}',
	H2_FRAME(4, 3, 0, 5), 0, 0, 0, 8,
	/* :authority before :path, as HAProxy sends them */
	H2_FRAME(13, 1, 5, 9), 0x82, 0x86, 0x01, 1, 'x', 0x04, 6, '/', 'p', 'l', 'a', 'i', 'n',
};

/* HTTP/2: a streamed body past its limit, in two DATA frames, the stream then ended. */
static const uint8_t h2_over_seed[] = {
	'P', 'R', 'I', ' ', '*', ' ', 'H', 'T', 'T', 'P', '/', '2', '.', '0', '\r', '\n', '\r', '\n',
	'S', 'M', '\r', '\n', '\r', '\n',
	H2_FRAME(0, 4, 0, 0),
	H2_FRAME(14, 1, 4, 1), 0x83, 0x86, 0x01, 1, 'x', 0x04, 7, '/', 's', 't', 'r', 'e', 'a', 'm',
	H2_FRAME(40, 0, 0, 1), '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '0', '1', '2', '3', '4', '5', '6',
	'7', '8', '9', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
	H2_FRAME(40, 0, 1, 1), '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '0', '1', '2', '3', '4', '5', '6',
	'7', '8', '9', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
	H2_FRAME(13, 1, 5, 3), 0x82, 0x86, 0x01, 1, 'x', 0x04, 6, '/', 'p', 'l', 'a', 'i', 'n',
};

void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	uint8_t buf[512];
	for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
		size_t n = strlen(seeds[i]);
		buf[0] = (uint8_t)(7 * i); /* pieces of 1 to 64 bytes */
		memcpy(buf + 1, seeds[i], n);
		add(buf, n + 1);
	}
	buf[0] = 63;
	memcpy(buf + 1, h2_seed, sizeof(h2_seed));
	add(buf, sizeof(h2_seed) + 1);
	memcpy(buf + 1, h2_over_seed, sizeof(h2_over_seed));
	add(buf, sizeof(h2_over_seed) + 1);
}
