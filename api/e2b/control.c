/* E2B's control plane (protocol reference 2.2): create, connect/resume, list with
 * filters and paging, get, kill, timeout, pause, templates, on the node's own
 * sandbox lifecycle. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/e2b/internal.h"
#include "api/mitos/cluster_list.h"
#include "api/mitos/handlers.h"
#include "api/http/json_request.h"
#include "api/http/http.h"
#include "api/sandbox/net_policy.h"
#include "api/sandbox/registry.h"
#include "api/http/server.h"
#include "api/http/uring.h"

#define MAX_TIMEOUT_S (30u * 86400u)
#define E2B_DEFAULT_TIMEOUT_S 300u
#define LIST_DEFAULT_LIMIT 100
#define LIST_MAX_LIMIT 1000

/* E2B's stock templates run on the node's default image (bash, Python, IPython). */
static const char *template_image(const char *name)
{
	if (!strcmp(name, "base") || !strcmp(name, "code-interpreter-v1") || !strcmp(name, "code-interpreter"))
		return "python";
	return name;
}


static const char *e2b_state(const struct sandbox *sb)
{
	return sb->state == SB_PAUSED ? "paused" : "running";
}

/* The domain getHost(port) builds "<port>-<id>.<domain>" on: --preview-domain with
 * the port the client reached us on, so the SDK's host names this server. */
static void add_domain(cJSON *o, const struct http_req *r)
{
	const char *host = r ? http_req_header(r, "host") : NULL, *colon = host ? strrchr(host, ':') : NULL;
	char dom[300];
	if (!srv_cfg.preview_domain) {
		cJSON_AddNullToObject(o, "domain");
		return;
	}
	snprintf(dom, sizeof(dom), "%s%s", srv_cfg.preview_domain,
		 colon && !strchr(colon, ']') && strlen(colon) <= 6 ? colon : "");
	cJSON_AddStringToObject(o, "domain", dom);
}

/* The Sandbox / ListedSandbox / SandboxDetail object (one shape serves all three:
 * the SDK ignores fields it does not read). */
static cJSON *sandbox_obj(const struct http_req *r, const struct sandbox *sb, const struct e2b_sbx *s,
			  bool with_tokens)
{
	cJSON *o = cJSON_CreateObject();
	char ts[40];
	unsigned cpus, mem;
	e2b_template_shape(sb->template_name, &cpus, &mem);
	cJSON_AddStringToObject(o, "sandboxID", sb->id);
	cJSON_AddStringToObject(o, "templateID", sb->template_name);
	cJSON_AddStringToObject(o, "alias", sb->template_name);
	cJSON_AddStringToObject(o, "clientID", "mitos");
	cJSON_AddStringToObject(o, "envdVersion", E2B_ENVD_VERSION);
	registry_rfc3339(sb->created_ms, ts, sizeof(ts));
	cJSON_AddStringToObject(o, "startedAt", ts);
	registry_rfc3339(sb->deadline_ms, ts, sizeof(ts));
	cJSON_AddStringToObject(o, "endAt", ts);
	cJSON_AddNumberToObject(o, "cpuCount", cpus);
	cJSON_AddNumberToObject(o, "memoryMB", mem);
	cJSON_AddNumberToObject(o, "diskSizeMB", 0);
	cJSON_AddStringToObject(o, "state", e2b_state(sb));
	cJSON_AddItemToObject(o, "metadata", sb->metadata ? cJSON_Duplicate(sb->metadata, 1) : cJSON_CreateObject());
	/* What the sandbox has, which is less than asked on a node without --egress. */
	cJSON_AddBoolToObject(o, "allowInternetAccess", sb->net && sb->net->internet);
	static const struct net_policy none;
	cJSON *net = net_policy_e2b_json(sb->net ? sb->net : &none);
	if (s)
		cJSON_AddBoolToObject(net, "allowPublicTraffic", s->public_traffic);
	if (s && s->mask_host[0])
		cJSON_AddStringToObject(net, "maskRequestHost", s->mask_host);
	cJSON_AddItemToObject(o, "network", net);
	cJSON *lc = cJSON_AddObjectToObject(o, "lifecycle");
	cJSON_AddStringToObject(lc, "onTimeout", s && s->auto_pause ? "pause" : "kill");
	cJSON_AddBoolToObject(lc, "autoResume", s && s->auto_resume);
	add_domain(o, r);
	if (with_tokens && s && s->envd_token[0])
		cJSON_AddStringToObject(o, "envdAccessToken", s->envd_token);
	if (with_tokens && s && s->traffic_token[0])
		cJSON_AddStringToObject(o, "trafficAccessToken", s->traffic_token);
	return o;
}

/* Tokens when the client asks for a secured sandbox, and always on a server with
 * a token: envd then has to be as closed as the control plane. */
static void mint_tokens(struct e2b_sbx *s, bool secure)
{
	if (s->envd_token[0] || (!secure && !srv_cfg.token))
		return;
	e2b_token_new(s->envd_token, sizeof(s->envd_token));
	e2b_token_new(s->traffic_token, sizeof(s->traffic_token));
}

