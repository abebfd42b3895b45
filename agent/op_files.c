/* File operations: streamed read and write, stat, exists, list, remove, mkdir,
 * rename. Paths and sizes come from the client and are checked here. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "agent/fs_ctx.h"
#include "agent/ops.h"
#include "agent/users.h"

#define LIST_MAX_DEPTH 64
#define LIST_BATCH_BYTES (64u << 10)
#define REMOVE_MAX_DEPTH 256

static int parent_dirs(const char *path)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = 0;
	return fs_mkdir_parents(dir, 0755);
}

/* ---- entries ---- */

static const char *type_name(mode_t m)
{
	return S_ISREG(m) ? "file" : S_ISDIR(m) ? "dir" : S_ISLNK(m) ? "symlink" : "other";
}

static void perm_string(mode_t m, char out[11])
{
	static const char rwx[] = "rwxrwxrwx";
	out[0] = S_ISDIR(m) ? 'd' : S_ISLNK(m) ? 'l' : S_ISCHR(m) ? 'c' : S_ISBLK(m) ? 'b' :
		 S_ISFIFO(m) ? 'p' : S_ISSOCK(m) ? 's' : '-';
	for (int i = 0; i < 9; i++)
		out[1 + i] = m & (1u << (8 - i)) ? rwx[i] : '-';
	if (m & S_ISUID)
		out[3] = m & S_IXUSR ? 's' : 'S';
	if (m & S_ISGID)
		out[6] = m & S_IXGRP ? 's' : 'S';
	if (m & S_ISVTX)
		out[9] = m & S_IXOTH ? 't' : 'T';
	out[10] = 0;
}

/* Owner names for a listing: one /etc/passwd read per distinct id, not per entry. */
static void owner_names(uid_t uid, gid_t gid, char *user, char *group, size_t len)
{
	static uid_t last_uid = (uid_t)-1;
	static gid_t last_gid = (gid_t)-1;
	static char uname[64], gname[64];
	if (uid != last_uid) {
		struct user_info ui;
		user_by_uid(uid, &ui);
		snprintf(uname, sizeof(uname), "%s", ui.name);
		last_uid = uid;
	}
	if (gid != last_gid) {
		group_name(gid, gname, sizeof(gname));
		last_gid = gid;
	}
	snprintf(user, len, "%s", uname);
	snprintf(group, len, "%s", gname);
}

/* E2B's file metadata is kept as envd keeps it, in user.e2b.* extended attributes. A
 * file system without user xattrs (tmpfs, and an overlay whose upper layer is tmpfs,
 * before Linux 6.6: the whole root of a kvm guest) takes trusted.e2b.* instead, which
 * only an agent that is root of its kernel may set and read, as in a microVM. */
static const char *const meta_prefixes[] = { "user.e2b.", "trusted.e2b." };
#define META_MAX 64          /* keys per file */
#define META_KEY_MAX 200
#define META_VALUE_MAX 4096

static const char *meta_key(const char *xattr)
{
	for (size_t i = 0; i < sizeof(meta_prefixes) / sizeof(meta_prefixes[0]); i++)
		if (!strncmp(xattr, meta_prefixes[i], strlen(meta_prefixes[i])))
			return xattr + strlen(meta_prefixes[i]);
	return NULL;
}

/* "metadata": {key: value} of the file's E2B metadata, when it has any. Symlinks are
 * not followed. */
static void write_metadata(struct jw *w, const char *path)
{
	char names[8192], value[META_VALUE_MAX + 1];
	ssize_t n = llistxattr(path, names, sizeof(names));
	bool any = false;
	for (ssize_t off = 0; n > 0 && off < n; off += (ssize_t)strlen(names + off) + 1) {
		const char *name = names + off, *key = meta_key(name);
		if (!key)
			continue;
		ssize_t vl = lgetxattr(path, name, value, sizeof(value) - 1);
		if (vl < 0)
			continue;
		if (!any) {
			jw_key(w, "metadata");
			jw_obj(w);
			any = true;
		}
		jw_key(w, key);
		jw_strn(w, value, (size_t)vl);
	}
	if (any)
		jw_obj_end(w);
}

