/* POST /v1/sandboxes/{id}/forward {guest_port}: a TCP listener on the host's
 * loopback whose every connection is bridged over the agent's forward stream to
 * that port inside the sandbox, as the real server's port forward. Bytes move
 * under flow control both ways (a connection reads its peer only as fast as the
 * other side takes it). A forward lives as long as its sandbox: the tick closes
 * the ones whose sandbox is gone. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/proto.h"
#include "api/http/bytebuf.h"
#include "api/http/errors.h"
#include "api/http/http.h"
#include "api/http/uring.h"
#include "api/mitos/handlers.h"
#include "api/proxy/forward.h"
#include "api/sandbox/agent_client.h"
#include "api/sandbox/sandboxes.h"

#define FWD_PER_SANDBOX 16   /* open forwards a sandbox may have, as the real server */
#define FWD_CONNS 64         /* connections one forward carries at once */
#define FWD_RECV (64u << 10)
#define FWD_HIGH (256u << 10) /* bytes held for a side that is not taking them */

struct fwd;

struct fwd_conn {
	struct fwd *f;
	int fd;
	struct astream *as;
	struct uop rx_op, tx_op;
	bool rx_busy, tx_busy, rx_eof, connected, agent_fin, closing;
	struct bytebuf to_agent, to_client;
	struct bytebuf sending; /* the in-flight send's bytes: never grown while it runs */
	uint8_t rbuf[FWD_RECV];
	struct fwd_conn *next;
};

struct fwd {
	char sid[ID_MAX + 1];
	uint64_t created_ms; /* of the sandbox it was opened for */
	unsigned port, nconns;
	int lfd;
	char host[32];
	struct uop accept_op;
	bool accept_busy, closing;
	struct fwd_conn *conns;
	struct fwd *next;
};

static struct fwd *fwds;
static struct ur_ticker ticker;
static bool ticker_added;

static void conn_pump_rx(struct fwd_conn *c);
static void conn_pump_tx(struct fwd_conn *c);
static void fwd_try_free(struct fwd *f);

/* ---- one bridged connection ---- */

static void conn_try_free(struct fwd_conn *c)
{
	if (!c->closing || c->rx_busy || c->tx_busy)
		return;
	struct fwd *f = c->f;
	for (struct fwd_conn **p = &f->conns; *p; p = &(*p)->next)
		if (*p == c) {
			*p = c->next;
			break;
		}
	f->nconns--;
	close(c->fd);
	bytebuf_free(&c->to_agent);
	bytebuf_free(&c->to_client);
	bytebuf_free(&c->sending);
	free(c);
	fwd_try_free(f);
}

/* In-flight operations complete (shutdown wakes them); the last one frees c. */
static void conn_close(struct fwd_conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	if (c->as) {
		struct astream *as = c->as;
		c->as = NULL;
		agent_cancel(as);
	}
	shutdown(c->fd, SHUT_RDWR);
	conn_try_free(c);
}

/* A completed receive or send on a closing connection frees it when it was the last;
 * a failed one closes it. True when nothing is left to do with res. */
static bool op_settled(struct fwd_conn *c, int res)
{
	if (c->closing)
		conn_try_free(c);
	else if (res < 0)
		conn_close(c);
	else
		return false;
	return true;
}

static void conn_rx_done(struct uop *op, int res, uint32_t flags)
{
	struct fwd_conn *c = (struct fwd_conn *)((char *)op - offsetof(struct fwd_conn, rx_op));
	(void)flags;
	c->rx_busy = false;
	if (op_settled(c, res))
		return;
	if (res == 0)
		c->rx_eof = true;
	else if (bytebuf_add(&c->to_agent, c->rbuf, (size_t)res)) {
		conn_close(c);
		return;
	}
	conn_pump_rx(c);
}

/* Client bytes to the agent as its credit allows; reading goes on while little waits. */
static void conn_pump_rx(struct fwd_conn *c)
{
	if (c->closing || !c->as || !c->connected)
		return;
	agent_send_buffered(c->as, PROTO_CH_MAIN, &c->to_agent, c->rx_eof);
	if (c->rx_eof || c->rx_busy || bytebuf_pending(&c->to_agent) >= FWD_HIGH)
		return;
	io_uring_prep_recv(ur_sqe(&c->rx_op), c->fd, c->rbuf, sizeof(c->rbuf), 0);
	c->rx_busy = true;
}

