/* Reading a clock, once for everybody: nanoseconds and milliseconds as plain integers. */
#ifndef MITOS_LIB_CLOCK_H
#define MITOS_LIB_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t clock_ns_of(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CLOCK_MONOTONIC: intervals, deadlines, timestamps of one boot. */
static inline uint64_t mono_ns(void)
{
	return clock_ns_of(CLOCK_MONOTONIC);
}

static inline uint64_t mono_ms(void)
{
	return mono_ns() / 1000000u;
}

#endif
