/* The host side of the agent protocol (agent/PROTOCOL.md) on the server's
 * io_uring: one connection per sandbox, many streams on it, per-stream credit
 * in both directions. This is the one place that keeps the credit books: the agent
 * may send a stream no more than the window this side granted (past it the stream
 * is reset and the connection's owner told), and this side grants more only as the
 * stream's consumer has room, so a slow client slows the guest instead of growing
 * serve's buffers. Stream callbacks run from the event loop. */
#ifndef MITOS_API_AGENT_CLIENT_H
#define MITOS_API_AGENT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/error.h"

struct bytebuf;
struct cJSON;
struct agent_conn;
struct astream;

struct astream_ops {
	/* DATA from the agent. The agent gets credit for it back once room() says the
	 * consumer can take more (at once without room()). */
	void (*data)(struct astream *s, uint8_t channel, bool fin, const uint8_t *p, size_t n);
	void (*event)(struct astream *s, struct cJSON *ev);
	/* END (payload) or the connection died (payload NULL, why says what).
	 * The stream is freed right after this returns. */
	void (*end)(struct astream *s, struct cJSON *payload, const char *why);
	/* More send credit. */
	void (*writable)(struct astream *s);
	/* How much more the consumer can take now (0: hold the agent's credit); call
	 * agent_room_changed() when it grows again. */
	size_t (*room)(struct astream *s);
};

struct astream {
	struct agent_conn *ac;
	uint32_t id;
	const struct astream_ops *ops;
	void *ctx;
	uint64_t tx_credit;
	uint64_t rx_window;   /* what the agent may still send us */
	uint64_t rx_held;     /* delivered, not yet granted back */
	struct astream *next;
};

struct agent_conn_cbs {
	void (*ready)(struct agent_conn *ac, void *ctx);
	/* The connection failed or closed; ac is freed after this returns. */
	void (*closed)(struct agent_conn *ac, void *ctx, const char *why);
	/* The agent broke the protocol on a stream (it sent past its credit): that stream
	 * was reset, the connection goes on. */
	void (*violation)(struct agent_conn *ac, void *ctx, const char *why);
};

/* Connects to a Unix socket and says HELLO. -errno when nobody listens yet. */
int agent_connect(const char *path, const struct agent_conn_cbs *cbs, void *ctx, struct agent_conn **out);
/* The same through a VM's Firecracker-style vsock host socket (devices/virtio_vsock.h):
 * "CONNECT <vsock_port>\n" first, and the "OK <n>\n" answer is checked before the
 * agent's frames; vsock_port 0 is agent_connect(). */
int agent_connect_vsock(const char *path, uint32_t vsock_port, const struct agent_conn_cbs *cbs, void *ctx,
			struct agent_conn **out);
/* Closes without calling closed(); every open stream gets end(NULL). */
void agent_conn_close(struct agent_conn *ac);
bool agent_conn_ready(const struct agent_conn *ac);
/* After the ring is gone: frees every connection. */
void agent_conn_free_all(void);
unsigned agent_conn_streams(const struct agent_conn *ac);
/* Streams that relay connections to a sandbox's own servers (previews, E2B hosts,
 * forwards), which whoever holds a URL may open, stop short of the agent's limit
 * (256 a connection), so that its owner's calls always find room. */
#define AGENT_RELAY_STREAMS_MAX 192
bool agent_relay_room(const struct agent_conn *ac);

/* Opens a stream with {"op":...} JSON; NULL when the connection is not usable. */
struct astream *agent_open(struct agent_conn *ac, const char *open_json, const struct astream_ops *ops, void *ctx);
size_t agent_send_room(const struct astream *s);
void agent_send_data(struct astream *s, uint8_t channel, bool fin, const void *p, size_t n);
/* Sends as much of b as the stream's credit allows. With fin, the frame that
 * empties b carries FIN; returns whether one did. */
bool agent_send_buffered(struct astream *s, uint8_t channel, struct bytebuf *b, bool fin);
void agent_send_event(struct astream *s, const char *json);
/* The stream's consumer has room again: grants the agent the credit held back. */
void agent_room_changed(struct astream *s);
/* Abandons the stream: CANCEL is sent, s is freed, no callback follows. */
void agent_cancel(struct astream *s);

/* Blocking, off the event loop (health checks while a VM boots, a template's
 * warm-up, tests), on the same frame codec: connects (through a VM's vsock host
 * socket when vsock_port is not 0), opens one stream with open_json and waits up to
 * timeout_ms for its END, whose payload *end gets (the caller frees it). DATA is
 * dropped and credited back. -ENOENT, -ECONNREFUSED, -ECONNRESET: nobody answers
 * yet; -ETIMEDOUT; -EPROTO: what it sent was wrong. e (may be NULL) says which. */
int agent_call_blocking(const char *path, uint32_t vsock_port, const char *open_json, int timeout_ms,
			struct cJSON **end, struct mitos_err *e);
/* The same, keeping the stream's first cap bytes of DATA in data (*len of them). */
int agent_call_blocking_data(const char *path, uint32_t vsock_port, const char *open_json, int timeout_ms,
			     struct cJSON **end, uint8_t *data, size_t cap, size_t *len, struct mitos_err *e);

#endif
