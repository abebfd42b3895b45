#include "virtio_net.h"
#include "tap.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

_Static_assert(VIRTIO_NET_HDR_LEN == TAP_VNET_HDR_LEN, "the TAP carries the guest's header");

#define HDR_LEN VIRTIO_NET_HDR_LEN
/* The largest frame a TAP hands over: a 64 KiB TCP segment (IPv4 total length is 16
 * bits) behind an Ethernet header with a VLAN tag, plus our header. */
#define RX_MAX_FRAME (HDR_LEN + 18 + 65535)
/* readv's limit (UIO_MAXIOV). */
#define RX_MAX_IOV 1024
/* Frames received per wake-up, so that kicks and other devices get their turn; the
 * epoll fd stays readable and brings us back. */
#define RX_BUDGET 64

/* virtio_net_hdr flags and gso_type (virtio 1.2 5.1.6). */
#define HDR_F_NEEDS_CSUM 1
#define HDR_GSO_NONE     0
#define HDR_GSO_TCPV4    1
#define HDR_GSO_TCPV6    4
#define HDR_GSO_ECN      0x80

#define OFFLOAD_FEATURES ((1ULL << VIRTIO_NET_F_CSUM) | (1ULL << VIRTIO_NET_F_GUEST_CSUM) | \
			  (1ULL << VIRTIO_NET_F_GUEST_TSO4) | (1ULL << VIRTIO_NET_F_GUEST_TSO6) | \
			  (1ULL << VIRTIO_NET_F_GUEST_ECN) | (1ULL << VIRTIO_NET_F_HOST_TSO4) | \
			  (1ULL << VIRTIO_NET_F_HOST_TSO6) | (1ULL << VIRTIO_NET_F_HOST_ECN))
#define TAP_ALL_OFFLOADS (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)

struct net_config {
	uint8_t mac[VIRTIO_NET_MAC_LEN];
	uint16_t status;
	uint16_t max_virtqueue_pairs;
} __attribute__((packed));
_Static_assert(sizeof(struct net_config) == VIRTIO_NET_CFG_MAX_VQ_PAIRS + 2, "virtio 1.2 5.1.4");

struct net_hdr {
	uint8_t flags;
	uint8_t gso_type;
	uint16_t hdr_len, gso_size, csum_start, csum_offset, num_buffers;
};
_Static_assert(sizeof(struct net_hdr) == HDR_LEN, "virtio 1.2 5.1.6");

/* Saved state (little endian): magic, version, link status, MAC, 2 bytes reserved. */
#define STATE_MAGIC   0x54454e4du /* "MNET" */
#define STATE_VERSION 1
#define STATE_LEN     16

/* A receive chain taken from the ring but not written yet. Its writable buffers are the
 * next `niov` entries of rx_iov, after those of the chains before it in the stash. */
struct rx_chain {
	uint16_t head;
	uint16_t niov;
	uint32_t cap;     /* bytes it can take, capped at RX_MAX_FRAME */
};

struct net {
	struct virtio_device dev;
	struct virtio_device_ops ops;   /* per device: the offloads depend on the TAP */
	int fd;
	int epfd;                       /* holds fd while we want frames from it */
	bool offloads;                  /* the TAP took TUNSETOFFLOAD */
	bool polling;                   /* fd is in epfd */
	bool starved;                   /* the receive ring ran dry: wait for a kick */
	bool tap_gone;
	uint8_t mac[VIRTIO_NET_MAC_LEN];
	uint16_t status;
	/* Receive chains popped ahead, so one readv can take a 64 KiB frame into mergeable
	 * buffers without knowing its length beforehand; at most a queue's worth. */
	unsigned nstash, stash_niov;
	uint64_t stash_cap;
	struct rx_chain stash[VIRTIO_NET_QUEUE_SIZE];
	struct iovec rx_iov[RX_MAX_IOV];
	struct iovec tx_iov[VIRTQ_MAX_CHAIN + 1];
	struct virtq_used_elem used[VIRTIO_NET_QUEUE_SIZE];
	struct virtq_chain chain;       /* virtq_pop's output: too big for the stack */
	struct virtio_net_stats stats;
};

