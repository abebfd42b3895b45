#include <check.h>
#include <errno.h>
#include <string.h>

#include "vmm/emulate.h"

#define ARITH (0x1ULL | 0x4 | 0x10 | 0x40 | 0x80 | 0x800) /* CF PF AF ZF SF OF */
#define ZF 0x40ULL
#define AC (1ULL << 18)

/* ---- guest memory: three pages at GVA_BASE, the last one read-only ---------------------- */

#define GVA_BASE 0x10000ULL
#define NPAGES 3
static uint8_t ram[NPAGES * 4096] __attribute__((aligned(4096)));
static int maps, crossings;
/* >= 0: mappings for writing granted before the second page goes (the guest's page
 * tables changed under the instruction, by another vCPU or by its own write). */
static int write_maps_left = -1;

static void *fake_map(void *ctx, uint64_t gva, size_t len, bool write)
{
	(void)ctx;
	maps++;
	if (write && write_maps_left >= 0 && gva >= GVA_BASE + 4096 && gva < GVA_BASE + 2 * 4096 &&
	    write_maps_left-- == 0)
		return NULL;
	if ((gva & 4095) + len > 4096)
		crossings++;
	if (gva < GVA_BASE || gva + len > GVA_BASE + sizeof(ram))
		return NULL;
	if (write && gva >= GVA_BASE + 2 * 4096)
		return NULL;
	return ram + (gva - GVA_BASE);
}

static const struct emulate_mem mem = { .map = fake_map };
static const struct emulate_env kernel = { .cpl = 0 };

static void setup(void)
{
	memset(ram, 0, sizeof(ram));
	maps = crossings = 0;
}

static int decode(const uint8_t *b, size_t n, struct emulate_insn *in)
{
	memset(in, 0xa5, sizeof(*in));
	return emulate_decode(b, n, in);
}

#define DECODE_OK(in, ...) do { \
	static const uint8_t b_[] = { __VA_ARGS__ }; \
	ck_assert_int_eq(decode(b_, sizeof(b_), &(in)), 0); \
	ck_assert_uint_eq((in).len, sizeof(b_)); \
} while (0)

#define DECODE_FAILS(err, ...) do { \
	static const uint8_t b_[] = { __VA_ARGS__ }; \
	struct emulate_insn i_; \
	ck_assert_int_eq(decode(b_, sizeof(b_), &i_), (err)); \
} while (0)

/* Every proper prefix of a valid instruction is truncated, never something else. */
static void assert_truncations(const uint8_t *b, size_t n)
{
	struct emulate_insn in;
	for (size_t k = 0; k < n; k++)
		ck_assert_msg(decode(b, k, &in) == -ENODATA, "%zu of %zu bytes", k, n);
	/* Trailing bytes after the instruction do not change it. */
	uint8_t more[EMULATE_MAX_INSN + 4];
	memcpy(more, b, n);
	memset(more + n, 0x90, sizeof(more) - n);
	ck_assert_int_eq(decode(more, sizeof(more), &in), 0);
	ck_assert_uint_eq(in.len, n);
}

/* ---- decoding ------------------------------------------------------------------------ */

START_TEST(test_decode_simple)
{
	struct emulate_insn in;
	DECODE_OK(in, 0xcc);
	ck_assert_int_eq(in.kind, EMULATE_INT3);
	DECODE_OK(in, 0x9b);
	ck_assert_int_eq(in.kind, EMULATE_FWAIT);
	DECODE_OK(in, 0x0f, 0x01, 0xca);
	ck_assert_int_eq(in.kind, EMULATE_CLAC);
	DECODE_OK(in, 0x0f, 0x01, 0xcb);
	ck_assert_int_eq(in.kind, EMULATE_STAC);
	static const uint8_t clac[] = { 0x0f, 0x01, 0xca };
	assert_truncations(clac, sizeof(clac));
}
END_TEST

START_TEST(test_decode_simple_refuses_prefixes)
{
	static const uint8_t prefixes[] = { 0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x3e, 0x64, 0x65, 0x48, 0x41 };
	for (size_t i = 0; i < sizeof(prefixes); i++) {
		uint8_t int3[] = { prefixes[i], 0xcc };
		uint8_t fwait[] = { prefixes[i], 0x9b };
		uint8_t clac[] = { prefixes[i], 0x0f, 0x01, 0xca };
		struct emulate_insn in;
		ck_assert_int_eq(decode(int3, sizeof(int3), &in), -EOPNOTSUPP);
		ck_assert_int_eq(decode(fwait, sizeof(fwait), &in), -EOPNOTSUPP);
		ck_assert_int_eq(decode(clac, sizeof(clac), &in), -EOPNOTSUPP);
	}
}
END_TEST

START_TEST(test_decode_unknown)
{
	DECODE_FAILS(-EOPNOTSUPP, 0x90);                   /* nop */
	DECODE_FAILS(-EOPNOTSUPP, 0x0f, 0x05);             /* syscall */
	DECODE_FAILS(-EOPNOTSUPP, 0x48, 0x0f, 0xae, 0x37); /* xsaveopt */
	DECODE_FAILS(-EOPNOTSUPP, 0x0f, 0x01, 0xc8);       /* monitor */
	DECODE_FAILS(-EOPNOTSUPP, 0x0f, 0x01, 0xcc);
	DECODE_FAILS(-EOPNOTSUPP, 0x0f, 0xb9, 0xc7);       /* ud1 */
	DECODE_FAILS(-EOPNOTSUPP, 0xf3, 0x0f, 0xbc, 0xc7); /* tzcnt */
	DECODE_FAILS(-EOPNOTSUPP, 0xcd, 0x03);             /* int 3, the two-byte form */
	DECODE_FAILS(-ENODATA);                            /* no bytes at all */
}
END_TEST

