/* The kvm engine: every sandbox is a microVM, one `mitos-vmm vm` process each, forked
 * from a template's snapshot.
 *
 * - A template is built by booting its kernel and root filesystem image (read-only)
 *   under `mitos-vmm run` until its agent answers `health` over vsock, snapshotting it
 *   through the control socket into STATE/templates/NAME/snapshot, and stopping it.
 * - Prepared VMs (`mitos-vmm vm`: KVM VM, vCPUs and a RAM reservation made ahead) are
 *   kept in a small pool per VM shape in STATE/kvm/pool and refilled from the event
 *   loop; a new sandbox takes one (or starts one when the pool is dry), moves its
 *   control socket and console into the sandbox's dir, and a worker thread sends it the
 *   `restore` request. The agent is then reached through the VM's vsock socket
 *   (CONNECT 52) and sent `post_fork` (fresh entropy, the wall clock) before the
 *   sandbox counts as ready.
 * - Forking a sandbox snapshots it into a layer (STATE/kvm/layers/N, only the pages it
 *   changed) and restores each child from it. Layers are reference-counted by the
 *   sandboxes restored from them and by their own child layers; the last one to go
 *   removes it.
 * - Each VM process is jailed as far as the host allows: new mount (private, own /proc),
 *   pid, ipc, uts and net namespaces, no capabilities (uid 0 without privilege),
 *   no_new_privs, a seccomp allowlist it installs itself once prepared (`--seccomp`,
 *   vmm/seccomp.c), and a cgroup with memory and CPU limits (api/engines/cgroup.c). What is
 *   missing is listed in api/API.md.
 *
 * Everything that waits on a guest (restore, layer snapshots, template boots) runs on a
 * few worker threads; they touch no state of the event loop and report back through an
 * eventfd. Spawning, the pool and reference counts belong to the loop thread. */
#include "api/engines/engine.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/sched.h>
#include <linux/securebits.h>
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
#include "api/sandbox/registry.h"
#include "api/http/uring.h"
#include "vmm/control.h"

#define AGENT_PORT 52
#define WORKERS 4
#define PLEN 512                     /* every path the engine builds */
#define MAX_SHAPES 16
#define MAX_POOL 64
#define CTL_TIMEOUT_MS 5000          /* pause, resume, stop: the VMM answers at once */
#define RESTORE_TIMEOUT_MS 30000
#define SNAPSHOT_TIMEOUT_MS 120000
#define PREPARE_TIMEOUT_MS 15000     /* a prepared VM's control socket must appear by then */
#define BOOT_TIMEOUT_DEFAULT_S 120
#define MEM_OVERHEAD_MIB 128         /* the VMM's own memory above guest RAM, for memory.max */
#define SPAWN_PER_TICK 2             /* pool refills per 100 ms tick: the loop stays responsive */
#define SOCK_MAX 107                 /* sun_path, less the NUL */

struct vm_shape {
	unsigned mem_mib, vcpus;
	struct cg_limits lim;
};

/* One mitos-vmm process. */
struct vm_proc {
	pid_t pid;
	int pidfd;
	uint64_t start_time;
	struct cg_set cg;      /* removed after it exits */
};

struct pool_vm {
	struct vm_proc p;
	char dir[PLEN];
	struct pool_vm *next;
};

struct shape_pool {
	bool used;
	struct vm_shape sh;
	struct pool_vm *idle;
	unsigned nidle, fails;
	uint64_t retry_at_ms;
};

struct kvm_layer {
	unsigned refs;            /* loop thread only */
	struct kvm_layer *parent; /* NULL when the parent is a template's snapshot */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int state;                /* 1 being written, 0 ready, -errno failed */
	char err[400];
	char dir[PLEN];
	struct kvm_layer *next;
};

/* p->priv of a sandbox. */
struct kvm_sb {
	char dir[PLEN];
	struct kvm_layer *base;
};

struct kjob {
	void (*run)(struct kjob *j);      /* on a worker */
	void (*complete)(struct kjob *j); /* on the loop; frees the job */
	struct kjob *next;
};

static struct {
	bool configured;
	char state[PLEN], pool_dir[PLEN], layer_dir[PLEN];
	int vmm_fd;
	unsigned pool_size;
	bool ns;                          /* namespaces: needs root */
	unsigned serial;
	_Atomic bool stopping;
	struct shape_pool pools[MAX_SHAPES];
	struct kvm_layer *layers;
	struct ur_ticker ticker;
	struct ur_kick refill;
	/* workers */
	pthread_t th[WORKERS];
	unsigned nth;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct kjob *q_head, *q_tail, *d_head, *d_tail;
	int efd;
	uint64_t ebuf;
	struct uop eop;
	bool earmed;
	struct build *builds;
} K = { .vmm_fd = -1, .efd = -1, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

/* ---- small helpers ---- */

static int pathf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int pathf(char *out, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(out, PLEN, fmt, ap);
	va_end(ap);
	return n < 0 || n >= PLEN ? -ENAMETOOLONG : 0;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static bool is_socket(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

static bool proc_exited(int pidfd)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };
	return pidfd < 0 || poll(&p, 1, 0) != 0;
}

/* The end of a console log, on one line: why a guest or a VMM gave up. */
static void console_tail(const char *path, char *out, size_t outlen)
{
	out[0] = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
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
	size_t k = 0;
	for (; *p && k + 1 < outlen; p++)
		out[k++] = *p == '\n' ? '|' : (*p >= 32 && *p < 127) ? *p : '?';
	out[k] = 0;
}

static void write_error_file(const char *dir, const char *msg)
{
	char path[PLEN];
	if (pathf(path, "%s/start-error", dir))
		return;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd >= 0) {
		(void)!write(fd, msg, strlen(msg));
		close(fd);
	}
}

/* ---- spawning a jailed mitos-vmm ---- */

/* The VMM needs no privilege: /dev/kvm, the snapshots and the disks are root's files,
 * which uid 0 reaches without capabilities. exec as root would grant every capability
 * back unless root's special status is switched off first (securebits), and then the
 * bounding and ambient sets are emptied for good. Raw system calls (see vm_child). */
static void drop_capabilities(void)
{
	syscall(SYS_prctl, PR_SET_SECUREBITS,
		SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED |
		SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED, 0, 0, 0);
	syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	/* Past the last capability this kernel knows, PR_CAPBSET_DROP fails harmlessly. */
	for (int cap = 0; cap < 64; cap++)
		syscall(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0);
}

