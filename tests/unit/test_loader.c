/* Kernel and initrd loaders: minimal ELF64 and bzImage images built here, loaded into fake
 * guest RAM, then every corruption a hostile file can carry. */
#include "lib/layout.h"
#include "vmm/loader.h"

#include <check.h>
#include <elf.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIB (1ULL << 20)
#define GIB (1ULL << 30)
#define RAM_SIZE (32 * MIB)
#define PREFILL 0xaa

/* ELF: segment 0 (code, entry inside), a PT_NOTE to skip, segment 2 (data + bss). */
#define ELF_PHNUM      3
#define ELF_SEG0_PADDR 0x200000ULL
#define ELF_SEG0_OFF   0x100
#define ELF_SEG0_SIZE  0x100
#define ELF_SEG2_PADDR 0x201000ULL
#define ELF_SEG2_OFF   0x200
#define ELF_SEG2_FILESZ 0x80
#define ELF_SEG2_MEMSZ 0x2000
#define ELF_LEN        0x280
#define ELF_ENTRY      0x200010ULL
#define ELF_END        (ELF_SEG2_PADDR + ELF_SEG2_MEMSZ)
#define VIRT_BASE      0xffffffff81000000ULL

/* bzImage: 2 setup sectors + boot sector, then 4 KiB of "compressed kernel". */
#define BZ_SETUP_SECTS 2
#define BZ_SETUP_LEN   ((BZ_SETUP_SECTS + 1) * 512)
#define BZ_PM_LEN      0x1000
#define BZ_LEN         (BZ_SETUP_LEN + BZ_PM_LEN)
#define BZ_INIT_SIZE   0x800000
#define BZ_PREF        0x1000000ULL

struct ram {
	struct guest_mem m;
	uint8_t *buf;
	uint64_t map_size;
};

/* Sparse and lazily zeroed, so even 5 GiB costs only the pages touched. */
static void ram_new(struct ram *r, uint64_t size)
{
	r->map_size = (size + 0xfff) & ~0xfffULL;
	r->buf = mmap(NULL, r->map_size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ck_assert_ptr_ne(r->buf, MAP_FAILED);
	guest_mem_layout(&r->m, r->buf, size);
}

static void ram_free(struct ram *r)
{
	munmap(r->buf, r->map_size);
}

static uint8_t *gpa(struct ram *r, uint64_t addr, uint64_t len)
{
	uint8_t *p = guest_mem_ptr(&r->m, addr, len);
	ck_assert_ptr_nonnull(p);
	return p;
}

static bool all_bytes(const uint8_t *p, size_t len, uint8_t v)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != v)
			return false;
	return true;
}

static void get_phdr(const uint8_t *f, unsigned i, Elf64_Phdr *ph)
{
	memcpy(ph, f + sizeof(Elf64_Ehdr) + i * sizeof(*ph), sizeof(*ph));
}

static void put_phdr(uint8_t *f, unsigned i, const Elf64_Phdr *ph)
{
	memcpy(f + sizeof(Elf64_Ehdr) + i * sizeof(*ph), ph, sizeof(*ph));
}

static void get_ehdr(const uint8_t *f, Elf64_Ehdr *eh)
{
	memcpy(eh, f, sizeof(*eh));
}

static void put_ehdr(uint8_t *f, const Elf64_Ehdr *eh)
{
	memcpy(f, eh, sizeof(*eh));
}

