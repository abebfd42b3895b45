/* probe: one HTTP GET to a port inside the sandbox, answering the status code (a
 * template's workload is ready when its server answers as expected). Nonblocking
 * from connect to the status line, bounded by a timer. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/loop.h"
#include "agent/ops.h"

#define PROBE_TIMEOUT_MS 2000
#define PROBE_MAX_TIMEOUT_MS 60000
#define PROBE_HEAD 256

struct probe {
	struct stream *s;
	int fd;
	struct watch w;
	struct timer t;
	char req[600];
	size_t req_len, sent;
	char head[PROBE_HEAD];
	size_t got;
};

static void probe_free(struct probe *p)
{
	watch_del(&p->w);
	timer_disarm(&p->t);
	close(p->fd);
	free(p);
}

static void probe_end(struct probe *p, int status, enum proto_err code, const char *msg)
{
	struct stream *s = p->s;
	s->ctx = NULL;
	probe_free(p);
	if (msg) {
		stream_end_error(s, code, "%s", msg);
		return;
	}
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "status");
	jw_int(&w, status);
	jw_obj_end(&w);
	stream_end_jw(s, &w);
}

/* "HTTP/1.x NNN" once the first line is in. */
static int status_of(const char *h, size_t n)
{
	const char *nl = memchr(h, '\n', n);
	int code;
	if (!nl)
		return n >= PROBE_HEAD - 1 ? -1 : 0;
	if (sscanf(h, "HTTP/%*d.%*d %3d", &code) != 1 || code < 100 || code > 599)
		return -1;
	return code;
}

static void probe_io(struct watch *w, uint32_t events)
{
	struct probe *p = (struct probe *)((char *)w - offsetof(struct probe, w));
	(void)events;
	if (p->sent < p->req_len) {
		int err = 0;
		socklen_t len = sizeof(err);
		if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err) {
			probe_end(p, 0, err == ECONNREFUSED ? PERR_CONNECTION_REFUSED : PERR_IO_ERROR, strerror(err));
			return;
		}
		ssize_t k = send(p->fd, p->req + p->sent, p->req_len - p->sent, MSG_NOSIGNAL);
		if (k < 0 && errno != EAGAIN) {
			probe_end(p, 0, PERR_IO_ERROR, strerror(errno));
			return;
		}
		if (k > 0)
			p->sent += (size_t)k;
		if (p->sent == p->req_len)
			watch_set(&p->w, EPOLLIN);
		return;
	}
	ssize_t k = recv(p->fd, p->head + p->got, sizeof(p->head) - 1 - p->got, 0);
	if (k < 0 && errno == EAGAIN)
		return;
	if (k <= 0) {
		probe_end(p, 0, PERR_PROTOCOL_ERROR, k < 0 ? strerror(errno) : "the server closed without a status line");
		return;
	}
	p->got += (size_t)k;
	int code = status_of(p->head, p->got);
	if (code < 0)
		probe_end(p, 0, PERR_PROTOCOL_ERROR, "the answer is not HTTP");
	else if (code > 0)
		probe_end(p, code, 0, NULL);
}

static void probe_timeout(struct timer *t)
{
	struct probe *p = (struct probe *)((char *)t - offsetof(struct probe, t));
	probe_end(p, 0, PERR_TIMEOUT, "no HTTP status line in time");
}

static void probe_cancel(struct stream *s)
{
	if (s->ctx)
		probe_free(s->ctx);
}

static const struct stream_ops probe_ops = { .cancel = probe_cancel };

void op_probe_open(struct stream *s, const struct json *req)
{
	int64_t port, timeout = PROBE_TIMEOUT_MS;
	const char *path = json_get_str(req, "path");
	if (json_get_int(req, "port", 1, 65535, &port) ||
	    json_get_int(req, "timeout_ms", 1, PROBE_MAX_TIMEOUT_MS, &timeout) == -EINVAL) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "port must be in 1..65535, timeout_ms in 1..%d",
				 PROBE_MAX_TIMEOUT_MS);
		return;
	}
	if (!path)
		path = "/";
	if (path[0] != '/' || strlen(path) > 512 || strpbrk(path, " \r\n")) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "path must start with / and hold no spaces or line breaks");
		return;
	}
	struct probe *p = calloc(1, sizeof(*p));
	if (!p || (p->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
		int err = p ? -errno : -ENOMEM;
		free(p);
		stream_end_errno(s, err, "socket");
		return;
	}
	p->s = s;
	p->req_len = (size_t)snprintf(p->req, sizeof(p->req),
				      "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nUser-Agent: mitos-probe\r\n\r\n", path,
				      (int)port);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (connect(p->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
		int err = errno;
		close(p->fd);
		free(p);
		stream_end_error(s, err == ECONNREFUSED ? PERR_CONNECTION_REFUSED : PERR_IO_ERROR, "connect: %s",
				 strerror(err));
		return;
	}
	int rc = watch_add(&p->w, p->fd, EPOLLOUT, probe_io);
	if (rc) {
		close(p->fd);
		free(p);
		stream_end_errno(s, rc, "probe");
		return;
	}
	s->ctx = p;
	s->ops = &probe_ops;
	timer_arm(&p->t, loop_now_ms() + (uint64_t)timeout, probe_timeout);
}