/* The child between clone3 and exec: serve has threads, so only raw system calls here. */
static __attribute__((noreturn)) void vm_child(char *const argv[], int logfd, int nullfd, const struct cg_entry *ce)
{
	cgroup_enter_child(ce);
	syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	if (K.ns) {
		/* Nothing mounted here reaches the host; /proc shows this VM only. */
		syscall(SYS_mount, NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
		syscall(SYS_mount, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
		syscall(SYS_sethostname, "mitos-vm", 8);
		drop_capabilities();
	}
	syscall(SYS_setsid);
	syscall(SYS_dup2, nullfd, 0);
	syscall(SYS_dup2, logfd, 1);
	syscall(SYS_dup2, logfd, 2);
	syscall(SYS_dup2, K.vmm_fd, 3);
	syscall(SYS_close_range, 4, ~0U, 0);
	sigset_t none;
	sigemptyset(&none);
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof(uint64_t));
	/* serve ignores SIGPIPE; exec keeps ignored signals ignored. */
	struct { void *handler; unsigned long flags; void *restorer; uint64_t mask; } dfl = { 0 };
	syscall(SYS_rt_sigaction, SIGPIPE, &dfl, NULL, sizeof(uint64_t));
	extern char **environ;
	syscall(SYS_execveat, 3, "", argv, environ, AT_EMPTY_PATH);
	static const char msg[] = "mitos-vmm serve: cannot exec mitos-vmm for a VM\n";
	syscall(SYS_write, 2, msg, sizeof(msg) - 1);
	syscall(SYS_exit_group, 127);
	__builtin_unreachable();
}

/* Starts argv (mitos-vmm ...) jailed, its console and messages going to console. */
static int vm_spawn(char *const argv[], const char *console, const char *name, const struct vm_shape *sh,
		    struct vm_proc *vp, char *err, size_t errlen)
{
	memset(vp, 0, sizeof(*vp));
	vp->pidfd = -1;
	int logfd = open(console, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (logfd < 0) {
		snprintf(err, errlen, "cannot create %s: %s", console, strerror(errno));
		return -errno;
	}
	int nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	struct cg_entry ce;
	int rc = cgroup_create(name, &sh->lim, &vp->cg, &ce);
	if (rc) {
		snprintf(err, errlen, "cannot create the VM's cgroup: %s", strerror(-rc));
		close(logfd);
		if (nullfd >= 0)
			close(nullfd);
		return rc;
	}
	int pidfd = -1;
	long pid = cgroup_clone(&ce, K.ns ? CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS |
				CLONE_NEWNET : 0, &pidfd);
	if (pid == 0)
		vm_child(argv, logfd, nullfd, &ce);
	int e = errno;
	close(logfd);
	if (nullfd >= 0)
		close(nullfd);
	cgroup_entry_close(&ce);
	if (pid < 0) {
		snprintf(err, errlen, "cannot start mitos-vmm (clone3): %s", strerror(e));
		cgroup_remove(&vp->cg);
		return -e;
	}
	fcntl(pidfd, F_SETFD, FD_CLOEXEC);
	vp->pid = (pid_t)pid;
	vp->pidfd = pidfd;
	vp->start_time = engine_proc_start_time(vp->pid);
	return 0;
}

/* Kills and reaps one of our own VM processes and removes its cgroups. */
static void vm_reap(struct vm_proc *vp)
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

/* vm.json: what a later serve needs to clean up after this VM (and re-adopt it). */
static int vm_record(const char *dir, const struct vm_proc *vp, const char *base, const struct vm_shape *sh)
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
	int rc = pathf(path, "%s/vm.json", dir);
	if (!rc)
		rc = registry_write_json(path, o);
	cJSON_Delete(o);
	return rc;
}

/* Kills what a vm.json names if it still runs (pid and start time both match) and
 * removes its cgroups: for whatever a crashed serve left behind. */
static void vm_record_kill(const char *dir)
{
	char path[PLEN];
	if (pathf(path, "%s/vm.json", dir))
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
	(void)arg;
	pthread_mutex_lock(&K.mu);
	for (;;) {
		while (!K.q_head && !K.stopping)
			pthread_cond_wait(&K.cv, &K.mu);
		struct kjob *j = K.q_head;
		if (!j)
			break;
		K.q_head = j->next;
		if (!K.q_head)
			K.q_tail = NULL;
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

static void submit(struct kjob *j)
{
	j->next = NULL;
	pthread_mutex_lock(&K.mu);
	if (K.q_tail)
		K.q_tail->next = j;
	else
		K.q_head = j;
	K.q_tail = j;
	pthread_cond_signal(&K.cv);
	pthread_mutex_unlock(&K.mu);
}

static void run_completions(void)
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

static void arm_efd(void);

static void efd_done(struct uop *op, int res, uint32_t flags)
{
	(void)op; (void)res; (void)flags;
	K.earmed = false;
	run_completions();
	arm_efd();
}

static void arm_efd(void)
{
	if (K.earmed || ur_stopping())
		return;
	K.eop.fn = efd_done;
	io_uring_prep_read(ur_sqe(&K.eop), K.efd, &K.ebuf, sizeof(K.ebuf), 0);
	K.earmed = true;
}

/* ---- talking to VMs from a worker ---- */

static bool ctl_reply_ok(cJSON *r, char *err, size_t errlen)
{
	if (r && cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")))
		return true;
	cJSON *e = r ? cJSON_GetObjectItem(r, "error") : NULL;
	const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(e, "message"));
	snprintf(err, errlen, "%s", m ? m : "the VMM refused the request");
	return false;
}

/* One control request; waits for the socket to appear while the VM is being prepared
 * (pidfd says whether it is still alive). */
static int ctl_request(const char *sock, cJSON *req, int timeout_ms, int wait_ms, int pidfd, char *err, size_t errlen)
{
	uint64_t give_up = mono_ms() + (uint64_t)wait_ms;
	for (;;) {
		struct mitos_err e = { 0 };
		cJSON *r = control_call(sock, req, timeout_ms, &e);
		if (r) {
			bool ok = ctl_reply_ok(r, err, errlen);
			cJSON_Delete(r);
			return ok ? 0 : -EIO;
		}
		bool not_yet = e.code == -ENOENT || e.code == -ECONNREFUSED;
		if (!not_yet || mono_ms() > give_up || K.stopping || proc_exited(pidfd)) {
			snprintf(err, errlen, "%.300s", not_yet && proc_exited(pidfd) ? "the VM process exited" :
				 not_yet ? "the VM did not open its control socket in time" : e.msg);
			return e.code ? e.code : -EIO;
		}
		usleep(500);
	}
}

static int agent_health(const char *vsock, int timeout_ms, char *err, size_t errlen)
{
	cJSON *end;
	int rc = agent_call_blocking(vsock, AGENT_PORT, "{\"op\":\"health\"}", timeout_ms, &end, err, errlen);
	if (!rc && cJSON_GetObjectItem(end, "error")) {
		char *t = cJSON_PrintUnformatted(end);
		rc = -EPROTO;
		snprintf(err, errlen, "the agent's health check failed: %.200s", t ? t : "");
		free(t);
	}
	cJSON_Delete(end);
	return rc;
}

/* Runs the guest's warm-up command (struct kvm_guest) to its end: what it reads is
 * then in the guest's page cache, which the template's snapshot keeps for every
 * child. Its failure costs speed, not correctness: the caller logs it. */
static int guest_warm(const char *vsock, const char *cmd, int timeout_ms, char *err, size_t errlen)
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
	int rc = agent_call_blocking(vsock, AGENT_PORT, text, timeout_ms + 5000, &end, err, errlen);
	free(text);
	if (!rc) {
		const cJSON *code = cJSON_GetObjectItem(end, "exit_code");
		if (!cJSON_IsNumber(code) || code->valueint != 0) {
			char *t = cJSON_PrintUnformatted(end);
			rc = -ECANCELED;
			snprintf(err, errlen, "the warm-up command ended with %.200s", t ? t : "");
			free(t);
		}
	}
	cJSON_Delete(end);
	return rc;
}

/* ---- layers ---- */

static struct kvm_layer *layer_find(const char *dir)
{
	for (struct kvm_layer *l = K.layers; l; l = l->next)
		if (!strcmp(l->dir, dir))
			return l;
	return NULL;
}

static bool in_layer_dir(const char *dir)
{
	size_t n = strlen(K.layer_dir);
	return !strncmp(dir, K.layer_dir, n) && dir[n] == '/';
}

static struct kvm_layer *layer_new(const char *dir, struct kvm_layer *parent, int state)
{
	struct kvm_layer *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
	l->state = state;
	l->refs = 1;
	l->parent = parent;
	if (parent)
		parent->refs++;
	snprintf(l->dir, sizeof(l->dir), "%s", dir);
	l->next = K.layers;
	K.layers = l;
	return l;
}

static void layer_unref(struct kvm_layer *l)
{
	while (l && --l->refs == 0) {
		struct kvm_layer *parent = l->parent;
		for (struct kvm_layer **pp = &K.layers; *pp; pp = &(*pp)->next)
			if (*pp == l) {
				*pp = l->next;
				break;
			}
		engine_remove_tree(l->dir);
		pthread_mutex_destroy(&l->mu);
		pthread_cond_destroy(&l->cv);
		free(l);
		l = parent;
	}
}

/* A layer found on disk (a re-adopted sandbox restored from it): one more reference,
 * its parent layers linked in as well. */
static struct kvm_layer *layer_adopt(const char *dir, unsigned depth)
{
	if (!in_layer_dir(dir) || depth > 64)
		return NULL;
	struct kvm_layer *l = layer_find(dir);
	if (l) {
		l->refs++;
		return l;
	}
	char cfg[PLEN];
	if (pathf(cfg, "%s/config.json", dir))
		return NULL;
	cJSON *o = registry_read_json(cfg);
	const char *parent = o ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "parent")) : NULL;
	struct kvm_layer *pl = parent ? layer_adopt(parent, depth + 1) : NULL;
	cJSON_Delete(o);
	l = layer_new(dir, pl, 0);
	if (pl)
		layer_unref(pl); /* layer_new took its own */
	return l;
}

