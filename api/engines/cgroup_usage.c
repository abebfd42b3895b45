/* What a sandbox's cgroup says it uses: CPU time, memory, the limits (v2, or the v1
 * memory and cpu/cpuacct hierarchies). */
#include "api/engines/cgroup_usage.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The first number in dir/file after key (or the file's first number when key is NULL). */
static int read_stat(const char *dir, const char *file, const char *key, unsigned long long *out)
{
	char path[CG_PATH + 64], line[256];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	FILE *f = fopen(path, "re");
	if (!f)
		return -errno;
	int rc = -ENOENT;
	size_t kl = key ? strlen(key) : 0;
	while (fgets(line, sizeof(line), f)) {
		if (key && (strncmp(line, key, kl) || line[kl] != ' '))
			continue;
		const char *v = key ? line + kl + 1 : line;
		if (!strncmp(v, "max", 3))
			*out = 0; /* no limit */
		else
			*out = strtoull(v, NULL, 10);
		rc = 0;
		break;
	}
	fclose(f);
	return rc;
}

/* CPU time of the processes in a cgroup, with their reaped children's: for a v1
 * cpu hierarchy without cpuacct. A sandbox's init reaps what it starts, so work
 * of exited processes is counted too. */
static int procs_cpu_usec(const char *dir, unsigned long long *out)
{
	char path[CG_PATH + 32];
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	FILE *f = fopen(path, "re");
	if (!f)
		return -errno;
	long tck = sysconf(_SC_CLK_TCK);
	unsigned long long ticks = 0;
	int pid;
	while (fscanf(f, "%d", &pid) == 1) {
		char sp[64], buf[1024];
		snprintf(sp, sizeof(sp), "/proc/%d/stat", pid);
		FILE *s = fopen(sp, "re");
		if (!s)
			continue;
		size_t n = fread(buf, 1, sizeof(buf) - 1, s);
		fclose(s);
		buf[n] = 0;
		/* Fields after the command name, which may hold spaces and parentheses. */
		const char *p = strrchr(buf, ')');
		unsigned long long v[4];
		if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu",
				&v[0], &v[1], &v[2], &v[3]) == 4)
			ticks += v[0] + v[1] + v[2] + v[3];
	}
	fclose(f);
	*out = tck > 0 ? ticks * 1000000ull / (unsigned long long)tck : 0;
	return 0;
}

static unsigned cpu_limit(const struct cg_set *cg)
{
	long long quota = -1, period = 0;
	char path[CG_PATH + 32];
	FILE *f = NULL;
	if (cgroup_mode() == CG_V2) {
		snprintf(path, sizeof(path), "%s/cpu.max", cg->dir[0]);
		if ((f = fopen(path, "re"))) {
			if (fscanf(f, "%lld %lld", &quota, &period) != 2)
				quota = -1; /* "max 100000" */
			fclose(f);
		}
	} else if (cg->dir[1][0]) {
		unsigned long long p = 0;
		snprintf(path, sizeof(path), "%s/cpu.cfs_quota_us", cg->dir[1]);
		if ((f = fopen(path, "re"))) {
			if (fscanf(f, "%lld", &quota) != 1)
				quota = -1;
			fclose(f);
		}
		if (!read_stat(cg->dir[1], "cpu.cfs_period_us", NULL, &p))
			period = (long long)p;
	}
	long online = sysconf(_SC_NPROCESSORS_ONLN);
	if (quota <= 0 || period <= 0)
		return online > 0 ? (unsigned)online : 1;
	return (unsigned)((quota + period - 1) / period);
}

int cgroup_usage(const struct cg_set *cg, struct cg_usage *u)
{
	memset(u, 0, sizeof(*u));
	u->cpus = cpu_limit(cg);
	if (cgroup_mode() == CG_V2) {
		int rc = read_stat(cg->dir[0], "cpu.stat", "usage_usec", &u->cpu_usec);
		if (!rc)
			rc = read_stat(cg->dir[0], "memory.current", NULL, &u->mem);
		if (rc)
			return rc;
		read_stat(cg->dir[0], "memory.max", NULL, &u->mem_max);
		read_stat(cg->dir[0], "memory.stat", "file", &u->cache);
		return 0;
	}
	unsigned long long ns = 0;
	int rc = read_stat(cg->dir[0], "memory.usage_in_bytes", NULL, &u->mem);
	if (rc)
		return rc;
	if (cg->dir[1][0] && !read_stat(cg->dir[1], "cpuacct.usage", NULL, &ns))
		u->cpu_usec = ns / 1000;
	else if ((rc = procs_cpu_usec(cg->dir[0], &u->cpu_usec)))
		return rc;
	read_stat(cg->dir[0], "memory.limit_in_bytes", NULL, &u->mem_max);
	read_stat(cg->dir[0], "memory.stat", "cache", &u->cache);
	return 0;
}

