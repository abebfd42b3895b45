/* archive: a directory tree (or one file) out as a tar stream; untar: a tar
 * stream in, extracted under a directory. Both run as the requested user and
 * move the bytes under the stream's flow control, so neither holds an archive in
 * memory. Only directories and regular files travel: symlinks and special
 * files are left out of an archive and refused in one, so extraction can never
 * be steered outside its destination. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/fs_ctx.h"
#include "agent/ops.h"
#include "agent/tar.h"

#define ARCHIVE_MAX_DEPTH 64

/* ---- archive ---- */

struct level {
	struct sorted_dir dir;
	size_t rel_len; /* length of the directory's own relative path */
};

struct archive {
	struct fs_ctx fc;
	char root[PATH_MAX];
	char rel[PATH_MAX];
	struct level lv[ARCHIVE_MAX_DEPTH];
	int depth;
	int fd;
	uint64_t size, left; /* of the member whose content is being sent */
	uint8_t out[TAR_HEADER_MAX]; /* a header, a member's padding or the end blocks */
	size_t out_len, out_off;
	uint64_t bytes;
	bool last; /* the end blocks are in out */
};

static void archive_free(struct archive *a)
{
	for (int d = 0; d < a->depth; d++)
		sorted_dir_close(&a->lv[d].dir);
	if (a->fd >= 0)
		close(a->fd);
	free(a);
}

static int push_dir(struct archive *a, const char *path, size_t rel_len)
{
	struct level *l = &a->lv[a->depth];
	int rc = sorted_dir_open(&l->dir, path);
	if (rc)
		return rc;
	l->rel_len = rel_len;
	a->depth++;
	return 0;
}

/* Queues the next member's header (and opens its content); the end blocks after
 * the last. A path that vanished while we walk is simply not there any more. */
static int next_member(struct archive *a)
{
	while (a->depth > 0) {
		struct level *l = &a->lv[a->depth - 1];
		const char *name = sorted_dir_next(&l->dir);
		if (!name) {
			sorted_dir_close(&l->dir);
			a->depth--;
			continue;
		}
		int k = snprintf(a->rel + l->rel_len, sizeof(a->rel) - l->rel_len, "%s%s", l->rel_len ? "/" : "",
				 name);
		char path[PATH_MAX];
		if (k < 0 || (size_t)k >= sizeof(a->rel) - l->rel_len - 1 ||
		    snprintf(path, sizeof(path), "%s/%s", a->root, a->rel) >= (int)sizeof(path))
			return -ENAMETOOLONG;
		struct stat st;
		if (lstat(path, &st) < 0) {
			if (errno == ENOENT)
				continue;
			return -errno;
		}
		size_t rel_len = strlen(a->rel);
		if (S_ISDIR(st.st_mode)) {
			a->rel[rel_len] = '/'; /* a directory member's name ends in '/' */
			a->rel[rel_len + 1] = 0;
			a->out_len = tar_header(a->out, a->rel, TAR_DIR, st.st_mode, 0, st.st_mtime);
			a->rel[rel_len] = 0;
			if (a->depth == ARCHIVE_MAX_DEPTH)
				return -ELOOP;
			int rc = push_dir(a, path, rel_len);
			if (rc && rc != -ENOENT)
				return rc;
		} else if (S_ISREG(st.st_mode)) {
			if ((a->fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY)) < 0) {
				if (errno == ENOENT)
					continue;
				return -errno;
			}
			a->size = a->left = (uint64_t)st.st_size;
			a->out_len = tar_header(a->out, a->rel, TAR_REG, st.st_mode, a->size, st.st_mtime);
		} else {
			continue;
		}
		a->out_off = 0;
		return 0;
	}
	memset(a->out, 0, 2 * TAR_BLOCK);
	a->out_len = 2 * TAR_BLOCK;
	a->out_off = 0;
	a->last = true;
	return 0;
}

/* END {"bytes": n}: the tar's size, either way. */
static void end_with_bytes(struct stream *s, uint64_t n)
{
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "bytes");
	jw_int(&w, (int64_t)n);
	jw_obj_end(&w);
	stream_end_jw(s, &w);
}

static void archive_end(struct stream *s, struct archive *a, int err)
{
	s->ctx = NULL;
	fs_leave(&a->fc);
	if (err)
		stream_end_errno(s, err, a->rel[0] ? a->rel : a->root);
	else
		end_with_bytes(s, a->bytes);
	archive_free(a);
}

