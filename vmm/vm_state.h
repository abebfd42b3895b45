/* KVM state of a paused VM: every vCPU's registers, system registers, FPU/XSAVE, XCRs,
 * debug registers, LAPIC, MSRs, MP state, pending events and CPUID, and the VM's PIC,
 * IOAPIC, PIT and kvmclock, to and from state file sections. Restore follows the order
 * KVM needs: CPUID before anything else on a vCPU, MP state and registers, sregs before
 * the LAPIC, the LAPIC before MSRs (TSC deadline), events last. */
#ifndef MITOS_VM_STATE_H
#define MITOS_VM_STATE_H

#include "../snapshot/state_file.h"
#include "kvm_vm.h"
#include "vcpu.h"

/* The MSRs this KVM lets us read on a vCPU: KVM_GET_MSR_INDEX_LIST plus the KVM
 * paravirtual range, without those that fail to read. Computed once per VM. */
struct msr_set {
	uint32_t n;
	uint32_t *index;
};

int vm_state_msr_set(struct kvm_vm *vm, const struct vcpu *v, struct msr_set *s,
		     struct mitos_err *e);
void vm_state_msr_set_free(struct msr_set *s);

/* vCPUs must be out of KVM_RUN (paused) for both. vcpus[i] is vCPU i: an array of
 * pointers, since the vCPUs live inside their callers' own per-thread structures. */
int vm_state_save(struct kvm_vm *vm, struct vcpu *const *vcpus, unsigned n,
		  const struct msr_set *msrs, struct state_writer *w, struct mitos_err *e);
int vm_state_restore(struct kvm_vm *vm, struct vcpu *const *vcpus, unsigned n,
		     const struct state_blob *b, struct mitos_err *e);

#endif
