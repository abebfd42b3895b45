/* What the parts of one VM share: machine.c (assembly, vCPU threads, the run loop,
 * devices' plumbing, the console), machine_snapshot.c (pause, snapshot, arm and
 * restore) and machine_control.c (the control socket's commands). Private to vmm/. */
#ifndef MITOS_MACHINE_INTERNAL_H
#define MITOS_MACHINE_INTERNAL_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/stat.h>

#include "control.h"
#include "emulate.h"
#include "io_bus.h"
#include "kvm_vm.h"
#include "lib/layout.h"
#include "machine.h"
#include "profile.h"
#include "vcpu.h"
#include "vm_state.h"
#include "../devices/i8042.h"
#include "../devices/serial.h"
#include "../devices/virtio_mmio.h"
#include "../snapshot/snapshot_config.h"
#include "../snapshot/state_file.h"

#define MAX_HOST_FDS 4

struct machine;

struct vcpu_thread {
	struct machine *m;
	struct vcpu vcpu;
	pthread_t thread;
	bool started;
	atomic_bool sample_due; /* --profile: record RIP before the next KVM_RUN */
};

struct virtio_slot {
	struct virtio_device *dev;
	struct machine *m;
	ev_io notify[VIRTIO_MAX_QUEUES];
	ev_io host[MAX_HOST_FDS];
	unsigned nhost;
};

struct machine {
	struct machine_config cfg;
	struct kvm_vm vm;
	struct guest_mem mem;
	unsigned nvcpus;
	struct vcpu_thread vcpus[LAYOUT_MAX_VCPUS];
	struct io_bus pio, mmio;
	struct serial *serial;
	struct i8042 i8042;
	unsigned ndevs;
	struct virtio_slot devs[LAYOUT_VIRTIO_MAX_DEVICES];
	bool emulation_only;
	struct profile profile;
	ev_timer profile_timer;

	struct ev_loop *loop;
	ev_async stop_async;
	ev_io console_io;
	ev_timer console_retry;
	ev_signal sigint, sigterm;
	uint8_t console_pending[256];
	size_t console_npending;
	bool console_escape_seen;

	atomic_bool stopping;
	/* Pausing: vCPU threads park on `parked_cond` while pause_requested is set. */
	pthread_mutex_t pause_lock;
	pthread_cond_t pause_cond;
	bool pause_requested;
	unsigned nparked;
	bool paused;
	struct control_server *control;
	/* Set when RAM is mapped from snapshot files: the directory it came from, which a
	 * later snapshot of this VM names as its parent. */
	char *snapshot_parent;
	unsigned snapshot_depth;
	/* What a restore reads before it changes the VM, read (and RAM mapped) ahead of
	 * the request when the VM is armed, so a fork does only what is per child. */
	struct snapshot_read {
		char *dir;                /* NULL: nothing read */
		struct stat cfg;          /* its config.json then: rewritten since, it is read again */
		struct snapshot_config sc;
		char **chain;             /* base .. dir */
		unsigned depth;
		struct state_blob state;
		bool mapped;              /* RAM holds the chain's memory */
	} ahead;
	struct msr_set msrs;
	char cmdline[LAYOUT_CMDLINE_MAX];
	bool loaded;            /* a guest is in RAM: booted, or restored into a prepared VM */
	struct virtio_device *net; /* the network device, if any (link state control) */
	/* Strings the machine keeps for its config (paths that came in control requests). */
	char *kept[MACHINE_MAX_DISKS + 2];   /* disks, vsock socket, TAP name */
	unsigned nkept;
	atomic_uint_fast64_t first_exit_ns;
	atomic_uint_fast64_t exits[MEXIT_KINDS];
	atomic_uint_fast64_t emulated[EMULATE_KINDS];
	pthread_mutex_t result_lock;
	struct machine_result result;
};

/* ---- machine.c ---- */
/* Marks the end of a set-up phase, for --stats and the fork benchmark. */
void machine_phase(struct machine *m, const char *name);
/* Ends the VM once: the first reason wins. Safe from any thread. */
void machine_stop(struct machine *m, enum machine_end how, int status, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* A copy of s that lives as long as the machine (NULL when out of room or memory: the
 * callers' paths then stay NULL and device creation reports it). */
const char *machine_keep(struct machine *m, const char *s);
int machine_build_cmdline(struct machine *m, struct mitos_err *e);
/* Devices in a fixed order (disks, then the rest) so a restored machine's device i is
 * the snapshotted machine's device i. */
int machine_setup_virtio(struct machine *m, struct mitos_err *e);
int machine_start_vcpus(struct machine *m, struct mitos_err *e);

/* ---- machine_snapshot.c ---- */
/* Forgets what was read ahead (machine_arm); the RAM it mapped stays the machine's. */
void machine_ahead_drop(struct snapshot_read *a);

/* ---- machine_control.c ---- */
/* The control socket's handler (control_server_start): one request, its reply. */
cJSON *machine_control_handle(void *ctx, const cJSON *json, const struct control_fds *fds);

#endif
