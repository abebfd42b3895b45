/* Split virtqueue parsing against a fake guest: every driver-written field is hostile. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "devices/virtq.h"
#include "fake_driver.h"

#define RAM_SIZE (1 << 20)
#define QSIZE 16

static struct fake_guest G;
static struct fake_queue *fq;   /* the driver's side of q */
static struct virtq q;
static struct virtq_chain chain;

static void setup(void)
{
	fake_guest_init(&G, RAM_SIZE);
	fq = fake_queue_alloc(&G, 0, QSIZE);
	memset(&q, 0, sizeof(q));
	q.size = QSIZE;
	q.desc_gpa = fq->desc;
	q.avail_gpa = fq->avail;
	q.used_gpa = fq->used;
	q.ready = true;
}

static void teardown(void) { fake_guest_free(&G); }

/* Publishes descriptor `head` as the next available chain. */
static void make_avail(uint16_t head)
{
	fake_avail_put(fq, head);
	fake_publish(fq);
}

START_TEST(empty_queue_pops_nothing)
{
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), 0);
}
END_TEST

START_TEST(simple_chain)
{
	fake_desc_put(fq, 0, 0x10000, 16, VIRTQ_DESC_F_NEXT, 1);
	fake_desc_put(fq, 1, 0x11000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
	fake_desc_put(fq, 2, 0x12000, 1, VIRTQ_DESC_F_WRITE, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), 1);
	ck_assert_uint_eq(chain.head, 0);
	ck_assert_uint_eq(chain.nbufs, 3);
	ck_assert_uint_eq(chain.nreadable, 1);
	ck_assert_uint_eq(chain.readable_len, 16);
	ck_assert_uint_eq(chain.writable_len, 513);
	ck_assert_ptr_eq(chain.bufs[1].host, fake_host(&G, 0x11000));
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), 0);
}
END_TEST

START_TEST(indirect_table)
{
	uint64_t table = 0x20000;
	fake_desc_write(&G, table, 0x10000, 16, VIRTQ_DESC_F_NEXT, 1);
	fake_desc_write(&G, table + 16, 0x11000, 4096, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
	fake_desc_write(&G, table + 32, 0x12000, 1, VIRTQ_DESC_F_WRITE, 0);
	fake_desc_put(fq, 5, table, 48, VIRTQ_DESC_F_INDIRECT, 0);
	make_avail(5);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), 1);
	ck_assert_uint_eq(chain.head, 5);
	ck_assert_uint_eq(chain.nbufs, 3);
	ck_assert_uint_eq(chain.writable_len, 4097);
}
END_TEST