static int layer_wait(struct kvm_layer *l, char *err, size_t errlen)
{
	pthread_mutex_lock(&l->mu);
	while (l->state == 1 && !K.stopping) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&l->cv, &l->mu, &ts);
	}
	int st = l->state == 1 ? -ESHUTDOWN : l->state;
	if (st)
		snprintf(err, errlen, "the parent's snapshot failed: %s", l->err[0] ? l->err : strerror(-st));
	pthread_mutex_unlock(&l->mu);
	return st;
}

struct snap_job {
	struct kjob k;
	struct kvm_layer *layer;
	char control[PLEN];
};

static void snap_run(struct kjob *kj)
{
	struct snap_job *j = (struct snap_job *)kj;
	char err[400] = "";
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "cmd", "snapshot");
	cJSON_AddStringToObject(req, "dir", j->layer->dir);
	int rc = ctl_request(j->control, req, SNAPSHOT_TIMEOUT_MS, 0, -1, err, sizeof(err));
	cJSON_Delete(req);
	pthread_mutex_lock(&j->layer->mu);
	j->layer->state = rc;
	snprintf(j->layer->err, sizeof(j->layer->err), "%s", err);
	pthread_cond_broadcast(&j->layer->cv);
	pthread_mutex_unlock(&j->layer->mu);
}

static void snap_complete(struct kjob *kj)
{
	struct snap_job *j = (struct snap_job *)kj;
	layer_unref(j->layer);
	free(j);
}

/* ---- the pool of prepared VMs ---- */

static bool shape_eq(const struct vm_shape *a, const struct vm_shape *b)
{
	return a->mem_mib == b->mem_mib && a->vcpus == b->vcpus && a->lim.memory_max_mib == b->lim.memory_max_mib &&
	       a->lim.cpu_percent == b->lim.cpu_percent;
}

static struct shape_pool *pool_for(const struct vm_shape *sh, bool add)
{
	struct shape_pool *free_slot = NULL;
	for (int i = 0; i < MAX_SHAPES; i++) {
		if (K.pools[i].used && shape_eq(&K.pools[i].sh, sh))
			return &K.pools[i];
		if (!K.pools[i].used && !free_slot)
			free_slot = &K.pools[i];
	}
	if (!add || !free_slot)
		return NULL;
	memset(free_slot, 0, sizeof(*free_slot));
	free_slot->used = true;
	free_slot->sh = *sh;
	return free_slot;
}

/* argv of `mitos-vmm vm` for sh, with its control socket and console in dir. */
struct vm_argv {
	char *v[14];
	char ctl[PLEN], mem[16], cpus[16], console[PLEN];
};

static int vm_argv_make(struct vm_argv *a, const char *dir, const struct vm_shape *sh)
{
	if (pathf(a->ctl, "%s/control", dir) || pathf(a->console, "%s/console.log", dir) || strlen(a->ctl) > SOCK_MAX)
		return -ENAMETOOLONG;
	snprintf(a->mem, sizeof(a->mem), "%u", sh->mem_mib);
	snprintf(a->cpus, sizeof(a->cpus), "%u", sh->vcpus);
	char *v[] = { "mitos-vmm", "vm", "--seccomp", "--control", a->ctl, "--mem", a->mem, "--vcpus", a->cpus,
		      "--console", a->console, NULL };
	memcpy(a->v, v, sizeof(v));
	return 0;
}

static int pool_spawn(struct shape_pool *sp, char *err, size_t errlen)
{
	struct pool_vm *pv = calloc(1, sizeof(*pv));
	if (!pv)
		return -ENOMEM;
	unsigned serial = ++K.serial;
	char name[64];
	snprintf(name, sizeof(name), "vm-%d-%u", (int)getpid(), serial);
	struct vm_argv a;
	int rc = pathf(pv->dir, "%s/%s", K.pool_dir, name);
	if (!rc)
		rc = vm_argv_make(&a, pv->dir, &sp->sh);
	if (!rc && mkdir(pv->dir, 0700) < 0)
		rc = -errno;
	if (rc) {
		snprintf(err, errlen, "cannot make %.200s: %s", pv->dir, strerror(-rc));
		free(pv);
		return rc;
	}
	if ((rc = vm_spawn(a.v, a.console, name, &sp->sh, &pv->p, err, errlen))) {
		engine_remove_tree(pv->dir);
		free(pv);
		return rc;
	}
	vm_record(pv->dir, &pv->p, NULL, &sp->sh);
	/* Oldest first: it is the likeliest to be prepared when taken. */
	struct pool_vm **pp = &sp->idle;
	while (*pp)
		pp = &(*pp)->next;
	*pp = pv;
	sp->nidle++;
	return 0;
}

static void pool_drop(struct shape_pool *sp, struct pool_vm *pv)
{
	for (struct pool_vm **pp = &sp->idle; *pp; pp = &(*pp)->next)
		if (*pp == pv) {
			*pp = pv->next;
			sp->nidle--;
			break;
		}
	vm_reap(&pv->p);
	engine_remove_tree(pv->dir);
	free(pv);
}