void op_write_entry(struct jw *w, const char *path, const struct stat *st)
{
	char perms[11], user[64], group[64], ts[64];
	const char *name = strrchr(path, '/');
	name = name && name[1] ? name + 1 : path;
	perm_string(st->st_mode, perms);
	owner_names(st->st_uid, st->st_gid, user, group, sizeof(user));
	struct tm tm;
	gmtime_r(&st->st_mtim.tv_sec, &tm);
	size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, sizeof(ts) - n, ".%09ldZ", st->st_mtim.tv_nsec);

	jw_obj(w);
	jw_key(w, "name");
	jw_str(w, name);
	jw_key(w, "path");
	jw_str(w, path);
	jw_key(w, "type");
	jw_str(w, type_name(st->st_mode));
	jw_key(w, "size");
	jw_int(w, st->st_size);
	jw_key(w, "mode");
	jw_int(w, st->st_mode & 07777);
	jw_key(w, "permissions");
	jw_str(w, perms);
	jw_key(w, "uid");
	jw_int(w, st->st_uid);
	jw_key(w, "gid");
	jw_int(w, st->st_gid);
	jw_key(w, "owner");
	jw_str(w, user);
	jw_key(w, "group");
	jw_str(w, group);
	jw_key(w, "mtime");
	jw_str(w, ts);
	jw_key(w, "mtime_ns");
	jw_int(w, (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec);
	if (S_ISLNK(st->st_mode)) {
		/* As envd: the link fully resolved (itself when that fails), and what it is. */
		char target[PATH_MAX];
		struct stat ts;
		bool resolved = realpath(path, target) != NULL;
		jw_key(w, "symlink_target");
		jw_str(w, resolved ? target : path);
		if (resolved && stat(target, &ts) == 0) {
			jw_key(w, "target_type");
			jw_str(w, type_name(ts.st_mode));
			jw_key(w, "target_mode");
			jw_int(w, ts.st_mode & 07777);
		}
	}
	write_metadata(w, path);
	jw_obj_end(w);
}

static void end_with_entry(struct stream *s, const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0) {
		stream_end_errno(s, -errno, path);
		return;
	}
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "entry");
	op_write_entry(&w, path, &st);
	jw_obj_end(&w);
	stream_end_jw(s, &w);
}

/* ---- read ---- */

struct file_op {
	int fd;
	uint64_t remaining; /* read: bytes still to send */
	uint64_t done;
	char path[PATH_MAX];
	char tmp[PATH_MAX];  /* write: the new content until it replaces path ("" in place) */
	struct fs_ctx fc;    /* write: whose rename it is */
};

static void file_op_free(struct file_op *f)
{
	if (f->fd >= 0)
		close(f->fd);
	if (f->tmp[0])
		unlink(f->tmp); /* a write that did not finish leaves the old file as it was */
	free(f);
}

/* Also frees f. A write's result names the file it wrote. */
static void file_op_end(struct stream *s, struct file_op *f, int err, bool with_path)
{
	s->ctx = NULL;
	if (err) {
		stream_end_errno(s, err, f->path);
	} else {
		struct jw w;
		jw_init(&w);
		jw_obj(&w);
		jw_key(&w, "bytes");
		jw_int(&w, (int64_t)f->done);
		if (with_path) {
			jw_key(&w, "path");
			jw_str(&w, f->path);
		}
		jw_obj_end(&w);
		stream_end_jw(s, &w);
	}
	file_op_free(f);
}