START_TEST(test_decode_popcnt_register_forms)
{
	struct emulate_insn in;
	DECODE_OK(in, 0xf3, 0x48, 0x0f, 0xb8, 0xc7);   /* popcnt %rdi, %rax: Linux's hweight64 */
	ck_assert_int_eq(in.kind, EMULATE_POPCNT);
	ck_assert_uint_eq(in.op_bytes, 8);
	ck_assert(!in.is_mem);
	ck_assert_uint_eq(in.reg, 0);
	ck_assert_uint_eq(in.rm, 7);
	DECODE_OK(in, 0xf3, 0x0f, 0xb8, 0xc7);         /* popcnt %edi, %eax: hweight32 */
	ck_assert_uint_eq(in.op_bytes, 4);
	DECODE_OK(in, 0x66, 0xf3, 0x0f, 0xb8, 0xc7);   /* popcnt %di, %ax */
	ck_assert_uint_eq(in.op_bytes, 2);
	DECODE_OK(in, 0xf3, 0x66, 0x0f, 0xb8, 0xc7);   /* prefixes in either order */
	ck_assert_uint_eq(in.op_bytes, 2);
	DECODE_OK(in, 0x66, 0xf3, 0x48, 0x0f, 0xb8, 0xc7); /* REX.W beats 66 */
	ck_assert_uint_eq(in.op_bytes, 8);
	DECODE_OK(in, 0xf3, 0x45, 0x0f, 0xb8, 0xc7);   /* REX.R|B: popcnt %r15d, %r8d */
	ck_assert_uint_eq(in.op_bytes, 4);
	ck_assert_uint_eq(in.reg, 8);
	ck_assert_uint_eq(in.rm, 15);
	DECODE_OK(in, 0xf3, 0x4c, 0x0f, 0xb8, 0xd9);   /* REX.W|R: popcnt %rcx, %r11 */
	ck_assert_uint_eq(in.op_bytes, 8);
	ck_assert_uint_eq(in.reg, 11);
	ck_assert_uint_eq(in.rm, 1);
	DECODE_OK(in, 0xf3, 0x40, 0x0f, 0xb8, 0xc7);   /* an empty REX */
	ck_assert_uint_eq(in.op_bytes, 4);
	ck_assert_uint_eq(in.reg, 0);
	/* A REX followed by a legacy prefix is ignored: 32-bit, eax/edi. */
	DECODE_OK(in, 0x4d, 0xf3, 0x0f, 0xb8, 0xc7);
	ck_assert_uint_eq(in.op_bytes, 4);
	ck_assert_uint_eq(in.reg, 0);
	ck_assert_uint_eq(in.rm, 7);
	/* Segment and address-size prefixes mean nothing to a register operand. */
	DECODE_OK(in, 0x2e, 0x67, 0xf3, 0x48, 0x0f, 0xb8, 0xc7);
	ck_assert_uint_eq(in.op_bytes, 8);
	static const uint8_t p64[] = { 0xf3, 0x48, 0x0f, 0xb8, 0xc7 };
	assert_truncations(p64, sizeof(p64));
}
END_TEST

START_TEST(test_decode_popcnt_refused)
{
	DECODE_FAILS(-EOPNOTSUPP, 0x0f, 0xb8, 0xc7);             /* no F3 (jmpe) */
	DECODE_FAILS(-EOPNOTSUPP, 0xf2, 0x0f, 0xb8, 0xc7);
	DECODE_FAILS(-EOPNOTSUPP, 0xf3, 0xf2, 0x0f, 0xb8, 0xc7);
	DECODE_FAILS(-EOPNOTSUPP, 0xf0, 0xf3, 0x0f, 0xb8, 0x07); /* LOCK: #UD */
	/* 15 bytes at most: 11 prefixes + popcnt with a disp32 operand is 16. */
	DECODE_FAILS(-EOPNOTSUPP, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e,
		     0xf3, 0x0f, 0xb8, 0x87, 0x00, 0x00, 0x00, 0x00);
	/* ...and a run of prefixes that never reaches an opcode within 15 bytes. */
	DECODE_FAILS(-EOPNOTSUPP, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
		     0x66, 0x66, 0x66, 0x66, 0x66, 0x66);
}
END_TEST

