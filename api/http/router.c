#include "api/http/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/e2b/e2b.h"
#include "api/http/errors.h"
#include "api/mitos/handlers.h"
#include "api/http/http.h"
#include "api/proxy/preview.h"
#include "api/proxy/pty.h"
#include "api/http/server.h"

static const struct route r_health = { "health", rest_health, false, false, false };
static const struct route r_templates_create = { "templates.create", rest_templates_create, false, false, false };
static const struct route r_templates_list = { "templates.list", rest_templates_list, false, false, false };
static const struct route r_fork = { "fork", rest_fork, false, false, false };
static const struct route r_sandboxes_list = { "sandboxes.list", rest_sandboxes_list, false, false, false };
static const struct route r_sandbox_get = { "sandboxes.get", rest_sandbox_get, false, false, false };
static const struct route r_sandbox_fork = { "sandboxes.fork", rest_sandbox_fork, false, false, false };
static const struct route r_sandbox_forward = { "sandboxes.forward", rest_sandbox_forward, false, false, false };
static const struct route r_sandbox_expose = { "sandboxes.expose", preview_expose, true, true, true };
static const struct route r_sandbox_delete = { "sandboxes.delete", rest_sandbox_delete, false, false, false };
static const struct route r_set_timeout = { "set_timeout", rest_set_timeout, false, false, false };
static const struct route r_pause = { "pause", rest_pause, false, false, false };
static const struct route r_resume = { "resume", rest_resume, false, false, false };
static const struct route r_rpc = { "rpc", rpc_dispatch, false, false, false };
static const struct route r_rpc_write = { "rpc.WriteFile", rpc_client_stream, true, true, false };
static const struct route r_rpc_upload = { "rpc.Upload", rpc_client_stream, true, true, false };
static const struct route r_rpc_bidi = { "rpc.bidi", rpc_bidi, true, true, false };
static const struct route r_preview_create = { "preview.create", rest_preview_create, false, false, false };
static const struct route r_preview_proxy = { "preview.proxy", preview_proxy, true, true, true };
static const struct route r_pty = { "pty", pty_handle, false, false, true };

#define RPC_PREFIX "/sandbox.v1.Sandbox/"

static bool ct_equal(const char *a, size_t an, const char *b, size_t bn)
{
	/* Runs over the whole secret whatever the input, so timing says nothing
	 * about how much of a guess was right. */
	unsigned char diff = (unsigned char)(an != bn);
	for (size_t i = 0; i < bn; i++)
		diff |= (unsigned char)((i < an ? (unsigned char)a[i] : 0) ^ (unsigned char)b[i]);
	return diff == 0;
}

bool router_authorized(const struct http_req *r)
{
	if (!srv_cfg.token)
		return true;
	const char *h = http_req_header(r, "authorization");
	if (!h || strncasecmp(h, "bearer ", 7))
		return false;
	h += 7;
	while (*h == ' ')
		h++;
	size_t n = strlen(h);
	while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
		n--;
	return ct_equal(h, n, srv_cfg.token, strlen(srv_cfg.token));
}

static void set_early(struct http_req *r, enum api_err e, const char *msg)
{
	if (r->early_err >= 0)
		return;
	r->early_err = (int)e;
	free(r->early_msg);
	r->early_msg = msg ? strdup(msg) : NULL;
}

