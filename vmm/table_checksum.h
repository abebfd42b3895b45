/* The checksum of the MP specification's and ACPI's tables: the byte that makes all of
 * a table's bytes sum to zero (mod 256). */
#ifndef MITOS_TABLE_CHECKSUM_H
#define MITOS_TABLE_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

static inline uint8_t table_checksum(const void *p, size_t len)
{
	const uint8_t *b = p;
	uint8_t sum = 0;
	for (size_t i = 0; i < len; i++)
		sum += b[i];
	return (uint8_t)-sum;
}

#endif
