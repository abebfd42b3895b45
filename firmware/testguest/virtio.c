/* The virtio-mmio transport and split virtqueues as the net and vsock modes use them. */
#include "firmware/testguest/virtio.h"

void vdev_find(struct vdev *vd, const char *name, uint32_t id, const struct tg_virtio_dev *devs,
	       unsigned ndev)
{
	vd->name = name;
	for (unsigned i = 0; i < ndev && !vd->dev; i++)
		if (tg_virtio_probe(&devs[i]) == id)
			vd->dev = &devs[i];
	if (!vd->dev)
		tg_fail(TG_EXIT_NO_DEVICE, "mode %s but no virtio-%s device on the command line",
			name, name);
}

uint64_t vdev_begin(const struct vdev *vd)
{
	vdev_write(vd, VM_STATUS, 0);
	vdev_write(vd, VM_STATUS, ST_ACKNOWLEDGE);
	vdev_write(vd, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);
	vdev_write(vd, VM_DEVICE_FEAT_SEL, 0);
	uint64_t offered = vdev_read(vd, VM_DEVICE_FEATURES);
	vdev_write(vd, VM_DEVICE_FEAT_SEL, 1);
	return offered | (uint64_t)vdev_read(vd, VM_DEVICE_FEATURES) << 32;
}

void vdev_set_features(const struct vdev *vd, uint64_t features)
{
	vdev_write(vd, VM_DRIVER_FEAT_SEL, 0);
	vdev_write(vd, VM_DRIVER_FEATURES, (uint32_t)features);
	vdev_write(vd, VM_DRIVER_FEAT_SEL, 1);
	vdev_write(vd, VM_DRIVER_FEATURES, (uint32_t)(features >> 32));
	vdev_write(vd, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
	if (!(vdev_read(vd, VM_STATUS) & ST_FEATURES_OK))
		tg_fail(TG_EXIT_TRANSPORT, "virtio-%s refused features 0x%lx", vd->name, features);
}

void vq_setup(const struct vdev *vd, struct vq *q, unsigned qi, uint16_t size)
{
	q->size = size;
	vdev_write(vd, VM_QUEUE_SEL, qi);
	if (vdev_read(vd, VM_QUEUE_READY) != 0)
		tg_fail(TG_EXIT_TRANSPORT, "%s queue %u is still ready after reset", vd->name, qi);
	uint32_t max = vdev_read(vd, VM_QUEUE_NUM_MAX);
	if (max < size)
		tg_fail(TG_EXIT_TRANSPORT, "%s queue %u: QueueNumMax %u, want at least %u", vd->name,
			qi, max, size);
	vdev_write(vd, VM_QUEUE_NUM, size);
	uint64_t desc = (uintptr_t)q->desc, avail = (uintptr_t)&q->avail;
	uint64_t used = (uintptr_t)&q->used;
	vdev_write(vd, VM_QUEUE_DESC_LO, (uint32_t)desc);
	vdev_write(vd, VM_QUEUE_DESC_HI, (uint32_t)(desc >> 32));
	vdev_write(vd, VM_QUEUE_AVAIL_LO, (uint32_t)avail);
	vdev_write(vd, VM_QUEUE_AVAIL_HI, (uint32_t)(avail >> 32));
	vdev_write(vd, VM_QUEUE_USED_LO, (uint32_t)used);
	vdev_write(vd, VM_QUEUE_USED_HI, (uint32_t)(used >> 32));
	vdev_write(vd, VM_QUEUE_READY, 1);
	if (vdev_read(vd, VM_QUEUE_READY) != 1)
		tg_fail(TG_EXIT_TRANSPORT, "%s queue %u: QueueReady does not read back 1", vd->name,
			qi);
}

static void vdev_irq(void *arg)
{
	struct vdev *vd = arg;
	uint32_t st = vdev_read(vd, VM_INT_STATUS);
	vdev_write(vd, VM_INT_ACK, st);
	if (st & INT_CONFIG)
		vd->config_irqs = vd->config_irqs + 1;
}

void vdev_driver_ok(struct vdev *vd)
{
	tg_irq_route(vd->dev->irq, vdev_irq, vd);
	vdev_write(vd, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	uint32_t st = vdev_read(vd, VM_STATUS);
	if (st & (ST_NEEDS_RESET | ST_FAILED) || !(st & ST_DRIVER_OK))
		tg_fail(TG_EXIT_TRANSPORT, "virtio-%s status 0x%x after DRIVER_OK", vd->name, st);
}

bool vdev_config_changed(struct vdev *vd)
{
	if (vd->config_irqs == vd->config_seen)
		return false;
	vd->config_seen = vd->config_irqs;
	if (vdev_read(vd, VM_STATUS) & ST_NEEDS_RESET)
		tg_fail(TG_EXIT_TRANSPORT, "virtio-%s needs a reset (it found the rings malformed)",
			vd->name);
	return true;
}

struct used_elem vq_take_used(struct vq *q)
{
	struct used_elem e = { READ_ONCE(q->used.ring[q->last_used % q->size].elem.id),
			       READ_ONCE(q->used.ring[q->last_used % q->size].elem.len) };
	q->last_used++;
	return e;
}

void vq_post(struct vq *q, unsigned id)
{
	q->avail.ring[q->avail_idx % q->size] = (uint16_t)id;
	q->avail_idx++;
}

void vq_publish(const struct vdev *vd, struct vq *q, unsigned qi, bool event_idx)
{
	if (q->avail_idx == q->published)
		return;
	uint16_t old = q->published;
	barrier(); /* ring slots before the index (x86 keeps stores in order) */
	WRITE_ONCE(q->avail.idx, q->avail_idx);
	q->published = q->avail_idx;
	mb(); /* publish idx before reading the device's suppression state */
	bool kick = event_idx
		? need_event(READ_ONCE(q->used.ring[q->size].avail_event), q->avail_idx, old)
		: !(READ_ONCE(q->used.flags) & USED_F_NO_NOTIFY);
	if (kick)
		vdev_write(vd, VM_QUEUE_NOTIFY, qi);
}