/* Idle VMs that died (a host problem: /dev/kvm, memory) are replaced, with a growing
 * pause between attempts so a broken host is not hammered. */
static void pool_check(void)
{
	for (int i = 0; i < MAX_SHAPES; i++) {
		struct shape_pool *sp = &K.pools[i];
		for (struct pool_vm *pv = sp->idle, *n; sp->used && pv; pv = n) {
			n = pv->next;
			if (!proc_exited(pv->p.pidfd))
				continue;
			char path[PLEN], tail[300];
			pathf(path, "%s/console.log", pv->dir);
			console_tail(path, tail, sizeof(tail));
			sp->fails++;
			unsigned backoff = sp->fails > 5 ? 30000u : 500u << sp->fails;
			sp->retry_at_ms = mono_ms() + backoff;
			fprintf(stderr, "mitos-vmm serve: a prepared VM (%u MiB, %u vCPU) exited: %s\n",
				sp->sh.mem_mib, sp->sh.vcpus, tail[0] ? tail : "no message");
			pool_drop(sp, pv);
		}
	}
}

static void pool_fill(void)
{
	if (K.stopping)
		return;
	unsigned spawned = 0;
	uint64_t now = mono_ms();
	for (int i = 0; i < MAX_SHAPES && spawned < SPAWN_PER_TICK; i++) {
		struct shape_pool *sp = &K.pools[i];
		while (sp->used && sp->nidle < K.pool_size && now >= sp->retry_at_ms && spawned < SPAWN_PER_TICK) {
			char err[300];
			if (pool_spawn(sp, err, sizeof(err))) {
				fprintf(stderr, "mitos-vmm serve: cannot prepare a VM: %s\n", err);
				sp->retry_at_ms = now + 5000;
				break;
			}
			spawned++;
		}
	}
}

static void refill_kick(struct ur_kick *k)
{
	(void)k;
	pool_fill();
}

static void pool_tick(struct ur_ticker *t, uint64_t now)
{
	(void)t; (void)now;
	pool_check();
	pool_fill();
}

/* A VM for a new sandbox in sbdir: a prepared one moved over (its control socket and
 * console renamed into sbdir), or a new one started there. */
static int vm_take(const struct vm_shape *sh, const char *sbdir, struct vm_proc *vp, char *err, size_t errlen)
{
	struct shape_pool *sp = pool_for(sh, true);
	for (struct pool_vm *pv = sp ? sp->idle : NULL, *n; pv; pv = n) {
		n = pv->next;
		char from[PLEN], to[PLEN], cfrom[PLEN], cto[PLEN];
		pathf(from, "%s/control", pv->dir);
		/* Still being prepared: leave it for the next one. */
		if (!is_socket(from))
			continue;
		if (proc_exited(pv->p.pidfd)) {
			pool_drop(sp, pv);
			continue;
		}
		if (pathf(to, "%s/control", sbdir) || pathf(cfrom, "%s/console.log", pv->dir) ||
		    pathf(cto, "%s/console.log", sbdir) || rename(from, to) < 0)
			continue;
		rename(cfrom, cto);
		for (struct pool_vm **pp = &sp->idle; *pp; pp = &(*pp)->next)
			if (*pp == pv) {
				*pp = pv->next;
				sp->nidle--;
				break;
			}
		*vp = pv->p;
		engine_remove_tree(pv->dir);
		free(pv);
		sp->fails = 0;
		ur_kick(&K.refill);
		return 0;
	}
	if (sp)
		ur_kick(&K.refill);
	struct vm_argv a;
	if (vm_argv_make(&a, sbdir, sh)) {
		snprintf(err, errlen, "the sandbox's path %.200s is too long for its sockets", sbdir);
		return -ENAMETOOLONG;
	}
	char name[64];
	snprintf(name, sizeof(name), "vm-%d-%u", (int)getpid(), ++K.serial);
	return vm_spawn(a.v, a.console, name, sh, vp, err, errlen);
}

/* ---- templates ---- */

static int shape_read(const char *tdir, struct vm_shape *sh, char *rootfs, size_t rootfslen)
{
	char path[PLEN];
	if (pathf(path, "%s/kvm.json", tdir))
		return -ENAMETOOLONG;
	cJSON *o = registry_read_json(path);
	if (!o)
		return -ENOENT;
	cJSON *m = cJSON_GetObjectItem(o, "mem_mib"), *c = cJSON_GetObjectItem(o, "vcpus");
	cJSON *mm = cJSON_GetObjectItem(o, "memory_max_mib"), *cp = cJSON_GetObjectItem(o, "cpu_percent");
	const char *r = cJSON_GetStringValue(cJSON_GetObjectItem(o, "rootfs"));
	int rc = cJSON_IsNumber(m) && cJSON_IsNumber(c) && cJSON_IsNumber(mm) && cJSON_IsNumber(cp) && r ? 0 : -EINVAL;
	if (!rc) {
		sh->mem_mib = (unsigned)m->valuedouble;
		sh->vcpus = (unsigned)c->valuedouble;
		sh->lim.memory_max_mib = (unsigned)mm->valuedouble;
		sh->lim.cpu_percent = (unsigned)cp->valuedouble;
		sh->lim.pids_max = 0; /* a VM process's threads are the VMM's own */
		snprintf(rootfs, rootfslen, "%s", r);
	}
	cJSON_Delete(o);
	return rc;
}

struct build {
	struct kjob k;
	struct vm_proc vp;
	int pidfd;              /* the worker's own */
	char dir[PLEN], vsock[PLEN], control[PLEN], snap[PLEN], console[PLEN];
	char warm[sizeof(((struct kvm_guest *)0)->warm)];
	cJSON *workload;        /* the template's, started before the snapshot, or NULL */
	uint64_t boot_ms, warm_ms;
	int rc;
	char msg[700];
	engine_build_done_fn done;
	void *ctx;
	struct build *next;
};

