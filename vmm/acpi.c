#include "acpi.h"
#include "lib/layout.h"
#include "table_checksum.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <sys/random.h>

/* Where each table goes inside the LAYOUT_ACPI_MAX bytes at LAYOUT_ACPI_GPA. */
#define RSDP_OFF  0x000
#define XSDT_OFF  0x040
#define FADT_OFF  0x080
#define MADT_OFF  0x200
#define DSDT_OFF  0x480
#define DSDT_MAX  (LAYOUT_ACPI_MAX - DSDT_OFF)

#define FADT_REVISION        6      /* ACPI 6.0: the table is 276 bytes */
#define FADT_HW_REDUCED_ACPI (1U << 20)
/* IA-PC boot architecture flags: no VGA, no MSI, no CMOS RTC (the VMM has none). */
#define BOOT_ARCH_NO_VGA     (1U << 2)
#define BOOT_ARCH_NO_MSI     (1U << 3)
#define BOOT_ARCH_NO_CMOS    (1U << 5)

struct acpi_header {
	char signature[4];
	uint32_t length;
	uint8_t revision, checksum;
	char oem_id[6], oem_table_id[8];
	uint32_t oem_revision;
	char creator_id[4];
	uint32_t creator_revision;
} __attribute__((packed));

struct rsdp {
	char signature[8];
	uint8_t checksum;         /* over the first 20 bytes (ACPI 1.0's RSDP) */
	char oem_id[6];
	uint8_t revision;         /* 2: the XSDT address and extended checksum follow */
	uint32_t rsdt_addr, length;
	uint64_t xsdt_addr;
	uint8_t ext_checksum, reserved[3];
} __attribute__((packed));

struct xsdt {
	struct acpi_header hdr;
	uint64_t entry[2];        /* FADT and MADT; the DSDT is found through the FADT */
} __attribute__((packed));

/* The CPUs only. Linux forgets the MP table when ACPI has no MADT, and takes the IOAPIC
 * and its interrupt routing from the MP table when the MADT lists none. */
#define MADT_REVISION      3
#define MADT_LAPIC         0
#define MADT_LAPIC_NMI     4
#define MADT_ENABLED       1
#define MADT_ALL_CPUS      0xff

struct madt {
	struct acpi_header hdr;
	uint32_t lapic_addr;
	uint32_t flags;           /* 0: no 8259 pair (a hardware-reduced machine) */
} __attribute__((packed));

struct madt_lapic {
	uint8_t type, length, processor_uid, apic_id;
	uint32_t flags;
} __attribute__((packed));

struct madt_lapic_nmi {
	uint8_t type, length, processor_uid;
	uint16_t flags;           /* 0: the bus's polarity and trigger */
	uint8_t lint;
} __attribute__((packed));

#define MADT_SIZE(ncpus) \
	(sizeof(struct madt) + (ncpus) * sizeof(struct madt_lapic) + sizeof(struct madt_lapic_nmi))

/* Hardware-reduced: no PM timer, SCI, fixed-event or GPE blocks and no FACS, so every
 * field but these stays zero. */
struct fadt {
	struct acpi_header hdr;
	uint32_t firmware_ctrl, dsdt;
	uint8_t reserved0[109 - 44];
	uint16_t boot_arch;
	uint8_t reserved1;
	uint32_t flags;
	uint8_t reserved2[131 - 116];
	uint8_t minor_revision;
	uint64_t x_firmware_ctrl, x_dsdt;
	uint8_t reserved3[268 - 148];
	char hypervisor_id[8];
} __attribute__((packed));

_Static_assert(sizeof(struct acpi_header) == 36 && sizeof(struct rsdp) == 36 &&
	       sizeof(struct fadt) == 276 && offsetof(struct fadt, boot_arch) == 109 &&
	       offsetof(struct fadt, flags) == 112 && offsetof(struct fadt, x_dsdt) == 140,
	       "ACPI 6.0 table layouts");
_Static_assert(sizeof(struct madt) == 44 && sizeof(struct madt_lapic) == 8 &&
	       sizeof(struct madt_lapic_nmi) == 6, "ACPI 6.0 MADT layouts");
