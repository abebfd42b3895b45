/* HTTP/2 on one connection (cleartext, prior knowledge: the client preface opens
 * it), for Connect's bidirectional streams, which need it, and every other
 * route as well. Framing, HPACK and flow control are libnghttp2's, fed from
 * memory like the HTTP/1.1 parser: server.c's reads go in, frames come out into
 * the connection's queue. Each stream is one struct http_req, so handlers do
 * not know which protocol carries them. */
#ifndef MITOS_API_H2_H
#define MITOS_API_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_PREFACE_LEN 24u

struct conn;
struct http_req;

/* The connection opened with the preface: 0, or -ENOMEM. */
int h2_conn_start(struct conn *c);
/* Feeds what is pending on c to the session, delivers held request bodies,
 * runs writable callbacks and frames output while the queue has room. */
void h2_conn_process(struct conn *c);
void h2_conn_writable(struct conn *c);
/* Aborts every running handler and frees the session. */
void h2_conn_free(struct conn *c);
bool h2_conn_idle(const struct conn *c);
bool h2_conn_waiting(const struct conn *c);
/* GOAWAY: streams that run finish, no new ones start; closes when all ended. */
void h2_conn_drain(struct conn *c);
bool h2_conn_check_deadlines(struct conn *c, uint64_t now_ms);

/* The response side of http.h's writers for a request on a stream. */
void h2_reply(struct http_req *r, int status, const char *ctype, const void *body, size_t n, const char *extra);
void h2_stream_start(struct http_req *r, int status, const char *ctype, const char *extra);
void h2_stream_write2(struct http_req *r, const void *a, size_t an, const void *b, size_t bn);
void h2_stream_finish(struct http_req *r);
void h2_stream_abort(struct http_req *r);
size_t h2_stream_room(const struct http_req *r);
size_t h2_stream_queued(const struct http_req *r);

#endif
