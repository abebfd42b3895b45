#include "virtio_mmio.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>

#define TRANSPORT_FEATURES ((1ULL << VIRTIO_F_VERSION_1) | \
			    (1ULL << VIRTIO_F_RING_EVENT_IDX) | \
			    (1ULL << VIRTIO_F_RING_INDIRECT_DESC))

void virtio_device_init(struct virtio_device *d, const struct virtio_device_ops *ops, void *priv,
			const struct guest_mem *mem, uint64_t mmio_base, unsigned irq)
{
	memset(d, 0, sizeof(*d));
	d->ops = ops;
	d->priv = priv;
	d->mem = mem;
	d->mmio_base = mmio_base;
	d->irq = irq;
	d->irqfd = -1;
	for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++)
		d->notify_fd[i] = -1;
	pthread_mutex_init(&d->lock, NULL);
}

void virtio_device_destroy(struct virtio_device *d)
{
	pthread_mutex_destroy(&d->lock);
}

uint64_t virtio_device_features(const struct virtio_device *d)
{
	return d->ops->features | TRANSPORT_FEATURES;
}

bool virtio_device_has_feature(const struct virtio_device *d, unsigned bit)
{
	return bit < 64 && (d->driver_features & (1ULL << bit));
}

bool virtio_device_active(const struct virtio_device *d)
{
	return (d->status & VIRTIO_STATUS_DRIVER_OK) &&
	       !(d->status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED));
}

static void raise_irq(struct virtio_device *d, uint32_t why)
{
	d->interrupt_status |= why;
	d->irq_count++;
	/* An eventfd write only fails when the counter would overflow, and then the
	 * interrupt is pending anyway. */
	if (d->irqfd >= 0)
		(void)eventfd_write(d->irqfd, 1);
}

void virtio_device_notify_used(struct virtio_device *d, unsigned q)
{
	if (q < d->ops->num_queues && virtq_should_notify(&d->vqs[q], d->mem))
		raise_irq(d, VIRTIO_INT_USED_RING);
}

void virtio_device_config_changed(struct virtio_device *d)
{
	d->config_generation++;
	raise_irq(d, VIRTIO_INT_CONFIG);
}

bool virtio_fail_quiet;

void virtio_device_fail(struct virtio_device *d, const char *why)
{
	if (d->status & VIRTIO_STATUS_NEEDS_RESET)
		return;
	if (!virtio_fail_quiet)
		fprintf(stderr, "mitos-vmm: %s: device needs reset: %s\n", d->ops->name, why);
	d->status |= VIRTIO_STATUS_NEEDS_RESET;
	if (d->status & VIRTIO_STATUS_DRIVER_OK)
		virtio_device_config_changed(d);
}

static void device_reset(struct virtio_device *d)
{
	if (d->ops->reset)
		d->ops->reset(d);
	d->status = 0;
	d->device_features_sel = d->driver_features_sel = 0;
	d->driver_features = 0;
	d->queue_sel = 0;
	d->interrupt_status = 0;
	memset(d->vqs, 0, sizeof(d->vqs));
}

static struct virtq *selected_queue(struct virtio_device *d)
{
	return d->queue_sel < d->ops->num_queues ? &d->vqs[d->queue_sel] : NULL;
}

static uint32_t reg_read(struct virtio_device *d, uint64_t off)
{
	struct virtq *q = selected_queue(d);
	uint64_t features = virtio_device_features(d);

	switch (off) {
	case VIRTIO_MMIO_MAGIC_VALUE: return VIRTIO_MMIO_MAGIC;
	case VIRTIO_MMIO_VERSION_REG: return VIRTIO_MMIO_VERSION;
	case VIRTIO_MMIO_DEVICE_ID: return d->ops->device_id;
	case VIRTIO_MMIO_VENDOR_ID: return VIRTIO_MMIO_VENDOR;
	case VIRTIO_MMIO_DEVICE_FEATURES:
		return d->device_features_sel == 0 ? (uint32_t)features :
		       d->device_features_sel == 1 ? (uint32_t)(features >> 32) : 0;
	case VIRTIO_MMIO_QUEUE_NUM_MAX: return q ? d->ops->queue_max_size : 0;
	case VIRTIO_MMIO_QUEUE_READY: return q ? q->ready : 0;
	case VIRTIO_MMIO_INTERRUPT_STATUS: return d->interrupt_status;
	case VIRTIO_MMIO_STATUS: return d->status;
	case VIRTIO_MMIO_CONFIG_GENERATION: return d->config_generation;
	default: return 0;
	}
}

static void set_half(uint64_t *v, bool high, uint32_t val)
{
	*v = high ? (*v & 0xffffffffULL) | ((uint64_t)val << 32)
		  : (*v & ~0xffffffffULL) | val;
}

/* The driver sets FEATURES_OK: accept only a subset of what we offered, and only with
 * VERSION_1 (this transport is modern-only). */
