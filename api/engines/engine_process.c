/* The process engine: a sandbox is mitos-agent running as a host process in
 * fresh mount, pid, ipc, uts, net and cgroup namespaces, as root of a user namespace
 * whose ids map onto an unprivileged host range of the sandbox's own, under a seccomp
 * filter, on an overlay whose lower layer is the template's root directory and whose
 * upper layer is the sandbox's own directory in the state dir. The clone execs
 * mitos-sandbox-init (agent/sandbox_init.c) at once, so no byte of serve's memory is
 * in a sandbox; it is PID 1, builds the root and starts the agent as PID 2, which
 * listens on a Unix socket that the host reaches through a bind-mounted directory, so
 * sandboxes outlive a restart of serve and are re-adopted by the next one. Each
 * sandbox has cgroups with the template's memory and CPU limits and a PID limit
 * (api/engines/cgroup.h), entered before anything runs. */

#include "api/engines/engine.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/loop_dev.h"
#include "api/engines/cgroup.h"
#include "api/engines/disk_spares.h"
#include "api/engines/kvm_jail.h"
#include "api/engines/process_snapshot.h"
#include "api/engines/sandbox_net.h"
#include "api/sandbox/net_policy.h"
#include "api/engines/teardown.h"
#include "api/sandbox/registry.h"
#include "lib/proc_start.h"

#ifndef MITOS_SOURCE_ROOT
#define MITOS_SOURCE_ROOT "."
#endif

#define AGENT_SOCK_NAME "agent.sock"
#define CGROUP_RECORD "/cgroup.json"

/* Limits of a template that names none: a python session with numpy and matplotlib
 * needs a few hundred MiB; one CPU keeps a busy sandbox from starving the node; a
 * thousand processes and threads are plenty for a build and stop a fork bomb from
 * taking every pid of the host (serve --pids-max changes it). */
static struct cg_limits default_limits = { .memory_max_mib = 1024, .cpu_percent = 100,
					   .pids_max = ENGINE_PROCESS_PIDS_MAX };

void engine_process_set_pids_max(unsigned n)
{
	default_limits.pids_max = n;
}

static unsigned disk_mib = ENGINE_PROCESS_DISK_MIB;
#define DISK_SPARES 2   /* formatted ahead: creates in a burst format their own */

void engine_process_set_disk_mib(unsigned n)
{
	disk_mib = n;
}

/* Whether this host can give sandboxes a disk of their own: mkfs.ext4 in the host's
 * root, and a loop device that takes a file of the state dir (tried: a container may
 * show /dev/loop-control and still refuse it). 0, or -errno with why not. */
