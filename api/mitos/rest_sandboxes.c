/* The /v1 REST surface of the Mitos sandbox-server contract: health, templates,
 * fork (of a template or of a running sandbox), sandboxes, TTL, pause/resume.
 * Field names, answers and status codes are the contract's (api/API.md). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/mitos/cluster_list.h"
#include "api/mitos/cluster_templates.h"
#include "api/http/errors.h"
#include "api/sandbox/net_policy.h"
#include "api/sandbox/node.h"
#include "api/mitos/handlers.h"
#include "api/http/http.h"
#include "api/mitos/idempotency.h"
#include "api/http/listener.h"
#include "api/sandbox/registry.h"
#include "api/http/json_request.h"
#include "api/sandbox/sandbox_ends.h"
#include "api/sandbox/sandboxes.h"
#include "api/sandbox/template_hash.h"
#include "api/sandbox/workload.h"
#include "api/http/server.h"

#define MAX_TIMEOUT_S (30u * 86400u)

cJSON *handler_json_body(struct http_req *r)
{
	if (!r->body_len) {
		http_reply_error(r, AE_INVALID_JSON, "the request body must be a JSON object", "empty body", NULL);
		return NULL;
	}
	if (json_text_has_nul(r->body, r->body_len)) {
		http_reply_error(r, AE_INVALID_ARGUMENT, JSON_NUL_MESSAGE, NULL, NULL);
		return NULL;
	}
	cJSON *o = json_parse_request(r->body, r->body_len);
	if (!cJSON_IsObject(o)) {
		cJSON_Delete(o);
		http_reply_error(r, AE_INVALID_JSON, "the request body must be one JSON object",
				 "a syntax error, bytes after the object, or a key given twice", NULL);
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

/* Reads a whole number in [lo, hi]; *present false when absent. -EINVAL when it is
 * not a whole number, -ERANGE when it is one outside [lo, hi]. */
static int get_uint(const cJSON *o, const char *key, double lo, double hi, uint32_t *out, bool *present)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	*present = v != NULL;
	if (!v)
		return 0;
	if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
		return -EINVAL;
	if (v->valuedouble < lo || v->valuedouble > hi)
		return -ERANGE;
	*out = (uint32_t)v->valuedouble;
	return 0;
}

/* A string field that must be a valid id; NULL after replying 400 when it is not. */
static const char *body_id(struct http_req *r, const cJSON *b, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(b, key);
	if (cJSON_IsString(v) && api_valid_id(v->valuestring))
		return v->valuestring;
	char msg[200];
	snprintf(msg, sizeof(msg), "%s %s: must be 1-64 characters of [a-zA-Z0-9_-], starting with a letter "
		 "or digit", v ? "invalid" : "missing", key);
	http_reply_error(r, AE_INVALID_SANDBOX_ID, msg, NULL, NULL);
	return NULL;
}

void rest_health(struct http_req *r)
{
	unsigned ntpl = 0;
	for (struct template_rec *t = templates_first(); t; t = t->next)
		ntpl++;
	cJSON *o = cJSON_CreateObject();
	/* The contract's fields; a router sends creates only to nodes that say ok
	 * (a standalone server has neither draining nor full, so says ok). */
	cJSON_AddStringToObject(o, "status", node_draining() ? "draining"
				: sandboxes_count() >= srv_cfg.max_sandboxes ? "full" : "ok");
	cJSON_AddBoolToObject(o, "mock", 0);
	cJSON_AddNumberToObject(o, "templates", ntpl);
	if (node_tag()[0])
		cJSON_AddStringToObject(o, "node_id", node_tag());
	cJSON_AddNumberToObject(o, "sandboxes", sandboxes_count());
	cJSON_AddStringToObject(o, "engine", sandboxes_engine_name());
	cJSON_AddNumberToObject(o, "connections", listener_conn_count());
	handler_reply_cjson(r, 200, o);
}

