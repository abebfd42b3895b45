#include "api/mitos/cluster_list.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/mitos/cluster_fanout.h"
#include "api/mitos/handlers.h"
#include "api/sandbox/registry.h"
#include "api/http/http.h"
#include "api/http/server.h"
#include "api/http/uring.h"

#define CL_DEADLINE_MS 3000
#define CL_REQ_MAX 8192

struct cl_ctx {
	struct cJSON *local;
	bool paged;
	struct cluster_page page;
};

bool cluster_list_wanted(const struct http_req *r)
{
	const char *scope = http_req_header(r, "x-mitos-list-scope");
	return srv_cfg.peers_file && scope && !strcasecmp(scope, "cluster");
}

static cJSON *list_array(cJSON *doc)
{
	return cJSON_IsArray(doc) ? doc : cJSON_GetObjectItem(doc, "sandboxes");
}

/* The Mitos list names a sandbox "id", E2B's "sandboxID", E2B's snapshots "snapshotID". */
static const char *item_id(const cJSON *it)
{
	const char *v = cJSON_GetStringValue(cJSON_GetObjectItem(it, "id"));
	if (!v)
		v = cJSON_GetStringValue(cJSON_GetObjectItem(it, "sandboxID"));
	return v ? v : cJSON_GetStringValue(cJSON_GetObjectItem(it, "snapshotID"));
}

static bool has_id(const cJSON *arr, const char *id)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, arr) {
		const char *v = item_id(it);
		if (v && !strcmp(v, id))
			return true;
	}
	return false;
}

/* E2B items carry "startedAt" (sandboxes) or "createdAt" (snapshots) as RFC 3339 with
 * milliseconds (registry_rfc3339). */
static uint64_t item_start_ms(const cJSON *it)
{
	uint64_t ms;
	const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(it, "startedAt"));
	if (!t)
		t = cJSON_GetStringValue(cJSON_GetObjectItem(it, "createdAt"));
	return registry_parse_rfc3339(t, &ms) ? 0 : ms;
}

struct keyed_item {
	uint64_t start_ms;
	const char *id;
	cJSON *item;
};

static int by_key(const void *a, const void *b)
{
	const struct keyed_item *x = a, *y = b;
	if (x->start_ms != y->start_ms)
		return x->start_ms < y->start_ms ? -1 : 1;
	return strcmp(x->id, y->id);
}

/* Sorts arr in the page's order, keeps its first limit items and writes the key of
 * the next one ("<start ms>-<id>", the token each node's own list hands out) into
 * next, or leaves next empty when nothing follows. */
static int page_cut(cJSON *arr, const struct cluster_page *pg, char *next, size_t nextlen)
{
	next[0] = 0;
	int n = cJSON_GetArraySize(arr);
	if (n <= 0)
		return 0;
	struct keyed_item *k = calloc((size_t)n, sizeof(*k));
	if (!k)
		return -ENOMEM;
	int i = 0;
	for (cJSON *it = arr->child; it && i < n; it = it->next, i++) {
		const char *id = item_id(it);
		k[i] = (struct keyed_item){ item_start_ms(it), id ? id : "", it };
	}
	qsort(k, (size_t)n, sizeof(*k), by_key);
	/* Rebuild the array in order: detach every item, then append the kept ones. */
	arr->child = NULL;
	for (i = 0; i < n; i++) {
		const struct keyed_item *e = &k[pg->desc ? n - 1 - i : i];
		e->item->next = e->item->prev = NULL;
		if ((unsigned)i < pg->limit)
			cJSON_AddItemToArray(arr, e->item);
		else if ((unsigned)i == pg->limit)
			snprintf(next, nextlen, "%llu-%s", (unsigned long long)e->start_ms, e->id);
	}
	for (i = (int)pg->limit; i < n; i++)
		cJSON_Delete(k[pg->desc ? n - 1 - i : i].item);
	free(k);
	return 0;
}

