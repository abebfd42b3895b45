/* File operations: streamed read/write (binary, 100 MiB), metadata, errors. */
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_test.h"

static char dir[64];

static void make_dir(void)
{
	snprintf(dir, sizeof(dir), "/tmp/mitos-agent-files-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void remove_dir(void)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* Writes path with E2B metadata (a JSON object, NULL for none) and returns the error
 * code of the write's end ("" when it worked) in code. */
static void write_meta(struct ac *c, const char *path, const char *meta, const void *p, size_t n, char *code,
		       size_t len)
{
	char req[8192];
	struct ac_result r;
	uint32_t id = ac_new_id(c);
	snprintf(req, sizeof(req), "{\"op\":\"write\",\"path\":\"%s\"%s%s}", path, meta ? ",\"metadata\":" : "",
		 meta ? meta : "");
	ac_open(c, id, req);
	/* A refused write ends before its data is taken. */
	ac_write_data(c, id, p, n, true, T_LONG);
	ck_assert_int_eq(ac_collect(c, id, &r, T_LONG), 0);
	cJSON *j = end_json(&r);
	snprintf(code, len, "%s", end_error_code(j));
	if (!*code)
		ck_assert_int_eq(json_int(j, "bytes"), (int)n);
	cJSON_Delete(j);
	ac_result_free(&r);
}

static void write_file(struct ac *c, const char *path, const void *p, size_t n)
{
	char code[64];
	write_meta(c, path, NULL, p, n, code, sizeof(code));
	ck_assert_msg(!*code, "write of %s failed: %s", path, code);
}

START_TEST(files_binary_roundtrip)
{
	struct ac c;
	struct ac_result r;
	char path[128], req[256];
	static const char data[] = "a\0b\0\0\xff\xfe\n\r end";
	make_dir();
	agent_up(&c);
	snprintf(path, sizeof(path), "%s/sub/dir/nul.bin", dir); /* parents are created */
	write_file(&c, path, data, sizeof(data));
	snprintf(req, sizeof(req), "{\"op\":\"read\",\"path\":\"%s\"}", path);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_uint_eq(r.ch[0].len, sizeof(data));
	ck_assert_int_eq(memcmp(r.ch[0].p, data, sizeof(data)), 0);
	ck_assert(r.fin[0]);
	ck_assert_ptr_nonnull(strstr((char *)r.events.p, "\"size\":"));
	ac_result_free(&r);
	/* offset + length */
	snprintf(req, sizeof(req), "{\"op\":\"read\",\"path\":\"%s\",\"offset\":2,\"length\":3}", path);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_uint_eq(r.ch[0].len, 3);
	ck_assert_int_eq(memcmp(r.ch[0].p, "b\0\0", 3), 0);
	ac_result_free(&r);
	agent_down(&c);
	remove_dir();
}
END_TEST

/* FNV-1a over a deterministic pseudo-random stream: cheap and order-sensitive. */
static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

START_TEST(files_100mib_streamed)
{
	struct ac c;
	char path[128], req[256];
	const size_t total = 100u << 20, chunk = 1u << 20;
	uint8_t *buf = malloc(chunk);
	uint64_t h_in = 0xcbf29ce484222325ull, h_out = h_in, x = 42;
	make_dir();
	agent_up(&c);
	snprintf(path, sizeof(path), "%s/big.bin", dir);
	uint32_t id = ac_new_id(&c);
	snprintf(req, sizeof(req), "{\"op\":\"write\",\"path\":\"%s\"}", path);
	ac_open(&c, id, req);
	for (size_t off = 0; off < total; off += chunk) {
		for (size_t i = 0; i < chunk; i += 8) {
			x ^= x << 13; x ^= x >> 7; x ^= x << 17;
			memcpy(buf + i, &x, 8);
		}
		h_in = fnv(h_in, buf, chunk);
		ck_assert_int_eq(ac_write_data(&c, id, buf, chunk, off + chunk == total, T_LONG), 0);
	}
	struct ac_result r;
	ck_assert_int_eq(ac_collect(&c, id, &r, T_LONG), 0);
	ck_assert_msg(strstr(r.end, "\"bytes\":104857600"), "%s", r.end);
	ac_result_free(&r);
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_size, (off_t)total);

	/* read back frame by frame, hashing as we go (no 100 MiB buffer) */
	id = ac_new_id(&c);
	snprintf(req, sizeof(req), "{\"op\":\"read\",\"path\":\"%s\"}", path);
	ac_open(&c, id, req);
	size_t got = 0;
	for (;;) {
		struct ac_frame *f;
		ck_assert_int_eq(ac_recv(&c, id, &f, T_LONG), 0);
		if (f->h.type == PROTO_DATA) {
			h_out = fnv(h_out, f->p, f->h.length);
			got += f->h.length;
		}
		int type = f->h.type;
		ac_frame_free(f);
		if (type == PROTO_END)
			break;
	}
	ck_assert_uint_eq(got, total);
	ck_assert(h_in == h_out);
	free(buf);
	agent_down(&c);
	remove_dir();
}
END_TEST

START_TEST(files_metadata_ops)
{
	struct ac c;
	struct ac_result r;
	char req[512], a[128], b[128];
	make_dir();
	agent_up(&c);
	snprintf(a, sizeof(a), "%s/x/y/z", dir);
	snprintf(req, sizeof(req), "{\"op\":\"mkdir\",\"path\":\"%s\"}", a);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_msg(strstr(r.end, "\"type\":\"dir\""), "%s", r.end);
	ac_result_free(&r);
	call_expect(&c, req, "exists");
	snprintf(a, sizeof(a), "%s/x/y/f.txt", dir);
	write_file(&c, a, "hello", 5);
	snprintf(req, sizeof(req), "{\"op\":\"stat\",\"path\":\"%s\"}", a);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	cJSON *j = end_json(&r);
	cJSON *e = cJSON_GetObjectItem(j, "entry");
	ck_assert_str_eq(cJSON_GetObjectItem(e, "type")->valuestring, "file");
	ck_assert_str_eq(cJSON_GetObjectItem(e, "name")->valuestring, "f.txt");
	ck_assert_int_eq(json_int(e, "size"), 5);
	ck_assert_str_eq(cJSON_GetObjectItem(e, "permissions")->valuestring, "-rw-r--r--");
	ck_assert(cJSON_IsString(cJSON_GetObjectItem(e, "mtime")));
	cJSON_Delete(j);
	ac_result_free(&r);

	snprintf(req, sizeof(req), "{\"op\":\"exists\",\"path\":\"%s\"}", a);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "\"exists\":true"));
	ac_result_free(&r);
	snprintf(req, sizeof(req), "{\"op\":\"exists\",\"path\":\"%s/nope\"}", dir);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "\"exists\":false"));
	ac_result_free(&r);

	/* list depth 1 sees x; depth 3 sees x, y, z and f.txt */
	snprintf(req, sizeof(req), "{\"op\":\"list\",\"path\":\"%s\"}", dir);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "\"count\":1"));
	ac_result_free(&r);
	snprintf(req, sizeof(req), "{\"op\":\"list\",\"path\":\"%s\",\"depth\":3}", dir);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "\"count\":4"));
	ck_assert_ptr_nonnull(strstr((char *)r.events.p, "\"name\":\"f.txt\""));
	ac_result_free(&r);

	snprintf(b, sizeof(b), "%s/renamed.txt", dir);
	snprintf(req, sizeof(req), "{\"op\":\"rename\",\"from\":\"%s\",\"to\":\"%s\"}", a, b);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "\"name\":\"renamed.txt\""));
	ac_result_free(&r);
	call_expect(&c, req, "not_found");

	snprintf(req, sizeof(req), "{\"op\":\"remove\",\"path\":\"%s/x\"}", dir);
	call_expect(&c, req, "not_empty");
	snprintf(req, sizeof(req), "{\"op\":\"remove\",\"path\":\"%s/x\",\"recursive\":true}", dir);
	call_expect(&c, req, "");
	call_expect(&c, req, "not_found");
	snprintf(req, sizeof(req), "{\"op\":\"remove\",\"path\":\"%s\"}", b);
	call_expect(&c, req, "");
	agent_down(&c);
	remove_dir();
}
END_TEST

