/* Shared helpers for the agent Check suites. */
#ifndef MITOS_TESTS_AGENT_TEST_H
#define MITOS_TESTS_AGENT_TEST_H

#include <check.h>
#include <cjson/cJSON.h>
#include <string.h>

#include "agent_client.h"

#define T_SHORT 10000
#define T_LONG 60000

static inline struct ac *agent_up(struct ac *c)
{
	ck_assert_int_eq(ac_start(c, NULL), 0);
	return c;
}

/* Stops the agent; it must exit cleanly (no sanitizer report, no crash). */
#define agent_down(c) ck_assert_msg(ac_stop(c) == 0, "agent did not exit cleanly")

/* END payload of r parsed (freed by the caller). */
static inline cJSON *end_json(const struct ac_result *r)
{
	ck_assert_ptr_nonnull(r->end);
	cJSON *j = cJSON_Parse(r->end);
	ck_assert_msg(j != NULL, "END is not JSON: %s", r->end);
	return j;
}

/* The error code in an END payload, or "" when it carries no error. */
static inline const char *end_error_code(cJSON *j)
{
	cJSON *e = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "code");
	return cJSON_IsString(e) ? e->valuestring : "";
}

static inline int json_int(cJSON *j, const char *key)
{
	cJSON *v = cJSON_GetObjectItem(j, key);
	ck_assert_msg(cJSON_IsNumber(v), "missing number %s", key);
	return v->valueint;
}

/* A number in the END payload of r. */
static inline int end_int(const struct ac_result *r, const char *key)
{
	cJSON *j = end_json(r);
	int v = json_int(j, key);
	cJSON_Delete(j);
	return v;
}

/* Checks the END error code of r ("" for success), then frees r; what names the
 * call in the failure message. */
static inline void expect_end(struct ac_result *r, const char *code, const char *what)
{
	cJSON *j = end_json(r);
	ck_assert_msg(!strcmp(end_error_code(j), code), "%s: expected '%s', got %s", what, code, r->end);
	cJSON_Delete(j);
	ac_result_free(r);
}

/* Runs one call and checks the END error code ("" for success). */
static inline void call_expect(struct ac *c, const char *json, const char *code)
{
	struct ac_result r;
	ck_assert_int_eq(ac_call(c, json, &r, T_SHORT), 0);
	expect_end(&r, code, json);
}

/* The exit status of a suite's main(). */
static inline int run_suite(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

#endif