START_TEST(descriptor_loop_is_rejected)
{
	fake_desc_put(fq, 0, 0x10000, 16, VIRTQ_DESC_F_NEXT, 1);
	fake_desc_put(fq, 1, 0x10000, 16, VIRTQ_DESC_F_NEXT, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(self_loop_is_rejected)
{
	fake_desc_put(fq, 3, 0x10000, 16, VIRTQ_DESC_F_NEXT, 3);
	make_avail(3);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(chain_longer_than_queue_is_rejected)
{
	/* Every descriptor links onward, so the walk needs more steps than the table has. */
	for (unsigned i = 0; i < QSIZE; i++)
		fake_desc_put(fq, i, 0x10000, 1, VIRTQ_DESC_F_NEXT, (i + 1) % QSIZE);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(next_out_of_table_is_rejected)
{
	fake_desc_put(fq, 0, 0x10000, 16, VIRTQ_DESC_F_NEXT, QSIZE);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(head_out_of_table_is_rejected)
{
	make_avail(QSIZE + 3);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(buffer_outside_ram_is_rejected)
{
	fake_desc_put(fq, 0, RAM_SIZE - 8, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(buffer_address_overflow_is_rejected)
{
	fake_desc_put(fq, 0, UINT64_MAX - 4, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(buffer_in_mmio_hole_is_rejected)
{
	fake_desc_put(fq, 0, 0xd0000000ULL, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(zero_length_buffers_are_fine)
{
	fake_desc_put(fq, 0, 0x10000, 0, VIRTQ_DESC_F_NEXT, 1);
	/* At the very end of RAM: still inside. */
	fake_desc_put(fq, 1, RAM_SIZE, 0, VIRTQ_DESC_F_WRITE, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), 1);
	ck_assert_uint_eq(chain.nbufs, 2);
	ck_assert_uint_eq(chain.readable_len + chain.writable_len, 0);
}
END_TEST

START_TEST(nested_indirect_is_rejected)
{
	uint64_t outer = 0x20000, inner = 0x21000;
	fake_desc_write(&G, inner, 0x10000, 16, 0, 0);
	fake_desc_write(&G, outer, inner, 16, VIRTQ_DESC_F_INDIRECT, 0);
	fake_desc_put(fq, 0, outer, 16, VIRTQ_DESC_F_INDIRECT, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(indirect_with_next_is_rejected)
{
	uint64_t table = 0x20000;
	fake_desc_write(&G, table, 0x10000, 16, 0, 0);
	fake_desc_put(fq, 0, table, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
	fake_desc_put(fq, 1, 0x10000, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(indirect_bad_sizes_are_rejected)
{
	static const uint32_t lens[] = { 0, 15, 17, 16 * (VIRTQ_MAX_CHAIN + 1) };
	for (unsigned i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		teardown();  /* a fresh queue for each size */
		setup();
		fake_desc_put(fq, 0, 0x20000, lens[i], VIRTQ_DESC_F_INDIRECT, 0);
		make_avail(0);
		ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
	}
}
END_TEST

START_TEST(indirect_table_outside_ram_is_rejected)
{
	fake_desc_put(fq, 0, RAM_SIZE - 16, 32, VIRTQ_DESC_F_INDIRECT, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(indirect_loop_is_rejected)
{
	uint64_t table = 0x20000;
	fake_desc_write(&G, table, 0x10000, 16, VIRTQ_DESC_F_NEXT, 1);
	fake_desc_write(&G, table + 16, 0x10000, 16, VIRTQ_DESC_F_NEXT, 0);
	fake_desc_put(fq, 0, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(readable_after_writable_is_rejected)
{
	fake_desc_put(fq, 0, 0x10000, 16, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
	fake_desc_put(fq, 1, 0x11000, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(avail_index_jump_is_rejected)
{
	fq->avail_idx = QSIZE + 1;  /* more chains than the ring can hold */
	fake_publish(fq);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), -EINVAL);
}
END_TEST

START_TEST(not_ready_queue_pops_nothing)
{
	fake_desc_put(fq, 0, 0x10000, 16, 0, 0);
	make_avail(0);
	q.ready = false;
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), 0);
}
END_TEST

START_TEST(push_fills_used_ring)
{
	fake_desc_put(fq, 0, 0x10000, 16, 0, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), 1);
	ck_assert_int_eq(virtq_push(&q, &G.mem, chain.head, 77), 0);
	ck_assert_uint_eq(fake_used_idx(fq), 1);
	uint32_t id, len;
	fake_used_elem(fq, 0, &id, &len);
	ck_assert_uint_eq(id, 0);
	ck_assert_uint_eq(len, 77);
}
END_TEST

START_TEST(indices_wrap_around)
{
	q.last_avail_idx = q.used_idx = 0xfffe;
	fq->avail_idx = 0xfffe;
	*(uint16_t *)fake_host(&G, fq->used + 2) = 0xfffe;
	for (int i = 0; i < 4; i++) {
		fake_desc_put(fq, i, 0x10000, 16, 0, 0);
		make_avail((uint16_t)i);
		ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), 1);
		ck_assert_uint_eq(chain.head, (unsigned)i);
		ck_assert_int_eq(virtq_push(&q, &G.mem, chain.head, 1), 0);
	}
	ck_assert_uint_eq(fake_used_idx(fq), 2);
}
END_TEST

START_TEST(no_interrupt_flag_suppresses)
{
	ck_assert(virtq_should_notify(&q, &G.mem));
	*(uint16_t *)fake_host(&G, fq->avail) = VIRTQ_AVAIL_F_NO_INTERRUPT;
	ck_assert(!virtq_should_notify(&q, &G.mem));
}
END_TEST

START_TEST(event_idx_used_event)
{
	q.event_idx = true;
	/* First completion always signals, so the driver cannot miss the start. */
	virtq_push(&q, &G.mem, 0, 1);
	ck_assert(virtq_should_notify(&q, &G.mem));
	/* Driver asks to be woken only once used idx passes 3. */
	*fake_used_event(fq) = 3;
	virtq_push(&q, &G.mem, 0, 1);   /* used 2 */
	ck_assert(!virtq_should_notify(&q, &G.mem));
	virtq_push(&q, &G.mem, 0, 1);   /* used 3 */
	ck_assert(!virtq_should_notify(&q, &G.mem));
	virtq_push(&q, &G.mem, 0, 1);   /* used 4: crossed used_event */
	ck_assert(virtq_should_notify(&q, &G.mem));
}
END_TEST

START_TEST(arm_publishes_avail_event)
{
	q.event_idx = true;
	fake_desc_put(fq, 0, 0x10000, 16, 0, 0);
	make_avail(0);
	ck_assert(virtq_arm_and_recheck(&q, &G.mem));       /* one pending */
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), 1);
	ck_assert(!virtq_arm_and_recheck(&q, &G.mem));
	ck_assert_uint_eq(*fake_avail_event(fq), 1);
}
END_TEST

START_TEST(chain_copy_crosses_buffers)
{
	memcpy(fake_host(&G, 0x10000), "abc", 3);
	memcpy(fake_host(&G, 0x11000), "defgh", 5);
	fake_desc_put(fq, 0, 0x10000, 3, VIRTQ_DESC_F_NEXT, 1);
	fake_desc_put(fq, 1, 0x11000, 5, VIRTQ_DESC_F_NEXT, 2);
	fake_desc_put(fq, 2, 0x12000, 2, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 3);
	fake_desc_put(fq, 3, 0x13000, 4, VIRTQ_DESC_F_WRITE, 0);
	make_avail(0);
	ck_assert_int_eq(virtq_pop(&q, &G.mem, &chain), 1);
	char buf[16] = { 0 };
	ck_assert_uint_eq(virtq_chain_read(&chain, 2, buf, sizeof(buf)), 6);
	ck_assert_str_eq(buf, "cdefgh");
	ck_assert_uint_eq(virtq_chain_write(&chain, 1, "WXYZ!", 5), 5);
	ck_assert_int_eq(memcmp(fake_host(&G, 0x12001), "W", 1), 0);
	ck_assert_int_eq(memcmp(fake_host(&G, 0x13000), "XYZ!", 4), 0);
	ck_assert_uint_eq(virtq_chain_write(&chain, 6, "x", 1), 0);
}
END_TEST

START_TEST(validate_rings)
{
	ck_assert_int_eq(virtq_validate(&q, &G.mem), 0);
	struct virtq bad = q;
	bad.size = 12;
	ck_assert_int_eq(virtq_validate(&bad, &G.mem), -EINVAL);
	bad = q;
	bad.used_gpa = RAM_SIZE - 8;
	ck_assert_int_eq(virtq_validate(&bad, &G.mem), -EINVAL);
	bad = q;
	bad.desc_gpa = fq->desc + 8;
	ck_assert_int_eq(virtq_validate(&bad, &G.mem), -EINVAL);
	bad = q;
	bad.size = 0;
	ck_assert_int_eq(virtq_validate(&bad, &G.mem), -EINVAL);
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