START_TEST(test_decode_memory_operands)
{
	struct emulate_insn in;
	DECODE_OK(in, 0xf3, 0x48, 0x0f, 0xb8, 0x07);               /* (%rdi) */
	ck_assert(in.is_mem);
	ck_assert_int_eq(in.mem.base, 7);
	ck_assert_int_eq(in.mem.index, -1);
	ck_assert_int_eq(in.mem.disp, 0);
	DECODE_OK(in, 0xf3, 0x48, 0x0f, 0xb8, 0x47, 0xf8);         /* -8(%rdi) */
	ck_assert_int_eq(in.mem.disp, -8);
	DECODE_OK(in, 0xf3, 0x48, 0x0f, 0xb8, 0x87, 0x00, 0x01, 0x00, 0x80); /* disp32, negative */
	ck_assert_int_eq(in.mem.disp, (int32_t)0x80000100);
	DECODE_OK(in, 0xf3, 0x48, 0x0f, 0xb8, 0x05, 0x10, 0x00, 0x00, 0x00); /* 0x10(%rip) */
	ck_assert(in.mem.rip_relative);
	ck_assert_int_eq(in.mem.base, -1);
	ck_assert_int_eq(in.mem.disp, 0x10);
	DECODE_OK(in, 0xf3, 0x49, 0x0f, 0xb8, 0x05, 0x10, 0x00, 0x00, 0x00); /* REX.B: still RIP */
	ck_assert(in.mem.rip_relative);
	DECODE_OK(in, 0xf3, 0x49, 0x0f, 0xb8, 0x45, 0x00);         /* 0(%r13) */
	ck_assert(!in.mem.rip_relative);
	ck_assert_int_eq(in.mem.base, 13);
	DECODE_OK(in, 0xf3, 0x48, 0x0f, 0xb8, 0x04, 0x88);         /* (%rax,%rcx,4) */
	ck_assert_int_eq(in.mem.base, 0);
	ck_assert_int_eq(in.mem.index, 1);
	ck_assert_uint_eq(in.mem.scale, 4);
	DECODE_OK(in, 0xf3, 0x4a, 0x0f, 0xb8, 0x04, 0xe0);         /* (%rax,%r12,8): REX.X */
	ck_assert_int_eq(in.mem.index, 12);
	ck_assert_uint_eq(in.mem.scale, 8);
	DECODE_OK(in, 0xf3, 0x48, 0x0f, 0xb8, 0x04, 0x24);         /* (%rsp): SIB, no index */
	ck_assert_int_eq(in.mem.base, 4);
	ck_assert_int_eq(in.mem.index, -1);
	DECODE_OK(in, 0xf3, 0x49, 0x0f, 0xb8, 0x04, 0x24);         /* (%r12) */
	ck_assert_int_eq(in.mem.base, 12);
	DECODE_OK(in, 0xf3, 0x48, 0x0f, 0xb8, 0x04, 0x25, 0x40, 0x00, 0x00, 0x00); /* 0x40 */
	ck_assert_int_eq(in.mem.base, -1);
	ck_assert_int_eq(in.mem.index, -1);
	ck_assert_int_eq(in.mem.disp, 0x40);
	DECODE_OK(in, 0xf3, 0x4b, 0x0f, 0xb8, 0x44, 0x6d, 0x7f);   /* 0x7f(%r13,%r13,2) */
	ck_assert_int_eq(in.mem.base, 13);
	ck_assert_int_eq(in.mem.index, 13);
	ck_assert_uint_eq(in.mem.scale, 2);
	ck_assert_int_eq(in.mem.disp, 0x7f);
	DECODE_OK(in, 0x65, 0xf3, 0x48, 0x0f, 0xb8, 0x04, 0x25, 0x40, 0x00, 0x00, 0x00);
	ck_assert_int_eq(in.mem.seg, EMULATE_SEG_GS);
	DECODE_OK(in, 0x64, 0xf3, 0x48, 0x0f, 0xb8, 0x07);
	ck_assert_int_eq(in.mem.seg, EMULATE_SEG_FS);
	DECODE_OK(in, 0x64, 0x3e, 0xf3, 0x48, 0x0f, 0xb8, 0x07);   /* the last override wins */
	ck_assert_int_eq(in.mem.seg, EMULATE_SEG_NONE);
	DECODE_OK(in, 0x67, 0xf3, 0x48, 0x0f, 0xb8, 0x07);
	ck_assert(in.mem.addr32);
	static const uint8_t longest[] = { 0x65, 0x67, 0x66, 0xf3, 0x4b, 0x0f, 0xb8, 0x84, 0x6d,
					   0x78, 0x56, 0x34, 0x12 };
	assert_truncations(longest, sizeof(longest));
	ck_assert_int_eq(decode(longest, sizeof(longest), &in), 0);
	ck_assert_uint_eq(in.op_bytes, 8);
	ck_assert_int_eq(in.mem.disp, 0x12345678);
}
END_TEST

START_TEST(test_decode_cmpxchg)
{
	struct emulate_insn in;
	DECODE_OK(in, 0xf0, 0x48, 0x0f, 0xc7, 0x4e, 0x20);   /* lock cmpxchg16b 0x20(%rsi): SLUB */
	ck_assert_int_eq(in.kind, EMULATE_CMPXCHG16B);
	ck_assert(in.is_mem);
	ck_assert_int_eq(in.mem.base, 6);
	ck_assert_int_eq(in.mem.disp, 0x20);
	DECODE_OK(in, 0x65, 0x48, 0x0f, 0xc7, 0x0e);         /* cmpxchg16b %gs:(%rsi): percpu */
	ck_assert_int_eq(in.kind, EMULATE_CMPXCHG16B);
	ck_assert_int_eq(in.mem.seg, EMULATE_SEG_GS);
	DECODE_OK(in, 0x0f, 0xc7, 0x0f);                     /* cmpxchg8b (%rdi) */
	ck_assert_int_eq(in.kind, EMULATE_CMPXCHG8B);
	DECODE_OK(in, 0xf0, 0x49, 0x0f, 0xc7, 0x0c, 0x24);   /* lock cmpxchg16b (%r12) */
	ck_assert_int_eq(in.kind, EMULATE_CMPXCHG16B);
	ck_assert_int_eq(in.mem.base, 12);
	static const uint8_t slub[] = { 0xf0, 0x48, 0x0f, 0xc7, 0x4e, 0x20 };
	assert_truncations(slub, sizeof(slub));
	DECODE_FAILS(-EOPNOTSUPP, 0x48, 0x0f, 0xc7, 0xc8);   /* register operand: #UD */
	DECODE_FAILS(-EOPNOTSUPP, 0x48, 0x0f, 0xc7, 0x16);   /* /2 is not cmpxchg */
	DECODE_FAILS(-EOPNOTSUPP, 0x0f, 0xc7, 0xf0);         /* rdrand */
	DECODE_FAILS(-EOPNOTSUPP, 0xf3, 0x48, 0x0f, 0xc7, 0x0e);
	DECODE_FAILS(-EOPNOTSUPP, 0x66, 0x48, 0x0f, 0xc7, 0x0e);
}
END_TEST

/* ---- execution ------------------------------------------------------------------------- */

static struct kvm_regs regs_with(uint64_t rip)
{
	struct kvm_regs r;
	memset(&r, 0, sizeof(r));
	r.rip = rip;
	r.rflags = 0x2;
	return r;
}