static void build_run(struct kjob *kj)
{
	struct build *b = (struct build *)kj;
	uint64_t t0 = mono_ms(), give_up = t0 + b->boot_ms;
	char err[400] = "";
	int rc;
	for (;;) {
		if (K.stopping) {
			rc = -ESHUTDOWN;
			snprintf(err, sizeof(err), "the server is shutting down");
			break;
		}
		if (proc_exited(b->pidfd)) {
			char tail[300];
			console_tail(b->console, tail, sizeof(tail));
			rc = -ECHILD;
			snprintf(err, sizeof(err), "the guest stopped before its agent answered; its console ended "
				 "with: %s", tail[0] ? tail : "(nothing)");
			break;
		}
		err[0] = 0;
		rc = agent_health(b->vsock, 2000, err, sizeof(err));
		if (!rc)
			break;
		bool not_yet = rc == -ENOENT || rc == -ECONNREFUSED || rc == -ECONNRESET || rc == -ETIMEDOUT;
		if (!not_yet)
			break;
		if (mono_ms() > give_up) {
			rc = -ETIMEDOUT;
			snprintf(err, sizeof(err), "no agent answered on vsock port %u within %" PRIu64 " s of boot "
				 "(see %.200s)", AGENT_PORT, b->boot_ms / 1000, b->console);
			break;
		}
		usleep(20000);
	}
	if (!rc && b->warm[0]) {
		uint64_t w0 = mono_ms();
		char werr[300] = "";
		int wrc = guest_warm(b->vsock, b->warm, (int)(give_up > w0 ? give_up - w0 : 1000), werr, sizeof(werr));
		b->warm_ms = mono_ms() - w0;
		if (wrc)
			fprintf(stderr, "mitos-vmm serve: template %s: warm-up failed after %" PRIu64 " ms (its children "
				"start cold): %s\n", b->dir, b->warm_ms, werr[0] ? werr : strerror(-wrc));
	}
	if (!rc && b->workload) {
		/* Every fork wakes with it already serving. */
		rc = workload_run_blocking(b->vsock, AGENT_PORT, b->workload, err, sizeof(err));
		if (rc)
			snprintf(b->msg, sizeof(b->msg), "%s", err);
	}
	if (!rc) {
		/* Our health connection is closed: let the guest retire it, so the snapshot
		 * holds a listening agent and nothing half-open. */
		usleep(100000);
		cJSON *req = cJSON_CreateObject();
		cJSON_AddStringToObject(req, "cmd", "snapshot");
		cJSON_AddStringToObject(req, "dir", b->snap);
		rc = ctl_request(b->control, req, SNAPSHOT_TIMEOUT_MS, 0, b->pidfd, err, sizeof(err));
		cJSON_Delete(req);
		if (rc)
			snprintf(b->msg, sizeof(b->msg), "the template's snapshot failed: %s", err);
	} else if (!b->msg[0]) {
		snprintf(b->msg, sizeof(b->msg), "%s", err);
	}
	/* The template VM has served its purpose either way. */
	cJSON *stop = cJSON_CreateObject();
	cJSON_AddStringToObject(stop, "cmd", "stop");
	char ignore[200];
	ctl_request(b->control, stop, CTL_TIMEOUT_MS, 0, b->pidfd, ignore, sizeof(ignore));
	cJSON_Delete(stop);
	struct pollfd pf = { .fd = b->pidfd, .events = POLLIN };
	if (poll(&pf, 1, 5000) <= 0)
		syscall(SYS_pidfd_send_signal, b->pidfd, SIGKILL, NULL, 0);
	close(b->pidfd);
	b->pidfd = -1;
	b->rc = rc;
	if (!rc)
		snprintf(b->msg, sizeof(b->msg), "booted, agent answered, warmed (%" PRIu64 " ms) and snapshotted in "
			 "%" PRIu64 " ms", b->warm_ms, mono_ms() - t0);
}

static void build_complete(struct kjob *kj)
{
	struct build *b = (struct build *)kj;
	for (struct build **pp = &K.builds; *pp; pp = &(*pp)->next)
		if (*pp == b) {
			*pp = b->next;
			break;
		}
	vm_reap(&b->vp);
	char p[PLEN];
	static const char *leftovers[] = { "vsock", "control", "vm.json" };
	for (size_t i = 0; i < sizeof(leftovers) / sizeof(leftovers[0]); i++)
		if (!pathf(p, "%s/%s", b->dir, leftovers[i]))
			unlink(p);
	if (!b->rc) {
		struct vm_shape sh;
		char rootfs[PLEN];
		if (!shape_read(b->dir, &sh, rootfs, sizeof(rootfs)) && pool_for(&sh, true))
			ur_kick(&K.refill);
	}
	if (b->done)
		b->done(b->ctx, b->rc, b->msg);
	cJSON_Delete(b->workload);
	free(b);
}

/* An absolute path of a readable file in spec[key] (absent: out "", an error unless
 * optional). */
static int spec_file(const cJSON *spec, const char *key, bool optional, char *out, char *err, size_t errlen)
{
	const cJSON *j = cJSON_GetObjectItemCaseSensitive(spec, key);
	const char *v = cJSON_GetStringValue(j);
	struct stat st;
	out[0] = 0;
	if (!j && optional)
		return 0;
	if (!v || v[0] != '/') {
		snprintf(err, errlen, "the kvm engine builds a template from a guest kernel and a root "
			 "filesystem image (or an initramfs): give \"kernel\" and \"rootfs\" (or \"initrd\") as "
			 "absolute paths on this host");
		return -EINVAL;
	}
	char real[PATH_MAX];
	if (!realpath(v, real) || stat(real, &st) < 0 || !S_ISREG(st.st_mode) || access(real, R_OK)) {
		snprintf(err, errlen, "%s %.300s: not a readable file", key, v);
		return -ENOENT;
	}
	if (strlen(real) >= PLEN) {
		snprintf(err, errlen, "%s: path too long", key);
		return -ENAMETOOLONG;
	}
	strcpy(out, real);
	return 0;
}

