/* Request handlers: REST (rest_*.c) and the Connect service (rpc.c). */
#ifndef MITOS_API_HANDLERS_H
#define MITOS_API_HANDLERS_H

#include <stdbool.h>

#include "api/http/errors.h"

struct http_req;
struct cJSON;

void rest_health(struct http_req *r);
void rest_templates_create(struct http_req *r);
void rest_templates_list(struct http_req *r);
void rest_fork(struct http_req *r);
void rest_sandbox_fork(struct http_req *r);
void rest_sandbox_forward(struct http_req *r);
void rest_sandboxes_list(struct http_req *r);
void rest_sandbox_get(struct http_req *r);
void rest_sandbox_delete(struct http_req *r);
void rest_set_timeout(struct http_req *r);
void rest_pause(struct http_req *r);
void rest_resume(struct http_req *r);

bool rpc_method_known(const char *name);
/* Server, client and bidi streams: their errors travel in the stream. */
bool rpc_method_streams(const char *name);
void rpc_stream_refuse(struct http_req *r, enum api_err e, const char *msg);
void rpc_dispatch(struct http_req *r);
/* WriteFile and Upload: client streams, their body read as it comes. */
void rpc_client_stream(struct http_req *r);
/* Exec, RunCode, PortForward: Connect bidi streams (HTTP/2 only; rpc_bidi.c). */
bool rpc_method_bidi(const char *name);
void rpc_bidi(struct http_req *r);

/* Shared by handlers: the body as a JSON object, or an error reply (NULL). */
struct cJSON *handler_json_body(struct http_req *r);
void handler_reply_cjson(struct http_req *r, int status, struct cJSON *o);

#endif
