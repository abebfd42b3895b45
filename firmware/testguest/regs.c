/* testguest.mode=regs: proves that a restored child continues with exactly the CPU
 * state its snapshot caught. The guest loads a distinct pattern into every register it
 * can reach, arms the TSC-deadline timer and leaves one interrupt pending, prints
 *     testguest: regs: holding, <vector state>, <n> CPU(s), deadline <tsc>
 * and spins on a byte in memory with every general register live (interrupts on: the
 * serial line's handler saves and restores them). With more than one CPU in the MP
 * table it first starts CPU 1 (smp.c), which loads other patterns into the same
 * registers (all of the list below but YMM, the TSC-deadline timer and the pending
 * interrupt) and spins the same way; it checks them after the boot CPU has. The host snapshots it there (as
 * often as it likes, and children of children too). A 'c' on the serial port ends the
 * spin; the guest then compares everything with what it loaded and prints one line per
 * difference and "regs: <n> checks, <k> differ". Checked:
 *   - RAX..R15 (all but RSP, which the call and the interrupts use);
 *   - CS, SS, DS, ES, FS, GS, TR and LDTR selectors (its own GDT and TSS), the FS, GS
 *     and kernel GS bases, GDTR and IDTR;
 *   - CR0, CR2, CR3, CR4, CR8 and EFER; DR0-DR3 and DR7; LSTAR, SFMASK and PAT;
 *   - the whole FXSAVE image: x87 control, status and tag words, ST0-ST7, MXCSR and
 *     XMM0-XMM15, loaded with FXRSTOR (so no x87 or SSE arithmetic is needed);
 *   - where the CPU has XSAVE and AVX, the upper halves of YMM0-YMM15 too, loaded
 *     with XRSTOR64 and read with XSAVE64 (on emulation-only KVM both run in the VMM's
 *     emulation assist; without AVX the guest says so and checks the rest);
 *   - the TSC: never behind the value read before the spin;
 *   - the TSC-deadline timer: not fired before its deadline, fires exactly once;
 *   - the pending interrupt (a self-IPI held back by CR8): delivered exactly once when
 *     CR8 drops to 0;
 *   - with XSAVE, that XSAVE64 faults as on hardware: #PF (write, not present, CR2 in
 *     the operand) for an unmapped operand, #GP(0) for a misaligned one.
 * The test guest stays integer-only elsewhere: vector state is written and read only
 * through FXRSTOR/FXSAVE (and XRSTOR/XSAVE) images in memory. */
#include "tg.h"
#include "lib/layout.h"

#define NGPR            15
#define FXSAVE_BYTES    512
#define YMM_HI_OFFSET   576      /* XSAVE standard format: the AVX component */
#define XSAVE_BYTES     1024
#define XCR0_X87_SSE_AVX 0x7ULL

#define MSR_EFER        0xc0000080
#define MSR_LSTAR       0xc0000082
#define MSR_SFMASK      0xc0000084
#define MSR_FS_BASE     0xc0000100
#define MSR_GS_BASE     0xc0000101
#define MSR_KGS_BASE    0xc0000102
#define MSR_PAT         0x277
#define MSR_TSC_DEADLINE 0x6e0
#define EFER_SCE        (1ULL << 0)
#define EFER_NXE        (1ULL << 11)
#define CR0_MP          (1ULL << 1)
#define CR0_NE          (1ULL << 5)
#define CR0_WP          (1ULL << 16)
#define CR0_AM          (1ULL << 18)
#define CR3_PWT         (1ULL << 3)
#define CR4_PGE         (1ULL << 7)
#define CR4_OSFXSR      (1ULL << 9)
#define CR4_OSXMMEXCPT  (1ULL << 10)
#define CR4_OSXSAVE     (1ULL << 18)

