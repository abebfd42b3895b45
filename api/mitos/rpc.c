/* The Connect service sandbox.v1.Sandbox (JSON codec, protojson field names:
 * lowerCamelCase, int64 as strings, bytes as base64, defaults omitted), as the
 * Mitos sandbox-server answers it: each call maps onto one agent operation on
 * the sandbox's agent connection. Server streams carry
 * envelopes, keepalives and an end-of-stream message; agent output is credited
 * back to the agent only as the HTTP client takes it, so a slow client pauses
 * the process in the sandbox instead of growing our memory. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/base64.h"
#include "agent/proto.h"
#include "api/sandbox/agent_client.h"
#include "api/http/bytebuf.h"
#include "api/http/connect.h"
#include "api/http/errors.h"
#include "api/mitos/handlers.h"
#include "api/mitos/rpc_call.h"
#include "api/http/http.h"
#include "api/http/json_request.h"
#include "api/sandbox/sandbox_ends.h"
#include "api/sandbox/sandboxes.h"
#include "api/http/server.h"

#define UNARY_DEFAULT_DEADLINE_MS 120000u

static const struct rpc_method methods[] = {
	{ "ExecStream", RPC_SERVER_STREAM, rpc_exec_start, false, NULL },
	{ "RunCodeStream", RPC_SERVER_STREAM, rpc_run_code_start, false, NULL },
	{ "ReadFile", RPC_SERVER_STREAM, rpc_read_start, true, NULL },
	{ "WriteFile", RPC_CLIENT_STREAM, NULL, true, NULL },
	{ "List", RPC_UNARY, rpc_list_start, true, NULL },
	{ "Stat", RPC_UNARY, rpc_file_start, true, NULL },
	{ "Remove", RPC_UNARY, rpc_file_start, true, NULL },
	{ "Mkdir", RPC_UNARY, rpc_file_start, true, NULL },
	{ "Exec", RPC_BIDI, NULL, false, NULL },
	{ "RunCode", RPC_BIDI, NULL, false, NULL },
	{ "PortForward", RPC_BIDI, NULL, false, NULL },
	{ "Archive", RPC_SERVER_STREAM, rpc_archive_start, true, NULL },
	{ "Upload", RPC_CLIENT_STREAM, NULL, true, NULL },
	{ "Watch", RPC_SERVER_STREAM, rpc_watch_start, true, NULL },
	{ "Vitals", RPC_SERVER_STREAM, rpc_vitals_start, false, NULL },
	{ "Processes", RPC_UNARY, rpc_processes_start, false, NULL },
	{ "Signal", RPC_UNARY, rpc_signal_start, false, NULL },
	/* Capability calls of the cluster control plane; a standalone node has none. */
	{ "Fork", RPC_UNARY, NULL, false, "Fork is a cluster capability: on a standalone node fork with "
	  "POST /v1/sandboxes/{id}/fork" },
	{ "Checkpoint", RPC_UNARY, NULL, false, "Checkpoint is a cluster capability a standalone node does not have" },
	{ "ExtendLifetime", RPC_UNARY, NULL, false, "ExtendLifetime is a cluster capability: on a standalone node "
	  "use POST /v1/set_timeout" },
	{ "Budget", RPC_UNARY, NULL, false, "Budget is a cluster capability a standalone node does not have" },
};

const struct rpc_method *rpc_method_find(const char *name)
{
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (!strcmp(methods[i].name, name))
			return &methods[i];
	return NULL;
}

bool rpc_method_known(const char *name)
{
	return rpc_method_find(name) != NULL;
}

bool rpc_method_streams(const char *name)
{
	const struct rpc_method *m = rpc_method_find(name);
	return m && m->kind != RPC_UNARY;
}

/* ---- responses ---- */

static void stream_begin(struct http_req *r)
{
	if (!r->resp_started)
		http_stream_start(r, 200, "application/connect+json", NULL);
}

static void write_envelope(struct http_req *r, const char *json, size_t n, uint8_t flags)
{
	uint8_t h[CONNECT_ENVELOPE];
	connect_envelope_header(h, flags, (uint32_t)n);
	http_stream_write2(r, h, sizeof(h), json, n);
}

