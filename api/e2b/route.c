/* Which E2B service a request is for (protocol reference 1.4): no E2b-Sandbox-Port
 * header is the control plane, port 49983 is envd, 49999 the code interpreter.
 * Every handler runs behind the check its service needs: the API key (serve's
 * token) on the control plane, the sandbox's access tokens on envd and the
 * interpreter. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "api/e2b/e2b.h"
#include "api/e2b/internal.h"
#include "api/proxy/preview.h"
#include "api/http/errors.h"
#include "api/http/http.h"
#include "api/http/router.h"
#include "api/http/server.h"

enum guard { G_CONTROL, G_ENVD, G_FILES, G_INTERP, G_EXECUTE, G_NONE };

bool e2b_api_key_ok(const struct http_req *r)
{
	if (!srv_cfg.token)
		return true;
	const char *key = http_req_header(r, "x-api-key");
	if (key)
		return e2b_token_ok(key, srv_cfg.token);
	return router_authorized(r);
}

/* A sandbox with issued tokens wants them; one without takes serve's API key. */
static bool token_authorized(const struct http_req *r, const char *header, bool traffic)
{
	struct e2b_sbx *s = e2b_sbx_get(r->sandbox_id, false);
	const char *want = s ? (traffic ? s->traffic_token : s->envd_token) : "";
	if (want[0])
		return e2b_token_ok(http_req_header(r, header), want);
	return e2b_api_key_ok(r);
}

static bool guard_ok(struct http_req *r, enum guard g)
{
	bool ok = true;
	switch (g) {
	case G_CONTROL: ok = e2b_api_key_ok(r); break;
	case G_ENVD: ok = token_authorized(r, "x-access-token", false); break;
	case G_FILES: ok = true; break; /* files.c: a token or a URL signature */
	case G_INTERP: ok = token_authorized(r, "e2b-traffic-access-token", true); break;
	case G_EXECUTE:
		ok = token_authorized(r, "e2b-traffic-access-token", true) &&
		     token_authorized(r, "x-access-token", false);
		break;
	case G_NONE: break;
	}
	if (ok)
		return true;
	if (g == G_ENVD && r->connect_errors)
		e2b_reply_connect_err(r, "unauthenticated", "the X-Access-Token header does not match this sandbox's token");
	else if (g == G_CONTROL)
		e2b_reply_err(r, 401, "the X-API-KEY header does not match this server's token");
	else
		e2b_reply_err(r, 401, "the access token does not match this sandbox's token");
	return false;
}

/* Traffic to a sandbox's envd or interpreter (not its health, which the SDKs ask of a
 * sandbox they think is gone) wakes one that auto-resumes; files.c wakes its own. */
#define WAKES(g) ((g) == G_ENVD || (g) == G_INTERP || (g) == G_EXECUTE)
#define GUARDED(fn, g) \
	static void g_##fn(struct http_req *r) { if (guard_ok(r, g) && !(WAKES(g) && e2b_wake(r, r->sandbox_id, fn))) fn(r); } \
	static const struct route r_##fn = { "e2b." #fn, g_##fn, false, false, false };

GUARDED(e2b_sandboxes_create, G_CONTROL)
GUARDED(e2b_sandboxes_list, G_CONTROL)
GUARDED(e2b_sandbox_get, G_CONTROL)
GUARDED(e2b_sandbox_kill, G_CONTROL)
GUARDED(e2b_sandbox_connect, G_CONTROL)
GUARDED(e2b_sandbox_timeout, G_CONTROL)
GUARDED(e2b_sandbox_pause, G_CONTROL)
GUARDED(e2b_sandbox_resume, G_CONTROL)
GUARDED(e2b_sandbox_fork, G_CONTROL)
GUARDED(e2b_sandbox_network, G_CONTROL)
GUARDED(e2b_sandbox_metrics, G_CONTROL)
GUARDED(e2b_templates_list, G_CONTROL)
GUARDED(e2b_snapshot_create, G_CONTROL)
GUARDED(e2b_snapshots_list, G_CONTROL)
GUARDED(e2b_template_delete, G_CONTROL)
GUARDED(e2b_envd_rpc, G_ENVD)
GUARDED(e2b_envd_health, G_NONE)
GUARDED(e2b_files_get, G_FILES)
GUARDED(e2b_interp_execute, G_EXECUTE)
GUARDED(e2b_interp_contexts, G_INTERP)

