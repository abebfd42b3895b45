#include "api/sandbox/sandbox_ends.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "api/sandbox/registry.h"

struct sandbox_end {
	char id[72];
	char reason[320];
	uint64_t wall_ms;
};

static struct sandbox_end ends[SANDBOX_ENDS_KEPT];
static unsigned next_slot;

void sandbox_end_record(const char *id, const char *reason, uint64_t wall_ms)
{
	struct sandbox_end *e = &ends[next_slot++ % SANDBOX_ENDS_KEPT];
	snprintf(e->id, sizeof(e->id), "%s", id);
	snprintf(e->reason, sizeof(e->reason), "%s", reason && *reason ? reason : "it exited");
	e->wall_ms = wall_ms;
}

int sandbox_end_describe(const char *id, char *out, size_t outlen)
{
	/* Newest first: an id used again reports its latest end. */
	for (unsigned i = 1; i <= SANDBOX_ENDS_KEPT; i++) {
		const struct sandbox_end *e = &ends[(next_slot - i) % SANDBOX_ENDS_KEPT];
		if (!e->id[0] || strcmp(e->id, id))
			continue;
		char when[40];
		registry_rfc3339(e->wall_ms, when, sizeof(when));
		snprintf(out, outlen, "ended at %s: %s", when, e->reason);
		return 0;
	}
	return -ENOENT;
}
