/* envd's polled watchers: CreateWatcher opens an agent watch that outlives the
 * request and queues its events; GetWatcherEvents drains them; RemoveWatcher
 * ends it. A poll first asks the agent for a sync (agent/PROTOCOL.md, watch), so
 * it sees every change made before it, a write the client just made included. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/e2b/internal.h"
#include "api/mitos/handlers.h"
#include "api/http/http.h"
#include "api/http/uring.h"

/* Events wait here, on the host, for a client to poll: what one sandbox can make serve
 * hold is bounded (its watchers times their queues), and one sandbox's watchers leave
 * room for the others'. */
#define WATCHER_MAX_EVENTS 10000
#define WATCHER_MAX_BYTES (1u << 20)
#define WATCHERS_PER_SANDBOX 16
#define WATCHERS_MAX 4096
/* An agent that does not answer a sync (the sandbox's own, busy or hostile) delays a
 * poll no longer than this; it then gets what is queued. */
#define SYNC_WAIT_MS 2000

struct watcher {
	char id[E2B_TOKEN_HEX + 1];
	char sandbox[ID_MAX + 1];
	struct astream *as;
	cJSON *events;
	unsigned nevents;
	size_t bytes;               /* what the queued events' strings hold */
	struct http_req *pending;   /* CreateWatcher waiting for the watch to start */
	struct http_req *polling;   /* GetWatcherEvents waiting for the agent's sync */
	uint64_t polling_until;
	bool can_sync;              /* the agent takes {"sync": true} */
	struct watcher *next;
};

static struct watcher *watchers;
static unsigned nwatchers;
static struct ur_ticker ticker;
static bool ticker_added;

/* The bytes of an event's strings, its entry's included. */
static size_t event_bytes(const cJSON *o)
{
	size_t n = 64;
	const cJSON *f, *g;
	cJSON_ArrayForEach(f, o) {
		if (cJSON_IsString(f))
			n += strlen(f->valuestring);
		cJSON_ArrayForEach(g, (cJSON_IsObject(f) ? f : NULL))
			n += cJSON_IsString(g) ? strlen(g->valuestring) : 16;
	}
	return n;
}

static void detach(struct http_req *r)
{
	r->ctx = NULL;
	r->ops = NULL;
}

/* Answers a poll with the events queued so far. */
static void reply_events(struct watcher *w, struct http_req *r)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "events", w->events);
	w->events = cJSON_CreateArray();
	w->nevents = 0;
	w->bytes = 0;
	handler_reply_cjson(r, 200, o);
}

static void poll_done(struct watcher *w)
{
	struct http_req *r = w->polling;
	if (!r)
		return;
	w->polling = NULL;
	detach(r);
	reply_events(w, r);
}

static void sync_tick(struct ur_ticker *t, uint64_t now)
{
	(void)t;
	for (struct watcher *w = watchers; w; w = w->next)
		if (w->polling && now >= w->polling_until)
			poll_done(w);
}

static void watcher_free(struct watcher *w)
{
	for (struct watcher **pp = &watchers; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			nwatchers--;
			break;
		}
	if (w->as)
		agent_cancel(w->as);
	if (w->pending)
		detach(w->pending);
	poll_done(w);
	cJSON_Delete(w->events);
	free(w);
}

static void pending_abort(struct http_req *r)
{
	struct watcher *w = r->ctx;
	w->pending = NULL;
	r->ctx = NULL;
	watcher_free(w);
}

static const struct http_req_ops pending_ops = { .abort = pending_abort };

static void polling_abort(struct http_req *r)
{
	struct watcher *w = r->ctx;
	w->polling = NULL;
	detach(r);
}

static const struct http_req_ops polling_ops = { .abort = polling_abort };

static void w_event(struct astream *s, cJSON *ev)
{
	struct watcher *w = s->ctx;
	if (cJSON_IsTrue(cJSON_GetObjectItem(ev, "started")) && w->pending) {
		struct http_req *r = w->pending;
		w->pending = NULL;
		detach(r);
		w->can_sync = cJSON_IsTrue(cJSON_GetObjectItem(ev, "sync"));
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "watcherId", w->id);
		handler_reply_cjson(r, 200, o);
		return;
	}
	const cJSON *e;
	cJSON_ArrayForEach(e, cJSON_GetObjectItem(ev, "events")) {
		cJSON *o = e2b_fs_event(e);
		if (!o)
			continue;
		/* A client that never polls loses the oldest events, not our memory: at most
		 * so many, and so many bytes (an agent may send names of any length). */
		w->bytes += event_bytes(o);
		cJSON_AddItemToArray(w->events, o);
		w->nevents++;
		while (w->nevents > WATCHER_MAX_EVENTS || w->bytes > WATCHER_MAX_BYTES) {
			w->bytes -= event_bytes(w->events->child);
			cJSON_DeleteItemFromArray(w->events, 0);
			w->nevents--;
		}
	}
	if (cJSON_IsTrue(cJSON_GetObjectItem(ev, "synced")))
		poll_done(w);
}

