/* agent-bench: latency of agent operations over a socketpair (tools/bench-agent).
 * Prints "name: value unit" lines. Usage: agent-bench [exec_runs] [file_runs] [kernel_starts] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent_client.h"

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void report(const char *name, double *v, int n, double scale, const char *unit)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	printf("%s_p50: %.1f %s\n", name, v[n / 2] / scale, unit);
	printf("%s_p99: %.1f %s\n", name, v[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] / scale, unit);
}

static int call_ok(struct ac *c, const char *json, struct ac_result *r)
{
	int rc = ac_call(c, json, r, 30000);
	if (rc || !r->end || strstr(r->end, "\"error\"")) {
		fprintf(stderr, "agent-bench: %s failed: %s\n", json, r->end ? r->end : "timeout");
		return -1;
	}
	return 0;
}

/* run_code per language: a new context to its first value (the kernel's start),
 * then a cell's round trip in a warm one. */
static int bench_code(struct ac *c, const char *lang, int starts, int runs, double *t)
{
	char req[256];
	struct ac_result r;
	for (int i = 0; i < starts; i++) {
		double t0 = now_us();
		snprintf(req, sizeof(req), "{\"op\":\"context_create\",\"id\":\"bench-%s\",\"language\":\"%s\"}", lang, lang);
		if (call_ok(c, req, &r))
			return -1;
		ac_result_free(&r);
		snprintf(req, sizeof(req), "{\"op\":\"run_code\",\"context\":\"bench-%s\",\"code\":\"1 + 1\"}", lang);
		if (call_ok(c, req, &r))
			return -1;
		t[i] = now_us() - t0;
		ac_result_free(&r);
		if (i < starts - 1) {
			snprintf(req, sizeof(req), "{\"op\":\"context_remove\",\"id\":\"bench-%s\"}", lang);
			if (call_ok(c, req, &r))
				return -1;
			ac_result_free(&r);
		}
	}
	char name[64];
	snprintf(name, sizeof(name), "run_code_%s_start", lang);
	report(name, t, starts, 1000, "ms");
	snprintf(req, sizeof(req), "{\"op\":\"run_code\",\"context\":\"bench-%s\",\"code\":\"1 + 1\"}", lang);
	for (int i = 0; i < runs; i++) {
		double t0 = now_us();
		if (call_ok(c, req, &r) || !r.events.p || !strstr((char *)r.events.p, "2"))
			return -1;
		t[i] = now_us() - t0;
		ac_result_free(&r);
	}
	snprintf(name, sizeof(name), "run_code_%s_roundtrip", lang);
	report(name, t, runs, 1000, "ms");
	return 0;
}

int main(int argc, char **argv)
{
	int exec_runs = argc > 1 ? atoi(argv[1]) : 500;
	int file_runs = argc > 2 ? atoi(argv[2]) : 50;
	int starts = argc > 3 ? atoi(argv[3]) : 5;
	if (exec_runs < 1 || file_runs < 1 || starts < 1) {
		fprintf(stderr, "usage: agent-bench [exec_runs] [file_runs] [kernel_starts]\n");
		return 2;
	}
	struct ac c;
	if (ac_start(&c, NULL)) {
		fprintf(stderr, "agent-bench: cannot start the agent (set MITOS_AGENT)\n");
		return 1;
	}
	double *t = calloc((size_t)(exec_runs > file_runs ? exec_runs : file_runs), sizeof(double));
	struct ac_result r;

	for (int i = 0; i < exec_runs; i++) {
		double t0 = now_us();
		if (call_ok(&c, "{\"op\":\"exec\",\"argv\":[\"true\"]}", &r))
			return 1;
		t[i] = now_us() - t0;
		ac_result_free(&r);
	}
	report("exec_true_roundtrip", t, exec_runs, 1, "us");

	for (int i = 0; i < exec_runs; i++) {
		double t0 = now_us();
		if (call_ok(&c, "{\"op\":\"health\"}", &r))
			return 1;
		t[i] = now_us() - t0;
		ac_result_free(&r);
	}
	report("health_roundtrip", t, exec_runs, 1, "us");

	const size_t size = 1u << 20;
	char *data = malloc(size), path[64], req[128];
	for (size_t i = 0; i < size; i++)
		data[i] = (char)(i * 7);
	snprintf(path, sizeof(path), "/tmp/mitos-agent-bench-%d", (int)getpid());
	double *tw = calloc((size_t)file_runs, sizeof(double)), *tr = calloc((size_t)file_runs, sizeof(double));
	for (int i = 0; i < file_runs; i++) {
		double t0 = now_us();
		uint32_t id = ac_new_id(&c);
		snprintf(req, sizeof(req), "{\"op\":\"write\",\"path\":\"%s\"}", path);
		ac_open(&c, id, req);
		if (ac_write_data(&c, id, data, size, true, 30000) || ac_collect(&c, id, &r, 30000) ||
		    strstr(r.end, "\"error\"")) {
			fprintf(stderr, "agent-bench: write failed\n");
			return 1;
		}
		ac_result_free(&r);
		double t1 = now_us();
		snprintf(req, sizeof(req), "{\"op\":\"read\",\"path\":\"%s\"}", path);
		if (call_ok(&c, req, &r) || r.ch[0].len != size || memcmp(r.ch[0].p, data, size)) {
			fprintf(stderr, "agent-bench: read back differs\n");
			return 1;
		}
		ac_result_free(&r);
		tw[i] = t1 - t0;
		tr[i] = now_us() - t1;
		t[i] = now_us() - t0;
	}
	remove(path);
	report("file_1mib_write", tw, file_runs, 1000, "ms");
	report("file_1mib_read", tr, file_runs, 1000, "ms");
	report("file_1mib_write_read", t, file_runs, 1000, "ms");
	qsort(t, (size_t)file_runs, sizeof(double), cmp_double);
	printf("file_1mib_write_read_throughput: %.0f MiB/s\n", 2.0 * 1e6 / t[file_runs / 2]);
	free(t);
	t = calloc((size_t)(exec_runs > starts ? exec_runs : starts), sizeof(double));
	const char *langs[] = { "python", "javascript", "typescript" };
	for (size_t i = 0; i < 3; i++)
		if (bench_code(&c, langs[i], starts, exec_runs / 5 ? exec_runs / 5 : 1, t))
			return 1;
	ac_stop(&c);
	return 0;
}
