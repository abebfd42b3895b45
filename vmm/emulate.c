#include "emulate.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>

#define PAGE_SIZE 4096ULL

#define RFLAGS_CF (1ULL << 0)
#define RFLAGS_PF (1ULL << 2)
#define RFLAGS_AF (1ULL << 4)
#define RFLAGS_ZF (1ULL << 6)
#define RFLAGS_SF (1ULL << 7)
#define RFLAGS_OF (1ULL << 11)
#define RFLAGS_AC (1ULL << 18)
#define RFLAGS_ARITH (RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF)

#define REX_B 0x1
#define REX_X 0x2
#define REX_R 0x4
#define REX_W 0x8

#define VECTOR_BP 3
#define VECTOR_GP 13
#define VECTOR_PF 14
#define PF_PRESENT 0x1U
#define PF_WRITE   0x2U
#define PF_USER    0x4U

/* The XSAVE standard format: the legacy (FXSAVE) region, then the header. */
#define XS_MXCSR        24     /* MXCSR and MXCSR_MASK, 8 bytes */
#define XS_MXCSR_MASK   28
#define XS_ST           32     /* ST0-ST7, 16 bytes each */
#define XS_XMM          160    /* XMM0-XMM15, 16 bytes each */
#define XS_XMM_END      416
#define XS_HEADER       512
#define XS_HEADER_BYTES 64
#define XFEATURE_X87    0x1ULL
#define XFEATURE_SSE    0x2ULL
#define XFEATURE_AVX    0x4ULL
#define X87_INIT_FCW    0x037f

static const char *const kind_names[EMULATE_KINDS] = {
	[EMULATE_INT3] = "int3", [EMULATE_CLAC] = "clac", [EMULATE_STAC] = "stac",
	[EMULATE_FWAIT] = "fwait", [EMULATE_POPCNT] = "popcnt",
	[EMULATE_CMPXCHG8B] = "cmpxchg8b", [EMULATE_CMPXCHG16B] = "cmpxchg16b",
	[EMULATE_XSAVE] = "xsave", [EMULATE_XRSTOR] = "xrstor",
};

const char *emulate_kind_name(enum emulate_kind k)
{
	return k < EMULATE_KINDS ? kind_names[k] : "?";
}

/* ---- decoding ---------------------------------------------------------------------- */

struct prefixes {
	bool lock, rep, repne, opsize, addr32, seg_prefix;
	enum emulate_seg seg;
	uint8_t rex;
};

static bool has_prefix(const struct prefixes *p)
{
	return p->lock || p->rep || p->repne || p->opsize || p->addr32 || p->seg_prefix || p->rex;
}

/* Byte i of the instruction: 0, -ENODATA past the bytes given, -EOPNOTSUPP past the
 * architectural 15-byte limit (#GP on hardware). */
static int byte_at(const uint8_t *b, size_t n, size_t i, uint8_t *out)
{
	if (i >= EMULATE_MAX_INSN)
		return -EOPNOTSUPP;
	if (i >= n)
		return -ENODATA;
	*out = b[i];
	return 0;
}

static int read_disp(const uint8_t *b, size_t n, size_t *pos, unsigned bytes, int64_t *disp)
{
	uint32_t v = 0;
	for (unsigned k = 0; k < bytes; k++) {
		uint8_t c;
		int r = byte_at(b, n, *pos + k, &c);
		if (r)
			return r;
		v |= (uint32_t)c << (8 * k);
	}
	*pos += bytes;
	*disp = bytes == 1 ? (int8_t)v : (int32_t)v;
	return 0;
}

