/* The registry's files: one JSON object per template and per sandbox in the
 * state dir, written atomically (temp file + rename) so a crash never leaves
 * half a record. */
#ifndef MITOS_API_REGISTRY_H
#define MITOS_API_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "lib/error.h"

struct cJSON;

int registry_write_json(const char *path, const struct cJSON *o);
/* NULL when missing or not a JSON object. */
struct cJSON *registry_read_json(const char *path);
/* A whole number in [lo, hi] at o[key] (dflt when absent); -EINVAL with e filled
 * when it is something else. For the fields of API requests. */
int registry_uint_field(const struct cJSON *o, const char *key, unsigned lo, unsigned hi, unsigned dflt,
			unsigned *out, struct mitos_err *e);
/* "2024-01-02T03:04:05.123Z" */
void registry_rfc3339(uint64_t wall_ms, char *out, size_t n);
/* RFC 3339 with "Z" or a "+HH:MM" offset and any fraction ("...05Z", "...05.123456+02:00")
 * into *wall_ms: 0, or -EINVAL. */
int registry_parse_rfc3339(const char *s, uint64_t *wall_ms);

#endif
