#include "virtio_blk.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define SECTOR    VIRTIO_BLK_SECTOR_SIZE
#define HDR_BYTES 16

struct blk_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};
_Static_assert(sizeof(struct blk_hdr) == HDR_BYTES, "virtio 1.2 5.2.6");

struct blk_config {
	uint64_t capacity;
	uint32_t size_max;
	uint32_t seg_max;
	struct { uint16_t cylinders; uint8_t heads; uint8_t sectors; } geometry;
	uint32_t blk_size;
	struct {
		uint8_t physical_block_exp;
		uint8_t alignment_offset;
		uint16_t min_io_size;
		uint32_t opt_io_size;
	} topology;
	uint8_t writeback;
	uint8_t unused0;
	uint16_t num_queues;
	uint32_t max_discard_sectors;
	uint32_t max_discard_seg;
	uint32_t discard_sector_alignment;
	uint32_t max_write_zeroes_sectors;
	uint32_t max_write_zeroes_seg;
	uint8_t write_zeroes_may_unmap;
	uint8_t unused1[3];
	uint32_t max_secure_erase_sectors;
	uint32_t max_secure_erase_seg;
	uint32_t secure_erase_sector_alignment;
} __attribute__((packed));
_Static_assert(sizeof(struct blk_config) == 72, "virtio 1.2 5.2.4");

/* A request handed to io_uring. Its iovecs point into guest RAM and must stay put until
 * the completion arrives (a short transfer is resubmitted from them), so they live here. */
struct blk_req {
	uint16_t head;
	uint32_t type;
	uint8_t *status;
	uint64_t offset;      /* file offset of the next byte to transfer */
	uint64_t left;        /* bytes still to transfer */
	uint64_t done;        /* bytes already transferred */
	unsigned iov_first;   /* iov[iov_first..niov) is what is left */
	unsigned niov;
	struct iovec iov[VIRTQ_MAX_CHAIN];
};

struct blk {
	struct virtio_device dev;
	struct virtio_device_ops ops;   /* per device: F_RO depends on the image */
	int fd;
	bool read_only;
	uint64_t capacity;              /* sectors */
	char serial[VIRTIO_BLK_ID_BYTES];
	struct io_uring ring;
	int event_fd;
	/* We failed the device: take nothing more from the ring until the driver resets. */
	bool broken;
	/* Chains are waiting because every request slot is in flight; completions resume. */
	bool stalled;
	unsigned nfree;
	uint16_t free_slots[VIRTIO_BLK_QUEUE_SIZE];
	struct blk_req reqs[VIRTIO_BLK_QUEUE_SIZE];
	struct virtq_chain chain;       /* virtq_pop's output: too big for the stack */
};

/* What one notify or completion round produced: SQEs to submit, chains pushed. */
struct blk_batch {
	unsigned queued;
	bool pushed;
};

static unsigned blk_inflight(const struct blk *b)
{
	return VIRTIO_BLK_QUEUE_SIZE - b->nfree;
}

static void blk_fail(struct blk *b, const char *why)
{
	b->broken = true;
	virtio_device_fail(&b->dev, why);
}

/* Returns a chain to the driver with its status (when it has a byte for one) and the
 * number of bytes written into its writable buffers. */
static void blk_push(struct blk *b, struct blk_batch *bt, uint16_t head, uint8_t *status,
		     uint8_t s, uint32_t len)
{
	if (status)
		*status = s;
	if (virtq_push(&b->dev.vqs[0], b->dev.mem, head, len))
		blk_fail(b, "used ring outside guest RAM");
	bt->pushed = true;
}

static void blk_finish(struct blk *b, struct blk_batch *bt, struct blk_req *r, uint8_t s)
{
	/* Used lengths are 32-bit; a guest can describe more than that in one request. */
	uint64_t len = (r->type == VIRTIO_BLK_T_IN ? r->done : 0) + 1;
	blk_push(b, bt, r->head, r->status, s, len > UINT32_MAX ? UINT32_MAX : (uint32_t)len);
	b->free_slots[b->nfree++] = (uint16_t)(r - b->reqs);
}

