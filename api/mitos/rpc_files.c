/* The file calls: ReadFile, List, Stat, Mkdir, Remove, WriteFile, and whole trees
 * as tar (Archive out, Upload in). Content moves under the agent's flow control in
 * both directions: neither a slow client nor a fast one grows our memory. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/proto.h"
#include "api/http/http.h"
#include "api/http/json_request.h"
#include "api/mitos/handlers.h"
#include "api/mitos/rpc_call.h"
#include "api/sandbox/sandboxes.h"

#define LIST_PAGE_DEFAULT 1000

/* An agent ENTRY as the contract's FileInfo. */
static cJSON *file_info(const cJSON *e)
{
	cJSON *o = cJSON_CreateObject();
	const char *name = rpc_jstr(e, "name"), *path = rpc_jstr(e, "path"), *type = rpc_jstr(e, "type");
	if (name && *name)
		cJSON_AddStringToObject(o, "name", name);
	if (path && *path)
		cJSON_AddStringToObject(o, "path", path);
	if (type && !strcmp(type, "dir"))
		cJSON_AddBoolToObject(o, "isDir", 1);
	rpc_add_int64(o, "size", rpc_agent_int64(cJSON_GetObjectItem(e, "size")));
	double mode = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "mode"));
	if (mode > 0 && mode < 4294967296.0)
		cJSON_AddNumberToObject(o, "mode", mode);
	rpc_add_int64(o, "modifiedAtUnix", rpc_agent_int64(cJSON_GetObjectItem(e, "mtime_ns")) / 1000000000);
	return o;
}

/* ---- ReadFile ---- */

static void read_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin; (void)ch;
	struct rpc_call *c = s->ctx;
	if (n)
		rpc_data_msg(c, "data", p, n);
}

static void read_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	if (rpc_end_failed(c, payload, why))
		return;
	rpc_call_end(c, NULL, 0, NULL, NULL);
}

static const struct astream_ops read_ops = { read_data, NULL, read_end, NULL, rpc_call_room };

void rpc_read_start(struct rpc_call *c, cJSON *req)
{
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "read");
	if (rpc_add_path(c, open, req, "path"))
		rpc_call_open(c, open, &read_ops);
}

/* ---- List and the other unary file calls ---- */

static void list_event(struct astream *s, cJSON *ev)
{
	struct rpc_call *c = s->ctx;
	const cJSON *e;
	cJSON_ArrayForEach(e, cJSON_GetObjectItem(ev, "entries")) {
		if (!list_budget_take(&c->lb, e)) {
			rpc_call_fail(c, AE_INTERNAL, "the sandbox's agent listed more than 100000 entries or 64 MiB", NULL);
			return;
		}
		const char *name = rpc_jstr(e, "name");
		if (!c->filter || (name && !fnmatch(c->filter, name, 0)))
			cJSON_AddItemToArray(c->entries, file_info(e));
	}
}

static int by_name(const void *a, const void *b)
{
	const char *x = rpc_jstr(*(const cJSON *const *)a, "name"), *y = rpc_jstr(*(const cJSON *const *)b, "name");
	return strcmp(x ? x : "", y ? y : "");
}

/* A parent that is a file lists as itself (as ls(1) does): the SDK's files.exists()
 * lists the path it asks about. */
static void list_file_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	if (rpc_end_failed(c, payload, why))
		return;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "entries"), file_info(cJSON_GetObjectItem(payload, "entry")));
	rpc_call_end(c, o, 0, NULL, NULL);
}

static const struct astream_ops list_file_ops = { NULL, NULL, list_file_end, NULL, NULL };

