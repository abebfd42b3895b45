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
	int hdr = TAP_VNET_HDR_LEN;
	if (!r && ioctl(fd, TUNSETVNETHDRSZ, &hdr))
		r = mitos_err_set(e, -errno, "TAP %s: TUNSETVNETHDRSZ %d: %s", name, hdr,
				  strerror(errno));
	/* A TAP left attached by a previous owner may still have offloads on; the guest
	 * has negotiated nothing yet. */
	if (!r && (r = tap_set_offload(fd, 0)))
		mitos_err_set(e, r, "TAP %s: TUNSETOFFLOAD: %s", name, strerror(-r));
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
