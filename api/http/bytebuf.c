#include "api/http/bytebuf.h"

#include <errno.h>

int bytebuf_add(struct bytebuf *b, const void *p, size_t n)
{
	if (!n)
		return 0;
	if (b->off && b->off == b->len)
		b->off = b->len = 0;
	if (b->len + n > b->cap) {
		if (b->off) {
			memmove(b->p, b->p + b->off, b->len - b->off);
			b->len -= b->off;
			b->off = 0;
		}
		uint8_t *np = buf_reserve(b->p, &b->cap, b->len + n, 4096);
		if (!np)
			return -ENOMEM;
		b->p = np;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

void bytebuf_free(struct bytebuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}
