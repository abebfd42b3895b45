/* /v1/pty: the agent's pty operation behind a WebSocket. Framing (masking,
 * fragmentation, ping/pong, the close handshake, UTF-8 checks of text frames) is
 * libwslay's event API, fed from memory: its recv callback reads what the
 * connection handed us and its send callback appends to the connection's output
 * queue, so it never touches a socket and fits the io_uring loop. Terminal
 * output is credited to the agent only as the client takes it; input is read
 * from the client only as the agent takes it. */
#include "api/pty.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <nettle/sha1.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

#include "agent/base64.h"
#include "agent/proto.h"
#include "api/agent_client.h"
#include "api/bytebuf.h"
#include "api/errors.h"
#include "api/http.h"
#include "api/sandboxes.h"
#include "api/server.h"

#define PTY_MAX_MSG (1u << 20)
#define PTY_TX_HIGH (1u << 20)
#define PTY_DIM_MAX 1000
#define PTY_CMD_MAX (64u << 10)

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

struct pt {
	struct http_req *r;
	struct astream *as;
	wslay_event_context_ptr ws;
	char accept[29];
	char sid[ID_MAX + 1];
	bool upgraded, finished;
	struct bytebuf in;  /* client bytes not yet taken by wslay */
	struct bytebuf tx;  /* terminal input waiting for agent credit */
	size_t owed;
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
	if (pt->as) {
		struct astream *as = pt->as;
		pt->as = NULL;
		agent_cancel(as);
	}
	if (pt->r) {
		pt->r->ctx = NULL;
		pt->r->ops = NULL;
	}
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

/* {"resize": {"cols": C, "rows": R}}; false when the text is terminal input. */
static bool control_msg(struct pt *pt, const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
		i++;
	if (i == n || p[i] != '{' || n > 4096)
		return false;
	cJSON *o = cJSON_ParseWithLength((const char *)p, n);
	cJSON *rs = o ? cJSON_GetObjectItemCaseSensitive(o, "resize") : NULL;
	if (!cJSON_IsObject(rs)) {
		cJSON_Delete(o);
		return false;
	}
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(rs, "cols");
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(rs, "rows");
	if (cJSON_IsNumber(c) && cJSON_IsNumber(r) && c->valuedouble >= 1 && c->valuedouble <= PTY_DIM_MAX &&
	    r->valuedouble >= 1 && r->valuedouble <= PTY_DIM_MAX && pt->as) {
		char ev[96];
		snprintf(ev, sizeof(ev), "{\"resize\":{\"rows\":%d,\"cols\":%d}}", (int)r->valuedouble,
			 (int)c->valuedouble);
		agent_send_event(pt->as, ev);
	}
	cJSON_Delete(o);
	return true;
}

static void ws_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a, void *user)
{
	(void)ctx;
	struct pt *pt = user;
	if (a->opcode != WSLAY_TEXT_FRAME && a->opcode != WSLAY_BINARY_FRAME)
		return; /* ping, pong and close are wslay's */
	if (a->opcode == WSLAY_TEXT_FRAME && control_msg(pt, a->msg, a->msg_length))
		return;
	if (bytebuf_add(&pt->tx, a->msg, a->msg_length))
		wslay_event_shutdown_read(ctx);
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
	if (pt->owed && pt->as && http_stream_room(r)) {
		agent_consumed(pt->as, pt->owed);
		pt->owed = 0;
	}
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
		struct wslay_event_msg m = { WSLAY_BINARY_FRAME, p, n };
		if (wslay_event_queue_msg(pt->ws, &m) == 0 && wslay_event_send(pt->ws)) {
			pt_end(pt, AE_INTERNAL, NULL, NULL);
			return;
		}
	}
	if (pt->r && !http_stream_room(pt->r))
		pt->owed += n;
	else
		agent_consumed(s, n + pt->owed), pt->owed = 0;
}

