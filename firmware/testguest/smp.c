/* Starting an application processor the way firmware and Linux do: INIT, then a
 * startup IPI whose vector names the 4 KiB page of a real-mode trampoline (entry.S).
 * The trampoline goes to long mode on the boot CPU's page tables and calls the given
 * function on the given stack, with interrupts off and the trampoline's own GDT. */
#include "tg.h"
#include "lib/layout.h"

/* Below 640 KiB, clear of the boot structures (lib/layout.h: GDT at 0x500, zero page at
 * 0x7000, page tables from 0x9000). */
#define AP_TRAMPOLINE   0x3000U
#define LAPIC_ICR_LO    0x300
#define LAPIC_ICR_HI    0x310
#define ICR_BUSY        (1u << 12)
#define ICR_INIT        0x00004500u   /* INIT, level assert */
#define ICR_STARTUP     0x00004600u   /* startup IPI; the low byte is the page number */
#define MP_CONFIG_ENTRIES 34          /* offsets in the MP configuration table */
#define MP_CONFIG_HEADER  44
#define MP_ENTRY_CPU      0
#define MP_CPU_ENTRY_SIZE 20
#define MP_OTHER_ENTRY_SIZE 8
#define MP_CPU_ENABLED    1

struct __attribute__((packed)) ap_params {
	uint16_t gdt_limit;
	uint32_t gdt_base;
	uint32_t long_entry;      /* far pointer: offset, then selector */
	uint16_t long_cs;
	uint32_t cr3;
	uint64_t stack, entry;
};
_Static_assert(sizeof(struct ap_params) == 32 && __builtin_offsetof(struct ap_params, long_entry) == 6 &&
	       __builtin_offsetof(struct ap_params, cr3) == 12 &&
	       __builtin_offsetof(struct ap_params, stack) == 16 &&
	       __builtin_offsetof(struct ap_params, entry) == 24,
	       "entry.S reads ap_params at these offsets");

extern const uint8_t ap_trampoline[], ap_trampoline_end[], ap_gdt[], ap_long[], ap_params[];

static uint32_t copied(const uint8_t *sym)
{
	return AP_TRAMPOLINE + (uint32_t)(sym - ap_trampoline);
}

unsigned tg_mp_cpus(void)
{
	const uint8_t *t = (const uint8_t *)LAYOUT_EBDA_GPA;
	if (t[0] != 'P' || t[1] != 'C' || t[2] != 'M' || t[3] != 'P')
		return 1;
	uint16_t entries = *(const uint16_t *)(t + MP_CONFIG_ENTRIES);
	const uint8_t *e = t + MP_CONFIG_HEADER;
	unsigned cpus = 0;
	for (unsigned i = 0; i < entries; i++) {
		if (e[0] == MP_ENTRY_CPU) {
			cpus += (e[3] & MP_CPU_ENABLED) != 0;
			e += MP_CPU_ENTRY_SIZE;
		} else {
			e += MP_OTHER_ENTRY_SIZE;
		}
	}
	return cpus ? cpus : 1;
}

static void send_ipi(uint8_t apic_id, uint32_t icr)
{
	mmio_write32(LAYOUT_LAPIC_GPA + LAPIC_ICR_HI, (uint32_t)apic_id << 24);
	mmio_write32(LAYOUT_LAPIC_GPA + LAPIC_ICR_LO, icr);
	while (mmio_read32(LAYOUT_LAPIC_GPA + LAPIC_ICR_LO) & ICR_BUSY)
		barrier();
}

void tg_start_ap(uint8_t apic_id, void (*fn)(void), void *stack_top)
{
	size_t len = (size_t)(ap_trampoline_end - ap_trampoline);
	memcpy((void *)(uintptr_t)AP_TRAMPOLINE, ap_trampoline, len);
	uint64_t cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	struct ap_params p = {
		.gdt_limit = 3 * 8 - 1, .gdt_base = copied(ap_gdt),
		.long_entry = copied(ap_long), .long_cs = 0x08, .cr3 = (uint32_t)cr3,
		.stack = (uint64_t)(uintptr_t)stack_top, .entry = (uint64_t)(uintptr_t)fn,
	};
	memcpy((void *)(uintptr_t)copied(ap_params), &p, sizeof(p));
	mb();
	/* INIT, SIPI, SIPI as the MP specification has it: a processor already running
	 * ignores the second. */
	send_ipi(apic_id, ICR_INIT);
	send_ipi(apic_id, ICR_STARTUP | (AP_TRAMPOLINE >> 12));
	send_ipi(apic_id, ICR_STARTUP | (AP_TRAMPOLINE >> 12));
}
