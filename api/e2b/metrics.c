/* GET /sandboxes/{id}/metrics: CPU and memory of the sandbox's own cgroup (the
 * engine records it in the sandbox's dir), in E2B's SandboxMetric shape. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "api/engines/cgroup.h"
#include "api/e2b/internal.h"
#include "api/mitos/handlers.h"
#include "api/http/http.h"
#include "api/sandbox/registry.h"
#include "api/http/uring.h"

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

struct usage {
	unsigned long long cpu_usec, mem, mem_max, cache;
	unsigned cpus;  /* the CPU limit rounded up, or the host's CPUs without one */
};

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

static int cgroup_usage(const struct cg_set *cg, struct usage *u)
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

void e2b_sandbox_metrics(struct http_req *r)
{
	struct sandbox *sb = r->sandbox_id[0] ? sandbox_find(r->sandbox_id) : NULL;
	if (!sb || sb->state == SB_STOPPING) {
		e2b_reply_err(r, 404, "sandbox %s not found", r->sandbox_id);
		return;
	}
	cJSON *a = cJSON_CreateArray();
	struct cg_set cg;
	struct usage u;
	/* No cgroup (a host without usable cgroups): no samples, as for a sandbox E2B
	 * has not sampled yet. */
	if (!cgroup_read_record(sb->dir, &cg) && !cgroup_usage(&cg, &u)) {
		struct e2b_sbx *s = e2b_sbx_get(sb->id, true);
		uint64_t now = ur_wall_ms();
		unsigned long long since_usec = 0, span_ms = now > sb->created_ms ? now - sb->created_ms : 1;
		/* Utilisation since the previous sample, or since the start for the first. */
		if (s && s->cpu_sample_ms && now > s->cpu_sample_ms && u.cpu_usec >= s->cpu_usec) {
			since_usec = u.cpu_usec - s->cpu_usec;
			span_ms = now - s->cpu_sample_ms;
		} else {
			since_usec = u.cpu_usec;
		}
		if (s) {
			s->cpu_usec = u.cpu_usec;
			s->cpu_sample_ms = now;
		}
		/* Percent of the sandbox's CPUs, as E2B reports it. */
		double pct = span_ms ? (double)since_usec / 10.0 / (double)span_ms / u.cpus : 0;
		cJSON *m = cJSON_CreateObject();
		char ts[40];
		registry_rfc3339(now, ts, sizeof(ts));
		cJSON_AddStringToObject(m, "timestamp", ts);
		cJSON_AddNumberToObject(m, "timestampUnix", (double)(now / 1000));
		cJSON_AddNumberToObject(m, "cpuUsedPct", pct);
		cJSON_AddNumberToObject(m, "cpuCount", u.cpus);
		cJSON_AddNumberToObject(m, "memUsed", (double)u.mem);
		cJSON_AddNumberToObject(m, "memTotal", (double)(u.mem_max && u.mem_max < (1ull << 50) ? u.mem_max : 0));
		cJSON_AddNumberToObject(m, "memCache", (double)u.cache);
		struct statvfs vfs;
		double disk_total = 0, disk_used = 0;
		if (!statvfs(sb->dir, &vfs)) {
			disk_total = (double)vfs.f_blocks * (double)vfs.f_frsize;
			disk_used = disk_total - (double)vfs.f_bfree * (double)vfs.f_frsize;
		}
		cJSON_AddNumberToObject(m, "diskUsed", disk_used);
		cJSON_AddNumberToObject(m, "diskTotal", disk_total);
		cJSON_AddItemToArray(a, m);
	}
	handler_reply_cjson(r, 200, a);
}
