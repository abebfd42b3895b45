/* exec, stdin, signals, timeouts, background processes and pty over one connection. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "agent_test.h"

START_TEST(exec_output_and_exit_code)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"exec\",\"cmd\":\"echo out; echo err >&2; exit 7\"}", &r, T_SHORT), 0);
	ck_assert_str_eq((char *)r.ch[1].p, "out\n");
	ck_assert_str_eq((char *)r.ch[2].p, "err\n");
	ck_assert_ptr_nonnull(strstr((char *)r.events.p, "\"pid\":"));
	cJSON *j = end_json(&r);
	ck_assert_int_eq(json_int(j, "exit_code"), 7);
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(j, "exited")));
	cJSON_Delete(j);
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

START_TEST(exec_argv_env_cwd)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"exec\",\"argv\":[\"/bin/sh\",\"-c\",\"echo $FOO; pwd\"],"
				     "\"env\":{\"FOO\":\"bar baz\"},\"cwd\":\"/tmp\"}", &r, T_SHORT), 0);
	ck_assert_str_eq((char *)r.ch[1].p, "bar baz\n/tmp\n");
	ac_result_free(&r);
	call_expect(&c, "{\"op\":\"exec\",\"argv\":[\"true\"],\"cwd\":\"/nonexistent-dir\"}", "invalid_argument");
	/* default_cwd (the Mitos contract's /workspace) where it is a directory, else as without. */
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"exec\",\"argv\":[\"pwd\"],\"default_cwd\":\"/tmp\"}", &r, T_SHORT), 0);
	ck_assert_str_eq((char *)r.ch[1].p, "/tmp\n");
	ac_result_free(&r);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"exec\",\"argv\":[\"true\"],\"default_cwd\":\"/nonexistent-dir\"}", &r,
				 T_SHORT), 0);
	ck_assert_msg(!strstr(r.end, "\"error\""), "%s", r.end);
	ac_result_free(&r);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"exec\",\"argv\":[\"pwd\"],\"cwd\":\"/\",\"default_cwd\":\"/tmp\"}", &r,
				 T_SHORT), 0);
	ck_assert_str_eq((char *)r.ch[1].p, "/\n");
	ac_result_free(&r);
	call_expect(&c, "{\"op\":\"exec\",\"argv\":[\"/no/such/binary\"]}", "not_found");
	call_expect(&c, "{\"op\":\"exec\"}", "invalid_argument");
	call_expect(&c, "{\"op\":\"exec\",\"argv\":[\"true\"],\"user\":\"no-such-user-xyz\"}", "invalid_argument");
	agent_down(&c);
}
END_TEST

START_TEST(exec_as_user)
{
	if (geteuid() != 0)
		return; /* switching users needs root */
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"exec\",\"argv\":[\"id\",\"-u\"],\"user\":\"nobody\"}", &r, T_SHORT), 0);
	ck_assert_str_eq((char *)r.ch[1].p, "65534\n");
	ac_result_free(&r);
	/* A default user (E2B's "user") where the system has it; the agent's own where it
	 * has not; a named user wins over it. Files and code follow the same rule. */
	static const char *const cases[][2] = {
		{ "\"default_user\":\"nobody\"", "65534\n" },
		{ "\"default_user\":\"no-such-user-xyz\"", "0\n" },
		{ "\"user\":\"root\",\"default_user\":\"nobody\"", "0\n" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char req[256];
		snprintf(req, sizeof(req), "{\"op\":\"exec\",\"argv\":[\"id\",\"-u\"],%s}", cases[i][0]);
		ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
		ck_assert_msg(r.ch[1].p && !strcmp((char *)r.ch[1].p, cases[i][1]), "%s: %s", cases[i][0],
			      r.ch[1].p ? (char *)r.ch[1].p : r.end);
		ac_result_free(&r);
	}
	agent_down(&c);
}
END_TEST