static void expect_content(const char *path, const char *want)
{
	char got[64] = "";
	int fd = open(path, O_RDONLY);
	ck_assert_msg(fd >= 0, "%s is gone", path);
	ck_assert_int_ge(read(fd, got, sizeof(got) - 1), 0);
	close(fd);
	ck_assert_str_eq(got, want);
}

/* E2B's file metadata: kept with the file where the file system can, and where it
 * cannot, the write is refused whole (no new file, the old content untouched). */
START_TEST(files_e2b_metadata)
{
	struct ac c;
	struct ac_result r;
	char req[512], path[192], code[64];
	make_dir();
	/* ramfs keeps no extended attributes at all; mounted in a mount namespace of this
	 * test's own, which the agent inherits. */
	char ram[128];
	snprintf(ram, sizeof(ram), "%s/ram", dir);
	ck_assert_int_eq(mkdir(ram, 0755), 0);
	bool have_ram = !unshare(CLONE_NEWNS) && !mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) &&
			!mount("ramfs", ram, "ramfs", 0, "mode=0755");
	agent_up(&c);
	snprintf(path, sizeof(path), "%s/m.txt", dir);
	write_meta(&c, path, "{\"owner\":\"alice\",\"build-id\":\"42\"}", "m", 1, code, sizeof(code));
	ck_assert_msg(!*code, "write with metadata: %s", code);
	snprintf(req, sizeof(req), "{\"op\":\"stat\",\"path\":\"%s\"}", path);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_msg(strstr(r.end, "\"metadata\":{\"owner\":\"alice\",\"build-id\":\"42\"}") ||
		      strstr(r.end, "\"metadata\":{\"build-id\":\"42\",\"owner\":\"alice\"}"), "%s", r.end);
	ac_result_free(&r);
	/* A new write is a new file: no metadata unless it brings its own. */
	write_file(&c, path, "n", 1);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_msg(!strstr(r.end, "metadata"), "%s", r.end);
	ac_result_free(&r);
	/* Out of bounds: refused, not dropped. */
	write_meta(&c, path, "{\"k\":7}", "x", 1, code, sizeof(code));
	ck_assert_str_eq(code, "invalid_argument");
	expect_content(path, "n");

	if (!have_ram) {
		printf("files_e2b_metadata: no ramfs here (not root?): the refusal is not checked\n");
	} else {
		char old[192], linked[192];
		/* A new file, an existing one (replaced through a temporary file) and a
		 * hard-linked one (written in place): each refused, each as it was. */
		snprintf(path, sizeof(path), "%s/new.txt", ram);
		write_meta(&c, path, "{\"owner\":\"alice\"}", "m", 1, code, sizeof(code));
		ck_assert_str_eq(code, "invalid_argument");
		ck_assert_int_ne(access(path, F_OK), 0);
		snprintf(old, sizeof(old), "%s/old.txt", ram);
		write_file(&c, old, "old", 3);
		write_meta(&c, old, "{\"owner\":\"alice\"}", "new", 3, code, sizeof(code));
		ck_assert_str_eq(code, "invalid_argument");
		expect_content(old, "old");
		snprintf(linked, sizeof(linked), "%s/linked.txt", ram);
		ck_assert_int_eq(link(old, linked), 0);
		write_meta(&c, old, "{\"owner\":\"alice\"}", "new", 3, code, sizeof(code));
		ck_assert_str_eq(code, "invalid_argument");
		expect_content(linked, "old");
		snprintf(req, sizeof(req), "{\"op\":\"list\",\"path\":\"%s\"}", ram);
		ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
		ck_assert_msg(strstr(r.end, "\"count\":2"), "only old.txt and linked.txt: %s %s", r.end,
			      (char *)r.events.p);
		ac_result_free(&r);
		umount2(ram, MNT_DETACH);
	}
	agent_down(&c);
	remove_dir();
}
END_TEST

