/* Shared by the parts of the E2B surface: per-sandbox E2B state, the call
 * plumbing between an HTTP request and one agent stream, and the reply shapes. */
#ifndef MITOS_API_E2B_INTERNAL_H
#define MITOS_API_E2B_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/e2b/e2b.h"
#include "api/sandbox/agent_call.h"
#include "api/sandbox/agent_client.h"
#include "api/sandbox/sandboxes.h"

struct cJSON;
struct http_req;

/* The envd version we report: its feature gates (protocol reference 3.8) are all built. */
#define E2B_ENVD_VERSION "0.6.4"
#define E2B_ENVD_PORT "49983"
#define E2B_INTERP_PORT "49999"
#define E2B_TOKEN_HEX 32

/* A network.maskRequestHost as the API takes it (E2B_MASK_HOST_MAX, e2b.h). */
bool e2b_mask_host_ok(const char *mask);

/* What E2B's API knows about a sandbox beyond the Mitos record. */
struct e2b_sbx {
	char id[ID_MAX + 1];
	uint64_t created_ms;                       /* tells a later sandbox with the same id apart */
	char envd_token[E2B_TOKEN_HEX * 2 + 1];    /* "" when none was issued */
	char traffic_token[E2B_TOKEN_HEX * 2 + 1];
	struct cJSON *env_vars;                    /* sandbox-wide envs of commands and code */
	bool auto_pause;
	bool auto_pause_files_only;                /* autoPauseMemory false: the pause keeps files only */
	bool auto_resume;                          /* lifecycle.autoResume: traffic resumes it (wake.c) */
	/* network.allowPublicTraffic (E2B's default): its getHost ports take no token. Only
	 * for a sandbox E2B made (an id of serve's choosing), never one it connected to. */
	bool public_traffic;
	char mask_host[E2B_MASK_HOST_MAX + 1]; /* network.maskRequestHost, "" when none */
	uint32_t resume_timeout_s;                 /* the timeout it was created with, again on a wake */
	uint64_t cpu_usec;                         /* last metrics sample */
	uint64_t cpu_sample_ms;
	struct cJSON *bash_contexts;               /* code-interpreter contexts run by bash */
	struct e2b_sbx *next;
};

/* The record for id (created when create is set), NULL when the sandbox is gone. */
struct e2b_sbx *e2b_sbx_get(const char *id, bool create);
/* Saves s beside its sandbox's sandbox.json (tmp + rename): 0 or -errno. */
int e2b_sbx_save(const struct e2b_sbx *s);
/* Starts lifecycle.onTimeout "pause" checks (idempotent). */
void e2b_auto_pause_watch(void);
/* Every record (some may name sandboxes that are gone: check with sandbox_find). */
struct e2b_sbx *e2b_sbx_first(void);
/* Fills out with a fresh random token (hex). */
void e2b_token_new(char *out, size_t outlen);
/* Constant-time equality of a presented token with the expected one. */
bool e2b_token_ok(const char *presented, const char *expected);

