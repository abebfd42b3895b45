/* run_code: IPython state, context isolation, rich results, errors; JavaScript and
 * TypeScript through Node. The Python kernel imports IPython (and matplotlib when
 * asked), so these take seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "agent_test.h"

/* Runs code of language lang (NULL: the request names none) in ctx and returns the
 * collected stream. */
static void run_lang(struct ac *c, const char *ctx, const char *lang, const char *code, struct ac_result *r)
{
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "op", "run_code");
	cJSON_AddStringToObject(req, "code", code);
	if (ctx)
		cJSON_AddStringToObject(req, "context", ctx);
	if (lang)
		cJSON_AddStringToObject(req, "language", lang);
	char *s = cJSON_PrintUnformatted(req);
	ck_assert_int_eq(ac_call(c, s, r, T_LONG), 0);
	free(s);
	cJSON_Delete(req);
}

static void run(struct ac *c, const char *ctx, const char *code, struct ac_result *r)
{
	run_lang(c, ctx, NULL, code, r);
}

/* The events of r as a JSON array. */
static cJSON *events(const struct ac_result *r)
{
	cJSON *arr = cJSON_CreateArray();
	char *copy = strdup(r->events.p ? (char *)r->events.p : "");
	for (char *line = strtok(copy, "\n"); line; line = strtok(NULL, "\n"))
		cJSON_AddItemToArray(arr, cJSON_Parse(line));
	free(copy);
	return arr;
}

static cJSON *main_result(cJSON *evs)
{
	cJSON *e;
	cJSON_ArrayForEach(e, evs)
		if (cJSON_IsTrue(cJSON_GetObjectItem(e, "is_main_result")))
			return cJSON_GetObjectItem(e, "data");
	return NULL;
}

START_TEST(code_state_and_isolation)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	run(&c, NULL, "x = 41\nprint('hello')\nx + 1", &r);
	ck_assert_str_eq((char *)r.ch[1].p, "hello\n");
	cJSON *evs = events(&r);
	cJSON *data = main_result(evs);
	ck_assert_ptr_nonnull(data);
	ck_assert_str_eq(cJSON_GetObjectItem(data, "text/plain")->valuestring, "42");
	cJSON *end = end_json(&r);
	ck_assert_str_eq(cJSON_GetObjectItem(end, "status")->valuestring, "ok");
	ck_assert_int_eq(json_int(end, "execution_count"), 1);
	cJSON_Delete(end);
	cJSON_Delete(evs);
	ac_result_free(&r);

	run(&c, "default", "import sys\nprint(x * 2)\nprint('to stderr', file=sys.stderr)", &r);
	ck_assert_str_eq((char *)r.ch[1].p, "82\n");
	ck_assert_str_eq((char *)r.ch[2].p, "to stderr\n");
	ac_result_free(&r);

	call_expect(&c, "{\"op\":\"context_create\",\"id\":\"other\"}", "");
	call_expect(&c, "{\"op\":\"context_create\",\"id\":\"other\"}", "exists");
	run(&c, "other", "x", &r);
	evs = events(&r);
	cJSON *err = cJSON_GetArrayItem(evs, 0);
	ck_assert_str_eq(cJSON_GetObjectItem(err, "type")->valuestring, "error");
	ck_assert_str_eq(cJSON_GetObjectItem(err, "name")->valuestring, "NameError");
	cJSON_Delete(evs);
	ac_result_free(&r);

	ck_assert_int_eq(ac_call(&c, "{\"op\":\"context_list\"}", &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "\"id\":\"other\""));
	ck_assert_ptr_nonnull(strstr(r.end, "\"id\":\"default\""));
	ac_result_free(&r);
	call_expect(&c, "{\"op\":\"run_code\",\"code\":\"1\",\"context\":\"nope\"}", "not_found");
	call_expect(&c, "{\"op\":\"context_restart\",\"id\":\"default\"}", "");
	run(&c, NULL, "'x' in dir()", &r); /* state is gone after a restart */
	ck_assert_ptr_nonnull(strstr((char *)r.events.p, "\"text/plain\": \"False\""));
	ac_result_free(&r);
	call_expect(&c, "{\"op\":\"context_remove\",\"id\":\"other\"}", "");
	call_expect(&c, "{\"op\":\"context_remove\",\"id\":\"other\"}", "not_found");
	agent_down(&c);
}
END_TEST

