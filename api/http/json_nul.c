#include "api/http/json_nul.h"

#include <string.h>

bool json_text_has_nul(const void *text, size_t len)
{
	const char *p = text;
	for (size_t i = 0; i < len; i++) {
		if (!p[i])
			return true;
		if (p[i] != '\\')
			continue;
		/* An escape: \u0000 is the NUL; any other (\\ included) is skipped whole. */
		if (i + 5 < len && p[i + 1] == 'u' && !memcmp(p + i + 2, "0000", 4))
			return true;
		i++;
	}
	return false;
}
