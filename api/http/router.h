/* Maps a request to its handler, and checks what every request must pass first
 * (sandbox id syntax, then the bearer token). */
#ifndef MITOS_API_ROUTER_H
#define MITOS_API_ROUTER_H

#include <stdbool.h>
#include <stdint.h>

#include "api/http/errors.h"

struct http_req;

typedef void (*route_fn)(struct http_req *r);

struct route {
	const char *name;
	route_fn fn;
	bool stream_body;     /* fn runs at headers-complete and installs body ops */
	bool big_body;        /* body limit is --max-file-body instead of --max-json-body */
	bool raw_http1;       /* fn writes HTTP/1.1 itself (a proxy, an upgrade): refused over HTTP/2 */
};

/* At headers-complete: sets r->route, r->body_limit, r->body_streamed, or
 * r->early_err (answered once the body has been read and discarded). */
void router_headers(struct http_req *r);
void router_dispatch(struct http_req *r);
/* Answers a request refused before its handler: an HTTP error, or for a Connect
 * streaming call (as connect-go does) 200 and the error as end of stream. */
void router_refuse(struct http_req *r, enum api_err e, const char *msg);

/* Checks Authorization against srv_cfg.token in constant time. */
bool router_authorized(const struct http_req *r);

#endif
