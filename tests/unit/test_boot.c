/* boot_write(), mptable_write() and acpi_write() on fake guest RAM: zero page, e820 map,
 * command line, identity page tables, GDT against boot_segment(), MP table as Linux
 * parses it, ACPI tables as ACPICA's disassembler reads them. */
#include "vmm/boot.h"
#include "lib/layout.h"
#include "vmm/acpi.h"
#include "vmm/mptable.h"

#include <asm/e820.h>
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MIB (1ULL << 20)
#define GIB (1ULL << 30)

struct ram {
	struct guest_mem m;
	uint8_t *buf;
	uint64_t size;
};

/* Sparse: 5 GiB costs only the pages boot_write touches. */
static void ram_new(struct ram *r, uint64_t size)
{
	r->size = size;
	r->buf = mmap(NULL, size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ck_assert_ptr_ne(r->buf, MAP_FAILED);
	guest_mem_layout(&r->m, r->buf, size);
}

static void ram_free(struct ram *r)
{
	munmap(r->buf, r->size);
}

static const uint8_t *gpa(struct ram *r, uint64_t addr, uint64_t len)
{
	const uint8_t *p = guest_mem_ptr(&r->m, addr, len);
	ck_assert_ptr_nonnull(p);
	return p;
}

static uint64_t rd64(struct ram *r, uint64_t addr)
{
	uint64_t v;
	memcpy(&v, gpa(r, addr, 8), 8);
	return v;
}

static const struct kernel_image elf_kernel = {
	.entry = 0x1000000, .load_start = 0x1000000, .load_end = 0x1400000,
};

static void read_zero_page(struct ram *r, struct boot_params *bp)
{
	memcpy(bp, gpa(r, LAYOUT_ZERO_PAGE_GPA, sizeof(*bp)), sizeof(*bp));
}

/* Sorted, non-overlapping, RAM entries inside guest RAM, and together with the reserved
 * low area they account for every byte of guest RAM. */
static void check_e820_sane(struct ram *r, const struct boot_params *bp)
{
	ck_assert_uint_gt(bp->e820_entries, 0);
	uint64_t covered = 0, prev_end = 0;
	for (unsigned i = 0; i < bp->e820_entries; i++) {
		struct boot_e820_entry en = bp->e820_table[i];
		ck_assert_uint_gt(en.size, 0);
		ck_assert_uint_ge(en.addr, prev_end);
		prev_end = en.addr + en.size;
		ck_assert_ptr_nonnull(guest_mem_ptr(&r->m, en.addr, en.size));
		covered += en.size;
	}
	ck_assert_uint_eq(covered, r->size);
	/* The boot structures the kernel must not reuse before it has read them sit in RAM
	 * it reserves itself (zero page, command line) or in a reserved range (MP table). */
	struct boot_e820_entry res = bp->e820_table[1];
	ck_assert_uint_eq(res.type, E820_RESERVED);
	ck_assert_uint_le(res.addr, LAYOUT_EBDA_GPA);
	ck_assert_uint_ge(res.addr + res.size, LAYOUT_EBDA_END);
}

static void check_e820_exact(const struct boot_params *bp, unsigned n,
			     const struct boot_e820_entry *want)
{
	ck_assert_uint_eq(bp->e820_entries, n);
	for (unsigned i = 0; i < n; i++) {
		struct boot_e820_entry got = bp->e820_table[i];
		ck_assert_msg(got.addr == want[i].addr && got.size == want[i].size &&
			      got.type == want[i].type,
			      "e820[%u] = %#llx+%#llx type %u", i, (unsigned long long)got.addr,
			      (unsigned long long)got.size, got.type);
	}
}

/* Walks the MP table from the floating pointer as Linux's smp_scan_config() finds it;
 * returns the number of processor entries. */
static unsigned check_mptable(struct ram *r, unsigned ncpus)
{
	uint64_t fp = 0;
	for (uint64_t a = 639 * 1024; a < 640 * 1024; a += 16)
		if (memcmp(gpa(r, a, 4), "_MP_", 4) == 0)
			fp = a;
	ck_assert_uint_ne(fp, 0);
	const uint8_t *f = gpa(r, fp, 16);
	uint8_t sum = 0;
	for (unsigned i = 0; i < 16; i++)
		sum += f[i];
	ck_assert_uint_eq(sum, 0);
	ck_assert_uint_eq(f[8], 1);   /* length in paragraphs */
	ck_assert_uint_eq(f[9], 4);   /* spec 1.4 */
	ck_assert_uint_eq(f[11], 0);  /* no default configuration: the table is there */
	uint32_t cfg;
	memcpy(&cfg, f + 4, 4);

	uint16_t len, count;
	memcpy(&len, gpa(r, cfg + 4, 2), 2);
	const uint8_t *t = gpa(r, cfg, len);
	ck_assert_mem_eq(t, "PCMP", 4);
	ck_assert_uint_eq(t[6], 4);
	sum = 0;
	for (unsigned i = 0; i < len; i++)
		sum += t[i];
	ck_assert_uint_eq(sum, 0);
	/* Inside the reserved area and clear of the floating pointer. */
	ck_assert_uint_ge(cfg, LAYOUT_EBDA_GPA);
	ck_assert(cfg + len <= fp || cfg >= fp + 16);
	ck_assert_uint_le(cfg + len, LAYOUT_EBDA_END);
	memcpy(&count, t + 34, 2);
	uint32_t lapic;
	memcpy(&lapic, t + 36, 4);
	ck_assert_uint_eq(lapic, LAYOUT_LAPIC_GPA);

	unsigned cpus = 0, buses = 0, ioapics = 0, irqs = 0, lints = 0, entries = 0;
	uint8_t ioapic_id = 0xff;
	size_t off = 44;
	while (off < len) {
		const uint8_t *en = t + off;
		entries++;
		switch (en[0]) {
		case 0:
			ck_assert_uint_eq(en[1], cpus);          /* APIC ID */
			ck_assert_uint_eq(en[2], 0x14);
			ck_assert_uint_eq(en[3] & 1, 1);         /* enabled */
			ck_assert_uint_eq(!!(en[3] & 2), cpus == 0); /* BSP */
			cpus++;
			off += 20;
			break;
		case 1:
			ck_assert_mem_eq(en + 2, "ISA   ", 6);
			buses++;
			off += 8;
			break;
		case 2: {
			uint32_t addr;
			memcpy(&addr, en + 4, 4);
			ck_assert_uint_eq(addr, LAYOUT_IOAPIC_GPA);
			ck_assert_uint_eq(en[1], ncpus);
			ck_assert_uint_eq(en[2], 0x11);
			ck_assert_uint_eq(en[3] & 1, 1);
			ioapic_id = en[1];
			ioapics++;
			off += 8;
			break;
		}
		case 3:
			ck_assert_uint_eq(en[1], 0);             /* vectored INT */
			ck_assert_uint_eq(en[2] | en[3], 0);     /* conforming */
			ck_assert_uint_eq(en[4], 0);             /* ISA bus */
			ck_assert_uint_eq(en[5], irqs);          /* source IRQ */
			ck_assert_uint_eq(en[6], ioapic_id);
			ck_assert_uint_eq(en[7], irqs);          /* IOAPIC pin */
			irqs++;
			off += 8;
			break;
		case 4:
			if (lints == 0) {
				ck_assert_uint_eq(en[1], 3);     /* ExtINT to the BSP's LINT0 */
				ck_assert_uint_eq(en[6], 0);
				ck_assert_uint_eq(en[7], 0);
			} else {
				ck_assert_uint_eq(en[1], 1);     /* NMI to every LINT1 */
				ck_assert_uint_eq(en[6], 0xff);
				ck_assert_uint_eq(en[7], 1);
			}
			lints++;
			off += 8;
			break;
		default:
			ck_abort_msg("unknown MP entry type %u at offset %zu", en[0], off);
		}
	}
	ck_assert_uint_eq(off, len);
	ck_assert_uint_eq(entries, count);
	ck_assert_uint_eq(buses, 1);
	ck_assert_uint_eq(ioapics, 1);
	ck_assert_uint_eq(irqs, 24);
	ck_assert_uint_eq(lints, 2);
	return cpus;
}

START_TEST(zero_page_elf_128m)
{
	struct ram r;
	ram_new(&r, 128 * MIB);
	const char *cmdline = "console=ttyS0 reboot=k panic=-1";
	struct boot_config c = {
		.cmdline = cmdline, .initrd_gpa = 0x7000000, .initrd_size = 0x123456, .ncpus = 2,
	};
	struct mitos_err e = { 0 };
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), 0);

	struct boot_params bp;
	read_zero_page(&r, &bp);
	ck_assert_uint_eq(bp.hdr.boot_flag, 0xaa55);
	ck_assert_mem_eq(&bp.hdr.header, "HdrS", 4);
	ck_assert_uint_eq(bp.hdr.version, 0x020f);
	ck_assert_uint_eq(bp.hdr.type_of_loader, 0xff);
	ck_assert_uint_eq(bp.hdr.loadflags, LOADED_HIGH | CAN_USE_HEAP);
	ck_assert_uint_eq(bp.hdr.heap_end_ptr, 0xfe00 - 0x200);
	ck_assert_uint_eq(bp.hdr.kernel_alignment, 0x1000000);
	ck_assert_uint_eq(bp.hdr.cmd_line_ptr, LAYOUT_CMDLINE_GPA);
	ck_assert_uint_eq(bp.ext_cmd_line_ptr, 0);
	ck_assert_uint_eq(bp.hdr.cmdline_size, LAYOUT_CMDLINE_MAX - 1);
	ck_assert_uint_eq(bp.hdr.ramdisk_image, 0x7000000);
	ck_assert_uint_eq(bp.hdr.ramdisk_size, 0x123456);
	ck_assert_uint_eq(bp.ext_ramdisk_image, 0);
	ck_assert_uint_eq(bp.ext_ramdisk_size, 0);
	ck_assert_str_eq((const char *)gpa(&r, LAYOUT_CMDLINE_GPA, LAYOUT_CMDLINE_MAX), cmdline);
	ck_assert_uint_eq(bp.acpi_rsdp_addr, LAYOUT_ACPI_GPA);
	ck_assert_mem_eq(gpa(&r, LAYOUT_ACPI_GPA, 8), "RSD PTR ", 8);

	check_e820_sane(&r, &bp);
	const struct boot_e820_entry want[] = {
		{ 0, LAYOUT_EBDA_GPA, E820_RAM },
		{ LAYOUT_EBDA_GPA, LAYOUT_HIMEM_GPA - LAYOUT_EBDA_GPA, E820_RESERVED },
		{ LAYOUT_HIMEM_GPA, 128 * MIB - LAYOUT_HIMEM_GPA, E820_RAM },
	};
	check_e820_exact(&bp, 3, want);
	ck_assert_uint_eq(check_mptable(&r, 2), 2);
	ram_free(&r);
}
END_TEST

