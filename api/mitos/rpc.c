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
#include "api/http/http.h"
#include "api/http/json_nul.h"
#include "api/sandbox/sandbox_ends.h"
#include "api/sandbox/sandboxes.h"
#include "api/http/server.h"

#define UNARY_DEFAULT_DEADLINE_MS 120000u
#define MAX_TIMEOUT_S 86400      /* the contract's default ceiling on exec and run_code timeouts */
#define EXEC_TIMEOUT_EXIT_CODE 124 /* what a command killed at its timeout exits with, as timeout(1) */
#define LIST_PAGE_DEFAULT 1000
#define TX_PAUSE_BODY (1u << 20)   /* buffered upload bytes above which we stop reading */
#define MAX_ENVELOPE (16u << 20)

enum rpc_kind { RPC_UNARY, RPC_SERVER_STREAM, RPC_CLIENT_STREAM };

struct rpc_call;
typedef void (*rpc_start_fn)(struct rpc_call *c, cJSON *req);

struct rpc_method {
	const char *name;
	enum rpc_kind kind;
	rpc_start_fn start;
	bool file_op;
	const char *unimplemented; /* why this node does not answer it, or NULL */
};

struct rpc_call {
	struct http_req *r;
	struct astream *as;
	const struct rpc_method *m;
	bool envelopes;        /* response is application/connect+json */
	bool done;
	uint64_t deadline;     /* monotonic ms, 0: none */
	uint64_t next_ka;
	struct bytebuf tx;     /* bytes for the agent waiting for credit */
	bool tx_fin, tx_fin_sent;
	uint64_t started_ms;   /* monotonic, for execTimeMs */
	/* List */
	cJSON *entries;
	uint32_t page_size, page_off;
	char *filter, *parent;
	/* WriteFile */
	struct connect_dec dec;
	bool wf_opened, wf_body_done;
	uint64_t wf_bytes;
	struct rpc_call *prev, *next;
};

static struct rpc_call *calls;
static struct ur_ticker rpc_ticker;
static bool ticker_added;

static void call_free(struct rpc_call *c);
static void tx_pump(struct rpc_call *c);

static void exec_start(struct rpc_call *c, cJSON *req);
static void run_code_start(struct rpc_call *c, cJSON *req);
static void read_start(struct rpc_call *c, cJSON *req);
static void list_start(struct rpc_call *c, cJSON *req);
static void simple_start(struct rpc_call *c, cJSON *req);

#define BIDI_HTTP1 "bidirectional streams need HTTP/2 and this server speaks HTTP/1.1: use ExecStream or " \
	"the WebSocket Exec (GET /sandbox.v1.Sandbox/Exec?sandbox=ID), or RunCodeStream"
#define NOT_HERE "this node does not provide it yet (api/STATUS.md)"

static const struct rpc_method methods[] = {
	{ "ExecStream", RPC_SERVER_STREAM, exec_start, false, NULL },
	{ "RunCodeStream", RPC_SERVER_STREAM, run_code_start, false, NULL },
	{ "ReadFile", RPC_SERVER_STREAM, read_start, true, NULL },
	{ "WriteFile", RPC_CLIENT_STREAM, NULL, true, NULL },
	{ "List", RPC_UNARY, list_start, true, NULL },
	{ "Stat", RPC_UNARY, simple_start, true, NULL },
	{ "Remove", RPC_UNARY, simple_start, true, NULL },
	{ "Mkdir", RPC_UNARY, simple_start, true, NULL },
	{ "Exec", RPC_SERVER_STREAM, NULL, false, BIDI_HTTP1 },
	{ "RunCode", RPC_SERVER_STREAM, NULL, false, BIDI_HTTP1 },
	{ "PortForward", RPC_SERVER_STREAM, NULL, false, BIDI_HTTP1 },
	{ "Archive", RPC_SERVER_STREAM, NULL, true, NOT_HERE },
	{ "Watch", RPC_SERVER_STREAM, NULL, true, NOT_HERE },
	{ "Vitals", RPC_SERVER_STREAM, NULL, false, NOT_HERE },
	{ "Upload", RPC_UNARY, NULL, true, NOT_HERE },
	{ "Processes", RPC_UNARY, NULL, false, NOT_HERE },
	{ "Signal", RPC_UNARY, NULL, false, NOT_HERE },
	/* Capability calls of the cluster control plane; a standalone node has none. */
	{ "Fork", RPC_UNARY, NULL, false, "Fork is a cluster capability: on a standalone node fork with "
	  "POST /v1/sandboxes/{id}/fork" },
	{ "Checkpoint", RPC_UNARY, NULL, false, "Checkpoint is a cluster capability a standalone node does not have" },
	{ "ExtendLifetime", RPC_UNARY, NULL, false, "ExtendLifetime is a cluster capability: on a standalone node "
	  "use POST /v1/set_timeout" },
	{ "Budget", RPC_UNARY, NULL, false, "Budget is a cluster capability a standalone node does not have" },
};

static const struct rpc_method *method_find(const char *name)
{
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (!strcmp(methods[i].name, name))
			return &methods[i];
	return NULL;
}

