/* The jail of a VM process (api/engines/kvm_jail.c), tried from inside one: a process
 * jailed as serve jails mitos-vmm checks what it is (its uid, no capability) and what
 * it can reach (what it was given, read-only where asked; nothing else of the host;
 * no sysctl, no mount), then what is mounted into it while it runs. Root only (the
 * jail needs namespaces and mounts): skipped otherwise. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/engines/kvm_jail.h"

extern char **environ;
static const char *vmm_path, *static_path;

static char T[128];
static char path_ro[256], path_rw[256], path_secret[256], path_late[256], mnt[256];

static void put(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static void setup(void)
{
	snprintf(T, sizeof(T), "/tmp/mitos-jail-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(T));
	chmod(T, 0700);
	char p[300];
	snprintf(path_ro, sizeof(path_ro), "%s/ro", T);
	snprintf(path_rw, sizeof(path_rw), "%s/rw", T);
	snprintf(path_secret, sizeof(path_secret), "%s/secret", T);
	snprintf(path_late, sizeof(path_late), "%s/late", T);
	snprintf(mnt, sizeof(mnt), "%s/jail", T);
	ck_assert_int_eq(mkdir(path_ro, 0755), 0);
	snprintf(p, sizeof(p), "%s/f", path_ro);
	put(p, "hello", 0644);
	ck_assert_int_eq(mkdir(path_rw, 0700), 0);
	ck_assert_int_eq(mkdir(path_late, 0755), 0);
	snprintf(p, sizeof(p), "%s/f", path_late);
	put(p, "later", 0644);
	put(path_secret, "token", 0644);
	struct mitos_err e = { 0 };
	ck_assert_msg(jail_init(mnt, vmm_path ? vmm_path : "/bin/true", &e) == 0, "%s", e.msg);
}

static void cleanup(void)
{
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", T);
	ck_assert_int_eq(system(cmd), 0);
}

/* ---- the jailed child: each check one line on fd 1 of the pipe, "ok" or why not ---- */

static int out_fd, go_fd;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char b[400];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof(b) - 1, fmt, ap);
	va_end(ap);
	b[n] = '\n';
	(void)!write(out_fd, b, (size_t)n + 1);
}

static void expect(bool ok, const char *what)
{
	say("%s %s (errno %d)", ok ? "ok" : "FAIL", what, errno);
}

static uint64_t status_field(const char *name)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	uint64_t v = UINT64_MAX;
	size_t n = strlen(name);
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, name, n) && line[n] == ':')
			v = strtoull(line + n + 1, NULL, 16);
	if (f)
		fclose(f);
	return v;
}

static bool reads(const char *path, const char *want)
{
	char b[32] = "";
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, b, sizeof(b) - 1);
	close(fd);
	return n >= 0 && !strcmp(b, want);
}

/* What a child wrote to fd until it closed it, as a string (cut at len - 1); closes fd. */
static void read_to_end(int fd, char *buf, size_t len)
{
	size_t n = 0;
	ssize_t r;
	while (n < len - 1 && (r = read(fd, buf + n, len - 1 - n)) > 0)
		n += (size_t)r;
	buf[n] = 0;
	close(fd);
}

/* A child in new mount and pid namespaces, as serve starts a VM process: its pid (0 in
 * the child), its pidfd in *pidfd. */
static long clone_into_namespaces(int *pidfd)
{
	struct clone_args ca = { .flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_PIDFD,
				 .pidfd = (uint64_t)(uintptr_t)pidfd, .exit_signal = SIGCHLD };
	long pid = syscall(SYS_clone3, &ca, sizeof(ca));
	ck_assert_int_ge(pid, 0);
	return pid;
}

