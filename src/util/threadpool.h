/* A persistent pool of worker threads for data-parallel loops (matmul rows, attention heads).
 * threadpool_run calls fn(arg, i, n) once for every i in [0, n) with n = the pool size, the caller
 * taking i = 0, and returns when all are done. Workers spin briefly between jobs, then sleep. */
#ifndef PUNIE_UTIL_THREADPOOL_H
#define PUNIE_UTIL_THREADPOOL_H

typedef struct threadpool threadpool;
typedef void (*threadpool_fn)(void *arg, int thread, int n_threads);

/* n_threads <= 0: one per online core. Returns NULL if threads cannot be created. */
threadpool *threadpool_new(int n_threads);
void threadpool_free(threadpool *p);
int threadpool_size(const threadpool *p);

/* Not reentrant: one run at a time per pool (callers serialise). */
void threadpool_run(threadpool *p, threadpool_fn fn, void *arg);

/* Number of online CPUs (at least 1). */
int cpu_count(void);

#endif
