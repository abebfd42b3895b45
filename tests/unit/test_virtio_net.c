/* virtio-net against a fake guest: malloc'd RAM, a driver written here that negotiates
 * through the MMIO registers and lays out both rings, and one end of a SOCK_SEQPACKET
 * socketpair standing in for the TAP (one frame per read and write, as a TAP with
 * IFF_VNET_HDR gives), so that no root and no /dev/net/tun are needed. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "devices/virtio_mmio.h"
#include "devices/virtio_net.h"
#include "vmm/guest_mem.h"

#define RAM_SIZE  (8ULL << 20)
#define HEAP_GPA  0x20000ULL
#define HDR       VIRTIO_NET_HDR_LEN
#define RXQ       VIRTIO_NET_RXQ
#define TXQ       VIRTIO_NET_TXQ
#define BUF_LEN   1526     /* what Linux posts for a 1500-byte MTU: header + 1514 */
#define MRG       (1ULL << VIRTIO_NET_F_MRG_RXBUF)
#define BASE_FEATURES ((1ULL << VIRTIO_NET_F_MAC) | (1ULL << VIRTIO_NET_F_STATUS) | \
		       (1ULL << VIRTIO_F_RING_EVENT_IDX))

static const uint8_t test_mac[6] = { 0x06, 0x00, 0xac, 0x10, 0x00, 0x02 };

struct seg {
	uint64_t gpa;
	uint32_t len;
	bool w;
};

/* The driver's view of one queue. */
struct dq {
	uint64_t desc, avail, used;
	uint16_t size, next_desc, avail_idx;
};

static struct {
	uint8_t *ram;
	struct guest_mem mem;
	struct virtio_device *d;
	int peer;           /* the host side of the fake TAP */
	struct dq q[2];
	uint64_t brk;
	uint64_t rxbuf[VIRTIO_NET_QUEUE_SIZE];   /* gpa of the buffer behind each rx head */
} F;

static void *host(uint64_t gpa)
{
	return F.ram + gpa;
}

static uint64_t ram_alloc(uint64_t len)
{
	uint64_t g = F.brk;
	F.brk += (len + 15) & ~15ULL;
	ck_assert_uint_le(F.brk, RAM_SIZE);
	return g;
}

static void w32(uint64_t off, uint32_t v)
{
	virtio_mmio_write(F.d, off, &v, 4);
}

static uint32_t r32(uint64_t off)
{
	uint32_t v;
	virtio_mmio_read(F.d, off, &v, 4);
	return v;
}

