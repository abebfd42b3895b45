#include "vm_state.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <x86intrin.h>

#define KVM_PV_MSR_FIRST 0x4b564d00
#define KVM_PV_MSR_LAST  0x4b564d07
#define MAX_CPUID_ENTRIES 256
#define MAX_MSRS 1024

struct msrs_buf {
	struct kvm_msrs hdr;
	struct kvm_msr_entry e[MAX_MSRS];
};

static bool has_index(const struct msr_set *s, uint32_t idx)
{
	for (uint32_t i = 0; i < s->n; i++)
		if (s->index[i] == idx)
			return true;
	return false;
}

int vm_state_msr_set(struct kvm_vm *vm, const struct vcpu *v, struct msr_set *s,
		     struct mitos_err *e)
{
	s->n = 0;
	s->index = calloc(MAX_MSRS, sizeof(uint32_t));
	if (!s->index)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < vm->msr_index_list->nmsrs && s->n < MAX_MSRS; i++)
		s->index[s->n++] = vm->msr_index_list->indices[i];
	for (uint32_t idx = KVM_PV_MSR_FIRST; idx <= KVM_PV_MSR_LAST && s->n < MAX_MSRS; idx++)
		if (!has_index(s, idx))
			s->index[s->n++] = idx;
	/* KVM_GET_MSRS stops at the first MSR it cannot read and returns how many it read:
	 * drop that one and go on from there. */
	struct msrs_buf *b = calloc(1, sizeof(*b));
	if (!b) {
		vm_state_msr_set_free(s);
		return mitos_err_set(e, -ENOMEM, "out of memory");
	}
	uint32_t start = 0;
	while (start < s->n) {
		b->hdr.nmsrs = s->n - start;
		for (uint32_t i = 0; i < b->hdr.nmsrs; i++)
			b->e[i] = (struct kvm_msr_entry){ .index = s->index[start + i] };
		int got = ioctl(v->fd, KVM_GET_MSRS, b);
		if (got < 0) {
			int r = -errno;
			free(b);
			vm_state_msr_set_free(s);
			return mitos_err_set(e, r, "KVM_GET_MSRS: %s", strerror(-r));
		}
		start += (uint32_t)got;
		if (start < s->n) {
			memmove(&s->index[start], &s->index[start + 1], (s->n - start - 1) * sizeof(uint32_t));
			s->n--;
		}
	}
	free(b);
	return 0;
}

void vm_state_msr_set_free(struct msr_set *s)
{
	free(s->index);
	s->index = NULL;
	s->n = 0;
}

/* One ioctl, one section: keeps save and restore in the same table-driven shape. */
struct vcpu_item {
	uint32_t section;
	const char *name;
	unsigned long get, set;
	size_t size;
	int cap;        /* KVM capability it needs, 0 for always */
};

static const struct vcpu_item vcpu_items[] = {
	/* Restore runs in this order. */
	{ SS_VCPU_MP_STATE, "mp_state", KVM_GET_MP_STATE, KVM_SET_MP_STATE, sizeof(struct kvm_mp_state), 0 },
	{ SS_VCPU_REGS, "regs", KVM_GET_REGS, KVM_SET_REGS, sizeof(struct kvm_regs), 0 },
	{ SS_VCPU_SREGS, "sregs", KVM_GET_SREGS, KVM_SET_SREGS, sizeof(struct kvm_sregs), 0 },
	{ SS_VCPU_XSAVE, "xsave", KVM_GET_XSAVE, KVM_SET_XSAVE, sizeof(struct kvm_xsave), KVM_CAP_XSAVE },
	{ SS_VCPU_FPU, "fpu", KVM_GET_FPU, KVM_SET_FPU, sizeof(struct kvm_fpu), -KVM_CAP_XSAVE },
	{ SS_VCPU_XCRS, "xcrs", KVM_GET_XCRS, KVM_SET_XCRS, sizeof(struct kvm_xcrs), KVM_CAP_XCRS },
	{ SS_VCPU_DEBUGREGS, "debugregs", KVM_GET_DEBUGREGS, KVM_SET_DEBUGREGS, sizeof(struct kvm_debugregs), KVM_CAP_DEBUGREGS },
	{ SS_VCPU_LAPIC, "lapic", KVM_GET_LAPIC, KVM_SET_LAPIC, sizeof(struct kvm_lapic_state), 0 },
	/* MSRs go here, then: */
	{ SS_VCPU_EVENTS, "vcpu_events", KVM_GET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS, sizeof(struct kvm_vcpu_events), KVM_CAP_VCPU_EVENTS },
};
#define N_VCPU_ITEMS (sizeof(vcpu_items) / sizeof(vcpu_items[0]))
#define MSRS_BEFORE SS_VCPU_EVENTS

