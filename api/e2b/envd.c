/* envd's Connect services (protocol reference 3.1-3.4, JSON codec):
 * process.Process and filesystem.Filesystem, each call one agent operation.
 * Streams carry envelopes, keepalives and an end-of-stream message; agent output
 * is credited back only as the client takes it. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/base64.h"
#include "agent/proto.h"
#include "api/http/json_request.h"
#include "api/http/connect.h"
#include "api/e2b/internal.h"
#include "api/mitos/handlers.h"
#include "api/http/http.h"
#include "api/http/server.h"
#include "api/http/uring.h"

#define UNARY_DEADLINE_MS 120000u
#define DEADLINE_GRACE_MS 5000u

enum kind { UNARY, SERVER_STREAM, CLIENT_STREAM };

struct envd_call;
typedef void (*start_fn)(struct envd_call *c, struct agent_conn *ac, const cJSON *req);

struct method {
	const char *name;
	enum kind kind;
	start_fn start;
	const char *op;  /* the agent operation of the simple unary calls */
};

struct envd_call {
	struct agent_call base;
	const struct method *m;
	bool pty;            /* Start with a pty: output is "pty" data */
	bool watch;          /* WatchDir: other message shapes */
	cJSON *entries;      /* ListDir */
	struct list_budget lb;
	char user[64];
	/* Start with a relative or "~" cwd: the exec waits for a stat to resolve it. */
	cJSON *exec_open;
};

static void start_exec(struct envd_call *c, struct agent_conn *ac, const cJSON *req);
static void start_attach(struct envd_call *c, struct agent_conn *ac, const cJSON *req);
static void start_unary(struct envd_call *c, struct agent_conn *ac, const cJSON *req);
static void start_list_dir(struct envd_call *c, struct agent_conn *ac, const cJSON *req);
static void start_watch(struct envd_call *c, struct agent_conn *ac, const cJSON *req);
static void start_stream_input(struct envd_call *c, struct agent_conn *ac, const cJSON *req);

static const struct method methods[] = {
	{ "process.Process/Start", SERVER_STREAM, start_exec, NULL },
	{ "process.Process/Connect", SERVER_STREAM, start_attach, NULL },
	{ "process.Process/List", UNARY, start_unary, "processes" },
	{ "process.Process/SendInput", UNARY, start_unary, "stdin" },
	{ "process.Process/CloseStdin", UNARY, start_unary, "stdin" },
	{ "process.Process/SendSignal", UNARY, start_unary, "signal" },
	{ "process.Process/Update", UNARY, start_unary, "resize" },
	{ "process.Process/StreamInput", CLIENT_STREAM, start_stream_input, "stdin" },
	{ "filesystem.Filesystem/Stat", UNARY, start_unary, "stat" },
	{ "filesystem.Filesystem/MakeDir", UNARY, start_unary, "mkdir" },
	{ "filesystem.Filesystem/Move", UNARY, start_unary, "rename" },
	{ "filesystem.Filesystem/Remove", UNARY, start_unary, "remove" },
	{ "filesystem.Filesystem/ListDir", UNARY, start_list_dir, "list" },
	{ "filesystem.Filesystem/WatchDir", SERVER_STREAM, start_watch, "watch" },
	{ "filesystem.Filesystem/CreateWatcher", UNARY, NULL, "watch" },
	{ "filesystem.Filesystem/GetWatcherEvents", UNARY, NULL, NULL },
	{ "filesystem.Filesystem/RemoveWatcher", UNARY, NULL, NULL },
};

static const struct method *method_find(const char *name)
{
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (!strcmp(methods[i].name, name))
			return &methods[i];
	return NULL;
}

bool e2b_envd_method_known(const char *name)
{
	return method_find(name) != NULL;
}

/* ---- ending calls ---- */

static bool streaming(const struct envd_call *c)
{
	return c->m->kind != UNARY;
}

/* Ends the call: the end-of-stream envelope (with error code/msg when code is
 * set), or for unary calls the result (NULL: {}) or the error. */
