/* One KVM virtual machine: the /dev/kvm and VM fds, the in-kernel interrupt controllers
 * and PIT, guest RAM memslots, and the eventfd plumbing devices use (irqfd, ioeventfd). */
#ifndef MITOS_KVM_VM_H
#define MITOS_KVM_VM_H

#include <linux/kvm.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/error.h"
#include "lib/guest_mem.h"

struct kvm_vm {
	int kvm_fd;
	int vm_fd;
	int vcpu_mmap_size;
	struct kvm_cpuid2 *supported_cpuid;  /* KVM_GET_SUPPORTED_CPUID, owned */
	struct kvm_msr_list *msr_index_list; /* KVM_GET_MSR_INDEX_LIST, owned */
	bool emulation_only;  /* the host runs guest kernel code in KVM's emulator */
};

/* The KVM device: $MITOS_KVM_DEVICE, or /dev/kvm. */
const char *kvm_device_path(void);
/* What a user does when opening it failed with errno err (composed into buf when
 * need be). */
const char *kvm_open_hint(int err, char *buf, size_t n);

/* Opens kvm_device_path() (kvm_fd > 0: takes that descriptor, open on it,
 * instead), checks the API version and the capabilities the VMM relies on, and creates
 * a VM with TSS, identity map, IOAPIC/PIC and PIT. */
int kvm_vm_create(struct kvm_vm *vm, int kvm_fd, struct mitos_err *e);
void kvm_vm_destroy(struct kvm_vm *vm);

/* One memslot per guest_mem region. */
int kvm_vm_map_memory(struct kvm_vm *vm, const struct guest_mem *m, struct mitos_err *e);

/* An eventfd that raises `gsi` when written (KVM_IRQFD). */
int kvm_vm_irqfd(struct kvm_vm *vm, unsigned gsi, int *fd_out);
/* An eventfd that KVM signals when the guest writes `datamatch` (len bytes) at MMIO addr,
 * without leaving the kernel (KVM_IOEVENTFD). */
int kvm_vm_ioeventfd(struct kvm_vm *vm, uint64_t addr, unsigned len, uint64_t datamatch,
		     int *fd_out);
/* Drives an interrupt line directly (KVM_IRQ_LINE), for devices with level semantics. */
int kvm_vm_irq_line(struct kvm_vm *vm, unsigned irq, int level);

/* Whether an MSR index is in KVM_GET_MSR_INDEX_LIST. */
int kvm_vm_has_msr(const struct kvm_vm *vm, uint32_t index);

#endif