#define LAPIC_TPR       0x080
#define LAPIC_EOI       0x0b0
#define LAPIC_ICR_LO    0x300
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_ICR 0x380
#define ICR_SELF        (1u << 18)
#define LVT_TSC_DEADLINE (2u << 17)
#define PENDING_VECTOR  0x2a     /* priority class 2: held back while CR8 >= 2 */
#define DEADLINE_VECTOR 0xd1
#define HOLD_CR8        2
#define COM1_IER        (LAYOUT_COM1_PORT + 1)
#define COM1_MCR        (LAYOUT_COM1_PORT + 4)
#define COM1_LSR        (LAYOUT_COM1_PORT + 5)
#define SERIAL_IRQ      LAYOUT_COM1_IRQ
/* About a second at the TSC rates of current x86 servers. */
#define DEADLINE_CYCLES (3ULL << 30)

/* Own GDT: every selector distinct; a TSS for each CPU. */
enum { SEL_CS = 0x08, SEL_SS = 0x10, SEL_DS = 0x18, SEL_ES = 0x20, SEL_FS = 0x28,
       SEL_GS = 0x30, SEL_TSS = 0x38, SEL_TSS_AP = 0x48, GDT_ENTRIES = 11 };
#define AP_ID 1

/* Shared with the assembly below by name. */
uint64_t regs_load[NGPR], regs_got[NGPR], ap_regs_load[NGPR], ap_regs_got[NGPR];
volatile uint8_t regs_go;

static uint64_t gdt[GDT_ENTRIES] __attribute__((aligned(16)));
static uint8_t tss[2][104] __attribute__((aligned(16)));
static uint8_t fx_load[2][FXSAVE_BYTES] __attribute__((aligned(64)));
static uint8_t fx_got[2][FXSAVE_BYTES] __attribute__((aligned(64)));
static uint8_t xs_load[XSAVE_BYTES] __attribute__((aligned(64)));
static uint8_t xs_got[XSAVE_BYTES] __attribute__((aligned(64)));
static volatile unsigned pending_seen, deadline_fired;
static volatile uint64_t deadline_fired_tsc;
static unsigned checks, differ;
static const char *who = "";            /* "" for the boot CPU, "cpu 1 " for the other */

/* Loads LOAD into RAX..R15, spins until regs_go, stores them into GOT. RIP-relative
 * loads and stores: no register is needed to do either. One per CPU, each with its
 * own arrays. */
#define REGS_HOLD(fn, load, got) __asm__(							\
	".text\n"										\
	".globl " #fn "\n"									\
	#fn ":\n"										\
	"push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n"		\
	"mov " #load "+0(%rip), %rax\n mov " #load "+8(%rip), %rbx\n"			\
	"mov " #load "+16(%rip), %rcx\n mov " #load "+24(%rip), %rdx\n"			\
	"mov " #load "+32(%rip), %rsi\n mov " #load "+40(%rip), %rdi\n"			\
	"mov " #load "+48(%rip), %rbp\n mov " #load "+56(%rip), %r8\n"			\
	"mov " #load "+64(%rip), %r9\n mov " #load "+72(%rip), %r10\n"			\
	"mov " #load "+80(%rip), %r11\n mov " #load "+88(%rip), %r12\n"			\
	"mov " #load "+96(%rip), %r13\n mov " #load "+104(%rip), %r14\n"			\
	"mov " #load "+112(%rip), %r15\n"							\
	"1: cmpb $0, regs_go(%rip)\n"								\
	"je 1b\n"										\
	"mov %rax, " #got "+0(%rip)\n mov %rbx, " #got "+8(%rip)\n"				\
	"mov %rcx, " #got "+16(%rip)\n mov %rdx, " #got "+24(%rip)\n"			\
	"mov %rsi, " #got "+32(%rip)\n mov %rdi, " #got "+40(%rip)\n"			\
	"mov %rbp, " #got "+48(%rip)\n mov %r8, " #got "+56(%rip)\n"				\
	"mov %r9, " #got "+64(%rip)\n mov %r10, " #got "+72(%rip)\n"				\
	"mov %r11, " #got "+80(%rip)\n mov %r12, " #got "+88(%rip)\n"			\
	"mov %r13, " #got "+96(%rip)\n mov %r14, " #got "+104(%rip)\n"			\
	"mov %r15, " #got "+112(%rip)\n"							\
	"pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbp\n pop %rbx\n"		\
	"ret\n")
