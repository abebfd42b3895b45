/* Kernel and initrd loaders: an ELF vmlinux (or any ELF64 x86-64 executable linked at
 * physical addresses, like the test guest) or a bzImage entered through its 64-bit entry
 * point. Everything read from the file is untrusted and bounds-checked. */
#ifndef MITOS_LOADER_H
#define MITOS_LOADER_H

#include "lib/error.h"
#include "lib/guest_mem.h"

#include <asm/bootparam.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kernel_image {
	uint64_t entry;                 /* 64-bit entry point, guest physical */
	/* Guest-physical range the kernel occupies; for a bzImage it runs to the end of the
	 * init_size bytes it decompresses into at pref_address (or the load address rounded
	 * up to kernel_alignment, if higher). */
	uint64_t load_start, load_end;
	bool bzimage;
	/* bzImage only: the setup header as found in the file (protocol >= 2.12 and
	 * XLF_KERNEL_64 checked), zero past the header's own length; boot_write() copies it
	 * into boot_params. */
	struct setup_header setup;
};

/* Validates an ELF or bzImage held in memory and copies it into guest RAM; nothing is
 * written unless it all checks out. 0, or -ENOEXEC (not a kernel we can boot, or
 * corrupt) / -ENOMEM (does not fit in guest RAM). The _file variant adds open/mmap
 * errors and -EINVAL for a file that is empty or not a regular file. */
int loader_load_kernel(const struct guest_mem *m, const uint8_t *file, size_t len,
		       struct kernel_image *k, struct mitos_err *e);
int loader_load_kernel_file(const struct guest_mem *m, const char *path,
			    struct kernel_image *k, struct mitos_err *e);

/* Where an initrd of `size` bytes goes: page-aligned, as high as allowed (below the top
 * of RAM under the MMIO hole and below initrd_addr_max for a bzImage, 2 GiB otherwise),
 * wholly above the kernel. 0 or -ENOMEM. */
int loader_place_initrd(const struct guest_mem *m, const struct kernel_image *k,
			uint64_t size, uint64_t *gpa, struct mitos_err *e);
/* Reads the file straight into guest RAM at the place above. */
int loader_load_initrd_file(const struct guest_mem *m, const char *path,
			    const struct kernel_image *k, uint64_t *gpa, uint64_t *size,
			    struct mitos_err *e);

#endif
