/* The code interpreter (port 49999, protocol reference 4): POST /execute streams
 * NDJSON lines from the agent's run_code for Python (IPython), JavaScript and
 * TypeScript (Node), or from a bash process for bash; /contexts manages contexts (the
 * agent's kernels, and ours for bash, which keeps no state beyond a working
 * directory). */
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/proto.h"
#include "api/e2b/internal.h"
#include "api/mitos/handlers.h"
#include "api/http/json_request.h"
#include "api/http/http.h"
#include "api/sandbox/registry.h"
#include "api/http/server.h"
#include "api/http/uring.h"

#define KEEPALIVE_LINE "{\"type\":\"keepalive\"}\n"
/* Where E2B's code interpreter runs code that names no directory (its Jupyter's
 * root_dir), where the template has it. */
#define E2B_INTERP_CWD "/home/user"

#define BASH_CONTEXTS_MAX 32

struct exec_call {
	struct agent_call base;
	bool bash;
	bool unary;                /* a /contexts call */
	char bash_ctx[ID_MAX + 1]; /* bash: the context whose count goes up */
	uint8_t carry[2][4];       /* a UTF-8 sequence split across reads */
	size_t carry_len[2];
	cJSON *contexts;           /* GET /contexts: bash contexts to add */
	char cwd[256];
};

static void line_out(struct exec_call *c, cJSON *o)
{
	struct http_req *r = c->base.r;
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!s || !r) {
		free(s);
		return;
	}
	if (!r->resp_started)
		http_stream_start(r, 200, "application/x-ndjson", NULL);
	size_t n = strlen(s);
	http_stream_write2(r, s, n, "\n", 1);
	free(s);
	c->base.next_ka = ur_now_ms() + srv_cfg.keepalive_ms;
}

static void exec_finish(struct exec_call *c, int http_status, const char *msg)
{
	struct http_req *r = c->base.r;
	if (r && !c->base.done) {
		if (!r->resp_started && http_status)
			http_reply(r, http_status, "text/plain", msg, strlen(msg), NULL);
		else
			http_stream_finish(r);
	}
	c->base.done = true;
	agent_call_free(&c->base);
}

static void exec_tick(struct agent_call *b, uint64_t now)
{
	struct http_req *r = b->r;
	if (r && r->resp_started && now >= b->next_ka && http_stream_room(r)) {
		b->next_ka = now + srv_cfg.keepalive_ms;
		http_stream_write(r, KEEPALIVE_LINE, sizeof(KEEPALIVE_LINE) - 1);
	}
}

static void exec_destroy(struct agent_call *b)
{
	cJSON_Delete(((struct exec_call *)b)->contexts);
}

static const struct agent_call_vt exec_vt = { exec_tick, exec_destroy };

/* Bytes of p that end on a whole UTF-8 sequence. */
static size_t utf8_whole(const uint8_t *p, size_t n)
{
	for (size_t back = 1; back <= 3 && back <= n; back++) {
		uint8_t b = p[n - back];
		if ((b & 0xC0) == 0x80)
			continue;
		size_t need = (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 1;
		return need > back ? n - back : n;
	}
	return n;
}

static void text_line(struct exec_call *c, int idx, const uint8_t *p, size_t n)
{
	size_t have = c->carry_len[idx];
	uint8_t *buf = malloc(have + n + 1);
	if (!buf)
		return;
	memcpy(buf, c->carry[idx], have);
	memcpy(buf + have, p, n);
	size_t total = have + n, keep = utf8_whole(buf, total);
	c->carry_len[idx] = total - keep;
	memcpy(c->carry[idx], buf + keep, total - keep);
	buf[keep] = 0;
	if (keep) {
		char ts[40];
		registry_rfc3339(ur_wall_ms(), ts, sizeof(ts));
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "type", idx ? "stderr" : "stdout");
		/* NULs cannot travel in a C string: the text ends there. */
		cJSON_AddStringToObject(o, "text", (const char *)buf);
		cJSON_AddStringToObject(o, "timestamp", ts);
		line_out(c, o);
	}
	free(buf);
}

