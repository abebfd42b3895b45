#include "api/engines/kvm_guest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/engines/images.h"

#ifndef MITOS_SOURCE_ROOT
#define MITOS_SOURCE_ROOT "."
#endif

/* The image's layout (tools/build-image): the agent is init, the root is mounted
 * read-only and the agent overlays it with tmpfs. */
#define ROOT_ARGS "root=/dev/vda ro init=/usr/sbin/init"
#define MEM_MIB 512                 /* IPython with numpy and matplotlib, plus the tmpfs overlay */
#define BOOT_TIMEOUT_HW_S 120
#define BOOT_TIMEOUT_EMULATED_S 600 /* measured: about 40 s to the agent under emulation */
/* The image's interpreter and the modules every run_code and most first commands
 * load: a child reads them from the inherited page cache, not from its disk. */
#define WARM_CMD "command -v python3 >/dev/null || exit 0; python3 -c 'import json, base64, codecs, io' >/dev/null"

static bool emulated;

void kvm_guest_init(bool emu)
{
	emulated = emu;
}

static bool readable_file(const char *path)
{
	struct stat st;
	return !stat(path, &st) && S_ISREG(st.st_mode) && !access(path, R_OK);
}

/* firmware/guest-pvm.cmdline: '#' lines are comments, the others joined with spaces.
 * Its rdinit= is for an initramfs guest; ours boots from the disk. */
static int pvm_cmdline(char *out, size_t outlen, struct mitos_err *e)
{
	char exe[PATH_MAX], path[PATH_MAX + 64];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	exe[n > 0 ? n : 0] = 0;
	char *slash = strrchr(exe, '/');
	if (slash)
		*slash = 0;
	const char *cands[2][2] = { { MITOS_SOURCE_ROOT, "/firmware/guest-pvm.cmdline" },
				    { exe, "/../share/mitos/guest-pvm.cmdline" } };
	FILE *f = NULL;
	for (int i = 0; i < 2 && !f; i++) {
		snprintf(path, sizeof(path), "%s%s", cands[i][0], cands[i][1]);
		f = fopen(path, "re");
	}
	if (!f)
		return mitos_err_set(e, -ENODEV, "the pvm kernel's command line %s/firmware/guest-pvm.cmdline is "
				     "missing (remediation: run serve from a build of the source tree)",
				     MITOS_SOURCE_ROOT);
	size_t len = 0;
	char line[1024];
	out[0] = 0;
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == '#')
			continue;
		for (char *s = line, *tok; (tok = strsep(&s, " \t\n"));) {
			if (!*tok || !strncmp(tok, "rdinit=", 7))
				continue;
			int k = snprintf(out + len, outlen - len, "%s%s", len ? " " : "", tok);
			if (k < 0 || (size_t)k >= outlen - len) {
				fclose(f);
				return mitos_err_set(e, -E2BIG, "%s is too long", path);
			}
			len += (size_t)k;
		}
	}
	fclose(f);
	return 0;
}

int kvm_guest_default(const char *image, struct kvm_guest *g, struct mitos_err *e)
{
	const char *disk = images_disk(image);
	if (!disk) {
		if (!images_root(image))
			return mitos_err_set(e, -ENOENT, "image '%.64s' is not available on the kvm engine (available: "
					     "python); or give \"kernel\" and \"rootfs\" (or \"initrd\")", image);
		return mitos_err_set(e, -ENODEV, "the python image's rootfs.ext4 is not built, or serve runs with "
				     "--images none (remediation: tools/build-image, then restart serve)");
	}
	snprintf(g->rootfs, sizeof(g->rootfs), "%s", disk);
	char cache[PATH_MAX - 64];
	if (images_cache_dir(cache, sizeof(cache)))
		return mitos_err_set(e, -ENODEV, "neither MITOS_CACHE nor HOME is set: no guest kernel cache");
	char link[PATH_MAX];
	snprintf(link, sizeof(link), "%s/kernel/%s/vmlinux", cache, emulated ? "current-pvm" : "current");
	/* The build it names now: a rebuild later must not change what a template says it booted. */
	if (!realpath(link, g->kernel) || !readable_file(g->kernel))
		return mitos_err_set(e, -ENODEV, "no guest kernel at %.300s (remediation: firmware/build-kernel.sh%s; "
				     "about 7 minutes on 2 cores the first time)", link,
				     emulated ? " --variant pvm, the variant for emulation-only KVM" : "");
	g->mem_mib = MEM_MIB;
	g->boot_timeout_s = emulated ? BOOT_TIMEOUT_EMULATED_S : BOOT_TIMEOUT_HW_S;
	snprintf(g->warm, sizeof(g->warm), "%s", WARM_CMD);
	if (!emulated) {
		snprintf(g->cmdline, sizeof(g->cmdline), "%s init=/usr/sbin/init", KVM_GUEST_CMDLINE);
		return 0;
	}
	int rc = pvm_cmdline(g->cmdline, sizeof(g->cmdline) - sizeof(ROOT_ARGS) - 1, e);
	if (!rc)
		strcat(strcat(g->cmdline, " "), ROOT_ARGS);
	return rc;
}