void regs_hold(void);
void ap_regs_hold(void);
REGS_HOLD(regs_hold, regs_load, regs_got);
REGS_HOLD(ap_regs_hold, ap_regs_load, ap_regs_got);

static const char *const gpr_names[NGPR] = {
	"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12",
	"r13", "r14", "r15",
};

/* Distinct in every byte position, so a swap or a partial restore shows. */
static uint64_t pattern(unsigned i)
{
	return 0x0123456789abcdefULL ^ (0x1111111111111111ULL * (i + 1)) ^ ((uint64_t)i << 56);
}

static void check(const char *what, uint64_t got, uint64_t want)
{
	checks++;
	if (got != want) {
		differ++;
		tg_printf("regs: %s%s is 0x%lx, want 0x%lx\n", who, what, got, want);
	}
}

static void check_bytes(const char *what, unsigned index, const uint8_t *got,
			const uint8_t *want, unsigned n)
{
	checks++;
	for (unsigned i = 0; i < n; i++)
		if (got[i] != want[i]) {
			differ++;
			tg_printf("regs: %s%s%u differs at byte %u: 0x%x, want 0x%x\n", who, what,
				  index, i, got[i], want[i]);
			return;
		}
}

static uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

#define READ_CR(n) ({ uint64_t v_; __asm__ volatile("mov %%cr" #n ", %0" : "=r"(v_)); v_; })
#define WRITE_CR(n, v) __asm__ volatile("mov %0, %%cr" #n : : "r"((uint64_t)(v)) : "memory")
#define READ_DR(n) ({ uint64_t v_; __asm__ volatile("mov %%db" #n ", %0" : "=r"(v_)); v_; })
#define WRITE_DR(n, v) __asm__ volatile("mov %0, %%db" #n : : "r"((uint64_t)(v)))
#define READ_SEG(s) ({ uint16_t v_; __asm__ volatile("mov %%" #s ", %0" : "=r"(v_)); v_; })

struct __attribute__((packed)) dtr {
	uint16_t limit;
	uint64_t base;
};

static uint64_t data_descriptor(void)
{
	return 0x00cf93000000ffffULL;   /* flat, read/write, accessed, DPL 0 */
}

static void tss_descriptor(unsigned sel, const uint8_t *t)
{
	uint64_t base = (uint64_t)(uintptr_t)t;
	gdt[sel / 8] = (sizeof(tss[0]) - 1) | ((base & 0xffffff) << 16) | (0x89ULL << 40) |
		       ((base >> 24) & 0xff) << 56;
	gdt[sel / 8 + 1] = base >> 32;
}

/* CS 0x08 code64; SS, DS, ES, FS, GS each their own data descriptor; an available
 * 64-bit TSS (two slots each) at 0x38 for the boot CPU and 0x48 for the other. */
static void build_gdt(void)
{
	gdt[SEL_CS / 8] = 0x00af9b000000ffffULL;
	for (unsigned s = SEL_SS; s <= SEL_GS; s += 8)
		gdt[s / 8] = data_descriptor();
	tss_descriptor(SEL_TSS, tss[0]);
	tss_descriptor(SEL_TSS_AP, tss[1]);
}