/* ModRM (and SIB and displacement) at *pos, 64-bit addressing. */
static int decode_modrm(const uint8_t *b, size_t n, size_t *pos, const struct prefixes *p,
			struct emulate_insn *in)
{
	uint8_t modrm;
	int r = byte_at(b, n, (*pos)++, &modrm);
	if (r)
		return r;
	unsigned mod = modrm >> 6, rm = modrm & 7;
	in->reg = ((modrm >> 3) & 7) | (p->rex & REX_R ? 8 : 0);
	if (mod == 3) {
		in->is_mem = false;
		in->rm = rm | (p->rex & REX_B ? 8 : 0);
		return 0;
	}
	struct emulate_memop *m = &in->mem;
	*m = (struct emulate_memop){ .base = -1, .index = -1, .scale = 1, .addr32 = p->addr32,
				     .seg = p->seg };
	in->is_mem = true;
	unsigned disp_bytes = mod == 1 ? 1 : mod == 2 ? 4 : 0;
	if (rm == 4) {
		uint8_t sib;
		if ((r = byte_at(b, n, (*pos)++, &sib)))
			return r;
		unsigned index = ((sib >> 3) & 7) | (p->rex & REX_X ? 8 : 0);
		m->scale = 1U << (sib >> 6);
		if (index != 4)  /* rsp cannot be an index: "none" (r12 can) */
			m->index = (int)index;
		if ((sib & 7) == 5 && mod == 0)
			disp_bytes = 4;  /* no base, whatever REX.B says */
		else
			m->base = (int)((sib & 7) | (p->rex & REX_B ? 8 : 0));
	} else if (rm == 5 && mod == 0) {
		m->rip_relative = true;
		disp_bytes = 4;
	} else {
		m->base = (int)(rm | (p->rex & REX_B ? 8 : 0));
	}
	return disp_bytes ? read_disp(b, n, pos, disp_bytes, &m->disp) : 0;
}

int emulate_decode(const uint8_t *b, size_t n, struct emulate_insn *out)
{
	struct prefixes p = { .seg = EMULATE_SEG_NONE };
	struct emulate_insn in = { 0 };
	size_t pos = 0;
	uint8_t op;
	int r;
	for (;; pos++) {
		if ((r = byte_at(b, n, pos, &op)))
			return r;
		if (op >= 0x40 && op <= 0x4f) {
			p.rex = op;
			continue;
		}
		switch (op) {
		case 0xf0: p.lock = true; break;
		case 0xf2: p.repne = true; break;
		case 0xf3: p.rep = true; break;
		case 0x66: p.opsize = true; break;
		case 0x67: p.addr32 = true; break;
		/* CS, SS, DS, ES overrides mean nothing in 64-bit mode. */
		case 0x2e: case 0x36: case 0x3e: case 0x26:
			p.seg_prefix = true;
			p.seg = EMULATE_SEG_NONE;
			break;
		case 0x64: p.seg_prefix = true; p.seg = EMULATE_SEG_FS; break;
		case 0x65: p.seg_prefix = true; p.seg = EMULATE_SEG_GS; break;
		default:
			goto opcode;
		}
		/* A REX prefix counts only right before the opcode. */
		p.rex = 0;
	}
opcode:
	pos++;
	switch (op) {
	case 0xcc:
	case 0x9b:
		if (has_prefix(&p))
			return -EOPNOTSUPP;
		in.kind = op == 0xcc ? EMULATE_INT3 : EMULATE_FWAIT;
		break;
	case 0x0f: {
		uint8_t op2, op3;
		if ((r = byte_at(b, n, pos++, &op2)))
			return r;
		if (op2 == 0x01) {
			if ((r = byte_at(b, n, pos++, &op3)))
				return r;
			if ((op3 != 0xca && op3 != 0xcb) || has_prefix(&p))
				return -EOPNOTSUPP;
			in.kind = op3 == 0xca ? EMULATE_CLAC : EMULATE_STAC;
		} else if (op2 == 0xb8) {
			/* F3 makes it POPCNT; LOCK is #UD; F2 would make it something else. */
			if (!p.rep || p.repne || p.lock)
				return -EOPNOTSUPP;
			in.kind = EMULATE_POPCNT;
			in.op_bytes = p.rex & REX_W ? 8 : p.opsize ? 2 : 4;
			if ((r = decode_modrm(b, n, &pos, &p, &in)))
				return r;
		} else if (op2 == 0xae) {
			/* Group 15: only the 64-bit XSAVE (/4) and XRSTOR (/5) with a memory
			 * operand; the rest are fences, FXSAVE and friends KVM runs itself. */
			if (p.rep || p.repne || p.opsize || p.lock || !(p.rex & REX_W))
				return -EOPNOTSUPP;
			if ((r = decode_modrm(b, n, &pos, &p, &in)))
				return r;
			if (!in.is_mem || ((in.reg & 7) != 4 && (in.reg & 7) != 5))
				return -EOPNOTSUPP;
			in.kind = (in.reg & 7) == 4 ? EMULATE_XSAVE : EMULATE_XRSTOR;
			in.reg = 0;
		} else if (op2 == 0xc7) {
			if (p.rep || p.repne || p.opsize)
				return -EOPNOTSUPP;
			if ((r = decode_modrm(b, n, &pos, &p, &in)))
				return r;
			/* Group 9: only /1 with a memory operand is CMPXCHG8B/16B. */
			if (!in.is_mem || (in.reg & 7) != 1)
				return -EOPNOTSUPP;
			in.kind = p.rex & REX_W ? EMULATE_CMPXCHG16B : EMULATE_CMPXCHG8B;
			in.reg = 0;
		} else {
			return -EOPNOTSUPP;
		}
		break;
	}
	default:
		return -EOPNOTSUPP;
	}
	if (p.lock && in.kind != EMULATE_CMPXCHG8B && in.kind != EMULATE_CMPXCHG16B)
		return -EOPNOTSUPP;
	in.len = (unsigned)pos;
	*out = in;
	return 0;
}

