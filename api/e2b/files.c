/* envd's REST file transfer (protocol reference 3.5, 3.6): GET /files streams a
 * file out of the sandbox; POST /files takes multipart/form-data (several files),
 * or one application/octet-stream body, optionally gzip-encoded, and streams each
 * file into the agent under its flow control. Access: the sandbox's token, or a
 * URL signature from uploadUrl()/downloadUrl(). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "agent/base64.h"
#include "agent/proto.h"
#include "api/http/bytebuf.h"
#include "api/e2b/e2b.h"
#include "api/e2b/internal.h"
#include "api/mitos/handlers.h"
#include "api/http/http.h"
#include "api/http/server.h"
#include "api/http/uring.h"

#define TX_PAUSE (1u << 20)        /* buffered upload bytes above which we stop reading */
#define PART_HEADERS_MAX (8u << 10)
#define MAX_PARTS 1000
#define BOUNDARY_MAX 200

/* ---- access ---- */

/* "v1_" + base64(sha256("<path>:<op>:<user>:<token>[:<exp>]")) without padding. */
static void signature(const char *path, const char *op, const char *user, const char *token, const char *exp,
		      char *out, size_t outlen)
{
	struct sha256_ctx h;
	uint8_t d[SHA256_DIGEST_SIZE];
	sha256_init(&h);
	const char *parts[] = { path, ":", op, ":", user ? user : "", ":", token };
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
		sha256_update(&h, strlen(parts[i]), (const uint8_t *)parts[i]);
	if (exp && *exp) {
		sha256_update(&h, 1, (const uint8_t *)":");
		sha256_update(&h, strlen(exp), (const uint8_t *)exp);
	}
	sha256_digest(&h, sizeof(d), d);
	char b64[base64_encoded_len(SHA256_DIGEST_SIZE) + 1];
	base64_encode(d, sizeof(d), b64);
	size_t n = strlen(b64);
	while (n && b64[n - 1] == '=')
		b64[--n] = 0;
	snprintf(out, outlen, "v1_%s", b64);
}

struct access {
	char *path, *user, *sig, *exp;
};

static void access_free(struct access *a)
{
	free(a->path);
	free(a->user);
	free(a->sig);
	free(a->exp);
}

enum sig_check { SIG_NONE, SIG_EXPIRED, SIG_OK };

/* As envd: the signature first, then its expiry. */
static enum sig_check signature_check(const struct access *a, const char *op, const struct e2b_sbx *s)
{
	if (!a->sig || !a->path || !s->envd_token[0])
		return SIG_NONE;
	char want[80];
	signature(a->path, op, a->user, s->envd_token, a->exp, want, sizeof(want));
	if (!e2b_token_ok(a->sig, want))
		return SIG_NONE;
	return a->exp && *a->exp && strtoll(a->exp, NULL, 10) < (long long)time(NULL) ? SIG_EXPIRED : SIG_OK;
}

/* Names the sandbox (a header, or the one whose token signed the URL) and checks
 * access; false after an error reply. */
static bool files_access(struct http_req *r, const struct access *a, const char *op)
{
	if (!r->sandbox_id[0]) {
		for (struct sandbox *sb = sandboxes_first(); sb; sb = sb->next) {
			struct e2b_sbx *s = e2b_sbx_get(sb->id, false);
			enum sig_check sc = s ? signature_check(a, op, s) : SIG_NONE;
			if (sc == SIG_EXPIRED) {
				e2b_reply_err(r, 401, "signature is already expired");
				return false;
			}
			if (sc == SIG_OK) {
				snprintf(r->sandbox_id, sizeof(r->sandbox_id), "%s", sb->id);
				return true;
			}
		}
		struct sandbox *only = sandboxes_count() == 1 ? sandboxes_first() : NULL;
		/* Unsigned URLs carry no sandbox: only a node with one sandbox and no
		 * tokens can tell which is meant. */
		if (only && !a->sig && !e2b_sbx_get(only->id, false) && e2b_api_key_ok(r)) {
			snprintf(r->sandbox_id, sizeof(r->sandbox_id), "%s", only->id);
			return true;
		}
		e2b_reply_err(r, a->sig ? 401 : 400, a->sig ? "the URL signature matches no sandbox"
			      : "name the sandbox with the E2b-Sandbox-Id header, or use a signed URL");
		return false;
	}
	struct e2b_sbx *s = e2b_sbx_get(r->sandbox_id, false);
	if (s && s->envd_token[0]) {
		if (e2b_token_ok(http_req_header(r, "x-access-token"), s->envd_token))
			return true;
		enum sig_check sc = signature_check(a, op, s);
		if (sc == SIG_OK)
			return true;
		e2b_reply_err(r, 401, "%s", sc == SIG_EXPIRED ? "signature is already expired"
			      : "the access token or URL signature does not match this sandbox");
		return false;
	}
	if (e2b_api_key_ok(r))
		return true;
	e2b_reply_err(r, 401, "this server requires a token");
	return false;
}

