#include "agent/conn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/loop.h"

/* Above this much unsent output the connection stops producing DATA and stops
 * reading requests, so a client that does not read cannot make us grow. */
#define WBUF_HIGH (1u << 20)
#define WBUF_LOW (WBUF_HIGH / 2)
#define MAX_STREAMS 256
#define READ_CHUNK (64u << 10)

struct conn {
	int fd;
	struct watch w;
	struct proto_parser parser;
	uint8_t *wbuf;
	size_t woff, wlen, wcap;
	bool hello_done;
	bool dead;      /* write failed or peer gone: drop output, close soon */
	bool closing;   /* close once the output buffer is flushed */
	bool throttled; /* went above WBUF_HIGH, waiting to drain below WBUF_LOW */
	bool exit_on_close;
	uint32_t last_id;
	struct stream *streams;
	unsigned nstreams;
};

static void conn_update_interest(struct conn *c)
{
	uint32_t ev = 0;
	if (!c->closing && c->wlen < WBUF_HIGH)
		ev |= EPOLLIN;
	if (c->wlen)
		ev |= EPOLLOUT;
	if (c->dead)
		ev = EPOLLOUT; /* wakes the handler at once so it can close */
	watch_set(&c->w, ev);
}

static void conn_notify_writable(struct conn *c)
{
	for (struct stream *s = c->streams, *next; s; s = next) {
		next = s->next;
		if (s->ops && s->ops->writable)
			s->ops->writable(s);
	}
}

/* notify: tell throttled streams that they may send again. Only the EPOLLOUT
 * path does: from inside an operation's callback, re-entering other streams'
 * callbacks could free what the caller still uses. */
static void conn_flush(struct conn *c, bool notify)
{
	while (c->wlen && !c->dead) {
		ssize_t n = write(c->fd, c->wbuf + c->woff, c->wlen);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				c->dead = true;
			break;
		}
		c->woff += (size_t)n;
		c->wlen -= (size_t)n;
	}
	if (!c->wlen)
		c->woff = 0;
	conn_update_interest(c);
	if (notify && c->throttled && c->wlen < WBUF_LOW) {
		c->throttled = false;
		conn_notify_writable(c);
	}
}

static void conn_frame(struct conn *c, uint8_t type, uint8_t flags, uint8_t channel, uint32_t id,
		       const void *p, size_t n)
{
	if (c->dead)
		return;
	size_t need = PROTO_HEADER_SIZE + n;
	if (c->woff + c->wlen + need > c->wcap) {
		if (c->woff) {
			memmove(c->wbuf, c->wbuf + c->woff, c->wlen);
			c->woff = 0;
		}
		if (c->wlen + need > c->wcap) {
			size_t cap = c->wcap ? c->wcap : 64 * 1024;
			while (cap < c->wlen + need)
				cap *= 2;
			uint8_t *nb = realloc(c->wbuf, cap);
			if (!nb) {
				c->dead = true;
				conn_update_interest(c);
				return;
			}
			c->wbuf = nb;
			c->wcap = cap;
		}
	}
	struct proto_header h = { .length = (uint32_t)n, .stream = id, .type = type,
				  .flags = flags, .channel = channel };
	bool was_empty = !c->wlen;
	proto_header_encode(&h, c->wbuf + c->woff + c->wlen);
	if (n)
		memcpy(c->wbuf + c->woff + c->wlen + PROTO_HEADER_SIZE, p, n);
	c->wlen += need;
	if (c->wlen >= WBUF_HIGH)
		c->throttled = true;
	/* Write at once when nothing is queued: lowest latency, and a busy socket
	 * falls back to EPOLLOUT batching by itself. */
	if (was_empty)
		conn_flush(c, false);
	else
		conn_update_interest(c);
}

static void conn_notice(struct conn *c, uint32_t id, uint8_t type, enum proto_err code, const char *msg)
{
	struct jw w;
	const char *out;
	size_t n;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "code");
	jw_str(&w, proto_err_code(code));
	jw_key(&w, "message");
	jw_str(&w, msg);
	jw_key(&w, "stream");
	jw_int(&w, id);
	jw_key(&w, "frame_type");
	jw_int(&w, type);
	jw_obj_end(&w);
	if (!jw_finish(&w, &out, &n))
		conn_frame(c, PROTO_ERROR, 0, 0, 0, out, n);
	jw_free(&w);
}

