/* Snapshots that outlive their sandbox (E2B's createSnapshot): a template record whose
 * sandboxes start from a copy of one sandbox's state, as a fork's children start from
 * their parent's, on the root of the template that sandbox ran. The engine keeps the
 * copy (engine_ops.snapshot_*: kvm, a layer of the VM's memory and disk; process, the
 * sandbox's disk image or writable layer in STATE/snapshots/DIR). A snapshot is
 * replaced by a newer one of its name only once that is complete, and kept across a
 * restart of serve. */
#include "api/sandbox/sandbox_internal.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/engines/teardown.h"
#include "api/http/uring.h"
#include "api/sandbox/node.h"
#include "api/sandbox/registry.h"
#include "api/sandbox/templates.h"

static char snap_root[1100];

struct snap_take {
	struct template_rec *t;    /* the record, linked once complete */
	char sb_id[ID_MAX + 1];
	uint64_t sb_created_ms;    /* which sandbox of that id */
	bool held;                 /* a copy hold of the sandbox (sb_copy_hold) */
	snap_done_fn done;
	void *ctx;
	struct snap_take *next;
};

static struct snap_take *takes;

void snap_take_detach(struct snap_take *st)
{
	if (st)
		st->done = NULL;
}

static struct snap_take *take_of(const char *name)
{
	for (struct snap_take *st = takes; st; st = st->next)
		if (!strcmp(st->t->name, name))
			return st;
	return NULL;
}

/* Gives up a snapshot's copy and its directory (its sandboxes keep theirs). */
static void snap_remove(struct template_rec *t)
{
	if (t->source[0])
		sb_eng->snapshot_drop(t->source);
	if (t->snap_dir[0])
		teardown_tree(t->snap_dir, NULL);
	template_free(t);
}

static void taken(void *ctx, int rc)
{
	struct snap_take *st = ctx;
	for (struct snap_take **pp = &takes; *pp; pp = &(*pp)->next)
		if (*pp == st) {
			*pp = st->next;
			break;
		}
	struct sandbox *sb = sandbox_find(st->sb_id);
	if (sb && sb->created_ms == st->sb_created_ms) {
		sb->ctl_busy = false;
		if (st->held)
			sb_copy_release(sb);
	}
	struct template_rec *t = st->t;
	t->building = false;
	t->build_ms = (double)(ur_wall_ms() - t->created_ms);
	char msg[300] = "";
	if (!rc && (rc = template_save(t)))
		snprintf(msg, sizeof(msg), "cannot save the snapshot's record in the state dir: %s", strerror(-rc));
	else if (rc)
		snprintf(msg, sizeof(msg), "the engine could not write it (serve's log says why)");
	if (rc) {
		if (st->done)
			st->done(st->ctx, rc == -ENOSPC ? AE_LIMIT_EXCEEDED : AE_INTERNAL, msg, NULL);
		snap_remove(t);
		free(st);
		return;
	}
	struct template_rec *old = templates_find(t->name);
	if (old) {
		templates_unlink(old);
		snap_remove(old);
	}
	templates_link(t);
	printf("snapshot %s of sandbox %s: ready in %.0f ms\n", t->name, t->snap_of, t->build_ms);
	fflush(stdout);
	if (st->done)
		st->done(st->ctx, AE_NONE, NULL, t);
	free(st);
}

