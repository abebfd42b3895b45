/* testguest.mode=net: a virtio-net driver that brings the device up as Linux's
 * virtio_net does (VERSION_1, MAC, STATUS, MRG_RXBUF, EVENT_IDX; the receive ring kept
 * full of 1526-byte buffers) and answers ARP requests for its address
 * (testguest.ip=A.B.C.D, default 172.16.0.2) and ICMP echo requests. Every instruction
 * is emulated on the hosts we run on, so a request is rewritten into its reply where it
 * arrived and that same buffer goes out on the transmit queue: no payload byte is
 * touched (the ICMP checksum is fixed incrementally), and the buffer returns to the
 * receive ring once sent. Serves until the host ends the VM, or for
 * testguest.net_seconds=N seconds and then prints its counts and PASS. */
#include "firmware/testguest/tg.h"
#include "firmware/testguest/virtio.h"
#include "lib/layout.h"

#define F_NET_MAC        (1ULL << 5)
#define F_NET_MRG_RXBUF  (1ULL << 15)
#define F_NET_STATUS     (1ULL << 16)
#define F_WANTED (F_NET_MAC | F_NET_MRG_RXBUF | F_NET_STATUS | F_EVENT_IDX | F_VERSION_1)
#define NET_CFG_MAC      0
#define NET_CFG_STATUS   6
#define NET_S_LINK_UP    1
#define VIRTIO_ID_NET    1

#define HDR_LEN          12     /* struct virtio_net_hdr_v1 */
#define HDR_NUM_BUFFERS  10
#define BUF_LEN          1526   /* header + a 1514-byte frame, as Linux posts */
#define BUF_STRIDE       1536
#define QSZ              32     /* buffers, and entries of each queue */
#define RXQ              0
#define TXQ              1

#define ETH_HLEN         14
#define ETH_P_IP         0x0800
#define ETH_P_ARP        0x0806
#define ARP_LEN          28
#define IP_PROTO_ICMP    1
#define ICMP_ECHO        8
#define ICMP_ECHOREPLY   0

/* Where each buffer is: the device's receive ring, its transmit ring. */
enum { IN_RX = 1, IN_TX = 2 };

struct net {
	struct vdev vd;
	uint64_t features;
	uint8_t mac[6];
	uint8_t ip[4];
	uint64_t frames, arp_replies, echo_replies, ignored;
};

static struct vq vqs[2];
static uint8_t bufs[QSZ][BUF_STRIDE] __attribute__((aligned(64)));
static uint8_t where[QSZ];

static bool has(const struct net *n, uint64_t f) { return (n->features & f) != 0; }

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static void copy(uint8_t *d, const uint8_t *s, unsigned n)
{
	while (n--)
		*d++ = *s++;
}

static bool same(const uint8_t *a, const uint8_t *b, unsigned n)
{
	while (n--)
		if (*a++ != *b++)
			return false;
	return true;
}

/* ---- rings ---------------------------------------------------------------------------- */

static void post(unsigned qi, unsigned id)
{
	vq_post(&vqs[qi], id);
	where[id] = qi == RXQ ? IN_RX : IN_TX;
}

static void publish(struct net *n, unsigned qi)
{
	vq_publish(&n->vd, &vqs[qi], qi, has(n, F_EVENT_IDX));
}

/* ---- frames ----------------------------------------------------------------------------- */

/* An ARP request for our address becomes our reply. */
static uint32_t answer_arp(struct net *n, uint8_t *f, uint32_t len)
{
	uint8_t *a = f + ETH_HLEN;
	if (len < ETH_HLEN + ARP_LEN || be16(a) != 1 || be16(a + 2) != ETH_P_IP || a[4] != 6 ||
	    a[5] != 4 || be16(a + 6) != 1 || !same(a + 24, n->ip, 4))
		return 0;
	copy(f, a + 8, 6);          /* to the sender */
	copy(f + 6, n->mac, 6);
	a[7] = 2;                   /* reply */
	copy(a + 18, a + 8, 10);    /* target = the sender's MAC and IP */
	copy(a + 8, n->mac, 6);
	copy(a + 14, n->ip, 4);
	n->arp_replies++;
	return ETH_HLEN + ARP_LEN;
}

/* An ICMP echo request to our address becomes its echo reply. */
static uint32_t answer_icmp(struct net *n, uint8_t *f, uint32_t len)
{
	uint8_t *ip = f + ETH_HLEN;
	if (len < ETH_HLEN + 20 || (ip[0] >> 4) != 4)
		return 0;
	unsigned ihl = (ip[0] & 15) * 4u;
	unsigned total = be16(ip + 2);
	/* Whole datagrams only: no fragments, nothing cut short. */
	if (ihl < 20 || total < ihl + 8 || total > len - ETH_HLEN || ip[9] != IP_PROTO_ICMP ||
	    (be16(ip + 6) & 0x3fff) || !same(ip + 16, n->ip, 4))
		return 0;
	uint8_t *icmp = ip + ihl;
	if (icmp[0] != ICMP_ECHO || icmp[1] != 0)
		return 0;
	copy(f, f + 6, 6);
	copy(f + 6, n->mac, 6);
	/* Swapping the addresses leaves the IP header checksum as it was. */
	uint8_t src[4];
	copy(src, ip + 12, 4);
	copy(ip + 12, ip + 16, 4);
	copy(ip + 16, src, 4);
	/* RFC 1624: HC' = ~(~HC + ~m + m') for the type/code word going from 0x0800 to 0. */
	icmp[0] = ICMP_ECHOREPLY;
	uint32_t sum = (uint16_t)~be16(icmp + 2) + (uint16_t)~(ICMP_ECHO << 8);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	uint16_t csum = (uint16_t)~sum;
	icmp[2] = (uint8_t)(csum >> 8);
	icmp[3] = (uint8_t)csum;
	n->echo_replies++;
	return ETH_HLEN + total;
}

