/* Templates: booting a kernel and root image until the agent answers, warming it,
 * starting its workload, and snapshotting it (on a worker thread). */
#include "api/engines/kvm_internal.h"
#include "api/engines/sandbox_net.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/sched.h>
#include <linux/securebits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/base64.h"
#include "agent/proto.h"
#include "api/sandbox/agent_client.h"
#include "api/sandbox/workload.h"
#include "api/engines/cgroup.h"
#include "api/engines/kvm_guest.h"
#include "api/sandbox/registry.h"
#include "api/sandbox/template_hash.h"
#include "api/http/uring.h"
#include "vmm/control.h"
/* ---- templates ---- */

int kvm_shape_read(const char *tdir, struct vm_shape *sh, char *rootfs, size_t rootfslen, bool *net)
{
	char path[PLEN];
	if (kvm_pathf(path, "%s/kvm.json", tdir))
		return -ENAMETOOLONG;
	cJSON *o = registry_read_json(path);
	if (!o)
		return -ENOENT;
	cJSON *m = cJSON_GetObjectItem(o, "mem_mib"), *c = cJSON_GetObjectItem(o, "vcpus");
	cJSON *mm = cJSON_GetObjectItem(o, "memory_max_mib"), *cp = cJSON_GetObjectItem(o, "cpu_percent");
	const char *r = cJSON_GetStringValue(cJSON_GetObjectItem(o, "rootfs"));
	int rc = cJSON_IsNumber(m) && cJSON_IsNumber(c) && cJSON_IsNumber(mm) && cJSON_IsNumber(cp) && r ? 0 : -EINVAL;
	if (!rc) {
		sh->mem_mib = (unsigned)m->valuedouble;
		sh->vcpus = (unsigned)c->valuedouble;
		sh->lim.memory_max_mib = (unsigned)mm->valuedouble;
		sh->lim.cpu_percent = (unsigned)cp->valuedouble;
		sh->lim.pids_max = VM_PIDS_MAX;
		snprintf(rootfs, rootfslen, "%s", r);
		if (net)
			*net = cJSON_IsTrue(cJSON_GetObjectItem(o, "net"));
	}
	cJSON_Delete(o);
	return rc;
}

bool kvm_template_net(const char *tdir)
{
	struct vm_shape sh;
	char rootfs[PLEN];
	bool net = false;
	return kvm_shape_read(tdir, &sh, rootfs, sizeof(rootfs), &net) == 0 && net;
}

struct share;

struct build {
	struct kjob k;
	struct vm_proc vp;
	int pidfd;              /* the worker's own */
	char dir[PLEN], vsock[PLEN], control[PLEN], snap[PLEN], console[PLEN];
	char own[PLEN];         /* where the VM makes its files (kvm_vm_files) */
	char warm[sizeof(((struct kvm_guest *)0)->warm)];
	cJSON *workload;        /* the template's, started before the snapshot, or NULL */
	uint64_t boot_ms, warm_ms;
	int rc;
	char msg[700];
	engine_build_done_fn done;
	void *ctx;
	char key[TEMPLATE_HASH_HEX]; /* kvm_build_key's */
	struct share *followers;     /* templates of the same build, waiting for this one */
	struct build *next;
};

/* What is left of the boot budget for the warm-up, at least a second. */
static int ms_left(uint64_t deadline)
{
	uint64_t now = ur_mono_ms();
	return (int)(deadline > now ? deadline - now : 1000);
}

