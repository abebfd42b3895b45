#include "api/sandbox/sandboxes.h"
#include "api/sandbox/templates.h"
#include "api/sandbox/workload.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "api/sandbox/agent_client.h"
#include "api/sandbox/node.h"
#include "api/engines/images.h"
#include "api/engines/teardown.h"
#include "api/sandbox/registry.h"
#include "api/sandbox/sandbox_ends.h"
#include "api/http/server.h"
#include "vmm/kvm_probe.h"

#define START_TIMEOUT_MS 30000
#define MAX_FORK_N 64
/* A sandbox whose agent connection closed gets this long to end by itself (its init then
 * says why: an agent killed by the OOM killer, say) before serve kills it. */
#define AGENT_LOST_GRACE_MS 1000

struct sb_job {
	unsigned n, pending;
	struct sandbox **sbs;
	bool failed;
	enum api_err err;
	char msg[600];
	char parent_id[ID_MAX + 1];
	bool resume_parent;
	sb_done_fn done;
	void *ctx;
};

struct sb_waiter {
	void (*done)(void *ctx);
	void *ctx;
	struct sb_waiter *next;
};

static const struct engine_ops *eng;
static struct sandbox *sandboxes;
static unsigned nsandboxes;
static struct sandbox *zombies; /* freed sandboxes whose ring operations are still pending */
static bool shutting_down;
static struct ur_ticker ticker;
static char sb_root[1100];

static void sb_exit_done(struct uop *op, int res, uint32_t flags);
static void sb_ready_done(struct uop *op, int res, uint32_t flags);
static void sb_retry_done(struct uop *op, int res, uint32_t flags);
static void sb_kill(struct sandbox *sb, const char *why);
static void job_child_resolved(struct sb_job *job, struct sandbox *sb, bool ok, const char *why);

const char *sandboxes_engine_name(void) { return eng ? eng->name : "none"; }

/* ---- registry ---- */

struct sandbox *sandbox_find(const char *id)
{
	for (struct sandbox *sb = sandboxes; sb; sb = sb->next)
		if (!strcmp(sb->id, id))
			return sb;
	return NULL;
}

struct sandbox *sandboxes_first(void) { return sandboxes; }
unsigned sandboxes_count(void) { return nsandboxes; }

static void sb_link(struct sandbox *sb)
{
	sb->next = sandboxes;
	sandboxes = sb;
	nsandboxes++;
}

static void sb_unlink(struct sandbox *sb)
{
	for (struct sandbox **pp = &sandboxes; *pp; pp = &(*pp)->next)
		if (*pp == sb) {
			*pp = sb->next;
			nsandboxes--;
			return;
		}
}

static const char *state_name(enum sb_state s)
{
	switch (s) {
	case SB_STARTING: return "starting";
	case SB_RUNNING: return "running";
	case SB_PAUSED: return "paused";
	case SB_STOPPING: return "stopping";
	}
	return "unknown";
}

cJSON *sandbox_json(const struct sandbox *sb)
{
	cJSON *o = cJSON_CreateObject();
	char ts[40];
	cJSON_AddStringToObject(o, "id", sb->id);
	cJSON_AddStringToObject(o, "template", sb->template_name);
	if (sb->parent[0])
		cJSON_AddStringToObject(o, "parent", sb->parent);
	else
		cJSON_AddNullToObject(o, "parent");
	cJSON_AddStringToObject(o, "state", state_name(sb->state));
	cJSON_AddStringToObject(o, "engine", eng->name);
	registry_rfc3339(sb->created_ms, ts, sizeof(ts));
	cJSON_AddStringToObject(o, "created_at", ts);
	registry_rfc3339(sb->deadline_ms, ts, sizeof(ts));
	cJSON_AddStringToObject(o, "expires_at", ts);
	cJSON_AddNumberToObject(o, "deadline", (double)(sb->deadline_ms / 1000));
	uint64_t now = ur_wall_ms();
	cJSON_AddNumberToObject(o, "timeout", sb->deadline_ms > now ? (double)((sb->deadline_ms - now + 999) / 1000) : 0);
	cJSON_AddItemToObject(o, "metadata", sb->metadata ? cJSON_Duplicate(sb->metadata, 1) : cJSON_CreateObject());
	if (sb->agent_violations)
		cJSON_AddNumberToObject(o, "agent_violations", sb->agent_violations);
	return o;
}

/* 0, or -errno (a full disk) with the reason in serve's log. */
static int sb_save(const struct sandbox *sb)
{
	cJSON *o = sandbox_json(sb);
	cJSON_AddNumberToObject(o, "created_ms", (double)sb->created_ms);
	cJSON_AddNumberToObject(o, "deadline_ms", (double)sb->deadline_ms);
	cJSON_AddNumberToObject(o, "pid", sb->proc.pid);
	cJSON_AddNumberToObject(o, "start_time", (double)sb->proc.start_time);
	cJSON_AddNumberToObject(o, "fork_time_ms", sb->fork_time_ms);
	char path[1200];
	snprintf(path, sizeof(path), "%s/sandbox.json", sb->dir);
	int rc = registry_write_json(path, o);
	if (rc)
		fprintf(stderr, "mitos-vmm serve: cannot save %s: %s\n", path, strerror(-rc));
	cJSON_Delete(o);
	return rc;
}