static void upgrade(struct pt *pt)
{
	struct http_req *r = pt->r;
	if (wslay_event_context_server_init(&pt->ws, &ws_cbs, pt)) {
		pt_end(pt, AE_INTERNAL, "out of memory", NULL);
		return;
	}
	wslay_event_config_set_max_recv_msg_length(pt->ws, PTY_MAX_MSG);
	char head[256];
	int n = snprintf(head, sizeof(head), "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
			 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", pt->accept);
	http_raw_begin(r);
	http_raw_write(r, head, (size_t)n);
	pt->upgraded = true;
	http_raw_input(r);
}

static void as_event(struct astream *s, cJSON *ev)
{
	struct pt *pt = s->ctx;
	if (!pt->upgraded && cJSON_IsNumber(cJSON_GetObjectItem(ev, "pid")))
		upgrade(pt);
}

static void as_end(struct astream *s, cJSON *payload, const char *why)
{
	struct pt *pt = s->ctx;
	pt->as = NULL;
	const cJSON *err = payload ? cJSON_GetObjectItem(payload, "error") : NULL;
	const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
	const char *emsg = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message"));
	if (!pt->upgraded) {
		char cause[96];
		snprintf(cause, sizeof(cause), "agent: %.60s", code ? code : why ? why : "ended");
		pt_end(pt, !payload ? AE_SANDBOX_NOT_RUNNING : code && !strcmp(code, "invalid_argument")
		       ? AE_INVALID_ARGUMENT : AE_EXEC_FAILED,
		       emsg ? emsg : payload ? "the terminal could not be started" : "the sandbox stopped", cause);
		return;
	}
	if (pt->ws) {
		cJSON *o = cJSON_CreateObject();
		cJSON *x = cJSON_AddObjectToObject(o, "exit");
		const cJSON *exited = payload ? cJSON_GetObjectItem(payload, "exited") : NULL;
		const cJSON *ec = payload ? cJSON_GetObjectItem(payload, "exit_code") : NULL;
		const cJSON *sig = payload ? cJSON_GetObjectItem(payload, "signal") : NULL;
		cJSON_AddBoolToObject(x, "exited", cJSON_IsTrue(exited));
		cJSON_AddNumberToObject(x, "exit_code", cJSON_IsNumber(ec) ? ec->valuedouble : -1);
		if (cJSON_IsNumber(sig))
			cJSON_AddNumberToObject(x, "signal", sig->valuedouble);
		if (!payload)
			cJSON_AddStringToObject(x, "error", "the sandbox stopped");
		char *j = cJSON_PrintUnformatted(o);
		cJSON_Delete(o);
		if (j) {
			struct wslay_event_msg m = { WSLAY_TEXT_FRAME, (const uint8_t *)j, strlen(j) };
			/* Sent now: wslay sends queued control frames (the close) first. */
			if (!wslay_event_queue_msg(pt->ws, &m))
				wslay_event_send(pt->ws);
			free(j);
		}
		static const char bye[] = "the terminal ended";
		static const char gone[] = "the sandbox stopped";
		wslay_event_queue_close(pt->ws, payload ? WSLAY_CODE_NORMAL_CLOSURE : WSLAY_CODE_INTERNAL_SERVER_ERROR,
					(const uint8_t *)(payload ? bye : gone), payload ? sizeof(bye) - 1 : sizeof(gone) - 1);
		wslay_event_send(pt->ws);
	}
	pt_end(pt, AE_INTERNAL, NULL, NULL);
}

static void as_writable(struct astream *s)
{
	pt_tx_pump(s->ctx);
}

static const struct astream_ops pt_stream_ops = { as_data, as_event, as_end, as_writable };

static int query_dim(const struct http_req *r, const char *key, int def, int *out)
{
	char *v = http_query_get(r->query, key);
	if (!v) {
		*out = def;
		return 0;
	}
	char *end;
	long n = strtol(v, &end, 10);
	bool ok = *v && !*end && n >= 1 && n <= PTY_DIM_MAX;
	free(v);
	*out = (int)n;
	return ok ? 0 : -EINVAL;
}

void pty_handle(struct http_req *r)
{
	char *sid = http_query_get(r->query, "sandbox_id");
	const char *hid = http_req_header(r, "x-sandbox-id");
	const char *id = sid ? sid : hid;
	if (!id || !api_valid_id(id)) {
		http_reply_error(r, AE_INVALID_SANDBOX_ID, id ? "sandbox_id is not a valid sandbox id"
						      : "give the sandbox_id query parameter", NULL, NULL);
		free(sid);
		return;
	}
	struct pt *pt = calloc(1, sizeof(*pt));
	if (!pt) {
		free(sid);
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	snprintf(pt->sid, sizeof(pt->sid), "%s", id);
	free(sid);
	const char *up = http_req_header(r, "upgrade");
	const char *conn = http_req_header(r, "connection");
	const char *ver = http_req_header(r, "sec-websocket-version");
	if (!up || strcasecmp(up, "websocket") || !conn || !strcasestr(conn, "upgrade") || !ver ||
	    strcmp(ver, "13") || ws_accept_key(http_req_header(r, "sec-websocket-key"), pt->accept)) {
		pt_free(pt);
		http_reply_error(r, AE_INVALID_ARGUMENT, "GET /v1/pty is a WebSocket (RFC 6455, version 13)",
				 "Upgrade: websocket, Connection: Upgrade, Sec-WebSocket-Version: 13 and a "
				 "Sec-WebSocket-Key are required", NULL);
		return;
	}
	int cols, rows;
	char *cmd = http_query_get(r->query, "cmd");
	if (query_dim(r, "cols", 80, &cols) || query_dim(r, "rows", 24, &rows) ||
	    (cmd && (!*cmd || strlen(cmd) > PTY_CMD_MAX))) {
		free(cmd);
		pt_free(pt);
		http_reply_error(r, AE_INVALID_ARGUMENT, "cols and rows are whole numbers from 1 to 1000; cmd is a "
				 "non-empty command line", NULL, NULL);
		return;
	}
	struct sandbox *sb = sandbox_find(pt->sid);
	char msg[160];
	if (!sb || sb->state != SB_RUNNING || !agent_conn_ready(sb->agent)) {
		free(cmd);
		snprintf(msg, sizeof(msg), !sb ? "no sandbox %s" : "sandbox %s is not running", pt->sid);
		pt_free(pt);
		http_reply_error(r, sb ? AE_SANDBOX_NOT_RUNNING : AE_NOT_FOUND, msg, NULL, NULL);
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "pty");
	cJSON *size = cJSON_AddObjectToObject(open, "size");
	cJSON_AddNumberToObject(size, "rows", rows);
	cJSON_AddNumberToObject(size, "cols", cols);
	if (cmd) {
		/* The same shell as ExecStream's commands. */
		cJSON_AddStringToObject(open, "cmd", cmd);
		cJSON_AddStringToObject(open, "shell", "/bin/bash");
	}
	free(cmd);
	char *o = cJSON_PrintUnformatted(open);
	cJSON_Delete(open);
	pt->as = o ? agent_open(sb->agent, o, &pt_stream_ops, pt) : NULL;
	free(o);
	if (!pt->as) {
		pt_free(pt);
		http_reply_error(r, AE_INTERNAL, "cannot open a stream to the sandbox's agent", NULL, NULL);
		return;
	}
	pt->r = r;
	r->ctx = pt;
	r->ops = &pty_ops;
	/* The 101 waits for the agent to report the process started, so a command
	 * that cannot start is an HTTP error, not a WebSocket that closes at once. */
}