bool rpc_method_known(const char *name)
{
	return method_find(name) != NULL;
}

/* ---- responses ---- */

static void stream_begin(struct rpc_call *c)
{
	if (c->r && !c->r->resp_started)
		http_stream_start(c->r, 200, "application/connect+json", NULL);
}

static void stream_msg(struct rpc_call *c, const char *json, size_t n, uint8_t flags)
{
	if (!c->r)
		return;
	stream_begin(c);
	uint8_t h[CONNECT_ENVELOPE];
	connect_envelope_header(h, flags, (uint32_t)n);
	http_stream_write2(c->r, h, sizeof(h), json, n);
}

static void stream_msg_cjson(struct rpc_call *c, cJSON *o)
{
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (s) {
		stream_msg(c, s, strlen(s), 0);
		free(s);
	}
}

/* Ends the call: the end-of-stream message (streams) or the unary answer. */
static void call_end(struct rpc_call *c, cJSON *unary_result, enum api_err e, const char *msg,
		     const char *cause)
{
	if (c->done) {
		cJSON_Delete(unary_result);
		return;
	}
	c->done = true;
	struct http_req *r = c->r;
	bool failed = msg != NULL;
	if (r && c->envelopes) {
		cJSON *eos = cJSON_CreateObject();
		if (failed)
			cJSON_AddItemToObject(eos, "error", api_error_object(e, msg, cause, NULL, 1));
		else if (unary_result)
			stream_msg_cjson(c, unary_result), unary_result = NULL;
		char *s = cJSON_PrintUnformatted(eos);
		cJSON_Delete(eos);
		stream_msg(c, s ? s : "{}", s ? strlen(s) : 2, CONNECT_FLAG_END);
		free(s);
		http_stream_finish(r);
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
	call_free(c);
}

static void call_fail(struct rpc_call *c, enum api_err e, const char *msg, const char *cause)
{
	call_end(c, NULL, e, msg, cause);
}

static enum api_err map_agent_code(const char *code, bool file_op)
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
static bool end_failed(struct rpc_call *c, cJSON *payload, const char *why)
{
	if (!payload) {
		call_fail(c, AE_SANDBOX_NOT_RUNNING, "the sandbox stopped during the call", why);
		return true;
	}
	cJSON *err = cJSON_GetObjectItemCaseSensitive(payload, "error");
	if (!cJSON_IsObject(err))
		return false;
	const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
	const char *msg = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message"));
	char cause[160];
	snprintf(cause, sizeof(cause), "agent: %s", code ? code : "unknown");
	call_fail(c, map_agent_code(code, c->m->file_op), msg ? msg : "the operation failed", cause);
	return true;
}

/* ---- call lifecycle ---- */

static void call_abort(struct http_req *r)
{
	struct rpc_call *c = r->ctx;
	c->r = NULL;
	r->ctx = NULL;
	call_free(c);
}

static void call_writable(struct http_req *r)
{
	struct rpc_call *c = r->ctx;
	if (c->as)
		agent_room_changed(c->as);
}

/* The agent's output goes to the client as it comes: it gets credit back while the
 * client keeps up (or once it is gone and the output is dropped). */
static size_t call_room(struct astream *s)
{
	struct rpc_call *c = s->ctx;
	return c->r ? http_stream_room(c->r) : SIZE_MAX;
}

static void wf_body(struct http_req *r, const uint8_t *p, size_t n);
static void wf_body_end(struct http_req *r);

static const struct http_req_ops call_ops = { .writable = call_writable, .abort = call_abort };
static const struct http_req_ops wf_ops = { .body = wf_body, .body_end = wf_body_end,
					    .writable = call_writable, .abort = call_abort };

static void call_free(struct rpc_call *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else if (calls == c)
		calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->as) {
		struct astream *as = c->as;
		c->as = NULL;
		agent_cancel(as);
	}
	if (c->r) {
		c->r->ctx = NULL;
		c->r->ops = NULL;
	}
	connect_dec_free(&c->dec);
	cJSON_Delete(c->entries);
	free(c->filter);
	free(c->parent);
	bytebuf_free(&c->tx);
	free(c);
}

static void rpc_tick(struct ur_ticker *t, uint64_t now)
{
	(void)t;
	for (struct rpc_call *c = calls, *next; c; c = next) {
		next = c->next;
		if (c->deadline && now > c->deadline) {
			call_fail(c, AE_TIMEOUT, "deadline exceeded", "the call took longer than its timeout");
			continue;
		}
		if (c->envelopes && c->r && c->m->kind == RPC_SERVER_STREAM && now >= c->next_ka) {
			c->next_ka = now + srv_cfg.keepalive_ms;
			if (http_stream_room(c->r))
				stream_msg(c, "{}", 2, 0);
		}
	}
}