/* ---- sandbox lifecycle ---- */

static struct sandbox *sb_new(const char *id)
{
	struct sandbox *sb = calloc(1, sizeof(*sb));
	if (!sb)
		return NULL;
	snprintf(sb->id, sizeof(sb->id), "%s", id);
	snprintf(sb->dir, sizeof(sb->dir), "%.900s/%.64s", sb_root, id);
	sb->proc.pidfd = -1;
	sb->ready_fd = -1;
	sb->exit_op.fn = sb_exit_done;
	sb->ready_op.fn = sb_ready_done;
	sb->retry_op.fn = sb_retry_done;
	return sb;
}

static void sb_free(struct sandbox *sb)
{
	if (sb->inflight) {
		sb->next = zombies;
		zombies = sb;
		return;
	}
	cJSON_Delete(sb->metadata);
	free(sb);
}

/* After a ring operation of a sandbox that already left the registry. */
static void sb_release(struct sandbox *sb)
{
	if (sb->inflight)
		return;
	for (struct sandbox **pp = &zombies; *pp; pp = &(*pp)->next)
		if (*pp == sb) {
			*pp = sb->next;
			break;
		}
	cJSON_Delete(sb->metadata);
	free(sb);
}

static void sb_arm_exit(struct sandbox *sb)
{
	io_uring_prep_poll_add(ur_sqe(&sb->exit_op), sb->proc.pidfd, POLLIN);
	sb->inflight++;
}

static void sb_running(struct sandbox *sb)
{
	sb->state = SB_RUNNING;
	sb->fail_reason[0] = 0; /* a connection retried on the way is history */
	if (!sb->adopted)
		sb->fork_time_ms = (double)(ur_now_ms() - sb->started_mono_ms);
	if (sb->adopted) {
		/* A re-adopted sandbox keeps the state it had. */
		char path[1200];
		snprintf(path, sizeof(path), "%s/sandbox.json", sb->dir);
		cJSON *o = registry_read_json(path);
		const char *st = o ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "state")) : NULL;
		bool paused = st && !strcmp(st, "paused");
		cJSON_Delete(o);
		if (paused && eng->pause(sb->dir, &sb->proc) == 0)
			sb->state = SB_PAUSED;
	}
	sb_save(sb);
	if (sb->job)
		job_child_resolved(sb->job, sb, true, NULL);
}

static void workload_cancel(struct sandbox *sb)
{
	workload_run_cancel(sb->workload);
	sb->workload = NULL;
}

static void workload_done(void *ctx, int rc, const char *why)
{
	struct sandbox *sb = ctx;
	sb->workload = NULL;
	if (sb->state != SB_STARTING)
		return;
	if (rc) {
		snprintf(sb->fail_reason, sizeof(sb->fail_reason), "%s", why ? why : strerror(-rc));
		sb_kill(sb, sb->fail_reason);
		return;
	}
	sb_running(sb);
}

/* The agent answers: the sandbox runs, once its template's workload serves. A kvm
 * template ran it before its snapshot; a process-engine sandbox starts its own. */
static void sb_connected(struct sandbox *sb)
{
	const struct template_rec *t = sb->adopted || eng->template_build ? NULL : templates_find(sb->template_name);
	const cJSON *wl = t ? cJSON_GetObjectItemCaseSensitive(t->spec, "workload") : NULL;
	if (!wl) {
		sb_running(sb);
		return;
	}
	const cJSON *to = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(wl, "ready"),
							   "timeout_seconds");
	sb->start_deadline_ms = ur_now_ms() + START_TIMEOUT_MS + (uint64_t)(cJSON_GetNumberValue(to) * 1000);
	if (!(sb->workload = workload_run_start(sb->agent, wl, workload_done, sb)))
		sb_kill(sb, "out of memory for the template's workload");
}

static void engine_connected(void *ctx, int rc, const char *why)
{
	struct sandbox *sb = ctx;
	/* A lost connection is agent_closed()'s to handle (it may connect again). */
	if (sb->state != SB_STARTING || rc == -ECONNRESET)
		return;
	if (rc) {
		snprintf(sb->fail_reason, sizeof(sb->fail_reason), "%s", why ? why : strerror(-rc));
		sb_kill(sb, sb->fail_reason);
		return;
	}
	sb_connected(sb);
}

static void agent_ready(struct agent_conn *ac, void *ctx)
{
	struct sandbox *sb = ctx;
	if (sb->state != SB_STARTING)
		return;
	/* A new clone first hears what the engine has to tell it (kvm: post_fork); a
	 * re-adopted sandbox heard it long ago. */
	if (eng->after_connect && !sb->adopted) {
		int rc = eng->after_connect(&sb->proc, ac, engine_connected, sb);
		if (rc)
			engine_connected(sb, rc, "cannot send the agent its post-fork message");
		return;
	}
	sb_connected(sb);
}

