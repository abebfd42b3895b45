#include "api/http/h2.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/http/bytebuf.h"
#include "api/http/http.h"
#include "api/http/router.h"
#include "api/http/http_req.h"
#include "api/http/server.h"

#define H2_MAX_STREAMS 100u
/* The connection's receive window: taken back at once (a stream's own window,
 * given back only as its handler takes the bytes, is what bounds memory). */
#define H2_CONN_WINDOW (1 << 20)

struct h2_stream {
	struct h2_conn *hc;
	int32_t id;
	struct http_req *r;
	struct bytebuf out;  /* response body not yet framed */
	bool out_eof;        /* the handler wrote its last byte */
	bool deferred;       /* the data source waits for out to fill */
	bool was_high;       /* out went over HTTP_OUT_HIGH: tell the handler when it drains */
	struct bytebuf in;   /* request body held while the handler paused it */
	bool in_end;         /* the client ended its side behind the held bytes */
	bool discard;        /* an error was answered: the rest of the body is dropped */
	bool closed;         /* the stream is gone: writes to it go nowhere */
	char *path, *authority; /* pseudo-headers, until the arena takes them */
	uint64_t opened_ms;
	uint64_t last_in_ms;  /* the request's body last moved */
	uint64_t last_out_ms; /* the response last moved, or began to wait */
	struct h2_stream *prev, *next;
};

struct h2_conn {
	nghttp2_session *s;
	struct conn *c;
	struct h2_stream *streams;
	unsigned nstreams;
	bool draining;
	unsigned busy;       /* h2_conn_process runs: the session is freed after it */
	bool freed;          /* torn down while busy */
};

static struct h2_stream *stream_of(struct h2_conn *hc, int32_t id)
{
	return nghttp2_session_get_stream_user_data(hc->s, id);
}

static void stream_unlink_free(struct h2_stream *st)
{
	struct h2_conn *hc = st->hc;
	if (st->prev)
		st->prev->next = st->next;
	else
		hc->streams = st->next;
	if (st->next)
		st->next->prev = st->prev;
	hc->nstreams--;
	free(st->path);
	free(st->authority);
	bytebuf_free(&st->out);
	bytebuf_free(&st->in);
	free(st);
}

/* The handler is told the request is gone unless it already finished. */
static void stream_drop_request(struct h2_stream *st)
{
	struct http_req *r = st->r;
	if (!r)
		return;
	st->closed = true;
	http_req_abort_handler(r);
	st->r = NULL;
	http_req_free(r);
}

/* ---- request side ---- */

static unsigned method_of(const uint8_t *v, size_t n)
{
	for (unsigned m = 0; m < 64; m++) {
		const char *name = http_method_str((enum http_method)m);
		if (!strcmp(name, "<unknown>"))
			break;
		if (strlen(name) == n && !memcmp(name, v, n))
			return m;
	}
	return UINT_MAX;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
	struct h2_conn *hc = user;
	if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	struct h2_stream *st = calloc(1, sizeof(*st));
	struct http_req *r = st ? http_req_new(hc->c) : NULL;
	if (!r) {
		free(st);
		nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_INTERNAL_ERROR);
		return 0;
	}
	st->hc = hc;
	st->id = f->hd.stream_id;
	st->opened_ms = st->last_in_ms = st->last_out_ms = ur_now_ms();
	st->r = r;
	r->h2 = st;
	r->keep_alive = true;
	r->method = UINT_MAX;
	st->next = hc->streams;
	if (hc->streams)
		hc->streams->prev = st;
	hc->streams = st;
	hc->nstreams++;
	nghttp2_session_set_stream_user_data(s, st->id, st);
	return 0;
}

/* A header as HTTP/1.1's parser leaves it: name and value, NUL-terminated, in the
 * arena; a refusal is kept to be answered once the headers are in. */
static void add_header(struct http_req *r, const char *name, const uint8_t *v, size_t vn)
{
	if (r->early_err >= 0)
		return;
	int e = r->nh >= HTTP_MAX_HEADERS ? AE_HEADERS_TOO_LARGE : AE_NONE;
	if (!e) {
		r->hdr_off[r->nh][0] = r->alen;
		e = http_req_arena_add(r, name, strlen(name) + 1);
	}
	if (!e) {
		r->hdr_off[r->nh][1] = r->alen;
		e = http_req_arena_add(r, (const char *)v, vn);
	}
	if (!e)
		e = http_req_arena_add(r, "", 1);
	if (e)
		r->early_err = e;
	else
		r->nh++;
}

