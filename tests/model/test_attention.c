/* Grouped attention (src/model/attention_impl.h) in every build this CPU runs, against a
 * straightforward double-precision softmax attention: odd key counts (partial key blocks), head
 * groups of 1 to 11 (fewer and more than the 8 computed together; 5 to 8 have code of their own),
 * head sizes with and without a tail past the wide value blocks, runs of 1 to 9 causal queries
 * (each must get exactly what it gets alone), key counts across value chunks, and the keys cut into
 * slices whose partial results att_combine joins (decode's split across threads). Also the vector
 * exp and SwiGLU's silu against exp(). */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_REPORT_MAX 20
#include "../lib/test_util.h"
#include "model/attention_impl.h"
#include "model/vector_isa.h"

static void portable(const float *q, size_t q_stride, int nq, int ng, const uint16_t *kt, const uint16_t *vc,
                     int n_keys0, int key_cap, int D, float scale, float *scores, float *out, size_t out_stride,
                     float *lse)
{
    attend_queries(q, q_stride, nq, ng, kt, vc, n_keys0, key_cap, D, scale, scores, out, out_stride, lse);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void reference(const float *q, int ng, const float *k, const float *v, int n_keys, int D, float scale,
                      double *out)
{
    double *p = malloc((size_t)n_keys * sizeof *p);
    for (int h = 0; h < ng; h++) {
        double mx = -INFINITY, sum = 0;
        for (int s = 0; s < n_keys; s++) {
            double d = 0;
            for (int i = 0; i < D; i++)
                d += (double)q[(size_t)h * D + i] * k[(size_t)s * D + i];
            p[s] = d * scale;
            mx = p[s] > mx ? p[s] : mx;
        }
        for (int s = 0; s < n_keys; s++)
            sum += p[s] = exp(p[s] - mx);
        for (int i = 0; i < D; i++) {
            double a = 0;
            for (int s = 0; s < n_keys; s++)
                a += p[s] / sum * v[(size_t)s * D + i];
            out[(size_t)h * D + i] = a;
        }
    }
    free(p);
}

static void check_build(const char *name, attend_fn fn)
{
    static const int dims[] = {64, 80, 128};
    static const int keys[] = {1, 15, 16, 17, 100, 333};
    static const int runs[] = {1, 3, 9};
    int cases = 0;
    static const int groups[] = {1, 3, 5, 6, 7, 8, 9, 11};
    for (int di = 0; di < 3; di++)
        for (int gi = 0; gi < 8; gi++)
            for (int ki = 0; ki < 6; ki++)
                for (int ri = 0; ri < 3; ri++) {
                    const int ng = groups[gi];
                    /* query j of the run sees the first n_keys + j keys */
                    const int D = dims[di], n_keys = keys[ki], nq = runs[ri], nk_max = n_keys + nq - 1;
                    const int nb = (nk_max + ATT_KB - 1) / ATT_KB;
                    const size_t qs = (size_t)ng * D + 3; /* strides unlike the head block: checks their use */
                    float *q = malloc(sizeof(float) * qs * nq), *k = malloc(sizeof(float) * (size_t)nk_max * D);
                    float *v = malloc(sizeof(float) * (size_t)nk_max * D);
                    /* the cache in half precision; k and v hold the values it holds, for the reference */
                    uint16_t *vh = malloc(sizeof(uint16_t) * (size_t)nk_max * D);
                    /* transposed blocks; the lanes past a query's keys hold garbage (any bit pattern,
                     * NaN and infinity included) or later keys */
                    uint16_t *kt = malloc(sizeof(uint16_t) * (size_t)nb * ATT_KB * D);
                    float *scores = malloc(sizeof(float) * (size_t)nq * ng * nb * ATT_KB);
                    float *out = malloc(sizeof(float) * qs * nq), *alone = malloc(sizeof(float) * (size_t)ng * D);
                    double *want = malloc(sizeof(double) * (size_t)ng * D);
                    for (size_t i = 0; i < qs * nq; i++)
                        q[i] = 3 * frand();
                    for (int i = 0; i < nk_max * D; i++) {
                        vh[i] = f32_to_f16(frand());
                        v[i] = f16_to_f32(vh[i]);
                    }
                    for (int i = 0; i < nb * ATT_KB * D; i++)
                        kt[i] = (uint16_t)(frand() * 32768.0f + 32768.0f);
                    for (int s = 0; s < nk_max; s++)
                        for (int i = 0; i < D; i++) {
                            const uint16_t kh = f32_to_f16(3 * frand());
                            k[(size_t)s * D + i] = f16_to_f32(kh);
                            kt[((size_t)(s / ATT_KB) * D + (size_t)i) * ATT_KB + (size_t)(s % ATT_KB)] = kh;
                        }
                    const float scale = 1.0f / sqrtf((float)D);
                    fn(q, qs, nq, ng, kt, vh, n_keys, INT_MAX, D, scale, scores, out, qs, NULL);
                    /* the same keys in slices (32 and 48 keys, block multiples but not of the two-block
                     * step), each query's slices then joined by att_combine */
                    const int slice = (ki + ri) % 2 ? 48 : 32, n_slices = (n_keys - 1) / slice + 1;
                    float *parts = malloc(sizeof(float) * qs * nq * n_slices);
                    float *lse = malloc(sizeof(float) * (size_t)nq * ng * n_slices);
                    for (int sl = 0; sl < n_slices; sl++) {
                        const int k0 = sl * slice, cap = sl + 1 < n_slices ? slice : INT_MAX;
                        fn(q, qs, nq, ng, kt + (size_t)(k0 / ATT_KB) * D * ATT_KB, vh + (size_t)k0 * D, n_keys - k0,
                           cap, D, scale, scores, parts + (size_t)sl * nq * qs, qs, lse + (size_t)sl * nq * ng);
                    }
                    for (int j = 0; j < nq; j++) {
                        const float *qj = q + (size_t)j * qs, *oj = out + (size_t)j * qs;
                        reference(qj, ng, k, v, n_keys + j, D, scale, want);
                        for (int i = 0; i < ng * D; i++)
                            CHECK(fabs(oj[i] - want[i]) < 2e-5,
                                  "%s: D=%d heads=%d keys=%d query %d of %d: out[%d] = %.8g, want %.8g", name, D, ng,
                                  n_keys + j, j, nq, i, oj[i], want[i]);
                        fn(qj, qs, 1, ng, kt, vh, n_keys + j, INT_MAX, D, scale, scores, alone, qs, NULL);
                        CHECK(memcmp(alone, oj, sizeof(float) * (size_t)ng * D) == 0,
                              "%s: D=%d heads=%d keys=%d: query %d of a run of %d differs from the query alone",
                              name, D, ng, n_keys + j, j, nq);
                        for (int h = 0; h < ng; h++) {
                            att_combine(parts + (size_t)j * qs + (size_t)h * D, qs * nq,
                                        lse + (size_t)j * ng + (size_t)h, (size_t)nq * ng, n_slices, D, alone);
                            for (int i = 0; i < D; i++)
                                CHECK(fabs(alone[i] - want[(size_t)h * D + i]) < 2e-5,
                                      "%s: D=%d heads=%d keys=%d query %d of %d in %d slices of %d: out[%d] = %.8g, "
                                      "want %.8g",
                                      name, D, ng, n_keys + j, j, nq, n_slices, slice, h * D + i, alone[i],
                                      want[(size_t)h * D + i]);
                        }
                    }
                    free(parts);
                    free(lse);
                    cases++;
                    free(q);
                    free(k);
                    free(v);
                    free(vh);
                    free(kt);
                    free(scores);
                    free(out);
                    free(alone);
                    free(want);
                }
    printf("%-8s %d cases\n", name, cases);
}

/* The KV cache's conversions: every half to float and back unchanged (NaN stays NaN), floats
 * rounded to the nearest half (ties to even) against a double-precision search, overflow to
 * infinity, subnormals; and the vector load of halves in every build equals the scalar one. */
static void check_half(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = f16_to_f32((uint16_t)h);
        const int nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu);
        if (nan)
            CHECK(f != f && (f32_to_f16(f) & 0x7c00u) == 0x7c00u && (f32_to_f16(f) & 0x3ffu),
                  "half %04x: NaN lost", h);
        else
            CHECK(f32_to_f16(f) == h, "half %04x -> %g -> %04x", h, f, f32_to_f16(f));
    }
    /* midpoints between neighbouring finite halves round to the even one; just off them, to the
     * nearer one */
    for (uint32_t h = 0; h < 0x7bff; h++) {
        const double a = f16_to_f32((uint16_t)h), b = f16_to_f32((uint16_t)(h + 1)), mid = (a + b) / 2;
        const uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        CHECK(f32_to_f16((float)mid) == even, "midpoint above half %04x rounds to %04x, want %04x", h,
              f32_to_f16((float)mid), even);
        CHECK(f32_to_f16(nextafterf((float)mid, 0)) == h, "just below the midpoint above %04x", h);
        CHECK(f32_to_f16(nextafterf((float)mid, INFINITY)) == h + 1, "just above the midpoint above %04x", h);
    }
    CHECK(f32_to_f16(65519.0f) == 0x7bff && f32_to_f16(65520.0f) == 0x7c00 && f32_to_f16(1e30f) == 0x7c00 &&
              f32_to_f16(-1e30f) == 0xfc00 && f32_to_f16(INFINITY) == 0x7c00,
          "overflow to infinity");
    CHECK(f32_to_f16(1e-9f) == 0 && f32_to_f16(-1e-9f) == 0x8000, "underflow to zero keeps the sign");
    uint16_t row[16];
    for (int i = 0; i < 16; i++)
        row[i] = (uint16_t)(i * 4099 + 17);
    const v16 got = v16_load_half(row);
    for (int i = 0; i < 16; i++)
        CHECK(memcmp(&got[i], &(float){f16_to_f32(row[i])}, 4) == 0 || (got[i] != got[i]),
              "vector load of halves, lane %d", i);
}

