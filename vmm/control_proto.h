/* The control protocol of a VM process, typed: the one place its commands and their
 * fields are spelled. The VMM decodes requests with it (machine.c); serve, `mitos-vmm
 * snapshot` and the tests' C code encode them with it, so neither side writes a field
 * name by hand. control.h carries the JSON lines; replies are {"ok":true,...} or
 * {"ok":false,"error":{"code","message"}} (control_reply_ok/error). */
#ifndef MITOS_CONTROL_PROTO_H
#define MITOS_CONTROL_PROTO_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "lib/error.h"

#define CTL_MAX_DISKS 8   /* = SNAPSHOT_MAX_DISKS */

enum ctl_cmd {
	CTL_STATUS,    /* -> state, vcpus, mem_bytes, loaded, first_exit_ns, run_start_ns, restored_from */
	CTL_PAUSE,
	CTL_RESUME,
	CTL_STOP,
	CTL_SNAPSHOT,  /* dir -> dir, ms */
	CTL_RESTORE,   /* snapshot, disks, vsock, tap (prepared VMs) -> phases, run_start_ns */
	CTL_LINK,      /* up */
	CTL_CMDS
};

struct ctl_disk {
	unsigned index;
	const char *path;      /* names the image; opened by the VM unless by_fd */
	bool read_only;
	/* The image travels as a descriptor with the request (control_call's fds): the
	 * encoder numbers the by_fd disks 0, 1, ... in order, which is the order of the
	 * descriptors it must pass; the decoder gives each its number in fd. */
	bool by_fd;
	unsigned fd;
};

struct ctl_request {
	enum ctl_cmd cmd;
	const char *dir;                 /* snapshot: the directory to write */
	const char *snapshot;            /* restore: the snapshot to take */
	const char *vsock, *tap;         /* restore: the child's own; NULL for none */
	bool tap_by_fd;                  /* restore: the TAP comes attached, as descriptor tap_fd */
	unsigned tap_fd;                 /*   (which of those sent with the request) */
	unsigned ndisks;                 /* restore: disks replacing the snapshot's */
	struct ctl_disk disks[CTL_MAX_DISKS];
	bool up;                         /* link */
};

const char *ctl_cmd_name(enum ctl_cmd c);

/* The request as a JSON object (NULL when out of memory). */
cJSON *ctl_request_encode(const struct ctl_request *r);

/* Decodes req into out (strings point into req): 0, or -EINVAL with the reply's error
 * code ("invalid_request" or "unknown_command") in *code and a message in e. */
int ctl_request_decode(const cJSON *req, struct ctl_request *out, const char **code, struct mitos_err *e);

/* Whether reply is {"ok":true}; if not, its error message (or what was wrong with it)
 * into e (-EIO). */
bool ctl_reply_ok(const cJSON *reply, struct mitos_err *e);

#endif
