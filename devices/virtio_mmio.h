/* virtio-mmio transport, version 2 (modern only; virtio 1.2 section 4.2). One
 * struct virtio_device per device window. Register accesses arrive on vCPU threads;
 * queue kicks arrive as ioeventfds on the device loop; both run under `lock`. */
#ifndef MITOS_VIRTIO_MMIO_H
#define MITOS_VIRTIO_MMIO_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "virtq.h"

#define VIRTIO_MMIO_MAGIC          0x74726976 /* "virt" */
#define VIRTIO_MMIO_VERSION        2
#define VIRTIO_MMIO_VENDOR         0x4d495453 /* "MITS" */
#define VIRTIO_MMIO_WINDOW         0x1000
#define VIRTIO_MMIO_CONFIG_OFFSET  0x100
#define VIRTIO_MAX_QUEUES          8

/* Register offsets. */
#define VIRTIO_MMIO_MAGIC_VALUE        0x000
#define VIRTIO_MMIO_VERSION_REG        0x004
#define VIRTIO_MMIO_DEVICE_ID          0x008
#define VIRTIO_MMIO_VENDOR_ID          0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES    0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES    0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL          0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX      0x034
#define VIRTIO_MMIO_QUEUE_NUM          0x038
#define VIRTIO_MMIO_QUEUE_READY        0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY       0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS   0x060
#define VIRTIO_MMIO_INTERRUPT_ACK      0x064
#define VIRTIO_MMIO_STATUS             0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW     0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH    0x084
#define VIRTIO_MMIO_QUEUE_AVAIL_LOW    0x090
#define VIRTIO_MMIO_QUEUE_AVAIL_HIGH   0x094
#define VIRTIO_MMIO_QUEUE_USED_LOW     0x0a0
#define VIRTIO_MMIO_QUEUE_USED_HIGH    0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION  0x0fc

/* Device status bits. */
#define VIRTIO_STATUS_ACKNOWLEDGE   1
#define VIRTIO_STATUS_DRIVER        2
#define VIRTIO_STATUS_DRIVER_OK     4
#define VIRTIO_STATUS_FEATURES_OK   8
#define VIRTIO_STATUS_NEEDS_RESET   0x40
#define VIRTIO_STATUS_FAILED        0x80

#define VIRTIO_INT_USED_RING   1
#define VIRTIO_INT_CONFIG      2

/* Feature bits the transport owns. */
#define VIRTIO_F_RING_INDIRECT_DESC 28
#define VIRTIO_F_RING_EVENT_IDX     29
#define VIRTIO_F_VERSION_1          32

struct virtio_device;

struct virtio_device_ops {
	const char *name;
	uint32_t device_id;
	uint64_t features;          /* device-specific bits; the transport adds its own */
	unsigned num_queues;
	uint16_t queue_max_size;
	/* Config space accesses; off/len are already checked against config_size. */
	uint32_t config_size;
	void (*config_read)(struct virtio_device *d, uint32_t off, void *data, uint32_t len);
	void (*config_write)(struct virtio_device *d, uint32_t off, const void *data, uint32_t len);
	/* DRIVER_OK was set and every ready queue checked out; 0 or -errno (then the device
	 * reports NEEDS_RESET). */
	int (*activate)(struct virtio_device *d);
	/* The driver reset the device: forget queues and in-flight work. */
	void (*reset)(struct virtio_device *d);
	/* The driver made buffers available on queue q (device loop thread, lock held). */
	void (*queue_notify)(struct virtio_device *d, unsigned q);
	/* Host-side fds the device loop watches for reading on the device's behalf (an
	 * io_uring completion eventfd, a TAP, a socket): the device fills up to `max` and
	 * returns how many. host_fd_ready(d, i) runs (lock held) when fds[i] is readable.
	 * Both may be NULL. */
	unsigned (*host_fds)(struct virtio_device *d, int *fds, unsigned max);
	void (*host_fd_ready)(struct virtio_device *d, unsigned i);
	/* Snapshots (vCPUs are paused, lock held). quiesce() completes or cancels in-flight
	 * host work so the rings in guest memory are consistent; save_state() writes the
	 * device-specific state (the transport saves its own) into buf and returns its
	 * length or -errno; restore_state() takes it back in a fresh device of the same
	 * configuration, after the transport state, and resumes serving if DRIVER_OK.
	 * All may be NULL for a device without host work or state of its own. */
	int (*quiesce)(struct virtio_device *d);
	/* The layout of save_state()'s payload: raised when it changes (restore_state()
	 * then reads every layout up to it); 0 for a device without state of its own. */
	uint32_t state_version;
	int (*save_state)(struct virtio_device *d, void *buf, size_t len);
	int (*restore_state)(struct virtio_device *d, const void *buf, size_t len);
	/* Frees the device (and its priv) after the VM stopped. */
	void (*destroy)(struct virtio_device *d);
};

