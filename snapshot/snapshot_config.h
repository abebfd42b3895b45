/* config.json of a snapshot directory: the machine it was taken from (RAM, vCPUs,
 * command line, devices) and, for a layer, the directory of its parent. */
#ifndef MITOS_SNAPSHOT_CONFIG_H
#define MITOS_SNAPSHOT_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/error.h"

#define SNAPSHOT_CONFIG_NAME "config.json"
#define SNAPSHOT_STATE_NAME  "state"
#define SNAPSHOT_FORMAT      1
#define SNAPSHOT_MAX_DEPTH   64
#define SNAPSHOT_MAX_DISKS   8

struct snapshot_disk {
	char *path;
	bool read_only;
	uint64_t bytes;   /* image size when snapshotted: a child's disk must match it */
};

struct snapshot_config {
	uint64_t mem_bytes;
	unsigned vcpus;
	char *cmdline;
	unsigned ndisks;
	struct snapshot_disk disks[SNAPSHOT_MAX_DISKS];
	bool has_vsock;
	uint32_t vsock_cid;
	bool has_net;     /* a virtio-net device (its MAC is in the device state) */
	char *parent;     /* absolute path of the parent snapshot, NULL for a base */
	unsigned depth;   /* 0 for a base, parent's + 1 for a layer */
};

int snapshot_config_write(const char *dir, const struct snapshot_config *c, struct mitos_err *e);
int snapshot_config_read(const char *dir, struct snapshot_config *c, struct mitos_err *e);
/* Parses config.json text (the reader uses it; so do the tests). */
int snapshot_config_parse(const char *name, const char *text, struct snapshot_config *c,
			  struct mitos_err *e);
void snapshot_config_free(struct snapshot_config *c);

/* The chain of directories from the base to `dir` (absolute paths; dirs[n-1] is dir),
 * each config checked against the one above it (same RAM and vCPUs, depths counting
 * down to 0, no loop). Free with snapshot_chain_free. */
int snapshot_chain(const char *dir, char ***dirs, unsigned *n, struct mitos_err *e);
void snapshot_chain_free(char **dirs, unsigned n);

#endif
