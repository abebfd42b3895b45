/* The tar format as the Archive and Upload calls move it: a writer of ustar
 * headers (with a GNU long-name record for names over 100 bytes) and a streaming
 * reader that takes the bytes in any pieces, understands ustar, GNU long names
 * and pax "path" records, and hands out file content without copying it.
 * Names in an archive are untrusted: tar_clean_name() is the only way one
 * becomes a path. */
#ifndef MITOS_AGENT_TAR_H
#define MITOS_AGENT_TAR_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TAR_BLOCK 512
/* The most tar_header() writes: a long-name record, its name blocks, the header. */
#define TAR_HEADER_MAX (TAR_BLOCK + ((PATH_MAX + TAR_BLOCK - 1) / TAR_BLOCK) * TAR_BLOCK + TAR_BLOCK)
#define TAR_PAX_MAX (64u << 10)

#define TAR_REG '0'
#define TAR_DIR '5'

/* Writes the header block(s) of one member (type TAR_REG or TAR_DIR) into out
 * (TAR_HEADER_MAX bytes). Returns the bytes written, 0 if name is empty or
 * PATH_MAX long or more. */
size_t tar_header(uint8_t *out, const char *name, char type, uint32_t mode, uint64_t size, int64_t mtime);
/* Zero bytes that pad a member of size bytes to a whole block. */
size_t tar_padding(uint64_t size);

enum tar_ev {
	TAR_NEED,  /* all input used: feed more */
	TAR_ENTRY, /* d->e describes the next member; its content follows as TAR_DATA */
	TAR_DATA,  /* *data, *len: a piece of the current member's content */
	TAR_END,   /* the end-of-archive blocks */
	TAR_ERROR, /* d->err says why; the decoder stays in this state */
};

struct tar_entry {
	char name[PATH_MAX];
	char type;     /* TAR_REG (also for '\0' and '7'), TAR_DIR, or what the header says */
	uint32_t mode; /* permission bits */
	uint64_t size;
	int64_t mtime;
};

struct tar_dec {
	int state;
	uint8_t block[TAR_BLOCK];
	size_t have;
	uint64_t left, pad;
	char longname[PATH_MAX];
	size_t longname_len;
	bool has_longname;
	char *pax;
	size_t pax_len;
	struct tar_entry e;
	const char *err;
};

void tar_dec_init(struct tar_dec *d);
void tar_dec_free(struct tar_dec *d);
/* Consumes from *p and *n until an event; TAR_DATA points into the input. */
enum tar_ev tar_dec_feed(struct tar_dec *d, const uint8_t **p, size_t *n, const uint8_t **data, size_t *len);
/* True once the input may end here: after the end blocks, or between members
 * (some writers leave the end blocks out). */
bool tar_dec_complete(const struct tar_dec *d);

/* Turns an archive member name into a relative path with no ".", "..", empty or
 * trailing components, into out (PATH_MAX bytes). ".." may step back only inside
 * the name. Returns 0, 1 for the archive root itself ("." or "./"), or -EPERM for
 * an absolute name or one that leaves the root. */
int tar_clean_name(const char *name, char *out);

#endif