static void archive_pump(struct stream *s)
{
	static uint8_t buf[PROTO_DATA_CHUNK];
	struct archive *a = s->ctx;
	size_t space;
	fs_switch(&a->fc);
	while ((space = stream_send_space(s)) > 0) {
		if (a->out_off < a->out_len) {
			size_t k = a->out_len - a->out_off < space ? a->out_len - a->out_off : space;
			stream_data(s, PROTO_CH_MAIN, false, a->out + a->out_off, k);
			a->out_off += k;
			a->bytes += k;
		} else if (a->fd >= 0 && a->left) {
			size_t want = a->left < space ? (size_t)a->left : space;
			ssize_t n = read(a->fd, buf, want);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				archive_end(s, a, -errno);
				return;
			}
			if (n == 0) { /* shrank since its header: the promised size is kept with zeros */
				memset(buf, 0, want);
				n = (ssize_t)want;
			}
			stream_data(s, PROTO_CH_MAIN, false, buf, (size_t)n);
			a->left -= (uint64_t)n;
			a->bytes += (uint64_t)n;
		} else if (a->fd >= 0) {
			size_t pad = tar_padding(a->size);
			close(a->fd);
			a->fd = -1;
			memset(a->out, 0, pad);
			a->out_len = pad;
			a->out_off = 0;
		} else if (a->last) {
			stream_data(s, PROTO_CH_MAIN, true, NULL, 0);
			archive_end(s, a, 0);
			return;
		} else {
			int rc = next_member(a);
			if (rc) {
				archive_end(s, a, rc);
				return;
			}
		}
	}
	fs_leave(&a->fc);
}

static void archive_cancel(struct stream *s)
{
	if (s->ctx)
		archive_free(s->ctx);
}

static const struct stream_ops archive_ops = { .writable = archive_pump, .cancel = archive_cancel };

void op_archive_open(struct stream *s, const struct json *req)
{
	struct archive *a = calloc(1, sizeof(*a));
	if (!a) {
		stream_end_errno(s, -ENOMEM, "archive");
		return;
	}
	a->fd = -1;
	if (fs_enter(s, req, &a->fc)) {
		free(a);
		return;
	}
	struct stat st;
	int rc = 0;
	if (resolve_path(s, req, "path", &a->fc, a->root))
		goto ended;
	for (size_t n = strlen(a->root); n > 1 && a->root[n - 1] == '/'; n--)
		a->root[n - 1] = 0;
	if (stat(a->root, &st) < 0) {
		rc = -errno;
	} else if (S_ISDIR(st.st_mode)) {
		rc = push_dir(a, a->root, 0);
	} else if (!S_ISREG(st.st_mode)) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "%s is neither a directory nor a regular file", a->root);
		goto ended;
	} else {
		/* One file: an archive of that file under its own name. */
		char *slash = strrchr(a->root, '/');
		snprintf(a->rel, sizeof(a->rel), "%s", slash ? slash + 1 : a->root);
		if ((a->fd = open(a->root, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0)
			rc = -errno;
		a->size = a->left = (uint64_t)st.st_size;
		a->out_len = tar_header(a->out, a->rel, TAR_REG, st.st_mode, a->size, st.st_mtime);
	}
	if (rc) {
		stream_end_errno(s, rc, a->root);
		goto ended;
	}
	fs_leave(&a->fc);
	s->ctx = a;
	s->ops = &archive_ops;
	archive_pump(s);
	return;
ended: /* s was ended with the reason */
	fs_leave(&a->fc);
	archive_free(a);
}

/* ---- untar ---- */

struct untar {
	struct fs_ctx fc;
	char dest[PATH_MAX];
	int destfd;
	struct tar_dec dec;
	int fd;        /* the regular file being written, or -1 */
	int64_t mtime; /* of that file, set when it is complete */
	uint64_t bytes;
};

static void untar_free(struct untar *u)
{
	if (u->fd >= 0)
		close(u->fd);
	if (u->destfd >= 0)
		close(u->destfd);
	tar_dec_free(&u->dec);
	free(u);
}

/* Opens the directory that holds rel's last component, making the ones on the way,
 * one component at a time and never through a symlink. *leaf: that component. */
static int open_parent(int destfd, char *rel, const char **leaf)
{
	int dfd = dup(destfd);
	if (dfd < 0)
		return -errno;
	char *p = rel, *slash;
	while ((slash = strchr(p, '/'))) {
		*slash = 0;
		if (mkdirat(dfd, p, 0755) < 0 && errno != EEXIST) {
			int err = -errno;
			*slash = '/';
			close(dfd);
			return err;
		}
		int next = openat(dfd, p, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		int err = -errno;
		*slash = '/';
		close(dfd);
		if (next < 0)
			return err == -ELOOP ? -EPERM : err;
		dfd = next;
		p = slash + 1;
	}
	*leaf = p;
	return dfd;
}

static void close_file(struct untar *u)
{
	if (u->fd < 0)
		return;
	struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_sec = u->mtime } };
	futimens(u->fd, ts);
	close(u->fd);
	u->fd = -1;
}

