#include "api/engines/sandbox_net.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/init_net.h"
#include "api/engines/spawn_watch.h"
#include "api/engines/teardown.h"
#include "api/sandbox/net_policy.h"

#define NET_BASE 0x0ac90000u /* 10.201.0.0/16 */
#define NET_SLOTS 16384      /* one /30 each */
#define SLOT_RECORD "/net-slot"
/* Never reachable from a sandbox unless its allowlist names them. */
#define SPECIAL4                                                                                                   \
	"0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.0.0.0/24, "         \
	"192.0.2.0/24, 192.168.0.0/16, 198.18.0.0/15, 198.51.100.0/24, 203.0.113.0/24, 224.0.0.0/3"

extern char **environ;

static bool enabled;
static char slots_dir[4200];
static char nft_path[64];
static char conntrack_path[64];
static unsigned ndns;
static char dns[SANDBOX_NET_DNS_MAX][16];
static unsigned cursor;
static unsigned max_conns = SANDBOX_NET_CONNS;
static unsigned rate = SANDBOX_NET_RATE;

void sandbox_net_set_max_conns(unsigned n)
{
	max_conns = n;
}

void sandbox_net_set_rate(unsigned per_second)
{
	rate = per_second;
}

/* The conntrack timeouts of sandboxes' flows (in a table's block) and the rules that
 * give them to what comes in on ifname (a prerouting chain after conntrack's: a flow's
 * entry takes them while it is new, not yet confirmed). */
static void timeout_policies(FILE *f)
{
	fprintf(f, "\tct timeout sandbox_tcp { protocol tcp; l3proto ip; policy = { time_wait: %u }; }\n"
		   "\tct timeout sandbox_udp { protocol udp; l3proto ip; policy = { unreplied: %u }; }\n",
		SANDBOX_NET_TIME_WAIT_S, SANDBOX_NET_UDP_UNREPLIED_S);
}

static void timeout_rules(FILE *f, const char *table, const char *ifname)
{
	fprintf(f, "add rule %s prerouting iifname \"%s\" meta l4proto tcp ct timeout set \"sandbox_tcp\"\n"
		   "add rule %s prerouting iifname \"%s\" meta l4proto udp ct timeout set \"sandbox_udp\"\n",
		table, ifname, table, ifname);
}

bool sandbox_net_enabled(void)
{
	return enabled;
}

static void addr_str(uint32_t a, char *out, size_t n)
{
	snprintf(out, n, "%u.%u.%u.%u", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255);
}

static uint32_t slot_addr(unsigned slot, unsigned k)
{
	return NET_BASE + slot * 4 + k;
}

