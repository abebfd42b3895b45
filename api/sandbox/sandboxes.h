/* Templates and sandboxes: the registry (in memory, persisted as one JSON file
 * per object in the state dir) and the lifecycle on top of an engine: create by
 * fork, readiness, TTL expiry, pause/resume, delete, re-adoption after a restart
 * of serve. */
#ifndef MITOS_API_SANDBOXES_H
#define MITOS_API_SANDBOXES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/engines/engine.h"
#include "api/http/errors.h"
#include "api/http/uring.h"

struct cJSON;
struct agent_conn;
struct net_policy;

#define ID_MAX 64

struct tpl_waiter;

struct template_rec {
	char name[ID_MAX + 1];
	char image[ID_MAX + 1];
	char root[1024];
	uint64_t created_ms;
	double build_ms;             /* how long the engine took to make it ready */
	bool building;               /* the engine is still building it (kvm) */
	struct cJSON *spec;          /* kvm: the request it was built from; process: its limits; or NULL */
	unsigned shape_cpus, shape_mem_mib; /* templates_shape's answer once known (0: not yet) */
	struct tpl_waiter *waiters;  /* requests waiting for the build */
	/* A snapshot (snapshots.c): its sandboxes start from source, a copy of sandbox
	 * snap_of's state (engine_start.copy_from), on the root of the template that
	 * sandbox ran; snap_dir is its own. All "" for a template. */
	char source[1100];
	char snap_dir[1100];
	char snap_of[ID_MAX + 1];
	char snap_base[ID_MAX + 1];  /* the template under it: its sandboxes' once it is deleted */
	bool snap_named;             /* named by its taker, not given an id */
	struct net_policy *net;      /* what its sandboxes may reach (NULL: nothing) */
	struct template_rec *next;
};

/* A template build ended: t is ready, or err/msg say why not (t is then gone). */
typedef void (*tpl_done_fn)(void *ctx, enum api_err err, const char *msg, struct template_rec *t);

enum sb_state { SB_STARTING, SB_RUNNING, SB_PAUSED, SB_STOPPING };

struct sb_job;
struct sb_waiter;

struct sandbox {
	char id[ID_MAX + 1];
	char template_name[ID_MAX + 1];
	char parent[ID_MAX + 1];
	enum sb_state state;
	uint64_t created_ms;   /* wall clock */
	uint64_t deadline_ms;  /* wall clock; the server terminates it then */
	uint64_t start_deadline_ms; /* monotonic; must be ready by then */
	uint64_t started_mono_ms;
	double fork_time_ms;   /* from the fork request to the agent's first answer */
	struct cJSON *metadata;
	struct engine_proc proc;
	struct agent_conn *agent;
	char dir[1024];
	struct uop exit_op, ready_op, retry_op;
	struct __kernel_timespec retry_ts;
	unsigned connect_tries;
	int ready_fd;
	char ready_byte;
	unsigned inflight;
	bool exited, adopted, freed_from_registry;
	/* Killed by serve while starting: its state no longer says so, its exit is logged. */
	bool killed_starting;
	bool deleted_starting; /* deleted on request while it started: its create says so */
	/* Its agent went away on its own: it ends by itself (an engine then says why) or is
	 * killed at agent_lost_ms + AGENT_LOST_GRACE_MS. */
	bool agent_lost;
	uint64_t agent_lost_ms;
	struct sb_job *job;
	struct sb_waiter *stop_waiters;
	char fail_reason[512];
	/* Streams its agent broke (sent past its credit): each was reset. */
	unsigned agent_violations;
	/* Its template's workload being started (process engine), or NULL. */
	struct workload_run *workload;
	/* What it may reach (NULL: nothing; net_policy.h). */
	struct net_policy *net;
	/* A change of what it may reach is on its way (sandbox_set_network). */
	bool net_busy;
	/* A pause or resume is on its way (sandbox_set_paused). */
	bool ctl_busy;
	/* Paused without its processes (sandbox_pause_files_only): a resume boots it
	 * afresh from its files. */
	bool cold;
	/* Whom a filesystem-only pause tells once done. */
	struct cold_op *cold_op;
	/* Once its init exits it stays, paused with its files (cold): it is being paused
	 * so, or booted again from them (a failed boot leaves it as it was). Whatever ends
	 * it for good (delete, expiry, shutdown) clears it first. */
	bool keep_files;
	/* Frozen for copies of its files (forks, a snapshot), not by its user: how many
	 * hold it, and whether it runs again when the last ends (a user's pause or resume
	 * meanwhile changes that, and only that). */
	unsigned copy_holds;
	bool resume_after_copy;
	struct sandbox *next;
};

typedef void (*sb_done_fn)(void *ctx, enum api_err err, const char *msg, struct sandbox **sbs, unsigned n);

struct fork_req {
	const char *template_name;  /* either this */
	const char *sandbox_id;     /* or this */
	unsigned n;
	uint32_t timeout_s;
	const char *const *ids;     /* NULL or n explicit ids */
	const struct cJSON *metadata;
	/* What they may reach; NULL: a fork's parent's, or its template's. */
	const struct net_policy *net;
};

/* Startup, before and after the event loop exists. */
int sandboxes_init(struct mitos_err *e);
void sandboxes_start(void);
void sandboxes_shutdown(void);
bool sandboxes_idle(void);
void sandboxes_exit(void);
const char *sandboxes_engine_name(void);

struct template_rec *templates_find(const char *name);
struct template_rec *templates_first(void);
/* The CPUs and memory a sandbox of t sees (engine_ops.template_shape); -errno when
 * the engine cannot tell (a template still building). */