static struct rpc_call *call_new(struct http_req *r, const struct rpc_method *m)
{
	struct rpc_call *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->r = r;
	c->m = m;
	r->ctx = c;
	r->abort_on_eof = m->kind == RPC_SERVER_STREAM;
	r->ops = m->kind == RPC_CLIENT_STREAM ? &wf_ops : &call_ops;
	c->started_ms = ur_now_ms();
	c->next_ka = c->started_ms + srv_cfg.keepalive_ms;
	const char *to = http_req_header(r, "connect-timeout-ms");
	if (to && *to && strlen(to) <= 10 && strspn(to, "0123456789") == strlen(to))
		c->deadline = ur_now_ms() + strtoull(to, NULL, 10);
	else if (m->kind == RPC_UNARY)
		c->deadline = ur_now_ms() + UNARY_DEFAULT_DEADLINE_MS;
	c->next = calls;
	if (calls)
		calls->prev = c;
	calls = c;
	if (!ticker_added) {
		rpc_ticker.fn = rpc_tick;
		ur_add_ticker(&rpc_ticker);
		ticker_added = true;
	}
	return c;
}

/* The sandbox must exist and run, with its agent connected. */
static struct agent_conn *call_agent(struct rpc_call *c)
{
	struct sandbox *sb = sandbox_find(c->r->sandbox_id);
	char msg[160];
	if (!sb) {
		char end[420];
		snprintf(msg, sizeof(msg), "no sandbox %s", c->r->sandbox_id);
		call_fail(c, AE_NOT_FOUND, msg, sandbox_end_describe(c->r->sandbox_id, end, sizeof(end)) ? NULL : end);
		return NULL;
	}
	if (sb->state != SB_RUNNING || !agent_conn_ready(sb->agent)) {
		snprintf(msg, sizeof(msg), "sandbox %s is %s", sb->id,
			 sb->state == SB_PAUSED ? "paused" : sb->state == SB_STARTING ? "starting" : "stopping");
		call_fail(c, AE_SANDBOX_NOT_RUNNING, msg, NULL);
		return NULL;
	}
	return sb->agent;
}

/* Returns false when the call failed (and is freed). */
static bool call_open(struct rpc_call *c, cJSON *open, const struct astream_ops *ops)
{
	struct agent_conn *ac = call_agent(c);
	if (!ac) {
		cJSON_Delete(open);
		return false;
	}
	char *s = cJSON_PrintUnformatted(open);
	cJSON_Delete(open);
	if (!s) {
		call_fail(c, AE_INTERNAL, "out of memory", NULL);
		return false;
	}
	c->as = agent_open(ac, s, ops, c);
	free(s);
	if (!c->as) {
		call_fail(c, AE_INTERNAL, "cannot open a stream to the sandbox's agent", NULL);
		return false;
	}
	return true;
}

/* ---- bytes to the agent (stdin, file content) ---- */

/* -EINVAL when text is not base64 (or cannot be decoded for lack of memory),
 * -ENOMEM when the decoded bytes cannot be queued. */
static int tx_add_base64(struct rpc_call *c, const char *text, size_t *added)
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

static void tx_pump(struct rpc_call *c)
{
	if (!c->as)
		return;
	if (agent_send_buffered(c->as, PROTO_CH_MAIN, &c->tx, c->tx_fin))
		c->tx_fin_sent = true;
	if (c->tx_fin && !c->tx_fin_sent && !bytebuf_pending(&c->tx)) {
		agent_send_data(c->as, PROTO_CH_MAIN, true, NULL, 0);
		c->tx_fin_sent = true;
	}
	if (c->r && c->r->body_paused && bytebuf_pending(&c->tx) < TX_PAUSE_BODY / 4)
		http_req_resume_body(c->r);
}

static void as_writable(struct astream *s)
{
	tx_pump(s->ctx);
}

/* ---- request parsing helpers ---- */

