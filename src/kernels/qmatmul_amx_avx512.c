/* Prefill kernel on AMX tiles (Intel AMX-INT8), for batches of 16 tokens or more.
 *
 * Same arithmetic as the VNNI kernel: activations quantized per group to int8, weights as unsigned
 * bytes, exact int32 dot products per group, then y += s * dx * dot + b * sum(x) in float.
 * A panel of 32 weight rows is unpacked to bytes (row-major, the A operand) once and reused for all
 * tokens; the activations are laid out once per call as B operands (16 tokens x 4 bytes per tile row,
 * qmatmul_panel_avx2.c).
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

void qmatmul_amx_prepared(const qweight *w, const panel_prep *ap, int n_tok, float *y, int ldy, int r0,
                          int r1)
{
    const int cols = w->cols, groups = ap->groups;
    const int K = ap->K, ksteps = ap->ksteps, kpg = ap->kpg;
    const int ntb = ap->ntb;
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
        panel_load(w, r, nr, PR, PR, wp, sp, bp);
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
