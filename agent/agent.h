/* Process-wide settings of mitos-agent, filled in by main() from the command line. */
#ifndef MITOS_AGENT_AGENT_H
#define MITOS_AGENT_AGENT_H

#include <stdbool.h>
#include <stdint.h>

#ifndef MITOS_AGENT_VERSION
#define MITOS_AGENT_VERSION "0.1.0"
#endif

struct agent_config {
	const char *python;        /* interpreter for run_code kernels */
	const char *python_helper; /* path of mitos_kernel.py */
	const char *node;          /* interpreter for JavaScript and TypeScript contexts */
	const char *js_helper;     /* mitos_kernel.js, beside mitos_kernel.py */
	bool init;                 /* running as PID 1 of a guest */
	uint64_t start_ms;         /* monotonic ms at start, for uptime */
	/* post_forks heard: a clone's processes share their parent's user-space random
	 * state, so each run_code kernel reseeds when this changes under it. */
	uint64_t generation;
};

extern struct agent_config agent_cfg;

#endif