/* The value of the main result of running code (which must print nothing) in ctx. */
static char *value_of(struct ac *c, const char *code)
{
	struct ac_result r;
	run(c, NULL, code, &r);
	cJSON *evs = events(&r);
	cJSON *data = main_result(evs);
	ck_assert_msg(data != NULL, "no value from %s: %s", code, r.events.p ? (char *)r.events.p : "");
	char *v = strdup(cJSON_GetObjectItem(data, "text/plain")->valuestring);
	cJSON_Delete(evs);
	ac_result_free(&r);
	return v;
}

/* A kernel that lives on in a clone (a snapshot's warm kernel in every fork) draws
 * new numbers after post_fork, not the ones its parent's state would give. */
START_TEST(code_reseeds_after_post_fork)
{
	struct ac c;
	agent_up(&c);
	char *v = value_of(&c, "import random, numpy as np\nrandom.seed(7)\nnp.random.seed(7)\n"
			       "a = [random.random() for _ in range(3)]\nb = np.random.rand(3)\n"
			       "random.seed(7)\nnp.random.seed(7)\n[random.random() for _ in range(2)], "
			       "np.random.rand(2)\nlen(a)");
	ck_assert_str_eq(v, "3");
	free(v);
	/* Without a post_fork the state carries on: the next draws are the third ones. */
	v = value_of(&c, "random.seed(7)\nnp.random.seed(7)\n_ = [random.random() for _ in range(2)], "
		     "np.random.rand(2)\n(random.random() == a[2], np.random.rand() == b[2])");
	ck_assert_str_eq(v, "(True, True)");
	free(v);
	v = value_of(&c, "random.seed(7)\nnp.random.seed(7)\n_ = [random.random() for _ in range(2)], "
		     "np.random.rand(2)\n0");
	free(v);
	struct ac_result r;
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"post_fork\",\"entropy\":\"3q2+78r+ur4=\"}", &r, T_SHORT), 0);
	ac_result_free(&r);
	v = value_of(&c, "(random.random() == a[2], np.random.rand() == b[2])");
	ck_assert_str_eq(v, "(False, False)");
	free(v);
	agent_down(&c);
}
END_TEST

START_TEST(code_exception)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	run(&c, NULL, "def f():\n    raise ValueError('bad value')\nprint('before')\nf()", &r);
	ck_assert_str_eq((char *)r.ch[1].p, "before\n");
	cJSON *evs = events(&r);
	cJSON *err = cJSON_GetArrayItem(evs, 0);
	ck_assert_str_eq(cJSON_GetObjectItem(err, "name")->valuestring, "ValueError");
	ck_assert_str_eq(cJSON_GetObjectItem(err, "value")->valuestring, "bad value");
	ck_assert_ptr_nonnull(strstr(cJSON_GetObjectItem(err, "traceback")->valuestring, "raise ValueError"));
	cJSON *end = end_json(&r);
	ck_assert_str_eq(cJSON_GetObjectItem(end, "status")->valuestring, "error");
	cJSON_Delete(end);
	cJSON_Delete(evs);
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

START_TEST(code_rich_results)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	run(&c, NULL,
	    "import matplotlib.pyplot as plt\n"
	    "from IPython.display import display, HTML, JSON\n"
	    "plt.plot([1, 3, 2])\n"
	    "plt.title('t')\n"
	    "display(HTML('<b>bold</b>'))\n"
	    "{'a': 1}", &r);
	cJSON *evs = events(&r), *e;
	bool png = false, html = false;
	cJSON_ArrayForEach(e, evs) {
		cJSON *data = cJSON_GetObjectItem(e, "data");
		cJSON *p = cJSON_GetObjectItem(data, "image/png");
		if (cJSON_IsString(p)) {
			/* base64 of the PNG signature \x89PNG\r\n\x1a\n */
			ck_assert_int_eq(strncmp(p->valuestring, "iVBORw0KGgo", 11), 0);
			ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(e, "is_main_result")));
			png = true;
		}
		cJSON *h = cJSON_GetObjectItem(data, "text/html");
		if (cJSON_IsString(h) && !strcmp(h->valuestring, "<b>bold</b>"))
			html = true;
	}
	ck_assert(png && html);
	ck_assert_str_eq(cJSON_GetObjectItem(main_result(evs), "text/plain")->valuestring, "{'a': 1}");
	cJSON_Delete(evs);
	ac_result_free(&r);
	/* the figure was closed: a cell without plotting brings no image */
	run(&c, NULL, "plt.figure(); plt.plot([1]); plt.show(); print('after')", &r);
	ck_assert_ptr_nonnull(strstr((char *)r.events.p, "image/png"));
	ck_assert_str_eq((char *)r.ch[1].p, "after\n");
	ac_result_free(&r);
	run(&c, NULL, "1", &r);
	ck_assert_ptr_null(strstr((char *)r.events.p, "image/png"));
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

