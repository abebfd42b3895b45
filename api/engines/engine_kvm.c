/* The kvm engine: every sandbox is a microVM, one `mitos-vmm vm` process each, forked
 * from a template's snapshot.
 *
 * - A template is built by booting its kernel and root filesystem image (read-only)
 *   under `mitos-vmm run` until its agent answers `health` over vsock, snapshotting it
 *   through the control socket into STATE/templates/NAME/snapshot, and stopping it.
 * - Prepared VMs (`mitos-vmm vm`: KVM VM, vCPUs and a RAM reservation made ahead) are
 *   kept in a small pool per VM shape in STATE/kvm/pool and refilled from the event
 *   loop; a new sandbox takes one (or starts one when the pool is dry), moves its
 *   control socket and console into the sandbox's dir, and a worker thread sends it the
 *   `restore` request. The agent is then reached through the VM's vsock socket
 *   (CONNECT 52) and sent `post_fork` (fresh entropy, the wall clock) before the
 *   sandbox counts as ready.
 * - Forking a sandbox snapshots it into a layer (STATE/kvm/layers/N, only the pages it
 *   changed) and restores each child from it. Layers are reference-counted by the
 *   sandboxes restored from them and by their own child layers; the last one to go
 *   removes it.
 * - Each VM process is jailed as far as the host allows: new mount (private, read-only
 *   /proc), pid, ipc, uts and net namespaces, no capabilities (uid 0 without privilege),
 *   no_new_privs, a seccomp allowlist it installs itself once prepared (`--seccomp`,
 *   vmm/seccomp.c), a cgroup with memory and CPU limits (api/engines/cgroup.c), and
 *   unless --no-vm-jail a uid and a root of its own (kvm_jail.c). api/API.md says what each
 *   does and what is missing.
 *
 * Everything that waits on a guest (restore, layer snapshots, template boots) runs on a
 * few worker threads; they touch no state of the event loop and report back through an
 * eventfd. Spawning, the pool and reference counts belong to the loop thread. */
#include "api/engines/kvm_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent/base64.h"
#include "api/sandbox/agent_client.h"
#include "api/engines/kvm_guest.h"
#include "api/engines/sandbox_net.h"
#include "api/sandbox/net_policy.h"
#include "api/sandbox/registry.h"
#include "vmm/control.h"
#include "vmm/kvm_vm.h"

struct kvm_state K = { .jail = true, .vmm_fd = -1, .kvm_fd = -1, .efd = -1, .mu = PTHREAD_MUTEX_INITIALIZER,
		       .lanes = { [LANE_SHORT].cv = PTHREAD_COND_INITIALIZER, [LANE_LONG].cv = PTHREAD_COND_INITIALIZER,
			  [LANE_VM].cv = PTHREAD_COND_INITIALIZER } };

/* ---- sandboxes ---- */

struct restore_job {
	struct kjob k;
	struct kvm_layer *layer;   /* NULL: restoring a template */
	int ready_fd, pidfd;
	char dir[PLEN], control[PLEN], snapshot[PLEN], vsock[PLEN], rootfs[PLEN];
	char vmdir[PLEN];          /* with K.jail: where the VM was started (kvm_vm_take) */
	char tsnap[PLEN];          /* the template's snapshot, the base of every layer */
	bool tap;                  /* its template has a network device: the VM gets a TAP */
	bool has_net;              /* and what it may reach through it */
	struct net_policy net;
};

/* What a jailed VM restores is mounted into its root: the snapshot and every layer
 * below it (the root disk goes as a descriptor). From serve's own record of the
 * chain, never from the layers' config.json, which VMs wrote. */
static int restore_binds(const struct restore_job *j, struct mitos_err *e)
{
	struct jail more;
	more.n = 0;
	int rc = jail_add(&more, j->tsnap, false);
	for (const struct kvm_layer *l = j->layer; !rc && l; l = l->parent)
		rc = jail_add(&more, l->dir, false);
	if (rc)
		return mitos_err_set(e, rc, "cannot give the VM its snapshot: %s", strerror(-rc));
	return jail_bind_more(j->pidfd, &more, e);
}

