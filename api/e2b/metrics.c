/* GET /sandboxes/{id}/metrics: CPU and memory in use from the sandbox's own cgroup
 * (the engine records it in the sandbox's dir), out of what the sandbox has (its
 * template's shape, as getInfo says), in E2B's SandboxMetric shape. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "api/engines/cgroup.h"
#include "api/engines/cgroup_usage.h"
#include "api/e2b/internal.h"
#include "api/mitos/handlers.h"
#include "api/http/http.h"
#include "api/sandbox/registry.h"
#include "api/http/uring.h"

/* E2B samples in 5 s buckets: a sample taken within one of the interval's end is in it. */
#define BUCKET_S 5

/* The query's ?start= or ?end= (Unix seconds): 0 and *v untouched when absent, -1 when
 * it is not a number. */
static int query_seconds(const struct http_req *r, const char *key, long long *v)
{
	char *s = http_query_get(r->query, key), *end;
	if (!s)
		return 0;
	errno = 0;
	long long n = strtoll(s, &end, 10);
	int rc = !*s || *end || errno ? -1 : 0;
	free(s);
	if (!rc)
		*v = n;
	return rc;
}

void e2b_sandbox_metrics(struct http_req *r)
{
	struct sandbox *sb = r->sandbox_id[0] ? sandbox_find(r->sandbox_id) : NULL;
	if (!sb || sb->state == SB_STOPPING) {
		e2b_reply_err(r, 404, "sandbox %s not found", r->sandbox_id);
		return;
	}
	uint64_t now = ur_wall_ms();
	long long now_s = (long long)(now / 1000), start = 0, end = now_s;
	if (query_seconds(r, "start", &start) || query_seconds(r, "end", &end)) {
		e2b_reply_err(r, 400, "start and end are Unix times in seconds");
		return;
	}
	cJSON *a = cJSON_CreateArray();
	struct cg_set cg;
	struct cg_usage u;
	/* The one sample there is, now's: none for an interval that ended before it.
	 * No cgroup (a host without usable cgroups): no samples, as for a sandbox E2B has
	 * not sampled yet. */
	if (now_s >= start && now_s <= end + BUCKET_S && !cgroup_read_record(sb->dir, &cg) && !cgroup_usage(&cg, &u)) {
		struct e2b_sbx *s = e2b_sbx_get(sb->id, true);
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
		/* The memory the sandbox has, as getInfo's memoryMB says (a VM's RAM, not its
		 * cgroup's, which also holds the VMM); in use, what its cgroup holds of it. */
		unsigned tcpus, tmem;
		e2b_template_shape(sb->template_name, &tcpus, &tmem);
		double total = (double)tmem * 1024 * 1024, used = (double)u.mem;
		cJSON_AddNumberToObject(m, "memUsed", total && used > total ? total : used);
		cJSON_AddNumberToObject(m, "memTotal", total);
		cJSON_AddNumberToObject(m, "memCache", (double)u.cache);
		/* The file system the sandbox's root writes to, seen through its init: a process-
		 * engine sandbox's own disk (its quota); a VM's, the host's state dir. */
		struct statvfs vfs;
		double disk_total = 0, disk_used = 0;
		char root[64];
		snprintf(root, sizeof(root), "/proc/%d/root/", (int)sb->proc.pid);
		if (sb->proc.pid > 0 ? !statvfs(root, &vfs) : !statvfs(sb->dir, &vfs)) {
			disk_total = (double)vfs.f_blocks * (double)vfs.f_frsize;
			disk_used = disk_total - (double)vfs.f_bfree * (double)vfs.f_frsize;
		}
		cJSON_AddNumberToObject(m, "diskUsed", disk_used);
		cJSON_AddNumberToObject(m, "diskTotal", disk_total);
		cJSON_AddItemToArray(a, m);
	}
	handler_reply_cjson(r, 200, a);
}
