/* The bidirectional streams of sandbox.v1.Sandbox: Exec (a command fed stdin as
 * it runs, or a terminal), RunCode and PortForward. Connect carries them only
 * over HTTP/2, where the client's messages arrive as the request body while the
 * answer streams; over HTTP/1.1 they are refused with 505 as connect-go refuses
 * them. The first message carries `open`; what follows feeds the agent stream
 * that the open started, under the same flow control as a client stream. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/proto.h"
#include "api/http/connect.h"
#include "api/http/http.h"
#include "api/http/json_request.h"
#include "api/mitos/handlers.h"
#include "api/mitos/rpc_call.h"
#include "api/proxy/pty.h"

static bool is(const struct rpc_call *c, const char *name)
{
	return !strcmp(c->m->name, name);
}

/* ---- PortForward: bytes to and from a TCP port inside the sandbox ---- */

static void pf_closed(struct rpc_call *c)
{
	rpc_stream_msg(c, "{\"close\":true}", 14, 0);
	rpc_call_end(c, NULL, 0, NULL, NULL);
}

/* The guest's side closing ends the stream (a close Frame), as the real server's
 * does, whatever the client still sends. */
static void pf_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)ch;
	if (n)
		rpc_data_msg(s->ctx, "data", p, n);
	if (fin)
		pf_closed(s->ctx);
}

static void pf_event(struct astream *s, cJSON *ev)
{
	struct rpc_call *c = s->ctx;
	if (cJSON_IsTrue(cJSON_GetObjectItem(ev, "connected")) && !c->pf_connected) {
		c->pf_connected = true;
		rpc_tx_pump(c);
	}
}

/* The agent ended the forward: a port nothing listens on fails the call, as the
 * real server's does; else the guest's side is closed. */
static void pf_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	if (!c->pf_connected) {
		const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(payload, "error"), "message"));
		char msg[300];
		snprintf(msg, sizeof(msg), "guest PortForward open failed: %s; ensure the process is listening on the "
			 "target port inside the sandbox", m ? m : why ? why : "the connection was refused");
		rpc_call_fail(c, payload ? AE_UNAVAILABLE : AE_SANDBOX_NOT_RUNNING, msg, NULL);
		return;
	}
	pf_closed(c);
}

static void pf_writable(struct astream *s)
{
	struct rpc_call *c = s->ctx;
	if (c->pf_connected)
		rpc_tx_pump(c);
}

static const struct astream_ops pf_ops = { pf_data, pf_event, pf_end, pf_writable, rpc_call_room };

static void pf_open(struct rpc_call *c, const cJSON *open)
{
	double port = 0;
	if (rpc_req_int(open, "port", 1, 65535, &port) || port < 1) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "open.port must be a TCP port, 1 to 65535", NULL);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "op", "forward");
	cJSON_AddNumberToObject(o, "port", port);
	rpc_call_open(c, o, &pf_ops);
}

/* ---- the client's messages ---- */

static int bidi_fail(struct rpc_call *c, cJSON *m, const char *msg)
{
	cJSON_Delete(m);
	rpc_call_fail(c, AE_INVALID_ARGUMENT, msg, NULL);
	return -EINVAL;
}

/* Base64 bytes for the agent's main channel (stdin, a forwarded connection). */
static int take_bytes(struct rpc_call *c, cJSON *m, const cJSON *v, const char *key)
{
	char bad[80];
	size_t k;
	int rc = cJSON_IsString(v) ? rpc_tx_add_base64(c, v->valuestring, &k) : -EINVAL;
	if (rc == -ENOMEM) {
		cJSON_Delete(m);
		rpc_call_fail(c, AE_INTERNAL, "out of memory", NULL);
		return rc;
	}
	if (rc) {
		snprintf(bad, sizeof(bad), "%s must be base64 text", key);
		return bidi_fail(c, m, bad);
	}
	return 0;
}

/* Ends what goes to the agent (stdinClose, a close Frame, the body's end). */
static void close_input(struct rpc_call *c)
{
	if (is(c, "RunCode") || c->tx_fin)
		return;
	c->tx_fin = true;
	if (!is(c, "PortForward") || c->pf_connected)
		rpc_tx_pump(c);
}

