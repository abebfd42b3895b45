#include "virtq.h"

#include <errno.h>
#include <string.h>

struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

/* Ring sizes from the spec: avail = 4 + 2*size + 2, used = 4 + 8*size + 2. */
static uint64_t avail_bytes(uint16_t size) { return 6 + 2ULL * size; }
static uint64_t used_bytes(uint16_t size) { return 6 + 8ULL * size; }

static uint16_t *avail_field(const struct virtq *q, const struct guest_mem *m, uint64_t off)
{
	return guest_mem_ptr(m, q->avail_gpa + off, 2);
}

static void *used_field(const struct virtq *q, const struct guest_mem *m, uint64_t off,
			uint64_t len)
{
	return guest_mem_ptr(m, q->used_gpa + off, len);
}

int virtq_validate(const struct virtq *q, const struct guest_mem *m)
{
	if (q->size == 0 || q->size > VIRTQ_MAX_SIZE || (q->size & (q->size - 1)))
		return -EINVAL;
	if (!guest_mem_ptr(m, q->desc_gpa, 16ULL * q->size) ||
	    !guest_mem_ptr(m, q->avail_gpa, avail_bytes(q->size)) ||
	    !guest_mem_ptr(m, q->used_gpa, used_bytes(q->size)))
		return -EINVAL;
	/* Alignment required by the spec; also keeps the 16/32-bit atomics below aligned. */
	if ((q->desc_gpa & 15) || (q->avail_gpa & 1) || (q->used_gpa & 3))
		return -EINVAL;
	return 0;
}

static int chain_add(struct virtq_chain *c, const struct guest_mem *m,
		     const struct vring_desc *d)
{
	bool writable = d->flags & VIRTQ_DESC_F_WRITE;
	if (c->nbufs == VIRTQ_MAX_CHAIN)
		return -EINVAL;
	/* Device-readable buffers come first (spec 2.7.4.2). */
	if (!writable && c->nbufs != c->nreadable)
		return -EINVAL;
	uint8_t *host = guest_mem_ptr(m, d->addr, d->len);
	if (!host)
		return -EINVAL;
	c->bufs[c->nbufs++] = (struct virtq_buf){
		.host = host, .gpa = d->addr, .len = d->len, .writable = writable };
	if (writable)
		c->writable_len += d->len;
	else {
		c->nreadable++;
		c->readable_len += d->len;
	}
	return 0;
}

/* Walks one descriptor table (the ring's own, or an indirect one) from index `idx`. */
static int walk_table(struct virtq_chain *c, const struct guest_mem *m,
		      const struct vring_desc *table, uint32_t n, uint16_t idx, bool indirect)
{
	for (uint32_t steps = 0;; steps++) {
		if (idx >= n || steps >= n)   /* out of the table, or a loop */
			return -EINVAL;
		struct vring_desc d;
		memcpy(&d, &table[idx], sizeof(d));
		if (d.flags & VIRTQ_DESC_F_INDIRECT) {
			/* No nested tables, no NEXT beside INDIRECT, whole entries only. */
			if (indirect || (d.flags & VIRTQ_DESC_F_NEXT) || d.len == 0 ||
			    (d.len % sizeof(struct vring_desc)) ||
			    d.len / sizeof(struct vring_desc) > VIRTQ_MAX_CHAIN)
				return -EINVAL;
			const struct vring_desc *ind = guest_mem_ptr(m, d.addr, d.len);
			if (!ind || (d.addr & 7))
				return -EINVAL;
			return walk_table(c, m, ind, d.len / sizeof(struct vring_desc), 0, true);
		}
		int r = chain_add(c, m, &d);
		if (r)
			return r;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		idx = d.next;
	}
}

int virtq_pop(struct virtq *q, const struct guest_mem *m, struct virtq_chain *c)
{
	if (!q->ready)
		return 0;
	uint16_t *avail_idx_p = avail_field(q, m, 2);
	if (!avail_idx_p)
		return -EINVAL;
	uint16_t avail_idx = __atomic_load_n(avail_idx_p, __ATOMIC_ACQUIRE);
	if (avail_idx == q->last_avail_idx)
		return 0;
	if ((uint16_t)(avail_idx - q->last_avail_idx) > q->size)
		return -EINVAL;
	uint16_t *slot = avail_field(q, m, 4 + 2ULL * (q->last_avail_idx % q->size));
	if (!slot)
		return -EINVAL;
	uint16_t head = *slot;
	const struct vring_desc *table = guest_mem_ptr(m, q->desc_gpa, 16ULL * q->size);
	if (!table)
		return -EINVAL;
	c->head = head;
	c->nbufs = c->nreadable = 0;
	c->readable_len = c->writable_len = 0;
	int r = walk_table(c, m, table, q->size, head, false);
	if (r)
		return r;
	q->last_avail_idx++;
	return 1;
}