_Static_assert(RSDP_OFF + sizeof(struct rsdp) <= XSDT_OFF &&
	       XSDT_OFF + sizeof(struct xsdt) <= FADT_OFF &&
	       FADT_OFF + sizeof(struct fadt) <= MADT_OFF &&
	       MADT_OFF + MADT_SIZE(LAYOUT_MAX_VCPUS) <= DSDT_OFF, "ACPI tables overlap");
_Static_assert(LAYOUT_ACPI_GPA + LAYOUT_ACPI_MAX <= LAYOUT_VMGENID_GPA &&
	       LAYOUT_VMGENID_GPA + ACPI_VMGENID_BYTES <= LAYOUT_HIMEM_GPA &&
	       LAYOUT_ACPI_GPA >= LAYOUT_EBDA_END,
	       "ACPI tables and the generation ID belong in the reserved range under 1 MiB");

static void header(struct acpi_header *h, const char *sig, uint32_t len, uint8_t rev)
{
	memcpy(h->signature, sig, 4);
	h->length = len;
	h->revision = rev;
	memcpy(h->oem_id, "MITOS ", 6);
	memcpy(h->oem_table_id, "MITOSVM ", 8);
	h->oem_revision = 1;
	memcpy(h->creator_id, "MTOS", 4);
	h->creator_revision = 1;
}

/* AML, the bytecode of the DSDT (ACPI 6.0, chapter 20). Objects that contain others
 * start with a PkgLength that counts itself, so a container is written body first and
 * its length inserted in front when it is closed. Sizes here are a few hundred bytes;
 * an overflow is a programming error, caught by the tests through `full`. */
struct aml {
	uint8_t b[DSDT_MAX];
	size_t n;
	bool full;
};

#define AML_NAME      0x08
#define AML_BYTE      0x0a
#define AML_DWORD     0x0c
#define AML_STRING    0x0d
#define AML_SCOPE     0x10
#define AML_BUFFER    0x11
#define AML_PACKAGE   0x12
#define AML_METHOD    0x14
#define AML_ROOT      0x5c
#define AML_DUAL_NAME 0x2e
#define AML_EXT       0x5b
#define AML_DEVICE    0x82    /* after AML_EXT */
#define AML_NOTIFY    0x86

static void put(struct aml *a, const void *p, size_t len)
{
	if (a->full || len > sizeof(a->b) - a->n) {
		a->full = true;
		return;
	}
	memcpy(a->b + a->n, p, len);
	a->n += len;
}

static void put8(struct aml *a, uint8_t v)
{
	put(a, &v, 1);
}

static void put_dword(struct aml *a, uint32_t v)
{
	put8(a, AML_DWORD);
	put(a, &v, 4);
}

static void put_string(struct aml *a, const char *s)
{
	put8(a, AML_STRING);
	put(a, s, strlen(s) + 1);
}

static void put_name(struct aml *a, const char seg[4])
{
	put8(a, AML_NAME);
	put(a, seg, 4);
}

/* Closes the container whose body started at `start`: 1 to 4 PkgLength bytes. */
static void close_pkg(struct aml *a, size_t start)
{
	size_t body = a->n - start, nbytes = 1;
	while (nbytes < 4 && body + nbytes >= (nbytes == 1 ? 0x40U : 1U << (4 + 8 * (nbytes - 1))))
		nbytes++;
	size_t total = body + nbytes;
	if (a->full || nbytes > sizeof(a->b) - a->n) {
		a->full = true;
		return;
	}
	memmove(a->b + start + nbytes, a->b + start, body);
	if (nbytes == 1) {
		a->b[start] = (uint8_t)total;
	} else {
		a->b[start] = (uint8_t)(((nbytes - 1) << 6) | (total & 0xf));
		for (size_t i = 1; i < nbytes; i++)
			a->b[start + i] = (uint8_t)(total >> (4 + 8 * (i - 1)));
	}
	a->n += nbytes;
}

