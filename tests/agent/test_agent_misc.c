/* Port forwarding, health, post_fork, and bad frames on a live connection. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent_test.h"

/* A one-connection TCP server on 127.0.0.1 that answers "echo:" + what it read
 * until the client half-closes, then closes. */
static void *echo_server(void *arg)
{
	int lfd = *(int *)arg;
	int fd = accept(lfd, NULL, NULL);
	char buf[4096];
	ssize_t n;
	if (fd < 0)
		return NULL;
	if (write(fd, "echo:", 5) != 5)
		return NULL;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		if (write(fd, buf, (size_t)n) != n)
			break;
	close(fd);
	return NULL;
}

static int listen_local(int *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(fd, 1), 0);
	getsockname(fd, (struct sockaddr *)&sa, &len);
	*port = ntohs(sa.sin_port);
	return fd;
}

START_TEST(forward_roundtrip)
{
	struct ac c;
	struct ac_result r;
	char req[128];
	int port, lfd = listen_local(&port);
	pthread_t th;
	pthread_create(&th, NULL, echo_server, &lfd);
	agent_up(&c);
	uint32_t id = ac_new_id(&c);
	snprintf(req, sizeof(req), "{\"op\":\"forward\",\"port\":%d}", port);
	ac_open(&c, id, req);
	struct ac_frame *f;
	ck_assert_int_eq(ac_recv(&c, id, &f, T_SHORT), 0);
	ck_assert_int_eq(f->h.type, PROTO_EVENT);
	ck_assert_ptr_nonnull(strstr((char *)f->p, "connected"));
	ac_frame_free(f);
	static char big[300000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)('a' + i % 26);
	ck_assert_int_eq(ac_write_data(&c, id, big, sizeof(big), true, T_SHORT), 0);
	ck_assert_int_eq(ac_collect(&c, id, &r, T_SHORT), 0);
	ck_assert_str_eq(r.end, "{}");
	ck_assert(r.fin[0]);
	ck_assert_uint_eq(r.ch[0].len, 5 + sizeof(big));
	ck_assert_int_eq(memcmp(r.ch[0].p, "echo:", 5), 0);
	ck_assert_int_eq(memcmp(r.ch[0].p + 5, big, sizeof(big)), 0);
	ac_result_free(&r);
	pthread_join(th, NULL);
	close(lfd);
	/* nothing listens there any more */
	call_expect(&c, req, "connection_refused");
	call_expect(&c, "{\"op\":\"forward\",\"port\":0}", "invalid_argument");
	agent_down(&c);
}
END_TEST

START_TEST(health_and_post_fork)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	ck_assert_ptr_nonnull(strstr(c.hello, "\"version\":1"));
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"health\"}", &r, T_SHORT), 0);
	cJSON *j = end_json(&r);
	ck_assert_int_ge(json_int(j, "uptime_ms"), 0);
	ck_assert_str_eq(cJSON_GetObjectItem(j, "version")->valuestring, "0.1.0");
	cJSON_Delete(j);
	ac_result_free(&r);

	/* the current time: harmless even where the agent may set the clock */
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	char req[256];
	snprintf(req, sizeof(req), "{\"op\":\"post_fork\",\"entropy\":\"3q2+78r+ur4=\",\"realtime_ns\":%lld}",
		 (long long)ts.tv_sec * 1000000000 + ts.tv_nsec);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	j = end_json(&r);
	ck_assert_int_eq(json_int(j, "entropy_bytes"), 8);
	const char *code = end_error_code(j);
	if (geteuid() == 0)
		ck_assert_msg(!*code || !strcmp(code, "permission_denied"), "%s", r.end); /* containers drop caps */
	else
		ck_assert_str_eq(code, "permission_denied");
	cJSON_Delete(j);
	ac_result_free(&r);
	call_expect(&c, "{\"op\":\"post_fork\",\"entropy\":\"!!\"}", "invalid_argument");
	call_expect(&c, "{\"op\":\"poweroff\"}", "unsupported");
	call_expect(&c, "{\"op\":\"no-such-op\"}", "unsupported");
	call_expect(&c, "{\"op\":\"exec\",\"cmd\":\"true\",\"timeout_ms\":-1}", "invalid_argument");
	agent_down(&c);
}
END_TEST

/* Expects an ERROR notice with code on stream 0. */
static void expect_notice(struct ac *c, const char *code)
{
	struct ac_frame *f;
	ck_assert_int_eq(ac_recv(c, 0, &f, T_SHORT), 0);
	ck_assert_int_eq(f->h.type, PROTO_ERROR);
	cJSON *j = cJSON_Parse((char *)f->p);
	ck_assert_str_eq(cJSON_GetObjectItem(j, "code")->valuestring, code);
	cJSON_Delete(j);
	ac_frame_free(f);
}

