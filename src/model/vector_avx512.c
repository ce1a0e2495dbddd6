/* The forward pass's vector code compiled with AVX-512 (chosen at run time by qwen2.c). */
#include "model/attention_impl.h"
#include "model/vector_isa.h"

void attend_group_avx512(const float *q, int ng, const float *kt, const float *vc, int n_keys, int D,
                        float scale, float *scores, float *out)
{
    attend_group(q, ng, kt, vc, n_keys, D, scale, scores, out);
}

void silu_mul_avx512(float *g, const float *u, int n) { v16_silu_mul_span(g, u, n); }