static void read_pump(struct stream *s)
{
	static uint8_t buf[PROTO_DATA_CHUNK];
	struct file_op *f = s->ctx;
	size_t space;
	while ((space = stream_send_space(s)) > 0) {
		size_t want = space < f->remaining ? space : (size_t)f->remaining;
		ssize_t n = want ? read(f->fd, buf, want) : 0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			file_op_end(s, f, -errno, false);
			return;
		}
		if (n == 0) {
			stream_data(s, PROTO_CH_MAIN, true, NULL, 0);
			file_op_end(s, f, 0, false);
			return;
		}
		stream_data(s, PROTO_CH_MAIN, false, buf, (size_t)n);
		f->done += (uint64_t)n;
		f->remaining -= (uint64_t)n;
	}
}

static void file_cancel(struct stream *s)
{
	if (s->ctx)
		file_op_free(s->ctx);
}

static const struct stream_ops read_ops = { .writable = read_pump, .cancel = file_cancel };

void op_read_open(struct stream *s, const struct json *req)
{
	struct fs_ctx fc;
	int64_t offset = 0, length = INT64_MAX;
	if (fs_enter(s, req, &fc))
		return;
	if (resolve_path(s, req, "path", &fc, fc.path))
		goto out;
	if (json_get_int(req, "offset", 0, INT64_MAX, &offset) == -EINVAL ||
	    json_get_int(req, "length", 0, INT64_MAX, &length) == -EINVAL) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "offset and length must be non-negative integers");
		goto out;
	}
	int fd = open(fc.path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		stream_end_errno(s, -errno, fc.path);
		if (fd >= 0)
			close(fd);
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		if (S_ISDIR(st.st_mode))
			stream_end_error(s, PERR_IS_A_DIRECTORY, "%s is a directory", fc.path);
		else
			stream_end_error(s, PERR_INVALID_ARGUMENT, "%s is not a regular file", fc.path);
		goto out;
	}
	if (offset && lseek(fd, offset, SEEK_SET) < 0) {
		stream_end_errno(s, -errno, fc.path);
		close(fd);
		goto out;
	}
	struct file_op *f = calloc(1, sizeof(*f));
	if (!f) {
		close(fd);
		stream_end_errno(s, -ENOMEM, "read");
		goto out;
	}
	f->fd = fd;
	f->remaining = (uint64_t)length;
	snprintf(f->path, sizeof(f->path), "%s", fc.path);
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "size");
	jw_int(&w, st.st_size);
	jw_obj_end(&w);
	stream_event_jw(s, &w);
	s->ctx = f;
	s->ops = &read_ops;
	read_pump(s);
out:
	fs_leave(&fc);
}

/* ---- write ---- */

#define WRITE_TEMP_MARK ".mitos-write-"

bool op_write_is_temp(const char *name)
{
	const char *base = strrchr(name, '/');
	base = base ? base + 1 : name;
	return base[0] == '.' && strstr(base, WRITE_TEMP_MARK);
}

static void write_data(struct stream *s, uint8_t channel, bool fin, const uint8_t *p, size_t n)
{
	struct file_op *f = s->ctx;
	(void)channel;
	while (n) {
		ssize_t w = write(f->fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			file_op_end(s, f, -errno, true);
			return;
		}
		p += w;
		n -= (size_t)w;
		f->done += (uint64_t)w;
		stream_consumed(s, (size_t)w);
	}
	if (!fin)
		return;
	int fd = f->fd;
	f->fd = -1;
	/* close() reports deferred write errors (quota, NFS-like filesystems). */
	int err = close(fd) < 0 ? -errno : 0;
	if (!err && f->tmp[0]) {
		fs_switch(&f->fc); /* as the writer: a sticky /tmp protects others' files */
		err = rename(f->tmp, f->path) < 0 ? -errno : 0;
		fs_leave(&f->fc);
		if (!err)
			f->tmp[0] = 0;
	}
	file_op_end(s, f, err, true);
}

/* A new file beside an existing path that replaces it on the last chunk, with the old
 * file's mode and owner; -1 where that cannot be (the caller then writes in place). Only
 * a regular file with one link is replaced: a new file is simply created, and a
 * symlink, a device or a hard-linked file is written through, as before. */