/* The seed goes in one SETUP_RNG_SEED entry in usable RAM below the EBDA, named by
 * hdr.setup_data; without a seed there is no chain. */
START_TEST(rng_seed_setup_data)
{
	struct ram r;
	ram_new(&r, 128 * MIB);
	uint8_t seed[BOOT_RNG_SEED_BYTES];
	for (unsigned i = 0; i < sizeof(seed); i++)
		seed[i] = (uint8_t)(0xa5 ^ (i * 7));
	struct boot_config c = { .ncpus = 1, .rng_seed = seed };
	struct mitos_err e = { 0 };
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), 0);
	struct boot_params bp;
	read_zero_page(&r, &bp);
	ck_assert_uint_eq(bp.hdr.setup_data, LAYOUT_SETUP_DATA_GPA);
	ck_assert(LAYOUT_SETUP_DATA_GPA >= LAYOUT_CMDLINE_GPA + LAYOUT_CMDLINE_MAX);
	ck_assert(LAYOUT_SETUP_DATA_GPA + sizeof(struct setup_data) + sizeof(seed) <= LAYOUT_EBDA_GPA);
	struct setup_data sd;
	memcpy(&sd, gpa(&r, LAYOUT_SETUP_DATA_GPA, sizeof(sd)), sizeof(sd));
	ck_assert_uint_eq(sd.next, 0);
	ck_assert_uint_eq(sd.type, SETUP_RNG_SEED);
	ck_assert_uint_eq(sd.len, sizeof(seed));
	ck_assert_mem_eq(gpa(&r, LAYOUT_SETUP_DATA_GPA + sizeof(sd), sizeof(seed)), seed, sizeof(seed));

	c.rng_seed = NULL;
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), 0);
	read_zero_page(&r, &bp);
	ck_assert_uint_eq(bp.hdr.setup_data, 0);
	ram_free(&r);
}
END_TEST