cJSON *e2b_json_body(struct http_req *r)
{
	if (!r->body_len)
		return cJSON_CreateObject();
	cJSON *o = json_parse_request(r->body, r->body_len);
	if (!cJSON_IsObject(o)) {
		cJSON_Delete(o);
		e2b_reply_err(r, 400, "the request body must be a JSON object");
		return NULL;
	}
	return o;
}

/* "timeout" in whole seconds, clamped like E2B's API does; *present false when absent. */
static int timeout_field(const cJSON *b, uint32_t *out, bool *present)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(b, "timeout");
	*present = v && !cJSON_IsNull(v);
	if (!*present)
		return 0;
	if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > MAX_TIMEOUT_S)
		return -EINVAL;
	*out = v->valuedouble < 1 ? 1 : (uint32_t)ceil(v->valuedouble);
	return 0;
}

struct sandbox *e2b_find_or_404(struct http_req *r)
{
	struct sandbox *sb = r->sandbox_id[0] ? sandbox_find(r->sandbox_id) : NULL;
	if (!sb || sb->state == SB_STOPPING)
		e2b_reply_err(r, 404, "sandbox %s not found", r->sandbox_id[0] ? r->sandbox_id : "(invalid id)");
	return sb && sb->state != SB_STOPPING ? sb : NULL;
}

/* The sandbox a request names, its body, and the body's "timeout" (*secs untouched
 * when absent); NULL after an error answer. The caller deletes *body. */
static struct sandbox *sandbox_and_timeout(struct http_req *r, cJSON **body, uint32_t *secs, bool *present)
{
	struct sandbox *sb = e2b_find_or_404(r);
	cJSON *b = sb ? e2b_json_body(r) : NULL;
	if (!b)
		return NULL;
	if (timeout_field(b, secs, present)) {
		cJSON_Delete(b);
		e2b_reply_err(r, 400, "timeout must be a number of seconds from 0 to 2592000");
		return NULL;
	}
	*body = b;
	return sb;
}

/* ---- lifecycle.onTimeout: "pause" ---- */

/* Sandboxes that asked for it are paused just before the node's expiry would
 * remove them (three of its ticks: an expiry waits for a pause on its way), and then
 * kept (paused) for as long as the node keeps any sandbox; connect resumes them. Two
 * seconds ahead took most of a short timeout: a command run just after a wake was
 * frozen halfway. */
#define AUTO_PAUSE_LEAD_MS 300u

static struct ur_ticker auto_pause_ticker;
static bool auto_pause_ticking;

struct auto_pause {
	char id[ID_MAX + 1];
	uint64_t created_ms;
};

/* Paused: kept for as long as the node keeps any sandbox. */
static void auto_paused(void *ctx, int rc)
{
	struct auto_pause *ap = ctx;
	struct sandbox *sb = rc ? NULL : sandbox_find(ap->id);
	if (sb && sb->created_ms == ap->created_ms)
		sandbox_set_timeout(sb, MAX_TIMEOUT_S);
	free(ap);
}

static void auto_pause_tick(struct ur_ticker *t, uint64_t now)
{
	(void)t;
	(void)now;
	uint64_t wall = ur_wall_ms();
	for (struct e2b_sbx *s = e2b_sbx_first(); s; s = s->next) {
		struct sandbox *sb = s->auto_pause ? sandbox_find(s->id) : NULL;
		if (!sb || sb->created_ms != s->created_ms || sb->state != SB_RUNNING || sb->deadline_ms > wall + AUTO_PAUSE_LEAD_MS)
			continue;
		struct auto_pause *ap = sb->ctl_busy ? NULL : calloc(1, sizeof(*ap));
		if (!ap)
			continue;
		snprintf(ap->id, sizeof(ap->id), "%s", sb->id);
		ap->created_ms = sb->created_ms;
		if (s->auto_pause_files_only)
			sandbox_pause_files_only(sb, auto_paused, ap);
		else
			sandbox_set_paused(sb, true, auto_paused, ap);
	}
}

void e2b_auto_pause_watch(void)
{
	if (auto_pause_ticking)
		return;
	auto_pause_ticker.fn = auto_pause_tick;
	ur_add_ticker(&auto_pause_ticker);
	auto_pause_ticking = true;
}

/* ---- create ---- */

static const cJSON *public_traffic_field(const cJSON *body)
{
	return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(body, "network"), "allowPublicTraffic");
}

/* A boolean field the SDK may leave out or send as null (its default then). */
static bool optional_bool_ok(const cJSON *v)
{
	return !v || cJSON_IsNull(v) || cJSON_IsBool(v);
}

static const cJSON *mask_host_field(const cJSON *body)
{
	return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(body, "network"), "maskRequestHost");
}

static bool mask_host_field_ok(const cJSON *v)
{
	return !v || cJSON_IsNull(v) || (cJSON_IsString(v) && e2b_mask_host_ok(v->valuestring));
}

/* autoResume {"enabled": bool}: 1 on, 0 off or absent, -1 malformed. */
static int auto_resume_field(const cJSON *b)
{
	const cJSON *ar = cJSON_GetObjectItemCaseSensitive(b, "autoResume");
	if (!ar || cJSON_IsNull(ar))
		return 0;
	const cJSON *en = cJSON_IsObject(ar) ? cJSON_GetObjectItemCaseSensitive(ar, "enabled") : NULL;
	return cJSON_IsBool(en) ? cJSON_IsTrue(en) : -1;
}