static size_t open_device(struct aml *a, const char seg[4])
{
	put8(a, AML_EXT);
	put8(a, AML_DEVICE);
	size_t start = a->n;
	put(a, seg, 4);
	return start;
}

/* Device (VGEN): the generation ID's address for Linux's vmgenid driver, which matches
 * the compatible ID and reads ADDR as a package of the low and high halves. */
static void vgen_device(struct aml *a)
{
	size_t dev = open_device(a, "VGEN");
	put_name(a, "_HID");
	put_string(a, "MTOS0001");
	put_name(a, "_CID");
	put_string(a, "VM_GEN_COUNTER");
	put_name(a, "_DDN");
	put_string(a, "VM_Gen_Counter");
	put_name(a, "ADDR");
	put8(a, AML_PACKAGE);
	size_t pkg = a->n;
	put8(a, 2);
	put_dword(a, (uint32_t)LAYOUT_VMGENID_GPA);
	put_dword(a, (uint32_t)(LAYOUT_VMGENID_GPA >> 32));
	close_pkg(a, pkg);
	close_pkg(a, dev);
}

/* Device (GED_): a Generic Event Device (ACPI0013) on an edge-triggered, active-high
 * interrupt; its _EVT method, which Linux runs for that interrupt, notifies VGEN that
 * the ID changed (0x80: the VMGenID specification's notification). */
static void ged_device(struct aml *a)
{
	static const uint8_t end_tag[] = { 0x79, 0x00 };  /* checksum 0: not checked */
	const uint32_t gsi = LAYOUT_GED_IRQ;
	/* Extended Interrupt descriptor: consumer, edge, active high, exclusive; 1 entry. */
	uint8_t irq[9] = { 0x89, 6, 0, 0x03, 1 };
	memcpy(irq + 5, &gsi, 4);

	size_t dev = open_device(a, "GED_");
	put_name(a, "_HID");
	put_string(a, "ACPI0013");
	put_name(a, "_CRS");
	put8(a, AML_BUFFER);
	size_t buf = a->n;
	put8(a, AML_BYTE);
	put8(a, sizeof(irq) + sizeof(end_tag));
	put(a, irq, sizeof(irq));
	put(a, end_tag, sizeof(end_tag));
	close_pkg(a, buf);

	put8(a, AML_METHOD);
	size_t method = a->n;
	put(a, "_EVT", 4);
	put8(a, 1);                          /* one argument (the GSI), not serialized */
	put8(a, AML_NOTIFY);
	put8(a, AML_ROOT);
	put8(a, AML_DUAL_NAME);
	put(a, "_SB_VGEN", 8);
	put8(a, AML_BYTE);
	put8(a, 0x80);
	close_pkg(a, method);
	close_pkg(a, dev);
}

/* Processor UID and APIC ID i for CPU i, as the MP table numbers them; NMI on every
 * CPU's LINT1. */
static void build_madt(uint8_t *p, unsigned ncpus)
{
	struct madt h = { .lapic_addr = (uint32_t)LAYOUT_LAPIC_GPA };
	size_t off = sizeof(h);
	for (unsigned i = 0; i < ncpus; i++) {
		struct madt_lapic l = { .type = MADT_LAPIC, .length = sizeof(l),
					.processor_uid = (uint8_t)i, .apic_id = (uint8_t)i,
					.flags = MADT_ENABLED };
		memcpy(p + off, &l, sizeof(l));
		off += sizeof(l);
	}
	struct madt_lapic_nmi nmi = { .type = MADT_LAPIC_NMI, .length = sizeof(nmi),
				      .processor_uid = MADT_ALL_CPUS, .lint = 1 };
	memcpy(p + off, &nmi, sizeof(nmi));
	off += sizeof(nmi);
	header(&h.hdr, "APIC", (uint32_t)off, MADT_REVISION);
	memcpy(p, &h, sizeof(h));
	p[offsetof(struct acpi_header, checksum)] = table_checksum(p, off);
}

