/* Base64 for the binary values that travel inside JSON: the agent's stdin
 * chunks and post-fork entropy, and the API server's proto3 JSON bytes fields
 * and WebSocket keys. */
#ifndef MITOS_AGENT_BASE64_H
#define MITOS_AGENT_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Standard alphabet, padded: what proto3 JSON writes. */
static inline size_t base64_encoded_len(size_t n) { return (n + 2) / 3 * 4; }
/* Writes base64_encoded_len(n) chars plus a NUL. */
void base64_encode(const uint8_t *in, size_t n, char *out);

/* Accepts the standard and the URL-safe alphabet, padding optional.
 * out must hold base64_decoded_max(n) bytes. Returns 0 or -EINVAL. */
int base64_decode(const char *in, size_t n, uint8_t *out, size_t *outlen);
static inline size_t base64_decoded_max(size_t n) { return n / 4 * 3 + 3; }

#endif
