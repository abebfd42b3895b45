/* The guest as /proc shows it: ps (every process, with the CPU it used over a
 * short window), kill (a signal to any process but init and the agent) and
 * vitals (CPU, steal, memory and process count, sampled until cancelled). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent/loop.h"
#include "agent/ops.h"

#define PS_WINDOW_MS 100
#define PS_MAX 65536
#define VITALS_FIRST_MS 100
#define VITALS_MAX_INTERVAL_S 3600

struct pstat {
	int pid, ppid;
	char comm[64];
	char state;
	unsigned long long ticks; /* utime + stime */
	long long rss_pages;
};

/* /proc/PID/stat; the command name may hold spaces and parentheses. */
static int read_pstat(int pid, struct pstat *p)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *open = strchr(buf, '('), *close = strrchr(buf, ')');
	if (!open || !close || close < open)
		return -1;
	size_t clen = (size_t)(close - open - 1);
	if (clen >= sizeof(p->comm))
		clen = sizeof(p->comm) - 1;
	memcpy(p->comm, open + 1, clen);
	p->comm[clen] = 0;
	unsigned long long ut, st;
	if (sscanf(close + 1, " %c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d %*u %*u %lld",
		   &p->state, &p->ppid, &ut, &st, &p->rss_pages) != 5)
		return -1;
	p->pid = pid;
	p->ticks = ut + st;
	return 0;
}

/* The pids in /proc, ascending; -1 on error. */
static int list_pids(int **out)
{
	DIR *d = opendir("/proc");
	if (!d)
		return -1;
	int n = 0, cap = 0, *v = NULL;
	struct dirent *e;
	while ((e = readdir(d)) && n < PS_MAX) {
		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		if (n == cap) {
			int *nv = realloc(v, (size_t)(cap = cap ? cap * 2 : 256) * sizeof(*v));
			if (!nv)
				break;
			v = nv;
		}
		v[n++] = atoi(e->d_name);
	}
	closedir(d);
	*out = v;
	return n;
}

/* The "cpu" line of /proc/stat: every field's ticks, and steal's. */
static void cpu_totals(unsigned long long *total, unsigned long long *steal, unsigned long long *idle)
{
	unsigned long long v[8] = { 0 };
	*total = *steal = *idle = 0;
	FILE *f = fopen("/proc/stat", "re");
	if (!f)
		return;
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
		   &v[7]) >= 4) {
		for (int i = 0; i < 8; i++)
			*total += v[i];
		*steal = v[7];
		*idle = v[3] + v[4];
	}
	fclose(f);
}

/* ---- ps ---- */

struct ps {
	struct stream *s;
	struct timer t;
	int *pids;
	unsigned long long *ticks;
	int n;
	unsigned long long total0;
};

static void ps_free(struct ps *p)
{
	timer_disarm(&p->t);
	free(p->pids);
	free(p->ticks);
	free(p);
}

static void ps_done(struct timer *t)
{
	struct ps *p = (struct ps *)((char *)t - offsetof(struct ps, t));
	struct stream *s = p->s;
	unsigned long long total, steal, idle;
	cpu_totals(&total, &steal, &idle);
	double window = total > p->total0 ? (double)(total - p->total0) : 0;
	long page = sysconf(_SC_PAGESIZE);
	int *pids, n = list_pids(&pids);
	if (n < 0) {
		int err = -errno;
		s->ctx = NULL;
		ps_free(p);
		stream_end_errno(s, err, "/proc");
		return;
	}
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "processes");
	jw_arr(&w);
	for (int i = 0, j = 0; i < n; i++) {
		struct pstat ps;
		if (read_pstat(pids[i], &ps))
			continue; /* gone meanwhile */
		while (j < p->n && p->pids[j] < ps.pid)
			j++;
		double cpu = 0;
		if (j < p->n && p->pids[j] == ps.pid && window > 0 && ps.ticks > p->ticks[j])
			cpu = (double)(ps.ticks - p->ticks[j]) / window * 100.0;
		jw_obj(&w);
		jw_key(&w, "pid");
		jw_int(&w, ps.pid);
		jw_key(&w, "ppid");
		jw_int(&w, ps.ppid);
		jw_key(&w, "command");
		jw_str(&w, ps.comm);
		jw_key(&w, "state");
		jw_strn(&w, &ps.state, 1);
		jw_key(&w, "cpu_percent");
		jw_double(&w, cpu);
		jw_key(&w, "rss_bytes");
		jw_int(&w, ps.rss_pages > 0 ? ps.rss_pages * page : 0);
		jw_obj_end(&w);
	}
	jw_arr_end(&w);
	jw_obj_end(&w);
	free(pids);
	s->ctx = NULL;
	ps_free(p);
	stream_end_jw(s, &w);
}

static void ps_cancel(struct stream *s)
{
	if (s->ctx)
		ps_free(s->ctx);
}

static const struct stream_ops ps_ops = { .cancel = ps_cancel };

static int by_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return (x > y) - (x < y);
}

