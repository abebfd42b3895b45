/* Preview tokens: HMAC-SHA256 over (sandbox id, its instance, port, expiry) with a
 * secret that serve generates once and keeps in its state dir. A token is
 * "<expiry unix seconds>.<instance>.<64 hex digits>"; the instance is the sandbox's
 * creation time in ms, so a token opens one port of one sandbox until it expires, and
 * nothing of a later sandbox that reuses the id. */
#ifndef MITOS_API_PREVIEW_TOKEN_H
#define MITOS_API_PREVIEW_TOKEN_H

#include <stdint.h>

#include "lib/error.h"

#define PREVIEW_KEY_BYTES 32
#define PREVIEW_TOKEN_MAX 96 /* with the NUL */

/* Loads STATE_DIR/preview.key, creating it (0600, random) when missing. */
int preview_key_load(const char *state_dir, struct mitos_err *e);
/* For tests: use this secret instead. */
void preview_key_set(const uint8_t key[PREVIEW_KEY_BYTES]);
void preview_key_wipe(void);

void preview_token_make(const char *sandbox_id, uint64_t instance, unsigned port, uint64_t expires_s,
			char out[PREVIEW_TOKEN_MAX]);
/* 0, -EACCES for a token that is malformed or was not made for this sandbox id and
 * port (or with another secret), -ETIME for one that expired. *instance: the one it
 * was made for (the caller compares it with the live sandbox's). */
int preview_token_check(const char *sandbox_id, unsigned port, const char *token, uint64_t now_s,
			uint64_t *expires_s, uint64_t *instance);

#endif
