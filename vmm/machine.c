/* One VM: assembly (RAM, vCPUs, devices, boot), the vCPU threads and their exits, the
 * run loop, the devices' plumbing and the console. Pausing and snapshots are in
 * machine_snapshot.c, the control socket's commands in machine_control.c. */
#include "machine_internal.h"
#include "lib/clock.h"
#include "boot.h"
#include "kvm_probe.h"
#include "seccomp.h"
#include "../devices/virtio_vsock.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <unistd.h>

#define CONSOLE_ESCAPE 0x01 /* Ctrl-A, then 'x' */

const char *machine_exit_kind_name(enum machine_exit_kind k)
{
	static const char *names[MEXIT_KINDS] = {
		"io", "mmio", "hlt", "shutdown", "system_event", "internal_error", "intr", "other" };
	return k < MEXIT_KINDS ? names[k] : "?";
}

void machine_phase(struct machine *m, const char *name)
{
	if (m->result.nphases < MACHINE_MAX_PHASES)
		m->result.phases[m->result.nphases++] = (typeof(m->result.phases[0])){ name, mono_ns() };
}

void machine_stop(struct machine *m, enum machine_end how, int status, const char *fmt, ...)
{
	bool expected = false;
	if (!atomic_compare_exchange_strong(&m->stopping, &expected, true))
		return;
	pthread_mutex_lock(&m->result_lock);
	m->result.how = how;
	m->result.status = status;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m->result.why, sizeof(m->result.why), fmt, ap);
	va_end(ap);
	m->result.end_ns = mono_ns();
	pthread_mutex_unlock(&m->result_lock);
	pthread_mutex_lock(&m->pause_lock);
	pthread_cond_broadcast(&m->pause_cond);
	pthread_mutex_unlock(&m->pause_lock);
	/* immediate_exit first, then the signal: a vCPU between its stopping check and
	 * KVM_RUN returns at once, one inside KVM_RUN is kicked out by SIGUSR1. */
	pthread_t self = pthread_self();
	for (unsigned i = 0; i < m->nvcpus; i++) {
		struct vcpu_thread *t = &m->vcpus[i];
		if (!t->started)
			continue;
		t->vcpu.run->immediate_exit = 1;
		if (!pthread_equal(t->thread, self))
			pthread_kill(t->thread, SIGUSR1);
	}
	ev_async_send(m->loop, &m->stop_async);
}

/* ---- legacy ports ------------------------------------------------------------------ */

static void debug_exit_pio(void *ctx, uint64_t off, bool is_write, void *data, unsigned len)
{
	(void)off;
	if (!is_write) {
		memset(data, 0, len);
		return;
	}
	uint8_t v = *(uint8_t *)data;
	machine_stop(ctx, MACHINE_END_DEBUG_EXIT, v, "guest wrote %u to the debug-exit port", v);
}

/* POST codes on port 0x80 (and Linux's io_delay writes there) mean nothing to us. */
static void post_pio(void *ctx, uint64_t off, bool is_write, void *data, unsigned len)
{
	(void)ctx; (void)off;
	if (!is_write)
		memset(data, 0xff, len);
}

static void i8042_reset(void *ctx)
{
	machine_stop(ctx, MACHINE_END_RESET, 0, "guest reset through the i8042 controller");
}

static void serial_pio(void *ctx, uint64_t off, bool is_write, void *data, unsigned len)
{
	uint8_t *b = data;
	for (unsigned i = 0; i < len; i++) {
		if (is_write)
			serial_pio_write(ctx, (unsigned)off + i, b[i]);
		else
			b[i] = serial_pio_read(ctx, (unsigned)off + i);
	}
}

static void serial_set_irq(void *ctx, int level)
{
	struct machine *m = ctx;
	kvm_vm_irq_line(&m->vm, LAYOUT_COM1_IRQ, level);
}

/* ---- virtio-mmio plumbing ---------------------------------------------------------- */