/* The restored VM's sockets and console move to the sandbox's directory, which is
 * serve's: nothing is reached through the VM's own any more. */
static int restore_claim(const struct restore_job *j, struct mitos_err *e)
{
	static const struct { const char *name; mode_t type; } files[] = {
		{ "control", S_IFSOCK }, { "vsock", S_IFSOCK }, { "console.log", S_IFREG } };
	char own[PLEN], from[PLEN], to[PLEN];
	int rc = kvm_vm_files(j->vmdir, own);
	for (size_t i = 0; !rc && i < sizeof(files) / sizeof(files[0]); i++) {
		rc = kvm_pathf(from, "%s/%s", own, files[i].name) || kvm_pathf(to, "%s/%s", j->dir, files[i].name) ?
			     -ENAMETOOLONG : 0;
		if (!rc)
			rc = jail_claim(from, to, files[i].type, e);
	}
	return rc;
}

static void restore_run(struct kjob *kj)
{
	struct restore_job *j = (struct restore_job *)kj;
	struct mitos_err e = { 0 };
	int rc = j->layer ? kvm_layer_wait(j->layer, &e) : 0;
	char own[PLEN], control[PLEN], vsock[PLEN];
	strcpy(control, j->control);
	strcpy(vsock, j->vsock);
	if (!rc && j->vmdir[0]) {
		rc = kvm_vm_files(j->vmdir, own) || kvm_pathf(control, "%s/control", own) ||
				     kvm_pathf(vsock, "%s/vsock", own) || strlen(vsock) + 12 > SOCK_MAX ? -ENAMETOOLONG : 0;
		if (rc)
			mitos_err_set(&e, rc, "the VM's path %.300s is too long for its sockets", own);
		if (!rc)
			rc = restore_binds(j, &e);
	}
	/* The root disk is shared by every sandbox (their writes go to the guest's
	 * overlay), and handed over open: the VM never sees the image's path. */
	struct control_fds fds = { .n = 0 };
	int disk = j->rootfs[0] ? open(j->rootfs, O_RDONLY | O_CLOEXEC) : -1;
	if (!rc && j->rootfs[0] && disk < 0)
		rc = mitos_err_set(&e, -errno, "cannot open the root disk %.300s: %s", j->rootfs, strerror(errno));
	if (disk >= 0)
		fds.fd[fds.n++] = disk;
	/* Its TAP, in a network namespace of its own, comes open too. */
	int tap = -1;
	if (!rc && j->tap && (tap = sandbox_net_vm_tap(j->dir, j->has_net ? &j->net : NULL, &e)) < 0)
		rc = tap;
	if (tap >= 0)
		fds.fd[fds.n++] = tap;
	if (!rc) {
		struct ctl_request req = { .cmd = CTL_RESTORE, .snapshot = j->snapshot, .vsock = vsock,
					   .ndisks = j->rootfs[0] ? 1 : 0, .tap_by_fd = tap >= 0,
					   .tap_fd = disk >= 0 ? 1 : 0,
					   .disks = { { .index = 0, .path = j->rootfs, .read_only = true, .by_fd = true } } };
		struct mitos_err why = { 0 };
		rc = kvm_ctl_request(control, &req, fds.n ? &fds : NULL, RESTORE_TIMEOUT_MS, PREPARE_TIMEOUT_MS,
				     j->pidfd, &why);
		if (rc)
			mitos_err_set(&e, rc, "restore into a prepared VM failed: %s", why.msg);
	}
	for (unsigned i = 0; i < fds.n; i++)
		close(fds.fd[i]);
	if (!rc && j->vmdir[0])
		rc = restore_claim(j, &e);
	if (!rc) {
		/* The guest's listeners survived the snapshot: the agent takes connections now. */
		(void)!write(j->ready_fd, "R", 1);
	} else if (!pidfd_exited(j->pidfd)) {
		/* Still ours to report (a sandbox killed meanwhile has its dir removed). */
		kvm_write_error_file(j->dir, e.msg);
		syscall(SYS_pidfd_send_signal, j->pidfd, SIGKILL, NULL, 0);
	}
	close(j->ready_fd);
	close(j->pidfd);
}

