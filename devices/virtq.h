/* Split virtqueue, device side (virtio 1.2 section 2.7). Everything the driver wrote is
 * untrusted: indices, descriptor addresses, lengths and links are checked before use,
 * and a malformed chain makes virtq_pop() fail so the device can ask for a reset. */
#ifndef MITOS_VIRTQ_H
#define MITOS_VIRTQ_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "lib/guest_mem.h"

#define VIRTQ_DESC_F_NEXT      1
#define VIRTQ_DESC_F_WRITE     2
#define VIRTQ_DESC_F_INDIRECT  4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY     1

/* Longest chain a device accepts, direct or through an indirect table. Devices advertise
 * limits below it (virtio-blk seg_max). */
#define VIRTQ_MAX_CHAIN 256
#define VIRTQ_MAX_SIZE 1024

struct virtq_buf {
	uint8_t *host;  /* checked: [host, host+len) is guest RAM */
	uint64_t gpa;
	uint32_t len;
	bool writable;  /* device writes it (VIRTQ_DESC_F_WRITE) */
};

struct virtq_chain {
	uint16_t head;
	unsigned nbufs;
	unsigned nreadable;   /* bufs[0..nreadable) are device-readable, the rest writable */
	uint64_t readable_len;
	uint64_t writable_len;
	struct virtq_buf bufs[VIRTQ_MAX_CHAIN];
};

struct virtq {
	/* Set by the driver through the transport. */
	uint16_t size;
	bool ready;
	uint64_t desc_gpa, avail_gpa, used_gpa;
	/* Negotiated. */
	bool event_idx;
	/* Device-side progress; saved in snapshots. */
	uint16_t last_avail_idx;
	uint16_t used_idx;
	uint16_t signalled_used;     /* used_idx at the last interrupt we sent */
	bool signalled_used_valid;
};

/* Checks that the rings the driver configured lie in guest RAM; 0 or -EINVAL. */
int virtq_validate(const struct virtq *q, const struct guest_mem *m);

/* 1 and a chain, 0 when the driver has made nothing available, -EINVAL when the ring or
 * the chain is malformed (the queue must not be used again until reset). */
int virtq_pop(struct virtq *q, const struct guest_mem *m, struct virtq_chain *c);

/* Returns a chain with `len` bytes written into its writable buffers. */
int virtq_push(struct virtq *q, const struct guest_mem *m, uint16_t head, uint32_t len);

struct virtq_used_elem {
	uint32_t id;    /* head of the chain */
	uint32_t len;   /* bytes written into its writable buffers */
};
/* Returns n (at most the queue size) chains at once: the used index moves after all of
 * their elements are written, so the driver sees all of them or none (the buffers of one
 * mergeable receive frame must arrive together). */
int virtq_push_n(struct virtq *q, const struct guest_mem *m, const struct virtq_used_elem *e,
		 unsigned n);

/* Whether the driver wants an interrupt for what was pushed since the last one
 * (VIRTQ_AVAIL_F_NO_INTERRUPT, or used_event under VIRTIO_RING_F_EVENT_IDX). */
bool virtq_should_notify(struct virtq *q, const struct guest_mem *m);

/* Before the device stops polling: publish where it wants the next kick (avail_event)
 * and report whether more buffers arrived meanwhile (then keep polling). */
bool virtq_arm_and_recheck(struct virtq *q, const struct guest_mem *m);

/* iovecs for up to `len` bytes of the chain's writable (or readable) buffers, starting
 * `off` bytes into that part; iov must hold VIRTQ_MAX_CHAIN entries. Returns how many. */
unsigned virtq_chain_iov(const struct virtq_chain *c, bool writable, uint64_t off, uint64_t len,
			 struct iovec *iov);

/* Copies up to `len` bytes of the chain's readable part starting at `off` into dst;
 * returns the number copied. */
uint64_t virtq_chain_read(const struct virtq_chain *c, uint64_t off, void *dst, uint64_t len);
/* Copies into the writable part starting at `off` (offset within the writable bytes). */
uint64_t virtq_chain_write(const struct virtq_chain *c, uint64_t off, const void *src, uint64_t len);

#endif
