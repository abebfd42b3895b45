/* The host side of the agent protocol (api/sandbox/agent_client.c) against a fake
 * agent on a Unix socket: a well-behaved stream gets its credit back as its consumer
 * has room, and an agent that sends past the window it was granted gets that stream
 * reset and is reported, without serve taking more than the window. */
#include <check.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent/proto.h"
#include "api/http/uring.h"
#include "api/sandbox/agent_client.h"

#define CHUNK (64u << 10)
#define GOOD_BYTES (1u << 20)  /* four windows: only arrives if credit is granted back */
#define FLOOD_BYTES (2u << 20) /* what the hostile stream tries to push */

static char sock_path[108];
static int listen_fd = -1;

static int read_full(int fd, void *p, size_t n)
{
	for (size_t off = 0; off < n;) {
		ssize_t r = read(fd, (uint8_t *)p + off, n - off);
		if (r <= 0)
			return -1;
		off += (size_t)r;
	}
	return 0;
}

static int send_frame(int fd, uint8_t type, uint32_t stream, uint8_t channel, const void *p, uint32_t n)
{
	uint8_t hdr[PROTO_HEADER_SIZE];
	struct proto_header h = { .length = n, .stream = stream, .type = type, .channel = channel };
	proto_header_encode(&h, hdr);
	if (send(fd, hdr, sizeof(hdr), MSG_NOSIGNAL) != (ssize_t)sizeof(hdr))
		return -1;
	return n && send(fd, p, n, MSG_NOSIGNAL) != (ssize_t)n ? -1 : 0;
}

/* One frame from the host; the payload (NUL-terminated) is the caller's to free. */
static int recv_frame(int fd, struct proto_header *h, char **payload)
{
	uint8_t hdr[PROTO_HEADER_SIZE];
	if (read_full(fd, hdr, sizeof(hdr)))
		return -1;
	proto_header_decode(hdr, h);
	*payload = calloc(1, h->length + 1);
	return *payload && !read_full(fd, *payload, h->length) ? 0 : -1;
}

static uint32_t be32(const char *p)
{
	const uint8_t *u = (const uint8_t *)p;
	return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* The fake agent: HELLO, then for each OPEN of {"op":"flood"} DATA without regard for
 * credit, and for {"op":"good"} GOOD_BYTES sent only as credit allows, then END. */
static void *fake_agent(void *arg)
{
	(void)arg;
	int fd = accept(listen_fd, NULL, NULL);
	if (fd < 0)
		return NULL;
	static uint8_t chunk[CHUNK];
	memset(chunk, 'x', sizeof(chunk));
	uint64_t credit = PROTO_INITIAL_WINDOW;
	uint32_t good = 0, sent = 0;
	for (;;) {
		struct proto_header h;
		char *p;
		if (recv_frame(fd, &h, &p))
			break;
		if (h.type == PROTO_HELLO) {
			const char *hello = "{\"version\":1,\"agent\":\"fake\",\"window\":262144}";
			send_frame(fd, PROTO_HELLO, 0, 0, hello, (uint32_t)strlen(hello));
		} else if (h.type == PROTO_OPEN && strstr(p, "flood")) {
			for (uint32_t n = 0; n < FLOOD_BYTES; n += CHUNK)
				if (send_frame(fd, PROTO_DATA, h.stream, PROTO_CH_STDOUT, chunk, CHUNK))
					break;
		} else if (h.type == PROTO_OPEN && strstr(p, "good")) {
			good = h.stream;
		} else if (h.type == PROTO_WINDOW && h.stream == good && h.length == 4) {
			credit += be32(p);
		}
		while (good && sent < GOOD_BYTES && credit >= CHUNK) {
			send_frame(fd, PROTO_DATA, good, PROTO_CH_STDOUT, chunk, CHUNK);
			credit -= CHUNK;
			sent += CHUNK;
		}
		if (good && sent == GOOD_BYTES) {
			send_frame(fd, PROTO_END, good, 0, "{}", 2);
			good = 0;
		}
		free(p);
	}
	close(fd);
	return NULL;
}

struct probe {
	size_t got;
	bool room;          /* what room() answers */
	bool ended;
	bool end_payload;   /* END arrived (not a reset) */
	char why[200];
};

static struct probe flood, good;
static unsigned violations;
static char violation_why[200];
static struct agent_conn *conn;

static void p_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	(void)ch; (void)fin; (void)p;
	((struct probe *)s->ctx)->got += n;
}