/* ---- execution ----------------------------------------------------------------------- */

/* General registers in x86 encoding order. */
static const size_t gpr_offset[16] = {
	offsetof(struct kvm_regs, rax), offsetof(struct kvm_regs, rcx),
	offsetof(struct kvm_regs, rdx), offsetof(struct kvm_regs, rbx),
	offsetof(struct kvm_regs, rsp), offsetof(struct kvm_regs, rbp),
	offsetof(struct kvm_regs, rsi), offsetof(struct kvm_regs, rdi),
	offsetof(struct kvm_regs, r8), offsetof(struct kvm_regs, r9),
	offsetof(struct kvm_regs, r10), offsetof(struct kvm_regs, r11),
	offsetof(struct kvm_regs, r12), offsetof(struct kvm_regs, r13),
	offsetof(struct kvm_regs, r14), offsetof(struct kvm_regs, r15),
};

static uint64_t *gpr(struct kvm_regs *r, unsigned n)
{
	return (uint64_t *)((char *)r + gpr_offset[n & 15]);
}

static uint64_t gpr_value(const struct kvm_regs *r, unsigned n)
{
	return *(const uint64_t *)((const char *)r + gpr_offset[n & 15]);
}

uint64_t emulate_address(const struct emulate_insn *in, const struct kvm_regs *r,
			 const struct emulate_env *env)
{
	const struct emulate_memop *m = &in->mem;
	uint64_t a = (uint64_t)m->disp;
	if (m->rip_relative)
		a += r->rip + in->len;
	if (m->base >= 0)
		a += gpr_value(r, (unsigned)m->base);
	if (m->index >= 0)
		a += gpr_value(r, (unsigned)m->index) * m->scale;
	if (m->addr32)
		a = (uint32_t)a;
	if (m->seg == EMULATE_SEG_FS)
		a += env->fs_base;
	else if (m->seg == EMULATE_SEG_GS)
		a += env->gs_base;
	return a;
}

/* Reads len bytes at gva, page by page. */
static int mem_read(const struct emulate_mem *mem, uint64_t gva, void *buf, size_t len)
{
	uint8_t *out = buf;
	while (len) {
		size_t chunk = PAGE_SIZE - (gva & (PAGE_SIZE - 1));
		if (chunk > len)
			chunk = len;
		const void *p = mem->map(mem->ctx, gva, chunk, false);
		if (!p)
			return -EFAULT;
		memcpy(out, p, chunk);
		out += chunk;
		gva += chunk;
		len -= chunk;
	}
	return 0;
}

static bool host_cmpxchg16b(void *p, uint64_t *lo, uint64_t *hi, uint64_t new_lo, uint64_t new_hi)
{
	bool ok;
	__asm__ __volatile__("lock cmpxchg16b %[m]"
			     : "=@ccz"(ok), [m] "+m"(*(unsigned __int128 *)p), "+a"(*lo), "+d"(*hi)
			     : "b"(new_lo), "c"(new_hi)
			     : "memory");
	return ok;
}

