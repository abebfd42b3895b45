/* virtio-blk against the fake guest of fake_driver.h and a temporary image. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "devices/virtio_blk.h"
#include "fake_driver.h"

#define RAM_SIZE    (8ULL << 20)
#define IMG_SECTORS 128ULL
#define IMG_BYTES   (IMG_SECTORS * 512)

struct req {
	uint16_t head;
	uint64_t hdr, data, status;
};

static struct fake_guest G;
static struct fake_queue *const Q = &G.q[0];
static char img_path[64];

static uint8_t pat(uint64_t off)
{
	return (uint8_t)(off ^ (off >> 9) * 37);
}

static void write_image(const char *path, uint64_t bytes)
{
	uint8_t *buf = malloc(bytes);
	ck_assert_ptr_nonnull(buf);
	for (uint64_t i = 0; i < bytes; i++)
		buf[i] = pat(i);
	int fd = open(path, O_WRONLY | O_TRUNC | O_CREAT, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, buf, bytes), (ssize_t)bytes);
	close(fd);
	free(buf);
}

static void read_file(uint64_t off, void *dst, size_t len)
{
	int fd = open(img_path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, dst, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static bool file_is_pristine(void)
{
	static uint8_t buf[IMG_BYTES];
	read_file(0, buf, sizeof(buf));
	for (uint64_t i = 0; i < IMG_BYTES; i++)
		if (buf[i] != pat(i))
			return false;
	return true;
}

static void negotiate(uint16_t qsize)
{
	fake_negotiate(&G, UINT64_MAX, 1, qsize, VIRTIO_BLK_QUEUE_SIZE);
}

static void start(bool read_only)
{
	fake_guest_init(&G, RAM_SIZE);
	snprintf(img_path, sizeof(img_path), "/tmp/mitos-blk-XXXXXX");
	int fd = mkstemp(img_path);
	ck_assert_int_ge(fd, 0);
	close(fd);
	write_image(img_path, IMG_BYTES);
	struct virtio_blk_opts o = { .path = img_path, .read_only = read_only };
	struct mitos_err e = { 0 };
	G.dev = virtio_blk_create(&G.mem, 0xd0000000, 5, &o, &e);
	ck_assert_msg(G.dev != NULL, "virtio_blk_create: %s", e.msg);
	negotiate(256);
}

static void setup_rw(void) { start(false); }
static void setup_ro(void) { start(true); }

static void teardown(void)
{
	virtio_blk_destroy(G.dev);
	unlink(img_path);
	fake_guest_free(&G);
}

static void put_hdr(uint64_t gpa, uint32_t type, uint64_t sector)
{
	uint8_t *p = fake_host(&G, gpa);
	memset(p, 0, 16);
	memcpy(p, &type, 4);
	memcpy(p + 8, &sector, 8);
}

/* The usual shape: header, one data buffer (device-writable unless OUT), status. */
static struct req simple_req(uint32_t type, uint64_t sector, uint32_t len)
{
	struct req r = { .hdr = fake_alloc(&G, 16), .data = fake_alloc(&G, len ? len : 1),
			 .status = fake_alloc(&G, 1) };
	put_hdr(r.hdr, type, sector);
	*fake_host(&G, r.status) = 0xff;
	struct fake_buf s[3];
	unsigned n = 0;
	s[n++] = (struct fake_buf){ r.hdr, 16, false };
	if (len)
		s[n++] = (struct fake_buf){ r.data, len, type != VIRTIO_BLK_T_OUT };
	s[n++] = (struct fake_buf){ r.status, 1, true };
	r.head = fake_queue_add(Q, s, n);
	return r;
}

/* Kicks, waits for the one outstanding chain, checks it came back, returns its len. */
static uint32_t run1(uint16_t head)
{
	fake_kick(Q);
	fake_wait_used(Q, Q->avail_idx);
	struct fake_chain c;
	ck_assert(fake_used_next(Q, &c));
	ck_assert_uint_eq(c.head, head);
	return c.len;
}

