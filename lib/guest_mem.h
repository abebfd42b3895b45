/* Guest RAM: one host mapping, split into at most two guest-physical regions around the
 * 32-bit MMIO hole. Every guest-supplied address goes through guest_mem_ptr(), which
 * refuses ranges that are not wholly inside one region. */
#ifndef MITOS_GUEST_MEM_H
#define MITOS_GUEST_MEM_H

#include <stdbool.h>
#include <stdint.h>

#define GUEST_MEM_MAX_REGIONS 2

struct guest_mem_region {
	uint64_t gpa;
	uint64_t size;
	uint8_t *host;
};

struct guest_mem {
	uint8_t *base;   /* host mapping of all RAM, regions back to back */
	uint64_t size;   /* bytes of RAM */
	unsigned nregions;
	struct guest_mem_region regions[GUEST_MEM_MAX_REGIONS];
	bool owned;      /* guest_mem_free() unmaps base */
};

/* Lays the regions out over an existing host buffer of `size` bytes (tests use this with
 * a malloc'd buffer; restore uses it with a MAP_PRIVATE view of a memory file). */
void guest_mem_layout(struct guest_mem *m, uint8_t *base, uint64_t size);

/* Anonymous, zero-filled RAM of `size` bytes (a multiple of 4 KiB). */
int guest_mem_alloc(struct guest_mem *m, uint64_t size);
void guest_mem_free(struct guest_mem *m);

/* Host pointer for [gpa, gpa+len) or NULL when any byte of it is not guest RAM.
 * len 0 is valid (returns the pointer for gpa if gpa is inside a region or at its end). */
void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len);

/* Bounds-checked copies; 0 or -EFAULT. */
int guest_mem_read(const struct guest_mem *m, uint64_t gpa, void *dst, uint64_t len);
int guest_mem_write(const struct guest_mem *m, uint64_t gpa, const void *src, uint64_t len);

#endif