static void call_end(struct envd_call *c, cJSON *result, const char *code, const char *msg)
{
	struct http_req *r = c->base.r;
	if (c->base.done || !r) {
		cJSON_Delete(result);
		agent_call_free(&c->base);
		return;
	}
	c->base.done = true;
	if (streaming(c)) {
		if (!r->resp_started)
			http_stream_start(r, 200, "application/connect+json", NULL);
		if (result)
			e2b_envelope_cjson(r, result);
		cJSON *eos = cJSON_CreateObject();
		if (code) {
			cJSON *e = cJSON_AddObjectToObject(eos, "error");
			cJSON_AddStringToObject(e, "code", code);
			char *red = api_redact(msg);
			cJSON_AddStringToObject(e, "message", red ? red : "");
			free(red);
		}
		char *s = cJSON_PrintUnformatted(eos);
		cJSON_Delete(eos);
		e2b_envelope(r, CONNECT_FLAG_END, s ? s : "{}", s ? strlen(s) : 2);
		free(s);
		http_stream_finish(r);
	} else if (code) {
		cJSON_Delete(result);
		e2b_reply_connect_err(r, code, msg);
	} else {
		handler_reply_cjson(r, 200, result ? result : cJSON_CreateObject());
	}
	agent_call_free(&c->base);
}

/* An agent END that failed (or a dead connection): ends the call, returns true. */
static bool end_failed(struct envd_call *c, const cJSON *payload, const char *why)
{
	if (!payload && streaming(c) && e2b_call_cut(&c->base))
		return true;
	if (!payload) {
		call_end(c, NULL, "unavailable", why ? why : "the sandbox stopped during the call");
		return true;
	}
	const cJSON *err = cJSON_GetObjectItemCaseSensitive(payload, "error");
	if (!cJSON_IsObject(err))
		return false;
	const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
	const char *msg = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message"));
	call_end(c, NULL, e2b_agent_code(code), msg ? msg : "the operation failed");
	return true;
}

static void stream_msg(struct envd_call *c, cJSON *o)
{
	struct http_req *r = c->base.r;
	if (!r) {
		cJSON_Delete(o);
		return;
	}
	if (!r->resp_started)
		http_stream_start(r, 200, "application/connect+json", NULL);
	e2b_envelope_cjson(r, o);
}

static void envd_tick(struct agent_call *b, uint64_t now)
{
	struct envd_call *c = (struct envd_call *)b;
	if (b->deadline && now > b->deadline) {
		call_end(c, NULL, "deadline_exceeded", "context deadline exceeded");
		return;
	}
	if (c->m->kind == SERVER_STREAM && b->r && b->r->resp_started && now >= b->next_ka) {
		b->next_ka = now + srv_cfg.keepalive_ms;
		if (http_stream_room(b->r)) {
			static const char proc_ka[] = "{\"event\":{\"keepalive\":{}}}", watch_ka[] = "{\"keepalive\":{}}";
			if (c->watch)
				e2b_envelope(b->r, 0, watch_ka, sizeof(watch_ka) - 1);
			else
				e2b_envelope(b->r, 0, proc_ka, sizeof(proc_ka) - 1);
		}
	}
}

static void envd_destroy(struct agent_call *b)
{
	struct envd_call *c = (struct envd_call *)b;
	cJSON_Delete(c->entries);
	cJSON_Delete(c->exec_open);
}

static const struct agent_call_vt envd_vt = { envd_tick, envd_destroy };

/* ---- request fields ---- */

static const char *str_field(const cJSON *o, const char *k)
{
	return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));
}

/* ProcessSelector {pid} (tags are never set by the SDK). */
static int selector_pid(const cJSON *req)
{
	const cJSON *pid = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(req, "process"), "pid");
	if (cJSON_IsNumber(pid) && pid->valuedouble >= 1 && pid->valuedouble <= 4194304)
		return pid->valueint;
	if (cJSON_IsString(pid))
		return atoi(pid->valuestring);
	return 0;
}

/* Authorization: Basic base64("<user>:"); envd runs as that user. */
static void basic_user(const struct http_req *r, char *out, size_t outlen)
{
	out[0] = 0;
	const char *h = http_req_header(r, "authorization");
	if (!h || strncasecmp(h, "basic ", 6))
		return;
	h += 6;
	size_t n = strlen(h);
	if (n > 200)
		return;
	uint8_t buf[160];
	size_t len = 0;
	if (base64_decode(h, n, buf, &len) || len >= sizeof(buf))
		return;
	buf[len] = 0;
	char *colon = strchr((char *)buf, ':');
	if (colon)
		*colon = 0;
	if (strlen((char *)buf) < outlen && !strpbrk((char *)buf, "/\n"))
		snprintf(out, outlen, "%s", (char *)buf);
}

/* ---- process.Process/Start and Connect ---- */

