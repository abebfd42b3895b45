/* Fuzz target: a split virtqueue as a hostile driver lays it out (devices/virtq.c):
 * the queue size, where the rings are, and every byte of guest RAM under them
 * (descriptors with any address, length, flags and links, indirect tables, ring
 * indices). Every chain the device accepts must lie wholly inside guest RAM, with
 * the readable buffers before the writable ones. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "devices/virtq.h"
#include "tests/fuzz/fuzz.h"

#define RAM (64u << 10)
#define HDR 12

static uint64_t rd16(const uint8_t *p)
{
	return (uint64_t)p[0] | (uint64_t)p[1] << 8;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < HDR)
		return 0;
	static uint8_t *ram;
	if (!ram && !(ram = aligned_alloc(4096, RAM)))
		return 0;
	memset(ram, 0, RAM);
	memcpy(ram, data + HDR, size - HDR < RAM ? size - HDR : RAM);
	struct guest_mem m;
	guest_mem_layout(&m, ram, RAM);
	struct virtq q = { .ready = true };
	/* Sizes 1..512; ring addresses anywhere in and a little past RAM (2-byte steps). */
	q.size = (uint16_t)(1u << (data[0] % 10));
	q.desc_gpa = rd16(data + 1) * 2;
	q.avail_gpa = rd16(data + 3) * 2;
	q.used_gpa = rd16(data + 5) * 2;
	q.event_idx = data[7] & 1;
	q.last_avail_idx = (uint16_t)rd16(data + 8);
	q.used_idx = q.last_avail_idx;
	if (virtq_validate(&q, &m))
		return 0;
	static struct virtq_chain c;
	for (unsigned i = 0; i < 2u * q.size + 2; i++) {
		int rc = virtq_pop(&q, &m, &c);
		if (rc <= 0)
			break;
		assert(c.nbufs <= VIRTQ_MAX_CHAIN && c.nreadable <= c.nbufs && c.head < q.size);
		uint64_t rl = 0, wl = 0;
		for (unsigned b = 0; b < c.nbufs; b++) {
			const struct virtq_buf *vb = &c.bufs[b];
			assert(vb->host >= ram && vb->host + vb->len <= ram + RAM);
			assert(vb->host == guest_mem_ptr(&m, vb->gpa, vb->len));
			assert(vb->writable == (b >= c.nreadable));
			*(vb->writable ? &wl : &rl) += vb->len;
			if (vb->writable && vb->len) /* the device writes what it may */
				vb->host[vb->len - 1] ^= 0x5a;
		}
		assert(rl == c.readable_len && wl == c.writable_len);
		if (virtq_push(&q, &m, c.head, (uint32_t)(wl > UINT32_MAX ? UINT32_MAX : wl)))
			break;
		(void)virtq_should_notify(&q, &m);
	}
	(void)virtq_arm_and_recheck(&q, &m);
	return 0;
}

/* Queues of 8 with their rings packed into the first KiB (so mutations land on
 * them): a readable and a writable buffer linked directly, and the same through an
 * indirect table. */
void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	static uint8_t in[HDR + 0x400];
	for (int indirect = 0; indirect < 2; indirect++) {
		memset(in, 0, sizeof(in));
		in[0] = 3;               /* size 8 */
		in[3] = 0x80;            /* avail at 0x100 (0x80 * 2) */
		in[5] = 0x00; in[6] = 0x01; /* used at 0x200 */
		uint8_t *ram = in + HDR;
		uint64_t a0 = 0x300, a1 = 0x340, t = 0x380;
		uint8_t *d = indirect ? ram + t : ram; /* where the linked pair lives */
		memcpy(d + 0, &a0, 8); d[8] = 16; d[12] = VIRTQ_DESC_F_NEXT; d[14] = 1;
		memcpy(d + 16, &a1, 8); d[24] = 48; d[28] = VIRTQ_DESC_F_WRITE;
		if (indirect) { /* desc[0] points at the 2-entry table */
			memcpy(ram, &t, 8); ram[8] = 32; ram[12] = VIRTQ_DESC_F_INDIRECT;
		}
		ram[0x102] = 1; /* avail idx 1, ring[0] = 0 */
		add(in, sizeof(in));
	}
}