static int status_of(const char *agent_code)
{
	static const struct { const char *code; int status; } map[] = {
		{ "not_found", 404 }, { "invalid_argument", 400 }, { "is_a_directory", 400 },
		{ "not_a_directory", 400 }, { "permission_denied", 403 }, { "no_space", 507 }, { "busy", 429 },
	};
	for (size_t i = 0; agent_code && i < sizeof(map) / sizeof(map[0]); i++)
		if (!strcmp(map[i].code, agent_code))
			return map[i].status;
	return 500;
}

static void reply_agent_err(struct http_req *r, const cJSON *payload, const char *why)
{
	const cJSON *err = cJSON_GetObjectItem(payload, "error");
	const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
	const char *msg = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message"));
	if (!payload)
		e2b_reply_err(r, 502, "the sandbox stopped during the transfer: %s", why ? why : "");
	else
		e2b_reply_err(r, status_of(code), "%s", msg ? msg : "the file operation failed");
}

/* ---- GET /files ---- */

struct read_call {
	struct agent_call base;
};

static void read_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)ch;
	(void)fin;
	struct read_call *c = s->ctx;
	struct http_req *r = c->base.r;
	if (r && n) {
		if (!r->resp_started)
			http_stream_start(r, 200, "application/octet-stream", NULL);
		http_stream_write(r, p, n);
	}
}

static void read_event(struct astream *s, cJSON *ev)
{
	struct read_call *c = s->ctx;
	/* The size comes first: from here on the answer is the file. */
	if (cJSON_IsNumber(cJSON_GetObjectItem(ev, "size")) && c->base.r && !c->base.r->resp_started)
		http_stream_start(c->base.r, 200, "application/octet-stream", NULL);
}

static void read_end(struct astream *s, cJSON *payload, const char *why)
{
	struct read_call *c = s->ctx;
	struct http_req *r = c->base.r;
	c->base.as = NULL;
	if (r && !r->resp_started)
		reply_agent_err(r, cJSON_IsObject(cJSON_GetObjectItem(payload, "error")) || !payload ? payload : NULL, why);
	else if (r && !cJSON_GetObjectItem(payload, "error") && payload)
		http_stream_finish(r);
	else if (r)
		http_stream_abort(r); /* a file cut short must not look complete */
	agent_call_free(&c->base);
}

static const struct astream_ops read_ops = { read_data, read_event, read_end, NULL, e2b_call_room };
static const struct agent_call_vt read_vt = { NULL, NULL };

static void query_access(const struct http_req *r, struct access *a)
{
	a->path = http_query_get(r->query, "path");
	a->user = http_query_get(r->query, "username");
	a->sig = http_query_get(r->query, "signature");
	a->exp = http_query_get(r->query, "signature_expiration");
}

/* The query's access fields, the access check and the sandbox's agent; NULL
 * after an error reply (a is then freed). */
/* The sandbox's agent for an allowed request, or NULL after an answer; a sandbox that
 * auto-resumes is woken, and r served again with again once it runs (an upload's body
 * is held meanwhile). */
