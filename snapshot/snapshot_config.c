#include "snapshot_config.h"
#include "snapshot_open.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONFIG_MAX (64 * 1024)

static int config_path(const char *dir, char *path, size_t len)
{
	return snprintf(path, len, "%s/%s", dir, SNAPSHOT_CONFIG_NAME) >= (int)len ? -ENAMETOOLONG : 0;
}

int snapshot_config_write(const char *dir, const struct snapshot_config *c, struct mitos_err *e)
{
	char path[PATH_MAX];
	if (config_path(dir, path, sizeof(path)))
		return mitos_err_set(e, -ENAMETOOLONG, "%s: path too long", dir);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "format", SNAPSHOT_FORMAT);
	cJSON_AddNumberToObject(o, "mem_bytes", (double)c->mem_bytes);
	cJSON_AddNumberToObject(o, "vcpus", c->vcpus);
	cJSON_AddStringToObject(o, "cmdline", c->cmdline ? c->cmdline : "");
	cJSON *disks = cJSON_AddArrayToObject(o, "disks");
	for (unsigned i = 0; i < c->ndisks; i++) {
		cJSON *d = cJSON_CreateObject();
		cJSON_AddStringToObject(d, "path", c->disks[i].path);
		cJSON_AddBoolToObject(d, "read_only", c->disks[i].read_only);
		cJSON_AddNumberToObject(d, "bytes", (double)c->disks[i].bytes);
		cJSON_AddItemToArray(disks, d);
	}
	if (c->has_vsock) {
		cJSON *v = cJSON_AddObjectToObject(o, "vsock");
		cJSON_AddNumberToObject(v, "cid", c->vsock_cid);
	}
	cJSON_AddBoolToObject(o, "net", c->has_net);
	if (c->parent)
		cJSON_AddStringToObject(o, "parent", c->parent);
	else
		cJSON_AddNullToObject(o, "parent");
	cJSON_AddNumberToObject(o, "depth", c->depth);
	char *text = cJSON_Print(o);
	cJSON_Delete(o);
	if (!text)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	/* config.json marks the snapshot complete: it appears whole (tmp + rename) and
	 * lasts (the directory is synced), or not at all. */
	char tmp[PATH_MAX + 8];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
	int r = fd < 0 ? -errno : 0;
	size_t len = strlen(text);
	if (!r && write(fd, text, len) != (ssize_t)len)
		r = -EIO;
	if (!r && (write(fd, "\n", 1) != 1 || fsync(fd)))
		r = -EIO;
	if (fd >= 0)
		close(fd);
	free(text);
	if (!r && rename(tmp, path))
		r = -errno;
	int dfd = r ? -1 : open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (!r && (dfd < 0 || fsync(dfd)))
		r = -errno;
	if (dfd >= 0)
		close(dfd);
	if (r)
		unlink(tmp);
	return r ? mitos_err_set(e, r, "%s: %s", path, strerror(-r)) : 0;
}

static const cJSON *field(const cJSON *o, const char *name, int type)
{
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
	return f && (f->type & 0xff) == type ? f : NULL;
}

static int number(const char *name, const cJSON *o, const char *key, double min, double max,
		  double *out, struct mitos_err *e)
{
	const cJSON *f = field(o, key, cJSON_Number);
	if (!f || f->valuedouble < min || f->valuedouble > max || f->valuedouble != (double)(uint64_t)f->valuedouble)
		return mitos_err_set(e, -EINVAL, "%s: \"%s\" missing or not an integer in [%.0f, %.0f]",
				     name, key, min, max);
	*out = f->valuedouble;
	return 0;
}

