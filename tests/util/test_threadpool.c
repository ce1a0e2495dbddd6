/* The thread pool: every item runs exactly once per job, on a valid thread, for item counts from 1
 * to thousands and pools of 1 to 8 threads; jobs follow each other back to back (a late worker must
 * not run an item of the next job with the old function); a delayed thread's share is taken over by
 * the others. */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define CHECK_REPORT_MAX 20
#include "../lib/test_util.h"
#include "util/threadpool.h"

#define MAX_ITEMS 5000

struct job {
    atomic_int runs[MAX_ITEMS];
    atomic_int bad_thread;
    int n_threads;
    int job_id;
    atomic_int wrong_job; /* items that saw another job's argument */
    int slow_thread;      /* this thread sleeps on its first item (-1: none) */
    atomic_int ran_by[64];
};

static int current_job;

static void item_fn(void *arg, int item, int thread)
{
    struct job *j = arg;
    if (j->job_id != current_job)
        atomic_fetch_add(&j->wrong_job, 1);
    if (thread < 0 || thread >= j->n_threads) {
        atomic_fetch_add(&j->bad_thread, 1);
        return;
    }
    atomic_fetch_add(&j->runs[item], 1);
    atomic_fetch_add(&j->ran_by[thread], 1);
    if (thread == j->slow_thread && j->ran_by[thread] == 1) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void run_job(threadpool *p, struct job *j, int n_items, int slow)
{
    memset(j, 0, sizeof *j);
    j->n_threads = threadpool_size(p);
    j->job_id = ++current_job;
    j->slow_thread = slow;
    threadpool_for(p, item_fn, j, n_items);
    int missing = 0, twice = 0;
    for (int i = 0; i < n_items; i++) {
        missing += j->runs[i] == 0;
        twice += j->runs[i] > 1;
    }
    CHECK(missing == 0 && twice == 0, "%d threads, %d items: %d never ran, %d ran more than once",
          j->n_threads, n_items, missing, twice);
    CHECK(j->bad_thread == 0, "%d threads: %d items got a thread index out of range", j->n_threads,
          (int)j->bad_thread);
    CHECK(j->wrong_job == 0, "%d items ran with another job's argument", (int)j->wrong_job);
}

static struct job job;

int main(void)
{
    for (int n_threads = 1; n_threads <= 8; n_threads++) {
        threadpool *p = threadpool_new(n_threads);
        CHECK(p != NULL, "threadpool_new(%d)", n_threads);
        if (!p)
            continue;
        CHECK(threadpool_size(p) == n_threads, "size %d, want %d", threadpool_size(p), n_threads);
        const int counts[] = {1, 2, 3, 7, 16, 63, 100, 1000, MAX_ITEMS};
        for (int rep = 0; rep < 3; rep++)
            for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++)
                run_job(p, &job, counts[c], -1);
        /* many small jobs back to back: late workers meet newer generations */
        for (int rep = 0; rep < 2000; rep++)
            run_job(p, &job, 1 + rep % 9, -1);
        /* a thread that stalls on its first item: the others take over the rest of its share */
        if (n_threads > 1) {
            run_job(p, &job, 400, 0);
            const int slow_share = 400 / n_threads;
            CHECK(job.ran_by[0] < slow_share, "%d threads: the stalled caller still ran %d of its %d items",
                  n_threads, (int)job.ran_by[0], slow_share);
            run_job(p, &job, 400, n_threads - 1);
        }
        threadpool_free(p);
    }
    return test_result("all thread pool checks passed");
}