/* Pages are offsets into the listing sorted by name, so they hold still between calls. */
static void list_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	const char *ecode = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(payload, "error"), "code"));
	if (ecode && !strcmp(ecode, "not_a_directory") && c->parent) {
		cJSON *open = cJSON_CreateObject();
		cJSON_AddStringToObject(open, "op", "stat");
		cJSON_AddStringToObject(open, "path", c->parent);
		rpc_call_open(c, open, &list_file_ops);
		return;
	}
	if (rpc_end_failed(c, payload, why))
		return;
	size_t n = (size_t)cJSON_GetArraySize(c->entries);
	cJSON **v = malloc((n ? n : 1) * sizeof(*v));
	if (!v) {
		rpc_call_fail(c, AE_INTERNAL, "out of memory", NULL);
		return;
	}
	size_t i = 0;
	for (cJSON *e = c->entries->child, *next; e; e = next, i++) {
		next = e->next;
		e->next = e->prev = NULL;
		v[i] = e;
	}
	c->entries->child = NULL;
	qsort(v, n, sizeof(*v), by_name);
	cJSON *o = cJSON_CreateObject();
	cJSON *page = cJSON_AddArrayToObject(o, "entries");
	size_t end = c->page_off + (size_t)c->page_size;
	for (i = 0; i < n; i++) {
		if (i >= c->page_off && i < end)
			cJSON_AddItemToArray(page, v[i]);
		else
			cJSON_Delete(v[i]);
	}
	free(v);
	if (end < n) {
		char tok[16];
		snprintf(tok, sizeof(tok), "%zu", end);
		cJSON_AddStringToObject(o, "nextPageToken", tok);
	}
	rpc_call_end(c, o, 0, NULL, NULL);
}

static const struct astream_ops list_ops = { NULL, list_event, list_end, NULL, NULL };

/* ListRequest {parent, pageSize, pageToken, filter (a shell pattern on names)}. */
void rpc_list_start(struct rpc_call *c, cJSON *req)
{
	double size = LIST_PAGE_DEFAULT, off = 0;
	const char *tok = rpc_jstr(req, "pageToken"), *filter = rpc_jstr(req, "filter");
	if (rpc_req_int(req, "pageSize", 0, 100000, &size) || (cJSON_HasObjectItem(req, "filter") && !filter)) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "pageSize must be from 0 to 100000; filter a string", NULL);
		return;
	}
	if ((tok && *tok && (strlen(tok) > 6 || strspn(tok, "0123456789") != strlen(tok))) ||
	    (cJSON_HasObjectItem(req, "pageToken") && !tok)) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "pageToken is not one this server gave", NULL);
		return;
	}
	if (tok && *tok)
		off = strtod(tok, NULL);
	c->page_size = size > 0 ? (uint32_t)size : LIST_PAGE_DEFAULT;
	c->page_off = (uint32_t)off;
	if (filter && *filter && !(c->filter = strdup(filter))) {
		rpc_call_fail(c, AE_INTERNAL, "out of memory", NULL);
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "list");
	if (!rpc_add_path(c, open, req, "parent"))
		return;
	c->entries = cJSON_CreateArray();
	c->parent = strdup(rpc_jstr(req, "parent"));
	rpc_call_open(c, open, &list_ops);
}

static void simple_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	const char *ecode = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(payload, "error"), "code"));
	/* Mkdir makes sure a directory is there, as mkdir -p: one that exists is success. */
	bool mkdir_exists = !strcmp(c->m->name, "Mkdir") && ecode && !strcmp(ecode, "exists");
	if (!mkdir_exists && rpc_end_failed(c, payload, why))
		return;
	bool stat = !strcmp(c->m->name, "Stat");
	rpc_call_end(c, stat ? file_info(cJSON_GetObjectItem(payload, "entry")) : cJSON_CreateObject(), 0, NULL, NULL);
}

static const struct astream_ops simple_ops = { NULL, NULL, simple_end, NULL, NULL };

