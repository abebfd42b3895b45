#include "cli.h"
#include "commands.h"
#include "machine.h"
#include "../devices/virtio_vsock.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mitos-vmm run --kernel PATH [options]\n"
		"\n"
		"Boots one guest with its serial console (COM1) on this terminal. The kernel is an\n"
		"ELF vmlinux or a bzImage, entered in 64-bit mode through the Linux boot protocol.\n"
		"\n"
		"  --kernel PATH      guest kernel (required)\n"
		"  --initrd PATH      initial ramdisk\n"
		"  --cmdline STR      kernel command line (default: \"%s\");\n"
		"                     virtio_mmio.device= entries for the devices are appended\n"
		"  --mem MIB          guest RAM in MiB (default %d)\n"
		"  --vcpus N          number of vCPUs, 1..64 (default 1)\n"
		"  --disk PATH[,ro][,fd=N]\n"
		"                     a virtio-blk disk (raw image); ',ro' attaches it read-only;\n"
		"                     ',fd=N' uses the inherited descriptor N for it, and PATH\n"
		"                     only names it (a jailed VM need not see the image);\n"
		"                     repeatable, up to %d\n"
		"  --vsock PATH[,cid=N]\n"
		"                     a virtio-vsock device, guest CID N (%d..%u, default %d):\n"
		"                     host clients connect to the Unix socket PATH and write\n"
		"                     \"CONNECT <port>\\n\"; guest connections to host port P go\n"
		"                     to the Unix socket PATH_P (Firecracker's convention)\n"
		"  --net tap=NAME[,mac=MAC]\n"
		"                     a virtio-net device on the existing TAP NAME of this network\n"
		"                     namespace (see tools/netns-sandbox); MAC defaults to\n"
		"                     06:00:ac:10:00:02\n"
		"  --net fd=N[,mac=MAC]  the same on a TAP another process attached\n"
		"                     (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) and passed as descriptor N\n"
		"  --control PATH     serve a JSON-lines control socket at PATH (pause, resume,\n"
		"                     snapshot, status, stop; see `mitos-vmm snapshot`)\n"
		"  --stats            print exit counts, instructions the VMM emulated for KVM\n"
		"                     and boot timings to stderr at the end\n"
		"  --profile PATH     sample each vCPU's RIP 100 times a second into PATH\n"
		"                     (tools/guest-profile maps them to kernel symbols)\n"
		"  --seccomp          once the VM is built, allow only the system calls a VM\n"
		"                     process needs (vmm/seccomp.c); any other kills it\n"
		"  --kvm-fd N         use descriptor N, open on /dev/kvm, instead of opening it\n"
		"                     (a jailed VM process, which may not open it, is handed one)\n"
		"  --console-max-mib N\n"
		"                     when stdout is a file: past N MiB it is emptied and restarts,\n"
		"                     so a guest cannot fill the disk with it (default: no cap)\n"
		"  --help             this text\n"
		"\n"
		"On a terminal, Ctrl-A x ends the VM (Ctrl-A Ctrl-A sends a Ctrl-A).\n"
		"\n"
		"Exit status: 0 when the guest powers off or reboots; the byte the guest wrote to\n"
		"the debug-exit port 0xf4, if it did; 1 when the VMM fails (bad kernel, no KVM);\n"
		"2 for bad arguments; 3 when the guest crashes (triple fault, emulation failure);\n"
		"128+N when stopped by signal N.\n",
		MACHINE_DEFAULT_CMDLINE, MACHINE_DEFAULT_MEM_MIB, MACHINE_MAX_DISKS,
		VIRTIO_VSOCK_MIN_CID, VIRTIO_VSOCK_MAX_CID, VIRTIO_VSOCK_DEFAULT_CID);
}

/* PATH[,cid=N], split in place (argv strings are ours to modify). */
static int parse_vsock(char *arg, struct machine_config *cfg)
{
	char *comma = strchr(arg, ',');
	unsigned long cid = VIRTIO_VSOCK_DEFAULT_CID;
	if (comma) {
		*comma = '\0';
		if (strncmp(comma + 1, "cid=", 4)) {
			fprintf(stderr, "mitos-vmm run: --vsock: unknown option '%s' (only cid=N)\n",
				comma + 1);
			return -EINVAL;
		}
		if (cli_parse_uint("run", "--vsock cid", comma + 5, VIRTIO_VSOCK_MIN_CID,
				   VIRTIO_VSOCK_MAX_CID, &cid))
			return -EINVAL;
	}
	if (!arg[0]) {
		fprintf(stderr, "mitos-vmm run: --vsock needs a path\n");
		return -EINVAL;
	}
	cfg->vsock_path = arg;
	cfg->vsock_cid = (uint32_t)cid;
	return 0;
}