static bool has(const struct net *n, unsigned bit)
{
	return virtio_device_has_feature(&n->dev, bit);
}

static bool link_up(const struct net *n)
{
	return n->status & VIRTIO_NET_S_LINK_UP;
}

/* ---- receive polling ---------------------------------------------------------------- */

static bool rx_wanted(const struct net *n)
{
	return virtio_device_active(&n->dev) && link_up(n) && !n->tap_gone && !n->starved;
}

static void rx_set_polling(struct net *n, bool on)
{
	if (on == n->polling)
		return;
	struct epoll_event ev = { .events = EPOLLIN };
	if (epoll_ctl(n->epfd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, n->fd, &ev)) {
		fprintf(stderr, "mitos-vmm: virtio-net: epoll_ctl: %s\n", strerror(errno));
		return;
	}
	n->polling = on;
}

static void rx_update_polling(struct net *n)
{
	rx_set_polling(n, rx_wanted(n));
}

static void net_fail(struct net *n, const char *why)
{
	virtio_device_fail(&n->dev, why);
	rx_update_polling(n);
}

/* The TAP's interface was deleted (or the test's socket peer closed): nothing will
 * come through any more, which the guest learns as a link going down. */
static void net_tap_gone(struct net *n)
{
	if (n->tap_gone)
		return;
	fprintf(stderr, "mitos-vmm: virtio-net: the TAP is gone (interface deleted?); the "
		"guest's link is down\n");
	n->tap_gone = true;
	n->status &= (uint16_t)~VIRTIO_NET_S_LINK_UP;
	if (n->dev.status & VIRTIO_STATUS_DRIVER_OK)
		virtio_device_config_changed(&n->dev);
	rx_update_polling(n);
}

/* ---- receive ---------------------------------------------------------------------- */

static void stash_clear(struct net *n)
{
	n->nstash = n->stash_niov = 0;
	n->stash_cap = 0;
}

/* Pops receive chains until the stash can take the largest frame (with mergeable
 * buffers, spread over any number of chains; without, in the first chain alone), the
 * ring runs dry, or the stash is full. -EINVAL for a malformed ring or chain. */
static int rx_fill(struct net *n)
{
	struct virtq *q = &n->dev.vqs[VIRTIO_NET_RXQ];
	bool mrg = has(n, VIRTIO_NET_F_MRG_RXBUF);
	struct virtq_chain *c = &n->chain;
	while (mrg ? n->stash_cap < RX_MAX_FRAME : n->nstash == 0) {
		if (n->nstash == VIRTIO_NET_QUEUE_SIZE || n->stash_niov > RX_MAX_IOV - VIRTQ_MAX_CHAIN)
			return 0;
		int r = virtq_pop(q, n->dev.mem, c);
		if (r <= 0)
			return r;
		/* The header goes into the first chain of a frame whole: every chain must
		 * hold one (5.1.6.3.1), and only the device writes receive buffers. */
		if (c->nreadable || c->writable_len < HDR_LEN)
			return -EINVAL;
		struct rx_chain *s = &n->stash[n->nstash++];
		s->head = c->head;
		s->niov = 0;
		s->cap = c->writable_len < RX_MAX_FRAME ? (uint32_t)c->writable_len : RX_MAX_FRAME;
		for (unsigned i = 0; i < c->nbufs; i++)
			if (c->bufs[i].len) {
				n->rx_iov[n->stash_niov + s->niov++] = (struct iovec){
					.iov_base = c->bufs[i].host, .iov_len = c->bufs[i].len };
			}
		n->stash_niov += s->niov;
		n->stash_cap += s->cap;
	}
	return 0;
}

/* Writes len bytes at offset off of the buffers iov[0..niov). */
static void iov_write(const struct iovec *iov, unsigned niov, size_t off, const void *src,
		      size_t len)
{
	for (unsigned i = 0; i < niov && len; i++) {
		if (off >= iov[i].iov_len) {
			off -= iov[i].iov_len;
			continue;
		}
		size_t k = iov[i].iov_len - off < len ? iov[i].iov_len - off : len;
		memcpy((uint8_t *)iov[i].iov_base + off, src, k);
		src = (const uint8_t *)src + k;
		len -= k;
		off = 0;
	}
}

