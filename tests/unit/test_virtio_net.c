/* virtio-net against the fake guest of fake_driver.h, with one end of a SOCK_SEQPACKET
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
#include <sys/eventfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "devices/virtio_net.h"
#include "fake_driver.h"

#define RAM_SIZE  (8ULL << 20)
#define HDR       VIRTIO_NET_HDR_LEN
#define RXQ       VIRTIO_NET_RXQ
#define TXQ       VIRTIO_NET_TXQ
#define BUF_LEN   1526     /* what Linux posts for a 1500-byte MTU: header + 1514 */
#define MRG       (1ULL << VIRTIO_NET_F_MRG_RXBUF)
#define BASE_FEATURES ((1ULL << VIRTIO_NET_F_MAC) | (1ULL << VIRTIO_NET_F_STATUS) | \
		       (1ULL << VIRTIO_F_RING_EVENT_IDX))

static const uint8_t test_mac[6] = { 0x06, 0x00, 0xac, 0x10, 0x00, 0x02 };

static struct fake_guest G;
static struct fake_queue *const rxq = &G.q[RXQ], *const txq = &G.q[TXQ];
static int peer;   /* the host side of the fake TAP */

static void negotiate(uint64_t want, uint16_t qsize)
{
	fake_negotiate(&G, want, 2, qsize, VIRTIO_NET_QUEUE_SIZE);
}

static struct virtio_device *make_device(const uint8_t mac[6])
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
	struct mitos_err e = { 0 };
	struct virtio_device *d = virtio_net_create_fd(&G.mem, 0xd0000000, 5, sv[0], mac, &e);
	ck_assert_msg(d != NULL, "virtio_net_create_fd: %s", e.msg);
	peer = sv[1];
	return d;
}

static void start(uint64_t want, uint16_t qsize)
{
	fake_guest_init(&G, RAM_SIZE);
	G.dev = make_device(test_mac);
	negotiate(want, qsize);
}

static void setup_mrg(void) { start(BASE_FEATURES | MRG, 256); }
static void setup_plain(void) { start(BASE_FEATURES, 256); }

static void teardown(void)
{
	virtio_net_destroy(G.dev);
	close(peer);
	fake_guest_free(&G);
	G.dev = NULL;
}

/* Posts n receive buffers of len bytes, one descriptor each, and kicks. */
static void post_rx(unsigned n, uint32_t len)
{
	for (unsigned i = 0; i < n; i++) {
		uint64_t g = fake_alloc(&G, len);
		memset(fake_host(&G, g), 0xee, len);
		fake_add(rxq, { g, len, true });
	}
	fake_kick(rxq);
}

/* The buffer behind receive head id, as post_rx() posted it. */
static uint8_t *rx_buf(uint32_t id)
{
	return fake_host(&G, rxq->buf[id].gpa);
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
	ck_assert_int_eq(write(peer, buf, HDR + len), (ssize_t)(HDR + len));
}