static struct agent_conn *files_begin(struct http_req *r, struct access *a, const char *op,
				      void (*again)(struct http_req *r))
{
	query_access(r, a);
	struct mitos_err e = { 0 };
	struct agent_conn *ac = NULL;
	if (!strcmp(op, "read") && (!a->path || !*a->path))
		e2b_reply_err(r, 400, "the path query parameter is required");
	else if (files_access(r, a, op) && !e2b_wake(r, r->sandbox_id, again) &&
		 !(ac = e2b_sandbox_agent(r->sandbox_id, &e)))
		e2b_reply_err(r, e2b_agent_status(e.kind), "%s", e.msg);
	if (!ac)
		access_free(a);
	return ac;
}

void e2b_files_get(struct http_req *r)
{
	struct access a;
	struct agent_conn *ac = files_begin(r, &a, "read", e2b_files_get);
	if (!ac)
		return;
	struct read_call *c = e2b_call_new(r, sizeof(*c), &read_vt);
	if (!c) {
		access_free(&a);
		return;
	}
	r->abort_on_eof = true;
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "read");
	cJSON_AddStringToObject(open, "path", a.path);
	e2b_add_user(open, a.user);
	access_free(&a);
	if (!e2b_call_open(&c->base, ac, open, &read_ops)) {
		e2b_reply_err(r, 502, "cannot open a stream to the sandbox's agent");
		agent_call_free(&c->base);
	}
}

/* ---- POST /files ---- */

enum mp_state { MP_PREAMBLE, MP_HEADERS, MP_DATA, MP_AFTER_DELIM, MP_EPILOGUE };

struct upload;

/* One file being written: its own agent stream and send buffer. */
struct wfile {
	struct upload *u;
	struct astream *as;
	struct bytebuf tx;
	bool fin, fin_sent, done;
	char *dest;
	cJSON *result;
};

struct upload {
	struct agent_call base;
	struct agent_conn *ac;
	struct access a;
	bool multipart, gzip, body_done, failed;
	/* multipart */
	enum mp_state st;
	char delim[BOUNDARY_MAX + 8];  /* "\r\n--" boundary */
	size_t dlen;
	struct bytebuf pend;           /* multipart: the unparsed rest; gzip: input not inflated yet */
	/* gzip */
	z_stream z;
	bool z_init, z_end, inflating, body_ended;
	uint64_t inflated;
	struct wfile *files[MAX_PARTS];
	unsigned nfiles;
	struct wfile *cur;
	cJSON *metadata;   /* X-Metadata-<key>: value of the request, for every file */
};

static size_t tx_pending(const struct upload *u)
{
	size_t n = 0;
	for (unsigned i = 0; i < u->nfiles; i++)
		n += bytebuf_pending(&u->files[i]->tx);
	return n;
}

static void upload_fail(struct upload *u, int status, const char *msg);
static void upload_maybe_done(struct upload *u);
static void upload_drained(struct upload *u);

static void wf_pump(struct wfile *f)
{
	if (!f->as)
		return;
	if (agent_send_buffered(f->as, PROTO_CH_MAIN, &f->tx, f->fin))
		f->fin_sent = true;
	if (f->fin && !f->fin_sent && !bytebuf_pending(&f->tx)) {
		agent_send_data(f->as, PROTO_CH_MAIN, true, NULL, 0);
		f->fin_sent = true;
	}
	upload_drained(f->u);
}

static void wf_writable(struct astream *s)
{
	wf_pump(s->ctx);
}

static void wf_end(struct astream *s, cJSON *payload, const char *why)
{
	struct wfile *f = s->ctx;
	struct upload *u = f->u;
	f->as = NULL;
	f->done = true;
	if (!payload || cJSON_IsObject(cJSON_GetObjectItem(payload, "error"))) {
		if (u->base.r && !u->failed) {
			u->failed = true;
			reply_agent_err(u->base.r, payload, why);
		}
		upload_fail(u, 0, NULL);
		return;
	}
	if (!f->fin_sent) {
		/* A success before the file's end was sent: the rest would wait forever. */
		upload_fail(u, 502, "the sandbox's agent ended the write before the file's end");
		return;
	}
	const char *path = cJSON_GetStringValue(cJSON_GetObjectItem(payload, "path"));
	if (!path)
		path = f->dest;
	const char *slash = strrchr(path, '/');
	f->result = cJSON_CreateObject();
	cJSON_AddStringToObject(f->result, "name", slash ? slash + 1 : path);
	cJSON_AddStringToObject(f->result, "path", path);
	cJSON_AddStringToObject(f->result, "type", "file");
	if (u->metadata)
		cJSON_AddItemToObject(f->result, "metadata", cJSON_Duplicate(u->metadata, 1));
	upload_maybe_done(u);
}

