/* What the parts of the sandbox lifecycle share: sandboxes.c (the registry, a
 * sandbox's life from start to end, pause, expiry), sandbox_fork.c (create by fork:
 * fork jobs and starting children on the engine) and sandbox_startup.c (start-up,
 * re-adoption after a restart of serve, shutdown). Owned by the event loop. */
#ifndef MITOS_API_SANDBOX_INTERNAL_H
#define MITOS_API_SANDBOX_INTERNAL_H

#include "api/sandbox/sandboxes.h"

#define START_TIMEOUT_MS 30000
#define MAX_FORK_N 100
/* A sandbox whose agent connection closed gets this long to end by itself (its init then
 * says why: an agent killed by the OOM killer, say) before serve kills it. */
#define AGENT_LOST_GRACE_MS 1000


struct sb_job {
	unsigned n, pending;
	struct sandbox **sbs;
	struct mitos_err err;   /* the first failure: code 0 while there is none */
	char parent_id[ID_MAX + 1];
	bool holds_parent;    /* a copy hold of the parent (sb_copy_hold) */
	sb_done_fn done;
	void *ctx;
};

struct sb_waiter {
	void (*done)(void *ctx);
	void *ctx;
	struct sb_waiter *next;
};

extern const struct engine_ops *sb_eng;
extern struct sandbox *sb_list;
extern unsigned sb_count;
extern struct sandbox *sb_zombies; /* freed sandboxes whose ring operations are still pending */
extern bool sb_shutting_down;
extern struct ur_ticker sb_ticker;
extern char sb_root[1100];

/* ---- sandboxes.c ---- */
struct sandbox *sb_new(const char *id);
void sb_free(struct sandbox *sb);
void sb_link(struct sandbox *sb);
/* 0, or -errno (a full disk) with the reason in serve's log. */
int sb_save(const struct sandbox *sb);
/* Freezes sb for a copy of its files: 1 held (release it with sb_copy_release), 0 not
 * needed (its user paused it), -errno. Never recorded: a serve that dies meanwhile
 * leaves it as its user had it. */
int sb_copy_hold(struct sandbox *sb);
void sb_copy_release(struct sandbox *sb);
const char *state_name(enum sb_state s);
/* Watches for the sandbox's end (its pidfd). */
void sb_arm_exit(struct sandbox *sb);
int sb_connect(struct sandbox *sb);
void sb_kill(struct sandbox *sb, const char *why);
void sb_finish(struct sandbox *sb);
/* Expiry and start deadlines, every tick. */
void sb_tick(struct ur_ticker *tk, uint64_t now);

/* Who waits for a pause's or a boot's end to hear of its resume (a list, in order). */
struct resume_wait {
	sandbox_paused_fn done;
	void *ctx;
	struct resume_wait *next;
};
/* Appends a waiter to *list: 0, or -ENOMEM. */
int resume_wait_add(struct resume_wait **list, sandbox_paused_fn done, void *ctx);

/* ---- sandbox_fork.c ---- */
void job_child_resolved(struct sb_job *job, struct sandbox *sb, bool ok, const char *why);
/* Boots sb, paused without its processes (sb->cold), afresh from its files, or waits
 * for its boot on its way (sandbox_booting_again); done(ctx, rc) once it runs, or with
 * -ECHILD once it failed to (it then stays as it was, and sb->fail_reason says why),
 * -EBUSY or -ENOMEM. */
void sb_boot_again(struct sandbox *sb, sandbox_paused_fn done, void *ctx);

#endif
