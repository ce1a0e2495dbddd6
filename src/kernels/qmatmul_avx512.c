/* AVX-512 quantized matmul (AVX512F/BW/VL/DQ, VNNI in the *vnni entry point).
 *
 * Activations are quantized per group to int8 (qmatmul_internal.h); weights stay packed. Each 64-byte
 * chunk of a weight row is unpacked once into unsigned bytes (low and high nibbles for 4-bit) and then
 * multiplied against NT tokens with vpdpbusd (or maddubs+madd without VNNI). The int32 lanes of a chunk
 * each lie within one group, so a lane-wise float scale (row scale x token dx) turns them into floats.
 * A tile is 4 rows x NT tokens of float accumulators; bias terms use the exact group sums of x. */
#include "kernels/qmatmul_quant.h"

#include <immintrin.h>

#define CB 64
#define NR 4

typedef struct tile_ctx {
    const qx_prep *p;
    const uint8_t *wrow[NR];
    const float *rs[NR]; /* row scales as floats, zero padded */
    const float *rb[NR]; /* row biases as floats, zero padded */
    const uint8_t *srow[NR], *brow[NR]; /* decode: the rows' scales and biases as stored */
    __m512i gidx;        /* lane -> group offset within a chunk */
    int gshift;          /* log2(group_size) */
    int bits;
    __mmask64 tail_mask;
    size_t pf_off; /* bytes from a row chunk to the one prefetched (weight_prefetch_offset) */
} tile_ctx;

/* 16 scale/bias values as stored (dtype dt), as floats; `mask` selects the values read. */
static inline __attribute__((always_inline)) __m512 load16_stored(const uint8_t *src, const int dt,
                                                                  __mmask16 mask)
{
    if (dt == DT_F16)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, src));
    if (dt == DT_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, src)), 16));
    return _mm512_maskz_loadu_ps(mask, src);
}

/* 4 scale values as stored, as floats. */
static inline __attribute__((always_inline)) __m128 load4_stored(const uint8_t *src, const int dt)
{
    if (dt == DT_F16)
        return _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)src));
    if (dt == DT_BF16)
        return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i *)src)), 16));
    return _mm_loadu_ps((const float *)src);
}

/* Converts n scale/bias values starting at index i0 to floats, then zero pads to `padded` (a multiple
 * of 16, at least n + 16) so that vector loads past the end read zeros. Masked loads never touch
 * bytes past the tensor. */
static inline void convert_row(const uint8_t *src, enum float_dtype dt, size_t i0, int n, float *dst,
                               int padded)
{
    const size_t esz = float_dtype_size(dt);
    for (int i = 0; i < padded; i += 16) {
        const int left = n - i;
        const __mmask16 m = left >= 16 ? (__mmask16)0xffff
                                       : left > 0 ? (__mmask16)((1u << left) - 1) : (__mmask16)0;
        _mm512_storeu_ps(dst + i, load16_stored(src + (i0 + (size_t)i) * esz, dt, m));
    }
}

static inline __attribute__((always_inline)) __m512i dot_chunk(__m512i lo, __m512i hi, __m512i ql,
                                                               __m512i qh, int bits, int vnni)
{
    if (vnni) {
        __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, ql);
        return bits == 4 ? _mm512_dpbusd_epi32(s, hi, qh) : s;
    }
    const __m512i ones = _mm512_set1_epi16(1);
    if (bits == 4) {
        /* 15 * 127 * 2 * 2 fits int16. */
        __m512i p = _mm512_add_epi16(_mm512_maddubs_epi16(lo, ql), _mm512_maddubs_epi16(hi, qh));
        return _mm512_madd_epi16(p, ones);
    }
    /* 8-bit without VNNI: lo/hi are the nibbles of each byte, ql == qh is the activation. */
    const __m512i sixteen = _mm512_set1_epi16(16);
    return _mm512_add_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(lo, ql), ones),
                            _mm512_madd_epi16(_mm512_maddubs_epi16(hi, ql), sixteen));
}