static void data_event(struct envd_call *c, const char *key, const uint8_t *p, size_t n)
{
	char *b64 = malloc(base64_encoded_len(n) + 1);
	if (!b64)
		return;
	base64_encode(p, n, b64);
	cJSON *o = cJSON_CreateObject();
	cJSON *data = cJSON_AddObjectToObject(cJSON_AddObjectToObject(o, "event"), "data");
	cJSON_AddStringToObject(data, key, b64);
	free(b64);
	stream_msg(c, o);
}

static void proc_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin;
	struct envd_call *c = s->ctx;
	if (n && (ch == PROTO_CH_STDOUT || ch == PROTO_CH_STDERR))
		data_event(c, c->pty ? "pty" : ch == PROTO_CH_STDOUT ? "stdout" : "stderr", p, n);
	c->base.next_ka = ur_now_ms() + srv_cfg.keepalive_ms;
}

static void proc_event(struct astream *s, cJSON *ev)
{
	struct envd_call *c = s->ctx;
	if (agent_call_backlogged(&c->base, EVENTS_UNREAD_MAX)) {
		call_end(c, NULL, "resource_exhausted", BACKLOG_MSG);
		return;
	}
	const cJSON *pid = cJSON_GetObjectItem(ev, "pid");
	if (!cJSON_IsNumber(pid))
		return;
	/* Connect to a terminal: its output goes out as pty data, as from Start. */
	if (cJSON_IsTrue(cJSON_GetObjectItem(ev, "pty")))
		c->pty = true;
	cJSON *o = cJSON_CreateObject();
	cJSON *st = cJSON_AddObjectToObject(cJSON_AddObjectToObject(o, "event"), "start");
	cJSON_AddNumberToObject(st, "pid", pid->valuedouble);
	stream_msg(c, o);
}

static void proc_end(struct astream *s, cJSON *payload, const char *why)
{
	struct envd_call *c = s->ctx;
	c->base.as = NULL;
	const cJSON *exited = cJSON_GetObjectItem(payload, "exited");
	const char *ecode = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(payload, "error"), "code"));
	if (cJSON_IsBool(exited)) {
		const cJSON *code = cJSON_GetObjectItem(payload, "exit_code");
		const cJSON *sig = cJSON_GetObjectItem(payload, "signal");
		int ec = cJSON_IsTrue(exited) && cJSON_IsNumber(code) ? code->valueint : -1;
		char status[64];
		if (cJSON_IsTrue(exited)) {
			snprintf(status, sizeof(status), "exit status %d", ec);
		} else {
			int sn = cJSON_IsNumber(sig) ? sig->valueint : 9;
			snprintf(status, sizeof(status), "signal: %s", sn == 9 ? "killed" : sn == 15 ? "terminated" : strsignal(sn));
		}
		cJSON *o = cJSON_CreateObject();
		cJSON *end = cJSON_AddObjectToObject(cJSON_AddObjectToObject(o, "event"), "end");
		cJSON_AddNumberToObject(end, "exitCode", ec);
		cJSON_AddBoolToObject(end, "exited", cJSON_IsTrue(exited));
		cJSON_AddStringToObject(end, "status", status);
		if (ec != 0)
			cJSON_AddStringToObject(end, "error", status);
		stream_msg(c, o);
	}
	if (ecode && !strcmp(ecode, "timeout")) {
		call_end(c, NULL, "deadline_exceeded", "context deadline exceeded");
		return;
	}
	if (end_failed(c, payload, why))
		return;
	call_end(c, NULL, NULL, NULL);
}

static const struct astream_ops proc_ops = { proc_data, proc_event, proc_end, NULL, e2b_call_room };

/* Connect-Timeout-Ms, or 0 (e2b_envd_rpc refused a malformed one). */
static uint64_t timeout_ms(const struct http_req *r)
{
	uint64_t ms = 0;
	return connect_timeout_ms(http_req_header(r, "connect-timeout-ms"), &ms) == 1 ? ms : 0;
}

