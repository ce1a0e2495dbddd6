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

/* Activations laid out for the panel kernels (AMX tiles, or AVX-512 VNNI / AVX-VNNI with one token
 * per lane): per block of 16 tokens and k-step of K bytes, K/4 rows of 64 bytes, each holding the 16
 * tokens' 4 activation bytes for one k; then per group the 16 tokens' dx and sums. */
typedef struct panel_prep {
    int K, ksteps, kpg, groups, ntb;
    int8_t *xb;
    float *dxv, *xsv;
} panel_prep;

/* The first 64-byte row of token block tb's tiles for group g (a group's tiles are contiguous), first
 * level; the second level lies panel_level2(a, cols) bytes further. */
static inline const int8_t *panel_group_rows(const panel_prep *a, int tb, int g)
{
    return a->xb + ((size_t)tb * (size_t)a->ksteps + (size_t)g * (size_t)a->kpg) * (size_t)a->K * 16;
}

static inline size_t panel_level2(const panel_prep *a, int cols) { return (size_t)a->ntb * 16 * (size_t)cols; }

/* A panel kernel on activations in that layout: rows [r0, r1) of y for n_tok tokens. */
typedef void (*panel_kernel_fn)(const qweight *w, const panel_prep *a, int n_tok, float *y, int ldy, int r0,
                                int r1);

static inline size_t qx_align64(size_t n) { return (n + 63) / 64 * 64; }

/* Software prefetch of the scale and bias bytes of rows [row, row + n): they live in tensors of their
 * own, read a few dozen bytes per row, which the hardware prefetcher follows too late (in decode the
 * kernels otherwise stall on them for a third of the time). Prefetches never fault. */
static inline void prefetch_row_scales(const qweight *w, int row, int n)
{
    const size_t per_row = qweight_row_scale_bytes(w);
    const size_t lo = (size_t)row * per_row, hi = lo + (size_t)n * per_row;
    for (size_t off = lo & ~(size_t)63; off < hi; off += 64) {
        __builtin_prefetch(w->scales + off);
        __builtin_prefetch(w->biases + off);
    }
}

/* How far ahead (in rows) the tile kernels prefetch scales and biases: far enough to arrive in time,
 * near enough to be still in L1 when used (from further ahead the streaming weights evict them). */
#define SCALE_PREFETCH_ROWS 8

/* Distance, in bytes, from a tile's first weight byte to the bytes the tile kernels prefetch while
 * they run it (in address order, as many lines per row step as the step reads): whole tiles ahead,
 * at least WEIGHT_PREFETCH_MIN bytes on. One tile ahead is too close when rows are short (a 4-row
 * tile of 1 KB rows is done before the prefetch of the next arrives): in paired
 * single-thread runs on 2048-column rows, 8 KB ahead decoded 8-15% faster than 4 KB; rows of 1.75 KB
 * and more (7 KB tiles) were not helped by going further. */
#define WEIGHT_PREFETCH_MIN 6144
static inline size_t weight_prefetch_offset(size_t row_bytes, int tile_rows)
{
    const size_t tile = row_bytes * (size_t)tile_rows;
    size_t off = tile;
    while (off < WEIGHT_PREFETCH_MIN)
        off += tile;
    return off;
}

/* The tile kernels' row setup. In decode they read scales and biases as stored, `span` values from a
 * chunk's first group at a time: rows below stored_scale_rows(w, span) have those values inside the
 * tensor (the last row or two go through converted floats instead). */
static inline int stored_scale_rows(const qweight *w, int span)
{
    const size_t groups = (size_t)(w->cols / w->group_size), total = (size_t)w->rows * groups;
    return total >= (size_t)span - 1 ? (int)((total - (size_t)(span - 1)) / groups) : 0;
}

/* Points a tile of `tile` rows at rows [r, r + nr) (the last one repeated): weights, and scales and
 * biases as stored. */
