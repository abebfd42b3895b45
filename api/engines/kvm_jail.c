#include "api/engines/kvm_jail.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/mount.h>
#include <linux/securebits.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/pidfd.h"

#ifndef MNT_DETACH
#define MNT_DETACH 2 /* <sys/mount.h>, which cannot be included beside <linux/mount.h> */
#endif
/* How long jail_bind_more waits for a VM just started to be in its jail: generous, for
 * hosts where a process start is slow (emulation, a loaded machine). */
#define JAIL_ENTER_MS 10000

/* What every jail holds of the host, found once at start: the VMM binary, its dynamic
 * loader and libraries (each opened then, so every VM gets the very files serve started
 * with, whatever a package upgrade renames over them later) and the loader's cache, at
 * their own paths; and the top-level links the loader's names go through (/lib64 ->
 * usr/lib64 on merged-/usr systems), recreated as links. */
static struct {
	char mnt[JAIL_PLEN];
	unsigned nsys, nlink;
	int sysfd; /* serve's directory of what the VMs are given, while jail_init fills it */
	struct {
		char at[JAIL_PLEN]; /* no link in it: mount points are made along it */
		int fd;             /* O_PATH */
	} sys[JAIL_SYS_MAX];
	char link_name[4][16], link_to[4][JAIL_PLEN];
} S;

static _Atomic unsigned next_uid;
static _Atomic bool lease_warned;
static uint32_t uid_base = JAIL_UID_BASE;

void jail_set_uid_base(uint32_t base)
{
	uid_base = base;
}

uint32_t jail_uid_base(void)
{
	return uid_base;
}

/* A user or group of this host in [uid_base, uid_base + JAIL_UIDS]: its files would be
 * a VM's. The name into who, or "" if none. */
static void range_taken(char *who, size_t wholen)
{
	who[0] = 0;
	struct passwd *pw;
	setpwent();
	while (!who[0] && (pw = getpwent()))
		if (pw->pw_uid >= uid_base && pw->pw_uid - uid_base <= JAIL_UIDS)
			snprintf(who, wholen, "user %s (uid %u)", pw->pw_name, (unsigned)pw->pw_uid);
	endpwent();
	struct group *gr;
	setgrent();
	while (!who[0] && (gr = getgrent()))
		if (gr->gr_gid >= uid_base && gr->gr_gid - uid_base <= JAIL_UIDS)
			snprintf(who, wholen, "group %s (gid %u)", gr->gr_name, (unsigned)gr->gr_gid);
	endgrent();
}

/* f's contents into a new file name in dfd (mode 0555). 0 or -errno. */
static int copy_into(int f, int dfd, const char *name)
{
	int out = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0555);
	if (out < 0)
		return -errno;
	/* copy_file_range shares blocks where the file system can (xfs, btrfs); between file
	 * systems of different kinds it may refuse, and sendfile copies. */
	ssize_t n;
	bool copied = false;
	while ((n = copy_file_range(f, NULL, out, NULL, 1 << 30, 0)) > 0)
		copied = true;
	if (n < 0 && !copied && (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS))
		while ((n = sendfile(out, f, NULL, 1 << 30)) > 0)
			;
	int rc = n < 0 ? -errno : 0;
	close(out);
	return rc;
}

/* Adds a file every jail holds: at = its directory's real path and its own name (the
 * name the loader asks for, the loader's cache). What is mounted is a copy taken now in
 * serve's own directory: a file renamed over the host's later (a package upgrade) changes
 * nothing for VMs of this serve, and a deleted file could not be mounted. A hard link
 * would be cheaper, and would hand the host's own file to whatever changes the state
 * dir (a chown -R of it would chown libc). */
