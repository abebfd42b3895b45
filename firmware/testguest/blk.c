/* virtio-mmio + virtio-blk driver of the test guest, doing what Linux's virtio_mmio and
 * virtio_blk drivers do (feature negotiation, a split queue with EVENT_IDX and indirect
 * descriptors, interrupt-driven completion), then checking the disk's known pattern. */
#include "firmware/testguest/pattern.h"
#include "firmware/testguest/tg.h"
#include "firmware/testguest/virtio.h"

#define F_BLK_SEG_MAX       (1ULL << 2)
#define F_BLK_RO            (1ULL << 5)
#define F_BLK_BLK_SIZE      (1ULL << 6)
#define F_BLK_FLUSH         (1ULL << 9)
#define F_WANTED (F_BLK_SEG_MAX | F_BLK_RO | F_BLK_BLK_SIZE | F_BLK_FLUSH | \
		  F_INDIRECT_DESC | F_EVENT_IDX | F_VERSION_1)

#define BLK_CFG_CAPACITY    0x00
#define BLK_CFG_SEG_MAX     0x0c
#define BLK_CFG_BLK_SIZE    0x14

#define BLK_T_IN            0
#define BLK_T_OUT           1
#define BLK_T_FLUSH         4
#define BLK_T_GET_ID        8
#define BLK_S_OK            0
#define BLK_S_IOERR         1
#define BLK_S_UNSUPP        2
#define BLK_ID_BYTES        20

#define QSZ_MAX             64
#define MAX_BATCH           8
#define NO_OP               0xff
#define TIMEOUT_TICKS       (10 * TG_TICKS_PER_SECOND)

/* Ring memory, sized for the largest queue we use; the avail/used layouts depend on
 * the negotiated size, hence the accessors below. */
static struct vdesc vq_desc[QSZ_MAX] __attribute__((aligned(64)));
static uint16_t vq_avail[2 + QSZ_MAX + 1] __attribute__((aligned(64)));
static uint32_t vq_used[1 + 2 * QSZ_MAX + 1] __attribute__((aligned(64)));
/* Per-request DMA memory: header and status like Linux's virtblk_req. */
static struct {
	uint32_t type, reserved;
	uint64_t sector;
	uint8_t status;
} vq_slot[MAX_BATCH] __attribute__((aligned(16)));
static struct vdesc vq_indirect[MAX_BATCH][3] __attribute__((aligned(16)));

static uint64_t rdbuf[64 * TG_WORDS_PER_SECTOR] __attribute__((aligned(4096)));
static uint64_t wrbuf[8 * TG_WORDS_PER_SECTOR] __attribute__((aligned(4096)));
static char idbuf[BLK_ID_BYTES + 4];

struct blk {
	const struct tg_virtio_dev *dev;
	uint64_t features;
	uint64_t capacity;
	uint16_t qsize;
	uint16_t avail_idx;   /* next free avail slot (what we published) */
	uint16_t used_idx;    /* used entries consumed so far */
	volatile unsigned used_irqs, config_irqs, empty_irqs;
};

struct blk_op {
	uint32_t type;
	uint64_t sector;
	void *buf;
	uint32_t len;
	bool indirect;
	/* Results. */
	uint8_t status;
	uint32_t used_len;
};

static uint32_t vr(const struct blk *b, unsigned off) { return mmio_read32(b->dev->base + off); }
static void vw(const struct blk *b, unsigned off, uint32_t v) { mmio_write32(b->dev->base + off, v); }

static volatile uint16_t *avail_idx_p(void) { return &vq_avail[1]; }
static volatile uint16_t *avail_ring(const struct blk *b, uint16_t i) { return &vq_avail[2 + i % b->qsize]; }
static volatile uint16_t *used_event_p(const struct blk *b) { return &vq_avail[2 + b->qsize]; }
static volatile uint16_t *used_flags_p(void) { return (volatile uint16_t *)vq_used; }
static volatile uint16_t *used_idx_p(void) { return (volatile uint16_t *)vq_used + 1; }
static volatile struct used_elem *used_ring(const struct blk *b, uint16_t i)
{
	return (volatile struct used_elem *)&vq_used[1 + 2 * (i % b->qsize)];
}
static volatile uint16_t *avail_event_p(const struct blk *b)
{
	return (volatile uint16_t *)&vq_used[1 + 2 * b->qsize];
}

