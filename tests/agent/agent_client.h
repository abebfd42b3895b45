/* Test-side client of the agent protocol: starts mitos-agent --fd over a
 * socketpair and exchanges frames synchronously. Also used by the benchmark. */
#ifndef MITOS_TESTS_AGENT_CLIENT_H
#define MITOS_TESTS_AGENT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/proto.h"

#define AC_MAX_STREAMS 4096

struct ac_frame {
	struct proto_header h;
	uint8_t *p;
	struct ac_frame *next;
};

struct ac {
	int fd;
	pid_t pid;
	struct proto_parser parser;
	struct ac_frame *queue, *queue_tail;
	bool auto_window; /* grant credit back as soon as DATA arrives */
	uint64_t credit[AC_MAX_STREAMS]; /* our send credit per stream id */
	uint32_t next_id;
	char hello[512];
};

struct ac_buf {
	uint8_t *p;
	size_t len, cap;
};

struct ac_result {
	struct ac_buf ch[3];   /* DATA by channel */
	bool fin[3];
	struct ac_buf events;  /* EVENT payloads, one per line */
	char *end;             /* END payload, NUL-terminated */
};

/* Starts the agent (path from $MITOS_AGENT or the build) and does HELLO. */
int ac_start(struct ac *c, const char *const *extra_args);
/* Starts an agent listening on the Unix socket path (pid returned), and
 * connects a client to it (HELLO included); ac_stop on such a client only
 * closes the connection. */
pid_t ac_spawn_unix(const char *path);
int ac_connect_unix(struct ac *c, const char *path);

/* Closes the connection and reaps the agent: 0 when it exited cleanly
 * (sanitizer reports make it exit non-zero), -1 otherwise. */
int ac_stop(struct ac *c);
uint32_t ac_new_id(struct ac *c);

int ac_send(struct ac *c, uint8_t type, uint8_t flags, uint8_t channel, uint32_t id,
	    const void *p, size_t n);
int ac_send_raw(struct ac *c, const void *p, size_t n);
int ac_open(struct ac *c, uint32_t id, const char *json);
/* Sends DATA on channel 0 respecting the agent's window (waits for WINDOW). */
int ac_write_data(struct ac *c, uint32_t id, const void *p, size_t n, bool fin, int timeout_ms);
int ac_window(struct ac *c, uint32_t id, uint32_t n);

/* Next frame for stream id (any stream when id == UINT32_MAX). Returns 0,
 * -ETIMEDOUT or -EPIPE. WINDOW frames are absorbed into credit. */
int ac_recv(struct ac *c, uint32_t id, struct ac_frame **f, int timeout_ms);
void ac_frame_free(struct ac_frame *f);

/* Collects a stream until END. */
int ac_collect(struct ac *c, uint32_t id, struct ac_result *r, int timeout_ms);
void ac_result_free(struct ac_result *r);
/* Opens json on a new stream and collects it. */
int ac_call(struct ac *c, const char *json, struct ac_result *r, int timeout_ms);

void ac_buf_put(struct ac_buf *b, const void *p, size_t n);

#endif
