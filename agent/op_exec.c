/* exec, pty, attach, signal, stdin, resize and processes: user processes and
 * their lifetime beyond the stream that started them. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "agent/base64.h"
#include "agent/fs_ctx.h"
#include "agent/ops.h"
#include "agent/relay.h"
#include "agent/spawn.h"

/* Per output channel: what a detached background process keeps (newest bytes),
 * and the most an attached one buffers while its client is slow. */
#define PROC_OUT_CAP (512u << 10)
#define MAX_PROCS 256
#define MAX_EXITED_KEPT 64

struct proc {
	pid_t pid;
	struct child child;
	struct relay_out out[2]; /* stdout, stderr; a pty has only out[0] */
	int nout;
	struct relay_in in;
	bool has_stdin;
	bool pty;
	bool background;
	bool discard;   /* foreground process whose stream went away: kill and forget */
	bool exited;
	bool timed_out;
	int status;
	struct timer timer;
	struct stream *s;
	char *config;   /* JSON {"argv","cwd","env","user"} for the process list */
	char *tag;
	uint64_t exited_seq;
	struct proc *next;
};

static struct proc *procs;
static unsigned nprocs;
static uint64_t exit_seq;

static void proc_check_done(struct proc *p);

static struct proc *proc_find(int64_t pid)
{
	for (struct proc *p = procs; p; p = p->next)
		if (p->pid == pid)
			return p;
	return NULL;
}

static void proc_destroy(struct proc *p)
{
	for (struct proc **pp = &procs; *pp; pp = &(*pp)->next) {
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	}
	nprocs--;
	for (int i = 0; i < p->nout; i++)
		relay_out_close(&p->out[i]);
	if (p->has_stdin)
		relay_in_close(&p->in);
	if (!p->exited)
		child_unwatch(&p->child);
	timer_disarm(&p->timer);
	free(p->config);
	free(p->tag);
	free(p);
}

/* Exited processes nobody attached to are kept so their output and status can
 * still be collected; beyond MAX_EXITED_KEPT the oldest go. */
static void evict_exited(unsigned keep)
{
	for (;;) {
		unsigned n = 0;
		struct proc *oldest = NULL;
		for (struct proc *p = procs; p; p = p->next) {
			if (p->exited && !p->s) {
				n++;
				if (!oldest || p->exited_seq < oldest->exited_seq)
					oldest = p;
			}
		}
		if (n <= keep || !oldest)
			return;
		proc_destroy(oldest);
	}
}

static void proc_signal(struct proc *p, int sig)
{
	/* The whole session: a shell's children die with it. */
	if (kill(-p->pid, sig) < 0)
		kill(p->pid, sig);
}

static void write_exit_status(struct jw *w, const struct proc *p)
{
	if (WIFEXITED(p->status)) {
		jw_key(w, "exited");
		jw_bool(w, true);
		jw_key(w, "exit_code");
		jw_int(w, WEXITSTATUS(p->status));
	} else {
		jw_key(w, "exited");
		jw_bool(w, false);
		jw_key(w, "exit_code");
		jw_int(w, -1);
		jw_key(w, "signal");
		jw_int(w, WIFSIGNALED(p->status) ? WTERMSIG(p->status) : 0);
	}
}

static void proc_detach(struct proc *p)
{
	p->s = NULL;
	p->in.s = NULL;
	p->in.owed = 0;
	for (int i = 0; i < p->nout; i++) {
		p->out[i].s = NULL;
		relay_out_flush(&p->out[i]); /* re-arms reading in keep-newest mode */
	}
}

static void proc_check_done(struct proc *p)
{
	if (!p->exited)
		return;
	for (int i = 0; i < p->nout; i++)
		if (!relay_out_done(&p->out[i]))
			return;
	if (p->s) {
		struct jw w;
		jw_init(&w);
		jw_obj(&w);
		write_exit_status(&w, p);
		if (p->timed_out)
			jw_error(&w, PERR_TIMEOUT, "process killed after its timeout");
		jw_obj_end(&w);
		struct stream *s = p->s;
		proc_detach(p);
		stream_end_jw(s, &w);
		proc_destroy(p);
	} else if (p->discard) {
		proc_destroy(p);
	}
}

static void out_changed(struct relay_out *o)
{
	proc_check_done(o->owner);
}

static void proc_exited(struct child *c, int status)
{
	struct proc *p = (struct proc *)((char *)c - offsetof(struct proc, child));
	p->exited = true;
	p->status = status;
	p->exited_seq = ++exit_seq;
	timer_disarm(&p->timer);
	/* Grandchildren still holding the pipes keep the output open: end only on EOF. */
	proc_check_done(p);
	evict_exited(MAX_EXITED_KEPT);
}

