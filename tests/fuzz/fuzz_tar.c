/* Fuzz target: a tar stream as Upload hands it to the agent (agent/tar.c), in
 * pieces, and every member name through tar_clean_name(), whose result must never
 * be absolute or step up. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/tar.h"
#include "tests/fuzz/fuzz.h"

static void check_clean(const char *name)
{
	static char out[PATH_MAX];
	int rc = tar_clean_name(name, out);
	if (rc)
		return;
	assert(out[0] && out[0] != '/');
	for (const char *p = out; p;) {
		assert(strncmp(p, "../", 3) && strcmp(p, "..") && strncmp(p, "./", 2) && strcmp(p, "."));
		p = strchr(p, '/');
		if (p) {
			assert(p[1] && p[1] != '/');
			p++;
		}
	}
}

/* Mutations nearly always break a header's checksum; half the inputs get every
 * block's checksum made right, so the reader's later stages are reached too. */
static void fix_checksums(uint8_t *p, size_t n)
{
	for (size_t off = 0; off + TAR_BLOCK <= n; off += TAR_BLOCK) {
		uint8_t *b = p + off;
		unsigned sum = 0;
		memset(b + 148, ' ', 8);
		for (size_t i = 0; i < TAR_BLOCK; i++)
			sum += b[i];
		char txt[8];
		snprintf(txt, sizeof(txt), "%06o", sum & 0777777);
		memcpy(b + 148, txt, 6);
		b[154] = 0;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *raw, size_t size)
{
	if (size < 1)
		return 0;
	size_t piece = 1 + (size_t)(raw[0] & 0x7f) * 7;
	bool fix = raw[0] & 0x80;
	uint8_t *data = malloc(size);
	if (!data)
		return 0;
	memcpy(data, raw + 1, --size);
	if (fix)
		fix_checksums(data, size);
	struct tar_dec d;
	tar_dec_init(&d);
	uint64_t content = 0;
	for (size_t off = 0; off < size;) {
		size_t k = size - off < piece ? size - off : piece;
		const uint8_t *p = data + off;
		size_t left = k;
		while (left) {
			const uint8_t *bytes;
			size_t n;
			enum tar_ev ev = tar_dec_feed(&d, &p, &left, &bytes, &n);
			if (ev == TAR_ERROR)
				goto out;
			if (ev == TAR_ENTRY) {
				assert(strlen(d.e.name) < PATH_MAX);
				check_clean(d.e.name);
				content = d.e.size;
			}
			if (ev == TAR_DATA) {
				assert(n && n <= content && bytes >= data && bytes + n <= data + size);
				content -= n;
			}
		}
		off += k;
	}
out:
	tar_dec_free(&d);
	free(data);
	return 0;
}

/* A header and content as the agent writes them, and a GNU long-name record. */
void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	static uint8_t buf[1 + 3 * TAR_HEADER_MAX];
	char name[300];
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = 0;
	buf[0] = 0x83;
	size_t off = 1 + tar_header(buf + 1, "dir/file.txt", TAR_REG, 0644, 5, 0);
	memcpy(buf + off, "hello", 5);
	off += 5 + tar_padding(5);
	add(buf, off);
	off = 1 + tar_header(buf + 1, name, TAR_DIR, 0755, 0, 0);
	add(buf, off);
}