START_TEST(code_timeout_and_busy)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	run(&c, NULL, "n = 1", &r); /* start the kernel */
	ac_result_free(&r);
	uint32_t id = ac_new_id(&c);
	ac_open(&c, id, "{\"op\":\"run_code\",\"code\":\"import time\\ntime.sleep(20)\",\"timeout_ms\":500}");
	call_expect(&c, "{\"op\":\"run_code\",\"code\":\"2\"}", "busy");
	ck_assert_int_eq(ac_collect(&c, id, &r, T_SHORT), 0);
	expect_end(&r, "timeout", "run_code past its timeout");
	/* interrupted, not killed: the state survives */
	run(&c, NULL, "n + 1", &r);
	ck_assert_ptr_nonnull(strstr((char *)r.events.p, "\"text/plain\": \"2\""));
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

START_TEST(code_stuck_kernel_is_replaced)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	run(&c, NULL, "state = 1", &r);
	ac_result_free(&r);
	call_expect(&c, "{\"op\":\"run_code\",\"timeout_ms\":300,\"code\":\"import signal, time\\n"
		    "signal.signal(signal.SIGINT, signal.SIG_IGN)\\ntime.sleep(30)\"}", "timeout");
	/* The cell ignores the interrupt: after the grace period the kernel is
	 * killed, and the next run gets a fresh one (or is told it died). */
	usleep(3500 * 1000);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"context_list\"}", &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "\"running\":false"));
	ac_result_free(&r);
	run(&c, NULL, "'state' in dir()", &r);
	ck_assert_ptr_nonnull(strstr((char *)r.events.p, "\"text/plain\": \"False\""));
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

/* The text/plain of the main result of code in JavaScript's default context ("" when
 * there is none); checks the cell's status. */
static char *js_value(struct ac *c, const char *code, const char *status)
{
	struct ac_result r;
	run_lang(c, NULL, "javascript", code, &r);
	cJSON *end = end_json(&r);
	ck_assert_msg(!strcmp(cJSON_GetObjectItem(end, "status")->valuestring, status), "%s: %s", code, r.end);
	cJSON_Delete(end);
	cJSON *evs = events(&r);
	cJSON *data = main_result(evs);
	char *v = strdup(data ? cJSON_GetObjectItem(data, "text/plain")->valuestring : "");
	cJSON_Delete(evs);
	ac_result_free(&r);
	return v;
}

#define assert_js(c, code, want)                   \
	do {                                       \
		char *v_ = js_value(c, code, "ok"); \
		ck_assert_str_eq(v_, want);        \
		free(v_);                          \
	} while (0)