static void cwd_resolved(struct astream *s, cJSON *payload, const char *why)
{
	struct envd_call *c = s->ctx;
	struct agent_conn *ac = s->ac;
	c->base.as = NULL;
	const cJSON *entry = cJSON_GetObjectItem(payload, "entry");
	const char *path = cJSON_GetStringValue(cJSON_GetObjectItem(entry, "path"));
	const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(entry, "type"));
	if (!payload) {
		call_end(c, NULL, "unavailable", why ? why : "the sandbox stopped during the call");
		return;
	}
	if (!path || !type || strcmp(type, "dir")) {
		call_end(c, NULL, "invalid_argument", "the cwd is not a directory in the sandbox");
		return;
	}
	cJSON *open = c->exec_open;
	c->exec_open = NULL;
	cJSON_AddStringToObject(open, "cwd", path);
	if (!e2b_call_open(&c->base, ac, open, &proc_ops))
		call_end(c, NULL, "unavailable", "cannot open a stream to the sandbox's agent");
}

static const struct astream_ops cwd_ops = { NULL, NULL, cwd_resolved, NULL, NULL };

static void start_exec(struct envd_call *c, struct agent_conn *ac, const cJSON *req)
{
	const cJSON *proc = cJSON_GetObjectItemCaseSensitive(req, "process");
	const char *cmd = str_field(proc, "cmd");
	const cJSON *args = cJSON_GetObjectItemCaseSensitive(proc, "args");
	const cJSON *envs = cJSON_GetObjectItemCaseSensitive(proc, "envs");
	bool ok = cmd && *cmd && (!args || cJSON_IsArray(args)) && e2b_string_map(envs);
	for (const cJSON *a = args ? args->child : NULL; ok && a; a = a->next)
		ok = cJSON_IsString(a);
	if (!ok) {
		call_end(c, NULL, "invalid_argument", "process.cmd is required; args are strings; envs map strings to strings");
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "exec");
	cJSON *argv = cJSON_AddArrayToObject(open, "argv");
	cJSON_AddItemToArray(argv, cJSON_CreateString(cmd));
	for (const cJSON *a = args ? args->child : NULL; a; a = a->next)
		cJSON_AddItemToArray(argv, cJSON_CreateString(a->valuestring));
	/* Sandbox-wide envs from create, then the call's own: later ones win. */
	cJSON *env = cJSON_AddObjectToObject(open, "env");
	struct e2b_sbx *s = e2b_sbx_get(e2b_req_sandbox(c->base.r), false);
	const cJSON *layers[] = { s ? s->env_vars : NULL, envs };
	for (size_t i = 0; i < 2; i++)
		for (const cJSON *e = layers[i] ? layers[i]->child : NULL; e; e = e->next) {
			cJSON_DeleteItemFromObjectCaseSensitive(env, e->string);
			cJSON_AddStringToObject(env, e->string, e->valuestring);
		}
	const char *cwd = str_field(proc, "cwd");
	e2b_add_user(open, c->user);
	/* A missing stdin is the legacy "open" (reference 3.4). */
	cJSON_AddBoolToObject(open, "stdin", !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(req, "stdin")));
	/* envd's processes outlive the request; Connect re-attaches. */
	cJSON_AddBoolToObject(open, "background", 1);
	const char *tag = str_field(req, "tag");
	if (tag)
		cJSON_AddStringToObject(open, "tag", tag);
	const cJSON *size = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(req, "pty"), "size");
	if (cJSON_IsObject(size)) {
		const cJSON *rows = cJSON_GetObjectItem(size, "rows"), *cols = cJSON_GetObjectItem(size, "cols");
		cJSON *pty = cJSON_AddObjectToObject(open, "pty");
		cJSON_AddNumberToObject(pty, "rows", cJSON_IsNumber(rows) && rows->valuedouble >= 1 ? rows->valuedouble : 24);
		cJSON_AddNumberToObject(pty, "cols", cJSON_IsNumber(cols) && cols->valuedouble >= 1 ? cols->valuedouble : 80);
		c->pty = true;
	}
	uint64_t ms = timeout_ms(c->base.r);
	if (ms) {
		/* The agent kills at the deadline; ours is the backstop behind it. */
		cJSON_AddNumberToObject(open, "timeout_ms", (double)ms);
		c->base.deadline = ur_now_ms() + ms + DEADLINE_GRACE_MS;
	}
	if (cwd && *cwd && *cwd != '/') {
		/* envd resolves a relative or "~" cwd against the user's home; the agent's
		 * path resolution does that for file operations, so a stat resolves it. */
		cJSON *st = cJSON_CreateObject();
		cJSON_AddStringToObject(st, "op", "stat");
		cJSON_AddStringToObject(st, "path", cwd);
		e2b_add_user(st, c->user);
		c->exec_open = open;
		if (!e2b_call_open(&c->base, ac, st, &cwd_ops))
			call_end(c, NULL, "unavailable", "cannot open a stream to the sandbox's agent");
		return;
	}
	if (cwd && *cwd)
		cJSON_AddStringToObject(open, "cwd", cwd);
	if (!e2b_call_open(&c->base, ac, open, &proc_ops))
		call_end(c, NULL, "unavailable", "cannot open a stream to the sandbox's agent");
}

