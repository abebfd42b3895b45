/* The E2B surface's shared parts: its per-sandbox records, tokens, error
 * replies, and the bridge between one HTTP request and one agent stream. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <nettle/memops.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "api/http/connect.h"
#include "api/e2b/internal.h"
#include "api/http/errors.h"
#include "api/http/http.h"
#include "api/mitos/cluster_list.h"
#include "api/sandbox/registry.h"

static struct e2b_sbx *records;

static void sbx_free(struct e2b_sbx *s)
{
	cJSON_Delete(s->env_vars);
	cJSON_Delete(s->bash_contexts);
	explicit_bzero(s->envd_token, sizeof(s->envd_token));
	explicit_bzero(s->traffic_token, sizeof(s->traffic_token));
	free(s);
}

/* A sandbox's E2B settings live in its state dir beside sandbox.json, so a restarted
 * serve (which re-adopts the sandbox) still knows the tokens its clients hold. */
static int record_path(const struct sandbox *sb, char *out, size_t n)
{
	int w = snprintf(out, n, "%s/e2b.json", sb->dir);
	return w > 0 && (size_t)w < n ? 0 : -ENAMETOOLONG;
}

int e2b_sbx_save(const struct e2b_sbx *s)
{
	struct sandbox *sb = sandbox_find(s->id);
	char path[1100];
	if (!sb || sb->created_ms != s->created_ms)
		return -ENOENT;
	if (record_path(sb, path, sizeof(path)))
		return -ENAMETOOLONG;
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return -ENOMEM;
	cJSON_AddNumberToObject(o, "created_ms", (double)s->created_ms);
	cJSON_AddStringToObject(o, "envd_token", s->envd_token);
	cJSON_AddStringToObject(o, "traffic_token", s->traffic_token);
	if (s->env_vars)
		cJSON_AddItemToObject(o, "env_vars", cJSON_Duplicate(s->env_vars, 1));
	cJSON_AddBoolToObject(o, "auto_pause", s->auto_pause);
	cJSON_AddBoolToObject(o, "auto_pause_files_only", s->auto_pause_files_only);
	cJSON_AddBoolToObject(o, "auto_resume", s->auto_resume);
	cJSON_AddNumberToObject(o, "resume_timeout_s", s->resume_timeout_s);
	cJSON_AddBoolToObject(o, "public_traffic", s->public_traffic);
	cJSON_AddStringToObject(o, "mask_host", s->mask_host);
	int rc = registry_write_json(path, o);
	cJSON_Delete(o);
	return rc;
}

/* A token as saved: empty, or exactly the hex a token is made of. */
static bool token_copy(const cJSON *o, const char *key, char *out, size_t outlen)
{
	const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
	size_t n = v ? strlen(v) : 0;
	if (!v || (n && n != outlen - 1) || strspn(v, "0123456789abcdef") != n)
		return false;
	memcpy(out, v, n + 1);
	return true;
}

/* The record serve saved for sb, or NULL when there is none (a sandbox made
 * through the Mitos surface) or it is not sb's own. */
static struct e2b_sbx *sbx_load(const struct sandbox *sb)
{
	char path[1100];
	if (record_path(sb, path, sizeof(path)))
		return NULL;
	cJSON *o = registry_read_json(path);
	if (!o)
		return NULL;
	struct e2b_sbx *s = calloc(1, sizeof(*s));
	const cJSON *ms = cJSON_GetObjectItemCaseSensitive(o, "created_ms");
	const cJSON *env = cJSON_GetObjectItemCaseSensitive(o, "env_vars");
	if (!s || !cJSON_IsNumber(ms) || (uint64_t)ms->valuedouble != sb->created_ms ||
	    !token_copy(o, "envd_token", s->envd_token, sizeof(s->envd_token)) ||
	    !token_copy(o, "traffic_token", s->traffic_token, sizeof(s->traffic_token)) ||
	    (env && !cJSON_IsObject(env))) {
		fprintf(stderr, "mitos-vmm serve: sandbox %s: ignoring its E2B record %s (not this sandbox's, or damaged)\n",
			sb->id, path);
		free(s);
		cJSON_Delete(o);
		return NULL;
	}
	snprintf(s->id, sizeof(s->id), "%s", sb->id);
	s->created_ms = sb->created_ms;
	s->env_vars = env ? cJSON_Duplicate(env, 1) : NULL;
	s->auto_pause = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "auto_pause"));
	s->auto_pause_files_only = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "auto_pause_files_only"));
	s->auto_resume = s->auto_pause && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "auto_resume"));
	s->public_traffic = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "public_traffic"));
	const char *mask = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "mask_host"));
	if (mask && e2b_mask_host_ok(mask))
		snprintf(s->mask_host, sizeof(s->mask_host), "%s", mask);
	const cJSON *rt = cJSON_GetObjectItemCaseSensitive(o, "resume_timeout_s");
	s->resume_timeout_s = cJSON_IsNumber(rt) && rt->valuedouble >= 1 && rt->valuedouble <= 30 * 86400
				      ? (uint32_t)rt->valuedouble : 300;
	cJSON_Delete(o);
	if (s->auto_pause)
		e2b_auto_pause_watch();
	return s;
}