/* Runs tool (nft, conntrack) with args to its end: its exit status, or -errno. */
static int run_tool(char *tool, const char *a1, const char *a2, const char *a3, const char *a4)
{
	if (!tool[0])
		return -ENOENT;
	char *argv[] = { tool, (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL };
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	pid_t pid;
	int rc = posix_spawn(&pid, tool, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (rc)
		return -rc;
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int run_nft(const char *a1, const char *a2, const char *a3, const char *a4)
{
	return run_tool(nft_path, a1, a2, a3, a4);
}

/* Forgets the host's connection tracking of a sandbox's address, both ways: a flow it
 * had would otherwise still let answers in (the forward rule takes established flows)
 * to the next sandbox at that address, or past a change of its rules that forbids
 * their source (an outside sender keeps a UDP flow alive as long as it likes). */
static void forget_flows(unsigned slot)
{
	char a[16];
	addr_str(slot_addr(slot, 2), a, sizeof(a));
	run_tool(conntrack_path, "-D", "-s", a, NULL);
	run_tool(conntrack_path, "-D", "-d", a, NULL);
}

/* IPv4 resolvers of a resolv.conf other than loopback ones (a stub on this host is
 * out of a sandbox's reach). */
static void read_resolvers(const char *path)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return;
	char line[256];
	while (ndns < SANDBOX_NET_DNS_MAX && fgets(line, sizeof(line), f)) {
		char ip[64];
		struct in_addr a;
		if (sscanf(line, " nameserver %63s", ip) != 1 || inet_pton(AF_INET, ip, &a) != 1 ||
		    (ntohl(a.s_addr) >> 24) == 127)
			continue;
		inet_ntop(AF_INET, &a, dns[ndns++], sizeof(dns[0]));
	}
	fclose(f);
}

/* An address of this host in 10.201.0.0/16 other than a sandbox's pair: the
 * sandboxes' routes would shadow it. */
static int subnet_clash(char *ifname, size_t n)
{
	struct ifaddrs *ifa0;
	if (getifaddrs(&ifa0) < 0)
		return 0;
	int clash = 0;
	for (struct ifaddrs *ifa = ifa0; ifa && !clash; ifa = ifa->ifa_next) {
		if (!ifa->ifa_addr || ifa->ifa_addr->sa_family != AF_INET || !strncmp(ifa->ifa_name, "msb", 3))
			continue;
		uint32_t a = ntohl(((struct sockaddr_in *)ifa->ifa_addr)->sin_addr.s_addr);
		if ((a & 0xffff0000u) == NET_BASE) {
			snprintf(ifname, n, "%s", ifa->ifa_name);
			clash = 1;
		}
	}
	freeifaddrs(ifa0);
	return clash;
}

#define TABLE "inet mitos-egress"

/* The one table of every sandbox's rules, made (or brought up to date, its sets'
 * elements kept) at start: what a sandbox may reach is elements of its sets, keyed by
 * its address, so a create or a delete adds or removes a few elements whatever the
 * number of sandboxes, and a packet costs set lookups, not a chain per sandbox. An
 * msb* interface whose sandbox has no elements yet (or any more) gets nothing through. */
static int write_base(const char *path)
{
	FILE *f = fopen(path, "we");
	if (!f)
		return -errno;
	fprintf(f, "table " TABLE " {\n"
		   "\tset dns { type ipv4_addr; }\n"
		   "\tset special { type ipv4_addr; flags interval; }\n"
		   "\tset src { type ifname . ipv4_addr; }\n"
		   "\tset internet { type ipv4_addr; }\n"
		   "\tset allow { type ipv4_addr . ipv4_addr; flags interval; }\n"
		   "\tset deny { type ipv4_addr . ipv4_addr; flags interval; }\n"
		   "\tset conns { type ipv4_addr; flags dynamic; size 65536; }\n"
		   "\tset rate { type ipv4_addr; flags dynamic, timeout; timeout 1m; size 65536; }\n");
	timeout_policies(f);
	fprintf(f, "\tchain prerouting { type filter hook prerouting priority filter; policy accept; }\n"
		   "\tchain input { type filter hook input priority filter; policy accept; }\n"
		   "\tchain forward { type filter hook forward priority filter; policy accept; }\n"
		   "\tchain output { type filter hook output priority filter; policy accept; }\n"
		   "\tchain postrouting { type nat hook postrouting priority srcnat; policy accept; }\n"
		   "\tchain sandbox_checks { }\n\tchain sandbox_out { }\n}\n");
	static const char *chains[] = { "prerouting", "input", "forward", "output", "postrouting", "sandbox_checks",
					"sandbox_out" };
	for (size_t i = 0; i < sizeof(chains) / sizeof(chains[0]); i++)
		fprintf(f, "flush chain " TABLE " %s\n", chains[i]);
	fprintf(f, "flush set " TABLE " dns\nflush set " TABLE " special\n");
	for (unsigned i = 0; i < ndns; i++)
		fprintf(f, "add element " TABLE " dns { %s }\n", dns[i]);
	fprintf(f, "add element " TABLE " special { " SPECIAL4 " }\n");
	char conns[96], new_rate[128];
	snprintf(conns, sizeof(conns), "sandbox_checks ct state new add @conns { ip saddr ct count over %u } drop",
		 max_conns);
	snprintf(new_rate, sizeof(new_rate),
		 "sandbox_checks ct state new add @rate { ip saddr limit rate over %u/second burst %u packets } drop",
		 rate, rate);
	const char *rules[] = {
		/* Whatever a sandbox sends: its own address, and new flows within its count
		 * and rate (DNS too: each query is one). */
		"sandbox_checks meta nfproto != ipv4 drop",
		"sandbox_checks iifname . ip saddr != @src drop",
		conns,
		new_rate,
		/* To this host: only DNS, where the resolver is this host. */
		"input iifname \"msb*\" ct state established,related accept",
		"input iifname \"msb*\" jump sandbox_checks",
		"input iifname \"msb*\" ip daddr @dns meta l4proto { tcp, udp } th dport 53 accept",
		"input iifname \"msb*\" drop",
		/* Into a sandbox: only answers to its own connections. */
		"forward oifname \"msb*\" ct state established,related accept",
		"forward oifname \"msb*\" drop",
		"forward iifname \"msb*\" jump sandbox_out",
		"output oifname \"msb*\" ct state established,related accept",
		"output oifname \"msb*\" drop",
		/* Out of one, in this order. */
		"sandbox_out jump sandbox_checks",
		"sandbox_out ip daddr @dns meta l4proto { tcp, udp } th dport 53 accept",
		"sandbox_out ip saddr . ip daddr @allow accept",
		"sandbox_out ip saddr . ip daddr @deny drop",
		"sandbox_out ip daddr @special drop",
		"sandbox_out ip saddr @internet accept",
		"sandbox_out drop",
		"postrouting ip saddr 10.201.0.0/16 oifname != \"msb*\" masquerade",
	};
	for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++)
		fprintf(f, "add rule " TABLE " %s\n", rules[i]);
	timeout_rules(f, TABLE, "msb*");
	int rc = ferror(f) ? -EIO : 0;
	if (fclose(f) && !rc)
		rc = -errno;
	return rc;
}

static void cidr_elements(FILE *f, const char *verb, const char *set, const char *sb, const struct net_cidr *c,
			  unsigned n)
{
	if (!n)
		return;
	fprintf(f, "%s element " TABLE " %s { ", verb, set);
	for (unsigned i = 0; i < n; i++) {
		char s[24];
		net_cidr_format(&c[i], s, sizeof(s));
		fprintf(f, "%s%s . %s", i ? ", " : "", sb, s);
	}
	fprintf(f, " }\n");
}

/* verb ("add" or "delete") every element of the sandbox at address sb on dev. */
static void sandbox_elements(FILE *f, const char *verb, const char *dev, const char *sb, const struct net_policy *p)
{
	/* Nothing at all: not even DNS, nor its source address. */
	if (!net_policy_any(p))
		return;
	fprintf(f, "%s element " TABLE " src { \"%s\" . %s }\n", verb, dev, sb);
	if (p->internet)
		fprintf(f, "%s element " TABLE " internet { %s }\n", verb, sb);
	cidr_elements(f, verb, "allow", sb, p->allow, p->nallow);
	cidr_elements(f, verb, "deny", sb, p->deny, p->ndeny);
}

static int write_resolv(const char *path)
{
	FILE *f = fopen(path, "we");
	if (!f)
		return -errno;
	fprintf(f, "# written by mitos-vmm serve: this node's resolvers\n");
	for (unsigned i = 0; i < ndns; i++)
		fprintf(f, "nameserver %s\n", dns[i]);
	return fclose(f) ? -errno : 0;
}

static bool slots_in_use(void)
{
	DIR *d = opendir(slots_dir);
	if (!d)
		return false;
	struct dirent *de;
	bool used = false;
	while (!used && (de = readdir(d)))
		used = de->d_name[0] != '.';
	closedir(d);
	return used;
}

int sandbox_net_configure(const char *state_dir, bool egress, const char *const *dnsv, unsigned n, char *info,
			  size_t infolen, struct mitos_err *e)
{
	info[0] = 0;
	/* Sandboxes an earlier serve started with --egress are released by this one too. */
	snprintf(slots_dir, sizeof(slots_dir), "%s/net-slots", state_dir);
	const char *cands[] = { "/usr/sbin/nft", "/sbin/nft" }, *ccands[] = { "/usr/sbin/conntrack", "/sbin/conntrack" };
	for (size_t i = 0; i < 2; i++) {
		if (!nft_path[0] && access(cands[i], X_OK) == 0)
			snprintf(nft_path, sizeof(nft_path), "%s", cands[i]);
		if (!conntrack_path[0] && access(ccands[i], X_OK) == 0)
			snprintf(conntrack_path, sizeof(conntrack_path), "%s", ccands[i]);
	}
	/* Slots are taken round robin from here (a freed one last): a serve that starts
	 * again does not start where the last began, with the addresses freed latest. */
	unsigned r = 0;
	if (getrandom(&r, sizeof(r), 0) == sizeof(r))
		cursor = r % NET_SLOTS;
	if (!egress) {
		/* Rules no sandbox needs any more are not left on the host. */
		if (!slots_in_use())
			run_nft("delete", "table", "inet", "mitos-egress");
		return 0;
	}
	if (geteuid() != 0)
		return mitos_err_set(e, -EPERM, "--egress needs serve to run as root (it makes each sandbox's "
				     "network interface and firewall table)");
	if (!nft_path[0])
		return mitos_err_set(e, -ENOENT, "--egress needs nft: apt-get install nftables");
	if (!conntrack_path[0])
		fprintf(stderr, "mitos-vmm serve: --egress without conntrack (apt-get install conntrack): the tracked "
			"flows of a freed sandbox address are not forgotten, and answers on them may reach the next "
			"sandbox there\n");
	if (run_nft("list", "tables", NULL, NULL) != 0)
		return mitos_err_set(e, -ENOTSUP, "--egress: `nft list tables` fails: this kernel has no nftables "
				     "(nf_tables) support");
	char ifname[IF_NAMESIZE + 1];
	if (subnet_clash(ifname, sizeof(ifname)))
		return mitos_err_set(e, -EADDRINUSE, "--egress: 10.201.0.0/16, the sandboxes' addresses, is in use "
				     "on this host (%s)", ifname);
	ndns = 0;
	for (unsigned i = 0; i < n && i < SANDBOX_NET_DNS_MAX; i++) {
		struct in_addr a;
		if (inet_pton(AF_INET, dnsv[i], &a) != 1)
			return mitos_err_set(e, -EINVAL, "--dns %.64s: not an IPv4 address", dnsv[i]);
		snprintf(dns[ndns++], sizeof(dns[0]), "%s", dnsv[i]);
	}
	if (!n) {
		read_resolvers("/etc/resolv.conf");
		if (!ndns)
			read_resolvers("/run/systemd/resolve/resolv.conf");
	}
	if (mkdir(slots_dir, 0700) < 0 && errno != EEXIST)
		return mitos_err_set(e, -errno, "mkdir %s: %s", slots_dir, strerror(errno));
	size_t k = 0;
	int fd = open("/proc/sys/net/ipv4/ip_forward", O_RDWR | O_CLOEXEC);
	char c = '1';
	if (fd < 0 || read(fd, &c, 1) != 1) {
		if (fd >= 0)
			close(fd);
		return mitos_err_set(e, -ENOTSUP, "--egress: cannot read net.ipv4.ip_forward");
	}
	if (c == '0') {
		if (pwrite(fd, "1", 1, 0) != 1) {
			int err = errno;
			close(fd);
			return mitos_err_set(e, -err, "--egress: cannot turn on IPv4 forwarding: %s", strerror(err));
		}
		k += (size_t)snprintf(info, infolen, "turned on IPv4 forwarding (net.ipv4.ip_forward=1); ");
	}
	close(fd);
	char list[64] = "";
	for (unsigned i = 0; i < ndns; i++)
		snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? " " : "", dns[i]);
	if (k < infolen)
		snprintf(info + k, infolen - k, "sandboxes may reach the network as their policy allows "
			 "(10.201.0.0/16, NAT through this host, %u connections each), DNS: %s", max_conns,
			 ndns ? list : "none found (--dns IP)");
	char base[4300];
	snprintf(base, sizeof(base), "%s/net-egress.nft", state_dir);
	int rc = write_base(base);
	if (rc)
		return mitos_err_set(e, rc, "--egress: cannot write %s: %s", base, strerror(-rc));
	if ((rc = run_nft("-f", base, NULL, NULL)) != 0)
		return mitos_err_set(e, -EIO, "--egress: nft -f %s failed (exit %d): this kernel lacks an nftables "
				     "feature the sandboxes' table needs (sets of concatenated intervals, NAT)", base, rc);
	enabled = true;
	return 0;
}

