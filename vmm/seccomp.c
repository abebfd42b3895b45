#include "seccomp.h"
#include "lib/error.h"

#include <errno.h>
#include <linux/fs.h>
#include <linux/if_tun.h>
#include <linux/kvm.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

/* What the VMM does once prepared: its device loop (libev on epoll, eventfds, timerfd,
 * signals), the vCPU threads (KVM_RUN, kicked with SIGUSR1), virtio-blk on io_uring,
 * the vsock and control sockets (AF_UNIX), restoring (opening and mapping snapshot
 * files and disks) and writing snapshots (directories, files, renames). Found by
 * tracing every VM process of the api and kvm suites (strace -f) plus the calls of
 * paths they do not reach (virtio-net, guest-initiated vsock connections); glibc's
 * old-style calls (mkdir, rename, unlink, readlink) are what it uses on x86-64. */
static const char *const allowed[] = {
	/* files and descriptors */
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "lseek", "close",
	"fstat", "newfstatat", "openat", "fcntl", "ftruncate", "fsync", "fdatasync", "mkdir", "mkdirat",
	"unlink", "unlinkat", "rename", "renameat", "renameat2", "readlink", "readlinkat",
	/* the device loop */
	"epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "eventfd2", "signalfd4",
	"timerfd_create", "timerfd_settime", "io_uring_setup", "io_uring_enter", "io_uring_register",
	/* only to add filters (vmm_seccomp_seal_rings): a filter can only take away */
	"seccomp",
	/* sockets: only AF_UNIX ones can be made (below) */
	"bind", "listen", "accept4", "connect", "sendmsg", "recvmsg", "sendto", "recvfrom", "shutdown",
	"getsockopt",
	/* memory: mappings without PROT_EXEC (below) */
	"munmap", "madvise", "mremap", "brk",
	/* threads, signals, time. The clock reads are system calls wherever the host's
	 * clocksource has no vDSO path (no stable TSC: HPET, acpi_pm, some nested and
	 * emulated hosts); libev's ev_time() is gettimeofday(), glibc's time() is time. */
	"futex", "set_robust_list", "rseq", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "tgkill",
	"getpid", "gettid", "exit", "exit_group", "clock_gettime", "clock_getres", "gettimeofday", "time",
	"clock_nanosleep", "nanosleep", "sched_yield", "getrandom", "restart_syscall",
};

#ifdef VMM_SECCOMP_SANITIZED
/* AddressSanitizer's thread start-up and LeakSanitizer's exit-time stop-the-world (a
 * tracer task that lists /proc/self/task and ptraces every thread); without them an
 * ASan VM hangs at a normal exit. Found with SCMP_ACT_LOG and the kernel's audit log. */
static const char *const allowed_sanitizer[] = {
	"mmap", "mprotect", "clone", "sched_getaffinity", "sigaltstack", "prctl", "ptrace", "wait4",
	"getdents", "getdents64", "open", "getppid",
};
#endif

/* Ioctls by request: every KVM ioctl (one type byte), the TAP setup of virtio-net,
 * the size of a block device used as a disk, and the terminal probes of the console. */
struct ioctl_rule {
	unsigned long mask, value;
};
static const struct ioctl_rule ioctls[] = {
	{ 0xff00, KVMIO << 8 },
	{ 0xffffffff, TUNSETIFF },
	{ 0xffffffff, TUNSETVNETHDRSZ },
	{ 0xffffffff, TUNSETOFFLOAD },
	{ 0xffffffff, BLKGETSIZE64 },
	{ 0xffffffff, TCGETS },
	{ 0xffffffff, TCSETS },
	{ 0xffffffff, TCSETSW },
	{ 0xffffffff, TCSETSF },
};

