/* A whole microVM: guest RAM, KVM VM and vCPU threads, the legacy devices, virtio
 * devices on virtio-mmio, and the device loop (libev) that serves them. */
#ifndef MITOS_MACHINE_H
#define MITOS_MACHINE_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "../devices/virtio_blk.h"

#define MACHINE_MAX_DISKS 8
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
	int console_in;         /* guest serial input, -1 for none */
	int console_out;        /* guest serial output */
	bool console_escape;    /* Ctrl-A x on console_in ends the VM (interactive terminals) */
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
};

struct machine;

int machine_create(struct machine **out, const struct machine_config *c, struct mitos_err *e);
/* Runs the guest until it ends; the device loop runs on the calling thread. */
int machine_run(struct machine *m, struct machine_result *r, struct mitos_err *e);
void machine_destroy(struct machine *m);

const char *machine_exit_kind_name(enum machine_exit_kind k);

#endif
