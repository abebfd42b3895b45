/* virtio-vsock (virtio 1.2 section 5.10), stream sockets only, with Firecracker's host
 * side so existing tooling works unchanged:
 *   - one Unix listening socket at PATH per VM: a host client connects, writes
 *     "CONNECT <port>\n", and reads "OK <host-port>\n" once the guest accepted on <port>
 *     (the socket is closed if the guest refuses); from then on the stream is the guest's;
 *   - a guest connection to host port P becomes a connection to the Unix socket
 *     "PATH_P" (refused with RST when nobody listens there).
 * Every host socket is non-blocking and watched through one epoll fd, the device's only
 * host fd, so connections come and go without the device loop knowing. Credit-based
 * flow control both ways: the guest never gets more than it advertised room for, and a
 * guest that sends more than the room this device advertised is reset. */
#ifndef MITOS_VIRTIO_VSOCK_H
#define MITOS_VIRTIO_VSOCK_H

#include <stdint.h>

#include "lib/error.h"
#include "lib/guest_mem.h"
#include "virtio_mmio.h"

#define VIRTIO_ID_VSOCK 19

#define VIRTIO_VSOCK_QUEUE_RX    0
#define VIRTIO_VSOCK_QUEUE_TX    1
#define VIRTIO_VSOCK_QUEUE_EVENT 2
#define VIRTIO_VSOCK_QUEUE_SIZE  256

#define VIRTIO_VSOCK_HOST_CID    2
/* Guest CIDs: 0-2 are reserved, 0xffffffff is VMADDR_CID_ANY. */
#define VIRTIO_VSOCK_MIN_CID     3
#define VIRTIO_VSOCK_MAX_CID     0xfffffffeU
#define VIRTIO_VSOCK_DEFAULT_CID 3

#define VIRTIO_VSOCK_TYPE_STREAM 1

enum virtio_vsock_op {
	VIRTIO_VSOCK_OP_REQUEST = 1,
	VIRTIO_VSOCK_OP_RESPONSE = 2,
	VIRTIO_VSOCK_OP_RST = 3,
	VIRTIO_VSOCK_OP_SHUTDOWN = 4,
	VIRTIO_VSOCK_OP_RW = 5,
	VIRTIO_VSOCK_OP_CREDIT_UPDATE = 6,
	VIRTIO_VSOCK_OP_CREDIT_REQUEST = 7,
};

/* SHUTDOWN flags: the sender will receive / send no more. */
#define VIRTIO_VSOCK_SHUTDOWN_RCV  1
#define VIRTIO_VSOCK_SHUTDOWN_SEND 2

#define VIRTIO_VSOCK_EVENT_TRANSPORT_RESET 0

/* Every packet starts with this header, little endian. */
struct virtio_vsock_hdr {
	uint64_t src_cid;
	uint64_t dst_cid;
	uint32_t src_port;
	uint32_t dst_port;
	uint32_t len;
	uint16_t type;
	uint16_t op;
	uint32_t flags;
	uint32_t buf_alloc;
	uint32_t fwd_cnt;
} __attribute__((packed));
_Static_assert(sizeof(struct virtio_vsock_hdr) == 44, "virtio 1.2 5.10.6");

/* What the device advertises per connection (bytes of guest data it buffers when the
 * host socket is slow), the largest payload it puts in one packet, how many connections
 * it keeps (worst case memory: MAX_CONNS * BUF_ALLOC), and the longest CONNECT line. */
#define VIRTIO_VSOCK_BUF_ALLOC   (256U * 1024)
#define VIRTIO_VSOCK_MAX_PAYLOAD (64U * 1024)
#define VIRTIO_VSOCK_MAX_CONNS   256
#define VIRTIO_VSOCK_CONNECT_LINE_MAX 64

struct virtio_vsock_opts {
	const char *path;   /* the Unix listening socket; must not exist yet */
	uint32_t cid;       /* VIRTIO_VSOCK_MIN_CID..VIRTIO_VSOCK_MAX_CID */
};

/* Binds and listens on o->path and returns the transport object whose ops are
 * virtio-vsock's; NULL and a message in e on failure (bad CID, path too long for a Unix
 * socket address with a "_<port>" suffix, path exists, socket errors). */
struct virtio_device *virtio_vsock_create(const struct guest_mem *mem, uint64_t mmio_base,
					  unsigned irq, const struct virtio_vsock_opts *o,
					  struct mitos_err *e);
/* Closes every host connection and the listening socket (unlinking it); d may be NULL. */
void virtio_vsock_destroy(struct virtio_device *d);

/* Drops every host connection and tells the guest with a TRANSPORT_RESET event (sent as
 * soon as the driver has an event buffer posted): the guest then drops its connections
 * and keeps its listeners. restore_state() does this itself; this is for a VM that
 * carries on under new host-side owners. Takes the device lock; 0 or -EINVAL when d is
 * not a vsock device. */
int virtio_vsock_send_transport_reset(struct virtio_device *d);

#endif