static const char *jstr(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* An integer field in [lo, hi]: protojson sends int64 as a string, int32 as a
 * number, and either form is accepted for both. Absent: 0 and *out untouched;
 * -EINVAL not an integer; -ERANGE outside [lo, hi]. */
static int req_int(const cJSON *o, const char *key, double lo, double hi, double *out)
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

/* A requested timeout in whole seconds: honoured, or refused when over the
 * ceiling (never silently reduced). False when the call failed. */
static bool req_timeout(struct rpc_call *c, const cJSON *req, double *secs)
{
	double raw = 0;
	*secs = 0;
	if (req_int(req, "timeoutSeconds", -1e15, 1e15, &raw) || raw < 0) {
		call_fail(c, AE_INVALID_ARGUMENT, "timeoutSeconds must be a whole number of seconds (0: none)", NULL);
		return false;
	}
	if (raw > MAX_TIMEOUT_S) {
		char msg[120];
		snprintf(msg, sizeof(msg), "timeoutSeconds is over this server's ceiling of %d seconds", MAX_TIMEOUT_S);
		call_fail(c, AE_TIMEOUT_TOO_LARGE, msg, NULL);
		return false;
	}
	*secs = raw;
	if (*secs > 0 && !c->deadline)
		c->deadline = ur_now_ms() + (uint64_t)(*secs * 1000) + 10000; /* a backstop behind the agent's kill */
	return true;
}

/* The contract's env, a list of {key, value}, as the agent's object. NULL: invalid. */
static cJSON *env_object(const cJSON *env)
{
	cJSON *o = cJSON_CreateObject();
	if (!env || cJSON_IsNull(env))
		return o;
	if (!cJSON_IsArray(env)) {
		cJSON_Delete(o);
		return NULL;
	}
	const cJSON *e;
	cJSON_ArrayForEach(e, env) {
		const char *k = jstr(e, "key"), *v = jstr(e, "value");
		if (!cJSON_IsObject(e) || !k || !*k) {
			cJSON_Delete(o);
			return NULL;
		}
		cJSON_DeleteItemFromObjectCaseSensitive(o, k);
		cJSON_AddStringToObject(o, k, v ? v : "");
	}
	return o;
}

/* Copies the path argument, which must be a non-empty string. */
static bool add_path(struct rpc_call *c, cJSON *open, const cJSON *req, const char *key)
{
	const char *p = jstr(req, key);
	if (!p || !*p) {
		char msg[80];
		snprintf(msg, sizeof(msg), "%s must be a non-empty string", key);
		cJSON_Delete(open);
		call_fail(c, AE_INVALID_ARGUMENT, msg, NULL);
		return false;
	}
	cJSON_AddStringToObject(open, "path", p);
	return true;
}

/* A number the agent sent, as int64: 0 for what is not a number or does not fit (the
 * agent is the sandbox's, and converting NaN or 1e300 to an integer is undefined). */
static int64_t agent_int64(const cJSON *v)
{
	double d = cJSON_GetNumberValue(v);
	return d == d && d >= -0x1p63 && d < 0x1p63 ? (int64_t)d : 0;
}

static void add_int64(cJSON *o, const char *key, int64_t v)
{
	char buf[24];
	if (!v)
		return;
	snprintf(buf, sizeof(buf), "%" PRId64, v);
	cJSON_AddStringToObject(o, key, buf);
}

/* An agent ENTRY as the contract's FileInfo. */
static cJSON *file_info(const cJSON *e)
{
	cJSON *o = cJSON_CreateObject();
	const char *name = jstr(e, "name"), *path = jstr(e, "path"), *type = jstr(e, "type");
	if (name && *name)
		cJSON_AddStringToObject(o, "name", name);
	if (path && *path)
		cJSON_AddStringToObject(o, "path", path);
	if (type && !strcmp(type, "dir"))
		cJSON_AddBoolToObject(o, "isDir", 1);
	add_int64(o, "size", agent_int64(cJSON_GetObjectItem(e, "size")));
	double mode = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "mode"));
	if (mode > 0 && mode < 4294967296.0)
		cJSON_AddNumberToObject(o, "mode", mode);
	add_int64(o, "modifiedAtUnix", agent_int64(cJSON_GetObjectItem(e, "mtime_ns")) / 1000000000);
	return o;
}

/* ---- ExecStream ---- */

static void data_msg(struct rpc_call *c, const char *key, const uint8_t *p, size_t n)
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
	stream_msg(c, buf, len, 0);
	free(buf);
}

static void exec_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin;
	struct rpc_call *c = s->ctx;
	if (n && (ch == PROTO_CH_STDOUT || ch == PROTO_CH_STDERR))
		data_msg(c, ch == PROTO_CH_STDOUT ? "stdout" : "stderr", p, n);
}

/* The terminal ExecExit: exit code, run time, and a spawn failure's reason. */
static void exit_msg(struct rpc_call *c, int code, const char *error)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *x = cJSON_AddObjectToObject(o, "exit");
	if (code)
		cJSON_AddNumberToObject(x, "exitCode", code);
	cJSON_AddNumberToObject(x, "execTimeMs", (double)(ur_now_ms() - c->started_ms));
	if (error && *error)
		cJSON_AddStringToObject(x, "error", error);
	stream_msg_cjson(c, o);
}

static void exec_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->as = NULL;
	if (!payload) {
		call_fail(c, AE_SANDBOX_NOT_RUNNING, "the sandbox stopped during the call", why);
		return;
	}
	cJSON *exited = cJSON_GetObjectItem(payload, "exited");
	cJSON *err = cJSON_GetObjectItem(payload, "error");
	const char *ecode = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
	if (ecode && !strcmp(ecode, "timeout")) {
		exit_msg(c, EXEC_TIMEOUT_EXIT_CODE, NULL);
	} else if (cJSON_IsBool(exited)) {
		/* A signal death reads as a shell reports it: 128 + the signal. */
		int code = cJSON_IsTrue(exited) ? (int)cJSON_GetNumberValue(cJSON_GetObjectItem(payload, "exit_code"))
						 : 128 + (int)cJSON_GetNumberValue(cJSON_GetObjectItem(payload, "signal"));
		exit_msg(c, code, NULL);
	} else if (cJSON_IsObject(err) && map_agent_code(ecode, false) != AE_UNIMPLEMENTED &&
		   map_agent_code(ecode, false) != AE_INTERNAL && map_agent_code(ecode, false) != AE_LIMIT_EXCEEDED) {
		/* The command never ran (no such cwd, no such user): ExecExit.error says why.
		 * An agent that cannot exec at all, or broke, fails the call instead. */
		const char *emsg = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message"));
		char reason[400];
		snprintf(reason, sizeof(reason), "%s (agent: %s)", emsg ? emsg : "the command could not start",
			 ecode ? ecode : "unknown");
		exit_msg(c, -1, reason);
	} else {
		if (!end_failed(c, payload, why))
			call_fail(c, AE_INTERNAL, "the agent ended the command without an exit status", NULL);
		return;
	}
	call_end(c, NULL, 0, NULL, NULL);
}

