/* Time for measuring (monotonic seconds) and for waiting (deadlines of pthread_cond_timedwait,
 * which counts in CLOCK_REALTIME). */
#ifndef PUNIE_UTIL_CLOCK_H
#define PUNIE_UTIL_CLOCK_H

#include <time.h>

static inline double monotonic_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* The CLOCK_REALTIME instant ns nanoseconds from now. */
static inline struct timespec deadline_after(long ns)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += (t.tv_nsec + ns) / 1000000000L;
    t.tv_nsec = (t.tv_nsec + ns) % 1000000000L;
    return t;
}

#endif
