/* The standalone driver of a fuzz target (the same target clang builds for libFuzzer,
 * tools/fuzz): takes the target's seeds (fuzz_seeds), mutates them with a fixed-seed
 * generator (byte flips, inserts, deletions, splices of two seeds, truncation) and
 * feeds each result to LLVMFuzzerTestOneInput. The sanitizer build of the suite turns
 * any out-of-bounds access or leak into a failure.
 *
 * usage: fuzz-NAME ITERATIONS        run that many inputs
 *        fuzz-NAME --seeds DIR       write the seeds as files (a libFuzzer corpus) */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz.h"

#define MAX_SEEDS 64
#define MAX_INPUT (256u << 10)

static struct {
	uint8_t *p;
	size_t n;
} seeds[MAX_SEEDS];
static unsigned nseeds;

static void add_seed(const void *p, size_t n)
{
	if (nseeds == MAX_SEEDS || n > MAX_INPUT)
		return;
	seeds[nseeds].p = malloc(n ? n : 1);
	if (!seeds[nseeds].p)
		return;
	memcpy(seeds[nseeds].p, p, n);
	seeds[nseeds++].n = n;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static size_t mutate(uint8_t *buf, size_t n)
{
	unsigned muts = 1 + (unsigned)(next() % 8);
	for (unsigned m = 0; m < muts; m++) {
		uint64_t x = next();
		size_t pos = n ? (size_t)(x >> 24) % n : 0;
		switch (x % 6) {
		case 0: /* a random byte */
			if (n)
				buf[pos] = (uint8_t)(x >> 8);
			break;
		case 1: /* a bit */
			if (n)
				buf[pos] ^= (uint8_t)(1u << ((x >> 8) % 8));
			break;
		case 2: /* an interesting value: 0, 0xff, 0x7f, 0x80 */
			if (n)
				buf[pos] = (uint8_t[]){ 0, 0xff, 0x7f, 0x80 }[(x >> 8) % 4];
			break;
		case 3: /* insert */
			if (n < MAX_INPUT) {
				memmove(buf + pos + 1, buf + pos, n - pos);
				buf[pos] = (uint8_t)(x >> 8);
				n++;
			}
			break;
		case 4: /* delete */
			if (n) {
				memmove(buf + pos, buf + pos + 1, n - pos - 1);
				n--;
			}
			break;
		default: { /* splice the tail of another seed in, or truncate */
			const typeof(seeds[0]) *o = &seeds[(x >> 8) % nseeds];
			size_t from = o->n ? (size_t)(x >> 32) % o->n : 0, k = o->n - from;
			if ((x >> 16) & 1 && pos + k <= MAX_INPUT) {
				memcpy(buf + pos, o->p + from, k);
				n = pos + k;
			} else {
				n = pos;
			}
		}
		}
	}
	return n;
}

static int dump(const char *dir)
{
	if (mkdir(dir, 0755) && errno != EEXIST) {
		perror(dir);
		return 1;
	}
	for (unsigned i = 0; i < nseeds; i++) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/seed-%02u", dir, i);
		FILE *f = fopen(path, "wb");
		if (!f || fwrite(seeds[i].p, 1, seeds[i].n, f) != seeds[i].n || fclose(f)) {
			perror(path);
			return 1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	fuzz_seeds(add_seed);
	if (!nseeds)
		add_seed("", 0);
	if (argc == 3 && !strcmp(argv[1], "--seeds"))
		return dump(argv[2]);
	long iters = argc > 1 ? strtol(argv[1], NULL, 10) : 100000;
	uint8_t *buf = malloc(MAX_INPUT + 1);
	if (!buf)
		return 1;
	for (unsigned i = 0; i < nseeds; i++)
		LLVMFuzzerTestOneInput(seeds[i].p, seeds[i].n);
	for (long it = 0; it < iters; it++) {
		const typeof(seeds[0]) *s = &seeds[next() % nseeds];
		memcpy(buf, s->p, s->n);
		size_t n = mutate(buf, s->n);
		LLVMFuzzerTestOneInput(buf, n);
	}
	free(buf);
	for (unsigned i = 0; i < nseeds; i++)
		free(seeds[i].p);
	printf("%ld inputs from %u seeds: no crash\n", iters, nseeds);
	return 0;
}
