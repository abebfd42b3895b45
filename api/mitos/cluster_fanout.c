#include "api/mitos/cluster_fanout.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api/http/http.h"
#include "api/http/server.h"
#include "api/http/uring.h"

#define FO_MAX_TARGETS 256
#define FO_MAX_RESPONSE (32u << 20)
/* Each fan-out holds a thread and a socket per peer until its deadline. */
#define FO_MAX_INFLIGHT 16

static unsigned fo_inflight;

struct fo_target {
	char name[300];          /* host:port as written in the peers file */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int fd;
	size_t sent;
	char *resp;
	size_t len, cap;
	bool done;
};

struct fo_ctx {
	struct http_req *r;      /* NULL once the client is gone */
	char *request;
	size_t reqlen;
	uint64_t deadline_ms;
	char peers_file[1024];
	struct fo_target *t;
	unsigned n;
	char error[200];         /* the peers file could not be used */
	int pipe[2];
	char byte;
	struct uop done_op;
	fanout_done_fn done;
	void *ctx;
};

/* Every address of every HOST:PORT in the peers file ("TAG HOST:PORT" lines, '#'
 * comments): a DNS name of a headless service stands for all of its nodes. */
static int fo_resolve(struct fo_ctx *x)
{
	FILE *f = fopen(x->peers_file, "r");
	if (!f) {
		snprintf(x->error, sizeof(x->error), "cannot read the peers file: %s", strerror(errno));
		return -errno;
	}
	x->t = calloc(FO_MAX_TARGETS, sizeof(*x->t));
	if (!x->t) {
		fclose(f);
		return -ENOMEM;
	}
	char line[512];
	while (fgets(line, sizeof(line), f)) {
		char *hash = strchr(line, '#');
		if (hash)
			*hash = 0;
		char tag[64], hp[300];
		if (sscanf(line, "%63s %299s", tag, hp) != 2)
			continue;
		char *colon = strrchr(hp, ':');
		if (!colon || colon == hp)
			continue;
		*colon = 0;
		char *host = hp;
		size_t hl = strlen(host);
		if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
			host[hl - 1] = 0;
			host++;
		}
		struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
					  .ai_flags = AI_NUMERICSERV };
		struct addrinfo *ai = NULL;
		if (getaddrinfo(host, colon + 1, &hints, &ai))
			continue; /* an unresolvable peer is reported like an unreachable one */
		for (struct addrinfo *a = ai; a && x->n < FO_MAX_TARGETS; a = a->ai_next) {
			struct fo_target *t = &x->t[x->n++];
			snprintf(t->name, sizeof(t->name), "%s:%s", hp, colon + 1);
			memcpy(&t->addr, a->ai_addr, a->ai_addrlen);
			t->addrlen = a->ai_addrlen;
			t->fd = -1;
		}
		freeaddrinfo(ai);
	}
	fclose(f);
	return 0;
}

static void fo_finish_target(struct fo_target *t)
{
	if (t->fd >= 0)
		close(t->fd);
	t->fd = -1;
	t->done = true;
}

static void fo_io(struct fo_target *t, short rev, const char *req, size_t reqlen)
{
	if (rev & POLLOUT && t->sent < reqlen) {
		int err = 0;
		socklen_t el = sizeof(err);
		if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &el) || err) {
			fo_finish_target(t);
			return;
		}
		ssize_t w = send(t->fd, req + t->sent, reqlen - t->sent, MSG_NOSIGNAL);
		if (w < 0 && errno != EAGAIN) {
			fo_finish_target(t);
			return;
		}
		if (w > 0)
			t->sent += (size_t)w;
	}
	if (rev & (POLLIN | POLLHUP | POLLERR)) {
		if (t->cap - t->len < 65536) {
			size_t nc = t->cap ? t->cap * 2 : 131072;
			char *p = nc <= FO_MAX_RESPONSE + 1 ? realloc(t->resp, nc) : NULL;
			if (!p) {
				free(t->resp);
				t->resp = NULL;
				t->len = 0;
				fo_finish_target(t);
				return;
			}
			t->resp = p;
			t->cap = nc;
		}
		ssize_t got = recv(t->fd, t->resp + t->len, t->cap - t->len - 1, 0);
		if (got > 0) {
			t->len += (size_t)got;
			t->resp[t->len] = 0;
		} else if (got == 0 || errno != EAGAIN) {
			fo_finish_target(t);
		}
	}
}

