/* Templates: the records (STATE/templates/NAME.json), their builds by the engine
 * (kvm), and what a restarted serve finds of them. The sandbox layer's half of
 * sandboxes.h; sandboxes.c starts and ends it. */
#ifndef MITOS_API_TEMPLATES_H
#define MITOS_API_TEMPLATES_H

#include <stddef.h>

#include "api/engines/engine.h"

/* The engine templates are made with, and STATE (its real path); loads the records a
 * previous serve left. 0, or -errno with err. */
int templates_init(const struct engine_ops *e, const char *state, char *err, size_t errlen);
/* After the engine stopped: frees every record (builds still running have ended). */
void templates_exit(void);

#endif