static inline void tile_rows_stored(const qweight *w, int r, int nr, int tile, const uint8_t **wrow,
                                    const uint8_t **srow, const uint8_t **brow)
{
    const size_t row_bytes = qweight_row_bytes(w), sbytes = qweight_row_scale_bytes(w);
    for (int i = 0; i < tile; i++) {
        const size_t row = (size_t)r + (size_t)(i < nr ? i : nr - 1);
        wrow[i] = w->packed + row * row_bytes;
        srow[i] = w->scales + row * sbytes;
        brow[i] = w->biases + row * sbytes;
    }
}

/* The same with scales and biases converted to floats by the kernel's `convert` (n values from index
 * i0, zero padded to gstride) into buf, 2 * gstride floats per row. */
typedef void (*scale_convert_fn)(const uint8_t *src, enum float_dtype dt, size_t i0, int n, float *dst,
                                 int padded);
static inline void tile_rows_converted(const qweight *w, int r, int nr, int tile, int gstride, float *buf,
                                       scale_convert_fn convert, const uint8_t **wrow, const float **rs,
                                       const float **rb)
{
    const size_t row_bytes = qweight_row_bytes(w);
    const int groups = w->cols / w->group_size;
    for (int i = 0; i < tile; i++) {
        const int row = r + (i < nr ? i : nr - 1);
        if (i < nr) {
            float *s = buf + (size_t)(2 * i) * (size_t)gstride;
            convert(w->scales, w->sdtype, (size_t)row * (size_t)groups, groups, s, gstride);
            convert(w->biases, w->sdtype, (size_t)row * (size_t)groups, groups, s + gstride, gstride);
            rs[i] = s;
            rb[i] = s + gstride;
        } else {
            rs[i] = rs[nr - 1];
            rb[i] = rb[nr - 1];
        }
        wrow[i] = w->packed + (size_t)row * row_bytes;
    }
}

/* Tokens per block in the tile kernels: one block's activations stay in L2 while the rows stream past. */
static inline int tile_token_block(const qx_prep *p)
{
    const size_t per_tok = p->qstride + p->dstride * sizeof(float) + (size_t)p->gstride * sizeof(float);
    const int tb = (int)((size_t)(768 * 1024) / per_tok) / 4 * 4;
    return tb < 4 ? 4 : tb;
}

/* Called by a kernel before the tile of rows [r, r + tile) of its range [r0, r1): asks for the
 * scales and biases `ahead` rows further on (and, at the start, for the first `ahead` rows). */
static inline void prefetch_tile_scales(const qweight *w, int r, int r0, int r1, int tile, int ahead)
{
    if (r == r0)
        prefetch_row_scales(w, r, r1 - r < ahead ? r1 - r : ahead);
    if (r + ahead < r1)
        prefetch_row_scales(w, r + ahead, r1 - r - ahead < tile ? r1 - r - ahead : tile);
}

static inline size_t qx_part_bytes(const qx_prep *p, int n_tok, int part)
{
    const size_t nt = (size_t)(n_tok > 0 ? n_tok : 1);
    if (part == 0)
        return qx_align64(nt * p->qstride + 64);
    if (part == 1)
        return qx_align64((nt * p->dstride + 16) * sizeof(float));
    return qx_align64((nt * (size_t)p->gstride + 16) * sizeof(float));
}

struct qact {
    int kind; /* QACT_* */
    int n_tok, cols, group_size, bits;
    const float *x;
    qweight w;            /* a copy of the shape fields (pointers unused) */
    qx_prep qx;
    panel_prep panel;
    panel_kernel_fn panel_kernel; /* QACT_PANEL: the ISA's panel kernel when reserved */
    void *mem;
    size_t cap;
};
enum { QACT_SCALAR, QACT_AVX2, QACT_AVX2VNNI, QACT_AVX512, QACT_AVX512VNNI, QACT_PANEL };

