/* Checks every kernel implementation this CPU supports against the scalar reference on random
 * shapes, values, dtypes and unaligned pointers; also dequantization and the F16/BF16 conversions.
 *
 * Tolerance: the SIMD paths quantize each activation group to two int8 levels, x ~ dx * (h + l/256)
 * with dx = max|x_g| / 127, so each x_j is off by at most dx/512 (dx/256 where the second level
 * clamps at 127) and the weight term s * sum(x * q) by at most |s| * sum(q) * dx/256 per group; the
 * bias term uses exact float sums. On top, float32 accumulation order differs, bounded loosely by
 * 2e-5 * sum |x| |w|. A wrong nibble order, group mapping, scale or bias, or a lost second level,
 * breaks it by orders of magnitude. */
#include "kernels/qmatmul.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHECK_REPORT_MAX 20 /* a broken kernel fails every value */
#include "../lib/test_util.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float frand(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() & 0xffffff) / 16777216.0f; }
static int irand(int lo, int hi) { return lo + (int)(rnd() % (uint32_t)(hi - lo + 1)); }

static uint16_t f32_to_bf16(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    uint32_t r = b + 0x7fff + ((b >> 16) & 1);
    return (uint16_t)(r >> 16);
}

static void store_float(uint8_t *p, enum float_dtype dt, size_t i, float v)
{
    if (dt == DT_F32) {
        memcpy(p + i * 4, &v, 4);
    } else {
        uint16_t h = dt == DT_F16 ? f32_to_f16(v) : f32_to_bf16(v);
        memcpy(p + i * 2, &h, 2);
    }
}

typedef struct {
    void *base;
    size_t len;
} guarded;

/* n bytes that end `slack` bytes before an inaccessible page, as a tensor at the end of a mapped
 * file does: a kernel reading past the end of a tensor crashes the test (vector loads are not seen
 * by the sanitizers). */
static uint8_t *guarded_alloc(guarded *g, size_t n, size_t slack)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t data_pages = (n + slack + page - 1) / page;
    g->len = (data_pages + 1) * page;
    g->base = mmap(NULL, g->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->base == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    uint8_t *guard = (uint8_t *)g->base + data_pages * page;
    if (mprotect(guard, page, PROT_NONE) != 0) {
        perror("mprotect");
        exit(1);
    }
    return guard - slack - n;
}

typedef struct {
    qweight w;
    guarded buf_packed, buf_scales, buf_biases;
    uint8_t *q; /* unpacked values rows x cols */
} test_weight;

static void make_weight(test_weight *tw, int rows, int cols, int bits, int G, enum float_dtype dt)
{
    size_t row_bytes = (size_t)cols * (size_t)bits / 8;
    size_t groups = (size_t)cols / (size_t)G;
    size_t esz = float_dtype_size(dt);
    /* tensors end 0-3 bytes before a guard page (and so start unaligned too) */
    uint8_t *packed = guarded_alloc(&tw->buf_packed, (size_t)rows * row_bytes, (size_t)irand(0, 3));
    uint8_t *sc = guarded_alloc(&tw->buf_scales, (size_t)rows * groups * esz, (size_t)irand(0, 3));
    uint8_t *bi = guarded_alloc(&tw->buf_biases, (size_t)rows * groups * esz, (size_t)irand(0, 3));
    tw->q = malloc((size_t)rows * (size_t)cols);
    memset(packed, 0, (size_t)rows * row_bytes);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            unsigned v = rnd() & ((1u << bits) - 1);
            tw->q[(size_t)r * cols + c] = (uint8_t)v;
            size_t e = (size_t)r * cols + c;
            if (bits == 8)
                packed[e] = (uint8_t)v;
            else
                packed[e / 2] |= (uint8_t)(v << (4 * (e & 1)));
        }
    float smax = bits == 4 ? 0.02f : 0.001f;
    for (size_t i = 0; i < (size_t)rows * groups; i++) {
        store_float(sc, dt, i, frand(-smax, smax)); /* negative scales too */
        store_float(bi, dt, i, frand(-0.15f, 0.15f));
    }
    tw->w = (qweight){.packed = packed, .scales = sc, .biases = bi, .sdtype = dt, .rows = rows,
                      .cols = cols, .bits = bits, .group_size = G};
}

