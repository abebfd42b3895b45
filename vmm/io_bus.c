#include "io_bus.h"

#include <errno.h>
#include <string.h>

int io_bus_add(struct io_bus *b, uint64_t base, uint64_t len, io_handler_fn fn, void *ctx)
{
	if (len == 0 || base + len < base)
		return -EINVAL;
	for (unsigned i = 0; i < b->n; i++) {
		const struct io_range *r = &b->ranges[i];
		if (base < r->base + r->len && r->base < base + len)
			return -EEXIST;
	}
	if (b->n == IO_BUS_MAX_RANGES)
		return -ENOSPC;
	b->ranges[b->n++] = (struct io_range){ .base = base, .len = len, .fn = fn, .ctx = ctx };
	return 0;
}

bool io_bus_access(const struct io_bus *b, uint64_t addr, bool is_write, void *data, unsigned len)
{
	for (unsigned i = 0; i < b->n; i++) {
		const struct io_range *r = &b->ranges[i];
		if (addr >= r->base && addr - r->base < r->len && len <= r->len - (addr - r->base)) {
			r->fn(r->ctx, addr - r->base, is_write, data, len);
			return true;
		}
	}
	if (!is_write)
		memset(data, 0xff, len);
	return false;
}
