/* 16550A UART (COM1): what Linux's 8250 driver probes for and drives with interrupts.
 * Transmission is instantaneous: THR and the transmitter are always empty. */
#ifndef MITOS_SERIAL_H
#define MITOS_SERIAL_H

#include <stddef.h>
#include <stdint.h>

/* A real 16550A's FIFO depth; Linux counts it (size_fifo()) and would take a deeper one
 * for a different chip. Without FCR's FIFO enable the receiver holds one byte. */
#define SERIAL_FIFO_SIZE 16

struct serial;

/* Register state, all bytes so the struct has no padding and copies into a snapshot as is. */
struct serial_state {
	uint8_t rx_fifo[SERIAL_FIFO_SIZE];
	uint8_t rx_head;      /* index of the oldest received byte */
	uint8_t rx_count;
	uint8_t ier, fcr, lcr, mcr, scr, dll, dlm;
	uint8_t lsr;          /* latched error bits (OE); DR, THRE and TEMT are derived */
	uint8_t msr;          /* modem inputs (bits 4-7) and deltas not yet read (bits 0-3) */
	uint8_t thr_ipending; /* THR-empty interrupt latched, until IIR reports it */
	uint8_t irq_level;    /* level the interrupt line was driven to */
};

/* out_fd receives transmitted bytes; make it non-blocking if its reader may stall (a full
 * non-blocking fd costs one bounded wait, then bytes are dropped until it drains; a
 * blocking one stalls the guest's console), and ignore SIGPIPE if it is a pipe.
 * set_irq(ctx, level) drives the interrupt line, called with the device lock held and
 * only when the level changes; it may be NULL. Returns NULL with errno set on failure. */
struct serial *serial_create(int out_fd, void (*set_irq)(void *ctx, int level), void *ctx);
void serial_destroy(struct serial *s);
/* A console log that a guest cannot grow without bound: once out_fd, a regular file,
 * would pass max_bytes, it is emptied and restarts with a line saying so (its end,
 * what a failure report reads, is kept). 0: no cap. */
void serial_set_file_cap(struct serial *s, uint64_t max_bytes);

/* Port accesses at offset 0..7 from the base; others read 0xff and ignore writes. */
uint8_t serial_pio_read(struct serial *s, unsigned off);
void serial_pio_write(struct serial *s, unsigned off, uint8_t val);

/* Host input into the receive FIFO. Returns how many bytes were accepted: fewer than n
 * when the FIFO fills, none in loopback (the receiver is disconnected from the line);
 * the caller keeps the rest and retries once serial_input_room() > 0. */
size_t serial_input(struct serial *s, const uint8_t *buf, size_t n);
size_t serial_input_room(struct serial *s);

void serial_save(struct serial *s, struct serial_state *st);
/* Returns -EINVAL for a state this device could not have produced (FIFO count beyond the
 * FIFO, unknown bits, a line level that disagrees with the registers). On success drives
 * the line to the restored level once, since the line it knew belonged to another VM. */
int serial_restore(struct serial *s, const struct serial_state *st);

#endif
