/* The attention inner loop compiled with AVX2 + FMA (chosen at run time by qwen2.c). */
#include "model/attention_impl.h"

void attend_head_avx2(const float *q, const float *kc, const float *vc, int n_keys, int D, float scale,
                      float *scores, float *out);

void attend_head_avx2(const float *q, const float *kc, const float *vc, int n_keys, int D, float scale,
                      float *scores, float *out)
{
    attend_head(q, kc, vc, n_keys, D, scale, scores, out);
}
