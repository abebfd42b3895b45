/* Create by fork: a job of n children of a template or of a running sandbox, each
 * started on the engine, the job answered once every child is ready or failed. */
#include "api/sandbox/sandbox_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/sandbox/net_policy.h"
#include "api/sandbox/node.h"
#include "api/http/server.h"
/* ---- fork jobs ---- */

static void job_finish(struct sb_job *job)
{
	struct sandbox *parent = job->parent_id[0] ? sandbox_find(job->parent_id) : NULL;
	if (job->holds_parent && parent)
		sb_copy_release(parent);
	if (job->err.code) {
		for (unsigned i = 0; i < job->n; i++)
			if (job->sbs[i]) {
				job->sbs[i]->job = NULL;
				sb_kill(job->sbs[i], "a sibling of this fork failed");
			}
		if (job->done)
			job->done(job->ctx, job->err.kind, job->err.msg, NULL, 0);
	} else if (job->done) {
		job->done(job->ctx, AE_NONE, NULL, job->sbs, job->n);
	}
	for (unsigned i = 0; i < job->n; i++)
		if (job->sbs[i])
			job->sbs[i]->job = NULL;
	free(job->sbs);
	free(job);
}

void job_child_resolved(struct sb_job *job, struct sandbox *sb, bool ok, const char *why)
{
	if (!ok) {
		for (unsigned i = 0; i < job->n; i++)
			if (job->sbs[i] == sb)
				job->sbs[i] = NULL;
		/* Not a failure to retry when its own user deleted it meanwhile. */
		if (!job->err.code && sb->deleted_starting)
			api_fail(&job->err, -ECANCELED, AE_DELETED_STARTING, "sandbox %s was deleted while it was starting (%s)",
				 sb->id, why ? why : "deleted");
		else if (!job->err.code)
			api_fail(&job->err, -ECHILD, AE_START_FAILED, "sandbox %s: %s", sb->id,
				 why ? why : "failed");
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

/* A start fails: what it made goes, and so does dir unless it held the sandbox's files. */
static void sb_start_undo(struct sandbox *sb, bool again)
{
	if (again)
		sb_eng->stop_keep_files(sb->dir);
	else
		sb_eng->cleanup(sb->dir);
}

/* again: sb's dir holds its files, from which it boots afresh (sb_boot_again). */
static int sb_start(struct sandbox *sb, const struct template_rec *t, const char *copy_from, pid_t copy_pid,
		    bool again, struct mitos_err *e)
{
	if (!again && mkdir(sb->dir, 0700) < 0)
		return mitos_err_set(e, -errno, "mkdir %.300s: %s", sb->dir, strerror(errno));
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		int rc = mitos_err_set(e, -errno, "pipe: %s", strerror(errno));
		sb_start_undo(sb, again);
		return rc;
	}
	/* Ours non-blocking, so the ring polls it (see sb_ready_done); the engine's end
	 * stays as engines expect it. */
	fcntl(pfd[0], F_SETFL, O_NONBLOCK);
	struct engine_start es = { .id = sb->id, .dir = sb->dir, .template_root = t->root,
				   .copy_from = copy_from, .copy_settled = copy_from && copy_from == t->source,
				   .again = again, .copy_pid = copy_pid, .spec = t->spec, .ready_fd = pfd[1],
				   .net = sb->net };
	int rc = sb_eng->start(&es, &sb->proc, e);
	close(pfd[1]);
	if (rc) {
		close(pfd[0]);
		sb_start_undo(sb, again);
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

/* ---- a cold boot after a filesystem-only pause ---- */

/* The job's ctx: whoever asked for the boot (a first resume, connects meanwhile). */
static void booted_again(void *ctx, enum api_err err, const char *msg, struct sandbox **sbs, unsigned n)
{
	(void)err;
	(void)msg; /* the sandbox's fail_reason keeps it */
	if (sbs && n == 1)
		sbs[0]->ctl_busy = false; /* else sb_stopped_keeping_files() cleared it */
	for (struct resume_wait *w = ctx, *next; w; w = next) {
		next = w->next;
		w->done(w->ctx, sbs && n == 1 ? 0 : -ECHILD);
		free(w);
	}
}

bool sandbox_booting_again(const struct sandbox *sb)
{
	return sb->job && sb->job->done == booted_again;
}

int resume_wait_add(struct resume_wait **list, sandbox_paused_fn done, void *ctx)
{
	struct resume_wait *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->done = done;
	w->ctx = ctx;
	while (*list)
		list = &(*list)->next;
	*list = w;
	return 0;
}

void sb_boot_again(struct sandbox *sb, sandbox_paused_fn done, void *ctx)
{
	if (sandbox_booting_again(sb)) {
		struct resume_wait *first = sb->job->ctx; /* never NULL: it is appended to */
		if (resume_wait_add(&first, done, ctx))
			done(ctx, -ENOMEM);
		return;
	}
	const struct template_rec *t = templates_find(sb->template_name);
	struct sb_job *job = calloc(1, sizeof(*job));
	struct sandbox **sbs = calloc(1, sizeof(*sbs));
	struct resume_wait *w = NULL;
	struct mitos_err e = { 0 };
	/* Ring operations of its last start still pending would be submitted twice. */
	int rc = sb->inflight ? -EBUSY : !job || !sbs || resume_wait_add(&w, done, ctx) ? -ENOMEM : 0;
	if (!rc && !t)
		rc = mitos_err_set(&e, -ECHILD, "its template %s is gone", sb->template_name);
	else if (!rc && sb_start(sb, t, NULL, 0, true, &e))
		rc = -ECHILD;
	if (rc) {
		if (rc == -ECHILD) {
			snprintf(sb->fail_reason, sizeof(sb->fail_reason), "%s", e.msg);
			fprintf(stderr, "mitos-vmm serve: sandbox %s: cannot boot it again from its files: %s\n", sb->id,
				e.msg);
		}
		free(job);
		free(sbs);
		free(w);
		done(ctx, rc);
		return;
	}
	sb->cold = false;
	sb->ctl_busy = sb->keep_files = true;
	sb->fail_reason[0] = 0;
	sb_save(sb);
	/* A job of one: its start's end (running, or failed: then paused with its files
	 * again, sb_stopped_keeping_files) is told as a fork child's is. */
	sbs[0] = sb;
	job->n = job->pending = 1;
	job->sbs = sbs;
	job->done = booted_again;
	job->ctx = w;
	sb->job = job;
}

int sandboxes_fork(const struct fork_req *fr, sb_done_fn done, void *ctx, struct sb_job **jobout,
		   struct mitos_err *e)
{
	*jobout = NULL;
	if (sb_shutting_down)
		return api_fail(e, -ESHUTDOWN, AE_UNAVAILABLE, "the server is shutting down");
	if (node_draining())
		return api_fail(e, -EAGAIN, AE_NODE_DRAINING, "node %s is draining: it takes no new sandboxes",
				node_tag()[0] ? node_tag() : "(standalone)");
	if (!!fr->template_name == !!fr->sandbox_id)
		return api_fail(e, -EINVAL, AE_INVALID_ARGUMENT, "give exactly one of \"template\" and \"sandbox_id\"");
	if (fr->n < 1 || fr->n > MAX_FORK_N)
		return api_fail(e, -EINVAL, AE_INVALID_ARGUMENT, "n must be between 1 and %d", MAX_FORK_N);
	if (sb_count + fr->n > srv_cfg.max_sandboxes)
		return api_fail(e, -ENOSPC, AE_LIMIT_EXCEEDED, "this server runs at most %u sandboxes (%u exist)",
				srv_cfg.max_sandboxes, sb_count);
	/* On a cluster node the ids carry its tag. */
	char ids[MAX_FORK_N][ID_MAX + 1];
	for (unsigned i = 0; fr->ids && i < fr->n; i++) {
		if (!api_valid_id(fr->ids[i]))
			return api_fail(e, -EINVAL, AE_INVALID_SANDBOX_ID, "ids[%u] is not a valid sandbox id", i);
		if (node_sandbox_id_for(fr->ids[i], ids[i], sizeof(ids[i])))
			return api_fail(e, -EINVAL, AE_INVALID_SANDBOX_ID, "id %.64s is too long to carry this node's "
					"tag -%s: a sandbox id has at most 64 characters", fr->ids[i], node_tag());
		if (sandbox_find(ids[i]))
			return api_fail(e, -EEXIST, AE_CONFLICT, "a sandbox with id %s exists", ids[i]);
		for (unsigned j = 0; j < i; j++)
			if (!strcmp(ids[i], ids[j]))
				return api_fail(e, -EINVAL, AE_INVALID_ARGUMENT, "ids must be distinct");
	}
	const struct template_rec *t;
	struct sandbox *parent = NULL;
	char layer[1200];
	const char *copy_from = NULL;
	if (fr->template_name) {
		t = templates_find(fr->template_name);
		if (!t)
			return api_fail(e, -ENOENT, AE_NOT_FOUND, "no template named %s; create it with POST "
					"/v1/templates", fr->template_name);
		if (t->building)
			return api_fail(e, -EAGAIN, AE_UNAVAILABLE, "template %s is still being built; retry when POST "
					"/v1/templates has answered", t->name);
		if (t->source[0])
			copy_from = t->source;
	} else {
		parent = sandbox_find(fr->sandbox_id);
		if (!parent)
			return api_fail(e, -ENOENT, AE_NOT_FOUND, "no sandbox %s", fr->sandbox_id);
		if (parent->state != SB_RUNNING && parent->state != SB_PAUSED)
			return api_fail(e, -EBUSY, AE_SANDBOX_NOT_RUNNING, "sandbox %s is %s", parent->id,
					state_name(parent->state));
		t = templates_find(parent->template_name);
		if (!t)
			return api_fail(e, -ENOENT, AE_INTERNAL, "the template of sandbox %s is gone", parent->id);
		if (sb_eng->fork_source) {
			struct mitos_err fe = { 0 };
			int rc = sb_eng->fork_source(parent->dir, &parent->proc, layer, sizeof(layer), &fe);
			if (rc)
				return api_fail(e, rc, AE_ENGINE_UNAVAILABLE, "cannot fork sandbox %s: %s", parent->id,
						fe.msg);
		} else {
			sb_eng->writable_layer(parent->dir, layer, sizeof(layer));
		}
		copy_from = layer;
	}
	const struct net_policy *net = fr->net ? fr->net : parent ? parent->net : t->net;
	if (net_policy_any(net) && !sandboxes_network_for(t))
		return api_fail(e, -ENOTSUP, AE_INVALID_ARGUMENT, "sandboxes of %s have no network but loopback (%s): "
				"ask for none", t->name, !sandboxes_network() ? "serve runs without --egress"
				: "its VM was built without a network device, before serve ran with --egress: make "
				  "the template anew");
	struct sb_job *job = calloc(1, sizeof(*job));
	struct sandbox **sbs = calloc(fr->n, sizeof(*sbs));
	if (!job || !sbs) {
		free(job);
		free(sbs);
		return api_fail(e, -ENOMEM, AE_INTERNAL, "out of memory");
	}
	job->n = fr->n;
	job->sbs = sbs;
	job->done = done;
	job->ctx = ctx;
	if (parent) {
		snprintf(job->parent_id, sizeof(job->parent_id), "%s", parent->id);
		/* The copy must see one consistent state of the parent's files (an engine
		 * with its own fork_source takes care of that itself): frozen until the last
		 * copy of it ends, whatever is asked of it meanwhile. */
		if (!sb_eng->fork_source)
			job->holds_parent = sb_copy_hold(parent) == 1;
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
			api_fail(&job->err, -ENOMEM, AE_INTERNAL, "out of memory");
			break;
		}
		snprintf(sb->template_name, sizeof(sb->template_name), "%s", t->name);
		if (parent)
			snprintf(sb->parent, sizeof(sb->parent), "%s", parent->id);
		sb->created_ms = now;
		sb->deadline_ms = now + (uint64_t)timeout_s * 1000u;
		if (fr->metadata)
			sb->metadata = cJSON_Duplicate(fr->metadata, 1);
		sb->net = net_policy_dup(net);
		struct mitos_err se = { 0 };
		int rc = sb_start(sb, t, copy_from, parent ? parent->proc.pid : 0, false, &se);
		if (rc) {
			api_fail(&job->err, rc, AE_ENGINE_UNAVAILABLE, "cannot start sandbox %s: %s", id, se.msg);
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
		job_finish(job);
		return e->code;
	}
	return 0;
}

