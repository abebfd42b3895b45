/* One mitos-vmm process: spawned jailed, recorded, reaped; the worker threads that
 * wait on guests, and what they ask a VM (control requests, agent health, warm-up). */
#include "api/engines/kvm_internal.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/sched.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/base64.h"
#include "agent/proto.h"
#include "api/sandbox/agent_client.h"
#include "api/sandbox/workload.h"
#include "api/engines/cgroup.h"
#include "api/engines/kvm_guest.h"
#include "lib/printable.h"
#include "lib/proc_start.h"
#include "api/sandbox/registry.h"
#include "api/http/uring.h"
#include "vmm/control.h"
/* ---- small helpers ---- */

int kvm_pathf(char *out, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(out, PLEN, fmt, ap);
	va_end(ap);
	return n < 0 || n >= PLEN ? -ENAMETOOLONG : 0;
}

bool kvm_is_socket(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* The end of a console log, on one line: why a guest or a VMM gave up. */
void kvm_console_tail(const char *path, char *out, size_t outlen)
{
	out[0] = 0;
	/* A jailed VM owns its console's directory: no link or FIFO put in its place. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	struct stat st;
	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
		close(fd);
		fd = -1;
	}
	if (fd < 0)
		return;
	char buf[400];
	off_t end = lseek(fd, 0, SEEK_END);
	off_t from = end > (off_t)sizeof(buf) - 1 ? end - (off_t)sizeof(buf) + 1 : 0;
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, from);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = 0;
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = 0;
	char *p = buf;
	/* Whole lines only, at most the last three. */
	unsigned lines = 0;
	for (char *q = buf + n; q > buf; q--)
		if (q[-1] == '\n' && ++lines == 3) {
			p = q;
			break;
		}
	if (p == buf && from > 0) {
		char *nl = strchr(buf, '\n');
		p = nl ? nl + 1 : buf;
	}
	printable_copy(out, outlen, p, strlen(p), '|');
}

void kvm_write_error_file(const char *dir, const char *msg)
{
	char path[PLEN];
	if (kvm_pathf(path, "%s/start-error", dir))
		return;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd >= 0) {
		(void)!write(fd, msg, strlen(msg));
		close(fd);
	}
}

/* ---- spawning a jailed mitos-vmm ---- */

/* The child between clone3 and exec: serve has threads, so only raw system calls here. */
static __attribute__((noreturn)) void vm_child(char *const argv[], int logfd, int nullfd, int disk_fd,
					       int tap_fd, const struct cg_entry *ce, const struct jail *jail,
					       const struct jail_system *sys)
{
	cgroup_enter_child(ce);
	syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	if (K.ns) {
		/* Nothing mounted here reaches the host. */
		syscall(SYS_mount, NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
		syscall(SYS_sethostname, "mitos-vm", 8);
		if (jail) {
			jail_enter(jail, sys);
		} else {
			/* /proc shows this VM only, and read-only: a sysctl is writable by file
			 * mode alone, which uid 0 without capabilities would pass. */
			syscall(SYS_mount, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL);
			/* The VMM needs no privilege: /dev/kvm, the snapshots and the disks are
			 * root's files, which uid 0 reaches without capabilities. */
			jail_drop_capabilities(true);
		}
	}
	syscall(SYS_setsid);
	syscall(SYS_dup2, nullfd, 0);
	syscall(SYS_dup2, logfd, 1);
	syscall(SYS_dup2, logfd, 2);
	syscall(SYS_dup2, K.vmm_fd, 3);
	if (jail)
		syscall(SYS_dup2, K.kvm_fd, 4);
	else
		syscall(SYS_close, 4);
	if (disk_fd >= 0)
		syscall(SYS_dup2, disk_fd, VM_DISK_FD);
	else
		syscall(SYS_close, VM_DISK_FD);
	if (tap_fd >= 0)
		syscall(SYS_dup2, tap_fd, VM_TAP_FD);
	syscall(SYS_close_range, tap_fd >= 0 ? VM_TAP_FD + 1 : VM_TAP_FD, ~0U, 0);
	sigset_t none;
	sigemptyset(&none);
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof(uint64_t));
	/* serve ignores SIGPIPE; exec keeps ignored signals ignored. */
	struct { void *handler; unsigned long flags; void *restorer; uint64_t mask; } dfl = { 0 };
	syscall(SYS_rt_sigaction, SIGPIPE, &dfl, NULL, sizeof(uint64_t));
	extern char **environ;
	if (jail)
		syscall(SYS_execve, jail_exe(), argv, environ);
	else
		syscall(SYS_execveat, 3, "", argv, environ, AT_EMPTY_PATH);
	static const char msg[] = "mitos-vmm serve: cannot exec mitos-vmm for a VM\n";
	syscall(SYS_write, 2, msg, sizeof(msg) - 1);
	syscall(SYS_exit_group, 127);
	__builtin_unreachable();
}

