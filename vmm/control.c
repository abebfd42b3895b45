#include "control.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/unix_connect.h"
#include "lib/unix_listen.h"
#include "lib/clock.h"

struct control_client {
	struct control_server *srv;
	ev_io io;
	struct control_fds fds;   /* those of the line being read */
	bool too_many_fds;
	size_t len;
	char buf[CONTROL_MAX_LINE + 1];
};

struct control_server {
	struct ev_loop *loop;
	ev_io listen_io;
	char *path;
	control_handler_fn handler;
	void *ctx;
	struct control_client *clients[CONTROL_MAX_CLIENTS];
};

cJSON *control_reply_ok(void)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddBoolToObject(o, "ok", 1);
	return o;
}

cJSON *control_reply_error(const char *code, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddBoolToObject(o, "ok", 0);
	cJSON *err = cJSON_AddObjectToObject(o, "error");
	cJSON_AddStringToObject(err, "code", code);
	cJSON_AddStringToObject(err, "message", msg);
	return o;
}

static void fds_close(struct control_fds *f)
{
	for (unsigned i = 0; i < f->n; i++)
		close(f->fd[i]);
	f->n = 0;
}

static void client_close(struct control_client *c)
{
	struct control_server *s = c->srv;
	fds_close(&c->fds);
	ev_io_stop(s->loop, &c->io);
	close(c->io.fd);
	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (s->clients[i] == c)
			s->clients[i] = NULL;
	free(c);
}

/* Replies are small; a client that does not read them is dropped rather than buffered. */
static bool client_send(struct control_client *c, cJSON *reply)
{
	char *text = cJSON_PrintUnformatted(reply);
	cJSON_Delete(reply);
	if (!text)
		return false;
	size_t len = strlen(text);
	text[len] = '\n';  /* overwrites the terminator; length is known */
	bool ok = send(c->io.fd, text, len + 1, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)(len + 1);
	free(text);
	return ok;
}

static bool handle_line(struct control_client *c, char *line)
{
	cJSON *req = cJSON_Parse(line);
	cJSON *reply;
	if (c->too_many_fds)
		reply = control_reply_error("invalid_request", "more than %d descriptors with one request",
					    CONTROL_MAX_FDS);
	else if (!req || !cJSON_IsObject(req))
		reply = control_reply_error("invalid_request", "each line must be one JSON object");
	else
		reply = c->srv->handler(c->srv->ctx, req, &c->fds);
	cJSON_Delete(req);
	fds_close(&c->fds);
	c->too_many_fds = false;
	return client_send(c, reply);
}

/* Keeps the descriptors a message carried for the line they arrived with; any beyond
 * the limit (or of a truncated control message) are closed and fail that line. */
static void take_fds(struct control_client *c, struct msghdr *mh)
{
	if (mh->msg_flags & MSG_CTRUNC)
		c->too_many_fds = true;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		const unsigned char *data = CMSG_DATA(cm);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, data + i * sizeof(int), sizeof(int));
			if (c->fds.n < CONTROL_MAX_FDS) {
				c->fds.fd[c->fds.n++] = fd;
			} else {
				close(fd);
				c->too_many_fds = true;
			}
		}
	}
}

static void on_client(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop; (void)revents;
	struct control_client *c = w->data;
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(CONTROL_MAX_FDS * sizeof(int))];
	} ctl;
	struct iovec iov = { c->buf + c->len, CONTROL_MAX_LINE - c->len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
			     .msg_controllen = sizeof(ctl.buf) };
	ssize_t n = recvmsg(w->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0)
		take_fds(c, &mh);
	if (n <= 0) {
		client_close(c);
		return;
	}
	c->len += (size_t)n;
	char *nl;
	while ((nl = memchr(c->buf, '\n', c->len))) {
		*nl = '\0';
		size_t used = (size_t)(nl - c->buf) + 1;
		bool ok = handle_line(c, c->buf);
		memmove(c->buf, c->buf + used, c->len - used);
		c->len -= used;
		if (!ok) {
			client_close(c);
			return;
		}
	}
	if (c->len == CONTROL_MAX_LINE) {
		client_send(c, control_reply_error("invalid_request", "line longer than %d bytes",
						   CONTROL_MAX_LINE));
		client_close(c);
	}
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct control_server *s = w->data;
	int fd = accept4(w->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0)
		return;
	int slot = -1;
	for (int i = 0; i < CONTROL_MAX_CLIENTS && slot < 0; i++)
		if (!s->clients[i])
			slot = i;
	struct control_client *c = slot >= 0 ? calloc(1, sizeof(*c)) : NULL;
	if (!c) {
		close(fd);
		return;
	}
	c->srv = s;
	ev_io_init(&c->io, on_client, fd, EV_READ);
	c->io.data = c;
	ev_io_start(loop, &c->io);
	s->clients[slot] = c;
}

