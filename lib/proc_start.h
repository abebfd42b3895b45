/* When a process started, from /proc/PID/stat: serve tells a pid from its reuse by
 * it, a sandbox's init starts the sandbox's clocks at its own. */
#ifndef MITOS_LIB_PROC_START_H
#define MITOS_LIB_PROC_START_H

#include <stdint.h>
#include <sys/types.h>

/* Field 22 of /proc/PID/stat, clock ticks since the host's boot (0 when the process
 * is gone or a zombie). */
uint64_t proc_start_time(pid_t pid);

#endif
