/* Port forwarding, health, post_fork, and bad frames on a live connection. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
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
	cJSON *j = end_json(&r);
	ck_assert_str_eq(end_error_code(j), "invalid_argument");
	cJSON_Delete(j);
	ac_result_free(&r);

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
	j = end_json(&r);
	ck_assert_int_eq(json_int(j, "exit_code"), 0);
	cJSON_Delete(j);
	ac_result_free(&r);

	/* DATA beyond the window ends that stream only */
	uint32_t greedy = ac_new_id(&c);
	ac_open(&c, greedy, "{\"op\":\"exec\",\"argv\":[\"sleep\",\"5\"],\"stdin\":true}");
	for (int i = 0; i < 5; i++)
		ac_send(&c, PROTO_DATA, 0, 0, greedy, junk, PROTO_DATA_CHUNK);
	ck_assert_int_eq(ac_collect(&c, greedy, &r, T_SHORT), 0);
	j = end_json(&r);
	ck_assert_str_eq(end_error_code(j), "protocol_error");
	cJSON_Delete(j);
	ac_result_free(&r);
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

int main(void)
{
	Suite *s = suite_create("agent_misc");
	TCase *tc = tcase_create("misc");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, forward_roundtrip);
	tcase_add_test(tc, health_and_post_fork);
	tcase_add_test(tc, bad_frames_leave_other_streams_alone);
	tcase_add_test(tc, hello_required_and_versioned);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
