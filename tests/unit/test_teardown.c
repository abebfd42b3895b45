/* Teardown off the loop (api/engines/teardown.c): a tree's name is free at once, the
 * tree goes on the thread with what must happen first, calls run in order, exit
 * drains everything, and a crash's trash goes at the next start. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "api/engines/teardown.h"

static char state[256];

static void make_tree(const char *dir, int files)
{
	char p[512];
	ck_assert_int_eq(mkdir(dir, 0700), 0);
	snprintf(p, sizeof(p), "%s/sub", dir);
	ck_assert_int_eq(mkdir(p, 0700), 0);
	for (int i = 0; i < files; i++) {
		snprintf(p, sizeof(p), "%s/sub/f%d", dir, i);
		int fd = open(p, O_WRONLY | O_CREAT, 0600);
		ck_assert_int_ge(fd, 0);
		close(fd);
	}
}

static int entries(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static void setup(void)
{
	snprintf(state, sizeof(state), "/tmp/mitos-teardown-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(state));
}

static void cleanup(void)
{
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", state);
	ck_assert_int_eq(system(cmd), 0);
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char order[64];
static char first_saw[512];

static void note(void *arg)
{
	pthread_mutex_lock(&mu);
	strncat(order, arg, sizeof(order) - strlen(order) - 1);
	pthread_mutex_unlock(&mu);
}

static void first(const char *dir)
{
	/* It runs on the tree where it now is, before the removal. */
	char p[600];
	snprintf(p, sizeof(p), "%s/sub/f0", dir);
	snprintf(first_saw, sizeof(first_saw), "%s", access(p, F_OK) == 0 ? dir : "");
	note("F");
}

START_TEST(tree_name_free_at_once_and_removed_later)
{
	char dir[300];
	ck_assert_int_eq(teardown_init(state, NULL), 0);
	snprintf(dir, sizeof(dir), "%s/sandbox", state);
	make_tree(dir, 500);
	order[0] = first_saw[0] = 0;
	teardown_call(note, "A");
	teardown_tree(dir, first);
	teardown_call(note, "B");
	/* The name is free again at once: a sandbox of the same id may start. */
	struct stat st;
	ck_assert_int_eq(lstat(dir, &st), -1);
	make_tree(dir, 1);
	teardown_exit();
	ck_assert_str_eq(order, "AFB");
	ck_assert_ptr_nonnull(strstr(first_saw, "/trash/"));
	char trash[300];
	snprintf(trash, sizeof(trash), "%s/trash", state);
	ck_assert_int_eq(entries(trash), 0);
	ck_assert_int_eq(entries(dir), 1); /* the new one is untouched */
}
END_TEST

START_TEST(leftover_trash_goes_at_start)
{
	char p[300];
	snprintf(p, sizeof(p), "%s/trash", state);
	ck_assert_int_eq(mkdir(p, 0700), 0);
	snprintf(p, sizeof(p), "%s/trash/123-7", state);
	make_tree(p, 20);
	ck_assert_int_eq(teardown_init(state, NULL), 0);
	teardown_exit();
	snprintf(p, sizeof(p), "%s/trash", state);
	ck_assert_int_eq(entries(p), 0);
}
END_TEST

START_TEST(without_the_thread_it_happens_now)
{
	char dir[300];
	snprintf(dir, sizeof(dir), "%s/gone", state);
	make_tree(dir, 3);
	order[0] = first_saw[0] = 0;
	teardown_tree(dir, first);
	teardown_call(note, "C");
	struct stat st;
	ck_assert_int_eq(lstat(dir, &st), -1);
	ck_assert_str_eq(order, "FC");
	ck_assert_str_eq(first_saw, dir);
	teardown_tree(dir, NULL); /* already gone: nothing */
}
END_TEST

/* A writer of another uid (a VM's, whose directories these are) holding a directory of
 * the tree open and filling it as fast as it can: the removal still ends, and soon
 * (each directory becomes root's 0700 before it is emptied), deep chains included. */
static volatile int writer_stop;
static int writer_made;

static void *writer(void *arg)
{
	int fd = *(int *)arg;
	/* This thread only (the raw call): the rest of the test stays root. */
	if (syscall(SYS_setresgid, 4242, 4242, 4242) || syscall(SYS_setresuid, 4242, 4242, 4242))
		return NULL;
	char name[32];
	for (unsigned i = 0; !writer_stop; i++) {
		snprintf(name, sizeof(name), "x%u", i);
		if (mkdirat(fd, name, 0700) == 0)
			writer_made++;
		int sub = openat(fd, name, O_RDONLY | O_DIRECTORY);
		if (sub >= 0) {
			(void)!mkdirat(sub, "deeper", 0700);
			close(sub);
		}
	}
	return NULL;
}

START_TEST(a_writer_cannot_hold_the_removal)
{
	char dir[300], sub[320];
	snprintf(dir, sizeof(dir), "%s/vm", state);
	snprintf(sub, sizeof(sub), "%s/sub", dir);
	make_tree(dir, 10);
	ck_assert_int_eq(chown(dir, 4242, 4242), 0);
	ck_assert_int_eq(chown(sub, 4242, 4242), 0);
	int fd = open(sub, O_RDONLY | O_DIRECTORY);
	ck_assert_int_ge(fd, 0);
	writer_stop = 0;
	writer_made = 0;
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, writer, &fd), 0);
	while (writer_made < 100)
		usleep(1000);
	teardown_tree(dir, NULL);
	struct stat st;
	ck_assert_int_eq(lstat(dir, &st), -1);
	writer_stop = 1;
	pthread_join(th, NULL);
	close(fd);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("teardown");
	TCase *tc = tcase_create("teardown");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_add_test(tc, tree_name_free_at_once_and_removed_later);
	tcase_add_test(tc, leftover_trash_goes_at_start);
	tcase_add_test(tc, without_the_thread_it_happens_now);
	tcase_add_test(tc, a_writer_cannot_hold_the_removal);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