static void exec_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin;
	struct exec_call *c = s->ctx;
	if (n && (ch == PROTO_CH_STDOUT || ch == PROTO_CH_STDERR))
		text_line(c, ch - 1, p, n);
}

/* Jupyter MIME bundle -> E2B result keys (reference 4.2). */
static const char *mime_key(const char *mime)
{
	static const char *map[][2] = {
		{ "text/plain", "text" }, { "text/html", "html" }, { "text/markdown", "markdown" },
		{ "image/svg+xml", "svg" }, { "image/png", "png" }, { "image/jpeg", "jpeg" },
		{ "application/pdf", "pdf" }, { "text/latex", "latex" }, { "application/json", "json" },
		{ "application/javascript", "javascript" }, { "e2b/data", "data" }, { "e2b/chart", "chart" },
	};
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (!strcmp(map[i][0], mime))
			return map[i][1];
	return mime;
}

static void exec_event(struct astream *s, cJSON *ev)
{
	struct exec_call *c = s->ctx;
	if (agent_call_backlogged(&c->base, OUTPUT_UNREAD_MAX)) {
		exec_finish(c, 429, BACKLOG_MSG);
		return;
	}
	const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "type"));
	if (!type)
		return;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "type", type);
	if (!strcmp(type, "result")) {
		cJSON_AddBoolToObject(o, "is_main_result", cJSON_IsTrue(cJSON_GetObjectItem(ev, "is_main_result")));
		const cJSON *d, *data = cJSON_GetObjectItem(ev, "data");
		cJSON_ArrayForEach(d, (cJSON_IsObject(data) ? data : NULL)) {
			const char *key = mime_key(d->string);
			cJSON *v = cJSON_Duplicate(d, 1);
			/* The reference server strips the quotes of a str's repr. */
			size_t n = cJSON_IsString(v) ? strlen(v->valuestring) : 0;
			if (!strcmp(key, "text") && n >= 2 && (v->valuestring[0] == '\'' || v->valuestring[0] == '"') &&
			    v->valuestring[n - 1] == v->valuestring[0]) {
				char *t = strndup(v->valuestring + 1, n - 2);
				cJSON_Delete(v);
				v = cJSON_CreateString(t ? t : "");
				free(t);
			}
			cJSON_AddItemToObject(o, key, v);
		}
	} else if (!strcmp(type, "error")) {
		static const char *keys[] = { "name", "value", "traceback" };
		for (size_t i = 0; i < 3; i++) {
			const cJSON *v = cJSON_GetObjectItem(ev, keys[i]);
			if (cJSON_IsArray(v)) {
				/* Jupyter tracebacks are lists of lines. */
				size_t len = 1;
				const cJSON *l;
				cJSON_ArrayForEach(l, v) {
					const char *t = cJSON_GetStringValue(l);
					len += (t ? strlen(t) : 0) + 1;
				}
				char *joined = malloc(len);
				size_t at = 0;
				cJSON_ArrayForEach(l, (joined ? v : NULL)) {
					const char *t = cJSON_GetStringValue(l);
					size_t tl = t ? strlen(t) : 0;
					memcpy(joined + at, t ? t : "", tl);
					at += tl;
					joined[at++] = '\n';
				}
				if (joined)
					joined[at] = 0;
				cJSON_AddStringToObject(o, keys[i], joined ? joined : "");
				free(joined);
			} else {
				const char *t = cJSON_GetStringValue(v);
				cJSON_AddStringToObject(o, keys[i], t ? t : "");
			}
		}
	} else {
		cJSON_Delete(o);
		return;
	}
	line_out(c, o);
}

