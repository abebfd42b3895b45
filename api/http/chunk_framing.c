#include "api/http/chunk_framing.h"

#include <string.h>

#include "api/http/http_chars.h"

enum {
	CF_SIZE_FIRST,   /* the first hex digit of a chunk size */
	CF_SIZE,         /* more digits, whitespace, an extension, or CR */
	CF_SIZE_WS,      /* whitespace (BWS) after the size: more, an extension, or CR */
	CF_EXT,          /* ;name=value up to CR */
	CF_SIZE_LF,
	CF_DATA,
	CF_DATA_CR,
	CF_DATA_LF,
	CF_TRAILER_START, /* a trailer field's first byte, or the CR of the empty line */
	CF_TRAILER_NAME,
	CF_TRAILER_VALUE,
	CF_TRAILER_LF,
	CF_END_LF,
	CF_DONE,
	CF_BAD,
};

static const char *const bad_msg = "the chunked body's framing is wrong (RFC 9112 7.1: a chunk's size line and its "
				   "data end in CRLF; trailer fields are name: value lines)";

void chunk_framing_reset(struct chunk_framing *f)
{
	memset(f, 0, sizeof(*f));
}

static uint8_t step(struct chunk_framing *f, uint8_t ch)
{
	int h;
	switch (f->state) {
	case CF_SIZE_FIRST:
	case CF_SIZE:
		if ((h = http_hexval(ch)) >= 0) {
			/* 16 digits hold any size; http_parser refuses a larger one itself. */
			if (++f->size_digits > 16)
				return CF_BAD;
			f->left = f->left << 4 | (uint64_t)h;
			return CF_SIZE;
		}
		if (f->state == CF_SIZE_FIRST)
			return CF_BAD;
		/* fall through */
	case CF_SIZE_WS:
		return ch == '\r' ? CF_SIZE_LF : ch == ';' ? CF_EXT : ch == ' ' || ch == '\t' ? CF_SIZE_WS : CF_BAD;
	case CF_EXT:
		return ch == '\r' ? CF_SIZE_LF : http_field_byte(ch) ? CF_EXT : CF_BAD;
	case CF_SIZE_LF:
		if (ch != '\n')
			return CF_BAD;
		f->size_digits = 0;
		return f->left ? CF_DATA : CF_TRAILER_START;
	case CF_DATA_CR:
		return ch == '\r' ? CF_DATA_LF : CF_BAD;
	case CF_DATA_LF:
		return ch == '\n' ? CF_SIZE_FIRST : CF_BAD;
	case CF_TRAILER_START:
		/* A field as in a head (name ":" value): no obs-fold, no space before the colon. */
		return ch == '\r' ? CF_END_LF : http_tchar(ch) ? CF_TRAILER_NAME : CF_BAD;
	case CF_TRAILER_NAME:
		return ch == ':' ? CF_TRAILER_VALUE : http_tchar(ch) ? CF_TRAILER_NAME : CF_BAD;
	case CF_TRAILER_VALUE:
		return ch == '\r' ? CF_TRAILER_LF : http_field_byte(ch) ? CF_TRAILER_VALUE : CF_BAD;
	case CF_TRAILER_LF:
		return ch == '\n' ? CF_TRAILER_START : CF_BAD;
	case CF_END_LF:
		return ch == '\n' ? CF_DONE : CF_BAD;
	default:
		return f->state;
	}
}

const char *chunk_framing_feed(struct chunk_framing *f, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n && f->state != CF_BAD; i++) {
		if (f->state == CF_DATA) {
			/* The data itself is anything: skipped whole. */
			size_t take = f->left < n - i ? (size_t)f->left : n - i;
			f->left -= take;
			i += take - 1;
			if (!f->left)
				f->state = CF_DATA_CR;
			continue;
		}
		f->state = step(f, p[i]);
	}
	return f->state == CF_BAD ? bad_msg : NULL;
}
