/* Writes a raw disk image holding the test guest's known pattern (firmware/testguest/
 * pattern.h), so the host side and the guest share one definition of the bytes.
 * usage: testguest-mkdisk PATH SECTORS */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firmware/testguest/pattern.h"

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s PATH SECTORS\n", argv[0]);
		return 2;
	}
	char *end;
	unsigned long long sectors = strtoull(argv[2], &end, 10);
	if (*end || sectors == 0 || sectors > (1ULL << 32)) {
		fprintf(stderr, "%s: SECTORS must be 1..2^32\n", argv[0]);
		return 2;
	}
	FILE *f = fopen(argv[1], "wb");
	if (!f) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], argv[1], strerror(errno));
		return 1;
	}
	for (unsigned long long s = 0; s < sectors; s++) {
		uint64_t sector[TG_WORDS_PER_SECTOR];
		for (unsigned w = 0; w < TG_WORDS_PER_SECTOR; w++)
			sector[w] = tg_pattern_word(s, w);  /* x86 is little-endian, as the format */
		if (fwrite(sector, sizeof(sector), 1, f) != 1) {
			fprintf(stderr, "%s: %s: write failed\n", argv[0], argv[1]);
			fclose(f);
			return 1;
		}
	}
	if (fclose(f)) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], argv[1], strerror(errno));
		return 1;
	}
	return 0;
}