static int kvm_template_build(const char *dir, const cJSON *spec, engine_build_done_fn done, void *ctx,
			      char *err, size_t errlen)
{
	char kernel[PLEN], rootfs[PLEN], initrd[PLEN] = "";
	unsigned mem, vcpus, boot_s;
	struct cg_limits lim;
	int rc;
	/* A request that names no guest gets its image's (tools/build-image, build-kernel.sh). */
	struct kvm_guest g = { .cmdline = KVM_GUEST_CMDLINE, .mem_mib = 256, .boot_timeout_s = BOOT_TIMEOUT_DEFAULT_S };
	static const char *guest_keys[] = { "kernel", "rootfs", "initrd" };
	bool builtin = true;
	for (size_t i = 0; i < sizeof(guest_keys) / sizeof(guest_keys[0]); i++)
		if (cJSON_GetObjectItemCaseSensitive(spec, guest_keys[i]))
			builtin = false;
	if (builtin) {
		const char *image = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(spec, "image"));
		if ((rc = kvm_guest_default(image ? image : "", &g, err, errlen)))
			return rc;
		if (pathf(kernel, "%s", g.kernel) || pathf(rootfs, "%s", g.rootfs)) {
			snprintf(err, errlen, "the image's kernel or disk path is too long");
			return -ENAMETOOLONG;
		}
	} else if ((rc = spec_file(spec, "kernel", false, kernel, err, errlen)) ||
		   (rc = spec_file(spec, "initrd", true, initrd, err, errlen)) ||
		   (rc = spec_file(spec, "rootfs", initrd[0] != 0, rootfs, err, errlen))) {
		return rc;
	}
	if ((rc = registry_uint_field(spec, "mem_mib", 16, 1u << 20, g.mem_mib, &mem, err, errlen)) ||
	    (rc = registry_uint_field(spec, "vcpus", 1, 64, 1, &vcpus, err, errlen)) ||
	    (rc = cgroup_limits_parse(spec, mem,
				      &(struct cg_limits){ .memory_max_mib = mem + MEM_OVERHEAD_MIB,
							   .cpu_percent = vcpus * 100 },
				      &lim, err, errlen)) ||
	    (rc = registry_uint_field(spec, "boot_timeout", 1, 3600, g.boot_timeout_s, &boot_s, err, errlen)))
		return rc;
	const cJSON *jc = cJSON_GetObjectItemCaseSensitive(spec, "cmdline");
	if (jc && (!cJSON_IsString(jc) || strlen(jc->valuestring) > 2048)) {
		snprintf(err, errlen, "cmdline must be a string of at most 2048 characters");
		return -EINVAL;
	}
	const char *cmdline = jc ? jc->valuestring : g.cmdline;
	struct build *b = calloc(1, sizeof(*b));
	if (!b) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	b->pidfd = -1;
	b->vp.pidfd = -1;
	if (pathf(b->dir, "%s", dir) || pathf(b->vsock, "%s/vsock", dir) || pathf(b->control, "%s/control", dir) ||
	    pathf(b->snap, "%s/snapshot", dir) || pathf(b->console, "%s/console.log", dir) ||
	    strlen(b->vsock) + 12 > SOCK_MAX || strlen(b->control) > SOCK_MAX) {
		snprintf(err, errlen, "the state dir's path is too long for the template's sockets");
		free(b);
		return -ENAMETOOLONG;
	}
	if (mkdir(dir, 0700) < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot create %.300s: %s", dir, strerror(errno));
		free(b);
		return rc;
	}
	struct vm_shape sh = { .mem_mib = mem, .vcpus = vcpus, .lim = lim };
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "kernel", kernel);
	cJSON_AddStringToObject(o, "rootfs", rootfs);
	cJSON_AddStringToObject(o, "initrd", initrd);
	cJSON_AddStringToObject(o, "cmdline", cmdline);
	cJSON_AddNumberToObject(o, "mem_mib", mem);
	cJSON_AddNumberToObject(o, "vcpus", vcpus);
	cJSON_AddNumberToObject(o, "memory_max_mib", lim.memory_max_mib);
	cJSON_AddNumberToObject(o, "cpu_percent", lim.cpu_percent);
	char path[PLEN];
	pathf(path, "%s/kvm.json", dir);
	rc = registry_write_json(path, o);
	cJSON_Delete(o);
	char disk[PLEN + 4], mems[16], cpus[16], vsockarg[PLEN];
	snprintf(disk, sizeof(disk), "%s,ro", rootfs);
	snprintf(mems, sizeof(mems), "%u", mem);
	snprintf(cpus, sizeof(cpus), "%u", vcpus);
	snprintf(vsockarg, sizeof(vsockarg), "%s", b->vsock);
	char *argv[24] = { "mitos-vmm", "run", "--seccomp", "--kernel", kernel, "--cmdline", (char *)cmdline,
			   "--mem", mems, "--vcpus", cpus, "--vsock", vsockarg, "--control", b->control };
	int argc = 15;
	if (rootfs[0]) {
		argv[argc++] = "--disk";
		argv[argc++] = disk;
	}
	if (initrd[0]) {
		argv[argc++] = "--initrd";
		argv[argc++] = initrd;
	}
	argv[argc] = NULL;
	char name[64];
	snprintf(name, sizeof(name), "tpl-%d-%u", (int)getpid(), ++K.serial);
	if (rc || (rc = vm_spawn(argv, b->console, name, &sh, &b->vp, err, errlen))) {
		if (!err[0])
			snprintf(err, errlen, "cannot write the template's files: %s", strerror(-rc));
		engine_remove_tree(dir);
		free(b);
		return rc;
	}
	vm_record(dir, &b->vp, NULL, &sh);
	b->pidfd = fcntl(b->vp.pidfd, F_DUPFD_CLOEXEC, 3);
	b->boot_ms = (uint64_t)boot_s * 1000u;
	snprintf(b->warm, sizeof(b->warm), "%s", builtin ? g.warm : "");
	const cJSON *wl = cJSON_GetObjectItemCaseSensitive(spec, "workload");
	b->workload = wl ? cJSON_Duplicate(wl, 1) : NULL;
	b->done = done;
	b->ctx = ctx;
	b->k.run = build_run;
	b->k.complete = build_complete;
	b->next = K.builds;
	K.builds = b;
	submit(&b->k);
	return 0;
}

static bool kvm_template_usable(const char *dir)
{
	char p[PLEN], rootfs[PLEN];
	struct vm_shape sh;
	if (pathf(p, "%s/snapshot/config.json", dir) || access(p, R_OK) || shape_read(dir, &sh, rootfs, sizeof(rootfs)))
		return false;
	/* The pool for its shape is filled once the loop runs. */
	pool_for(&sh, true);
	return true;
}

/* ---- sandboxes ---- */

struct restore_job {
	struct kjob k;
	struct kvm_layer *layer;   /* NULL: restoring a template */
	int ready_fd, pidfd;
	char dir[PLEN], control[PLEN], snapshot[PLEN], vsock[PLEN], rootfs[PLEN];
};

static void restore_run(struct kjob *kj)
{
	struct restore_job *j = (struct restore_job *)kj;
	char err[500] = "";
	int rc = j->layer ? layer_wait(j->layer, err, sizeof(err)) : 0;
	if (!rc) {
		cJSON *req = cJSON_CreateObject();
		cJSON_AddStringToObject(req, "cmd", "restore");
		cJSON_AddStringToObject(req, "snapshot", j->snapshot);
		cJSON_AddStringToObject(req, "vsock", j->vsock);
		cJSON *disks = cJSON_AddArrayToObject(req, "disks");
		if (j->rootfs[0]) {
			/* Shared by every sandbox: their writes go to the guest's overlay. */
			cJSON *d = cJSON_CreateObject();
			cJSON_AddNumberToObject(d, "index", 0);
			cJSON_AddStringToObject(d, "path", j->rootfs);
			cJSON_AddBoolToObject(d, "read_only", 1);
			cJSON_AddItemToArray(disks, d);
		}
		char why[400] = "";
		rc = ctl_request(j->control, req, RESTORE_TIMEOUT_MS, PREPARE_TIMEOUT_MS, j->pidfd, why, sizeof(why));
		cJSON_Delete(req);
		if (rc)
			snprintf(err, sizeof(err), "restore into a prepared VM failed: %s", why);
	}
	if (!rc) {
		/* The guest's listeners survived the snapshot: the agent takes connections now. */
		(void)!write(j->ready_fd, "R", 1);
	} else if (!proc_exited(j->pidfd)) {
		/* Still ours to report (a sandbox killed meanwhile has its dir removed). */
		write_error_file(j->dir, err);
		syscall(SYS_pidfd_send_signal, j->pidfd, SIGKILL, NULL, 0);
	}
	close(j->ready_fd);
	close(j->pidfd);
}

static void restore_complete(struct kjob *kj)
{
	struct restore_job *j = (struct restore_job *)kj;
	layer_unref(j->layer);
	free(j);
}