static void p_end(struct astream *s, cJSON *payload, const char *why)
{
	struct probe *pr = s->ctx;
	pr->ended = true;
	pr->end_payload = payload != NULL;
	snprintf(pr->why, sizeof(pr->why), "%s", why ? why : "");
	if (flood.ended && good.ended)
		ur_stop();
}

static size_t p_room(struct astream *s)
{
	return ((struct probe *)s->ctx)->room ? SIZE_MAX : 0;
}

static const struct astream_ops probe_ops = { .data = p_data, .end = p_end, .room = p_room };

static void c_ready(struct agent_conn *ac, void *ctx)
{
	(void)ctx;
	ck_assert_ptr_nonnull(agent_open(ac, "{\"op\":\"flood\"}", &probe_ops, &flood));
	ck_assert_ptr_nonnull(agent_open(ac, "{\"op\":\"good\"}", &probe_ops, &good));
}

static void c_closed(struct agent_conn *ac, void *ctx, const char *why)
{
	(void)ac; (void)ctx;
	ck_abort_msg("the connection closed: %s", why);
}

static void c_violation(struct agent_conn *ac, void *ctx, const char *why)
{
	(void)ac; (void)ctx;
	violations++;
	snprintf(violation_why, sizeof(violation_why), "%s", why);
}

static const struct agent_conn_cbs cbs = { c_ready, c_closed, c_violation };

START_TEST(credit_enforced_both_ways)
{
	snprintf(sock_path, sizeof(sock_path), "/tmp/mitos-test-agent-%d.sock", (int)getpid());
	unlink(sock_path);
	listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strcpy(sa.sun_path, sock_path);
	ck_assert_int_eq(bind(listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(listen_fd, 1), 0);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, fake_agent, NULL), 0);
	ck_assert_int_eq(ur_init(64, 16, 4096), 0);
	/* The flood's consumer never has room: no credit goes back, so the agent may send
	 * one window and no more. The good stream's consumer always has room. */
	flood.room = false;
	good.room = true;
	ck_assert_int_eq(agent_connect(sock_path, &cbs, NULL, &conn), 0);
	ck_assert_int_eq(ur_run(), 0);
	ck_assert(flood.ended && !flood.end_payload);
	ck_assert_msg(strstr(flood.why, "protocol violation"), "flood ended with: %s", flood.why);
	ck_assert_uint_eq(flood.got, PROTO_INITIAL_WINDOW);
	ck_assert_uint_eq(violations, 1);
	ck_assert(strstr(violation_why, "credit"));
	/* The connection went on: the other stream got all its bytes through grants. */
	ck_assert(good.ended && good.end_payload);
	ck_assert_uint_eq(good.got, GOOD_BYTES);
	ck_assert(agent_conn_ready(conn));
	agent_conn_close(conn);
	agent_conn_free_all();
	ur_exit();
	shutdown(listen_fd, SHUT_RDWR);
	close(listen_fd);
	pthread_join(th, NULL);
	unlink(sock_path);
}
END_TEST

/* The blocking call says why it failed, for the failures it meets before any frame:
 * nobody listening, and an agent that accepts and never answers. */
START_TEST(blocking_call_says_why)
{
	struct mitos_err e = { 0 };
	cJSON *end = NULL;
	snprintf(sock_path, sizeof(sock_path), "/tmp/mitos-ac-%d.sock", (int)getpid());
	unlink(sock_path);
	ck_assert_int_eq(agent_call_blocking(sock_path, 0, "{}", 1000, &end, &e), -ENOENT);
	ck_assert_msg(strstr(e.msg, "cannot reach the agent through") && strstr(e.msg, sock_path), "%s", e.msg);
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, sock_path);
	ck_assert_int_eq(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(l, 1), 0);
	e = (struct mitos_err){ 0 };
	ck_assert_int_eq(agent_call_blocking(sock_path, 0, "{}", 200, &end, &e), -ETIMEDOUT);
	ck_assert_msg(strstr(e.msg, "did not answer within 200 ms"), "%s", e.msg);
	ck_assert_ptr_null(end);
	close(l);
	unlink(sock_path);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("agent_client");
	TCase *tc = tcase_create("credit");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, credit_enforced_both_ways);
	tcase_add_test(tc, blocking_call_says_why);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