static bool has(const struct blk *b, uint64_t f) { return (b->features & f) != 0; }

static void zero_words(void *p, size_t bytes)
{
	uint64_t *q = p;
	for (size_t i = 0; i < bytes / 8; i++)
		q[i] = 0;
}

static const char *status_name(uint8_t s)
{
	switch (s) {
	case BLK_S_OK: return "OK";
	case BLK_S_IOERR: return "IOERR";
	case BLK_S_UNSUPP: return "UNSUPP";
	case 0xff: return "never written";
	default: return "invalid";
	}
}

static void blk_irq(void *arg)
{
	struct blk *b = arg;
	uint32_t st = vr(b, VM_INT_STATUS);
	vw(b, VM_INT_ACK, st);
	if (st & INT_USED_RING)
		b->used_irqs = b->used_irqs + 1;
	if (st & INT_CONFIG)
		b->config_irqs = b->config_irqs + 1;
	if (!st)
		b->empty_irqs = b->empty_irqs + 1;
}

uint32_t tg_virtio_probe(const struct tg_virtio_dev *d)
{
	uint32_t magic = mmio_read32(d->base + VM_MAGIC);
	uint32_t version = mmio_read32(d->base + VM_VERSION);
	if (magic != VIRTIO_MAGIC)
		tg_fail(TG_EXIT_TRANSPORT, "virtio-mmio at 0x%lx: magic 0x%x, want 0x%x", d->base,
			magic, VIRTIO_MAGIC);
	if (version != 2)
		tg_fail(TG_EXIT_TRANSPORT, "virtio-mmio at 0x%lx: version %u, want 2 (modern)",
			d->base, version);
	return mmio_read32(d->base + VM_DEVICE_ID);
}

/* ---- the queue ---------------------------------------------------------------------- */

static bool op_device_writes(const struct blk_op *op)
{
	return op->type == BLK_T_IN || op->type == BLK_T_GET_ID;
}

static unsigned op_descs(const struct blk_op *op)
{
	return op->indirect ? 1 : op->len ? 3 : 2;
}

/* Header, data, status: like Linux, each in its own descriptor. Returns the count. */
static unsigned build_chain(struct vdesc *t, unsigned first, unsigned j, const struct blk_op *op)
{
	unsigned m = 0;
	t[m] = (struct vdesc){ (uint64_t)(uintptr_t)&vq_slot[j], 16, DESC_F_NEXT, first + 1 };
	m++;
	if (op->len) {
		t[m] = (struct vdesc){ (uint64_t)(uintptr_t)op->buf, op->len,
				       (op_device_writes(op) ? DESC_F_WRITE : 0) | DESC_F_NEXT,
				       (uint16_t)(first + 2) };
		m++;
	}
	t[m] = (struct vdesc){ (uint64_t)(uintptr_t)&vq_slot[j].status, 1, DESC_F_WRITE, 0 };
	return m + 1;
}

/* Makes ops[0..n) available in one go, kicks if the device wants it, and sleeps until
 * all have been used and the interrupt for them has arrived. */