struct create_ctx {
	struct http_req *r;
	struct tpl_waiter *tw;
	struct sb_job *job;
	char tpl[ID_MAX + 1];
	uint32_t timeout_s;
	cJSON *body;
	struct net_policy net;
};

static void create_free(struct create_ctx *cc)
{
	if (cc->r) {
		cc->r->ctx = NULL;
		cc->r->ops = NULL;
	}
	cJSON_Delete(cc->body);
	free(cc);
}

static void create_abort(struct http_req *r)
{
	struct create_ctx *cc = r->ctx;
	/* The build or fork goes on; its answer has nobody to go to. */
	tpl_waiter_detach(cc->tw);
	sb_job_detach(cc->job);
	cc->r = NULL;
	create_free(cc);
}

static const struct http_req_ops create_ops = { .abort = create_abort };

/* The E2B record of a sandbox just made, from like's envs and lifecycle, with tokens
 * when secure (or serve has a token), saved: tokens a client is given survive a
 * restart of serve, or are not given. 0, or -errno once sb is on its way out. */
static int record_new(struct sandbox *sb, const struct e2b_sbx *like, bool secure, struct e2b_sbx **out)
{
	struct e2b_sbx *s = e2b_sbx_get(sb->id, true);
	int rc = s ? 0 : -ENOMEM;
	if (s) {
		if (cJSON_IsObject(like->env_vars))
			s->env_vars = cJSON_Duplicate(like->env_vars, 1);
		s->auto_pause = like->auto_pause;
		s->auto_pause_files_only = like->auto_pause_files_only;
		s->auto_resume = like->auto_resume;
		s->resume_timeout_s = like->resume_timeout_s;
		s->public_traffic = like->public_traffic;
		memcpy(s->mask_host, like->mask_host, sizeof(s->mask_host));
		if (s->auto_pause)
			e2b_auto_pause_watch();
		mint_tokens(s, secure);
		rc = e2b_sbx_save(s);
	}
	if (rc)
		sandbox_destroy(sb, "its E2B record could not be saved", NULL, NULL, NULL);
	*out = s;
	return rc;
}

static void create_done(void *ctx, enum api_err err, const char *msg, struct sandbox **sbs, unsigned n)
{
	struct create_ctx *cc = ctx;
	struct http_req *r = cc->r;
	cc->job = NULL;
	if (!sbs || n != 1) {
		e2b_reply_err(r, api_err_status(err), "%s", msg ? msg : "the sandbox did not start");
		create_free(cc);
		return;
	}
	const cJSON *b = cc->body;
	struct e2b_sbx rec = {
		.env_vars = (cJSON *)cJSON_GetObjectItemCaseSensitive(b, "envVars"),
		.auto_pause = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(b, "autoPause")),
		.auto_pause_files_only = cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(b, "autoPauseMemory")),
		.auto_resume = auto_resume_field(b) == 1,
		.resume_timeout_s = cc->timeout_s,
		.public_traffic = !cJSON_IsFalse(public_traffic_field(b)),
	};
	const char *mask = cJSON_GetStringValue(mask_host_field(b));
	if (mask)
		snprintf(rec.mask_host, sizeof(rec.mask_host), "%s", mask);
	struct e2b_sbx *s;
	int rc = record_new(sbs[0], &rec, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(b, "secure")), &s);
	if (rc)
		e2b_reply_err(r, 500, "cannot save the sandbox's E2B record: %s", strerror(-rc));
	else
		handler_reply_cjson(r, 201, sandbox_obj(r, sbs[0], s, true));
	create_free(cc);
}

/* Internet by default is E2B's default, not a demand: where it cannot be had (serve
 * without --egress; t, when known, a kvm template built before it) the sandbox reports
 * it was not given. An allowlist is a demand: the reason it is refused, or NULL. */
static const char *net_fit(const struct template_rec *t, struct net_policy *net)
{
	if (t ? sandboxes_network_for(t) : sandboxes_network())
		return NULL;
	if (net->nallow)
		return t && sandboxes_network() ? "network.allowOut cannot be honoured: the template was built without "
						 "a network device (before serve ran with --egress): make it anew"
					       : "network.allowOut cannot be honoured: sandboxes on this node have no "
						 "network but loopback (serve runs without --egress)";
	memset(net, 0, sizeof(*net));
	return NULL;
}

static void create_fork(struct create_ctx *cc)
{
	const struct template_rec *t = templates_find(cc->tpl);
	const char *bad = t ? net_fit(t, &cc->net) : NULL;
	if (bad) {
		e2b_reply_err(cc->r, 400, "%s", bad);
		create_free(cc);
		return;
	}
	struct fork_req fr = { .template_name = cc->tpl, .n = 1, .timeout_s = cc->timeout_s, .net = &cc->net };
	const cJSON *md = cJSON_GetObjectItemCaseSensitive(cc->body, "metadata");
	fr.metadata = cJSON_IsObject(md) ? md : NULL;
	struct mitos_err e = { 0 };
	if (sandboxes_fork(&fr, create_done, cc, &cc->job, &e)) {
		e2b_reply_err(cc->r, api_err_status(e.kind), "%s", e.msg);
		create_free(cc);
	}
}

