/* Fuzz target: virtio-blk (devices/virtio_blk.c) under a hostile driver. A real
 * device on a small disk image, brought up as Linux does it; then the input is
 * the driver's side of the queue: the descriptor table, the available ring and the
 * request headers, data and status bytes they point at, in guest RAM at fixed
 * places (descriptors may point anywhere, in RAM or past it). The device must
 * answer or refuse each chain without touching memory outside RAM (the sanitizer
 * build) and leave the disk image's size alone. (What it writes into the used ring
 * is not checked: the driver may point buffers at that ring too.) */
#include <assert.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "devices/virtio_blk.h"
#include "tests/fuzz/fuzz.h"
#include "tests/unit/fake_driver.h"

#define RAM (128u << 10)
#define QSIZE 16
#define IMG_BYTES (64u * 512)
/* Where the input lands: from the descriptor table on, over the available ring and
 * the data area behind it (fake_negotiate allocates the rings first, in order). */
#define INPUT_MAX (16u << 10)

static char img[64];

static void remove_image(void)
{
	unlink(img);
}

static void make_image(void)
{
	if (img[0])
		return;
	snprintf(img, sizeof(img), "/tmp/mitos-fuzz-blk-XXXXXX");
	int fd = mkstemp(img);
	assert(fd >= 0);
	assert(ftruncate(fd, IMG_BYTES) == 0);
	close(fd);
	atexit(remove_image);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	make_image();
	virtio_fail_quiet = true;
	struct fake_guest g;
	fake_guest_init(&g, RAM);
	struct virtio_blk_opts o = { .path = img, .read_only = data[0] & 1 };
	struct mitos_err e = { 0 };
	g.dev = virtio_blk_create(&g.mem, 0xd0000000, 5, &o, &e);
	assert(g.dev);
	fake_negotiate(&g, ~0ULL, 1, QSIZE, VIRTIO_BLK_QUEUE_SIZE);
	struct fake_queue *q = &g.q[0];
	/* The rings the driver published, then everything after them, are the input
	 * (the used ring's starting zeros are the device's to change). */
	size_t n = size - 2 < INPUT_MAX ? size - 2 : INPUT_MAX;
	memcpy(fake_host(&g, q->desc), data + 2, n);
	memset(fake_host(&g, q->used), 0, 6 + 8 * QSIZE);
	/* The avail index: how many entries the device is told about (hostile too). */
	q->avail_idx = data[1];
	fake_kick(q);
	for (int i = 0; i < 20 && fake_device_poll(&g, 0); i++)
		;
	virtio_blk_destroy(g.dev);
	fake_guest_free(&g);
	struct stat st;
	assert(stat(img, &st) == 0 && st.st_size == IMG_BYTES);
	return 0;
}

/* Reads, writes, a flush and a get-id, each a header / data / status chain, laid
 * out as the input sees guest RAM: the descriptor table first, then the available
 * ring, then the buffers. */
void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	struct fake_guest g;
	fake_guest_init(&g, RAM);
	g.dev = NULL;
	/* The addresses fake_negotiate would give the rings: allocated the same way. */
	struct fake_queue *q = fake_queue_alloc(&g, 0, QSIZE);
	uint64_t base = q->desc;
	static const uint32_t types[] = { 0 /* IN */, 1 /* OUT */, 4 /* FLUSH */, 8 /* GET_ID */ };
	for (unsigned t = 0; t < 4; t++) {
		uint64_t hdr = fake_alloc(&g, 16), buf = fake_alloc(&g, 1024), st = fake_alloc(&g, 1);
		uint8_t *h = fake_host(&g, hdr);
		memset(h, 0, 16);
		memcpy(h, &types[t], 4);
		uint64_t sector = 3 + t;
		memcpy(h + 8, &sector, 8);
		if (types[t] == 4)
			fake_add(q, { hdr, 16, false }, { st, 1, true });
		else
			fake_add(q, { hdr, 16, false }, { buf, types[t] == 8 ? 20 : 1024, types[t] != 1 },
				 { st, 1, true });
	}
	size_t n = g.brk - base < INPUT_MAX ? g.brk - base : INPUT_MAX;
	uint8_t *in = malloc(2 + n);
	assert(in);
	in[0] = 0;
	in[1] = (uint8_t)q->avail_idx;
	memcpy(in + 2, fake_host(&g, base), n);
	add(in, 2 + n);
	in[0] = 1; /* read-only: writes refused */
	add(in, 2 + n);
	free(in);
	fake_guest_free(&g);
}
