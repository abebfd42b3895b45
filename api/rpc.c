/* The Connect service sandbox.v1.Sandbox (JSON codec): each call maps onto one
 * agent operation on the sandbox's agent connection. Server streams carry
 * envelopes, keepalives and an end-of-stream message; agent output is credited
 * back to the agent only as the HTTP client takes it, so a slow client pauses
 * the process in the sandbox instead of growing our memory. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/base64.h"
#include "agent/proto.h"
#include "api/agent_client.h"
#include "api/bytebuf.h"
#include "api/connect.h"
#include "api/errors.h"
#include "api/handlers.h"
#include "api/http.h"
#include "api/json_nul.h"
#include "api/sandbox_ends.h"
#include "api/sandboxes.h"
#include "api/server.h"

#define UNARY_DEFAULT_DEADLINE_MS 120000u
#define EXEC_DEFAULT_TIMEOUT_S 30
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
};

struct rpc_call {
	struct http_req *r;
	struct astream *as;
	const struct rpc_method *m;
	bool envelopes;        /* response is application/connect+json */
	bool done;
	uint64_t deadline;     /* monotonic ms, 0: none */
	uint64_t next_ka;
	size_t owed;           /* agent bytes to credit once the client catches up */
	struct bytebuf tx;     /* bytes for the agent waiting for credit */
	bool tx_fin, tx_fin_sent;
	uint8_t utf8_carry[2][4];
	size_t utf8_carry_len[2];
	cJSON *entries;        /* List */
	/* WriteFile */
	struct connect_dec dec;
	bool wf_unary, wf_opened, wf_body_done;
	cJSON *wf_open;
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

static const struct rpc_method methods[] = {
	{ "ExecStream", RPC_SERVER_STREAM, exec_start, false },
	{ "RunCodeStream", RPC_SERVER_STREAM, run_code_start, false },
	{ "ReadFile", RPC_SERVER_STREAM, read_start, true },
	{ "WriteFile", RPC_CLIENT_STREAM, NULL, true },
	{ "List", RPC_UNARY, list_start, true },
	{ "Stat", RPC_UNARY, simple_start, true },
	{ "Remove", RPC_UNARY, simple_start, true },
	{ "Mkdir", RPC_UNARY, simple_start, true },
	{ "Rename", RPC_UNARY, simple_start, true },
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
	if (c->owed && c->as && http_stream_room(r)) {
		agent_consumed(c->as, c->owed);
		c->owed = 0;
	}
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
	cJSON_Delete(c->wf_open);
	bytebuf_free(&c->tx);
	free(c);
}

/* Credits the agent for n bytes now, or once the client has taken our output. */
static void consume(struct rpc_call *c, size_t n)
{
	if (!c->as)
		return;
	if (c->r && http_stream_room(c->r) == 0) {
		c->owed += n;
		return;
	}
	agent_consumed(c->as, c->owed + n);
	c->owed = 0;
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
				stream_msg(c, "{\"keepalive\":{}}", 16, 0);
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
	c->next_ka = ur_now_ms() + srv_cfg.keepalive_ms;
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

static const char *jstr(const cJSON *o, const char *a, const char *b)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, a);
	if (!v && b)
		v = cJSON_GetObjectItemCaseSensitive(o, b);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool bad_type(const cJSON *o, const char *key, int (*is)(const cJSON *))
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return v && !is(v);
}

static int is_str(const cJSON *v) { return cJSON_IsString(v); }
static int is_bool(const cJSON *v) { return cJSON_IsBool(v); }
static int is_num(const cJSON *v) { return cJSON_IsNumber(v); }

static bool env_ok(const cJSON *env)
{
	if (!env)
		return true;
	if (!cJSON_IsObject(env))
		return false;
	for (const cJSON *e = env->child; e; e = e->next)
		if (!cJSON_IsString(e))
			return false;
	return true;
}

/* Copies the path argument, which must be a non-empty string without NUL. */
static bool add_path(struct rpc_call *c, cJSON *open, const cJSON *req, const char *key, const char *alt,
		     const char *as)
{
	const char *p = jstr(req, key, alt);
	if (!p || !*p) {
		char msg[80];
		snprintf(msg, sizeof(msg), "%s must be a non-empty string", key);
		cJSON_Delete(open);
		call_fail(c, AE_INVALID_ARGUMENT, msg, NULL);
		return false;
	}
	cJSON_AddStringToObject(open, as, p);
	return true;
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
	consume(c, n);
}