static void build_elf(uint8_t *f)
{
	memset(f, 0, ELF_LEN);
	Elf64_Ehdr eh = {
		.e_ident = { ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3, ELFCLASS64, ELFDATA2LSB, EV_CURRENT },
		.e_type = ET_EXEC, .e_machine = EM_X86_64, .e_version = EV_CURRENT,
		.e_entry = ELF_ENTRY, .e_phoff = sizeof(Elf64_Ehdr), .e_ehsize = sizeof(Elf64_Ehdr),
		.e_phentsize = sizeof(Elf64_Phdr), .e_phnum = ELF_PHNUM,
	};
	put_ehdr(f, &eh);
	Elf64_Phdr code = {
		.p_type = PT_LOAD, .p_flags = PF_R | PF_X, .p_offset = ELF_SEG0_OFF,
		.p_vaddr = ELF_SEG0_PADDR, .p_paddr = ELF_SEG0_PADDR,
		.p_filesz = ELF_SEG0_SIZE, .p_memsz = ELF_SEG0_SIZE, .p_align = 0x1000,
	};
	Elf64_Phdr note = { .p_type = PT_NOTE, .p_offset = 0xffffffff, .p_filesz = 0x10 };
	Elf64_Phdr data = {
		.p_type = PT_LOAD, .p_flags = PF_R | PF_W, .p_offset = ELF_SEG2_OFF,
		.p_vaddr = ELF_SEG2_PADDR, .p_paddr = ELF_SEG2_PADDR,
		.p_filesz = ELF_SEG2_FILESZ, .p_memsz = ELF_SEG2_MEMSZ, .p_align = 0x1000,
	};
	put_phdr(f, 0, &code);
	put_phdr(f, 1, &note);
	put_phdr(f, 2, &data);
	for (unsigned i = 0; i < ELF_SEG0_SIZE; i++)
		f[ELF_SEG0_OFF + i] = (uint8_t)(i + 1);
	memset(f + ELF_SEG2_OFF, 0x5a, ELF_SEG2_FILESZ);
}

static void build_bz(uint8_t *f)
{
	memset(f, 0, BZ_LEN);
	struct setup_header h = {
		.setup_sects = BZ_SETUP_SECTS, .syssize = BZ_PM_LEN / 16, .boot_flag = 0xaa55,
		.header = 0x53726448, .version = 0x020f, .loadflags = LOADED_HIGH,
		.initrd_addr_max = 0x7fffffff, .kernel_alignment = 0x200000,
		.relocatable_kernel = 1, .xloadflags = XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
		.cmdline_size = 2047, .pref_address = BZ_PREF, .init_size = BZ_INIT_SIZE,
	};
	memcpy(f + 0x1f1, &h, sizeof(h));
	f[0x200] = 0xeb;
	f[0x201] = (uint8_t)(0x1f1 + sizeof(h) - 0x202);
	for (unsigned i = 0; i < BZ_PM_LEN; i++)
		f[BZ_SETUP_LEN + i] = (uint8_t)(i * 7 + 3);
}

static void get_bz_hdr(const uint8_t *f, struct setup_header *h)
{
	memcpy(h, f + 0x1f1, sizeof(*h));
}

static void put_bz_hdr(uint8_t *f, const struct setup_header *h)
{
	memcpy(f + 0x1f1, h, sizeof(*h));
}

/* Fake RAM with the ELF's target area prefilled, to see what was written. */
static void ram_for_elf(struct ram *r)
{
	ram_new(r, RAM_SIZE);
	memset(gpa(r, ELF_SEG0_PADDR, 0x4000), PREFILL, 0x4000);
}

/* Every failure must leave guest RAM as it was and say why. */
static void expect_fail(struct ram *r, const uint8_t *f, size_t len, int code, const char *what)
{
	struct kernel_image k;
	struct mitos_err e = { 0 };
	int ret = loader_load_kernel(&r->m, f, len, &k, &e);
	ck_assert_msg(ret == code, "len %zu: got %d (%s), expected %d (%s)", len, ret, e.msg,
		      code, what);
	ck_assert_int_eq(e.code, ret);
	if (what)
		ck_assert_msg(strstr(e.msg, what), "message \"%s\" lacks \"%s\"", e.msg, what);
	else
		ck_assert(e.msg[0] != 0);
	ck_assert(all_bytes(gpa(r, ELF_SEG0_PADDR, 0x4000), 0x4000, PREFILL));
	ck_assert(all_bytes(gpa(r, LAYOUT_BZIMAGE_LOAD_GPA, BZ_PM_LEN), BZ_PM_LEN, 0));
}