static uint8_t status_of(const struct req *r)
{
	return *fake_host(&G, r->status);
}

static void check_pattern(uint64_t gpa, uint64_t file_off, uint64_t len)
{
	const uint8_t *p = fake_host(&G, gpa);
	for (uint64_t i = 0; i < len; i++)
		ck_assert_msg(p[i] == pat(file_off + i), "byte %llu", (unsigned long long)i);
}

static void expect(uint32_t type, uint64_t sector, uint32_t len, uint8_t status,
		   uint32_t used_len)
{
	struct req r = simple_req(type, sector, len);
	ck_assert_uint_eq(run1(r.head), used_len);
	ck_assert_uint_eq(status_of(&r), status);
}

START_TEST(test_identity_and_config)
{
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_MAGIC_VALUE), VIRTIO_MMIO_MAGIC);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_BLOCK);
	fake_w32(&G, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint32_t f = fake_r32(&G, VIRTIO_MMIO_DEVICE_FEATURES);
	ck_assert(f & (1u << VIRTIO_BLK_F_SEG_MAX));
	ck_assert(f & (1u << VIRTIO_BLK_F_BLK_SIZE));
	ck_assert(f & (1u << VIRTIO_BLK_F_FLUSH));
	ck_assert(!(f & (1u << VIRTIO_BLK_F_RO)));

	uint64_t cap = 0;
	virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_BLK_CFG_CAPACITY, &cap, 8);
	ck_assert_uint_eq(cap, IMG_SECTORS);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_BLK_CFG_CAPACITY),
			  IMG_SECTORS);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_BLK_CFG_CAPACITY + 4), 0);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_BLK_CFG_BLK_SIZE), 512);
	uint32_t seg_max = fake_r32(&G, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_BLK_CFG_SEG_MAX);
	ck_assert_uint_gt(seg_max, 0);
	ck_assert_uint_le(seg_max, VIRTQ_MAX_CHAIN - 2);
	/* Unaligned, odd-sized windows read the same bytes. */
	uint8_t b = 0xff;
	virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET + 0, &b, 1);
	ck_assert_uint_eq(b, IMG_SECTORS & 0xff);
	virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET + 1, &b, 1);
	ck_assert_uint_eq(b, 0);
	uint16_t h = 0xffff;
	virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET + VIRTIO_BLK_CFG_BLK_SIZE + 1, &h, 2);
	ck_assert_uint_eq(h, 512 >> 8);
	/* The last byte of the config structure, and past it. */
	b = 0xff;
	virtio_mmio_read(G.dev, VIRTIO_MMIO_CONFIG_OFFSET + 71, &b, 1);
	ck_assert_uint_eq(b, 0);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_CONFIG_OFFSET + 72), 0);
}
END_TEST

START_TEST(test_read)
{
	unsigned long irqs = G.dev->irq_count;
	struct req r = simple_req(VIRTIO_BLK_T_IN, 3, 1024);
	ck_assert_uint_eq(run1(r.head), 1025);
	ck_assert_uint_eq(status_of(&r), VIRTIO_BLK_S_OK);
	check_pattern(r.data, 3 * 512, 1024);
	ck_assert_uint_gt(G.dev->irq_count, irqs);
	/* The last sector is in range. */
	r = simple_req(VIRTIO_BLK_T_IN, IMG_SECTORS - 1, 512);
	ck_assert_uint_eq(run1(r.head), 513);
	ck_assert_uint_eq(status_of(&r), VIRTIO_BLK_S_OK);
	check_pattern(r.data, (IMG_SECTORS - 1) * 512, 512);
}
END_TEST

