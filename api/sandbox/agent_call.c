#include "api/sandbox/agent_call.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "agent/proto.h"
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

bool agent_call_backlogged(const struct agent_call *c, size_t max)
{
	return c->r && http_stream_queued(c->r) > max;
}

void agent_call_writable(struct http_req *r)
{
	struct agent_call *c = r->ctx;
	if (c->as)
		agent_room_changed(c->as);
}

static int clamp_int(const cJSON *v, int lo, int hi)
{
	/* cJSON keeps valueint within int for any number. */
	int x = cJSON_IsNumber(v) ? v->valueint : lo;
	return x < lo ? lo : x > hi ? hi : x;
}

int agent_exit_code(const cJSON *end)
{
	if (cJSON_IsTrue(cJSON_GetObjectItem(end, "exited")))
		return clamp_int(cJSON_GetObjectItem(end, "exit_code"), 0, 255);
	return 128 + clamp_int(cJSON_GetObjectItem(end, "signal"), 1, 127);
}

bool list_budget_take(struct list_budget *b, const cJSON *e)
{
	size_t n = 64;
	const cJSON *f;
	cJSON_ArrayForEach(f, e)
		n += (f->string ? strlen(f->string) : 0) + (cJSON_IsString(f) ? strlen(f->valuestring) : 16);
	b->bytes += n;
	return ++b->entries <= PROTO_LIST_MAX_ENTRIES && b->bytes <= LIST_MAX_BYTES;
}