static cJSON *template_info(const struct template_rec *t)
{
	cJSON *o = cJSON_CreateObject();
	char ts[40];
	cJSON_AddStringToObject(o, "id", t->name);
	cJSON_AddBoolToObject(o, "ready", !t->building);
	registry_rfc3339(t->created_ms, ts, sizeof(ts));
	cJSON_AddStringToObject(o, "created_at", ts);
	cJSON_AddNumberToObject(o, "creation_time_ms", t->build_ms);
	cJSON_AddItemToObject(o, "network", net_policy_mitos_json(t->net));
	/* Ours: what the template is made of (the cluster compares it across nodes). */
	char hash[TEMPLATE_HASH_HEX];
	template_content_hash(t, sandboxes_engine_name(), hash);
	cJSON_AddStringToObject(o, "content_hash", hash);
	return o;
}

/* The base URL a client reached this server at: the request's Host when it is a
 * plain host[:port], else the listening address. */
static void endpoint_of(const struct http_req *r, char *out, size_t n)
{
	const char *h = http_req_header(r, "host");
	size_t len = h ? strlen(h) : 0;
	bool ok = len > 0 && len < 200 && strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
						 "0123456789.-:[]") == len;
	if (ok)
		snprintf(out, n, "http://%.200s", h);
	else
		snprintf(out, n, "http://%.200s:%u", srv_cfg.listen_host, srv_cfg.listen_port);
}

static cJSON *sandbox_info(const struct http_req *r, const struct sandbox *sb)
{
	cJSON *o = cJSON_CreateObject();
	char ts[40], ep[240];
	cJSON_AddStringToObject(o, "id", sb->id);
	cJSON_AddStringToObject(o, "template_id", sb->template_name);
	endpoint_of(r, ep, sizeof(ep));
	cJSON_AddStringToObject(o, "endpoint", ep);
	registry_rfc3339(sb->created_ms, ts, sizeof(ts));
	cJSON_AddStringToObject(o, "created_at", ts);
	cJSON_AddNumberToObject(o, "fork_time_ms", sb->fork_time_ms);
	cJSON_AddItemToObject(o, "network", net_policy_mitos_json(sb->net));
	return o;
}

/* Reads a template's "network" into p: what this node cannot honour is refused rather
 * than silently not applied. Returns a message, or NULL when it is acceptable. */
static const char *network_refusal(const cJSON *net, struct net_policy *p)
{
	const char *bad = net_policy_from_mitos(net, p);
	if (!bad && net_policy_any(p) && !sandboxes_network())
		bad = "sandboxes on this node have no network interface besides loopback (serve runs without "
		      "--egress): egress \"allow\" and allow_cidrs cannot be honoured";
	return bad;
}

struct tpl_ctx {
	struct http_req *r;
	struct tpl_waiter *w;
	char idem[IDEM_KEY_MAX + 1];
};

static void tpl_abort(struct http_req *r)
{
	struct tpl_ctx *tc = r->ctx;
	/* The build goes on; only its answer has nobody to go to. */
	tpl_waiter_detach(tc->w);
	idem_release(tc->idem);
	free(tc);
	r->ctx = NULL;
}

static const struct http_req_ops tpl_ops = { .abort = tpl_abort };

static void tpl_done(void *ctx, enum api_err err, const char *msg, struct template_rec *t)
{
	struct tpl_ctx *tc = ctx;
	struct http_req *r = tc->r;
	r->ctx = NULL;
	r->ops = NULL;
	if (!t) {
		idem_release(tc->idem);
		http_reply_error(r, err, msg, NULL, NULL);
	} else {
		idem_record(tc->idem, IDEM_TEMPLATE, t->name);
		handler_reply_cjson(r, 200, template_info(t));
	}
	free(tc);
}

/* The engine's template spec from the contract's request: "resources" sizes the VM
 * (vcpus, mem_mib); the keys the contract names go; the engines' own keys stay. */