START_TEST(elf_loads)
{
	struct ram r;
	ram_for_elf(&r);
	uint8_t f[ELF_LEN];
	build_elf(f);
	struct kernel_image k;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(loader_load_kernel(&r.m, f, sizeof(f), &k, &e), 0);
	ck_assert(!k.bzimage);
	ck_assert_uint_eq(k.entry, ELF_ENTRY);
	ck_assert_uint_eq(k.load_start, ELF_SEG0_PADDR);
	ck_assert_uint_eq(k.load_end, ELF_END);
	ck_assert_mem_eq(gpa(&r, ELF_SEG0_PADDR, ELF_SEG0_SIZE), f + ELF_SEG0_OFF, ELF_SEG0_SIZE);
	ck_assert_mem_eq(gpa(&r, ELF_SEG2_PADDR, ELF_SEG2_FILESZ), f + ELF_SEG2_OFF,
			 ELF_SEG2_FILESZ);
	/* bss zeroed, nothing written past p_memsz or in the gap between the segments. */
	ck_assert(all_bytes(gpa(&r, ELF_SEG2_PADDR + ELF_SEG2_FILESZ, 0),
			    ELF_SEG2_MEMSZ - ELF_SEG2_FILESZ, 0));
	ck_assert(all_bytes(gpa(&r, ELF_END, 0x1000), 0x1000, PREFILL));
	ck_assert(all_bytes(gpa(&r, ELF_SEG0_PADDR + ELF_SEG0_SIZE, 0),
			    ELF_SEG2_PADDR - ELF_SEG0_PADDR - ELF_SEG0_SIZE, PREFILL));
	ram_free(&r);
}
END_TEST

/* A vmlinux: virtual p_vaddr and e_entry, physical p_paddr. */
START_TEST(elf_virtual_entry)
{
	struct ram r;
	ram_for_elf(&r);
	uint8_t f[ELF_LEN];
	build_elf(f);
	Elf64_Ehdr eh;
	Elf64_Phdr ph;
	get_ehdr(f, &eh);
	eh.e_entry = VIRT_BASE + 0x1040;
	put_ehdr(f, &eh);
	get_phdr(f, 0, &ph);
	ph.p_vaddr = VIRT_BASE;
	put_phdr(f, 0, &ph);
	get_phdr(f, 2, &ph);
	ph.p_vaddr = VIRT_BASE + 0x1000;
	put_phdr(f, 2, &ph);
	struct kernel_image k;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(loader_load_kernel(&r.m, f, sizeof(f), &k, &e), 0);
	ck_assert_uint_eq(k.entry, ELF_SEG2_PADDR + 0x40);

	/* Virtual entry in no segment, and physical entry in no segment. */
	build_elf(f);
	get_ehdr(f, &eh);
	eh.e_entry = VIRT_BASE + 0x1040;
	put_ehdr(f, &eh);
	memset(gpa(&r, ELF_SEG0_PADDR, 0x4000), PREFILL, 0x4000);
	expect_fail(&r, f, sizeof(f), -ENOEXEC, "entry point");
	eh.e_entry = ELF_END;
	put_ehdr(f, &eh);
	expect_fail(&r, f, sizeof(f), -ENOEXEC, "entry point");
	ram_free(&r);
}
END_TEST

START_TEST(elf_every_prefix)
{
	struct ram r;
	ram_for_elf(&r);
	uint8_t f[ELF_LEN];
	build_elf(f);
	for (size_t len = 0; len < ELF_LEN; len++) {
		/* An exact-size copy, so ASan catches any read past the end. */
		uint8_t *copy = malloc(len ? len : 1);
		memcpy(copy, f, len);
		expect_fail(&r, copy, len, -ENOEXEC, NULL);
		free(copy);
	}
	ram_free(&r);
}
END_TEST

typedef void (*corrupt_fn)(uint8_t *f);