static const struct astream_ops wf_ops = { NULL, NULL, wf_end, wf_writable, NULL };

static struct wfile *wf_open(struct upload *u, const char *dest)
{
	for (unsigned i = 0; i < u->nfiles; i++)
		if (!strcmp(u->files[i]->dest, dest)) {
			upload_fail(u, 400, "two parts write the same file");
			return NULL;
		}
	if (u->nfiles == MAX_PARTS) {
		upload_fail(u, 400, "too many files in one upload");
		return NULL;
	}
	struct wfile *f = calloc(1, sizeof(*f));
	cJSON *open = cJSON_CreateObject();
	char *s = NULL;
	if (f && open && (f->dest = strdup(dest))) {
		cJSON_AddStringToObject(open, "op", "write");
		cJSON_AddStringToObject(open, "path", dest);
		e2b_add_user(open, u->a.user);
		if (u->metadata)
			cJSON_AddItemToObject(open, "metadata", cJSON_Duplicate(u->metadata, 1));
		s = cJSON_PrintUnformatted(open);
	}
	cJSON_Delete(open);
	if (!s) {
		if (f)
			free(f->dest);
		free(f);
		upload_fail(u, 500, "out of memory");
		return NULL;
	}
	f->u = u;
	u->files[u->nfiles++] = f;
	f->as = agent_open(u->ac, s, &wf_ops, f);
	free(s);
	if (!f->as) {
		f->done = true;
		upload_fail(u, 502, "cannot open a stream to the sandbox's agent");
		return NULL;
	}
	return f;
}

/* Returns false when the upload failed (u is then freed). */
static bool wf_add(struct upload *u, const uint8_t *p, size_t n)
{
	if (!u->cur || !n)
		return true;
	if (bytebuf_add(&u->cur->tx, p, n)) {
		upload_fail(u, 500, "out of memory");
		return false;
	}
	wf_pump(u->cur);
	return true;
}

static void wf_close(struct upload *u)
{
	if (!u->cur)
		return;
	u->cur->fin = true;
	wf_pump(u->cur);
	u->cur = NULL;
}

static void upload_destroy(struct agent_call *b)
{
	struct upload *u = (struct upload *)b;
	for (unsigned i = 0; i < u->nfiles; i++) {
		struct wfile *f = u->files[i];
		if (f->as)
			agent_cancel(f->as);
		bytebuf_free(&f->tx);
		cJSON_Delete(f->result);
		free(f->dest);
		free(f);
	}
	bytebuf_free(&u->pend);
	if (u->z_init)
		inflateEnd(&u->z);
	cJSON_Delete(u->metadata);
	access_free(&u->a);
}

static const struct agent_call_vt upload_vt = { NULL, upload_destroy };

/* Replies (status 0: a reply was sent already) and frees the upload. */
static void upload_fail(struct upload *u, int status, const char *msg)
{
	if (u->base.done)
		return;
	u->base.done = true;
	if (u->base.r && status && !u->failed)
		e2b_reply_err(u->base.r, status, "%s", msg);
	u->failed = true;
	agent_call_free(&u->base);
}

static void upload_maybe_done(struct upload *u)
{
	if (!u->body_done || u->base.done)
		return;
	for (unsigned i = 0; i < u->nfiles; i++)
		if (!u->files[i]->done)
			return;
	if (!u->nfiles) {
		upload_fail(u, 400, "the upload holds no file");
		return;
	}
	cJSON *a = cJSON_CreateArray();
	for (unsigned i = 0; i < u->nfiles; i++) {
		cJSON_AddItemToArray(a, u->files[i]->result);
		u->files[i]->result = NULL;
	}
	u->base.done = true;
	if (u->base.r)
		handler_reply_cjson(u->base.r, 200, a);
	else
		cJSON_Delete(a);
	agent_call_free(&u->base);
}