static void unknown_endpoint(struct http_req *r)
{
	if (r->connect_errors)
		e2b_reply_connect_err(r, "unimplemented", "no such method");
	else
		e2b_reply_err(r, 404, "no such endpoint: %s", r->path);
}
static const struct route r_unknown = { "e2b.unknown", unknown_endpoint, false, false, false };

/* Streamed (large) bodies: the handler runs at headers-complete and checks itself. */
static const struct route r_files_post = { "e2b.files_post", e2b_files_post, true, true, false };

const char *e2b_req_sandbox(const struct http_req *r)
{
	return r->sandbox_id;
}

/* "/v2/sandboxes/{id}/connect" and friends: copies {id} and returns the rest. */
static const char *path_id(struct http_req *r, const char *rest)
{
	const char *slash = strchr(rest, '/');
	size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
	if (n == 0 || n > ID_MAX) {
		r->sandbox_id[0] = 0;
	} else {
		memcpy(r->sandbox_id, rest, n);
		r->sandbox_id[n] = 0;
		if (!api_valid_id(r->sandbox_id))
			r->sandbox_id[0] = 0;
	}
	return slash ? slash : "";
}

static const struct route *control_route(struct http_req *r, bool *claimed)
{
	const char *p = r->path;
	unsigned m = r->method;
	*claimed = true;
	if (!strcmp(p, "/v2/sandboxes") || !strcmp(p, "/sandboxes"))
		return m == HTTP_POST ? &r_e2b_sandboxes_create : m == HTTP_GET ? &r_e2b_sandboxes_list : &r_unknown;
	if (!strcmp(p, "/templates") || !strcmp(p, "/v2/templates"))
		return m == HTTP_GET ? &r_e2b_templates_list : &r_unknown;
	if (!strcmp(p, "/snapshots"))
		return m == HTTP_GET ? &r_e2b_snapshots_list : &r_unknown;
	int end = 0;
	_Static_assert(sizeof(r->param) == 128, "the width below");
	if (m == HTTP_DELETE && !strncmp(p, "/templates/", 11)) {
		/* What is not one template id is no snapshot's. */
		if (sscanf(p, "/templates/%127[^/]%n", r->param, &end) != 1 || p[end])
			r->param[0] = 0;
		return &r_e2b_template_delete;
	}
	const char *rest = NULL;
	if (!strncmp(p, "/v2/sandboxes/", 14))
		rest = p + 14;
	else if (!strncmp(p, "/sandboxes/", 11))
		rest = p + 11;
	if (!rest) {
		*claimed = false;
		return NULL;
	}
	const char *tail = path_id(r, rest);
	if (!r->sandbox_id[0])
		return &r_unknown;
	if (!*tail)
		return m == HTTP_GET ? &r_e2b_sandbox_get : m == HTTP_DELETE ? &r_e2b_sandbox_kill : &r_unknown;
	if (m == HTTP_POST && !strcmp(tail, "/connect"))
		return &r_e2b_sandbox_connect;
	if (m == HTTP_POST && !strcmp(tail, "/timeout"))
		return &r_e2b_sandbox_timeout;
	if (m == HTTP_POST && !strcmp(tail, "/pause"))
		return &r_e2b_sandbox_pause;
	if (m == HTTP_POST && !strcmp(tail, "/resume"))
		return &r_e2b_sandbox_resume;
	if (m == HTTP_POST && !strcmp(tail, "/fork"))
		return &r_e2b_sandbox_fork;
	if (m == HTTP_POST && !strcmp(tail, "/snapshots"))
		return &r_e2b_snapshot_create;
	if (m == HTTP_POST && !strcmp(tail, "/refreshes"))
		return &r_e2b_sandbox_timeout;
	if (m == HTTP_GET && !strcmp(tail, "/metrics"))
		return &r_e2b_sandbox_metrics;
	if (m == HTTP_PUT && !strcmp(tail, "/network"))
		return &r_e2b_sandbox_network;
	return &r_unknown;
}

static const struct route *envd_route(struct http_req *r)
{
	const char *p = r->path;
	unsigned m = r->method;
	if (!strcmp(p, "/health"))
		return &r_e2b_envd_health;
	if (!strcmp(p, "/files"))
		return m == HTTP_GET ? &r_e2b_files_get : m == HTTP_POST ? &r_files_post : &r_unknown;
	r->connect_errors = true;
	if (m == HTTP_POST && strlen(p + 1) < sizeof(r->param) && e2b_envd_method_known(p + 1)) {
		snprintf(r->param, sizeof(r->param), "%s", p + 1);
		return &r_e2b_envd_rpc;
	}
	return &r_unknown;
}

