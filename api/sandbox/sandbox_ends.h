/* How sandboxes that ended on their own (a crash, an OOM kill of the agent, a start that
 * failed) ended, kept for the last SANDBOX_ENDS_KEPT of them, so that a client asking for
 * one gets the cause instead of a bare "no sandbox" (and serve's log says it too). In
 * memory only: a restart of serve forgets them. */
#ifndef MITOS_API_SANDBOX_ENDS_H
#define MITOS_API_SANDBOX_ENDS_H

#include <stddef.h>
#include <stdint.h>

#define SANDBOX_ENDS_KEPT 256

void sandbox_end_record(const char *id, const char *reason, uint64_t wall_ms);
/* "ended at <RFC 3339>: <reason>" of the latest end of id; 0, or -ENOENT when none kept. */
int sandbox_end_describe(const char *id, char *out, size_t outlen);

#endif
