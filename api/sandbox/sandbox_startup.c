/* Start-up (state dir, engine), re-adoption of the sandboxes an earlier serve left
 * running, and shutdown. */
#include "api/sandbox/sandbox_internal.h"
#include "api/sandbox/templates.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/engines/images.h"
#include "api/engines/sandbox_net.h"
#include "api/sandbox/net_policy.h"
#include "api/engines/teardown.h"
#include "api/sandbox/registry.h"
#include "api/http/server.h"
#include "vmm/kvm_probe.h"
/* ---- start-up and shutdown ---- */

static int mkdir_p(const char *path)
{
	char tmp[1100];
	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int sandboxes_init(struct mitos_err *e)
{
	char why[700];
	struct mitos_err unavail = { 0 };
	bool kvm = srv_cfg.engine && !strcmp(srv_cfg.engine, "kvm");
	struct kvm_probe_result pr;
	memset(&pr, 0, sizeof(pr));
	if (!srv_cfg.engine || kvm)
		kvm_probe_run(&pr);
	if (kvm) {
		snprintf(why, sizeof(why), "requested with --engine kvm");
	} else if (!srv_cfg.engine && pr.hardware) {
		if (!engine_kvm_available(&unavail)) {
			kvm = true;
			snprintf(why, sizeof(why), "KVM runs guests on hardware here");
		} else {
			snprintf(why, sizeof(why), "KVM runs guests on hardware here, but %s", unavail.msg);
		}
	} else if (!srv_cfg.engine) {
		snprintf(why, sizeof(why), "%s", pr.reason);
	} else {
		snprintf(why, sizeof(why), "requested with --engine process");
	}
	if (kvm ? engine_kvm_available(&unavail) : engine_process_available(&unavail))
		return mitos_err_set(e, -ENODEV, "engine_unavailable: %s", unavail.msg);
	sb_eng = kvm ? &engine_kvm_ops : &engine_process_ops;
	int rc = images_init(srv_cfg.images_dir, srv_cfg.agent_path, kvm, e);
	if (rc)
		return rc;
	rc = mkdir_p(srv_cfg.state_dir);
	if (rc)
		return mitos_err_set(e, rc, "cannot create the state dir %s: %s", srv_cfg.state_dir, strerror(-rc));
	if ((rc = teardown_init(srv_cfg.state_dir, e)))
		return rc;
	char jail[1000] = "";
	rc = kvm ? engine_kvm_configure(srv_cfg.state_dir, srv_cfg.kvm_pool, !pr.hardware, jail, sizeof(jail), e)
		 : engine_process_configure(srv_cfg.agent_path, srv_cfg.state_dir, srv_cfg.token_file, jail,
					    sizeof(jail), e);
	if (rc)
		return rc;
	char real[1024];
	if (!realpath(srv_cfg.state_dir, real))
		snprintf(real, sizeof(real), "%s", srv_cfg.state_dir);
	char net[300] = "";
	if ((rc = sandbox_net_configure(real, srv_cfg.egress, srv_cfg.dns, srv_cfg.ndns, net, sizeof(net), e)))
		return rc;
	snprintf(sb_root, sizeof(sb_root), "%s/sandboxes", real);
	if ((rc = mkdir_p(sb_root)))
		return mitos_err_set(e, rc, "cannot create %s: %s", sb_root, strerror(-rc));
	if ((rc = templates_init(sb_eng, real, e)))
		return rc;
	printf("engine: %s (%s)\n", sb_eng->name, why);
	if (kvm) {
		if (!pr.hardware)
			printf("WARNING: KVM on this host is emulation-only (%s): only guests built for it run "
			       "(the test guest, the PVM kernel), slowly\n", pr.kvm_usable ? "no VT-x/AMD-V" : pr.kvm_error);
		printf("kvm isolation: %s\n", jail);
	} else {
		printf("WARNING: the process engine isolates sandboxes as a container does (namespaces, an "
		       "unprivileged user namespace, seccomp, cgroups), not a VM: they share this host's kernel, "
		       "whose bugs are a way out%s. Run untrusted code on the kvm engine.\n", images_host_root()
		       ? "; the 'python' template's root is this host's own / (read-only)" : "");
		if (!images_host_root())
			printf("template image: python = %s\n", images_root("python"));
		printf("sandbox limits: %s\n", jail);
	}
	printf("sandbox network: %s\n", net[0] ? net : "loopback only (--egress gives them more)");
	printf("state dir: %s\n", real);
	fflush(stdout);
	return 0;
}

/* Sandboxes a previous serve left running are taken over; the rest of what it
 * left is removed. */
static void adopt_all(void)
{
	DIR *d = opendir(sb_root);
	if (!d)
		return;
	unsigned adopted = 0, cleaned = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char dir[1400], path[1500];
		snprintf(dir, sizeof(dir), "%s/%s", sb_root, de->d_name);
		snprintf(path, sizeof(path), "%s/sandbox.json", dir);
		cJSON *o = registry_read_json(path);
		const char *id = o ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "id")) : NULL;
		const char *tpl = o ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "template")) : NULL;
		cJSON *jpid = o ? cJSON_GetObjectItem(o, "pid") : NULL;
		cJSON *jst = o ? cJSON_GetObjectItem(o, "start_time") : NULL;
		pid_t pid = cJSON_IsNumber(jpid) ? (pid_t)jpid->valuedouble : 0;
		uint64_t st = cJSON_IsNumber(jst) ? (uint64_t)jst->valuedouble : 0;
		int pidfd = engine_pidfd_of(pid, st);
		/* Paused without its processes (or on its way there, or back): its files are
		 * all there is of it. */
		bool cold = pidfd < 0 && cJSON_IsTrue(o ? cJSON_GetObjectItem(o, "cold") : NULL) &&
			    sb_eng->stop_keep_files;
		if (!id || strcmp(id, de->d_name) || !api_valid_id(id) || !tpl || (pidfd < 0 && !cold) ||
		    sandbox_find(id)) {
			if (pidfd >= 0) {
				struct engine_proc ep = { .pid = pid, .pidfd = pidfd, .start_time = st };
				sb_eng->kill(dir, &ep);
				close(pidfd);
			}
			sb_eng->cleanup(dir);
			cleaned++;
			cJSON_Delete(o);
			continue;
		}
		if (pidfd >= 0)
			fcntl(pidfd, F_SETFD, FD_CLOEXEC);
		struct sandbox *sb = sb_new(id);
		if (!sb) {
			if (pidfd >= 0)
				close(pidfd);
			cJSON_Delete(o);
			continue;
		}
		snprintf(sb->template_name, sizeof(sb->template_name), "%s", tpl);
		const char *par = cJSON_GetStringValue(cJSON_GetObjectItem(o, "parent"));
		if (par)
			snprintf(sb->parent, sizeof(sb->parent), "%s", par);
		cJSON *cm = cJSON_GetObjectItem(o, "created_ms"), *dm = cJSON_GetObjectItem(o, "deadline_ms");
		sb->created_ms = cJSON_IsNumber(cm) ? (uint64_t)cm->valuedouble : ur_wall_ms();
		sb->deadline_ms = cJSON_IsNumber(dm) ? (uint64_t)dm->valuedouble : ur_wall_ms();
		cJSON *fm = cJSON_GetObjectItem(o, "fork_time_ms");
		sb->fork_time_ms = cJSON_IsNumber(fm) ? fm->valuedouble : 0;
		cJSON *md = cJSON_GetObjectItem(o, "metadata");
		if (cJSON_IsObject(md))
			sb->metadata = cJSON_Duplicate(md, 1);
		struct net_policy np;
		if (!net_policy_from_json(cJSON_GetObjectItem(o, "network_policy"), &np))
			sb->net = net_policy_dup(&np);
		if (cold) {
			sb_eng->stop_keep_files(dir); /* what a serve that died meanwhile left */
			sb->state = SB_PAUSED;
			sb->cold = true;
			cJSON_Delete(o);
			sb_link(sb);
			adopted++;
			continue;
		}
		sb->proc.pid = pid;
		sb->proc.pidfd = pidfd;
		sb->proc.start_time = st;
		sb->proc.child = false;
		sb->adopted = true;
		sb->state = SB_STARTING;
		sb->start_deadline_ms = ur_now_ms() + START_TIMEOUT_MS;
		cJSON_Delete(o);
		sb_link(sb);
		sb_arm_exit(sb);
		struct mitos_err why = { 0 };
		int rc;
		if (sb_eng->adopt && (rc = sb_eng->adopt(dir, &sb->proc, &why))) {
			snprintf(sb->fail_reason, sizeof(sb->fail_reason), "cannot re-adopt it: %.300s", why.msg);
			sb_kill(sb, sb->fail_reason);
			cleaned++;
			continue;
		}
		/* A paused sandbox's agent cannot answer HELLO until it runs again;
		 * agent_ready() pauses it again. */
		sb_eng->resume(sb->dir, &sb->proc);
		rc = sb_connect(sb);
		if (rc) {
			snprintf(sb->fail_reason, sizeof(sb->fail_reason), "cannot reconnect to its agent: %s", strerror(-rc));
			sb_kill(sb, sb->fail_reason);
		}
		adopted++;
	}
	closedir(d);
	if (adopted || cleaned) {
		printf("re-adopted %u sandbox(es) left running by a previous serve; removed %u stale one(s)\n",
		       adopted, cleaned);
		fflush(stdout);
	}
}

