/* Fuzz target: Connect streaming envelopes of a request body (api/http/connect.c),
 * arriving in pieces, and the JSON messages they carry. */
#include <assert.h>
#include <cjson/cJSON.h>
#include <string.h>

#include "api/http/connect.h"
#include "tests/fuzz/fuzz.h"

#define MAX_MESSAGE 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t piece = 1 + data[0] % 32;
	data++;
	size--;
	struct connect_dec d;
	connect_dec_init(&d, MAX_MESSAGE);
	const uint8_t *at = data;
	size_t left = size;
	int rc = 0;
	while (left && rc >= 0) {
		size_t n = left < piece ? left : piece;
		const uint8_t *q = at;
		size_t qn = n;
		while (qn && rc >= 0) {
			uint8_t flags;
			const uint8_t *msg;
			size_t len;
			rc = connect_dec_feed(&d, &q, &qn, &flags, &msg, &len);
			if (rc == 1) {
				assert(len <= MAX_MESSAGE);
				assert(!(flags & CONNECT_FLAG_COMPRESSED));
				cJSON_Delete(cJSON_ParseWithLength((const char *)msg, len));
			}
		}
		at += n;
		left -= n;
	}
	(void)connect_dec_idle(&d);
	connect_dec_free(&d);
	return 0;
}

void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	uint8_t b[512];
	size_t n = 0;
	b[n++] = 3;
	const char *msgs[] = { "{\"command\":\"echo hi\",\"timeoutSeconds\":5}", "{\"stdin\":\"aGkK\"}", "{}" };
	for (size_t i = 0; i < 3; i++) {
		uint32_t len = (uint32_t)strlen(msgs[i]);
		connect_envelope_header(b + n, i == 2 ? CONNECT_FLAG_END : 0, len);
		n += CONNECT_ENVELOPE;
		memcpy(b + n, msgs[i], len);
		n += len;
	}
	add(b, n);
}