START_TEST(bad_frames_leave_other_streams_alone)
{
	struct ac c;
	struct ac_result r;
	uint8_t hdr[PROTO_HEADER_SIZE];
	agent_up(&c);
	/* a long-running exec that must survive everything below */
	uint32_t live = ac_new_id(&c);
	ac_open(&c, live, "{\"op\":\"exec\",\"argv\":[\"cat\"],\"stdin\":true}");

	/* oversized: header announces 2 MiB; we send it all, the agent skips it */
	struct proto_header h = { .length = 2u << 20, .stream = 999, .type = PROTO_DATA };
	proto_header_encode(&h, hdr);
	ac_send_raw(&c, hdr, sizeof(hdr));
	static char junk[2u << 20];
	ac_send_raw(&c, junk, sizeof(junk));
	expect_notice(&c, "protocol_error");

	/* unknown type, reserved byte, never-opened stream, stream 0 misuse */
	ac_send(&c, 42, 0, 0, live, "x", 1);
	expect_notice(&c, "protocol_error");
	h = (struct proto_header){ .length = 0, .stream = live, .type = PROTO_EVENT, .reserved = 1 };
	proto_header_encode(&h, hdr);
	ac_send_raw(&c, hdr, sizeof(hdr));
	expect_notice(&c, "protocol_error");
	ac_send(&c, PROTO_DATA, 0, 0, 5000, "x", 1);
	expect_notice(&c, "protocol_error");
	ac_send(&c, PROTO_DATA, 0, 0, 0, "x", 1);
	expect_notice(&c, "protocol_error");
	/* OPEN reusing an old id */
	ac_send(&c, PROTO_OPEN, 0, 0, live, "{\"op\":\"health\"}", 15);
	expect_notice(&c, "protocol_error");
	/* OPEN with garbage JSON ends just that stream */
	uint32_t bad = ac_new_id(&c);
	ac_send(&c, PROTO_OPEN, 0, 0, bad, "{nope", 5);
	ck_assert_int_eq(ac_collect(&c, bad, &r, T_SHORT), 0);
	expect_end(&r, "invalid_argument", "OPEN with garbage JSON");

	/* a frame cut in two with a pause in between, followed by another frame */
	uint32_t split = ac_new_id(&c);
	const char *open = "{\"op\":\"health\"}";
	uint8_t buf[64];
	h = (struct proto_header){ .length = (uint32_t)strlen(open), .stream = split, .type = PROTO_OPEN };
	proto_header_encode(&h, buf);
	memcpy(buf + PROTO_HEADER_SIZE, open, strlen(open));
	ac_send_raw(&c, buf, 7);
	usleep(100 * 1000);
	ac_send_raw(&c, buf + 7, PROTO_HEADER_SIZE + strlen(open) - 7);
	ac_write_data(&c, live, "still alive", 11, true, T_SHORT);
	ck_assert_int_eq(ac_collect(&c, split, &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "uptime_ms"));
	ac_result_free(&r);

	/* the exec saw none of it */
	ck_assert_int_eq(ac_collect(&c, live, &r, T_SHORT), 0);
	ck_assert_str_eq((char *)r.ch[1].p, "still alive");
	ck_assert_int_eq(end_int(&r, "exit_code"), 0);
	ac_result_free(&r);

	/* DATA beyond the window ends that stream only */
	uint32_t greedy = ac_new_id(&c);
	ac_open(&c, greedy, "{\"op\":\"exec\",\"argv\":[\"sleep\",\"5\"],\"stdin\":true}");
	for (int i = 0; i < 5; i++)
		ac_send(&c, PROTO_DATA, 0, 0, greedy, junk, PROTO_DATA_CHUNK);
	ck_assert_int_eq(ac_collect(&c, greedy, &r, T_SHORT), 0);
	expect_end(&r, "protocol_error", "DATA beyond the window");
	call_expect(&c, "{\"op\":\"health\"}", "");
	agent_down(&c);
}
END_TEST

/* Mutated requests of harmless operations: every one gets exactly one END
 * (or an ERROR notice when the mutation broke nothing but the op name), and
 * the agent survives to exit cleanly. */
