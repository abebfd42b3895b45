/* One VM's snapshots: pause and resume, writing a snapshot, reading one ahead (arm)
 * and restoring it into a prepared VM. */
#include "machine_internal.h"
#include "../snapshot/memory_file.h"
#include "acpi.h"
#include "device_state.h"
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- pause, resume, snapshot ------------------------------------------------------- */

/* The vCPUs for vm_state_save/restore, which index them as an array. */
static void vcpu_list(struct machine *m, struct vcpu **out)
{
	for (unsigned i = 0; i < m->nvcpus; i++)
		out[i] = &m->vcpus[i].vcpu;
}

int machine_pause(struct machine *m)
{
	if (m->paused)
		return 0;
	pthread_mutex_lock(&m->pause_lock);
	__atomic_store_n(&m->pause_requested, true, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&m->pause_lock);
	unsigned running = 0;
	for (unsigned i = 0; i < m->nvcpus; i++) {
		struct vcpu_thread *t = &m->vcpus[i];
		if (!t->started)
			continue;
		running++;
		t->vcpu.run->immediate_exit = 1;
		pthread_kill(t->thread, SIGUSR1);
	}
	pthread_mutex_lock(&m->pause_lock);
	while (m->nparked < running && !atomic_load(&m->stopping))
		pthread_cond_wait(&m->pause_cond, &m->pause_lock);
	pthread_mutex_unlock(&m->pause_lock);
	if (atomic_load(&m->stopping))
		return -ESHUTDOWN;
	m->paused = true;
	return 0;
}

void machine_resume(struct machine *m)
{
	pthread_mutex_lock(&m->pause_lock);
	__atomic_store_n(&m->pause_requested, false, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&m->pause_cond);
	pthread_mutex_unlock(&m->pause_lock);
	m->paused = false;
}

bool machine_paused(const struct machine *m)
{
	return m->paused;
}

/* Layouts of the serial port's and the virtio transport's state sections: raised when
 * struct serial_state or struct virtio_transport_state change (device_state.h). */
#define SERIAL_STATE_VERSION 1
#define TRANSPORT_STATE_VERSION 1

static const struct dev_identity serial_identity = {
	.kind = DEV_KIND_SERIAL, .base = LAYOUT_COM1_PORT, .irq = LAYOUT_COM1_IRQ };

static struct dev_identity virtio_identity(const struct virtio_slot *slot)
{
	return (struct dev_identity){ .kind = slot->dev->ops->device_id, .base = slot->dev->mmio_base,
				      .irq = slot->dev->irq };
}

static int save_devices(struct machine *m, struct state_writer *w, struct mitos_err *e)
{
	struct serial_state ss;
	serial_save(m->serial, &ss);
	dev_state_add(w, SS_DEV_SERIAL, 0, &serial_identity, SERIAL_STATE_VERSION, &ss, sizeof(ss));
	uint8_t *buf = malloc(STATE_DEVICE_MAX);
	if (!buf)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	int r = 0;
	for (unsigned i = 0; i < m->ndevs && !r; i++) {
		struct virtio_device *d = m->devs[i].dev;
		struct dev_identity who = virtio_identity(&m->devs[i]);
		pthread_mutex_lock(&d->lock);
		if (d->ops->quiesce && (r = d->ops->quiesce(d)))
			mitos_err_set(e, r, "%s: cannot quiesce: %s", d->ops->name, strerror(-r));
		struct virtio_transport_state ts;
		virtio_transport_save(d, &ts);
		dev_state_add(w, SS_DEV_VIRTIO_TRANSPORT, i, &who, TRANSPORT_STATE_VERSION, &ts, sizeof(ts));
		int len = !r && d->ops->save_state ? d->ops->save_state(d, buf, STATE_DEVICE_MAX) : 0;
		if (len < 0)
			r = mitos_err_set(e, len, "%s: cannot save its state: %s", d->ops->name, strerror(-len));
		else if (len > 0)
			dev_state_add(w, SS_DEV_VIRTIO_DEVICE, i, &who, d->ops->state_version, buf, (size_t)len);
		pthread_mutex_unlock(&d->lock);
	}
	free(buf);
	return r;
}