/* Checks the frame the used entries from `first` on carry; returns how many they were. */
static unsigned check_rx(uint16_t first, size_t len, unsigned seed)
{
	uint32_t id, ulen;
	fake_used_elem(rxq, first, &id, &ulen);
	uint16_t nbuf;
	memcpy(&nbuf, rx_buf(id) + VIRTIO_NET_HDR_NUM_BUFFERS, 2);
	size_t off = 0;   /* offset in header + payload */
	for (unsigned k = 0; k < nbuf; k++) {
		fake_used_elem(rxq, (uint16_t)(first + k), &id, &ulen);
		ck_assert_uint_lt(id, VIRTIO_NET_QUEUE_SIZE);
		const uint8_t *p = rx_buf(id);
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
	virtio_net_get_stats(G.dev, &s);
	return s;
}

/* Bytes waiting to be read on the host side of the fake TAP, without taking them. */
static ssize_t peer_pending(void *buf, size_t len)
{
	return recv(peer, buf, len, MSG_PEEK | MSG_DONTWAIT);
}

/* ---- config ---------------------------------------------------------------------- */

START_TEST(test_identity_and_config)
{
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_NET);
	uint64_t f = virtio_device_features(G.dev);
	ck_assert(f & (1ULL << VIRTIO_NET_F_MAC));
	ck_assert(f & (1ULL << VIRTIO_NET_F_STATUS));
	ck_assert(f & (1ULL << VIRTIO_NET_F_MRG_RXBUF));
	/* A socket takes no TUNSETOFFLOAD: no offload may be offered. */
	ck_assert(!(f & (1ULL << VIRTIO_NET_F_CSUM)));
	ck_assert(!(f & (1ULL << VIRTIO_NET_F_GUEST_TSO4)));
	ck_assert(!(f & (1ULL << VIRTIO_NET_F_HOST_TSO4)));

	uint8_t mac[6];
	for (unsigned i = 0; i < 6; i++)
		virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_NET_CFG_MAC + i, &mac[i], 1);
	ck_assert_mem_eq(mac, test_mac, 6);
	uint16_t st = 0;
	virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_NET_CFG_STATUS, &st, 2);
	ck_assert_uint_eq(st, VIRTIO_NET_S_LINK_UP);
	uint32_t w = fake_r32(&G, VIRTIO_MMIO_CONFIG_OFFSET + 4);   /* mac[4..5] + status */
	ck_assert_uint_eq(w, test_mac[4] | test_mac[5] << 8 | VIRTIO_NET_S_LINK_UP << 16);
	uint16_t pairs = 0;
	virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_NET_CFG_MAX_VQ_PAIRS, &pairs, 2);
	ck_assert_uint_eq(pairs, 1);
	/* Past the end of the config space: reads as zero. */
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_CONFIG_OFFSET + 8), 0);
	/* The guest cannot change the MAC through config space. */
	uint8_t b = 0xff;
	virtio_mmio_write(G.dev, VIRTIO_MMIO_CONFIG_OFFSET, &b, 1);
	virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET, &b, 1);
	ck_assert_uint_eq(b, test_mac[0]);
}
END_TEST

START_TEST(test_create_rejects_multicast_mac)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
	const uint8_t mcast[6] = { 0x01, 0, 0x5e, 0, 0, 1 };
	struct mitos_err e = { 0 };
	ck_assert_ptr_null(virtio_net_create_fd(&G.mem, 0xd0001000, 6, sv[0], mcast, &e));
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
	fake_wait_used(rxq, 1);
	uint32_t id, len;
	fake_used_elem(rxq, 0, &id, &len);
	ck_assert_uint_eq(len, HDR + 1000);
	ck_assert_uint_eq(check_rx(0, 1000, 1), 1);
	ck_assert_uint_ge(G.dev->irq_count, 1);
	ck_assert_uint_eq(stats().rx_frames, 1);
	ck_assert_uint_eq(stats().rx_bytes, 1000);
	/* A full-size frame fills a buffer exactly. */
	send_frame(BUF_LEN - HDR, 2);
	fake_wait_used(rxq, 2);
	fake_used_elem(rxq, 1, &id, &len);
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
	fake_wait_used(rxq, 6);
	ck_assert_uint_eq(check_rx(0, 9000, 3), 6);
	for (uint16_t k = 0; k < 6; k++) {
		uint32_t id, len;
		fake_used_elem(rxq, k, &id, &len);
		ck_assert_uint_eq(len, k < 5 ? BUF_LEN : 9012 - 5 * BUF_LEN);
	}
	/* The buffers the device took ahead serve the next frames, in ring order. */
	send_frame(60, 4);
	fake_wait_used(rxq, 7);
	uint32_t id, len;
	fake_used_elem(rxq, 6, &id, &len);
	ck_assert_uint_eq(id, 6);
	ck_assert_uint_eq(check_rx(6, 60, 4), 1);
}
END_TEST

START_TEST(test_rx_without_mrg_uses_one_chain)
{
	/* Linux's "big packets" layout: a header descriptor and page-sized pieces. */
	uint64_t h = fake_alloc(&G, HDR), a = fake_alloc(&G, 4096), b = fake_alloc(&G, 4096);
	fake_add(rxq, { h, HDR, true }, { a, 4096, true }, { b, 4096, true });
	fake_kick(rxq);
	send_frame(5000, 7);
	fake_wait_used(rxq, 1);
	uint32_t id, len;
	fake_used_elem(rxq, 0, &id, &len);
	ck_assert_uint_eq(id, 0);
	ck_assert_uint_eq(len, HDR + 5000);
	uint16_t nbuf;
	memcpy(&nbuf, fake_host(&G, h + VIRTIO_NET_HDR_NUM_BUFFERS), 2);
	ck_assert_uint_eq(nbuf, 1);
	ck_assert_uint_eq(fake_host(&G, a)[0], pat(7, 0));
	ck_assert_uint_eq(fake_host(&G, b)[5000 - 4096 - 1], pat(7, 4999));
}
END_TEST