/* filename="..." (or name=) of a part's Content-Disposition. */
static char *disposition_param(const char *headers, const char *key)
{
	char pat[32];
	snprintf(pat, sizeof(pat), "%s=\"", key);
	const char *p = headers;
	while ((p = strcasestr(p, pat))) {
		if (p == headers || p[-1] == ' ' || p[-1] == ';') {
			p += strlen(pat);
			const char *q = strchr(p, '"');
			if (!q)
				return NULL;
			return strndup(p, (size_t)(q - p));
		}
		p++;
	}
	return NULL;
}

/* Returns false when the upload failed (u is then freed). */
static bool part_begin(struct upload *u, const char *headers)
{
	char *filename = disposition_param(headers, "filename");
	char *name = disposition_param(headers, "name");
	/* A single-file write names the destination in the query; several use the
	 * parts' file names. */
	const char *dest = u->a.path && *u->a.path ? u->a.path : filename;
	bool ok = dest && *dest && (!name || !strcmp(name, "file"));
	if (!ok)
		upload_fail(u, 400, "each part must be a file field (name=\"file\") with a filename, or give ?path=");
	struct wfile *f = ok ? wf_open(u, dest) : NULL;
	if (f)
		u->cur = f;  /* (on failure u is gone) */
	ok = ok && f;
	free(filename);
	free(name);
	return ok;
}

/* Consumes multipart input from u->pend; returns false once the upload failed
 * (u is then freed). */
static bool multipart_step(struct upload *u)
{
	for (;;) {
		uint8_t *p = u->pend.p + u->pend.off;
		size_t n = bytebuf_pending(&u->pend);
		switch (u->st) {
		case MP_PREAMBLE: {
			/* The first delimiter may lack its leading CRLF. */
			uint8_t *d = memmem(p, n, u->delim + 2, u->dlen - 2);
			if (!d) {
				if (n > u->dlen)
					u->pend.off += n - u->dlen;
				return true;
			}
			u->pend.off += (size_t)(d - p) + u->dlen - 2;
			u->st = MP_AFTER_DELIM;
			break;
		}
		case MP_AFTER_DELIM:
			if (n < 2)
				return true;
			if (!memcmp(p, "--", 2)) {
				u->st = MP_EPILOGUE;
				break;
			}
			if (memcmp(p, "\r\n", 2)) {
				upload_fail(u, 400, "malformed multipart body (after a boundary)");
				return false;
			}
			u->pend.off += 2;
			u->st = MP_HEADERS;
			break;
		case MP_HEADERS: {
			uint8_t *e = memmem(p, n, "\r\n\r\n", 4);
			if (!e) {
				if (n > PART_HEADERS_MAX) {
					upload_fail(u, 400, "a part's headers are over 8 KiB");
					return false;
				}
				return true;
			}
			char *h = strndup((const char *)p, (size_t)(e - p));
			if (!h) {
				upload_fail(u, 500, "out of memory");
				return false;
			}
			u->pend.off += (size_t)(e - p) + 4;
			u->st = MP_DATA;
			bool ok = part_begin(u, h);
			free(h);
			if (!ok)
				return false;
			break;
		}
		case MP_DATA: {
			uint8_t *d = memmem(p, n, u->delim, u->dlen);
			size_t take = d ? (size_t)(d - p) : n > u->dlen ? n - u->dlen : 0;
			if (!wf_add(u, p, take))
				return false;
			u->pend.off += take;
			if (!d)
				return true;
			u->pend.off += u->dlen;
			wf_close(u);
			u->st = MP_AFTER_DELIM;
			break;
		}
		case MP_EPILOGUE:
			u->pend.off = u->pend.len;
			return true;
		}
	}
}

/* Inflates held input while the agent keeps up: a few KiB of gzip may be gigabytes,
 * so what waits for the agent stays about TX_PAUSE, not a chunk's whole expansion.
 * Returns false when the upload failed (u is then freed). */