START_TEST(open_payload_fuzz)
{
	static const char *const corpus[] = {
		"{\"op\":\"health\"}",
		"{\"op\":\"stat\",\"path\":\"/etc/hostname\",\"user\":\"root\"}",
		"{\"op\":\"exists\",\"path\":\"~/x\"}",
		"{\"op\":\"list\",\"path\":\"/etc\",\"depth\":1}",
		"{\"op\":\"read\",\"path\":\"/etc/hostname\",\"offset\":1,\"length\":3}",
		"{\"op\":\"processes\"}",
		"{\"op\":\"context_list\"}",
		"{\"op\":\"attach\",\"pid\":1234567}",
		"{\"op\":\"post_fork\",\"entropy\":\"AAAA\"}",
	};
	struct ac c;
	agent_up(&c);
	srand(42);
	for (int i = 0; i < 3000; i++) {
		char buf[256];
		const char *base = corpus[rand() % (int)(sizeof(corpus) / sizeof(corpus[0]))];
		size_t n = strlen(base);
		memcpy(buf, base, n);
		for (int m = rand() % 4; m >= 0; m--) {
			switch (rand() % 3) {
			case 0: buf[rand() % (int)n] = (char)rand(); break;
			case 1: n = (size_t)(rand() % (int)n) + 1; break;
			case 2:
				if (n < sizeof(buf) - 1) {
					size_t at = (size_t)(rand() % (int)n);
					memmove(buf + at + 1, buf + at, n - at);
					buf[at] = "{}[]\",:0\\u"[rand() % 11];
					n++;
				}
			}
		}
		uint32_t id = ac_new_id(&c);
		ac_send(&c, PROTO_OPEN, 0, 0, id, buf, n);
		struct ac_result r;
		ck_assert_int_eq(ac_collect(&c, id, &r, T_SHORT), 0);
		ac_result_free(&r);
	}
	call_expect(&c, "{\"op\":\"health\"}", "");
	agent_down(&c);
}
END_TEST

START_TEST(hello_required_and_versioned)
{
	struct ac c;
	agent_up(&c);
	/* a second HELLO is refused, the connection stays usable */
	ac_send(&c, PROTO_HELLO, 0, 0, 0, "{}", 2);
	expect_notice(&c, "protocol_error");
	call_expect(&c, "{\"op\":\"health\"}", "");
	agent_down(&c);
}
END_TEST

/* On a listening transport, processes outlive connections: a background
 * process started on one connection is attached from the next one, and a
 * foreground one dies with its connection. */
START_TEST(unix_reconnect_reattach)
{
	char path[64], req[128];
	struct ac c;
	struct ac_result r;
	snprintf(path, sizeof(path), "/tmp/mitos-agent-test-%d.sock", (int)getpid());
	pid_t agent = ac_spawn_unix(path);
	ck_assert_int_gt(agent, 0);
	ck_assert_int_eq(ac_connect_unix(&c, path), 0);
	uint32_t bg = ac_new_id(&c), fg = ac_new_id(&c);
	ac_open(&c, bg, "{\"op\":\"exec\",\"cmd\":\"sleep 0.3; echo survived\",\"background\":true}");
	ac_open(&c, fg, "{\"op\":\"exec\",\"argv\":[\"sleep\",\"30\"]}");
	int pids[2];
	for (int i = 0; i < 2; i++) {
		struct ac_frame *f;
		ck_assert_int_eq(ac_recv(&c, i ? fg : bg, &f, T_SHORT), 0);
		cJSON *j = cJSON_Parse((char *)f->p);
		pids[i] = json_int(j, "pid");
		cJSON_Delete(j);
		ac_frame_free(f);
	}
	ck_assert_int_eq(ac_stop(&c), 0); /* drops the connection */
	ck_assert_int_eq(ac_connect_unix(&c, path), 0);
	snprintf(req, sizeof(req), "{\"op\":\"attach\",\"pid\":%d}", pids[0]);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_str_eq((char *)r.ch[1].p, "survived\n");
	ac_result_free(&r);
	snprintf(req, sizeof(req), "{\"op\":\"attach\",\"pid\":%d}", pids[1]);
	call_expect(&c, req, "not_found");
	ac_stop(&c);
	int status;
	kill(agent, SIGTERM); /* a clean shutdown, which the sanitizers check */
	ck_assert_int_eq(waitpid(agent, &status, 0), agent);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	unlink(path);
}
END_TEST

static long rss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return kib;
}

/* Events are not flow-controlled, so their producers must pause while the
 * connection is congested: a client that stops reading a huge listing and a
 * chatty cell does not make the agent grow. */