static void free_weight(test_weight *tw)
{
    munmap(tw->buf_packed.base, tw->buf_packed.len);
    munmap(tw->buf_scales.base, tw->buf_scales.len);
    munmap(tw->buf_biases.base, tw->buf_biases.len);
    free(tw->q);
}

static void make_x(float *x, int n_tok, int cols, int G)
{
    for (int t = 0; t < n_tok; t++) {
        float *xt = x + (size_t)t * cols;
        for (int c = 0; c < cols; c++)
            xt[c] = frand(-1.0f, 1.0f) + frand(-1.0f, 1.0f);
        int kind = irand(0, 5);
        if (kind == 0) /* a zero group */
            memset(xt + (size_t)G * irand(0, cols / G - 1), 0, sizeof(float) * G);
        else if (kind == 1) /* an outlier channel */
            xt[irand(0, cols - 1)] *= 60.0f;
        else if (kind == 2) /* tiny magnitudes */
            for (int c = 0; c < cols; c++)
                xt[c] *= 1e-6f;
    }
}

/* Runs the current ISA against the scalar reference for rows [r0,r1). */
static void check_case(const char *isa, const test_weight *tw, const float *x, int n_tok, int r0,
                       int r1, int ldy)
{
    const qweight *w = &tw->w;
    const int cols = w->cols, G = w->group_size, groups = cols / G;
    size_t ysz = (size_t)n_tok * ldy;
    float *yref = malloc(ysz * sizeof(float)), *y = malloc(ysz * sizeof(float));
    for (size_t i = 0; i < ysz; i++)
        yref[i] = y[i] = -12345.0f;
    qmatmul_scalar(w, x, n_tok, yref, ldy, r0, r1);
    qmatmul(w, x, n_tok, y, ldy, r0, r1);
    for (int t = 0; t < n_tok; t++) {
        const float *xt = x + (size_t)t * cols;
        for (int r = 0; r < ldy; r++) {
            float got = y[(size_t)t * ldy + r], want = yref[(size_t)t * ldy + r];
            if (r < r0 || r >= r1 || r >= w->rows) {
                CHECK(got == -12345.0f, "%s: wrote outside rows: t=%d r=%d", isa, t, r);
                continue;
            }
            double qbound = 0, mag = 0;
            for (int g = 0; g < groups; g++) {
                double s = load_float(w->scales, w->sdtype, (size_t)r * groups + g);
                double b = load_float(w->biases, w->sdtype, (size_t)r * groups + g);
                double amax = 0, qsum = 0;
                for (int j = g * G; j < (g + 1) * G; j++) {
                    double q = tw->q[(size_t)r * cols + j];
                    amax = fmax(amax, fabs(xt[j]));
                    qsum += q;
                    mag += fabs(xt[j]) * (fabs(s) * q + fabs(b));
                }
                qbound += fabs(s) * qsum * (amax / 127.0 / 256.0);
            }
            double tol = qbound * 1.001 + 2e-5 * mag + 1e-30;
            CHECK(fabs((double)got - want) <= tol,
                  "%s: bits=%d G=%d dt=%d rows=%d cols=%d n_tok=%d r=%d t=%d: got %.9g want %.9g "
                  "(tol %.3g, mag %.3g)",
                  isa, w->bits, G, (int)w->sdtype, w->rows, cols, n_tok, r, t, got, want, tol, mag);
            if (strcmp(isa, "scalar") == 0)
                CHECK(got == want, "scalar dispatch differs from qmatmul_scalar");
        }
    }
    free(yref);
    free(y);
}

