/* virtio-mmio registers and split-ring layout for the test guest's drivers (virtio 1.2,
 * 2.7 and 4.2.2). Our own copy: devices/virtio_mmio.h pulls in host headers. */
#ifndef MITOS_TESTGUEST_VIRTIO_H
#define MITOS_TESTGUEST_VIRTIO_H

#include <stdbool.h>
#include <stdint.h>

#include "firmware/testguest/tg.h"

#define VM_MAGIC            0x000
#define VM_VERSION          0x004
#define VM_DEVICE_ID        0x008
#define VM_VENDOR_ID        0x00c
#define VM_DEVICE_FEATURES  0x010
#define VM_DEVICE_FEAT_SEL  0x014
#define VM_DRIVER_FEATURES  0x020
#define VM_DRIVER_FEAT_SEL  0x024
#define VM_QUEUE_SEL        0x030
#define VM_QUEUE_NUM_MAX    0x034
#define VM_QUEUE_NUM        0x038
#define VM_QUEUE_READY      0x044
#define VM_QUEUE_NOTIFY     0x050
#define VM_INT_STATUS       0x060
#define VM_INT_ACK          0x064
#define VM_STATUS           0x070
#define VM_QUEUE_DESC_LO    0x080
#define VM_QUEUE_DESC_HI    0x084
#define VM_QUEUE_AVAIL_LO   0x090
#define VM_QUEUE_AVAIL_HI   0x094
#define VM_QUEUE_USED_LO    0x0a0
#define VM_QUEUE_USED_HI    0x0a4
#define VM_CONFIG_GEN       0x0fc
#define VM_CONFIG           0x100

#define VIRTIO_MAGIC        0x74726976u
#define ST_ACKNOWLEDGE      1u
#define ST_DRIVER           2u
#define ST_DRIVER_OK        4u
#define ST_FEATURES_OK      8u
#define ST_NEEDS_RESET      0x40u
#define ST_FAILED           0x80u
#define INT_USED_RING       1u
#define INT_CONFIG          2u

#define F_INDIRECT_DESC     (1ULL << 28)
#define F_EVENT_IDX         (1ULL << 29)
#define F_VERSION_1         (1ULL << 32)

#define DESC_F_NEXT         1
#define DESC_F_WRITE        2
#define DESC_F_INDIRECT     4
#define AVAIL_F_NO_INTERRUPT 1
#define USED_F_NO_NOTIFY    1

struct vdesc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};

struct used_elem {
	uint32_t id, len;
};

/* vring_need_event(): did the other side ask for a notification somewhere in
 * (old, new_idx]? */
static inline bool need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
	return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

/* A split virtqueue of up to VQ_MAX entries in one block. The avail ring's used_event
 * and the used ring's avail_event follow the size in use: ring[size] holds them. */
#define VQ_MAX 64
struct vq {
	struct vdesc desc[VQ_MAX];
	struct {
		uint16_t flags, idx, ring[VQ_MAX + 1];
	} avail;
	struct {
		uint16_t flags, idx;
		union {
			struct used_elem elem;
			uint16_t avail_event;
		} ring[VQ_MAX + 1];
	} used __attribute__((aligned(4)));
	uint16_t size;
	uint16_t avail_idx;                /* next avail slot to fill */
	uint16_t published;                /* avail idx the device has seen */
	uint16_t last_used;                /* used entries consumed */
} __attribute__((aligned(64)));

/* A device the net and vsock modes drive; name ("net", "vsock") goes into messages. */
struct vdev {
	const struct tg_virtio_dev *dev;
	const char *name;
	volatile unsigned config_irqs;
	unsigned config_seen;
};

static inline uint32_t vdev_read(const struct vdev *vd, unsigned off)
{
	return mmio_read32(vd->dev->base + off);
}

static inline void vdev_write(const struct vdev *vd, unsigned off, uint32_t v)
{
	mmio_write32(vd->dev->base + off, v);
}

/* The first device of type id, or the test fails. */
void vdev_find(struct vdev *vd, const char *name, uint32_t id, const struct tg_virtio_dev *devs,
	       unsigned ndev);
/* Resets the device and says ACKNOWLEDGE and DRIVER; returns the features it offers. */
uint64_t vdev_begin(const struct vdev *vd);
void vdev_set_features(const struct vdev *vd, uint64_t features);
void vq_setup(const struct vdev *vd, struct vq *q, unsigned qi, uint16_t size);
/* Routes the device's interrupt (it counts configuration changes) and says DRIVER_OK. */
void vdev_driver_ok(struct vdev *vd);
/* Whether a configuration change came since the last call; fails the test when the
 * device needs a reset (it found the rings malformed). */
bool vdev_config_changed(struct vdev *vd);

static inline uint16_t vq_used_idx(const struct vq *q)
{
	return READ_ONCE(q->used.idx);
}

static inline void vq_set_used_event(struct vq *q, uint16_t idx)
{
	WRITE_ONCE(q->avail.ring[q->size], idx);
}

struct used_elem vq_take_used(struct vq *q);
void vq_post(struct vq *q, unsigned id);
/* Makes what was posted visible and kicks if the device asked for it (event_idx) or did
 * not say it polls. */
void vq_publish(const struct vdev *vd, struct vq *q, unsigned qi, bool event_idx);

#endif