/* A fixed-size section of the device who, copied into dst. */
static int dev_state_copy(const struct state_blob *b, const char *name, uint32_t type, uint32_t id,
			  const struct dev_identity *who, uint32_t max_version, void *dst, size_t size,
			  struct mitos_err *e)
{
	uint32_t version;
	size_t len;
	const void *p;
	int r = dev_state_get(b, name, type, id, who, max_version, false, &p, &len, &version, e);
	if (r)
		return r;
	if (len != size)
		return mitos_err_set(e, -EINVAL, "state file: the %s's state is %zu bytes, expected %zu", name, len,
				     size);
	memcpy(dst, p, size);
	return 0;
}

static int restore_devices(struct machine *m, const struct state_blob *b, struct mitos_err *e)
{
	struct serial_state ss;
	int r = dev_state_copy(b, "serial port", SS_DEV_SERIAL, 0, &serial_identity, SERIAL_STATE_VERSION, &ss,
			       sizeof(ss), e);
	if (r)
		return r;
	if (serial_restore(m->serial, &ss))
		return mitos_err_set(e, -EINVAL, "state file: serial port state is invalid");
	for (unsigned i = 0; i < m->ndevs && !r; i++) {
		struct virtio_device *d = m->devs[i].dev;
		struct dev_identity who = virtio_identity(&m->devs[i]);
		char name[64];
		snprintf(name, sizeof(name), "virtio device %u (%s)", i, d->ops->name);
		struct virtio_transport_state ts;
		if ((r = dev_state_copy(b, name, SS_DEV_VIRTIO_TRANSPORT, i, &who, TRANSPORT_STATE_VERSION, &ts,
					sizeof(ts), e)))
			break;
		uint32_t version;
		size_t len;
		const void *dev_state;
		if ((r = dev_state_get(b, name, SS_DEV_VIRTIO_DEVICE, i, &who, d->ops->state_version, true, &dev_state,
				       &len, &version, e)))
			break;
		pthread_mutex_lock(&d->lock);
		if (virtio_transport_restore(d, &ts))
			r = mitos_err_set(e, -EINVAL, "state file: %s does not match this machine's or its queues "
					  "lie outside RAM", name);
		else if (d->ops->restore_state && (r = d->ops->restore_state(d, dev_state, len)))
			mitos_err_set(e, r, "state file: %s state rejected: %s", d->ops->name, strerror(-r));
		pthread_mutex_unlock(&d->lock);
	}
	return r;
}

static int make_snapshot_dir(const char *dir, struct mitos_err *e)
{
	if (mkdir(dir, 0755) == 0)
		return 0;
	if (errno != EEXIST)
		return mitos_err_set(e, -errno, "cannot create %s: %s", dir, strerror(errno));
	/* An empty one is fine: serve makes a jailed VM's layer directory to mount it in.
	 * (stat, not access: the seccomp filter allows the one glibc's stat uses.) */
	char path[PATH_MAX];
	struct stat st;
	snprintf(path, sizeof(path), "%s/%s", dir, SNAPSHOT_CONFIG_NAME);
	if (stat(path, &st) == 0)
		return mitos_err_set(e, -EEXIST, "%s already holds a snapshot; snapshots are never "
				     "overwritten (children may be mapping its files): pick a new directory",
				     dir);
	return 0;
}

