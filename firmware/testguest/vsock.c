/* testguest.mode=vsock: a virtio-vsock driver that brings the device up as Linux's
 * virtio_vsock does (VERSION_1, EVENT_IDX; the receive ring kept full, one event buffer
 * posted) and runs an echo server on a stream port (testguest.vsock_port=N, default
 * 1234): it accepts REQUESTs for that port, sends every RW payload back on the same
 * connection in order, keeps to the host's credit and gives its own (CREDIT_UPDATE as it
 * consumes, and on CREDIT_REQUEST), answers a host SHUTDOWN (both ways: RST; SEND only:
 * its own SHUTDOWN once everything is echoed) and anything for an unknown connection
 * with RST. A TRANSPORT_RESET event (after a snapshot is restored) drops every
 * connection and keeps listening. It serves until the host ends the VM, or until a
 * packet's whole payload is "MITOS-QUIT": then it prints PASS and exits 0.
 *
 * The same driver serves other applications on its port (tg_vsock_serve with a
 * struct tg_vsock_app, e.g. the agent stub): their received bytes are handed over and
 * returned to the receive ring at once, and answers are copied into transmit buffers
 * of their own (tg_vsock_send).
 *
 * Every instruction is emulated on the hosts we run on, so no payload byte is touched:
 * a received packet's header is rewritten into the reply's in place and that same
 * buffer (header and payload, one descriptor) goes out on the transmit queue, returning
 * to the receive ring once sent. The buffers live past the end of the image, not in
 * .bss, which the entry code would spend a second zeroing. */
#include "firmware/testguest/tg.h"
#include "firmware/testguest/virtio.h"
#include "lib/layout.h"

#define VIRTIO_ID_VSOCK  19
#define F_WANTED         (F_EVENT_IDX | F_VERSION_1)
#define QSZ              64     /* entries of each queue */
#define RXQ              0
#define TXQ              1
#define EVQ              2
#define NRX              32     /* receive buffers */
#define PAYLOAD          (64u * 1024)
#define BUF_STRIDE       (PAYLOAD + 4096)
#define BUF_ALLOC        (256u * 1024)  /* per connection, as Linux's default */
#define MAX_CONNS        TG_VSOCK_MAX_CONNS
#define TXBUF            (TG_VSOCK_SEND_MAX + 64u)  /* an application's packet: header + payload */
#define HOST_CID         2
#define TYPE_STREAM      1
#define SHUT_RCV         1
#define SHUT_SEND        2
#define EVENT_TRANSPORT_RESET 0
#define NO_CONN          0xff
#define CTL              0xff   /* a transmit descriptor carrying a control header */
#define FREE             0xfe

enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE,
       OP_CREDIT_REQUEST };

struct hdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));
#define HDR ((uint32_t)sizeof(struct hdr))

/* Where a receive buffer is. */
enum { IN_RX = 1, IN_FIFO, IN_TX };

struct conn {
	bool open;
	uint8_t gen;
	uint32_t local_port, peer_port;
	uint32_t peer_buf_alloc, peer_fwd_cnt;  /* the host's credit */
	uint32_t tx_cnt;                        /* bytes echoed */
	uint32_t fwd_cnt, fwd_sent;             /* bytes consumed; as last told */
	bool credit_owed, peer_shut_send, shut_sent;
	uint8_t fifo[NRX];                      /* buffers waiting to be echoed, in order */
	unsigned fifo_head, fifo_len;
};

struct vsock {
	struct vdev vd;
	const struct tg_vsock_app *app; /* NULL: echo */
	uint64_t cid;
	uint32_t port;
	unsigned connections, resets, dropped;
	uint64_t echoed;
	struct conn conns[MAX_CONNS];
};

extern uint8_t __bss_end[];
static struct vsock vsock;
static uint8_t *bufs, *app_bufs;
static struct vq vqs[3];
static uint8_t where[NRX];
/* Per receive buffer: the connection (and its generation) its payload belongs to. */
static uint8_t buf_conn[NRX], buf_gen[NRX];
static uint32_t buf_len[NRX];
/* Per transmit descriptor: the receive buffer it sends, CTL or FREE. */
static uint8_t tx_owner[QSZ];
static uint8_t tx_free[QSZ];
static unsigned tx_nfree;
static struct hdr ctl_hdr[QSZ];
static uint32_t event_buf;

static uint32_t vr(const struct vsock *v, unsigned off) { return vdev_read(&v->vd, off); }