START_TEST(files_error_codes)
{
	struct ac c;
	char req[512];
	make_dir();
	agent_up(&c);
	snprintf(req, sizeof(req), "{\"op\":\"read\",\"path\":\"%s/missing\"}", dir);
	call_expect(&c, req, "not_found");
	snprintf(req, sizeof(req), "{\"op\":\"read\",\"path\":\"%s\"}", dir);
	call_expect(&c, req, "is_a_directory");
	snprintf(req, sizeof(req), "{\"op\":\"list\",\"path\":\"/etc/passwd\"}");
	call_expect(&c, req, "not_a_directory");
	snprintf(req, sizeof(req), "{\"op\":\"stat\",\"path\":\"/etc/passwd/x\"}");
	call_expect(&c, req, "not_a_directory");
	call_expect(&c, "{\"op\":\"stat\"}", "invalid_argument");
	call_expect(&c, "{\"op\":\"list\",\"path\":\"/\",\"depth\":0}", "invalid_argument");
	snprintf(req, sizeof(req), "{\"op\":\"write\",\"path\":\"%s\"}", dir);
	call_expect(&c, req, "is_a_directory");
	if (geteuid() == 0) {
		/* as nobody: /root is 0700 */
		call_expect(&c, "{\"op\":\"list\",\"path\":\"/root\",\"user\":\"nobody\"}", "permission_denied");
		call_expect(&c, "{\"op\":\"stat\",\"path\":\"/root/.x\",\"user\":\"nobody\"}", "permission_denied");
	} else {
		call_expect(&c, "{\"op\":\"list\",\"path\":\"/root\"}", "permission_denied");
	}
	/* a filesystem with no room: a 64 KiB tmpfs if we may mount, else /dev/full */
	char mnt[128], cmd[256];
	snprintf(mnt, sizeof(mnt), "%s/small", dir);
	mkdir(mnt, 0755);
	snprintf(cmd, sizeof(cmd), "mount -t tmpfs -o size=64k tmpfs %s 2>/dev/null", mnt);
	if (system(cmd) == 0) {
		char path[160];
		static char big[1 << 20];
		struct ac_result r;
		snprintf(path, sizeof(path), "%s/fill", mnt);
		uint32_t id = ac_new_id(&c);
		snprintf(req, sizeof(req), "{\"op\":\"write\",\"path\":\"%s\"}", path);
		ac_open(&c, id, req);
		ac_write_data(&c, id, big, sizeof(big), true, 2000); /* may stop early: stream ended */
		ck_assert_int_eq(ac_collect(&c, id, &r, T_SHORT), 0);
		expect_end(&r, "no_space", "write to a full filesystem");
		snprintf(cmd, sizeof(cmd), "umount %s", mnt);
		ck_assert_int_eq(system(cmd), 0);
	}
	agent_down(&c);
	remove_dir();
}
END_TEST

