/* forward: a byte stream to a TCP port inside the sandbox (the preview proxy
 * rides on it). Half-closes pass through: DATA FIN from the client shuts down
 * our write side; the server's EOF becomes a DATA FIN to the client. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/ops.h"
#include "agent/relay.h"

struct forward {
	struct stream *s;
	int fd;
	struct watch connect_w;
	bool connected;
	bool client_fin;
	bool sent_fin;
	struct relay_out out; /* owns fd */
	struct relay_in in;   /* owns a dup of fd, so each direction has its own watch */
};

static void forward_free(struct forward *f)
{
	if (f->connected) {
		relay_out_close(&f->out);
		relay_in_close(&f->in);
	} else {
		watch_del(&f->connect_w);
		close(f->fd);
	}
	free(f);
}

static void forward_progress(struct forward *f)
{
	if (relay_out_done(&f->out) && !f->sent_fin) {
		stream_data(f->s, PROTO_CH_MAIN, true, NULL, 0);
		f->sent_fin = true;
	}
	if (f->sent_fin && f->client_fin && (f->in.closed || !ring_used(&f->in.ring))) {
		struct stream *s = f->s;
		forward_free(f);
		stream_end_ok(s);
	}
}

static void out_changed(struct relay_out *o)
{
	forward_progress(o->owner);
}

static void forward_data(struct stream *s, uint8_t channel, bool fin, const uint8_t *p, size_t n)
{
	struct forward *f = s->ctx;
	(void)channel;
	if (!f->connected) {
		stream_consumed(s, n); /* the client was told to wait for "connected" */
		return;
	}
	relay_in_push(&f->in, p, n, true);
	if (fin) {
		f->client_fin = true;
		relay_in_finish(&f->in);
		forward_progress(f);
	}
}

static void forward_writable(struct stream *s)
{
	struct forward *f = s->ctx;
	if (!f->connected)
		return;
	relay_out_flush(&f->out);
	forward_progress(f);
}

static void forward_cancel(struct stream *s)
{
	forward_free(s->ctx);
}

static const struct stream_ops forward_ops = {
	.data = forward_data, .writable = forward_writable, .cancel = forward_cancel,
};

static void forward_fail(struct forward *f, int err)
{
	struct stream *s = f->s;
	forward_free(f);
	s->ctx = NULL;
	s->ops = NULL;
	stream_end_errno(s, err, "connect");
}

static void forward_established(struct forward *f)
{
	int wfd = fcntl(f->fd, F_DUPFD_CLOEXEC, 0);
	if (wfd < 0) {
		forward_fail(f, -errno);
		return;
	}
	f->connected = true;
	relay_out_start(&f->out, f->fd, PROTO_CH_MAIN, PROTO_INITIAL_WINDOW, out_changed, f);
	relay_in_start(&f->in, wfd, PROTO_INITIAL_WINDOW, true);
	f->out.s = f->s;
	f->in.s = f->s;
	stream_event(f->s, "{\"connected\":true}", 18);
}

static void forward_connect_done(struct watch *w, uint32_t events)
{
	struct forward *f = (struct forward *)((char *)w - offsetof(struct forward, connect_w));
	int err = 0;
	socklen_t len = sizeof(err);
	(void)events;
	if (getsockopt(f->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		forward_fail(f, -err);
		return;
	}
	watch_del(&f->connect_w);
	forward_established(f);
}

void op_forward_open(struct stream *s, const struct json *req)
{
	int64_t port;
	const char *host = json_get_str(req, "host");
	struct sockaddr_in sa = { .sin_family = AF_INET };
	if (json_get_int(req, "port", 1, 65535, &port)) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "port must be in 1..65535");
		return;
	}
	if (inet_pton(AF_INET, host ? host : "127.0.0.1", &sa.sin_addr) != 1) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "host must be an IPv4 address");
		return;
	}
	sa.sin_port = htons((uint16_t)port);
	struct forward *f = calloc(1, sizeof(*f));
	if (!f) {
		stream_end_errno(s, -ENOMEM, "forward");
		return;
	}
	f->s = s;
	f->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (f->fd < 0) {
		free(f);
		stream_end_errno(s, -errno, "socket");
		return;
	}
	s->ctx = f;
	s->ops = &forward_ops;
	if (connect(f->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		forward_established(f);
	} else if (errno == EINPROGRESS) {
		int rc = watch_add(&f->connect_w, f->fd, EPOLLOUT, forward_connect_done);
		if (rc)
			forward_fail(f, rc);
	} else {
		forward_fail(f, -errno);
	}
}