/* The URL opens the arena, as HTTP/1.1's parser leaves it, then :authority as Host;
 * the pseudo-headers may come in any order, but always before the others. */
static void url_first(struct h2_stream *st)
{
	struct http_req *r = st->r;
	if (r->url_done)
		return;
	r->url_done = true;
	const char *url = st->path ? st->path : "";
	int e = http_req_arena_add(r, url, strlen(url) + 1);
	if (e && r->early_err < 0)
		r->early_err = e;
	if (st->authority)
		add_header(r, "host", (const uint8_t *)st->authority, strlen(st->authority));
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nn,
		     const uint8_t *value, size_t vn, uint8_t flags, void *user)
{
	(void)flags; (void)s;
	struct h2_stream *st = stream_of(user, f->hd.stream_id);
	if (!st || !st->r || f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0; /* trailers: nothing here reads them */
	struct http_req *r = st->r;
	/* nghttp2 has checked the fields (lower-case token names, no CR/LF/NUL in
	 * values, pseudo-headers first, once each, the ones a request needs). */
	if (nn == 7 && !memcmp(name, ":method", 7)) {
		r->method = method_of(value, vn);
	} else if (nn == 5 && !memcmp(name, ":path", 5)) {
		if (!st->path && !(st->path = strndup((const char *)value, vn)))
			r->early_err = AE_INTERNAL;
	} else if (nn == 10 && !memcmp(name, ":authority", 10)) {
		if (!st->authority && !(st->authority = strndup((const char *)value, vn)))
			r->early_err = AE_INTERNAL;
	} else if (nn && name[0] != ':') {
		url_first(st);
		char lname[128];
		if (nn >= sizeof(lname)) {
			r->early_err = r->early_err >= 0 ? r->early_err : AE_HEADERS_TOO_LARGE;
			return 0;
		}
		memcpy(lname, name, nn);
		lname[nn] = 0;
		if (!strcmp(lname, "host") && st->authority &&
		    (strlen(st->authority) != vn || memcmp(st->authority, value, vn))) {
			/* Two names of the target: a proxy in front may have routed by the other
			 * (RFC 9113 8.3.1), as HTTP/1.1 refuses two Host headers. */
			if (r->early_err < 0) {
				r->early_err = AE_BAD_REQUEST;
				r->early_msg = strdup(":authority and host name different targets");
			}
			return 0;
		}
		add_header(r, lname, value, vn);
	}
	return 0;
}

/* A refused request is answered at once (HTTP/1.1 reads the body first, to keep
 * the connection in step; a stream's rest is simply dropped). */
static void answer_early(struct h2_stream *st, int e, const char *msg)
{
	struct http_req *r = st->r;
	st->discard = true;
	r->early_err = -1;
	router_refuse(r, (enum api_err)e, msg ? msg : http_err_text(e));
}

static void headers_in(struct h2_stream *st, bool end_stream)
{
	struct http_req *r = st->r;
	url_first(st);
	for (unsigned i = 0; i < r->nh; i++) {
		r->h[i].name = r->arena + r->hdr_off[i][0];
		r->h[i].value = r->arena + r->hdr_off[i][1];
	}
	r->headers_done = true;
	r->complete = end_stream;
	if (r->early_err >= 0) {
		answer_early(st, r->early_err, r->early_msg);
		return;
	}
	if (r->method == UINT_MAX) {
		st->discard = true;
		http_reply_error(r, AE_METHOD_NOT_ALLOWED, "unknown request method", NULL, NULL);
		return;
	}
	const char *cl = http_req_header(r, "content-length");
	if (cl && *cl && strlen(cl) < 20 && strspn(cl, "0123456789") == strlen(cl))
		r->content_length = strtoull(cl, NULL, 10);
	if (http_req_headers_ready(r)) {
		answer_early(st, AE_PAYLOAD_TOO_LARGE, "Content-Length exceeds the limit for this endpoint");
		return;
	}
	if (r->early_err >= 0) {
		answer_early(st, r->early_err, r->early_msg);
		return;
	}
	if (end_stream && st->r && !r->msg_handled_) {
		r->msg_handled_ = true;
		http_req_message_ready(r);
	}
}

/* The request's end, once every held byte has been taken. */
static void body_end(struct h2_stream *st)
{
	struct http_req *r = st->r;
	if (!r || st->discard || r->msg_handled_ || bytebuf_pending(&st->in))
		return;
	r->complete = true;
	r->msg_handled_ = true;
	http_req_message_ready(r);
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
	(void)s;
	struct h2_stream *st = stream_of(user, f->hd.stream_id);
	if (!st || !st->r)
		return 0;
	bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
	if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
		headers_in(st, end);
	} else if (end && (f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS)) {
		st->in_end = true;
		body_end(st);
	}
	return 0;
}