/* STATE/net-slots/N: the slot, holding the removal of its sandbox's elements. */
static void slot_path(char *out, size_t n, unsigned slot)
{
	snprintf(out, n, "%s/%u", slots_dir, slot);
}

/* The slot the sandbox in dir was given (DIR/net-slot), or NET_SLOTS when none. */
static unsigned slot_of(const char *dir)
{
	char path[4300];
	snprintf(path, sizeof(path), "%s" SLOT_RECORD, dir);
	FILE *f = fopen(path, "re");
	unsigned slot = NET_SLOTS;
	if (f) {
		if (fscanf(f, "%u", &slot) != 1 || slot >= NET_SLOTS)
			slot = NET_SLOTS;
		fclose(f);
	}
	return slot;
}

static int slot_take(unsigned *slot)
{
	char path[4300];
	/* Round robin: a slot just freed is taken last, after its conntrack entries have
	 * had time to expire. kvm workers take slots too: the cursor is only a hint, the
	 * file's O_EXCL decides. */
	unsigned from = __atomic_load_n(&cursor, __ATOMIC_RELAXED);
	for (unsigned i = 0; i < NET_SLOTS; i++) {
		unsigned s = (from + i) % NET_SLOTS;
		slot_path(path, sizeof(path), s);
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd >= 0) {
			close(fd);
			__atomic_store_n(&cursor, s + 1, __ATOMIC_RELAXED);
			*slot = s;
			return 0;
		}
		if (errno != EEXIST)
			return -errno;
	}
	return -ENOSPC;
}

