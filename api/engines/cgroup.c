#include "api/engines/cgroup.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <linux/sched.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "api/sandbox/registry.h"

static enum cg_mode mode;
static char parent[CG_N][CG_PATH]; /* v2: [0]; v1: memory [0], cpu [1], pids [2], freezer [3] */
static bool v2_pids; /* the pids controller is enabled for v2 sandbox cgroups */

static int pathf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int pathf(char *out, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(out, CG_PATH, fmt, ap);
	va_end(ap);
	return n < 0 || n >= CG_PATH ? -ENAMETOOLONG : 0;
}

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	/* cgroup v1's memory limit gives up with EINTR whenever the writer has work pending
	 * (io_uring's task work counts), even with no signal in sight: retry. */
	ssize_t n;
	int tries = 0;
	while ((n = write(fd, s, strlen(s))) < 0 && errno == EINTR && ++tries < 1000)
		;
	int rc = n == (ssize_t)strlen(s) ? 0 : n < 0 ? -errno : -EIO;
	close(fd);
	return rc;
}

/* Where the hierarchy holding `want` (a controller, or "" for v2) is mounted and where
 * this process sits in it. */
static int own_dir(bool v2, const char *want, char *out)
{
	char line[1024], rel[CG_PATH] = "", mnt[CG_PATH] = "", mroot[CG_PATH] = "";
	bool found = false;
	FILE *f = fopen("/proc/self/cgroup", "re");
	if (!f)
		return -errno;
	while (!found && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c1 = *c2 = 0;
		const char *ctrls = c1 + 1;
		if (v2) {
			found = !strcmp(line, "0") && !*ctrls;
		} else {
			char tmp[256];
			snprintf(tmp, sizeof(tmp), "%s", ctrls);
			for (char *s = tmp, *tok; (tok = strsep(&s, ","));)
				if (!strcmp(tok, want))
					found = true;
		}
		if (found)
			snprintf(rel, sizeof(rel), "%s", c2 + 1);
	}
	fclose(f);
	if (!found)
		return -ENOENT;
	f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -errno;
	found = false;
	while (!found && fgets(line, sizeof(line), f)) {
		/* id parent maj:min root mountpoint opts... - fstype source superopts */
		char *sep = strstr(line, " - ");
		if (!sep)
			continue;
		char fstype[32], src[256], sopts[512], root[CG_PATH], mp[CG_PATH];
		if (sscanf(sep + 3, "%31s %255s %511s", fstype, src, sopts) != 3 ||
		    sscanf(line, "%*s %*s %*s %511s %511s", root, mp) != 2)
			continue;
		if (strcmp(fstype, v2 ? "cgroup2" : "cgroup"))
			continue;
		bool ok = v2;
		for (char *s = sopts, *tok; !ok && (tok = strsep(&s, ","));)
			if (!strcmp(tok, want))
				ok = true;
		if (ok) {
			snprintf(mnt, sizeof(mnt), "%s", mp);
			snprintf(mroot, sizeof(mroot), "%s", root);
			found = true;
		}
	}
	fclose(f);
	if (!found)
		return -ENOENT;
	/* A mount of a subtree (cgroup namespaces, containers) shows paths below its root. */
	const char *r = rel;
	size_t rl = strlen(mroot);
	if (strcmp(mroot, "/") && !strncmp(rel, mroot, rl))
		r = rel + rl;
	if (!strcmp(r, "/"))
		r = "";
	return pathf(out, "%s%s", mnt, r);
}

static bool has_token(const char *path, const char *tok)
{
	char buf[512];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	for (char *s = buf, *t; (t = strsep(&s, " \n"));)
		if (!strcmp(t, tok))
			return true;
	return false;
}