struct e2b_sbx *e2b_sbx_get(const char *id, bool create)
{
	/* Records of sandboxes that are gone (killed, expired) go on the way. */
	for (struct e2b_sbx **pp = &records; *pp;) {
		struct e2b_sbx *s = *pp;
		struct sandbox *sb = sandbox_find(s->id);
		if (!sb || sb->created_ms != s->created_ms) {
			*pp = s->next;
			sbx_free(s);
			continue;
		}
		if (!strcmp(s->id, id))
			return s;
		pp = &s->next;
	}
	struct sandbox *sb = sandbox_find(id);
	if (!sb)
		return NULL;
	struct e2b_sbx *s = sbx_load(sb);
	if (!s && create) {
		s = calloc(1, sizeof(*s));
		if (!s)
			return NULL;
		snprintf(s->id, sizeof(s->id), "%s", id);
		s->created_ms = sb->created_ms;
	}
	if (!s)
		return NULL;
	s->next = records;
	records = s;
	return s;
}

void e2b_records_load(void)
{
	for (struct sandbox *sb = sandboxes_first(); sb; sb = sb->next)
		e2b_sbx_get(sb->id, false);
}

struct e2b_sbx *e2b_sbx_first(void)
{
	return records;
}

void e2b_token_new(char *out, size_t outlen)
{
	uint8_t b[E2B_TOKEN_HEX];
	if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b)) {
		/* Without entropy there is no token worth issuing; an empty one is refused. */
		out[0] = 0;
		return;
	}
	size_t o = 0;
	for (size_t i = 0; i < sizeof(b) && o + 2 < outlen; i++)
		o += (size_t)snprintf(out + o, outlen - o, "%02x", b[i]);
	explicit_bzero(b, sizeof(b));
}

bool e2b_token_ok(const char *presented, const char *expected)
{
	if (!presented || !expected || !*expected)
		return false;
	size_t n = strlen(expected);
	/* The length is not secret (every token has the same one). */
	return strlen(presented) == n && memeql_sec(presented, expected, n);
}

/* Adds the redacted message to o (which holds the code) and sends it. */
static void reply_code_msg(struct http_req *r, int status, cJSON *o, const char *msg)
{
	char *red = api_redact(msg);
	cJSON_AddStringToObject(o, "message", red ? red : "");
	free(red);
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	/* A 429 says when to retry: the SDK retries on an integer Retry-After. */
	http_reply(r, status, "application/json", s ? s : "{}", s ? strlen(s) : 2,
		   status == 429 ? "Retry-After: 1\r\n" : NULL);
	free(s);
}

/* The list's query string with its limit replaced by limit (the peers of a cluster
 * list are asked for one item more than the client's page). */
static char *query_with_limit(const char *query, unsigned limit)
{
	size_t n = strlen(query ? query : "");
	char *out = malloc(n + 32);
	if (!out)
		return NULL;
	size_t o = (size_t)sprintf(out, "limit=%u", limit);
	for (const char *p = query ? query : ""; *p;) {
		const char *amp = strchr(p, '&');
		size_t len = amp ? (size_t)(amp - p) : strlen(p);
		if (len && strncmp(p, "limit=", 6) && !(len == 5 && !strncmp(p, "limit", 5))) {
			out[o++] = '&';
			memcpy(out + o, p, len);
			o += len;
		}
		p += len + (amp ? 1 : 0);
	}
	out[o] = 0;
	return out;
}

