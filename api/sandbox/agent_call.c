#include "api/sandbox/agent_call.h"

#include <stdlib.h>

#include "api/http/http.h"
#include "api/http/server.h"
#include "api/http/uring.h"
#include "api/sandbox/agent_client.h"

static struct agent_call *calls;
static struct ur_ticker ticker;
static bool ticker_added;

static void calls_tick(struct ur_ticker *t, uint64_t now)
{
	(void)t;
	for (struct agent_call *c = calls, *next; c; c = next) {
		next = c->next;
		if (c->vt->tick)
			c->vt->tick(c, now);
	}
}

static const struct http_req_ops call_ops = { .writable = agent_call_writable, .abort = agent_call_abort };

void agent_call_start(struct agent_call *c, struct http_req *r, const struct agent_call_vt *vt)
{
	c->r = r;
	c->vt = vt;
	r->ctx = c;
	r->ops = &call_ops;
	c->next_ka = ur_now_ms() + srv_cfg.keepalive_ms;
	c->next = calls;
	if (calls)
		calls->prev = c;
	calls = c;
	if (!ticker_added) {
		ticker.fn = calls_tick;
		ur_add_ticker(&ticker);
		ticker_added = true;
	}
}

void agent_bridge_release(struct http_req **r, struct astream **as)
{
	if (*as) {
		/* Cleared first: the cancel may call back into the bridge. */
		struct astream *s = *as;
		*as = NULL;
		agent_cancel(s);
	}
	if (*r) {
		(*r)->ctx = NULL;
		(*r)->ops = NULL;
		*r = NULL;
	}
}

void agent_call_free(struct agent_call *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else if (calls == c)
		calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	agent_bridge_release(&c->r, &c->as);
	if (c->vt->destroy)
		c->vt->destroy(c);
	free(c);
}

void agent_call_abort(struct http_req *r)
{
	struct agent_call *c = r->ctx;
	c->r = NULL;
	r->ctx = NULL;
	agent_call_free(c);
}

void agent_call_writable(struct http_req *r)
{
	struct agent_call *c = r->ctx;
	if (c->as)
		agent_room_changed(c->as);
}
