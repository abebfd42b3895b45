/* virtio-vsock against the fake guest of fake_driver.h and real Unix sockets in a
 * temporary directory for the host side. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "devices/virtio_vsock.h"
#include "fake_driver.h"

#define RAM_SIZE  (16ULL << 20)
#define QSZ       64
#define CID       3
#define HDR       ((uint32_t)sizeof(struct virtio_vsock_hdr))
#define RX        VIRTIO_VSOCK_QUEUE_RX
#define TX        VIRTIO_VSOCK_QUEUE_TX
#define EVQ       VIRTIO_VSOCK_QUEUE_EVENT

/* Header and payload back to back, as the device wrote them. */
struct pkt {
	struct virtio_vsock_hdr h;
	uint8_t data[VIRTIO_VSOCK_MAX_PAYLOAD];
	uint32_t used_len;
};

static struct fake_guest G;
static struct fake_queue *const rxq = &G.q[RX], *const txq = &G.q[TX], *const evq = &G.q[EVQ];
static struct {
	char dir[64];
	char path[128];
} F;

static struct pkt P;

/* ---- the guest side ------------------------------------------------------------------- */

static void negotiate(void)
{
	fake_negotiate(&G, UINT64_MAX, 3, QSZ, VIRTIO_VSOCK_QUEUE_SIZE);
}

/* Receive buffers the way Linux 6.1 posts them (header and data apart) or as one. */
static void post_rx(unsigned n, uint32_t data_len, bool split)
{
	for (unsigned i = 0; i < n; i++) {
		if (split)
			fake_add(rxq, { fake_alloc(&G, HDR), HDR, true },
				 { fake_alloc(&G, data_len), data_len, true });
		else
			fake_add(rxq, { fake_alloc(&G, HDR + data_len), HDR + data_len, true });
	}
	fake_kick(rxq);
}

/* Takes the next used receive buffer, if any, into P. */
static bool rx_next(void)
{
	struct fake_chain c;
	if (!fake_used_next(rxq, &c))
		return false;
	ck_assert_uint_ge(c.len, HDR);
	fake_chain_read(rxq, &c, &P.h, sizeof(P.h) + sizeof(P.data));
	P.used_len = c.len;
	ck_assert_uint_eq(P.h.len, c.len - HDR);
	ck_assert_uint_eq(P.h.src_cid, VIRTIO_VSOCK_HOST_CID);
	ck_assert_uint_eq(P.h.dst_cid, CID);
	ck_assert_uint_eq(P.h.type, VIRTIO_VSOCK_TYPE_STREAM);
	ck_assert_uint_eq(P.h.buf_alloc, VIRTIO_VSOCK_BUF_ALLOC);
	return true;
}

static struct virtio_vsock_hdr mkhdr(uint16_t op, uint32_t src_port, uint32_t dst_port,
				     uint32_t len, uint32_t flags, uint32_t buf_alloc,
				     uint32_t fwd_cnt)
{
	return (struct virtio_vsock_hdr){
		.src_cid = CID, .dst_cid = VIRTIO_VSOCK_HOST_CID, .src_port = src_port,
		.dst_port = dst_port, .len = len, .type = VIRTIO_VSOCK_TYPE_STREAM, .op = op,
		.flags = flags, .buf_alloc = buf_alloc, .fwd_cnt = fwd_cnt };
}

/* Makes one transmit chain available: the header (cut after `split` bytes into two
 * descriptors when split is non-zero) and `plen` payload bytes in a third. */
static void tx_add(const void *hdr, uint32_t hlen, const void *payload, uint32_t plen,
		   uint32_t split)
{
	struct fake_buf s[3];
	unsigned n = 0;
	uint64_t g = fake_alloc(&G, hlen + plen);
	memcpy(fake_host(&G, g), hdr, hlen);
	if (plen)
		memcpy(fake_host(&G, g + hlen), payload, plen);
	if (split) {
		s[n++] = (struct fake_buf){ g, split, false };
		s[n++] = (struct fake_buf){ g + split, hlen - split, false };
		if (plen)
			s[n++] = (struct fake_buf){ g + hlen, plen, false };
	} else {
		s[n++] = (struct fake_buf){ g, hlen + plen, false };
	}
	fake_queue_add(txq, s, n);
}

/* Transmit buffers come back at once: the device never holds them. */
static void tx_kick(void)
{
	fake_kick(txq);
	ck_assert_uint_eq(fake_used_idx(txq), txq->avail_idx);
	struct fake_chain c;
	while (fake_used_next(txq, &c))
		;
}

static void tx_raw(const void *hdr, uint32_t hlen, const void *payload, uint32_t plen,
		   uint32_t split)
{
	tx_add(hdr, hlen, payload, plen, split);
	tx_kick();
}

static void tx(struct virtio_vsock_hdr h, const void *payload)
{
	tx_raw(&h, HDR, payload, h.len, 0);
}

/* ---- the device loop and the host side -------------------------------------------------- */

