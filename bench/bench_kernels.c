/* Kernel benchmark: this machine's memory read bandwidth, then per kernel implementation the decode
 * matvec throughput on 7B-sized 4-bit matrices (as GB/s of weights read and as a fraction of the
 * bandwidth measured in the same run) and the prefill rate for a 512-token batch (GFLOP/s and tokens/s
 * relative to decode). Rows are split across threads the way the model splits them.
 *
 *   bench_kernels [--threads N] [--mb MiB-of-weights] [--isa NAME]... [--tokens N]
 */
#include "kernels/qmatmul.h"
#include "int8_peak.h"
#include "util/clock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- a tiny pool: every worker runs job(i) for its index, the caller is worker 0 ---- */
typedef struct pool {
    int n;
    pthread_t *tid;
    pthread_barrier_t start, done;
    void (*job)(void *, int, int);
    void *arg;
    int quit;
} pool;

typedef struct { pool *p; int idx; } worker_arg;

static void *worker(void *a)
{
    worker_arg *wa = a;
    pool *p = wa->p;
    for (;;) {
        pthread_barrier_wait(&p->start);
        if (p->quit)
            return NULL;
        p->job(p->arg, wa->idx, p->n);
        pthread_barrier_wait(&p->done);
    }
}

static void pool_run(pool *p, void (*job)(void *, int, int), void *arg)
{
    p->job = job;
    p->arg = arg;
    pthread_barrier_wait(&p->start);
    job(arg, 0, p->n);
    pthread_barrier_wait(&p->done);
}

static worker_arg *pool_start(pool *p, int n)
{
    p->n = n;
    p->quit = 0;
    p->tid = calloc((size_t)n, sizeof(pthread_t));
    worker_arg *wa = calloc((size_t)n, sizeof(worker_arg));
    pthread_barrier_init(&p->start, NULL, (unsigned)n);
    pthread_barrier_init(&p->done, NULL, (unsigned)n);
    for (int i = 1; i < n; i++) {
        wa[i] = (worker_arg){p, i};
        pthread_create(&p->tid[i], NULL, worker, &wa[i]);
    }
    return wa;
}

static void pool_stop(pool *p)
{
    p->quit = 1;
    pthread_barrier_wait(&p->start);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->tid[i], NULL);
}

/* ---- memory bandwidth ---- */
typedef struct { const uint64_t *buf; size_t words; uint64_t sink[64]; } bw_arg;

static void bw_job(void *a, int idx, int n)
{
    bw_arg *b = a;
    size_t lo = b->words * (size_t)idx / (size_t)n, hi = b->words * (size_t)(idx + 1) / (size_t)n;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = lo; i + 4 <= hi; i += 4) {
        s0 += b->buf[i];
        s1 += b->buf[i + 1];
        s2 += b->buf[i + 2];
        s3 += b->buf[i + 3];
    }
    b->sink[idx] = s0 ^ s1 ^ s2 ^ s3;
}

static double measure_bw(pool *p, const uint64_t *buf, size_t bytes)
{
    bw_arg a = {.buf = buf, .words = bytes / 8};
    double best = 1e30;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = monotonic_s();
        pool_run(p, bw_job, &a);
        double dt = monotonic_s() - t0;
        best = dt < best ? dt : best;
    }
    return (double)bytes / best / 1e9;
}

/* ---- int8 dot-product peak: what prefill is bounded by when compute-bound ---- */
typedef struct { double macs; } peak_arg;

static void peak_job(void *a, int idx, int n)
{
    const double macs = int8_peak_loop();
    if (idx == 0)
        ((peak_arg *)a)->macs = macs * n;
}

/* int8 multiply-adds per second with all threads (best of 3), or 0 without AVX-512 VNNI. */
static double vnni_peak(pool *p)
{
    if (!int8_peak_supported())
        return 0;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        peak_arg a;
        double t0 = monotonic_s();
        pool_run(p, peak_job, &a);
        double r = a.macs / (monotonic_s() - t0);
        best = r > best ? r : best;
    }
    return best;
}

/* ---- matmul jobs ---- */
typedef struct {
    const qweight *w;
    int nw;
    const float *x;
    float *y;
    int n_tok;
    int rows_limit;
} mm_arg;

static void mm_job(void *a, int idx, int n)
{
    mm_arg *m = a;
    for (int k = 0; k < m->nw; k++) {
        const qweight *w = &m->w[k];
        int rows = m->rows_limit && m->rows_limit < w->rows ? m->rows_limit : w->rows;
        int r0 = (int)((long)rows * idx / n), r1 = (int)((long)rows * (idx + 1) / n);
        qmatmul(w, m->x, m->n_tok, m->y, rows, r0, r1);
    }
}

/* Prefill the way a pool shares one quantization of the activations (qact). */
typedef struct {
    const qweight *w;
    int nw;
    qact *a[2];
    float *y;
    int rows_limit;
} qa_arg;

