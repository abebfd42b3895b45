/* Snapshot file formats: the state file, the memory extents, config.json and layer
 * chains, against every truncation and corruption, plus the pagemap-based dirty page
 * scan and copy-on-write chain mapping on real memory. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "snapshot/memory_file.h"
#include "snapshot/snapshot_config.h"
#include "snapshot/state_file.h"
#include "vmm/device_state.h"

static char tmpdir[256];

static void setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/mitos-snapfiles-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
}

static uint8_t *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	struct stat st;
	fstat(fd, &st);
	uint8_t *buf = malloc((size_t)st.st_size + 1);
	ck_assert_int_eq(read(fd, buf, (size_t)st.st_size), st.st_size);
	close(fd);
	*len = (size_t)st.st_size;
	return buf;
}

/* ---- state file ---------------------------------------------------------------------- */

static uint8_t *sample_state(size_t *len)
{
	struct state_writer w;
	state_writer_init(&w);
	uint64_t regs[18];
	for (int i = 0; i < 18; i++)
		regs[i] = 0x1111111111111111ULL * (uint64_t)i;
	state_add(&w, 18, 0, regs, sizeof(regs));
	state_add(&w, 18, 1, "odd", 3);   /* exercises padding */
	state_add(&w, 48, 0, "", 0);
	char path[300];
	snprintf(path, sizeof(path), "%s/state", tmpdir);
	struct mitos_err e = { 0 };
	ck_assert_int_eq(state_file_write(path, &w, &e), 0);
	state_writer_free(&w);
	return read_file(path, len);
}

START_TEST(state_round_trip)
{
	size_t len;
	uint8_t *buf = sample_state(&len);
	struct state_blob b;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(state_blob_parse("state", buf, len, &b, &e), 0);
	ck_assert_uint_eq(b.nsections, 3);
	uint64_t regs[18];
	ck_assert_int_eq(state_get(&b, "regs", 18, 0, regs, sizeof(regs), &e), 0);
	ck_assert_uint_eq(regs[17], 0x1111111111111111ULL * 17);
	size_t n;
	const char *odd = state_find(&b, 18, 1, &n);
	ck_assert_uint_eq(n, 3);
	ck_assert_int_eq(memcmp(odd, "odd", 3), 0);
	ck_assert_int_eq(state_get(&b, "regs", 18, 1, regs, sizeof(regs), &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "regs"));
	ck_assert_int_eq(state_get(&b, "lapic", 25, 0, regs, 8, &e), -ENOENT);
	ck_assert_ptr_null(state_find(&b, 99, 0, &n));
	free(buf);
}
END_TEST

/* Device sections are taken only for the device they were saved from, in a layout
 * this build reads. */