/* cap > 0: needs it; cap < 0: only without -cap (FPU when there is no XSAVE). */
static bool item_applies(struct kvm_vm *vm, const struct vcpu_item *it)
{
	if (it->cap == 0)
		return true;
	int have = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, it->cap > 0 ? it->cap : -it->cap) > 0;
	return it->cap > 0 ? have : !have;
}

static int save_msrs(struct vcpu *v, const struct msr_set *s, struct state_writer *w,
		     struct mitos_err *e)
{
	struct msrs_buf *b = calloc(1, sizeof(*b));
	if (!b)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	b->hdr.nmsrs = s->n;
	for (uint32_t i = 0; i < s->n; i++)
		b->e[i].index = s->index[i];
	int got = ioctl(v->fd, KVM_GET_MSRS, b);
	int r = 0;
	if (got < 0 || (uint32_t)got != s->n)
		r = mitos_err_set(e, got < 0 ? -errno : -EIO, "vCPU %u: KVM_GET_MSRS read %d of %u",
				  v->id, got, s->n);
	else
		state_add(w, SS_VCPU_MSRS, v->id, b->e, s->n * sizeof(struct kvm_msr_entry));
	free(b);
	return r;
}

/* with_tsc false: MSR_IA32_TSC stays out (its offset is set already, set_tsc_offset). */
static int restore_msrs(struct vcpu *v, const struct state_blob *sb, bool with_tsc,
			struct mitos_err *e)
{
	size_t len;
	const struct kvm_msr_entry *p = state_find(sb, SS_VCPU_MSRS, v->id, &len);
	if (!p || len % sizeof(struct kvm_msr_entry) || len / sizeof(struct kvm_msr_entry) > MAX_MSRS)
		return mitos_err_set(e, -EINVAL, "state file: vCPU %u MSRs missing or malformed", v->id);
	struct msrs_buf *b = calloc(1, sizeof(*b));
	if (!b)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	for (size_t i = 0; i < len / sizeof(*p); i++)
		if (with_tsc || p[i].index != MSR_IA32_TSC)
			b->e[b->hdr.nmsrs++] = p[i];
	int set = ioctl(v->fd, KVM_SET_MSRS, b);
	int r = 0;
	if (set < 0 || (uint32_t)set != b->hdr.nmsrs)
		r = mitos_err_set(e, set < 0 ? -errno : -EIO,
				  "vCPU %u: KVM_SET_MSRS stopped at MSR 0x%x (%d of %u set)", v->id,
				  set >= 0 && (uint32_t)set < b->hdr.nmsrs ? b->e[set].index : 0,
				  set, b->hdr.nmsrs);
	free(b);
	return r;
}

/* vCPU 0's TSC in the state (every vCPU shared one offset in the parent). */
static bool saved_tsc(const struct state_blob *b, uint64_t *tsc)
{
	size_t len;
	const struct kvm_msr_entry *m = state_find(b, SS_VCPU_MSRS, 0, &len);
	for (size_t i = 0; m && i < len / sizeof(*m); i++)
		if (m[i].index == MSR_IA32_TSC) {
			*tsc = m[i].data;
			return true;
		}
	return false;
}