static void count_line(struct exec_call *c, double n)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "type", "number_of_executions");
	cJSON_AddNumberToObject(o, "execution_count", n);
	line_out(c, o);
}

static void error_line(struct exec_call *c, const char *name, const char *value)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "type", "error");
	cJSON_AddStringToObject(o, "name", name);
	cJSON_AddStringToObject(o, "value", value);
	cJSON_AddStringToObject(o, "traceback", "");
	line_out(c, o);
}

/* The bash context's counter (bash contexts are ours). */
static double bash_count(struct exec_call *c)
{
	struct e2b_sbx *s = e2b_sbx_get(e2b_req_sandbox(c->base.r), true);
	cJSON *ctx = s ? cJSON_GetObjectItemCaseSensitive(s->bash_contexts, c->bash_ctx) : NULL;
	cJSON *n = cJSON_GetObjectItem(ctx, "count");
	if (!cJSON_IsNumber(n))
		return 1;
	cJSON_SetNumberValue(n, n->valuedouble + 1);
	return n->valuedouble;
}

static void exec_end(struct astream *s, cJSON *payload, const char *why)
{
	struct exec_call *c = s->ctx;
	c->base.as = NULL;
	const cJSON *err = cJSON_GetObjectItem(payload, "error");
	const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
	const char *msg = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message"));
	struct http_req *r = c->base.r;
	if (!payload && r && !c->base.done) {
		/* The interpreter answers an execution at once and streams it; one quiet
		 * until the sandbox went away still began. */
		if (!r->resp_started)
			http_stream_start(r, 200, "application/x-ndjson", NULL);
		e2b_call_cut(&c->base);
		return;
	}
	if (!payload) {
		exec_finish(c, 502, why ? why : "the sandbox stopped during the execution");
		return;
	}
	if (code && !strcmp(code, "not_found") && r && !r->resp_started) {
		exec_finish(c, 404, msg ? msg : "no such context");
		return;
	}
	if (code && strcmp(code, "timeout")) {
		exec_finish(c, 500, msg ? msg : "the execution failed");
		return;
	}
	if (code)
		error_line(c, "TimeoutError", "the execution was interrupted after its timeout");
	if (c->bash) {
		const cJSON *ec = cJSON_GetObjectItem(payload, "exit_code");
		if (cJSON_IsNumber(ec) && ec->valueint != 0 && !code) {
			char v[64];
			snprintf(v, sizeof(v), "exit status %d", ec->valueint);
			error_line(c, "Error", v);
		}
		count_line(c, bash_count(c));
	} else {
		const cJSON *ec = cJSON_GetObjectItem(payload, "execution_count");
		if (cJSON_IsNumber(ec))
			count_line(c, ec->valuedouble);
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "type", "end_of_execution");
	line_out(c, o);
	exec_finish(c, 0, NULL);
}

static const struct astream_ops exec_ops = { exec_data, exec_event, exec_end, NULL, e2b_call_room };

/* A language as E2B's server names it (trimmed, lower case, js and ts spelled out;
 * none is python) into out; false for one that nothing here runs. */
static bool lang_normalize(const char *in, char out[16])
{
	static const char *const names[][2] = { { "", "python" }, { "python", "python" }, { "python3", "python" },
						{ "js", "javascript" }, { "javascript", "javascript" },
						{ "ts", "typescript" }, { "typescript", "typescript" },
						{ "bash", "bash" }, { "sh", "bash" } };
	char low[16];
	size_t n = 0;
	while (in && *in == ' ')
		in++;
	for (; in && *in && n < sizeof(low) - 1; in++)
		low[n++] = (char)(*in >= 'A' && *in <= 'Z' ? *in + 32 : *in);
	while (n && low[n - 1] == ' ')
		n--;
	low[n] = 0;
	if (in && *in)
		return false; /* longer than any name */
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(low, names[i][0])) {
			strcpy(out, names[i][1]);
			return true;
		}
	return false;
}

