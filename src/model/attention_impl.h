/* Attention of the query heads that share one key/value head, for a run of consecutive query
 * positions (causal softmax; float32 arithmetic on a half-precision KV cache). Included by qwen2.c
 * (portable build), vector_avx2.c and vector_avx512.c, which compile the same source for different
 * instruction sets (vector_isa.h).
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
/* With 32 vector registers of 16 floats (AVX-512), scores take two key blocks and values 64
 * dimensions at a time (16 accumulators); narrower builds keep 8, which their registers hold. */
#if defined(__AVX512F__)
#define ATT_WIDE 1
#else
#define ATT_WIDE 0
#endif
#define ATT_HMAX 8  /* query heads computed together */

/* softmax over s[0, n_keys) in place; the rest of the last block of 16 is set to 0. Returns the
 * log of the sum of exp(s) (what a partial softmax over some of the keys needs to be combined with
 * the others, att_combine). */
static inline float att_softmax(float *s, int n_keys)
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
    return mx + logf(total);
}

/* Scores of heads [0, hn) (hn <= ATT_HMAX) against the keys of NKB consecutive blocks from kb (1 or
 * 2: 16 accumulators keep both FMA pipes busy), scaled, into s[h * stride]. Absent heads repeat head
 * 0 (a fixed count keeps the accumulators in registers); not stored. DC and HN are D and hn when the
 * caller knows them at compile time (0 otherwise): the heads' queries are then constant offsets from
 * one register instead of eight pointers, which the compiler otherwise spills. */
static inline __attribute__((always_inline)) void att_scores_blocks(const float *q, int hn, int D, const uint16_t *kb,
                                                                    float scale, float *s, size_t stride,
                                                                    const int NKB, const int DC, const int HN)
{
    const int Dk = DC ? DC : D;
    v16 acc[2][ATT_HMAX];
#pragma GCC unroll 2
    for (int b = 0; b < NKB; b++)
#pragma GCC unroll 8
        for (int h = 0; h < ATT_HMAX; h++)
            acc[b][h] = (v16){0};
    const int heads = HN ? HN : hn;
    size_t off[ATT_HMAX]; /* constants when DC and HN are */
#pragma GCC unroll 8
    for (int h = 0; h < ATT_HMAX; h++)
        off[h] = (size_t)(h < heads ? h : 0) * (size_t)Dk;
    for (int d = 0; d < Dk; d++) {
#pragma GCC unroll 2
        for (int b = 0; b < NKB; b++) {
            const v16 k = v16_load_half(kb + ((size_t)b * Dk + (size_t)d) * ATT_KB);
#pragma GCC unroll 8
            for (int h = 0; h < ATT_HMAX; h++)
                acc[b][h] += q[off[h] + (size_t)d] * k;
        }
    }
    for (int b = 0; b < NKB; b++)
        for (int h = 0; h < hn; h++)
            v16_store(s + (size_t)h * stride + (size_t)b * ATT_KB, acc[b][h] * scale);
}

/* out[h][i] += sum over keys s in [s0, s1) of p[h][s] * v_s[i] for heads [0, hn) (hn <= 4; absent
 * heads repeat head 0 and are not stored) and the NV * 16 dimensions from i0; out starts from 0 when
 * s0 == 0. Keys are added in order one at a time, so a run of key ranges sums exactly as one range. */
