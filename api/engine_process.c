/* The process engine: a sandbox is mitos-agent running as a host process in
 * fresh mount, pid, ipc, uts and net namespaces, on an overlay whose lower layer
 * is the template's root directory and whose upper layer is the sandbox's own
 * directory in the state dir. Its PID 1 is a small reaper (a fork of serve that
 * never execs); the agent is PID 2 and listens on a Unix socket that the host
 * reaches through a bind-mounted directory, so sandboxes outlive a restart of
 * serve and are re-adopted by the next one. Each sandbox has a cgroup with the
 * template's memory and CPU limits (api/cgroup.h); its init enters it before it runs
 * anything, so everything the sandbox starts is inside. */

#include "api/engine.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/sched.h>
#include <net/if.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/cgroup.h"
#include "api/registry.h"

#ifndef MITOS_SOURCE_ROOT
#define MITOS_SOURCE_ROOT "."
#endif

#define SANDBOX_RUN "/run/mitos"
#define AGENT_SOCK_NAME "agent.sock"
#define CGROUP_RECORD "/cgroup.json"

/* Limits of a template that names none: a python session with numpy and matplotlib
 * needs a few hundred MiB; one CPU keeps a busy sandbox from starving the node. */
static const struct cg_limits default_limits = { .memory_max_mib = 1024, .cpu_percent = 100 };

static int agent_exe_fd = -1;
static char *helper_buf;
static size_t helper_len;
static char state_dir_real[4096];
static char token_file_real[4096];

static int path_join(char *out, size_t n, const char *a, const char *b)
{
	int k = snprintf(out, n, "%s%s", a, b);
	return k < 0 || (size_t)k >= n ? -ENAMETOOLONG : 0;
}

uint64_t engine_proc_start_time(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	/* The command name may hold spaces and parentheses: count from the last ')'. */
	char *p = strrchr(buf, ')');
	if (!p)
		return 0;
	/* A zombie is gone too: nothing of it can be re-adopted or signalled. */
	if (p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X'))
		return 0;
	int field = 2;
	for (p++; *p && field < 22; p++)
		if (*p == ' ')
			field++;
	return strtoull(p, NULL, 10);
}

int engine_process_available(char *why, size_t whylen)
{
	if (geteuid() != 0) {
		snprintf(why, whylen, "the process engine needs root (mount, pid and net namespaces, "
			 "overlayfs); run `mitos-vmm serve` as root");
		return -EPERM;
	}
	FILE *f = fopen("/proc/filesystems", "r");
	bool overlay = false;
	if (f) {
		char line[128];
		while (fgets(line, sizeof(line), f))
			if (strstr(line, "\toverlay\n"))
				overlay = true;
		fclose(f);
	}
	if (!overlay) {
		snprintf(why, whylen, "overlayfs is not available; load it with `modprobe overlay`");
		return -ENODEV;
	}
	return 0;
}

static int read_file(const char *path, char **buf, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) || st.st_size > (16 << 20)) {
		close(fd);
		return -EFBIG;
	}
	char *b = malloc((size_t)st.st_size + 1);
	if (!b) {
		close(fd);
		return -ENOMEM;
	}
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, b + got, (size_t)st.st_size - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	*buf = b;
	*len = got;
	return 0;
}

static bool file_ok(const char *p, int mode)
{
	struct stat st;
	return !access(p, mode) && !stat(p, &st) && S_ISREG(st.st_mode);
}