static void exec_event(struct astream *s, cJSON *ev)
{
	struct rpc_call *c = s->ctx;
	cJSON *pid = cJSON_GetObjectItem(ev, "pid");
	if (cJSON_IsNumber(pid)) {
		char buf[64];
		int n = snprintf(buf, sizeof(buf), "{\"start\":{\"pid\":%d}}", pid->valueint);
		stream_msg(c, buf, (size_t)n, 0);
	}
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
	cJSON *code = cJSON_GetObjectItem(payload, "exit_code");
	cJSON *sig = cJSON_GetObjectItem(payload, "signal");
	cJSON *err = cJSON_GetObjectItem(payload, "error");
	const char *ecode = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
	bool timed_out = ecode && !strcmp(ecode, "timeout");
	if (cJSON_IsBool(exited)) {
		cJSON *o = cJSON_CreateObject();
		cJSON *end = cJSON_AddObjectToObject(o, "end");
		int ec = cJSON_IsNumber(code) ? code->valueint : -1;
		cJSON_AddNumberToObject(end, "exitCode", ec);
		cJSON_AddBoolToObject(end, "exited", cJSON_IsTrue(exited));
		char status[64];
		if (cJSON_IsTrue(exited)) {
			snprintf(status, sizeof(status), "exit status %d", ec);
		} else {
			int sn = cJSON_IsNumber(sig) ? sig->valueint : 0;
			cJSON_AddNumberToObject(end, "signal", sn);
			snprintf(status, sizeof(status), "signal: %s", sn == 9 ? "killed" : strsignal(sn));
		}
		cJSON_AddStringToObject(end, "status", status);
		cJSON_AddBoolToObject(end, "timedOut", timed_out);
		stream_msg_cjson(c, o);
	}
	if (timed_out) {
		call_fail(c, AE_TIMEOUT, "the command was killed after its timeout", "agent: timeout");
		return;
	}
	if (end_failed(c, payload, why))
		return;
	call_end(c, NULL, 0, NULL, NULL);
}

static const struct astream_ops exec_ops = { exec_data, exec_event, exec_end, as_writable };

static void exec_start(struct rpc_call *c, cJSON *req)
{
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "exec");
	const cJSON *argv = cJSON_GetObjectItemCaseSensitive(req, "argv");
	const char *cmd = jstr(req, "command", "cmd");
	if (argv) {
		bool ok = cJSON_IsArray(argv) && cJSON_GetArraySize(argv) > 0;
		for (const cJSON *a = ok ? argv->child : NULL; a; a = a->next)
			if (!cJSON_IsString(a))
				ok = false;
		if (!ok) {
			cJSON_Delete(open);
			call_fail(c, AE_INVALID_ARGUMENT, "argv must be a non-empty array of strings", NULL);
			return;
		}
		cJSON_AddItemToObject(open, "argv", cJSON_Duplicate(argv, 1));
	} else if (cmd && *cmd) {
		cJSON_AddStringToObject(open, "cmd", cmd);
		const char *shell = jstr(req, "shell", NULL);
		cJSON_AddStringToObject(open, "shell", shell ? shell : "/bin/bash");
	} else {
		cJSON_Delete(open);
		call_fail(c, AE_INVALID_ARGUMENT, "give \"command\" (a shell command line) or \"argv\"", NULL);
		return;
	}
	const cJSON *env = cJSON_GetObjectItemCaseSensitive(req, "envs");
	if (!env)
		env = cJSON_GetObjectItemCaseSensitive(req, "env");
	if (!env_ok(env) || bad_type(req, "cwd", is_str) || bad_type(req, "user", is_str) ||
	    bad_type(req, "stdin", is_str) || bad_type(req, "timeout", is_num)) {
		cJSON_Delete(open);
		call_fail(c, AE_INVALID_ARGUMENT,
			  "envs must map strings to strings; cwd, user and stdin (base64) are strings; timeout is a number",
			  NULL);
		return;
	}
	if (env)
		cJSON_AddItemToObject(open, "env", cJSON_Duplicate(env, 1));
	const char *cwd = jstr(req, "cwd", NULL), *user = jstr(req, "user", NULL);
	if (cwd && *cwd)
		cJSON_AddStringToObject(open, "cwd", cwd);
	if (user && *user)
		cJSON_AddStringToObject(open, "user", user);
	double timeout = EXEC_DEFAULT_TIMEOUT_S;
	const cJSON *jt = cJSON_GetObjectItemCaseSensitive(req, "timeout");
	if (cJSON_IsNumber(jt))
		timeout = jt->valuedouble;
	if (timeout < 0 || timeout > 86400.0 * 30) {
		cJSON_Delete(open);
		call_fail(c, AE_INVALID_ARGUMENT, "timeout must be between 0 (none) and 2592000 seconds", NULL);
		return;
	}
	if (timeout > 0) {
		cJSON_AddNumberToObject(open, "timeout_ms", (double)(uint64_t)(timeout * 1000));
		/* Ours is a backstop behind the agent's own kill. */
		if (!c->deadline)
			c->deadline = ur_now_ms() + (uint64_t)(timeout * 1000) + 10000;
	}
	const char *in = jstr(req, "stdin", NULL);
	if (in) {
		size_t k;
		if (tx_add_base64(c, in, &k)) {
			cJSON_Delete(open);
			call_fail(c, AE_INVALID_ARGUMENT, "stdin must be base64", NULL);
			return;
		}
		c->tx_fin = true;
		cJSON_AddBoolToObject(open, "stdin", 1);
	}
	if (call_open(c, open, &exec_ops))
		tx_pump(c);
}