static void create_tpl_done(void *ctx, enum api_err err, const char *msg, struct template_rec *t)
{
	struct create_ctx *cc = ctx;
	cc->tw = NULL;
	if (!t) {
		e2b_reply_err(cc->r, api_err_status(err), "template %s: %s", cc->tpl, msg ? msg : "build failed");
		create_free(cc);
		return;
	}
	create_fork(cc);
}

void e2b_sandboxes_create(struct http_req *r)
{
	cJSON *b = e2b_json_body(r);
	if (!b)
		return;
	const cJSON *tid = cJSON_GetObjectItemCaseSensitive(b, "templateID");
	char tpl[ID_MAX + 1];
	uint32_t timeout_s = E2B_DEFAULT_TIMEOUT_S;
	bool present;
	const char *bad = NULL;
	struct net_policy net;
	if ((tid && !cJSON_IsString(tid)) || !e2b_template_name(tid ? tid->valuestring : "base", tpl, sizeof(tpl)))
		bad = "templateID must name a template or snapshot (^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$, with no tag or "
		      "the tag default)";
	else if (timeout_field(b, &timeout_s, &present))
		bad = "timeout must be a number of seconds from 0 to 2592000";
	else if (!e2b_string_map(cJSON_GetObjectItemCaseSensitive(b, "metadata")) ||
		 !e2b_string_map(cJSON_GetObjectItemCaseSensitive(b, "envVars")))
		bad = "metadata and envVars must map strings to strings, at most 256 entries and 64 KiB each";
	else if (!optional_bool_ok(public_traffic_field(b)))
		bad = "network.allowPublicTraffic must be a boolean";
	else if (!mask_host_field_ok(mask_host_field(b)))
		bad = "network.maskRequestHost must be a host name, with a :port or ${PORT} in it if wanted (at most "
		      "253 characters of letters, digits, '.', '-', '_' and ':')";
	else if (auto_resume_field(b) < 0)
		bad = "autoResume must be {\"enabled\": true or false}";
	else if (auto_resume_field(b) == 1 && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(b, "autoPause")))
		bad = "autoResume needs autoPause (lifecycle onTimeout \"pause\"): only a paused sandbox resumes";
	else if (!optional_bool_ok(cJSON_GetObjectItemCaseSensitive(b, "autoPauseMemory")))
		bad = "autoPauseMemory must be a boolean";
	else if (auto_resume_field(b) == 1 && cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(b, "autoPauseMemory")))
		bad = "autoResume cannot be combined with autoPauseMemory false: a filesystem-only pause is resumed "
		      "by connect only";
	else if (!(bad = net_policy_from_e2b(cJSON_GetObjectItemCaseSensitive(b, "allow_internet_access"),
					     cJSON_GetObjectItemCaseSensitive(b, "network"), &net)))
		bad = net_fit(NULL, &net); /* now, not after minutes of a template's build */
	if (bad) {
		cJSON_Delete(b);
		e2b_reply_err(r, 400, "%s", bad);
		return;
	}
	struct create_ctx *cc = calloc(1, sizeof(*cc));
	if (!cc) {
		cJSON_Delete(b);
		e2b_reply_err(r, 500, "out of memory");
		return;
	}
	cc->r = r;
	cc->body = b;
	cc->timeout_s = timeout_s;
	cc->net = net;
	snprintf(cc->tpl, sizeof(cc->tpl), "%s", tpl);
	r->ctx = cc;
	r->ops = &create_ops;
	struct template_rec *t = snapshots_find(tpl);
	if (t)
		snprintf(cc->tpl, sizeof(cc->tpl), "%s", t->name);
	if (t && !t->building) {
		create_fork(cc);
		return;
	}
	bool created;
	struct mitos_err e = { 0 };
	int rc = templates_create(tpl, template_image(tpl), NULL, &t, &created, create_tpl_done, cc, &cc->tw, &e);
	if (rc == 1)
		return; /* the engine builds it (kvm); create_tpl_done goes on */
	if (rc) {
		e2b_reply_err(r, e.kind == AE_INVALID_ARGUMENT ? 404 : api_err_status(e.kind), "template %s not found: %s",
			      tpl, e.msg);
		create_free(cc);
		return;
	}
	create_fork(cc);
}

/* ---- connect, get, kill, timeout, pause ---- */

/* A pause or resume of the E2B surface, on its way: the request waits for it. */
struct ctl_call {
	struct http_req *r;    /* NULL once the client left */
	uint32_t secs;
	bool present;          /* connect: a timeout was given */
};

static void ctl_abort(struct http_req *r)
{
	struct ctl_call *cc = r->ctx;
	cc->r = NULL;
	r->ctx = NULL;
}

static const struct http_req_ops ctl_ops = { .abort = ctl_abort };

/* The request of a finished pause or resume, or NULL when its client left (cc is
 * freed either way). */
