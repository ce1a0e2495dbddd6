/* The activation quantizer of the SIMD kernels; included only by files built with AVX2 or better.
 * See qmatmul_internal.h for the layout it produces. */
#ifndef PUNIE_KERNELS_QMATMUL_QUANT_H
#define PUNIE_KERNELS_QMATMUL_QUANT_H

#include "kernels/qmatmul_internal.h"


/* The kernels' files are compiled with AVX2 (at least), so the quantizer uses 256-bit vectors. */
#include <immintrin.h>

static inline float hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline float hsum8(__m256 v)
{
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* Packs 4 x 8 int32 (each within int8 range) into 32 int8 in element order. */
static inline __m256i pack32(__m256i a0, __m256i a1, __m256i a2, __m256i a3)
{
    __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(a0, a1), _mm256_packs_epi32(a2, a3));
    /* packs work per 128-bit lane: dwords come out as a0L a1L a2L a3L a0H a1H a2H a3H */
    return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Two-level int8 quantization of 32 floats: with v = x * inv (|v| <= 127), hi = rint(v) and
 * lo = rint(256 * (v - hi)), so x ~ dx * (hi + lo / 256) with dx = 1 / inv. One int8 level alone
 * loses too much on activations with outliers (logits off by ~0.3 on the reference model); the
 * second level makes the activation error ~256x smaller for one more int8 product per weight. */
static inline void quant32x2(const float *x, __m256 inv, __m256i *hi, __m256i *lo)
{
    const __m256 k256 = _mm256_set1_ps(256.0f);
    const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
    __m256i h[4], l[4];
    for (int i = 0; i < 4; i++) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * i), inv);
        __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        h[i] = _mm256_cvtps_epi32(r);
        __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(v, r), k256));
        l[i] = _mm256_max_epi32(_mm256_min_epi32(q, lim), nlim);
    }
    *hi = pack32(h[0], h[1], h[2], h[3]);
    *lo = pack32(l[0], l[1], l[2], l[3]);
}

/* max |x| and the sum of one group of G floats (G a multiple of 8) */
static inline float group_absmax_sum(const float *xg, int G, float *sum)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmax = _mm256_setzero_ps(), vsum = _mm256_setzero_ps();
    for (int j = 0; j < G; j += 8) {
        __m256 v = _mm256_loadu_ps(xg + j);
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(v, absmask));
        vsum = _mm256_add_ps(vsum, v);
    }
    *sum = hsum8(vsum);
    return hmax8(vmax);
}

/* Sizes of the layout for chunks of cb weight bytes (no memory yet). */
static inline void qx_layout(qx_prep *p, const qweight *w, int cb)
{
    const int bits = w->bits, G = w->group_size, cols = w->cols;
    const size_t row_bytes = qweight_row_bytes(w);
    p->cb = cb;
    p->lanes = cb / 4;
    p->epc = cb * 8 / bits;
    p->nchunks = (int)((row_bytes + (size_t)cb - 1) / (size_t)cb);
    p->tail_bytes = (int)(row_bytes - (size_t)(p->nchunks - 1) * (size_t)cb);
    p->groups = cols / G;
    p->gstride = (p->groups + 15) / 16 * 16 + 16;
    /* per chunk: the first int8 level, then the second (same layout) */
    p->qstride = (size_t)p->nchunks * (size_t)(bits == 4 ? 4 * cb : 2 * cb);
    p->dstride = (size_t)p->nchunks * (size_t)p->lanes;
}

/* Quantizes tokens [t0, t1) of x (x points at token 0) into p's buffers. */
static inline void qx_fill(const qx_prep *p, const qweight *w, const float *x, int t0, int t1)
{
    const int bits = w->bits, G = w->group_size, cols = w->cols, cb = p->cb;
    const int epl = p->epc / p->lanes; /* elements per lane: 8 (4-bit) or 4 (8-bit) */
    const __m256i even_odd = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                              0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (int t = t0; t < t1; t++) {
        const float *xt = x + (size_t)t * (size_t)cols;
        int8_t *q = p->qx + (size_t)t * p->qstride;
        float *xs = p->xs + (size_t)t * (size_t)p->gstride;
        float *dxl = p->dxl + (size_t)t * p->dstride;
        /* zero the padding of the last chunk and of the group sums */
        memset(q + p->qstride - (size_t)(bits == 4 ? 4 * cb : 2 * cb), 0, (size_t)(bits == 4 ? 4 * cb : 2 * cb));
        memset(xs + p->groups, 0, (size_t)(p->gstride - p->groups) * sizeof(float));
        for (size_t l = (size_t)cols / (size_t)epl; l < p->dstride; l++)
            dxl[l] = 0.0f;
        for (int g = 0; g < p->groups; g++) {
            const float *xg = xt + (size_t)g * (size_t)G;
            const float amax = group_absmax_sum(xg, G, &xs[g]);
            const float d = amax / 127.0f / 256.0f; /* the kernels combine 256 * hi + lo */
            /* amax may be NaN or inf for broken inputs; the result is garbage then, not a crash */
            const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
            for (int j = 0; j < G; j += 32) {
                const int e = g * G + j;
                const int c = e / p->epc, k = e % p->epc;
                __m256i b, b2;
                quant32x2(xg + j, inv, &b, &b2);
                const size_t qchunk = (size_t)(bits == 4 ? 2 * cb : cb);
                if (bits == 4) {
                    /* evens meet the low nibbles, odds the high ones */
                    __m256i s = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(b, even_odd), 0xd8);
                    __m256i s2 = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(b2, even_odd), 0xd8);
                    int8_t *base = q + (size_t)c * 2 * qchunk + (size_t)(k >> 1);
                    _mm_storeu_si128((__m128i *)base, _mm256_castsi256_si128(s));
                    _mm_storeu_si128((__m128i *)(base + cb), _mm256_extracti128_si256(s, 1));
                    _mm_storeu_si128((__m128i *)(base + qchunk), _mm256_castsi256_si128(s2));
                    _mm_storeu_si128((__m128i *)(base + qchunk + cb), _mm256_extracti128_si256(s2, 1));
                } else {
                    int8_t *base = q + (size_t)c * 2 * qchunk + (size_t)k;
                    _mm256_storeu_si256((__m256i *)base, b);
                    _mm256_storeu_si256((__m256i *)(base + qchunk), b2);
                }
            }
            float *dl = dxl + (size_t)g * (size_t)G / (size_t)epl;
            for (int l = 0; l < G / epl; l++)
                dl[l] = d;
        }
    }
}

/* Quantizes n_tok rows of x into per-thread scratch. Returns -1 when memory is lacking. */
static inline int qx_prepare(qx_prep *p, const qweight *w, const float *x, int n_tok, int cb)
{
    qx_layout(p, w, cb);
    const size_t nt = (size_t)(n_tok > 0 ? n_tok : 1);
    p->qx = kernels_scratch(0, nt * p->qstride + 64);
    p->dxl = kernels_scratch(1, (nt * p->dstride + 16) * sizeof(float));
    p->xs = kernels_scratch(2, (nt * (size_t)p->gstride + 16) * sizeof(float));
    if (!p->qx || !p->dxl || !p->xs)
        return -1;
    qx_fill(p, w, x, 0, n_tok);
    return 0;
}

#endif