int kvm_vm_spawn(char *const argv[], const char *console, const char *name, const struct vm_shape *sh,
		 const struct jail *jail, int disk_fd, int tap_fd, struct vm_proc *vp, struct mitos_err *e)
{
	memset(vp, 0, sizeof(*vp));
	vp->pidfd = -1;
	char *av[40];
	size_t n = 0;
	for (size_t i = 0; argv[i] && n < sizeof(av) / sizeof(av[0]) - 3; i++) {
		av[n++] = argv[i];
		if (i == 1 && jail) {
			av[n++] = "--kvm-fd";
			av[n++] = "4";
		}
	}
	av[n] = NULL;
	int logfd = open(console, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (logfd < 0 || (jail && fchown(logfd, jail->uid, jail->gid) < 0)) {
		int rc = mitos_err_set(e, -errno, "cannot create %s: %s", console, strerror(errno));
		if (logfd >= 0)
			close(logfd);
		return rc;
	}
	int nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	/* Above the numbers the child moves descriptors to, so none is overwritten first. */
	int disk = disk_fd >= 0 ? fcntl(disk_fd, F_DUPFD_CLOEXEC, VM_TAP_FD + 1) : -1;
	int tap = tap_fd >= 0 ? fcntl(tap_fd, F_DUPFD_CLOEXEC, VM_TAP_FD + 1) : -1;
	struct cg_entry ce;
	struct jail_system sys = { 0 };
	int rc = 0;
	if ((disk_fd >= 0 && disk < 0) || (tap_fd >= 0 && tap < 0))
		rc = mitos_err_set(e, -errno, "cannot duplicate the VM's disk or TAP descriptor: %s", strerror(errno));
	if (!rc && jail)
		rc = jail_system_open(&sys, e);
	if (!rc && (rc = cgroup_create(name, &sh->lim, &vp->cg, &ce)))
		mitos_err_set(e, rc, "cannot create the VM's cgroup: %s", strerror(-rc));
	if (rc) {
		jail_system_close(&sys);
		close(logfd);
		if (nullfd >= 0)
			close(nullfd);
		if (disk >= 0)
			close(disk);
		if (tap >= 0)
			close(tap);
		return rc;
	}
	int pidfd = -1;
	long pid = cgroup_clone(&ce, K.ns ? CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS |
				CLONE_NEWNET : 0, &pidfd);
	if (pid == 0)
		vm_child(av, logfd, nullfd, disk, tap, &ce, jail, &sys);
	int clone_errno = errno;
	jail_system_close(&sys);
	close(logfd);
	if (nullfd >= 0)
		close(nullfd);
	if (disk >= 0)
		close(disk);
	if (tap >= 0)
		close(tap);
	cgroup_entry_close(&ce);
	if (pid < 0) {
		mitos_err_set(e, -clone_errno, "cannot start mitos-vmm (clone3): %s", strerror(clone_errno));
		cgroup_remove(&vp->cg);
		return -clone_errno;
	}
	fcntl(pidfd, F_SETFD, FD_CLOEXEC);
	vp->pid = (pid_t)pid;
	vp->pidfd = pidfd;
	vp->start_time = proc_start_time(vp->pid);
	return 0;
}

int kvm_vm_files(const char *dir, char *out)
{
	return K.jail ? kvm_pathf(out, "%s/vm", dir) : kvm_pathf(out, "%s", dir);
}

int kvm_jail_prepare(const char *dir, struct jail *j, struct mitos_err *e)
{
	char own[PLEN];
	int rc = kvm_pathf(own, "%s/vm", dir);
	if (!rc && mkdir(own, 0700) < 0)
		rc = -errno;
	jail_new(j);
	if (!rc)
		rc = jail_give(j, own);
	if (!rc)
		rc = jail_add(j, own, true);
	if (rc)
		mitos_err_set(e, rc, "cannot make %.300s for a jailed VM: %s", own, strerror(-rc));
	return rc;
}

/* Kills and reaps one of our own VM processes and removes its cgroups. */
void kvm_vm_reap(struct vm_proc *vp)
{
	if (vp->pidfd >= 0) {
		syscall(SYS_pidfd_send_signal, vp->pidfd, SIGKILL, NULL, 0);
		siginfo_t si;
		waitid(P_PIDFD, (id_t)vp->pidfd, &si, WEXITED);
		close(vp->pidfd);
		vp->pidfd = -1;
	}
	cgroup_remove(&vp->cg);
}

static void reap_fn(void *arg)
{
	kvm_vm_reap(arg);
	free(arg);
}

void kvm_vm_reap_later(struct vm_proc *vp)
{
	struct vm_proc *copy = malloc(sizeof(*copy));
	if (vp->pidfd < 0 || !copy) {
		free(copy);
		kvm_vm_reap(vp);
		return;
	}
	syscall(SYS_pidfd_send_signal, vp->pidfd, SIGKILL, NULL, 0);
	*copy = *vp;
	vp->pidfd = -1;
	teardown_call(reap_fn, copy);
}

/* vm.json: what a later serve needs to clean up after this VM (and re-adopt it). */
int kvm_vm_record(const char *dir, const struct vm_proc *vp, const char *base, const struct vm_shape *sh)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "pid", vp->pid);
	cJSON_AddNumberToObject(o, "start_time", (double)vp->start_time);
	cgroup_record(&vp->cg, o);
	if (base)
		cJSON_AddStringToObject(o, "base", base);
	if (sh) {
		cJSON_AddNumberToObject(o, "mem_mib", sh->mem_mib);
		cJSON_AddNumberToObject(o, "vcpus", sh->vcpus);
	}
	char path[PLEN];
	int rc = kvm_pathf(path, "%s/vm.json", dir);
	if (!rc)
		rc = registry_write_json(path, o);
	cJSON_Delete(o);
	return rc;
}