static void restore_complete(struct kjob *kj)
{
	struct restore_job *j = (struct restore_job *)kj;
	if (j->vmdir[0])
		teardown_tree(j->vmdir, NULL);
	kvm_layer_unref(j->layer);
	free(j);
}

static int kvm_agent_socket(const char *dir, char *out, size_t outlen)
{
	int n = snprintf(out, outlen, "%s/vsock", dir);
	return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

static int kvm_start(const struct engine_start *s, struct engine_proc *p, struct mitos_err *e)
{
	struct vm_shape sh;
	struct restore_job *j = calloc(1, sizeof(*j));
	struct kvm_sb *ksb = calloc(1, sizeof(*ksb));
	if (!j || !ksb) {
		free(j);
		free(ksb);
		return mitos_err_set(e, -ENOMEM, "out of memory");
	}
	j->ready_fd = j->pidfd = -1;
	int rc = kvm_shape_read(s->template_root, &sh, j->rootfs, sizeof(j->rootfs), &j->tap);
	if (rc)
		mitos_err_set(e, rc, "the template in %.300s has no kvm.json", s->template_root);
	if (!rc && net_policy_any(s->net) && !j->tap)
		rc = mitos_err_set(e, -ENOTSUP, "its template was built without a network device (before serve ran "
				   "with --egress): make the template anew");
	if (!rc && net_policy_any(s->net)) {
		j->has_net = true;
		j->net = *s->net;
	}
	if (!rc && (kvm_pathf(j->dir, "%s", s->dir) || kvm_pathf(j->control, "%s/control", s->dir) ||
		    kvm_pathf(j->vsock, "%s/vsock", s->dir) || strlen(j->vsock) + 12 > SOCK_MAX ||
		    kvm_pathf(ksb->dir, "%s", s->dir))) {
		rc = mitos_err_set(e, -ENAMETOOLONG, "the sandbox's path %.300s is too long for its sockets", s->dir);
	}
	if (!rc) {
		if (s->copy_from) {
			j->layer = kvm_layer_find(s->copy_from);
			if (!j->layer) {
				rc = mitos_err_set(e, -ENOENT, "no layer %.300s", s->copy_from);
			} else {
				kvm_pathf(j->snapshot, "%s", s->copy_from);
				j->layer->refs += 2; /* the job's and the sandbox's */
				ksb->base = j->layer;
			}
		}
		if (kvm_pathf(j->tsnap, "%s/snapshot", s->template_root)) {
			rc = -ENAMETOOLONG;
		} else if (!s->copy_from && kvm_pathf(j->snapshot, "%s", j->tsnap)) {
			rc = -ENAMETOOLONG;
		} else if (!s->copy_from) {
			/* The pool's next VMs expect the template asked last. */
			kvm_pool_arm(&sh, j->snapshot);
		}
	}
	struct vm_proc vp = { .pidfd = -1 };
	if (!rc)
		rc = kvm_vm_take(&sh, s->dir, &vp, j->vmdir, e);
	if (!rc) {
		j->ready_fd = fcntl(s->ready_fd, F_DUPFD_CLOEXEC, 3);
		j->pidfd = fcntl(vp.pidfd, F_DUPFD_CLOEXEC, 3);
		if (j->ready_fd < 0 || j->pidfd < 0) {
			rc = mitos_err_set(e, -errno, "out of file descriptors");
			kvm_vm_reap(&vp);
		}
	}
	if (rc) {
		if (j->vmdir[0])
			teardown_tree(j->vmdir, NULL);
		if (j->ready_fd >= 0)
			close(j->ready_fd);
		if (j->pidfd >= 0)
			close(j->pidfd);
		if (j->layer) {
			kvm_layer_unref(j->layer);
			kvm_layer_unref(j->layer);
		}
		free(j);
		free(ksb);
		return rc;
	}
	kvm_vm_record(s->dir, &vp, j->snapshot, &sh);
	p->pid = vp.pid;
	p->pidfd = vp.pidfd;
	p->start_time = vp.start_time;
	p->child = true;
	p->priv = ksb;
	j->k.run = restore_run;
	j->k.complete = restore_complete;
	/* A fork's child waits for its parent's layer, which a VM that does not answer
	 * holds: it waits on the lane of the calls into VMs (queued after the snapshot it
	 * waits for), never in the way of other sandboxes' restores. */
	bool waits = false;
	if (j->layer) {
		pthread_mutex_lock(&j->layer->mu);
		waits = j->layer->state == 1;
		pthread_mutex_unlock(&j->layer->mu);
	}
	kvm_submit(&j->k, waits ? LANE_VM : LANE_SHORT);
	return 0;
}

/* {"cmd": pause or resume} to the VMM behind sock; logs a failure. */
static int ctl_cmd(const char *sock, int pidfd, bool pause)
{
	struct ctl_request req = { .cmd = pause ? CTL_PAUSE : CTL_RESUME };
	struct mitos_err e = { 0 };
	int rc = kvm_ctl_request(sock, &req, NULL, CTL_TIMEOUT_MS, 0, pidfd, &e);
	if (rc)
		fprintf(stderr, "mitos-vmm serve: %s of the VM at %s failed: %s\n", pause ? "pause" : "resume", sock,
			e.msg);
	return rc;
}

/* Blocks the loop while the VMM answers: only at start (re-adopting a paused VM) and
 * to undo a state that could not be saved; requests use kvm_pause_async. */
static int kvm_ctl(const struct engine_proc *p, bool pause)
{
	const struct kvm_sb *ksb = p->priv;
	char sock[PLEN];
	if (!ksb || kvm_pathf(sock, "%s/control", ksb->dir))
		return -ESRCH;
	return ctl_cmd(sock, p->pidfd, pause);
}

static int kvm_pause(const char *dir, const struct engine_proc *p) { (void)dir; return kvm_ctl(p, true); }
static int kvm_resume(const char *dir, const struct engine_proc *p) { (void)dir; return kvm_ctl(p, false); }

/* A pause or resume asked of the VMM from a worker: the loop goes on meanwhile. */
struct ctl_job {
	struct kjob k;
	char sock[PLEN];
	bool pause;
	int pidfd;             /* its own copy: the sandbox may be killed and its fd closed */
	int rc;
	engine_done_fn done;
	void *ctx;
};

static void ctl_run(struct kjob *k)
{
	struct ctl_job *j = (struct ctl_job *)k;
	j->rc = ctl_cmd(j->sock, j->pidfd, j->pause);
}

static void ctl_complete(struct kjob *k)
{
	struct ctl_job *j = (struct ctl_job *)k;
	close(j->pidfd);
	j->done(j->ctx, j->rc);
	free(j);
}

static int kvm_pause_async(const char *dir, const struct engine_proc *p, bool pause, engine_done_fn done, void *ctx)
{
	(void)dir;
	const struct kvm_sb *ksb = p->priv;
	struct ctl_job *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	if (!ksb || kvm_pathf(j->sock, "%s/control", ksb->dir)) {
		free(j);
		return -ESRCH;
	}
	j->pidfd = fcntl(p->pidfd, F_DUPFD_CLOEXEC, 0);
	if (j->pidfd < 0) {
		free(j);
		return -errno;
	}
	j->pause = pause;
	j->done = done;
	j->ctx = ctx;
	j->k.run = ctl_run;
	j->k.complete = ctl_complete;
	kvm_submit(&j->k, LANE_VM);
	return 0;
}

static int kvm_kill(const char *dir, const struct engine_proc *p)
{
	(void)dir;
	return engine_proc_signal(p, SIGKILL);
}

static void kvm_exit_reason(const char *dir, char *out, size_t outlen)
{
	char path[PLEN];
	engine_start_error(dir, out, outlen);
	if (!out[0] && !kvm_pathf(path, "%s/console.log", dir)) {
		char tail[300];
		kvm_console_tail(path, tail, sizeof(tail));
		if (tail[0])
			snprintf(out, outlen, "the VM exited; its console ended with: %s", tail);
	}
}

static int kvm_cleanup(const char *dir)
{
	/* The VM has exited by now, so this only removes its cgroups: at once, as the
	 * process engine does, so that nothing of the sandbox is left when DELETE answers.
	 * The files go on the teardown thread. */
	kvm_vm_record_kill(dir);
	sandbox_net_release(dir);
	teardown_tree(dir, NULL);
	return 0;
}

static void kvm_release(struct engine_proc *p)
{
	struct kvm_sb *ksb = p->priv;
	p->priv = NULL;
	if (!ksb)
		return;
	kvm_layer_unref(ksb->base);
	free(ksb);
}

/* ---- post_fork: the first thing a clone's agent hears ---- */

struct pf_ctx {
	engine_connected_fn done;
	void *ctx;
};

static void pf_end(struct astream *s, cJSON *payload, const char *why)
{
	struct pf_ctx *c = s->ctx;
	cJSON *e = payload ? cJSON_GetObjectItem(payload, "error") : NULL;
	char msg[300];
	if (!payload) {
		c->done(c->ctx, -ECONNRESET, why ? why : "the agent connection closed during post_fork");
	} else if (e) {
		/* Clones that cannot reseed share their parent's RNG state: refuse them. */
		snprintf(msg, sizeof(msg), "the agent's post_fork failed: %.40s: %.200s",
			 cJSON_GetStringValue(cJSON_GetObjectItem(e, "code")) ?: "?",
			 cJSON_GetStringValue(cJSON_GetObjectItem(e, "message")) ?: "");
		c->done(c->ctx, -EIO, msg);
	} else {
		c->done(c->ctx, 0, NULL);
	}
	free(c);
}

static const struct astream_ops pf_ops = { .end = pf_end };

static int kvm_after_connect(struct engine_proc *p, struct agent_conn *ac, engine_connected_fn done, void *ctx)
{
	(void)p;
	uint8_t ent[64];
	if (getrandom(ent, sizeof(ent), 0) != (ssize_t)sizeof(ent))
		return -EIO;
	char b64[base64_encoded_len(sizeof(ent)) + 1], open[256];
	base64_encode(ent, sizeof(ent), b64);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(open, sizeof(open), "{\"op\":\"post_fork\",\"entropy\":\"%s\",\"realtime_ns\":%" PRIu64 "}", b64,
		 (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
	struct pf_ctx *c = malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->done = done;
	c->ctx = ctx;
	if (!agent_open(ac, open, &pf_ops, c)) {
		free(c);
		return -ENOTCONN;
	}
	return 0;
}

/* ---- re-adoption after a restart of serve ---- */

static int kvm_adopt(const char *dir, struct engine_proc *p, struct mitos_err *e)
{
	char path[PLEN];
	if (kvm_pathf(path, "%s/vm.json", dir))
		return mitos_err_set(e, -ENAMETOOLONG, "path too long");
	cJSON *o = registry_read_json(path);
	cJSON *jp = o ? cJSON_GetObjectItem(o, "pid") : NULL;
	const char *base = o ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "base")) : NULL;
	int rc = 0;
	if (!cJSON_IsNumber(jp) || (pid_t)jp->valuedouble != p->pid || !base) {
		rc = mitos_err_set(e, -ENOENT, "its vm.json is missing or names another process");
	}
	char ctl[PLEN];
	if (!rc && (kvm_pathf(ctl, "%s/control", dir) || !kvm_is_socket(ctl))) {
		rc = mitos_err_set(e, -ENOENT, "its VM has no control socket");
	}
	struct kvm_sb *ksb = rc ? NULL : calloc(1, sizeof(*ksb));
	if (!rc && !ksb)
		rc = -ENOMEM;
	if (!rc) {
		snprintf(ksb->dir, sizeof(ksb->dir), "%s", dir);
		if (kvm_in_layer_dir(base) && !(ksb->base = kvm_layer_adopt(base, 0))) {
			rc = mitos_err_set(e, -ENOENT, "the layer it was restored from (%.200s) is gone", base);
			free(ksb);
		}
	}
	cJSON_Delete(o);
	if (!rc)
		p->priv = ksb;
	return rc;
}

/* ---- start-up, shutdown ---- */

int engine_kvm_available(struct mitos_err *e)
{
	int fd = open(kvm_device_path(), O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;
		char hint[256];
		return mitos_err_set(e, -err, "cannot open %s: %s (%s)", kvm_device_path(), strerror(err),
				     kvm_open_hint(err, hint, sizeof(hint)));
	}
	close(fd);
	return 0;
}

/* Removes what a previous serve left in a directory of VMs: their processes too. */
static void sweep_dir(const char *root, bool keep_adopted_layers)
{
	DIR *d = opendir(root);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char p[PLEN];
		if (kvm_pathf(p, "%s/%s", root, de->d_name))
			continue;
		if (keep_adopted_layers && kvm_layer_find(p))
			continue;
		teardown_tree(p, kvm_vm_record_kill);
	}
	closedir(d);
}

