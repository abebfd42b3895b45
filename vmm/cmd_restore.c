#include "cli.h"
#include "commands.h"
#include "machine.h"
#include "../snapshot/snapshot_config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mitos-vmm restore --snapshot DIR [options]\n"
		"\n"
		"Starts a VM from a snapshot (and the layers under it) made by `mitos-vmm snapshot`.\n"
		"Guest RAM is mapped copy-on-write from the snapshot's memory files: any number of\n"
		"VMs restored from one snapshot share every page none of them writes, and the\n"
		"snapshot's files never change.\n"
		"\n"
		"  --snapshot DIR       the snapshot directory (required)\n"
		"  --disk N=PATH[,ro][,fd=M]\n"
		"                       give disk N its own image (',fd=M': the inherited descriptor\n"
		"                       M, PATH only naming it). A disk snapshotted read-write must\n"
		"                       get one: children never share a writable disk (copy it first,\n"
		"                       e.g. cp --reflink=auto). Read-only disks reopen their path.\n"
		"  --vsock PATH         host socket of the virtio-vsock device (required when the\n"
		"                       snapshot has one)\n"
		"  --net tap=NAME|fd=N  the TAP of the network device, or an attached one passed\n"
		"                       as descriptor N (one of the two is required when the snapshot\n"
		"                       has one); the guest keeps its MAC and addresses, so each\n"
		"                       child needs a network namespace of its own\n"
		"                       (tools/netns-sandbox)\n"
		"  --control PATH       serve a JSON-lines control socket at PATH\n"
		"  --paused             do not run the vCPUs until a \"resume\" on the control socket\n"
		"  --stats              print exit counts and timings to stderr at the end\n"
		"  --help               this text\n"
		"\n"
		"Exit status: as for `mitos-vmm run`.\n");
}

/* N=PATH[,ro] */
static int parse_disk_override(char *arg, unsigned *index, struct virtio_blk_opts *d)
{
	char *eq = strchr(arg, '=');
	unsigned long n;
	if (!eq) {
		fprintf(stderr, "mitos-vmm restore: --disk wants N=PATH[,ro][,fd=M], not '%s'\n", arg);
		return -EINVAL;
	}
	*eq = '\0';
	if (cli_parse_uint("restore", "--disk N", arg, 0, SNAPSHOT_MAX_DISKS - 1, &n))
		return -EINVAL;
	*index = (unsigned)n;
	return cli_parse_disk("restore", eq + 1, d);
}

int cmd_restore(int argc, char **argv, uint64_t process_start_ns)
{
	static const struct option opts[] = {
		{ "snapshot", required_argument, NULL, 'S' },
		{ "disk", required_argument, NULL, 'd' },
		{ "vsock", required_argument, NULL, 'v' },
		{ "net", required_argument, NULL, 'N' },
		{ "control", required_argument, NULL, 'C' },
		{ "paused", no_argument, NULL, 'p' },
		{ "stats", no_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct machine_config cfg = { .console_in = STDIN_FILENO, .console_out = STDOUT_FILENO };
	bool overridden[SNAPSHOT_MAX_DISKS] = { false };
	const char *dir = NULL;
	bool stats = false;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'S': dir = optarg; break;
		case 'd': {
			unsigned idx;
			struct virtio_blk_opts d;
			if (parse_disk_override(optarg, &idx, &d))
				return EXIT_USAGE;
			cfg.disks[idx] = d;
			overridden[idx] = true;
			break;
		}
		case 'v': cfg.vsock_path = optarg; break;
		case 'N':
			if (cfg.has_net) {
				fprintf(stderr, "mitos-vmm restore: at most one --net\n");
				return EXIT_USAGE;
			}
			if (cli_parse_net("restore", optarg, false, &cfg.net))
				return EXIT_USAGE;
			cfg.has_net = true;
			break;
		case 'C': cfg.control_path = optarg; break;
		case 'p': cfg.start_paused = true; break;
		case 's': stats = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mitos-vmm restore: unexpected argument '%s'\n", argv[optind]);
		return EXIT_USAGE;
	}
	if (!dir) {
		fprintf(stderr, "mitos-vmm restore: --snapshot is required (see --help)\n");
		return EXIT_USAGE;
	}
	if (cfg.start_paused && !cfg.control_path) {
		fprintf(stderr, "mitos-vmm restore: --paused needs --control (nothing could resume it)\n");
		return EXIT_USAGE;
	}
	struct mitos_err e = { 0 };
	struct snapshot_config sc;
	if (snapshot_config_read(dir, &sc, &e)) {
		fprintf(stderr, "mitos-vmm restore: %s\n", e.msg);
		return EXIT_VMM_ERROR;
	}
	for (unsigned i = 0; i < SNAPSHOT_MAX_DISKS; i++)
		if (overridden[i] && i >= sc.ndisks) {
			fprintf(stderr, "mitos-vmm restore: --disk %u: the snapshot has %u disk(s)\n", i,
				sc.ndisks);
			snapshot_config_free(&sc);
			return EXIT_USAGE;
		}
	cfg.console_escape = isatty(STDIN_FILENO);
	struct machine *m = NULL;
	int r = machine_config_from_snapshot(&sc, &cfg, overridden, &e);
	if (!r)
		r = machine_restore(&m, dir, &cfg, &e);
	if (r)
		fprintf(stderr, "mitos-vmm restore: %s\n", e.msg);
	int status = r ? EXIT_VMM_ERROR : cli_run_machine("restore", m, false, stats, process_start_ns);
	snapshot_config_free(&sc);
	return status;
}