/* Runs the device loop until a packet arrives in P; fails after 3 s. */
static void wait_rx(void)
{
	uint64_t t0 = fake_ms();
	while (!rx_next()) {
		ck_assert_msg(fake_ms() - t0 < 3000, "no packet from the device");
		fake_device_poll(&G, 10);
	}
}

static void expect_rx(uint16_t op, uint32_t host_port, uint32_t guest_port)
{
	wait_rx();
	ck_assert_uint_eq(P.h.op, op);
	ck_assert_uint_eq(P.h.src_port, host_port);
	ck_assert_uint_eq(P.h.dst_port, guest_port);
}

static void expect_no_rx(int ms)
{
	uint64_t t0 = fake_ms();
	while (fake_ms() - t0 < (uint64_t)ms) {
		ck_assert_msg(!rx_next(), "unexpected packet op %u", P.h.op);
		fake_device_poll(&G, 5);
	}
	ck_assert(!rx_next());
}

static void port_path(char *out, size_t n, uint32_t port)
{
	snprintf(out, n, "%s_%u", F.path, port);
}

static int unix_listen(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	ck_assert_uint_lt(strlen(path), sizeof(a.sun_path));
	memcpy(a.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(fd, 8), 0);
	return fd;
}

static int unix_connect(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	ck_assert_uint_lt(strlen(path), sizeof(a.sun_path));
	memcpy(a.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	return fd;
}

static void host_write(int fd, const void *p, size_t n)
{
	ck_assert_int_eq(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Reads exactly n bytes, running the device loop meanwhile. */
static void host_read(int fd, void *buf, size_t n)
{
	size_t got = 0;
	uint64_t t0 = fake_ms();
	while (got < n) {
		ssize_t r = recv(fd, (uint8_t *)buf + got, n - got, MSG_DONTWAIT);
		if (r > 0) {
			got += (size_t)r;
			continue;
		}
		ck_assert_msg(r < 0 && errno == EAGAIN, "host read: %zd (%s) after %zu of %zu", r,
			      r ? strerror(errno) : "EOF", got, n);
		ck_assert_msg(fake_ms() - t0 < 3000, "host read timed out after %zu of %zu", got,
			      n);
		fake_device_poll(&G, 5);
	}
}

static void host_expect_eof(int fd)
{
	uint64_t t0 = fake_ms();
	for (;;) {
		char buf[65536];
		ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r == 0 || (r < 0 && errno == ECONNRESET))
			return;
		if (r > 0)
			continue;   /* data sent before the close */
		ck_assert_msg(errno == EAGAIN, "expected EOF: %s", strerror(errno));
		ck_assert_msg(fake_ms() - t0 < 3000, "socket not closed");
		fake_device_poll(&G, 5);
	}
}

/* Runs the device loop for a while; fails on any packet but CREDIT_UPDATEs. */
static void expect_only_credit_updates(int ms)
{
	uint64_t t0 = fake_ms();
	while (fake_ms() - t0 < (uint64_t)ms) {
		while (rx_next())
			ck_assert_uint_eq(P.h.op, VIRTIO_VSOCK_OP_CREDIT_UPDATE);
		fake_device_poll(&G, 5);
	}
}

/* A host listener for guest connections to host port hp. */
static int host_listen(uint32_t hp)
{
	char p[160];
	port_path(p, sizeof(p), hp);
	return unix_listen(p);
}

/* A guest connection from guest port gp to host port hp, accepted on lfd; returns the
 * host's end. */
static int guest_conn(uint32_t gp, uint32_t hp, uint32_t buf_alloc, int lfd)
{
	tx(mkhdr(VIRTIO_VSOCK_OP_REQUEST, gp, hp, 0, 0, buf_alloc, 0), NULL);
	expect_rx(VIRTIO_VSOCK_OP_RESPONSE, hp, gp);
	ck_assert_uint_eq(P.h.fwd_cnt, 0);
	int fd = accept(lfd, NULL, NULL);
	ck_assert_int_ge(fd, 0);
	return fd;
}

/* The device ended guest_conn(gp, 5000, ...) on both sides: the guest hears an RST, the
 * host reads EOF. */
static void expect_conn_reset(int fd, uint32_t gp)
{
	expect_rx(VIRTIO_VSOCK_OP_RST, 5000, gp);
	host_expect_eof(fd);
	close(fd);
}

/* A host client's CONNECT to guest port gp, accepted by the guest; returns the client
 * socket and the host port the device chose. */
static int host_conn(uint32_t gp, uint32_t buf_alloc, uint32_t *hp)
{
	int fd = unix_connect(F.path);
	char line[32];
	int n = snprintf(line, sizeof(line), "CONNECT %u\n", gp);
	host_write(fd, line, (size_t)n);
	wait_rx();
	ck_assert_uint_eq(P.h.op, VIRTIO_VSOCK_OP_REQUEST);
	ck_assert_uint_eq(P.h.dst_port, gp);
	ck_assert_uint_ge(P.h.src_port, 1024);
	*hp = P.h.src_port;
	tx(mkhdr(VIRTIO_VSOCK_OP_RESPONSE, gp, *hp, 0, 0, buf_alloc, 0), NULL);
	char want[32], got[32];
	n = snprintf(want, sizeof(want), "OK %u\n", *hp);
	host_read(fd, got, (size_t)n);
	ck_assert_mem_eq(got, want, (size_t)n);
	return fd;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(i * 31 + seed + (i >> 8));
}

/* ---- fixture ------------------------------------------------------------------------------ */

static struct virtio_device *create(const char *path, uint32_t cid, struct mitos_err *e)
{
	struct virtio_vsock_opts o = { .path = path, .cid = cid };
	return virtio_vsock_create(&G.mem, 0xd0000000, 5, &o, e);
}

static void setup(void)
{
	fake_guest_init(&G, RAM_SIZE);
	snprintf(F.dir, sizeof(F.dir), "/tmp/mitos-vsock-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(F.dir));
	snprintf(F.path, sizeof(F.path), "%s/v.sock", F.dir);
	struct mitos_err e = { 0 };
	G.dev = create(F.path, CID, &e);
	ck_assert_msg(G.dev != NULL, "virtio_vsock_create: %s", e.msg);
	negotiate();
	post_rx(32, VIRTIO_VSOCK_MAX_PAYLOAD, false);
}

static void teardown(void)
{
	virtio_vsock_destroy(G.dev);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", F.dir);
	ck_assert_int_eq(system(cmd), 0);
	fake_guest_free(&G);
}

/* ---- tests ----------------------------------------------------------------------------------- */

START_TEST(identity_and_config)
{
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_VSOCK);
	fake_w32(&G, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	/* Only the transport's bits: STREAM is implied, SEQPACKET not offered. */
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_DEVICE_FEATURES),
			  (1U << VIRTIO_F_RING_EVENT_IDX) | (1U << VIRTIO_F_RING_INDIRECT_DESC));
	uint64_t cid = 0;
	virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET, &cid, 8);
	ck_assert_uint_eq(cid, CID);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_CONFIG_OFFSET), CID);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_CONFIG_OFFSET + 4), 0);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_CONFIG_OFFSET + 8), 0);  /* past the end */
	/* The socket is there; nothing was sent yet. */
	ck_assert_int_eq(access(F.path, F_OK), 0);
	expect_no_rx(20);
}
END_TEST