static void c_magic(uint8_t *f) { f[EI_MAG1] = 'X'; }
static void c_class(uint8_t *f) { f[EI_CLASS] = ELFCLASS32; }
static void c_endian(uint8_t *f) { f[EI_DATA] = ELFDATA2MSB; }
#define EHDR_FIELD(name, field, value) \
	static void name(uint8_t *f) { Elf64_Ehdr eh; get_ehdr(f, &eh); eh.field = value; put_ehdr(f, &eh); }
#define PHDR_FIELD(name, i, field, value) \
	static void name(uint8_t *f) { Elf64_Phdr ph; get_phdr(f, i, &ph); ph.field = value; put_phdr(f, i, &ph); }
EHDR_FIELD(c_machine, e_machine, EM_386)
EHDR_FIELD(c_type, e_type, ET_DYN)
EHDR_FIELD(c_phentsize, e_phentsize, 32)
EHDR_FIELD(c_phnum0, e_phnum, 0)
EHDR_FIELD(c_phnum_max, e_phnum, 0xffff)
EHDR_FIELD(c_phoff_eof, e_phoff, ELF_LEN - 10)
EHDR_FIELD(c_phoff_huge, e_phoff, UINT64_MAX - 8)
PHDR_FIELD(c_off_eof, 2, p_offset, ELF_LEN)
PHDR_FIELD(c_off_huge, 2, p_offset, UINT64_MAX)
PHDR_FIELD(c_filesz_huge, 2, p_filesz, UINT64_MAX)
PHDR_FIELD(c_filesz_gt_memsz, 0, p_memsz, ELF_SEG0_SIZE / 2)
PHDR_FIELD(c_paddr_zero_page, 0, p_paddr, LAYOUT_ZERO_PAGE_GPA)
PHDR_FIELD(c_paddr_below_1m, 2, p_paddr, LAYOUT_HIMEM_GPA - 0x1000)
PHDR_FIELD(c_paddr_ram_end, 2, p_paddr, RAM_SIZE - 0x1000)
PHDR_FIELD(c_paddr_hole, 2, p_paddr, LAYOUT_MMIO_HOLE_START)
PHDR_FIELD(c_paddr_wrap, 2, p_paddr, 0xfffffffffffff000ULL)
PHDR_FIELD(c_memsz_wrap, 2, p_memsz, UINT64_MAX)
static void c_no_load(uint8_t *f)
{
	Elf64_Phdr ph;
	for (unsigned i = 0; i < ELF_PHNUM; i++) {
		get_phdr(f, i, &ph);
		ph.p_type = PT_NOTE;
		put_phdr(f, i, &ph);
	}
}

static const struct {
	corrupt_fn fn;
	int code;
	const char *what;
} elf_cases[] = {
	{ c_magic, -ENOEXEC, "neither an ELF" },
	{ c_class, -ENOEXEC, "not ELF64" },
	{ c_endian, -ENOEXEC, "little-endian" },
	{ c_machine, -ENOEXEC, "not x86-64" },
	{ c_type, -ENOEXEC, "ET_EXEC" },
	{ c_phentsize, -ENOEXEC, "program header size" },
	{ c_phnum0, -ENOEXEC, "no program headers" },
	{ c_phnum_max, -ENOEXEC, "program header table extends past end of file" },
	{ c_phoff_eof, -ENOEXEC, "program header table extends past end of file" },
	{ c_phoff_huge, -ENOEXEC, "program header table extends past end of file" },
	{ c_off_eof, -ENOEXEC, "program header 2 extends past end of file" },
	{ c_off_huge, -ENOEXEC, "program header 2 extends past end of file" },
	{ c_filesz_huge, -ENOEXEC, "program header 2 extends past end of file" },
	{ c_filesz_gt_memsz, -ENOEXEC, "exceeds memory size" },
	{ c_paddr_zero_page, -ENOEXEC, "below 1 MiB" },
	{ c_paddr_below_1m, -ENOEXEC, "below 1 MiB" },
	{ c_paddr_ram_end, -ENOMEM, "outside guest RAM" },
	{ c_paddr_hole, -ENOMEM, "outside guest RAM" },
	{ c_paddr_wrap, -ENOEXEC, "wraps around" },
	{ c_memsz_wrap, -ENOEXEC, "wraps around" },
	{ c_no_load, -ENOEXEC, "no PT_LOAD" },
};

