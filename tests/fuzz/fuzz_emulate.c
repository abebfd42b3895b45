/* Fuzz target: the instruction assist (vmm/emulate.c) as a hostile guest drives it on
 * emulation-only KVM: any instruction bytes, any registers, and guest memory whose
 * pages come and go between two mappings of one instruction (its page tables are the
 * guest's: another vCPU, or the instruction's own write, may change them), placed
 * anywhere in the address space, the top of it included.
 *
 * Input: 16 bytes of instruction, 16 registers (8 bytes each), fs/gs base, then a
 * memory plan: where its four pages are, which may be read or written, after how many
 * mappings one of them goes, the CPL; what remains is the vCPU's XSAVE image. Checked:
 * no access outside the pages, no mapping that crosses a page (the executor's
 * contract), RIP moved by the instruction's length when it ran, a fault named on
 * -EFAULT. */
#include <assert.h>
#include <errno.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"
#include "vmm/emulate.h"

#define PAGES 4
static uint8_t ram[PAGES * 4096];

struct plan {
	uint64_t base;
	uint8_t readable, writable; /* a bit per page */
	uint8_t vanish_page;        /* which page goes ... */
	uint8_t vanish_after;       /* ... after this many mappings (0: never) */
	unsigned maps;
};

static void *map(void *ctx, uint64_t gva, size_t len, bool write)
{
	struct plan *p = ctx;
	assert(len >= 1 && (gva & 4095) + len <= 4096);
	p->maps++;
	uint64_t off = gva - p->base;
	if (gva < p->base || off >= sizeof(ram))
		return NULL;
	unsigned page = (unsigned)(off / 4096);
	if (p->vanish_after && p->maps > p->vanish_after && page == p->vanish_page % PAGES)
		return NULL;
	if (!((write ? p->writable : p->readable) >> page & 1))
		return NULL;
	return ram + off;
}

static uint64_t take64(const uint8_t **d, size_t *n)
{
	uint64_t v = 0;
	size_t k = *n < 8 ? *n : 8;
	memcpy(&v, *d, k);
	*d += k;
	*n -= k;
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 16)
		return 0;
	struct emulate_insn in;
	if (emulate_decode(data, 16, &in))
		return 0;
	const uint8_t *d = data + 16;
	size_t n = size - 16;
	struct kvm_regs r;
	__u64 *gpr = &r.rax;
	memset(&r, 0, sizeof(r));
	for (unsigned i = 0; i < 16; i++)
		gpr[i] = take64(&d, &n);
	r.rip = 0x1000;
	struct emulate_env env = { 0 };
	env.fs_base = take64(&d, &n);
	env.gs_base = take64(&d, &n);
	uint64_t m = take64(&d, &n);
	struct plan plan = { .readable = (uint8_t)m, .writable = (uint8_t)(m >> 8), .vanish_page = (uint8_t)(m >> 16),
			     .vanish_after = (uint8_t)(m >> 24) };
	/* Low memory, or the top of the address space (operands that wrap past 2^64). */
	plan.base = (m >> 32 & 1) ? 0ULL - sizeof(ram) : 0x10000 + ((m >> 33 & 0xff) << 12);
	env.cpl = (m >> 41 & 1) ? 3 : 0;
	static struct emulate_xcomp xcomp[EMULATE_XFEATURES];
	xcomp[2] = (struct emulate_xcomp){ .offset = 576, .size = 256 };
	static uint8_t xsave[EMULATE_XSAVE_BYTES];
	memset(xsave, 0, sizeof(xsave));
	memcpy(xsave, d, n < sizeof(xsave) ? n : sizeof(xsave));
	env.xcr0 = 0x7;
	env.xcomp = xcomp;
	env.xsave = xsave;
	struct emulate_fault fault = { 0 };
	env.fault = &fault;
	memset(ram, 0x5a, sizeof(ram));
	struct emulate_mem mem = { .map = map, .ctx = &plan };
	int rc = emulate_execute(&in, &r, &env, &mem);
	if (rc == 0)
		assert(r.rip == 0x1000 + in.len);
	else
		assert(r.rip == 0x1000);
	return 0;
}

void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	static const uint8_t insns[][16] = {
		{ 0x48, 0x0f, 0xae, 0x27 },             /* xsave64 (%rdi) */
		{ 0x48, 0x0f, 0xae, 0x2f },             /* xrstor64 (%rdi) */
		{ 0x48, 0x0f, 0xc7, 0x0f },             /* cmpxchg16b (%rdi) */
		{ 0x0f, 0xc7, 0x0f },                   /* cmpxchg8b (%rdi) */
		{ 0xf3, 0x48, 0x0f, 0xb8, 0x07 },       /* popcnt (%rdi), %rax */
		{ 0xf3, 0x48, 0x0f, 0xb8, 0xc7 },       /* popcnt %rdi, %rax */
		{ 0xcc }, { 0x9b }, { 0x0f, 0x01, 0xca }, { 0x0f, 0x01, 0xcb },
	};
	static uint8_t in[16 + 19 * 8 + 1024];
	for (size_t i = 0; i < sizeof(insns) / sizeof(insns[0]); i++)
		for (unsigned top = 0; top < 2; top++) {
			memset(in, 0, sizeof(in));
			memcpy(in, insns[i], 16);
			uint64_t rdi = top ? 0ULL - 4 * 4096 + 4096 - 512 : 0x10000 + 4096 - 512;
			uint64_t rax = 0x7;
			memcpy(in + 16, &rax, 8);
			memcpy(in + 16 + 5 * 8, &rdi, 8);   /* rdi is the sixth of kvm_regs */
			uint64_t plan = 0xf | 0xf << 8 | (uint64_t)1 << 16 | (uint64_t)3 << 24 | (uint64_t)top << 32;
			memcpy(in + 16 + 18 * 8, &plan, 8);
			add(in, sizeof(in));
		}
}
