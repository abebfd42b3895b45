/* What the VM-running subcommands (run, restore) share: argument parsing, the raw
 * terminal, the end-of-run statistics and the exit status. */
#include "cli.h"
#include "commands.h"
#include "seccomp.h"

#include "../devices/tap.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

int cli_parse_uint(const char *cmd, const char *flag, const char *s, unsigned long min, unsigned long max,
		      unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
		fprintf(stderr, "mitos-vmm %s: %s wants a number from %lu to %lu, not '%s'\n",
			cmd, flag, min, max, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

/* Splits PATH[,ro][,fd=N] in place (argv strings are ours to modify). */
int cli_parse_disk(const char *cmd, char *arg, struct virtio_blk_opts *d)
{
	*d = (struct virtio_blk_opts){ .path = arg, .fd = -1 };
	char *opt = strchr(arg, ',');
	if (opt)
		*opt++ = '\0';
	while (opt) {
		char *next = strchr(opt, ',');
		if (next)
			*next++ = '\0';
		unsigned long fd;
		if (!strcmp(opt, "ro")) {
			d->read_only = true;
		} else if (!strncmp(opt, "fd=", 3)) {
			if (cli_parse_uint(cmd, "--disk fd=", opt + 3, 0, INT_MAX, &fd))
				return -EINVAL;
			d->has_fd = true;
			d->fd = (int)fd;
		} else {
			fprintf(stderr, "mitos-vmm %s: --disk %s: unknown option '%s' (only 'ro' and 'fd=N')\n",
				cmd, arg, opt);
			return -EINVAL;
		}
		opt = next;
	}
	if (!d->path[0]) {
		fprintf(stderr, "mitos-vmm %s: --disk needs a path\n", cmd);
		return -EINVAL;
	}
	return 0;
}

static int parse_mac(const char *s, uint8_t mac[VIRTIO_NET_MAC_LEN])
{
	for (unsigned i = 0; i < VIRTIO_NET_MAC_LEN; i++, s += 3) {
		char hex[3] = { s[0], s[0] ? s[1] : 0, 0 };
		if (!isxdigit((unsigned char)hex[0]) || !isxdigit((unsigned char)hex[1]) ||
		    s[2] != (i + 1 < VIRTIO_NET_MAC_LEN ? ':' : '\0'))
			return -EINVAL;
		mac[i] = (uint8_t)strtoul(hex, NULL, 16);
	}
	return 0;
}

/* Splits tap=NAME[,mac=MAC] (or fd=N for tap=) in place. */
int cli_parse_net(const char *cmd, char *arg, bool allow_mac, struct virtio_net_opts *o)
{
	static const uint8_t default_mac[] = VIRTIO_NET_DEFAULT_MAC;
	const char *form = allow_mac ? "tap=NAME|fd=N[,mac=MAC]" : "tap=NAME|fd=N";
	bool have_mac = false;
	o->tap = NULL;
	o->has_fd = false;
	o->fd = -1;
	memcpy(o->mac, default_mac, sizeof(o->mac));
	for (char *kv; (kv = strsep(&arg, ","));) {
		if (!strncmp(kv, "tap=", 4) && !o->tap) {
			o->tap = kv + 4;
			if (!tap_name_valid(o->tap)) {
				fprintf(stderr, "mitos-vmm %s: --net: '%s' is not an interface name (1 "
					"to 15 characters, no '/', ':' or spaces)\n", cmd, o->tap);
				return -EINVAL;
			}
		} else if (!strncmp(kv, "fd=", 3) && !o->tap && !o->has_fd) {
			char *end;
			long fd = strtol(kv + 3, &end, 10);
			if (!kv[3] || *end || fd < 3 || fd > 1 << 20 || fcntl((int)fd, F_GETFD) < 0) {
				fprintf(stderr, "mitos-vmm %s: --net: fd=%s: want an open descriptor (3 or "
					"more) of an attached TAP\n", cmd, kv + 3);
				return -EINVAL;
			}
			o->has_fd = true;
			o->fd = (int)fd;
		} else if (!strncmp(kv, "mac=", 4) && allow_mac && !have_mac) {
			have_mac = true;
			if (parse_mac(kv + 4, o->mac) || (o->mac[0] & 1) ||
			    !memcmp(o->mac, (uint8_t[VIRTIO_NET_MAC_LEN]){ 0 }, VIRTIO_NET_MAC_LEN)) {
				fprintf(stderr, "mitos-vmm %s: --net: mac=%s: want a unicast address "
					"like 06:00:ac:10:00:02 (six hex pairs, first octet even, not "
					"all zero)\n", cmd, kv + 4);
				return -EINVAL;
			}
		} else {
			fprintf(stderr, "mitos-vmm %s: --net wants %s: '%s' is unknown or repeated\n",
				cmd, form, kv);
			return -EINVAL;
		}
	}
	if (!o->tap && !o->has_fd) {
		fprintf(stderr, "mitos-vmm %s: --net wants %s: tap= is missing\n", cmd, form);
		return -EINVAL;
	}
	return 0;
}

static struct termios saved_tio;
static bool tio_saved;

void cli_restore_terminal(void)
{
	if (tio_saved)
		tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
}

/* Raw input so keys reach the guest as typed; output processing stays on. */
void cli_raw_terminal(void)
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
		atexit(cli_restore_terminal);
	}
}