/* Control-plane error body {"code":status,"message"}: the shape the SDK maps. */
void e2b_reply_err(struct http_req *r, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* 200 with the page a (consumed) of a list and, where it goes on, X-Next-Token: the
 * position "<ms>-<key>" of the next item (next_key NULL: the last page). */
void e2b_reply_page(struct http_req *r, struct cJSON *a, uint64_t next_ms, const char *next_key);
/* Through a cluster router (cluster_list_wanted): a, this node's first limit + 1 items
 * of the list at path, merged with every peer's and cut to a page (consumed). */
void e2b_cluster_page(struct http_req *r, struct cJSON *a, const char *path, unsigned limit, bool desc);
/* Connect error (unary) {"code":<connect code>,"message"} with its HTTP status. */
void e2b_reply_connect_err(struct http_req *r, const char *code, const char *msg);
int e2b_connect_status(const char *code);
/* The Connect code of an agent END error code. */
const char *e2b_agent_code(const char *agent_code);

/* ---- one HTTP request bridged to one agent stream ---- */

/* Allocates size bytes (a struct whose first member is struct agent_call), links it
 * and makes it r's handler. NULL (and an error reply) when out of memory. */
void *e2b_call_new(struct http_req *r, size_t size, const struct agent_call_vt *vt);
/* Fills e as for a sandbox that is not there (AE_NOT_FOUND): -ENOENT. */
int e2b_fail_not_found(struct mitos_err *e, const char *id);
/* The running sandbox's agent, or NULL with e saying why (AE_NOT_FOUND, or
 * AE_SANDBOX_NOT_RUNNING). */
struct agent_conn *e2b_sandbox_agent(const char *id, struct mitos_err *e);
/* The HTTP status of envd's answer to a request e2b_sandbox_agent refused. */
int e2b_agent_status(enum api_err kind);
/* Opens the agent stream; false when it could not (open is consumed). */
bool e2b_call_open(struct agent_call *c, struct agent_conn *ac, struct cJSON *open, const struct astream_ops *ops);
/* The sandbox went away under a streamed answer: cut it (no clean end), as the
 * cloud's connection to a killed sandbox is cut, so that the SDKs ask whether the
 * sandbox runs and report it killed. False, doing nothing, before the answer began;
 * c is freed otherwise. */
bool e2b_call_cut(struct agent_call *c);
/* The room() of every call's agent stream (s->ctx is the call): what the client
 * takes now, while its reply is streamed. */
size_t e2b_call_room(struct astream *s);

/* Connect envelopes on a started response stream. */
void e2b_envelope(struct http_req *r, uint8_t flags, const char *json, size_t n);
void e2b_envelope_cjson(struct http_req *r, struct cJSON *o);  /* consumes o */

/* EntryInfo (filesystem.proto) of an agent ENTRY, as envd makes it (a symlink as what it
 * leads to); NULL when it is not an entry. */
struct cJSON *e2b_entry_info(const struct cJSON *agent_entry);

/* X-API-KEY (or a bearer token) against serve's token; true on a tokenless serve. */
bool e2b_api_key_ok(const struct http_req *r);
/* filesystem.FilesystemEvent {name, type: EVENT_TYPE_*, entry?} of an agent watch event,
 * or NULL. */
struct cJSON *e2b_fs_event(const struct cJSON *agent_event);
/* The agent's watch for a WatchDir or CreateWatcher request (path, recursive,
 * includeEntry) as user; NULL without a path. */
struct cJSON *e2b_watch_open(const struct cJSON *req, const char *user);
/* Who an envd call runs as: the user the SDK named (Basic auth, ?username=), else
 * E2B's default user "user" where the sandbox has that account (the agent falls
 * back to its own identity where it has not). */
void e2b_add_user(struct cJSON *open, const char *user);
/* E2B's cpuCount and memoryMB of a template: what its sandboxes see (a VM's vCPUs and
 * RAM); 0 when the template is gone or the engine cannot tell. */
void e2b_template_shape(const char *name, unsigned *cpus, unsigned *mem_mib);
/* Absent, null, or an object of strings (metadata, envs). */
/* A map of strings to strings (metadata, envVars, envs) of at most these many
 * entries and key and value bytes in all. */
#define E2B_MAP_MAX_ENTRIES 256
#define E2B_MAP_MAX_BYTES (64u << 10)
bool e2b_string_map(const struct cJSON *m);
/* CreateWatcher, GetWatcherEvents, RemoveWatcher (ac: the agent, for CreateWatcher). */
void e2b_watcher_start(struct http_req *r, const char *method, struct agent_conn *ac, const struct cJSON *req,
		       const char *user);

/* The request's JSON object body ({} when empty); NULL after a 400. */
struct cJSON *e2b_json_body(struct http_req *r);
/* The sandbox the path names; NULL after a 404 (also for one being removed). */
struct sandbox *e2b_find_or_404(struct http_req *r);

/* Handlers. */
void e2b_sandboxes_create(struct http_req *r);
void e2b_sandboxes_list(struct http_req *r);
void e2b_sandbox_get(struct http_req *r);
void e2b_sandbox_kill(struct http_req *r);
void e2b_sandbox_connect(struct http_req *r);
void e2b_sandbox_timeout(struct http_req *r);
void e2b_sandbox_pause(struct http_req *r);
void e2b_sandbox_resume(struct http_req *r);
void e2b_sandbox_fork(struct http_req *r);
void e2b_sandbox_network(struct http_req *r);
void e2b_sandbox_metrics(struct http_req *r);
void e2b_templates_list(struct http_req *r);
void e2b_snapshot_create(struct http_req *r);
void e2b_snapshots_list(struct http_req *r);
void e2b_template_delete(struct http_req *r);
/* A templateID as E2B spells it (NAME or NAME:default) as this node's template name,
 * into out; false when it is none (another tag, a team namespace, a bad name). */
bool e2b_template_name(const char *id, char *out, size_t outlen);
void e2b_envd_rpc(struct http_req *r);
void e2b_envd_health(struct http_req *r);
void e2b_files_get(struct http_req *r);
void e2b_files_post(struct http_req *r);
void e2b_interp_execute(struct http_req *r);
void e2b_interp_contexts(struct http_req *r);
bool e2b_envd_method_known(const char *service_method);

/* Which sandbox and port a request is for, as routing decided. */
const char *e2b_req_sandbox(const struct http_req *r);

#endif
