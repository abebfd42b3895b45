/* A fake guest for the virtio device tests: RAM behind a struct guest_mem, and a driver
 * that talks to a device only the way Linux's virtio_mmio and virtio_ring do, through the
 * transport registers and split rings in that RAM, so that the device code under test
 * cannot tell it from a real guest. Failures are Check assertions in the calling test. */
#ifndef MITOS_TESTS_FAKE_DRIVER_H
#define MITOS_TESTS_FAKE_DRIVER_H

#include <stdbool.h>
#include <stdint.h>

#include "devices/virtio_mmio.h"
#include "lib/guest_mem.h"

/* One buffer of a chain, device-writable when w. */
struct fake_buf {
	uint64_t gpa;
	uint32_t len;
	bool w;
};

/* The driver's side of one split virtqueue. Chains take consecutive descriptors, so tests
 * know which head a chain gets; the driver never trusts the rings for what it put there:
 * buf[] keeps every descriptor as written (Linux's desc_extra). */
struct fake_queue {
	struct fake_guest *g;
	unsigned index;
	uint16_t size;
	uint64_t desc, avail, used;
	uint16_t next_desc;
	uint16_t avail_idx;      /* the device sees it at fake_publish() or fake_kick() */
	uint16_t used_seen;      /* the next used entry fake_used_next() takes */
	uint16_t in_flight;      /* descriptors of chains not yet taken back */
	uint16_t chain_len[VIRTQ_MAX_SIZE];   /* by head; 0: not in flight */
	struct fake_buf buf[VIRTQ_MAX_SIZE];
};

struct fake_guest {
	uint8_t *ram;
	uint64_t ram_size;
	struct guest_mem mem;
	uint64_t brk;
	struct virtio_device *dev;   /* behind the registers; the test creates and sets it */
	struct fake_queue q[VIRTIO_MAX_QUEUES];
};

/* A chain the device handed back. */
struct fake_chain {
	uint16_t head, n;
	uint32_t len;   /* what the device says it wrote */
};

void fake_guest_init(struct fake_guest *g, uint64_t ram_size);
void fake_guest_free(struct fake_guest *g);
uint8_t *fake_host(struct fake_guest *g, uint64_t gpa);
/* Fresh, 16-byte aligned guest memory; never reused, so buffers a device still holds
 * after a reset stay intact. */
uint64_t fake_alloc(struct fake_guest *g, uint64_t len);

uint32_t fake_r32(struct fake_guest *g, uint64_t off);
void fake_w32(struct fake_guest *g, uint64_t off, uint32_t v);
bool fake_needs_reset(struct fake_guest *g);

/* Bring-up, virtio 1.2 section 3.1.1. fake_negotiate() is all of it, checked at every
 * step: the device features that `want` names (VERSION_1 always), `nqueues` queues of
 * `size` on fresh rings, each of which must report QueueNumMax `num_max`. The steps
 * alone let a test leave the path: fake_ack() resets and sets ACKNOWLEDGE | DRIVER,
 * fake_write_features() writes exactly `f` and sets FEATURES_OK, and
 * fake_queue_setup() programs one queue with any addresses. */
void fake_negotiate(struct fake_guest *g, uint64_t want, unsigned nqueues, uint16_t size,
		    uint16_t num_max);
void fake_ack(struct fake_guest *g);
void fake_write_features(struct fake_guest *g, uint64_t f);
void fake_queue_setup(struct fake_guest *g, unsigned index, uint32_t num, uint64_t desc,
		      uint64_t avail, uint64_t used);
/* Fresh zeroed rings and driver state for g->q[index], without telling the device. */
struct fake_queue *fake_queue_alloc(struct fake_guest *g, unsigned index, uint16_t size);

/* Adds a chain of n buffers and makes it available (the device sees it at fake_kick());
 * returns its head. */
uint16_t fake_queue_add(struct fake_queue *q, const struct fake_buf *b, unsigned n);
/* fake_add(q, { gpa, len, w }, ...): the same with the buffers written in place. */
#define fake_add(q, ...)                                                        \
	fake_queue_add((q), (const struct fake_buf[]){ __VA_ARGS__ },          \
		       sizeof((const struct fake_buf[]){ __VA_ARGS__ }) / sizeof(struct fake_buf))
/* The same chain behind one VIRTQ_DESC_F_INDIRECT descriptor. */
uint16_t fake_queue_add_indirect(struct fake_queue *q, const struct fake_buf *b, unsigned n);

/* What a misbehaving driver does: any descriptor anywhere, any head made available. */
void fake_desc_write(struct fake_guest *g, uint64_t gpa, uint64_t addr, uint32_t len,
		     uint16_t flags, uint16_t next);
void fake_desc_put(struct fake_queue *q, uint16_t idx, uint64_t addr, uint32_t len,
		   uint16_t flags, uint16_t next);
void fake_avail_put(struct fake_queue *q, uint16_t head);
/* The fuzz targets' hostile driver: q's descriptor table, then its available ring, then
 * area_len bytes at area, overwritten with p (as far as n goes); and the reverse, those
 * bytes of a queue a seed laid out, into out (which has room for them all). */
void fake_queue_overwrite(struct fake_queue *q, uint64_t area, size_t area_len, const uint8_t *p, size_t n);
size_t fake_queue_dump(struct fake_queue *q, uint64_t area, size_t area_len, uint8_t *out);

void fake_publish(struct fake_queue *q);
void fake_kick(struct fake_queue *q);

uint16_t fake_used_idx(struct fake_queue *q);
/* Entry i of the used ring, whether or not the driver took it. */
void fake_used_elem(struct fake_queue *q, uint16_t i, uint32_t *id, uint32_t *len);
/* Takes the next used chain back, as virtqueue_get_buf() does; false when there is none. */
bool fake_used_next(struct fake_queue *q, struct fake_chain *c);
/* Copies what the device wrote into c's writable buffers to dst (at most max bytes). */
void fake_chain_read(const struct fake_queue *q, const struct fake_chain *c, void *dst,
		     size_t max);
/* The EVENT_IDX words: used_event in the avail ring, avail_event in the used ring. */
uint16_t *fake_used_event(struct fake_queue *q);
uint16_t *fake_avail_event(struct fake_queue *q);

/* The device loop, as the VMM runs it: poll the device's host fd for up to ms and hand
 * it to the device when readable; returns whether it was. */
bool fake_device_poll(struct fake_guest *g, int ms);
/* Runs the device loop until q's used index reaches target, for at most 5 s. */
void fake_wait_used(struct fake_queue *q, uint16_t target);
bool fake_wait_fd(int fd, short events, int ms);
uint64_t fake_ms(void);

#endif