/* Stat {path}, Remove {path, recursive}, Mkdir {path} (with its parents). */
void rpc_file_start(struct rpc_call *c, cJSON *req)
{
	const char *name = c->m->name;
	const cJSON *rec = cJSON_GetObjectItem(req, "recursive");
	if (rec && !cJSON_IsBool(rec)) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "recursive must be a boolean", NULL);
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", !strcmp(name, "Stat") ? "stat" : !strcmp(name, "Remove") ? "remove" : "mkdir");
	if (!rpc_add_path(c, open, req, "path"))
		return;
	if (!strcmp(name, "Remove"))
		cJSON_AddBoolToObject(open, "recursive", cJSON_IsTrue(rec));
	if (!strcmp(name, "Mkdir"))
		cJSON_AddBoolToObject(open, "parents", 1);
	rpc_call_open(c, open, &simple_ops);
}

/* ---- client streams: WriteFile and Upload ---- */

/* WriteFileRequest is the oneof {open: {path, mode}} | {data}, UploadRequest
 * {open: {dest}} | {chunk} (a tar, extracted under dest): the first message
 * opens, the others carry bytes. */
static bool is_upload(const struct rpc_call *c)
{
	return !strcmp(c->m->name, "Upload");
}

static void wf_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	if (rpc_end_failed(c, payload, why))
		return;
	if (!c->wf_body_done) {
		rpc_call_fail(c, AE_INTERNAL, "the agent ended the call before the body did", NULL);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON *bytes = cJSON_GetObjectItem(payload, "bytes");
	rpc_add_int64(o, "bytesWritten", cJSON_IsNumber(bytes) ? rpc_agent_int64(bytes) : (int64_t)c->wf_bytes);
	rpc_call_end(c, o, 0, NULL, NULL);
}

static const struct astream_ops wf_agent_ops = { NULL, NULL, wf_end, rpc_as_writable, NULL };

static int wf_fail(struct rpc_call *c, cJSON *m, enum api_err e, const char *msg)
{
	cJSON_Delete(m);
	rpc_call_fail(c, e, msg, NULL);
	return -EINVAL;
}

static int wf_message(struct rpc_call *c, const uint8_t *msg, size_t len)
{
	bool up = is_upload(c);
	const char *what = up ? "UploadRequest" : "WriteFileRequest", *dkey = up ? "chunk" : "data";
	const char *fields = up ? "dest" : "path, mode";
	char bad[200];
	cJSON *m = json_parse_request(msg, len);
	const cJSON *open = cJSON_GetObjectItem(m, "open"), *d = cJSON_GetObjectItem(m, dkey);
	double mode = 0644;
	bad[0] = 0;
	if (!cJSON_IsObject(m))
		snprintf(bad, sizeof(bad), "each %s must be a JSON object", what);
	else if (json_text_has_nul(msg, len))
		snprintf(bad, sizeof(bad), "%s", JSON_NUL_MESSAGE);
	else if (open && d)
		snprintf(bad, sizeof(bad), "a %s carries open or %s, not both", what, dkey);
	else if (!c->wf_opened && !open)
		snprintf(bad, sizeof(bad), "the first %s must carry the open oneof (%s)", what, fields);
	else if (c->wf_opened && open)
		snprintf(bad, sizeof(bad), "only the first %s carries open", what);
	else if (d && !cJSON_IsString(d))
		snprintf(bad, sizeof(bad), "%s must be base64 text", dkey);
	else if (open && (!cJSON_IsObject(open) || (!up && rpc_req_int(open, "mode", 0, 07777, &mode))))
		snprintf(bad, sizeof(bad), "open must be {%s}%s", fields,
			 up ? "" : " with mode a permission number up to 07777");
	if (bad[0])
		return wf_fail(c, m, AE_INVALID_ARGUMENT, bad);
	if (open) {
		cJSON *aopen = cJSON_CreateObject();
		cJSON_AddStringToObject(aopen, "op", up ? "untar" : "write");
		if (!rpc_add_path(c, aopen, open, up ? "dest" : "path")) {
			cJSON_Delete(m);
			return -EINVAL;
		}
		if (!up)
			cJSON_AddNumberToObject(aopen, "mode", mode ? mode : 0644);
		c->wf_opened = true;
		if (!rpc_call_open(c, aopen, &wf_agent_ops)) {
			cJSON_Delete(m);
			return -EIO;
		}
	}
	if (d && *d->valuestring) {
		size_t k;
		int rc = rpc_tx_add_base64(c, d->valuestring, &k);
		if (rc) {
			snprintf(bad, sizeof(bad), "%s must be base64", dkey);
			return wf_fail(c, m, rc == -ENOMEM ? AE_INTERNAL : AE_INVALID_ARGUMENT,
				       rc == -ENOMEM ? "out of memory" : bad);
		}
		c->wf_bytes += (uint64_t)k;
	}
	cJSON_Delete(m);
	rpc_tx_pump(c);
	return 0;
}