static bool gzip_step(struct upload *u)
{
	uint8_t out[64 << 10];
	u->inflating = true;
	while (bytebuf_pending(&u->pend) && !u->z_end && tx_pending(u) <= TX_PAUSE) {
		size_t n = bytebuf_pending(&u->pend);
		u->z.next_in = (Bytef *)(u->pend.p + u->pend.off);
		u->z.avail_in = (uInt)(n < (1u << 30) ? n : 1u << 30);
		u->z.next_out = out;
		u->z.avail_out = sizeof(out);
		int rc = inflate(&u->z, Z_NO_FLUSH);
		if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
			upload_fail(u, 400, "the body is not valid gzip");
			return false;
		}
		size_t made = sizeof(out) - u->z.avail_out;
		u->pend.off += n - u->z.avail_in;
		u->inflated += made;
		if (u->inflated > srv_cfg.max_file_body) {
			upload_fail(u, 413, "the body, decompressed, exceeds the limit for a file (--max-file-body)");
			return false;
		}
		if (!wf_add(u, out, made))
			return false;
		/* After the gzip stream nothing is read (as before: trailing bytes are ignored). */
		u->z_end = rc == Z_STREAM_END;
		if (rc == Z_BUF_ERROR && !made)
			break;
	}
	if (u->z_end || !bytebuf_pending(&u->pend))
		bytebuf_free(&u->pend);
	u->inflating = false;
	return true;
}

/* The body is all in and inflated: the file ends. */
static void upload_finish(struct upload *u)
{
	wf_close(u);
	u->body_done = true;
	upload_maybe_done(u);
}

/* The agent took bytes: held input is inflated on, then the body read again. */
static void upload_drained(struct upload *u)
{
	if (u->inflating || u->base.done || tx_pending(u) >= TX_PAUSE / 4)
		return;
	if (u->gzip && bytebuf_pending(&u->pend)) {
		if (!gzip_step(u) || bytebuf_pending(&u->pend))
			return;
		if (u->body_ended) {
			upload_finish(u);
			return;
		}
	}
	struct http_req *r = u->base.r;
	if (r && r->body_paused)
		http_req_resume_body(r);
}

static void upload_body(struct http_req *r, const uint8_t *p, size_t n)
{
	struct upload *u = r->ctx;
	if (!u || u->base.done)
		return;
	if (u->multipart) {
		if (bytebuf_add(&u->pend, p, n)) {
			upload_fail(u, 500, "out of memory");
			return;
		}
		if (!multipart_step(u))
			return;
		/* Drop what was consumed so pend stays about one delimiter long. */
		if (u->pend.off > (64u << 10)) {
			size_t left = bytebuf_pending(&u->pend);
			memmove(u->pend.p, u->pend.p + u->pend.off, left);
			u->pend.off = 0;
			u->pend.len = left;
		}
	} else if (u->gzip) {
		if (bytebuf_add(&u->pend, p, n)) {
			upload_fail(u, 500, "out of memory");
			return;
		}
		if (!gzip_step(u))
			return;
	} else if (!wf_add(u, p, n)) {
		return;
	}
	if (tx_pending(u) > TX_PAUSE || (u->gzip && bytebuf_pending(&u->pend)))
		http_req_pause_body(r);
}

static void upload_body_end(struct http_req *r)
{
	struct upload *u = r->ctx;
	if (!u || u->base.done)
		return;
	if (u->multipart && u->st != MP_EPILOGUE) {
		upload_fail(u, 400, "the multipart body ended before its closing boundary");
		return;
	}
	/* Input still held for the agent to catch up: the file ends after it. */
	u->body_ended = true;
	if (!(u->gzip && bytebuf_pending(&u->pend)))
		upload_finish(u);
}

static const struct http_req_ops upload_ops = { .body = upload_body, .body_end = upload_body_end,
						 .writable = agent_call_writable, .abort = agent_call_abort };