static void conn_tx_done(struct uop *op, int res, uint32_t flags)
{
	struct fwd_conn *c = (struct fwd_conn *)((char *)op - offsetof(struct fwd_conn, tx_op));
	(void)flags;
	c->tx_busy = false;
	if (op_settled(c, res))
		return;
	c->sending.off += (size_t)res;
	if (c->as)
		agent_room_changed(c->as);
	conn_pump_tx(c);
}

/* Agent bytes to the client; once the agent is done and all is sent, the end. */
static void conn_pump_tx(struct fwd_conn *c)
{
	if (c->closing || c->tx_busy)
		return;
	if (!bytebuf_pending(&c->sending)) {
		struct bytebuf t = c->sending;
		t.off = t.len = 0;
		c->sending = c->to_client;
		c->to_client = t;
	}
	size_t n = bytebuf_pending(&c->sending);
	if (n) {
		io_uring_prep_send(ur_sqe(&c->tx_op), c->fd, c->sending.p + c->sending.off, n, MSG_NOSIGNAL);
		c->tx_busy = true;
	} else if (c->agent_fin) {
		conn_close(c);
	}
}

static void as_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	struct fwd_conn *c = s->ctx;
	(void)ch;
	if (n && bytebuf_add(&c->to_client, p, n)) {
		conn_close(c);
		return;
	}
	c->agent_fin = c->agent_fin || fin;
	conn_pump_tx(c);
}

static void as_event(struct astream *s, cJSON *ev)
{
	struct fwd_conn *c = s->ctx;
	if (cJSON_IsTrue(cJSON_GetObjectItem(ev, "connected")) && !c->connected) {
		c->connected = true;
		conn_pump_rx(c);
	}
}

/* The guest's side ended (or nothing listens there): what it sent still goes out. */
static void as_end(struct astream *s, cJSON *payload, const char *why)
{
	struct fwd_conn *c = s->ctx;
	(void)payload; (void)why;
	c->as = NULL;
	c->agent_fin = true;
	conn_pump_tx(c);
}

static void as_writable(struct astream *s)
{
	conn_pump_rx(s->ctx);
}

static size_t as_room(struct astream *s)
{
	struct fwd_conn *c = s->ctx;
	size_t n = bytebuf_pending(&c->to_client) + bytebuf_pending(&c->sending);
	return n < FWD_HIGH ? FWD_HIGH - n : 0;
}

static const struct astream_ops conn_ops = { as_data, as_event, as_end, as_writable, as_room };

static void conn_start(struct fwd *f, int fd)
{
	struct sandbox *sb = sandbox_find(f->sid);
	struct fwd_conn *c = f->nconns < FWD_CONNS ? calloc(1, sizeof(*c)) : NULL;
	if (!c || !sb || sb->state != SB_RUNNING || !agent_conn_ready(sb->agent) || !agent_relay_room(sb->agent)) {
		free(c);
		close(fd); /* the client sees the connection closed: nothing to reach now */
		return;
	}
	c->f = f;
	c->fd = fd;
	c->rx_op.fn = conn_rx_done;
	c->tx_op.fn = conn_tx_done;
	char open[64];
	snprintf(open, sizeof(open), "{\"op\":\"forward\",\"port\":%u}", f->port);
	if (!(c->as = agent_open(sb->agent, open, &conn_ops, c))) {
		free(c);
		close(fd);
		return;
	}
	c->next = f->conns;
	f->conns = c;
	f->nconns++;
}

/* ---- the listener ---- */

static void fwd_try_free(struct fwd *f)
{
	if (!f->closing || f->accept_busy || f->conns)
		return;
	for (struct fwd **p = &fwds; *p; p = &(*p)->next)
		if (*p == f) {
			*p = f->next;
			break;
		}
	close(f->lfd);
	free(f);
}

static void fwd_close(struct fwd *f)
{
	if (f->closing)
		return;
	f->closing = true;
	shutdown(f->lfd, SHUT_RDWR); /* wakes the pending accept */
	for (struct fwd_conn *c = f->conns, *next; c; c = next) {
		next = c->next;
		conn_close(c);
	}
	fwd_try_free(f);
}

