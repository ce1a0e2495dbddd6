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
#define KSCRATCH_SLOTS 6
void *kernels_scratch(int slot, size_t bytes);

void qmatmul_avx2(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1);
void qmatmul_avx512(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1);
void qmatmul_avx512vnni(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0,
                        int r1);

typedef struct qx_prep {
    int cb;          /* weight bytes per chunk (32 or 64) */
    int lanes;       /* cb / 4 */
    int nchunks;     /* chunks per row, the last one possibly partial */
    int tail_bytes;  /* valid weight bytes of the last chunk (1..cb) */
    int epc;         /* elements per chunk */
    int groups;      /* groups per row */
    int gstride;     /* floats per token in xs (groups rounded up, plus room for vector over-reads) */
    size_t qstride;  /* bytes per token in qx */
    size_t dstride;  /* floats per token in dxl */
    int8_t *qx;
    float *dxl;
    float *xs;
} qx_prep;

static inline int prep_int_rint(float v)
{
    /* v is within [-127.5, 127.5] for finite inputs; NaN or inf inputs give clamped garbage. */
    if (!(v > -127.0f))
        return v != v ? 0 : -127;
    if (v > 127.0f)
        return 127;
    return (int)lrintf(v);
}

/* Quantizes n_tok rows of x for chunks of cb weight bytes. Returns -1 when scratch memory is lacking. */
static inline int qx_prepare(qx_prep *p, const qweight *w, const float *x, int n_tok, int cb)
{
    const int bits = w->bits, G = w->group_size, cols = w->cols;
    const size_t row_bytes = (size_t)cols * (size_t)bits / 8;
    p->cb = cb;
    p->lanes = cb / 4;
    p->epc = cb * 8 / bits;
    p->nchunks = (int)((row_bytes + (size_t)cb - 1) / (size_t)cb);
    p->tail_bytes = (int)(row_bytes - (size_t)(p->nchunks - 1) * (size_t)cb);
    p->groups = cols / G;
    p->gstride = (p->groups + 15) / 16 * 16 + 16;
    p->qstride = (size_t)p->nchunks * (size_t)(bits == 4 ? 2 * cb : cb);
    p->dstride = (size_t)p->nchunks * (size_t)p->lanes;
    size_t nt = (size_t)(n_tok > 0 ? n_tok : 1);
    p->qx = kernels_scratch(0, nt * p->qstride + 64);
    p->dxl = kernels_scratch(1, (nt * p->dstride + 16) * sizeof(float));
    p->xs = kernels_scratch(2, (nt * (size_t)p->gstride + 16) * sizeof(float));
    float *dx = kernels_scratch(3, ((size_t)p->groups + 16) * sizeof(float));
    if (!p->qx || !p->dxl || !p->xs || !dx)
        return -1;

    const int epl = p->epc / p->lanes; /* elements per lane: 8 (4-bit) or 4 (8-bit) */
    for (int t = 0; t < n_tok; t++) {
        const float *xt = x + (size_t)t * (size_t)cols;
        int8_t *q = p->qx + (size_t)t * p->qstride;
        float *xs = p->xs + (size_t)t * (size_t)p->gstride;
        float *dxl = p->dxl + (size_t)t * p->dstride;
        memset(q, 0, p->qstride);
        memset(xs, 0, (size_t)p->gstride * sizeof(float));
        for (int g = 0; g < p->groups; g++) {
            const float *xg = xt + (size_t)g * (size_t)G;
            float amax = 0.0f, sum = 0.0f;
            for (int j = 0; j < G; j++) {
                float a = fabsf(xg[j]);
                amax = a > amax ? a : amax;
                sum += xg[j];
            }
            xs[g] = sum;
            dx[g] = amax / 127.0f;
            const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            for (int j = 0; j < G; j++) {
                int e = g * G + j;
                int c = e / p->epc, k = e % p->epc;
                size_t at;
                if (bits == 4)
                    at = (size_t)c * (size_t)(2 * cb) + (size_t)((k & 1) * cb + (k >> 1));
                else
                    at = (size_t)c * (size_t)cb + (size_t)k;
                q[at] = (int8_t)prep_int_rint(xg[j] * inv);
            }
        }
        for (int c = 0; c < p->nchunks; c++)
            for (int l = 0; l < p->lanes; l++) {
                int e = c * p->epc + l * epl;
                dxl[(size_t)c * (size_t)p->lanes + (size_t)l] = e < cols ? dx[e / G] : 0.0f;
            }
    }
    return 0;
}

#endif