static int disk_quota_available(const char *state_dir, struct mitos_err *e)
{
	if (access("/sbin/mkfs.ext4", X_OK))
		return mitos_err_set(e, -errno, "/sbin/mkfs.ext4 is missing (apt-get install e2fsprogs)");
	char probe[4200], dev[32];
	const char *step = "create a probe file in the state dir";
	snprintf(probe, sizeof(probe), "%s/.loop-probe", state_dir);
	int img = open(probe, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	int rc = img < 0 || ftruncate(img, 1 << 20) < 0 ? -errno : loop_dev_attach(img, dev, sizeof(dev), &step);
	/* Autoclear: the device is free again once these close. */
	if (rc >= 0)
		close(rc);
	if (img >= 0)
		close(img);
	unlink(probe);
	if (rc < 0)
		return mitos_err_set(e, rc, "%s: %s (the loop module, and a host that lets serve attach files)", step,
				     strerror(-rc));
	return 0;
}

static int agent_exe_fd = -1, init_exe_fd = -1;
static char helper_path[4096];
static char init_path[4096];
static char state_dir_real[4096];
static char token_file_real[4096];

static int path_join(char *out, size_t n, const char *a, const char *b)
{
	int k = snprintf(out, n, "%s%s", a, b);
	return k < 0 || (size_t)k >= n ? -ENAMETOOLONG : 0;
}

int engine_process_available(struct mitos_err *e)
{
	if (geteuid() != 0)
		return mitos_err_set(e, -EPERM, "the process engine needs root (mount, pid and net namespaces, "
				     "overlayfs); run `mitos-vmm serve` as root");
	/* fsopen, not /proc/filesystems: like a mount it loads the module, which a stock
	 * Debian kernel has overlayfs as, and nothing else loads at boot. */
	int fd = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
	if (fd < 0)
		return mitos_err_set(e, -ENODEV, "overlayfs is not available (%s); load it with `modprobe overlay`",
				     strerror(errno));
	close(fd);
	return 0;
}

static bool file_ok(const char *p, int mode)
{
	struct stat st;
	return !access(p, mode) && !stat(p, &st) && S_ISREG(st.st_mode);
}

int engine_process_configure(const char *agent_path, const char *state_dir, const char *token_file,
			     char *info, size_t infolen, struct mitos_err *e)
{
	char exe[3072], path[4096];
	char agent[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	exe[n > 0 ? n : 0] = 0;
	char *slash = strrchr(exe, '/');
	if (slash)
		*slash = 0;
	if (agent_path) {
		snprintf(agent, sizeof(agent), "%s", agent_path);
	} else {
		const char *cands[] = { "/agent/mitos-agent", "/mitos-agent" };
		agent[0] = 0;
		for (size_t i = 0; i < 2 && !agent[0]; i++) {
			snprintf(path, sizeof(path), "%.3000s%s", exe, cands[i]);
			if (file_ok(path, X_OK))
				snprintf(agent, sizeof(agent), "%s", path);
		}
		if (!agent[0])
			return mitos_err_set(e, -ENOENT, "engine_unavailable: cannot find mitos-agent next to %s; "
					     "pass --agent PATH", exe);
	}
	if (!file_ok(agent, X_OK))
		return mitos_err_set(e, -ENOENT, "engine_unavailable: %s is not an executable file; pass --agent PATH",
				     agent);
	agent_exe_fd = open(agent, O_PATH | O_CLOEXEC);
	if (agent_exe_fd < 0)
		return mitos_err_set(e, -errno, "engine_unavailable: cannot open %s: %s", agent, strerror(errno));
	/* mitos_kernel.py: next to the agent, installed, or in the source tree. */
	char adir[4096];
	snprintf(adir, sizeof(adir), "%s", agent);
	slash = strrchr(adir, '/');
	if (slash)
		*slash = 0;
	else
		strcpy(adir, ".");
	const char *hc[3][2] = { { adir, "/mitos_kernel.py" }, { adir, "/../share/mitos/mitos_kernel.py" },
				 { MITOS_SOURCE_ROOT, "/agent/mitos_kernel.py" } };
	helper_path[0] = 0;
	for (size_t i = 0; i < 3 && !helper_path[0]; i++) {
		snprintf(path, sizeof(path), "%.2000s%s", hc[i][0], hc[i][1]);
		if (file_ok(path, R_OK) && !realpath(path, helper_path))
			helper_path[0] = 0;
	}
	snprintf(init_path, sizeof(init_path), "%.4000s/mitos-sandbox-init", adir);
	if (!file_ok(init_path, X_OK))
		return mitos_err_set(e, -ENOENT, "engine_unavailable: %s is missing (it is built and installed next "
				     "to mitos-agent)", init_path);
	init_exe_fd = open(init_path, O_PATH | O_CLOEXEC);
	if (init_exe_fd < 0)
		return mitos_err_set(e, -errno, "engine_unavailable: cannot open %s: %s", init_path, strerror(errno));
	if (!realpath(state_dir, state_dir_real))
		return mitos_err_set(e, -errno, "state dir %s: %s", state_dir, strerror(errno));
	if (strpbrk(state_dir_real, ",:\\ "))
		return mitos_err_set(e, -EINVAL, "state dir %s: overlayfs cannot take a path with ',', ':', '\\' or "
				     "spaces", state_dir_real);
	token_file_real[0] = 0;
	if (token_file && !realpath(token_file, token_file_real))
		token_file_real[0] = 0;
	cgroup_init("mitos-sandboxes", true, info, infolen);
	size_t used = strlen(info);
	struct mitos_err why = { 0 };
	if (disk_mib && disk_quota_available(state_dir_real, &why)) {
		snprintf(info + used, infolen - used, "; NO disk quota: %s", why.msg);
		disk_mib = 0;
	} else if (disk_mib) {
		snprintf(info + used, infolen - used, "; disk %u MiB each (ext4 on a loop device)", disk_mib);
		int rc = disk_spares_init(state_dir_real, init_path, disk_mib, DISK_SPARES, e);
		if (rc)
			return rc;
	} else {
		snprintf(info + used, infolen - used, "; no disk quota (--sandbox-disk-mib 0)");
	}
	return 0;
}

static int proc_template_shape(const char *dir, const cJSON *spec, unsigned *cpus, unsigned *mem_mib)
{
	(void)dir;
	struct cg_limits l;
	int rc = cgroup_limits_parse(spec, 32, &default_limits, &l, NULL);
	if (!rc) {
		*cpus = (l.cpu_percent + 99) / 100; /* cpu_percent is at least 1 */
		*mem_mib = l.memory_max_mib;
	}
	return rc;
}

static cJSON *proc_template_spec(const cJSON *spec, struct mitos_err *e)
{
	struct cg_limits l;
	/* The agent and a python interpreter need some room before any user code runs. */
	if (cgroup_limits_parse(spec, 32, &default_limits, &l, e))
		return NULL;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "memory_max_mib", l.memory_max_mib);
	cJSON_AddNumberToObject(o, "cpu_percent", l.cpu_percent);
	cJSON_AddNumberToObject(o, "pids_max", l.pids_max);
	/* Started in every sandbox of the template (sandboxes.c: no memory to snapshot). */
	const cJSON *wl = cJSON_GetObjectItemCaseSensitive(spec, "workload");
	if (wl)
		cJSON_AddItemToObject(o, "workload", cJSON_Duplicate(wl, 1));
	return o;
}

static int proc_agent_socket(const char *dir, char *out, size_t outlen)
{
	return path_join(out, outlen, dir, "/run/" AGENT_SOCK_NAME);
}

/* A sandbox with a disk of its own: its image, which a fork copies whole. */
static int proc_writable_layer(const char *dir, char *out, size_t outlen)
{
	int rc = path_join(out, outlen, dir, "/disk.img");
	struct stat st;
	if (!rc && lstat(out, &st) == 0 && S_ISREG(st.st_mode))
		return 0;
	return path_join(out, outlen, dir, "/upper");
}

static int proc_snapshot_take(const char *dir, const struct engine_proc *p, const char *snapdir, char *out,
			      size_t outlen, engine_done_fn done, void *ctx, struct mitos_err *e)
{
	char from[4200];
	if (proc_writable_layer(dir, from, sizeof(from)))
		return mitos_err_set(e, -ENAMETOOLONG, "the sandbox's path is too long");
	return process_snapshot_copy(init_path, from, p->pid, snapdir, out, outlen, done, ctx, e);
}

/* The copy is in the snapshot's own directory, which goes with it. */
static int proc_snapshot_keep(const char *source)
{
	struct stat st;
	return lstat(source, &st) < 0 ? -errno : 0;
}

static void proc_snapshot_drop(const char *source)
{
	(void)source;
}

/* ---- the host side ---- */

/* The sandbox's cgroup with its template's limits, recorded in its dir so that
 * whichever serve cleans the sandbox up removes it. */
static int cgroup_prepare(const struct engine_start *s, struct cg_set *cg, struct cg_entry *ce)
{
	static unsigned serial;
	struct cg_limits l;
	char name[128], path[4200];
	if (cgroup_limits_parse(s->spec, 32, &default_limits, &l, NULL))
		l = default_limits;
	snprintf(name, sizeof(name), "%d-%u-%s", (int)getpid(), ++serial, s->id);
	int rc = cgroup_create(name, &l, cg, ce);
	if (rc || !cg->dir[0][0])
		return rc;
	cJSON *o = cJSON_CreateObject();
	cgroup_record(cg, o);
	cJSON_AddNumberToObject(o, "memory_max_mib", l.memory_max_mib);
	cJSON_AddNumberToObject(o, "cpu_percent", l.cpu_percent);
	cJSON_AddNumberToObject(o, "pids_max", l.pids_max);
	snprintf(path, sizeof(path), "%s" CGROUP_RECORD, s->dir);
	rc = registry_write_json(path, o);
	cJSON_Delete(o);
	if (rc) {
		cgroup_entry_close(ce);
		cgroup_remove(cg);
	}
	return rc;
}

/* Host uid/gid ranges of 65536 ids, one per live sandbox, from 2^30 up (above any
 * ids a distribution hands out): slot N is taken by creating STATE/uid-slots/N, and the
 * sandbox's dir records its base for cleanup. */
#define UID_SLOTS 16384
#define UID_FIRST 0x40000000UL
#define UID_RECORD "/uid-base"

static int uid_slot_path(char *out, size_t n, unsigned long base)
{
	int k = snprintf(out, n, "%s/uid-slots/%lu", state_dir_real, (base - UID_FIRST) >> 16);
	return k < 0 || (size_t)k >= n ? -ENAMETOOLONG : 0;
}

/* The kvm engine's jail uses a range of its own (the default and this serve's, which
 * may differ) inside this space: a slot there would give a sandbox the uid of a VM
 * process of a kvm serve on the same host (one could signal the other). */
static bool uid_slot_is_jails(unsigned long b)
{
	const unsigned long jails[] = { JAIL_UID_BASE, jail_uid_base() };
	for (size_t i = 0; i < sizeof(jails) / sizeof(jails[0]); i++)
		if (b <= jails[i] + JAIL_UIDS && jails[i] < b + 0x10000)
			return true;
	return false;
}

static int uid_range_take(const struct engine_start *s, unsigned long *base)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/uid-slots", state_dir_real);
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return -errno;
	uint32_t h = 2166136261u; /* FNV-1a of the id: where to start looking */
	for (const char *c = s->id; *c; c++)
		h = (h ^ (uint8_t)*c) * 16777619u;
	for (unsigned i = 0; i < UID_SLOTS; i++) {
		unsigned long b = UID_FIRST + ((unsigned long)((h + i) % UID_SLOTS) << 16);
		if (uid_slot_is_jails(b))
			continue;
		if (uid_slot_path(path, sizeof(path), b))
			return -ENAMETOOLONG;
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0 && errno == EEXIST)
			continue;
		if (fd < 0)
			return -errno;
		close(fd);
		char rec[4200], v[32];
		snprintf(rec, sizeof(rec), "%s" UID_RECORD, s->dir);
		snprintf(v, sizeof(v), "%lu\n", b);
		int wfd = open(rec, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (wfd < 0 || write(wfd, v, strlen(v)) != (ssize_t)strlen(v)) {
			int e = wfd < 0 ? -errno : -EIO;
			if (wfd >= 0)
				close(wfd);
			unlink(path);
			return e;
		}
		close(wfd);
		*base = b;
		return 0;
	}
	return -EUSERS;
}