static void virtio_mmio_access(void *ctx, uint64_t off, bool is_write, void *data, unsigned len)
{
	if (is_write)
		virtio_mmio_write(ctx, off, data, len);
	else
		virtio_mmio_read(ctx, off, data, len);
}

static void drain_eventfd(int fd)
{
	eventfd_t v;
	(void)eventfd_read(fd, &v);
}

static void on_queue_kick(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop; (void)revents;
	struct virtio_slot *s = w->data;
	drain_eventfd(w->fd);
	virtio_device_kick(s->dev, (unsigned)(w - s->notify));
}

static void on_device_host_fd(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop; (void)revents;
	struct virtio_slot *s = w->data;
	virtio_device_host_fd_ready(s->dev, (unsigned)(w - s->host));
}

static int attach_virtio(struct machine *m, struct virtio_device *d, struct mitos_err *e)
{
	struct virtio_slot *s = &m->devs[m->ndevs++];
	s->dev = d;
	s->m = m;
	int r = io_bus_add(&m->mmio, d->mmio_base, VIRTIO_MMIO_WINDOW, virtio_mmio_access, d);
	if (r)
		return mitos_err_set(e, r, "%s: cannot map its MMIO window: %s", d->ops->name, strerror(-r));
	if ((r = kvm_vm_irqfd(&m->vm, d->irq, &d->irqfd)))
		return mitos_err_set(e, r, "%s: KVM_IRQFD: %s", d->ops->name, strerror(-r));
	for (unsigned q = 0; q < d->ops->num_queues; q++) {
		r = kvm_vm_ioeventfd(&m->vm, d->mmio_base + VIRTIO_MMIO_QUEUE_NOTIFY, 4, q,
				     &d->notify_fd[q]);
		if (r)
			return mitos_err_set(e, r, "%s: KVM_IOEVENTFD: %s", d->ops->name, strerror(-r));
		ev_io_init(&s->notify[q], on_queue_kick, d->notify_fd[q], EV_READ);
		s->notify[q].data = s;
		ev_io_start(m->loop, &s->notify[q]);
	}
	int fds[MAX_HOST_FDS];
	s->nhost = d->ops->host_fds ? d->ops->host_fds(d, fds, MAX_HOST_FDS) : 0;
	for (unsigned i = 0; i < s->nhost; i++) {
		ev_io_init(&s->host[i], on_device_host_fd, fds[i], EV_READ);
		s->host[i].data = s;
		ev_io_start(m->loop, &s->host[i]);
	}
	return 0;
}

static void close_virtio(struct virtio_slot *s)
{
	struct virtio_device *d = s->dev;
	if (d->irqfd >= 0)
		close(d->irqfd);
	for (unsigned q = 0; q < VIRTIO_MAX_QUEUES; q++)
		if (d->notify_fd[q] >= 0)
			close(d->notify_fd[q]);
	d->irqfd = -1;
	for (unsigned q = 0; q < VIRTIO_MAX_QUEUES; q++)
		d->notify_fd[q] = -1;
	d->ops->destroy(d);
}

/* ---- console ----------------------------------------------------------------------- */

static void console_flush_pending(struct machine *m)
{
	size_t n = serial_input(m->serial, m->console_pending, m->console_npending);
	memmove(m->console_pending, m->console_pending + n, m->console_npending - n);
	m->console_npending -= n;
	/* Hold stdin until the guest drains its FIFO; poll for room meanwhile. */
	if (m->console_npending) {
		ev_io_stop(m->loop, &m->console_io);
		ev_timer_again(m->loop, &m->console_retry);
	} else {
		ev_timer_stop(m->loop, &m->console_retry);
		ev_io_start(m->loop, &m->console_io);
	}
}

static void on_console_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop; (void)revents;
	console_flush_pending(w->data);
}