int templates_shape(struct template_rec *t, unsigned *cpus, unsigned *mem_mib);
/* *created tells a new template from an existing one with the same name. spec is the
 * request (engines that build templates read it). Returns 1 when the template is being
 * built: done runs once it is ready or failed (detach *w if the requester goes away);
 * -errno with e and its kind, the answer for the client, when it cannot be made. */
int templates_create(const char *name, const char *image, const struct cJSON *spec, struct template_rec **out,
		     bool *created, tpl_done_fn done, void *ctx, struct tpl_waiter **w, struct mitos_err *e);
void tpl_waiter_detach(struct tpl_waiter *w);
struct cJSON *template_json(const struct template_rec *t);
/* What t's sandboxes may reach from now on (theirs so far keep theirs): 0 or -errno. */
int templates_set_network(struct template_rec *t, const struct net_policy *p);
/* Sandboxes of this node can be given a network (serve --egress, an engine that can). */
bool sandboxes_network(void);
/* ... and those of template t (a kvm template built before --egress has no device). */
bool sandboxes_network_for(const struct template_rec *t);

/* Snapshots that outlive their sandbox (E2B's createSnapshot). */
struct snap_take;
/* A snapshot taken: t, or err and msg say why not. */
typedef void (*snap_done_fn)(void *ctx, enum api_err err, const char *msg, struct template_rec *t);
/* Takes a snapshot of the running or paused sandbox sb: a template named name whose
 * sandboxes start from sb's state as it is now (kvm: memory and disk; process: its
 * files), replacing the snapshot of that name once complete; on a cluster node the
 * name gets the node's tag (name-TAG) unless it ends in it. sb goes on as it was (a
 * process-engine sandbox is paused while its files are copied); named: the taker
 * named it (E2B lists its name), rather than took the id it was given. 0 and done later
 * (detach *out if the requester goes away), or -errno with e. */
int snapshots_take(struct sandbox *sb, const char *name, bool named, snap_done_fn done, void *ctx, struct snap_take **out,
		   struct mitos_err *e);
void snap_take_detach(struct snap_take *st);
/* The template or snapshot name; on a cluster node also the snapshot name-TAG that a
 * take of name made (NULL: neither). */
struct template_rec *snapshots_find(const char *name);
/* Removes the snapshot name or name-TAG (its sandboxes go on, as sandboxes of the
 * template under it): 0, or -errno with e (AE_NOT_FOUND;
 * AE_INVALID_ARGUMENT for a template that is no snapshot; AE_CONFLICT while taken). */
int snapshots_delete(const char *name, struct mitos_err *e);

struct sandbox *sandbox_find(const char *id);
struct sandbox *sandboxes_first(void);
unsigned sandboxes_count(void);
struct cJSON *sandbox_json(const struct sandbox *sb);

/* Starts n sandboxes; done runs once all are ready, or with an error once one
 * failed (the others are then removed). Returns a job handle, or -errno with e and its
 * kind when none could start. */
int sandboxes_fork(const struct fork_req *fr, sb_done_fn done, void *ctx, struct sb_job **job,
		   struct mitos_err *e);
/* The requester is gone: the job completes without calling done. */
void sb_job_detach(struct sb_job *job);

/* Kills and removes sb; done (may be NULL) runs when nothing of it is left. */
void sandbox_destroy(struct sandbox *sb, const char *why, void (*done)(void *ctx), void *ctx,
		     struct sb_waiter **w);
void sb_waiter_detach(struct sb_waiter *w);
int sandbox_set_timeout(struct sandbox *sb, uint32_t seconds);
int sandbox_pause(struct sandbox *sb);
int sandbox_resume(struct sandbox *sb);
/* Paused by its user (not only frozen for a copy). */
bool sandbox_user_paused(const struct sandbox *sb);
/* The same for requests, without holding the loop while an engine waits on its VMM:
 * done(ctx, rc) runs once, on the loop (at once when the engine is quick or nothing is
 * to do), with 0, -EBUSY (starting, stopping, or another pause or resume of it on its
 * way), -ESRCH (the sandbox ended meanwhile), -ECHILD (paused without its processes,
 * it did not boot again: it stays so, sb->fail_reason says why) or another -errno. */
typedef void (*sandbox_paused_fn)(void *ctx, int rc);
void sandbox_set_paused(struct sandbox *sb, bool pause, sandbox_paused_fn done, void *ctx);
/* sb, paused without its processes, is being booted again from its files: it starts,
 * and a resume (sandbox_set_paused) waits for it. */
bool sandbox_booting_again(const struct sandbox *sb);
/* A filesystem-only pause of sb is on its way: a resume waits for it, then boots sb. */
bool sandbox_stopping_files_only(const struct sandbox *sb);
/* A filesystem-only pause (E2B's pause with memory false): every process of sb, which
 * runs or is paused, ends, and what it held while running is given back; its files stay.
 * sandbox_set_paused() resumes it by booting it afresh from them (its processes, a new
 * boot id). An engine without stop_keep_files (kvm) pauses it with its memory. done
 * as sandbox_set_paused's. */
void sandbox_pause_files_only(struct sandbox *sb, sandbox_paused_fn done, void *ctx);
/* Replaces what sb may reach by p (its engine's rules, then sb->net): done(ctx, rc)
 * runs once, on the loop, with 0, -ENOENT (sb has no network interface: it was
 * started with nothing allowed, or on an engine or serve that gives none), -EBUSY
 * (another change on its way, or sb starting or stopping), -ESRCH (it ended
 * meanwhile) or another -errno; msg (may be NULL) says why. */
typedef void (*sandbox_net_fn)(void *ctx, int rc, const char *msg);
void sandbox_set_network(struct sandbox *sb, const struct net_policy *p, sandbox_net_fn done, void *ctx);

#endif
