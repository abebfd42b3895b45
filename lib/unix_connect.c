#include "lib/unix_connect.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int unix_connect_nofollow(const char *path, int flags)
{
	int pfd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (pfd < 0)
		return -errno;
	struct stat st;
	if (fstat(pfd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
		close(pfd);
		return -ENOTSOCK;
	}
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d", pfd);
	int fd = socket(AF_UNIX, SOCK_STREAM | (flags & (SOCK_NONBLOCK | SOCK_CLOEXEC)), 0);
	int rc = fd < 0 ? -errno : 0;
	if (!rc && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS)
		rc = -errno;
	close(pfd);
	if (rc && fd >= 0)
		close(fd);
	return rc ? rc : fd;
}
