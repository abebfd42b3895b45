/* The memory a kernel expects at its 64-bit entry (Linux x86 boot protocol): GDT,
 * identity page tables, zero page with the e820 map, command line, MP table and ACPI
 * tables (vmm/acpi.h). */
#ifndef MITOS_BOOT_H
#define MITOS_BOOT_H

#include "lib/error.h"
#include "lib/guest_mem.h"
#include "loader.h"

#include <linux/kvm.h>
#include <stdint.h>

/* null, null, code64 (0x10), data (0x18), 16-byte TSS (0x20). */
#define BOOT_GDT_ENTRIES 6
#define BOOT_GDT_LIMIT   (BOOT_GDT_ENTRIES * 8 - 1)
/* One zeroed 64-bit gate: any exception before the kernel loads its IDT shuts down. */
#define BOOT_IDT_LIMIT   15

/* Bytes of host randomness handed to the guest kernel at boot (SETUP_RNG_SEED). */
#define BOOT_RNG_SEED_BYTES 32

struct boot_config {
	const char *cmdline;   /* NULL: empty */
	uint64_t initrd_gpa, initrd_size;  /* size 0: no initrd */
	unsigned ncpus;
	/* A SETUP_RNG_SEED setup_data entry for the kernel's RNG; NULL: none. */
	const uint8_t *rng_seed;
};

/* 0, or -E2BIG (command line too long), -EINVAL (RAM too small, initrd outside RAM, bad
 * CPU count), -EFAULT. */
int boot_write(const struct guest_mem *m, const struct kernel_image *k,
	       const struct boot_config *c, struct mitos_err *e);

/* Hidden segment state matching the GDT entry boot_write() writes for `selector`;
 * an unusable null segment for selectors without a usable descriptor. */
void boot_segment(uint16_t selector, struct kvm_segment *seg);

#endif
