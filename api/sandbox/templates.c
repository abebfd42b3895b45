#include "api/sandbox/templates.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/engines/images.h"
#include "api/sandbox/net_policy.h"
#include "api/http/uring.h"
#include "api/sandbox/registry.h"
#include "api/sandbox/sandboxes.h"

static const struct engine_ops *eng;
static struct template_rec *templates;
static char tpl_root[1100];

struct template_rec *templates_find(const char *name)
{
	for (struct template_rec *t = templates; t; t = t->next)
		if (!strcmp(t->name, name))
			return t;
	return NULL;
}

struct template_rec *templates_first(void) { return templates; }

/* Read once: E2B asks for every sandbox it lists, and a kvm template's shape is a file. */
int templates_shape(struct template_rec *t, unsigned *cpus, unsigned *mem_mib)
{
	if (!t->shape_mem_mib) {
		int rc = eng->template_shape ? eng->template_shape(t->root, t->spec, &t->shape_cpus, &t->shape_mem_mib)
					     : -ENOTSUP;
		if (rc)
			return rc;
	}
	*cpus = t->shape_cpus;
	*mem_mib = t->shape_mem_mib;
	return 0;
}

cJSON *template_json(const struct template_rec *t)
{
	cJSON *o = cJSON_CreateObject();
	char ts[40];
	cJSON_AddStringToObject(o, "name", t->name);
	cJSON_AddStringToObject(o, "image", t->image);
	cJSON_AddStringToObject(o, "engine", eng->name);
	cJSON_AddStringToObject(o, "root", t->root);
	registry_rfc3339(t->created_ms, ts, sizeof(ts));
	cJSON_AddStringToObject(o, "created_at", ts);
	cJSON_AddStringToObject(o, "state", t->building ? "building" : "ready");
	if (t->spec)
		cJSON_AddItemToObject(o, "spec", cJSON_Duplicate(t->spec, 1));
	if (t->source[0])
		cJSON_AddStringToObject(o, "snapshot_of", t->snap_of);
	return o;
}

/* ---- templates ---- */

static const char *image_root(const char *image)
{
	return images_root(image);
}

struct tpl_waiter {
	tpl_done_fn done;
	void *ctx;
	struct tpl_waiter *next;
};

void tpl_waiter_detach(struct tpl_waiter *w)
{
	if (w)
		w->done = NULL;
}

int template_save(const struct template_rec *t)
{
	cJSON *o = template_json(t);
	cJSON_AddNumberToObject(o, "created_ms", (double)t->created_ms);
	cJSON_AddNumberToObject(o, "build_ms", t->build_ms);
	if (t->source[0]) {
		cJSON_AddStringToObject(o, "snapshot_source", t->source);
		cJSON_AddStringToObject(o, "snapshot_dir", t->snap_dir);
		cJSON_AddBoolToObject(o, "snapshot_named", t->snap_named);
		cJSON_AddStringToObject(o, "snapshot_base", t->snap_base);
	}
	if (t->net)
		cJSON_AddItemToObject(o, "network_policy", net_policy_json(t->net));
	char path[1300];
	snprintf(path, sizeof(path), "%s/%s.json", tpl_root, t->name);
	int rc = registry_write_json(path, o);
	cJSON_Delete(o);
	return rc;
}

void template_forget(const struct template_rec *t)
{
	char path[1300];
	snprintf(path, sizeof(path), "%s/%s.json", tpl_root, t->name);
	unlink(path);
}

void templates_link(struct template_rec *t)
{
	t->next = templates;
	templates = t;
}

void templates_unlink(struct template_rec *t)
{
	for (struct template_rec **pp = &templates; *pp; pp = &(*pp)->next)
		if (*pp == t) {
			*pp = t->next;
			return;
		}
}

void template_free(struct template_rec *t)
{
	for (struct tpl_waiter *w = t->waiters, *n; w; w = n) {
		n = w->next;
		free(w);
	}
	cJSON_Delete(t->spec);
	free(t->net);
	free(t);
}

int templates_set_network(struct template_rec *t, const struct net_policy *p)
{
	struct net_policy *old = t->net;
	t->net = net_policy_dup(p);
	int rc = net_policy_any(p) && !t->net ? -ENOMEM : template_save(t);
	if (rc) {
		free(t->net);
		t->net = old;
		return rc;
	}
	free(old);
	return 0;
}

/* A template's network as its request gave it (checked by the API before). */
static struct net_policy *spec_net(const cJSON *spec)
{
	struct net_policy p;
	if (net_policy_from_mitos(cJSON_GetObjectItemCaseSensitive(spec, "network"), &p))
		return NULL;
	return net_policy_dup(&p);
}

