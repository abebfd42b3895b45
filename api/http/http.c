#include "api/http/http.h"

#include <cjson/cJSON.h>

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/http/bytebuf.h"
#include "api/http/chunk_framing.h"
#include "api/http/h2.h"
#include "api/http/http_chars.h"
#include "api/http/http_req.h"
#include "api/http/router.h"
#include "api/http/server.h"

static const http_parser_settings settings;

/* A field name: one or more tchars. */
static bool is_token(const char *s)
{
	const char *p = s;
	while (*p && http_tchar((uint8_t)*p))
		p++;
	return p != s && !*p;
}

static void conn_note_err(struct conn *c, enum api_err e, const char *msg)
{
	if (c->err < 0) {
		c->err = (int)e;
		snprintf(c->err_msg, sizeof(c->err_msg), "%s", msg);
	}
}

void http_req_free(struct http_req *r)
{
	if (!r)
		return;
	free(r->arena);
	free(r->path);
	free(r->body);
	free(r->early_msg);
	free(r);
}

int http_req_arena_add(struct http_req *r, const char *p, size_t n)
{
	if (r->alen + n + 1 > HTTP_MAX_HEADER_BYTES)
		return AE_HEADERS_TOO_LARGE;
	char *na = buf_reserve(r->arena, &r->acap, r->alen + n + 1, 1024);
	if (!na)
		return AE_INTERNAL;
	r->arena = na;
	memcpy(r->arena + r->alen, p, n);
	r->alen += n;
	return AE_NONE;
}

const char *http_err_text(int e)
{
	switch (e) {
	case AE_HEADERS_TOO_LARGE: return "request line and headers exceed 16 KiB, or more than 100 headers";
	case AE_PAYLOAD_TOO_LARGE: return "request body exceeds the limit for this endpoint";
	default: return "out of memory";
	}
}

static int arena_add(struct conn *c, struct http_req *r, const char *p, size_t n)
{
	int e = http_req_arena_add(r, p, n);
	if (e)
		conn_note_err(c, (enum api_err)e, http_err_text(e));
	return e ? -1 : 0;
}

static int arena_nul(struct conn *c, struct http_req *r)
{
	return arena_add(c, r, "", 1);
}

/* ---- parser callbacks ---- */

struct http_req *http_req_new(struct conn *c)
{
	struct http_req *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->c = c;
	r->early_err = -1;
	r->content_length = ULLONG_MAX;
	r->start_ms = ur_now_ms();
	return r;
}

static int on_message_begin(http_parser *p)
{
	struct conn *c = p->data;
	struct http_req *r = http_req_new(c);
	if (!r) {
		conn_note_err(c, AE_INTERNAL, "out of memory");
		return -1;
	}
	c->req = r;
	return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
	struct conn *c = p->data;
	return arena_add(c, c->req, at, n);
}

/* The parser hands a chunked body's trailer fields to the header callbacks too, after
 * the headers were taken apart (r->h points into the arena): they are dropped, as RFC
 * 9110 6.5.1 lets a recipient do; none of ours is read from a trailer. */
static int on_header_field(http_parser *p, const char *at, size_t n)
{
	struct conn *c = p->data;
	struct http_req *r = c->req;
	if (r->headers_done)
		return 0;
	if (!r->url_done) {
		if (arena_nul(c, r))
			return -1;
		r->url_done = true;
	}
	if (r->nh == 0 || r->last_was_value) {
		if (r->last_was_value && arena_nul(c, r))
			return -1;
		if (r->nh >= HTTP_MAX_HEADERS) {
			conn_note_err(c, AE_HEADERS_TOO_LARGE, "more than 100 headers");
			return -1;
		}
		r->hdr_off[r->nh][0] = r->alen;
		r->hdr_off[r->nh][1] = 0;
		r->nh++;
		r->last_was_value = false;
	}
	return arena_add(c, r, at, n);
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
	struct conn *c = p->data;
	struct http_req *r = c->req;
	if (r->headers_done)
		return 0;
	if (!r->nh)
		return -1;
	if (!r->last_was_value) {
		if (arena_nul(c, r))
			return -1;
		r->hdr_off[r->nh - 1][1] = r->alen;
		r->last_was_value = true;
	}
	return arena_add(c, r, at, n);
}

