#include "loader.h"
#include "lib/layout.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* __START_KERNEL_map: a vmlinux links its text here; entries at or above it are virtual. */
#define KERNEL_TEXT_VIRT_BASE  0xffffffff80000000ULL

#define BZ_HDR_OFF             0x1f1   /* struct setup_header in the file and in boot_params */
#define BZ_BOOT_FLAG_OFF       0x1fe
#define BZ_JUMP_LEN_OFF        0x201   /* the header ends at 0x202 + this byte */
#define BZ_MAGIC_OFF           0x202
#define BZ_MIN_LEN             (BZ_MAGIC_OFF + 4)
#define BZ_BOOT_FLAG           0xaa55
#define BZ_MIN_VERSION         0x020c  /* 2.12: 64-bit entry, xloadflags */
#define BZ_DEFAULT_SETUP_SECTS 4
#define BZ_SECTOR              512
#define BZ_ENTRY64_OFF         0x200   /* startup_64 relative to startup_32 */

#define INITRD_DEFAULT_MAX     0x7fffffffULL
#define PAGE_SIZE_4K           0x1000ULL

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

static void elf_phdr(const uint8_t *file, const Elf64_Ehdr *eh, unsigned i, Elf64_Phdr *ph)
{
	/* memcpy: e_phoff need not be aligned in a hostile file. */
	memcpy(ph, file + eh->e_phoff + (uint64_t)i * sizeof(*ph), sizeof(*ph));
}

static int elf_check_header(const Elf64_Ehdr *eh, size_t len, struct mitos_err *e)
{
	if (eh->e_ident[EI_CLASS] != ELFCLASS64)
		return mitos_err_set(e, -ENOEXEC, "kernel: ELF class %u is not ELF64",
				     eh->e_ident[EI_CLASS]);
	if (eh->e_ident[EI_DATA] != ELFDATA2LSB)
		return mitos_err_set(e, -ENOEXEC, "kernel: ELF file is not little-endian");
	if (eh->e_machine != EM_X86_64)
		return mitos_err_set(e, -ENOEXEC, "kernel: ELF machine %u is not x86-64",
				     eh->e_machine);
	if (eh->e_type != ET_EXEC)
		return mitos_err_set(e, -ENOEXEC, "kernel: ELF type %u is not an executable (ET_EXEC)",
				     eh->e_type);
	if (eh->e_phentsize != sizeof(Elf64_Phdr))
		return mitos_err_set(e, -ENOEXEC, "kernel: ELF program header size %u, expected %zu",
				     eh->e_phentsize, sizeof(Elf64_Phdr));
	if (eh->e_phnum == 0)
		return mitos_err_set(e, -ENOEXEC, "kernel: ELF file has no program headers");
	if (eh->e_phoff > len || (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > len - eh->e_phoff)
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: ELF program header table extends past end of file");
	return 0;
}

static int elf_check_segment(const struct guest_mem *m, const Elf64_Phdr *ph, unsigned i,
			     size_t len, struct mitos_err *e)
{
	if (ph->p_offset > len || ph->p_filesz > len - ph->p_offset)
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: ELF program header %u extends past end of file", i);
	if (ph->p_filesz > ph->p_memsz)
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: ELF program header %u: file size 0x%" PRIx64
				     " exceeds memory size 0x%" PRIx64, i, ph->p_filesz, ph->p_memsz);
	if (ph->p_memsz > UINT64_MAX - ph->p_paddr)
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: ELF program header %u: address 0x%" PRIx64
				     " + size 0x%" PRIx64 " wraps around", i, ph->p_paddr, ph->p_memsz);
	if (ph->p_paddr < LAYOUT_HIMEM_GPA)
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: ELF program header %u loads at 0x%" PRIx64
				     ", below 1 MiB where the boot structures live", i, ph->p_paddr);
	if (!guest_mem_ptr(m, ph->p_paddr, ph->p_memsz))
		return mitos_err_set(e, -ENOMEM,
				     "kernel: ELF program header %u [0x%" PRIx64 ", 0x%" PRIx64
				     ") is outside guest RAM (%" PRIu64 " MiB)", i, ph->p_paddr,
				     ph->p_paddr + ph->p_memsz, m->size >> 20);
	return 0;
}

