/* The WebSocket Exec of the Mitos contract (GET /sandbox.v1.Sandbox/Exec?sandbox=ID,
 * subprotocol connect.sandbox.v1): each binary WebSocket message is one Connect
 * envelope of the sandbox.v1 Exec bidi schema. The client sends ExecRequest
 * ({open: {command, args, env, cwd, pty: {size}}} first, then {stdin}, {resize},
 * {stdinClose}); the server sends ExecResponse ({stdout}, then {exit}) and an
 * end-of-stream envelope. Behind it is the agent's pty operation. Framing (masking,
 * fragmentation, ping/pong, the close handshake, UTF-8 checks of text frames) is
 * libwslay's event API, fed from memory: its recv callback reads what the
 * connection handed us and its send callback appends to the connection's output
 * queue, so it never touches a socket and fits the io_uring loop. Terminal
 * output is credited to the agent only as the client takes it; input is read
 * from the client only as the agent takes it. */
#include "api/proxy/pty.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <nettle/sha1.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

#include "agent/base64.h"
#include "agent/proto.h"
#include "api/sandbox/agent_call.h"
#include "api/sandbox/agent_client.h"
#include "api/http/json_request.h"
#include "api/http/bytebuf.h"
#include "api/http/connect.h"
#include "api/http/errors.h"
#include "api/http/http.h"
#include "api/sandbox/sandboxes.h"
#include "api/http/server.h"

#define PTY_MAX_MSG (1u << 20)
#define PTY_TX_HIGH (1u << 20)
#define PTY_DIM_MAX 1000
#define PTY_CMD_MAX (64u << 10)
#define WS_SUBPROTOCOL "connect.sandbox.v1"

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

struct pt {
	struct http_req *r;
	struct astream *as;
	wslay_event_context_ptr ws;
	char accept[29];
	char sid[ID_MAX + 1];
	bool upgraded, finished, subprotocol;
	/* What ended the exchange, seen inside a wslay callback: the first failure. */
	struct mitos_err fail;
	struct bytebuf in;  /* client bytes not yet taken by wslay */
	struct bytebuf tx;  /* terminal input waiting for agent credit */
};

int ws_accept_key(const char *key, char out[29])
{
	size_t n = key ? strlen(key) : 0;
	uint8_t raw[24];
	size_t raw_len;
	if (n != 24 || base64_decode(key, n, raw, &raw_len) || raw_len != 16)
		return -EINVAL;
	struct sha1_ctx ctx;
	uint8_t d[SHA1_DIGEST_SIZE];
	sha1_init(&ctx);
	sha1_update(&ctx, n, (const uint8_t *)key);
	sha1_update(&ctx, sizeof(ws_guid) - 1, (const uint8_t *)ws_guid);
	sha1_digest(&ctx, sizeof(d), d);
	base64_encode(d, sizeof(d), out);
	return 0;
}

static void pt_free(struct pt *pt)
{
	agent_bridge_release(&pt->r, &pt->as);
	if (pt->ws)
		wslay_event_context_free(pt->ws);
	bytebuf_free(&pt->in);
	bytebuf_free(&pt->tx);
	free(pt);
}

/* Ends the exchange: before the upgrade with an HTTP error, after it by closing
 * the connection once what is queued (a close frame) is sent. */
static void pt_end(struct pt *pt, enum api_err e, const char *msg, const char *cause)
{
	if (pt->r) {
		if (!pt->upgraded)
			http_reply_error(pt->r, e, msg ? msg : "the terminal ended", cause, NULL);
		else
			http_raw_finish(pt->r);
	}
	pt_free(pt);
}

static void pt_tx_pump(struct pt *pt)
{
	if (pt->as)
		agent_send_buffered(pt->as, PROTO_CH_MAIN, &pt->tx, false);
	if (pt->r && pt->r->body_paused && bytebuf_pending(&pt->tx) < PTY_TX_HIGH / 4)
		http_req_resume_body(pt->r);
}

/* ---- wslay callbacks (never free pt: they run inside wslay) ---- */

