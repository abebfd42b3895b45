#include "vcpu.h"
#include "boot.h"
#include "lib/layout.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define CPUID_1_ECX_HYPERVISOR  (1U << 31)
#define CPUID_1_EDX_HTT         (1U << 28)
#define CPUID_LEAF_TOPOLOGY     0xb
#define CPUID_LEAF_TOPOLOGY_V2  0x1f
#define CPUID_LEAF_CACHE        0x4
#define CPUID_AMD_SIZES         0x80000008
#define CPUID_AMD_TOPOLOGY      0x8000001e
/* Room for the topology subleaves a host's table may lack. */
#define CPUID_EXTRA_ENTRIES     8

#define APIC_LVT0          0x350
#define APIC_LVT1          0x360
#define APIC_MODE_NMI      0x4
#define APIC_MODE_EXTINT   0x7

#define MSR_IA32_SYSENTER_CS    0x174
#define MSR_IA32_SYSENTER_ESP   0x175
#define MSR_IA32_SYSENTER_EIP   0x176
#define MSR_IA32_MISC_ENABLE    0x1a0
#define MSR_MTRR_DEF_TYPE       0x2ff
#define MSR_STAR                0xc0000081
#define MSR_LSTAR               0xc0000082
#define MSR_CSTAR               0xc0000083
#define MSR_SYSCALL_MASK        0xc0000084
#define MSR_KERNEL_GS_BASE      0xc0000102

#define MISC_ENABLE_FAST_STRING 1ULL
#define MTRR_ENABLE_WB          ((1ULL << 11) | 6)

#define X86_CR0_PE  0x1ULL
#define X86_CR0_PG  0x80000000ULL
#define X86_CR4_PAE 0x20ULL
#define EFER_LME    0x100ULL
#define EFER_LMA    0x400ULL

static unsigned bits_for(unsigned n)
{
	unsigned b = 0;
	while ((1U << b) < n)
		b++;
	return b;
}

/* The entry (fn, index), appended (zeroed, with the flags of its leaf's other
 * entries) when missing and there is room; NULL otherwise. */
static struct kvm_cpuid_entry2 *cpuid_subleaf(struct kvm_cpuid2 *c, uint32_t capacity,
					      uint32_t fn, uint32_t index)
{
	struct kvm_cpuid_entry2 *leaf = NULL;
	for (uint32_t i = 0; i < c->nent; i++) {
		if (c->entries[i].function != fn)
			continue;
		if (c->entries[i].index == index)
			return &c->entries[i];
		leaf = &c->entries[i];
	}
	if (!leaf || c->nent == capacity)
		return NULL;
	struct kvm_cpuid_entry2 *e = &c->entries[c->nent++];
	*e = (struct kvm_cpuid_entry2){ .function = fn, .index = index, .flags = leaf->flags };
	return e;
}

/* Leaf 0xb (and 0x1f): an SMT level of one thread and a core level of ncpus cores, so
 * every vCPU is a core of one package; then the terminating invalid level. */
static void cpuid_topology_leaf(struct kvm_cpuid2 *c, uint32_t capacity, uint32_t fn,
				unsigned id, unsigned ncpus)
{
	for (uint32_t level = 0; level < 3; level++) {
		struct kvm_cpuid_entry2 *e = cpuid_subleaf(c, capacity, fn, level);
		if (!e)
			return;
		e->edx = id;
		if (level == 0) {
			e->eax = 0;
			e->ebx = 1;
			e->ecx = (1 << 8) | 0;
		} else if (level == 1) {
			e->eax = bits_for(ncpus);
			e->ebx = ncpus;
			e->ecx = (2 << 8) | 1;
		} else {
			e->eax = e->ebx = 0;
			e->ecx = level;
		}
	}
	/* Levels past the terminator describe nothing. */
	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];
		if (e->function == fn && e->index > 2) {
			e->eax = e->ebx = 0;
			e->ecx = e->index;
			e->edx = id;
		}
	}
}

void vcpu_cpuid_adjust(struct kvm_cpuid2 *cpuid, uint32_t capacity, unsigned id, unsigned ncpus)
{
	for (uint32_t i = 0; i < cpuid->nent; i++) {
		struct kvm_cpuid_entry2 *en = &cpuid->entries[i];
		switch (en->function) {
		case 1:
			en->ebx = (en->ebx & 0x0000ffff) | (id << 24) | ((ncpus & 0xff) << 16);
			en->ecx |= CPUID_1_ECX_HYPERVISOR;
			if (ncpus > 1)
				en->edx |= CPUID_1_EDX_HTT;
			else
				en->edx &= ~CPUID_1_EDX_HTT;
			break;
		case CPUID_LEAF_CACHE: {
			/* One package of ncpus single-thread cores; only the last level is shared. */
			uint32_t level = (en->eax >> 5) & 7;
			uint32_t sharing = level >= 3 ? ncpus - 1 : 0;
			en->eax = (en->eax & 0x3fff) | (sharing << 14) | ((ncpus - 1) << 26);
			break;
		}
		case CPUID_AMD_SIZES:
			/* Cores per package - 1, and the APIC id bits that number them. */
			en->ecx = (en->ecx & ~0xf0ffU) | (bits_for(ncpus) << 12) | ((ncpus - 1) & 0xff);
			break;
		case CPUID_AMD_TOPOLOGY:
			/* Extended APIC id, core id, one thread per core, node 0 of one. */
			en->eax = id;
			en->ebx = id & 0xff;
			en->ecx = 0;
			break;
		default:
			break;
		}
	}
	/* Linux counts packages from these: without a core level every vCPU was one. */
	cpuid_topology_leaf(cpuid, capacity, CPUID_LEAF_TOPOLOGY, id, ncpus);
	cpuid_topology_leaf(cpuid, capacity, CPUID_LEAF_TOPOLOGY_V2, id, ncpus);
}

