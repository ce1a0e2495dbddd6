/* MLX affine-quantized matrix kernels (spec/engine.md §3).
 * A quantized Linear W[rows][cols] is stored as packed U32 words, LSB first, with one scale and one
 * bias per group of group_size columns: w = scale * q + bias. Pointers come straight from an mmap'd
 * safetensors file, so they may be unaligned: kernels load through memcpy or unaligned SIMD loads. */
#ifndef PUNIE_KERNELS_QMATMUL_H
#define PUNIE_KERNELS_QMATMUL_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

enum float_dtype { DT_F32, DT_F16, DT_BF16 };

typedef struct qweight {
    const uint8_t *packed;  /* rows * cols * bits / 8 bytes */
    const uint8_t *scales;  /* rows * (cols / group_size) values of sdtype */
    const uint8_t *biases;  /* same shape and dtype as scales */
    enum float_dtype sdtype;
    int rows, cols, bits, group_size; /* bits: 4 or 8; group_size: 32, 64 or 128 */
} qweight;

/* Bytes of one stored value of dtype dt; of one packed row; of one row's scales (or biases); and of
 * the whole tensor (packed weights, scales and biases). */
static inline size_t float_dtype_size(enum float_dtype dt) { return dt == DT_F32 ? 4 : 2; }
static inline size_t qweight_row_bytes(const qweight *w) { return (size_t)w->cols * (size_t)w->bits / 8; }
static inline size_t qweight_row_scale_bytes(const qweight *w)
{
    return (size_t)(w->cols / w->group_size) * float_dtype_size(w->sdtype);
}
static inline size_t qweight_bytes(const qweight *w)
{
    return (size_t)w->rows * (qweight_row_bytes(w) + 2 * qweight_row_scale_bytes(w));
}

/* y[t * ldy + r] = sum_c x[t * cols + c] * w[r][c] for t in [0, n_tok) and r in [r0, r1).
 * Callers split [0, rows) across threads; the function itself is single-threaded. */
void qmatmul(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1);

/* The scalar reference, always available (used by tests to check the SIMD paths). */
void qmatmul_scalar(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1);

/* Dequantizes one row (embedding lookup). */
void qweight_dequant_row(const qweight *w, int row, float *out);

/* Conversions used everywhere floats are stored as F16/BF16. */
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f); /* nearest, ties to even; past the largest half: infinity; NaN stays NaN */
float bf16_to_f32(uint16_t b);
float load_float(const uint8_t *p, enum float_dtype dt, size_t index); /* unaligned-safe */

/* The instruction set the dispatcher picked: "amx" (AVX-512 VNNI, AMX tiles for batches of 16+
 * tokens), "avx512vnni" (batches of 16+ tokens on a VNNI panel kernel), "avx512", "avx2vnni" (AVX2
 * with AVX-VNNI products, batches of 16+ tokens on an AVX-VNNI panel kernel), "avx2" or "scalar".
 * PUNIE_ISA=scalar|avx2|avx2vnni|avx512|amx in the environment caps the choice (tests, benchmarks). */
const char *kernels_isa(void);

/* Whether the CPU converts halves in hardware (F16C), which every AVX2 build here assumes. */
bool cpu_has_f16c(void);

/* Activations prepared once and shared read-only by every thread of a pool, so that the int8
 * quantization inside qmatmul is not repeated by each thread (it reads all of x; with many threads
 * and long prompts that is a large part of prefill). Use:
 *   qact *a = qact_new();                      once
 *   qact_reserve(a, w, x, n_tok)               one thread; w gives cols, group size and bits
 *   qact_fill(a, i, n)                         thread i of n, then a barrier
 *   qmatmul_prepared(w2, a, y, ldy, r0, r1)    each thread its rows, for any w2 of w's shape
 *   qact_free(a)                               at the end (a can be reserved again before that)
 * x must not change until the last qmatmul_prepared. Results are those of qmatmul, except that
 * qmatmul processes batches over 256 tokens in slices (same math, possibly another kernel for a
 * short last slice). qact_reserve returns -1 when memory is lacking (a stays usable). */
typedef struct qact qact;
qact *qact_new(void);
void qact_free(qact *a);
int qact_reserve(qact *a, const qweight *w, const float *x, int n_tok);
void qact_fill(qact *a, int part, int nparts);
void qmatmul_prepared(const qweight *w, const qact *a, float *y, int ldy, int r0, int r1);

/* Forces one implementation ("scalar", "avx2", "avx2vnni", "avx512" without VNNI, "avx512vnni", "amx")
 * if this CPU has it; returns 0, or -1 when unsupported. For tests and benchmarks; not thread-safe against running
 * kernels. The SIMD paths quantize activations per group to int8 (logits within ~1e-2 of fp32). */
int kernels_select_isa(const char *name);

#endif