/* Kills what a vm.json names if it still runs (pid and start time both match) and
 * removes its cgroups: for whatever a crashed serve left behind. */
void kvm_vm_record_kill(const char *dir)
{
	char path[PLEN];
	if (kvm_pathf(path, "%s/vm.json", dir))
		return;
	cJSON *o = registry_read_json(path);
	if (!o)
		return;
	cJSON *jp = cJSON_GetObjectItem(o, "pid"), *js = cJSON_GetObjectItem(o, "start_time");
	pid_t pid = cJSON_IsNumber(jp) ? (pid_t)jp->valuedouble : 0;
	uint64_t st = cJSON_IsNumber(js) ? (uint64_t)js->valuedouble : 0;
	int fd = engine_pidfd_of(pid, st);
	if (fd >= 0) {
		syscall(SYS_pidfd_send_signal, fd, SIGKILL, NULL, 0);
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		poll(&pf, 1, 2000);
		/* Ours (a VM of this serve): reap it; otherwise init does. */
		siginfo_t si;
		waitid(P_PIDFD, (id_t)fd, &si, WEXITED | WNOHANG);
		close(fd);
	}
	struct cg_set cg;
	cgroup_from_record(o, &cg);
	cgroup_remove(&cg);
	cJSON_Delete(o);
}