static int add_sys(const char *name, struct mitos_err *e)
{
	char dir[JAIL_PLEN], at[JAIL_PLEN], dreal[PATH_MAX], real[PATH_MAX];
	const char *base = strrchr(name, '/');
	if (!base || base == name || (size_t)(base - name) >= sizeof(dir))
		return mitos_err_set(e, -EINVAL, "%.200s is not an absolute path to a file in a directory", name);
	memcpy(dir, name, (size_t)(base - name));
	dir[base - name] = 0;
	if (!realpath(dir, dreal) || !realpath(name, real))
		return mitos_err_set(e, -errno, "cannot find %.200s: %s", name, strerror(errno));
	if (snprintf(at, sizeof(at), "%s%s", strcmp(dreal, "/") ? dreal : "", base) >= (int)sizeof(at))
		return mitos_err_set(e, -ENAMETOOLONG, "%.200s: path too long", name);
	for (unsigned i = 0; i < S.nsys; i++)
		if (!strcmp(S.sys[i].at, at))
			return 0;
	if (S.nsys >= JAIL_SYS_MAX)
		return mitos_err_set(e, -E2BIG, "the VMM needs more than %d files of the host", JAIL_SYS_MAX);
	char mine[16];
	snprintf(mine, sizeof(mine), "%u", S.nsys);
	int src = open(real, O_RDONLY | O_CLOEXEC), rc = 0;
	struct stat st;
	if (src < 0 || fstat(src, &st) < 0)
		rc = -errno;
	else if (!S_ISREG(st.st_mode))
		rc = -EINVAL;
	else
		rc = copy_into(src, S.sysfd, mine);
	if (src >= 0)
		close(src);
	int fd = rc ? -1 : openat(S.sysfd, mine, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (rc || fd < 0)
		return mitos_err_set(e, rc ? rc : -errno, "cannot keep %.200s for the VMs: %s", real,
				     rc == -EINVAL ? "not a regular file" : strerror(rc ? -rc : errno));
	strcpy(S.sys[S.nsys].at, at);
	S.sys[S.nsys++].fd = fd;
	return 0;
}

/* Empties (or makes) dir, serve's own, for the files the VMs are given. */
static int open_sysdir(const char *dir, struct mitos_err *e)
{
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return mitos_err_set(e, -errno, "cannot create %.200s: %s", dir, strerror(errno));
	S.sysfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *d = S.sysfd < 0 ? NULL : fdopendir(dup(S.sysfd));
	if (!d)
		return mitos_err_set(e, -errno, "cannot open %.200s: %s", dir, strerror(errno));
	struct dirent *de;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			unlinkat(S.sysfd, de->d_name, 0);
	closedir(d);
	return 0;
}

/* exe's program interpreter (PT_INTERP) into interp, or "" for a static executable. */
static int read_interp(const char *exe, char *interp, size_t len, struct mitos_err *e)
{
	interp[0] = 0;
	int fd = open(exe, O_RDONLY | O_CLOEXEC);
	Elf64_Ehdr eh;
	int rc = 0;
	if (fd < 0 || pread(fd, &eh, sizeof(eh), 0) != (ssize_t)sizeof(eh) || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > 256)
		rc = mitos_err_set(e, fd < 0 ? -errno : -ENOEXEC, "cannot read %.200s as a 64-bit ELF executable: %s",
				   exe, fd < 0 ? strerror(errno) : "not one");
	for (unsigned i = 0; !rc && i < eh.e_phnum; i++) {
		Elf64_Phdr ph;
		if (pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + i * sizeof(ph))) != (ssize_t)sizeof(ph)) {
			rc = mitos_err_set(e, -ENOEXEC, "%.200s: truncated program headers", exe);
		} else if (ph.p_type == PT_INTERP) {
			if (ph.p_filesz < 2 || ph.p_filesz > len ||
			    pread(fd, interp, ph.p_filesz, (off_t)ph.p_offset) != (ssize_t)ph.p_filesz ||
			    interp[ph.p_filesz - 1] != 0 || interp[0] != '/')
				rc = mitos_err_set(e, -ENOEXEC, "%.200s: a bad program interpreter", exe);
			break;
		}
	}
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Every library exe loads, as its loader resolves them here (`ld.so --list`, what ldd
 * runs; nothing of exe runs), into the jail's files. */
