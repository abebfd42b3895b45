/* Split virtqueue parsing against a fake guest: every driver-written field is hostile. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "devices/virtq.h"

#define RAM_SIZE (1 << 20)
#define DESC 0x1000
#define AVAIL 0x2000
#define USED 0x3000
#define QSIZE 16

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };

static uint8_t *ram;
static struct guest_mem mem;
static struct virtq q;
static struct virtq_chain chain;

static struct desc *desc_at(uint64_t gpa) { return (struct desc *)(ram + gpa); }
static uint16_t *avail16(unsigned off) { return (uint16_t *)(ram + AVAIL + off); }
static uint16_t *used16(unsigned off) { return (uint16_t *)(ram + USED + off); }

static void setup(void)
{
	ram = calloc(1, RAM_SIZE);
	guest_mem_layout(&mem, ram, RAM_SIZE);
	memset(&q, 0, sizeof(q));
	q.size = QSIZE;
	q.desc_gpa = DESC;
	q.avail_gpa = AVAIL;
	q.used_gpa = USED;
	q.ready = true;
}

static void teardown(void) { free(ram); }

static void set_desc(unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	*desc_at(DESC + 16ULL * i) = (struct desc){ addr, len, flags, next };
}

/* Publishes descriptor `head` as the next available chain. */
static void make_avail(uint16_t head)
{
	uint16_t idx = *avail16(2);
	*avail16(4 + 2 * (idx % QSIZE)) = head;
	*avail16(2) = idx + 1;
}

START_TEST(empty_queue_pops_nothing)
{
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), 0);
}
END_TEST

START_TEST(simple_chain)
{
	set_desc(0, 0x10000, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, 0x11000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
	set_desc(2, 0x12000, 1, VIRTQ_DESC_F_WRITE, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), 1);
	ck_assert_uint_eq(chain.head, 0);
	ck_assert_uint_eq(chain.nbufs, 3);
	ck_assert_uint_eq(chain.nreadable, 1);
	ck_assert_uint_eq(chain.readable_len, 16);
	ck_assert_uint_eq(chain.writable_len, 513);
	ck_assert_ptr_eq(chain.bufs[1].host, ram + 0x11000);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), 0);
}
END_TEST

START_TEST(indirect_table)
{
	uint64_t table = 0x20000;
	*desc_at(table) = (struct desc){ 0x10000, 16, VIRTQ_DESC_F_NEXT, 1 };
	*desc_at(table + 16) = (struct desc){ 0x11000, 4096, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2 };
	*desc_at(table + 32) = (struct desc){ 0x12000, 1, VIRTQ_DESC_F_WRITE, 0 };
	set_desc(5, table, 48, VIRTQ_DESC_F_INDIRECT, 0);
	make_avail(5);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), 1);
	ck_assert_uint_eq(chain.head, 5);
	ck_assert_uint_eq(chain.nbufs, 3);
	ck_assert_uint_eq(chain.writable_len, 4097);
}
END_TEST