static void blk_submit(struct blk *b, struct blk_batch *bt, struct blk_req *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);
	/* Cannot happen while each request holds at most one SQE and the SQ has a slot per
	 * request; failing the request beats losing it. */
	if (!sqe) {
		blk_finish(b, bt, r, VIRTIO_BLK_S_IOERR);
		return;
	}
	const struct iovec *iov = r->iov + r->iov_first;
	unsigned n = r->niov - r->iov_first;
	/* The disk is the ring's fixed file 0: the only file it may touch. */
	if (r->type == VIRTIO_BLK_T_IN)
		io_uring_prep_readv(sqe, 0, iov, n, r->offset);
	else if (r->type == VIRTIO_BLK_T_OUT)
		io_uring_prep_writev(sqe, 0, iov, n, r->offset);
	else
		io_uring_prep_fsync(sqe, 0, 0);
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, (uint64_t)(r - b->reqs));
	bt->queued++;
}

static struct blk_req *blk_req_new(struct blk *b, const struct virtq_chain *c, uint32_t type,
				   uint8_t *status)
{
	struct blk_req *r = &b->reqs[b->free_slots[--b->nfree]];
	r->head = c->head;
	r->type = type;
	r->status = status;
	r->offset = r->left = r->done = 0;
	r->iov_first = r->niov = 0;
	return r;
}

/* The status byte is the last byte of the writable part (any layout: it may share a
 * buffer with IN data). Writable buffers come last, so it ends the last non-empty one. */
static uint8_t *chain_status(const struct virtq_chain *c)
{
	if (c->writable_len == 0)
		return NULL;
	for (unsigned i = c->nbufs; i-- > 0;)
		if (c->bufs[i].len)
			return c->bufs[i].host + c->bufs[i].len - 1;
	return NULL;
}

static void blk_start_rw(struct blk *b, struct blk_batch *bt, const struct virtq_chain *c,
			 uint32_t type, uint64_t sector, uint8_t *status)
{
	bool out = type == VIRTIO_BLK_T_OUT;
	/* OUT: header then data readable, only the status writable. IN: only the header
	 * readable, data then status writable. */
	uint64_t len = out ? c->readable_len - HDR_BYTES : c->writable_len - 1;
	bool layout_ok = out ? c->writable_len == 1 : c->readable_len == HDR_BYTES;
	/* Written so that nothing overflows, whatever sector the guest sent. */
	bool in_range = sector <= b->capacity && len / SECTOR <= b->capacity - sector;
	if (!layout_ok || len % SECTOR || !in_range || (out && b->read_only)) {
		blk_push(b, bt, c->head, status, VIRTIO_BLK_S_IOERR, 1);
		return;
	}
	if (len == 0) {
		blk_push(b, bt, c->head, status, VIRTIO_BLK_S_OK, 1);
		return;
	}
	struct blk_req *r = blk_req_new(b, c, type, status);
	r->offset = sector * SECTOR;
	r->left = len;
	r->niov = virtq_chain_iov(c, !out, out ? HDR_BYTES : 0, len, r->iov);
	blk_submit(b, bt, r);
}

static void blk_start(struct blk *b, struct blk_batch *bt, const struct virtq_chain *c)
{
	uint8_t *status = chain_status(c);
	if (!status) {
		blk_push(b, bt, c->head, NULL, 0, 0);
		return;
	}
	struct blk_hdr h;
	if (c->readable_len < HDR_BYTES) {
		blk_push(b, bt, c->head, status, VIRTIO_BLK_S_IOERR, 1);
		return;
	}
	virtq_chain_read(c, 0, &h, sizeof(h));
	uint32_t type = le32toh(h.type);
	switch (type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT:
		blk_start_rw(b, bt, c, type, le64toh(h.sector), status);
		break;
	case VIRTIO_BLK_T_FLUSH:
		blk_submit(b, bt, blk_req_new(b, c, type, status));
		break;
	case VIRTIO_BLK_T_GET_ID: {
		uint64_t n = c->writable_len - 1;
		if (n > VIRTIO_BLK_ID_BYTES)
			n = VIRTIO_BLK_ID_BYTES;
		virtq_chain_write(c, 0, b->serial, n);
		blk_push(b, bt, c->head, status, VIRTIO_BLK_S_OK, (uint32_t)n + 1);
		break;
	}
	default:
		blk_push(b, bt, c->head, status, VIRTIO_BLK_S_UNSUPP, 1);
		break;
	}
}