static int add_libraries(const char *exe, const char *interp, struct mitos_err *e)
{
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return mitos_err_set(e, -errno, "pipe: %s", strerror(errno));
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
	char *argv[] = { (char *)interp, "--list", (char *)exe, NULL };
	extern char **environ;
	pid_t pid;
	int rc = posix_spawn(&pid, interp, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	if (rc) {
		close(pipefd[0]);
		return mitos_err_set(e, -rc, "cannot run %.200s to list the libraries of %.200s: %s", interp, exe,
				     strerror(rc));
	}
	static char out[16384];
	size_t n = 0;
	ssize_t r;
	while (n < sizeof(out) - 1 && (r = read(pipefd[0], out + n, sizeof(out) - 1 - n)) != 0)
		if (r > 0)
			n += (size_t)r;
		else if (errno != EINTR)
			break;
	out[n] = 0;
	close(pipefd[0]);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(st) || WEXITSTATUS(st) || n == sizeof(out) - 1)
		return mitos_err_set(e, -ENOEXEC, "%.200s --list %.200s failed (status %d): %.200s", interp, exe, st,
				     out);
	/* "\tlibev.so.4 => /lib/x86_64-linux-gnu/libev.so.4 (0x...)", "\t/lib64/ld-linux-x86-64.so.2
	 * (0x...)", "\tlinux-vdso.so.1 (0x...)" (the kernel's, not a file). */
	for (char *save = NULL, *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		line += strspn(line, " \t");
		char *arrow = strstr(line, " => ");
		char *path = arrow ? arrow + 4 : line;
		if (arrow && !strncmp(path, "not found", 9))
			return mitos_err_set(e, -ENOENT, "%.200s needs %.*s, which the dynamic loader does not find",
					     exe, (int)(arrow - line), line);
		char *end = strstr(path, " (0x");
		if (path[0] != '/' || !end)
			continue;
		*end = 0;
		if ((rc = add_sys(path, e)))
			return rc;
	}
	return 0;
}

int jail_init(const char *mountpoint, const char *exe, struct mitos_err *e)
{
	for (unsigned i = 0; i < S.nsys; i++)
		close(S.sys[i].fd);
	memset(&S, 0, sizeof(S));
	S.sysfd = -1;
	char who[300];
	if (uid_base == 0 || uid_base > UINT32_MAX - JAIL_UIDS - 1)
		return mitos_err_set(e, -ERANGE, "the VM uid range %u..%u does not fit below 2^32-1 (or starts at "
				     "root)", uid_base, uid_base + JAIL_UIDS);
	range_taken(who, sizeof(who));
	if (who[0])
		return mitos_err_set(e, -EEXIST, "the VM uid range %u..%u holds this host's %s: pick another with "
				     "--vm-uid-base", uid_base, uid_base + JAIL_UIDS, who);
	if (strlen(mountpoint) >= sizeof(S.mnt) || mountpoint[0] != '/')
		return mitos_err_set(e, -ENAMETOOLONG, "the jail's mount point %.200s is not an absolute path that "
				     "fits", mountpoint);
	if (mkdir(mountpoint, 0755) < 0 && errno != EEXIST)
		return mitos_err_set(e, -errno, "cannot create %.200s: %s", mountpoint, strerror(errno));
	strcpy(S.mnt, mountpoint);
	char real[JAIL_PLEN], interp[JAIL_PLEN], sysdir[JAIL_PLEN + 8];
	if (!realpath(exe, real))
		return mitos_err_set(e, -errno, "cannot find %.200s: %s", exe, strerror(errno));
	snprintf(sysdir, sizeof(sysdir), "%s-files", mountpoint);
	int rc = open_sysdir(sysdir, e);
	if (!rc)
		rc = add_sys(real, e);
	if (!rc)
		rc = read_interp(real, interp, sizeof(interp), e);
	if (!rc && interp[0])
		rc = add_libraries(real, interp, e);
	if (!rc && interp[0] && access("/etc/ld.so.cache", R_OK) == 0)
		rc = add_sys("/etc/ld.so.cache", e);
	/* The copies are kept open by S.sys[].fd; their directory is not needed again. */
	if (S.sysfd >= 0)
		close(S.sysfd);
	S.sysfd = -1;
	if (rc)
		return rc;
	static const char *const tops[] = { "lib", "lib32", "lib64", "libx32" };
	for (size_t i = 0; i < sizeof(tops) / sizeof(tops[0]); i++) {
		char host[16];
		snprintf(host, sizeof(host), "/%s", tops[i]);
		struct stat st;
		if (lstat(host, &st) < 0 || !S_ISLNK(st.st_mode))
			continue;
		ssize_t n = readlink(host, S.link_to[S.nlink], JAIL_PLEN - 1);
		if (n <= 0)
			continue;
		S.link_to[S.nlink][n] = 0;
		strcpy(S.link_name[S.nlink++], host);
	}
	/* Anywhere in the range: VMs a previous serve left running (re-adopted) are
	 * unlikely to share a uid with the next ones. */
	unsigned seed = 0;
	if (getrandom(&seed, sizeof(seed), 0) == sizeof(seed))
		atomic_store(&next_uid, seed % JAIL_UIDS);
	return 0;
}

