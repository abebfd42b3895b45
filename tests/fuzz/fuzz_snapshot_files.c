/* Fuzz target: the files of a snapshot directory as restore reads them (the input's
 * first byte picks one): the state file (snapshot/state_file.c, then every section
 * looked up the way restore does), memory.extents (snapshot/memory_file.c) and
 * config.json (snapshot/snapshot_config.c). With the first byte's top bit set, the
 * CRCs (and the state file's payload length) are made right after mutation, so the
 * inputs reach the checks behind them: the CRC says a file is intact, not that its
 * writer was ours. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "snapshot/memory_file.h"
#include "snapshot/snapshot_config.h"
#include "snapshot/state_file.h"
#include "vmm/device_state.h"
#include "tests/fuzz/fuzz.h"
#include <zlib.h>

#define STATE_HEADER 32 /* magic, version, nsections, payload_len, payload CRC, header CRC */

static uint32_t crc(const uint8_t *p, size_t n)
{
	return (uint32_t)crc32(crc32(0L, Z_NULL, 0), p, (uInt)n);
}

static void fix_state(uint8_t *buf, size_t len)
{
	if (len < STATE_HEADER)
		return;
	uint64_t plen = len - STATE_HEADER;
	memcpy(buf + 16, &plen, 8);
	uint32_t c = crc(buf + STATE_HEADER, len - STATE_HEADER);
	memcpy(buf + 24, &c, 4);
	c = crc(buf, 28);
	memcpy(buf + 28, &c, 4);
}

static void fix_extents(uint8_t *buf, size_t len)
{
	if (len < 4)
		return;
	uint32_t c = crc(buf, len - 4);
	memcpy(buf + len - 4, &c, 4);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t which = (data[0] & 0x7f) % 3;
	int fix = data[0] & 0x80;
	data++;
	size--;
	struct mitos_err e = { 0 };
	if (which == 0) {
		/* The parser validates in place and keeps the buffer: give it its own copy. */
		uint8_t *buf = malloc(size ? size : 1);
		if (!buf)
			return 0;
		memcpy(buf, data, size);
		if (fix)
			fix_state(buf, size);
		struct state_blob b;
		if (state_blob_parse("state", buf, size, &b, &e) == 0) {
			static const uint32_t types[] = { SS_VM_CLOCK, SS_VM_IRQCHIP, SS_VCPU_REGS, SS_VCPU_XSAVE,
							  SS_VCPU_MSRS, SS_DEV_SERIAL, SS_DEV_VIRTIO_TRANSPORT,
							  SS_DEV_VIRTIO_DEVICE };
			uint8_t dst[64];
			for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
				size_t len;
				const uint8_t *p = state_find(&b, types[i], 0, &len);
				for (size_t k = 0; p && k < len; k++)
					dst[k % sizeof(dst)] ^= p[k];
				state_get(&b, "state", types[i], 0, dst, sizeof(dst), &e);
			}
			/* Device sections: identity and layout checked before the payload is used. */
			static const struct dev_identity who = { .kind = DEV_KIND_SERIAL, .base = 0x3f8, .irq = 4 };
			for (uint32_t t = SS_DEV_SERIAL; t <= SS_DEV_VIRTIO_DEVICE; t++) {
				const void *payload;
				size_t len;
				uint32_t version;
				if (dev_state_get(&b, "device", t, 0, &who, 2, t != SS_DEV_SERIAL, &payload, &len, &version,
						  &e) == 0 && payload)
					for (size_t k = 0; k < len; k++)
						dst[k % sizeof(dst)] ^= ((const uint8_t *)payload)[k];
			}
			state_blob_free(&b);
		} else {
			free(buf);
		}
	} else if (which == 1) {
		uint8_t *buf = malloc(size ? size : 1);
		if (!buf)
			return 0;
		memcpy(buf, data, size);
		if (fix)
			fix_extents(buf, size);
		struct mem_extents x;
		if (memory_extents_parse("memory.extents", buf, size, &x, &e) == 0)
			memory_extents_free(&x);
		free(buf);
	} else {
		char *text = malloc(size + 1);
		if (!text)
			return 0;
		memcpy(text, data, size);
		text[size] = 0;
		struct snapshot_config c;
		if (snapshot_config_parse("config.json", text, &c, &e) == 0)
			snapshot_config_free(&c);
		free(text);
	}
	return 0;
}

/* A file the project's own writers made, with the selector byte in front. */
static void add_file(void (*add)(const void *p, size_t n), uint8_t which, const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return;
	static uint8_t buf[1u << 20];
	buf[0] = which;
	size_t n = fread(buf + 1, 1, sizeof(buf) - 1, f);
	fclose(f);
	add(buf, n + 1);
}

void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	char dir[] = "/tmp/mitos-fuzz-snap-XXXXXX", path[256];
	if (!mkdtemp(dir))
		return;
	struct mitos_err e = { 0 };
	struct state_writer w;
	state_writer_init(&w);
	uint8_t regs[144] = { 1, 2, 3 }, serial[32] = { 4 };
	state_add(&w, SS_VCPU_REGS, 0, regs, sizeof(regs));
	state_add(&w, SS_VCPU_REGS, 1, regs, sizeof(regs));
	dev_state_add(&w, SS_DEV_SERIAL, 0, &(struct dev_identity){ .kind = DEV_KIND_SERIAL, .base = 0x3f8, .irq = 4 },
		      1, serial, sizeof(serial));
	snprintf(path, sizeof(path), "%s/state", dir);
	if (state_file_write(path, &w, &e) == 0) {
		add_file(add, 0, path);
		add_file(add, 0x80, path);
	}
	state_writer_free(&w);
	struct guest_mem m;
	if (guest_mem_alloc(&m, 1u << 20) == 0) {
		memset(m.base, 0x5a, 3 * MEMORY_PAGE);
		memset(m.base + 9 * MEMORY_PAGE, 0xa5, MEMORY_PAGE);
		struct mem_extents x;
		if (memory_dirty_extents(&m, &x, &e) == 0) {
			if (memory_file_write(dir, &m, &x, &e) == 0) {
				snprintf(path, sizeof(path), "%s/%s", dir, MEMORY_EXTENTS_NAME);
				add_file(add, 1, path);
				add_file(add, 0x81, path);
			}
			memory_extents_free(&x);
		}
		guest_mem_free(&m);
	}
	struct snapshot_config c = { .mem_bytes = 256u << 20, .vcpus = 2, .cmdline = "console=ttyS0",
				     .ndisks = 1, .disks = { { .path = "/var/lib/disk.ext4", .read_only = true,
							       .bytes = 1u << 30 } },
				     .has_vsock = true, .vsock_cid = 3, .parent = "/var/lib/base", .depth = 1 };
	if (snapshot_config_write(dir, &c, &e) == 0) {
		snprintf(path, sizeof(path), "%s/%s", dir, SNAPSHOT_CONFIG_NAME);
		add_file(add, 2, path);
	}
	const char *names[] = { "state", MEMORY_FILE_NAME, MEMORY_EXTENTS_NAME, SNAPSHOT_CONFIG_NAME };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}