static int setup_v2(const char *name, struct mitos_err *e)
{
	char own[CG_PATH], p[CG_PATH];
	if (own_dir(true, "", own))
		return mitos_err_set(e, -ENOENT, "no cgroup v2 hierarchy");
	if (pathf(p, "%s/cgroup.controllers", own) || !has_token(p, "memory") || !has_token(p, "cpu"))
		return mitos_err_set(e, -ENOENT, "cgroup v2 at %.200s has no memory and cpu controllers", own);
	if (pathf(parent[0], "%s/%s", own, name))
		return -ENAMETOOLONG;
	if (mkdir(parent[0], 0755) < 0 && errno != EEXIST)
		return mitos_err_set(e, -errno, "cannot create %.200s: %s", parent[0], strerror(errno));
	pathf(p, "%s/cgroup.subtree_control", own);
	int rc = write_str(p, "+memory +cpu");
	if (rc == -EBUSY) {
		/* No controllers for children of a cgroup that has processes of its own (the
		 * v2 rule): serve moves into a leaf of its own subtree first. */
		char leaf[CG_PATH], procs[CG_PATH];
		if (!pathf(leaf, "%s/mitos-serve", own) && (mkdir(leaf, 0755) == 0 || errno == EEXIST) &&
		    !pathf(procs, "%s/cgroup.procs", leaf) && !write_str(procs, "0"))
			rc = write_str(p, "+memory +cpu");
	}
	if (!rc) {
		pathf(p, "%s/cgroup.subtree_control", parent[0]);
		rc = write_str(p, "+memory +cpu");
	}
	if (rc)
		return mitos_err_set(e, rc, "cannot enable the memory and cpu controllers under %.200s: %s", own,
				     strerror(-rc));
	/* The PID limit where the host delegates the controller (else none, said at start). */
	pathf(p, "%s/cgroup.subtree_control", own);
	v2_pids = !write_str(p, "+pids");
	pathf(p, "%s/cgroup.subtree_control", parent[0]);
	v2_pids = v2_pids && !write_str(p, "+pids");
	return 0;
}

static int setup_v1(const char *name, struct mitos_err *e)
{
	static const char *ctl[2] = { "memory", "cpu" };
	for (int i = 0; i < 2; i++) {
		char own[CG_PATH];
		if (own_dir(false, ctl[i], own) || pathf(parent[i], "%s/%s", own, name))
			return mitos_err_set(e, -ENOENT, "no cgroup v1 %s hierarchy either", ctl[i]);
		if (mkdir(parent[i], 0755) < 0 && errno != EEXIST)
			return mitos_err_set(e, -errno, "cannot create %.200s: %s", parent[i], strerror(errno));
	}
	/* The pids and freezer hierarchies are optional: without them, sandboxes have no
	 * PID limit, and pausing one stops its processes with signals. */
	static const char *optional[2] = { "pids", "freezer" };
	for (int i = 2; i < CG_N; i++) {
		char own[CG_PATH];
		if (own_dir(false, optional[i - 2], own) || pathf(parent[i], "%s/%s", own, name) ||
		    (mkdir(parent[i], 0755) < 0 && errno != EEXIST))
			parent[i][0] = 0;
	}
	return 0;
}

/* Cgroups whose serve died (their names start with its pid, after an optional
 * "vm-"/"tpl-") and that nothing runs in any more: a sandbox that ended while no serve
 * ran, its record since removed. rmdir never removes a cgroup that has processes, and
 * one a live serve made (its process may not have joined yet) is left alone. */
static void sweep(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		const char *n = de->d_name;
		while (*n && !isdigit((unsigned char)*n))
			n++;
		long pid = strtol(n, NULL, 10);
		if (de->d_type != DT_DIR || de->d_name[0] == '.' || pid <= 0 || pid == getpid())
			continue;
		bool creator_gone = kill((pid_t)pid, 0) < 0 && errno == ESRCH;
		char p[CG_PATH];
		if (creator_gone && !pathf(p, "%s/%s", dir, de->d_name))
			rmdir(p);
	}
	closedir(d);
}

enum cg_mode cgroup_init(const char *name, bool allow_v1, char *info, size_t infolen)
{
	struct mitos_err v2 = { 0 }, v1 = { 0 };
	memset(parent, 0, sizeof(parent));
	mode = CG_NONE;
	v2_pids = false;
	if (!setup_v2(name, &v2))
		mode = CG_V2;
	else if (allow_v1 && !setup_v1(name, &v1))
		mode = CG_V1;
	else
		memset(parent, 0, sizeof(parent));
	for (int i = 0; i < CG_N; i++)
		if (parent[i][0])
			sweep(parent[i]);
	if (mode == CG_V2)
		snprintf(info, infolen, "cgroup v2 %s/<sandbox> with memory.max, cpu.max and %s", parent[0],
			 v2_pids ? "pids.max" : "NO PID limit (the pids controller is not delegated)");
	else if (mode == CG_V1)
		snprintf(info, infolen, "cgroup v1 memory.limit_in_bytes, cpu.cfs_quota_us and %s under %s and %s "
			 "(%s)", parent[2][0] ? "pids.max" : "NO PID limit (no v1 pids hierarchy)", parent[0],
			 parent[1], v2.msg);
	else
		snprintf(info, infolen, "NO memory or CPU limits (%s%s%s)", v2.msg, v1.msg[0] ? "; " : "",
			 allow_v1 ? v1.msg : "cgroup v1 needs root");
	return mode;
}