START_TEST(create_errors)
{
	struct mitos_err e = { 0 };
	char p[160];
	snprintf(p, sizeof(p), "%s/other.sock", F.dir);
	ck_assert_ptr_null(create(p, 2, &e));
	ck_assert_ptr_nonnull(strstr(e.msg, "reserved"));
	ck_assert_ptr_null(create(p, 0xffffffffU, &e));
	ck_assert_ptr_null(create(F.path, CID, &e));   /* exists */
	ck_assert_ptr_nonnull(strstr(e.msg, "already exists"));
	char longp[120];
	memset(longp, 'a', sizeof(longp) - 1);
	longp[sizeof(longp) - 1] = '\0';
	ck_assert_ptr_null(create(longp, CID, &e));
	ck_assert_int_eq(e.code, -ENAMETOOLONG);
	ck_assert_ptr_null(create("", CID, &e));
	/* Destroy unlinks the socket. */
	struct virtio_device *d = create(p, 0xfffffffeU, &e);
	ck_assert_ptr_nonnull(d);
	virtio_vsock_destroy(d);
	ck_assert_int_ne(access(p, F_OK), 0);
}
END_TEST

START_TEST(guest_connects_to_host)
{
	int lfd = host_listen(5000), fd = guest_conn(40000, 5000, 65536, lfd);
	/* A header cut over two descriptors, the payload in a third. */
	struct virtio_vsock_hdr h = mkhdr(VIRTIO_VSOCK_OP_RW, 40000, 5000, 5, 0, 65536, 0);
	tx_raw(&h, HDR, "hello", 5, 10);
	char buf[16];
	host_read(fd, buf, 5);
	ck_assert_mem_eq(buf, "hello", 5);

	host_write(fd, "world", 5);
	expect_rx(VIRTIO_VSOCK_OP_RW, 5000, 40000);
	ck_assert_uint_eq(P.h.len, 5);
	ck_assert_mem_eq(P.data, "world", 5);
	ck_assert_uint_eq(P.h.fwd_cnt, 5);   /* every packet carries our credit */

	/* The guest will send no more: the host reads EOF but can still write. */
	tx(mkhdr(VIRTIO_VSOCK_OP_SHUTDOWN, 40000, 5000, 0, VIRTIO_VSOCK_SHUTDOWN_SEND, 65536, 5),
	   NULL);
	host_expect_eof(fd);
	host_write(fd, "more", 4);
	expect_rx(VIRTIO_VSOCK_OP_RW, 5000, 40000);
	ck_assert_mem_eq(P.data, "more", 4);
	/* Data after SHUTDOWN SEND is a protocol violation. */
	h = mkhdr(VIRTIO_VSOCK_OP_RW, 40000, 5000, 1, 0, 65536, 9);
	tx(h, "x");
	expect_rx(VIRTIO_VSOCK_OP_RST, 5000, 40000);
	close(fd);

	/* A full close: the device answers with the RST the guest's close() waits for. */
	fd = guest_conn(40001, 5000, 65536, lfd);
	tx(mkhdr(VIRTIO_VSOCK_OP_SHUTDOWN, 40001, 5000, 0, 3, 65536, 0), NULL);
	expect_conn_reset(fd, 40001);
	close(lfd);
}
END_TEST

