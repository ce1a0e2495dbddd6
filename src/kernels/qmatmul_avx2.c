/* AVX2 quantized matmul (with FMA and F16C).
 *
 * Same scheme as the AVX-512 kernel (see qmatmul_avx512.c) on 32-byte chunks: activations quantized
 * per group to int8, weights unpacked to unsigned bytes once per tile, products with maddubs (u8 x s8
 * to int16 pairs; 4-bit values keep it far from saturation) and madd to int32 lanes, then a lane-wise
 * float scale. 8-bit weights are split into nibbles so maddubs cannot saturate.
 *
 * qmatmul_avx2_avxvnni.c builds this file a second time with AVX-VNNI (AVX2_TILE_VNNI): the products
 * are then one vpdpbusd per pair of operands, 8-bit weights unsplit, and the entry points end in
 * _vnni. Decode on AVX2 is bound by its arithmetic rather than by memory (single thread, a copy with
 * the arithmetic removed read a 64 MB matrix in 55% of the time), so fewer instructions count. */
#include "kernels/qmatmul_quant.h"

#include <immintrin.h>

#ifdef AVX2_TILE_VNNI
#define AVX2_ENTRY(name) name##_vnni
#define VNNI 1
#else
#define AVX2_ENTRY(name) name
#define VNNI 0
#endif

#define CB 32
#define NR 2
_Static_assert(NR * CB == 64, "a row step of a tile reads one cache line");

typedef struct tile_ctx {
    const qx_prep *p;
    const uint8_t *wrow[NR];
    const float *rs[NR];
    const float *rb[NR];
    const uint8_t *srow[NR], *brow[NR]; /* decode: the rows' scales and biases as stored */
    __m256i gidx;
    int gshift;
    size_t pf_off; /* bytes from a row chunk to the one prefetched (weight_prefetch_offset) */
} tile_ctx;

/* 8 scale/bias values as stored (dtype dt), as floats; all 8 must lie inside the tensor. */
static inline __attribute__((always_inline)) __m256 load8_stored(const uint8_t *src, const int dt)
{
    if (dt == DT_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)src));
    if (dt == DT_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)src)), 16));
    return _mm256_loadu_ps((const float *)src);
}

/* The same for the first n < 8 values, the rest zero. */
static inline __attribute__((always_inline)) __m256 load8_stored_part(const uint8_t *src, const int dt, int n)
{
    uint8_t tmp[32] = {0};
    memcpy(tmp, src, (size_t)n * float_dtype_size(dt));
    return load8_stored(tmp, dt);
}

/* Converts n scale/bias values starting at index i0 to floats, then zero pads to `padded`; the last
 * partial vector goes through a zeroed copy, so nothing past the tensor is read. */
static void convert_row(const uint8_t *src, enum float_dtype dt, size_t i0, int n, float *dst,
                        int padded)
{
    const size_t esz = float_dtype_size(dt);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, load8_stored(src + (i0 + (size_t)i) * esz, dt));
    if (i < n) {
        _mm256_storeu_ps(dst + i, load8_stored_part(src + (i0 + (size_t)i) * esz, dt, n - i));
        i += 8;
    }
    for (; i < padded; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_setzero_ps());
}

static inline __attribute__((always_inline)) __m256i dot_chunk(__m256i lo, __m256i hi, __m256i ql,
                                                               __m256i qh, int bits)
{
#ifdef AVX2_TILE_VNNI
    /* 8-bit: lo == hi == the weight bytes, ql == qh */
    const __m256i s = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lo, ql);
    return bits == 4 ? _mm256_dpbusd_avx_epi32(s, hi, qh) : s;
#else
    const __m256i ones = _mm256_set1_epi16(1);
    if (bits == 4) {
        __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ql), _mm256_maddubs_epi16(hi, qh));
        return _mm256_madd_epi16(p, ones);
    }
    const __m256i sixteen = _mm256_set1_epi16(16);
    return _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(lo, ql), ones),
                            _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ql), sixteen));
#endif
}

static inline __attribute__((always_inline)) void
chunk_step(const tile_ctx *k, int c, int t0, __m256 acc[NR][4], const int NT, const int bits,
           const int tail, const int sdt)
{
    const qx_prep *p = k->p;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256i lo[NR], hi[NR];
    __m256 sv[NR];
    const int fg = (c * p->epc) >> k->gshift;
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++) {
        const uint8_t *src = k->wrow[i] + (size_t)c * CB;
        __m256i v;
        if (tail) {
            uint8_t buf[CB] = {0};
            memcpy(buf, src, (size_t)p->tail_bytes);
            v = _mm256_loadu_si256((const __m256i *)buf);
        } else {
            v = _mm256_loadu_si256((const __m256i *)src);
        }
        /* whole tiles ahead in address order, as in the AVX-512 kernel: a row step reads NR * CB
         * = 64 bytes, one line; a prefetch never faults */
        if (i == 0)
            _mm_prefetch((const char *)k->wrow[0] + k->pf_off + (size_t)c * NR * CB, _MM_HINT_T0);
        if (bits == 4 || !VNNI) {
            lo[i] = _mm256_and_si256(v, m4);
            hi[i] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        } else {
            lo[i] = hi[i] = v;
        }
        /* sdt >= 0 (decode): straight from the stored scales, as in the AVX-512 kernel */
        const __m256 s8 = sdt >= 0 ? load8_stored(k->srow[i] + (size_t)fg * float_dtype_size(sdt), sdt)
                                   : _mm256_loadu_ps(k->rs[i] + fg);
        sv[i] = _mm256_permutevar8x32_ps(s8, k->gidx);
    }
    const size_t qchunk = (size_t)(bits == 4 ? 2 * CB : CB);