static int on_headers_complete(http_parser *p)
{
	struct conn *c = p->data;
	struct http_req *r = c->req;
	if (!r->url_done) {
		if (arena_nul(c, r))
			return -1;
		r->url_done = true;
	}
	if (r->nh) {
		if (!r->last_was_value) {
			if (arena_nul(c, r))
				return -1;
			r->hdr_off[r->nh - 1][1] = r->alen;
		}
		if (arena_nul(c, r))
			return -1;
	}
	/* One reading of the request (RFC 9112), so a proxy in front cannot see another:
	 * header names are tokens, no header continues on the next line (obs-fold), and
	 * an HTTP/1.1 request names exactly one Host. */
	unsigned hosts = 0, codings = 0;
	const char *bad = p->http_major != 1 || p->http_minor > 1 ? "only HTTP/1.0 and HTTP/1.1 are spoken here" : NULL;
	for (unsigned i = 0; i < r->nh; i++) {
		char *name = r->arena + r->hdr_off[i][0];
		for (char *q = name; *q; q++)
			*q = (char)tolower((unsigned char)*q);
		r->h[i].name = name;
		r->h[i].value = r->arena + r->hdr_off[i][1];
		/* A field's value has no whitespace at its ends (RFC 9110 5.5): a Host with a
		 * trailing space names the host a proxy in front would route by. */
		for (char *v = (char *)r->h[i].value, *e = v + strlen(v); e > v && (e[-1] == ' ' || e[-1] == '\t');)
			*--e = 0;
		if (!is_token(name))
			bad = bad ? bad : "a header name holds a character a token may not (a space, a colon, a control byte)";
		else if (strpbrk(r->h[i].value, "\r\n"))
			bad = bad ? bad : "a header continued on the next line (obs-fold) is not accepted";
		hosts += !strcmp(name, "host");
		if (!strcmp(name, "transfer-encoding"))
			codings += strcasecmp(r->h[i].value, "chunked") ? 2 : 1;
	}
	if (!bad && (hosts > 1 || (p->http_minor >= 1 && !hosts)))
		bad = "an HTTP/1.1 request needs exactly one Host header";
	/* Only "chunked", once: a body framed by a coding this server does not decode, or
	 * by two, is read one way here and maybe another by a proxy in front; HTTP/1.0
	 * has no Transfer-Encoding (RFC 9112 6.1). */
	if (!bad && codings && (codings > 1 || p->http_minor == 0))
		bad = "Transfer-Encoding must be exactly \"chunked\", once, and only on HTTP/1.1";
	/* CONNECT's body would be read as the next request (http_parser stops at its head
	 * as at a protocol switch): this server is no proxy. */
	if (!bad && p->method == HTTP_CONNECT) {
		conn_note_err(c, AE_METHOD_NOT_ALLOWED, "CONNECT is not served here: this is not a proxy");
		return -1;
	}
	if (bad) {
		conn_note_err(c, AE_BAD_REQUEST, bad);
		return -1;
	}
	r->method = p->method;
	r->keep_alive = http_should_keep_alive(p);
	if (p->flags & F_CONTENTLENGTH)
		r->content_length = p->content_length;
	r->headers_done = true;
	http_parser_pause(p, 1);
	return 0;
}