#define LANGUAGES_MSG "only the python, javascript, typescript and bash languages run here"

static struct exec_call *begin(struct http_req *r, struct agent_conn **ac)
{
	struct mitos_err e = { 0 };
	*ac = e2b_sandbox_agent(e2b_req_sandbox(r), &e);
	if (!*ac) {
		http_reply(r, e2b_agent_status(e.kind), "text/plain", e.msg, strlen(e.msg), NULL);
		return NULL;
	}
	return e2b_call_new(r, sizeof(struct exec_call), &exec_vt);
}

void e2b_interp_execute(struct http_req *r)
{
	cJSON *b = r->body_len ? json_parse_request(r->body, r->body_len) : NULL;
	const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(b, "code"));
	const char *ctx = cJSON_GetStringValue(cJSON_GetObjectItem(b, "context_id"));
	const char *lang = cJSON_GetStringValue(cJSON_GetObjectItem(b, "language"));
	const cJSON *env = cJSON_GetObjectItem(b, "env_vars");
	if (cJSON_IsNull(env))
		env = NULL; /* the Python SDK sends every field, null when not given */
	char language[16];
	const char *bad = !code ? "code (a string) is required"
		: ctx && lang ? "give context_id or language, not both"
		: !lang_normalize(lang, language) ? LANGUAGES_MSG
		: env && !cJSON_IsObject(env) ? "env_vars must be an object" : NULL;
	if (bad) {
		http_reply(r, 400, "text/plain", bad, strlen(bad), NULL);
		cJSON_Delete(b);
		return;
	}
	struct e2b_sbx *s = e2b_sbx_get(e2b_req_sandbox(r), true);
	const cJSON *bctx = ctx && s ? cJSON_GetObjectItemCaseSensitive(s->bash_contexts, ctx) : NULL;
	struct agent_conn *ac;
	struct exec_call *c = begin(r, &ac);
	if (!c) {
		cJSON_Delete(b);
		return;
	}
	r->abort_on_eof = true;
	cJSON *open = cJSON_CreateObject();
	cJSON *envs = cJSON_CreateObject();
	const cJSON *layers[] = { s ? s->env_vars : NULL, env };
	for (size_t i = 0; i < 2; i++)
		for (const cJSON *e = layers[i] ? layers[i]->child : NULL; e; e = e->next)
			if (cJSON_IsString(e)) {
				cJSON_DeleteItemFromObjectCaseSensitive(envs, e->string);
				cJSON_AddStringToObject(envs, e->string, e->valuestring);
			}
	if (bctx || !strcmp(language, "bash")) {
		c->bash = true;
		snprintf(c->bash_ctx, sizeof(c->bash_ctx), "%s", bctx ? ctx : "");
		cJSON_AddStringToObject(open, "op", "exec");
		cJSON *argv = cJSON_AddArrayToObject(open, "argv");
		cJSON_AddItemToArray(argv, cJSON_CreateString("/bin/bash"));
		cJSON_AddItemToArray(argv, cJSON_CreateString("-c"));
		cJSON_AddItemToArray(argv, cJSON_CreateString(code));
		const char *cwd = cJSON_GetStringValue(cJSON_GetObjectItem(bctx, "cwd"));
		if (cwd && strcmp(cwd, "~"))
			cJSON_AddStringToObject(open, "cwd", cwd);
	} else {
		cJSON_AddStringToObject(open, "op", "run_code");
		cJSON_AddStringToObject(open, "code", code);
		/* Without a context: the agent's default one of the language. */
		cJSON_AddStringToObject(open, ctx ? "context" : "language", ctx ? ctx : language);
		cJSON_AddBoolToObject(open, "e2b_data", true); /* Result.data of DataFrames */
	}
	cJSON_AddStringToObject(open, "default_cwd", E2B_INTERP_CWD);
	cJSON_AddItemToObject(open, "env", envs);
	cJSON_Delete(b);
	if (!e2b_call_open(&c->base, ac, open, &exec_ops))
		exec_finish(c, 502, "cannot open a stream to the sandbox's agent");
}