static void build_run(struct kjob *kj)
{
	struct build *b = (struct build *)kj;
	uint64_t t0 = ur_mono_ms(), give_up = t0 + b->boot_ms;
	struct mitos_err e = { 0 };
	int rc;
	for (;;) {
		if (K.stopping) {
			rc = mitos_err_set(&e, -ESHUTDOWN, "the server is shutting down");
			break;
		}
		if (pidfd_exited(b->pidfd)) {
			char tail[300];
			kvm_console_tail(b->console, tail, sizeof(tail));
			rc = mitos_err_set(&e, -ECHILD, "the guest stopped before its agent answered; its console "
					   "ended with: %s", tail[0] ? tail : "(nothing)");
			break;
		}
		e = (struct mitos_err){ 0 };
		rc = kvm_agent_health(b->vsock, 2000, &e);
		if (!rc)
			break;
		bool not_yet = rc == -ENOENT || rc == -ECONNREFUSED || rc == -ECONNRESET || rc == -ETIMEDOUT;
		if (!not_yet)
			break;
		if (ur_mono_ms() > give_up) {
			rc = mitos_err_set(&e, -ETIMEDOUT, "no agent answered on vsock port %u within %" PRIu64 " s of "
					   "boot (see %.200s)", AGENT_PORT, b->boot_ms / 1000, b->console);
			break;
		}
		usleep(20000);
	}
	if (!rc && b->warm[0]) {
		uint64_t w0 = ur_mono_ms();
		struct mitos_err werr = { 0 };
		int wrc = kvm_guest_warm(b->vsock, b->warm, ms_left(give_up), &werr);
		if (!wrc)
			wrc = kvm_guest_warm_code(b->vsock, ms_left(give_up), &werr);
		b->warm_ms = ur_mono_ms() - w0;
		if (wrc)
			fprintf(stderr, "mitos-vmm serve: template %s: warm-up failed after %" PRIu64 " ms (its children "
				"start cold): %s\n", b->dir, b->warm_ms, werr.msg[0] ? werr.msg : strerror(-wrc));
	}
	if (!rc && b->workload) {
		/* Every fork wakes with it already serving. */
		rc = workload_run_blocking(b->vsock, AGENT_PORT, b->workload, &e);
		if (rc) {
			/* The guest kernel's word on a process that died (a segfault, the OOM killer). */
			char tail[200];
			kvm_console_tail(b->console, tail, sizeof(tail));
			snprintf(b->msg, sizeof(b->msg), "%.400s%s%.199s", e.msg,
				 tail[0] ? "; the guest's console ends: " : "", tail);
		}
	}
	if (!rc) {
		/* Our health connection is closed: let the guest retire it, so the snapshot
		 * holds a listening agent and nothing half-open. */
		usleep(100000);
		char written[PLEN];
		kvm_pathf(written, "%s/snapshot", b->own);
		struct ctl_request req = { .cmd = CTL_SNAPSHOT, .dir = written };
		rc = kvm_ctl_request(b->control, &req, NULL, SNAPSHOT_TIMEOUT_MS, 0, b->pidfd, &e);
		/* A jailed VM wrote it in its own directory: it becomes serve's, root's and
		 * read-only, before any child maps it. */
		if (!rc && K.jail && rename(written, b->snap) < 0)
			rc = mitos_err_set(&e, -errno, "cannot move the snapshot into the template: %s",
					   strerror(errno));
		if (!rc && K.jail)
			rc = jail_seal(b->snap, &e);
		if (rc)
			snprintf(b->msg, sizeof(b->msg), "the template's snapshot failed: %s", e.msg);
	} else if (!b->msg[0]) {
		snprintf(b->msg, sizeof(b->msg), "%s", e.msg);
	}
	/* The template VM has served its purpose either way. */
	kvm_ctl_request(b->control, &(struct ctl_request){ .cmd = CTL_STOP }, NULL, CTL_TIMEOUT_MS, 0, b->pidfd, NULL);
	struct pollfd pf = { .fd = b->pidfd, .events = POLLIN };
	if (poll(&pf, 1, 5000) <= 0)
		syscall(SYS_pidfd_send_signal, b->pidfd, SIGKILL, NULL, 0);
	close(b->pidfd);
	b->pidfd = -1;
	b->rc = rc;
	if (!rc)
		snprintf(b->msg, sizeof(b->msg), "booted, agent answered, warmed (%" PRIu64 " ms) and snapshotted in "
			 "%" PRIu64 " ms", b->warm_ms, ur_mono_ms() - t0);
}