START_TEST(events_pause_for_slow_reader)
{
	struct ac c;
	struct ac_result r;
	/* A sanitized agent keeps freed memory in quarantine: keep that small so
	 * RSS measures what the agent holds. */
	char asan[512];
	snprintf(asan, sizeof(asan), "%s:quarantine_size_mb=1", getenv("ASAN_OPTIONS") ? getenv("ASAN_OPTIONS") : "");
	setenv("ASAN_OPTIONS", asan, 1);
	agent_up(&c);
	call_expect(&c, "{\"op\":\"health\"}", "");
	long before = rss_kib(c.pid);
	uint32_t list = ac_new_id(&c), code = ac_new_id(&c);
	ac_open(&c, list, "{\"op\":\"list\",\"path\":\"/usr\",\"depth\":64}");
	ac_open(&c, code, "{\"op\":\"run_code\",\"code\":\"from IPython.display import display, HTML\\n"
		"for i in range(3000): display(HTML('x' * 20000))\"}");
	sleep(3); /* read nothing meanwhile */
	long during = rss_kib(c.pid);
	ck_assert_msg(during - before < 16 * 1024, "agent grew by %ld KiB", during - before);
	ck_assert_int_eq(ac_collect(&c, list, &r, T_LONG), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "\"count\":"));
	ac_result_free(&r);
	ck_assert_int_eq(ac_collect(&c, code, &r, T_LONG), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "\"status\": \"ok\""));
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

/* Starts the agent as PID 1 of new pid and mount namespaces, listening on
 * path. Returns the pid of the helper that waits for it, or -1 when this host
 * does not allow namespaces. */
static pid_t spawn_as_pid1(const char *path)
{
	pid_t helper = fork();
	if (helper == 0) {
		if (unshare(CLONE_NEWPID | CLONE_NEWNS) < 0 ||
		    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
			_exit(77);
		pid_t init = fork();
		if (init == 0) {
			syscall(SYS_close_range, 3, ~0u, 0);
			const char *agent = getenv("MITOS_AGENT") ? getenv("MITOS_AGENT") : MITOS_AGENT_PATH;
			execl(agent, agent, "--unix", path, (char *)NULL);
			_exit(127);
		}
		int status;
		waitpid(init, &status, 0);
		_exit(WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status));
	}
	for (int i = 0; i < 300 && access(path, F_OK); i++) {
		int status;
		if (waitpid(helper, &status, WNOHANG) == helper)
			return -1;
		usleep(10000);
	}
	return helper;
}

/* The PID 1 path a guest takes, minus the overlay (the host root is writable):
 * early mounts, reaping orphans, pty on the mounted devpts, poweroff. */
START_TEST(init_as_pid1_in_namespace)
{
	char path[64];
	struct ac c;
	struct ac_result r;
	snprintf(path, sizeof(path), "/var/tmp/mitos-agent-init-%d.sock", (int)getpid());
	unlink(path);
	pid_t helper = spawn_as_pid1(path);
	if (helper < 0)
		return; /* no namespaces here (unprivileged): nothing to test */
	ck_assert_int_eq(ac_connect_unix(&c, path), 0);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"health\"}", &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "\"pid\":1,\"init\":true"));
	ac_result_free(&r);
	/* the background sleep is orphaned to PID 1, which must reap it */
	call_expect(&c, "{\"op\":\"exec\",\"cmd\":\"sleep 0.1 & exit 0\"}", "");
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"exec\",\"cmd\":\"sleep 0.4; "
				     "cat /proc/[0-9]*/stat | awk '$3 == \\\"Z\\\"' | wc -l; "
				     "grep -q ' /tmp tmpfs ' /proc/mounts && echo tmpfs\"}",
				     &r, T_SHORT), 0);
	ck_assert_str_eq((char *)r.ch[1].p, "0\ntmpfs\n");
	ac_result_free(&r);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"pty\",\"argv\":[\"tty\"]}", &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr((char *)r.ch[1].p, "/dev/pts/"));
	ac_result_free(&r);
	call_expect(&c, "{\"op\":\"poweroff\"}", "");
	int status;
	ck_assert_int_eq(waitpid(helper, &status, 0), helper); /* the namespace's init is gone */
	ac_stop(&c);
	unlink(path);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("agent_misc");
	TCase *tc = tcase_create("misc");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, forward_roundtrip);
	tcase_add_test(tc, health_and_post_fork);
	tcase_add_test(tc, bad_frames_leave_other_streams_alone);
	tcase_add_test(tc, hello_required_and_versioned);
	tcase_add_test(tc, open_payload_fuzz);
	tcase_add_test(tc, unix_reconnect_reattach);
	tcase_add_test(tc, events_pause_for_slow_reader);
	tcase_add_test(tc, init_as_pid1_in_namespace);
	suite_add_tcase(s, tc);
	return run_suite(s);
}
