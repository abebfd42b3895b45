#include "api/sandbox/workload.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/http/uring.h"
#include "api/sandbox/agent_client.h"
#include "lib/printable.h"

#define PROBE_EVERY_MS 250
#define PROBE_TIMEOUT_MS 2000
#define START_TIMEOUT_MS 60000
#define LOG_TAIL 4096
#define MAX_ARGS 256

/* ---- the spec ---- */

struct cJSON *workload_from_contract(const cJSON *w, const char **bad)
{
	const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(w, "command");
	const cJSON *env = cJSON_GetObjectItemCaseSensitive(w, "env");
	const cJSON *ready = cJSON_GetObjectItemCaseSensitive(w, "ready");
	*bad = NULL;
	if (!cJSON_IsObject(w) || !cJSON_IsArray(cmd) || !cJSON_GetArraySize(cmd) || cJSON_GetArraySize(cmd) > MAX_ARGS)
		*bad = "workload must be {command: [program, args...], env?, ready?}";
	for (const cJSON *a = cJSON_IsArray(cmd) ? cmd->child : NULL; a && !*bad; a = a->next)
		if (!cJSON_IsString(a) || (a == cmd->child && !*a->valuestring))
			*bad = "workload.command must be a list of strings, the first the program";
	for (const cJSON *e = cJSON_IsObject(env) ? env->child : NULL; e && !*bad; e = e->next)
		if (!cJSON_IsString(e) || !*e->string || strchr(e->string, '='))
			*bad = "workload.env must map names to string values";
	if (!*bad && env && !cJSON_IsNull(env) && !cJSON_IsObject(env))
		*bad = "workload.env must be an object";
	if (*bad)
		return NULL;
	cJSON *out = cJSON_CreateObject();
	cJSON_AddItemToObject(out, "command", cJSON_Duplicate(cmd, 1));
	cJSON_AddItemToObject(out, "env", cJSON_IsObject(env) ? cJSON_Duplicate(env, 1) : cJSON_CreateObject());
	if (ready && !cJSON_IsNull(ready)) {
		const cJSON *port = cJSON_GetObjectItemCaseSensitive(ready, "port");
		const cJSON *path = cJSON_GetObjectItemCaseSensitive(ready, "path");
		const cJSON *expect = cJSON_GetObjectItemCaseSensitive(ready, "expect");
		const cJSON *to = cJSON_GetObjectItemCaseSensitive(ready, "timeout_seconds");
		double p = cJSON_GetNumberValue(port), x = expect ? cJSON_GetNumberValue(expect) : 200,
		       t = to ? cJSON_GetNumberValue(to) : 60;
		const char *ps = path ? cJSON_GetStringValue(path) : "/";
		if (!cJSON_IsObject(ready) || !(p >= 1 && p <= 65535 && p == (int)p) || (x && !(x >= 100 && x <= 599)) ||
		    !(t >= 0 && t <= 3600) || !ps || (*ps && *ps != '/') || strlen(ps) > 512 || strpbrk(ps, " \r\n")) {
			*bad = "workload.ready must be {port: 1-65535, path?: \"/...\", expect?: an HTTP status, "
			       "timeout_seconds?: 0-3600}";
			cJSON_Delete(out);
			return NULL;
		}
		cJSON *r = cJSON_AddObjectToObject(out, "ready");
		cJSON_AddNumberToObject(r, "port", p);
		cJSON_AddStringToObject(r, "path", *ps ? ps : "/");
		cJSON_AddNumberToObject(r, "expect", x ? (int)x : 200);
		cJSON_AddNumberToObject(r, "timeout_seconds", t ? (int)t : 60);
	}
	return out;
}

/* Detached from the agent's stream, its output in WORKLOAD_LOG: the start answers
 * as soon as it is launched. */
