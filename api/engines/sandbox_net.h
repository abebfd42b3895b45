/* Egress for sandboxes (serve --egress). A process sandbox whose policy
 * (api/sandbox/net_policy.h) lets anything through gets one end of a veth pair as its
 * eth0, on a /30 of its own out of 10.201.0.0/16; the other end (msbN) stays on this
 * host, which routes and masquerades the sandbox's IPv4 traffic through one nftables
 * table for all sandboxes (inet mitos-egress) that lets through, in order: its DNS
 * queries to the node's resolvers; what its allowlist names; not what its denylist
 * names; public addresses when it may reach the internet. This host itself, other
 * sandboxes, private and special ranges (unless allowed), a forged source and all
 * IPv6 are refused, and nothing reaches the sandbox that does not answer its own
 * connection. A sandbox without such a policy has no interface but loopback.
 *
 * The table's rules are fixed; a sandbox is elements of its sets, keyed by its address
 * (and its interface, for the source check), so an msb* interface without elements
 * gets nothing through, and a create costs the same with 1 or 1000 sandboxes. serve
 * writes the elements (STATE/sandboxes/ID/net.nft) and the sandbox's resolv.conf;
 * mitos-sandbox-init adds them before it makes the pair. The slot (STATE/net-slots/N)
 * holds their removal and is freed once they and the pair are gone.
 *
 * A kvm sandbox's VM gets the same, one step further out: its guest (172.16.0.2, as
 * every guest restored from its template) sits behind a TAP in a network namespace
 * serve makes for that VM, which is what the pair joins to this host and where the
 * guest is masqueraded to the pair's end (sandbox_net_vm_tap). */
#ifndef MITOS_API_SANDBOX_NET_H
#define MITOS_API_SANDBOX_NET_H

#include <stdbool.h>
#include <stddef.h>

#include "api/engines/engine.h"
#include "lib/error.h"

struct net_policy;

#define SANDBOX_NET_DNS_MAX 3
/* Connections a sandbox may have open through this host at once (its conntrack
 * entries): one tenant cannot fill the host's table, which every sandbox and the host
 * itself need. serve --egress-conns. */
#define SANDBOX_NET_CONNS 4096
void sandbox_net_set_max_conns(unsigned n);
/* New connections (and UDP flows: DNS queries too) a sandbox may open per second, as
 * many at once (a burst of the rate); more are dropped. The count above leaves out
 * closed ones, which the host tracks for a while yet (its TCP TIME_WAIT, held to
 * SANDBOX_NET_TIME_WAIT_S for sandboxes' flows, and unanswered UDP,
 * SANDBOX_NET_UDP_UNREPLIED_S): without a rate a sandbox that opens and closes
 * connections fast could fill the host's table all the same. What it can hold is then
 * about conns + rate x 10 s. serve --egress-rate. */
#define SANDBOX_NET_RATE 200
#define SANDBOX_NET_TIME_WAIT_S 10
#define SANDBOX_NET_UDP_UNREPLIED_S 10
void sandbox_net_set_rate(unsigned per_second);

/* At start, egress or not (sandboxes an earlier serve gave a network are released by
 * this one). egress, serve --egress [--dns IP]...: checks that this host can do it
 * (root, nft, the subnet free, IPv4 forwarding: turned on if off, and said so in
 * info); without dns the sandboxes get the IPv4 resolvers of /etc/resolv.conf (or
 * systemd-resolved's upstreams). */
int sandbox_net_configure(const char *state_dir, bool egress, const char *const *dns, unsigned ndns, char *info,
			  size_t infolen, struct mitos_err *e);
bool sandbox_net_enabled(void);

/* A sandbox starting in dir with policy p: takes its slot, writes dir/net.nft and
 * dir/resolv.conf, and fills arg ("msbN,HOST_ADDR,SANDBOX_ADDR") for
 * mitos-sandbox-init --net. */
int sandbox_net_prepare(const char *dir, const struct net_policy *p, char *arg, size_t arglen, struct mitos_err *e);

/* kvm: the guest's side on the kernel command line of a template built with a network
 * device ("mitos.net=GUEST,GATEWAY mitos.dns=..."; agent/init.c reads it). */
void sandbox_net_vm_cmdline(char *out, size_t n);

/* kvm, on a worker thread: a network namespace for one VM holding its TAP (returned
 * attached, for the VMM to adopt) with the guest's gateway; with p letting anything
 * through, also a pair to this host from a slot recorded in dir, as a process
 * sandbox's, and the guest masqueraded to its end. The namespace lives as long as the
 * TAP's descriptor. dir and p may be NULL: a TAP that leads nowhere (a template's
 * build, a sandbox allowed nothing). -errno with e on failure. */
int sandbox_net_vm_tap(const char *dir, const struct net_policy *p, struct mitos_err *e);

/* Replaces the rules of the running sandbox in dir by p's, in one nftables
 * transaction off the loop; done runs on the loop with 0 or -errno, unless this fails
 * at once: -ENOENT when it has no interface (started with nothing allowed). */
int sandbox_net_update(const char *dir, const struct net_policy *p, engine_done_fn done, void *ctx,
		       struct mitos_err *e);

/* At exit, once every sandbox's release ran: the table goes when no sandbox (of a
 * crash, say) still needs it. */
void sandbox_net_exit(void);

/* The sandbox in dir is gone (whichever serve started it): its table and slot are
 * removed on the teardown thread. Nothing when it had no network. */
void sandbox_net_release(const char *dir);

#endif