static void proc_timeout(struct timer *t)
{
	struct proc *p = (struct proc *)((char *)t - offsetof(struct proc, timer));
	p->timed_out = true;
	proc_signal(p, SIGKILL);
}

/* ---- stream callbacks ---- */

static void exec_data(struct stream *s, uint8_t channel, bool fin, const uint8_t *d, size_t n)
{
	struct proc *p = s->ctx;
	(void)channel;
	if (!p->has_stdin) {
		stream_consumed(s, n);
		return;
	}
	relay_in_push(&p->in, d, n, true);
	if (fin) {
		if (p->pty)
			relay_in_push(&p->in, (const uint8_t *)"\x04", 1, false); /* ^D: EOF at the tty */
		else
			relay_in_finish(&p->in);
	}
}

static int parse_signal(const struct json *v)
{
	static const struct { const char *name; int sig; } names[] = {
		{ "HUP", SIGHUP }, { "INT", SIGINT }, { "QUIT", SIGQUIT }, { "KILL", SIGKILL },
		{ "USR1", SIGUSR1 }, { "USR2", SIGUSR2 }, { "TERM", SIGTERM }, { "CONT", SIGCONT },
		{ "STOP", SIGSTOP }, { "TSTP", SIGTSTP }, { "WINCH", SIGWINCH },
	};
	if (!v)
		return -EINVAL;
	if (v->kind == JSON_NUM)
		return v->is_int && v->i > 0 && v->i < NSIG ? (int)v->i : -EINVAL;
	if (v->kind != JSON_STR)
		return -EINVAL;
	const char *n = !strncmp(v->str, "SIG", 3) ? v->str + 3 : v->str;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(n, names[i].name))
			return names[i].sig;
	return -EINVAL;
}

static int parse_winsize(const struct json *v, struct winsize *ws)
{
	int64_t rows, cols;
	if (json_get_int(v, "rows", 1, 10000, &rows) || json_get_int(v, "cols", 1, 10000, &cols))
		return -EINVAL;
	memset(ws, 0, sizeof(*ws));
	ws->ws_row = (unsigned short)rows;
	ws->ws_col = (unsigned short)cols;
	return 0;
}

static int proc_resize(struct proc *p, const struct json *size)
{
	struct winsize ws;
	if (!p->pty)
		return -ENOTTY;
	if (parse_winsize(size, &ws))
		return -EINVAL;
	if (p->out[0].eof)
		return -ESRCH;
	return ioctl(p->out[0].fd, TIOCSWINSZ, &ws) < 0 ? -errno : 0;
}

static void exec_event(struct stream *s, const struct json *ev)
{
	struct proc *p = s->ctx;
	const struct json *v;
	if ((v = json_get(ev, "signal"))) {
		int sig = parse_signal(v);
		if (sig > 0 && !p->exited)
			proc_signal(p, sig);
	}
	if ((v = json_get(ev, "resize")))
		proc_resize(p, v);
	if (json_get_bool(ev, "close_stdin", false) && p->has_stdin)
		relay_in_finish(&p->in);
}

static void exec_writable(struct stream *s)
{
	struct proc *p = s->ctx;
	for (int i = 0; i < p->nout; i++)
		relay_out_flush(&p->out[i]);
	proc_check_done(p);
}

static void exec_cancel(struct stream *s)
{
	struct proc *p = s->ctx;
	proc_detach(p);
	if (!p->background) {
		p->discard = true;
		for (int i = 0; i < p->nout; i++) {
			p->out[i].discard_detached = true;
			ring_consume(&p->out[i].ring, ring_used(&p->out[i].ring));
		}
		if (!p->exited)
			proc_signal(p, SIGKILL);
	}
	proc_check_done(p);
}

static const struct stream_ops exec_stream_ops = {
	.data = exec_data,
	.event = exec_event,
	.writable = exec_writable,
	.cancel = exec_cancel,
};

static void proc_attach(struct proc *p, struct stream *s)
{
	if (p->s) {
		/* A newer client takes over (typically after a reconnect). */
		struct stream *old = p->s;
		proc_detach(p);
		old->ops = NULL;
		struct jw w;
		jw_init(&w);
		jw_obj(&w);
		jw_key(&w, "detached");
		jw_bool(&w, true);
		jw_obj_end(&w);
		stream_end_jw(old, &w);
	}
	p->s = s;
	s->ctx = p;
	s->ops = &exec_stream_ops;
	p->in.s = s;
	p->in.owed = 0;
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "pid");
	jw_int(&w, p->pid);
	jw_key(&w, "running");
	jw_bool(&w, !p->exited);
	jw_key(&w, "pty");
	jw_bool(&w, p->pty);
	jw_key(&w, "dropped");
	jw_int(&w, (int64_t)(p->out[0].dropped + (p->nout > 1 ? p->out[1].dropped : 0)));
	jw_obj_end(&w);
	stream_event_jw(s, &w);
	for (int i = 0; i < p->nout; i++) {
		p->out[i].s = s;
		p->out[i].discard_detached = false;
		relay_out_flush(&p->out[i]);
	}
	proc_check_done(p);
}