static uint64_t *reg_ptr(struct kvm_regs *r, unsigned n)
{
	uint64_t *order[16] = { (uint64_t *)&r->rax, (uint64_t *)&r->rcx, (uint64_t *)&r->rdx,
				(uint64_t *)&r->rbx, (uint64_t *)&r->rsp, (uint64_t *)&r->rbp,
				(uint64_t *)&r->rsi, (uint64_t *)&r->rdi, (uint64_t *)&r->r8,
				(uint64_t *)&r->r9, (uint64_t *)&r->r10, (uint64_t *)&r->r11,
				(uint64_t *)&r->r12, (uint64_t *)&r->r13, (uint64_t *)&r->r14,
				(uint64_t *)&r->r15 };
	return order[n];
}

static int run(const uint8_t *b, size_t n, struct kvm_regs *r, const struct emulate_env *env)
{
	struct emulate_insn in;
	int rc = emulate_decode(b, n, &in);
	return rc ? rc : emulate_execute(&in, r, env, &mem);
}

#define RUN(r, env, ...) ({ static const uint8_t b_[] = { __VA_ARGS__ }; run(b_, sizeof(b_), (r), (env)); })

START_TEST(test_exec_simple)
{
	struct kvm_regs r = regs_with(0x1000);
	ck_assert_int_eq(RUN(&r, &kernel, 0xcc), 0);
	ck_assert_uint_eq(r.rip, 0x1001);
	ck_assert_int_eq(RUN(&r, &kernel, 0x9b), 0);
	ck_assert_uint_eq(r.rip, 0x1002);
	r.rflags = 0x2 | AC | ARITH;
	ck_assert_int_eq(RUN(&r, &kernel, 0x0f, 0x01, 0xca), 0);
	ck_assert_uint_eq(r.rflags, 0x2 | ARITH);
	ck_assert_uint_eq(r.rip, 0x1005);
	ck_assert_int_eq(RUN(&r, &kernel, 0x0f, 0x01, 0xcb), 0);
	ck_assert_uint_eq(r.rflags, 0x2 | ARITH | AC);
	ck_assert_uint_eq(r.rip, 0x1008);
	/* CLAC/STAC are CPL 0 only: refused, nothing changes. */
	struct emulate_env user = { .cpl = 3 };
	struct kvm_regs before = r;
	ck_assert_int_eq(RUN(&r, &user, 0x0f, 0x01, 0xca), -EPERM);
	ck_assert_mem_eq(&r, &before, sizeof(r));
}
END_TEST

START_TEST(test_exec_popcnt_flags)
{
	struct kvm_regs r = regs_with(0x2000);
	r.rdi = 0xff00ff00ff00ff01ULL;
	r.rflags = 0x2 | ARITH;
	ck_assert_int_eq(RUN(&r, &kernel, 0xf3, 0x48, 0x0f, 0xb8, 0xc7), 0);
	ck_assert_uint_eq(r.rax, 33);
	ck_assert_uint_eq(r.rflags, 0x2);  /* CF PF AF ZF SF OF all cleared */
	ck_assert_uint_eq(r.rip, 0x2005);
	r.rdi = 0;
	r.rax = 77;
	r.rflags = 0x2 | ARITH | AC;
	ck_assert_int_eq(RUN(&r, &kernel, 0xf3, 0x48, 0x0f, 0xb8, 0xc7), 0);
	ck_assert_uint_eq(r.rax, 0);
	ck_assert_uint_eq(r.rflags, 0x2 | ZF | AC);  /* ZF for a zero source; AC untouched */
}
END_TEST

START_TEST(test_exec_popcnt_sizes)
{
	struct kvm_regs r = regs_with(0);
	r.rdi = 0xffffffff00000001ULL;
	r.rax = 0xdeadbeefdeadbeefULL;
	ck_assert_int_eq(RUN(&r, &kernel, 0xf3, 0x0f, 0xb8, 0xc7), 0);
	ck_assert_uint_eq(r.rax, 1);  /* 32 bits counted, result zero-extended */
	r.rdi = 0xffffffff00000000ULL;
	ck_assert_int_eq(RUN(&r, &kernel, 0xf3, 0x0f, 0xb8, 0xc7), 0);
	ck_assert_uint_eq(r.rax, 0);
	ck_assert_uint_eq(r.rflags & ZF, ZF);
	r.rdi = 0xffff0003;
	r.rax = 0x1111222233334444ULL;
	ck_assert_int_eq(RUN(&r, &kernel, 0x66, 0xf3, 0x0f, 0xb8, 0xc7), 0);
	ck_assert_uint_eq(r.rax, 0x1111222233330002ULL);  /* 16 bits: the rest of rax stays */
	ck_assert_uint_eq(r.rflags & ZF, 0);
	r.rdi = 0xffff0000;
	ck_assert_int_eq(RUN(&r, &kernel, 0x66, 0xf3, 0x0f, 0xb8, 0xc7), 0);
	ck_assert_uint_eq(r.rax, 0x1111222233330000ULL);
	ck_assert_uint_eq(r.rflags & ZF, ZF);
	ck_assert_uint_eq(r.rip, 4 + 4 + 5 + 5);
}
END_TEST

/* Every destination/source pair, 64 and 32 bits, through REX.R and REX.B. */
START_TEST(test_exec_popcnt_all_registers)
{
	for (unsigned d = 0; d < 16; d++)
		for (unsigned s = 0; s < 16; s++)
			for (int w = 0; w < 2; w++) {
				struct kvm_regs r = regs_with(0x3000);
				for (unsigned k = 0; k < 16; k++)
					*reg_ptr(&r, k) = (0x0101010101010101ULL << (k % 8)) | (1ULL << (32 + k)) | k;
				uint64_t src = *reg_ptr(&r, s);
				uint64_t want = (uint64_t)__builtin_popcountll(w ? src : (uint32_t)src);
				uint8_t rex = 0x40 | (w ? 8 : 0) | (d >= 8 ? 4 : 0) | (s >= 8 ? 1 : 0);
				uint8_t b[] = { 0xf3, rex, 0x0f, 0xb8, (uint8_t)(0xc0 | (d & 7) << 3 | (s & 7)) };
				ck_assert_int_eq(run(b, sizeof(b), &r, &kernel), 0);
				ck_assert_msg(*reg_ptr(&r, d) == want, "d=%u s=%u w=%d", d, s, w);
				for (unsigned k = 0; k < 16; k++)
					if (k != d)
						ck_assert_uint_eq(*reg_ptr(&r, k), (0x0101010101010101ULL << (k % 8)) |
								  (1ULL << (32 + k)) | k);
			}
}
END_TEST

