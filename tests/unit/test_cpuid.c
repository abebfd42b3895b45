/* vcpu_cpuid_adjust(): every vCPU of a VM is a single-thread core of one package, in
 * each leaf Linux reads its topology from, even where the host's table lacks the
 * subleaves. */
#include "vmm/vcpu.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#define CAP 16

/* A table shaped like an AMD host's KVM_GET_SUPPORTED_CPUID: leaf 0xb with only
 * subleaf 0, 0x80000008 with the host's core count, an empty 0x8000001e. */
static struct kvm_cpuid2 *amd_like(void)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + CAP * sizeof(struct kvm_cpuid_entry2));
	ck_assert_ptr_nonnull(c);
	const struct kvm_cpuid_entry2 e[] = {
		{ .function = 1, .eax = 0xa10f11, .ebx = 0x01020800, .ecx = 0x01202000, .edx = 0x078bfbff },
		{ .function = 0xb, .index = 0, .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
		  .ebx = 1, .ecx = 0x100, .edx = 1 },
		{ .function = 0x80000008, .ecx = 0x00007001 },
		{ .function = 0x8000001e },
	};
	memcpy(c->entries, e, sizeof(e));
	c->nent = sizeof(e) / sizeof(e[0]);
	return c;
}

static const struct kvm_cpuid_entry2 *find(const struct kvm_cpuid2 *c, uint32_t fn, uint32_t idx)
{
	for (uint32_t i = 0; i < c->nent; i++)
		if (c->entries[i].function == fn && c->entries[i].index == idx)
			return &c->entries[i];
	return NULL;
}

START_TEST(one_package_of_cores)
{
	for (unsigned ncpus = 1; ncpus <= 4; ncpus++)
		for (unsigned id = 0; id < ncpus; id++) {
			struct kvm_cpuid2 *c = amd_like();
			vcpu_cpuid_adjust(c, CAP, id, ncpus);
			const struct kvm_cpuid_entry2 *l1 = find(c, 1, 0);
			ck_assert_uint_eq(l1->ebx >> 24, id);
			ck_assert_uint_eq((l1->ebx >> 16) & 0xff, ncpus);
			ck_assert_uint_eq(!!(l1->edx & (1u << 28)), ncpus > 1);
			ck_assert(l1->ecx & (1u << 31));
			const struct kvm_cpuid_entry2 *smt = find(c, 0xb, 0), *core = find(c, 0xb, 1),
						      *end = find(c, 0xb, 2);
			ck_assert_ptr_nonnull(core);
			ck_assert_ptr_nonnull(end);
			ck_assert_uint_eq(smt->ebx, 1);
			ck_assert_uint_eq(smt->ecx, 0x100);
			ck_assert_uint_eq(core->ebx, ncpus);
			ck_assert_uint_eq(core->ecx, 0x201);
			ck_assert_uint_eq(1u << core->eax >= ncpus, 1);
			ck_assert_uint_eq(core->flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
			ck_assert_uint_eq(end->ecx & 0xff00, 0);
			ck_assert_uint_eq(smt->edx, id);
			ck_assert_uint_eq(core->edx, id);
			/* Package id = APIC id >> core bits: 0 for every vCPU. */
			ck_assert_uint_eq(id >> core->eax, 0);
			const struct kvm_cpuid_entry2 *sz = find(c, 0x80000008, 0);
			ck_assert_uint_eq(sz->ecx & 0xff, ncpus - 1);
			ck_assert_uint_eq(id >> ((sz->ecx >> 12) & 0xf), 0);
			const struct kvm_cpuid_entry2 *t = find(c, 0x8000001e, 0);
			ck_assert_uint_eq(t->eax, id);
			ck_assert_uint_eq((t->ebx >> 8) & 0xff, 0);   /* one thread per core */
			free(c);
		}
}
END_TEST

START_TEST(no_room_no_overflow)
{
	struct kvm_cpuid2 *c = amd_like();
	uint32_t n = c->nent;
	vcpu_cpuid_adjust(c, n, 0, 2);     /* full: the missing subleaves cannot be added */
	ck_assert_uint_eq(c->nent, n);
	ck_assert_ptr_null(find(c, 0xb, 1));
	free(c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("cpuid");
	TCase *tc = tcase_create("topology");
	tcase_add_test(tc, one_package_of_cores);
	tcase_add_test(tc, no_room_no_overflow);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
