/* GET /v1/sandboxes across a cluster: a router cannot merge lists, so the node it
 * picks asks every node of its --peers file (itself included) for their own list,
 * on a worker thread with a deadline, and answers the union (docs/cluster.md). */
#ifndef MITOS_API_CLUSTER_LIST_H
#define MITOS_API_CLUSTER_LIST_H

#include <stdbool.h>

struct http_req;
struct cJSON;

/* The request asks for the cluster's list (X-Mitos-List-Scope: cluster) and this
 * node has --peers. */
bool cluster_list_wanted(const struct http_req *r);
/* A merged list that is paged (E2B's GET /v2/sandboxes): every node answers its
 * first limit + 1 items after the token in the same order, so the cluster's first
 * limit + 1 are among them; the merge sorts by (start time, id), keeps limit and
 * hands out the key of the next one as X-Next-Token, which every node accepts. */
struct cluster_page {
	unsigned limit;
	bool desc;
};

/* Takes local, this node's list in the shape the handler answers (a JSON array,
 * or an object whose "sandboxes" is one), adds the peers' sandboxes to it (by
 * "id", or E2B's "sandboxID") and replies. Peers that did not answer are named in
 * X-Mitos-Unreachable-Nodes. Each peer is asked GET path (the same list endpoint,
 * "/v1/sandboxes" or E2B's "/v2/sandboxes") with query, or the request's own query
 * string when query is NULL. page is NULL for an unpaged list. */
void cluster_list_start(struct http_req *r, struct cJSON *local, const char *path, const char *query,
			const struct cluster_page *page);

#endif
