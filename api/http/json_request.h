/* JSON text from clients, held to one reading: cJSON's strings are C strings, so a
 * NUL (a \u0000 escape, or a raw zero byte) would cut a path, command or env key
 * short silently; bytes after the value and an object with a key twice would let
 * two parsers (a proxy's and ours) read different requests. Each is refused. */
#ifndef MITOS_API_JSON_REQUEST_H
#define MITOS_API_JSON_REQUEST_H

#include <stdbool.h>
#include <stddef.h>

struct cJSON;

bool json_text_has_nul(const void *text, size_t len);

#define JSON_NUL_MESSAGE "strings in the request may not contain NUL (\\u0000)"

/* The value of text, or NULL when it is not exactly one JSON value (whitespace
 * around it allowed), one of its objects names a key twice, or a number is past a
 * double's range. */
struct cJSON *json_parse_request(const void *text, size_t len);

#endif
