/* mitos-agent: serves the agent protocol (agent/PROTOCOL.md) on vsock, a Unix
 * socket, or one inherited connected fd; optionally as the guest's PID 1. */
#include <errno.h>
#include <getopt.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/conn.h"
#include "agent/init.h"
#include "agent/loop.h"
#include "agent/ops.h"
#include "agent/sudo.h"
#include "lib/unix_listen.h"

#define DEFAULT_VSOCK_PORT 52

struct agent_config agent_cfg;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mitos-agent [--vsock PORT | --unix PATH | --fd N] [options]\n"
		"  --vsock PORT          listen on AF_VSOCK (any CID), port PORT\n"
		"  --unix PATH           listen on a Unix socket at PATH\n"
		"  --fd N                serve the connected socket N, exit when it closes\n"
		"  --init                act as the guest's PID 1 (implied when pid is 1)\n"
		"  --python PATH         interpreter of Python contexts (run_code; default /usr/bin/python3)\n"
		"  --python-helper PATH  mitos_kernel.py (default: next to the binary); mitos_kernel.js,\n"
		"                        the JavaScript kernel, is looked for beside it\n"
		"  --node PATH           interpreter of JavaScript/TypeScript contexts (default /usr/bin/node)\n"
		"  --sudo-socket PATH    serve sudo requests there (a process-engine sandbox, whose\n"
		"                        /usr/bin/sudo is this binary: run as `sudo`, it asks the agent)\n"
		"As PID 1 with no transport given, listens on vsock port %d.\n",
		DEFAULT_VSOCK_PORT);
}

static struct watch listen_watch;

static void on_accept(struct watch *w, uint32_t events)
{
	(void)events;
	int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	if (conn_start(fd, false))
		close(fd);
}

static int listen_vsock(unsigned port)
{
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	return watch_add(&listen_watch, fd, EPOLLIN, on_accept);
}

static int listen_unix(const char *path)
{
	int fd = unix_listen(path, 16, true);
	return fd < 0 ? fd : watch_add(&listen_watch, fd, EPOLLIN, on_accept);
}

/* mitos_kernel.py lives next to the binary, or in ../share/mitos when installed. */
static char *find_helper(void)
{
	static char path[4096];
	char exe[3072];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return NULL;
	exe[n] = 0;
	char *slash = strrchr(exe, '/');
	if (!slash)
		return NULL;
	*slash = 0;
	/* last: a build tree, where the helper stays in the source directory */
	const char *dirs[] = { exe, exe, MITOS_AGENT_SOURCE_DIR };
	const char *suffixes[] = { "/mitos_kernel.py", "/../share/mitos/mitos_kernel.py", "/mitos_kernel.py" };
	for (size_t i = 0; i < 3; i++) {
		int n = snprintf(path, sizeof(path), "%.3000s%s", dirs[i], suffixes[i]);
		if (n > 0 && (size_t)n < sizeof(path) && access(path, R_OK) == 0)
			return path;
	}
	return NULL;
}

/* The other kernels live in the Python one's directory. */
static char *beside_helper(const char *name)
{
	static char path[4096];
	const char *h = agent_cfg.python_helper;
	const char *slash = h ? strrchr(h, '/') : NULL;
	int dir = slash ? (int)(slash - h) : 1;
	int n = snprintf(path, sizeof(path), "%.*s/%s", dir, slash ? h : ".", name);
	return h && n > 0 && (size_t)n < sizeof(path) && access(path, R_OK) == 0 ? path : NULL;
}

int main(int argc, char **argv)
{
	enum { OPT_VSOCK = 1, OPT_UNIX, OPT_FD, OPT_INIT, OPT_PYTHON, OPT_HELPER, OPT_NODE, OPT_SUDO, OPT_HELP };
	static const struct option opts[] = {
		{ "vsock", required_argument, NULL, OPT_VSOCK },
		{ "unix", required_argument, NULL, OPT_UNIX },
		{ "fd", required_argument, NULL, OPT_FD },
		{ "init", no_argument, NULL, OPT_INIT },
		{ "python", required_argument, NULL, OPT_PYTHON },
		{ "python-helper", required_argument, NULL, OPT_HELPER },
		{ "node", required_argument, NULL, OPT_NODE },
		{ "sudo-socket", required_argument, NULL, OPT_SUDO },
		{ "help", no_argument, NULL, OPT_HELP },
		{ 0 },
	};
	const char *self = strrchr(argv[0], '/');
	if (!strcmp(self ? self + 1 : argv[0], "sudo"))
		return sudo_shim_main(argc, argv, SUDO_SOCKET);
	long vsock_port = -1, fd = -1;
	const char *unix_path = NULL, *sudo_path = NULL;
	int c;
	agent_cfg.python = "/usr/bin/python3";
	agent_cfg.node = "/usr/bin/node";
	agent_cfg.init = getpid() == 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case OPT_VSOCK: vsock_port = strtol(optarg, NULL, 10); break;
		case OPT_UNIX: unix_path = optarg; break;
		case OPT_FD: fd = strtol(optarg, NULL, 10); break;
		case OPT_INIT: agent_cfg.init = true; break;
		case OPT_PYTHON: agent_cfg.python = optarg; break;
		case OPT_HELPER: agent_cfg.python_helper = optarg; break;
		case OPT_NODE: agent_cfg.node = optarg; break;
		case OPT_SUDO: sudo_path = optarg; break;
		case OPT_HELP: usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (agent_cfg.init) {
		int rc = init_setup();
		if (rc)
			fprintf(stderr, "mitos-agent: init setup incomplete: %s\n", strerror(-rc));
		if (vsock_port < 0 && fd < 0 && !unix_path)
			vsock_port = DEFAULT_VSOCK_PORT;
	}
	/* After init_setup(): as PID 1 there is no /proc (to find ourselves) before it, and
	 * the root it switches to is where the helper lives. */
	if (!agent_cfg.python_helper)
		agent_cfg.python_helper = find_helper();
	agent_cfg.js_helper = beside_helper("mitos_kernel.js");
	if ((vsock_port >= 0) + (fd >= 0) + (unix_path != NULL) != 1) {
		usage(stderr);
		return 2;
	}
	/* Orphans of the sessions we start (daemonized servers) are re-parented to
	 * us and reaped by the loop, as they would be by PID 1. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	int rc = loop_init();
	if (rc) {
		fprintf(stderr, "mitos-agent: event loop: %s\n", strerror(-rc));
		return 1;
	}
	agent_cfg.start_ms = loop_now_ms();
	/* Before the agent's own socket: a process-engine init takes that one listening as
	 * the agent ready, and makes their directory read-only. */
	if (sudo_path && (rc = sudo_listen(sudo_path)))
		fprintf(stderr, "mitos-agent: sudo socket %s: ", sudo_path);
	else if (vsock_port >= 0)
		rc = listen_vsock((unsigned)vsock_port);
	else if (unix_path)
		rc = listen_unix(unix_path);
	else
		rc = conn_start((int)fd, true);
	if (rc) {
		fprintf(stderr, "mitos-agent: cannot serve: %s\n", strerror(-rc));
		if (agent_cfg.init)
			init_halt();
		return 1;
	}
	rc = loop_run();
	exec_kill_all();
	code_kill_all();
	if (agent_cfg.init)
		init_halt();
	return rc ? 1 : 0;
}
