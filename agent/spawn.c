#include "agent/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent/json.h"

extern char **environ;

enum spawn_step { STEP_FDS, STEP_SESSION, STEP_TTY, STEP_GROUPS, STEP_SETGID, STEP_SETUID, STEP_CHDIR, STEP_EXEC };
static const char *const step_names[] = { "dup2", "setsid", "TIOCSCTTY", "setgroups", "setgid", "setuid", "chdir", "exec" };

struct spawn_failure {
	int step;
	int err;
};

/* Fds the agent inherited without O_CLOEXEC must not leak into user commands. */
static void cloexec_from(int lowfd)
{
	if (syscall(SYS_close_range, lowfd, ~0u, 4 /* CLOSE_RANGE_CLOEXEC */) == 0)
		return;
	for (int fd = lowfd; fd < 1024; fd++)
		fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/* Runs in the vforked child: async-signal-safe calls only, no returning. */
static void __attribute__((noreturn)) child_setup(const struct spawn_req *r, int errfd)
{
	struct spawn_failure f = { STEP_FDS, 0 };
	sigset_t all;
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);
	/* Move sources above the target range first so dup2 cannot clobber one. */
	int moved[SPAWN_MAX_FDS];
	for (int i = 0; i < r->nfds; i++) {
		moved[i] = fcntl(r->fds[i], F_DUPFD_CLOEXEC, 16);
		if (moved[i] < 0)
			goto fail;
	}
	for (int i = 0; i < r->nfds; i++)
		if (dup2(moved[i], i) < 0)
			goto fail;
	cloexec_from(r->nfds);
	f.step = STEP_SESSION;
	if (setsid() < 0)
		goto fail;
	f.step = STEP_TTY;
	if (r->controlling_tty && ioctl(0, TIOCSCTTY, 0) < 0)
		goto fail;
	if (r->user && (r->user->uid != geteuid() || r->user->gid != getegid())) {
		f.step = STEP_GROUPS;
		if (setgroups(1, &r->user->gid) < 0 && errno != EPERM)
			goto fail;
		f.step = STEP_SETGID;
		if (setgid(r->user->gid) < 0)
			goto fail;
		f.step = STEP_SETUID;
		if (setuid(r->user->uid) < 0)
			goto fail;
	}
	f.step = STEP_CHDIR;
	if (r->cwd && chdir(r->cwd) < 0)
		goto fail;
	f.step = STEP_EXEC;
	execvpe(r->argv[0], r->argv, r->envp);
fail:
	f.err = errno;
	if (write(errfd, &f, sizeof(f)) < 0) {
		/* nothing left to report to */
	}
	_exit(127);
}

int spawn_process(const struct spawn_req *r, pid_t *pid, const char **failed)
{
	int ep[2];
	*failed = "spawn";
	if (!r->argv || !r->argv[0])
		return -EINVAL;
	if (pipe2(ep, O_CLOEXEC) < 0)
		return -errno;
	/* vfork: nothing of the agent is copied, and the parent sleeps until the
	 * exec. The child only makes syscalls that change its own kernel state
	 * (fds, mask, dispositions, ids) and never returns from here. */
	pid_t p = vfork();
	if (p < 0) {
		int err = errno;
		close(ep[0]);
		close(ep[1]);
		return -err;
	}
	if (p == 0) {
		/* Above the fd range dup2 targets, so the error pipe survives. */
		int errfd = fcntl(ep[1], F_DUPFD_CLOEXEC, 64);
		child_setup(r, errfd < 0 ? ep[1] : errfd);
	}
	close(ep[1]);
	struct spawn_failure f;
	ssize_t n;
	/* Blocks only until the child execs or fails: the pipe closes on exec. */
	do
		n = read(ep[0], &f, sizeof(f));
	while (n < 0 && errno == EINTR);
	close(ep[0]);
	if (n == sizeof(f)) {
		/* The child has exited (or is about to): its SIGCHLD is reaped by the
		 * loop as an unwatched child. */
		*failed = step_names[f.step];
		return -(f.err ? f.err : EINVAL);
	}
	*pid = p;
	return 0;
}

static int env_set(char ***env, size_t *n, const char *key, size_t klen, const char *val)
{
	size_t vlen = strlen(val);
	char *e = malloc(klen + vlen + 2);
	if (!e)
		return -ENOMEM;
	memcpy(e, key, klen);
	e[klen] = '=';
	memcpy(e + klen + 1, val, vlen + 1);
	for (size_t i = 0; i < *n; i++) {
		if (!strncmp((*env)[i], key, klen) && (*env)[i][klen] == '=') {
			free((*env)[i]);
			(*env)[i] = e;
			return 0;
		}
	}
	char **ne = realloc(*env, (*n + 2) * sizeof(*ne));
	if (!ne) {
		free(e);
		return -ENOMEM;
	}
	ne[(*n)++] = e;
	ne[*n] = NULL;
	*env = ne;
	return 0;
}

static int env_put(char ***env, size_t *n, const char *kv)
{
	const char *eq = strchr(kv, '=');
	return eq ? env_set(env, n, kv, (size_t)(eq - kv), eq + 1) : 0;
}

char **spawn_env_build(const struct user_info *user, const struct json *overrides, const char *extra)
{
	char **env = calloc(1, sizeof(*env));
	size_t n = 0;
	int rc = env ? 0 : -ENOMEM;
	if (!rc && !getenv("PATH"))
		rc = env_put(&env, &n, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
	for (char **e = environ; !rc && e && *e; e++)
		rc = env_put(&env, &n, *e);
	if (!rc && user) {
		rc = env_set(&env, &n, "HOME", 4, user->home);
		if (!rc)
			rc = env_set(&env, &n, "USER", 4, user->name);
		if (!rc)
			rc = env_set(&env, &n, "LOGNAME", 7, user->name);
		if (!rc)
			rc = env_set(&env, &n, "SHELL", 5, user->shell);
	}
	if (!rc && extra)
		rc = env_put(&env, &n, extra);
	for (size_t i = 0; !rc && overrides && overrides->kind == JSON_OBJ && i < overrides->n; i++) {
		const struct json *v = overrides->items[i];
		const char *k = overrides->keys[i];
		if (v->kind == JSON_STR && *k && !strchr(k, '=') && strlen(v->str) == v->len)
			rc = env_set(&env, &n, k, strlen(k), v->str);
	}
	if (rc) {
		spawn_env_free(env);
		return NULL;
	}
	return env;
}

void spawn_env_free(char **env)
{
	for (char **e = env; e && *e; e++)
		free(*e);
	free(env);
}