/* ---- starting processes ---- */

struct exec_args {
	char **argv;
	const char *cwd;
	struct user_info user;
	bool has_user;
	bool pty;
	struct winsize ws;
};

static void free_argv(char **argv)
{
	for (char **a = argv; a && *a; a++)
		free(*a);
	free(argv);
}

static int parse_argv(const struct json *req, bool pty, const struct user_info *user, char ***out)
{
	const struct json *argv = json_get(req, "argv");
	const char *cmd = json_get_str(req, "cmd");
	const char *shell = json_get_str(req, "shell");
	const char *defaults[3] = { NULL };
	size_t n = 0;
	if (argv) {
		if (argv->kind != JSON_ARR || !argv->n || argv->n > 4096)
			return -EINVAL;
		n = argv->n;
	} else if (cmd) {
		defaults[0] = shell ? shell : "/bin/sh";
		defaults[1] = "-c";
		defaults[2] = cmd;
		n = 3;
	} else if (pty) {
		defaults[0] = shell ? shell : user ? user->shell : "/bin/sh";
		defaults[1] = "-i";
		n = 2;
	} else {
		return -EINVAL;
	}
	char **a = calloc(n + 1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const struct json *v = argv ? argv->items[i] : NULL;
		if (v && (v->kind != JSON_STR || strlen(v->str) != v->len)) {
			free_argv(a);
			return -EINVAL;
		}
		a[i] = strdup(v ? v->str : defaults[i]);
		if (!a[i]) {
			free_argv(a);
			return -ENOMEM;
		}
	}
	*out = a;
	return 0;
}

static char *encode_config(const struct json *req, char **argv, const char *cwd, const char *user)
{
	struct jw w;
	const char *out;
	size_t n;
	char *copy = NULL;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "argv");
	jw_arr(&w);
	for (char **a = argv; *a; a++)
		jw_str(&w, *a);
	jw_arr_end(&w);
	if (cwd) {
		jw_key(&w, "cwd");
		jw_str(&w, cwd);
	}
	if (json_get(req, "env")) {
		jw_key(&w, "env");
		jw_value(&w, json_get(req, "env"));
	}
	if (user) {
		jw_key(&w, "user");
		jw_str(&w, user);
	}
	jw_obj_end(&w);
	if (!jw_finish(&w, &out, &n))
		copy = strndup(out, n);
	jw_free(&w);
	return copy;
}

static int open_pty(int *master, int *slave, const struct winsize *ws)
{
	char name[128];
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (m < 0)
		return -errno;
	if (grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, name, sizeof(name))) {
		int err = errno;
		close(m);
		return -err;
	}
	int sl = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (sl < 0) {
		int err = errno;
		close(m);
		return -err;
	}
	ioctl(m, TIOCSWINSZ, ws);
	*master = m;
	*slave = sl;
	return 0;
}