int http_req_take_body(struct http_req *r, const uint8_t *at, size_t n)
{
	r->body_seen += n;
	if (r->body_seen > r->body_limit)
		return AE_PAYLOAD_TOO_LARGE;
	if (r->early_err >= 0 || r->finished)
		return AE_NONE;
	if (r->body_streamed) {
		if (r->ops && r->ops->body)
			r->ops->body(r, at, n);
		return AE_NONE;
	}
	/* + 1: the body is kept NUL-terminated. */
	uint8_t *nb = buf_reserve(r->body, &r->body_cap, r->body_len + n + 1, 4096);
	if (!nb)
		return AE_INTERNAL;
	r->body = nb;
	memcpy(r->body + r->body_len, at, n);
	r->body_len += n;
	r->body[r->body_len] = 0;
	return AE_NONE;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
	struct conn *c = p->data;
	struct http_req *r = c->req;
	int e = http_req_take_body(r, (const uint8_t *)at, n);
	if (e) {
		conn_note_err(c, (enum api_err)e, http_err_text(e));
		return -1;
	}
	if (r->body_paused)
		http_parser_pause(p, 1);
	return 0;
}

static int on_message_complete(http_parser *p)
{
	struct conn *c = p->data;
	c->req->complete = true;
	http_parser_pause(p, 1);
	return 0;
}

static const http_parser_settings settings = {
	.on_message_begin = on_message_begin,
	.on_url = on_url,
	.on_header_field = on_header_field,
	.on_header_value = on_header_value,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
};

/* ---- helpers ---- */

const char *http_req_header(const struct http_req *r, const char *lname)
{
	for (unsigned i = 0; i < r->nh; i++)
		if (!strcmp(r->h[i].name, lname))
			return r->h[i].value;
	return NULL;
}

int http_pct_decode(char *s)
{
	char *o = s;
	for (char *i = s; *i; i++) {
		if (*i == '%') {
			int hi = http_hexval((uint8_t)i[1]), lo = hi < 0 ? -1 : http_hexval((uint8_t)i[2]);
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
				return -EINVAL;
			*o++ = (char)(hi << 4 | lo);
			i += 2;
		} else {
			*o++ = *i;
		}
	}
	*o = 0;
	return 0;
}

char *http_query_get(const char *query, const char *key)
{
	size_t kl = strlen(key);
	for (const char *q = query; q && *q;) {
		const char *amp = strchr(q, '&');
		size_t len = amp ? (size_t)(amp - q) : strlen(q);
		if (len >= kl && !strncmp(q, key, kl) && (len == kl || q[kl] == '=')) {
			const char *v = len > kl ? q + kl + 1 : q + len;
			size_t vl = len > kl ? len - kl - 1 : 0;
			char *out = strndup(v, vl);
			if (!out)
				return NULL;
			for (char *x = out; *x; x++)
				if (*x == '+')
					*x = ' ';
			if (http_pct_decode(out)) {
				free(out);
				return NULL;
			}
			return out;
		}
		q = amp ? amp + 1 : NULL;
	}
	return NULL;
}

static int req_parse_target(struct http_req *r)
{
	const char *url = r->arena;
	size_t n = strlen(url);
	if (!n || url[0] != '/')
		return -EINVAL;
	const char *qm = memchr(url, '?', n);
	size_t plen = qm ? (size_t)(qm - url) : n;
	r->path = strndup(url, plen);
	if (!r->path)
		return -ENOMEM;
	r->query = qm ? (char *)qm + 1 : (char *)"";
	if (http_pct_decode(r->path))
		return -EINVAL;
	return 0;
}

static const char *status_text(int s)
{
	switch (s) {
	case 100: return "Continue";
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 308: return "Permanent Redirect";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 415: return "Unsupported Media Type";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 499: return "Client Closed Request";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return "Unknown";
	}
}