static struct stream *conn_find(struct conn *c, uint32_t id)
{
	for (struct stream *s = c->streams; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

static void stream_free(struct stream *s)
{
	struct conn *c = s->conn;
	for (struct stream **pp = &c->streams; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	}
	c->nstreams--;
	free(s);
}

static void stream_cancel(struct stream *s)
{
	if (s->ops && s->ops->cancel)
		s->ops->cancel(s);
	stream_free(s);
}

/* ---- stream API for operations ---- */

size_t stream_send_space(const struct stream *s)
{
	const struct conn *c = s->conn;
	if (c->dead || c->throttled)
		return 0;
	return s->tx_credit < PROTO_DATA_CHUNK ? (size_t)s->tx_credit : PROTO_DATA_CHUNK;
}

bool stream_congested(const struct stream *s)
{
	return s->conn->dead || s->conn->throttled;
}

void stream_data(struct stream *s, uint8_t channel, bool fin, const void *p, size_t n)
{
	s->tx_credit -= n <= s->tx_credit ? n : s->tx_credit;
	conn_frame(s->conn, PROTO_DATA, fin ? PROTO_FLAG_FIN : 0, channel, s->id, p, n);
}

void stream_event(struct stream *s, const char *json, size_t n)
{
	conn_frame(s->conn, PROTO_EVENT, 0, 0, s->id, json, n);
}

void stream_event_jw(struct stream *s, struct jw *w)
{
	const char *out;
	size_t n;
	if (!jw_finish(w, &out, &n))
		stream_event(s, out, n);
	jw_free(w);
}

void stream_consumed(struct stream *s, size_t n)
{
	s->rx_consumed += n;
	if (s->rx_consumed >= PROTO_INITIAL_WINDOW / 2) {
		uint8_t inc[4] = { (uint8_t)(s->rx_consumed >> 24), (uint8_t)(s->rx_consumed >> 16),
				   (uint8_t)(s->rx_consumed >> 8), (uint8_t)s->rx_consumed };
		conn_frame(s->conn, PROTO_WINDOW, 0, 0, s->id, inc, sizeof(inc));
		s->rx_allowed += s->rx_consumed;
		s->rx_consumed = 0;
	}
}

static void stream_end_raw(struct stream *s, const char *json, size_t n)
{
	conn_frame(s->conn, PROTO_END, 0, 0, s->id, json, n);
	stream_free(s);
}

void stream_end_jw(struct stream *s, struct jw *w)
{
	const char *out;
	size_t n;
	if (jw_finish(w, &out, &n))
		stream_end_raw(s, "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}", 54);
	else
		stream_end_raw(s, out, n);
	jw_free(w);
}

void stream_end_ok(struct stream *s)
{
	stream_end_raw(s, "{}", 2);
}

void jw_error(struct jw *w, enum proto_err code, const char *message)
{
	jw_key(w, "error");
	jw_obj(w);
	jw_key(w, "code");
	jw_str(w, proto_err_code(code));
	jw_key(w, "message");
	jw_str(w, message);
	jw_obj_end(w);
}

void stream_end_error(struct stream *s, enum proto_err code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_error(&w, code, msg);
	jw_obj_end(&w);
	stream_end_jw(s, &w);
}

void stream_end_errno(struct stream *s, int err, const char *what)
{
	stream_end_error(s, proto_err_from_errno(err), "%s: %s", what, strerror(err < 0 ? -err : err));
}

/* ---- inbound frames ---- */

static void handle_hello(struct conn *c, const uint8_t *p, size_t n)
{
	struct json *req = NULL;
	int64_t minv = 1, maxv = 1;
	if (json_parse((const char *)p, n, &req)) {
		conn_notice(c, 0, PROTO_HELLO, PERR_PROTOCOL_ERROR, "hello payload is not JSON");
		c->closing = true;
		conn_update_interest(c);
		return;
	}
	json_get_int(req, "min_version", 1, UINT32_MAX, &minv);
	json_get_int(req, "max_version", 1, UINT32_MAX, &maxv);
	json_free(req);
	if (minv > PROTO_VERSION || maxv < PROTO_VERSION) {
		conn_notice(c, 0, PROTO_HELLO, PERR_UNSUPPORTED, "no common protocol version (agent speaks 1)");
		c->closing = true;
		conn_update_interest(c);
		return;
	}
	struct jw w;
	const char *out;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "version");
	jw_int(&w, PROTO_VERSION);
	jw_key(&w, "agent");
	jw_str(&w, "mitos-agent");
	jw_key(&w, "agent_version");
	jw_str(&w, MITOS_AGENT_VERSION);
	jw_key(&w, "max_payload");
	jw_int(&w, PROTO_MAX_PAYLOAD);
	jw_key(&w, "window");
	jw_int(&w, PROTO_INITIAL_WINDOW);
	jw_key(&w, "max_streams");
	jw_int(&w, MAX_STREAMS);
	jw_obj_end(&w);
	if (!jw_finish(&w, &out, &n))
		conn_frame(c, PROTO_HELLO, 0, 0, 0, out, n);
	jw_free(&w);
	c->hello_done = true;
}

static void handle_open(struct conn *c, const struct proto_header *h, const uint8_t *p)
{
	if (h->stream == 0 || h->stream > PROTO_MAX_STREAM_ID || h->stream <= c->last_id) {
		conn_notice(c, h->stream, h->type, PERR_PROTOCOL_ERROR,
			    "stream ids must be new and increase");
		return;
	}
	c->last_id = h->stream;
	struct stream *s = calloc(1, sizeof(*s));
	if (!s) {
		conn_notice(c, h->stream, h->type, PERR_BUSY, "out of memory");
		return;
	}
	s->conn = c;
	s->id = h->stream;
	s->tx_credit = PROTO_INITIAL_WINDOW;
	s->rx_allowed = PROTO_INITIAL_WINDOW;
	s->next = c->streams;
	c->streams = s;
	c->nstreams++;
	if (c->nstreams > MAX_STREAMS) {
		stream_end_error(s, PERR_BUSY, "too many open streams (max %d)", MAX_STREAMS);
		return;
	}
	struct json *req = NULL;
	if (json_parse((const char *)p, h->length, &req) || req->kind != JSON_OBJ) {
		json_free(req);
		stream_end_error(s, PERR_INVALID_ARGUMENT, "open payload must be a JSON object");
		return;
	}
	const char *name = json_get_str(req, "op");
	op_open_fn fn = name ? ops_find(name) : NULL;
	if (fn)
		fn(s, req);
	else
		stream_end_error(s, PERR_UNSUPPORTED, "unknown op '%s'", name ? name : "");
	json_free(req);
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void stream_violation(struct stream *s, const char *msg)
{
	if (s->ops && s->ops->cancel)
		s->ops->cancel(s);
	s->ops = NULL;
	stream_end_error(s, PERR_PROTOCOL_ERROR, "%s", msg);
}

static void handle_stream_frame(struct conn *c, const struct proto_header *h, const uint8_t *p)
{
	struct stream *s = conn_find(c, h->stream);
	if (!s) {
		/* Frames racing with our END are normal; ids never opened are not. */
		if (h->stream > c->last_id)
			conn_notice(c, h->stream, h->type, PERR_PROTOCOL_ERROR, "unknown stream id");
		return;
	}
	switch (h->type) {
	case PROTO_DATA:
		if (h->channel > PROTO_CH_STDERR) {
			stream_violation(s, "bad DATA channel");
		} else if (h->length > s->rx_allowed) {
			stream_violation(s, "DATA beyond the flow-control window");
		} else {
			s->rx_allowed -= h->length;
			if (s->ops && s->ops->data)
				s->ops->data(s, h->channel, h->flags & PROTO_FLAG_FIN, p, h->length);
			else
				stream_consumed(s, h->length);
		}
		break;
	case PROTO_WINDOW:
		if (h->length != 4) {
			stream_violation(s, "WINDOW payload must be 4 bytes");
		} else {
			s->tx_credit += be32(p);
			if (s->tx_credit > UINT32_MAX)
				stream_violation(s, "WINDOW overflows 2^32");
			else if (s->ops && s->ops->writable)
				s->ops->writable(s);
		}
		break;
	case PROTO_EVENT: {
		struct json *ev = NULL;
		if (json_parse((const char *)p, h->length, &ev) || ev->kind != JSON_OBJ)
			conn_notice(c, h->stream, h->type, PERR_INVALID_ARGUMENT, "event payload must be a JSON object");
		else if (s->ops && s->ops->event)
			s->ops->event(s, ev);
		else
			conn_notice(c, h->stream, h->type, PERR_UNSUPPORTED, "this stream takes no events");
		json_free(ev);
		break;
	}
	case PROTO_CANCEL:
		stream_cancel(s);
		break;
	default:
		conn_notice(c, h->stream, h->type, PERR_PROTOCOL_ERROR, "frame type not valid from a client");
	}
}

static void conn_dispatch(struct conn *c, const struct proto_header *h, const uint8_t *p)
{
	if (h->reserved) {
		conn_notice(c, h->stream, h->type, PERR_PROTOCOL_ERROR, "reserved header byte must be 0");
		return;
	}
	if (!proto_type_known(h->type)) {
		conn_notice(c, h->stream, h->type, PERR_PROTOCOL_ERROR, "unknown frame type");
		return;
	}
	if (h->type == PROTO_HELLO) {
		if (h->stream || c->hello_done)
			conn_notice(c, h->stream, h->type, PERR_PROTOCOL_ERROR, "HELLO must come once, on stream 0");
		else
			handle_hello(c, p, h->length);
		return;
	}
	if (!c->hello_done) {
		conn_notice(c, h->stream, h->type, PERR_PROTOCOL_ERROR, "HELLO must come first");
		return;
	}
	if (h->type == PROTO_ERROR)
		return; /* a client's notice: nothing to do with it */
	if (h->type == PROTO_OPEN)
		handle_open(c, h, p);
	else if (h->stream == 0)
		conn_notice(c, 0, h->type, PERR_PROTOCOL_ERROR, "stream 0 carries only HELLO and ERROR");
	else
		handle_stream_frame(c, h, p);
}

static void conn_close(struct conn *c)
{
	while (c->streams)
		stream_cancel(c->streams);
	watch_del(&c->w);
	close(c->fd);
	proto_parser_free(&c->parser);
	free(c->wbuf);
	if (c->exit_on_close)
		loop_stop();
	free(c);
}

static void conn_read(struct conn *c)
{
	uint8_t buf[READ_CHUNK];
	ssize_t n = read(c->fd, buf, sizeof(buf));
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			c->dead = true;
		return;
	}
	if (n == 0) {
		c->dead = true;
		return;
	}
	const uint8_t *p = buf;
	size_t len = (size_t)n;
	while (len && !c->dead && !c->closing) {
		struct proto_header h;
		const uint8_t *payload = NULL;
		switch (proto_parse(&c->parser, &p, &len, &h, &payload)) {
		case PROTO_PARSE_NEED_MORE:
			break;
		case PROTO_PARSE_OVERSIZED: {
			conn_notice(c, h.stream, h.type, PERR_PROTOCOL_ERROR, "frame exceeds max_payload");
			struct stream *s = h.stream ? conn_find(c, h.stream) : NULL;
			if (s)
				stream_violation(s, "frame exceeds max_payload");
			break;
		}
		case PROTO_PARSE_FRAME:
			conn_dispatch(c, &h, payload);
			break;
		}
	}
}

static void conn_event(struct watch *w, uint32_t events)
{
	struct conn *c = (struct conn *)((char *)w - offsetof(struct conn, w));
	if (events & EPOLLOUT)
		conn_flush(c, true);
	if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->dead && !c->closing)
		conn_read(c);
	if (c->dead || (c->closing && !c->wlen)) {
		conn_close(c);
		return;
	}
	conn_update_interest(c);
}

int conn_start(int fd, bool exit_on_close)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
		free(c);
		return -errno;
	}
	c->fd = fd;
	c->exit_on_close = exit_on_close;
	proto_parser_init(&c->parser, PROTO_MAX_PAYLOAD);
	int rc = watch_add(&c->w, fd, EPOLLIN, conn_event);
	if (rc) {
		free(c);
		return rc;
	}
	return 0;
}
