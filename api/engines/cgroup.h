/* One cgroup per sandbox (a kvm engine's VM process, a process engine sandbox's
 * init and everything it starts), with a memory and a CPU limit: cgroup v2 where its
 * memory and cpu controllers can be enabled, else the cgroup v1 memory and cpu
 * hierarchies (hybrid hosts), else none, and serve says so at start. Every sandbox
 * cgroup lives under one parent per serve's engine (`mitos-vms`, `mitos-sandboxes`)
 * next to serve's own cgroup; a cgroup is only ever removed on a record's word when it
 * lies under that parent. */
#ifndef MITOS_API_CGROUP_H
#define MITOS_API_CGROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/error.h"

struct cJSON;

#define CG_PATH 512
#define CG_N 4 /* v1 hierarchies: memory, cpu, pids, freezer */

enum cg_mode { CG_NONE, CG_V2, CG_V1 };

struct cg_limits {
	unsigned memory_max_mib;
	unsigned cpu_percent; /* of one CPU */
	unsigned pids_max;    /* processes and threads; 0: no limit */
};

/* The cgroups of one sandbox: v2 one directory; v1 memory [0], cpu [1] and, where the
 * host has those hierarchies, pids [2] and freezer [3] ("" where it has not). */
struct cg_set {
	char dir[CG_N][CG_PATH];
};

/* How a new process enters its cgroups before it runs anything: v2 by
 * clone3(CLONE_INTO_CGROUP, v2fd); v1 by writing itself into v1fds (cgroup.procs). */
struct cg_entry {
	int v2fd;
	int v1fds[CG_N];
};

/* Creates this serve's parent cgroup `parent` (v1 only when allow_v1: it needs root)
 * and fills info with one line on what limits sandboxes get here. Never fails: a host
 * without usable cgroups runs without limits (CG_NONE), and info says why. */
enum cg_mode cgroup_init(const char *parent, bool allow_v1, char *info, size_t infolen);
enum cg_mode cgroup_mode(void);

/* A cgroup (pair) called name under the parent, with l's limits; e says how a new
 * process gets in (close it with cgroup_entry_close after the clone). Nothing to do
 * (cg empty, e all -1) under CG_NONE. */
int cgroup_create(const char *name, const struct cg_limits *l, struct cg_set *cg, struct cg_entry *e);
/* In the child between clone3 and exec (a threaded parent: raw system calls only). */
void cgroup_enter_child(const struct cg_entry *e);
/* clone3() with `flags` (namespaces) into e's v2 cgroup where there is one, with a pidfd
 * in *pidfd and SIGCHLD on exit: 0 in the child, the pid in the parent, -1 and errno. */
long cgroup_clone(const struct cg_entry *e, uint64_t flags, int *pidfd);
void cgroup_entry_close(struct cg_entry *e);
/* Kills whatever still runs in cg (a process that escaped its sandbox's end), then
 * removes it. */
void cgroup_remove(struct cg_set *cg);

/* The cgroups named by the record of the sandbox in dir (the process engine's
 * cgroup.json, the kvm engine's vm.json): 0, or -ENOENT when it has none. */
int cgroup_read_record(const char *dir, struct cg_set *cg);
/* The cgroup freezer (v2's cgroup.freeze, or v1's freezer hierarchy): stops every task
 * in cg at once (forks in flight included), or lets them run again. The write returns
 * at once; the kernel completes the freeze as each task next leaves the kernel.
 * -EOPNOTSUPP where cg has no freezer. */
int cgroup_freeze(const struct cg_set *cg, bool frozen);

/* "cgroups": [dirs] in a record, and back (dirs outside the parent are ignored). */
void cgroup_record(const struct cg_set *cg, struct cJSON *o);
void cgroup_from_record(const struct cJSON *o, struct cg_set *cg);

/* memory_max_mib (mem_min..2 TiB), cpu_percent (1..6400) and pids_max (16..4M) of a
 * template request; absent fields take dflt's values. -EINVAL with e filled when one is bad. */
int cgroup_limits_parse(const struct cJSON *spec, unsigned mem_min, const struct cg_limits *dflt,
			struct cg_limits *out, struct mitos_err *e);

#endif
