/* TAP interfaces as virtio-net back ends: attach to an existing TAP so that every read
 * and write is one Ethernet frame behind the 12-byte virtio 1.x net header, and tell
 * the kernel which offloads the frame's reader (the guest) can take. */
#ifndef MITOS_TAP_H
#define MITOS_TAP_H

#include <stdbool.h>

#include "lib/error.h"

/* struct virtio_net_hdr_v1: what TUNSETVNETHDRSZ is set to. */
#define TAP_VNET_HDR_LEN 12

/* Whether `name` is something the kernel could call an interface: 1..15 bytes, not "."
 * or "..", no '/', ':' or white space. */
bool tap_name_valid(const char *name);

/* Opens /dev/net/tun and attaches it to the existing TAP `name` of this network
 * namespace (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, header size TAP_VNET_HDR_LEN),
 * non-blocking and close-on-exec, with every offload off. Returns the fd, or -errno and
 * a message with a remedy in e: -ENODEV no such interface (it is never created here:
 * an unconnected TAP would swallow the guest's traffic), -EINVAL not a TAP, -EBUSY
 * attached elsewhere, -EPERM not allowed. */
int tap_open(const char *name, struct mitos_err *e);

/* The same for a TAP another process attached (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
 * and handed over as fd: a non-blocking close-on-exec duplicate, set up as tap_open
 * sets up its own; -EINVAL when fd is no attached TAP. */
int tap_adopt(int fd, struct mitos_err *e);

/* TUN_F_* offloads the reader can take (TUN_F_CSUM: partially checksummed frames;
 * TUN_F_TSO4/6/_ECN: TCP segments up to 64 KiB, which need TUN_F_CSUM). 0 or -errno:
 * -EINVAL when the kernel lacks one of them, -ENOTTY (or similar) when fd is not a TAP. */
int tap_set_offload(int fd, unsigned flags);

#endif
