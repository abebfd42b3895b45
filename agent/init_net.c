#include "agent/init_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
/* Before the kernel headers, which then leave its definitions alone. */
#include <net/if.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/route.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define SANDBOX_DEV "eth0"

struct nlbuf {
	char b[512];
	size_t len;
};

static struct rtattr *attr_put(struct nlbuf *m, unsigned short type, const void *data, size_t n)
{
	struct rtattr *a = (struct rtattr *)(m->b + NLMSG_ALIGN(m->len));
	size_t need = NLMSG_ALIGN(m->len) + RTA_LENGTH(n);
	if (need > sizeof(m->b))
		return NULL;
	a->rta_type = type;
	a->rta_len = (unsigned short)RTA_LENGTH(n);
	if (n)
		memcpy(RTA_DATA(a), data, n);
	m->len = need;
	return a;
}

/* An attribute holding the ones put after it, up to attr_end. */
static void attr_end(struct nlbuf *m, struct rtattr *nest)
{
	nest->rta_len = (unsigned short)(m->b + m->len - (char *)nest);
}

static int addr_up(int fd, const char *dev, uint32_t addr)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", dev);
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(addr);
	if (ioctl(fd, SIOCSIFADDR, &ifr) < 0)
		return -errno;
	sin->sin_addr.s_addr = htonl(0xfffffffcu);
	if (ioctl(fd, SIOCSIFNETMASK, &ifr) < 0)
		return -errno;
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		return -errno;
	ifr.ifr_flags |= IFF_UP;
	return ioctl(fd, SIOCSIFFLAGS, &ifr) < 0 ? -errno : 0;
}

static int with_inet_socket(int (*fn)(int fd, const char *dev, uint32_t a, uint32_t b), const char *dev, uint32_t a,
			    uint32_t b)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int rc = fn(fd, dev, a, b);
	close(fd);
	return rc;
}

static int host_up(int fd, const char *dev, uint32_t addr, uint32_t unused)
{
	(void)unused;
	return addr_up(fd, dev, addr);
}

static int sandbox_up(int fd, const char *dev, uint32_t addr, uint32_t gw)
{
	int rc = addr_up(fd, dev, addr);
	if (rc)
		return rc;
	struct rtentry rt;
	memset(&rt, 0, sizeof(rt));
	struct sockaddr_in *s = (struct sockaddr_in *)&rt.rt_gateway;
	s->sin_family = AF_INET;
	s->sin_addr.s_addr = htonl(gw);
	((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
	((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = (char *)dev;
	return ioctl(fd, SIOCADDRT, &rt) < 0 ? -errno : 0;
}


int init_net_host_side(const char *host_dev, uint32_t host_addr, int sandbox_ns)
{
	struct nlbuf m = { .len = NLMSG_LENGTH(sizeof(struct ifinfomsg)) };
	memset(m.b, 0, sizeof(m.b));
	struct nlmsghdr *h = (struct nlmsghdr *)m.b;
	h->nlmsg_type = RTM_NEWLINK;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
	h->nlmsg_seq = 1;
	struct rtattr *info, *data, *peer;
	struct ifinfomsg pinfo = { .ifi_family = AF_UNSPEC };
	if (!attr_put(&m, IFLA_IFNAME, host_dev, strlen(host_dev) + 1) || !(info = attr_put(&m, IFLA_LINKINFO, NULL, 0)) ||
	    !attr_put(&m, IFLA_INFO_KIND, "veth", 5) || !(data = attr_put(&m, IFLA_INFO_DATA, NULL, 0)) ||
	    !(peer = attr_put(&m, VETH_INFO_PEER, &pinfo, sizeof(pinfo))) ||
	    !attr_put(&m, IFLA_IFNAME, SANDBOX_DEV, sizeof(SANDBOX_DEV)) ||
	    !attr_put(&m, IFLA_NET_NS_FD, &sandbox_ns, sizeof(sandbox_ns)))
		return -EMSGSIZE;
	attr_end(&m, peer);
	attr_end(&m, data);
	attr_end(&m, info);
	h->nlmsg_len = (uint32_t)m.len;

	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return -errno;
	struct sockaddr_nl to = { .nl_family = AF_NETLINK };
	int rc = 0;
	if (sendto(fd, m.b, m.len, 0, (struct sockaddr *)&to, sizeof(to)) < 0) {
		rc = -errno;
	} else {
		char ack[1024];
		ssize_t n = recv(fd, ack, sizeof(ack), 0);
		struct nlmsghdr *r = (struct nlmsghdr *)ack;
		if (n < 0)
			rc = -errno;
		else if ((size_t)n < NLMSG_LENGTH(sizeof(struct nlmsgerr)) || r->nlmsg_type != NLMSG_ERROR)
			rc = -EPROTO;
		else
			rc = ((struct nlmsgerr *)NLMSG_DATA(r))->error;
	}
	close(fd);
	if (rc)
		return rc;
	init_net_no_ipv6(host_dev);
	return with_inet_socket(host_up, host_dev, host_addr, 0);
}

int init_net_addr_up(const char *dev, uint32_t addr)
{
	return with_inet_socket(host_up, dev, addr, 0);
}

int init_net_sandbox_side(uint32_t addr, uint32_t gw)
{
	return with_inet_socket(sandbox_up, SANDBOX_DEV, addr, gw);
}

void init_net_no_ipv6(const char *dev)
{
	char path[96];
	snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/disable_ipv6", dev);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		(void)!write(fd, "1", 1);
		close(fd);
	}
}
