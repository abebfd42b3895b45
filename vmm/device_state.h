/* Device sections of the state file. Each carries, ahead of its payload, the identity
 * of the device it was saved from (its kind, where it sits on its bus, its interrupt
 * line) and the version of the payload's layout: a restore takes a section only for
 * the same device in the same place, never by creation order alone, and a layout can
 * change later while the snapshots already written stay readable (or are refused by
 * name, never misread). */
#ifndef MITOS_DEVICE_STATE_H
#define MITOS_DEVICE_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../snapshot/state_file.h"
#include "lib/error.h"

/* Kinds: a virtio device's is its virtio device id (1..); the rest are above those. */
#define DEV_KIND_SERIAL 0x10001u

struct dev_identity {
	uint32_t kind;
	uint32_t irq;
	uint64_t base;    /* MMIO address, or I/O port */
};

/* Appends section (type, id): identity, layout version, then len bytes of payload. */
void dev_state_add(struct state_writer *w, uint32_t type, uint32_t id, const struct dev_identity *who,
		   uint32_t version, const void *payload, size_t len);

/* *payload and *len: the payload of section (type, id), if it was saved from the device
 * who in a layout this build reads (1..max_version; *version gets it): 0, or -errno
 * with a message naming the device (name). optional: a missing section is 0 with
 * *payload NULL and *len 0. */
int dev_state_get(const struct state_blob *b, const char *name, uint32_t type, uint32_t id,
		  const struct dev_identity *who, uint32_t max_version, bool optional, const void **payload,
		  size_t *len, uint32_t *version, struct mitos_err *e);

#endif