static bool host_cmpxchg8b(void *p, uint32_t *lo, uint32_t *hi, uint32_t new_lo, uint32_t new_hi)
{
	bool ok;
	__asm__ __volatile__("lock cmpxchg8b %[m]"
			     : "=@ccz"(ok), [m] "+m"(*(uint64_t *)p), "+a"(*lo), "+d"(*hi)
			     : "b"(new_lo), "c"(new_hi)
			     : "memory");
	return ok;
}

static int exec_popcnt(const struct emulate_insn *in, struct kvm_regs *r,
		       const struct emulate_env *env, const struct emulate_mem *mem)
{
	uint64_t src = 0;
	if (in->is_mem) {
		int rc = mem_read(mem, emulate_address(in, r, env), &src, in->op_bytes);
		if (rc)
			return rc;
	} else {
		src = gpr_value(r, in->rm);
	}
	if (in->op_bytes < 8)
		src &= (1ULL << (8 * in->op_bytes)) - 1;
	uint64_t count = (uint64_t)__builtin_popcountll(src);
	uint64_t *dst = gpr(r, in->reg);
	/* A 32-bit result zero-extends into the register; a 16-bit one keeps bits 16-63. */
	*dst = in->op_bytes == 2 ? (*dst & ~0xffffULL) | count : count;
	r->rflags &= ~RFLAGS_ARITH;
	if (!src)
		r->rflags |= RFLAGS_ZF;
	return 0;
}

static int exec_cmpxchg(const struct emulate_insn *in, struct kvm_regs *r,
			const struct emulate_env *env, const struct emulate_mem *mem)
{
	uint64_t gva = emulate_address(in, r, env);
	bool wide = in->kind == EMULATE_CMPXCHG16B;
	size_t size = wide ? 16 : 8;
	/* 16B faults on a misaligned operand; an 8B straddling pages cannot be made atomic
	 * over two separate host mappings, and the kernel never does it. */
	if ((wide && (gva & 15)) || (gva & (PAGE_SIZE - 1)) > PAGE_SIZE - size)
		return -EINVAL;
	void *p = mem->map(mem->ctx, gva, size, true);
	if (!p)
		return -EFAULT;
	bool ok;
	if (wide) {
		uint64_t lo = r->rax, hi = r->rdx;
		ok = host_cmpxchg16b(p, &lo, &hi, r->rbx, r->rcx);
		r->rax = lo;
		r->rdx = hi;
	} else {
		uint32_t lo = (uint32_t)r->rax, hi = (uint32_t)r->rdx;
		ok = host_cmpxchg8b(p, &lo, &hi, (uint32_t)r->rbx, (uint32_t)r->rcx);
		if (!ok) {  /* EDX:EAX get the memory value, zero-extended like any 32-bit write */
			r->rax = lo;
			r->rdx = hi;
		}
	}
	if (ok)
		r->rflags |= RFLAGS_ZF;
	else
		r->rflags &= ~RFLAGS_ZF;
	return 0;
}

static bool write_fault(const struct emulate_env *env, uint64_t gva)
{
	if (env->fault)
		*env->fault = (struct emulate_fault){ .gva = gva, .write = true };
	return false;
}

/* Maps [gva, gva + len) page by page for writing; false (and env->fault) at the first
 * page that cannot be, so nothing is written before a fault is known. A range that
 * wraps past 2^64 faults at its start. */
static bool range_writable(const struct emulate_env *env, const struct emulate_mem *mem,
			   uint64_t gva, size_t len)
{
	uint64_t last = gva + len - 1;
	if (!len || last < gva)
		return !len || write_fault(env, gva);
	for (uint64_t a = gva & ~(uint64_t)(PAGE_SIZE - 1);; a += PAGE_SIZE) {
		uint64_t at = a < gva ? gva : a;
		if (!mem->map(mem->ctx, at, 1, true))
			return write_fault(env, at);
		if (a == (last & ~(uint64_t)(PAGE_SIZE - 1)))
			return true;
	}
}

/* Writes [gva, gva + len) page by page, each mapped again as it is written: the guest's
 * page tables are the guest's to change meanwhile (by another vCPU, or by this very
 * write), so a page checked by range_writable may be gone. The write then stops there
 * with a fault, as real hardware may leave an XSAVE. */
