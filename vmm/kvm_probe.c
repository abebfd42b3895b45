#include "kvm_probe.h"
#include "boot.h"
#include "lib/guest_mem.h"
#include "kvm_vm.h"
#include "lib/layout.h"
#include "loader.h"
#include "vcpu.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define PROBE_MEM (2ULL << 20)
#define PROBE_LOOPS 100000   /* two instructions each: dec ecx; jnz */
#define PROBE_PASSES_MAX 5

static void read_cpu_flags(struct kvm_probe_result *r)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[8192];
	while (f && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "flags", 5))
			continue;
		r->cpu_vmx = strstr(line, " vmx") != NULL;
		r->cpu_svm = strstr(line, " svm") != NULL;
		break;
	}
	if (f)
		fclose(f);
}

static void read_module(struct kvm_probe_result *r)
{
	static const char *mods[] = { "kvm_intel", "kvm_amd", "kvm_pvm" };
	snprintf(r->module, sizeof(r->module), "unknown");
	for (size_t i = 0; i < sizeof(mods) / sizeof(mods[0]); i++) {
		char path[64];
		snprintf(path, sizeof(path), "/sys/module/%s", mods[i]);
		if (access(path, F_OK) == 0) {
			snprintf(r->module, sizeof(r->module), "%s", mods[i]);
			return;
		}
	}
}

bool kvm_probe_is_emulation_only(void)
{
	struct kvm_probe_result r = { 0 };
	read_cpu_flags(&r);
	read_module(&r);
	return (!r.cpu_vmx && !r.cpu_svm) || !strcmp(r.module, "kvm_pvm");
}

static double seconds_since(const struct timespec *t0)
{
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

/* One pass of the probe guest from its entry to its exit port: its time in *seconds. */
static int run_once(struct vcpu *v, uint64_t entry, struct kvm_probe_result *r, struct mitos_err *e,
		    double *seconds)
{
	int ret = vcpu_set_boot_state(v, entry, e);
	if (ret)
		return ret;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (v->run->exit_reason == KVM_EXIT_IO && v->run->io.port == LAYOUT_DEBUG_EXIT_PORT) {
			*seconds = seconds_since(&t0);
			return 0;
		}
		if (v->run->exit_reason != KVM_EXIT_IO && v->run->exit_reason != KVM_EXIT_INTR) {
			snprintf(r->kvm_error, sizeof(r->kvm_error),
				 "probe guest stopped with KVM exit reason %u", v->run->exit_reason);
			return -EIO;
		}
	}
}

/* Times a tight loop of guest kernel-mode code in a throwaway VM entered exactly like a
 * real guest (64-bit, boot page tables). Being preempted only ever adds time, so the
 * best of a few passes is the speed: a loaded hardware host whose first pass was
 * interrupted is not taken for an emulator (a clear verdict either way takes one pass;
 * an emulator's pass, a fifth of a second, is not repeated). */
static int measure(struct kvm_probe_result *r)
{
	static const uint8_t code[] = {
		0xb9, PROBE_LOOPS & 0xff, (PROBE_LOOPS >> 8) & 0xff, (PROBE_LOOPS >> 16) & 0xff, 0,
		0xff, 0xc9,             /* dec ecx */
		0x75, 0xfc,             /* jnz .-4 */
		0xb0, 0x00,             /* mov al, 0 */
		0xe6, LAYOUT_DEBUG_EXIT_PORT, /* out 0xf4, al */
		0xf4,                   /* hlt */
	};
	struct mitos_err e = { 0 };
	struct kvm_vm vm;
	struct guest_mem mem;
	struct vcpu v = { .fd = -1 };
	int ret = guest_mem_alloc(&mem, PROBE_MEM);
	if (ret)
		return ret;
	struct kernel_image k = { .entry = LAYOUT_HIMEM_GPA };
	struct boot_config bc = { .cmdline = "", .ncpus = 1 };
	memcpy(guest_mem_ptr(&mem, LAYOUT_HIMEM_GPA, sizeof(code)), code, sizeof(code));
	if ((ret = kvm_vm_create(&vm, 0, &e))) {
		snprintf(r->kvm_error, sizeof(r->kvm_error), "%s", e.msg);
		guest_mem_free(&mem);
		return ret;
	}
	r->kvm_usable = true;
	r->api_version = ioctl(vm.kvm_fd, KVM_GET_API_VERSION, 0);
	if ((ret = kvm_vm_map_memory(&vm, &mem, &e)) || (ret = boot_write(&mem, &k, &bc, &e)) ||
	    (ret = vcpu_create(&vm, 0, 1, &v, &e)))
		goto out;
	for (int pass = 0; pass < PROBE_PASSES_MAX; pass++) {
		double seconds = 0;
		if ((ret = run_once(&v, k.entry, r, &e, &seconds)))
			break;
		if (!r->measured || seconds < r->measure_seconds) {
			r->measure_seconds = seconds;
			r->kernel_mips = 2.0 * PROBE_LOOPS / seconds / 1e6;
			r->measured = true;
		}
		if (r->kernel_mips >= KVM_PROBE_HW_MIPS_THRESHOLD || r->kernel_mips < KVM_PROBE_HW_MIPS_THRESHOLD / 20)
			break;
	}
out:
	if (ret && !r->kvm_error[0])
		snprintf(r->kvm_error, sizeof(r->kvm_error), "%s", e.msg);
	if (v.fd >= 0)
		vcpu_destroy(&vm, &v);
	kvm_vm_destroy(&vm);
	guest_mem_free(&mem);
	return ret;
}

void kvm_probe_run(struct kvm_probe_result *r)
{
	memset(r, 0, sizeof(*r));
	read_cpu_flags(r);
	read_module(r);
	measure(r);
	r->hardware = r->measured && r->kernel_mips >= KVM_PROBE_HW_MIPS_THRESHOLD;
	if (r->hardware) {
		snprintf(r->engine, sizeof(r->engine), "kvm");
		snprintf(r->reason, sizeof(r->reason),
			 "guest kernel code runs on hardware virtualization (%.0f M instructions/s): "
			 "microVMs boot and fork at full speed", r->kernel_mips);
	} else if (r->measured) {
		snprintf(r->engine, sizeof(r->engine), "process");
		snprintf(r->reason, sizeof(r->reason),
			 "KVM is emulation-only here: guest kernel code runs through KVM's instruction "
			 "emulator at %.1f M instructions/s (hardware runs thousands), so a Linux guest "
			 "would take minutes to boot; sandboxes run as namespaced host processes instead",
			 r->kernel_mips);
	} else {
		snprintf(r->engine, sizeof(r->engine), "process");
		snprintf(r->reason, sizeof(r->reason), "KVM cannot run a guest here: %s",
			 r->kvm_error[0] ? r->kvm_error : "unknown error");
	}
}