static void slot_free(unsigned slot)
{
	char path[4300];
	slot_path(path, sizeof(path), slot);
	unlink(path);
}

/* Writes what sandbox_elements gives into path. */
static int write_elements(const char *path, int flags, const char *verb, const char *dev, const char *sb,
			  const struct net_policy *p)
{
	int fd = open(path, flags | O_WRONLY | O_CLOEXEC, 0600);
	FILE *f = fd < 0 ? NULL : fdopen(fd, "w");
	if (!f) {
		int err = errno;
		if (fd >= 0)
			close(fd);
		return -err;
	}
	sandbox_elements(f, verb, dev, sb, p);
	int rc = ferror(f) ? -EIO : 0;
	if (fclose(f) && !rc)
		rc = -errno;
	return rc;
}

/* The sandbox in dir gets a slot: recorded in dir, the slot holding the removal of
 * its elements, dir/net.nft their addition. */
static int slot_prepare(const char *dir, const struct net_policy *p, unsigned *out, struct mitos_err *e)
{
	if (!enabled)
		return mitos_err_set(e, -ENOTSUP, "this serve gives sandboxes no network (start it with --egress)");
	unsigned slot = 0;
	int rc = slot_take(&slot);
	if (rc)
		return mitos_err_set(e, rc, "no sandbox network address left: %s", strerror(-rc));
	char path[4300];
	snprintf(path, sizeof(path), "%s" SLOT_RECORD, dir);
	FILE *f = fopen(path, "we");
	if (!f || fprintf(f, "%u\n", slot) < 0 || fclose(f)) {
		rc = -errno;
		slot_free(slot);
		return mitos_err_set(e, rc ? rc : -EIO, "cannot record the sandbox's network slot: %s", strerror(-rc));
	}
	char sb[16], dev[16];
	addr_str(slot_addr(slot, 2), sb, sizeof(sb));
	snprintf(dev, sizeof(dev), "msb%u", slot);
	/* The slot holds its undoing: whichever serve frees it removes these. */
	slot_path(path, sizeof(path), slot);
	rc = write_elements(path, O_TRUNC, "delete", dev, sb, p);
	if (!rc) {
		snprintf(path, sizeof(path), "%s/net.nft", dir);
		rc = write_elements(path, O_CREAT | O_TRUNC, "add", dev, sb, p);
	}
	if (rc)
		return mitos_err_set(e, rc, "cannot write the sandbox's network rules: %s", strerror(-rc));
	*out = slot;
	return 0;
}