static bool needs_reset(void)
{
	return r32(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET;
}

static void setup_queue(unsigned i, uint16_t size)
{
	struct dq *q = &F.q[i];
	*q = (struct dq){ .desc = 0x1000 + i * 0x8000ULL, .avail = 0x5000 + i * 0x8000ULL,
			  .used = 0x6000 + i * 0x8000ULL, .size = size };
	w32(VIRTIO_MMIO_QUEUE_SEL, i);
	ck_assert_uint_eq(r32(VIRTIO_MMIO_QUEUE_NUM_MAX), VIRTIO_NET_QUEUE_SIZE);
	w32(VIRTIO_MMIO_QUEUE_NUM, size);
	w32(VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)q->desc);
	w32(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
	w32(VIRTIO_MMIO_QUEUE_AVAIL_LOW, (uint32_t)q->avail);
	w32(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
	w32(VIRTIO_MMIO_QUEUE_USED_LOW, (uint32_t)q->used);
	w32(VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
	w32(VIRTIO_MMIO_QUEUE_READY, 1);
	ck_assert_uint_eq(r32(VIRTIO_MMIO_QUEUE_READY), 1);
}

/* What a driver does (virtio 1.2 section 3.1.1), with the features of `want` that the
 * device offers. */
static void negotiate(uint64_t want, uint16_t qsize)
{
	memset(F.ram, 0, HEAP_GPA);
	F.brk = HEAP_GPA;
	w32(VIRTIO_MMIO_STATUS, 0);
	w32(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	w32(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	uint64_t offered = virtio_device_features(F.d);
	uint64_t f = (offered & want) | (1ULL << VIRTIO_F_VERSION_1);
	w32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	w32(VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)f);
	w32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	w32(VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(f >> 32));
	uint32_t st = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
	w32(VIRTIO_MMIO_STATUS, st);
	ck_assert_uint_eq(r32(VIRTIO_MMIO_STATUS), st);
	setup_queue(RXQ, qsize);
	setup_queue(TXQ, qsize);
	w32(VIRTIO_MMIO_STATUS, st | VIRTIO_STATUS_DRIVER_OK);
	ck_assert(virtio_device_active(F.d));
}

static struct virtio_device *make_device(const uint8_t mac[6])
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
	struct mitos_err e = { 0 };
	struct virtio_device *d = virtio_net_create_fd(&F.mem, 0xd0000000, 5, sv[0], mac, &e);
	ck_assert_msg(d != NULL, "virtio_net_create_fd: %s", e.msg);
	F.peer = sv[1];
	return d;
}

static void start(uint64_t want, uint16_t qsize)
{
	F.ram = aligned_alloc(4096, RAM_SIZE);
	ck_assert_ptr_nonnull(F.ram);
	memset(F.ram, 0, RAM_SIZE);
	guest_mem_layout(&F.mem, F.ram, RAM_SIZE);
	F.d = make_device(test_mac);
	negotiate(want, qsize);
}

static void setup_mrg(void) { start(BASE_FEATURES | MRG, 256); }
static void setup_plain(void) { start(BASE_FEATURES, 256); }

static void teardown(void)
{
	virtio_net_destroy(F.d);
	close(F.peer);
	free(F.ram);
	F.d = NULL;
}

static void put_desc(struct dq *q, uint16_t idx, uint64_t addr, uint32_t len, uint16_t flags,
		     uint16_t next)
{
	uint8_t *p = host(q->desc + 16ULL * idx);
	memcpy(p, &addr, 8);
	memcpy(p + 8, &len, 4);
	memcpy(p + 12, &flags, 2);
	memcpy(p + 14, &next, 2);
}

/* Lays the segments out as one chain of consecutive descriptors and makes it
 * available (the index goes out with kick()). */
static uint16_t add_chain(unsigned qi, const struct seg *s, unsigned n)
{
	struct dq *q = &F.q[qi];
	uint16_t head = q->next_desc;
	for (unsigned i = 0; i < n; i++) {
		uint16_t idx = (uint16_t)((head + i) % q->size);
		uint16_t flags = (uint16_t)((s[i].w ? VIRTQ_DESC_F_WRITE : 0) |
					    (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
		put_desc(q, idx, s[i].gpa, s[i].len, flags, (uint16_t)((idx + 1) % q->size));
	}
	q->next_desc = (uint16_t)((head + n) % q->size);
	uint16_t *ring = host(q->avail + 4);
	ring[q->avail_idx % q->size] = head;
	q->avail_idx++;
	return head;
}

static void kick(unsigned qi)
{
	__atomic_store_n((uint16_t *)host(F.q[qi].avail + 2), F.q[qi].avail_idx, __ATOMIC_RELEASE);
	virtio_device_kick(F.d, qi);
}

static uint16_t used_idx(unsigned qi)
{
	return __atomic_load_n((uint16_t *)host(F.q[qi].used + 2), __ATOMIC_ACQUIRE);
}

static void used_elem(unsigned qi, uint16_t i, uint32_t *id, uint32_t *len)
{
	uint32_t *e = host(F.q[qi].used + 4 + 8ULL * (i % F.q[qi].size));
	*id = e[0];
	*len = e[1];
}

/* Posts n receive buffers of len bytes, one descriptor each, and kicks. */
static void post_rx(unsigned n, uint32_t len)
{
	for (unsigned i = 0; i < n; i++) {
		uint64_t g = ram_alloc(len);
		memset(host(g), 0xee, len);
		struct seg s = { g, len, true };
		F.rxbuf[add_chain(RXQ, &s, 1)] = g;
	}
	kick(RXQ);
}

static int device_fd(void)
{
	int fd;
	ck_assert_uint_eq(F.d->ops->host_fds(F.d, &fd, 1), 1);
	return fd;
}

/* One turn of the device loop: what libev would do when the device's fd is readable. */
static bool loop_once(int timeout_ms)
{
	struct pollfd p = { .fd = device_fd(), .events = POLLIN };
	if (poll(&p, 1, timeout_ms) != 1)
		return false;
	virtio_device_host_fd_ready(F.d, 0);
	return true;
}

static void wait_used(unsigned qi, uint16_t target)
{
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (used_idx(qi) != target) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		ck_assert_msg(t.tv_sec - t0.tv_sec < 5, "used idx of queue %u stuck at %u, want %u",
			      qi, used_idx(qi), target);
		loop_once(50);
	}
}

static uint8_t pat(unsigned seed, size_t i)
{
	return (uint8_t)(seed + i * 7 + (i >> 8));
}

/* Writes a frame of len payload bytes behind a header into the fake TAP. */
static void send_frame(size_t len, unsigned seed)
{
	static uint8_t buf[HDR + 65536];
	ck_assert_uint_le(len, sizeof(buf) - HDR);
	memset(buf, 0, HDR);
	buf[VIRTIO_NET_HDR_NUM_BUFFERS] = 0xab;   /* the device must overwrite it */
	buf[VIRTIO_NET_HDR_NUM_BUFFERS + 1] = 0xcd;
	for (size_t i = 0; i < len; i++)
		buf[HDR + i] = pat(seed, i);
	ck_assert_int_eq(write(F.peer, buf, HDR + len), (ssize_t)(HDR + len));
}

/* Checks the frame the used entries from `first` on carry; returns how many they were. */
static unsigned check_rx(uint16_t first, size_t len, unsigned seed)
{
	uint32_t id, ulen;
	used_elem(RXQ, first, &id, &ulen);
	uint16_t nbuf;
	memcpy(&nbuf, host(F.rxbuf[id] + VIRTIO_NET_HDR_NUM_BUFFERS), 2);
	size_t off = 0;   /* offset in header + payload */
	for (unsigned k = 0; k < nbuf; k++) {
		used_elem(RXQ, (uint16_t)(first + k), &id, &ulen);
		ck_assert_uint_lt(id, VIRTIO_NET_QUEUE_SIZE);
		const uint8_t *p = host(F.rxbuf[id]);
		for (uint32_t i = 0; i < ulen; i++, off++)
			if (off >= HDR)
				ck_assert_msg(p[i] == pat(seed, off - HDR), "byte %zu of the frame",
					      off - HDR);
	}
	ck_assert_uint_eq(off, HDR + len);
	return nbuf;
}

static struct virtio_net_stats stats(void)
{
	struct virtio_net_stats s;
	virtio_net_get_stats(F.d, &s);
	return s;
}

/* Bytes waiting to be read on the host side of the fake TAP, without taking them. */
static ssize_t peer_pending(void *buf, size_t len)
{
	return recv(F.peer, buf, len, MSG_PEEK | MSG_DONTWAIT);
}

/* ---- config ---------------------------------------------------------------------- */

START_TEST(test_identity_and_config)
{
	ck_assert_uint_eq(r32(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_NET);
	uint64_t f = virtio_device_features(F.d);
	ck_assert(f & (1ULL << VIRTIO_NET_F_MAC));
	ck_assert(f & (1ULL << VIRTIO_NET_F_STATUS));
	ck_assert(f & (1ULL << VIRTIO_NET_F_MRG_RXBUF));
	/* A socket takes no TUNSETOFFLOAD: no offload may be offered. */
	ck_assert(!(f & (1ULL << VIRTIO_NET_F_CSUM)));
	ck_assert(!(f & (1ULL << VIRTIO_NET_F_GUEST_TSO4)));
	ck_assert(!(f & (1ULL << VIRTIO_NET_F_HOST_TSO4)));

	uint8_t mac[6];
	for (unsigned i = 0; i < 6; i++)
		virtio_mmio_read(F.d, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_NET_CFG_MAC + i, &mac[i], 1);
	ck_assert_mem_eq(mac, test_mac, 6);
	uint16_t st = 0;
	virtio_mmio_read(F.d, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_NET_CFG_STATUS, &st, 2);
	ck_assert_uint_eq(st, VIRTIO_NET_S_LINK_UP);
	uint32_t w = r32(VIRTIO_MMIO_CONFIG_OFFSET + 4);   /* mac[4..5] + status */
	ck_assert_uint_eq(w, test_mac[4] | test_mac[5] << 8 | VIRTIO_NET_S_LINK_UP << 16);
	uint16_t pairs = 0;
	virtio_mmio_read(F.d, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_NET_CFG_MAX_VQ_PAIRS, &pairs, 2);
	ck_assert_uint_eq(pairs, 1);
	/* Past the end of the config space: reads as zero. */
	ck_assert_uint_eq(r32(VIRTIO_MMIO_CONFIG_OFFSET + 8), 0);
	/* The guest cannot change the MAC through config space. */
	uint8_t b = 0xff;
	virtio_mmio_write(F.d, VIRTIO_MMIO_CONFIG_OFFSET, &b, 1);
	virtio_mmio_read(F.d, VIRTIO_MMIO_CONFIG_OFFSET, &b, 1);
	ck_assert_uint_eq(b, test_mac[0]);
}
END_TEST

START_TEST(test_create_rejects_multicast_mac)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
	const uint8_t mcast[6] = { 0x01, 0, 0x5e, 0, 0, 1 };
	struct mitos_err e = { 0 };
	ck_assert_ptr_null(virtio_net_create_fd(&F.mem, 0xd0001000, 6, sv[0], mcast, &e));
	ck_assert_int_eq(e.code, -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "multicast"));
	/* The device took sv[0] and closed it: the peer sees the end. */
	char c;
	ck_assert_int_eq(read(sv[1], &c, 1), 0);
	close(sv[1]);
}
END_TEST

/* ---- receive ------------------------------------------------------------------------ */

START_TEST(test_rx_one_frame)
{
	post_rx(4, BUF_LEN);
	send_frame(1000, 1);
	wait_used(RXQ, 1);
	uint32_t id, len;
	used_elem(RXQ, 0, &id, &len);
	ck_assert_uint_eq(len, HDR + 1000);
	ck_assert_uint_eq(check_rx(0, 1000, 1), 1);
	ck_assert_uint_ge(F.d->irq_count, 1);
	ck_assert_uint_eq(stats().rx_frames, 1);
	ck_assert_uint_eq(stats().rx_bytes, 1000);
	/* A full-size frame fills a buffer exactly. */
	send_frame(BUF_LEN - HDR, 2);
	wait_used(RXQ, 2);
	used_elem(RXQ, 1, &id, &len);
	ck_assert_uint_eq(len, BUF_LEN);
	ck_assert_uint_eq(check_rx(1, BUF_LEN - HDR, 2), 1);
}
END_TEST

START_TEST(test_rx_mergeable_jumbo)
{
	post_rx(16, BUF_LEN);
	send_frame(9000, 3);
	/* 9012 bytes over 1526-byte buffers: 5 full and 1382 bytes in a sixth, published at
	 * once. */
	wait_used(RXQ, 6);
	ck_assert_uint_eq(check_rx(0, 9000, 3), 6);
	for (uint16_t k = 0; k < 6; k++) {
		uint32_t id, len;
		used_elem(RXQ, k, &id, &len);
		ck_assert_uint_eq(len, k < 5 ? BUF_LEN : 9012 - 5 * BUF_LEN);
	}
	/* The buffers the device took ahead serve the next frames, in ring order. */
	send_frame(60, 4);
	wait_used(RXQ, 7);
	uint32_t id, len;
	used_elem(RXQ, 6, &id, &len);
	ck_assert_uint_eq(id, 6);
	ck_assert_uint_eq(check_rx(6, 60, 4), 1);
}
END_TEST

START_TEST(test_rx_without_mrg_uses_one_chain)
{
	/* Linux's "big packets" layout: a header descriptor and page-sized pieces. */
	uint64_t h = ram_alloc(HDR), a = ram_alloc(4096), b = ram_alloc(4096);
	struct seg s[3] = { { h, HDR, true }, { a, 4096, true }, { b, 4096, true } };
	add_chain(RXQ, s, 3);
	kick(RXQ);
	send_frame(5000, 7);
	wait_used(RXQ, 1);
	uint32_t id, len;
	used_elem(RXQ, 0, &id, &len);
	ck_assert_uint_eq(id, 0);
	ck_assert_uint_eq(len, HDR + 5000);
	uint16_t nbuf;
	memcpy(&nbuf, host(h + VIRTIO_NET_HDR_NUM_BUFFERS), 2);
	ck_assert_uint_eq(nbuf, 1);
	ck_assert_uint_eq(((uint8_t *)host(a))[0], pat(7, 0));
	ck_assert_uint_eq(((uint8_t *)host(b))[5000 - 4096 - 1], pat(7, 4999));
}
END_TEST

START_TEST(test_rx_waits_for_buffers)
{
	/* Frames come before the guest posted anything: they stay in the TAP (bounded by
	 * its queue; the device holds none) and the device stops watching it rather than
	 * spin on a readable fd. */
	send_frame(200, 8);
	send_frame(300, 9);
	ck_assert(loop_once(50));
	ck_assert(!loop_once(0));
	ck_assert(!loop_once(20));
	ck_assert_uint_eq(used_idx(RXQ), 0);
	/* With EVENT_IDX the device asked to be kicked at the next buffer. */
	uint16_t avail_event;
	memcpy(&avail_event, host(F.q[RXQ].used + 4 + 8ULL * F.q[RXQ].size), 2);
	ck_assert_uint_eq(avail_event, 0);
	post_rx(1, BUF_LEN);
	wait_used(RXQ, 1);
	ck_assert_uint_eq(check_rx(0, 200, 8), 1);
	/* Out of buffers again with a frame pending: a kick wanted at the next buffer. */
	ck_assert(!loop_once(20));
	memcpy(&avail_event, host(F.q[RXQ].used + 4 + 8ULL * F.q[RXQ].size), 2);
	ck_assert_uint_eq(avail_event, 1);
	post_rx(1, BUF_LEN);
	wait_used(RXQ, 2);
	ck_assert_uint_eq(check_rx(1, 300, 9), 1);
	ck_assert_uint_eq(stats().rx_dropped, 0);
}
END_TEST

START_TEST(test_rx_burst_is_batched)
{
	post_rx(128, BUF_LEN);
	unsigned long irqs0 = F.d->irq_count;
	for (unsigned i = 0; i < 100; i++)
		send_frame(64 + i, i);
	wait_used(RXQ, 100);
	for (uint16_t i = 0; i < 100; i++)
		ck_assert_uint_eq(check_rx(i, 64 + i, i), 1);
	/* One interrupt per wake-up, not per frame. */
	ck_assert_uint_le(F.d->irq_count - irqs0, 100 / 64 + 2);
	ck_assert_uint_eq(stats().rx_frames, 100);
}
END_TEST

/* ---- transmit ------------------------------------------------------------------------ */

static uint64_t put_tx_frame(size_t len, unsigned seed)
{
	uint64_t g = ram_alloc(HDR + len);
	uint8_t *p = host(g);
	memset(p, 0, HDR);
	for (size_t i = 0; i < len; i++)
		p[HDR + i] = pat(seed, i);
	return g;
}

static void expect_sent(size_t len, unsigned seed)
{
	static uint8_t buf[HDR + 65536];
	ssize_t n = read(F.peer, buf, sizeof(buf));
	ck_assert_int_eq(n, (ssize_t)(HDR + len));
	for (size_t i = 0; i < len; i++)
		ck_assert_msg(buf[HDR + i] == pat(seed, i), "sent byte %zu", i);
}

START_TEST(test_tx_header_and_data)
{
	/* Header and frame in separate descriptors, as Linux sends them. */
	uint64_t g = put_tx_frame(1400, 10);
	struct seg s[2] = { { g, HDR, false }, { g + HDR, 1400, false } };
	uint16_t head = add_chain(TXQ, s, 2);
	/* The header split over two descriptors, the frame in three. */
	uint64_t g2 = put_tx_frame(300, 11);
	struct seg s2[5] = { { g2, 5, false }, { g2 + 5, 7, false }, { g2 + 12, 100, false },
			     { g2 + 112, 0, false }, { g2 + 112, 200, false } };
	add_chain(TXQ, s2, 5);
	unsigned long irqs0 = F.d->irq_count;
	kick(TXQ);
	ck_assert_uint_eq(used_idx(TXQ), 2);
	uint32_t id, len;
	used_elem(TXQ, 0, &id, &len);
	ck_assert_uint_eq(id, head);
	ck_assert_uint_eq(len, 0);
	ck_assert_uint_gt(F.d->irq_count, irqs0);
	expect_sent(1400, 10);
	expect_sent(300, 11);
	ck_assert_uint_eq(stats().tx_frames, 2);
	ck_assert_uint_eq(stats().tx_bytes, 1700);
}
END_TEST

START_TEST(test_tx_drops_bad_frames)
{
	char buf[64];
	/* Shorter than the header. */
	uint64_t g = put_tx_frame(0, 0);
	struct seg s = { g, 8, false };
	add_chain(TXQ, &s, 1);
	/* A header and nothing else. */
	s.len = HDR;
	add_chain(TXQ, &s, 1);
	/* A checksum offload the guest did not negotiate. */
	uint64_t g2 = put_tx_frame(100, 12);
	((uint8_t *)host(g2))[0] = 1;   /* VIRTIO_NET_HDR_F_NEEDS_CSUM */
	struct seg s2 = { g2, HDR + 100, false };
	add_chain(TXQ, &s2, 1);
	/* TSO it was not offered. */
	uint64_t g3 = put_tx_frame(100, 13);
	((uint8_t *)host(g3))[1] = 1;   /* VIRTIO_NET_HDR_GSO_TCPV4 */
	struct seg s3 = { g3, HDR + 100, false };
	add_chain(TXQ, &s3, 1);
	kick(TXQ);
	ck_assert_uint_eq(used_idx(TXQ), 4);
	ck_assert_int_eq(peer_pending(buf, sizeof(buf)), -1);
	ck_assert_int_eq(errno, EAGAIN);
	ck_assert_uint_eq(stats().tx_dropped, 4);
	ck_assert(!needs_reset());
}
END_TEST

/* ---- malformed rings ----------------------------------------------------------------- */

START_TEST(test_rx_buffer_past_ram)
{
	struct seg s = { RAM_SIZE - 100, BUF_LEN, true };
	add_chain(RXQ, &s, 1);
	kick(RXQ);
	send_frame(100, 0);
	loop_once(50);
	ck_assert(needs_reset());
	ck_assert_uint_eq(used_idx(RXQ), 0);
	/* A failed device leaves the TAP alone until the driver resets it. */
	ck_assert(!loop_once(20));
}
END_TEST

START_TEST(test_rx_readable_buffer)
{
	uint64_t g = ram_alloc(BUF_LEN);
	struct seg s[2] = { { g, HDR, false }, { g + HDR, BUF_LEN - HDR, true } };
	add_chain(RXQ, s, 2);
	kick(RXQ);
	send_frame(100, 0);
	loop_once(50);
	ck_assert(needs_reset());
	ck_assert_uint_eq(used_idx(RXQ), 0);
}
END_TEST

START_TEST(test_rx_buffer_shorter_than_header)
{
	uint64_t g = ram_alloc(BUF_LEN);
	struct seg s = { g, HDR - 1, true };
	add_chain(RXQ, &s, 1);
	kick(RXQ);
	send_frame(100, 0);
	loop_once(50);
	ck_assert(needs_reset());
}
END_TEST

START_TEST(test_rx_chain_loop)
{
	/* Descriptors 0 -> 1 -> 0: longer than the queue. */
	uint64_t g = ram_alloc(BUF_LEN);
	struct dq *q = &F.q[RXQ];
	put_desc(q, 0, g, 64, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	put_desc(q, 1, g + 64, 64, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0);
	((uint16_t *)host(q->avail + 4))[0] = 0;
	q->avail_idx = 1;
	kick(RXQ);
	send_frame(100, 0);
	loop_once(50);
	ck_assert(needs_reset());
}
END_TEST

START_TEST(test_tx_writable_buffer)
{
	uint64_t g = put_tx_frame(100, 0);
	struct seg s[2] = { { g, HDR + 100, false }, { g, 16, true } };
	add_chain(TXQ, s, 2);
	kick(TXQ);
	ck_assert(needs_reset());
	ck_assert_uint_eq(used_idx(TXQ), 0);
	char buf[8];
	ck_assert_int_eq(peer_pending(buf, sizeof(buf)), -1);
}
END_TEST

START_TEST(test_tx_chain_longer_than_queue)
{
	uint64_t g = put_tx_frame(100, 0);
	struct dq *q = &F.q[TXQ];
	put_desc(q, 0, g, HDR, VIRTQ_DESC_F_NEXT, 1);
	put_desc(q, 1, g + HDR, 100, VIRTQ_DESC_F_NEXT, 0);
	((uint16_t *)host(q->avail + 4))[0] = 0;
	q->avail_idx = 1;
	kick(TXQ);
	ck_assert(needs_reset());
	char buf[8];
	ck_assert_int_eq(peer_pending(buf, sizeof(buf)), -1);
}
END_TEST

START_TEST(test_tx_buffer_past_ram)
{
	struct seg s[2] = { { ram_alloc(HDR), HDR, false }, { RAM_SIZE - 10, 100, false } };
	add_chain(TXQ, s, 2);
	kick(TXQ);
	ck_assert(needs_reset());
}
END_TEST

START_TEST(test_reset_recovers)
{
	struct seg s = { RAM_SIZE - 100, BUF_LEN, true };
	add_chain(RXQ, &s, 1);
	kick(RXQ);
	send_frame(100, 20);
	loop_once(50);
	ck_assert(needs_reset());
	/* The frame that met the bad ring is still in the TAP for the next driver. */
	negotiate(BASE_FEATURES | MRG, 64);
	ck_assert(!needs_reset());
	post_rx(4, BUF_LEN);
	wait_used(RXQ, 1);
	ck_assert_uint_eq(check_rx(0, 100, 20), 1);
}
END_TEST

/* ---- link status ---------------------------------------------------------------------- */

static uint16_t cfg_status(void)
{
	uint16_t st = 0xffff;
	virtio_mmio_read(F.d, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_NET_CFG_STATUS, &st, 2);
	return st;
}

START_TEST(test_link_change)
{
	uint32_t gen0 = r32(VIRTIO_MMIO_CONFIG_GENERATION);
	unsigned long irqs0 = F.d->irq_count;
	virtio_net_set_link(F.d, false);
	ck_assert_uint_eq(cfg_status(), 0);
	ck_assert_uint_eq(F.d->irq_count, irqs0 + 1);
	ck_assert(r32(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_INT_CONFIG);
	ck_assert_uint_ne(r32(VIRTIO_MMIO_CONFIG_GENERATION), gen0);
	w32(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_INT_CONFIG);
	/* No change, no interrupt. */
	virtio_net_set_link(F.d, false);
	ck_assert_uint_eq(F.d->irq_count, irqs0 + 1);

	/* Link down: nothing goes out, nothing comes in. */
	uint64_t g = put_tx_frame(100, 30);
	struct seg s = { g, HDR + 100, false };
	add_chain(TXQ, &s, 1);
	kick(TXQ);
	ck_assert_uint_eq(used_idx(TXQ), 1);
	ck_assert_uint_eq(stats().tx_dropped, 1);
	post_rx(2, BUF_LEN);
	send_frame(100, 31);
	ck_assert(!loop_once(20));
	ck_assert_uint_eq(used_idx(RXQ), 0);

	irqs0 = F.d->irq_count;
	virtio_net_set_link(F.d, true);
	ck_assert_uint_eq(cfg_status(), VIRTIO_NET_S_LINK_UP);
	ck_assert_uint_eq(F.d->irq_count, irqs0 + 1);
	ck_assert(r32(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_INT_CONFIG);
	wait_used(RXQ, 1);
	ck_assert_uint_eq(check_rx(0, 100, 31), 1);
}
END_TEST

START_TEST(test_link_change_before_driver)
{
	w32(VIRTIO_MMIO_STATUS, 0);
	unsigned long irqs0 = F.d->irq_count;
	virtio_net_set_link(F.d, false);
	virtio_net_set_link(F.d, true);
	/* Nobody to tell yet. */
	ck_assert_uint_eq(F.d->irq_count, irqs0);
	ck_assert_uint_eq(cfg_status(), VIRTIO_NET_S_LINK_UP);
}
END_TEST

START_TEST(test_peer_gone)
{
	post_rx(2, BUF_LEN);
	unsigned long irqs0 = F.d->irq_count;
	close(F.peer);
	F.peer = -1;
	loop_once(50);
	/* The guest learns of it as its link going down, and the loop stops polling. */
	ck_assert_uint_eq(cfg_status(), 0);
	ck_assert_uint_gt(F.d->irq_count, irqs0);
	ck_assert(!loop_once(20));
	ck_assert(!needs_reset());
}
END_TEST

/* ---- snapshots ------------------------------------------------------------------------- */

START_TEST(test_save_restore)
{
	post_rx(32, BUF_LEN);
	send_frame(500, 40);
	wait_used(RXQ, 1);
	uint64_t g = put_tx_frame(100, 41);
	struct seg s = { g, HDR + 100, false };
	add_chain(TXQ, &s, 1);
	kick(TXQ);
	expect_sent(100, 41);
	virtio_net_set_link(F.d, false);

	/* What the snapshot code does with the vCPUs paused: quiesce, then save. The device
	 * took receive buffers ahead; quiesce hands them back. */
	pthread_mutex_lock(&F.d->lock);
	ck_assert_uint_gt(F.d->vqs[RXQ].last_avail_idx, 1);
	ck_assert_int_eq(F.d->ops->quiesce(F.d), 0);
	ck_assert_uint_eq(F.d->vqs[RXQ].last_avail_idx, 1);
	uint8_t state[64];
	int n = F.d->ops->save_state(F.d, state, sizeof(state));
	ck_assert_int_gt(n, 0);
	ck_assert_int_eq(F.d->ops->save_state(F.d, state, (size_t)n - 1), -ENOSPC);
	pthread_mutex_unlock(&F.d->lock);
	struct virtio_device saved = *F.d;

	/* A fork child: a fresh device of the same configuration (its own TAP, here another
	 * socketpair, and whatever MAC the command line had), the transport state put back,
	 * then the device's. */
	virtio_net_destroy(F.d);
	close(F.peer);
	const uint8_t other_mac[6] = { 0x02, 1, 2, 3, 4, 5 };
	F.d = make_device(other_mac);
	pthread_mutex_lock(&F.d->lock);
	F.d->status = saved.status;
	F.d->driver_features = saved.driver_features;
	F.d->config_generation = saved.config_generation;
	memcpy(F.d->vqs, saved.vqs, sizeof(saved.vqs));
	ck_assert_int_eq(F.d->ops->restore_state(F.d, state, (size_t)n), 0);
	pthread_mutex_unlock(&F.d->lock);

	uint8_t mac[6];
	virtio_mmio_read(F.d, VIRTIO_MMIO_CONFIG_OFFSET, mac, 6);
	ck_assert_mem_eq(mac, test_mac, 6);
	ck_assert_uint_eq(cfg_status(), 0);
	/* The child gets a new link: the guest hears of it, then frames flow into the
	 * next buffer of the ring, where the parent left off. */
	unsigned long irqs0 = F.d->irq_count;
	virtio_net_set_link(F.d, true);
	ck_assert_uint_eq(F.d->irq_count, irqs0 + 1);
	send_frame(700, 42);
	wait_used(RXQ, 2);
	uint32_t id, len;
	used_elem(RXQ, 1, &id, &len);
	ck_assert_uint_eq(id, 1);
	ck_assert_uint_eq(check_rx(1, 700, 42), 1);
	uint64_t g2 = put_tx_frame(80, 43);
	struct seg s2 = { g2, HDR + 80, false };
	add_chain(TXQ, &s2, 1);
	kick(TXQ);
	ck_assert_uint_eq(used_idx(TXQ), 2);
	expect_sent(80, 43);
}
END_TEST

START_TEST(test_restore_rejects_bad_state)
{
	uint8_t state[64];
	pthread_mutex_lock(&F.d->lock);
	int n = F.d->ops->save_state(F.d, state, sizeof(state));
	ck_assert_int_gt(n, 0);
	const struct virtio_device_ops *ops = F.d->ops;
	ck_assert_int_eq(ops->restore_state(F.d, state, (size_t)n - 1), -EINVAL);
	ck_assert_int_eq(ops->restore_state(F.d, state, (size_t)n + 1), -EINVAL);
	uint8_t bad[64];
	for (int i = 0; i < n; i++) {
		/* Every byte of the header and the MAC's multicast bit are checked. */
		if (i > 8)
			continue;
		memcpy(bad, state, (size_t)n);
		bad[i] ^= i == 8 ? 1 : 0x40;
		ck_assert_msg(ops->restore_state(F.d, bad, (size_t)n) == -EINVAL, "byte %d", i);
	}
	ck_assert_int_eq(ops->restore_state(F.d, state, (size_t)n), 0);
	pthread_mutex_unlock(&F.d->lock);
}
END_TEST

START_TEST(test_push_n_publishes_once)
{
	/* virtq_push_n: all elements, then one index move; more than the queue refused. */
	struct virtq *q = &F.d->vqs[RXQ];
	struct virtq_used_elem e[3] = { { 5, 10 }, { 6, 20 }, { 7, 30 } };
	uint16_t before = q->used_idx;
	ck_assert_int_eq(virtq_push_n(q, &F.mem, e, 3), 0);
	ck_assert_uint_eq(used_idx(RXQ), (uint16_t)(before + 3));
	uint32_t id, len;
	used_elem(RXQ, (uint16_t)(before + 2), &id, &len);
	ck_assert_uint_eq(id, 7);
	ck_assert_uint_eq(len, 30);
	static struct virtq_used_elem many[VIRTIO_NET_QUEUE_SIZE + 1];
	ck_assert_int_eq(virtq_push_n(q, &F.mem, many, q->size + 1u), -EINVAL);
	ck_assert_uint_eq(used_idx(RXQ), (uint16_t)(before + 3));
}
END_TEST

/* ---- a real TAP, with offloads (root only) ------------------------------------------- */

/* The host's TCP stack talks to the fake guest through a TAP in a network namespace of
 * this test's own (Check runs each test in a child process): a large send must reach the
 * guest as one TSO frame in mergeable buffers, and a TSO frame from the guest must reach
 * the host's socket whole. */
#define TAP_NAME   "mitosut0"
#define HOST_ADDR  0x0a090001u  /* 10.9.0.1 */
#define GUEST_ADDR 0x0a090002u  /* 10.9.0.2 */
#define GUEST_PORT 7
#define GUEST_ISN  1000u
#define MSS        1448
#define OFFLOADS   ((1ULL << VIRTIO_NET_F_CSUM) | (1ULL << VIRTIO_NET_F_GUEST_CSUM) | \
		    (1ULL << VIRTIO_NET_F_GUEST_TSO4) | (1ULL << VIRTIO_NET_F_HOST_TSO4))

/* struct virtio_net_hdr_v1 */
struct vnet_hdr {
	uint8_t flags, gso_type;
	uint16_t hdr_len, gso_size, csum_start, csum_offset, num_buffers;
};

struct frame {
	struct vnet_hdr h;
	size_t len;
	uint8_t b[70000];
};

static bool tap_start(void)
{
	if (geteuid() != 0 || access("/dev/net/tun", R_OK | W_OK) || unshare(CLONE_NEWNET)) {
		fprintf(stderr, "skipped: a real TAP needs root, /dev/net/tun and a network "
			"namespace of its own\n");
		return false;
	}
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI };
	strcpy(ifr.ifr_name, TAP_NAME);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ioctl(fd, TUNSETIFF, &ifr), 0);
	ck_assert_int_eq(ioctl(fd, TUNSETPERSIST, 1), 0);
	close(fd);
	F.ram = aligned_alloc(4096, RAM_SIZE);
	ck_assert_ptr_nonnull(F.ram);
	memset(F.ram, 0, RAM_SIZE);
	guest_mem_layout(&F.mem, F.ram, RAM_SIZE);
	struct virtio_net_opts o = { .tap = TAP_NAME, .mac = { 0x06, 0, 0xac, 0x10, 0, 0x02 } };
	struct mitos_err e = { 0 };
	F.d = virtio_net_create(&F.mem, 0xd0000000, 5, &o, &e);
	ck_assert_msg(F.d != NULL, "virtio_net_create: %s", e.msg);
	F.peer = -1;
	ck_assert((virtio_device_features(F.d) & OFFLOADS) == OFFLOADS);
	if (system("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && "
		   "ip addr add 10.9.0.1/24 dev " TAP_NAME " && ip link set " TAP_NAME " up && "
		   "ip neigh add 10.9.0.2 lladdr 06:00:ac:10:00:02 dev " TAP_NAME " nud permanent")) {
		fprintf(stderr, "skipped: cannot configure %s with ip and sysctl\n", TAP_NAME);
		return false;
	}
	negotiate(BASE_FEATURES | MRG | OFFLOADS, 256);
	post_rx(256, BUF_LEN);
	return true;
}

static void tap_stop(void)
{
	if (F.d)
		teardown();
}

static uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t len)
{
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (uint32_t)p[len - 1] << 8;
	return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)(v >> 16));
	put16(p + 2, (uint16_t)v);
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)get16(p) << 16 | get16(p + 2);
}

