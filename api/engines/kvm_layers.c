/* Layers: what a fork of a running sandbox is restored from (STATE/kvm/layers/N, the
 * pages its VM changed since its own restore), reference-counted by the sandboxes
 * restored from them and by their child layers; and the job that writes one. */
#include "api/engines/kvm_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/sandbox/registry.h"
#include "vmm/control.h"

struct kvm_layer *kvm_layer_find(const char *dir)
{
	for (struct kvm_layer *l = K.layers; l; l = l->next)
		if (!strcmp(l->dir, dir))
			return l;
	return NULL;
}

/* A layer's directory: one name right under STATE/kvm/layers, never a way out of it. */
bool kvm_in_layer_dir(const char *dir)
{
	size_t n = strlen(K.layer_dir);
	const char *name = dir + n + 1;
	return !strncmp(dir, K.layer_dir, n) && dir[n] == '/' && *name && !strchr(name, '/') &&
	       strcmp(name, ".") && strcmp(name, "..");
}

/* serve's own record of a layer's parent, written once the layer is sealed (the VM
 * can then add nothing to the directory): the chain a later serve adopts. The VM's
 * config.json names a parent too, but what a VM wrote decides nothing here. */
#define LAYER_RECORD "layer.json"

static int layer_record_write(const struct kvm_layer *l, struct mitos_err *e)
{
	char path[PLEN];
	if (kvm_pathf(path, "%s/" LAYER_RECORD, l->dir))
		return mitos_err_set(e, -ENAMETOOLONG, "the layer's path is too long");
	cJSON *o = cJSON_CreateObject();
	if (l->parent)
		cJSON_AddStringToObject(o, "parent", l->parent->dir);
	char *text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	/* O_EXCL: a file of that name can only be the VM's, left before the seal. */
	int fd = text ? open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444) : -1;
	int rc = fd < 0 ? -errno : write(fd, text, strlen(text)) == (ssize_t)strlen(text) ? 0 : -EIO;
	if (fd >= 0 && close(fd) < 0 && !rc)
		rc = -errno;
	free(text);
	if (rc)
		mitos_err_set(e, rc, "cannot record the layer %.300s%s: %s", l->dir,
			      rc == -EEXIST ? " (its VM left a file of serve's record's name)" : "", strerror(-rc));
	return rc;
}

/* The parent a layer was made on: serve's record, or, for a layer from before it, the
 * VM's config.json, taken only when it names a layer's directory. */
static char *layer_parent(const char *dir)
{
	char path[PLEN];
	cJSON *o = kvm_pathf(path, "%s/" LAYER_RECORD, dir) ? NULL : registry_read_json(path);
	if (!o && !kvm_pathf(path, "%s/config.json", dir))
		o = registry_read_json(path);
	const char *parent = cJSON_GetStringValue(cJSON_GetObjectItem(o, "parent"));
	char *out = parent && kvm_in_layer_dir(parent) ? strdup(parent) : NULL;
	cJSON_Delete(o);
	return out;
}

static struct kvm_layer *layer_new(const char *dir, struct kvm_layer *parent, int state)
{
	struct kvm_layer *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
	l->state = state;
	l->refs = 1;
	l->parent = parent;
	if (parent)
		parent->refs++;
	snprintf(l->dir, sizeof(l->dir), "%s", dir);
	l->next = K.layers;
	K.layers = l;
	return l;
}

void kvm_layer_unref(struct kvm_layer *l)
{
	while (l && --l->refs == 0) {
		struct kvm_layer *parent = l->parent;
		for (struct kvm_layer **pp = &K.layers; *pp; pp = &(*pp)->next)
			if (*pp == l) {
				*pp = l->next;
				break;
			}
		teardown_tree(l->dir, NULL);
		pthread_mutex_destroy(&l->mu);
		pthread_cond_destroy(&l->cv);
		free(l);
		l = parent;
	}
}

struct kvm_layer *kvm_layer_adopt(const char *dir, unsigned depth)
{
	if (!kvm_in_layer_dir(dir) || depth > 64)
		return NULL;
	struct kvm_layer *l = kvm_layer_find(dir);
	if (l) {
		l->refs++;
		return l;
	}
	char *parent = layer_parent(dir);
	struct kvm_layer *pl = parent ? kvm_layer_adopt(parent, depth + 1) : NULL;
	free(parent);
	l = layer_new(dir, pl, 0);
	if (pl)
		kvm_layer_unref(pl); /* layer_new took its own */
	return l;
}

int kvm_layer_wait(struct kvm_layer *l, struct mitos_err *e)
{
	pthread_mutex_lock(&l->mu);
	while (l->state == 1 && !K.stopping) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&l->cv, &l->mu, &ts);
	}
	int st = l->state == 1 ? -ESHUTDOWN : l->state;
	if (st)
		mitos_err_set(e, st, "the parent's snapshot failed: %s", l->err.msg[0] ? l->err.msg : strerror(-st));
	pthread_mutex_unlock(&l->mu);
	return st;
}

struct snap_job {
	struct kjob k;
	struct kvm_layer *layer;
	engine_done_fn done;  /* a snapshot's, or NULL */
	void *ctx;
	pid_t pid;
	int pidfd;          /* with K.jail: the parent's VM process, -1 otherwise */
	char control[PLEN];
};

/* A jailed VM writes its layer in a directory serve makes for it, its uid's, mounted
 * into its root. */
