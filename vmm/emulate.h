/* Emulation assist for emulation-only KVM (a nested "PVM" hypervisor without VT-x/AMD-V):
 * there guest kernel code runs through KVM's instruction emulator, which stops with
 * KVM_EXIT_INTERNAL_ERROR (suberror KVM_INTERNAL_ERROR_EMULATION) at a few instructions
 * a Linux guest uses. The VMM performs exactly these itself and lets the guest go on:
 *
 *   INT3                    cc                 RIP += 1, then #BP is injected
 *   CLAC / STAC             0f 01 ca / cb      RFLAGS.AC cleared / set (CPL 0 only)
 *   FWAIT                   9b                 a no-op: Linux runs it only in fpu__drop,
 *                                              whose exception-table fixup discards a
 *                                              pending x87 exception anyway
 *   POPCNT r, r/m           f3 [rex] 0f b8 /r  16/32/64-bit (66, REX.W), any registers
 *                                              (REX.R/B), memory operands (ModRM, SIB,
 *                                              RIP-relative, FS/GS, 67)
 *   CMPXCHG8B/16B m         [f0] [rex] 0f c7 /1  atomically on guest RAM (SLUB's
 *                                              cmpxchg_double), memory operands as above
 *   XSAVE64 / XRSTOR64 m    48 0f ae /4, /5    the standard (uncompacted) format, on
 *                                              KVM's copy of the vCPU's FPU state
 *                                              (KVM_GET/SET_XSAVE): Linux's context
 *                                              switch of user FPU, AVX and AVX-512 state
 *                                              (with clearcpuid=xsaveopt,xsavec,xsaves
 *                                              it uses no other form). A memory operand
 *                                              that is not mapped becomes a #PF, a
 *                                              misaligned one or a bad header a #GP, as
 *                                              on hardware (the signal-frame paths rely
 *                                              on both)
 *
 * Anything else (other opcodes, prefixes these instructions do not take, LOCK where it
 * is invalid, truncated bytes) is refused and the VM stops with the usual diagnostic.
 * Decoding and execution are pure functions over bytes, a struct kvm_regs and a
 * guest-memory callback, so the unit tests run them without KVM; emulate_assist() is
 * the glue to a vCPU. It only runs on that exit, so it costs nothing on hardware KVM. */
#ifndef MITOS_EMULATE_H
#define MITOS_EMULATE_H

#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/guest_mem.h"
#include "vcpu.h"

#define EMULATE_MAX_INSN 15

enum emulate_kind {
	EMULATE_INT3,
	EMULATE_CLAC,
	EMULATE_STAC,
	EMULATE_FWAIT,
	EMULATE_POPCNT,
	EMULATE_CMPXCHG8B,
	EMULATE_CMPXCHG16B,
	EMULATE_XSAVE,
	EMULATE_XRSTOR,
	EMULATE_KINDS
};

enum emulate_seg { EMULATE_SEG_NONE, EMULATE_SEG_FS, EMULATE_SEG_GS };

/* A memory operand: seg:[base + index * scale + disp] (or [next RIP + disp]). */
struct emulate_memop {
	int base;               /* register 0..15, -1 for none */
	int index;              /* register 0..15, -1 for none */
	unsigned scale;         /* 1, 2, 4, 8 */
	int64_t disp;
	bool rip_relative;
	bool addr32;            /* 67 prefix: the address is computed in 32 bits */
	enum emulate_seg seg;
};

struct emulate_insn {
	enum emulate_kind kind;
	unsigned len;           /* bytes, prefixes included */
	unsigned op_bytes;      /* POPCNT: 2, 4 or 8 */
	unsigned reg;           /* POPCNT: destination register 0..15 (x86 numbering) */
	bool is_mem;            /* POPCNT: source in memory; CMPXCHG8B/16B: always */
	unsigned rm;            /* POPCNT: source register when !is_mem */
	struct emulate_memop mem;
};

/* Decodes the instruction in bytes[0..n) (64-bit mode). 0; -ENODATA when the bytes end
 * before the instruction does; -EOPNOTSUPP for anything outside the set above. */
int emulate_decode(const uint8_t *bytes, size_t n, struct emulate_insn *out);

/* Guest memory as the executor sees it: a host pointer for [gva, gva + len), which
 * never crosses a 4 KiB page, or NULL when the page is not mapped (or not writable,
 * for write). */
struct emulate_mem {
	void *(*map)(void *ctx, uint64_t gva, size_t len, bool write);
	void *ctx;
};

#define EMULATE_XSAVE_BYTES 4096   /* struct kvm_xsave: KVM's image, standard format */
#define EMULATE_XFEATURES   64

/* Where an XSAVE component lives in the standard format (CPUID 0xd, subleaf i). */
struct emulate_xcomp {
	uint32_t offset, size;
};

/* A memory access that faulted: the guest gets #PF for it. */
struct emulate_fault {
	uint64_t gva;
	bool write;
};

/* What execution needs besides the general registers. */
struct emulate_env {
	unsigned cpl;
	uint64_t fs_base, gs_base;
	/* XSAVE/XRSTOR: XCR0, the component layout (entries 2..63), and the vCPU's FPU
	 * state in KVM_GET_XSAVE's format, which XRSTOR rewrites. */
	uint64_t xcr0;
	const struct emulate_xcomp *xcomp;
	uint8_t *xsave;
	struct emulate_fault *fault;   /* set on -EFAULT when not NULL */
};

/* Performs `in` on r and guest memory and advances r->rip. 0; -EPERM for CLAC/STAC
 * outside CPL 0; -EFAULT when a memory operand is not mapped (env->fault says where);
 * -EINVAL for a misaligned CMPXCHG16B, XSAVE or XRSTOR operand or an XRSTOR header
 * the CPU refuses (#GP on hardware). For INT3 the caller then injects #BP. On error r,
 * guest memory and the XSAVE image are unchanged. */
int emulate_execute(const struct emulate_insn *in, struct kvm_regs *r,
		    const struct emulate_env *env, const struct emulate_mem *mem);

/* Whether a translated page may be accessed (written, with write) by code at cpl:
 * present, writable for a write, and a user page for user code (exposed for the tests). */
bool emulate_page_allowed(const struct kvm_translation *t, bool write, unsigned cpl);

/* The linear address of a memory operand (exposed for the tests). */
uint64_t emulate_address(const struct emulate_insn *in, const struct kvm_regs *r,
			 const struct emulate_env *env);

const char *emulate_kind_name(enum emulate_kind k);

/* After KVM_EXIT_INTERNAL_ERROR/KVM_INTERNAL_ERROR_EMULATION on v: reads the instruction
 * at RIP, performs it if it is one of the set and resumes the guest there. 0 with *kind
 * set; -errno when the VM cannot go on (the caller reports the failure). */
int emulate_assist(struct vcpu *v, const struct guest_mem *m, enum emulate_kind *kind);

#endif
