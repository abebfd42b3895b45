#include "api/sandbox/agent_client.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent/proto.h"
#include "api/http/bytebuf.h"
#include "api/http/sendq.h"
#include "api/http/uring.h"
#include "lib/printable.h"
#include "lib/unix_connect.h"

#define AC_RBUF (64u << 10)
#define AC_WCHUNK (64u << 10)
#define AC_IOV 16
/* Grant credit back once this much was consumed. */
#define AC_WINDOW_STEP (PROTO_INITIAL_WINDOW / 4)

struct agent_conn {
	int fd;
	struct uop rx_op, tx_op;
	unsigned inflight;
	bool rx_armed, tx_armed, dead, ready;
	/* A vsock host socket answers "OK <port>\n" to our CONNECT line before the agent
	 * speaks; the line is read into here. */
	bool vsock_handshake;
	uint8_t hs_len;
	char hs_line[32];
	uint8_t *rbuf;
	struct proto_parser parser;
	struct sendq out;
	struct iovec iov[AC_IOV];
	struct msghdr msg;
	struct astream *streams;
	unsigned nstreams;
	/* The stream whose data() runs now; NULL once the callback freed it. */
	struct astream *delivering;
	uint32_t next_id;
	const struct agent_conn_cbs *cbs;
	void *ctx;
	struct agent_conn *all_prev, *all_next;
	unsigned notices;   /* ERROR frames logged */
	char where[96];     /* the end of the socket's path, to say whose notice it is */
};

#define NOTICES_MAX 20

static struct agent_conn *all_conns;

static void ac_fail(struct agent_conn *ac, const char *why);
static void ac_flush(struct agent_conn *ac);

static void ac_maybe_free(struct agent_conn *ac)
{
	if (!ac->dead || ac->inflight)
		return;
	if (ac->all_prev)
		ac->all_prev->all_next = ac->all_next;
	else
		all_conns = ac->all_next;
	if (ac->all_next)
		ac->all_next->all_prev = ac->all_prev;
	close(ac->fd);
	sendq_free(&ac->out);
	free(ac->rbuf);
	proto_parser_free(&ac->parser);
	free(ac);
}

static void ac_queue(struct agent_conn *ac, const void *p, size_t n)
{
	if (sendq_append(&ac->out, p, n, AC_WCHUNK))
		ac_fail(ac, "out of memory");
}

static void ac_frame(struct agent_conn *ac, uint8_t type, uint8_t flags, uint8_t ch, uint32_t id,
		     const void *p, size_t n)
{
	if (ac->dead)
		return;
	uint8_t hdr[PROTO_HEADER_SIZE];
	struct proto_header h = { .length = (uint32_t)n, .stream = id, .type = type, .flags = flags,
				  .channel = ch };
	proto_header_encode(&h, hdr);
	ac_queue(ac, hdr, sizeof(hdr));
	if (n)
		ac_queue(ac, p, n);
	ac_flush(ac);
}

static void tx_done(struct uop *op, int res, uint32_t flags)
{
	(void)flags;
	struct agent_conn *ac = (struct agent_conn *)((char *)op - offsetof(struct agent_conn, tx_op));
	ac->inflight--;
	ac->tx_armed = false;
	if (ac->dead) {
		ac_maybe_free(ac);
		return;
	}
	if (res < 0) {
		ac_fail(ac, "write to the agent failed");
		return;
	}
	sendq_consume(&ac->out, (size_t)res);
	ac_flush(ac);
}

static void ac_flush(struct agent_conn *ac)
{
	if (ac->dead || ac->tx_armed || !ac->out.head)
		return;
	sendq_prep_sendmsg(&ac->out, ur_sqe(&ac->tx_op), ac->fd, &ac->msg, ac->iov, AC_IOV);
	ac->tx_armed = true;
	ac->inflight++;
}