/* A frame of len bytes (header included) was read into the stash's buffers: hand the
 * chains it fills to the guest in one go and keep the rest for the next frame. */
static int rx_deliver(struct net *n, uint32_t len)
{
	unsigned k = 0, niov = 0;
	for (uint32_t left = len; left; k++) {
		const struct rx_chain *s = &n->stash[k];
		uint32_t take = left < s->cap ? left : s->cap;
		n->used[k] = (struct virtq_used_elem){ .id = s->head, .len = take };
		left -= take;
		niov += s->niov;
		n->stash_cap -= s->cap;
	}
	uint16_t num_buffers = htole16((uint16_t)k);
	iov_write(n->rx_iov, n->stash[0].niov, VIRTIO_NET_HDR_NUM_BUFFERS, &num_buffers,
		  sizeof(num_buffers));
	n->nstash -= k;
	n->stash_niov -= niov;
	memmove(n->stash, n->stash + k, n->nstash * sizeof(n->stash[0]));
	memmove(n->rx_iov, n->rx_iov + niov, n->stash_niov * sizeof(n->rx_iov[0]));
	n->stats.rx_frames++;
	n->stats.rx_bytes += len - HDR_LEN;
	return virtq_push_n(&n->dev.vqs[VIRTIO_NET_RXQ], n->dev.mem, n->used, k);
}

/* Moves frames from the TAP into the guest until the TAP is empty, the guest has no
 * buffers left, or the budget is spent. */
