/* E2B's lifecycle.autoResume: a sandbox that paused at its timeout (onTimeout
 * "pause") resumes when traffic for it arrives, with the timeout it was created with,
 * and the request that woke it is served once it runs. Authorized traffic only: a
 * request the sandbox's tokens refuse wakes nothing. */
#include "api/e2b/internal.h"

#include <stdlib.h>
#include <string.h>

#include "api/e2b/e2b.h"
#include "api/http/http.h"

/* A request waiting for its sandbox to resume. */
struct wake_wait {
	struct http_req *r;
	void (*fn)(struct http_req *r);
	struct wake_wait *next;
};

/* One resume on its way, and who waits for it. */
struct wake {
	char id[ID_MAX + 1];
	uint64_t created_ms;
	struct wake_wait *waiting;
	struct wake *next;
};

static struct wake *wakes;

static struct wake *wake_of(const char *id)
{
	for (struct wake *w = wakes; w; w = w->next)
		if (!strcmp(w->id, id))
			return w;
	return NULL;
}

static void wait_abort(struct http_req *r)
{
	struct wake_wait *ww = r->ctx;
	ww->r = NULL; /* its wake frees it */
	r->ctx = NULL;
}

static const struct http_req_ops wait_ops = { .abort = wait_abort };

static void woke(void *ctx, int rc)
{
	struct wake *w = ctx;
	for (struct wake **pp = &wakes; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	struct sandbox *sb = sandbox_find(w->id);
	struct e2b_sbx *s = sb && sb->created_ms == w->created_ms ? e2b_sbx_get(w->id, false) : NULL;
	if (!rc && s)
		sandbox_set_timeout(sb, s->resume_timeout_s);
	/* Each is served now as it would have been: it finds the sandbox running, or why not.
	 * Its body (a proxied upload) was held meanwhile; the handler holds it again if it
	 * must (the body is read on the loop's next turn). */
	for (struct wake_wait *ww = w->waiting, *n; ww; ww = n) {
		n = ww->next;
		if (ww->r) {
			ww->r->ctx = NULL;
			ww->r->ops = NULL;
			http_req_resume_body(ww->r);
			ww->fn(ww->r);
		}
		free(ww);
	}
	free(w);
}

/* The sandbox's resume on its way, or sb itself when traffic would start one. */
static bool would_wake(struct sandbox *sb, struct wake **w)
{
	struct e2b_sbx *s = sb ? e2b_sbx_get(sb->id, false) : NULL;
	*w = sb ? wake_of(sb->id) : NULL;
	/* A filesystem-only pause is resumed by connect only (E2B's rule). */
	return *w || (s && s->auto_resume && sb->state == SB_PAUSED && !sb->ctl_busy && !sb->cold);
}

bool e2b_would_wake(const char *sid)
{
	struct wake *w;
	return would_wake(sid && sid[0] ? sandbox_find(sid) : NULL, &w);
}

bool e2b_wake(struct http_req *r, const char *sid, void (*fn)(struct http_req *r))
{
	struct sandbox *sb = sid && sid[0] ? sandbox_find(sid) : NULL;
	struct wake *w;
	if (!would_wake(sb, &w))
		return false;
	struct wake_wait *ww = fn ? calloc(1, sizeof(*ww)) : NULL;
	bool start = !w;
	if (start && (w = calloc(1, sizeof(*w)))) {
		strcpy(w->id, sb->id);
		w->created_ms = sb->created_ms;
		w->next = wakes;
		wakes = w;
	}
	if (!w) {
		free(ww);
		return false;
	}
	if (ww) {
		ww->r = r;
		ww->fn = fn;
		struct wake_wait **tail = &w->waiting; /* served in the order they came */
		while (*tail)
			tail = &(*tail)->next;
		*tail = ww;
		r->ctx = ww;
		r->ops = &wait_ops;
		http_req_pause_body(r);
	}
	/* The process engine resumes at once: woke() runs, and serves r, in here. */
	if (start)
		sandbox_set_paused(sb, false, woke, w);
	return ww != NULL;
}