static void fwd_accept(struct fwd *f)
{
	io_uring_prep_accept(ur_sqe(&f->accept_op), f->lfd, NULL, NULL, SOCK_CLOEXEC);
	f->accept_busy = true;
}

static void accept_done(struct uop *op, int res, uint32_t flags)
{
	struct fwd *f = (struct fwd *)((char *)op - offsetof(struct fwd, accept_op));
	(void)flags;
	f->accept_busy = false;
	if (res >= 0 && f->closing)
		close(res);
	if (f->closing) {
		fwd_try_free(f);
		return;
	}
	if (res >= 0)
		conn_start(f, res);
	/* A transient failure (no fds, a reset before accept) does not end the forward. */
	fwd_accept(f);
}

static void fwd_tick(struct ur_ticker *t, uint64_t now)
{
	(void)t; (void)now;
	for (struct fwd *f = fwds, *next; f; f = next) {
		next = f->next;
		struct sandbox *sb = sandbox_find(f->sid);
		if (!f->closing && (!sb || sb->created_ms != f->created_ms || sb->state == SB_STOPPING))
			fwd_close(f);
	}
}

void rest_sandbox_forward(struct http_req *r)
{
	char msg[200];
	cJSON *b = handler_json_body(r);
	if (!b)
		return;
	const cJSON *gp = cJSON_GetObjectItem(b, "guest_port");
	double port = cJSON_IsNumber(gp) ? gp->valuedouble : 0;
	cJSON_Delete(b);
	if (port < 1 || port > 65535 || port != (double)(unsigned)port) {
		http_reply_error(r, AE_INVALID_JSON, "guest_port must be an integer in 1-65535", NULL, NULL);
		return;
	}
	struct sandbox *sb = sandbox_find(r->sandbox_id);
	if (!sb) {
		snprintf(msg, sizeof(msg), "sandbox %s not found", r->sandbox_id);
		http_reply_error(r, AE_NOT_FOUND, msg, NULL, NULL);
		return;
	}
	if (sb->state != SB_RUNNING || !agent_conn_ready(sb->agent)) {
		snprintf(msg, sizeof(msg), "sandbox %s is not running", sb->id);
		http_reply_error(r, AE_SANDBOX_NOT_RUNNING, msg, NULL, NULL);
		return;
	}
	unsigned n = 0;
	for (struct fwd *f = fwds; f; f = f->next)
		n += !f->closing && !strcmp(f->sid, sb->id);
	if (n >= FWD_PER_SANDBOX) {
		snprintf(msg, sizeof(msg), "sandbox %s is at its port-forward limit of %d", sb->id, FWD_PER_SANDBOX);
		http_reply_error(r, AE_LIMIT_EXCEEDED, msg, NULL, NULL);
		return;
	}
	struct fwd *f = calloc(1, sizeof(*f));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	int fd = f ? socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
	/* Loopback only: whoever reaches it reaches the sandbox's port, as with the real server. */
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 64) ||
	    getsockname(fd, (struct sockaddr *)&a, &al)) {
		snprintf(msg, sizeof(msg), "cannot open a host listener: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
		free(f);
		http_reply_error(r, AE_INTERNAL, msg, NULL, NULL);
		return;
	}
	snprintf(f->sid, sizeof(f->sid), "%s", sb->id);
	f->created_ms = sb->created_ms;
	f->port = (unsigned)port;
	f->lfd = fd;
	f->accept_op.fn = accept_done;
	snprintf(f->host, sizeof(f->host), "127.0.0.1:%u", ntohs(a.sin_port));
	f->next = fwds;
	fwds = f;
	fwd_accept(f);
	if (!ticker_added) {
		ticker.fn = fwd_tick;
		ur_add_ticker(&ticker);
		ticker_added = true;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "host", f->host);
	cJSON_AddNumberToObject(o, "guest_port", f->port);
	handler_reply_cjson(r, 200, o);
}

void forward_exit(void)
{
	while (fwds) {
		struct fwd *f = fwds;
		fwds = f->next;
		while (f->conns) {
			struct fwd_conn *c = f->conns;
			f->conns = c->next;
			if (c->as)
				agent_cancel(c->as);
			close(c->fd);
			bytebuf_free(&c->to_agent);
			bytebuf_free(&c->to_client);
			bytebuf_free(&c->sending);
			free(c);
		}
		close(f->lfd);
		free(f);
	}
}