static void *fo_thread(void *arg)
{
	struct fo_ctx *x = arg;
	if (fo_resolve(x) == 0) {
		for (unsigned i = 0; i < x->n; i++) {
			struct fo_target *t = &x->t[i];
			t->fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
			if (t->fd < 0 || (connect(t->fd, (struct sockaddr *)&t->addr, t->addrlen) < 0 &&
					  errno != EINPROGRESS))
				fo_finish_target(t);
		}
		uint64_t deadline = ur_mono_ms() + x->deadline_ms;
		struct pollfd *pf = calloc(x->n ? x->n : 1, sizeof(*pf));
		for (;;) {
			unsigned np = 0;
			for (unsigned i = 0; pf && i < x->n; i++) {
				struct fo_target *t = &x->t[i];
				if (t->done)
					continue;
				pf[np].fd = t->fd;
				pf[np].events = (short)(t->sent < x->reqlen ? POLLOUT : POLLIN);
				pf[np].revents = 0;
				np++;
			}
			uint64_t now = ur_mono_ms();
			if (!np || now >= deadline)
				break;
			if (poll(pf, np, (int)(deadline - now)) < 0 && errno != EINTR)
				break;
			for (unsigned i = 0, k = 0; i < x->n && k < np; i++) {
				struct fo_target *t = &x->t[i];
				if (t->done || t->fd != pf[k].fd)
					continue;
				if (pf[k].revents)
					fo_io(t, pf[k].revents, x->request, x->reqlen);
				k++;
			}
		}
		free(pf);
		/* Whoever did not finish in time counts as unreachable. */
		for (unsigned i = 0; i < x->n; i++)
			if (!x->t[i].done) {
				free(x->t[i].resp);
				x->t[i].resp = NULL;
				x->t[i].len = 0;
				fo_finish_target(&x->t[i]);
			}
	}
	(void)!write(x->pipe[1], "x", 1);
	return NULL;
}


static void fo_free(struct fo_ctx *x)
{
	fo_inflight--;
	for (unsigned i = 0; x->t && i < x->n; i++)
		free(x->t[i].resp);
	free(x->t);
	free(x->request);
	close(x->pipe[0]);
	close(x->pipe[1]);
	free(x);
}

/* "HTTP/1.x NNN ...\r\n...\r\n\r\nbody": its status and body, or status 0. */
static void parse_reply(const struct fo_target *t, struct fanout_reply *out)
{
	out->node = t->name;
	out->status = 0;
	out->body = "";
	out->body_len = 0;
	const char *head_end = t->resp ? strstr(t->resp, "\r\n\r\n") : NULL;
	int st;
	if (!head_end || strncmp(t->resp, "HTTP/1.", 7) || sscanf(t->resp + 8, " %3d", &st) != 1)
		return;
	out->status = st;
	out->body = head_end + 4;
	out->body_len = t->len - (size_t)(out->body - t->resp);
}

static void fo_done(struct uop *op, int res, uint32_t flags)
{
	(void)flags;
	struct fo_ctx *x = (struct fo_ctx *)((char *)op - offsetof(struct fo_ctx, done_op));
	if (res < 0) {
		/* A cancelled read (see cluster_fanout): the thread still owns x until it writes. */
		io_uring_prep_read(ur_sqe(&x->done_op), x->pipe[0], &x->byte, 1, 0);
		return;
	}
	struct http_req *r = x->r;
	if (r) {
		r->ctx = NULL;
		r->ops = NULL;
	}
	struct fanout_reply *rep = calloc(x->n ? x->n : 1, sizeof(*rep));
	for (unsigned i = 0; rep && i < x->n; i++)
		parse_reply(&x->t[i], &rep[i]);
	if (rep)
		x->done(r, x->ctx, rep, x->n, x->error);
	else
		x->done(r, x->ctx, NULL, 0, "out of memory");
	free(rep);
	fo_free(x);
}

static void fo_abort(struct http_req *r)
{
	struct fo_ctx *x = r->ctx;
	x->r = NULL; /* freed when the worker is done */
	r->ctx = NULL;
}

static const struct http_req_ops fo_ops = { .abort = fo_abort };

bool cluster_printable(const char *s, bool spaces)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f || (*s == ' ' && !spaces))
			return false;
	return true;
}

static void pass_header(const struct http_req *r, const char *lname, const char *name, char *out, size_t n)
{
	const char *v = http_req_header(r, lname);
	if (v && cluster_printable(v, true)) {
		size_t l = strlen(out);
		snprintf(out + l, n - l, "%s: %s\r\n", name, v);
	}
}

void cluster_client_auth(const struct http_req *r, char *out, size_t n)
{
	out[0] = 0;
	pass_header(r, "authorization", "Authorization", out, n);
	pass_header(r, "x-api-key", "X-API-KEY", out, n);
}

int cluster_fanout(struct http_req *r, const char *request, size_t len, uint64_t deadline_ms, fanout_done_fn done,
		   void *ctx)
{
	if (fo_inflight >= FO_MAX_INFLIGHT)
		return -EBUSY;
	struct fo_ctx *x = calloc(1, sizeof(*x));
	if (!x || !(x->request = malloc(len)) || pipe2(x->pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
		if (x)
			free(x->request);
		free(x);
		return -ENOMEM;
	}
	fo_inflight++;
	memcpy(x->request, request, len);
	x->reqlen = len;
	x->deadline_ms = deadline_ms;
	x->r = r;
	x->done = done;
	x->ctx = ctx;
	snprintf(x->peers_file, sizeof(x->peers_file), "%s", srv_cfg.peers_file ? srv_cfg.peers_file : "");
	x->done_op.fn = fo_done;
	pthread_t th;
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	int rc = pthread_create(&th, &at, fo_thread, x);
	pthread_attr_destroy(&at);
	if (rc) {
		fo_free(x);
		return -rc;
	}
	r->ctx = x;
	r->ops = &fo_ops;
	/* Non-blocking, so the ring polls it: a blocking pipe's read goes to an io-wq
	 * thread, which Linux 6.1 fails to create while a SIGCHLD is pending, and the
	 * read ends cancelled. */
	io_uring_prep_read(ur_sqe(&x->done_op), x->pipe[0], &x->byte, 1, 0);
	return 0;
}