enum cg_mode cgroup_mode(void)
{
	return mode;
}

/* Every process left in one cgroup gets SIGKILL: v2 in one write, v1 one by one. */
static void kill_members(const char *dir)
{
	char p[CG_PATH], buf[4096];
	if (mode == CG_V2 && !pathf(p, "%s/cgroup.kill", dir) && !write_str(p, "1"))
		return;
	if (pathf(p, "%s/cgroup.procs", dir))
		return;
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	for (char *s = buf, *t; (t = strsep(&s, "\n"));) {
		long pid = strtol(t, NULL, 10);
		if (pid > 0)
			kill((pid_t)pid, SIGKILL);
	}
}

void cgroup_remove(struct cg_set *cg)
{
	/* Tasks frozen by v1's freezer die only once thawed: the signal goes first. */
	if (mode == CG_V1 && cg->dir[3][0]) {
		kill_members(cg->dir[3]);
		cgroup_freeze(cg, false);
	}
	for (int i = 0; i < CG_N; i++) {
		if (!cg->dir[i][0])
			continue;
		/* The last process may still be leaving the cgroup for a moment after its
		 * exit (freeing its memory); one that is still running is killed. */
		for (int tries = 0; tries < 500 && rmdir(cg->dir[i]) < 0 && errno == EBUSY; tries++) {
			if (tries % 50 == 10)
				kill_members(cg->dir[i]);
			usleep(2000);
		}
		cg->dir[i][0] = 0;
	}
}

void cgroup_entry_close(struct cg_entry *e)
{
	for (int i = 0; i < CG_N; i++)
		if (e->v1fds[i] >= 0)
			close(e->v1fds[i]), e->v1fds[i] = -1;
	if (e->v2fd >= 0)
		close(e->v2fd), e->v2fd = -1;
}

