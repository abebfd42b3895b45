#include "agent/tar.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Field offsets and widths of a ustar header block. */
#define F_NAME 0, 100
#define F_MODE 100, 8
#define F_UID 108, 8
#define F_GID 116, 8
#define F_SIZE 124, 12
#define F_MTIME 136, 12
#define F_CHKSUM 148, 8
#define O_TYPE 156
#define O_MAGIC 257
#define F_PREFIX 345, 155

#define LONGNAME_MARK "././@LongLink"

size_t tar_padding(uint64_t size)
{
	return (size_t)((TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK);
}

/* Octal with a NUL in the last byte, or base-256 (GNU) when it does not fit. */
static void put_num(uint8_t *b, size_t off, size_t width, uint64_t v)
{
	uint8_t *f = b + off;
	if (v < (1ull << (3 * (width - 1)))) {
		for (size_t i = width - 1; i-- > 0; v >>= 3)
			f[i] = (uint8_t)('0' + (v & 7));
		f[width - 1] = 0;
		return;
	}
	memset(f, 0, width);
	f[0] = 0x80;
	for (size_t i = width; i-- > 1 && v; v >>= 8)
		f[i] = (uint8_t)v;
}

static void put_str(uint8_t *b, size_t off, size_t width, const char *s, size_t n)
{
	memcpy(b + off, s, n < width ? n : width);
}

static unsigned checksum(const uint8_t *b, bool as_signed)
{
	unsigned sum = 0;
	for (size_t i = 0; i < TAR_BLOCK; i++) {
		unsigned c = i >= 148 && i < 156 ? ' ' : as_signed ? (unsigned)(int)(int8_t)b[i] : b[i];
		sum += c;
	}
	return sum;
}

static void one_header(uint8_t *b, const char *name, size_t nlen, const char *prefix, size_t plen,
		       char type, uint32_t mode, uint64_t size, int64_t mtime)
{
	memset(b, 0, TAR_BLOCK);
	put_str(b, F_NAME, name, nlen);
	put_num(b, F_MODE, mode & 07777);
	put_num(b, F_UID, 0);
	put_num(b, F_GID, 0);
	put_num(b, F_SIZE, size);
	put_num(b, F_MTIME, mtime > 0 ? (uint64_t)mtime : 0);
	b[O_TYPE] = (uint8_t)type;
	memcpy(b + O_MAGIC, "ustar\0" "00", 8);
	put_str(b, F_PREFIX, prefix, plen);
	char sum[8];
	snprintf(sum, sizeof(sum), "%06o", checksum(b, false) & 0777777);
	memcpy(b + 148, sum, 6);
	b[154] = 0;
	b[155] = ' ';
}

size_t tar_header(uint8_t *out, const char *name, char type, uint32_t mode, uint64_t size, int64_t mtime)
{
	size_t n = strlen(name);
	if (!n || n >= PATH_MAX)
		return 0;
	if (n <= 100) {
		one_header(out, name, n, "", 0, type, mode, size, mtime);
		return TAR_BLOCK;
	}
	/* ustar's prefix holds up to 155 bytes before a '/', the name field the rest. */
	for (const char *sl = strchr(name, '/'); sl; sl = strchr(sl + 1, '/')) {
		size_t plen = (size_t)(sl - name), rest = n - plen - 1;
		if (plen > 155)
			break;
		if (plen && rest && rest <= 100) {
			one_header(out, sl + 1, rest, name, plen, type, mode, size, mtime);
			return TAR_BLOCK;
		}
	}
	/* Else a GNU long-name record carries the whole name first. */
	size_t body = n + 1, off = TAR_BLOCK;
	one_header(out, LONGNAME_MARK, strlen(LONGNAME_MARK), "", 0, 'L', 0644, body, 0);
	memset(out + off, 0, body + tar_padding(body));
	memcpy(out + off, name, n);
	off += body + tar_padding(body);
	one_header(out + off, name, 100, "", 0, type, mode, size, mtime);
	return off + TAR_BLOCK;
}

/* ---- reading ---- */

enum { S_HDR, S_DATA, S_LONG, S_PAX, S_SKIP, S_PAD, S_END, S_ERR };

void tar_dec_init(struct tar_dec *d)
{
	memset(d, 0, sizeof(*d));
	d->state = S_HDR;
}

void tar_dec_free(struct tar_dec *d)
{
	free(d->pax);
	d->pax = NULL;
}

bool tar_dec_complete(const struct tar_dec *d)
{
	return d->state == S_END || (d->state == S_HDR && d->have == 0);
}

static enum tar_ev fail(struct tar_dec *d, const char *why)
{
	d->state = S_ERR;
	d->err = why;
	return TAR_ERROR;
}

/* Octal (space or NUL padded) or base-256; -1 if malformed or over 2^62. */
static int64_t get_num(const uint8_t *b, size_t off, size_t width)
{
	const uint8_t *f = b + off;
	uint64_t v = 0;
	if (f[0] & 0x80) {
		if (f[0] != 0x80)
			return -1;
		for (size_t i = 1; i < width; i++) {
			if (v >> 54)
				return -1;
			v = v << 8 | f[i];
		}
		return (int64_t)v;
	}
	size_t i = 0;
	while (i < width && f[i] == ' ')
		i++;
	for (; i < width && f[i] >= '0' && f[i] <= '7'; i++) {
		if (v >> 59)
			return -1;
		v = v << 3 | (uint64_t)(f[i] - '0');
	}
	for (; i < width; i++)
		if (f[i] != ' ' && f[i])
			return -1;
	return (int64_t)v;
}

static size_t field_len(const uint8_t *b, size_t off, size_t width)
{
	const void *z = memchr(b + off, 0, width);
	return z ? (size_t)((const uint8_t *)z - (b + off)) : width;
}

/* "LEN key=value\n" records: the "path" one names the next member. */
static void pax_path(struct tar_dec *d, char *name)
{
	size_t off = 0;
	while (off < d->pax_len) {
		char *rec = d->pax + off, *end;
		unsigned long len = strtoul(rec, &end, 10);
		if (end == rec || *end != ' ' || len <= (size_t)(end - rec) || len > d->pax_len - off)
			return;
		char *kv = end + 1, *last = rec + len - 1;
		if (*last != '\n')
			return;
		char *eq = memchr(kv, '=', (size_t)(last - kv));
		if (eq && eq - kv == 4 && !memcmp(kv, "path", 4)) {
			size_t vlen = (size_t)(last - eq - 1);
			if (vlen < PATH_MAX && !memchr(eq + 1, 0, vlen)) {
				memcpy(name, eq + 1, vlen);
				name[vlen] = 0;
			}
		}
		off += len;
	}
}

static bool all_zero(const uint8_t *b)
{
	for (size_t i = 0; i < TAR_BLOCK; i++)
		if (b[i])
			return false;
	return true;
}

/* A complete header block in d->block: the next state, and whether it names a member. */
static enum tar_ev header(struct tar_dec *d)
{
	const uint8_t *b = d->block;
	if (all_zero(b)) {
		d->state = S_END;
		return TAR_END;
	}
	int64_t sum = get_num(b, F_CHKSUM), size = get_num(b, F_SIZE), mode = get_num(b, F_MODE),
		mtime = get_num(b, F_MTIME);
	if (sum < 0 || (sum != checksum(b, false) && sum != checksum(b, true)))
		return fail(d, "a header's checksum is wrong: not a tar archive, or a damaged one");
	if (size < 0 || mode < 0 || mtime < 0)
		return fail(d, "a header has a malformed number");
	char type = (char)b[O_TYPE];
	d->left = (uint64_t)size;
	d->pad = tar_padding((uint64_t)size);
	switch (type) {
	case 'L':
		if (size >= PATH_MAX)
			return fail(d, "a long name is PATH_MAX bytes or more");
		d->longname_len = 0;
		d->state = S_LONG;
		return TAR_NEED;
	case 'x':
		if ((uint64_t)size > TAR_PAX_MAX)
			return fail(d, "a pax header is over 64 KiB");
		free(d->pax);
		if (!(d->pax = malloc((size_t)size + 1)))
			return fail(d, "out of memory");
		d->pax_len = 0;
		d->state = S_PAX;
		return TAR_NEED;
	case 'g': case 'K':
		d->state = S_SKIP; /* global pax records and long link targets: nothing we use */
		return TAR_NEED;
	}
	struct tar_entry *e = &d->e;
	if (d->has_longname) {
		memcpy(e->name, d->longname, d->longname_len);
		e->name[d->longname_len] = 0;
	} else {
		size_t nlen = field_len(b, F_NAME), plen = 0;
		if (!memcmp(b + O_MAGIC, "ustar\0", 6))
			plen = field_len(b, F_PREFIX);
		if (plen) {
			memcpy(e->name, b + 345, plen);
			e->name[plen] = '/';
		}
		memcpy(e->name + plen + (plen ? 1 : 0), b, nlen);
		e->name[plen + (plen ? 1 : 0) + nlen] = 0;
	}
	if (d->pax && !d->has_longname)
		pax_path(d, e->name);
	free(d->pax);
	d->pax = NULL;
	d->has_longname = false;
	e->type = type == '\0' || type == '7' ? TAR_REG : type;
	e->mode = (uint32_t)mode & 07777;
	e->size = (uint64_t)size;
	e->mtime = mtime;
	d->state = size ? S_DATA : S_HDR;
	return TAR_ENTRY;
}

enum tar_ev tar_dec_feed(struct tar_dec *d, const uint8_t **p, size_t *n, const uint8_t **data, size_t *len)
{
	for (;;) {
		switch (d->state) {
		case S_ERR:
			return TAR_ERROR;
		case S_END:
			*p += *n; /* the zero blocks and record padding after them */
			*n = 0;
			return TAR_NEED;
		case S_HDR: {
			if (!*n)
				return TAR_NEED;
			size_t k = TAR_BLOCK - d->have < *n ? TAR_BLOCK - d->have : *n;
			memcpy(d->block + d->have, *p, k);
			d->have += k;
			*p += k;
			*n -= k;
			if (d->have < TAR_BLOCK)
				return TAR_NEED;
			d->have = 0;
			enum tar_ev ev = header(d);
			if (ev != TAR_NEED)
				return ev;
			break;
		}
		case S_PAD: {
			if (!d->pad) {
				d->state = S_HDR;
				break;
			}
			if (!*n)
				return TAR_NEED;
			size_t k = d->pad < *n ? (size_t)d->pad : *n;
			*p += k;
			*n -= k;
			d->pad -= k;
			break;
		}
		default: { /* content: the caller's, a long name, pax records or skipped */
			if (!d->left) {
				if (d->state == S_LONG) {
					d->longname_len = strnlen(d->longname, d->longname_len);
					d->has_longname = d->longname_len > 0;
				}
				d->state = S_PAD;
				break;
			}
			if (!*n)
				return TAR_NEED;
			size_t k = d->left < *n ? (size_t)d->left : *n;
			const uint8_t *piece = *p;
			*p += k;
			*n -= k;
			d->left -= k;
			if (d->state == S_DATA) {
				*data = piece;
				*len = k;
				if (!d->left)
					d->state = S_PAD;
				return TAR_DATA;
			}
			if (d->state == S_LONG) {
				memcpy(d->longname + d->longname_len, piece, k);
				d->longname_len += k;
			} else if (d->state == S_PAX) {
				memcpy(d->pax + d->pax_len, piece, k);
				d->pax_len += k;
				d->pax[d->pax_len] = 0;
			}
			break;
		}
		}
	}
}

int tar_clean_name(const char *name, char *out)
{
	if (name[0] == '/')
		return -EPERM;
	size_t len = 0;
	const char *p = name;
	while (*p) {
		const char *end = strchr(p, '/');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		if (n == 2 && p[0] == '.' && p[1] == '.') {
			if (!len)
				return -EPERM;
			while (len && out[len - 1] != '/')
				len--;
			if (len)
				len--; /* the '/' before the dropped component */
		} else if (n && !(n == 1 && p[0] == '.')) {
			if (len + (len ? 1 : 0) + n >= PATH_MAX)
				return -ENAMETOOLONG;
			if (len)
				out[len++] = '/';
			memcpy(out + len, p, n);
			len += n;
		}
		p += n;
		while (*p == '/')
			p++;
	}
	out[len] = 0;
	return len ? 0 : 1;
}
