#include "kvm_vm.h"
#include "lib/layout.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define KVM_MAX_CPUID_ENTRIES 256

static const struct { int cap; const char *name; } required_caps[] = {
	{ KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP" },
	{ KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY" },
	{ KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR" },
	{ KVM_CAP_PIT2, "KVM_CAP_PIT2" },
	{ KVM_CAP_IRQFD, "KVM_CAP_IRQFD" },
	{ KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD" },
	{ KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID" },
	{ KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT" },
};

static int get_supported_cpuid(struct kvm_vm *vm, struct mitos_err *e)
{
	size_t sz = sizeof(struct kvm_cpuid2) + KVM_MAX_CPUID_ENTRIES * sizeof(struct kvm_cpuid_entry2);
	struct kvm_cpuid2 *c = calloc(1, sz);
	if (!c)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	c->nent = KVM_MAX_CPUID_ENTRIES;
	if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) < 0) {
		int r = -errno;
		free(c);
		return mitos_err_set(e, r, "KVM_GET_SUPPORTED_CPUID: %s", strerror(-r));
	}
	vm->supported_cpuid = c;
	return 0;
}

#define CPUID_1_ECX_TSC_DEADLINE (1U << 24)

/* KVM's in-kernel LAPIC has emulated the TSC-deadline timer on every host since Linux
 * 3.2, but KVM_GET_SUPPORTED_CPUID reports it only from 6.15 on: userspace is meant to
 * add it on KVM_CAP_TSC_DEADLINE_TIMER (QEMU does). Without the bit KVM also refuses
 * the LVT timer's TSC-deadline mode: guests are left the one-shot timer, and a guest
 * that arms the deadline MSR anyway gets no interrupt. */
static void add_tsc_deadline(struct kvm_vm *vm)
{
	if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER) <= 0)
		return;
	for (uint32_t i = 0; i < vm->supported_cpuid->nent; i++)
		if (vm->supported_cpuid->entries[i].function == 1)
			vm->supported_cpuid->entries[i].ecx |= CPUID_1_ECX_TSC_DEADLINE;
}

static int get_msr_index_list(struct kvm_vm *vm, struct mitos_err *e)
{
	struct kvm_msr_list probe = { .nmsrs = 0 };
	/* The first call fails with E2BIG and tells how many there are. */
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
		return mitos_err_set(e, -errno, "KVM_GET_MSR_INDEX_LIST: %s", strerror(errno));
	struct kvm_msr_list *l = calloc(1, sizeof(*l) + probe.nmsrs * sizeof(uint32_t));
	if (!l)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	l->nmsrs = probe.nmsrs;
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, l) < 0) {
		int r = -errno;
		free(l);
		return mitos_err_set(e, r, "KVM_GET_MSR_INDEX_LIST: %s", strerror(-r));
	}
	vm->msr_index_list = l;
	return 0;
}

int kvm_vm_has_msr(const struct kvm_vm *vm, uint32_t index)
{
	for (uint32_t i = 0; vm->msr_index_list && i < vm->msr_index_list->nmsrs; i++)
		if (vm->msr_index_list->indices[i] == index)
			return 1;
	return 0;
}

const char *kvm_device_path(void)
{
	const char *dev = getenv("MITOS_KVM_DEVICE");
	return dev && *dev ? dev : "/dev/kvm";
}

/* Three hosts without /dev/kvm look alike from open() alone. */
static const char *no_kvm_hint(char *buf, size_t n)
{
	unsigned maj, min;
	FILE *f = fopen("/sys/class/misc/kvm/dev", "re");
	int got = f ? fscanf(f, "%u:%u", &maj, &min) : 0;
	if (f)
		fclose(f);
	if (got == 2)
		snprintf(buf, n, "the kernel has KVM (device %u:%u) but this file system has no node for it: "
			 "`mknod /dev/kvm c %u %u`, or pass /dev/kvm into this container", maj, min, maj, min);
	else if (access("/sys/module/kvm", F_OK) == 0)
		snprintf(buf, n, "the kvm module is loaded but no vendor module registered /dev/kvm: "
			 "see `dmesg | grep -i kvm`; in a virtual machine, its hypervisor must offer "
			 "nested virtualization");
	else
		snprintf(buf, n, "this host has no KVM: load kvm_intel or kvm_amd, or run on a machine "
			 "with hardware virtualization");
	return buf;
}

const char *kvm_open_hint(int err, char *buf, size_t n)
{
	return err == ENOENT ? no_kvm_hint(buf, n) :
	       err == EACCES ? "run as root or add your user to the kvm group" : "see `mitos-vmm check`";
}

