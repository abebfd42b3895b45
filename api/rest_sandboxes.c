/* The /v1 REST surface: templates, fork, sandboxes, TTL, pause/resume. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/errors.h"
#include "api/handlers.h"
#include "api/http.h"
#include "api/listener.h"
#include "api/registry.h"
#include "api/json_nul.h"
#include "api/sandbox_ends.h"
#include "api/sandboxes.h"
#include "api/server.h"

#define MAX_TIMEOUT_S (30u * 86400u)

cJSON *handler_json_body(struct http_req *r)
{
	if (!r->body_len) {
		http_reply_error(r, AE_INVALID_ARGUMENT, "the request body must be a JSON object", "empty body", NULL);
		return NULL;
	}
	if (json_text_has_nul(r->body, r->body_len)) {
		http_reply_error(r, AE_INVALID_ARGUMENT, JSON_NUL_MESSAGE, NULL, NULL);
		return NULL;
	}
	const char *end = NULL;
	cJSON *o = cJSON_ParseWithLengthOpts((const char *)r->body, r->body_len, &end, 0);
	if (!o || !cJSON_IsObject(o)) {
		char cause[80];
		snprintf(cause, sizeof(cause), "JSON parse error near byte %zu",
			 o ? (size_t)0 : end ? (size_t)(end - (const char *)r->body) : (size_t)0);
		cJSON_Delete(o);
		http_reply_error(r, AE_INVALID_ARGUMENT, "the request body must be a JSON object", cause, NULL);
		return NULL;
	}
	return o;
}

void handler_reply_cjson(struct http_req *r, int status, cJSON *o)
{
	char *s = o ? cJSON_PrintUnformatted(o) : NULL;
	cJSON_Delete(o);
	if (!s) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	http_reply_json(r, status, s);
	free(s);
}

static const char *get_str(const cJSON *o, const char *a, const char *b)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, a);
	if (!v && b)
		v = cJSON_GetObjectItemCaseSensitive(o, b);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool has_key(const cJSON *o, const char *a)
{
	return cJSON_GetObjectItemCaseSensitive(o, a) != NULL;
}

/* Reads a whole number of seconds in [lo, hi]; *present false when absent. */
static int get_seconds(const cJSON *o, const char *key, double lo, double hi, uint32_t *out, bool *present)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	*present = v != NULL;
	if (!v)
		return 0;
	if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
	    v->valuedouble > hi)
		return -EINVAL;
	*out = (uint32_t)v->valuedouble;
	return 0;
}

void rest_health(struct http_req *r)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "status", "ok");
	cJSON_AddStringToObject(o, "engine", sandboxes_engine_name());
	cJSON_AddNumberToObject(o, "sandboxes", sandboxes_count());
	cJSON_AddNumberToObject(o, "connections", listener_conn_count());
	handler_reply_cjson(r, 200, o);
}

struct tpl_ctx {
	struct http_req *r;
	struct tpl_waiter *w;
	bool created;
};

static void tpl_reply(struct http_req *r, struct template_rec *t, bool created)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "template", template_json(t));
	cJSON_AddBoolToObject(o, "created", created);
	handler_reply_cjson(r, created ? 201 : 200, o);
}

static void tpl_abort(struct http_req *r)
{
	struct tpl_ctx *tc = r->ctx;
	/* The build goes on; only its answer has nobody to go to. */
	tpl_waiter_detach(tc->w);
	free(tc);
	r->ctx = NULL;
}

static const struct http_req_ops tpl_ops = { .abort = tpl_abort };

static void tpl_done(void *ctx, enum api_err err, const char *msg, struct template_rec *t)
{
	struct tpl_ctx *tc = ctx;
	struct http_req *r = tc->r;
	bool created = tc->created;
	r->ctx = NULL;
	r->ops = NULL;
	free(tc);
	if (!t)
		http_reply_error(r, err, msg, NULL, NULL);
	else
		tpl_reply(r, t, created);
}

