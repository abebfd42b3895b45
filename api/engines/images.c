#include "api/engines/images.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char python_root[PATH_MAX] = "/";
static char python_disk[PATH_MAX];
static bool host_root = true;

static bool is_python(const char *image)
{
	return !strcmp(image, "python") || !strcmp(image, "default") || !strcmp(image, "base");
}

const char *images_root(const char *image)
{
	return is_python(image) ? python_root : NULL;
}

const char *images_disk(const char *image)
{
	return is_python(image) && python_disk[0] ? python_disk : NULL;
}

bool images_host_root(void)
{
	return host_root;
}

/* Does the ELF file ask for a program interpreter (ld.so)? */
static bool elf_dynamic(int fd)
{
	Elf64_Ehdr eh;
	if (pread(fd, &eh, sizeof(eh), 0) != (ssize_t)sizeof(eh) || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > 256)
		return false;
	for (unsigned i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;
		if (pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + i * sizeof(ph))) != (ssize_t)sizeof(ph))
			return false;
		if (ph.p_type == PT_INTERP)
			return true;
	}
	return false;
}

static void fall_back(const char *why)
{
	printf("WARNING: %s; the 'python' template falls back to this host's own / (read-only), which "
	       "exposes the host's files to sandboxes (remediation: tools/build-image)\n", why);
	fflush(stdout);
}

/* The agent serve will run: --agent, else the one next to mitos-vmm (as the
 * process engine finds it). -1 when there is none; the engine reports that. */
static int open_agent(const char *agent_path)
{
	char exe[PATH_MAX], p[PATH_MAX + 32];
	if (agent_path)
		return open(agent_path, O_RDONLY | O_CLOEXEC);
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	exe[n > 0 ? n : 0] = 0;
	char *slash = strrchr(exe, '/');
	if (slash)
		*slash = 0;
	static const char *const cands[] = { "/agent/mitos-agent", "/mitos-agent" };
	for (size_t i = 0; i < 2; i++) {
		snprintf(p, sizeof(p), "%s%s", exe, cands[i]);
		int fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd >= 0)
			return fd;
	}
	return -1;
}

int images_cache_dir(char *out, size_t outlen)
{
	const char *cache = getenv("MITOS_CACHE"), *home = getenv("HOME");
	int n;
	if (cache && *cache)
		n = snprintf(out, outlen, "%s", cache);
	else if (home && *home)
		n = snprintf(out, outlen, "%s/.cache/mitos", home);
	else
		return -ENOENT;
	return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* The kvm engine boots IMAGES/current-python/rootfs.ext4 with the image's own agent as
 * init: nothing of the host's agent matters, and without the file only the python
 * template is missing (its creation says how to build it). */
static void init_disk(const char *dir)
{
	char path[PATH_MAX + 64], real[PATH_MAX];
	struct stat st;
	snprintf(path, sizeof(path), "%s/current-python/rootfs.ext4", dir);
	if (realpath(path, real) && !stat(real, &st) && S_ISREG(st.st_mode))
		snprintf(python_disk, sizeof(python_disk), "%s", real);
	if (python_disk[0])
		printf("template image: python = %s\n", python_disk);
	else
		printf("no python image in %s: POST /v1/templates {\"name\": \"python\"} needs one "
		       "(remediation: tools/build-image)\n", dir);
	fflush(stdout);
}

int images_init(const char *dir, const char *agent_path, bool disk, struct mitos_err *e)
{
	bool explicit_dir = dir != NULL;
	char def[PATH_MAX], path[PATH_MAX + 64], real[PATH_MAX];
	if (dir && !strcmp(dir, "none"))
		return 0;
	if (!dir) {
		if (images_cache_dir(def, sizeof(def) - 8)) {
			if (!disk)
				fall_back("neither MITOS_CACHE nor HOME is set, so there is no image directory");
			return 0;
		}
		strcat(def, "/images");
		dir = def;
	}
	if (disk) {
		init_disk(dir);
		return 0;
	}
	snprintf(path, sizeof(path), "%s/current-python/rootfs", dir);
	struct stat st;
	char py[PATH_MAX + 32];
	bool ok = realpath(path, real) && !stat(real, &st) && S_ISDIR(st.st_mode);
	snprintf(py, sizeof(py), "%s/usr/bin/python3", ok ? real : "");
	if (!ok || lstat(py, &st)) {
		if (explicit_dir)
			return mitos_err_set(e, -ENOENT, "engine_unavailable: no python image in %s (remediation: "
					     "tools/build-image --out %s, or --images none for the host's /)", dir,
					     dir);
		char why[PATH_MAX + 64];
		snprintf(why, sizeof(why), "no python image in %.4000s", dir);
		fall_back(why);
		return 0;
	}
	int agent_fd = open_agent(agent_path);
	bool dynamic = agent_fd >= 0 && elf_dynamic(agent_fd);
	if (agent_fd >= 0)
		close(agent_fd);
	if (dynamic) {
		/* The image holds none of the libraries a sanitizer build links. */
		if (explicit_dir)
			return mitos_err_set(e, -ENOEXEC, "engine_unavailable: the mitos-agent binary is dynamically "
					     "linked (a sanitizer build?) and cannot run in the image %s (remediation: "
					     "--agent with the static agent of a plain build, e.g. "
					     "%s/usr/local/bin/mitos-agent)", real, real);
		fall_back("the mitos-agent binary is dynamically linked (a sanitizer build?) and cannot run in "
			  "the python image");
		return 0;
	}
	snprintf(python_root, sizeof(python_root), "%s", real);
	host_root = false;
	return 0;
}