START_TEST(guest_connect_refused)
{
	tx(mkhdr(VIRTIO_VSOCK_OP_REQUEST, 40000, 5001, 0, 0, 65536, 0), NULL);
	expect_rx(VIRTIO_VSOCK_OP_RST, 5001, 40000);
	expect_no_rx(20);
}
END_TEST

START_TEST(host_connects_to_guest)
{
	int fd = unix_connect(F.path);
	/* Data right behind the CONNECT line waits for the guest's RESPONSE. */
	host_write(fd, "CONNECT 1234\nearly", 18);
	wait_rx();
	ck_assert_uint_eq(P.h.op, VIRTIO_VSOCK_OP_REQUEST);
	ck_assert_uint_eq(P.h.dst_port, 1234);
	uint32_t hp = P.h.src_port;
	ck_assert_uint_ge(hp, 1024);
	expect_no_rx(20);
	tx(mkhdr(VIRTIO_VSOCK_OP_RESPONSE, 1234, hp, 0, 0, 65536, 0), NULL);
	char want[32], got[32];
	int n = snprintf(want, sizeof(want), "OK %u\n", hp);
	host_read(fd, got, (size_t)n);
	ck_assert_mem_eq(got, want, (size_t)n);
	expect_rx(VIRTIO_VSOCK_OP_RW, hp, 1234);
	ck_assert_uint_eq(P.h.len, 5);
	ck_assert_mem_eq(P.data, "early", 5);
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 1234, hp, 4, 0, 65536, 5), "back");
	host_read(fd, got, 4);
	ck_assert_mem_eq(got, "back", 4);

	/* A second client gets another host port. */
	uint32_t hp2;
	int fd2 = host_conn(1234, 65536, &hp2);
	ck_assert_uint_ne(hp2, hp);
	close(fd2);
	close(fd);
	/* The host closed both ways: the guest hears SHUTDOWN RCV|SEND on each. */
	uint32_t seen = 0;
	for (unsigned i = 0; i < 2; i++) {
		wait_rx();
		ck_assert_uint_eq(P.h.op, VIRTIO_VSOCK_OP_SHUTDOWN);
		ck_assert_uint_eq(P.h.flags, VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND);
		ck_assert(P.h.src_port == hp || P.h.src_port == hp2);
		seen |= P.h.src_port == hp ? 1 : 2;
	}
	ck_assert_uint_eq(seen, 3);
}
END_TEST

START_TEST(host_connect_refused_by_guest)
{
	int fd = unix_connect(F.path);
	host_write(fd, "CONNECT 4321\n", 13);
	wait_rx();
	ck_assert_uint_eq(P.h.op, VIRTIO_VSOCK_OP_REQUEST);
	tx(mkhdr(VIRTIO_VSOCK_OP_RST, 4321, P.h.src_port, 0, 0, 0, 0), NULL);
	host_expect_eof(fd);
	close(fd);
	expect_no_rx(20);  /* never a reply to an RST */
}
END_TEST

START_TEST(malformed_connect_lines)
{
	static const char *bad[] = { "CONNECT abc\n", "CONNECT 4294967295\n",
				     "CONNECT 99999999999\n", "CONNECT \n", "connect 1\n",
				     "CONNECT 12 \n", "CONNECT -1\n" };
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int fd = unix_connect(F.path);
		host_write(fd, bad[i], strlen(bad[i]));
		host_expect_eof(fd);
		close(fd);
	}
	/* No newline within the first 64 bytes. */
	char junk[200];
	memset(junk, 'C', sizeof(junk));
	int fd = unix_connect(F.path);
	host_write(fd, junk, VIRTIO_VSOCK_CONNECT_LINE_MAX);
	host_expect_eof(fd);
	close(fd);
	fd = unix_connect(F.path);
	host_write(fd, junk, sizeof(junk));
	host_expect_eof(fd);
	close(fd);
	expect_no_rx(20);

	/* A line arriving in pieces is fine. */
	fd = unix_connect(F.path);
	host_write(fd, "CONNECT 12", 10);
	expect_no_rx(30);
	host_write(fd, "34\n", 3);
	wait_rx();
	ck_assert_uint_eq(P.h.op, VIRTIO_VSOCK_OP_REQUEST);
	ck_assert_uint_eq(P.h.dst_port, 1234);
	close(fd);
	/* Given up before the guest answered: the RESPONSE gets an RST. */
	uint32_t hp = P.h.src_port;
	expect_rx(VIRTIO_VSOCK_OP_RST, hp, 1234);
}
END_TEST