static void test_matmul(void)
{
    static const char *const isas[] = {"scalar", "avx2", "avx2vnni", "avx512", "avx512vnni", "amx"};
    static const int group_sizes[] = {32, 64, 128};
    static const enum float_dtype dts[] = {DT_F16, DT_BF16, DT_F32};
    enum { N_ISA = sizeof isas / sizeof isas[0] };
    int ran[N_ISA] = {0};
    for (int bi = 0; bi < 2; bi++)
        for (int gi = 0; gi < 3; gi++)
            for (int di = 0; di < 3; di++)
                for (int rep = 0; rep < 4; rep++) {
                    int bits = bi ? 8 : 4, G = group_sizes[gi];
                    int rows = irand(1, 23) | 1;
                    int ngroups = irand(1, 1024 / G);
                    if (rep == 2)
                        ngroups = irand(1, 3); /* tiny rows: only a partial SIMD chunk */
                    int cols = G * ngroups;
                    int n_tok = rep == 0 ? 1 : irand(1, 70);
                    if (rep == 1 && (n_tok & 1) == 0)
                        n_tok++;
                    if (rep == 3)
                        n_tok = irand(2, 15); /* a few tokens: batched decode, prompt lookup's steps */
                    int r0 = irand(0, rows - 1), r1 = irand(r0 + 1, rows);
                    if (rep == 0) {
                        r0 = 0;
                        r1 = rows;
                    }
                    int ldy = rows + irand(0, 3);
                    test_weight tw;
                    make_weight(&tw, rows, cols, bits, G, dts[di]);
                    float *x = malloc(sizeof(float) * (size_t)n_tok * cols);
                    make_x(x, n_tok, cols, G);
                    for (int k = 0; k < N_ISA; k++) {
                        if (kernels_select_isa(isas[k]) != 0)
                            continue;
                        ran[k]++;
                        check_case(isas[k], &tw, x, n_tok, r0, r1, ldy);
                    }
                    free(x);
                    free_weight(&tw);
                }
    /* Wide rows and many tokens: crosses the kernels' token blocking. */
    for (int bits = 4; bits <= 8; bits += 4) {
        test_weight tw;
        int cols = 8192 + 64, n_tok = 69, rows = 7;
        make_weight(&tw, rows, cols, bits, 64, DT_F16);
        float *x = malloc(sizeof(float) * (size_t)n_tok * cols);
        make_x(x, n_tok, cols, 64);
        for (int k = 0; k < N_ISA; k++)
            if (kernels_select_isa(isas[k]) == 0)
                check_case(isas[k], &tw, x, n_tok, 1, rows, rows);
        free(x);
        free_weight(&tw);
    }
    /* More tokens than one kernel call takes at once (the dispatcher slices long batches). */
    {
        test_weight tw;
        int cols = 256, n_tok = 301, rows = 9;
        make_weight(&tw, rows, cols, 4, 32, DT_BF16);
        float *x = malloc(sizeof(float) * (size_t)n_tok * cols);
        make_x(x, n_tok, cols, 32);
        for (int k = 0; k < N_ISA; k++)
            if (kernels_select_isa(isas[k]) == 0)
                check_case(isas[k], &tw, x, n_tok, 2, rows, rows + 1);
        free(x);
        free_weight(&tw);
    }
    for (int k = 0; k < N_ISA; k++)
        printf("%-10s %s (%d cases)\n", isas[k], ran[k] ? "checked" : "not supported here", ran[k]);
    CHECK(ran[0] > 0, "scalar path must always exist");
}

/* qact: activations prepared once (filled by several threads), then rows split over threads. */
typedef struct {
    qact *a;
    const qweight *w;
    float *y;
    int ldy, part, nparts, r0, r1;
} pool_job;

static void *fill_job(void *arg)
{
    pool_job *j = arg;
    qact_fill(j->a, j->part, j->nparts);
    return NULL;
}

static void *rows_job(void *arg)
{
    pool_job *j = arg;
    qmatmul_prepared(j->w, j->a, j->y, j->ldy, j->r0, j->r1);
    return NULL;
}