static int open_replacement(const char *path, char *tmp)
{
	struct stat st;
	if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1)
		return -1;
	const char *slash = strrchr(path, '/');
	if (!slash)
		return -1;
	static unsigned serial;
	int n = snprintf(tmp, PATH_MAX, "%.*s/.%s" WRITE_TEMP_MARK "%d-%u", (int)(slash - path), path, slash + 1,
			 (int)getpid(), ++serial);
	if (n < 0 || n >= PATH_MAX)
		return -1;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
	if (fd < 0)
		return -1;
	if (fchown(fd, st.st_uid, st.st_gid) < 0 || fchmod(fd, st.st_mode & 07777) < 0) {
		/* Not this writer's to give away: in place keeps the owner. */
		close(fd);
		unlink(tmp);
		return -1;
	}
	return fd;
}

static const struct stream_ops write_ops = { .data = write_data, .cancel = file_cancel };

/* Sets the request's metadata on the open file before any content, so that a write
 * whose metadata cannot be kept is refused and changes nothing. Keys or values out of
 * bounds are refused too (E2B's side checks them first). On failure, fills why with
 * what the client is told once the caller has undone its open. */
static int set_metadata(int fd, const struct json *meta, const char *path, enum proto_err *code, char *why,
			size_t len)
{
	*code = PERR_INVALID_ARGUMENT;
	if (meta->n > META_MAX) {
		snprintf(why, len, "at most %d metadata keys per file", META_MAX);
		return -EINVAL;
	}
	for (size_t i = 0; i < meta->n; i++) {
		const struct json *v = meta->items[i];
		const char *k = meta->keys[i];
		if (v->kind != JSON_STR || !*k || strlen(k) > META_KEY_MAX || v->len > META_VALUE_MAX ||
		    strlen(v->str) != v->len) {
			snprintf(why, len, "metadata %.64s: keys are 1..%d bytes and values strings of up to %d bytes, "
				 "without NUL", k, META_KEY_MAX, META_VALUE_MAX);
			return -EINVAL;
		}
		int err = ENOTSUP;
		for (size_t p = 0; err == ENOTSUP && p < sizeof(meta_prefixes) / sizeof(meta_prefixes[0]); p++) {
			char name[32 + META_KEY_MAX];
			snprintf(name, sizeof(name), "%s%s", meta_prefixes[p], k);
			err = fsetxattr(fd, name, v->str, v->len, 0) < 0 ? errno : 0;
			/* Not root of this kernel: trusted.* is not ours to use. */
			if (err == EPERM && p > 0)
				err = ENOTSUP;
		}
		if (err == ENOTSUP) {
			snprintf(why, len, "%s: this file system keeps no metadata for the sandbox (tmpfs before "
				 "Linux 6.6 has no user extended attributes); write the file elsewhere or without "
				 "metadata", path);
			return -ENOTSUP;
		}
		if (err) {
			*code = proto_err_from_errno(-err);
			snprintf(why, len, "%s: %s", path, strerror(err));
			return -err;
		}
	}
	return 0;
}