void e2b_cluster_page(struct http_req *r, struct cJSON *a, const char *path, unsigned limit, bool desc)
{
	char *q = query_with_limit(r->query, limit + 1);
	if (q) {
		cluster_list_start(r, a, path, q, &(struct cluster_page){ limit, desc });
		free(q);
	} else {
		cJSON_Delete(a);
		e2b_reply_err(r, 500, "out of memory");
	}
}

void e2b_reply_page(struct http_req *r, struct cJSON *a, uint64_t next_ms, const char *next_key)
{
	char hdr[160] = "";
	if (next_key)
		snprintf(hdr, sizeof(hdr), "X-Next-Token: %llu-%.64s\r\n", (unsigned long long)next_ms, next_key);
	char *s = cJSON_PrintUnformatted(a);
	cJSON_Delete(a);
	if (s)
		http_reply(r, 200, "application/json", s, strlen(s), hdr[0] ? hdr : NULL);
	else
		e2b_reply_err(r, 500, "out of memory");
	free(s);
}

void e2b_reply_err(struct http_req *r, int status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "code", status);
	reply_code_msg(r, status, o, msg);
}

static const struct { const char *code; int status; } connect_codes[] = {
	{ "canceled", 499 }, { "unknown", 500 }, { "invalid_argument", 400 }, { "deadline_exceeded", 504 },
	{ "not_found", 404 }, { "already_exists", 409 }, { "permission_denied", 403 },
	{ "resource_exhausted", 429 }, { "failed_precondition", 400 }, { "aborted", 409 },
	{ "out_of_range", 400 }, { "unimplemented", 501 }, { "internal", 500 }, { "unavailable", 503 },
	{ "data_loss", 500 }, { "unauthenticated", 401 },
};

int e2b_connect_status(const char *code)
{
	for (size_t i = 0; i < sizeof(connect_codes) / sizeof(connect_codes[0]); i++)
		if (!strcmp(connect_codes[i].code, code))
			return connect_codes[i].status;
	return 500;
}

void e2b_reply_connect_err(struct http_req *r, const char *code, const char *msg)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "code", code);
	reply_code_msg(r, e2b_connect_status(code), o, msg);
}

bool e2b_string_map(const cJSON *m)
{
	if (!m || cJSON_IsNull(m))
		return true;
	if (!cJSON_IsObject(m))
		return false;
	/* Kept with the sandbox (metadata) or given to every process (envs): bounded. */
	size_t n = 0, bytes = 0;
	for (const cJSON *e = m->child; e; e = e->next) {
		if (!cJSON_IsString(e) || ++n > E2B_MAP_MAX_ENTRIES)
			return false;
		bytes += strlen(e->string) + strlen(e->valuestring);
		if (bytes > E2B_MAP_MAX_BYTES)
			return false;
	}
	return true;
}

cJSON *e2b_fs_event(const cJSON *e)
{
	static const char *map[][2] = {
		{ "create", "EVENT_TYPE_CREATE" }, { "write", "EVENT_TYPE_WRITE" }, { "remove", "EVENT_TYPE_REMOVE" },
		{ "rename", "EVENT_TYPE_RENAME" }, { "chmod", "EVENT_TYPE_CHMOD" },
	};
	const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(e, "type"));
	const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(e, "name"));
	for (size_t i = 0; type && name && i < sizeof(map) / sizeof(map[0]); i++)
		if (!strcmp(map[i][0], type)) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "name", name);
			cJSON_AddStringToObject(o, "type", map[i][1]);
			const cJSON *entry = cJSON_GetObjectItem(e, "entry");
			if (entry)
				cJSON_AddItemToObject(o, "entry", e2b_entry_info(entry));
			return o;
		}
	return NULL; /* "overflow", or something newer */
}

