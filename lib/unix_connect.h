/* Connecting to a Unix socket by a path whose directory a guest or a sandbox may write
 * (a VM process's own directory, a sandbox's run directory): serve must never be sent
 * elsewhere by a symlink put in the socket's place. */
#ifndef MITOS_UNIX_CONNECT_H
#define MITOS_UNIX_CONNECT_H

/* A stream socket (with SOCK_NONBLOCK and/or SOCK_CLOEXEC from flags) connected to the
 * socket at path, whose last component is opened without following a symlink, must be
 * a socket, and is connected to through that descriptor, never by its name again (so
 * paths longer than sun_path work too). The fd, or -errno: -ENOTSOCK for anything but a
 * socket there. A non-blocking connect in progress counts as connected. */
int unix_connect_nofollow(const char *path, int flags);

#endif