/* Takes the available chains, but never more requests in flight than the queue has
 * entries (a driver that republishes heads still in flight cannot make us queue
 * without bound), nor more than a budget per kick (the rest on the next one). */
static void blk_pop_all(struct blk *b, struct blk_batch *bt)
{
	struct virtq *q = &b->dev.vqs[0];
	unsigned budget = VIRTIO_CHAIN_BUDGET;
	b->stalled = false;
	do {
		for (;;) {
			/* Requests answered at once (GET_ID, errors) never count as in flight. */
			if (b->broken || (!budget && virtio_device_kick_again(&b->dev, 0)))
				return;
			budget -= budget > 0;
			if (blk_inflight(b) >= q->size) {
				b->stalled = true;
				return;
			}
			int r = virtq_pop(q, b->dev.mem, &b->chain);
			if (r == 0)
				break;
			if (r < 0) {
				blk_fail(b, "malformed request queue");
				return;
			}
			blk_start(b, bt, &b->chain);
		}
	} while (virtq_arm_and_recheck(q, b->dev.mem));
}

static void blk_end_batch(struct blk *b, struct blk_batch *bt)
{
	/* SQEs that did not go in stay in the SQ; reset's drain submits them. */
	if (bt->queued && io_uring_submit(&b->ring) < 0)
		blk_fail(b, "io_uring_submit failed");
	if (bt->pushed)
		virtio_device_notify_used(&b->dev, 0);
}

static void blk_complete(struct blk *b, struct blk_batch *bt, struct blk_req *r, int res)
{
	if (res < 0) {
		blk_finish(b, bt, r, VIRTIO_BLK_S_IOERR);
		return;
	}
	if (r->type == VIRTIO_BLK_T_FLUSH) {
		blk_finish(b, bt, r, VIRTIO_BLK_S_OK);
		return;
	}
	/* Zero bytes moved: the image shrank under us (or the disk is full); resubmitting
	 * would spin. */
	if (res == 0) {
		blk_finish(b, bt, r, VIRTIO_BLK_S_IOERR);
		return;
	}
	uint64_t n = (uint64_t)res;
	r->done += n;
	r->left -= n;
	r->offset += n;
	if (r->left == 0) {
		blk_finish(b, bt, r, VIRTIO_BLK_S_OK);
		return;
	}
	while (n) {
		struct iovec *v = &r->iov[r->iov_first];
		if (n < v->iov_len) {
			v->iov_base = (uint8_t *)v->iov_base + n;
			v->iov_len -= n;
			break;
		}
		n -= v->iov_len;
		r->iov_first++;
	}
	blk_submit(b, bt, r);
}

/* Reaps every CQE; `complete` false drops the results (reset: the queue is gone). */
static void blk_reap(struct blk *b, struct blk_batch *bt, bool complete)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	io_uring_for_each_cqe(&b->ring, head, cqe) {
		struct blk_req *r = &b->reqs[cqe->user_data];
		if (complete)
			blk_complete(b, bt, r, cqe->res);
		else
			b->free_slots[b->nfree++] = (uint16_t)(r - b->reqs);
		n++;
	}
	io_uring_cq_advance(&b->ring, n);
}

/* Waits until nothing is in flight: after a reset the guest may reuse the buffers, and
 * no read may land in them any more. */
static void blk_drain(struct blk *b)
{
	while (blk_inflight(b)) {
		int r = io_uring_submit_and_wait(&b->ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN)
			break;
		blk_reap(b, NULL, false);
	}
}

static void blk_queue_notify(struct virtio_device *d, unsigned q)
{
	(void)q;
	struct blk *b = d->priv;
	struct blk_batch bt = { 0 };
	blk_pop_all(b, &bt);
	blk_end_batch(b, &bt);
}

static unsigned blk_host_fds(struct virtio_device *d, int *fds, unsigned max)
{
	struct blk *b = d->priv;
	if (max == 0)
		return 0;
	fds[0] = b->event_fd;
	return 1;
}

static void blk_host_fd_ready(struct virtio_device *d, unsigned i)
{
	(void)i;
	struct blk *b = d->priv;
	eventfd_t v;
	/* Drained before reaping, so a completion posted after the reap re-arms the fd. */
	(void)eventfd_read(b->event_fd, &v);
	struct blk_batch bt = { 0 };
	blk_reap(b, &bt, true);
	if (b->stalled)
		blk_pop_all(b, &bt);
	blk_end_batch(b, &bt);
}