/* The physical entry for e_entry if this segment contains it. A vmlinux's e_entry may be
 * virtual; its startup_64 runs at the physical address of the same byte. */
static bool elf_entry_in(const Elf64_Phdr *ph, uint64_t e_entry, uint64_t *entry)
{
	if (e_entry >= KERNEL_TEXT_VIRT_BASE) {
		if (e_entry < ph->p_vaddr || e_entry - ph->p_vaddr >= ph->p_memsz)
			return false;
		*entry = ph->p_paddr + (e_entry - ph->p_vaddr);
		return true;
	}
	if (e_entry < ph->p_paddr || e_entry - ph->p_paddr >= ph->p_memsz)
		return false;
	*entry = e_entry;
	return true;
}

static int load_elf(const struct guest_mem *m, const uint8_t *file, size_t len,
		    struct kernel_image *k, struct mitos_err *e)
{
	Elf64_Ehdr eh;
	if (len < sizeof(eh))
		return mitos_err_set(e, -ENOEXEC, "kernel: %zu bytes is too short for an ELF header",
				     len);
	memcpy(&eh, file, sizeof(eh));
	int r = elf_check_header(&eh, len, e);
	if (r)
		return r;

	/* Validate every segment before writing any, so a bad file leaves RAM untouched. */
	uint64_t lo = UINT64_MAX, hi = 0;
	bool have_entry = false;
	for (unsigned i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;
		elf_phdr(file, &eh, i, &ph);
		if (ph.p_type != PT_LOAD)
			continue;
		if ((r = elf_check_segment(m, &ph, i, len, e)))
			return r;
		if (ph.p_paddr < lo)
			lo = ph.p_paddr;
		if (ph.p_paddr + ph.p_memsz > hi)
			hi = ph.p_paddr + ph.p_memsz;
		if (!have_entry)
			have_entry = elf_entry_in(&ph, eh.e_entry, &k->entry);
	}
	if (lo == UINT64_MAX)
		return mitos_err_set(e, -ENOEXEC, "kernel: ELF file has no PT_LOAD segment");
	if (!have_entry)
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: ELF entry point 0x%" PRIx64
				     " is not inside any loadable segment", eh.e_entry);

	for (unsigned i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;
		elf_phdr(file, &eh, i, &ph);
		if (ph.p_type != PT_LOAD)
			continue;
		uint8_t *dst = guest_mem_ptr(m, ph.p_paddr, ph.p_memsz);
		memcpy(dst, file + ph.p_offset, ph.p_filesz);
		memset(dst + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
	}
	k->load_start = lo;
	k->load_end = hi;
	return 0;
}

static int bz_check_header(const struct setup_header *h, size_t hdr_end, struct mitos_err *e)
{
	if (h->boot_flag != BZ_BOOT_FLAG)
		return mitos_err_set(e, -ENOEXEC, "kernel: bzImage boot flag is 0x%04x, not 0xaa55",
				     h->boot_flag);
	if (h->version < BZ_MIN_VERSION)
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: bzImage boot protocol %u.%02u is older than 2.12",
				     h->version >> 8, h->version & 0xff);
	if (hdr_end < BZ_HDR_OFF + offsetof(struct setup_header, init_size) + sizeof(h->init_size))
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: bzImage setup header (%zu bytes) is too short for boot protocol 2.12",
				     hdr_end - BZ_HDR_OFF);
	if (!(h->xloadflags & XLF_KERNEL_64))
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)");
	if (!(h->loadflags & LOADED_HIGH))
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: zImage (not LOADED_HIGH) is not supported, use a bzImage");
	if (h->relocatable_kernel &&
	    (h->kernel_alignment == 0 || (h->kernel_alignment & (h->kernel_alignment - 1))))
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: bzImage kernel_alignment 0x%x is not a power of two",
				     h->kernel_alignment);
	return 0;
}

