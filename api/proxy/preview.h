/* Previews: POST /v1/preview mints a signed, expiring URL for one port of one
 * sandbox; requests to /preview/<id>/<port>/... or to the host
 * <id>-<port>.<--preview-domain> are proxied over the agent's forward stream to
 * that port inside the sandbox (plain HTTP, streaming responses, WebSocket and
 * other upgrades). */
#ifndef MITOS_API_PREVIEW_H
#define MITOS_API_PREVIEW_H

#include <stdbool.h>

#include "lib/error.h"

struct http_req;

#define PREVIEW_QUERY_PARAM "mitos_token"
#define PREVIEW_COOKIE "mitos_preview_token"

/* Loads or creates the signing key in the state dir. */
int preview_init(const char *state_dir, struct mitos_err *e);
void preview_exit(void);

/* True when the Host header names a preview host of --preview-domain. */
bool preview_host_matches(const struct http_req *r);
/* The sandbox id and port a preview host names: "<id>-<port>" (ours) or
 * "<port>-<id>" (E2B's getHost(); *e2b set). 0, or -EINVAL. */
int preview_host_target(const struct http_req *r, char *id, unsigned *port, bool *e2b);

void rest_preview_create(struct http_req *r);
/* The proxy; runs at headers-complete and streams the request body. */
void preview_proxy(struct http_req *r);
/* The same proxy at /v1/sandboxes/{id}/expose/{port}/..., for holders of the node's token. */
void preview_expose(struct http_req *r);

#endif