static void load_gdt(uint16_t tr)
{
	struct dtr d = { sizeof(gdt) - 1, (uint64_t)(uintptr_t)gdt };
	__asm__ volatile("lgdt %0" : : "m"(d));
	/* CS through a far return, then the data segments and TR. */
	__asm__ volatile("pushq %0\n"
			 "leaq 1f(%%rip), %%rax\n"
			 "pushq %%rax\n"
			 "lretq\n"
			 "1:\n" : : "i"(SEL_CS) : "rax", "memory");
	__asm__ volatile("mov %0, %%ss\n mov %1, %%ds\n mov %2, %%es\n mov %3, %%fs\n mov %4, %%gs"
			 : : "r"((uint16_t)SEL_SS), "r"((uint16_t)SEL_DS), "r"((uint16_t)SEL_ES),
			     "r"((uint16_t)SEL_FS), "r"((uint16_t)SEL_GS) : "memory");
	__asm__ volatile("ltr %0" : : "r"(tr));
	__asm__ volatile("lldt %0" : : "r"((uint16_t)0));
}

/* An FXSAVE image: FCW, FSW, abridged FTW all valid, ST0-ST7, MXCSR, XMM0-XMM15;
 * other patterns for each CPU. */
static void make_fx_image(unsigned cpu)
{
	uint8_t *fx = fx_load[cpu];
	unsigned p = 200 * cpu;
	memset(fx, 0, FXSAVE_BYTES);
	*(uint16_t *)&fx[0] = cpu ? 0x077f : 0x0b7f; /* FCW: masks, rounding, 64-bit precision */
	*(uint16_t *)&fx[2] = 0x3800;           /* FSW: TOP = 7 */
	fx[4] = 0xff;                            /* FTW: ST0..ST7 valid */
	*(uint32_t *)&fx[24] = cpu ? 0x3fc0 : 0x5fc0; /* MXCSR: masks, rounding, DAZ */
	*(uint32_t *)&fx[28] = 0xffff;          /* MXCSR_MASK: ignored by FXRSTOR */
	for (unsigned i = 0; i < 8; i++) {       /* ST(i): 10 bytes in a 16-byte slot */
		uint64_t m = pattern(p + 20 + i) | (1ULL << 63);
		memcpy(&fx[32 + 16 * i], &m, 8);
		*(uint16_t *)&fx[40 + 16 * i] = (uint16_t)(0x3fff + i * 3 + cpu);
	}
	for (unsigned i = 0; i < 16; i++) {
		uint64_t lo = pattern(p + 40 + 2 * i), hi = pattern(p + 41 + 2 * i);
		memcpy(&fx[160 + 16 * i], &lo, 8);
		memcpy(&fx[168 + 16 * i], &hi, 8);
	}
}

static void make_xsave_image(void)
{
	memset(xs_load, 0, sizeof(xs_load));
	memcpy(xs_load, fx_load[0], FXSAVE_BYTES);
	*(uint64_t *)&xs_load[512] = XCR0_X87_SSE_AVX;   /* XSTATE_BV */
	for (unsigned i = 0; i < 16; i++) {
		uint64_t a = pattern(80 + 2 * i), b = pattern(81 + 2 * i);
		memcpy(&xs_load[YMM_HI_OFFSET + 16 * i], &a, 8);
		memcpy(&xs_load[YMM_HI_OFFSET + 8 + 16 * i], &b, 8);
	}
}

static void serial_rx(void *arg)
{
	(void)arg;
	while (inb(COM1_LSR) & 1)
		if (inb(LAYOUT_COM1_PORT) == 'c')
			regs_go = 1;
}

static void on_pending_vector(void *arg)
{
	(void)arg;
	pending_seen = pending_seen + 1;
}

static void on_deadline(void *arg)
{
	(void)arg;
	if (!deadline_fired)
		deadline_fired_tsc = rdtsc();
	deadline_fired = deadline_fired + 1;
}

struct expect {
	uint64_t cr0, cr2, cr3, cr4, efer, dr[4], dr7, lstar, sfmask, pat, fs, gs, kgs;
	struct dtr gdtr, idtr;
};

