/* An HTTP request answered by one agent stream: the calls of both front ends (the
 * Connect service sandbox.v1.Sandbox, E2B's envd) begin with one of these, so their
 * life is kept in one place. Either side may end first: the client going away
 * cancels the agent stream, the agent stream ending leaves the reply to the call. */
#ifndef MITOS_API_SANDBOX_AGENT_CALL_H
#define MITOS_API_SANDBOX_AGENT_CALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct agent_call;
struct http_req;
struct astream;
struct cJSON;

struct agent_call_vt {
	void (*tick)(struct agent_call *c, uint64_t now);  /* deadlines, keepalives; may free c */
	void (*destroy)(struct agent_call *c);             /* frees what the front end added */
};

struct agent_call {
	struct http_req *r;          /* NULL once the client is gone */
	struct astream *as;          /* NULL once the agent stream ended */
	const struct agent_call_vt *vt;
	uint64_t deadline;           /* monotonic ms, 0: none */
	uint64_t next_ka;            /* the next keepalive, monotonic ms */
	bool done;
	struct agent_call *prev, *next;
};

/* c is the zeroed first member of the front end's call: links it (every live call
 * gets vt->tick each UR_TICK_MS), makes it r's handler (a call that reads a request
 * body then puts ops of its own with agent_call_abort and agent_call_writable in
 * r->ops) and sets its first keepalive one interval from now. */
void agent_call_start(struct agent_call *c, struct http_req *r, const struct agent_call_vt *vt);
/* Cancels the agent stream, detaches from the request, unlinks, destroys and frees. */
void agent_call_free(struct agent_call *c);
/* The two ends of a request bridged to an agent stream let go of each other: *as is
 * cancelled and *r no longer calls its handler; both become NULL. The release of
 * agent_call_free, and of the bridges that are not agent_calls (preview, terminal). */
void agent_bridge_release(struct http_req **r, struct astream **as);
/* http_req_ops for every call: the client went away; the client took some output. */
void agent_call_abort(struct http_req *r);
void agent_call_writable(struct http_req *r);
/* An exec's END ({exited, exit_code | signal}) as a shell reports it: the exit code,
 * or 128 + the signal that ended it. The agent may be the sandbox's own: numbers out
 * of range are brought into it (exit codes 0..255, signals 1..127). */
int agent_exit_code(const struct cJSON *end);

/* The client left more than max of c's answer unread: a call fed by agent events (which
 * have no flow control: the sandbox makes them as fast as it likes) then ends,
 * resource_exhausted, rather than hold them all. */
bool agent_call_backlogged(const struct agent_call *c, size_t max);
#define EVENTS_UNREAD_MAX (4u << 20)   /* watch events, vitals, process notices */
#define OUTPUT_UNREAD_MAX (32u << 20)  /* a program's output where it comes as events (run_code) */
#define BACKLOG_MSG "the client left too much of the answer unread (a slow or stopped reader): the call ended"

/* What one listing may bring from an agent (the sandbox's own, maybe): the entries the
 * protocol has (PROTO_LIST_MAX_ENTRIES) and LIST_MAX_BYTES of their strings. */
#define LIST_MAX_BYTES (64u << 20)
struct list_budget {
	uint32_t entries;
	size_t bytes;
};
/* Counts entry e: false once the budget is spent (the listing is then refused). */
bool list_budget_take(struct list_budget *b, const struct cJSON *e);

#endif