static void blk_reset(struct virtio_device *d)
{
	struct blk *b = d->priv;
	blk_drain(b);
	b->broken = false;
	b->stalled = false;
}

static void blk_config_read(struct virtio_device *d, uint32_t off, void *data, uint32_t len)
{
	struct blk *b = d->priv;
	struct blk_config cfg = {
		.capacity = htole64(b->capacity),
		.seg_max = htole32(VIRTIO_BLK_SEG_MAX),
		.blk_size = htole32(SECTOR),
	};
	memcpy(data, (const uint8_t *)&cfg + off, len);
}

/* Snapshots: finish every request in flight and put it on the used ring, so the rings
 * in guest memory tell the whole story. Chains not yet popped stay in the avail ring. */
static int blk_quiesce(struct virtio_device *d)
{
	struct blk *b = d->priv;
	struct blk_batch bt = { 0 };
	while (blk_inflight(b)) {
		int r = io_uring_submit_and_wait(&b->ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN)
			return r;
		blk_reap(b, &bt, true);
	}
	blk_end_batch(b, &bt);
	return 0;
}

/* A restored copy serves what the driver made available before the snapshot: its kick
 * was consumed by the VM the snapshot came from. */
static int blk_restore_state(struct virtio_device *d, const void *buf, size_t len)
{
	(void)buf;
	if (len)
		return -EINVAL;
	struct blk *b = d->priv;
	if (virtio_device_active(d)) {
		struct blk_batch bt = { 0 };
		blk_pop_all(b, &bt);
		blk_end_batch(b, &bt);
	}
	return 0;
}

static const struct virtio_device_ops blk_ops = {
	.name = "virtio-blk",
	.device_id = VIRTIO_ID_BLOCK,
	.features = (1ULL << VIRTIO_BLK_F_SEG_MAX) | (1ULL << VIRTIO_BLK_F_BLK_SIZE) |
		    (1ULL << VIRTIO_BLK_F_FLUSH),
	.num_queues = 1,
	.queue_max_size = VIRTIO_BLK_QUEUE_SIZE,
	.config_size = sizeof(struct blk_config),
	.config_read = blk_config_read,
	.reset = blk_reset,
	.queue_notify = blk_queue_notify,
	.host_fds = blk_host_fds,
	.host_fd_ready = blk_host_fd_ready,
	.quiesce = blk_quiesce,
	.state_version = 1,
	.restore_state = blk_restore_state,
	.destroy = virtio_blk_destroy,
};

static int image_size(int fd, const char *path, uint64_t *size, struct stat *st,
		      struct mitos_err *e)
{
	if (fstat(fd, st))
		return mitos_err_set(e, -errno, "disk image %s: fstat: %s", path, strerror(errno));
	if (S_ISREG(st->st_mode))
		*size = (uint64_t)st->st_size;
	else if (S_ISBLK(st->st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, size))
			return mitos_err_set(e, -errno, "disk image %s: cannot read the device size: %s",
					     path, strerror(errno));
	} else
		return mitos_err_set(e, -EINVAL, "disk image %s is not a regular file or block device",
				     path);
	if (*size % SECTOR)
		return mitos_err_set(e, -EINVAL,
				     "disk image %s is %llu bytes, not a multiple of %d: pad it with truncate -s",
				     path, (unsigned long long)*size, SECTOR);
	return 0;
}

/* Stable for a given image file, so the guest's /dev/disk/by-id names survive reboots and
 * forks: FNV-1a over the image's device and inode numbers. */
static void make_serial(char *serial, const struct stat *st)
{
	uint64_t key[2] = { st->st_dev, st->st_ino };
	const uint8_t *p = (const uint8_t *)key;
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < sizeof(key); i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	char buf[VIRTIO_BLK_ID_BYTES + 1];
	snprintf(buf, sizeof(buf), "mitos-%012llx", (unsigned long long)(h & 0xffffffffffffULL));
	memset(serial, 0, VIRTIO_BLK_ID_BYTES);
	memcpy(serial, buf, strlen(buf));
}

/* io_uring runs its operations beside seccomp, not through it: the ring may only
 * read, write and fsync the disk (its one fixed file), and nothing more can be
 * registered on it. */
