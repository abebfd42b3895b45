/* Fuzz target: virtio-net (devices/virtio_net.c) between a hostile guest and a
 * hostile network. A real device over one end of a SOCK_SEQPACKET socketpair (a
 * TAP's frame-per-call behaviour), brought up with every feature it offers (so
 * mergeable receive buffers and the offload headers are in play) and receive
 * buffers posted; then the input is (1) frames arriving from the network, each
 * behind its virtio-net header, whatever they say, and (2) the guest's transmit
 * queue: descriptor table, available ring and the headers and frames they point
 * at. The device must take all of it without touching memory outside guest RAM
 * (the sanitizer build) and hand the network only what the guest wrote.
 *
 * Input: [0] how many network frames (0..7), [1] the transmit queue's available
 * index; the frames, each a little-endian u16 length (at most 2048) and its bytes;
 * then the transmit queue's memory: descriptor table, available ring, frame area. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "devices/virtio_net.h"
#include "tests/fuzz/fuzz.h"
#include "tests/unit/fake_driver.h"

#define RAM (256u << 10)
#define QSIZE 16
#define AREA (8u << 10)
#define RXBUF 2048
#define DESC_BYTES (16u * QSIZE)
#define AVAIL_BYTES (6u + 2u * QSIZE)
#define FRAME_MAX 2048

static const uint8_t mac[VIRTIO_NET_MAC_LEN] = { 0x06, 0, 0xac, 0x10, 0, 0x02 };

/* The device, its queues and receive buffers; the frame area's address (the same
 * every time, so the seeds' addresses hold) and the network's end in *peer. */
static uint64_t rig_up(struct fake_guest *g, int *peer)
{
	virtio_fail_quiet = true;
	fake_guest_init(g, RAM);
	int sv[2];
	assert(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
	struct mitos_err e = { 0 };
	g->dev = virtio_net_create_fd(&g->mem, 0xd0000000, 5, sv[0], mac, &e);
	assert(g->dev);
	*peer = sv[1];
	fake_negotiate(g, ~0ULL, 2, QSIZE, VIRTIO_NET_QUEUE_SIZE);
	struct fake_queue *rx = &g->q[VIRTIO_NET_RXQ];
	for (unsigned i = 0; i < 8; i++)
		fake_add(rx, { fake_alloc(g, RXBUF), RXBUF, true });
	fake_kick(rx);
	return fake_alloc(g, AREA);
}

/* The device loop until it is quiet; what reached the network is read and dropped. */
static void run(struct fake_guest *g, int peer)
{
	static uint8_t frame[65536 + VIRTIO_NET_HDR_LEN];
	for (int i = 0; i < 8; i++) {
		bool busy = fake_device_poll(g, 0);
		ssize_t n;
		while ((n = recv(peer, frame, sizeof(frame), 0)) > 0)
			assert(n >= VIRTIO_NET_HDR_LEN);
		if (!busy)
			break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	struct fake_guest g;
	int peer;
	uint64_t area = rig_up(&g, &peer);
	const uint8_t *p = data + 2;
	size_t n = size - 2;
	for (unsigned f = 0; f < (data[0] & 7u) && n >= 2; f++) {
		size_t len = (size_t)(p[0] | p[1] << 8) % (FRAME_MAX + 1);
		p += 2, n -= 2;
		if (len > n)
			len = n;
		/* An empty datagram would read as the TAP closing, which a TAP never says. */
		if (len)
			(void)!send(peer, p, len, MSG_DONTWAIT);
		p += len, n -= len;
	}
	run(&g, peer);
	struct fake_queue *tx = &g.q[VIRTIO_NET_TXQ];
	fake_queue_overwrite(tx, area, AREA, p, n);
	tx->avail_idx = data[1];
	fake_kick(tx);
	run(&g, peer);
	virtio_net_destroy(g.dev);
	close(peer);
	fake_guest_free(&g);
	return 0;
}

/* Two frames from the network (a plain one, one whose header claims a GSO packet)
 * and three from the guest: a header and frame in one buffer, split over two, and a
 * header asking for checksum offload. */
void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	struct fake_guest g;
	int peer;
	uint64_t area = rig_up(&g, &peer);
	struct fake_queue *tx = &g.q[VIRTIO_NET_TXQ];
	uint8_t hdr[VIRTIO_NET_HDR_LEN] = { 0 }, frame[60];
	memset(frame, 0xab, sizeof(frame));
	memcpy(frame, mac, 6);
	uint64_t at = area;
	for (unsigned i = 0; i < 3; i++) {
		hdr[0] = i == 2 ? 1 : 0;        /* flags: NEEDS_CSUM */
		hdr[6] = i == 2 ? 34 : 0;       /* csum_start */
		hdr[8] = i == 2 ? 16 : 0;       /* csum_offset */
		memcpy(fake_host(&g, at), hdr, sizeof(hdr));
		memcpy(fake_host(&g, at + sizeof(hdr)), frame, sizeof(frame));
		if (i == 1)
			fake_add(tx, { at, sizeof(hdr), false }, { at + sizeof(hdr), sizeof(frame), false });
		else
			fake_add(tx, { at, sizeof(hdr) + sizeof(frame), false });
		at += 128;
	}
	uint8_t net[2][2 + VIRTIO_NET_HDR_LEN + sizeof(frame)];
	for (unsigned i = 0; i < 2; i++) {
		memset(net[i], 0, sizeof(net[i]));
		net[i][0] = (uint8_t)(VIRTIO_NET_HDR_LEN + sizeof(frame));
		net[i][2 + 1] = i ? 1 : 0;      /* gso_type TCPV4 */
		net[i][2 + 4] = i ? 0x40 : 0;   /* gso_size */
		memcpy(net[i] + 2 + VIRTIO_NET_HDR_LEN, frame, sizeof(frame));
	}
	size_t n = 2 + sizeof(net) + DESC_BYTES + AVAIL_BYTES + AREA;
	uint8_t *in = malloc(n);
	assert(in);
	in[0] = 2;
	in[1] = (uint8_t)tx->avail_idx;
	memcpy(in + 2, net, sizeof(net));
	fake_queue_dump(tx, area, AREA, in + 2 + sizeof(net));
	add(in, n);
	in[0] = 0; /* the guest's side alone */
	add(in, n);
	free(in);
	virtio_net_destroy(g.dev);
	close(peer);
	fake_guest_free(&g);
}
