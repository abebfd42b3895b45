/* The guest as a whole: Processes (its process table), Signal (to any of its
 * processes), Vitals (CPU, steal, memory and process count every interval) and
 * Watch (file events under a directory), each one agent operation. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/engines/cgroup_usage.h"
#include "api/http/http.h"
#include "api/http/uring.h"
#include "api/mitos/rpc_call.h"
#include "api/sandbox/sandboxes.h"

#define VITALS_MAX_INTERVAL_S 3600

/* ---- Processes ---- */

static void processes_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	if (rpc_end_failed(c, payload, why))
		return;
	cJSON *o = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(o, "processes");
	const cJSON *p;
	cJSON_ArrayForEach(p, cJSON_GetObjectItem(payload, "processes")) {
		cJSON *info = cJSON_CreateObject();
		int64_t pid = rpc_agent_int64(cJSON_GetObjectItem(p, "pid")),
			ppid = rpc_agent_int64(cJSON_GetObjectItem(p, "ppid"));
		double cpu = cJSON_GetNumberValue(cJSON_GetObjectItem(p, "cpu_percent"));
		const char *cmd = rpc_jstr(p, "command"), *state = rpc_jstr(p, "state");
		/* protojson leaves out default values; pids are int32 (numbers on the wire). */
		if (pid > 0 && pid <= INT32_MAX)
			cJSON_AddNumberToObject(info, "pid", (double)pid);
		if (ppid > 0 && ppid <= INT32_MAX)
			cJSON_AddNumberToObject(info, "ppid", (double)ppid);
		if (cmd && *cmd)
			cJSON_AddStringToObject(info, "command", cmd);
		if (state && *state)
			cJSON_AddStringToObject(info, "state", state);
		if (cpu > 0 && cpu < 1e6)
			cJSON_AddNumberToObject(info, "cpuPercent", cpu);
		rpc_add_int64(info, "rssBytes", rpc_agent_int64(cJSON_GetObjectItem(p, "rss_bytes")));
		cJSON_AddItemToArray(list, info);
	}
	rpc_call_end(c, o, 0, NULL, NULL);
}

static const struct astream_ops processes_ops = { NULL, NULL, processes_end, NULL, NULL };

void rpc_processes_start(struct rpc_call *c, cJSON *req)
{
	(void)req;
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "ps");
	rpc_call_open(c, open, &processes_ops);
}

/* ---- Signal ---- */

static void signal_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	if (!rpc_end_failed(c, payload, why))
		rpc_call_end(c, cJSON_CreateObject(), 0, NULL, NULL);
}

static const struct astream_ops signal_ops = { NULL, NULL, signal_end, NULL, NULL };

/* SignalRequest {pid, signal}: the agent refuses init and itself. */
void rpc_signal_start(struct rpc_call *c, cJSON *req)
{
	double pid = 0, sig = 0;
	if (rpc_req_int(req, "pid", 2, INT32_MAX, &pid) || rpc_req_int(req, "signal", 1, 64, &sig) || !pid || !sig) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "pid must be a process of the sandbox above 1 and signal a number "
			      "from 1 to 64 (15 is SIGTERM, 9 SIGKILL)", NULL);
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "kill");
	cJSON_AddNumberToObject(open, "pid", pid);
	cJSON_AddNumberToObject(open, "signal", sig);
	rpc_call_open(c, open, &signal_ops);
}

/* ---- Vitals ---- */

/* A process-engine sandbox shares the host's kernel: its /proc/stat and
 * /proc/meminfo describe the host, so CPU and memory come from its cgroup. */
static bool cgroup_sample(struct rpc_call *c, struct cg_usage *u)
{
	struct cg_set cg;
	struct sandbox *sb = c->base.r ? sandbox_find(c->base.r->sandbox_id) : NULL;
	return sb && !strcmp(sandboxes_engine_name(), "process") && !cgroup_read_record(sb->dir, &cg) &&
	       !cgroup_usage(&cg, u);
}