START_TEST(test_write_read_back)
{
	/* Two sectors spread over three buffers, one of them shared with the header. */
	uint64_t hdr = fake_alloc(&G, 16 + 100), d2 = fake_alloc(&G, 412), d3 = fake_alloc(&G, 512);
	uint64_t st = fake_alloc(&G, 1);
	put_hdr(hdr, VIRTIO_BLK_T_OUT, 5);
	uint8_t src[1024];
	for (unsigned i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)(0xa5 ^ i);
	memcpy(fake_host(&G, hdr + 16), src, 100);
	memcpy(fake_host(&G, d2), src + 100, 412);
	memcpy(fake_host(&G, d3), src + 512, 512);
	uint16_t head = fake_add(Q, { hdr, 116, false }, { d2, 412, false }, { d3, 512, false },
				 { st, 1, true });
	ck_assert_uint_eq(run1(head), 1);
	ck_assert_uint_eq(*fake_host(&G, st), VIRTIO_BLK_S_OK);

	uint8_t file[1024];
	read_file(5 * 512, file, sizeof(file));
	ck_assert_mem_eq(file, src, sizeof(src));
	uint8_t around[512];
	read_file(4 * 512, around, 512);
	for (unsigned i = 0; i < 512; i++)
		ck_assert_uint_eq(around[i], pat(4 * 512 + i));

	/* Back through the device, data and status sharing the last buffer. */
	uint64_t rh = fake_alloc(&G, 16), rd = fake_alloc(&G, 1025);
	put_hdr(rh, VIRTIO_BLK_T_IN, 5);
	head = fake_add(Q, { rh, 16, false }, { rd, 1025, true });
	ck_assert_uint_eq(run1(head), 1025);
	ck_assert_mem_eq(fake_host(&G, rd), src, 1024);
	ck_assert_uint_eq(*fake_host(&G, rd + 1024), VIRTIO_BLK_S_OK);
}
END_TEST

START_TEST(test_flush)
{
	expect(VIRTIO_BLK_T_FLUSH, 0, 0, VIRTIO_BLK_S_OK, 1);
}
END_TEST

START_TEST(test_get_id)
{
	struct req r = simple_req(VIRTIO_BLK_T_GET_ID, 0, VIRTIO_BLK_ID_BYTES);
	memset(fake_host(&G, r.data), 0xee, VIRTIO_BLK_ID_BYTES);
	ck_assert_uint_eq(run1(r.head), VIRTIO_BLK_ID_BYTES + 1);
	ck_assert_uint_eq(status_of(&r), VIRTIO_BLK_S_OK);
	char id[VIRTIO_BLK_ID_BYTES + 1] = { 0 };
	memcpy(id, fake_host(&G, r.data), VIRTIO_BLK_ID_BYTES);
	ck_assert_int_eq(strncmp(id, "mitos-", 6), 0);
	size_t n = strlen(id);
	ck_assert_uint_gt(n, 6);
	for (size_t i = n; i < VIRTIO_BLK_ID_BYTES; i++)
		ck_assert_uint_eq(id[i], 0);

	/* A short buffer gets a prefix, never more than it holds. */
	struct req s = simple_req(VIRTIO_BLK_T_GET_ID, 0, 8);
	memset(fake_host(&G, s.data), 0xee, 8 + 1);
	ck_assert_uint_eq(run1(s.head), 9);
	ck_assert_uint_eq(status_of(&s), VIRTIO_BLK_S_OK);
	ck_assert_mem_eq(fake_host(&G, s.data), id, 8);

	/* Same image, same id. */
	struct virtio_blk_opts o = { .path = img_path, .read_only = true };
	struct mitos_err e = { 0 };
	struct virtio_device *d2 = virtio_blk_create(&G.mem, 0xd0001000, 6, &o, &e);
	ck_assert_ptr_nonnull(d2);
	struct virtio_device *d1 = G.dev;
	G.dev = d2;
	negotiate(256);
	struct req t = simple_req(VIRTIO_BLK_T_GET_ID, 0, VIRTIO_BLK_ID_BYTES);
	run1(t.head);
	ck_assert_mem_eq(fake_host(&G, t.data), id, VIRTIO_BLK_ID_BYTES);
	G.dev = d1;
	virtio_blk_destroy(d2);
}
END_TEST