START_TEST(exec_killed_by_signal)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"exec\",\"cmd\":\"kill -TERM $$\"}", &r, T_SHORT), 0);
	cJSON *j = end_json(&r);
	ck_assert_int_eq(json_int(j, "signal"), SIGTERM);
	ck_assert_int_eq(json_int(j, "exit_code"), -1);
	cJSON_Delete(j);
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

START_TEST(exec_stdin_streamed)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	uint32_t id = ac_new_id(&c);
	ac_open(&c, id, "{\"op\":\"exec\",\"argv\":[\"wc\",\"-c\"],\"stdin\":true}");
	static char big[1 << 20];
	memset(big, 'x', sizeof(big));
	/* More than the window: only works if credit flows back as wc reads. */
	ck_assert_int_eq(ac_write_data(&c, id, big, sizeof(big), false, T_SHORT), 0);
	ck_assert_int_eq(ac_write_data(&c, id, "abc", 3, true, T_SHORT), 0);
	ck_assert_int_eq(ac_collect(&c, id, &r, T_SHORT), 0);
	ck_assert_int_eq(atoi((char *)r.ch[1].p), (1 << 20) + 3);
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

START_TEST(exec_twenty_concurrent)
{
	struct ac c;
	agent_up(&c);
	uint32_t ids[20];
	for (int i = 0; i < 20; i++) {
		char req[160];
		ids[i] = ac_new_id(&c);
		snprintf(req, sizeof(req),
			 "{\"op\":\"exec\",\"cmd\":\"sleep 0.%d; seq 1 %d | tail -n 1; exit %d\"}", i % 5, 1000 + i, i);
		ac_open(&c, ids[i], req);
	}
	for (int i = 19; i >= 0; i--) {
		struct ac_result r;
		char want[16];
		ck_assert_int_eq(ac_collect(&c, ids[i], &r, T_SHORT), 0);
		snprintf(want, sizeof(want), "%d\n", 1000 + i);
		ck_assert_str_eq((char *)r.ch[1].p, want);
		ck_assert_int_eq(end_int(&r, "exit_code"), i);
		ac_result_free(&r);
	}
	agent_down(&c);
}
END_TEST

START_TEST(exec_timeout)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"exec\",\"cmd\":\"echo start; sleep 30\",\"timeout_ms\":300}", &r, T_SHORT), 0);
	ck_assert_str_eq((char *)r.ch[1].p, "start\n");
	cJSON *j = end_json(&r);
	ck_assert_str_eq(end_error_code(j), "timeout");
	ck_assert_int_eq(json_int(j, "signal"), SIGKILL);
	cJSON_Delete(j);
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

static int started_pid(struct ac *c, uint32_t id)
{
	struct ac_frame *f;
	ck_assert_int_eq(ac_recv(c, id, &f, T_SHORT), 0);
	ck_assert_int_eq(f->h.type, PROTO_EVENT);
	cJSON *j = cJSON_Parse((char *)f->p);
	int pid = json_int(j, "pid");
	cJSON_Delete(j);
	ac_frame_free(f);
	return pid;
}