static void wf_body(struct http_req *r, const uint8_t *p, size_t n)
{
	rpc_stream_body(r, p, n, wf_message);
}

static void wf_body_end(struct http_req *r)
{
	struct rpc_call *c = r->ctx;
	if (!c || c->base.done)
		return;
	c->wf_body_done = true;
	if (!rpc_stream_body_end(c, c->wf_opened, is_upload(c) ? "the first UploadRequest must carry the open oneof "
				 "(dest)" : "the first WriteFileRequest must carry the open oneof (path, mode)"))
		return;
	c->tx_fin = true;
	rpc_tx_pump(c);
}

static const struct http_req_ops client_stream_ops = { .body = wf_body, .body_end = wf_body_end,
						       .writable = agent_call_writable, .abort = agent_call_abort };

void rpc_client_stream(struct http_req *r)
{
	const struct rpc_method *m = rpc_method_find(r->param);
	struct rpc_call *c = m ? rpc_call_new(r, m) : NULL;
	if (!c) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	r->ops = &client_stream_ops;
	const char *ct = http_req_header(r, "content-type");
	/* A client stream: its answer and errors are enveloped whatever was sent. */
	c->envelopes = true;
	if (!connect_ct_is_stream_json(ct)) {
		char msg[100];
		snprintf(msg, sizeof(msg), "%s is a client stream: send application/connect+json", m->name);
		rpc_call_fail(c, AE_UNSUPPORTED_MEDIA_TYPE, msg, NULL);
		return;
	}
	connect_dec_init(&c->dec, RPC_MAX_ENVELOPE);
	if (c->bad_timeout) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "Connect-Timeout-Ms must be 1 to 10 digits", NULL);
		return;
	}
	/* Fail early, before the client sends megabytes for nothing. */
	struct sandbox *sb = sandbox_find(r->sandbox_id);
	if (!sb || sb->state != SB_RUNNING)
		rpc_call_agent(c);
}

/* ---- Archive (a tar of a tree, out) ---- */

static void archive_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)fin; (void)ch;
	if (n)
		rpc_data_msg(s->ctx, "data", p, n);
}

/* The last Chunk says eof, as the real server's does. */
static void archive_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	if (rpc_end_failed(c, payload, why))
		return;
	rpc_stream_msg(c, "{\"eof\":true}", 12, 0);
	rpc_call_end(c, NULL, 0, NULL, NULL);
}

static const struct astream_ops archive_ops = { archive_data, NULL, archive_end, NULL, rpc_call_room };

/* ArchiveRequest {path, direction}: DOWNLOAD only; a tar goes in through Upload. */
void rpc_archive_start(struct rpc_call *c, cJSON *req)
{
	const cJSON *dir = cJSON_GetObjectItemCaseSensitive(req, "direction");
	bool download = (cJSON_IsString(dir) && !strcmp(dir->valuestring, "DOWNLOAD")) ||
			(cJSON_IsNumber(dir) && dir->valuedouble == 1);
	if (!download) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "Archive takes direction DOWNLOAD (it streams a tar of path); "
			      "to extract a tar use the Upload call", NULL);
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "archive");
	if (rpc_add_path(c, open, req, "path"))
		rpc_call_open(c, open, &archive_ops);
}
