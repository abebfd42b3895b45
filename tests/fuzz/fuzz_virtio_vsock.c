/* Fuzz target: virtio-vsock (devices/virtio_vsock.c) between a hostile guest and a
 * hostile host client. A real device on a Unix socket, brought up as Linux does it,
 * with receive buffers posted; then the input is (1) the line a host client writes
 * after connecting (the CONNECT line, or anything), and (2) the guest's transmit
 * queue: its descriptor table, available ring and the packets they point at
 * (headers with any op, ports, lengths, credit; descriptors anywhere). A host
 * listener on port 1234 accepts what the guest connects to it and answers. The
 * device must take all of it without touching memory outside guest RAM (the
 * sanitizer build) or leaking (every input sets the device up and tears it down).
 *
 * Input: [0] bit 0: a host client connects; [1] its line's length (0..63);
 * [2] the transmit queue's available index; the line; then the transmit queue's
 * memory: descriptor table, available ring, packet area. */
#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "devices/virtio_vsock.h"
#include "tests/fuzz/fuzz.h"
#include "tests/unit/fake_driver.h"

#define RAM (256u << 10)
#define QSIZE 16
#define HDR ((uint32_t)sizeof(struct virtio_vsock_hdr))
#define AREA (8u << 10)
#define HOST_PORT 1234
#define DESC_BYTES (16u * QSIZE)
#define AVAIL_BYTES (6u + 2u * QSIZE)

static char dir[64], path[128], port_path[160];
static int host_lfd = -1;

static void cleanup(void)
{
	if (host_lfd >= 0)
		close(host_lfd);
	unlink(port_path);
	rmdir(dir);
}

static int unix_socket(const char *p, bool listening)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", p);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	assert(fd >= 0);
	int rc = listening ? bind(fd, (struct sockaddr *)&a, sizeof(a)) : connect(fd, (struct sockaddr *)&a, sizeof(a));
	if (rc == 0 && listening)
		rc = listen(fd, 16);
	if (rc) {
		close(fd);
		return -1;
	}
	return fd;
}

static void once(void)
{
	if (dir[0])
		return;
	snprintf(dir, sizeof(dir), "/tmp/mitos-fuzz-vsock-XXXXXX");
	assert(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/v.sock", dir);
	snprintf(port_path, sizeof(port_path), "%s_%u", path, HOST_PORT);
	host_lfd = unix_socket(port_path, true);
	assert(host_lfd >= 0);
	atexit(cleanup);
	signal(SIGPIPE, SIG_IGN); /* a write to a connection the device closed */
	virtio_fail_quiet = true;
}

/* The device with its queues up and receive buffers posted; the packet area's
 * address. The same every time, so the seeds' addresses hold. */
static uint64_t rig_up(struct fake_guest *g)
{
	fake_guest_init(g, RAM);
	struct virtio_vsock_opts o = { .path = path, .cid = 3 };
	struct mitos_err e = { 0 };
	g->dev = virtio_vsock_create(&g->mem, 0xd0000000, 5, &o, &e);
	assert(g->dev);
	fake_negotiate(g, ~0ULL, 3, QSIZE, VIRTIO_VSOCK_QUEUE_SIZE);
	struct fake_queue *rx = &g->q[VIRTIO_VSOCK_QUEUE_RX];
	for (unsigned i = 0; i < 8; i++)
		fake_add(rx, { fake_alloc(g, HDR + 4096), HDR + 4096, true });
	fake_kick(rx);
	return fake_alloc(g, AREA);
}

static void rig_down(struct fake_guest *g)
{
	virtio_vsock_destroy(g->dev);
	fake_guest_free(g);
}

/* The host's side: what the guest connected to gets an answer, and the device loop
 * runs until it is quiet. */
static void run(struct fake_guest *g, int *conns, unsigned *nconns)
{
	for (int i = 0; i < 8; i++) {
		int fd = accept4(host_lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd >= 0 && *nconns < 8) {
			conns[(*nconns)++] = fd;
			(void)!write(fd, "host says hi", 12);
		} else if (fd >= 0) {
			close(fd);
		}
		char buf[512];
		for (unsigned c = 0; c < *nconns; c++)
			while (read(conns[c], buf, sizeof(buf)) > 0)
				;
		if (!fake_device_poll(g, 0) && fd < 0 && i >= 2)
			break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	once();
	size_t line_len = data[1] % 64;
	if (size < 3 + line_len)
		return 0;
	struct fake_guest g;
	uint64_t area = rig_up(&g);
	int conns[9];
	unsigned nconns = 0;
	if (data[0] & 1) {
		int fd = unix_socket(path, false);
		if (fd >= 0) {
			conns[nconns++] = fd;
			(void)!write(fd, data + 3, line_len);
		}
	}
	run(&g, conns, &nconns);
	struct fake_queue *tx = &g.q[VIRTIO_VSOCK_QUEUE_TX];
	fake_queue_overwrite(tx, area, AREA, data + 3 + line_len, size - 3 - line_len);
	tx->avail_idx = data[2];
	fake_kick(tx);
	run(&g, conns, &nconns);
	rig_down(&g);
	for (unsigned c = 0; c < nconns; c++)
		close(conns[c]);
	return 0;
}

/* A guest that connects to host port 1234, sends, credits, shuts down and resets;
 * a host client that asks for guest port 52; and hostile lines. */
void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	once();
	struct fake_guest g;
	uint64_t area = rig_up(&g);
	struct fake_queue *tx = &g.q[VIRTIO_VSOCK_QUEUE_TX];
	static const struct {
		uint16_t op;
		uint32_t len, flags;
	} pkts[] = {
		{ VIRTIO_VSOCK_OP_REQUEST, 0, 0 },
		{ VIRTIO_VSOCK_OP_RW, 5, 0 },
		{ VIRTIO_VSOCK_OP_CREDIT_REQUEST, 0, 0 },
		{ VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0 },
		{ VIRTIO_VSOCK_OP_SHUTDOWN, 0, VIRTIO_VSOCK_SHUTDOWN_SEND },
		{ VIRTIO_VSOCK_OP_RST, 0, 0 },
	};
	uint64_t at = area;
	for (unsigned i = 0; i < sizeof(pkts) / sizeof(pkts[0]); i++) {
		struct virtio_vsock_hdr h = { .src_cid = 3, .dst_cid = VIRTIO_VSOCK_HOST_CID, .src_port = 50000,
					      .dst_port = HOST_PORT, .len = pkts[i].len, .type = VIRTIO_VSOCK_TYPE_STREAM,
					      .op = pkts[i].op, .flags = pkts[i].flags, .buf_alloc = 65536 };
		memcpy(fake_host(&g, at), &h, HDR);
		memcpy(fake_host(&g, at + HDR), "hello", pkts[i].len);
		fake_add(tx, { at, HDR + pkts[i].len, false });
		at += HDR + 16;
	}
	static const char *const lines[] = { "CONNECT 52\n", "CONNECT 4294967296\n", "CONNECT -1\nCONNECT 52\n", "" };
	for (unsigned l = 0; l < sizeof(lines) / sizeof(lines[0]); l++) {
		size_t ll = strlen(lines[l]);
		size_t n = 3 + ll + DESC_BYTES + AVAIL_BYTES + AREA;
		uint8_t *in = malloc(n);
		assert(in);
		in[0] = ll != 0;
		in[1] = (uint8_t)ll;
		in[2] = (uint8_t)tx->avail_idx;
		memcpy(in + 3, lines[l], ll);
		fake_queue_dump(tx, area, AREA, in + 3 + ll);
		add(in, n);
		free(in);
	}
	rig_down(&g);
}