int sandbox_net_prepare(const char *dir, const struct net_policy *p, char *arg, size_t arglen, struct mitos_err *e)
{
	unsigned slot;
	int rc = slot_prepare(dir, p, &slot, e);
	char path[4300];
	snprintf(path, sizeof(path), "%s/resolv.conf", dir);
	if (!rc && (rc = write_resolv(path)))
		return mitos_err_set(e, rc, "cannot write the sandbox's resolv.conf: %s", strerror(-rc));
	if (rc)
		return rc;
	char host[16], sb[16];
	addr_str(slot_addr(slot, 1), host, sizeof(host));
	addr_str(slot_addr(slot, 2), sb, sizeof(sb));
	snprintf(arg, arglen, "msb%u,%s,%s", slot, host, sb);
	return 0;
}

struct net_update {
	unsigned slot;
	engine_done_fn done;
	void *ctx;
};

static void update_path(char *out, size_t n, unsigned slot, const char *what)
{
	snprintf(out, n, "%s/.%u.%s", slots_dir, slot, what);
}

static void forget_flows_call(void *arg)
{
	forget_flows((unsigned)(uintptr_t)arg);
}

static void update_exited(void *ctx, int status)
{
	struct net_update *u = ctx;
	char next[4300], slot[4300], cmds[4300];
	update_path(next, sizeof(next), u->slot, "next");
	update_path(cmds, sizeof(cmds), u->slot, "nft");
	slot_path(slot, sizeof(slot), u->slot);
	int rc = status < 0 ? status : WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
	/* The slot's undoing follows the rules in force. */
	if (!rc && rename(next, slot) < 0)
		rc = -errno;
	/* Flows the old rules let in end (the new rules replace them whole), off the loop. */
	if (!rc)
		teardown_call(forget_flows_call, (void *)(uintptr_t)u->slot);
	unlink(next);
	unlink(cmds);
	u->done(u->ctx, rc);
	free(u);
}

