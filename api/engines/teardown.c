/* Teardown off serve's event loop (teardown.h). A sandbox's writable layer can hold
 * a million files and a fork layer gigabytes of memory: removing them, or waiting for
 * a killed VM to free its memory, on the loop would stall every other request. */
#include "api/engines/teardown.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct td_item {
	void (*first)(const char *dir);   /* with a tree */
	void (*fn)(void *arg);            /* or a call */
	void *arg;
	struct td_item *next;
	char path[];                      /* the tree's place in the trash, "" for a call */
};

static struct {
	char trash[1024];
	pthread_t th;
	bool running, stopping;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct td_item *head, *tail;
	unsigned serial;
} T = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

/* Entries one removal handles at most: a tree that a live VM (its directories are its
 * uid's) keeps filling must not hold the one teardown thread, and every other tenant's
 * teardown behind it, for as long as the VM likes. What is left stays in the trash. */
#define REMOVE_BUDGET (4u << 20)

/* A directory about to be emptied becomes root's and 0700 first: from then on nobody
 * else adds to it, not even through a descriptor held since before (where the file
 * system lets root do so; else it is emptied as it is, within the budget). */
static int open_frozen(int at, const char *name, dev_t dev, struct stat *st)
{
	int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0 && (fstat(fd, st) < 0 || (dev && st->st_dev != dev))) {
		close(fd);
		return -1;
	}
	if (fd >= 0 && (st->st_uid || st->st_gid || (st->st_mode & 0077)) && !fchown(fd, 0, 0))
		(void)!fchmod(fd, 0700);
	return fd;
}

/* Empties top's child name (a directory) by one level: its files go, its empty
 * directories go, a fuller one is moved up into top to be emptied in its turn, so no
 * path is ever longer than two names (a sandbox can make a tree deeper than PATH_MAX,
 * which path-based removal cannot reach) and no descent deeper than one. Nothing on
 * another file system than dev is touched. True when it moved something into top;
 * *budget counts the entries handled. */
static bool flatten_child(int top, const char *name, dev_t dev, unsigned *budget)
{
	struct stat st;
	int fd = open_frozen(top, name, dev, &st);
	if (fd < 0)
		return false;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return false;
	}
	bool moved = false;
	struct dirent *de;
	while (*budget && (de = readdir(d))) {
		--*budget;
		const char *n = de->d_name;
		if (!strcmp(n, ".") || !strcmp(n, "..") || !unlinkat(fd, n, 0) || errno != EISDIR ||
		    !unlinkat(fd, n, AT_REMOVEDIR))
			continue;
		/* Either thread may remove a tree (the loop when none is queued). */
		static unsigned serial;
		char up[32];
		int rc;
		do {
			snprintf(up, sizeof(up), ".flat-%u", __atomic_add_fetch(&serial, 1, __ATOMIC_RELAXED));
			rc = renameat2(fd, n, top, up, RENAME_NOREPLACE);
		} while (rc < 0 && errno == EEXIST);
		moved |= rc == 0;
	}
	closedir(d);
	unlinkat(top, name, AT_REMOVEDIR);
	return moved;
}

/* dir and everything under it, not crossing mounts; -ENOTEMPTY if it stays. */
static int remove_now(const char *dir)
{
	struct stat st;
	/* Again if something was created in it meanwhile (a dying VM's last console line). */
	for (int pass = 0; pass < 3; pass++) {
		if (!unlink(dir) || errno == ENOENT)
			return 0;
		int top = open_frozen(AT_FDCWD, dir, 0, &st);
		if (top < 0)
			return -errno;
		/* Until a whole pass over top moves nothing up into it, or the budget is spent. */
		unsigned budget = REMOVE_BUDGET;
		for (bool again = true; again && budget;) {
			again = false;
			DIR *d = fdopendir(dup(top));
			struct dirent *de;
			if (d)
				rewinddir(d); /* the copy shares top's offset, left at the end by the last pass */
			while (d && budget && (de = readdir(d))) {
				budget--;
				if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") &&
				    (unlinkat(top, de->d_name, 0) < 0 && errno == EISDIR))
					again |= flatten_child(top, de->d_name, st.st_dev, &budget);
			}
			if (d)
				closedir(d);
		}
		if (!budget) {
			close(top);
			return -EBUSY;
		}
		close(top);
		if (!rmdir(dir) || errno == ENOENT)
			return 0;
	}
	return -ENOTEMPTY;
}