static uint8_t *buf(unsigned i)
{
	return bufs + (uint64_t)i * BUF_STRIDE;
}

/* ---- rings ------------------------------------------------------------------------------ */

static void post_rx(unsigned b)
{
	where[b] = IN_RX;
	vq_post(&vqs[RXQ], b);
}

static void publish(struct vsock *v, unsigned qi)
{
	vq_publish(&v->vd, &vqs[qi], qi, true);
}

/* ---- packets out ------------------------------------------------------------------------- */

static void fill_hdr(const struct vsock *v, struct hdr *h, uint32_t src_port, uint32_t dst_port,
		     uint16_t op, uint32_t len, uint32_t flags, uint32_t fwd_cnt)
{
	*h = (struct hdr){ .src_cid = v->cid, .dst_cid = HOST_CID, .src_port = src_port,
			   .dst_port = dst_port, .len = len, .type = TYPE_STREAM, .op = op,
			   .flags = flags, .buf_alloc = BUF_ALLOC, .fwd_cnt = fwd_cnt };
}

static void send_desc(unsigned d, void *addr, uint32_t len, uint8_t owner)
{
	vqs[TXQ].desc[d] = (struct vdesc){ (uint64_t)(uintptr_t)addr, len, 0, 0 };
	tx_owner[d] = owner;
	vq_post(&vqs[TXQ], d);
}

/* A header-only packet; the caller made sure a transmit descriptor is free. */
static void send_ctl(const struct vsock *v, uint32_t src_port, uint32_t dst_port, uint16_t op,
		     uint32_t flags, uint32_t fwd_cnt)
{
	unsigned d = tx_free[--tx_nfree];
	fill_hdr(v, &ctl_hdr[d], src_port, dst_port, op, 0, flags, fwd_cnt);
	send_desc(d, &ctl_hdr[d], HDR, CTL);
}

static void send_conn_ctl(const struct vsock *v, struct conn *c, uint16_t op, uint32_t flags)
{
	send_ctl(v, c->local_port, c->peer_port, op, flags, c->fwd_cnt);
	c->fwd_sent = c->fwd_cnt;
	c->credit_owed = false;
}

/* Room the host has for more of this connection's bytes. */
static uint32_t host_credit(const struct conn *c)
{
	uint32_t in_flight = c->tx_cnt - c->peer_fwd_cnt;
	return in_flight < c->peer_buf_alloc ? c->peer_buf_alloc - in_flight : 0;
}

/* Echoes what credit and free descriptors allow, then owed control packets. */
static bool conn_flush(struct vsock *v, struct conn *c)
{
	bool worked = false;
	while (c->fifo_len && tx_nfree) {
		unsigned b = c->fifo[c->fifo_head];
		uint32_t len = buf_len[b];
		if (host_credit(c) < len)
			break;
		c->fifo_head = (c->fifo_head + 1) % NRX;
		c->fifo_len--;
		fill_hdr(v, (struct hdr *)buf(b), c->local_port, c->peer_port, OP_RW, len, 0,
			 c->fwd_cnt);
		c->fwd_sent = c->fwd_cnt;
		c->credit_owed = false;
		c->tx_cnt += len;
		v->echoed += len;
		where[b] = IN_TX;
		send_desc(tx_free[--tx_nfree], buf(b), HDR + len, (uint8_t)b);
		worked = true;
	}
	if (c->credit_owed && tx_nfree) {
		send_conn_ctl(v, c, OP_CREDIT_UPDATE, 0);
		worked = true;
	}
	/* The host sends no more and all of it is on its way back: we are done too. */
	if (c->peer_shut_send && !c->fifo_len && !c->shut_sent && tx_nfree) {
		send_conn_ctl(v, c, OP_SHUTDOWN, SHUT_RCV | SHUT_SEND);
		c->shut_sent = true;
		worked = true;
	}
	return worked;
}

static void conn_drop_fifo(struct conn *c)
{
	for (; c->fifo_len; c->fifo_len--, c->fifo_head = (c->fifo_head + 1) % NRX)
		post_rx(c->fifo[c->fifo_head]);
}

/* Echoes still in flight belong to nobody once the generation moves on. */
static void conn_forget(struct conn *c)
{
	conn_drop_fifo(c);
	if (!vsock.app)
		tg_printf("vsock: connection from host port %u closed (%u bytes echoed)\n",
			  c->peer_port, c->tx_cnt);
	uint8_t gen = (uint8_t)(c->gen + 1);
	*c = (struct conn){ .gen = gen };
}

