#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "devices/serial.h"

enum { RBR = 0, THR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4,
       LSR = 5, MSR = 6, SCR = 7 };

struct irq_rec {
	int level, calls;
};

static void record_irq(void *ctx, int level)
{
	struct irq_rec *r = ctx;

	r->level = level;
	r->calls++;
}

/* A UART writing into a non-blocking pipe, with its interrupt line recorded. */
struct rig {
	struct serial *s;
	int rd, wr;
	struct irq_rec irq;
};

static void rig_init(struct rig *g)
{
	int fds[2];

	memset(g, 0, sizeof(*g));
	ck_assert_int_eq(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
	g->rd = fds[0];
	g->wr = fds[1];
	g->s = serial_create(g->wr, record_irq, &g->irq);
	ck_assert_ptr_nonnull(g->s);
}

static void rig_fini(struct rig *g)
{
	serial_destroy(g->s);
	close(g->rd);
	close(g->wr);
}

static uint8_t rd(struct rig *g, unsigned off)
{
	return serial_pio_read(g->s, off);
}

static void wr(struct rig *g, unsigned off, uint8_t v)
{
	serial_pio_write(g->s, off, v);
}

static ssize_t drain(struct rig *g, char *buf, size_t cap)
{
	return read(g->rd, buf, cap);
}

START_TEST(test_registers)
{
	struct rig g;

	rig_init(&g);
	ck_assert_uint_eq(rd(&g, IIR), 0x01);
	ck_assert_uint_eq(rd(&g, LSR), 0x60);
	ck_assert_uint_eq(rd(&g, MSR), 0xb0);

	wr(&g, IER, 0xff);
	ck_assert_uint_eq(rd(&g, IER), 0x0f);
	wr(&g, IER, 0);

	wr(&g, LCR, 0x83);
	wr(&g, DLL, 0x01);
	wr(&g, DLM, 0x02);
	ck_assert_uint_eq(rd(&g, DLL), 0x01);
	ck_assert_uint_eq(rd(&g, DLM), 0x02);
	ck_assert_uint_eq(rd(&g, LCR), 0x83);
	wr(&g, LCR, 0x03);
	/* DLAB off: offset 1 is IER again, and divisor writes did not reach it. */
	ck_assert_uint_eq(rd(&g, IER), 0);
	wr(&g, IER, 0x05);
	wr(&g, LCR, 0x80);
	ck_assert_uint_eq(rd(&g, DLM), 0x02);
	wr(&g, LCR, 0);
	ck_assert_uint_eq(rd(&g, IER), 0x05);

	wr(&g, SCR, 0xa5);
	ck_assert_uint_eq(rd(&g, SCR), 0xa5);
	wr(&g, SCR, 0x5a);
	ck_assert_uint_eq(rd(&g, SCR), 0x5a);

	wr(&g, MCR, 0xff);
	ck_assert_uint_eq(rd(&g, MCR), 0x1f);
	ck_assert_int_eq(g.irq.calls, 0);
	rig_fini(&g);
}
END_TEST

START_TEST(test_tx_to_fd)
{
	struct rig g;
	char buf[16];

	rig_init(&g);
	for (const char *p = "hello\n"; *p; p++) {
		ck_assert_uint_eq(rd(&g, LSR) & 0x60, 0x60);
		wr(&g, THR, (uint8_t)*p);
	}
	ck_assert_int_eq(drain(&g, buf, sizeof(buf)), 6);
	ck_assert_mem_eq(buf, "hello\n", 6);
	/* With DLAB set offset 0 is the divisor, not the transmitter. */
	wr(&g, LCR, 0x80);
	wr(&g, DLL, 'x');
	ck_assert_int_eq(drain(&g, buf, sizeof(buf)), -1);
	ck_assert_int_eq(errno, EAGAIN);
	rig_fini(&g);
}
END_TEST

START_TEST(test_tx_full_fd_drops_and_recovers)
{
	struct rig g;
	char buf[4096];
	struct timespec t0, t1;

	rig_init(&g);
	ck_assert_int_gt(fcntl(g.wr, F_SETPIPE_SZ, 4096), 0);
	memset(buf, 'a', sizeof(buf));
	while (write(g.wr, buf, sizeof(buf)) > 0 || write(g.wr, buf, 1) > 0)
		;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < 50; i++)
		wr(&g, THR, 'x');
	clock_gettime(CLOCK_MONOTONIC, &t1);
	/* One bounded wait, then drops without waiting. */
	ck_assert_int_lt((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000,
			 1000);
	while (drain(&g, buf, sizeof(buf)) > 0)
		;
	wr(&g, THR, 'Z');
	ck_assert_int_eq(drain(&g, buf, sizeof(buf)), 1);
	ck_assert_int_eq(buf[0], 'Z');
	rig_fini(&g);
}
END_TEST

START_TEST(test_tx_closed_fd_does_not_block)
{
	struct serial *s = serial_create(-1, NULL, NULL);

	ck_assert_ptr_nonnull(s);
	serial_pio_write(s, THR, 'x');
	ck_assert_uint_eq(serial_pio_read(s, LSR), 0x60);
	serial_destroy(s);
}
END_TEST

START_TEST(test_thre_interrupt)
{
	struct rig g;
	char buf[4];

	rig_init(&g);
	wr(&g, MCR, 0x08);
	wr(&g, IER, 0x02);
	ck_assert_int_eq(g.irq.level, 1);
	ck_assert_int_eq(g.irq.calls, 1);
	ck_assert_uint_eq(rd(&g, IIR), 0x02);
	/* Reading IIR acknowledged it. */
	ck_assert_int_eq(g.irq.level, 0);
	ck_assert_uint_eq(rd(&g, IIR), 0x01);
	/* Each transmitted byte empties THR again. */
	wr(&g, THR, 'a');
	ck_assert_int_eq(g.irq.level, 1);
	wr(&g, THR, 'b');
	ck_assert_int_eq(g.irq.calls, 3);
	ck_assert_uint_eq(rd(&g, IIR), 0x02);
	ck_assert_int_eq(g.irq.level, 0);
	/* Linux's startup test: THRI off then on re-raises after an IIR read consumed it. */
	wr(&g, IER, 0);
	wr(&g, IER, 0x02);
	ck_assert_int_eq(g.irq.level, 1);
	wr(&g, IER, 0);
	ck_assert_int_eq(g.irq.level, 0);
	ck_assert_int_eq(g.irq.calls, 6);
	ck_assert_uint_eq(rd(&g, IIR), 0x01);
	ck_assert_int_eq(drain(&g, buf, sizeof(buf)), 2);
	rig_fini(&g);
}
END_TEST

START_TEST(test_iir_priority)
{
	struct rig g;

	rig_init(&g);
	wr(&g, FCR, 0x01);
	/* Loopback: fill the FIFO past capacity for an overrun, toggle RTS for a delta. */
	wr(&g, MCR, 0x10);
	rd(&g, MSR);
	for (int i = 0; i < SERIAL_FIFO_SIZE + 1; i++)
		wr(&g, THR, (uint8_t)i);
	wr(&g, MCR, 0x12);
	wr(&g, IER, 0x0f);

	ck_assert_uint_eq(rd(&g, IIR), 0xc6);
	ck_assert_uint_eq(rd(&g, LSR), 0x63);
	ck_assert_uint_eq(rd(&g, LSR), 0x61);
	ck_assert_uint_eq(rd(&g, IIR), 0xc4);
	for (int i = 0; i < SERIAL_FIFO_SIZE; i++)
		ck_assert_uint_eq(rd(&g, RBR), i);
	ck_assert_uint_eq(rd(&g, LSR), 0x60);
	ck_assert_uint_eq(rd(&g, IIR), 0xc2);
	ck_assert_uint_eq(rd(&g, IIR), 0xc0);
	ck_assert_uint_eq(rd(&g, MSR), 0x11);
	ck_assert_uint_eq(rd(&g, MSR), 0x10);
	ck_assert_uint_eq(rd(&g, IIR), 0xc1);
	/* OUT2 was never set: the line stayed low throughout. */
	ck_assert_int_eq(g.irq.calls, 0);
	rig_fini(&g);
}
END_TEST

START_TEST(test_rx_fifo_bounded)
{
	struct rig g;
	uint8_t in[40];

	rig_init(&g);
	for (unsigned i = 0; i < sizeof(in); i++)
		in[i] = (uint8_t)('A' + i);
	/* Without the FIFO enabled the receiver holds one byte. */
	ck_assert_uint_eq(serial_input_room(g.s), 1);
	ck_assert_uint_eq(serial_input(g.s, in, sizeof(in)), 1);
	ck_assert_uint_eq(serial_input(g.s, in, sizeof(in)), 0);
	ck_assert_uint_eq(rd(&g, RBR), 'A');

	wr(&g, FCR, 0x01);
	ck_assert_uint_eq(serial_input_room(g.s), SERIAL_FIFO_SIZE);
	ck_assert_uint_eq(serial_input(g.s, in, 10), 10);
	ck_assert_uint_eq(serial_input(g.s, in + 10, 30), SERIAL_FIFO_SIZE - 10);
	ck_assert_uint_eq(serial_input_room(g.s), 0);
	ck_assert_uint_eq(serial_input(g.s, in, 5), 0);
	ck_assert_uint_eq(rd(&g, LSR), 0x61);
	/* Wrap the ring: read 5, add 5. */
	for (unsigned i = 0; i < 5; i++)
		ck_assert_uint_eq(rd(&g, RBR), in[i]);
	ck_assert_uint_eq(serial_input(g.s, in + SERIAL_FIFO_SIZE, 30), 5);
	for (unsigned i = 5; i < SERIAL_FIFO_SIZE + 5; i++)
		ck_assert_uint_eq(rd(&g, RBR), in[i]);
	ck_assert_uint_eq(rd(&g, LSR), 0x60);
	ck_assert_uint_eq(rd(&g, RBR), 0);
	ck_assert_uint_eq(serial_input(g.s, in, 0), 0);
	rig_fini(&g);
}
END_TEST

START_TEST(test_rx_interrupt_transitions)
{
	struct rig g;
	const uint8_t in[] = "abc";

	rig_init(&g);
	wr(&g, FCR, 0xc1);
	wr(&g, MCR, 0x0b);
	wr(&g, IER, 0x05);
	ck_assert_int_eq(g.irq.calls, 0);
	ck_assert_uint_eq(serial_input(g.s, in, 3), 3);
	ck_assert_int_eq(g.irq.calls, 1);
	ck_assert_int_eq(g.irq.level, 1);
	ck_assert_uint_eq(rd(&g, IIR), 0xc4);
	ck_assert_uint_eq(rd(&g, RBR), 'a');
	ck_assert_uint_eq(serial_input(g.s, in, 1), 1);
	ck_assert_uint_eq(rd(&g, RBR), 'b');
	ck_assert_uint_eq(rd(&g, RBR), 'c');
	ck_assert_int_eq(g.irq.calls, 1);
	ck_assert_uint_eq(rd(&g, RBR), 'a');
	ck_assert_int_eq(g.irq.calls, 2);
	ck_assert_int_eq(g.irq.level, 0);
	ck_assert_uint_eq(rd(&g, IIR), 0xc1);
	/* Disabling RDI with data waiting drops the line; re-enabling raises it. */
	serial_input(g.s, in, 1);
	wr(&g, IER, 0x04);
	wr(&g, IER, 0x05);
	ck_assert_int_eq(g.irq.calls, 5);
	ck_assert_int_eq(g.irq.level, 1);
	rig_fini(&g);
}
END_TEST

START_TEST(test_out2_gating)
{
	struct rig g;
	const uint8_t in = 'q';

	rig_init(&g);
	wr(&g, IER, 0x01);
	serial_input(g.s, &in, 1);
	ck_assert_uint_eq(rd(&g, IIR), 0x04);
	ck_assert_int_eq(g.irq.calls, 0);
	wr(&g, MCR, 0x08);
	ck_assert_int_eq(g.irq.level, 1);
	wr(&g, MCR, 0x03);
	ck_assert_int_eq(g.irq.level, 0);
	wr(&g, MCR, 0x0b);
	ck_assert_int_eq(g.irq.level, 1);
	ck_assert_int_eq(g.irq.calls, 3);
	rig_fini(&g);
}
END_TEST

START_TEST(test_loopback)
{
	struct rig g;
	char buf[4];
	const uint8_t in = 'h';

	rig_init(&g);
	wr(&g, FCR, 0x01);
	wr(&g, MCR, 0x10);
	ck_assert_uint_eq(rd(&g, MSR) & 0xf0, 0x00);
	wr(&g, MCR, 0x10 | 0x02);
	ck_assert_uint_eq(rd(&g, MSR) & 0xf0, 0x10);
	wr(&g, MCR, 0x10 | 0x01);
	ck_assert_uint_eq(rd(&g, MSR) & 0xf0, 0x20);
	wr(&g, MCR, 0x10 | 0x04);
	ck_assert_uint_eq(rd(&g, MSR) & 0xf0, 0x40);
	/* RI falling is the trailing-edge delta. */
	wr(&g, MCR, 0x10 | 0x08);
	ck_assert_uint_eq(rd(&g, MSR), 0x8c);
	wr(&g, MCR, 0x1f);
	ck_assert_uint_eq(rd(&g, MSR), 0xf3);
	ck_assert_uint_eq(rd(&g, MSR), 0xf0);

	wr(&g, THR, 'e');
	wr(&g, THR, 'c');
	ck_assert_int_eq(drain(&g, buf, sizeof(buf)), -1);
	/* The receiver is off the line in loopback: host input waits. */
	ck_assert_uint_eq(serial_input_room(g.s), 0);
	ck_assert_uint_eq(serial_input(g.s, &in, 1), 0);
	ck_assert_uint_eq(rd(&g, LSR), 0x61);
	ck_assert_uint_eq(rd(&g, RBR), 'e');
	ck_assert_uint_eq(rd(&g, RBR), 'c');

	/* Back on the line: the terminal's signals, with deltas for the change. */
	wr(&g, MCR, 0x08);
	ck_assert_uint_eq(rd(&g, MSR), 0xb4);
	wr(&g, THR, 'o');
	ck_assert_int_eq(drain(&g, buf, sizeof(buf)), 1);
	ck_assert_int_eq(buf[0], 'o');
	rig_fini(&g);
}
END_TEST

START_TEST(test_fcr_clear)
{
	struct rig g;
	const uint8_t in[] = "xyz";

	rig_init(&g);
	wr(&g, FCR, 0x01);
	serial_input(g.s, in, 3);
	wr(&g, FCR, 0x05);  /* clearing TX alone keeps RX */
	ck_assert_uint_eq(rd(&g, LSR), 0x61);
	wr(&g, FCR, 0x03);
	ck_assert_uint_eq(rd(&g, LSR), 0x60);
	ck_assert_uint_eq(rd(&g, IIR), 0xc1);
	serial_input(g.s, in, 3);
	/* Leaving FIFO mode empties it too, and IIR loses its FIFO bits. */
	wr(&g, FCR, 0x00);
	ck_assert_uint_eq(rd(&g, LSR), 0x60);
	ck_assert_uint_eq(rd(&g, IIR), 0x01);
	rig_fini(&g);
}
END_TEST

START_TEST(test_save_restore)
{
	struct rig a, b;
	struct serial_state st, st2, bad;
	const uint8_t in[] = "0123456789abcdefXYZ";

	rig_init(&a);
	rig_init(&b);
	wr(&a, FCR, 0xc1);
	wr(&a, LCR, 0x80);
	wr(&a, DLL, 0x01);
	wr(&a, DLM, 0x00);
	wr(&a, LCR, 0x03);
	wr(&a, SCR, 0x42);
	wr(&a, MCR, 0x0b);
	wr(&a, IER, 0x07);
	ck_assert_uint_eq(serial_input(a.s, in, 16), 16);
	for (int i = 0; i < 6; i++)
		rd(&a, RBR);
	ck_assert_uint_eq(serial_input(a.s, in + 16, 3), 3);
	ck_assert_int_eq(a.irq.level, 1);

	serial_save(a.s, &st);
	ck_assert_int_eq(serial_restore(b.s, &st), 0);
	ck_assert_int_eq(b.irq.calls, 1);
	ck_assert_int_eq(b.irq.level, 1);
	serial_save(b.s, &st2);
	ck_assert_mem_eq(&st, &st2, sizeof(st));
	ck_assert_uint_eq(rd(&b, SCR), 0x42);
	ck_assert_uint_eq(rd(&b, IIR), 0xc4);
	for (int i = 6; i < 19; i++)
		ck_assert_uint_eq(rd(&b, RBR), in[i]);
	ck_assert_uint_eq(rd(&b, IIR), 0xc2);
	ck_assert_int_eq(b.irq.level, 0);

	bad = st;
	bad.rx_count = SERIAL_FIFO_SIZE + 1;
	ck_assert_int_eq(serial_restore(b.s, &bad), -EINVAL);
	bad = st;
	bad.fcr = 0;  /* one-byte receiver holding 13 */
	ck_assert_int_eq(serial_restore(b.s, &bad), -EINVAL);
	bad = st;
	bad.rx_head = SERIAL_FIFO_SIZE;
	ck_assert_int_eq(serial_restore(b.s, &bad), -EINVAL);
	bad = st;
	bad.irq_level = 0;
	ck_assert_int_eq(serial_restore(b.s, &bad), -EINVAL);
	bad = st;
	bad.ier = 0x10;
	ck_assert_int_eq(serial_restore(b.s, &bad), -EINVAL);
	bad = st;
	bad.msr = 0x00;
	ck_assert_int_eq(serial_restore(b.s, &bad), -EINVAL);
	/* A rejected state leaves the device untouched. */
	ck_assert_int_eq(b.irq.calls, 2);
	ck_assert_uint_eq(rd(&b, SCR), 0x42);
	rig_fini(&a);
	rig_fini(&b);
}
END_TEST

START_TEST(test_offsets_out_of_range)
{
	struct rig g;
	struct serial_state before, after;

	rig_init(&g);
	serial_save(g.s, &before);
	for (unsigned off = 8; off < 64; off++) {
		wr(&g, off, 0xff);
		ck_assert_uint_eq(rd(&g, off), 0xff);
	}
	wr(&g, ~0u, 0x80);
	ck_assert_uint_eq(rd(&g, ~0u), 0xff);
	serial_save(g.s, &after);
	ck_assert_mem_eq(&before, &after, sizeof(before));
	ck_assert_int_eq(drain(&g, (char[1]){0}, 1), -1);
	rig_fini(&g);
}
END_TEST

/* The register dance of Linux's 8250_port.c autoconfig(), autoconfig_16550a(),
 * size_fifo() and serial8250_do_startup(), step by step. */
START_TEST(test_linux_probe)
{
	struct rig g;
	uint8_t save_ier, save_mcr, save_lcr, s1, s2, old_fcr;
	int count;

	rig_init(&g);
	/* IER existence test. */
	save_ier = rd(&g, IER);
	wr(&g, IER, 0);
	ck_assert_uint_eq(rd(&g, IER) & 0x0f, 0);
	wr(&g, IER, 0x0f);
	ck_assert_uint_eq(rd(&g, IER) & 0x0f, 0x0f);
	wr(&g, IER, save_ier);
	/* Loopback test. */
	save_mcr = rd(&g, MCR);
	save_lcr = rd(&g, LCR);
	wr(&g, MCR, 0x10 | 0x0a);
	ck_assert_uint_eq(rd(&g, MSR) & 0xf0, 0x90);
	wr(&g, MCR, save_mcr);
	/* EFR reset, then FIFO detection. */
	wr(&g, LCR, 0xbf);
	wr(&g, 2, 0);
	wr(&g, LCR, 0);
	wr(&g, FCR, 0x01);
	ck_assert_uint_eq(rd(&g, IIR) >> 6, 3);
	/* autoconfig_16550a: no EFR under either configuration mode. */
	wr(&g, LCR, 0x80);
	ck_assert_uint_ne(rd(&g, 2), 0);
	wr(&g, LCR, 0xbf);
	ck_assert_uint_ne(rd(&g, 2), 0);
	/* Not a National Semiconductor SuperIO. */
	wr(&g, LCR, 0);
	s1 = rd(&g, MCR);
	wr(&g, LCR, 0xe0);
	s2 = rd(&g, 2);
	ck_assert_uint_eq((s1 ^ s2) & 0x10, 0);
	wr(&g, LCR, 0);
	wr(&g, MCR, s1 ^ 0x10);
	wr(&g, LCR, 0xe0);
	s2 = rd(&g, 2);
	wr(&g, LCR, 0);
	wr(&g, MCR, s1);
	ck_assert_uint_eq((s1 ^ s2) & 0x10, 0);
	/* Not a TI16750. */
	wr(&g, LCR, 0);
	wr(&g, FCR, 0x21);
	s1 = rd(&g, IIR) >> 5;
	wr(&g, FCR, 0x01);
	wr(&g, LCR, 0x80);
	wr(&g, FCR, 0x21);
	s2 = rd(&g, IIR) >> 5;
	wr(&g, FCR, 0x01);
	wr(&g, LCR, 0);
	ck_assert(!(s1 == 6 && s2 == 7));
	/* Not an XScale. */
	save_ier = rd(&g, IER);
	wr(&g, IER, save_ier & ~0x40);
	ck_assert_uint_eq(rd(&g, IER) & 0x40, 0);
	wr(&g, IER, save_ier | 0x40);
	ck_assert_uint_eq(rd(&g, IER) & 0x40, 0);
	wr(&g, IER, save_ier);
	/* size_fifo(): 16 bytes, not a 64-byte U6_16550A. */
	wr(&g, LCR, 0);
	old_fcr = rd(&g, FCR);
	s1 = rd(&g, MCR);
	wr(&g, FCR, 0x07);
	wr(&g, MCR, 0x10);
	wr(&g, LCR, 0x80);
	wr(&g, DLL, 1);
	wr(&g, DLM, 0);
	wr(&g, LCR, 0x03);
	for (count = 0; count < 256; count++)
		wr(&g, THR, (uint8_t)count);
	for (count = 0; (rd(&g, LSR) & 0x01) && count < 256; count++)
		rd(&g, RBR);
	ck_assert_int_eq(count, 16);
	wr(&g, FCR, old_fcr);
	wr(&g, MCR, s1);
	wr(&g, LCR, save_lcr);
	/* Reset: clear FIFOs, IER off. */
	wr(&g, MCR, save_mcr);
	wr(&g, FCR, 0x01);
	wr(&g, FCR, 0x07);
	wr(&g, FCR, 0);
	rd(&g, RBR);
	wr(&g, IER, 0);

	/* serial8250_do_startup(). */
	rd(&g, LSR);
	rd(&g, RBR);
	rd(&g, IIR);
	rd(&g, MSR);
	ck_assert_uint_ne(rd(&g, LSR), 0xff);
	wr(&g, IER, 0x02);
	s1 = rd(&g, IIR);
	wr(&g, IER, 0);
	wr(&g, IER, 0x02);
	s2 = rd(&g, IIR);
	wr(&g, IER, 0);
	ck_assert_uint_eq(s1 & 0x01, 0);
	ck_assert_uint_eq(s2 & 0x01, 0);  /* THRE reasserted: no UART_BUG_THRE */
	wr(&g, LCR, 0x03);
	wr(&g, MCR, 0x0b);
	wr(&g, IER, 0x02);
	s1 = rd(&g, LSR);
	s2 = rd(&g, IIR);
	wr(&g, IER, 0);
	ck_assert(!((s1 & 0x40) && (s2 & 0x01)));  /* no UART_BUG_TXEN */
	ck_assert_int_eq(g.irq.level, 0);
	ck_assert_int_eq(g.irq.calls, 2);
	rig_fini(&g);
}
END_TEST

/* The device loop feeds input while a vCPU drains it: every byte arrives once, in order. */
#define STREAM_LEN 5000

static void *feeder(void *arg)
{
	struct serial *s = arg;

	for (unsigned i = 0; i < STREAM_LEN;) {
		uint8_t chunk[7];
		size_t n = 0;

		while (n < sizeof(chunk) && i + n < STREAM_LEN) {
			chunk[n] = (uint8_t)((i + n) * 31);
			n++;
		}
		n = serial_input(s, chunk, n);
		if (!n)
			sched_yield();
		i += (unsigned)n;
	}
	return NULL;
}

START_TEST(test_concurrent_rx)
{
	struct rig g;
	pthread_t t;

	rig_init(&g);
	wr(&g, FCR, 0x01);
	wr(&g, MCR, 0x0b);
	wr(&g, IER, 0x01);
	ck_assert_int_eq(pthread_create(&t, NULL, feeder, g.s), 0);
	for (unsigned i = 0; i < STREAM_LEN;) {
		if (!(rd(&g, LSR) & 0x01)) {
			sched_yield();
			continue;
		}
		ck_assert_uint_eq(rd(&g, RBR), (uint8_t)(i * 31));
		i++;
	}
	pthread_join(t, NULL);
	ck_assert_int_eq(g.irq.level, 0);
	rig_fini(&g);
}
END_TEST

/* A console log the guest cannot grow without bound: past the cap the file restarts
 * with a note, and what the guest wrote last is there. */
START_TEST(test_file_cap)
{
	char path[] = "/tmp/mitos-serial-cap-XXXXXX";
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	struct serial *sp = serial_create(fd, NULL, NULL);
	ck_assert_ptr_nonnull(sp);
	serial_set_file_cap(sp, 1000);
	for (int i = 0; i < 5000; i++)
		serial_pio_write(sp, THR, (uint8_t)('a' + i % 26));
	serial_pio_write(sp, THR, 'Z');
	struct stat st;
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_int_le(st.st_size, 1000);
	char buf[1100];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	ck_assert_int_gt(n, 0);
	buf[n] = 0;
	ck_assert_ptr_nonnull(strstr(buf, "console log reached its cap"));
	ck_assert_int_eq(buf[n - 1], 'Z');
	serial_destroy(sp);
	close(fd);
	unlink(path);
}
END_TEST

static Suite *serial_suite(void)
{
	Suite *s = suite_create("serial");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_registers);
	tcase_add_test(tc, test_tx_to_fd);
	tcase_add_test(tc, test_tx_full_fd_drops_and_recovers);
	tcase_add_test(tc, test_tx_closed_fd_does_not_block);
	tcase_add_test(tc, test_thre_interrupt);
	tcase_add_test(tc, test_iir_priority);
	tcase_add_test(tc, test_rx_fifo_bounded);
	tcase_add_test(tc, test_rx_interrupt_transitions);
	tcase_add_test(tc, test_out2_gating);
	tcase_add_test(tc, test_loopback);
	tcase_add_test(tc, test_fcr_clear);
	tcase_add_test(tc, test_save_restore);
	tcase_add_test(tc, test_offsets_out_of_range);
	tcase_add_test(tc, test_linux_probe);
	tcase_add_test(tc, test_concurrent_rx);
	tcase_add_test(tc, test_file_cap);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(serial_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