START_TEST(device_sections_carry_identity_and_layout)
{
	const struct dev_identity blk = { .kind = 2, .base = 0xd0000000, .irq = 5 };
	struct state_writer w;
	state_writer_init(&w);
	dev_state_add(&w, 49, 0, &blk, 1, "queue state", 11);
	dev_state_add(&w, 50, 0, &blk, 3, "newer", 5);
	dev_state_add(&w, 50, 1, &blk, 1, "", 0);
	state_add(&w, 49, 1, "short", 5);
	char path[300];
	snprintf(path, sizeof(path), "%s/state", tmpdir);
	struct mitos_err e = { 0 };
	ck_assert_int_eq(state_file_write(path, &w, &e), 0);
	state_writer_free(&w);
	size_t len;
	uint8_t *buf = read_file(path, &len);
	struct state_blob b;
	ck_assert_int_eq(state_blob_parse("state", buf, len, &b, &e), 0);
	const void *p;
	size_t n;
	uint32_t v;
	ck_assert_int_eq(dev_state_get(&b, "disk", 49, 0, &blk, 1, false, &p, &n, &v, &e), 0);
	ck_assert_uint_eq(n, 11);
	ck_assert_uint_eq(v, 1);
	ck_assert_int_eq(memcmp(p, "queue state", 11), 0);
	/* Another device in that place, or the same kind elsewhere: refused, named. */
	const struct dev_identity vsock = { .kind = 19, .base = 0xd0000000, .irq = 5 };
	const struct dev_identity moved = { .kind = 2, .base = 0xd0001000, .irq = 6 };
	ck_assert_int_eq(dev_state_get(&b, "vsock", 49, 0, &vsock, 1, false, &p, &n, &v, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "other devices"));
	ck_assert_int_eq(dev_state_get(&b, "disk", 49, 0, &moved, 1, false, &p, &n, &v, &e), -EINVAL);
	/* A layout from a newer build. */
	ck_assert_int_eq(dev_state_get(&b, "disk", 50, 0, &blk, 2, true, &p, &n, &v, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "layout 3"));
	ck_assert_int_eq(dev_state_get(&b, "disk", 50, 0, &blk, 3, true, &p, &n, &v, &e), 0);
	ck_assert_uint_eq(v, 3);
	/* Empty payload; missing optional; missing required; shorter than a header. */
	ck_assert_int_eq(dev_state_get(&b, "disk", 50, 1, &blk, 1, false, &p, &n, &v, &e), 0);
	ck_assert_uint_eq(n, 0);
	ck_assert_int_eq(dev_state_get(&b, "disk", 50, 7, &blk, 1, true, &p, &n, &v, &e), 0);
	ck_assert_ptr_null(p);
	ck_assert_int_eq(dev_state_get(&b, "disk", 50, 7, &blk, 1, false, &p, &n, &v, &e), -ENOENT);
	ck_assert_int_eq(dev_state_get(&b, "disk", 49, 1, &blk, 1, false, &p, &n, &v, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "shorter than its header"));
	state_blob_free(&b);
}
END_TEST

START_TEST(state_every_truncation_fails)
{
	size_t len;
	uint8_t *buf = sample_state(&len);
	for (size_t cut = 0; cut < len; cut++) {
		uint8_t *copy = malloc(cut + 1);
		memcpy(copy, buf, cut);
		struct state_blob b;
		struct mitos_err e = { 0 };
		ck_assert_int_eq(state_blob_parse("state", copy, cut, &b, &e), -EINVAL);
		ck_assert_ptr_nonnull(strstr(e.msg, "state"));
		free(copy);
	}
	free(buf);
}
END_TEST

START_TEST(state_every_flipped_byte_fails)
{
	size_t len;
	uint8_t *buf = sample_state(&len);
	for (size_t i = 0; i < len; i++) {
		buf[i] ^= 0x5a;
		struct state_blob b;
		struct mitos_err e = { 0 };
		ck_assert_int_eq(state_blob_parse("state", buf, len, &b, &e), -EINVAL);
		buf[i] ^= 0x5a;
	}
	free(buf);
}
END_TEST

/* A file whose CRCs are right but whose content is wrong: the reader must still refuse. */
static void fix_crcs(uint8_t *buf, size_t len)
{
	uint32_t pc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf + 32, (uInt)(len - 32));
	memcpy(buf + 24, &pc, 4);
	uint32_t hc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, 28);
	memcpy(buf + 28, &hc, 4);
}

START_TEST(state_wrong_version_is_named)
{
	size_t len;
	uint8_t *buf = sample_state(&len);
	uint32_t v = STATE_FILE_VERSION + 1;
	memcpy(buf + 8, &v, 4);
	fix_crcs(buf, len);
	struct state_blob b;
	struct mitos_err e = { 0 };
	char want[32];
	snprintf(want, sizeof(want), "version %u", v);
	ck_assert_int_eq(state_blob_parse("state", buf, len, &b, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, want));
	free(buf);
}
END_TEST

