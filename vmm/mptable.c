#include "mptable.h"
#include "lib/layout.h"
#include "table_checksum.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define MP_SPEC_REV        4      /* 1.4 */
#define MP_APIC_VERSION    0x14   /* integrated xAPIC, what KVM's LAPIC reports */
#define MP_IOAPIC_VERSION  0x11   /* KVM's IOAPIC */
#define MP_IOAPIC_PINS     24

#define MP_ENTRY_CPU       0
#define MP_ENTRY_BUS       1
#define MP_ENTRY_IOAPIC    2
#define MP_ENTRY_INTSRC    3
#define MP_ENTRY_LINTSRC   4

#define MP_CPU_ENABLED     0x1
#define MP_CPU_BSP         0x2
#define MP_IOAPIC_ENABLED  0x1
#define MP_INT_VECTORED    0
#define MP_INT_NMI         1
#define MP_INT_EXTINT      3
#define MP_IRQ_CONFORMING  0      /* polarity and trigger as the bus defines them */
#define MP_ISA_BUS_ID      0
#define MP_ALL_APICS       0xff

/* Family 6 and FPU + APIC feature bits: only informative, Linux reads CPUID itself. */
#define MP_CPU_SIGNATURE   0x600
#define MP_CPU_FEATURES    ((1U << 0) | (1U << 9))

struct mp_float {
	char signature[4];
	uint32_t physptr;
	uint8_t length;          /* in 16-byte units */
	uint8_t spec_rev;
	uint8_t checksum;
	uint8_t feature[5];      /* all 0: a config table follows, virtual-wire mode */
} __attribute__((packed));

struct mp_config {
	char signature[4];
	uint16_t length;
	uint8_t spec_rev;
	uint8_t checksum;
	char oem[8];
	char product[12];
	uint32_t oem_ptr;
	uint16_t oem_size;
	uint16_t entries;
	uint32_t lapic_addr;
	uint16_t ext_length;
	uint8_t ext_checksum;
	uint8_t reserved;
} __attribute__((packed));

struct mp_cpu {
	uint8_t type, apic_id, apic_version, flags;
	uint32_t signature, features;
	uint32_t reserved[2];
} __attribute__((packed));

struct mp_bus {
	uint8_t type, bus_id;
	char bus_type[6];
} __attribute__((packed));

struct mp_ioapic {
	uint8_t type, apic_id, version, flags;
	uint32_t addr;
} __attribute__((packed));

/* I/O and local interrupt assignments share one layout. */
struct mp_irq {
	uint8_t type, irq_type;
	uint16_t flags;
	uint8_t src_bus, src_irq, dst_apic, dst_pin;
} __attribute__((packed));

#define MP_CONFIG_SIZE(ncpus) \
	(sizeof(struct mp_config) + (ncpus) * sizeof(struct mp_cpu) + sizeof(struct mp_bus) + \
	 sizeof(struct mp_ioapic) + (MP_IOAPIC_PINS + 2) * sizeof(struct mp_irq))

_Static_assert(sizeof(struct mp_float) == 16 && sizeof(struct mp_config) == 44 &&
	       sizeof(struct mp_cpu) == 20 && sizeof(struct mp_bus) == 8 &&
	       sizeof(struct mp_ioapic) == 8 && sizeof(struct mp_irq) == 8,
	       "MP spec 1.4 entry sizes");
_Static_assert(LAYOUT_EBDA_GPA + MP_CONFIG_SIZE(LAYOUT_MAX_VCPUS) <= LAYOUT_MP_FLOAT_GPA &&
	       LAYOUT_MP_FLOAT_GPA + sizeof(struct mp_float) <= LAYOUT_EBDA_END,
	       "the MP table for LAYOUT_MAX_VCPUS CPUs must fit in the EBDA");

/* Appends one entry to the config table and counts it. */
static void put(uint8_t *table, size_t *off, const void *entry, size_t len)
{
	memcpy(table + *off, entry, len);
	*off += len;
	((struct mp_config *)table)->entries++;
}

