#include "virtio_vsock.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "lib/clock.h"
#include "lib/unix_listen.h"

#define HDR_BYTES  ((uint32_t)sizeof(struct virtio_vsock_hdr))
#define SHUT_BOTH  (VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND)
#define MAX_CONNS  VIRTIO_VSOCK_MAX_CONNS
#define BUF_ALLOC  VIRTIO_VSOCK_BUF_ALLOC
#define NUM_QUEUES 3

/* Host ports handed to host-initiated connections ("OK <port>"). */
#define FIRST_LOCAL_PORT 1024U
#define LAST_LOCAL_PORT  0x7fffffffU
/* RSTs owed to the guest (for packets that match no connection, and for connections we
 * end) wait here while it has no receive buffer posted; past this many they are dropped
 * (the guest would have to send that many bad packets without posting a single receive
 * buffer). */
#define RST_QUEUE    (2 * MAX_CONNS)
#define EPOLL_BATCH  64
#define ACCEPT_BATCH 16

#define MS 1000000ULL
#define CONNECT_LINE_TIMEOUT (5000 * MS)
#define REQUEST_TIMEOUT      (5000 * MS)
/* After we told the guest both directions are closed, it owes an RST; Linux's own
 * VSOCK_CLOSE_TIMEOUT. */
#define CLOSE_TIMEOUT        (8000 * MS)
#define TICK                 (500 * MS)

/* epoll data: a connection is its slot | generation << 32 (a stale event for a slot
 * reused within one epoll_wait batch does not match); these two name the rest. */
#define EP_LISTEN ((uint64_t)MAX_CONNS)
#define EP_TIMER  ((uint64_t)MAX_CONNS + 1)

#define STATE_VERSION 1

enum conn_state {
	CONN_LINE,     /* host client connected; its CONNECT line has not arrived */
	CONN_REQUEST,  /* REQUEST owed or sent to the guest; waiting for its RESPONSE */
	CONN_OPEN,
};

/* Control packets a connection owes the guest. */
#define PEND_REQUEST  1u
#define PEND_RESPONSE 2u
#define PEND_SHUTDOWN 4u
#define PEND_CREDIT   8u

struct conn {
	TAILQ_ENTRY(conn) rx_link;  /* on rx_ready while it owes the guest a packet */
	bool on_rx;
	unsigned slot;
	int fd;
	enum conn_state state;
	uint32_t host_port, guest_port;
	unsigned pending;
	bool request_sent;
	uint64_t deadline;          /* CLOCK_MONOTONIC ns; 0: none */

	/* Guest to host. adv_fwd <= fwd_cnt <= rx_cnt, and rx_cnt - adv_fwd never exceeds
	 * BUF_ALLOC: that is the credit the guest was given. */
	uint32_t rx_cnt;            /* payload bytes taken from the guest */
	uint32_t fwd_cnt;           /* of them, written to the host socket or dropped */
	uint32_t adv_fwd;           /* fwd_cnt as last told to the guest */
	uint32_t peer_shut;         /* SHUTDOWN flags the guest sent */
	bool host_wr_shut;
	uint8_t *buf;               /* BUF_ALLOC ring, allocated on the first short write */
	uint32_t buf_head, buf_len;

	/* Host to guest. */
	uint32_t tx_cnt;            /* payload bytes sent to the guest */
	uint32_t peer_buf_alloc, peer_fwd_cnt;
	bool host_readable;         /* the socket may hold data (edge-triggered epoll) */
	bool host_eof;              /* the host client sends no more */
	bool host_no_rx;            /* the host client takes no more */
	uint32_t shut_sent;         /* SHUTDOWN flags we told the guest */
};

struct rst {
	uint32_t host_port, guest_port;
};

struct vsock {
	struct virtio_device dev;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	bool bound;
	uint64_t cid;
	int epfd, listen_fd, timer_fd;
	bool listen_paused;         /* accept() ran out of fds: resumed when a connection ends */
	bool timer_armed;
	bool broken;                /* we failed the device: nothing more until the driver resets */
	bool event_pending;         /* a TRANSPORT_RESET waits for an event buffer */
	uint32_t next_port;
	unsigned nconns;
	struct conn *conns[MAX_CONNS];
	uint32_t gen[MAX_CONNS];
	TAILQ_HEAD(, conn) rx_ready;
	struct rst rsts[RST_QUEUE];
	unsigned rst_head, rst_len;
	/* Scratch, too big for the stack: virtq_pop's output and the iovecs over it. */
	struct virtq_chain chain;
	struct iovec iov[VIRTQ_MAX_CHAIN];
};

struct vsock_state {
	uint32_t version;
	uint32_t reserved;
	uint64_t cid;
};

static uint32_t min32(uint64_t a, uint64_t b)
{
	return (uint32_t)(a < b ? a : b);
}

static void vsock_fail(struct vsock *v, const char *why)
{
	v->broken = true;
	virtio_device_fail(&v->dev, why);
}

static bool serving(const struct vsock *v)
{
	return !v->broken && virtio_device_active(&v->dev);
}

