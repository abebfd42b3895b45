/* testguest.mode=snap: a guest with state in RAM and on its disk that runs until told to
 * quit, for the snapshot and fork tests. It idles in `hlt`, waking on the LAPIC timer
 * (100 Hz): each wake counts, and every TICKS_PER_LINE wakes it prints
 *     testguest: tick <seq> counter <n>
 * with n == seq * TICKS_PER_LINE, so a restored copy must continue the sequence exactly
 * where its snapshot stopped. Commands arrive one byte at a time on COM1:
 *     w<c>  put mark <c> in RAM (a page of words derived from it) and on disk sector 100
 *     p     print the RAM mark and check the page still matches it
 *     r     read sector 100 back and print the disk mark
 *     g     print the VM generation ID (ACPI VMGenID), which every restore must change
 *     b     spin forever writing port 0x80 between short delays, so that a copy restored
 *           from a snapshot of this state exits to the VMM within microseconds (the
 *           fork benchmark times restore to that first exit)
 *     i     mask the LAPIC timer and halt for good: an idle tickless guest that costs
 *           its VMM no exits, the state tools/bench-peers holds a thousand copies of
 *     q     PASS and exit 0 */
#include "tg.h"
#include "firmware/testguest/pattern.h"
#include "lib/layout.h"

#define TICKS_PER_LINE 50
#define MARK_SECTOR    100
#define MARK_MAGIC     0x4d41524b4d49544fULL /* "MARKMITO" */
#define MARK_WORDS     512                   /* one 4 KiB page */
#define COM1_LSR       (LAYOUT_COM1_PORT + 5)
#define LSR_DATA_READY 0x01
#define LAPIC_LVT_TIMER 0x320
#define LVT_MASKED      (1u << 16)

static uint64_t mark_page[MARK_WORDS] __attribute__((aligned(4096)));
static uint64_t sector_buf[TG_WORDS_PER_SECTOR] __attribute__((aligned(512)));
static uint64_t counter, seq;
static uint8_t ram_mark;
static bool have_disk;

static uint64_t mark_word(uint8_t mark, unsigned i)
{
	return MARK_MAGIC ^ ((uint64_t)mark << 32) ^ i;
}

static int serial_getc(void)
{
	return (inb(COM1_LSR) & LSR_DATA_READY) ? inb(LAYOUT_COM1_PORT) : -1;
}

static void set_mark(uint8_t c)
{
	ram_mark = c;
	for (unsigned i = 0; i < MARK_WORDS; i++)
		mark_page[i] = mark_word(c, i);
	if (have_disk) {
		memset(sector_buf, 0, sizeof(sector_buf));
		sector_buf[0] = MARK_MAGIC;
		sector_buf[1] = c;
		sector_buf[2] = counter;
		tg_blk_io(true, MARK_SECTOR, sector_buf, sizeof(sector_buf));
	}
	tg_printf("wrote mark %c at counter %lu\n", c, counter);
}

static void print_ram_mark(void)
{
	unsigned bad = 0;
	for (unsigned i = 0; i < MARK_WORDS; i++)
		if (ram_mark && mark_page[i] != mark_word(ram_mark, i))
			bad++;
	tg_printf("ram mark %c counter %lu page %s\n", ram_mark ? ram_mark : '-', counter,
		  bad ? "CORRUPT" : "ok");
}

static void print_disk_mark(void)
{
	if (!have_disk) {
		tg_printf("disk mark none (no disk)\n");
		return;
	}
	tg_blk_io(false, MARK_SECTOR, sector_buf, sizeof(sector_buf));
	if (sector_buf[0] != MARK_MAGIC)
		tg_printf("disk mark -\n");
	else
		tg_printf("disk mark %c written at counter %lu\n", (char)sector_buf[1], sector_buf[2]);
}

_Noreturn void tg_snap_run(const struct tg_virtio_dev *devs, unsigned n)
{
	for (unsigned i = 0; i < n && !have_disk; i++)
		if (tg_virtio_probe(&devs[i]) == 2) {
			tg_blk_open(&devs[i]);
			have_disk = !tg_blk_read_only();
		}
	tg_printf("snap mode: %s, ticking\n", have_disk ? "disk attached" : "no writable disk");
	bool want_mark = false;
	for (;;) {
		uint64_t before = tg_ticks();
		while (tg_ticks() == before)
			tg_wait_interrupt();
		counter++;
		if (counter % TICKS_PER_LINE == 0)
			tg_printf("tick %lu counter %lu\n", ++seq, counter);
		int c;
		while ((c = serial_getc()) >= 0) {
			if (want_mark) {
				want_mark = false;
				set_mark((uint8_t)c);
			} else if (c == 'w') {
				want_mark = true;
			} else if (c == 'p') {
				print_ram_mark();
			} else if (c == 'r') {
				print_disk_mark();
			} else if (c == 'g') {
				const volatile uint64_t *id = (const volatile uint64_t *)LAYOUT_VMGENID_GPA;
				tg_printf("generation %016lx%016lx\n", id[0], id[1]);
			} else if (c == 'b') {
				tg_printf("spinning on port 0x80\n");
				for (;;) {
					outb(LAYOUT_POST_PORT, 0x42);
					for (volatile unsigned i = 0; i < 16; i++)
						;
				}
			} else if (c == 'i') {
				tg_printf("idle: timer masked, halted\n");
				mmio_write32(LAYOUT_LAPIC_GPA + LAPIC_LVT_TIMER, LVT_MASKED);
				for (;;)
					tg_wait_interrupt();
			} else if (c == 'q') {
				tg_printf("PASS\n");
				tg_exit(TG_EXIT_PASS);
			}
		}
	}
}