static void close_fds(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

/* Creates the child's fds, spawns it, and wires relays; on failure ends s. */
static struct proc *proc_start(struct stream *s, const struct json *req, struct exec_args *a,
			       char **envp)
{
	int parent[3] = { -1, -1, -1 }; /* stdin write end, stdout/stderr read ends */
	int child[3] = { -1, -1, -1 };
	bool want_stdin = json_get_bool(req, "stdin", a->pty);
	int rc = 0;
	if (a->pty) {
		rc = open_pty(&parent[1], &child[0], &a->ws);
		if (!rc) {
			child[1] = dup(child[0]);
			child[2] = dup(child[0]);
			parent[0] = fcntl(parent[1], F_DUPFD_CLOEXEC, 0);
			if (child[1] < 0 || child[2] < 0 || parent[0] < 0)
				rc = -errno;
		}
	} else {
		int p[2];
		for (int i = 0; i < 3 && !rc; i++) {
			if (i == 0 && !want_stdin) {
				child[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
				rc = child[0] < 0 ? -errno : 0;
				continue;
			}
			if (pipe2(p, O_CLOEXEC) < 0) {
				rc = -errno;
				break;
			}
			child[i] = i == 0 ? p[0] : p[1];
			parent[i] = i == 0 ? p[1] : p[0];
		}
	}
	if (rc) {
		close_fds(parent, 3);
		close_fds(child, 3);
		stream_end_errno(s, rc, a->pty ? "open pty" : "pipe");
		return NULL;
	}
	struct spawn_req sr = {
		.argv = a->argv, .envp = envp, .cwd = a->cwd, .user = a->has_user ? &a->user : NULL,
		.fds = { child[0], child[1], child[2] }, .nfds = 3, .controlling_tty = a->pty,
	};
	pid_t pid;
	const char *failed;
	rc = spawn_process(&sr, &pid, &failed);
	close_fds(child, 3);
	if (rc) {
		close_fds(parent, 3);
		if (!strcmp(failed, "chdir"))
			stream_end_error(s, PERR_INVALID_ARGUMENT, "cwd %s: %s", a->cwd, strerror(-rc));
		else
			stream_end_error(s, proto_err_from_errno(rc), "%s %s: %s", failed, a->argv[0], strerror(-rc));
		return NULL;
	}
	struct proc *p = calloc(1, sizeof(*p));
	if (!p) {
		close_fds(parent, 3);
		kill(-pid, SIGKILL);
		stream_end_errno(s, -ENOMEM, "exec");
		return NULL;
	}
	p->pid = pid;
	p->pty = a->pty;
	p->nout = a->pty ? 1 : 2;
	for (int i = 0; i < p->nout; i++)
		relay_out_start(&p->out[i], parent[1 + i], (uint8_t)(PROTO_CH_STDOUT + i), PROC_OUT_CAP,
				out_changed, p);
	if (parent[0] >= 0) {
		p->has_stdin = true;
		relay_in_start(&p->in, parent[0], PROTO_INITIAL_WINDOW, false);
	}
	child_watch(&p->child, pid, proc_exited);
	p->next = procs;
	procs = p;
	nprocs++;
	return p;
}

static void exec_start(struct stream *s, const struct json *req, bool pty)
{
	struct exec_args a = { .pty = pty };
	const char *user = request_user(req);
	int64_t timeout_ms = 0;
	int rc;

	if (user) {
		if ((rc = user_lookup(user, &a.user))) {
			stream_end_error(s, PERR_INVALID_ARGUMENT, "unknown user '%s'", user);
			return;
		}
		a.has_user = true;
	}
	if (pty) {
		const struct json *size = json_get(req, "size"), *spec = json_get(req, "pty");
		if (!size && spec && spec->kind == JSON_OBJ)
			size = spec; /* exec's "pty": {"rows", "cols"} */
		a.ws.ws_row = 24;
		a.ws.ws_col = 80;
		if (size && parse_winsize(size, &a.ws)) {
			stream_end_error(s, PERR_INVALID_ARGUMENT, "size needs rows and cols in 1..10000");
			return;
		}
	}
	rc = json_get_int(req, "timeout_ms", 0, INT32_MAX, &timeout_ms);
	if (rc == -EINVAL) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "timeout_ms must be a non-negative integer");
		return;
	}
	a.cwd = json_get_str(req, "cwd");
	const char *fallback = json_get_str(req, "default_cwd");
	if (!a.cwd && fallback && fs_is_dir(fallback))
		a.cwd = fallback; /* the Mitos contract's /workspace, where there is one */
	const char *home = getenv("HOME");
	if (!a.cwd && a.has_user)
		a.cwd = fs_is_dir(a.user.home) ? a.user.home : "/";
	else if (!a.cwd && json_get_str(req, "default_user") && home && fs_is_dir(home))
		a.cwd = home; /* E2B's default user is missing: start where its fallback's paths resolve */
	if ((rc = parse_argv(req, pty, a.has_user ? &a.user : NULL, &a.argv))) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "need argv (array of strings) or cmd (string)");
		return;
	}
	if (nprocs >= MAX_PROCS)
		evict_exited(0); /* full: uncollected output goes before new work is refused */
	if (nprocs >= MAX_PROCS) {
		free_argv(a.argv);
		stream_end_error(s, PERR_BUSY, "too many processes (max %d)", MAX_PROCS);
		return;
	}
	char **envp = spawn_env_build(a.has_user ? &a.user : NULL, json_get(req, "env"),
				      pty && !getenv("TERM") ? "TERM=xterm-256color" : NULL);
	if (!envp) {
		free_argv(a.argv);
		stream_end_errno(s, -ENOMEM, "environment");
		return;
	}
	struct proc *p = proc_start(s, req, &a, envp);
	spawn_env_free(envp);
	if (p) {
		p->background = json_get_bool(req, "background", false);
		p->config = encode_config(req, a.argv, a.cwd, user);
		const char *tag = json_get_str(req, "tag");
		p->tag = tag ? strdup(tag) : NULL;
		if (timeout_ms > 0)
			timer_arm(&p->timer, loop_now_ms() + (uint64_t)timeout_ms, proc_timeout);
		proc_attach(p, s);
	}
	free_argv(a.argv);
}

