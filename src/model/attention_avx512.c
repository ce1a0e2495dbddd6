/* The attention of attention_impl.h compiled with AVX-512 (chosen at run time by qwen2.c). */
#include "model/attention_impl.h"

void attend_group_avx512(const float *q, int ng, const float *kt, const float *vc, int n_keys, int D,
                         float scale, float *scores, float *out)
{
    attend_group(q, ng, kt, vc, n_keys, D, scale, scores, out);
}