void engine_kvm_set_jail(bool on)
{
	K.jail = on;
}

int engine_kvm_configure(const char *state_dir, unsigned pool_size, bool emulated, char *info, size_t infolen,
			 struct mitos_err *e)
{
	char real[PATH_MAX];
	if (!realpath(state_dir, real))
		return mitos_err_set(e, -errno, "state dir %s: %s", state_dir, strerror(errno));
	if (strlen(real) > 200)
		return mitos_err_set(e, -ENAMETOOLONG, "state dir %s: longer than 200 characters (the VMs' Unix "
				     "sockets live under it)", real);
	snprintf(K.state, sizeof(K.state), "%s", real);
	kvm_pathf(K.pool_dir, "%s/kvm/pool", real);
	kvm_pathf(K.layer_dir, "%s/kvm/layers", real);
	char kdir[PLEN];
	kvm_pathf(kdir, "%s/kvm", real);
	if ((mkdir(kdir, 0700) < 0 && errno != EEXIST) || (mkdir(K.pool_dir, 0700) < 0 && errno != EEXIST) ||
	    (mkdir(K.layer_dir, 0700) < 0 && errno != EEXIST))
		return mitos_err_set(e, -errno, "cannot create %s: %s", kdir, strerror(errno));
	K.vmm_fd = open("/proc/self/exe", O_PATH | O_CLOEXEC);
	if (K.vmm_fd < 0)
		return mitos_err_set(e, -errno, "cannot open /proc/self/exe: %s", strerror(errno));
	K.pool_size = pool_size > MAX_POOL ? MAX_POOL : pool_size;
	kvm_guest_init(emulated);
	K.ns = geteuid() == 0;
	char limits[700], jail[300] = "";
	cgroup_init("mitos-vms", K.ns, limits, sizeof(limits));
	if (K.jail && !K.ns) {
		K.jail = false;
		snprintf(jail, sizeof(jail), "; NOT jailed: a uid and root of its own need serve to be root");
	} else if (!K.jail) {
		snprintf(jail, sizeof(jail), "; NOT jailed (--no-vm-jail): uid 0 without capabilities, the host's "
			 "files visible");
	} else {
		char mnt[PLEN];
		struct mitos_err why = { 0 };
		K.kvm_fd = open(kvm_device_path(), O_RDWR | O_CLOEXEC);
		int rc = K.kvm_fd < 0 ? -errno : 0;
		if (rc)
			mitos_err_set(&why, rc, "cannot open %s: %s", kvm_device_path(), strerror(-rc));
		else if (!(rc = kvm_pathf(mnt, "%s/kvm/jail", real)))
			rc = jail_init(mnt, "/proc/self/exe", &why);
		if (rc)
			return mitos_err_set(e, rc, "cannot set up the VM jail: %s (fix that, or start serve with "
					     "--no-vm-jail to run VM processes as uid 0 without capabilities)",
					     why.msg);
		snprintf(jail, sizeof(jail), "; own uid (%u and up, group %u) and own root (pivot_root: its own files, "
			 "the VMM's binary and libraries read-only, /proc read-only), /dev/kvm handed over", jail_uid_base() + 1, jail_uid_base());
	}
	snprintf(info, infolen, "each VM: %s, no_new_privs, seccomp allowlist%s; %s",
		 K.ns ? "own mount (private, read-only /proc), pid, ipc, uts and net namespaces, no capabilities"
		      : "NO namespaces (serve is not root)", jail, limits);
	K.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (K.efd < 0)
		return mitos_err_set(e, -errno, "eventfd: %s", strerror(errno));
	if (!kvm_workers_start())
		return mitos_err_set(e, -EAGAIN, "cannot start the engine's threads");
	/* Prepared VMs of a previous serve are nobody's now. */
	sweep_dir(K.pool_dir, false);
	K.configured = true;
	return 0;
}