/* What only the device loop does. A vCPU thread runs the guest and handles the exits
 * it takes (virtio-mmio registers, serial, i8042, emulation assists): it signals the
 * device loop, injects interrupts, writes the console (and truncates it at its cap)
 * and, on a device's activation or reset, uses that device's descriptors. It never
 * names a file, writes a snapshot, makes a thread, a ring, a descriptor of the device
 * loop's kinds or a listening socket, or changes filters: a guest that takes over a
 * register handler loses those too, beyond what the process filter already refuses. */
static const char *const loop_only[] = {
	"openat", "mkdir", "mkdirat", "unlink", "unlinkat", "rename", "renameat", "renameat2",
	"readlink", "readlinkat", "fsync", "fdatasync",
	"clone", "io_uring_setup", "io_uring_register", "epoll_create1", "eventfd2", "signalfd4",
	"timerfd_create", "bind", "listen", "accept4", "seccomp",
};

static bool installed;
/* Which filter this thread runs under, for the SIGSYS message. */
static __thread const char *thread_kind = "VM process";

#define NAMES 512
static char *names[NAMES]; /* resolved ahead: the SIGSYS handler must not allocate */

static void put(char *buf, size_t *n, size_t cap, const char *s)
{
	while (*s && *n + 1 < cap)
		buf[(*n)++] = *s++;
}

static void put_num(char *buf, size_t *n, size_t cap, long v)
{
	char d[24];
	int k = 0;
	unsigned long u = v < 0 ? (unsigned long)-v : (unsigned long)v;
	do
		d[k++] = (char)('0' + u % 10);
	while ((u /= 10) && k < 23);
	if (v < 0)
		d[k++] = '-';
	while (k && *n + 1 < cap)
		buf[(*n)++] = d[--k];
}

/* The audit trail: the console log says what was refused, then the VM ends. Only
 * async-signal-safe calls here. */
static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	char msg[256];
	size_t n = 0;
	int nr = si->si_syscall;
	put(msg, &n, sizeof(msg), "\nmitos-vmm: seccomp: system call ");
	put(msg, &n, sizeof(msg), nr >= 0 && nr < NAMES && names[nr] ? names[nr] : "?");
	put(msg, &n, sizeof(msg), " (");
	put_num(msg, &n, sizeof(msg), nr);
	put(msg, &n, sizeof(msg), ") is not allowed in a ");
	put(msg, &n, sizeof(msg), thread_kind);
	put(msg, &n, sizeof(msg), "; thread ");
	put_num(msg, &n, sizeof(msg), syscall(SYS_gettid));
	put(msg, &n, sizeof(msg), "; the VM is killed\n");
	(void)!write(STDERR_FILENO, msg, n);
	syscall(SYS_exit_group, 128 + SIGSYS);
}

/* A rule for the call named name; nothing to do where it is not a system call of this
 * architecture. */
static int rule(scmp_filter_ctx ctx, uint32_t action, const char *name, unsigned nargs,
		const struct scmp_arg_cmp *args)
{
	int nr = seccomp_syscall_resolve_name(name);
	if (nr == __NR_SCMP_ERROR)
		return 0;
	return seccomp_rule_add_array(ctx, action, nr, nargs, args);
}

static int build(scmp_filter_ctx ctx)
{
	int rc = 0;
	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]) && !rc; i++)
		rc = rule(ctx, SCMP_ACT_ALLOW, allowed[i], 0, NULL);
#ifdef VMM_SECCOMP_SANITIZED
	for (size_t i = 0; i < sizeof(allowed_sanitizer) / sizeof(allowed_sanitizer[0]) && !rc; i++)
		rc = rule(ctx, SCMP_ACT_ALLOW, allowed_sanitizer[i], 0, NULL);
#else
	/* New code cannot be mapped (a guest that took over a device cannot load more). */
	struct scmp_arg_cmp noexec = SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0);
	if (!rc)
		rc = rule(ctx, SCMP_ACT_ALLOW, "mmap", 1, &noexec);
	if (!rc)
		rc = rule(ctx, SCMP_ACT_ALLOW, "mprotect", 1, &noexec);
	/* Threads only: no new processes. */
	struct scmp_arg_cmp thread = SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD);
	if (!rc)
		rc = rule(ctx, SCMP_ACT_ALLOW, "clone", 1, &thread);
