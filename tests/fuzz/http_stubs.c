#include "tests/fuzz/http_stubs.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "api/http/http.h"
#include "api/http/router.h"
#include "api/http/server.h"
#include "api/http/uring.h"

struct server_config srv_cfg;
char stub_out_head[16];
size_t stub_out_head_len;
int stub_kicked;

void conn_out(struct conn *c, const void *p, size_t n)
{
	if (stub_out_head_len < sizeof(stub_out_head)) {
		size_t k = sizeof(stub_out_head) - stub_out_head_len;
		memcpy(stub_out_head + stub_out_head_len, p, k < n ? k : n);
		stub_out_head_len += k < n ? k : n;
	}
	c->out.bytes += n;
}

void conn_flush(struct conn *c) { c->out.bytes = 0; }
void conn_close_after(struct conn *c) { c->close_after = true; }
void conn_kick(struct conn *c) { (void)c; stub_kicked = 1; }
uint64_t ur_now_ms(void) { return 1000; }
bool ur_stopping(void) { return false; }
/* Calls are not ticked here: a target ends each exchange itself. */
void ur_add_ticker(struct ur_ticker *t) { (void)t; }

void stub_conn_feed(struct conn *c, const uint8_t *p, size_t n)
{
	if (c->pend_off + c->pend_len + n > c->pend_cap) {
		if (c->pend_len)
			memmove(c->pend, c->pend + c->pend_off, c->pend_len);
		c->pend_off = 0;
		size_t cap = c->pend_cap ? c->pend_cap : 64;
		while (cap < c->pend_len + n)
			cap *= 2;
		c->pend = realloc(c->pend, cap);
		assert(c->pend);
		c->pend_cap = cap;
	}
	memcpy(c->pend + c->pend_off + c->pend_len, p, n);
	c->pend_len += n;
}

/* The router's refusals: the Connect-stream form is rpc.c's, not the parser's. */
void router_refuse(struct http_req *r, enum api_err e, const char *msg)
{
	http_reply_error(r, e, msg, NULL, NULL);
}