/* ---- packets in --------------------------------------------------------------------------- */

static struct conn *conn_find(struct vsock *v, uint32_t local_port, uint32_t peer_port)
{
	for (unsigned i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &v->conns[i];
		if (c->open && c->local_port == local_port && c->peer_port == peer_port)
			return c;
	}
	return NULL;
}

static void accept_conn(struct vsock *v, const struct hdr *h)
{
	struct conn *c = NULL;
	for (unsigned i = 0; i < MAX_CONNS && !c; i++)
		if (!v->conns[i].open)
			c = &v->conns[i];
	if (!c || h->dst_port != v->port) {
		send_ctl(v, h->dst_port, h->src_port, OP_RST, 0, 0);
		return;
	}
	uint8_t gen = c->gen;
	*c = (struct conn){ .open = true, .gen = gen, .local_port = h->dst_port,
			    .peer_port = h->src_port, .peer_buf_alloc = h->buf_alloc,
			    .peer_fwd_cnt = h->fwd_cnt };
	v->connections++;
	send_conn_ctl(v, c, OP_RESPONSE, 0);
	/* Applications answer in a few packets; a console line would cost more than that. */
	if (v->app)
		v->app->open((unsigned)(c - v->conns));
	else
		tg_printf("vsock: connection from host port %u to port %u\n", c->peer_port,
			  c->local_port);
}

static bool event_poll(struct vsock *v);

static bool is_quit(const uint8_t *p, uint32_t len)
{
	static const char quit[] = "MITOS-QUIT";
	if (len != sizeof(quit) - 1)
		return false;
	for (unsigned i = 0; i < len; i++)
		if (p[i] != (uint8_t)quit[i])
			return false;
	return true;
}

static _Noreturn void quit(struct vsock *v)
{
	tg_printf("vsock: %u connection(s), %lu bytes echoed, %u transport reset(s), %u packet(s) "
		  "dropped\n", v->connections, v->echoed, v->resets, v->dropped);
	vdev_write(&v->vd, VM_STATUS, 0);
	tg_printf("PASS\n");
	tg_exit(TG_EXIT_PASS);
}

/* Handles receive buffer b holding `len` bytes; true when the buffer was kept for an
 * echo, false when it can go back to the receive ring. */
static bool handle(struct vsock *v, unsigned b, uint32_t len)
{
	const struct hdr *h = (const struct hdr *)buf(b);
	/* Not from the host to us: nothing to answer. */
	if (len < HDR || h->len != len - HDR || h->src_cid != HOST_CID || h->dst_cid != v->cid ||
	    h->type != TYPE_STREAM) {
		v->dropped++;
		return false;
	}
	struct conn *c = conn_find(v, h->dst_port, h->src_port);
	if (h->op == OP_RST) {
		if (c)
			conn_forget(c);
		return false;
	}
	if (h->op == OP_REQUEST && !c) {
		/* A transport reset queued at a restore predates this REQUEST: it must end the
		 * old connections now, not the new one a moment later (the vCPU may have been
		 * anywhere in the main loop when the snapshot was taken). */
		event_poll(v);
		accept_conn(v, h);
		return false;
	}
	if (!c || h->op == OP_REQUEST || h->op == OP_RESPONSE || h->op > OP_CREDIT_REQUEST) {
		send_ctl(v, h->dst_port, h->src_port, OP_RST, 0, 0);
		if (c)
			conn_forget(c);
		return false;
	}
	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case OP_RW:
		if (is_quit(buf(b) + HDR, h->len))
			quit(v);
		if (!h->len)
			return false;
		if (v->app) {
			/* Consumed at once: the buffer goes back to the receive ring. */
			c->fwd_cnt += h->len;
			if (c->fwd_cnt - c->fwd_sent >= BUF_ALLOC / 2)
				c->credit_owed = true;
			v->app->data((unsigned)(c - v->conns), buf(b) + HDR, h->len);
			return false;
		}
		buf_len[b] = h->len;
		buf_conn[b] = (uint8_t)(c - v->conns);
		buf_gen[b] = c->gen;
		where[b] = IN_FIFO;
		c->fifo[(c->fifo_head + c->fifo_len++) % NRX] = (uint8_t)b;
		return true;
	case OP_CREDIT_REQUEST:
		c->credit_owed = true;
		return false;
	case OP_SHUTDOWN:
		/* The host takes no more: what waits to be echoed is dropped. */
		if (h->flags & SHUT_RCV)
			conn_drop_fifo(c);
		if ((h->flags & (SHUT_RCV | SHUT_SEND)) == (SHUT_RCV | SHUT_SEND)) {
			send_conn_ctl(v, c, OP_RST, 0);
			conn_forget(c);
		} else if (h->flags & SHUT_SEND) {
			c->peer_shut_send = true;
		}
		return false;
	default:  /* CREDIT_UPDATE: the credit is taken from every packet above */
		return false;
	}
}

