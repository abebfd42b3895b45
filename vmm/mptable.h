/* Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI learns its
 * CPUs, its IOAPIC and how ISA interrupts reach it. */
#ifndef MITOS_MPTABLE_H
#define MITOS_MPTABLE_H

#include "lib/error.h"
#include "lib/guest_mem.h"

/* Config table at LAYOUT_EBDA_GPA, floating pointer at LAYOUT_MP_FLOAT_GPA. CPU i has
 * APIC ID i, CPU 0 boots; the IOAPIC has ID ncpus. ISA IRQ n goes to IOAPIC pin n, as
 * KVM's default GSI routing wires it. 0 or -EINVAL (ncpus 0 or > LAYOUT_MAX_VCPUS),
 * -EFAULT (RAM does not cover the EBDA). */
int mptable_write(const struct guest_mem *m, unsigned ncpus, struct mitos_err *e);

#endif
