/* Dispatch of guest port I/O and MMIO exits to the device that owns the address. */
#ifndef MITOS_IO_BUS_H
#define MITOS_IO_BUS_H

#include <stdbool.h>
#include <stdint.h>

#define IO_BUS_MAX_RANGES 32

/* `off` is relative to the range's base; reads fill data[0..len). */
typedef void (*io_handler_fn)(void *ctx, uint64_t off, bool is_write, void *data, unsigned len);

struct io_range {
	uint64_t base, len;
	io_handler_fn fn;
	void *ctx;
};

struct io_bus {
	unsigned n;
	struct io_range ranges[IO_BUS_MAX_RANGES];
};

/* 0, -EEXIST when it overlaps a registered range, -ENOSPC when the bus is full,
 * -EINVAL for an empty or wrapping range. */
int io_bus_add(struct io_bus *b, uint64_t base, uint64_t len, io_handler_fn fn, void *ctx);

/* False when nobody owns [addr, addr+len); reads then see all ones, as on real buses. */
bool io_bus_access(const struct io_bus *b, uint64_t addr, bool is_write, void *data, unsigned len);

#endif
