/* PID 1 duties in a guest: early mounts, the overlay root, and power-off. */
#ifndef MITOS_AGENT_INIT_H
#define MITOS_AGENT_INIT_H

/* Mounts /proc, /sys, /dev, /dev/pts, /tmp and moves the root onto an overlay
 * of the read-only image under a tmpfs. 0 or the first -errno (setup goes on
 * past failures: a partly set up guest is more useful than a dead one). */
int init_setup(void);
/* sync and power off; never returns. */
void init_halt(void) __attribute__((noreturn));

#endif