static void uid_range_release(const char *dir)
{
	char rec[4200], path[4200], v[32];
	snprintf(rec, sizeof(rec), "%s" UID_RECORD, dir);
	int fd = open(rec, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, v, sizeof(v) - 1);
	close(fd);
	v[n > 0 ? n : 0] = 0;
	unsigned long b = strtoul(v, NULL, 10);
	if (b >= UID_FIRST && !((b - UID_FIRST) & 0xffff) && ((b - UID_FIRST) >> 16) < UID_SLOTS &&
	    !uid_slot_path(path, sizeof(path), b))
		unlink(path);
	unlink(rec);
}

/* Between clone and exec in a threaded parent: raw system calls only. */
static __attribute__((noreturn)) void exec_init(const struct cg_entry *ce, const int fds[4], char *const argv[])
{
	cgroup_enter_child(ce);
	/* Above the range the init expects, then into place: 3 agent, 4 ready, 5 error, 6 log. */
	int tmp[5];
	for (int i = 0; i < 4; i++)
		if ((tmp[i] = (int)syscall(SYS_fcntl, fds[i], F_DUPFD, 100 + i)) < 0)
			_exit(125);
	if ((tmp[4] = (int)syscall(SYS_fcntl, init_exe_fd, F_DUPFD_CLOEXEC, 110)) < 0)
		_exit(125);
	for (int i = 0; i < 4; i++)
		syscall(SYS_dup2, tmp[i], 3 + i);
	syscall(SYS_close_range, 7, tmp[4] - 1, 0);
	syscall(SYS_close_range, tmp[4] + 1, ~0U, 0);
	sigset_t none;
	sigemptyset(&none);
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof(long));
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigaction(SIGPIPE, &dfl, NULL);
	syscall(SYS_setsid);
	char *envp[5];
	int ne = 0;
	static const char *pass[] = { "ASAN_OPTIONS=", "UBSAN_OPTIONS=", "LSAN_OPTIONS=" };
	for (char **e = environ; *e && ne < 3; e++)
		for (int i = 0; i < 3; i++)
			if (!strncmp(*e, pass[i], strlen(pass[i])))
				envp[ne++] = *e;
	envp[ne] = NULL;
	syscall(SYS_execveat, tmp[4], "", argv, envp, AT_EMPTY_PATH);
	static const char msg[] = "exec mitos-sandbox-init failed";
	syscall(SYS_write, 5, msg, sizeof(msg) - 1);
	_exit(126);
}