int cmd_run(int argc, char **argv, uint64_t process_start_ns)
{
	static const struct option opts[] = {
		{ "kernel", required_argument, NULL, 'k' },
		{ "initrd", required_argument, NULL, 'i' },
		{ "cmdline", required_argument, NULL, 'c' },
		{ "mem", required_argument, NULL, 'm' },
		{ "vcpus", required_argument, NULL, 'n' },
		{ "disk", required_argument, NULL, 'd' },
		{ "vsock", required_argument, NULL, 'V' },
		{ "net", required_argument, NULL, 'N' },
		{ "stats", no_argument, NULL, 's' },
		{ "seccomp", no_argument, NULL, 'S' },
		{ "kvm-fd", required_argument, NULL, 'K' },
		{ "console-max-mib", required_argument, NULL, 'M' },
		{ "control", required_argument, NULL, 'C' },
		{ "profile", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct machine_config cfg = {
		.mem_bytes = (uint64_t)MACHINE_DEFAULT_MEM_MIB << 20,
		.vcpus = 1,
		.console_in = STDIN_FILENO,
		.console_out = STDOUT_FILENO,
	};
	bool stats = false, filter = false;
	unsigned long v;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'k': cfg.kernel = optarg; break;
		case 'i': cfg.initrd = optarg; break;
		case 'c': cfg.cmdline = optarg; break;
		case 'm':
			/* Up to 1 TiB; at least 16 MiB so a kernel and its boot data fit. */
			if (cli_parse_uint("run", "--mem", optarg, 16, 1UL << 20, &v))
				return EXIT_USAGE;
			cfg.mem_bytes = (uint64_t)v << 20;
			break;
		case 'n':
			if (cli_parse_uint("run", "--vcpus", optarg, 1, 64, &v))
				return EXIT_USAGE;
			cfg.vcpus = (unsigned)v;
			break;
		case 'd':
			if (cfg.ndisks == MACHINE_MAX_DISKS) {
				fprintf(stderr, "mitos-vmm run: at most %d --disk\n", MACHINE_MAX_DISKS);
				return EXIT_USAGE;
			}
			if (cli_parse_disk("run", optarg, &cfg.disks[cfg.ndisks++]))
				return EXIT_USAGE;
			break;
		case 'V':
			if (parse_vsock(optarg, &cfg))
				return EXIT_USAGE;
			break;
		case 'N':
			if (cfg.has_net) {
				fprintf(stderr, "mitos-vmm run: at most one --net\n");
				return EXIT_USAGE;
			}
			if (cli_parse_net("run", optarg, true, &cfg.net))
				return EXIT_USAGE;
			cfg.has_net = true;
			break;
		case 's': stats = true; break;
		case 'S': filter = true; break;
		case 'K':
			if (cli_parse_uint("run", "--kvm-fd", optarg, 3, 1 << 20, &v))
				return EXIT_USAGE;
			cfg.kvm_fd = (int)v;
			break;
		case 'M':
			if (cli_parse_uint("run", "--console-max-mib", optarg, 1, 1UL << 20, &v))
				return EXIT_USAGE;
			cfg.console_max = (uint64_t)v << 20;
			break;
		case 'C': cfg.control_path = optarg; break;
		case 'P': cfg.profile_path = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mitos-vmm run: unexpected argument '%s'\n", argv[optind]);
		return EXIT_USAGE;
	}
	if (!cfg.kernel) {
		fprintf(stderr, "mitos-vmm run: --kernel is required (see --help)\n");
		return EXIT_USAGE;
	}
	cfg.console_escape = isatty(STDIN_FILENO);

	struct mitos_err e = { 0 };
	struct machine *m;
	if (machine_create(&m, &cfg, &e)) {
		fprintf(stderr, "mitos-vmm run: %s\n", e.msg);
		return EXIT_VMM_ERROR;
	}
	return cli_run_machine("run", m, filter, stats, process_start_ns);
}