static void rx_frames(struct net *n)
{
	struct virtq *q = &n->dev.vqs[VIRTIO_NET_RXQ];
	bool pushed = false;
	for (unsigned budget = RX_BUDGET; budget && rx_wanted(n); budget--) {
		if (rx_fill(n)) {
			net_fail(n, "malformed receive queue (a chain outside RAM, looping, with "
				 "device-readable buffers, or shorter than the 12-byte header)");
			break;
		}
		if (n->nstash == 0) {
			/* Ask for a kick when buffers come, unless some already did. */
			if (!virtq_arm_and_recheck(q, n->dev.mem))
				n->starved = true;
			continue;
		}
		bool mrg = has(n, VIRTIO_NET_F_MRG_RXBUF);
		uint64_t cap = mrg ? n->stash_cap : n->stash[0].cap;
		ssize_t len = readv(n->fd, n->rx_iov, mrg ? (int)n->stash_niov : n->stash[0].niov);
		if (len < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (len < 0 && errno == EINTR)
			continue;
		if (len == 0 || (len < 0 && errno == EBADFD)) {
			net_tap_gone(n);
			break;
		}
		/* A frame larger than the buffers comes back cut short: the kernel reports its
		 * full length (or fails the read), and the buffers stay ours for the next. */
		if (len < 0 || len <= HDR_LEN || (uint64_t)len > cap) {
			n->stats.rx_dropped++;
			continue;
		}
		if (rx_deliver(n, (uint32_t)len)) {
			net_fail(n, "used ring outside guest RAM");
			break;
		}
		pushed = true;
	}
	if (pushed)
		virtio_device_notify_used(&n->dev, VIRTIO_NET_RXQ);
	rx_update_polling(n);
}

/* ---- transmit ---------------------------------------------------------------------- */

/* Offloads the guest asks for must be ones it negotiated: the TAP would carry out any
 * it is handed, and the host stack should see only what the guest was offered. */
static bool tx_header_allowed(const struct net *n, const struct net_hdr *h)
{
	if ((h->flags & HDR_F_NEEDS_CSUM) && !has(n, VIRTIO_NET_F_CSUM))
		return false;
	switch (h->gso_type & ~HDR_GSO_ECN) {
	case HDR_GSO_NONE:
		return !(h->gso_type & HDR_GSO_ECN);
	case HDR_GSO_TCPV4:
		return has(n, VIRTIO_NET_F_HOST_TSO4) &&
		       (!(h->gso_type & HDR_GSO_ECN) || has(n, VIRTIO_NET_F_HOST_ECN));
	case HDR_GSO_TCPV6:
		return has(n, VIRTIO_NET_F_HOST_TSO6) &&
		       (!(h->gso_type & HDR_GSO_ECN) || has(n, VIRTIO_NET_F_HOST_ECN));
	default:
		return false;
	}
}

static void tx_send(struct net *n, const struct virtq_chain *c)
{
	struct net_hdr h;
	if (!link_up(n) || c->readable_len <= HDR_LEN ||
	    virtq_chain_read(c, 0, &h, sizeof(h)) != sizeof(h) || !tx_header_allowed(n, &h)) {
		n->stats.tx_dropped++;
		return;
	}
	/* The header goes out as checked, from our copy: the guest can rewrite its own
	 * between the check and the write (another vCPU), the frame after it is its own. */
	unsigned niov = 0;
	uint64_t skip = HDR_LEN;
	n->tx_iov[niov++] = (struct iovec){ .iov_base = &h, .iov_len = HDR_LEN };
	for (unsigned i = 0; i < c->nbufs; i++) {
		uint64_t k = skip < c->bufs[i].len ? skip : c->bufs[i].len;
		skip -= k;
		if (c->bufs[i].len > k)
			n->tx_iov[niov++] = (struct iovec){ .iov_base = c->bufs[i].host + k,
							    .iov_len = c->bufs[i].len - k };
	}
	ssize_t r;
	do
		r = writev(n->fd, n->tx_iov, (int)niov);
	while (r < 0 && errno == EINTR);
	/* The TAP takes a frame whole or refuses it (interface down, malformed offload
	 * header); nothing is queued on our side. */
	if (r < 0) {
		n->stats.tx_dropped++;
		if (errno == EBADFD)
			net_tap_gone(n);
		return;
	}
	n->stats.tx_frames++;
	n->stats.tx_bytes += c->readable_len - HDR_LEN;
}

static void tx_frames(struct net *n)
{
	struct virtq *q = &n->dev.vqs[VIRTIO_NET_TXQ];
	bool pushed = false;
	unsigned budget = VIRTIO_CHAIN_BUDGET;
	do {
		for (;;) {
			if (!budget && virtio_device_kick_again(&n->dev, VIRTIO_NET_TXQ))
				goto out;
			budget -= budget > 0;
			int r = virtq_pop(q, n->dev.mem, &n->chain);
			if (r == 0)
				break;
			if (r < 0 || n->chain.nreadable != n->chain.nbufs) {
				net_fail(n, "malformed transmit queue (a chain outside RAM, looping, "
					 "or with device-writable buffers)");
				return;
			}
			tx_send(n, &n->chain);
			if (virtq_push(q, n->dev.mem, n->chain.head, 0)) {
				net_fail(n, "used ring outside guest RAM");
				return;
			}
			pushed = true;
		}
	} while (virtq_arm_and_recheck(q, n->dev.mem));
out:
	if (pushed)
		virtio_device_notify_used(&n->dev, VIRTIO_NET_TXQ);
}

/* ---- device ops -------------------------------------------------------------------- */

/* What the TAP may hand the guest: what the guest said it takes (TSO needs checksum
 * offload, and the TAP refuses it alone). */
static unsigned guest_offloads(const struct net *n)
{
	if (!n->offloads || !has(n, VIRTIO_NET_F_GUEST_CSUM))
		return 0;
	unsigned f = TUN_F_CSUM;
	if (has(n, VIRTIO_NET_F_GUEST_TSO4))
		f |= TUN_F_TSO4;
	if (has(n, VIRTIO_NET_F_GUEST_TSO6))
		f |= TUN_F_TSO6;
	if ((f & (TUN_F_TSO4 | TUN_F_TSO6)) && has(n, VIRTIO_NET_F_GUEST_ECN))
		f |= TUN_F_TSO_ECN;
	return f;
}

/* Starts serving a device the driver set up (DRIVER_OK, or restored with it). */
static int net_start(struct net *n)
{
	if (n->offloads) {
		int r = tap_set_offload(n->fd, guest_offloads(n));
		if (r) {
			fprintf(stderr, "mitos-vmm: virtio-net: TUNSETOFFLOAD: %s\n", strerror(-r));
			return r;
		}
	}
	n->starved = false;
	rx_update_polling(n);
	return 0;
}

static int net_activate(struct virtio_device *d)
{
	return net_start(d->priv);
}

static void net_reset(struct virtio_device *d)
{
	struct net *n = d->priv;
	rx_set_polling(n, false);
	stash_clear(n);
	n->starved = false;
	/* Frames the TAP offloaded for the old driver's features must not reach a driver
	 * that may negotiate fewer. */
	if (n->offloads)
		(void)tap_set_offload(n->fd, 0);
}

static void net_queue_notify(struct virtio_device *d, unsigned q)
{
	struct net *n = d->priv;
	if (q == VIRTIO_NET_TXQ) {
		tx_frames(n);
	} else if (n->starved) {
		/* Without EVENT_IDX every refill kicks; only a starved receiver cares. */
		n->starved = false;
		rx_frames(n);
	}
}

static unsigned net_host_fds(struct virtio_device *d, int *fds, unsigned max)
{
	struct net *n = d->priv;
	if (max == 0)
		return 0;
	fds[0] = n->epfd;
	return 1;
}

static void net_host_fd_ready(struct virtio_device *d, unsigned i)
{
	(void)i;
	struct net *n = d->priv;
	/* The loop may still report readiness it saw before we stopped polling. */
	if (n->polling)
		rx_frames(n);
}

static void net_config_read(struct virtio_device *d, uint32_t off, void *data, uint32_t len)
{
	struct net *n = d->priv;
	struct net_config cfg = { .status = htole16(n->status), .max_virtqueue_pairs = htole16(1) };
	memcpy(cfg.mac, n->mac, sizeof(cfg.mac));
	memcpy(data, (const uint8_t *)&cfg + off, len);
}

/* Receive chains in the stash are still unwritten guest buffers: hand them back to
 * the ring, so that the saved queue resumes where the guest expects (vhost's discard). */
static int net_quiesce(struct virtio_device *d)
{
	struct net *n = d->priv;
	d->vqs[VIRTIO_NET_RXQ].last_avail_idx -= (uint16_t)n->nstash;
	stash_clear(n);
	return 0;
}

static int net_save_state(struct virtio_device *d, void *buf, size_t len)
{
	struct net *n = d->priv;
	if (len < STATE_LEN)
		return -ENOSPC;
	uint8_t *p = buf;
	uint32_t magic = htole32(STATE_MAGIC);
	uint16_t version = htole16(STATE_VERSION), status = htole16(n->status);
	memset(p, 0, STATE_LEN);
	memcpy(p, &magic, 4);
	memcpy(p + 4, &version, 2);
	memcpy(p + 6, &status, 2);
	memcpy(p + 8, n->mac, VIRTIO_NET_MAC_LEN);
	return STATE_LEN;
}

static int net_restore_state(struct virtio_device *d, const void *buf, size_t len)
{
	struct net *n = d->priv;
	const uint8_t *p = buf;
	uint32_t magic;
	uint16_t version, status;
	if (len != STATE_LEN)
		return -EINVAL;
	memcpy(&magic, p, 4);
	memcpy(&version, p + 4, 2);
	memcpy(&status, p + 6, 2);
	status = le16toh(status);
	if (le32toh(magic) != STATE_MAGIC || le16toh(version) != STATE_VERSION ||
	    (status & ~VIRTIO_NET_S_LINK_UP) || (p[8] & 1))
		return -EINVAL;
	n->status = status;
	memcpy(n->mac, p + 8, VIRTIO_NET_MAC_LEN);
	stash_clear(n);
	return virtio_device_active(d) ? net_start(n) : 0;
}

static const struct virtio_device_ops net_ops = {
	.name = "virtio-net",
	.device_id = VIRTIO_ID_NET,
	.features = (1ULL << VIRTIO_NET_F_MAC) | (1ULL << VIRTIO_NET_F_STATUS) |
		    (1ULL << VIRTIO_NET_F_MRG_RXBUF),
	.num_queues = 2,
	.queue_max_size = VIRTIO_NET_QUEUE_SIZE,
	.config_size = sizeof(struct net_config),
	.config_read = net_config_read,
	.activate = net_activate,
	.reset = net_reset,
	.queue_notify = net_queue_notify,
	.host_fds = net_host_fds,
	.host_fd_ready = net_host_fd_ready,
	.quiesce = net_quiesce,
	.state_version = 1,
	.save_state = net_save_state,
	.restore_state = net_restore_state,
	.destroy = virtio_net_destroy,
};

/* ---- creation ---------------------------------------------------------------------- */

struct virtio_device *virtio_net_create_fd(const struct guest_mem *mem, uint64_t mmio_base,
					   unsigned irq, int fd, const uint8_t mac[VIRTIO_NET_MAC_LEN],
					   struct mitos_err *e)
{
	if (mac[0] & 1) {
		mitos_err_set(e, -EINVAL, "MAC %02x:%02x:%02x:%02x:%02x:%02x is a multicast "
			      "address; a NIC needs a unicast one", mac[0], mac[1], mac[2], mac[3],
			      mac[4], mac[5]);
		close(fd);
		return NULL;
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK)) {
		mitos_err_set(e, -errno, "virtio-net: fcntl O_NONBLOCK: %s", strerror(errno));
		close(fd);
		return NULL;
	}
	struct net *n = calloc(1, sizeof(*n));
	if (!n) {
		mitos_err_set(e, -ENOMEM, "out of memory for virtio-net");
		close(fd);
		return NULL;
	}
	n->fd = fd;
	n->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (n->epfd < 0) {
		mitos_err_set(e, -errno, "virtio-net: epoll_create1: %s", strerror(errno));
		close(fd);
		free(n);
		return NULL;
	}
	/* Offered only if the kernel takes all of them: the guest may negotiate any. */
	n->offloads = tap_set_offload(fd, TAP_ALL_OFFLOADS) == 0 && tap_set_offload(fd, 0) == 0;
	n->ops = net_ops;
	if (n->offloads)
		n->ops.features |= OFFLOAD_FEATURES;
	memcpy(n->mac, mac, VIRTIO_NET_MAC_LEN);
	n->status = VIRTIO_NET_S_LINK_UP;
	virtio_device_init(&n->dev, &n->ops, n, mem, mmio_base, irq);
	return &n->dev;
}

