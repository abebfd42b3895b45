/* Fixed-capacity byte ring: the bounded buffer between a file descriptor and a
 * stream. Storage is allocated on first write so idle processes cost nothing. */
#ifndef MITOS_AGENT_RING_H
#define MITOS_AGENT_RING_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct ring {
	uint8_t *buf;
	size_t cap, head, len;
};

void ring_init(struct ring *r, size_t cap);
void ring_free(struct ring *r);
static inline size_t ring_used(const struct ring *r) { return r->len; }
static inline size_t ring_space(const struct ring *r) { return r->cap - r->len; }
/* Copies as much as fits; returns the count copied (0 also when out of memory). */
size_t ring_write(struct ring *r, const void *p, size_t n);
/* Appends all of p, discarding the oldest bytes to make room; returns bytes lost. */
size_t ring_write_overwrite(struct ring *r, const void *p, size_t n);
/* The longest contiguous readable run at the front. */
size_t ring_peek(const struct ring *r, const uint8_t **p);
void ring_consume(struct ring *r, size_t n);
/* One read() into free space: >0 bytes, 0 at EOF, -errno (-EAGAIN, -ENOBUFS when full). */
ssize_t ring_read_fd(struct ring *r, int fd);
/* One write() from the front: bytes written or -errno. */
ssize_t ring_write_fd(struct ring *r, int fd);

#endif