int machine_snapshot(struct machine *m, const char *dir, struct mitos_err *e)
{
	bool was_paused = m->paused;
	int r = machine_pause(m);
	if (r)
		return mitos_err_set(e, r, "the VM is stopping");
	struct state_writer w;
	state_writer_init(&w);
	struct mem_extents x = { 0 };
	struct snapshot_config sc = { 0 };
	if (!m->msrs.index && (r = vm_state_msr_set(&m->vm, &m->vcpus[0].vcpu, &m->msrs, e)))
		goto out;
	struct vcpu *vcpus[LAYOUT_MAX_VCPUS];
	vcpu_list(m, vcpus);
	if ((r = make_snapshot_dir(dir, e)) ||
	    (r = vm_state_save(&m->vm, vcpus, m->nvcpus, &m->msrs, &w, e)) ||
	    (r = save_devices(m, &w, e)) ||
	    (r = memory_dirty_extents(&m->mem, &x, e)))
		goto out;
	if (x.n > MEMORY_MAX_EXTENTS) {
		r = mitos_err_set(e, -E2BIG, "%llu changed memory extents: too fragmented for a layer",
				  (unsigned long long)x.n);
		goto out;
	}
	sc = (struct snapshot_config){
		.mem_bytes = m->mem.size, .vcpus = m->nvcpus, .cmdline = m->cmdline,
		.has_vsock = m->cfg.vsock_path != NULL,
		.vsock_cid = m->cfg.vsock_cid, .has_net = m->cfg.has_net,
		.parent = m->snapshot_parent,
		.depth = m->snapshot_parent ? m->snapshot_depth + 1 : 0,
	};
	/* Disks are the first devices (machine_setup_virtio). */
	for (unsigned i = 0; i < m->cfg.ndisks; i++) {
		const struct virtio_blk_opts *d = &m->cfg.disks[i];
		/* Absolute, so the snapshot means the same from any working directory. A disk
		 * handed over open may not be visible here (a jailed VM): its name is kept as
		 * given, which must be absolute already. */
		char *abs = d->has_fd ? (d->path[0] == '/' ? strdup(d->path) : NULL) : realpath(d->path, NULL);
		if (!abs) {
			r = d->has_fd ? mitos_err_set(e, -EINVAL, "disk %s came as a descriptor named by a relative "
						      "path: a snapshot needs its absolute path", d->path)
				      : mitos_err_set(e, -errno, "disk %s: %s", d->path, strerror(errno));
			goto out;
		}
		sc.disks[i] = (struct snapshot_disk){ .path = abs, .read_only = d->read_only,
						      .bytes = virtio_blk_bytes(m->devs[i].dev) };
		sc.ndisks = i + 1;
	}
	char state_path[PATH_MAX];
	snprintf(state_path, sizeof(state_path), "%s/%s", dir, SNAPSHOT_STATE_NAME);
	/* config.json last: its presence says the snapshot is complete. */
	if ((r = memory_file_write(dir, &m->mem, &x, e)) ||
	    (r = state_file_write(state_path, &w, e)) ||
	    (r = snapshot_config_write(dir, &sc, e)))
		goto out;
out:
	for (unsigned i = 0; i < sc.ndisks; i++)
		free(sc.disks[i].path);
	memory_extents_free(&x);
	state_writer_free(&w);
	if (!was_paused)
		machine_resume(m);
	return r;
}

int machine_config_from_snapshot(const struct snapshot_config *sc, struct machine_config *c,
				 const bool *overridden, struct mitos_err *e)
{
	c->mem_bytes = sc->mem_bytes;
	c->vcpus = sc->vcpus;
	c->ndisks = sc->ndisks;
	for (unsigned i = 0; i < sc->ndisks; i++) {
		if (!overridden[i]) {
			if (!sc->disks[i].read_only)
				return mitos_err_set(e, -EINVAL, "disk %u (%s) was attached read-write: "
						     "restored VMs never share a writable disk. Give this one "
						     "its own image with --disk %u=PATH (for example a copy made "
						     "with cp --reflink=auto %s PATH)", i, sc->disks[i].path, i,
						     sc->disks[i].path);
			c->disks[i] = (struct virtio_blk_opts){ .path = sc->disks[i].path, .read_only = true };
		}
		struct stat st;
		if (c->disks[i].has_fd ? fstat(c->disks[i].fd, &st) : stat(c->disks[i].path, &st))
			return mitos_err_set(e, -errno, "disk %u: %s: %s", i, c->disks[i].path,
					     strerror(errno));
		/* A block device's size is not in st_size; virtio-blk sizes it when it opens. */
		if (S_ISREG(st.st_mode) && (uint64_t)st.st_size != sc->disks[i].bytes)
			return mitos_err_set(e, -EINVAL, "disk %u: %s is %lld bytes, the snapshot's disk "
					     "was %llu: the guest would see a different disk", i,
					     c->disks[i].path, (long long)st.st_size,
					     (unsigned long long)sc->disks[i].bytes);
	}
	if (sc->has_vsock && !c->vsock_path)
		return mitos_err_set(e, -EINVAL, "the snapshot has a vsock device: give its host "
				     "socket (--vsock PATH)");
	if (!sc->has_vsock && c->vsock_path)
		return mitos_err_set(e, -EINVAL, "the snapshot has no vsock device");
	c->vsock_cid = sc->vsock_cid;
	/* The MAC comes back with the device's state; only the TAP is the child's own. */
	if (sc->has_net && !c->has_net)
		return mitos_err_set(e, -EINVAL, "the snapshot has a network device: give the "
				     "child its own TAP (--net tap=NAME or fd=N)");
	if (!sc->has_net && c->has_net)
		return mitos_err_set(e, -EINVAL, "the snapshot has no network device");
	return 0;
}

