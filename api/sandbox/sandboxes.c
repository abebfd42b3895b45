#include "api/sandbox/sandbox_internal.h"
#include "api/sandbox/workload.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/sandbox/agent_client.h"
#include "api/sandbox/net_policy.h"
#include "api/sandbox/registry.h"
#include "api/sandbox/sandbox_ends.h"
const struct engine_ops *sb_eng;
struct sandbox *sb_list;
unsigned sb_count;
struct sandbox *sb_zombies;
bool sb_shutting_down;
struct ur_ticker sb_ticker;
char sb_root[1100];

/* The client hears why its create failed; the operator reads it here, with the engine's
 * account of the exit (a VM's last console lines) when there is one. */
static void log_start_failed(const struct sandbox *sb, const char *exit_why)
{
	fprintf(stderr, "mitos-vmm serve: sandbox %s: start failed: %s%s%s\n", sb->id,
		sb->fail_reason[0] ? sb->fail_reason : "killed", exit_why[0] ? "; " : "", exit_why);
}

static void sb_exit_done(struct uop *op, int res, uint32_t flags);
static void sb_ready_done(struct uop *op, int res, uint32_t flags);
static void sb_retry_done(struct uop *op, int res, uint32_t flags);

const char *sandboxes_engine_name(void) { return sb_eng ? sb_eng->name : "none"; }
/* ---- registry ---- */

struct sandbox *sandbox_find(const char *id)
{
	for (struct sandbox *sb = sb_list; sb; sb = sb->next)
		if (!strcmp(sb->id, id))
			return sb;
	return NULL;
}

struct sandbox *sandboxes_first(void) { return sb_list; }
unsigned sandboxes_count(void) { return sb_count; }

void sb_link(struct sandbox *sb)
{
	sb->next = sb_list;
	sb_list = sb;
	sb_count++;
}

static void sb_unlink(struct sandbox *sb)
{
	for (struct sandbox **pp = &sb_list; *pp; pp = &(*pp)->next)
		if (*pp == sb) {
			*pp = sb->next;
			sb_count--;
			return;
		}
}

const char *state_name(enum sb_state s)
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
	cJSON_AddStringToObject(o, "engine", sb_eng->name);
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

bool sandboxes_network(void)
{
	return sb_eng && sb_eng->network && sb_eng->network();
}

bool sandboxes_network_for(const struct template_rec *t)
{
	return sandboxes_network() && (!sb_eng->template_network || sb_eng->template_network(t->root));
}

/* 0, or -errno (a full disk) with the reason in serve's log. */
int sb_save(const struct sandbox *sb)
{
	cJSON *o = sandbox_json(sb);
	/* The state its user gave it, not a copy's freeze. */
	if (sb->copy_holds && sb->resume_after_copy)
		cJSON_ReplaceItemInObjectCaseSensitive(o, "state", cJSON_CreateString(state_name(SB_RUNNING)));
	cJSON_AddNumberToObject(o, "created_ms", (double)sb->created_ms);
	cJSON_AddNumberToObject(o, "deadline_ms", (double)sb->deadline_ms);
	cJSON_AddNumberToObject(o, "pid", sb->proc.pid);
	cJSON_AddNumberToObject(o, "start_time", (double)sb->proc.start_time);
	cJSON_AddNumberToObject(o, "fork_time_ms", sb->fork_time_ms);
	if (sb->cold || sb->keep_files)
		cJSON_AddBoolToObject(o, "cold", true);
	if (sb->net)
		cJSON_AddItemToObject(o, "network_policy", net_policy_json(sb->net));
	char path[1200];
	snprintf(path, sizeof(path), "%s/sandbox.json", sb->dir);
	int rc = registry_write_json(path, o);
	if (rc)
		fprintf(stderr, "mitos-vmm serve: cannot save %s: %s\n", path, strerror(-rc));
	cJSON_Delete(o);
	return rc;
}

/* ---- sandbox lifecycle ---- */

struct sandbox *sb_new(const char *id)
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

void sb_free(struct sandbox *sb)
{
	if (sb->inflight) {
		sb->next = sb_zombies;
		sb_zombies = sb;
		return;
	}
	cJSON_Delete(sb->metadata);
	free(sb->net);
	free(sb);
}