/* ---- RunCodeStream ---- */

/* Length of the longest prefix of p that does not end inside a UTF-8 sequence. */
static size_t utf8_complete_prefix(const uint8_t *p, size_t n)
{
	size_t i = n;
	for (size_t back = 0; back < 3 && i > 0; back++) {
		uint8_t b = p[i - 1];
		if ((b & 0xC0) != 0x80) {
			size_t need = (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 1;
			return back + 1 >= need ? n : i - 1;
		}
		i--;
	}
	return n;
}

static void text_msg(struct rpc_call *c, int idx, const char *key, const uint8_t *p, size_t n)
{
	size_t carry = c->utf8_carry_len[idx];
	uint8_t *buf = malloc(carry + n + 1);
	if (!buf)
		return;
	memcpy(buf, c->utf8_carry[idx], carry);
	memcpy(buf + carry, p, n);
	size_t total = carry + n;
	size_t keep = utf8_complete_prefix(buf, total);
	if (total - keep > 3)
		keep = total;
	c->utf8_carry_len[idx] = total - keep;
	memcpy(c->utf8_carry[idx], buf + keep, total - keep);
	buf[keep] = 0;
	if (keep) {
		/* cJSON copies bytes as they are: invalid UTF-8 is replaced first. */
		cJSON *o = cJSON_CreateObject();
		char *clean = malloc(keep * 3 + 1);
		if (clean) {
			size_t o2 = 0;
			for (size_t i = 0; i < keep;) {
				uint8_t b = buf[i];
				size_t len = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 0;
				bool ok = len && i + len <= keep && !(b == 0);
				for (size_t k = 1; ok && k < len; k++)
					if ((buf[i + k] & 0xC0) != 0x80)
						ok = false;
				if (ok) {
					memcpy(clean + o2, buf + i, len);
					o2 += len;
					i += len;
				} else {
					memcpy(clean + o2, "\xEF\xBF\xBD", 3);
					o2 += 3;
					i++;
				}
			}
			clean[o2] = 0;
			cJSON_AddStringToObject(o, key, clean);
			free(clean);
			stream_msg_cjson(c, o);
		} else {
			cJSON_Delete(o);
		}
	}
	free(buf);
}

static void code_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin;
	struct rpc_call *c = s->ctx;
	if (n && (ch == PROTO_CH_STDOUT || ch == PROTO_CH_STDERR))
		text_msg(c, ch - 1, ch == PROTO_CH_STDOUT ? "stdout" : "stderr", p, n);
	consume(c, n);
}

