/* What the kvm engine's files share (engine_kvm.c: sandboxes, start-up; kvm_layers.c:
 * layers and writing one; kvm_proc.c: one mitos-vmm process, the worker threads and
 * what they ask a VM; kvm_pool.c: prepared VMs; kvm_build.c: templates; kvm_jail.c:
 * the jail of each VM). One state, K, owned by the event loop except where a comment
 * says otherwise. */
#ifndef MITOS_API_KVM_INTERNAL_H
#define MITOS_API_KVM_INTERNAL_H

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "api/engines/cgroup.h"
#include "api/engines/engine.h"
#include "api/engines/kvm_jail.h"
#include "lib/pidfd.h"
#include "api/engines/teardown.h"
#include "api/http/uring.h"
#include "vmm/control.h"
#include "vmm/control_proto.h"

#define AGENT_PORT 52
/* Workers per lane: restores (short) never wait behind template builds (long: up to a
 * boot timeout each), nor behind calls into running VMs (vm: fork snapshots, pause and
 * resume), which a VM that does not answer, as an escaped VMM may not, holds for their
 * timeout (up to two minutes): one tenant cannot stall another's starts. */
#define WORKERS_SHORT 4
#define WORKERS_LONG 4
#define WORKERS_VM 4
#define PLEN 512                     /* every path the engine builds */
#define MAX_SHAPES 16
#define MAX_POOL 64
#define CTL_TIMEOUT_MS 5000          /* pause, resume, stop: the VMM answers at once */
#define RESTORE_TIMEOUT_MS 30000
#define SNAPSHOT_TIMEOUT_MS 120000
#define PREPARE_TIMEOUT_MS 15000     /* a prepared VM's control socket must appear by then */
#define BOOT_TIMEOUT_DEFAULT_S 120
#define MEM_OVERHEAD_MIB 128         /* the VMM's own memory above guest RAM, for memory.max */
#define SPAWN_PER_TICK 2             /* pool refills per 100 ms tick: the loop stays responsive */
#define SOCK_MAX 107                 /* sun_path, less the NUL */
#define CONSOLE_MAX_MIB "8"          /* a guest's console log restarts past this (disk use) */
/* Tasks of one VM process: its vCPUs, device loop and io_uring workers (up to a few
 * hundred with eight busy disks) fit; a VMM taken over cannot exhaust the host's PIDs. */
#define VM_PIDS_MAX 2048

struct vm_shape {
	unsigned mem_mib, vcpus;
	struct cg_limits lim;
};

/* One mitos-vmm process. */
struct vm_proc {
	pid_t pid;
	int pidfd;
	uint64_t start_time;
	struct cg_set cg;      /* removed after it exits */
};

struct pool_vm {
	struct vm_proc p;
	char dir[PLEN];
	struct pool_vm *next;
};

struct shape_pool {
	bool used;
	struct vm_shape sh;
	/* The template snapshot of this shape that was last built or forked: VMs spawned
	 * for the pool are armed with it (read and mapped ahead), "" for none. */
	char arm[PLEN];
	struct pool_vm *idle;
	unsigned nidle, fails;
	uint64_t retry_at_ms;
};

struct kvm_layer {
	unsigned refs;            /* loop thread only */
	unsigned kept;            /* of refs, the snapshots' that outlive serve: on disk at exit */
	struct kvm_layer *parent; /* NULL when the parent is a template's snapshot */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int state;                /* 1 being written, 0 ready, -errno failed */
	struct mitos_err err;     /* why it failed */
	char dir[PLEN];
	struct kvm_layer *next;
};

/* p->priv of a sandbox. */
struct kvm_sb {
	char dir[PLEN];
	struct kvm_layer *base;
};

struct kjob {
	void (*run)(struct kjob *j);      /* on a worker */
	void (*complete)(struct kjob *j); /* on the loop; frees the job */
	struct kjob *next;
};

enum kvm_lane { LANE_SHORT, LANE_LONG, LANE_VM, LANES };