static void start_attach(struct envd_call *c, struct agent_conn *ac, const cJSON *req)
{
	int pid = selector_pid(req);
	if (!pid) {
		call_end(c, NULL, "invalid_argument", "process.pid is required");
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "attach");
	cJSON_AddNumberToObject(open, "pid", pid);
	uint64_t ms = timeout_ms(c->base.r);
	if (ms)
		c->base.deadline = ur_now_ms() + ms;
	if (!e2b_call_open(&c->base, ac, open, &proc_ops))
		call_end(c, NULL, "unavailable", "cannot open a stream to the sandbox's agent");
}

/* ---- unary calls ---- */

/* The agent's "processes" entry as envd's ProcessInfo. */
static cJSON *process_info(const cJSON *p)
{
	const cJSON *cfg = cJSON_GetObjectItem(p, "config");
	const cJSON *argv = cJSON_GetObjectItem(cfg, "argv");
	cJSON *o = cJSON_CreateObject();
	cJSON *config = cJSON_AddObjectToObject(o, "config");
	const cJSON *a0 = cJSON_IsArray(argv) ? argv->child : NULL;
	cJSON_AddStringToObject(config, "cmd", cJSON_IsString(a0) ? a0->valuestring : "");
	cJSON *args = cJSON_AddArrayToObject(config, "args");
	for (const cJSON *a = a0 ? a0->next : NULL; a; a = a->next)
		if (cJSON_IsString(a))
			cJSON_AddItemToArray(args, cJSON_CreateString(a->valuestring));
	const cJSON *env = cJSON_GetObjectItem(cfg, "env");
	cJSON_AddItemToObject(config, "envs", cJSON_IsObject(env) ? cJSON_Duplicate(env, 1) : cJSON_CreateObject());
	const char *cwd = cJSON_GetStringValue(cJSON_GetObjectItem(cfg, "cwd"));
	if (cwd)
		cJSON_AddStringToObject(config, "cwd", cwd);
	const cJSON *pid = cJSON_GetObjectItem(p, "pid");
	cJSON_AddNumberToObject(o, "pid", cJSON_IsNumber(pid) ? pid->valuedouble : 0);
	const char *tag = cJSON_GetStringValue(cJSON_GetObjectItem(p, "tag"));
	if (tag)
		cJSON_AddStringToObject(o, "tag", tag);
	return o;
}

/* envd removes with os.RemoveAll: a path that is not there is removed already. */
static bool removed_already(const struct envd_call *c, const cJSON *payload)
{
	const cJSON *err = cJSON_GetObjectItemCaseSensitive(payload, "error");
	const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
	return !strcmp(c->m->op, "remove") && code && !strcmp(code, "not_found");
}

static void unary_end(struct astream *s, cJSON *payload, const char *why)
{
	struct envd_call *c = s->ctx;
	c->base.as = NULL;
	if (!removed_already(c, payload) && end_failed(c, payload, why))
		return;
	const char *op = c->m->op;
	cJSON *result = cJSON_CreateObject();
	if (!strcmp(op, "processes")) {
		cJSON *list = cJSON_AddArrayToObject(result, "processes");
		const cJSON *p;
		cJSON_ArrayForEach(p, cJSON_GetObjectItem(payload, "processes"))
			if (cJSON_IsTrue(cJSON_GetObjectItem(p, "running")))
				cJSON_AddItemToArray(list, process_info(p));
	} else if (cJSON_IsObject(cJSON_GetObjectItem(payload, "entry"))) {
		cJSON *e = e2b_entry_info(cJSON_GetObjectItem(payload, "entry"));
		if (e)
			cJSON_AddItemToObject(result, "entry", e);
	} else if (c->entries) {
		cJSON_AddItemToObject(result, "entries", c->entries);
		c->entries = NULL;
	}
	call_end(c, result, NULL, NULL);
}