static int open_kvm(struct kvm_vm *vm, int kvm_fd, struct mitos_err *e)
{
	const char *dev = kvm_device_path();
	if (kvm_fd > 0) {
		/* Handed over by whoever started us (serve's jail): we may not open it. */
		dev = "the --kvm-fd descriptor";
		vm->kvm_fd = kvm_fd;
		fcntl(kvm_fd, F_SETFD, FD_CLOEXEC);
	} else {
		vm->kvm_fd = open(dev, O_RDWR | O_CLOEXEC);
	}
	if (vm->kvm_fd < 0) {
		int r = -errno;
		char hint[256];
		return mitos_err_set(e, r, "cannot open %s: %s (%s)", dev, strerror(-r),
				     kvm_open_hint(-r, hint, sizeof(hint)));
	}
	int v = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (v != KVM_API_VERSION)
		return mitos_err_set(e, -ENOTSUP, "%s: KVM API version %d, need %d", dev, v,
				     KVM_API_VERSION);
	for (size_t i = 0; i < sizeof(required_caps) / sizeof(required_caps[0]); i++)
		if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, required_caps[i].cap) <= 0)
			return mitos_err_set(e, -ENOTSUP, "%s lacks %s, which mitos-vmm needs", dev,
					     required_caps[i].name);
	vm->vcpu_mmap_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (vm->vcpu_mmap_size <= 0)
		return mitos_err_set(e, -errno, "KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
	return 0;
}

int kvm_vm_create(struct kvm_vm *vm, int kvm_fd, struct mitos_err *e)
{
	memset(vm, 0, sizeof(*vm));
	vm->kvm_fd = vm->vm_fd = -1;
	int r = open_kvm(vm, kvm_fd, e);
	if (r)
		goto fail;
	/* KVM_CREATE_VM can fail with EINTR when a signal arrives; it is safe to retry. */
	do
		vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	while (vm->vm_fd < 0 && errno == EINTR);
	if (vm->vm_fd < 0) {
		r = mitos_err_set(e, -errno, "KVM_CREATE_VM: %s", strerror(errno));
		goto fail;
	}
	uint64_t idmap = LAYOUT_KVM_IDMAP_GPA;
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)LAYOUT_KVM_TSS_GPA) < 0 ||
	    ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0) {
		r = mitos_err_set(e, -errno, "KVM_SET_TSS_ADDR/IDENTITY_MAP_ADDR: %s", strerror(errno));
		goto fail;
	}
	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
		r = mitos_err_set(e, -errno, "KVM_CREATE_IRQCHIP: %s", strerror(errno));
		goto fail;
	}
	/* The dummy speaker port keeps port 0x61 in the kernel, where Linux polls it while
	 * calibrating against the PIT. */
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0) {
		r = mitos_err_set(e, -errno, "KVM_CREATE_PIT2: %s", strerror(errno));
		goto fail;
	}
	if ((r = get_supported_cpuid(vm, e)) || (r = get_msr_index_list(vm, e)))
		goto fail;
	add_tsc_deadline(vm);
	return 0;
fail:
	kvm_vm_destroy(vm);
	return r;
}

void kvm_vm_destroy(struct kvm_vm *vm)
{
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	free(vm->supported_cpuid);
	free(vm->msr_index_list);
	vm->vm_fd = vm->kvm_fd = -1;
	vm->supported_cpuid = NULL;
	vm->msr_index_list = NULL;
}

int kvm_vm_map_memory(struct kvm_vm *vm, const struct guest_mem *m, struct mitos_err *e)
{
	for (unsigned i = 0; i < m->nregions; i++) {
		struct kvm_userspace_memory_region r = {
			.slot = i,
			.guest_phys_addr = m->regions[i].gpa,
			.memory_size = m->regions[i].size,
			.userspace_addr = (uintptr_t)m->regions[i].host,
		};
		if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
			return mitos_err_set(e, -errno, "KVM_SET_USER_MEMORY_REGION slot %u: %s", i,
					     strerror(errno));
	}
	return 0;
}

int kvm_vm_irqfd(struct kvm_vm *vm, unsigned gsi, int *fd_out)
{
	int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct kvm_irqfd irqfd = { .fd = (uint32_t)fd, .gsi = gsi };
	if (ioctl(vm->vm_fd, KVM_IRQFD, &irqfd) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	*fd_out = fd;
	return 0;
}

int kvm_vm_ioeventfd(struct kvm_vm *vm, uint64_t addr, unsigned len, uint64_t datamatch,
		     int *fd_out)
{
	int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct kvm_ioeventfd io = {
		.datamatch = datamatch, .addr = addr, .len = len, .fd = fd,
		.flags = KVM_IOEVENTFD_FLAG_DATAMATCH,
	};
	if (ioctl(vm->vm_fd, KVM_IOEVENTFD, &io) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	*fd_out = fd;
	return 0;
}

int kvm_vm_irq_line(struct kvm_vm *vm, unsigned irq, int level)
{
	struct kvm_irq_level l = { .irq = irq, .level = level };
	return ioctl(vm->vm_fd, KVM_IRQ_LINE, &l) < 0 ? -errno : 0;
}
