/* Prefill kernel on AMX tiles (Intel AMX-INT8), for batches of 16 tokens or more.
 *
 * Same arithmetic as the VNNI kernel: activations quantized per group to int8, weights as unsigned
 * bytes, exact int32 dot products per group, then y += s * dx * dot + b * sum(x) in float.
 * A panel of 32 weight rows is unpacked to bytes (row-major, the A operand) once and reused for all
 * tokens; the activations are laid out once per call as B operands (16 tokens x 4 bytes per tile row).
 * Per group, 2x2 tiles give a 32-row x 32-token block of int32 results that is scaled into float
 * accumulators. */
#ifndef __clang__
#pragma GCC target("amx-tile,amx-int8")
#endif

#include "kernels/qmatmul_quant.h"

#include <immintrin.h>

#ifdef __clang__
/* clang ignores #pragma GCC target; it takes the same features this way (popped at the end of the file). */
#pragma clang attribute push(__attribute__((target("amx-tile,amx-int8"))), apply_to = function)
#endif

#define PR 32 /* weight rows per panel */

typedef struct tile_config {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Converts n scale/bias values of one row to floats (scalar conversions; runs once per row panel). */
static void row_floats(const uint8_t *src, enum float_dtype dt, size_t i0, int n, float *dst,
                       int stride)
{
    if (dt == DT_F16) {
        int i = 0;
        for (; i + 8 <= n; i += 8) {
            float tmp[8];
            _mm256_storeu_ps(tmp, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + (i0 + (size_t)i) * 2))));
            for (int k = 0; k < 8; k++)
                dst[(size_t)(i + k) * (size_t)stride] = tmp[k];
        }
        for (; i < n; i++)
            dst[(size_t)i * (size_t)stride] = load_float(src, dt, i0 + (size_t)i);
    } else {
        for (int i = 0; i < n; i++)
            dst[(size_t)i * (size_t)stride] = load_float(src, dt, i0 + (size_t)i);
    }
}

/* Unpacks one weight row to one byte per element, in element order. */
static void unpack_row(const uint8_t *src, int bits, int cols, uint8_t *dst)
{
    if (bits == 8) {
        memcpy(dst, src, (size_t)cols);
        return;
    }
    const __m512i lo = _mm512_set1_epi16(0x000f), hi = _mm512_set1_epi16(0x0f00);
    const int bytes = cols / 2;
    for (int i = 0; i < bytes; i += 32) {
        const int n = bytes - i < 32 ? bytes - i : 32;
        const __mmask32 m = n == 32 ? ~(__mmask32)0 : (((__mmask32)1 << n) - 1);
        __m512i v = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, src + i));
        /* byte 2i = low nibble (element 2i), byte 2i+1 = high nibble */
        __m512i e = _mm512_or_si512(_mm512_and_si512(v, lo), _mm512_and_si512(_mm512_slli_epi16(v, 4), hi));
        const __mmask64 m2 = n == 32 ? ~(__mmask64)0 : (((__mmask64)1 << (2 * n)) - 1);
        _mm512_mask_storeu_epi8(dst + 2 * i, m2, e);
    }
}

size_t amx_bytes(amx_prep *a, const qweight *w, int n_tok)
{
    const int cols = w->cols, G = w->group_size;
    a->K = G < 64 ? G : 64;
    a->ksteps = cols / a->K;
    a->kpg = G / a->K;
    a->groups = cols / G;
    a->ntb = (n_tok + 15) / 16;
    return qx_align64(2 * (size_t)a->ntb * 16 * (size_t)cols) +
           2 * qx_align64((size_t)a->ntb * (size_t)a->groups * 16 * sizeof(float));
}

void amx_assign(amx_prep *a, void *mem)
{
    /* the sizes below repeat amx_bytes; ksteps * K == cols */
    const size_t cols = (size_t)a->ksteps * (size_t)a->K;
    a->xb = mem;
    a->dxv = (float *)((uint8_t *)mem + qx_align64(2 * (size_t)a->ntb * 16 * cols));
    a->xsv = a->dxv + qx_align64((size_t)a->ntb * (size_t)a->groups * 16 * sizeof(float)) / sizeof(float);
}

/* Quantizes tokens [t0, t1) (t0 a multiple of 16) into the tile layout. The B tile of (token block
 * tb, k-step s) has K/4 rows of 64 bytes; row kk holds, for each of the 16 tokens, the 4 activation
 * bytes k = s*K + 4kk .. +3. Tokens from n_tok up to the block's end are zero. */