/* boundary=... of a multipart Content-Type (quoted or not). */
static int boundary_of(const char *ct, char *out, size_t outlen)
{
	const char *b = strcasestr(ct, "boundary=");
	if (!b)
		return -EINVAL;
	b += 9;
	bool quoted = *b == '"';
	b += quoted;
	size_t n = quoted ? strcspn(b, "\"") : strcspn(b, "; \t");
	if (!n || n > BOUNDARY_MAX || n >= outlen)
		return -EINVAL;
	memcpy(out, b, n);
	out[n] = 0;
	return 0;
}

#define METADATA_PREFIX "x-metadata-"
#define METADATA_MAX 64

/* envd >= 0.6.2: X-Metadata-<key> headers become the written files' metadata, keys
 * lower-cased (header names are), values printable ASCII as the SDK sends them. */
static int metadata_of(const struct http_req *r, cJSON **out)
{
	size_t pl = strlen(METADATA_PREFIX);
	*out = NULL;
	for (unsigned i = 0; i < r->nh; i++) {
		const char *name = r->h[i].name, *v = r->h[i].value;
		if (strncmp(name, METADATA_PREFIX, pl) || !name[pl])
			continue;
		for (const char *c = v; *c; c++)
			if (*c < 0x20 || *c > 0x7e)
				return -EINVAL;
		if (!*out && !(*out = cJSON_CreateObject()))
			return -ENOMEM;
		if (cJSON_GetArraySize(*out) >= METADATA_MAX || strlen(name + pl) > 200 || strlen(v) > 4096)
			return -E2BIG;
		cJSON_DeleteItemFromObjectCaseSensitive(*out, name + pl);
		cJSON_AddStringToObject(*out, name + pl, v);
	}
	return 0;
}

void e2b_files_post(struct http_req *r)
{
	struct access a;
	struct agent_conn *ac = files_begin(r, &a, "write", e2b_files_post);
	if (!ac)
		return;
	const char *ct = http_req_header(r, "content-type");
	const char *ce = http_req_header(r, "content-encoding");
	char boundary[BOUNDARY_MAX + 1];
	bool multipart = ct && !strncasecmp(ct, "multipart/form-data", 19);
	if (multipart && boundary_of(ct, boundary, sizeof(boundary))) {
		access_free(&a);
		e2b_reply_err(r, 400, "multipart/form-data needs a boundary of 1 to %d characters", BOUNDARY_MAX);
		return;
	}
	if (!multipart && (!a.path || !*a.path)) {
		access_free(&a);
		e2b_reply_err(r, 400, "an application/octet-stream upload needs ?path=");
		return;
	}
	if (ce && strcasecmp(ce, "gzip") && strcasecmp(ce, "identity")) {
		access_free(&a);
		e2b_reply_err(r, 400, "Content-Encoding %s is not supported (gzip is)", ce);
		return;
	}
	cJSON *meta;
	int mrc = metadata_of(r, &meta);
	if (mrc) {
		cJSON_Delete(meta);
		access_free(&a);
		if (mrc == -E2BIG)
			e2b_reply_err(r, 400, "at most %d X-Metadata-* headers, keys up to 200 and values up to 4096 "
				      "bytes", METADATA_MAX);
		else
			e2b_reply_err(r, 400, "X-Metadata-* values must be printable US-ASCII");
		return;
	}
	struct upload *u = e2b_call_new(r, sizeof(*u), &upload_vt);
	if (!u) {
		cJSON_Delete(meta);
		access_free(&a);
		return;
	}
	u->a = a;
	u->ac = ac;
	u->metadata = meta;
	r->ops = &upload_ops;
	if (multipart) {
		u->multipart = true;
		u->dlen = (size_t)snprintf(u->delim, sizeof(u->delim), "\r\n--%s", boundary);
		return;
	}
	if (ce && !strcasecmp(ce, "gzip")) {
		/* 16 + MAX_WBITS: a gzip header, not raw zlib. */
		if (inflateInit2(&u->z, 16 + MAX_WBITS) != Z_OK) {
			upload_fail(u, 500, "cannot start gzip decoding");
			return;
		}
		u->z_init = true;
		u->gzip = true;
	}
	struct wfile *f = wf_open(u, a.path);
	if (f)
		u->cur = f;
}