/* ---- /contexts ---- */

static cJSON *context_obj(const char *id, const char *language, const char *cwd)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "id", id);
	cJSON_AddStringToObject(o, "language", language);
	cJSON_AddStringToObject(o, "cwd", cwd);
	return o;
}

static void ctx_end(struct astream *s, cJSON *payload, const char *why)
{
	struct exec_call *c = s->ctx;
	c->base.as = NULL;
	struct http_req *r = c->base.r;
	const cJSON *err = cJSON_GetObjectItem(payload, "error");
	if (!payload || err) {
		const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
		const char *msg = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message"));
		exec_finish(c, !payload ? 502 : code && !strcmp(code, "not_found") ? 404 : 500,
			    msg ? msg : why ? why : "the context operation failed");
		return;
	}
	cJSON *out;
	const cJSON *list = cJSON_GetObjectItem(payload, "contexts");
	if (cJSON_IsArray(list)) {
		/* E2B's server starts a python and a javascript context with the sandbox; the
		 * agent makes its defaults on first use: listed from the start all the same. */
		static const char *const defaults[][2] = { { "default", "python" }, { "default-javascript", "javascript" } };
		out = cJSON_CreateArray();
		for (size_t i = 0; i < 2; i++) {
			bool made = false;
			const cJSON *e;
			cJSON_ArrayForEach(e, list) {
				const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(e, "id"));
				made = made || (id && !strcmp(id, defaults[i][0]));
			}
			if (!made)
				cJSON_AddItemToArray(out, context_obj(defaults[i][0], defaults[i][1], E2B_INTERP_CWD));
		}
		const cJSON *e;
		cJSON_ArrayForEach(e, list) {
			const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(e, "id"));
			const char *lang = cJSON_GetStringValue(cJSON_GetObjectItem(e, "language"));
			const char *cwd = cJSON_GetStringValue(cJSON_GetObjectItem(e, "cwd"));
			if (id)
				cJSON_AddItemToArray(out, context_obj(id, lang ? lang : "python", cwd ? cwd : ""));
		}
		/* then the bash contexts, ours */
		while (c->contexts && c->contexts->child)
			cJSON_AddItemToArray(out, cJSON_DetachItemViaPointer(c->contexts, c->contexts->child));
	} else {
		const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(payload, "id"));
		const char *lang = cJSON_GetStringValue(cJSON_GetObjectItem(payload, "language"));
		const char *cwd = cJSON_GetStringValue(cJSON_GetObjectItem(payload, "cwd"));
		out = id ? context_obj(id, lang ? lang : "python", cwd ? cwd : c->cwd) : cJSON_CreateObject();
	}
	c->base.done = true;
	if (r)
		handler_reply_cjson(r, 200, out);
	else
		cJSON_Delete(out);
	agent_call_free(&c->base);
}

static const struct astream_ops ctx_ops = { NULL, NULL, ctx_end, NULL, NULL };

static void reply_text(struct http_req *r, int status, const char *msg)
{
	http_reply(r, status, "text/plain", msg, strlen(msg), NULL);
}

