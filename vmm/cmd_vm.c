#include "cli.h"
#include "commands.h"
#include "machine.h"
#include "seccomp.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mitos-vmm vm --control PATH [--mem MIB] [--vcpus N] [--arm DIR] [--console FILE]\n"
		"                    [--seccomp] [--kvm-fd N] [--console-max-mib N] [--stats]\n"
		"\n"
		"One microVM, prepared ahead of need: creates the KVM VM, its vCPUs and guest RAM\n"
		"of the given shape, then waits on its control socket. A request\n"
		"  {\"cmd\":\"restore\",\"snapshot\":DIR,\"disks\":[{\"index\":0,\"path\":P}],\"vsock\":S}\n"
		"maps the snapshot into it and starts the guest at once (a disk may come open\n"
		"instead, sent with the request as SCM_RIGHTS: \"fd\":K in its entry names the K-th\n"
		"descriptor, and P then only names it); after that the socket takes\n"
		"the same commands as `mitos-vmm run --control` (status, pause, resume, snapshot,\n"
		"stop). This is how `serve` keeps forks fast: the expensive part happens before the\n"
		"fork is asked for.\n"
		"\n"
		"  --control PATH   control socket (required)\n"
		"  --mem MIB        guest RAM; must equal the snapshot's (default %d)\n"
		"  --vcpus N        vCPUs; must equal the snapshot's (default 1)\n"
		"  --arm DIR        read the snapshot in DIR and map its memory now, so that a\n"
		"                   restore of DIR only restores registers and devices (a restore\n"
		"                   of another snapshot, or of DIR rewritten since, reads it then);\n"
		"                   a snapshot that cannot be read is said on stderr, not fatal\n"
		"  --console FILE   where the guest's serial output goes (default: stdout)\n"
		"  --console-max-mib N\n"
		"                   when that is a file: past N MiB it is emptied and restarts, so a\n"
		"                   guest cannot fill the disk with it (default: no cap)\n"
		"  --seccomp        once prepared, allow only the system calls a VM process needs\n"
		"                   (vmm/seccomp.c); any other kills it, naming the call on stderr\n"
		"  --kvm-fd N       use descriptor N, open on /dev/kvm, instead of opening it (a jailed\n"
		"                   VM process, which may not open it itself, is handed one)\n"
		"  --stats          print timings and exit counts to stderr at the end\n",
		MACHINE_DEFAULT_MEM_MIB);
}

int cmd_vm(int argc, char **argv, uint64_t process_start_ns)
{
	static const struct option opts[] = {
		{ "control", required_argument, NULL, 'C' },
		{ "mem", required_argument, NULL, 'm' },
		{ "vcpus", required_argument, NULL, 'n' },
		{ "arm", required_argument, NULL, 'a' },
		{ "console", required_argument, NULL, 'o' },
		{ "stats", no_argument, NULL, 's' },
		{ "seccomp", no_argument, NULL, 'S' },
		{ "kvm-fd", required_argument, NULL, 'K' },
		{ "console-max-mib", required_argument, NULL, 'M' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct machine_config cfg = {
		.mem_bytes = (uint64_t)MACHINE_DEFAULT_MEM_MIB << 20,
		.vcpus = 1,
		.console_in = -1,
		.console_out = STDOUT_FILENO,
	};
	const char *console = NULL;
	bool stats = false, filter = false;
	unsigned long v;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'C': cfg.control_path = optarg; break;
		case 'm':
			if (cli_parse_uint("vm", "--mem", optarg, 16, 1UL << 20, &v))
				return EXIT_USAGE;
			cfg.mem_bytes = (uint64_t)v << 20;
			break;
		case 'n':
			if (cli_parse_uint("vm", "--vcpus", optarg, 1, 64, &v))
				return EXIT_USAGE;
			cfg.vcpus = (unsigned)v;
			break;
		case 'a': cfg.arm = optarg; break;
		case 'o': console = optarg; break;
		case 's': stats = true; break;
		case 'S': filter = true; break;
		case 'K':
			if (cli_parse_uint("vm", "--kvm-fd", optarg, 3, 1 << 20, &v))
				return EXIT_USAGE;
			cfg.kvm_fd = (int)v;
			break;
		case 'M':
			if (cli_parse_uint("vm", "--console-max-mib", optarg, 1, 1UL << 20, &v))
				return EXIT_USAGE;
			cfg.console_max = (uint64_t)v << 20;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind < argc || !cfg.control_path) {
		fprintf(stderr, "mitos-vmm vm: --control is required (see --help)\n");
		return EXIT_USAGE;
	}
	if (console) {
		cfg.console_out = open(console, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
		if (cfg.console_out < 0) {
			fprintf(stderr, "mitos-vmm vm: --console %s: %s\n", console, strerror(errno));
			return EXIT_VMM_ERROR;
		}
	}
	struct mitos_err e = { 0 };
	struct machine *m;
	if (machine_prepare(&m, &cfg, &e)) {
		fprintf(stderr, "mitos-vmm vm: %s\n", e.msg);
		return EXIT_VMM_ERROR;
	}
	return cli_run_machine("vm", m, filter, stats, process_start_ns);
}