START_TEST(files_list_many_batches)
{
	struct ac c;
	struct ac_result r;
	char path[160], req[256];
	make_dir();
	for (int i = 0; i < 700; i++) {
		snprintf(path, sizeof(path), "%s/file-with-a-longish-name-%04d", dir, i);
		close(open(path, O_CREAT | O_WRONLY, 0644));
	}
	agent_up(&c);
	snprintf(req, sizeof(req), "{\"op\":\"list\",\"path\":\"%s\"}", dir);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "\"count\":700"));
	int batches = 0, entries = 0;
	for (char *line = strtok((char *)r.events.p, "\n"); line; line = strtok(NULL, "\n"), batches++) {
		cJSON *j = cJSON_Parse(line);
		ck_assert_msg(j != NULL, "bad batch: %.80s", line);
		entries += cJSON_GetArraySize(cJSON_GetObjectItem(j, "entries"));
		cJSON_Delete(j);
	}
	ck_assert_int_gt(batches, 1);
	ck_assert_int_eq(entries, 700);
	ac_result_free(&r);
	agent_down(&c);
	remove_dir();
}
END_TEST

/* Waits until the events seen on id contain want. */
static void wait_event(struct ac *c, uint32_t id, struct ac_buf *seen, const char *want)
{
	while (!seen->p || !strstr((char *)seen->p, want)) {
		struct ac_frame *f;
		ck_assert_msg(ac_recv(c, id, &f, T_SHORT) == 0, "no %s in %s", want, seen->p ? (char *)seen->p : "");
		ck_assert_int_eq(f->h.type, PROTO_EVENT);
		ac_buf_put(seen, f->p, f->h.length);
		ac_frame_free(f);
	}
}