struct kvm_queue {
	struct kjob *head, *tail;
	pthread_cond_t cv;
};

struct build;

struct kvm_state {
	bool configured;
	char state[PLEN], pool_dir[PLEN], layer_dir[PLEN];
	int vmm_fd;
	unsigned pool_size;
	bool ns;                          /* namespaces: needs root */
	bool jail;                        /* each VM under its own uid in its own root (kvm_jail.h) */
	int kvm_fd;                       /* /dev/kvm, handed to jailed VMs */
	unsigned serial;
	_Atomic bool stopping;
	struct shape_pool pools[MAX_SHAPES];
	struct kvm_layer *layers;
	struct ur_ticker ticker;
	struct ur_kick refill;
	/* workers */
	pthread_t th[WORKERS_SHORT + WORKERS_LONG + WORKERS_VM];
	unsigned nth;
	pthread_mutex_t mu;
	struct kvm_queue lanes[LANES];
	struct kjob *d_head, *d_tail;     /* done, for the loop */
	int efd;
	uint64_t ebuf;
	struct uop eop;
	bool earmed;
	struct build *builds;
};

extern struct kvm_state K;

/* ---- kvm_proc.c ---- */
int kvm_pathf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool kvm_is_socket(const char *path);
void kvm_console_tail(const char *path, char *out, size_t outlen);
void kvm_write_error_file(const char *dir, const char *msg);
/* Starts argv (mitos-vmm SUBCOMMAND ...) jailed, its console and messages going to
 * console; with jail (K.jail), under the jail's uid in its own root, /dev/kvm handed
 * over as --kvm-fd 4. disk_fd (or -1) becomes the VM's VM_DISK_FD, which argv names
 * (--disk PATH,ro,fd=5), tap_fd (or -1) its VM_TAP_FD (--net fd=6). */
/* The template in tdir was built with a network device (serve --egress). */
bool kvm_template_net(const char *tdir);
#define VM_DISK_FD 5
#define VM_TAP_FD 6
#define VM_TAP_FD_STR "6"
int kvm_vm_spawn(char *const argv[], const char *console, const char *name, const struct vm_shape *sh,
		 const struct jail *jail, int disk_fd, int tap_fd, struct vm_proc *vp, struct mitos_err *e);
void kvm_vm_reap(struct vm_proc *vp);
/* The same, but only the kill now: the wait (as long as the kernel takes to free the
 * VM's memory) and the cgroups' removal on the teardown thread. */
void kvm_vm_reap_later(struct vm_proc *vp);
int kvm_vm_record(const char *dir, const struct vm_proc *vp, const char *base, const struct vm_shape *sh);
void kvm_vm_record_kill(const char *dir);
/* Starts the workers of both lanes; false when a thread could not be made. */
bool kvm_workers_start(void);
/* With K.stopping set: idle workers leave, busy ones after their job (queued jobs
 * still run); join waits for all of them. */
void kvm_workers_wake(void);
void kvm_workers_join(void);
void kvm_submit(struct kjob *j, enum kvm_lane lane);
void kvm_run_completions(void);
void kvm_arm_efd(void);
int kvm_ctl_request(const char *sock, const struct ctl_request *req, const struct control_fds *fds,
		    int timeout_ms, int wait_ms, int pidfd, struct mitos_err *e);
int kvm_agent_health(const char *vsock, int timeout_ms, struct mitos_err *e);
int kvm_guest_warm(const char *vsock, const char *cmd, int timeout_ms, struct mitos_err *e);
int kvm_guest_warm_code(const char *vsock, int timeout_ms, struct mitos_err *e);

/* ---- kvm_layers.c ---- */
struct kvm_layer *kvm_layer_find(const char *dir);
/* Whether dir is in STATE/kvm/layers (a layer, not a template's snapshot). */
bool kvm_in_layer_dir(const char *dir);
/* One reference less; the last one removes the layer, then its parent's reference. */
void kvm_layer_unref(struct kvm_layer *l);
/* A layer found on disk (a re-adopted sandbox restored from it): one more reference,
 * its parent layers linked in as well. NULL if dir is not a layer. */
