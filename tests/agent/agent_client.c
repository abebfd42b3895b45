#include "agent_client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void ac_buf_put(struct ac_buf *b, const void *p, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = realloc(b->p, cap);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = 0;
}

int ac_send_raw(struct ac *c, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n) {
		ssize_t w = write(c->fd, b, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
				poll(&pfd, 1, 1000);
				continue;
			}
			return -errno;
		}
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

int ac_send(struct ac *c, uint8_t type, uint8_t flags, uint8_t channel, uint32_t id,
	    const void *p, size_t n)
{
	uint8_t hdr[PROTO_HEADER_SIZE];
	struct proto_header h = { .length = (uint32_t)n, .stream = id, .type = type, .flags = flags,
				  .channel = channel };
	proto_header_encode(&h, hdr);
	int rc = ac_send_raw(c, hdr, sizeof(hdr));
	return rc ? rc : ac_send_raw(c, p, n);
}

int ac_open(struct ac *c, uint32_t id, const char *json)
{
	if (id < AC_MAX_STREAMS)
		c->credit[id] = PROTO_INITIAL_WINDOW;
	return ac_send(c, PROTO_OPEN, 0, 0, id, json, strlen(json));
}

int ac_window(struct ac *c, uint32_t id, uint32_t n)
{
	uint8_t b[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
	return ac_send(c, PROTO_WINDOW, 0, 0, id, b, 4);
}

uint32_t ac_new_id(struct ac *c)
{
	return c->next_id++;
}

/* Reads available bytes and queues complete frames; waits until deadline at most.
 * Returns 0 also when nothing came, -ETIMEDOUT only once the deadline has passed. */
static int pump(struct ac *c, uint64_t deadline)
{
	uint64_t now = now_ms();
	if (now >= deadline)
		return -ETIMEDOUT;
	struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
	int r = poll(&pfd, 1, (int)(deadline - now));
	if (r == 0)
		return 0;
	if (r < 0)
		return -errno;
	static uint8_t buf[256 * 1024];
	ssize_t n = read(c->fd, buf, sizeof(buf));
	if (n == 0)
		return -EPIPE;
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -errno;
	const uint8_t *p = buf;
	size_t len = (size_t)n;
	while (len) {
		struct proto_header h;
		const uint8_t *payload;
		enum proto_parse_event ev = proto_parse(&c->parser, &p, &len, &h, &payload);
		if (ev != PROTO_PARSE_FRAME)
			continue;
		if (h.type == PROTO_WINDOW && h.length == 4 && h.stream < AC_MAX_STREAMS) {
			c->credit[h.stream] += (uint32_t)payload[0] << 24 | (uint32_t)payload[1] << 16 |
					       (uint32_t)payload[2] << 8 | payload[3];
			continue;
		}
		if (h.type == PROTO_DATA && c->auto_window && h.length)
			ac_window(c, h.stream, h.length);
		struct ac_frame *f = calloc(1, sizeof(*f));
		f->h = h;
		f->p = malloc(h.length + 1);
		memcpy(f->p, payload, h.length);
		f->p[h.length] = 0;
		if (c->queue_tail)
			c->queue_tail->next = f;
		else
			c->queue = f;
		c->queue_tail = f;
	}
	return 0;
}

int ac_recv(struct ac *c, uint32_t id, struct ac_frame **out, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	for (;;) {
		struct ac_frame *prev = NULL;
		for (struct ac_frame *f = c->queue; f; prev = f, f = f->next) {
			if (id != UINT32_MAX && f->h.stream != id)
				continue;
			if (prev)
				prev->next = f->next;
			else
				c->queue = f->next;
			if (c->queue_tail == f)
				c->queue_tail = prev;
			f->next = NULL;
			*out = f;
			return 0;
		}
		int rc = pump(c, deadline);
		if (rc)
			return rc;
	}
}

void ac_frame_free(struct ac_frame *f)
{
	if (f) {
		free(f->p);
		free(f);
	}
}

int ac_write_data(struct ac *c, uint32_t id, const void *p, size_t n, bool fin, int timeout_ms)
{
	const uint8_t *b = p;
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	do {
		while (id < AC_MAX_STREAMS && !c->credit[id] && n) {
			int rc = pump(c, deadline);
			if (rc)
				return rc;
		}
		size_t chunk = n < PROTO_DATA_CHUNK ? n : PROTO_DATA_CHUNK;
		if (id < AC_MAX_STREAMS && chunk > c->credit[id])
			chunk = (size_t)c->credit[id];
		bool last = chunk == n;
		int rc = ac_send(c, PROTO_DATA, last && fin ? PROTO_FLAG_FIN : 0, 0, id, b, chunk);
		if (rc)
			return rc;
		if (id < AC_MAX_STREAMS)
			c->credit[id] -= chunk;
		b += chunk;
		n -= chunk;
	} while (n);
	return 0;
}

int ac_collect(struct ac *c, uint32_t id, struct ac_result *r, int timeout_ms)
{
	memset(r, 0, sizeof(*r));
	for (;;) {
		struct ac_frame *f;
		int rc = ac_recv(c, id, &f, timeout_ms);
		if (rc)
			return rc;
		switch (f->h.type) {
		case PROTO_DATA:
			if (f->h.channel < 3) {
				ac_buf_put(&r->ch[f->h.channel], f->p, f->h.length);
				if (f->h.flags & PROTO_FLAG_FIN)
					r->fin[f->h.channel] = true;
			}
			break;
		case PROTO_EVENT:
			ac_buf_put(&r->events, f->p, f->h.length);
			ac_buf_put(&r->events, "\n", 1);
			break;
		case PROTO_END:
			r->end = (char *)f->p;
			f->p = NULL;
			ac_frame_free(f);
			return 0;
		default:
			break;
		}
		ac_frame_free(f);
	}
}

void ac_result_free(struct ac_result *r)
{
	for (int i = 0; i < 3; i++)
		free(r->ch[i].p);
	free(r->events.p);
	free(r->end);
	memset(r, 0, sizeof(*r));
}

int ac_call(struct ac *c, const char *json, struct ac_result *r, int timeout_ms)
{
	uint32_t id = ac_new_id(c);
	int rc = ac_open(c, id, json);
	return rc ? rc : ac_collect(c, id, r, timeout_ms);
}

static void client_init(struct ac *c)
{
	memset(c, 0, sizeof(*c));
	c->auto_window = true;
	c->next_id = 1;
	proto_parser_init(&c->parser, PROTO_MAX_PAYLOAD);
}

static const char *agent_path(void)
{
	const char *agent = getenv("MITOS_AGENT");
	return agent ? agent : MITOS_AGENT_PATH;
}

static int hello(struct ac *c)
{
	const char *hello = "{\"min_version\":1,\"max_version\":1}";
	int rc = ac_send(c, PROTO_HELLO, 0, 0, 0, hello, strlen(hello));
	struct ac_frame *f;
	if (!rc)
		rc = ac_recv(c, 0, &f, 5000);
	if (rc)
		return rc;
	snprintf(c->hello, sizeof(c->hello), "%s", (char *)f->p);
	rc = f->h.type == PROTO_HELLO ? 0 : -EPROTO;
	ac_frame_free(f);
	return rc;
}

pid_t ac_spawn_unix(const char *path)
{
	pid_t pid = fork();
	if (pid == 0) {
		syscall(SYS_close_range, 3, ~0u, 0);
		execl(agent_path(), agent_path(), "--unix", path, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; pid > 0 && i < 500 && access(path, F_OK); i++)
		usleep(10000);
	return pid;
}

int ac_connect_unix(struct ac *c, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	client_init(c);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -errno;
	/* The socket file appears at bind(), a moment before listen(): a connect in
	 * between is refused, so a just-started agent gets a few seconds. */
	for (int i = 0; connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0; i++) {
		if ((errno != ECONNREFUSED && errno != ENOENT) || i == 500)
			return -errno;
		usleep(10000);
	}
	return hello(c);
}

int ac_start(struct ac *c, const char *const *extra_args)
{
	int sv[2];
	client_init(c);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	const char *agent = agent_path();
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		/* The agent gets the socket as fd 3 and nothing else the test holds
		 * (a listening socket it inherited would answer connects itself). */
		const char *argv[16] = { agent, "--fd", "3" };
		int n = 3;
		for (int i = 0; extra_args && extra_args[i] && n < 15; i++)
			argv[n++] = extra_args[i];
		if (dup2(sv[1], 3) < 0)
			_exit(127);
		syscall(SYS_close_range, 4, ~0u, 0);
		execv(agent, (char *const *)argv);
		_exit(127);
	}
	close(sv[1]);
	c->fd = sv[0];
	c->pid = pid;
	return hello(c);
}

int ac_stop(struct ac *c)
{
	int status = -1, rc = c->pid ? -1 : 0;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	if (c->pid > 0) {
		for (int i = 0; i < 500; i++) {
			if (waitpid(c->pid, &status, WNOHANG) == c->pid) {
				c->pid = 0;
				rc = WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
				break;
			}
			usleep(10000);
		}
		if (c->pid > 0) {
			kill(c->pid, SIGKILL);
			waitpid(c->pid, &status, 0);
		}
	}
	while (c->queue) {
		struct ac_frame *f = c->queue;
		c->queue = f->next;
		ac_frame_free(f);
	}
	c->queue_tail = NULL;
	proto_parser_free(&c->parser);
	return rc;
}