START_TEST(elf_corrupt)
{
	struct ram r;
	ram_for_elf(&r);
	uint8_t f[ELF_LEN];
	build_elf(f);
	elf_cases[_i].fn(f);
	expect_fail(&r, f, sizeof(f), elf_cases[_i].code, elf_cases[_i].what);
	ram_free(&r);
}
END_TEST

START_TEST(bz_loads)
{
	struct ram r;
	ram_new(&r, RAM_SIZE);
	uint8_t f[BZ_LEN];
	build_bz(f);
	struct kernel_image k;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(loader_load_kernel(&r.m, f, sizeof(f), &k, &e), 0);
	ck_assert(k.bzimage);
	ck_assert_uint_eq(k.entry, LAYOUT_BZIMAGE_LOAD_GPA + 0x200);
	ck_assert_uint_eq(k.load_start, LAYOUT_BZIMAGE_LOAD_GPA);
	/* Decompresses at pref_address (above the aligned load address), init_size long. */
	ck_assert_uint_eq(k.load_end, BZ_PREF + BZ_INIT_SIZE);
	ck_assert_mem_eq(gpa(&r, LAYOUT_BZIMAGE_LOAD_GPA, BZ_PM_LEN), f + BZ_SETUP_LEN, BZ_PM_LEN);
	ck_assert_mem_eq(&k.setup, f + 0x1f1, sizeof(k.setup));
	ck_assert_uint_eq(k.setup.version, 0x020f);
	ck_assert_uint_eq(k.setup.init_size, BZ_INIT_SIZE);
	ram_free(&r);
}
END_TEST

static uint64_t bz_load_end(struct ram *r, uint8_t relocatable, uint32_t align, uint64_t pref)
{
	uint8_t f[BZ_LEN];
	build_bz(f);
	struct setup_header h;
	get_bz_hdr(f, &h);
	h.relocatable_kernel = relocatable;
	h.kernel_alignment = align;
	h.pref_address = pref;
	put_bz_hdr(f, &h);
	struct kernel_image k;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(loader_load_kernel(&r->m, f, sizeof(f), &k, &e), 0);
	return k.load_end;
}

START_TEST(bz_runtime_address)
{
	struct ram r;
	ram_new(&r, RAM_SIZE);
	/* Relocatable: the load address rounded up to kernel_alignment, if above pref. */
	ck_assert_uint_eq(bz_load_end(&r, 1, 0x200000, 0x100000), 0x200000 + BZ_INIT_SIZE);
	ck_assert_uint_eq(bz_load_end(&r, 1, 0x1000, 0x100000), 0x100000 + BZ_INIT_SIZE);
	/* Not relocatable: pref_address, whatever the alignment. */
	ck_assert_uint_eq(bz_load_end(&r, 0, 0x200000, 0x400000), 0x400000 + BZ_INIT_SIZE);
	ram_free(&r);
}
END_TEST

START_TEST(bz_every_prefix)
{
	struct ram r;
	ram_for_elf(&r);
	uint8_t f[BZ_LEN];
	build_bz(f);
	for (size_t len = 0; len < BZ_LEN; len++) {
		uint8_t *copy = malloc(len ? len : 1);
		memcpy(copy, f, len);
		expect_fail(&r, copy, len, -ENOEXEC, NULL);
		free(copy);
	}
	ram_free(&r);
}
END_TEST

#define BZ_FIELD(name, field, value) \
	static void name(uint8_t *f) { struct setup_header h; get_bz_hdr(f, &h); h.field = value; put_bz_hdr(f, &h); }