static struct http_req *ctl_call_end(struct ctl_call *cc)
{
	struct http_req *r = cc->r;
	if (r) {
		r->ctx = NULL;
		r->ops = NULL;
	}
	free(cc);
	return r;
}

static struct ctl_call *ctl_call_new(struct http_req *r)
{
	struct ctl_call *cc = calloc(1, sizeof(*cc));
	if (!cc) {
		e2b_reply_err(r, 500, "out of memory");
		return NULL;
	}
	cc->r = r;
	r->ctx = cc;
	r->ops = &ctl_ops;
	return cc;
}

static void connect_finish(struct http_req *r, struct sandbox *sb, bool resumed, bool present, uint32_t secs)
{
	/* A resumed sandbox starts a new time to live (E2B's default when none is given);
	 * a running one's is only ever extended. */
	if (resumed)
		sandbox_set_timeout(sb, present ? secs : E2B_DEFAULT_TIMEOUT_S);
	else if (present && ur_wall_ms() + (uint64_t)secs * 1000u > sb->deadline_ms)
		sandbox_set_timeout(sb, secs);
	struct e2b_sbx *s = e2b_sbx_get(sb->id, true);
	if (!s) {
		e2b_reply_err(r, 500, "out of memory");
		return;
	}
	bool minted = !s->envd_token[0];
	mint_tokens(s, false);
	int rc = minted && s->envd_token[0] ? e2b_sbx_save(s) : 0;
	if (rc) {
		s->envd_token[0] = s->traffic_token[0] = 0;
		e2b_reply_err(r, 500, "cannot save the sandbox's E2B record: %s", strerror(-rc));
		return;
	}
	handler_reply_cjson(r, resumed ? 201 : 200, sandbox_obj(r, sb, s, true));
}

static void connect_resumed(void *ctx, int rc)
{
	struct ctl_call *cc = ctx;
	bool present = cc->present;
	uint32_t secs = cc->secs;
	struct http_req *r = ctl_call_end(cc);
	if (!r)
		return;
	struct sandbox *sb = sandbox_find(r->sandbox_id);
	if (!sb && rc != -EBUSY)
		rc = -ESRCH; /* deleted, or expired, while it booted */
	if (rc == -ECHILD) {
		e2b_reply_err(r, 500, "cannot resume sandbox %s: it did not boot again from its files (%s); it stays "
			      "paused, with its files", r->sandbox_id, sb->fail_reason);
		return;
	}
	if (rc) {
		e2b_reply_err(r, rc == -ESRCH ? 404 : rc == -EBUSY ? 409 : 500, "cannot resume sandbox %s: %s",
			      r->sandbox_id, rc == -EBUSY ? "it is being paused, resumed or stopped"
			      : rc == -ESRCH ? "it ended meanwhile" : strerror(-rc));
		return;
	}
	connect_finish(r, sb, true, present, secs);
}

static void connect_or_resume(struct http_req *r, bool legacy_resume)
{
	cJSON *b;
	uint32_t secs = 0;
	bool present;
	struct sandbox *sb = sandbox_and_timeout(r, &b, &secs, &present);
	if (!sb)
		return;
	cJSON_Delete(b);
	if (legacy_resume && sb->state != SB_PAUSED) {
		e2b_reply_err(r, 409, "sandbox %s is already running", sb->id);
		return;
	}
	/* A sandbox on its way to or back from a filesystem-only pause runs once both are
	 * done. */
	if (sb->state != SB_PAUSED && !sandbox_booting_again(sb) && !sandbox_stopping_files_only(sb)) {
		connect_finish(r, sb, false, present, secs);
		return;
	}
	struct ctl_call *cc = ctl_call_new(r);
	if (!cc)
		return;
	cc->secs = secs;
	cc->present = present;
	sandbox_set_paused(sb, false, connect_resumed, cc);
}

void e2b_sandbox_connect(struct http_req *r) { connect_or_resume(r, false); }
void e2b_sandbox_resume(struct http_req *r) { connect_or_resume(r, true); }

void e2b_sandbox_get(struct http_req *r)
{
	struct sandbox *sb = e2b_find_or_404(r);
	if (sb)
		handler_reply_cjson(r, 200, sandbox_obj(r, sb, e2b_sbx_get(sb->id, false), false));
}

struct kill_ctx {
	struct http_req *r;
	struct sb_waiter *w;
};

static void kill_abort(struct http_req *r)
{
	struct kill_ctx *kc = r->ctx;
	sb_waiter_detach(kc->w);
	free(kc);
	r->ctx = NULL;
}

static const struct http_req_ops kill_ops = { .abort = kill_abort };

static void kill_done(void *ctx)
{
	struct kill_ctx *kc = ctx;
	if (kc->r) {
		kc->r->ctx = NULL;
		kc->r->ops = NULL;
		http_reply(kc->r, 204, NULL, NULL, 0, NULL);
	}
	free(kc);
}

