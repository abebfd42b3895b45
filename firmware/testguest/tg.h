/* Shared helpers of the test guest: port and MMIO access, console, failure, interrupt
 * waits. Freestanding: the guest has no libc. */
#ifndef MITOS_TESTGUEST_TG_H
#define MITOS_TESTGUEST_TG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Exit codes written to the debug-exit port: the VMM exits with them. They start at 16
 * so they cannot be mistaken for mitos-vmm's own statuses (1 VMM error, 2 usage,
 * 3 guest crash) or for a signal (128+N). */
enum tg_exit {
	TG_EXIT_PASS = 0,
	TG_EXIT_CMDLINE = 16,    /* malformed or unknown command-line value */
	TG_EXIT_MPTABLE = 17,    /* MP table missing/corrupt or wrong CPU count */
	TG_EXIT_TRANSPORT = 18,  /* virtio-mmio: magic, version, features, queue set-up */
	TG_EXIT_REQUEST = 19,    /* a virtio-blk request failed or completed wrongly */
	TG_EXIT_DATA = 20,       /* data read back differs from the expected pattern */
	TG_EXIT_TIMEOUT = 21,    /* no completion / no interrupt in time */
	TG_EXIT_EXCEPTION = 22,  /* unhandled CPU exception */
	TG_EXIT_NO_DEVICE = 23,  /* mode=blk but no virtio-blk device given */
	TG_EXIT_INTERRUPT = 24,  /* LAPIC/IOAPIC set-up or an unexpected interrupt */
};

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

static inline uint32_t mmio_read32(uint64_t addr)
{
	return *(volatile uint32_t *)(uintptr_t)addr;
}

static inline void mmio_write32(uint64_t addr, uint32_t v)
{
	*(volatile uint32_t *)(uintptr_t)addr = v;
}

static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

static inline void barrier(void)
{
	__asm__ volatile("" : : : "memory");
}

/* Full barrier without mfence (an SSE2 encoding the emulator may not take); the
 * store->load ordering the virtqueue notification checks need. */
static inline void mb(void)
{
	__asm__ volatile("lock; addl $0, (%%rsp)" : : : "memory", "cc");
}

#define READ_ONCE(x)     (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))

/* Console: %s %c %d %u %x (32-bit), %ld %lu %lx (64-bit); %0Nx zero-pads hex. Each
 * tg_printf call writes its text after the "testguest: " prefix; end with \n. */
void tg_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Continues a line started with tg_printf (no prefix). */
void tg_cprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tg_putc(char c);
_Noreturn void tg_fail(enum tg_exit code, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);

/* Interrupts. */
#define TG_VECTOR_IRQ_BASE 0x30   /* IOAPIC pin n -> vector 0x30 + n */
#define TG_VECTOR_TIMER    0xec
#define TG_VECTOR_SPURIOUS 0xff

/* Called from the interrupt handler for a device's IOAPIC pin. */
typedef void (*tg_irq_handler)(void *arg);
void tg_irq_route(unsigned irq, tg_irq_handler fn, void *arg);
/* Calls fn(arg) for a vector outside the IOAPIC range (two at most). */
void tg_vector_route(unsigned vector, tg_irq_handler fn, void *arg);
/* Offered every CPU exception first: true when it handled it (and moved *rip past the
 * instruction); NULL: none, every exception fails the test. */
typedef bool (*tg_exception_handler)(unsigned vector, uint64_t error, uint64_t *rip);
void tg_exception_route(tg_exception_handler fn);
/* Rebuilds the IDT with the current CS (after loading another GDT). */
void tg_idt_reload(void);
/* Sleeps (sti; hlt) until an interrupt arrives: a device's, or the LAPIC timer's, which
 * ticks every ~10 ms so that every wait can time out. */
void tg_wait_interrupt(void);
/* Timer ticks since the interrupts were set up. */
uint64_t tg_ticks(void);
#define TG_TICKS_PER_SECOND 100

/* The block test (blk.c). */
struct tg_virtio_dev {
	uint64_t base;
	uint64_t size;
	unsigned irq;
};
/* Probes one virtio-mmio window; returns its device id (0: no device). */
uint32_t tg_virtio_probe(const struct tg_virtio_dev *d);
void tg_blk_test(const struct tg_virtio_dev *d);
/* One disk kept open for the other modes: requests fail the test unless they succeed;
 * a write is flushed before it returns. */
void tg_blk_open(const struct tg_virtio_dev *d);
bool tg_blk_read_only(void);
void tg_blk_io(bool write, uint64_t sector, void *buf, uint32_t len);

/* The snapshot mode (snap.c): runs until told to quit on the serial port. */
_Noreturn void tg_snap_run(const struct tg_virtio_dev *devs, unsigned n);
/* testguest.mode=regs (regs.c): loads every register it can, is snapshotted while it
 * holds them, and checks them all after a 'c' on the serial port. */
_Noreturn void tg_regs_run(void);

/* smp.c: the CPUs the VMM's MP table lists, and starting one of the others: it runs
 * fn on stack_top in long mode with interrupts off (fn must not return). */
unsigned tg_mp_cpus(void);
void tg_start_ap(uint8_t apic_id, void (*fn)(void), void *stack_top);
/* The network mode (net.c): answers ARP and ping until the host ends the VM or for
 * testguest.net_seconds=N; reads its own options from the command line cmd. */
_Noreturn void tg_net_run(const char *cmd, const struct tg_virtio_dev *devs, unsigned n);
/* The vsock mode (vsock.c): an echo server on stream port `port` (testguest.vsock_port=)
 * until the host ends the VM or sends a packet whose payload is "MITOS-QUIT". */
#define TG_VSOCK_DEFAULT_PORT 1234
_Noreturn void tg_vsock_run(const struct tg_virtio_dev *devs, unsigned n, uint32_t port);
/* The same driver with another application on the port: it is handed each connection's
 * bytes (and may answer with tg_vsock_send) instead of echoing them. */
#define TG_VSOCK_MAX_CONNS 8
#define TG_VSOCK_SEND_MAX  4000u
struct tg_vsock_app {
	void (*open)(unsigned conn);   /* conn: 0..TG_VSOCK_MAX_CONNS-1, reused once closed */
	void (*data)(unsigned conn, const uint8_t *p, uint32_t len);
};
_Noreturn void tg_vsock_serve(const struct tg_virtio_dev *devs, unsigned n, uint32_t port,
			      const struct tg_vsock_app *app);
/* Copies len bytes out on conn; false when it is closed, len is too big or the host has
 * no room for them. */
bool tg_vsock_send(unsigned conn, const void *p, uint32_t len);
/* testguest.mode=agent (agent_stub.c): answers the agent protocol's HELLO, health and
 * post_fork on vsock port 52 (agent/PROTOCOL.md) and `unsupported` to everything else. */
#define TG_AGENT_PORT 52
_Noreturn void tg_agent_run(const struct tg_virtio_dev *devs, unsigned n);
/* Exits the VM through the debug-exit port. */
_Noreturn void tg_exit(enum tg_exit code);

#endif