static int open_in(const char *dir, const char *name, int flags)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return open(path, flags | O_NOFOLLOW | O_CLOEXEC, 0600);
}

static int proc_start(const struct engine_start *s, struct engine_proc *p, struct mitos_err *e)
{
	char path[4200];
	static const char *subdirs[] = { "/upper", "/work", "/root", "/run" };
	for (size_t i = 0; i < 4; i++) {
		snprintf(path, sizeof(path), "%s%s", s->dir, subdirs[i]);
		if (mkdir(path, 0755) < 0 && errno != EEXIST)
			return mitos_err_set(e, -errno, "mkdir %s: %s", path, strerror(errno));
	}
	unsigned long base = 0;
	int rc = uid_range_take(s, &base);
	if (rc)
		return mitos_err_set(e, rc, "no host uid range for the sandbox: %s", strerror(-rc));
	int fds[4] = { agent_exe_fd, s->ready_fd, open_in(s->dir, "start-error", O_WRONLY | O_CREAT | O_TRUNC),
		       open_in(s->dir, "agent.log", O_WRONLY | O_CREAT | O_APPEND) };
	char basestr[32];
	snprintf(basestr, sizeof(basestr), "%lu", base);
	char *argv[24] = { "mitos-sandbox-init", (char *)s->dir, (char *)s->id, (char *)s->template_root, basestr };
	int na = 5;
	char parent_root[64];
	if (s->copy_from) {
		argv[na++] = s->copy_settled ? "--copy-from-settled" : "--copy-from";
		argv[na++] = (char *)s->copy_from;
	}
	if (s->copy_from && s->copy_pid > 0) {
		snprintf(parent_root, sizeof(parent_root), "/proc/%d/root", (int)s->copy_pid);
		argv[na++] = "--parent-root";
		argv[na++] = parent_root;
	}
	if (helper_path[0]) {
		argv[na++] = "--helper";
		argv[na++] = helper_path;
	}
	char mibstr[16];
	unsigned mib = disk_mib;
	snprintf(path, sizeof(path), "%s/disk.img", s->dir);
	struct stat st;
	/* Booted again, it keeps the disk it had, whatever the quota is now (the init
	 * formats anew an image of another size). */
	if (s->again)
		mib = lstat(path, &st) == 0 && S_ISREG(st.st_mode) ? (unsigned)(st.st_size >> 20) : 0;
	if (mib) {
		/* A spare formatted ahead, if one is ready: the init formats one otherwise. */
		if (!s->copy_from && !s->again)
			disk_spare_take(path);
		snprintf(mibstr, sizeof(mibstr), "%u", mib);
		argv[na++] = "--disk-mib";
		argv[na++] = mibstr;
	}
	char net[64], host_netns[48];
	if (net_policy_any(s->net)) {
		rc = sandbox_net_prepare(s->dir, s->net, net, sizeof(net), e);
		if (rc)
			goto fail;
		snprintf(host_netns, sizeof(host_netns), "/proc/%d/ns/net", (int)getpid());
		argv[na++] = "--net";
		argv[na++] = net;
		argv[na++] = "--host-netns";
		argv[na++] = host_netns;
	}
	argv[na++] = "--hide";
	argv[na++] = state_dir_real;
	if (token_file_real[0]) {
		argv[na++] = "--hide";
		argv[na++] = token_file_real;
	}
	argv[na] = NULL;
	struct cg_set cg;
	struct cg_entry ce;
	rc = fds[2] < 0 || fds[3] < 0 ? -errno : cgroup_prepare(s, &cg, &ce);
	if (rc) {
		mitos_err_set(e, rc, "cannot prepare the sandbox (log, cgroup): %s", strerror(-rc));
		goto fail;
	}
	int pidfd = -1;
	long pid = cgroup_clone(&ce, CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET |
				CLONE_NEWCGROUP, &pidfd);
	if (pid == 0)
		exec_init(&ce, fds, argv);
	int clone_errno = errno;
	cgroup_entry_close(&ce);
	if (pid < 0) {
		rc = mitos_err_set(e, -clone_errno, "clone3 with new namespaces: %s", strerror(clone_errno));
		cgroup_remove(&cg);
		goto fail;
	}
	close(fds[2]);
	close(fds[3]);
	fcntl(pidfd, F_SETFD, FD_CLOEXEC);
	p->pid = (pid_t)pid;
	p->pidfd = pidfd;
	p->start_time = proc_start_time(p->pid);
	p->child = true;
	return 0;
fail:
	for (int i = 2; i < 4; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	uid_range_release(s->dir);
	return rc;
}

static int ns_inode(pid_t pid, ino_t *ino)
{
	char path[64];
	struct stat st;
	snprintf(path, sizeof(path), "/proc/%d/ns/pid", (int)pid);
	if (stat(path, &st) < 0)
		return -errno;
	*ino = st.st_ino;
	return 0;
}

/* Sends sig to every process in p's pid namespace; returns how many. */
static int signal_ns(const struct engine_proc *p, int sig)
{
	ino_t want;
	if (ns_inode(p->pid, &want))
		return -ESRCH;
	DIR *d = opendir("/proc");
	if (!d)
		return -errno;
	int count = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		if (*end || pid <= 0)
			continue;
		ino_t ino;
		if (ns_inode((pid_t)pid, &ino) || ino != want)
			continue;
		if (kill((pid_t)pid, sig) == 0)
			count++;
	}
	closedir(d);
	return count;
}