/* Other values on each CPU, so a swap between them shows. */
static void load_system_state(struct expect *x, unsigned cpu)
{
	x->cr0 = READ_CR(0) | CR0_MP | CR0_NE | CR0_WP | CR0_AM;
	WRITE_CR(0, x->cr0);
	x->cr4 = READ_CR(4) | CR4_PGE | CR4_OSFXSR | CR4_OSXMMEXCPT;
	WRITE_CR(4, x->cr4);
	x->cr3 = READ_CR(3) | CR3_PWT;
	WRITE_CR(3, x->cr3);
	x->cr2 = 0x00007fffdeadb000ULL + cpu * 0x10000;
	WRITE_CR(2, x->cr2);
	WRITE_CR(8, HOLD_CR8);
	x->efer = rdmsr(MSR_EFER) | EFER_SCE | EFER_NXE;
	wrmsr(MSR_EFER, x->efer);
	for (unsigned i = 0; i < 4; i++)
		x->dr[i] = 0x00007f0000001000ULL + i * 0x40 + cpu * 0x10000;
	WRITE_DR(0, x->dr[0]);
	WRITE_DR(1, x->dr[1]);
	WRITE_DR(2, x->dr[2]);
	WRITE_DR(3, x->dr[3]);
	/* L0-L3 on, each an 8-byte write watch on an address nothing touches. */
	x->dr7 = 0xdddd0455ULL;
	WRITE_DR(7, x->dr7);
	x->lstar = 0xffffffff81c0ffeeULL + cpu * 0x1000;
	wrmsr(MSR_LSTAR, x->lstar);
	x->sfmask = 0x47700 ^ (cpu << 8);
	wrmsr(MSR_SFMASK, x->sfmask);
	/* Every byte a valid memory type. */
	x->pat = cpu ? 0x0604010007050406ULL : 0x0105040607000106ULL;
	wrmsr(MSR_PAT, x->pat);
	x->fs = pattern(200 * cpu + 60) & 0x00007fffffffffffULL;
	x->gs = pattern(200 * cpu + 61) & 0x00007fffffffffffULL;
	x->kgs = pattern(200 * cpu + 62) | 0xffff800000000000ULL;
	wrmsr(MSR_FS_BASE, x->fs);
	wrmsr(MSR_GS_BASE, x->gs);
	wrmsr(MSR_KGS_BASE, x->kgs);
	__asm__ volatile("sgdt %0" : "=m"(x->gdtr));
	__asm__ volatile("sidt %0" : "=m"(x->idtr));
}

static void check_system_state(const struct expect *x, uint16_t tr_want)
{
	check("cr0", READ_CR(0), x->cr0);
	check("cr2", READ_CR(2), x->cr2);
	check("cr3", READ_CR(3), x->cr3);
	check("cr4", READ_CR(4), x->cr4);
	check("cr8", READ_CR(8), HOLD_CR8);
	check("efer", rdmsr(MSR_EFER), x->efer);
	check("dr0", READ_DR(0), x->dr[0]);
	check("dr1", READ_DR(1), x->dr[1]);
	check("dr2", READ_DR(2), x->dr[2]);
	check("dr3", READ_DR(3), x->dr[3]);
	check("dr7", READ_DR(7), x->dr7);
	check("lstar", rdmsr(MSR_LSTAR), x->lstar);
	check("sfmask", rdmsr(MSR_SFMASK), x->sfmask);
	check("pat", rdmsr(MSR_PAT), x->pat);
	check("fs base", rdmsr(MSR_FS_BASE), x->fs);
	check("gs base", rdmsr(MSR_GS_BASE), x->gs);
	check("kernel gs base", rdmsr(MSR_KGS_BASE), x->kgs);
	struct dtr g, i;
	__asm__ volatile("sgdt %0" : "=m"(g));
	__asm__ volatile("sidt %0" : "=m"(i));
	check("gdtr base", g.base, x->gdtr.base);
	check("gdtr limit", g.limit, x->gdtr.limit);
	check("idtr base", i.base, x->idtr.base);
	check("idtr limit", i.limit, x->idtr.limit);
	uint16_t tr, ldtr;
	__asm__ volatile("str %0" : "=r"(tr));
	__asm__ volatile("sldt %0" : "=r"(ldtr));
	check("cs", READ_SEG(cs), SEL_CS);
	check("ss", READ_SEG(ss), SEL_SS);
	check("ds", READ_SEG(ds), SEL_DS);
	check("es", READ_SEG(es), SEL_ES);
	check("fs", READ_SEG(fs), SEL_FS);
	check("gs", READ_SEG(gs), SEL_GS);
	check("tr", tr, tr_want);
	check("ldtr", ldtr, 0);
}