static void blk_batch(struct blk *b, struct blk_op *ops, unsigned n)
{
	uint8_t head_op[QSZ_MAX];
	for (unsigned i = 0; i < b->qsize; i++)
		head_op[i] = NO_OP;

	uint16_t old = b->avail_idx, next = 0;
	for (unsigned j = 0; j < n; j++) {
		struct blk_op *op = &ops[j];
		vq_slot[j].type = op->type;
		vq_slot[j].reserved = 0;
		vq_slot[j].sector = op->sector;
		vq_slot[j].status = 0xff;
		op->status = 0xff;
		uint16_t head = next;
		if (op->indirect) {
			unsigned m = build_chain(vq_indirect[j], 0, j, op);
			vq_desc[next++] = (struct vdesc){ (uint64_t)(uintptr_t)vq_indirect[j],
							  m * (uint32_t)sizeof(struct vdesc),
							  DESC_F_INDIRECT, 0 };
		} else {
			next += build_chain(&vq_desc[next], next, j, op);
		}
		head_op[head] = (uint8_t)j;
		*avail_ring(b, old + j) = head;
	}
	uint16_t new_idx = old + n;
	bool event_idx = has(b, F_EVENT_IDX);
	/* One interrupt when the last of them is used, not one per request. */
	if (event_idx)
		*used_event_p(b) = (uint16_t)(b->used_idx + n - 1);
	barrier(); /* x86 keeps stores in order; the compiler must too */
	*avail_idx_p() = new_idx;
	b->avail_idx = new_idx;
	mb(); /* publish idx before reading the device's suppression state */
	bool kick = event_idx ? need_event(*avail_event_p(b), new_idx, old)
			      : !(*used_flags_p() & USED_F_NO_NOTIFY);

	unsigned irqs0 = b->used_irqs;
	uint64_t t0 = tg_ticks();
	if (kick)
		vw(b, VM_QUEUE_NOTIFY, 0);
	for (;;) {
		uint16_t done = (uint16_t)(*used_idx_p() - b->used_idx);
		if (done > n)
			tg_fail(TG_EXIT_REQUEST, "used idx moved by %u, only %u buffers were available",
				done, n);
		if (done == n && b->used_irqs != irqs0)
			break;
		if (tg_ticks() - t0 > TIMEOUT_TICKS) {
			if (done == n)
				tg_fail(TG_EXIT_TIMEOUT, "timeout waiting for interrupt: all %u "
					"request(s) were used but no used-ring interrupt came "
					"(used_event %u, used idx %u)", n, *used_event_p(b),
					*used_idx_p());
			tg_fail(TG_EXIT_TIMEOUT, "timeout waiting for interrupt: %u of %u "
				"request(s) used after %u s (%s, avail idx %u, avail_event %u)", done,
				n, (unsigned)(TIMEOUT_TICKS / TG_TICKS_PER_SECOND),
				kick ? "notified" : "device asked for no notification", new_idx,
				*avail_event_p(b));
		}
		tg_wait_interrupt();
	}
	barrier(); /* used idx before the entries and statuses (x86 keeps loads in order) */

	for (unsigned k = 0; k < n; k++) {
		volatile struct used_elem *e = used_ring(b, b->used_idx + k);
		uint32_t id = e->id, len = e->len;
		if (id >= b->qsize || head_op[id] == NO_OP)
			tg_fail(TG_EXIT_REQUEST, "used ring entry %u names descriptor %u, not the "
				"head of an outstanding request", k, id);
		unsigned j = head_op[id];
		struct blk_op *op = &ops[j];
		head_op[id] = NO_OP;
		op->status = vq_slot[j].status;
		op->used_len = len;
		uint32_t writable = (op_device_writes(op) ? op->len : 0) + 1;
		if (len > writable || len == 0)
			tg_fail(TG_EXIT_REQUEST, "request type %u: used len %u, the device can "
				"only have written 1..%u bytes", op->type, len, writable);
		if (op->status == BLK_S_OK && len != writable)
			tg_fail(TG_EXIT_REQUEST, "request type %u succeeded with used len %u, "
				"expected %u", op->type, len, writable);
	}
	b->used_idx += n;
}

/* Runs ops in batches that fit the queue. */
static void blk_run(struct blk *b, struct blk_op *ops, unsigned n)
{
	while (n) {
		unsigned k = 0, descs = 0;
		while (k < n && k < MAX_BATCH && descs + op_descs(&ops[k]) <= b->qsize)
			descs += op_descs(&ops[k++]);
		blk_batch(b, ops, k);
		ops += k;
		n -= k;
	}
}

static void blk_one(struct blk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len,
		    uint8_t want, const char *what)
{
	struct blk_op op = { .type = type, .sector = sector, .buf = buf, .len = len };
	blk_run(b, &op, 1);
	if (op.status != want)
		tg_fail(TG_EXIT_REQUEST, "%s: status %u (%s), expected %s", what, op.status,
			status_name(op.status), status_name(want));
}