void machine_ahead_drop(struct snapshot_read *a)
{
	if (!a->dir)
		return;
	free(a->dir);
	snapshot_config_free(&a->sc);
	snapshot_chain_free(a->chain, a->depth);
	state_blob_free(&a->state);
	memset(a, 0, sizeof(*a));
}

/* A snapshot of mem_bytes of RAM and vcpus vCPUs fits only a VM of that shape. */
static int shape_check(const struct machine *m, const char *dir, uint64_t mem_bytes, unsigned vcpus,
		       struct mitos_err *e)
{
	if (mem_bytes == m->mem.size && vcpus == m->nvcpus)
		return 0;
	return mitos_err_set(e, -EINVAL, "snapshot %s needs %llu MiB and %u vCPUs; this VM has %llu MiB and %u",
			     dir, (unsigned long long)(mem_bytes >> 20), vcpus,
			     (unsigned long long)(m->mem.size >> 20), m->nvcpus);
}

static bool same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* m->ahead holds dir's snapshot: what was read before if its config.json is still the
 * same file, else read now. Everything is checked before the first change to the VM. */
static int ahead_read(struct machine *m, const char *dir, struct mitos_err *e)
{
	char path[PATH_MAX];
	struct stat st = { 0 };
	snprintf(path, sizeof(path), "%s/%s", dir, SNAPSHOT_CONFIG_NAME);
	bool known = stat(path, &st) == 0;
	if (known && m->ahead.dir && !strcmp(m->ahead.dir, dir) && same_file(&st, &m->ahead.cfg))
		return 0;
	machine_ahead_drop(&m->ahead);
	struct snapshot_read a = { .cfg = st };
	int r = snapshot_config_read(dir, &a.sc, e);
	if (r)
		return r;
	if ((r = shape_check(m, dir, a.sc.mem_bytes, a.sc.vcpus, e))) {
		snapshot_config_free(&a.sc);
		return r;
	}
	if ((r = snapshot_chain(dir, &a.chain, &a.depth, e))) {
		snapshot_config_free(&a.sc);
		return r;
	}
	snprintf(path, sizeof(path), "%s/%s", a.chain[a.depth - 1], SNAPSHOT_STATE_NAME);
	a.dir = strdup(dir);
	if (!a.dir)
		r = mitos_err_set(e, -ENOMEM, "out of memory");
	else
		r = state_file_read(path, &a.state, e);
	if (r) {
		free(a.dir);
		a.dir = NULL;
		snapshot_config_free(&a.sc);
		snapshot_chain_free(a.chain, a.depth);
		return r;
	}
	m->ahead = a;
	return 0;
}

static int ahead_map(struct machine *m, struct mitos_err *e)
{
	if (m->ahead.mapped)
		return 0;
	int r = memory_map_chain(&m->mem, m->mem.base, m->mem.size, m->ahead.chain, m->ahead.depth, e);
	m->ahead.mapped = r == 0;
	return r;
}

int machine_arm(struct machine *m, const char *dir, struct mitos_err *e)
{
	if (m->loaded)
		return mitos_err_set(e, -EBUSY, "this VM already runs a guest");
	int r = ahead_read(m, dir, e);
	if (!r)
		r = ahead_map(m, e);
	if (r)
		machine_ahead_drop(&m->ahead);
	return r;
}