void sandboxes_start(void)
{
	sb_ticker.fn = sb_tick;
	ur_add_ticker(&sb_ticker);
	adopt_all();
	if (sb_eng->started)
		sb_eng->started();
}

void sandboxes_shutdown(void)
{
	sb_shutting_down = true;
	if (sb_eng->shutdown)
		sb_eng->shutdown();
	for (struct sandbox *sb = sb_list, *next; sb; sb = next) {
		next = sb->next;
		sb->keep_files = false;
		sb_kill(sb, "the server is shutting down");
	}
}

bool sandboxes_idle(void)
{
	return !sb_list;
}

void sandboxes_exit(void)
{
	/* After the loop: whatever is left is killed and removed synchronously. */
	while (sb_list) {
		struct sandbox *sb = sb_list;
		if (sb->proc.pidfd >= 0 || sb->proc.pid > 0) {
			sb_eng->kill(sb->dir, &sb->proc);
			if (sb->proc.child && sb->proc.pidfd >= 0) {
				siginfo_t si;
				waitid(P_PIDFD, (id_t)sb->proc.pidfd, &si, WEXITED);
			}
		}
		sb->inflight = 0;
		sb_finish(sb);
	}
	for (struct sandbox *z = sb_zombies, *n; z; z = n) {
		n = z->next;
		cJSON_Delete(z->metadata);
		free(z->net);
		free(z);
	}
	sb_zombies = NULL;
	/* Builds still running end here, and call back while the templates exist. */
	if (sb_eng && sb_eng->exit)
		sb_eng->exit();
	templates_exit();
	/* Last: what the above queued is removed (and its VMs reaped) before serve exits. */
	teardown_exit();
	sandbox_net_exit();
}

