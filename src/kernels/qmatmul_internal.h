/* Private parts shared by the SIMD kernels: the activation quantizer and per-thread scratch memory.
 *
 * The SIMD kernels quantize each input row x[t] per weight group to int8 (qx = rint(x / dx) with
 * dx = max|x_g| / 127) and compute, per group, s * dx * sum(q * qx) + b * sum(x). The group sums of x
 * are exact floats, so only the s * sum(x * q) part carries the activation rounding error.
 *
 * Layout of the quantized activations, per token, per chunk of CB weight bytes:
 *   4-bit: CB bytes of the even elements (they meet the low nibbles), then CB bytes of the odd ones;
 *   8-bit: CB bytes in element order.
 * dxl holds, per token and chunk, dx expanded to the chunk's 32-bit lanes (each lane covers 4 weight
 * bytes, which always lie in one group), so the kernels can scale a lane-wise int32 dot product. */
#ifndef PUNIE_KERNELS_QMATMUL_INTERNAL_H
#define PUNIE_KERNELS_QMATMUL_INTERNAL_H

#include "kernels/qmatmul.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Per-thread growable buffer; slot 0..KSCRATCH_SLOTS-1. Returns NULL when memory is exhausted. */
#define KSCRATCH_SLOTS 8
void *kernels_scratch(int slot, size_t bytes);

void qmatmul_avx2(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1);
void qmatmul_avx512(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1);
void qmatmul_avx512vnni(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0,
                        int r1);
/* AMX tiles (needs the OS permission the dispatcher requests); meant for n_tok >= 16. */
void qmatmul_amx(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1);

#endif