struct virtio_device {
	const struct virtio_device_ops *ops;
	void *priv;
	const struct guest_mem *mem;
	pthread_mutex_t lock;

	uint64_t mmio_base;
	unsigned irq;
	/* Interrupt line: an eventfd bound to `irq` with KVM_IRQFD; -1 when the tests run a
	 * device without a VM (then irq_count counts what would have been raised). */
	int irqfd;
	unsigned long irq_count;
	/* Per-queue kick eventfds (KVM_IOEVENTFD on QueueNotify with the queue index as data);
	 * -1 when not bound to a VM. */
	int notify_fd[VIRTIO_MAX_QUEUES];

	uint32_t status;
	uint32_t device_features_sel;
	uint32_t driver_features_sel;
	uint64_t driver_features;
	uint32_t queue_sel;
	uint32_t interrupt_status;
	uint32_t config_generation;
	struct virtq vqs[VIRTIO_MAX_QUEUES];
};

/* Initialises the transport state for a device; no VM resources are touched. */
void virtio_device_init(struct virtio_device *d, const struct virtio_device_ops *ops, void *priv,
			const struct guest_mem *mem, uint64_t mmio_base, unsigned irq);
void virtio_device_destroy(struct virtio_device *d);

/* All features the device offers, transport bits included. */
uint64_t virtio_device_features(const struct virtio_device *d);
bool virtio_device_has_feature(const struct virtio_device *d, unsigned bit);
bool virtio_device_active(const struct virtio_device *d);

/* Register accesses at `off` within the 4 KiB window (vCPU threads; takes the lock).
 * Accesses of the wrong width or to unknown registers read as 0 and are ignored. */
void virtio_mmio_read(struct virtio_device *d, uint64_t off, void *data, unsigned len);
void virtio_mmio_write(struct virtio_device *d, uint64_t off, const void *data, unsigned len);

/* A kick for queue q arrived (device loop; takes the lock). */
void virtio_device_kick(struct virtio_device *d, unsigned q);
/* Queue q's kick comes again from the device loop (its ioeventfd written): a device
 * that stops after a budget of chains (VIRTIO_CHAIN_BUDGET) lets the loop's other work
 * (the control socket, signals, other devices) run between, however fast the guest
 * refills the ring. False without an ioeventfd (a unit test's driver): go on then. */
bool virtio_device_kick_again(struct virtio_device *d, unsigned q);
#define VIRTIO_CHAIN_BUDGET 256
/* Host fd i of the device's host_fds() became readable (device loop; takes the lock). */
void virtio_device_host_fd_ready(struct virtio_device *d, unsigned i);

/* Transport state in a snapshot: registers and every queue's layout and progress. */
struct virtio_queue_state {
	uint64_t desc_gpa, avail_gpa, used_gpa;
	uint16_t size, last_avail_idx, used_idx, signalled_used;
	uint8_t ready, event_idx, signalled_used_valid, pad[5];
};

struct virtio_transport_state {
	uint32_t device_id;      /* checked on restore: the same kind of device */
	uint32_t status;
	uint32_t device_features_sel, driver_features_sel, queue_sel;
	uint32_t interrupt_status, config_generation, num_queues;
	uint64_t driver_features;
	struct virtio_queue_state q[VIRTIO_MAX_QUEUES];
};

/* Lock held by the caller for both. restore validates everything against this device
 * and its guest RAM (-EINVAL otherwise) and, when the driver had said DRIVER_OK, leaves
 * the device active without calling activate() again (restore_state() does that part). */
void virtio_transport_save(const struct virtio_device *d, struct virtio_transport_state *s);
int virtio_transport_restore(struct virtio_device *d, const struct virtio_transport_state *s);

/* Device side, lock held: raise the used-ring interrupt for queue q if the driver wants
 * one; raise the config-change interrupt; mark the device broken. */
void virtio_device_notify_used(struct virtio_device *d, unsigned q);
void virtio_device_config_changed(struct virtio_device *d);
void virtio_device_fail(struct virtio_device *d, const char *why);
/* Set by the fuzz targets, whose hostile drivers make every device fail: no line
 * on stderr per failure. */
extern bool virtio_fail_quiet;

#endif
