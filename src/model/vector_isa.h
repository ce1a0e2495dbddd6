/* The forward pass's vector code (attention_impl.h, vec16.h) compiled for each instruction set
 * (vector_avx2.c, vector_avx512.c); qwen2.c picks the widest build the CPU runs. */
#ifndef PUNIE_MODEL_VECTOR_ISA_H
#define PUNIE_MODEL_VECTOR_ISA_H

#include <stddef.h>
#include <stdint.h>

/* attend_queries of attention_impl.h */
typedef void (*attend_fn)(const float *q, size_t q_stride, int nq, int ng, const uint16_t *kt, const uint16_t *vc,
                          int n_keys0, int key_cap, int D, float scale, float *scores, float *out, size_t out_stride,
                          float *lse);
/* v16_silu_mul_span of vec16.h: g[i] = silu(g[i]) * u[i] */
typedef void (*silu_mul_fn)(float *g, const float *u, int n);

void attend_queries_avx2(const float *q, size_t q_stride, int nq, int ng, const uint16_t *kt, const uint16_t *vc,
                         int n_keys0, int key_cap, int D, float scale, float *scores, float *out, size_t out_stride,
                         float *lse);
void attend_queries_avx512(const float *q, size_t q_stride, int nq, int ng, const uint16_t *kt, const uint16_t *vc,
                           int n_keys0, int key_cap, int D, float scale, float *scores, float *out, size_t out_stride,
                           float *lse);
void silu_mul_avx2(float *g, const float *u, int n);
void silu_mul_avx512(float *g, const float *u, int n);

#endif
