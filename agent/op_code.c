/* run_code and code contexts: stateful Python, JavaScript or TypeScript, one kernel
 * process per context: mitos_kernel.py, or mitos_kernel.js beside it (see their
 * docstrings for the pipe protocol). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/fs_ctx.h"
#include "agent/ops.h"
#include "agent/relay.h"
#include "agent/spawn.h"

#define MAX_CONTEXTS 32
#define KERNEL_OUT_CAP (256u << 10)
/* A request is one OPEN payload's code plus a little JSON around it. */
#define KERNEL_IN_CAP (2 * PROTO_MAX_PAYLOAD + 4096)
#define KERNEL_EVENT_MAX PROTO_MAX_PAYLOAD
/* After a timeout the cell gets SIGINT; if it is still busy this much later
 * the kernel is killed (and restarted, empty, on next use). */
#define INTERRUPT_GRACE_MS 3000

enum code_lang { LANG_PYTHON, LANG_JAVASCRIPT, LANG_TYPESCRIPT, LANG_COUNT };

static const char *const lang_names[LANG_COUNT] = { "python", "javascript", "typescript" };
/* The context a run_code without one goes to, one per language. */
static const char *const default_ids[LANG_COUNT] = { "default", "default-javascript", "default-typescript" };

/* The language whose default context id is, or -1. */
static int default_lang(const char *id)
{
	for (int i = 0; i < LANG_COUNT; i++)
		if (!strcmp(id, default_ids[i]))
			return i;
	return -1;
}

/* NULL and "" are python; -1 for a language no kernel here speaks. */
static int lang_parse(const char *s)
{
	if (!s || !*s || !strcmp(s, "python") || !strcmp(s, "python3"))
		return LANG_PYTHON;
	if (!strcmp(s, "javascript") || !strcmp(s, "js"))
		return LANG_JAVASCRIPT;
	if (!strcmp(s, "typescript") || !strcmp(s, "ts"))
		return LANG_TYPESCRIPT;
	return -1;
}

static int lang_or_end(struct stream *s, const char *name)
{
	int lang = lang_parse(name);
	if (lang < 0)
		stream_end_error(s, PERR_UNSUPPORTED, "language '%s' is not supported (python, javascript, typescript)",
				 name);
	return lang;
}

struct kernel {
	char id[64];
	enum code_lang lang;
	char cwd[PATH_MAX];
	char user[64];
	pid_t pid;           /* 0 when not running */
	struct child child;
	struct relay_out out[2];
	struct relay_in in;
	int ev_fd;
	struct watch ev_w;
	uint8_t *evbuf;      /* one event frame being assembled */
	size_t evlen;
	struct stream *s;    /* the run_code stream being served */
	uint64_t run_id;     /* id of the latest request */
	uint64_t stuck_id;   /* a timed-out request that was interrupted, 0 if none */
	char *done;          /* done event of the current run, until output drains */
	struct timer timer;      /* the current run's timeout */
	struct timer kill_timer; /* kills the kernel if stuck_id does not finish */
	struct kernel *next;
};

static struct kernel *kernels;
static unsigned nkernels;

static void kernel_check_finish(struct kernel *k);

static struct kernel *kernel_find(const char *id)
{
	for (struct kernel *k = kernels; k; k = k->next)
		if (!strcmp(k->id, id))
			return k;
	return NULL;
}

static void kernel_detach(struct kernel *k)
{
	k->s = NULL;
	if (k->ev_w.added)
		watch_set(&k->ev_w, EPOLLIN); /* a parked pipe would block the kernel */
	for (int i = 0; i < 2; i++) {
		k->out[i].s = NULL;
		k->out[i].discard_detached = true;
		ring_consume(&k->out[i].ring, ring_used(&k->out[i].ring));
		if (!k->out[i].eof)
			relay_out_flush(&k->out[i]);
	}
	free(k->done);
	k->done = NULL;
}

