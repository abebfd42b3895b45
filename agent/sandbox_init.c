/* mitos-sandbox-init: PID 1 of a process-engine sandbox.
 *
 * serve clones a process into fresh mount, pid, ipc, uts, net and cgroup namespaces
 * (and the sandbox's cgroups) and that process execs this program at once, so nothing
 * of serve's memory (its token, HMAC key, other sandboxes' data) exists in a sandbox.
 * Running as host root in those namespaces, it builds the sandbox's root and then runs
 * mitos-agent as root of a user namespace that maps 0..65535 onto an unprivileged host
 * range of its own (the way rootless runc, crun and bubblewrap confine root):
 *
 *   1. a user namespace (held by a short-lived child) mapping 0..65535 to UID_BASE..;
 *   2. idmapped mounts through it of the template's root (overlay lower) and of the
 *      sandbox's directory (upper, work and run): on disk the files keep host ids 0..,
 *      so forks copy layers as they are, while inside they belong to the sandbox's root;
 *   3. the overlay (its /tmp a directory of the writable layer), /proc (with /proc/sys
 *      and other host knobs read-only, a boot id and an uptime of its own), a read-only
 *      /sys, tmpfs /run and /dev/shm owned by the sandbox's root, a /dev with
 *      harmless devices, a private devpts, /run/mitos, the agent's binary over the
 *      template's /usr/bin/sudo (a setuid sudo, which no_new_privs voids: run as sudo,
 *      it asks the agent, agent/sudo.h); the state dir and the token file masked;
 *      then pivot_root;
 *   4. the agent: joins the user namespace (so it owns no mount, net, uts, ipc or pid
 *      namespace: none of them can be changed from inside), no_new_privs, a seccomp
 *      filter refusing the calls that reach the host kernel's shared state (below), and
 *      exec through the descriptor serve passed;
 *   5. once the agent listens, /run/mitos (its socket, on the host's file system)
 *      becomes read-only, nosuid, nodev and noexec inside: nothing the sandbox writes
 *      lands outside its quota. The agent's output (its root may ptrace it: it is the
 *      sandbox's) reaches the host's agent.log through a pipe and a copier that keeps
 *      the first AGENT_LOG_MAX bytes;
 *   6. this process then drops every capability, marks itself non-dumpable and out of
 *      the OOM killer's reach, and only reaps. It leaves when the agent does.
 *
 * The writable layer (overlay upper and work) is a directory of DIR, or, with
 * --disk-mib, an ext4 file system of that size of its own (the sandbox's disk quota):
 * a sparse DIR/disk.img, formatted here (or copied from the parent's image for a fork),
 * on a loop device that is released when this mount namespace ends.
 *
 * usage (serve runs it; argv is trusted, fds: 3 mitos-agent (O_PATH), 4 readiness
 * pipe, 5 start-error file, 6 agent log):
 *   mitos-sandbox-init DIR ID TEMPLATE_ROOT UID_BASE [--copy-from[-settled] DIR|IMAGE] [--disk-mib N]
 *                      [--parent-root /proc/PID/root] [--hide PATH]... [--helper FILE]
 *                      [--net HOST_DEV,HOST_ADDR,SANDBOX_ADDR --host-netns /proc/PID/ns/net]
 *   mitos-sandbox-init --format-disk IMG MIB     (a spare disk, made ahead)
 *   mitos-sandbox-init --copy-layer FROM TO [ROOT]  (a snapshot's copy of a frozen sandbox)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <net/if.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <grp.h>
#include <unistd.h>

#include "agent/init_net.h"
#include "agent/loop_dev.h"
#include "agent/sudo.h"
#include "lib/proc_start.h"

#define AGENT_FD 3
#define READY_FD 4
#define ERR_FD 5
#define LOG_FD 6
#define AGENT_LOG_MAX (4u << 20)
#define SANDBOX_RUN "/run/mitos"
#define AGENT_SOCK SANDBOX_RUN "/agent.sock"
#define ID_RANGE 65536
#define MAX_HIDE 8
/* The agent and all it starts (inherited): raising a score needs no privilege. */
#define OOM_SCORE_ADJ_AGENT "500"

static __attribute__((noreturn, format(printf, 2, 3))) void fail(int err, const char *fmt, ...)
{
	char msg[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	dprintf(ERR_FD, "%s: %s", msg, strerror(err));
	fsync(ERR_FD);
	_exit(126);
}

static void pathf(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void pathf(char *out, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(out, n, fmt, ap);
	va_end(ap);
	if (k < 0 || (size_t)k >= n)
		fail(ENAMETOOLONG, "path %.100s...", out);
}

static void mount_or_fail(const char *src, const char *dst, const char *type, unsigned long flags,
			  const char *data)
{
	if (mount(src, dst, type, flags, data) < 0)
		fail(errno, "mount %s on %s", type ? type : src ? src : "(remount)", dst);
}

static void write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, s, strlen(s)) != (ssize_t)strlen(s))
		fail(errno, "write %s", path);
	close(fd);
}

/* ---- 1. the user namespace ---- */

/* A child unshares a user namespace, this process (root outside) maps it, and the
 * namespace outlives the child through the returned descriptor. */
