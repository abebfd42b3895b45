#include "lib/printable.h"

size_t printable_copy(char *out, size_t outlen, const void *in, size_t n, char newline)
{
	if (!outlen)
		return 0;
	const unsigned char *p = in;
	size_t k = 0;
	for (size_t i = 0; i < n && p[i] && k + 1 < outlen; i++)
		out[k++] = p[i] == '\n' && newline ? newline : p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
	out[k] = 0;
	return k;
}
