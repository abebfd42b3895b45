#include "commands.h"
#include "kvm_probe.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mitos-vmm check [--json]\n"
		"\n"
		"Opens /dev/kvm, creates a throwaway VM and times a loop of guest kernel-mode code\n"
		"to tell whether this host runs guests on hardware virtualization (VT-x/AMD-V) or\n"
		"only through KVM's instruction emulator, and so which engine `mitos-vmm serve`\n"
		"picks by default. Takes well under a second.\n"
		"\n"
		"  --json   print the findings as one JSON object\n"
		"\n"
		"Exit status: 0 when KVM can run microVMs at hardware speed, 1 otherwise.\n");
}

static void print_json(const struct kvm_probe_result *r)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddBoolToObject(o, "kvm_usable", r->kvm_usable);
	if (!r->kvm_usable)
		cJSON_AddStringToObject(o, "kvm_error", r->kvm_error);
	cJSON_AddNumberToObject(o, "api_version", r->api_version);
	cJSON_AddBoolToObject(o, "cpu_vmx", r->cpu_vmx);
	cJSON_AddBoolToObject(o, "cpu_svm", r->cpu_svm);
	cJSON_AddStringToObject(o, "kvm_module", r->module);
	cJSON_AddBoolToObject(o, "measured", r->measured);
	if (r->measured) {
		cJSON_AddNumberToObject(o, "guest_kernel_mips", r->kernel_mips);
		cJSON_AddNumberToObject(o, "measure_seconds", r->measure_seconds);
	}
	cJSON_AddStringToObject(o, "virtualization",
				r->hardware ? "hardware" : r->measured ? "emulation-only" : "unavailable");
	cJSON_AddStringToObject(o, "engine", r->engine);
	cJSON_AddStringToObject(o, "reason", r->reason);
	char *s = cJSON_PrintUnformatted(o);
	puts(s);
	free(s);
	cJSON_Delete(o);
}

static void print_text(const struct kvm_probe_result *r)
{
	if (r->kvm_usable)
		printf("kvm:             /dev/kvm usable, API version %d, module %s\n",
		       r->api_version, r->module);
	else
		printf("kvm:             not usable: %s\n", r->kvm_error);
	printf("cpu flags:       %s\n", r->cpu_vmx ? "vmx (Intel VT-x)" :
	       r->cpu_svm ? "svm (AMD-V)" : "neither vmx nor svm");
	if (r->measured)
		printf("guest kernel:    %.1f M instructions/s (measured over %.3f s)\n",
		       r->kernel_mips, r->measure_seconds);
	printf("virtualization:  %s\n", r->hardware ? "hardware" :
	       r->measured ? "emulation-only" : "unavailable");
	printf("engine:          %s: %s\n", r->engine, r->reason);
	if (r->measured && !r->hardware)
		printf("note:            `mitos-vmm run` still boots the project's test guest here; "
		       "a stock Linux kernel stops at the first instruction KVM's emulator lacks "
		       "(XSAVE, INT3, CLAC/STAC, POPCNT).\n");
}

int cmd_check(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	bool json = false;
	int c;
	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mitos-vmm check: unexpected argument '%s'\n", argv[optind]);
		return EXIT_USAGE;
	}
	struct kvm_probe_result r;
	kvm_probe_run(&r);
	if (json)
		print_json(&r);
	else
		print_text(&r);
	return r.hardware ? 0 : 1;
}