static void list_event(struct astream *s, cJSON *ev)
{
	struct envd_call *c = s->ctx;
	const cJSON *e;
	cJSON_ArrayForEach(e, cJSON_GetObjectItem(ev, "entries")) {
		if (!list_budget_take(&c->lb, e)) {
			call_end(c, NULL, "internal", "the sandbox's agent listed more than 100000 entries or 64 MiB");
			return;
		}
		cJSON *info = e2b_entry_info(e);
		if (info)
			cJSON_AddItemToArray(c->entries, info);
	}
}

static const struct astream_ops unary_ops = { NULL, list_event, unary_end, NULL, NULL };

static int signal_number(const cJSON *v)
{
	if (cJSON_IsNumber(v))
		return v->valueint == 9 || v->valueint == 15 ? v->valueint : 0;
	const char *s = cJSON_GetStringValue(v);
	return !s ? 0 : !strcmp(s, "SIGNAL_SIGKILL") ? 9 : !strcmp(s, "SIGNAL_SIGTERM") ? 15 : 0;
}

/* Builds the agent request of a simple unary call; NULL with the call ended. */
static cJSON *unary_open(struct envd_call *c, const cJSON *req)
{
	const char *name = strchr(c->m->name, '/') + 1;
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", c->m->op);
	const char *bad = NULL;
	if (!strcmp(c->m->op, "processes")) {
		return open;
	} else if (!strncmp(c->m->name, "process.", 8)) {
		int pid = selector_pid(req);
		if (!pid)
			bad = "process.pid is required";
		cJSON_AddNumberToObject(open, "pid", pid);
		if (!strcmp(name, "SendInput")) {
			const cJSON *in = cJSON_GetObjectItemCaseSensitive(req, "input");
			const char *data = str_field(in, "stdin");
			if (!data)
				data = str_field(in, "pty");
			if (!data)
				bad = "input.stdin or input.pty (base64) is required";
			else
				cJSON_AddStringToObject(open, "data", data);
		} else if (!strcmp(name, "CloseStdin")) {
			cJSON_AddBoolToObject(open, "close", 1);
		} else if (!strcmp(name, "SendSignal")) {
			int sig = signal_number(cJSON_GetObjectItemCaseSensitive(req, "signal"));
			if (!sig)
				bad = "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM";
			cJSON_AddNumberToObject(open, "signal", sig);
		} else if (!strcmp(name, "Update")) {
			const cJSON *size = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(req, "pty"), "size");
			const cJSON *rows = cJSON_GetObjectItem(size, "rows"), *cols = cJSON_GetObjectItem(size, "cols");
			if (!cJSON_IsNumber(rows) || !cJSON_IsNumber(cols))
				bad = "pty.size.rows and pty.size.cols are required";
			else {
				cJSON_AddNumberToObject(open, "rows", rows->valuedouble);
				cJSON_AddNumberToObject(open, "cols", cols->valuedouble);
			}
		}
	} else if (!strcmp(name, "Move")) {
		const char *from = str_field(req, "source"), *to = str_field(req, "destination");
		if (!from || !*from || !to || !*to)
			bad = "source and destination are required";
		cJSON_AddStringToObject(open, "from", from ? from : "");
		cJSON_AddStringToObject(open, "to", to ? to : "");
		e2b_add_user(open, c->user);
	} else {
		const char *path = str_field(req, "path");
		if (!path || !*path)
			bad = "path is required";
		cJSON_AddStringToObject(open, "path", path ? path : "");
		if (!strcmp(name, "Remove"))
			cJSON_AddBoolToObject(open, "recursive", 1);
		if (!strcmp(name, "MakeDir"))
			cJSON_AddBoolToObject(open, "parents", 1);
		e2b_add_user(open, c->user);
	}
	if (bad) {
		cJSON_Delete(open);
		call_end(c, NULL, "invalid_argument", bad);
		return NULL;
	}
	return open;
}

static void start_unary(struct envd_call *c, struct agent_conn *ac, const cJSON *req)
{
	cJSON *open = unary_open(c, req);
	if (open && !e2b_call_open(&c->base, ac, open, &unary_ops))
		call_end(c, NULL, "unavailable", "cannot open a stream to the sandbox's agent");
}

static void start_list_dir(struct envd_call *c, struct agent_conn *ac, const cJSON *req)
{
	const char *path = str_field(req, "path");
	const cJSON *depth = cJSON_GetObjectItemCaseSensitive(req, "depth");
	double d = cJSON_IsNumber(depth) ? depth->valuedouble : 1;
	if (!path || !*path || d < 1 || d > 64) {
		call_end(c, NULL, "invalid_argument", "path is required and depth is from 1 to 64");
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "list");
	cJSON_AddStringToObject(open, "path", path);
	cJSON_AddNumberToObject(open, "depth", (int)d);
	e2b_add_user(open, c->user);
	c->entries = cJSON_CreateArray();
	if (!e2b_call_open(&c->base, ac, open, &unary_ops))
		call_end(c, NULL, "unavailable", "cannot open a stream to the sandbox's agent");
}