static bool write_or_fault(const struct emulate_env *env, const struct emulate_mem *mem, uint64_t gva,
			   const void *buf, size_t len)
{
	const uint8_t *in = buf;
	while (len) {
		size_t chunk = PAGE_SIZE - (gva & (PAGE_SIZE - 1));
		if (chunk > len)
			chunk = len;
		void *p = mem->map(mem->ctx, gva, chunk, true);
		if (!p)
			return write_fault(env, gva);
		memcpy(p, in, chunk);
		in += chunk;
		gva += chunk;
		len -= chunk;
	}
	return true;
}

static int read_or_fault(const struct emulate_env *env, const struct emulate_mem *mem,
			 uint64_t gva, void *buf, size_t len)
{
	/* Page by page, to name the page that faulted. */
	for (size_t done = 0; done < len;) {
		size_t chunk = PAGE_SIZE - ((gva + done) & (PAGE_SIZE - 1));
		if (chunk > len - done)
			chunk = len - done;
		if (mem_read(mem, gva + done, (uint8_t *)buf + done, chunk)) {
			if (env->fault)
				*env->fault = (struct emulate_fault){ .gva = gva + done, .write = false };
			return -EFAULT;
		}
		done += chunk;
	}
	return 0;
}

/* The pieces of the standard format that XSAVE/XRSTOR move for RFBM, as byte ranges
 * of the image (the header apart): x87 without MXCSR, MXCSR, XMM, then components 2+. */
struct xs_range {
	uint32_t offset, size;
	uint64_t feature;      /* XSTATE_BV bit saying whether it is in use */
};

static unsigned xs_ranges(const struct emulate_env *env, uint64_t rfbm, struct xs_range *out)
{
	unsigned n = 0;
	if (rfbm & XFEATURE_X87) {
		out[n++] = (struct xs_range){ 0, XS_MXCSR, XFEATURE_X87 };
		out[n++] = (struct xs_range){ XS_ST, XS_XMM - XS_ST, XFEATURE_X87 };
	}
	if (rfbm & (XFEATURE_SSE | XFEATURE_AVX))
		out[n++] = (struct xs_range){ XS_MXCSR, 8, 0 };   /* always moved */
	if (rfbm & XFEATURE_SSE)
		out[n++] = (struct xs_range){ XS_XMM, XS_XMM_END - XS_XMM, XFEATURE_SSE };
	for (unsigned i = 2; i < EMULATE_XFEATURES; i++)
		if (rfbm & (1ULL << i))
			out[n++] = (struct xs_range){ env->xcomp[i].offset, env->xcomp[i].size,
						      1ULL << i };
	return n;
}

static bool xs_ranges_fit(const struct xs_range *x, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (x[i].offset > EMULATE_XSAVE_BYTES || x[i].size > EMULATE_XSAVE_BYTES - x[i].offset ||
		    (x[i].offset < XS_HEADER + XS_HEADER_BYTES && x[i].offset >= XS_HEADER))
			return false;
	return true;
}

static uint64_t rfbm_of(const struct kvm_regs *r, const struct emulate_env *env)
{
	return env->xcr0 & (((r->rdx & 0xffffffffULL) << 32) | (r->rax & 0xffffffffULL));
}

static uint64_t xs_extent(const struct xs_range *x, unsigned n)
{
	uint64_t end = XS_HEADER + XS_HEADER_BYTES;
	for (unsigned i = 0; i < n; i++)
		if (x[i].offset + x[i].size > end)
			end = x[i].offset + x[i].size;
	return end;
}

#define XS_MAX_RANGES (EMULATE_XFEATURES + 4)

/* The operand of XSAVE/XRSTOR: its address (64-byte aligned, or -EINVAL: #GP), RFBM and
 * the ranges it moves. */
static int xs_operand(const struct emulate_insn *in, const struct kvm_regs *r,
		      const struct emulate_env *env, uint64_t *gva, uint64_t *rfbm,
		      struct xs_range *x, unsigned *n)
{
	*gva = emulate_address(in, r, env);
	*rfbm = rfbm_of(r, env);
	*n = xs_ranges(env, *rfbm, x);
	return (*gva & 63) || !xs_ranges_fit(x, *n) ? -EINVAL : 0;
}