START_TEST(test_unsupported_type)
{
	expect(42, 0, 512, VIRTIO_BLK_S_UNSUPP, 1);
	expect(11 /* WRITE_ZEROES, not offered */, 0, 512, VIRTIO_BLK_S_UNSUPP, 1);
	ck_assert(file_is_pristine());
}
END_TEST

START_TEST(test_short_header)
{
	uint64_t hdr = fake_alloc(&G, 16), data = fake_alloc(&G, 512), st = fake_alloc(&G, 1);
	put_hdr(hdr, VIRTIO_BLK_T_IN, 0);
	*fake_host(&G, st) = 0xff;
	uint16_t head = fake_add(Q, { hdr, 8, false }, { data, 512, true }, { st, 1, true });
	ck_assert_uint_eq(run1(head), 1);
	ck_assert_uint_eq(*fake_host(&G, st), VIRTIO_BLK_S_IOERR);
	ck_assert(!fake_needs_reset(&G));
}
END_TEST

START_TEST(test_split_header)
{
	uint64_t hdr = fake_alloc(&G, 32), data = fake_alloc(&G, 512), st = fake_alloc(&G, 1);
	/* The header's 16 bytes at hdr, shown to the device as 5 + 11 from two places. */
	uint64_t tail = fake_alloc(&G, 16);
	put_hdr(hdr, VIRTIO_BLK_T_IN, 7);
	memcpy(fake_host(&G, tail), fake_host(&G, hdr + 5), 11);
	*fake_host(&G, st) = 0xff;
	uint16_t head = fake_add(Q, { hdr, 5, false }, { tail, 11, false }, { data, 512, true },
				 { st, 1, true });
	ck_assert_uint_eq(run1(head), 513);
	ck_assert_uint_eq(*fake_host(&G, st), VIRTIO_BLK_S_OK);
	check_pattern(data, 7 * 512, 512);
}
END_TEST

START_TEST(test_past_end)
{
	expect(VIRTIO_BLK_T_IN, IMG_SECTORS, 512, VIRTIO_BLK_S_IOERR, 1);
	expect(VIRTIO_BLK_T_IN, IMG_SECTORS - 1, 1024, VIRTIO_BLK_S_IOERR, 1);
	expect(VIRTIO_BLK_T_OUT, IMG_SECTORS, 512, VIRTIO_BLK_S_IOERR, 1);
	expect(VIRTIO_BLK_T_IN, IMG_SECTORS + 1, 0, VIRTIO_BLK_S_IOERR, 1);
	ck_assert(file_is_pristine());
}
END_TEST

START_TEST(test_sector_overflow)
{
	expect(VIRTIO_BLK_T_IN, UINT64_MAX, 512, VIRTIO_BLK_S_IOERR, 1);
	/* sector * 512 wraps to 0. */
	expect(VIRTIO_BLK_T_IN, (UINT64_MAX / 512) + 1, 512, VIRTIO_BLK_S_IOERR, 1);
	expect(VIRTIO_BLK_T_OUT, (UINT64_MAX / 512) + 1, 512, VIRTIO_BLK_S_IOERR, 1);
	expect(VIRTIO_BLK_T_OUT, UINT64_MAX, 512, VIRTIO_BLK_S_IOERR, 1);
	ck_assert(file_is_pristine());
}
END_TEST

START_TEST(test_unaligned_length)
{
	expect(VIRTIO_BLK_T_IN, 0, 100, VIRTIO_BLK_S_IOERR, 1);
	expect(VIRTIO_BLK_T_IN, 0, 513, VIRTIO_BLK_S_IOERR, 1);
	expect(VIRTIO_BLK_T_OUT, 0, 511, VIRTIO_BLK_S_IOERR, 1);
	ck_assert(file_is_pristine());
}
END_TEST

