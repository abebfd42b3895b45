#include "agent/loop.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "lib/clock.h"

#define MAX_EVENTS 64

static int epfd = -1;
static bool stopping;
static struct timer *timers;
static struct child *children;
static struct watch signal_watch;
/* Events of the batch being dispatched, so watch_del can cancel pending ones. */
static struct epoll_event batch[MAX_EVENTS];
static int batch_n, batch_i;

uint64_t loop_now_ms(void)
{
	return mono_ms();
}

static void cancel_pending(struct watch *w)
{
	for (int i = batch_i; i < batch_n; i++)
		if (batch[i].data.ptr == w)
			batch[i].data.ptr = NULL;
}

int watch_add(struct watch *w, int fd, uint32_t events, watch_fn fn)
{
	struct epoll_event ev = { .events = events, .data.ptr = w };
	w->fd = fd;
	w->fn = fn;
	w->events = events;
	if (events && epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	w->added = true;
	return 0;
}

int watch_set(struct watch *w, uint32_t events)
{
	if (!w->added)
		return -EINVAL;
	if (w->events == events)
		return 0;
	/* A parked fd leaves the epoll set entirely: epoll reports ERR/HUP even
	 * with an empty interest mask, which would spin a level-triggered loop. */
	struct epoll_event ev = { .events = events, .data.ptr = w };
	int op = !events ? EPOLL_CTL_DEL : !w->events ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
	if (epoll_ctl(epfd, op, w->fd, &ev) < 0)
		return -errno;
	w->events = events;
	if (!events)
		cancel_pending(w);
	return 0;
}

void watch_del(struct watch *w)
{
	if (!w->added)
		return;
	if (w->events)
		epoll_ctl(epfd, EPOLL_CTL_DEL, w->fd, NULL);
	w->added = false;
	cancel_pending(w);
}

void timer_arm(struct timer *t, uint64_t deadline_ms, timer_fn fn)
{
	timer_disarm(t);
	t->deadline_ms = deadline_ms;
	t->fn = fn;
	t->armed = true;
	t->prev = NULL;
	t->next = timers;
	if (timers)
		timers->prev = t;
	timers = t;
}

void timer_disarm(struct timer *t)
{
	if (!t->armed)
		return;
	if (t->prev)
		t->prev->next = t->next;
	else
		timers = t->next;
	if (t->next)
		t->next->prev = t->prev;
	t->armed = false;
}

void child_watch(struct child *c, pid_t pid, child_fn fn)
{
	c->pid = pid;
	c->fn = fn;
	c->next = children;
	children = c;
}

void child_unwatch(struct child *c)
{
	for (struct child **pp = &children; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			return;
		}
	}
}

static void on_signal(struct watch *w, uint32_t events)
{
	struct signalfd_siginfo si;
	(void)events;
	while (read(w->fd, &si, sizeof(si)) == sizeof(si))
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
			loop_stop(); /* main then kills what we started (and powers off as PID 1) */
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid <= 0)
			return;
		for (struct child *c = children; c; c = c->next) {
			if (c->pid == pid) {
				child_unwatch(c);
				c->fn(c, status);
				break;
			}
		}
	}
}

int loop_init(void)
{
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
		return -errno;
	signal(SIGPIPE, SIG_IGN);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0)
		return -errno;
	int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sfd < 0)
		return -errno;
	return watch_add(&signal_watch, sfd, EPOLLIN, on_signal);
}

void loop_stop(void)
{
	stopping = true;
}

static void run_timers(void)
{
	uint64_t now = loop_now_ms();
	/* Restart the scan after each callback: it may arm or disarm any timer. */
	for (struct timer *t = timers; t;) {
		if (t->deadline_ms <= now) {
			timer_disarm(t);
			t->fn(t);
			t = timers;
		} else {
			t = t->next;
		}
	}
}

static int next_timeout(void)
{
	if (!timers)
		return -1;
	uint64_t now = loop_now_ms(), min = UINT64_MAX;
	for (struct timer *t = timers; t; t = t->next)
		if (t->deadline_ms < min)
			min = t->deadline_ms;
	return min <= now ? 0 : (int)(min - now > 60000 ? 60000 : min - now);
}

int loop_run(void)
{
	stopping = false;
	while (!stopping) {
		int n = epoll_wait(epfd, batch, MAX_EVENTS, next_timeout());
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		batch_n = n;
		for (batch_i = 0; batch_i < batch_n; batch_i++) {
			struct watch *w = batch[batch_i].data.ptr;
			if (w) {
				batch[batch_i].data.ptr = NULL;
				w->fn(w, batch[batch_i].events);
			}
		}
		batch_n = 0;
		run_timers();
	}
	return 0;
}