static void agent_closed(struct agent_conn *ac, void *ctx, const char *why)
{
	(void)ac;
	struct sandbox *sb = ctx;
	sb->agent = NULL;
	workload_cancel(sb);
	/* A restored VM's guest drops a connection that raced its vsock transport reset:
	 * connect again (backing off) until the start deadline. */
	if (sb->state == SB_STARTING && eng->agent_vsock_port && !sb->exited) {
		/* Said if the start deadline passes first. */
		snprintf(sb->fail_reason, sizeof(sb->fail_reason), "agent connection lost: %s", why);
		unsigned ms = sb->connect_tries < 5 ? 2u << sb->connect_tries : 50u;
		sb->connect_tries++;
		sb->retry_ts.tv_sec = 0;
		sb->retry_ts.tv_nsec = (long long)ms * 1000000;
		io_uring_prep_timeout(ur_sqe(&sb->retry_op), &sb->retry_ts, 0, 0);
		sb->inflight++;
		return;
	}
	if (sb->state != SB_STOPPING) {
		snprintf(sb->fail_reason, sizeof(sb->fail_reason), "agent connection lost: %s", why);
		sb->agent_lost = true;
		sb->agent_lost_ms = ur_now_ms();
	}
}

/* A guest that ignores flow control is not trusted to behave otherwise: said in the
 * log and on the sandbox (GET shows agent_violations). */
static void agent_violation(struct agent_conn *ac, void *ctx, const char *why)
{
	(void)ac;
	struct sandbox *sb = ctx;
	sb->agent_violations++;
	fprintf(stderr, "mitos-vmm serve: sandbox %s: its agent broke the protocol (%u so far): %s\n", sb->id,
		sb->agent_violations, why);
}

static const struct agent_conn_cbs agent_cbs = { agent_ready, agent_closed, agent_violation };

static int sb_connect(struct sandbox *sb);

static void sb_retry_done(struct uop *op, int res, uint32_t flags)
{
	(void)res; (void)flags;
	struct sandbox *sb = (struct sandbox *)((char *)op - offsetof(struct sandbox, retry_op));
	sb->inflight--;
	if (sb->freed_from_registry) {
		sb_release(sb);
		return;
	}
	if (sb->state != SB_STARTING || sb->exited || sb->agent)
		return;
	int rc = sb_connect(sb);
	if (rc) {
		snprintf(sb->fail_reason, sizeof(sb->fail_reason), "cannot connect to the agent: %s", strerror(-rc));
		sb_kill(sb, sb->fail_reason);
	}
}

static int sb_connect(struct sandbox *sb)
{
	char sock[1200];
	int rc = eng->agent_socket(sb->dir, sock, sizeof(sock));
	if (!rc)
		rc = agent_connect_vsock(sock, eng->agent_vsock_port, &agent_cbs, sb, &sb->agent);
	return rc;
}

static void sb_ready_done(struct uop *op, int res, uint32_t flags)
{
	(void)flags;
	struct sandbox *sb = (struct sandbox *)((char *)op - offsetof(struct sandbox, ready_op));
	sb->inflight--;
	close(sb->ready_fd);
	sb->ready_fd = -1;
	if (sb->freed_from_registry) {
		sb_release(sb);
		return;
	}
	if (sb->exited)
		return;
	if (res == 1 && sb->state == SB_STARTING) {
		int rc = sb_connect(sb);
		if (rc) {
			snprintf(sb->fail_reason, sizeof(sb->fail_reason), "cannot connect to the agent: %s", strerror(-rc));
			sb_kill(sb, sb->fail_reason);
		}
	}
	/* Anything else: the sandbox died before its agent was up; the exit
	 * watch reports why. */
}

static void sb_finish(struct sandbox *sb)
{
	/* Everything of the sandbox is gone: files, registry, waiters. */
	workload_cancel(sb);
	if (sb->agent) {
		struct agent_conn *ac = sb->agent;
		sb->agent = NULL;
		agent_conn_close(ac);
	}
	if (sb->proc.pidfd >= 0) {
		close(sb->proc.pidfd);
		sb->proc.pidfd = -1;
	}
	int rc = eng->cleanup(sb->dir);
	if (rc)
		fprintf(stderr, "mitos-vmm serve: sandbox %s: cannot remove %s: %s\n", sb->id, sb->dir, strerror(-rc));
	if (eng->release)
		eng->release(&sb->proc);
	sb_unlink(sb);
	sb->freed_from_registry = true;
	struct sb_job *job = sb->job;
	sb->job = NULL;
	if (job)
		job_child_resolved(job, sb, false, sb->fail_reason[0] ? sb->fail_reason : "the sandbox exited");
	for (struct sb_waiter *w = sb->stop_waiters, *n; w; w = n) {
		n = w->next;
		if (w->done)
			w->done(w->ctx);
		free(w);
	}
	sb->stop_waiters = NULL;
	sb_free(sb);
}