START_TEST(test_rx_waits_for_buffers)
{
	/* Frames come before the guest posted anything: they stay in the TAP (bounded by
	 * its queue; the device holds none) and the device stops watching it rather than
	 * spin on a readable fd. */
	send_frame(200, 8);
	send_frame(300, 9);
	ck_assert(fake_device_poll(&G, 50));
	ck_assert(!fake_device_poll(&G, 0));
	ck_assert(!fake_device_poll(&G, 20));
	ck_assert_uint_eq(fake_used_idx(rxq), 0);
	/* With EVENT_IDX the device asked to be kicked at the next buffer. */
	ck_assert_uint_eq(*fake_avail_event(rxq), 0);
	post_rx(1, BUF_LEN);
	fake_wait_used(rxq, 1);
	ck_assert_uint_eq(check_rx(0, 200, 8), 1);
	/* Out of buffers again with a frame pending: a kick wanted at the next buffer. */
	ck_assert(!fake_device_poll(&G, 20));
	ck_assert_uint_eq(*fake_avail_event(rxq), 1);
	post_rx(1, BUF_LEN);
	fake_wait_used(rxq, 2);
	ck_assert_uint_eq(check_rx(1, 300, 9), 1);
	ck_assert_uint_eq(stats().rx_dropped, 0);
}
END_TEST

START_TEST(test_rx_burst_is_batched)
{
	post_rx(128, BUF_LEN);
	unsigned long irqs0 = G.dev->irq_count;
	for (unsigned i = 0; i < 100; i++)
		send_frame(64 + i, i);
	fake_wait_used(rxq, 100);
	for (uint16_t i = 0; i < 100; i++)
		ck_assert_uint_eq(check_rx(i, 64 + i, i), 1);
	/* One interrupt per wake-up, not per frame. */
	ck_assert_uint_le(G.dev->irq_count - irqs0, 100 / 64 + 2);
	ck_assert_uint_eq(stats().rx_frames, 100);
}
END_TEST

/* ---- transmit ------------------------------------------------------------------------ */

static uint64_t put_tx_frame(size_t len, unsigned seed)
{
	uint64_t g = fake_alloc(&G, HDR + len);
	uint8_t *p = fake_host(&G, g);
	memset(p, 0, HDR);
	for (size_t i = 0; i < len; i++)
		p[HDR + i] = pat(seed, i);
	return g;
}

/* One frame in one descriptor, header included, kicked. */
static void tx_frame(size_t len, unsigned seed)
{
	fake_add(txq, { put_tx_frame(len, seed), (uint32_t)(HDR + len), false });
	fake_kick(txq);
}

static void expect_sent(size_t len, unsigned seed)
{
	static uint8_t buf[HDR + 65536];
	ssize_t n = read(peer, buf, sizeof(buf));
	ck_assert_int_eq(n, (ssize_t)(HDR + len));
	for (size_t i = 0; i < len; i++)
		ck_assert_msg(buf[HDR + i] == pat(seed, i), "sent byte %zu", i);
}

START_TEST(test_tx_header_and_data)
{
	/* Header and frame in separate descriptors, as Linux sends them. */
	uint64_t g = put_tx_frame(1400, 10);
	uint16_t head = fake_add(txq, { g, HDR, false }, { g + HDR, 1400, false });
	/* The header split over two descriptors, the frame in three. */
	uint64_t g2 = put_tx_frame(300, 11);
	fake_add(txq, { g2, 5, false }, { g2 + 5, 7, false }, { g2 + 12, 100, false },
		 { g2 + 112, 0, false }, { g2 + 112, 200, false });
	unsigned long irqs0 = G.dev->irq_count;
	fake_kick(txq);
	ck_assert_uint_eq(fake_used_idx(txq), 2);
	uint32_t id, len;
	fake_used_elem(txq, 0, &id, &len);
	ck_assert_uint_eq(id, head);
	ck_assert_uint_eq(len, 0);
	ck_assert_uint_gt(G.dev->irq_count, irqs0);
	expect_sent(1400, 10);
	expect_sent(300, 11);
	ck_assert_uint_eq(stats().tx_frames, 2);
	ck_assert_uint_eq(stats().tx_bytes, 1700);
}
END_TEST