struct virtio_device *virtio_net_create(const struct guest_mem *mem, uint64_t mmio_base,
					unsigned irq, const struct virtio_net_opts *o,
					struct mitos_err *e)
{
	int fd = o->has_fd ? tap_adopt(o->fd, e) : tap_open(o->tap, e);
	if (fd < 0)
		return NULL;
	return virtio_net_create_fd(mem, mmio_base, irq, fd, o->mac, e);
}

void virtio_net_destroy(struct virtio_device *d)
{
	if (!d)
		return;
	struct net *n = d->priv;
	close(n->epfd);
	close(n->fd);
	virtio_device_destroy(d);
	free(n);
}

void virtio_net_set_link(struct virtio_device *d, bool up)
{
	struct net *n = d->priv;
	pthread_mutex_lock(&d->lock);
	uint16_t s = up ? (n->status | VIRTIO_NET_S_LINK_UP)
			: (n->status & (uint16_t)~VIRTIO_NET_S_LINK_UP);
	if (s != n->status) {
		n->status = s;
		if (d->status & VIRTIO_STATUS_DRIVER_OK)
			virtio_device_config_changed(d);
		rx_update_polling(n);
	}
	pthread_mutex_unlock(&d->lock);
}

void virtio_net_get_stats(struct virtio_device *d, struct virtio_net_stats *s)
{
	struct net *n = d->priv;
	pthread_mutex_lock(&d->lock);
	*s = n->stats;
	pthread_mutex_unlock(&d->lock);
}
