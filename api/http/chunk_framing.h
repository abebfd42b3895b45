/* A chunked request body's framing (RFC 9112 7.1), checked beside http_parser, which
 * as Debian builds it (not strict) takes any two bytes after a chunk's data, any
 * byte after a chunk-size line's CR, and trailer lines of any shape. A proxy in front that reads those strictly finds
 * a different end of the body, and takes the bytes after it for another request: one
 * reading of a body, as of a head (http.c's head_refusal). */
#ifndef MITOS_API_HTTP_CHUNK_FRAMING_H
#define MITOS_API_HTTP_CHUNK_FRAMING_H

#include <stddef.h>
#include <stdint.h>

struct chunk_framing {
	uint8_t state;
	uint8_t size_digits;
	uint64_t left; /* of the chunk's data, or its size while it is read */
};

/* Starts a body: all zero is the same. */
void chunk_framing_reset(struct chunk_framing *f);
/* The next n bytes of the body as sent: NULL while they frame it well, else what is
 * wrong (and it stays wrong). */
const char *chunk_framing_feed(struct chunk_framing *f, const uint8_t *p, size_t n);

#endif