/* The next IPv4 TCP frame the device hands the guest (others are skipped), within 3 s. */
static bool next_tcp_frame(struct frame *f)
{
	static uint16_t seen;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		while (seen != used_idx(RXQ)) {
			uint32_t id, len;
			used_elem(RXQ, seen, &id, &len);
			memcpy(&f->h, host(F.rxbuf[id]), HDR);
			f->len = 0;
			for (unsigned k = 0; k < f->h.num_buffers; k++) {
				used_elem(RXQ, seen++, &id, &len);
				size_t skip = k ? 0 : HDR;
				memcpy(f->b + f->len, (uint8_t *)host(F.rxbuf[id]) + skip, len - skip);
				f->len += len - skip;
			}
			if (f->len >= 54 && get16(f->b + 12) == 0x0800 && f->b[23] == 6)
				return true;
		}
		clock_gettime(CLOCK_MONOTONIC, &t);
		if (t.tv_sec - t0.tv_sec >= 3)
			return false;
		loop_once(50);
	}
}

/* Ethernet, IPv4 and TCP headers from the guest to the host; returns their length. */
static size_t tcp_headers(uint8_t *f, const uint8_t *host_mac, uint16_t host_port, uint32_t seq,
			  uint32_t ack, uint8_t flags, size_t payload, bool mss_option)
{
	size_t tcp_len = mss_option ? 24 : 20;
	memcpy(f, host_mac, 6);
	memcpy(f + 6, test_mac, 6);
	put16(f + 12, 0x0800);
	uint8_t *ip = f + 14, *tcp = ip + 20;
	memset(ip, 0, 20 + tcp_len);
	ip[0] = 0x45;
	put16(ip + 2, (uint16_t)(20 + tcp_len + payload));
	put16(ip + 6, 0x4000);
	ip[8] = 64;
	ip[9] = 6;
	put32(ip + 12, GUEST_ADDR);
	put32(ip + 16, HOST_ADDR);
	put16(ip + 10, csum_fold(csum_add(0, ip, 20)));
	put16(tcp, GUEST_PORT);
	put16(tcp + 2, host_port);
	put32(tcp + 4, seq);
	put32(tcp + 8, ack);
	tcp[12] = (uint8_t)(tcp_len / 4) << 4;
	tcp[13] = flags;
	put16(tcp + 14, 65535);
	if (mss_option) {
		tcp[20] = 2;
		tcp[21] = 4;
		put16(tcp + 22, MSS + 12);
	}
	return 14 + 20 + tcp_len;
}

