#include "devices/serial.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
	IER_RDI = 0x01, IER_THRI = 0x02, IER_RLSI = 0x04, IER_MSI = 0x08, IER_MASK = 0x0f,
	IIR_NONE = 0x01, IIR_MSI = 0x00, IIR_THRI = 0x02, IIR_RDI = 0x04, IIR_RLSI = 0x06,
	IIR_FIFO = 0xc0,
	FCR_ENABLE = 0x01, FCR_CLEAR_RX = 0x02, FCR_DMA = 0x08, FCR_TRIGGER = 0xc0,
	LCR_DLAB = 0x80,
	MCR_DTR = 0x01, MCR_RTS = 0x02, MCR_OUT1 = 0x04, MCR_OUT2 = 0x08, MCR_LOOP = 0x10,
	MCR_MASK = 0x1f,
	LSR_DR = 0x01, LSR_OE = 0x02, LSR_THRE = 0x20, LSR_TEMT = 0x40,
	MSR_DELTAS = 0x0f, MSR_CTS = 0x10, MSR_DSR = 0x20, MSR_RI = 0x40, MSR_DCD = 0x80,
};

/* How long one byte may wait for a full non-blocking out_fd before output is dropped. */
#define TX_STALL_MS 100

struct serial {
	pthread_mutex_t lock;
	struct serial_state r;
	int out_fd;
	uint64_t file_cap, file_bytes;
	bool tx_stalled;  /* out_fd stayed full: drop without waiting until it drains */
	void (*set_irq)(void *ctx, int level);
	void *ctx;
};

static unsigned rx_capacity(const struct serial_state *r)
{
	return r->fcr & FCR_ENABLE ? SERIAL_FIFO_SIZE : 1;
}

static bool rx_push(struct serial_state *r, uint8_t b)
{
	if (r->rx_count >= rx_capacity(r))
		return false;
	r->rx_fifo[(r->rx_head + r->rx_count++) % SERIAL_FIFO_SIZE] = b;
	return true;
}

/* Loopback wires RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD; otherwise the line is a
 * connected, ready terminal. */
static uint8_t modem_inputs(uint8_t mcr)
{
	if (!(mcr & MCR_LOOP))
		return MSR_DCD | MSR_DSR | MSR_CTS;
	return (mcr & MCR_RTS ? MSR_CTS : 0) | (mcr & MCR_DTR ? MSR_DSR : 0) |
	       (mcr & MCR_OUT1 ? MSR_RI : 0) | (mcr & MCR_OUT2 ? MSR_DCD : 0);
}

/* Highest-priority pending source, as IIR bits 0-3. */
static uint8_t iir_source(const struct serial_state *r)
{
	if ((r->ier & IER_RLSI) && (r->lsr & LSR_OE))
		return IIR_RLSI;
	if ((r->ier & IER_RDI) && r->rx_count)
		return IIR_RDI;
	if ((r->ier & IER_THRI) && r->thr_ipending)
		return IIR_THRI;
	if ((r->ier & IER_MSI) && (r->msr & MSR_DELTAS))
		return IIR_MSI;
	return IIR_NONE;
}

/* PC boards gate the UART's interrupt output with OUT2. */
static int line_level(const struct serial_state *r)
{
	return iir_source(r) != IIR_NONE && (r->mcr & MCR_OUT2);
}

static void update_irq(struct serial *s)
{
	int level = line_level(&s->r);

	if (level == s->r.irq_level)
		return;
	s->r.irq_level = (uint8_t)level;
	if (s->set_irq)
		s->set_irq(s->ctx, level);
}

static void file_restart(struct serial *s)
{
	static const char note[] = "\n[mitos-vmm: the console log reached its cap and restarts here]\n";
	/* The offset goes back too, for a file not opened O_APPEND. */
	if (ftruncate(s->out_fd, 0) == 0 && lseek(s->out_fd, 0, SEEK_SET) == 0 &&
	    write(s->out_fd, note, sizeof(note) - 1) > 0)
		s->file_bytes = sizeof(note) - 1;
	else
		s->file_cap = 0; /* not a file we can cap after all */
}

static void tx_byte(struct serial *s, uint8_t b)
{
	bool waited = false;

	if (s->file_cap && s->file_bytes >= s->file_cap)
		file_restart(s);
	for (;;) {
		ssize_t n = write(s->out_fd, &b, 1);

		if (n == 1) {
			s->tx_stalled = false;
			s->file_bytes++;
			return;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd p = { .fd = s->out_fd, .events = POLLOUT };

			if (!waited && !s->tx_stalled && poll(&p, 1, TX_STALL_MS) == 1 &&
			    !(p.revents & (POLLERR | POLLNVAL))) {
				waited = true;
				continue;
			}
			s->tx_stalled = true;
		}
		return;
	}
}

static void write_thr(struct serial *s, uint8_t b)
{
	if (!(s->r.mcr & MCR_LOOP))
		tx_byte(s, b);
	else if (!rx_push(&s->r, b))
		s->r.lsr |= LSR_OE;
	s->r.thr_ipending = 1;
}

static void write_ier(struct serial_state *r, uint8_t val)
{
	uint8_t changed = (r->ier ^ val) & IER_THRI;

	r->ier = val & IER_MASK;
	/* Enabling THRI with THR empty raises the interrupt even if an IIR read consumed it
	 * before: Linux's startup THRE test depends on it. */
	if (changed)
		r->thr_ipending = !!(r->ier & IER_THRI);
}

static void write_fcr(struct serial_state *r, uint8_t val)
{
	/* Switching FIFO mode empties the FIFOs, as on the chip. */
	if (((r->fcr ^ val) & FCR_ENABLE) || ((val & FCR_ENABLE) && (val & FCR_CLEAR_RX)))
		r->rx_head = r->rx_count = 0;
	/* The other FCR bits only program while the FIFO enable bit is written as 1. */
	r->fcr = val & FCR_ENABLE ? val & (FCR_ENABLE | FCR_DMA | FCR_TRIGGER) : 0;
}