START_TEST(files_watch_recursive)
{
	struct ac c;
	struct ac_result r;
	struct ac_buf seen = { 0 };
	char req[256], path[160], path2[160];
	make_dir();
	agent_up(&c);
	uint32_t id = ac_new_id(&c);
	snprintf(req, sizeof(req), "{\"op\":\"watch\",\"path\":\"%s\",\"recursive\":true}", dir);
	ac_open(&c, id, req);
	wait_event(&c, id, &seen, "\"started\":true");
	snprintf(path, sizeof(path), "%s/a.txt", dir);
	write_file(&c, path, "x", 1);
	wait_event(&c, id, &seen, "{\"name\":\"a.txt\",\"type\":\"create\",\"is_dir\":false}");
	wait_event(&c, id, &seen, "{\"name\":\"a.txt\",\"type\":\"write\"");
	/* As from envd: a new file is given to its owner between its creation and its
	 * content (E2B's SDK tests count these three). */
	const char *cr = strstr((char *)seen.p, "\"name\":\"a.txt\",\"type\":\"create\""),
		   *ch = strstr((char *)seen.p, "\"name\":\"a.txt\",\"type\":\"chmod\""),
		   *wr = strstr((char *)seen.p, "\"name\":\"a.txt\",\"type\":\"write\"");
	ck_assert_msg(cr && ch && wr && cr < ch && ch < wr, "a new file's events: %s", (char *)seen.p);
	snprintf(path, sizeof(path), "%s/sub", dir);
	mkdir(path, 0755);
	wait_event(&c, id, &seen, "{\"name\":\"sub\",\"type\":\"create\",\"is_dir\":true}");
	snprintf(path, sizeof(path), "%s/sub/b.txt", dir);
	write_file(&c, path, "y", 1); /* inside a directory created after the start */
	wait_event(&c, id, &seen, "\"name\":\"sub/b.txt\",\"type\":\"create\"");
	snprintf(path2, sizeof(path2), "%s/sub/c.txt", dir);
	/* A move inside the tree: its two halves in one batch, side by side (how a client
	 * pairs them). */
	ck_assert_int_eq(rename(path, path2), 0);
	wait_event(&c, id, &seen, "\"name\":\"sub/c.txt\",\"type\":\"create\"");
	const char *half = strstr((char *)seen.p, "\"name\":\"sub/b.txt\",\"type\":\"rename\"");
	ck_assert_ptr_nonnull(half);
	static const char second[] = "},{\"name\":\"sub/c.txt\",\"type\":\"create\"";
	ck_assert_msg(!strncmp(strchr(half, '}'), second, strlen(second)), "a move's halves apart: %s",
		      (char *)seen.p);
	/* Out of the tree: no second half comes, the first goes out alone. */
	char out[96];
	snprintf(out, sizeof(out), "%s-out", dir);
	ck_assert_int_eq(rename(path2, out), 0);
	wait_event(&c, id, &seen, "\"name\":\"sub/c.txt\",\"type\":\"rename\"");
	unlink(out);
	snprintf(path, sizeof(path), "%s/a.txt", dir);
	unlink(path);
	wait_event(&c, id, &seen, "\"name\":\"a.txt\",\"type\":\"remove\"");
	remove_dir(); /* the watched directory itself goes: the stream ends */
	ck_assert_int_eq(ac_collect(&c, id, &r, T_SHORT), 0);
	expect_end(&r, "not_found", "watch of a removed directory");
	free(seen.p);
	call_expect(&c, "{\"op\":\"watch\",\"path\":\"/etc/passwd\"}", "not_a_directory");
	call_expect(&c, "{\"op\":\"watch\",\"path\":\"/no/such/dir\"}", "not_found");
	agent_down(&c);
}
END_TEST

