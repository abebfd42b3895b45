/* The WebSocket Exec of the Mitos contract (GET /sandbox.v1.Sandbox/Exec?sandbox=ID,
 * subprotocol connect.sandbox.v1): an interactive terminal in a sandbox, each
 * WebSocket message one Connect envelope of the Exec bidi schema. The ExecOpen
 * and resize handling is shared with the Connect bidi Exec (rpc_exec.c). */
#ifndef MITOS_API_PTY_H
#define MITOS_API_PTY_H

#include <cjson/cJSON.h>
#include <stdbool.h>

struct http_req;

void pty_handle(struct http_req *r);

#define PTY_OPEN_INVALID "pty.size cols and rows are from 1 to 1000; command is a shell command line (args are " \
	"not taken by a terminal)"
/* ExecOpen's cwd for an agent exec or pty request: an empty one is the contract's
 * /workspace, where the sandbox has it (elsewhere the agent keeps its own default). */
void exec_cwd(cJSON *agent_open, const char *cwd);
/* The agent's pty operation for an ExecOpen (its pty.size, command, cwd), or
 * NULL when they are out of range (PTY_OPEN_INVALID says how). */
cJSON *pty_agent_request(const cJSON *open);

#define PTY_RESIZE_EVENT_MAX 96
/* The agent's resize event for a WindowSize; false when it is out of range. */
bool pty_resize_event(const cJSON *rs, char out[PTY_RESIZE_EVENT_MAX]);

/* base64(SHA-1(key + RFC 6455 GUID)): out needs 29 bytes. Returns -EINVAL for a
 * key that is not 16 bytes in base64. */
int ws_accept_key(const char *key, char out[29]);

#endif
