#include "api/http/connect.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void connect_dec_init(struct connect_dec *d, uint32_t max_message)
{
	memset(d, 0, sizeof(*d));
	d->max = max_message;
}

void connect_dec_free(struct connect_dec *d)
{
	free(d->buf);
	d->buf = NULL;
}

bool connect_dec_idle(const struct connect_dec *d)
{
	return d->hlen == 0;
}

int connect_dec_feed(struct connect_dec *d, const uint8_t **p, size_t *n, uint8_t *flags,
		     const uint8_t **msg, size_t *len)
{
	while (*n) {
		if (d->hlen < CONNECT_ENVELOPE) {
			size_t k = CONNECT_ENVELOPE - d->hlen;
			if (k > *n)
				k = *n;
			memcpy(d->hdr + d->hlen, *p, k);
			d->hlen += k;
			*p += k;
			*n -= k;
			if (d->hlen < CONNECT_ENVELOPE)
				return 0;
			d->flags = d->hdr[0];
			d->need = (uint32_t)d->hdr[1] << 24 | (uint32_t)d->hdr[2] << 16 |
				  (uint32_t)d->hdr[3] << 8 | d->hdr[4];
			if (d->flags & CONNECT_FLAG_COMPRESSED)
				return -EPROTO;
			if (d->flags)
				return -EBADMSG;
			if (d->need > d->max)
				return -E2BIG;
			free(d->buf);
			d->buf = malloc(d->need + 1);
			if (!d->buf)
				return -ENOMEM;
			d->len = 0;
		}
		size_t k = d->need - d->len;
		if (k > *n)
			k = *n;
		memcpy(d->buf + d->len, *p, k);
		d->len += k;
		*p += k;
		*n -= k;
		if (d->len == d->need)
			break;
	}
	if (d->hlen < CONNECT_ENVELOPE || d->len < d->need)
		return 0;
	d->buf[d->len] = 0;
	*flags = d->flags;
	*msg = d->buf;
	*len = d->len;
	d->hlen = 0;
	return 1;
}

int connect_timeout_ms(const char *v, uint64_t *ms)
{
	if (!v)
		return 0;
	size_t n = strlen(v);
	if (!n || n > 10 || strspn(v, "0123456789") != n)
		return -EINVAL;
	*ms = strtoull(v, NULL, 10);
	return 1;
}

void connect_envelope_header(uint8_t out[CONNECT_ENVELOPE], uint8_t flags, uint32_t len)
{
	out[0] = flags;
	out[1] = (uint8_t)(len >> 24);
	out[2] = (uint8_t)(len >> 16);
	out[3] = (uint8_t)(len >> 8);
	out[4] = (uint8_t)len;
}

static bool ct_is(const char *ct, const char *want)
{
	if (!ct)
		return false;
	size_t n = strlen(want);
	if (strncasecmp(ct, want, n))
		return false;
	return ct[n] == 0 || ct[n] == ';' || ct[n] == ' ';
}

bool connect_ct_is_stream_json(const char *ct)
{
	return ct_is(ct, "application/connect+json");
}

bool connect_ct_is_json(const char *ct)
{
	return ct_is(ct, "application/json");
}