START_TEST(unknown_connections_get_rst)
{
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 7001, 7000, 3, 0, 65536, 0), "abc");
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	ck_assert_uint_eq(P.h.len, 0);
	tx(mkhdr(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 7001, 7000, 0, 0, 65536, 0), NULL);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	tx(mkhdr(VIRTIO_VSOCK_OP_RESPONSE, 7001, 7000, 0, 0, 65536, 0), NULL);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	tx(mkhdr(VIRTIO_VSOCK_OP_RST, 7001, 7000, 0, 0, 0, 0), NULL);
	expect_no_rx(20);
}
END_TEST

START_TEST(malformed_packets)
{
	struct virtio_vsock_hdr h;
	/* len beyond what the chain holds */
	h = mkhdr(VIRTIO_VSOCK_OP_RW, 7001, 7000, 100, 0, 65536, 0);
	tx_raw(&h, HDR, "abc", 3, 0);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	h.len = 0xffffffffU;
	tx_raw(&h, HDR, "abc", 3, 7);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	/* shorter than a header: nothing to answer, but the buffer comes back */
	tx_raw(&h, 20, NULL, 0, 0);
	tx_raw(&h, 0, NULL, 0, 0);
	expect_no_rx(10);
	/* wrong CIDs, type, op */
	h = mkhdr(VIRTIO_VSOCK_OP_REQUEST, 7001, 7000, 0, 0, 65536, 0);
	h.src_cid = 4;
	tx(h, NULL);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	h.src_cid = CID | 1ULL << 32;
	tx(h, NULL);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	h = mkhdr(VIRTIO_VSOCK_OP_REQUEST, 7001, 7000, 0, 0, 65536, 0);
	h.dst_cid = 1;
	tx(h, NULL);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	h = mkhdr(VIRTIO_VSOCK_OP_REQUEST, 7001, 7000, 0, 0, 65536, 0);
	h.type = 2;  /* SEQPACKET: not offered */
	tx(h, NULL);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	h = mkhdr(99, 7001, 7000, 0, 0, 65536, 0);
	tx(h, NULL);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	h = mkhdr(0, 7001, 7000, 0, 0, 65536, 0);
	tx(h, NULL);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	expect_no_rx(10);

	/* A bad packet on a live connection ends it on both sides. */
	int lfd = host_listen(5000), fd = guest_conn(40000, 5000, 65536, lfd);
	h = mkhdr(VIRTIO_VSOCK_OP_RW, 40000, 5000, 10, 0, 65536, 0);
	tx_raw(&h, HDR, "abc", 3, 0);
	expect_conn_reset(fd, 40000);
	/* So does a second REQUEST for it. */
	fd = guest_conn(40000, 5000, 65536, lfd);
	tx(mkhdr(VIRTIO_VSOCK_OP_REQUEST, 40000, 5000, 0, 0, 65536, 0), NULL);
	expect_conn_reset(fd, 40000);
	close(lfd);
	ck_assert(virtio_device_active(G.dev));
}
END_TEST

START_TEST(broken_ring_fails_the_device)
{
	/* An avail index more than a queue ahead: the driver is broken. */
	txq->avail_idx = (uint16_t)(txq->avail_idx + QSZ + 1);
	fake_kick(txq);
	ck_assert(fake_needs_reset(&G));
	ck_assert(!virtio_device_active(G.dev));
	/* A reset brings it back. */
	negotiate();
	post_rx(4, 4096, false);
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 7001, 7000, 0, 0, 65536, 0), NULL);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
}
END_TEST

/* The host's data for the connection of guest_conn(40000, 5000, ...) from offset n of got
 * on, until `until` bytes; returns how far it got. */
static uint32_t host_data(uint8_t *got, uint32_t n, uint32_t until)
{
	while (n < until) {
		expect_rx(VIRTIO_VSOCK_OP_RW, 5000, 40000);
		memcpy(got + n, P.data, P.h.len);
		n += P.h.len;
	}
	return n;
}

START_TEST(host_respects_guest_credit)
{
	int lfd = host_listen(5000), fd = guest_conn(40000, 5000, 1000, lfd);
	static uint8_t data[5000], got[5000];
	fill(data, sizeof(data), 1);
	host_write(fd, data, sizeof(data));
	uint32_t n = host_data(got, 0, 1000);
	ck_assert_uint_eq(n, 1000);
	expect_no_rx(30);
	/* The guest read 600: room for 600 more. */
	tx(mkhdr(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 40000, 5000, 0, 0, 1000, 600), NULL);
	n = host_data(got, n, 1600);
	ck_assert_uint_eq(n, 1600);
	expect_no_rx(30);
	/* A bigger buffer advertised on any packet counts too. */
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 40000, 5000, 0, 0, 100000, 1600), NULL);
	host_data(got, n, 5000);
	ck_assert_mem_eq(got, data, sizeof(data));
	close(fd);
	close(lfd);
}
END_TEST