static void write_head(struct http_req *r, int status, const char *ctype, long long clen,
		       const char *extra)
{
	struct conn *c = r->c;
	char head[1024];
	/* A request whose body we have not read to the end cannot be followed by
	 * another on this connection. */
	bool close = !r->keep_alive || !r->complete || c->close_after || ur_stopping();
	int n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\n%s%s%s", status, status_text(status),
			 ctype ? "Content-Type: " : "", ctype ? ctype : "", ctype ? "\r\n" : "");
	if (clen >= 0)
		n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Length: %lld\r\n", clen);
	else
		n += snprintf(head + n, sizeof(head) - (size_t)n, "Transfer-Encoding: chunked\r\n");
	if (close)
		n += snprintf(head + n, sizeof(head) - (size_t)n, "Connection: close\r\n");
	if (extra && strlen(extra) < sizeof(head) - (size_t)n - 3)
		n += snprintf(head + n, sizeof(head) - (size_t)n, "%s", extra);
	n += snprintf(head + n, sizeof(head) - (size_t)n, "\r\n");
	conn_out(c, head, (size_t)n);
	if (close)
		conn_close_after(c);
	r->resp_started = true;
	r->status = status;
}

static void req_finished(struct http_req *r)
{
	r->finished = true;
	/* With nothing left to send, a flush of a connection that is to close tears it
	 * down and frees r under the caller (a handler cutting its stream then lets go of
	 * r): that one is the kick's. */
	if (r->c->out.bytes)
		conn_flush(r->c);
	conn_kick(r->c);
}

void http_reply(struct http_req *r, int status, const char *ctype, const void *body, size_t n,
		const char *extra)
{
	if (r->finished || r->resp_started)
		return;
	if (r->h2) {
		h2_reply(r, status, ctype, body, n, extra);
		return;
	}
	write_head(r, status, ctype, (long long)n, extra);
	/* A HEAD's answer is its head (the length said what a GET's body would be). */
	if (n && r->method != HTTP_HEAD)
		conn_out(r->c, body, n);
	req_finished(r);
}

void http_reply_json(struct http_req *r, int status, const char *json)
{
	http_reply(r, status, "application/json", json, strlen(json), NULL);
}

void http_reply_error_status(struct http_req *r, int status, enum api_err e, const char *message,
			     const char *cause, const char *remediation)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *o = api_error_object(e, message, cause, remediation, 0);
	if (root && o && r->connect_errors) {
		/* Connect clients read code/message; Mitos clients read error. */
		char *red = api_redact(message ? message : api_err_code(e));
		cJSON_AddStringToObject(root, "code", api_err_connect_code(e));
		cJSON_AddStringToObject(root, "message", red ? red : "");
		free(red);
	}
	char *j = NULL;
	if (root && o) {
		cJSON_AddItemToObject(root, "error", o);
		o = NULL;
		j = cJSON_PrintUnformatted(root);
	}
	cJSON_Delete(root);
	cJSON_Delete(o);
	if (!j) {
		http_reply_json(r, 500, "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\","
				"\"cause\":\"\",\"remediation\":\"retry\"}}");
		return;
	}
	http_reply_json(r, status, j);
	free(j);
}

void http_reply_error(struct http_req *r, enum api_err e, const char *message, const char *cause,
		      const char *remediation)
{
	http_reply_error_status(r, api_err_status(e), e, message, cause, remediation);
}

void http_stream_start(struct http_req *r, int status, const char *ctype, const char *extra)
{
	if (r->finished || r->resp_started)
		return;
	r->chunked = true;
	if (r->h2) {
		h2_stream_start(r, status, ctype, extra);
		return;
	}
	write_head(r, status, ctype, -1, extra);
	conn_flush(r->c);
}

void http_stream_write2(struct http_req *r, const void *a, size_t an, const void *b, size_t bn)
{
	if (r->finished || !r->chunked || !(an + bn))
		return;
	if (r->h2) {
		h2_stream_write2(r, a, an, b, bn);
		return;
	}
	char hdr[24];
	int n = snprintf(hdr, sizeof(hdr), "%zx\r\n", an + bn);
	conn_out(r->c, hdr, (size_t)n);
	if (an)
		conn_out(r->c, a, an);
	if (bn)
		conn_out(r->c, b, bn);
	conn_out(r->c, "\r\n", 2);
	conn_flush(r->c);
}

void http_stream_write(struct http_req *r, const void *p, size_t n)
{
	http_stream_write2(r, p, n, NULL, 0);
}

