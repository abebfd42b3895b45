/* watch: filesystem change events under a directory (E2B's WatchDir), from
 * inotify. Reading pauses while the connection is congested; if the kernel's
 * queue overflows meanwhile, the client is told so. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/fs_ctx.h"
#include "agent/loop.h"
#include "agent/ops.h"

#define WATCH_MAX_DIRS 8192
#define WATCH_MAX_DEPTH 64
#define WATCH_BATCH_BYTES (64u << 10)
#define WATCH_MASK (IN_CREATE | IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | \
		    IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

/* inotify queues a move's two halves one after the other, and a read may come between
 * them (inotify(7)): a read that ends with a move's first half holds it this long for
 * the second, so that both reach the client in one batch, where it pairs them. */
#define MOVE_PAIR_MS 50

struct watched_dir {
	int wd;
	char *rel; /* path relative to the watched root, "" for the root */
};

struct dirwatch {
	struct stream *s;
	int fd;
	struct watch w;
	bool recursive;
	bool entries; /* events carry the ENTRY of what they name */
	bool sync_due; /* the client asked for a sync: answer once the queue is empty */
	char root[PATH_MAX];
	struct watched_dir *dirs;
	size_t ndirs, cap;
	bool truncated; /* more directories than WATCH_MAX_DIRS */
	uint32_t temp_cookie; /* a write's replacement moving over its target */
	struct {
		char name[PATH_MAX]; /* "" when nothing is held */
		bool is_dir;
		uint32_t cookie;
		struct timer timer;
	} held;
};

static void dirwatch_free(struct dirwatch *d)
{
	timer_disarm(&d->held.timer);
	watch_del(&d->w);
	close(d->fd);
	for (size_t i = 0; i < d->ndirs; i++)
		free(d->dirs[i].rel);
	free(d->dirs);
	free(d);
}

static const char *rel_of(const struct dirwatch *d, int wd)
{
	for (size_t i = 0; i < d->ndirs; i++)
		if (d->dirs[i].wd == wd)
			return d->dirs[i].rel;
	return NULL;
}