cJSON *e2b_watch_open(const cJSON *req, const char *user)
{
	const cJSON *path = cJSON_GetObjectItemCaseSensitive(req, "path");
	if (!cJSON_IsString(path) || !*path->valuestring)
		return NULL;
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "watch");
	cJSON_AddStringToObject(open, "path", path->valuestring);
	cJSON_AddBoolToObject(open, "recursive", cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "recursive")));
	cJSON_AddBoolToObject(open, "entries", cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "includeEntry")) ||
			      cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "include_entry")));
	e2b_add_user(open, user);
	return open;
}

void e2b_template_shape(const char *name, unsigned *cpus, unsigned *mem_mib)
{
	struct template_rec *t = templates_find(name);
	if (!t || templates_shape(t, cpus, mem_mib))
		*cpus = *mem_mib = 0;
}

void e2b_add_user(cJSON *open, const char *user)
{
	if (user && *user)
		cJSON_AddStringToObject(open, "user", user);
	else
		cJSON_AddStringToObject(open, "default_user", "user");
}

const char *e2b_agent_code(const char *c)
{
	static const char *map[][2] = {
		{ "not_found", "not_found" }, { "exists", "already_exists" },
		{ "invalid_argument", "invalid_argument" }, { "not_a_directory", "invalid_argument" },
		{ "is_a_directory", "invalid_argument" }, { "not_empty", "failed_precondition" },
		{ "permission_denied", "permission_denied" }, { "no_space", "resource_exhausted" },
		{ "busy", "resource_exhausted" }, { "timeout", "deadline_exceeded" },
		{ "unsupported", "unimplemented" }, { "connection_refused", "unavailable" },
	};
	for (size_t i = 0; c && i < sizeof(map) / sizeof(map[0]); i++)
		if (!strcmp(map[i][0], c))
			return map[i][1];
	return "internal";
}

/* ---- calls ---- */

void *e2b_call_new(struct http_req *r, size_t size, const struct agent_call_vt *vt)
{
	struct agent_call *c = calloc(1, size);
	if (!c) {
		e2b_reply_err(r, 500, "out of memory");
		return NULL;
	}
	agent_call_start(c, r, vt);
	return c;
}

int e2b_fail_not_found(struct mitos_err *e, const char *id)
{
	return api_fail(e, -ENOENT, AE_NOT_FOUND, "The sandbox %s was not found", id && *id ? id : "(none given)");
}

struct agent_conn *e2b_sandbox_agent(const char *id, struct mitos_err *e)
{
	struct sandbox *sb = id && *id ? sandbox_find(id) : NULL;
	if (!sb) {
		e2b_fail_not_found(e, id);
		return NULL;
	}
	if (sb->state != SB_RUNNING || !agent_conn_ready(sb->agent)) {
		api_fail(e, -EBUSY, AE_SANDBOX_NOT_RUNNING, "The sandbox %s is %s", sb->id,
			 sb->state == SB_PAUSED ? "paused" : sb->state == SB_STARTING ? "starting" : "stopping");
		return NULL;
	}
	return sb->agent;
}

int e2b_agent_status(enum api_err kind)
{
	/* What E2B's proxy answers for a sandbox that is not there or not running: the SDK
	 * turns 502 into "sandbox not running" / isRunning() false. */
	return kind == AE_NOT_FOUND || kind == AE_SANDBOX_NOT_RUNNING ? 502 : api_err_status(kind);
}

bool e2b_call_open(struct agent_call *c, struct agent_conn *ac, cJSON *open, const struct astream_ops *ops)
{
	char *s = cJSON_PrintUnformatted(open);
	cJSON_Delete(open);
	c->as = s ? agent_open(ac, s, ops, c) : NULL;
	free(s);
	return c->as != NULL;
}

bool e2b_call_cut(struct agent_call *c)
{
	struct http_req *r = c->r;
	if (!r || !r->resp_started || c->done)
		return false;
	c->done = true;
	http_stream_abort(r);
	agent_call_free(c);
	return true;
}

size_t e2b_call_room(struct astream *s)
{
	const struct agent_call *c = s->ctx;
	/* A reply that is not streamed holds the whole answer until the end anyway. */
	return c->r && c->r->chunked ? http_stream_room(c->r) : SIZE_MAX;
}