START_TEST(credit_update_after_forwarding)
{
	int lfd = host_listen(5000), fd = guest_conn(40000, 5000, 65536, lfd);
	static uint8_t data[70000], got[2 * 70000];
	fill(data, sizeof(data), 2);
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 40000, 5000, sizeof(data), 0, 65536, 0), data);
	expect_no_rx(10);   /* less than half the buffer forwarded: no update yet */
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 40000, 5000, sizeof(data), 0, 65536, 0), data);
	host_read(fd, got, sizeof(got));
	ck_assert_mem_eq(got, data, sizeof(data));
	ck_assert_mem_eq(got + sizeof(data), data, sizeof(data));
	/* More than half the buffer was forwarded: the guest hears so (once or twice,
	 * depending on how much the socket took at once). */
	expect_rx(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 5000, 40000);
	ck_assert_uint_ge(P.h.fwd_cnt, VIRTIO_VSOCK_BUF_ALLOC / 2);
	expect_only_credit_updates(20);
	/* And on request, with everything counted. */
	tx(mkhdr(VIRTIO_VSOCK_OP_CREDIT_REQUEST, 40000, 5000, 0, 0, 65536, 0), NULL);
	expect_rx(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 5000, 40000);
	ck_assert_uint_eq(P.h.fwd_cnt, 2 * sizeof(data));
	close(fd);
	close(lfd);
}
END_TEST

START_TEST(guest_exceeding_credit_is_reset)
{
	int lfd = host_listen(5000), fd = guest_conn(40000, 5000, 65536, lfd);
	static uint8_t data[VIRTIO_VSOCK_BUF_ALLOC + 1];
	fill(data, sizeof(data), 3);
	/* One packet beyond the whole buffer. */
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 40000, 5000, VIRTIO_VSOCK_BUF_ALLOC + 1, 0, 65536, 0), data);
	expect_conn_reset(fd, 40000);

	/* Two that together exceed it, sent before any credit update could come back. */
	fd = guest_conn(40001, 5000, 65536, lfd);
	struct virtio_vsock_hdr h = mkhdr(VIRTIO_VSOCK_OP_RW, 40001, 5000, 200000, 0, 65536, 0);
	tx_add(&h, HDR, data, h.len, 0);
	h.len = VIRTIO_VSOCK_BUF_ALLOC - 200000 + 1;
	tx_add(&h, HDR, data, h.len, 0);
	tx_kick();
	expect_conn_reset(fd, 40001);

	/* Exactly the credit is fine, with nobody reading on the host for now. */
	fd = guest_conn(40002, 5000, 65536, lfd);
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 40002, 5000, VIRTIO_VSOCK_BUF_ALLOC, 0, 65536, 0), data);
	expect_only_credit_updates(30);
	static uint8_t got[VIRTIO_VSOCK_BUF_ALLOC];
	host_read(fd, got, sizeof(got));
	ck_assert_mem_eq(got, data, sizeof(got));
	/* Everything drained, so all of it is credit again. */
	tx(mkhdr(VIRTIO_VSOCK_OP_CREDIT_REQUEST, 40002, 5000, 0, 0, 65536, 0), NULL);
	expect_only_credit_updates(20);
	ck_assert_uint_eq(P.h.fwd_cnt, VIRTIO_VSOCK_BUF_ALLOC);
	close(fd);
	close(lfd);
}
END_TEST

START_TEST(host_shutdown_both_ways)
{
	int lfd = host_listen(5000), fd = guest_conn(40000, 5000, 65536, lfd);
	host_write(fd, "tail", 4);
	shutdown(fd, SHUT_WR);
	/* The data first, then "no more from the host". */
	expect_rx(VIRTIO_VSOCK_OP_RW, 5000, 40000);
	ck_assert_mem_eq(P.data, "tail", 4);
	expect_rx(VIRTIO_VSOCK_OP_SHUTDOWN, 5000, 40000);
	ck_assert_uint_eq(P.h.flags, VIRTIO_VSOCK_SHUTDOWN_SEND);
	/* The guest still talks to the host. */
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 40000, 5000, 3, 0, 65536, 4), "abc");
	char buf[4];
	host_read(fd, buf, 3);
	ck_assert_mem_eq(buf, "abc", 3);
	close(fd);
	expect_rx(VIRTIO_VSOCK_OP_SHUTDOWN, 5000, 40000);
	ck_assert_uint_eq(P.h.flags, VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND);
	/* Data the guest sends meanwhile is dropped but still credited. */
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 40000, 5000, 3, 0, 65536, 4), "def");
	tx(mkhdr(VIRTIO_VSOCK_OP_CREDIT_REQUEST, 40000, 5000, 0, 0, 65536, 4), NULL);
	expect_rx(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 5000, 40000);
	ck_assert_uint_eq(P.h.fwd_cnt, 6);
	/* The guest's RST ends it: the address is free again. */
	tx(mkhdr(VIRTIO_VSOCK_OP_RST, 40000, 5000, 0, 0, 0, 0), NULL);
	expect_no_rx(20);
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 40000, 5000, 1, 0, 65536, 4), "x");
	expect_rx(VIRTIO_VSOCK_OP_RST, 5000, 40000);
	close(lfd);
}
END_TEST

START_TEST(guest_shutdown_rcv_stops_host_data)
{
	uint32_t hp;
	int fd = host_conn(1234, 65536, &hp);
	tx(mkhdr(VIRTIO_VSOCK_OP_SHUTDOWN, 1234, hp, 0, VIRTIO_VSOCK_SHUTDOWN_RCV, 65536, 0),
	   NULL);
	host_write(fd, "ignored", 7);
	expect_no_rx(30);
	/* Guest to host still works. */
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 1234, hp, 2, 0, 65536, 0), "ok");
	char buf[2];
	host_read(fd, buf, 2);
	ck_assert_mem_eq(buf, "ok", 2);
	close(fd);
}
END_TEST

