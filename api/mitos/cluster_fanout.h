/* One request to every node of the cluster: the --peers file's nodes (this one
 * included), at once, on a worker thread with a deadline; the answers come back on
 * the event loop. What a router cannot do (merge lists, make a template on every
 * node) is built on it (cluster_list.c, cluster_templates.c). */
#ifndef MITOS_API_CLUSTER_FANOUT_H
#define MITOS_API_CLUSTER_FANOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct http_req;

struct fanout_reply {
	const char *node;   /* host:port as written in the peers file */
	int status;         /* the HTTP status, 0 when the node did not answer in time */
	const char *body;   /* NUL-terminated, "" without one */
	size_t body_len;
};

/* r is NULL when the client went away meanwhile; replies live until this returns.
 * error says why the peers file could not be used ("" when it could). */
typedef void (*fanout_done_fn)(struct http_req *r, void *ctx, const struct fanout_reply *replies, unsigned n,
			       const char *error);

/* Sends request (a whole HTTP/1.0 request, copied) to every node and calls done;
 * takes over r's callbacks until then. -EBUSY when too many run already, -errno. */
int cluster_fanout(struct http_req *r, const char *request, size_t len, uint64_t deadline_ms, fanout_done_fn done,
		   void *ctx);
/* The client's credentials for the peers (the nodes of a cluster share one token):
 * its Authorization and X-API-KEY header lines, those fit for a header line. */
void cluster_client_auth(const struct http_req *r, char *out, size_t n);
/* No control bytes (nor spaces, unless allowed): safe in a request line or header. */
bool cluster_printable(const char *s, bool spaces);

#endif
