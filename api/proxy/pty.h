/* GET /v1/pty: an interactive terminal in a sandbox over a WebSocket (RFC 6455).
 * Query: sandbox_id, cols, rows, cmd. Client frames (binary, or text that is not
 * a control message) are terminal input; a text frame holding a JSON object with
 * "resize": {"cols", "rows"} resizes. Server frames: binary terminal output, then
 * a text frame {"exit": {...}} and a close frame when the process ends. Either
 * side closing ends the terminal. */
#ifndef MITOS_API_PTY_H
#define MITOS_API_PTY_H

struct http_req;

void pty_handle(struct http_req *r);

/* base64(SHA-1(key + RFC 6455 GUID)): out needs 29 bytes. Returns -EINVAL for a
 * key that is not 16 bytes in base64. */
int ws_accept_key(const char *key, char out[29]);

#endif
