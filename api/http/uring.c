#include "api/http/uring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include "lib/clock.h"

static struct io_uring ring;
static bool stopping;
static uint64_t now_ms;

static struct io_uring_buf_ring *br;
static uint8_t *buf_base;
static unsigned buf_count, buf_sz;
static size_t br_bytes;

static struct ur_ticker *tickers;
static struct ur_kick *kick_head, *kick_tail;

static struct uop tick_op;
static struct __kernel_timespec tick_ts;

static uint64_t clock_ms(clockid_t id)
{
	return clock_ns_of(id) / 1000000u;
}

uint64_t ur_now_ms(void) { return now_ms; }
uint64_t ur_wall_ms(void) { return clock_ms(CLOCK_REALTIME); }
uint64_t ur_mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

struct io_uring_sqe *ur_sqe(struct uop *op)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	while (!sqe) {
		io_uring_submit(&ring);
		sqe = io_uring_get_sqe(&ring);
	}
	io_uring_sqe_set_data(sqe, op);
	return sqe;
}

static void tick_arm(void)
{
	tick_ts.tv_sec = 0;
	tick_ts.tv_nsec = (long long)UR_TICK_MS * 1000000;
	io_uring_prep_timeout(ur_sqe(&tick_op), &tick_ts, 0, 0);
}

static void tick_done(struct uop *op, int res, uint32_t flags)
{
	(void)op; (void)res; (void)flags;
	/* Tickers may remove themselves (or others) while we walk. */
	for (struct ur_ticker *t = tickers, *next; t; t = next) {
		next = t->next;
		t->fn(t, now_ms);
	}
	if (!stopping)
		tick_arm();
}

int ur_init(unsigned entries, unsigned nbufs, unsigned bufsize)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_CQSIZE;
	p.cq_entries = entries * 4;
	int rc = io_uring_queue_init_params(entries, &ring, &p);
	if (rc)
		return rc;
	if (!(p.features & IORING_FEAT_NODROP)) {
		io_uring_queue_exit(&ring);
		return -EOPNOTSUPP;
	}
	/* nbufs must be a power of two for the ring mask. */
	buf_count = nbufs;
	buf_sz = bufsize;
	br_bytes = (size_t)nbufs * sizeof(struct io_uring_buf);
	br = mmap(NULL, br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (br == MAP_FAILED) {
		io_uring_queue_exit(&ring);
		return -errno;
	}
	buf_base = malloc((size_t)nbufs * bufsize);
	if (!buf_base) {
		munmap(br, br_bytes);
		io_uring_queue_exit(&ring);
		return -ENOMEM;
	}
	io_uring_buf_ring_init(br);
	struct io_uring_buf_reg reg = { .ring_addr = (uint64_t)(uintptr_t)br,
					.ring_entries = nbufs, .bgid = UR_BGID };
	rc = io_uring_register_buf_ring(&ring, &reg, 0);
	if (rc) {
		free(buf_base);
		munmap(br, br_bytes);
		io_uring_queue_exit(&ring);
		return rc;
	}
	for (unsigned i = 0; i < nbufs; i++)
		io_uring_buf_ring_add(br, buf_base + (size_t)i * bufsize, bufsize, (unsigned short)i,
				      io_uring_buf_ring_mask(nbufs), (int)i);
	io_uring_buf_ring_advance(br, (int)nbufs);
	now_ms = clock_ms(CLOCK_MONOTONIC);
	tick_op.fn = tick_done;
	tick_arm();
	return 0;
}

void ur_exit(void)
{
	io_uring_queue_exit(&ring);
	free(buf_base);
	munmap(br, br_bytes);
}

unsigned ur_buf_size(void) { return buf_sz; }
uint8_t *ur_buf_ptr(unsigned bid) { return buf_base + (size_t)bid * buf_sz; }

void ur_buf_return(unsigned bid)
{
	io_uring_buf_ring_add(br, ur_buf_ptr(bid), buf_sz, (unsigned short)bid,
			      io_uring_buf_ring_mask(buf_count), 0);
	io_uring_buf_ring_advance(br, 1);
}

void ur_add_ticker(struct ur_ticker *t)
{
	t->next = tickers;
	tickers = t;
}

void ur_del_ticker(struct ur_ticker *t)
{
	for (struct ur_ticker **pp = &tickers; *pp; pp = &(*pp)->next)
		if (*pp == t) {
			*pp = t->next;
			return;
		}
}

void ur_kick(struct ur_kick *k)
{
	if (k->queued)
		return;
	k->queued = true;
	k->next = NULL;
	if (kick_tail)
		kick_tail->next = k;
	else
		kick_head = k;
	kick_tail = k;
}

void ur_kick_cancel(struct ur_kick *k)
{
	if (!k->queued)
		return;
	struct ur_kick *prev = NULL;
	for (struct ur_kick *it = kick_head; it; prev = it, it = it->next) {
		if (it != k)
			continue;
		if (prev)
			prev->next = k->next;
		else
			kick_head = k->next;
		if (kick_tail == k)
			kick_tail = prev;
		break;
	}
	k->queued = false;
}

static void run_kicks(void)
{
	while (kick_head) {
		struct ur_kick *k = kick_head;
		kick_head = k->next;
		if (!kick_head)
			kick_tail = NULL;
		k->queued = false;
		k->fn(k);
	}
}

void ur_stop(void) { stopping = true; }
bool ur_stopping(void) { return stopping; }

int ur_run(void)
{
	while (!stopping) {
		run_kicks();
		if (stopping)
			break;
		int rc = io_uring_submit_and_wait(&ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
			return rc;
		now_ms = clock_ms(CLOCK_MONOTONIC);
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		/* Callbacks may queue new SQEs; they are submitted on the next turn. */
		io_uring_for_each_cqe(&ring, head, cqe) {
			struct uop *op = io_uring_cqe_get_data(cqe);
			int res = cqe->res;
			uint32_t fl = cqe->flags;
			n++;
			if (op && op->fn)
				op->fn(op, res, fl);
		}
		io_uring_cq_advance(&ring, n);
	}
	run_kicks();
	return 0;
}
