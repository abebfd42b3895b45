/* HTTP/1.1 on one connection: http_parser glue (request line, headers, bodies
 * plain or chunked, keep-alive, pipelining) and the response writers (whole
 * bodies, chunked streams with backpressure). Socket I/O is server.c's job; this
 * module sees bytes in and appends bytes out. */
#ifndef MITOS_API_HTTP_H
#define MITOS_API_HTTP_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/http/errors.h"
#include "api/http/uring.h"

#define HTTP_MAX_HEADER_BYTES (16u << 10) /* request line + all headers */
#define HTTP_MAX_HEADERS 100
#define HTTP_OUT_HIGH (256u << 10)        /* queued output above which producers pause */
#define HTTP_OUT_LOW (64u << 10)
#define HTTP_PEND_MAX (64u << 10)         /* unparsed input held while a request runs */

struct conn;
struct h2_stream;
struct http_req;
struct route;

struct http_req_ops {
	/* Streamed request body; the handler may call http_req_pause_body(). */
	void (*body)(struct http_req *r, const uint8_t *p, size_t n);
	void (*body_end)(struct http_req *r);
	/* Queued output fell below HTTP_OUT_LOW. */
	void (*writable)(struct http_req *r);
	/* The connection is gone: forget r (it is freed after this returns). */
	void (*abort)(struct http_req *r);
	/* After http_raw_input(): every byte the client sends after the request. The
	 * handler must take all n bytes (it may pause further input). */
	void (*raw)(struct http_req *r, const uint8_t *p, size_t n);
};

struct http_header {
	const char *name; /* lower-cased */
	const char *value;
};

struct http_req {
	struct conn *c;
	struct h2_stream *h2;      /* an HTTP/2 stream's request (h2.c), or NULL: HTTP/1.x */
	unsigned method;           /* enum http_method */
	char *path;                /* decoded path, no query */
	char *query;               /* raw query after '?', or "" */
	struct http_header h[HTTP_MAX_HEADERS];
	unsigned nh;
	char *arena;               /* url and headers as received */
	size_t alen, acap;
	size_t hdr_off[HTTP_MAX_HEADERS][2];
	bool last_was_value, url_done;
	bool hdrs_handled_, msg_handled_;
	bool keep_alive;
	bool headers_done, dispatched, complete, finished;
	bool body_paused, body_streamed;
	bool body_rests;           /* its body may pause for long (a bidirectional stream's input) */
	bool connect_errors;       /* error bodies also carry Connect's code/message */
	bool connect_stream;       /* a Connect streaming call: refused in its stream */
	bool abort_on_eof;         /* the client closing means nobody wants the rest */
	bool raw_in;               /* bytes after the request go to ops->raw (upgrades) */
	uint64_t content_length;   /* ULLONG_MAX when absent */
	uint8_t *body;             /* buffered body (non-streamed routes) */
	size_t body_len, body_cap, body_limit;
	uint64_t body_seen;
	const struct route *route;
	char param[128];           /* {id} or {name} from the path, RPC method name */
	char sandbox_id[72];       /* path {id} or X-Sandbox-Id, validated */
	int early_err;             /* -1, or an enum api_err to answer once the body is read */
	char *early_msg;
	/* Response. */
	bool resp_started, chunked;
	int status;
	/* Handler state. */
	const struct http_req_ops *ops;
	void *ctx;
	uint64_t start_ms;
};

/* Called by server.c. */
void http_conn_init(struct conn *c);
/* Parses what is pending on c; dispatches requests; returns when it needs more
 * input or a handler is still running. */
void http_conn_process(struct conn *c);
/* The peer closed its side: fail an unfinished message. */
void http_conn_eof(struct conn *c);
/* The connection is being torn down: abort the running handler. */
void http_conn_abort(struct conn *c);
/* No request in progress and nothing queued: a shutdown may close it now. */
bool http_conn_idle(const struct conn *c);
/* r (which may be NULL) is with its handler and not yet answered: the handler holds it
 * and is told if it goes. */
bool http_req_waiting(const struct http_req *r);
/* A request of c (HTTP/2: of any stream) is waiting. */
bool http_conn_waiting(const struct conn *c);
/* Shutdown: finish what runs, take nothing new, then close. */
void http_conn_drain(struct conn *c);
/* Tick: enforce header/body deadlines; returns true when c must close. */
bool http_conn_check_deadlines(struct conn *c, uint64_t now_ms);
void http_conn_writable(struct conn *c);

const char *http_req_header(const struct http_req *r, const char *lname);

/* Responses. Each finishes the request except http_stream_start/_write. */
void http_reply(struct http_req *r, int status, const char *ctype, const void *body, size_t n,
		const char *extra_headers);
void http_reply_json(struct http_req *r, int status, const char *json);
void http_reply_error(struct http_req *r, enum api_err e, const char *message, const char *cause,
		      const char *remediation);
void http_reply_error_status(struct http_req *r, int status, enum api_err e, const char *message,
			     const char *cause, const char *remediation);
void http_stream_start(struct http_req *r, int status, const char *ctype, const char *extra_headers);
void http_stream_write(struct http_req *r, const void *p, size_t n);
/* Two buffers as one chunk (an envelope header and its payload). */
void http_stream_write2(struct http_req *r, const void *a, size_t an, const void *b, size_t bn);
void http_stream_finish(struct http_req *r);
/* Ends a chunked response without its last chunk and closes the connection, so
 * the client sees the body was cut short. */
void http_stream_abort(struct http_req *r);
/* Bytes a producer may still queue before it should wait for writable(). */
size_t http_stream_room(const struct http_req *r);
/* Bytes of r's response waiting for its client (its connection's, in HTTP/1.1). */
size_t http_stream_queued(const struct http_req *r);

/* The client stopped sending r's body: it has not all come, its handler has not paused
 * it, it may not rest, and nothing of it came since last_rx_ms for --body-timeout. The
 * one rule of both protocols (HTTP/1.1 times a connection by it, HTTP/2 each stream). */
bool http_body_stalled(const struct http_req *r, uint64_t last_rx_ms, uint64_t now);

void http_req_pause_body(struct http_req *r);
void http_req_resume_body(struct http_req *r);

/* Raw responses, for proxies and protocol upgrades: the handler writes the status
 * line, headers and body bytes itself, and the connection closes once
 * http_raw_finish() was called and the output drained. http_raw_input() hands
 * every later client byte to ops->raw (pause it with http_req_pause_body()); the
 * client closing its side then aborts the request. HTTP/1.1 only: routes that use
 * them are raw_http1 (api/http/router.h), refused over HTTP/2. */
void http_raw_begin(struct http_req *r);
void http_raw_write(struct http_req *r, const void *p, size_t n);
void http_raw_input(struct http_req *r);
void http_raw_finish(struct http_req *r);

/* Percent-decodes in place ('+' stays '+'); returns -EINVAL on bad escapes or NUL. */
int http_pct_decode(char *s);
/* Value of key in a query string, percent- and '+'-decoded; malloc'd or NULL. */
char *http_query_get(const char *query, const char *key);

#endif