/* Returns the reply's length, 0 when the frame wants none. */
static uint32_t answer(struct net *n, uint8_t *f, uint32_t len)
{
	n->frames++;
	uint32_t r = 0;
	if (len >= ETH_HLEN && be16(f + 12) == ETH_P_ARP)
		r = answer_arp(n, f, len);
	else if (len >= ETH_HLEN && be16(f + 12) == ETH_P_IP)
		r = answer_icmp(n, f, len);
	if (!r)
		n->ignored++;
	return r;
}

static unsigned check_used(struct used_elem e, unsigned want_where, const char *q)
{
	if (e.id >= QSZ || where[e.id] != want_where)
		tg_fail(TG_EXIT_REQUEST, "%s used entry names descriptor %u, not a buffer on that "
			"queue", q, e.id);
	return e.id;
}

static bool rx_poll(struct net *n)
{
	struct vq *q = &vqs[RXQ];
	bool worked = false;
	while (q->last_used != vq_used_idx(q)) {
		barrier(); /* the index before the entries (x86 keeps loads in order) */
		struct used_elem e = vq_take_used(q);
		unsigned id = check_used(e, IN_RX, "rx");
		uint8_t *b = bufs[id];
		uint16_t nbuf = (uint16_t)(b[HDR_NUM_BUFFERS] | b[HDR_NUM_BUFFERS + 1] << 8);
		worked = true;
		if (e.len < HDR_LEN || e.len > BUF_LEN || nbuf == 0)
			tg_fail(TG_EXIT_REQUEST, "rx buffer %u: used len %u, num_buffers %u", id,
				e.len, nbuf);
		/* Larger than one buffer: more than a 1500-byte MTU, nothing we answer. The
		 * device publishes a frame's buffers together. */
		if (nbuf > 1) {
			n->frames++;
			n->ignored++;
			post(RXQ, id);
			for (unsigned k = 1; k < nbuf; k++) {
				if (q->last_used == vq_used_idx(q))
					tg_fail(TG_EXIT_REQUEST, "rx frame of %u buffers published "
						"without all of them", nbuf);
				post(RXQ, check_used(vq_take_used(q), IN_RX, "rx"));
			}
			continue;
		}
		uint32_t reply = answer(n, b + HDR_LEN, e.len - HDR_LEN);
		if (!reply) {
			post(RXQ, id);
			continue;
		}
		memset(b, 0, HDR_LEN);   /* no offloads asked */
		vqs[TXQ].desc[id] = (struct vdesc){ (uint64_t)(uintptr_t)b, HDR_LEN + reply, 0, 0 };
		post(TXQ, id);
	}
	return worked;
}

/* Sent buffers go back to the receive ring. */
static bool tx_reclaim(void)
{
	struct vq *q = &vqs[TXQ];
	bool worked = false;
	while (q->last_used != vq_used_idx(q)) {
		barrier();
		post(RXQ, check_used(vq_take_used(q), IN_TX, "tx"));
		worked = true;
	}
	return worked;
}

/* ---- set-up ----------------------------------------------------------------------------- */

static uint8_t config8(const struct net *n, unsigned off)
{
	return *(volatile uint8_t *)(uintptr_t)(n->vd.dev->base + VM_CONFIG + off);
}

static bool link_up(const struct net *n)
{
	if (!has(n, F_NET_STATUS))
		return true;
	return (config8(n, NET_CFG_STATUS) | config8(n, NET_CFG_STATUS + 1) << 8) & NET_S_LINK_UP;
}

static void net_init(struct net *n)
{
	uint64_t offered = vdev_begin(&n->vd);
	if (!(offered & F_VERSION_1))
		tg_fail(TG_EXIT_TRANSPORT, "virtio-net does not offer VIRTIO_F_VERSION_1");
	n->features = offered & F_WANTED;
	vdev_set_features(&n->vd, n->features);
	tg_printf("net: virtio-net at 0x%lx irq %u: features offered 0x%lx, accepted 0x%lx\n",
		  n->vd.dev->base, n->vd.dev->irq, offered, n->features);
	if (has(n, F_NET_MAC)) {
		for (unsigned i = 0; i < 6; i++)
			n->mac[i] = config8(n, NET_CFG_MAC + i);
	} else {
		static const uint8_t fallback[6] = { 0x06, 0, 0xac, 0x10, 0, 0x02 };
		copy(n->mac, fallback, 6);
	}

	vq_setup(&n->vd, &vqs[RXQ], RXQ, QSZ);
	vq_setup(&n->vd, &vqs[TXQ], TXQ, QSZ);
	/* Completions on the transmit queue need no interrupt: the loop reclaims them. */
	vqs[TXQ].avail.flags = AVAIL_F_NO_INTERRUPT;
	for (unsigned i = 0; i < QSZ; i++) {
		vqs[RXQ].desc[i] = (struct vdesc){ (uint64_t)(uintptr_t)bufs[i], BUF_LEN,
						   DESC_F_WRITE, 0 };
		post(RXQ, i);
	}
	vdev_driver_ok(&n->vd);
	publish(n, RXQ);
}