static bool rx_poll(struct vsock *v)
{
	struct vq *q = &vqs[RXQ];
	bool worked = false;
	/* A packet may need a reply: leave the rest until a transmit descriptor frees up. */
	while (q->last_used != vq_used_idx(q) && tx_nfree) {
		barrier(); /* the index before the entries (x86 keeps loads in order) */
		struct used_elem e = vq_take_used(q);
		if (e.id >= NRX || where[e.id] != IN_RX || e.len > HDR + PAYLOAD)
			tg_fail(TG_EXIT_REQUEST, "vsock rx used entry: buffer %u, len %u", e.id,
				e.len);
		if (!handle(v, e.id, e.len))
			post_rx(e.id);
		worked = true;
	}
	return worked;
}

/* Sent echoes give their bytes back as credit and their buffers to the receive ring. */
static bool tx_reclaim(struct vsock *v)
{
	struct vq *q = &vqs[TXQ];
	bool worked = false;
	while (q->last_used != vq_used_idx(q)) {
		barrier();
		struct used_elem e = vq_take_used(q);
		if (e.id >= QSZ || tx_owner[e.id] == FREE)
			tg_fail(TG_EXIT_REQUEST, "vsock tx used entry names descriptor %u, not one "
				"in flight", e.id);
		unsigned b = tx_owner[e.id];
		if (b != CTL) {
			struct conn *c = &v->conns[buf_conn[b]];
			if (c->open && c->gen == buf_gen[b]) {
				c->fwd_cnt += buf_len[b];
				if (c->fwd_cnt - c->fwd_sent >= BUF_ALLOC / 2)
					c->credit_owed = true;
			}
			post_rx(b);
		}
		tx_owner[e.id] = FREE;
		tx_free[tx_nfree++] = (uint8_t)e.id;
		worked = true;
	}
	return worked;
}

static uint64_t config_cid(const struct vsock *v)
{
	uint32_t gen, lo, hi;
	do {
		gen = vr(v, VM_CONFIG_GEN);
		lo = vr(v, VM_CONFIG);
		hi = vr(v, VM_CONFIG + 4);
	} while (gen != vr(v, VM_CONFIG_GEN));
	return (uint64_t)hi << 32 | lo;
}

/* TRANSPORT_RESET: the host side of every connection is gone (a restored snapshot);
 * listeners stay, and the CID may have changed. */
static bool event_poll(struct vsock *v)
{
	struct vq *q = &vqs[EVQ];
	bool worked = false;
	while (q->last_used != vq_used_idx(q)) {
		barrier();
		struct used_elem e = vq_take_used(q);
		if (e.id != 0 || e.len < sizeof(event_buf))
			tg_fail(TG_EXIT_REQUEST, "vsock event used entry: descriptor %u, len %u",
				e.id, e.len);
		if (READ_ONCE(event_buf) == EVENT_TRANSPORT_RESET) {
			for (unsigned i = 0; i < MAX_CONNS; i++)
				if (v->conns[i].open)
					conn_forget(&v->conns[i]);
			v->cid = config_cid(v);
			v->resets++;
			tg_printf("vsock: transport reset, cid %lu, still listening on port %u\n",
				  v->cid, v->port);
		}
		event_buf = 0xffffffffu;
		vq_post(&vqs[EVQ], 0);
		worked = true;
	}
	return worked;
}

/* ---- set-up ------------------------------------------------------------------------------- */