START_TEST(test_wrong_direction)
{
	/* IN whose data buffer is device-readable: only the status is writable. */
	uint64_t hdr = fake_alloc(&G, 16), data = fake_alloc(&G, 512), st = fake_alloc(&G, 1);
	put_hdr(hdr, VIRTIO_BLK_T_IN, 0);
	uint16_t head = fake_add(Q, { hdr, 16, false }, { data, 512, false }, { st, 1, true });
	ck_assert_uint_eq(run1(head), 1);
	ck_assert_uint_eq(*fake_host(&G, st), VIRTIO_BLK_S_IOERR);
	/* OUT whose data buffer is device-writable. */
	put_hdr(hdr, VIRTIO_BLK_T_OUT, 0);
	memset(fake_host(&G, data), 0, 512);
	head = fake_add(Q, { hdr, 16, false }, { data, 512, true }, { st, 1, true });
	ck_assert_uint_eq(run1(head), 1);
	ck_assert_uint_eq(*fake_host(&G, st), VIRTIO_BLK_S_IOERR);
	ck_assert(file_is_pristine());
}
END_TEST

START_TEST(test_read_only)
{
	fake_w32(&G, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	ck_assert(fake_r32(&G, VIRTIO_MMIO_DEVICE_FEATURES) & (1u << VIRTIO_BLK_F_RO));
	struct req w = simple_req(VIRTIO_BLK_T_OUT, 2, 512);
	memset(fake_host(&G, w.data), 0x5a, 512);
	ck_assert_uint_eq(run1(w.head), 1);
	ck_assert_uint_eq(status_of(&w), VIRTIO_BLK_S_IOERR);
	/* Reads and flushes still work. */
	struct req r = simple_req(VIRTIO_BLK_T_IN, 2, 512);
	ck_assert_uint_eq(run1(r.head), 513);
	ck_assert_uint_eq(status_of(&r), VIRTIO_BLK_S_OK);
	check_pattern(r.data, 2 * 512, 512);
	expect(VIRTIO_BLK_T_FLUSH, 0, 0, VIRTIO_BLK_S_OK, 1);
	ck_assert(file_is_pristine());
}
END_TEST

START_TEST(test_missing_status)
{
	/* Nothing device-writable: no status byte to report through. */
	uint64_t hdr = fake_alloc(&G, 16), data = fake_alloc(&G, 512);
	put_hdr(hdr, VIRTIO_BLK_T_OUT, 0);
	memset(fake_host(&G, data), 0x77, 512);
	uint16_t head = fake_add(Q, { hdr, 16, false }, { data, 512, false });
	ck_assert_uint_eq(run1(head), 0);
	ck_assert(!fake_needs_reset(&G));
	ck_assert(file_is_pristine());
	/* The queue still works. */
	expect(VIRTIO_BLK_T_FLUSH, 0, 0, VIRTIO_BLK_S_OK, 1);
}
END_TEST

START_TEST(test_buffer_outside_ram)
{
	uint64_t hdr = fake_alloc(&G, 16), st = fake_alloc(&G, 1);
	put_hdr(hdr, VIRTIO_BLK_T_IN, 0);
	fake_add(Q, { hdr, 16, false }, { RAM_SIZE - 100, 512, true }, { st, 1, true });
	fake_kick(Q);
	ck_assert(fake_needs_reset(&G));
	ck_assert_uint_eq(fake_used_idx(Q), 0);
	/* Further kicks are ignored until the driver resets; then the device works again. */
	fake_kick(Q);
	for (int i = 0; i < 3; i++)
		fake_device_poll(&G, 50);
	ck_assert_uint_eq(fake_used_idx(Q), 0);
	negotiate(256);
	ck_assert(!fake_needs_reset(&G));
	struct req r = simple_req(VIRTIO_BLK_T_IN, 1, 512);
	ck_assert_uint_eq(run1(r.head), 513);
	check_pattern(r.data, 512, 512);
}
END_TEST

START_TEST(test_zero_length)
{
	expect(VIRTIO_BLK_T_IN, 0, 0, VIRTIO_BLK_S_OK, 1);
	expect(VIRTIO_BLK_T_OUT, IMG_SECTORS, 0, VIRTIO_BLK_S_OK, 1);
	/* Empty descriptors between real ones are skipped. */
	uint64_t hdr = fake_alloc(&G, 16), data = fake_alloc(&G, 512), st = fake_alloc(&G, 1);
	put_hdr(hdr, VIRTIO_BLK_T_IN, 9);
	uint16_t head = fake_add(Q, { hdr, 16, false }, { data, 0, true }, { data, 512, true },
				 { st, 0, true }, { st, 1, true });
	ck_assert_uint_eq(run1(head), 513);
	ck_assert_uint_eq(*fake_host(&G, st), VIRTIO_BLK_S_OK);
	check_pattern(data, 9 * 512, 512);
	ck_assert(file_is_pristine());
}
END_TEST

START_TEST(test_indirect)
{
	uint64_t hdr = fake_alloc(&G, 16), data = fake_alloc(&G, 1024), st = fake_alloc(&G, 1);
	put_hdr(hdr, VIRTIO_BLK_T_IN, 20);
	struct fake_buf t[] = { { hdr, 16, false }, { data, 1024, true }, { st, 1, true } };
	ck_assert_uint_eq(run1(fake_queue_add_indirect(Q, t, 3)), 1025);
	ck_assert_uint_eq(*fake_host(&G, st), VIRTIO_BLK_S_OK);
	check_pattern(data, 20 * 512, 1024);
}
END_TEST

START_TEST(test_batch)
{
	/* 32 writes to sectors 0..31 and 32 reads of sectors 64..95, one kick. */
	struct req reqs[64];
	for (unsigned i = 0; i < 64; i++) {
		bool w = i % 2 == 0;
		uint64_t sector = w ? i / 2 : 64 + i / 2;
		reqs[i] = simple_req(w ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, sector, 512);
		if (w)
			memset(fake_host(&G, reqs[i].data), (int)i, 512);
	}
	fake_kick(Q);
	fake_wait_used(Q, 64);
	bool seen[64] = { false };
	for (uint16_t u = 0; u < 64; u++) {
		uint32_t id, len;
		fake_used_elem(Q, u, &id, &len);
		unsigned i = 0;
		while (i < 64 && reqs[i].head != id)
			i++;
		ck_assert_uint_lt(i, 64);
		ck_assert(!seen[i]);
		seen[i] = true;
		ck_assert_uint_eq(len, i % 2 == 0 ? 1 : 513);
	}
	for (unsigned i = 0; i < 64; i++) {
		ck_assert_uint_eq(status_of(&reqs[i]), VIRTIO_BLK_S_OK);
		if (i % 2) {
			check_pattern(reqs[i].data, (64 + i / 2) * 512, 512);
		} else {
			uint8_t buf[512];
			read_file(i / 2 * 512, buf, 512);
			for (unsigned j = 0; j < 512; j++)
				ck_assert_uint_eq(buf[j], i);
		}
	}
}
END_TEST

START_TEST(test_inflight_cap)
{
	/* A driver that republishes a chain still in flight: the device must stop at the
	 * queue size and resume when completions free slots. */
	negotiate(4);
	uint64_t hdr = fake_alloc(&G, 16), data = fake_alloc(&G, 513);
	put_hdr(hdr, VIRTIO_BLK_T_IN, 1);
	uint16_t head = fake_add(Q, { hdr, 16, false }, { data, 513, true });
	for (int i = 0; i < 3; i++)
		fake_avail_put(Q, head);
	fake_kick(Q);
	ck_assert_uint_eq(G.dev->vqs[0].last_avail_idx, 4);
	for (int i = 0; i < 4; i++)
		fake_avail_put(Q, head);
	fake_kick(Q);
	ck_assert_uint_eq(G.dev->vqs[0].last_avail_idx, 4);
	fake_wait_used(Q, 8);
	ck_assert_uint_eq(G.dev->vqs[0].last_avail_idx, 8);
	check_pattern(data, 512, 512);
	ck_assert_uint_eq(*fake_host(&G, data + 512), VIRTIO_BLK_S_OK);
}
END_TEST

START_TEST(test_short_read)
{
	/* The image shrinks under the device: the read comes back short, the rest is asked
	 * for again, hits end of file and fails. */
	int fd = open(img_path, O_WRONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 100 * 512 + 256), 0);
	close(fd);
	uint64_t hdr = fake_alloc(&G, 16), d1 = fake_alloc(&G, 512), d2 = fake_alloc(&G, 512);
	uint64_t st = fake_alloc(&G, 1);
	put_hdr(hdr, VIRTIO_BLK_T_IN, 99);
	uint16_t head = fake_add(Q, { hdr, 16, false }, { d1, 512, true }, { d2, 512, true },
				 { st, 1, true });
	ck_assert_uint_eq(run1(head), 512 + 256 + 1);
	ck_assert_uint_eq(*fake_host(&G, st), VIRTIO_BLK_S_IOERR);
	check_pattern(d1, 99 * 512, 512);
	check_pattern(d2, 100 * 512, 256);
}
END_TEST