START_TEST(zero_page_5g)
{
	struct ram r;
	ram_new(&r, 5 * GIB);
	/* An initrd above 4 GiB exercises the ext_ fields. */
	struct boot_config c = {
		.cmdline = "x", .initrd_gpa = 0x123456000ULL, .initrd_size = 0x1000, .ncpus = 1,
	};
	struct mitos_err e = { 0 };
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), 0);
	struct boot_params bp;
	read_zero_page(&r, &bp);
	ck_assert_uint_eq(bp.hdr.ramdisk_image, 0x23456000);
	ck_assert_uint_eq(bp.ext_ramdisk_image, 1);
	check_e820_sane(&r, &bp);
	const struct boot_e820_entry want[] = {
		{ 0, LAYOUT_EBDA_GPA, E820_RAM },
		{ LAYOUT_EBDA_GPA, LAYOUT_HIMEM_GPA - LAYOUT_EBDA_GPA, E820_RESERVED },
		{ LAYOUT_HIMEM_GPA, LAYOUT_MMIO_HOLE_START - LAYOUT_HIMEM_GPA, E820_RAM },
		{ LAYOUT_MMIO_HOLE_END, 5 * GIB - LAYOUT_MMIO_HOLE_START, E820_RAM },
	};
	check_e820_exact(&bp, 4, want);
	ck_assert_uint_eq(check_mptable(&r, 1), 1);
	ram_free(&r);
}
END_TEST

