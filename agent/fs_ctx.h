/* Identity and path resolution shared by the file operations: they run with
 * the requested user's filesystem uid/gid, so permissions are checked as for
 * that user and new files belong to them; "~" and relative paths resolve
 * against that user's home. */
#ifndef MITOS_AGENT_FS_CTX_H
#define MITOS_AGENT_FS_CTX_H

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

#include "agent/conn.h"
#include "agent/users.h"

struct fs_ctx {
	struct user_info user;
	bool has_user;
	bool switched;
	char path[PATH_MAX];
};

/* The user a request runs as: its "user"; else its "default_user" when this system
 * has that account (E2B's default user, "user" in its templates); else NULL, the
 * agent's own. */
const char *request_user(const struct json *req);
/* Looks up request_user(req) and takes on its identity. Ends s on error. */
int fs_enter(struct stream *s, const struct json *req, struct fs_ctx *fc);
/* Takes on fc's identity again, for work resumed from the event loop. */
void fs_switch(const struct fs_ctx *fc);
void fs_leave(const struct fs_ctx *fc);
/* Resolves req's member key into out (PATH_MAX bytes). Ends s on error. */
int resolve_path(struct stream *s, const struct json *req, const char *key,
		 const struct fs_ctx *fc, char *out);
/* Whether path is a directory (following links). */
bool fs_is_dir(const char *path);
/* mkdir -p: path and its missing parents; 0 if path ends up a directory. */
int fs_mkdir_parents(const char *path, mode_t mode);

/* A directory's entries but "." and "..", in byte order (envd's listings, an
 * archive's members): read whole when opened, handed out one at a time. */
struct sorted_dir {
	struct dirent **names;
	int n, next;
};
/* 0, or -errno (and nothing to close). */
int sorted_dir_open(struct sorted_dir *d, const char *path);
/* The next name (valid until sorted_dir_close), NULL after the last. */
const char *sorted_dir_next(struct sorted_dir *d);
void sorted_dir_close(struct sorted_dir *d);

#endif
