/* Mitos test guest: booted like a Linux vmlinux, it checks what the VMM gives a guest
 * (command line, MP table, LAPIC/IOAPIC interrupts, virtio-mmio block devices) and
 * reports PASS/FAIL on COM1 and through the debug-exit port.
 *
 * Every guest instruction at CPL0 is emulated on the hosts we run on (~1M/s), so the
 * code stays integer-only and avoids byte loops over anything large. */
#include <stdarg.h>

#include "firmware/testguest/tg.h"
#include "lib/layout.h"

/* ---- console --------------------------------------------------------------------- */

#define COM1_THR 0
#define COM1_LSR 5
#define LSR_THRE 0x20

/* If THRE never comes up the UART model is broken; stop polling rather than spending
 * thousands of exits per character. */
static bool serial_no_poll;

void tg_putc(char c)
{
	if (!serial_no_poll) {
		unsigned tries = 0;
		while (!(inb(LAYOUT_COM1_PORT + COM1_LSR) & LSR_THRE))
			if (++tries == 10000) {
				serial_no_poll = true;
				break;
			}
	}
	outb(LAYOUT_COM1_PORT + COM1_THR, (uint8_t)c);
}

static void put_str(const char *s)
{
	while (*s)
		tg_putc(*s++);
}

static void put_num(uint64_t v, unsigned base, unsigned width, char pad)
{
	char buf[24];
	unsigned n = 0;
	do {
		unsigned d = (unsigned)(v % base);
		buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	while (width > n) {
		tg_putc(pad);
		width--;
	}
	while (n)
		tg_putc(buf[--n]);
}

static void vformat(const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			tg_putc(*fmt);
			continue;
		}
		char pad = ' ';
		unsigned width = 0;
		bool is_long = false;
		fmt++;
		if (*fmt == '0')
			pad = '0';
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (unsigned)(*fmt++ - '0');
		while (*fmt == 'l') {
			is_long = true;
			fmt++;
		}
		switch (*fmt) {
		case 'd': {
			int64_t v = is_long ? va_arg(ap, int64_t) : va_arg(ap, int);
			if (v < 0) {
				tg_putc('-');
				put_num(-(uint64_t)v, 10, width, pad);
			} else {
				put_num((uint64_t)v, 10, width, pad);
			}
			break;
		}
		case 'u':
			put_num(is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, width, pad);
			break;
		case 'x':
			put_num(is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, width, pad);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			put_str(s ? s : "(null)");
			break;
		}
		case 'c':
			tg_putc((char)va_arg(ap, int));
			break;
		case '%':
			tg_putc('%');
			break;
		default:
			tg_putc('?');
			if (!*fmt)
				return;
		}
	}
}

void tg_printf(const char *fmt, ...)
{
	va_list ap;
	put_str("testguest: ");
	va_start(ap, fmt);
	vformat(fmt, ap);
	va_end(ap);
}

void tg_cprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vformat(fmt, ap);
	va_end(ap);
}

_Noreturn void tg_exit(enum tg_exit code)
{
	outb(LAYOUT_DEBUG_EXIT_PORT, (uint8_t)code);
	/* The VMM should have stopped us; park the CPU instead of running on. */
	for (;;)
		__asm__ volatile("cli; hlt");
}

void tg_fail(enum tg_exit code, const char *fmt, ...)
{
	va_list ap;
	put_str("testguest: FAIL ");
	va_start(ap, fmt);
	vformat(fmt, ap);
	va_end(ap);
	tg_putc('\n');
	tg_exit(code);
}

/* The compiler may emit calls to these even in freestanding code. */
void *memset(void *d, int c, size_t n)
{
	uint8_t *p = d;
	while (n--)
		*p++ = (uint8_t)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	uint8_t *p = d;
	const uint8_t *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

/* ---- command line ----------------------------------------------------------------- */

#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_CMD_LINE_PTR     0x228
#define MAX_DEVICES         LAYOUT_VIRTIO_MAX_DEVICES

enum tg_mode { TG_MODE_BLK, TG_MODE_NONE, TG_MODE_SNAP, TG_MODE_NET, TG_MODE_VSOCK, TG_MODE_AGENT,
	       TG_MODE_REGS };

struct config {
	enum tg_mode mode;
	unsigned cpus;   /* 0: not asked to check */
	uint32_t vsock_port;
	unsigned ndev;
	struct tg_virtio_dev dev[MAX_DEVICES];
};

static bool has_prefix(const char *s, const char *end, const char *prefix, const char **rest)
{
	while (*prefix) {
		if (s == end || *s != *prefix)
			return false;
		s++, prefix++;
	}
	*rest = s;
	return true;
}

static int digit_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return 99;
}

