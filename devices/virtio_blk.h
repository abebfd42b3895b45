/* virtio-blk (virtio 1.2 section 5.2) over a raw image file or a block device. Reads and
 * writes become io_uring readv/writev on the guest's own buffers (no copy); the device
 * loop learns of completions through the ring's eventfd (ops->host_fds). */
#ifndef MITOS_VIRTIO_BLK_H
#define MITOS_VIRTIO_BLK_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/error.h"
#include "lib/guest_mem.h"
#include "virtio_mmio.h"

#define VIRTIO_ID_BLOCK 2

/* Feature bits. */
#define VIRTIO_BLK_F_SEG_MAX   2
#define VIRTIO_BLK_F_RO        5
#define VIRTIO_BLK_F_BLK_SIZE  6
#define VIRTIO_BLK_F_FLUSH     9

/* Request types and status values. */
#define VIRTIO_BLK_T_IN        0
#define VIRTIO_BLK_T_OUT       1
#define VIRTIO_BLK_T_FLUSH     4
#define VIRTIO_BLK_T_GET_ID    8
#define VIRTIO_BLK_S_OK        0
#define VIRTIO_BLK_S_IOERR     1
#define VIRTIO_BLK_S_UNSUPP    2

#define VIRTIO_BLK_SECTOR_SIZE 512
#define VIRTIO_BLK_ID_BYTES    20
#define VIRTIO_BLK_QUEUE_SIZE  256
/* A request's header and status take a descriptor each; the rest may carry data. */
#define VIRTIO_BLK_SEG_MAX     (VIRTQ_MAX_CHAIN - 2)

/* Offsets in struct virtio_blk_config (the config space). */
#define VIRTIO_BLK_CFG_CAPACITY 0
#define VIRTIO_BLK_CFG_SIZE_MAX 8
#define VIRTIO_BLK_CFG_SEG_MAX  12
#define VIRTIO_BLK_CFG_BLK_SIZE 20

struct virtio_blk_opts {
	const char *path;
	bool read_only;   /* the image is opened O_RDONLY and the guest sees VIRTIO_BLK_F_RO */
	/* The image as a descriptor its owner opened (the device keeps a copy; the caller
	 * keeps fd): a jailed VM never sees the image's path, and path only names it.
	 * Opened read-only, it serves only a read_only disk. */
	bool has_fd;
	int fd;
};

/* Opens the image (or copies its descriptor), sizes it, sets up an io_uring with a
 * completion eventfd and returns the transport object whose ops are virtio-blk's; NULL
 * and a message in e on failure
 * (missing file, not a regular file or block device, size not a multiple of 512,
 * io_uring unavailable). */
struct virtio_device *virtio_blk_create(const struct guest_mem *mem, uint64_t mmio_base,
					unsigned irq, const struct virtio_blk_opts *o,
					struct mitos_err *e);
/* The disk's size in bytes, as its guest sees it. */
uint64_t virtio_blk_bytes(const struct virtio_device *d);
/* Waits for in-flight I/O, then frees everything; d may be NULL. */
void virtio_blk_destroy(struct virtio_device *d);

#endif