START_TEST(test_reset_with_io_in_flight)
{
	for (unsigned i = 0; i < 32; i++)
		simple_req(VIRTIO_BLK_T_IN, i, 4096 - 512 * (i % 8 == 7));
	fake_kick(Q);
	fake_w32(&G, VIRTIO_MMIO_STATUS, 0);
	ck_assert_uint_eq(fake_used_idx(Q), 0);
	fake_device_poll(&G, 50);
	negotiate(256);
	struct req r = simple_req(VIRTIO_BLK_T_IN, 4, 512);
	ck_assert_uint_eq(run1(r.head), 513);
	check_pattern(r.data, 4 * 512, 512);
	/* And destroy (teardown) with I/O in flight. */
	for (unsigned i = 0; i < 16; i++)
		simple_req(VIRTIO_BLK_T_IN, i, 512);
	fake_kick(Q);
}
END_TEST

static void expect_create_fails(const char *path, bool read_only)
{
	struct virtio_blk_opts o = { .path = path, .read_only = read_only };
	struct mitos_err e = { 0 };
	ck_assert_ptr_null(virtio_blk_create(&G.mem, 0xd0001000, 6, &o, &e));
	ck_assert_int_lt(e.code, 0);
	ck_assert_uint_gt(strlen(e.msg), 0);
}

