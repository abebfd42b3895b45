#include "agent/proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void proto_header_encode(const struct proto_header *h, uint8_t out[PROTO_HEADER_SIZE])
{
	put_be32(out, h->length);
	put_be32(out + 4, h->stream);
	out[8] = h->type;
	out[9] = h->flags;
	out[10] = h->channel;
	out[11] = h->reserved;
}

void proto_header_decode(const uint8_t in[PROTO_HEADER_SIZE], struct proto_header *h)
{
	h->length = get_be32(in);
	h->stream = get_be32(in + 4);
	h->type = in[8];
	h->flags = in[9];
	h->channel = in[10];
	h->reserved = in[11];
}

static const char *const type_names[] = {
	[PROTO_HELLO] = "hello", [PROTO_OPEN] = "open",     [PROTO_DATA] = "data",
	[PROTO_EVENT] = "event", [PROTO_WINDOW] = "window", [PROTO_END] = "end",
	[PROTO_CANCEL] = "cancel", [PROTO_ERROR] = "error",
};

bool proto_type_known(uint8_t type)
{
	return type < sizeof(type_names) / sizeof(type_names[0]) && type_names[type];
}

const char *proto_type_name(uint8_t type)
{
	return proto_type_known(type) ? type_names[type] : "unknown";
}

static const char *const err_codes[PERR_COUNT_] = {
	[PERR_NOT_FOUND] = "not_found",
	[PERR_PERMISSION_DENIED] = "permission_denied",
	[PERR_NOT_A_DIRECTORY] = "not_a_directory",
	[PERR_IS_A_DIRECTORY] = "is_a_directory",
	[PERR_EXISTS] = "exists",
	[PERR_NOT_EMPTY] = "not_empty",
	[PERR_NO_SPACE] = "no_space",
	[PERR_INVALID_ARGUMENT] = "invalid_argument",
	[PERR_TIMEOUT] = "timeout",
	[PERR_PROTOCOL_ERROR] = "protocol_error",
	[PERR_UNSUPPORTED] = "unsupported",
	[PERR_BUSY] = "busy",
	[PERR_CONNECTION_REFUSED] = "connection_refused",
	[PERR_IO_ERROR] = "io_error",
	[PERR_INTERNAL] = "internal",
};

const char *proto_err_code(enum proto_err e)
{
	return (unsigned)e < PERR_COUNT_ ? err_codes[e] : "internal";
}

enum proto_err proto_err_from_errno(int err)
{
	switch (err < 0 ? -err : err) {
	case ENOENT: case ESRCH: return PERR_NOT_FOUND;
	case EACCES: case EPERM: case EROFS: return PERR_PERMISSION_DENIED;
	case ENOTDIR: return PERR_NOT_A_DIRECTORY;
	case EISDIR: return PERR_IS_A_DIRECTORY;
	case EEXIST: return PERR_EXISTS;
	case ENOTEMPTY: return PERR_NOT_EMPTY;
	case ENOSPC: case EDQUOT: case EFBIG: return PERR_NO_SPACE;
	case EINVAL: case ENAMETOOLONG: case ELOOP: case EXDEV: case E2BIG: return PERR_INVALID_ARGUMENT;
	case ETIMEDOUT: return PERR_TIMEOUT;
	case EPROTO: return PERR_PROTOCOL_ERROR;
	case ENOSYS: case EOPNOTSUPP: return PERR_UNSUPPORTED;
	case EBUSY: case EAGAIN: case EMFILE: case ENFILE: case ENOMEM: return PERR_BUSY;
	case ECONNREFUSED: return PERR_CONNECTION_REFUSED;
	case EIO: return PERR_IO_ERROR;
	default: return PERR_INTERNAL;
	}
}

int proto_parser_init(struct proto_parser *p, uint32_t max_payload)
{
	memset(p, 0, sizeof(*p));
	p->max_payload = max_payload ? max_payload : PROTO_MAX_PAYLOAD;
	return 0;
}

void proto_parser_free(struct proto_parser *p)
{
	free(p->payload);
	p->payload = NULL;
}

enum proto_parse_event proto_parse(struct proto_parser *p, const uint8_t **buf, size_t *len,
				   struct proto_header *hdr, const uint8_t **payload)
{
	for (;;) {
		if (p->skip) {
			size_t n = *len < p->skip ? *len : (size_t)p->skip;
			*buf += n;
			*len -= n;
			p->skip -= n;
			if (p->skip)
				return PROTO_PARSE_NEED_MORE;
			continue;
		}
		if (!p->in_payload) {
			size_t n = PROTO_HEADER_SIZE - p->hlen;
			if (n > *len)
				n = *len;
			memcpy(p->hbuf + p->hlen, *buf, n);
			p->hlen += n;
			*buf += n;
			*len -= n;
			if (p->hlen < PROTO_HEADER_SIZE)
				return PROTO_PARSE_NEED_MORE;
			p->hlen = 0;
			proto_header_decode(p->hbuf, &p->hdr);
			if (p->hdr.length > p->max_payload) {
				p->skip = p->hdr.length;
				*hdr = p->hdr;
				return PROTO_PARSE_OVERSIZED;
			}
			p->in_payload = true;
			p->plen = 0;
		}
		size_t want = p->hdr.length - p->plen;
		if (want && !p->payload) {
			/* Sized once at the limit: a realloc per larger frame would cost more
			 * than the memory it saves on a handful of connections. */
			p->payload = malloc(p->max_payload);
			if (!p->payload) {
				/* Cannot buffer it: drop it like an oversized frame. */
				p->in_payload = false;
				p->skip = want;
				*hdr = p->hdr;
				return PROTO_PARSE_OVERSIZED;
			}
		}
		size_t n = want < *len ? want : *len;
		if (n)
			memcpy(p->payload + p->plen, *buf, n);
		p->plen += n;
		*buf += n;
		*len -= n;
		if (p->plen < p->hdr.length)
			return PROTO_PARSE_NEED_MORE;
		p->in_payload = false;
		*hdr = p->hdr;
		*payload = p->payload;
		return PROTO_PARSE_FRAME;
	}
}
