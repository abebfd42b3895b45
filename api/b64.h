/* Base64 as proto3 JSON uses it: standard alphabet with padding out; in, also
 * the URL-safe alphabet and missing padding. */
#ifndef MITOS_API_B64_H
#define MITOS_API_B64_H

#include <stddef.h>
#include <stdint.h>

static inline size_t b64_encoded_len(size_t n) { return (n + 2) / 3 * 4; }
/* Writes b64_encoded_len(n) chars plus a NUL. */
void b64_encode(const uint8_t *in, size_t n, char *out);
/* out needs n * 3 / 4 + 3 bytes; returns the decoded length or -EINVAL. */
long b64_decode(const char *in, size_t n, uint8_t *out);

#endif