void http_stream_finish(struct http_req *r)
{
	if (r->finished)
		return;
	if (r->h2) {
		h2_stream_finish(r);
		return;
	}
	if (r->chunked)
		conn_out(r->c, "0\r\n\r\n", 5);
	req_finished(r);
}

void http_stream_abort(struct http_req *r)
{
	if (r->finished)
		return;
	if (r->h2) {
		h2_stream_abort(r);
		return;
	}
	/* No last chunk: the client sees a cut-off body, never a complete one. */
	conn_close_after(r->c);
	req_finished(r);
}

size_t http_stream_room(const struct http_req *r)
{
	const struct conn *c = r->c;
	if (c->dead)
		return 0;
	if (r->h2)
		return h2_stream_room(r);
	return c->out.bytes >= HTTP_OUT_HIGH ? 0 : HTTP_OUT_HIGH - c->out.bytes;
}

size_t http_stream_queued(const struct http_req *r)
{
	return r->h2 ? h2_stream_queued(r) : r->c->out.bytes;
}

bool http_body_stalled(const struct http_req *r, uint64_t last_rx_ms, uint64_t now)
{
	return r->headers_done && !r->complete && !r->body_paused && !r->body_rests &&
	       now - last_rx_ms > srv_cfg.body_timeout_ms;
}

void http_req_pause_body(struct http_req *r)
{
	r->body_paused = true;
}

void http_req_resume_body(struct http_req *r)
{
	if (!r->body_paused)
		return;
	r->body_paused = false;
	conn_kick(r->c);
}

void http_raw_begin(struct http_req *r)
{
	if (r->finished || r->resp_started)
		return;
	r->resp_started = true;
	r->keep_alive = false;
}

void http_raw_write(struct http_req *r, const void *p, size_t n)
{
	/* Never onto an HTTP/2 connection: those bytes (an upstream's, the sandbox's) would
	 * be frames of the client's other streams. The router refuses raw routes there. */
	if (r->finished || !r->resp_started || r->h2)
		return;
	conn_out(r->c, p, n);
	conn_flush(r->c);
}

void http_raw_input(struct http_req *r)
{
	if (r->finished || r->raw_in)
		return;
	r->raw_in = true;
	r->abort_on_eof = true;
	conn_kick(r->c);
}

void http_raw_finish(struct http_req *r)
{
	if (r->finished)
		return;
	/* What the client sent after this request was meant for the upgraded
	 * protocol or the upstream: it cannot be parsed as HTTP. */
	r->keep_alive = false;
	conn_close_after(r->c);
	r->finished = true;
	/* Flushed from the kick, not here: with nothing left to send, the flush
	 * closes the connection and frees r under the caller. */
	conn_kick(r->c);
}

/* ---- connection driving ---- */

enum { LINE_METHOD, LINE_TARGET, LINE_VERSION, LINE_HEADERS };

/* The next request starts: nothing of its head or body read yet. */
static void request_reset(struct conn *c)
{
	c->head_prev = 0;
	c->line_part = LINE_METHOD;
	c->line_pos = 0;
	chunk_framing_reset(&c->chunks);
}

void http_conn_init(struct conn *c)
{
	request_reset(c);
	http_parser_init(&c->parser, HTTP_REQUEST);
	c->parser.data = c;
	c->err = -1;
}

bool http_req_waiting(const struct http_req *r)
{
	return r && r->dispatched && !r->finished;
}

void http_req_abort_handler(struct http_req *r)
{
	if (http_req_waiting(r) && r->ops && r->ops->abort)
		r->ops->abort(r);
	r->ops = NULL;
	r->ctx = NULL;
}