/* ---- timers, connection table ------------------------------------------------------ */

static void timer_arm(struct vsock *v, bool on)
{
	if (v->timer_armed == on)
		return;
	struct itimerspec its = { 0 };
	if (on)
		its.it_interval = its.it_value = (struct timespec){ .tv_nsec = (long)TICK };
	timerfd_settime(v->timer_fd, 0, &its, NULL);
	v->timer_armed = on;
}

static void conn_set_deadline(struct vsock *v, struct conn *c, uint64_t timeout)
{
	c->deadline = timeout ? mono_ns() + timeout : 0;
	if (timeout)
		timer_arm(v, true);
}

static void listen_watch(struct vsock *v, bool on)
{
	struct epoll_event ev = { .events = on ? EPOLLIN : 0, .data.u64 = EP_LISTEN };
	if (epoll_ctl(v->epfd, EPOLL_CTL_MOD, v->listen_fd, &ev) == 0)
		v->listen_paused = !on;
}

static struct conn *conn_new(struct vsock *v, int fd, enum conn_state state)
{
	if (v->nconns == MAX_CONNS)
		return NULL;
	unsigned slot = 0;
	while (v->conns[slot])
		slot++;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
				  .data.u64 = slot | (uint64_t)v->gen[slot] << 32 };
	if (epoll_ctl(v->epfd, EPOLL_CTL_ADD, fd, &ev)) {
		free(c);
		return NULL;
	}
	c->slot = slot;
	c->fd = fd;
	c->state = state;
	v->conns[slot] = c;
	v->nconns++;
	return c;
}

static void conn_free(struct vsock *v, struct conn *c)
{
	if (c->on_rx)
		TAILQ_REMOVE(&v->rx_ready, c, rx_link);
	epoll_ctl(v->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c->buf);
	v->conns[c->slot] = NULL;
	v->gen[c->slot]++;
	v->nconns--;
	free(c);
	if (v->listen_paused)
		listen_watch(v, true);
}

static void drop_all(struct vsock *v)
{
	for (unsigned i = 0; i < MAX_CONNS; i++)
		if (v->conns[i])
			conn_free(v, v->conns[i]);
	v->rst_len = 0;
}

/* Connections the guest knows of, by address; those still reading a CONNECT line have none. */
static struct conn *conn_find(const struct vsock *v, uint32_t host_port, uint32_t guest_port,
			      bool any_guest_port)
{
	for (unsigned i = 0, seen = 0; i < MAX_CONNS && seen < v->nconns; i++) {
		struct conn *c = v->conns[i];
		if (!c)
			continue;
		seen++;
		if (c->state != CONN_LINE && c->host_port == host_port &&
		    (any_guest_port || c->guest_port == guest_port))
			return c;
	}
	return NULL;
}

/* Unique among live connections' host ports, so (host port, guest port) names one
 * connection whatever the guest connects to. At most MAX_CONNS ports are taken, so
 * this ends within MAX_CONNS + 1 tries. */
static uint32_t alloc_host_port(struct vsock *v)
{
	for (;;) {
		uint32_t p = v->next_port;
		v->next_port = p == LAST_LOCAL_PORT ? FIRST_LOCAL_PORT : p + 1;
		if (!conn_find(v, p, 0, true))
			return p;
	}
}

static void queue_rst(struct vsock *v, uint32_t host_port, uint32_t guest_port)
{
	if (v->rst_len == RST_QUEUE)
		return;
	v->rsts[(v->rst_head + v->rst_len++) % RST_QUEUE] = (struct rst){ host_port, guest_port };
}

/* Forgets the connection, telling the guest if it knows of it. */
static void conn_reset(struct vsock *v, struct conn *c)
{
	if (c->state == CONN_OPEN || c->request_sent)
		queue_rst(v, c->host_port, c->guest_port);
	conn_free(v, c);
}

/* ---- flow control ------------------------------------------------------------------- */

/* Payload bytes the guest has room for on this connection. */
static uint32_t guest_credit(const struct conn *c)
{
	uint32_t in_flight = c->tx_cnt - c->peer_fwd_cnt;
	return in_flight < c->peer_buf_alloc ? c->peer_buf_alloc - in_flight : 0;
}

static bool can_read_host(const struct conn *c)
{
	return c->state == CONN_OPEN && c->host_readable && !c->host_eof &&
	       !(c->peer_shut & VIRTIO_VSOCK_SHUTDOWN_RCV) && guest_credit(c) > 0;
}

/* Keeps the connection on rx_ready exactly while it owes the guest a packet. */
static void conn_update(struct vsock *v, struct conn *c)
{
	bool want = c->pending || can_read_host(c);
	if (want && !c->on_rx)
		TAILQ_INSERT_TAIL(&v->rx_ready, c, rx_link);
	else if (!want && c->on_rx)
		TAILQ_REMOVE(&v->rx_ready, c, rx_link);
	c->on_rx = want;
}