int engine_process_configure(const char *agent_path, const char *state_dir, const char *token_file,
			     char *info, size_t infolen, char *err, size_t errlen)
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
		if (!agent[0]) {
			snprintf(err, errlen, "engine_unavailable: cannot find mitos-agent next to %s; "
				 "pass --agent PATH", exe);
			return -ENOENT;
		}
	}
	if (!file_ok(agent, X_OK)) {
		snprintf(err, errlen, "engine_unavailable: %s is not an executable file; pass --agent PATH", agent);
		return -ENOENT;
	}
	agent_exe_fd = open(agent, O_PATH | O_CLOEXEC);
	if (agent_exe_fd < 0) {
		snprintf(err, errlen, "engine_unavailable: cannot open %s: %s", agent, strerror(errno));
		return -errno;
	}
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
	for (size_t i = 0; i < 3 && !helper_buf; i++) {
		snprintf(path, sizeof(path), "%.2000s%s", hc[i][0], hc[i][1]);
		if (file_ok(path, R_OK))
			read_file(path, &helper_buf, &helper_len);
	}
	if (!realpath(state_dir, state_dir_real)) {
		snprintf(err, errlen, "state dir %s: %s", state_dir, strerror(errno));
		return -errno;
	}
	if (strpbrk(state_dir_real, ",:\\ ")) {
		snprintf(err, errlen, "state dir %s: overlayfs cannot take a path with ',', ':', '\\' or spaces",
			 state_dir_real);
		return -EINVAL;
	}
	token_file_real[0] = 0;
	if (token_file && !realpath(token_file, token_file_real))
		token_file_real[0] = 0;
	cgroup_init("mitos-sandboxes", true, info, infolen);
	return 0;
}

static cJSON *proc_template_spec(const cJSON *spec, char *err, size_t errlen)
{
	struct cg_limits l;
	/* The agent and a python interpreter need some room before any user code runs. */
	if (cgroup_limits_parse(spec, 32, &default_limits, &l, err, errlen))
		return NULL;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "memory_max_mib", l.memory_max_mib);
	cJSON_AddNumberToObject(o, "cpu_percent", l.cpu_percent);
	return o;
}

static int proc_agent_socket(const char *dir, char *out, size_t outlen)
{
	return path_join(out, outlen, dir, "/run/" AGENT_SOCK_NAME);
}

static int proc_writable_layer(const char *dir, char *out, size_t outlen)
{
	return path_join(out, outlen, dir, "/upper");
}

/* ---- the sandbox side (runs in the child, never returns) ---- */

struct child_ctx {
	const struct engine_start *s;
	int errfd, logfd;
};

static __attribute__((noreturn, format(printf, 3, 4))) void child_fail(struct child_ctx *c, int err,
								       const char *fmt, ...)
{
	char msg[600];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if (c->errfd >= 0) {
		dprintf(c->errfd, "%s: %s", msg, strerror(err));
		fsync(c->errfd);
	}
	_exit(126);
}

