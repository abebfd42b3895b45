/* Prepared VMs (`mitos-vmm vm`: a KVM VM, vCPUs and a RAM reservation made ahead),
 * a small pool per VM shape, refilled from the event loop. */
#include "api/engines/kvm_internal.h"

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
#include "api/http/uring.h"
#include "vmm/control.h"
/* ---- the pool of prepared VMs ---- */

static bool shape_eq(const struct vm_shape *a, const struct vm_shape *b)
{
	return a->mem_mib == b->mem_mib && a->vcpus == b->vcpus && a->lim.memory_max_mib == b->lim.memory_max_mib &&
	       a->lim.cpu_percent == b->lim.cpu_percent;
}

struct shape_pool *kvm_pool_for(const struct vm_shape *sh, bool add)
{
	struct shape_pool *free_slot = NULL;
	for (int i = 0; i < MAX_SHAPES; i++) {
		if (K.pools[i].used && shape_eq(&K.pools[i].sh, sh))
			return &K.pools[i];
		if (!K.pools[i].used && !free_slot)
			free_slot = &K.pools[i];
	}
	if (!add || !free_slot)
		return NULL;
	memset(free_slot, 0, sizeof(*free_slot));
	free_slot->used = true;
	free_slot->sh = *sh;
	return free_slot;
}

void kvm_pool_arm(const struct vm_shape *sh, const char *snapshot)
{
	struct shape_pool *sp = kvm_pool_for(sh, true);
	if (sp && strlen(snapshot) < sizeof(sp->arm))
		strcpy(sp->arm, snapshot);
}

/* argv of `mitos-vmm vm` for sh, with its control socket and console in dir, armed with
 * the snapshot arm ("" for none). */
struct vm_argv {
	char *v[18];
	char ctl[PLEN], mem[16], cpus[16], console[PLEN];
};

static int vm_argv_make(struct vm_argv *a, const char *dir, const struct vm_shape *sh, const char *arm)
{
	if (kvm_pathf(a->ctl, "%s/control", dir) || kvm_pathf(a->console, "%s/console.log", dir) || strlen(a->ctl) > SOCK_MAX)
		return -ENAMETOOLONG;
	snprintf(a->mem, sizeof(a->mem), "%u", sh->mem_mib);
	snprintf(a->cpus, sizeof(a->cpus), "%u", sh->vcpus);
	char *v[] = { "mitos-vmm", "vm", "--seccomp", "--control", a->ctl, "--mem", a->mem, "--vcpus", a->cpus,
		      "--console", a->console, "--console-max-mib", CONSOLE_MAX_MIB, NULL, NULL, NULL };
	memcpy(a->v, v, sizeof(v));
	if (arm[0]) {
		a->v[13] = "--arm";
		a->v[14] = (char *)arm;
	}
	return 0;
}

/* Makes dir and spawns a `mitos-vmm vm` of sh there, armed with arm ("" for none). */
static int vm_start(const char *dir, const struct vm_shape *sh, const char *arm, struct vm_proc *vp,
		    struct mitos_err *e)
{
	char files[PLEN], name[64];
	struct vm_argv a;
	struct jail jl;
	int rc = kvm_vm_files(dir, files);
	if (!rc)
		rc = vm_argv_make(&a, files, sh, arm);
	if (rc)
		return mitos_err_set(e, rc, "the path %.200s is too long for a VM's sockets", dir);
	if (mkdir(dir, 0700) < 0)
		return mitos_err_set(e, -errno, "cannot make %.200s: %s", dir, strerror(errno));
	if (K.jail && !(rc = kvm_jail_prepare(dir, &jl, e)) && arm[0] && (rc = jail_add(&jl, arm, false)))
		mitos_err_set(e, rc, "cannot give a VM the snapshot %.200s: %s", arm, strerror(-rc));
	snprintf(name, sizeof(name), "%s", strrchr(dir, '/') + 1);
	if (rc || (rc = kvm_vm_spawn(a.v, a.console, name, sh, K.jail ? &jl : NULL, -1, -1, vp, e))) {
		teardown_tree(dir, NULL);
		return rc;
	}
	kvm_vm_record(dir, vp, NULL, sh);
	return 0;
}

static int pool_spawn(struct shape_pool *sp, struct mitos_err *e)
{
	struct pool_vm *pv = calloc(1, sizeof(*pv));
	if (!pv)
		return -ENOMEM;
	int rc = kvm_pathf(pv->dir, "%s/vm-%d-%u", K.pool_dir, (int)getpid(), ++K.serial);
	if (!rc)
		rc = vm_start(pv->dir, &sp->sh, sp->arm, &pv->p, e);
	if (rc) {
		free(pv);
		return rc;
	}
	/* Oldest first: it is the likeliest to be prepared when taken. */
	struct pool_vm **pp = &sp->idle;
	while (*pp)
		pp = &(*pp)->next;
	*pp = pv;
	sp->nidle++;
	return 0;
}

