/* Fuzz target: the WebSocket Exec (api/proxy/pty.c over api/http/http.c, framing by
 * libwslay) as a hostile client and a hostile agent drive it. A fixed, valid upgrade
 * request opens it; then the input is the client's WebSocket frames (masked or not,
 * any opcode, fragmented, pings, closes) carrying Connect envelopes of ExecRequest
 * messages, cut into reads of any size, and what the agent answers: terminal output
 * and the end of the process. The socket layer, the sandbox registry and the agent
 * connection are stubs; everything between them is the real code. Nothing may crash,
 * leak, or write past what it was given (the sanitizer build).
 *
 * Input: [0] read size (1..64), [1] agent output length (0..255), then the client's
 * bytes, then the agent's output (the last [1] bytes) and [2] its exit code. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/proto.h"
#include "api/http/bytebuf.h"
#include "api/http/http.h"
#include "api/http/router.h"
#include "api/http/server.h"
#include "api/proxy/pty.h"
#include "api/sandbox/agent_client.h"
#include "api/sandbox/sandboxes.h"
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/http_stubs.h"

/* ---- every request is the WebSocket Exec ---- */

static const struct route rt_pty = { "pty", pty_handle, false, false, true };

void router_headers(struct http_req *r)
{
	r->body_limit = 4096;
	r->route = &rt_pty;
}

void router_dispatch(struct http_req *r) { r->route->fn(r); }

/* ---- one running sandbox whose agent takes everything ---- */

static struct sandbox sb = { .id = "sb", .state = SB_RUNNING, .agent = (struct agent_conn *)&sb };
static struct astream stream;
static bool stream_open;

struct sandbox *sandbox_find(const char *id) { return strcmp(id, "sb") ? NULL : &sb; }
bool agent_conn_ready(const struct agent_conn *ac) { return ac != NULL; }

struct astream *agent_open(struct agent_conn *ac, const char *open_json, const struct astream_ops *ops, void *ctx)
{
	(void)ac;
	assert(open_json && !stream_open);
	stream = (struct astream){ .ops = ops, .ctx = ctx };
	stream_open = true;
	return &stream;
}

void agent_cancel(struct astream *s)
{
	assert(s == &stream && stream_open);
	stream_open = false;
}

void agent_room_changed(struct astream *s) { assert(s == &stream && stream_open); }
void agent_send_data(struct astream *s, uint8_t ch, bool fin, const void *p, size_t n)
{
	(void)ch; (void)fin; (void)p; (void)n;
	assert(s == &stream && stream_open);
}
bool agent_send_buffered(struct astream *s, uint8_t ch, struct bytebuf *b, bool fin)
{
	(void)ch;
	assert(s == &stream && stream_open);
	b->off = b->len;
	return fin;
}
void agent_send_event(struct astream *s, const char *json)
{
	assert(s == &stream && stream_open && json);
}

static const char upgrade[] =
	"GET /sandbox.v1.Sandbox/Exec?sandbox=sb HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
	"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	"Sec-WebSocket-Protocol: connect.sandbox.v1\r\n\r\n";

static void drive(struct conn *c)
{
	for (int i = 0; i < 1000 && !c->dead; i++) {
		stub_kicked = 0;
		http_conn_process(c);
		if (c->req && c->req->body_paused)
			http_req_resume_body(c->req);
		if (!stub_kicked)
			break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	srv_cfg.max_json_body = 4096;
	srv_cfg.header_timeout_ms = srv_cfg.body_timeout_ms = srv_cfg.idle_timeout_ms = 10;
	size_t piece = 1 + data[0] % 64, out_len = data[1];
	uint8_t exit_code = data[2];
	data += 3;
	size -= 3;
	if (out_len > size)
		out_len = size;
	size_t in_len = size - out_len;
	struct conn *c = calloc(1, sizeof(*c));
	assert(c);
	http_conn_init(c);
	stream_open = false;
	stub_conn_feed(c, (const uint8_t *)upgrade, sizeof(upgrade) - 1);
	drive(c);
	for (size_t off = 0; off < in_len && !c->close_after; off += piece) {
		stub_conn_feed(c, data + off, in_len - off < piece ? in_len - off : piece);
		drive(c);
		c->out.bytes = 0;
	}
	/* The agent's side: output in two pieces, then the end of the process. */
	const uint8_t *out = data + in_len;
	for (size_t half = out_len / 2, off = 0; stream_open && off < out_len; off += half ? half : out_len) {
		size_t n = half && off == 0 ? half : out_len - off;
		stream.ops->data(&stream, PROTO_CH_STDOUT, false, out + off, n);
		drive(c);
	}
	if (stream_open) {
		char end[64];
		snprintf(end, sizeof(end), "{\"exited\":true,\"exit_code\":%u}", exit_code);
		cJSON *payload = cJSON_Parse(end);
		stream_open = false; /* the end is the stream's last callback */
		stream.ops->end(&stream, payload, NULL);
		cJSON_Delete(payload);
		drive(c);
	}
	http_conn_abort(c);
	free(c->pend);
	free(c);
	return 0;
}

/* Client frames: binary, masked (key 0, so the payload reads as itself), each one
 * Connect envelope of an ExecRequest. */
static size_t frame(uint8_t *out, uint8_t opcode, const char *json)
{
	size_t n = strlen(json), env = 5 + n, o = 0;
	out[o++] = (uint8_t)(0x80 | opcode);
	if (env < 126) {
		out[o++] = (uint8_t)(0x80 | env);
	} else {
		out[o++] = 0x80 | 126;
		out[o++] = (uint8_t)(env >> 8);
		out[o++] = (uint8_t)env;
	}
	memset(out + o, 0, 4);
	o += 4;
	out[o++] = 0;
	out[o++] = (uint8_t)(n >> 24);
	out[o++] = (uint8_t)(n >> 16);
	out[o++] = (uint8_t)(n >> 8);
	out[o++] = (uint8_t)n;
	memcpy(out + o, json, n);
	return o + n;
}

void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	static const char *const msgs[] = {
		"{\"open\":{\"command\":\"bash\",\"pty\":{\"size\":{\"cols\":80,\"rows\":24}}}}",
		"{\"stdin\":\"aGVsbG8K\"}",
		"{\"resize\":{\"cols\":100,\"rows\":30}}",
		"{\"stdinClose\":true}",
	};
	static uint8_t in[1024];
	size_t n = 3;
	in[0] = 7;
	in[1] = 12;
	in[2] = 3;
	for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++)
		n += frame(in + n, 2, msgs[i]);
	in[n++] = 0x89; /* a ping, unmasked (a protocol error the server must refuse) */
	in[n++] = 0;
	memcpy(in + n, "hello world\n", 12);
	add(in, n + 12);
	/* The same, then a close frame with a status code. */
	n -= 2;
	static const uint8_t close_frame[] = { 0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8 };
	memcpy(in + n, close_frame, sizeof(close_frame));
	n += sizeof(close_frame);
	memcpy(in + n, "hello world\n", 12);
	add(in, n + 12);
}
