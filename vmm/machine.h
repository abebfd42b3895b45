/* A whole microVM: guest RAM, KVM VM and vCPU threads, the legacy devices, virtio
 * devices on virtio-mmio, and the device loop (libev) that serves them. */
#ifndef MITOS_MACHINE_H
#define MITOS_MACHINE_H

#include <stdbool.h>
#include <stdint.h>

#include "emulate.h"
#include "lib/error.h"
#include "../devices/virtio_blk.h"
#include "../devices/virtio_net.h"

#define MACHINE_MAX_DISKS 8
#define MACHINE_MAX_PHASES 16
#define MACHINE_DEFAULT_MEM_MIB 256
#define MACHINE_DEFAULT_CMDLINE \
	"console=ttyS0 reboot=k panic=1 pci=off nomodules i8042.noaux i8042.nomux i8042.dumbkbd"

struct machine_config {
	const char *kernel;
	const char *initrd;     /* NULL: none */
	const char *cmdline;    /* NULL: MACHINE_DEFAULT_CMDLINE */
	uint64_t mem_bytes;
	unsigned vcpus;
	unsigned ndisks;
	struct virtio_blk_opts disks[MACHINE_MAX_DISKS];
	const char *vsock_path; /* virtio-vsock host socket, NULL for none */
	uint32_t vsock_cid;
	bool has_net;           /* a virtio-net device on the TAP net.tap */
	struct virtio_net_opts net;
	int console_in;         /* guest serial input, -1 for none */
	int console_out;        /* guest serial output */
	uint64_t console_max;   /* console_out a file: bytes past which it restarts (0: no cap) */
	bool console_escape;    /* Ctrl-A x on console_in ends the VM (interactive terminals) */
	const char *control_path; /* JSON-lines control socket, NULL for none */
	bool start_paused;      /* vCPUs wait for a "resume" on the control socket */
	const char *profile_path; /* sample vCPU RIPs into this file (profile.h), NULL: no */
	const char *arm;        /* prepare(): the snapshot to arm with (machine_arm), NULL: none */
	int kvm_fd;             /* > 2: open on /dev/kvm already (a jailed VM process); 0: open it */
};

enum machine_end {
	MACHINE_END_POWEROFF,   /* guest powered off (KVM system event) */
	MACHINE_END_RESET,      /* guest rebooted: i8042 reset, triple-fault-free reset event */
	MACHINE_END_DEBUG_EXIT, /* test guest wrote its status to the debug-exit port */
	MACHINE_END_CRASH,      /* guest triple fault, emulation failure, KVM internal error */
	MACHINE_END_HOST,       /* the host asked: signal, Ctrl-A x */
	MACHINE_END_VMM_ERROR,  /* the VMM itself failed while running */
};

enum machine_exit_kind {
	MEXIT_IO, MEXIT_MMIO, MEXIT_HLT, MEXIT_SHUTDOWN, MEXIT_SYSTEM_EVENT,
	MEXIT_INTERNAL_ERROR, MEXIT_INTR, MEXIT_OTHER, MEXIT_KINDS
};

struct machine_result {
	enum machine_end how;
	int status;             /* debug-exit value, or signal number for MACHINE_END_HOST */
	char why[512];
	uint64_t run_start_ns;  /* CLOCK_MONOTONIC when the vCPUs were started */
	uint64_t first_exit_ns; /* CLOCK_MONOTONIC of the first exit of any vCPU: the guest's
				 * first instruction has run by then */
	uint64_t end_ns;
	uint64_t exits[MEXIT_KINDS];
	uint64_t emulated[EMULATE_KINDS]; /* instructions the VMM performed for KVM */
	/* Set-up phases in order, each with the CLOCK_MONOTONIC time it ended. */
	unsigned nphases;
	struct { const char *name; uint64_t end_ns; } phases[MACHINE_MAX_PHASES];
};

struct machine;

/* Boots c->kernel. */
int machine_create(struct machine **out, const struct machine_config *c, struct mitos_err *e);
/* Restores the snapshot in dir (and the layers under it): RAM is mapped MAP_PRIVATE from
 * the snapshot files, so children share every page they do not write. c gives RAM size
 * and vCPUs (which must match the snapshot's) and the devices (disk paths may differ). */
int machine_restore(struct machine **out, const char *dir, const struct machine_config *c,
		    struct mitos_err *e);
/* machine_restore() in two steps, so the first can run before anyone asks for a VM:
 * prepare() creates the VM, its vCPUs and RAM of c's shape (the expensive, snapshot-
 * independent part); load_snapshot() maps a snapshot into it and restores its state. */
int machine_prepare(struct machine **out, const struct machine_config *c, struct mitos_err *e);
int machine_load_snapshot(struct machine *m, const char *dir, const struct machine_config *c,
			  struct mitos_err *e);
struct snapshot_config;
/* Before any request, reads the snapshot in dir (config, chain, state) and maps its
 * memory into the prepared VM's RAM, so that load_snapshot() of the same dir does only
 * what is per child. A snapshot rewritten in between (its config.json another file) is
 * read again then; another dir replaces what was armed. */
int machine_arm(struct machine *m, const char *dir, struct mitos_err *e);
/* The config of the snapshot in dir (read now unless armed with it and still the
 * same); load_snapshot() of dir then uses what this read. Valid until load_snapshot(). */
const struct snapshot_config *machine_snapshot_config(struct machine *m, const char *dir, struct mitos_err *e);
/* The machine a snapshot needs, with c's overrides for disks (overridden[i]) and its
 * vsock path: refuses to share a read-write disk, and a disk of another size. */
int machine_config_from_snapshot(const struct snapshot_config *sc, struct machine_config *c,
				 const bool *overridden, struct mitos_err *e);
/* Runs the guest until it ends; the device loop runs on the calling thread. */
int machine_run(struct machine *m, struct machine_result *r, struct mitos_err *e);
void machine_destroy(struct machine *m);
/* A guest is in RAM (booted, or restored into a prepared VM): its devices exist. */
bool machine_loaded(const struct machine *m);

const char *machine_exit_kind_name(enum machine_exit_kind k);

/* Device loop thread only. pause() returns once every vCPU is out of KVM_RUN with its
 * pending I/O completed; snapshot() pauses, writes dir, and resumes if it paused. */
int machine_pause(struct machine *m);
void machine_resume(struct machine *m);
bool machine_paused(const struct machine *m);
int machine_snapshot(struct machine *m, const char *dir, struct mitos_err *e);

#endif