static void on_console_input(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct machine *m = w->data;
	uint8_t buf[sizeof(m->console_pending)];
	ssize_t n = read(w->fd, buf, sizeof(buf) - m->console_npending);
	if (n <= 0) {
		if (n == 0 || (errno != EINTR && errno != EAGAIN))
			ev_io_stop(loop, w);  /* EOF: the guest simply gets no more input */
		return;
	}
	for (ssize_t i = 0; i < n; i++) {
		if (m->cfg.console_escape) {
			if (m->console_escape_seen) {
				m->console_escape_seen = false;
				if (buf[i] == 'x') {
					machine_stop(m, MACHINE_END_HOST, 0, "ended from the console (Ctrl-A x)");
					return;
				}
				if (buf[i] != CONSOLE_ESCAPE)
					m->console_pending[m->console_npending++] = CONSOLE_ESCAPE;
			} else if (buf[i] == CONSOLE_ESCAPE) {
				m->console_escape_seen = true;
				continue;
			}
		}
		if (m->console_npending < sizeof(m->console_pending))
			m->console_pending[m->console_npending++] = buf[i];
	}
	console_flush_pending(m);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)loop; (void)revents;
	machine_stop(w->data, MACHINE_END_HOST, w->signum, "stopped by signal %d (%s)", w->signum,
		     strsignal(w->signum));
}

static void on_stop(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)w; (void)revents;
	ev_break(loop, EVBREAK_ALL);
}

/* ---- vCPU threads ------------------------------------------------------------------ */

static void count_exit(struct machine *m, enum machine_exit_kind k)
{
	uint_fast64_t zero = 0;
	if (atomic_load_explicit(&m->first_exit_ns, memory_order_relaxed) == 0)
		atomic_compare_exchange_strong(&m->first_exit_ns, &zero, mono_ns());
	atomic_fetch_add_explicit(&m->exits[k], 1, memory_order_relaxed);
}

static void report_emulation_failure(struct machine *m, struct vcpu *v, struct kvm_run *run)
{
	uint64_t rip = 0;
	uint8_t insn[15];
	int n = vcpu_read_insn(v, &m->mem, &rip, insn);
	char bytes[15 * 3 + 1] = "";
	for (int i = 0; i < n; i++)
		snprintf(bytes + 3 * i, sizeof(bytes) - 3 * i, "%02x ", insn[i]);
	if (n > 0)
		bytes[3 * n - 1] = '\0';
	machine_stop(m, MACHINE_END_CRASH, 0,
		     "vCPU %u: KVM could not emulate the instruction at RIP 0x%llx (bytes: %s; "
		     "KVM internal error, suberror %u)%s", v->id, (unsigned long long)rip,
		     n > 0 ? bytes : "unreadable", run->internal.suberror,
		     m->emulation_only ?
		     ". This host's KVM is emulation-only (no VT-x/AMD-V): guest kernel code runs "
		     "through KVM's instruction emulator, which lacks this instruction. Run on "
		     "hardware KVM; `mitos-vmm check` explains" : "");
}

/* KVM on AMD reinitializes a vCPU that shuts down (its VMCB is undefined after the
 * intercept), so there the registers read back are the reset state's, not the crash's;
 * say so rather than name the reset vector as where the guest died. */
static void report_shutdown(struct machine *m, struct vcpu *v)
{
	struct kvm_regs r = { 0 };
	struct kvm_sregs sr = { 0 };
	ioctl(v->fd, KVM_GET_REGS, &r);
	ioctl(v->fd, KVM_GET_SREGS, &sr);
	if (r.rip == 0xfff0 && sr.cs.base == 0xffff0000)
		machine_stop(m, MACHINE_END_CRASH, 0,
			     "vCPU %u: guest triple fault (shutdown); where is unknown: KVM reset the vCPU "
			     "on it (AMD does), see the guest console", v->id);
	else
		machine_stop(m, MACHINE_END_CRASH, 0,
			     "vCPU %u: guest triple fault (shutdown) near RIP 0x%llx (RSP 0x%llx, CR2 0x%llx)",
			     v->id, (unsigned long long)r.rip, (unsigned long long)r.rsp,
			     (unsigned long long)sr.cr2);
}

