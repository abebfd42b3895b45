/* The control protocol's codec (vmm/control_proto.c): what serve encodes, the VMM
 * decodes to the same request, and a malformed request gets the error code a client can
 * act on. */
#include <check.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <string.h>

#include "vmm/control_proto.h"

static cJSON *parse(const char *text)
{
	cJSON *o = cJSON_Parse(text);
	ck_assert_ptr_nonnull(o);
	return o;
}

/* Decodes text: the return value, and the code and message through the pointers. */
static int decode(const char *text, struct ctl_request *r, const char **code, struct mitos_err *e)
{
	cJSON *o = parse(text);
	int rc = ctl_request_decode(o, r, code, e);
	cJSON_Delete(o);
	return rc;
}

START_TEST(test_round_trip)
{
	struct ctl_request in[] = {
		{ .cmd = CTL_STATUS }, { .cmd = CTL_PAUSE }, { .cmd = CTL_RESUME }, { .cmd = CTL_STOP },
		{ .cmd = CTL_SNAPSHOT, .dir = "/s/layer" },
		{ .cmd = CTL_LINK, .up = true }, { .cmd = CTL_LINK, .up = false },
		{ .cmd = CTL_RESTORE, .snapshot = "/t/snapshot", .vsock = "/sb/vsock", .tap = "tap7", .ndisks = 2,
		  .disks = { { 0, "/img/root", true, false, 0 }, { 3, "/img/data", false, false, 0 } } },
		/* Descriptors are numbered in the order of the disks that come as one. */
		{ .cmd = CTL_RESTORE, .snapshot = "/t/snapshot", .ndisks = 3,
		  .disks = { { 2, "/img/a", true, true, 0 }, { 0, "/img/b", true, false, 0 },
			     { 1, "/img/c", false, true, 1 } } },
		{ .cmd = CTL_RESTORE, .snapshot = "/t/snapshot" },
		/* The TAP as a descriptor, after the disk's (serve's kvm restore with --egress). */
		{ .cmd = CTL_RESTORE, .snapshot = "/t/snapshot", .vsock = "/sb/vsock", .tap_by_fd = true, .tap_fd = 1,
		  .ndisks = 1, .disks = { { 0, "/img/root", true, true, 0 } } },
	};
	for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
		cJSON *o = ctl_request_encode(&in[i]);
		ck_assert_ptr_nonnull(o);
		struct ctl_request out;
		const char *code;
		struct mitos_err e = { 0 };
		ck_assert_int_eq(ctl_request_decode(o, &out, &code, &e), 0);
		ck_assert_int_eq(out.cmd, in[i].cmd);
		ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(o, "cmd")), ctl_cmd_name(in[i].cmd));
		ck_assert_int_eq(out.up, in[i].up);
		ck_assert_int_eq(out.ndisks, in[i].ndisks);
		ck_assert_pstr_eq(out.dir, in[i].dir);
		ck_assert_pstr_eq(out.snapshot, in[i].snapshot);
		ck_assert_pstr_eq(out.vsock, in[i].vsock);
		ck_assert_pstr_eq(out.tap, in[i].tap);
		ck_assert_int_eq(out.tap_by_fd, in[i].tap_by_fd);
		ck_assert_uint_eq(out.tap_fd, in[i].tap_fd);
		for (unsigned d = 0; d < out.ndisks; d++) {
			ck_assert_uint_eq(out.disks[d].index, in[i].disks[d].index);
			ck_assert_str_eq(out.disks[d].path, in[i].disks[d].path);
			ck_assert_int_eq(out.disks[d].read_only, in[i].disks[d].read_only);
			ck_assert_int_eq(out.disks[d].by_fd, in[i].disks[d].by_fd);
			ck_assert_uint_eq(out.disks[d].fd, in[i].disks[d].fd);
		}
		cJSON_Delete(o);
	}
}
END_TEST

START_TEST(test_encode_refuses_incomplete)
{
	ck_assert_ptr_null(ctl_request_encode(&(struct ctl_request){ .cmd = CTL_SNAPSHOT }));
	ck_assert_ptr_null(ctl_request_encode(&(struct ctl_request){ .cmd = CTL_RESTORE }));
	ck_assert_ptr_null(ctl_request_encode(&(struct ctl_request){ .cmd = CTL_CMDS }));
	ck_assert_ptr_null(ctl_request_encode(&(struct ctl_request){ .cmd = CTL_RESTORE, .snapshot = "/s",
								 .ndisks = CTL_MAX_DISKS + 1 }));
	ck_assert_ptr_null(ctl_request_encode(&(struct ctl_request){ .cmd = CTL_RESTORE, .snapshot = "/s",
								 .ndisks = 1 }));
}
END_TEST