static void test_prepared(void)
{
    static const char *const isas[] = {"scalar", "avx2", "avx2vnni", "avx512", "avx512vnni", "amx"};
    enum { N_ISA = sizeof isas / sizeof isas[0] };
    qact *a = qact_new();
    CHECK(a != NULL, "qact_new");
    for (int rep = 0; rep < 24; rep++) {
        int bits = rep & 1 ? 8 : 4, G = 32 << (rep % 3);
        int rows = irand(1, 40), cols = G * irand(1, 512 / G), n_tok = irand(1, 90);
        enum float_dtype dt = (enum float_dtype)(rep % 3);
        test_weight tw, tw2;
        make_weight(&tw, rows, cols, bits, G, dt);
        make_weight(&tw2, rows + 3, cols, bits, G, dt); /* same shape of rows, other data */
        float *x = malloc(sizeof(float) * (size_t)n_tok * cols);
        make_x(x, n_tok, cols, G);
        int ldy = rows + 3;
        float *want = malloc(sizeof(float) * (size_t)n_tok * ldy);
        float *got = malloc(sizeof(float) * (size_t)n_tok * ldy);
        for (int k = 0; k < N_ISA; k++) {
            if (kernels_select_isa(isas[k]) != 0)
                continue;
            CHECK(qact_reserve(a, &tw.w, x, n_tok) == 0, "qact_reserve");
            int nf = irand(1, 4);
            pthread_t th[4];
            pool_job jobs[4];
            for (int i = 0; i < nf; i++) {
                jobs[i] = (pool_job){.a = a, .part = i, .nparts = nf};
                pthread_create(&th[i], NULL, fill_job, &jobs[i]);
            }
            for (int i = 0; i < nf; i++)
                pthread_join(th[i], NULL);
            for (int which = 0; which < 2; which++) {
                const qweight *w = which ? &tw2.w : &tw.w;
                for (size_t i = 0; i < (size_t)n_tok * ldy; i++)
                    want[i] = got[i] = -7.0f;
                qmatmul(w, x, n_tok, want, ldy, 0, w->rows);
                int mid = w->rows / 2;
                pool_job rj[2] = {{.a = a, .w = w, .y = got, .ldy = ldy, .r0 = 0, .r1 = mid},
                                  {.a = a, .w = w, .y = got, .ldy = ldy, .r0 = mid, .r1 = w->rows}};
                for (int i = 0; i < 2; i++)
                    pthread_create(&th[i], NULL, rows_job, &rj[i]);
                for (int i = 0; i < 2; i++)
                    pthread_join(th[i], NULL);
                int bad = 0;
                for (int t = 0; t < n_tok; t++)
                    for (int r = 0; r < w->rows; r++)
                        bad += got[(size_t)t * ldy + r] != want[(size_t)t * ldy + r];
                CHECK(bad == 0, "%s: qmatmul_prepared differs from qmatmul in %d values (bits=%d G=%d "
                      "cols=%d n_tok=%d)", isas[k], bad, bits, G, cols, n_tok);
            }
        }
        /* a weight of another shape still gets the right answer (through qmatmul) */
        if (cols >= 2 * G) {
            test_weight tw3;
            make_weight(&tw3, 3, cols / 2 / G * G, bits, G, dt);
            CHECK(qact_reserve(a, &tw.w, x, n_tok) == 0, "qact_reserve");
            qact_fill(a, 0, 1);
            float *y3 = malloc(sizeof(float) * (size_t)n_tok * 3), *z3 = malloc(sizeof(float) * (size_t)n_tok * 3);
            qmatmul_prepared(&tw3.w, a, y3, 3, 0, 3);
            qmatmul(&tw3.w, x, n_tok, z3, 3, 0, 3);
            CHECK(memcmp(y3, z3, sizeof(float) * (size_t)n_tok * 3) == 0, "shape mismatch fallback");
            free(y3);
            free(z3);
            free_weight(&tw3);
        }
        free(want);
        free(got);
        free(x);
        free_weight(&tw);
        free_weight(&tw2);
    }
    qact_free(a);
}