static int make_userns(unsigned long base)
{
	int up[2], down[2];
	if (pipe2(up, O_CLOEXEC) || pipe2(down, O_CLOEXEC))
		fail(errno, "pipe");
	pid_t pid = fork();
	if (pid < 0)
		fail(errno, "fork");
	if (pid == 0) {
		char c = 0;
		close(up[0]);
		close(down[1]);
		if (unshare(CLONE_NEWUSER) < 0)
			_exit(1);
		(void)!write(up[1], &c, 1);
		(void)!read(down[0], &c, 1); /* until the parent has the namespace */
		_exit(0);
	}
	close(up[1]);
	close(down[0]);
	char c, path[64], map[64];
	if (read(up[0], &c, 1) != 1)
		fail(EPERM, "unshare a user namespace (user namespaces disabled?)");
	snprintf(map, sizeof(map), "0 %lu %d\n", base, ID_RANGE);
	snprintf(path, sizeof(path), "/proc/%d/uid_map", (int)pid);
	write_file(path, map);
	snprintf(path, sizeof(path), "/proc/%d/gid_map", (int)pid);
	write_file(path, map);
	snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail(errno, "open %s", path);
	close(down[1]);
	close(up[0]);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	return fd;
}

/* ---- 2. idmapped layers ---- */

static void idmapped_bind(const char *src, const char *dst, int userns)
{
	int t = open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
	if (t < 0)
		fail(errno, "open_tree %s", src);
	struct mount_attr a = { .attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (unsigned)userns };
	if (mount_setattr(t, "", AT_EMPTY_PATH, &a, sizeof(a)) < 0)
		fail(errno, "idmap %s (the file system must support idmapped mounts)", src);
	mkdir(dst, 0700);
	if (move_mount(t, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) < 0)
		fail(errno, "move_mount %s", dst);
	close(t);
}

/* Changing the fs ids to or from 0 drops or raises the file capabilities (see
 * capabilities(7)); the effective set is made the permitted set again. */
static void set_fsids(unsigned long id)
{
	setfsgid((gid_t)id);
	setfsuid((uid_t)id);
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) < 0)
		fail(errno, "capget");
	d[0].effective = d[0].permitted;
	d[1].effective = d[1].permitted;
	if (syscall(SYS_capset, &h, d) < 0)
		fail(errno, "capset");
	if (setfsuid((uid_t)-1) != (int)id)
		fail(EPERM, "setfsuid %lu", id);
}