static struct kernel_image bz_kernel(void)
{
	struct kernel_image k = {
		.entry = 0x100200, .load_start = 0x100000, .load_end = 0x2000000, .bzimage = true,
	};
	k.setup.setup_sects = 27;
	k.setup.boot_flag = 0xaa55;
	k.setup.header = 0x53726448;
	k.setup.version = 0x020c;
	k.setup.loadflags = LOADED_HIGH;
	k.setup.kernel_alignment = 0x200000;
	k.setup.relocatable_kernel = 1;
	k.setup.xloadflags = XLF_KERNEL_64;
	k.setup.cmdline_size = 255;
	k.setup.init_size = 0x1234000;
	k.setup.pref_address = 0x1000000;
	return k;
}

START_TEST(zero_page_bzimage)
{
	struct ram r;
	ram_new(&r, 128 * MIB);
	struct kernel_image k = bz_kernel();
	char cmdline[300];
	memset(cmdline, 'a', 255);
	cmdline[255] = 0;
	struct boot_config c = { .cmdline = cmdline, .ncpus = 1 };
	struct mitos_err e = { 0 };
	ck_assert_int_eq(boot_write(&r.m, &k, &c, &e), 0);
	struct boot_params bp;
	read_zero_page(&r, &bp);
	/* The kernel's own fields survive; the loader's are filled in. */
	ck_assert_uint_eq(bp.hdr.setup_sects, 27);
	ck_assert_uint_eq(bp.hdr.version, 0x020c);
	ck_assert_uint_eq(bp.hdr.cmdline_size, 255);
	ck_assert_uint_eq(bp.hdr.init_size, 0x1234000);
	ck_assert_uint_eq(bp.hdr.kernel_alignment, 0x200000);
	ck_assert_uint_eq(bp.hdr.pref_address, 0x1000000);
	ck_assert_uint_eq(bp.hdr.xloadflags, XLF_KERNEL_64);
	ck_assert_uint_eq(bp.hdr.type_of_loader, 0xff);
	ck_assert_uint_eq(bp.hdr.loadflags, LOADED_HIGH | CAN_USE_HEAP);
	ck_assert_uint_eq(bp.hdr.cmd_line_ptr, LAYOUT_CMDLINE_GPA);
	ck_assert_uint_eq(bp.hdr.ramdisk_image, 0);
	ck_assert_uint_eq(bp.hdr.ramdisk_size, 0);
	ck_assert_str_eq((const char *)gpa(&r, LAYOUT_CMDLINE_GPA, LAYOUT_CMDLINE_MAX), cmdline);

	/* One byte over this kernel's own limit. */
	memset(cmdline, 'a', 256);
	cmdline[256] = 0;
	ck_assert_int_eq(boot_write(&r.m, &k, &c, &e), -E2BIG);
	ck_assert_ptr_nonnull(strstr(e.msg, "accepts 255"));
	ram_free(&r);
}
END_TEST

START_TEST(cmdline_limits)
{
	struct ram r;
	ram_new(&r, 128 * MIB);
	static char cmdline[LAYOUT_CMDLINE_MAX + 1];
	struct boot_config c = { .cmdline = cmdline, .ncpus = 1 };
	struct mitos_err e = { 0 };

	/* Stale bytes after a short command line would be read by the kernel's fixed copy. */
	memset(guest_mem_ptr(&r.m, LAYOUT_CMDLINE_GPA, LAYOUT_CMDLINE_MAX), 0xff,
	       LAYOUT_CMDLINE_MAX);
	c.cmdline = NULL;
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), 0);
	const uint8_t *area = gpa(&r, LAYOUT_CMDLINE_GPA, LAYOUT_CMDLINE_MAX);
	for (unsigned i = 0; i < LAYOUT_CMDLINE_MAX; i++)
		ck_assert_uint_eq(area[i], 0);

	c.cmdline = cmdline;
	memset(cmdline, 'b', LAYOUT_CMDLINE_MAX - 1);
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), 0);
	ck_assert_str_eq((const char *)area, cmdline);

	memset(cmdline, 'b', LAYOUT_CMDLINE_MAX);
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), -E2BIG);
	ck_assert_int_eq(e.code, -E2BIG);
	ck_assert_ptr_nonnull(strstr(e.msg, "command line is 4096 bytes, the limit is 4095"));
	ram_free(&r);
}
END_TEST