/* KVM takes a host write of MSR_IA32_TSC that lands within a second of the TSC it
 * expects as an attempt to line vCPUs up, and keeps the offset it had instead. A new
 * vCPU's TSC starts at 0, so a snapshot taken in the guest's first second came back with
 * its TSC near 0: behind the value before the snapshot and behind any TSC deadline the
 * guest had armed (measured: the register test's children). KVM_VCPU_TSC_OFFSET (Linux
 * 5.16) sets the offset as given, the same for every vCPU. False where KVM lacks it
 * (ENXIO; no separate KVM_HAS_DEVICE_ATTR on the restore path): the MSR write is then
 * the only way. */
static bool set_tsc_offset(struct vcpu *v, int64_t offset)
{
	struct kvm_device_attr a = {
		.group = KVM_VCPU_TSC_CTRL, .attr = KVM_VCPU_TSC_OFFSET, .addr = (uintptr_t)&offset,
	};
	return ioctl(v->fd, KVM_SET_DEVICE_ATTR, &a) == 0;
}

static int save_cpuid(struct vcpu *v, struct state_writer *w, struct mitos_err *e)
{
	size_t sz = sizeof(struct kvm_cpuid2) + MAX_CPUID_ENTRIES * sizeof(struct kvm_cpuid_entry2);
	struct kvm_cpuid2 *c = calloc(1, sz);
	if (!c)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	c->nent = MAX_CPUID_ENTRIES;
	int r = 0;
	if (ioctl(v->fd, KVM_GET_CPUID2, c) < 0)
		r = mitos_err_set(e, -errno, "vCPU %u: KVM_GET_CPUID2: %s", v->id, strerror(errno));
	else
		state_add(w, SS_VCPU_CPUID, v->id, c->entries, c->nent * sizeof(struct kvm_cpuid_entry2));
	free(c);
	return r;
}

static int restore_cpuid(struct vcpu *v, const struct state_blob *sb, struct mitos_err *e)
{
	size_t len;
	const void *p = state_find(sb, SS_VCPU_CPUID, v->id, &len);
	if (!p || len % sizeof(struct kvm_cpuid_entry2) ||
	    len / sizeof(struct kvm_cpuid_entry2) > MAX_CPUID_ENTRIES)
		return mitos_err_set(e, -EINVAL, "state file: vCPU %u CPUID missing or malformed", v->id);
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + len);
	if (!c)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	c->nent = (uint32_t)(len / sizeof(struct kvm_cpuid_entry2));
	memcpy(c->entries, p, len);
	int r = ioctl(v->fd, KVM_SET_CPUID2, c) < 0 ?
		mitos_err_set(e, -errno, "vCPU %u: KVM_SET_CPUID2: %s (snapshot from a different CPU?)",
			      v->id, strerror(errno)) : 0;
	free(c);
	return r;
}

static const struct { uint32_t chip; const char *name; } irqchips[] = {
	{ KVM_IRQCHIP_PIC_MASTER, "PIC master" },
	{ KVM_IRQCHIP_PIC_SLAVE, "PIC slave" },
	{ KVM_IRQCHIP_IOAPIC, "IOAPIC" },
};