/* A kick takes at most VIRTIO_CHAIN_BUDGET chains, then asks the device loop for another
 * (its ioeventfd written): a guest that refills the ring as fast as it is emptied holds
 * the loop (control socket, signals, other devices) no longer than that. */
START_TEST(test_tx_budget_yields)
{
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	G.dev->notify_fd[TXQ] = efd;
	int sndbuf = 1 << 20;
	setsockopt(peer, SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof(sndbuf));
	for (unsigned i = 0; i < VIRTIO_CHAIN_BUDGET; i++)
		fake_add(txq, { put_tx_frame(64, i), HDR + 64, false });
	fake_kick(txq);
	ck_assert_uint_eq(fake_used_idx(txq), VIRTIO_CHAIN_BUDGET);
	eventfd_t v = 0;
	ck_assert_int_eq(eventfd_read(efd, &v), 0);
	ck_assert_uint_eq(v, 1);
	G.dev->notify_fd[TXQ] = -1;
	close(efd);
}
END_TEST

START_TEST(test_tx_drops_bad_frames)
{
	char buf[64];
	/* Shorter than the header. */
	uint64_t g = put_tx_frame(0, 0);
	fake_add(txq, { g, 8, false });
	/* A header and nothing else. */
	fake_add(txq, { g, HDR, false });
	/* A checksum offload the guest did not negotiate. */
	uint64_t g2 = put_tx_frame(100, 12);
	fake_host(&G, g2)[0] = 1;   /* VIRTIO_NET_HDR_F_NEEDS_CSUM */
	fake_add(txq, { g2, HDR + 100, false });
	/* TSO it was not offered. */
	uint64_t g3 = put_tx_frame(100, 13);
	fake_host(&G, g3)[1] = 1;   /* VIRTIO_NET_HDR_GSO_TCPV4 */
	fake_add(txq, { g3, HDR + 100, false });
	fake_kick(txq);
	ck_assert_uint_eq(fake_used_idx(txq), 4);
	ck_assert_int_eq(peer_pending(buf, sizeof(buf)), -1);
	ck_assert_int_eq(errno, EAGAIN);
	ck_assert_uint_eq(stats().tx_dropped, 4);
	ck_assert(!fake_needs_reset(&G));
}
END_TEST

/* ---- malformed rings ----------------------------------------------------------------- */

/* A frame meets the receive chains offered so far, which are malformed: the device must
 * fail rather than use them. */
static void expect_rx_fails(unsigned seed)
{
	fake_kick(rxq);
	send_frame(100, seed);
	fake_device_poll(&G, 50);
	ck_assert(fake_needs_reset(&G));
	ck_assert_uint_eq(fake_used_idx(rxq), 0);
}

/* The same for transmit chains, which the device takes at the kick: nothing may leave. */
static void expect_tx_fails(void)
{
	fake_kick(txq);
	ck_assert(fake_needs_reset(&G));
	ck_assert_uint_eq(fake_used_idx(txq), 0);
	char buf[8];
	ck_assert_int_eq(peer_pending(buf, sizeof(buf)), -1);
}

START_TEST(test_rx_buffer_past_ram)
{
	fake_add(rxq, { RAM_SIZE - 100, BUF_LEN, true });
	expect_rx_fails(0);
	/* A failed device leaves the TAP alone until the driver resets it. */
	ck_assert(!fake_device_poll(&G, 20));
}
END_TEST

START_TEST(test_rx_readable_buffer)
{
	uint64_t g = fake_alloc(&G, BUF_LEN);
	fake_add(rxq, { g, HDR, false }, { g + HDR, BUF_LEN - HDR, true });
	expect_rx_fails(0);
}
END_TEST

START_TEST(test_rx_buffer_shorter_than_header)
{
	fake_add(rxq, { fake_alloc(&G, BUF_LEN), HDR - 1, true });
	expect_rx_fails(0);
}
END_TEST