START_TEST(test_exec_popcnt_memory)
{
	uint64_t v = 0x8000000000000003ULL;
	memcpy(ram + 0x18, &v, 8);
	struct kvm_regs r = regs_with(0x4000);
	r.rdi = GVA_BASE + 0x10;
	ck_assert_int_eq(RUN(&r, &kernel, 0xf3, 0x48, 0x0f, 0xb8, 0x47, 0x08), 0);  /* 8(%rdi) */
	ck_assert_uint_eq(r.rax, 3);
	ck_assert_uint_eq(r.rip, 0x4006);
	/* (%rax,%rcx,4) */
	r.rax = GVA_BASE;
	r.rcx = 6;
	ck_assert_int_eq(RUN(&r, &kernel, 0xf3, 0x48, 0x0f, 0xb8, 0x14, 0x88), 0);  /* -> rdx */
	ck_assert_uint_eq(r.rdx, 3);
	/* RIP-relative: next RIP + disp. */
	r = regs_with(GVA_BASE);
	ck_assert_int_eq(RUN(&r, &kernel, 0xf3, 0x48, 0x0f, 0xb8, 0x05, 0x0f, 0x00, 0x00, 0x00), 0);
	ck_assert_uint_eq(r.rax, 3);  /* GVA_BASE + 9 + 0x0f = GVA_BASE + 0x18 */
	/* GS base + absolute disp32. */
	struct emulate_env gs = { .gs_base = GVA_BASE };
	r = regs_with(0);
	ck_assert_int_eq(RUN(&r, &gs, 0x65, 0xf3, 0x48, 0x0f, 0xb8, 0x04, 0x25, 0x18, 0x00, 0x00, 0x00), 0);
	ck_assert_uint_eq(r.rax, 3);
	/* 67: the address wraps at 32 bits. */
	r = regs_with(0);
	r.rdi = 0x100000000ULL + GVA_BASE + 0x18;
	ck_assert_int_eq(RUN(&r, &kernel, 0x67, 0xf3, 0x48, 0x0f, 0xb8, 0x07), 0);
	ck_assert_uint_eq(r.rax, 3);
	/* 16-bit memory operand reads two bytes only. */
	r = regs_with(0);
	r.rdi = GVA_BASE + 0x18;
	ck_assert_int_eq(RUN(&r, &kernel, 0x66, 0xf3, 0x0f, 0xb8, 0x07), 0);
	ck_assert_uint_eq(r.rax, 2);
	ck_assert_int_eq(crossings, 0);
}
END_TEST

START_TEST(test_exec_popcnt_memory_across_pages)
{
	memset(ram + 4096 - 4, 0xff, 8);  /* 32 bits each side of the boundary */
	struct kvm_regs r = regs_with(0);
	r.rsi = GVA_BASE + 4096 - 4;
	ck_assert_int_eq(RUN(&r, &kernel, 0xf3, 0x48, 0x0f, 0xb8, 0x06), 0);
	ck_assert_uint_eq(r.rax, 64);
	ck_assert_int_eq(maps, 2);
	ck_assert_int_eq(crossings, 0);
	/* Running off the end of mapped memory faults and changes nothing. */
	r.rsi = GVA_BASE + sizeof(ram) - 4;
	struct kvm_regs before = r;
	ck_assert_int_eq(RUN(&r, &kernel, 0xf3, 0x48, 0x0f, 0xb8, 0x06), -EFAULT);
	ck_assert_mem_eq(&r, &before, sizeof(r));
}
END_TEST

START_TEST(test_exec_cmpxchg16b)
{
	uint64_t m[2] = { 0x1111, 0x2222 };
	memcpy(ram + 0x20, m, 16);
	struct kvm_regs r = regs_with(0x5000);
	r.rsi = GVA_BASE;
	r.rax = 0x1111;
	r.rdx = 0x2222;
	r.rbx = 0x3333;
	r.rcx = 0x4444;
	r.rflags = 0x2 | ARITH;
	ck_assert_int_eq(RUN(&r, &kernel, 0xf0, 0x48, 0x0f, 0xc7, 0x4e, 0x20), 0);
	memcpy(m, ram + 0x20, 16);
	ck_assert_uint_eq(m[0], 0x3333);
	ck_assert_uint_eq(m[1], 0x4444);
	ck_assert_uint_eq(r.rflags, 0x2 | ARITH);  /* ZF set, the others untouched */
	ck_assert_uint_eq(r.rax, 0x1111);
	ck_assert_uint_eq(r.rip, 0x5006);
	/* Mismatch: RDX:RAX get the memory value, memory stays. */
	r.rflags = 0x2 | ARITH;
	ck_assert_int_eq(RUN(&r, &kernel, 0xf0, 0x48, 0x0f, 0xc7, 0x4e, 0x20), 0);
	ck_assert_uint_eq(r.rax, 0x3333);
	ck_assert_uint_eq(r.rdx, 0x4444);
	ck_assert_uint_eq(r.rflags, 0x2 | (ARITH & ~ZF));
	memcpy(m, ram + 0x20, 16);
	ck_assert_uint_eq(m[0], 0x3333);
	/* Through GS, as this_cpu_cmpxchg_double does. */
	struct emulate_env gs = { .gs_base = GVA_BASE };
	r.rsi = 0x20;
	r.rcx = 0x5555;
	ck_assert_int_eq(RUN(&r, &gs, 0x65, 0x48, 0x0f, 0xc7, 0x0e), 0);
	memcpy(m, ram + 0x20, 16);
	ck_assert_uint_eq(m[1], 0x5555);
	/* Misaligned: #GP on hardware, refused here; unmapped and read-only: fault. */
	struct kvm_regs before = r;
	r.rsi = GVA_BASE + 8;
	before.rsi = r.rsi;
	ck_assert_int_eq(RUN(&r, &kernel, 0x48, 0x0f, 0xc7, 0x0e), -EINVAL);
	ck_assert_mem_eq(&r, &before, sizeof(r));
	r.rsi = before.rsi = 0x100000;
	ck_assert_int_eq(RUN(&r, &kernel, 0x48, 0x0f, 0xc7, 0x0e), -EFAULT);
	r.rsi = before.rsi = GVA_BASE + 2 * 4096;
	ck_assert_int_eq(RUN(&r, &kernel, 0x48, 0x0f, 0xc7, 0x0e), -EFAULT);
	ck_assert_mem_eq(&r, &before, sizeof(r));
}
END_TEST