int jail_system_open(struct jail_system *sys, struct mitos_err *e)
{
	sys->n = 0;
	for (unsigned i = 0; i < S.nsys; i++) {
		int fd = (int)syscall(SYS_open_tree, S.sys[i].fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH);
		struct mount_attr a = { .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV };
		if (fd < 0 || syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &a, sizeof(a)) < 0) {
			int rc = mitos_err_set(e, -errno, "cannot copy the mount of %.300s for a VM: %s", S.sys[i].at,
					       strerror(errno));
			if (fd >= 0)
				close(fd);
			jail_system_close(sys);
			return rc;
		}
		sys->fd[sys->n++] = fd;
	}
	return 0;
}

void jail_system_close(struct jail_system *sys)
{
	for (unsigned i = 0; i < sys->n; i++)
		close(sys->fd[i]);
	sys->n = 0;
}

const char *jail_exe(void)
{
	return S.sys[0].at;
}

void jail_new(struct jail *j)
{
	memset(j, 0, sizeof(*j));
	j->uid = uid_base + 1 + atomic_fetch_add(&next_uid, 1) % JAIL_UIDS;
	j->gid = uid_base;
}

int jail_add(struct jail *j, const char *path, bool rw)
{
	if (j->n >= JAIL_MAX_PATHS)
		return -E2BIG;
	if (path[0] != '/' || strlen(path) >= JAIL_PLEN || strlen(S.mnt) + strlen(path) >= 2 * JAIL_PLEN)
		return -ENAMETOOLONG;
	struct stat st;
	if (stat(path, &st) < 0)
		return -errno;
	struct jail_path *p = &j->p[j->n++];
	strcpy(p->path, path);
	p->rw = rw;
	p->dir = S_ISDIR(st.st_mode);
	return 0;
}

int jail_give(const struct jail *j, const char *path)
{
	return lchown(path, j->uid, j->gid) < 0 ? -errno : 0;
}

/* ---- in the child: raw system calls, no allocation ---- */

static __attribute__((noreturn)) void die(const char *what, const char *path)
{
	static const char pre[] = "mitos-vmm serve: cannot jail a VM process: ";
	syscall(SYS_write, 2, pre, sizeof(pre) - 1);
	syscall(SYS_write, 2, what, strlen(what));
	if (path) {
		syscall(SYS_write, 2, " ", 1);
		syscall(SYS_write, 2, path, strlen(path));
	}
	syscall(SYS_write, 2, "\n", 1);
	syscall(SYS_exit_group, 127);
	__builtin_unreachable();
}

/* Makes every directory above path (inside the jail) and path itself, a directory or
 * an empty file: a mount point. 0 or -errno. */
