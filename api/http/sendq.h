/* A socket's pending output for io_uring sendmsg: a list of buffers drained from
 * the front. Shared by the client connections (server.c) and the agent
 * connections (agent_client.c). */
#ifndef MITOS_API_SENDQ_H
#define MITOS_API_SENDQ_H

#include <liburing.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

struct sendq_buf {
	struct sendq_buf *next;
	size_t off, len, cap;
	uint8_t data[];
};

struct sendq {
	struct sendq_buf *head, *tail;
	size_t bytes; /* queued, not yet sent */
};

/* Fills the last buffer, then puts the rest in one new buffer of at least
 * min_cap bytes. Returns 0, or -ENOMEM with only what fit the last buffer queued. */
int sendq_append(struct sendq *q, const void *p, size_t n, size_t min_cap);
/* Prepares a sendmsg of up to max_iov buffers from the front; iov and msg must
 * live until it completes. */
void sendq_prep_sendmsg(const struct sendq *q, struct io_uring_sqe *sqe, int fd, struct msghdr *msg,
			struct iovec *iov, size_t max_iov);
/* Drops n sent bytes from the front. */
void sendq_consume(struct sendq *q, size_t n);
void sendq_free(struct sendq *q);

#endif