static char *start_open(const cJSON *wl)
{
	cJSON *o = cJSON_CreateObject(), *argv = cJSON_AddArrayToObject(o, "argv");
	cJSON_AddStringToObject(o, "op", "exec");
	cJSON_AddItemToArray(argv, cJSON_CreateString("/bin/sh"));
	cJSON_AddItemToArray(argv, cJSON_CreateString("-c"));
	cJSON_AddItemToArray(argv, cJSON_CreateString("\"$@\" </dev/null >>" WORKLOAD_LOG " 2>&1 &"));
	cJSON_AddItemToArray(argv, cJSON_CreateString("mitos-workload"));
	const cJSON *a;
	cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(wl, "command"))
		cJSON_AddItemToArray(argv, cJSON_CreateString(a->valuestring));
	cJSON_AddItemToObject(o, "env", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(wl, "env"), 1));
	cJSON_AddStringToObject(o, "tag", "workload");
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return s;
}

static const cJSON *ready_of(const cJSON *wl)
{
	return cJSON_GetObjectItemCaseSensitive(wl, "ready");
}

static int ready_int(const cJSON *wl, const char *key)
{
	return (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(ready_of(wl), key));
}

static char *probe_open(const cJSON *wl)
{
	char *s = malloc(700);
	if (s)
		snprintf(s, 700, "{\"op\":\"probe\",\"port\":%d,\"path\":\"%s\",\"timeout_ms\":%d}", ready_int(wl, "port"),
			 cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ready_of(wl), "path")), PROBE_TIMEOUT_MS);
	return s;
}

static const char log_open[] = "{\"op\":\"read\",\"path\":\"" WORKLOAD_LOG "\",\"length\":" "4096" "}";

/* What the start's END says: 0, or -EIO and why. */
static int start_result(const cJSON *end, struct mitos_err *e)
{
	const cJSON *err = cJSON_GetObjectItemCaseSensitive(end, "error");
	if (err)
		return mitos_err_set(e, -EIO, "the workload could not be started: %s",
				     cJSON_GetStringValue(cJSON_GetObjectItem(err, "message")) ?: "the agent refused");
	if (!cJSON_IsTrue(cJSON_GetObjectItem(end, "exited")) ||
	    cJSON_GetNumberValue(cJSON_GetObjectItem(end, "exit_code")))
		return mitos_err_set(e, -EIO, "the workload could not be started (/bin/sh in the image launches it)");
	return 0;
}

/* One probe's END: the status, or 0 with what went wrong in last (printable: the
 * sandbox's agent wrote it). */
static int probe_status(const cJSON *end, char *last, size_t len)
{
	const cJSON *err = cJSON_GetObjectItemCaseSensitive(end, "error");
	if (err) {
		const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(err, "message")) ?: "no answer";
		printable_copy(last, len, m, strlen(m), 0);
		return 0;
	}
	int st = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(end, "status"));
	snprintf(last, len, "it answered %d", st);
	return st;
}

/* The workload never served: -ETIMEDOUT, with the end of its output on one printable line
 * (it goes into errors and serve's log, and the sandbox wrote it). */
static int failure(const cJSON *wl, const char *last, const char *launch, const char *log, size_t log_len,
		   struct mitos_err *e)
{
	size_t from = log_len > 400 ? log_len - 400 : 0;
	char tail[401];
	while (log_len > from && (log[log_len - 1] == '\n' || log[log_len - 1] == '\r'))
		log_len--;
	size_t k = printable_copy(tail, sizeof(tail), log + from, log_len - from, '|');
	return mitos_err_set(e, -ETIMEDOUT, "the template's workload did not answer GET %s on port %d with %d within "
			     "%d s (last: %s)%s%s%s%s",
			     cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ready_of(wl), "path")),
			     ready_int(wl, "port"), ready_int(wl, "expect"), ready_int(wl, "timeout_seconds"), last,
			     k ? "; its output ends: " : "; it wrote nothing", tail,
			     launch && *launch ? "; its launcher said: " : "", launch ? launch : "");
}

/* What the launching shell printed (a redirection it could not make), on one
 * printable line. */
static void launcher_text(const uint8_t *p, size_t n, char *out, size_t outlen)
{
	size_t k = printable_copy(out, outlen, p, n, '|');
	while (k && out[k - 1] == '|')
		out[--k] = 0;
}