/* strtoull(): base 0 picks 16 for "0x", 8 for a leading 0, else 10. False when no
 * digits were consumed. */
static bool parse_u64(const char **pp, const char *end, unsigned base, uint64_t *out)
{
	const char *p = *pp;
	if (base == 0) {
		base = 10;
		if (p < end && *p == '0') {
			base = 8;
			if (p + 2 < end && (p[1] == 'x' || p[1] == 'X') && digit_value(p[2]) < 16) {
				base = 16;
				p += 2;
			}
		}
	}
	uint64_t v = 0;
	const char *start = p;
	while (p < end && digit_value(*p) < (int)base)
		v = v * base + (uint64_t)digit_value(*p++);
	if (p == start)
		return false;
	*pp = p;
	*out = v;
	return true;
}

/* Linux memparse(): a number with an optional K/M/G/T/P/E suffix. */
static bool parse_size(const char **pp, const char *end, uint64_t *out)
{
	if (!parse_u64(pp, end, 0, out))
		return false;
	if (*pp < end) {
		static const char suffixes[] = "kmgtpe";
		char c = **pp | 0x20;
		for (unsigned i = 0; suffixes[i]; i++)
			if (c == suffixes[i]) {
				*out <<= 10 * (i + 1);
				(*pp)++;
				break;
			}
	}
	return true;
}

/* <size>@<base>:<irq>[:<id>], as Linux's virtio_mmio.device= parser takes it. */
static void parse_virtio_device(struct config *cfg, const char *p, const char *end)
{
	uint64_t size, base, irq, id;
	const char *tok = p;
	if (!parse_size(&p, end, &size) || p == end || *p++ != '@' ||
	    !parse_u64(&p, end, 0, &base) || p == end || *p++ != ':' ||
	    !parse_u64(&p, end, 10, &irq))
		goto bad;
	if (p < end && (*p++ != ':' || !parse_u64(&p, end, 0, &id)))
		goto bad;
	if (p != end || size == 0 || base == 0)
		goto bad;
	if (irq >= 24)
		tg_fail(TG_EXIT_CMDLINE, "virtio_mmio.device irq %lu is beyond the IOAPIC's 24 pins",
			irq);
	if (cfg->ndev == MAX_DEVICES)
		tg_fail(TG_EXIT_CMDLINE, "more than %u virtio_mmio.device= entries", MAX_DEVICES);
	cfg->dev[cfg->ndev++] = (struct tg_virtio_dev){ .base = base, .size = size,
							 .irq = (unsigned)irq };
	return;
bad:
	put_str("testguest: FAIL malformed virtio_mmio.device=");
	while (tok < end)
		tg_putc(*tok++);
	tg_putc('\n');
	tg_exit(TG_EXIT_CMDLINE);
}

static void parse_cmdline(struct config *cfg, const char *cmd)
{
	const char *p = cmd, *limit = cmd + LAYOUT_CMDLINE_MAX;
	while (p < limit && *p) {
		while (p < limit && *p == ' ')
			p++;
		const char *tok = p, *v;
		while (p < limit && *p && *p != ' ')
			p++;
		if (has_prefix(tok, p, "testguest.mode=", &v)) {
			const char *r;
			if (has_prefix(v, p, "none", &r) && r == p)
				cfg->mode = TG_MODE_NONE;
			else if (has_prefix(v, p, "blk", &r) && r == p)
				cfg->mode = TG_MODE_BLK;
			else if (has_prefix(v, p, "snap", &r) && r == p)
				cfg->mode = TG_MODE_SNAP;
			else if (has_prefix(v, p, "net", &r) && r == p)
				cfg->mode = TG_MODE_NET;
			else if (has_prefix(v, p, "vsock", &r) && r == p)
				cfg->mode = TG_MODE_VSOCK;
			else if (has_prefix(v, p, "agent", &r) && r == p)
				cfg->mode = TG_MODE_AGENT;
			else if (has_prefix(v, p, "regs", &r) && r == p)
				cfg->mode = TG_MODE_REGS;
			else
				tg_fail(TG_EXIT_CMDLINE, "unknown testguest.mode (want blk, none, snap, "
					"net, vsock, agent or regs)");

		} else if (has_prefix(tok, p, "testguest.cpus=", &v)) {
			uint64_t n;
			if (!parse_u64(&v, p, 10, &n) || v != p || n == 0 || n > LAYOUT_MAX_VCPUS)
				tg_fail(TG_EXIT_CMDLINE, "bad testguest.cpus (want 1..%u)",
					(unsigned)LAYOUT_MAX_VCPUS);
			cfg->cpus = (unsigned)n;
		} else if (has_prefix(tok, p, "testguest.vsock_port=", &v)) {
			uint64_t n;
			if (!parse_u64(&v, p, 10, &n) || v != p || n >= 0xffffffffULL)
				tg_fail(TG_EXIT_CMDLINE, "bad testguest.vsock_port (want 0..4294967294)");
			cfg->vsock_port = (uint32_t)n;
		} else if (has_prefix(tok, p, "virtio_mmio.device=", &v)) {
			parse_virtio_device(cfg, v, p);
		}
	}
}