void e2b_sandbox_kill(struct http_req *r)
{
	struct sandbox *sb = e2b_find_or_404(r);
	if (!sb)
		return;
	struct kill_ctx *kc = calloc(1, sizeof(*kc));
	if (!kc) {
		e2b_reply_err(r, 500, "out of memory");
		return;
	}
	kc->r = r;
	r->ctx = kc;
	r->ops = &kill_ops;
	sandbox_destroy(sb, "killed through the E2B API", kill_done, kc, &kc->w);
}

void e2b_sandbox_timeout(struct http_req *r)
{
	cJSON *b;
	uint32_t secs = 0;
	bool present;
	struct sandbox *sb = sandbox_and_timeout(r, &b, &secs, &present);
	if (!sb)
		return;
	if (!present) {
		/* POST /sandboxes/{id}/refreshes names it "duration". */
		const cJSON *d = cJSON_GetObjectItemCaseSensitive(b, "duration");
		present = cJSON_IsNumber(d) && d->valuedouble >= 0 && d->valuedouble <= MAX_TIMEOUT_S;
		secs = present ? (uint32_t)fmax(1, ceil(d->valuedouble)) : 0;
	}
	cJSON_Delete(b);
	if (!present) {
		e2b_reply_err(r, 400, "timeout must be a number of seconds from 0 to 2592000");
		return;
	}
	sandbox_set_timeout(sb, secs);
	http_reply(r, 204, NULL, NULL, 0, NULL);
}

static void paused(void *ctx, int rc)
{
	struct http_req *r = ctl_call_end(ctx);
	if (!r)
		return;
	if (rc == -EBUSY)
		e2b_reply_err(r, 409, "sandbox %s is starting, stopping or being resumed; pause it once it runs",
			      r->sandbox_id);
	else if (rc == -ESRCH)
		e2b_reply_err(r, 404, "sandbox %s ended while it was being paused", r->sandbox_id);
	else if (rc)
		e2b_reply_err(r, 500, "cannot pause sandbox %s: %s", r->sandbox_id, strerror(-rc));
	else
		http_reply(r, 204, NULL, NULL, 0, NULL);
}

/* {"memory": false}: a filesystem-only pause; its resume boots the sandbox afresh. */
void e2b_sandbox_pause(struct http_req *r)
{
	struct sandbox *sb = e2b_find_or_404(r);
	cJSON *b = sb ? e2b_json_body(r) : NULL;
	if (!b)
		return;
	const cJSON *mem = cJSON_GetObjectItemCaseSensitive(b, "memory");
	bool files_only = cJSON_IsFalse(mem), ok = optional_bool_ok(mem);
	cJSON_Delete(b);
	if (!ok) {
		e2b_reply_err(r, 400, "memory must be a boolean");
		return;
	}
	if (sandbox_user_paused(sb)) {
		e2b_reply_err(r, 409, "sandbox %s is already paused", sb->id);
		return;
	}
	struct ctl_call *cc = ctl_call_new(r);
	if (cc && files_only)
		sandbox_pause_files_only(sb, paused, cc);
	else if (cc)
		sandbox_set_paused(sb, true, paused, cc);
}

/* PUT /sandboxes/{id}/network: the egress rules replaced whole (a field left out is
 * cleared, so {} is E2B's default: the internet), in force once it answers 204. */
static void network_set(void *ctx, int rc, const char *msg)
{
	struct http_req *r = ctl_call_end(ctx);
	if (!r)
		return;
	if (rc == -ENOENT)
		e2b_reply_err(r, 409, "sandbox %s has no network interface (%s): create a sandbox that may reach the "
			      "network instead", r->sandbox_id, msg ? msg : "it cannot be given one");
	else if (rc == -EBUSY)
		e2b_reply_err(r, 409, "sandbox %s is starting or stopping, or its network is being changed; retry",
			      r->sandbox_id);
	else if (rc == -ESRCH)
		e2b_reply_err(r, 404, "sandbox %s ended while its network was being changed", r->sandbox_id);
	else if (rc)
		e2b_reply_err(r, 500, "cannot change the network of sandbox %s: %s", r->sandbox_id,
			      msg ? msg : strerror(-rc));
	else
		http_reply(r, 204, NULL, NULL, 0, NULL);
}

void e2b_sandbox_network(struct http_req *r)
{
	struct sandbox *sb = e2b_find_or_404(r);
	if (!sb)
		return;
	cJSON *b = e2b_json_body(r);
	if (!b)
		return;
	struct net_policy net;
	const char *bad = cJSON_IsObject(b) ? net_policy_from_e2b(cJSON_GetObjectItemCaseSensitive(b,
				"allow_internet_access"), b, &net) : "the body must be a JSON object";
	cJSON_Delete(b);
	if (bad) {
		e2b_reply_err(r, 400, "%s", bad);
		return;
	}
	if (!sb->net && !net_policy_any(&net)) {
		http_reply(r, 204, NULL, NULL, 0, NULL); /* nothing, as it has */
		return;
	}
	struct ctl_call *cc = ctl_call_new(r);
	if (cc)
		sandbox_set_network(sb, &net, network_set, cc);
}

/* ---- fork ---- */

/* POST /sandboxes/{id}/fork: count live forks of a running sandbox, each a new E2B
 * sandbox with the source's envs, network and security. The node starts all or
 * none, so a fork that does not start fails the request; the 201's per-fork error
 * is only for a child whose E2B record could not be saved (and which is removed). */
