/* Helpers shared by the subcommands that run a VM. */
#ifndef MITOS_CLI_H
#define MITOS_CLI_H

#include <stdint.h>

#include "machine.h"

/* Prints "mitos-vmm CMD: FLAG wants a number ..." and returns -EINVAL when s is not an
 * integer in [min, max]. */
int cli_parse_uint(const char *cmd, const char *flag, const char *s, unsigned long min,
		   unsigned long max, unsigned long *out);
/* PATH[,ro], split in place. */
int cli_parse_disk(const char *cmd, char *arg, struct virtio_blk_opts *d);
/* tap=NAME[,mac=MAC] (mac= only when allow_mac), split in place; the MAC defaults to
 * VIRTIO_NET_DEFAULT_MAC. */
int cli_parse_net(const char *cmd, char *arg, bool allow_mac, struct virtio_net_opts *o);
/* Raw keyboard input for the guest while it runs on a terminal; restored at exit. */
void cli_raw_terminal(void);
void cli_restore_terminal(void);
void cli_print_stats(const struct machine_result *r, uint64_t start_ns);
/* The documented exit status for how the VM ended. */
int cli_exit_status(const struct machine_result *r);
/* Runs a created or restored machine to its end (first confining the process to the
 * system calls of vmm/seccomp.c when seccomp); prints why it ended; returns the exit
 * status. */
int cli_run_machine(const char *cmd, struct machine *m, bool seccomp, bool stats, uint64_t start_ns);

#endif