static void vitals_event(struct astream *s, cJSON *ev)
{
	struct rpc_call *c = s->ctx;
	if (agent_call_backlogged(&c->base, EVENTS_UNREAD_MAX)) {
		rpc_call_fail(c, AE_LIMIT_EXCEEDED, BACKLOG_MSG, NULL);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	rpc_add_int64(o, "sampledAtUnix", rpc_agent_int64(cJSON_GetObjectItem(ev, "sampled_at_unix")));
	double cpu = cJSON_GetNumberValue(cJSON_GetObjectItem(ev, "cpu_percent")),
	       steal = cJSON_GetNumberValue(cJSON_GetObjectItem(ev, "cpu_steal_percent"));
	int64_t used = rpc_agent_int64(cJSON_GetObjectItem(ev, "mem_used_bytes")),
		total = rpc_agent_int64(cJSON_GetObjectItem(ev, "mem_total_bytes"));
	struct cg_usage u;
	if (cgroup_sample(c, &u)) {
		uint64_t now = ur_now_ms();
		cpu = now > c->cpu_at_ms && u.cpu_usec >= c->cpu_usec
			? (double)(u.cpu_usec - c->cpu_usec) / 10.0 / (double)(now - c->cpu_at_ms) / u.cpus : 0;
		steal = 0;
		c->cpu_usec = u.cpu_usec;
		c->cpu_at_ms = now;
		used = (int64_t)u.mem;
		if (u.mem_max && u.mem_max < (1ull << 50))
			total = (int64_t)u.mem_max;
	}
	rpc_add_int64(o, "memUsedBytes", used);
	rpc_add_int64(o, "memTotalBytes", total);
	if (cpu > 0 && cpu <= 100)
		cJSON_AddNumberToObject(o, "cpuPercent", cpu);
	if (steal > 0 && steal <= 100)
		cJSON_AddNumberToObject(o, "cpuStealPercent", steal);
	int64_t n = rpc_agent_int64(cJSON_GetObjectItem(ev, "process_count"));
	if (n > 0 && n <= INT32_MAX)
		cJSON_AddNumberToObject(o, "processCount", (double)n);
	rpc_stream_msg_cjson(c, o);
}

/* Samples flow until the client cancels; an end from the agent ends the stream. */
static void stream_end(struct astream *s, cJSON *payload, const char *why)
{
	struct rpc_call *c = s->ctx;
	c->base.as = NULL;
	if (!rpc_end_failed(c, payload, why))
		rpc_call_end(c, NULL, 0, NULL, NULL);
}

static const struct astream_ops vitals_ops = { NULL, vitals_event, stream_end, NULL, NULL };

/* VitalsRequest {intervalSeconds}: 0 or less samples every second, as the real
 * server does. */
void rpc_vitals_start(struct rpc_call *c, cJSON *req)
{
	double secs = 0;
	if (rpc_req_int(req, "intervalSeconds", -1e9, VITALS_MAX_INTERVAL_S, &secs)) {
		char msg[80];
		snprintf(msg, sizeof(msg), "intervalSeconds must be a whole number of seconds up to %d",
			 VITALS_MAX_INTERVAL_S);
		rpc_call_fail(c, AE_INVALID_ARGUMENT, msg, NULL);
		return;
	}
	struct cg_usage u;
	if (cgroup_sample(c, &u)) {
		c->cpu_usec = u.cpu_usec;
		c->cpu_at_ms = ur_now_ms();
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "vitals");
	cJSON_AddNumberToObject(open, "interval_seconds", secs > 0 ? secs : 1);
	rpc_call_open(c, open, &vitals_ops);
}

/* ---- Watch ---- */

static const char *fs_kind(const char *type)
{
	static const char *const map[][2] = { { "create", "CREATE" }, { "write", "MODIFY" }, { "chmod", "MODIFY" },
					      { "remove", "DELETE" }, { "rename", "RENAME" } };
	for (size_t i = 0; type && i < sizeof(map) / sizeof(map[0]); i++)
		if (!strcmp(type, map[i][0]))
			return map[i][1];
	return NULL;
}

static void add_abs(struct rpc_call *c, cJSON *o, const char *key, const char *rel)
{
	char path[8192];
	const char *root = c->parent ? c->parent : "";
	snprintf(path, sizeof(path), "%s%s%s", root, strcmp(root, "/") ? "/" : "", rel);
	cJSON_AddStringToObject(o, key, path);
}

/* FsEvent {kind, path, newPath}, paths absolute. A move inside the watched tree
 * comes from the agent as a rename and a create with one cookie, next to each other
 * (inotify's MOVED_FROM and MOVED_TO): one RENAME. Its pair is looked for among the
 * next few events only: a frame of tens of thousands of unpaired renames (the agent
 * may be the sandbox's) must not cost their square on serve's loop. */
#define RENAME_PAIR_WINDOW 8
static void watch_event(struct astream *s, cJSON *ev)
{
	struct rpc_call *c = s->ctx;
	if (agent_call_backlogged(&c->base, EVENTS_UNREAD_MAX)) {
		rpc_call_fail(c, AE_LIMIT_EXCEEDED, BACKLOG_MSG, NULL);
		return;
	}
	const char *root = rpc_jstr(ev, "path");
	if (root && !c->parent) {
		c->parent = strdup(root);
		return;
	}
	const cJSON *list = cJSON_GetObjectItem(ev, "events");
	int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : 0;
	bool *paired = n ? calloc((size_t)n, sizeof(bool)) : NULL;
	if (n && !paired)
		return;
	int i = 0;
	for (const cJSON *e = n ? list->child : NULL; e; e = e->next, i++) {
		const char *name = rpc_jstr(e, "name"), *kind = fs_kind(rpc_jstr(e, "type"));
		if (!name || !kind || paired[i])
			continue;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "kind", kind);
		add_abs(c, o, "path", name);
		double cookie = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "cookie"));
		int j = i + 1;
		for (const cJSON *to = e->next; !strcmp(kind, "RENAME") && cookie > 0 && to && j <= i + RENAME_PAIR_WINDOW;
		     to = to->next, j++) {
			const char *tname = rpc_jstr(to, "name"), *ttype = rpc_jstr(to, "type");
			if (!paired[j] && tname && ttype && !strcmp(ttype, "create") &&
			    cJSON_GetNumberValue(cJSON_GetObjectItem(to, "cookie")) == cookie) {
				add_abs(c, o, "newPath", tname);
				paired[j] = true; /* reported with its rename */
				break;
			}
		}
		rpc_stream_msg_cjson(c, o);
	}
	free(paired);
}

static const struct astream_ops watch_ops = { NULL, watch_event, stream_end, NULL, NULL };

/* WatchRequest {path, recursive}. */
void rpc_watch_start(struct rpc_call *c, cJSON *req)
{
	const cJSON *rec = cJSON_GetObjectItem(req, "recursive");
	if (rec && !cJSON_IsBool(rec)) {
		rpc_call_fail(c, AE_INVALID_ARGUMENT, "recursive must be a boolean", NULL);
		return;
	}
	cJSON *open = cJSON_CreateObject();
	cJSON_AddStringToObject(open, "op", "watch");
	if (!rpc_add_path(c, open, req, "path"))
		return;
	cJSON_AddBoolToObject(open, "recursive", cJSON_IsTrue(rec));
	rpc_call_open(c, open, &watch_ops);
}