struct kvm_layer *kvm_layer_adopt(const char *dir, unsigned depth);
/* Waits (a worker) until the layer is written: 0, or -errno with e. */
int kvm_layer_wait(struct kvm_layer *l, struct mitos_err *e);
/* The engine's fork_source: a new layer of the running sandbox p, written by a job. */
int kvm_fork_source(const char *dir, const struct engine_proc *p, char *out, size_t outlen, struct mitos_err *e);
/* engine_ops' snapshot hooks: a snapshot is a layer it holds. */
int kvm_snapshot_take(const char *dir, const struct engine_proc *p, const char *snapdir, char *out, size_t outlen,
		      engine_done_fn done, void *ctx, struct mitos_err *e);
int kvm_snapshot_keep(const char *source);
void kvm_snapshot_drop(const char *source);
/* At exit: frees every layer, removing those no snapshot holds. */
void kvm_layers_exit(void);

/* ---- kvm_pool.c ---- */
struct shape_pool *kvm_pool_for(const struct vm_shape *sh, bool add);
/* The pool of sh (made if need be) arms its next VMs with snapshot. */
void kvm_pool_arm(const struct vm_shape *sh, const char *snapshot);
void kvm_pool_drop(struct shape_pool *sp, struct pool_vm *pv);
void kvm_pool_fill(void);
void kvm_refill_kick(struct ur_kick *k);
void kvm_pool_tick(struct ur_ticker *t, uint64_t now);
/* vmdir: with K.jail, the directory the VM was started in (its control socket, console
 * and vsock are in kvm_vm_files(vmdir), claimed into sbdir by the restore, which
 * then removes vmdir); "" otherwise. */
int kvm_vm_take(const struct vm_shape *sh, const char *sbdir, struct vm_proc *vp, char *vmdir, struct mitos_err *e);
/* Where the VM process of dir (a pool VM's, a sandbox's being restored, a template
 * build's) makes its files: dir/vm, its own, with K.jail; dir otherwise. dir itself
 * (its vm.json, the sandbox's record) stays serve's. */
int kvm_vm_files(const char *dir, char *out);
/* With K.jail: makes dir/vm, a new jail j whose uid owns it and which holds it. */
int kvm_jail_prepare(const char *dir, struct jail *j, struct mitos_err *e);

/* ---- kvm_build.c ---- */
/* A template's kvm.json: its VM shape, root disk and (net, may be NULL) whether it
 * was built with a network device. */
int kvm_shape_read(const char *tdir, struct vm_shape *sh, char *rootfs, size_t rootfslen, bool *net);
int kvm_template_build(const char *dir, const cJSON *spec, engine_build_done_fn done, void *ctx,
			      struct mitos_err *e);
bool kvm_template_usable(const char *dir);
int kvm_template_shape(const char *dir, const cJSON *spec, unsigned *cpus, unsigned *mem_mib);
void kvm_builds_kill(void);
/* Whether dir is a template build in flight. */
bool kvm_building(const char *dir);

/* ---- kvm_share.c ---- */
/* What makes two builds alike, from kvm.json, the engine's spec and the warm-up
 * (TEMPLATE_HASH_HEX bytes; "" and -ENOMEM when it could not be made whole). */
int kvm_build_key(const cJSON *kvm, const cJSON *spec, const char *warm, char *out);
/* A finished template beside dir whose kvm.json has build_key key: its directory
 * into donor (on the loop: a scan of the templates' kvm.json). */
bool kvm_share_donor(const char *dir, const char *key, char *donor, size_t n);
/* to (a new directory) gets hard links of the snapshot from's files, sealed as a
 * build's own snapshot is (on a worker). */
int kvm_share_link(const char *from, const char *to, struct mitos_err *e);

#endif
