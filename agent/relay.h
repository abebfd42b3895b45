/* Bounded byte relays between file descriptors and streams.
 * relay_out: fd (child stdout, socket, pty) -> ring -> DATA frames, paced by the
 *   stream's send credit; with no stream attached it keeps the newest bytes.
 * relay_in: DATA frames -> ring -> fd (child stdin, socket), returning credit
 *   to the stream only as bytes reach the fd. */
#ifndef MITOS_AGENT_RELAY_H
#define MITOS_AGENT_RELAY_H

#include <stdbool.h>
#include <stdint.h>

#include "agent/loop.h"
#include "agent/ring.h"

struct stream;

struct relay_out {
	int fd;
	struct watch w;
	struct ring ring;
	uint8_t channel;
	bool eof;          /* fd reached EOF or failed, and is closed */
	bool idle;         /* last read found nothing: what was written is in the ring */
	bool discard_detached; /* without a stream, drop bytes instead of keeping them */
	uint64_t dropped;  /* bytes lost while detached */
	struct stream *s;
	/* Called when eof or an emptied ring may have completed the owner's work.
	 * The owner may free the relay inside it; nothing touches it afterwards. */
	void (*changed)(struct relay_out *o);
	void *owner;
};

int relay_out_start(struct relay_out *o, int fd, uint8_t channel, size_t cap,
		    void (*changed)(struct relay_out *), void *owner);
/* Sends what the ring holds within credit and re-arms reading. Call on attach
 * and from the stream's writable callback. Does not call changed(). */
void relay_out_flush(struct relay_out *o);
/* Reads whatever is immediately available (used to collect output written
 * before a completion message arrived on another fd). */
void relay_out_drain(struct relay_out *o);
static inline bool relay_out_done(const struct relay_out *o) { return o->eof && !ring_used(&o->ring); }
void relay_out_close(struct relay_out *o);

struct relay_in {
	int fd;
	struct watch w;
	struct ring ring;
	bool fin;        /* close (or shut down) fd once the ring is written */
	bool closed;
	bool is_socket;  /* fin means shutdown(SHUT_WR), not close */
	struct stream *s;
	uint64_t owed;   /* bytes taken from s that are not yet credited back */
};

int relay_in_start(struct relay_in *in, int fd, size_t cap, bool is_socket);
/* Queues bytes; returns how many fit. from_stream: the bytes came as DATA on
 * in->s, so credit flows back to it as they drain (or are discarded). */
size_t relay_in_push(struct relay_in *in, const uint8_t *p, size_t n, bool from_stream);
void relay_in_finish(struct relay_in *in);
void relay_in_close(struct relay_in *in);

#endif