static const struct astream_ops exec_ops = { exec_data, NULL, exec_end, as_writable, call_room };

/* ExecStreamRequest {command, args, env, cwd, timeoutSeconds}: with args, command
 * is the program; without, a shell command line. */
static void exec_start(struct rpc_call *c, cJSON *req)
{
	const char *cmd = jstr(req, "command");
	const cJSON *args = cJSON_GetObjectItemCaseSensitive(req, "args");
	cJSON *env = env_object(cJSON_GetObjectItemCaseSensitive(req, "env"));
	bool args_ok = !args || cJSON_IsNull(args) || cJSON_IsArray(args);
	for (const cJSON *a = cJSON_IsArray(args) ? args->child : NULL; a; a = a->next)
		if (!cJSON_IsString(a))
			args_ok = false;
	if (!cmd || !*cmd || !args_ok || !env || cJSON_HasObjectItem(req, "cwd") != !!jstr(req, "cwd")) {
		cJSON_Delete(env);
		call_fail(c, AE_INVALID_ARGUMENT, "command must be a non-empty string; args a list of strings; env a "
			  "list of {key, value}; cwd a string", NULL);
		return;
	}
	double timeout;
	if (!req_timeout(c, req, &timeout)) {
		cJSON_Delete(env);
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "exec");
	if (cJSON_GetArraySize(args) > 0) {
		cJSON *argv = cJSON_AddArrayToObject(open, "argv");
		cJSON_AddItemToArray(argv, cJSON_CreateString(cmd));
		for (const cJSON *a = args->child; a; a = a->next)
			cJSON_AddItemToArray(argv, cJSON_CreateString(a->valuestring));
	} else {
		cJSON_AddStringToObject(open, "cmd", cmd);
		cJSON_AddStringToObject(open, "shell", "/bin/bash");
	}
	cJSON_AddItemToObject(open, "env", env);
	const char *cwd = jstr(req, "cwd");
	if (cwd && *cwd)
		cJSON_AddStringToObject(open, "cwd", cwd);
	if (timeout > 0)
		cJSON_AddNumberToObject(open, "timeout_ms", timeout * 1000);
	call_open(c, open, &exec_ops);
}

/* ---- RunCodeStream ---- */

static void code_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin;
	struct rpc_call *c = s->ctx;
	if (n && (ch == PROTO_CH_STDOUT || ch == PROTO_CH_STDERR))
		data_msg(c, ch == PROTO_CH_STDOUT ? "stdout" : "stderr", p, n);
}

/* A kernel display value as protojson bytes: the value's text (a JSON value
 * serialized), base64-encoded once. */
static cJSON *mime_bytes(const cJSON *v)
{
	char *text = cJSON_IsString(v) ? NULL : cJSON_PrintUnformatted(v);
	const char *t = cJSON_IsString(v) ? v->valuestring : text;
	size_t n = t ? strlen(t) : 0;
	char *b64 = malloc(base64_encoded_len(n) + 1);
	cJSON *out = NULL;
	if (b64) {
		base64_encode((const uint8_t *)(t ? t : ""), n, b64);
		b64[base64_encoded_len(n)] = 0;
		out = cJSON_CreateString(b64);
	}
	free(b64);
	free(text);
	return out ? out : cJSON_CreateString("");
}

/* result -> RunResult {text, data: map<mime, bytes>}; error -> RunError {name,
 * value, traceback: lines}. */
static void code_event(struct astream *s, cJSON *ev)
{
	struct rpc_call *c = s->ctx;
	const char *type = jstr(ev, "type");
	cJSON *o = cJSON_CreateObject();
	if (type && !strcmp(type, "result")) {
		cJSON *res = cJSON_AddObjectToObject(o, "result");
		const cJSON *data = cJSON_GetObjectItem(ev, "data");
		const char *plain = jstr(data, "text/plain");
		if (cJSON_IsTrue(cJSON_GetObjectItem(ev, "is_main_result")) && plain && *plain)
			cJSON_AddStringToObject(res, "text", plain);
		cJSON *map = cJSON_AddObjectToObject(res, "data");
		const cJSON *v;
		cJSON_ArrayForEach(v, data)
			cJSON_AddItemToObject(map, v->string, mime_bytes(v));
	} else if (type && !strcmp(type, "error")) {
		cJSON *err = cJSON_AddObjectToObject(o, "error");
		const char *name = jstr(ev, "name"), *value = jstr(ev, "value"), *tb = jstr(ev, "traceback");
		cJSON_AddStringToObject(err, "name", name ? name : "");
		cJSON_AddStringToObject(err, "value", value ? value : "");
		cJSON *lines = cJSON_AddArrayToObject(err, "traceback");
		for (const char *p = tb; p && *p;) {
			const char *nl = strchr(p, '\n');
			size_t len = nl ? (size_t)(nl - p) : strlen(p);
			char *line = strndup(p, len);
			if (line)
				cJSON_AddItemToArray(lines, cJSON_CreateString(line));
			free(line);
			p += len + (nl != NULL);
		}
	} else {
		cJSON_Delete(o);
		return;
	}
	stream_msg_cjson(c, o);
}