/* Gives bytes to the handler; false when it paused (the rest stays held). */
static bool deliver(struct h2_stream *st, const uint8_t *p, size_t n)
{
	struct h2_conn *hc = st->hc;
	int32_t id = st->id;
	int e = http_req_take_body(st->r, p, n);
	/* The handler may have ended the stream under us; the bytes are taken. */
	if (stream_of(hc, id) != st)
		return false;
	nghttp2_session_consume_stream(hc->s, id, n);
	if (e) {
		/* A streamed body's handler holds the request: it lets go before the refusal. */
		http_req_abort_handler(st->r);
		if (stream_of(hc, id) == st && st->r)
			answer_early(st, e, NULL);
		return false;
	}
	return st->r && !st->r->body_paused;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *p, size_t n, void *user)
{
	(void)flags;
	struct h2_conn *hc = user;
	struct h2_stream *st = stream_of(hc, id);
	/* The connection's window reopens at once; the stream's as the bytes are taken. */
	nghttp2_session_consume_connection(s, n);
	if (st)
		st->last_in_ms = ur_now_ms();
	if (!st || !st->r || st->discard || st->r->finished) {
		nghttp2_session_consume_stream(s, id, n);
		return 0;
	}
	if (st->r->body_paused || bytebuf_pending(&st->in)) {
		/* Held, not consumed: the stream's window closes behind it. */
		if (bytebuf_add(&st->in, p, n))
			return NGHTTP2_ERR_CALLBACK_FAILURE;
		return 0;
	}
	deliver(st, p, n);
	return 0;
}

/* Bytes held while the handler paused, now that it may take them. */
static void deliver_held(struct h2_stream *st)
{
	while (st->r && !st->r->body_paused && bytebuf_pending(&st->in)) {
		size_t n = bytebuf_pending(&st->in);
		if (n > 16384)
			n = 16384;
		const uint8_t *p = st->in.p + st->in.off;
		st->in.off += n;
		bool more = deliver(st, p, n);
		if (stream_of(st->hc, st->id) != st)
			return;
		if (!more)
			break;
	}
	if (!bytebuf_pending(&st->in)) {
		bytebuf_free(&st->in);
		if (st->in_end)
			body_end(st);
	}
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t error_code, void *user)
{
	(void)error_code;
	struct h2_stream *st = stream_of(user, id);
	if (!st)
		return 0;
	nghttp2_session_set_stream_user_data(s, id, NULL);
	stream_drop_request(st);
	stream_unlink_free(st);
	return 0;
}

/* ---- response side ---- */

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
			 nghttp2_data_source *src, void *user)
{
	(void)s; (void)id; (void)user;
	struct h2_stream *st = src->ptr;
	size_t n = bytebuf_pending(&st->out);
	if (n > len)
		n = len;
	if (n) {
		memcpy(buf, st->out.p + st->out.off, n);
		st->last_out_ms = ur_now_ms();
	}
	st->out.off += n;
	if (!bytebuf_pending(&st->out)) {
		st->out.off = st->out.len = 0;
		if (st->out_eof)
			*flags |= NGHTTP2_DATA_FLAG_EOF;
		else if (!n) {
			st->deferred = true;
			return NGHTTP2_ERR_DEFERRED;
		}
	}
	return (ssize_t)n;
}

static void nv_add(nghttp2_nv *nv, size_t *n, const char *name, size_t nl, const char *value, size_t vl)
{
	nv[*n] = (nghttp2_nv){ (uint8_t *)name, (uint8_t *)value, nl, vl, NGHTTP2_NV_FLAG_NONE };
	(*n)++;
}