static void check_vector_state(unsigned cpu, bool xsave)
{
	const uint8_t *want = fx_load[cpu];
	uint8_t *got = fx_got[cpu];
	__asm__ volatile("fxsave %0" : "=m"(*(uint8_t(*)[FXSAVE_BYTES])got));
	check_bytes("x87 fcw", 0, got, want, 2);
	check_bytes("x87 fsw", 0, got + 2, want + 2, 2);
	check_bytes("x87 ftw", 0, got + 4, want + 4, 1);
	check_bytes("mxcsr", 0, got + 24, want + 24, 4);
	for (unsigned i = 0; i < 8; i++)
		check_bytes("st", i, got + 32 + 16 * i, want + 32 + 16 * i, 10);
	for (unsigned i = 0; i < 16; i++)
		check_bytes("xmm", i, got + 160 + 16 * i, want + 160 + 16 * i, 16);
	if (!xsave)
		return;
	memset(xs_got, 0, sizeof(xs_got));
	__asm__ volatile("xsave64 %0" : "=m"(xs_got) : "a"((uint32_t)XCR0_X87_SSE_AVX), "d"(0));
	for (unsigned i = 0; i < 16; i++)
		check_bytes("ymm_hi", i, xs_got + YMM_HI_OFFSET + 16 * i,
			    xs_load + YMM_HI_OFFSET + 16 * i, 16);
}

static uint32_t cpuid1_ecx(void)
{
	uint32_t a = 1, b, c = 0, d;
	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	return c;
}

static void check_timer_and_pending(uint64_t tsc_before, uint64_t deadline)
{
	/* CPUID.1:ECX[24]: without it KVM keeps the LVT timer out of TSC-deadline mode. */
	check("cpuid offers the tsc deadline timer", (cpuid1_ecx() >> 24) & 1, 1);
	uint64_t now = rdtsc();
	check("tsc not behind its value before the snapshot", now >= tsc_before, 1);
	/* Armed, or expired (the MSR reads 0) with its interrupt delivered or waiting for
	 * interrupts to be enabled again. */
	uint64_t msr = rdmsr(MSR_TSC_DEADLINE);
	check("tsc deadline msr armed or expired", msr == deadline || msr == 0, 1);
	if (msr == 0)
		check("tsc deadline expired at its deadline", rdtsc() >= deadline, 1);
	/* Interrupts on until it fires; give up at four times the window. */
	__asm__ volatile("sti" : : : "memory");
	while (!deadline_fired && rdtsc() < deadline + 4 * DEADLINE_CYCLES)
		;
	__asm__ volatile("cli" : : : "memory");
	check("tsc deadline timer fired once", deadline_fired, 1);
	check("tsc deadline timer not early", deadline_fired_tsc >= deadline, 1);
	/* The held-back self-IPI: once CR8 drops it is taken right after sti. */
	check("pending interrupt not delivered while held back", pending_seen, 0);
	WRITE_CR(8, 0);
	__asm__ volatile("sti" : : : "memory");
	for (unsigned i = 0; i < 1000 && !pending_seen; i++)
		barrier();
	__asm__ volatile("cli" : : : "memory");
	check("pending interrupt delivered once", pending_seen, 1);
}