/* cgroup v2's freezer stops the whole sandbox at once, processes forked meanwhile
 * included, without a scan and without touching signals the sandbox's own code may
 * use (a SIGCONT would undo a job's own SIGSTOP). Without it (cgroup v1, no cgroups):
 * SIGSTOP to every process in the sandbox's PID namespace until a pass finds no new
 * one. */
static int proc_pause(const char *dir, const struct engine_proc *p)
{
	struct cg_set cg;
	if (cgroup_read_record(dir, &cg) == 0 && cgroup_freeze(&cg, true) == 0)
		return 0;
	int prev = -1;
	for (int i = 0; i < 8; i++) {
		int n = signal_ns(p, SIGSTOP);
		if (n < 0)
			return n;
		if (n == prev)
			break;
		prev = n;
	}
	return 0;
}

static int proc_resume(const char *dir, const struct engine_proc *p)
{
	struct cg_set cg;
	if (cgroup_read_record(dir, &cg) == 0 && cgroup_freeze(&cg, false) == 0)
		return 0;
	int n = signal_ns(p, SIGCONT);
	return n < 0 ? n : 0;
}

int engine_pidfd_of(pid_t pid, uint64_t start_time)
{
	if (pid <= 0 || !start_time)
		return -ESRCH;
	int fd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (fd < 0)
		return -ESRCH;
	if (proc_start_time(pid) != start_time) {
		close(fd);
		return -ESRCH;
	}
	return fd;
}