/* A sync answers only once every change made before it was sent: a poll right after
 * a write sees it (E2B's GetWatcherEvents), a move out of the tree included. */
START_TEST(files_watch_sync)
{
	struct ac c;
	struct ac_buf seen = { 0 };
	char req[256], path[160], out[96];
	make_dir();
	agent_up(&c);
	uint32_t id = ac_new_id(&c);
	snprintf(req, sizeof(req), "{\"op\":\"watch\",\"path\":\"%s\"}", dir);
	ac_open(&c, id, req);
	wait_event(&c, id, &seen, "\"sync\":true}");
	for (int i = 0; i < 200; i++) {
		snprintf(path, sizeof(path), "%s/f%03d", dir, i);
		close(open(path, O_CREAT | O_WRONLY, 0644));
	}
	snprintf(out, sizeof(out), "%s-out", dir);
	ck_assert_int_eq(rename(path, out), 0); /* its first half alone: held for a second half */
	static const char sync[] = "{\"sync\":true}";
	ck_assert_int_eq(ac_send(&c, PROTO_EVENT, 0, 0, id, sync, sizeof(sync) - 1), 0);
	wait_event(&c, id, &seen, "\"synced\":true");
	for (int i = 0; i < 200; i++) {
		snprintf(path, sizeof(path), "\"name\":\"f%03d\",\"type\":\"create\"", i);
		ck_assert_msg(strstr((char *)seen.p, path), "%s not before the sync's answer", path);
	}
	ck_assert_ptr_nonnull(strstr((char *)seen.p, "\"name\":\"f199\",\"type\":\"rename\""));
	unlink(out);
	/* More than the sync reads at once (16 x 64 KiB of events): it answers all the same,
	 * after the last of them. */
	free(seen.p);
	memset(&seen, 0, sizeof(seen));
	char name[101], big[PATH_MAX];
	memset(name, 'n', 100);
	name[100] = 0;
	for (int i = 0; i < 12000; i++) {
		snprintf(big, sizeof(big), "%s/%s%05d", dir, name, i);
		close(open(big, O_CREAT | O_WRONLY, 0644));
	}
	ck_assert_int_eq(ac_send(&c, PROTO_EVENT, 0, 0, id, sync, sizeof(sync) - 1), 0);
	wait_event(&c, id, &seen, "\"synced\":true");
	snprintf(big, sizeof(big), "\"name\":\"%s11999\",\"type\":\"create\"", name);
	ck_assert_msg(strstr((char *)seen.p, big), "the last of 12000 not before the sync's answer");
	free(seen.p);
	agent_down(&c);
	remove_dir();
}
END_TEST

/* What envd's clients are given: listings depth first in byte order, a symlink
 * resolved with what it leads to, watch events carrying their entries. */