START_TEST(page_tables_identity_4g)
{
	struct ram r;
	ram_new(&r, 128 * MIB);
	/* Garbage first: boot_write must write whole tables, not rely on zeroed RAM. */
	memset(guest_mem_ptr(&r.m, LAYOUT_PML4_GPA, 0x6000), 0x5c, 0x6000);
	struct boot_config c = { .ncpus = 1 };
	struct mitos_err e = { 0 };
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), 0);

	uint64_t pml4e = rd64(&r, LAYOUT_PML4_GPA);
	ck_assert_uint_eq(pml4e & 3, 3);
	uint64_t pdpt = pml4e & 0x000ffffffffff000ULL;
	ck_assert_uint_eq(pdpt, LAYOUT_PDPT_GPA);
	for (unsigned i = 1; i < 512; i++)
		ck_assert_uint_eq(rd64(&r, LAYOUT_PML4_GPA + 8 * i), 0);
	for (unsigned i = 4; i < 512; i++)
		ck_assert_uint_eq(rd64(&r, pdpt + 8 * i), 0);
	/* Every 2 MiB of the first 4 GiB, the MMIO hole included, maps to itself. */
	for (uint64_t va = 0; va < 4 * GIB; va += 2 * MIB) {
		uint64_t pdpte = rd64(&r, pdpt + 8 * (va >> 30));
		ck_assert_uint_eq(pdpte & 0x83, 3);
		uint64_t pde = rd64(&r, (pdpte & 0x000ffffffffff000ULL) + 8 * ((va >> 21) & 511));
		ck_assert_uint_eq(pde & 0x83, 0x83);
		ck_assert_uint_eq(pde & 0x000fffffffe00000ULL, va);
		ck_assert_uint_eq(pde & ~0x000fffffffe00000ULL, 0x83);
	}
	/* The tables themselves do not overlap the other boot structures. */
	ck_assert_uint_ge(LAYOUT_PD_GPA + 4 * 0x1000, LAYOUT_PDPT_GPA + 0x1000);
	ck_assert_uint_le(LAYOUT_PD_GPA + 4 * 0x1000, LAYOUT_CMDLINE_GPA);
	ram_free(&r);
}
END_TEST

/* An independent decoder of a GDT entry, the way the CPU reads it. */
static void decode(uint64_t d, uint64_t upper, struct kvm_segment *s)
{
	memset(s, 0, sizeof(*s));
	s->base = (d >> 16 & 0xffffff) | (d >> 56) << 24;
	uint32_t limit = (uint32_t)(d & 0xffff) | (uint32_t)(d >> 48 & 0xf) << 16;
	s->g = d >> 55 & 1;
	s->limit = s->g ? limit << 12 | 0xfff : limit;
	s->type = d >> 40 & 0xf;
	s->s = d >> 44 & 1;
	s->dpl = d >> 45 & 3;
	s->present = d >> 47 & 1;
	s->avl = d >> 52 & 1;
	s->l = d >> 53 & 1;
	s->db = d >> 54 & 1;
	if (!s->s)
		s->base |= upper << 32;
}

static void assert_seg_eq(const struct kvm_segment *a, const struct kvm_segment *b)
{
	ck_assert_uint_eq(a->base, b->base);
	ck_assert_uint_eq(a->limit, b->limit);
	ck_assert_uint_eq(a->type, b->type);
	ck_assert_uint_eq(a->present, b->present);
	ck_assert_uint_eq(a->dpl, b->dpl);
	ck_assert_uint_eq(a->db, b->db);
	ck_assert_uint_eq(a->s, b->s);
	ck_assert_uint_eq(a->l, b->l);
	ck_assert_uint_eq(a->g, b->g);
	ck_assert_uint_eq(a->avl, b->avl);
}

START_TEST(gdt_matches_boot_segment)
{
	struct ram r;
	ram_new(&r, 128 * MIB);
	memset(guest_mem_ptr(&r.m, LAYOUT_GDT_GPA, 0x100), 0xee, 0x100);
	struct boot_config c = { .ncpus = 1 };
	struct mitos_err e = { 0 };
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), 0);

	ck_assert_uint_eq(BOOT_GDT_LIMIT, 47);
	ck_assert_uint_le(LAYOUT_GDT_GPA + BOOT_GDT_LIMIT + 1, LAYOUT_IDT_GPA);
	uint64_t g[BOOT_GDT_ENTRIES];
	for (unsigned i = 0; i < BOOT_GDT_ENTRIES; i++)
		g[i] = rd64(&r, LAYOUT_GDT_GPA + 8 * i);
	ck_assert_uint_eq(g[0], 0);
	ck_assert_uint_eq(g[1], 0);
	ck_assert_uint_eq(g[5], 0);
	/* The IDT boot_write points nowhere: every gate is not-present. */
	for (unsigned i = 0; i <= BOOT_IDT_LIMIT; i++)
		ck_assert_uint_eq(gpa(&r, LAYOUT_IDT_GPA, BOOT_IDT_LIMIT + 1)[i], 0);

	const uint16_t sels[] = { LAYOUT_SEL_CODE64, LAYOUT_SEL_DATA, LAYOUT_SEL_TSS };
	for (unsigned i = 0; i < 3; i++) {
		struct kvm_segment want, got;
		unsigned idx = sels[i] / 8;
		decode(g[idx], g[idx + 1], &want);
		boot_segment(sels[i], &got);
		assert_seg_eq(&got, &want);
		ck_assert_uint_eq(got.selector, sels[i]);
		ck_assert_uint_eq(got.unusable, 0);
		ck_assert_uint_eq(got.present, 1);
		ck_assert_uint_eq(got.dpl, 0);
		ck_assert_uint_eq(got.base, 0);
	}

	/* What the 64-bit boot protocol and VM entry require of each. */
	struct kvm_segment cs, ds, tr, null;
	boot_segment(LAYOUT_SEL_CODE64, &cs);
	ck_assert(cs.l == 1 && cs.db == 0 && cs.s == 1 && cs.type == 0xb && cs.g == 1);
	ck_assert_uint_eq(cs.limit, 0xffffffff);
	boot_segment(LAYOUT_SEL_DATA, &ds);
	ck_assert(ds.l == 0 && ds.db == 1 && ds.s == 1 && ds.type == 0x3 && ds.g == 1);
	ck_assert_uint_eq(ds.limit, 0xffffffff);
	boot_segment(LAYOUT_SEL_TSS, &tr);
	ck_assert(tr.s == 0 && tr.type == 0xb);
	const uint16_t unusable[] = { 0, 0x8, 0x28, 0x30, 0xfff8 };
	for (unsigned i = 0; i < 5; i++) {
		boot_segment(unusable[i], &null);
		ck_assert_uint_eq(null.unusable, 1);
		ck_assert_uint_eq(null.present, 0);
		ck_assert_uint_eq(null.selector, unusable[i]);
	}
	ram_free(&r);
}
END_TEST

