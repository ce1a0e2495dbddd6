/* Dispatch gives every thread a contiguous range of the items and publishes a generation number.
 * A thread runs its own range from the front, in order, so that consecutive items (adjacent weight
 * rows in a matmul) stream through one core and its prefetches run on into the next item; a thread
 * whose range is empty takes the back half of the largest range left and goes on with that. Each
 * range is one 64-bit word: generation (16 bits), end (24) and next item (24), changed only by
 * compare-and-swap, so a thread that wakes late can never claim an item of a newer job with an older
 * job's function, and every item runs exactly once. The caller claims items too and returns once
 * every item is done; it never waits for a worker that has not started, which matters when the pool
 * shares its cores with other processes. Workers spin for a short while between jobs (a decode step
 * dispatches every few hundred microseconds) and then sleep on a condition variable so that idle
 * pools do not burn CPU. */
#include "util/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SPIN_ITERS 8000

#define GEN_SHIFT 48
#define END_SHIFT 24
#define FIELD_MASK 0xffffffu

/* one range per thread, each on its own cache line */
struct range {
    _Alignas(64) _Atomic uint64_t w;
};

struct threadpool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    threadpool_item_fn fn;
    void *arg;
    struct range *ranges; /* [n] */
    /* Each on a cache line of its own: idle workers poll `work` and the caller polls `done`, so
     * sharing a line with anything written during a job makes every write bounce between cores. */
    _Alignas(64) _Atomic uint64_t work; /* the generation of the current job (in the GEN_SHIFT bits) */
    _Alignas(64) atomic_int done;       /* items finished, added by each thread as it runs out */
    atomic_int sleepers;
    atomic_bool stop;
};