static int mkdir_p(const char *path, mode_t mode)
{
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static void bind_dev(struct child_ctx *c, const char *root, const char *name)
{
	char src[64], dst[4200];
	snprintf(src, sizeof(src), "/dev/%s", name);
	snprintf(dst, sizeof(dst), "%.1200s/dev/%s", root, name);
	int fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
	if (fd >= 0)
		close(fd);
	if (mount(src, dst, NULL, MS_BIND, NULL) < 0)
		child_fail(c, errno, "bind %s", src);
}

static void copy_layer(struct child_ctx *c, const char *from, const char *to)
{
	char src[4200];
	snprintf(src, sizeof(src), "%s/.", from);
	pid_t pid = fork();
	if (pid < 0)
		child_fail(c, errno, "fork cp");
	if (pid == 0) {
		dup2(c->logfd, 1);
		dup2(c->logfd, 2);
		/* -a keeps the overlay's whiteouts (0:0 devices), xattrs and owners. */
		execl("/bin/cp", "cp", "-a", "--reflink=auto", src, to, (char *)NULL);
		_exit(127);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		child_fail(c, EIO, "copy the parent's writable layer (cp -a %s %s)", from, to);
}

static void loopback_up(void)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (!ioctl(fd, SIOCGIFFLAGS, &ifr)) {
		ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
		ioctl(fd, SIOCSIFFLAGS, &ifr);
	}
	close(fd);
}

static __attribute__((noreturn)) void sandbox_child(const struct engine_start *s, const struct cg_entry *ce)
{
	struct child_ctx cc = { .s = s, .errfd = -1, .logfd = -1 };
	struct child_ctx *c = &cc;
	char p[4200], root[4200], upper[4200], work[4200], run[4200], opts[13000];

	cgroup_enter_child(ce);

	/* Nothing of serve's may stay open here: its listener would outlive it. */
	int a = fcntl(agent_exe_fd, F_DUPFD_CLOEXEC, 100), r = fcntl(s->ready_fd, F_DUPFD_CLOEXEC, 100);
	if (a < 0 || r < 0)
		_exit(125);
	dup2(a, 3);
	dup2(r, 4);
	agent_exe_fd = 3;
	int ready_fd = 4;
	fcntl(3, F_SETFD, FD_CLOEXEC);
	fcntl(4, F_SETFD, FD_CLOEXEC);
	syscall(SYS_close_range, 5, ~0U, 0);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	setsid();
	prctl(PR_SET_NAME, "mitos-init", 0, 0, 0);

	snprintf(p, sizeof(p), "%.1200s/start-error", s->dir);
	cc.errfd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	snprintf(p, sizeof(p), "%.1200s/agent.log", s->dir);
	cc.logfd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	int nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nullfd >= 0)
		dup2(nullfd, 0);
	if (cc.logfd >= 0) {
		dup2(cc.logfd, 1);
		dup2(cc.logfd, 2);
	}

	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		child_fail(c, errno, "make mounts private");
	snprintf(root, sizeof(root), "%s/root", s->dir);
	snprintf(upper, sizeof(upper), "%s/upper", s->dir);
	snprintf(work, sizeof(work), "%s/work", s->dir);
	snprintf(run, sizeof(run), "%s/run", s->dir);
	if (s->copy_from)
		copy_layer(c, s->copy_from, upper);
	snprintf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s,workdir=%s", s->template_root, upper, work);
	if (mount("overlay", root, "overlay", 0, opts) < 0)
		child_fail(c, errno, "mount overlay (%s)", opts);

	snprintf(p, sizeof(p), "%.1200s/proc", root);
	mkdir_p(p, 0555);
	if (mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		child_fail(c, errno, "mount /proc");
	snprintf(p, sizeof(p), "%.1200s/sys", root);
	mkdir_p(p, 0555);
	mount("sysfs", p, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	snprintf(p, sizeof(p), "%.1200s/tmp", root);
	mkdir_p(p, 01777);
	if (mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
		child_fail(c, errno, "mount /tmp");
	snprintf(p, sizeof(p), "%.1200s/run", root);
	mkdir_p(p, 0755);
	if (mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0)
		child_fail(c, errno, "mount /run");
	snprintf(p, sizeof(p), "%.1200s" SANDBOX_RUN, root);
	mkdir_p(p, 0755);
	if (mount(run, p, NULL, MS_BIND, NULL) < 0)
		child_fail(c, errno, "bind %s", run);

	/* A /dev with the harmless devices only, and a private devpts. */
	snprintf(p, sizeof(p), "%.1200s/dev", root);
	mkdir_p(p, 0755);
	if (mount("tmpfs", p, "tmpfs", MS_NOSUID, "mode=0755") < 0)
		child_fail(c, errno, "mount /dev");
	static const char *devs[] = { "null", "zero", "full", "random", "urandom", "tty" };
	for (size_t i = 0; i < sizeof(devs) / sizeof(devs[0]); i++)
		bind_dev(c, root, devs[i]);
	snprintf(p, sizeof(p), "%.1200s/dev/pts", root);
	mkdir_p(p, 0755);
	if (mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") == 0) {
		snprintf(p, sizeof(p), "%.1200s/dev/ptmx", root);
		symlink("pts/ptmx", p);
	}
	snprintf(p, sizeof(p), "%.1200s/dev/shm", root);
	mkdir_p(p, 01777);
	mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	static const char *links[][2] = { { "/proc/self/fd", "fd" }, { "/proc/self/fd/0", "stdin" },
					  { "/proc/self/fd/1", "stdout" }, { "/proc/self/fd/2", "stderr" } };
	for (size_t i = 0; i < 4; i++) {
		snprintf(p, sizeof(p), "%.1200s/dev/%s", root, links[i][1]);
		symlink(links[i][0], p);
	}

	/* The template is the host's own root for now: hide what is the server's. */
	struct stat st;
	snprintf(p, sizeof(p), "%.1200s%.2900s", root, state_dir_real);
	if (!stat(p, &st) && S_ISDIR(st.st_mode))
		if (mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0") < 0)
			child_fail(c, errno, "hide the state dir");
	if (token_file_real[0]) {
		snprintf(p, sizeof(p), "%.1200s%.2900s", root, token_file_real);
		if (!stat(p, &st) && mount("/dev/null", p, NULL, MS_BIND, NULL) < 0)
			child_fail(c, errno, "hide the token file");
	}

	if (sethostname(s->id, strlen(s->id)) < 0)
		child_fail(c, errno, "sethostname");
	loopback_up();

	if (chdir(root) < 0)
		child_fail(c, errno, "chdir %s", root);
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		child_fail(c, errno, "pivot_root");
	if (umount2(".", MNT_DETACH) < 0)
		child_fail(c, errno, "detach the old root");
	if (chdir("/") < 0)
		child_fail(c, errno, "chdir /");

	if (helper_buf) {
		int fd = open(SANDBOX_RUN "/mitos_kernel.py", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			(void)!write(fd, helper_buf, helper_len);
			close(fd);
		}
	}

	pid_t agent = fork();
	if (agent < 0)
		child_fail(c, errno, "fork the agent");
	if (agent == 0) {
		setsid();
		char *argv[] = { "mitos-agent", "--unix", SANDBOX_RUN "/" AGENT_SOCK_NAME,
				 "--python", "/usr/bin/python3",
				 "--python-helper", SANDBOX_RUN "/mitos_kernel.py", NULL };
		char host[96];
		snprintf(host, sizeof(host), "HOSTNAME=%s", s->id);
		char *envp[12] = { "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				   "HOME=/root", "LANG=C.UTF-8", "TERM=xterm-256color", "USER=root", host, NULL };
		int ne = 6;
		static const char *pass[] = { "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS" };
		char pbuf[3][1024];
		for (int i = 0; i < 3; i++) {
			const char *v = getenv(pass[i]);
			if (v && ne < 11) {
				snprintf(pbuf[i], sizeof(pbuf[i]), "%s=%s", pass[i], v);
				envp[ne++] = pbuf[i];
			}
		}
		envp[ne] = NULL;
		if (!helper_buf)
			argv[5] = NULL;
		syscall(SYS_execveat, agent_exe_fd, "", argv, envp, AT_EMPTY_PATH);
		child_fail(c, errno, "exec mitos-agent");
	}
	close(agent_exe_fd);
	/* Tell serve when the agent accepts connections, so it never polls. */
	for (int i = 0; i < 30000; i++) {
		int st;
		if (waitpid(agent, &st, WNOHANG) == agent)
			child_fail(c, ECHILD, "mitos-agent exited at start (see agent.log)");
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		strcpy(sa.sun_path, SANDBOX_RUN "/" AGENT_SOCK_NAME);
		int ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		if (fd >= 0)
			close(fd);
		if (ok) {
			(void)!write(ready_fd, "R", 1);
			break;
		}
		usleep(1000);
	}
	close(ready_fd);
	if (cc.errfd >= 0)
		close(cc.errfd);
	/* PID 1: reap everything; go when the agent goes (the kernel then kills
	 * whatever is left in the namespace). */
	for (;;) {
		int wst;
		pid_t w = wait(&wst);
		if (w == agent)
			_exit(WIFEXITED(wst) ? WEXITSTATUS(wst) : 128 + WTERMSIG(wst));
		if (w < 0 && errno == ECHILD)
			_exit(0);
	}
}

/* ---- the host side ---- */

/* The sandbox's cgroup with its template's limits, recorded in its dir so that
 * whichever serve cleans the sandbox up removes it. */
static int cgroup_prepare(const struct engine_start *s, struct cg_set *cg, struct cg_entry *ce)
{
	static unsigned serial;
	struct cg_limits l;
	char err[200], name[128], path[4200];
	if (cgroup_limits_parse(s->spec, 32, &default_limits, &l, err, sizeof(err)))
		l = default_limits;
	snprintf(name, sizeof(name), "%d-%u-%s", (int)getpid(), ++serial, s->id);
	int rc = cgroup_create(name, &l, cg, ce);
	if (rc || !cg->dir[0][0])
		return rc;
	cJSON *o = cJSON_CreateObject();
	cgroup_record(cg, o);
	cJSON_AddNumberToObject(o, "memory_max_mib", l.memory_max_mib);
	cJSON_AddNumberToObject(o, "cpu_percent", l.cpu_percent);
	snprintf(path, sizeof(path), "%s" CGROUP_RECORD, s->dir);
	rc = registry_write_json(path, o);
	cJSON_Delete(o);
	if (rc) {
		cgroup_entry_close(ce);
		cgroup_remove(cg);
	}
	return rc;
}

static int proc_start(const struct engine_start *s, struct engine_proc *p, char *err, size_t errlen)
{
	char path[4200];
	static const char *subdirs[] = { "/upper", "/work", "/root", "/run" };
	for (size_t i = 0; i < 4; i++) {
		snprintf(path, sizeof(path), "%s%s", s->dir, subdirs[i]);
		if (mkdir(path, 0755) < 0 && errno != EEXIST) {
			snprintf(err, errlen, "mkdir %s: %s", path, strerror(errno));
			return -errno;
		}
	}
	struct cg_set cg;
	struct cg_entry ce;
	int rc = cgroup_prepare(s, &cg, &ce);
	if (rc) {
		snprintf(err, errlen, "cannot create the sandbox's cgroup: %s", strerror(-rc));
		return rc;
	}
	int pidfd = -1;
	long pid = cgroup_clone(&ce, CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS |
				CLONE_NEWNET, &pidfd);
	if (pid == 0)
		sandbox_child(s, &ce);
	int e = errno;
	cgroup_entry_close(&ce);
	if (pid < 0) {
		snprintf(err, errlen, "clone3 with new namespaces: %s", strerror(e));
		cgroup_remove(&cg);
		return -e;
	}
	fcntl(pidfd, F_SETFD, FD_CLOEXEC);
	p->pid = (pid_t)pid;
	p->pidfd = pidfd;
	p->start_time = engine_proc_start_time(p->pid);
	p->child = true;
	return 0;
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

static int proc_pause(const struct engine_proc *p)
{
	/* Processes forked during a pass are caught by the next one. */
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

static int proc_resume(const struct engine_proc *p)
{
	int n = signal_ns(p, SIGCONT);
	return n < 0 ? n : 0;
}

static int proc_kill(const struct engine_proc *p)
{
	if (p->pidfd >= 0 && syscall(SYS_pidfd_send_signal, p->pidfd, SIGKILL, NULL, 0) == 0)
		return 0;
	if (p->pid > 0 && engine_proc_start_time(p->pid) == p->start_time && kill(p->pid, SIGKILL) == 0)
		return 0;
	return -ESRCH;
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

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)ftw;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

int engine_remove_tree(const char *dir)
{
	struct stat st;
	/* Again if something was created in it meanwhile (an engine's last word). */
	for (int pass = 0; pass < 3; pass++) {
		nftw(dir, rm_one, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
		if (lstat(dir, &st) < 0)
			return 0;
	}
	return -ENOTEMPTY;
}

static int proc_cleanup(const char *dir)
{
	/* A mount left on the root (a crashed start) would stop the walk. */
	char path[4200];
	snprintf(path, sizeof(path), "%s/root", dir);
	umount2(path, MNT_DETACH);
	snprintf(path, sizeof(path), "%s" CGROUP_RECORD, dir);
	cJSON *o = registry_read_json(path);
	if (o) {
		struct cg_set cg;
		cgroup_from_record(o, &cg);
		cgroup_remove(&cg);
		cJSON_Delete(o);
	}
	return engine_remove_tree(dir);
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
	.template_spec = proc_template_spec,
};
