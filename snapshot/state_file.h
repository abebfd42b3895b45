/* The snapshot state file: a versioned, CRC32-checked container of typed sections
 * (vCPU registers, VM interrupt controllers, device state). Everything read back is
 * validated before a single byte is used: magic, version, CRC, section bounds. */
#ifndef MITOS_STATE_FILE_H
#define MITOS_STATE_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "lib/error.h"

#define STATE_FILE_MAGIC   "MITOSST1"
/* 2: device sections carry their device's identity and layout (vmm/device_state.h). */
#define STATE_FILE_VERSION 2
#define STATE_FILE_MAX     (64u << 20)   /* refuse anything larger: no snapshot needs it */
#define STATE_DEVICE_MAX   (1u << 20)    /* one device's own state */

enum state_section {
	SS_VM_CLOCK = 1,
	SS_VM_IRQCHIP,        /* id: KVM_IRQCHIP_PIC_MASTER, _SLAVE, _IOAPIC */
	SS_VM_PIT,
	SS_VCPU_CPUID = 16,   /* id: vCPU index for every SS_VCPU_* */
	SS_VCPU_MP_STATE,
	SS_VCPU_REGS,
	SS_VCPU_SREGS,
	SS_VCPU_XSAVE,
	SS_VCPU_FPU,
	SS_VCPU_XCRS,
	SS_VCPU_DEBUGREGS,
	SS_VCPU_LAPIC,
	SS_VCPU_MSRS,
	SS_VCPU_EVENTS,
	SS_DEV_SERIAL = 48,
	SS_DEV_VIRTIO_TRANSPORT,  /* id: virtio device index */
	SS_DEV_VIRTIO_DEVICE,
};

/* Sections are appended into one growing buffer; the first allocation failure sticks
 * and is reported by state_file_write(). */
struct state_writer {
	uint8_t *buf;
	size_t len, cap;
	uint32_t nsections;
	int err;
};

void state_writer_init(struct state_writer *w);
void state_writer_free(struct state_writer *w);
void state_add(struct state_writer *w, uint32_t type, uint32_t id, const void *data, size_t len);
/* Writes atomically (temporary file, fsync, rename). */
int state_file_write(const char *path, struct state_writer *w, struct mitos_err *e);

struct state_blob {
	uint8_t *buf;   /* whole file, validated */
	size_t len;
	uint32_t nsections;
};

/* Reads and validates; errors name the file and say what is wrong. */
int state_file_read(const char *path, struct state_blob *b, struct mitos_err *e);
/* Validates a file image held in memory (state_file_read uses it; so do the tests). */
int state_blob_parse(const char *name, uint8_t *buf, size_t len, struct state_blob *b,
		     struct mitos_err *e);
void state_blob_free(struct state_blob *b);

/* The payload of section (type, id) or NULL; *len gets its length. */
const void *state_find(const struct state_blob *b, uint32_t type, uint32_t id, size_t *len);
/* Same, but the section must be exactly `len` bytes: copies it into dst. -ENOENT or
 * -EINVAL (wrong size) with a message naming the section. */
int state_get(const struct state_blob *b, const char *name, uint32_t type, uint32_t id,
	      void *dst, size_t len, struct mitos_err *e);

#endif