static void jailed(const struct jail *j, const struct jail_system *sys)
{
	if (syscall(SYS_mount, NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		_exit(2);
	jail_enter(j, sys);
	char p[300];
	expect(getuid() == j->uid && geteuid() == j->uid, "runs as the jail's uid");
	expect(getgid() == j->gid && getgroups(0, NULL) == 0, "runs as the jail's group and no other");
	expect(status_field("CapEff") == 0 && status_field("CapPrm") == 0 && status_field("CapBnd") == 0 &&
		       status_field("CapInh") == 0 && status_field("CapAmb") == 0,
	       "holds no capability, bounding set empty");
	snprintf(p, sizeof(p), "%s/f", path_ro);
	expect(reads(p, "hello"), "reads what it was given");
	errno = 0;
	expect(open(p, O_WRONLY) < 0 && errno == EROFS, "cannot write what it was given read-only");
	snprintf(p, sizeof(p), "%s/mine", path_rw);
	int fd = open(p, O_WRONLY | O_CREAT, 0600);
	expect(fd >= 0, "writes in its own directory");
	if (fd >= 0)
		close(fd);
	struct stat st;
	errno = 0;
	expect(stat(path_secret, &st) < 0 && errno == ENOENT, "sees nothing of the host it was not given");
	errno = 0;
	expect(stat("/etc/passwd", &st) < 0 && stat("/root", &st) < 0 && stat("/dev/kvm", &st) < 0 &&
		       stat("/sys/fs/cgroup", &st) < 0,
	       "has no /etc, /root, /dev or /sys");
	errno = 0;
	expect(open("/proc/sys/kernel/core_pattern", O_WRONLY) < 0, "cannot write a sysctl");
	errno = 0;
	expect(syscall(SYS_mount, "tmpfs", path_rw, "tmpfs", 0, NULL) < 0 && errno == EPERM, "cannot mount");
	errno = 0;
	expect(mkdir("/x", 0755) < 0, "cannot make anything in its root");
	errno = 0;
	expect(stat("/bin/sh", &st) < 0 && stat("/usr/share", &st) < 0 && stat("/usr/lib/os-release", &st) < 0,
	       "has no program or other file of the host's /usr");
	int sink[2]; /* what it prints (the version) is not read, and fits in the pipe */
	if (pipe(sink) < 0)
		_exit(4);
	pid_t pid = fork();
	if (pid == 0) {
		char *argv[] = { "vmm", "--version", NULL }, *envp[] = { NULL };
		dup2(sink[1], 1);
		execve(jail_exe(), argv, envp);
		_exit(99);
	}
	int wst = -1;
	waitpid(pid, &wst, 0);
	close(sink[0]);
	close(sink[1]);
	expect(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "executes the VMM: its loader and libraries are there");
	snprintf(p, sizeof(p), "%s", jail_exe());
	errno = 0;
	expect(open(p, O_WRONLY) < 0 && (errno == EACCES || errno == EROFS), "cannot write the VMM's binary");
	/* Now serve mounts more into it. */
	say("waiting");
	char c;
	if (read(go_fd, &c, 1) != 1)
		_exit(3);
	snprintf(p, sizeof(p), "%s/f", path_late);
	expect(reads(p, "later"), "reads a directory mounted in later");
	errno = 0;
	expect(open(p, O_WRONLY) < 0 && errno == EROFS, "cannot write what was mounted in later read-only");
	expect(reads(path_secret, "token"), "reads a file mounted in later (a disk image)");
	/* The host's directory is replaced under the same name (a template built again). */
	say("waiting");
	if (read(go_fd, &c, 1) != 1)
		_exit(3);
	expect(reads(p, "again"), "reads what replaced a directory mounted in before");
	say("done");
	_exit(0);
}

START_TEST(jailed_process_has_nothing_else)
{
	if (geteuid() != 0)
		return;
	struct jail j;
	jail_new(&j);
	ck_assert_uint_gt(j.uid, JAIL_UID_BASE);
	ck_assert_int_eq(jail_add(&j, path_ro, false), 0);
	ck_assert_int_eq(jail_add(&j, path_rw, true), 0);
	ck_assert_int_eq(jail_give(&j, path_rw), 0);
	/* Its own file, so that only the read-only mount stops a write. */
	char own[300];
	snprintf(own, sizeof(own), "%s/f", path_ro);
	ck_assert_int_eq(chown(own, j.uid, j.gid), 0);
	snprintf(own, sizeof(own), "%s/f", path_late);
	ck_assert_int_eq(chown(own, j.uid, j.gid), 0);
	int out[2], go[2];
	ck_assert_int_eq(pipe(out), 0);
	ck_assert_int_eq(pipe(go), 0);
	struct jail_system sys;
	struct mitos_err se = { 0 };
	ck_assert_msg(jail_system_open(&sys, &se) == 0, "%s", se.msg);
	int pidfd = -1;
	long pid = clone_into_namespaces(&pidfd);
	if (pid == 0) {
		close(out[0]);
		close(go[1]);
		out_fd = out[1];
		go_fd = go[0];
		jailed(&j, &sys);
	}
	jail_system_close(&sys);
	close(out[1]);
	close(go[0]);
	FILE *f = fdopen(out[0], "r");
	char line[400];
	int oks = 0;
	bool done = false;
	int waits = 0;
	while (fgets(line, sizeof(line), f)) {
		if (!strcmp(line, "waiting\n") && waits++) {
			char old[300], fp[300];
			snprintf(old, sizeof(old), "%s.old", path_late);
			snprintf(fp, sizeof(fp), "%s/f", path_late);
			ck_assert_int_eq(rename(path_late, old), 0);
			ck_assert_int_eq(mkdir(path_late, 0755), 0);
			put(fp, "again", 0644);
			struct jail more;
			jail_new(&more);
			ck_assert_int_eq(jail_add(&more, path_late, false), 0);
			struct mitos_err e = { 0 };
			ck_assert_msg(jail_bind_more(pidfd, &more, &e) == 0, "%s", e.msg);
			ck_assert_int_eq(write(go[1], "g", 1), 1);
			continue;
		}
		if (!strcmp(line, "waiting\n")) {
			struct jail more;
			jail_new(&more);
			ck_assert_int_eq(jail_add(&more, path_late, false), 0);
			ck_assert_int_eq(jail_add(&more, path_secret, false), 0);
			/* Already in every jail (the VMM's binary, read-only): left as it is. */
			ck_assert_int_eq(jail_add(&more, jail_exe(), false), 0);
			struct mitos_err e = { 0 };
			ck_assert_msg(jail_bind_more(pidfd, &more, &e) == 0, "%s", e.msg);
			/* Twice: what is there already is left alone. */
			ck_assert_msg(jail_bind_more(pidfd, &more, &e) == 0, "%s", e.msg);
			ck_assert_int_eq(write(go[1], "g", 1), 1);
			continue;
		}
		if (!strcmp(line, "done\n")) {
			done = true;
			continue;
		}
		ck_assert_msg(!strncmp(line, "ok ", 3), "in the jail: %s", line);
		oks++;
	}
	fclose(f);
	close(go[1]);
	int st;
	ck_assert_int_eq(waitpid((pid_t)pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the jailed process ended with %d", st);
	ck_assert(done);
	ck_assert_int_eq(oks, 18);
	/* Its file on the host is its uid's. */
	char p[300];
	snprintf(p, sizeof(p), "%s/mine", path_rw);
	struct stat s;
	ck_assert_int_eq(stat(p, &s), 0);
	ck_assert_uint_eq(s.st_uid, j.uid);
	/* A missing path is refused when it is added, not when the VM starts. */
	ck_assert_int_eq(jail_add(&j, "/nonexistent/mitos", false), -ENOENT);
	close(pidfd);
}
END_TEST

/* Runs the jail's binary (jail_init'ed) in a jail with arg, its output not read (it
 * fits in a pipe); bare: exits 3 first if the root holds any /lib64, /usr or /etc. Its
 * wait status. */
static int exec_jailed(char *arg, bool bare)
{
	struct mitos_err e = { 0 };
	struct jail j;
	jail_new(&j);
	struct jail_system sys;
	ck_assert_msg(jail_system_open(&sys, &e) == 0, "%s", e.msg);
	int pidfd = -1;
	long pid = clone_into_namespaces(&pidfd);
	if (pid == 0) {
		if (syscall(SYS_mount, NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
			_exit(2);
		jail_enter(&j, &sys);
		struct stat st;
		if (bare && (stat("/lib64", &st) == 0 || stat("/usr", &st) == 0 || stat("/etc", &st) == 0))
			_exit(3);
		int sink[2];
		if (pipe(sink) < 0 || dup2(sink[1], 1) < 0)
			_exit(4);
		char *argv[] = { "vmm", arg, NULL }, *envp[] = { NULL };
		execve(jail_exe(), argv, envp);
		_exit(99);
	}
	jail_system_close(&sys);
	int st;
	ck_assert_int_eq(waitpid((pid_t)pid, &st, 0), pid);
	close(pidfd);
	return st;
}

/* A VM runs the binary serve started with, not one replaced on disk since (a package
 * upgrade renames a new file over the old name): here `true` is started with, and
 * `false` renamed over it. */
START_TEST(a_binary_replaced_on_disk_never_reaches_a_vm)
{
	if (geteuid() != 0)
		return;
	char exe[300], repl[300], cmd[800];
	snprintf(exe, sizeof(exe), "%s/vmm", T);
	snprintf(repl, sizeof(repl), "%s/vmm.new", T);
	snprintf(cmd, sizeof(cmd), "cp /bin/true '%s' && cp /bin/false '%s'", exe, repl);
	ck_assert_int_eq(system(cmd), 0);
	struct mitos_err e = { 0 };
	ck_assert_msg(jail_init(mnt, exe, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(rename(repl, exe), 0);
	int st = exec_jailed(NULL, false);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the VM ran the replaced binary (status %d)", st);
}
END_TEST

/* A statically linked binary is given alone: no loader, no library. */
START_TEST(a_static_binary_needs_nothing_else)
{
	if (geteuid() != 0 || !static_path)
		return;
	struct mitos_err e = { 0 };
	ck_assert_msg(jail_init(mnt, static_path, &e) == 0, "%s", e.msg);
	struct jail_system sys;
	ck_assert_msg(jail_system_open(&sys, &e) == 0, "%s", e.msg);
	unsigned files = sys.n;
	jail_system_close(&sys);
	if (files > 1) /* a sanitized build links the agent dynamically */
		return;
	int st = exec_jailed("--help", true);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "ended with %d", st);
}
END_TEST

/* serve mounts a restore's files into a VM started a moment ago: the mount must wait
 * until the VM is in its jail, or it lands in the root pivot_root drops. */
START_TEST(mounts_wait_for_the_jail)
{
	if (geteuid() != 0)
		return;
	struct jail j;
	jail_new(&j);
	struct jail_system sys;
	struct mitos_err se = { 0 };
	ck_assert_msg(jail_system_open(&sys, &se) == 0, "%s", se.msg);
	int pidfd = -1;
	long pid = clone_into_namespaces(&pidfd);
	if (pid == 0) {
		if (syscall(SYS_mount, NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
			_exit(2);
		usleep(200000); /* a slow start */
		jail_enter(&j, &sys);
		for (int i = 0; i < 500; i++) {
			char p[300];
			snprintf(p, sizeof(p), "%s/f", path_late);
			if (reads(p, "later"))
				_exit(0);
			usleep(10000);
		}
		_exit(4);
	}
	jail_system_close(&sys);
	struct jail more;
	jail_new(&more);
	ck_assert_int_eq(jail_add(&more, path_late, false), 0);
	struct mitos_err e = { 0 };
	ck_assert_msg(jail_bind_more(pidfd, &more, &e) == 0, "%s", e.msg);
	int st;
	ck_assert_int_eq(waitpid((pid_t)pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the jailed process ended with %d", st);
	close(pidfd);
}
END_TEST

START_TEST(seal_makes_a_snapshot_roots_and_read_only)
{
	if (geteuid() != 0)
		return;
	char dir[300], p[400];
	struct mitos_err e = { 0 };
	snprintf(dir, sizeof(dir), "%s/snap", T);
	ck_assert_int_eq(mkdir(dir, 0700), 0);
	snprintf(p, sizeof(p), "%s/memory", dir);
	put(p, "m", 0600);
	ck_assert_int_eq(chown(p, JAIL_UID_BASE + 7, JAIL_UID_BASE), 0);
	ck_assert_int_eq(chown(dir, JAIL_UID_BASE + 7, JAIL_UID_BASE), 0);
	ck_assert_msg(jail_seal(dir, &e) == 0, "%s", e.msg);
	struct stat st;
	ck_assert_int_eq(stat(p, &st), 0);
	ck_assert_uint_eq(st.st_uid, 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0444);
	ck_assert_int_eq(stat(dir, &st), 0);
	ck_assert_uint_eq(st.st_uid, 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0755);
	/* A VM that left a link (to a host file, say) in its snapshot is not trusted. */
	snprintf(p, sizeof(p), "%s/state", dir);
	ck_assert_int_eq(symlink("/etc/shadow", p), 0);
	ck_assert_int_eq(jail_seal(dir, &e), -EPERM);
	ck_assert_ptr_nonnull(strstr(e.msg, "not a regular file"));
}
END_TEST

/* A VM that still holds a file of its snapshot writable after writing it, and runs on,
 * could change it under children restored later: by a descriptor, or by a shared
 * mapping of one it closed (which mprotect could make writable). Sealing refuses both. */
START_TEST(seal_refuses_a_file_still_open_for_writing)
{
	if (geteuid() != 0)
		return;
	char dir[300], p[400];
	struct mitos_err e = { 0 };
	snprintf(dir, sizeof(dir), "%s/layer", T);
	ck_assert_int_eq(mkdir(dir, 0700), 0);
	snprintf(p, sizeof(p), "%s/memory", dir);
	put(p, "pages", 0600);
	for (int how = 0; how < 2; how++) {
		int ready[2], done[2];
		ck_assert_int_eq(pipe(ready), 0);
		ck_assert_int_eq(pipe(done), 0);
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			int fd = open(p, how ? O_RDWR : O_WRONLY);
			if (fd < 0)
				_exit(2);
			if (how) {
				if (mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED)
					_exit(3);
				close(fd);
			}
			char c = 'r';
			(void)!write(ready[1], &c, 1);
			(void)!read(done[0], &c, 1);
			_exit(0);
		}
		char c;
		ck_assert_int_eq(read(ready[0], &c, 1), 1);
		ck_assert_int_eq(jail_seal(dir, &e), -EPERM);
		ck_assert_msg(strstr(e.msg, "still holds memory open for writing"), "%s", e.msg);
		ck_assert_int_eq(write(done[1], "d", 1), 1);
		int st;
		ck_assert_int_eq(waitpid(pid, &st, 0), pid);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the writer ended with %d", st);
		close(ready[0]);
		close(ready[1]);
		close(done[0]);
		close(done[1]);
	}
	/* Its writer gone, and a reader left: sealed. */
	int rd = open(p, O_RDONLY);
	ck_assert_int_ge(rd, 0);
	ck_assert_msg(jail_seal(dir, &e) == 0, "%s", e.msg);
	close(rd);
}
END_TEST

/* Without a jail (the default) a VM process stays uid 0; what it execs has no
 * capability all the same. */
START_TEST(root_without_capabilities_gains_none_by_exec)
{
	int out[2];
	ck_assert_int_eq(pipe(out), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		dup2(out[1], 1);
		if (jail_drop_capabilities(true) < 0)
			_exit(3);
		char *argv[] = { "cat", "/proc/self/status", NULL }, *envp[] = { NULL };
		execve("/bin/cat", argv, envp);
		_exit(99);
	}
	close(out[1]);
	char buf[4096];
	read_to_end(out[0], buf, sizeof(buf));
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "ended with %d", st);
	ck_assert_msg(strstr(buf, "Uid:\t0\t0\t0\t0"), "%s", buf);
	static const char *const sets[] = { "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb" };
	for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++) {
		const char *l = strstr(buf, sets[i]);
		ck_assert_msg(l && strtoull(l + strlen(sets[i]) + 1, NULL, 16) == 0, "%s in: %s", sets[i], buf);
	}
}
END_TEST

/* The uid range may be moved, never onto root or onto this host's own users. */
START_TEST(uid_range_refuses_root_and_host_users)
{
	char m[300];
	struct mitos_err e = { 0 };
	snprintf(m, sizeof(m), "%s/jail2", T);
	jail_set_uid_base(0);
	ck_assert_int_eq(jail_init(m, "/bin/true", &e), -ERANGE);
	jail_set_uid_base(UINT32_MAX - 10);
	ck_assert_int_eq(jail_init(m, "/bin/true", &e), -ERANGE);
	/* A range with one of this host's users in it (nobody, on Debian). */
	struct passwd *pw = getpwnam("nobody");
	if (pw && pw->pw_uid > 100) {
		jail_set_uid_base(pw->pw_uid - 100);
		ck_assert_int_eq(jail_init(m, "/bin/true", &e), -EEXIST);
		ck_assert_msg(strstr(e.msg, "--vm-uid-base") && strstr(e.msg, "nobody"), "%s", e.msg);
	}
	jail_set_uid_base(3000000000u);
	ck_assert_msg(jail_init(m, "/bin/true", &e) == 0, "%s", e.msg);
	struct jail j;
	jail_new(&j);
	ck_assert_uint_eq(j.gid, 3000000000u);
	ck_assert(j.uid > 3000000000u && j.uid <= 3000000000u + JAIL_UIDS);
	jail_set_uid_base(JAIL_UID_BASE);
}
END_TEST

/* What a VM made in its own directory moves to serve's only if it is what it should be. */
START_TEST(claim_keeps_only_what_it_should)
{
	char from[300], to[300];
	struct mitos_err e = { 0 };
	snprintf(from, sizeof(from), "%s/control", path_rw);
	snprintf(to, sizeof(to), "%s/control", T);
	struct stat st;
	/* A link to a socket elsewhere (serve would connect to it by name later). */
	ck_assert_int_eq(symlink("/run/some.sock", from), 0);
	ck_assert_int_eq(jail_claim(from, to, S_IFSOCK, &e), -EPERM);
	ck_assert_int_eq(lstat(to, &st), -1);
	ck_assert_int_eq(unlink(from), 0);
	/* A directory, a regular file: not a socket either. */
	ck_assert_int_eq(mkdir(from, 0700), 0);
	ck_assert_int_eq(jail_claim(from, to, S_IFSOCK, &e), -EPERM);
	ck_assert_int_eq(lstat(to, &st), -1);
	ck_assert_int_eq(rmdir(from), 0);
	put(from, "x", 0600);
	ck_assert_int_eq(jail_claim(from, to, S_IFSOCK, &e), -EPERM);
	ck_assert_int_eq(lstat(to, &st), -1);
	ck_assert_int_eq(jail_claim(from, to, S_IFREG, &e), 0);
	ck_assert_int_eq(lstat(to, &st), 0);
	ck_assert(S_ISREG(st.st_mode));
	ck_assert_int_eq(unlink(to), 0);
	/* The socket it should be. */
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	ck_assert_uint_lt(strlen(from), sizeof(a.sun_path));
	memcpy(a.sun_path, from, strlen(from) + 1);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_msg(jail_claim(from, to, S_IFSOCK, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(lstat(to, &st), 0);
	ck_assert(S_ISSOCK(st.st_mode));
	close(fd);
	/* Nothing there: says so. */
	ck_assert_int_eq(jail_claim(from, to, S_IFSOCK, &e), -ENOENT);
}
END_TEST

/* The VMM itself starts in a jail, as serve starts it: its binary and libraries (and a
 * sanitizer's runtime) from read-only mounts, /dev/kvm handed over as --kvm-fd. Another
 * file stands in for /dev/kvm here, so it gets as far as asking "KVM" for its API
 * version, and says so. */
START_TEST(the_vmm_starts_in_a_jail)
{
	if (geteuid() != 0 || !vmm_path)
		return;
	struct jail j;
	jail_new(&j);
	ck_assert_int_eq(jail_add(&j, path_rw, true), 0);
	ck_assert_int_eq(jail_give(&j, path_rw), 0);
	int out[2];
	ck_assert_int_eq(pipe(out), 0);
	struct jail_system sys;
	struct mitos_err se = { 0 };
	ck_assert_msg(jail_system_open(&sys, &se) == 0, "%s", se.msg);
	struct clone_args ca = { .flags = CLONE_NEWNS | CLONE_NEWPID, .exit_signal = SIGCHLD };
	long pid = syscall(SYS_clone3, &ca, sizeof(ca));
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (syscall(SYS_mount, NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
			_exit(2);
		jail_enter(&j, &sys);
		int null = open("/proc/self/fd/0", O_RDONLY); /* anything but KVM */
		dup2(out[1], 1);
		dup2(out[1], 2);
		dup2(null >= 0 ? null : 0, 4);
		char ctl[300];
		snprintf(ctl, sizeof(ctl), "%s/control", path_rw);
		char *argv[] = { "mitos-vmm", "vm", "--kvm-fd", "4", "--control", ctl, NULL };
		execve(jail_exe(), argv, environ);
		dprintf(1, "cannot exec: %s\n", strerror(errno));
		_exit(98);
	}
	jail_system_close(&sys);
	close(out[1]);
	char buf[2000];
	read_to_end(out[0], buf, sizeof(buf));
	int st;
	ck_assert_int_eq(waitpid((pid_t)pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "mitos-vmm ended with %d: %s", st, buf);
	ck_assert_msg(strstr(buf, "--kvm-fd descriptor") && strstr(buf, "API version"), "mitos-vmm said: %s", buf);
}
END_TEST

int main(int argc, char **argv)
{
	vmm_path = argc > 1 ? argv[1] : NULL;
	static_path = argc > 2 ? argv[2] : NULL; /* a statically linked program (the agent) */
	if (geteuid() != 0) {
		fprintf(stderr, "test_jail: needs root (namespaces, mounts): skipped\n");
		return 77;
	}
	Suite *s = suite_create("jail");
	TCase *tc = tcase_create("jail");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 20);
	tcase_add_test(tc, jailed_process_has_nothing_else);
	tcase_add_test(tc, mounts_wait_for_the_jail);
	tcase_add_test(tc, a_binary_replaced_on_disk_never_reaches_a_vm);
	tcase_add_test(tc, a_static_binary_needs_nothing_else);
	tcase_add_test(tc, seal_makes_a_snapshot_roots_and_read_only);
	tcase_add_test(tc, seal_refuses_a_file_still_open_for_writing);
	tcase_add_test(tc, the_vmm_starts_in_a_jail);
	tcase_add_test(tc, claim_keeps_only_what_it_should);
	tcase_add_test(tc, uid_range_refuses_root_and_host_users);
	tcase_add_test(tc, root_without_capabilities_gains_none_by_exec);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