/* Credit goes back to the guest when half the buffer has drained since we last said,
 * which keeps a sender that waits for it from stalling. */
static void forwarded(struct conn *c, uint32_t n)
{
	c->fwd_cnt += n;
	if (c->fwd_cnt - c->adv_fwd >= BUF_ALLOC / 2)
		c->pending |= PEND_CREDIT;
}

static void host_shut_update(struct conn *c)
{
	uint32_t due = (c->host_eof ? VIRTIO_VSOCK_SHUTDOWN_SEND : 0) |
		       (c->host_no_rx ? VIRTIO_VSOCK_SHUTDOWN_RCV : 0);
	if (due & ~c->shut_sent)
		c->pending |= PEND_SHUTDOWN;
}

/* The host client closed or can take no more: what it has not read is dropped. */
static void host_stopped_receiving(struct conn *c)
{
	if (c->host_no_rx)
		return;
	c->host_no_rx = true;
	forwarded(c, c->buf_len);
	c->buf_len = 0;
	host_shut_update(c);
}

/* Does what the guest's SHUTDOWN asked once the data it sent before is out: shut the
 * host socket's write side, or, when the guest closed both ways, end the connection
 * with the RST its close() waits for. False when the connection is gone. */
static bool conn_settle(struct vsock *v, struct conn *c)
{
	if (c->buf_len)
		return true;
	if (c->peer_shut == SHUT_BOTH) {
		conn_reset(v, c);
		return false;
	}
	if ((c->peer_shut & VIRTIO_VSOCK_SHUTDOWN_SEND) && !c->host_wr_shut) {
		shutdown(c->fd, SHUT_WR);
		c->host_wr_shut = true;
	}
	return true;
}

/* ---- host socket I/O ---------------------------------------------------------------- */

static ssize_t send_iov(int fd, struct iovec *iov, unsigned n)
{
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = n };
	ssize_t w;
	do
		w = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	while (w < 0 && errno == EINTR);
	return w;
}

static void conn_flush(struct conn *c)
{
	while (c->buf_len && !c->host_no_rx) {
		uint32_t first = min32(c->buf_len, BUF_ALLOC - c->buf_head);
		struct iovec iov[2] = { { c->buf + c->buf_head, first },
					{ c->buf, c->buf_len - first } };
		ssize_t w = send_iov(c->fd, iov, c->buf_len > first ? 2 : 1);
		if (w < 0) {
			if (errno != EAGAIN)
				host_stopped_receiving(c);
			return;
		}
		c->buf_head = (c->buf_head + (uint32_t)w) % BUF_ALLOC;
		c->buf_len -= (uint32_t)w;
		forwarded(c, (uint32_t)w);
	}
}

/* Payload [HDR_BYTES, HDR_BYTES+len) of a guest packet to the host socket: straight from
 * guest memory while nothing is queued before it, the rest into the connection's buffer
 * (it fits: the guest's credit says so). 0 or -ENOMEM. */
static int conn_to_host(struct vsock *v, struct conn *c, const struct virtq_chain *ch,
			uint32_t len)
{
	uint32_t done = 0;
	if (len == 0)
		return 0;
	if (!c->host_no_rx && c->buf_len == 0) {
		ssize_t w = send_iov(c->fd, v->iov, virtq_chain_iov(ch, false, HDR_BYTES, len, v->iov));
		if (w > 0) {
			done = (uint32_t)w;
			forwarded(c, done);
		} else if (w < 0 && errno != EAGAIN) {
			host_stopped_receiving(c);
		}
	}
	if (c->host_no_rx) {
		forwarded(c, len - done);
		return 0;
	}
	if (done == len)
		return 0;
	if (!c->buf && !(c->buf = malloc(BUF_ALLOC)))
		return -ENOMEM;
	for (uint32_t off = done; off < len;) {
		uint32_t tail = (c->buf_head + c->buf_len) % BUF_ALLOC;
		uint32_t n = min32(len - off, BUF_ALLOC - tail);
		virtq_chain_read(ch, HDR_BYTES + off, c->buf + tail, n);
		c->buf_len += n;
		off += n;
	}
	return 0;
}

/* Reads host data straight into the guest's receive buffer after the header; returns
 * the payload length, 0 when there is nothing to send now. */
static uint32_t conn_read_host(struct vsock *v, struct conn *c, const struct virtq_chain *ch)
{
	uint32_t want = min32(min32(guest_credit(c), VIRTIO_VSOCK_MAX_PAYLOAD),
			      ch->writable_len - HDR_BYTES);
	ssize_t r;
	do
		r = readv(c->fd, v->iov, (int)virtq_chain_iov(ch, true, HDR_BYTES, want, v->iov));
	while (r < 0 && errno == EINTR);
	if (r > 0) {
		c->tx_cnt += (uint32_t)r;
		return (uint32_t)r;
	}
	/* Edge-triggered: readable until read says otherwise, even after a short read (an
	 * EOF behind the data brings no new edge). */
	c->host_readable = false;
	if (r < 0 && errno == EAGAIN)
		return 0;
	c->host_eof = true;
	if (r < 0)
		host_stopped_receiving(c);
	host_shut_update(c);
	return 0;
}