static struct astream *find_stream(struct agent_conn *ac, uint32_t id)
{
	for (struct astream *s = ac->streams; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

static void stream_unlink(struct astream *s)
{
	struct agent_conn *ac = s->ac;
	if (ac->delivering == s)
		ac->delivering = NULL;
	for (struct astream **pp = &ac->streams; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			ac->nstreams--;
			return;
		}
}

static void stream_end(struct astream *s, cJSON *payload, const char *why)
{
	stream_unlink(s);
	if (s->ops && s->ops->end)
		s->ops->end(s, payload, why);
	free(s);
}

static void end_all(struct agent_conn *ac, const char *why)
{
	while (ac->streams)
		stream_end(ac->streams, NULL, why);
}

static void ac_teardown(struct agent_conn *ac)
{
	ac->dead = true;
	shutdown(ac->fd, SHUT_RDWR);
	ac_maybe_free(ac);
}

static void ac_fail(struct agent_conn *ac, const char *why)
{
	if (ac->dead)
		return;
	ac->dead = true; /* no new frames from callbacks below */
	end_all(ac, why);
	if (ac->cbs && ac->cbs->closed)
		ac->cbs->closed(ac, ac->ctx, why);
	ac_teardown(ac);
}

void agent_conn_close(struct agent_conn *ac)
{
	if (!ac || ac->dead)
		return;
	ac->dead = true;
	end_all(ac, "the sandbox is gone");
	ac_teardown(ac);
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void grant(struct astream *s)
{
	if (s->rx_held < AC_WINDOW_STEP || (s->ops && s->ops->room && !s->ops->room(s)))
		return;
	uint64_t n = s->rx_held;
	uint8_t inc[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
	s->rx_held = 0;
	s->rx_window += n;
	ac_frame(s->ac, PROTO_WINDOW, 0, 0, s->id, inc, 4);
}

/* DATA past the window granted: the agent ignores credit. Its stream is reset (the
 * consumer sees the stream end with why) rather than buffered without bound. */
static void data_past_window(struct agent_conn *ac, struct astream *s, uint32_t len)
{
	char why[160];
	snprintf(why, sizeof(why), "the agent sent %u bytes with %llu of credit left (protocol violation): "
		 "the stream was reset", len, (unsigned long long)s->rx_window);
	uint32_t id = s->id;
	stream_end(s, NULL, why);
	ac_frame(ac, PROTO_CANCEL, 0, 0, id, NULL, 0);
	if (ac->cbs && ac->cbs->violation)
		ac->cbs->violation(ac, ac->ctx, why);
}

static void deliver(struct agent_conn *ac, struct astream *s, const struct proto_header *h, const uint8_t *p)
{
	if (h->length > s->rx_window) {
		data_past_window(ac, s, h->length);
		return;
	}
	s->rx_window -= h->length;
	s->rx_held += h->length;
	if (s->ops && s->ops->data) {
		ac->delivering = s;
		s->ops->data(s, h->channel, h->flags & PROTO_FLAG_FIN, p, h->length);
		if (ac->delivering != s)
			return; /* the consumer ended the stream */
		ac->delivering = NULL;
	}
	grant(s);
}

static void dispatch(struct agent_conn *ac, const struct proto_header *h, const uint8_t *p)
{
	if (h->type == PROTO_HELLO) {
		if (ac->ready)
			return;
		cJSON *j = cJSON_ParseWithLength((const char *)p, h->length);
		cJSON *v = j ? cJSON_GetObjectItemCaseSensitive(j, "version") : NULL;
		bool ok = cJSON_IsNumber(v) && v->valueint == PROTO_VERSION;
		cJSON_Delete(j);
		if (!ok) {
			ac_fail(ac, "the agent speaks another protocol version");
			return;
		}
		ac->ready = true;
		if (ac->cbs && ac->cbs->ready)
			ac->cbs->ready(ac, ac->ctx);
		return;
	}
	if (h->type == PROTO_ERROR) {
		/* The agent may be the sandbox's own: its words are printable only, a line, a
		 * few of them, and said to be whose. */
		if (ac->notices++ >= NOTICES_MAX) {
			if (ac->notices == NOTICES_MAX + 1)
				fprintf(stderr, "mitos-vmm serve: agent at %s: more notices, not logged\n", ac->where);
			return;
		}
		char text[301];
		printable_copy(text, sizeof(text), p, h->length, 0);
		fprintf(stderr, "mitos-vmm serve: agent at %s: notice: %s\n", ac->where, text);
		return;
	}
	struct astream *s = h->stream ? find_stream(ac, h->stream) : NULL;
	if (!s)
		return; /* raced with our CANCEL */
	switch (h->type) {
	case PROTO_DATA:
		deliver(ac, s, h, p);
		break;
	case PROTO_EVENT: {
		cJSON *ev = cJSON_ParseWithLength((const char *)p, h->length);
		if (ev && s->ops && s->ops->event)
			s->ops->event(s, ev);
		cJSON_Delete(ev);
		break;
	}
	case PROTO_WINDOW:
		if (h->length == 4) {
			s->tx_credit += be32(p);
			if (s->ops && s->ops->writable)
				s->ops->writable(s);
		}
		break;
	case PROTO_END: {
		cJSON *res = cJSON_ParseWithLength((const char *)p, h->length);
		if (!res)
			res = cJSON_CreateObject();
		stream_end(s, res, NULL);
		cJSON_Delete(res);
		break;
	}
	default:
		break;
	}
}

static void ac_arm_rx(struct agent_conn *ac)
{
	if (ac->dead || ac->rx_armed)
		return;
	io_uring_prep_recv(ur_sqe(&ac->rx_op), ac->fd, ac->rbuf, AC_RBUF, 0);
	ac->rx_armed = true;
	ac->inflight++;
}

static void rx_done(struct uop *op, int res, uint32_t flags)
{
	(void)flags;
	struct agent_conn *ac = (struct agent_conn *)((char *)op - offsetof(struct agent_conn, rx_op));
	ac->inflight--;
	ac->rx_armed = false;
	if (ac->dead) {
		ac_maybe_free(ac);
		return;
	}
	if (res <= 0) {
		ac_fail(ac, res < 0 ? "reading from the agent failed"
			: ac->vsock_handshake ? "nobody listens on the agent's vsock port in the guest "
						"(the VM closed the connection)"
			: "the agent closed the connection");
		return;
	}
	const uint8_t *p = ac->rbuf;
	size_t len = (size_t)res;
	while (ac->vsock_handshake && len) {
		char ch = (char)*p++;
		len--;
		if (ch == '\n') {
			ac->hs_line[ac->hs_len] = 0;
			ac->vsock_handshake = false;
		} else if (ac->hs_len + 1u < sizeof(ac->hs_line)) {
			ac->hs_line[ac->hs_len++] = ch;
		} else {
			ac_fail(ac, "the VM's vsock socket answered CONNECT with an overlong line");
			return;
		}
		if (!ac->vsock_handshake && strncmp(ac->hs_line, "OK ", 3)) {
			ac_fail(ac, "the VM's vsock socket did not answer CONNECT with OK");
			return;
		}
	}
	/* Holds ac while callbacks run: one of them may close it. */
	ac->inflight++;
	while (len && !ac->dead) {
		struct proto_header h;
		const uint8_t *payload = NULL;
		enum proto_parse_event ev = proto_parse(&ac->parser, &p, &len, &h, &payload);
		if (ev == PROTO_PARSE_FRAME)
			dispatch(ac, &h, payload);
		else if (ev == PROTO_PARSE_OVERSIZED)
			ac_fail(ac, "the agent sent an oversized frame");
	}
	ac->inflight--;
	if (ac->dead) {
		ac_maybe_free(ac);
		return;
	}
	ac_arm_rx(ac);
}

int agent_connect(const char *path, const struct agent_conn_cbs *cbs, void *ctx, struct agent_conn **out)
{
	return agent_connect_vsock(path, 0, cbs, ctx, out);
}

int agent_connect_vsock(const char *path, uint32_t vsock_port, const struct agent_conn_cbs *cbs, void *ctx,
			struct agent_conn **out)
{
	/* The socket's directory may be writable by the sandbox or its VM process. */
	int fd = unix_connect_nofollow(path, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return fd;
	struct agent_conn *ac = calloc(1, sizeof(*ac));
	uint8_t *rbuf = malloc(AC_RBUF);
	if (!ac || !rbuf || proto_parser_init(&ac->parser, PROTO_MAX_PAYLOAD)) {
		free(ac);
		free(rbuf);
		close(fd);
		return -ENOMEM;
	}
	ac->fd = fd;
	ac->rbuf = rbuf;
	size_t pl = strlen(path);
	snprintf(ac->where, sizeof(ac->where), "%s%s", pl >= sizeof(ac->where) ? "..." : "",
		 path + (pl >= sizeof(ac->where) ? pl - sizeof(ac->where) + 4 : 0));
	ac->rx_op.fn = rx_done;
	ac->tx_op.fn = tx_done;
	ac->cbs = cbs;
	ac->ctx = ctx;
	ac->next_id = 1;
	ac->all_next = all_conns;
	if (all_conns)
		all_conns->all_prev = ac;
	all_conns = ac;
	if (vsock_port) {
		/* HELLO may follow at once: the VMM peeks the line and holds what comes after
		 * it until the guest accepts. */
		char line[32];
		int k = snprintf(line, sizeof(line), "CONNECT %u\n", vsock_port);
		ac_queue(ac, line, (size_t)k);
		ac->vsock_handshake = true;
	}
	static const char hello[] = "{\"min_version\":1,\"max_version\":1}";
	ac_frame(ac, PROTO_HELLO, 0, 0, 0, hello, sizeof(hello) - 1);
	ac_arm_rx(ac);
	*out = ac;
	return 0;
}

bool agent_conn_ready(const struct agent_conn *ac)
{
	return ac && ac->ready && !ac->dead;
}

unsigned agent_conn_streams(const struct agent_conn *ac)
{
	return ac ? ac->nstreams : 0;
}

bool agent_relay_room(const struct agent_conn *ac)
{
	return agent_conn_streams(ac) < AGENT_RELAY_STREAMS_MAX;
}

struct astream *agent_open(struct agent_conn *ac, const char *open_json, const struct astream_ops *ops, void *ctx)
{
	if (!agent_conn_ready(ac) || ac->next_id > PROTO_MAX_STREAM_ID)
		return NULL;
	struct astream *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->ac = ac;
	s->id = ac->next_id++;
	s->ops = ops;
	s->ctx = ctx;
	s->tx_credit = PROTO_INITIAL_WINDOW;
	s->rx_window = PROTO_INITIAL_WINDOW;
	s->next = ac->streams;
	ac->streams = s;
	ac->nstreams++;
	ac_frame(ac, PROTO_OPEN, 0, 0, s->id, open_json, strlen(open_json));
	return s;
}

size_t agent_send_room(const struct astream *s)
{
	if (s->ac->dead)
		return 0;
	uint64_t r = s->tx_credit < PROTO_DATA_CHUNK ? s->tx_credit : PROTO_DATA_CHUNK;
	return (size_t)r;
}

void agent_send_data(struct astream *s, uint8_t channel, bool fin, const void *p, size_t n)
{
	s->tx_credit -= n <= s->tx_credit ? n : s->tx_credit;
	ac_frame(s->ac, PROTO_DATA, fin ? PROTO_FLAG_FIN : 0, channel, s->id, p, n);
}

bool agent_send_buffered(struct astream *s, uint8_t channel, struct bytebuf *b, bool fin)
{
	bool fin_sent = false;
	while (bytebuf_pending(b)) {
		size_t room = agent_send_room(s);
		if (!room)
			break;
		size_t k = bytebuf_pending(b);
		if (k > room)
			k = room;
		fin_sent = fin && k == bytebuf_pending(b);
		agent_send_data(s, channel, fin_sent, b->p + b->off, k);
		b->off += k;
	}
	return fin_sent;
}

void agent_send_event(struct astream *s, const char *json)
{
	ac_frame(s->ac, PROTO_EVENT, 0, 0, s->id, json, strlen(json));
}

void agent_room_changed(struct astream *s)
{
	if (!s->ac->dead)
		grant(s);
}

void agent_cancel(struct astream *s)
{
	struct agent_conn *ac = s->ac;
	stream_unlink(s);
	ac_frame(ac, PROTO_CANCEL, 0, 0, s->id, NULL, 0);
	free(s);
}

void agent_conn_free_all(void)
{
	while (all_conns) {
		struct agent_conn *ac = all_conns;
		if (!ac->dead)
			agent_conn_close(ac);
		ac->inflight = 0;
		ac_maybe_free(ac);
	}
}

/* ---- the blocking variant ---- */

/* Some bytes from fd before deadline: >0, or -ETIMEDOUT / -ECONNRESET / -errno. */
static ssize_t read_some(int fd, void *buf, size_t n, uint64_t deadline)
{
	for (;;) {
		int64_t left = (int64_t)(deadline - ur_mono_ms());
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		if (left <= 0 || poll(&pf, 1, (int)left) <= 0)
			return -ETIMEDOUT;
		ssize_t k = read(fd, buf, n);
		if (k > 0)
			return k;
		if (k == 0)
			return -ECONNRESET;
		if (errno != EINTR)
			return -errno;
	}
}

static int send_all(int fd, const void *p, size_t n)
{
	return send(fd, p, n, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -ECONNRESET;
}

static int send_frame(int fd, uint8_t type, uint32_t stream, const void *p, size_t n)
{
	uint8_t hdr[PROTO_HEADER_SIZE];
	struct proto_header h = { .length = (uint32_t)n, .stream = stream, .type = type };
	proto_header_encode(&h, hdr);
	int rc = send_all(fd, hdr, sizeof(hdr));
	return rc || !n ? rc : send_all(fd, p, n);
}

/* The vsock host socket's "OK <port>" line, byte by byte so nothing after it is
 * taken. */
static int vsock_ok(int fd, uint64_t deadline)
{
	char line[32];
	size_t ll = 0;
	for (;;) {
		char c;
		ssize_t k = read_some(fd, &c, 1, deadline);
		if (k < 0)
			return (int)k;
		if (c == '\n')
			break;
		if (ll + 1 >= sizeof(line))
			return -EPROTO;
		line[ll++] = c;
	}
	line[ll] = 0;
	return strncmp(line, "OK ", 3) ? -ECONNREFUSED : 0;
}

/* DATA of stream 1 kept for the caller (up to cap bytes), or dropped. */
struct call_data {
	uint8_t *p;
	size_t cap, len;
};

static int call_frames(int fd, struct proto_parser *pp, uint64_t deadline, cJSON **end, struct call_data *cd,
		       struct mitos_err *e)
{
	bool hello = false;
	uint8_t buf[16384];
	uint64_t unacked = 0;
	for (;;) {
		ssize_t k = read_some(fd, buf, sizeof(buf), deadline);
		if (k < 0)
			return (int)k;
		const uint8_t *p = buf;
		size_t len = (size_t)k;
		while (len) {
			struct proto_header h;
			const uint8_t *payload = NULL;
			enum proto_parse_event ev = proto_parse(pp, &p, &len, &h, &payload);
			if (ev == PROTO_PARSE_OVERSIZED)
				return mitos_err_set(e, -EPROTO, "the agent sent an oversized frame (%u bytes)",
						     h.length);
			if (ev != PROTO_PARSE_FRAME)
				continue;
			if (h.type == PROTO_HELLO) {
				cJSON *j = cJSON_ParseWithLength((const char *)payload, h.length);
				cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "version");
				hello = cJSON_IsNumber(v) && v->valueint == PROTO_VERSION;
				cJSON_Delete(j);
				if (!hello)
					return mitos_err_set(e, -EPROTO, "the agent does not speak protocol version %d",
							     PROTO_VERSION);
			} else if (h.type == PROTO_DATA && h.stream == 1) {
				if (cd && cd->len < cd->cap) {
					size_t k2 = h.length < cd->cap - cd->len ? h.length : cd->cap - cd->len;
					memcpy(cd->p + cd->len, payload, k2);
					cd->len += k2;
				}
				unacked += h.length;
				if (unacked >= AC_WINDOW_STEP) {
					uint8_t inc[4] = { (uint8_t)(unacked >> 24), (uint8_t)(unacked >> 16),
							   (uint8_t)(unacked >> 8), (uint8_t)unacked };
					if (send_frame(fd, PROTO_WINDOW, 1, inc, 4))
						return -ECONNRESET;
					unacked = 0;
				}
			} else if (h.type == PROTO_END && h.stream == 1) {
				*end = hello ? cJSON_ParseWithLength((const char *)payload, h.length) : NULL;
				if (!*end)
					return mitos_err_set(e, -EPROTO, "the agent's answer is not JSON: %.*s",
							     (int)(h.length > 200 ? 200 : h.length),
							     (const char *)payload);
				return 0;
			}
		}
	}
}

static int call_blocking(const char *path, uint32_t vsock_port, const char *open_json, int timeout_ms,
			 cJSON **end, struct call_data *cd, struct mitos_err *e)
{
	*end = NULL;
	uint64_t deadline = ur_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
	int fd = unix_connect_nofollow(path, SOCK_CLOEXEC);
	if (fd < 0)
		return mitos_err_set(e, fd, "cannot reach the agent through %.300s: %s", path, strerror(-fd));
	struct proto_parser pp;
	if (proto_parser_init(&pp, PROTO_MAX_PAYLOAD)) {
		close(fd);
		return mitos_err_set(e, -ENOMEM, "out of memory");
	}
	static const char hello[] = "{\"min_version\":1,\"max_version\":1}";
	char line[32];
	int k = snprintf(line, sizeof(line), "CONNECT %u\n", vsock_port);
	int rc = vsock_port ? send_all(fd, line, (size_t)k) : 0;
	if (!rc)
		rc = send_frame(fd, PROTO_HELLO, 0, hello, sizeof(hello) - 1);
	if (!rc)
		rc = send_frame(fd, PROTO_OPEN, 1, open_json, strlen(open_json));
	if (!rc && vsock_port)
		rc = vsock_ok(fd, deadline);
	if (!rc)
		rc = call_frames(fd, &pp, deadline, end, cd, e);
	proto_parser_free(&pp);
	close(fd);
	/* call_frames words what the agent sent wrong; the rest is said here. */
	if (rc == -ETIMEDOUT && e && !e->code)
		mitos_err_set(e, rc, "the agent did not answer within %d ms", timeout_ms);
	else if (rc && e && !e->code)
		mitos_err_set(e, rc, "cannot reach the agent through %.300s: %s", path, strerror(-rc));
	return rc;
}

int agent_call_blocking(const char *path, uint32_t vsock_port, const char *open_json, int timeout_ms,
			cJSON **end, struct mitos_err *e)
{
	return call_blocking(path, vsock_port, open_json, timeout_ms, end, NULL, e);
}

int agent_call_blocking_data(const char *path, uint32_t vsock_port, const char *open_json, int timeout_ms,
			     cJSON **end, uint8_t *data, size_t cap, size_t *len, struct mitos_err *e)
{
	struct call_data cd = { .p = data, .cap = cap };
	int rc = call_blocking(path, vsock_port, open_json, timeout_ms, end, &cd, e);
	*len = cd.len;
	return rc;
}