START_TEST(state_section_length_overflow)
{
	size_t len;
	uint8_t *buf = sample_state(&len);
	uint64_t huge = UINT64_MAX - 3;
	memcpy(buf + 32 + 8, &huge, 8);   /* first section's length */
	fix_crcs(buf, len);
	struct state_blob b;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(state_blob_parse("state", buf, len, &b, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "past the end"));
	uint32_t many = 1000;
	free(buf);
	buf = sample_state(&len);
	memcpy(buf + 12, &many, 4);       /* more sections than there are */
	fix_crcs(buf, len);
	ck_assert_int_eq(state_blob_parse("state", buf, len, &b, &e), -EINVAL);
	free(buf);
}
END_TEST

START_TEST(state_missing_file)
{
	struct state_blob b;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(state_file_read("/nonexistent/state", &b, &e), -ENOENT);
	ck_assert_ptr_nonnull(strstr(e.msg, "/nonexistent/state"));
}
END_TEST

/* ---- memory -------------------------------------------------------------------------- */

#define MEM (1 << 20)

START_TEST(dirty_extents_follow_writes)
{
	struct guest_mem m;
	ck_assert_int_eq(guest_mem_alloc(&m, MEM), 0);
	m.base[0] = 1;
	m.base[5 * 4096] = 1;
	m.base[6 * 4096 + 100] = 1;
	m.base[200 * 4096] = 1;
	struct mem_extents x;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(memory_dirty_extents(&m, &x, &e), 0);
	ck_assert_uint_eq(x.n, 3);
	ck_assert_uint_eq(x.e[0].first_page, 0);
	ck_assert_uint_eq(x.e[0].npages, 1);
	ck_assert_uint_eq(x.e[1].first_page, 5);
	ck_assert_uint_eq(x.e[1].npages, 2);
	ck_assert_uint_eq(x.e[2].first_page, 200);
	memory_extents_free(&x);
	guest_mem_free(&m);
}
END_TEST

static void write_snapshot_memory(const char *dir, struct guest_mem *m)
{
	struct mem_extents x;
	struct mitos_err e = { 0 };
	mkdir(dir, 0755);
	ck_assert_int_eq(memory_dirty_extents(m, &x, &e), 0);
	ck_assert_int_eq(memory_file_write(dir, m, &x, &e), 0);
	memory_extents_free(&x);
}

START_TEST(chain_maps_copy_on_write)
{
	char base[300], layer[300], path[320];
	snprintf(base, sizeof(base), "%s/base", tmpdir);
	snprintf(layer, sizeof(layer), "%s/layer", tmpdir);
	struct guest_mem m;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(guest_mem_alloc(&m, MEM), 0);
	memset(m.base, 'b', 3 * 4096);
	write_snapshot_memory(base, &m);
	guest_mem_free(&m);

	/* A "restored VM" writes page 1 and page 100; its layer holds exactly those. */
	char *chain[2] = { base, layer };
	ck_assert_int_eq(memory_map_chain(&m, NULL, MEM, chain, 1, &e), 0);
	ck_assert_uint_eq(m.base[4096], 'b');
	m.base[4096] = 'L';
	m.base[100 * 4096] = 'L';
	struct mem_extents x;
	ck_assert_int_eq(memory_dirty_extents(&m, &x, &e), 0);
	ck_assert_uint_eq(x.n, 2);
	ck_assert_uint_eq(x.e[0].first_page, 1);
	ck_assert_uint_eq(x.e[1].first_page, 100);
	mkdir(layer, 0755);
	ck_assert_int_eq(memory_file_write(layer, &m, &x, &e), 0);
	memory_extents_free(&x);
	guest_mem_free(&m);

	ck_assert_int_eq(memory_map_chain(&m, NULL, MEM, chain, 2, &e), 0);
	ck_assert_uint_eq(m.base[0], 'b');
	ck_assert_uint_eq(m.base[4096], 'L');
	ck_assert_uint_eq(m.base[2 * 4096], 'b');
	ck_assert_uint_eq(m.base[100 * 4096], 'L');
	ck_assert_uint_eq(m.base[50 * 4096], 0);
	m.base[0] = 'x';   /* private: the files must not change */
	guest_mem_free(&m);
	snprintf(path, sizeof(path), "%s/memory", base);
	size_t len;
	uint8_t *f = read_file(path, &len);
	ck_assert_uint_eq(len, MEM);
	ck_assert_uint_eq(f[0], 'b');
	free(f);

	ck_assert_int_eq(memory_map_chain(&m, NULL, MEM * 2, chain, 2, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "memory"));

	/* The layer's 2 extents split the base: up to 5 mappings. A host that allows
	 * fewer is told so before anything is mapped, not by a failed mmap halfway. */
	snprintf(path, sizeof(path), "%s/%s", layer, MEMORY_EXTENTS_NAME);
	ck_assert_int_eq(memory_extents_read(path, &x, &e), 0);
	ck_assert_int_eq(memory_chain_fits(layer, &x, 1, 5, &e), 0);
	ck_assert_int_eq(memory_chain_fits(layer, &x, 1, 4, &e), -E2BIG);
	ck_assert_msg(strstr(e.msg, "vm.max_map_count") && strstr(e.msg, "2 memory extents"), "%s", e.msg);
	ck_assert_int_eq(memory_chain_fits(base, NULL, 0, 1, &e), 0);
	memory_extents_free(&x);
}
END_TEST