START_TEST(test_exec_cmpxchg8b)
{
	uint64_t v = 0x00000002aaaaaaaaULL;
	memcpy(ram + 0x44, &v, 8);  /* 8B need not be aligned */
	struct kvm_regs r = regs_with(0);
	r.rdi = GVA_BASE + 0x44;
	r.rax = 0xffffffff00000000ULL | 0xaaaaaaaa;
	r.rdx = 0xffffffff00000000ULL | 0x2;
	r.rbx = 0x12345678;
	r.rcx = 0x9abcdef0;
	ck_assert_int_eq(RUN(&r, &kernel, 0x0f, 0xc7, 0x0f), 0);
	memcpy(&v, ram + 0x44, 8);
	ck_assert_uint_eq(v, 0x9abcdef012345678ULL);
	ck_assert_uint_eq(r.rflags & ZF, ZF);
	ck_assert_uint_eq(r.rax, 0xffffffffaaaaaaaaULL);  /* not written on success */
	ck_assert_int_eq(RUN(&r, &kernel, 0xf0, 0x0f, 0xc7, 0x0f), 0);
	ck_assert_uint_eq(r.rflags & ZF, 0);
	ck_assert_uint_eq(r.rax, 0x12345678);  /* written, zero-extended, on failure */
	ck_assert_uint_eq(r.rdx, 0x9abcdef0);
	/* Straddling two pages cannot be atomic: refused. */
	r.rdi = GVA_BASE + 4096 - 4;
	ck_assert_int_eq(RUN(&r, &kernel, 0x0f, 0xc7, 0x0f), -EINVAL);
}
END_TEST

/* ---- XSAVE64 / XRSTOR64 ------------------------------------------------------------- */

START_TEST(test_decode_xsave)
{
	struct emulate_insn in;
	DECODE_OK(in, 0x48, 0x0f, 0xae, 0x27);   /* xsave64 (%rdi) */
	ck_assert_int_eq(in.kind, EMULATE_XSAVE);
	ck_assert(in.is_mem);
	ck_assert_int_eq(in.mem.base, 7);
	DECODE_OK(in, 0x48, 0x0f, 0xae, 0x2f);   /* xrstor64 (%rdi) */
	ck_assert_int_eq(in.kind, EMULATE_XRSTOR);
	DECODE_OK(in, 0x49, 0x0f, 0xae, 0x6c, 0x24, 0x40);  /* 0x40(%r12) */
	ck_assert_int_eq(in.kind, EMULATE_XRSTOR);
	ck_assert_int_eq(in.mem.base, 12);
	ck_assert_int_eq(in.mem.disp, 0x40);
	static const uint8_t x64[] = { 0x48, 0x0f, 0xae, 0x27 };
	assert_truncations(x64, sizeof(x64));
	/* The 32-bit forms, XSAVEOPT (/6), FXSAVE (/0), fences (mod 3), prefixes: KVM's or
	 * nobody's. */
	DECODE_FAILS(-EOPNOTSUPP, 0x0f, 0xae, 0x27);
	DECODE_FAILS(-EOPNOTSUPP, 0x48, 0x0f, 0xae, 0x37);
	DECODE_FAILS(-EOPNOTSUPP, 0x48, 0x0f, 0xae, 0x07);
	DECODE_FAILS(-EOPNOTSUPP, 0x48, 0x0f, 0xae, 0xf0);
	DECODE_FAILS(-EOPNOTSUPP, 0x66, 0x48, 0x0f, 0xae, 0x27);
	DECODE_FAILS(-EOPNOTSUPP, 0xf0, 0x48, 0x0f, 0xae, 0x27);
}
END_TEST

#define AVX_OFFSET 576
#define XS_END     (AVX_OFFSET + 256)

static struct emulate_xcomp xcomp[EMULATE_XFEATURES];
static uint8_t image[EMULATE_XSAVE_BYTES];
static struct emulate_fault fault;

/* XCR0 = x87|SSE|AVX, the AVX component where CPUs put it; a patterned image. */
static struct emulate_env xsave_env(void)
{
	memset(xcomp, 0, sizeof(xcomp));
	xcomp[2] = (struct emulate_xcomp){ .offset = AVX_OFFSET, .size = 256 };
	for (unsigned i = 0; i < sizeof(image); i++)
		image[i] = (uint8_t)(i * 7 + 3);
	memset(image + 512, 0, 64);
	image[512] = 0x7;                                    /* XSTATE_BV */
	uint32_t mxcsr = 0x1f80, mask = 0xffff;
	memcpy(image + 24, &mxcsr, 4);
	memcpy(image + 28, &mask, 4);
	memset(&fault, 0, sizeof(fault));
	return (struct emulate_env){ .cpl = 0, .xcr0 = 0x7, .xcomp = xcomp, .xsave = image,
				     .fault = &fault };
}

