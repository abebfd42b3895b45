/* What this host's KVM can do, measured: whether guest kernel code runs on hardware
 * virtualization or through KVM's instruction emulator (as under a paravirtual PVM
 * hypervisor), which decides whether the kvm engine can serve. */
#ifndef MITOS_KVM_PROBE_H
#define MITOS_KVM_PROBE_H

#include <stdbool.h>

/* Guest kernel code slower than this is being emulated, not run natively. */
#define KVM_PROBE_HW_MIPS_THRESHOLD 50.0

struct kvm_probe_result {
	bool kvm_usable;          /* /dev/kvm opened and a VM could be created */
	char kvm_error[512];      /* why not, when !kvm_usable */
	int api_version;
	bool cpu_vmx, cpu_svm;    /* flags in /proc/cpuinfo */
	char module[32];          /* kvm_intel, kvm_amd, kvm_pvm, or "unknown" */
	bool measured;
	double kernel_mips;       /* guest CPL0 speed, million instructions per second */
	double measure_seconds;
	bool hardware;            /* verdict: hardware virtualization */
	char engine[16];          /* what `serve` picks: "kvm" or "process" */
	char reason[640];         /* one sentence: why that engine */
};

/* Runs the probe (about 0.2 s on emulation-only KVM, under a millisecond on hardware). */
void kvm_probe_run(struct kvm_probe_result *r);

/* Cheap hint for error messages: no vmx/svm in /proc/cpuinfo, or the PVM module loaded. */
bool kvm_probe_is_emulation_only(void);

#endif