/* ---- MP table ---------------------------------------------------------------------- */

#define MP_FLOAT_SIG  0x5f504d5fu /* "_MP_" */
#define MP_CONFIG_SIG 0x504d4350u /* "PCMP" */

static uint8_t byte_sum(const uint8_t *p, unsigned n)
{
	uint8_t s = 0;
	while (n--)
		s += *p++;
	return s;
}

static const uint8_t *mp_find_floating(uint64_t start, uint64_t end)
{
	for (uint64_t a = start; a + 16 <= end; a += 16) {
		const uint8_t *p = (const uint8_t *)(uintptr_t)a;
		if (*(const uint32_t *)p == MP_FLOAT_SIG && p[8] != 0 &&
		    byte_sum(p, 16u * p[8]) == 0)
			return p;
	}
	return NULL;
}

static void check_mptable(unsigned want_cpus)
{
	const uint8_t *fp = mp_find_floating(LAYOUT_EBDA_GPA, LAYOUT_EBDA_END);
	if (!fp)
		fp = mp_find_floating(0xf0000, 0x100000);
	if (!fp)
		tg_fail(TG_EXIT_MPTABLE, "no MP floating pointer (_MP_) in the EBDA or BIOS area");
	uint32_t cfg_addr = *(const uint32_t *)(fp + 4);
	if (cfg_addr == 0)
		tg_fail(TG_EXIT_MPTABLE, "MP floating pointer names a default configuration, "
			"no table to count CPUs in");
	const uint8_t *ct = (const uint8_t *)(uintptr_t)cfg_addr;
	uint16_t len = *(const uint16_t *)(ct + 4);
	uint16_t count = *(const uint16_t *)(ct + 34);
	if (*(const uint32_t *)ct != MP_CONFIG_SIG || len < 44)
		tg_fail(TG_EXIT_MPTABLE, "bad MP config table at 0x%x", cfg_addr);
	if (byte_sum(ct, len) != 0)
		tg_fail(TG_EXIT_MPTABLE, "MP config table checksum is wrong");

	unsigned cpus = 0, enabled = 0, ioapics = 0, off = 44;
	for (unsigned i = 0; i < count; i++) {
		if (off >= len)
			tg_fail(TG_EXIT_MPTABLE, "MP table has %u entries but ends after %u", count, i);
		uint8_t type = ct[off];
		unsigned size = type == 0 ? 20 : 8;
		if (type > 4 || off + size > len)
			tg_fail(TG_EXIT_MPTABLE, "bad MP table entry type %u at offset %u", type, off);
		if (type == 0) {
			cpus++;
			enabled += ct[off + 3] & 1;
		} else if (type == 2) {
			ioapics++;
		}
		off += size;
	}
	tg_printf("mptable at 0x%lx: %u processors, %u enabled, %u ioapic(s)\n",
		  (uint64_t)(uintptr_t)fp, cpus, enabled, ioapics);
	if (enabled != want_cpus)
		tg_fail(TG_EXIT_MPTABLE, "MP table lists %u enabled processors, expected %u",
			enabled, want_cpus);
}

/* ---- interrupts ------------------------------------------------------------------- */

