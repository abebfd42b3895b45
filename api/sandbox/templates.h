/* Templates: the records (STATE/templates/NAME.json), their builds by the engine
 * (kvm), and what a restarted serve finds of them. The sandbox layer's half of
 * sandboxes.h; sandboxes.c starts and ends it. */
#ifndef MITOS_API_TEMPLATES_H
#define MITOS_API_TEMPLATES_H

#include "api/engines/engine.h"

/* The engine templates are made with, and STATE (its real path); loads the records a
 * previous serve left. 0, or -errno with e. */
int templates_init(const struct engine_ops *ops, const char *state, struct mitos_err *e);
/* After the engine stopped: frees every record (builds still running have ended). */
void templates_exit(void);

#endif