const struct snapshot_config *machine_snapshot_config(struct machine *m, const char *dir, struct mitos_err *e)
{
	if (m->loaded) {
		mitos_err_set(e, -EBUSY, "this VM already runs a guest");
		return NULL;
	}
	return ahead_read(m, dir, e) ? NULL : &m->ahead.sc;
}

/* Every restore is a clone: a new VM generation ID, and the Generic Event Device's
 * edge (after the IOAPIC's state is back, which would otherwise drop it) so the guest
 * reads it before it runs much: Linux then reseeds its RNG (add_vmfork_randomness). */
static int new_generation(struct machine *m, struct mitos_err *e)
{
	int r = acpi_new_generation(&m->mem, e);
	if (!r && ((r = kvm_vm_irq_line(&m->vm, LAYOUT_GED_IRQ, 1)) ||
		   (r = kvm_vm_irq_line(&m->vm, LAYOUT_GED_IRQ, 0))))
		mitos_err_set(e, r, "VM generation ID: KVM_IRQ_LINE %d: %s", LAYOUT_GED_IRQ,
			      strerror(-r));
	return r;
}

int machine_load_snapshot(struct machine *m, const char *dir, const struct machine_config *c,
			  struct mitos_err *e)
{
	int r;
	if (m->loaded)
		return mitos_err_set(e, -EBUSY, "this VM already runs a guest");
	if ((r = shape_check(m, dir, c->mem_bytes, c->vcpus, e)))
		return r;
	/* Read just before by machine_snapshot_config() (whose answer c may point into: it
	 * is not read again), or now. */
	if ((!m->ahead.dir || strcmp(m->ahead.dir, dir)) && (r = ahead_read(m, dir, e)))
		goto out;
	machine_phase(m, "read-state");
	if ((r = ahead_map(m, e)))
		goto out;
	machine_phase(m, "map-memory");
	m->snapshot_parent = m->ahead.chain[m->ahead.depth - 1];
	m->ahead.chain[m->ahead.depth - 1] = NULL;
	m->snapshot_depth = m->ahead.depth - 1;
	m->cfg.ndisks = c->ndisks;
	for (unsigned i = 0; i < c->ndisks; i++)
		m->cfg.disks[i] = (struct virtio_blk_opts){ .path = machine_keep(m, c->disks[i].path),
							    .read_only = c->disks[i].read_only,
							    .has_fd = c->disks[i].has_fd, .fd = c->disks[i].fd };
	m->cfg.vsock_path = c->vsock_path ? machine_keep(m, c->vsock_path) : NULL;
	m->cfg.vsock_cid = c->vsock_cid;
	m->cfg.has_net = c->has_net;
	m->cfg.net = c->net;
	m->cfg.net.tap = c->has_net && c->net.tap ? machine_keep(m, c->net.tap) : NULL;
	if ((r = machine_setup_virtio(m, e)) || (r = machine_build_cmdline(m, e)))
		goto out;
	machine_phase(m, "devices");
	struct vcpu *vcpus[LAYOUT_MAX_VCPUS];
	vcpu_list(m, vcpus);
	if ((r = vm_state_restore(&m->vm, vcpus, m->nvcpus, &m->ahead.state, e)) ||
	    (r = restore_devices(m, &m->ahead.state, e)) || (r = new_generation(m, e)))
		goto out;
	machine_phase(m, "restore-state");
	m->loaded = true;
out:
	if (r && e && !strstr(e->msg, dir)) {
		char msg[sizeof(e->msg)];
		memcpy(msg, e->msg, sizeof(msg));
		mitos_err_set(e, r, "restore %s: %.400s", dir, msg);
	}
	/* Used once: a VM that failed half-way ends. */
	machine_ahead_drop(&m->ahead);
	return r;
}

int machine_restore(struct machine **out, const char *dir, const struct machine_config *c,
		    struct mitos_err *e)
{
	struct machine *m;
	int r = machine_prepare(&m, c, e);
	if (r)
		return r;
	if ((r = machine_load_snapshot(m, dir, c, e))) {
		machine_destroy(m);
		return r;
	}
	*out = m;
	return 0;
}