static bool features_acceptable(const struct virtio_device *d)
{
	return !(d->driver_features & ~virtio_device_features(d)) &&
	       (d->driver_features & (1ULL << VIRTIO_F_VERSION_1));
}

static void driver_ok(struct virtio_device *d)
{
	bool event_idx = virtio_device_has_feature(d, VIRTIO_F_RING_EVENT_IDX);
	for (unsigned i = 0; i < d->ops->num_queues; i++) {
		struct virtq *q = &d->vqs[i];
		q->event_idx = event_idx;
		if (q->ready && virtq_validate(q, d->mem)) {
			virtio_device_fail(d, "queue rings outside guest RAM or misaligned");
			return;
		}
	}
	if (d->ops->activate && d->ops->activate(d))
		virtio_device_fail(d, "activation failed");
}

static void status_write(struct virtio_device *d, uint32_t val)
{
	val &= 0xff; /* the register's width: more would be kept, and refused at a restore */
	if (val == 0) {
		device_reset(d);
		return;
	}
	/* Bits may only be added, never cleared, short of a reset. */
	if ((d->status & ~val) & 0xff)
		return;
	uint32_t added = val & ~d->status;
	if ((added & VIRTIO_STATUS_FEATURES_OK) && !features_acceptable(d))
		added &= ~VIRTIO_STATUS_FEATURES_OK;
	if ((added & VIRTIO_STATUS_DRIVER_OK) && !((d->status | added) & VIRTIO_STATUS_FEATURES_OK))
		added &= ~VIRTIO_STATUS_DRIVER_OK;
	d->status |= added;
	if (added & VIRTIO_STATUS_DRIVER_OK)
		driver_ok(d);
}

static void reg_write(struct virtio_device *d, uint64_t off, uint32_t val)
{
	struct virtq *q = selected_queue(d);
	/* Queue layout and features are frozen once the driver says DRIVER_OK / FEATURES_OK. */
	bool queue_writable = q && !(d->status & VIRTIO_STATUS_DRIVER_OK) && !q->ready;

	switch (off) {
	case VIRTIO_MMIO_DEVICE_FEATURES_SEL: d->device_features_sel = val; break;
	case VIRTIO_MMIO_DRIVER_FEATURES_SEL: d->driver_features_sel = val; break;
	case VIRTIO_MMIO_DRIVER_FEATURES:
		if (!(d->status & VIRTIO_STATUS_FEATURES_OK) && d->driver_features_sel < 2)
			set_half(&d->driver_features, d->driver_features_sel == 1, val);
		break;
	case VIRTIO_MMIO_QUEUE_SEL: d->queue_sel = val; break;
	case VIRTIO_MMIO_QUEUE_NUM:
		if (queue_writable)
			q->size = val <= d->ops->queue_max_size && val <= 0xffff ? (uint16_t)val : 0;
		break;
	case VIRTIO_MMIO_QUEUE_READY:
		if (q && !(d->status & VIRTIO_STATUS_DRIVER_OK))
			q->ready = val == 1 && virtq_validate(q, d->mem) == 0;
		break;
	case VIRTIO_MMIO_QUEUE_NOTIFY:
		/* Kicks normally arrive through the ioeventfd; this path serves a VMM without it. */
		if (val < d->ops->num_queues && d->notify_fd[val] >= 0)
			(void)eventfd_write(d->notify_fd[val], 1);
		break;
	case VIRTIO_MMIO_INTERRUPT_ACK: d->interrupt_status &= ~val; break;
	case VIRTIO_MMIO_STATUS: status_write(d, val); break;
	case VIRTIO_MMIO_QUEUE_DESC_LOW: case VIRTIO_MMIO_QUEUE_DESC_HIGH:
		if (queue_writable)
			set_half(&q->desc_gpa, off == VIRTIO_MMIO_QUEUE_DESC_HIGH, val);
		break;
	case VIRTIO_MMIO_QUEUE_AVAIL_LOW: case VIRTIO_MMIO_QUEUE_AVAIL_HIGH:
		if (queue_writable)
			set_half(&q->avail_gpa, off == VIRTIO_MMIO_QUEUE_AVAIL_HIGH, val);
		break;
	case VIRTIO_MMIO_QUEUE_USED_LOW: case VIRTIO_MMIO_QUEUE_USED_HIGH:
		if (queue_writable)
			set_half(&q->used_gpa, off == VIRTIO_MMIO_QUEUE_USED_HIGH, val);
		break;
	default:
		break;
	}
}

/* Config space accesses must lie wholly inside the device's config structure. */
static bool config_access(const struct virtio_device *d, uint64_t off, unsigned len,
			  uint32_t *cfg_off)
{
	if (off < VIRTIO_MMIO_CONFIG_OFFSET || len == 0 || len > 8)
		return false;
	uint64_t o = off - VIRTIO_MMIO_CONFIG_OFFSET;
	if (o >= d->ops->config_size || len > d->ops->config_size - o)
		return false;
	*cfg_off = (uint32_t)o;
	return true;
}

