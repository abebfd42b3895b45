/* Teardown off serve's event loop: what a sandbox, a VM or a fork layer leaves is
 * first renamed into STATE/trash (at once: the name is free again on return) and then
 * removed by one thread, with whatever waits (killing a VM and reaping it, which takes
 * as long as the kernel needs to free its memory). Trash a crash left is removed at
 * the next start. */
#ifndef MITOS_API_TEARDOWN_H
#define MITOS_API_TEARDOWN_H

#include <stddef.h>

#include "lib/error.h"

/* Starts the thread and queues the trash an earlier serve left. Before it (and after
 * teardown_exit), everything below runs at once on the caller's thread. */
int teardown_init(const char *state_dir, struct mitos_err *e);

/* Removes dir and everything in it. first, if not NULL, runs on the thread before the
 * removal with the path dir now has (a VM's record kill: it may wait). Where dir
 * cannot be renamed (another file system), all of it happens now. */
void teardown_tree(const char *dir, void (*first)(const char *dir));

/* Runs fn(arg) on the thread, in order with the trees queued before (fn owns arg). */
void teardown_call(void (*fn)(void *arg), void *arg);

/* Finishes what is queued, then stops the thread. */
void teardown_exit(void);

#endif
