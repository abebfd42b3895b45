/* `mitos-vmm serve`: options, engine choice, the listening socket, signals and
 * graceful shutdown around the event loop. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/engines/engine.h"
#include "api/engines/kvm_jail.h"
#include "api/engines/sandbox_net.h"
#include "api/e2b/e2b.h"
#include "api/sandbox/agent_client.h"
#include "api/http/errors.h"
#include "api/http/listener.h"
#include "api/sandbox/node.h"
#include "api/proxy/forward.h"
#include "api/proxy/preview.h"
#include "api/sandbox/sandboxes.h"
#include "api/http/server.h"
#include "api/http/uring.h"
#include "vmm/commands.h"
#include "vmm/kvm_probe.h"

struct server_config srv_cfg;

static int listen_fd = -1;
static struct uop accept_op, sig_op;
static struct signalfd_siginfo sig_info;
static int sig_fd = -1;
static bool accept_armed;
static bool shutting_down;
static uint64_t shutdown_deadline;
static struct ur_ticker main_ticker;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mitos-vmm serve [--listen HOST:PORT] [--engine kvm|process] [--state-dir DIR]\n"
		"                       [--token-file FILE] [--preview-domain DOMAIN] [--insecure-no-auth]\n"
		"                       [--images DIR|none] [--node-id TAG] [--peers FILE]\n"
		"\n"
		"Runs the node's API server: the Mitos REST API (/v1/...), the Connect service\n"
		"sandbox.v1.Sandbox (with its WebSocket Exec for terminals) and the preview proxy,\n"
		"on one listener speaking HTTP/1.1 and HTTP/2 (h2c): the Mitos SDK's contract (api/API.md).\n"
		"\n"
		"  --listen HOST:PORT   default 127.0.0.1:8080; port 0 picks a free port\n"
		"  --engine NAME        kvm (microVMs) or process (namespaces); default: kvm where\n"
		"                       `mitos-vmm check` finds hardware virtualization, else process\n"
		"  --kvm-pool N         kvm: VMs prepared ahead per VM shape (default 2, 0..64)\n"
		"  --no-vm-jail         kvm: VM processes run as uid 0 (without capabilities) and\n"
		"                       see the host's files; by default, where serve is root, each\n"
		"                       runs under a uid of its own (%u and up) in a root of its\n"
		"                       own holding only its files (api/API.md, \"The VM jail\")\n"
		"  --vm-jail            the default (kept for scripts written when it was not)\n"
		"  --vm-uid-base N      the jail's uids: N+1..N+%u, group N (default %u;\n"
		"                       refused if a user or group of this host is in the range)\n"
		"  --pids-max N         process: processes and threads per sandbox when its template\n"
		"                       sets no pids_max (default 1024, 16..4194304)\n"
		"  --sandbox-disk-mib N process: each sandbox's writable layer is an ext4 file system\n"
		"                       of N MiB, its disk quota (a sparse image on a loop device;\n"
		"                       default 5120; 0: a directory of the state dir, no quota)\n"
		"  --egress             sandboxes whose policy lets anything through get\n"
		"                       an interface (10.201.0.0/16, NAT through this host; turns\n"
		"                       on IPv4 forwarding): E2B's allowInternetAccess (default on),\n"
		"                       allowOut and denyOut, a Mitos template's network.egress and\n"
		"                       allow_cidrs. Never this host, other sandboxes, IPv6, or\n"
		"                       private ranges unless allowed. Without it: loopback only\n"
		"  --dns IP             with --egress: the sandboxes' resolver (up to 3; default:\n"
		"                       this host's IPv4 resolvers), always reachable from them\n"
		"  --egress-conns N     with --egress: connections each sandbox may have open at\n"
		"                       once (default 4096, 16..1048576); more are dropped\n"
		"  --egress-rate N      with --egress: new connections and UDP flows (DNS queries\n"
		"                       too) each sandbox may open per second, N of them at once\n"
		"                       (default 200, 1..1000000); more are dropped\n"
		"  --state-dir DIR      sandbox registry and writable layers (default /var/lib/mitos)\n"
		"  --token-file FILE    every request must carry Authorization: Bearer <token>\n"
		"  --insecure-no-auth   allow a non-loopback listener without a token\n"
		"  --preview-domain D   preview URLs are http://<id>-<port>.D/ (a wildcard DNS name\n"
		"                       pointing here): an origin per sandbox. Without it they are\n"
		"                       http://HOST/preview/<id>/<port>/, all sandboxes on one origin\n"
		"  --preview-paths      with --preview-domain, serve the path form too (one origin\n"
		"                       for all: a sandbox's page can read the others' previews)\n"
		"  --images DIR         template images of tools/build-image (default\n"
		"                       ${MITOS_CACHE:-$HOME/.cache/mitos}/images); 'none': the python\n"
		"                       template runs on this host's / (read-only)\n"
		"  --agent PATH         mitos-agent binary (default: next to mitos-vmm)\n"
		"  --node-id TAG        cluster node tag, 1-16 of [a-z0-9]: sandbox ids become\n"
		"                       sb-<hex>-TAG so a router finds their node (docs/cluster.md)\n"
		"  --peers FILE         the cluster's node list (tools/cluster-config format); a GET\n"
		"                       /v1/sandboxes with X-Mitos-List-Scope: cluster lists them all\n"
		"  --drain              start draining (see SIGUSR1)\n"
		"  --header-timeout-ms N, --idle-timeout-ms N, --body-timeout-ms N,\n"
		"  --keepalive-ms N     Connect stream keepalive interval (default 15000)\n"
		"  --max-json-body N, --max-file-body N (bytes), --max-conns N, --max-sandboxes N\n"
		"  --default-timeout S  sandbox TTL when a fork does not give one (default 300)\n"
		"\n"
		"On start it prints the address it listens on (\"listening on http://HOST:PORT\")\n"
		"and the engine it runs, with the reason. SIGINT/SIGTERM stop it gracefully.\n"
		"SIGUSR1 drains the node: creates get 503 node_draining, live sandboxes run on\n"
		"until they end; SIGUSR2 takes creates again. /v1/health says \"draining\".\n",
		JAIL_UID_BASE + 1, JAIL_UIDS, JAIL_UID_BASE);
}

static int parse_listen(const char *s)
{
	const char *colon = strrchr(s, ':');
	if (!colon || colon == s)
		return -EINVAL;
	size_t hl = (size_t)(colon - s);
	const char *h = s;
	if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
		h++;
		hl -= 2;
	}
	if (hl >= sizeof(srv_cfg.listen_host))
		return -EINVAL;
	memcpy(srv_cfg.listen_host, h, hl);
	srv_cfg.listen_host[hl] = 0;
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end || port < 0 || port > 65535)
		return -EINVAL;
	srv_cfg.listen_port = (uint16_t)port;
	return 0;
}

static int load_token(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -errno;
	char buf[4096];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
		buf[--n] = 0;
	if (n < 8 || strpbrk(buf, " \t\r\n"))
		return -EINVAL;
	srv_cfg.token = strdup(buf);
	return srv_cfg.token ? 0 : -ENOMEM;
}

static bool addr_is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)ss;
		return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
	}
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)ss;
		return IN6_IS_ADDR_LOOPBACK(&a->sin6_addr);
	}
	return false;
}

static int open_listener(struct sockaddr_storage *ss, socklen_t *sl)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV | AI_PASSIVE };
	struct addrinfo *ai = NULL;
	char port[8];
	snprintf(port, sizeof(port), "%u", srv_cfg.listen_port);
	int rc = getaddrinfo(srv_cfg.listen_host, port, &hints, &ai);
	if (rc) {
		fprintf(stderr, "mitos-vmm serve: cannot resolve %s: %s\n", srv_cfg.listen_host, gai_strerror(rc));
		return -EINVAL;
	}
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*sl = ai->ai_addrlen;
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	freeaddrinfo(ai);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)ss, *sl) < 0 || listen(fd, 4096) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	*sl = sizeof(*ss);
	getsockname(fd, (struct sockaddr *)ss, sl);
	return fd;
}

static void arm_accept(void)
{
	if (listen_fd < 0 || accept_armed || shutting_down)
		return;
	io_uring_prep_multishot_accept(ur_sqe(&accept_op), listen_fd, NULL, NULL, SOCK_CLOEXEC);
	accept_armed = true;
}

static void accept_done(struct uop *op, int res, uint32_t flags)
{
	(void)op;
	if (!(flags & IORING_CQE_F_MORE))
		accept_armed = false;
	if (res >= 0) {
		if (shutting_down || listener_conn_count() >= srv_cfg.max_conns) {
			static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
				"Connection: close\r\nContent-Length: 128\r\n\r\n";
			char body[129];
			snprintf(body, sizeof(body), "%-128s",
				 "{\"error\":{\"code\":\"unavailable\",\"message\":\"too many connections\",\"cause\":\"\",\"remediation\":\"retry later\"}}");
			(void)!write(res, busy, sizeof(busy) - 1);
			(void)!write(res, body, 128);
			close(res);
		} else if (listener_conn_new(res) < 0) {
			close(res);
		}
	}
	/* EMFILE and friends: try again on the next tick rather than spin. */
	if (!accept_armed && res >= 0)
		arm_accept();
}