/* Runs a host tool (argv[0] an absolute path) to its end; fails the start if it fails. */
static void run_tool(char *const argv[], const char *what)
{
	pid_t pid = fork();
	if (pid < 0)
		fail(errno, "fork for %s", what);
	if (pid == 0) {
		dup2(LOG_FD, 1);
		dup2(LOG_FD, 2);
		execv(argv[0], argv);
		_exit(127);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		fail(EIO, "%s (%s exited with %d)", what, argv[0], WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
}

static void copy_layer(const char *from, const char *to)
{
	char src[4200];
	pathf(src, sizeof(src), "%s/.", from);
	/* -a keeps the overlay's whiteouts (0:0 devices), xattrs and owners. */
	run_tool((char *[]){ "/bin/cp", "-a", "--reflink=auto", src, (char *)to, NULL },
		 "copy the parent's writable layer");
}

/* ---- the disk quota: the writable layer on a file system of its own ---- */

/* A loop device over img, released (autoclear) once nothing holds it: the returned
 * descriptor, then the mount this namespace makes, which goes with the sandbox. */
static int loop_attach(const char *img, char *dev, size_t devlen)
{
	int fd = open(img, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		fail(errno, "open %s", img);
	/* Two mounts of one ext4 image corrupt it: a boot after a filesystem-only pause
	 * waits for the last one's device to go (it goes with that boot's mount
	 * namespace, by the time serve hears of its end). */
	for (int i = 0; loop_dev_backs(fd); i++) {
		if (i == 50)
			fail(EBUSY, "%s is still attached to a loop device (an earlier boot of the sandbox holds it)", img);
		usleep(100 * 1000);
	}
	const char *step;
	int lfd = loop_dev_attach(fd, dev, devlen, &step);
	if (lfd < 0)
		fail(-lfd, "%s for %s", step, img);
	close(fd);
	return lfd;
}

/* A new sparse image of mib MiB at img, formatted ext4: no reserved blocks (the quota
 * is the sandbox's to use), tables initialized lazily (it takes milliseconds). serve
 * makes spares ahead with `--format-disk`, so this is the one spelling of the format. */
static void format_disk(const char *img, unsigned long mib)
{
	int fd = open(img, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)mib << 20) < 0)
		fail(errno, "create %s", img);
	close(fd);
	run_tool((char *[]){ "/sbin/mkfs.ext4", "-q", "-F", "-m", "0", "-E",
			     "lazy_itable_init=1,lazy_journal_init=1,nodiscard", (char *)img, NULL },
		 "format the sandbox's disk");
}

/* A disk image copied whole, sparse. Unless settled (a snapshot's copy, mounted
 * nowhere), it is a frozen sandbox's, whose file system is first synced into it, which
 * ext4 replays on mount: syncfs of root_fd, the sandbox's root, whose overlay syncs the
 * file system in its image; without one, sync(), which waits for every sandbox's writes. */
static void copy_image(const char *from, const char *to, bool settled, int root_fd, const char *what)
{
	if (!settled && (root_fd < 0 || syncfs(root_fd) < 0))
		sync();
	run_tool((char *[]){ "/bin/cp", "--sparse=always", "--reflink=auto", (char *)from, (char *)to, NULL }, what);
}

/* Mounts the sandbox's disk at mnt, with upper/ and work/ in it: DIR/disk.img as serve
 * left it (a spare formatted ahead), else a new one of mib MiB, or a copy of the image
 * copy_img (a fork's parent's, whose root is parent_root, or a snapshot's, settled). */
static void mount_disk(const char *dir, const char *mnt, unsigned long mib, const char *copy_img, bool settled,
		       int parent_root)
{
	char img[4200], dev[64], p[4300];
	pathf(img, sizeof(img), "%s/disk.img", dir);
	struct stat st;
	if (copy_img) {
		unlink(img);
		copy_image(copy_img, img, settled, parent_root, "copy the parent's disk");
	} else if (lstat(img, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != (uint64_t)mib << 20) {
		unlink(img);
		format_disk(img, mib);
	}
	int lfd = loop_attach(img, dev, sizeof(dev));
	mkdir(mnt, 0700);
	/* discard: what the sandbox deletes is given back to the host's file system. */
	mount_or_fail(dev, mnt, "ext4", MS_NOSUID | MS_NODEV, "discard");
	close(lfd);
	static const char *sub[] = { "upper", "work" };
	for (int i = 0; i < 2; i++) {
		pathf(p, sizeof(p), "%s/%s", mnt, sub[i]);
		if (mkdir(p, 0755) < 0 && errno != EEXIST)
			fail(errno, "mkdir %s", p);
	}
}

/* `--copy-layer FROM TO [ROOT]` (fds: 5 error file, 6 log): a snapshot that outlives
 * its sandbox (frozen meanwhile, its root ROOT: /proc/PID/root) gets its disk image or
 * writable layer, copied as a fork's child copies its parent's; the snapshot's
 * sandboxes copy it again. */
static void copy_for_snapshot(const char *from, const char *to, const char *root)
{
	struct stat st;
	if (stat(from, &st) < 0)
		fail(errno, "stat %s", from);
	if (S_ISREG(st.st_mode)) {
		int fd = root ? open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
		copy_image(from, to, false, fd, "copy the sandbox's disk");
		if (fd >= 0)
			close(fd);
		return;
	}
	if (mkdir(to, 0755) < 0)
		fail(errno, "mkdir %s", to);
	copy_layer(from, to);
}

static void copy_file(const char *from, const char *to)
{
	char buf[65536];
	int in = open(from, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return; /* run_code then says the helper is missing */
	int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	ssize_t n;
	while (out >= 0 && (n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n)
			break;
	close(in);
	if (out >= 0)
		close(out);
}

/* ---- 3. the root ---- */

/* The sandbox's /tmp is a directory of its writable layer, as on a VM's disk (E2B's):
 * a fork, a snapshot and a filesystem-only pause keep it, and it counts against the
 * disk quota. Opaque, so the template's own /tmp (the host's, for a template that is
 * the host's root) stays unseen; made again if the sandbox removed it. */
static void disk_tmp(const char *upper)
{
	char p[4200];
	pathf(p, sizeof(p), "%s/tmp", upper);
	struct stat st;
	if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
		return;
	unlink(p); /* a whiteout: the sandbox removed its /tmp */
	if (mkdir(p, 01777) < 0 || chmod(p, 01777) < 0 || setxattr(p, "trusted.overlay.opaque", "y", 1, 0) < 0)
		fail(errno, "make %s", p);
}

/* root/name as an empty directory to mount on. A forked sandbox's layer comes from
 * its parent, which may have left a symlink there that mount would follow into the
 * host's tree: whatever is not a directory goes. */
static void fresh_dir(char *out, size_t n, const char *root, const char *name, mode_t mode)
{
	struct stat st;
	pathf(out, n, "%s/%s", root, name);
	if (lstat(out, &st) == 0 && !S_ISDIR(st.st_mode) && unlink(out) < 0)
		fail(errno, "unlink %s", out);
	mkdir(out, mode);
}

static void bind_dev(const char *root, const char *name)
{
	char src[64], dst[4200];
	snprintf(src, sizeof(src), "/dev/%s", name);
	pathf(dst, sizeof(dst), "%s/dev/%s", root, name);
	int fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
	if (fd >= 0)
		close(fd);
	mount_or_fail(src, dst, NULL, MS_BIND, NULL);
}

static void readonly_bind(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return; /* not on this kernel */
	mount_or_fail(path, path, NULL, MS_BIND | MS_REC, NULL);
	mount_or_fail(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

static void mount_proc_sys(const char *root)
{
	char p[4200];
	fresh_dir(p, sizeof(p), root, "proc", 0555);
	mount_or_fail("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	/* Host-wide knobs that /proc shows to any pid namespace (owned by host root, so
	 * the sandbox's root cannot write them anyway): read-only as a second wall. */
	static const char *ro[] = { "sys", "sysrq-trigger", "irq", "bus", "fs" };
	for (size_t i = 0; i < sizeof(ro) / sizeof(ro[0]); i++) {
		pathf(p, sizeof(p), "%s/proc/%s", root, ro[i]);
		readonly_bind(p);
	}
	fresh_dir(p, sizeof(p), root, "sys", 0555);
	mount_or_fail("sysfs", p, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

/* Every boot of a sandbox (its first start, and each after a filesystem-only pause)
 * has a boot id of its own, as a VM's kernel would: /proc shows the host's to every
 * pid namespace. A file of DIR/run (its /run/mitos) is bound over it, read-only. */
static void own_boot_id(const char *dir, const char *root)
{
	uint8_t u[16];
	if (getrandom(u, sizeof(u), 0) != (ssize_t)sizeof(u))
		fail(errno, "getrandom");
	u[6] = (uint8_t)((u[6] & 0x0f) | 0x40); /* version 4 */
	u[8] = (uint8_t)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
	char id[40], src[4200], dst[4200];
	int n = 0;
	for (int i = 0; i < 16; i++)
		n += snprintf(id + n, sizeof(id) - (size_t)n, "%s%02x", i == 4 || i == 6 || i == 8 || i == 10 ? "-" : "",
			      u[i]);
	id[n++] = '\n';
	id[n] = 0;
	pathf(src, sizeof(src), "%s/run/boot_id", dir);
	unlink(src);
	int fd = open(src, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
	if (fd < 0 || write(fd, id, (size_t)n) != n)
		fail(errno, "write %s", src);
	close(fd);
	pathf(dst, sizeof(dst), "%s/proc/sys/kernel/random/boot_id", root);
	mount_or_fail(src, dst, NULL, MS_BIND, NULL);
	mount_or_fail(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

/* And an uptime of its own, from zero at each boot: the processes started after this
 * live in a time namespace whose boot and monotonic clocks start with this init (the
 * whole second it started in: so its own start time, PID 1's, is not before the
 * sandbox's boot), for /proc/uptime, the start times ps shows, CLOCK_MONOTONIC; not at
 * the host's boot. A kernel built without time namespaces (EINVAL) leaves the host's. */
static void own_uptime(void)
{
	/* the second of the host's boot clock this init started in */
	uint64_t ticks = proc_start_time(getpid());
	if (!ticks)
		fail(EINVAL, "read this process's start time");
	long long start = (long long)(ticks / (uint64_t)sysconf(_SC_CLK_TCK));
	if (unshare(CLONE_NEWTIME) < 0) {
		if (errno == EINVAL)
			return;
		fail(errno, "unshare a time namespace");
	}
	struct timespec mono, boot;
	clock_gettime(CLOCK_MONOTONIC, &mono);
	clock_gettime(CLOCK_BOOTTIME, &boot);
	/* Both from the init's start: the host's monotonic clock is behind its boot clock by
	 * the time it was suspended; inside, as on a machine just booted, they agree. */
	long long lag = (long long)boot.tv_sec - (long long)mono.tv_sec;
	char offsets[96];
	int n = snprintf(offsets, sizeof(offsets), "monotonic %lld 0\nboottime %lld 0\n", lag - start, -start);
	int fd = open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, offsets, (size_t)n) != n)
		fail(errno, "set the time namespace's offsets");
	close(fd);
}

/* The template's sudo is setuid, which no_new_privs (on everything in the sandbox)
 * voids: the agent's binary takes its place and, run as sudo, asks the agent
 * (agent/sudo.h). Not over a symlink a sandbox left there. By the agent's path: its
 * descriptor belongs to serve's mount namespace, which a bind cannot take from. A
 * sandbox whose agent binary was replaced since serve opened it keeps the refusing
 * sudo rather than failing to start. */
static void sudo_by_agent(const char *root)
{
	char p[4200], self[64], agent[4096];
	struct stat st;
	pathf(p, sizeof(p), "%s/usr/bin/sudo", root);
	snprintf(self, sizeof(self), "/proc/self/fd/%d", AGENT_FD);
	ssize_t n = readlink(self, agent, sizeof(agent) - 1);
	if (n <= 0 || lstat(p, &st) < 0 || !S_ISREG(st.st_mode))
		return;
	agent[n] = 0;
	if (mount(agent, p, NULL, MS_BIND, NULL) == 0)
		mount_or_fail(NULL, p, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL);
}

static void mount_dev(const char *root, unsigned long base)
{
	char p[4200], opts[96];
	fresh_dir(p, sizeof(p), root, "dev", 0755);
	mount_or_fail("tmpfs", p, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k");
	static const char *devs[] = { "null", "zero", "full", "random", "urandom", "tty" };
	for (size_t i = 0; i < sizeof(devs) / sizeof(devs[0]); i++)
		bind_dev(root, devs[i]);
	pathf(p, sizeof(p), "%s/dev/pts", root);
	mkdir(p, 0755);
	if (mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") == 0) {
		pathf(p, sizeof(p), "%s/dev/ptmx", root);
		symlink("pts/ptmx", p);
	}
	pathf(p, sizeof(p), "%s/dev/shm", root);
	mkdir(p, 01777);
	snprintf(opts, sizeof(opts), "mode=1777,uid=%lu,gid=%lu", base, base);
	mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, opts);
	static const char *links[][2] = { { "/proc/self/fd", "fd" }, { "/proc/self/fd/0", "stdin" },
					  { "/proc/self/fd/1", "stdout" }, { "/proc/self/fd/2", "stderr" } };
	for (size_t i = 0; i < 4; i++) {
		pathf(p, sizeof(p), "%s/dev/%s", root, links[i][1]);
		symlink(links[i][0], p);
	}
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

/* serve --egress (api/engines/sandbox_net.h): the sandbox's elements of the host's
 * table (DIR/net.nft) are added before the pair exists; then the pair, the host's end
 * addressed, the sandbox's eth0 addressed and routed through it. Runs before /proc is
 * this namespace's own. */
static void net_setup(const char *dir, const char *spec, const char *host_netns)
{
	char dev[IF_NAMESIZE], host[16], sb[16];
	struct in_addr ha, sa;
	if (sscanf(spec, "%15[^,],%15[^,],%15s", dev, host, sb) != 3 || inet_pton(AF_INET, host, &ha) != 1 ||
	    inet_pton(AF_INET, sb, &sa) != 1)
		fail(EINVAL, "bad --net %s", spec);
	int hostns = open(host_netns, O_RDONLY | O_CLOEXEC);
	int own = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	if (hostns < 0 || own < 0)
		fail(errno, "open the network namespaces");
	init_net_no_ipv6("all");
	init_net_no_ipv6("default");
	if (setns(hostns, CLONE_NEWNET) < 0)
		fail(errno, "enter the host's network namespace");
	char rules[4200];
	pathf(rules, sizeof(rules), "%s/net.nft", dir);
	char nft[] = "/usr/sbin/nft", nft_old[] = "/sbin/nft";
	char *argv[] = { access(nft, X_OK) == 0 ? nft : nft_old, "-f", rules, NULL };
	run_tool(argv, "add the sandbox's firewall rules (nft)");
	int rc = init_net_host_side(dev, ntohl(ha.s_addr), own);
	if (rc)
		fail(-rc, "make the sandbox's network interface %s", dev);
	if (setns(own, CLONE_NEWNET) < 0)
		fail(errno, "return to the sandbox's network namespace");
	close(hostns);
	close(own);
	rc = init_net_sandbox_side(ntohl(sa.s_addr), ntohl(ha.s_addr));
	if (rc)
		fail(-rc, "address the sandbox's eth0");
}

/* The node's resolvers (DIR/resolv.conf), read while the state dir is reachable. */
static ssize_t read_resolv(const char *dir, char *text, size_t n)
{
	char src[4200];
	pathf(src, sizeof(src), "%s/resolv.conf", dir);
	int fd = open(src, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail(errno, "open %s", src);
	ssize_t k = read(fd, text, n);
	close(fd);
	return k;
}

/* ... written as the sandbox's /etc/resolv.conf, its root's file. Only once the root is
 * the sandbox's own: /etc may be a link its parent left, which must resolve inside. */
static void install_resolv(const char *text, ssize_t n, unsigned long base)
{
	struct stat st;
	if (n <= 0 || stat("/etc", &st) < 0 || !S_ISDIR(st.st_mode))
		return;
	set_fsids(base);
	unlink("/etc/resolv.conf");
	int fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	int err = fd < 0 || write(fd, text, (size_t)n) != n ? errno : 0;
	if (fd >= 0)
		close(fd);
	set_fsids(0);
	if (err)
		fail(err, "write the sandbox's /etc/resolv.conf");
}

/* ---- 4. the agent's confinement ---- */

/* What a sandbox's root may not do even in its own user namespace: new namespaces
 * (a user namespace of its own would own new mount and cgroup namespaces: mounts of
 * proc, sysfs or cgroupfs that reach the host), mounts, kernel keyrings, the kernel
 * log, modules, kexec, BPF, perf events, swap, clocks, reboot, file handles (they
 * name host inodes), userfaultfd, and clone3 (its flags cannot be inspected: ENOSYS
 * makes the C library fall back to clone). Everything else keeps Linux semantics. */
static void install_seccomp(void)
{
	scmp_filter_ctx f = seccomp_init(SCMP_ACT_ALLOW);
	if (!f)
		fail(ENOMEM, "seccomp_init");
	static const int deny[] = {
		SCMP_SYS(mount), SCMP_SYS(umount2), SCMP_SYS(pivot_root), SCMP_SYS(setns),
		SCMP_SYS(fsopen), SCMP_SYS(fsconfig), SCMP_SYS(fsmount), SCMP_SYS(fspick),
		SCMP_SYS(open_tree), SCMP_SYS(move_mount), SCMP_SYS(mount_setattr),
		SCMP_SYS(keyctl), SCMP_SYS(add_key), SCMP_SYS(request_key), SCMP_SYS(syslog),
		SCMP_SYS(init_module), SCMP_SYS(finit_module), SCMP_SYS(delete_module),
		SCMP_SYS(kexec_load), SCMP_SYS(kexec_file_load), SCMP_SYS(bpf), SCMP_SYS(perf_event_open),
		SCMP_SYS(swapon), SCMP_SYS(swapoff), SCMP_SYS(reboot), SCMP_SYS(acct), SCMP_SYS(quotactl),
		SCMP_SYS(settimeofday), SCMP_SYS(clock_settime), SCMP_SYS(clock_adjtime), SCMP_SYS(adjtimex),
		SCMP_SYS(open_by_handle_at), SCMP_SYS(name_to_handle_at), SCMP_SYS(userfaultfd),
		SCMP_SYS(iopl), SCMP_SYS(ioperm), SCMP_SYS(lookup_dcookie), SCMP_SYS(uselib),
		SCMP_SYS(personality), SCMP_SYS(vhangup), SCMP_SYS(nfsservctl),
	};
	int rc = 0;
	for (size_t i = 0; i < sizeof(deny) / sizeof(deny[0]) && !rc; i++)
		rc = seccomp_rule_add(f, SCMP_ACT_ERRNO(EPERM), deny[i], 0);
	const unsigned long ns = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS |
				 CLONE_NEWIPC | CLONE_NEWCGROUP | CLONE_NEWTIME;
	for (unsigned long bit = 1; bit && !rc; bit <<= 1) {
		if (!(ns & bit))
			continue;
		rc = seccomp_rule_add(f, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(unshare), 1,
				      SCMP_A0(SCMP_CMP_MASKED_EQ, bit, bit));
		if (!rc)
			rc = seccomp_rule_add(f, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
					      SCMP_A0(SCMP_CMP_MASKED_EQ, bit, bit));
	}
	if (!rc)
		rc = seccomp_rule_add(f, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
	if (!rc)
		rc = seccomp_load(f);
	seccomp_release(f);
	if (rc)
		fail(-rc, "load the seccomp filter");
}

static __attribute__((noreturn)) void exec_agent(const char *id, int userns, bool helper)
{
	write_file("/proc/self/oom_score_adj", OOM_SCORE_ADJ_AGENT);
	if (setns(userns, CLONE_NEWUSER) < 0)
		fail(errno, "join the sandbox's user namespace");
	close(userns);
	if (setgroups(0, NULL) < 0 || setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
		fail(errno, "become the sandbox's root");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		fail(errno, "no_new_privs");
	setsid();
	char *argv[] = { "mitos-agent", "--unix", AGENT_SOCK, "--sudo-socket", SUDO_SOCKET, "--python",
			 "/usr/bin/python3", "--python-helper", SANDBOX_RUN "/mitos_kernel.py", NULL };
	if (!helper)
		argv[7] = NULL;
	char host[96];
	snprintf(host, sizeof(host), "HOSTNAME=%s", id);
	char *envp[12] = { "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			   "HOME=/root", "LANG=C.UTF-8", "TERM=xterm-256color", "USER=root", host, NULL };
	int ne = 6;
	static const char *pass[] = { "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS" };
	char pbuf[3][1024];
	for (int i = 0; i < 3; i++) {
		const char *v = getenv(pass[i]);
		if (v) {
			snprintf(pbuf[i], sizeof(pbuf[i]), "%s=%s", pass[i], v);
			envp[ne++] = pbuf[i];
		}
	}
	envp[ne] = NULL;
	install_seccomp();
	syscall(SYS_execveat, AGENT_FD, "", argv, envp, AT_EMPTY_PATH);
	fail(errno, "exec mitos-agent");
}

/* ---- 5. PID 1 ---- */

static void drop_everything(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof(d));
	for (int cap = 0; cap <= CAP_LAST_CAP; cap++)
		prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
	if (syscall(SYS_capset, &h, d) < 0)
		fail(errno, "drop capabilities");
	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

static void say_end(int wst)
{
	if (WIFEXITED(wst))
		dprintf(ERR_FD, "its agent exited with status %d", WEXITSTATUS(wst));
	else if (WTERMSIG(wst) == SIGKILL)
		dprintf(ERR_FD, "its agent was killed (SIGKILL: the out-of-memory killer at the sandbox's "
				"memory limit, or a kill from inside)");
	else
		dprintf(ERR_FD, "its agent died of signal %d (%s)", WTERMSIG(wst), strsignal(WTERMSIG(wst)));
}

static void wait_ready(pid_t agent)
{
	for (int i = 0; i < 30000; i++) {
		int st;
		if (waitpid(agent, &st, WNOHANG) == agent)
			fail(ECHILD, "mitos-agent exited at start (see agent.log)");
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		strcpy(sa.sun_path, AGENT_SOCK);
		int ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		if (fd >= 0)
			close(fd);
		if (ok)
			return;
		usleep(1000);
	}
}

/* The copier of the agent's output: the first AGENT_LOG_MAX bytes to agent.log (its
 * stdout), the rest read and dropped, so a sandbox cannot grow a host file. It runs as
 * the host's nobody, not dumpable, outside the sandbox's uids: out of its reach. */
static int start_log_copier(void)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		fail(errno, "pipe for the agent's log");
	pid_t pid = fork();
	if (pid < 0)
		fail(errno, "fork the log copier");
	if (pid) {
		close(p[0]);
		return p[1];
	}
	/* Its input on 0, agent.log on 1 and 2, nothing else: not the readiness pipe (its
	 * end tells serve this init died), not the user namespace. */
	dup2(p[0], 0);
	syscall(SYS_close_range, 3, ~0U, 0);
	prctl(PR_SET_NAME, "mitos-log", 0, 0, 0);
	if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
		_exit(1);
	drop_everything();
	char buf[16384];
	size_t kept = 0;
	for (;;) {
		ssize_t n = read(0, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(0);
		if (kept == AGENT_LOG_MAX)
			continue;
		size_t take = (size_t)n < AGENT_LOG_MAX - kept ? (size_t)n : AGENT_LOG_MAX - kept;
		(void)!write(1, buf, take);
		kept += take;
		if (kept == AGENT_LOG_MAX)
			dprintf(1, "\n[mitos-sandbox-init: agent.log reached %u MiB: the rest is dropped]\n",
				AGENT_LOG_MAX >> 20);
	}
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "--format-disk")) {
		char *end;
		unsigned long mib = strtoul(argv[3], &end, 10);
		if (*end || !mib || mib >= (1ul << 24))
			return 2;
		format_disk(argv[2], mib);
		return 0;
	}
	if ((argc == 4 || argc == 5) && !strcmp(argv[1], "--copy-layer")) {
		copy_for_snapshot(argv[2], argv[3], argc == 5 ? argv[4] : NULL);
		return 0;
	}
	if (argc < 5) {
		fprintf(stderr, "usage: mitos-sandbox-init DIR ID TEMPLATE_ROOT UID_BASE [--copy-from[-settled] DIR|IMAGE] "
				"[--disk-mib N] [--parent-root DIR] [--hide PATH]... [--helper FILE]\n(run by `mitos-vmm serve`)\n");
		return 2;
	}
	const char *dir = argv[1], *id = argv[2], *template_root = argv[3];
	char *end;
	unsigned long base = strtoul(argv[4], &end, 10);
	const char *copy_from = NULL, *helper = NULL, *hide[MAX_HIDE];
	bool settled = false;
	const char *parent_root_path = NULL, *net = NULL, *host_netns = NULL;
	unsigned long disk_mib = 0;
	int nhide = 0;
	if (*end || base == 0 || base > 0xffffffffUL - ID_RANGE)
		fail(EINVAL, "bad UID_BASE %s", argv[4]);
	for (int i = 5; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--copy-from"))
			copy_from = argv[i + 1];
		else if (!strcmp(argv[i], "--copy-from-settled"))
			copy_from = argv[i + 1], settled = true;
		else if (!strcmp(argv[i], "--parent-root"))
			parent_root_path = argv[i + 1];
		else if (!strcmp(argv[i], "--helper"))
			helper = argv[i + 1];
		else if (!strcmp(argv[i], "--net"))
			net = argv[i + 1];
		else if (!strcmp(argv[i], "--host-netns"))
			host_netns = argv[i + 1];
		else if (!strcmp(argv[i], "--disk-mib") && (disk_mib = strtoul(argv[i + 1], &end, 10)) && !*end &&
			 disk_mib < (1ul << 24))
			;
		else if (!strcmp(argv[i], "--hide") && nhide < MAX_HIDE)
			hide[nhide++] = argv[i + 1];
		else
			fail(EINVAL, "unknown argument %s", argv[i]);
	}
	fcntl(AGENT_FD, F_SETFD, FD_CLOEXEC);
	fcntl(READY_FD, F_SETFD, FD_CLOEXEC);
	fcntl(ERR_FD, F_SETFD, FD_CLOEXEC);
	int nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nullfd > 0) {
		dup2(nullfd, 0);
		close(nullfd);
	}
	dup2(LOG_FD, 1);
	dup2(LOG_FD, 2);
	close(LOG_FD);
	prctl(PR_SET_NAME, "mitos-init", 0, 0, 0);
	/* The OOM killer picks a sandbox's biggest process, never its init: out of its
	 * reach where this host grants CAP_SYS_RESOURCE, and everything else in the
	 * sandbox is made a likelier victim (exec_agent) where it does not. */
	int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
	if (oom >= 0) {
		(void)!write(oom, "-1000", 5);
		close(oom);
	}

	if (net && !host_netns)
		fail(EINVAL, "--net needs --host-netns");
	char resolv[512];
	ssize_t resolv_len = 0;
	if (net) {
		net_setup(dir, net, host_netns);
		resolv_len = read_resolv(dir, resolv, sizeof(resolv));
	}

	char p[4200], root[4200], rw[4200], lower[4200], opts[13000];
	mount_or_fail(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
	/* The parent's root (/proc/PID/root) is reached through the host's /proc. */
	int parent_root = parent_root_path ? open(parent_root_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	/* The host's /proc shows host pids; the user namespace's helper is known by ours. */
	mount_or_fail("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	pathf(root, sizeof(root), "%s/root", dir);
	pathf(rw, sizeof(rw), "%s/.rw", dir);
	pathf(lower, sizeof(lower), "%s/.lower", dir);
	/* A parent's image is copied as it is: the child keeps the parent's quota. */
	struct stat cst;
	bool copy_img = copy_from && stat(copy_from, &cst) == 0 && S_ISREG(cst.st_mode);
	char layer[4200], disk[4200], rwdisk[4200];
	pathf(layer, sizeof(layer), "%s", dir);
	if (disk_mib || copy_img) {
		pathf(disk, sizeof(disk), "%s/.disk", dir);
		mount_disk(dir, disk, disk_mib, copy_img ? copy_from : NULL, settled, parent_root);
		pathf(layer, sizeof(layer), "%s", disk);
	}
	/* It would pin the parent's mounts for as long as this sandbox lives. */
	if (parent_root >= 0)
		close(parent_root);
	if (copy_from && !copy_img) {
		pathf(p, sizeof(p), "%s/upper", layer);
		copy_layer(copy_from, p);
	}
	pathf(p, sizeof(p), "%s/upper", layer);
	disk_tmp(p);
	int userns = make_userns(base);
	idmapped_bind(template_root, lower, userns);
	idmapped_bind(dir, rw, userns);
	pathf(rwdisk, sizeof(rwdisk), "%s", rw);
	if (strcmp(layer, dir)) {
		pathf(rwdisk, sizeof(rwdisk), "%s/.rwdisk", dir);
		idmapped_bind(layer, rwdisk, userns);
	}
	pathf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, rwdisk, rwdisk);
	/* overlayfs creates its work files and copies up with its mounter's credentials:
	 * they must map through the idmapped upper, so the mount is made as the sandbox's
	 * root on the file system (fsuid, fsgid), with every capability kept. */
	set_fsids(base);
	mount_or_fail("overlay", root, "overlay", 0, opts);
	set_fsids(0);

	mount_proc_sys(root);
	own_boot_id(dir, root);
	char tmpopts[96];
	snprintf(tmpopts, sizeof(tmpopts), "mode=0755,uid=%lu,gid=%lu", base, base);
	fresh_dir(p, sizeof(p), root, "run", 0755);
	mount_or_fail("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, tmpopts);
	pathf(p, sizeof(p), "%s" SANDBOX_RUN, root);
	mkdir(p, 0755);
	char run[4200];
	pathf(run, sizeof(run), "%s/run", rw);
	mount_or_fail(run, p, NULL, MS_BIND, NULL);
	mount_dev(root, base);
	sudo_by_agent(root);
	if (helper) {
		pathf(p, sizeof(p), "%s/run/mitos_kernel.py", dir);
		copy_file(helper, p);
		/* the JavaScript kernel lives beside it */
		char js[4200];
		const char *slash = strrchr(helper, '/');
		pathf(js, sizeof(js), "%.*s/mitos_kernel.js", slash ? (int)(slash - helper) : 1, slash ? helper : ".");
		pathf(p, sizeof(p), "%s/run/mitos_kernel.js", dir);
		copy_file(js, p);
	}

	if (sethostname(id, strlen(id)) < 0)
		fail(errno, "sethostname");
	loopback_up();
	if (chdir(root) < 0)
		fail(errno, "chdir %s", root);
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		fail(errno, "pivot_root");
	if (umount2(".", MNT_DETACH) < 0)
		fail(errno, "detach the old root");
	if (chdir("/") < 0)
		fail(errno, "chdir /");
	if (net)
		install_resolv(resolv, resolv_len, base);
	/* The template is the host's own root for now: hide what is the server's. After
	 * pivot_root, so that a symlink a parent sandbox left resolves inside. */
	struct stat st;
	for (int i = 0; i < nhide; i++) {
		if (lstat(hide[i], &st) < 0)
			continue;
		if (S_ISDIR(st.st_mode))
			mount_or_fail("tmpfs", hide[i], "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
				      "size=4k,mode=0755");
		else if (S_ISREG(st.st_mode))
			mount_or_fail("/dev/null", hide[i], NULL, MS_BIND, NULL);
	}

	int logw = start_log_copier();
	own_uptime();
	pid_t agent = fork();
	if (agent < 0)
		fail(errno, "fork the agent");
	if (agent == 0) {
		dup2(logw, 1);
		dup2(logw, 2);
		exec_agent(id, userns, helper != NULL);
	}
	close(logw);
	close(userns);
	close(AGENT_FD);
	wait_ready(agent);
	/* Before serve is told: no command has run in the sandbox yet. EBUSY while a write
	 * on the mount is still in progress (the agent's socket moving into place, a
	 * stale one of a copied sandbox going): again, for up to a second. */
	for (int i = 0; mount(NULL, SANDBOX_RUN, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV |
			      MS_NOEXEC, NULL) < 0; i++) {
		if (errno != EBUSY || i == 200)
			fail(errno, "mount (remount) read-only on %s", SANDBOX_RUN);
		usleep(5000);
	}
	(void)!write(READY_FD, "R", 1);
	close(READY_FD);
	drop_everything();
	/* PID 1: reap everything; go when the agent goes (the kernel then kills whatever
	 * is left in the namespace), saying why in start-error, which serve logs and keeps
	 * as the sandbox's end. The file is only ever reached through this descriptor. */
	for (;;) {
		int wst;
		pid_t w = wait(&wst);
		if (w == agent) {
			say_end(wst);
			_exit(WIFEXITED(wst) ? WEXITSTATUS(wst) : 128 + WTERMSIG(wst));
		}
		if (w < 0 && errno == ECHILD)
			_exit(0);
	}
}