static int load_bzimage(const struct guest_mem *m, const uint8_t *file, size_t len,
			struct kernel_image *k, struct mitos_err *e)
{
	size_t hdr_end = BZ_MAGIC_OFF + (size_t)file[BZ_JUMP_LEN_OFF];
	if (hdr_end > len)
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: bzImage setup header extends past end of file");
	size_t hdr_len = hdr_end - BZ_HDR_OFF;
	if (hdr_len > sizeof(k->setup))
		hdr_len = sizeof(k->setup);
	/* Fields past the header's own length belong to newer protocols: they stay zero. */
	memcpy(&k->setup, file + BZ_HDR_OFF, hdr_len);
	const struct setup_header *h = &k->setup;
	int r = bz_check_header(h, hdr_end, e);
	if (r)
		return r;

	size_t setup_size = ((size_t)(h->setup_sects ? h->setup_sects : BZ_DEFAULT_SETUP_SECTS) + 1)
			    * BZ_SECTOR;
	if (setup_size >= len)
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: bzImage setup code (%zu bytes) extends past end of file",
				     setup_size);
	size_t pm_len = len - setup_size;
	if (h->syssize == 0 || (uint64_t)h->syssize * 16 > pm_len)
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: bzImage protected-mode code (syssize 0x%x paragraphs) extends past end of file",
				     h->syssize);
	uint8_t *dst = guest_mem_ptr(m, LAYOUT_BZIMAGE_LOAD_GPA, pm_len);
	if (!dst)
		return mitos_err_set(e, -ENOMEM,
				     "kernel: bzImage (%zu bytes) does not fit in guest RAM (%" PRIu64 " MiB)",
				     pm_len, m->size >> 20);

	/* Where the decompressor runs and unpacks to (arch/x86/boot/compressed/head_64.S): a
	 * relocatable kernel uses the load address rounded up to kernel_alignment but never
	 * below pref_address (LOAD_PHYSICAL_ADDR); it needs init_size bytes there. */
	uint64_t run = h->pref_address;
	if (h->relocatable_kernel) {
		uint64_t aligned = align_up(LAYOUT_BZIMAGE_LOAD_GPA, h->kernel_alignment);
		if (aligned > run)
			run = aligned;
	}
	if (run < LAYOUT_HIMEM_GPA)
		return mitos_err_set(e, -ENOEXEC,
				     "kernel: bzImage runs at 0x%" PRIx64 ", below 1 MiB", run);
	if (!guest_mem_ptr(m, run, h->init_size))
		return mitos_err_set(e, -ENOMEM,
				     "kernel: bzImage needs 0x%x bytes at 0x%" PRIx64
				     " to decompress, more than guest RAM (%" PRIu64 " MiB) has",
				     h->init_size, run, m->size >> 20);

	memcpy(dst, file + setup_size, pm_len);
	k->bzimage = true;
	k->entry = LAYOUT_BZIMAGE_LOAD_GPA + BZ_ENTRY64_OFF;
	k->load_start = LAYOUT_BZIMAGE_LOAD_GPA;
	k->load_end = LAYOUT_BZIMAGE_LOAD_GPA + pm_len;
	if (run + h->init_size > k->load_end)
		k->load_end = run + h->init_size;
	return 0;
}

int loader_load_kernel(const struct guest_mem *m, const uint8_t *file, size_t len,
		       struct kernel_image *k, struct mitos_err *e)
{
	memset(k, 0, sizeof(*k));
	if (len >= SELFMAG && memcmp(file, ELFMAG, SELFMAG) == 0)
		return load_elf(m, file, len, k, e);
	if (len >= BZ_MIN_LEN && memcmp(file + BZ_MAGIC_OFF, "HdrS", 4) == 0)
		return load_bzimage(m, file, len, k, e);
	return mitos_err_set(e, -ENOEXEC,
			     "kernel: neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" at 0x202)");
}