int sandbox_net_update(const char *dir, const struct net_policy *p, engine_done_fn done, void *ctx,
		       struct mitos_err *e)
{
	char path[4300], cmds[4300], next[4300];
	unsigned slot = slot_of(dir);
	if (slot >= NET_SLOTS)
		return mitos_err_set(e, -ENOENT, "it was started without a network interface");
	if (!nft_path[0])
		return mitos_err_set(e, -ENOTSUP, "nft is not installed");
	char sb[16], dev[16];
	addr_str(slot_addr(slot, 2), sb, sizeof(sb));
	snprintf(dev, sizeof(dev), "msb%u", slot);
	/* One transaction: the rules in force out, the new ones in. */
	slot_path(path, sizeof(path), slot);
	update_path(cmds, sizeof(cmds), slot, "nft");
	update_path(next, sizeof(next), slot, "next");
	int rc = 0;
	FILE *in = fopen(path, "re"), *out = fopen(cmds, "we");
	if (!in || !out) {
		rc = -errno;
	} else {
		char buf[4096];
		size_t n;
		while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
			fwrite(buf, 1, n, out);
		sandbox_elements(out, "add", dev, sb, p);
		if (ferror(in) || ferror(out))
			rc = -EIO;
	}
	if (in)
		fclose(in);
	if (out && fclose(out) && !rc)
		rc = -errno;
	if (!rc)
		rc = write_elements(next, O_CREAT | O_TRUNC, "delete", dev, sb, p);
	struct net_update *u = rc ? NULL : calloc(1, sizeof(*u));
	if (!rc && !u)
		rc = -ENOMEM;
	if (!rc) {
		*u = (struct net_update){ .slot = slot, .done = done, .ctx = ctx };
		char *argv[] = { nft_path, "-f", cmds, NULL };
		rc = spawn_watch(nft_path, argv, -1, NULL, 0, update_exited, u);
	}
	if (rc) {
		free(u);
		unlink(cmds);
		unlink(next);
		return mitos_err_set(e, rc, "cannot update its rules: %s", strerror(-rc));
	}
	return 0;
}

