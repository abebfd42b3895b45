/* virtio-mmio transport register model, driven the way Linux's virtio_mmio driver does. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fake_driver.h"

#define RAM_SIZE (1 << 20)
#define V1 (1ULL << VIRTIO_F_VERSION_1)

static struct fake_guest G;
static struct virtio_device dev;
static int activations, resets, notifies;
static uint8_t config[12] = "0123456789a";

static void stub_config_read(struct virtio_device *d, uint32_t off, void *data, uint32_t len)
{
	(void)d;
	memcpy(data, config + off, len);
}

static int stub_activate(struct virtio_device *d) { (void)d; activations++; return 0; }
static void stub_reset(struct virtio_device *d) { (void)d; resets++; }
static void stub_notify(struct virtio_device *d, unsigned q) { (void)d; (void)q; notifies++; }

static const struct virtio_device_ops stub_ops = {
	.name = "fake", .device_id = 42, .features = 1ULL << 3, .num_queues = 2,
	.queue_max_size = 64, .config_size = sizeof(config), .config_read = stub_config_read,
	.activate = stub_activate, .reset = stub_reset, .queue_notify = stub_notify,
};

static void setup(void)
{
	fake_guest_init(&G, RAM_SIZE);
	virtio_device_init(&dev, &stub_ops, NULL, &G.mem, 0xd0000000, 5);
	G.dev = &dev;
	activations = resets = notifies = 0;
}

static void teardown(void)
{
	virtio_device_destroy(&dev);
	fake_guest_free(&G);
}

/* Features as given, offered or not, so that the device's refusals show. */
static void negotiate(uint64_t features)
{
	fake_ack(&G);
	fake_write_features(&G, features);
}

#define OK_STATUS (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | \
		   VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK)

START_TEST(identity_registers)
{
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_MAGIC_VALUE), VIRTIO_MMIO_MAGIC);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_VERSION_REG), 2);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_DEVICE_ID), 42);
	fake_w32(&G, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_DEVICE_FEATURES), (1U << 3) |
			  (1U << VIRTIO_F_RING_EVENT_IDX) | (1U << VIRTIO_F_RING_INDIRECT_DESC));
	fake_w32(&G, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_DEVICE_FEATURES), 1);  /* VERSION_1 */
	fake_w32(&G, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_DEVICE_FEATURES), 0);
}
END_TEST

START_TEST(bad_widths_read_zero_and_are_ignored)
{
	uint8_t b = 0xaa;
	virtio_mmio_read(&dev, VIRTIO_MMIO_MAGIC_VALUE, &b, 1);
	ck_assert_uint_eq(b, 0);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_MAGIC_VALUE + 2), 0);   /* unaligned */
	ck_assert_uint_eq(fake_r32(&G, 0x0f0), 0);                          /* unknown register */
	uint16_t h = 4;
	virtio_mmio_write(&dev, VIRTIO_MMIO_STATUS, &h, 2);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_STATUS), 0);
}
END_TEST

START_TEST(features_need_version_1)
{
	negotiate(1ULL << 3);
	ck_assert(!(fake_r32(&G, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK));
}
END_TEST

START_TEST(unoffered_features_are_refused)
{
	negotiate(V1 | (1ULL << 4));
	ck_assert(!(fake_r32(&G, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK));
}
END_TEST

START_TEST(full_bring_up_activates)
{
	negotiate(V1 | (1ULL << VIRTIO_F_RING_EVENT_IDX));
	ck_assert(fake_r32(&G, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK);
	fake_w32(&G, VIRTIO_MMIO_QUEUE_SEL, 0);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_QUEUE_NUM_MAX), 64);
	fake_queue_setup(&G, 0, 64, 0x1000, 0x2000, 0x3000);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_QUEUE_READY), 1);
	fake_w32(&G, VIRTIO_MMIO_STATUS, OK_STATUS);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_STATUS), OK_STATUS);
	ck_assert_int_eq(activations, 1);
	ck_assert(virtio_device_active(&dev));
	ck_assert(dev.vqs[0].event_idx);
	virtio_device_kick(&dev, 0);
	virtio_device_kick(&dev, 1);   /* not ready: ignored */
	virtio_device_kick(&dev, 9);   /* no such queue: ignored */
	ck_assert_int_eq(notifies, 1);
}
END_TEST

START_TEST(queue_outside_ram_is_not_ready)
{
	negotiate(V1);
	fake_queue_setup(&G, 0, 64, RAM_SIZE - 16, 0x2000, 0x3000);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_QUEUE_READY), 0);
	fake_queue_setup(&G, 1, 48, 0x1000, 0x2000, 0x3000);  /* not a power of two */
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_QUEUE_READY), 0);
	fake_queue_setup(&G, 1, 128, 0x1000, 0x2000, 0x3000); /* above QueueNumMax */
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_QUEUE_READY), 0);
}
END_TEST