void op_write_open(struct stream *s, const struct json *req)
{
	struct fs_ctx fc;
	int64_t mode = 0644;
	if (fs_enter(s, req, &fc))
		return;
	if (resolve_path(s, req, "path", &fc, fc.path))
		goto out;
	if (json_get_int(req, "mode", 0, 07777, &mode) == -EINVAL) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "mode must be an integer in 0..07777");
		goto out;
	}
	int rc = json_get_bool(req, "parents", true) ? parent_dirs(fc.path) : 0;
	if (rc) {
		stream_end_errno(s, rc, "create parent directories");
		goto out;
	}
	bool append = json_get_bool(req, "append", false);
	const struct json *meta = json_get(req, "metadata");
	bool with_meta = meta && meta->kind == JSON_OBJ && meta->n;
	char tmp[PATH_MAX] = "";
	/* Not appending over an existing file: the content lands whole or not at all (a
	 * client that goes away after 3 of 10 chunks leaves the old file). */
	int fd = append ? -1 : open_replacement(fc.path, tmp);
	bool created = false;
	if (fd < 0) {
		tmp[0] = 0;
		int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | (append ? O_APPEND : 0);
		/* With metadata the truncation waits until the metadata is on (a refusal
		 * changes nothing), and a file this write made is removed again. */
		if (!append && !with_meta)
			flags |= O_TRUNC;
		fd = open(fc.path, flags | O_EXCL, (mode_t)mode);
		created = fd >= 0;
		if (fd < 0 && errno == EEXIST)
			fd = open(fc.path, flags, (mode_t)mode);
		/* envd gives a file it creates to its user (a chown after the open), so
		 * E2B's watchers see create, chmod, write; a chown to the owner it already
		 * has is that same event here. */
		struct stat own;
		if (created && !fstat(fd, &own) && fchown(fd, own.st_uid, own.st_gid) < 0) {
			int err = -errno;
			close(fd);
			unlink(fc.path);
			stream_end_errno(s, err, fc.path);
			goto out;
		}
	}
	if (fd < 0) {
		stream_end_errno(s, -errno, fc.path);
		goto out;
	}
	if (with_meta) {
		struct stat st;
		enum proto_err code;
		char why[PATH_MAX + 200];
		int err = set_metadata(fd, meta, fc.path, &code, why, sizeof(why));
		if (!err && !append && !tmp[0] && !fstat(fd, &st) && S_ISREG(st.st_mode) && ftruncate(fd, 0) < 0) {
			err = -errno;
			code = proto_err_from_errno(err);
			snprintf(why, sizeof(why), "%s: %s", fc.path, strerror(-err));
		}
		if (err) {
			/* Undone before the answer: a client that looks next finds nothing. */
			close(fd);
			if (tmp[0])
				unlink(tmp);
			if (created)
				unlink(fc.path);
			stream_end_error(s, code, "%s", why);
			goto out;
		}
	}
	struct file_op *f = calloc(1, sizeof(*f));
	if (!f) {
		close(fd);
		if (tmp[0])
			unlink(tmp);
		stream_end_errno(s, -ENOMEM, "write");
		goto out;
	}
	f->fd = fd;
	f->fc = fc;
	snprintf(f->path, sizeof(f->path), "%s", fc.path);
	snprintf(f->tmp, sizeof(f->tmp), "%s", tmp);
	s->ctx = f;
	s->ops = &write_ops;
out:
	fs_leave(&fc);
}

/* ---- unary operations ---- */

void op_stat_open(struct stream *s, const struct json *req)
{
	struct fs_ctx fc;
	if (fs_enter(s, req, &fc))
		return;
	if (!resolve_path(s, req, "path", &fc, fc.path))
		end_with_entry(s, fc.path);
	fs_leave(&fc);
}

void op_exists_open(struct stream *s, const struct json *req)
{
	struct fs_ctx fc;
	struct stat st;
	if (fs_enter(s, req, &fc))
		return;
	if (!resolve_path(s, req, "path", &fc, fc.path)) {
		if (lstat(fc.path, &st) < 0 && errno != ENOENT && errno != ENOTDIR) {
			stream_end_errno(s, -errno, fc.path);
		} else {
			bool exists = lstat(fc.path, &st) == 0;
			struct jw w;
			jw_init(&w);
			jw_obj(&w);
			jw_key(&w, "exists");
			jw_bool(&w, exists);
			if (exists) {
				jw_key(&w, "type");
				jw_str(&w, type_name(st.st_mode));
			}
			jw_obj_end(&w);
			stream_end_jw(s, &w);
		}
	}
	fs_leave(&fc);
}

/* One directory of a listing: its names in byte order, as envd's walk (and the
 * Mitos List) gives them. */
struct list_level {
	struct sorted_dir dir;
	size_t plen; /* fc.path length at this level */
};

/* A listing walks the tree from the loop and pauses whenever the connection is
 * congested, so a huge tree never piles up in the output buffer. */