/* ---- command line ------------------------------------------------------------------------ */

/* The value of `key` (up to the next space), or NULL. main.c passes over the keys it
 * does not know, these among them. */
static const char *cmd_value(const char *cmd, const char *key)
{
	const char *p = cmd, *limit = cmd + LAYOUT_CMDLINE_MAX;
	while (p < limit && *p) {
		while (p < limit && *p == ' ')
			p++;
		const char *k = key, *t = p;
		while (*k && t < limit && *t == *k)
			t++, k++;
		if (!*k)
			return t;
		while (p < limit && *p && *p != ' ')
			p++;
	}
	return NULL;
}

/* Decimal digits up to '.', ' ' or the end; false without digits or above max. */
static bool parse_dec(const char **pp, uint64_t max, uint64_t *out)
{
	const char *p = *pp;
	uint64_t v = 0;
	while (*p >= '0' && *p <= '9' && v <= max)
		v = v * 10 + (uint64_t)(*p++ - '0');
	if (p == *pp || v > max)
		return false;
	*pp = p;
	*out = v;
	return true;
}

static bool value_end(char c)
{
	return c == ' ' || c == '\0';
}

static void parse_options(struct net *n, const char *cmd, uint64_t *seconds)
{
	static const uint8_t default_ip[4] = { 172, 16, 0, 2 };
	copy(n->ip, default_ip, 4);
	*seconds = 0;
	if (!cmd)
		return;
	const char *v = cmd_value(cmd, "testguest.ip=");
	if (v) {
		for (unsigned i = 0; i < 4; i++) {
			uint64_t b;
			if (!parse_dec(&v, 255, &b) || (i < 3 ? *v++ != '.' : !value_end(*v)))
				tg_fail(TG_EXIT_CMDLINE, "bad testguest.ip (want A.B.C.D)");
			n->ip[i] = (uint8_t)b;
		}
	}
	v = cmd_value(cmd, "testguest.net_seconds=");
	if (v && (!parse_dec(&v, 1000000, seconds) || !value_end(*v)))
		tg_fail(TG_EXIT_CMDLINE, "bad testguest.net_seconds (want 0..1000000)");
}

/* ---- main loop --------------------------------------------------------------------------- */

void tg_net_run(const char *cmd, const struct tg_virtio_dev *devs, unsigned ndev)
{
	static struct net net;
	struct net *n = &net;
	uint64_t seconds;
	parse_options(n, cmd, &seconds);
	vdev_find(&n->vd, "net", VIRTIO_ID_NET, devs, ndev);
	net_init(n);
	tg_printf("net: mac %02x:%02x:%02x:%02x:%02x:%02x ip %u.%u.%u.%u, link %s, serving",
		  n->mac[0], n->mac[1], n->mac[2], n->mac[3], n->mac[4], n->mac[5], n->ip[0],
		  n->ip[1], n->ip[2], n->ip[3], link_up(n) ? "up" : "down");
	if (seconds)
		tg_cprintf(" for %lu s\n", seconds);
	else
		tg_cprintf(" until the host ends the VM\n");

	uint64_t end = tg_ticks() + seconds * TG_TICKS_PER_SECOND;
	struct vq *rx = &vqs[RXQ], *tx = &vqs[TXQ];
	for (;;) {
		bool worked = rx_poll(n);
		worked |= tx_reclaim();
		publish(n, TXQ);
		publish(n, RXQ);
		if (vdev_config_changed(&n->vd))
			tg_printf("net: config change: link %s\n", link_up(n) ? "up" : "down");
		if (worked)
			continue;
		if (seconds && tg_ticks() >= end)
			break;
		/* An interrupt for the next received frame; sent ones are reclaimed here. */
		vq_set_used_event(rx, rx->last_used);
		vq_set_used_event(tx, (uint16_t)(tx->last_used + 0x8000));
		mb();
		if (vq_used_idx(rx) == rx->last_used && vq_used_idx(tx) == tx->last_used)
			tg_wait_interrupt();
	}
	tg_printf("net: %lu frames in, %lu ARP replies, %lu echo replies, %lu ignored\n",
		  n->frames, n->arp_replies, n->echo_replies, n->ignored);
	vdev_write(&n->vd, VM_STATUS, 0);
	tg_printf("PASS\n");
	tg_exit(TG_EXIT_PASS);
}
