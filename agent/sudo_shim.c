/* The caller's side of sudo (protocol in sudo.h): sudo's options as far as a
 * sandbox needs them, the request with our stdin, stdout and stderr, signals passed
 * on, and the command's exit (or death by a signal) as our own. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/sudo.h"
#include "agent/users.h"

extern char **environ;

static volatile sig_atomic_t pending[NSIG];
static const int passed_on[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH };

static void on_signal(int sig)
{
	pending[sig] = 1;
}

static int usage(FILE *f, int code)
{
	fprintf(f, "usage: sudo [-EHnS] [-u user] [-D directory] [-i | -s] [--] [command [arg ...]]\n"
		   "       sudo -v | -l | -k | -K | -V | -h\n"
		   "This sandbox's sudo is its agent's: the command runs as the user asked for (root by\n"
		   "default) when the sudoers files give the caller NOPASSWD: ALL.\n");
	return code;
}

struct msg {
	char *p;
	size_t len;
	bool full;
};

static void field(struct msg *m, const char *key, const char *value)
{
	size_t kl = strlen(key), vl = strlen(value);
	if (m->len + kl + vl + 1 > SUDO_MSG_MAX) {
		m->full = true;
		return;
	}
	memcpy(m->p + m->len, key, kl);
	memcpy(m->p + m->len + kl, value, vl + 1);
	m->len += kl + vl + 1;
}

static int connect_agent(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		return fd;
	int err = errno;
	if (fd >= 0)
		close(fd);
	errno = err;
	return -1;
}

static int send_request(int fd, const struct msg *m)
{
	int fds[3] = { 0, 1, 2 };
	char cbuf[CMSG_SPACE(sizeof(fds))];
	struct iovec iov = { m->p, m->len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cm), fds, sizeof(fds));
	return sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t)m->len ? 0 : -1;
}

/* Waits for the answer, passing our signals on; returns our exit code. */
static int await_answer(int fd)
{
	struct sigaction sa = { .sa_handler = on_signal };
	for (size_t i = 0; i < sizeof(passed_on) / sizeof(passed_on[0]); i++)
		sigaction(passed_on[i], &sa, NULL);
	char msg[600];
	for (;;) {
		for (int s = 1; s < NSIG; s++)
			if (pending[s]) {
				pending[s] = 0;
				char sig[32];
				int n = snprintf(sig, sizeof(sig), "signal=%d", s);
				(void)!send(fd, sig, (size_t)n, MSG_NOSIGNAL);
			}
		struct pollfd p = { fd, POLLIN, 0 };
		if (poll(&p, 1, -1) < 0)
			continue; /* EINTR: a signal to pass on */
		ssize_t n = recv(fd, msg, sizeof(msg) - 1, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "sudo: the sandbox's agent went away\n");
			return 1;
		}
		msg[n] = 0;
		int status;
		if (sscanf(msg, "status=%d", &status) == 1) {
			if (WIFSIGNALED(status)) { /* die as the command did, as sudo does */
				signal(WTERMSIG(status), SIG_DFL);
				raise(WTERMSIG(status));
				return 128 + WTERMSIG(status);
			}
			return WEXITSTATUS(status);
		}
		fprintf(stderr, "sudo: %s\n", strncmp(msg, "error=", 6) ? msg : msg + 6);
		return 1;
	}
}