static int bidi_message(struct rpc_call *c, const uint8_t *msg, size_t len)
{
	cJSON *m = json_parse_request(msg, len);
	if (!cJSON_IsObject(m))
		return bidi_fail(c, m, "each message must be a JSON object");
	if (json_text_has_nul(msg, len))
		return bidi_fail(c, m, JSON_NUL_MESSAGE);
	const cJSON *open = cJSON_GetObjectItemCaseSensitive(m, "open");
	if (!c->bidi_opened) {
		char bad[160];
		if (!cJSON_IsObject(open)) {
			snprintf(bad, sizeof(bad), "the first %s must carry the open oneof (%s)",
				 is(c, "Exec") ? "ExecRequest" : is(c, "RunCode") ? "RunCodeRequest" : "Frame",
				 is(c, "Exec") ? "command, env, cwd, pty" : is(c, "RunCode") ? "code, language, "
				 "timeout_seconds" : "port");
			return bidi_fail(c, m, bad);
		}
		c->bidi_opened = true;
		struct http_req *r = c->base.r;
		if (is(c, "Exec"))
			rpc_exec_open_interactive(c, open);
		else if (is(c, "RunCode"))
			rpc_run_code_start(c, (cJSON *)open);
		else
			pf_open(c, open);
		cJSON_Delete(m);
		return r->ctx == c ? 0 : -EIO;
	}
	if (open)
		return bidi_fail(c, m, "only the first message carries open");
	if (is(c, "RunCode")) {
		/* stdin for a kernel's prompts: taken and dropped, as the real server does. */
		cJSON_Delete(m);
		return 0;
	}
	const cJSON *in = cJSON_GetObjectItemCaseSensitive(m, is(c, "Exec") ? "stdin" : "data");
	const cJSON *rs = cJSON_GetObjectItemCaseSensitive(m, "resize");
	const cJSON *end = cJSON_GetObjectItemCaseSensitive(m, is(c, "Exec") ? "stdinClose" : "close");
	if (in && take_bytes(c, m, in, is(c, "Exec") ? "stdin" : "data"))
		return -EINVAL;
	if (rs && is(c, "Exec") && c->base.as) {
		char ev[PTY_RESIZE_EVENT_MAX];
		if (!pty_resize_event(rs, ev))
			return bidi_fail(c, m, "resize cols and rows are from 1 to 1000");
		agent_send_event(c->base.as, ev);
	}
	if (cJSON_IsTrue(end))
		close_input(c);
	cJSON_Delete(m);
	if (!is(c, "PortForward") || c->pf_connected)
		rpc_tx_pump(c);
	return 0;
}

static void bidi_body(struct http_req *r, const uint8_t *p, size_t n)
{
	rpc_stream_body(r, p, n, bidi_message);
}

/* The client is done sending: the process's stdin closes (a PortForward's
 * connection half-closes); the answer goes on until the other side ends. */
static void bidi_body_end(struct http_req *r)
{
	struct rpc_call *c = r->ctx;
	if (!c || c->base.done)
		return;
	char what[120];
	snprintf(what, sizeof(what), "%s stream closed before the opening message: the first message must carry "
		 "the open oneof", c->m->name);
	if (rpc_stream_body_end(c, c->bidi_opened, what))
		close_input(c);
}

static const struct http_req_ops bidi_ops = { .body = bidi_body, .body_end = bidi_body_end,
					      .writable = agent_call_writable, .abort = agent_call_abort };

bool rpc_method_bidi(const char *name)
{
	const struct rpc_method *m = rpc_method_find(name);
	return m && m->kind == RPC_BIDI;
}

void rpc_bidi(struct http_req *r)
{
	if (!r->h2) {
		char msg[400];
		snprintf(msg, sizeof(msg), "%s is a bidirectional stream: Connect serves it over HTTP/2 only (h2c with "
			 "prior knowledge); over HTTP/1.1 use ExecStream, RunCodeStream, the WebSocket Exec or "
			 "POST /v1/sandboxes/{id}/forward", r->param);
		http_reply_error(r, AE_HTTP_VERSION, msg, NULL, NULL);
		return;
	}
	const struct rpc_method *m = rpc_method_find(r->param);
	struct rpc_call *c = m ? rpc_call_new(r, m) : NULL;
	if (!c) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	r->ops = &bidi_ops;
	/* A terminal's input may rest for minutes; flow control bounds what it holds. */
	r->body_rests = true;
	c->envelopes = true;
	if (!connect_ct_is_stream_json(http_req_header(r, "content-type"))) {
		rpc_call_fail(c, AE_UNSUPPORTED_MEDIA_TYPE, "bidirectional streams take application/connect+json", NULL);
		return;
	}
	connect_dec_init(&c->dec, RPC_MAX_ENVELOPE);
	if (c->bad_timeout) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "Connect-Timeout-Ms must be 1 to 10 digits", NULL);
		return;
	}
	/* The answer's headers go out at once: a client may wait for them before it
	 * sends more than open (the real server's does the same). */
	if (rpc_call_agent(c))
		http_stream_start(r, 200, "application/connect+json", NULL);
}