static void code_event(struct astream *s, cJSON *ev)
{
	struct rpc_call *c = s->ctx;
	const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "type"));
	if (!type)
		return;
	cJSON *body = cJSON_Duplicate(ev, 1);
	cJSON_DeleteItemFromObject(body, "type");
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, !strcmp(type, "result") ? "result" : !strcmp(type, "error") ? "error" : type, body);
	stream_msg_cjson(c, o);
}

static void code_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->as = NULL;
	if (end_failed(c, payload, why))
		return;
	cJSON *o = cJSON_CreateObject();
	cJSON *end = cJSON_AddObjectToObject(o, "end");
	cJSON *ec = cJSON_GetObjectItem(payload, "execution_count");
	if (cJSON_IsNumber(ec))
		cJSON_AddNumberToObject(end, "executionCount", ec->valuedouble);
	const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(payload, "status"));
	cJSON_AddStringToObject(end, "status", st ? st : "ok");
	stream_msg_cjson(c, o);
	call_end(c, NULL, 0, NULL, NULL);
}

static const struct astream_ops code_ops = { code_data, code_event, code_end, NULL };

static void run_code_start(struct rpc_call *c, cJSON *req)
{
	const char *code = jstr(req, "code", NULL);
	const char *lang = jstr(req, "language", NULL);
	const cJSON *env = cJSON_GetObjectItemCaseSensitive(req, "envs");
	if (!env)
		env = cJSON_GetObjectItemCaseSensitive(req, "env");
	if (!code) {
		call_fail(c, AE_INVALID_ARGUMENT, "code must be a string", NULL);
		return;
	}
	if (lang && *lang && strcmp(lang, "python") && strcmp(lang, "python3")) {
		call_fail(c, AE_INVALID_ARGUMENT, "language must be \"python\"", "only Python kernels exist");
		return;
	}
	if (!env_ok(env) || bad_type(req, "timeout", is_num) || bad_type(req, "context", is_str)) {
		call_fail(c, AE_INVALID_ARGUMENT, "envs must map strings to strings; context is a string; timeout a number", NULL);
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "run_code");
	cJSON_AddStringToObject(open, "code", code);
	const char *ctx = jstr(req, "context", "context_id");
	if (ctx && *ctx)
		cJSON_AddStringToObject(open, "context", ctx);
	if (env)
		cJSON_AddItemToObject(open, "env", cJSON_Duplicate(env, 1));
	const cJSON *jt = cJSON_GetObjectItemCaseSensitive(req, "timeout");
	if (cJSON_IsNumber(jt) && jt->valuedouble > 0) {
		cJSON_AddNumberToObject(open, "timeout_ms", (double)(uint64_t)(jt->valuedouble * 1000));
		if (!c->deadline)
			c->deadline = ur_now_ms() + (uint64_t)(jt->valuedouble * 1000) + 10000;
	}
	call_open(c, open, &code_ops);
}

/* ---- ReadFile ---- */

static void read_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin; (void)ch;
	struct rpc_call *c = s->ctx;
	if (n)
		data_msg(c, "data", p, n);
	consume(c, n);
}

static void read_event(struct astream *s, cJSON *ev)
{
	struct rpc_call *c = s->ctx;
	cJSON *size = cJSON_GetObjectItem(ev, "size");
	/* The agent is the sandbox's: a size that is not a file size (1e300, -1, NaN)
	 * is dropped, never formatted past the buffer. */
	if (cJSON_IsNumber(size) && size->valuedouble >= 0 && size->valuedouble <= 0x1p53) {
		char buf[64];
		int n = snprintf(buf, sizeof(buf), "{\"size\":%" PRIu64 "}", (uint64_t)size->valuedouble);
		stream_msg(c, buf, (size_t)n, 0);
	}
}

static void read_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->as = NULL;
	if (end_failed(c, payload, why))
		return;
	call_end(c, NULL, 0, NULL, NULL);
}

static const struct astream_ops read_ops = { read_data, read_event, read_end, NULL };