static int kvm_agent_socket(const char *dir, char *out, size_t outlen)
{
	int n = snprintf(out, outlen, "%s/vsock", dir);
	return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

static int kvm_start(const struct engine_start *s, struct engine_proc *p, char *err, size_t errlen)
{
	struct vm_shape sh;
	struct restore_job *j = calloc(1, sizeof(*j));
	struct kvm_sb *ksb = calloc(1, sizeof(*ksb));
	if (!j || !ksb) {
		free(j);
		free(ksb);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	j->ready_fd = j->pidfd = -1;
	int rc = shape_read(s->template_root, &sh, j->rootfs, sizeof(j->rootfs));
	if (rc)
		snprintf(err, errlen, "the template in %.300s has no kvm.json", s->template_root);
	if (!rc && (pathf(j->dir, "%s", s->dir) || pathf(j->control, "%s/control", s->dir) ||
		    pathf(j->vsock, "%s/vsock", s->dir) || strlen(j->vsock) + 12 > SOCK_MAX ||
		    pathf(ksb->dir, "%s", s->dir))) {
		rc = -ENAMETOOLONG;
		snprintf(err, errlen, "the sandbox's path %.300s is too long for its sockets", s->dir);
	}
	if (!rc) {
		if (s->copy_from) {
			j->layer = layer_find(s->copy_from);
			if (!j->layer) {
				rc = -ENOENT;
				snprintf(err, errlen, "no layer %.300s", s->copy_from);
			} else {
				pathf(j->snapshot, "%s", s->copy_from);
				j->layer->refs += 2; /* the job's and the sandbox's */
				ksb->base = j->layer;
			}
		} else if (pathf(j->snapshot, "%s/snapshot", s->template_root)) {
			rc = -ENAMETOOLONG;
		}
	}
	struct vm_proc vp = { .pidfd = -1 };
	if (!rc)
		rc = vm_take(&sh, s->dir, &vp, err, errlen);
	if (!rc) {
		j->ready_fd = fcntl(s->ready_fd, F_DUPFD_CLOEXEC, 3);
		j->pidfd = fcntl(vp.pidfd, F_DUPFD_CLOEXEC, 3);
		if (j->ready_fd < 0 || j->pidfd < 0) {
			rc = -errno;
			snprintf(err, errlen, "out of file descriptors");
			vm_reap(&vp);
		}
	}
	if (rc) {
		if (j->ready_fd >= 0)
			close(j->ready_fd);
		if (j->pidfd >= 0)
			close(j->pidfd);
		if (j->layer) {
			layer_unref(j->layer);
			layer_unref(j->layer);
		}
		free(j);
		free(ksb);
		return rc;
	}
	vm_record(s->dir, &vp, j->snapshot, &sh);
	p->pid = vp.pid;
	p->pidfd = vp.pidfd;
	p->start_time = vp.start_time;
	p->child = true;
	p->priv = ksb;
	j->k.run = restore_run;
	j->k.complete = restore_complete;
	submit(&j->k);
	return 0;
}

static int kvm_ctl(const struct engine_proc *p, const char *cmd)
{
	const struct kvm_sb *ksb = p->priv;
	char sock[PLEN];
	if (!ksb || pathf(sock, "%s/control", ksb->dir))
		return -ESRCH;
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "cmd", cmd);
	char err[300];
	/* The VMM answers pause and resume at once; this blocks the loop that long. */
	int rc = ctl_request(sock, req, CTL_TIMEOUT_MS, 0, p->pidfd, err, sizeof(err));
	cJSON_Delete(req);
	if (rc)
		fprintf(stderr, "mitos-vmm serve: %s of the VM in %s failed: %s\n", cmd, ksb->dir, err);
	return rc;
}

static int kvm_pause(const char *dir, const struct engine_proc *p) { (void)dir; return kvm_ctl(p, "pause"); }
static int kvm_resume(const char *dir, const struct engine_proc *p) { (void)dir; return kvm_ctl(p, "resume"); }

static int kvm_kill(const char *dir, const struct engine_proc *p)
{
	(void)dir;
	return engine_proc_signal(p, SIGKILL);
}

static void kvm_exit_reason(const char *dir, char *out, size_t outlen)
{
	char path[PLEN];
	engine_start_error(dir, out, outlen);
	if (!out[0] && !pathf(path, "%s/console.log", dir)) {
		char tail[300];
		console_tail(path, tail, sizeof(tail));
		if (tail[0])
			snprintf(out, outlen, "the VM exited; its console ended with: %s", tail);
	}
}

static int kvm_cleanup(const char *dir)
{
	vm_record_kill(dir);
	return engine_remove_tree(dir);
}

static void kvm_release(struct engine_proc *p)
{
	struct kvm_sb *ksb = p->priv;
	p->priv = NULL;
	if (!ksb)
		return;
	layer_unref(ksb->base);
	free(ksb);
}

static int kvm_fork_source(const char *dir, const struct engine_proc *p, char *out, size_t outlen,
			   char *err, size_t errlen)
{
	struct kvm_sb *ksb = p->priv;
	struct snap_job *j = calloc(1, sizeof(*j));
	char ldir[PLEN];
	int rc = !ksb || !j ? -ENOMEM : 0;
	if (!rc && (pathf(j->control, "%s/control", dir) ||
		    pathf(ldir, "%s/%d-%u", K.layer_dir, (int)getpid(), ++K.serial) || strlen(ldir) >= outlen))
		rc = -ENAMETOOLONG;
	if (!rc && !(j->layer = layer_new(ldir, ksb->base, 1)))
		rc = -ENOMEM;
	if (rc) {
		free(j);
		snprintf(err, errlen, "cannot prepare a layer for the fork: %s", strerror(-rc));
		return rc;
	}
	/* The VMM pauses the parent while it writes the pages it changed, and resumes it. */
	j->k.run = snap_run;
	j->k.complete = snap_complete;
	submit(&j->k);
	strcpy(out, ldir);
	return 0;
}

/* ---- post_fork: the first thing a clone's agent hears ---- */

struct pf_ctx {
	engine_connected_fn done;
	void *ctx;
};

static void pf_end(struct astream *s, cJSON *payload, const char *why)
{
	struct pf_ctx *c = s->ctx;
	cJSON *e = payload ? cJSON_GetObjectItem(payload, "error") : NULL;
	char msg[300];
	if (!payload) {
		c->done(c->ctx, -ECONNRESET, why ? why : "the agent connection closed during post_fork");
	} else if (e) {
		/* Clones that cannot reseed share their parent's RNG state: refuse them. */
		snprintf(msg, sizeof(msg), "the agent's post_fork failed: %.40s: %.200s",
			 cJSON_GetStringValue(cJSON_GetObjectItem(e, "code")) ?: "?",
			 cJSON_GetStringValue(cJSON_GetObjectItem(e, "message")) ?: "");
		c->done(c->ctx, -EIO, msg);
	} else {
		c->done(c->ctx, 0, NULL);
	}
	free(c);
}

static const struct astream_ops pf_ops = { .end = pf_end };

static int kvm_after_connect(struct engine_proc *p, struct agent_conn *ac, engine_connected_fn done, void *ctx)
{
	(void)p;
	uint8_t ent[64];
	if (getrandom(ent, sizeof(ent), 0) != (ssize_t)sizeof(ent))
		return -EIO;
	char b64[base64_encoded_len(sizeof(ent)) + 1], open[256];
	base64_encode(ent, sizeof(ent), b64);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(open, sizeof(open), "{\"op\":\"post_fork\",\"entropy\":\"%s\",\"realtime_ns\":%" PRIu64 "}", b64,
		 (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
	struct pf_ctx *c = malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->done = done;
	c->ctx = ctx;
	if (!agent_open(ac, open, &pf_ops, c)) {
		free(c);
		return -ENOTCONN;
	}
	return 0;
}

/* ---- re-adoption after a restart of serve ---- */

static int kvm_adopt(const char *dir, struct engine_proc *p, char *err, size_t errlen)
{
	char path[PLEN];
	if (pathf(path, "%s/vm.json", dir)) {
		snprintf(err, errlen, "path too long");
		return -ENAMETOOLONG;
	}
	cJSON *o = registry_read_json(path);
	cJSON *jp = o ? cJSON_GetObjectItem(o, "pid") : NULL;
	const char *base = o ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "base")) : NULL;
	int rc = 0;
	if (!cJSON_IsNumber(jp) || (pid_t)jp->valuedouble != p->pid || !base) {
		snprintf(err, errlen, "its vm.json is missing or names another process");
		rc = -ENOENT;
	}
	char ctl[PLEN];
	if (!rc && (pathf(ctl, "%s/control", dir) || !is_socket(ctl))) {
		snprintf(err, errlen, "its VM has no control socket");
		rc = -ENOENT;
	}
	struct kvm_sb *ksb = rc ? NULL : calloc(1, sizeof(*ksb));
	if (!rc && !ksb)
		rc = -ENOMEM;
	if (!rc) {
		snprintf(ksb->dir, sizeof(ksb->dir), "%s", dir);
		if (in_layer_dir(base) && !(ksb->base = layer_adopt(base, 0))) {
			snprintf(err, errlen, "the layer it was restored from (%.200s) is gone", base);
			free(ksb);
			rc = -ENOENT;
		}
	}
	cJSON_Delete(o);
	if (!rc)
		p->priv = ksb;
	return rc;
}

/* ---- start-up, shutdown ---- */

int engine_kvm_available(char *why, size_t whylen)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, whylen, "cannot open /dev/kvm: %s (remediation: load kvm_intel or kvm_amd, or run "
			 "serve as a user in the kvm group)", strerror(errno));
		return -errno;
	}
	close(fd);
	return 0;
}