static void code_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->as = NULL;
	if (end_failed(c, payload, why))
		return;
	/* exitCode is a oneof member: protojson writes it even when 0. */
	const char *st = jstr(payload, "status");
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "{\"exitCode\":%d}", st && !strcmp(st, "error") ? 1 : 0);
	stream_msg(c, buf, (size_t)n, 0);
	call_end(c, NULL, 0, NULL, NULL);
}

static const struct astream_ops code_ops = { code_data, code_event, code_end, NULL, call_room };

/* RunCodeStreamRequest {code, language, timeoutSeconds}. */
static void run_code_start(struct rpc_call *c, cJSON *req)
{
	const char *code = jstr(req, "code");
	const char *lang = jstr(req, "language");
	if (!code) {
		call_fail(c, AE_INVALID_ARGUMENT, "code must be a string", NULL);
		return;
	}
	if (lang && *lang && strcmp(lang, "python") && strcmp(lang, "python3")) {
		call_fail(c, AE_INVALID_ARGUMENT, "language must be \"python\"", "only Python kernels exist");
		return;
	}
	double timeout;
	if (!req_timeout(c, req, &timeout))
		return;
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "run_code");
	cJSON_AddStringToObject(open, "code", code);
	if (timeout > 0)
		cJSON_AddNumberToObject(open, "timeout_ms", timeout * 1000);
	call_open(c, open, &code_ops);
}

/* ---- ReadFile ---- */

static void read_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin; (void)ch;
	struct rpc_call *c = s->ctx;
	if (n)
		data_msg(c, "data", p, n);
}

static void read_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->as = NULL;
	if (end_failed(c, payload, why))
		return;
	call_end(c, NULL, 0, NULL, NULL);
}

static const struct astream_ops read_ops = { read_data, NULL, read_end, NULL, call_room };

static void read_start(struct rpc_call *c, cJSON *req)
{
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "read");
	if (add_path(c, open, req, "path"))
		call_open(c, open, &read_ops);
}

/* ---- List and the other unary file calls ---- */

static void list_event(struct astream *s, cJSON *ev)
{
	struct rpc_call *c = s->ctx;
	const cJSON *e;
	cJSON_ArrayForEach(e, cJSON_GetObjectItem(ev, "entries")) {
		const char *name = jstr(e, "name");
		if (!c->filter || (name && !fnmatch(c->filter, name, 0)))
			cJSON_AddItemToArray(c->entries, file_info(e));
	}
}

static int by_name(const void *a, const void *b)
{
	const char *x = jstr(*(const cJSON *const *)a, "name"), *y = jstr(*(const cJSON *const *)b, "name");
	return strcmp(x ? x : "", y ? y : "");
}

/* A parent that is a file lists as itself (as ls(1) does): the SDK's files.exists()
 * lists the path it asks about. */
static void list_file_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->as = NULL;
	if (end_failed(c, payload, why))
		return;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "entries"), file_info(cJSON_GetObjectItem(payload, "entry")));
	call_end(c, o, 0, NULL, NULL);
}

static const struct astream_ops list_file_ops = { NULL, NULL, list_file_end, NULL, NULL };

/* Pages are offsets into the listing sorted by name, so they hold still between calls. */
static void list_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->as = NULL;
	const char *ecode = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(payload, "error"), "code"));
	if (ecode && !strcmp(ecode, "not_a_directory") && c->parent) {
		cJSON *open = cJSON_CreateObject();
		cJSON_AddStringToObject(open, "op", "stat");
		cJSON_AddStringToObject(open, "path", c->parent);
		call_open(c, open, &list_file_ops);
		return;
	}
	if (end_failed(c, payload, why))
		return;
	size_t n = (size_t)cJSON_GetArraySize(c->entries);
	cJSON **v = malloc((n ? n : 1) * sizeof(*v));
	if (!v) {
		call_fail(c, AE_INTERNAL, "out of memory", NULL);
		return;
	}
	size_t i = 0;
	for (cJSON *e = c->entries->child, *next; e; e = next, i++) {
		next = e->next;
		e->next = e->prev = NULL;
		v[i] = e;
	}
	c->entries->child = NULL;
	qsort(v, n, sizeof(*v), by_name);
	cJSON *o = cJSON_CreateObject();
	cJSON *page = cJSON_AddArrayToObject(o, "entries");
	size_t end = c->page_off + (size_t)c->page_size;
	for (i = 0; i < n; i++) {
		if (i >= c->page_off && i < end)
			cJSON_AddItemToArray(page, v[i]);
		else
			cJSON_Delete(v[i]);
	}
	free(v);
	if (end < n) {
		char tok[16];
		snprintf(tok, sizeof(tok), "%zu", end);
		cJSON_AddStringToObject(o, "nextPageToken", tok);
	}
	call_end(c, o, 0, NULL, NULL);
}

