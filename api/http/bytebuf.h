/* A growable byte buffer drained from the front: bytes a handler holds for a
 * peer that is not ready to take them yet. */
#ifndef MITOS_API_BYTEBUF_H
#define MITOS_API_BYTEBUF_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Returns p grown to hold need bytes when *cap is short, else p. The capacity
 * doubles from first, so a buffer filled piece by piece is copied O(log n)
 * times. NULL when out of memory (p and *cap untouched). */
static inline void *buf_reserve(void *p, size_t *cap, size_t need, size_t first)
{
	if (need <= *cap)
		return p;
	size_t c = *cap ? *cap : first;
	while (c < need)
		c *= 2;
	void *np = realloc(p, c);
	if (np)
		*cap = c;
	return np;
}

struct bytebuf {
	uint8_t *p;
	size_t off, len, cap; /* p[off..len) is pending */
};

/* Returns 0 or -ENOMEM (nothing added). */
int bytebuf_add(struct bytebuf *b, const void *p, size_t n);
static inline int bytebuf_str(struct bytebuf *b, const char *s) { return bytebuf_add(b, s, strlen(s)); }
static inline size_t bytebuf_pending(const struct bytebuf *b) { return b->len - b->off; }
void bytebuf_free(struct bytebuf *b);

#endif