void amx_fill(const amx_prep *ap, const qweight *w, const float *x, int n_tok, int t0, int t1)
{
    const int cols = w->cols, G = w->group_size, groups = ap->groups, K = ap->K;
    int8_t *xb = ap->xb;
    float *dxv = ap->dxv, *xsv = ap->xsv;
    const size_t level2 = (size_t)ap->ntb * 16 * (size_t)cols; /* second int8 level after the first */
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i dword_rows = _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112); /* in dwords */
    /* Token blocks outside, groups inside: the 16 tokens of a group fill 16*G contiguous bytes of
     * tiles, which stay in L1 while they are written. */
    for (int tb = t0 / 16; tb * 16 < t1; tb++) {
        const int tend = t1 < n_tok ? t1 : n_tok;
        const int tn = tend - tb * 16 < 16 ? tend - tb * 16 : 16;
        if (tn < 16) { /* the block with padding tokens: clear it whole, both levels */
            memset(xb + (size_t)tb * 16 * (size_t)cols, 0, (size_t)16 * (size_t)cols);
            memset(xb + level2 + (size_t)tb * 16 * (size_t)cols, 0, (size_t)16 * (size_t)cols);
        }
        for (int g = 0; g < groups; g++) {
            float *dxg = dxv + ((size_t)tb * (size_t)groups + (size_t)g) * 16;
            float *xsg = xsv + ((size_t)tb * (size_t)groups + (size_t)g) * 16;
            for (int n = tn < 0 ? 0 : tn; n < 16; n++)
                dxg[n] = xsg[n] = 0.0f;
            for (int n = 0; n < tn; n++) {
                const float *xg = x + (size_t)(tb * 16 + n) * (size_t)cols + (size_t)g * (size_t)G;
                __m256 vmax = _mm256_setzero_ps(), vsum = _mm256_setzero_ps();
                for (int j = 0; j < G; j += 8) {
                    __m256 v = _mm256_loadu_ps(xg + j);
                    vmax = _mm256_max_ps(vmax, _mm256_and_ps(v, absmask));
                    vsum = _mm256_add_ps(vsum, v);
                }
                const float amax = hmax8(vmax);
                xsg[n] = hsum8(vsum);
                dxg[n] = amax / 127.0f / 256.0f; /* the kernel combines 256 * level 1 + level 2 */
                const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
                int8_t *xbt = xb + (size_t)tb * 16 * (size_t)cols + (size_t)n * 4;
                for (int j = 0; j < G; j += 32) {
                    /* elements k..k+31 are 8 dwords for 8 consecutive tile rows (64 bytes apart);
                     * K is a multiple of 32, so they never straddle a k-step */
                    const int k = g * G + j;
                    int8_t *dst = xbt + (size_t)(k / K) * (size_t)K * 16 + (size_t)((k % K) / 4) * 64;
                    __m256i q1, q2;
                    quant32x2(xg + j, inv, &q1, &q2);
                    _mm256_i32scatter_epi32((void *)dst, dword_rows, q1, 4);
                    _mm256_i32scatter_epi32((void *)(dst + level2), dword_rows, q2, 4);
                }
            }
        }
    }
}

void qmatmul_amx(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1)
{
    amx_prep ap;
    size_t bytes = amx_bytes(&ap, w, n_tok);
    void *mem = kernels_scratch(1, bytes);
    if (!mem) {
        qmatmul_avx512vnni(w, x, n_tok, y, ldy, r0, r1);
        return;
    }
    amx_assign(&ap, mem);
    amx_fill(&ap, w, x, n_tok, 0, n_tok);
    qmatmul_amx_prepared(w, &ap, n_tok, y, ldy, r0, r1);
}