/* A member's header: make the directory, or open the file its content goes to. */
static int untar_member(struct stream *s, struct untar *u)
{
	const struct tar_entry *e = &u->dec.e;
	char rel[PATH_MAX];
	close_file(u);
	int rc = tar_clean_name(e->name, rel);
	if (rc < 0) {
		stream_end_error(s, PERR_PERMISSION_DENIED, "refusing tar member '%.200s': it leads outside %s",
				 e->name, u->dest);
		return -EPERM;
	}
	if (e->type != TAR_REG && e->type != TAR_DIR) {
		stream_end_error(s, PERR_PERMISSION_DENIED,
				 "refusing tar member '%.200s' of type '%c': only files and directories are extracted",
				 e->name, e->type);
		return -EPERM;
	}
	if (rc == 1) { /* the destination itself ("./") */
		if (e->type == TAR_DIR)
			return 0;
		stream_end_error(s, PERR_INVALID_ARGUMENT, "tar member '%.200s' names no file", e->name);
		return -EINVAL;
	}
	const char *leaf = rel;
	int dfd = open_parent(u->destfd, rel, &leaf);
	if (dfd < 0) {
		stream_end_errno(s, dfd, rel);
		return dfd;
	}
	if (e->type == TAR_DIR) {
		rc = mkdirat(dfd, leaf, e->mode & 07777 ? e->mode & 07777 : 0755) < 0 && errno != EEXIST ? -errno : 0;
		struct stat st;
		if (!rc && fstatat(dfd, leaf, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISDIR(st.st_mode))
			rc = -ENOTDIR;
	} else {
		/* O_NOFOLLOW: a symlink already at that name is refused, not written through. */
		u->fd = openat(dfd, leaf, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY,
			       e->mode & 07777 ? e->mode & 07777 : 0644);
		rc = u->fd < 0 ? (errno == ELOOP ? -EPERM : -errno) : 0;
		u->mtime = e->mtime;
	}
	close(dfd);
	if (rc)
		stream_end_errno(s, rc, rel);
	return rc;
}

static void untar_end(struct stream *s, struct untar *u)
{
	close_file(u);
	end_with_bytes(s, u->bytes);
	untar_free(u);
}

static void untar_data(struct stream *s, uint8_t channel, bool fin, const uint8_t *p, size_t n)
{
	struct untar *u = s->ctx;
	struct fs_ctx fc = u->fc;
	size_t total = n;
	int rc = 0;
	(void)channel;
	fs_switch(&fc);
	while (n && !rc) {
		const uint8_t *data;
		size_t len;
		enum tar_ev ev = tar_dec_feed(&u->dec, &p, &n, &data, &len);
		if (ev == TAR_ERROR) {
			stream_end_error(s, PERR_INVALID_ARGUMENT, "%s", u->dec.err);
			rc = -EINVAL;
		} else if (ev == TAR_ENTRY) {
			rc = untar_member(s, u);
		} else if (ev == TAR_DATA && u->fd >= 0) {
			while (len && !rc) {
				ssize_t w = write(u->fd, data, len);
				if (w < 0 && errno != EINTR) {
					rc = -errno;
					stream_end_errno(s, rc, "write");
				} else if (w > 0) {
					data += w;
					len -= (size_t)w;
				}
			}
		}
	}
	/* Every error above has ended (and freed) s already. */
	if (rc) {
		untar_free(u);
	} else {
		u->bytes += total;
		stream_consumed(s, total);
		if (fin && !tar_dec_complete(&u->dec)) {
			stream_end_error(s, PERR_INVALID_ARGUMENT, "the archive ended inside a member");
			untar_free(u);
		} else if (fin) {
			untar_end(s, u);
		}
	}
	fs_leave(&fc);
}

static void untar_cancel(struct stream *s)
{
	if (s->ctx)
		untar_free(s->ctx);
}

static const struct stream_ops untar_ops = { .data = untar_data, .cancel = untar_cancel };

void op_untar_open(struct stream *s, const struct json *req)
{
	struct untar *u = calloc(1, sizeof(*u));
	if (!u) {
		stream_end_errno(s, -ENOMEM, "untar");
		return;
	}
	u->fd = u->destfd = -1;
	tar_dec_init(&u->dec);
	if (fs_enter(s, req, &u->fc)) {
		untar_free(u);
		return;
	}
	int rc = 0;
	if (resolve_path(s, req, "path", &u->fc, u->dest))
		rc = -EINVAL;
	else if ((rc = fs_mkdir_parents(u->dest, 0755)) ||
		 (u->destfd = open(u->dest, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) {
		rc = rc ? rc : -errno;
		stream_end_errno(s, rc, u->dest);
	}
	fs_leave(&u->fc);
	if (rc) {
		untar_free(u);
		return;
	}
	s->ctx = u;
	s->ops = &untar_ops;
}