static int make_mount_point(const char *path, bool dir)
{
	char t[2 * JAIL_PLEN];
	size_t n = strlen(path);
	if (n >= sizeof(t))
		return -ENAMETOOLONG;
	memcpy(t, path, n + 1);
	for (size_t i = 1; i < n; i++) {
		if (t[i] != '/')
			continue;
		t[i] = 0;
		if (syscall(SYS_mkdir, t, 0755) < 0 && errno != EEXIST)
			return -errno;
		t[i] = '/';
	}
	if (dir)
		return syscall(SYS_mkdir, t, 0755) < 0 && errno != EEXIST ? -errno : 0;
	/* There already (one of the VMM's files, or mounted before): mounted on as it is;
	 * opening it to create it would fail on a read-only mount. */
	if (syscall(SYS_faccessat, AT_FDCWD, t, F_OK) == 0)
		return 0;
	long fd = syscall(SYS_openat, AT_FDCWD, t, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return -errno;
	syscall(SYS_close, fd);
	return 0;
}

/* t = the jail's mount point, then tail (both fit: jail_init and jail_add checked). */
static void in_root(char t[2 * JAIL_PLEN], const char *tail)
{
	size_t a = strlen(S.mnt), b = strlen(tail);
	memcpy(t, S.mnt, a);
	memcpy(t + a, tail, b + 1);
}

int jail_drop_capabilities(bool stays_root)
{
	/* Past the last capability this kernel knows, PR_CAPBSET_DROP fails harmlessly. */
	for (int cap = 0; cap < 64; cap++)
		syscall(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0);
	unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED |
			     SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED |
			     (stays_root ? SECBIT_NO_SETUID_FIXUP : 0);
	long r = syscall(SYS_prctl, PR_SET_SECUREBITS, bits, 0, 0, 0);
	syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	return r < 0 ? -1 : 0;
}

static void bind_into_root(const struct jail_path *p)
{
	char t[2 * JAIL_PLEN];
	in_root(t, p->path);
	if (make_mount_point(t, p->dir) < 0)
		die("cannot make a mount point for", p->path);
	if (syscall(SYS_mount, p->path, t, NULL, MS_BIND, NULL) < 0)
		die("cannot bind", p->path);
	unsigned long fl = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC | (p->rw ? 0 : MS_RDONLY);
	if (syscall(SYS_mount, NULL, t, NULL, fl, NULL) < 0)
		die("cannot make read-only or nosuid", p->path);
}

void jail_enter(const struct jail *j, const struct jail_system *sys)
{
	char t[2 * JAIL_PLEN];
	/* Root's own, a handful of inodes: the VM's uid can make nothing in it. */
	if (syscall(SYS_mount, "tmpfs", S.mnt, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=512") < 0)
		die("cannot mount its root on", S.mnt);
	if (sys->n != S.nsys)
		die("was not given the VMM's files", NULL);
	for (unsigned i = 0; i < S.nsys; i++) {
		in_root(t, S.sys[i].at);
		if (make_mount_point(t, false) < 0 ||
		    syscall(SYS_move_mount, sys->fd[i], "", AT_FDCWD, t, MOVE_MOUNT_F_EMPTY_PATH) < 0)
			die("cannot mount", S.sys[i].at);
	}
	for (unsigned i = 0; i < S.nlink; i++) {
		in_root(t, S.link_name[i]);
		if (syscall(SYS_symlinkat, S.link_to[i], AT_FDCWD, t) < 0)
			die("cannot link", S.link_name[i]);
	}
	for (unsigned i = 0; i < j->n; i++)
		bind_into_root(&j->p[i]);
	/* Its own pid namespace's /proc (/proc/self/pagemap for snapshots), read-only: a
	 * sysctl is writable by file mode alone, which a uid-0 process without
	 * capabilities would pass. */
	in_root(t, "/proc");
	if (make_mount_point(t, true) < 0 ||
	    syscall(SYS_mount, "proc", t, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL) < 0)
		die("cannot mount", "/proc");
	/* Enter it, and leave nothing of the old root behind. */
	if (syscall(SYS_chdir, S.mnt) < 0 || syscall(SYS_pivot_root, ".", ".") < 0 ||
	    syscall(SYS_umount2, ".", MNT_DETACH) < 0 || syscall(SYS_chdir, "/") < 0)
		die("cannot pivot_root into", S.mnt);
	/* The change of uid that follows clears what is left. */
	if (jail_drop_capabilities(false) < 0)
		die("cannot lock its securebits", NULL);
	if (syscall(SYS_setgroups, 0, NULL) < 0 || syscall(SYS_setresgid, j->gid, j->gid, j->gid) < 0 ||
	    syscall(SYS_setresuid, j->uid, j->uid, j->uid) < 0)
		die("cannot take its uid", NULL);
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2] = { 0 };
	if (syscall(SYS_capset, &h, d) < 0)
		die("cannot clear its capabilities", NULL);
}

/* ---- later mounts ---- */

struct more_ctx {
	int pidfd;
	const struct jail *more;
	const int *fds;
	const struct stat *src; /* what each fd's tree is (its root's device and inode) */
	dev_t host_root;        /* serve's root's device */
	int step, err;          /* what failed: -1 setns, -2 not in its jail yet, else the path's index */
};

/* In a child sharing serve's memory (serve waits: vfork): enters the VM's mount
 * namespace, whose root is the jail's, and attaches the detached copies there. */
static int more_child(void *arg)
{
	struct more_ctx *c = arg;
	if (syscall(SYS_setns, c->pidfd, CLONE_NEWNS) < 0) {
		c->step = -1;
		c->err = errno;
		return 1;
	}
	/* A VM just cloned may still be on its way into its jail: what were mounted now
	 * would land in the old root, which pivot_root then drops. */
	struct statx root;
	if (syscall(SYS_statx, AT_FDCWD, "/", 0, STATX_BASIC_STATS, &root) < 0 ||
	    makedev(root.stx_dev_major, root.stx_dev_minor) == c->host_root) {
		c->step = -2;
		c->err = EAGAIN;
		return 1;
	}
	for (unsigned i = 0; i < c->more->n; i++) {
		const struct jail_path *p = &c->more->p[i];
		/* Mounted there already and still the same object: nothing to do. A different
		 * one (a template deleted and built again under its name while a prepared VM
		 * held the old one) is covered by the new mount. */
		struct statx sx;
		if (syscall(SYS_statx, AT_FDCWD, p->path, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &sx) == 0 &&
		    (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) &&
		    sx.stx_ino == c->src[i].st_ino && makedev(sx.stx_dev_major, sx.stx_dev_minor) == c->src[i].st_dev)
			continue;
		int r = make_mount_point(p->path, p->dir);
		if (r == 0 && syscall(SYS_move_mount, c->fds[i], "", AT_FDCWD, p->path, MOVE_MOUNT_F_EMPTY_PATH) < 0)
			r = -errno;
		if (r) {
			c->step = (int)i;
			c->err = -r;
			return 1;
		}
	}
	return 0;
}

int jail_bind_more(int pidfd, const struct jail *more, struct mitos_err *e)
{
	int fds[JAIL_MAX_PATHS];
	struct stat src[JAIL_MAX_PATHS];
	unsigned n = 0;
	int rc = 0;
	for (; n < more->n; n++) {
		const struct jail_path *p = &more->p[n];
		fds[n] = (int)syscall(SYS_open_tree, AT_FDCWD, p->path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
		struct mount_attr a = { .attr_set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC |
						    (p->rw ? 0 : MOUNT_ATTR_RDONLY) };
		if (fds[n] < 0 || syscall(SYS_mount_setattr, fds[n], "", AT_EMPTY_PATH, &a, sizeof(a)) < 0 ||
		    fstat(fds[n], &src[n]) < 0) {
			rc = mitos_err_set(e, -errno, "cannot copy the mount of %.300s for a VM: %s", p->path,
					   strerror(errno));
			if (fds[n] >= 0)
				close(fds[n]);
			break;
		}
	}
	struct stat host_root;
	if (!rc && stat("/", &host_root) < 0)
		rc = mitos_err_set(e, -errno, "cannot stat /: %s", strerror(errno));
	size_t stack_size = 64 * 1024;
	char *stack = rc ? NULL : malloc(stack_size);
	if (!rc && !stack)
		rc = mitos_err_set(e, -ENOMEM, "out of memory");
	/* Until the VM is in its jail (a few ms after its clone), or for JAIL_ENTER_MS. */
	uint64_t give_up = mono_ms() + JAIL_ENTER_MS;
	while (stack) {
		struct more_ctx c = { .pidfd = pidfd, .more = more, .fds = fds, .src = src, .host_root = host_root.st_dev };
		pid_t pid = clone(more_child, stack + stack_size, CLONE_VM | CLONE_VFORK | SIGCHLD, &c);
		int st = 0;
		if (pid < 0) {
			rc = mitos_err_set(e, -errno, "cannot start the helper that mounts into a VM's root: %s",
					   strerror(errno));
		} else if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
			rc = c.err ? -c.err : -EIO;
			if (c.step == -2 && mono_ms() < give_up && !pidfd_exited(pidfd)) {
				usleep(1000);
				continue;
			}
			if (c.step == -2 && pidfd_exited(pidfd))
				mitos_err_set(e, rc, "the VM process exited before it was in its jail (its console "
					      "says why)");
			else if (c.step == -2)
				mitos_err_set(e, rc, "the VM did not enter its jail within %d ms", JAIL_ENTER_MS);
			else if (c.step < 0)
				mitos_err_set(e, rc, "cannot enter the VM's mount namespace: %s", strerror(-rc));
			else
				mitos_err_set(e, rc, "cannot mount %.300s into the VM's root: %s", more->p[c.step].path,
					      strerror(-rc));
		} else {
			rc = 0;
		}
		break;
	}
	free(stack);
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
	return rc;
}

int jail_claim(const char *from, const char *to, mode_t type, struct mitos_err *e)
{
	struct stat st;
	if (rename(from, to) < 0 || lstat(to, &st) < 0)
		return mitos_err_set(e, -errno, "cannot move %.200s to %.200s: %s", from, to, strerror(errno));
	if ((st.st_mode & S_IFMT) != type) {
		/* Back where it came from (gone with the VM's directory), never kept in ours. */
		if (rename(to, from) < 0)
			unlink(to);
		return mitos_err_set(e, -EPERM, "the VM left something else than it should in %.300s", from);
	}
	return 0;
}

/* Whether anything still holds name (in dfd) open for writing: a descriptor, a shared
 * mapping, a file in an io_uring's table. The kernel grants a read lease only on a file
 * nobody has open for writing. 0: nobody; -EBUSY: someone; 1: the file system or a
 * sysctl (fs.leases-enable) refuses leases, so this cannot tell. */
static int open_for_writing(int dfd, const char *name)
{
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = 0;
	if (fcntl(fd, F_SETLEASE, F_RDLCK) < 0)
		r = errno == EAGAIN ? -EBUSY : 1;
	else
		fcntl(fd, F_SETLEASE, F_UNLCK);
	close(fd);
	return r;
}

int jail_seal(const char *dir, struct mitos_err *e)
{
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	/* First the directory: from here on the VM can add or rename nothing in it. */
	if (dfd < 0 || fchown(dfd, 0, 0) < 0 || fchmod(dfd, 0755) < 0) {
		int rc = mitos_err_set(e, -errno, "cannot seal the snapshot %.300s: %s", dir, strerror(errno));
		if (dfd >= 0)
			close(dfd);
		return rc;
	}
	int rc = 0, w;
	DIR *d = fdopendir(dup(dfd));
	struct dirent *de;
	while (d && !rc && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		struct stat st;
		if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			rc = -errno;
		} else if (!S_ISREG(st.st_mode)) {
			rc = mitos_err_set(e, -EPERM, "the snapshot %.300s holds %.100s, which is not a regular file: "
					   "the VM that wrote it is not trusted", dir, de->d_name);
		} else if (fchownat(dfd, de->d_name, 0, 0, AT_SYMLINK_NOFOLLOW) < 0 ||
			   fchmodat(dfd, de->d_name, 0444, 0) < 0) {
			rc = -errno;
		} else if ((w = open_for_writing(dfd, de->d_name)) == -EBUSY) {
			/* Root's and 0444 now, so it cannot be opened for writing again: what
			 * holds it writable now is all there is, and the VM keeps running. */
			rc = mitos_err_set(e, -EPERM, "the VM that wrote the snapshot %.300s still holds %.100s open "
					   "for writing: it is not trusted", dir, de->d_name);
		} else if (w < 0) {
			rc = w;
		} else if (w > 0 && !atomic_exchange(&lease_warned, true)) {
			fprintf(stderr, "mitos-vmm serve: the file system of %s grants no leases: a VM that kept a "
				"file of its snapshot open for writing cannot be detected\n", dir);
		}
		if (rc && rc != -EPERM)
			mitos_err_set(e, rc, "cannot seal %.300s/%.100s: %s", dir, de->d_name, strerror(-rc));
	}
	if (!d) {
		rc = mitos_err_set(e, -errno, "cannot read the snapshot %.300s: %s", dir, strerror(errno));
	} else {
		closedir(d);
	}
	close(dfd);
	return rc;
}
