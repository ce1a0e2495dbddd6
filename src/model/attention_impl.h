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

/* out += w * v; restrict and blocks of eight let the compiler use vector registers */
static inline void attn_axpy(float *restrict out, float w, const float *restrict v, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            out[i + k] += w * v[i + k];
    for (; i < n; i++)
        out[i] += w * v[i];
}

/* out[D] = softmax(q . k_s * scale for s < n_keys) weighted sum of v_s; scores holds n_keys floats. */
static inline void attend_head(const float *q, const float *kc, const float *vc, int n_keys, int D, float scale,
                               float *scores, float *out)
{
    float mx = -INFINITY;
    for (int s = 0; s < n_keys; s++) {
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
    memset(out, 0, (size_t)D * sizeof *out);
    for (int s = 0; s < n_keys; s++)
        attn_axpy(out, scores[s] * inv, vc + (size_t)s * D, D);
}

#endif