static void read_start(struct rpc_call *c, cJSON *req)
{
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "read");
	if (!add_path(c, open, req, "path", NULL, "path"))
		return;
	for (const char *k = "offset"; k; k = !strcmp(k, "offset") ? "length" : NULL) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, k);
		if (v && (!cJSON_IsNumber(v) || v->valuedouble < 0)) {
			cJSON_Delete(open);
			call_fail(c, AE_INVALID_ARGUMENT, "offset and length must be non-negative numbers", NULL);
			return;
		}
		if (v)
			cJSON_AddNumberToObject(open, k, v->valuedouble);
	}
	const char *user = jstr(req, "user", NULL);
	if (user)
		cJSON_AddStringToObject(open, "user", user);
	call_open(c, open, &read_ops);
}

/* ---- List and the other unary file calls ---- */

static void list_event(struct astream *s, cJSON *ev)
{
	struct rpc_call *c = s->ctx;
	cJSON *ents = cJSON_GetObjectItem(ev, "entries");
	if (!cJSON_IsArray(ents))
		return;
	for (cJSON *e = ents->child; e; e = e->next) {
		cJSON *d = cJSON_Duplicate(e, 1);
		/* A double cannot carry nanoseconds since 1970; "mtime" has them. */
		cJSON_DeleteItemFromObject(d, "mtime_ns");
		cJSON_AddItemToArray(c->entries, d);
	}
}

static void list_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->as = NULL;
	if (end_failed(c, payload, why))
		return;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "entries", c->entries);
	c->entries = NULL;
	cJSON_AddBoolToObject(o, "truncated", cJSON_IsTrue(cJSON_GetObjectItem(payload, "truncated")));
	call_end(c, o, 0, NULL, NULL);
}

static const struct astream_ops list_ops = { NULL, list_event, list_end, NULL };

static void list_start(struct rpc_call *c, cJSON *req)
{
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "list");
	const char *path = jstr(req, "path", NULL);
	cJSON_AddStringToObject(open, "path", path && *path ? path : "/");
	const cJSON *d = cJSON_GetObjectItemCaseSensitive(req, "depth");
	if (d) {
		if (!cJSON_IsNumber(d) || d->valuedouble < 1 || d->valuedouble > 64) {
			cJSON_Delete(open);
			call_fail(c, AE_INVALID_ARGUMENT, "depth must be from 1 to 64", NULL);
			return;
		}
		cJSON_AddNumberToObject(open, "depth", d->valuedouble);
	}
	c->entries = cJSON_CreateArray();
	call_open(c, open, &list_ops);
}

static void simple_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->as = NULL;
	if (end_failed(c, payload, why))
		return;
	cJSON *o = cJSON_Duplicate(payload, 1);
	cJSON_DeleteItemFromObject(cJSON_GetObjectItem(o, "entry"), "mtime_ns");
	call_end(c, o, 0, NULL, NULL);
}

static const struct astream_ops simple_ops = { NULL, NULL, simple_end, NULL };

static void simple_start(struct rpc_call *c, cJSON *req)
{
	const char *name = c->m->name;
	cJSON *open = cJSON_CreateObject();
	if (!strcmp(name, "Rename")) {
		cJSON_AddStringToObject(open, "op", "rename");
		if (!add_path(c, open, req, "from", "source", "from"))
			return;
		if (!add_path(c, open, req, "to", "destination", "to"))
			return;
	} else {
		cJSON_AddStringToObject(open, "op", !strcmp(name, "Stat") ? "stat" : !strcmp(name, "Remove") ? "remove" : "mkdir");
		if (!add_path(c, open, req, "path", NULL, "path"))
			return;
		if (bad_type(req, "recursive", is_bool) || bad_type(req, "parents", is_bool) ||
		    bad_type(req, "mode", is_num)) {
			cJSON_Delete(open);
			call_fail(c, AE_INVALID_ARGUMENT, "recursive and parents are booleans; mode is a number", NULL);
			return;
		}
		const cJSON *v;
		if (!strcmp(name, "Remove") && (v = cJSON_GetObjectItem(req, "recursive")))
			cJSON_AddBoolToObject(open, "recursive", cJSON_IsTrue(v));
		if (!strcmp(name, "Mkdir")) {
			if ((v = cJSON_GetObjectItem(req, "parents")))
				cJSON_AddBoolToObject(open, "parents", cJSON_IsTrue(v));
			if ((v = cJSON_GetObjectItem(req, "mode")))
				cJSON_AddNumberToObject(open, "mode", v->valuedouble);
		}
	}
	const char *user = jstr(req, "user", NULL);
	if (user)
		cJSON_AddStringToObject(open, "user", user);
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
	const char *path = cJSON_GetStringValue(cJSON_GetObjectItem(payload, "path"));
	cJSON *bytes = cJSON_GetObjectItem(payload, "bytes");
	cJSON_AddStringToObject(o, "path", path ? path : "");
	cJSON_AddNumberToObject(o, "bytes", cJSON_IsNumber(bytes) ? bytes->valuedouble : (double)c->wf_bytes);
	call_end(c, o, 0, NULL, NULL);
}

