/* One client connection: frame I/O, stream table, flow control, dispatch of
 * OPEN to the operation handlers. */
#ifndef MITOS_AGENT_CONN_H
#define MITOS_AGENT_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/json.h"
#include "agent/proto.h"

struct stream;

/* Callbacks an operation installs on its stream. Any may be NULL. */
struct stream_ops {
	/* DATA from the client; call stream_consumed() once the bytes are used. */
	void (*data)(struct stream *s, uint8_t channel, bool fin, const uint8_t *p, size_t n);
	void (*event)(struct stream *s, const struct json *ev);
	/* Send credit grew or the connection drained: time to send more DATA. */
	void (*writable)(struct stream *s);
	/* The client cancelled or the connection is gone. The stream is freed right
	 * after this returns: forget every pointer to it. */
	void (*cancel)(struct stream *s);
};

struct conn;

struct stream {
	struct conn *conn;
	uint32_t id;
	const struct stream_ops *ops;
	void *ctx;
	uint64_t tx_credit;   /* DATA bytes we may still send */
	uint64_t rx_allowed;  /* DATA bytes the client may still send */
	uint64_t rx_consumed; /* used since our last WINDOW */
	struct stream *next;
};

/* Serves fd (a connected socket or socketpair end); takes ownership. */
int conn_start(int fd, bool exit_on_close);

/* DATA bytes that may be sent on s right now (0 while the connection's output
 * buffer is above its high-water mark). Never more than PROTO_DATA_CHUNK. */
size_t stream_send_space(const struct stream *s);
/* True while the connection's output is above its high-water mark: producers
 * of EVENTs (which are not flow-controlled) pause and resume from writable. */
bool stream_congested(const struct stream *s);
/* n must not exceed stream_send_space(), except n == 0 for a bare FIN. */
void stream_data(struct stream *s, uint8_t channel, bool fin, const void *p, size_t n);
void stream_event(struct stream *s, const char *json, size_t n);
void stream_event_jw(struct stream *s, struct jw *w);
void stream_consumed(struct stream *s, size_t n);
/* Sends END and frees s. */
void stream_end_jw(struct stream *s, struct jw *w);
void stream_end_ok(struct stream *s);
void stream_end_error(struct stream *s, enum proto_err code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void stream_end_errno(struct stream *s, int err, const char *what);
/* Writes {"error":{...}} members into an open object (for END payloads that
 * carry both an error and a result, such as an exec timeout). */
void jw_error(struct jw *w, enum proto_err code, const char *message);

/* Operation handlers: each either ends the stream or installs its ops. */
typedef void (*op_open_fn)(struct stream *s, const struct json *req);
op_open_fn ops_find(const char *name);

#endif
