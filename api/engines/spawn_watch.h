/* A helper program run off the loop: spawned, its pidfd polled on the ring, and its
 * end handed to a callback on the loop. */
#ifndef MITOS_API_SPAWN_WATCH_H
#define MITOS_API_SPAWN_WATCH_H

/* status: the wait status (WIFEXITED...) or -errno when it could not be reaped. */
typedef void (*spawn_exited_fn)(void *ctx, int status);

/* Runs path with argv and an empty environment, fds 0-2 on /dev/null except those
 * of at[0..nat) that get fd (when fd >= 0); exited runs once it ends, unless this
 * fails at once (-errno). */
int spawn_watch(const char *path, char *const argv[], int fd, const int *at, unsigned nat, spawn_exited_fn exited,
		void *ctx);

#endif