#define FORK_MAX 100u
#define FORK_DEFAULT_TIMEOUT_S 15u

struct fork_call {
	struct http_req *r;
	struct sb_job *job;
	char src[ID_MAX + 1];
};

static void fork_call_abort(struct http_req *r)
{
	struct fork_call *fc = r->ctx;
	sb_job_detach(fc->job); /* the children start and stay: the client may list them */
	free(fc);
	r->ctx = NULL;
}

static const struct http_req_ops fork_call_ops = { .abort = fork_call_abort };

static void forked(void *ctx, enum api_err err, const char *msg, struct sandbox **sbs, unsigned n)
{
	struct fork_call *fc = ctx;
	struct http_req *r = fc->r;
	r->ctx = NULL;
	r->ops = NULL;
	const struct e2b_sbx *src = e2b_sbx_get(fc->src, false);
	struct e2b_sbx like = { 0 };
	if (src) {
		like = (struct e2b_sbx){ .env_vars = src->env_vars, .public_traffic = src->public_traffic };
		memcpy(like.mask_host, src->mask_host, sizeof(like.mask_host));
	}
	cJSON *out = sbs ? cJSON_CreateArray() : NULL;
	for (unsigned i = 0; out && i < n; i++) {
		struct e2b_sbx *s;
		cJSON *one = cJSON_CreateObject();
		int rc = record_new(sbs[i], &like, src && src->envd_token[0], &s);
		if (rc) {
			cJSON *e = cJSON_AddObjectToObject(one, "error");
			cJSON_AddNumberToObject(e, "code", 500);
			cJSON_AddStringToObject(e, "message", "the fork's E2B record could not be saved");
		} else {
			cJSON_AddItemToObject(one, "sandbox", sandbox_obj(r, sbs[i], s, true));
		}
		cJSON_AddItemToArray(out, one);
	}
	if (out)
		handler_reply_cjson(r, 201, out);
	else
		e2b_reply_err(r, sbs ? 500 : api_err_status(err), "cannot fork sandbox %s: %s", fc->src,
			      sbs ? "out of memory" : msg ? msg : "the fork did not start");
	free(fc);
}

void e2b_sandbox_fork(struct http_req *r)
{
	cJSON *b;
	uint32_t timeout_s = FORK_DEFAULT_TIMEOUT_S;
	bool present;
	struct sandbox *sb = sandbox_and_timeout(r, &b, &timeout_s, &present);
	if (!sb)
		return;
	const cJSON *count = cJSON_GetObjectItemCaseSensitive(b, "count");
	double n = count && !cJSON_IsNull(count) ? (cJSON_IsNumber(count) ? count->valuedouble : -1) : 1;
	cJSON_Delete(b);
	if (n < 1 || n > FORK_MAX || n != floor(n)) {
		e2b_reply_err(r, 400, "count must be a whole number from 1 to 100");
		return;
	}
	struct fork_call *fc = calloc(1, sizeof(*fc));
	if (!fc) {
		e2b_reply_err(r, 500, "out of memory");
		return;
	}
	fc->r = r;
	snprintf(fc->src, sizeof(fc->src), "%s", sb->id);
	struct fork_req fr = { .sandbox_id = sb->id, .n = (unsigned)n, .timeout_s = timeout_s, .metadata = sb->metadata };
	struct mitos_err e = { 0 };
	r->ctx = fc;
	r->ops = &fork_call_ops;
	if (sandboxes_fork(&fr, forked, fc, &fc->job, &e)) {
		r->ctx = NULL;
		r->ops = NULL;
		free(fc);
		e2b_reply_err(r, api_err_status(e.kind), "cannot fork sandbox %s: %s", sb->id, e.msg);
	}
}

/* ---- list ---- */

/* The metadata filter arrives form-encoded and escaped once more (reference 2.2):
 * "k=v&k2=v2" with each k and v percent-encoded. */
static bool metadata_matches(const struct sandbox *sb, const char *filter)
{
	if (!filter || !*filter)
		return true;
	char *copy = strdup(filter);
	if (!copy)
		return false;
	bool ok = true;
	char *save = NULL;
	for (char *kv = strtok_r(copy, "&", &save); kv && ok; kv = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(kv, '=');
		char *v = eq ? eq + 1 : (char *)"";
		if (eq)
			*eq = 0;
		for (char *q = kv; *q; q++)
			if (*q == '+')
				*q = ' ';
		for (char *q = v; *q; q++)
			if (*q == '+')
				*q = ' ';
		if (http_pct_decode(kv) || http_pct_decode(v) || http_pct_decode(kv) || http_pct_decode(v)) {
			ok = false;
			break;
		}
		const char *have = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(sb->metadata, kv));
		ok = have && !strcmp(have, v);
	}
	free(copy);
	return ok;
}

static bool state_matches(const struct sandbox *sb, const char *states)
{
	if (sb->state == SB_STOPPING)
		return false;
	if (!states || !*states)
		return true;
	const char *want = e2b_state(sb);
	size_t n = strlen(want);
	for (const char *p = states; *p;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		if (len == n && !strncmp(p, want, n))
			return true;
		p += len + (comma ? 1 : 0);
	}
	return false;
}