#pragma GCC unroll 4
    for (int j = 0; j < NT; j++) {
        const int8_t *q = p->qx + (size_t)(t0 + j) * p->qstride + (size_t)c * 2 * qchunk;
        __m256i ql = _mm256_loadu_si256((const __m256i *)q);
        __m256i qh = bits == 4 ? _mm256_loadu_si256((const __m256i *)(q + CB)) : ql;
        __m256i ql2 = _mm256_loadu_si256((const __m256i *)(q + qchunk));
        __m256i qh2 = bits == 4 ? _mm256_loadu_si256((const __m256i *)(q + qchunk + CB)) : ql2;
        __m256 d = _mm256_loadu_ps(p->dxl + (size_t)(t0 + j) * p->dstride + (size_t)c * 8);
#pragma GCC unroll 4
        for (int i = 0; i < NR; i++) {
            /* 256 * (first level) + second level; fits int32 by far */
            __m256i dot = _mm256_add_epi32(_mm256_slli_epi32(dot_chunk(lo[i], hi[i], ql, qh, bits), 8),
                                           dot_chunk(lo[i], hi[i], ql2, qh2, bits));
            __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), d);
            acc[i][j] = _mm256_fmadd_ps(f, sv[i], acc[i][j]);
        }
    }
}

static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __attribute__((always_inline)) void tile(const tile_ctx *k, int t0, int nr, float *y,
                                                       int ldy, int r, const int NT, const int bits,
                                                       const int sdt)
{
    const qx_prep *p = k->p;
    __m256 acc[NR][4];
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++)
            acc[i][j] = _mm256_setzero_ps();
    const int full = p->tail_bytes == CB ? p->nchunks : p->nchunks - 1;
    for (int c = 0; c < full; c++)
        chunk_step(k, c, t0, acc, NT, bits, 0, sdt);
    if (full < p->nchunks)
        chunk_step(k, full, t0, acc, NT, bits, 1, sdt);
    for (int g = 0; g < p->groups; g += 8) {
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++) {
            __m256 xs = _mm256_loadu_ps(p->xs + (size_t)(t0 + j) * (size_t)p->gstride + (size_t)g);
            const size_t off = (size_t)g * float_dtype_size(sdt);
#pragma GCC unroll 4
            for (int i = 0; i < NR; i++) {
                const __m256 b = sdt < 0 ? _mm256_loadu_ps(k->rb[i] + g)
                                 : g + 8 <= p->groups ? load8_stored(k->brow[i] + off, sdt)
                                                      : load8_stored_part(k->brow[i] + off, sdt, p->groups - g);
                acc[i][j] = _mm256_fmadd_ps(b, xs, acc[i][j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++)
            if (i < nr)
                y[(size_t)(t0 + j) * (size_t)ldy + (size_t)(r + i)] = hsum256(acc[i][j]);
}

#define TILE_VARIANTS(BITS)                                                                        \
    static void tile_##BITS(const tile_ctx *k, int t0, int nt, int nr, float *y, int ldy, int r)   \
    {                                                                                              \
        switch (nt) {                                                                              \
        case 4: tile(k, t0, nr, y, ldy, r, 4, BITS, -1); break;                                    \
        case 3: tile(k, t0, nr, y, ldy, r, 3, BITS, -1); break;                                    \
        case 2: tile(k, t0, nr, y, ldy, r, 2, BITS, -1); break;                                    \
        default: tile(k, t0, nr, y, ldy, r, 1, BITS, -1); break;                                   \
        }                                                                                          \
    }                                                                                              \
    /* one token, scales read as stored */                                                         \
    static void decode_##BITS(const tile_ctx *k, int nr, float *y, int r, enum float_dtype dt)     \
    {                                                                                              \
        if (dt == DT_F16)                                                                          \
            tile(k, 0, nr, y, 1, r, 1, BITS, DT_F16);                                              \
        else if (dt == DT_BF16)                                                                    \
            tile(k, 0, nr, y, 1, r, 1, BITS, DT_BF16);                                             \
        else                                                                                       \
            tile(k, 0, nr, y, 1, r, 1, BITS, DT_F32);                                              \
    }                                                                                              \
    /* a few tokens (batched decode, prompt lookup's steps), F16/BF16 scales read as stored */    \
    static void stored_##BITS(const tile_ctx *k, int t0, int nt, int nr, float *y, int ldy, int r,  \
                              enum float_dtype dt)                                                 \
    {                                                                                              \
        if (dt == DT_F16) {                                                                        \
            STORED_NT(BITS, DT_F16)                                                                \
        } else {                                                                                   \
            STORED_NT(BITS, DT_BF16)                                                               \
        }                                                                                          \
    }
#define STORED_NT(BITS, DT)                                                                        \
    switch (nt) {                                                                                  \
    case 4: tile(k, t0, nr, y, ldy, r, 4, BITS, DT); break;                                        \
    case 3: tile(k, t0, nr, y, ldy, r, 3, BITS, DT); break;                                        \
    case 2: tile(k, t0, nr, y, ldy, r, 2, BITS, DT); break;                                        \
    default: tile(k, t0, nr, y, ldy, r, 1, BITS, DT); break;                                       \
    }
TILE_VARIANTS(4)
TILE_VARIANTS(8)

#ifndef AVX2_TILE_VNNI /* one activation layout for both builds */
size_t qx_avx2_bytes(qx_prep *p, const qweight *w, int n_tok)
{
    qx_layout(p, w, CB);
    return qx_part_bytes(p, n_tok, 0) + qx_part_bytes(p, n_tok, 1) + qx_part_bytes(p, n_tok, 2);
}

void qx_avx2_fill(const qx_prep *p, const qweight *w, const float *x, int t0, int t1)
{
    qx_fill(p, w, x, t0, t1);
}
#endif

void AVX2_ENTRY(qmatmul_avx2)(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1)
{
    if (r0 >= r1 || n_tok <= 0)
        return;
    qx_prep p;
    if (qx_prepare(&p, w, x, n_tok, CB) != 0) {
        qmatmul_scalar(w, x, n_tok, y, ldy, r0, r1);
        return;
    }
    AVX2_ENTRY(qmatmul_avx2_prepared)(w, &p, n_tok, y, ldy, r0, r1);
}

void AVX2_ENTRY(qmatmul_avx2_prepared)(const qweight *w, const qx_prep *pp, int n_tok, float *y, int ldy,
                                       int r0, int r1)
{
    if (r0 >= r1 || n_tok <= 0)
        return;
    const qx_prep p = *pp;
    float *rowf = kernels_scratch(4, (size_t)2 * NR * (size_t)p.gstride * sizeof(float));
    if (!rowf)
        return; /* a few KB; unreachable in practice */
    tile_ctx k;
    k.p = &p;
    k.gshift = __builtin_ctz((unsigned)w->group_size);
    const int epl = w->bits == 4 ? 8 : 4;
    int gi[8];
    for (int l = 0; l < 8; l++)
        gi[l] = (l * epl) >> k.gshift;
    k.gidx = _mm256_loadu_si256((const __m256i *)gi);
    void (*fn)(const tile_ctx *, int, int, int, float *, int, int) = w->bits == 4 ? tile_4 : tile_8;
    void (*dfn)(const tile_ctx *, int, float *, int, enum float_dtype) = w->bits == 4 ? decode_4 : decode_8;
    void (*sfn)(const tile_ctx *, int, int, int, float *, int, int, enum float_dtype) =
        w->bits == 4 ? stored_4 : stored_8;
    const int stored_rows = stored_scale_rows(w, 8);
    const int stored_multi = w->sdtype == DT_F16 || w->sdtype == DT_BF16;

    const size_t row_bytes = qweight_row_bytes(w);
    k.pf_off = weight_prefetch_offset(row_bytes, NR);
    const int tb = tile_token_block(&p);
    for (int tb0 = 0; tb0 < n_tok; tb0 += tb) {
        const int tb1 = tb0 + tb < n_tok ? tb0 + tb : n_tok;
        for (int r = r0; r < r1; r += NR) {
            const int nr = r1 - r < NR ? r1 - r : NR;
            prefetch_tile_scales(w, r, r0, r1, NR, SCALE_PREFETCH_ROWS);
            if (n_tok == 1 && r + nr <= stored_rows) {
                tile_rows_stored(w, r, nr, NR, k.wrow, k.srow, k.brow);
                dfn(&k, nr, y, r, w->sdtype);
                continue;
            }
            if (stored_multi && n_tok < 16 && r + nr <= stored_rows) {
                tile_rows_stored(w, r, nr, NR, k.wrow, k.srow, k.brow);
                for (int t = tb0; t < tb1; t += 4)
                    sfn(&k, t, tb1 - t < 4 ? tb1 - t : 4, nr, y, ldy, r, w->sdtype);
                continue;
            }
            tile_rows_converted(w, r, nr, NR, p.gstride, rowf, convert_row, k.wrow, k.rs, k.rb);
            for (int t = tb0; t < tb1; t += 4) {
                const int nt = tb1 - t < 4 ? tb1 - t : 4;
                fn(&k, t, nt, nr, y, ldy, r);
            }
        }
    }
}
