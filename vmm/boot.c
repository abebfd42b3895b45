#include "boot.h"
#include "acpi.h"
#include "lib/layout.h"
#include "mptable.h"

#include <asm/e820.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#define HDRS_MAGIC        0x53726448U  /* "HdrS" */
#define BOOT_FLAG_MAGIC   0xaa55
#define ELF_HDR_VERSION   0x020f
#define LOADER_UNDEFINED  0xff         /* type_of_loader: no assigned boot loader ID */
/* The protocol's recommended heap end (0xfe00) minus 0x200 as heap_end_ptr wants it. */
#define HEAP_END_PTR      (0xfe00 - 0x200)
#define ELF_KERNEL_ALIGN  0x1000000

#define PTE_PRESENT       0x1ULL
#define PTE_WRITE         0x2ULL
#define PTE_HUGE          0x80ULL
#define PAGE_2M           0x200000ULL
#define PT_ENTRIES        512
#define IDENTITY_PDS      4            /* 4 x 1 GiB: all of the 32-bit space */

_Static_assert(sizeof(struct boot_params) == 4096, "the zero page is one page");
_Static_assert(LAYOUT_GDT_GPA + BOOT_GDT_LIMIT < LAYOUT_IDT_GPA, "GDT overlaps the IDT");

/* Descriptors in the layout the CPU reads; boot_segment() decodes these same values. */
static const uint64_t gdt[BOOT_GDT_ENTRIES] = {
	[LAYOUT_SEL_CODE64 / 8] = 0x00af9b000000ffffULL, /* flat, L=1, execute/read, accessed */
	[LAYOUT_SEL_DATA / 8]   = 0x00cf93000000ffffULL, /* flat, 32-bit, read/write, accessed */
	/* Busy 64-bit TSS at 0: Linux loads its own TR before anything could use this one,
	 * but VM entry wants a valid TR. The next entry is the descriptor's upper half. */
	[LAYOUT_SEL_TSS / 8]    = 0x008f8b000000ffffULL,
};

void boot_segment(uint16_t selector, struct kvm_segment *seg)
{
	memset(seg, 0, sizeof(*seg));
	seg->selector = selector;
	unsigned i = selector >> 3;
	uint64_t d = i < BOOT_GDT_ENTRIES ? gdt[i] : 0;
	seg->present = (d >> 47) & 1;
	if (!seg->present) {
		seg->unusable = 1;
		return;
	}
	seg->base = ((d >> 16) & 0xffffff) | ((d >> 32) & 0xff000000);
	seg->type = (d >> 40) & 0xf;
	seg->s = (d >> 44) & 1;
	seg->dpl = (d >> 45) & 3;
	seg->avl = (d >> 52) & 1;
	seg->l = (d >> 53) & 1;
	seg->db = (d >> 54) & 1;
	seg->g = (d >> 55) & 1;
	uint32_t limit = (uint32_t)((d & 0xffff) | ((d >> 32) & 0xf0000));
	/* KVM wants the byte-granular limit the CPU would compute. */
	seg->limit = seg->g ? (limit << 12) | 0xfff : limit;
	if (!seg->s && i + 1 < BOOT_GDT_ENTRIES)
		seg->base |= gdt[i + 1] << 32;
}

static int write_tables(const struct guest_mem *m)
{
	static const uint8_t idt[BOOT_IDT_LIMIT + 1];
	uint64_t page[PT_ENTRIES] = { LAYOUT_PDPT_GPA | PTE_PRESENT | PTE_WRITE };
	int r;
	if ((r = guest_mem_write(m, LAYOUT_GDT_GPA, gdt, sizeof(gdt))) ||
	    (r = guest_mem_write(m, LAYOUT_IDT_GPA, idt, sizeof(idt))) ||
	    (r = guest_mem_write(m, LAYOUT_PML4_GPA, page, sizeof(page))))
		return r;
	memset(page, 0, sizeof(page));
	for (unsigned i = 0; i < IDENTITY_PDS; i++)
		page[i] = (LAYOUT_PD_GPA + i * sizeof(page)) | PTE_PRESENT | PTE_WRITE;
	if ((r = guest_mem_write(m, LAYOUT_PDPT_GPA, page, sizeof(page))))
		return r;
	/* 2 MiB pages over the MMIO hole too: devices and the APICs are reachable before the
	 * kernel builds its own tables. */
	for (unsigned i = 0; i < IDENTITY_PDS; i++) {
		for (unsigned j = 0; j < PT_ENTRIES; j++)
			page[j] = ((uint64_t)(i * PT_ENTRIES + j) * PAGE_2M) |
				  PTE_PRESENT | PTE_WRITE | PTE_HUGE;
		if ((r = guest_mem_write(m, LAYOUT_PD_GPA + i * sizeof(page), page, sizeof(page))))
			return r;
	}
	return 0;
}

static void e820_add(struct boot_params *bp, uint64_t addr, uint64_t size, uint32_t type)
{
	bp->e820_table[bp->e820_entries++] = (struct boot_e820_entry){
		.addr = addr, .size = size, .type = type };
}

static void e820_fill(struct boot_params *bp, const struct guest_mem *m)
{
	e820_add(bp, 0, LAYOUT_EBDA_GPA, E820_RAM);
	e820_add(bp, LAYOUT_EBDA_GPA, LAYOUT_HIMEM_GPA - LAYOUT_EBDA_GPA, E820_RESERVED);
	e820_add(bp, LAYOUT_HIMEM_GPA, m->regions[0].size - LAYOUT_HIMEM_GPA, E820_RAM);
	if (m->nregions > 1)
		e820_add(bp, m->regions[1].gpa, m->regions[1].size, E820_RAM);
}