/* StreamInput: the client stream arrives whole (fetch cannot stream a request
 * body); its data messages become one write to the process's stdin. */
static void start_stream_input(struct envd_call *c, struct agent_conn *ac, const cJSON *req)
{
	(void)req;
	struct http_req *r = c->base.r;
	struct connect_dec d;
	connect_dec_init(&d, (uint32_t)srv_cfg.max_json_body);
	const uint8_t *p = r->body ? r->body : (const uint8_t *)"";
	size_t n = r->body_len;
	int pid = 0;
	struct bytebuf_ish { uint8_t *p; size_t len; } in = { NULL, 0 };
	const char *bad = NULL;
	while (n && !bad) {
		uint8_t flags;
		const uint8_t *msg;
		size_t len;
		int rc = connect_dec_feed(&d, &p, &n, &flags, &msg, &len);
		if (rc <= 0) {
			bad = "the body must be a sequence of envelopes";
			break;
		}
		cJSON *m = json_parse_request(msg, len);
		const cJSON *start = cJSON_GetObjectItemCaseSensitive(m, "start");
		const cJSON *data = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(m, "data"), "input");
		if (start)
			pid = selector_pid(start);
		const char *b64 = str_field(data, "stdin");
		if (!b64)
			b64 = str_field(data, "pty");
		if (b64) {
			size_t bl = strlen(b64), got = 0;
			uint8_t *nb = realloc(in.p, in.len + base64_decoded_max(bl));
			if (!nb || base64_decode(b64, bl, nb + in.len, &got))
				bad = "input must be base64";
			if (nb)
				in.p = nb;
			in.len += got;
		}
		cJSON_Delete(m);
	}
	connect_dec_free(&d);
	if (!bad && !pid)
		bad = "the first message must be start{process{pid}}";
	if (bad) {
		free(in.p);
		call_end(c, NULL, "invalid_argument", bad);
		return;
	}
	char *b64 = malloc(base64_encoded_len(in.len) + 1);
	if (!b64) {
		free(in.p);
		call_end(c, NULL, "internal", "out of memory");
		return;
	}
	base64_encode(in.p, in.len, b64);
	free(in.p);
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "stdin");
	cJSON_AddNumberToObject(open, "pid", pid);
	cJSON_AddStringToObject(open, "data", b64);
	free(b64);
	if (!e2b_call_open(&c->base, ac, open, &unary_ops))
		call_end(c, NULL, "unavailable", "cannot open a stream to the sandbox's agent");
}

/* ---- filesystem.Filesystem/WatchDir ---- */

static void watch_send(struct envd_call *c, cJSON *fs)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "filesystem", fs);
	stream_msg(c, o);
}

static void watch_event(struct astream *s, cJSON *ev)
{
	struct envd_call *c = s->ctx;
	if (agent_call_backlogged(&c->base, EVENTS_UNREAD_MAX)) {
		call_end(c, NULL, "resource_exhausted", BACKLOG_MSG);
		return;
	}
	if (cJSON_IsTrue(cJSON_GetObjectItem(ev, "started"))) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddObjectToObject(o, "start");
		stream_msg(c, o);
		return;
	}
	const cJSON *e;
	cJSON_ArrayForEach(e, cJSON_GetObjectItem(ev, "events")) {
		cJSON *fs = e2b_fs_event(e);
		if (fs)
			watch_send(c, fs);
	}
	c->base.next_ka = ur_now_ms() + srv_cfg.keepalive_ms;
}

static void watch_end(struct astream *s, cJSON *payload, const char *why)
{
	struct envd_call *c = s->ctx;
	c->base.as = NULL;
	if (end_failed(c, payload, why))
		return;
	call_end(c, NULL, NULL, NULL);
}

static const struct astream_ops watch_ops = { NULL, watch_event, watch_end, NULL, NULL };