void rest_templates_create(struct http_req *r)
{
	cJSON *b = handler_json_body(r);
	if (!b)
		return;
	const char *name = get_str(b, "name", "template");
	const char *image = get_str(b, "image", NULL);
	if (!name && image)
		name = image;
	if (!name) {
		cJSON_Delete(b);
		http_reply_error(r, AE_INVALID_ARGUMENT, "give the template's \"name\" (and optionally \"image\")", NULL, NULL);
		return;
	}
	struct template_rec *t;
	bool created;
	enum api_err e;
	char msg[700];
	struct tpl_ctx *tc = calloc(1, sizeof(*tc));
	if (!tc) {
		cJSON_Delete(b);
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	int rc = templates_create(name, image, b, &t, &created, tpl_done, tc, &tc->w, &e, msg, sizeof(msg));
	cJSON_Delete(b);
	if (rc == 1) {
		/* The engine builds it (kvm): the answer comes when it is ready. */
		tc->r = r;
		tc->created = created;
		r->ctx = tc;
		r->ops = &tpl_ops;
		return;
	}
	free(tc);
	if (rc) {
		http_reply_error(r, e, msg, NULL, NULL);
		return;
	}
	tpl_reply(r, t, created);
}

void rest_templates_list(struct http_req *r)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *a = cJSON_AddArrayToObject(o, "templates");
	for (struct template_rec *t = templates_first(); t; t = t->next)
		cJSON_AddItemToArray(a, template_json(t));
	handler_reply_cjson(r, 200, o);
}

/* ---- fork ---- */

struct fork_ctx {
	struct http_req *r;
	struct sb_job *job;
};

static void fork_abort(struct http_req *r)
{
	struct fork_ctx *fc = r->ctx;
	sb_job_detach(fc->job);
	free(fc);
	r->ctx = NULL;
}

static const struct http_req_ops fork_ops = { .abort = fork_abort };