static ssize_t ws_recv(wslay_event_context_ptr ctx, uint8_t *out, size_t len, int flags, void *user)
{
	(void)flags;
	struct pt *pt = user;
	size_t k = bytebuf_pending(&pt->in);
	if (!k) {
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
		return -1;
	}
	if (k > len)
		k = len;
	memcpy(out, pt->in.p + pt->in.off, k);
	pt->in.off += k;
	return (ssize_t)k;
}

static ssize_t ws_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *user)
{
	(void)ctx; (void)flags;
	struct pt *pt = user;
	if (pt->r)
		http_raw_write(pt->r, data, len);
	return (ssize_t)len;
}

static void pt_fail(struct pt *pt, int code, enum api_err kind, const char *msg)
{
	if (!pt->fail.code)
		api_fail(&pt->fail, code, kind, "%s", msg);
}

/* One Connect envelope to the client as a binary WebSocket message. */
static void ws_envelope(struct pt *pt, uint8_t flags, const char *json)
{
	size_t n = strlen(json);
	uint8_t *buf = malloc(CONNECT_ENVELOPE + n);
	if (!buf)
		return;
	connect_envelope_header(buf, flags, (uint32_t)n);
	memcpy(buf + CONNECT_ENVELOPE, json, n);
	struct wslay_event_msg m = { WSLAY_BINARY_FRAME, buf, CONNECT_ENVELOPE + n };
	wslay_event_queue_msg(pt->ws, &m);
	free(buf);
}

static const struct astream_ops pt_stream_ops;
static void pt_close_error(struct pt *pt);

cJSON *pty_agent_request(const cJSON *open)
{
	const cJSON *size = cJSON_GetObjectItem(cJSON_GetObjectItem(open, "pty"), "size");
	double cols = cJSON_GetNumberValue(cJSON_GetObjectItem(size, "cols"));
	double rows = cJSON_GetNumberValue(cJSON_GetObjectItem(size, "rows"));
	const char *cmd = cJSON_GetStringValue(cJSON_GetObjectItem(open, "command"));
	const char *cwd = cJSON_GetStringValue(cJSON_GetObjectItem(open, "cwd"));
	const cJSON *args = cJSON_GetObjectItem(open, "args");
	if (!size) {
		cols = 80;
		rows = 24;
	}
	if (!(cols >= 1 && cols <= PTY_DIM_MAX && rows >= 1 && rows <= PTY_DIM_MAX) ||
	    (cmd && strlen(cmd) > PTY_CMD_MAX) || cJSON_GetArraySize(args) > 0)
		return NULL;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "op", "pty");
	cJSON *sz = cJSON_AddObjectToObject(o, "size");
	cJSON_AddNumberToObject(sz, "rows", (int)rows);
	cJSON_AddNumberToObject(sz, "cols", (int)cols);
	if (cmd && *cmd) {
		/* The same shell as ExecStream's commands. */
		cJSON_AddStringToObject(o, "cmd", cmd);
		cJSON_AddStringToObject(o, "shell", "/bin/bash");
	}
	exec_cwd(o, cwd);
	return o;
}

void exec_cwd(cJSON *agent_open, const char *cwd)
{
	if (cwd && *cwd)
		cJSON_AddStringToObject(agent_open, "cwd", cwd);
	else
		cJSON_AddStringToObject(agent_open, "default_cwd", "/workspace");
}

bool pty_resize_event(const cJSON *rs, char out[PTY_RESIZE_EVENT_MAX])
{
	double c = cJSON_GetNumberValue(cJSON_GetObjectItem(rs, "cols"));
	double r = cJSON_GetNumberValue(cJSON_GetObjectItem(rs, "rows"));
	if (!(c >= 1 && c <= PTY_DIM_MAX && r >= 1 && r <= PTY_DIM_MAX))
		return false;
	snprintf(out, PTY_RESIZE_EVENT_MAX, "{\"resize\":{\"rows\":%d,\"cols\":%d}}", (int)r, (int)c);
	return true;
}