static void handle_exit(struct machine *m, struct vcpu *v)
{
	struct kvm_run *run = v->run;
	switch (run->exit_reason) {
	case KVM_EXIT_IO: {
		count_exit(m, MEXIT_IO);
		uint8_t *data = (uint8_t *)run + run->io.data_offset;
		for (uint32_t i = 0; i < run->io.count; i++)
			io_bus_access(&m->pio, run->io.port, run->io.direction == KVM_EXIT_IO_OUT,
				      data + (size_t)i * run->io.size, run->io.size);
		break;
	}
	case KVM_EXIT_MMIO:
		count_exit(m, MEXIT_MMIO);
		io_bus_access(&m->mmio, run->mmio.phys_addr, run->mmio.is_write, run->mmio.data,
			      run->mmio.len);
		break;
	case KVM_EXIT_HLT:
		/* Only without an in-kernel LAPIC; ours has one, so a halt here is final. */
		count_exit(m, MEXIT_HLT);
		machine_stop(m, MACHINE_END_POWEROFF, 0, "vCPU %u halted", v->id);
		break;
	case KVM_EXIT_SHUTDOWN:
		count_exit(m, MEXIT_SHUTDOWN);
		report_shutdown(m, v);
		break;
	case KVM_EXIT_SYSTEM_EVENT:
		count_exit(m, MEXIT_SYSTEM_EVENT);
		if (run->system_event.type == KVM_SYSTEM_EVENT_RESET)
			machine_stop(m, MACHINE_END_RESET, 0, "guest rebooted");
		else if (run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN)
			machine_stop(m, MACHINE_END_POWEROFF, 0, "guest powered off");
		else
			machine_stop(m, MACHINE_END_CRASH, 0, "guest system event %u (crash)",
				     run->system_event.type);
		break;
	case KVM_EXIT_INTERNAL_ERROR:
		count_exit(m, MEXIT_INTERNAL_ERROR);
		if (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION) {
			enum emulate_kind k;
			/* Emulation-only KVM lacks a few instructions Linux uses: do them here. */
			if (m->emulation_only && emulate_assist(v, &m->mem, &k) == 0)
				atomic_fetch_add_explicit(&m->emulated[k], 1, memory_order_relaxed);
			else
				report_emulation_failure(m, v, run);
		}
		else
			machine_stop(m, MACHINE_END_CRASH, 0, "vCPU %u: KVM internal error, suberror %u",
				     v->id, run->internal.suberror);
		break;
	case KVM_EXIT_FAIL_ENTRY:
		count_exit(m, MEXIT_OTHER);
		machine_stop(m, MACHINE_END_CRASH, 0, "vCPU %u: VM entry failed, hardware reason 0x%llx",
			     v->id, (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		break;
	case KVM_EXIT_INTR:
		count_exit(m, MEXIT_INTR);
		break;
	default:
		count_exit(m, MEXIT_OTHER);
		machine_stop(m, MACHINE_END_CRASH, 0, "vCPU %u: unexpected KVM exit reason %u", v->id,
			     run->exit_reason);
		break;
	}
}

/* Parks a vCPU while a pause is requested. KVM_RUN with immediate_exit first completes
 * any I/O the last exit left pending, so the registers saved meanwhile are final. */
static void vcpu_park(struct machine *m, struct vcpu_thread *t)
{
	t->vcpu.run->immediate_exit = 1;
	ioctl(t->vcpu.fd, KVM_RUN, 0);
	pthread_mutex_lock(&m->pause_lock);
	m->nparked++;
	pthread_cond_broadcast(&m->pause_cond);
	while (m->pause_requested && !atomic_load(&m->stopping))
		pthread_cond_wait(&m->pause_cond, &m->pause_lock);
	m->nparked--;
	pthread_mutex_unlock(&m->pause_lock);
	t->vcpu.run->immediate_exit = 0;
}

static void *vcpu_main(void *arg)
{
	struct vcpu_thread *t = arg;
	struct machine *m = t->m;
	struct mitos_err e = { 0 };
	if (vmm_seccomp_enter_vcpu(&e)) {
		machine_stop(m, MACHINE_END_VMM_ERROR, 0, "vCPU %u: %s", t->vcpu.id, e.msg);
		return NULL;
	}
	while (!atomic_load(&m->stopping)) {
		if (__atomic_load_n(&m->pause_requested, __ATOMIC_ACQUIRE)) {
			vcpu_park(m, t);
			continue;
		}
		if (atomic_exchange(&t->sample_due, false))
			profile_sample(&m->profile, &t->vcpu, mono_ns());
		if (ioctl(t->vcpu.fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			machine_stop(m, MACHINE_END_VMM_ERROR, 0, "vCPU %u: KVM_RUN: %s", t->vcpu.id,
				     strerror(errno));
			break;
		}
		handle_exit(m, &t->vcpu);
	}
	return NULL;
}

static void on_sigusr1(int sig)
{
	(void)sig;
}

/* The SIGUSR1 takes the vCPU out of KVM_RUN, where its thread can read its registers. */
static void on_profile_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop; (void)revents;
	struct machine *m = w->data;
	for (unsigned i = 0; i < m->nvcpus; i++) {
		struct vcpu_thread *t = &m->vcpus[i];
		if (!t->started)
			continue;
		atomic_store(&t->sample_due, true);
		pthread_kill(t->thread, SIGUSR1);
	}
}

int machine_start_vcpus(struct machine *m, struct mitos_err *e)
{
	m->result.run_start_ns = mono_ns();
	struct sigaction sa = { .sa_handler = on_sigusr1 };  /* no SA_RESTART: KVM_RUN returns */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	/* vCPU threads take only SIGUSR1; SIGINT/SIGTERM go to the device loop. */
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	int r = 0;
	for (unsigned i = 0; i < m->nvcpus && !r; i++) {
		m->vcpus[i].m = m;
		r = -pthread_create(&m->vcpus[i].thread, NULL, vcpu_main, &m->vcpus[i]);
		if (!r)
			m->vcpus[i].started = true;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!r && m->profile.fd >= 0) {
		m->profile.start_ns = m->result.run_start_ns;
		ev_timer_init(&m->profile_timer, on_profile_timer, 1.0 / PROFILE_HZ, 1.0 / PROFILE_HZ);
		m->profile_timer.data = m;
		ev_timer_start(m->loop, &m->profile_timer);
	}
	return r ? mitos_err_set(e, r, "cannot start vCPU thread: %s", strerror(-r)) : 0;
}

/* ---- assembly ---------------------------------------------------------------------- */

const char *machine_keep(struct machine *m, const char *s)
{
	if (m->nkept == sizeof(m->kept) / sizeof(m->kept[0]))
		return NULL;
	char *copy = strdup(s);
	if (copy)
		m->kept[m->nkept++] = copy;
	return copy;
}

/* Linux hands everything after a "--" word to init: the kernel's own part ends there. */
static size_t kernel_params_len(const char *s)
{
	for (const char *p = s; (p = strstr(p, "--")); p += 2)
		if ((p == s || p[-1] == ' ') && (p[2] == ' ' || p[2] == '\0'))
			return (size_t)(p - s);
	return strlen(s);
}

int machine_build_cmdline(struct machine *m, struct mitos_err *e)
{
	const char *base = m->cfg.cmdline ? m->cfg.cmdline : MACHINE_DEFAULT_CMDLINE;
	size_t outlen = sizeof(m->cmdline), split = kernel_params_len(base);
	size_t n = (size_t)snprintf(m->cmdline, outlen, "%.*s", (int)split, base);
	for (unsigned i = 0; i < m->ndevs && n < outlen; i++)
		n += (size_t)snprintf(m->cmdline + n, outlen - n, " virtio_mmio.device=4K@0x%llx:%u",
				      (unsigned long long)m->devs[i].dev->mmio_base, m->devs[i].dev->irq);
	if (base[split] && n < outlen)
		n += (size_t)snprintf(m->cmdline + n, outlen - n, " %s", base + split);
	if (n >= outlen)
		return mitos_err_set(e, -E2BIG, "kernel command line too long (at most %llu bytes "
				     "with the virtio_mmio.device= entries)", LAYOUT_CMDLINE_MAX - 1);
	return 0;
}

static int setup_legacy(struct machine *m, struct mitos_err *e)
{
	m->serial = serial_create(m->cfg.console_out, serial_set_irq, m);
	if (!m->serial)
		return mitos_err_set(e, -ENOMEM, "cannot create the serial port");
	serial_set_file_cap(m->serial, m->cfg.console_max);
	m->i8042 = (struct i8042){ .reset = i8042_reset, .ctx = m };
	int r;
	if ((r = io_bus_add(&m->pio, LAYOUT_COM1_PORT, 8, serial_pio, m->serial)) ||
	    (r = io_bus_add(&m->pio, LAYOUT_I8042_DATA_PORT, 5, i8042_pio, &m->i8042)) ||
	    (r = io_bus_add(&m->pio, LAYOUT_DEBUG_EXIT_PORT, 1, debug_exit_pio, m)) ||
	    (r = io_bus_add(&m->pio, LAYOUT_POST_PORT, 1, post_pio, m)))
		return mitos_err_set(e, r, "port map: %s", strerror(-r));
	return 0;
}

static void setup_console(struct machine *m)
{
	ev_timer_init(&m->console_retry, on_console_retry, 0., 0.005);
	m->console_retry.data = m;
	if (m->cfg.console_in < 0)
		return;
	ev_io_init(&m->console_io, on_console_input, m->cfg.console_in, EV_READ);
	m->console_io.data = m;
	ev_io_start(m->loop, &m->console_io);
}

static uint64_t next_mmio_base(const struct machine *m)
{
	return LAYOUT_VIRTIO_MMIO_BASE + m->ndevs * LAYOUT_VIRTIO_MMIO_STRIDE;
}

static unsigned next_irq(const struct machine *m)
{
	return LAYOUT_VIRTIO_IRQ_BASE + m->ndevs;
}

int machine_setup_virtio(struct machine *m, struct mitos_err *e)
{
	int r = 0;
	for (unsigned i = 0; !r && i < m->cfg.ndisks; i++) {
		struct virtio_device *d = virtio_blk_create(&m->mem, next_mmio_base(m), next_irq(m),
							    &m->cfg.disks[i], e);
		if (!d)
			return e && e->code ? e->code : -EIO;
		r = attach_virtio(m, d, e);
	}
	if (!r && m->cfg.vsock_path) {
		struct virtio_vsock_opts o = { .path = m->cfg.vsock_path, .cid = m->cfg.vsock_cid };
		struct virtio_device *d = virtio_vsock_create(&m->mem, next_mmio_base(m), next_irq(m),
							      &o, e);
		if (!d)
			return e && e->code ? e->code : -EIO;
		r = attach_virtio(m, d, e);
	}
	if (!r && m->cfg.has_net) {
		struct virtio_device *d = virtio_net_create(&m->mem, next_mmio_base(m), next_irq(m),
							    &m->cfg.net, e);
		if (!d)
			return e && e->code ? e->code : -EIO;
		r = attach_virtio(m, d, e);
		m->net = d;
	}
	return r;
}

/* Everything but guest RAM and what goes into it. */
static int machine_alloc(struct machine **out, const struct machine_config *c, struct mitos_err *e)
{
	if (c->vcpus == 0 || c->vcpus > LAYOUT_MAX_VCPUS)
		return mitos_err_set(e, -EINVAL, "--vcpus must be 1..%d", LAYOUT_MAX_VCPUS);
	if (c->ndisks > MACHINE_MAX_DISKS)
		return mitos_err_set(e, -EINVAL, "at most %d disks", MACHINE_MAX_DISKS);
	struct machine *m = calloc(1, sizeof(*m));
	if (!m)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	m->cfg = *c;
	m->vm.kvm_fd = m->vm.vm_fd = -1;
	m->nvcpus = c->vcpus;
	for (unsigned i = 0; i < c->vcpus; i++)
		m->vcpus[i].vcpu.fd = -1;
	pthread_mutex_init(&m->result_lock, NULL);
	pthread_mutex_init(&m->pause_lock, NULL);
	pthread_cond_init(&m->pause_cond, NULL);
	*out = m;
	m->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (!m->loop)
		return mitos_err_set(e, -ENOMEM, "cannot create the device loop");
	ev_async_init(&m->stop_async, on_stop);
	ev_async_start(m->loop, &m->stop_async);
	m->emulation_only = kvm_probe_is_emulation_only();
	m->profile.fd = -1;
	int r = c->profile_path ? profile_open(&m->profile, c->profile_path, e) : 0;
	if (r)
		return r;
	r = kvm_vm_create(&m->vm, c->kvm_fd, e);
	m->vm.emulation_only = m->emulation_only;
	machine_phase(m, "create-vm");
	return r;
}

static int create_vcpus(struct machine *m, struct mitos_err *e)
{
	for (unsigned i = 0; i < m->nvcpus; i++) {
		int r = vcpu_create(&m->vm, i, m->nvcpus, &m->vcpus[i].vcpu, e);
		if (r)
			return r;
	}
	return 0;
}

static int finish_setup(struct machine *m, struct mitos_err *e)
{
	setup_console(m);
	if (m->cfg.control_path)
		return control_server_start(&m->control, m->loop, m->cfg.control_path,
					    machine_control_handle, m, e);
	return 0;
}

int machine_create(struct machine **out, const struct machine_config *c, struct mitos_err *e)
{
	struct machine *m = NULL;
	int r = machine_alloc(&m, c, e);
	if (r)
		goto fail;
	if ((r = guest_mem_alloc(&m->mem, c->mem_bytes))) {
		mitos_err_set(e, r, "cannot allocate %llu MiB of guest RAM: %s",
			      (unsigned long long)(c->mem_bytes >> 20), strerror(-r));
		goto fail;
	}
	struct kernel_image k;
	if ((r = loader_load_kernel_file(&m->mem, c->kernel, &k, e)))
		goto fail;
	uint8_t seed[BOOT_RNG_SEED_BYTES];
	if (getrandom(seed, sizeof(seed), 0) != (ssize_t)sizeof(seed)) {
		r = mitos_err_set(e, -errno, "getrandom: %s", strerror(errno));
		goto fail;
	}
	struct boot_config bc = { .ncpus = c->vcpus, .rng_seed = seed };
	if (c->initrd && (r = loader_load_initrd_file(&m->mem, c->initrd, &k, &bc.initrd_gpa,
						       &bc.initrd_size, e)))
		goto fail;
	if ((r = kvm_vm_map_memory(&m->vm, &m->mem, e)) || (r = setup_legacy(m, e)) ||
	    (r = machine_setup_virtio(m, e)) || (r = machine_build_cmdline(m, e)))
		goto fail;
	bc.cmdline = m->cmdline;
	if ((r = boot_write(&m->mem, &k, &bc, e)) || (r = create_vcpus(m, e)))
		goto fail;
	/* Application processors wait for INIT/SIPI from the boot CPU, as on hardware. */
	if ((r = vcpu_set_boot_state(&m->vcpus[0].vcpu, k.entry, e)) || (r = finish_setup(m, e)))
		goto fail;
	m->loaded = true;
	*out = m;
	return 0;
fail:
	machine_destroy(m);
	return r;
}

int machine_prepare(struct machine **out, const struct machine_config *c, struct mitos_err *e)
{
	struct machine *m = NULL;
	int r = machine_alloc(&m, c, e);
	/* RAM is reserved, not touched: a snapshot's files get mapped over it later, and
	 * KVM follows the new mapping through its MMU notifier without a memslot change. */
	if (!r && (r = guest_mem_alloc(&m->mem, c->mem_bytes)))
		mitos_err_set(e, r, "cannot reserve %llu MiB of guest RAM: %s",
			      (unsigned long long)(c->mem_bytes >> 20), strerror(-r));
	if (!r && !(r = kvm_vm_map_memory(&m->vm, &m->mem, e)))
		machine_phase(m, "memslots");
	if (!r && !(r = setup_legacy(m, e)) && !(r = create_vcpus(m, e)))
		machine_phase(m, "create-vcpus");
	if (!r && c->arm) {
		/* Not fatal: the VM still takes any snapshot, only slower. */
		struct mitos_err ae = { 0 };
		if (machine_arm(m, c->arm, &ae))
			fprintf(stderr, "mitos-vmm: not armed with %s (restores read it then): %s\n", c->arm, ae.msg);
		else
			machine_phase(m, "arm");
	}
	if (!r)
		r = finish_setup(m, e);
	if (r) {
		machine_destroy(m);
		return r;
	}
	*out = m;
	return 0;
}

int machine_run(struct machine *m, struct machine_result *res, struct mitos_err *e)
{
	ev_signal_init(&m->sigint, on_signal, SIGINT);
	ev_signal_init(&m->sigterm, on_signal, SIGTERM);
	m->sigint.data = m->sigterm.data = m;
	ev_signal_start(m->loop, &m->sigint);
	ev_signal_start(m->loop, &m->sigterm);

	if (m->cfg.start_paused) {
		m->pause_requested = true;
		m->paused = true;
	}
	int r = m->loaded ? machine_start_vcpus(m, e) : 0;
	if (r)
		machine_stop(m, MACHINE_END_VMM_ERROR, 0, "%s", e ? e->msg : "cannot start vCPUs");
	else
		ev_run(m->loop, 0);
	for (unsigned i = 0; i < m->nvcpus; i++)
		if (m->vcpus[i].started) {
			pthread_join(m->vcpus[i].thread, NULL);
			m->vcpus[i].started = false;
		}
	ev_signal_stop(m->loop, &m->sigint);
	ev_signal_stop(m->loop, &m->sigterm);
	pthread_mutex_lock(&m->result_lock);
	*res = m->result;
	pthread_mutex_unlock(&m->result_lock);
	res->first_exit_ns = atomic_load(&m->first_exit_ns);
	for (int k = 0; k < MEXIT_KINDS; k++)
		res->exits[k] = atomic_load(&m->exits[k]);
	for (int k = 0; k < EMULATE_KINDS; k++)
		res->emulated[k] = atomic_load(&m->emulated[k]);
	return r;
}

bool machine_loaded(const struct machine *m)
{
	return m->loaded;
}

void machine_destroy(struct machine *m)
{
	if (!m)
		return;
	control_server_stop(m->control);
	for (unsigned i = 0; i < m->nvcpus; i++)
		if (m->vcpus[i].vcpu.fd >= 0)
			vcpu_destroy(&m->vm, &m->vcpus[i].vcpu);
	/* Devices before RAM: in-flight I/O points into it. */
	for (unsigned i = 0; i < m->ndevs; i++)
		close_virtio(&m->devs[i]);
	if (m->serial)
		serial_destroy(m->serial);
	kvm_vm_destroy(&m->vm);
	guest_mem_free(&m->mem);
	if (m->loop)
		ev_loop_destroy(m->loop);
	vm_state_msr_set_free(&m->msrs);
	profile_close(&m->profile);
	free(m->snapshot_parent);
	machine_ahead_drop(&m->ahead);
	for (unsigned i = 0; i < m->nkept; i++)
		free(m->kept[i]);
	pthread_mutex_destroy(&m->result_lock);
	pthread_mutex_destroy(&m->pause_lock);
	pthread_cond_destroy(&m->pause_cond);
	free(m);
}