static void fail_conn(struct conn *c)
{
	enum api_err e = c->err >= 0 ? (enum api_err)c->err : AE_BAD_REQUEST;
	const char *msg = c->err >= 0 ? c->err_msg : http_errno_description(HTTP_PARSER_ERRNO(&c->parser));
	struct http_req *r = c->req;
	c->pend_len = 0;
	if (r)
		http_req_abort_handler(r);
	if (!r || !r->resp_started) {
		if (!r) {
			r = calloc(1, sizeof(*r));
			if (!r) {
				conn_close_after(c);
				return;
			}
			r->c = c;
			c->req = r;
		}
		r->keep_alive = false;
		r->finished = false;
		r->complete = false;
		/* A Connect stream hears it in its stream, as over HTTP/2. */
		router_refuse(r, e, msg);
	}
	conn_close_after(c);
}

int http_req_headers_ready(struct http_req *r)
{
	/* Refused while its head was read (a malformed header): no route may take it, or
	 * its handler would hold a request the connection's end frees without telling it. */
	if (r->finished)
		return 0;
	if (req_parse_target(r)) {
		r->early_err = AE_BAD_REQUEST;
		r->early_msg = strdup("request target must be an absolute path");
		r->body_limit = srv_cfg.max_json_body;
	} else {
		router_headers(r);
	}
	if (r->content_length != ULLONG_MAX && r->content_length > r->body_limit)
		return AE_PAYLOAD_TOO_LARGE;
	const char *expect = r->h2 ? NULL : http_req_header(r, "expect");
	bool waits = expect && !strcasecmp(expect, "100-continue");
	if (r->early_err >= 0 && waits) {
		/* The client waits for our word before its body: the refusal now (RFC 9110
		 * 10.1.1), then the connection closes, the body unread. */
		r->keep_alive = false;
		router_refuse(r, (enum api_err)r->early_err, r->early_msg);
		return 0;
	}
	if (r->early_err < 0) {
		if (waits)
			conn_out(r->c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
		if (r->body_streamed) {
			r->dispatched = true;
			router_dispatch(r);
		}
	}
	return 0;
}

static void headers_ready(struct conn *c, struct http_req *r)
{
	if (http_req_headers_ready(r)) {
		conn_note_err(c, AE_PAYLOAD_TOO_LARGE, "Content-Length exceeds the limit for this endpoint");
		fail_conn(c);
	}
}

void http_req_message_ready(struct http_req *r)
{
	if (r->finished)
		return; /* answered before its body came (a refusal to Expect: 100-continue) */
	if (r->early_err >= 0) {
		router_refuse(r, (enum api_err)r->early_err, r->early_msg);
		return;
	}
	if (r->body_streamed) {
		if (!r->finished && r->ops && r->ops->body_end)
			r->ops->body_end(r);
		return;
	}
	r->dispatched = true;
	router_dispatch(r);
}

/* A connection speaks HTTP/2 when it opens with the client preface (h2c with
 * prior knowledge, as the Connect clients and the real server do); else HTTP/1.x.
 * False while too few bytes have come to tell. */
static bool pick_protocol(struct conn *c)
{
	if (c->proto || !c->pend_len)
		return c->proto != 0;
	size_t n = c->pend_len < H2_PREFACE_LEN ? c->pend_len : H2_PREFACE_LEN;
	if (memcmp(c->pend + c->pend_off, H2_PREFACE, n)) {
		c->proto = 1;
		return true;
	}
	if (n < H2_PREFACE_LEN)
		return false;
	if (h2_conn_start(c)) {
		conn_close_after(c);
		c->pend_len = 0;
		return false;
	}
	c->proto = 2;
	return true;
}

/* The request line as RFC 9112 3 has it, "METHOD SP target SP HTTP/d.d" (one space, no
 * control byte or space in the target), after any empty lines (2.2): http_parser takes
 * more (runs of spaces, a tab in the target, any four bytes for "TTP/"). Raw UTF-8 in a
 * target, which some clients send unescaped, is let through: it frames nothing. */
static bool request_line_byte(struct conn *c, uint8_t ch)
{
	static const char version[] = "HTTP/d.d";
	switch (c->line_part) {
	case LINE_METHOD:
		if (!c->line_pos && (ch == '\r' || ch == '\n'))
			return true;
		if (ch == ' ' && c->line_pos) {
			c->line_part = LINE_TARGET;
			c->line_pos = 0;
			return true;
		}
		c->line_pos = 1; /* not empty */
		return http_tchar(ch);
	case LINE_TARGET:
		if (ch == ' ' && c->line_pos) {
			c->line_part = LINE_VERSION;
			c->line_pos = 0;
			return true;
		}
		c->line_pos = 1;
		return ch > 0x20 && ch != 0x7f;
	case LINE_VERSION:
		if (c->line_pos == sizeof(version) - 1) {
			c->line_part = LINE_HEADERS;
			return ch == '\r';
		}
		char want = version[c->line_pos++];
		return want == 'd' ? ch >= '0' && ch <= '9' : ch == (uint8_t)want;
	default:
		return true;
	}
}

/* One reading of the head for us and any proxy in front (RFC 9112 2.2, 3, 5.2): every
 * line ends in CRLF (http_parser takes a bare LF, and a bare CR after an empty value,
 * too), none starts with a space or a tab (obs-fold, which http_parser folds into the
 * value before it), no control byte but HTAB, and the request line as above. What was
 * seen carries across reads. NULL, or what is wrong. */
static const char *head_refusal(struct conn *c, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t ch = p[i];
		if (ch == '\n' && c->head_prev != '\r')
			return "a line of the request head ends in a bare LF, not CRLF";
		if (c->head_prev == '\r' && ch != '\n')
			return "the request head holds a CR not followed by LF";
		if (c->head_prev == '\n' && (ch == ' ' || ch == '\t') && c->line_part == LINE_HEADERS)
			return "a header continued on the next line (obs-fold) is not accepted";
		if (!http_field_byte(ch) && ch != '\r' && ch != '\n')
			return "the request head holds a control byte";
		if (!request_line_byte(c, ch))
			return "the request line is not METHOD SP target SP HTTP/x.y (RFC 9112 3)";
		c->head_prev = ch;
	}
	return NULL;
}

