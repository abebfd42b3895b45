/* The VM process's seccomp filters (vmm/seccomp.c): what a VM needs still works, and
 * anything else is refused, kills the process with status 159 and names the call on
 * stderr; a vCPU thread's own filter refuses what only the device loop does. Each case
 * runs in a child that installs the process filter. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <stdint.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "vmm/seccomp.h"

/* Runs fn in a filtered child: its exit status (or 1000 + signal), stderr in out. */
static int filtered(void (*fn)(void), char *out, size_t outlen)
{
	int p[2];
	ck_assert_int_eq(pipe(p), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		dup2(p[1], STDERR_FILENO);
		close(p[0]);
		struct mitos_err e = { 0 };
		if (vmm_seccomp_install(&e)) {
			fprintf(stderr, "install: %s\n", e.msg);
			_exit(100);
		}
		fn();
		_exit(0);
	}
	close(p[1]);
	size_t n = 0;
	ssize_t k;
	while (n + 1 < outlen && (k = read(p[0], out + n, outlen - 1 - n)) > 0)
		n += (size_t)k;
	out[n] = 0;
	close(p[0]);
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + WTERMSIG(st);
}

/* fn runs to its end in a filtered child. */
static void passes(void (*fn)(void))
{
	char out[512];
	int st = filtered(fn, out, sizeof(out));
	ck_assert_msg(st == 0, "status %d, stderr: %s", st, out);
}

static void allowed_calls(void)
{
	/* A Unix socket, a thread-style mapping, a file, a KVM ioctl on a non-KVM fd. */
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		_exit(10);
	close(s);
	void *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED || mprotect(m, 4096, PROT_READ) || munmap(m, 1 << 20))
		_exit(11);
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		_exit(12);
	if (ioctl(fd, KVM_GET_API_VERSION, 0) != -1)
		_exit(13);
	close(fd);
	/* The clocks as system calls, as the vDSO makes them where the clocksource has no
	 * user-space path (hosts without a stable TSC). */
	struct timespec ts;
	struct timeval tv;
	if (syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts) || syscall(SYS_clock_getres, CLOCK_MONOTONIC, &ts) ||
	    syscall(SYS_gettimeofday, &tv, NULL) || syscall(SYS_time, NULL) <= 0)
		_exit(15);
	/* clone3 is refused softly, so that glibc falls back to clone (threads only). */
	if (syscall(SYS_clone3, NULL, 0) != -1 || errno != ENOSYS)
		_exit(14);
}

static void inet_socket(void) { socket(AF_INET, SOCK_STREAM, 0); }
static void run_a_program(void) { execl("/bin/true", "true", (char *)NULL); }
static void terminal_injection(void)
{
	char c = 'x';
	ioctl(STDIN_FILENO, TIOCSTI, &c);
}
static void exec_mapping(void) { mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); }
static void new_process(void) { syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0); }

START_TEST(test_allowed)
{
	passes(allowed_calls);
}
END_TEST

static void refused(void (*fn)(void), const char *name)
{
	char out[512], want[64];
	int st = filtered(fn, out, sizeof(out));
	ck_assert_msg(st == 128 + SIGSYS, "status %d for %s, stderr: %s", st, name, out);
	snprintf(want, sizeof(want), "mitos-vmm: seccomp: system call %s (", name);
	ck_assert_msg(strstr(out, want) && strstr(out, "the VM is killed"), "stderr for %s: %s", name, out);
}

START_TEST(test_refused)
{
	refused(inet_socket, "socket");
	refused(run_a_program, "execve");
	refused(terminal_injection, "ioctl");
#ifndef VMM_SECCOMP_SANITIZED
	refused(exec_mapping, "mmap");
	refused(new_process, "clone");
#else
	(void)exec_mapping;
	(void)new_process;
#endif
}
END_TEST

/* A ring can be made until the rings are sealed, and then not (EPERM, not a kill:
 * a late restore fails with a message). */
static void rings_then_sealed(void)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	int fd = (int)syscall(SYS_io_uring_setup, 4, &p);
	if (fd < 0)
		_exit(20);
	close(fd);
	struct mitos_err e = { 0 };
	if (vmm_seccomp_seal_rings(&e)) {
		fprintf(stderr, "seal: %s\n", e.msg);
		_exit(21);
	}
	memset(&p, 0, sizeof(p));
	if (syscall(SYS_io_uring_setup, 4, &p) != -1 || errno != EPERM)
		_exit(22);
	/* What the VM still does after the seal works. */
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		_exit(23);
	close(s);
}

START_TEST(test_rings_sealed)
{
	passes(rings_then_sealed);
}
END_TEST

/* A vCPU thread does what its exits need (an eventfd signal, a KVM ioctl, memory,
 * the clock, the console restarted at its cap); the device loop keeps opening files
 * after a vCPU thread narrowed its own filter. */
struct vcpu_fds {
	int efd, console;
};

static void *vcpu_work(void *arg)
{
	const struct vcpu_fds *fds = arg;
	struct mitos_err e = { 0 };
	if (vmm_seccomp_enter_vcpu(&e)) {
		fprintf(stderr, "enter: %s\n", e.msg);
		_exit(30);
	}
	uint64_t one = 1;
	struct timespec ts;
	void *m = malloc(1 << 20);
	if (write(fds->efd, &one, sizeof(one)) != sizeof(one) || ioctl(fds->efd, KVM_GET_API_VERSION, 0) != -1 ||
	    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts) || !m || ftruncate(fds->console, 0) ||
	    lseek(fds->console, 0, SEEK_SET) != 0)
		_exit(31);
	free(m);
	return NULL;
}

static void vcpu_then_loop(void)
{
	struct vcpu_fds fds = { eventfd(0, EFD_CLOEXEC), open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600) };
	pthread_t t;
	if (fds.efd < 0 || fds.console < 0 || pthread_create(&t, NULL, vcpu_work, &fds) ||
	    pthread_join(t, NULL))
		_exit(32);
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		_exit(33);
	close(fd);
}

START_TEST(test_vcpu_allowed)
{
	passes(vcpu_then_loop);
}
END_TEST

/* What only the device loop does kills a vCPU thread's process, naming the thread. */
static void *vcpu_opens(void *arg)
{
	(void)arg;
	struct mitos_err e = { 0 };
	if (vmm_seccomp_enter_vcpu(&e)) {
		fprintf(stderr, "enter: %s\n", e.msg);
		_exit(40);
	}
	open("/dev/null", O_RDONLY | O_CLOEXEC);
	return NULL;
}

static void vcpu_open(void)
{
	pthread_t t;
	if (pthread_create(&t, NULL, vcpu_opens, NULL) == 0)
		pthread_join(t, NULL);
	_exit(41);
}

START_TEST(test_vcpu_refused)
{
	char out[512];
	int st = filtered(vcpu_open, out, sizeof(out));
	ck_assert_msg(st == 128 + SIGSYS, "status %d, stderr: %s", st, out);
	ck_assert_msg(strstr(out, "system call openat (") && strstr(out, "not allowed in a vCPU thread"),
		      "stderr: %s", out);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("seccomp");
	TCase *tc = tcase_create("filter");
	tcase_add_test(tc, test_allowed);
	tcase_add_test(tc, test_refused);
	tcase_add_test(tc, test_rings_sealed);
	tcase_add_test(tc, test_vcpu_allowed);
	tcase_add_test(tc, test_vcpu_refused);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	/* The cases fork their own children. */
	srunner_set_fork_status(sr, CK_NOFORK);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
