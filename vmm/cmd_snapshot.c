#include "commands.h"
#include "control.h"
#include "control_proto.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mitos-vmm snapshot --control PATH --out DIR\n"
		"\n"
		"Asks the VM behind a control socket (`mitos-vmm run|restore --control PATH`) to\n"
		"pause, write a snapshot into DIR (created; it must not hold a snapshot already)\n"
		"and carry on. A VM that was itself restored writes a layer: only the pages it\n"
		"changed since, naming its parent snapshot. Start children with\n"
		"`mitos-vmm restore --snapshot DIR`.\n"
		"\n"
		"  --control PATH   the VM's control socket (required)\n"
		"  --out DIR        where the snapshot goes (required)\n"
		"  --timeout SEC    how long to wait for the VM (default 120)\n"
		"\n"
		"Exit status: 0 when the snapshot is complete, 1 otherwise.\n");
}

int cmd_snapshot(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "control", required_argument, NULL, 'C' },
		{ "out", required_argument, NULL, 'o' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *control = NULL, *out = NULL;
	long timeout = 120;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'C': control = optarg; break;
		case 'o': out = optarg; break;
		case 't': {
			char *end;
			timeout = strtol(optarg, &end, 10);
			if (*end || timeout <= 0 || timeout > 86400) {
				fprintf(stderr, "mitos-vmm snapshot: --timeout wants 1..86400 seconds\n");
				return EXIT_USAGE;
			}
			break;
		}
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (!control || !out || optind < argc) {
		fprintf(stderr, "mitos-vmm snapshot: --control and --out are required (see --help)\n");
		return EXIT_USAGE;
	}
	/* The VM resolves the path itself: make a relative one mean what the user meant. */
	char abs[PATH_MAX];
	if (out[0] != '/') {
		if (!getcwd(abs, sizeof(abs)) || strlen(abs) + 1 + strlen(out) >= sizeof(abs)) {
			fprintf(stderr, "mitos-vmm snapshot: path too long\n");
			return EXIT_VMM_ERROR;
		}
		strcat(abs, "/");
		strcat(abs, out);
		out = abs;
	}
	cJSON *req = ctl_request_encode(&(struct ctl_request){ .cmd = CTL_SNAPSHOT, .dir = out });
	struct mitos_err e = { 0 };
	cJSON *reply = req ? control_call(control, req, NULL, (int)timeout * 1000, &e) : NULL;
	cJSON_Delete(req);
	if (!req)
		mitos_err_set(&e, -ENOMEM, "out of memory");
	if (!reply) {
		fprintf(stderr, "mitos-vmm snapshot: %s\n", e.msg);
		return EXIT_VMM_ERROR;
	}
	int status = 0;
	struct mitos_err why = { 0 };
	if (ctl_reply_ok(reply, &why)) {
		const cJSON *ms = cJSON_GetObjectItemCaseSensitive(reply, "ms");
		printf("snapshot written to %s in %.1f ms\n", out, cJSON_IsNumber(ms) ? ms->valuedouble : 0.0);
	} else {
		fprintf(stderr, "mitos-vmm snapshot: %s\n", why.msg);
		status = EXIT_VMM_ERROR;
	}
	cJSON_Delete(reply);
	return status;
}