START_TEST(receive_buffers_run_out)
{
	int lfd = host_listen(5000), fd = guest_conn(40000, 5000, 1 << 20, lfd);
	/* Use up every posted buffer with RSTs for nonsense, then send host data. */
	for (unsigned i = 0; i < 31; i++)
		tx(mkhdr(VIRTIO_VSOCK_OP_RW, 7001, 7000, 0, 0, 0, 0), NULL);
	for (unsigned i = 0; i < 31; i++)
		expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
	static uint8_t data[20000], got[20000];
	fill(data, sizeof(data), 5);
	host_write(fd, data, sizeof(data));
	expect_no_rx(30);
	/* Small buffers laid out like Linux 6.1's (header and data apart), a few at a time;
	 * the host data arrives in order. */
	uint32_t n = 0;
	while (n < sizeof(data)) {
		post_rx(2, 4096, true);
		for (unsigned i = 0; i < 2 && n < sizeof(data); i++) {
			expect_rx(VIRTIO_VSOCK_OP_RW, 5000, 40000);
			ck_assert_uint_le(P.h.len, 4096);
			memcpy(got + n, P.data, P.h.len);
			n += P.h.len;
		}
	}
	ck_assert_mem_eq(got, data, sizeof(data));
	close(fd);
	close(lfd);
}
END_TEST

START_TEST(tiny_receive_buffer_comes_back_empty)
{
	negotiate();
	uint16_t tiny = fake_add(rxq, { fake_alloc(&G, HDR), HDR, true });
	post_rx(1, 4096, false);
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 7001, 7000, 0, 0, 0, 0), NULL);
	ck_assert_uint_eq(fake_used_idx(rxq), 2);
	struct fake_chain c;
	ck_assert(fake_used_next(rxq, &c));
	ck_assert_uint_eq(c.head, tiny);
	ck_assert_uint_eq(c.len, 0);
	expect_rx(VIRTIO_VSOCK_OP_RST, 7000, 7001);
}
END_TEST

START_TEST(driver_reset_closes_host_sockets)
{
	int lfd = host_listen(5000), fd = guest_conn(40000, 5000, 65536, lfd);
	uint32_t hp;
	int fd2 = host_conn(1234, 65536, &hp);
	fake_w32(&G, VIRTIO_MMIO_STATUS, 0);
	host_expect_eof(fd);
	host_expect_eof(fd2);
	close(fd);
	close(fd2);
	close(lfd);
}
END_TEST