void op_exec_open(struct stream *s, const struct json *req)
{
	const struct json *pty = json_get(req, "pty");
	exec_start(s, req, pty && pty->kind != JSON_NULL && !(pty->kind == JSON_BOOL && !pty->boolean));
}

void op_pty_open(struct stream *s, const struct json *req)
{
	exec_start(s, req, true);
}

/* ---- operations on running processes ---- */

static struct proc *find_or_end(struct stream *s, const struct json *req)
{
	int64_t pid;
	struct proc *p = NULL;
	if (json_get_int(req, "pid", 1, INT32_MAX, &pid))
		stream_end_error(s, PERR_INVALID_ARGUMENT, "pid must be a positive integer");
	else if (!(p = proc_find(pid)))
		stream_end_error(s, PERR_NOT_FOUND, "no process %lld", (long long)pid);
	return p;
}

void op_attach_open(struct stream *s, const struct json *req)
{
	struct proc *p = find_or_end(s, req);
	if (p)
		proc_attach(p, s);
}

void op_signal_open(struct stream *s, const struct json *req)
{
	struct proc *p = find_or_end(s, req);
	if (!p)
		return;
	int sig = parse_signal(json_get(req, "signal"));
	if (sig < 0)
		stream_end_error(s, PERR_INVALID_ARGUMENT, "signal must be a number or a name like SIGTERM");
	else if (p->exited)
		stream_end_error(s, PERR_NOT_FOUND, "process %d has exited", p->pid);
	else {
		proc_signal(p, sig);
		stream_end_ok(s);
	}
}

void op_stdin_open(struct stream *s, const struct json *req)
{
	struct proc *p = find_or_end(s, req);
	if (!p)
		return;
	const struct json *data = json_get(req, "data");
	if (!p->has_stdin || p->in.closed || p->in.fin) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "process %d has no open stdin", p->pid);
		return;
	}
	if (data) {
		if (data->kind != JSON_STR) {
			stream_end_error(s, PERR_INVALID_ARGUMENT, "data must be base64");
			return;
		}
		uint8_t *buf = malloc(base64_decoded_max(data->len));
		size_t n;
		if (!buf || base64_decode(data->str, data->len, buf, &n)) {
			free(buf);
			stream_end_error(s, PERR_INVALID_ARGUMENT, "data must be base64");
			return;
		}
		if (ring_space(&p->in.ring) < n) {
			free(buf);
			stream_end_error(s, PERR_BUSY, "stdin buffer full; retry");
			return;
		}
		relay_in_push(&p->in, buf, n, false);
		free(buf);
	}
	if (json_get_bool(req, "close", false))
		relay_in_finish(&p->in);
	stream_end_ok(s);
}

void op_resize_open(struct stream *s, const struct json *req)
{
	struct proc *p = find_or_end(s, req);
	if (!p)
		return;
	int rc = proc_resize(p, req);
	if (rc)
		stream_end_errno(s, rc, "resize");
	else
		stream_end_ok(s);
}

void op_list_processes_open(struct stream *s, const struct json *req)
{
	struct jw w;
	(void)req;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "processes");
	jw_arr(&w);
	for (struct proc *p = procs; p; p = p->next) {
		if (p->discard)
			continue;
		jw_obj(&w);
		jw_key(&w, "pid");
		jw_int(&w, p->pid);
		if (p->tag) {
			jw_key(&w, "tag");
			jw_str(&w, p->tag);
		}
		jw_key(&w, "config");
		if (p->config)
			jw_raw(&w, p->config, strlen(p->config));
		else
			jw_null(&w);
		jw_key(&w, "pty");
		jw_bool(&w, p->pty);
		jw_key(&w, "background");
		jw_bool(&w, p->background);
		jw_key(&w, "attached");
		jw_bool(&w, p->s != NULL);
		jw_key(&w, "running");
		jw_bool(&w, !p->exited);
		if (p->exited)
			write_exit_status(&w, p);
		jw_obj_end(&w);
	}
	jw_arr_end(&w);
	jw_obj_end(&w);
	stream_end_jw(s, &w);
}

void exec_kill_all(void)
{
	for (struct proc *p = procs; p; p = p->next)
		if (!p->exited)
			proc_signal(p, SIGKILL);
}
