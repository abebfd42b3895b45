#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

bool tap_name_valid(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n >= IFNAMSIZ || !strcmp(name, ".") || !strcmp(name, ".."))
		return false;
	for (const char *p = name; *p; p++)
		if (*p == '/' || *p == ':' || *p <= ' ' || *p == 0x7f)
			return false;
	return true;
}

static int attach_error(const char *name, int err, struct mitos_err *e)
{
	switch (err) {
	case EINVAL:
		return mitos_err_set(e, -EINVAL, "network interface %s is not a TAP device (or the "
				     "kernel refused IFF_VNET_HDR): give --net tap= a TAP, e.g. one "
				     "made by tools/netns-sandbox", name);
	case EBUSY:
		return mitos_err_set(e, -EBUSY, "TAP %s is already attached to another process (a "
				     "second VM?): give each VM its own TAP", name);
	case EPERM:
		return mitos_err_set(e, -EPERM, "not allowed to attach TAP %s: run as root, or "
				     "create the TAP owned by this user (ip tuntap add dev %s mode tap "
				     "user $USER)", name, name);
	default:
		return mitos_err_set(e, -err, "cannot attach TAP %s: TUNSETIFF: %s", name,
				     strerror(err));
	}
}

/* What an attached TAP needs before a guest negotiates anything. */
static int tap_ready(int fd, const char *name, struct mitos_err *e)
{
	int hdr = TAP_VNET_HDR_LEN;
	if (ioctl(fd, TUNSETVNETHDRSZ, &hdr))
		return mitos_err_set(e, -errno, "TAP %s: TUNSETVNETHDRSZ %d: %s", name, hdr, strerror(errno));
	/* A TAP left attached by a previous owner may still have offloads on; the guest
	 * has negotiated nothing yet. */
	int r = tap_set_offload(fd, 0);
	return r ? mitos_err_set(e, r, "TAP %s: TUNSETOFFLOAD: %s", name, strerror(-r)) : 0;
}

int tap_adopt(int fd, struct mitos_err *e)
{
	int own = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (own < 0)
		return mitos_err_set(e, -errno, "the TAP's descriptor: %s", strerror(errno));
	int flags = fcntl(own, F_GETFL);
	int r = flags < 0 || fcntl(own, F_SETFL, flags | O_NONBLOCK) < 0 ? -errno : 0;
	if (r)
		mitos_err_set(e, r, "the TAP's descriptor: %s", strerror(-r));
	if (!r)
		r = tap_ready(own, "(given as a descriptor)", e);
	if (r) {
		close(own);
		return r == -ENOTTY || r == -EBADFD ? mitos_err_set(e, -EINVAL, "the network device's descriptor "
								     "is not an attached TAP") : r;
	}
	return own;
}

int tap_open(const char *name, struct mitos_err *e)
{
	if (!name || !tap_name_valid(name))
		return mitos_err_set(e, -EINVAL, "'%s' is not a valid interface name (1 to %d "
				     "characters, no '/', ':' or spaces)", name ? name : "",
				     IFNAMSIZ - 1);
	if (if_nametoindex(name) == 0)
		return mitos_err_set(e, -ENODEV, "no network interface %s in this network "
				     "namespace: create it first (tools/netns-sandbox create NAME, "
				     "then run the VM with ip netns exec mitos-NAME), or ip tuntap "
				     "add dev %s mode tap", name, name);
	int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;
		return mitos_err_set(e, -err, "cannot open /dev/net/tun: %s (is the tun module "
				     "loaded, and /dev/net/tun inside the VM's jail?)", strerror(err));
	}
	struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
	memcpy(ifr.ifr_name, name, strlen(name));
	int r = 0;
	if (ioctl(fd, TUNSETIFF, &ifr))
		r = attach_error(name, errno, e);
	if (!r)
		r = tap_ready(fd, name, e);
	if (r) {
		close(fd);
		return r;
	}
	return fd;
}

int tap_set_offload(int fd, unsigned flags)
{
	return ioctl(fd, TUNSETOFFLOAD, flags) ? -errno : 0;
}