static void begin_shutdown(const char *why)
{
	if (shutting_down)
		return;
	shutting_down = true;
	fprintf(stderr, "mitos-vmm serve: %s: shutting down\n", why);
	if (listen_fd >= 0) {
		/* Cancels the multishot accept. */
		shutdown(listen_fd, SHUT_RDWR);
		close(listen_fd);
		listen_fd = -1;
	}
	listener_close_idle();
	sandboxes_shutdown();
	shutdown_deadline = ur_now_ms() + 10000;
}

static void arm_signal(void)
{
	io_uring_prep_read(ur_sqe(&sig_op), sig_fd, &sig_info, sizeof(sig_info), 0);
}

static void signal_done(struct uop *op, int res, uint32_t flags)
{
	(void)op; (void)flags;
	if (res == (int)sizeof(sig_info)) {
		if (sig_info.ssi_signo == SIGUSR1 || sig_info.ssi_signo == SIGUSR2) {
			node_set_draining(sig_info.ssi_signo == SIGUSR1);
			fprintf(stderr, "mitos-vmm serve: %s\n", node_draining()
				? "SIGUSR1: draining: refusing creates, live sandboxes run on"
				: "SIGUSR2: taking creates again");
		} else {
			begin_shutdown(sig_info.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
		}
	}
	if (!ur_stopping())
		arm_signal();
}

static void main_tick(struct ur_ticker *t, uint64_t now)
{
	(void)t;
	listener_tick(now);
	if (!shutting_down) {
		arm_accept();
		return;
	}
	listener_close_idle();
	if ((sandboxes_idle() && listener_conn_count() == 0) || now > shutdown_deadline)
		ur_stop();
}

#define OPT_AGENT 1000
#define OPT_HDR_TIMEOUT 1001
#define OPT_IDLE_TIMEOUT 1002
#define OPT_BODY_TIMEOUT 1003
#define OPT_KEEPALIVE 1004
#define OPT_MAX_JSON 1005
#define OPT_MAX_FILE 1006
#define OPT_MAX_CONNS 1007
#define OPT_MAX_SB 1008
#define OPT_DEF_TIMEOUT 1009
#define OPT_IMAGES 1010
#define OPT_KVM_POOL 1011
#define OPT_PIDS_MAX 1012
#define OPT_NODE_ID 1013
#define OPT_PEERS 1014
#define OPT_DRAIN 1015
#define OPT_DISK_MIB 1016
#define OPT_PREVIEW_PATHS 1017
#define OPT_NO_VM_JAIL 1018
#define OPT_VM_JAIL 1020
#define OPT_VM_UID_BASE 1019
#define OPT_EGRESS 1021
#define OPT_DNS 1022
#define OPT_EGRESS_CONNS 1023
#define OPT_EGRESS_RATE 1030

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || !*s || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

int cmd_serve(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "engine", required_argument, NULL, 'e' },
		{ "state-dir", required_argument, NULL, 's' },
		{ "token-file", required_argument, NULL, 't' },
		{ "preview-domain", required_argument, NULL, 'p' },
		{ "preview-paths", no_argument, NULL, OPT_PREVIEW_PATHS },
		{ "insecure-no-auth", no_argument, NULL, 'i' },
		{ "agent", required_argument, NULL, OPT_AGENT },
		{ "header-timeout-ms", required_argument, NULL, OPT_HDR_TIMEOUT },
		{ "idle-timeout-ms", required_argument, NULL, OPT_IDLE_TIMEOUT },
		{ "body-timeout-ms", required_argument, NULL, OPT_BODY_TIMEOUT },
		{ "keepalive-ms", required_argument, NULL, OPT_KEEPALIVE },
		{ "max-json-body", required_argument, NULL, OPT_MAX_JSON },
		{ "max-file-body", required_argument, NULL, OPT_MAX_FILE },
		{ "max-conns", required_argument, NULL, OPT_MAX_CONNS },
		{ "max-sandboxes", required_argument, NULL, OPT_MAX_SB },
		{ "default-timeout", required_argument, NULL, OPT_DEF_TIMEOUT },
		{ "images", required_argument, NULL, OPT_IMAGES },
		{ "kvm-pool", required_argument, NULL, OPT_KVM_POOL },
		{ "no-vm-jail", no_argument, NULL, OPT_NO_VM_JAIL },
		{ "vm-jail", no_argument, NULL, OPT_VM_JAIL }, /* the default now; kept for scripts */
		{ "vm-uid-base", required_argument, NULL, OPT_VM_UID_BASE },
		{ "pids-max", required_argument, NULL, OPT_PIDS_MAX },
		{ "sandbox-disk-mib", required_argument, NULL, OPT_DISK_MIB },
		{ "egress", no_argument, NULL, OPT_EGRESS },
		{ "dns", required_argument, NULL, OPT_DNS },
		{ "egress-conns", required_argument, NULL, OPT_EGRESS_CONNS },
		{ "egress-rate", required_argument, NULL, OPT_EGRESS_RATE },
		{ "node-id", required_argument, NULL, OPT_NODE_ID },
		{ "peers", required_argument, NULL, OPT_PEERS },
		{ "drain", no_argument, NULL, OPT_DRAIN },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	memset(&srv_cfg, 0, sizeof(srv_cfg));
	strcpy(srv_cfg.listen_host, "127.0.0.1");
	srv_cfg.listen_port = 8080;
	srv_cfg.state_dir = "/var/lib/mitos";
	srv_cfg.header_timeout_ms = 10000;
	srv_cfg.idle_timeout_ms = 60000;
	srv_cfg.body_timeout_ms = 30000;
	srv_cfg.keepalive_ms = 15000;
	srv_cfg.max_json_body = 1u << 20;
	srv_cfg.max_file_body = 64u << 20;
	srv_cfg.max_conns = 16384;
	srv_cfg.max_sandboxes = 1024;
	srv_cfg.default_timeout_s = 300;
	srv_cfg.kvm_pool = 2;
	optind = 1;
	bool egress_tuned = false;
	int c;
	uint64_t v;
	int li;
	while ((li = -1, c = getopt_long(argc, argv, "h", opts, &li)) != -1) {
		int bad = 0;
		switch (c) {
		case 'l': bad = parse_listen(optarg); break;
		case 'e':
			if (strcmp(optarg, "kvm") && strcmp(optarg, "process"))
				bad = -EINVAL;
			srv_cfg.engine = optarg;
			break;
		case 's': srv_cfg.state_dir = optarg; break;
		case 't': srv_cfg.token_file = optarg; break;
		case 'p': srv_cfg.preview_domain = optarg; break;
		case OPT_PREVIEW_PATHS: srv_cfg.preview_paths = true; break;
		case 'i': srv_cfg.insecure_no_auth = true; break;
		case OPT_AGENT: srv_cfg.agent_path = optarg; break;
		case OPT_IMAGES: srv_cfg.images_dir = optarg; break;
		case OPT_NODE_ID: bad = node_set_tag(optarg); break;
		case OPT_PEERS: srv_cfg.peers_file = optarg; break;
		case OPT_DRAIN: node_set_draining(true); break;
		case OPT_NO_VM_JAIL: engine_kvm_set_jail(false); break;
		case OPT_VM_JAIL: engine_kvm_set_jail(true); break;
		case OPT_VM_UID_BASE:
			bad = parse_u64(optarg, 1, UINT32_MAX - JAIL_UIDS - 1, &v);
			jail_set_uid_base((uint32_t)v);
			break;
		case OPT_KVM_POOL: bad = parse_u64(optarg, 0, 64, &v); srv_cfg.kvm_pool = (unsigned)v; break;
		case OPT_PIDS_MAX:
			bad = parse_u64(optarg, 16, 1u << 22, &v);
			engine_process_set_pids_max((unsigned)v);
			break;
		case OPT_DISK_MIB:
			/* 0, or enough for ext4's own metadata and a little work. */
			bad = parse_u64(optarg, 0, 1u << 24, &v) || (v && v < 64) ? -EINVAL : 0;
			engine_process_set_disk_mib((unsigned)v);
			break;
		case OPT_EGRESS: srv_cfg.egress = true; break;
		case OPT_DNS:
			if (srv_cfg.ndns == 3)
				bad = -E2BIG;
			else
				srv_cfg.dns[srv_cfg.ndns++] = optarg;
			break;
		case OPT_EGRESS_CONNS:
			egress_tuned = true;
			bad = parse_u64(optarg, 16, 1u << 20, &v);
			sandbox_net_set_max_conns((unsigned)v);
			break;
		case OPT_EGRESS_RATE:
			egress_tuned = true;
			bad = parse_u64(optarg, 1, 1000000, &v);
			sandbox_net_set_rate((unsigned)v);
			break;
		case OPT_HDR_TIMEOUT: bad = parse_u64(optarg, 100, 3600000, &v); srv_cfg.header_timeout_ms = (uint32_t)v; break;
		case OPT_IDLE_TIMEOUT: bad = parse_u64(optarg, 100, 86400000, &v); srv_cfg.idle_timeout_ms = (uint32_t)v; break;
		case OPT_BODY_TIMEOUT: bad = parse_u64(optarg, 100, 3600000, &v); srv_cfg.body_timeout_ms = (uint32_t)v; break;
		case OPT_KEEPALIVE: bad = parse_u64(optarg, 100, 3600000, &v); srv_cfg.keepalive_ms = (uint32_t)v; break;
		case OPT_MAX_JSON: bad = parse_u64(optarg, 1024, 1u << 30, &v); srv_cfg.max_json_body = v; break;
		case OPT_MAX_FILE: bad = parse_u64(optarg, 1024, 1ull << 40, &v); srv_cfg.max_file_body = v; break;
		case OPT_MAX_CONNS: bad = parse_u64(optarg, 1, 1u << 20, &v); srv_cfg.max_conns = (unsigned)v; break;
		case OPT_MAX_SB: bad = parse_u64(optarg, 1, 1u << 20, &v); srv_cfg.max_sandboxes = (unsigned)v; break;
		case OPT_DEF_TIMEOUT: bad = parse_u64(optarg, 1, 86400 * 30, &v); srv_cfg.default_timeout_s = (uint32_t)v; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
		if (bad) {
			fprintf(stderr, "mitos-vmm serve: bad value for --%s%s: '%s' (see --help)\n",
				li >= 0 ? opts[li].name : "?", c == OPT_NODE_ID ? " (1-16 of a-z 0-9)" : "", optarg);
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if ((srv_cfg.ndns || egress_tuned) && !srv_cfg.egress) {
		fprintf(stderr, "mitos-vmm serve: --dns, --egress-conns and --egress-rate need --egress (without it "
			"sandboxes have loopback only)\n");
		return EXIT_USAGE;
	}
	if (optind < argc) {
		fprintf(stderr, "mitos-vmm serve: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (srv_cfg.token_file) {
		int rc = load_token(srv_cfg.token_file);
		if (rc) {
			fprintf(stderr, "mitos-vmm serve: cannot use token file %s: %s\n", srv_cfg.token_file,
				rc == -EINVAL ? "the token must be at least 8 characters with no whitespace inside"
					      : strerror(-rc));
			return EXIT_USAGE;
		}
		api_redact_set_token(srv_cfg.token);
	}

	signal(SIGPIPE, SIG_IGN);
	/* SIGCHLD blocked, never read (children are watched through pidfds). Deliverable, a
	 * child's exit leaves it pending on this thread, and io_uring task_work run then
	 * cannot create an io-wq thread (copy_process: -ERESTARTNOINTR): Linux 6.1 cancels
	 * the request that waited for one. Children start with an empty mask (kvm_proc.c,
	 * engine_process.c). */
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	struct rlimit rl;
	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	struct sockaddr_storage ss;
	socklen_t sl;
	listen_fd = open_listener(&ss, &sl);
	if (listen_fd < 0) {
		fprintf(stderr, "mitos-vmm serve: cannot listen on %s:%u: %s\n", srv_cfg.listen_host,
			srv_cfg.listen_port, strerror(-listen_fd));
		return EXIT_VMM_ERROR;
	}
	srv_cfg.loopback = addr_is_loopback(&ss);
	if (!srv_cfg.loopback && !srv_cfg.token && !srv_cfg.insecure_no_auth) {
		fprintf(stderr, "mitos-vmm serve: refusing to listen on non-loopback address %s without a token.\n"
			"  remediation: pass --token-file FILE (clients send Authorization: Bearer <token>),\n"
			"  or --insecure-no-auth if this network is trusted\n", srv_cfg.listen_host);
		close(listen_fd);
		return EXIT_USAGE;
	}

	struct mitos_err e = { 0 };
	int rc = sandboxes_init(&e);
	if (rc) {
		fprintf(stderr, "mitos-vmm serve: %s\n", e.msg);
		close(listen_fd);
		return EXIT_VMM_ERROR;
	}
	rc = preview_init(srv_cfg.state_dir, &e);
	if (rc) {
		fprintf(stderr, "mitos-vmm serve: %s\n", e.msg);
		sandboxes_exit();
		close(listen_fd);
		return EXIT_VMM_ERROR;
	}

	rc = ur_init(4096, 1024, 16384);
	if (rc) {
		fprintf(stderr, "mitos-vmm serve: io_uring: %s\n", strerror(-rc));
		sandboxes_exit();
		close(listen_fd);
		return EXIT_VMM_ERROR;
	}
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGUSR2);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	/* Non-blocking, so the ring polls it rather than parking an io-wq thread on it
	 * (see sb_ready_done). */
	sig_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	sig_op.fn = signal_done;
	arm_signal();
	accept_op.fn = accept_done;
	arm_accept();
	main_ticker.fn = main_tick;
	ur_add_ticker(&main_ticker);
	sandboxes_start();
	e2b_records_load();

	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (ss.ss_family == AF_INET) {
		inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof(host));
		port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	} else {
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof(host));
		port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	if (node_tag()[0])
		printf("node: %s%s\n", node_tag(), node_draining() ? " (draining)" : "");
	if (!srv_cfg.preview_domain)
		srv_cfg.preview_paths = true;
	if (srv_cfg.preview_paths)
		printf("WARNING: previews by path (/preview/<id>/<port>/) put every sandbox on one origin: a page "
		       "one sandbox serves can read the previews of others that the same browser has open. "
		       "%s\n", srv_cfg.preview_domain ? "Drop --preview-paths to give each its own origin only."
						   : "Set --preview-domain (a wildcard DNS name) for an origin per sandbox.");
	printf("auth: %s\n", srv_cfg.token ? "bearer token required" :
	       srv_cfg.loopback ? "none (loopback listener)" : "NONE (--insecure-no-auth)");
	printf(ss.ss_family == AF_INET6 ? "listening on http://[%s]:%u\n" : "listening on http://%s:%u\n",
	       host, port);
	fflush(stdout);

	rc = ur_run();
	forward_exit();
	listener_close_all();
	sandboxes_exit();
	ur_exit();
	listener_free_zombies();
	agent_conn_free_all();
	close(sig_fd);
	if (listen_fd >= 0)
		close(listen_fd);
	free(srv_cfg.token);
	api_redact_set_token(NULL);
	preview_exit();
	fprintf(stderr, "mitos-vmm serve: stopped\n");
	return rc ? EXIT_VMM_ERROR : 0;
}