struct lister {
	struct fs_ctx fc;     /* fc.path: the directory being read */
	struct jw batch;
	size_t count;
	bool truncated;
	int max_depth;
	int depth;            /* levels in lv[] */
	struct list_level lv[LIST_MAX_DEPTH];
};

static void list_pop(struct lister *l)
{
	sorted_dir_close(&l->lv[--l->depth].dir);
}

static void lister_free(struct lister *l)
{
	while (l->depth)
		list_pop(l);
	jw_free(&l->batch);
	free(l);
}

static void list_flush(struct stream *s, struct lister *l)
{
	if (!l->batch.buf)
		return; /* nothing since the last batch */
	jw_arr_end(&l->batch);
	jw_obj_end(&l->batch);
	stream_event_jw(s, &l->batch);
	jw_init(&l->batch);
}

static void list_add(struct stream *s, struct lister *l, const char *path, const struct stat *st)
{
	if (!l->batch.buf) {
		jw_obj(&l->batch);
		jw_key(&l->batch, "entries");
		jw_arr(&l->batch);
	}
	op_write_entry(&l->batch, path, st);
	l->count++;
	if (l->batch.len >= LIST_BATCH_BYTES)
		list_flush(s, l);
}

static int list_push(struct lister *l)
{
	struct list_level *lv = &l->lv[l->depth];
	int rc = sorted_dir_open(&lv->dir, l->fc.path);
	if (rc)
		return rc;
	lv->plen = strlen(l->fc.path);
	l->depth++;
	return 0;
}

static void list_step(struct stream *s)
{
	struct lister *l = s->ctx;
	fs_switch(&l->fc);
	while (l->depth && !stream_congested(s)) {
		struct list_level *lv = &l->lv[l->depth - 1];
		size_t base = lv->plen;
		const char *name = sorted_dir_next(&lv->dir);
		if (!name) {
			list_pop(l);
			if (l->depth)
				l->fc.path[l->lv[l->depth - 1].plen] = 0;
			continue;
		}
		if (l->count >= PROTO_LIST_MAX_ENTRIES) {
			l->truncated = true;
			while (l->depth)
				list_pop(l);
			break;
		}
		struct stat st;
		l->fc.path[base] = 0;
		int n = snprintf(l->fc.path + base, PATH_MAX - base, "%s%s", base > 1 ? "/" : "", name);
		if (n < 0 || (size_t)n >= PATH_MAX - base || lstat(l->fc.path, &st) < 0) {
			l->fc.path[base] = 0;
			continue; /* too long, or vanished while listing */
		}
		list_add(s, l, l->fc.path, &st);
		/* unreadable subdirectories are listed but not entered */
		if (!S_ISDIR(st.st_mode) || l->depth >= l->max_depth || list_push(l))
			l->fc.path[base] = 0;
	}
	fs_leave(&l->fc);
	if (l->depth)
		return; /* resumed by list_writable */
	list_flush(s, l);
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "count");
	jw_int(&w, (int64_t)l->count);
	jw_key(&w, "truncated");
	jw_bool(&w, l->truncated);
	jw_obj_end(&w);
	lister_free(l);
	stream_end_jw(s, &w);
}

static void list_cancel(struct stream *s)
{
	lister_free(s->ctx);
}

static const struct stream_ops list_ops = { .writable = list_step, .cancel = list_cancel };

