/* Mitos agent wire protocol: frame codec shared by mitos-agent and the API server.
 * The protocol itself is specified in agent/PROTOCOL.md; this module only knows
 * frames (header + payload), never what the payloads mean. */
#ifndef MITOS_AGENT_PROTO_H
#define MITOS_AGENT_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1
#define PROTO_HEADER_SIZE 12
#define PROTO_MAX_PAYLOAD (1u << 20)       /* hard limit for any frame payload */
#define PROTO_LIST_MAX_ENTRIES 100000u     /* entries of one list; more are left out */
#define PROTO_DATA_CHUNK (64u << 10)       /* senders cut DATA into chunks this big */
#define PROTO_INITIAL_WINDOW (256u << 10)  /* per stream, per direction */
#define PROTO_MAX_STREAM_ID 0x7fffffffu

enum proto_type {
	PROTO_HELLO = 1,
	PROTO_OPEN = 2,
	PROTO_DATA = 3,
	PROTO_EVENT = 4,
	PROTO_WINDOW = 5,
	PROTO_END = 6,
	PROTO_CANCEL = 7,
	PROTO_ERROR = 8,
};

#define PROTO_FLAG_FIN 0x01u

enum proto_channel {
	PROTO_CH_MAIN = 0,   /* stdin, file content, forwarded bytes, pty input */
	PROTO_CH_STDOUT = 1, /* also pty output */
	PROTO_CH_STDERR = 2,
};

struct proto_header {
	uint32_t length;
	uint32_t stream;
	uint8_t type;
	uint8_t flags;
	uint8_t channel;
	uint8_t reserved;
};

void proto_header_encode(const struct proto_header *h, uint8_t out[PROTO_HEADER_SIZE]);
void proto_header_decode(const uint8_t in[PROTO_HEADER_SIZE], struct proto_header *h);
const char *proto_type_name(uint8_t type);
bool proto_type_known(uint8_t type);

/* Stable error codes carried in END / ERROR payloads ({"error":{"code":...}}). */
enum proto_err {
	PERR_NOT_FOUND,
	PERR_PERMISSION_DENIED,
	PERR_NOT_A_DIRECTORY,
	PERR_IS_A_DIRECTORY,
	PERR_EXISTS,
	PERR_NOT_EMPTY,
	PERR_NO_SPACE,
	PERR_INVALID_ARGUMENT,
	PERR_TIMEOUT,
	PERR_PROTOCOL_ERROR,
	PERR_UNSUPPORTED,
	PERR_BUSY,
	PERR_CONNECTION_REFUSED,
	PERR_IO_ERROR,
	PERR_INTERNAL,
	PERR_COUNT_,
};

const char *proto_err_code(enum proto_err e);
/* Maps a (negative or positive) errno to the stable code users branch on. */
enum proto_err proto_err_from_errno(int err);

/* Incremental frame parser: feed it whatever read() returned, in any split.
 * A frame whose payload exceeds max_payload is not buffered: the parser reports
 * it as oversized and then discards its payload bytes, so framing stays in sync
 * and one bad frame never costs more than the header's memory. */
enum proto_parse_event {
	PROTO_PARSE_NEED_MORE,  /* everything consumed, no complete frame yet */
	PROTO_PARSE_FRAME,      /* *hdr and *payload valid until the next call */
	PROTO_PARSE_OVERSIZED,  /* *hdr valid; its payload will be skipped */
};

struct proto_parser {
	uint32_t max_payload;
	uint8_t hbuf[PROTO_HEADER_SIZE];
	size_t hlen;
	struct proto_header hdr;
	uint8_t *payload;   /* allocated at max_payload on first use */
	size_t plen;
	uint64_t skip;      /* payload bytes of an oversized frame still to drop */
	bool in_payload;
};

int proto_parser_init(struct proto_parser *p, uint32_t max_payload);
void proto_parser_free(struct proto_parser *p);
/* Consumes bytes from *buf (advancing *buf and *len) until one event is produced. */
enum proto_parse_event proto_parse(struct proto_parser *p, const uint8_t **buf, size_t *len,
				   struct proto_header *hdr, const uint8_t **payload);

#endif