#define CPUID_KVM_FEATURES       0x40000001
#define KVM_FEATURE_PV_UNHALT    7
#define KVM_FEATURE_PV_SEND_IPI  11
#define KVM_FEATURE_PV_SCHED_YIELD 13

/* On an emulation-only host a VMCALL from guest kernel mode hangs inside KVM (measured:
 * every hypercall number tried), so SMP guests stall in the PV IPI and unhalt paths;
 * without these features Linux uses plain IPIs and HLT. */
static void hide_pv_hypercalls(struct kvm_cpuid2 *c)
{
	for (uint32_t i = 0; i < c->nent; i++)
		if (c->entries[i].function == CPUID_KVM_FEATURES)
			c->entries[i].eax &= ~((1U << KVM_FEATURE_PV_UNHALT) |
					       (1U << KVM_FEATURE_PV_SEND_IPI) |
					       (1U << KVM_FEATURE_PV_SCHED_YIELD));
}

static int setup_cpuid(struct kvm_vm *vm, struct vcpu *v, unsigned ncpus, struct mitos_err *e)
{
	uint32_t n = vm->supported_cpuid->nent, capacity = n + CPUID_EXTRA_ENTRIES;
	struct kvm_cpuid2 *c = calloc(1, sizeof(struct kvm_cpuid2) +
				      capacity * sizeof(struct kvm_cpuid_entry2));
	if (!c)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	memcpy(c, vm->supported_cpuid, sizeof(struct kvm_cpuid2) +
	       n * sizeof(struct kvm_cpuid_entry2));
	vcpu_cpuid_adjust(c, capacity, v->id, ncpus);
	if (vm->emulation_only)
		hide_pv_hypercalls(c);
	int r = ioctl(v->fd, KVM_SET_CPUID2, c) < 0 ? -errno : 0;
	free(c);
	return r ? mitos_err_set(e, r, "vCPU %u: KVM_SET_CPUID2: %s", v->id, strerror(-r)) : 0;
}

static int setup_msrs(struct kvm_vm *vm, struct vcpu *v, struct mitos_err *e)
{
	static const struct { uint32_t index; uint64_t value; } defaults[] = {
		{ MSR_IA32_SYSENTER_CS, 0 }, { MSR_IA32_SYSENTER_ESP, 0 },
		{ MSR_IA32_SYSENTER_EIP, 0 }, { MSR_STAR, 0 }, { MSR_CSTAR, 0 },
		{ MSR_KERNEL_GS_BASE, 0 }, { MSR_SYSCALL_MASK, 0 }, { MSR_LSTAR, 0 },
		{ MSR_IA32_TSC, 0 }, { MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING },
		{ MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB },
	};
	enum { N = sizeof(defaults) / sizeof(defaults[0]) };
	struct { struct kvm_msrs hdr; struct kvm_msr_entry e[N]; } msrs;
	memset(&msrs, 0, sizeof(msrs));
	/* Only MSRs this KVM saves and restores; the others keep KVM's reset values. */
	for (unsigned i = 0; i < N; i++)
		if (kvm_vm_has_msr(vm, defaults[i].index)) {
			msrs.e[msrs.hdr.nmsrs].index = defaults[i].index;
			msrs.e[msrs.hdr.nmsrs].data = defaults[i].value;
			msrs.hdr.nmsrs++;
		}
	int n = ioctl(v->fd, KVM_SET_MSRS, &msrs);
	if (n < 0 || (uint32_t)n != msrs.hdr.nmsrs)
		return mitos_err_set(e, n < 0 ? -errno : -EIO,
				     "vCPU %u: KVM_SET_MSRS set %d of %u MSRs", v->id, n, msrs.hdr.nmsrs);
	return 0;
}

static uint32_t lvt_mode(uint32_t reg, uint32_t mode)
{
	return (reg & ~0x700U) | (mode << 8);
}

/* LINT0 delivers the PIC's ExtINT and LINT1 the NMI, as on a PC: Linux's virtual-wire
 * set-up relies on it. */
