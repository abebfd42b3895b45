/* Connect protocol framing (connectrpc.com/docs/protocol): the 5-byte envelope
 * {flags u8, length u32 BE} of streaming calls, an incremental decoder for
 * request bodies, and content-type checks. */
#ifndef MITOS_API_CONNECT_H
#define MITOS_API_CONNECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONNECT_FLAG_COMPRESSED 0x01u
#define CONNECT_FLAG_END 0x02u
#define CONNECT_ENVELOPE 5

struct connect_dec {
	uint8_t hdr[CONNECT_ENVELOPE];
	size_t hlen;
	uint8_t flags;
	uint32_t need;
	uint8_t *buf;
	size_t len;
	uint32_t max;
};

void connect_dec_init(struct connect_dec *d, uint32_t max_message);
void connect_dec_free(struct connect_dec *d);
/* Consumes input until one message is complete (returns 1, *msg valid until the
 * next call), or all input is used (0). -E2BIG: a message over max;
 * -EPROTO: a compressed message (we never negotiate compression); -EBADMSG: flags
 * a client's message never carries (end-of-stream, unknown bits). */
int connect_dec_feed(struct connect_dec *d, const uint8_t **p, size_t *n, uint8_t *flags,
		     const uint8_t **msg, size_t *len);
/* True when no partial envelope is buffered. */
bool connect_dec_idle(const struct connect_dec *d);

void connect_envelope_header(uint8_t out[CONNECT_ENVELOPE], uint8_t flags, uint32_t len);

/* Connect-Timeout-Ms: 0 when absent (*ms untouched), 1 with *ms, -EINVAL when it is
 * not 1 to 10 digits (the protocol's form; a call with one is refused). */
int connect_timeout_ms(const char *header, uint64_t *ms);

/* application/connect+json (streams) vs application/json (unary). */
bool connect_ct_is_stream_json(const char *ct);
bool connect_ct_is_json(const char *ct);

#endif