/* Removes what a previous serve left in a directory of VMs: their processes too. */
static void sweep_dir(const char *root, bool keep_adopted_layers)
{
	DIR *d = opendir(root);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char p[PLEN];
		if (pathf(p, "%s/%s", root, de->d_name))
			continue;
		if (keep_adopted_layers && layer_find(p))
			continue;
		vm_record_kill(p);
		engine_remove_tree(p);
	}
	closedir(d);
}

int engine_kvm_configure(const char *state_dir, unsigned pool_size, bool emulated, char *info, size_t infolen,
			 char *err, size_t errlen)
{
	char real[PATH_MAX];
	if (!realpath(state_dir, real)) {
		snprintf(err, errlen, "state dir %s: %s", state_dir, strerror(errno));
		return -errno;
	}
	if (strlen(real) > 200) {
		snprintf(err, errlen, "state dir %s: longer than 200 characters (the VMs' Unix sockets live "
			 "under it)", real);
		return -ENAMETOOLONG;
	}
	snprintf(K.state, sizeof(K.state), "%s", real);
	pathf(K.pool_dir, "%s/kvm/pool", real);
	pathf(K.layer_dir, "%s/kvm/layers", real);
	char kdir[PLEN];
	pathf(kdir, "%s/kvm", real);
	if ((mkdir(kdir, 0700) < 0 && errno != EEXIST) || (mkdir(K.pool_dir, 0700) < 0 && errno != EEXIST) ||
	    (mkdir(K.layer_dir, 0700) < 0 && errno != EEXIST)) {
		snprintf(err, errlen, "cannot create %s: %s", kdir, strerror(errno));
		return -errno;
	}
	K.vmm_fd = open("/proc/self/exe", O_PATH | O_CLOEXEC);
	if (K.vmm_fd < 0) {
		snprintf(err, errlen, "cannot open /proc/self/exe: %s", strerror(errno));
		return -errno;
	}
	K.pool_size = pool_size > MAX_POOL ? MAX_POOL : pool_size;
	kvm_guest_init(emulated);
	K.ns = geteuid() == 0;
	char limits[700];
	cgroup_init("mitos-vms", K.ns, limits, sizeof(limits));
	snprintf(info, infolen, "each VM: %s, no_new_privs, seccomp allowlist; %s",
		 K.ns ? "own mount (private, own /proc), pid, ipc, uts and net namespaces, no capabilities"
		      : "NO namespaces (serve is not root)", limits);
	K.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (K.efd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		return -errno;
	}
	/* Signals are serve's main thread's business (its signalfd). */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (K.nth = 0; K.nth < WORKERS; K.nth++)
		if (pthread_create(&K.th[K.nth], NULL, worker_main, NULL))
			break;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (K.nth < WORKERS) {
		snprintf(err, errlen, "cannot start the engine's threads");
		return -EAGAIN;
	}
	/* Prepared VMs of a previous serve are nobody's now. */
	sweep_dir(K.pool_dir, false);
	K.configured = true;
	return 0;
}

static void kvm_started(void)
{
	/* Layers that no re-adopted sandbox needs go. */
	sweep_dir(K.layer_dir, true);
	arm_efd();
	K.ticker.fn = pool_tick;
	ur_add_ticker(&K.ticker);
	K.refill.fn = refill_kick;
	pool_fill();
}

static void kill_pools(void)
{
	for (int i = 0; i < MAX_SHAPES; i++)
		while (K.pools[i].idle)
			pool_drop(&K.pools[i], K.pools[i].idle);
}

static void kvm_shutdown(void)
{
	K.stopping = true;
	for (struct build *b = K.builds; b; b = b->next)
		syscall(SYS_pidfd_send_signal, b->vp.pidfd, SIGKILL, NULL, 0);
	kill_pools();
	pthread_mutex_lock(&K.mu);
	pthread_cond_broadcast(&K.cv);
	pthread_mutex_unlock(&K.mu);
}

static void kvm_exit(void)
{
	if (!K.configured)
		return;
	kvm_shutdown();
	for (unsigned i = 0; i < K.nth; i++)
		pthread_join(K.th[i], NULL);
	K.nth = 0;
	run_completions();
	while (K.layers) {
		/* Only sandboxes hold layers now, and they are all gone. */
		struct kvm_layer *l = K.layers;
		l->refs = 1;
		layer_unref(l);
	}
	if (K.efd >= 0)
		close(K.efd);
	if (K.vmm_fd >= 0)
		close(K.vmm_fd);
	K.efd = K.vmm_fd = -1;
	K.configured = false;
}

const struct engine_ops engine_kvm_ops = {
	.name = "kvm",
	.agent_vsock_port = AGENT_PORT,
	.agent_socket = kvm_agent_socket,
	.start = kvm_start,
	.pause = kvm_pause,
	.resume = kvm_resume,
	.kill = kvm_kill,
	.exit_reason = kvm_exit_reason,
	.cleanup = kvm_cleanup,
	.fork_source = kvm_fork_source,
	.after_connect = kvm_after_connect,
	.adopt = kvm_adopt,
	.release = kvm_release,
	.template_build = kvm_template_build,
	.template_usable = kvm_template_usable,
	.started = kvm_started,
	.shutdown = kvm_shutdown,
	.exit = kvm_exit,
};
