/* Loop devices for process-engine sandbox disks (loop_dev.h). */
#include "agent/loop_dev.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

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
		if (rc != -EBUSY || tries == 16) {
			*step = "attach the file to the loop device";
			break;
		}
	}
	close(ctl);
	return rc;
}
