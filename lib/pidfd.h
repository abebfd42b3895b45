/* Whether the process behind a pidfd has ended, without waiting. */
#ifndef MITOS_LIB_PIDFD_H
#define MITOS_LIB_PIDFD_H

#include <poll.h>
#include <stdbool.h>

/* A pidfd is readable once its process has exited; -1 (none) counts as ended. */
static inline bool pidfd_exited(int pidfd)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };
	return pidfd < 0 || poll(&p, 1, 0) != 0;
}

#endif