static void vsock_init(struct vsock *v)
{
	uint64_t offered = vdev_begin(&v->vd);
	if ((offered & F_WANTED) != F_WANTED)
		tg_fail(TG_EXIT_TRANSPORT, "virtio-vsock offers 0x%lx, want VERSION_1 and EVENT_IDX",
			offered);
	vdev_set_features(&v->vd, F_WANTED);
	v->cid = config_cid(v);
	tg_printf("vsock: virtio-vsock at 0x%lx irq %u: features offered 0x%lx, cid %lu\n",
		  v->vd.dev->base, v->vd.dev->irq, offered, v->cid);

	for (unsigned qi = RXQ; qi <= EVQ; qi++)
		vq_setup(&v->vd, &vqs[qi], qi, QSZ);
	bufs = (uint8_t *)(((uintptr_t)__bss_end + 4095) & ~(uintptr_t)4095);
	app_bufs = bufs + (uint64_t)NRX * BUF_STRIDE;
	for (unsigned i = 0; i < NRX; i++) {
		vqs[RXQ].desc[i] = (struct vdesc){ (uint64_t)(uintptr_t)buf(i), HDR + PAYLOAD,
						   DESC_F_WRITE, 0 };
		post_rx(i);
	}
	for (unsigned i = 0; i < QSZ; i++) {
		tx_owner[i] = FREE;
		tx_free[tx_nfree++] = (uint8_t)i;
	}
	vqs[EVQ].desc[0] = (struct vdesc){ (uint64_t)(uintptr_t)&event_buf, sizeof(event_buf),
					   DESC_F_WRITE, 0 };
	event_buf = 0xffffffffu;
	vq_post(&vqs[EVQ], 0);
	vdev_driver_ok(&v->vd);
	publish(v, RXQ);
	publish(v, EVQ);
}

/* ---- applications ------------------------------------------------------------------------- */

bool tg_vsock_send(unsigned conn, const void *p, uint32_t len)
{
	struct vsock *v = &vsock;
	struct conn *c = conn < MAX_CONNS ? &v->conns[conn] : NULL;
	if (!c || !c->open || len > TG_VSOCK_SEND_MAX || host_credit(c) < len)
		return false;
	/* Sends are rare and small: wait for the device to hand a descriptor back. */
	uint64_t give_up = tg_ticks() + 2 * TG_TICKS_PER_SECOND;
	while (!tx_nfree) {
		publish(v, TXQ);
		if (tx_reclaim(v))
			continue;
		if (tg_ticks() > give_up)
			tg_fail(TG_EXIT_TIMEOUT, "vsock: no transmit descriptor came back in 2 s");
		vq_set_used_event(&vqs[TXQ], vqs[TXQ].last_used);
		mb();
		if (vq_used_idx(&vqs[TXQ]) == vqs[TXQ].last_used)
			tg_wait_interrupt();
	}
	unsigned d = tx_free[--tx_nfree];
	uint8_t *b = app_bufs + (uint64_t)d * TXBUF;
	fill_hdr(v, (struct hdr *)b, c->local_port, c->peer_port, OP_RW, len, 0, c->fwd_cnt);
	memcpy(b + HDR, p, len);
	c->fwd_sent = c->fwd_cnt;
	c->credit_owed = false;
	c->tx_cnt += len;
	send_desc(d, b, HDR + len, CTL);
	return true;
}

/* ---- main loop ---------------------------------------------------------------------------- */

void tg_vsock_run(const struct tg_virtio_dev *devs, unsigned ndev, uint32_t port)
{
	tg_vsock_serve(devs, ndev, port, NULL);
}

void tg_vsock_serve(const struct tg_virtio_dev *devs, unsigned ndev, uint32_t port,
		    const struct tg_vsock_app *app)
{
	struct vsock *v = &vsock;
	v->port = port;
	v->app = app;
	vdev_find(&v->vd, "vsock", VIRTIO_ID_VSOCK, devs, ndev);
	vsock_init(v);
	tg_printf("vsock: listening on port %u\n", v->port);

	for (;;) {
		/* A transport reset first: it predates any REQUEST now on the receive ring,
		 * which must not be dropped with the connections the reset ends. */
		bool worked = event_poll(v);
		worked |= tx_reclaim(v);
		worked |= rx_poll(v);
		for (unsigned i = 0; i < MAX_CONNS; i++)
			if (v->conns[i].open)
				worked |= conn_flush(v, &v->conns[i]);
		publish(v, TXQ);
		publish(v, RXQ);
		publish(v, EVQ);
		vdev_config_changed(&v->vd);
		if (worked)
			continue;
		/* An interrupt for the next entry on any queue. */
		for (unsigned qi = RXQ; qi <= EVQ; qi++)
			vq_set_used_event(&vqs[qi], vqs[qi].last_used);
		mb();
		bool idle = true;
		for (unsigned qi = RXQ; qi <= EVQ; qi++)
			idle &= vq_used_idx(&vqs[qi]) == vqs[qi].last_used;
		if (idle)
			tg_wait_interrupt();
	}
}