/* Per-thread growable buffer; slot 0..KSCRATCH_SLOTS-1. Returns NULL when memory is exhausted. */
#define KSCRATCH_SLOTS 8
void *kernels_scratch(int slot, size_t bytes);

void qmatmul_avx2(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1);
void qmatmul_avx2_vnni(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1);
void qmatmul_avx512(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1);
void qmatmul_avx512vnni(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0,
                        int r1);

/* Split forms used by qact (activations prepared once, shared by threads). The *_bytes functions
 * set the layout and return the memory it needs; *_assign points it into mem (64-byte aligned). */
size_t qx_avx2_bytes(qx_prep *p, const qweight *w, int n_tok);
size_t qx_avx512_bytes(qx_prep *p, const qweight *w, int n_tok);
void qx_assign(qx_prep *p, void *mem, int n_tok);
void qx_avx2_fill(const qx_prep *p, const qweight *w, const float *x, int t0, int t1);
void qx_avx512_fill(const qx_prep *p, const qweight *w, const float *x, int t0, int t1);
void qmatmul_avx2_prepared(const qweight *w, const qx_prep *p, int n_tok, float *y, int ldy, int r0,
                           int r1);
void qmatmul_avx2_prepared_vnni(const qweight *w, const qx_prep *p, int n_tok, float *y, int ldy, int r0,
                                int r1);
void qmatmul_avx512_prepared(const qweight *w, const qx_prep *p, int n_tok, float *y, int ldy, int r0,
                             int r1, int vnni);
size_t panel_bytes(panel_prep *a, const qweight *w, int n_tok);
void panel_assign(panel_prep *a, void *mem);
void panel_fill(const panel_prep *a, const qweight *w, const float *x, int n_tok, int t0, int t1);
/* One weight row unpacked to a byte per element; one row's scales (or biases) as floats, stride apart. */
void panel_unpack_row(const uint8_t *src, int bits, int cols, uint8_t *dst);
void panel_row_floats(const uint8_t *src, enum float_dtype dt, size_t i0, int n, float *dst, int stride);
/* Rows [r, r + nr) of w into a panel of n rows (the rest zero): bytes to wp (cols apart), scales and
 * biases to sp and bp transposed (group g of row i at g * stride + i). */
void panel_load(const qweight *w, int r, int nr, int n, int stride, uint8_t *wp, float *sp, float *bp);
/* Rows per panel of the VNNI panel kernels. Their per-thread scratch: the unpacked panel (wp), its scales
 * and biases transposed (sp, bp; PANEL_ROWS floats per group) and acc_floats of float accumulators;
 * -1 if memory is short. */
#define PANEL_ROWS 32
int panel_scratch(const qweight *w, const panel_prep *ap, size_t acc_floats, uint8_t **wp, float **sp,
                  float **bp, float **acc);
/* Writes the 16 tokens from t0 (those below n_tok) of rows [r, r + nr) to y; row i of token tt is
 * acc[i * row_stride + tt]. */
void panel_store(float *y, int ldy, int r, int nr, const float *acc, size_t row_stride, int t0, int n_tok);
/* Lays out x in scratch memory and runs a panel kernel on it; -1 (nothing done) if memory is short. */
int panel_run(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1,
              panel_kernel_fn kernel);
/* The panel kernels (meant for n_tok >= 16, prefill): AMX tiles (needs the OS permission the
 * dispatcher requests), AVX-512 VNNI, and AVX-VNNI (256-bit, no AVX-512). */
void qmatmul_amx_prepared(const qweight *w, const panel_prep *a, int n_tok, float *y, int ldy, int r0,
                          int r1);
void qmatmul_vnni_panel_prepared(const qweight *w, const panel_prep *a, int n_tok, float *y, int ldy,
                                 int r0, int r1);
void qmatmul_avxvnni_panel_prepared(const qweight *w, const panel_prep *a, int n_tok, float *y, int ldy,
                                    int r0, int r1);

#endif
