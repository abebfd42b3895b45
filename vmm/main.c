/* mitos-vmm: the Mitos node's one binary. */
#include "commands.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include "lib/clock.h"

#ifndef MITOS_VERSION
#define MITOS_VERSION "0.1.0"
#endif

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mitos-vmm <command> [options]\n"
		"\n"
		"commands:\n"
		"  run       boot one guest with its serial console on this terminal\n"
		"  snapshot  write a snapshot of a running VM (through its control socket)\n"
		"  restore   start a VM from a snapshot, copy-on-write\n"
		"  vm        one VM prepared ahead, restored from a snapshot on request\n"
		"  serve     the node's API server (REST + Connect; see api/API.md)\n"
		"  check     tell what this host's KVM can do and which engine `serve` would use\n"
		"  help      this text; `mitos-vmm <command> --help` describes a command\n"
		"  version   print the version\n");
}

int main(int argc, char **argv)
{
	/* The console and sockets may be pipes whose reader left: report, don't die. */
	signal(SIGPIPE, SIG_IGN);
	uint64_t start_ns = mono_ns();

	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "run"))
		return cmd_run(argc - 1, argv + 1, start_ns);
	if (!strcmp(cmd, "check"))
		return cmd_check(argc - 1, argv + 1);
	if (!strcmp(cmd, "snapshot"))
		return cmd_snapshot(argc - 1, argv + 1);
	if (!strcmp(cmd, "restore"))
		return cmd_restore(argc - 1, argv + 1, start_ns);
	if (!strcmp(cmd, "vm"))
		return cmd_vm(argc - 1, argv + 1, start_ns);
	if (!strcmp(cmd, "serve"))
		return cmd_serve(argc - 1, argv + 1);
	if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
		printf("mitos-vmm %s\n", MITOS_VERSION);
		return 0;
	}
	fprintf(stderr, "mitos-vmm: unknown command '%s'\n", cmd);
	usage(stderr);
	return EXIT_USAGE;
}
