/* Opening a snapshot's files for reading. A snapshot directory is data anyone with
 * the state dir may have shaped: a FIFO in place of a file would block a restore
 * forever, a device would be read as if it were the snapshot. */
#ifndef MITOS_SNAPSHOT_OPEN_H
#define MITOS_SNAPSHOT_OPEN_H

/* path as a regular file, read-only: an fd, or -EINVAL for anything else (without
 * ever waiting for a writer), -errno. */
int snapshot_open_read(const char *path);

#endif