static void kvm_started(void)
{
	/* Layers that no re-adopted sandbox needs go. */
	sweep_dir(K.layer_dir, true);
	kvm_arm_efd();
	K.ticker.fn = kvm_pool_tick;
	ur_add_ticker(&K.ticker);
	K.refill.fn = kvm_refill_kick;
	kvm_pool_fill();
}

static void kill_pools(void)
{
	for (int i = 0; i < MAX_SHAPES; i++)
		while (K.pools[i].idle)
			kvm_pool_drop(&K.pools[i], K.pools[i].idle);
}

static void kvm_shutdown(void)
{
	K.stopping = true;
	kvm_builds_kill();
	kill_pools();
	kvm_workers_wake();
}

static void kvm_exit(void)
{
	if (!K.configured)
		return;
	kvm_shutdown();
	kvm_workers_join();
	kvm_run_completions();
	/* Only snapshots hold layers now: the sandboxes are all gone. */
	kvm_layers_exit();
	if (K.efd >= 0)
		close(K.efd);
	if (K.vmm_fd >= 0)
		close(K.vmm_fd);
	if (K.kvm_fd >= 0)
		close(K.kvm_fd);
	K.kvm_fd = -1;
	K.efd = K.vmm_fd = -1;
	K.configured = false;
}

const struct engine_ops engine_kvm_ops = {
	.name = "kvm",
	.agent_vsock_port = AGENT_PORT,
	.agent_socket = kvm_agent_socket,
	.start = kvm_start,
	.pause = kvm_pause,
	.resume = kvm_resume,
	.pause_async = kvm_pause_async,
	.kill = kvm_kill,
	.exit_reason = kvm_exit_reason,
	.cleanup = kvm_cleanup,
	.network = sandbox_net_enabled,
	.network_update = sandbox_net_update,
	.template_network = kvm_template_net,
	.fork_source = kvm_fork_source,
	.snapshot_take = kvm_snapshot_take,
	.snapshot_keep = kvm_snapshot_keep,
	.snapshot_drop = kvm_snapshot_drop,
	.after_connect = kvm_after_connect,
	.adopt = kvm_adopt,
	.release = kvm_release,
	.template_build = kvm_template_build,
	.template_usable = kvm_template_usable,
	.template_shape = kvm_template_shape,
	.started = kvm_started,
	.shutdown = kvm_shutdown,
	.exit = kvm_exit,
};