void rpc_stream_msg(struct rpc_call *c, const char *json, size_t n, uint8_t flags)
{
	if (!c->base.r)
		return;
	stream_begin(c->base.r);
	write_envelope(c->base.r, json, n, flags);
}

/* The end-of-stream message, {} after success, else {"error":{...}}, and the
 * stream's end. */
static void finish_stream(struct http_req *r, enum api_err e, const char *msg, const char *cause)
{
	cJSON *eos = cJSON_CreateObject();
	if (eos && msg)
		cJSON_AddItemToObject(eos, "error", api_error_object(e, msg, cause, NULL, 1));
	char *s = eos ? cJSON_PrintUnformatted(eos) : NULL;
	cJSON_Delete(eos);
	stream_begin(r);
	write_envelope(r, s ? s : "{}", s ? strlen(s) : 2, CONNECT_FLAG_END);
	http_stream_finish(r);
	free(s);
}

/* connect-go refuses a streaming call in its interceptors, before the handler,
 * and still answers 200 with the error as the end-of-stream message. */
void rpc_stream_refuse(struct http_req *r, enum api_err e, const char *msg)
{
	finish_stream(r, e, msg ? msg : api_err_code(e), NULL);
}

void rpc_stream_msg_cjson(struct rpc_call *c, cJSON *o)
{
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (s) {
		rpc_stream_msg(c, s, strlen(s), 0);
		free(s);
	}
}

void rpc_data_msg(struct rpc_call *c, const char *key, const uint8_t *p, size_t n)
{
	size_t kl = strlen(key);
	size_t cap = base64_encoded_len(n) + kl + 8;
	char *buf = malloc(cap);
	if (!buf)
		return;
	int o = snprintf(buf, cap, "{\"%s\":\"", key);
	base64_encode(p, n, buf + o);
	size_t len = (size_t)o + base64_encoded_len(n);
	buf[len++] = '"';
	buf[len++] = '}';
	rpc_stream_msg(c, buf, len, 0);
	free(buf);
}

/* Ends the call: the end-of-stream message (streams) or the unary answer. */
void rpc_call_end(struct rpc_call *c, cJSON *unary_result, enum api_err e, const char *msg,
		     const char *cause)
{
	if (c->base.done) {
		cJSON_Delete(unary_result);
		return;
	}
	c->base.done = true;
	struct http_req *r = c->base.r;
	bool failed = msg != NULL;
	if (r && c->envelopes) {
		if (!failed && unary_result)
			rpc_stream_msg_cjson(c, unary_result), unary_result = NULL;
		finish_stream(r, e, msg, cause);
	} else if (r) {
		if (failed) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "code", api_err_connect_code(e));
			char *red = api_redact(msg);
			cJSON_AddStringToObject(o, "message", red ? red : "");
			free(red);
			cJSON_AddItemToObject(o, "error", api_error_object(e, msg, cause, NULL, 0));
			handler_reply_cjson(r, api_err_status(e), o);
		} else {
			handler_reply_cjson(r, 200, unary_result ? unary_result : cJSON_CreateObject());
			unary_result = NULL;
		}
	}
	cJSON_Delete(unary_result);
	agent_call_free(&c->base);
}

void rpc_call_fail(struct rpc_call *c, enum api_err e, const char *msg, const char *cause)
{
	rpc_call_end(c, NULL, e, msg, cause);
}

enum api_err rpc_map_agent_code(const char *code, bool file_op)
{
	if (!code)
		return AE_INTERNAL;
	if (!strcmp(code, "not_found"))
		return AE_NOT_FOUND;
	if (!strcmp(code, "invalid_argument"))
		return AE_INVALID_ARGUMENT;
	if (!strcmp(code, "timeout"))
		return AE_TIMEOUT;
	if (!strcmp(code, "busy"))
		return AE_LIMIT_EXCEEDED;
	if (!strcmp(code, "exists"))
		return AE_CONFLICT;
	/* The agent in this sandbox cannot do it at all (a stand-in agent, an older one). */
	if (!strcmp(code, "unsupported"))
		return AE_UNIMPLEMENTED;
	if (!strcmp(code, "internal") || !strcmp(code, "protocol_error"))
		return AE_INTERNAL;
	return file_op ? AE_FILE_FAILED : AE_EXEC_FAILED;
}