/* Watches root/rel and, when recursive, the directories below it. */
static int add_tree(struct dirwatch *d, const char *rel, int depth)
{
	char path[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s%s%s", d->root, *rel ? "/" : "", rel) >= PATH_MAX)
		return -ENAMETOOLONG;
	if (d->ndirs >= WATCH_MAX_DIRS) {
		d->truncated = true;
		return 0;
	}
	int wd = inotify_add_watch(d->fd, path, WATCH_MASK);
	if (wd < 0)
		return -errno;
	if (!rel_of(d, wd)) {
		if (d->ndirs == d->cap) {
			size_t cap = d->cap ? d->cap * 2 : 16;
			struct watched_dir *nd = realloc(d->dirs, cap * sizeof(*nd));
			if (!nd)
				return -ENOMEM;
			d->dirs = nd;
			d->cap = cap;
		}
		d->dirs[d->ndirs].wd = wd;
		if (!(d->dirs[d->ndirs].rel = strdup(rel)))
			return -ENOMEM;
		d->ndirs++;
	}
	if (!d->recursive || depth >= WATCH_MAX_DEPTH)
		return 0;
	DIR *dir = opendir(path);
	if (!dir)
		return 0; /* vanished or unreadable: its events simply do not come */
	struct dirent *e;
	while ((e = readdir(dir))) {
		char sub[PATH_MAX];
		if (e->d_type != DT_DIR || !strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (snprintf(sub, sizeof(sub), "%s%s%s", rel, *rel ? "/" : "", e->d_name) < PATH_MAX)
			add_tree(d, sub, depth + 1);
	}
	closedir(dir);
	return 0;
}

static const char *event_type(uint32_t mask)
{
	if (mask & (IN_CREATE | IN_MOVED_TO))
		return "create";
	if (mask & IN_MODIFY)
		return "write";
	if (mask & IN_DELETE)
		return "remove";
	if (mask & IN_MOVED_FROM)
		return "rename";
	if (mask & IN_ATTRIB)
		return "chmod";
	return NULL;
}

static void put_event(struct jw *w, const struct dirwatch *d, const char *name, const char *type, bool is_dir,
		      uint32_t cookie)
{
	jw_obj(w);
	jw_key(w, "name");
	jw_str(w, name);
	jw_key(w, "type");
	jw_str(w, type);
	jw_key(w, "is_dir");
	jw_bool(w, is_dir);
	if (cookie) {
		jw_key(w, "cookie"); /* a move's two halves share it */
		jw_int(w, cookie);
	}
	/* Not for a removal or a move's old name: that path names something else by now,
	 * or nothing. */
	char path[PATH_MAX];
	struct stat st;
	if (d->entries && strcmp(type, "remove") && strcmp(type, "rename") &&
	    snprintf(path, sizeof(path), "%s%s%s", d->root, strcmp(d->root, "/") ? "/" : "", name) < PATH_MAX &&
	    lstat(path, &st) == 0) {
		jw_key(w, "entry");
		op_write_entry(w, path, &st);
	}
	jw_obj_end(w);
}

/* Puts the held first half of a move, if any, into w; returns whether it did. */
static bool put_held(struct dirwatch *d, struct jw *w)
{
	if (!d->held.name[0])
		return false;
	timer_disarm(&d->held.timer);
	put_event(w, d, d->held.name, "rename", d->held.is_dir, d->held.cookie);
	d->held.name[0] = 0;
	return true;
}

static void batch_begin(struct jw *w)
{
	jw_init(w);
	jw_obj(w);
	jw_key(w, "events");
	jw_arr(w);
}

static void batch_send(struct stream *s, struct jw *w, unsigned count)
{
	jw_arr_end(w);
	jw_obj_end(w);
	if (count)
		stream_event_jw(s, w);
	else
		jw_free(w);
}

/* Its second half did not come: the thing moved out of the watched tree. */
static void held_expired(struct timer *t)
{
	struct dirwatch *d = (struct dirwatch *)((char *)t - offsetof(struct dirwatch, held.timer));
	struct jw w;
	batch_begin(&w);
	batch_send(d->s, &w, put_held(d, &w));
}

/* Reads one buffer of the kernel's queue and sends its events: 1 when it read some,
 * 0 when the queue was empty, -1 when the watch ended (d is freed). */
static int read_events(struct stream *s, struct dirwatch *d)
{
	char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool root_gone = false;
	ssize_t n = read(d->fd, buf, sizeof(buf));
	if (n <= 0)
		return 0;
	struct jw w;
	batch_begin(&w);
	unsigned count = put_held(d, &w);
	for (char *p = buf; p < buf + n;) {
		struct inotify_event *ev = (struct inotify_event *)p;
		p += sizeof(*ev) + ev->len;
		if (ev->mask & IN_Q_OVERFLOW) {
			jw_obj(&w);
			jw_key(&w, "type");
			jw_str(&w, "overflow");
			jw_obj_end(&w);
			count++;
			continue;
		}
		const char *rel = rel_of(d, ev->wd), *type = event_type(ev->mask);
		if (rel && !*rel && (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)))
			root_gone = true;
		if (!rel || !type || !ev->len)
			continue;
		if (op_write_is_temp(ev->name)) {
			if (ev->mask & IN_MOVED_FROM)
				d->temp_cookie = ev->cookie;
			continue;
		}
		if ((ev->mask & IN_MOVED_TO) && ev->cookie && ev->cookie == d->temp_cookie)
			type = "write";
		char name[PATH_MAX];
		snprintf(name, sizeof(name), "%s%s%s", rel, *rel ? "/" : "", ev->name);
		if (d->recursive && (ev->mask & IN_ISDIR) && (ev->mask & (IN_CREATE | IN_MOVED_TO)))
			add_tree(d, name, 1);
		uint32_t cookie = ev->mask & (IN_MOVED_FROM | IN_MOVED_TO) ? ev->cookie : 0;
		if ((ev->mask & IN_MOVED_FROM) && cookie && p >= buf + n && !root_gone) {
			snprintf(d->held.name, sizeof(d->held.name), "%s", name);
			d->held.is_dir = (ev->mask & IN_ISDIR) != 0;
			d->held.cookie = cookie;
			timer_arm(&d->held.timer, loop_now_ms() + MOVE_PAIR_MS, held_expired);
			continue;
		}
		put_event(&w, d, name, type, (ev->mask & IN_ISDIR) != 0, cookie);
		count++;
		/* Entries make events big: a batch stays far below a frame's limit (never
		 * between a move's two halves, which the client pairs within a batch). */
		if (w.len >= WATCH_BATCH_BYTES && !(ev->mask & IN_MOVED_FROM)) {
			batch_send(s, &w, count);
			batch_begin(&w);
			count = 0;
		}
	}
	batch_send(s, &w, count);
	if (root_gone) {
		dirwatch_free(d);
		stream_end_error(s, PERR_NOT_FOUND, "the watched directory was removed or moved");
		return -1;
	}
	return 1;
}

/* The kernel queues a change's event before the system call that made it returns, so
 * once the queue is empty every change made before the sync was asked for has been
 * sent. A move's first half still held then has no second half in the tree. */
static void send_synced(struct stream *s, struct dirwatch *d)
{
	struct jw w;
	batch_begin(&w);
	put_held(d, &w);
	jw_arr_end(&w);
	jw_key(&w, "synced");
	jw_bool(&w, true);
	jw_obj_end(&w);
	stream_event_jw(s, &w);
	d->sync_due = false;
}

/* A sync reads on until the queue is empty, but a few buffers at a time: a sandbox that
 * keeps changing files must not hold the agent's loop (EPOLLIN brings it back). */
#define SYNC_READS_AT_ONCE 16

static void watch_read(struct stream *s)
{
	struct dirwatch *d = s->ctx;
	unsigned reads = 0;
	int rc;
	do {
		if (stream_congested(s)) {
			watch_set(&d->w, 0); /* events wait in the kernel queue; writable resumes */
			return;
		}
		watch_set(&d->w, EPOLLIN);
		rc = read_events(s, d);
	} while (rc > 0 && d->sync_due && ++reads < SYNC_READS_AT_ONCE);
	if (rc == 0 && d->sync_due)
		send_synced(s, d);
}

/* EVENT {"sync": true}: see send_synced. */
static void watch_event(struct stream *s, const struct json *ev)
{
	struct dirwatch *d = s->ctx;
	if (!json_get_bool(ev, "sync", false))
		return;
	d->sync_due = true;
	watch_read(s);
}

static void watch_cancel(struct stream *s)
{
	dirwatch_free(s->ctx);
}

static const struct stream_ops watch_ops = { .event = watch_event, .writable = watch_read, .cancel = watch_cancel };

static void watch_readable(struct watch *w, uint32_t events)
{
	(void)events;
	watch_read(((struct dirwatch *)((char *)w - offsetof(struct dirwatch, w)))->s);
}

void op_watch_open(struct stream *s, const struct json *req)
{
	struct fs_ctx fc;
	struct stat st;
	if (fs_enter(s, req, &fc))
		return;
	struct dirwatch *d;
	int rc;
	if (resolve_path(s, req, "path", &fc, fc.path))
		goto out;
	if (stat(fc.path, &st) < 0) {
		stream_end_errno(s, -errno, fc.path);
		goto out;
	}
	if (!S_ISDIR(st.st_mode)) {
		stream_end_error(s, PERR_NOT_A_DIRECTORY, "%s is not a directory", fc.path);
		goto out;
	}
	d = calloc(1, sizeof(*d));
	if (!d || (d->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0) {
		rc = d ? -errno : -ENOMEM;
		free(d);
		stream_end_errno(s, rc, "inotify");
		goto out;
	}
	d->s = s;
	d->recursive = json_get_bool(req, "recursive", false);
	d->entries = json_get_bool(req, "entries", false);
	snprintf(d->root, sizeof(d->root), "%s", fc.path);
	for (size_t n = strlen(d->root); n > 1 && d->root[n - 1] == '/'; n--)
		d->root[n - 1] = 0;
	if ((rc = add_tree(d, "", 0)) || (rc = watch_add(&d->w, d->fd, EPOLLIN, watch_readable))) {
		dirwatch_free(d);
		stream_end_errno(s, rc, fc.path);
		goto out;
	}
	s->ctx = d;
	s->ops = &watch_ops;
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "started");
	jw_bool(&w, true);
	jw_key(&w, "path");
	jw_str(&w, d->root);
	jw_key(&w, "truncated");
	jw_bool(&w, d->truncated);
	jw_key(&w, "sync");
	jw_bool(&w, true);
	jw_obj_end(&w);
	stream_event_jw(s, &w);
out:
	fs_leave(&fc);
}
