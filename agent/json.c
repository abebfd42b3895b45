#include "agent/json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct reader {
	const char *p, *end;
	int depth;
};

static void skip_ws(struct reader *r)
{
	while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
		r->p++;
}

static int append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
	if (*len + n + 1 > *cap) {
		size_t c = *cap ? *cap : 32;
		while (c < *len + n + 1)
			c *= 2;
		char *nb = realloc(*buf, c);
		if (!nb)
			return -ENOMEM;
		*buf = nb;
		*cap = c;
	}
	memcpy(*buf + *len, s, n);
	*len += n;
	(*buf)[*len] = 0;
	return 0;
}

static size_t utf8_encode(uint32_t cp, char out[4])
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xc0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xe0 | cp >> 12);
		out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		out[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | cp >> 18);
	out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
	out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
	out[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

static int hex4(struct reader *r, uint32_t *out)
{
	if (r->end - r->p < 4)
		return -EINVAL;
	uint32_t v = 0;
	for (int i = 0; i < 4; i++) {
		char c = *r->p++;
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (uint32_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (uint32_t)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (uint32_t)(c - 'A' + 10);
		else
			return -EINVAL;
	}
	*out = v;
	return 0;
}

static int parse_string(struct reader *r, char **out, size_t *outlen)
{
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int rc = append(&buf, &len, &cap, "", 0);
	r->p++; /* opening quote */
	while (!rc) {
		if (r->p >= r->end) {
			rc = -EINVAL;
			break;
		}
		unsigned char c = (unsigned char)*r->p;
		if (c == '"') {
			r->p++;
			*out = buf;
			*outlen = len;
			return 0;
		}
		if (c < 0x20) {
			rc = -EINVAL;
			break;
		}
		if (c != '\\') {
			const char *start = r->p;
			while (r->p < r->end && *r->p != '"' && *r->p != '\\' && (unsigned char)*r->p >= 0x20)
				r->p++;
			rc = append(&buf, &len, &cap, start, (size_t)(r->p - start));
			continue;
		}
		r->p++;
		if (r->p >= r->end) {
			rc = -EINVAL;
			break;
		}
		char e = *r->p++, tmp[4];
		const char *simple = NULL;
		switch (e) {
		case '"': simple = "\""; break;
		case '\\': simple = "\\"; break;
		case '/': simple = "/"; break;
		case 'b': simple = "\b"; break;
		case 'f': simple = "\f"; break;
		case 'n': simple = "\n"; break;
		case 'r': simple = "\r"; break;
		case 't': simple = "\t"; break;
		case 'u': {
			uint32_t cp, lo;
			if ((rc = hex4(r, &cp)))
				break;
			if (cp >= 0xd800 && cp < 0xdc00 && r->end - r->p >= 6 && r->p[0] == '\\' &&
			    r->p[1] == 'u') {
				r->p += 2;
				if ((rc = hex4(r, &lo)))
					break;
				if (lo >= 0xdc00 && lo < 0xe000)
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				else
					cp = 0xfffd;
			} else if (cp >= 0xd800 && cp < 0xe000) {
				cp = 0xfffd;
			}
			rc = append(&buf, &len, &cap, tmp, utf8_encode(cp, tmp));
			continue;
		}
		default: rc = -EINVAL;
		}
		if (simple)
			rc = append(&buf, &len, &cap, simple, 1);
	}
	free(buf);
	return rc;
}

static int parse_number(struct reader *r, struct json *v)
{
	const char *start = r->p;
	bool integral = true;
	if (r->p < r->end && *r->p == '-')
		r->p++;
	if (r->p >= r->end || *r->p < '0' || *r->p > '9')
		return -EINVAL;
	while (r->p < r->end && ((*r->p >= '0' && *r->p <= '9') || *r->p == '.' || *r->p == 'e' ||
				 *r->p == 'E' || *r->p == '+' || *r->p == '-')) {
		if (*r->p == '.' || *r->p == 'e' || *r->p == 'E')
			integral = false;
		r->p++;
	}
	char tmp[64];
	size_t n = (size_t)(r->p - start);
	if (n >= sizeof(tmp))
		return -EINVAL;
	memcpy(tmp, start, n);
	tmp[n] = 0;
	char *endp;
	v->kind = JSON_NUM;
	v->num = strtod(tmp, &endp);
	if (*endp)
		return -EINVAL;
	if (integral) {
		errno = 0;
		long long ll = strtoll(tmp, &endp, 10);
		if (!errno && !*endp) {
			v->is_int = true;
			v->i = ll;
		}
	}
	return 0;
}

static int parse_value(struct reader *r, struct json **out);

static int add_item(struct json *v, struct json *item, char *key)
{
	if ((v->n & (v->n - 1)) == 0) { /* grow at powers of two */
		size_t c = v->n ? v->n * 2 : 4;
		struct json **ni = realloc(v->items, c * sizeof(*ni));
		if (!ni)
			return -ENOMEM;
		v->items = ni;
		if (v->kind == JSON_OBJ) {
			char **nk = realloc(v->keys, c * sizeof(*nk));
			if (!nk)
				return -ENOMEM;
			v->keys = nk;
		}
	}
	v->items[v->n] = item;
	if (v->kind == JSON_OBJ)
		v->keys[v->n] = key;
	v->n++;
	return 0;
}

static int parse_container(struct reader *r, struct json *v, char close)
{
	if (++r->depth > JSON_MAX_DEPTH)
		return -EINVAL;
	r->p++;
	skip_ws(r);
	if (r->p < r->end && *r->p == close) {
		r->p++;
		r->depth--;
		return 0;
	}
	for (;;) {
		char *key = NULL;
		size_t klen;
		int rc;
		skip_ws(r);
		if (v->kind == JSON_OBJ) {
			if (r->p >= r->end || *r->p != '"')
				return -EINVAL;
			if ((rc = parse_string(r, &key, &klen)))
				return rc;
			skip_ws(r);
			if (r->p >= r->end || *r->p != ':') {
				free(key);
				return -EINVAL;
			}
			r->p++;
		}
		struct json *item = NULL;
		rc = parse_value(r, &item);
		if (!rc)
			rc = add_item(v, item, key);
		if (rc) {
			json_free(item);
			free(key);
			return rc;
		}
		skip_ws(r);
		if (r->p >= r->end)
			return -EINVAL;
		if (*r->p == ',') {
			r->p++;
			continue;
		}
		if (*r->p != close)
			return -EINVAL;
		r->p++;
		r->depth--;
		return 0;
	}
}

static bool match_word(struct reader *r, const char *w)
{
	size_t n = strlen(w);
	if ((size_t)(r->end - r->p) < n || memcmp(r->p, w, n))
		return false;
	r->p += n;
	return true;
}

static int parse_value(struct reader *r, struct json **out)
{
	skip_ws(r);
	if (r->p >= r->end)
		return -EINVAL;
	struct json *v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	int rc = 0;
	switch (*r->p) {
	case '{': v->kind = JSON_OBJ; rc = parse_container(r, v, '}'); break;
	case '[': v->kind = JSON_ARR; rc = parse_container(r, v, ']'); break;
	case '"': v->kind = JSON_STR; rc = parse_string(r, &v->str, &v->len); break;
	case 't': v->kind = JSON_BOOL; v->boolean = true; rc = match_word(r, "true") ? 0 : -EINVAL; break;
	case 'f': v->kind = JSON_BOOL; rc = match_word(r, "false") ? 0 : -EINVAL; break;
	case 'n': v->kind = JSON_NULL; rc = match_word(r, "null") ? 0 : -EINVAL; break;
	default: rc = parse_number(r, v);
	}
	if (rc) {
		json_free(v);
		return rc;
	}
	*out = v;
	return 0;
}

int json_parse(const char *s, size_t n, struct json **out)
{
	struct reader r = { .p = s, .end = s + n };
	struct json *v = NULL;
	int rc = parse_value(&r, &v);
	if (rc)
		return rc;
	skip_ws(&r);
	if (r.p != r.end) {
		json_free(v);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

void json_free(struct json *v)
{
	if (!v)
		return;
	for (size_t i = 0; i < v->n; i++) {
		json_free(v->items[i]);
		if (v->keys)
			free(v->keys[i]);
	}
	free(v->items);
	free(v->keys);
	free(v->str);
	free(v);
}

const struct json *json_get(const struct json *obj, const char *key)
{
	if (!obj || obj->kind != JSON_OBJ)
		return NULL;
	for (size_t i = 0; i < obj->n; i++)
		if (!strcmp(obj->keys[i], key))
			return obj->items[i];
	return NULL;
}

const char *json_get_str(const struct json *obj, const char *key)
{
	const struct json *v = json_get(obj, key);
	return v && v->kind == JSON_STR ? v->str : NULL;
}

bool json_get_bool(const struct json *obj, const char *key, bool dflt)
{
	const struct json *v = json_get(obj, key);
	return v && v->kind == JSON_BOOL ? v->boolean : dflt;
}

int json_get_int(const struct json *obj, const char *key, int64_t min, int64_t max, int64_t *out)
{
	const struct json *v = json_get(obj, key);
	if (!v || v->kind == JSON_NULL)
		return -ENOENT;
	if (v->kind != JSON_NUM || !v->is_int || v->i < min || v->i > max)
		return -EINVAL;
	*out = v->i;
	return 0;
}

/* ---- writer ---- */

void jw_init(struct jw *w)
{
	memset(w, 0, sizeof(*w));
}

void jw_free(struct jw *w)
{
	free(w->buf);
	memset(w, 0, sizeof(*w));
}

static void put(struct jw *w, const char *s, size_t n)
{
	if (w->err)
		return;
	w->err = append(&w->buf, &w->len, &w->cap, s, n);
}

/* Separates values: a comma unless this is the first value in its container
 * or the value that follows a key. */
static void before_value(struct jw *w)
{
	if (w->need_comma[w->depth])
		put(w, ",", 1);
	w->need_comma[w->depth] = true;
}

static void open_container(struct jw *w, const char *c)
{
	before_value(w);
	put(w, c, 1);
	if (w->depth >= JSON_MAX_DEPTH) {
		w->err = -EINVAL;
		return;
	}
	w->need_comma[++w->depth] = false;
}

static void close_container(struct jw *w, const char *c)
{
	put(w, c, 1);
	if (w->depth > 0)
		w->depth--;
}

void jw_obj(struct jw *w) { open_container(w, "{"); }
void jw_obj_end(struct jw *w) { close_container(w, "}"); }
void jw_arr(struct jw *w) { open_container(w, "["); }
void jw_arr_end(struct jw *w) { close_container(w, "]"); }

/* Length of the valid UTF-8 sequence at s, or 0 when it is not one. */
static size_t utf8_valid_len(const unsigned char *s, size_t n)
{
	size_t len;
	uint32_t cp;
	if (s[0] < 0xc2 || s[0] > 0xf4)
		return 0;
	if (s[0] < 0xe0) {
		len = 2;
		cp = s[0] & 0x1f;
	} else if (s[0] < 0xf0) {
		len = 3;
		cp = s[0] & 0x0f;
	} else {
		len = 4;
		cp = s[0] & 0x07;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp < 0xe000))
		return 0;
	return len;
}

static void put_escaped(struct jw *w, const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t run = 0; /* bytes at the front of u that need no escaping */
	put(w, "\"", 1);
	for (size_t i = 0; i < n;) {
		unsigned char c = u[i];
		const char *esc = NULL;
		char tmp[8];
		size_t adv = 1;
		if (c == '"')
			esc = "\\\"";
		else if (c == '\\')
			esc = "\\\\";
		else if (c == '\n')
			esc = "\\n";
		else if (c < 0x20) {
			snprintf(tmp, sizeof(tmp), "\\u%04x", c);
			esc = tmp;
		} else if (c >= 0x80) {
			adv = utf8_valid_len(u + i, n - i);
			if (!adv) {
				esc = "\xef\xbf\xbd";
				adv = 1;
			}
		}
		if (esc) {
			put(w, (const char *)u + i - run, run);
			run = 0;
			put(w, esc, strlen(esc));
		} else {
			run += adv;
		}
		i += adv;
	}
	put(w, (const char *)u + n - run, run);
	put(w, "\"", 1);
}

void jw_key(struct jw *w, const char *key)
{
	before_value(w);
	put_escaped(w, key, strlen(key));
	put(w, ":", 1);
	w->need_comma[w->depth] = false;
}

void jw_strn(struct jw *w, const char *s, size_t n)
{
	before_value(w);
	put_escaped(w, s ? s : "", s ? n : 0);
}

void jw_str(struct jw *w, const char *s)
{
	jw_strn(w, s, s ? strlen(s) : 0);
}

void jw_int(struct jw *w, int64_t v)
{
	char tmp[32];
	before_value(w);
	put(w, tmp, (size_t)snprintf(tmp, sizeof(tmp), "%" PRId64, v));
}

void jw_double(struct jw *w, double v)
{
	char tmp[40];
	before_value(w);
	put(w, tmp, (size_t)snprintf(tmp, sizeof(tmp), "%.15g", isfinite(v) ? v : 0.0));
}

void jw_bool(struct jw *w, bool v)
{
	before_value(w);
	put(w, v ? "true" : "false", v ? 4 : 5);
}

void jw_null(struct jw *w)
{
	before_value(w);
	put(w, "null", 4);
}

void jw_value(struct jw *w, const struct json *v)
{
	char tmp[32];
	switch (v ? v->kind : JSON_NULL) {
	case JSON_NULL: jw_null(w); break;
	case JSON_BOOL: jw_bool(w, v->boolean); break;
	case JSON_STR: jw_strn(w, v->str, v->len); break;
	case JSON_NUM:
		if (v->is_int) {
			jw_int(w, v->i);
		} else {
			snprintf(tmp, sizeof(tmp), "%.17g", v->num);
			jw_raw(w, tmp, strlen(tmp));
		}
		break;
	case JSON_ARR:
	case JSON_OBJ:
		v->kind == JSON_ARR ? jw_arr(w) : jw_obj(w);
		for (size_t i = 0; i < v->n; i++) {
			if (v->kind == JSON_OBJ)
				jw_key(w, v->keys[i]);
			jw_value(w, v->items[i]);
		}
		v->kind == JSON_ARR ? jw_arr_end(w) : jw_obj_end(w);
		break;
	}
}

void jw_raw(struct jw *w, const char *json, size_t n)
{
	before_value(w);
	put(w, json, n);
}

int jw_finish(struct jw *w, const char **out, size_t *len)
{
	if (!w->err && !w->buf)
		put(w, "", 0);
	if (w->err)
		return w->err;
	*out = w->buf;
	*len = w->len;
	return 0;
}