/* XSAVE64: every RFBM component from the image into memory; XSTATE_BV's RFBM bits from
 * the image, its other bits as memory had them. */
static int exec_xsave(const struct emulate_insn *in, const struct kvm_regs *r,
		      const struct emulate_env *env, const struct emulate_mem *mem)
{
	uint64_t gva, rfbm;
	struct xs_range x[XS_MAX_RANGES];
	unsigned n;
	if (xs_operand(in, r, env, &gva, &rfbm, x, &n))
		return -EINVAL;
	if (!range_writable(env, mem, gva, xs_extent(x, n)))
		return -EFAULT;
	uint64_t bv, img_bv;
	if (read_or_fault(env, mem, gva + XS_HEADER, &bv, 8))
		return -EFAULT;
	memcpy(&img_bv, env->xsave + XS_HEADER, 8);
	bv = (bv & ~rfbm) | (img_bv & rfbm);
	for (unsigned i = 0; i < n; i++)
		if (!write_or_fault(env, mem, gva + x[i].offset, env->xsave + x[i].offset, x[i].size))
			return -EFAULT;
	return write_or_fault(env, mem, gva + XS_HEADER, &bv, 8) ? 0 : -EFAULT;
}

/* XRSTOR64, standard format: RFBM components in use (XSTATE_BV) from memory, the other
 * RFBM components to their initial state; MXCSR from memory when SSE or AVX is asked. */
static int exec_xrstor(const struct emulate_insn *in, const struct kvm_regs *r,
		       const struct emulate_env *env, const struct emulate_mem *mem)
{
	uint64_t gva, rfbm;
	struct xs_range x[XS_MAX_RANGES];
	unsigned n;
	if (xs_operand(in, r, env, &gva, &rfbm, x, &n))
		return -EINVAL;
	uint8_t hdr[XS_HEADER_BYTES];
	int rc = read_or_fault(env, mem, gva + XS_HEADER, hdr, sizeof(hdr));
	if (rc)
		return rc;
	uint64_t bv, comp;
	memcpy(&bv, hdr, 8);
	memcpy(&comp, hdr + 8, 8);
	if (comp & (1ULL << 63))
		return -EOPNOTSUPP;   /* compacted: Linux uses it only with XSAVEC/XSAVES */
	/* The standard form refuses only bytes 8-23 (XCOMP_BV and the next 8) not zero. */
	for (unsigned i = 8; i < 24; i++)
		if (hdr[i])
			return -EINVAL;
	if (bv & ~env->xcr0)
		return -EINVAL;
	uint8_t img[EMULATE_XSAVE_BYTES];
	memcpy(img, env->xsave, sizeof(img));
	for (unsigned i = 0; i < n; i++) {
		uint8_t *dst = img + x[i].offset;
		if (!x[i].feature || (bv & x[i].feature)) {
			if ((rc = read_or_fault(env, mem, gva + x[i].offset, dst, x[i].size)))
				return rc;
		} else {
			memset(dst, 0, x[i].size);
			if (x[i].offset == 0)
				*(uint16_t *)dst = X87_INIT_FCW;
		}
	}
	if (rfbm & (XFEATURE_SSE | XFEATURE_AVX)) {
		uint32_t mxcsr, mask;
		memcpy(&mxcsr, img + XS_MXCSR, 4);
		memcpy(&mask, env->xsave + XS_MXCSR_MASK, 4);
		memcpy(img + XS_MXCSR_MASK, &mask, 4);   /* not loaded: the CPU's own */
		if (mxcsr & ~(mask ? mask : 0xffbf))
			return -EINVAL;
	}
	uint64_t img_bv;
	memcpy(&img_bv, img + XS_HEADER, 8);
	img_bv = (img_bv & ~rfbm) | (bv & rfbm);
	memcpy(img + XS_HEADER, &img_bv, 8);
	memcpy(env->xsave, img, sizeof(img));
	return 0;
}

