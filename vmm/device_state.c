/* Device sections of the state file (device_state.h). */
#include "device_state.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* On disk, little-endian like every section: 24 bytes, then the payload. */
struct dev_header {
	uint32_t version;
	uint32_t kind;
	uint64_t base;
	uint32_t irq;
	uint32_t reserved;   /* 0 */
};
_Static_assert(sizeof(struct dev_header) == 24, "the header's size is part of the format");

void dev_state_add(struct state_writer *w, uint32_t type, uint32_t id, const struct dev_identity *who,
		   uint32_t version, const void *payload, size_t len)
{
	struct dev_header h = { .version = version, .kind = who->kind, .base = who->base, .irq = who->irq };
	uint8_t *buf = malloc(sizeof(h) + len);
	if (!buf) {
		if (!w->err)
			w->err = -ENOMEM;
		return;
	}
	memcpy(buf, &h, sizeof(h));
	if (len)
		memcpy(buf + sizeof(h), payload, len);
	state_add(w, type, id, buf, sizeof(h) + len);
	free(buf);
}

int dev_state_get(const struct state_blob *b, const char *name, uint32_t type, uint32_t id,
		  const struct dev_identity *who, uint32_t max_version, bool optional, const void **payload,
		  size_t *len, uint32_t *version, struct mitos_err *e)
{
	size_t have;
	const uint8_t *p = state_find(b, type, id, &have);
	*payload = NULL;
	*len = 0;
	*version = 0;
	if (!p)
		return optional ? 0 : mitos_err_set(e, -ENOENT, "state file lacks the %s's state (section %u.%u)",
						    name, type, id);
	struct dev_header h;
	if (have < sizeof(h))
		return mitos_err_set(e, -EINVAL, "state file: the %s's section is %zu bytes, shorter than its "
				     "header", name, have);
	memcpy(&h, p, sizeof(h));
	if (h.kind != who->kind || h.base != who->base || h.irq != who->irq)
		return mitos_err_set(e, -EINVAL, "state file: section %u.%u was saved from device kind %#x at "
				     "%#llx (irq %u), but this machine's %s is kind %#x at %#llx (irq %u): a "
				     "snapshot of a machine with other devices", type, id, h.kind,
				     (unsigned long long)h.base, h.irq, name, who->kind,
				     (unsigned long long)who->base, who->irq);
	if (h.version < 1 || h.version > max_version || h.reserved)
		return mitos_err_set(e, -EINVAL, "state file: the %s's state is in layout %u; this mitos-vmm "
				     "reads layouts 1..%u (a snapshot from a newer mitos-vmm?)", name, h.version,
				     max_version);
	*payload = p + sizeof(h);
	*len = have - sizeof(h);
	*version = h.version;
	return 0;
}
