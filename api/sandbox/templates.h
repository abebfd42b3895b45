/* Templates: the records (STATE/templates/NAME.json), their builds by the engine
 * (kvm), and what a restarted serve finds of them. The sandbox layer's half of
 * sandboxes.h; sandboxes.c starts and ends it. */
#ifndef MITOS_API_TEMPLATES_H
#define MITOS_API_TEMPLATES_H

#include "api/engines/engine.h"

struct template_rec;

/* The engine templates are made with, and STATE (its real path); loads the records a
 * previous serve left. 0, or -errno with e. */
int templates_init(const struct engine_ops *ops, const char *state, struct mitos_err *e);
/* After the engine stopped: frees every record (builds still running have ended). */
void templates_exit(void);

/* For snapshots.c: the list, a record's file (STATE/templates/NAME.json) and memory. */
void templates_link(struct template_rec *t);
void templates_unlink(struct template_rec *t);
int template_save(const struct template_rec *t);
void template_forget(const struct template_rec *t);
void template_free(struct template_rec *t);
/* The snapshot records a previous serve kept: their sources held again, or the
 * records removed (snapshots.c; called by templates_init). */
void snapshots_load(const char *state);

#endif
