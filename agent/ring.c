#include "agent/ring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void ring_init(struct ring *r, size_t cap)
{
	r->buf = NULL;
	r->cap = cap;
	r->head = r->len = 0;
}

void ring_free(struct ring *r)
{
	free(r->buf);
	r->buf = NULL;
	r->head = r->len = 0;
}

static int ensure_buf(struct ring *r)
{
	if (!r->buf)
		r->buf = malloc(r->cap);
	return r->buf ? 0 : -ENOMEM;
}

size_t ring_write(struct ring *r, const void *p, size_t n)
{
	if (n > ring_space(r))
		n = ring_space(r);
	if (!n || ensure_buf(r))
		return 0;
	size_t tail = (r->head + r->len) % r->cap;
	size_t first = r->cap - tail < n ? r->cap - tail : n;
	memcpy(r->buf + tail, p, first);
	memcpy(r->buf, (const uint8_t *)p + first, n - first);
	r->len += n;
	return n;
}

size_t ring_write_overwrite(struct ring *r, const void *p, size_t n)
{
	size_t lost = 0;
	if (n > r->cap) {
		lost = n - r->cap;
		p = (const uint8_t *)p + lost;
		n = r->cap;
	}
	if (n > ring_space(r)) {
		size_t drop = n - ring_space(r);
		ring_consume(r, drop);
		lost += drop;
	}
	return ring_write(r, p, n) == n ? lost : lost + n;
}

size_t ring_peek(const struct ring *r, const uint8_t **p)
{
	*p = r->buf + r->head;
	return r->cap - r->head < r->len ? r->cap - r->head : r->len;
}

void ring_consume(struct ring *r, size_t n)
{
	if (n > r->len)
		n = r->len;
	r->head = (r->head + n) % r->cap;
	r->len -= n;
	if (!r->len)
		r->head = 0;
}

ssize_t ring_read_fd(struct ring *r, int fd)
{
	if (!ring_space(r))
		return -ENOBUFS;
	if (ensure_buf(r))
		return -ENOMEM;
	size_t tail = (r->head + r->len) % r->cap;
	size_t room = tail >= r->head && r->len < r->cap ? r->cap - tail : ring_space(r);
	if (room > ring_space(r))
		room = ring_space(r);
	ssize_t n = read(fd, r->buf + tail, room);
	if (n < 0)
		return -errno;
	r->len += (size_t)n;
	return n;
}

ssize_t ring_write_fd(struct ring *r, int fd)
{
	const uint8_t *p;
	size_t n = ring_peek(r, &p);
	if (!n)
		return 0;
	ssize_t w = write(fd, p, n);
	if (w < 0)
		return -errno;
	ring_consume(r, (size_t)w);
	return w;
}