struct worker_arg {
    threadpool *p;
    int idx;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

int cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

static inline unsigned word_gen(uint64_t w) { return (unsigned)(w >> GEN_SHIFT); }

static inline uint64_t range_word(unsigned gen, unsigned next, unsigned end)
{
    return ((uint64_t)gen << GEN_SHIFT) | ((uint64_t)end << END_SHIFT) | next;
}
static inline unsigned range_next(uint64_t w) { return (unsigned)w & FIELD_MASK; }
static inline unsigned range_end(uint64_t w) { return (unsigned)(w >> END_SHIFT) & FIELD_MASK; }

/* Claims the next item of range r for generation gen; -1 when the range is empty or older. */
static int claim_front(struct range *r, unsigned gen)
{
    uint64_t w = atomic_load_explicit(&r->w, memory_order_acquire);
    for (;;) {
        if (word_gen(w) != gen || range_next(w) >= range_end(w))
            return -1;
        if (atomic_compare_exchange_weak_explicit(&r->w, &w, w + 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            return (int)range_next(w);
    }
}

/* Moves the back half of the largest range of generation gen into range `own` (empty, owned by the
 * caller). Returns false when no items are left. */
static bool steal(threadpool *p, unsigned gen, int own)
{
    for (;;) {
        int victim = -1;
        unsigned most = 0;
        uint64_t vw = 0;
        for (int t = 0; t < p->n; t++) {
            const uint64_t w = atomic_load_explicit(&p->ranges[t].w, memory_order_acquire);
            if (t == own || word_gen(w) != gen || range_next(w) >= range_end(w))
                continue;
            if (range_end(w) - range_next(w) > most) {
                most = range_end(w) - range_next(w);
                victim = t;
                vw = w;
            }
        }
        if (victim < 0)
            return false;
        const unsigned next = range_next(vw), end = range_end(vw), mid = next + (end - next) / 2;
        if (!atomic_compare_exchange_strong_explicit(&p->ranges[victim].w, &vw, range_word(gen, next, mid),
                                                     memory_order_acq_rel, memory_order_acquire))
            continue; /* the range changed meanwhile: look again */
        /* [mid, end) is ours now; our own word is empty, so no other thread changes it */
        atomic_store_explicit(&p->ranges[own].w, range_word(gen, mid, end), memory_order_release);
        return true;
    }
}

/* Claims and runs items of generation gen until none is left. */
static void drain(threadpool *p, unsigned gen, int idx)
{
    int ran = 0;
    for (;;) {
        const int item = claim_front(&p->ranges[idx], gen);
        if (item < 0) {
            if (!steal(p, gen, idx))
                break;
            continue;
        }
        /* The job cannot finish before this thread reports its items, so fn and arg are still
         * this job's. */
        p->fn(p->arg, item, idx);
        ran++;
    }
    if (ran)
        atomic_fetch_add_explicit(&p->done, ran, memory_order_release);
}

static void *worker_main(void *v)
{
    struct worker_arg *wa = v;
    threadpool *p = wa->p;
    int idx = wa->idx;
    free(wa);
    unsigned seen = 0; /* the first job is generation 1 */
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = word_gen(atomic_load_explicit(&p->work, memory_order_acquire))) == seen &&
               !atomic_load_explicit(&p->stop, memory_order_relaxed)) {
            if (++spins < SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (word_gen(atomic_load(&p->work)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load(&p->stop))
            return NULL;
        seen = g;
        drain(p, g, idx);
    }
}

threadpool *threadpool_new(int n_threads)
{
    if (n_threads <= 0)
        n_threads = cpu_count();
    /* sizeof is a multiple of the 64-byte alignment of its members */
    threadpool *p = aligned_alloc(_Alignof(threadpool), sizeof *p);
    if (!p)
        return NULL;
    memset(p, 0, sizeof *p);
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    p->ranges = aligned_alloc(64, (size_t)n_threads * sizeof *p->ranges);
    if (!p->threads || !p->ranges) {
        free(p->threads);
        free(p->ranges);
        free(p);
        return NULL;
    }
    for (int i = 0; i < n_threads; i++)
        atomic_init(&p->ranges[i].w, 0);
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (!wa || pthread_create(&p->threads[i], NULL, worker_main, wa ? (wa->p = p, wa->idx = i, wa) : NULL) != 0) {
            free(wa);
            p->n = i; /* the threads started so far are joined by free */
            threadpool_free(p);
            return NULL;
        }
    }
    return p;
}

void threadpool_free(threadpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p->ranges);
    free(p);
}

int threadpool_size(const threadpool *p) { return p->n; }

void threadpool_for(threadpool *p, threadpool_item_fn fn, void *arg, int n_items)
{
    if (n_items <= 0)
        return;
    if (p->n == 1 || n_items == 1) {
        for (int i = 0; i < n_items; i++)
            fn(arg, i, 0);
        return;
    }
    if ((unsigned)n_items > FIELD_MASK) {
        /* beyond the word's range (callers stay far below): run in slices */
        for (int i = 0; i < n_items; i++)
            fn(arg, i, 0);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&p->work, memory_order_relaxed);
    unsigned gen = (word_gen(old) + 1) & 0xffffu;
    if (gen == 0)
        gen = 1; /* 0 is what a new worker has seen */
    for (int t = 0; t < p->n; t++)
        atomic_store_explicit(&p->ranges[t].w,
                              range_word(gen, (unsigned)((long)n_items * t / p->n),
                                         (unsigned)((long)n_items * (t + 1) / p->n)),
                              memory_order_relaxed);
    atomic_store_explicit(&p->work, (uint64_t)gen << GEN_SHIFT,
                          memory_order_seq_cst); /* publishes the ranges; ordered before the sleepers
                                                    check (a worker going to sleep checks the other
                                                    way round) */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    drain(p, gen, 0);
    int spins = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) < n_items) {
        if (++spins < 4096)
            cpu_relax();
        else
            sched_yield();
    }
}

struct parts {
    threadpool_fn fn;
    void *arg;
    int n;
};

static void part_item(void *arg, int item, int thread)
{
    (void)thread;
    const struct parts *s = arg;
    s->fn(s->arg, item, s->n);
}

void threadpool_run(threadpool *p, threadpool_fn fn, void *arg)
{
    struct parts s = {fn, arg, p->n};
    threadpool_for(p, part_item, &s, p->n);
}