int engine_proc_signal(const struct engine_proc *p, int sig)
{
	if (p->pidfd >= 0)
		return syscall(SYS_pidfd_send_signal, p->pidfd, sig, NULL, 0) == 0 ? 0 : -ESRCH;
	int fd = engine_pidfd_of(p->pid, p->start_time);
	if (fd < 0)
		return fd;
	int rc = syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0) == 0 ? 0 : -ESRCH;
	close(fd);
	return rc;
}

static int proc_kill(const char *dir, const struct engine_proc *p)
{
	int rc = engine_proc_signal(p, SIGKILL);
	/* A task frozen by cgroup v1's freezer dies only once thawed: the signal is
	 * pending first, so nothing of the sandbox runs again. */
	struct cg_set cg;
	if (!rc && cgroup_read_record(dir, &cg) == 0)
		cgroup_freeze(&cg, false);
	return rc;
}

void engine_start_error(const char *dir, char *out, size_t outlen)
{
	char path[4200];
	out[0] = 0;
	snprintf(path, sizeof(path), "%s/start-error", dir);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, out, outlen - 1);
	close(fd);
	out[n > 0 ? n : 0] = 0;
}

static void proc_stop_keep_files(const char *dir)
{
	/* A mount left on the root (a crashed start) would stop a removal's walk. */
	char path[4200];
	snprintf(path, sizeof(path), "%s/root", dir);
	umount2(path, MNT_DETACH);
	uid_range_release(dir);
	sandbox_net_release(dir);
	snprintf(path, sizeof(path), "%s" CGROUP_RECORD, dir);
	cJSON *o = registry_read_json(path);
	if (o) {
		struct cg_set cg;
		cgroup_from_record(o, &cg);
		cgroup_remove(&cg);
		cJSON_Delete(o);
		unlink(path);
	}
}

static int proc_cleanup(const char *dir)
{
	proc_stop_keep_files(dir);
	teardown_tree(dir, NULL);
	return 0;
}

const struct engine_ops engine_process_ops = {
	.name = "process",
	.agent_socket = proc_agent_socket,
	.writable_layer = proc_writable_layer,
	.start = proc_start,
	.pause = proc_pause,
	.resume = proc_resume,
	.kill = proc_kill,
	.exit_reason = engine_start_error,
	.cleanup = proc_cleanup,
	.stop_keep_files = proc_stop_keep_files,
	.network = sandbox_net_enabled,
	.network_update = sandbox_net_update,
	.snapshot_take = proc_snapshot_take,
	.snapshot_keep = proc_snapshot_keep,
	.snapshot_drop = proc_snapshot_drop,
	.template_spec = proc_template_spec,
	.template_shape = proc_template_shape,
};
