#include "fake_driver.h"

#ifdef FAKE_DRIVER_PLAIN_ASSERT
/* Outside a Check runner (the fuzz targets): Check's asserts report to a runner even
 * when they pass, so plain ones stand in; a failing one is a crash, a finding. */
#include <assert.h>
#define ck_assert(c) assert(c)
#define ck_assert_msg(c, ...) assert(c)
#define ck_assert_ptr_nonnull(p) assert((p) != NULL)
#define ck_assert_uint_eq(a, b) assert((a) == (b))
#define ck_assert_uint_le(a, b) assert((a) <= (b))
#define ck_assert_uint_lt(a, b) assert((a) < (b))
#else
#include <check.h>
#endif
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Page 0 stays unused, so that address 0 is never a buffer by accident. */
#define HEAP_GPA 0x1000ULL

void fake_guest_init(struct fake_guest *g, uint64_t ram_size)
{
	memset(g, 0, sizeof(*g));
	g->ram = aligned_alloc(4096, ram_size);
	ck_assert_ptr_nonnull(g->ram);
	memset(g->ram, 0, ram_size);
	g->ram_size = ram_size;
	guest_mem_layout(&g->mem, g->ram, ram_size);
	g->brk = HEAP_GPA;
}

void fake_guest_free(struct fake_guest *g)
{
	free(g->ram);
	g->ram = NULL;
}

uint8_t *fake_host(struct fake_guest *g, uint64_t gpa)
{
	return g->ram + gpa;
}

uint64_t fake_alloc(struct fake_guest *g, uint64_t len)
{
	uint64_t gpa = g->brk;
	g->brk += (len + 15) & ~15ULL;
	ck_assert_uint_le(g->brk, g->ram_size);
	return gpa;
}

uint32_t fake_r32(struct fake_guest *g, uint64_t off)
{
	uint32_t v;
	virtio_mmio_read(g->dev, off, &v, 4);
	return v;
}

void fake_w32(struct fake_guest *g, uint64_t off, uint32_t v)
{
	virtio_mmio_write(g->dev, off, &v, 4);
}

