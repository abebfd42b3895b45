/* Templates: the records (STATE/templates/NAME.json), their builds by the engine
 * (kvm), and what a restarted serve finds of them. The sandbox layer's half of
 * sandboxes.h; sandboxes.c starts and ends it. */
#ifndef MITOS_API_TEMPLATES_H
#define MITOS_API_TEMPLATES_H

#include "api/engines/engine.h"

struct template_rec;
struct cJSON;

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
/* The snapshot records a previous serve kept (snapshots.c), as templates_init reads
 * STATE/templates: init first; each record with a snapshot_source, of any engine (this
 * engine's: its source held again, or the record removed); then the sweep, which
 * removes the snapshot directories no record names. */
void snapshots_init(const char *state);
void snapshot_loaded(struct cJSON *o, const char *path);
void snapshots_sweep(void);

#endif