static void fork_done(void *ctx, enum api_err err, const char *msg, struct sandbox **sbs, unsigned n)
{
	struct fork_ctx *fc = ctx;
	struct http_req *r = fc->r;
	r->ctx = NULL;
	free(fc);
	if (!sbs) {
		http_reply_error(r, err, msg, NULL, NULL);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON *a = cJSON_AddArrayToObject(o, "sandboxes");
	for (unsigned i = 0; i < n; i++)
		cJSON_AddItemToArray(a, sandbox_json(sbs[i]));
	handler_reply_cjson(r, 201, o);
}

void rest_fork(struct http_req *r)
{
	cJSON *b = handler_json_body(r);
	if (!b)
		return;
	struct fork_req fr = { .n = 1 };
	const char *ids[64];
	char msg[600];
	enum api_err e = AE_INVALID_ARGUMENT;
	const char *bad = NULL;
	/* Sandbox ids first: a malformed one is reported before anything else. */
	const char *sid = get_str(b, "sandbox_id", "sandbox");
	if (has_key(b, "sandbox_id") || has_key(b, "sandbox")) {
		if (!sid || !api_valid_id(sid)) {
			cJSON_Delete(b);
			http_reply_error(r, AE_INVALID_SANDBOX_ID, "sandbox_id is not a valid sandbox id", NULL, NULL);
			return;
		}
		fr.sandbox_id = sid;
	}
	const cJSON *jids = cJSON_GetObjectItemCaseSensitive(b, "ids");
	const char *one_id = get_str(b, "id", NULL);
	if (has_key(b, "id") && (!one_id || !api_valid_id(one_id))) {
		cJSON_Delete(b);
		http_reply_error(r, AE_INVALID_SANDBOX_ID, "id is not a valid sandbox id", NULL, NULL);
		return;
	}
	if (jids) {
		int k = cJSON_IsArray(jids) ? cJSON_GetArraySize(jids) : -1;
		if (k < 1 || k > 64) {
			bad = "ids must be an array of 1 to 64 sandbox ids";
		} else {
			for (int i = 0; i < k; i++) {
				const cJSON *v = cJSON_GetArrayItem(jids, i);
				if (!cJSON_IsString(v) || !api_valid_id(v->valuestring)) {
					cJSON_Delete(b);
					http_reply_error(r, AE_INVALID_SANDBOX_ID, "ids holds an invalid sandbox id", NULL, NULL);
					return;
				}
				ids[i] = v->valuestring;
			}
			fr.ids = ids;
			fr.n = (unsigned)k;
		}
	} else if (one_id) {
		ids[0] = one_id;
		fr.ids = ids;
	}
	fr.template_name = get_str(b, "template", "template_id");
	if ((has_key(b, "template") || has_key(b, "template_id")) && !fr.template_name)
		bad = "template must be a string";
	const cJSON *jn = cJSON_GetObjectItemCaseSensitive(b, "n");
	if (jn) {
		if (!cJSON_IsNumber(jn) || jn->valuedouble != floor(jn->valuedouble) || jn->valuedouble < 1 ||
		    jn->valuedouble > 64)
			bad = "n must be an integer from 1 to 64";
		else if (fr.ids && (unsigned)jn->valuedouble != fr.n)
			bad = "n must match the number of ids";
		else
			fr.n = (unsigned)jn->valuedouble;
	}
	bool present;
	if (get_seconds(b, "timeout", 1, MAX_TIMEOUT_S, &fr.timeout_s, &present))
		bad = "timeout must be a whole number of seconds from 1 to 2592000";
	const cJSON *md = cJSON_GetObjectItemCaseSensitive(b, "metadata");
	if (md && !cJSON_IsObject(md) && !cJSON_IsNull(md))
		bad = "metadata must be an object";
	fr.metadata = cJSON_IsObject(md) ? md : NULL;
	if (bad) {
		cJSON_Delete(b);
		http_reply_error(r, AE_INVALID_ARGUMENT, bad, NULL, NULL);
		return;
	}
	struct fork_ctx *fc = calloc(1, sizeof(*fc));
	if (!fc) {
		cJSON_Delete(b);
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	fc->r = r;
	r->ctx = fc;
	r->ops = &fork_ops;
	int rc = sandboxes_fork(&fr, fork_done, fc, &fc->job, &e, msg, sizeof(msg));
	cJSON_Delete(b);
	if (rc) {
		r->ctx = NULL;
		r->ops = NULL;
		free(fc);
		http_reply_error(r, e, msg, NULL, NULL);
	}
}

/* ---- sandboxes ---- */

void rest_sandboxes_list(struct http_req *r)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *a = cJSON_AddArrayToObject(o, "sandboxes");
	char *tpl = http_query_get(r->query, "template");
	for (struct sandbox *sb = sandboxes_first(); sb; sb = sb->next)
		if (!tpl || !strcmp(tpl, sb->template_name))
			cJSON_AddItemToArray(a, sandbox_json(sb));
	free(tpl);
	handler_reply_cjson(r, 200, o);
}

static struct sandbox *find_or_404(struct http_req *r, const char *id)
{
	struct sandbox *sb = sandbox_find(id);
	if (!sb) {
		char msg[120], end[420];
		snprintf(msg, sizeof(msg), "no sandbox %s", id);
		bool ended = !sandbox_end_describe(id, end, sizeof(end));
		http_reply_error(r, AE_NOT_FOUND, msg, ended ? end : NULL, NULL);
	}
	return sb;
}

void rest_sandbox_get(struct http_req *r)
{
	struct sandbox *sb = find_or_404(r, r->sandbox_id);
	if (sb)
		handler_reply_cjson(r, 200, sandbox_json(sb));
}

struct delete_ctx {
	struct http_req *r;
	struct sb_waiter *w;
	char id[ID_MAX + 1];
};

static void delete_abort(struct http_req *r)
{
	struct delete_ctx *dc = r->ctx;
	/* The sandbox still goes away; only the answer has nobody to go to. */
	sb_waiter_detach(dc->w);
	free(dc);
	r->ctx = NULL;
}

static const struct http_req_ops delete_ops = { .abort = delete_abort };

static void delete_done(void *ctx)
{
	struct delete_ctx *dc = ctx;
	struct http_req *r = dc->r;
	if (r) {
		r->ctx = NULL;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "id", dc->id);
		cJSON_AddBoolToObject(o, "deleted", 1);
		handler_reply_cjson(r, 200, o);
	}
	free(dc);
}

void rest_sandbox_delete(struct http_req *r)
{
	struct sandbox *sb = find_or_404(r, r->sandbox_id);
	if (!sb)
		return;
	struct delete_ctx *dc = calloc(1, sizeof(*dc));
	if (!dc) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	dc->r = r;
	snprintf(dc->id, sizeof(dc->id), "%s", sb->id);
	r->ctx = dc;
	r->ops = &delete_ops;
	sandbox_destroy(sb, "deleted by request", delete_done, dc, &dc->w);
}

