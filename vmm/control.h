/* A control socket: a Unix stream listener on the device loop that takes one JSON
 * object per line and answers each with one JSON object per line. Requests are parsed
 * with cJSON; the handler returns the reply object (the server frees it). A request
 * may carry descriptors (SCM_RIGHTS, sent with its first byte): the handler sees them
 * and the server closes them after it (a handler keeps what it needs by copying). */
#ifndef MITOS_CONTROL_H
#define MITOS_CONTROL_H

#include <cjson/cJSON.h>
#include <ev.h>

#include "lib/error.h"

#define CONTROL_MAX_LINE   (64 * 1024)
#define CONTROL_MAX_CLIENTS 16
#define CONTROL_MAX_FDS     8

struct control_fds {
	unsigned n;
	int fd[CONTROL_MAX_FDS];
};

typedef cJSON *(*control_handler_fn)(void *ctx, const cJSON *request, const struct control_fds *fds);

struct control_server;

/* Listens at path (an existing socket file there is replaced; anything else there is an
 * error). */
int control_server_start(struct control_server **out, struct ev_loop *loop, const char *path,
			 control_handler_fn handler, void *ctx, struct mitos_err *e);
void control_server_stop(struct control_server *s);

/* Replies the handlers build. */
cJSON *control_reply_ok(void);
cJSON *control_reply_error(const char *code, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Client side: connects to path, sends one request line (with fds, when not NULL),
 * waits for one reply line (timeout_ms). Returns the parsed reply or NULL with a
 * message in e. */
cJSON *control_call(const char *path, const cJSON *request, const struct control_fds *fds,
		    int timeout_ms, struct mitos_err *e);

#endif