BZ_FIELD(b_boot_flag, boot_flag, 0)
BZ_FIELD(b_old, version, 0x020b)
BZ_FIELD(b_no_64, xloadflags, XLF_CAN_BE_LOADED_ABOVE_4G)
BZ_FIELD(b_zimage, loadflags, 0)
BZ_FIELD(b_setup_sects, setup_sects, 200)
BZ_FIELD(b_syssize_big, syssize, BZ_PM_LEN / 16 + 1)
BZ_FIELD(b_syssize_huge, syssize, 0xffffffff)
BZ_FIELD(b_syssize_zero, syssize, 0)
BZ_FIELD(b_align, kernel_alignment, 0x300000)
BZ_FIELD(b_align_zero, kernel_alignment, 0)
BZ_FIELD(b_init_size, init_size, 0x2000000)
BZ_FIELD(b_pref_huge, pref_address, UINT64_MAX - 0x1000)
static void b_short_header(uint8_t *f) { f[0x201] = 0x10; }
static void b_low_run(uint8_t *f)
{
	struct setup_header h;
	get_bz_hdr(f, &h);
	h.relocatable_kernel = 0;
	h.pref_address = LAYOUT_ZERO_PAGE_GPA;
	put_bz_hdr(f, &h);
}

static const struct {
	corrupt_fn fn;
	int code;
	const char *what;
} bz_cases[] = {
	{ b_boot_flag, -ENOEXEC, "boot flag" },
	{ b_old, -ENOEXEC, "2.11 is older than 2.12" },
	{ b_no_64, -ENOEXEC, "XLF_KERNEL_64" },
	{ b_zimage, -ENOEXEC, "zImage" },
	{ b_setup_sects, -ENOEXEC, "setup code" },
	{ b_syssize_big, -ENOEXEC, "syssize" },
	{ b_syssize_huge, -ENOEXEC, "syssize" },
	{ b_syssize_zero, -ENOEXEC, "syssize" },
	{ b_align, -ENOEXEC, "power of two" },
	{ b_align_zero, -ENOEXEC, "power of two" },
	{ b_init_size, -ENOMEM, "to decompress" },
	{ b_pref_huge, -ENOMEM, "to decompress" },
	{ b_short_header, -ENOEXEC, "too short" },
	{ b_low_run, -ENOEXEC, "below 1 MiB" },
};

START_TEST(bz_corrupt)
{
	struct ram r;
	ram_for_elf(&r);
	uint8_t f[BZ_LEN];
	build_bz(f);
	bz_cases[_i].fn(f);
	expect_fail(&r, f, sizeof(f), bz_cases[_i].code, bz_cases[_i].what);
	ram_free(&r);
}
END_TEST

START_TEST(bz_too_large_for_ram)
{
	uint8_t f[BZ_LEN];
	build_bz(f);
	struct kernel_image k;
	struct mitos_err e = { 0 };
	struct ram r;
	/* The compressed kernel itself does not fit... */
	ram_new(&r, LAYOUT_BZIMAGE_LOAD_GPA + BZ_PM_LEN / 2);
	ck_assert_int_eq(loader_load_kernel(&r.m, f, sizeof(f), &k, &e), -ENOMEM);
	ck_assert_ptr_nonnull(strstr(e.msg, "does not fit"));
	ram_free(&r);
	/* ...or it does, but there is no room to decompress it. */
	ram_new(&r, 16 * MIB);
	ck_assert_int_eq(loader_load_kernel(&r.m, f, sizeof(f), &k, &e), -ENOMEM);
	ck_assert_ptr_nonnull(strstr(e.msg, "to decompress"));
	ram_free(&r);
}
END_TEST

static void load_elf_into(struct ram *r, struct kernel_image *k)
{
	uint8_t f[ELF_LEN];
	build_elf(f);
	struct mitos_err e = { 0 };
	ck_assert_int_eq(loader_load_kernel(&r->m, f, sizeof(f), k, &e), 0);
}