static void fill_zero_page(struct boot_params *bp, const struct guest_mem *m,
			   const struct kernel_image *k, const struct boot_config *c)
{
	memset(bp, 0, sizeof(*bp));
	if (k->bzimage) {
		bp->hdr = k->setup;
	} else {
		bp->hdr.boot_flag = BOOT_FLAG_MAGIC;
		bp->hdr.header = HDRS_MAGIC;
		bp->hdr.version = ELF_HDR_VERSION;
		bp->hdr.kernel_alignment = ELF_KERNEL_ALIGN;
		bp->hdr.cmdline_size = LAYOUT_CMDLINE_MAX - 1;
	}
	bp->hdr.type_of_loader = LOADER_UNDEFINED;
	bp->hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
	bp->hdr.heap_end_ptr = HEAP_END_PTR;
	bp->hdr.cmd_line_ptr = (uint32_t)LAYOUT_CMDLINE_GPA;
	bp->ext_cmd_line_ptr = (uint32_t)(LAYOUT_CMDLINE_GPA >> 32);
	bp->hdr.ramdisk_image = (uint32_t)c->initrd_gpa;
	bp->ext_ramdisk_image = (uint32_t)(c->initrd_gpa >> 32);
	bp->hdr.ramdisk_size = (uint32_t)c->initrd_size;
	bp->ext_ramdisk_size = (uint32_t)(c->initrd_size >> 32);
	bp->acpi_rsdp_addr = LAYOUT_ACPI_GPA;
	e820_fill(bp, m);
}

/* Linux mixes the seed into its RNG at setup_arch() and zeroes it (credited as entropy
 * with random.trust_bootloader=on), so even its first random numbers differ per boot. */
static int write_rng_seed(const struct guest_mem *m, const uint8_t *seed, struct boot_params *bp)
{
	struct {
		struct setup_data hdr;
		uint8_t seed[BOOT_RNG_SEED_BYTES];
	} sd = { .hdr = { .next = 0, .type = SETUP_RNG_SEED, .len = BOOT_RNG_SEED_BYTES } };
	memcpy(sd.seed, seed, sizeof(sd.seed));
	int r = guest_mem_write(m, LAYOUT_SETUP_DATA_GPA, &sd, sizeof(sd));
	if (!r)
		bp->hdr.setup_data = LAYOUT_SETUP_DATA_GPA;
	return r;
}

static int check_config(const struct guest_mem *m, const struct kernel_image *k,
			const struct boot_config *c, size_t cmdline_len, struct mitos_err *e)
{
	if (m->nregions == 0 || m->regions[0].size <= LAYOUT_HIMEM_GPA)
		return mitos_err_set(e, -EINVAL, "boot: guest RAM (%" PRIu64
				     " KiB) must extend past 1 MiB", m->size >> 10);
	if (cmdline_len > LAYOUT_CMDLINE_MAX - 1)
		return mitos_err_set(e, -E2BIG,
				     "boot: kernel command line is %zu bytes, the limit is %llu",
				     cmdline_len, LAYOUT_CMDLINE_MAX - 1);
	if (k->bzimage && cmdline_len > k->setup.cmdline_size)
		return mitos_err_set(e, -E2BIG,
				     "boot: kernel command line is %zu bytes, this kernel accepts %u",
				     cmdline_len, k->setup.cmdline_size);
	if (c->initrd_size && !guest_mem_ptr(m, c->initrd_gpa, c->initrd_size))
		return mitos_err_set(e, -EINVAL,
				     "boot: initrd at 0x%" PRIx64 " (%" PRIu64 " bytes) is outside guest RAM",
				     c->initrd_gpa, c->initrd_size);
	return 0;
}

int boot_write(const struct guest_mem *m, const struct kernel_image *k,
	       const struct boot_config *c, struct mitos_err *e)
{
	const char *cmdline = c->cmdline ? c->cmdline : "";
	size_t cmdline_len = strlen(cmdline);
	int r = check_config(m, k, c, cmdline_len, e);
	if (r)
		return r;
	if ((r = mptable_write(m, c->ncpus, e)) || (r = acpi_write(m, c->ncpus, e)))
		return r;
	if ((r = write_tables(m)))
		return mitos_err_set(e, r, "boot: cannot write the GDT and page tables");

	/* The whole area, so the kernel's fixed-size copy of it reads zeros past the NUL. */
	char area[LAYOUT_CMDLINE_MAX] = { 0 };
	memcpy(area, cmdline, cmdline_len);
	if ((r = guest_mem_write(m, LAYOUT_CMDLINE_GPA, area, sizeof(area))))
		return mitos_err_set(e, r, "boot: cannot write the command line");

	struct boot_params bp;
	fill_zero_page(&bp, m, k, c);
	if (c->rng_seed && (r = write_rng_seed(m, c->rng_seed, &bp)))
		return mitos_err_set(e, r, "boot: cannot write the RNG seed");
	if ((r = guest_mem_write(m, LAYOUT_ZERO_PAGE_GPA, &bp, sizeof(bp))))
		return mitos_err_set(e, r, "boot: cannot write the zero page");
	return 0;
}