/* ---- workers ---- */

static void *worker_main(void *arg)
{
	struct kvm_queue *q = arg;
	pthread_mutex_lock(&K.mu);
	for (;;) {
		while (!q->head && !K.stopping)
			pthread_cond_wait(&q->cv, &K.mu);
		struct kjob *j = q->head;
		if (!j)
			break;
		q->head = j->next;
		if (!q->head)
			q->tail = NULL;
		pthread_mutex_unlock(&K.mu);
		j->run(j);
		pthread_mutex_lock(&K.mu);
		j->next = NULL;
		if (K.d_tail)
			K.d_tail->next = j;
		else
			K.d_head = j;
		K.d_tail = j;
		uint64_t one = 1;
		(void)!write(K.efd, &one, sizeof(one));
	}
	pthread_mutex_unlock(&K.mu);
	return NULL;
}

bool kvm_workers_start(void)
{
	static const unsigned per_lane[LANES] = { [LANE_SHORT] = WORKERS_SHORT, [LANE_LONG] = WORKERS_LONG,
						  [LANE_VM] = WORKERS_VM };
	/* Signals are serve's main thread's business (its signalfd). */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	bool ok = true;
	for (int l = 0; l < LANES && ok; l++)
		for (unsigned i = 0; i < per_lane[l] && ok; i++)
			if (pthread_create(&K.th[K.nth], NULL, worker_main, &K.lanes[l]))
				ok = false;
			else
				K.nth++;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return ok;
}

void kvm_workers_wake(void)
{
	pthread_mutex_lock(&K.mu);
	for (int l = 0; l < LANES; l++)
		pthread_cond_broadcast(&K.lanes[l].cv);
	pthread_mutex_unlock(&K.mu);
}

void kvm_workers_join(void)
{
	kvm_workers_wake();
	for (unsigned i = 0; i < K.nth; i++)
		pthread_join(K.th[i], NULL);
	K.nth = 0;
}

void kvm_submit(struct kjob *j, enum kvm_lane lane)
{
	struct kvm_queue *q = &K.lanes[lane];
	j->next = NULL;
	pthread_mutex_lock(&K.mu);
	if (q->tail)
		q->tail->next = j;
	else
		q->head = j;
	q->tail = j;
	pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&K.mu);
}

void kvm_run_completions(void)
{
	pthread_mutex_lock(&K.mu);
	struct kjob *j = K.d_head;
	K.d_head = K.d_tail = NULL;
	pthread_mutex_unlock(&K.mu);
	while (j) {
		struct kjob *n = j->next;
		j->complete(j);
		j = n;
	}
}

void kvm_arm_efd(void);

static void efd_done(struct uop *op, int res, uint32_t flags)
{
	(void)op; (void)res; (void)flags;
	K.earmed = false;
	kvm_run_completions();
	kvm_arm_efd();
}

void kvm_arm_efd(void)
{
	if (K.earmed || ur_stopping())
		return;
	K.eop.fn = efd_done;
	io_uring_prep_read(ur_sqe(&K.eop), K.efd, &K.ebuf, sizeof(K.ebuf), 0);
	K.earmed = true;
}

/* ---- talking to VMs from a worker ---- */

/* One control request; waits for the socket to appear while the VM is being prepared
 * (pidfd says whether it is still alive). */
