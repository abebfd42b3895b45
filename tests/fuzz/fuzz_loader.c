/* Fuzz target: guest kernel images (vmm/loader.c): ELF64 and bzImage headers,
 * program headers and sizes checked before anything is copied into guest RAM. */
#include <elf.h>
#include <string.h>

#include "lib/guest_mem.h"
#include "vmm/loader.h"
#include "tests/fuzz/fuzz.h"

#define RAM (64u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct guest_mem m;
	static int ready;
	if (!ready)
		ready = guest_mem_alloc(&m, RAM) == 0 ? 1 : -1;
	if (ready < 0)
		return 0;
	struct kernel_image k;
	struct mitos_err e = { 0 };
	if (loader_load_kernel(&m, data, size, &k, &e) == 0) {
		/* What it accepted lies in guest RAM. */
		if (k.load_end < k.load_start || k.load_end > RAM)
			__builtin_trap();
	}
	return 0;
}

void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	/* A minimal ELF64 kernel: one PT_LOAD of 64 bytes at 1 MiB. */
	static uint8_t elf[sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr) + 64];
	Elf64_Ehdr *eh = (Elf64_Ehdr *)elf;
	memcpy(eh->e_ident, ELFMAG, SELFMAG);
	eh->e_ident[EI_CLASS] = ELFCLASS64;
	eh->e_ident[EI_DATA] = ELFDATA2LSB;
	eh->e_ident[EI_VERSION] = EV_CURRENT;
	eh->e_type = ET_EXEC;
	eh->e_machine = EM_X86_64;
	eh->e_version = EV_CURRENT;
	eh->e_entry = 0x100000;
	eh->e_phoff = sizeof(Elf64_Ehdr);
	eh->e_ehsize = sizeof(Elf64_Ehdr);
	eh->e_phentsize = sizeof(Elf64_Phdr);
	eh->e_phnum = 1;
	Elf64_Phdr *ph = (Elf64_Phdr *)(elf + sizeof(Elf64_Ehdr));
	ph->p_type = PT_LOAD;
	ph->p_offset = sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr);
	ph->p_paddr = ph->p_vaddr = 0x100000;
	ph->p_filesz = 64;
	ph->p_memsz = 4096;
	add(elf, sizeof(elf));
	/* A bzImage: one setup sector after the boot sector, protocol 2.15, 64-bit. */
	static uint8_t bz[3 * 512];
	bz[0x1f1] = 1;                                   /* setup_sects */
	bz[0x1fe] = 0x55, bz[0x1ff] = 0xaa;             /* boot_flag */
	memcpy(bz + 0x202, "HdrS", 4);                   /* header */
	bz[0x206] = 0x0f, bz[0x207] = 0x02;             /* version 2.15 */
	bz[0x211] = 0x01;                                /* loadflags: LOADED_HIGH */
	bz[0x230] = 0x00, bz[0x231] = 0x00, bz[0x232] = 0x20; /* kernel_alignment 2 MiB */
	bz[0x234] = 1;                                   /* relocatable_kernel */
	bz[0x236] = 0x01;                                /* xloadflags: XLF_KERNEL_64 */
	bz[0x260] = 0x00, bz[0x261] = 0x10;             /* init_size 4 KiB */
	add(bz, sizeof(bz));
}
