/* Templates of the same build share one snapshot. Two template names built from the
 * same guest files, shape, spec and warm-up would boot, warm and snapshot the same
 * guest twice (minutes under emulation-only KVM, seconds on hardware) and hold two
 * copies of its memory in the page cache. The second one hard-links the first's
 * snapshot files instead: children restore from either exactly as from a snapshot of
 * their own (a snapshot names no directory of its own, and every child is made unique
 * after its restore: post_fork, VMGenID), and removing one template's directory
 * leaves the other's links. */
#include "api/engines/kvm_internal.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/sandbox/registry.h"
#include "api/sandbox/template_hash.h"

/* A file as it is now: a disk or kernel rebuilt in place is another build. */
static bool add_identity(cJSON *o, const char *key, const char *path)
{
	struct stat st;
	char id[128] = "";
	if (path[0] && !stat(path, &st))
		snprintf(id, sizeof(id), "%llu:%llu:%lld:%lld.%09ld", (unsigned long long)st.st_dev,
			 (unsigned long long)st.st_ino, (long long)st.st_size, (long long)st.st_mtim.tv_sec,
			 st.st_mtim.tv_nsec);
	return cJSON_AddStringToObject(o, key, id) != NULL;
}

int kvm_build_key(const cJSON *kvm, const cJSON *spec, const char *warm, char *out)
{
	out[0] = 0;
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return -ENOMEM;
	static const char *const files[] = { "kernel", "rootfs", "initrd" };
	char key[32];
	/* A key missing a part could match another build's: none, then. */
	bool whole = true;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		const char *p = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(kvm, files[i]));
		snprintf(key, sizeof(key), "%s_file", files[i]);
		whole = whole && add_identity(o, key, p ? p : "");
	}
	whole = whole && cJSON_AddItemToObject(o, "kvm", cJSON_Duplicate(kvm, 1)) &&
		cJSON_AddItemToObject(o, "spec", spec ? cJSON_Duplicate(spec, 1) : cJSON_CreateObject()) &&
		cJSON_AddStringToObject(o, "warm", warm);
	if (whole)
		json_digest_hex(o, out);
	cJSON_Delete(o);
	return out[0] ? 0 : -ENOMEM;
}

bool kvm_share_donor(const char *dir, const char *key, char *donor, size_t n)
{
	char parent[PLEN];
	if (!key[0] || kvm_pathf(parent, "%s", dir))
		return false;
	char *slash = strrchr(parent, '/');
	if (!slash || slash == parent)
		return false;
	*slash = 0;
	DIR *d = opendir(parent);
	struct dirent *de;
	bool found = false;
	while (d && !found && (de = readdir(d))) {
		char other[PLEN], p[PLEN];
		if (de->d_name[0] == '.' || de->d_type != DT_DIR || kvm_pathf(other, "%s/%s", parent, de->d_name) ||
		    !strcmp(other, dir) || kvm_building(other) || kvm_pathf(p, "%s/kvm.json", other))
			continue;
		cJSON *o = registry_read_json(p);
		const char *k = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "build_key"));
		found = k && !strcmp(k, key) && !kvm_pathf(p, "%s/snapshot/config.json", other) && !access(p, R_OK) &&
			(size_t)snprintf(donor, n, "%s", other) < n;
		cJSON_Delete(o);
	}
	if (d)
		closedir(d);
	return found;
}

int kvm_share_link(const char *from, const char *to, struct mitos_err *e)
{
	/* Made under another name and renamed whole: a half-linked snapshot is never one
	 * a later template could take (kvm_share_donor looks for its config.json). */
	char tmp[PLEN];
	if (kvm_pathf(tmp, "%s.new", to))
		return mitos_err_set(e, -ENAMETOOLONG, "the template's path is too long");
	int sfd = open(from, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), dfd = -1, rc = 0;
	if (sfd < 0 || mkdir(tmp, 0755) < 0 || (dfd = open(tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
		rc = -errno;
	DIR *d = rc ? NULL : fdopendir(dup(sfd));
	if (!rc && !d)
		rc = -errno;
	struct dirent *de;
	while (!rc && (de = readdir(d))) {
		struct stat st;
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		/* A snapshot is regular files only (the jail's seal checked that); config.json
		 * went in last there, so a missing one here means no snapshot. */
		if (fstatat(sfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			rc = -errno;
		else if (!S_ISREG(st.st_mode))
			rc = -EPERM;
		else if (linkat(sfd, de->d_name, dfd, de->d_name, 0) < 0)
			rc = -errno;
	}
	if (d)
		closedir(d);
	if (!rc && faccessat(dfd, "config.json", R_OK, 0) < 0)
		rc = -errno;
	if (!rc)
		fsync(dfd);
	if (sfd >= 0)
		close(sfd);
	if (dfd >= 0)
		close(dfd);
	if (rc)
		return mitos_err_set(e, rc, "cannot share the snapshot %.300s: %s", from, strerror(-rc));
	if (K.jail && (rc = jail_seal(tmp, e)))
		return rc;
	if (rename(tmp, to) < 0)
		return mitos_err_set(e, -errno, "cannot move the shared snapshot into %.300s: %s", to, strerror(errno));
	return 0;
}
