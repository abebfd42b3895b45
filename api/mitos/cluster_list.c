#include "api/mitos/cluster_list.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api/mitos/handlers.h"
#include "api/http/http.h"
#include "api/http/server.h"
#include "api/http/uring.h"

#define CL_MAX_TARGETS 256
#define CL_MAX_RESPONSE (32u << 20)
#define CL_DEADLINE_MS 3000
#define CL_REQ_MAX 8192
/* Each cluster list holds a thread and a socket per peer until its deadline. */
#define CL_MAX_INFLIGHT 16

static unsigned cl_inflight;

struct cl_target {
	char name[300];          /* host:port as written in the peers file */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int fd;
	size_t sent;
	char *resp;
	size_t len, cap;
	bool done, ok;
};

struct cl_ctx {
	struct http_req *r;      /* NULL once the client is gone */
	struct cJSON *local;
	char request[CL_REQ_MAX];
	size_t reqlen;
	char peers_file[1024];
	struct cl_target *t;
	unsigned n;
	char error[200];         /* the peers file could not be used */
	int pipe[2];
	char byte;
	struct uop done_op;
	bool paged;
	struct cluster_page page;
};

bool cluster_list_wanted(const struct http_req *r)
{
	const char *scope = http_req_header(r, "x-mitos-list-scope");
	return srv_cfg.peers_file && scope && !strcasecmp(scope, "cluster");
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Every address of every HOST:PORT in the peers file ("TAG HOST:PORT" lines, '#'
 * comments): a DNS name of a headless service stands for all of its nodes. */
static int cl_resolve(struct cl_ctx *x)
{
	FILE *f = fopen(x->peers_file, "r");
	if (!f) {
		snprintf(x->error, sizeof(x->error), "cannot read the peers file: %s", strerror(errno));
		return -errno;
	}
	x->t = calloc(CL_MAX_TARGETS, sizeof(*x->t));
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
		for (struct addrinfo *a = ai; a && x->n < CL_MAX_TARGETS; a = a->ai_next) {
			struct cl_target *t = &x->t[x->n++];
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

static void cl_finish_target(struct cl_target *t)
{
	if (t->fd >= 0)
		close(t->fd);
	t->fd = -1;
	t->done = true;
	/* A whole answer from a peer: "HTTP/1.x 200" and a body after the head. */
	t->ok = t->resp && t->len > 12 && !strncmp(t->resp, "HTTP/1.", 7) && !strncmp(t->resp + 8, " 200", 4) &&
		strstr(t->resp, "\r\n\r\n");
}

static void cl_io(struct cl_target *t, short rev, const char *req, size_t reqlen)
{
	if (rev & POLLOUT && t->sent < reqlen) {
		int err = 0;
		socklen_t el = sizeof(err);
		if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &el) || err) {
			cl_finish_target(t);
			return;
		}
		ssize_t w = send(t->fd, req + t->sent, reqlen - t->sent, MSG_NOSIGNAL);
		if (w < 0 && errno != EAGAIN) {
			cl_finish_target(t);
			return;
		}
		if (w > 0)
			t->sent += (size_t)w;
	}
	if (rev & (POLLIN | POLLHUP | POLLERR)) {
		if (t->cap - t->len < 65536) {
			size_t nc = t->cap ? t->cap * 2 : 131072;
			char *p = nc <= CL_MAX_RESPONSE + 1 ? realloc(t->resp, nc) : NULL;
			if (!p) {
				free(t->resp);
				t->resp = NULL;
				t->len = 0;
				cl_finish_target(t);
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
			cl_finish_target(t);
		}
	}
}

static void *cl_thread(void *arg)
{
	struct cl_ctx *x = arg;
	if (cl_resolve(x) == 0) {
		for (unsigned i = 0; i < x->n; i++) {
			struct cl_target *t = &x->t[i];
			t->fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
			if (t->fd < 0 || (connect(t->fd, (struct sockaddr *)&t->addr, t->addrlen) < 0 &&
					  errno != EINPROGRESS))
				cl_finish_target(t);
		}
		uint64_t deadline = mono_ms() + CL_DEADLINE_MS;
		struct pollfd *pf = calloc(x->n ? x->n : 1, sizeof(*pf));
		for (;;) {
			unsigned np = 0;
			for (unsigned i = 0; pf && i < x->n; i++) {
				struct cl_target *t = &x->t[i];
				if (t->done)
					continue;
				pf[np].fd = t->fd;
				pf[np].events = (short)(t->sent < x->reqlen ? POLLOUT : POLLIN);
				pf[np].revents = 0;
				np++;
			}
			uint64_t now = mono_ms();
			if (!np || now >= deadline)
				break;
			if (poll(pf, np, (int)(deadline - now)) < 0 && errno != EINTR)
				break;
			for (unsigned i = 0, k = 0; i < x->n && k < np; i++) {
				struct cl_target *t = &x->t[i];
				if (t->done || t->fd != pf[k].fd)
					continue;
				if (pf[k].revents)
					cl_io(t, pf[k].revents, x->request, x->reqlen);
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
				cl_finish_target(&x->t[i]);
			}
	}
	(void)!write(x->pipe[1], "x", 1);
	return NULL;
}

static cJSON *list_array(cJSON *doc)
{
	return cJSON_IsArray(doc) ? doc : cJSON_GetObjectItem(doc, "sandboxes");
}

/* The Mitos list names a sandbox "id", E2B's "sandboxID". */
static const char *item_id(const cJSON *it)
{
	const char *v = cJSON_GetStringValue(cJSON_GetObjectItem(it, "id"));
	return v ? v : cJSON_GetStringValue(cJSON_GetObjectItem(it, "sandboxID"));
}

static bool has_id(const cJSON *arr, const char *id)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, arr) {
		const char *v = item_id(it);
		if (v && !strcmp(v, id))
			return true;
	}
	return false;
}

/* E2B items carry "startedAt" as RFC 3339 with milliseconds (registry_rfc3339). */
static uint64_t item_start_ms(const cJSON *it)
{
	const char *v = cJSON_GetStringValue(cJSON_GetObjectItem(it, "startedAt"));
	struct tm tm = { 0 };
	const char *rest = v ? strptime(v, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
	unsigned ms = 0;
	if (!rest || (*rest == '.' && sscanf(rest + 1, "%3u", &ms) != 1))
		return 0;
	return (uint64_t)timegm(&tm) * 1000u + ms;
}

struct keyed_item {
	uint64_t start_ms;
	const char *id;
	cJSON *item;
};

static int by_key(const void *a, const void *b)
{
	const struct keyed_item *x = a, *y = b;
	if (x->start_ms != y->start_ms)
		return x->start_ms < y->start_ms ? -1 : 1;
	return strcmp(x->id, y->id);
}

/* Sorts arr in the page's order, keeps its first limit items and writes the key of
 * the next one ("<start ms>-<id>", the token each node's own list hands out) into
 * next, or leaves next empty when nothing follows. */
static int page_cut(cJSON *arr, const struct cluster_page *pg, char *next, size_t nextlen)
{
	next[0] = 0;
	int n = cJSON_GetArraySize(arr);
	if (n <= 0)
		return 0;
	struct keyed_item *k = calloc((size_t)n, sizeof(*k));
	if (!k)
		return -ENOMEM;
	int i = 0;
	for (cJSON *it = arr->child; it && i < n; it = it->next, i++) {
		const char *id = item_id(it);
		k[i] = (struct keyed_item){ item_start_ms(it), id ? id : "", it };
	}
	qsort(k, (size_t)n, sizeof(*k), by_key);
	/* Rebuild the array in order: detach every item, then append the kept ones. */
	arr->child = NULL;
	for (i = 0; i < n; i++) {
		const struct keyed_item *e = &k[pg->desc ? n - 1 - i : i];
		e->item->next = e->item->prev = NULL;
		if ((unsigned)i < pg->limit)
			cJSON_AddItemToArray(arr, e->item);
		else if ((unsigned)i == pg->limit)
			snprintf(next, nextlen, "%llu-%s", (unsigned long long)e->start_ms, e->id);
	}
	for (i = (int)pg->limit; i < n; i++)
		cJSON_Delete(k[pg->desc ? n - 1 - i : i].item);
	free(k);
	return 0;
}

static void cl_free(struct cl_ctx *x)
{
	cl_inflight--;
	for (unsigned i = 0; x->t && i < x->n; i++)
		free(x->t[i].resp);
	free(x->t);
	cJSON_Delete(x->local);
	close(x->pipe[0]);
	close(x->pipe[1]);
	free(x);
}

static void cl_done(struct uop *op, int res, uint32_t flags)
{
	(void)res; (void)flags;
	struct cl_ctx *x = (struct cl_ctx *)((char *)op - offsetof(struct cl_ctx, done_op));
	struct http_req *r = x->r;
	if (!r) {
		cl_free(x);
		return;
	}
	r->ctx = NULL;
	r->ops = NULL;
	cJSON *arr = list_array(x->local);
	char unreachable[512] = "";
	size_t ul = 0;
	for (unsigned i = 0; i < x->n; i++) {
		struct cl_target *t = &x->t[i];
		cJSON *doc = t->ok ? cJSON_Parse(strstr(t->resp, "\r\n\r\n") + 4) : NULL;
		cJSON *items = list_array(doc);
		if (!cJSON_IsArray(items)) {
			if (ul + strlen(t->name) + 3 < sizeof(unreachable))
				ul += (size_t)snprintf(unreachable + ul, sizeof(unreachable) - ul, "%s%s", ul ? ", " : "",
						       t->name);
			cJSON_Delete(doc);
			continue;
		}
		cJSON *it;
		cJSON_ArrayForEach(it, items) {
			const char *id = item_id(it);
			if (id && !has_id(arr, id))
				cJSON_AddItemToArray(arr, cJSON_Duplicate(it, 1));
		}
		cJSON_Delete(doc);
	}
	if (x->error[0] && ul + strlen(x->error) + 3 < sizeof(unreachable))
		ul += (size_t)snprintf(unreachable + ul, sizeof(unreachable) - ul, "%s%s", ul ? ", " : "", x->error);
	char next[200] = "";
	if (x->paged && page_cut(arr, &x->page, next, sizeof(next))) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		cl_free(x);
		return;
	}
	char *body = cJSON_PrintUnformatted(x->local);
	char extra[900] = "";
	size_t el = 0;
	if (ul)
		el += (size_t)snprintf(extra, sizeof(extra), "X-Mitos-Unreachable-Nodes: %s\r\n", unreachable);
	if (next[0])
		snprintf(extra + el, sizeof(extra) - el, "X-Next-Token: %s\r\n", next);
	if (body)
		http_reply(r, 200, "application/json", body, strlen(body), extra);
	else
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
	free(body);
	cl_free(x);
}

static void cl_abort(struct http_req *r)
{
	struct cl_ctx *x = r->ctx;
	x->r = NULL; /* freed when the worker is done */
	r->ctx = NULL;
}

static const struct http_req_ops cl_ops = { .abort = cl_abort };

/* Only bytes that cannot break the request line (no spaces) or a header go to the
 * peers. */
static bool printable(const char *s, bool spaces)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f || (*s == ' ' && !spaces))
			return false;
	return true;
}