/* set_timeout, pause and resume name the sandbox in the body ("sandbox_id"),
 * or in X-Sandbox-Id. */
static struct sandbox *body_sandbox(struct http_req *r, cJSON **bodyp)
{
	*bodyp = NULL;
	cJSON *b = NULL;
	const char *id = NULL;
	if (r->body_len) {
		b = handler_json_body(r);
		if (!b)
			return NULL;
		id = get_str(b, "sandbox_id", "id");
		if ((has_key(b, "sandbox_id") || has_key(b, "id")) && (!id || !api_valid_id(id))) {
			cJSON_Delete(b);
			http_reply_error(r, AE_INVALID_SANDBOX_ID, "sandbox_id is not a valid sandbox id", NULL, NULL);
			return NULL;
		}
	}
	if (!id) {
		const char *h = http_req_header(r, "x-sandbox-id");
		if (h && !api_valid_id(h)) {
			cJSON_Delete(b);
			http_reply_error(r, AE_INVALID_SANDBOX_ID, "X-Sandbox-Id is not a valid sandbox id", NULL, NULL);
			return NULL;
		}
		id = h;
	}
	if (!id) {
		cJSON_Delete(b);
		http_reply_error(r, AE_INVALID_SANDBOX_ID, "name the sandbox with \"sandbox_id\" in the body", NULL, NULL);
		return NULL;
	}
	struct sandbox *sb = find_or_404(r, id);
	if (!sb) {
		cJSON_Delete(b);
		return NULL;
	}
	*bodyp = b;
	return sb;
}

void rest_set_timeout(struct http_req *r)
{
	cJSON *b;
	struct sandbox *sb = body_sandbox(r, &b);
	if (!sb)
		return;
	uint32_t secs = 0;
	bool present;
	int rc = b ? get_seconds(b, "timeout", 1, MAX_TIMEOUT_S, &secs, &present) : 0;
	if (!rc && b && !present)
		rc = get_seconds(b, "timeout_seconds", 1, MAX_TIMEOUT_S, &secs, &present);
	cJSON_Delete(b);
	if (rc || !present) {
		http_reply_error(r, AE_INVALID_ARGUMENT, "timeout must be a whole number of seconds from 1 to 2592000",
				 NULL, NULL);
		return;
	}
	if (sb->state == SB_STOPPING) {
		http_reply_error(r, AE_SANDBOX_NOT_RUNNING, "the sandbox is stopping", NULL, NULL);
		return;
	}
	rc = sandbox_set_timeout(sb, secs);
	if (rc) {
		http_reply_error(r, AE_INTERNAL, "cannot record the new deadline; the old one stands", strerror(-rc),
				 NULL);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	char ts[40];
	cJSON_AddStringToObject(o, "id", sb->id);
	cJSON_AddNumberToObject(o, "timeout", secs);
	cJSON_AddNumberToObject(o, "deadline", (double)(sb->deadline_ms / 1000));
	registry_rfc3339(sb->deadline_ms, ts, sizeof(ts));
	cJSON_AddStringToObject(o, "expires_at", ts);
	handler_reply_cjson(r, 200, o);
}

static void pause_resume(struct http_req *r, bool pause)
{
	cJSON *b;
	struct sandbox *sb = body_sandbox(r, &b);
	if (!sb)
		return;
	cJSON_Delete(b);
	int rc = pause ? sandbox_pause(sb) : sandbox_resume(sb);
	if (rc == -EBUSY) {
		char msg[120];
		snprintf(msg, sizeof(msg), "sandbox %s is %s", sb->id,
			 sb->state == SB_STARTING ? "starting" : "stopping");
		http_reply_error(r, AE_SANDBOX_NOT_RUNNING, msg, NULL, NULL);
		return;
	}
	if (rc) {
		http_reply_error(r, AE_INTERNAL, pause ? "pause failed" : "resume failed", strerror(-rc), NULL);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "id", sb->id);
	cJSON_AddStringToObject(o, "state", pause ? "paused" : "running");
	handler_reply_cjson(r, 200, o);
}

void rest_pause(struct http_req *r) { pause_resume(r, true); }
void rest_resume(struct http_req *r) { pause_resume(r, false); }
