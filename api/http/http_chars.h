/* Byte classes of HTTP/1.1's grammar (RFC 9110 5.6.2, 5.5), shared by the checks of a
 * request's head (http.c) and of a chunked body's framing (chunk_framing.c). */
#ifndef MITOS_API_HTTP_CHARS_H
#define MITOS_API_HTTP_CHARS_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* A hex digit's value, or -1. */
static inline int http_hexval(uint8_t ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch |= 0x20;
	return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* A byte of a token (a method, a field name). */
static inline bool http_tchar(uint8_t ch)
{
	return (ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* A byte a field value or a chunk extension may hold: no control byte but HTAB. */
static inline bool http_field_byte(uint8_t ch)
{
	return ch == '\t' || (ch >= 0x20 && ch != 0x7f);
}

#endif
