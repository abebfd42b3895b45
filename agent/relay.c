#include "agent/relay.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/conn.h"

#define DETACHED_READ (64u << 10)

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

static void out_rearm(struct relay_out *o)
{
	if (o->eof)
		return;
	bool want = !o->s ? true : ring_space(&o->ring) > 0;
	watch_set(&o->w, want ? EPOLLIN : 0);
}

static void out_mark_eof(struct relay_out *o)
{
	watch_del(&o->w);
	close(o->fd);
	o->fd = -1;
	o->eof = true;
}

void relay_out_flush(struct relay_out *o)
{
	while (o->s && ring_used(&o->ring)) {
		size_t space = stream_send_space(o->s);
		if (!space)
			break;
		const uint8_t *p;
		size_t n = ring_peek(&o->ring, &p);
		if (n > space)
			n = space;
		stream_data(o->s, o->channel, false, p, n);
		ring_consume(&o->ring, n);
	}
	out_rearm(o);
}

/* One read step; returns false when nothing more can be read now. */
static bool out_read_once(struct relay_out *o)
{
	ssize_t n;
	if (o->s) {
		n = ring_read_fd(&o->ring, o->fd);
		if (n == -ENOBUFS)
			return false;
	} else {
		uint8_t tmp[DETACHED_READ];
		n = read(o->fd, tmp, sizeof(tmp));
		if (n < 0)
			n = -errno;
		else if (n > 0 && !o->discard_detached)
			o->dropped += ring_write_overwrite(&o->ring, tmp, (size_t)n);
	}
	if (n == -EAGAIN || n == -EINTR) {
		o->idle = n == -EAGAIN;
		return false;
	}
	if (n <= 0) { /* EOF, or EIO from a pty whose slave side closed */
		out_mark_eof(o);
		o->idle = true;
		return false;
	}
	o->idle = false;
	return true;
}

void relay_out_drain(struct relay_out *o)
{
	o->idle = false;
	while (!o->eof && out_read_once(o))
		relay_out_flush(o);
	relay_out_flush(o);
}

static void out_event(struct watch *w, uint32_t events)
{
	struct relay_out *o = (struct relay_out *)((char *)w - offsetof(struct relay_out, w));
	(void)events;
	/* A bounded number of reads per wakeup keeps one chatty child from
	 * starving the other fds. */
	for (int i = 0; i < 4 && out_read_once(o); i++)
		relay_out_flush(o);
	relay_out_flush(o);
	if (o->changed)
		o->changed(o);
}

int relay_out_start(struct relay_out *o, int fd, uint8_t channel, size_t cap,
		    void (*changed)(struct relay_out *), void *owner)
{
	int rc = set_nonblock(fd);
	if (rc)
		return rc;
	o->fd = fd;
	o->channel = channel;
	o->changed = changed;
	o->owner = owner;
	ring_init(&o->ring, cap);
	return watch_add(&o->w, fd, EPOLLIN, out_event);
}

void relay_out_close(struct relay_out *o)
{
	if (!o->eof && o->fd >= 0)
		out_mark_eof(o);
	ring_free(&o->ring);
}

/* ---- relay_in ---- */

static void in_close_fd(struct relay_in *in)
{
	if (in->closed)
		return;
	watch_del(&in->w);
	if (in->is_socket && in->fin)
		shutdown(in->fd, SHUT_WR);
	close(in->fd);
	in->closed = true;
}

static void in_credit(struct relay_in *in, size_t n)
{
	size_t give = n < in->owed ? n : (size_t)in->owed;
	in->owed -= give;
	if (in->s && give)
		stream_consumed(in->s, give);
}

static void in_pump(struct relay_in *in)
{
	while (!in->closed && ring_used(&in->ring)) {
		ssize_t n = ring_write_fd(&in->ring, in->fd);
		if (n == -EAGAIN || n == -EINTR)
			break;
		if (n < 0) {
			/* The reader is gone (EPIPE): nothing will ever take these bytes. */
			size_t lost = ring_used(&in->ring);
			ring_consume(&in->ring, lost);
			in_credit(in, lost);
			in_close_fd(in);
			return;
		}
		in_credit(in, (size_t)n);
	}
	if (in->closed)
		return;
	if (!ring_used(&in->ring) && in->fin)
		in_close_fd(in);
	else
		watch_set(&in->w, ring_used(&in->ring) ? EPOLLOUT : 0);
}

static void in_event(struct watch *w, uint32_t events)
{
	(void)events;
	in_pump((struct relay_in *)((char *)w - offsetof(struct relay_in, w)));
}

int relay_in_start(struct relay_in *in, int fd, size_t cap, bool is_socket)
{
	int rc = set_nonblock(fd);
	if (rc)
		return rc;
	in->fd = fd;
	in->is_socket = is_socket;
	ring_init(&in->ring, cap);
	return watch_add(&in->w, fd, 0, in_event);
}

size_t relay_in_push(struct relay_in *in, const uint8_t *p, size_t n, bool from_stream)
{
	if (from_stream)
		in->owed += n;
	if (in->closed || in->fin) {
		in_credit(in, n); /* absorbed: the reader is gone */
		return n;
	}
	size_t took = ring_write(&in->ring, p, n);
	if (from_stream && took < n)
		in_credit(in, n - took);
	in_pump(in);
	return took;
}

void relay_in_finish(struct relay_in *in)
{
	in->fin = true;
	in_pump(in);
}

void relay_in_close(struct relay_in *in)
{
	in_close_fd(in);
	ring_free(&in->ring);
}