START_TEST(files_envd_shapes)
{
	struct ac c;
	struct ac_result r;
	struct ac_buf seen = { 0 };
	char req[512], path[160];
	make_dir();
	static const char *const names[] = { "c", "a", "b" }; /* made out of order */
	for (int i = 0; i < 3; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		ck_assert_int_eq(mkdir(path, 0755), 0);
	}
	snprintf(path, sizeof(path), "%s/a/z", dir);
	close(open(path, O_CREAT | O_WRONLY, 0644));
	snprintf(path, sizeof(path), "%s/b/link", dir);
	ck_assert_int_eq(symlink("../a/z", path), 0);
	agent_up(&c);
	snprintf(req, sizeof(req), "{\"op\":\"list\",\"path\":\"%s\",\"depth\":2}", dir);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	const char *order[] = { "\"name\":\"a\"", "\"name\":\"z\"", "\"name\":\"b\"", "\"name\":\"link\"",
				"\"name\":\"c\"" };
	const char *at = (char *)r.events.p;
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
		const char *next = strstr(at, order[i]);
		ck_assert_msg(next, "%s not after the entries before it in %s", order[i], (char *)r.events.p);
		at = next;
	}
	ac_result_free(&r);
	snprintf(req, sizeof(req), "{\"op\":\"stat\",\"path\":\"%s/b/link\"}", dir);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	cJSON *j = end_json(&r);
	cJSON *e = cJSON_GetObjectItem(j, "entry");
	snprintf(path, sizeof(path), "%s/a/z", dir);
	ck_assert_str_eq(cJSON_GetObjectItem(e, "type")->valuestring, "symlink");
	ck_assert_str_eq(cJSON_GetObjectItem(e, "symlink_target")->valuestring, path);
	ck_assert_str_eq(cJSON_GetObjectItem(e, "target_type")->valuestring, "file");
	ck_assert_int_eq(json_int(e, "target_mode"), 0644);
	cJSON_Delete(j);
	ac_result_free(&r);

	uint32_t id = ac_new_id(&c);
	snprintf(req, sizeof(req), "{\"op\":\"watch\",\"path\":\"%s\",\"entries\":true}", dir);
	ac_open(&c, id, req);
	wait_event(&c, id, &seen, "\"started\":true");
	snprintf(path, sizeof(path), "%s/new.txt", dir);
	write_file(&c, path, "12345", 5);
	wait_event(&c, id, &seen, "\"size\":5");
	ck_assert_ptr_nonnull(strstr((char *)seen.p, "\"name\":\"new.txt\",\"type\":\"create\",\"is_dir\":false,\"entry\":{"));
	unlink(path);
	wait_event(&c, id, &seen, "\"name\":\"new.txt\",\"type\":\"remove\",\"is_dir\":false}");
	/* Many at once: batches stay small, each a whole JSON object. */
	for (int i = 0; i < 1000; i++) {
		snprintf(path, sizeof(path), "%s/a-file-with-a-name-long-enough-to-add-up-%04d", dir, i);
		close(open(path, O_CREAT | O_WRONLY, 0644));
	}
	bool last = false;
	while (!last) {
		struct ac_frame *f;
		ck_assert_int_eq(ac_recv(&c, id, &f, T_SHORT), 0);
		ck_assert_int_eq(f->h.type, PROTO_EVENT);
		ck_assert_uint_lt(f->h.length, 128u << 10);
		cJSON *batch = cJSON_ParseWithLength((const char *)f->p, f->h.length);
		ck_assert_ptr_nonnull(batch);
		cJSON_Delete(batch);
		ac_buf_put(&seen, f->p, f->h.length);
		ac_buf_put(&seen, "", 1);
		static const char final[] = "up-0999\",\"type\":\"create\"";
		last = memmem(f->p, f->h.length, final, sizeof(final) - 1) != NULL;
		ac_frame_free(f);
	}
	free(seen.p);
	ac_send(&c, PROTO_CANCEL, 0, 0, id, NULL, 0);
	agent_down(&c);
	remove_dir();
}
END_TEST

