/* The control socket (vmm/control.c): descriptors sent with a request reach its
 * handler as the same open files, are closed once it has answered, and too many of
 * them fail that request rather than leak. The server runs in a child process on its
 * own loop; the test is the client. */
#include <check.h>
#include <dirent.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vmm/control.h"

static char sock_path[64];
static pid_t server;

/* Answers {"n", "inos": [inode of each descriptor]}; "stop" ends it. */
static cJSON *handler(void *ctx, const cJSON *req, const struct control_fds *fds)
{
	struct ev_loop *loop = ctx;
	const char *cmd = cJSON_GetStringValue(cJSON_GetObjectItem(req, "cmd"));
	if (cmd && !strcmp(cmd, "stop"))
		ev_break(loop, EVBREAK_ALL);
	cJSON *o = control_reply_ok();
	cJSON_AddNumberToObject(o, "n", fds->n);
	cJSON *inos = cJSON_AddArrayToObject(o, "inos");
	for (unsigned i = 0; i < fds->n; i++) {
		struct stat st;
		fstat(fds->fd[i], &st);
		cJSON_AddItemToArray(inos, cJSON_CreateNumber((double)st.st_ino));
	}
	return o;
}

static void setup(void)
{
	snprintf(sock_path, sizeof(sock_path), "/tmp/mitos-ctl-%d.sock", (int)getpid());
	unlink(sock_path);
	server = fork();
	ck_assert_int_ge(server, 0);
	if (server == 0) {
		struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
		struct control_server *s;
		struct mitos_err e = { 0 };
		if (control_server_start(&s, loop, sock_path, handler, loop, &e)) {
			fprintf(stderr, "%s\n", e.msg);
			_exit(1);
		}
		ev_run(loop, 0);
		control_server_stop(s);
		_exit(0);
	}
	for (int i = 0; i < 2000 && access(sock_path, F_OK); i++)
		usleep(1000);
}

static void teardown(void)
{
	kill(server, SIGKILL);
	waitpid(server, NULL, 0);
	unlink(sock_path);
}

static cJSON *call(const char *cmd, const struct control_fds *fds)
{
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "cmd", cmd);
	struct mitos_err e = { 0 };
	cJSON *r = control_call(sock_path, req, fds, 5000, &e);
	cJSON_Delete(req);
	ck_assert_msg(r != NULL, "%s", e.msg);
	return r;
}

/* The server's open descriptors, once its client connections are gone (it notices a
 * closed connection on its next loop round). */
static int server_fds(int want)
{
	char dir[64];
	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)server);
	int n = 0;
	for (int tries = 0; tries < 1000; tries++) {
		DIR *d = opendir(dir);
		ck_assert_ptr_nonnull(d);
		n = 0;
		for (struct dirent *e; (e = readdir(d));)
			n += e->d_name[0] != '.';
		closedir(d);
		if (want < 0 || n == want)
			break;
		usleep(1000);
	}
	return n;
}

static double num(const cJSON *o, const char *key)
{
	return cJSON_GetNumberValue(cJSON_GetObjectItem(o, key));
}

START_TEST(test_descriptors_reach_the_handler)
{
	int idle = server_fds(-1);
	struct control_fds fds = { .n = 2, .fd = { open("/dev/null", O_RDONLY), open("/", O_RDONLY) } };
	struct stat a, b;
	ck_assert_int_eq(fstat(fds.fd[0], &a), 0);
	ck_assert_int_eq(fstat(fds.fd[1], &b), 0);
	cJSON *r = call("status", &fds);
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	ck_assert_int_eq((int)num(r, "n"), 2);
	cJSON *inos = cJSON_GetObjectItem(r, "inos");
	ck_assert_uint_eq((ino_t)cJSON_GetNumberValue(cJSON_GetArrayItem(inos, 0)), a.st_ino);
	ck_assert_uint_eq((ino_t)cJSON_GetNumberValue(cJSON_GetArrayItem(inos, 1)), b.st_ino);
	cJSON_Delete(r);
	/* The server kept none of them. */
	ck_assert_int_eq(server_fds(idle), idle);
	r = call("status", NULL);
	ck_assert_int_eq((int)num(r, "n"), 0);
	cJSON_Delete(r);
	close(fds.fd[0]);
	close(fds.fd[1]);
}
END_TEST

/* One more than the limit, sent by hand (control_call refuses to): the request fails
 * with invalid_request, and the server keeps answering. */
START_TEST(test_too_many_descriptors)
{
	int idle = server_fds(-1);
	struct control_fds many = { .n = CONTROL_MAX_FDS + 1 };
	for (unsigned i = 0; i < many.n; i++)
		many.fd[i % CONTROL_MAX_FDS] = open("/dev/null", O_RDONLY);
	struct mitos_err e = { 0 };
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "cmd", "status");
	ck_assert_ptr_null(control_call(sock_path, req, &many, 5000, &e));
	cJSON_Delete(req);

	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strcpy(sa.sun_path, sock_path);
	ck_assert_int_eq(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	int fds[CONTROL_MAX_FDS + 1];
	for (unsigned i = 0; i < CONTROL_MAX_FDS + 1; i++)
		fds[i] = many.fd[0];
	char line[] = "{\"cmd\":\"status\"}\n";
	struct iovec iov = { line, sizeof(line) - 1 };
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(fds))];
	} ctl;
	memset(&ctl, 0, sizeof(ctl));
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
			     .msg_controllen = sizeof(ctl.buf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cm), fds, sizeof(fds));
	ck_assert_int_eq(sendmsg(s, &mh, 0), (ssize_t)(sizeof(line) - 1));
	char reply[1024];
	ssize_t n = recv(s, reply, sizeof(reply) - 1, 0);
	ck_assert_int_gt(n, 0);
	reply[n] = 0;
	ck_assert_msg(strstr(reply, "\"ok\":false") && strstr(reply, "descriptors"), "%s", reply);
	close(s);

	cJSON *r = call("status", NULL);
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	cJSON_Delete(r);
	ck_assert_int_eq(server_fds(idle), idle);
	for (unsigned i = 0; i < CONTROL_MAX_FDS; i++)
		close(many.fd[i]);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("control");
	TCase *tc = tcase_create("descriptors");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_descriptors_reach_the_handler);
	tcase_add_test(tc, test_too_many_descriptors);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
