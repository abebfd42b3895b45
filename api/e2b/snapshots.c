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
#include "api/mitos/cluster_list.h"
#include "api/mitos/handlers.h"
#include "api/sandbox/node.h"
#include "api/sandbox/registry.h"

#define E2B_TAG ":default"
#define SNAP_LIST_DEFAULT 100
#define SNAP_LIST_MAX 1000  /* as the sandbox list's: a cluster's peers are asked one more */

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

/* A snapshot in a list: ordered newest first by (created ms, snapshotID), the key a
 * page token names ("<ms>-<snapshotID>") and a cluster's merge sorts by too. */
struct snap_item {
	uint64_t ms;
	char id[ID_MAX + sizeof(E2B_TAG)];
	const struct template_rec *t;
};

static int by_newest(const void *a, const void *b)
{
	const struct snap_item *x = a, *y = b;
	if (x->ms != y->ms)
		return x->ms > y->ms ? -1 : 1;
	return -strcmp(x->id, y->id);
}

/* Whether t passes ?name= (NAME, NAMESPACE/NAME, NAME:TAG; on a tagged node NAME also
 * finds NAME-TAG, the name it took) and ?sandboxID=. */
static bool snapshot_matches(const struct template_rec *t, const char *name, const char *sbid)
{
	if (sbid && strcmp(t->snap_of, sbid))
		return false;
	if (!name)
		return true;
	const char *slash = strrchr(name, '/');
	char want[ID_MAX + 1], tagged[ID_MAX + 1];
	if (!e2b_template_name(slash ? slash + 1 : name, want, sizeof(want)))
		return false;
	return !strcmp(want, t->name) || (!node_sandbox_id_for(want, tagged, sizeof(tagged)) && !strcmp(tagged, t->name));
}

void e2b_snapshots_list(struct http_req *r)
{
	char *sbid = http_query_get(r->query, "sandboxID");
	char *name = http_query_get(r->query, "name");
	char *lim = http_query_get(r->query, "limit");
	char *next = http_query_get(r->query, "nextToken");
	char *end = NULL;
	long limit = lim ? strtol(lim, &end, 10) : SNAP_LIST_DEFAULT;
	unsigned n = 0, k = 0;
	for (const struct template_rec *t = templates_first(); t; t = t->next)
		n++;
	struct snap_item *all = calloc(n ? n : 1, sizeof(*all));
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
		if (t->source[0] && snapshot_matches(t, name, sbid)) {
			all[k] = (struct snap_item){ .ms = t->created_ms, .t = t };
			snprintf(all[k++].id, sizeof(all[0].id), "%s" E2B_TAG, t->name);
		}
	qsort(all, k, sizeof(*all), by_newest);
	unsigned i = 0;
	if (next && *next) {
		struct snap_item key = { .ms = strtoull(next, NULL, 10) };
		const char *dash = strchr(next, '-');
		snprintf(key.id, sizeof(key.id), "%s", dash ? dash + 1 : "");
		while (i < k && by_newest(&all[i], &key) < 0)
			i++;
	}
	/* Through a cluster router, one more: the merge learns where the next page starts. */
	bool cluster = cluster_list_wanted(r);
	for (unsigned taken = 0; i < k && taken < (unsigned)limit + cluster; i++, taken++) {
		char ts[40];
		cJSON *o = snapshot_info(all[i].t);
		registry_rfc3339(all[i].ms, ts, sizeof(ts));
		cJSON_AddStringToObject(o, "createdAt", ts);
		cJSON_AddItemToArray(a, o);
	}
	if (cluster)
		e2b_cluster_page(r, a, "/snapshots", (unsigned)limit, true);
	else
		e2b_reply_page(r, a, i < k ? all[i].ms : 0, i < k ? all[i].id : NULL);
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