void virtio_mmio_read(struct virtio_device *d, uint64_t off, void *data, unsigned len)
{
	uint32_t cfg_off;
	memset(data, 0, len);
	pthread_mutex_lock(&d->lock);
	if (config_access(d, off, len, &cfg_off)) {
		if (d->ops->config_read)
			d->ops->config_read(d, cfg_off, data, len);
	} else if (off < VIRTIO_MMIO_CONFIG_OFFSET && len == 4 && !(off & 3)) {
		uint32_t v = reg_read(d, off);
		memcpy(data, &v, 4);
	}
	pthread_mutex_unlock(&d->lock);
}

void virtio_mmio_write(struct virtio_device *d, uint64_t off, const void *data, unsigned len)
{
	uint32_t cfg_off;
	pthread_mutex_lock(&d->lock);
	if (config_access(d, off, len, &cfg_off)) {
		if (d->ops->config_write)
			d->ops->config_write(d, cfg_off, data, len);
	} else if (off < VIRTIO_MMIO_CONFIG_OFFSET && len == 4 && !(off & 3)) {
		uint32_t v;
		memcpy(&v, data, 4);
		reg_write(d, off, v);
	}
	pthread_mutex_unlock(&d->lock);
}

void virtio_device_kick(struct virtio_device *d, unsigned q)
{
	pthread_mutex_lock(&d->lock);
	if (q < d->ops->num_queues && virtio_device_active(d) && d->vqs[q].ready &&
	    d->ops->queue_notify)
		d->ops->queue_notify(d, q);
	pthread_mutex_unlock(&d->lock);
}

bool virtio_device_kick_again(struct virtio_device *d, unsigned q)
{
	return q < d->ops->num_queues && d->notify_fd[q] >= 0 && eventfd_write(d->notify_fd[q], 1) == 0;
}

void virtio_device_host_fd_ready(struct virtio_device *d, unsigned i)
{
	pthread_mutex_lock(&d->lock);
	if (d->ops->host_fd_ready)
		d->ops->host_fd_ready(d, i);
	pthread_mutex_unlock(&d->lock);
}

void virtio_transport_save(const struct virtio_device *d, struct virtio_transport_state *s)
{
	memset(s, 0, sizeof(*s));
	s->device_id = d->ops->device_id;
	s->status = d->status;
	s->device_features_sel = d->device_features_sel;
	s->driver_features_sel = d->driver_features_sel;
	s->queue_sel = d->queue_sel;
	s->interrupt_status = d->interrupt_status;
	s->config_generation = d->config_generation;
	s->num_queues = d->ops->num_queues;
	s->driver_features = d->driver_features;
	for (unsigned i = 0; i < d->ops->num_queues; i++) {
		const struct virtq *q = &d->vqs[i];
		s->q[i] = (struct virtio_queue_state){
			.desc_gpa = q->desc_gpa, .avail_gpa = q->avail_gpa, .used_gpa = q->used_gpa,
			.size = q->size, .last_avail_idx = q->last_avail_idx, .used_idx = q->used_idx,
			.signalled_used = q->signalled_used, .ready = q->ready,
			.event_idx = q->event_idx, .signalled_used_valid = q->signalled_used_valid };
	}
}

int virtio_transport_restore(struct virtio_device *d, const struct virtio_transport_state *s)
{
	/* Features are the device's only once accepted (FEATURES_OK); before, a driver may
	 * have written any bits, which the next negotiation refuses as it would have. */
	bool accepted = s->status & VIRTIO_STATUS_FEATURES_OK;
	if (s->device_id != d->ops->device_id || s->num_queues != d->ops->num_queues ||
	    (accepted && (s->driver_features & ~virtio_device_features(d))) || (s->status & ~0xffU))
		return -EINVAL;
	struct virtq vqs[VIRTIO_MAX_QUEUES];
	memset(vqs, 0, sizeof(vqs));
	for (unsigned i = 0; i < s->num_queues; i++) {
		const struct virtio_queue_state *qs = &s->q[i];
		struct virtq *q = &vqs[i];
		*q = (struct virtq){
			.size = qs->size, .ready = qs->ready, .desc_gpa = qs->desc_gpa,
			.avail_gpa = qs->avail_gpa, .used_gpa = qs->used_gpa, .event_idx = qs->event_idx,
			.last_avail_idx = qs->last_avail_idx, .used_idx = qs->used_idx,
			.signalled_used = qs->signalled_used,
			.signalled_used_valid = qs->signalled_used_valid };
		if (q->size > d->ops->queue_max_size || (q->ready && virtq_validate(q, d->mem)))
			return -EINVAL;
	}
	memcpy(d->vqs, vqs, sizeof(vqs));
	d->status = s->status;
	d->device_features_sel = s->device_features_sel;
	d->driver_features_sel = s->driver_features_sel;
	d->queue_sel = s->queue_sel;
	d->interrupt_status = s->interrupt_status;
	d->config_generation = s->config_generation;
	d->driver_features = s->driver_features;
	return 0;
}