int sudo_shim_main(int argc, char **argv, const char *path)
{
	const char *user = "root", *shell = "none", *cwd = NULL;
	bool keepenv = false, validate = false, list = false, forget = false;
	int i = 1;
	for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--")) {
			i++;
			break;
		}
		if (a[1] == '-') { /* long options */
			const char *eq = strchr(a, '=');
			size_t kl = eq ? (size_t)(eq - a) : strlen(a);
			const char *val = eq ? eq + 1 : i + 1 < argc ? argv[i + 1] : NULL;
			bool takes = !strncmp(a, "--user", kl) || !strncmp(a, "--chdir", kl) || !strncmp(a, "--prompt", kl) ||
				     !strncmp(a, "--command-timeout", kl);
			if (takes && !val)
				return usage(stderr, 1);
			if (takes && !eq)
				i++;
			if (!strncmp(a, "--user", kl))
				user = val;
			else if (!strncmp(a, "--chdir", kl))
				cwd = val;
			else if (!strncmp(a, "--preserve-env", kl))
				keepenv = true;
			else if (!strncmp(a, "--login", kl))
				shell = "login";
			else if (!strncmp(a, "--shell", kl))
				shell = "plain";
			else if (!strncmp(a, "--validate", kl))
				validate = true;
			else if (!strncmp(a, "--list", kl))
				list = true;
			else if (!strncmp(a, "--help", kl))
				return usage(stdout, 0);
			else if (!strncmp(a, "--version", kl)) {
				printf("mitos-agent sudo (a process-engine sandbox's sudo, run by its agent)\n");
				return 0;
			} else if (strncmp(a, "--non-interactive", kl) && strncmp(a, "--set-home", kl) && !takes)
				return usage(stderr, 1);
			continue;
		}
		for (const char *o = a + 1; *o; o++) {
			if (strchr("uDpTg", *o)) { /* an option with a value: the rest, or the next word */
				const char *val = o[1] ? o + 1 : i + 1 < argc ? argv[++i] : NULL;
				if (!val || *o == 'g') {
					fprintf(stderr, "sudo: -%c %s\n", *o, val ? "is not supported here" : "needs a value");
					return 1;
				}
				if (*o == 'u')
					user = val;
				else if (*o == 'D')
					cwd = val;
				break;
			}
			switch (*o) {
			case 'E': keepenv = true; break;
			case 'i': shell = "login"; break;
			case 's': shell = "plain"; break;
			case 'v': validate = true; break;
			case 'l': list = true; break;
			case 'k': case 'K': forget = true; break;
			case 'h': return usage(stdout, 0);
			case 'V': printf("mitos-agent sudo (a process-engine sandbox's sudo, run by its agent)\n"); return 0;
			case 'H': case 'n': case 'S': case 'P': case 'A': case 'B': break; /* nothing to do here */
			default:
				fprintf(stderr, "sudo: invalid option -- '%c'\n", *o);
				return usage(stderr, 1);
			}
		}
	}
	bool command = i < argc;
	if (forget && !command && !validate && !list)
		return 0; /* no credentials are cached here */
	if (!command && !validate && !list && !strcmp(shell, "none"))
		return usage(stderr, 1);

	struct msg m = { malloc(SUDO_MSG_MAX), 0, false };
	char here[PATH_MAX];
	if (!m.p) {
		fprintf(stderr, "sudo: out of memory\n");
		return 1;
	}
	memcpy(m.p, SUDO_MAGIC, sizeof(SUDO_MAGIC));
	m.len = sizeof(SUDO_MAGIC);
	field(&m, "user=", user);
	field(&m, "shell=", validate || list ? "none" : shell);
	field(&m, "keepenv=", keepenv ? "1" : "0");
	if (cwd || getcwd(here, sizeof(here)))
		field(&m, "cwd=", cwd ? cwd : here);
	for (char **e = environ; e && *e; e++)
		if (strchr(*e, '='))
			field(&m, "env=", *e);
	for (; !validate && !list && i < argc; i++)
		field(&m, "arg=", argv[i]);
	if (m.full) {
		fprintf(stderr, "sudo: the command and its environment are over %u bytes\n", SUDO_MSG_MAX);
		return 1;
	}
	/* the descriptors we pass must exist */
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
			return 1;
	int fd = connect_agent(path);
	if (fd < 0 || send_request(fd, &m)) {
		fprintf(stderr, "sudo: cannot reach the sandbox's agent at %s: %s\n", path, strerror(errno));
		return 1;
	}
	free(m.p);
	int rc = await_answer(fd);
	if (list && rc == 0) {
		struct user_info u;
		user_by_uid(getuid(), &u);
		printf("User %s may run the following commands:\n    (ALL : ALL) NOPASSWD: ALL\n", u.name);
	}
	return rc;
}