static void sb_exit_done(struct uop *op, int res, uint32_t flags)
{
	(void)res; (void)flags;
	struct sandbox *sb = (struct sandbox *)((char *)op - offsetof(struct sandbox, exit_op));
	sb->inflight--;
	if (sb->freed_from_registry) {
		sb_release(sb);
		return;
	}
	sb->exited = true;
	if (sb->proc.child) {
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		waitid(P_PIDFD, (id_t)sb->proc.pidfd, &si, WEXITED | WNOHANG);
	}
	if (sb->state == SB_STARTING && !sb->fail_reason[0]) {
		char why[400];
		eng->exit_reason(sb->dir, why, sizeof(why));
		snprintf(sb->fail_reason, sizeof(sb->fail_reason), "the sandbox failed to start: %s",
			 why[0] ? why : "it exited before its agent answered");
	} else if ((sb->state != SB_STOPPING && !sb->fail_reason[0]) || sb->agent_lost) {
		/* A crash (a VM killed by its seccomp filter, an agent killed by the OOM
		 * killer): its last words go to serve's log and the sandbox's record, the
		 * traces of it left once its directory is removed. */
		char why[400];
		eng->exit_reason(sb->dir, why, sizeof(why));
		if (why[0])
			snprintf(sb->fail_reason, sizeof(sb->fail_reason), "%s", why);
	}
	if (sb->state != SB_STOPPING || sb->agent_lost)
		fprintf(stderr, "mitos-vmm serve: sandbox %s exited%s%s\n", sb->id, sb->fail_reason[0] ? ": " : "",
			sb->fail_reason);
	sandbox_end_record(sb->id, sb->fail_reason, ur_wall_ms());
	sb->state = SB_STOPPING;
	sb_finish(sb);
}

static void sb_kill(struct sandbox *sb, const char *why)
{
	if (sb->state == SB_STOPPING)
		return;
	if (why && !sb->fail_reason[0])
		snprintf(sb->fail_reason, sizeof(sb->fail_reason), "%s", why);
	sb->state = SB_STOPPING;
	workload_cancel(sb);
	if (sb->agent) {
		struct agent_conn *ac = sb->agent;
		sb->agent = NULL;
		agent_conn_close(ac);
	}
	if (sb->proc.pidfd < 0 || eng->kill(sb->dir, &sb->proc) < 0) {
		/* Already gone (or never started): finish now. */
		if (!sb->exited && sb->proc.pidfd < 0)
			sb_finish(sb);
	}
	/* A stopped process dies of SIGKILL too; nothing else to do. */
}

void sandbox_destroy(struct sandbox *sb, const char *why, void (*done)(void *ctx), void *ctx,
		     struct sb_waiter **wout)
{
	if (wout)
		*wout = NULL;
	if (done) {
		struct sb_waiter *w = calloc(1, sizeof(*w));
		if (w) {
			w->done = done;
			w->ctx = ctx;
			w->next = sb->stop_waiters;
			sb->stop_waiters = w;
			if (wout)
				*wout = w;
		}
	}
	sb_kill(sb, why);
}

void sb_waiter_detach(struct sb_waiter *w)
{
	if (w)
		w->done = NULL;
}

int sandbox_set_timeout(struct sandbox *sb, uint32_t seconds)
{
	/* Answered only once recorded: a restarted serve must not expire it early. */
	uint64_t old = sb->deadline_ms;
	sb->deadline_ms = ur_wall_ms() + (uint64_t)seconds * 1000u;
	int rc = sb_save(sb);
	if (rc)
		sb->deadline_ms = old;
	return rc;
}

int sandbox_pause(struct sandbox *sb)
{
	if (sb->state == SB_PAUSED)
		return 0;
	if (sb->state != SB_RUNNING)
		return -EBUSY;
	int rc = eng->pause(sb->dir, &sb->proc);
	if (rc)
		return rc;
	sb->state = SB_PAUSED;
	if ((rc = sb_save(sb))) {
		eng->resume(sb->dir, &sb->proc);
		sb->state = SB_RUNNING;
	}
	return rc;
}

int sandbox_resume(struct sandbox *sb)
{
	if (sb->state == SB_RUNNING)
		return 0;
	if (sb->state != SB_PAUSED)
		return -EBUSY;
	int rc = eng->resume(sb->dir, &sb->proc);
	if (rc)
		return rc;
	sb->state = SB_RUNNING;
	if ((rc = sb_save(sb))) {
		eng->pause(sb->dir, &sb->proc);
		sb->state = SB_PAUSED;
	}
	return rc;
}

struct pause_op {
	char id[ID_MAX + 1];
	uint64_t created_ms;   /* which sandbox of that id */
	bool pause;
	sandbox_paused_fn done;
	void *ctx;
};

/* The engine has paused or resumed it: the state follows, saved, or is put back. */
static void pause_op_done(void *arg, int rc)
{
	struct pause_op *op = arg;
	struct sandbox *sb = sandbox_find(op->id);
	if (!sb || sb->created_ms != op->created_ms) {
		rc = -ESRCH;
	} else {
		sb->ctl_busy = false;
		if (!rc && sb->state == (op->pause ? SB_RUNNING : SB_PAUSED)) {
			sb->state = op->pause ? SB_PAUSED : SB_RUNNING;
			if ((rc = sb_save(sb))) {
				(op->pause ? eng->resume : eng->pause)(sb->dir, &sb->proc);
				sb->state = op->pause ? SB_RUNNING : SB_PAUSED;
			}
		} else if (!rc) {
			rc = -EBUSY; /* it started stopping meanwhile */
		}
	}
	op->done(op->ctx, rc);
	free(op);
}