static inline __attribute__((always_inline)) void
chunk_step(const tile_ctx *k, int c, int t0, __m512 acc[NR][4], const int NT, const int bits,
           const int vnni, const int masked, const int sdt)
{
    const qx_prep *p = k->p;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i lo[NR], hi[NR];
    __m512 sv[NR];
    const int fg = (c * p->epc) >> k->gshift;
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++) {
        const uint8_t *src = k->wrow[i] + (size_t)c * CB;
        __m512i v = masked ? _mm512_maskz_loadu_epi8(k->tail_mask, src)
                           : _mm512_loadu_si512((const void *)src);
        /* whole tiles ahead: short rows (1-2 KB) end before the hardware prefetcher ramps up.
         * The tile ahead is asked for in address order, one line per row step, not as NR
         * interleaved row streams: memory then sees one sequential stream per thread (12% faster
         * decode from DRAM than prefetching each row's chunk). Prefetches never fault, also past
         * the end of the tensor. */
        _mm_prefetch((const char *)k->wrow[0] + k->pf_off + ((size_t)c * NR + (size_t)i) * CB, _MM_HINT_T0);
        if (bits == 4 || !vnni) {
            lo[i] = _mm512_and_si512(v, m4);
            hi[i] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        } else {
            lo[i] = v;
            hi[i] = v;
        }
        /* sdt >= 0: straight from the stored scales, saving the per-tile conversion that cost
         * decode a fifth of its time; a chunk spans at most 4 groups (gidx <= 3), so 4 values are
         * converted (the caller checked that 16 lie inside the tensor) */
        sv[i] = _mm512_permutexvar_ps(k->gidx, sdt >= 0 ? _mm512_castps128_ps512(load4_stored(
                                                             k->srow[i] + (size_t)fg * float_dtype_size(sdt), sdt))
                                                       : _mm512_loadu_ps(k->rs[i] + fg));
    }
    const size_t qchunk = (size_t)(bits == 4 ? 2 * CB : CB);
#pragma GCC unroll 4
    for (int j = 0; j < NT; j++) {
        const int8_t *q = p->qx + (size_t)(t0 + j) * p->qstride + (size_t)c * 2 * qchunk;
        __m512i ql = _mm512_loadu_si512((const void *)q);
        __m512i qh = bits == 4 ? _mm512_loadu_si512((const void *)(q + CB)) : ql;
        __m512i ql2 = _mm512_loadu_si512((const void *)(q + qchunk));
        __m512i qh2 = bits == 4 ? _mm512_loadu_si512((const void *)(q + qchunk + CB)) : ql2;
        __m512 d = _mm512_loadu_ps(p->dxl + (size_t)(t0 + j) * p->dstride + (size_t)c * 16);
#pragma GCC unroll 4
        for (int i = 0; i < NR; i++) {
            /* 256 * (first level) + second level; fits int32 by far */
            __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(dot_chunk(lo[i], hi[i], ql, qh, bits, vnni), 8),
                                           dot_chunk(lo[i], hi[i], ql2, qh2, bits, vnni));
            __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), d);
            acc[i][j] = _mm512_fmadd_ps(f, sv[i], acc[i][j]);
        }
    }
}

static inline __attribute__((always_inline)) void tile(const tile_ctx *k, int t0, int nr, float *y,
                                                       int ldy, int r, const int NT, const int bits,
                                                       const int vnni, const int sdt)
{
    const qx_prep *p = k->p;
    __m512 acc[NR][4];
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++)
            acc[i][j] = _mm512_setzero_ps();
    const int full = p->tail_bytes == CB ? p->nchunks : p->nchunks - 1;
    for (int c = 0; c < full; c++)
        chunk_step(k, c, t0, acc, NT, bits, vnni, 0, sdt);
    if (full < p->nchunks)
        chunk_step(k, full, t0, acc, NT, bits, vnni, 1, sdt);
    /* bias terms: sum_g b_g * xsum_g */
    for (int g = 0; g < p->groups; g += 16) {
        const int left = p->groups - g;
        const __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++) {
            __m512 xs = _mm512_loadu_ps(p->xs + (size_t)(t0 + j) * (size_t)p->gstride + (size_t)g);
#pragma GCC unroll 4
            for (int i = 0; i < NR; i++) {
                const __m512 b = sdt >= 0 ? load16_stored(k->brow[i] + (size_t)g * float_dtype_size(sdt), sdt, m)
                                          : _mm512_loadu_ps(k->rb[i] + g);
                acc[i][j] = _mm512_fmadd_ps(b, xs, acc[i][j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++)
            if (i < nr)
                y[(size_t)(t0 + j) * (size_t)ldy + (size_t)(r + i)] = _mm512_reduce_add_ps(acc[i][j]);
}

#define TILE_VARIANTS(BITS, VNNI)                                                                  \
    static void tile_##BITS##_##VNNI(const tile_ctx *k, int t0, int nt, int nr, float *y, int ldy, \
                                     int r)                                                        \
    {                                                                                              \
        switch (nt) {                                                                              \
        case 4: tile(k, t0, nr, y, ldy, r, 4, BITS, VNNI, -1); break;                              \
        case 3: tile(k, t0, nr, y, ldy, r, 3, BITS, VNNI, -1); break;                              \
        case 2: tile(k, t0, nr, y, ldy, r, 2, BITS, VNNI, -1); break;                              \
        default: tile(k, t0, nr, y, ldy, r, 1, BITS, VNNI, -1); break;                             \
        }                                                                                          \
    }                                                                                              \
    /* one token, scales read as stored */                                                         \
    static void decode_##BITS##_##VNNI(const tile_ctx *k, int nr, float *y, int r,                 \
                                       enum float_dtype dt)                                        \
    {                                                                                              \
        if (dt == DT_F16)                                                                          \
            tile(k, 0, nr, y, 1, r, 1, BITS, VNNI, DT_F16);                                        \
        else if (dt == DT_BF16)                                                                    \
            tile(k, 0, nr, y, 1, r, 1, BITS, VNNI, DT_BF16);                                       \
        else                                                                                       \
            tile(k, 0, nr, y, 1, r, 1, BITS, VNNI, DT_F32);                                        \
    }                                                                                              \
    /* a few tokens (batched decode, prompt lookup's steps), F16/BF16 scales read as stored: */    \
    /* converting them per tile cost as much as the dot products of 2 tokens on short rows */     \
    static void stored_##BITS##_##VNNI(const tile_ctx *k, int t0, int nt, int nr, float *y, int ldy, \
                                       int r, enum float_dtype dt)                                 \
    {                                                                                              \
        if (dt == DT_F16) {                                                                        \
            STORED_NT(BITS, VNNI, DT_F16)                                                          \
        } else {                                                                                   \
            STORED_NT(BITS, VNNI, DT_BF16)                                                         \
        }                                                                                          \
    }
