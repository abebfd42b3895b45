/* The life of one request that HTTP/1.1 (http.c) and HTTP/2 (h2.c) share: its
 * allocation, its header arena, what runs when its headers are in, its body and
 * its end. The framing around it is each protocol's own. */
#ifndef MITOS_API_HTTP_REQ_H
#define MITOS_API_HTTP_REQ_H

#include <stddef.h>
#include <stdint.h>

#include "api/http/http.h"

struct http_req *http_req_new(struct conn *c);
void http_req_free(struct http_req *r);
/* Appends to the arena of URL and headers: AE_NONE, or the enum api_err refusing the
 * request (AE_HEADERS_TOO_LARGE past 16 KiB, AE_INTERNAL out of memory). */
int http_req_arena_add(struct http_req *r, const char *p, size_t n);
/* Headers are in (r->h, method, content_length set): routes the request and
 * starts a streamed-body handler. 0, or AE_PAYLOAD_TOO_LARGE when the declared
 * length is over the route's limit (nothing was dispatched). */
int http_req_headers_ready(struct http_req *r);
/* Body bytes: to the handler (streamed routes) or buffered. AE_NONE, or the enum
 * api_err that ends the request. */
int http_req_take_body(struct http_req *r, const uint8_t *p, size_t n);
/* The request ended: runs a buffered route, or tells a streamed one. */
void http_req_message_ready(struct http_req *r);
/* A handler that holds r (dispatched, not finished) is told the request is gone and
 * let go of: r may then be refused with an error, or freed. Both protocols end a
 * request this way before answering for the handler (a body over its limit, a broken
 * connection): a handler must never hold a request it did not finish. */
void http_req_abort_handler(struct http_req *r);
/* The message for an error code the functions above return. */
const char *http_err_text(int e);

#endif