void sandbox_set_paused(struct sandbox *sb, bool pause, sandbox_paused_fn done, void *ctx)
{
	if (sb->state == (pause ? SB_PAUSED : SB_RUNNING) && !sb->ctl_busy) {
		done(ctx, 0);
		return;
	}
	if (sb->ctl_busy || sb->state != (pause ? SB_RUNNING : SB_PAUSED)) {
		done(ctx, -EBUSY);
		return;
	}
	if (!eng->pause_async) {
		done(ctx, pause ? sandbox_pause(sb) : sandbox_resume(sb));
		return;
	}
	struct pause_op *op = calloc(1, sizeof(*op));
	if (!op) {
		done(ctx, -ENOMEM);
		return;
	}
	snprintf(op->id, sizeof(op->id), "%s", sb->id);
	op->created_ms = sb->created_ms;
	op->pause = pause;
	op->done = done;
	op->ctx = ctx;
	sb->ctl_busy = true;
	int rc = eng->pause_async(sb->dir, &sb->proc, pause, pause_op_done, op);
	if (rc) {
		sb->ctl_busy = false;
		free(op);
		done(ctx, rc);
	}
}

/* ---- fork jobs ---- */

static void job_finish(struct sb_job *job)
{
	struct sandbox *parent = job->parent_id[0] ? sandbox_find(job->parent_id) : NULL;
	if (job->resume_parent && parent && parent->state == SB_PAUSED)
		sandbox_resume(parent);
	if (job->failed) {
		for (unsigned i = 0; i < job->n; i++)
			if (job->sbs[i]) {
				job->sbs[i]->job = NULL;
				sb_kill(job->sbs[i], "a sibling of this fork failed");
			}
		if (job->done)
			job->done(job->ctx, job->err, job->msg, NULL, 0);
	} else if (job->done) {
		job->done(job->ctx, 0, NULL, job->sbs, job->n);
	}
	for (unsigned i = 0; i < job->n; i++)
		if (job->sbs[i])
			job->sbs[i]->job = NULL;
	free(job->sbs);
	free(job);
}

static void job_child_resolved(struct sb_job *job, struct sandbox *sb, bool ok, const char *why)
{
	if (!ok) {
		for (unsigned i = 0; i < job->n; i++)
			if (job->sbs[i] == sb)
				job->sbs[i] = NULL;
		if (!job->failed) {
			job->failed = true;
			job->err = AE_ENGINE_UNAVAILABLE;
			snprintf(job->msg, sizeof(job->msg), "sandbox %s: %s", sb->id, why ? why : "failed");
		}
	}
	sb->job = NULL;
	if (--job->pending == 0)
		job_finish(job);
}

void sb_job_detach(struct sb_job *job)
{
	if (job)
		job->done = NULL;
}

static int sb_start(struct sandbox *sb, const struct template_rec *t, const char *copy_from, char *err, size_t errlen)
{
	if (mkdir(sb->dir, 0700) < 0) {
		snprintf(err, errlen, "mkdir %.300s: %s", sb->dir, strerror(errno));
		return -errno;
	}
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		eng->cleanup(sb->dir);
		return -errno;
	}
	struct engine_start es = { .id = sb->id, .dir = sb->dir, .template_root = t->root,
				   .copy_from = copy_from, .spec = t->spec, .ready_fd = pfd[1] };
	int rc = eng->start(&es, &sb->proc, err, errlen);
	close(pfd[1]);
	if (rc) {
		close(pfd[0]);
		eng->cleanup(sb->dir);
		return rc;
	}
	sb->ready_fd = pfd[0];
	sb->state = SB_STARTING;
	sb->started_mono_ms = ur_now_ms();
	sb->start_deadline_ms = ur_now_ms() + START_TIMEOUT_MS;
	io_uring_prep_read(ur_sqe(&sb->ready_op), sb->ready_fd, &sb->ready_byte, 1, 0);
	sb->inflight++;
	sb_arm_exit(sb);
	return 0;
}