static struct kvm_regs xsave_regs(uint64_t addr, uint64_t rfbm)
{
	struct kvm_regs r = regs_with(0x1000);
	r.rdi = addr;
	r.rax = rfbm & 0xffffffff;
	r.rdx = rfbm >> 32;
	return r;
}

START_TEST(test_exec_xsave)
{
	struct emulate_env env = xsave_env();
	memset(ram, 0xee, 4096);
	uint64_t stale_bv = 0x2;      /* XSTATE_BV bits outside RFBM stay as memory had them */
	memcpy(ram + 512, &stale_bv, 8);
	struct kvm_regs r = xsave_regs(GVA_BASE, 0x5);           /* x87 and AVX, not SSE */
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x27), 0);
	ck_assert_uint_eq(r.rip, 0x1004);
	ck_assert_mem_eq(ram, image, 24);                        /* x87 control words */
	ck_assert_mem_eq(ram + 24, image + 24, 8);              /* MXCSR: AVX asks for it */
	ck_assert_mem_eq(ram + 32, image + 32, 128);            /* ST0-ST7 */
	ck_assert_uint_eq(ram[160], 0xee);                      /* XMM: not asked */
	ck_assert_mem_eq(ram + AVX_OFFSET, image + AVX_OFFSET, 256);
	uint64_t bv;
	memcpy(&bv, ram + 512, 8);
	ck_assert_uint_eq(bv, 0x7);
	ck_assert_uint_eq(ram[520], 0xee);                      /* rest of the header untouched */

	r = xsave_regs(GVA_BASE, ~0ULL);                         /* RFBM is cut to XCR0 */
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x27), 0);
	ck_assert_mem_eq(ram + 160, image + 160, 256);
	ck_assert_uint_eq(ram[XS_END], 0xee);
}
END_TEST

START_TEST(test_exec_xsave_faults)
{
	struct emulate_env env = xsave_env();
	struct kvm_regs r = xsave_regs(GVA_BASE + 8, 0x7), before = r;
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x27), -EINVAL);   /* not 64-aligned */
	ck_assert_mem_eq(&r, &before, sizeof(r));
	/* Straddles into the read-only third page: nothing written, the fault named. */
	r = xsave_regs(GVA_BASE + 2 * 4096 - 512, 0x7);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x27), -EFAULT);
	ck_assert_uint_eq(fault.gva, GVA_BASE + 2 * 4096);
	ck_assert(fault.write);
	ck_assert_uint_eq(ram[4096 + 3584], 0);
	env.cpl = 3;
	r = xsave_regs(GVA_BASE, 0x7);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x27), -EPERM);
	/* An operand whose end wraps past 2^64: a fault at its start, not a write through
	 * the wrapped address (the VMM wrote to NULL). */
	env.cpl = 0;
	r = xsave_regs(0xffffffffffffffc0ULL, 0x7);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x27), -EFAULT);
	ck_assert_uint_eq(fault.gva, 0xffffffffffffffc0ULL);
	/* Its second page goes after the check (its page tables rewritten meanwhile): the
	 * write stops there with a fault (it wrote through NULL). */
	write_maps_left = 1;
	r = xsave_regs(GVA_BASE + 4096 - 512, 0x7);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x27), -EFAULT);
	ck_assert_uint_eq(fault.gva & ~4095ULL, GVA_BASE + 4096);
	write_maps_left = -1;
}
END_TEST

/* An XSAVE area in guest memory: a pattern other than the image's, header bv. */
static void xsave_area(uint64_t bv, uint32_t mxcsr)
{
	for (unsigned i = 0; i < XS_END; i++)
		ram[i] = (uint8_t)(i * 13 + 1);
	memset(ram + 512, 0, 64);
	memcpy(ram + 512, &bv, 8);
	memcpy(ram + 24, &mxcsr, 4);
}