START_TEST(test_rx_chain_loop)
{
	/* Descriptors 0 -> 1 -> 0: longer than the queue. */
	uint64_t g = fake_alloc(&G, BUF_LEN);
	fake_desc_put(rxq, 0, g, 64, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	fake_desc_put(rxq, 1, g + 64, 64, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0);
	fake_avail_put(rxq, 0);
	expect_rx_fails(0);
}
END_TEST

START_TEST(test_tx_writable_buffer)
{
	uint64_t g = put_tx_frame(100, 0);
	fake_add(txq, { g, HDR + 100, false }, { g, 16, true });
	expect_tx_fails();
}
END_TEST

START_TEST(test_tx_chain_longer_than_queue)
{
	uint64_t g = put_tx_frame(100, 0);
	fake_desc_put(txq, 0, g, HDR, VIRTQ_DESC_F_NEXT, 1);
	fake_desc_put(txq, 1, g + HDR, 100, VIRTQ_DESC_F_NEXT, 0);
	fake_avail_put(txq, 0);
	expect_tx_fails();
}
END_TEST

START_TEST(test_tx_buffer_past_ram)
{
	fake_add(txq, { fake_alloc(&G, HDR), HDR, false }, { RAM_SIZE - 10, 100, false });
	expect_tx_fails();
}
END_TEST

START_TEST(test_reset_recovers)
{
	fake_add(rxq, { RAM_SIZE - 100, BUF_LEN, true });
	expect_rx_fails(20);
	/* The frame that met the bad ring is still in the TAP for the next driver. */
	negotiate(BASE_FEATURES | MRG, 64);
	ck_assert(!fake_needs_reset(&G));
	post_rx(4, BUF_LEN);
	fake_wait_used(rxq, 1);
	ck_assert_uint_eq(check_rx(0, 100, 20), 1);
}
END_TEST

/* ---- link status ---------------------------------------------------------------------- */

static uint16_t cfg_status(void)
{
	uint16_t st = 0xffff;
	virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_NET_CFG_STATUS, &st, 2);
	return st;
}