static void w_end(struct astream *s, cJSON *payload, const char *why)
{
	struct watcher *w = s->ctx;
	w->as = NULL;
	poll_done(w);
	if (w->pending) {
		const cJSON *err = cJSON_GetObjectItem(payload, "error");
		const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
		const char *msg = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message"));
		struct http_req *r = w->pending;
		w->pending = NULL;
		detach(r);
		e2b_reply_connect_err(r, payload ? e2b_agent_code(code) : "unavailable",
				      msg ? msg : why ? why : "the watch ended");
		watcher_free(w);
	}
	/* Otherwise it stays until RemoveWatcher; its queued events can still be read. */
}

static const struct astream_ops w_ops = { NULL, w_event, w_end, NULL, NULL };

static struct watcher *find(const char *sandbox, const cJSON *req)
{
	const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "watcherId"));
	if (!id)
		id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "watcher_id"));
	for (struct watcher *w = watchers; id && w; w = w->next)
		if (!strcmp(w->id, id) && !strcmp(w->sandbox, sandbox))
			return w;
	return NULL;
}

static void create(struct http_req *r, struct agent_conn *ac, const cJSON *req, const char *user)
{
	cJSON *open = e2b_watch_open(req, user);
	if (!open) {
		e2b_reply_connect_err(r, "invalid_argument", "path is required");
		return;
	}
	unsigned mine = 0;
	for (struct watcher *o = watchers; o; o = o->next)
		mine += !strcmp(o->sandbox, e2b_req_sandbox(r));
	if (mine >= WATCHERS_PER_SANDBOX || nwatchers >= WATCHERS_MAX) {
		cJSON_Delete(open);
		e2b_reply_connect_err(r, "resource_exhausted",
				      mine >= WATCHERS_PER_SANDBOX ? "this sandbox has 16 watchers: remove some with RemoveWatcher"
								   : "this server holds too many watchers: retry later");
		return;
	}
	struct watcher *w = calloc(1, sizeof(*w));
	char *s = w ? cJSON_PrintUnformatted(open) : NULL;
	cJSON_Delete(open);
	if (!w || !s || !(w->events = cJSON_CreateArray())) {
		free(s);
		if (w)
			free(w);
		e2b_reply_connect_err(r, "internal", "out of memory");
		return;
	}
	e2b_token_new(w->id, sizeof(w->id));
	snprintf(w->sandbox, sizeof(w->sandbox), "%s", e2b_req_sandbox(r));
	w->next = watchers;
	watchers = w;
	nwatchers++;
	w->pending = r;
	r->ctx = w;
	r->ops = &pending_ops;
	w->as = agent_open(ac, s, &w_ops, w);
	free(s);
	if (!w->as) {
		w->pending = NULL;
		detach(r);
		watcher_free(w);
		e2b_reply_connect_err(r, "unavailable", "cannot open a stream to the sandbox's agent");
	}
}

void e2b_watcher_start(struct http_req *r, const char *method, struct agent_conn *ac, const cJSON *req,
		       const char *user)
{
	/* Watchers of sandboxes that are gone go first. */
	for (struct watcher *w = watchers, *next; w; w = next) {
		next = w->next;
		if (!w->pending && !sandbox_find(w->sandbox))
			watcher_free(w);
	}
	if (!strcmp(method, "CreateWatcher")) {
		create(r, ac, req, user);
		return;
	}
	struct watcher *w = find(e2b_req_sandbox(r), req);
	if (!w) {
		e2b_reply_connect_err(r, "not_found", "no such watcher");
		return;
	}
	if (strcmp(method, "GetWatcherEvents")) {
		watcher_free(w);
		handler_reply_cjson(r, 200, cJSON_CreateObject());
		return;
	}
	/* One poll at a time waits for a sync; another one meanwhile takes what is queued. */
	if (!w->can_sync || !w->as || w->polling) {
		reply_events(w, r);
		return;
	}
	w->polling = r;
	w->polling_until = ur_now_ms() + SYNC_WAIT_MS;
	r->ctx = w;
	r->ops = &polling_ops;
	if (!ticker_added) {
		ticker.fn = sync_tick;
		ur_add_ticker(&ticker);
		ticker_added = true;
	}
	agent_send_event(w->as, "{\"sync\":true}");
}