#define STORED_NT(BITS, VNNI, DT)                                                                  \
    switch (nt) {                                                                                  \
    case 4: tile(k, t0, nr, y, ldy, r, 4, BITS, VNNI, DT); break;                                  \
    case 3: tile(k, t0, nr, y, ldy, r, 3, BITS, VNNI, DT); break;                                  \
    case 2: tile(k, t0, nr, y, ldy, r, 2, BITS, VNNI, DT); break;                                  \
    default: tile(k, t0, nr, y, ldy, r, 1, BITS, VNNI, DT); break;                                 \
    }
TILE_VARIANTS(4, 0)
TILE_VARIANTS(4, 1)
TILE_VARIANTS(8, 0)
TILE_VARIANTS(8, 1)

typedef void (*tile_fn)(const tile_ctx *, int, int, int, float *, int, int);
typedef void (*decode_fn)(const tile_ctx *, int, float *, int, enum float_dtype);
typedef void (*stored_fn)(const tile_ctx *, int, int, int, float *, int, int, enum float_dtype);

size_t qx_avx512_bytes(qx_prep *p, const qweight *w, int n_tok)
{
    qx_layout(p, w, CB);
    return qx_part_bytes(p, n_tok, 0) + qx_part_bytes(p, n_tok, 1) + qx_part_bytes(p, n_tok, 2);
}

void qx_avx512_fill(const qx_prep *p, const qweight *w, const float *x, int t0, int t1)
{
    qx_fill(p, w, x, t0, t1);
}

static void run(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1,
                int vnni)
{
    if (r0 >= r1 || n_tok <= 0)
        return;
    qx_prep p;
    if (qx_prepare(&p, w, x, n_tok, CB) != 0) {
        qmatmul_scalar(w, x, n_tok, y, ldy, r0, r1);
        return;
    }
    qmatmul_avx512_prepared(w, &p, n_tok, y, ldy, r0, r1, vnni);
}

void qmatmul_avx512_prepared(const qweight *w, const qx_prep *pp, int n_tok, float *y, int ldy, int r0,
                             int r1, int vnni)
{
    if (r0 >= r1 || n_tok <= 0)
        return;
    const qx_prep p = *pp;
    float *rowf = kernels_scratch(4, (size_t)2 * NR * (size_t)p.gstride * sizeof(float));
    if (!rowf) {
        /* unreachable in practice (a few KB); leave y untouched rather than guess */
        return;
    }
    tile_ctx k;
    k.p = &p;
    k.bits = w->bits;
    k.gshift = __builtin_ctz((unsigned)w->group_size);
    const int epl = w->bits == 4 ? 8 : 4;
    int gi[16];
    for (int l = 0; l < 16; l++)
        gi[l] = (l * epl) >> k.gshift;
    k.gidx = _mm512_loadu_si512((const void *)gi);
    k.tail_mask = p.tail_bytes == 64 ? ~(__mmask64)0 : (((__mmask64)1 << p.tail_bytes) - 1);
    tile_fn fn = w->bits == 4 ? (vnni ? tile_4_1 : tile_4_0) : (vnni ? tile_8_1 : tile_8_0);
    decode_fn dfn = w->bits == 4 ? (vnni ? decode_4_1 : decode_4_0) : (vnni ? decode_8_1 : decode_8_0);
    stored_fn sfn = w->bits == 4 ? (vnni ? stored_4_1 : stored_4_0) : (vnni ? stored_8_1 : stored_8_0);
    const int stored_rows = stored_scale_rows(w, 16);
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

void qmatmul_avx512(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1)
{
    run(w, x, n_tok, y, ldy, r0, r1, 0);
}

void qmatmul_avx512vnni(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0,
                        int r1)
{
    run(w, x, n_tok, y, ldy, r0, r1, 1);
}