struct tg_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error, rip, cs, rflags, rsp, ss;
};

struct idt_gate {
	uint16_t off0, sel;
	uint8_t ist, type;
	uint16_t off1;
	uint32_t off2, zero;
};

extern const char isr_stubs[];
static struct idt_gate idt[256] __attribute__((aligned(16)));

#define LAPIC_ID        0x020
#define LAPIC_TPR       0x080
#define LAPIC_EOI       0x0b0
#define LAPIC_SVR       0x0f0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_CCR 0x390
#define LAPIC_TIMER_DCR 0x3e0
#define LVT_MASKED      (1u << 16)
#define LVT_PERIODIC    (1u << 17)
#define IOAPIC_REGSEL   0x00
#define IOAPIC_WIN      0x10
#define MSR_APIC_BASE   0x1b
#define APIC_BASE_EXTD  (1u << 10)
#define APIC_BASE_EN    (1u << 11)
/* KVM's APIC bus runs at 1 GHz: divide by 16, 625000 counts = 10 ms. */
#define TIMER_DIVIDE_16 0x3
#define TIMER_COUNT     625000u

static volatile uint64_t ticks;
static volatile unsigned spurious;
static unsigned lapic_id;
static struct {
	tg_irq_handler fn;
	void *arg;
} irq_routes[24];
static struct {
	unsigned vector;
	tg_irq_handler fn;
	void *arg;
} vector_routes[2];
static tg_exception_handler exception_handler;

static uint32_t lapic_read(unsigned reg) { return mmio_read32(LAYOUT_LAPIC_GPA + reg); }
static void lapic_write(unsigned reg, uint32_t v) { mmio_write32(LAYOUT_LAPIC_GPA + reg, v); }

static uint32_t ioapic_read(unsigned reg)
{
	mmio_write32(LAYOUT_IOAPIC_GPA + IOAPIC_REGSEL, reg);
	return mmio_read32(LAYOUT_IOAPIC_GPA + IOAPIC_WIN);
}

static void ioapic_write(unsigned reg, uint32_t v)
{
	mmio_write32(LAYOUT_IOAPIC_GPA + IOAPIC_REGSEL, reg);
	mmio_write32(LAYOUT_IOAPIC_GPA + IOAPIC_WIN, v);
}

static const char *const exception_names[32] = {
	"#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow",
	"#BR bound range", "#UD invalid opcode", "#NM device not available",
	"#DF double fault", "coprocessor segment overrun", "#TS invalid TSS",
	"#NP segment not present", "#SS stack fault", "#GP general protection",
	"#PF page fault", "reserved", "#MF x87 error", "#AC alignment check",
	"#MC machine check", "#XM SIMD error", "#VE virtualization", "#CP control protection",
};

void isr_dispatch(struct tg_frame *f);
void isr_dispatch(struct tg_frame *f)
{
	unsigned v = (unsigned)f->vector;
	if (v < 32 && exception_handler && exception_handler(v, f->error, &f->rip))
		return;
	if (v < 32) {
		uint64_t cr2 = 0;
		if (v == 14)
			__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
		const char *name = exception_names[v] ? exception_names[v] : "reserved";
		tg_fail(TG_EXIT_EXCEPTION,
			"unhandled exception %u (%s) error 0x%lx at RIP 0x%lx (RSP 0x%lx, CR2 0x%lx)",
			v, name, f->error, f->rip, f->rsp, cr2);
	}
	if (v == TG_VECTOR_SPURIOUS) {
		spurious = spurious + 1; /* spurious vectors take no EOI */
		return;
	}
	if (v == TG_VECTOR_TIMER) {
		ticks = ticks + 1;
	} else if (v >= TG_VECTOR_IRQ_BASE && v < TG_VECTOR_IRQ_BASE + 24 &&
		   irq_routes[v - TG_VECTOR_IRQ_BASE].fn) {
		irq_routes[v - TG_VECTOR_IRQ_BASE].fn(irq_routes[v - TG_VECTOR_IRQ_BASE].arg);
	} else if (vector_routes[0].fn && v == vector_routes[0].vector) {
		vector_routes[0].fn(vector_routes[0].arg);
	} else if (vector_routes[1].fn && v == vector_routes[1].vector) {
		vector_routes[1].fn(vector_routes[1].arg);
	} else {
		tg_fail(TG_EXIT_INTERRUPT, "unexpected interrupt vector 0x%x at RIP 0x%lx", v,
			f->rip);
	}
	lapic_write(LAPIC_EOI, 0);
}