static const unsigned mp_counts[] = { 1, 2, 37, 38, LAYOUT_MAX_VCPUS };

START_TEST(mptable_cpus)
{
	struct ram r;
	ram_new(&r, 128 * MIB);
	struct mitos_err e = { 0 };
	/* Write a bigger table first: a smaller one must not leave its entries behind. */
	ck_assert_int_eq(mptable_write(&r.m, LAYOUT_MAX_VCPUS, &e), 0);
	ck_assert_int_eq(mptable_write(&r.m, mp_counts[_i], &e), 0);
	ck_assert_uint_eq(check_mptable(&r, mp_counts[_i]), mp_counts[_i]);
	ram_free(&r);
}
END_TEST

START_TEST(mptable_bad_counts)
{
	struct ram r;
	ram_new(&r, 128 * MIB);
	struct mitos_err e = { 0 };
	ck_assert_int_eq(mptable_write(&r.m, LAYOUT_MAX_VCPUS + 1, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "65 CPUs"));
	ck_assert_int_eq(mptable_write(&r.m, 0, &e), -EINVAL);
	struct boot_config c = { .ncpus = LAYOUT_MAX_VCPUS + 1 };
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), -EINVAL);
	/* Nothing half-written. */
	for (uint64_t a = LAYOUT_EBDA_GPA; a < LAYOUT_EBDA_END; a += 16)
		ck_assert(memcmp(gpa(&r, a, 4), "_MP_", 4) != 0);
	ram_free(&r);
}
END_TEST

START_TEST(bad_ram_and_initrd)
{
	struct ram r;
	struct mitos_err e = { 0 };
	struct boot_config c = { .ncpus = 1 };
	ram_new(&r, MIB);
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "past 1 MiB"));
	ram_free(&r);

	ram_new(&r, 128 * MIB);
	c.initrd_gpa = 128 * MIB - 0x1000;
	c.initrd_size = 0x2000;
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "initrd"));
	c.initrd_gpa = UINT64_MAX - 0xfff;
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), -EINVAL);
	ram_free(&r);
}
END_TEST


static uint8_t sum(const uint8_t *p, size_t len)
{
	uint8_t s = 0;
	for (size_t i = 0; i < len; i++)
		s += p[i];
	return s;
}

static uint32_t rd32(struct ram *r, uint64_t addr)
{
	uint32_t v;
	memcpy(&v, gpa(r, addr, 4), 4);
	return v;
}

/* A table named by `addr`: its signature, and the checksum over its own length. */
static uint32_t check_table(struct ram *r, uint64_t addr, const char *sig)
{
	ck_assert_mem_eq(gpa(r, addr, 4), sig, 4);
	uint32_t len = rd32(r, addr + 4);
	ck_assert_uint_ge(len, 36);
	ck_assert_uint_eq(sum(gpa(r, addr, len), len), 0);
	return len;
}

/* The MADT lists CPUs 0..ncpus-1 (processor UID = APIC ID = index, enabled) and one
 * LINT1 NMI for all, and no IOAPIC: that stays in the MP table. */
