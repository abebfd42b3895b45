/* A listening Unix stream socket at a path: the VMM's control socket and vsock host
 * socket, the agent's socket in a process-engine sandbox. */
#ifndef MITOS_LIB_UNIX_LISTEN_H
#define MITOS_LIB_UNIX_LISTEN_H

#include <stdbool.h>

/* The listening fd (SOCK_NONBLOCK | SOCK_CLOEXEC) or -errno: -ENAMETOOLONG when path
 * and one more byte do not fit in sun_path, -EEXIST when something that is not a socket
 * is at path (never removed), -EADDRINUSE when a socket is there and replace_stale is
 * false (a socket left by a process that ended is replaced when it is true). path
 * appears only once the socket listens (it is bound as "path~" and moved there). */
int unix_listen(const char *path, int backlog, bool replace_stale);

#endif
