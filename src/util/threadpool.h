/* A persistent pool of worker threads for data-parallel loops (matmul rows, attention heads).
 * Work is handed out as numbered items: each thread runs a contiguous share of them in order and
 * then takes over half of what another thread has left, so a thread that the OS delays (other
 * processes on the same cores) only holds back the item it is running: the others, the caller
 * included, take the rest. Workers spin briefly between jobs, then sleep. */
#ifndef PUNIE_UTIL_THREADPOOL_H
#define PUNIE_UTIL_THREADPOOL_H

typedef struct threadpool threadpool;
typedef void (*threadpool_fn)(void *arg, int part, int n_parts);
typedef void (*threadpool_item_fn)(void *arg, int item, int thread);

/* n_threads <= 0: one per online core. Returns NULL if threads cannot be created. */
threadpool *threadpool_new(int n_threads);
void threadpool_free(threadpool *p);
int threadpool_size(const threadpool *p);

/* Calls fn(arg, i, n) once for every i in [0, n) with n = the pool size and returns when all are
 * done. Each call may run on any thread (the caller included), never two with the same i at once,
 * so per-part scratch may be indexed by i. Not reentrant: one run at a time per pool. */
void threadpool_run(threadpool *p, threadpool_fn fn, void *arg);

/* Calls fn(arg, item, thread) once for every item in [0, n_items) (n_items < 2^24) and returns when
 * all are done; each thread takes its items in increasing order, in runs of consecutive ones; thread in [0, pool size) names the thread running the
 * item (per-thread scratch). Not reentrant. */
void threadpool_for(threadpool *p, threadpool_item_fn fn, void *arg, int n_items);

/* Number of online CPUs (at least 1). */
int cpu_count(void);

#endif