/* The DSDT's definition block: Scope (\_SB_) { VGEN, GED_ }. */
static size_t build_dsdt(struct aml *a)
{
	a->n = sizeof(struct acpi_header);
	put8(a, AML_SCOPE);
	size_t scope = a->n;
	put8(a, AML_ROOT);
	put(a, "_SB_", 4);
	vgen_device(a);
	ged_device(a);
	close_pkg(a, scope);
	if (a->full)
		return 0;
	struct acpi_header h = { 0 };
	header(&h, "DSDT", (uint32_t)a->n, 2);  /* revision 2: 64-bit integers */
	memcpy(a->b, &h, sizeof(h));
	a->b[offsetof(struct acpi_header, checksum)] = table_checksum(a->b, a->n);
	return a->n;
}

int acpi_write(const struct guest_mem *m, unsigned ncpus, struct mitos_err *e)
{
	if (ncpus == 0 || ncpus > LAYOUT_MAX_VCPUS)
		return mitos_err_set(e, -EINVAL, "ACPI: %u CPUs, must be 1 to %d", ncpus,
				     LAYOUT_MAX_VCPUS);
	uint8_t area[LAYOUT_ACPI_MAX] = { 0 };
	struct aml dsdt = { .n = 0 };
	size_t dsdt_len = build_dsdt(&dsdt);
	if (!dsdt_len)
		return mitos_err_set(e, -E2BIG, "ACPI: the DSDT does not fit in %u bytes",
				     (unsigned)DSDT_MAX);
	memcpy(area + DSDT_OFF, dsdt.b, dsdt_len);
	build_madt(area + MADT_OFF, ncpus);

	struct fadt f = {
		.dsdt = (uint32_t)(LAYOUT_ACPI_GPA + DSDT_OFF),
		.x_dsdt = LAYOUT_ACPI_GPA + DSDT_OFF,
		.boot_arch = BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_MSI | BOOT_ARCH_NO_CMOS,
		.flags = FADT_HW_REDUCED_ACPI,
		.hypervisor_id = "MITOSVMM",
	};
	header(&f.hdr, "FACP", sizeof(f), FADT_REVISION);
	f.hdr.checksum = table_checksum(&f, sizeof(f));
	memcpy(area + FADT_OFF, &f, sizeof(f));

	struct xsdt x = { .entry = { LAYOUT_ACPI_GPA + FADT_OFF, LAYOUT_ACPI_GPA + MADT_OFF } };
	header(&x.hdr, "XSDT", sizeof(x), 1);
	x.hdr.checksum = table_checksum(&x, sizeof(x));
	memcpy(area + XSDT_OFF, &x, sizeof(x));

	struct rsdp p = {
		.signature = "RSD PTR ", .oem_id = "MITOS ", .revision = 2,
		.length = sizeof(p), .xsdt_addr = LAYOUT_ACPI_GPA + XSDT_OFF,
	};
	p.checksum = table_checksum(&p, offsetof(struct rsdp, length));
	p.ext_checksum = table_checksum(&p, sizeof(p));
	memcpy(area + RSDP_OFF, &p, sizeof(p));

	int r = guest_mem_write(m, LAYOUT_ACPI_GPA, area, sizeof(area));
	if (r)
		return mitos_err_set(e, r, "ACPI: guest RAM does not cover 0x%llx-0x%llx",
				     LAYOUT_ACPI_GPA, LAYOUT_ACPI_GPA + LAYOUT_ACPI_MAX);
	return acpi_new_generation(m, e);
}

int acpi_new_generation(const struct guest_mem *m, struct mitos_err *e)
{
	uint8_t id[ACPI_VMGENID_BYTES];
	if (getrandom(id, sizeof(id), 0) != (ssize_t)sizeof(id))
		return mitos_err_set(e, -errno, "VM generation ID: getrandom: %s", strerror(errno));
	int r = guest_mem_write(m, LAYOUT_VMGENID_GPA, id, sizeof(id));
	if (r)
		return mitos_err_set(e, r, "VM generation ID: guest RAM does not cover 0x%llx",
				     LAYOUT_VMGENID_GPA);
	return 0;
}