static void silu_mul_portable(float *g, const float *u, int n) { v16_silu_mul_span(g, u, n); }

/* SwiGLU over spans of every length 1..70 (ragged ends included) against double precision; the
 * elements past n are left alone. */
static void check_silu_span(const char *name, silu_mul_fn fn)
{
    float g[80], u[80];
    double worst = 0;
    for (int n = 1; n <= 70; n++) {
        for (int i = 0; i < 80; i++) {
            g[i] = (float)((i * 37 + n * 11) % 201 - 100) * 0.173f;
            u[i] = (float)((i * 13 + n) % 17 - 8) * 0.25f + 0.1f;
        }
        fn(g, u, n);
        for (int i = 0; i < 80; i++) {
            const double g0 = (float)((i * 37 + n * 11) % 201 - 100) * 0.173f;
            if (i >= n) {
                CHECK(g[i] == (float)g0, "%s silu span n=%d: element %d past the end changed", name, n, i);
                continue;
            }
            const double want = g0 / (1.0 + exp(-g0)) * u[i];
            const double err = fabs(g[i] - want) / (fabs(want) > 1e-6 ? fabs(want) : 1e-6);
            worst = err > worst ? err : worst;
        }
    }
    CHECK(worst < 2e-6, "%s silu span: worst relative error %g", name, worst);
}