/* Opens a regular, non-empty file; returns the fd or -errno. */
static int open_input(const char *what, const char *path, off_t *size, struct mitos_err *e)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return mitos_err_set(e, -errno, "%s %s: %s", what, path, strerror(errno));
	struct stat st;
	int r = 0;
	if (fstat(fd, &st) < 0)
		r = mitos_err_set(e, -errno, "%s %s: %s", what, path, strerror(errno));
	else if (!S_ISREG(st.st_mode))
		r = mitos_err_set(e, -EINVAL, "%s %s: not a regular file", what, path);
	else if (st.st_size == 0)
		r = mitos_err_set(e, -EINVAL, "%s %s: file is empty", what, path);
	if (r) {
		close(fd);
		return r;
	}
	*size = st.st_size;
	return fd;
}

int loader_load_kernel_file(const struct guest_mem *m, const char *path,
			    struct kernel_image *k, struct mitos_err *e)
{
	off_t size;
	int fd = open_input("kernel", path, &size, e);
	if (fd < 0)
		return fd;
	void *p = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
	int r = p == MAP_FAILED ? -errno : 0;
	close(fd);
	if (r)
		return mitos_err_set(e, r, "kernel %s: mmap: %s", path, strerror(-r));
	r = loader_load_kernel(m, p, (size_t)size, k, e);
	munmap(p, (size_t)size);
	return r;
}

int loader_place_initrd(const struct guest_mem *m, const struct kernel_image *k,
			uint64_t size, uint64_t *gpa, struct mitos_err *e)
{
	/* regions[0] is the RAM under the MMIO hole; the kernel reads the initrd address
	 * from 32-bit fields unless told it may go higher, so it stays there. */
	uint64_t top = m->regions[0].gpa + m->regions[0].size;
	uint64_t max = k->bzimage ? k->setup.initrd_addr_max : INITRD_DEFAULT_MAX;
	if (max + 1 < top)
		top = max + 1;
	uint64_t floor = align_up(k->load_end > LAYOUT_HIMEM_GPA ? k->load_end : LAYOUT_HIMEM_GPA,
				  PAGE_SIZE_4K);
	if (size > top || ((top - size) & ~(PAGE_SIZE_4K - 1)) < floor)
		return mitos_err_set(e, -ENOMEM,
				     "initrd: %" PRIu64 " bytes do not fit between the kernel's end 0x%"
				     PRIx64 " and 0x%" PRIx64, size, floor, top);
	*gpa = (top - size) & ~(PAGE_SIZE_4K - 1);
	return 0;
}

int loader_load_initrd_file(const struct guest_mem *m, const char *path,
			    const struct kernel_image *k, uint64_t *gpa, uint64_t *size,
			    struct mitos_err *e)
{
	off_t st_size;
	int fd = open_input("initrd", path, &st_size, e);
	if (fd < 0)
		return fd;
	uint64_t at;
	int r = loader_place_initrd(m, k, (uint64_t)st_size, &at, e);
	if (r) {
		close(fd);
		return r;
	}
	/* Straight into guest RAM: an initrd can be hundreds of MiB. */
	uint8_t *dst = guest_mem_ptr(m, at, (uint64_t)st_size);
	for (uint64_t done = 0; done < (uint64_t)st_size;) {
		ssize_t n = pread(fd, dst + done, (size_t)((uint64_t)st_size - done), (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n < 0 ? -errno : -EIO;
			close(fd);
			return mitos_err_set(e, r, "initrd %s: read: %s", path,
					     n < 0 ? strerror(-r) : "file shrank while reading");
		}
		done += (uint64_t)n;
	}
	close(fd);
	*gpa = at;
	*size = (uint64_t)st_size;
	return 0;
}