/* ---- packets to the guest ----------------------------------------------------------- */

static void make_hdr(const struct vsock *v, struct virtio_vsock_hdr *h, uint32_t host_port,
		     uint32_t guest_port, uint16_t op, uint32_t len, uint32_t flags,
		     uint32_t fwd_cnt)
{
	*h = (struct virtio_vsock_hdr){
		.src_cid = htole64(VIRTIO_VSOCK_HOST_CID), .dst_cid = htole64(v->cid),
		.src_port = htole32(host_port), .dst_port = htole32(guest_port),
		.len = htole32(len), .type = htole16(VIRTIO_VSOCK_TYPE_STREAM),
		.op = htole16(op), .flags = htole32(flags),
		.buf_alloc = htole32(BUF_ALLOC), .fwd_cnt = htole32(fwd_cnt) };
}

/* Every packet of a connection carries its credit, so any of them is a credit update. */
static void conn_hdr(const struct vsock *v, struct conn *c, struct virtio_vsock_hdr *h,
		     uint16_t op, uint32_t len, uint32_t flags)
{
	make_hdr(v, h, c->host_port, c->guest_port, op, len, flags, c->fwd_cnt);
	c->adv_fwd = c->fwd_cnt;
	c->pending &= ~PEND_CREDIT;
}

/* Puts the next packet the connection owes into ch; returns its length, 0 for none. */
static uint32_t conn_emit(struct vsock *v, struct conn *c, const struct virtq_chain *ch)
{
	struct virtio_vsock_hdr h;
	uint32_t len = 0;
	if (c->pending & PEND_REQUEST) {
		c->pending &= ~PEND_REQUEST;
		c->request_sent = true;
		conn_hdr(v, c, &h, VIRTIO_VSOCK_OP_REQUEST, 0, 0);
	} else if (c->pending & PEND_RESPONSE) {
		c->pending &= ~PEND_RESPONSE;
		conn_hdr(v, c, &h, VIRTIO_VSOCK_OP_RESPONSE, 0, 0);
	} else if (can_read_host(c) && (len = conn_read_host(v, c, ch))) {
		conn_hdr(v, c, &h, VIRTIO_VSOCK_OP_RW, len, 0);
	} else if (c->pending & PEND_SHUTDOWN) {
		c->pending &= ~PEND_SHUTDOWN;
		c->shut_sent = (c->host_eof ? VIRTIO_VSOCK_SHUTDOWN_SEND : 0) |
			       (c->host_no_rx ? VIRTIO_VSOCK_SHUTDOWN_RCV : 0);
		conn_hdr(v, c, &h, VIRTIO_VSOCK_OP_SHUTDOWN, 0, c->shut_sent);
		if (c->shut_sent == SHUT_BOTH)
			conn_set_deadline(v, c, CLOSE_TIMEOUT);
	} else if (c->pending & PEND_CREDIT) {
		conn_hdr(v, c, &h, VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0);
	} else {
		return 0;
	}
	virtq_chain_write(ch, 0, &h, HDR_BYTES);
	return HDR_BYTES + len;
}

static uint32_t rst_emit(struct vsock *v, const struct virtq_chain *ch)
{
	struct rst r = v->rsts[v->rst_head];
	v->rst_head = (v->rst_head + 1) % RST_QUEUE;
	v->rst_len--;
	struct virtio_vsock_hdr h;
	make_hdr(v, &h, r.host_port, r.guest_port, VIRTIO_VSOCK_OP_RST, 0, 0, 0);
	virtq_chain_write(ch, 0, &h, HDR_BYTES);
	return HDR_BYTES;
}

/* Fills the guest's receive buffers with what is owed: queued RSTs first, then one
 * packet per connection in turn. Host sockets are read only into a buffer in hand, so
 * when the guest posts none, nothing is read and the host side backs up instead. */
static void rx_pump(struct vsock *v)
{
	if (!serving(v))
		return;
	struct virtq *q = &v->dev.vqs[VIRTIO_VSOCK_QUEUE_RX];
	bool have = false, pushed = false;
	while (v->rst_len || !TAILQ_EMPTY(&v->rx_ready)) {
		if (!have) {
			int r = virtq_pop(q, v->dev.mem, &v->chain);
			if (r < 0) {
				vsock_fail(v, "malformed receive queue");
				break;
			}
			if (r == 0) {
				if (virtq_arm_and_recheck(q, v->dev.mem))
					continue;
				break;
			}
			/* No room for a header and some payload: useless, returned empty. */
			have = v->chain.writable_len > HDR_BYTES;
			if (!have) {
				if (virtq_push(q, v->dev.mem, v->chain.head, 0)) {
					vsock_fail(v, "used ring outside guest RAM");
					break;
				}
				pushed = true;
				continue;
			}
		}
		uint32_t len;
		if (v->rst_len) {
			len = rst_emit(v, &v->chain);
		} else {
			struct conn *c = TAILQ_FIRST(&v->rx_ready);
			TAILQ_REMOVE(&v->rx_ready, c, rx_link);
			c->on_rx = false;
			len = conn_emit(v, c, &v->chain);
			conn_update(v, c);  /* back at the tail if it owes more */
		}
		if (!len)
			continue;
		if (virtq_push(q, v->dev.mem, v->chain.head, len)) {
			vsock_fail(v, "used ring outside guest RAM");
			break;
		}
		have = false;
		pushed = true;
	}
	/* A buffer taken but not filled goes back to the driver's side of the ring: nothing
	 * the device holds between two rounds, so the rings are always consistent. */
	if (have)
		q->last_avail_idx--;
	if (pushed)
		virtio_device_notify_used(&v->dev, VIRTIO_VSOCK_QUEUE_RX);
}