int control_server_start(struct control_server **out, struct ev_loop *loop, const char *path,
			 control_handler_fn handler, void *ctx, struct mitos_err *e)
{
	int fd = unix_listen(path, 16, true);
	if (fd < 0)
		return mitos_err_set(e, fd, "control socket %s: %s", path,
				     fd == -ENAMETOOLONG ? "path too long" :
				     fd == -EEXIST ? "exists and is not a socket" : strerror(-fd));
	struct control_server *s = calloc(1, sizeof(*s));
	if (!s || !(s->path = strdup(path))) {
		free(s);
		close(fd);
		unlink(path);
		return mitos_err_set(e, -ENOMEM, "out of memory");
	}
	s->loop = loop;
	s->handler = handler;
	s->ctx = ctx;
	ev_io_init(&s->listen_io, on_accept, fd, EV_READ);
	s->listen_io.data = s;
	ev_io_start(loop, &s->listen_io);
	*out = s;
	return 0;
}

void control_server_stop(struct control_server *s)
{
	if (!s)
		return;
	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (s->clients[i])
			client_close(s->clients[i]);
	ev_io_stop(s->loop, &s->listen_io);
	close(s->listen_io.fd);
	unlink(s->path);
	free(s->path);
	free(s);
}

/* The request line in one message, so the descriptors travel with its first byte. */
static bool send_request(int fd, const cJSON *request, const struct control_fds *fds)
{
	char *text = cJSON_PrintUnformatted(request);
	if (!text)
		return false;
	size_t len = strlen(text);
	text[len] = '\n';  /* overwrites the terminator; length is known */
	struct iovec iov = { text, len + 1 };
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(CONTROL_MAX_FDS * sizeof(int))];
	} ctl;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (fds && fds->n) {
		if (fds->n > CONTROL_MAX_FDS) {
			free(text);
			return false;
		}
		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE(fds->n * sizeof(int));
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(fds->n * sizeof(int));
		memcpy(CMSG_DATA(cm), fds->fd, fds->n * sizeof(int));
	}
	ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
	/* A short send left the rest of the line (the descriptors went with the first). */
	size_t off = n > 0 ? (size_t)n : 0;
	while (n > 0 && off < len + 1 && (n = send(fd, text + off, len + 1 - off, MSG_NOSIGNAL)) > 0)
		off += (size_t)n;
	free(text);
	return off == len + 1;
}

cJSON *control_call(const char *path, const cJSON *request, const struct control_fds *fds,
		    int timeout_ms, struct mitos_err *e)
{
	/* The socket lives in the VM process's own directory, which it may write. */
	int fd = unix_connect_nofollow(path, SOCK_CLOEXEC);
	if (fd < 0) {
		mitos_err_set(e, fd, "cannot connect to %s: %s (is the VM running with --control?)", path,
			      strerror(-fd));
		return NULL;
	}
	bool sent = send_request(fd, request, fds);
	char *buf = malloc(CONTROL_MAX_LINE + 1);
	size_t have = 0;
	cJSON *reply = NULL;
	long long deadline = (long long)mono_ms() + timeout_ms;
	while (sent && buf && have < CONTROL_MAX_LINE) {
		long long left = deadline - (long long)mono_ms();
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
			mitos_err_set(e, -ETIMEDOUT, "%s: no reply within %d ms", path, timeout_ms);
			break;
		}
		ssize_t n = recv(fd, buf + have, CONTROL_MAX_LINE - have, 0);
		if (n <= 0) {
			mitos_err_set(e, -ECONNRESET, "%s: connection closed before the reply", path);
			break;
		}
		have += (size_t)n;
		char *nl = memchr(buf, '\n', have);
		if (nl) {
			*nl = '\0';
			reply = cJSON_Parse(buf);
			if (!reply)
				mitos_err_set(e, -EPROTO, "%s: reply is not JSON", path);
			break;
		}
	}
	if (!sent)
		mitos_err_set(e, -EIO, "%s: cannot send the request", path);
	free(buf);
	close(fd);
	return reply;
}