static int tpl_wait(struct template_rec *t, tpl_done_fn done, void *ctx, struct tpl_waiter **wout,
		    struct mitos_err *e)
{
	struct tpl_waiter *w = calloc(1, sizeof(*w));
	if (!w)
		return api_fail(e, -ENOMEM, AE_INTERNAL, "out of memory");
	w->done = done;
	w->ctx = ctx;
	w->next = t->waiters;
	t->waiters = w;
	if (wout)
		*wout = w;
	return 1;
}

/* The engine finished building t (on the loop). */
static void tpl_built(void *ctx, int rc, const char *why)
{
	struct template_rec *t = ctx;
	t->building = false;
	t->build_ms = (double)(ur_wall_ms() - t->created_ms);
	struct tpl_waiter *ws = t->waiters;
	t->waiters = NULL;
	char msg[800];
	if (!rc && (rc = template_save(t)))
		why = "cannot save the template in the state dir";
	if (rc) {
		snprintf(msg, sizeof(msg), "building template %s failed: %s", t->name, why ? why : strerror(-rc));
		fprintf(stderr, "mitos-vmm serve: %s\n", msg);
		template_forget(t);
		eng->cleanup(t->root);
		templates_unlink(t);
	} else {
		printf("template %s: %s\n", t->name, why ? why : "ready");
		fflush(stdout);
	}
	for (struct tpl_waiter *w = ws, *n; w; w = n) {
		n = w->next;
		if (w->done)
			w->done(w->ctx, rc ? AE_ENGINE_UNAVAILABLE : AE_NONE, rc ? msg : NULL, rc ? NULL : t);
		free(w);
	}
	if (rc)
		template_free(t);
}

/* Engines that build templates (kvm): the record exists (state "building") from now on. */
static int template_build(const char *name, const char *image, const cJSON *spec, struct template_rec **out,
			  tpl_done_fn done, void *ctx, struct tpl_waiter **wout, struct mitos_err *e)
{
	struct template_rec *t = calloc(1, sizeof(*t));
	cJSON *sp = spec ? cJSON_Duplicate(spec, 1) : cJSON_CreateObject();
	if (!t || !sp) {
		free(t);
		cJSON_Delete(sp);
		return api_fail(e, -ENOMEM, AE_INTERNAL, "out of memory");
	}
	static const char *not_spec[] = { "name", "image", "template" };
	for (size_t i = 0; i < sizeof(not_spec) / sizeof(not_spec[0]); i++)
		cJSON_DeleteItemFromObjectCaseSensitive(sp, not_spec[i]);
	/* The image names the engine's default guest when the request gives none. */
	cJSON_AddStringToObject(sp, "image", image);
	snprintf(t->name, sizeof(t->name), "%s", name);
	snprintf(t->image, sizeof(t->image), "%.64s", image);
	snprintf(t->root, sizeof(t->root), "%.900s/%s", tpl_root, name);
	t->created_ms = ur_wall_ms();
	t->building = true;
	t->spec = sp;
	t->net = spec_net(spec);
	struct mitos_err be = { 0 };
	int rc = eng->template_build(t->root, sp, tpl_built, t, &be);
	if (rc) {
		template_free(t);
		/* The engine's refusals of the request itself are the client's to fix. */
		bool bad_request = rc == -EINVAL || rc == -ENOENT || rc == -ENAMETOOLONG;
		return api_fail(e, rc, bad_request ? AE_INVALID_ARGUMENT : AE_ENGINE_UNAVAILABLE, "%s",
				be.msg[0] ? be.msg : strerror(-rc));
	}
	templates_link(t);
	template_save(t);
	*out = t;
	return tpl_wait(t, done, ctx, wout, e);
}

int templates_create(const char *name, const char *image, const cJSON *spec, struct template_rec **out,
		     bool *created, tpl_done_fn done, void *ctx, struct tpl_waiter **wout, struct mitos_err *e)
{
	*created = false;
	if (wout)
		*wout = NULL;
	if (!api_valid_id(name))
		return api_fail(e, -EINVAL, AE_INVALID_ARGUMENT,
				"template names match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$");
	if (!image)
		image = name;
	struct template_rec *t = templates_find(name);
	if (t) {
		if (strcmp(t->image, image))
			return api_fail(e, -EEXIST, AE_CONFLICT, "template %s exists with image %s", name, t->image);
		*out = t;
		return t->building ? tpl_wait(t, done, ctx, wout, e) : 0;
	}
	if (eng->template_build) {
		int rc = template_build(name, image, spec, out, done, ctx, wout, e);
		*created = rc >= 0;
		return rc;
	}
	const char *root = image_root(image);
	if (!root)
		return api_fail(e, -ENOENT, AE_INVALID_ARGUMENT, "image '%.64s' is not available on the %s engine "
				"(available: python)", image, eng->name);
	struct mitos_err se = { 0 };
	cJSON *kept = eng->template_spec ? eng->template_spec(spec, &se) : NULL;
	if (eng->template_spec && !kept)
		return api_fail(e, -EINVAL, AE_INVALID_ARGUMENT, "%s", se.msg[0] ? se.msg : "out of memory");
	t = calloc(1, sizeof(*t));
	if (!t) {
		cJSON_Delete(kept);
		return api_fail(e, -ENOMEM, AE_INTERNAL, "out of memory");
	}
	snprintf(t->name, sizeof(t->name), "%s", name);
	snprintf(t->image, sizeof(t->image), "%.64s", image);
	snprintf(t->root, sizeof(t->root), "%s", root);
	t->created_ms = ur_wall_ms();
	t->spec = kept;
	t->net = spec_net(spec);
	int rc = template_save(t);
	if (rc) {
		template_free(t);
		return api_fail(e, rc, AE_INTERNAL, "cannot save the template in the state dir: %s", strerror(-rc));
	}
	templates_link(t);
	*out = t;
	*created = true;
	return 0;
}