static int ring_lock_down(struct blk *b)
{
	int r = io_uring_register_files(&b->ring, &b->fd, 1);
	if (r)
		return r;
	struct io_uring_restriction res[] = {
		{ .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_READV },
		{ .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_WRITEV },
		{ .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_FSYNC },
		{ .opcode = IORING_RESTRICTION_SQE_FLAGS_REQUIRED, .sqe_flags = IOSQE_FIXED_FILE },
		{ .opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED, .sqe_flags = IOSQE_FIXED_FILE },
	};
	/* The raw call: Debian's liburing 2.3 declares the wrappers but does not export them. */
	r = io_uring_register(b->ring.ring_fd, IORING_REGISTER_RESTRICTIONS, res, sizeof(res) / sizeof(res[0]));
	return r < 0 ? r : io_uring_register(b->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
}

struct virtio_device *virtio_blk_create(const struct guest_mem *mem, uint64_t mmio_base,
					unsigned irq, const struct virtio_blk_opts *o,
					struct mitos_err *e)
{
	int fd = o->has_fd ? fcntl(o->fd, F_DUPFD_CLOEXEC, 3) :
			     open(o->path, (o->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;
		mitos_err_set(e, -err, "cannot open disk image %s%s: %s", o->path,
			      o->has_fd ? " (its descriptor)" : "", strerror(err));
		return NULL;
	}
	/* Otherwise the guest's first write would fail as an I/O error. */
	if (!o->read_only && (fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDWR) {
		mitos_err_set(e, -EBADF, "disk image %s: its descriptor is not open for writing; attach it "
			      "read-only (,ro) or pass a read-write one", o->path);
		goto err_fd;
	}
	struct stat st;
	uint64_t size;
	if (image_size(fd, o->path, &size, &st, e))
		goto err_fd;
	struct blk *b = calloc(1, sizeof(*b));
	if (!b) {
		mitos_err_set(e, -ENOMEM, "out of memory for virtio-blk %s", o->path);
		goto err_fd;
	}
	b->fd = fd;
	b->read_only = o->read_only;
	b->capacity = size / SECTOR;
	make_serial(b->serial, &st);
	b->nfree = VIRTIO_BLK_QUEUE_SIZE;
	for (unsigned i = 0; i < VIRTIO_BLK_QUEUE_SIZE; i++)
		b->free_slots[i] = (uint16_t)i;

	/* Born disabled, so it can be locked down before its first request. */
	int r = io_uring_queue_init(VIRTIO_BLK_QUEUE_SIZE, &b->ring, IORING_SETUP_R_DISABLED);
	if (r) {
		mitos_err_set(e, r, "io_uring unavailable for virtio-blk (%s): the kernel (5.10 or later is "
			      "needed) or a seccomp policy forbids it (sysctl kernel.io_uring_disabled?)",
			      strerror(-r));
		goto err_blk;
	}
	b->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (b->event_fd < 0) {
		mitos_err_set(e, -errno, "eventfd for virtio-blk: %s", strerror(errno));
		goto err_ring;
	}
	r = io_uring_register_eventfd(&b->ring, b->event_fd);
	if (r) {
		mitos_err_set(e, r, "io_uring_register_eventfd: %s", strerror(-r));
		goto err_efd;
	}
	r = ring_lock_down(b);
	if (r) {
		mitos_err_set(e, r, "cannot restrict virtio-blk's io_uring to its disk: %s", strerror(-r));
		goto err_efd;
	}

	b->ops = blk_ops;
	if (o->read_only)
		b->ops.features |= 1ULL << VIRTIO_BLK_F_RO;
	virtio_device_init(&b->dev, &b->ops, b, mem, mmio_base, irq);
	return &b->dev;

err_efd:
	close(b->event_fd);
err_ring:
	io_uring_queue_exit(&b->ring);
err_blk:
	free(b);
err_fd:
	close(fd);
	return NULL;
}

uint64_t virtio_blk_bytes(const struct virtio_device *d)
{
	const struct blk *b = d->priv;
	return b->capacity * SECTOR;
}

void virtio_blk_destroy(struct virtio_device *d)
{
	if (!d)
		return;
	struct blk *b = d->priv;
	blk_drain(b);
	io_uring_queue_exit(&b->ring);
	close(b->event_fd);
	close(b->fd);
	virtio_device_destroy(d);
	free(b);
}