START_TEST(initrd_placement)
{
	struct ram r;
	ram_new(&r, RAM_SIZE);
	struct kernel_image k;
	load_elf_into(&r, &k);
	struct mitos_err e = { 0 };
	uint64_t at;
	/* As high as possible, page-aligned, wholly inside RAM. */
	ck_assert_int_eq(loader_place_initrd(&r.m, &k, 0x1234, &at, &e), 0);
	ck_assert_uint_eq(at, RAM_SIZE - 0x2000);
	/* Exactly the room between the kernel's end and the top of RAM. */
	ck_assert_int_eq(loader_place_initrd(&r.m, &k, RAM_SIZE - ELF_END, &at, &e), 0);
	ck_assert_uint_eq(at, ELF_END);
	/* One byte more would overlap the kernel; all of RAM cannot fit at all. */
	ck_assert_int_eq(loader_place_initrd(&r.m, &k, RAM_SIZE - ELF_END + 1, &at, &e), -ENOMEM);
	ck_assert_ptr_nonnull(strstr(e.msg, "do not fit"));
	ck_assert_int_eq(loader_place_initrd(&r.m, &k, RAM_SIZE + 1, &at, &e), -ENOMEM);
	ck_assert_int_eq(loader_place_initrd(&r.m, &k, UINT64_MAX, &at, &e), -ENOMEM);

	/* A bzImage's initrd_addr_max is the highest byte the initrd may occupy. */
	uint8_t f[BZ_LEN];
	build_bz(f);
	ck_assert_int_eq(loader_load_kernel(&r.m, f, sizeof(f), &k, &e), 0);
	k.setup.initrd_addr_max = 0x1dfffff;
	ck_assert_int_eq(loader_place_initrd(&r.m, &k, 0x100000, &at, &e), 0);
	ck_assert_uint_eq(at, 0x1d00000);
	ck_assert_int_eq(loader_place_initrd(&r.m, &k, 0x1e00000 - BZ_PREF - BZ_INIT_SIZE + 1,
					     &at, &e), -ENOMEM);
	ram_free(&r);
}
END_TEST

START_TEST(initrd_placement_above_hole)
{
	struct ram r;
	ram_new(&r, 5 * GIB);
	struct kernel_image k;
	load_elf_into(&r, &k);
	struct mitos_err e = { 0 };
	uint64_t at;
	/* ELF kernels: under 2 GiB, not just under the hole. */
	ck_assert_int_eq(loader_place_initrd(&r.m, &k, 0x1000, &at, &e), 0);
	ck_assert_uint_eq(at, 0x80000000 - 0x1000);
	/* A bzImage allowing all of 4 GiB: still under the hole, never in the high region. */
	uint8_t f[BZ_LEN];
	build_bz(f);
	ck_assert_int_eq(loader_load_kernel(&r.m, f, sizeof(f), &k, &e), 0);
	k.setup.initrd_addr_max = 0xffffffff;
	ck_assert_int_eq(loader_place_initrd(&r.m, &k, 0x1000, &at, &e), 0);
	ck_assert_uint_eq(at, LAYOUT_MMIO_HOLE_START - 0x1000);
	ram_free(&r);
}
END_TEST

static char *temp_file(const void *data, size_t len, off_t truncate_to)
{
	char *path = strdup("/tmp/mitos-test-loader-XXXXXX");
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
	if (truncate_to)
		ck_assert_int_eq(ftruncate(fd, truncate_to), 0);
	close(fd);
	return path;
}