static inline __attribute__((always_inline)) void att_values_block(const float *p, size_t stride, int hn,
                                                                   const uint16_t *vc, int s0, int s1, int D,
                                                                   int i0, float *out, const int NV)
{
    const float *ph[4];
    for (int h = 0; h < 4; h++)
        ph[h] = p + (size_t)(h < hn ? h : 0) * stride;
    v16 a[4][4];
#pragma GCC unroll 4
    for (int h = 0; h < 4; h++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            a[h][v] = s0 == 0 ? (v16){0} : v16_load(out + (size_t)(h < hn ? h : 0) * D + i0 + 16 * v);
    for (int s = s0; s < s1; s++) {
        const uint16_t *vs = vc + (size_t)s * D + i0;
        v16 x[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            x[v] = v16_load_half(vs + 16 * v);
#pragma GCC unroll 4
        for (int h = 0; h < 4; h++) {
            const float w = ph[h][s];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                a[h][v] += w * x[v];
        }
    }
    for (int h = 0; h < hn; h++)
        for (int v = 0; v < NV; v++)
            v16_store(out + (size_t)h * D + i0 + 16 * v, a[h][v]);
}

/* The same for all D dimensions: wide blocks (16 accumulators with AVX-512's 32 registers, 8 in
 * narrower builds), then 16 at a time, then one by one. */
static inline void att_values4(const float *p, size_t stride, int hn, const uint16_t *vc, int s0, int s1, int D,
                               float *out)
{
    const int wide = ATT_WIDE ? 4 : 2;
    int i0 = 0;
    for (; i0 + 16 * wide <= D; i0 += 16 * wide) {
        if (ATT_WIDE)
            att_values_block(p, stride, hn, vc, s0, s1, D, i0, out, 4);
        else
            att_values_block(p, stride, hn, vc, s0, s1, D, i0, out, 2);
    }
    for (; i0 + 16 <= D; i0 += 16)
        att_values_block(p, stride, hn, vc, s0, s1, D, i0, out, 1);
    for (; i0 < D; i0++)
        for (int h = 0; h < hn; h++) {
            float acc = s0 == 0 ? 0.0f : out[(size_t)h * D + i0];
            for (int s = s0; s < s1; s++)
                acc += p[(size_t)h * stride + (size_t)s] * f16_to_f32(vc[(size_t)s * D + i0]);
            out[(size_t)h * D + i0] = acc;
        }
}

#define ATT_VCHUNK 64 /* keys per value chunk: 16 KB of values (head size 128) */

/* keys seen by query j of a run whose first query sees n_keys0, capped at key_cap */
static inline int att_query_keys(int n_keys0, int j, int key_cap)
{
    return n_keys0 + j < key_cap ? n_keys0 + j : key_cap;
}

/* floats of one head's scores for n_keys keys: whole key blocks */
static inline size_t att_key_span(int n_keys) { return (size_t)(n_keys + ATT_KB - 1) / ATT_KB * ATT_KB; }

/* Causal attention of nq consecutive query positions for the ng heads that share one key/value
 * head: query j (heads at q + j * q_stride, h * D) sees keys 0 .. min(n_keys0 + j, key_cap) - 1 of
 * kt (transposed blocks) and vc ([key][D]); its output goes to out + j * out_stride. scores holds
 * nq * ng * att_key_span(n_keys0 + nq - 1) floats. Each key block and value chunk is read from memory
 * once for all nq queries (from L1/L2 for the others): with one query at a time, a long prompt
 * streamed the whole cache from L3 for every position. Every query's result is the one it gets
 * alone. When lse is not NULL, lse[j * ng + h] receives the log of the softmax's sum: the keys may
 * then be one slice of a longer cache (key_cap caps the queries that see past the slice), combined
 * with the other slices by att_combine. */
static inline void attend_queries(const float *q, size_t q_stride, int nq, int ng, const uint16_t *kt,
                                  const uint16_t *vc, int n_keys0, int key_cap, int D, float scale, float *scores,
                                  float *out, size_t out_stride, float *lse)
{
    const int nk_max = n_keys0 + nq - 1 < key_cap ? n_keys0 + nq - 1 : key_cap;
    const size_t span = att_key_span(nk_max); /* floats per head's scores */
    const int nb_max = (int)(span / ATT_KB);
    const int step = ATT_WIDE ? 2 : 1; /* key blocks per scores call */
    for (int b = 0; b < nb_max; b += step)
        for (int j = 0; j < nq; j++) {
            const int nb = (int)(att_key_span(att_query_keys(n_keys0, j, key_cap)) / ATT_KB); /* its blocks */
            if (b >= nb)
                continue;
            for (int h0 = 0; h0 < ng; h0 += ATT_HMAX) {
                const int hn = ng - h0 < ATT_HMAX ? ng - h0 : ATT_HMAX;
                const float *qj = q + (size_t)j * q_stride + (size_t)h0 * D;
                float *sj = scores + ((size_t)j * ng + (size_t)h0) * span + (size_t)b * ATT_KB;
                const uint16_t *kb = kt + (size_t)b * D * ATT_KB;
                const int two = step == 2 && b + 1 < nb;
                /* Qwen2.5's head size and groups of 5 to 8 heads (0.5B to 32B) at compile time */
#define ATT_SCORES(NKB, DC, HN) att_scores_blocks(qj, hn, D, kb, scale, sj, span, NKB, DC, HN)
#define ATT_SCORES_HN(HN) (two ? ATT_SCORES(2, 128, HN) : ATT_SCORES(1, 128, HN))
                if (D == 128 && hn == 8)
                    ATT_SCORES_HN(8);
                else if (D == 128 && hn == 7)
                    ATT_SCORES_HN(7);
                else if (D == 128 && hn == 6)
                    ATT_SCORES_HN(6);
                else if (D == 128 && hn == 5)
                    ATT_SCORES_HN(5);
                else
                    two ? ATT_SCORES(2, 0, 0) : ATT_SCORES(1, 0, 0);
#undef ATT_SCORES_HN
#undef ATT_SCORES
            }
        }
    for (int j = 0; j < nq; j++)
        for (int h = 0; h < ng; h++) {
            float *sh = scores + ((size_t)j * ng + (size_t)h) * span;
            const float l = att_softmax(sh, att_query_keys(n_keys0, j, key_cap));
            if (lse)
                lse[(size_t)j * ng + (size_t)h] = l;
        }
    for (int c0 = 0; c0 < nk_max; c0 += ATT_VCHUNK)
        for (int j = 0; j < nq; j++) {
            const int nk = att_query_keys(n_keys0, j, key_cap);
            if (c0 >= nk)
                continue;
            const int c1 = c0 + ATT_VCHUNK < nk ? c0 + ATT_VCHUNK : nk;
            for (int h0 = 0; h0 < ng; h0 += 4)
                att_values4(scores + ((size_t)j * ng + (size_t)h0) * span, span, ng - h0 < 4 ? ng - h0 : 4, vc, c0,
                            c1, D, out + (size_t)j * out_stride + (size_t)h0 * D);
        }
}

/* Joins the slices of one query head's attention computed separately (attend_queries with lse):
 * slice s gave the output parts[s * part_stride + i] (i < D), normalised over its own keys, and the
 * log of its softmax's sum lse[s * lse_stride]. Each slice is weighted by its share of the total sum,
 * exp(lse_s - max) / sum over slices of exp(lse_t - max), which gives the softmax over all keys. */
static inline void att_combine(const float *parts, size_t part_stride, const float *lse, size_t lse_stride,
                               int n_parts, int D, float *out)
{
    float mx = lse[0];
    for (int s = 1; s < n_parts; s++)
        mx = lse[s * lse_stride] > mx ? lse[s * lse_stride] : mx;
    float total = 0.0f;
    for (int s = 0; s < n_parts; s++)
        total += expf(lse[s * lse_stride] - mx);
    for (int i = 0; i < D; i++)
        out[i] = 0.0f;
    for (int s = 0; s < n_parts; s++) {
        const float w = expf(lse[s * lse_stride] - mx) / total;
        const float *p = parts + s * part_stride;
        for (int i = 0; i < D; i++)
            out[i] += w * p[i];
    }
}

#endif