/* ExecOpen: the agent's pty operation, its size and its command. */
static void exec_open(struct pt *pt, const cJSON *open)
{
	struct sandbox *sb = sandbox_find(pt->sid);
	if (!sb || sb->state != SB_RUNNING || !agent_conn_ready(sb->agent)) {
		pt_fail(pt, sb ? -EBUSY : -ENOENT, sb ? AE_SANDBOX_NOT_RUNNING : AE_NOT_FOUND,
			"the sandbox is not running");
		return;
	}
	cJSON *o = pty_agent_request(open);
	if (!o) {
		pt_fail(pt, -EINVAL, AE_INVALID_ARGUMENT, PTY_OPEN_INVALID);
		return;
	}
	char *text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	pt->as = text ? agent_open(sb->agent, text, &pt_stream_ops, pt) : NULL;
	free(text);
	if (!pt->as)
		pt_fail(pt, -EIO, AE_INTERNAL, "cannot open a stream to the sandbox's agent");
}

/* One ExecRequest from the client. */
static void exec_request(struct pt *pt, const uint8_t *p, size_t n)
{
	cJSON *o = json_parse_request(p, n);
	const cJSON *open = cJSON_GetObjectItem(o, "open"), *in = cJSON_GetObjectItem(o, "stdin");
	const cJSON *rs = cJSON_GetObjectItem(o, "resize"), *sc = cJSON_GetObjectItem(o, "stdinClose");
	if (!cJSON_IsObject(o)) {
		pt_fail(pt, -EINVAL, AE_INVALID_ARGUMENT, "each message must be a JSON ExecRequest");
	} else if (!pt->as && !open) {
		pt_fail(pt, -EINVAL, AE_INVALID_ARGUMENT, "the first ExecRequest must carry open");
	} else if (open) {
		if (pt->as || !cJSON_IsObject(open))
			pt_fail(pt, -EINVAL, AE_INVALID_ARGUMENT, "only the first ExecRequest carries open, an object");
		else
			exec_open(pt, open);
	} else if (in) {
		const char *b = cJSON_GetStringValue(in);
		size_t len = b ? strlen(b) : 0, k;
		uint8_t *raw = b ? malloc(base64_decoded_max(len) + 1) : NULL;
		if (!raw || base64_decode(b, len, raw, &k) || bytebuf_add(&pt->tx, raw, k))
			pt_fail(pt, -EINVAL, AE_INVALID_ARGUMENT, "stdin must be base64");
		free(raw);
	} else if (rs) {
		char ev[PTY_RESIZE_EVENT_MAX];
		if (pty_resize_event(rs, ev))
			agent_send_event(pt->as, ev);
	} else if (cJSON_IsTrue(sc)) {
		/* End of input: the terminal reads ^D. */
		agent_send_data(pt->as, PROTO_CH_MAIN, true, NULL, 0);
	}
	cJSON_Delete(o);
}

static void ws_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a, void *user)
{
	(void)ctx;
	struct pt *pt = user;
	if (a->opcode != WSLAY_BINARY_FRAME && a->opcode != WSLAY_TEXT_FRAME)
		return; /* ping, pong and close are wslay's */
	struct connect_dec d;
	connect_dec_init(&d, PTY_MAX_MSG);
	const uint8_t *p = a->msg;
	size_t n = a->msg_length;
	while (n && !pt->fail.code) {
		uint8_t flags;
		const uint8_t *msg;
		size_t len;
		int rc = connect_dec_feed(&d, &p, &n, &flags, &msg, &len);
		if (rc < 0 || (rc == 0 && n == 0 && !connect_dec_idle(&d)))
			pt_fail(pt, -EINVAL, AE_INVALID_ARGUMENT,
				"each WebSocket message carries whole Connect envelopes");
		else if (rc == 1)
			exec_request(pt, msg, len);
		else
			break;
	}
	if (!connect_dec_idle(&d) && !pt->fail.code)
		pt_fail(pt, -EINVAL, AE_INVALID_ARGUMENT, "each WebSocket message carries whole Connect envelopes");
	connect_dec_free(&d);
}

static const struct wslay_event_callbacks ws_cbs = {
	.recv_callback = ws_recv,
	.send_callback = ws_send,
	.on_msg_recv_callback = ws_msg,
};

/* Runs wslay over what arrived, sends what it queued, and ends the exchange once
 * the close handshake is done or the client broke the protocol. */
