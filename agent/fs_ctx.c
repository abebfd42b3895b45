#include "agent/fs_ctx.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/fsuid.h>
#include <unistd.h>

/* Takes on fc's identity (again, for operations resumed from the loop). */
void fs_switch(const struct fs_ctx *fc)
{
	if (fc->switched) {
		setfsgid(fc->user.gid);
		setfsuid(fc->user.uid);
	}
}

const char *request_user(const struct json *req)
{
	const char *name = json_get_str(req, "user"), *fallback = json_get_str(req, "default_user");
	struct user_info ui;
	if (!name && fallback && !user_lookup(fallback, &ui))
		name = fallback;
	return name;
}

int fs_enter(struct stream *s, const struct json *req, struct fs_ctx *fc)
{
	const char *name = request_user(req);
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
			fc->switched = true;
		}
	}
	fs_switch(fc);
	return 0;
}

void fs_leave(const struct fs_ctx *fc)
{
	if (fc->switched) {
		setfsuid(geteuid());
		setfsgid(getegid());
	}
}

/* Resolves key's path into out: absolute as given, "~" and relative paths
 * against the user's home. Ends s on error. */
int resolve_path(struct stream *s, const struct json *req, const char *key,
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
	/* A home of "/" (a kvm guest's PID 1 gets HOME=/ from the kernel) gives "/x", not "//x". */
	int hl = (int)strlen(home);
	while (hl && home[hl - 1] == '/')
		hl--;
	if (p[0] == '/')
		n = snprintf(out, PATH_MAX, "%s", p);
	else if (p[0] == '~' && (p[1] == 0 || p[1] == '/'))
		n = snprintf(out, PATH_MAX, "%.*s%s", hl, home, p[1] ? p + 1 : hl ? "" : "/");
	else
		n = snprintf(out, PATH_MAX, "%.*s/%s", hl, home, p);
	if (n < 0 || n >= PATH_MAX) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "%s is too long", key);
		return -ENAMETOOLONG;
	}
	return 0;
}

bool fs_is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int fs_mkdir_parents(const char *path, mode_t mode)
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

static int not_dots(const struct dirent *e)
{
	return strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
}

static int by_bytes(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

int sorted_dir_open(struct sorted_dir *d, const char *path)
{
	d->next = 0;
	d->n = scandir(path, &d->names, not_dots, by_bytes);
	if (d->n >= 0)
		return 0;
	int rc = -errno;
	d->names = NULL;
	d->n = 0;
	return rc;
}

const char *sorted_dir_next(struct sorted_dir *d)
{
	return d->next < d->n ? d->names[d->next++]->d_name : NULL;
}

void sorted_dir_close(struct sorted_dir *d)
{
	for (int i = 0; i < d->n; i++)
		free(d->names[i]);
	free(d->names);
	d->names = NULL;
	d->n = d->next = 0;
}