static void event_deliver(struct vsock *v)
{
	if (!v->event_pending || !serving(v))
		return;
	struct virtq *q = &v->dev.vqs[VIRTIO_VSOCK_QUEUE_EVENT];
	for (;;) {
		int r = virtq_pop(q, v->dev.mem, &v->chain);
		if (r < 0) {
			vsock_fail(v, "malformed event queue");
			return;
		}
		if (r == 0) {
			if (virtq_arm_and_recheck(q, v->dev.mem))
				continue;
			return;
		}
		uint32_t id = htole32(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
		bool fits = v->chain.writable_len >= sizeof(id);
		if (fits)
			virtq_chain_write(&v->chain, 0, &id, sizeof(id));
		if (virtq_push(q, v->dev.mem, v->chain.head, fits ? sizeof(id) : 0)) {
			vsock_fail(v, "used ring outside guest RAM");
			return;
		}
		virtio_device_notify_used(&v->dev, VIRTIO_VSOCK_QUEUE_EVENT);
		if (fits) {
			v->event_pending = false;
			return;
		}
	}
}

/* ---- packets from the guest --------------------------------------------------------- */

/* The guest connects to host port `host_port`: to the Unix socket PATH_<port>. */
static void guest_connect(struct vsock *v, uint32_t host_port, uint32_t guest_port,
			  const struct virtio_vsock_hdr *h)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	/* create() left room for "_4294967295"; checked anyway rather than dial a cut name. */
	int n = snprintf(a.sun_path, sizeof(a.sun_path), "%s_%u", v->path, host_port);
	int fd = n < (int)sizeof(a.sun_path) ?
		 socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) : -1;
	struct conn *c = NULL;
	/* Non-blocking: a listener with a full backlog is refused like an absent one. */
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) ||
	    !(c = conn_new(v, fd, CONN_OPEN))) {
		if (fd >= 0)
			close(fd);
		queue_rst(v, host_port, guest_port);
		return;
	}
	c->host_port = host_port;
	c->guest_port = guest_port;
	c->peer_buf_alloc = le32toh(h->buf_alloc);
	c->peer_fwd_cnt = le32toh(h->fwd_cnt);
	c->pending = PEND_RESPONSE;
	conn_update(v, c);
}

/* The guest accepted a host client's CONNECT: the client learns its port, and data it
 * sent after the CONNECT line starts to flow. */