int emulate_execute(const struct emulate_insn *in, struct kvm_regs *r,
		    const struct emulate_env *env, const struct emulate_mem *mem)
{
	struct kvm_regs n = *r;
	int rc = 0;
	switch (in->kind) {
	case EMULATE_INT3:
	case EMULATE_FWAIT:
		break;
	case EMULATE_CLAC:
	case EMULATE_STAC:
		if (env->cpl != 0)
			return -EPERM;
		if (in->kind == EMULATE_CLAC)
			n.rflags &= ~RFLAGS_AC;
		else
			n.rflags |= RFLAGS_AC;
		break;
	case EMULATE_POPCNT:
		rc = exec_popcnt(in, &n, env, mem);
		break;
	case EMULATE_CMPXCHG8B:
	case EMULATE_CMPXCHG16B:
		rc = exec_cmpxchg(in, &n, env, mem);
		break;
	case EMULATE_XSAVE:
	case EMULATE_XRSTOR:
		if (env->cpl != 0)
			return -EPERM;   /* KVM runs guest user mode natively: not ours */
		if (!env->xsave || !env->xcomp)
			return -EINVAL;
		rc = in->kind == EMULATE_XSAVE ? exec_xsave(in, &n, env, mem) :
			exec_xrstor(in, &n, env, mem);
		break;
	default:
		return -EOPNOTSUPP;
	}
	if (rc)
		return rc;
	n.rip += in->len;
	*r = n;
	return 0;
}

/* ---- the vCPU glue ----------------------------------------------------------------- */

struct vcpu_mem {
	struct vcpu *v;
	const struct guest_mem *m;
	unsigned cpl;
};

bool emulate_page_allowed(const struct kvm_translation *t, bool write, unsigned cpl)
{
	/* Guest user code reaches only user pages: the assist must not be a way into
	 * the guest kernel's memory that the page tables forbid. */
	return t->valid && (!write || t->writeable) && (cpl != 3 || t->usermode);
}

static void *vcpu_mem_map(void *ctx, uint64_t gva, size_t len, bool write)
{
	struct vcpu_mem *c = ctx;
	struct kvm_translation t = { .linear_address = gva };
	if (ioctl(c->v->fd, KVM_TRANSLATE, &t) < 0 || !emulate_page_allowed(&t, write, c->cpl))
		return NULL;
	return guest_mem_ptr(c->m, t.physical_address, len);
}

/* Up to 15 bytes at rip, stopping at the first page that is not mapped. */
static size_t fetch(const struct emulate_mem *mem, uint64_t rip, uint8_t *buf)
{
	size_t n = 0;
	while (n < EMULATE_MAX_INSN) {
		uint64_t gva = rip + n;
		size_t chunk = PAGE_SIZE - (gva & (PAGE_SIZE - 1));
		if (chunk > EMULATE_MAX_INSN - n)
			chunk = EMULATE_MAX_INSN - n;
		const void *p = mem->map(mem->ctx, gva, chunk, false);
		if (!p)
			break;
		memcpy(buf + n, p, chunk);
		n += chunk;
	}
	return n;
}

static int inject_exception(struct vcpu *v, unsigned vector, bool has_error, uint32_t error)
{
	struct kvm_vcpu_events ev;
	if (ioctl(v->fd, KVM_GET_VCPU_EVENTS, &ev) < 0)
		return -errno;
	if (ev.exception.injected)
		return -EBUSY;
	ev.exception.injected = 1;
	ev.exception.nr = (uint8_t)vector;
	ev.exception.has_error_code = has_error;
	ev.exception.error_code = error;
	/* Only the exception: NMI pending state, SIPI vector, interrupt shadow and SMM
	 * stay as KVM has them. */
	ev.flags = 0;
	return ioctl(v->fd, KVM_SET_VCPU_EVENTS, &ev) < 0 ? -errno : 0;
}

/* The standard-format layout of the state components, from this CPU (KVM's image
 * uses the host's, and the guest's CPUID passes the same on). */
static void xsave_layout(uint64_t xcr0, struct emulate_xcomp *c)
{
	for (unsigned i = 2; i < EMULATE_XFEATURES; i++) {
		uint32_t a = 0, b = 0, cx = 0, d = 0;
		if (xcr0 & (1ULL << i))
			__asm__("cpuid" : "=a"(a), "=b"(b), "=c"(cx), "=d"(d) : "a"(0xd), "c"(i));
		c[i] = (struct emulate_xcomp){ .offset = b, .size = a };
	}
}