static uint8_t *sample_extents(size_t *len)
{
	char dir[300], path[320];
	snprintf(dir, sizeof(dir), "%s/ext", tmpdir);
	struct guest_mem m;
	ck_assert_int_eq(guest_mem_alloc(&m, MEM), 0);
	m.base[0] = m.base[10 * 4096] = m.base[11 * 4096] = 1;
	write_snapshot_memory(dir, &m);
	guest_mem_free(&m);
	snprintf(path, sizeof(path), "%s/%s", dir, MEMORY_EXTENTS_NAME);
	return read_file(path, len);
}

START_TEST(extents_round_trip_and_corruption)
{
	size_t len;
	uint8_t *buf = sample_extents(&len);
	struct mem_extents x;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(memory_extents_parse("ext", buf, len, &x, &e), 0);
	ck_assert_uint_eq(x.n, 2);
	memory_extents_free(&x);
	for (size_t cut = 0; cut < len; cut++)
		ck_assert_int_eq(memory_extents_parse("ext", buf, cut, &x, &e), -EINVAL);
	for (size_t i = 0; i < len; i++) {
		buf[i] ^= 0x81;
		ck_assert_int_eq(memory_extents_parse("ext", buf, len, &x, &e), -EINVAL);
		buf[i] ^= 0x81;
	}
	free(buf);
}
END_TEST

/* A layer of a VM that wrote nothing since its restore: no extents, and readable. */
START_TEST(extents_empty_layer_reads_back)
{
	char dir[300], path[320];
	snprintf(dir, sizeof(dir), "%s/empty", tmpdir);
	struct guest_mem m;
	ck_assert_int_eq(guest_mem_alloc(&m, MEM), 0);
	write_snapshot_memory(dir, &m);
	guest_mem_free(&m);
	snprintf(path, sizeof(path), "%s/%s", dir, MEMORY_EXTENTS_NAME);
	struct mem_extents x;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(memory_extents_read(path, &x, &e), 0);
	ck_assert_uint_eq(x.n, 0);
	ck_assert_uint_eq(x.mem_size, MEM);
	memory_extents_free(&x);
}
END_TEST

static void fix_extents_crc(uint8_t *buf, size_t len)
{
	uint32_t c = (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, (uInt)(len - 4));
	memcpy(buf + len - 4, &c, 4);
}