/* ---- kvm: a VM's TAP in a network namespace of its own ---- */

#define VM_GUEST 0xac100002u   /* 172.16.0.2: every guest (children wake up with it) */
#define VM_GATEWAY 0xac100001u /* 172.16.0.1: the TAP's end */

void sandbox_net_vm_cmdline(char *out, size_t n)
{
	char guest[16], gw[16];
	addr_str(VM_GUEST, guest, sizeof(guest));
	addr_str(VM_GATEWAY, gw, sizeof(gw));
	int k = snprintf(out, n, "mitos.net=%s,%s", guest, gw);
	for (unsigned i = 0; i < ndns && k > 0 && (size_t)k < n; i++)
		k += snprintf(out + k, n - (size_t)k, "%s%s", i ? "," : " mitos.dns=", dns[i]);
}

static int tap_create(void)
{
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
	strcpy(ifr.ifr_name, "tap0");
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		int err = errno;
		close(fd);
		return -err;
	}
	return fd;
}

/* Inside the VM's namespace: its guest's traffic forwarded out through the pair and
 * masqueraded to the pair's address, the host's table doing the rest as for a
 * process sandbox; nothing forwarded in but answers. This namespace tracks the guest's
 * flows too, those the host then drops among them: the same rate and timeouts bound
 * what it holds. */
static int vm_nat(const char *dir)
{
	char path[4300];
	snprintf(path, sizeof(path), "%s/vm-net.nft", dir);
	FILE *f = fopen(path, "we");
	if (!f)
		return -errno;
	char guest[16];
	addr_str(VM_GUEST, guest, sizeof(guest));
	fprintf(f, "table ip mitos-vm {\n");
	timeout_policies(f);
	/* Nothing of this namespace is the guest's to reach (no flow of it tracked here). */
	fprintf(f, "\tchain prerouting {\n\t\ttype filter hook prerouting priority filter; policy accept;\n\t}\n"
		   "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
		   "\t\tiifname \"tap0\" drop\n\t}\n"
		   "\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n"
		   "\t\tiifname \"tap0\" ct state new limit rate over %u/second burst %u packets drop\n"
		   "\t\tiifname \"tap0\" oifname \"eth0\" ip saddr %s accept\n"
		   "\t\tiifname \"eth0\" oifname \"tap0\" ct state established,related accept\n\t}\n"
		   "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
		   "\t\toifname \"eth0\" masquerade\n\t}\n}\n", rate, rate, guest);
	timeout_rules(f, "ip mitos-vm", "tap0");
	if (fclose(f))
		return -errno;
	int fd = open("/proc/sys/net/ipv4/ip_forward", O_WRONLY | O_CLOEXEC);
	int rc = fd < 0 || write(fd, "1", 1) != 1 ? -errno : 0;
	if (fd >= 0)
		close(fd);
	return rc ? rc : run_nft("-f", path, NULL, NULL) ? -EIO : 0;
}