static void idt_init(void)
{
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	for (unsigned v = 0; v < 256; v++) {
		uint64_t a = (uint64_t)(uintptr_t)isr_stubs + 16u * v;
		idt[v] = (struct idt_gate){ .off0 = (uint16_t)a, .sel = cs, .type = 0x8e,
					    .off1 = (uint16_t)(a >> 16),
					    .off2 = (uint32_t)(a >> 32) };
	}
	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} idtr = { sizeof(idt) - 1, (uint64_t)(uintptr_t)idt };
	__asm__ volatile("lidt %0" : : "m"(idtr));
}

/* The legacy PIC powers up unmasked with vectors 0-7 (on top of CPU exceptions), so
 * remap it out of the way and mask it before anything can be routed through it. */
static void pic_disable(void)
{
	static const uint8_t init[2][5] = {
		{ 0x20, 0x11, 0x20, 0x04, 0x01 },   /* master: ICW1..4 */
		{ 0xa0, 0x11, 0x28, 0x02, 0x01 },   /* slave */
	};
	for (unsigned i = 0; i < 2; i++) {
		outb(init[i][0], init[i][1]);
		for (unsigned j = 2; j < 5; j++)
			outb(init[i][0] + 1, init[i][j]);
		outb(init[i][0] + 1, 0xff);
	}
}

static void interrupts_init(void)
{
	pic_disable();
	uint64_t base = rdmsr(MSR_APIC_BASE);
	if ((base & ~0xfffULL) != LAYOUT_LAPIC_GPA || (base & APIC_BASE_EXTD))
		tg_fail(TG_EXIT_INTERRUPT, "IA32_APIC_BASE is 0x%lx: want an xAPIC at 0x%lx",
			base, (uint64_t)LAYOUT_LAPIC_GPA);
	if (!(base & APIC_BASE_EN))
		wrmsr(MSR_APIC_BASE, base | APIC_BASE_EN);

	lapic_id = lapic_read(LAPIC_ID) >> 24;
	lapic_write(LAPIC_SVR, 0x100 | TG_VECTOR_SPURIOUS);
	lapic_write(LAPIC_TPR, 0);
	lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
	lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);

	/* A periodic tick is the watchdog that turns a lost device interrupt into a
	 * timeout instead of a hlt that never returns. */
	lapic_write(LAPIC_TIMER_DCR, TIMER_DIVIDE_16);
	lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | TG_VECTOR_TIMER);
	lapic_write(LAPIC_TIMER_ICR, TIMER_COUNT);
	uint32_t c0 = lapic_read(LAPIC_TIMER_CCR);
	if (c0 == 0 || c0 > TIMER_COUNT)
		tg_fail(TG_EXIT_INTERRUPT, "LAPIC timer is not counting (current count 0x%x)", c0);
	/* Spin, not hlt: until the first tick arrives nothing could wake us. Bounded in
	 * guest time, by the timer's own reloads, so a busy host cannot fail it: five whole
	 * periods counted down without an interrupt means the interrupt is lost. */
	unsigned periods = 0;
	uint32_t last = c0;
	__asm__ volatile("sti" : : : "memory");
	while (READ_ONCE(ticks) == 0 && periods < 5) {
		uint32_t now = lapic_read(LAPIC_TIMER_CCR);
		if (now > last)
			periods++;
		last = now;
	}
	__asm__ volatile("cli" : : : "memory");
	if (ticks == 0)
		tg_fail(TG_EXIT_INTERRUPT, "LAPIC timer interrupt never arrived");

	uint32_t ver = ioapic_read(1);
	tg_printf("lapic id %u, ioapic version 0x%x with %u pins, timer ticking\n", lapic_id,
		  ver & 0xff, ((ver >> 16) & 0xff) + 1);
}