void qmatmul_amx_prepared(const qweight *w, const amx_prep *ap, int n_tok, float *y, int ldy, int r0,
                          int r1)
{
    const int cols = w->cols, groups = ap->groups;
    const int K = ap->K, ksteps = ap->ksteps, kpg = ap->kpg;
    const int ntb = ap->ntb;
    const size_t row_bytes = (size_t)cols * (size_t)w->bits / 8;
    const int8_t *xb = ap->xb;
    const float *dxv = ap->dxv, *xsv = ap->xsv;
    if (r0 >= r1 || n_tok <= 0)
        return;

    uint8_t *wp = kernels_scratch(4, (size_t)PR * (size_t)cols);
    float *sp = kernels_scratch(5, (size_t)groups * PR * 2 * sizeof(float));
    float *acc = kernels_scratch(6, (size_t)PR * 16 * sizeof(float));
    int32_t *ctmp = kernels_scratch(7, 2 * 4 * 256 * sizeof(int32_t));
    if (!wp || !sp || !acc || !ctmp)
        return; /* a few hundred KB at most; unreachable in practice */
    float *bp = sp + (size_t)groups * PR;

    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 4; i++) { /* C: 16 weight rows x 16 tokens of int32 */
        cfg.rows[i] = 16;
        cfg.colsb[i] = 64;
    }
    for (int i = 4; i < 6; i++) { /* A: 16 weight rows x K bytes */
        cfg.rows[i] = 16;
        cfg.colsb[i] = (uint16_t)K;
    }
    for (int i = 6; i < 8; i++) { /* B: K/4 rows x (16 tokens x 4 bytes) */
        cfg.rows[i] = (uint8_t)(K / 4);
        cfg.colsb[i] = 64;
    }
    _tile_loadconfig(&cfg);

    for (int r = r0; r < r1; r += PR) {
        const int nr = r1 - r < PR ? r1 - r : PR;
        for (int i = 0; i < PR; i++) {
            uint8_t *dst = wp + (size_t)i * (size_t)cols;
            if (i < nr) {
                unpack_row(w->packed + (size_t)(r + i) * row_bytes, w->bits, cols, dst);
                row_floats(w->scales, w->sdtype, (size_t)(r + i) * (size_t)groups, groups, sp + i, PR);
                row_floats(w->biases, w->sdtype, (size_t)(r + i) * (size_t)groups, groups, bp + i, PR);
            } else {
                memset(dst, 0, (size_t)cols);
                for (int g = 0; g < groups; g++)
                    sp[(size_t)g * PR + (size_t)i] = bp[(size_t)g * PR + (size_t)i] = 0.0f;
            }
        }
        const int two_row_tiles = nr > 16;
        /* tiles: C 0/1 = rows 0-15 x (level 1, level 2), C 2/3 = rows 16-31 x (level 1, level 2);
         * A 4/5 = the two row halves; B 6/7 = the two activation levels of one token block */
        const size_t level2 = (size_t)ntb * 16 * (size_t)cols;
        for (int tb = 0; tb < ntb; tb++) {
            memset(acc, 0, (size_t)PR * 16 * sizeof(float));
            for (int g = 0; g < groups; g++) {
                int32_t *ct = ctmp + (size_t)(g & 1) * 1024;
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (int ks = 0; ks < kpg; ks++) {
                    const size_t s = (size_t)g * (size_t)kpg + (size_t)ks;
                    const int8_t *bt = xb + ((size_t)tb * (size_t)ksteps + s) * (size_t)K * 16;
                    _tile_loadd(4, wp + s * (size_t)K, cols);
                    _tile_loadd(6, bt, 64);
                    _tile_loadd(7, bt + level2, 64);
                    _tile_dpbusd(0, 4, 6);
                    _tile_dpbusd(1, 4, 7);
                    if (two_row_tiles) {
                        _tile_loadd(5, wp + 16 * (size_t)cols + s * (size_t)K, cols);
                        _tile_dpbusd(2, 5, 6);
                        _tile_dpbusd(3, 5, 7);
                    }
                }
                _tile_stored(0, ct, 64);
                _tile_stored(1, ct + 256, 64);
                if (two_row_tiles) {
                    _tile_stored(2, ct + 512, 64);
                    _tile_stored(3, ct + 768, 64);
                }
                const size_t gi = ((size_t)tb * (size_t)groups + (size_t)g) * 16;
                const __m512 dx = _mm512_loadu_ps(dxv + gi), xs = _mm512_loadu_ps(xsv + gi);
                for (int rt = 0; rt <= two_row_tiles; rt++) {
                    const int32_t *c1 = ct + (size_t)rt * 512, *c2 = c1 + 256;
                    const float *sg = sp + (size_t)g * PR + (size_t)(rt * 16);
                    const float *bg = bp + (size_t)g * PR + (size_t)(rt * 16);
                    for (int m = 0; m < 16; m++) {
                        float *a = acc + (size_t)(rt * 16 + m) * 16;
                        /* 256 * level 1 + level 2; at most 128 * 255 * 127 * 257 < 2^31 */
                        __m512i dot = _mm512_add_epi32(
                            _mm512_slli_epi32(_mm512_loadu_si512((const void *)(c1 + m * 16)), 8),
                            _mm512_loadu_si512((const void *)(c2 + m * 16)));
                        __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), dx);
                        __m512 v = _mm512_fmadd_ps(f, _mm512_set1_ps(sg[m]), _mm512_loadu_ps(a));
                        _mm512_storeu_ps(a, _mm512_fmadd_ps(xs, _mm512_set1_ps(bg[m]), v));
                    }
                }
            }
            /* y is token-major: write each token's run of rows contiguously */
            for (int j = 0; j < 16 && tb * 16 + j < n_tok; j++) {
                float *yt = y + (size_t)(tb * 16 + j) * (size_t)ldy + (size_t)r;
                for (int i = 0; i < nr; i++)
                    yt[i] = acc[(size_t)i * 16 + (size_t)j];
            }
        }
    }
    _tile_release();
}

#ifdef __clang__
#pragma clang attribute pop
#endif
