/* File operations: streamed read and write, stat, exists, list, remove, mkdir,
 * rename. Paths and sizes come from the client and are checked here. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/ops.h"
#include "agent/users.h"

#define LIST_MAX_DEPTH 64
#define LIST_MAX_ENTRIES 100000
#define LIST_BATCH_BYTES (64u << 10)
#define REMOVE_MAX_DEPTH 256

/* ---- identity and paths ---- */

/* File operations run with the requested user's filesystem identity, so
 * permissions are checked as for that user and new files belong to them. */
struct fs_ctx {
	struct user_info user;
	bool has_user;
	bool switched;
	char path[PATH_MAX];
};

static int fs_enter(struct stream *s, const struct json *req, struct fs_ctx *fc)
{
	const char *name = json_get_str(req, "user");
	memset(fc, 0, sizeof(*fc));
	if (name) {
		if (user_lookup(name, &fc->user)) {
			stream_end_error(s, PERR_INVALID_ARGUMENT, "unknown user '%s'", name);
			return -EINVAL;
		}
		fc->has_user = true;
		if (fc->user.uid != geteuid()) {
			if (geteuid() != 0) {
				stream_end_error(s, PERR_PERMISSION_DENIED,
						 "the agent is not root and cannot act as '%s'", name);
				return -EPERM;
			}
			setfsgid(fc->user.gid);
			setfsuid(fc->user.uid);
			fc->switched = true;
		}
	}
	return 0;
}

static void fs_leave(struct fs_ctx *fc)
{
	if (fc->switched) {
		setfsuid(geteuid());
		setfsgid(getegid());
		fc->switched = false;
	}
}

/* Resolves key's path into out: absolute as given, "~" and relative paths
 * against the user's home. Ends s on error. */
static int resolve_path(struct stream *s, const struct json *req, const char *key,
			const struct fs_ctx *fc, char *out)
{
	const struct json *v = json_get(req, key);
	if (!v || v->kind != JSON_STR || !v->len || strlen(v->str) != v->len) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "%s must be a non-empty string without NUL", key);
		return -EINVAL;
	}
	const char *p = v->str, *home = fc->has_user ? fc->user.home : getenv("HOME");
	int n;
	if (!home || !*home)
		home = "/";
	if (p[0] == '/')
		n = snprintf(out, PATH_MAX, "%s", p);
	else if (p[0] == '~' && (p[1] == 0 || p[1] == '/'))
		n = snprintf(out, PATH_MAX, "%s%s", home, p + 1);
	else
		n = snprintf(out, PATH_MAX, "%s/%s", home, p);
	if (n < 0 || n >= PATH_MAX) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "%s is too long", key);
		return -ENAMETOOLONG;
	}
	return 0;
}

static int mkdir_parents(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -errno;
	struct stat st;
	if (stat(tmp, &st) < 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

static int parent_dirs(const char *path)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = 0;
	return mkdir_parents(dir, 0755);
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

static void write_entry(struct jw *w, const char *path, const struct stat *st)
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
		char target[PATH_MAX];
		ssize_t tn = readlink(path, target, sizeof(target) - 1);
		if (tn >= 0) {
			jw_key(w, "symlink_target");
			jw_strn(w, target, (size_t)tn);
		}
	}
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
	write_entry(&w, path, &st);
	jw_obj_end(&w);
	stream_end_jw(s, &w);
}

/* ---- read ---- */

struct file_op {
	int fd;
	uint64_t remaining; /* read: bytes still to send */
	uint64_t done;
	char path[PATH_MAX];
};