/* Stops the process and releases its pipes; the context itself remains.
 * reaped: the process is already gone (its pid may be reused: do not kill). */
static void kernel_stop(struct kernel *k, const char *why, bool reaped)
{
	if (k->s) {
		struct stream *s = k->s;
		kernel_detach(k);
		stream_end_error(s, PERR_INTERNAL, "%s", why);
	}
	if (!k->pid)
		return;
	if (!reaped) {
		kill(k->pid, SIGKILL);
		child_unwatch(&k->child); /* the loop reaps it as an unwatched child */
	}
	k->pid = 0;
	for (int i = 0; i < 2; i++)
		relay_out_close(&k->out[i]);
	relay_in_close(&k->in);
	watch_del(&k->ev_w);
	close(k->ev_fd);
	free(k->evbuf);
	k->evbuf = NULL;
	k->evlen = 0;
	k->stuck_id = 0;
	timer_disarm(&k->timer);
	timer_disarm(&k->kill_timer);
}

static void kernel_exited(struct child *c, int status)
{
	struct kernel *k = (struct kernel *)((char *)c - offsetof(struct kernel, child));
	char why[96];
	if (WIFSIGNALED(status))
		snprintf(why, sizeof(why), "%s kernel killed by signal %d; context state is lost", lang_names[k->lang],
			 WTERMSIG(status));
	else
		snprintf(why, sizeof(why), "%s kernel exited with status %d; context state is lost", lang_names[k->lang],
			 WEXITSTATUS(status));
	for (int i = 0; k->s && i < 2; i++) /* a dying kernel's last words: the traceback */
		if (!k->out[i].eof)
			relay_out_drain(&k->out[i]);
	kernel_stop(k, why, true);
}

static void kernel_check_finish(struct kernel *k)
{
	if (!k->s || !k->done)
		return;
	for (int i = 0; i < 2; i++)
		if (!k->out[i].eof && (!k->out[i].idle || ring_used(&k->out[i].ring)))
			return;
	struct stream *s = k->s;
	char *done = k->done;
	k->done = NULL;
	kernel_detach(k);
	timer_disarm(&k->timer);
	/* The done event is the END payload: {"type":"done","execution_count",...}. */
	struct jw w;
	jw_init(&w);
	jw_raw(&w, done, strlen(done));
	stream_end_jw(s, &w);
	free(done);
}

static void out_changed(struct relay_out *o)
{
	kernel_check_finish(o->owner);
}

/* One complete event from the kernel. Only "id" and "type" matter here; the
 * rest goes to the client verbatim. */
static void kernel_event(struct kernel *k, const char *p, size_t n)
{
	struct json *ev = NULL;
	int64_t id = 0;
	if (json_parse(p, n, &ev) || json_get_int(ev, "id", 0, INT64_MAX, &id)) {
		json_free(ev);
		return;
	}
	const char *type = json_get_str(ev, "type");
	bool done = type && !strcmp(type, "done");
	json_free(ev);
	/* Requests run in order: any later done means the stuck one finished. */
	if (done && k->stuck_id && (uint64_t)id >= k->stuck_id) {
		k->stuck_id = 0;
		timer_disarm(&k->kill_timer);
	}
	if ((uint64_t)id != k->run_id || !k->s)
		return; /* a run whose client is gone */
	/* Output printed before this event is already in the pipes: send it first. */
	for (int i = 0; i < 2; i++)
		if (!k->out[i].eof)
			relay_out_drain(&k->out[i]);
	if (done) {
		free(k->done);
		k->done = strndup(p, n);
		kernel_check_finish(k);
	} else {
		stream_event(k->s, p, n);
	}
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void kernel_read_events(struct watch *w, uint32_t events)
{
	struct kernel *k = (struct kernel *)((char *)w - offsetof(struct kernel, ev_w));
	uint8_t buf[64 * 1024];
	(void)events;
	if (k->s && stream_congested(k->s)) {
		watch_set(&k->ev_w, 0); /* results wait in the pipe; code_writable resumes */
		return;
	}
	ssize_t n = read(k->ev_fd, buf, sizeof(buf));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		/* The kernel closed its event pipe: it is exiting; its SIGCHLD follows. */
		watch_del(&k->ev_w);
		return;
	}
	for (ssize_t i = 0; i < n;) {
		size_t want = 4 - k->evlen;
		if (k->evlen >= 4)
			want = 4 + be32(k->evbuf) - k->evlen;
		size_t take = (size_t)(n - i) < want ? (size_t)(n - i) : want;
		memcpy(k->evbuf + k->evlen, buf + i, take);
		k->evlen += take;
		i += (ssize_t)take;
		if (k->evlen < 4)
			continue;
		uint32_t len = be32(k->evbuf);
		if (len > KERNEL_EVENT_MAX) {
			kernel_stop(k, "kernel sent an oversized event", false);
			return;
		}
		if (k->evlen == 4 + (size_t)len) {
			k->evlen = 0;
			kernel_event(k, (const char *)k->evbuf + 4, len);
			if (!k->pid)
				return;
		}
	}
}