/* An END payload with "error": fails the call and returns true. */
bool rpc_end_failed(struct rpc_call *c, cJSON *payload, const char *why)
{
	if (!payload) {
		rpc_call_fail(c, AE_SANDBOX_NOT_RUNNING, "the sandbox stopped during the call", why);
		return true;
	}
	cJSON *err = cJSON_GetObjectItemCaseSensitive(payload, "error");
	if (!cJSON_IsObject(err))
		return false;
	const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
	const char *msg = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message"));
	char cause[160];
	snprintf(cause, sizeof(cause), "agent: %s", code ? code : "unknown");
	rpc_call_fail(c, rpc_map_agent_code(code, c->m->file_op), msg ? msg : "the operation failed", cause);
	return true;
}

/* ---- call lifecycle ---- */

/* The agent's output goes to the client as it comes: it gets credit back while the
 * client keeps up (or once it is gone and the output is dropped). */
size_t rpc_call_room(struct astream *s)
{
	struct rpc_call *c = s->ctx;
	return c->base.r ? http_stream_room(c->base.r) : SIZE_MAX;
}

static void call_destroy(struct agent_call *b)
{
	struct rpc_call *c = (struct rpc_call *)b;
	connect_dec_free(&c->dec);
	cJSON_Delete(c->entries);
	free(c->filter);
	free(c->parent);
	bytebuf_free(&c->tx);
}

static void call_tick(struct agent_call *b, uint64_t now)
{
	struct rpc_call *c = (struct rpc_call *)b;
	if (b->deadline && now > b->deadline) {
		rpc_call_fail(c, AE_TIMEOUT, "deadline exceeded", "the call took longer than its timeout");
		return;
	}
	if (c->envelopes && b->r && c->m->kind == RPC_SERVER_STREAM && now >= b->next_ka) {
		b->next_ka = now + srv_cfg.keepalive_ms;
		if (http_stream_room(b->r))
			rpc_stream_msg(c, "{}", 2, 0);
	}
}

static const struct agent_call_vt call_vt = { call_tick, call_destroy };

struct rpc_call *rpc_call_new(struct http_req *r, const struct rpc_method *m)
{
	struct rpc_call *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->m = m;
	r->abort_on_eof = m->kind == RPC_SERVER_STREAM;
	agent_call_start(&c->base, r, &call_vt);
	c->started_ms = ur_now_ms();
	uint64_t to = 0;
	int trc = connect_timeout_ms(http_req_header(r, "connect-timeout-ms"), &to);
	c->bad_timeout = trc < 0;
	if (trc == 1)
		c->base.deadline = ur_now_ms() + to;
	else if (m->kind == RPC_UNARY)
		c->base.deadline = ur_now_ms() + UNARY_DEFAULT_DEADLINE_MS;
	return c;
}

/* The sandbox must exist and run, with its agent connected. */
struct agent_conn *rpc_call_agent(struct rpc_call *c)
{
	struct sandbox *sb = sandbox_find(c->base.r->sandbox_id);
	char msg[160];
	if (!sb) {
		char end[420];
		snprintf(msg, sizeof(msg), "no sandbox %s", c->base.r->sandbox_id);
		rpc_call_fail(c, AE_NOT_FOUND, msg, sandbox_end_describe(c->base.r->sandbox_id, end, sizeof(end)) ? NULL : end);
		return NULL;
	}
	if (sb->state != SB_RUNNING || !agent_conn_ready(sb->agent)) {
		snprintf(msg, sizeof(msg), "sandbox %s is %s", sb->id,
			 sb->state == SB_PAUSED ? "paused" : sb->state == SB_STARTING ? "starting" : "stopping");
		rpc_call_fail(c, AE_SANDBOX_NOT_RUNNING, msg, NULL);
		return NULL;
	}
	return sb->agent;
}