/* CPUID.1:ECX: XSAVE (26) and AVX (28). */
static bool cpu_has_xsave_avx(void)
{
	uint32_t c = cpuid1_ecx();
	return (c & (1u << 26)) && (c & (1u << 28));
}

/* XSAVE64 faults as on hardware, whoever performs it (the CPU, or the VMM's emulation
 * assist on emulation-only KVM): #PF with CR2 and the write bit for an operand that is
 * not mapped (nothing is above 4 GiB in the boot page tables), #GP(0) for one that is
 * not 64-byte aligned. The handler steps over the 4-byte xsave64 (%rdi). */
static volatile unsigned fault_vector, faults;
static volatile uint64_t fault_error, fault_cr2;

static bool on_expected_fault(unsigned vector, uint64_t error, uint64_t *rip)
{
	fault_vector = vector;
	fault_error = error;
	fault_cr2 = READ_CR(2);
	faults = faults + 1;
	*rip += 4;
	return true;
}

static void xsave_at(uint64_t addr)
{
	__asm__ volatile(".byte 0x48, 0x0f, 0xae, 0x27" : : "D"(addr), "a"((uint32_t)XCR0_X87_SSE_AVX),
			 "d"(0) : "memory");
}

static void check_xsave_faults(void)
{
	const uint64_t unmapped = 0x100000000ULL << 2;
	tg_exception_route(on_expected_fault);
	faults = 0;
	xsave_at(unmapped);
	check("xsave to an unmapped page faults once", faults, 1);
	check("  ... with #PF", fault_vector, 14);
	check("  ... for a write to a page not present", fault_error & 3, 2);
	check("  ... at an address of the operand", fault_cr2 >= unmapped &&
	      fault_cr2 < unmapped + XSAVE_BYTES, 1);
	faults = 0;
	xsave_at((uint64_t)(uintptr_t)xs_got + 8);
	check("misaligned xsave faults once", faults, 1);
	check("  ... with #GP(0)", fault_vector == 13 && fault_error == 0, 1);
	tg_exception_route(NULL);
}

/* The other CPU (with two or more vCPUs): its own patterns in the same registers, held
 * through the same spin; it checks them once the boot CPU has checked its own, so the
 * two never print at once. x87/SSE only: it leaves XSAVE off. */
enum { AP_OFF, AP_HOLDING, AP_CHECK, AP_DONE };
static volatile unsigned ap_stage;
static struct expect ap_x;
static struct dtr idtr;
static uint8_t ap_stack[8192] __attribute__((aligned(16)));
/* About 30 s at current server TSC rates: a CPU that has not answered by then will not. */
#define AP_WAIT_CYCLES (90ULL << 30)

static void ap_main(void)
{
	load_gdt(SEL_TSS_AP);
	__asm__ volatile("lidt %0" : : "m"(idtr));
	load_system_state(&ap_x, AP_ID);
	__asm__ volatile("fxrstor %0" : : "m"(fx_load[AP_ID]));
	WRITE_ONCE(ap_stage, AP_HOLDING);
	ap_regs_hold();
	while (READ_ONCE(ap_stage) != AP_CHECK)
		barrier();
	who = "cpu 1 ";
	for (unsigned i = 0; i < NGPR; i++)
		check(gpr_names[i], ap_regs_got[i], ap_regs_load[i]);
	check_system_state(&ap_x, SEL_TSS_AP);
	check_vector_state(AP_ID, false);
	who = "";
	WRITE_ONCE(ap_stage, AP_DONE);
	for (;;)
		__asm__ volatile("cli; hlt");
}

static bool wait_ap(unsigned stage)
{
	uint64_t t0 = rdtsc();
	while (READ_ONCE(ap_stage) != stage)
		if (rdtsc() - t0 > AP_WAIT_CYCLES)
			return false;
	return true;
}