START_TEST(test_tap_tso_both_ways)
{
	if (!tap_start())
		return;
	static struct frame f;
	int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(GUEST_PORT),
				 .sin_addr.s_addr = htonl(GUEST_ADDR) };
	ck_assert_int_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), -1);
	ck_assert_int_eq(errno, EINPROGRESS);
	ck_assert_msg(next_tcp_frame(&f), "no SYN came through the TAP");
	const uint8_t *tcp = f.b + 34;
	ck_assert_uint_eq(tcp[13], 0x02);
	uint8_t host_mac[6];
	memcpy(host_mac, f.b + 6, 6);
	uint16_t host_port = get16(tcp);
	uint32_t host_seq = get32(tcp + 4) + 1;

	/* SYN-ACK with a whole checksum, computed here. */
	uint64_t g = ram_alloc(HDR + 70000);
	uint8_t *p = host(g);
	memset(p, 0, HDR);
	size_t n = tcp_headers(p + HDR, host_mac, host_port, GUEST_ISN, host_seq, 0x12, 0, true);
	uint8_t pseudo[12];
	put32(pseudo, GUEST_ADDR);
	put32(pseudo + 4, HOST_ADDR);
	put16(pseudo + 8, 6);
	put16(pseudo + 10, 24);
	put16(p + HDR + 34 + 16, csum_fold(csum_add(csum_add(0, pseudo, 12), p + HDR + 34, 24)));
	struct seg syn_ack = { g, (uint32_t)(HDR + n), false };
	add_chain(TXQ, &syn_ack, 1);
	kick(TXQ);
	struct pollfd pf = { .fd = s, .events = POLLOUT };
	ck_assert_int_eq(poll(&pf, 1, 3000), 1);
	int err = -1;
	socklen_t elen = sizeof(err);
	ck_assert_int_eq(getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &elen), 0);
	ck_assert_int_eq(err, 0);

	/* Host to guest: the stack's first flight leaves as TSO frames, each one read. */
	static uint8_t data[60000];
	ck_assert_int_gt(send(s, data, sizeof(data), 0), 10 * MSS);
	bool tso = false;
	while (!tso && next_tcp_frame(&f))
		tso = f.h.gso_type == 1 && f.len > 2 * MSS && f.h.num_buffers > 1;
	ck_assert_msg(tso, "no TCPv4 TSO frame reached the guest (last: gso_type %u, %zu bytes, "
		      "%u buffers)", f.h.gso_type, f.len, f.h.num_buffers);
	ck_assert_uint_lt(stats().rx_frames, stats().rx_bytes / MSS);

	/* Guest to host: one 20000-byte segment with TSO and checksum offload. */
	enum { SEG = 20000 };
	uint64_t g2 = ram_alloc(HDR + 54 + SEG);
	p = host(g2);
	n = tcp_headers(p + HDR, host_mac, host_port, GUEST_ISN + 1, host_seq, 0x18, SEG, false);
	for (size_t i = 0; i < SEG; i++)
		p[HDR + n + i] = pat(50, i);
	/* NEEDS_CSUM from the TCP header on, GSO_TCPV4 in MSS-sized segments. */
	struct vnet_hdr h = { 1, 1, (uint16_t)n, MSS, 34, 16, 0 };
	memcpy(p, &h, HDR);
	struct seg seg[2] = { { g2, (uint32_t)(HDR + n), false }, { g2 + HDR + n, SEG, false } };
	add_chain(TXQ, seg, 2);
	kick(TXQ);
	static uint8_t got[SEG];
	size_t have = 0;
	while (have < SEG) {
		pf = (struct pollfd){ .fd = s, .events = POLLIN };
		ck_assert_msg(poll(&pf, 1, 3000) == 1, "the host got %zu of %d bytes", have, SEG);
		ssize_t r = recv(s, got + have, SEG - have, 0);
		ck_assert_int_gt(r, 0);
		have += (size_t)r;
	}
	for (size_t i = 0; i < SEG; i++)
		ck_assert_msg(got[i] == pat(50, i), "host byte %zu", i);
	ck_assert_uint_eq(stats().tx_frames, 2);
	ck_assert_uint_eq(stats().tx_dropped, 0);
	close(s);
}
END_TEST