static void check_madt(struct ram *r, uint64_t madt, unsigned ncpus)
{
	uint32_t len = check_table(r, madt, "APIC");
	ck_assert_uint_eq(rd32(r, madt + 36), LAYOUT_LAPIC_GPA);
	ck_assert_uint_eq(rd32(r, madt + 40), 0);
	unsigned cpus = 0, nmis = 0;
	for (uint64_t a = madt + 44; a < madt + len;) {
		const uint8_t *e = gpa(r, a, 2);
		ck_assert_uint_ge(e[1], 2);
		if (e[0] == 0) {
			ck_assert_uint_eq(e[1], 8);
			ck_assert_uint_eq(e[2], cpus);
			ck_assert_uint_eq(e[3], cpus);
			ck_assert_uint_eq(rd32(r, a + 4), 1);
			cpus++;
		} else {
			ck_assert_uint_eq(e[0], 4);
			ck_assert_uint_eq(e[1], 6);
			ck_assert_uint_eq(e[2], 0xff);
			ck_assert_uint_eq(e[5], 1);
			nmis++;
		}
		a += e[1];
	}
	ck_assert_uint_eq(cpus, ncpus);
	ck_assert_uint_eq(nmis, 1);
}

/* RSDP -> XSDT -> FADT -> DSDT and the MADT, the way ACPICA walks them, every checksum
 * right; the FADT hardware-reduced with no FACS; the generation ID non-zero. Returns
 * the DSDT's address. */
static uint64_t check_acpi(struct ram *r, unsigned ncpus)
{
	const uint8_t *rsdp = gpa(r, LAYOUT_ACPI_GPA, 36);
	ck_assert_mem_eq(rsdp, "RSD PTR ", 8);
	ck_assert_uint_eq(sum(rsdp, 20), 0);
	ck_assert_uint_eq(sum(rsdp, 36), 0);
	ck_assert_uint_eq(rsdp[15], 2);
	ck_assert_uint_eq(rd32(r, LAYOUT_ACPI_GPA + 20), 36);
	uint64_t xsdt = rd64(r, LAYOUT_ACPI_GPA + 24);
	ck_assert_uint_eq(check_table(r, xsdt, "XSDT"), 36 + 16);
	uint64_t fadt = rd64(r, xsdt + 36);
	check_madt(r, rd64(r, xsdt + 44), ncpus);
	ck_assert_uint_eq(check_table(r, fadt, "FACP"), 276);
	ck_assert_uint_eq(*gpa(r, fadt + 8, 1), 6);
	ck_assert_uint_eq(rd32(r, fadt + 112), 1U << 20);    /* HW_REDUCED_ACPI */
	ck_assert_uint_eq(rd32(r, fadt + 36), 0);            /* no FACS */
	ck_assert_uint_eq(rd64(r, fadt + 132), 0);
	uint64_t dsdt = rd64(r, fadt + 140);
	ck_assert_uint_eq(rd32(r, fadt + 40), dsdt);
	check_table(r, dsdt, "DSDT");
	ck_assert(rd64(r, LAYOUT_VMGENID_GPA) | rd64(r, LAYOUT_VMGENID_GPA + 8));
	return dsdt;
}

START_TEST(acpi_tables)
{
	struct ram r;
	ram_new(&r, 128 * MIB);
	struct mitos_err e = { 0 };
	/* A bigger MADT first: a smaller one must not leave its entries behind. */
	ck_assert_int_eq(acpi_write(&r.m, LAYOUT_MAX_VCPUS, &e), 0);
	struct boot_config c = { .ncpus = mp_counts[_i] };
	ck_assert_int_eq(boot_write(&r.m, &elf_kernel, &c, &e), 0);
	check_acpi(&r, mp_counts[_i]);
	ck_assert_int_eq(acpi_write(&r.m, 0, &e), -EINVAL);
	ck_assert_int_eq(acpi_write(&r.m, LAYOUT_MAX_VCPUS + 1, &e), -EINVAL);
	ram_free(&r);
}
END_TEST

/* Each call draws a new ID; nothing else in the tables moves. */
START_TEST(acpi_new_generation_changes_only_the_id)
{
	struct ram r;
	ram_new(&r, 128 * MIB);
	struct mitos_err e = { 0 };
	ck_assert_int_eq(acpi_write(&r.m, 1, &e), 0);
	uint8_t tables[LAYOUT_ACPI_MAX], id[ACPI_VMGENID_BYTES];
	memcpy(tables, gpa(&r, LAYOUT_ACPI_GPA, sizeof(tables)), sizeof(tables));
	memcpy(id, gpa(&r, LAYOUT_VMGENID_GPA, sizeof(id)), sizeof(id));
	for (int i = 0; i < 100; i++) {
		ck_assert_int_eq(acpi_new_generation(&r.m, &e), 0);
		ck_assert(memcmp(id, gpa(&r, LAYOUT_VMGENID_GPA, sizeof(id)), sizeof(id)) != 0);
		memcpy(id, gpa(&r, LAYOUT_VMGENID_GPA, sizeof(id)), sizeof(id));
	}
	ck_assert_mem_eq(tables, gpa(&r, LAYOUT_ACPI_GPA, sizeof(tables)), sizeof(tables));
	ram_free(&r);
}
END_TEST