/* -ENOENT: no helper; -ENOEXEC: no interpreter; -EINVAL: no such user. */
static int kernel_spawn(struct kernel *k)
{
	struct user_info ui;
	bool has_user = k->user[0] != 0;
	bool python = k->lang == LANG_PYTHON;
	const char *helper = python ? agent_cfg.python_helper : agent_cfg.js_helper;
	const char *interp = python ? agent_cfg.python : agent_cfg.node;
	if (!helper)
		return -ENOENT;
	if (access(interp, X_OK) < 0)
		return -ENOEXEC;
	if (has_user && user_lookup(k->user, &ui))
		return -EINVAL;
	int req[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 }, ev[2] = { -1, -1 };
	int devnull = -1;
	int rc = 0;
	if (pipe2(req, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 ||
	    pipe2(ev, O_CLOEXEC) < 0 || (!python && (devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0))
		rc = -errno;
	k->evbuf = malloc(4 + KERNEL_EVENT_MAX);
	if (!rc && !k->evbuf)
		rc = -ENOMEM;
	char **envp = NULL;
	if (!rc) {
		envp = spawn_env_build(has_user ? &ui : NULL, NULL, NULL);
		rc = envp ? 0 : -ENOMEM;
	}
	if (!rc) {
		char *argv[] = { (char *)interp, (char *)helper, NULL };
		struct spawn_req sr = {
			.argv = argv, .envp = envp, .cwd = k->cwd[0] ? k->cwd : NULL,
			.user = has_user ? &ui : NULL, .fds = { req[0], out[1], err[1], ev[1] }, .nfds = 4,
		};
		if (!python) { /* Node cannot move its requests off fd 0 as Python does: fd 4 */
			int fds[] = { devnull, out[1], err[1], ev[1], req[0] };
			_Static_assert(sizeof(fds) <= sizeof(sr.fds), "spawn_req takes five descriptors");
			memcpy(sr.fds, fds, sizeof(fds));
			sr.nfds = 5;
		}
		const char *failed;
		rc = spawn_process(&sr, &k->pid, &failed);
	}
	spawn_env_free(envp);
	int child_ends[] = { req[0], out[1], err[1], ev[1], devnull };
	for (int i = 0; i < 5; i++)
		if (child_ends[i] >= 0)
			close(child_ends[i]);
	if (rc) {
		int parent_ends[] = { req[1], out[0], err[0], ev[0] };
		for (int i = 0; i < 4; i++)
			if (parent_ends[i] >= 0)
				close(parent_ends[i]);
		free(k->evbuf);
		k->evbuf = NULL;
		k->pid = 0;
		return rc;
	}
	for (int i = 0; i < 2; i++) {
		memset(&k->out[i], 0, sizeof(k->out[i]));
		relay_out_start(&k->out[i], i ? err[0] : out[0], (uint8_t)(PROTO_CH_STDOUT + i),
				KERNEL_OUT_CAP, out_changed, k);
		k->out[i].discard_detached = true;
	}
	memset(&k->in, 0, sizeof(k->in));
	relay_in_start(&k->in, req[1], KERNEL_IN_CAP, false);
	k->ev_fd = ev[0];
	fcntl(k->ev_fd, F_SETFL, O_NONBLOCK);
	watch_add(&k->ev_w, k->ev_fd, EPOLLIN, kernel_read_events);
	child_watch(&k->child, k->pid, kernel_exited);
	return 0;
}

static void context_free(struct kernel *k)
{
	kernel_stop(k, "context removed", false);
	for (struct kernel **pp = &kernels; *pp; pp = &(*pp)->next) {
		if (*pp == k) {
			*pp = k->next;
			break;
		}
	}
	nkernels--;
	free(k);
}

static void kernel_spawn_failed(struct stream *s, const struct kernel *k, int rc)
{
	bool python = k->lang == LANG_PYTHON;
	if (rc == -ENOENT)
		stream_end_error(s, PERR_UNSUPPORTED, "%s not found (it belongs beside mitos_kernel.py; use --python-helper)",
				 python ? "mitos_kernel.py" : "mitos_kernel.js");
	else if (rc == -ENOEXEC)
		stream_end_error(s, PERR_UNSUPPORTED, "%s needs %s in the sandbox's image: %s is not there", lang_names[k->lang],
				 python ? "Python" : "Node.js", python ? agent_cfg.python : agent_cfg.node);
	else if (rc == -EINVAL)
		stream_end_error(s, PERR_INVALID_ARGUMENT, "unknown user '%s'", k->user);
	else
		stream_end_errno(s, rc, "start the kernel");
}

/* Creates a context of language lang from req's "cwd"/"user" (and "id" when given). */
static struct kernel *context_create(struct stream *s, const struct json *req, const char *id, enum code_lang lang)
{
	static unsigned seq;
	const char *cwd = json_get_str(req, "cwd"), *user = request_user(req), *fallback = json_get_str(req, "default_cwd");
	if (nkernels >= MAX_CONTEXTS) {
		stream_end_error(s, PERR_BUSY, "too many code contexts (max %d)", MAX_CONTEXTS);
		return NULL;
	}
	struct kernel *k = calloc(1, sizeof(*k));
	if (!k) {
		stream_end_errno(s, -ENOMEM, "context");
		return NULL;
	}
	k->lang = lang;
	if (id)
		snprintf(k->id, sizeof(k->id), "%s", id);
	else
		snprintf(k->id, sizeof(k->id), "ctx-%u", ++seq);
	if (user)
		snprintf(k->user, sizeof(k->user), "%s", user);
	if (cwd || (fallback && fs_is_dir(fallback))) {
		snprintf(k->cwd, sizeof(k->cwd), "%s", cwd ? cwd : fallback);
	} else {
		/* the user's home, as for exec; else wherever the agent runs */
		struct user_info ui;
		if (user && !user_lookup(user, &ui))
			snprintf(k->cwd, sizeof(k->cwd), "%s", ui.home);
		else if (!getcwd(k->cwd, sizeof(k->cwd)))
			snprintf(k->cwd, sizeof(k->cwd), "/");
	}
	int rc = kernel_spawn(k);
	if (rc) {
		kernel_spawn_failed(s, k, rc);
		free(k);
		return NULL;
	}
	/* at the tail: context_list gives them in the order they were made */
	struct kernel **tail = &kernels;
	while (*tail)
		tail = &(*tail)->next;
	*tail = k;
	nkernels++;
	return k;
}

static void write_context(struct jw *w, const struct kernel *k)
{
	jw_obj(w);
	jw_key(w, "id");
	jw_str(w, k->id);
	jw_key(w, "language");
	jw_str(w, lang_names[k->lang]);
	jw_key(w, "cwd");
	jw_str(w, k->cwd);
	jw_key(w, "running");
	jw_bool(w, k->pid != 0);
	jw_obj_end(w);
}

/* ---- run_code stream ---- */

static void code_event(struct stream *s, const struct json *ev)
{
	struct kernel *k = s->ctx;
	if (json_get_bool(ev, "interrupt", false) && k->pid)
		kill(k->pid, SIGINT);
}

static void code_writable(struct stream *s)
{
	struct kernel *k = s->ctx;
	if (k->ev_w.added)
		watch_set(&k->ev_w, EPOLLIN);
	for (int i = 0; i < 2; i++)
		relay_out_flush(&k->out[i]);
	kernel_check_finish(k);
}

static void code_cancel(struct stream *s)
{
	struct kernel *k = s->ctx;
	kernel_detach(k);
	timer_disarm(&k->timer);
	/* If the cell already finished, the kernel ignores the interrupt. */
	if (k->pid)
		kill(k->pid, SIGINT);
}

static const struct stream_ops code_ops = {
	.event = code_event, .writable = code_writable, .cancel = code_cancel,
};

static void kernel_kill_stuck(struct timer *t)
{
	struct kernel *k = (struct kernel *)((char *)t - offsetof(struct kernel, kill_timer));
	kernel_stop(k, "kernel did not stop after an interrupt", false);
}

static void run_timeout(struct timer *t)
{
	struct kernel *k = (struct kernel *)((char *)t - offsetof(struct kernel, timer));
	if (k->s) {
		struct stream *s = k->s;
		kernel_detach(k);
		stream_end_error(s, PERR_TIMEOUT, "execution timed out; interrupted");
	}
	if (k->pid) {
		kill(k->pid, SIGINT);
		k->stuck_id = k->run_id;
		timer_arm(&k->kill_timer, loop_now_ms() + INTERRUPT_GRACE_MS, kernel_kill_stuck);
	}
}

static int send_request(struct kernel *k, const struct json *req)
{
	struct jw w;
	const char *out;
	size_t n;
	const struct json *code = json_get(req, "code");
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "id");
	jw_int(&w, (int64_t)k->run_id);
	jw_key(&w, "generation");
	jw_int(&w, (int64_t)agent_cfg.generation);
	jw_key(&w, "code");
	jw_value(&w, code);
	if (json_get(req, "env")) {
		jw_key(&w, "env");
		jw_value(&w, json_get(req, "env"));
	}
	if (json_get_bool(req, "e2b_data", false)) {
		jw_key(&w, "e2b_data");
		jw_bool(&w, true);
	}
	if (k->lang == LANG_TYPESCRIPT) {
		jw_key(&w, "typescript");
		jw_bool(&w, true);
	}
	jw_obj_end(&w);
	int rc = jw_finish(&w, &out, &n);
	if (!rc) {
		uint8_t hdr[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
		if (ring_space(&k->in.ring) < n + 4)
			rc = -EBUSY;
		else if (relay_in_push(&k->in, hdr, 4, false) != 4 ||
			 relay_in_push(&k->in, (const uint8_t *)out, n, false) != n)
			rc = -EPIPE;
	}
	jw_free(&w);
	return rc;
}

void op_run_code_open(struct stream *s, const struct json *req)
{
	const struct json *code = json_get(req, "code");
	const char *id = json_get_str(req, "context");
	int64_t timeout_ms = 0;
	if (!code || code->kind != JSON_STR) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "code must be a string");
		return;
	}
	if (json_get_int(req, "timeout_ms", 0, INT32_MAX, &timeout_ms) == -EINVAL) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "timeout_ms must be a non-negative integer");
		return;
	}
	const char *lname = json_get_str(req, "language");
	int lang = lang_or_end(s, lname);
	if (lang < 0)
		return;
	/* A default context is made on first use; any other must exist. */
	const char *want = id ? id : default_ids[lang];
	int dflt = default_lang(want);
	struct kernel *k = kernel_find(want);
	if (!k && dflt < 0) {
		stream_end_error(s, PERR_NOT_FOUND, "no code context '%s'", id);
		return;
	}
	if (!k && !(k = context_create(s, req, default_ids[dflt], (enum code_lang)dflt)))
		return;
	if (lname && *lname && (int)k->lang != lang) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "context '%s' runs %s, not %s", k->id, lang_names[k->lang],
				 lang_names[lang]);
		return;
	}
	if (k->s) {
		stream_end_error(s, PERR_BUSY, "context '%s' is running another execution", k->id);
		return;
	}
	if (!k->pid) {
		int rc = kernel_spawn(k);
		if (rc) {
			kernel_spawn_failed(s, k, rc);
			return;
		}
	}
	k->run_id++;
	int rc = send_request(k, req);
	if (rc) {
		stream_end_errno(s, rc, "send code to the kernel");
		return;
	}
	k->s = s;
	s->ctx = k;
	s->ops = &code_ops;
	for (int i = 0; i < 2; i++) {
		k->out[i].s = s;
		k->out[i].discard_detached = false;
	}
	if (timeout_ms > 0)
		timer_arm(&k->timer, loop_now_ms() + (uint64_t)timeout_ms, run_timeout);
	else
		timer_disarm(&k->timer);
}

