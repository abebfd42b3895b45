/* The process engine's snapshots that outlive their sandbox (process_snapshot.h): a
 * copy of the frozen sandbox's disk image or writable layer, made by
 * `mitos-sandbox-init --copy-layer` (the one place a layer's copy is spelled) in a
 * process of its own, so the loop never waits for a disk's worth of copying. */
#include "api/engines/process_snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/engines/spawn_watch.h"

struct copy_job {
	char dir[4200];            /* the snapshot's: the init's error file (fd 5) is its start-error */
	engine_done_fn done;
	void *ctx;
};

static void copy_exited(void *ctx, int status)
{
	struct copy_job *j = ctx;
	int rc = status < 0 ? status : 0;
	if (!rc && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
		char msg[900];
		engine_start_error(j->dir, msg, sizeof(msg));
		fprintf(stderr, "mitos-vmm serve: a snapshot's copy failed: %s\n", msg[0] ? msg : "(no reason given)");
		rc = -EIO;
	} else if (!rc) {
		char err[4300];
		snprintf(err, sizeof(err), "%s/start-error", j->dir);
		unlink(err);
	}
	j->done(j->ctx, rc);
	free(j);
}

int process_snapshot_copy(const char *init_path, const char *from, pid_t pid, const char *snapdir, char *out,
			  size_t outlen, engine_done_fn done, void *ctx, struct mitos_err *e)
{
	char root[64];
	snprintf(root, sizeof(root), "/proc/%d/root", (int)pid);
	const char *base = strrchr(from, '/');
	int n = snprintf(out, outlen, "%s%s", snapdir, base ? base : "/layer");
	struct copy_job *j = calloc(1, sizeof(*j));
	if (!j || n < 0 || (size_t)n >= outlen) {
		free(j);
		return mitos_err_set(e, j ? -ENAMETOOLONG : -ENOMEM, "cannot prepare the snapshot's copy");
	}
	char err[4300];
	snprintf(j->dir, sizeof(j->dir), "%s", snapdir);
	snprintf(err, sizeof(err), "%s/start-error", snapdir);
	int efd = open(err, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (efd < 0) {
		int rc = mitos_err_set(e, -errno, "cannot create %.300s: %s", err, strerror(errno));
		free(j);
		return rc;
	}
	j->done = done;
	j->ctx = ctx;
	/* fds as the init expects them: 5 its error file, 6 its tools' output. */
	static const int at[] = { 5, 6 };
	char *argv[] = { "mitos-sandbox-init", "--copy-layer", (char *)from, out, root, NULL };
	int rc = spawn_watch(init_path, argv, efd, at, 2, copy_exited, j);
	close(efd);
	if (rc) {
		free(j);
		return mitos_err_set(e, rc, "cannot start the snapshot's copy: %s", strerror(-rc));
	}
	return 0;
}