/* A download cancelled in the middle of a tree: the walk's directories are let go
 * once each (their entries already handed out included). */
START_TEST(files_archive_cancelled_midway)
{
	struct ac c;
	char req[256], path[160];
	make_dir();
	static const char *const dirs[] = { "a", "b" };
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, dirs[i]);
		ck_assert_int_eq(mkdir(path, 0755), 0);
	}
	snprintf(path, sizeof(path), "%s/a/big", dir);
	int fd = open(path, O_CREAT | O_WRONLY, 0644);
	ck_assert_int_eq(ftruncate(fd, 8 << 20), 0); /* far more than one window */
	close(fd);
	snprintf(path, sizeof(path), "%s/a/small", dir);
	close(open(path, O_CREAT | O_WRONLY, 0644));
	agent_up(&c);
	uint32_t id = ac_new_id(&c);
	snprintf(req, sizeof(req), "{\"op\":\"archive\",\"path\":\"%s\"}", dir);
	ac_open(&c, id, req);
	struct ac_frame *f;
	do {
		ck_assert_int_eq(ac_recv(&c, id, &f, T_SHORT), 0);
		ck_assert_int_ne(f->h.type, PROTO_END);
		bool data = f->h.type == PROTO_DATA;
		ac_frame_free(f);
		if (data)
			break;
	} while (1);
	ac_send(&c, PROTO_CANCEL, 0, 0, id, NULL, 0);
	call_expect(&c, "{\"op\":\"exists\",\"path\":\"/\"}", ""); /* still serving */
	agent_down(&c); /* and exits cleanly: no double free under the sanitizers */
	remove_dir();
}
END_TEST

START_TEST(files_relative_to_home)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	char req[256];
	const char *home = getenv("HOME");
	if (!home)
		return;
	snprintf(req, sizeof(req), "{\"op\":\"stat\",\"path\":\"~\"}");
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	char want[300];
	snprintf(want, sizeof(want), "\"path\":\"%s\"", home);
	ck_assert_msg(strstr(r.end, want), "%s", r.end);
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

/* A home of "/" (a kvm guest's PID 1 has HOME=/): relative paths are "/x", not "//x". */
START_TEST(files_relative_to_root_home)
{
	struct ac c;
	struct ac_result r;
	setenv("HOME", "/", 1);
	agent_up(&c);
	static const char *const cases[][2] = { { "tmp", "/tmp" }, { "~/tmp", "/tmp" }, { "~", "/" } };
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char req[128], want[64];
		snprintf(req, sizeof(req), "{\"op\":\"stat\",\"path\":\"%s\"}", cases[i][0]);
		ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
		snprintf(want, sizeof(want), "\"path\":\"%s\"", cases[i][1]);
		ck_assert_msg(strstr(r.end, want), "%s: %s", cases[i][0], r.end);
		ac_result_free(&r);
	}
	agent_down(&c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("agent_files");
	TCase *tc = tcase_create("files");
	tcase_set_timeout(tc, 50);
	tcase_add_test(tc, files_binary_roundtrip);
	tcase_add_test(tc, files_100mib_streamed);
	tcase_add_test(tc, files_metadata_ops);
	tcase_add_test(tc, files_e2b_metadata);
	tcase_add_test(tc, files_error_codes);
	tcase_add_test(tc, files_list_many_batches);
	tcase_add_test(tc, files_watch_recursive);
	tcase_add_test(tc, files_watch_sync);
	tcase_add_test(tc, files_envd_shapes);
	tcase_add_test(tc, files_archive_cancelled_midway);
	tcase_add_test(tc, files_relative_to_home);
	tcase_add_test(tc, files_relative_to_root_home);
	suite_add_tcase(s, tc);
	return run_suite(s);
}