static void pt_ws_pump(struct pt *pt)
{
	if (!pt->ws)
		return;
	if (wslay_event_want_read(pt->ws) && bytebuf_pending(&pt->in) && wslay_event_recv(pt->ws)) {
		pt_end(pt, AE_INTERNAL, NULL, NULL);
		return;
	}
	if (pt->fail.code) {
		pt_close_error(pt);
		return;
	}
	if (wslay_event_want_write(pt->ws) && wslay_event_send(pt->ws)) {
		pt_end(pt, AE_INTERNAL, NULL, NULL);
		return;
	}
	if (!wslay_event_get_read_enabled(pt->ws)) {
		/* The client closed (or sent something wslay refused and answered with
		 * a close): the terminal goes with it. */
		if (wslay_event_want_write(pt->ws))
			wslay_event_send(pt->ws);
		pt_end(pt, AE_INTERNAL, NULL, NULL);
		return;
	}
	pt_tx_pump(pt);
	if (pt->r && bytebuf_pending(&pt->tx) > PTY_TX_HIGH)
		http_req_pause_body(pt->r);
}

/* ---- the HTTP side ---- */

static void pty_raw(struct http_req *r, const uint8_t *p, size_t n)
{
	struct pt *pt = r->ctx;
	if (bytebuf_add(&pt->in, p, n)) {
		pt_end(pt, AE_INTERNAL, NULL, NULL);
		return;
	}
	pt_ws_pump(pt);
}

static void pty_writable(struct http_req *r)
{
	struct pt *pt = r->ctx;
	if (pt->as)
		agent_room_changed(pt->as);
}

static void pty_abort(struct http_req *r)
{
	struct pt *pt = r->ctx;
	pt->r = NULL;
	pt_free(pt);
}

static const struct http_req_ops pty_ops = { .writable = pty_writable, .abort = pty_abort, .raw = pty_raw };

/* ---- the agent side ---- */

static void as_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin;
	struct pt *pt = s->ctx;
	if (n && pt->ws && (ch == PROTO_CH_STDOUT || ch == PROTO_CH_STDERR)) {
		size_t cap = base64_encoded_len(n) + 16;
		char *json = malloc(cap);
		if (json) {
			memcpy(json, ch == PROTO_CH_STDOUT ? "{\"stdout\":\"" : "{\"stderr\":\"", 11);
			base64_encode(p, n, json + 11);
			strcpy(json + 11 + base64_encoded_len(n), "\"}");
			ws_envelope(pt, 0, json);
			free(json);
		}
		if (wslay_event_send(pt->ws)) {
			pt_end(pt, AE_INTERNAL, NULL, NULL);
			return;
		}
	}
}

static void upgrade(struct pt *pt)
{
	struct http_req *r = pt->r;
	if (wslay_event_context_server_init(&pt->ws, &ws_cbs, pt)) {
		pt_end(pt, AE_INTERNAL, "out of memory", NULL);
		return;
	}
	wslay_event_config_set_max_recv_msg_length(pt->ws, PTY_MAX_MSG);
	char head[320];
	int n = snprintf(head, sizeof(head), "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
			 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n", pt->accept,
			 pt->subprotocol ? "Sec-WebSocket-Protocol: " WS_SUBPROTOCOL "\r\n" : "");
	http_raw_begin(r);
	http_raw_write(r, head, (size_t)n);
	pt->upgraded = true;
	http_raw_input(r);
}

/* The end of the exchange: the end-of-stream envelope (with the error, if any),
 * then the close handshake. */
static void pt_finish(struct pt *pt, enum api_err e, const char *msg)
{
	if (pt->ws) {
		cJSON *eos = cJSON_CreateObject();
		if (msg) {
			cJSON *err = cJSON_AddObjectToObject(eos, "error");
			cJSON_AddStringToObject(err, "code", api_err_connect_code(e));
			char *red = api_redact(msg);
			cJSON_AddStringToObject(err, "message", red ? red : "");
			free(red);
		}
		char *j = cJSON_PrintUnformatted(eos);
		cJSON_Delete(eos);
		ws_envelope(pt, CONNECT_FLAG_END, j ? j : "{}");
		free(j);
		/* Out now: once a close is queued, wslay sends it ahead of queued messages. */
		wslay_event_send(pt->ws);
		static const char bye[] = "the terminal ended";
		wslay_event_queue_close(pt->ws, WSLAY_CODE_NORMAL_CLOSURE, (const uint8_t *)bye, sizeof(bye) - 1);
		wslay_event_send(pt->ws);
	}
	pt_end(pt, AE_INTERNAL, NULL, NULL);
}

