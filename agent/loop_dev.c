/* Loop devices for process-engine sandbox disks (loop_dev.h). */
#include "agent/loop_dev.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOOP_ATTACH_TRIES 500

int loop_dev_attach(int fd, char *dev, size_t devlen, const char **step)
{
	int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0) {
		*step = "open /dev/loop-control";
		return -errno;
	}
	int rc;
	for (int tries = 0;; tries++) {
		int n = ioctl(ctl, LOOP_CTL_GET_FREE);
		if (n < 0) {
			*step = "find a free loop device";
			rc = -errno;
			break;
		}
		snprintf(dev, devlen, "/dev/loop%d", n);
		int lfd = open(dev, O_RDWR | O_CLOEXEC);
		if (lfd < 0) {
			*step = "open the loop device";
			rc = -errno;
			break;
		}
		struct loop_config cfg = { .fd = (unsigned)fd, .info = { .lo_flags = LO_FLAGS_AUTOCLEAR } };
		if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0) {
			rc = lfd;
			break;
		}
		rc = -errno;
		close(lfd);
		/* Another sandbox took the same free device first (they are handed out to all
		 * who ask at once), or it is still being released: again, after a while that
		 * grows and differs per process, so that racers spread out. About 5 s in all. */
		if (rc != -EBUSY || tries == LOOP_ATTACH_TRIES) {
			*step = "attach the file to the loop device";
			break;
		}
		unsigned seed = (unsigned)getpid() * 2654435761u + (unsigned)tries;
		usleep(500u * (unsigned)(tries < 20 ? tries + 1 : 20) + rand_r(&seed) % 1000u);
	}
	close(ctl);
	return rc;
}

bool loop_dev_backs(int fd)
{
	struct stat st;
	DIR *d = fstat(fd, &st) == 0 ? opendir("/sys/block") : NULL;
	if (!d)
		return false;
	bool found = false;
	struct dirent *de;
	while (!found && (de = readdir(d))) {
		char path[300];
		if (strncmp(de->d_name, "loop", 4))
			continue;
		snprintf(path, sizeof(path), "/dev/%s", de->d_name);
		int lfd = open(path, O_RDONLY | O_CLOEXEC);
		struct loop_info64 info;
		/* ENXIO: nothing attached. */
		if (lfd >= 0 && ioctl(lfd, LOOP_GET_STATUS64, &info) == 0)
			found = info.lo_inode == st.st_ino && info.lo_device == st.st_dev;
		if (lfd >= 0)
			close(lfd);
	}
	closedir(d);
	return found;
}
