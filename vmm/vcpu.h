/* Per-vCPU KVM set-up: CPUID with this vCPU's APIC id and the VM's topology, MSR
 * defaults, LAPIC LINT0/LINT1, and the 64-bit register state the boot CPU starts in. */
#ifndef MITOS_VCPU_H
#define MITOS_VCPU_H

#include <linux/kvm.h>
#include <stdint.h>

#include "lib/error.h"
#include "kvm_vm.h"

/* Set to 0 at boot (vcpu.c); left out of a restore's MSR write (vm_state.c). */
#define MSR_IA32_TSC 0x10

struct vcpu {
	unsigned id;
	int fd;
	struct kvm_run *run;  /* shared page of KVM_RUN exit data */
};

int vcpu_create(struct kvm_vm *vm, unsigned id, unsigned ncpus, struct vcpu *v,
		struct mitos_err *e);
void vcpu_destroy(struct kvm_vm *vm, struct vcpu *v);

/* The boot CPU's registers for the 64-bit Linux boot protocol: RIP at the kernel entry,
 * RSI at the zero page, long mode with the boot GDT and identity page tables. */
int vcpu_set_boot_state(struct vcpu *v, uint64_t entry, struct mitos_err *e);

/* Fills `cpuid` (a copy of the supported table, with room for `capacity` entries) for
 * vCPU `id` of `ncpus`: its APIC ids, and a topology of one package of ncpus
 * single-thread cores (leaves 1, 4, 0xb, 0x1f, 0x80000008, 0x8000001e), adding the
 * topology subleaves the table lacks. Exposed for the unit tests. */
void vcpu_cpuid_adjust(struct kvm_cpuid2 *cpuid, uint32_t capacity, unsigned id, unsigned ncpus);

/* Reads up to 15 instruction bytes at the vCPU's RIP through KVM_TRANSLATE; returns how
 * many could be read, or -errno. */
int vcpu_read_insn(struct vcpu *v, const struct guest_mem *m, uint64_t *rip, uint8_t *buf);

#endif
