/* Attention of the query heads that share one key/value head, for one query position (causal
 * softmax, float32). Included by qwen2.c (portable build), vector_avx2.c and vector_avx512.c,
 * which compile the same source for different instruction sets (vector_isa.h).
 *
 * Grouped-query attention gives every cached key to several query heads (8 in the 3B model), so the
 * heads of a group are computed together: each key and value is read once for all of them. Keys are
 * cached transposed in blocks of ATT_KB positions (block b holds, for each dimension d, the values of
 * keys 16b..16b+15), so the scores of 16 keys are 16 independent sums in one vector and no
 * horizontal additions are needed. The vector type is GCC/clang's generic vector, lowered to
 * whatever the file is compiled for (model/vec16.h). */
#ifndef PUNIE_MODEL_ATTENTION_IMPL_H
#define PUNIE_MODEL_ATTENTION_IMPL_H

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "model/vec16.h"

#define ATT_KB 16   /* keys per transposed block */
#define ATT_HMAX 8  /* query heads computed together */

/* softmax over s[0, n_keys) in place; the rest of the last block of 16 is set to 0 */
static inline void att_softmax(float *s, int n_keys)
{
    const int nb = (n_keys + ATT_KB - 1) / ATT_KB;
    for (int k = n_keys; k < nb * ATT_KB; k++)
        s[k] = -INFINITY;
    v16 m = v16_load(s);
    for (int b = 1; b < nb; b++) {
        const v16 v = v16_load(s + (size_t)b * ATT_KB);
        m = v16_select(v > m, v, m);
    }
    float mx = m[0];
    for (int i = 1; i < 16; i++)
        mx = m[i] > mx ? m[i] : mx;
    v16 sum = (v16){0};
    for (int b = 0; b < nb; b++) {
        const v16 e = v16_exp(v16_load(s + (size_t)b * ATT_KB) - mx);
        v16_store(s + (size_t)b * ATT_KB, e);
        sum += e;
    }
    float total = 0.0f;
    for (int i = 0; i < 16; i++)
        total += sum[i];
    const float inv = 1.0f / total;
    for (int b = 0; b < nb; b++)
        v16_store(s + (size_t)b * ATT_KB, v16_load(s + (size_t)b * ATT_KB) * inv);
}

/* Scores of heads [0, hn) (hn <= ATT_HMAX) against the keys of block kb, scaled, into s[h * stride].
 * Absent heads repeat head 0 (a fixed count keeps the accumulators in registers); not stored. */
static inline void att_scores_block(const float *q, int hn, int D, const float *kb, float scale, float *s,
                                    size_t stride)
{
    const float *qh[ATT_HMAX];
    for (int h = 0; h < ATT_HMAX; h++)
        qh[h] = q + (size_t)(h < hn ? h : 0) * D;
    v16 acc[ATT_HMAX];
#pragma GCC unroll 8
    for (int h = 0; h < ATT_HMAX; h++)
        acc[h] = (v16){0};
    for (int d = 0; d < D; d++) {
        const v16 k = v16_load(kb + (size_t)d * ATT_KB);
#pragma GCC unroll 8
        for (int h = 0; h < ATT_HMAX; h++)
            acc[h] += qh[h][d] * k;
    }
    for (int h = 0; h < hn; h++)
        v16_store(s + (size_t)h * stride, acc[h] * scale);
}

/* out[h][i] = sum over keys s of p[h][s] * v_s[i] for up to 4 heads, keys added in order. */
static inline void att_values4(const float *p, size_t stride, int hn, const float *vc, int n_keys, int D,
                               float *out)
{
    const float *ph[4];
    for (int h = 0; h < 4; h++)
        ph[h] = p + (size_t)(h < hn ? h : 0) * stride;
    int i0 = 0;
    for (; i0 + 32 <= D; i0 += 32) {
        v16 a0[4], a1[4];
#pragma GCC unroll 4
        for (int h = 0; h < 4; h++)
            a0[h] = a1[h] = (v16){0};
        for (int s = 0; s < n_keys; s++) {
            const float *v = vc + (size_t)s * D + i0;
            const v16 v0 = v16_load(v), v1 = v16_load(v + 16);
#pragma GCC unroll 4
            for (int h = 0; h < 4; h++) {
                a0[h] += ph[h][s] * v0;
                a1[h] += ph[h][s] * v1;
            }
        }
        for (int h = 0; h < hn; h++) {
            v16_store(out + (size_t)h * D + i0, a0[h]);
            v16_store(out + (size_t)h * D + i0 + 16, a1[h]);
        }
    }
    for (; i0 < D; i0++)
        for (int h = 0; h < hn; h++) {
            float a = 0.0f;
            for (int s = 0; s < n_keys; s++)
                a += ph[h][s] * vc[(size_t)s * D + i0];
            out[(size_t)h * D + i0] = a;
        }
}

/* Heads [0, ng) with queries q[h * D], keys kt (transposed blocks) and values vc ([key][D]) for keys
 * 0..n_keys-1; out[h * D]. scores holds ng * ATT_KB * ceil(n_keys / ATT_KB) floats. */
static inline void attend_group(const float *q, int ng, const float *kt, const float *vc, int n_keys, int D,
                                float scale, float *scores, float *out)
{
    const int nb = (n_keys + ATT_KB - 1) / ATT_KB;
    const size_t stride = (size_t)nb * ATT_KB;
    for (int h0 = 0; h0 < ng; h0 += ATT_HMAX) {
        const int hn = ng - h0 < ATT_HMAX ? ng - h0 : ATT_HMAX;
        for (int b = 0; b < nb; b++)
            att_scores_block(q + (size_t)h0 * D, hn, D, kt + (size_t)b * D * ATT_KB, scale,
                             scores + (size_t)h0 * stride + (size_t)b * ATT_KB, stride);
    }
    for (int h = 0; h < ng; h++)
        att_softmax(scores + (size_t)h * stride, n_keys);
    for (int h0 = 0; h0 < ng; h0 += 4)
        att_values4(scores + (size_t)h0 * stride, stride, ng - h0 < 4 ? ng - h0 : 4, vc, n_keys, D,
                    out + (size_t)h0 * D);
}

#endif
