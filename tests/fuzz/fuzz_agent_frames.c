/* Fuzz target: agent protocol frames as either side receives them (agent/proto.c's
 * incremental parser, cut into pieces at the input's own choice, and the JSON
 * payloads of HELLO, OPEN, EVENT and END as the host and the agent parse them). */
#include <assert.h>
#include <cjson/cJSON.h>
#include <string.h>

#include "agent/proto.h"
#include "tests/fuzz/fuzz.h"

#define MAX_PAYLOAD (64u << 10)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	/* The first byte picks the size of the pieces the stream arrives in. */
	size_t piece = 1 + data[0] % 64;
	data++;
	size--;
	struct proto_parser p;
	if (proto_parser_init(&p, MAX_PAYLOAD))
		return 0;
	const uint8_t *at = data;
	size_t left = size;
	while (left) {
		size_t n = left < piece ? left : piece;
		const uint8_t *q = at;
		size_t qn = n;
		while (qn) {
			struct proto_header h;
			const uint8_t *payload = NULL;
			enum proto_parse_event ev = proto_parse(&p, &q, &qn, &h, &payload);
			if (ev == PROTO_PARSE_OVERSIZED) {
				assert(h.length > MAX_PAYLOAD);
			} else if (ev == PROTO_PARSE_FRAME) {
				assert(h.length <= MAX_PAYLOAD);
				uint8_t again[PROTO_HEADER_SIZE];
				struct proto_header h2;
				proto_header_encode(&h, again);
				proto_header_decode(again, &h2);
				assert(!memcmp(&h, &h2, sizeof(h)));
				(void)proto_type_name(h.type);
				if (proto_type_known(h.type) && h.type != PROTO_DATA && h.type != PROTO_WINDOW) {
					cJSON *j = cJSON_ParseWithLength((const char *)payload, h.length);
					cJSON_Delete(j);
				}
			}
		}
		at += n;
		left -= n;
	}
	proto_parser_free(&p);
	return 0;
}

static size_t frame(uint8_t *out, uint8_t type, uint32_t stream, uint8_t ch, const char *payload)
{
	struct proto_header h = { .length = (uint32_t)strlen(payload), .stream = stream, .type = type,
				  .channel = ch };
	proto_header_encode(&h, out);
	memcpy(out + PROTO_HEADER_SIZE, payload, h.length);
	return PROTO_HEADER_SIZE + h.length;
}

void fuzz_seeds(void (*add)(const void *p, size_t n))
{
	uint8_t b[1024];
	size_t n = 0;
	b[n++] = 7;
	n += frame(b + n, PROTO_HELLO, 0, 0, "{\"version\":1,\"agent\":\"mitos-agent\",\"window\":262144}");
	n += frame(b + n, PROTO_OPEN, 1, 0, "{\"op\":\"exec\",\"cmd\":\"echo hi\"}");
	n += frame(b + n, PROTO_EVENT, 1, 0, "{\"pid\":42,\"running\":true}");
	n += frame(b + n, PROTO_DATA, 1, PROTO_CH_STDOUT, "hi\n");
	n += frame(b + n, PROTO_WINDOW, 1, 0, "\x00\x01\x00\x00");
	n += frame(b + n, PROTO_END, 1, 0, "{\"exited\":true,\"exit_code\":0}");
	add(b, n);
	n = 0;
	b[n++] = 0;
	n += frame(b + n, PROTO_ERROR, 0, 0, "{\"error\":{\"code\":\"protocol_error\",\"message\":\"x\"}}");
	n += frame(b + n, PROTO_CANCEL, 3, 0, "");
	add(b, n);
}