static void qa_fill_job(void *arg, int idx, int n)
{
    qa_arg *q = arg;
    for (int k = 0; k < q->nw; k++)
        qact_fill(q->a[k], idx, n);
}

static void qa_mm_job(void *arg, int idx, int n)
{
    qa_arg *q = arg;
    for (int k = 0; k < q->nw; k++) {
        const qweight *w = &q->w[k];
        int rows = q->rows_limit && q->rows_limit < w->rows ? q->rows_limit : w->rows;
        int r0 = (int)((long)rows * idx / n), r1 = (int)((long)rows * (idx + 1) / n);
        qmatmul_prepared(w, q->a[k], q->y, rows, r0, r1);
    }
}

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void fill_random(uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = rnd64();
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++)
        p[i] = (uint8_t)rnd64();
}

static void fill_scales(uint8_t *p, size_t count)
{
    /* F16 values of magnitude ~0.001..0.03, both signs */
    for (size_t i = 0; i < count; i++) {
        uint16_t h = (uint16_t)(0x1400 + (rnd64() % 0x0c00)) | (uint16_t)((rnd64() & 1) << 15);
        memcpy(p + 2 * i, &h, 2);
    }
}

int main(int argc, char **argv)
{
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int mb = 1024, n_prefill = 512;
    const char *isas[8];
    int n_isa = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--mb") == 0 && i + 1 < argc)
            mb = atoi(argv[++i]);
        else if (strcmp(argv[i], "--tokens") == 0 && i + 1 < argc)
            n_prefill = atoi(argv[++i]);
        else if (strcmp(argv[i], "--isa") == 0 && i + 1 < argc && n_isa < 8)
            isas[n_isa++] = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--threads N] [--mb MiB] [--tokens N] [--isa NAME]...\n", argv[0]);
            return 2;
        }
    }
    if (threads < 1)
        threads = 1;
    if (n_isa == 0) {
        static const char *const all[] = {"scalar", "avx2", "avx2vnni", "avx512", "avx512vnni", "amx"};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            isas[n_isa++] = all[i];
    }
    printf("threads %d, best kernel on this CPU: %s\n", threads, kernels_isa());

    /* 7B MLP shapes: gate/up [18944 x 3584] and down [3584 x 18944], 4-bit, group 64, F16. */
    const int H = 3584, I = 18944, G = 64;
    qweight proto[2] = {
        {.sdtype = DT_F16, .rows = I, .cols = H, .bits = 4, .group_size = G},
        {.sdtype = DT_F16, .rows = H, .cols = I, .bits = 4, .group_size = G},
    };
    size_t pair = qweight_bytes(&proto[0]) + qweight_bytes(&proto[1]);
    int npairs = (int)(((size_t)mb << 20) / pair);
    if (npairs < 1)
        npairs = 1;
    int nw = 2 * npairs;
    qweight *ws = calloc((size_t)nw, sizeof(qweight));
    size_t total = 0;
    for (int k = 0; k < nw; k++) {
        qweight w = proto[k & 1];
        size_t pk = (size_t)w.rows * (size_t)w.cols / 2, sc = (size_t)w.rows * (size_t)(w.cols / G) * 2;
        /* +1: keep the data unaligned like an mmap'd safetensors file */
        uint8_t *mem = malloc(pk + 2 * sc + 8);
        if (!mem) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        w.packed = mem + 1;
        w.scales = mem + 1 + pk;
        w.biases = mem + 1 + pk + sc;
        fill_random(mem + 1, pk);
        fill_scales(mem + 1 + pk, sc / 2);
        fill_scales(mem + 1 + pk + sc, sc / 2);
        ws[k] = w;
        total += qweight_bytes(&w);
    }
    printf("weights: %d matrices (%dx%d and %dx%d, 4-bit g%d F16), %.2f GB\n", nw, I, H, H, I, G,
           (double)total / 1e9);

    /* Bandwidth: a buffer as large as the weights, read by 1 and by all threads. It is measured again
     * right before each kernel's decode run, and the decode ratio uses that neighbouring figure, so a
     * busy machine skews both alike. */
    size_t bw_bytes = total / 64 * 64;
    uint64_t *bwbuf = malloc(bw_bytes);
    if (!bwbuf) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    memset(bwbuf, 1, bw_bytes);
    pool p1, pn;
    pool_start(&p1, 1);
    pool_start(&pn, threads);
    double bw1 = measure_bw(&p1, bwbuf, bw_bytes);
    double bwn = measure_bw(&pn, bwbuf, bw_bytes);
    printf("memory read bandwidth: %.1f GB/s (1 thread), %.1f GB/s (%d threads)\n", bw1, bwn, threads);
    /* The SIMD kernels multiply each weight by two int8 levels of the activation, so at the int8
     * peak P (multiply-adds/s) prefill reaches P weight-FLOPs/s (2 FLOPs x P / 2 levels). */
    const double peak = vnni_peak(&pn);
    if (peak > 0)
        printf("int8 dot-product peak (vpdpbusd, %d threads): %.1f G multiply-adds/s = prefill bound %.1f GF/s\n",
               threads, peak / 1e9, peak / 1e9);

    size_t xmax = (size_t)n_prefill * (size_t)I;
    float *x = malloc(xmax * sizeof(float)), *y = malloc(xmax * sizeof(float));
    for (size_t i = 0; i < xmax; i++)
        x[i] = (float)((int)(rnd64() % 2001) - 1000) / 700.0f;

    printf("\n%-11s %8s %12s %7s %12s %13s %14s %10s %13s %9s\n", "kernel", "bw GB/s", "decode GB/s",
           "of bw", "decode GF/s", "prefill GF/s", "prefill tok/s", "vs decode", "qact GF/s", "of peak");
    for (int ii = 0; ii < n_isa; ii++) {
        if (kernels_select_isa(isas[ii]) != 0) {
            printf("%-11s not supported on this CPU\n", isas[ii]);
            continue;
        }
        const int scalar = strcmp(isas[ii], "scalar") == 0;
        /* decode: one token through every matrix, best of a few passes */
        bwn = measure_bw(&pn, bwbuf, bw_bytes);
        mm_arg m = {.w = ws, .nw = nw, .x = x, .y = y, .n_tok = 1};
        pool_run(&pn, mm_job, &m); /* warm-up */
        double best = 1e30;
        for (int rep = 0; rep < (scalar ? 1 : 4); rep++) {
            double t0 = monotonic_s();
            pool_run(&pn, mm_job, &m);
            double dt = monotonic_s() - t0;
            best = dt < best ? dt : best;
        }
        double params = 0;
        for (int k = 0; k < nw; k++)
            params += (double)ws[k].rows * ws[k].cols;
        double dec_gbs = (double)total / best / 1e9, dec_gflops = 2 * params / best / 1e9;
        double dec_tok = 1.0 / best; /* tokens/s through these matrices */

        /* prefill: n_prefill tokens through one pair of matrices (row subset for the scalar path) */
        mm_arg pf = {.w = ws, .nw = 2, .x = x, .y = y, .n_tok = n_prefill,
                     .rows_limit = scalar ? 32 * threads : 0};
        double pparams = 0;
        for (int k = 0; k < 2; k++) {
            int rows = pf.rows_limit && pf.rows_limit < ws[k].rows ? pf.rows_limit : ws[k].rows;
            pparams += (double)rows * ws[k].cols;
        }
        double pbest = 1e30;
        for (int rep = 0; rep < 2; rep++) {
            double t0 = monotonic_s();
            pool_run(&pn, mm_job, &pf);
            double dt = monotonic_s() - t0;
            pbest = dt < pbest ? dt : pbest;
        }
        double pf_gflops = 2 * pparams * n_prefill / pbest / 1e9;
        /* the same through qact: quantize once per matrix input, shared by the threads */
        qa_arg qa = {.w = ws, .nw = 2, .a = {qact_new(), qact_new()}, .y = y,
                     .rows_limit = pf.rows_limit};
        double qbest = 1e30;
        for (int rep = 0; rep < 2; rep++) {
            double t0 = monotonic_s();
            for (int k = 0; k < 2; k++)
                qact_reserve(qa.a[k], &ws[k], x, n_prefill);
            pool_run(&pn, qa_fill_job, &qa);
            pool_run(&pn, qa_mm_job, &qa);
            double dt = monotonic_s() - t0;
            qbest = dt < qbest ? dt : qbest;
        }
        qact_free(qa.a[0]);
        qact_free(qa.a[1]);
        double qa_gflops = 2 * pparams * n_prefill / qbest / 1e9;
        /* tokens/s through the same set of matrices as decode, at this FLOP rate */
        double pf_tok = pf_gflops * 1e9 / (2 * params);
        printf("%-11s %8.1f %12.2f %6.0f%% %12.2f %13.1f %14.2f %9.1fx %13.1f", isas[ii], bwn,
               dec_gbs, 100 * dec_gbs / bwn, dec_gflops, pf_gflops, pf_tok, pf_tok / dec_tok, qa_gflops);
        if (peak > 0 && strcmp(isas[ii], "avx512vnni") == 0) /* the peak is measured with its instructions */
            printf(" %8.0f%%", 100 * qa_gflops * 1e9 / peak);
        printf("\n");
        fflush(stdout);
    }
    printf("\ndecode GB/s: weight bytes (packed + scales + biases) per second, one token;\n"
           "bw: %d-thread read bandwidth measured just before; prefill: %d tokens per call;\n"
           "vs decode: prefill tokens/s over decode tokens/s on the same matrices;\n"
           "qact GF/s: prefill with the activations quantized once and shared by the threads;\n"
           "of peak: qact GF/s over the int8 dot-product bound (AVX-512 VNNI kernels only).\n",
           threads, n_prefill);
    pool_stop(&p1);
    pool_stop(&pn);
    free(bwbuf);
    return 0;
}