static void pt_close_error(struct pt *pt)
{
	pt_finish(pt, pt->fail.kind, pt->fail.msg);
}

static void as_end(struct astream *s, cJSON *payload, const char *why)
{
	struct pt *pt = s->ctx;
	pt->as = NULL;
	const cJSON *err = payload ? cJSON_GetObjectItem(payload, "error") : NULL;
	const cJSON *exited = payload ? cJSON_GetObjectItem(payload, "exited") : NULL;
	if (!payload || (!cJSON_IsBool(exited) && err)) {
		const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
		const char *emsg = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message"));
		char msg[300];
		snprintf(msg, sizeof(msg), "%s (%s)", emsg ? emsg : payload ? "the terminal could not be started"
			 : "the sandbox stopped", code ? code : why ? why : "ended");
		pt_finish(pt, !payload ? AE_SANDBOX_NOT_RUNNING : code && !strcmp(code, "invalid_argument")
			  ? AE_INVALID_ARGUMENT : AE_EXEC_FAILED, msg);
		return;
	}
	int code = agent_exit_code(payload);
	char j[64];
	snprintf(j, sizeof(j), code ? "{\"exit\":{\"exitCode\":%d}}" : "{\"exit\":{}}", code);
	if (pt->ws)
		ws_envelope(pt, 0, j);
	pt_finish(pt, AE_INTERNAL, NULL);
}

static void as_writable(struct astream *s)
{
	pt_tx_pump(s->ctx);
}

/* Terminal output is credited back as the client takes it. */
static size_t as_room(struct astream *s)
{
	struct pt *pt = s->ctx;
	return pt->r ? http_stream_room(pt->r) : SIZE_MAX;
}

static const struct astream_ops pt_stream_ops = { as_data, NULL, as_end, as_writable, as_room };

void pty_handle(struct http_req *r)
{
	char *sid = http_query_get(r->query, "sandbox");
	if (!sid || !api_valid_id(sid)) {
		http_reply_error(r, AE_INVALID_SANDBOX_ID, sid ? "sandbox is not a valid sandbox id"
						       : "give the sandbox query parameter (?sandbox=ID)", NULL, NULL);
		free(sid);
		return;
	}
	struct pt *pt = calloc(1, sizeof(*pt));
	if (!pt) {
		free(sid);
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	snprintf(pt->sid, sizeof(pt->sid), "%s", sid);
	free(sid);
	const char *up = http_req_header(r, "upgrade");
	const char *conn = http_req_header(r, "connection");
	const char *ver = http_req_header(r, "sec-websocket-version");
	const char *proto = http_req_header(r, "sec-websocket-protocol");
	pt->subprotocol = proto && strstr(proto, WS_SUBPROTOCOL);
	if (!up || strcasecmp(up, "websocket") || !conn || !strcasestr(conn, "upgrade") || !ver ||
	    strcmp(ver, "13") || ws_accept_key(http_req_header(r, "sec-websocket-key"), pt->accept)) {
		pt_free(pt);
		http_reply_error(r, AE_INVALID_ARGUMENT, "GET /sandbox.v1.Sandbox/Exec is a WebSocket (RFC 6455, "
				 "version 13)", "Upgrade: websocket, Connection: Upgrade, Sec-WebSocket-Version: 13 "
				 "and a Sec-WebSocket-Key are required", NULL);
		return;
	}
	struct sandbox *sb = sandbox_find(pt->sid);
	if (!sb || sb->state != SB_RUNNING || !agent_conn_ready(sb->agent)) {
		char msg[160];
		snprintf(msg, sizeof(msg), !sb ? "sandbox \"%s\" not found" : "sandbox %s is not running", pt->sid);
		pt_free(pt);
		http_reply_error(r, sb ? AE_SANDBOX_NOT_RUNNING : AE_NOT_FOUND, msg, NULL, NULL);
		return;
	}
	pt->r = r;
	r->ctx = pt;
	r->ops = &pty_ops;
	/* The process starts with the client's first message (ExecOpen). */
	upgrade(pt);
}