/* Returns false when the call failed (and is freed). */
bool rpc_call_open(struct rpc_call *c, cJSON *open, const struct astream_ops *ops)
{
	struct agent_conn *ac = rpc_call_agent(c);
	if (!ac) {
		cJSON_Delete(open);
		return false;
	}
	char *s = cJSON_PrintUnformatted(open);
	cJSON_Delete(open);
	if (!s) {
		rpc_call_fail(c, AE_INTERNAL, "out of memory", NULL);
		return false;
	}
	c->base.as = agent_open(ac, s, ops, c);
	free(s);
	if (!c->base.as) {
		rpc_call_fail(c, AE_INTERNAL, "cannot open a stream to the sandbox's agent", NULL);
		return false;
	}
	return true;
}

/* ---- bytes to the agent (stdin, file content) ---- */

/* -EINVAL when text is not base64 (or cannot be decoded for lack of memory),
 * -ENOMEM when the decoded bytes cannot be queued. */
int rpc_tx_add_base64(struct rpc_call *c, const char *text, size_t *added)
{
	size_t n = strlen(text);
	uint8_t *buf = malloc(base64_decoded_max(n));
	if (!buf || base64_decode(text, n, buf, added)) {
		free(buf);
		return -EINVAL;
	}
	int rc = bytebuf_add(&c->tx, buf, *added);
	free(buf);
	return rc;
}

void rpc_tx_pump(struct rpc_call *c)
{
	if (!c->base.as)
		return;
	if (agent_send_buffered(c->base.as, PROTO_CH_MAIN, &c->tx, c->tx_fin))
		c->tx_fin_sent = true;
	if (c->tx_fin && !c->tx_fin_sent && !bytebuf_pending(&c->tx)) {
		agent_send_data(c->base.as, PROTO_CH_MAIN, true, NULL, 0);
		c->tx_fin_sent = true;
	}
	if (c->base.r && c->base.r->body_paused && bytebuf_pending(&c->tx) < TX_PAUSE_BODY / 4)
		http_req_resume_body(c->base.r);
}

void rpc_as_writable(struct astream *s)
{
	rpc_tx_pump(s->ctx);
}

void rpc_stream_body(struct http_req *r, const uint8_t *p, size_t n, rpc_msg_fn on_msg)
{
	struct rpc_call *c = r->ctx;
	if (!c || c->base.done)
		return;
	while (n) {
		uint8_t flags;
		const uint8_t *msg;
		size_t len;
		int rc = connect_dec_feed(&c->dec, &p, &n, &flags, &msg, &len);
		if (rc < 0) {
			rpc_call_fail(c, rc == -E2BIG ? AE_PAYLOAD_TOO_LARGE : AE_INVALID_ARGUMENT,
				      rc == -E2BIG ? "a message is over 16 MiB"
				      : rc == -EPROTO ? "compressed messages are not supported"
				      : "a request message's envelope flags must be 0", NULL);
			return;
		}
		if (rc == 0)
			break;
		if (on_msg(c, msg, len))
			return; /* the call ended: c is gone */
	}
	if (bytebuf_pending(&c->tx) > TX_PAUSE_BODY)
		http_req_pause_body(r);
}

bool rpc_stream_body_end(struct rpc_call *c, bool opened, const char *no_open)
{
	if (!connect_dec_idle(&c->dec)) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "the body ended inside a message envelope", NULL);
		return false;
	}
	if (!opened) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, no_open, NULL);
		return false;
	}
	return true;
}

/* ---- request parsing helpers ---- */