START_TEST(initrd_file)
{
	struct ram r;
	ram_new(&r, RAM_SIZE);
	struct kernel_image k;
	load_elf_into(&r, &k);
	struct mitos_err e = { 0 };
	static uint8_t data[100000];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 13 + i / 256);
	char *path = temp_file(data, sizeof(data), 0);
	uint64_t at = 0, size = 0;
	ck_assert_int_eq(loader_load_initrd_file(&r.m, path, &k, &at, &size, &e), 0);
	ck_assert_uint_eq(size, sizeof(data));
	ck_assert_uint_eq(at, (RAM_SIZE - sizeof(data)) & ~0xfffULL);
	ck_assert_mem_eq(gpa(&r, at, size), data, sizeof(data));
	unlink(path);
	free(path);

	/* Bigger than RAM: a sparse file, refused before reading. */
	path = temp_file("x", 1, (off_t)(RAM_SIZE * 2));
	ck_assert_int_eq(loader_load_initrd_file(&r.m, path, &k, &at, &size, &e), -ENOMEM);
	unlink(path);
	free(path);

	path = temp_file("", 0, 0);
	ck_assert_int_eq(loader_load_initrd_file(&r.m, path, &k, &at, &size, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "empty"));
	unlink(path);
	free(path);

	ck_assert_int_eq(loader_load_initrd_file(&r.m, "/tmp", &k, &at, &size, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "not a regular file"));
	ck_assert_int_eq(loader_load_initrd_file(&r.m, "/nonexistent/initrd", &k, &at, &size, &e),
			 -ENOENT);
	ck_assert_ptr_nonnull(strstr(e.msg, "/nonexistent/initrd"));
	ram_free(&r);
}
END_TEST

START_TEST(kernel_file)
{
	struct ram r;
	ram_for_elf(&r);
	uint8_t f[ELF_LEN];
	build_elf(f);
	char *path = temp_file(f, sizeof(f), 0);
	struct kernel_image k;
	struct mitos_err e = { 0 };
	ck_assert_int_eq(loader_load_kernel_file(&r.m, path, &k, &e), 0);
	ck_assert_uint_eq(k.entry, ELF_ENTRY);
	ck_assert_mem_eq(gpa(&r, ELF_SEG0_PADDR, ELF_SEG0_SIZE), f + ELF_SEG0_OFF, ELF_SEG0_SIZE);
	unlink(path);
	free(path);

	uint8_t bz[BZ_LEN];
	build_bz(bz);
	path = temp_file(bz, sizeof(bz), 0);
	ck_assert_int_eq(loader_load_kernel_file(&r.m, path, &k, &e), 0);
	ck_assert(k.bzimage);
	unlink(path);
	free(path);

	path = temp_file(f, 100, 0);
	ck_assert_int_eq(loader_load_kernel_file(&r.m, path, &k, &e), -ENOEXEC);
	unlink(path);
	free(path);
	ck_assert_int_eq(loader_load_kernel_file(&r.m, "/nonexistent/vmlinux", &k, &e), -ENOENT);
	ram_free(&r);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("loader");
	TCase *elf = tcase_create("elf");
	tcase_set_timeout(elf, 60);
	tcase_add_test(elf, elf_loads);
	tcase_add_test(elf, elf_virtual_entry);
	tcase_add_test(elf, elf_every_prefix);
	tcase_add_loop_test(elf, elf_corrupt, 0, sizeof(elf_cases) / sizeof(elf_cases[0]));
	suite_add_tcase(s, elf);
	TCase *bz = tcase_create("bzimage");
	tcase_set_timeout(bz, 60);
	tcase_add_test(bz, bz_loads);
	tcase_add_test(bz, bz_runtime_address);
	tcase_add_test(bz, bz_every_prefix);
	tcase_add_loop_test(bz, bz_corrupt, 0, sizeof(bz_cases) / sizeof(bz_cases[0]));
	tcase_add_test(bz, bz_too_large_for_ram);
	suite_add_tcase(s, bz);
	TCase *files = tcase_create("initrd_and_files");
	tcase_set_timeout(files, 60);
	tcase_add_test(files, initrd_placement);
	tcase_add_test(files, initrd_placement_above_hole);
	tcase_add_test(files, initrd_file);
	tcase_add_test(files, kernel_file);
	suite_add_tcase(s, files);

	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
