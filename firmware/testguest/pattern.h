/* The known contents of the test guest's disk, shared by the guest (which checks them)
 * and the host tools and tests (which write the image), so both use one definition.
 * Plain C: no dependencies beyond <stdint.h>. */
#ifndef MITOS_TESTGUEST_PATTERN_H
#define MITOS_TESTGUEST_PATTERN_H

#include <stdint.h>

#define TG_SECTOR_SIZE       512u
#define TG_WORDS_PER_SECTOR  (TG_SECTOR_SIZE / 8u)
/* "MITOS" in the top bytes, so a pattern word is recognisable in a hex dump. */
#define TG_PATTERN_BASE      0x4d49544f53000000ULL

/* Little-endian 64-bit word w (0..63) of 512-byte sector s. The guest's write test
 * writes the bitwise complement of it and then restores it. */
static inline uint64_t tg_pattern_word(uint64_t sector, unsigned w)
{
	return TG_PATTERN_BASE ^ (sector << 16) ^ (uint64_t)w;
}

#endif