int vm_state_save(struct kvm_vm *vm, struct vcpu *const *vcpus, unsigned n,
		  const struct msr_set *msrs, struct state_writer *w, struct mitos_err *e)
{
	union {
		struct kvm_clock_data clock;
		struct kvm_irqchip chip;
		struct kvm_pit_state2 pit;
		uint8_t raw[sizeof(struct kvm_xsave)];
	} u;
	memset(&u, 0, sizeof(u));
	if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &u.clock) < 0)
		return mitos_err_set(e, -errno, "KVM_GET_CLOCK: %s", strerror(errno));
	state_add(w, SS_VM_CLOCK, 0, &u.clock, sizeof(u.clock));
	for (size_t i = 0; i < sizeof(irqchips) / sizeof(irqchips[0]); i++) {
		memset(&u, 0, sizeof(u));
		u.chip.chip_id = irqchips[i].chip;
		if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &u.chip) < 0)
			return mitos_err_set(e, -errno, "KVM_GET_IRQCHIP %s: %s", irqchips[i].name,
					     strerror(errno));
		state_add(w, SS_VM_IRQCHIP, irqchips[i].chip, &u.chip, sizeof(u.chip));
	}
	if (ioctl(vm->vm_fd, KVM_GET_PIT2, &u.pit) < 0)
		return mitos_err_set(e, -errno, "KVM_GET_PIT2: %s", strerror(errno));
	state_add(w, SS_VM_PIT, 0, &u.pit, sizeof(u.pit));

	for (unsigned c = 0; c < n; c++) {
		struct vcpu *v = vcpus[c];
		int r = save_cpuid(v, w, e);
		if (r)
			return r;
		for (size_t i = 0; i < N_VCPU_ITEMS; i++) {
			const struct vcpu_item *it = &vcpu_items[i];
			if (!item_applies(vm, it))
				continue;
			if (it->section == MSRS_BEFORE && (r = save_msrs(v, msrs, w, e)))
				return r;
			memset(&u, 0, sizeof(u));
			if (ioctl(v->fd, it->get, u.raw) < 0)
				return mitos_err_set(e, -errno, "vCPU %u: get %s: %s", v->id, it->name,
						     strerror(errno));
			state_add(w, it->section, v->id, u.raw, it->size);
		}
	}
	return w->err ? mitos_err_set(e, w->err, "out of memory building the state") : 0;
}

int vm_state_restore(struct kvm_vm *vm, struct vcpu *const *vcpus, unsigned n,
		     const struct state_blob *b, struct mitos_err *e)
{
	union {
		struct kvm_clock_data clock;
		struct kvm_irqchip chip;
		struct kvm_pit_state2 pit;
		uint8_t raw[sizeof(struct kvm_xsave)];
	} u;
	int r;
	/* Interrupt controllers and timers first: the LAPICs restored below route into them. */
	for (size_t i = 0; i < sizeof(irqchips) / sizeof(irqchips[0]); i++) {
		if ((r = state_get(b, irqchips[i].name, SS_VM_IRQCHIP, irqchips[i].chip, &u.chip,
				   sizeof(u.chip), e)))
			return r;
		if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &u.chip) < 0)
			return mitos_err_set(e, -errno, "KVM_SET_IRQCHIP %s: %s", irqchips[i].name,
					     strerror(errno));
	}
	if ((r = state_get(b, "PIT", SS_VM_PIT, 0, &u.pit, sizeof(u.pit), e)))
		return r;
	if (ioctl(vm->vm_fd, KVM_SET_PIT2, &u.pit) < 0)
		return mitos_err_set(e, -errno, "KVM_SET_PIT2: %s", strerror(errno));
	if ((r = state_get(b, "kvmclock", SS_VM_CLOCK, 0, &u.clock, sizeof(u.clock), e)))
		return r;
	/* Only the clock value is ours to set; the flags describe the host it came from. */
	u.clock.flags = 0;
	if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &u.clock) < 0)
		return mitos_err_set(e, -errno, "KVM_SET_CLOCK: %s", strerror(errno));

	uint64_t tsc = 0;
	bool have_tsc = saved_tsc(b, &tsc);
	/* From here the guest's TSC runs on from its saved value as the host's runs. */
	int64_t tsc_offset = (int64_t)(tsc - __rdtsc());
	for (unsigned c = 0; c < n; c++) {
		struct vcpu *v = vcpus[c];
		if ((r = restore_cpuid(v, b, e)))
			return r;
		for (size_t i = 0; i < N_VCPU_ITEMS; i++) {
			const struct vcpu_item *it = &vcpu_items[i];
			if (!item_applies(vm, it))
				continue;
			/* The offset before the MSRs: the TSC deadline among them is armed
			 * against the TSC as it is then. */
			if (it->section == MSRS_BEFORE &&
			    (r = restore_msrs(v, b, !(have_tsc && set_tsc_offset(v, tsc_offset)), e)))
				return r;
			if ((r = state_get(b, it->name, it->section, v->id, u.raw, it->size, e)))
				return r;
			if (ioctl(v->fd, it->set, u.raw) < 0)
				return mitos_err_set(e, -errno, "vCPU %u: set %s: %s", v->id, it->name,
						     strerror(errno));
		}
	}
	return 0;
}