int snapshots_take(struct sandbox *sb, const char *name, bool named, snap_done_fn done, void *ctx, struct snap_take **out,
		   struct mitos_err *e)
{
	*out = NULL;
	if (!sb_eng->snapshot_take)
		return api_fail(e, -ENOTSUP, AE_UNIMPLEMENTED, "the %s engine keeps no snapshots", sb_eng->name);
	if (!api_valid_id(name))
		return api_fail(e, -EINVAL, AE_INVALID_ARGUMENT, "snapshot names match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$");
	/* On a cluster node the name carries its tag, as a sandbox id does: a router sends
	 * the sandboxes started from it here. */
	char tagged[ID_MAX + 1];
	if (node_sandbox_id_for(name, tagged, sizeof(tagged)))
		return api_fail(e, -EINVAL, AE_INVALID_ARGUMENT, "snapshot name %.64s is too long to carry this node's "
				"tag -%s: at most 64 characters in all", name, node_tag());
	name = tagged;
	const struct template_rec *old = templates_find(name);
	if (old && !old->source[0])
		return api_fail(e, -EEXIST, AE_CONFLICT, "%s names a template, not a snapshot", name);
	if (take_of(name))
		return api_fail(e, -EBUSY, AE_CONFLICT, "a snapshot named %s is being taken", name);
	if (sb->state != SB_RUNNING && sb->state != SB_PAUSED)
		return api_fail(e, -EBUSY, AE_SANDBOX_NOT_RUNNING, "sandbox %s is %s", sb->id, state_name(sb->state));
	if (sb->ctl_busy)
		return api_fail(e, -EBUSY, AE_CONFLICT, "sandbox %s is being paused, resumed or snapshotted", sb->id);
	const struct template_rec *base = templates_find(sb->template_name);
	if (!base)
		return api_fail(e, -ENOENT, AE_INTERNAL, "the template of sandbox %s is gone", sb->id);
	struct snap_take *st = calloc(1, sizeof(*st));
	struct template_rec *t = calloc(1, sizeof(*t));
	if (!st || !t) {
		free(st);
		free(t);
		return api_fail(e, -ENOMEM, AE_INTERNAL, "out of memory");
	}
	static unsigned serial;
	snprintf(t->name, sizeof(t->name), "%s", name);
	snprintf(t->image, sizeof(t->image), "%s", base->image);
	snprintf(t->root, sizeof(t->root), "%s", base->root);
	snprintf(t->snap_of, sizeof(t->snap_of), "%s", sb->id);
	snprintf(t->snap_base, sizeof(t->snap_base), "%s", base->source[0] ? base->snap_base : base->name);
	t->snap_named = named;
	t->spec = base->spec ? cJSON_Duplicate(base->spec, 1) : NULL;
	t->created_ms = ur_wall_ms();
	t->building = true;
	snprintf(t->snap_dir, sizeof(t->snap_dir), "%.900s/%s-%d-%u", snap_root, name, (int)getpid(), ++serial);
	int rc = mkdir(t->snap_dir, 0700) < 0 ? -errno : 0;
	if (rc) {
		api_fail(e, rc, AE_INTERNAL, "cannot create %s: %s", t->snap_dir, strerror(-rc));
		t->snap_dir[0] = 0;
		goto fail;
	}
	/* An engine that copies files needs them still (fork_source: it pauses by itself). */
	if (!sb_eng->fork_source && (rc = sb_copy_hold(sb)) < 0) {
		api_fail(e, rc, AE_INTERNAL, "cannot pause sandbox %s for its snapshot: %s", sb->id, strerror(-rc));
		goto fail;
	}
	st->held = rc == 1;
	struct mitos_err ee = { 0 };
	rc = sb_eng->snapshot_take(sb->dir, &sb->proc, t->snap_dir, t->source, sizeof(t->source), taken, st, &ee);
	if (rc) {
		t->source[0] = 0;
		if (st->held)
			sb_copy_release(sb);
		api_fail(e, rc, AE_ENGINE_UNAVAILABLE, "cannot snapshot sandbox %s: %s", sb->id, ee.msg);
		goto fail;
	}
	sb->ctl_busy = true;
	st->t = t;
	snprintf(st->sb_id, sizeof(st->sb_id), "%s", sb->id);
	st->sb_created_ms = sb->created_ms;
	st->done = done;
	st->ctx = ctx;
	st->next = takes;
	takes = st;
	*out = st;
	return 0;
fail:
	snap_remove(t);
	free(st);
	return rc;
}

struct template_rec *snapshots_find(const char *name)
{
	struct template_rec *t = templates_find(name);
	char tagged[ID_MAX + 1];
	if (!t && !node_sandbox_id_for(name, tagged, sizeof(tagged)) && (t = templates_find(tagged)) && !t->source[0])
		t = NULL;
	return t;
}

int snapshots_delete(const char *name, struct mitos_err *e)
{
	struct template_rec *t = snapshots_find(name);
	if (!t)
		return api_fail(e, -ENOENT, AE_NOT_FOUND, "no snapshot %s", name);
	if (!t->source[0])
		return api_fail(e, -EINVAL, AE_INVALID_ARGUMENT, "%s is a template, not a snapshot: only snapshots are "
				"deleted here", name);
	if (take_of(t->name))
		return api_fail(e, -EBUSY, AE_CONFLICT, "a snapshot named %s is being taken", t->name);
	/* What its sandboxes need of a template (root, limits; a fork, the shape) is the
	 * template's under it. */
	for (struct sandbox *sb = sandboxes_first(); sb; sb = sb->next)
		if (!strcmp(sb->template_name, t->name)) {
			snprintf(sb->template_name, sizeof(sb->template_name), "%s", t->snap_base);
			sb_save(sb);
		}
	templates_unlink(t);
	template_forget(t);
	snap_remove(t);
	return 0;
}