static const struct route *interp_route(struct http_req *r)
{
	const char *p = r->path;
	if (!strcmp(p, "/execute"))
		return r->method == HTTP_POST ? &r_e2b_interp_execute : &r_unknown;
	if (!strcmp(p, "/contexts") || !strncmp(p, "/contexts/", 10)) {
		snprintf(r->param, sizeof(r->param), "%.127s", p[9] == '/' ? p + 10 : "");
		return &r_e2b_interp_contexts;
	}
	if (!strcmp(p, "/health"))
		return &r_e2b_envd_health;
	return &r_unknown;
}

#define PORT_VAR "${PORT}"

bool e2b_mask_host_ok(const char *mask)
{
	size_t n = strlen(mask);
	if (!n || n > E2B_MASK_HOST_MAX)
		return false;
	for (const char *p = mask; *p;) {
		if (!strncmp(p, PORT_VAR, strlen(PORT_VAR)))
			p += strlen(PORT_VAR);
		else if (isalnum((unsigned char)*p) || strchr(".-_:", *p))
			p++;
		else
			return false;
	}
	return true;
}

/* s's mask with port in it, into out (outlen > 0). */
static void mask_expand(const struct e2b_sbx *s, unsigned port, char *out, size_t outlen)
{
	size_t o = 0;
	for (const char *p = s->mask_host; *p && o + 1 < outlen;) {
		if (!strncmp(p, PORT_VAR, strlen(PORT_VAR))) {
			int k = snprintf(out + o, outlen - o, "%u", port);
			if (k < 0 || (size_t)k >= outlen - o)
				break;
			o += (size_t)k;
			p += strlen(PORT_VAR);
		} else {
			out[o++] = *p++;
		}
	}
	out[o] = 0;
}

enum e2b_host_verdict e2b_host_admit(const struct http_req *r, const char *sid, unsigned port, char *host,
				     size_t hostlen)
{
	struct e2b_sbx *s = e2b_sbx_get(sid, false);
	if (!s)
		return E2B_HOST_NOT_FOUND; /* not made through E2B: its ports take a preview URL */
	const char *token = http_req_header(r, "e2b-traffic-access-token");
	bool ok = s->public_traffic ||
		  (s->traffic_token[0] ? e2b_token_ok(token, s->traffic_token) : e2b_api_key_ok(r));
	if (!ok)
		return E2B_HOST_FORBIDDEN;
	mask_expand(s, port, host, hostlen);
	return E2B_HOST_ADMITTED;
}

bool e2b_route_headers(struct http_req *r)
{
	const char *port = http_req_header(r, "e2b-sandbox-port");
	const struct route *rt;
	char hid[ID_MAX + 1];
	unsigned hport;
	bool e2b_form;
	/* A preview host is a sandbox's whole site, unless it is E2B's envd or interpreter
	 * host (49983-<id>.<domain>, 49999-<id>...: the SDK's URLs without E2B_SANDBOX_URL). */
	if (!port && preview_host_matches(r)) {
		char pbuf[8] = "";
		if (!preview_host_target(r, hid, &hport, &e2b_form) && e2b_form)
			snprintf(pbuf, sizeof(pbuf), "%u", hport);
		if (strcmp(pbuf, E2B_ENVD_PORT) && strcmp(pbuf, E2B_INTERP_PORT))
			return false;
		port = !strcmp(pbuf, E2B_ENVD_PORT) ? E2B_ENVD_PORT : E2B_INTERP_PORT;
		snprintf(r->sandbox_id, sizeof(r->sandbox_id), "%s", hid);
	}
	if (port) {
		const char *sid = http_req_header(r, "e2b-sandbox-id");
		if (sid && api_valid_id(sid))
			snprintf(r->sandbox_id, sizeof(r->sandbox_id), "%s", sid);
		if (!strcmp(port, E2B_ENVD_PORT))
			rt = envd_route(r);
		else if (!strcmp(port, E2B_INTERP_PORT))
			rt = interp_route(r);
		else
			rt = &r_unknown;
	} else if (!strcmp(r->path, "/files")) {
		/* uploadUrl()/downloadUrl(): no sandbox header; files.c finds it by signature. */
		rt = r->method == HTTP_GET ? &r_e2b_files_get : r->method == HTTP_POST ? &r_files_post : &r_unknown;
	} else {
		bool claimed;
		rt = control_route(r, &claimed);
		if (!claimed)
			return false;
	}
	r->route = rt;
	r->body_limit = rt->big_body ? srv_cfg.max_file_body : srv_cfg.max_json_body;
	r->body_streamed = rt->stream_body;
	return true;
}
