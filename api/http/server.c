#include "api/http/server.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/http/bytebuf.h"
#include "api/http/http.h"
#include "api/http/listener.h"

#define OBUF_MIN (16u << 10)
#define LINGER_MS 2000u

static struct conn *conns;
static unsigned nconns;
static struct conn *zombies; /* torn down, waiting for their ring operations */

static void conn_arm_rx(struct conn *c);
static void conn_teardown(struct conn *c);
static void conn_free_kick(struct ur_kick *k);
static void conn_note_failure(const struct conn *c, const char *what, int res);

unsigned listener_conn_count(void) { return nconns; }

static void zombie_unlink(struct conn *c)
{
	for (struct conn **pp = &zombies; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			return;
		}
}

static void conn_maybe_free(struct conn *c)
{
	if (!c->dead || c->inflight)
		return;
	ur_kick_cancel(&c->kick);
	zombie_unlink(c);
	close(c->fd);
	sendq_free(&c->out);
	free(c->pend);
	free(c);
}

void conn_out(struct conn *c, const void *p, size_t n)
{
	if (c->dead || !n)
		return;
	if (sendq_append(&c->out, p, n, OBUF_MIN)) {
		conn_note_failure(c, "output", -ENOMEM);
		conn_teardown(c);
	}
}

/* A connection closed for an error of its own, or with a request still waiting for its
 * answer (then even a reset: the answer is lost), is said: a kvm template's request was
 * seen dropped without an answer and without a word, three times. */
static void conn_note_failure(const struct conn *c, const char *what, int res)
{
	bool waiting = http_conn_waiting(c);
	if (res >= 0 || (!waiting && (res == -ECONNRESET || res == -EPIPE)))
		return;
	fprintf(stderr, "mitos-vmm serve: a connection's %s failed (%s)%s%s: closed\n", what, strerror(-res),
		waiting ? " while its request waited for its answer" : "", c->read_eof ? ", its client had ended" : "");
}

static void tx_done(struct uop *op, int res, uint32_t flags)
{
	(void)flags;
	struct conn *c = (struct conn *)((char *)op - offsetof(struct conn, tx_op));
	c->inflight--;
	c->tx_armed = false;
	if (c->dead) {
		conn_maybe_free(c);
		return;
	}
	if (res < 0) {
		if (res == -EINTR || res == -EAGAIN) {
			conn_flush(c);
			return;
		}
		conn_note_failure(c, "send", res);
		conn_teardown(c);
		return;
	}
	c->last_tx_ms = ur_now_ms();
	sendq_consume(&c->out, (size_t)res);
	bool was_high = c->was_writable_blocked;
	if (c->out.bytes < HTTP_OUT_LOW && was_high) {
		c->was_writable_blocked = false;
		http_conn_writable(c);
		if (c->dead)
			return;
		conn_kick(c); /* pipelined requests held back while the output was full */
	}
	conn_flush(c);
}

void conn_flush(struct conn *c)
{
	if (c->dead || c->tx_armed)
		return;
	if (c->out.bytes >= HTTP_OUT_HIGH)
		c->was_writable_blocked = true;
	if (!c->out.bytes) {
		if (c->close_after && (!c->req || c->req->finished) && (!c->h2 || http_conn_idle(c))) {
			/* Half-close, then read and drop what the client still sends, so
			 * our response is not lost to a reset. */
			if (!c->read_eof && shutdown(c->fd, SHUT_WR) == 0) {
				if (!c->hdr_deadline_ms || c->hdr_deadline_ms > ur_now_ms() + LINGER_MS)
					c->hdr_deadline_ms = ur_now_ms() + LINGER_MS;
				c->pend_len = 0;
				conn_arm_rx(c);
				if (c->rx_armed)
					return;
			}
			conn_teardown(c);
		}
		return;
	}
	sendq_prep_sendmsg(&c->out, ur_sqe(&c->tx_op), c->fd, &c->msg, c->iov, CONN_IOV);
	c->tx_armed = true;
	c->inflight++;
}

void conn_close_after(struct conn *c)
{
	c->close_after = true;
}

static void conn_free_kick(struct ur_kick *k)
{
	conn_maybe_free((struct conn *)((char *)k - offsetof(struct conn, kick)));
}

static void conn_kick_fn(struct ur_kick *k)
{
	struct conn *c = (struct conn *)((char *)k - offsetof(struct conn, kick));
	if (c->dead)
		return;
	http_conn_process(c);
	if (c->dead)
		return;
	conn_flush(c);
	conn_arm_rx(c);
}

void conn_kick(struct conn *c)
{
	if (!c->dead)
		ur_kick(&c->kick);
}

static bool conn_lingering(const struct conn *c)
{
	return c->close_after && !c->out.bytes && !c->tx_armed;
}

