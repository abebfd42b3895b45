/* The agent's side of sudo (protocol in sudo.h): who may, and running the command.
 *
 * Who: root, and a user the template's /etc/sudoers or /etc/sudoers.d/ names in a
 * rule to run anything as anyone without a password ("user ALL=(ALL:ALL) NOPASSWD:
 * ALL", or "%group ..." for a group of theirs). There is no password to ask for, so
 * rules that want one give nothing, as `sudo -n` would. The caller is who the kernel
 * says (SO_PEERCRED), and only root can write these files. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/loop.h"
#include "agent/spawn.h"
#include "agent/sudo.h"
#include "agent/users.h"

#define SUDO_CONNS_MAX 64
#define REQUEST_WAIT_MS 5000
#define SUDOERS_MAX (64u << 10)
#define SECURE_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct sudo_conn {
	int fd;
	struct watch w;
	struct timer timer; /* the request must come soon after the connection */
	struct child child;
	pid_t pid; /* the command, 0 before it runs */
	struct sudo_conn *next;
};

static struct watch listen_w;
static struct sudo_conn *conns;
static unsigned nconns;

/* ---- who may ---- */

/* Whether one sudoers line lets u run anything as anyone without a password. */
static bool rule_allows(char *line, const struct user_info *u)
{
	line[strcspn(line, "#\n")] = 0;
	char *who = line + strspn(line, " \t");
	size_t wl = strcspn(who, " \t");
	if (!wl)
		return false;
	if (!who[wl])
		return false;
	who[wl] = 0;
	char *rest = who + wl + 1, *out = rest;
	for (char *p = rest; *p; p++) /* the rest with no blanks */
		if (*p != ' ' && *p != '\t')
			*out++ = *p;
	*out = 0;
	if (strcmp(rest, "ALL=(ALL)NOPASSWD:ALL") && strcmp(rest, "ALL=(ALL:ALL)NOPASSWD:ALL"))
		return false;
	if (who[0] == '%')
		return user_in_group(u, who + 1);
	return !strcmp(who, "ALL") || !strcmp(who, u->name);
}

static bool file_allows(int dirfd, const char *name, const struct user_info *u)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	struct stat st;
	if (fd < 0)
		return false;
	char *buf = NULL;
	ssize_t n = -1;
	if (!fstat(fd, &st) && S_ISREG(st.st_mode) && (buf = malloc(SUDOERS_MAX + 1)))
		n = read(fd, buf, SUDOERS_MAX);
	close(fd);
	bool ok = false;
	for (char *line = n > 0 ? buf : NULL, *next; line && !ok; line = next) {
		buf[n] = 0;
		next = strchr(line, '\n');
		if (next)
			*next++ = 0;
		ok = rule_allows(line, u);
	}
	free(buf);
	return ok;
}

static bool may_sudo(uid_t uid)
{
	struct user_info u;
	if (uid == 0)
		return true;
	if (user_by_uid(uid, &u))
		return false;
	if (file_allows(AT_FDCWD, "/etc/sudoers", &u))
		return true;
	DIR *d = opendir("/etc/sudoers.d");
	bool ok = false;
	for (struct dirent *e; d && !ok && (e = readdir(d));)
		/* sudo's rule: names with a dot or ending in ~ are not read */
		if (e->d_name[0] && !strchr(e->d_name, '.') && e->d_name[strlen(e->d_name) - 1] != '~')
			ok = file_allows(dirfd(d), e->d_name, &u);
	if (d)
		closedir(d);
	return ok;
}

/* ---- the connection ---- */

