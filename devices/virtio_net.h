/* virtio-net (virtio 1.2 section 5.1) over a TAP: one receive and one transmit queue,
 * the MAC and link status in config space, mergeable receive buffers, and checksum and
 * TSO offloads handed through to the TAP, so a 64 KiB TCP segment crosses the host
 * boundary in one read or write. Frames move between the TAP and the guest's own
 * buffers with readv/writev (no copy). The device loop watches the TAP through an
 * epoll fd of the device's own (ops->host_fds), so that receiving can pause while the
 * guest has no buffers without the loop spinning on a readable TAP. */
#ifndef MITOS_VIRTIO_NET_H
#define MITOS_VIRTIO_NET_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/error.h"
#include "lib/guest_mem.h"
#include "virtio_mmio.h"

#define VIRTIO_ID_NET 1

/* Feature bits. */
#define VIRTIO_NET_F_CSUM        0
#define VIRTIO_NET_F_GUEST_CSUM  1
#define VIRTIO_NET_F_MAC         5
#define VIRTIO_NET_F_GUEST_TSO4  7
#define VIRTIO_NET_F_GUEST_TSO6  8
#define VIRTIO_NET_F_GUEST_ECN   9
#define VIRTIO_NET_F_HOST_TSO4   11
#define VIRTIO_NET_F_HOST_TSO6   12
#define VIRTIO_NET_F_HOST_ECN    13
#define VIRTIO_NET_F_MRG_RXBUF   15
#define VIRTIO_NET_F_STATUS      16

#define VIRTIO_NET_S_LINK_UP     1

/* Queues: receive 0, transmit 1. */
#define VIRTIO_NET_RXQ 0
#define VIRTIO_NET_TXQ 1
#define VIRTIO_NET_QUEUE_SIZE 256
/* struct virtio_net_hdr_v1, in front of every frame both ways. */
#define VIRTIO_NET_HDR_LEN 12
#define VIRTIO_NET_HDR_NUM_BUFFERS 10   /* offset of num_buffers in it */

/* Offsets in the config space. */
#define VIRTIO_NET_CFG_MAC    0
#define VIRTIO_NET_CFG_STATUS 6
#define VIRTIO_NET_CFG_MAX_VQ_PAIRS 8

#define VIRTIO_NET_MAC_LEN 6
/* Locally administered, unicast; the address tools/netns-sandbox's guest side expects. */
#define VIRTIO_NET_DEFAULT_MAC { 0x06, 0x00, 0xac, 0x10, 0x00, 0x02 }

struct virtio_net_opts {
	const char *tap;                 /* name of an existing TAP in this netns, or NULL */
	bool has_fd;                     /* or an attached TAP, given open (the device dups it) */
	int fd;
	uint8_t mac[VIRTIO_NET_MAC_LEN];
};

/* What went through; drops are frames the device discarded (no room in the guest's
 * buffers, a transmit chain without a whole header, the TAP refusing a frame). */
struct virtio_net_stats {
	uint64_t rx_frames, rx_bytes, rx_dropped;
	uint64_t tx_frames, tx_bytes, tx_dropped;
};

/* Attaches the TAP (tap_open) and returns the transport object whose ops are
 * virtio-net's; NULL and a message in e on failure. */
struct virtio_device *virtio_net_create(const struct guest_mem *mem, uint64_t mmio_base,
					unsigned irq, const struct virtio_net_opts *o,
					struct mitos_err *e);
/* The same over an fd that already reads and writes one frame per call behind a
 * VIRTIO_NET_HDR_LEN-byte header, as an attached TAP does (the unit tests pass one end
 * of a SOCK_SEQPACKET socketpair). Offloads are offered only if TUNSETOFFLOAD works on
 * it. The device owns fd from then on, also on failure. */
struct virtio_device *virtio_net_create_fd(const struct guest_mem *mem, uint64_t mmio_base,
					   unsigned irq, int fd, const uint8_t mac[VIRTIO_NET_MAC_LEN],
					   struct mitos_err *e);
/* Frees the device, its TAP fd and its epoll fd; d may be NULL. Also ops->destroy. */
void virtio_net_destroy(struct virtio_device *d);

/* Sets the link-status bit the guest reads (VIRTIO_NET_S_LINK_UP) and, when it changes
 * on a running device, raises the config-change interrupt so the guest notices a new
 * link (after a fork, say). While the link is down the device neither receives nor
 * sends. Takes the device lock. */
void virtio_net_set_link(struct virtio_device *d, bool up);

/* Takes the device lock. */
void virtio_net_get_stats(struct virtio_device *d, struct virtio_net_stats *s);

#endif