/* ---- on the event loop ---- */

enum phase { P_START, P_WAIT, P_PROBE, P_LOG, P_DONE };

struct workload_run {
	struct agent_conn *ac;
	cJSON *wl;
	workload_done_fn done;
	void *ctx;
	struct astream *as;
	enum phase phase;
	uint64_t deadline, next_at;
	char last[160];
	char log[LOG_TAIL];
	size_t log_len;
	char launch[300];
	struct mitos_err err;   /* what done is told: code 0 is success */
	struct ur_kick kick;
	struct workload_run *next;
};

static struct workload_run *runs;
static struct ur_ticker ticker;
static bool ticker_added;

static void run_unlink(struct workload_run *w)
{
	for (struct workload_run **p = &runs; *p; p = &(*p)->next)
		if (*p == w) {
			*p = w->next;
			return;
		}
}

static void run_free(struct workload_run *w)
{
	run_unlink(w);
	ur_kick_cancel(&w->kick);
	if (w->as) {
		struct astream *as = w->as;
		w->as = NULL;
		agent_cancel(as);
	}
	cJSON_Delete(w->wl);
	free(w);
}

static void kicked(struct ur_kick *k)
{
	struct workload_run *w = (struct workload_run *)((char *)k - offsetof(struct workload_run, kick));
	workload_done_fn done = w->done;
	void *ctx = w->ctx;
	struct mitos_err err = w->err;
	run_free(w);
	done(ctx, err.code, err.code ? err.msg : NULL);
}

/* The answer (w->err) goes out after this batch of completions, never from a stream
 * callback. */
static void finish(struct workload_run *w)
{
	w->phase = P_DONE;
	w->kick.fn = kicked;
	ur_kick(&w->kick);
}

static void log_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	struct workload_run *w = s->ctx;
	(void)ch; (void)fin;
	size_t k = n < sizeof(w->log) - w->log_len ? n : sizeof(w->log) - w->log_len;
	memcpy(w->log + w->log_len, p, k);
	w->log_len += k;
}

static void log_end(struct astream *s, cJSON *payload, const char *why)
{
	struct workload_run *w = s->ctx;
	(void)payload; (void)why;
	w->as = NULL;
	failure(w->wl, w->last, w->launch, w->log, w->log_len, &w->err);
	finish(w);
}

static const struct astream_ops log_ops = { log_data, NULL, log_end, NULL, NULL };

/* A stream's end without a payload: the sandbox (its agent) went away. */
static bool stopped(struct workload_run *w, const cJSON *payload, const char *why)
{
	w->as = NULL;
	if (payload)
		return false;
	mitos_err_set(&w->err, -ECONNRESET, "the sandbox stopped while its workload started: %s", why ? why : "");
	finish(w);
	return true;
}

static void probe_end(struct astream *s, cJSON *payload, const char *why)
{
	struct workload_run *w = s->ctx;
	if (stopped(w, payload, why))
		return;
	if (probe_status(payload, w->last, sizeof(w->last)) == ready_int(w->wl, "expect")) {
		finish(w);
		return;
	}
	if (ur_now_ms() >= w->deadline) {
		w->phase = P_LOG;
		if (!(w->as = agent_open(w->ac, log_open, &log_ops, w))) {
			failure(w->wl, w->last, w->launch, "", 0, &w->err);
			finish(w);
		}
		return;
	}
	w->phase = P_WAIT;
	w->next_at = ur_now_ms() + PROBE_EVERY_MS;
}

static const struct astream_ops probe_ops = { NULL, NULL, probe_end, NULL, NULL };

static void tick(struct ur_ticker *t, uint64_t now)
{
	(void)t;
	for (struct workload_run *w = runs; w; w = w->next) {
		if (w->phase != P_WAIT || now < w->next_at)
			continue;
		char *open = probe_open(w->wl);
		w->as = open ? agent_open(w->ac, open, &probe_ops, w) : NULL;
		free(open);
		if (!w->as) {
			mitos_err_set(&w->err, -EIO, "cannot reach the sandbox's agent to check its workload");
			finish(w);
			continue;
		}
		w->phase = P_PROBE;
	}
}

