/* The forward pass's vector code compiled with AVX-512 (chosen at run time by qwen2.c). */
#include "model/attention_impl.h"
#include "model/vector_isa.h"

void attend_queries_avx512(const float *q, size_t q_stride, int nq, int ng, const uint16_t *kt, const uint16_t *vc,
                           int n_keys0, int key_cap, int D, float scale, float *scores, float *out, size_t out_stride,
                           float *lse)
{
    attend_queries(q, q_stride, nq, ng, kt, vc, n_keys0, key_cap, D, scale, scores, out, out_stride, lse);
}

void silu_mul_avx512(float *g, const float *u, int n) { v16_silu_mul_span(g, u, n); }