START_TEST(exec_signal_and_event_kill)
{
	struct ac c;
	struct ac_result r;
	char req[128];
	agent_up(&c);
	uint32_t id = ac_new_id(&c);
	ac_open(&c, id, "{\"op\":\"exec\",\"argv\":[\"sleep\",\"30\"]}");
	int pid = started_pid(&c, id);
	snprintf(req, sizeof(req), "{\"op\":\"signal\",\"pid\":%d,\"signal\":\"SIGKILL\"}", pid);
	call_expect(&c, req, "");
	ck_assert_int_eq(ac_collect(&c, id, &r, T_SHORT), 0);
	ck_assert_int_eq(end_int(&r, "signal"), SIGKILL);
	ac_result_free(&r);
	/* the process is gone: E2B's kill() reports false on not_found */
	call_expect(&c, req, "not_found");

	id = ac_new_id(&c);
	ac_open(&c, id, "{\"op\":\"exec\",\"argv\":[\"sleep\",\"30\"]}");
	started_pid(&c, id);
	const char *ev = "{\"signal\":15}";
	ac_send(&c, PROTO_EVENT, 0, 0, id, ev, strlen(ev));
	ck_assert_int_eq(ac_collect(&c, id, &r, T_SHORT), 0);
	ck_assert_int_eq(end_int(&r, "signal"), SIGTERM);
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

START_TEST(exec_background_reattach)
{
	struct ac c;
	struct ac_result r;
	char req[160];
	agent_up(&c);
	uint32_t id = ac_new_id(&c);
	ac_open(&c, id, "{\"op\":\"exec\",\"cmd\":\"sleep 0.2; echo early; sleep 0.2; echo late; echo warn >&2\","
			"\"background\":true,\"tag\":\"job\"}");
	int pid = started_pid(&c, id);
	/* Leave the stream before it prints: the process must keep running and
	 * keep its output for a later attach. */
	ac_send(&c, PROTO_CANCEL, 0, 0, id, NULL, 0);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"processes\"}", &r, T_SHORT), 0);
	snprintf(req, sizeof(req), "\"pid\":%d,\"tag\":\"job\"", pid);
	ck_assert_msg(strstr(r.end, req), "process list: %s", r.end);
	ac_result_free(&r);
	usleep(800 * 1000); /* it has finished by now, with nobody attached */
	snprintf(req, sizeof(req), "{\"op\":\"attach\",\"pid\":%d}", pid);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_str_eq((char *)r.ch[1].p, "early\nlate\n");
	ck_assert_str_eq((char *)r.ch[2].p, "warn\n");
	ck_assert_int_eq(end_int(&r, "exit_code"), 0);
	ac_result_free(&r);
	/* collected: it is gone now */
	call_expect(&c, req, "not_found");
	agent_down(&c);
}
END_TEST

START_TEST(exec_background_stdin_op)
{
	struct ac c;
	struct ac_result r;
	char req[160];
	agent_up(&c);
	uint32_t id = ac_new_id(&c);
	ac_open(&c, id, "{\"op\":\"exec\",\"argv\":[\"cat\"],\"stdin\":true,\"background\":true}");
	int pid = started_pid(&c, id);
	ac_send(&c, PROTO_CANCEL, 0, 0, id, NULL, 0);
	snprintf(req, sizeof(req), "{\"op\":\"stdin\",\"pid\":%d,\"data\":\"aGVsbG8K\",\"close\":true}", pid);
	call_expect(&c, req, "");
	snprintf(req, sizeof(req), "{\"op\":\"attach\",\"pid\":%d}", pid);
	ck_assert_int_eq(ac_call(&c, req, &r, T_SHORT), 0);
	ck_assert_str_eq((char *)r.ch[1].p, "hello\n");
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

START_TEST(exec_foreground_killed_on_cancel)
{
	struct ac c;
	struct ac_result r;
	char req[160];
	agent_up(&c);
	uint32_t id = ac_new_id(&c);
	ac_open(&c, id, "{\"op\":\"exec\",\"argv\":[\"sleep\",\"30\"]}");
	int pid = started_pid(&c, id);
	ac_send(&c, PROTO_CANCEL, 0, 0, id, NULL, 0);
	usleep(200 * 1000);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"processes\"}", &r, T_SHORT), 0);
	snprintf(req, sizeof(req), "\"pid\":%d", pid);
	ck_assert_ptr_null(strstr(r.end, req));
	ac_result_free(&r);
	ck_assert_int_ne(kill(pid, 0), 0);
	agent_down(&c);
}
END_TEST