int virtq_push_n(struct virtq *q, const struct guest_mem *m, const struct virtq_used_elem *e,
		 unsigned n)
{
	if (!q->ready || q->size == 0)   /* reset under a late completion */
		return -EINVAL;
	if (n > q->size)
		return -EINVAL;
	uint16_t *idx = used_field(q, m, 2, 2);
	if (!idx)
		return -EINVAL;
	for (unsigned i = 0; i < n; i++) {
		uint16_t slot = (uint16_t)(q->used_idx + i) % q->size;
		uint32_t *elem = used_field(q, m, 4 + 8ULL * slot, 8);
		if (!elem)
			return -EINVAL;
		elem[0] = e[i].id;
		elem[1] = e[i].len;
	}
	q->used_idx = (uint16_t)(q->used_idx + n);
	/* The elements must be visible before the index that publishes them. */
	__atomic_store_n(idx, q->used_idx, __ATOMIC_RELEASE);
	return 0;
}

int virtq_push(struct virtq *q, const struct guest_mem *m, uint16_t head, uint32_t len)
{
	struct virtq_used_elem e = { .id = head, .len = len };
	return virtq_push_n(q, m, &e, 1);
}

bool virtq_should_notify(struct virtq *q, const struct guest_mem *m)
{
	/* Order our used->idx store before reading the driver's suppression fields. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	uint16_t old = q->signalled_used, now = q->used_idx;
	bool valid = q->signalled_used_valid;
	q->signalled_used = now;
	q->signalled_used_valid = true;
	if (!q->event_idx) {
		uint16_t *flags = avail_field(q, m, 0);
		return !flags || !(__atomic_load_n(flags, __ATOMIC_ACQUIRE) & VIRTQ_AVAIL_F_NO_INTERRUPT);
	}
	if (!valid)
		return true;
	uint16_t *ue = avail_field(q, m, 4 + 2ULL * q->size);
	if (!ue)
		return true;
	uint16_t used_event = __atomic_load_n(ue, __ATOMIC_ACQUIRE);
	/* vring_need_event(): did we move past used_event since the last signal? */
	return (uint16_t)(now - used_event - 1) < (uint16_t)(now - old);
}

bool virtq_arm_and_recheck(struct virtq *q, const struct guest_mem *m)
{
	if (!q->ready)
		return false;
	if (q->event_idx) {
		uint16_t *ae = used_field(q, m, 4 + 8ULL * q->size, 2);
		if (ae)
			__atomic_store_n(ae, q->last_avail_idx, __ATOMIC_RELEASE);
	}
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	uint16_t *avail_idx_p = avail_field(q, m, 2);
	return avail_idx_p && __atomic_load_n(avail_idx_p, __ATOMIC_ACQUIRE) != q->last_avail_idx;
}

unsigned virtq_chain_iov(const struct virtq_chain *c, bool writable, uint64_t off, uint64_t len,
			struct iovec *iov)
{
	unsigned n = 0;
	for (unsigned i = 0; i < c->nbufs && len; i++) {
		const struct virtq_buf *b = &c->bufs[i];
		if (b->writable != writable)
			continue;
		if (off >= b->len) {
			off -= b->len;
			continue;
		}
		uint64_t take = b->len - off < len ? b->len - off : len;
		iov[n++] = (struct iovec){ .iov_base = b->host + off, .iov_len = take };
		len -= take;
		off = 0;
	}
	return n;
}

uint64_t virtq_chain_read(const struct virtq_chain *c, uint64_t off, void *dst, uint64_t len)
{
	struct iovec iov[VIRTQ_MAX_CHAIN];
	unsigned n = virtq_chain_iov(c, false, off, len, iov);
	uint64_t done = 0;
	for (unsigned i = 0; i < n; i++) {
		memcpy((uint8_t *)dst + done, iov[i].iov_base, iov[i].iov_len);
		done += iov[i].iov_len;
	}
	return done;
}

uint64_t virtq_chain_write(const struct virtq_chain *c, uint64_t off, const void *src, uint64_t len)
{
	struct iovec iov[VIRTQ_MAX_CHAIN];
	unsigned n = virtq_chain_iov(c, true, off, len, iov);
	uint64_t done = 0;
	for (unsigned i = 0; i < n; i++) {
		memcpy(iov[i].iov_base, (const uint8_t *)src + done, iov[i].iov_len);
		done += iov[i].iov_len;
	}
	return done;
}
