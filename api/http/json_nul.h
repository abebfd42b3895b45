/* JSON text that would put a NUL byte into a string (a \u0000 escape, or a raw zero
 * byte): cJSON's strings are C strings, so such a path, command or env key would be cut
 * short silently. Request bodies with one are refused with invalid_argument instead. */
#ifndef MITOS_API_JSON_NUL_H
#define MITOS_API_JSON_NUL_H

#include <stdbool.h>
#include <stddef.h>

bool json_text_has_nul(const void *text, size_t len);

#define JSON_NUL_MESSAGE "strings in the request may not contain NUL (\\u0000)"

#endif
