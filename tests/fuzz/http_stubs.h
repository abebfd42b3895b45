/* The socket layer under api/http (server.c's side of struct conn) for the fuzz
 * targets that drive the HTTP glue: output is counted and its first bytes kept,
 * kicks are noted, and input is appended where server.c would put it. */
#ifndef MITOS_TESTS_FUZZ_HTTP_STUBS_H
#define MITOS_TESTS_FUZZ_HTTP_STUBS_H

#include <stddef.h>
#include <stdint.h>

struct conn;

extern char stub_out_head[16];  /* the first bytes written since the last reset */
extern size_t stub_out_head_len;
extern int stub_kicked;         /* conn_kick() was called */

/* What a read from the client would leave in c's pending input. */
void stub_conn_feed(struct conn *c, const uint8_t *p, size_t n);

#endif