int sandboxes_fork(const struct fork_req *fr, sb_done_fn done, void *ctx, struct sb_job **jobout,
		   enum api_err *e, char *msg, size_t msglen)
{
	*jobout = NULL;
	if (shutting_down) {
		*e = AE_UNAVAILABLE;
		snprintf(msg, msglen, "the server is shutting down");
		return -ESHUTDOWN;
	}
	if (node_draining()) {
		*e = AE_NODE_DRAINING;
		snprintf(msg, msglen, "node %s is draining: it takes no new sandboxes", node_tag()[0] ? node_tag() : "(standalone)");
		return -EAGAIN;
	}
	if (!!fr->template_name == !!fr->sandbox_id) {
		*e = AE_INVALID_ARGUMENT;
		snprintf(msg, msglen, "give exactly one of \"template\" and \"sandbox_id\"");
		return -EINVAL;
	}
	if (fr->n < 1 || fr->n > MAX_FORK_N) {
		*e = AE_INVALID_ARGUMENT;
		snprintf(msg, msglen, "n must be between 1 and %d", MAX_FORK_N);
		return -EINVAL;
	}
	if (nsandboxes + fr->n > srv_cfg.max_sandboxes) {
		*e = AE_LIMIT_EXCEEDED;
		snprintf(msg, msglen, "this server runs at most %u sandboxes (%u exist)", srv_cfg.max_sandboxes, nsandboxes);
		return -ENOSPC;
	}
	/* On a cluster node the ids carry its tag. */
	char ids[MAX_FORK_N][ID_MAX + 1];
	for (unsigned i = 0; fr->ids && i < fr->n; i++) {
		if (!api_valid_id(fr->ids[i])) {
			*e = AE_INVALID_SANDBOX_ID;
			snprintf(msg, msglen, "ids[%u] is not a valid sandbox id", i);
			return -EINVAL;
		}
		if (node_sandbox_id_for(fr->ids[i], ids[i], sizeof(ids[i]))) {
			*e = AE_INVALID_SANDBOX_ID;
			snprintf(msg, msglen, "id %.64s is too long to carry this node's tag -%s: a sandbox id has at "
				 "most 64 characters", fr->ids[i], node_tag());
			return -EINVAL;
		}
		if (sandbox_find(ids[i])) {
			*e = AE_CONFLICT;
			snprintf(msg, msglen, "a sandbox with id %s exists", ids[i]);
			return -EEXIST;
		}
		for (unsigned j = 0; j < i; j++)
			if (!strcmp(ids[i], ids[j])) {
				*e = AE_INVALID_ARGUMENT;
				snprintf(msg, msglen, "ids must be distinct");
				return -EINVAL;
			}
	}
	const struct template_rec *t;
	struct sandbox *parent = NULL;
	char layer[1200];
	const char *copy_from = NULL;
	if (fr->template_name) {
		t = templates_find(fr->template_name);
		if (!t) {
			*e = AE_NOT_FOUND;
			snprintf(msg, msglen, "no template named %s; create it with POST /v1/templates", fr->template_name);
			return -ENOENT;
		}
		if (t->building) {
			*e = AE_UNAVAILABLE;
			snprintf(msg, msglen, "template %s is still being built; retry when POST /v1/templates "
				 "has answered", t->name);
			return -EAGAIN;
		}
	} else {
		parent = sandbox_find(fr->sandbox_id);
		if (!parent) {
			*e = AE_NOT_FOUND;
			snprintf(msg, msglen, "no sandbox %s", fr->sandbox_id);
			return -ENOENT;
		}
		if (parent->state != SB_RUNNING && parent->state != SB_PAUSED) {
			*e = AE_SANDBOX_NOT_RUNNING;
			snprintf(msg, msglen, "sandbox %s is %s", parent->id, state_name(parent->state));
			return -EBUSY;
		}
		t = templates_find(parent->template_name);
		if (!t) {
			*e = AE_INTERNAL;
			snprintf(msg, msglen, "the template of sandbox %s is gone", parent->id);
			return -ENOENT;
		}
		if (eng->fork_source) {
			char err[400];
			int rc = eng->fork_source(parent->dir, &parent->proc, layer, sizeof(layer), err, sizeof(err));
			if (rc) {
				*e = AE_ENGINE_UNAVAILABLE;
				snprintf(msg, msglen, "cannot fork sandbox %s: %s", parent->id, err);
				return rc;
			}
		} else {
			eng->writable_layer(parent->dir, layer, sizeof(layer));
		}
		copy_from = layer;
	}
	struct sb_job *job = calloc(1, sizeof(*job));
	struct sandbox **sbs = calloc(fr->n, sizeof(*sbs));
	if (!job || !sbs) {
		free(job);
		free(sbs);
		*e = AE_INTERNAL;
		snprintf(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	job->n = fr->n;
	job->sbs = sbs;
	job->done = done;
	job->ctx = ctx;
	if (parent) {
		snprintf(job->parent_id, sizeof(job->parent_id), "%s", parent->id);
		/* The copy must see one consistent state of the parent's files (an engine
		 * with its own fork_source takes care of that itself). */
		if (!eng->fork_source && parent->state == SB_RUNNING && eng->pause(parent->dir, &parent->proc) == 0) {
			parent->state = SB_PAUSED;
			job->resume_parent = true;
		}
	}
	uint64_t now = ur_wall_ms();
	uint32_t timeout_s = fr->timeout_s ? fr->timeout_s : srv_cfg.default_timeout_s;
	unsigned started = 0;
	for (unsigned i = 0; i < fr->n; i++) {
		char id[ID_MAX + 1];
		if (fr->ids) {
			snprintf(id, sizeof(id), "%s", ids[i]);
		} else {
			do
				node_new_sandbox_id(id, sizeof(id));
			while (sandbox_find(id));
		}
		struct sandbox *sb = sb_new(id);
		if (!sb) {
			job->failed = true;
			job->err = AE_INTERNAL;
			snprintf(job->msg, sizeof(job->msg), "out of memory");
			break;
		}
		snprintf(sb->template_name, sizeof(sb->template_name), "%s", t->name);
		if (parent)
			snprintf(sb->parent, sizeof(sb->parent), "%s", parent->id);
		sb->created_ms = now;
		sb->deadline_ms = now + (uint64_t)timeout_s * 1000u;
		if (fr->metadata)
			sb->metadata = cJSON_Duplicate(fr->metadata, 1);
		char err[512];
		int rc = sb_start(sb, t, copy_from, err, sizeof(err));
		if (rc) {
			job->failed = true;
			job->err = AE_ENGINE_UNAVAILABLE;
			snprintf(job->msg, sizeof(job->msg), "cannot start sandbox %s: %s", id, err);
			sb_free(sb);
			break;
		}
		sb_link(sb);
		sb_save(sb);
		sb->job = job;
		sbs[i] = sb;
		started++;
	}
	job->pending = started;
	*jobout = job;
	if (!started) {
		*jobout = NULL;
		job->done = NULL;
		*e = job->err;
		snprintf(msg, msglen, "%s", job->msg);
		job_finish(job);
		return -EIO;
	}
	return 0;
}

/* ---- ticks: expiry, start deadlines ---- */

static void sandboxes_tick(struct ur_ticker *tk, uint64_t now)
{
	(void)tk;
	uint64_t wall = ur_wall_ms();
	for (struct sandbox *sb = sandboxes, *next; sb; sb = next) {
		next = sb->next;
		if (sb->state == SB_STOPPING)
			continue;
		if (sb->state == SB_STARTING && now > sb->start_deadline_ms) {
			sb_kill(sb, "the agent did not answer within 30 s");
			continue;
		}
		if (sb->agent_lost && now > sb->agent_lost_ms + AGENT_LOST_GRACE_MS) {
			sb_kill(sb, sb->fail_reason);
			continue;
		}
		if (wall >= sb->deadline_ms) {
			fprintf(stderr, "mitos-vmm serve: sandbox %s expired\n", sb->id);
			sb_kill(sb, "the sandbox expired");
		}
	}
}

/* ---- start-up and shutdown ---- */

static int mkdir_p(const char *path)
{
	char tmp[1100];
	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int sandboxes_init(char *err, size_t errlen)
{
	char why[700], unavail[400];
	bool kvm = srv_cfg.engine && !strcmp(srv_cfg.engine, "kvm");
	struct kvm_probe_result pr;
	memset(&pr, 0, sizeof(pr));
	if (!srv_cfg.engine || kvm)
		kvm_probe_run(&pr);
	if (kvm) {
		snprintf(why, sizeof(why), "requested with --engine kvm");
	} else if (!srv_cfg.engine && pr.hardware) {
		if (!engine_kvm_available(unavail, sizeof(unavail))) {
			kvm = true;
			snprintf(why, sizeof(why), "KVM runs guests on hardware here");
		} else {
			snprintf(why, sizeof(why), "KVM runs guests on hardware here, but %s", unavail);
		}
	} else if (!srv_cfg.engine) {
		snprintf(why, sizeof(why), "%s", pr.reason);
	} else {
		snprintf(why, sizeof(why), "requested with --engine process");
	}
	if (kvm ? engine_kvm_available(unavail, sizeof(unavail)) : engine_process_available(unavail, sizeof(unavail))) {
		snprintf(err, errlen, "engine_unavailable: %s", unavail);
		return -ENODEV;
	}
	eng = kvm ? &engine_kvm_ops : &engine_process_ops;
	int rc = images_init(srv_cfg.images_dir, srv_cfg.agent_path, kvm, err, errlen);
	if (rc)
		return rc;
	rc = mkdir_p(srv_cfg.state_dir);
	if (rc) {
		snprintf(err, errlen, "cannot create the state dir %s: %s", srv_cfg.state_dir, strerror(-rc));
		return rc;
	}
	if ((rc = teardown_init(srv_cfg.state_dir, err, errlen)))
		return rc;
	char jail[1000] = "";
	rc = kvm ? engine_kvm_configure(srv_cfg.state_dir, srv_cfg.kvm_pool, !pr.hardware, jail, sizeof(jail), err, errlen)
		 : engine_process_configure(srv_cfg.agent_path, srv_cfg.state_dir, srv_cfg.token_file, jail,
					    sizeof(jail), err, errlen);
	if (rc)
		return rc;
	char real[1024];
	if (!realpath(srv_cfg.state_dir, real))
		snprintf(real, sizeof(real), "%s", srv_cfg.state_dir);
	snprintf(sb_root, sizeof(sb_root), "%s/sandboxes", real);
	if ((rc = mkdir_p(sb_root)) || (rc = templates_init(eng, real, err, errlen))) {
		if (!err[0])
			snprintf(err, errlen, "cannot create %s: %s", sb_root, strerror(-rc));
		return rc;
	}
	printf("engine: %s (%s)\n", eng->name, why);
	if (kvm) {
		if (!pr.hardware)
			printf("WARNING: KVM on this host is emulation-only (%s): only guests built for it run "
			       "(the test guest, the PVM kernel), slowly\n", pr.kvm_usable ? "no VT-x/AMD-V" : pr.kvm_error);
		printf("kvm isolation: %s\n", jail);
	} else {
		printf("WARNING: the process engine isolates sandboxes as a container does (namespaces, an "
		       "unprivileged user namespace, seccomp, cgroups), not a VM: they share this host's kernel, "
		       "whose bugs are a way out%s. Run untrusted code on the kvm engine.\n", images_host_root()
		       ? "; the 'python' template's root is this host's own / (read-only)" : "");
		if (!images_host_root())
			printf("template image: python = %s\n", images_root("python"));
		printf("sandbox limits: %s\n", jail);
	}
	printf("state dir: %s\n", real);
	fflush(stdout);
	return 0;
}

/* Sandboxes a previous serve left running are taken over; the rest of what it
 * left is removed. */
static void adopt_all(void)
{
	DIR *d = opendir(sb_root);
	if (!d)
		return;
	unsigned adopted = 0, cleaned = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char dir[1400], path[1500];
		snprintf(dir, sizeof(dir), "%s/%s", sb_root, de->d_name);
		snprintf(path, sizeof(path), "%s/sandbox.json", dir);
		cJSON *o = registry_read_json(path);
		const char *id = o ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "id")) : NULL;
		const char *tpl = o ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "template")) : NULL;
		cJSON *jpid = o ? cJSON_GetObjectItem(o, "pid") : NULL;
		cJSON *jst = o ? cJSON_GetObjectItem(o, "start_time") : NULL;
		pid_t pid = cJSON_IsNumber(jpid) ? (pid_t)jpid->valuedouble : 0;
		uint64_t st = cJSON_IsNumber(jst) ? (uint64_t)jst->valuedouble : 0;
		int pidfd = engine_pidfd_of(pid, st);
		if (!id || strcmp(id, de->d_name) || !api_valid_id(id) || !tpl || pidfd < 0 || sandbox_find(id)) {
			if (pidfd >= 0) {
				struct engine_proc ep = { .pid = pid, .pidfd = pidfd, .start_time = st };
				eng->kill(dir, &ep);
				close(pidfd);
			}
			eng->cleanup(dir);
			cleaned++;
			cJSON_Delete(o);
			continue;
		}
		fcntl(pidfd, F_SETFD, FD_CLOEXEC);
		struct sandbox *sb = sb_new(id);
		if (!sb) {
			close(pidfd);
			cJSON_Delete(o);
			continue;
		}
		snprintf(sb->template_name, sizeof(sb->template_name), "%s", tpl);
		const char *par = cJSON_GetStringValue(cJSON_GetObjectItem(o, "parent"));
		if (par)
			snprintf(sb->parent, sizeof(sb->parent), "%s", par);
		cJSON *cm = cJSON_GetObjectItem(o, "created_ms"), *dm = cJSON_GetObjectItem(o, "deadline_ms");
		sb->created_ms = cJSON_IsNumber(cm) ? (uint64_t)cm->valuedouble : ur_wall_ms();
		sb->deadline_ms = cJSON_IsNumber(dm) ? (uint64_t)dm->valuedouble : ur_wall_ms();
		cJSON *fm = cJSON_GetObjectItem(o, "fork_time_ms");
		sb->fork_time_ms = cJSON_IsNumber(fm) ? fm->valuedouble : 0;
		cJSON *md = cJSON_GetObjectItem(o, "metadata");
		if (cJSON_IsObject(md))
			sb->metadata = cJSON_Duplicate(md, 1);
		sb->proc.pid = pid;
		sb->proc.pidfd = pidfd;
		sb->proc.start_time = st;
		sb->proc.child = false;
		sb->adopted = true;
		sb->state = SB_STARTING;
		sb->start_deadline_ms = ur_now_ms() + START_TIMEOUT_MS;
		cJSON_Delete(o);
		sb_link(sb);
		sb_arm_exit(sb);
		char why[300];
		int rc;
		if (eng->adopt && (rc = eng->adopt(dir, &sb->proc, why, sizeof(why)))) {
			snprintf(sb->fail_reason, sizeof(sb->fail_reason), "cannot re-adopt it: %s", why);
			sb_kill(sb, sb->fail_reason);
			cleaned++;
			continue;
		}
		/* A paused sandbox's agent cannot answer HELLO until it runs again;
		 * agent_ready() pauses it again. */
		eng->resume(sb->dir, &sb->proc);
		rc = sb_connect(sb);
		if (rc) {
			snprintf(sb->fail_reason, sizeof(sb->fail_reason), "cannot reconnect to its agent: %s", strerror(-rc));
			sb_kill(sb, sb->fail_reason);
		}
		adopted++;
	}
	closedir(d);
	if (adopted || cleaned) {
		printf("re-adopted %u sandbox(es) left running by a previous serve; removed %u stale one(s)\n",
		       adopted, cleaned);
		fflush(stdout);
	}
}

