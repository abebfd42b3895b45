#include "api/http/sendq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int sendq_append(struct sendq *q, const void *p, size_t n, size_t min_cap)
{
	const uint8_t *src = p;
	struct sendq_buf *t = q->tail;
	if (t && t->cap - t->off - t->len > 0) {
		size_t k = t->cap - t->off - t->len;
		if (k > n)
			k = n;
		memcpy(t->data + t->off + t->len, src, k);
		t->len += k;
		src += k;
		n -= k;
		q->bytes += k;
	}
	if (!n)
		return 0;
	size_t cap = n > min_cap ? n : min_cap;
	struct sendq_buf *b = malloc(sizeof(*b) + cap);
	if (!b)
		return -ENOMEM;
	b->next = NULL;
	b->off = 0;
	b->len = n;
	b->cap = cap;
	memcpy(b->data, src, n);
	if (t)
		t->next = b;
	else
		q->head = b;
	q->tail = b;
	q->bytes += n;
	return 0;
}

void sendq_prep_sendmsg(const struct sendq *q, struct io_uring_sqe *sqe, int fd, struct msghdr *msg,
			struct iovec *iov, size_t max_iov)
{
	size_t n = 0;
	for (struct sendq_buf *b = q->head; b && n < max_iov; b = b->next, n++) {
		iov[n].iov_base = b->data + b->off;
		iov[n].iov_len = b->len;
	}
	memset(msg, 0, sizeof(*msg));
	msg->msg_iov = iov;
	msg->msg_iovlen = n;
	io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL);
}

void sendq_consume(struct sendq *q, size_t n)
{
	while (n && q->head) {
		struct sendq_buf *b = q->head;
		size_t k = b->len < n ? b->len : n;
		b->off += k;
		b->len -= k;
		n -= k;
		q->bytes -= k;
		if (!b->len) {
			q->head = b->next;
			if (!q->head)
				q->tail = NULL;
			free(b);
		}
	}
}

void sendq_free(struct sendq *q)
{
	for (struct sendq_buf *b = q->head, *n; b; b = n) {
		n = b->next;
		free(b);
	}
	q->head = q->tail = NULL;
	q->bytes = 0;
}