START_TEST(exec_slow_reader_bounded)
{
	struct ac c;
	agent_up(&c);
	c.auto_window = false;
	uint32_t id = ac_new_id(&c);
	ac_open(&c, id, "{\"op\":\"exec\",\"cmd\":\"head -c 4000000 /dev/zero\"}");
	size_t got = 0;
	struct ac_frame *f;
	/* Without WINDOW frames the agent must stop at the initial window. */
	while (ac_recv(&c, id, &f, 500) == 0) {
		if (f->h.type == PROTO_DATA)
			got += f->h.length;
		ck_assert_int_ne(f->h.type, PROTO_END);
		ac_frame_free(f);
	}
	ck_assert_uint_eq(got, PROTO_INITIAL_WINDOW);
	/* Another stream on the same connection is not held up. */
	call_expect(&c, "{\"op\":\"health\"}", "");
	c.auto_window = true;
	ac_window(&c, id, (uint32_t)got);
	struct ac_result r;
	ck_assert_int_eq(ac_collect(&c, id, &r, T_SHORT), 0);
	ck_assert_uint_eq(got + r.ch[1].len, 4000000);
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

START_TEST(pty_echo_and_resize)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	uint32_t id = ac_new_id(&c);
	ac_open(&c, id, "{\"op\":\"exec\",\"argv\":[\"/bin/sh\"],\"pty\":{\"rows\":30,\"cols\":100},"
			"\"env\":{\"PS1\":\"$ \"}}");
	int pid = started_pid(&c, id);
	const char *in = "stty size; echo tty-$((6*7))\n";
	ck_assert_int_eq(ac_write_data(&c, id, in, strlen(in), false, T_SHORT), 0);
	char req[128];
	snprintf(req, sizeof(req), "{\"op\":\"resize\",\"pid\":%d,\"rows\":40,\"cols\":120}", pid);
	struct ac_buf out = { 0 };
	struct ac_frame *f;
	while (!out.p || !strstr((char *)out.p, "tty-42")) {
		ck_assert_int_eq(ac_recv(&c, id, &f, T_SHORT), 0);
		if (f->h.type == PROTO_DATA)
			ac_buf_put(&out, f->p, f->h.length);
		ac_frame_free(f);
	}
	ck_assert_ptr_nonnull(strstr((char *)out.p, "30 100"));
	uint32_t rid = ac_new_id(&c);
	ac_open(&c, rid, req);
	ck_assert_int_eq(ac_collect(&c, rid, &r, T_SHORT), 0);
	ck_assert_str_eq(r.end, "{}");
	ac_result_free(&r);
	const char *in2 = "stty size; exit 3\n";
	ck_assert_int_eq(ac_write_data(&c, id, in2, strlen(in2), false, T_SHORT), 0);
	ck_assert_int_eq(ac_collect(&c, id, &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr((char *)r.ch[1].p, "40 120"));
	ck_assert_int_eq(end_int(&r, "exit_code"), 3);
	ac_result_free(&r);
	free(out.p);
	agent_down(&c);
}
END_TEST

START_TEST(pty_default_shell)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	uint32_t id = ac_new_id(&c);
	ac_open(&c, id, "{\"op\":\"pty\"}");
	const char *in = "echo sum=$((2+3))\nexit 4\n";
	ck_assert_int_eq(ac_write_data(&c, id, in, strlen(in), false, T_SHORT), 0);
	ck_assert_int_eq(ac_collect(&c, id, &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr((char *)r.ch[1].p, "sum=5"));
	ck_assert_int_eq(end_int(&r, "exit_code"), 4);
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("agent_exec");
	TCase *tc = tcase_create("exec");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, exec_output_and_exit_code);
	tcase_add_test(tc, exec_argv_env_cwd);
	tcase_add_test(tc, exec_as_user);
	tcase_add_test(tc, exec_killed_by_signal);
	tcase_add_test(tc, exec_stdin_streamed);
	tcase_add_test(tc, exec_twenty_concurrent);
	tcase_add_test(tc, exec_timeout);
	tcase_add_test(tc, exec_signal_and_event_kill);
	tcase_add_test(tc, exec_background_reattach);
	tcase_add_test(tc, exec_background_stdin_op);
	tcase_add_test(tc, exec_foreground_killed_on_cancel);
	tcase_add_test(tc, exec_slow_reader_bounded);
	tcase_add_test(tc, pty_echo_and_resize);
	tcase_add_test(tc, pty_default_shell);
	suite_add_tcase(s, tc);
	return run_suite(s);
}