/* XSAVE/XRSTOR on KVM's copy of the FPU state; a fault or #GP goes to the guest, which
 * handles it as on hardware (exception fixups around the signal-frame copies). */
static int assist_xsave(struct vcpu *v, const struct emulate_insn *in, struct kvm_regs *r,
			const struct kvm_sregs *s, const struct emulate_mem *mem)
{
	struct kvm_xcrs xcrs;
	static __thread struct kvm_xsave img;
	struct emulate_xcomp comp[EMULATE_XFEATURES];
	struct emulate_fault fault = { 0 };
	if (ioctl(v->fd, KVM_GET_XCRS, &xcrs) < 0 || ioctl(v->fd, KVM_GET_XSAVE, &img) < 0)
		return -errno;
	uint64_t xcr0 = 0;
	for (uint32_t i = 0; i < xcrs.nr_xcrs; i++)
		if (xcrs.xcrs[i].xcr == 0)
			xcr0 = xcrs.xcrs[i].value;
	xsave_layout(xcr0, comp);
	struct emulate_env env = { .cpl = s->cs.selector & 3, .fs_base = s->fs.base,
				   .gs_base = s->gs.base, .xcr0 = xcr0, .xcomp = comp,
				   .xsave = (uint8_t *)img.region, .fault = &fault };
	int rc = emulate_execute(in, r, &env, mem);
	if (rc == -EFAULT) {
		struct kvm_sregs fs = *s;
		struct kvm_translation t = { .linear_address = fault.gva };
		bool present = ioctl(v->fd, KVM_TRANSLATE, &t) == 0 && t.valid;
		fs.cr2 = fault.gva;
		if (ioctl(v->fd, KVM_SET_SREGS, &fs) < 0)
			return -errno;
		return inject_exception(v, VECTOR_PF, true, (present ? PF_PRESENT : 0) |
					(fault.write ? PF_WRITE : 0) | (env.cpl == 3 ? PF_USER : 0));
	}
	if (rc == -EINVAL)
		return inject_exception(v, VECTOR_GP, true, 0);
	if (rc)
		return rc;
	if (in->kind == EMULATE_XRSTOR && ioctl(v->fd, KVM_SET_XSAVE, &img) < 0)
		return -errno;
	return ioctl(v->fd, KVM_SET_REGS, r) < 0 ? -errno : 0;
}

int emulate_assist(struct vcpu *v, const struct guest_mem *m, enum emulate_kind *kind)
{
	struct vcpu_mem ctx = { .v = v, .m = m };
	struct emulate_mem mem = { .map = vcpu_mem_map, .ctx = &ctx };
	struct kvm_regs r;
	struct kvm_sregs s;
	/* The privilege level first: even the instruction's bytes are read as its code may. */
	if (ioctl(v->fd, KVM_GET_REGS, &r) < 0 || ioctl(v->fd, KVM_GET_SREGS, &s) < 0)
		return -errno;
	ctx.cpl = s.cs.selector & 3;
	uint8_t bytes[EMULATE_MAX_INSN];
	size_t n = fetch(&mem, r.rip, bytes);
	struct emulate_insn in;
	int rc = emulate_decode(bytes, n, &in);
	if (rc)
		return rc;
	struct emulate_env env = { 0 };
	bool segment = in.is_mem && in.mem.seg != EMULATE_SEG_NONE;
	bool xsave = in.kind == EMULATE_XSAVE || in.kind == EMULATE_XRSTOR;
	if (in.kind == EMULATE_CLAC || in.kind == EMULATE_STAC || segment || xsave) {
		if (xsave) {
			if ((rc = assist_xsave(v, &in, &r, &s, &mem)))
				return rc;
			*kind = in.kind;
			return 0;
		}
		env = (struct emulate_env){ .cpl = s.cs.selector & 3, .fs_base = s.fs.base,
					    .gs_base = s.gs.base };
	}
	if ((rc = emulate_execute(&in, &r, &env, &mem)))
		return rc;
	if (ioctl(v->fd, KVM_SET_REGS, &r) < 0)
		return -errno;
	if (in.kind == EMULATE_INT3 && (rc = inject_exception(v, VECTOR_BP, false, 0)))
		return rc;
	*kind = in.kind;
	return 0;
}
