/* ExecStream and RunCodeStream: a command or a piece of code in the sandbox, its
 * output streamed as it comes and its end as the contract's terminal frame. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/base64.h"
#include "agent/proto.h"
#include "api/http/uring.h"
#include "api/mitos/rpc_call.h"
#include "api/proxy/pty.h"

#define MAX_TIMEOUT_S 86400      /* the contract's default ceiling on exec and run_code timeouts */
#define EXEC_TIMEOUT_EXIT_CODE 124 /* what a command killed at its timeout exits with, as timeout(1) */

/* A requested timeout in whole seconds: honoured, or refused when over the
 * ceiling (never silently reduced). False when the call failed. */
static bool req_timeout(struct rpc_call *c, const cJSON *req, double *secs)
{
	double raw = 0;
	*secs = 0;
	if (rpc_req_int(req, "timeoutSeconds", -1e15, 1e15, &raw) || raw < 0) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "timeoutSeconds must be a whole number of seconds (0: none)", NULL);
		return false;
	}
	if (raw > MAX_TIMEOUT_S) {
		char msg[120];
		snprintf(msg, sizeof(msg), "timeoutSeconds is over this server's ceiling of %d seconds", MAX_TIMEOUT_S);
		rpc_call_fail(c, AE_TIMEOUT_TOO_LARGE, msg, NULL);
		return false;
	}
	*secs = raw;
	if (*secs > 0 && !c->base.deadline)
		c->base.deadline = ur_now_ms() + (uint64_t)(*secs * 1000) + 10000; /* a backstop behind the agent's kill */
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
		const char *k = rpc_jstr(e, "key"), *v = rpc_jstr(e, "value");
		if (!cJSON_IsObject(e) || !k || !*k) {
			cJSON_Delete(o);
			return NULL;
		}
		cJSON_DeleteItemFromObjectCaseSensitive(o, k);
		cJSON_AddStringToObject(o, k, v ? v : "");
	}
	return o;
}

/* ---- ExecStream ---- */

static void exec_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin;
	struct rpc_call *c = s->ctx;
	if (n && (ch == PROTO_CH_STDOUT || ch == PROTO_CH_STDERR))
		rpc_data_msg(c, ch == PROTO_CH_STDOUT ? "stdout" : "stderr", p, n);
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
	rpc_stream_msg_cjson(c, o);
}

static void exec_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	if (!payload) {
		rpc_call_fail(c, AE_SANDBOX_NOT_RUNNING, "the sandbox stopped during the call", why);
		return;
	}
	cJSON *exited = cJSON_GetObjectItem(payload, "exited");
	cJSON *err = cJSON_GetObjectItem(payload, "error");
	const char *ecode = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
	if (ecode && !strcmp(ecode, "timeout")) {
		exit_msg(c, EXEC_TIMEOUT_EXIT_CODE, NULL);
	} else if (cJSON_IsBool(exited)) {
		exit_msg(c, agent_exit_code(payload), NULL);
	} else if (cJSON_IsObject(err) && rpc_map_agent_code(ecode, false) != AE_UNIMPLEMENTED &&
		   rpc_map_agent_code(ecode, false) != AE_INTERNAL && rpc_map_agent_code(ecode, false) != AE_LIMIT_EXCEEDED) {
		/* The command never ran (no such cwd, no such user): ExecExit.error says why.
		 * An agent that cannot exec at all, or broke, fails the call instead. */
		const char *emsg = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message"));
		char reason[400];
		snprintf(reason, sizeof(reason), "%s (agent: %s)", emsg ? emsg : "the command could not start",
			 ecode ? ecode : "unknown");
		exit_msg(c, -1, reason);
	} else {
		if (!rpc_end_failed(c, payload, why))
			rpc_call_fail(c, AE_INTERNAL, "the agent ended the command without an exit status", NULL);
		return;
	}
	rpc_call_end(c, NULL, 0, NULL, NULL);
}

static const struct astream_ops exec_ops = { exec_data, NULL, exec_end, rpc_as_writable, rpc_call_room };

/* The agent's exec operation for ExecStreamRequest / ExecOpen {command, args,
 * env, cwd, timeoutSeconds}: with args, command is the program; without, a shell
 * command line. NULL when the call failed. */
static cJSON *exec_request(struct rpc_call *c, const cJSON *req)
{
	const char *cmd = rpc_jstr(req, "command");
	const cJSON *args = cJSON_GetObjectItemCaseSensitive(req, "args");
	cJSON *env = env_object(cJSON_GetObjectItemCaseSensitive(req, "env"));
	bool args_ok = !args || cJSON_IsNull(args) || cJSON_IsArray(args);
	for (const cJSON *a = cJSON_IsArray(args) ? args->child : NULL; a; a = a->next)
		if (!cJSON_IsString(a))
			args_ok = false;
	if (!cmd || !*cmd || !args_ok || !env || cJSON_HasObjectItem(req, "cwd") != !!rpc_jstr(req, "cwd")) {
		cJSON_Delete(env);
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "command must be a non-empty string; args a list of strings; env a "
			  "list of {key, value}; cwd a string", NULL);
		return NULL;
	}
	double timeout;
	if (!req_timeout(c, req, &timeout)) {
		cJSON_Delete(env);
		return NULL;
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
	exec_cwd(open, rpc_jstr(req, "cwd"));
	if (timeout > 0)
		cJSON_AddNumberToObject(open, "timeout_ms", timeout * 1000);
	return open;
}

