/* What the files of the Connect service sandbox.v1.Sandbox share (rpc.c: the
 * method table, a call's life and its answers; rpc_exec.c: commands and code;
 * rpc_files.c: files and archives; rpc_guest.c: the guest's processes, vitals and
 * file events). A call maps onto one agent operation on the sandbox's agent
 * connection. */
#ifndef MITOS_API_MITOS_RPC_CALL_H
#define MITOS_API_MITOS_RPC_CALL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "api/http/bytebuf.h"
#include "api/http/connect.h"
#include "api/http/errors.h"
#include "api/sandbox/agent_call.h"
#include "api/sandbox/agent_client.h"

#define TX_PAUSE_BODY (1u << 20) /* buffered upload bytes above which we stop reading */
#define RPC_MAX_ENVELOPE (16u << 20) /* one message of a client stream */

enum rpc_kind { RPC_UNARY, RPC_SERVER_STREAM, RPC_CLIENT_STREAM, RPC_BIDI };

struct rpc_call;
typedef void (*rpc_start_fn)(struct rpc_call *c, cJSON *req);

struct rpc_method {
	const char *name;
	enum rpc_kind kind;
	rpc_start_fn start;
	bool file_op;
	const char *unimplemented; /* why this node does not answer it, or NULL */
};

struct rpc_call {
	struct agent_call base;
	const struct rpc_method *m;
	bool envelopes;        /* response is application/connect+json */
	bool bad_timeout;      /* a malformed Connect-Timeout-Ms: refused before anything */
	struct bytebuf tx;     /* bytes for the agent waiting for credit */
	bool tx_fin, tx_fin_sent;
	uint64_t started_ms;   /* monotonic, for execTimeMs */
	/* List */
	cJSON *entries;
	struct list_budget lb;
	uint32_t page_size, page_off;
	char *filter, *parent;
	/* client streams (WriteFile, Upload) */
	struct connect_dec dec;
	bool wf_opened, wf_body_done;
	uint64_t wf_bytes;
	/* Vitals */
	uint64_t cpu_usec, cpu_at_ms;
	/* bidirectional streams */
	bool bidi_opened, pf_connected;
};

/* ---- a call's life (rpc.c) ---- */
struct rpc_call *rpc_call_new(struct http_req *r, const struct rpc_method *m);
const struct rpc_method *rpc_method_find(const char *name);
/* The sandbox must exist and run, with its agent connected; else the call fails. */
struct agent_conn *rpc_call_agent(struct rpc_call *c);
/* Opens the agent stream (takes open). False when the call failed (and is freed). */
bool rpc_call_open(struct rpc_call *c, cJSON *open, const struct astream_ops *ops);
/* Ends the call: the end-of-stream message (streams) or the unary answer. */
void rpc_call_end(struct rpc_call *c, cJSON *unary_result, enum api_err e, const char *msg, const char *cause);
void rpc_call_fail(struct rpc_call *c, enum api_err e, const char *msg, const char *cause);
/* An END payload with "error" (or none: the sandbox stopped) fails the call: true. */
bool rpc_end_failed(struct rpc_call *c, cJSON *payload, const char *why);
enum api_err rpc_map_agent_code(const char *code, bool file_op);
void rpc_stream_msg(struct rpc_call *c, const char *json, size_t n, uint8_t flags);
void rpc_stream_msg_cjson(struct rpc_call *c, cJSON *o);
/* {"key": base64 of p} as one stream message. */
void rpc_data_msg(struct rpc_call *c, const char *key, const uint8_t *p, size_t n);
/* astream_ops.room and .writable of calls whose output goes to the client. */
size_t rpc_call_room(struct astream *s);
void rpc_as_writable(struct astream *s);
int rpc_tx_add_base64(struct rpc_call *c, const char *text, size_t *added);
void rpc_tx_pump(struct rpc_call *c);
/* A client or bidirectional stream's body: each whole message to on_msg, which
 * returns nonzero when it ended the call; reading pauses while bytes for the
 * agent pile up. */
typedef int (*rpc_msg_fn)(struct rpc_call *c, const uint8_t *msg, size_t len);
void rpc_stream_body(struct http_req *r, const uint8_t *p, size_t n, rpc_msg_fn on_msg);
/* The body ended: false (and the call failed) when it ended inside an envelope
 * or before the first message carried open (no_open says so). */
bool rpc_stream_body_end(struct rpc_call *c, bool opened, const char *no_open);

/* ---- request and answer fields ---- */
const char *rpc_jstr(const cJSON *o, const char *key);
int rpc_req_int(const cJSON *o, const char *key, double lo, double hi, double *out);
bool rpc_add_path(struct rpc_call *c, cJSON *open, const cJSON *req, const char *key);
int64_t rpc_agent_int64(const cJSON *v);
void rpc_add_int64(cJSON *o, const char *key, int64_t v);

/* ---- the methods' starts ---- */
void rpc_exec_start(struct rpc_call *c, cJSON *req);
/* Exec's ExecOpen: a command whose stdin the client feeds, or with pty a terminal. */
void rpc_exec_open_interactive(struct rpc_call *c, const cJSON *open);
void rpc_run_code_start(struct rpc_call *c, cJSON *req);
void rpc_read_start(struct rpc_call *c, cJSON *req);
void rpc_list_start(struct rpc_call *c, cJSON *req);
void rpc_file_start(struct rpc_call *c, cJSON *req);
void rpc_archive_start(struct rpc_call *c, cJSON *req);
void rpc_processes_start(struct rpc_call *c, cJSON *req);
void rpc_signal_start(struct rpc_call *c, cJSON *req);
void rpc_vitals_start(struct rpc_call *c, cJSON *req);
void rpc_watch_start(struct rpc_call *c, cJSON *req);

#endif