static Suite *virtio_net_suite(void)
{
	Suite *s = suite_create("virtio_net");
	TCase *m = tcase_create("mergeable");
	tcase_add_checked_fixture(m, setup_mrg, teardown);
	tcase_set_timeout(m, 30);
	tcase_add_test(m, test_identity_and_config);
	tcase_add_test(m, test_create_rejects_multicast_mac);
	tcase_add_test(m, test_rx_one_frame);
	tcase_add_test(m, test_rx_mergeable_jumbo);
	tcase_add_test(m, test_rx_waits_for_buffers);
	tcase_add_test(m, test_rx_burst_is_batched);
	tcase_add_test(m, test_tx_header_and_data);
	tcase_add_test(m, test_tx_drops_bad_frames);
	tcase_add_test(m, test_rx_buffer_past_ram);
	tcase_add_test(m, test_rx_readable_buffer);
	tcase_add_test(m, test_rx_buffer_shorter_than_header);
	tcase_add_test(m, test_rx_chain_loop);
	tcase_add_test(m, test_tx_writable_buffer);
	tcase_add_test(m, test_tx_chain_longer_than_queue);
	tcase_add_test(m, test_tx_buffer_past_ram);
	tcase_add_test(m, test_reset_recovers);
	tcase_add_test(m, test_link_change);
	tcase_add_test(m, test_link_change_before_driver);
	tcase_add_test(m, test_peer_gone);
	tcase_add_test(m, test_save_restore);
	tcase_add_test(m, test_restore_rejects_bad_state);
	tcase_add_test(m, test_push_n_publishes_once);
	suite_add_tcase(s, m);

	TCase *p = tcase_create("plain");
	tcase_add_checked_fixture(p, setup_plain, teardown);
	tcase_set_timeout(p, 30);
	tcase_add_test(p, test_rx_one_frame);
	tcase_add_test(p, test_rx_without_mrg_uses_one_chain);
	tcase_add_test(p, test_rx_waits_for_buffers);
	suite_add_tcase(s, p);

	TCase *t = tcase_create("tap");
	tcase_add_checked_fixture(t, NULL, tap_stop);
	tcase_set_timeout(t, 30);
	tcase_add_test(t, test_tap_tso_both_ways);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(virtio_net_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
