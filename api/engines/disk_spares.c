/* Formatted sandbox disks made ahead (disk_spares.h). The loop takes them; the
 * teardown thread makes them, one at a time, so the two meet only in this list. */
#include "api/engines/disk_spares.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/engines/teardown.h"

#define MAX_SPARES 8

static struct {
	pthread_mutex_t mu;
	char dir[1024], init[4096];
	unsigned mib, keep, serial;
	unsigned nready;
	char ready[MAX_SPARES][1100];
} S = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* `mitos-sandbox-init --format-disk IMG MIB`, stdio on /dev/null: 0 when it succeeded. */
static int format(const char *img)
{
	char mib[16];
	snprintf(mib, sizeof(mib), "%u", S.mib);
	char *argv[] = { "mitos-sandbox-init", "--format-disk", (char *)img, mib, NULL };
	char *envp[] = { NULL };
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	for (int fd = 0; fd < 3; fd++)
		posix_spawn_file_actions_addopen(&fa, fd, "/dev/null", O_RDWR, 0);
	pid_t pid;
	int rc = posix_spawn(&pid, S.init, &fa, NULL, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	if (rc)
		return -rc;
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

/* On the teardown thread: one more image, unless enough are ready. */
static void make_one(void *unused)
{
	(void)unused;
	char tmp[1100], img[1100];
	pthread_mutex_lock(&S.mu);
	bool enough = S.nready >= S.keep;
	unsigned n = ++S.serial;
	pthread_mutex_unlock(&S.mu);
	if (enough)
		return;
	snprintf(tmp, sizeof(tmp), "%s/.making-%u.img", S.dir, n);
	snprintf(img, sizeof(img), "%s/%d-%u.img", S.dir, (int)getpid(), n);
	if (format(tmp) || rename(tmp, img)) {
		/* Creates format their own meanwhile; the next take orders again. */
		unlink(tmp);
		return;
	}
	pthread_mutex_lock(&S.mu);
	if (S.nready < MAX_SPARES)
		strcpy(S.ready[S.nready++], img);
	else
		unlink(img);
	pthread_mutex_unlock(&S.mu);
}

int disk_spares_init(const char *state_dir, const char *init_path, unsigned mib, unsigned keep,
		     struct mitos_err *e)
{
	if (snprintf(S.dir, sizeof(S.dir), "%s/disk-spares", state_dir) >= (int)sizeof(S.dir) ||
	    snprintf(S.init, sizeof(S.init), "%s", init_path) >= (int)sizeof(S.init))
		return mitos_err_set(e, -ENAMETOOLONG, "the state dir's path is too long");
	/* An earlier serve's may be of another size: made anew. */
	teardown_tree(S.dir, NULL);
	if (mkdir(S.dir, 0700) < 0)
		return mitos_err_set(e, -errno, "cannot create %s: %s", S.dir, strerror(errno));
	S.mib = mib;
	S.keep = keep < MAX_SPARES ? keep : MAX_SPARES;
	for (unsigned i = 0; i < S.keep; i++)
		teardown_call(make_one, NULL);
	return 0;
}

int disk_spare_take(const char *path)
{
	int rc = -ENOENT;
	pthread_mutex_lock(&S.mu);
	while (S.nready && rc) {
		rc = rename(S.ready[--S.nready], path) ? -errno : 0;
		if (rc)
			unlink(S.ready[S.nready]);
	}
	pthread_mutex_unlock(&S.mu);
	if (S.keep)
		teardown_call(make_one, NULL);
	return rc;
}
