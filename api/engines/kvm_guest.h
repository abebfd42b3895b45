/* The kvm engine's default guest of an image: the image's ext4 (tools/build-image)
 * as the read-only root disk and its agent as init (/usr/sbin/init, which lays a
 * tmpfs overlay over the read-only root itself: agent/init.c), booted by the firmware
 * kernel from firmware/build-kernel.sh's cache: the plain kernel where KVM runs
 * guests on hardware, the pvm variant with firmware/guest-pvm.cmdline where KVM only
 * emulates them. */
#ifndef MITOS_API_KVM_GUEST_H
#define MITOS_API_KVM_GUEST_H

#include <limits.h>
#include <stdbool.h>

#include "lib/error.h"

/* Every guest without a command line of its own gets this (the VMM appends its
 * virtio_mmio.device= entries). */
#define KVM_GUEST_CMDLINE "console=ttyS0 reboot=k panic=1 pci=off nomodules i8042.noaux i8042.nomux " \
			  "i8042.dumbkbd root=/dev/vda ro"

struct kvm_guest {
	char kernel[PATH_MAX];
	char rootfs[PATH_MAX];
	char cmdline[2048];
	unsigned mem_mib;
	unsigned boot_timeout_s;
	/* Run in the booted guest before the template's snapshot, so what a child's first
	 * command needs is in the page cache it inherits ("" for nothing). */
	char warm[256];
};

void kvm_guest_init(bool emulated);
/* Fills g for image. -ENOENT: no such image; -ENODEV: the image or the kernel is not
 * built (e names the file and the command that builds it). */
int kvm_guest_default(const char *image, struct kvm_guest *g, struct mitos_err *e);

#endif