static int setup_lapic(struct vcpu *v, struct mitos_err *e)
{
	struct kvm_lapic_state l;
	if (ioctl(v->fd, KVM_GET_LAPIC, &l) < 0)
		return mitos_err_set(e, -errno, "vCPU %u: KVM_GET_LAPIC: %s", v->id, strerror(errno));
	uint32_t lvt0, lvt1;
	memcpy(&lvt0, &l.regs[APIC_LVT0], 4);
	memcpy(&lvt1, &l.regs[APIC_LVT1], 4);
	lvt0 = lvt_mode(lvt0, APIC_MODE_EXTINT);
	lvt1 = lvt_mode(lvt1, APIC_MODE_NMI);
	memcpy(&l.regs[APIC_LVT0], &lvt0, 4);
	memcpy(&l.regs[APIC_LVT1], &lvt1, 4);
	if (ioctl(v->fd, KVM_SET_LAPIC, &l) < 0)
		return mitos_err_set(e, -errno, "vCPU %u: KVM_SET_LAPIC: %s", v->id, strerror(errno));
	return 0;
}

int vcpu_create(struct kvm_vm *vm, unsigned id, unsigned ncpus, struct vcpu *v,
		struct mitos_err *e)
{
	memset(v, 0, sizeof(*v));
	v->id = id;
	v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)id);
	if (v->fd < 0)
		return mitos_err_set(e, -errno, "KVM_CREATE_VCPU %u: %s", id, strerror(errno));
	v->run = mmap(NULL, vm->vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED) {
		int r = -errno;
		v->run = NULL;
		vcpu_destroy(vm, v);
		return mitos_err_set(e, r, "vCPU %u: mmap kvm_run: %s", id, strerror(-r));
	}
	int r;
	if ((r = setup_cpuid(vm, v, ncpus, e)) || (r = setup_msrs(vm, v, e)) ||
	    (r = setup_lapic(v, e))) {
		vcpu_destroy(vm, v);
		return r;
	}
	return 0;
}

void vcpu_destroy(struct kvm_vm *vm, struct vcpu *v)
{
	if (v->run)
		munmap(v->run, vm->vcpu_mmap_size);
	if (v->fd >= 0)
		close(v->fd);
	v->run = NULL;
	v->fd = -1;
}

int vcpu_set_boot_state(struct vcpu *v, uint64_t entry, struct mitos_err *e)
{
	struct kvm_sregs s;
	if (ioctl(v->fd, KVM_GET_SREGS, &s) < 0)
		return mitos_err_set(e, -errno, "KVM_GET_SREGS: %s", strerror(errno));
	boot_segment(LAYOUT_SEL_CODE64, &s.cs);
	boot_segment(LAYOUT_SEL_DATA, &s.ds);
	s.es = s.fs = s.gs = s.ss = s.ds;
	boot_segment(LAYOUT_SEL_TSS, &s.tr);
	s.gdt.base = LAYOUT_GDT_GPA;
	s.gdt.limit = BOOT_GDT_LIMIT;
	s.idt.base = LAYOUT_IDT_GPA;
	s.idt.limit = BOOT_IDT_LIMIT;
	s.cr3 = LAYOUT_PML4_GPA;
	s.cr4 |= X86_CR4_PAE;
	s.cr0 |= X86_CR0_PE | X86_CR0_PG;
	s.efer |= EFER_LME | EFER_LMA;
	if (ioctl(v->fd, KVM_SET_SREGS, &s) < 0)
		return mitos_err_set(e, -errno, "KVM_SET_SREGS: %s", strerror(errno));

	struct kvm_regs r = {
		.rflags = 2, .rip = entry,
		.rsp = LAYOUT_BOOT_STACK_GPA, .rbp = LAYOUT_BOOT_STACK_GPA,
		.rsi = LAYOUT_ZERO_PAGE_GPA,
	};
	if (ioctl(v->fd, KVM_SET_REGS, &r) < 0)
		return mitos_err_set(e, -errno, "KVM_SET_REGS: %s", strerror(errno));

	struct kvm_fpu fpu = { .fcw = 0x37f, .mxcsr = 0x1f80 };
	if (ioctl(v->fd, KVM_SET_FPU, &fpu) < 0)
		return mitos_err_set(e, -errno, "KVM_SET_FPU: %s", strerror(errno));
	return 0;
}

int vcpu_read_insn(struct vcpu *v, const struct guest_mem *m, uint64_t *rip, uint8_t *buf)
{
	struct kvm_regs r;
	if (ioctl(v->fd, KVM_GET_REGS, &r) < 0)
		return -errno;
	*rip = r.rip;
	int n = 0;
	/* Byte by byte: the instruction may straddle a page boundary. */
	for (; n < 15; n++) {
		struct kvm_translation t = { .linear_address = r.rip + n };
		if (ioctl(v->fd, KVM_TRANSLATE, &t) < 0 || !t.valid)
			break;
		const uint8_t *p = guest_mem_ptr(m, t.physical_address, 1);
		if (!p)
			break;
		buf[n] = *p;
	}
	return n;
}