static int by_start(const void *a, const void *b)
{
	const struct sandbox *x = *(struct sandbox *const *)a, *y = *(struct sandbox *const *)b;
	if (x->created_ms != y->created_ms)
		return x->created_ms < y->created_ms ? -1 : 1;
	return strcmp(x->id, y->id);
}

void e2b_sandboxes_list(struct http_req *r)
{
	char *states = http_query_get(r->query, "state");
	char *md = http_query_get(r->query, "metadata");
	char *tpl = http_query_get(r->query, "template");
	char *lim = http_query_get(r->query, "limit");
	char *next = http_query_get(r->query, "nextToken");
	char *order = http_query_get(r->query, "order");
	char *after = http_query_get(r->query, "startedAfter");
	long limit = lim ? strtol(lim, NULL, 10) : LIST_DEFAULT_LIMIT;
	uint64_t after_ms = 0;
	unsigned n = sandboxes_count(), k = 0;
	struct sandbox **all = calloc(n ? n : 1, sizeof(*all));
	const char *bad = limit < 1 || limit > LIST_MAX_LIMIT ? "limit must be from 1 to 1000"
		: order && strcmp(order, "asc") && strcmp(order, "desc") ? "order must be asc or desc"
		: after && registry_parse_rfc3339(after, &after_ms) ? "startedAfter must be an RFC 3339 date-time"
		: NULL;
	if (!all || bad) {
		e2b_reply_err(r, all ? 400 : 500, "%s", all ? bad : "out of memory");
		goto out;
	}
	for (struct sandbox *sb = sandboxes_first(); sb && k < n; sb = sb->next)
		if (state_matches(sb, states) && metadata_matches(sb, md) && (!tpl || !strcmp(tpl, sb->template_name)) &&
		    sb->created_ms >= after_ms)
			all[k++] = sb;
	qsort(all, k, sizeof(*all), by_start);
	bool desc = !order || !strcmp(order, "desc"); /* E2B's default: newest first */
	/* The token is the position key "<start ms>-<id>" of the next item: stable while
	 * sandboxes come and go between pages. */
	unsigned first = 0;
	if (next && *next) {
		unsigned long long ms = strtoull(next, NULL, 10);
		const char *dash = strchr(next, '-');
		const char *id = dash ? dash + 1 : "";
		while (first < k) {
			const struct sandbox *sb = all[desc ? k - 1 - first : first];
			int c = sb->created_ms != ms ? (sb->created_ms < ms ? -1 : 1) : strcmp(sb->id, id);
			if (desc ? c <= 0 : c >= 0)
				break;
			first++;
		}
	}
	/* Across a cluster every node answers one item more than the page, so the
	 * merge knows the item the next page starts with (cluster_list.h). */
	bool cluster = cluster_list_wanted(r);
	unsigned take = (unsigned)limit + (cluster ? 1 : 0);
	cJSON *a = cJSON_CreateArray();
	unsigned i = first;
	for (; i < k && i < first + take; i++)
		cJSON_AddItemToArray(a, sandbox_obj(r, all[desc ? k - 1 - i : i], e2b_sbx_get(all[desc ? k - 1 - i : i]->id, false), false));
	if (cluster) {
		e2b_cluster_page(r, a, "/v2/sandboxes", (unsigned)limit, desc);
		goto out;
	}
	const struct sandbox *nx = i < k ? all[desc ? k - 1 - i : i] : NULL;
	e2b_reply_page(r, a, nx ? nx->created_ms : 0, nx ? nx->id : NULL);
out:
	free(all);
	free(states);
	free(md);
	free(tpl);
	free(lim);
	free(next);
	free(order);
	free(after);
}

/* ---- templates ---- */

void e2b_templates_list(struct http_req *r)
{
	cJSON *a = cJSON_CreateArray();
	char ts[40];
	for (struct template_rec *t = templates_first(); t; t = t->next) {
		unsigned cpus, mem;
		e2b_template_shape(t->name, &cpus, &mem);
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "templateID", t->name);
		cJSON_AddStringToObject(o, "buildID", t->image);
		cJSON_AddNumberToObject(o, "cpuCount", cpus);
		cJSON_AddNumberToObject(o, "memoryMB", mem);
		cJSON_AddNumberToObject(o, "diskSizeMB", 0);
		cJSON_AddBoolToObject(o, "public", false);
		cJSON *al = cJSON_AddArrayToObject(o, "aliases");
		cJSON_AddItemToArray(al, cJSON_CreateString(t->name));
		registry_rfc3339(t->created_ms, ts, sizeof(ts));
		cJSON_AddStringToObject(o, "createdAt", ts);
		cJSON_AddStringToObject(o, "updatedAt", ts);
		cJSON_AddStringToObject(o, "envdVersion", E2B_ENVD_VERSION);
		cJSON_AddStringToObject(o, "buildStatus", t->building ? "building" : "ready");
		cJSON_AddItemToArray(a, o);
	}
	handler_reply_cjson(r, 200, a);
}