static void start_end(struct astream *s, cJSON *payload, const char *why)
{
	struct workload_run *w = s->ctx;
	if (stopped(w, payload, why))
		return;
	if (start_result(payload, &w->err) || !ready_of(w->wl)) {
		finish(w);
		return;
	}
	w->phase = P_WAIT;
	w->next_at = ur_now_ms();
	w->deadline = ur_now_ms() + (uint64_t)ready_int(w->wl, "timeout_seconds") * 1000;
}

/* Output of the launching shell (the workload's own goes to its log). */
static void start_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	struct workload_run *w = s->ctx;
	(void)ch; (void)fin;
	size_t have = strlen(w->launch);
	if (n && have + 1 < sizeof(w->launch))
		launcher_text(p, n, w->launch + have, sizeof(w->launch) - have);
}

static const struct astream_ops start_ops = { start_data, NULL, start_end, NULL, NULL };

struct workload_run *workload_run_start(struct agent_conn *ac, const cJSON *wl, workload_done_fn done, void *ctx)
{
	struct workload_run *w = calloc(1, sizeof(*w));
	char *open = start_open(wl);
	if (!w || !open || !(w->wl = cJSON_Duplicate(wl, 1))) {
		free(open);
		free(w);
		return NULL;
	}
	w->ac = ac;
	w->done = done;
	w->ctx = ctx;
	w->next = runs;
	runs = w;
	if (!ticker_added) {
		ticker.fn = tick;
		ur_add_ticker(&ticker);
		ticker_added = true;
	}
	w->as = agent_open(ac, open, &start_ops, w);
	free(open);
	if (!w->as) {
		mitos_err_set(&w->err, -EIO, "cannot reach the sandbox's agent to start its workload");
		finish(w);
	}
	return w;
}

void workload_run_cancel(struct workload_run *w)
{
	if (w)
		run_free(w);
}

/* ---- off the loop ---- */

int workload_run_blocking(const char *path, uint32_t vsock_port, const cJSON *wl, struct mitos_err *e)
{
	char *open = start_open(wl);
	cJSON *end = NULL;
	struct mitos_err call = { 0 };
	char launch[300];
	uint8_t said[300];
	size_t nsaid = 0;
	int rc = open ? agent_call_blocking_data(path, vsock_port, open, START_TIMEOUT_MS, &end, said, sizeof(said),
						 &nsaid, &call) : -ENOMEM;
	free(open);
	launcher_text(said, nsaid, launch, sizeof(launch));
	if (rc)
		return mitos_err_set(e, rc, "cannot start the workload: %s", call.msg[0] ? call.msg : strerror(-rc));
	rc = start_result(end, e);
	cJSON_Delete(end);
	if (rc || !ready_of(wl))
		return rc;
	char last[160] = "no answer yet";
	uint64_t deadline = ur_mono_ms() + (uint64_t)ready_int(wl, "timeout_seconds") * 1000;
	for (;;) {
		open = probe_open(wl);
		rc = open ? agent_call_blocking(path, vsock_port, open, PROBE_TIMEOUT_MS * 4, &end, NULL) : -ENOMEM;
		free(open);
		int st = rc ? 0 : probe_status(end, last, sizeof(last));
		cJSON_Delete(end);
		if (st == ready_int(wl, "expect"))
			return 0;
		if (ur_mono_ms() >= deadline)
			break;
		nanosleep(&(struct timespec){ .tv_nsec = PROBE_EVERY_MS * 1000000L }, NULL);
	}
	char log[LOG_TAIL];
	size_t n = 0;
	if (agent_call_blocking_data(path, vsock_port, log_open, PROBE_TIMEOUT_MS * 4, &end, (uint8_t *)log, sizeof(log),
				     &n, NULL))
		n = 0;
	cJSON_Delete(end);
	return failure(wl, last, launch, log, n, e);
}
