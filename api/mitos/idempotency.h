/* Idempotency-Key on creating calls (template create, fork): a retry with the same
 * key gets the resource the first call made, never a second one while it lives (once
 * it is deleted, a retry makes it anew and the key is bound to that, as the contract's
 * sandbox-server does). Keys are bound
 * per kind for 24 hours, in memory (a restart of serve forgets them, as the Mitos
 * sandbox-server does); the table is bounded and forgets its oldest binding first. */
#ifndef MITOS_API_IDEMPOTENCY_H
#define MITOS_API_IDEMPOTENCY_H

#include <stddef.h>

enum idem_kind { IDEM_TEMPLATE, IDEM_FORK };

enum idem_status {
	IDEM_PROCEED,    /* the caller creates, then idem_record() or idem_release() */
	IDEM_REPLAY,     /* a create under this key finished: *id names its resource */
	IDEM_IN_FLIGHT,  /* a create under this key is still running */
};

#define IDEM_KEY_MAX 255

/* key NULL or "": always IDEM_PROCEED with nothing reserved. A key longer than
 * IDEM_KEY_MAX is -EINVAL. id receives the bound resource id (65 bytes). */
int idem_begin(const char *key, enum idem_kind kind, char *id, size_t idlen);
/* The create under key succeeded and made resource id. */
void idem_record(const char *key, enum idem_kind kind, const char *id);
/* The create under key failed: a retry may proceed. A completed binding stays. */
void idem_release(const char *key);

#endif