static void host_connect_done(struct vsock *v, struct conn *c)
{
	char line[32];
	int n = snprintf(line, sizeof(line), "OK %u\n", c->host_port);
	/* A fresh socket has room for a line; a client gone meanwhile is answered with RST. */
	if (send(c->fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n) {
		conn_reset(v, c);
		return;
	}
	c->state = CONN_OPEN;
	c->deadline = 0;
	conn_update(v, c);
}

/* RW on an open connection; false when it reset the connection. */
static bool guest_data(struct vsock *v, struct conn *c, const struct virtq_chain *ch,
		       uint32_t len)
{
	if ((c->peer_shut & VIRTIO_VSOCK_SHUTDOWN_SEND) ||
	    len > BUF_ALLOC - (c->rx_cnt - c->adv_fwd) || conn_to_host(v, c, ch, len)) {
		conn_reset(v, c);
		return false;
	}
	c->rx_cnt += len;
	return true;
}

static void guest_packet(struct vsock *v, const struct virtq_chain *ch)
{
	struct virtio_vsock_hdr h;
	/* Without a whole header there is not even an address to answer. */
	if (ch->readable_len < HDR_BYTES)
		return;
	virtq_chain_read(ch, 0, &h, HDR_BYTES);
	uint32_t guest_port = le32toh(h.src_port), host_port = le32toh(h.dst_port);
	uint32_t len = le32toh(h.len);
	uint16_t op = le16toh(h.op);
	struct conn *c = conn_find(v, host_port, guest_port, false);
	if (op == VIRTIO_VSOCK_OP_RST) {
		if (c)
			conn_free(v, c);
		return;
	}
	if (len > ch->readable_len - HDR_BYTES || le64toh(h.src_cid) != v->cid ||
	    le64toh(h.dst_cid) != VIRTIO_VSOCK_HOST_CID ||
	    le16toh(h.type) != VIRTIO_VSOCK_TYPE_STREAM ||
	    op < VIRTIO_VSOCK_OP_REQUEST || op > VIRTIO_VSOCK_OP_CREDIT_REQUEST) {
		if (c)
			conn_reset(v, c);
		else
			queue_rst(v, host_port, guest_port);
		return;
	}
	if (!c) {
		if (op == VIRTIO_VSOCK_OP_REQUEST)
			guest_connect(v, host_port, guest_port, &h);
		else
			queue_rst(v, host_port, guest_port);
		return;
	}
	c->peer_buf_alloc = le32toh(h.buf_alloc);
	c->peer_fwd_cnt = le32toh(h.fwd_cnt);
	if (c->state == CONN_REQUEST) {
		if (op == VIRTIO_VSOCK_OP_RESPONSE && c->request_sent)
			host_connect_done(v, c);
		else
			conn_reset(v, c);
		return;
	}
	switch (op) {
	case VIRTIO_VSOCK_OP_RW:
		if (!guest_data(v, c, ch, len))
			return;
		break;
	case VIRTIO_VSOCK_OP_CREDIT_UPDATE:
		break;
	case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
		c->pending |= PEND_CREDIT;
		break;
	case VIRTIO_VSOCK_OP_SHUTDOWN:
		c->peer_shut |= le32toh(h.flags) & SHUT_BOTH;
		if (!conn_settle(v, c))
			return;
		break;
	default:  /* REQUEST or RESPONSE on an open connection */
		conn_reset(v, c);
		return;
	}
	conn_update(v, c);
}

static void tx_process(struct vsock *v)
{
	struct virtq *q = &v->dev.vqs[VIRTIO_VSOCK_QUEUE_TX];
	bool pushed = false;
	unsigned budget = VIRTIO_CHAIN_BUDGET;
	do {
		for (;;) {
			if (v->broken || (!budget && virtio_device_kick_again(&v->dev, VIRTIO_VSOCK_QUEUE_TX)))
				goto out;
			budget -= budget > 0;
			int r = virtq_pop(q, v->dev.mem, &v->chain);
			if (r == 0)
				break;
			if (r < 0) {
				vsock_fail(v, "malformed transmit queue");
				goto out;
			}
			guest_packet(v, &v->chain);
			if (virtq_push(q, v->dev.mem, v->chain.head, 0)) {
				vsock_fail(v, "used ring outside guest RAM");
				goto out;
			}
			pushed = true;
		}
	} while (virtq_arm_and_recheck(q, v->dev.mem));
out:
	if (pushed)
		virtio_device_notify_used(&v->dev, VIRTIO_VSOCK_QUEUE_TX);
}

/* ---- host events -------------------------------------------------------------------- */

/* "CONNECT <port>" (the newline already cut off), as Firecracker takes it. */
static int parse_connect(const char *s, size_t n, uint32_t *port)
{
	static const char prefix[] = "CONNECT ";
	size_t p = sizeof(prefix) - 1;
	if (n <= p || n > p + 10 || memcmp(s, prefix, p))
		return -EINVAL;
	uint64_t v = 0;
	for (; p < n; p++) {
		if (s[p] < '0' || s[p] > '9')
			return -EINVAL;
		v = v * 10 + (uint64_t)(s[p] - '0');
	}
	if (v >= 0xffffffffULL)  /* VMADDR_PORT_ANY and beyond */
		return -EINVAL;
	*port = (uint32_t)v;
	return 0;
}

/* Peeks, so that bytes after the line stay in the socket for the guest. */
static void read_connect_line(struct vsock *v, struct conn *c)
{
	char line[VIRTIO_VSOCK_CONNECT_LINE_MAX];
	ssize_t n = recv(c->fd, line, sizeof(line), MSG_PEEK);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	const char *nl = n > 0 ? memchr(line, '\n', (size_t)n) : NULL;
	if (!nl) {
		/* EOF, an error, or a full line's worth without a newline. */
		if (n <= 0 || (size_t)n == sizeof(line))
			conn_free(v, c);
		return;
	}
	size_t len = (size_t)(nl - line) + 1;
	uint32_t port;
	if (recv(c->fd, line, len, 0) != (ssize_t)len || parse_connect(line, len - 1, &port)) {
		conn_free(v, c);
		return;
	}
	c->state = CONN_REQUEST;
	c->host_port = alloc_host_port(v);
	c->guest_port = port;
	c->pending = PEND_REQUEST;
	conn_set_deadline(v, c, REQUEST_TIMEOUT);
	conn_update(v, c);
}

static void accept_clients(struct vsock *v)
{
	for (unsigned i = 0; i < ACCEPT_BATCH; i++) {
		int fd = accept4(v->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			/* Out of fds or memory: the socket stays readable, so stop watching it
			 * rather than spin; a connection ending resumes it. */
			if (errno != EAGAIN)
				listen_watch(v, false);
			return;
		}
		struct conn *c = conn_new(v, fd, CONN_LINE);
		if (!c) {
			close(fd);   /* at MAX_CONNS: the client sees EOF */
			continue;
		}
		conn_set_deadline(v, c, CONNECT_LINE_TIMEOUT);
	}
}

static void timer_tick(struct vsock *v)
{
	uint64_t ticks;
	ssize_t n = read(v->timer_fd, &ticks, sizeof(ticks));
	(void)n;
	uint64_t now = mono_ns();
	bool more = false;
	for (unsigned i = 0; i < MAX_CONNS; i++) {
		struct conn *c = v->conns[i];
		if (!c || !c->deadline)
			continue;
		if (c->deadline <= now)
			conn_reset(v, c);
		else
			more = true;
	}
	if (!more)
		timer_arm(v, false);
}

static void conn_event(struct vsock *v, struct conn *c, uint32_t events)
{
	bool in = events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR);
	bool hup = events & (EPOLLHUP | EPOLLERR);
	switch (c->state) {
	case CONN_LINE:
		if (in)
			read_connect_line(v, c);
		return;
	case CONN_REQUEST:
		/* Gave up waiting: the guest's RESPONSE, if any, gets an RST. Data sent after
		 * the CONNECT line waits for the RESPONSE. */
		if (hup)
			conn_reset(v, c);
		else if (in)
			c->host_readable = true;
		return;
	case CONN_OPEN:
		if (in)
			c->host_readable = true;
		if (hup)
			host_stopped_receiving(c);
		if (events & EPOLLOUT)
			conn_flush(c);
		if (conn_settle(v, c))
			conn_update(v, c);
		return;
	}
}