void kvm_pool_drop(struct shape_pool *sp, struct pool_vm *pv)
{
	for (struct pool_vm **pp = &sp->idle; *pp; pp = &(*pp)->next)
		if (*pp == pv) {
			*pp = pv->next;
			sp->nidle--;
			break;
		}
	kvm_vm_reap_later(&pv->p);
	teardown_tree(pv->dir, NULL);
	free(pv);
}

/* Idle VMs that died (a host problem: /dev/kvm, memory) are replaced, with a growing
 * pause between attempts so a broken host is not hammered. */
static void pool_check(void)
{
	for (int i = 0; i < MAX_SHAPES; i++) {
		struct shape_pool *sp = &K.pools[i];
		for (struct pool_vm *pv = sp->idle, *n; sp->used && pv; pv = n) {
			n = pv->next;
			if (!pidfd_exited(pv->p.pidfd))
				continue;
			char files[PLEN], path[PLEN], tail[300];
			kvm_vm_files(pv->dir, files);
			kvm_pathf(path, "%s/console.log", files);
			kvm_console_tail(path, tail, sizeof(tail));
			sp->fails++;
			unsigned backoff = sp->fails > 5 ? 30000u : 500u << sp->fails;
			sp->retry_at_ms = ur_mono_ms() + backoff;
			fprintf(stderr, "mitos-vmm serve: a prepared VM (%u MiB, %u vCPU) exited: %s\n",
				sp->sh.mem_mib, sp->sh.vcpus, tail[0] ? tail : "no message");
			kvm_pool_drop(sp, pv);
		}
	}
}

void kvm_pool_fill(void)
{
	if (K.stopping)
		return;
	unsigned spawned = 0;
	uint64_t now = ur_mono_ms();
	for (int i = 0; i < MAX_SHAPES && spawned < SPAWN_PER_TICK; i++) {
		struct shape_pool *sp = &K.pools[i];
		while (sp->used && sp->nidle < K.pool_size && now >= sp->retry_at_ms && spawned < SPAWN_PER_TICK) {
			struct mitos_err e = { 0 };
			if (pool_spawn(sp, &e)) {
				fprintf(stderr, "mitos-vmm serve: cannot prepare a VM: %s\n", e.msg);
				sp->retry_at_ms = now + 5000;
				break;
			}
			spawned++;
		}
	}
}

void kvm_refill_kick(struct ur_kick *k)
{
	(void)k;
	kvm_pool_fill();
}

void kvm_pool_tick(struct ur_ticker *t, uint64_t now)
{
	(void)t; (void)now;
	pool_check();
	kvm_pool_fill();
}

/* A VM for a new sandbox in sbdir: a prepared one moved over (its control socket and
 * console renamed into sbdir, or with K.jail left in its own directory for the restore
 * to claim), or a new one started there. */
int kvm_vm_take(const struct vm_shape *sh, const char *sbdir, struct vm_proc *vp, char *vmdir,
		struct mitos_err *e)
{
	vmdir[0] = 0;
	struct shape_pool *sp = kvm_pool_for(sh, true);
	for (struct pool_vm *pv = sp ? sp->idle : NULL, *n; pv; pv = n) {
		n = pv->next;
		char files[PLEN], from[PLEN], to[PLEN], cfrom[PLEN], cto[PLEN];
		if (kvm_vm_files(pv->dir, files) || kvm_pathf(from, "%s/control", files))
			continue;
		/* Still being prepared: leave it for the next one. */
		if (!kvm_is_socket(from))
			continue;
		if (pidfd_exited(pv->p.pidfd)) {
			kvm_pool_drop(sp, pv);
			continue;
		}
		if (!K.jail && (kvm_pathf(to, "%s/control", sbdir) || kvm_pathf(cfrom, "%s/console.log", pv->dir) ||
				kvm_pathf(cto, "%s/console.log", sbdir) || rename(from, to) < 0))
			continue;
		if (K.jail)
			strcpy(vmdir, pv->dir);
		else
			rename(cfrom, cto);
		for (struct pool_vm **pp = &sp->idle; *pp; pp = &(*pp)->next)
			if (*pp == pv) {
				*pp = pv->next;
				sp->nidle--;
				break;
			}
		*vp = pv->p;
		if (!K.jail)
			teardown_tree(pv->dir, NULL);
		free(pv);
		sp->fails = 0;
		ur_kick(&K.refill);
		return 0;
	}
	if (sp)
		ur_kick(&K.refill);
	/* Asked for now: arming ahead would gain nothing. */
	if (!K.jail) {
		struct vm_argv a;
		char name[64];
		if (vm_argv_make(&a, sbdir, sh, ""))
			return mitos_err_set(e, -ENAMETOOLONG, "the sandbox's path %.200s is too long for its sockets",
					     sbdir);
		snprintf(name, sizeof(name), "vm-%d-%u", (int)getpid(), ++K.serial);
		return kvm_vm_spawn(a.v, a.console, name, sh, NULL, -1, -1, vp, e);
	}
	int rc = kvm_pathf(vmdir, "%s/vm-%d-%u", K.pool_dir, (int)getpid(), ++K.serial);
	if (!rc)
		rc = vm_start(vmdir, sh, "", vp, e);
	if (rc)
		vmdir[0] = 0;
	return rc;
}
