#include "state_file.h"
#include "snapshot_open.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* On disk, little-endian (the only byte order KVM x86 state comes in):
 *   header:  magic[8] "MITOSST1", u32 version, u32 nsections, u64 payload_len, u32 crc32
 *            of the payload, u32 crc32 of the 28 header bytes before it
 *   payload: sections, each u32 type, u32 id, u64 len, then len bytes padded to 8 */
struct file_header {
	char magic[8];
	uint32_t version;
	uint32_t nsections;
	uint64_t payload_len;
	uint32_t payload_crc;
	uint32_t header_crc;
};
_Static_assert(sizeof(struct file_header) == 32, "packed by construction");

struct section_header {
	uint32_t type;
	uint32_t id;
	uint64_t len;
};

static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

void state_writer_init(struct state_writer *w)
{
	memset(w, 0, sizeof(*w));
}

void state_writer_free(struct state_writer *w)
{
	free(w->buf);
	memset(w, 0, sizeof(*w));
}

static int reserve(struct state_writer *w, size_t more)
{
	if (w->err)
		return w->err;
	if (w->len + more <= w->cap)
		return 0;
	size_t cap = w->cap ? w->cap : 64 * 1024;
	while (cap < w->len + more)
		cap *= 2;
	uint8_t *p = realloc(w->buf, cap);
	if (!p)
		return w->err = -ENOMEM;
	w->buf = p;
	w->cap = cap;
	return 0;
}

void state_add(struct state_writer *w, uint32_t type, uint32_t id, const void *data, size_t len)
{
	struct section_header h = { .type = type, .id = id, .len = len };
	if (reserve(w, sizeof(h) + pad8(len)))
		return;
	memcpy(w->buf + w->len, &h, sizeof(h));
	memcpy(w->buf + w->len + sizeof(h), data, len);
	memset(w->buf + w->len + sizeof(h) + len, 0, pad8(len) - len);
	w->len += sizeof(h) + pad8(len);
	w->nsections++;
}

static uint32_t crc(const void *p, size_t n)
{
	return (uint32_t)crc32(crc32(0L, Z_NULL, 0), p, (uInt)n);
}

static int write_all(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n) {
		ssize_t r = write(fd, b, n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		b += r;
		n -= (size_t)r;
	}
	return 0;
}