/* Returns the route for method+path, or NULL with *known_path telling 405 from 404. */
static const struct route *match(struct http_req *r, bool *known_path, bool *has_id)
{
	const char *p = r->path;
	unsigned m = r->method;
	*known_path = true;
	*has_id = false;
	if (!strcmp(p, "/v1/health") || !strcmp(p, "/health"))
		return m == HTTP_GET ? &r_health : NULL;
	if (!strcmp(p, "/v1/templates"))
		return m == HTTP_POST ? &r_templates_create : m == HTTP_GET ? &r_templates_list : NULL;
	if (!strcmp(p, "/v1/fork"))
		return m == HTTP_POST ? &r_fork : NULL;
	if (!strcmp(p, "/v1/sandboxes") || !strcmp(p, "/v1/sandboxes/"))
		return m == HTTP_GET ? &r_sandboxes_list : NULL;
	if (!strncmp(p, "/v1/sandboxes/", 14)) {
		/* /v1/sandboxes/{id} and /v1/sandboxes/{id}/{action} */
		const char *id = p + 14, *slash = strchr(id, '/');
		size_t idlen = slash ? (size_t)(slash - id) : strlen(id);
		*has_id = true;
		snprintf(r->param, sizeof(r->param), "%.*s", (int)(idlen < sizeof(r->param) ? idlen : 0), id);
		if (idlen >= sizeof(r->param))
			r->param[0] = '!'; /* too long: fails the id check */
		if (!slash)
			return m == HTTP_GET ? &r_sandbox_get : m == HTTP_DELETE ? &r_sandbox_delete : NULL;
		if (!strcmp(slash, "/fork"))
			return m == HTTP_POST ? &r_sandbox_fork : NULL;
		if (!strcmp(slash, "/forward"))
			return m == HTTP_POST ? &r_sandbox_forward : NULL;
		if (!strncmp(slash, "/expose/", 8))
			return &r_sandbox_expose;
		*known_path = false;
		return NULL;
	}
	if (!strcmp(p, "/v1/set_timeout"))
		return m == HTTP_POST ? &r_set_timeout : NULL;
	if (!strcmp(p, "/v1/pause"))
		return m == HTTP_POST ? &r_pause : NULL;
	if (!strcmp(p, "/v1/resume"))
		return m == HTTP_POST ? &r_resume : NULL;
	if (!strcmp(p, "/v1/preview"))
		return m == HTTP_POST ? &r_preview_create : NULL;
	/* Any method: it is the sandbox's server that answers. */
	if (!strncmp(p, "/preview/", 9))
		return &r_preview_proxy;
	if (!strncmp(p, RPC_PREFIX, strlen(RPC_PREFIX))) {
		const char *meth = p + strlen(RPC_PREFIX);
		r->connect_errors = true;
		if (strlen(meth) >= sizeof(r->param) || !rpc_method_known(meth)) {
			*known_path = false;
			return NULL;
		}
		snprintf(r->param, sizeof(r->param), "%s", meth);
		/* Exec's WebSocket form names the sandbox in the query, not a header. */
		if (m == HTTP_GET && !strcmp(meth, "Exec")) {
			r->connect_errors = false;
			return &r_pty;
		}
		if (m != HTTP_POST)
			return NULL;
		r->connect_stream = rpc_method_streams(meth);
		if (rpc_method_bidi(meth))
			return &r_rpc_bidi;
		return !strcmp(meth, "WriteFile") ? &r_rpc_write : !strcmp(meth, "Upload") ? &r_rpc_upload : &r_rpc;
	}
	*known_path = false;
	return NULL;
}

void router_headers(struct http_req *r)
{
	if (e2b_route_headers(r))
		return;
	bool known = true, has_id = false;
	/* A preview host is the sandbox's whole site, whatever the path. */
	const struct route *rt = preview_host_matches(r) ? &r_preview_proxy : match(r, &known, &has_id);
	r->body_limit = srv_cfg.max_json_body;
	/* The sandbox id is checked before anything else, the token included: a
	 * malformed id is a client bug that says nothing about the server. */
	const char *hid = http_req_header(r, "x-sandbox-id");
	if (has_id) {
		if (!api_valid_id(r->param))
			set_early(r, AE_INVALID_SANDBOX_ID, "the sandbox id in the path is not a valid sandbox id");
		else
			snprintf(r->sandbox_id, sizeof(r->sandbox_id), "%.64s", r->param);
	} else if (rt == &r_rpc || rt == &r_rpc_write || rt == &r_rpc_upload || rt == &r_rpc_bidi) {
		if (!hid || !*hid)
			set_early(r, AE_INVALID_SANDBOX_ID, "the X-Sandbox-Id header is required for sandbox.v1.Sandbox calls");
		else if (!api_valid_id(hid))
			set_early(r, AE_INVALID_SANDBOX_ID, "the X-Sandbox-Id header is not a valid sandbox id");
		else
			snprintf(r->sandbox_id, sizeof(r->sandbox_id), "%.64s", hid);
	}
	/* Previews carry their own signed token; the proxy checks it. */
	if (rt != &r_preview_proxy && !router_authorized(r))
		set_early(r, AE_UNAUTHENTICATED, srv_cfg.token && http_req_header(r, "authorization")
			  ? "the bearer token does not match" : "this server requires a bearer token");
	if (!rt) {
		char msg[200];
		if (known) {
			snprintf(msg, sizeof(msg), "method %s is not allowed on this path",
				 http_method_str((enum http_method)r->method));
			set_early(r, AE_METHOD_NOT_ALLOWED, msg);
		} else {
			set_early(r, AE_NOT_FOUND, "no such endpoint");
		}
		return;
	}
	r->route = rt;
	if (r->h2 && rt->raw_http1)
		set_early(r, AE_HTTP_VERSION, "WebSockets, previews and expose are served over HTTP/1.1, not HTTP/2");
	if (r->early_err >= 0)
		return;
	if (rt->big_body)
		r->body_limit = srv_cfg.max_file_body;
	r->body_streamed = rt->stream_body;
}

void router_refuse(struct http_req *r, enum api_err e, const char *msg)
{
	if (r->connect_stream)
		rpc_stream_refuse(r, e, msg);
	else
		http_reply_error(r, e, msg, NULL, NULL);
}

void router_dispatch(struct http_req *r)
{
	r->route->fn(r);
}