static void start_ap(void)
{
	make_fx_image(AP_ID);
	for (unsigned i = 0; i < NGPR; i++)
		ap_regs_load[i] = pattern(100 + i);
	__asm__ volatile("sidt %0" : "=m"(idtr));
	tg_start_ap(AP_ID, ap_main, ap_stack + sizeof(ap_stack));
	if (!wait_ap(AP_HOLDING))
		tg_fail(TG_EXIT_DATA, "regs: cpu 1 did not start (INIT/SIPI)\n");
}

_Noreturn void tg_regs_run(void)
{
	bool xsave = cpu_has_xsave_avx();
	unsigned cpus = tg_mp_cpus();
	build_gdt();
	load_gdt(SEL_TSS);
	tg_idt_reload();                 /* gates carry the new CS */
	if (cpus > 1)
		start_ap();
	tg_irq_route(SERIAL_IRQ, serial_rx, NULL);
	tg_vector_route(PENDING_VECTOR, on_pending_vector, NULL);
	tg_vector_route(DEADLINE_VECTOR, on_deadline, NULL);
	outb(COM1_MCR, 0x08);            /* OUT2: the UART's interrupt reaches the IOAPIC */
	outb(COM1_IER, 0x01);            /* interrupt on received data */

	struct expect x;
	load_system_state(&x, 0);
	make_fx_image(0);
	__asm__ volatile("fxrstor %0" : : "m"(fx_load[0]));
	if (xsave) {
		WRITE_CR(4, x.cr4 | CR4_OSXSAVE);
		x.cr4 |= CR4_OSXSAVE;
		__asm__ volatile("xsetbv" : : "a"((uint32_t)XCR0_X87_SSE_AVX), "d"(0), "c"(0));
		make_xsave_image();
		__asm__ volatile("xrstor64 %0" : : "m"(xs_load), "a"((uint32_t)XCR0_X87_SSE_AVX), "d"(0));
	}
	for (unsigned i = 0; i < NGPR; i++)
		regs_load[i] = pattern(i);

	/* The self-IPI waits in the IRR (CR8 = 2 holds back class 2); the timer counts down
	 * in TSC-deadline mode. */
	mmio_write32(LAYOUT_LAPIC_GPA + LAPIC_ICR_LO, ICR_SELF | PENDING_VECTOR);
	/* The periodic tick stops; the timer counts down in TSC-deadline mode instead. */
	mmio_write32(LAYOUT_LAPIC_GPA + LAPIC_TIMER_ICR, 0);
	mmio_write32(LAYOUT_LAPIC_GPA + LAPIC_LVT_TIMER, LVT_TSC_DEADLINE | DEADLINE_VECTOR);
	uint64_t tsc_before = rdtsc();
	uint64_t deadline = tsc_before + DEADLINE_CYCLES;
	wrmsr(MSR_TSC_DEADLINE, deadline);
	tg_printf("regs: holding, %s, %u CPU%s, deadline 0x%lx\n", xsave ? "with YMM (xsave)" :
		  "x87/SSE only: this CPU has no XSAVE or no AVX", cpus, cpus > 1 ? "s" : "", deadline);
	__asm__ volatile("sti" : : : "memory");
	regs_hold();
	__asm__ volatile("cli" : : : "memory");

	for (unsigned i = 0; i < NGPR; i++)
		check(gpr_names[i], regs_got[i], regs_load[i]);
	check_system_state(&x, SEL_TSS);
	check_vector_state(0, xsave);
	check_timer_and_pending(tsc_before, deadline);
	if (xsave)
		check_xsave_faults();
	if (cpus > 1) {
		WRITE_ONCE(ap_stage, AP_CHECK);
		check("cpu 1 answers after the snapshot", wait_ap(AP_DONE), 1);
	}
	tg_printf("regs: %u checks, %u differ\n", checks, differ);
	tg_exit(differ ? TG_EXIT_DATA : TG_EXIT_PASS);
}