START_TEST(queue_config_frozen_after_driver_ok)
{
	fake_negotiate(&G, V1, 1, 64, 64);
	fake_w32(&G, VIRTIO_MMIO_QUEUE_SEL, 0);
	fake_w32(&G, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x50000);
	ck_assert_uint_eq(dev.vqs[0].desc_gpa, G.q[0].desc);
}
END_TEST

START_TEST(driver_ok_without_features_ok_is_ignored)
{
	fake_w32(&G, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
		 VIRTIO_STATUS_DRIVER_OK);
	ck_assert(!(fake_r32(&G, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_DRIVER_OK));
	ck_assert_int_eq(activations, 0);
}
END_TEST

START_TEST(status_bits_cannot_be_cleared)
{
	negotiate(V1);
	fake_w32(&G, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	ck_assert(fake_r32(&G, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK);
}
END_TEST

/* A hostile driver's leftovers cannot make the device's state unrestorable: status bits
 * past the register's 8 were kept and refused at restore, and so were feature bits a
 * driver wrote but never had accepted (its snapshots, and forks, would not restore). */
START_TEST(hostile_leftovers_restore)
{
	fake_ack(&G);
	fake_w32(&G, VIRTIO_MMIO_STATUS, 0x100 | VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_STATUS), VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	fake_w32(&G, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	fake_w32(&G, VIRTIO_MMIO_DRIVER_FEATURES, 0xffffffff);
	struct virtio_transport_state st;
	virtio_transport_save(&dev, &st);
	ck_assert_int_eq(virtio_transport_restore(&dev, &st), 0);
	/* Accepted features the device does not have are still a corrupt state. */
	st.status |= VIRTIO_STATUS_FEATURES_OK;
	ck_assert_int_eq(virtio_transport_restore(&dev, &st), -EINVAL);
}
END_TEST

START_TEST(reset_clears_everything)
{
	fake_negotiate(&G, V1, 1, 64, 64);
	resets = 0;
	fake_w32(&G, VIRTIO_MMIO_STATUS, 0);
	ck_assert_int_eq(resets, 1);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_STATUS), 0);
	fake_w32(&G, VIRTIO_MMIO_QUEUE_SEL, 0);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_QUEUE_READY), 0);
	ck_assert(!virtio_device_active(&dev));
}
END_TEST

START_TEST(failed_device_needs_reset_and_interrupts)
{
	fake_negotiate(&G, V1, 1, 64, 64);
	virtio_device_fail(&dev, "test");
	ck_assert(fake_r32(&G, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET);
	ck_assert(fake_r32(&G, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_INT_CONFIG);
	ck_assert(!virtio_device_active(&dev));
	virtio_device_kick(&dev, 0);
	ck_assert_int_eq(notifies, 0);
	fake_w32(&G, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_INT_CONFIG);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}
END_TEST

START_TEST(config_space_bounds)
{
	uint8_t buf[8];
	virtio_mmio_read(&dev, VIRTIO_MMIO_CONFIG_OFFSET + 2, buf, 4);
	ck_assert_int_eq(memcmp(buf, "2345", 4), 0);
	memset(buf, 0x55, sizeof(buf));
	virtio_mmio_read(&dev, VIRTIO_MMIO_CONFIG_OFFSET + 10, buf, 4);  /* crosses the end */
	ck_assert_uint_eq(buf[0], 0);
	virtio_mmio_read(&dev, VIRTIO_MMIO_CONFIG_OFFSET + 0xe00, buf, 8);
	ck_assert_uint_eq(buf[7], 0);
	virtio_mmio_write(&dev, VIRTIO_MMIO_CONFIG_OFFSET, buf, 4);  /* no config_write: ignored */
}
END_TEST

START_TEST(used_notification_raises_interrupt)
{
	fake_negotiate(&G, V1, 1, 64, 64);
	virtq_push(&dev.vqs[0], &G.mem, 0, 0);
	virtio_device_notify_used(&dev, 0);
	ck_assert_uint_eq(dev.irq_count, 1);
	ck_assert_uint_eq(fake_r32(&G, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_INT_USED_RING);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("virtio_mmio");
	TCase *tc = tcase_create("transport");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, identity_registers);
	tcase_add_test(tc, bad_widths_read_zero_and_are_ignored);
	tcase_add_test(tc, features_need_version_1);
	tcase_add_test(tc, unoffered_features_are_refused);
	tcase_add_test(tc, full_bring_up_activates);
	tcase_add_test(tc, queue_outside_ram_is_not_ready);
	tcase_add_test(tc, queue_config_frozen_after_driver_ok);
	tcase_add_test(tc, driver_ok_without_features_ok_is_ignored);
	tcase_add_test(tc, status_bits_cannot_be_cleared);
	tcase_add_test(tc, reset_clears_everything);
	tcase_add_test(tc, failed_device_needs_reset_and_interrupts);
	tcase_add_test(tc, hostile_leftovers_restore);
	tcase_add_test(tc, config_space_bounds);
	tcase_add_test(tc, used_notification_raises_interrupt);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