void tg_irq_route(unsigned irq, tg_irq_handler fn, void *arg)
{
	unsigned pins = ((ioapic_read(1) >> 16) & 0xff) + 1;
	if (irq >= pins || irq >= 24)
		tg_fail(TG_EXIT_INTERRUPT, "irq %u is beyond the IOAPIC's %u pins", irq, pins);
	irq_routes[irq].fn = fn;
	irq_routes[irq].arg = arg;
	/* Edge, active high, fixed delivery, physical destination; unmask last. */
	ioapic_write(0x10 + 2 * irq + 1, lapic_id << 24);
	ioapic_write(0x10 + 2 * irq, TG_VECTOR_IRQ_BASE + irq);
	uint32_t lo = ioapic_read(0x10 + 2 * irq);
	if ((lo & 0x1ffff) != TG_VECTOR_IRQ_BASE + irq)
		tg_fail(TG_EXIT_INTERRUPT, "IOAPIC entry %u reads back 0x%x", irq, lo);
}

void tg_vector_route(unsigned vector, tg_irq_handler fn, void *arg)
{
	unsigned i = vector_routes[0].fn ? 1 : 0;
	if (vector_routes[i].fn)
		tg_fail(TG_EXIT_INTERRUPT, "more than two routed vectors");
	vector_routes[i].vector = vector;
	vector_routes[i].arg = arg;
	vector_routes[i].fn = fn;
}

void tg_exception_route(tg_exception_handler fn)
{
	exception_handler = fn;
}

void tg_idt_reload(void)
{
	idt_init();
}

void tg_wait_interrupt(void)
{
	/* sti's one-instruction shadow makes sti;hlt atomic: an interrupt that became
	 * pending before it still wakes the hlt. */
	__asm__ volatile("sti; hlt; cli" : : : "memory");
}

uint64_t tg_ticks(void)
{
	return ticks;
}

/* ---- main ------------------------------------------------------------------------- */

void tg_main(const uint8_t *boot_params);
void tg_main(const uint8_t *boot_params)
{
	static struct config cfg = { .vsock_port = TG_VSOCK_DEFAULT_PORT };
	idt_init();
	tg_printf("hello from the Mitos test guest (boot_params at 0x%lx)\n",
		  (uint64_t)(uintptr_t)boot_params);

	uint64_t cmd_addr = *(const uint32_t *)(boot_params + BP_CMD_LINE_PTR) |
			    (uint64_t)*(const uint32_t *)(boot_params + BP_EXT_CMD_LINE_PTR) << 32;
	if (cmd_addr) {
		const char *cmd = (const char *)(uintptr_t)cmd_addr;
		tg_printf("cmdline: ");
		for (unsigned i = 0; i < LAYOUT_CMDLINE_MAX && cmd[i]; i++)
			tg_putc(cmd[i]);
		tg_putc('\n');
		parse_cmdline(&cfg, cmd);
	} else {
		tg_printf("no command line\n");
	}

	if (cfg.cpus)
		check_mptable(cfg.cpus);

	if (cfg.mode == TG_MODE_NONE) {
		tg_printf("mode none: nothing more to check\n");
	} else if (cfg.mode == TG_MODE_SNAP) {
		interrupts_init();
		tg_snap_run(cfg.dev, cfg.ndev);
	} else if (cfg.mode == TG_MODE_NET) {
		interrupts_init();
		tg_net_run((const char *)(uintptr_t)cmd_addr, cfg.dev, cfg.ndev);
	} else if (cfg.mode == TG_MODE_VSOCK) {
		interrupts_init();
		tg_vsock_run(cfg.dev, cfg.ndev, cfg.vsock_port);
	} else if (cfg.mode == TG_MODE_AGENT) {
		interrupts_init();
		tg_agent_run(cfg.dev, cfg.ndev);
	} else if (cfg.mode == TG_MODE_REGS) {
		interrupts_init();
		tg_regs_run();
	} else {
		interrupts_init();
		unsigned nblk = 0;
		for (unsigned i = 0; i < cfg.ndev; i++) {
			uint32_t id = tg_virtio_probe(&cfg.dev[i]);
			if (id == 2) {
				tg_blk_test(&cfg.dev[i]);
				nblk++;
			} else {
				tg_printf("virtio-mmio at 0x%lx: device id %u, not tested\n",
					  cfg.dev[i].base, id);
			}
		}
		if (nblk == 0)
			tg_fail(TG_EXIT_NO_DEVICE, "no virtio-blk device on the command line "
				"(virtio_mmio.device=<size>@<addr>:<irq>)");
		if (spurious)
			tg_printf("%u spurious LAPIC interrupt(s)\n", spurious);
	}
	tg_printf("PASS\n");
	tg_exit(TG_EXIT_PASS);
}