START_TEST(code_javascript)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	run_lang(&c, NULL, "js", "console.log('Hello, World!')", &r);
	ck_assert_str_eq((char *)r.ch[1].p, "Hello, World!\n");
	ck_assert_ptr_null(r.events.p); /* undefined is no result */
	ck_assert_int_eq(end_int(&r, "execution_count"), 1);
	ac_result_free(&r);
	/* Declarations outlive their cell, and a cell can run again. */
	assert_js(&c, "const x = 41; x + 1", "42");
	assert_js(&c, "const x = 41; x + 1", "42");
	assert_js(&c, "class A { f() { return x } }; new A().f()", "41");
	/* What a plain script refuses: top-level await (its declarations stay too),
	 * static imports resolved as Node would, import() */
	assert_js(&c, "\n    await Promise.resolve('Hello World!')\n    ", "'Hello World!'");
	assert_js(&c, "let { a, b: [y] } = await Promise.resolve({ a: 1, b: [2] }); a + y", "3");
	assert_js(&c, "a * 10 + y", "12");
	run_lang(&c, NULL, "javascript", "import { readFileSync } from 'fs'\nimport * as p from 'path'\n"
		 "console.log(typeof readFileSync, p.join('a', 'b'))", &r);
	ck_assert_str_eq((char *)r.ch[1].p, "function a/b\n");
	ac_result_free(&r);
	assert_js(&c, "(await import('os')).platform()", "'linux'");
	assert_js(&c, "require('path').sep", "'/'");
	/* Errors: the name and message, a traceback of the user's frames */
	run_lang(&c, NULL, "javascript", "function f() { throw new TypeError('bad') }\nf()", &r);
	cJSON *evs = events(&r);
	cJSON *err = cJSON_GetArrayItem(evs, 0);
	ck_assert_str_eq(cJSON_GetObjectItem(err, "name")->valuestring, "TypeError");
	ck_assert_str_eq(cJSON_GetObjectItem(err, "value")->valuestring, "bad");
	const char *tb = cJSON_GetObjectItem(err, "traceback")->valuestring;
	ck_assert_msg(strstr(tb, "at f (cell-") && !strstr(tb, "mitos_kernel"), "traceback: %s", tb);
	cJSON_Delete(evs);
	ac_result_free(&r);
	char *v = js_value(&c, "let z = (", "error");
	free(v);
	/* env for one execution only */
	run_lang(&c, NULL, "javascript", "", &r);
	ac_result_free(&r);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"run_code\",\"language\":\"javascript\",\"code\":\"process.env.FOO\","
			 "\"env\":{\"FOO\":\"bar\"}}", &r, T_LONG), 0);
	ck_assert_ptr_nonnull(strstr((char *)r.events.p, "'bar'"));
	ac_result_free(&r);
	assert_js(&c, "process.env.FOO || 'default'", "'default'");

	/* Contexts say their language; a context runs only its own. */
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"context_list\"}", &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "{\"id\":\"default-javascript\",\"language\":\"javascript\""));
	ac_result_free(&r);
	call_expect(&c, "{\"op\":\"run_code\",\"code\":\"1\",\"context\":\"default-javascript\",\"language\":\"python\"}",
		    "invalid_argument");
	call_expect(&c, "{\"op\":\"run_code\",\"code\":\"1\",\"language\":\"cobol\"}", "unsupported");
	call_expect(&c, "{\"op\":\"context_create\",\"language\":\"cobol\"}", "unsupported");

	/* TypeScript: types stripped, then as JavaScript */
	call_expect(&c, "{\"op\":\"context_create\",\"id\":\"ts\",\"language\":\"ts\"}", "");
	run_lang(&c, "ts", NULL, "interface P { x: number }\nconst m: string = 'Hello'; const pt: P = { x: 2 };\n"
		 "console.log(m); pt.x * 21", &r);
	ck_assert_str_eq((char *)r.ch[1].p, "Hello\n");
	ck_assert_ptr_nonnull(strstr((char *)r.events.p, "\"text/plain\":\"42\""));
	ac_result_free(&r);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"context_list\"}", &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "{\"id\":\"ts\",\"language\":\"typescript\""));
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

/* An interrupt (here a timeout's) stops a JavaScript cell computing or waiting; the
 * kernel and its state live on. */
START_TEST(code_javascript_interrupt)
{
	struct ac c;
	struct ac_result r;
	agent_up(&c);
	assert_js(&c, "let n = 1", "");
	call_expect(&c, "{\"op\":\"run_code\",\"language\":\"javascript\",\"code\":\"while (true) {}\",\"timeout_ms\":500}",
		    "timeout");
	assert_js(&c, "n + 1", "2");
	call_expect(&c, "{\"op\":\"run_code\",\"language\":\"javascript\",\"code\":\"await new Promise(() => {})\","
		    "\"timeout_ms\":500}", "timeout");
	assert_js(&c, "n + 2", "3");
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"context_list\"}", &r, T_SHORT), 0);
	ck_assert_ptr_null(strstr(r.end, "\"running\":false"));
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

/* Without Node in the image JavaScript says so and Python goes on. */
START_TEST(code_javascript_without_node)
{
	struct ac c;
	struct ac_result r;
	const char *args[] = { "--node", "/nonexistent/node", NULL };
	ck_assert_int_eq(ac_start(&c, args), 0);
	ck_assert_int_eq(ac_call(&c, "{\"op\":\"run_code\",\"language\":\"javascript\",\"code\":\"1\"}", &r, T_SHORT), 0);
	ck_assert_ptr_nonnull(strstr(r.end, "needs Node.js in the sandbox's image: /nonexistent/node"));
	expect_end(&r, "unsupported", "javascript without node");
	run(&c, NULL, "1 + 1", &r);
	ck_assert_ptr_nonnull(strstr((char *)r.events.p, "\"text/plain\": \"2\""));
	ac_result_free(&r);
	agent_down(&c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("agent_code");
	TCase *tc = tcase_create("code");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, code_state_and_isolation);
	tcase_add_test(tc, code_exception);
	tcase_add_test(tc, code_reseeds_after_post_fork);
	tcase_add_test(tc, code_rich_results);
	tcase_add_test(tc, code_timeout_and_busy);
	tcase_add_test(tc, code_stuck_kernel_is_replaced);
	tcase_add_test(tc, code_javascript);
	tcase_add_test(tc, code_javascript_interrupt);
	tcase_add_test(tc, code_javascript_without_node);
	suite_add_tcase(s, tc);
	return run_suite(s);
}