START_TEST(descriptor_loop_is_rejected)
{
	set_desc(0, 0x10000, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, 0x10000, 16, VIRTQ_DESC_F_NEXT, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(self_loop_is_rejected)
{
	set_desc(3, 0x10000, 16, VIRTQ_DESC_F_NEXT, 3);
	make_avail(3);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(chain_longer_than_queue_is_rejected)
{
	/* Every descriptor links onward, so the walk needs more steps than the table has. */
	for (unsigned i = 0; i < QSIZE; i++)
		set_desc(i, 0x10000, 1, VIRTQ_DESC_F_NEXT, (i + 1) % QSIZE);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(next_out_of_table_is_rejected)
{
	set_desc(0, 0x10000, 16, VIRTQ_DESC_F_NEXT, QSIZE);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(head_out_of_table_is_rejected)
{
	make_avail(QSIZE + 3);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(buffer_outside_ram_is_rejected)
{
	set_desc(0, RAM_SIZE - 8, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(buffer_address_overflow_is_rejected)
{
	set_desc(0, UINT64_MAX - 4, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(buffer_in_mmio_hole_is_rejected)
{
	set_desc(0, 0xd0000000ULL, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(zero_length_buffers_are_fine)
{
	set_desc(0, 0x10000, 0, VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, RAM_SIZE, 0, VIRTQ_DESC_F_WRITE, 0); /* at the very end of RAM: still inside */
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), 1);
	ck_assert_uint_eq(chain.nbufs, 2);
	ck_assert_uint_eq(chain.readable_len + chain.writable_len, 0);
}
END_TEST

START_TEST(nested_indirect_is_rejected)
{
	uint64_t outer = 0x20000, inner = 0x21000;
	*desc_at(inner) = (struct desc){ 0x10000, 16, 0, 0 };
	*desc_at(outer) = (struct desc){ inner, 16, VIRTQ_DESC_F_INDIRECT, 0 };
	set_desc(0, outer, 16, VIRTQ_DESC_F_INDIRECT, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(indirect_with_next_is_rejected)
{
	uint64_t table = 0x20000;
	*desc_at(table) = (struct desc){ 0x10000, 16, 0, 0 };
	set_desc(0, table, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, 0x10000, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(indirect_bad_sizes_are_rejected)
{
	static const uint32_t lens[] = { 0, 15, 17, 16 * (VIRTQ_MAX_CHAIN + 1) };
	for (unsigned i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		teardown();  /* a fresh queue for each size */
		setup();
		set_desc(0, 0x20000, lens[i], VIRTQ_DESC_F_INDIRECT, 0);
		make_avail(0);
		ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
	}
}
END_TEST

START_TEST(indirect_table_outside_ram_is_rejected)
{
	set_desc(0, RAM_SIZE - 16, 32, VIRTQ_DESC_F_INDIRECT, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(indirect_loop_is_rejected)
{
	uint64_t table = 0x20000;
	*desc_at(table) = (struct desc){ 0x10000, 16, VIRTQ_DESC_F_NEXT, 1 };
	*desc_at(table + 16) = (struct desc){ 0x10000, 16, VIRTQ_DESC_F_NEXT, 0 };
	set_desc(0, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(readable_after_writable_is_rejected)
{
	set_desc(0, 0x10000, 16, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
	set_desc(1, 0x11000, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(avail_index_jump_is_rejected)
{
	*avail16(2) = QSIZE + 1;  /* more chains than the ring can hold */
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), -EINVAL);
}
END_TEST

START_TEST(not_ready_queue_pops_nothing)
{
	set_desc(0, 0x10000, 16, 0, 0);
	make_avail(0);
	q.ready = false;
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), 0);
}
END_TEST

START_TEST(push_fills_used_ring)
{
	set_desc(0, 0x10000, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), 1);
	ck_assert_int_eq(virtq_push(&q, &mem, chain.head, 77), 0);
	ck_assert_uint_eq(*used16(2), 1);
	uint32_t *elem = (uint32_t *)(ram + USED + 4);
	ck_assert_uint_eq(elem[0], 0);
	ck_assert_uint_eq(elem[1], 77);
}
END_TEST

START_TEST(indices_wrap_around)
{
	q.last_avail_idx = q.used_idx = 0xfffe;
	*avail16(2) = 0xfffe;
	*used16(2) = 0xfffe;
	for (int i = 0; i < 4; i++) {
		set_desc(i, 0x10000, 16, 0, 0);
		make_avail((uint16_t)i);
		ck_assert_int_eq(virtq_pop(&q, &mem, &chain), 1);
		ck_assert_uint_eq(chain.head, (unsigned)i);
		ck_assert_int_eq(virtq_push(&q, &mem, chain.head, 1), 0);
	}
	ck_assert_uint_eq(*used16(2), 2);
}
END_TEST

START_TEST(no_interrupt_flag_suppresses)
{
	ck_assert(virtq_should_notify(&q, &mem));
	*avail16(0) = VIRTQ_AVAIL_F_NO_INTERRUPT;
	ck_assert(!virtq_should_notify(&q, &mem));
}
END_TEST

START_TEST(event_idx_used_event)
{
	q.event_idx = true;
	/* First completion always signals, so the driver cannot miss the start. */
	virtq_push(&q, &mem, 0, 1);
	ck_assert(virtq_should_notify(&q, &mem));
	/* Driver asks to be woken only once used idx passes 3. */
	*avail16(4 + 2 * QSIZE) = 3;
	virtq_push(&q, &mem, 0, 1);   /* used 2 */
	ck_assert(!virtq_should_notify(&q, &mem));
	virtq_push(&q, &mem, 0, 1);   /* used 3 */
	ck_assert(!virtq_should_notify(&q, &mem));
	virtq_push(&q, &mem, 0, 1);   /* used 4: crossed used_event */
	ck_assert(virtq_should_notify(&q, &mem));
}
END_TEST

START_TEST(arm_publishes_avail_event)
{
	q.event_idx = true;
	set_desc(0, 0x10000, 16, 0, 0);
	make_avail(0);
	ck_assert(virtq_arm_and_recheck(&q, &mem));       /* one pending */
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), 1);
	ck_assert(!virtq_arm_and_recheck(&q, &mem));
	ck_assert_uint_eq(*used16(4 + 8 * QSIZE), 1);
}
END_TEST

START_TEST(chain_copy_crosses_buffers)
{
	memcpy(ram + 0x10000, "abc", 3);
	memcpy(ram + 0x11000, "defgh", 5);
	set_desc(0, 0x10000, 3, VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, 0x11000, 5, VIRTQ_DESC_F_NEXT, 2);
	set_desc(2, 0x12000, 2, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 3);
	set_desc(3, 0x13000, 4, VIRTQ_DESC_F_WRITE, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &mem, &chain), 1);
	char buf[16] = { 0 };
	ck_assert_uint_eq(virtq_chain_read(&chain, 2, buf, sizeof(buf)), 6);
	ck_assert_str_eq(buf, "cdefgh");
	ck_assert_uint_eq(virtq_chain_write(&chain, 1, "WXYZ!", 5), 5);
	ck_assert_int_eq(memcmp(ram + 0x12001, "W", 1), 0);
	ck_assert_int_eq(memcmp(ram + 0x13000, "XYZ!", 4), 0);
	ck_assert_uint_eq(virtq_chain_write(&chain, 6, "x", 1), 0);
}
END_TEST

START_TEST(validate_rings)
{
	ck_assert_int_eq(virtq_validate(&q, &mem), 0);
	struct virtq bad = q;
	bad.size = 12;
	ck_assert_int_eq(virtq_validate(&bad, &mem), -EINVAL);
	bad = q;
	bad.used_gpa = RAM_SIZE - 8;
	ck_assert_int_eq(virtq_validate(&bad, &mem), -EINVAL);
	bad = q;
	bad.desc_gpa = DESC + 8;
	ck_assert_int_eq(virtq_validate(&bad, &mem), -EINVAL);
	bad = q;
	bad.size = 0;
	ck_assert_int_eq(virtq_validate(&bad, &mem), -EINVAL);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("virtq");
	TCase *tc = tcase_create("virtq");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, empty_queue_pops_nothing);
	tcase_add_test(tc, simple_chain);
	tcase_add_test(tc, indirect_table);
	tcase_add_test(tc, descriptor_loop_is_rejected);
	tcase_add_test(tc, self_loop_is_rejected);
	tcase_add_test(tc, chain_longer_than_queue_is_rejected);
	tcase_add_test(tc, next_out_of_table_is_rejected);
	tcase_add_test(tc, head_out_of_table_is_rejected);
	tcase_add_test(tc, buffer_outside_ram_is_rejected);
	tcase_add_test(tc, buffer_address_overflow_is_rejected);
	tcase_add_test(tc, buffer_in_mmio_hole_is_rejected);
	tcase_add_test(tc, zero_length_buffers_are_fine);
	tcase_add_test(tc, nested_indirect_is_rejected);
	tcase_add_test(tc, indirect_with_next_is_rejected);
	tcase_add_test(tc, indirect_bad_sizes_are_rejected);
	tcase_add_test(tc, indirect_table_outside_ram_is_rejected);
	tcase_add_test(tc, indirect_loop_is_rejected);
	tcase_add_test(tc, readable_after_writable_is_rejected);
	tcase_add_test(tc, avail_index_jump_is_rejected);
	tcase_add_test(tc, not_ready_queue_pops_nothing);
	tcase_add_test(tc, push_fills_used_ring);
	tcase_add_test(tc, indices_wrap_around);
	tcase_add_test(tc, no_interrupt_flag_suppresses);
	tcase_add_test(tc, event_idx_used_event);
	tcase_add_test(tc, arm_publishes_avail_event);
	tcase_add_test(tc, chain_copy_crosses_buffers);
	tcase_add_test(tc, validate_rings);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