/* ---- context management ---- */

void op_context_create_open(struct stream *s, const struct json *req)
{
	const char *id = json_get_str(req, "id");
	if (id && (!*id || strlen(id) >= sizeof(((struct kernel *)0)->id))) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "id must be 1..63 bytes");
		return;
	}
	if (id && kernel_find(id)) {
		stream_end_error(s, PERR_EXISTS, "code context '%s' exists", id);
		return;
	}
	const char *lname = json_get_str(req, "language");
	int lang = lang_or_end(s, lname);
	if (lang < 0)
		return;
	struct kernel *k = context_create(s, req, id, (enum code_lang)lang);
	if (!k)
		return;
	struct jw w;
	jw_init(&w);
	write_context(&w, k);
	stream_end_jw(s, &w);
}

void op_context_list_open(struct stream *s, const struct json *req)
{
	struct jw w;
	(void)req;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "contexts");
	jw_arr(&w);
	for (struct kernel *k = kernels; k; k = k->next)
		write_context(&w, k);
	jw_arr_end(&w);
	jw_obj_end(&w);
	stream_end_jw(s, &w);
}

/* The context req names; NULL when the stream has ended: with not_found, or done when
 * it is a default context not made yet (nothing to remove or restart). */
static struct kernel *context_or_end(struct stream *s, const struct json *req)
{
	const char *id = json_get_str(req, "id");
	struct kernel *k = id ? kernel_find(id) : NULL;
	if (!k && id && default_lang(id) >= 0)
		stream_end_ok(s);
	else if (!k)
		stream_end_error(s, PERR_NOT_FOUND, "no code context '%s'", id ? id : "");
	return k;
}

void op_context_remove_open(struct stream *s, const struct json *req)
{
	struct kernel *k = context_or_end(s, req);
	if (k) {
		context_free(k);
		stream_end_ok(s);
	}
}

void op_context_restart_open(struct stream *s, const struct json *req)
{
	struct kernel *k = context_or_end(s, req);
	if (!k)
		return;
	kernel_stop(k, "context restarted", false);
	int rc = kernel_spawn(k);
	if (rc)
		kernel_spawn_failed(s, k, rc);
	else
		stream_end_ok(s);
}

void code_kill_all(void)
{
	while (kernels)
		context_free(kernels);
}