START_TEST(test_exec_xrstor)
{
	struct emulate_env env = xsave_env();
	uint8_t before[sizeof(image)];
	xsave_area(0x7, 0x1fa0);
	struct kvm_regs r = xsave_regs(GVA_BASE, 0x7);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x2f), 0);
	ck_assert_uint_eq(r.rip, 0x1004);
	ck_assert_mem_eq(image, ram, 24);
	ck_assert_mem_eq(image + 24, ram + 24, 4);              /* MXCSR loaded ... */
	uint32_t mask;
	memcpy(&mask, image + 28, 4);
	ck_assert_uint_eq(mask, 0xffff);                        /* ... its mask is the CPU's */
	ck_assert_mem_eq(image + 32, ram + 32, 416 - 32);
	ck_assert_mem_eq(image + AVX_OFFSET, ram + AVX_OFFSET, 256);

	/* XSTATE_BV without SSE and AVX: those go to their initial state (zero), MXCSR
	 * still comes from memory; x87 in use comes from memory. */
	env = xsave_env();
	xsave_area(0x1, 0x1f80);
	r = xsave_regs(GVA_BASE, 0x7);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x2f), 0);
	ck_assert_mem_eq(image + 32, ram + 32, 128);
	for (unsigned i = 160; i < 416; i++)
		ck_assert_uint_eq(image[i], 0);
	for (unsigned i = AVX_OFFSET; i < XS_END; i++)
		ck_assert_uint_eq(image[i], 0);
	uint64_t bv;
	memcpy(&bv, image + 512, 8);
	ck_assert_uint_eq(bv, 0x1);

	/* x87 not in use: FCW 0x37f, the rest zero. */
	env = xsave_env();
	xsave_area(0x0, 0x1f80);
	r = xsave_regs(GVA_BASE, 0x1);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x2f), 0);
	ck_assert_uint_eq(image[0] | image[1] << 8, 0x37f);
	ck_assert_uint_eq(image[2], 0);
	ck_assert_uint_eq(image[160], (uint8_t)(160 * 7 + 3));  /* SSE not asked: kept */

	/* What the CPU refuses (#GP): bits beyond XCR0, a dirty header, MXCSR reserved
	 * bits, misalignment; the image stays as it was. */
	env = xsave_env();
	memcpy(before, image, sizeof(image));
	xsave_area(0x8, 0x1f80);
	r = xsave_regs(GVA_BASE, 0x7);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x2f), -EINVAL);
	xsave_area(0x7, 0x1f80);
	ram[512 + 20] = 1;
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x2f), -EINVAL);
	ram[512 + 20] = 0;
	ram[512 + 40] = 1;      /* past byte 23: the standard form does not look */
	memcpy(image, before, sizeof(image));
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x2f), 0);
	memcpy(image, before, sizeof(image));
	r = xsave_regs(GVA_BASE, 0x7);
	xsave_area(0x7, 0x1f80);
	uint32_t bad_mask = 0xffbf;
	memcpy(image + 28, &bad_mask, 4);
	memcpy(before + 28, &bad_mask, 4);
	xsave_area(0x7, 0x40 | 0x10000);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x2f), -EINVAL);
	r = xsave_regs(GVA_BASE + 32, 0x7);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x2f), -EINVAL);
	ck_assert_mem_eq(image, before, sizeof(image));
	/* Unmapped: the page named, for reading. */
	r = xsave_regs(GVA_BASE + 3 * 4096, 0x7);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x2f), -EFAULT);
	ck_assert_uint_eq(fault.gva, GVA_BASE + 3 * 4096 + 512);
	ck_assert(!fault.write);
}
END_TEST

START_TEST(test_exec_xsave_round_trip)
{
	struct emulate_env env = xsave_env();
	uint8_t saved[sizeof(image)];
	memcpy(saved, image, sizeof(image));
	struct kvm_regs r = xsave_regs(GVA_BASE + 4096, 0x7);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x27), 0);
	memset(image, 0, sizeof(image));
	memcpy(image + 28, saved + 28, 4);   /* the CPU's MXCSR_MASK */
	r = xsave_regs(GVA_BASE + 4096, 0x7);
	ck_assert_int_eq(RUN(&r, &env, 0x48, 0x0f, 0xae, 0x2f), 0);
	/* Everything XSAVE covers: the legacy region up to XMM15, XSTATE_BV, AVX. */
	ck_assert_mem_eq(image, saved, 416);
	ck_assert_mem_eq(image + 512, saved + 512, 8);
	ck_assert_mem_eq(image + AVX_OFFSET, saved + AVX_OFFSET, 256);
}
END_TEST

/* The assist reads and writes guest memory for the instruction it performs: guest user
 * code must reach no page its page tables keep from user mode. */
START_TEST(test_page_allowed_respects_user_supervisor)
{
	struct kvm_translation kernel_rw = { .valid = 1, .writeable = 1, .usermode = 0 };
	struct kvm_translation user_ro = { .valid = 1, .writeable = 0, .usermode = 1 };
	struct kvm_translation user_rw = { .valid = 1, .writeable = 1, .usermode = 1 };
	struct kvm_translation absent = { .valid = 0, .writeable = 1, .usermode = 1 };
	ck_assert(emulate_page_allowed(&kernel_rw, true, 0));
	ck_assert(!emulate_page_allowed(&kernel_rw, false, 3));
	ck_assert(!emulate_page_allowed(&kernel_rw, true, 3));
	ck_assert(emulate_page_allowed(&user_ro, false, 3));
	ck_assert(!emulate_page_allowed(&user_ro, true, 3));
	ck_assert(emulate_page_allowed(&user_rw, true, 3));
	ck_assert(!emulate_page_allowed(&absent, false, 0));
}
END_TEST

START_TEST(test_kind_names)
{
	for (int k = 0; k < EMULATE_KINDS; k++)
		ck_assert_ptr_nonnull(emulate_kind_name(k));
	ck_assert_str_eq(emulate_kind_name(EMULATE_POPCNT), "popcnt");
	ck_assert_str_eq(emulate_kind_name(EMULATE_KINDS), "?");
}
END_TEST

static Suite *emulate_suite(void)
{
	Suite *s = suite_create("emulate");
	TCase *tc = tcase_create("core");
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_decode_simple);
	tcase_add_test(tc, test_decode_simple_refuses_prefixes);
	tcase_add_test(tc, test_decode_unknown);
	tcase_add_test(tc, test_decode_popcnt_register_forms);
	tcase_add_test(tc, test_decode_popcnt_refused);
	tcase_add_test(tc, test_decode_memory_operands);
	tcase_add_test(tc, test_decode_cmpxchg);
	tcase_add_test(tc, test_exec_simple);
	tcase_add_test(tc, test_exec_popcnt_flags);
	tcase_add_test(tc, test_exec_popcnt_sizes);
	tcase_add_test(tc, test_exec_popcnt_all_registers);
	tcase_add_test(tc, test_exec_popcnt_memory);
	tcase_add_test(tc, test_exec_popcnt_memory_across_pages);
	tcase_add_test(tc, test_exec_cmpxchg16b);
	tcase_add_test(tc, test_exec_cmpxchg8b);
	tcase_add_test(tc, test_decode_xsave);
	tcase_add_test(tc, test_exec_xsave);
	tcase_add_test(tc, test_exec_xsave_faults);
	tcase_add_test(tc, test_exec_xrstor);
	tcase_add_test(tc, test_exec_xsave_round_trip);
	tcase_add_test(tc, test_page_allowed_respects_user_supervisor);
	tcase_add_test(tc, test_kind_names);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(emulate_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