static const struct astream_ops list_ops = { NULL, list_event, list_end, NULL, NULL };

/* ListRequest {parent, pageSize, pageToken, filter (a shell pattern on names)}. */
static void list_start(struct rpc_call *c, cJSON *req)
{
	double size = LIST_PAGE_DEFAULT, off = 0;
	const char *tok = jstr(req, "pageToken"), *filter = jstr(req, "filter");
	if (req_int(req, "pageSize", 0, 100000, &size) || (cJSON_HasObjectItem(req, "filter") && !filter)) {
		call_fail(c, AE_INVALID_ARGUMENT, "pageSize must be from 0 to 100000; filter a string", NULL);
		return;
	}
	if ((tok && *tok && (strlen(tok) > 6 || strspn(tok, "0123456789") != strlen(tok))) ||
	    (cJSON_HasObjectItem(req, "pageToken") && !tok)) {
		call_fail(c, AE_INVALID_ARGUMENT, "pageToken is not one this server gave", NULL);
		return;
	}
	if (tok && *tok)
		off = strtod(tok, NULL);
	c->page_size = size > 0 ? (uint32_t)size : LIST_PAGE_DEFAULT;
	c->page_off = (uint32_t)off;
	if (filter && *filter && !(c->filter = strdup(filter))) {
		call_fail(c, AE_INTERNAL, "out of memory", NULL);
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "list");
	if (!add_path(c, open, req, "parent"))
		return;
	c->entries = cJSON_CreateArray();
	c->parent = strdup(jstr(req, "parent"));
	call_open(c, open, &list_ops);
}

static void simple_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->as = NULL;
	const char *ecode = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(payload, "error"), "code"));
	/* Mkdir makes sure a directory is there, as mkdir -p: one that exists is success. */
	bool mkdir_exists = !strcmp(c->m->name, "Mkdir") && ecode && !strcmp(ecode, "exists");
	if (!mkdir_exists && end_failed(c, payload, why))
		return;
	bool stat = !strcmp(c->m->name, "Stat");
	call_end(c, stat ? file_info(cJSON_GetObjectItem(payload, "entry")) : cJSON_CreateObject(), 0, NULL, NULL);
}

static const struct astream_ops simple_ops = { NULL, NULL, simple_end, NULL, NULL };