static size_t build_config(uint8_t *table, unsigned ncpus)
{
	struct mp_config hdr = {
		.signature = "PCMP", .spec_rev = MP_SPEC_REV,
		.oem = "MITOS   ", .product = "MITOS-VM    ",
		.lapic_addr = (uint32_t)LAYOUT_LAPIC_GPA,
	};
	memcpy(table, &hdr, sizeof(hdr));
	size_t off = sizeof(hdr);
	for (unsigned i = 0; i < ncpus; i++) {
		struct mp_cpu cpu = {
			.type = MP_ENTRY_CPU, .apic_id = (uint8_t)i, .apic_version = MP_APIC_VERSION,
			.flags = MP_CPU_ENABLED | (i == 0 ? MP_CPU_BSP : 0),
			.signature = MP_CPU_SIGNATURE, .features = MP_CPU_FEATURES,
		};
		put(table, &off, &cpu, sizeof(cpu));
	}
	struct mp_bus bus = { .type = MP_ENTRY_BUS, .bus_id = MP_ISA_BUS_ID, .bus_type = "ISA   " };
	put(table, &off, &bus, sizeof(bus));
	uint8_t ioapic_id = (uint8_t)ncpus;
	struct mp_ioapic ioapic = {
		.type = MP_ENTRY_IOAPIC, .apic_id = ioapic_id, .version = MP_IOAPIC_VERSION,
		.flags = MP_IOAPIC_ENABLED, .addr = (uint32_t)LAYOUT_IOAPIC_GPA,
	};
	put(table, &off, &ioapic, sizeof(ioapic));
	/* Pin n for IRQ n, IRQ 0 included: KVM's default routing sends the in-kernel PIT's
	 * GSI 0 to pin 0 (QEMU reroutes it to pin 2 and says so; we do not), and Linux's
	 * timer check follows this entry. */
	for (uint8_t irq = 0; irq < MP_IOAPIC_PINS; irq++) {
		struct mp_irq src = {
			.type = MP_ENTRY_INTSRC, .irq_type = MP_INT_VECTORED,
			.flags = MP_IRQ_CONFORMING, .src_bus = MP_ISA_BUS_ID, .src_irq = irq,
			.dst_apic = ioapic_id, .dst_pin = irq,
		};
		put(table, &off, &src, sizeof(src));
	}
	/* The 8259 (ExtINT) reaches only the boot CPU's LINT0; NMI goes to every LINT1. */
	struct mp_irq lint0 = {
		.type = MP_ENTRY_LINTSRC, .irq_type = MP_INT_EXTINT, .flags = MP_IRQ_CONFORMING,
		.src_bus = MP_ISA_BUS_ID, .dst_apic = 0, .dst_pin = 0,
	};
	struct mp_irq lint1 = {
		.type = MP_ENTRY_LINTSRC, .irq_type = MP_INT_NMI, .flags = MP_IRQ_CONFORMING,
		.src_bus = MP_ISA_BUS_ID, .dst_apic = MP_ALL_APICS, .dst_pin = 1,
	};
	put(table, &off, &lint0, sizeof(lint0));
	put(table, &off, &lint1, sizeof(lint1));

	struct mp_config *cfg = (struct mp_config *)table;
	cfg->length = (uint16_t)off;
	cfg->checksum = table_checksum(table, off);
	return off;
}

int mptable_write(const struct guest_mem *m, unsigned ncpus, struct mitos_err *e)
{
	if (ncpus == 0 || ncpus > LAYOUT_MAX_VCPUS)
		return mitos_err_set(e, -EINVAL, "MP table: %u CPUs, must be 1 to %d",
				     ncpus, LAYOUT_MAX_VCPUS);
	/* The whole EBDA in one write, so no stale bytes can look like a table. */
	uint8_t ebda[LAYOUT_EBDA_END - LAYOUT_EBDA_GPA] __attribute__((aligned(8))) = { 0 };
	build_config(ebda, ncpus);
	struct mp_float fp = {
		.signature = "_MP_", .physptr = (uint32_t)LAYOUT_EBDA_GPA,
		.length = sizeof(fp) / 16, .spec_rev = MP_SPEC_REV,
	};
	fp.checksum = table_checksum(&fp, sizeof(fp));
	memcpy(ebda + (LAYOUT_MP_FLOAT_GPA - LAYOUT_EBDA_GPA), &fp, sizeof(fp));
	int r = guest_mem_write(m, LAYOUT_EBDA_GPA, ebda, sizeof(ebda));
	if (r)
		return mitos_err_set(e, r, "MP table: guest RAM does not cover 0x%llx-0x%llx",
				     LAYOUT_EBDA_GPA, LAYOUT_EBDA_END);
	return 0;
}