START_TEST(test_create_errors)
{
	expect_create_fails("/nonexistent/mitos.img", false);
	expect_create_fails("/tmp", true);
	char odd[] = "/tmp/mitos-blk-odd-XXXXXX";
	int fd = mkstemp(odd);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 1000), 0);
	close(fd);
	expect_create_fails(odd, false);
	unlink(odd);
}
END_TEST

/* A disk handed over open: the device reads it through its own copy of the
 * descriptor (the caller's may close at once), never by path; a read-only
 * descriptor serves only a read-only disk. */
START_TEST(test_by_descriptor)
{
	struct mitos_err e = { 0 };
	int fd = open(img_path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	struct virtio_blk_opts rw = { .path = "/nonexistent/named-only.img", .has_fd = true, .fd = fd };
	ck_assert_ptr_null(virtio_blk_create(&G.mem, 0xd0001000, 6, &rw, &e));
	ck_assert_int_eq(e.code, -EBADF);
	ck_assert_msg(strstr(e.msg, "not open for writing"), "%s", e.msg);

	struct virtio_blk_opts ro = rw;
	ro.read_only = true;
	struct virtio_device *d = virtio_blk_create(&G.mem, 0xd0001000, 6, &ro, &e);
	ck_assert_msg(d != NULL, "%s", e.msg);
	close(fd);
	ck_assert_uint_eq(virtio_blk_bytes(d), IMG_BYTES);
	struct virtio_device *mine = G.dev;
	G.dev = d;
	negotiate(256);
	struct req r = simple_req(VIRTIO_BLK_T_IN, 5, 512);
	ck_assert_uint_eq(run1(r.head), 513);
	ck_assert_uint_eq(status_of(&r), VIRTIO_BLK_S_OK);
	check_pattern(r.data, 5 * 512, 512);
	G.dev = mine;
	virtio_blk_destroy(d);

	/* A closed descriptor is an error, not a disk. */
	ck_assert_ptr_null(virtio_blk_create(&G.mem, 0xd0001000, 6, &ro, &e));
	ck_assert_int_eq(e.code, -EBADF);
}
END_TEST

/* The device's io_uring is locked down: a process that takes over the VMM cannot
 * register anything more on it (a personality, files), and its requests are
 * limited to the disk (a restriction the kernel applies; registering is the part a
 * test can reach without the ring's memory). */
START_TEST(test_ring_locked_down)
{
	DIR *d = opendir("/proc/self/fd");
	ck_assert_ptr_nonnull(d);
	unsigned rings = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		char link[300], target[64];
		snprintf(link, sizeof(link), "/proc/self/fd/%s", de->d_name);
		ssize_t n = readlink(link, target, sizeof(target) - 1);
		if (n <= 0)
			continue;
		target[n] = 0;
		if (strcmp(target, "anon_inode:[io_uring]"))
			continue;
		rings++;
		int fd = atoi(de->d_name);
		ck_assert_int_eq(io_uring_register(fd, IORING_REGISTER_PERSONALITY, NULL, 0), -EACCES);
		int other = open("/dev/null", O_RDONLY);
		ck_assert_int_eq(io_uring_register(fd, IORING_REGISTER_FILES_UPDATE, &other, 1), -EACCES);
		close(other);
	}
	closedir(d);
	ck_assert_uint_eq(rings, 1);
}
END_TEST

