/* E2B's snapshots: POST /sandboxes/{id}/snapshots, GET /snapshots, and DELETE
 * /templates/{id} for them (api/sandbox/snapshots.c keeps them). A snapshot is a
 * template to E2B: Sandbox.create(snapshotID) starts from it. A node has no teams, so
 * no namespace, and keeps one build per name: its tag is always "default". */
#include "api/e2b/internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "api/http/errors.h"
#include "api/http/http.h"
#include "api/mitos/handlers.h"

#define E2B_TAG ":default"
#define SNAP_LIST_MAX 100

bool e2b_template_name(const char *id, char *out, size_t outlen)
{
	const char *colon = strchr(id, ':');
	size_t n = colon ? (size_t)(colon - id) : strlen(id);
	if ((colon && strcmp(colon, E2B_TAG)) || n >= outlen)
		return false;
	memcpy(out, id, n);
	out[n] = 0;
	return api_valid_id(out);
}

/* SnapshotInfo: the id with its tag; names, the name it was given (none: unnamed). */
static cJSON *snapshot_info(const struct template_rec *t)
{
	char id[ID_MAX + sizeof(E2B_TAG)];
	snprintf(id, sizeof(id), "%s" E2B_TAG, t->name);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "snapshotID", id);
	cJSON *names = cJSON_AddArrayToObject(o, "names");
	if (t->snap_named)
		cJSON_AddItemToArray(names, cJSON_CreateString(t->name));
	return o;
}

/* E2B's template ids: 20 lowercase letters and digits. */
static void unnamed_id(char *out)
{
	static const char set[] = "abcdefghijklmnopqrstuvwxyz0123456789";
	do {
		unsigned char rnd[20];
		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
			memset(rnd, 0, sizeof(rnd));
		for (size_t i = 0; i < sizeof(rnd); i++)
			out[i] = set[rnd[i] % 36];
		out[20] = 0;
	} while (templates_find(out));
}

/* r->ctx is the take while it runs; the take's ctx is r. */
static void snap_call_abort(struct http_req *r)
{
	/* The snapshot is still taken and kept; its answer has nobody to go to. */
	snap_take_detach(r->ctx);
	r->ctx = NULL;
}

static const struct http_req_ops snap_call_ops = { .abort = snap_call_abort };

static void snapshot_taken(void *ctx, enum api_err err, const char *msg, struct template_rec *t)
{
	struct http_req *r = ctx;
	r->ctx = NULL;
	r->ops = NULL;
	if (!t)
		e2b_reply_err(r, api_err_status(err), "cannot snapshot sandbox %s: %s", r->sandbox_id, msg);
	else
		handler_reply_cjson(r, 201, snapshot_info(t));
}

void e2b_snapshot_create(struct http_req *r)
{
	struct sandbox *sb = e2b_find_or_404(r);
	cJSON *b = sb ? e2b_json_body(r) : NULL;
	if (!b)
		return;
	const cJSON *nm = cJSON_GetObjectItemCaseSensitive(b, "name");
	char name[ID_MAX + 1];
	const char *bad = NULL;
	if (nm && !cJSON_IsNull(nm) && !cJSON_IsString(nm))
		bad = "name must be a string";
	else if (cJSON_IsString(nm) && strchr(nm->valuestring, '/'))
		bad = "a snapshot's name has no team namespace on a node: give NAME or NAME:default";
	else if (cJSON_IsString(nm) && !e2b_template_name(nm->valuestring, name, sizeof(name)))
		bad = "name must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$, with no tag or the tag default (a node "
		      "keeps one build per snapshot name)";
	bool named = cJSON_IsString(nm);
	cJSON_Delete(b);
	if (bad) {
		e2b_reply_err(r, 400, "%s", bad);
		return;
	}
	if (!named)
		unnamed_id(name);
	struct snap_take *take;
	struct mitos_err e = { 0 };
	if (snapshots_take(sb, name, named, snapshot_taken, r, &take, &e)) {
		e2b_reply_err(r, api_err_status(e.kind), "%s", e.msg);
		return;
	}
	r->ctx = take;
	r->ops = &snap_call_ops;
}

static int by_newest(const void *a, const void *b)
{
	const struct template_rec *x = *(const struct template_rec *const *)a, *y = *(const struct template_rec *const *)b;
	if (x->created_ms != y->created_ms)
		return x->created_ms > y->created_ms ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* Whether t passes ?name= (NAME, NAMESPACE/NAME, NAME:TAG) and ?sandboxID=. */
static bool snapshot_matches(const struct template_rec *t, const char *name, const char *sbid)
{
	if (sbid && strcmp(t->snap_of, sbid))
		return false;
	if (!name)
		return true;
	const char *slash = strrchr(name, '/');
	char want[ID_MAX + 1];
	return e2b_template_name(slash ? slash + 1 : name, want, sizeof(want)) && !strcmp(want, t->name);
}

void e2b_snapshots_list(struct http_req *r)
{
	char *sbid = http_query_get(r->query, "sandboxID");
	char *name = http_query_get(r->query, "name");
	char *lim = http_query_get(r->query, "limit");
	char *next = http_query_get(r->query, "nextToken");
	char *end = NULL;
	long limit = lim ? strtol(lim, &end, 10) : SNAP_LIST_MAX;
	unsigned n = 0, k = 0;
	for (const struct template_rec *t = templates_first(); t; t = t->next)
		n++;
	const struct template_rec **all = calloc(n ? n : 1, sizeof(*all));
	cJSON *a = cJSON_CreateArray();
	if (!all || !a) {
		e2b_reply_err(r, 500, "out of memory");
		goto out;
	}
	if ((end && *end) || limit < 1 || limit > SNAP_LIST_MAX) {
		e2b_reply_err(r, 400, "limit must be from 1 to %d", SNAP_LIST_MAX);
		goto out;
	}
	for (const struct template_rec *t = templates_first(); t; t = t->next)
		if (t->source[0] && snapshot_matches(t, name, sbid))
			all[k++] = t;
	qsort(all, k, sizeof(*all), by_newest);
	/* The token is the position "<created ms>-<name>" of the next item. */
	unsigned i = 0;
	if (next && *next) {
		unsigned long long ms = strtoull(next, NULL, 10);
		const char *dash = strchr(next, '-');
		struct template_rec key = { .created_ms = ms };
		snprintf(key.name, sizeof(key.name), "%s", dash ? dash + 1 : "");
		const struct template_rec *kp = &key;
		while (i < k && by_newest(&all[i], &kp) < 0)
			i++;
	}
	for (unsigned taken = 0; i < k && taken < (unsigned)limit; i++, taken++)
		cJSON_AddItemToArray(a, snapshot_info(all[i]));
	e2b_reply_page(r, a, i < k ? all[i]->created_ms : 0, i < k ? all[i]->name : NULL);
	a = NULL;
out:
	cJSON_Delete(a);
	free(all);
	free(sbid);
	free(name);
	free(lim);
	free(next);
}

void e2b_template_delete(struct http_req *r)
{
	char name[ID_MAX + 1];
	if (!e2b_template_name(r->param, name, sizeof(name))) {
		e2b_reply_err(r, 404, "no snapshot %s", r->param);
		return;
	}
	struct mitos_err e = { 0 };
	if (snapshots_delete(name, &e)) {
		e2b_reply_err(r, api_err_status(e.kind), "%s", e.msg);
		return;
	}
	http_reply(r, 204, NULL, NULL, 0, NULL);
}
