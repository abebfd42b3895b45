/* Run inside a Linux guest: does the guest kernel keep each task's vector registers?
 *
 * Two processes pinned to one CPU each hold their own pattern in the upper half of
 * YMM7, in ZMM16 and in the opmask K1 (as far as XCR0 lets user mode use them), and
 * hand the CPU to each other with sched_yield() a few thousand times, checking the
 * registers after every switch. A changed value is state the kernel did not save and
 * restore across a context switch: on emulation-only ("PVM") KVM user mode runs with
 * the host's XCR0, so a guest kernel that saves only the FXSAVE state (noxsave) leaks
 * the upper YMM halves, ZMM16-31 and the opmasks from one task into the next
 * (snapshot/README.md, issue 10).
 *
 * Prints one line and exits 0 when no worker saw a change, 1 when one did, 2 on a
 * setup error. Built static with -mgeneral-regs-only, so the compiler itself never
 * touches a vector register; between the loads and the checks only raw system calls and
 * this file's own integer code run (no libc).
 */
#include <cpuid.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

enum { WORKERS = 2, DEFAULT_ROUNDS = 3000 };

struct caps {
	uint64_t xcr0;
	int ymm, zmm;
};

static struct caps probe(void)
{
	struct caps c = { 0 };
	unsigned a, b, cx, d;
	if (!__get_cpuid(1, &a, &b, &cx, &d) || !(cx & bit_OSXSAVE))
		return c;
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	c.xcr0 = (uint64_t)hi << 32 | lo;
	c.ymm = (cx & bit_AVX) && (c.xcr0 & 0x6) == 0x6;
	if (__get_cpuid_count(7, 0, &a, &b, &cx, &d))
		c.zmm = c.ymm && (b & bit_AVX512F) && (c.xcr0 & 0xe0) == 0xe0;
	return c;
}

static long raw_yield(void)
{
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"((long)SYS_sched_yield) : "rcx", "r11", "memory");
	return ret;
}

/* Not memcmp: glibc's picks an AVX2 or EVEX version that uses the very registers under
 * test (and VZEROUPPER). */
static int same(const uint8_t *a, const uint8_t *b, int n)
{
	int d = 0;
	for (int i = 0; i < n; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

/* Loads the worker's pattern, then yields and compares `rounds` times. Returns the
 * number of rounds after which a register differed. */
static int hold_and_check(const struct caps *c, int id, int rounds)
{
	uint8_t want[64] __attribute__((aligned(64))), got[64] __attribute__((aligned(64)));
	uint16_t kwant = (uint16_t)(0xa5c3 ^ (id * 0x1111)), kgot;
	for (int i = 0; i < 64; i++)
		want[i] = (uint8_t)(0x40 * (id + 1) + i);
	if (c->ymm)
		__asm__ volatile("vmovdqu %0, %%ymm7" : : "m"(want));
	if (c->zmm)
		__asm__ volatile("vmovdqu64 %0, %%zmm16\n\tkmovw %1, %%k1" : : "m"(want), "m"(kwant));
	int bad = 0;
	for (int r = 0; r < rounds; r++) {
		raw_yield();
		int differs = 0;
		if (c->ymm) {
			__asm__ volatile("vmovdqu %%ymm7, %0" : "=m"(got));
			differs |= !same(got, want, 32);
		}
		if (c->zmm) {
			__asm__ volatile("vmovdqu64 %%zmm16, %0\n\tkmovw %%k1, %1" : "=m"(got), "=m"(kgot));
			differs |= !same(got, want, 64) || kgot != kwant;
		}
		if (differs) {
			bad++;
			/* Put the pattern back, so each count is a fresh change. */
			if (c->ymm)
				__asm__ volatile("vmovdqu %0, %%ymm7" : : "m"(want));
			if (c->zmm)
				__asm__ volatile("vmovdqu64 %0, %%zmm16\n\tkmovw %1, %%k1" : : "m"(want), "m"(kwant));
		}
	}
	return bad;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : DEFAULT_ROUNDS;
	if (rounds <= 0) {
		fprintf(stderr, "usage: vector-leak [ROUNDS]\n");
		return 2;
	}
	struct caps c = probe();
	if (!c.ymm) {
		printf("vector-leak: user mode has no AVX state (xcr0=%llx): only FXSAVE state, nothing "
		       "beyond it can leak\n", (unsigned long long)c.xcr0);
		return 0;
	}
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(0, &one);
	if (sched_setaffinity(0, sizeof(one), &one) < 0) {
		perror("vector-leak: sched_setaffinity");
		return 2;
	}
	fflush(stdout);
	pid_t pid[WORKERS];
	for (int i = 0; i < WORKERS; i++) {
		pid[i] = fork();
		if (pid[i] < 0) {
			perror("vector-leak: fork");
			return 2;
		}
		if (pid[i] == 0)
			_exit(hold_and_check(&c, i, rounds) ? 1 : 0);
	}
	int changed = 0;
	for (int i = 0; i < WORKERS; i++) {
		int st = 0;
		if (waitpid(pid[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) > 1) {
			fprintf(stderr, "vector-leak: worker %d ended abnormally (status %#x)\n", i, st);
			return 2;
		}
		changed += WEXITSTATUS(st);
	}
	printf("vector-leak: xcr0=%llx ymm=%d zmm=%d: %d of %d workers saw their registers change "
	       "(%d switches each)\n", (unsigned long long)c.xcr0, c.ymm, c.zmm, changed, WORKERS, rounds);
	return changed ? 1 : 0;
}
