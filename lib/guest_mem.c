#include "lib/guest_mem.h"
#include "lib/layout.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

void guest_mem_layout(struct guest_mem *m, uint8_t *base, uint64_t size)
{
	memset(m, 0, sizeof(*m));
	m->base = base;
	m->size = size;
	uint64_t low = size < LAYOUT_MMIO_HOLE_START ? size : LAYOUT_MMIO_HOLE_START;
	m->regions[0] = (struct guest_mem_region){ .gpa = 0, .size = low, .host = base };
	m->nregions = 1;
	if (size > low) {
		m->regions[1] = (struct guest_mem_region){
			.gpa = LAYOUT_MMIO_HOLE_END, .size = size - low, .host = base + low };
		m->nregions = 2;
	}
}

int guest_mem_alloc(struct guest_mem *m, uint64_t size)
{
	if (size == 0 || (size & 0xfff))
		return -EINVAL;
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	/* Guest RAM is mostly cold; transparent huge pages would make a fork copy 2 MiB on
	 * the first write to a page, so keep it at 4 KiB granularity. */
	madvise(p, size, MADV_NOHUGEPAGE);
	guest_mem_layout(m, p, size);
	m->owned = true;
	return 0;
}

void guest_mem_free(struct guest_mem *m)
{
	if (m->owned && m->base)
		munmap(m->base, m->size);
	memset(m, 0, sizeof(*m));
}

void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	for (unsigned i = 0; i < m->nregions; i++) {
		const struct guest_mem_region *r = &m->regions[i];
		if (gpa < r->gpa)
			continue;
		uint64_t off = gpa - r->gpa;
		/* Written so that no sum can overflow: off <= size, then len <= size - off. */
		if (off > r->size || len > r->size - off)
			continue;
		return r->host + off;
	}
	return NULL;
}

int guest_mem_read(const struct guest_mem *m, uint64_t gpa, void *dst, uint64_t len)
{
	const void *p = guest_mem_ptr(m, gpa, len);
	if (!p)
		return -EFAULT;
	memcpy(dst, p, len);
	return 0;
}

int guest_mem_write(const struct guest_mem *m, uint64_t gpa, const void *src, uint64_t len)
{
	void *p = guest_mem_ptr(m, gpa, len);
	if (!p)
		return -EFAULT;
	memcpy(p, src, len);
	return 0;
}