/* The prepared VMs of the template's shape restore its snapshot next. */
static void arm_pool(const char *dir, const char *snap)
{
	struct vm_shape sh;
	char rootfs[PLEN];
	if (!kvm_shape_read(dir, &sh, rootfs, sizeof(rootfs), NULL) && kvm_pool_for(&sh, true)) {
		kvm_pool_arm(&sh, snap);
		ur_kick(&K.refill);
	}
}

static void followers_go(struct build *b);

static void build_complete(struct kjob *kj)
{
	struct build *b = (struct build *)kj;
	for (struct build **pp = &K.builds; *pp; pp = &(*pp)->next)
		if (*pp == b) {
			*pp = b->next;
			break;
		}
	kvm_vm_reap(&b->vp);
	char p[PLEN];
	static const char *leftovers[] = { "vsock", "control", "vm.json" };
	for (size_t i = 0; i < sizeof(leftovers) / sizeof(leftovers[0]); i++)
		if (!kvm_pathf(p, "%s/%s", b->dir, leftovers[i]))
			unlink(p);
	if (K.jail)
		teardown_tree(b->own, NULL);
	if (!b->rc)
		arm_pool(b->dir, b->snap);
	if (b->done)
		b->done(b->ctx, b->rc, b->msg);
	followers_go(b);
	cJSON_Delete(b->workload);
	free(b);
}

bool kvm_building(const char *dir)
{
	for (struct build *b = K.builds; b; b = b->next)
		if (!strcmp(b->dir, dir))
			return true;
	return false;
}

/* A template that takes the snapshot of an earlier one of the same build (kvm_share.c). */
struct share {
	struct kjob k;
	char dir[PLEN], from[PLEN], snap[PLEN];
	uint64_t t0;
	int rc;
	char msg[700];
	engine_build_done_fn done;
	void *ctx;
	struct share *next; /* followers of one build */
};

static void share_run(struct kjob *kj)
{
	struct share *s = (struct share *)kj;
	struct mitos_err e = { 0 };
	s->rc = kvm_share_link(s->from, s->snap, &e);
	if (s->rc)
		snprintf(s->msg, sizeof(s->msg), "%s", e.msg);
	else
		snprintf(s->msg, sizeof(s->msg), "the same build as %.400s: its snapshot shared in %" PRIu64 " ms",
			 s->from, ur_mono_ms() - s->t0);
}

static void share_complete(struct kjob *kj)
{
	struct share *s = (struct share *)kj;
	if (!s->rc)
		arm_pool(s->dir, s->snap);
	if (s->done)
		s->done(s->ctx, s->rc, s->msg);
	free(s);
}

/* The build b led is over: the templates that waited for it link its snapshot, or fail
 * as it did (the same inputs would fail the same way). */
static void followers_go(struct build *b)
{
	for (struct share *s = b->followers, *n; s; s = n) {
		n = s->next;
		if (!b->rc && !K.stopping) {
			s->t0 = ur_mono_ms();
			kvm_submit(&s->k, LANE_SHORT);
			continue;
		}
		s->rc = b->rc ? b->rc : -ESHUTDOWN;
		snprintf(s->msg, sizeof(s->msg), "the same build as %.300s failed: %.350s", b->dir,
			 b->rc ? b->msg : "the server is shutting down");
		share_complete(&s->k);
	}
	b->followers = NULL;
}

static struct build *build_of_key(const char *key)
{
	for (struct build *b = K.builds; key[0] && b; b = b->next)
		if (!strcmp(b->key, key))
			return b;
	return NULL;
}

/* 1 when a template of the same build lends dir its snapshot: a finished one at once, one
 * being built when it is done (done is called when the links are made); 0 when there is
 * none, and dir is built. */