static const char *body_refusal(struct conn *c, const uint8_t *p, size_t n)
{
	/* The parser pauses on the head's last LF and takes it with what follows. */
	if (n && c->head_prev == '\r') {
		if (*p != '\n')
			return "the request head does not end in an empty line (CRLF)";
		c->head_prev = '\n';
		p++;
		n--;
	}
	return c->parser.flags & F_CHUNKED ? chunk_framing_feed(&c->chunks, p, n) : NULL;
}

void http_conn_process(struct conn *c)
{
	if (!c->proto && !pick_protocol(c))
		return;
	if (c->h2) {
		h2_conn_process(c);
		return;
	}
	while (!c->dead) {
		struct http_req *r = c->req;
		if (r && r->raw_in && !r->finished) {
			if (r->body_paused || !c->pend_len || !r->ops || !r->ops->raw)
				break;
			const uint8_t *p = c->pend + c->pend_off;
			size_t n = c->pend_len;
			c->pend_off += n;
			c->pend_len = 0;
			r->ops->raw(r, p, n);
			continue;
		}
		if (r && r->headers_done && !r->hdrs_handled_) {
			r->hdrs_handled_ = true;
			c->hdr_deadline_ms = 0;
			headers_ready(c, r);
			continue;
		}
		if (r && r->complete && !r->msg_handled_) {
			r->msg_handled_ = true;
			http_req_message_ready(r);
			continue;
		}
		if (r && r->complete) {
			if (!r->finished)
				break;
			c->req = NULL;
			http_req_free(r);
			request_reset(c);
			if (c->close_after)
				break;
			continue;
		}
		if (r && (r->body_paused || (r->finished && !r->complete && c->close_after)))
			break;
		if (c->close_after && !r)
			break;
		if (!c->pend_len)
			break;
		/* A client that sends requests without reading the answers: the next request
		 * waits until its output drains (server.c then stops reading it too). */
		if (!r && c->out.bytes >= HTTP_OUT_HIGH)
			break;
		if (!r && !c->hdr_deadline_ms)
			c->hdr_deadline_ms = ur_now_ms() + srv_cfg.header_timeout_ms;
		bool in_head = !r || !r->headers_done;
		const uint8_t *at = c->pend + c->pend_off;
		size_t n = http_parser_execute(&c->parser, &settings, (const char *)at, c->pend_len);
		c->pend_off += n;
		c->pend_len -= n;
		enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
		/* The parser stops right after the headers, so what it took was head; after
		 * them, body (where its own refusal, a body too large, says more). */
		const char *bad = in_head ? head_refusal(c, at, n)
			: e == HPE_OK || e == HPE_PAUSED ? body_refusal(c, at, n) : NULL;
		if (bad) {
			conn_note_err(c, AE_BAD_REQUEST, bad);
			fail_conn(c);
			break;
		}
		if (e == HPE_PAUSED) {
			http_parser_pause(&c->parser, 0);
			continue;
		}
		if (e != HPE_OK) {
			fail_conn(c);
			break;
		}
	}
	if (!c->pend_len) {
		c->pend_off = 0;
		if (c->pend_cap > 4096) {
			free(c->pend);
			c->pend = NULL;
			c->pend_cap = 0;
		}
	}
	if (!c->req && !c->pend_len) {
		c->hdr_deadline_ms = 0;
		if (c->read_eof)
			conn_close_after(c);
	}
}