static void file_op_free(struct file_op *f)
{
	if (f->fd >= 0)
		close(f->fd);
	free(f);
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
			int err = -errno;
			s->ctx = NULL;
			stream_end_errno(s, err, f->path);
			file_op_free(f);
			return;
		}
		if (n == 0) {
			stream_data(s, PROTO_CH_MAIN, true, NULL, 0);
			struct jw w;
			jw_init(&w);
			jw_obj(&w);
			jw_key(&w, "bytes");
			jw_int(&w, (int64_t)f->done);
			jw_obj_end(&w);
			file_op_free(f);
			stream_end_jw(s, &w);
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

static void write_data(struct stream *s, uint8_t channel, bool fin, const uint8_t *p, size_t n)
{
	struct file_op *f = s->ctx;
	(void)channel;
	while (n) {
		ssize_t w = write(f->fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			int err = -errno;
			s->ctx = NULL;
			stream_end_errno(s, err, f->path);
			file_op_free(f);
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
	s->ctx = NULL;
	/* close() reports deferred write errors (quota, NFS-like filesystems). */
	if (close(fd) < 0) {
		stream_end_errno(s, -errno, f->path);
	} else {
		struct jw w;
		jw_init(&w);
		jw_obj(&w);
		jw_key(&w, "bytes");
		jw_int(&w, (int64_t)f->done);
		jw_key(&w, "path");
		jw_str(&w, f->path);
		jw_obj_end(&w);
		stream_end_jw(s, &w);
	}
	file_op_free(f);
}

static const struct stream_ops write_ops = { .data = write_data, .cancel = file_cancel };

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
	int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY;
	flags |= json_get_bool(req, "append", false) ? O_APPEND : O_TRUNC;
	int fd = open(fc.path, flags, (mode_t)mode);
	if (fd < 0) {
		stream_end_errno(s, -errno, fc.path);
		goto out;
	}
	struct file_op *f = calloc(1, sizeof(*f));
	if (!f) {
		close(fd);
		stream_end_errno(s, -ENOMEM, "write");
		goto out;
	}
	f->fd = fd;
	snprintf(f->path, sizeof(f->path), "%s", fc.path);
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

struct lister {
	struct stream *s;
	struct jw batch;
	size_t count;
	bool truncated;
};

static void list_flush(struct lister *l)
{
	if (!l->count && !l->batch.buf)
		return;
	jw_arr_end(&l->batch);
	jw_obj_end(&l->batch);
	stream_event_jw(l->s, &l->batch);
	jw_init(&l->batch);
}

static void list_add(struct lister *l, const char *path, const struct stat *st)
{
	if (!l->batch.buf) {
		jw_obj(&l->batch);
		jw_key(&l->batch, "entries");
		jw_arr(&l->batch);
	}
	write_entry(&l->batch, path, st);
	l->count++;
	if (l->batch.len >= LIST_BATCH_BYTES)
		list_flush(l);
}

static int list_dir(struct lister *l, const char *dir, int depth)
{
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (l->count >= LIST_MAX_ENTRIES) {
			l->truncated = true;
			break;
		}
		char path[PATH_MAX];
		struct stat st;
		if (snprintf(path, sizeof(path), "%s/%s", strcmp(dir, "/") ? dir : "", e->d_name) >= PATH_MAX)
			continue;
		if (lstat(path, &st) < 0)
			continue; /* vanished while listing */
		list_add(l, path, &st);
		if (S_ISDIR(st.st_mode) && depth > 1)
			list_dir(l, path, depth - 1); /* unreadable subdirectories are skipped */
	}
	closedir(d);
	return 0;
}

void op_list_open(struct stream *s, const struct json *req)
{
	struct fs_ctx fc;
	int64_t depth = 1;
	if (fs_enter(s, req, &fc))
		return;
	if (resolve_path(s, req, "path", &fc, fc.path))
		goto out;
	if (json_get_int(req, "depth", 1, LIST_MAX_DEPTH, &depth) == -EINVAL) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "depth must be in 1..%d", LIST_MAX_DEPTH);
		goto out;
	}
	struct stat st;
	if (stat(fc.path, &st) < 0) {
		stream_end_errno(s, -errno, fc.path);
		goto out;
	}
	if (!S_ISDIR(st.st_mode)) {
		stream_end_error(s, PERR_NOT_A_DIRECTORY, "%s is not a directory", fc.path);
		goto out;
	}
	struct lister l = { .s = s };
	jw_init(&l.batch);
	int rc = list_dir(&l, fc.path, (int)depth);
	if (rc) {
		jw_free(&l.batch);
		stream_end_errno(s, rc, fc.path);
		goto out;
	}
	list_flush(&l);
	jw_free(&l.batch);
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "count");
	jw_int(&w, (int64_t)l.count);
	jw_key(&w, "truncated");
	jw_bool(&w, l.truncated);
	jw_obj_end(&w);
	stream_end_jw(s, &w);
out:
	fs_leave(&fc);
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
		stream_end_error(s, PERR_EXISTS, "%s already exists", fc.path);
		goto out;
	}
	int rc = json_get_bool(req, "parents", true) ? mkdir_parents(fc.path, (mode_t)mode)
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