static cJSON *template_spec(const cJSON *b, const struct net_policy *net, const char **bad)
{
	cJSON *sp = cJSON_Duplicate(b, 1);
	if (!sp)
		return NULL;
	static const char *contract_keys[] = { "id", "init_wait_seconds", "network", "workload", "resources" };
	for (size_t i = 0; i < sizeof(contract_keys) / sizeof(contract_keys[0]); i++)
		cJSON_DeleteItemFromObjectCaseSensitive(sp, contract_keys[i]);
	/* The contract's workload command: its engine copy, with the defaults filled in. */
	const cJSON *wl = cJSON_GetObjectItemCaseSensitive(b, "workload");
	const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(wl, "command");
	/* No command is no workload, as the real server reads it. */
	if (wl && !cJSON_IsNull(wl) && (!cJSON_IsObject(wl) || (cmd && !(cJSON_IsArray(cmd) && !cJSON_GetArraySize(cmd))))) {
		cJSON *w = workload_from_contract(wl, bad);
		if (!w) {
			cJSON_Delete(sp);
			return NULL;
		}
		cJSON_AddItemToObject(sp, "workload", w);
	}
	/* Only a network that lets anything through is kept: the template gets it. */
	if (net_policy_any(net))
		cJSON_AddItemToObject(sp, "network",
				      cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(b, "network"), 1));
	const cJSON *res = cJSON_GetObjectItemCaseSensitive(b, "resources");
	if (res && !cJSON_IsNull(res)) {
		uint32_t v;
		bool present;
		if (!cJSON_IsObject(res)) {
			*bad = "resources must be an object {vcpu_count, mem_size_mib}";
		} else if (get_uint(res, "vcpu_count", 0, 64, &v, &present)) {
			*bad = "resources.vcpu_count must be a whole number from 0 (the default) to 64";
		} else {
			if (present && v)
				cJSON_AddNumberToObject(sp, "vcpus", v);
			if (get_uint(res, "mem_size_mib", 0, 1u << 20, &v, &present))
				*bad = "resources.mem_size_mib must be a whole number of MiB (0: the default)";
			else if (present && v)
				cJSON_AddNumberToObject(sp, "mem_mib", v);
		}
	}
	return sp;
}