void http_conn_eof(struct conn *c)
{
	struct http_req *r = c->req;
	if (c->h2 || !r || r->complete)
		return;
	/* Tells the parser the stream ended: a body cut short is an error. */
	http_parser_execute(&c->parser, &settings, NULL, 0);
	if (r->resp_started || r->finished) {
		conn_close_after(c);
		return;
	}
	conn_note_err(c, AE_BAD_REQUEST, r->headers_done ? "connection closed before the request body ended"
							 : "connection closed inside the request headers");
	fail_conn(c);
}

void http_conn_abort(struct conn *c)
{
	struct http_req *r = c->req;
	c->req = NULL;
	if (c->h2)
		h2_conn_free(c);
	if (r)
		http_req_abort_handler(r);
	http_req_free(r);
}

bool http_conn_idle(const struct conn *c)
{
	return c->h2 ? h2_conn_idle(c) : !c->req && !c->out.bytes;
}

bool http_conn_waiting(const struct conn *c)
{
	return c->h2 ? h2_conn_waiting(c) : http_req_waiting(c->req);
}

void http_conn_drain(struct conn *c)
{
	if (c->h2)
		h2_conn_drain(c);
	else
		conn_close_after(c);
}

void http_conn_writable(struct conn *c)
{
	if (c->h2) {
		h2_conn_writable(c);
		return;
	}
	struct http_req *r = c->req;
	if (http_req_waiting(r) && r->ops && r->ops->writable)
		r->ops->writable(r);
}

bool http_conn_check_deadlines(struct conn *c, uint64_t now)
{
	if (c->h2)
		return h2_conn_check_deadlines(c, now);
	struct http_req *r = c->req;
	if (c->hdr_deadline_ms && now > c->hdr_deadline_ms && (!r || !r->headers_done)) {
		c->hdr_deadline_ms = 0;
		if (!r && !c->pend_len)
			return true;
		conn_note_err(c, AE_REQUEST_TIMEOUT, "request headers did not arrive in time");
		fail_conn(c);
		return false;
	}
	if (r && http_body_stalled(r, c->last_rx_ms, now)) {
		if (r->resp_started)
			return true;
		conn_note_err(c, AE_REQUEST_TIMEOUT, "request body stalled");
		fail_conn(c);
		return false;
	}
	if (!r && !c->pend_len && now - c->last_rx_ms > srv_cfg.idle_timeout_ms &&
	    now - c->last_tx_ms > srv_cfg.idle_timeout_ms)
		return true;
	/* A client that stopped reading its response: give up on it. */
	if (c->out.bytes && now - c->last_tx_ms > srv_cfg.idle_timeout_ms)
		return true;
	return false;
}
