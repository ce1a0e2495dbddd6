/* A 16-float vector in GCC/clang's generic vector extension, lowered to whatever instruction set
 * the including file is compiled for (SSE2, AVX2, AVX-512), and the few operations on it that the
 * forward pass needs: loads (also of halves, the KV cache's type), stores, a select, e^x for x <= 0 and
 * SwiGLU's silu(g) * u. */
#ifndef PUNIE_MODEL_VEC16_H
#define PUNIE_MODEL_VEC16_H

#include <stdint.h>
#include <string.h>

#include "kernels/qmatmul.h" /* f16_to_f32 */
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

typedef float v16 __attribute__((vector_size(64)));

/* the helpers below are static inline: no vector ever crosses a real call boundary */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

static inline v16 v16_load(const float *p)
{
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void v16_store(float *p, v16 v) { memcpy(p, &v, sizeof v); }

/* 16 halves as floats: one instruction where the build has F16C or AVX-512 */
static inline v16 v16_load_half(const uint16_t *p)
{
#if defined(__AVX512F__)
    const __m512 f = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)p));
    v16 v;
    memcpy(&v, &f, sizeof v);
    return v;
#elif defined(__F16C__)
    const __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
    const __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p + 8)));
    v16 v;
    memcpy(&v, &lo, 32);
    memcpy((char *)&v + 32, &hi, 32);
    return v;
#else
    v16 v;
    for (int i = 0; i < 16; i++)
        v[i] = f16_to_f32(p[i]);
    return v;
#endif
}

typedef int vi16 __attribute__((vector_size(64)));

/* lanes of a where mask is set (all ones), else of b */
static inline v16 v16_select(vi16 mask, v16 a, v16 b)
{
    return (v16)(((vi16)a & mask) | ((vi16)b & ~mask));
}

/* e^x for x <= 0 (softmax arguments), within about 2 ulp of expf; 0 below -87.3 and for -inf.
 * x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial to r^6 (error ~1e-7 relative),
 * 2^n added to the exponent bits. */
static inline v16 v16_exp(v16 x)
{
    const v16 lo = (v16){0} - 87.33f;
    const vi16 under = x < lo;
    x = v16_select(under, lo, x);
    const v16 t = x * 1.44269504f + 12582912.0f; /* 1.5 * 2^23: rounds n to an integer */
    const v16 n = t - 12582912.0f;
    const vi16 ni = (vi16)t - 0x4b400000;
    const v16 r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    v16 p = r * (1.0f / 720) + (1.0f / 120);
    p = p * r + (1.0f / 24);
    p = p * r + (1.0f / 6);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return (v16)(((vi16)p + (ni << 23)) & ~under);
}

/* silu(g) * u = g / (1 + e^-g) * u, through e^-|g| so that the exponent never overflows */
static inline v16 v16_silu_mul(v16 g, v16 u)
{
    const vi16 neg = g < 0.0f;
    const v16 e = v16_exp(v16_select(neg, g, -g));
    return v16_select(neg, g * e, g) / (1.0f + e) * u;
}

/* g[i] = silu(g[i]) * u[i] for i in [0, n) (SwiGLU). Every element goes through the same lane
 * arithmetic whatever n is: a ragged end is done as the last 16 elements, computed from the inputs
 * before the loop overwrites the ones they share with it. No stack buffers: over-aligned locals
 * trip the sanitizers' fake stack frames. */
static inline void v16_silu_mul_span(float *g, const float *u, int n)
{
    if (n < 16) {
        for (int k = 0; k < n; k++)
            g[k] = v16_silu_mul((v16){0} + g[k], (v16){0} + u[k])[0];
        return;
    }
    const v16 last = v16_silu_mul(v16_load(g + n - 16), v16_load(u + n - 16));
    for (int i = 0; i + 16 <= n; i += 16)
        v16_store(g + i, v16_silu_mul(v16_load(g + i), v16_load(u + i)));
    v16_store(g + n - 16, last);
}


#endif