void sandboxes_start(void)
{
	ticker.fn = sandboxes_tick;
	ur_add_ticker(&ticker);
	adopt_all();
	if (eng->started)
		eng->started();
}

void sandboxes_shutdown(void)
{
	shutting_down = true;
	if (eng->shutdown)
		eng->shutdown();
	for (struct sandbox *sb = sandboxes, *next; sb; sb = next) {
		next = sb->next;
		sb_kill(sb, "the server is shutting down");
	}
}

bool sandboxes_idle(void)
{
	return !sandboxes;
}

void sandboxes_exit(void)
{
	/* After the loop: whatever is left is killed and removed synchronously. */
	while (sandboxes) {
		struct sandbox *sb = sandboxes;
		if (sb->proc.pidfd >= 0 || sb->proc.pid > 0) {
			eng->kill(sb->dir, &sb->proc);
			if (sb->proc.child && sb->proc.pidfd >= 0) {
				siginfo_t si;
				waitid(P_PIDFD, (id_t)sb->proc.pidfd, &si, WEXITED);
			}
		}
		sb->inflight = 0;
		sb_finish(sb);
	}
	for (struct sandbox *z = zombies, *n; z; z = n) {
		n = z->next;
		cJSON_Delete(z->metadata);
		free(z);
	}
	zombies = NULL;
	/* Builds still running end here, and call back while the templates exist. */
	if (eng && eng->exit)
		eng->exit();
	templates_exit();
	/* Last: what the above queued is removed (and its VMs reaped) before serve exits. */
	teardown_exit();
}
