/* Where a guest spends its time, sampled: `mitos-vmm run --profile PATH` interrupts each
 * vCPU PROFILE_HZ times a second and appends one line per sample to PATH:
 *     <ms since the vCPUs started> <vcpu> <rip, hex> <kernel|user>
 * tools/guest-profile maps kernel RIPs to System.map symbols. On emulation-only KVM,
 * where every guest kernel instruction is emulated, this is how boot time is found. */
#ifndef MITOS_PROFILE_H
#define MITOS_PROFILE_H

#include <stdint.h>

#include "lib/error.h"
#include "vcpu.h"

#define PROFILE_HZ 100

struct profile {
	int fd;            /* -1 when not profiling */
	uint64_t start_ns; /* CLOCK_MONOTONIC origin of the timestamps */
};

int profile_open(struct profile *p, const char *path, struct mitos_err *e);
/* From v's own thread, while v is out of KVM_RUN. */
void profile_sample(const struct profile *p, struct vcpu *v, uint64_t now_ns);
void profile_close(struct profile *p);

#endif
