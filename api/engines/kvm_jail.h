/* The jail of a VM process, as Firecracker's jailer builds one, done by serve: an
 * unprivileged uid of its own, and a root of its own that holds nothing of the host but
 * the files it was given (same paths as on the host, so no request names change), the
 * VMM's binary and the libraries it loads, read-only, and a read-only /proc. /dev/kvm comes as a
 * descriptor (`--kvm-fd`). What a VM needs later (a snapshot to restore, a layer to
 * write) is mounted into its root while it runs (jail_bind_more).
 *
 * Only where serve is root (K.ns); otherwise a VM process runs as serve does. */
#ifndef MITOS_API_KVM_JAIL_H
#define MITOS_API_KVM_JAIL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "lib/error.h"

#define JAIL_MAX_PATHS 72 /* a layer chain is at most 64 deep */
#define JAIL_PLEN 512
#define JAIL_SYS_MAX 40 /* the VMM's binary, loader, libraries (a sanitizer's too), cache */
/* uids base+1 .. base+JAIL_UIDS, one per VM process; their group is base. The default
 * base is far above any uid a distribution or a subuid range hands out. */
#define JAIL_UID_BASE 1912000000u
#define JAIL_UIDS 65535u

struct jail_path {
	char path[JAIL_PLEN];
	bool rw, dir;
};

struct jail {
	uid_t uid;
	gid_t gid;
	unsigned n;
	struct jail_path p[JAIL_MAX_PATHS];
};

/* What a jail holds of the VMM: one detached mount of each of its files (read-only), for
 * one VM process, made by serve just before it starts one. The kernel executes no file
 * of a mount outside the caller's mount namespace, so a VM process could not execute
 * serve's descriptor of the binary; a mount of it moved into its root it can. */
struct jail_system {
	unsigned n;
	int fd[JAIL_SYS_MAX];
};

/* At start, as root: the jail's mount point (an empty directory in the state dir) and
 * what of the host a VM process needs to start, opened now: exe (the mitos-vmm binary),
 * the dynamic loader and libraries its loader resolves for it (none for a static
 * binary), the loader's cache, and the top-level links (/lib64 -> usr/lib64) the
 * loader's names go through. Every file at its host path, the directories it is in
 * named without links. 0 or -errno with e. */
int jail_init(const char *mountpoint, const char *exe, struct mitos_err *e);

/* The uid range's base (JAIL_UID_BASE unless set), before jail_init. jail_init refuses
 * a range that a user or group of this host's passwd/group databases is in. */
void jail_set_uid_base(uint32_t base);
uint32_t jail_uid_base(void);

/* Detached read-only mounts of the VMM's files into sys, for one jail_enter (after
 * clone, the parent closes its copies). 0 or -errno with e (nothing left open). */
int jail_system_open(struct jail_system *sys, struct mitos_err *e);
void jail_system_close(struct jail_system *sys);

/* exe's path, inside the jail as outside. */
const char *jail_exe(void);

/* A jail with the next uid and nothing in it. */
void jail_new(struct jail *j);

/* Adds a host file or directory, at the same path, writable or not (the uid's own
 * permissions still apply). 0, -E2BIG when full, -errno when it is not there. */
int jail_add(struct jail *j, const char *path, bool rw);

/* Makes path (a directory or file serve made for this VM) the jail's uid's own. */
int jail_give(const struct jail *j, const char *path);

/* In the child between clone (new mount and pid namespaces) and exec, as root, raw
 * system calls only: builds the root, enters it, becomes the jail's uid with no
 * capability left. On any failure it says why on fd 2 and exits 127: a VM process
 * never runs half jailed. */
void jail_enter(const struct jail *j, const struct jail_system *sys);

/* Raw system calls, for a child before exec, as root: no capability may come back to
 * it or to what it execs. The bounding and ambient sets are emptied and root's special
 * status is switched off and locked, so exec grants nothing; stays_root: it keeps uid 0
 * (the uid fixup is locked off too), else a change of uid follows, which clears the
 * rest. 0, or -1 when the securebits could not be set. */
int jail_drop_capabilities(bool stays_root);

/* Mounts more of the host into the running VM process behind pidfd (same paths;
 * already mounted ones are skipped). Blocks briefly (a helper process): worker
 * threads only. 0 or -errno with e. */
int jail_bind_more(int pidfd, const struct jail *more, struct mitos_err *e);

/* Renames what a VM made in its own directory (from) to serve's (to), and keeps it only
 * if it is what it should be (S_IFSOCK, S_IFREG) and not a link to elsewhere. 0 or
 * -errno with e (-EPERM: something else was there, and is gone). */
int jail_claim(const char *from, const char *to, mode_t type, struct mitos_err *e);

/* A snapshot directory a VM wrote becomes root's and read-only to everyone: no VM
 * (this one, or a later one given the same uid) may change what children restore.
 * Everything in it must be a regular file, and no longer open for writing (a VM that
 * kept a descriptor or a shared mapping of it, and runs on, could change it later):
 * -EPERM for either. 0 or -errno with e. */
int jail_seal(const char *dir, struct mitos_err *e);

#endif
