/* Loop devices for process-engine sandbox disks: attaching a file, as
 * mitos-sandbox-init does for a sandbox's disk and serve does once at start to learn
 * whether this host allows it. */
#ifndef MITOS_AGENT_LOOP_DEV_H
#define MITOS_AGENT_LOOP_DEV_H

#include <stdbool.h>
#include <stddef.h>

/* Attaches the open file fd to a free loop device (its path into dev), released
 * (autoclear) once nothing holds it: the returned descriptor of the device, then
 * whatever mounts it. -errno on failure, *step naming what failed. Another process
 * taking the free device first is retried. */
int loop_dev_attach(int fd, char *dev, size_t devlen, const char **step);

/* Whether a loop device is attached to the open file fd (its inode). */
bool loop_dev_backs(int fd);

#endif
