/* Single-threaded epoll event loop: fd watches, one-shot timers, child exits.
 * Everything in the agent runs from these callbacks; nothing blocks for long. */
#ifndef MITOS_AGENT_LOOP_H
#define MITOS_AGENT_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct watch;
typedef void (*watch_fn)(struct watch *w, uint32_t events);

struct watch {
	int fd;
	uint32_t events;
	watch_fn fn;
	bool added;
};

struct timer;
typedef void (*timer_fn)(struct timer *t);

struct timer {
	uint64_t deadline_ms;
	timer_fn fn;
	bool armed;
	struct timer *prev, *next;
};

struct child;
typedef void (*child_fn)(struct child *c, int status);

struct child {
	pid_t pid;
	child_fn fn;
	struct child *next;
};

int loop_init(void);
/* Runs until loop_stop(); returns 0 or -errno from epoll. */
int loop_run(void);
void loop_stop(void);
uint64_t loop_now_ms(void);

int watch_add(struct watch *w, int fd, uint32_t events, watch_fn fn);
/* Changes the interest set; 0 parks the fd without removing it. */
int watch_set(struct watch *w, uint32_t events);
/* Safe to call from any callback, including for watches with events pending. */
void watch_del(struct watch *w);

void timer_arm(struct timer *t, uint64_t deadline_ms, timer_fn fn);
void timer_disarm(struct timer *t);

/* fn runs once when pid exits; children nobody watches (orphans re-parented to
 * us as PID 1, or processes already forgotten) are reaped silently. */
void child_watch(struct child *c, pid_t pid, child_fn fn);
void child_unwatch(struct child *c);

#endif
