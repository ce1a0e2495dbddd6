/* One query head attending over its cached keys and values (causal softmax, float32).
 * Included by qwen2.c (portable build) and attention_avx2.c (built with AVX2 + FMA), which
 * compile the same source for different instruction sets. */
#ifndef PUNIE_MODEL_ATTENTION_IMPL_H
#define PUNIE_MODEL_ATTENTION_IMPL_H

#include <math.h>
#include <string.h>

/* Eight independent partial sums let the compiler vectorise without reassociating float adds. */
static inline float attn_dot(const float *a, const float *b, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* Four keys at once, each summed exactly as attn_dot does: four independent accumulator chains
 * instead of one keep the FMA units busy (one chain waits on the FMA latency). */
static inline void attn_dot4(const float *a, const float *b0, const float *b1, const float *b2, const float *b3,
                             int n, float *out)
{
    float c0[8] = {0}, c1[8] = {0}, c2[8] = {0}, c3[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) {
            c0[k] += a[i + k] * b0[i + k];
            c1[k] += a[i + k] * b1[i + k];
            c2[k] += a[i + k] * b2[i + k];
            c3[k] += a[i + k] * b3[i + k];
        }
    float *acc[4] = {c0, c1, c2, c3};
    const float *b[4] = {b0, b1, b2, b3};
    for (int r = 0; r < 4; r++) {
        const float *c = acc[r];
        float s = ((c[0] + c[4]) + (c[1] + c[5])) + ((c[2] + c[6]) + (c[3] + c[7]));
        for (int j = i; j < n; j++)
            s += a[j] * b[r][j];
        out[r] = s;
    }
}

/* out[i] = sum over s of w[s] * v_s[i] with w[s] = scores[s] * inv, added key by key in order (the
 * same sums as one out += w * v_s pass per key) but with 64 outputs held in registers across all keys
 * instead of loading and storing out for every key. */
static inline void attn_weighted_sum(float *restrict out, const float *restrict scores, float inv,
                                     const float *restrict vc, int n_keys, int D)
{
    int i0 = 0;
    for (; i0 + 64 <= D; i0 += 64) {
        /* eight named blocks: the compiler keeps each in a vector register (a 2-D array stays in memory) */
        float a0[8] = {0}, a1[8] = {0}, a2[8] = {0}, a3[8] = {0}, a4[8] = {0}, a5[8] = {0}, a6[8] = {0},
              a7[8] = {0};
        for (int s = 0; s < n_keys; s++) {
            const float w = scores[s] * inv;
            const float *v = vc + (size_t)s * D + i0;
            for (int k = 0; k < 8; k++) {
                a0[k] += w * v[k];
                a1[k] += w * v[8 + k];
                a2[k] += w * v[16 + k];
                a3[k] += w * v[24 + k];
                a4[k] += w * v[32 + k];
                a5[k] += w * v[40 + k];
                a6[k] += w * v[48 + k];
                a7[k] += w * v[56 + k];
            }
        }
        for (int k = 0; k < 8; k++) {
            out[i0 + k] = a0[k];
            out[i0 + 8 + k] = a1[k];
            out[i0 + 16 + k] = a2[k];
            out[i0 + 24 + k] = a3[k];
            out[i0 + 32 + k] = a4[k];
            out[i0 + 40 + k] = a5[k];
            out[i0 + 48 + k] = a6[k];
            out[i0 + 56 + k] = a7[k];
        }
    }
    for (; i0 < D; i0++) {
        float a = 0.0f;
        for (int s = 0; s < n_keys; s++)
            a += scores[s] * inv * vc[(size_t)s * D + i0];
        out[i0] = a;
    }
}

/* out[D] = softmax(q . k_s * scale for s < n_keys) weighted sum of v_s; scores holds n_keys floats. */
static inline void attend_head(const float *q, const float *kc, const float *vc, int n_keys, int D, float scale,
                               float *scores, float *out)
{
    float mx = -INFINITY;
    int s0 = 0;
    for (; s0 + 4 <= n_keys; s0 += 4) {
        const float *k0 = kc + (size_t)s0 * D;
        attn_dot4(q, k0, k0 + D, k0 + 2 * (size_t)D, k0 + 3 * (size_t)D, D, scores + s0);
        for (int r = 0; r < 4; r++) {
            float sc = scores[s0 + r] * scale;
            scores[s0 + r] = sc;
            if (sc > mx)
                mx = sc;
        }
    }
    for (int s = s0; s < n_keys; s++) {
        float sc = attn_dot(q, kc + (size_t)s * D, D) * scale;
        scores[s] = sc;
        if (sc > mx)
            mx = sc;
    }
    float sum = 0.0f;
    for (int s = 0; s < n_keys; s++) {
        scores[s] = expf(scores[s] - mx);
        sum += scores[s];
    }
    float inv = 1.0f / sum;
    attn_weighted_sum(out, scores, inv, vc, n_keys, D);
}

#endif