/* ---- set-up -------------------------------------------------------------------------- */

static uint64_t config_read64(const struct blk *b, unsigned off)
{
	uint32_t gen, lo, hi;
	do {
		gen = vr(b, VM_CONFIG_GEN);
		lo = vr(b, VM_CONFIG + off);
		hi = vr(b, VM_CONFIG + off + 4);
	} while (gen != vr(b, VM_CONFIG_GEN));
	return (uint64_t)hi << 32 | lo;
}

static void blk_init(struct blk *b)
{
	vw(b, VM_STATUS, 0);
	if (vr(b, VM_STATUS) != 0)
		tg_fail(TG_EXIT_TRANSPORT, "status is 0x%x after reset, want 0", vr(b, VM_STATUS));
	vw(b, VM_STATUS, ST_ACKNOWLEDGE);
	vw(b, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);

	vw(b, VM_DEVICE_FEAT_SEL, 0);
	uint64_t offered = vr(b, VM_DEVICE_FEATURES);
	vw(b, VM_DEVICE_FEAT_SEL, 1);
	offered |= (uint64_t)vr(b, VM_DEVICE_FEATURES) << 32;
	if (!(offered & F_VERSION_1))
		tg_fail(TG_EXIT_TRANSPORT, "device does not offer VIRTIO_F_VERSION_1 (features "
			"0x%lx)", offered);
	b->features = offered & F_WANTED;
	vw(b, VM_DRIVER_FEAT_SEL, 0);
	vw(b, VM_DRIVER_FEATURES, (uint32_t)b->features);
	vw(b, VM_DRIVER_FEAT_SEL, 1);
	vw(b, VM_DRIVER_FEATURES, (uint32_t)(b->features >> 32));
	vw(b, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
	if (!(vr(b, VM_STATUS) & ST_FEATURES_OK))
		tg_fail(TG_EXIT_TRANSPORT, "device refused features 0x%lx (FEATURES_OK not kept)",
			b->features);
	tg_printf("virtio-blk at 0x%lx irq %u: features offered 0x%lx, accepted 0x%lx\n",
		  b->dev->base, b->dev->irq, offered, b->features);

	b->capacity = config_read64(b, BLK_CFG_CAPACITY);
	tg_printf("capacity %lu sectors (%lu KiB)", b->capacity, b->capacity / 2);
	if (has(b, F_BLK_BLK_SIZE))
		tg_cprintf(", blk_size %u", vr(b, VM_CONFIG + BLK_CFG_BLK_SIZE));
	if (has(b, F_BLK_SEG_MAX))
		tg_cprintf(", seg_max %u", vr(b, VM_CONFIG + BLK_CFG_SEG_MAX));
	tg_cprintf("%s\n", has(b, F_BLK_RO) ? ", read-only" : "");
	if (has(b, F_BLK_SEG_MAX) && vr(b, VM_CONFIG + BLK_CFG_SEG_MAX) == 0)
		tg_fail(TG_EXIT_TRANSPORT, "seg_max is 0: no request could carry data");

	vw(b, VM_QUEUE_SEL, 0);
	if (vr(b, VM_QUEUE_READY) != 0)
		tg_fail(TG_EXIT_TRANSPORT, "queue 0 is still ready after reset");
	uint32_t max = vr(b, VM_QUEUE_NUM_MAX);
	if (max < 4)
		tg_fail(TG_EXIT_TRANSPORT, "QueueNumMax is %u, want at least 4", max);
	/* Split rings want a power of two. */
	b->qsize = QSZ_MAX;
	while (b->qsize > max)
		b->qsize >>= 1;
	b->avail_idx = b->used_idx = 0;
	zero_words(vq_desc, sizeof(vq_desc));
	zero_words(vq_avail, sizeof(vq_avail));
	zero_words(vq_used, sizeof(vq_used));
	vw(b, VM_QUEUE_NUM, b->qsize);
	uint64_t desc = (uintptr_t)vq_desc, avail = (uintptr_t)vq_avail, used = (uintptr_t)vq_used;
	vw(b, VM_QUEUE_DESC_LO, (uint32_t)desc);
	vw(b, VM_QUEUE_DESC_HI, (uint32_t)(desc >> 32));
	vw(b, VM_QUEUE_AVAIL_LO, (uint32_t)avail);
	vw(b, VM_QUEUE_AVAIL_HI, (uint32_t)(avail >> 32));
	vw(b, VM_QUEUE_USED_LO, (uint32_t)used);
	vw(b, VM_QUEUE_USED_HI, (uint32_t)(used >> 32));
	vw(b, VM_QUEUE_READY, 1);
	if (vr(b, VM_QUEUE_READY) != 1)
		tg_fail(TG_EXIT_TRANSPORT, "QueueReady does not read back 1");

	/* The interrupt must be routable before the device can raise it. */
	tg_irq_route(b->dev->irq, blk_irq, b);
	vw(b, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	uint32_t st = vr(b, VM_STATUS);
	if (st & (ST_NEEDS_RESET | ST_FAILED) || !(st & ST_DRIVER_OK))
		tg_fail(TG_EXIT_TRANSPORT, "status 0x%x after DRIVER_OK", st);
	tg_printf("queue 0: %u entries (max %u), vendor 0x%x, driver ok\n", b->qsize, max,
		  vr(b, VM_VENDOR_ID));
}

/* ---- the pattern --------------------------------------------------------------------- */

static void pattern_fill(uint64_t *buf, uint64_t first, unsigned nsect, uint64_t flip)
{
	for (unsigned s = 0; s < nsect; s++, buf += TG_WORDS_PER_SECTOR) {
		uint64_t base = tg_pattern_word(first + s, 0) ^ flip;
		for (unsigned w = 0; w < TG_WORDS_PER_SECTOR; w++)
			buf[w] = base ^ w;
	}
}

static void pattern_check(const uint64_t *buf, uint64_t first, unsigned nsect, uint64_t flip,
			  const char *what)
{
	for (unsigned s = 0; s < nsect; s++, buf += TG_WORDS_PER_SECTOR) {
		uint64_t base = tg_pattern_word(first + s, 0) ^ flip;
		for (unsigned w = 0; w < TG_WORDS_PER_SECTOR; w++)
			if (buf[w] != (base ^ w))
				tg_fail(TG_EXIT_DATA, "%s: sector %lu word %u is 0x%016lx, expected "
					"0x%016lx", what, first + s, w, buf[w], base ^ w);
	}
}

/* ---- the test -------------------------------------------------------------------------- */

#define WRITE_FIRST 8
#define WRITE_COUNT 8

static void test_get_id(struct blk *b)
{
	zero_words(idbuf, sizeof(idbuf));
	blk_one(b, BLK_T_GET_ID, 0, idbuf, BLK_ID_BYTES, BLK_S_OK, "GET_ID");
	tg_printf("serial \"");
	for (unsigned i = 0; i < BLK_ID_BYTES && idbuf[i]; i++)
		tg_putc(idbuf[i] >= 0x20 && idbuf[i] < 0x7f ? idbuf[i] : '?');
	tg_cprintf("\"\n");
}

static void test_read_pattern(struct blk *b)
{
	struct blk_op ops[8];
	for (unsigned i = 0; i < 8; i++)
		ops[i] = (struct blk_op){ .type = BLK_T_IN, .sector = 8 * i,
					  .buf = &rdbuf[8 * i * TG_WORDS_PER_SECTOR],
					  .len = 8 * TG_SECTOR_SIZE,
					  .indirect = i == 3 && has(b, F_INDIRECT_DESC) };
	unsigned irqs0 = b->used_irqs;
	blk_run(b, ops, 8);
	for (unsigned i = 0; i < 8; i++)
		if (ops[i].status != BLK_S_OK)
			tg_fail(TG_EXIT_REQUEST, "read of sectors %lu-%lu: status %u (%s)",
				ops[i].sector, ops[i].sector + 7, ops[i].status,
				status_name(ops[i].status));
	pattern_check(rdbuf, 0, 64, 0, "read of sectors 0-63");
	tg_printf("sectors 0-63 match the pattern (8 requests%s, %u interrupt(s))\n",
		  has(b, F_INDIRECT_DESC) ? ", one indirect" : ", indirect not offered",
		  b->used_irqs - irqs0);

	uint64_t last = b->capacity - 1;
	blk_one(b, BLK_T_IN, last, rdbuf, TG_SECTOR_SIZE, BLK_S_OK, "read of the last sector");
	pattern_check(rdbuf, last, 1, 0, "read of the last sector");
	tg_printf("last sector %lu matches the pattern\n", last);

	blk_one(b, BLK_T_IN, b->capacity, rdbuf, TG_SECTOR_SIZE, BLK_S_IOERR,
		"read past the end (sector = capacity)");
	tg_printf("read past the end rejected with IOERR\n");
}

static void flush(struct blk *b)
{
	if (has(b, F_BLK_FLUSH))
		blk_one(b, BLK_T_FLUSH, 0, NULL, 0, BLK_S_OK, "FLUSH");
}

static void write_and_check(struct blk *b, uint64_t flip, const char *what)
{
	pattern_fill(wrbuf, WRITE_FIRST, WRITE_COUNT, flip);
	blk_one(b, BLK_T_OUT, WRITE_FIRST, wrbuf, WRITE_COUNT * TG_SECTOR_SIZE, BLK_S_OK, what);
	flush(b);
	zero_words(rdbuf, WRITE_COUNT * TG_SECTOR_SIZE);
	blk_one(b, BLK_T_IN, WRITE_FIRST, rdbuf, WRITE_COUNT * TG_SECTOR_SIZE, BLK_S_OK,
		"read back");
	pattern_check(rdbuf, WRITE_FIRST, WRITE_COUNT, flip, what);
}

static void test_write(struct blk *b)
{
	if (has(b, F_BLK_RO)) {
		/* The original pattern, so a device that wrongly accepts it leaves the image
		 * as it was. */
		pattern_fill(wrbuf, WRITE_FIRST, 1, 0);
		blk_one(b, BLK_T_OUT, WRITE_FIRST, wrbuf, TG_SECTOR_SIZE, BLK_S_IOERR,
			"write to a read-only device");
		tg_printf("read-only is enforced: WRITE failed with IOERR\n");
		return;
	}
	write_and_check(b, ~0ULL, "write of the inverted pattern to sectors 8-15");
	write_and_check(b, 0, "restore of sectors 8-15");
	tg_printf("wrote, %sread back and restored sectors 8-15\n",
		  has(b, F_BLK_FLUSH) ? "flushed, " : "(no FLUSH offered) ");
}

void tg_blk_test(const struct tg_virtio_dev *d)
{
	static struct blk b;
	b = (struct blk){ .dev = d };
	blk_init(&b);
	if (b.capacity < 65)
		tg_fail(TG_EXIT_REQUEST, "disk has %lu sectors; the test needs at least 65",
			b.capacity);
	test_get_id(&b);
	test_read_pattern(&b);
	test_write(&b);
	vw(&b, VM_STATUS, 0);
	if (vr(&b, VM_STATUS) != 0)
		tg_fail(TG_EXIT_TRANSPORT, "status is 0x%x after the final reset", vr(&b, VM_STATUS));
	tg_printf("virtio-blk at 0x%lx ok (%u interrupts", d->base, b.used_irqs);
	if (b.config_irqs || b.empty_irqs)
		tg_cprintf(", %u config change, %u with no status", b.config_irqs, b.empty_irqs);
	tg_cprintf(")\n");
}

/* ---- a disk kept open for other modes ------------------------------------------------ */

static struct blk kept;

void tg_blk_open(const struct tg_virtio_dev *d)
{
	kept = (struct blk){ .dev = d };
	blk_init(&kept);
}

bool tg_blk_read_only(void)
{
	return has(&kept, F_BLK_RO);
}

void tg_blk_io(bool write, uint64_t sector, void *buf, uint32_t len)
{
	blk_one(&kept, write ? BLK_T_OUT : BLK_T_IN, sector, buf, len, BLK_S_OK,
		write ? "WRITE" : "READ");
	if (write)
		flush(&kept);
}
