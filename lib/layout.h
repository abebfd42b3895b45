/* Guest physical address map of a Mitos microVM (x86-64). Shared by the VMM, the loaders
 * and the test guest, so everybody agrees on where things are. */
#ifndef MITOS_LAYOUT_H
#define MITOS_LAYOUT_H

/* Boot structures in low memory, as Firecracker places them. */
#define LAYOUT_GDT_GPA          0x500ULL    /* 6 entries: up to the 16-byte TSS at 0x20 */
#define LAYOUT_IDT_GPA          0x530ULL
#define LAYOUT_ZERO_PAGE_GPA    0x7000ULL   /* struct boot_params, RSI at entry */
#define LAYOUT_BOOT_STACK_GPA   0x8ff0ULL   /* RSP/RBP at entry */
#define LAYOUT_PML4_GPA         0x9000ULL
#define LAYOUT_PDPT_GPA         0xa000ULL
#define LAYOUT_PD_GPA           0xb000ULL   /* 4 pages: identity map of the first 4 GiB */
#define LAYOUT_CMDLINE_GPA      0x20000ULL
#define LAYOUT_CMDLINE_MAX      4096ULL
#define LAYOUT_SETUP_DATA_GPA   0x21000ULL  /* setup_data chain: the RNG seed */
/* Reserved from here to 1 MiB (Linux reserves [0x9f000, 1 MiB) anyway). The MP config
 * table starts at EBDA_GPA; 1 KiB would hold it for only 37 CPUs. The floating pointer
 * sits in the last KiB under 640 KiB, one of the places Linux scans for "_MP_". */
#define LAYOUT_EBDA_GPA         0x9f000ULL
#define LAYOUT_MP_FLOAT_GPA     0x9fc00ULL
#define LAYOUT_EBDA_END         0xa0000ULL
/* ACPI tables (RSDP first, found through boot_params.acpi_rsdp_addr), then the 16-byte
 * VM generation ID in a page of its own: both in the reserved range under 1 MiB. */
#define LAYOUT_ACPI_GPA         0xe0000ULL
#define LAYOUT_ACPI_MAX         0x1000ULL
#define LAYOUT_VMGENID_GPA      0xe1000ULL
#define LAYOUT_HIMEM_GPA        0x100000ULL /* first byte of "high" memory: 1 MiB */
#define LAYOUT_BZIMAGE_LOAD_GPA 0x100000ULL /* protected-mode kernel of a bzImage */

/* Segment selectors of the boot GDT (index * 8). */
#define LAYOUT_GDT_NULL         0
#define LAYOUT_SEL_CODE64       0x10
#define LAYOUT_SEL_DATA         0x18
#define LAYOUT_SEL_TSS          0x20

/* The 32-bit MMIO hole: guest RAM never overlaps [HOLE_START, 4 GiB). */
#define LAYOUT_MMIO_HOLE_START  0xc0000000ULL
#define LAYOUT_MMIO_HOLE_END    0x100000000ULL
#define LAYOUT_IOAPIC_GPA       0xfec00000ULL
#define LAYOUT_LAPIC_GPA        0xfee00000ULL
/* KVM's private pages (TSS: 3 pages, identity map: 1 page) sit just under the IOAPIC. */
#define LAYOUT_KVM_TSS_GPA      0xfeffd000ULL
#define LAYOUT_KVM_IDMAP_GPA    0xfeffc000ULL

/* virtio-mmio windows: device i at BASE + i * STRIDE, interrupt IRQ_BASE + i. */
#define LAYOUT_VIRTIO_MMIO_BASE   0xd0000000ULL
#define LAYOUT_VIRTIO_MMIO_STRIDE 0x1000ULL
#define LAYOUT_VIRTIO_IRQ_BASE    5
#define LAYOUT_VIRTIO_MAX_DEVICES 16  /* IRQ 5..20, under the IOAPIC's 24 pins */
/* The ACPI Generic Event Device's interrupt: tells a restored guest its generation ID
 * changed. The IOAPIC's last pin, above every virtio device's. */
#define LAYOUT_GED_IRQ            23

/* Legacy ports. */
#define LAYOUT_COM1_PORT        0x3f8
#define LAYOUT_COM1_IRQ         4
#define LAYOUT_I8042_DATA_PORT  0x60
#define LAYOUT_I8042_CMD_PORT   0x64
#define LAYOUT_DEBUG_EXIT_PORT  0xf4
#define LAYOUT_POST_PORT        0x80

#define LAYOUT_MAX_VCPUS        64

#endif