void rest_templates_create(struct http_req *r)
{
	if (cluster_templates_wanted(r)) {
		cluster_templates_start(r);
		return;
	}
	cJSON *b = handler_json_body(r);
	if (!b)
		return;
	const char *id = body_id(r, b, "id");
	if (!id) {
		cJSON_Delete(b);
		return;
	}
	struct net_policy net;
	const char *bad = network_refusal(cJSON_GetObjectItemCaseSensitive(b, "network"), &net);
	uint32_t wait_s;
	bool present;
	if (!bad && get_uint(b, "init_wait_seconds", 0, 3600, &wait_s, &present))
		bad = "init_wait_seconds must be a whole number of seconds from 0 to 3600";
	cJSON *spec = bad ? NULL : template_spec(b, &net, &bad);
	if (bad || !spec) {
		cJSON_Delete(spec);
		cJSON_Delete(b);
		http_reply_error(r, bad ? AE_INVALID_ARGUMENT : AE_INTERNAL, bad ? bad : "out of memory", NULL, NULL);
		return;
	}
	char name[ID_MAX + 1];
	snprintf(name, sizeof(name), "%s", id);
	cJSON_Delete(b);
	const char *key = http_req_header(r, "idempotency-key");
	char bound[ID_MAX + 1];
	int st = idem_begin(key, IDEM_TEMPLATE, bound, sizeof(bound));
	struct template_rec *t = st == IDEM_REPLAY ? templates_find(bound) : NULL;
	if (st < 0 || st == IDEM_IN_FLIGHT || t) {
		cJSON_Delete(spec);
		if (t)
			handler_reply_cjson(r, 200, template_info(t));
		else if (st < 0)
			http_reply_error(r, AE_INVALID_ARGUMENT, "Idempotency-Key is longer than 255 bytes", NULL, NULL);
		else
			http_reply_error(r, AE_CONFLICT, "a create with this Idempotency-Key is already in progress; "
					 "retry shortly", NULL, NULL);
		return;
	}
	struct tpl_ctx *tc = calloc(1, sizeof(*tc));
	if (!tc) {
		cJSON_Delete(spec);
		idem_release(key);
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	snprintf(tc->idem, sizeof(tc->idem), "%s", key ? key : "");
	bool created;
	struct mitos_err e = { 0 };
	/* Every template is made from this node's one image, as the contract's server
	 * makes every template from its one root filesystem. */
	int rc = templates_create(name, "python", spec, &t, &created, tpl_done, tc, &tc->w, &e);
	cJSON_Delete(spec);
	if (rc == 1) {
		/* The engine builds it (kvm): the answer comes when it is ready. */
		tc->r = r;
		r->ctx = tc;
		r->ops = &tpl_ops;
		return;
	}
	free(tc);
	if (rc) {
		idem_release(key);
		http_reply_error(r, e.kind, e.msg, NULL, NULL);
		return;
	}
	/* The contract's server makes the template anew, posture and all: a sandbox of a
	 * later fork gets what the last create asked for, never an older, wider one. */
	if (!created && net_policy_any(&net) && !sandboxes_network_for(t)) {
		idem_release(key);
		http_reply_error(r, AE_INVALID_ARGUMENT, "template exists, built without a network device (before serve "
				 "ran with --egress): delete it or use another id to have it made with one", NULL, NULL);
		return;
	}
	if (!created && !t->source[0] && (rc = templates_set_network(t, &net))) {
		idem_release(key);
		http_reply_error(r, AE_INTERNAL, "cannot save the template's network posture", NULL, NULL);
		return;
	}
	idem_record(key, IDEM_TEMPLATE, t->name);
	handler_reply_cjson(r, 200, template_info(t));
}

void rest_templates_list(struct http_req *r)
{
	cJSON *a = cJSON_CreateArray();
	for (struct template_rec *t = templates_first(); t; t = t->next)
		cJSON_AddItemToArray(a, template_info(t));
	handler_reply_cjson(r, 200, a);
}

/* ---- fork ---- */

struct fork_ctx {
	struct http_req *r;
	struct sb_job *job;
	char idem[IDEM_KEY_MAX + 1];
};

static void fork_abort(struct http_req *r)
{
	struct fork_ctx *fc = r->ctx;
	sb_job_detach(fc->job);
	idem_release(fc->idem);
	free(fc);
	r->ctx = NULL;
}

static const struct http_req_ops fork_ops = { .abort = fork_abort };

static void fork_done(void *ctx, enum api_err err, const char *msg, struct sandbox **sbs, unsigned n)
{
	struct fork_ctx *fc = ctx;
	struct http_req *r = fc->r;
	r->ctx = NULL;
	if (!sbs || n != 1) {
		idem_release(fc->idem);
		http_reply_error(r, sbs ? AE_INTERNAL : err, sbs ? "fork made no sandbox" : msg, NULL, NULL);
	} else {
		idem_record(fc->idem, IDEM_FORK, sbs[0]->id);
		handler_reply_cjson(r, 200, sandbox_info(r, sbs[0]));
	}
	free(fc);
}

/* One new sandbox named child_id, from template tpl or from the running sandbox src. */
static void fork_one(struct http_req *r, const char *tpl, const char *src, const char *child_id)
{
	const char *key = http_req_header(r, "idempotency-key");
	char bound[ID_MAX + 1];
	int st = idem_begin(key, IDEM_FORK, bound, sizeof(bound));
	struct sandbox *prior = st == IDEM_REPLAY ? sandbox_find(bound) : NULL;
	if (prior) {
		handler_reply_cjson(r, 200, sandbox_info(r, prior));
		return;
	}
	if (st < 0 || st == IDEM_IN_FLIGHT) {
		if (st < 0)
			http_reply_error(r, AE_INVALID_ARGUMENT, "Idempotency-Key is longer than 255 bytes", NULL, NULL);
		else
			http_reply_error(r, AE_CONFLICT, "a fork with this Idempotency-Key is already in progress; "
					 "retry shortly", NULL, NULL);
		return;
	}
	const char *ids[1] = { child_id };
	struct fork_req fr = { .template_name = tpl, .sandbox_id = src, .n = 1, .ids = ids };
	struct fork_ctx *fc = calloc(1, sizeof(*fc));
	if (!fc) {
		idem_release(key);
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	snprintf(fc->idem, sizeof(fc->idem), "%s", key ? key : "");
	fc->r = r;
	r->ctx = fc;
	r->ops = &fork_ops;
	struct mitos_err e = { 0 };
	if (sandboxes_fork(&fr, fork_done, fc, &fc->job, &e)) {
		r->ctx = NULL;
		r->ops = NULL;
		free(fc);
		idem_release(key);
		http_reply_error(r, e.kind, e.msg, NULL, NULL);
	}
}

void rest_fork(struct http_req *r)
{
	cJSON *b = handler_json_body(r);
	if (!b)
		return;
	const char *id = body_id(r, b, "id");
	const char *tpl = id ? body_id(r, b, "template") : NULL;
	if (tpl)
		fork_one(r, tpl, NULL, id);
	cJSON_Delete(b);
}

void rest_sandbox_fork(struct http_req *r)
{
	cJSON *b = handler_json_body(r);
	if (!b)
		return;
	const char *id = body_id(r, b, "id");
	const cJSON *ps = cJSON_GetObjectItemCaseSensitive(b, "pause_source");
	const cJSON *tpl = cJSON_GetObjectItemCaseSensitive(b, "template");
	if (id && ps && !cJSON_IsBool(ps)) {
		http_reply_error(r, AE_INVALID_ARGUMENT, "pause_source must be a boolean", NULL, NULL);
	} else if (id && tpl && !cJSON_IsString(tpl)) {
		http_reply_error(r, AE_INVALID_ARGUMENT, "template must be a string", NULL, NULL);
	} else if (id) {
		/* The child always descends from a paused source: the copy of its
		 * writable layer must not change under the copy, whatever pause_source says. */
		fork_one(r, NULL, r->sandbox_id, id);
	}
	cJSON_Delete(b);
}

static struct sandbox *find_or_404(struct http_req *r, const char *id);

/* ---- sandboxes ---- */

void rest_sandboxes_list(struct http_req *r)
{
	cJSON *a = cJSON_CreateArray();
	for (struct sandbox *sb = sandboxes_first(); sb; sb = sb->next)
		cJSON_AddItemToArray(a, sandbox_info(r, sb));
	if (cluster_list_wanted(r))
		cluster_list_start(r, a, "/v1/sandboxes", NULL, NULL);
	else
		handler_reply_cjson(r, 200, a);
}

static struct sandbox *find_or_404(struct http_req *r, const char *id)
{
	struct sandbox *sb = sandbox_find(id);
	if (!sb) {
		char msg[120], end[420];
		snprintf(msg, sizeof(msg), "sandbox \"%s\" not found", id);
		bool ended = !sandbox_end_describe(id, end, sizeof(end));
		http_reply_error(r, AE_NOT_FOUND, msg, ended ? end : NULL, NULL);
	}
	return sb;
}

/* Not a route of the contract: the contract's sandbox plus its state. */
void rest_sandbox_get(struct http_req *r)
{
	struct sandbox *sb = find_or_404(r, r->sandbox_id);
	if (!sb)
		return;
	cJSON *o = sandbox_info(r, sb);
	cJSON_AddStringToObject(o, "state", sb->state == SB_STARTING ? "starting" : sb->state == SB_RUNNING ? "running"
				: sb->state == SB_PAUSED ? "paused" : "stopping");
	handler_reply_cjson(r, 200, o);
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
		cJSON_AddStringToObject(o, "status", "terminated");
		cJSON_AddStringToObject(o, "id", dc->id);
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

/* set_timeout, pause and resume name the sandbox in the body: {"sandbox": ID}. */
static struct sandbox *body_sandbox(struct http_req *r, cJSON **bodyp)
{
	cJSON *b = handler_json_body(r);
	*bodyp = NULL;
	if (!b)
		return NULL;
	const char *id = body_id(r, b, "sandbox");
	struct sandbox *sb = id ? find_or_404(r, id) : NULL;
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
	const cJSON *jt = cJSON_GetObjectItemCaseSensitive(b, "timeout_seconds");
	bool too_large = cJSON_IsNumber(jt) && jt->valuedouble > MAX_TIMEOUT_S;
	int rc = get_uint(b, "timeout_seconds", 1, MAX_TIMEOUT_S, &secs, &present);
	cJSON_Delete(b);
	if (rc || !present) {
		char msg[160];
		snprintf(msg, sizeof(msg), too_large ? "timeout_seconds is over this server's ceiling of %u seconds"
			 : "timeout_seconds must be a whole number of seconds from 1 to %u", MAX_TIMEOUT_S);
		http_reply_error(r, too_large ? AE_TIMEOUT_TOO_LARGE : AE_INVALID_ARGUMENT, msg, NULL, NULL);
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
	cJSON_AddStringToObject(o, "status", "ok");
	cJSON_AddNumberToObject(o, "deadline_unix", (double)(sb->deadline_ms / 1000));
	cJSON_AddNumberToObject(o, "timeout_seconds", secs);
	handler_reply_cjson(r, 200, o);
}

struct pause_call {
	struct http_req *r;    /* NULL once the client left */
	bool pause;
	char id[ID_MAX + 1];
	char what[24];         /* "starting", "stopping" or "being paused or resumed" */
};

static void pause_call_abort(struct http_req *r)
{
	struct pause_call *pc = r->ctx;
	pc->r = NULL;
	r->ctx = NULL;
}

static const struct http_req_ops pause_call_ops = { .abort = pause_call_abort };

static void pause_done(void *ctx, int rc)
{
	struct pause_call *pc = ctx;
	struct http_req *r = pc->r;
	if (r) {
		r->ctx = NULL;
		r->ops = NULL;
		char msg[160];
		const struct sandbox *sb = sandbox_find(pc->id);
		if (rc == -ECHILD && !sb)
			rc = -ESRCH; /* deleted, or expired, while it booted */
		if (rc == -EBUSY) {
			snprintf(msg, sizeof(msg), "sandbox %s is %s", pc->id, pc->what);
			http_reply_error(r, AE_SANDBOX_NOT_RUNNING, msg, NULL, NULL);
		} else if (rc == -ESRCH) {
			snprintf(msg, sizeof(msg), "sandbox %s ended while it was being %s", pc->id,
				 pc->pause ? "paused" : "resumed");
			http_reply_error(r, AE_NOT_FOUND, msg, NULL, NULL);
		} else if (rc) {
			snprintf(msg, sizeof(msg), "it did not boot again from its files (%.100s); it stays paused",
				 sb ? sb->fail_reason : "");
			http_reply_error(r, AE_INTERNAL, pc->pause ? "pause failed" : "resume failed",
					 rc == -ECHILD ? msg : strerror(-rc), NULL);
		} else {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "status", pc->pause ? "paused" : "running");
			handler_reply_cjson(r, 200, o);
		}
	}
	free(pc);
}

static void pause_resume(struct http_req *r, bool pause)
{
	cJSON *b;
	struct sandbox *sb = body_sandbox(r, &b);
	if (!sb)
		return;
	cJSON_Delete(b);
	struct pause_call *pc = calloc(1, sizeof(*pc));
	if (!pc) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	pc->r = r;
	pc->pause = pause;
	snprintf(pc->id, sizeof(pc->id), "%s", sb->id);
	snprintf(pc->what, sizeof(pc->what), "%s", sb->ctl_busy ? "being paused or resumed"
		 : sb->state == SB_STARTING ? "starting" : "stopping");
	r->ctx = pc;
	r->ops = &pause_call_ops;
	sandbox_set_paused(sb, pause, pause_done, pc);
}

void rest_pause(struct http_req *r) { pause_resume(r, true); }
void rest_resume(struct http_req *r) { pause_resume(r, false); }