static const struct astream_ops wf_agent_ops = { NULL, NULL, wf_end, as_writable };

/* One request message: the first names the file, every one may carry data. */
static int wf_message(struct rpc_call *c, const uint8_t *msg, size_t len)
{
	cJSON *m = cJSON_ParseWithLength((const char *)msg, len);
	if (!cJSON_IsObject(m) || json_text_has_nul(msg, len)) {
		bool nul = cJSON_IsObject(m);
		cJSON_Delete(m);
		call_fail(c, AE_INVALID_ARGUMENT, nul ? JSON_NUL_MESSAGE : "each WriteFile message must be a JSON object",
			  NULL);
		return -EINVAL;
	}
	if (!c->wf_opened) {
		cJSON *open = cJSON_CreateObject();
		cJSON_AddStringToObject(open, "op", "write");
		if (!add_path(c, open, m, "path", NULL, "path")) {
			cJSON_Delete(m);
			return -EINVAL;
		}
		const cJSON *v;
		if ((v = cJSON_GetObjectItem(m, "mode")) && cJSON_IsNumber(v))
			cJSON_AddNumberToObject(open, "mode", v->valuedouble);
		if ((v = cJSON_GetObjectItem(m, "append")) && cJSON_IsBool(v))
			cJSON_AddBoolToObject(open, "append", cJSON_IsTrue(v));
		if ((v = cJSON_GetObjectItem(m, "parents")) && cJSON_IsBool(v))
			cJSON_AddBoolToObject(open, "parents", cJSON_IsTrue(v));
		const char *user = jstr(m, "user", NULL);
		if (user)
			cJSON_AddStringToObject(open, "user", user);
		c->wf_opened = true;
		if (!call_open(c, open, &wf_agent_ops)) {
			cJSON_Delete(m);
			return -EIO;
		}
	}
	const cJSON *d = cJSON_GetObjectItem(m, "data");
	if (d && !cJSON_IsString(d) && !cJSON_IsNull(d)) {
		cJSON_Delete(m);
		call_fail(c, AE_INVALID_ARGUMENT, "data must be base64 text", NULL);
		return -EINVAL;
	}
	if (cJSON_IsString(d) && *d->valuestring) {
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
	if (c->wf_unary) {
		/* One JSON message: gather it whole (bounded by the body limit). */
		if (bytebuf_add(&c->tx, p, n))
			call_fail(c, AE_INTERNAL, "out of memory", NULL);
		return;
	}
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
	if (c->wf_unary) {
		struct bytebuf body = c->tx;
		c->tx = (struct bytebuf){ 0 };
		int rc = wf_message(c, body.p ? body.p : (const uint8_t *)"", body.len);
		bytebuf_free(&body);
		if (rc)
			return;
	} else if (!connect_dec_idle(&c->dec)) {
		call_fail(c, AE_INVALID_ARGUMENT, "the body ended inside a message envelope", NULL);
		return;
	} else if (!c->wf_opened) {
		call_fail(c, AE_INVALID_ARGUMENT, "WriteFile needs at least one message naming the path", NULL);
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
	if (connect_ct_is_stream_json(ct)) {
		c->envelopes = true;
		connect_dec_init(&c->dec, MAX_ENVELOPE);
	} else if (connect_ct_is_json(ct) || !ct) {
		c->wf_unary = true;
	} else {
		call_fail(c, AE_UNSUPPORTED_MEDIA_TYPE, "WriteFile takes application/connect+json (stream) or application/json", NULL);
		return;
	}
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