START_TEST(test_link_change)
{
	uint32_t gen0 = fake_r32(&G, VIRTIO_MMIO_CONFIG_GENERATION);
	unsigned long irqs0 = G.dev->irq_count;
	virtio_net_set_link(G.dev, false);
	ck_assert_uint_eq(cfg_status(), 0);
	ck_assert_uint_eq(G.dev->irq_count, irqs0 + 1);
	ck_assert(fake_r32(&G, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_INT_CONFIG);
	ck_assert_uint_ne(fake_r32(&G, VIRTIO_MMIO_CONFIG_GENERATION), gen0);
	fake_w32(&G, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_INT_CONFIG);
	/* No change, no interrupt. */
	virtio_net_set_link(G.dev, false);
	ck_assert_uint_eq(G.dev->irq_count, irqs0 + 1);

	/* Link down: nothing goes out, nothing comes in. */
	tx_frame(100, 30);
	ck_assert_uint_eq(fake_used_idx(txq), 1);
	ck_assert_uint_eq(stats().tx_dropped, 1);
	post_rx(2, BUF_LEN);
	send_frame(100, 31);
	ck_assert(!fake_device_poll(&G, 20));
	ck_assert_uint_eq(fake_used_idx(rxq), 0);

	irqs0 = G.dev->irq_count;
	virtio_net_set_link(G.dev, true);
	ck_assert_uint_eq(cfg_status(), VIRTIO_NET_S_LINK_UP);
	ck_assert_uint_eq(G.dev->irq_count, irqs0 + 1);
	ck_assert(fake_r32(&G, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_INT_CONFIG);
	fake_wait_used(rxq, 1);
	ck_assert_uint_eq(check_rx(0, 100, 31), 1);
}
END_TEST

START_TEST(test_link_change_before_driver)
{
	fake_w32(&G, VIRTIO_MMIO_STATUS, 0);
	unsigned long irqs0 = G.dev->irq_count;
	virtio_net_set_link(G.dev, false);
	virtio_net_set_link(G.dev, true);
	/* Nobody to tell yet. */
	ck_assert_uint_eq(G.dev->irq_count, irqs0);
	ck_assert_uint_eq(cfg_status(), VIRTIO_NET_S_LINK_UP);
}
END_TEST

START_TEST(test_peer_gone)
{
	post_rx(2, BUF_LEN);
	unsigned long irqs0 = G.dev->irq_count;
	close(peer);
	peer = -1;
	fake_device_poll(&G, 50);
	/* The guest learns of it as its link going down, and the loop stops polling. */
	ck_assert_uint_eq(cfg_status(), 0);
	ck_assert_uint_gt(G.dev->irq_count, irqs0);
	ck_assert(!fake_device_poll(&G, 20));
	ck_assert(!fake_needs_reset(&G));
}
END_TEST

/* ---- snapshots ------------------------------------------------------------------------- */

START_TEST(test_save_restore)
{
	post_rx(32, BUF_LEN);
	send_frame(500, 40);
	fake_wait_used(rxq, 1);
	tx_frame(100, 41);
	expect_sent(100, 41);
	virtio_net_set_link(G.dev, false);

	/* What the snapshot code does with the vCPUs paused: quiesce, then save. The device
	 * took receive buffers ahead; quiesce hands them back. */
	pthread_mutex_lock(&G.dev->lock);
	ck_assert_uint_gt(G.dev->vqs[RXQ].last_avail_idx, 1);
	ck_assert_int_eq(G.dev->ops->quiesce(G.dev), 0);
	ck_assert_uint_eq(G.dev->vqs[RXQ].last_avail_idx, 1);
	uint8_t state[64];
	int n = G.dev->ops->save_state(G.dev, state, sizeof(state));
	ck_assert_int_gt(n, 0);
	ck_assert_int_eq(G.dev->ops->save_state(G.dev, state, (size_t)n - 1), -ENOSPC);
	pthread_mutex_unlock(&G.dev->lock);
	struct virtio_device saved = *G.dev;

	/* A fork child: a fresh device of the same configuration (its own TAP, here another
	 * socketpair, and whatever MAC the command line had), the transport state put back,
	 * then the device's. */
	virtio_net_destroy(G.dev);
	close(peer);
	const uint8_t other_mac[6] = { 0x02, 1, 2, 3, 4, 5 };
	G.dev = make_device(other_mac);
	pthread_mutex_lock(&G.dev->lock);
	G.dev->status = saved.status;
	G.dev->driver_features = saved.driver_features;
	G.dev->config_generation = saved.config_generation;
	memcpy(G.dev->vqs, saved.vqs, sizeof(saved.vqs));
	ck_assert_int_eq(G.dev->ops->restore_state(G.dev, state, (size_t)n), 0);
	pthread_mutex_unlock(&G.dev->lock);

	uint8_t mac[6];
	virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET, mac, 6);
	ck_assert_mem_eq(mac, test_mac, 6);
	ck_assert_uint_eq(cfg_status(), 0);
	/* The child gets a new link: the guest hears of it, then frames flow into the
	 * next buffer of the ring, where the parent left off. */
	unsigned long irqs0 = G.dev->irq_count;
	virtio_net_set_link(G.dev, true);
	ck_assert_uint_eq(G.dev->irq_count, irqs0 + 1);
	send_frame(700, 42);
	fake_wait_used(rxq, 2);
	uint32_t id, len;
	fake_used_elem(rxq, 1, &id, &len);
	ck_assert_uint_eq(id, 1);
	ck_assert_uint_eq(check_rx(1, 700, 42), 1);
	tx_frame(80, 43);
	ck_assert_uint_eq(fake_used_idx(txq), 2);
	expect_sent(80, 43);
}
END_TEST

START_TEST(test_restore_rejects_bad_state)
{
	uint8_t state[64];
	pthread_mutex_lock(&G.dev->lock);
	int n = G.dev->ops->save_state(G.dev, state, sizeof(state));
	ck_assert_int_gt(n, 0);
	const struct virtio_device_ops *ops = G.dev->ops;
	ck_assert_int_eq(ops->restore_state(G.dev, state, (size_t)n - 1), -EINVAL);
	ck_assert_int_eq(ops->restore_state(G.dev, state, (size_t)n + 1), -EINVAL);
	uint8_t bad[64];
	for (int i = 0; i < n; i++) {
		/* Every byte of the header and the MAC's multicast bit are checked. */
		if (i > 8)
			continue;
		memcpy(bad, state, (size_t)n);
		bad[i] ^= i == 8 ? 1 : 0x40;
		ck_assert_msg(ops->restore_state(G.dev, bad, (size_t)n) == -EINVAL, "byte %d", i);
	}
	ck_assert_int_eq(ops->restore_state(G.dev, state, (size_t)n), 0);
	pthread_mutex_unlock(&G.dev->lock);
}
END_TEST

START_TEST(test_push_n_publishes_once)
{
	/* virtq_push_n: all elements, then one index move; more than the queue refused. */
	struct virtq *q = &G.dev->vqs[RXQ];
	struct virtq_used_elem e[3] = { { 5, 10 }, { 6, 20 }, { 7, 30 } };
	uint16_t before = q->used_idx;
	ck_assert_int_eq(virtq_push_n(q, &G.mem, e, 3), 0);
	ck_assert_uint_eq(fake_used_idx(rxq), (uint16_t)(before + 3));
	uint32_t id, len;
	fake_used_elem(rxq, (uint16_t)(before + 2), &id, &len);
	ck_assert_uint_eq(id, 7);
	ck_assert_uint_eq(len, 30);
	static struct virtq_used_elem many[VIRTIO_NET_QUEUE_SIZE + 1];
	ck_assert_int_eq(virtq_push_n(q, &G.mem, many, q->size + 1u), -EINVAL);
	ck_assert_uint_eq(fake_used_idx(rxq), (uint16_t)(before + 3));
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

/* The header and the frame back to back, as the device wrote them. */
struct frame {
	struct vnet_hdr h;
	uint8_t b[70000];
	size_t len;
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
	fake_guest_init(&G, RAM_SIZE);
	struct virtio_net_opts o = { .tap = TAP_NAME, .mac = { 0x06, 0, 0xac, 0x10, 0, 0x02 } };
	struct mitos_err e = { 0 };
	G.dev = virtio_net_create(&G.mem, 0xd0000000, 5, &o, &e);
	ck_assert_msg(G.dev != NULL, "virtio_net_create: %s", e.msg);
	peer = -1;
	ck_assert((virtio_device_features(G.dev) & OFFLOADS) == OFFLOADS);
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
	if (G.dev)
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
	uint64_t t0 = fake_ms();
	struct fake_chain c;
	for (;;) {
		while (fake_used_next(rxq, &c)) {
			fake_chain_read(rxq, &c, &f->h, sizeof(f->h) + sizeof(f->b));
			f->len = c.len - HDR;
			for (unsigned k = 1; k < f->h.num_buffers && fake_used_next(rxq, &c); k++) {
				fake_chain_read(rxq, &c, f->b + f->len, sizeof(f->b) - f->len);
				f->len += c.len;
			}
			if (f->len >= 54 && get16(f->b + 12) == 0x0800 && f->b[23] == 6)
				return true;
		}
		if (fake_ms() - t0 >= 3000)
			return false;
		fake_device_poll(&G, 50);
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
	uint64_t g = fake_alloc(&G, HDR + 70000);
	uint8_t *p = fake_host(&G, g);
	memset(p, 0, HDR);
	size_t n = tcp_headers(p + HDR, host_mac, host_port, GUEST_ISN, host_seq, 0x12, 0, true);
	uint8_t pseudo[12];
	put32(pseudo, GUEST_ADDR);
	put32(pseudo + 4, HOST_ADDR);
	put16(pseudo + 8, 6);
	put16(pseudo + 10, 24);
	put16(p + HDR + 34 + 16, csum_fold(csum_add(csum_add(0, pseudo, 12), p + HDR + 34, 24)));
	fake_add(txq, { g, (uint32_t)(HDR + n), false });
	fake_kick(txq);
	ck_assert(fake_wait_fd(s, POLLOUT, 3000));
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
	uint64_t g2 = fake_alloc(&G, HDR + 54 + SEG);
	p = fake_host(&G, g2);
	n = tcp_headers(p + HDR, host_mac, host_port, GUEST_ISN + 1, host_seq, 0x18, SEG, false);
	for (size_t i = 0; i < SEG; i++)
		p[HDR + n + i] = pat(50, i);
	/* NEEDS_CSUM from the TCP header on, GSO_TCPV4 in MSS-sized segments. */
	struct vnet_hdr h = { 1, 1, (uint16_t)n, MSS, 34, 16, 0 };
	memcpy(p, &h, HDR);
	fake_add(txq, { g2, (uint32_t)(HDR + n), false }, { g2 + HDR + n, SEG, false });
	fake_kick(txq);
	static uint8_t got[SEG];
	size_t have = 0;
	while (have < SEG) {
		ck_assert_msg(fake_wait_fd(s, POLLIN, 3000), "the host got %zu of %d bytes", have,
			      SEG);
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
	tcase_add_test(m, test_tx_budget_yields);
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