static void start_watch(struct envd_call *c, struct agent_conn *ac, const cJSON *req)
{
	cJSON *open = e2b_watch_open(req, c->user);
	if (!open) {
		call_end(c, NULL, "invalid_argument", "path is required");
		return;
	}
	c->watch = true;
	uint64_t ms = timeout_ms(c->base.r);
	if (ms)
		c->base.deadline = ur_now_ms() + ms;
	if (!e2b_call_open(&c->base, ac, open, &watch_ops))
		call_end(c, NULL, "unavailable", "cannot open a stream to the sandbox's agent");
}

/* ---- dispatch ---- */

/* The request message: one envelope for streams, plain JSON for unary calls. */
static cJSON *request_message(struct http_req *r, bool envelope)
{
	const uint8_t *msg = r->body ? r->body : (const uint8_t *)"";
	size_t len = r->body_len;
	if (!envelope)
		return len ? json_parse_request(msg, len) : cJSON_CreateObject();
	struct connect_dec d;
	connect_dec_init(&d, (uint32_t)srv_cfg.max_json_body);
	const uint8_t *p = msg;
	size_t n = len;
	uint8_t flags;
	int rc = connect_dec_feed(&d, &p, &n, &flags, &msg, &len);
	cJSON *o = rc == 1 && !n ? json_parse_request(msg, len) : NULL;
	connect_dec_free(&d);
	return o;
}

void e2b_envd_rpc(struct http_req *r)
{
	const struct method *m = method_find(r->param);
	const char *ct = http_req_header(r, "content-type");
	bool envelope = connect_ct_is_stream_json(ct);
	if (!m->start) {
		cJSON *req = request_message(r, false);
		struct mitos_err e = { 0 };
		struct agent_conn *ac = strcmp(m->name, "filesystem.Filesystem/CreateWatcher")
			? NULL : e2b_sandbox_agent(e2b_req_sandbox(r), &e);
		if (!cJSON_IsObject(req))
			e2b_reply_connect_err(r, "invalid_argument", "the request message must be a JSON object");
		else if (!ac && !strcmp(m->name, "filesystem.Filesystem/CreateWatcher"))
			e2b_reply_connect_err(r, "unavailable", e.msg);
		else {
			char user[64];
			basic_user(r, user, sizeof(user));
			e2b_watcher_start(r, strchr(m->name, '/') + 1, ac, req, user);
		}
		cJSON_Delete(req);
		return;
	}
	struct envd_call *c = e2b_call_new(r, sizeof(*c), &envd_vt);
	if (!c)
		return;
	c->m = m;
	r->abort_on_eof = m->kind == SERVER_STREAM;
	if (m->kind == UNARY)
		c->base.deadline = ur_now_ms() + UNARY_DEADLINE_MS;
	basic_user(r, c->user, sizeof(c->user));
	uint64_t ignored;
	if (connect_timeout_ms(http_req_header(r, "connect-timeout-ms"), &ignored) < 0) {
		call_end(c, NULL, "invalid_argument", "Connect-Timeout-Ms must be 1 to 10 digits");
		return;
	}
	if (m->kind == UNARY ? !connect_ct_is_json(ct) : !envelope && !connect_ct_is_json(ct)) {
		call_end(c, NULL, "invalid_argument", "unsupported content type");
		return;
	}
	cJSON *req = m->kind == CLIENT_STREAM ? cJSON_CreateObject() : request_message(r, envelope);
	if (!cJSON_IsObject(req)) {
		cJSON_Delete(req);
		call_end(c, NULL, "invalid_argument", "the request message must be a JSON object");
		return;
	}
	struct mitos_err e = { 0 };
	struct agent_conn *ac = e2b_sandbox_agent(e2b_req_sandbox(r), &e);
	if (!ac) {
		cJSON_Delete(req);
		c->base.done = true;
		e2b_reply_err(r, e2b_agent_status(e.kind), "%s", e.msg);
		agent_call_free(&c->base);
		return;
	}
	m->start(c, ac, req);
	cJSON_Delete(req);
}

void e2b_envd_health(struct http_req *r)
{
	/* Asked without credentials, as of envd: a sandbox E2B neither made nor connected
	 * to (one of the Mitos API, whose id its user may have chosen) is not there. */
	const char *id = e2b_req_sandbox(r);
	struct mitos_err e = { 0 };
	if (!e2b_sbx_get(id, false))
		e2b_fail_not_found(&e, id);
	else if (e2b_sandbox_agent(id, &e)) {
		http_reply(r, 204, NULL, NULL, 0, NULL);
		return;
	}
	e2b_reply_err(r, e2b_agent_status(e.kind), "%s", e.msg);
}