/* HTTP/1.1-only fields have no place in HTTP/2 (RFC 9113 8.2.2). */
static bool connection_specific(const char *lname)
{
	static const char *const names[] = { "connection", "keep-alive", "proxy-connection", "transfer-encoding",
					     "upgrade", "content-length" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(lname, names[i]))
			return true;
	return false;
}

#define H2_MAX_NV 24

static void submit_head(struct http_req *r, int status, const char *ctype, long long clen, const char *extra,
			bool has_body)
{
	struct h2_stream *st = r->h2;
	nghttp2_nv nv[H2_MAX_NV];
	size_t n = 0;
	char sbuf[8], lbuf[24];
	char names[H2_MAX_NV][64];
	int sl = snprintf(sbuf, sizeof(sbuf), "%d", status);
	nv_add(nv, &n, ":status", 7, sbuf, (size_t)sl);
	if (ctype)
		nv_add(nv, &n, "content-type", 12, ctype, strlen(ctype));
	if (clen >= 0) {
		int ll = snprintf(lbuf, sizeof(lbuf), "%lld", clen);
		nv_add(nv, &n, "content-length", 14, lbuf, (size_t)ll);
	}
	/* extra is "Name: value\r\n" lines, as HTTP/1.1 writes them. */
	for (const char *p = extra; p && *p && n < H2_MAX_NV;) {
		const char *eol = strstr(p, "\r\n"), *colon = strchr(p, ':');
		size_t len = eol ? (size_t)(eol - p) : strlen(p);
		if (colon && colon < p + len && (size_t)(colon - p) < sizeof(names[0])) {
			size_t nl = (size_t)(colon - p);
			char *lname = names[n];
			for (size_t i = 0; i < nl; i++)
				lname[i] = (char)tolower((unsigned char)p[i]);
			lname[nl] = 0;
			const char *v = colon + 1;
			while (*v == ' ' && v < p + len)
				v++;
			if (!connection_specific(lname))
				nv_add(nv, &n, lname, nl, v, (size_t)(p + len - v));
		}
		p += len + (eol ? 2 : 0);
	}
	nghttp2_data_provider prd = { .source.ptr = st, .read_callback = read_body };
	r->resp_started = true;
	r->status = status;
	if (nghttp2_submit_response(st->hc->s, st->id, nv, n, has_body ? &prd : NULL))
		nghttp2_submit_rst_stream(st->hc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* Bytes for the client: a stall is counted from when they began to wait. */
static int out_add(struct h2_stream *st, const void *p, size_t n)
{
	if (!bytebuf_pending(&st->out))
		st->last_out_ms = ur_now_ms();
	return bytebuf_add(&st->out, p, n);
}

static void out_changed(struct h2_stream *st)
{
	if (st->deferred) {
		st->deferred = false;
		nghttp2_session_resume_data(st->hc->s, st->id);
	}
	conn_kick(st->hc->c);
}

static void req_done(struct http_req *r)
{
	r->finished = true;
	out_changed(r->h2);
}

void h2_reply(struct http_req *r, int status, const char *ctype, const void *body, size_t n, const char *extra)
{
	struct h2_stream *st = r->h2;
	if (st->closed) {
		r->finished = true;
		return;
	}
	bool has_body = n && r->method != HTTP_HEAD;
	if (has_body && out_add(st, body, n)) {
		h2_stream_abort(r);
		return;
	}
	st->out_eof = true;
	submit_head(r, status, ctype, (long long)n, extra, has_body);
	req_done(r);
}

void h2_stream_start(struct http_req *r, int status, const char *ctype, const char *extra)
{
	if (r->h2->closed)
		return;
	submit_head(r, status, ctype, -1, extra, true);
	conn_kick(r->c);
}

void h2_stream_write2(struct http_req *r, const void *a, size_t an, const void *b, size_t bn)
{
	struct h2_stream *st = r->h2;
	if (st->closed)
		return;
	if ((an && out_add(st, a, an)) || (bn && out_add(st, b, bn))) {
		h2_stream_abort(r);
		return;
	}
	if (bytebuf_pending(&st->out) >= HTTP_OUT_HIGH)
		st->was_high = true;
	out_changed(st);
}

void h2_stream_finish(struct http_req *r)
{
	if (r->h2->closed) {
		r->finished = true;
		return;
	}
	r->h2->out_eof = true;
	req_done(r);
}

void h2_stream_abort(struct http_req *r)
{
	struct h2_stream *st = r->h2;
	r->finished = true;
	if (st->closed)
		return;
	/* RST_STREAM: the client sees the response cut short, never complete. */
	nghttp2_submit_rst_stream(st->hc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
	conn_kick(r->c);
}

size_t h2_stream_room(const struct http_req *r)
{
	if (r->h2->closed)
		return 0;
	size_t n = bytebuf_pending(&r->h2->out);
	return n >= HTTP_OUT_HIGH ? 0 : HTTP_OUT_HIGH - n;
}

size_t h2_stream_queued(const struct http_req *r)
{
	return bytebuf_pending(&r->h2->out);
}

/* ---- the connection ---- */

int h2_conn_start(struct conn *c)
{
	struct h2_conn *hc = calloc(1, sizeof(*hc));
	nghttp2_session_callbacks *cb = NULL;
	nghttp2_option *opt = NULL;
	if (!hc || nghttp2_session_callbacks_new(&cb) || nghttp2_option_new(&opt)) {
		free(hc);
		nghttp2_session_callbacks_del(cb);
		return -ENOMEM;
	}
	nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
	/* Window updates are ours: a stream's window reopens as its handler takes bytes. */
	nghttp2_option_set_no_auto_window_update(opt, 1);
	nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
	int rc = nghttp2_session_server_new2(&hc->s, cb, hc, opt);
	nghttp2_session_callbacks_del(cb);
	nghttp2_option_del(opt);
	if (rc) {
		free(hc);
		return -ENOMEM;
	}
	hc->c = c;
	nghttp2_settings_entry set[] = {
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_STREAMS },
		{ NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, HTTP_MAX_HEADER_BYTES },
		{ NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
	};
	if (nghttp2_submit_settings(hc->s, NGHTTP2_FLAG_NONE, set, sizeof(set) / sizeof(set[0])) ||
	    nghttp2_session_set_local_window_size(hc->s, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW)) {
		nghttp2_session_del(hc->s);
		free(hc);
		return -ENOMEM;
	}
	c->h2 = hc;
	return 0;
}

/* Frames output while the connection's queue has room. */
static void pump_out(struct h2_conn *hc)
{
	struct conn *c = hc->c;
	while (!c->dead && c->out.bytes < HTTP_OUT_HIGH) {
		const uint8_t *p;
		ssize_t n = nghttp2_session_mem_send(hc->s, &p);
		if (n < 0) {
			conn_close_after(c);
			return;
		}
		if (!n)
			break;
		conn_out(c, p, (size_t)n);
	}
}

/* Handlers whose queued output drained get their writable() call. */
static void run_writable(struct h2_conn *hc)
{
	for (struct h2_stream *st = hc->streams, *next; st; st = next) {
		next = st->next;
		struct http_req *r = st->r;
		if (!st->was_high || bytebuf_pending(&st->out) >= HTTP_OUT_LOW)
			continue;
		st->was_high = false;
		if (http_req_waiting(r) && r->ops && r->ops->writable) {
			int32_t id = st->id;
			r->ops->writable(r);
			if (hc->c->dead)
				return;
			/* The list may have changed under the handler: start over from a
			 * stream that surely still exists, or stop. */
			if (stream_of(hc, id) != st)
				return;
		}
	}
}

static void conn_free_session(struct h2_conn *hc)
{
	while (hc->streams) {
		struct h2_stream *st = hc->streams;
		nghttp2_session_set_stream_user_data(hc->s, st->id, NULL);
		stream_drop_request(st);
		stream_unlink_free(st);
	}
	nghttp2_session_del(hc->s);
	free(hc);
}

static void process(struct conn *c, struct h2_conn *hc)
{
	if (c->pend_len) {
		ssize_t n = nghttp2_session_mem_recv(hc->s, c->pend + c->pend_off, c->pend_len);
		if (hc->freed)
			return;
		c->pend_off = c->pend_len = 0;
		if (n < 0) /* the peer broke the protocol: GOAWAY, then the connection closes */
			nghttp2_session_terminate_session(hc->s, NGHTTP2_PROTOCOL_ERROR);
	}
	for (struct h2_stream *st = hc->streams, *next; st; st = next) {
		next = st->next;
		if (bytebuf_pending(&st->in) && st->r && !st->r->body_paused) {
			int32_t id = st->id;
			deliver_held(st);
			if (hc->freed)
				return;
			if (stream_of(hc, id) != st)
				break; /* the list changed: the next kick goes on */
		}
	}
	run_writable(hc);
	if (hc->freed)
		return;
	pump_out(hc);
	if (!nghttp2_session_want_read(hc->s) && !nghttp2_session_want_write(hc->s))
		conn_close_after(c);
}

void h2_conn_process(struct conn *c)
{
	struct h2_conn *hc = c->h2;
	/* Handlers run inside: one that tears the connection down must not free the
	 * session under nghttp2's feet. */
	hc->busy++;
	process(c, hc);
	if (--hc->busy == 0 && hc->freed)
		conn_free_session(hc);
}

void h2_conn_writable(struct conn *c)
{
	h2_conn_process(c);
}

void h2_conn_free(struct conn *c)
{
	struct h2_conn *hc = c->h2;
	if (!hc || hc->freed)
		return;
	c->h2 = NULL;
	hc->freed = true;
	if (!hc->busy)
		conn_free_session(hc);
}

bool h2_conn_idle(const struct conn *c)
{
	const struct h2_conn *hc = c->h2;
	bool over = !nghttp2_session_want_read(hc->s) && !nghttp2_session_want_write(hc->s);
	return (!hc->nstreams || over) && !c->out.bytes;
}

bool h2_conn_waiting(const struct conn *c)
{
	for (const struct h2_stream *st = c->h2->streams; st; st = st->next)
		if (http_req_waiting(st->r))
			return true;
	return false;
}

void h2_conn_drain(struct conn *c)
{
	struct h2_conn *hc = c->h2;
	if (hc->draining)
		return;
	hc->draining = true;
	nghttp2_submit_goaway(hc->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(hc->s),
			      NGHTTP2_NO_ERROR, NULL, 0);
	conn_kick(c);
}

static void stream_reset(struct h2_stream *st, uint32_t code)
{
	st->closed = true;
	nghttp2_submit_rst_stream(st->hc->s, NGHTTP2_FLAG_NONE, st->id, code);
	conn_kick(st->hc->c);
}

/* A stream's deadlines, as HTTP/1.1 has them per connection: a body that stopped coming
 * is answered 408 when nothing was answered yet, else reset; a response the client
 * stopped taking (its window kept shut) is reset. Either holds what was buffered for
 * it, up to the body and output limits, and an upload its sandbox's agent stream. */
static void stream_deadlines(struct h2_stream *st, uint64_t now)
{
	struct http_req *r = st->r;
	if (bytebuf_pending(&st->out)) {
		if (now - st->last_out_ms > srv_cfg.idle_timeout_ms)
			stream_reset(st, NGHTTP2_CANCEL);
		return;
	}
	/* Input the handler has not taken yet is not the client's stall. */
	if (bytebuf_pending(&st->in) || !http_body_stalled(r, st->last_in_ms, now))
		return;
	if (!r->dispatched && !r->resp_started)
		answer_early(st, AE_REQUEST_TIMEOUT, "request body stalled");
	else /* answered: the rest is not needed; else a handler's upload, told by the close */
		stream_reset(st, r->resp_started ? NGHTTP2_NO_ERROR : NGHTTP2_CANCEL);
}

bool h2_conn_check_deadlines(struct conn *c, uint64_t now)
{
	/* A client that stopped reading what it asked for. */
	if (c->out.bytes && now - c->last_tx_ms > srv_cfg.idle_timeout_ms)
		return true;
	/* Headers trickled in CONTINUATION frames hold a stream open: as slow
	 * HTTP/1.1 headers, they get the header timeout. */
	for (const struct h2_stream *st = c->h2->streams; st; st = st->next)
		if (st->r && !st->r->headers_done && now - st->opened_ms > srv_cfg.header_timeout_ms)
			return true;
	for (struct h2_stream *st = c->h2->streams, *next; st; st = next) {
		next = st->next;
		if (st->r && !st->closed)
			stream_deadlines(st, now);
	}
	return !c->h2->nstreams && now - c->last_rx_ms > srv_cfg.idle_timeout_ms &&
	       now - c->last_tx_ms > srv_cfg.idle_timeout_ms;
}