/* ---- device ops --------------------------------------------------------------------- */

static void vsock_serve(struct vsock *v)
{
	if (!serving(v))
		return;
	event_deliver(v);
	tx_process(v);
	rx_pump(v);
}

static void transport_reset(struct vsock *v)
{
	drop_all(v);
	v->event_pending = true;
	vsock_serve(v);
}

static void vsock_config_read(struct virtio_device *d, uint32_t off, void *data, uint32_t len)
{
	struct vsock *v = d->priv;
	uint64_t cid = htole64(v->cid);
	memcpy(data, (const uint8_t *)&cid + off, len);
}

static int vsock_activate(struct virtio_device *d)
{
	vsock_serve(d->priv);
	return 0;
}

/* The driver forgot every connection; so do we, and the host clients see them close. */
static void vsock_reset(struct virtio_device *d)
{
	struct vsock *v = d->priv;
	drop_all(v);
	v->broken = false;
	v->event_pending = false;
}

static void vsock_queue_notify(struct virtio_device *d, unsigned q)
{
	struct vsock *v = d->priv;
	if (q == VIRTIO_VSOCK_QUEUE_TX)
		tx_process(v);
	else if (q == VIRTIO_VSOCK_QUEUE_EVENT)
		event_deliver(v);
	/* Receive buffers arrived, or the guest's packets left replies owed. */
	rx_pump(v);
}

static unsigned vsock_host_fds(struct virtio_device *d, int *fds, unsigned max)
{
	struct vsock *v = d->priv;
	if (max == 0)
		return 0;
	fds[0] = v->epfd;
	return 1;
}

static void vsock_host_fd_ready(struct virtio_device *d, unsigned i)
{
	(void)i;
	struct vsock *v = d->priv;
	struct epoll_event ev[EPOLL_BATCH];
	int n = epoll_wait(v->epfd, ev, EPOLL_BATCH, 0);
	for (int k = 0; k < n; k++) {
		uint64_t data = ev[k].data.u64;
		uint32_t slot = (uint32_t)data;
		if (data == EP_LISTEN)
			accept_clients(v);
		else if (data == EP_TIMER)
			timer_tick(v);
		else if (slot < MAX_CONNS && v->conns[slot] && v->gen[slot] == (uint32_t)(data >> 32))
			conn_event(v, v->conns[slot], ev[k].events);
	}
	rx_pump(v);
}

/* Nothing of the guest's is held between two rounds of the device loop (rx_pump puts
 * back a buffer it did not fill), so no quiesce(): the rings are consistent whenever
 * the lock is free. Host connections do not survive a snapshot; only the CID does. */
static int vsock_save_state(struct virtio_device *d, void *buf, size_t len)
{
	struct vsock *v = d->priv;
	struct vsock_state s = { .version = htole32(STATE_VERSION), .cid = htole64(v->cid) };
	if (len < sizeof(s))
		return -ENOSPC;
	memcpy(buf, &s, sizeof(s));
	return (int)sizeof(s);
}

/* The guest's connections died with the old VM's host side: it hears so through a
 * TRANSPORT_RESET and keeps its listeners. It read its CID at probe time, so the
 * restored device must present the same one. */
