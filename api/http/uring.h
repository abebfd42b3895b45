/* The API server's one event loop: a single io_uring whose completions carry a
 * pointer to a struct uop naming the callback. Also a periodic tick (one
 * IORING_OP_TIMEOUT) that drives every deadline in the server, a ring of
 * provided buffers for socket reads, and deferred work ("kicks") that must not
 * run inside the callback that asked for it. */
#ifndef MITOS_API_URING_H
#define MITOS_API_URING_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct uop;
typedef void (*uop_fn)(struct uop *op, int res, uint32_t cqe_flags);

struct uop {
	uop_fn fn;
};

#define UR_TICK_MS 100u

int ur_init(unsigned entries, unsigned nbufs, unsigned bufsize);
void ur_exit(void);
/* Never NULL: submits queued entries to make room when the SQ is full. */
struct io_uring_sqe *ur_sqe(struct uop *op);
/* Runs until ur_stop(); returns 0 or -errno. */
int ur_run(void);
void ur_stop(void);
bool ur_stopping(void);
uint64_t ur_now_ms(void);   /* monotonic, refreshed once per batch of completions */
uint64_t ur_wall_ms(void);  /* realtime */
/* Monotonic, read now: for code off the loop (workers, blocking calls) and waits that
 * outlast a batch. */
uint64_t ur_mono_ms(void);

/* Provided buffers (group 0) for IOSQE_BUFFER_SELECT reads. */
#define UR_BGID 0
unsigned ur_buf_size(void);
uint8_t *ur_buf_ptr(unsigned bid);
void ur_buf_return(unsigned bid);

/* Called every UR_TICK_MS. */
struct ur_ticker {
	void (*fn)(struct ur_ticker *t, uint64_t now_ms);
	struct ur_ticker *next;
};
void ur_add_ticker(struct ur_ticker *t);
void ur_del_ticker(struct ur_ticker *t);

/* Deferred work: runs after the current batch of completions. A kick already
 * pending is not queued twice. */
struct ur_kick {
	void (*fn)(struct ur_kick *k);
	struct ur_kick *next;
	bool queued;
};
void ur_kick(struct ur_kick *k);
void ur_kick_cancel(struct ur_kick *k);

#endif