void e2b_envelope(struct http_req *r, uint8_t flags, const char *json, size_t n)
{
	uint8_t h[CONNECT_ENVELOPE];
	connect_envelope_header(h, flags, (uint32_t)n);
	http_stream_write2(r, h, sizeof(h), json, n);
}

void e2b_envelope_cjson(struct http_req *r, cJSON *o)
{
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (s)
		e2b_envelope(r, 0, s, strlen(s));
	free(s);
}

/* envd's permissions: Go's os.FileMode.String() ("dtrwxrwxrwx" for /tmp, "Lrwxrwxrwx"
 * for a link), from the agent's ls-style string (its first letter: the file type)
 * and mode bits. */
static void go_mode_string(const char *ls, unsigned mode, char out[24])
{
	char t = ls && *ls ? ls[0] : '-';
	const struct { char c; bool on; } letters[] = {
		{ 'd', t == 'd' }, { 'L', t == 'l' }, { 'D', t == 'b' || t == 'c' }, { 'p', t == 'p' },
		{ 'S', t == 's' }, { 'u', mode & 04000 }, { 'g', mode & 02000 }, { 'c', t == 'c' },
		{ 't', mode & 01000 },
	};
	size_t n = 0;
	for (size_t i = 0; i < sizeof(letters) / sizeof(letters[0]); i++)
		if (letters[i].on)
			out[n++] = letters[i].c;
	if (!n)
		out[n++] = '-';
	for (int i = 0; i < 9; i++)
		out[n++] = mode & (1u << (8 - i)) ? "rwxrwxrwx"[i] : '-';
	out[n] = 0;
}

static const char *file_type(const char *agent_type)
{
	return !agent_type ? NULL : !strcmp(agent_type, "file") ? "FILE_TYPE_FILE"
		: !strcmp(agent_type, "dir") ? "FILE_TYPE_DIRECTORY" : "FILE_TYPE_UNSPECIFIED";
}

cJSON *e2b_entry_info(const cJSON *a)
{
	const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(a, "type"));
	if (!type)
		return NULL;
	/* envd reports a link as what it leads to (unspecified when it leads nowhere). */
	bool link = !strcmp(type, "symlink");
	const char *ft = file_type(link ? cJSON_GetStringValue(cJSON_GetObjectItem(a, "target_type")) : type);
	const cJSON *mode = cJSON_GetObjectItem(a, link ? "target_mode" : "mode");
	unsigned bits = cJSON_IsNumber(mode) ? (unsigned)mode->valuedouble & 0777 : 0; /* Go's Perm() */
	cJSON *e = cJSON_CreateObject();
	static const char *same[] = { "name", "path", "owner", "group" };
	for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
		const char *v = cJSON_GetStringValue(cJSON_GetObjectItem(a, same[i]));
		cJSON_AddStringToObject(e, same[i], v ? v : "");
	}
	cJSON_AddStringToObject(e, "type", ft ? ft : "FILE_TYPE_UNSPECIFIED");
	const cJSON *size = cJSON_GetObjectItem(a, "size"), *own = cJSON_GetObjectItem(a, "mode");
	char perms[24];
	go_mode_string(cJSON_GetStringValue(cJSON_GetObjectItem(a, "permissions")),
		       cJSON_IsNumber(own) ? (unsigned)own->valuedouble & 07777 : 0, perms);
	cJSON_AddStringToObject(e, "permissions", perms);
	cJSON_AddNumberToObject(e, "size", cJSON_IsNumber(size) ? size->valuedouble : 0);
	cJSON_AddNumberToObject(e, "mode", bits);
	const char *mt = cJSON_GetStringValue(cJSON_GetObjectItem(a, "mtime"));
	if (mt)
		cJSON_AddStringToObject(e, "modifiedTime", mt);
	const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(a, "symlink_target"));
	if (st)
		cJSON_AddStringToObject(e, "symlinkTarget", st);
	const cJSON *meta = cJSON_GetObjectItem(a, "metadata");
	if (cJSON_IsObject(meta) && meta->child)
		cJSON_AddItemToObject(e, "metadata", cJSON_Duplicate(meta, 1));
	return e;
}