int main(void)
{
    double worst = 0;
    for (float x = -90.0f; x <= 0.0f; x += 0.0037f) {
        const float e = v16_exp((v16){0} + x)[0];
        const double want = exp((double)x);
        if (x < -87.4f)
            CHECK(e == 0.0f, "exp(%g) = %g, want 0", x, e);
        else if (want > 1e-37) {
            const double rel = fabs(e - want) / want;
            worst = rel > worst ? rel : worst;
        }
    }
    CHECK(worst < 5e-7, "exp: worst relative error %g", worst);
    CHECK(v16_exp((v16){0} - INFINITY)[0] == 0.0f, "exp(-inf)");
    CHECK(v16_exp((v16){0})[0] == 1.0f, "exp(0)");
    double worst_silu = 0;
    for (float g = -100.0f; g <= 100.0f; g += 0.0031f) {
        const double want = g / (1.0 + exp(-(double)g)) * 0.75;
        const float got = v16_silu_mul((v16){0} + g, (v16){0} + 0.75f)[0];
        const double err = fabs(got - want) / (fabs(want) > 1e-30 ? fabs(want) : 1e-30);
        if (fabs(want) > 1e-30)
            worst_silu = err > worst_silu ? err : worst_silu;
    }
    CHECK(worst_silu < 1e-6, "silu: worst relative error %g", worst_silu);

    check_half();
    check_build("portable", portable);
    check_silu_span("portable", silu_mul_portable);
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c()) {
        check_build("avx2", attend_queries_avx2);
        check_silu_span("avx2", silu_mul_avx2);
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        cpu_has_f16c()) {
        check_build("avx512", attend_queries_avx512);
        check_silu_span("avx512", silu_mul_avx512);
    }
#endif
    return test_result("all attention checks passed");
}