START_TEST(extents_out_of_order_or_outside_ram)
{
	size_t len;
	uint8_t *buf = sample_extents(&len);
	struct mem_extents x;
	struct mitos_err e = { 0 };
	uint64_t *ex = (uint64_t *)(buf + 40);   /* {first, n} pairs after the header */
	uint64_t saved = ex[2];
	ex[2] = 0;                               /* second extent now overlaps the first */
	fix_extents_crc(buf, len);
	ck_assert_int_eq(memory_extents_parse("ext", buf, len, &x, &e), -EINVAL);
	ex[2] = saved;
	ex[3] = UINT64_MAX;                      /* runs past the end of RAM, overflowing */
	fix_extents_crc(buf, len);
	ck_assert_int_eq(memory_extents_parse("ext", buf, len, &x, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "outside RAM"));
	free(buf);
}
END_TEST

/* ---- config and chains --------------------------------------------------------------- */

static void write_config(const char *dir, unsigned depth, const char *parent, uint64_t mem)
{
	mkdir(dir, 0755);
	struct snapshot_config c = { .mem_bytes = mem, .vcpus = 1, .cmdline = "x", .depth = depth,
				     .parent = (char *)parent };
	char path[320];
	snprintf(path, sizeof(path), "%s/config.json", dir);
	chmod(path, 0644);
	unlink(path);
	struct mitos_err e = { 0 };
	ck_assert_int_eq(snapshot_config_write(dir, &c, &e), 0);
}