/* One record of STATE/templates with a snapshot_source: held again, or removed. */
static void load_one(cJSON *o, const char *path)
{
	const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(o, "name"));
	const char *image = cJSON_GetStringValue(cJSON_GetObjectItem(o, "image"));
	const char *root = cJSON_GetStringValue(cJSON_GetObjectItem(o, "root"));
	const char *src = cJSON_GetStringValue(cJSON_GetObjectItem(o, "snapshot_source"));
	const char *dir = cJSON_GetStringValue(cJSON_GetObjectItem(o, "snapshot_dir"));
	const char *of = cJSON_GetStringValue(cJSON_GetObjectItem(o, "snapshot_of"));
	const char *under = cJSON_GetStringValue(cJSON_GetObjectItem(o, "snapshot_base"));
	const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(o, "state"));
	size_t nr = strlen(snap_root);
	bool ok = name && image && root && src && dir && of && under && api_valid_id(name) && api_valid_id(under) &&
		  strlen(image) <= ID_MAX &&
		  strlen(root) < sizeof(((struct template_rec *)0)->root) && strlen(src) < 1100 &&
		  strlen(of) <= ID_MAX && !strncmp(dir, snap_root, nr) && dir[nr] == '/' && strlen(dir) < 1100 &&
		  st && !strcmp(st, "ready") && !templates_find(name);
	int rc = ok ? sb_eng->snapshot_keep(src) : -EINVAL;
	struct template_rec *t = rc ? NULL : calloc(1, sizeof(*t));
	if (!t) {
		fprintf(stderr, "mitos-vmm serve: removing snapshot %s: %s\n", name ? name : path,
			rc == -EINVAL ? "its record is incomplete" : "what it was taken into is gone");
		if (!rc)
			sb_eng->snapshot_drop(src);
		unlink(path);
		return;
	}
	snprintf(t->name, sizeof(t->name), "%s", name);
	snprintf(t->image, sizeof(t->image), "%s", image);
	snprintf(t->root, sizeof(t->root), "%s", root);
	snprintf(t->source, sizeof(t->source), "%s", src);
	snprintf(t->snap_dir, sizeof(t->snap_dir), "%s", dir);
	snprintf(t->snap_of, sizeof(t->snap_of), "%s", of);
	snprintf(t->snap_base, sizeof(t->snap_base), "%s", under);
	t->snap_named = cJSON_IsTrue(cJSON_GetObjectItem(o, "snapshot_named"));
	cJSON *cm = cJSON_GetObjectItem(o, "created_ms"), *bm = cJSON_GetObjectItem(o, "build_ms");
	cJSON *sp = cJSON_GetObjectItem(o, "spec");
	t->created_ms = cJSON_IsNumber(cm) ? (uint64_t)cm->valuedouble : ur_wall_ms();
	t->build_ms = cJSON_IsNumber(bm) ? bm->valuedouble : 0;
	t->spec = cJSON_IsObject(sp) ? cJSON_Duplicate(sp, 1) : NULL;
	templates_link(t);
}

/* The directories of another engine's snapshots, found at start: they stay on disk for
 * it, as its templates do. */
static cJSON *others;

void snapshots_init(const char *state)
{
	snprintf(snap_root, sizeof(snap_root), "%.1000s/snapshots", state);
	mkdir(snap_root, 0700);
	others = cJSON_CreateObject();
}

void snapshot_loaded(cJSON *o, const char *path)
{
	const char *ename = cJSON_GetStringValue(cJSON_GetObjectItem(o, "engine"));
	const char *dir = cJSON_GetStringValue(cJSON_GetObjectItem(o, "snapshot_dir"));
	if (ename && !strcmp(ename, sb_eng->name))
		load_one(o, path);
	else if (dir && others)
		cJSON_AddTrueToObject(others, dir);
}

void snapshots_sweep(void)
{
	if (!others)
		return;
	for (struct template_rec *t = templates_first(); t; t = t->next)
		if (t->snap_dir[0])
			cJSON_AddTrueToObject(others, t->snap_dir);
	/* What no record names: a take cut short by the end of serve. */
	DIR *d = opendir(snap_root);
	struct dirent *de;
	char path[1500];
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", snap_root, de->d_name);
		if (!cJSON_GetObjectItemCaseSensitive(others, path))
			teardown_tree(path, NULL);
	}
	if (d)
		closedir(d);
	cJSON_Delete(others);
	others = NULL;
}