void op_ps_open(struct stream *s, const struct json *req)
{
	(void)req;
	struct ps *p = calloc(1, sizeof(*p));
	if (!p || (p->n = list_pids(&p->pids)) < 0) {
		free(p);
		stream_end_errno(s, -ENOMEM, "ps");
		return;
	}
	qsort(p->pids, (size_t)p->n, sizeof(int), by_int);
	if (!(p->ticks = calloc((size_t)p->n + 1, sizeof(*p->ticks)))) {
		ps_free(p);
		stream_end_errno(s, -ENOMEM, "ps");
		return;
	}
	unsigned long long steal, idle;
	cpu_totals(&p->total0, &steal, &idle);
	for (int i = 0; i < p->n; i++) {
		struct pstat ps;
		if (!read_pstat(p->pids[i], &ps))
			p->ticks[i] = ps.ticks;
	}
	p->s = s;
	s->ctx = p;
	s->ops = &ps_ops;
	/* CPU use is a rate: the second look, a window later, gives it. */
	timer_arm(&p->t, loop_now_ms() + PS_WINDOW_MS, ps_done);
}

/* ---- kill ---- */

void op_kill_open(struct stream *s, const struct json *req)
{
	int64_t pid, sig;
	if (json_get_int(req, "pid", INT32_MIN, INT32_MAX, &pid) || json_get_int(req, "signal", INT32_MIN, INT32_MAX, &sig)) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "pid and signal must be integers");
		return;
	}
	if (pid <= 1 || pid == getpid()) {
		stream_end_error(s, PERR_INVALID_ARGUMENT,
				 "refusing to signal pid %lld: pids up to 1 and the agent itself (pid %d) keep the sandbox "
				 "running; end the sandbox with DELETE /v1/sandboxes/{id}", (long long)pid, (int)getpid());
		return;
	}
	if (sig < 1 || sig > 64) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "signal %lld is out of range 1..64", (long long)sig);
		return;
	}
	if (kill((pid_t)pid, (int)sig) < 0) {
		int err = errno;
		if (err == ESRCH)
			stream_end_error(s, PERR_NOT_FOUND, "no process %lld", (long long)pid);
		else
			stream_end_errno(s, -err, "kill");
		return;
	}
	stream_end_ok(s);
}

/* ---- vitals ---- */

struct vitals {
	struct stream *s;
	struct timer t;
	uint64_t interval_ms;
	unsigned long long total, steal, idle;
};

static long long meminfo_kb(const char *text, const char *key)
{
	const char *p = strstr(text, key);
	return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

static void vitals_sample(struct timer *t)
{
	struct vitals *v = (struct vitals *)((char *)t - offsetof(struct vitals, t));
	struct stream *s = v->s;
	unsigned long long total, steal, idle;
	cpu_totals(&total, &steal, &idle);
	timer_arm(&v->t, loop_now_ms() + v->interval_ms, vitals_sample);
	/* Samples are not flow-controlled: one the client has no room for is dropped. */
	if (stream_congested(s))
		return;
	double d = total > v->total ? (double)(total - v->total) : 0;
	double busy = d > 0 && idle >= v->idle ? 100.0 * (d - (double)(idle - v->idle)) / d : 0;
	double stolen = d > 0 && steal >= v->steal ? 100.0 * (double)(steal - v->steal) / d : 0;
	v->total = total;
	v->steal = steal;
	v->idle = idle;
	char mem[4096] = "";
	FILE *f = fopen("/proc/meminfo", "re");
	if (f) {
		mem[fread(mem, 1, sizeof(mem) - 1, f)] = 0;
		fclose(f);
	}
	long long mtotal = meminfo_kb(mem, "MemTotal:"), avail = meminfo_kb(mem, "MemAvailable:");
	int *pids, n = list_pids(&pids);
	free(pids);
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "sampled_at_unix");
	jw_int(&w, (int64_t)time(NULL));
	jw_key(&w, "cpu_percent");
	jw_double(&w, busy);
	jw_key(&w, "cpu_steal_percent");
	jw_double(&w, stolen);
	jw_key(&w, "mem_total_bytes");
	jw_int(&w, mtotal > 0 ? mtotal * 1024 : 0);
	jw_key(&w, "mem_used_bytes");
	jw_int(&w, mtotal > 0 && avail >= 0 && avail <= mtotal ? (mtotal - avail) * 1024 : 0);
	jw_key(&w, "process_count");
	jw_int(&w, n > 0 ? n : 0);
	jw_obj_end(&w);
	stream_event_jw(s, &w);
}

static void vitals_cancel(struct stream *s)
{
	struct vitals *v = s->ctx;
	timer_disarm(&v->t);
	free(v);
}

static const struct stream_ops vitals_ops = { .cancel = vitals_cancel };

void op_vitals_open(struct stream *s, const struct json *req)
{
	int64_t secs = 1;
	if (json_get_int(req, "interval_seconds", 1, VITALS_MAX_INTERVAL_S, &secs) == -EINVAL) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "interval_seconds must be from 1 to %d", VITALS_MAX_INTERVAL_S);
		return;
	}
	struct vitals *v = calloc(1, sizeof(*v));
	if (!v) {
		stream_end_errno(s, -ENOMEM, "vitals");
		return;
	}
	v->s = s;
	v->interval_ms = (uint64_t)secs * 1000;
	cpu_totals(&v->total, &v->steal, &v->idle);
	s->ctx = v;
	s->ops = &vitals_ops;
	/* The first sample after a short window, so the first CPU figure is a rate too. */
	timer_arm(&v->t, loop_now_ms() + VITALS_FIRST_MS, vitals_sample);
}