static bool host_eof_now(int fd)
{
	char c;
	return recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

START_TEST(timeouts)
{
	/* A: connects and never says CONNECT. B: the guest never answers its REQUEST.
	 * C: the host closed, the guest never sends the RST that ends it. */
	int a = unix_connect(F.path), b = unix_connect(F.path);
	host_write(b, "CONNECT 1234\n", 13);
	wait_rx();
	ck_assert_uint_eq(P.h.op, VIRTIO_VSOCK_OP_REQUEST);
	uint32_t hp_b = P.h.src_port;
	int lfd = host_listen(5000), c = guest_conn(40000, 5000, 65536, lfd);
	close(c);
	expect_rx(VIRTIO_VSOCK_OP_SHUTDOWN, 5000, 40000);
	ck_assert_uint_eq(P.h.flags, VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND);
	uint64_t t0 = fake_ms(), a_at = 0, b_at = 0, rst_b_at = 0, rst_c_at = 0;
	while (!a_at || !b_at || !rst_b_at || !rst_c_at) {
		uint64_t t = fake_ms() - t0;
		ck_assert_msg(t < 12000, "after %llu ms: A %llu, B %llu, RST B %llu, RST C %llu",
			      (unsigned long long)t, (unsigned long long)a_at,
			      (unsigned long long)b_at, (unsigned long long)rst_b_at,
			      (unsigned long long)rst_c_at);
		fake_device_poll(&G, 20);
		if (!a_at && host_eof_now(a))
			a_at = fake_ms() - t0;
		if (!b_at && host_eof_now(b))
			b_at = fake_ms() - t0;
		while (rx_next()) {
			ck_assert_uint_eq(P.h.op, VIRTIO_VSOCK_OP_RST);
			if (P.h.src_port == hp_b && P.h.dst_port == 1234)
				rst_b_at = fake_ms() - t0;
			else if (P.h.src_port == 5000 && P.h.dst_port == 40000)
				rst_c_at = fake_ms() - t0;
			else
				ck_abort_msg("RST for %u -> %u", P.h.src_port, P.h.dst_port);
		}
	}
	/* 5 s for a CONNECT line or a RESPONSE, 8 s for the closing RST; ticks are 0.5 s. */
	ck_assert_uint_ge(a_at, 4000);
	ck_assert_uint_ge(rst_b_at, 4000);
	ck_assert_uint_ge(rst_c_at, 7000);
	close(a);
	close(b);
	close(lfd);
}
END_TEST

static void post_event(void)
{
	uint64_t g = fake_alloc(&G, 8);
	memset(fake_host(&G, g), 0xff, 8);
	fake_add(evq, { g, 8, true });
	fake_kick(evq);
}

static void expect_transport_reset(void)
{
	ck_assert_uint_eq(fake_used_idx(evq), (uint16_t)(evq->used_seen + 1));
	struct fake_chain c;
	ck_assert(fake_used_next(evq, &c));
	ck_assert_uint_eq(c.len, 4);
	uint32_t event;
	fake_chain_read(evq, &c, &event, sizeof(event));
	ck_assert_uint_eq(event, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
}

START_TEST(save_restore_sends_transport_reset)
{
	post_event();
	ck_assert_uint_eq(fake_used_idx(evq), 0);   /* no event without a reason */
	uint8_t buf[64];
	int n = G.dev->ops->save_state(G.dev, buf, sizeof(buf));
	ck_assert_int_gt(n, 0);
	ck_assert_int_eq(G.dev->ops->save_state(G.dev, buf, 4), -ENOSPC);

	/* A fresh device with the same configuration, its queues as the snapshot left them. */
	int lfd = host_listen(5000), fd = guest_conn(40000, 5000, 65536, lfd);
	virtio_vsock_destroy(G.dev);
	host_expect_eof(fd);
	close(fd);
	struct mitos_err e = { 0 };
	G.dev = create(F.path, CID, &e);
	ck_assert_ptr_nonnull(G.dev);
	ck_assert_int_eq(G.dev->ops->restore_state(G.dev, buf, 4), -EINVAL);
	ck_assert_int_eq(G.dev->ops->restore_state(G.dev, NULL, 0), -EINVAL);
	negotiate();
	post_event();
	post_rx(4, 4096, false);
	ck_assert_int_eq(G.dev->ops->restore_state(G.dev, buf, (size_t)n), 0);
	expect_transport_reset();
	/* The guest's old connections are unknown here. */
	tx(mkhdr(VIRTIO_VSOCK_OP_RW, 40000, 5000, 1, 0, 65536, 0), "x");
	expect_rx(VIRTIO_VSOCK_OP_RST, 5000, 40000);
	/* New ones work. */
	uint32_t hp;
	fd = host_conn(1234, 65536, &hp);
	close(fd);
	close(lfd);

	/* A different CID is refused: the guest read its CID at probe time. */
	char p[160];
	snprintf(p, sizeof(p), "%s/other.sock", F.dir);
	struct virtio_device *other = create(p, CID + 1, &e);
	ck_assert_ptr_nonnull(other);
	ck_assert_int_eq(other->ops->restore_state(other, buf, (size_t)n), -EINVAL);
	other->ops->destroy(other);
	buf[0] ^= 0xff;  /* version */
	ck_assert_int_eq(G.dev->ops->restore_state(G.dev, buf, (size_t)n), -EINVAL);
}
END_TEST

START_TEST(transport_reset_waits_for_an_event_buffer)
{
	int lfd = host_listen(5000), fd = guest_conn(40000, 5000, 65536, lfd);
	ck_assert_int_eq(virtio_vsock_send_transport_reset(G.dev), 0);
	host_expect_eof(fd);
	close(fd);
	ck_assert_uint_eq(fake_used_idx(evq), 0);
	post_event();
	expect_transport_reset();
	post_event();
	ck_assert_uint_eq(fake_used_idx(evq), 1);   /* one reset, one event */
	close(lfd);
}
END_TEST

static Suite *virtio_vsock_suite(void)
{
	Suite *s = suite_create("virtio_vsock");
	TCase *tc = tcase_create("device");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, identity_and_config);
	tcase_add_test(tc, create_errors);
	tcase_add_test(tc, guest_connects_to_host);
	tcase_add_test(tc, guest_connect_refused);
	tcase_add_test(tc, host_connects_to_guest);
	tcase_add_test(tc, host_connect_refused_by_guest);
	tcase_add_test(tc, malformed_connect_lines);
	tcase_add_test(tc, unknown_connections_get_rst);
	tcase_add_test(tc, malformed_packets);
	tcase_add_test(tc, broken_ring_fails_the_device);
	tcase_add_test(tc, host_respects_guest_credit);
	tcase_add_test(tc, credit_update_after_forwarding);
	tcase_add_test(tc, guest_exceeding_credit_is_reset);
	tcase_add_test(tc, host_shutdown_both_ways);
	tcase_add_test(tc, guest_shutdown_rcv_stops_host_data);
	tcase_add_test(tc, receive_buffers_run_out);
	tcase_add_test(tc, tiny_receive_buffer_comes_back_empty);
	tcase_add_test(tc, driver_reset_closes_host_sockets);
	tcase_add_test(tc, timeouts);
	tcase_add_test(tc, save_restore_sends_transport_reset);
	tcase_add_test(tc, transport_reset_waits_for_an_event_buffer);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(virtio_vsock_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