static void run_item(struct td_item *it)
{
	if (it->fn) {
		it->fn(it->arg);
		return;
	}
	if (it->first)
		it->first(it->path);
	if (remove_now(it->path))
		fprintf(stderr, "mitos-vmm serve: cannot remove %s (it stays in the trash until the next start)\n",
			it->path);
}

static void *td_main(void *unused)
{
	(void)unused;
	pthread_mutex_lock(&T.mu);
	for (;;) {
		while (!T.head && !T.stopping)
			pthread_cond_wait(&T.cv, &T.mu);
		struct td_item *it = T.head;
		if (!it)
			break;
		T.head = it->next;
		if (!T.head)
			T.tail = NULL;
		pthread_mutex_unlock(&T.mu);
		run_item(it);
		free(it);
		pthread_mutex_lock(&T.mu);
	}
	pthread_mutex_unlock(&T.mu);
	return NULL;
}

/* Queues it, or runs it here when no thread takes it. */
static void enqueue(struct td_item *it)
{
	pthread_mutex_lock(&T.mu);
	bool queued = T.running && !T.stopping;
	if (queued) {
		it->next = NULL;
		if (T.tail)
			T.tail->next = it;
		else
			T.head = it;
		T.tail = it;
		pthread_cond_signal(&T.cv);
	}
	pthread_mutex_unlock(&T.mu);
	if (!queued) {
		run_item(it);
		free(it);
	}
}

static struct td_item *item_new(const char *path)
{
	size_t n = strlen(path) + 1;
	struct td_item *it = calloc(1, sizeof(*it) + n);
	if (it)
		memcpy(it->path, path, n);
	return it;
}

void teardown_tree(const char *dir, void (*first)(const char *dir))
{
	char to[1100];
	struct stat st;
	if (lstat(dir, &st) < 0)
		return;
	bool moved = false;
	if (T.running && snprintf(to, sizeof(to), "%s/%d-%u", T.trash, (int)getpid(), ++T.serial) < (int)sizeof(to))
		moved = rename(dir, to) == 0;
	struct td_item *it = item_new(moved ? to : dir);
	if (!it) {
		if (first)
			first(moved ? to : dir);
		remove_now(moved ? to : dir);
		return;
	}
	it->first = first;
	if (moved)
		enqueue(it);
	else {
		run_item(it);
		free(it);
	}
}

void teardown_call(void (*fn)(void *arg), void *arg)
{
	struct td_item *it = item_new("");
	if (!it) {
		fn(arg);
		return;
	}
	it->fn = fn;
	it->arg = arg;
	enqueue(it);
}

int teardown_init(const char *state_dir, struct mitos_err *e)
{
	if (snprintf(T.trash, sizeof(T.trash), "%s/trash", state_dir) >= (int)sizeof(T.trash))
		return mitos_err_set(e, -ENAMETOOLONG, "the state dir's path is too long");
	if (mkdir(T.trash, 0700) < 0 && errno != EEXIST)
		return mitos_err_set(e, -errno, "cannot create %s: %s", T.trash, strerror(errno));
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	int rc = pthread_create(&T.th, NULL, td_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc)
		return mitos_err_set(e, -rc, "cannot start the teardown thread: %s", strerror(rc));
	T.running = true;
	T.stopping = false;
	/* What a crashed serve renamed and never removed. */
	DIR *d = opendir(T.trash);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		char p[1100];
		if (de->d_name[0] == '.' || snprintf(p, sizeof(p), "%s/%s", T.trash, de->d_name) >= (int)sizeof(p))
			continue;
		struct td_item *it = item_new(p);
		if (it)
			enqueue(it);
	}
	if (d)
		closedir(d);
	return 0;
}

void teardown_exit(void)
{
	if (!T.running)
		return;
	pthread_mutex_lock(&T.mu);
	T.stopping = true;
	pthread_cond_signal(&T.cv);
	pthread_mutex_unlock(&T.mu);
	pthread_join(T.th, NULL);
	T.running = false;
}
