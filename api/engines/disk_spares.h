/* Formatted sandbox disks made ahead: a process-engine sandbox's disk is an ext4 image
 * (its quota), and formatting one takes ~10 ms of mkfs.ext4 that a create should not
 * wait for. A few are kept ready in STATE/disk-spares, made on the teardown thread. */
#ifndef MITOS_API_DISK_SPARES_H
#define MITOS_API_DISK_SPARES_H

#include "lib/error.h"

/* Keeps keep images of mib MiB ready, each formatted by `init_path --format-disk IMG
 * MIB` (mitos-sandbox-init: the one place the disk's format is spelled); removes what
 * an earlier serve left. */
int disk_spares_init(const char *state_dir, const char *init_path, unsigned mib, unsigned keep,
		     struct mitos_err *e);

/* Renames a ready image to path and orders another: 0, or -ENOENT when none is ready
 * (the sandbox's init then formats its own). */
int disk_spare_take(const char *path);

#endif