/* After a ring operation of a sandbox that already left the registry. */
static void sb_release(struct sandbox *sb)
{
	if (sb->inflight)
		return;
	for (struct sandbox **pp = &sb_zombies; *pp; pp = &(*pp)->next)
		if (*pp == sb) {
			*pp = sb->next;
			break;
		}
	cJSON_Delete(sb->metadata);
	free(sb);
}

void sb_arm_exit(struct sandbox *sb)
{
	io_uring_prep_poll_add(ur_sqe(&sb->exit_op), sb->proc.pidfd, POLLIN);
	sb->inflight++;
}

static void sb_running(struct sandbox *sb)
{
	sb->state = SB_RUNNING;
	sb->keep_files = false;
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
		if (paused && sb_eng->pause(sb->dir, &sb->proc) == 0)
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

/* Nothing more of sb runs through serve: its workload's start and its agent connection
 * end (ending, pausing without its processes, or gone). */
static void sb_disconnect(struct sandbox *sb)
{
	workload_cancel(sb);
	if (sb->agent) {
		struct agent_conn *ac = sb->agent;
		sb->agent = NULL;
		agent_conn_close(ac);
	}
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
	const struct template_rec *t = sb->adopted || sb_eng->template_build ? NULL : templates_find(sb->template_name);
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
	if (sb_eng->after_connect && !sb->adopted) {
		int rc = sb_eng->after_connect(&sb->proc, ac, engine_connected, sb);
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
	if (sb->state == SB_STARTING && sb_eng->agent_vsock_port && !sb->exited) {
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

int sb_connect(struct sandbox *sb);

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

int sb_connect(struct sandbox *sb)
{
	char sock[1200];
	int rc = sb_eng->agent_socket(sb->dir, sock, sizeof(sock));
	if (!rc)
		rc = agent_connect_vsock(sock, sb_eng->agent_vsock_port, &agent_cbs, sb, &sb->agent);
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
	if (res < 0 && sb->state == SB_STARTING) {
		/* Serve's own failure, not the sandbox's, and nothing else would end its wait.
		 * Seen as -ECANCELED on Linux 6.1 while the pipe was blocking: its read went to
		 * an io-wq thread, whose creation fails (-ERESTARTNOINTR, three tries) while a
		 * SIGCHLD is pending, as it is after any child of a worker thread exits. */
		snprintf(sb->fail_reason, sizeof(sb->fail_reason), "cannot read its engine's start signal: %s",
			 strerror(-res));
		sb_kill(sb, sb->fail_reason);
	} else if (res == 1 && sb->state == SB_STARTING) {
		int rc = sb_connect(sb);
		if (rc) {
			snprintf(sb->fail_reason, sizeof(sb->fail_reason), "cannot connect to the agent: %s", strerror(-rc));
			sb_kill(sb, sb->fail_reason);
		}
	}
	/* Anything else: the sandbox died before its agent was up; the exit
	 * watch reports why. */
}

struct cold_op {
	sandbox_paused_fn done;
	void *ctx;
	struct resume_wait *resumes; /* asked for meanwhile: a boot follows the pause */
};

/* A filesystem-only pause ends: its requester hears rc; the resumes that waited for
 * it boot the sandbox again, or hear -ESRCH when it is gone. */
static void cold_op_end(struct sandbox *sb, int rc, bool gone)
{
	struct cold_op *op = sb->cold_op;
	if (!op)
		return;
	sb->cold_op = NULL;
	sb->ctl_busy = false;
	op->done(op->ctx, rc);
	for (struct resume_wait *w = op->resumes, *next; w; w = next) {
		next = w->next;
		if (gone)
			w->done(w->ctx, -ESRCH);
		else
			sb_boot_again(sb, w->done, w->ctx);
		free(w);
	}
	free(op);
}

void sb_finish(struct sandbox *sb)
{
	/* Everything of the sandbox is gone: files, registry, waiters. */
	sb_disconnect(sb);
	if (sb->proc.pidfd >= 0) {
		close(sb->proc.pidfd);
		sb->proc.pidfd = -1;
	}
	int rc = sb_eng->cleanup(sb->dir);
	if (rc)
		fprintf(stderr, "mitos-vmm serve: sandbox %s: cannot remove %s: %s\n", sb->id, sb->dir, strerror(-rc));
	if (sb_eng->release)
		sb_eng->release(&sb->proc);
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
	cold_op_end(sb, -ESRCH, true);
	sb_free(sb);
}

/* Its processes ended for a filesystem-only pause, or its boot from its files failed:
 * it stays, paused, with its files. */
static void sb_stopped_keeping_files(struct sandbox *sb)
{
	close(sb->proc.pidfd);
	sb->proc = (struct engine_proc){ .pidfd = -1 };
	sb->exited = sb->killed_starting = sb->agent_lost = sb->keep_files = false;
	sb_eng->stop_keep_files(sb->dir);
	sb->state = SB_PAUSED;
	sb->cold = true;
	int rc = sb_save(sb);
	if (sb->job) {
		char why[400];
		if (!sb->fail_reason[0]) {
			sb_eng->exit_reason(sb->dir, why, sizeof(why));
			snprintf(sb->fail_reason, sizeof(sb->fail_reason), "%s",
				 why[0] ? why : "it exited before its agent answered");
		}
		fprintf(stderr, "mitos-vmm serve: sandbox %s did not boot again from its files; it stays paused: %s\n",
			sb->id, sb->fail_reason);
		sb->ctl_busy = false;
		job_child_resolved(sb->job, sb, false, sb->fail_reason);
	}
	cold_op_end(sb, rc, false);
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
	if (sb->keep_files) {
		sb_stopped_keeping_files(sb);
		return;
	}
	if (sb->state == SB_STARTING && !sb->fail_reason[0]) {
		char why[400];
		sb_eng->exit_reason(sb->dir, why, sizeof(why));
		snprintf(sb->fail_reason, sizeof(sb->fail_reason), "the sandbox failed to start: %s",
			 why[0] ? why : "it exited before its agent answered");
	} else if ((sb->state != SB_STOPPING && !sb->fail_reason[0]) || sb->agent_lost) {
		/* A crash (a VM killed by its seccomp filter, an agent killed by the OOM
		 * killer): its last words go to serve's log and the sandbox's record, the
		 * traces of it left once its directory is removed. */
		char why[400];
		sb_eng->exit_reason(sb->dir, why, sizeof(why));
		if (why[0])
			snprintf(sb->fail_reason, sizeof(sb->fail_reason), "%s", why);
	}
	if (sb->killed_starting) {
		char why[400];
		sb_eng->exit_reason(sb->dir, why, sizeof(why));
		log_start_failed(sb, why);
	} else if (sb->state != SB_STOPPING || sb->agent_lost) {
		fprintf(stderr, "mitos-vmm serve: sandbox %s exited%s%s\n", sb->id, sb->fail_reason[0] ? ": " : "",
			sb->fail_reason);
	}
	sandbox_end_record(sb->id, sb->fail_reason, ur_wall_ms());
	sb->state = SB_STOPPING;
	sb_finish(sb);
}

void sb_kill(struct sandbox *sb, const char *why)
{
	if (sb->state == SB_STOPPING)
		return;
	if (why && !sb->fail_reason[0])
		snprintf(sb->fail_reason, sizeof(sb->fail_reason), "%s", why);
	sb->killed_starting = sb->state == SB_STARTING;
	sb->state = SB_STOPPING;
	sb_disconnect(sb);
	if (sb->proc.pidfd < 0 || sb_eng->kill(sb->dir, &sb->proc) < 0) {
		/* Already gone (or never started): finish now. */
		if (!sb->exited && sb->proc.pidfd < 0) {
			if (sb->killed_starting)
				log_start_failed(sb, "");
			sb_finish(sb);
		}
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
	sb->deleted_starting = sb->state == SB_STARTING;
	sb->keep_files = false;
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

bool sandbox_user_paused(const struct sandbox *sb)
{
	return sb->state == SB_PAUSED && !(sb->copy_holds && sb->resume_after_copy);
}

/* The engine pauses sb, which runs: 0, -EBUSY (it does not run), or -errno. */
static int pause_running(struct sandbox *sb)
{
	if (sb->state != SB_RUNNING)
		return -EBUSY;
	int rc = sb_eng->pause(sb->dir, &sb->proc);
	if (!rc)
		sb->state = SB_PAUSED;
	return rc;
}

int sb_copy_hold(struct sandbox *sb)
{
	if (sb->copy_holds) {
		sb->copy_holds++;
		return 1;
	}
	if (sb->state == SB_PAUSED)
		return 0;
	int rc = pause_running(sb);
	if (rc)
		return rc;
	sb->copy_holds = 1;
	sb->resume_after_copy = true;
	return 1;
}

void sb_copy_release(struct sandbox *sb)
{
	if (!sb->copy_holds || --sb->copy_holds)
		return;
	if (sb->resume_after_copy && sb->state == SB_PAUSED && sb_eng->resume(sb->dir, &sb->proc) == 0)
		sb->state = SB_RUNNING;
	sb->resume_after_copy = false;
}

/* While a copy holds it, a pause or resume is what happens when the copies end. */
static int copy_held_set(struct sandbox *sb, bool pause)
{
	sb->resume_after_copy = !pause;
	return sb_save(sb);
}

int sandbox_pause(struct sandbox *sb)
{
	if (sb->copy_holds)
		return copy_held_set(sb, true);
	if (sb->state == SB_PAUSED)
		return 0;
	int rc = pause_running(sb);
	if (rc)
		return rc;
	if ((rc = sb_save(sb))) {
		sb_eng->resume(sb->dir, &sb->proc);
		sb->state = SB_RUNNING;
	}
	return rc;
}

int sandbox_resume(struct sandbox *sb)
{
	if (sb->copy_holds)
		return copy_held_set(sb, false);
	if (sb->state == SB_RUNNING)
		return 0;
	if (sb->state != SB_PAUSED)
		return -EBUSY;
	int rc = sb_eng->resume(sb->dir, &sb->proc);
	if (rc)
		return rc;
	sb->state = SB_RUNNING;
	if ((rc = sb_save(sb))) {
		sb_eng->pause(sb->dir, &sb->proc);
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
				(op->pause ? sb_eng->resume : sb_eng->pause)(sb->dir, &sb->proc);
				sb->state = op->pause ? SB_RUNNING : SB_PAUSED;
			}
		} else if (!rc) {
			rc = -EBUSY; /* it started stopping meanwhile */
		}
	}
	op->done(op->ctx, rc);
	free(op);
}

bool sandbox_stopping_files_only(const struct sandbox *sb)
{
	return sb->cold_op != NULL;
}

void sandbox_pause_files_only(struct sandbox *sb, sandbox_paused_fn done, void *ctx)
{
	if (!sb_eng->stop_keep_files) {
		sandbox_set_paused(sb, true, done, ctx);
		return;
	}
	if (sb->cold && !sb->ctl_busy) {
		done(ctx, 0);
		return;
	}
	/* A copy of its files on its way (a fork, a snapshot) must end first. */
	if (sb->ctl_busy || sb->copy_holds || (sb->state != SB_RUNNING && sb->state != SB_PAUSED)) {
		done(ctx, -EBUSY);
		return;
	}
	struct cold_op *op = calloc(1, sizeof(*op));
	if (!op) {
		done(ctx, -ENOMEM);
		return;
	}
	int rc = sb_eng->kill(sb->dir, &sb->proc);
	if (rc) {
		free(op);
		done(ctx, rc);
		return;
	}
	op->done = done;
	op->ctx = ctx;
	sb->cold_op = op;
	sb->ctl_busy = sb->keep_files = true;
	sb_save(sb); /* a serve that dies before its end keeps its files too */
	sb_disconnect(sb);
	/* sb_exit_done() goes on once its init is gone. */
}

void sandbox_set_paused(struct sandbox *sb, bool pause, sandbox_paused_fn done, void *ctx)
{
	if (!pause && ((sb->cold && !sb->ctl_busy) || sandbox_booting_again(sb))) {
		sb_boot_again(sb, done, ctx);
		return;
	}
	if (!pause && sb->cold_op) {
		if (resume_wait_add(&sb->cold_op->resumes, done, ctx))
			done(ctx, -ENOMEM);
		return;
	}
	if (sb->copy_holds) {
		done(ctx, copy_held_set(sb, pause));
		return;
	}
	if (sb->state == (pause ? SB_PAUSED : SB_RUNNING) && !sb->ctl_busy) {
		done(ctx, 0);
		return;
	}
	if (sb->ctl_busy || sb->state != (pause ? SB_RUNNING : SB_PAUSED)) {
		done(ctx, -EBUSY);
		return;
	}
	if (!sb_eng->pause_async) {
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
	int rc = sb_eng->pause_async(sb->dir, &sb->proc, pause, pause_op_done, op);
	if (rc) {
		sb->ctl_busy = false;
		free(op);
		done(ctx, rc);
	}
}

struct net_op {
	char id[ID_MAX + 1];
	uint64_t created_ms;       /* tells a later sandbox with the same id apart */
	struct net_policy p;
	sandbox_net_fn done;
	void *ctx;
};

static void net_op_done(void *arg, int rc)
{
	struct net_op *op = arg;
	struct sandbox *sb = sandbox_find(op->id);
	if (!sb || sb->created_ms != op->created_ms) {
		rc = -ESRCH;
	} else {
		sb->net_busy = false;
		if (!rc) {
			free(sb->net);
			sb->net = net_policy_dup(&op->p);
			sb_save(sb);
		}
	}
	op->done(op->ctx, rc, rc == -EIO ? "nft refused the new rules" : NULL);
	free(op);
}

void sandbox_set_network(struct sandbox *sb, const struct net_policy *p, sandbox_net_fn done, void *ctx)
{
	if (sb->net_busy || sb->cold_op || (sb->state != SB_RUNNING && sb->state != SB_PAUSED)) {
		done(ctx, -EBUSY, NULL);
		return;
	}
	if (sb->cold && !sb->net) {
		/* As when it ran: started with nothing allowed, it has no interface. */
		done(ctx, -ENOENT, NULL);
		return;
	}
	if (sb->cold) {
		/* Nothing runs to apply it to: its next boot starts with it. */
		struct net_policy *np = net_policy_dup(p);
		if (!np && net_policy_any(p)) {
			done(ctx, -ENOMEM, NULL);
			return;
		}
		free(sb->net);
		sb->net = np;
		done(ctx, sb_save(sb), NULL);
		return;
	}
	struct net_op *op = calloc(1, sizeof(*op));
	if (!op) {
		done(ctx, -ENOMEM, NULL);
		return;
	}
	snprintf(op->id, sizeof(op->id), "%s", sb->id);
	op->created_ms = sb->created_ms;
	op->p = *p;
	op->done = done;
	op->ctx = ctx;
	struct mitos_err e = { 0 };
	int rc = sb_eng->network_update ? sb_eng->network_update(sb->dir, p, net_op_done, op, &e) : -ENOENT;
	if (rc) {
		free(op);
		done(ctx, rc, e.msg[0] ? e.msg : NULL);
		return;
	}
	sb->net_busy = true;
}

/* ---- ticks: expiry, start deadlines ---- */

/* Said in the answer and, with the console's last words, in the log. */
static void sb_start_timed_out(struct sandbox *sb, uint64_t now)
{
	const char *step = sb->ready_fd >= 0 ? "the engine had not finished starting it (restore or boot)" :
			   !sb->agent	     ? "its agent took no connection" :
			   sb->workload	     ? "its template's workload was not ready" :
					       "its agent connected but did not finish the start handshake";
	/* The first connection is made once the engine is done; each retry counts. */
	unsigned connections = sb->ready_fd >= 0 ? 0 : 1 + sb->connect_tries;
	char last[sizeof(sb->fail_reason)];
	snprintf(last, sizeof(last), "%s", sb->fail_reason);
	snprintf(sb->fail_reason, sizeof(sb->fail_reason),
		 "it did not start within %.1f s: %s (%u agent connections)%s%.200s",
		 (double)(now - sb->started_mono_ms) / 1000.0, step, connections, last[0] ? "; last: " : "", last);
	sb_kill(sb, NULL);
}

void sb_tick(struct ur_ticker *tk, uint64_t now)
{
	(void)tk;
	uint64_t wall = ur_wall_ms();
	for (struct sandbox *sb = sb_list, *next; sb; sb = next) {
		next = sb->next;
		if (sb->state == SB_STOPPING)
			continue;
		if (sb->state == SB_STARTING && now > sb->start_deadline_ms) {
			sb_start_timed_out(sb, now);
			continue;
		}
		if (sb->agent_lost && now > sb->agent_lost_ms + AGENT_LOST_GRACE_MS) {
			sb_kill(sb, sb->fail_reason);
			continue;
		}
		/* An expiry waits for a pause or resume on its way: E2B's onTimeout pauses a
		 * sandbox instead of ending it. */
		if (wall >= sb->deadline_ms && !sb->ctl_busy) {
			fprintf(stderr, "mitos-vmm serve: sandbox %s expired\n", sb->id);
			sb->keep_files = false;
			sb_kill(sb, "the sandbox expired");
		}
	}
}