/* Stat {path}, Remove {path, recursive}, Mkdir {path} (with its parents). */
static void simple_start(struct rpc_call *c, cJSON *req)
{
	const char *name = c->m->name;
	const cJSON *rec = cJSON_GetObjectItem(req, "recursive");
	if (rec && !cJSON_IsBool(rec)) {
		call_fail(c, AE_INVALID_ARGUMENT, "recursive must be a boolean", NULL);
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", !strcmp(name, "Stat") ? "stat" : !strcmp(name, "Remove") ? "remove" : "mkdir");
	if (!add_path(c, open, req, "path"))
		return;
	if (!strcmp(name, "Remove"))
		cJSON_AddBoolToObject(open, "recursive", cJSON_IsTrue(rec));
	if (!strcmp(name, "Mkdir"))
		cJSON_AddBoolToObject(open, "parents", 1);
	call_open(c, open, &simple_ops);
}

/* ---- WriteFile (client stream) ---- */

static void wf_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->as = NULL;
	if (end_failed(c, payload, why))
		return;
	if (!c->wf_body_done) {
		call_fail(c, AE_INTERNAL, "the agent ended the write before the body did", NULL);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON *bytes = cJSON_GetObjectItem(payload, "bytes");
	add_int64(o, "bytesWritten", cJSON_IsNumber(bytes) ? agent_int64(bytes) : (int64_t)c->wf_bytes);
	call_end(c, o, 0, NULL, NULL);
}

static const struct astream_ops wf_agent_ops = { NULL, NULL, wf_end, as_writable, NULL };

/* One WriteFileRequest: the oneof {open: {path, mode}} first, then {data} messages. */
static int wf_message(struct rpc_call *c, const uint8_t *msg, size_t len)
{
	cJSON *m = cJSON_ParseWithLength((const char *)msg, len);
	const cJSON *open = cJSON_GetObjectItem(m, "open"), *d = cJSON_GetObjectItem(m, "data");
	const char *bad = !cJSON_IsObject(m) ? "each WriteFileRequest must be a JSON object"
		: json_text_has_nul(msg, len) ? JSON_NUL_MESSAGE
		: (open && d) ? "a WriteFileRequest carries open or data, not both"
		: (!c->wf_opened && !open) ? "the first WriteFileRequest must carry the open oneof (path, mode)"
		: (c->wf_opened && open) ? "only the first WriteFileRequest carries open"
		: (d && !cJSON_IsString(d)) ? "data must be base64 text" : NULL;
	double mode = 0644;
	if (!bad && open && (!cJSON_IsObject(open) || req_int(open, "mode", 0, 07777, &mode)))
		bad = "open must be {path, mode} with mode a permission number up to 07777";
	if (bad) {
		cJSON_Delete(m);
		call_fail(c, AE_INVALID_ARGUMENT, bad, NULL);
		return -EINVAL;
	}
	if (open) {
		cJSON *aopen = cJSON_CreateObject();
		cJSON_AddStringToObject(aopen, "op", "write");
		if (!add_path(c, aopen, open, "path")) {
			cJSON_Delete(m);
			return -EINVAL;
		}
		cJSON_AddNumberToObject(aopen, "mode", mode ? mode : 0644);
		c->wf_opened = true;
		if (!call_open(c, aopen, &wf_agent_ops)) {
			cJSON_Delete(m);
			return -EIO;
		}
	}
	if (d && *d->valuestring) {
		size_t k;
		int rc = tx_add_base64(c, d->valuestring, &k);
		if (rc) {
			cJSON_Delete(m);
			call_fail(c, rc == -ENOMEM ? AE_INTERNAL : AE_INVALID_ARGUMENT,
				  rc == -ENOMEM ? "out of memory" : "data must be base64", NULL);
			return rc;
		}
		c->wf_bytes += (uint64_t)k;
	}
	cJSON_Delete(m);
	tx_pump(c);
	return 0;
}

static void wf_body(struct http_req *r, const uint8_t *p, size_t n)
{
	struct rpc_call *c = r->ctx;
	if (!c || c->done)
		return;
	while (n && !c->done) {
		uint8_t flags;
		const uint8_t *msg;
		size_t len;
		int rc = connect_dec_feed(&c->dec, &p, &n, &flags, &msg, &len);
		if (rc < 0) {
			call_fail(c, rc == -E2BIG ? AE_PAYLOAD_TOO_LARGE : AE_INVALID_ARGUMENT,
				  rc == -E2BIG ? "a WriteFile message is over 16 MiB" : "compressed messages are not supported",
				  NULL);
			return;
		}
		if (rc == 0)
			break;
		if (wf_message(c, msg, len))
			return;
	}
	if (!c->done && bytebuf_pending(&c->tx) > TX_PAUSE_BODY)
		http_req_pause_body(r);
}

static void wf_body_end(struct http_req *r)
{
	struct rpc_call *c = r->ctx;
	if (!c || c->done)
		return;
	c->wf_body_done = true;
	if (!connect_dec_idle(&c->dec)) {
		call_fail(c, AE_INVALID_ARGUMENT, "the body ended inside a message envelope", NULL);
		return;
	} else if (!c->wf_opened) {
		call_fail(c, AE_INVALID_ARGUMENT, "the first WriteFileRequest must carry the open oneof (path, mode)", NULL);
		return;
	}
	c->tx_fin = true;
	tx_pump(c);
}

void rpc_write_file(struct http_req *r)
{
	const struct rpc_method *m = method_find("WriteFile");
	struct rpc_call *c = call_new(r, m);
	if (!c) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	const char *ct = http_req_header(r, "content-type");
	/* A client stream: its answer and errors are enveloped whatever was sent. */
	c->envelopes = true;
	if (!connect_ct_is_stream_json(ct)) {
		call_fail(c, AE_UNSUPPORTED_MEDIA_TYPE, "WriteFile is a client stream: send application/connect+json", NULL);
		return;
	}
	connect_dec_init(&c->dec, MAX_ENVELOPE);
	/* Fail early, before the client sends megabytes for nothing. */
	struct sandbox *sb = sandbox_find(r->sandbox_id);
	if (!sb || sb->state != SB_RUNNING)
		call_agent(c);
}

/* ---- dispatch of the other methods ---- */

void rpc_dispatch(struct http_req *r)
{
	const struct rpc_method *m = method_find(r->param);
	struct rpc_call *c = call_new(r, m);
	if (!c) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	const char *ct = http_req_header(r, "content-type");
	bool stream_ct = connect_ct_is_stream_json(ct);
	if (m->unimplemented) {
		c->envelopes = m->kind != RPC_UNARY;
		call_fail(c, AE_UNIMPLEMENTED, m->unimplemented, NULL);
		return;
	}
	if (m->kind == RPC_SERVER_STREAM) {
		c->envelopes = true;
		if (!stream_ct && !connect_ct_is_json(ct)) {
			call_fail(c, AE_UNSUPPORTED_MEDIA_TYPE, "server-streaming calls take application/connect+json", NULL);
			return;
		}
	} else if (!connect_ct_is_json(ct)) {
		call_fail(c, AE_UNSUPPORTED_MEDIA_TYPE, "unary calls take application/json", NULL);
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
			call_fail(c, AE_INVALID_ARGUMENT, "the request body must be exactly one envelope", NULL);
			return;
		}
		req = cJSON_ParseWithLength((const char *)msg, len);
		nul = json_text_has_nul(msg, len);
		connect_dec_free(&d);
	} else {
		req = len ? cJSON_ParseWithLength((const char *)msg, len) : cJSON_CreateObject();
		nul = json_text_has_nul(msg, len);
	}
	if (!cJSON_IsObject(req) || nul) {
		nul = cJSON_IsObject(req);
		cJSON_Delete(req);
		call_fail(c, AE_INVALID_ARGUMENT, nul ? JSON_NUL_MESSAGE : "the request message must be a JSON object",
			  NULL);
		return;
	}
	m->start(c, req);
	cJSON_Delete(req);
}
