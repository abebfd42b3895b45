/* The system call allowlist of a VM process (`mitos-vmm vm --seccomp`, `run
 * --seccomp`): installed once the VM is prepared and before it serves any request,
 * for every thread of the process, so that a guest that takes over the VMM (a
 * device emulation bug) can do little more than what the VMM already does. */
#ifndef MITOS_VMM_SECCOMP_H
#define MITOS_VMM_SECCOMP_H

#include "lib/error.h"

/* Sanitizer builds (gcc: __SANITIZE_ADDRESS__, clang: __has_feature) get the extra
 * calls of their runtime: mappings with PROT_EXEC and non-thread clones included. */
#if defined(__SANITIZE_ADDRESS__)
#define VMM_SECCOMP_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VMM_SECCOMP_SANITIZED 1
#endif
#endif

/* 0 or -errno (the message then says why). A system call outside the list is not
 * run: the process writes "mitos-vmm: seccomp: ..." naming it to stderr (the console
 * log under serve) and exits with status 159 (128 + SIGSYS). */
int vmm_seccomp_install(struct mitos_err *e);

/* Once every disk's ring exists (a prepared VM's restore, or before `run` and
 * `restore` start), no io_uring can be made any more (EPERM): an attacker in the
 * VMM would otherwise get a fresh ring, whose operations seccomp never sees. A
 * no-op when vmm_seccomp_install() was not called. 0 or -errno. */
int vmm_seccomp_seal_rings(struct mitos_err *e);

/* Called by each vCPU thread before it first enters the guest: that thread loses what
 * only the device loop does (files, snapshots, new threads, rings and listening
 * sockets; vmm/seccomp.c lists them), and a refused call names "a vCPU thread". A
 * no-op when vmm_seccomp_install() was not called. Load it after
 * vmm_seccomp_seal_rings(): that one synchronises every thread's filters. 0 or -errno. */
int vmm_seccomp_enter_vcpu(struct mitos_err *e);

#endif