static void write_mcr(struct serial_state *r, uint8_t val)
{
	uint8_t old = r->msr & 0xf0, now, delta;

	r->mcr = val & MCR_MASK;
	now = modem_inputs(r->mcr);
	/* Delta bits 0-3 mirror inputs 4-7; RI's only on its trailing edge. */
	delta = (uint8_t)((((old ^ now) & ~MSR_RI) | (old & ~now & MSR_RI)) >> 4);
	r->msr = now | (r->msr & MSR_DELTAS) | delta;
}

struct serial *serial_create(int out_fd, void (*set_irq)(void *ctx, int level), void *ctx)
{
	struct serial *s = calloc(1, sizeof(*s));
	int err;

	if (!s)
		return NULL;
	err = pthread_mutex_init(&s->lock, NULL);
	if (err) {
		free(s);
		errno = err;
		return NULL;
	}
	s->out_fd = out_fd;
	s->set_irq = set_irq;
	s->ctx = ctx;
	s->r.msr = modem_inputs(0);
	return s;
}

void serial_set_file_cap(struct serial *s, uint64_t max_bytes)
{
	struct stat st;
	if (!max_bytes || fstat(s->out_fd, &st) || !S_ISREG(st.st_mode))
		return;
	s->file_cap = max_bytes;
	s->file_bytes = (uint64_t)st.st_size;
}

void serial_destroy(struct serial *s)
{
	if (!s)
		return;
	pthread_mutex_destroy(&s->lock);
	free(s);
}

uint8_t serial_pio_read(struct serial *s, unsigned off)
{
	struct serial_state *r = &s->r;
	uint8_t v = 0;
	bool dlab;

	if (off >= 8)
		return 0xff;
	pthread_mutex_lock(&s->lock);
	dlab = r->lcr & LCR_DLAB;
	switch (off) {
	case 0:
		if (dlab) {
			v = r->dll;
		} else if (r->rx_count) {
			v = r->rx_fifo[r->rx_head];
			r->rx_head = (r->rx_head + 1) % SERIAL_FIFO_SIZE;
			r->rx_count--;
		}
		break;
	case 1:
		v = dlab ? r->dlm : r->ier;
		break;
	case 2:
		v = iir_source(r);
		/* Reading IIR is what acknowledges a THR-empty interrupt. */
		if (v == IIR_THRI)
			r->thr_ipending = 0;
		if (r->fcr & FCR_ENABLE)
			v |= IIR_FIFO;
		break;
	case 3:
		v = r->lcr;
		break;
	case 4:
		v = r->mcr;
		break;
	case 5:
		v = r->lsr | LSR_THRE | LSR_TEMT | (r->rx_count ? LSR_DR : 0);
		r->lsr = 0;
		break;
	case 6:
		v = r->msr;
		r->msr &= (uint8_t)~MSR_DELTAS;
		break;
	case 7:
		v = r->scr;
		break;
	}
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return v;
}

void serial_pio_write(struct serial *s, unsigned off, uint8_t val)
{
	struct serial_state *r = &s->r;
	bool dlab;

	if (off >= 8)
		return;
	pthread_mutex_lock(&s->lock);
	dlab = r->lcr & LCR_DLAB;
	switch (off) {
	case 0:
		if (dlab)
			r->dll = val;
		else
			write_thr(s, val);
		break;
	case 1:
		if (dlab)
			r->dlm = val;
		else
			write_ier(r, val);
		break;
	case 2:
		write_fcr(r, val);
		break;
	case 3:
		r->lcr = val;
		break;
	case 4:
		write_mcr(r, val);
		break;
	case 7:
		r->scr = val;
		break;
	}
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
}

static size_t input_room(const struct serial_state *r)
{
	return r->mcr & MCR_LOOP ? 0 : rx_capacity(r) - r->rx_count;
}

size_t serial_input(struct serial *s, const uint8_t *buf, size_t n)
{
	size_t i, room;

	pthread_mutex_lock(&s->lock);
	room = input_room(&s->r);
	for (i = 0; i < n && i < room; i++)
		rx_push(&s->r, buf[i]);
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return i;
}

size_t serial_input_room(struct serial *s)
{
	size_t room;

	pthread_mutex_lock(&s->lock);
	room = input_room(&s->r);
	pthread_mutex_unlock(&s->lock);
	return room;
}

void serial_save(struct serial *s, struct serial_state *st)
{
	pthread_mutex_lock(&s->lock);
	*st = s->r;
	pthread_mutex_unlock(&s->lock);
}

static bool state_valid(const struct serial_state *st)
{
	uint8_t fcr_bits = st->fcr & FCR_ENABLE ? FCR_ENABLE | FCR_DMA | FCR_TRIGGER : 0;

	return st->rx_head < SERIAL_FIFO_SIZE && st->rx_count <= rx_capacity(st) &&
	       !(st->ier & ~IER_MASK) && !(st->fcr & ~fcr_bits) && !(st->mcr & ~MCR_MASK) &&
	       !(st->lsr & ~LSR_OE) && (st->msr & 0xf0) == modem_inputs(st->mcr) &&
	       st->thr_ipending <= 1 && st->irq_level == line_level(st);
}

int serial_restore(struct serial *s, const struct serial_state *st)
{
	if (!state_valid(st))
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	s->r = *st;
	s->tx_stalled = false;
	if (s->set_irq)
		s->set_irq(s->ctx, st->irq_level);
	pthread_mutex_unlock(&s->lock);
	return 0;
}