bool fake_needs_reset(struct fake_guest *g)
{
	return fake_r32(g, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET;
}

/* ---- bring-up ------------------------------------------------------------------------- */

void fake_ack(struct fake_guest *g)
{
	fake_w32(g, VIRTIO_MMIO_STATUS, 0);
	fake_w32(g, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	fake_w32(g, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
}

static uint64_t device_features(struct fake_guest *g)
{
	fake_w32(g, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint64_t lo = fake_r32(g, VIRTIO_MMIO_DEVICE_FEATURES);
	fake_w32(g, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	return lo | (uint64_t)fake_r32(g, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
}

void fake_write_features(struct fake_guest *g, uint64_t f)
{
	fake_w32(g, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	fake_w32(g, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)f);
	fake_w32(g, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	fake_w32(g, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(f >> 32));
	fake_w32(g, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
		 VIRTIO_STATUS_FEATURES_OK);
}

void fake_queue_setup(struct fake_guest *g, unsigned index, uint32_t num, uint64_t desc,
		      uint64_t avail, uint64_t used)
{
	fake_w32(g, VIRTIO_MMIO_QUEUE_SEL, index);
	fake_w32(g, VIRTIO_MMIO_QUEUE_NUM, num);
	fake_w32(g, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
	fake_w32(g, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
	fake_w32(g, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (uint32_t)avail);
	fake_w32(g, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (uint32_t)(avail >> 32));
	fake_w32(g, VIRTIO_MMIO_QUEUE_USED_LOW, (uint32_t)used);
	fake_w32(g, VIRTIO_MMIO_QUEUE_USED_HIGH, (uint32_t)(used >> 32));
	fake_w32(g, VIRTIO_MMIO_QUEUE_READY, 1);
}

struct fake_queue *fake_queue_alloc(struct fake_guest *g, unsigned index, uint16_t size)
{
	ck_assert_uint_lt(index, VIRTIO_MAX_QUEUES);
	ck_assert_uint_le(size, VIRTQ_MAX_SIZE);
	struct fake_queue *q = &g->q[index];
	memset(q, 0, sizeof(*q));
	q->g = g;
	q->index = index;
	q->size = size;
	/* flags, idx, ring[size] and the EVENT_IDX word behind it. */
	q->desc = fake_alloc(g, 16ULL * size);
	q->avail = fake_alloc(g, 6 + 2ULL * size);
	q->used = fake_alloc(g, 6 + 8ULL * size);
	memset(fake_host(g, q->desc), 0, g->brk - q->desc);
	return q;
}

void fake_negotiate(struct fake_guest *g, uint64_t want, unsigned nqueues, uint16_t size,
		    uint16_t num_max)
{
	fake_ack(g);
	fake_write_features(g, device_features(g) & (want | 1ULL << VIRTIO_F_VERSION_1));
	uint32_t st = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
	ck_assert_uint_eq(fake_r32(g, VIRTIO_MMIO_STATUS), st);
	for (unsigned i = 0; i < nqueues; i++) {
		struct fake_queue *q = fake_queue_alloc(g, i, size);
		fake_w32(g, VIRTIO_MMIO_QUEUE_SEL, i);
		ck_assert_uint_eq(fake_r32(g, VIRTIO_MMIO_QUEUE_NUM_MAX), num_max);
		fake_queue_setup(g, i, size, q->desc, q->avail, q->used);
		ck_assert_uint_eq(fake_r32(g, VIRTIO_MMIO_QUEUE_READY), 1);
	}
	fake_w32(g, VIRTIO_MMIO_STATUS, st | VIRTIO_STATUS_DRIVER_OK);
	ck_assert(virtio_device_active(g->dev));
}

/* ---- the rings ---------------------------------------------------------------------- */

void fake_desc_write(struct fake_guest *g, uint64_t gpa, uint64_t addr, uint32_t len,
		     uint16_t flags, uint16_t next)
{
	uint8_t *p = fake_host(g, gpa);
	memcpy(p, &addr, 8);
	memcpy(p + 8, &len, 4);
	memcpy(p + 12, &flags, 2);
	memcpy(p + 14, &next, 2);
}

void fake_desc_put(struct fake_queue *q, uint16_t idx, uint64_t addr, uint32_t len,
		   uint16_t flags, uint16_t next)
{
	q->buf[idx] = (struct fake_buf){ addr, len, flags & VIRTQ_DESC_F_WRITE };
	fake_desc_write(q->g, q->desc + 16ULL * idx, addr, len, flags, next);
}

void fake_avail_put(struct fake_queue *q, uint16_t head)
{
	uint16_t *ring = (uint16_t *)fake_host(q->g, q->avail + 4);
	ring[q->avail_idx % q->size] = head;
	q->avail_idx++;
}

/* Claims n consecutive descriptors for a chain; a driver that overran the ring would
 * overwrite chains the device still holds. */
static uint16_t claim(struct fake_queue *q, unsigned n)
{
	ck_assert_uint_le(q->in_flight + n, q->size);
	uint16_t head = q->next_desc;
	q->next_desc = (uint16_t)((head + n) % q->size);
	q->in_flight = (uint16_t)(q->in_flight + n);
	q->chain_len[head] = (uint16_t)n;
	return head;
}

static uint16_t chain_flags(const struct fake_buf *b, unsigned i, unsigned n)
{
	return (uint16_t)((b[i].w ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
}

uint16_t fake_queue_add(struct fake_queue *q, const struct fake_buf *b, unsigned n)
{
	uint16_t head = claim(q, n);
	for (unsigned i = 0; i < n; i++) {
		uint16_t idx = (uint16_t)((head + i) % q->size);
		fake_desc_put(q, idx, b[i].gpa, b[i].len, chain_flags(b, i, n),
			      (uint16_t)((idx + 1) % q->size));
	}
	fake_avail_put(q, head);
	return head;
}

uint16_t fake_queue_add_indirect(struct fake_queue *q, const struct fake_buf *b, unsigned n)
{
	uint64_t table = fake_alloc(q->g, 16ULL * n);
	for (unsigned i = 0; i < n; i++)
		fake_desc_write(q->g, table + 16ULL * i, b[i].gpa, b[i].len, chain_flags(b, i, n),
				(uint16_t)(i + 1 < n ? i + 1 : 0));
	uint16_t head = claim(q, 1);
	fake_desc_put(q, head, table, 16 * n, VIRTQ_DESC_F_INDIRECT, 0);
	fake_avail_put(q, head);
	return head;
}

/* The three spans, in the order of the input. */
static void queue_spans(struct fake_queue *q, uint64_t area, size_t area_len, uint64_t gpa[3], size_t len[3])
{
	gpa[0] = q->desc, len[0] = 16u * q->size;
	gpa[1] = q->avail, len[1] = 6u + 2u * q->size;
	gpa[2] = area, len[2] = area_len;
}

void fake_queue_overwrite(struct fake_queue *q, uint64_t area, size_t area_len, const uint8_t *p, size_t n)
{
	uint64_t gpa[3];
	size_t len[3];
	queue_spans(q, area, area_len, gpa, len);
	for (int i = 0; i < 3 && n; i++) {
		size_t k = n < len[i] ? n : len[i];
		memcpy(fake_host(q->g, gpa[i]), p, k);
		p += k, n -= k;
	}
}

size_t fake_queue_dump(struct fake_queue *q, uint64_t area, size_t area_len, uint8_t *out)
{
	uint64_t gpa[3];
	size_t len[3], n = 0;
	queue_spans(q, area, area_len, gpa, len);
	for (int i = 0; i < 3; i++) {
		memcpy(out + n, fake_host(q->g, gpa[i]), len[i]);
		n += len[i];
	}
	return n;
}

void fake_publish(struct fake_queue *q)
{
	__atomic_store_n((uint16_t *)fake_host(q->g, q->avail + 2), q->avail_idx,
			 __ATOMIC_RELEASE);
}

void fake_kick(struct fake_queue *q)
{
	fake_publish(q);
	virtio_device_kick(q->g->dev, q->index);
}

uint16_t fake_used_idx(struct fake_queue *q)
{
	return __atomic_load_n((uint16_t *)fake_host(q->g, q->used + 2), __ATOMIC_ACQUIRE);
}

void fake_used_elem(struct fake_queue *q, uint16_t i, uint32_t *id, uint32_t *len)
{
	uint32_t *e = (uint32_t *)fake_host(q->g, q->used + 4 + 8ULL * (i % q->size));
	*id = e[0];
	*len = e[1];
}

bool fake_used_next(struct fake_queue *q, struct fake_chain *c)
{
	if (fake_used_idx(q) == q->used_seen)
		return false;
	uint32_t id;
	fake_used_elem(q, q->used_seen++, &id, &c->len);
	ck_assert_msg(id < q->size && q->chain_len[id], "used id %u: no chain of ours", id);
	c->head = (uint16_t)id;
	c->n = q->chain_len[id];
	q->in_flight = (uint16_t)(q->in_flight - c->n);
	q->chain_len[id] = 0;
	return true;
}

void fake_chain_read(const struct fake_queue *q, const struct fake_chain *c, void *dst,
		     size_t max)
{
	ck_assert_uint_le(c->len, max);
	uint32_t done = 0;
	for (unsigned k = 0; k < c->n && done < c->len; k++) {
		const struct fake_buf *b = &q->buf[(c->head + k) % q->size];
		uint32_t n = c->len - done < b->len ? c->len - done : b->len;
		if (b->w) {
			memcpy((uint8_t *)dst + done, fake_host(q->g, b->gpa), n);
			done += n;
		}
	}
	ck_assert_msg(done == c->len, "used len %u, but the chain holds %u", c->len, done);
}

uint16_t *fake_used_event(struct fake_queue *q)
{
	return (uint16_t *)fake_host(q->g, q->avail + 4 + 2ULL * q->size);
}

uint16_t *fake_avail_event(struct fake_queue *q)
{
	return (uint16_t *)fake_host(q->g, q->used + 4 + 8ULL * q->size);
}

/* ---- the device loop ------------------------------------------------------------------- */

uint64_t fake_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

bool fake_wait_fd(int fd, short events, int ms)
{
	struct pollfd p = { .fd = fd, .events = events };
	return poll(&p, 1, ms) == 1;
}

bool fake_device_poll(struct fake_guest *g, int ms)
{
	int fd;
	ck_assert_uint_eq(g->dev->ops->host_fds(g->dev, &fd, 1), 1);
	if (!fake_wait_fd(fd, POLLIN, ms))
		return false;
	virtio_device_host_fd_ready(g->dev, 0);
	return true;
}

void fake_wait_used(struct fake_queue *q, uint16_t target)
{
	uint64_t t0 = fake_ms();
	while (fake_used_idx(q) != target) {
		ck_assert_msg(fake_ms() - t0 < 5000, "used idx of queue %u stuck at %u, want %u",
			      q->index, fake_used_idx(q), target);
		fake_device_poll(q->g, 50);
	}
}