static void conn_free(struct sudo_conn *c)
{
	for (struct sudo_conn **pp = &conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	nconns--;
	if (c->w.added)
		watch_del(&c->w);
	timer_disarm(&c->timer);
	if (c->pid)
		child_unwatch(&c->child);
	close(c->fd);
	free(c);
}

static void reply(struct sudo_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct sudo_conn *c, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n > 0)
		(void)!send(c->fd, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void command_exited(struct child *ch, int status)
{
	struct sudo_conn *c = (struct sudo_conn *)((char *)ch - offsetof(struct sudo_conn, child));
	c->pid = 0;
	reply(c, "status=%d", status);
	conn_free(c);
}

struct request {
	const char *user, *shell, *cwd;
	bool keepenv;
	const char **env, **arg; /* as many as the message has fields, at most */
	int nenv, narg;
};

static void request_free(struct request *r)
{
	free(r->env);
	free(r->arg);
}

static int parse_request(char *p, size_t n, struct request *r)
{
	memset(r, 0, sizeof(*r));
	r->user = "root";
	r->shell = "none";
	if (n < sizeof(SUDO_MAGIC) || memcmp(p, SUDO_MAGIC, sizeof(SUDO_MAGIC)) || p[n - 1])
		return -1;
	size_t fields = 0;
	for (size_t i = sizeof(SUDO_MAGIC); i < n; i++)
		fields += !p[i];
	r->env = calloc(fields + 1, sizeof(char *));
	r->arg = calloc(fields + 1, sizeof(char *));
	if (!r->env || !r->arg)
		return -1;
	for (char *f = p + sizeof(SUDO_MAGIC); f < p + n; f += strlen(f) + 1) {
		if (!strncmp(f, "user=", 5))
			r->user = f + 5;
		else if (!strncmp(f, "shell=", 6))
			r->shell = f + 6;
		else if (!strncmp(f, "cwd=", 4))
			r->cwd = f + 4;
		else if (!strncmp(f, "keepenv=", 8))
			r->keepenv = f[8] == '1';
		else if (!strncmp(f, "env=", 4) && strchr(f + 4, '='))
			r->env[r->nenv++] = f + 4;
		else if (!strncmp(f, "arg=", 4))
			r->arg[r->narg++] = f + 4;
		else
			return -1;
	}
	return strcmp(r->shell, "none") && strcmp(r->shell, "plain") && strcmp(r->shell, "login") ? -1 : 0;
}

/* sudo's own way of making one shell command of -s/-i's arguments: every character
 * that is not a letter, a digit, '_', '-' or '$' gets a backslash. */
static char *shell_command(const struct request *r)
{
	size_t len = 1;
	for (int i = 0; i < r->narg; i++)
		len += 2 * strlen(r->arg[i]) + 1;
	char *s = malloc(len), *o = s;
	for (int i = 0; s && i < r->narg; i++) {
		if (i)
			*o++ = ' ';
		for (const char *a = r->arg[i]; *a; a++) {
			bool plain = (*a >= 'a' && *a <= 'z') || (*a >= 'A' && *a <= 'Z') || (*a >= '0' && *a <= '9') ||
				     *a == '_' || *a == '-' || *a == '$';
			if (!plain)
				*o++ = '\\';
			*o++ = *a;
		}
	}
	if (s)
		*o = 0;
	return s;
}

static bool env_kept(const char *kv)
{
	static const char *const keep[] = { "TERM=", "COLORTERM=", "LANG=", "LANGUAGE=", "LC_", "TZ=", "DISPLAY=",
					    "COLUMNS=", "LINES=" };
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
		if (!strncmp(kv, keep[i], strlen(keep[i])))
			return true;
	return false;
}

/* The command's environment, as sudo's env_reset makes it (-E: the caller's whole) with
 * the target's identity, the secure path and the SUDO_ variables. */
static char **command_env(const struct request *r, const struct user_info *t, const struct user_info *caller,
			  const char *cmd)
{
	char **env = calloc((size_t)r->nenv + 16, sizeof(char *));
	int n = 0;
	static const char *const ours[] = { "PATH=", "HOME=", "USER=", "LOGNAME=", "SHELL=", "SUDO_", "MAIL=" };
	for (int i = 0; env && i < r->nenv; i++) {
		bool replaced = false;
		for (size_t j = 0; j < sizeof(ours) / sizeof(ours[0]); j++)
			replaced = replaced || !strncmp(r->env[i], ours[j], strlen(ours[j]));
		if (!replaced && (r->keepenv || env_kept(r->env[i])))
			env[n++] = strdup(r->env[i]);
	}
	char line[PATH_MAX + 64];
	const char *set[][2] = { { "PATH", SECURE_PATH }, { "HOME", t->home }, { "USER", t->name },
				 { "LOGNAME", t->name }, { "SHELL", t->shell }, { "SUDO_USER", caller->name } };
	for (size_t i = 0; env && i < sizeof(set) / sizeof(set[0]); i++) {
		snprintf(line, sizeof(line), "%s=%s", set[i][0], set[i][1]);
		env[n++] = strdup(line);
	}
	if (env) {
		snprintf(line, sizeof(line), "SUDO_UID=%u", (unsigned)caller->uid);
		env[n++] = strdup(line);
		snprintf(line, sizeof(line), "SUDO_GID=%u", (unsigned)caller->gid);
		env[n++] = strdup(line);
		snprintf(line, sizeof(line), "SUDO_COMMAND=%.4000s", cmd);
		env[n++] = strdup(line);
	}
	for (int i = 0; env && i < n; i++)
		if (!env[i]) {
			spawn_env_free(env);
			return NULL;
		}
	return env;
}

static void run_parsed(struct sudo_conn *c, const struct request *r, const int fds[3])
{
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct user_info caller, target;
	if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
		reply(c, "error=who is asking: %s", strerror(errno));
		return;
	}
	user_by_uid(cred.uid, &caller);
	if (!may_sudo(cred.uid)) {
		reply(c, "error=%s is not in the sudoers file with NOPASSWD: ALL (no password can be asked here)",
		      caller.name);
		return;
	}
	if (!r->narg && !strcmp(r->shell, "none")) { /* sudo -v */
		reply(c, "status=0");
		return;
	}
	if (user_lookup(r->user, &target)) {
		reply(c, "error=unknown user %s", r->user);
		return;
	}
	char *cmd = shell_command(r);
	const char **argv = calloc((size_t)r->narg + 4, sizeof(char *));
	int na = 0;
	if (!argv) {
		free(cmd);
		reply(c, "error=out of memory");
		return;
	}
	if (!strcmp(r->shell, "none")) {
		for (int i = 0; i < r->narg; i++)
			argv[na++] = r->arg[i];
	} else {
		argv[na++] = target.shell;
		if (!strcmp(r->shell, "login"))
			argv[na++] = "-l";
		if (r->narg) {
			argv[na++] = "-c";
			argv[na++] = cmd;
		}
	}
	argv[na] = NULL;
	char **envp = cmd ? command_env(r, &target, &caller, cmd) : NULL;
	int rc = -ENOMEM;
	const char *failed = "memory";
	if (envp) {
		struct spawn_req sr = {
			.argv = (char *const *)argv, .envp = envp,
			.cwd = !strcmp(r->shell, "login") ? target.home : r->cwd,
			.user = &target, .fds = { fds[0], fds[1], fds[2] }, .nfds = 3,
		};
		rc = spawn_process(&sr, &c->pid, &failed);
	}
	spawn_env_free(envp);
	if (rc == -ENOENT && !strcmp(failed, "exec"))
		reply(c, "error=%s: command not found", argv[0]);
	else if (rc)
		reply(c, "error=%s: %s", failed, strerror(-rc));
	else
		child_watch(&c->child, c->pid, command_exited);
	if (rc)
		c->pid = 0;
	free(cmd);
	free(argv);
}

/* Runs the request of c with fds; answers an error itself. */
static void run_request(struct sudo_conn *c, char *p, size_t n, const int fds[3])
{
	struct request r;
	if (parse_request(p, n, &r))
		reply(c, "error=a request this agent does not understand");
	else
		run_parsed(c, &r, fds);
	request_free(&r);
}

static void conn_readable(struct watch *w, uint32_t events)
{
	struct sudo_conn *c = (struct sudo_conn *)((char *)w - offsetof(struct sudo_conn, w));
	(void)events;
	if (c->pid) {
		/* a signal for the command; the caller gone: the command goes too */
		char msg[32];
		ssize_t n = recv(c->fd, msg, sizeof(msg) - 1, MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		int sig = 0;
		if (n > 0) {
			msg[n] = 0;
			if (sscanf(msg, "signal=%d", &sig) == 1 && sig > 0 && sig < NSIG && sig != SIGKILL && sig != SIGSTOP)
				kill(-c->pid, sig);
			return;
		}
		kill(-c->pid, SIGKILL);
		watch_del(&c->w); /* the exit is still reaped; then c goes */
		return;
	}
	char *buf = malloc(SUDO_MSG_MAX);
	char cbuf[CMSG_SPACE(3 * sizeof(int))];
	struct iovec iov = { buf, SUDO_MSG_MAX };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	ssize_t n = buf ? recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) : -1;
	if (n < 0 && buf && (errno == EAGAIN || errno == EINTR)) {
		free(buf);
		return;
	}
	int fds[3] = { -1, -1, -1 }, nfds = 0, sent = 0;
	for (struct cmsghdr *cm = n > 0 ? CMSG_FIRSTHDR(&mh) : NULL; cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (sent++ < 3)
					fds[nfds++] = fd;
				else
					close(fd);
			}
	timer_disarm(&c->timer);
	if (n > 0 && ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || sent != 3))
		reply(c, "error=a request over %u bytes or without the three descriptors", SUDO_MSG_MAX);
	else if (n > 0)
		run_request(c, buf, (size_t)n, fds);
	free(buf);
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	if (!c->pid)
		conn_free(c);
}

static void request_late(struct timer *t)
{
	conn_free((struct sudo_conn *)((char *)t - offsetof(struct sudo_conn, timer)));
}

static void on_accept(struct watch *w, uint32_t events)
{
	(void)events;
	int fd;
	while ((fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		struct sudo_conn *c = nconns < SUDO_CONNS_MAX ? calloc(1, sizeof(*c)) : NULL;
		if (!c || watch_add(&c->w, fd, EPOLLIN, conn_readable)) {
			free(c);
			close(fd);
			continue;
		}
		c->fd = fd;
		c->next = conns;
		conns = c;
		nconns++;
		timer_arm(&c->timer, loop_now_ms() + REQUEST_WAIT_MS, request_late);
	}
}

int sudo_listen(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	unlink(path);
	/* anyone in the sandbox may ask; may_sudo() decides */
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, 0666) < 0 || listen(fd, 16) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	return watch_add(&listen_w, fd, EPOLLIN, on_accept);
}
