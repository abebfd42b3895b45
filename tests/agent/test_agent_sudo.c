/* The agent's sudo socket (agent/sudo.h), spoken to directly: a request runs its
 * command with the caller's descriptors and answers its wait status; what is not a
 * request is refused and leaves the agent serving. The caller here is root, whom
 * sudoers need not name; who else may is test_image.py's (a real image's sudoers). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent_test.h"

static char sock_path[64];

static struct ac *sudo_agent_up(struct ac *c)
{
	snprintf(sock_path, sizeof(sock_path), "/tmp/mitos-sudo-test-%d.sock", (int)getpid());
	const char *args[] = { "--sudo-socket", sock_path, NULL };
	ck_assert_int_eq(ac_start(c, args), 0);
	return c;
}

static int sudo_conn(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* Sends msg (n bytes) with nfds of fds; returns the answer (static). */
static const char *ask(const void *msg, size_t n, const int *fds, int nfds)
{
	static char answer[600];
	int fd = sudo_conn();
	char cbuf[CMSG_SPACE(4 * sizeof(int))] = { 0 };
	struct iovec iov = { (void *)msg, n };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds) {
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, (size_t)nfds * sizeof(int));
	}
	ck_assert_msg(sendmsg(fd, &mh, 0) == (ssize_t)n, "sendmsg: %s", strerror(errno));
	ssize_t got = recv(fd, answer, sizeof(answer) - 1, 0);
	answer[got > 0 ? got : 0] = 0;
	close(fd);
	return answer;
}

#define REQ(fields) SUDO_MAGIC_TEXT "\0" fields
#define SUDO_MAGIC_TEXT "MITOS-SUDO 1"

START_TEST(sudo_runs_with_callers_descriptors)
{
	struct ac c;
	sudo_agent_up(&c);
	int out[2];
	ck_assert_int_eq(pipe(out), 0);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int fds[3] = { null, out[1], out[1] };
	static const char req[] = REQ("cwd=/tmp\0env=TERM=dumb\0env=SECRET=x\0arg=sh\0arg=-c\0"
				      "arg=echo $PWD $TERM [$SECRET] $SUDO_USER; exit 3");
	ck_assert_str_eq(ask(req, sizeof(req), fds, 3), "status=768"); /* exit 3 */
	close(out[1]);
	char buf[256] = { 0 };
	ck_assert_int_gt(read(out[0], buf, sizeof(buf) - 1), 0);
	ck_assert_str_eq(buf, "/tmp dumb [] root\n"); /* env_reset: no SECRET */
	close(out[0]);
	fds[1] = fds[2] = null;
	static const char missing[] = REQ("arg=/no/such/command");
	ck_assert_str_eq(ask(missing, sizeof(missing), fds, 3), "error=/no/such/command: command not found");
	/* as many arguments as a message holds (xargs makes such commands) */
	size_t cap = 120000, len = sizeof(SUDO_MAGIC_TEXT);
	char *many = malloc(cap);
	memcpy(many, SUDO_MAGIC_TEXT, len);
	len += (size_t)sprintf(many + len, "arg=sh") + 1;
	len += (size_t)sprintf(many + len, "arg=-c") + 1;
	len += (size_t)sprintf(many + len, "arg=echo $#") + 1;
	len += (size_t)sprintf(many + len, "arg=sh") + 1;
	int args = 0;
	while (len + 8 < cap) {
		len += (size_t)sprintf(many + len, "arg=%d", args % 10) + 1;
		args++;
	}
	int out2[2];
	ck_assert_int_eq(pipe(out2), 0);
	int fds2[3] = { null, out2[1], out2[1] };
	ck_assert_str_eq(ask(many, len, fds2, 3), "status=0");
	close(out2[1]);
	memset(buf, 0, sizeof(buf));
	ck_assert_int_gt(read(out2[0], buf, sizeof(buf) - 1), 0);
	ck_assert_int_eq(atoi(buf), args);
	ck_assert_int_gt(args, 15000);
	close(out2[0]);
	free(many);
	static const char validate[] = REQ("");
	ck_assert_str_eq(ask(validate, sizeof(validate) - 1, fds, 3), "status=0");
	close(null);
	agent_down(&c);
	unlink(sock_path);
}
END_TEST

START_TEST(sudo_refuses_what_is_no_request)
{
	struct ac c;
	sudo_agent_up(&c);
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	int fds[4] = { null, null, null, null };
	static const char ok[] = REQ("arg=true");
	ck_assert_str_eq(ask("garbage", 7, fds, 3), "error=a request this agent does not understand");
	ck_assert_str_eq(ask(ok, sizeof(ok), fds, 0), "error=a request over 131072 bytes or without the three descriptors");
	ck_assert_str_eq(ask(ok, sizeof(ok), fds, 2), "error=a request over 131072 bytes or without the three descriptors");
	ck_assert_str_eq(ask(ok, sizeof(ok), fds, 4), "error=a request over 131072 bytes or without the three descriptors");
	static const char bad_shell[] = REQ("shell=bogus\0arg=true");
	ck_assert_str_eq(ask(bad_shell, sizeof(bad_shell), fds, 3), "error=a request this agent does not understand");
	static const char unterminated[] = SUDO_MAGIC_TEXT "\0arg=true";
	ck_assert_str_eq(ask(unterminated, sizeof(unterminated) - 1, fds, 3),
			 "error=a request this agent does not understand");
	static const char nobody[] = REQ("user=no-such-user\0arg=true");
	ck_assert_str_eq(ask(nobody, sizeof(nobody), fds, 3), "error=unknown user no-such-user");
	size_t big = 200000;
	char *huge = calloc(1, big);
	memcpy(huge, ok, sizeof(ok));
	ck_assert_str_eq(ask(huge, big, fds, 3), "error=a request over 131072 bytes or without the three descriptors");
	free(huge);
	/* and it still serves */
	ck_assert_str_eq(ask(ok, sizeof(ok), fds, 3), "status=0");
	call_expect(&c, "{\"op\":\"health\"}", "");
	close(null);
	agent_down(&c);
	unlink(sock_path);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("agent_sudo");
	TCase *tc = tcase_create("sudo");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, sudo_runs_with_callers_descriptors);
	tcase_add_test(tc, sudo_refuses_what_is_no_request);
	suite_add_tcase(s, tc);
	return run_suite(s);
}