int state_file_write(const char *path, struct state_writer *w, struct mitos_err *e)
{
	if (w->err)
		return mitos_err_set(e, w->err, "%s: out of memory building the state", path);
	struct file_header h = { .version = STATE_FILE_VERSION, .nsections = w->nsections,
				 .payload_len = w->len, .payload_crc = crc(w->buf, w->len) };
	memcpy(h.magic, STATE_FILE_MAGIC, 8);
	h.header_crc = crc(&h, offsetof(struct file_header, header_crc));
	char tmp[4096];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return mitos_err_set(e, -ENAMETOOLONG, "%s: path too long", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
	if (fd < 0)
		return mitos_err_set(e, -errno, "%s: %s", tmp, strerror(errno));
	int r = write_all(fd, &h, sizeof(h));
	if (!r)
		r = write_all(fd, w->buf, w->len);
	if (!r && fsync(fd))
		r = -errno;
	close(fd);
	if (!r && rename(tmp, path))
		r = -errno;
	if (r) {
		unlink(tmp);
		return mitos_err_set(e, r, "%s: %s", path, strerror(-r));
	}
	return 0;
}

int state_blob_parse(const char *name, uint8_t *buf, size_t len, struct state_blob *b,
		     struct mitos_err *e)
{
	struct file_header h;
	if (len < sizeof(h))
		return mitos_err_set(e, -EINVAL, "%s: truncated (%zu bytes, the header alone is %zu)",
				     name, len, sizeof(h));
	memcpy(&h, buf, sizeof(h));
	if (memcmp(h.magic, STATE_FILE_MAGIC, 8))
		return mitos_err_set(e, -EINVAL, "%s: not a Mitos snapshot state file (bad magic)", name);
	if (h.header_crc != crc(&h, offsetof(struct file_header, header_crc)))
		return mitos_err_set(e, -EINVAL, "%s: header CRC mismatch: the file is corrupt", name);
	if (h.version != STATE_FILE_VERSION)
		return mitos_err_set(e, -EINVAL, "%s: format version %u, this mitos-vmm reads version %u",
				     name, h.version, STATE_FILE_VERSION);
	if (h.payload_len != len - sizeof(h))
		return mitos_err_set(e, -EINVAL, "%s: %s (header says %llu payload bytes, file has %zu)",
				     name, h.payload_len > len - sizeof(h) ? "truncated" : "trailing data",
				     (unsigned long long)h.payload_len, len - sizeof(h));
	uint8_t *p = buf + sizeof(h);
	size_t plen = len - sizeof(h);
	if (h.payload_crc != crc(p, plen))
		return mitos_err_set(e, -EINVAL, "%s: payload CRC mismatch: the file is corrupt", name);
	/* The CRC says the bytes are what was written; still walk every section so that a
	 * bug in the writer cannot make the reader step outside the buffer. */
	size_t off = 0;
	for (uint32_t i = 0; i < h.nsections; i++) {
		struct section_header s;
		if (plen - off < sizeof(s))
			return mitos_err_set(e, -EINVAL, "%s: section %u header past the end", name, i);
		memcpy(&s, p + off, sizeof(s));
		off += sizeof(s);
		if (s.len > plen - off || pad8(s.len) > plen - off)
			return mitos_err_set(e, -EINVAL, "%s: section %u (type %u) runs past the end",
					     name, i, s.type);
		off += pad8(s.len);
	}
	if (off != plen)
		return mitos_err_set(e, -EINVAL, "%s: %zu bytes after the last section", name, plen - off);
	b->buf = buf;
	b->len = len;
	b->nsections = h.nsections;
	return 0;
}

int state_file_read(const char *path, struct state_blob *b, struct mitos_err *e)
{
	memset(b, 0, sizeof(*b));
	int fd = snapshot_open_read(path);
	if (fd < 0)
		return mitos_err_set(e, fd, "%s: %s", path, fd == -EINVAL ? "not a regular file" : strerror(-fd));
	struct stat st;
	if (fstat(fd, &st)) {
		int r = -errno;
		close(fd);
		return mitos_err_set(e, r, "%s: %s", path, strerror(-r));
	}
	if (st.st_size > STATE_FILE_MAX) {
		close(fd);
		return mitos_err_set(e, -EFBIG, "%s: %lld bytes, more than any state file can be",
				     path, (long long)st.st_size);
	}
	size_t len = (size_t)st.st_size;
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf) {
		close(fd);
		return mitos_err_set(e, -ENOMEM, "%s: out of memory", path);
	}
	size_t got = 0;
	while (got < len) {
		ssize_t r = read(fd, buf + got, len - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	int r = state_blob_parse(path, buf, got, b, e);
	if (r)
		free(buf);
	return r;
}

void state_blob_free(struct state_blob *b)
{
	free(b->buf);
	memset(b, 0, sizeof(*b));
}

const void *state_find(const struct state_blob *b, uint32_t type, uint32_t id, size_t *len)
{
	size_t off = sizeof(struct file_header);
	for (uint32_t i = 0; i < b->nsections; i++) {
		struct section_header s;
		memcpy(&s, b->buf + off, sizeof(s));
		off += sizeof(s);
		if (s.type == type && s.id == id) {
			*len = s.len;
			return b->buf + off;
		}
		off += pad8(s.len);
	}
	return NULL;
}

int state_get(const struct state_blob *b, const char *name, uint32_t type, uint32_t id,
	      void *dst, size_t len, struct mitos_err *e)
{
	size_t have;
	const void *p = state_find(b, type, id, &have);
	if (!p)
		return mitos_err_set(e, -ENOENT, "state file lacks %s (section %u.%u)", name, type, id);
	if (have != len)
		return mitos_err_set(e, -EINVAL, "state file: %s is %zu bytes, expected %zu "
				     "(snapshot from another mitos-vmm or kernel?)", name, have, len);
	memcpy(dst, p, len);
	return 0;
}