static int share_start(const char *dir, const char *key, engine_build_done_fn done, void *ctx)
{
	char donor[PLEN], from[PLEN];
	struct build *lead = NULL;
	struct share *s;
	if (kvm_share_donor(dir, key, donor, sizeof(donor))) {
		if (kvm_pathf(from, "%s/snapshot", donor))
			return 0;
	} else if ((lead = build_of_key(key))) {
		snprintf(from, sizeof(from), "%s", lead->snap);
	} else {
		return 0;
	}
	if (!(s = calloc(1, sizeof(*s))))
		return 0;
	if (kvm_pathf(s->dir, "%s", dir) || kvm_pathf(s->from, "%s", from) || kvm_pathf(s->snap, "%s/snapshot", dir)) {
		free(s);
		return 0;
	}
	s->t0 = ur_mono_ms();
	s->done = done;
	s->ctx = ctx;
	s->k.run = share_run;
	s->k.complete = share_complete;
	if (lead) {
		s->next = lead->followers;
		lead->followers = s;
	} else {
		kvm_submit(&s->k, LANE_SHORT);
	}
	return 1;
}

/* An absolute path of a readable file in spec[key] (absent: out "", an error unless
 * optional). */
static int spec_file(const cJSON *spec, const char *key, bool optional, char *out, struct mitos_err *e)
{
	const cJSON *j = cJSON_GetObjectItemCaseSensitive(spec, key);
	const char *v = cJSON_GetStringValue(j);
	struct stat st;
	out[0] = 0;
	if (!j && optional)
		return 0;
	if (!v || v[0] != '/')
		return mitos_err_set(e, -EINVAL, "the kvm engine builds a template from a guest kernel and a root "
				     "filesystem image (or an initramfs): give \"kernel\" and \"rootfs\" (or "
				     "\"initrd\") as absolute paths on this host");
	char real[PATH_MAX];
	if (!realpath(v, real) || stat(real, &st) < 0 || !S_ISREG(st.st_mode) || access(real, R_OK))
		return mitos_err_set(e, -ENOENT, "%s %.300s: not a readable file", key, v);
	if (strlen(real) >= PLEN)
		return mitos_err_set(e, -ENAMETOOLONG, "%s: path too long", key);
	strcpy(out, real);
	return 0;
}

