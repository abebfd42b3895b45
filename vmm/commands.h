/* Subcommands of mitos-vmm: each takes the arguments after its name (argv[0] is the
 * subcommand) and returns the process exit status. */
#ifndef MITOS_COMMANDS_H
#define MITOS_COMMANDS_H

#include <stdint.h>

/* Exit statuses shared by the subcommands. */
#define EXIT_VMM_ERROR   1   /* the VMM could not do what was asked: see the message */
#define EXIT_USAGE       2   /* bad flag or argument */
#define EXIT_GUEST_CRASH 3   /* guest triple fault, emulation failure, KVM internal error */

int cmd_run(int argc, char **argv, uint64_t process_start_ns);
int cmd_check(int argc, char **argv);
int cmd_restore(int argc, char **argv, uint64_t process_start_ns);
int cmd_snapshot(int argc, char **argv);
int cmd_vm(int argc, char **argv, uint64_t process_start_ns);
int cmd_serve(int argc, char **argv);

#endif