int cgroup_create(const char *name, const struct cg_limits *l, struct cg_set *cg, struct cg_entry *e)
{
	char p[CG_PATH], v[64];
	memset(cg, 0, sizeof(*cg));
	e->v2fd = -1;
	for (int i = 0; i < CG_N; i++)
		e->v1fds[i] = -1;
	if (mode == CG_NONE)
		return 0;
	uint64_t mem = (uint64_t)l->memory_max_mib << 20;
	int n = mode == CG_V2 ? 1 : CG_N;
	for (int i = 0; i < n; i++) {
		if (!parent[i][0])
			continue;
		if (pathf(cg->dir[i], "%s/%s", parent[i], name))
			return -ENAMETOOLONG;
		if (mkdir(cg->dir[i], 0755) < 0) {
			int rc = -errno;
			cg->dir[i][0] = 0;
			cgroup_remove(cg);
			return rc;
		}
	}
	int rc;
	snprintf(v, sizeof(v), "%" PRIu64, mem);
	if (mode == CG_V2) {
		pathf(p, "%s/memory.max", cg->dir[0]);
		rc = write_str(p, v);
		/* Without swap the limit is the limit (absent without swap support). */
		pathf(p, "%s/memory.swap.max", cg->dir[0]);
		write_str(p, "0");
		snprintf(v, sizeof(v), "%u 100000", l->cpu_percent * 1000u);
		pathf(p, "%s/cpu.max", cg->dir[0]);
		if (!rc)
			rc = write_str(p, v);
		pathf(p, "%s/pids.max", cg->dir[0]);
		snprintf(v, sizeof(v), "%u", l->pids_max);
		if (!rc && v2_pids && l->pids_max)
			rc = write_str(p, v);
		if (!rc && (e->v2fd = open(cg->dir[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
			rc = -errno;
	} else {
		pathf(p, "%s/memory.limit_in_bytes", cg->dir[0]);
		rc = write_str(p, v);
		pathf(p, "%s/memory.memsw.limit_in_bytes", cg->dir[0]);
		write_str(p, v);
		pathf(p, "%s/cpu.cfs_period_us", cg->dir[1]);
		if (!rc)
			rc = write_str(p, "100000");
		snprintf(v, sizeof(v), "%u", l->cpu_percent * 1000u);
		pathf(p, "%s/cpu.cfs_quota_us", cg->dir[1]);
		if (!rc)
			rc = write_str(p, v);
		snprintf(v, sizeof(v), "%u", l->pids_max);
		pathf(p, "%s/pids.max", cg->dir[2]);
		if (!rc && cg->dir[2][0] && l->pids_max)
			rc = write_str(p, v);
		for (int i = 0; i < n && !rc; i++) {
			if (!cg->dir[i][0])
				continue;
			pathf(p, "%s/cgroup.procs", cg->dir[i]);
			if ((e->v1fds[i] = open(p, O_WRONLY | O_CLOEXEC)) < 0)
				rc = -errno;
		}
	}
	if (rc) {
		cgroup_entry_close(e);
		cgroup_remove(cg);
	}
	return rc;
}

void cgroup_enter_child(const struct cg_entry *e)
{
	for (int i = 0; i < CG_N; i++)
		if (e->v1fds[i] >= 0)
			syscall(SYS_write, e->v1fds[i], "0", 1);
}

/* Every slot in order, "" for a hierarchy the host lacks, so that each dir comes back
 * to its own slot. */
void cgroup_record(const struct cg_set *cg, cJSON *o)
{
	cJSON *a = cJSON_AddArrayToObject(o, "cgroups");
	int last = CG_N - 1;
	while (last > 0 && !cg->dir[last][0])
		last--;
	for (int i = 0; i <= last; i++)
		cJSON_AddItemToArray(a, cJSON_CreateString(cg->dir[i]));
}

static bool owned(const char *dir)
{
	for (int i = 0; i < CG_N; i++) {
		size_t n = strlen(parent[i]);
		if (n && !strncmp(dir, parent[i], n) && dir[n] == '/' && !strstr(dir + n, "/.."))
			return true;
	}
	return false;
}

void cgroup_from_record(const cJSON *o, struct cg_set *cg)
{
	memset(cg, 0, sizeof(*cg));
	const cJSON *it;
	int i = 0;
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "cgroups")) {
		if (i == CG_N)
			break;
		if (cJSON_IsString(it) && strlen(it->valuestring) < CG_PATH && owned(it->valuestring))
			snprintf(cg->dir[i], CG_PATH, "%s", it->valuestring);
		i++;
	}
}

int cgroup_read_record(const char *dir, struct cg_set *cg)
{
	static const char *records[] = { "cgroup.json", "vm.json" };
	for (size_t i = 0; i < sizeof(records) / sizeof(records[0]); i++) {
		char path[CG_PATH + 64];
		if (pathf(path, "%s/%s", dir, records[i]))
			return -ENAMETOOLONG;
		cJSON *o = registry_read_json(path);
		if (!o)
			continue;
		cgroup_from_record(o, cg);
		cJSON_Delete(o);
		if (cg->dir[0][0])
			return 0;
	}
	return -ENOENT;
}

int cgroup_freeze(const struct cg_set *cg, bool frozen)
{
	char path[CG_PATH];
	if (mode == CG_V2 && cg->dir[0][0]) {
		if (pathf(path, "%s/cgroup.freeze", cg->dir[0]))
			return -ENAMETOOLONG;
		return write_str(path, frozen ? "1" : "0");
	}
	if (mode == CG_V1 && cg->dir[3][0]) {
		if (pathf(path, "%s/freezer.state", cg->dir[3]))
			return -ENAMETOOLONG;
		return write_str(path, frozen ? "FROZEN" : "THAWED");
	}
	return -EOPNOTSUPP;
}

int cgroup_limits_parse(const cJSON *spec, unsigned mem_min, const struct cg_limits *dflt, struct cg_limits *out,
			struct mitos_err *e)
{
	int rc = registry_uint_field(spec, "memory_max_mib", mem_min, 1u << 21, dflt->memory_max_mib,
				     &out->memory_max_mib, e);
	if (!rc)
		rc = registry_uint_field(spec, "cpu_percent", 1, 6400, dflt->cpu_percent, &out->cpu_percent, e);
	if (!rc)
		rc = registry_uint_field(spec, "pids_max", 16, 1u << 22, dflt->pids_max, &out->pids_max, e);
	return rc;
}

long cgroup_clone(const struct cg_entry *e, uint64_t flags, int *pidfd)
{
	struct clone_args ca;
	memset(&ca, 0, sizeof(ca));
	ca.flags = flags | CLONE_PIDFD;
	if (e->v2fd >= 0) {
		ca.flags |= CLONE_INTO_CGROUP;
		ca.cgroup = (uint64_t)e->v2fd;
	}
	ca.pidfd = (uint64_t)(uintptr_t)pidfd;
	ca.exit_signal = SIGCHLD;
	return syscall(SYS_clone3, &ca, sizeof(ca));
}
