#include "commands.h"
#include "machine.h"

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
		"                     virtio_mmio.device= entries for the disks are appended\n"
		"  --mem MIB          guest RAM in MiB (default %d)\n"
		"  --vcpus N          number of vCPUs, 1..64 (default 1)\n"
		"  --disk PATH[,ro]   a virtio-blk disk (raw image); ',ro' attaches it read-only;\n"
		"                     repeatable, up to %d\n"
		"  --stats            print exit counts and boot timings to stderr at the end\n"
		"  --help             this text\n"
		"\n"
		"On a terminal, Ctrl-A x ends the VM (Ctrl-A Ctrl-A sends a Ctrl-A).\n"
		"\n"
		"Exit status: 0 when the guest powers off or reboots; the byte the guest wrote to\n"
		"the debug-exit port 0xf4, if it did; 1 when the VMM fails (bad kernel, no KVM);\n"
		"2 for bad arguments; 3 when the guest crashes (triple fault, emulation failure);\n"
		"128+N when stopped by signal N.\n",
		MACHINE_DEFAULT_CMDLINE, MACHINE_DEFAULT_MEM_MIB, MACHINE_MAX_DISKS);
}

static int parse_uint(const char *flag, const char *s, unsigned long min, unsigned long max,
		      unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
		fprintf(stderr, "mitos-vmm run: %s wants a number from %lu to %lu, not '%s'\n",
			flag, min, max, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

/* Splits PATH[,ro] in place (argv strings are ours to modify). */
static int parse_disk(char *arg, struct virtio_blk_opts *d)
{
	char *comma = strchr(arg, ',');
	d->read_only = false;
	if (comma) {
		if (strcmp(comma + 1, "ro")) {
			fprintf(stderr, "mitos-vmm run: --disk %s: unknown option '%s' (only 'ro')\n",
				arg, comma + 1);
			return -EINVAL;
		}
		d->read_only = true;
		*comma = '\0';
	}
	d->path = arg;
	if (!d->path[0]) {
		fprintf(stderr, "mitos-vmm run: --disk needs a path\n");
		return -EINVAL;
	}
	return 0;
}

static struct termios saved_tio;
static bool tio_saved;

static void restore_terminal(void)
{
	if (tio_saved)
		tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
}

/* Raw input so keys reach the guest as typed; output processing stays on. */
static void raw_terminal(void)
{
	if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_tio))
		return;
	struct termios t = saved_tio;
	t.c_iflag &= ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
	t.c_lflag &= ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 0;
	if (tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0) {
		tio_saved = true;
		atexit(restore_terminal);
	}
}

static double ms(uint64_t a, uint64_t b)
{
	return b > a ? (double)(b - a) / 1e6 : 0.0;
}

static void print_stats(const struct machine_result *r, uint64_t start_ns)
{
	fprintf(stderr, "stats: first-guest-exit: %.3f ms after process start\n",
		ms(start_ns, r->first_exit_ns));
	fprintf(stderr, "stats: vcpus-started: %.3f ms after process start\n",
		ms(start_ns, r->run_start_ns));
	fprintf(stderr, "stats: end: %.3f ms after process start\n", ms(start_ns, r->end_ns));
	fprintf(stderr, "stats: first-guest-exit-monotonic-ns: %" PRIu64 "\n", r->first_exit_ns);
	fprintf(stderr, "stats: exits:");
	for (int k = 0; k < MEXIT_KINDS; k++)
		fprintf(stderr, " %s=%" PRIu64, machine_exit_kind_name(k), r->exits[k]);
	fprintf(stderr, "\n");
}

static int exit_status(const struct machine_result *r)
{
	switch (r->how) {
	case MACHINE_END_POWEROFF:
	case MACHINE_END_RESET:
		return 0;
	case MACHINE_END_DEBUG_EXIT:
		return r->status;
	case MACHINE_END_CRASH:
		return EXIT_GUEST_CRASH;
	case MACHINE_END_HOST:
		return r->status ? 128 + r->status : 0;
	case MACHINE_END_VMM_ERROR:
	default:
		return EXIT_VMM_ERROR;
	}
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
		{ "stats", no_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct machine_config cfg = {
		.mem_bytes = (uint64_t)MACHINE_DEFAULT_MEM_MIB << 20,
		.vcpus = 1,
		.console_in = STDIN_FILENO,
		.console_out = STDOUT_FILENO,
	};
	bool stats = false;
	unsigned long v;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'k': cfg.kernel = optarg; break;
		case 'i': cfg.initrd = optarg; break;
		case 'c': cfg.cmdline = optarg; break;
		case 'm':
			/* Up to 1 TiB; at least 16 MiB so a kernel and its boot data fit. */
			if (parse_uint("--mem", optarg, 16, 1UL << 20, &v))
				return EXIT_USAGE;
			cfg.mem_bytes = (uint64_t)v << 20;
			break;
		case 'n':
			if (parse_uint("--vcpus", optarg, 1, 64, &v))
				return EXIT_USAGE;
			cfg.vcpus = (unsigned)v;
			break;
		case 'd':
			if (cfg.ndisks == MACHINE_MAX_DISKS) {
				fprintf(stderr, "mitos-vmm run: at most %d --disk\n", MACHINE_MAX_DISKS);
				return EXIT_USAGE;
			}
			if (parse_disk(optarg, &cfg.disks[cfg.ndisks++]))
				return EXIT_USAGE;
			break;
		case 's': stats = true; break;
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
	raw_terminal();
	struct machine_result res;
	int r = machine_run(m, &res, &e);
	restore_terminal();
	machine_destroy(m);
	if (r && res.how != MACHINE_END_VMM_ERROR) {
		fprintf(stderr, "mitos-vmm run: %s\n", e.msg);
		return EXIT_VMM_ERROR;
	}
	if (res.how != MACHINE_END_POWEROFF && res.how != MACHINE_END_RESET &&
	    !(res.how == MACHINE_END_DEBUG_EXIT && res.status == 0))
		fprintf(stderr, "mitos-vmm run: %s\n", res.why);
	if (stats)
		print_stats(&res, process_start_ns);
	return exit_status(&res);
}
