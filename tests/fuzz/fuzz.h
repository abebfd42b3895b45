/* What every fuzz target in tests/fuzz provides: the libFuzzer entry point and, for
 * the standalone driver (driver.c), seeds that reach past its first checks. */
#ifndef MITOS_TESTS_FUZZ_H
#define MITOS_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void fuzz_seeds(void (*add)(const void *p, size_t n));

#endif
