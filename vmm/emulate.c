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

static const char *const kind_names[EMULATE_KINDS] = {
	[EMULATE_INT3] = "int3", [EMULATE_CLAC] = "clac", [EMULATE_STAC] = "stac",
	[EMULATE_FWAIT] = "fwait", [EMULATE_POPCNT] = "popcnt",
	[EMULATE_CMPXCHG8B] = "cmpxchg8b", [EMULATE_CMPXCHG16B] = "cmpxchg16b",
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
};

static void *vcpu_mem_map(void *ctx, uint64_t gva, size_t len, bool write)
{
	struct vcpu_mem *c = ctx;
	struct kvm_translation t = { .linear_address = gva };
	if (ioctl(c->v->fd, KVM_TRANSLATE, &t) < 0 || !t.valid || (write && !t.writeable))
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

static int inject_bp(struct vcpu *v)
{
	struct kvm_vcpu_events ev;
	if (ioctl(v->fd, KVM_GET_VCPU_EVENTS, &ev) < 0)
		return -errno;
	if (ev.exception.injected)
		return -EBUSY;
	ev.exception.injected = 1;
	ev.exception.nr = VECTOR_BP;
	ev.exception.has_error_code = 0;
	ev.exception.error_code = 0;
	/* Only the exception: NMI pending state, SIPI vector, interrupt shadow and SMM
	 * stay as KVM has them. */
	ev.flags = 0;
	return ioctl(v->fd, KVM_SET_VCPU_EVENTS, &ev) < 0 ? -errno : 0;
}

int emulate_assist(struct vcpu *v, const struct guest_mem *m, enum emulate_kind *kind)
{
	struct vcpu_mem ctx = { .v = v, .m = m };
	struct emulate_mem mem = { .map = vcpu_mem_map, .ctx = &ctx };
	struct kvm_regs r;
	if (ioctl(v->fd, KVM_GET_REGS, &r) < 0)
		return -errno;
	uint8_t bytes[EMULATE_MAX_INSN];
	size_t n = fetch(&mem, r.rip, bytes);
	struct emulate_insn in;
	int rc = emulate_decode(bytes, n, &in);
	if (rc)
		return rc;
	struct emulate_env env = { 0 };
	bool segment = in.is_mem && in.mem.seg != EMULATE_SEG_NONE;
	if (in.kind == EMULATE_CLAC || in.kind == EMULATE_STAC || segment) {
		struct kvm_sregs s;
		if (ioctl(v->fd, KVM_GET_SREGS, &s) < 0)
			return -errno;
		env = (struct emulate_env){ .cpl = s.cs.selector & 3, .fs_base = s.fs.base,
					    .gs_base = s.gs.base };
	}
	if ((rc = emulate_execute(&in, &r, &env, &mem)))
		return rc;
	if (ioctl(v->fd, KVM_SET_REGS, &r) < 0)
		return -errno;
	if (in.kind == EMULATE_INT3 && (rc = inject_bp(v)))
		return rc;
	*kind = in.kind;
	return 0;
}
