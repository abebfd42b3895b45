/* E2B wire compatibility (../shared/ref/e2b-protocol.md): the control plane, envd
 * (port 49983) and the code interpreter (port 49999) on serve's one listener,
 * translated onto the same sandboxes (api/sandbox/sandboxes.h) and agent operations
 * (api/sandbox/agent_client.h) as the Mitos surface. */
#ifndef MITOS_API_E2B_H
#define MITOS_API_E2B_H

#include <stdbool.h>
#include <stddef.h>

struct http_req;

/* At headers-complete, before the Mitos routes: claims the request when it is
 * E2B's (an E2b-Sandbox-Port header, or a control-plane or /files path) and sets
 * r->route, r->body_limit and r->body_streamed. */
bool e2b_route_headers(struct http_req *r);
/* After re-adoption: loads the E2B records of the sandboxes a previous serve left
 * (their tokens, envs and onTimeout), so its clients carry on. */
void e2b_records_load(void);
/* How E2B's getHost() host of sandbox sid's port takes r. NOT_FOUND: E2B neither made
 * nor connected to it (a Mitos API sandbox, whose id its user may have chosen, is not
 * there to these unauthenticated hosts). FORBIDDEN: it was made without public traffic
 * (allowPublicTraffic, E2B's default) and r lacks its traffic access token (or, with
 * none, serve's API key). ADMITTED: host gets the Host header its server is to see
 * (network.maskRequestHost with ${PORT} replaced, never longer than the mask; "" to
 * keep the client's). */
#define E2B_MASK_HOST_MAX 253
enum e2b_host_verdict { E2B_HOST_NOT_FOUND, E2B_HOST_FORBIDDEN, E2B_HOST_ADMITTED };
enum e2b_host_verdict e2b_host_admit(const struct http_req *r, const char *sid, unsigned port, char *host,
				     size_t hostlen);
/* Authorized traffic for the sandbox sid, which paused at its timeout and auto-resumes
 * (lifecycle.autoResume): starts its resume (once) and, with fn, serves r with fn once
 * it runs (true: r is taken, fn may have run already). False, doing nothing, for any
 * other sandbox. */
bool e2b_wake(struct http_req *r, const char *sid, void (*fn)(struct http_req *r));
/* Whether e2b_wake would take a request for sid now. */
bool e2b_would_wake(const char *sid);

#endif