static Suite *virtio_blk_suite(void)
{
	Suite *s = suite_create("virtio_blk");
	TCase *rw = tcase_create("rw");
	tcase_add_checked_fixture(rw, setup_rw, teardown);
	tcase_set_timeout(rw, 30);
	tcase_add_test(rw, test_identity_and_config);
	tcase_add_test(rw, test_by_descriptor);
	tcase_add_test(rw, test_read);
	tcase_add_test(rw, test_write_read_back);
	tcase_add_test(rw, test_flush);
	tcase_add_test(rw, test_get_id);
	tcase_add_test(rw, test_unsupported_type);
	tcase_add_test(rw, test_short_header);
	tcase_add_test(rw, test_split_header);
	tcase_add_test(rw, test_past_end);
	tcase_add_test(rw, test_sector_overflow);
	tcase_add_test(rw, test_unaligned_length);
	tcase_add_test(rw, test_wrong_direction);
	tcase_add_test(rw, test_missing_status);
	tcase_add_test(rw, test_buffer_outside_ram);
	tcase_add_test(rw, test_zero_length);
	tcase_add_test(rw, test_indirect);
	tcase_add_test(rw, test_batch);
	tcase_add_test(rw, test_inflight_cap);
	tcase_add_test(rw, test_short_read);
	tcase_add_test(rw, test_reset_with_io_in_flight);
	tcase_add_test(rw, test_create_errors);
	tcase_add_test(rw, test_ring_locked_down);
	suite_add_tcase(s, rw);

	TCase *ro = tcase_create("read_only");
	tcase_add_checked_fixture(ro, setup_ro, teardown);
	tcase_set_timeout(ro, 30);
	tcase_add_test(ro, test_read_only);
	suite_add_tcase(s, ro);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(virtio_blk_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
