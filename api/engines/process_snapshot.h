/* A process-engine snapshot that outlives its sandbox: a copy of its writable layer. */
#ifndef MITOS_API_PROCESS_SNAPSHOT_H
#define MITOS_API_PROCESS_SNAPSHOT_H

#include <stddef.h>
#include <sys/types.h>

#include "api/engines/engine.h"

/* Copies from (the disk image or upper directory of a frozen sandbox whose init is
 * pid) into snapdir with init_path (mitos-sandbox-init --copy-layer), off the loop:
 * out gets the copy's path (what the snapshot's sandboxes copy from); done runs on the
 * loop once the copy ended, unless this fails at once (-errno, e says why). */
int process_snapshot_copy(const char *init_path, const char *from, pid_t pid, const char *snapdir, char *out,
			  size_t outlen, engine_done_fn done, void *ctx, struct mitos_err *e);

#endif