static void templates_load(void)
{
	DIR *d = opendir(tpl_root);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name);
		if (n < 6 || strcmp(de->d_name + n - 5, ".json"))
			continue;
		char path[1400];
		snprintf(path, sizeof(path), "%s/%s", tpl_root, de->d_name);
		cJSON *o = registry_read_json(path);
		const char *name = o ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "name")) : NULL;
		const char *image = o ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "image")) : NULL;
		const char *ename = o ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "engine")) : NULL;
		if (o && cJSON_GetObjectItem(o, "snapshot_source")) {
			snapshot_loaded(o, path);
			cJSON_Delete(o);
			continue;
		}
		/* Another engine's templates stay on disk for it. */
		if (ename && strcmp(ename, eng->name)) {
			cJSON_Delete(o);
			continue;
		}
		char built_root[1100] = "";
		const char *root = NULL;
		if (eng->template_build && name && api_valid_id(name) && n == strlen(name) + 5 &&
		    !strncmp(de->d_name, name, n - 5)) {
			snprintf(built_root, sizeof(built_root), "%.900s/%s", tpl_root, name);
			const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(o, "state"));
			if (st && !strcmp(st, "ready") && eng->template_usable(built_root)) {
				root = built_root;
			} else {
				/* Its build never finished (serve stopped during it). */
				fprintf(stderr, "mitos-vmm serve: removing template %s: %s\n", name,
					st && !strcmp(st, "ready") ? "its snapshot is missing" : "it was never completed");
				eng->cleanup(built_root);
				unlink(path);
			}
		} else if (!eng->template_build) {
			root = image ? image_root(image) : NULL;
		}
		if (name && image && root && api_valid_id(name) && !templates_find(name)) {
			struct template_rec *t = calloc(1, sizeof(*t));
			if (t) {
				snprintf(t->name, sizeof(t->name), "%s", name);
				snprintf(t->image, sizeof(t->image), "%.64s", image);
				snprintf(t->root, sizeof(t->root), "%s", root);
				cJSON *cm = cJSON_GetObjectItem(o, "created_ms");
				t->created_ms = cJSON_IsNumber(cm) ? (uint64_t)cm->valuedouble : ur_wall_ms();
				cJSON *bm = cJSON_GetObjectItem(o, "build_ms");
				t->build_ms = cJSON_IsNumber(bm) ? bm->valuedouble : 0;
				cJSON *sp = cJSON_GetObjectItem(o, "spec");
				if (cJSON_IsObject(sp))
					t->spec = cJSON_Duplicate(sp, 1);
				struct net_policy np;
				if (!net_policy_from_json(cJSON_GetObjectItem(o, "network_policy"), &np))
					t->net = net_policy_dup(&np);
				templates_link(t);
			}
		}
		cJSON_Delete(o);
	}
	closedir(d);
	if (!eng->template_build)
		return;
	/* Directories of builds that left no record. */
	d = opendir(tpl_root);
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.' || de->d_type != DT_DIR || templates_find(de->d_name))
			continue;
		char dir[1400];
		snprintf(dir, sizeof(dir), "%s/%s", tpl_root, de->d_name);
		eng->cleanup(dir);
	}
	if (d)
		closedir(d);
}

int templates_init(const struct engine_ops *ops, const char *state, struct mitos_err *e)
{
	eng = ops;
	snprintf(tpl_root, sizeof(tpl_root), "%s/templates", state);
	if (mkdir(tpl_root, 0700) < 0 && errno != EEXIST)
		return mitos_err_set(e, -errno, "cannot create %s: %s", tpl_root, strerror(errno));
	snapshots_init(state);
	templates_load();
	snapshots_sweep();
	return 0;
}

void templates_exit(void)
{
	for (struct template_rec *t = templates, *n; t; t = n) {
		n = t->next;
		template_free(t);
	}
	templates = NULL;
}
