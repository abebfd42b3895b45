/* Base64 for the few binary values that travel inside JSON (stdin chunks of
 * unary calls, post-fork entropy, kernel images pass through untouched). */
#ifndef MITOS_AGENT_BASE64_H
#define MITOS_AGENT_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Accepts the standard and the URL-safe alphabet, padding optional.
 * out must hold base64_decoded_max(n) bytes. Returns 0 or -EINVAL. */
int base64_decode(const char *in, size_t n, uint8_t *out, size_t *outlen);
static inline size_t base64_decoded_max(size_t n) { return n / 4 * 3 + 3; }

#endif
