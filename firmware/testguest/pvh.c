/* PVH boot (QEMU microvm, Firecracker, Cloud Hypervisor): the loader hands over a
 * hvm_start_info (Xen's public arch-x86/hvm/start_info.h) instead of a Linux zero page.
 * tg_main() reads its command line from a zero page, so give it one that carries just
 * that; the 32-bit entry and the switch to long mode are in entry.S. */
#include "firmware/testguest/tg.h"

#define HVM_START_MAGIC     0x336ec578u
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_CMD_LINE_PTR     0x228

struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	uint32_t memmap_entries, reserved;
};

static uint8_t zero_page[4096] __attribute__((aligned(4096)));

void tg_main(const uint8_t *boot_params); /* main.c: the Linux boot protocol's entry */
void tg_pvh_main(const struct hvm_start_info *si);
void tg_pvh_main(const struct hvm_start_info *si)
{
	if (si->magic != HVM_START_MAGIC)
		tg_fail(TG_EXIT_CMDLINE, "PVH entry without a hvm_start_info (magic 0x%x at 0x%lx)",
			si->magic, (uint64_t)(uintptr_t)si);
	*(uint32_t *)(zero_page + BP_CMD_LINE_PTR) = (uint32_t)si->cmdline_paddr;
	*(uint32_t *)(zero_page + BP_EXT_CMD_LINE_PTR) = (uint32_t)(si->cmdline_paddr >> 32);
	tg_main(zero_page);
}