int kvm_template_build(const char *dir, const cJSON *spec, engine_build_done_fn done, void *ctx,
			      struct mitos_err *e)
{
	char kernel[PLEN], rootfs[PLEN], initrd[PLEN] = "";
	unsigned mem, vcpus, boot_s;
	struct cg_limits lim;
	int rc;
	/* A request that names no guest gets its image's (tools/build-image, build-kernel.sh). */
	struct kvm_guest g = { .cmdline = KVM_GUEST_CMDLINE, .mem_mib = 256, .boot_timeout_s = BOOT_TIMEOUT_DEFAULT_S };
	static const char *guest_keys[] = { "kernel", "rootfs", "initrd" };
	bool builtin = true;
	for (size_t i = 0; i < sizeof(guest_keys) / sizeof(guest_keys[0]); i++)
		if (cJSON_GetObjectItemCaseSensitive(spec, guest_keys[i]))
			builtin = false;
	if (builtin) {
		const char *image = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(spec, "image"));
		if ((rc = kvm_guest_default(image ? image : "", &g, e)))
			return rc;
		if (kvm_pathf(kernel, "%s", g.kernel) || kvm_pathf(rootfs, "%s", g.rootfs))
			return mitos_err_set(e, -ENAMETOOLONG, "the image's kernel or disk path is too long");
	} else if ((rc = spec_file(spec, "kernel", false, kernel, e)) ||
		   (rc = spec_file(spec, "initrd", true, initrd, e)) ||
		   (rc = spec_file(spec, "rootfs", initrd[0] != 0, rootfs, e))) {
		return rc;
	}
	if ((rc = registry_uint_field(spec, "mem_mib", 16, 1u << 20, g.mem_mib, &mem, e)) ||
	    (rc = registry_uint_field(spec, "vcpus", 1, 64, 1, &vcpus, e)) ||
	    (rc = cgroup_limits_parse(spec, mem,
				      &(struct cg_limits){ .memory_max_mib = mem + MEM_OVERHEAD_MIB,
							   .cpu_percent = vcpus * 100 },
				      &lim, e)) ||
	    (rc = registry_uint_field(spec, "boot_timeout", 1, 3600, g.boot_timeout_s, &boot_s, e)))
		return rc;
	const cJSON *jc = cJSON_GetObjectItemCaseSensitive(spec, "cmdline");
	if (jc && (!cJSON_IsString(jc) || strlen(jc->valuestring) > 2048))
		return mitos_err_set(e, -EINVAL, "cmdline must be a string of at most 2048 characters");
	/* With --egress every template gets a network device, and its guest its address:
	 * a sandbox's VM then gets a TAP of its own at restore (sandbox_net.h). */
	bool net = sandbox_net_enabled();
	char cmdline[2048 + 256];
	snprintf(cmdline, sizeof(cmdline), "%s", jc ? jc->valuestring : g.cmdline);
	if (net) {
		size_t k = strlen(cmdline);
		cmdline[k++] = ' ';
		sandbox_net_vm_cmdline(cmdline + k, sizeof(cmdline) - k);
	}
	struct build *b = calloc(1, sizeof(*b));
	if (!b)
		return mitos_err_set(e, -ENOMEM, "out of memory");
	b->pidfd = -1;
	b->vp.pidfd = -1;
	if (kvm_pathf(b->dir, "%s", dir) || kvm_vm_files(dir, b->own) || kvm_pathf(b->vsock, "%s/vsock", b->own) ||
	    kvm_pathf(b->control, "%s/control", b->own) ||
	    kvm_pathf(b->snap, "%s/snapshot", dir) || kvm_pathf(b->console, "%s/console.log", dir) ||
	    strlen(b->vsock) + 12 > SOCK_MAX || strlen(b->control) > SOCK_MAX) {
		free(b);
		return mitos_err_set(e, -ENAMETOOLONG, "the state dir's path is too long for the template's sockets");
	}
	if (mkdir(dir, 0700) < 0) {
		rc = mitos_err_set(e, -errno, "cannot create %.300s: %s", dir, strerror(errno));
		free(b);
		return rc;
	}
	lim.pids_max = VM_PIDS_MAX;
	struct vm_shape sh = { .mem_mib = mem, .vcpus = vcpus, .lim = lim };
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "kernel", kernel);
	cJSON_AddStringToObject(o, "rootfs", rootfs);
	cJSON_AddStringToObject(o, "initrd", initrd);
	cJSON_AddStringToObject(o, "cmdline", cmdline);
	cJSON_AddNumberToObject(o, "mem_mib", mem);
	cJSON_AddNumberToObject(o, "vcpus", vcpus);
	cJSON_AddNumberToObject(o, "memory_max_mib", lim.memory_max_mib);
	cJSON_AddNumberToObject(o, "cpu_percent", lim.cpu_percent);
	cJSON_AddBoolToObject(o, "net", net);
	char key[TEMPLATE_HASH_HEX];
	if (!kvm_build_key(o, spec, builtin ? g.warm : "", key))
		cJSON_AddStringToObject(o, "build_key", key);
	char path[PLEN];
	kvm_pathf(path, "%s/kvm.json", dir);
	rc = registry_write_json(path, o);
	cJSON_Delete(o);
	if (rc)
		mitos_err_set(e, rc, "cannot write the template's files: %s", strerror(-rc));
	if (!rc && share_start(dir, key, done, ctx)) {
		free(b);
		return 0;
	}
	/* The image goes open, as in every restore: the VM never sees its path. */
	char disk[PLEN + 16], mems[16], cpus[16], vsockarg[PLEN];
	snprintf(disk, sizeof(disk), "%s,ro,fd=%d", rootfs, VM_DISK_FD);
	int disk_fd = rootfs[0] ? open(rootfs, O_RDONLY | O_CLOEXEC) : -1;
	if (!rc && rootfs[0] && disk_fd < 0)
		rc = mitos_err_set(e, -errno, "cannot open the root disk %.300s: %s", rootfs, strerror(errno));
	snprintf(mems, sizeof(mems), "%u", mem);
	snprintf(cpus, sizeof(cpus), "%u", vcpus);
	snprintf(vsockarg, sizeof(vsockarg), "%s", b->vsock);
	char *argv[24] = { "mitos-vmm", "run", "--seccomp", "--console-max-mib", CONSOLE_MAX_MIB, "--kernel", kernel,
			   "--cmdline", cmdline, "--mem", mems, "--vcpus", cpus, "--vsock", vsockarg,
			   "--control", b->control };
	int argc = 17;
	/* The build's TAP leads nowhere: only the device goes into the snapshot. */
	int tap_fd = -1;
	if (!rc && net && (tap_fd = sandbox_net_vm_tap(NULL, NULL, e)) < 0)
		rc = tap_fd;
	if (net) {
		argv[argc++] = "--net";
		argv[argc++] = "fd=" VM_TAP_FD_STR;
	}
	if (rootfs[0]) {
		argv[argc++] = "--disk";
		argv[argc++] = disk;
	}
	if (initrd[0]) {
		argv[argc++] = "--initrd";
		argv[argc++] = initrd;
	}
	argv[argc] = NULL;
	char name[64];
	snprintf(name, sizeof(name), "tpl-%d-%u", (int)getpid(), ++K.serial);
	struct jail jl;
	if (!rc && K.jail && !(rc = kvm_jail_prepare(dir, &jl, e))) {
		const char *given[] = { kernel, initrd };
		for (size_t i = 0; !rc && i < sizeof(given) / sizeof(given[0]); i++)
			if (given[i][0] && (rc = jail_add(&jl, given[i], false)))
				mitos_err_set(e, rc, "cannot give the VM %.300s: %s", given[i], strerror(-rc));
	}
	if (!rc)
		rc = kvm_vm_spawn(argv, b->console, name, &sh, K.jail ? &jl : NULL, disk_fd, tap_fd, &b->vp, e);
	if (disk_fd >= 0)
		close(disk_fd);
	if (tap_fd >= 0)
		close(tap_fd);
	if (rc) {
		teardown_tree(dir, NULL);
		free(b);
		return rc;
	}
	kvm_vm_record(dir, &b->vp, NULL, &sh);
	b->pidfd = fcntl(b->vp.pidfd, F_DUPFD_CLOEXEC, 3);
	b->boot_ms = (uint64_t)boot_s * 1000u;
	snprintf(b->warm, sizeof(b->warm), "%s", builtin ? g.warm : "");
	const cJSON *wl = cJSON_GetObjectItemCaseSensitive(spec, "workload");
	b->workload = wl ? cJSON_Duplicate(wl, 1) : NULL;
	b->done = done;
	b->ctx = ctx;
	snprintf(b->key, sizeof(b->key), "%s", key);
	b->k.run = build_run;
	b->k.complete = build_complete;
	b->next = K.builds;
	K.builds = b;
	kvm_submit(&b->k, LANE_LONG);
	return 0;
}

bool kvm_template_usable(const char *dir)
{
	char p[PLEN], rootfs[PLEN];
	struct vm_shape sh;
	if (kvm_pathf(p, "%s/snapshot/config.json", dir) || access(p, R_OK) || kvm_shape_read(dir, &sh, rootfs, sizeof(rootfs), NULL))
		return false;
	/* The pool for its shape is filled (and armed with it) once the loop runs. */
	if (!kvm_pathf(p, "%s/snapshot", dir))
		kvm_pool_arm(&sh, p);
	return true;
}

int kvm_template_shape(const char *dir, const cJSON *spec, unsigned *cpus, unsigned *mem_mib)
{
	(void)spec;
	char rootfs[PLEN];
	struct vm_shape sh;
	int rc = kvm_shape_read(dir, &sh, rootfs, sizeof(rootfs), NULL);
	if (!rc) {
		*cpus = sh.vcpus;
		*mem_mib = sh.mem_mib;
	}
	return rc;
}

void kvm_builds_kill(void)
{
	for (struct build *b = K.builds; b; b = b->next)
		syscall(SYS_pidfd_send_signal, b->vp.pidfd, SIGKILL, NULL, 0);
}
