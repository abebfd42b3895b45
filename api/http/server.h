/* The listener and the connections of `mitos-vmm serve`: accept (multishot),
 * reads into provided buffers, writes from a per-connection queue, deadlines,
 * graceful shutdown. */
#ifndef MITOS_API_SERVER_H
#define MITOS_API_SERVER_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "api/http/chunk_framing.h"
#include "api/http/sendq.h"
#include "api/http/uring.h"

struct http_req;
struct h2_conn;

struct server_config {
	char listen_host[256];
	uint16_t listen_port;
	const char *engine;       /* "kvm", "process" or NULL (pick) */
	const char *state_dir;
	const char *token_file;
	char *token;              /* loaded from token_file */
	const char *preview_domain;
	/* Previews by path (/preview/<id>/<port>/): every sandbox on one origin, so only
	 * where there is no --preview-domain, or --preview-paths asks for them too. */
	bool preview_paths;
	const char *images_dir;   /* --images, or NULL for the default */
	unsigned kvm_pool;        /* kvm: prepared VMs per VM shape */
	const char *agent_path;
	const char *peers_file;   /* --peers: the cluster's node list, or NULL */
	bool egress;              /* --egress: sandboxes may reach the network as their policy allows */
	const char *dns[3];       /* --dns: their resolvers (default: this host's) */
	unsigned ndns;
	bool insecure_no_auth;
	bool loopback;
	uint32_t header_timeout_ms;
	uint32_t idle_timeout_ms;
	uint32_t body_timeout_ms;
	uint32_t keepalive_ms;    /* Connect stream keepalive interval */
	uint64_t max_json_body;
	uint64_t max_file_body;
	unsigned max_conns;
	unsigned max_sandboxes;
	uint32_t default_timeout_s;
};

extern struct server_config srv_cfg;

#define CONN_IOV 32

struct conn {
	struct uop rx_op, tx_op;
	int fd;
	unsigned inflight;
	bool rx_armed, tx_armed;
	bool dead;         /* torn down: no more callbacks into handlers */
	bool close_after;  /* close once the queue drains */
	bool read_eof;
	bool rx_wait_buf;  /* a read failed for lack of provided buffers */
	uint8_t proto;     /* 0: not known yet, 1: HTTP/1.x, 2: HTTP/2 */
	uint8_t head_prev; /* the last byte of the request head read so far */
	uint8_t line_part; /* of the request line: method, target, version, then headers */
	uint8_t line_pos;  /* method, target: 1 once not empty; version: bytes into it */
	struct chunk_framing chunks; /* the request body's, when it is chunked */
	struct h2_conn *h2;
	struct sendq out;
	struct iovec iov[CONN_IOV];
	struct msghdr msg;
	struct ur_kick kick;
	uint64_t last_rx_ms, last_tx_ms;
	uint64_t hdr_deadline_ms;
	http_parser parser;
	struct http_req *req;
	uint8_t *pend;     /* received, not yet parsed */
	size_t pend_off, pend_len, pend_cap;
	bool was_writable_blocked;
	int err;           /* enum api_err noted by a parser callback, or -1 */
	char err_msg[160];
	struct conn *prev, *next;
};

/* Called by http.c. */
void conn_out(struct conn *c, const void *p, size_t n);
void conn_flush(struct conn *c);
void conn_close_after(struct conn *c);
/* Re-evaluates reading and parsing soon (after a handler finished or resumed). */
void conn_kick(struct conn *c);

int cmd_serve(int argc, char **argv);

#endif
