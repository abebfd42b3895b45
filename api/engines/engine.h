/* How sandboxes are run. An engine starts a sandbox from a template (a root
 * filesystem: for now a directory) and, optionally, a parent's writable layer;
 * hands back where its agent listens; pauses, resumes and kills it; and removes
 * what it left on disk. The registry and the API layer never know which engine
 * runs underneath. */
#ifndef MITOS_API_ENGINE_H
#define MITOS_API_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "lib/error.h"

struct cJSON;
struct agent_conn;
struct net_policy;

struct engine_start {
	const char *id;
	const char *dir;           /* the sandbox's own directory in the state dir */
	const char *template_root; /* process: read-only lower layer; kvm: the template's dir */
	const char *copy_from;     /* what fork_source() gave for the parent, or NULL */
	bool copy_settled;         /* copy_from is a snapshot's: written and closed, not live */
	bool again;                /* dir holds its files from an earlier start (stop_keep_files) */
	pid_t copy_pid;            /* else the running parent's init (0: none), whose writes the copy must see */
	const struct cJSON *spec;  /* what template_spec() kept for the template, or NULL */
	int ready_fd;              /* gets one byte once the agent accepts connections */
	const struct net_policy *net; /* what it may reach; NULL: nothing (engine_ops.network) */
};

struct engine_proc {
	pid_t pid;                 /* the sandbox's init, as the host sees it */
	int pidfd;                 /* readable when it exits */
	uint64_t start_time;       /* /proc/PID/stat field 22: tells a reused pid apart */
	bool child;                /* ours to reap */
	void *priv;                /* the engine's own record of the sandbox (kvm), or NULL */
};

/* Runs on the event loop once a template build has ended: rc 0 or -errno, msg says why. */
typedef void (*engine_build_done_fn)(void *ctx, int rc, const char *msg);
typedef void (*engine_connected_fn)(void *ctx, int rc, const char *why);
typedef void (*engine_done_fn)(void *ctx, int rc);

struct engine_ops {
	const char *name;
	/* Non-zero: agent_socket is a VM's vsock host socket, reached with "CONNECT <port>". */
	uint32_t agent_vsock_port;
	/* Where the agent of a sandbox in dir listens (a Unix socket path). */
	int (*agent_socket)(const char *dir, char *out, size_t outlen);
	/* Where its writable layer is, for fork. */
	int (*writable_layer)(const char *dir, char *out, size_t outlen);
	int (*start)(const struct engine_start *s, struct engine_proc *p, struct mitos_err *e);
	/* Stop and restart every process of the sandbox in dir; neither waits. */
	int (*pause)(const char *dir, const struct engine_proc *p);
	int (*resume)(const char *dir, const struct engine_proc *p);
	/* Optional: the same without holding the loop (kvm: a VMM's answer); done runs
	 * later, on the loop, with 0 or -errno, unless this fails at once. Where NULL,
	 * pause() and resume() are quick enough to call on the loop. */
	int (*pause_async)(const char *dir, const struct engine_proc *p, bool pause, engine_done_fn done, void *ctx);
	/* SIGKILL to the sandbox in dir, paused or not. */
	int (*kill)(const char *dir, const struct engine_proc *p);
	/* After the sandbox exited: the reason it gave, if any (start errors). */
	void (*exit_reason)(const char *dir, char *out, size_t outlen);
	/* Removes dir and everything in it. */
	int (*cleanup)(const char *dir);
	/* Optional: after the sandbox in dir exited for a filesystem-only pause, gives back
	 * what only a running sandbox holds (process: its cgroup, uid range, network) and
	 * keeps its files, from which start() (the same dir, no copy_from) boots it afresh.
	 * NULL: the engine pauses its sandboxes with their memory only (kvm). */
	void (*stop_keep_files)(const char *dir);