void e2b_interp_contexts(struct http_req *r)
{
	struct e2b_sbx *s = e2b_sbx_get(e2b_req_sandbox(r), true);
	if (!s) {
		reply_text(r, 502, "the sandbox was not found");
		return;
	}
	if (!s->bash_contexts && !(s->bash_contexts = cJSON_CreateObject())) {
		reply_text(r, 500, "out of memory");
		return;
	}
	const char *id = r->param;
	char *slash = strchr(r->param, '/');
	bool restart = slash && !strcmp(slash, "/restart") && r->method == HTTP_POST;
	if (slash)
		*slash = 0;
	if ((slash && !restart) || (!*id && r->method != HTTP_GET && r->method != HTTP_POST) ||
	    (*id && !restart && r->method != HTTP_DELETE)) {
		reply_text(r, 404, "no such endpoint");
		return;
	}
	cJSON *bctx = *id ? cJSON_GetObjectItemCaseSensitive(s->bash_contexts, id) : NULL;
	if (bctx) {
		/* Bash contexts hold no interpreter state: restart keeps the directory. */
		if (!restart)
			cJSON_DeleteItemFromObjectCaseSensitive(s->bash_contexts, id);
		handler_reply_cjson(r, 200, cJSON_CreateObject());
		return;
	}
	cJSON *b = NULL;
	const char *cwd = NULL;
	char language[16] = "python";
	if (!*id && r->method == HTTP_POST) {
		b = r->body_len ? json_parse_request(r->body, r->body_len) : cJSON_CreateObject();
		cwd = cJSON_GetStringValue(cJSON_GetObjectItem(b, "cwd"));
		if (!cJSON_IsObject(b) || !lang_normalize(cJSON_GetStringValue(cJSON_GetObjectItem(b, "language")), language)) {
			cJSON_Delete(b);
			reply_text(r, 400, LANGUAGES_MSG);
			return;
		}
		if (!strcmp(language, "bash")) {
			/* Kept in serve's memory, not the sandbox's: as many as the agent keeps
			 * python kernels, each with a path's worth of cwd. */
			bool too_long = cwd && strlen(cwd) >= PATH_MAX;
			if (too_long || cJSON_GetArraySize(s->bash_contexts) >= BASH_CONTEXTS_MAX) {
				cJSON_Delete(b);
				reply_text(r, too_long ? 400 : 429, too_long ? "cwd is longer than a path may be"
					   : "too many bash contexts (at most 32): remove some");
				return;
			}
			char cid[E2B_TOKEN_HEX + 1];
			e2b_token_new(cid, sizeof(cid));
			cJSON *o = cJSON_CreateObject();
			/* No cwd: the agent's user's home, whatever it is in this template. */
			cJSON_AddStringToObject(o, "cwd", cwd ? cwd : "~");
			cJSON_AddNumberToObject(o, "count", 0);
			cJSON_AddItemToObject(s->bash_contexts, cid, o);
			handler_reply_cjson(r, 200, context_obj(cid, "bash", cwd ? cwd : "~"));
			cJSON_Delete(b);
			return;
		}
	}
	struct agent_conn *ac;
	struct exec_call *c = begin(r, &ac);
	if (!c) {
		cJSON_Delete(b);
		return;
	}
	cJSON *open = cJSON_CreateObject();
	if (!*id && r->method == HTTP_GET) {
		cJSON_AddStringToObject(open, "op", "context_list");
		c->contexts = cJSON_CreateArray();
		const cJSON *e;
		cJSON_ArrayForEach(e, s->bash_contexts) {
			const char *bcwd = cJSON_GetStringValue(cJSON_GetObjectItem(e, "cwd"));
			cJSON_AddItemToArray(c->contexts, context_obj(e->string, "bash", bcwd ? bcwd : ""));
		}
	} else if (!*id) {
		cJSON_AddStringToObject(open, "op", "context_create");
		cJSON_AddStringToObject(open, "language", language);
		cJSON_AddStringToObject(open, "default_cwd", E2B_INTERP_CWD);
		if (cwd) {
			cJSON_AddStringToObject(open, "cwd", cwd);
			snprintf(c->cwd, sizeof(c->cwd), "%s", cwd);
		}
	} else {
		cJSON_AddStringToObject(open, "op", restart ? "context_restart" : "context_remove");
		cJSON_AddStringToObject(open, "id", id);
	}
	cJSON_Delete(b);
	if (!e2b_call_open(&c->base, ac, open, &ctx_ops))
		exec_finish(c, 502, "cannot open a stream to the sandbox's agent");
}