static void cl_done(struct http_req *r, void *ctx, const struct fanout_reply *rep, unsigned n, const char *error)
{
	struct cl_ctx *x = ctx;
	if (!r) {
		cJSON_Delete(x->local);
		free(x);
		return;
	}
	cJSON *arr = list_array(x->local);
	char unreachable[512] = "";
	size_t ul = 0;
	for (unsigned i = 0; i < n; i++) {
		cJSON *doc = rep[i].status == 200 ? cJSON_ParseWithLength(rep[i].body, rep[i].body_len) : NULL;
		cJSON *items = list_array(doc);
		if (!cJSON_IsArray(items)) {
			if (ul + strlen(rep[i].node) + 3 < sizeof(unreachable))
				ul += (size_t)snprintf(unreachable + ul, sizeof(unreachable) - ul, "%s%s", ul ? ", " : "",
						       rep[i].node);
			cJSON_Delete(doc);
			continue;
		}
		cJSON *it;
		cJSON_ArrayForEach(it, items) {
			const char *id = item_id(it);
			if (id && !has_id(arr, id))
				cJSON_AddItemToArray(arr, cJSON_Duplicate(it, 1));
		}
		cJSON_Delete(doc);
	}
	if (error[0] && ul + strlen(error) + 3 < sizeof(unreachable))
		ul += (size_t)snprintf(unreachable + ul, sizeof(unreachable) - ul, "%s%s", ul ? ", " : "", error);
	char next[200] = "";
	char *body = NULL;
	if (x->paged && page_cut(arr, &x->page, next, sizeof(next)))
		arr = NULL;
	else
		body = cJSON_PrintUnformatted(x->local);
	char extra[900] = "";
	size_t el = 0;
	if (ul)
		el += (size_t)snprintf(extra, sizeof(extra), "X-Mitos-Unreachable-Nodes: %s\r\n", unreachable);
	if (next[0])
		snprintf(extra + el, sizeof(extra) - el, "X-Next-Token: %s\r\n", next);
	if (body)
		http_reply(r, 200, "application/json", body, strlen(body), extra);
	else
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
	free(body);
	cJSON_Delete(x->local);
	free(x);
}

void cluster_list_start(struct http_req *r, cJSON *local, const char *path, const char *query,
			const struct cluster_page *page)
{
	struct cl_ctx *x = calloc(1, sizeof(*x));
	if (!x || !cJSON_IsArray(list_array(local))) {
		free(x);
		cJSON_Delete(local);
		http_reply_error(r, AE_INTERNAL, "cannot start the cluster list", NULL, NULL);
		return;
	}
	x->local = local;
	if (page) {
		x->paged = true;
		x->page = *page;
	}
	/* Peers check the client's own token (Authorization, or E2B's X-API-KEY): the
	 * nodes of a cluster share one. */
	char auth[2300], request[CL_REQ_MAX];
	cluster_client_auth(r, auth, sizeof(auth));
	if (!query)
		query = r->query;
	const char *q = query && *query && cluster_printable(query, false) ? query : NULL;
	int n = snprintf(request, sizeof(request),
			 "GET %s%s%s HTTP/1.0\r\nHost: mitos-peer\r\n%sConnection: close\r\n\r\n",
			 path, q ? "?" : "", q ? q : "", auth);
	int rc = n > 0 && (size_t)n < sizeof(request) ? cluster_fanout(r, request, (size_t)n, CL_DEADLINE_MS, cl_done, x)
						       : -E2BIG;
	if (rc) {
		cJSON_Delete(local);
		free(x);
		if (rc == -EBUSY)
			http_reply_error(r, AE_UNAVAILABLE, "too many cluster-wide requests are running on this node",
					 NULL, "retry in a moment");
		else
			http_reply_error(r, AE_INTERNAL, "cannot start the cluster list", NULL, NULL);
	}
}