START_TEST(test_bad_requests)
{
	static const struct {
		const char *text, *code, *says;
	} cases[] = {
		{ "{}", "invalid_request", "missing \"cmd\"" },
		{ "[\"status\"]", "invalid_request", "missing \"cmd\"" },
		{ "{\"cmd\":7}", "invalid_request", "missing \"cmd\"" },
		{ "{\"cmd\":\"reboot\"}", "unknown_command", "unknown command \"reboot\"" },
		{ "{\"cmd\":\"snapshot\"}", "invalid_request", "needs \"dir\"" },
		{ "{\"cmd\":\"snapshot\",\"dir\":\"\"}", "invalid_request", "needs \"dir\"" },
		{ "{\"cmd\":\"link\"}", "invalid_request", "\"up\"" },
		{ "{\"cmd\":\"link\",\"up\":1}", "invalid_request", "\"up\"" },
		{ "{\"cmd\":\"restore\"}", "invalid_request", "needs \"snapshot\"" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"vsock\":5}", "invalid_request", "needs \"snapshot\"" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"disks\":{}}", "invalid_request", "array" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"disks\":[{\"index\":8,\"path\":\"/d\"}]}",
		  "invalid_request", "\"index\" (0..7)" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"disks\":[{\"index\":-1,\"path\":\"/d\"}]}",
		  "invalid_request", "\"index\"" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"disks\":[{\"index\":0.5,\"path\":\"/d\"}]}",
		  "invalid_request", "\"index\"" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"disks\":[{\"index\":0}]}", "invalid_request", "\"path\"" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"disks\":[{\"index\":0,\"path\":\"/d\",\"read_only\":\"y\"}]}",
		  "invalid_request", "\"read_only\"" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"disks\":[{\"index\":1,\"path\":\"/a\"},{\"index\":1,\"path\":\"/b\"}]}",
		  "invalid_request", "disk 1 is given twice" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"disks\":[1,2,3,4,5,6,7,8,9]}", "invalid_request",
		  "at most 8" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"disks\":[{\"index\":0,\"path\":\"/d\",\"fd\":8}]}",
		  "invalid_request", "\"fd\"" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"disks\":[{\"index\":0,\"path\":\"/d\",\"fd\":true}]}",
		  "invalid_request", "\"fd\"" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"tap_fd\":8}", "invalid_request", "\"tap_fd\"" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"tap_fd\":-1}", "invalid_request", "\"tap_fd\"" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"tap_fd\":\"0\"}", "invalid_request", "\"tap_fd\"" },
		{ "{\"cmd\":\"restore\",\"snapshot\":\"/s\",\"tap\":\"t0\",\"tap_fd\":0}", "invalid_request",
		  "instead of \"tap\"" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct ctl_request r;
		const char *code = NULL;
		struct mitos_err e = { 0 };
		ck_assert_msg(decode(cases[i].text, &r, &code, &e) == -EINVAL, "%s", cases[i].text);
		ck_assert_msg(!strcmp(code, cases[i].code), "%s: code %s", cases[i].text, code);
		ck_assert_msg(strstr(e.msg, cases[i].says) && e.code == -EINVAL, "%s: says %s", cases[i].text, e.msg);
	}
}
END_TEST

START_TEST(test_reply_verdict)
{
	struct mitos_err err = { 0 };
	cJSON *o = parse("{\"ok\":true,\"ms\":3}");
	ck_assert(ctl_reply_ok(o, &err));
	cJSON_Delete(o);
	o = parse("{\"ok\":false,\"error\":{\"code\":\"restore_failed\",\"message\":\"no such snapshot\"}}");
	ck_assert(!ctl_reply_ok(o, &err));
	ck_assert_str_eq(err.msg, "no such snapshot");
	ck_assert_int_eq(err.code, -EIO);
	cJSON_Delete(o);
	o = parse("{\"ok\":1}");
	ck_assert(!ctl_reply_ok(o, &err));
	ck_assert(strstr(err.msg, "neither success nor an error"));
	cJSON_Delete(o);
	ck_assert(!ctl_reply_ok(NULL, &err));
	/* A VMM's words reach serve's log printable only: no forged line, no escapes. */
	o = parse("{\"ok\":false,\"error\":{\"message\":\"x\\nmitos-vmm serve: forged \\u001b[31m\"}}");
	ck_assert(!ctl_reply_ok(o, &err));
	ck_assert_str_eq(err.msg, "x?mitos-vmm serve: forged ?[31m");
	cJSON_Delete(o);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("control_proto");
	TCase *tc = tcase_create("codec");
	tcase_add_test(tc, test_round_trip);
	tcase_add_test(tc, test_encode_refuses_incomplete);
	tcase_add_test(tc, test_bad_requests);
	tcase_add_test(tc, test_reply_verdict);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