static int layer_dir_for_jail(const struct snap_job *j, struct mitos_err *e)
{
	char proc[64];
	struct stat st;
	snprintf(proc, sizeof(proc), "/proc/%d", (int)j->pid);
	struct jail more;
	more.n = 0;
	int rc = stat(proc, &st) < 0 || pidfd_exited(j->pidfd) ? -ESRCH : 0;
	if (!rc && mkdir(j->layer->dir, 0700) < 0)
		rc = -errno;
	if (!rc && chown(j->layer->dir, st.st_uid, st.st_gid) < 0)
		rc = -errno;
	if (!rc)
		rc = jail_add(&more, j->layer->dir, true);
	if (rc)
		return mitos_err_set(e, rc, "cannot make the layer %.300s for the VM: %s", j->layer->dir,
				     strerror(-rc));
	return jail_bind_more(j->pidfd, &more, e);
}

static void snap_run(struct kjob *kj)
{
	struct snap_job *j = (struct snap_job *)kj;
	struct mitos_err e = { 0 };
	struct ctl_request req = { .cmd = CTL_SNAPSHOT, .dir = j->layer->dir };
	int rc = j->pidfd >= 0 ? layer_dir_for_jail(j, &e) : 0;
	if (!rc)
		rc = kvm_ctl_request(j->control, &req, NULL, SNAPSHOT_TIMEOUT_MS, 0, -1, &e);
	/* What children map is root's and read-only from here on. */
	if (!rc && j->pidfd >= 0)
		rc = jail_seal(j->layer->dir, &e);
	if (!rc)
		rc = layer_record_write(j->layer, &e);
	pthread_mutex_lock(&j->layer->mu);
	j->layer->state = rc;
	j->layer->err = e;
	pthread_cond_broadcast(&j->layer->cv);
	pthread_mutex_unlock(&j->layer->mu);
}

static void snap_complete(struct kjob *kj)
{
	struct snap_job *j = (struct snap_job *)kj;
	if (j->pidfd >= 0)
		close(j->pidfd);
	if (j->done) {
		if (j->layer->state)
			fprintf(stderr, "mitos-vmm serve: a snapshot's layer failed: %s\n", j->layer->err.msg);
		j->done(j->ctx, j->layer->state);
	}
	kvm_layer_unref(j->layer);
	free(j);
}

static int layer_snapshot(const char *dir, const struct engine_proc *p, char *out, size_t outlen,
			  engine_done_fn done, void *ctx, struct mitos_err *e)
{
	struct kvm_sb *ksb = p->priv;
	struct snap_job *j = calloc(1, sizeof(*j));
	char ldir[PLEN];
	int rc = !ksb || !j ? -ENOMEM : 0;
	if (!rc && (kvm_pathf(j->control, "%s/control", dir) ||
		    kvm_pathf(ldir, "%s/%d-%u", K.layer_dir, (int)getpid(), ++K.serial) || strlen(ldir) >= outlen))
		rc = -ENAMETOOLONG;
	if (!rc && !(j->layer = layer_new(ldir, ksb->base, 1)))
		rc = -ENOMEM;
	if (rc) {
		free(j);
		return mitos_err_set(e, rc, "cannot prepare a layer for the fork: %s", strerror(-rc));
	}
	j->pidfd = K.jail ? fcntl(p->pidfd, F_DUPFD_CLOEXEC, 3) : -1;
	j->pid = p->pid;
	j->done = done;
	j->ctx = ctx;
	/* The VMM pauses the parent while it writes the pages it changed, and resumes it. */
	j->k.run = snap_run;
	j->k.complete = snap_complete;
	kvm_submit(&j->k, LANE_VM);
	strcpy(out, ldir);
	return 0;
}

int kvm_fork_source(const char *dir, const struct engine_proc *p, char *out, size_t outlen, struct mitos_err *e)
{
	return layer_snapshot(dir, p, out, outlen, NULL, NULL, e);
}

/* The snapshot's reference is taken now: its sandboxes may start before the layer is
 * written (they wait for it, as a fork's children do). */
int kvm_snapshot_take(const char *dir, const struct engine_proc *p, const char *snapdir, char *out, size_t outlen,
		      engine_done_fn done, void *ctx, struct mitos_err *e)
{
	(void)snapdir;
	int rc = layer_snapshot(dir, p, out, outlen, done, ctx, e);
	struct kvm_layer *l = rc ? NULL : kvm_layer_find(out);
	if (l) {
		l->refs++;
		l->kept++;
	}
	return rc;
}

int kvm_snapshot_keep(const char *source)
{
	char cfg[PLEN];
	struct stat st;
	if (kvm_pathf(cfg, "%s/config.json", source))
		return -ENAMETOOLONG;
	if (stat(cfg, &st) < 0)
		return -errno;
	struct kvm_layer *l = kvm_layer_adopt(source, 0);
	if (!l)
		return -ENOENT;
	l->kept++;
	return 0;
}

void kvm_snapshot_drop(const char *source)
{
	struct kvm_layer *l = kvm_layer_find(source);
	if (l && l->kept) {
		l->kept--;
		kvm_layer_unref(l);
	}
}

void kvm_layers_exit(void)
{
	/* A kept layer needs its parents. */
	for (struct kvm_layer *l = K.layers; l; l = l->next)
		for (struct kvm_layer *a = l->kept ? l->parent : NULL; a && !a->kept; a = a->parent)
			a->kept = 1;
	while (K.layers) {
		struct kvm_layer *l = K.layers;
		K.layers = l->next;
		if (!l->kept)
			teardown_tree(l->dir, NULL);
		pthread_mutex_destroy(&l->mu);
		pthread_cond_destroy(&l->cv);
		free(l);
	}
}