void op_list_open(struct stream *s, const struct json *req)
{
	int64_t depth = 1;
	struct lister *l = calloc(1, sizeof(*l));
	if (!l) {
		stream_end_errno(s, -ENOMEM, "list");
		return;
	}
	if (fs_enter(s, req, &l->fc)) {
		free(l);
		return;
	}
	int rc = resolve_path(s, req, "path", &l->fc, l->fc.path);
	for (size_t n = strlen(l->fc.path); !rc && n > 1 && l->fc.path[n - 1] == '/'; n--)
		l->fc.path[n - 1] = 0; /* entries are joined with one '/' */
	if (!rc && json_get_int(req, "depth", 1, LIST_MAX_DEPTH, &depth) == -EINVAL) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "depth must be in 1..%d", LIST_MAX_DEPTH);
		rc = -EINVAL;
	}
	struct stat st;
	if (!rc && stat(l->fc.path, &st) < 0) {
		rc = -errno;
		stream_end_errno(s, rc, l->fc.path);
	} else if (!rc && !S_ISDIR(st.st_mode)) {
		rc = -ENOTDIR;
		stream_end_error(s, PERR_NOT_A_DIRECTORY, "%s is not a directory", l->fc.path);
	} else if (!rc && (rc = list_push(l))) {
		stream_end_errno(s, rc, l->fc.path);
	}
	fs_leave(&l->fc);
	if (rc) {
		lister_free(l);
		return;
	}
	l->max_depth = (int)depth;
	jw_init(&l->batch);
	s->ctx = l;
	s->ops = &list_ops;
	list_step(s);
}

/* Removes name under dirfd without following symlinks anywhere in the tree. */
static int remove_tree(int dirfd, const char *name, int depth)
{
	if (unlinkat(dirfd, name, 0) == 0)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	if (depth > REMOVE_MAX_DEPTH)
		return -ELOOP;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		int err = -errno;
		close(fd);
		return err;
	}
	int rc = 0;
	struct dirent *e;
	while (!rc && (e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			rc = remove_tree(fd, e->d_name, depth + 1);
	closedir(d);
	if (!rc && unlinkat(dirfd, name, AT_REMOVEDIR) < 0)
		rc = -errno;
	return rc;
}

void op_remove_open(struct stream *s, const struct json *req)
{
	struct fs_ctx fc;
	struct stat st;
	if (fs_enter(s, req, &fc))
		return;
	if (resolve_path(s, req, "path", &fc, fc.path))
		goto out;
	if (lstat(fc.path, &st) < 0) {
		stream_end_errno(s, -errno, fc.path);
		goto out;
	}
	int rc;
	if (!S_ISDIR(st.st_mode))
		rc = unlink(fc.path) < 0 ? -errno : 0;
	else if (json_get_bool(req, "recursive", false))
		rc = remove_tree(AT_FDCWD, fc.path, 0);
	else
		rc = rmdir(fc.path) < 0 ? -errno : 0;
	if (rc)
		stream_end_errno(s, rc, fc.path);
	else
		stream_end_ok(s);
out:
	fs_leave(&fc);
}

void op_mkdir_open(struct stream *s, const struct json *req)
{
	struct fs_ctx fc;
	struct stat st;
	int64_t mode = 0755;
	if (fs_enter(s, req, &fc))
		return;
	if (resolve_path(s, req, "path", &fc, fc.path))
		goto out;
	if (json_get_int(req, "mode", 0, 07777, &mode) == -EINVAL) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "mode must be an integer in 0..07777");
		goto out;
	}
	if (lstat(fc.path, &st) == 0) {
		if (S_ISDIR(st.st_mode))
			stream_end_error(s, PERR_EXISTS, "%s already exists", fc.path);
		else
			stream_end_error(s, PERR_NOT_A_DIRECTORY, "%s exists and is not a directory", fc.path);
		goto out;
	}
	int rc = json_get_bool(req, "parents", true) ? fs_mkdir_parents(fc.path, (mode_t)mode)
						      : mkdir(fc.path, (mode_t)mode) < 0 ? -errno : 0;
	if (rc)
		stream_end_errno(s, rc, fc.path);
	else
		end_with_entry(s, fc.path);
out:
	fs_leave(&fc);
}

void op_rename_open(struct stream *s, const struct json *req)
{
	struct fs_ctx fc;
	char to[PATH_MAX];
	if (fs_enter(s, req, &fc))
		return;
	if (resolve_path(s, req, "from", &fc, fc.path) || resolve_path(s, req, "to", &fc, to))
		goto out;
	if (rename(fc.path, to) < 0)
		stream_end_errno(s, -errno, fc.path);
	else
		end_with_entry(s, to);
out:
	fs_leave(&fc);
}
