#include "api/http/json_request.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
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

static int by_key(const void *a, const void *b)
{
	return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* Keys sorted, neighbours compared: O(n log n) however many keys a body holds. A
 * number past a double's range (1e400: infinity here, an error or a big number for
 * another parser) counts as ambiguous too. */
static bool is_ambiguous(const cJSON *v, unsigned depth)
{
	if (depth > 64)
		return true;
	if (cJSON_IsNumber(v))
		return !isfinite(v->valuedouble);
	if (!cJSON_IsObject(v) && !cJSON_IsArray(v))
		return false;
	int n = cJSON_GetArraySize(v), i = 0;
	const cJSON **kids = cJSON_IsObject(v) && n > 1 ? malloc((size_t)n * sizeof(*kids)) : NULL;
	bool dup = cJSON_IsObject(v) && n > 1 && !kids;
	for (const cJSON *c = v->child; c && !dup; c = c->next) {
		if (kids)
			kids[i++] = c;
		dup = is_ambiguous(c, depth + 1);
	}
	if (kids && !dup) {
		qsort(kids, (size_t)i, sizeof(*kids), by_key);
		for (int k = 1; k < i && !dup; k++)
			dup = !strcmp(kids[k - 1]->string, kids[k]->string);
	}
	free(kids);
	return dup;
}

cJSON *json_parse_request(const void *text, size_t len)
{
	const char *end = NULL;
	cJSON *v = cJSON_ParseWithLengthOpts(text, len, &end, 0);
	if (!v)
		return NULL;
	for (const char *p = end, *stop = (const char *)text + len; p && p < stop; p++)
		if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
			cJSON_Delete(v);
			return NULL;
		}
	if (is_ambiguous(v, 0)) {
		cJSON_Delete(v);
		return NULL;
	}
	return v;
}
