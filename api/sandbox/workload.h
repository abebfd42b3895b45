/* A template's workload, the contract's "workload": {command, env, ready: {port,
 * path, expect, timeout_seconds}}: a process started in the sandbox before anyone
 * gets it, and the check that it serves. The kvm engine runs it once, in the
 * template's VM before the snapshot, so every fork wakes with it already serving;
 * the process engine, which has no memory to snapshot, runs it in every sandbox
 * before the create answers. Its output goes to WORKLOAD_LOG inside the sandbox. */
#ifndef MITOS_API_WORKLOAD_H
#define MITOS_API_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "lib/error.h"

struct cJSON;
struct agent_conn;

#define WORKLOAD_LOG "/tmp/mitos-workload.log"

/* The engine's copy of the contract's object, checked and with defaults filled in
 * (ready.path "/", expect 200, timeout_seconds 60); NULL and *bad when invalid. */
struct cJSON *workload_from_contract(const struct cJSON *w, const char **bad);

typedef void (*workload_done_fn)(void *ctx, int rc, const char *why);
struct workload_run;

/* Starts wl over ac and checks it until it serves; done(ctx, 0 or -errno, why)
 * follows, never from inside this call. NULL when out of memory. */
struct workload_run *workload_run_start(struct agent_conn *ac, const struct cJSON *wl, workload_done_fn done,
					void *ctx);
/* No callback follows. */
void workload_run_cancel(struct workload_run *w);

/* The same off the event loop (a kvm template's build), through the agent's socket
 * (a VM's vsock host socket with vsock_port). 0, or -errno and why in e. */
int workload_run_blocking(const char *path, uint32_t vsock_port, const struct cJSON *wl, struct mitos_err *e);

#endif