#endif
	/* clone3's flags are behind a pointer seccomp cannot follow: glibc falls back to clone. */
	if (!rc)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
	struct scmp_arg_cmp unix_only = SCMP_A0(SCMP_CMP_EQ, AF_UNIX);
	if (!rc)
		rc = rule(ctx, SCMP_ACT_ALLOW, "socket", 1, &unix_only);
	for (size_t i = 0; i < sizeof(ioctls) / sizeof(ioctls[0]) && !rc; i++) {
		struct scmp_arg_cmp req = SCMP_A1(SCMP_CMP_MASKED_EQ, ioctls[i].mask, ioctls[i].value);
		rc = rule(ctx, SCMP_ACT_ALLOW, "ioctl", 1, &req);
	}
	return rc;
}

int vmm_seccomp_install(struct mitos_err *e)
{
	for (int i = 0; i < NAMES; i++)
		if (!names[i])
			names[i] = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, i);
	struct sigaction sa = { .sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSYS, &sa, NULL) < 0)
		return mitos_err_set(e, -errno, "cannot handle SIGSYS: %s", strerror(errno));
	/* SCMP_ACT_TRAP: the refused call never runs, and the handler names it. */
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_TRAP);
	if (!ctx)
		return mitos_err_set(e, -ENOMEM, "seccomp_init failed");
	int rc = build(ctx);
	if (rc)
		mitos_err_set(e, rc, "cannot build the seccomp filter: %s", strerror(-rc));
	/* Every thread, including the ones libraries started before us. */
	if (!rc && (rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)))
		mitos_err_set(e, rc, "seccomp: thread synchronisation unavailable: %s", strerror(-rc));
	/* The kernel's audit log records refusals too (type=1326), where the VM process
	 * cannot tamper with it; kernels without the flag just do not. */
	if (!rc)
		seccomp_attr_set(ctx, SCMP_FLTATR_CTL_LOG, 1);
	if (!rc && (rc = seccomp_load(ctx)))
		mitos_err_set(e, rc, "cannot load the seccomp filter: %s", strerror(-rc));
	seccomp_release(ctx);
	installed = !rc;
	return rc;
}

/* A filter over the process filter: allow everything but the listed calls, which then
 * stay refused for the threads that load it (filters only ever take away). */
static int load_refusals(const char *const *calls, size_t n, uint32_t action, bool all_threads)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
	if (!ctx)
		return -ENOMEM;
	/* no_new_privs is set already, and prctl is not allowed any more. */
	int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
	for (size_t i = 0; i < n && !rc; i++)
		rc = rule(ctx, action, calls[i], 0, NULL);
	if (!rc && all_threads)
		rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
	if (!rc)
		rc = seccomp_load(ctx);
	seccomp_release(ctx);
	return rc;
}

int vmm_seccomp_seal_rings(struct mitos_err *e)
{
	if (!installed)
		return 0;
	static const char *const ring_setup[] = { "io_uring_setup" };
	int rc = load_refusals(ring_setup, 1, SCMP_ACT_ERRNO(EPERM), true);
	return rc ? mitos_err_set(e, rc, "cannot seal io_uring creation: %s", strerror(-rc)) : 0;
}

int vmm_seccomp_enter_vcpu(struct mitos_err *e)
{
	if (!installed)
		return 0;
	int rc = load_refusals(loop_only, sizeof(loop_only) / sizeof(loop_only[0]), SCMP_ACT_TRAP, false);
	if (rc)
		return mitos_err_set(e, rc, "cannot load the vCPU thread's seccomp filter: %s", strerror(-rc));
	thread_kind = "vCPU thread";
	return 0;
}