static double ms(uint64_t a, uint64_t b)
{
	return b > a ? (double)(b - a) / 1e6 : 0.0;
}

void cli_print_stats(const struct machine_result *r, uint64_t start_ns)
{
	uint64_t prev = start_ns;
	for (unsigned i = 0; i < r->nphases; i++) {
		fprintf(stderr, "stats: phase %s: %.3f ms\n", r->phases[i].name,
			ms(prev, r->phases[i].end_ns));
		prev = r->phases[i].end_ns;
	}
	fprintf(stderr, "stats: first-guest-exit: %.3f ms after process start\n",
		ms(start_ns, r->first_exit_ns));
	fprintf(stderr, "stats: vcpus-started: %.3f ms after process start\n",
		ms(start_ns, r->run_start_ns));
	fprintf(stderr, "stats: end: %.3f ms after process start\n", ms(start_ns, r->end_ns));
	fprintf(stderr, "stats: first-guest-exit-monotonic-ns: %" PRIu64 "\n", r->first_exit_ns);
	fprintf(stderr, "stats: exits:");
	for (int k = 0; k < MEXIT_KINDS; k++)
		fprintf(stderr, " %s=%" PRIu64, machine_exit_kind_name(k), r->exits[k]);
	fprintf(stderr, "\nstats: emulated:");
	for (int k = 0; k < EMULATE_KINDS; k++)
		fprintf(stderr, " %s=%" PRIu64, emulate_kind_name(k), r->emulated[k]);
	fprintf(stderr, "\n");
}

int cli_exit_status(const struct machine_result *r)
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

int cli_run_machine(const char *cmd, struct machine *m, bool seccomp, bool stats, uint64_t start_ns)
{
	struct mitos_err e = { 0 };
	struct machine_result res;
	if (seccomp && (vmm_seccomp_install(&e) || (machine_loaded(m) && vmm_seccomp_seal_rings(&e)))) {
		fprintf(stderr, "mitos-vmm %s: %s\n", cmd, e.msg);
		machine_destroy(m);
		return EXIT_VMM_ERROR;
	}
	cli_raw_terminal();
	int r = machine_run(m, &res, &e);
	cli_restore_terminal();
	machine_destroy(m);
	if (r && res.how != MACHINE_END_VMM_ERROR) {
		fprintf(stderr, "mitos-vmm %s: %s\n", cmd, e.msg);
		return EXIT_VMM_ERROR;
	}
	if (res.how != MACHINE_END_POWEROFF && res.how != MACHINE_END_RESET &&
	    !(res.how == MACHINE_END_DEBUG_EXIT && res.status == 0))
		fprintf(stderr, "mitos-vmm %s: %s\n", cmd, res.why);
	if (stats)
		cli_print_stats(&res, start_ns);
	return cli_exit_status(&res);
}
