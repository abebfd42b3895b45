/* mitos-sandbox-init's network set-up (serve --egress; api/engines/sandbox_net.h):
 * a veth pair whose one end is the sandbox's eth0 and whose other end stays on the
 * host, addressed as a /30, the sandbox routing everything through the host's end. */
#ifndef MITOS_AGENT_INIT_NET_H
#define MITOS_AGENT_INIT_NET_H

#include <stdint.h>

/* In the host's network namespace: makes the pair host_dev / "eth0" with eth0 moved
 * into the namespace sandbox_ns (an fd), and gives host_dev host_addr/30, up. */
int init_net_host_side(const char *host_dev, uint32_t host_addr, int sandbox_ns);

/* In the sandbox's namespace: eth0 gets addr/30, up, and the default route via gw. */
int init_net_sandbox_side(uint32_t addr, uint32_t gw);

/* dev gets addr/30 and is brought up (a TAP's or a pair's end). */
int init_net_addr_up(const char *dev, uint32_t addr);

/* IPv6 off for dev ("all" and "default" too): IPv6 is not routed to sandboxes. */
void init_net_no_ipv6(const char *dev);

#endif