const char *rpc_jstr(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* An integer field in [lo, hi]: protojson sends int64 as a string, int32 as a
 * number, and either form is accepted for both. Absent: 0 and *out untouched;
 * -EINVAL not an integer; -ERANGE outside [lo, hi]. */
int rpc_req_int(const cJSON *o, const char *key, double lo, double hi, double *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	double d;
	if (!v || cJSON_IsNull(v))
		return 0;
	if (cJSON_IsNumber(v)) {
		d = v->valuedouble;
	} else if (cJSON_IsString(v) && v->valuestring[0] && strlen(v->valuestring) < 24 &&
		   strspn(v->valuestring + (v->valuestring[0] == '-'), "0123456789") ==
			   strlen(v->valuestring + (v->valuestring[0] == '-'))) {
		d = strtod(v->valuestring, NULL);
	} else {
		return -EINVAL;
	}
	if (d != floor(d))
		return -EINVAL;
	if (d < lo || d > hi)
		return -ERANGE;
	*out = d;
	return 0;
}

/* Copies the path argument, which must be a non-empty string. */
bool rpc_add_path(struct rpc_call *c, cJSON *open, const cJSON *req, const char *key)
{
	const char *p = rpc_jstr(req, key);
	if (!p || !*p) {
		char msg[80];
		snprintf(msg, sizeof(msg), "%s must be a non-empty string", key);
		cJSON_Delete(open);
		rpc_call_fail(c, AE_INVALID_ARGUMENT, msg, NULL);
		return false;
	}
	cJSON_AddStringToObject(open, "path", p);
	return true;
}

/* A number the agent sent, as int64: 0 for what is not a number or does not fit (the
 * agent is the sandbox's, and converting NaN or 1e300 to an integer is undefined). */
int64_t rpc_agent_int64(const cJSON *v)
{
	double d = cJSON_GetNumberValue(v);
	return d == d && d >= -0x1p63 && d < 0x1p63 ? (int64_t)d : 0;
}

void rpc_add_int64(cJSON *o, const char *key, int64_t v)
{
	char buf[24];
	if (!v)
		return;
	snprintf(buf, sizeof(buf), "%" PRId64, v);
	cJSON_AddStringToObject(o, key, buf);
}

/* ---- dispatch of the other methods ---- */

void rpc_dispatch(struct http_req *r)
{
	const struct rpc_method *m = rpc_method_find(r->param);
	struct rpc_call *c = rpc_call_new(r, m);
	if (!c) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	const char *ct = http_req_header(r, "content-type");
	bool stream_ct = connect_ct_is_stream_json(ct);
	if (c->bad_timeout) {
		c->envelopes = m->kind != RPC_UNARY && stream_ct;
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "Connect-Timeout-Ms must be 1 to 10 digits", NULL);
		return;
	}
	if (m->unimplemented) {
		c->envelopes = m->kind != RPC_UNARY;
		rpc_call_fail(c, AE_UNIMPLEMENTED, m->unimplemented, NULL);
		return;
	}
	if (m->kind == RPC_SERVER_STREAM) {
		c->envelopes = true;
		if (!stream_ct && !connect_ct_is_json(ct)) {
			rpc_call_fail(c, AE_UNSUPPORTED_MEDIA_TYPE, "server-streaming calls take application/connect+json", NULL);
			return;
		}
	} else if (!connect_ct_is_json(ct)) {
		rpc_call_fail(c, AE_UNSUPPORTED_MEDIA_TYPE, "unary calls take application/json", NULL);
		return;
	}
	const uint8_t *msg = r->body ? r->body : (const uint8_t *)"";
	size_t len = r->body_len;
	cJSON *req;
	bool nul;
	if (stream_ct) {
		struct connect_dec d;
		connect_dec_init(&d, (uint32_t)srv_cfg.max_json_body);
		const uint8_t *p = msg;
		size_t n = len;
		uint8_t flags;
		int rc = connect_dec_feed(&d, &p, &n, &flags, &msg, &len);
		if (rc != 1 || n) {
			connect_dec_free(&d);
			rpc_call_fail(c, AE_INVALID_ARGUMENT, "the request body must be exactly one envelope", NULL);
			return;
		}
		req = json_parse_request(msg, len);
		nul = json_text_has_nul(msg, len);
		connect_dec_free(&d);
	} else {
		req = len ? json_parse_request(msg, len) : cJSON_CreateObject();
		nul = json_text_has_nul(msg, len);
	}
	if (!cJSON_IsObject(req) || nul) {
		nul = cJSON_IsObject(req);
		cJSON_Delete(req);
		rpc_call_fail(c, AE_INVALID_ARGUMENT, nul ? JSON_NUL_MESSAGE : "the request message must be a JSON object",
			  NULL);
		return;
	}
	m->start(c, req);
	cJSON_Delete(req);
}