START_TEST(acpi_ram_too_small)
{
	struct ram r;
	ram_new(&r, 0x80000);
	struct mitos_err e = { 0 };
	ck_assert_int_eq(acpi_write(&r.m, 1, &e), -EFAULT);
	ck_assert_ptr_nonnull(strstr(e.msg, "ACPI"));
	ram_free(&r);
}
END_TEST

/* ACPICA's own disassembler (iasl, Debian's acpica-tools, installed by tools/setup)
 * reads the DSDT back: the AML must decode, without errors, into exactly the devices
 * Linux's vmgenid and GED drivers look for. */
START_TEST(acpi_dsdt_disassembles)
{
	struct ram r;
	ram_new(&r, 128 * MIB);
	struct mitos_err e = { 0 };
	ck_assert_int_eq(acpi_write(&r.m, 1, &e), 0);
	uint64_t dsdt = check_acpi(&r, 1);
	char dir[] = "/tmp/mitos-acpi-XXXXXX";
	ck_assert_ptr_nonnull(mkdtemp(dir));
	char path[128], cmd[512];
	snprintf(path, sizeof(path), "%s/dsdt.dat", dir);
	FILE *f = fopen(path, "wb");
	ck_assert_ptr_nonnull(f);
	uint32_t len = rd32(&r, dsdt + 4);
	ck_assert_uint_eq(fwrite(gpa(&r, dsdt, len), 1, len, f), len);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "cd %s && iasl -d dsdt.dat > iasl.log 2>&1", dir);
	int rc = system(cmd);
	if (rc != 0) {
		snprintf(cmd, sizeof(cmd), "cat %s/iasl.log >&2; command -v iasl >/dev/null || "
			 "echo 'iasl is missing: run tools/setup (Debian package acpica-tools)' >&2", dir);
		ck_assert_int_eq(system(cmd), 0);
	}
	ck_assert_int_eq(rc, 0);
	snprintf(path, sizeof(path), "%s/dsdt.dsl", dir);
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	static char dsl[16384];
	size_t n = fread(dsl, 1, sizeof(dsl) - 1, f);
	fclose(f);
	dsl[n] = 0;
	char addr[64];
	snprintf(addr, sizeof(addr), "0x%08llX", LAYOUT_VMGENID_GPA);
	static const char *const want[] = {
		"Scope (\\_SB)", "Device (VGEN)", "Name (_CID, \"VM_GEN_COUNTER\")",
		"Name (ADDR, Package (0x02)", "Device (GED)", "Name (_HID, \"ACPI0013\"",
		"Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
		"0x00000017,", "Method (_EVT, 1, NotSerialized)", "Notify (\\_SB.VGEN, 0x80)",
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		ck_assert_msg(strstr(dsl, want[i]), "no \"%s\" in:\n%s", want[i], dsl);
	ck_assert_msg(strstr(dsl, addr), "no %s in:\n%s", addr, dsl);
	ck_assert_msg(!strstr(dsl, "Error") && !strstr(dsl, "AE_"), "%s", dsl);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
	ram_free(&r);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("boot");
	TCase *zp = tcase_create("zero_page");
	tcase_set_timeout(zp, 60);
	tcase_add_test(zp, zero_page_elf_128m);
	tcase_add_test(zp, zero_page_5g);
	tcase_add_test(zp, rng_seed_setup_data);
	tcase_add_test(zp, zero_page_bzimage);
	tcase_add_test(zp, cmdline_limits);
	tcase_add_test(zp, bad_ram_and_initrd);
	suite_add_tcase(s, zp);
	TCase *cpu = tcase_create("cpu_tables");
	tcase_set_timeout(cpu, 60);
	tcase_add_test(cpu, page_tables_identity_4g);
	tcase_add_test(cpu, gdt_matches_boot_segment);
	suite_add_tcase(s, cpu);
	TCase *mp = tcase_create("mptable");
	tcase_set_timeout(mp, 60);
	tcase_add_loop_test(mp, mptable_cpus, 0, sizeof(mp_counts) / sizeof(mp_counts[0]));
	tcase_add_test(mp, mptable_bad_counts);
	suite_add_tcase(s, mp);
	TCase *acpi = tcase_create("acpi");
	tcase_set_timeout(acpi, 60);
	tcase_add_loop_test(acpi, acpi_tables, 0, sizeof(mp_counts) / sizeof(mp_counts[0]));
	tcase_add_test(acpi, acpi_new_generation_changes_only_the_id);
	tcase_add_test(acpi, acpi_ram_too_small);
	tcase_add_test(acpi, acpi_dsdt_disassembles);
	suite_add_tcase(s, acpi);

	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