static void test_dequant_row(void)
{
    static const enum float_dtype dts[] = {DT_F16, DT_BF16, DT_F32};
    for (int bits = 4; bits <= 8; bits += 4)
        for (int gs = 32; gs <= 128; gs *= 2)
            for (int di = 0; di < 3; di++) {
                int rows = 5, cols = gs * 3;
                test_weight tw;
                make_weight(&tw, rows, cols, bits, gs, dts[di]);
                float *out = malloc(sizeof(float) * cols);
                for (int r = 0; r < rows; r++) {
                    qweight_dequant_row(&tw.w, r, out);
                    for (int c = 0; c < cols; c++) {
                        float s = load_float(tw.w.scales, dts[di], (size_t)r * 3 + c / gs);
                        float b = load_float(tw.w.biases, dts[di], (size_t)r * 3 + c / gs);
                        float want = s * (float)tw.q[(size_t)r * cols + c] + b;
                        CHECK(out[c] == want, "dequant bits=%d G=%d r=%d c=%d: %g vs %g", bits, gs,
                              r, c, out[c], want);
                    }
                }
                free(out);
                free_weight(&tw);
            }
}

static void test_conversions(void)
{
    /* Every F16 value against an independent formula. */
    for (uint32_t h = 0; h < 65536; h++) {
        int sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
        float got = f16_to_f32((uint16_t)h);
        double want;
        if (exp == 31) {
            if (mant) {
                CHECK(isnan(got), "f16 %04x should be nan", h);
                continue;
            }
            want = INFINITY;
        } else if (exp == 0) {
            want = ldexp(mant, -24);
        } else {
            want = ldexp(1024 + mant, exp - 25);
        }
        if (sign)
            want = -want;
        CHECK(got == (float)want && (signbit(got) != 0) == (sign != 0), "f16 %04x: got %g want %g", h,
              got, want);
    }
    CHECK(f16_to_f32(0x3c00) == 1.0f && f16_to_f32(0xc000) == -2.0f, "f16 basics");
    CHECK(f16_to_f32(0x7bff) == 65504.0f, "f16 max");
    CHECK(f16_to_f32(0x0001) == ldexpf(1.0f, -24), "f16 smallest subnormal");
    CHECK(f16_to_f32(0x03ff) == ldexpf(1023.0f, -24), "f16 largest subnormal");
    CHECK(isinf(f16_to_f32(0xfc00)) && f16_to_f32(0xfc00) < 0, "f16 -inf");

    CHECK(bf16_to_f32(0x3f80) == 1.0f && bf16_to_f32(0xc040) == -3.0f, "bf16 basics");
    CHECK(isinf(bf16_to_f32(0x7f80)) && isnan(bf16_to_f32(0x7fc0)), "bf16 inf/nan");
    CHECK(bf16_to_f32(0x0001) == ldexpf(1.0f, -133), "bf16 subnormal");
    CHECK(signbit(bf16_to_f32(0x8000)) && bf16_to_f32(0x8000) == 0.0f, "bf16 -0");

    /* load_float reads at any alignment and honours the dtype. */
    uint8_t buf[16] = {0};
    float v = -1.5f;
    memcpy(buf + 3, &v, 4);
    CHECK(load_float(buf + 3, DT_F32, 0) == -1.5f, "load_float f32 unaligned");
    uint16_t h = 0x3555; /* 0.333251953125 */
    memcpy(buf + 1 + 2 * 2, &h, 2);
    CHECK(load_float(buf + 1, DT_F16, 2) == 0.333251953125f, "load_float f16 unaligned");
    h = 0x4049; /* 3.140625 */
    memcpy(buf + 1 + 2 * 3, &h, 2);
    CHECK(load_float(buf + 1, DT_BF16, 3) == 3.140625f, "load_float bf16 unaligned");
}

int main(void)
{
    printf("dispatcher picked: %s\n", kernels_isa());
    test_conversions();
    test_dequant_row();
    test_matmul();
    test_prepared();
    return test_result("all kernel checks passed");
}
