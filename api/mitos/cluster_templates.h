/* POST /v1/templates across a cluster: a router sends a create to one node, so the
 * node it picks makes the template on every node of its --peers file (itself
 * included) and answers once they all did, each node's content hash beside it
 * (docs/cluster.md). */
#ifndef MITOS_API_CLUSTER_TEMPLATES_H
#define MITOS_API_CLUSTER_TEMPLATES_H

#include <stdbool.h>

struct http_req;

/* The request asks for it (X-Mitos-Template-Scope: cluster) and this node has --peers. */
bool cluster_templates_wanted(const struct http_req *r);
/* Sends the request's body to every node's POST /v1/templates and replies: the
 * template as the nodes answered it plus "nodes": [{node, status, content_hash |
 * error}]; 200 when every node has it. */
void cluster_templates_start(struct http_req *r);

#endif