int kvm_ctl_request(const char *sock, const struct ctl_request *cr, const struct control_fds *fds,
		    int timeout_ms, int wait_ms, int pidfd, struct mitos_err *e)
{
	uint64_t give_up = ur_mono_ms() + (uint64_t)wait_ms;
	cJSON *req = ctl_request_encode(cr);
	if (!req)
		return mitos_err_set(e, -EINVAL, "cannot encode the %s request", ctl_cmd_name(cr->cmd));
	for (;;) {
		struct mitos_err ce = { 0 };
		cJSON *r = control_call(sock, req, fds, timeout_ms, &ce);
		if (r) {
			bool ok = ctl_reply_ok(r, e);
			cJSON_Delete(r);
			cJSON_Delete(req);
			return ok ? 0 : e ? e->code : -EIO;
		}
		bool not_yet = ce.code == -ENOENT || ce.code == -ECONNREFUSED;
		if (!not_yet || ur_mono_ms() > give_up || K.stopping || pidfd_exited(pidfd)) {
			cJSON_Delete(req);
			return mitos_err_set(e, ce.code ? ce.code : -EIO, "%.300s",
					     not_yet && pidfd_exited(pidfd) ? "the VM process exited" :
					     not_yet ? "the VM did not open its control socket in time" : ce.msg);
		}
		usleep(500);
	}
}

int kvm_agent_health(const char *vsock, int timeout_ms, struct mitos_err *e)
{
	cJSON *end;
	int rc = agent_call_blocking(vsock, AGENT_PORT, "{\"op\":\"health\"}", timeout_ms, &end, e);
	if (!rc && cJSON_GetObjectItem(end, "error")) {
		char *t = cJSON_PrintUnformatted(end);
		rc = mitos_err_set(e, -EPROTO, "the agent's health check failed: %.200s", t ? t : "");
		free(t);
	}
	cJSON_Delete(end);
	return rc;
}

/* Runs the guest's warm-up command (struct kvm_guest) to its end: what it reads is
 * then in the guest's page cache, which the template's snapshot keeps for every
 * child. Its failure costs speed, not correctness: the caller logs it. */
int kvm_guest_warm(const char *vsock, const char *cmd, int timeout_ms, struct mitos_err *e)
{
	cJSON *op = cJSON_CreateObject();
	cJSON_AddStringToObject(op, "op", "exec");
	cJSON_AddStringToObject(op, "cmd", cmd);
	cJSON_AddNumberToObject(op, "timeout_ms", timeout_ms);
	char *text = cJSON_PrintUnformatted(op);
	cJSON_Delete(op);
	if (!text)
		return -ENOMEM;
	cJSON *end;
	int rc = agent_call_blocking(vsock, AGENT_PORT, text, timeout_ms + 5000, &end, e);
	free(text);
	if (!rc) {
		const cJSON *code = cJSON_GetObjectItem(end, "exit_code");
		if (!cJSON_IsNumber(code) || code->valueint != 0) {
			char *t = cJSON_PrintUnformatted(end);
			rc = mitos_err_set(e, -ECANCELED, "the warm-up command ended with %.200s", t ? t : "");
			free(t);
		}
	}
	cJSON_Delete(end);
	return rc;
}

/* Starts run_code's default Python context with an empty cell (IPython counts no
 * execution for it) and waits for it to answer: every child of the template then
 * inherits a running kernel, and its first run_code does not pay IPython's start
 * (seconds on hardware KVM, over a minute under emulation; E2B's SDK gives a request
 * 60 s). The context is the one a first run_code would make: no user, the agent's
 * directory; the agent reseeds its generators after each child's post_fork. */
int kvm_guest_warm_code(const char *vsock, int timeout_ms, struct mitos_err *e)
{
	char op[96];
	snprintf(op, sizeof(op), "{\"op\":\"run_code\",\"code\":\"\",\"context\":\"default\",\"timeout_ms\":%d}",
		 timeout_ms);
	cJSON *end;
	int rc = agent_call_blocking(vsock, AGENT_PORT, op, timeout_ms + 5000, &end, e);
	if (!rc && !cJSON_IsString(cJSON_GetObjectItem(end, "status"))) {
		char *t = cJSON_PrintUnformatted(end);
		rc = mitos_err_set(e, -ECANCELED, "the Python kernel's warm-up ended with %.200s", t ? t : "");
		free(t);
	}
	cJSON_Delete(end);
	return rc;
}