	/* Optional hooks; NULL where an engine has nothing to do. */
	/* Sandboxes may be given a network (engine_start.net); NULL: never. */
	bool (*network)(void);
	/* Replaces what the running sandbox in dir may reach; done runs on the loop unless
	 * this fails at once (-ENOENT: it has no interface). */
	int (*network_update)(const char *dir, const struct net_policy *p, engine_done_fn done, void *ctx,
			      struct mitos_err *e);
	/* Whether sandboxes of the template in dir can be given one (kvm: it was built
	 * with a network device); NULL: all can. */
	bool (*template_network)(const char *dir);
	/* What the children of a fork of the running sandbox in dir start from (their
	 * engine_start.copy_from); replaces writable_layer() and pausing the parent. */
	int (*fork_source)(const char *dir, const struct engine_proc *p, char *out, size_t outlen,
			   struct mitos_err *e);
	/* Snapshots that outlive their sandbox (E2B's createSnapshot); all three or none.
	 * snapshot_take writes into out what sandboxes started from it get as copy_from
	 * (in snapdir, a new directory the engine may fill, or the engine's own: kvm, a
	 * layer); done runs on the loop once it is complete or failed, unless this fails
	 * at once. An engine without fork_source needs the sandbox paused until done. */
	int (*snapshot_take)(const char *dir, const struct engine_proc *p, const char *snapdir, char *out,
			     size_t outlen, engine_done_fn done, void *ctx, struct mitos_err *e);
	/* A complete snapshot's source is held from now on (at start: one a previous serve
	 * kept; -errno when it is gone) / no longer: its sandboxes may still use it. */
	int (*snapshot_keep)(const char *source);
	void (*snapshot_drop)(const char *source);
	/* On a new sandbox's first agent connection, before it counts as ready (kvm:
	 * post_fork). done runs once, on the loop, also when the connection dies first. */
	int (*after_connect)(struct engine_proc *p, struct agent_conn *ac, engine_connected_fn done, void *ctx);
	/* A sandbox a previous serve left running (p has pid, pidfd and start time):
	 * fills p->priv, or fails when it cannot be taken over. */
	int (*adopt)(const char *dir, struct engine_proc *p, struct mitos_err *e);
	/* After cleanup(): frees p->priv. */
	void (*release)(struct engine_proc *p);
	/* Templates the engine builds itself (kvm: boot, wait for the agent, snapshot):
	 * validates spec (the POST /v1/templates body) and starts building into dir;
	 * done runs later unless it fails at once. */
	int (*template_build)(const char *dir, const struct cJSON *spec, engine_build_done_fn done, void *ctx,
			      struct mitos_err *e);
	/* Engines whose templates are just records (process): checks spec (the POST
	 * /v1/templates body) and returns what the template keeps, its defaults filled in
	 * (resource limits); NULL with e filled when spec is invalid. */
	struct cJSON *(*template_spec)(const struct cJSON *spec, struct mitos_err *e);
	/* A template of this engine found in the state dir at start: still usable? */
	bool (*template_usable)(const char *dir);
	/* What a sandbox of the template in dir (spec as the template keeps it) gets: its
	 * CPUs and memory as the sandbox sees them (a VM: its vCPUs and RAM). */
	int (*template_shape)(const char *dir, const struct cJSON *spec, unsigned *cpus, unsigned *mem_mib);
	/* The event loop runs and every sandbox left by a previous serve was adopted. */
	void (*started)(void);
	/* Graceful stop: ends template builds and prepared VMs. */
	void (*shutdown)(void);
	/* After the loop: frees the engine's own state. */
	void (*exit)(void);
};

extern const struct engine_ops engine_process_ops;
extern const struct engine_ops engine_kvm_ops;

/* Checks that the process engine can run here: 0, or -errno with e saying why not. */
int engine_process_available(struct mitos_err *e);
/* Sets the mitos-agent binary and its run_code helper, and the paths sandboxes
 * must not see (the state dir, the token file); prints (into info) what resource
 * limits sandboxes get on this host. */
int engine_process_configure(const char *agent_path, const char *state_dir, const char *token_file,
			     char *info, size_t infolen, struct mitos_err *e);

/* The PID limit of a process-engine sandbox whose template names none (pids_max). */
#define ENGINE_PROCESS_PIDS_MAX 1024
void engine_process_set_pids_max(unsigned n);
/* The disk quota of a process-engine sandbox: its writable layer is an ext4 file system
 * of this many MiB (a sparse image on a loop device); 0: a directory of the state dir,
 * no quota. */
#define ENGINE_PROCESS_DISK_MIB 5120
void engine_process_set_disk_mib(unsigned n);
/* Each VM process under a uid of its own in a root of its own (api/engines/kvm_jail.h):
 * on by default where serve is root (off: --no-vm-jail). Before engine_kvm_configure. */
void engine_kvm_set_jail(bool on);
/* Checks that the kvm engine can run here (/dev/kvm): 0, or -errno with e saying why not. */
int engine_kvm_available(struct mitos_err *e);
/* The state dir and the number of prepared VMs kept per VM shape; emulated: KVM has no
 * hardware virtualization here (default templates boot the pvm kernel variant); prints
 * (into info) what the jail of each VM can and cannot do on this host. */
int engine_kvm_configure(const char *state_dir, unsigned pool_size, bool emulated, char *info, size_t infolen,
			 struct mitos_err *e);

/* A pidfd of the process pid that started at start_time, or -ESRCH: the pidfd is
 * taken first and the start time checked after, so a pid reused in between is never
 * the one signalled or adopted. */
int engine_pidfd_of(pid_t pid, uint64_t start_time);
/* Sends sig to p through its pidfd, or one taken by engine_pidfd_of: 0 or -ESRCH. */
int engine_proc_signal(const struct engine_proc *p, int sig);
/* What a sandbox's start wrote into dir/start-error ("" when nothing). */
void engine_start_error(const char *dir, char *out, size_t outlen);

#endif