START_TEST(config_parse_rejects_bad_input)
{
	struct snapshot_config c;
	struct mitos_err e = { 0 };
	static const char *bad[] = {
		"", "{", "[]", "{\"format\":1}",
		"{\"format\":2,\"mem_bytes\":4096,\"vcpus\":1,\"depth\":0,\"cmdline\":\"\",\"disks\":[],\"parent\":null}",
		"{\"format\":1,\"mem_bytes\":4097,\"vcpus\":1,\"depth\":0,\"cmdline\":\"\",\"disks\":[],\"parent\":null}",
		"{\"format\":1,\"mem_bytes\":4096,\"vcpus\":0,\"depth\":0,\"cmdline\":\"\",\"disks\":[],\"parent\":null}",
		"{\"format\":1,\"mem_bytes\":4096,\"vcpus\":1,\"depth\":1,\"cmdline\":\"\",\"disks\":[],\"parent\":\"rel\"}",
		"{\"format\":1,\"mem_bytes\":4096,\"vcpus\":1,\"depth\":1,\"cmdline\":\"\",\"disks\":[],\"parent\":null}",
		"{\"format\":1,\"mem_bytes\":4096,\"vcpus\":1,\"depth\":0,\"cmdline\":\"\",\"disks\":[{\"path\":\"/x\"}],\"parent\":null}",
		"{\"format\":1,\"mem_bytes\":-4096,\"vcpus\":1,\"depth\":0,\"cmdline\":\"\",\"disks\":[],\"parent\":null}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(snapshot_config_parse("cfg", bad[i], &c, &e) == -EINVAL, "accepted: %s", bad[i]);
	ck_assert_int_eq(snapshot_config_parse("cfg",
		"{\"format\":1,\"mem_bytes\":8192,\"vcpus\":2,\"depth\":0,\"cmdline\":\"c\","
		"\"disks\":[{\"path\":\"/d\",\"read_only\":true,\"bytes\":512}],\"vsock\":{\"cid\":3},"
		"\"parent\":null}", &c, &e), 0);
	ck_assert_uint_eq(c.ndisks, 1);
	ck_assert(c.disks[0].read_only);
	ck_assert(c.has_vsock);
	snapshot_config_free(&c);
}
END_TEST

START_TEST(chain_resolves_and_rejects_loops)
{
	char a[300], b[300], c[300];
	snprintf(a, sizeof(a), "%s/a", tmpdir);
	snprintf(b, sizeof(b), "%s/b", tmpdir);
	snprintf(c, sizeof(c), "%s/c", tmpdir);
	write_config(a, 0, NULL, MEM);
	write_config(b, 1, a, MEM);
	write_config(c, 2, b, MEM);
	char **dirs;
	unsigned n;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(snapshot_chain(c, &dirs, &n, &e), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_str_eq(dirs[0], a);
	ck_assert_str_eq(dirs[2], c);
	snapshot_chain_free(dirs, n);

	write_config(a, 2, c, MEM);   /* a -> c -> b -> a: a loop */
	ck_assert_int_eq(snapshot_chain(c, &dirs, &n, &e), -EINVAL);
	write_config(a, 0, NULL, MEM * 2);  /* parent with other RAM */
	ck_assert_int_eq(snapshot_chain(c, &dirs, &n, &e), -EINVAL);
	ck_assert_int_eq(snapshot_chain("/nonexistent", &dirs, &n, &e), -ENOENT);
}
END_TEST

/* A FIFO or a device where a snapshot's file should be: refused at once, never waited
 * on (a FIFO blocked restore forever). The test's own timeout catches a hang. */
START_TEST(special_files_are_refused_at_once)
{
	static const char *const names[] = { "state", "memory.extents", SNAPSHOT_CONFIG_NAME };
	char path[300];
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", tmpdir, names[i]);
		ck_assert_int_eq(mkfifo(path, 0600), 0);
	}
	struct mitos_err e = { 0 };
	struct state_blob b;
	snprintf(path, sizeof(path), "%s/state", tmpdir);
	ck_assert_int_eq(state_file_read(path, &b, &e), -EINVAL);
	ck_assert(strstr(e.msg, "not a regular file"));
	struct mem_extents x;
	snprintf(path, sizeof(path), "%s/memory.extents", tmpdir);
	ck_assert_int_eq(memory_extents_read(path, &x, &e), -EINVAL);
	struct snapshot_config c;
	ck_assert_int_eq(snapshot_config_read(tmpdir, &c, &e), -EINVAL);
	ck_assert_int_eq(state_file_read("/dev/zero", &b, &e), -EINVAL);
}
END_TEST

/* The completion marker appears whole or not at all: no temporary file is left. */
START_TEST(config_lands_whole)
{
	struct snapshot_config c = { .mem_bytes = 1 << 20, .vcpus = 1 };
	struct mitos_err e = { 0 };
	ck_assert_int_eq(snapshot_config_write(tmpdir, &c, &e), 0);
	char path[300];
	snprintf(path, sizeof(path), "%s/%s.tmp", tmpdir, SNAPSHOT_CONFIG_NAME);
	ck_assert_int_ne(access(path, F_OK), 0);
	struct snapshot_config back;
	ck_assert_int_eq(snapshot_config_read(tmpdir, &back, &e), 0);
	ck_assert_uint_eq(back.mem_bytes, 1 << 20);
	snapshot_config_free(&back);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("snapshot_files");
	TCase *tc = tcase_create("formats");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, state_round_trip);
	tcase_add_test(tc, device_sections_carry_identity_and_layout);
	tcase_add_test(tc, state_every_truncation_fails);
	tcase_add_test(tc, state_every_flipped_byte_fails);
	tcase_add_test(tc, state_wrong_version_is_named);
	tcase_add_test(tc, state_section_length_overflow);
	tcase_add_test(tc, state_missing_file);
	tcase_add_test(tc, dirty_extents_follow_writes);
	tcase_add_test(tc, chain_maps_copy_on_write);
	tcase_add_test(tc, extents_round_trip_and_corruption);
	tcase_add_test(tc, extents_empty_layer_reads_back);
	tcase_add_test(tc, extents_out_of_order_or_outside_ram);
	tcase_add_test(tc, config_parse_rejects_bad_input);
	tcase_add_test(tc, chain_resolves_and_rejects_loops);
	tcase_add_test(tc, special_files_are_refused_at_once);
	tcase_add_test(tc, config_lands_whole);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
