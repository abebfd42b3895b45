#include "api/engines/sandbox_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
static unsigned ndns;
static char dns[SANDBOX_NET_DNS_MAX][16];
static unsigned cursor;

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

/* Runs nft with args to its end: its exit status, or -errno. */
static int run_nft(const char *a1, const char *a2, const char *a3, const char *a4)
{
	if (!nft_path[0])
		return -ENOENT;
	char *argv[] = { nft_path, (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL };
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	pid_t pid;
	int rc = posix_spawn(&pid, nft_path, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (rc)
		return -rc;
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
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

int sandbox_net_configure(const char *state_dir, bool egress, const char *const *dnsv, unsigned n, char *info,
			  size_t infolen, struct mitos_err *e)
{
	info[0] = 0;
	/* Sandboxes an earlier serve started with --egress are released by this one too. */
	snprintf(slots_dir, sizeof(slots_dir), "%s/net-slots", state_dir);
	const char *cands[] = { "/usr/sbin/nft", "/sbin/nft" };
	for (size_t i = 0; i < 2 && !nft_path[0]; i++)
		if (access(cands[i], X_OK) == 0)
			snprintf(nft_path, sizeof(nft_path), "%s", cands[i]);
	if (!egress)
		return 0;
	if (geteuid() != 0)
		return mitos_err_set(e, -EPERM, "--egress needs serve to run as root (it makes each sandbox's "
				     "network interface and firewall table)");
	if (!nft_path[0])
		return mitos_err_set(e, -ENOENT, "--egress needs nft: apt-get install nftables");
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
			 "(10.201.0.0/16, NAT through this host), DNS: %s", ndns ? list : "none found (--dns IP)");
	enabled = true;
	return 0;
}

static int slot_take(unsigned *slot)
{
	char path[4300];
	for (unsigned i = 0; i < NET_SLOTS; i++) {
		/* Round robin: a slot just freed is taken last, after its conntrack entries
		 * have had time to expire. */
		unsigned s = (cursor + i) % NET_SLOTS;
		snprintf(path, sizeof(path), "%s/%u", slots_dir, s);
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd >= 0) {
			close(fd);
			cursor = s + 1;
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
	snprintf(path, sizeof(path), "%s/%u", slots_dir, slot);
	unlink(path);
}

static void cidr_elements(FILE *f, const char *name, const struct net_cidr *c, unsigned n)
{
	fprintf(f, "\tset %s {\n\t\ttype ipv4_addr; flags interval; auto-merge;\n", name);
	for (unsigned i = 0; i < n; i++) {
		char s[24];
		net_cidr_format(&c[i], s, sizeof(s));
		fprintf(f, "%s%s", i ? ", " : "\t\telements = { ", s);
	}
	fprintf(f, "%s\t}\n", n ? " }\n" : "");
}

/* This host's side of the sandbox's rules, replacing whatever table of the name a
 * crash left (the first two lines make it exist so the delete succeeds). */
static int write_rules(const char *path, unsigned slot, const struct net_policy *p)
{
	FILE *f = fopen(path, "we");
	if (!f)
		return -errno;
	char sb[16], dev[16];
	addr_str(slot_addr(slot, 2), sb, sizeof(sb));
	snprintf(dev, sizeof(dev), "msb%u", slot);
	fprintf(f, "table inet mitos-sb%u\ndelete table inet mitos-sb%u\ntable inet mitos-sb%u {\n", slot, slot, slot);
	fprintf(f, "\tset dns {\n\t\ttype ipv4_addr;\n");
	for (unsigned i = 0; i < ndns; i++)
		fprintf(f, "%s%s", i ? ", " : "\t\telements = { ", dns[i]);
	fprintf(f, "%s\t}\n", ndns ? " }\n" : "");
	cidr_elements(f, "allow", p->allow, p->nallow);
	cidr_elements(f, "deny", p->deny, p->ndeny);
	fprintf(f, "\tset special {\n\t\ttype ipv4_addr; flags interval;\n\t\telements = { " SPECIAL4 " }\n\t}\n");
	/* To this host: only DNS, if the resolver is here. */
	fprintf(f,
		"\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
		"\t\tiifname \"%s\" ct state established,related accept\n"
		"\t\tiifname \"%s\" ip daddr @dns meta l4proto { tcp, udp } th dport 53 accept\n"
		"\t\tiifname \"%s\" drop\n\t}\n",
		dev, dev, dev);
	fprintf(f,
		"\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n"
		"\t\toifname \"%s\" ct state established,related accept\n"
		"\t\toifname \"%s\" drop\n"
		"\t\tiifname \"%s\" meta nfproto != ipv4 drop\n"
		"\t\tiifname \"%s\" ip saddr != %s drop\n"
		"\t\tiifname \"%s\" ip daddr @dns meta l4proto { tcp, udp } th dport 53 accept\n"
		"\t\tiifname \"%s\" ip daddr @allow accept\n"
		"\t\tiifname \"%s\" ip daddr @deny drop\n"
		"\t\tiifname \"%s\" ip daddr @special drop\n"
		"\t\tiifname \"%s\" %s\n\t}\n",
		dev, dev, dev, dev, sb, dev, dev, dev, dev, dev, p->internet ? "accept" : "drop");
	/* Nothing of this host opens a connection into the sandbox either. */
	fprintf(f,
		"\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n"
		"\t\toifname \"%s\" ct state established,related accept\n"
		"\t\toifname \"%s\" drop\n\t}\n",
		dev, dev);
	fprintf(f,
		"\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
		"\t\tip saddr %s oifname != \"%s\" masquerade\n\t}\n}\n",
		sb, dev);
	int rc = ferror(f) ? -EIO : 0;
	if (fclose(f) && !rc)
		rc = -errno;
	return rc;
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

int sandbox_net_prepare(const char *dir, const struct net_policy *p, char *arg, size_t arglen, struct mitos_err *e)
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
	snprintf(path, sizeof(path), "%s/net.nft", dir);
	rc = write_rules(path, slot, p);
	if (!rc) {
		snprintf(path, sizeof(path), "%s/resolv.conf", dir);
		rc = write_resolv(path);
	}
	if (rc)
		return mitos_err_set(e, rc, "cannot write the sandbox's network rules: %s", strerror(-rc));
	char host[16], sb[16];
	addr_str(slot_addr(slot, 1), host, sizeof(host));
	addr_str(slot_addr(slot, 2), sb, sizeof(sb));
	snprintf(arg, arglen, "msb%u,%s,%s", slot, host, sb);
	return 0;
}

static void release_slot(void *arg)
{
	unsigned slot = (unsigned)(uintptr_t)arg;
	char table[32], dev[16];
	snprintf(table, sizeof(table), "mitos-sb%u", slot);
	snprintf(dev, sizeof(dev), "msb%u", slot);
	/* The pair goes with the sandbox's network namespace, which the kernel frees a
	 * little after its last process: the slot is free once both are gone. */
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	for (int i = 0; i < 300 && if_nametoindex(dev); i++)
		nanosleep(&ts, NULL);
	/* Fails harmlessly where a start ended before loading it. */
	run_nft("delete", "table", "inet", table);
	/* A pair still there keeps its slot taken rather than shared. */
	if (!if_nametoindex(dev))
		slot_free(slot);
}

void sandbox_net_release(const char *dir)
{
	char path[4300];
	snprintf(path, sizeof(path), "%s" SLOT_RECORD, dir);
	FILE *f = fopen(path, "re");
	if (!f)
		return;
	unsigned slot;
	int ok = fscanf(f, "%u", &slot) == 1 && slot < NET_SLOTS;
	fclose(f);
	unlink(path);
	if (!ok)
		return;
	teardown_call(release_slot, (void *)(uintptr_t)slot);
}