void rpc_exec_start(struct rpc_call *c, cJSON *req)
{
	cJSON *open = exec_request(c, req);
	if (open)
		rpc_call_open(c, open, &exec_ops);
}

/* A terminal: the agent's pty operation with ExecOpen's env, TERM and timeout. */
static cJSON *pty_request(struct rpc_call *c, const cJSON *open)
{
	cJSON *env = env_object(cJSON_GetObjectItemCaseSensitive(open, "env"));
	cJSON *o = env ? pty_agent_request(open) : NULL;
	double timeout;
	if (!o) {
		cJSON_Delete(env);
		rpc_call_fail(c, AE_INVALID_ARGUMENT, env ? PTY_OPEN_INVALID : "env must be a list of {key, value}", NULL);
		return NULL;
	}
	if (!req_timeout(c, open, &timeout)) {
		cJSON_Delete(env);
		cJSON_Delete(o);
		return NULL;
	}
	const char *term = rpc_jstr(cJSON_GetObjectItem(open, "pty"), "term");
	if (!cJSON_HasObjectItem(env, "TERM"))
		cJSON_AddStringToObject(env, "TERM", term && *term ? term : "xterm-256color");
	cJSON_AddItemToObject(o, "env", env);
	if (timeout > 0)
		cJSON_AddNumberToObject(o, "timeout_ms", timeout * 1000);
	return o;
}

void rpc_exec_open_interactive(struct rpc_call *c, const cJSON *open)
{
	const cJSON *pty = cJSON_GetObjectItemCaseSensitive(open, "pty");
	cJSON *o = pty && !cJSON_IsNull(pty) ? pty_request(c, open) : exec_request(c, open);
	if (!o)
		return;
	cJSON_AddBoolToObject(o, "stdin", true);
	rpc_call_open(c, o, &exec_ops);
}

/* ---- RunCodeStream ---- */

static void code_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin;
	struct rpc_call *c = s->ctx;
	if (n && (ch == PROTO_CH_STDOUT || ch == PROTO_CH_STDERR))
		rpc_data_msg(c, ch == PROTO_CH_STDOUT ? "stdout" : "stderr", p, n);
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
	if (agent_call_backlogged(&c->base, OUTPUT_UNREAD_MAX)) {
		rpc_call_fail(c, AE_LIMIT_EXCEEDED, BACKLOG_MSG, NULL);
		return;
	}
	const char *type = rpc_jstr(ev, "type");
	cJSON *o = cJSON_CreateObject();
	if (type && !strcmp(type, "result")) {
		cJSON *res = cJSON_AddObjectToObject(o, "result");
		const cJSON *data = cJSON_GetObjectItem(ev, "data");
		const char *plain = rpc_jstr(data, "text/plain");
		if (cJSON_IsTrue(cJSON_GetObjectItem(ev, "is_main_result")) && plain && *plain)
			cJSON_AddStringToObject(res, "text", plain);
		cJSON *map = cJSON_AddObjectToObject(res, "data");
		const cJSON *v;
		cJSON_ArrayForEach(v, (cJSON_IsObject(data) ? data : NULL))
			cJSON_AddItemToObject(map, v->string, mime_bytes(v));
	} else if (type && !strcmp(type, "error")) {
		cJSON *err = cJSON_AddObjectToObject(o, "error");
		const char *name = rpc_jstr(ev, "name"), *value = rpc_jstr(ev, "value"), *tb = rpc_jstr(ev, "traceback");
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
	rpc_stream_msg_cjson(c, o);
}

static void code_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	if (rpc_end_failed(c, payload, why))
		return;
	/* exitCode is a oneof member: protojson writes it even when 0. */
	const char *st = rpc_jstr(payload, "status");
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "{\"exitCode\":%d}", st && !strcmp(st, "error") ? 1 : 0);
	rpc_stream_msg(c, buf, (size_t)n, 0);
	rpc_call_end(c, NULL, 0, NULL, NULL);
}

static const struct astream_ops code_ops = { code_data, code_event, code_end, NULL, rpc_call_room };

/* RunCodeStreamRequest {code, language, timeoutSeconds}. */
void rpc_run_code_start(struct rpc_call *c, cJSON *req)
{
	const char *code = rpc_jstr(req, "code");
	const char *lang = rpc_jstr(req, "language");
	if (!code) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "code must be a string", NULL);
		return;
	}
	if (lang && *lang && strcmp(lang, "python") && strcmp(lang, "python3")) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "language must be \"python\"", "only Python kernels exist");
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
	rpc_call_open(c, open, &code_ops);
}