int sandbox_net_vm_tap(const char *dir, const struct net_policy *p, struct mitos_err *e)
{
	int here = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (here < 0)
		return mitos_err_set(e, -errno, "cannot open this thread's network namespace: %s", strerror(errno));
	if (unshare(CLONE_NEWNET) < 0) {
		int err = errno;
		close(here);
		return mitos_err_set(e, -err, "cannot make the VM's network namespace: %s", strerror(err));
	}
	int vmns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	int tap = vmns < 0 ? -errno : tap_create();
	int rc = tap < 0 ? tap : 0;
	const char *step = "make its TAP";
	if (!rc) {
		init_net_no_ipv6("all");
		init_net_no_ipv6("default");
		init_net_no_ipv6("tap0");
		step = "address its TAP";
		rc = init_net_addr_up("tap0", VM_GATEWAY);
	}
	if (!rc && net_policy_any(p)) {
		char dev[16], path[4300];
		unsigned slot = 0;
		step = "give it an address";
		rc = slot_prepare(dir, p, &slot, e);
		snprintf(dev, sizeof(dev), "msb%u", slot);
		/* The host's side: its elements, then the pair. */
		if (!rc && setns(here, CLONE_NEWNET) < 0)
			rc = -errno;
		snprintf(path, sizeof(path), "%s/net.nft", dir);
		if (!rc && run_nft("-f", path, NULL, NULL) != 0)
			step = "add its rules to this host's table", rc = -EIO;
		if (!rc && (rc = init_net_host_side(dev, slot_addr(slot, 1), vmns)))
			step = "make its pair";
		if (!rc && setns(vmns, CLONE_NEWNET) < 0)
			rc = -errno;
		if (!rc && (rc = init_net_sandbox_side(slot_addr(slot, 2), slot_addr(slot, 1))))
			step = "address its end of the pair";
		if (!rc && (rc = vm_nat(dir)))
			step = "forward and masquerade its guest";
	}
	/* Whatever happened, this thread goes back where it was. */
	if (setns(here, CLONE_NEWNET) < 0) {
		fprintf(stderr, "mitos-vmm serve: a kvm worker cannot return to its network namespace: %s\n",
			strerror(errno));
		abort();
	}
	close(here);
	if (vmns >= 0)
		close(vmns);
	if (rc) {
		if (tap >= 0)
			close(tap);
		if (!e->msg[0])
			mitos_err_set(e, rc, "cannot %s: %s", step, strerror(-rc));
		return rc;
	}
	return tap;
}

/* Whether the table still holds the sandbox on dev (its src element). */
static bool table_holds(const char *dev)
{
	char cmd[128], line[512], want[32];
	snprintf(cmd, sizeof(cmd), "%s list set " TABLE " src 2>/dev/null", nft_path);
	snprintf(want, sizeof(want), "\"%s\" .", dev);
	FILE *f = popen(cmd, "re");
	if (!f)
		return true;
	bool held = false;
	while (fgets(line, sizeof(line), f))
		held |= strstr(line, want) != NULL;
	return pclose(f) == 0 && held;
}

static void release_slot(void *arg)
{
	unsigned slot = (unsigned)(uintptr_t)arg;
	char dev[16], path[4300];
	snprintf(dev, sizeof(dev), "msb%u", slot);
	slot_path(path, sizeof(path), slot);
	/* The pair goes with the sandbox's network namespace, which the kernel frees a
	 * little after its last process. */
	struct timespec ts = { 0, 5 * 1000 * 1000 };
	for (int i = 0; i < 600 && if_nametoindex(dev); i++)
		nanosleep(&ts, NULL);
	if (if_nametoindex(dev)) {
		fprintf(stderr, "mitos-vmm serve: %s outlived its sandbox: its address stays taken\n", dev);
		return;
	}
	/* The delete fails whole where the elements are not there (a start that ended
	 * before loading them, a table made anew since): then there is nothing to undo.
	 * Elements left behind would be a later sandbox's at this address. A change of
	 * its rules that was on its way replaces this file when it ends: read again. */
	for (int i = 0; i < 3; i++) {
		if (run_nft("-f", path, NULL, NULL) == 0 || !table_holds(dev)) {
			forget_flows(slot);
			slot_free(slot);
			return;
		}
		struct timespec wait = { 0, 100 * 1000 * 1000 };
		nanosleep(&wait, NULL);
	}
	fprintf(stderr, "mitos-vmm serve: cannot remove the rules of %s: its address stays taken\n", dev);
}

void sandbox_net_exit(void)
{
	if (enabled && !slots_in_use())
		run_nft("delete", "table", "inet", "mitos-egress");
	enabled = false;
}

void sandbox_net_release(const char *dir)
{
	unsigned slot = slot_of(dir);
	char path[4300];
	snprintf(path, sizeof(path), "%s" SLOT_RECORD, dir);
	unlink(path);
	if (slot < NET_SLOTS)
		teardown_call(release_slot, (void *)(uintptr_t)slot);
}