static int vsock_restore_state(struct virtio_device *d, const void *buf, size_t len)
{
	struct vsock *v = d->priv;
	struct vsock_state s;
	if (!buf || len != sizeof(s))
		return -EINVAL;
	memcpy(&s, buf, sizeof(s));
	if (le32toh(s.version) != STATE_VERSION || le64toh(s.cid) != v->cid)
		return -EINVAL;
	transport_reset(v);
	return 0;
}

static const struct virtio_device_ops vsock_ops = {
	.name = "virtio-vsock",
	.device_id = VIRTIO_ID_VSOCK,
	/* VIRTIO_VSOCK_F_STREAM is implied by offering nothing; no SEQPACKET. */
	.features = 0,
	.num_queues = NUM_QUEUES,
	.queue_max_size = VIRTIO_VSOCK_QUEUE_SIZE,
	.config_size = sizeof(uint64_t),
	.config_read = vsock_config_read,
	.activate = vsock_activate,
	.reset = vsock_reset,
	.queue_notify = vsock_queue_notify,
	.host_fds = vsock_host_fds,
	.host_fd_ready = vsock_host_fd_ready,
	.state_version = 1,
	.save_state = vsock_save_state,
	.restore_state = vsock_restore_state,
	.destroy = virtio_vsock_destroy,
};

/* ---- life cycle --------------------------------------------------------------------- */

static void vsock_free(struct vsock *v)
{
	if (v->listen_fd >= 0)
		close(v->listen_fd);
	if (v->bound)
		unlink(v->path);
	if (v->timer_fd >= 0)
		close(v->timer_fd);
	if (v->epfd >= 0)
		close(v->epfd);
	free(v);
}

static int vsock_open(struct vsock *v, struct mitos_err *e)
{
	v->epfd = epoll_create1(EPOLL_CLOEXEC);
	v->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (v->epfd < 0 || v->timer_fd < 0)
		return mitos_err_set(e, -errno, "virtio-vsock: %s", strerror(errno));
	int fd = unix_listen(v->path, SOMAXCONN, false);
	if (fd == -EADDRINUSE || fd == -EEXIST)
		return mitos_err_set(e, fd, "vsock socket %s already exists: remove it (left over from a VM "
				     "that ended?) or choose another path", v->path);
	if (fd < 0)
		return mitos_err_set(e, fd, "vsock socket %s: %s", v->path, strerror(-fd));
	v->listen_fd = fd;
	v->bound = true;
	struct epoll_event lev = { .events = EPOLLIN, .data.u64 = EP_LISTEN };
	struct epoll_event tev = { .events = EPOLLIN, .data.u64 = EP_TIMER };
	if (epoll_ctl(v->epfd, EPOLL_CTL_ADD, v->listen_fd, &lev) ||
	    epoll_ctl(v->epfd, EPOLL_CTL_ADD, v->timer_fd, &tev))
		return mitos_err_set(e, -errno, "vsock socket %s: %s", v->path, strerror(errno));
	return 0;
}

struct virtio_device *virtio_vsock_create(const struct guest_mem *mem, uint64_t mmio_base,
					  unsigned irq, const struct virtio_vsock_opts *o,
					  struct mitos_err *e)
{
	if (o->cid < VIRTIO_VSOCK_MIN_CID || o->cid > VIRTIO_VSOCK_MAX_CID) {
		mitos_err_set(e, -EINVAL, "vsock CID %u is reserved: use %u to %u", o->cid,
			      VIRTIO_VSOCK_MIN_CID, VIRTIO_VSOCK_MAX_CID);
		return NULL;
	}
	/* Guest connections to host port P go to PATH_P: room for "_4294967295" and a NUL. */
	size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 12;
	if (!o->path[0] || strlen(o->path) > max) {
		mitos_err_set(e, -ENAMETOOLONG, "vsock socket path '%s' must be 1 to %zu bytes "
			      "(a Unix socket address, plus a \"_<port>\" suffix for guest "
			      "connections): use a shorter path", o->path, max);
		return NULL;
	}
	struct vsock *v = calloc(1, sizeof(*v));
	if (!v) {
		mitos_err_set(e, -ENOMEM, "out of memory for virtio-vsock");
		return NULL;
	}
	v->epfd = v->listen_fd = v->timer_fd = -1;
	strcpy(v->path, o->path);
	v->cid = o->cid;
	v->next_port = FIRST_LOCAL_PORT;
	TAILQ_INIT(&v->rx_ready);
	if (vsock_open(v, e)) {
		vsock_free(v);
		return NULL;
	}
	virtio_device_init(&v->dev, &vsock_ops, v, mem, mmio_base, irq);
	return &v->dev;
}

void virtio_vsock_destroy(struct virtio_device *d)
{
	if (!d)
		return;
	struct vsock *v = d->priv;
	drop_all(v);
	virtio_device_destroy(d);
	vsock_free(v);
}

int virtio_vsock_send_transport_reset(struct virtio_device *d)
{
	if (d->ops != &vsock_ops)
		return -EINVAL;
	pthread_mutex_lock(&d->lock);
	transport_reset(d->priv);
	pthread_mutex_unlock(&d->lock);
	return 0;
}
