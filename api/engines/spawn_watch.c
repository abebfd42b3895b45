#include "api/engines/spawn_watch.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/http/uring.h"

struct spawn_job {
	struct uop op;
	int pidfd;
	spawn_exited_fn exited;
	void *ctx;
};

static void job_exited(struct uop *op, int res, uint32_t flags)
{
	(void)res;
	(void)flags;
	struct spawn_job *j = (struct spawn_job *)op;
	siginfo_t si = { 0 };
	int status;
	if (waitid(P_PIDFD, (id_t)j->pidfd, &si, WEXITED) < 0)
		status = -errno;
	else if (si.si_code == CLD_EXITED)
		status = (si.si_status & 0xff) << 8;
	else
		status = si.si_status & 0x7f; /* killed: WIFSIGNALED, WTERMSIG */
	close(j->pidfd);
	j->exited(j->ctx, status);
	free(j);
}

int spawn_watch(const char *path, char *const argv[], int fd, const int *at, unsigned nat, spawn_exited_fn exited,
		void *ctx)
{
	struct spawn_job *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	for (int i = 0; i < 3; i++)
		posix_spawn_file_actions_addopen(&fa, i, "/dev/null", O_RDWR, 0);
	for (unsigned i = 0; fd >= 0 && i < nat; i++)
		posix_spawn_file_actions_adddup2(&fa, fd, at[i]);
	char *envp[] = { NULL };
	pid_t pid;
	int rc = -posix_spawn(&pid, path, &fa, NULL, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	j->pidfd = rc ? -1 : (int)syscall(SYS_pidfd_open, pid, 0);
	if (!rc && j->pidfd < 0) {
		rc = -errno;
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	if (rc) {
		free(j);
		return rc;
	}
	j->op.fn = job_exited;
	j->exited = exited;
	j->ctx = ctx;
	io_uring_prep_poll_add(ur_sqe(&j->op), j->pidfd, POLLIN);
	return 0;
}