static void rx_done(struct uop *op, int res, uint32_t flags)
{
	struct conn *c = (struct conn *)((char *)op - offsetof(struct conn, rx_op));
	c->inflight--;
	c->rx_armed = false;
	unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
	bool has_buf = flags & IORING_CQE_F_BUFFER;
	if (c->dead) {
		if (has_buf)
			ur_buf_return(bid);
		conn_maybe_free(c);
		return;
	}
	if (res == -ENOBUFS) {
		c->rx_wait_buf = true;
		return;
	}
	if (res <= 0) {
		if (has_buf)
			ur_buf_return(bid);
		if (res == 0 && c->h2) {
			/* HTTP/2 has no half-close of the connection: nothing asked on it
			 * can be delivered any more. */
			conn_teardown(c);
			return;
		}
		if (res == 0 && !conn_lingering(c)) {
			struct http_req *r = c->req;
			if (http_req_waiting(r) && r->abort_on_eof && r->complete) {
				/* A stream whose reader left: stop the work behind it now,
				 * not at the next failed write. */
				conn_teardown(c);
				return;
			}
			c->read_eof = true;
			http_conn_process(c);
			if (c->dead)
				return;
			if (c->req && !c->req->complete && !c->req->body_paused)
				http_conn_eof(c);
			if (c->dead)
				return;
			if (!c->req || c->req->finished)
				conn_close_after(c);
			conn_flush(c);
			return;
		}
		conn_note_failure(c, "receive", res);
		conn_teardown(c);
		return;
	}
	c->last_rx_ms = ur_now_ms();
	if (conn_lingering(c)) {
		ur_buf_return(bid);
		conn_arm_rx(c);
		return;
	}
	const uint8_t *data = ur_buf_ptr(bid);
	size_t n = (size_t)res;
	if (c->pend_off + c->pend_len + n > c->pend_cap) {
		if (c->pend_off) {
			memmove(c->pend, c->pend + c->pend_off, c->pend_len);
			c->pend_off = 0;
		}
		uint8_t *np = buf_reserve(c->pend, &c->pend_cap, c->pend_len + n, 4096);
		if (!np) {
			ur_buf_return(bid);
			conn_teardown(c);
			return;
		}
		c->pend = np;
	}
	memcpy(c->pend + c->pend_off + c->pend_len, data, n);
	c->pend_len += n;
	ur_buf_return(bid);
	http_conn_process(c);
	if (c->dead)
		return;
	conn_flush(c);
	conn_arm_rx(c);
}

static void conn_arm_rx(struct conn *c)
{
	if (c->dead || c->rx_armed || c->read_eof || c->rx_wait_buf)
		return;
	if (!conn_lingering(c)) {
		if (c->close_after)
			return;
		if (c->pend_len >= HTTP_PEND_MAX)
			return;
		if (c->out.bytes >= HTTP_OUT_HIGH) {
			c->was_writable_blocked = true; /* tx_done kicks reading again */
			return;
		}
		if (c->req && c->req->body_paused)
			return;
	}
	struct io_uring_sqe *sqe = ur_sqe(&c->rx_op);
	io_uring_prep_recv(sqe, c->fd, NULL, ur_buf_size(), 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = UR_BGID;
	c->rx_armed = true;
	c->inflight++;
}

static void conn_teardown(struct conn *c)
{
	if (c->dead)
		return;
	c->dead = true;
	ur_kick_cancel(&c->kick);
	http_conn_abort(c);
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	nconns--;
	c->prev = NULL;
	c->next = zombies;
	zombies = c;
	/* Makes a pending read complete so the connection can be freed. */
	shutdown(c->fd, SHUT_RDWR);
	/* Freed from a kick, never here: the caller may still hold c (a flush that
	 * finds the connection done tears it down inside a callback). */
	c->kick.fn = conn_free_kick;
	ur_kick(&c->kick);
}

int listener_conn_new(int fd)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	c->rx_op.fn = rx_done;
	c->tx_op.fn = tx_done;
	c->kick.fn = conn_kick_fn;
	c->last_rx_ms = c->last_tx_ms = ur_now_ms();
	c->hdr_deadline_ms = ur_now_ms() + srv_cfg.header_timeout_ms;
	http_conn_init(c);
	c->next = conns;
	if (conns)
		conns->prev = c;
	conns = c;
	nconns++;
	conn_arm_rx(c);
	return 0;
}

void listener_tick(uint64_t now)
{
	for (struct conn *c = conns, *next; c; c = next) {
		next = c->next;
		if (conn_lingering(c)) {
			if (c->hdr_deadline_ms && now > c->hdr_deadline_ms)
				conn_teardown(c);
			continue;
		}
		if (c->rx_wait_buf) {
			c->rx_wait_buf = false;
			conn_arm_rx(c);
		}
		if (http_conn_check_deadlines(c, now)) {
			/* An idle connection's end is no news; a waiting request's is. */
			if (http_conn_waiting(c))
				conn_note_failure(c, "deadline", -ETIMEDOUT);
			conn_teardown(c);
			continue;
		}
		if (!c->dead) {
			conn_flush(c);
			conn_arm_rx(c);
		}
	}
}

/* Connections with no request in progress are closed at once on shutdown;
 * busy ones are closed after their response (keep-alive is off from now on). */
void listener_close_idle(void)
{
	for (struct conn *c = conns, *next; c; c = next) {
		next = c->next;
		if (http_conn_idle(c))
			conn_teardown(c);
		else
			http_conn_drain(c);
	}
}

void listener_close_all(void)
{
	while (conns)
		conn_teardown(conns);
}

void listener_free_zombies(void)
{
	while (zombies) {
		struct conn *c = zombies;
		c->inflight = 0;
		conn_maybe_free(c);
	}
}
