/* What a sandbox's cgroup says it uses (E2B's metrics, the Mitos Vitals of a
 * process-engine sandbox, whose /proc/stat and /proc/meminfo are the host's). */
#ifndef MITOS_API_ENGINES_CGROUP_USAGE_H
#define MITOS_API_ENGINES_CGROUP_USAGE_H

#include "api/engines/cgroup.h"

struct cg_usage {
	unsigned long long cpu_usec, mem, mem_max, cache; /* mem_max 0: no limit */
	unsigned cpus; /* the CPU limit rounded up, or the host's CPUs without one */
};

int cgroup_usage(const struct cg_set *cg, struct cg_usage *u);

#endif