int snapshot_config_parse(const char *name, const char *text, struct snapshot_config *c,
			  struct mitos_err *e)
{
	memset(c, 0, sizeof(*c));
	cJSON *o = cJSON_Parse(text);
	if (!o || !cJSON_IsObject(o)) {
		cJSON_Delete(o);
		return mitos_err_set(e, -EINVAL, "%s: not valid JSON", name);
	}
	double v;
	int r;
	if ((r = number(name, o, "format", 0, 1e9, &v, e)))
		goto out;
	if (v != SNAPSHOT_FORMAT) {
		r = mitos_err_set(e, -EINVAL, "%s: format %.0f, this mitos-vmm reads format %d", name, v,
				  SNAPSHOT_FORMAT);
		goto out;
	}
	if ((r = number(name, o, "mem_bytes", 4096, (double)(1ULL << 50), &v, e)))
		goto out;
	c->mem_bytes = (uint64_t)v;
	if (c->mem_bytes % 4096) {
		r = mitos_err_set(e, -EINVAL, "%s: mem_bytes is not a multiple of 4096", name);
		goto out;
	}
	if ((r = number(name, o, "vcpus", 1, 64, &v, e)))
		goto out;
	c->vcpus = (unsigned)v;
	if ((r = number(name, o, "depth", 0, SNAPSHOT_MAX_DEPTH, &v, e)))
		goto out;
	c->depth = (unsigned)v;
	const cJSON *s = field(o, "cmdline", cJSON_String);
	if (!s) {
		r = mitos_err_set(e, -EINVAL, "%s: \"cmdline\" missing", name);
		goto out;
	}
	c->cmdline = strdup(s->valuestring);
	const cJSON *disks = field(o, "disks", cJSON_Array), *d;
	if (!disks || cJSON_GetArraySize(disks) > SNAPSHOT_MAX_DISKS) {
		r = mitos_err_set(e, -EINVAL, "%s: \"disks\" missing or more than %d", name,
				  SNAPSHOT_MAX_DISKS);
		goto out;
	}
	cJSON_ArrayForEach(d, disks) {
		const cJSON *p = field(d, "path", cJSON_String);
		const cJSON *ro = cJSON_GetObjectItemCaseSensitive(d, "read_only");
		if (!p || !cJSON_IsBool(ro)) {
			r = mitos_err_set(e, -EINVAL, "%s: disk %u lacks path or read_only", name, c->ndisks);
			goto out;
		}
		if ((r = number(name, d, "bytes", 0, (double)(1ULL << 53), &v, e)))
			goto out;
		c->disks[c->ndisks].bytes = (uint64_t)v;
		c->disks[c->ndisks].path = strdup(p->valuestring);
		c->disks[c->ndisks++].read_only = cJSON_IsTrue(ro);
	}
	const cJSON *vs = field(o, "vsock", cJSON_Object);
	if (vs) {
		if ((r = number(name, vs, "cid", 3, 0xfffffffe, &v, e)))
			goto out;
		c->has_vsock = true;
		c->vsock_cid = (uint32_t)v;
	}
	c->has_net = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "net"));
	const cJSON *parent = cJSON_GetObjectItemCaseSensitive(o, "parent");
	if (cJSON_IsString(parent)) {
		if (parent->valuestring[0] != '/' || c->depth == 0) {
			r = mitos_err_set(e, -EINVAL, "%s: \"parent\" must be an absolute path, with depth > 0",
					  name);
			goto out;
		}
		c->parent = strdup(parent->valuestring);
	} else if (!cJSON_IsNull(parent) || c->depth != 0) {
		r = mitos_err_set(e, -EINVAL, "%s: \"parent\" must be a path, or null with depth 0", name);
		goto out;
	}
out:
	cJSON_Delete(o);
	if (r)
		snapshot_config_free(c);
	return r;
}

int snapshot_config_read(const char *dir, struct snapshot_config *c, struct mitos_err *e)
{
	char path[PATH_MAX];
	if (config_path(dir, path, sizeof(path)))
		return mitos_err_set(e, -ENAMETOOLONG, "%s: path too long", dir);
	int fd = snapshot_open_read(path);
	if (fd < 0)
		return mitos_err_set(e, fd, "%s: %s%s", path, fd == -EINVAL ? "not a regular file" : strerror(-fd),
				     fd == -ENOENT ? " (not a snapshot directory?)" : "");
	char *buf = malloc(CONFIG_MAX + 1);
	ssize_t n = buf ? read(fd, buf, CONFIG_MAX + 1) : -1;
	close(fd);
	int r;
	if (n < 0 || n > CONFIG_MAX)
		r = mitos_err_set(e, -EINVAL, "%s: unreadable or larger than %d bytes", path, CONFIG_MAX);
	else {
		buf[n] = '\0';
		r = snapshot_config_parse(path, buf, c, e);
	}
	free(buf);
	return r;
}

void snapshot_config_free(struct snapshot_config *c)
{
	free(c->cmdline);
	free(c->parent);
	for (unsigned i = 0; i < c->ndisks; i++)
		free(c->disks[i].path);
	memset(c, 0, sizeof(*c));
}

void snapshot_chain_free(char **dirs, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		free(dirs[i]);
	free(dirs);
}

int snapshot_chain(const char *dir, char ***dirs_out, unsigned *n_out, struct mitos_err *e)
{
	char **dirs = calloc(SNAPSHOT_MAX_DEPTH + 1, sizeof(char *));
	if (!dirs)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	unsigned n = 0;
	struct snapshot_config top = { 0 }, cur;
	char *at = realpath(dir, NULL);
	int r = at ? 0 : mitos_err_set(e, -errno, "%s: %s", dir, strerror(errno));
	/* Walk from the top layer down to the base; depths must count down by one, which
	 * also rules out loops. */
	while (!r) {
		if ((r = snapshot_config_read(at, &cur, e)))
			break;
		if (n == 0)
			top = cur;
		else if (cur.mem_bytes != top.mem_bytes || cur.vcpus != top.vcpus ||
			 cur.depth != top.depth - n)
			r = mitos_err_set(e, -EINVAL, "%s: parent of a layer does not match it (RAM, "
					  "vCPUs or depth differ)", at);
		dirs[n++] = at;
		at = NULL;
		if (!r && cur.parent)
			at = strdup(cur.parent);
		if (n > 1)
			snapshot_config_free(&cur);
		if (r || !at)
			break;
		if (n > SNAPSHOT_MAX_DEPTH)
			r = mitos_err_set(e, -ELOOP, "%s: more than %d layers", dir, SNAPSHOT_MAX_DEPTH);
	}
	free(at);
	if (!r && top.depth != n - 1)
		r = mitos_err_set(e, -EINVAL, "%s: depth %u but %u layers found", dir, top.depth, n);
	snapshot_config_free(&top);
	if (r) {
		snapshot_chain_free(dirs, n);
		return r;
	}
	/* Base first. */
	for (unsigned i = 0; i < n / 2; i++) {
		char *t = dirs[i];
		dirs[i] = dirs[n - 1 - i];
		dirs[n - 1 - i] = t;
	}
	*dirs_out = dirs;
	*n_out = n;
	return 0;
}
