/* Minimal JSON reader and writer for the agent's control payloads.
 * The agent is linked statically and Debian ships cJSON only as a shared library,
 * so the agent carries this small strict parser instead. */
#ifndef MITOS_AGENT_JSON_H
#define MITOS_AGENT_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum json_kind { JSON_NULL, JSON_BOOL, JSON_NUM, JSON_STR, JSON_ARR, JSON_OBJ };

struct json {
	enum json_kind kind;
	bool boolean;
	bool is_int;      /* number without fraction/exponent that fits int64 */
	int64_t i;
	double num;
	char *str;        /* JSON_STR: NUL-terminated, may also contain NULs: see len */
	size_t len;
	struct json **items; /* JSON_ARR / JSON_OBJ values */
	char **keys;         /* JSON_OBJ keys */
	size_t n;
};

#define JSON_MAX_DEPTH 32

/* Returns 0 or -EINVAL (syntax, depth, trailing bytes) / -ENOMEM. */
int json_parse(const char *s, size_t n, struct json **out);
void json_free(struct json *v);

const struct json *json_get(const struct json *obj, const char *key);
/* Typed getters: NULL / the default when the member is missing or of another kind. */
const char *json_get_str(const struct json *obj, const char *key);
bool json_get_bool(const struct json *obj, const char *key, bool dflt);
/* 0, -ENOENT when missing, -EINVAL when not an integer in [min, max]. */
int json_get_int(const struct json *obj, const char *key, int64_t min, int64_t max, int64_t *out);

/* Writer into a growable buffer; errors are sticky and reported by jw_finish. */
struct jw {
	char *buf;
	size_t len, cap;
	int err;
	int depth;
	bool need_comma[JSON_MAX_DEPTH + 1];
};

void jw_init(struct jw *w);
void jw_free(struct jw *w);
void jw_obj(struct jw *w);
void jw_obj_end(struct jw *w);
void jw_arr(struct jw *w);
void jw_arr_end(struct jw *w);
void jw_key(struct jw *w, const char *key);
/* Bytes that are not valid UTF-8 are written as U+FFFD: JSON cannot carry them. */
void jw_strn(struct jw *w, const char *s, size_t n);
void jw_str(struct jw *w, const char *s);
void jw_int(struct jw *w, int64_t v);
/* A finite number (NaN and infinities are written as 0: JSON has neither). */
void jw_double(struct jw *w, double v);
void jw_bool(struct jw *w, bool v);
void jw_null(struct jw *w);
/* Writes a parsed value back out. */
void jw_value(struct jw *w, const struct json *v);
/* Inserts an already-encoded JSON value verbatim. */
void jw_raw(struct jw *w, const char *json, size_t n);
/* Returns 0 or the first error; on success *out and *len stay owned by w. */
int jw_finish(struct jw *w, const char **out, size_t *len);

#endif
