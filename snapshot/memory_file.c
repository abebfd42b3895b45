#include "memory_file.h"
#include "snapshot_open.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define PM_PRESENT   (1ULL << 63)
#define PM_SWAPPED   (1ULL << 62)
#define PM_FILE      (1ULL << 61)  /* page-cache page (or shared anon): not ours alone */
#define PAGEMAP_BATCH 4096

struct extents_header {
	char magic[8];
	uint32_t version;
	uint32_t reserved;
	uint64_t page_size;
	uint64_t mem_size;
	uint64_t count;
};

static int add_page(struct mem_extents *x, uint64_t *cap, uint64_t page)
{
	if (x->n && x->e[x->n - 1].first_page + x->e[x->n - 1].npages == page) {
		x->e[x->n - 1].npages++;
		return 0;
	}
	if (x->n == *cap) {
		uint64_t ncap = *cap ? *cap * 2 : 256;
		struct mem_extent *p = realloc(x->e, ncap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		x->e = p;
		*cap = ncap;
	}
	x->e[x->n++] = (struct mem_extent){ .first_page = page, .npages = 1 };
	return 0;
}

int memory_dirty_extents(const struct guest_mem *m, struct mem_extents *x, struct mitos_err *e)
{
	memset(x, 0, sizeof(*x));
	x->mem_size = m->size;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return mitos_err_set(e, -errno, "/proc/self/pagemap: %s", strerror(errno));
	uint64_t npages = m->size / MEMORY_PAGE, cap = 0;
	uint64_t first_vpage = (uintptr_t)m->base / MEMORY_PAGE;
	uint64_t *pm = malloc(PAGEMAP_BATCH * sizeof(uint64_t));
	int r = pm ? 0 : -ENOMEM;
	for (uint64_t p = 0; !r && p < npages; p += PAGEMAP_BATCH) {
		uint64_t n = npages - p < PAGEMAP_BATCH ? npages - p : PAGEMAP_BATCH;
		ssize_t got = pread(fd, pm, n * 8, (off_t)((first_vpage + p) * 8));
		if (got != (ssize_t)(n * 8)) {
			r = got < 0 ? -errno : -EIO;
			break;
		}
		for (uint64_t i = 0; i < n && !r; i++) {
			/* Private (anonymous or swapped) pages are exactly what was written since
			 * the mapping was made: all touched RAM for a booted VM, the changes since
			 * restore for a VM mapped from snapshot files. */
			bool private = (pm[i] & PM_SWAPPED) || ((pm[i] & PM_PRESENT) && !(pm[i] & PM_FILE));
			if (private)
				r = add_page(x, &cap, p + i);
		}
	}
	free(pm);
	close(fd);
	if (r) {
		memory_extents_free(x);
		return mitos_err_set(e, r, "reading /proc/self/pagemap: %s", strerror(-r));
	}
	return 0;
}

static int write_all_at(int fd, const uint8_t *p, uint64_t n, uint64_t off)
{
	while (n) {
		ssize_t w = pwrite(fd, p, n > (1U << 30) ? (1U << 30) : n, (off_t)off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (uint64_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

static int open_in(const char *dir, const char *name, int flags, char *path, size_t plen)
{
	if (snprintf(path, plen, "%s/%s", dir, name) >= (int)plen)
		return -ENAMETOOLONG;
	if (flags == O_RDONLY)
		return snapshot_open_read(path);
	int fd = open(path, flags | O_CLOEXEC, 0444);
	return fd < 0 ? -errno : fd;
}

static int write_extents(const char *dir, const struct mem_extents *x, struct mitos_err *e)
{
	char path[4096];
	struct extents_header h = { .version = MEMORY_EXTENTS_VERSION, .page_size = MEMORY_PAGE,
				    .mem_size = x->mem_size, .count = x->n };
	memcpy(h.magic, MEMORY_EXTENTS_MAGIC, 8);
	uLong c = crc32(0L, Z_NULL, 0);
	c = crc32(c, (const Bytef *)&h, sizeof(h));
	/* Not for a layer without changed pages: crc32() of a NULL buffer restarts at 0. */
	if (x->n)
		c = crc32(c, (const Bytef *)x->e, (uInt)(x->n * sizeof(struct mem_extent)));
	uint32_t crc = (uint32_t)c;
	int fd = open_in(dir, MEMORY_EXTENTS_NAME, O_WRONLY | O_CREAT | O_TRUNC, path, sizeof(path));
	if (fd < 0)
		return mitos_err_set(e, fd, "%s/%s: %s", dir, MEMORY_EXTENTS_NAME, strerror(-fd));
	uint64_t elen = x->n * sizeof(struct mem_extent);
	int r = write_all_at(fd, (const uint8_t *)&h, sizeof(h), 0);
	if (!r)
		r = write_all_at(fd, (const uint8_t *)x->e, elen, sizeof(h));
	if (!r)
		r = write_all_at(fd, (const uint8_t *)&crc, sizeof(crc), sizeof(h) + elen);
	if (!r && fsync(fd))
		r = -errno;
	close(fd);
	return r ? mitos_err_set(e, r, "%s: %s", path, strerror(-r)) : 0;
}

int memory_file_write(const char *dir, const struct guest_mem *m, const struct mem_extents *x,
		      struct mitos_err *e)
{
	char path[4096];
	int fd = open_in(dir, MEMORY_FILE_NAME, O_WRONLY | O_CREAT | O_TRUNC, path, sizeof(path));
	if (fd < 0)
		return mitos_err_set(e, fd, "%s/%s: %s", dir, MEMORY_FILE_NAME, strerror(-fd));
	int r = ftruncate(fd, (off_t)m->size) ? -errno : 0;
	/* RAM is one host mapping, so file offset == offset from the mapping's base. */
	for (uint64_t i = 0; !r && i < x->n; i++) {
		uint64_t off = x->e[i].first_page * MEMORY_PAGE, len = x->e[i].npages * MEMORY_PAGE;
		r = write_all_at(fd, m->base + off, len, off);
	}
	if (!r && fsync(fd))
		r = -errno;
	close(fd);
	if (r)
		return mitos_err_set(e, r, "%s: %s", path, strerror(-r));
	return write_extents(dir, x, e);
}

int memory_extents_parse(const char *name, const uint8_t *buf, size_t len, struct mem_extents *x,
			 struct mitos_err *e)
{
	struct extents_header h;
	memset(x, 0, sizeof(*x));
	if (len < sizeof(h) + 4)
		return mitos_err_set(e, -EINVAL, "%s: truncated (%zu bytes)", name, len);
	memcpy(&h, buf, sizeof(h));
	if (memcmp(h.magic, MEMORY_EXTENTS_MAGIC, 8))
		return mitos_err_set(e, -EINVAL, "%s: not a Mitos memory extents file (bad magic)", name);
	if (h.version != MEMORY_EXTENTS_VERSION)
		return mitos_err_set(e, -EINVAL, "%s: format version %u, this mitos-vmm reads version %u",
				     name, h.version, MEMORY_EXTENTS_VERSION);
	if (h.count > MEMORY_MAX_EXTENTS || len != sizeof(h) + h.count * sizeof(struct mem_extent) + 4)
		return mitos_err_set(e, -EINVAL, "%s: %s (%llu extents in %zu bytes)", name,
				     h.count > MEMORY_MAX_EXTENTS ? "too many extents" : "wrong size",
				     (unsigned long long)h.count, len);
	uint32_t want;
	memcpy(&want, buf + len - 4, 4);
	if (want != (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, (uInt)(len - 4)))
		return mitos_err_set(e, -EINVAL, "%s: CRC mismatch: the file is corrupt", name);
	if (h.page_size != MEMORY_PAGE || !h.mem_size || h.mem_size % MEMORY_PAGE)
		return mitos_err_set(e, -EINVAL, "%s: page size %llu or memory size %llu unsupported",
				     name, (unsigned long long)h.page_size, (unsigned long long)h.mem_size);
	x->e = malloc(h.count ? h.count * sizeof(struct mem_extent) : 1);
	if (!x->e)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	memcpy(x->e, buf + sizeof(h), h.count * sizeof(struct mem_extent));
	x->n = h.count;
	x->mem_size = h.mem_size;
	/* Sorted, non-empty, non-overlapping, inside RAM: checked without overflow. */
	uint64_t npages = h.mem_size / MEMORY_PAGE, next = 0;
	for (uint64_t i = 0; i < x->n; i++) {
		const struct mem_extent *ex = &x->e[i];
		if (ex->npages == 0 || ex->first_page < next || ex->first_page >= npages ||
		    ex->npages > npages - ex->first_page) {
			memory_extents_free(x);
			return mitos_err_set(e, -EINVAL, "%s: extent %llu is out of order or outside RAM",
					     name, (unsigned long long)i);
		}
		next = ex->first_page + ex->npages;
	}
	return 0;
}

int memory_extents_read(const char *path, struct mem_extents *x, struct mitos_err *e)
{
	int fd = snapshot_open_read(path);
	if (fd < 0)
		return mitos_err_set(e, fd, "%s: %s", path, fd == -EINVAL ? "not a regular file" : strerror(-fd));
	struct stat st;
	size_t max = sizeof(struct extents_header) + MEMORY_MAX_EXTENTS * sizeof(struct mem_extent) + 4;
	if (fstat(fd, &st) || (uint64_t)st.st_size > max) {
		close(fd);
		return mitos_err_set(e, -EINVAL, "%s: unreadable or too large", path);
	}
	uint8_t *buf = malloc((size_t)st.st_size + 1);
	ssize_t got = buf ? pread(fd, buf, (size_t)st.st_size, 0) : -1;
	close(fd);
	int r = got == st.st_size ? memory_extents_parse(path, buf, (size_t)got, x, e) :
		mitos_err_set(e, -EIO, "%s: short read", path);
	free(buf);
	return r;
}

void memory_extents_free(struct mem_extents *x)
{
	free(x->e);
	memset(x, 0, sizeof(*x));
}

static int map_file(uint8_t *at, uint64_t len, int fd, uint64_t off, bool fixed)
{
	void *p = mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE | (fixed ? MAP_FIXED : 0),
		       fd, (off_t)off);
	return p == MAP_FAILED ? -errno : 0;
}

int memory_chain_fits(const char *top, const struct mem_extents *layers, unsigned nlayers, uint64_t max_maps,
		      struct mitos_err *e)
{
	uint64_t extents = 0;
	for (unsigned i = 0; i < nlayers; i++)
		extents += layers[i].n;
	if (2 * extents + 1 <= max_maps)
		return 0;
	return mitos_err_set(e, -E2BIG, "%s: its %u layers hold %llu memory extents, up to %llu mappings, "
			     "more than the %llu this host lets a VM process make (vm.max_map_count less %u "
			     "for the VMM itself): fork from a snapshot with fewer changed layers above it "
			     "(a fresh template), or raise vm.max_map_count", top, nlayers,
			     (unsigned long long)extents, (unsigned long long)(2 * extents + 1),
			     (unsigned long long)max_maps, MEMORY_MAP_HEADROOM);
}

/* vm.max_map_count less the VMM's own (the kernel's default when it cannot be read). */
static uint64_t host_max_maps(void)
{
	uint64_t v = 65530;
	int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
	char buf[32];
	ssize_t k = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (k > 0) {
		buf[k] = 0;
		v = strtoull(buf, NULL, 10);
	}
	return v > MEMORY_MAP_HEADROOM ? v - MEMORY_MAP_HEADROOM : 0;
}

int memory_map_chain(struct guest_mem *m, uint8_t *at, uint64_t size, char *const *dirs,
		     unsigned n, struct mitos_err *e)
{
	char path[4096];
	uint8_t *base = NULL;
	/* Every layer's extents, read once: counted before anything is mapped, then mapped. */
	struct mem_extents *xs = n > 1 ? calloc(n - 1, sizeof(*xs)) : NULL;
	if (n > 1 && !xs)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	int r = 0;
	for (unsigned i = 1; i < n && !r; i++) {
		snprintf(path, sizeof(path), "%s/%s", dirs[i], MEMORY_EXTENTS_NAME);
		r = memory_extents_read(path, &xs[i - 1], e);
	}
	if (!r && n > 1)
		r = memory_chain_fits(dirs[n - 1], xs, n - 1, host_max_maps(), e);
	for (unsigned i = 0; i < n && !r; i++) {
		int fd = open_in(dirs[i], MEMORY_FILE_NAME, O_RDONLY, path, sizeof(path));
		if (fd < 0) {
			r = mitos_err_set(e, fd, "%s/%s: %s", dirs[i], MEMORY_FILE_NAME, strerror(-fd));
			break;
		}
		struct stat st;
		if (fstat(fd, &st))
			r = mitos_err_set(e, -errno, "%s: %s", path, strerror(errno));
		else if ((uint64_t)st.st_size != size)
			r = mitos_err_set(e, -EINVAL, "%s: %lld bytes, but the snapshot's RAM is %llu bytes",
					  path, (long long)st.st_size, (unsigned long long)size);
		if (r) {
			close(fd);
			break;
		}
		if (i == 0) {
			base = mmap(at, size, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_NORESERVE | (at ? MAP_FIXED : 0), fd, 0);
			if (base == MAP_FAILED) {
				r = mitos_err_set(e, -errno, "%s: mmap: %s", path, strerror(errno));
				base = NULL;
			}
		} else {
			const struct mem_extents *x = &xs[i - 1];
			if (x->mem_size != size)
				r = mitos_err_set(e, -EINVAL, "%s/%s: RAM size %llu differs from its base's %llu", dirs[i],
						  MEMORY_EXTENTS_NAME, (unsigned long long)x->mem_size,
						  (unsigned long long)size);
			for (uint64_t k = 0; !r && k < x->n; k++) {
				uint64_t off = x->e[k].first_page * MEMORY_PAGE;
				r = map_file(base + off, x->e[k].npages * MEMORY_PAGE, fd, off, true);
				if (r)
					mitos_err_set(e, r, "%s/%s: mmap: %s", dirs[i], MEMORY_FILE_NAME,
						      strerror(-r));
			}
		}
		close(fd);
	}
	for (unsigned i = 0; xs && i < n - 1; i++)
		memory_extents_free(&xs[i]);
	free(xs);
	if (r) {
		/* A reservation stays reserved (the caller owns it) but holds nothing now. */
		if (base && at)
			mmap(at, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
		else if (base)
			munmap(base, size);
		return r;
	}
	if (!at) {
		guest_mem_layout(m, base, size);
		m->owned = true;
	}
	return 0;
}
