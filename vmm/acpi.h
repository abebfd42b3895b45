/* ACPI tables of a Mitos microVM, there for the VM generation ID (VMGenID): a
 * hardware-reduced FADT, a MADT with the CPUs, and a DSDT with a VM_GEN_COUNTER device
 * whose 16-byte ID sits at LAYOUT_VMGENID_GPA and a Generic Event Device whose
 * interrupt (LAYOUT_GED_IRQ) makes the guest read it again. The IOAPIC and its
 * interrupts still come from the MP table, devices from the kernel command line. */
#ifndef MITOS_ACPI_H
#define MITOS_ACPI_H

#include "lib/error.h"
#include "lib/guest_mem.h"

#include <stdint.h>

#define ACPI_VMGENID_BYTES 16

/* Writes RSDP, XSDT, FADT, MADT (ncpus CPUs) and DSDT at LAYOUT_ACPI_GPA (the RSDP
 * first) and a first random generation ID. 0, -EINVAL (bad CPU count), -EFAULT (RAM
 * does not cover the range) or getrandom's error. */
int acpi_write(const struct guest_mem *m, unsigned ncpus, struct mitos_err *e);

/* Writes a new random generation ID. The guest notices only when the VMM then raises
 * LAYOUT_GED_IRQ; at boot it reads the ID on its own. 0 or a negative errno. */
int acpi_new_generation(const struct guest_mem *m, struct mitos_err *e);

#endif