/* A credential header of the client's, as "Name: value\r\n", or "" when absent or
 * unfit for a header line. */
static void pass_header(const struct http_req *r, const char *lname, const char *name, char *out, size_t n)
{
	const char *v = http_req_header(r, lname);
	out[0] = 0;
	if (v && printable(v, true))
		snprintf(out, n, "%s: %s\r\n", name, v);
}

void cluster_list_start(struct http_req *r, cJSON *local, const char *path, const char *query,
			const struct cluster_page *page)
{
	if (cl_inflight >= CL_MAX_INFLIGHT) {
		cJSON_Delete(local);
		http_reply_error(r, AE_UNAVAILABLE, "too many cluster-wide lists are running on this node", NULL,
				 "retry in a moment");
		return;
	}
	struct cl_ctx *x = calloc(1, sizeof(*x));
	if (!x || !cJSON_IsArray(list_array(local)) || pipe2(x->pipe, O_CLOEXEC) < 0) {
		free(x);
		cJSON_Delete(local);
		http_reply_error(r, AE_INTERNAL, "cannot start the cluster list", NULL, NULL);
		return;
	}
	cl_inflight++;
	x->r = r;
	x->local = local;
	snprintf(x->peers_file, sizeof(x->peers_file), "%s", srv_cfg.peers_file);
	/* Peers check the client's own token (Authorization, or E2B's X-API-KEY): the
	 * nodes of a cluster share one. */
	char auth[1100], apikey[1100];
	pass_header(r, "authorization", "Authorization", auth, sizeof(auth));
	pass_header(r, "x-api-key", "X-API-KEY", apikey, sizeof(apikey));
	if (!query)
		query = r->query;
	const char *q = query && *query && printable(query, false) ? query : NULL;
	int n = snprintf(x->request, sizeof(x->request),
			 "GET %s%s%s HTTP/1.0\r\nHost: mitos-peer\r\n%s%sConnection: close\r\n\r\n",
			 path, q ? "?" : "", q ? q : "", auth, apikey);
	if (page) {
		x->paged = true;
		x->page = *page;
	}
	x->reqlen = n > 0 && (size_t)n < sizeof(x->request) ? (size_t)n : 0;
	x->done_op.fn = cl_done;
	pthread_t th;
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	if (!x->reqlen || pthread_create(&th, &at, cl_thread, x)) {
		pthread_attr_destroy(&at);
		x->r = NULL;
		cl_free(x);
		http_reply_error(r, AE_INTERNAL, "cannot start the cluster list", NULL, NULL);
		return;
	}
	pthread_attr_destroy(&at);
	r->ctx = x;
	r->ops = &cl_ops;
	io_uring_prep_read(ur_sqe(&x->done_op), x->pipe[0], &x->byte, 1, 0);
}
