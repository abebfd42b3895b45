#include "lib/unix_listen.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Bound and listening under PATH~ first, then moved to PATH: a client that waits for
 * PATH to appear and connects never meets a socket that is bound but not yet listening
 * (ECONNREFUSED; seen under load). */
int unix_listen(const char *path, int backlog, bool replace_stale)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int n = snprintf(a.sun_path, sizeof(a.sun_path), "%s~", path);
	if (n < 0 || (size_t)n >= sizeof(a.sun_path))
		return -ENAMETOOLONG;
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return -EEXIST;
		if (!replace_stale)
			return -EADDRINUSE;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* A temporary name left by a process that died between bind and rename. */
	if (lstat(a.sun_path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(a.sun_path);
	int e = 0;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		e = -errno;
	else if (listen(fd, backlog) < 0)
		e = -errno;
	/* Without replace_stale, a socket that appeared at path meanwhile stays. */
	else if (renameat2(AT_FDCWD, a.sun_path, AT_FDCWD, path,
			   replace_stale ? 0 : RENAME_NOREPLACE) < 0)
		e = errno == EEXIST ? -EADDRINUSE : -errno;
	if (e)
		unlink(a.sun_path);
	if (e) {
		close(fd);
		return e;
	}
	return fd;
}
