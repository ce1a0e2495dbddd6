/* The AVX-512 VNNI panel kernel, for batches of 16 tokens or more (prefill). The activation layout
 * it shares with the AMX and AVX-VNNI panel kernels is in qmatmul_panel_avx2.c.
 *
 * Same arithmetic as the tile kernels: activations quantized per group to two int8 levels, weights as
 * unsigned bytes, exact int32 dot products per group, then y += s * dx * dot + b * sum(x) in float.
 * The tile kernels put 8 weights of one row in each int32 lane, so every 8 weights need a float
 * scale-and-add; here each lane is one token (16 tokens per vector, the activation layout below) and
 * a weight dword is broadcast, so a lane sums a whole group in int32 before the float step. A panel
 * of weight rows is unpacked to bytes once and reused for every token block. */
#include "kernels/qmatmul_quant.h"

#include <immintrin.h>

/* ---- AVX-512 VNNI panel kernel ---- */

/* acc += dot(u8 a, s8 b) in place. GCC 12 keeps vpdpbusd accumulators of an unrolled loop in
 * registers only after copying each of them every iteration (a third of the instructions); the asm
 * form with a read-write operand keeps them where they are. */
#if defined(__GNUC__) && !defined(__clang__)
#define DPBUSD(acc, a, b) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))
#else
#define DPBUSD(acc, a, b) ((acc) = _mm512_dpbusd_epi32((acc), (a), (b)))
#endif

#define PR PANEL_ROWS /* weight rows per panel: unpacked once, reused for every token block */
#define QR 8  /* rows per register block */
#define NBX 3 /* token blocks per register block */

/* int32 dot products of QR rows x NB token blocks (16 tokens each) over one group, added into the
 * float accumulators acc[row][block][16] (row stride NBX * 16). The first level is summed, shifted
 * left by 8 and the second level summed onto it: one accumulator per row and block holds
 * 256 * level 1 + level 2 (at most 128 * 255 * 127 * 257 < 2^31). */
static inline __attribute__((always_inline)) void
group_block(const uint8_t *wrow, size_t wstride, const int8_t *const b1[NBX], size_t level2, int ksteps4,
            const __m512 dx[NBX], const __m512 xs[NBX], const float *sg, const float *bg, float *acc,
            const int NB)
{
    __m512i h[QR][NBX];
#pragma GCC unroll 8
    for (int i = 0; i < QR; i++)
#pragma GCC unroll 3
        for (int j = 0; j < NB; j++)
            h[i][j] = _mm512_setzero_si512();
    for (int level = 0; level < 2; level++) {
        const size_t off = level ? level2 : 0;
        for (int kk = 0; kk < ksteps4; kk++) {
            __m512i v[NBX];
#pragma GCC unroll 3
            for (int j = 0; j < NB; j++)
                v[j] = _mm512_load_si512((const void *)(b1[j] + off + (size_t)kk * 64));
#pragma GCC unroll 8
            for (int i = 0; i < QR; i++) {
                int32_t wd;
                memcpy(&wd, wrow + (size_t)i * wstride + (size_t)kk * 4, 4);
                const __m512i wv = _mm512_set1_epi32(wd);
#pragma GCC unroll 3
                for (int j = 0; j < NB; j++)
                    DPBUSD(h[i][j], wv, v[j]);
            }
        }
        if (level == 0) {
#pragma GCC unroll 8
            for (int i = 0; i < QR; i++)
#pragma GCC unroll 3
                for (int j = 0; j < NB; j++)
                    h[i][j] = _mm512_slli_epi32(h[i][j], 8);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < QR; i++) {
        const __m512 s = _mm512_set1_ps(sg[i]), b = _mm512_set1_ps(bg[i]);
#pragma GCC unroll 3
        for (int j = 0; j < NB; j++) {
            float *a = acc + ((size_t)i * NBX + (size_t)j) * 16;
            __m512 v = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(h[i][j]), dx[j]), s, _mm512_load_ps(a));
            _mm512_store_ps(a, _mm512_fmadd_ps(xs[j], b, v));
        }
    }
}

void qmatmul_vnni_panel_prepared(const qweight *w, const panel_prep *ap, int n_tok, float *y, int ldy,
                                 int r0, int r1)
{
    const int cols = w->cols, groups = ap->groups, G = w->group_size;
    const int ntb = ap->ntb;
    const size_t level2 = panel_level2(ap, cols);
    uint8_t *wp;
    float *sp, *bp, *acc;
    if (r0 >= r1 || n_tok <= 0 || panel_scratch(w, ap, (size_t)PR * NBX * 16, &wp, &sp, &bp, &acc) != 0)
        return; /* a few hundred KB at most; unreachable in practice */

    for (int r = r0; r < r1; r += PR) {
        const int nr = r1 - r < PR ? r1 - r : PR;
        const int nq = (nr + QR - 1) / QR * QR; /* rows computed: padding rows are zero weights */
        panel_load(w, r, nr, nq, PR, wp, sp, bp);
        for (int tb = 0; tb < ntb; tb += NBX) {
            const int nb = ntb - tb < NBX ? ntb - tb : NBX;
            memset(acc, 0, (size_t)PR * NBX * 16 * sizeof(float));
            for (int g = 0; g < groups; g++) {
                const int8_t *b1[NBX];
                __m512 dx[NBX], xs[NBX];
                for (int j = 0; j < NBX; j++) {
                    const int t = tb + (j < nb ? j : 0);
                    b1[j] = panel_group_rows(ap, t, g);
                    const size_t gi = ((size_t)t * (size_t)groups + (size_t)g) * 16;
                    dx[j] = _mm512_loadu_ps(ap->dxv + gi);
                    xs[j] = _mm512_loadu_ps(ap->xsv + gi);
                }
                const float *sg = sp + (size_t)g * PR, *bg = bp + (size_t)g * PR;
                for (int q = 0; q < nq; q += QR) {
                    const uint8_t *wrow = wp + (size_t)q * (size_t)cols + (size_t)g * (size_t)G;
                    float *a = acc + (size_t)q * NBX * 16;
                    if (nb == 3)
                        group_block(wrow, (size_t)cols, b1, level2, G / 4, dx, xs, sg + q, bg + q, a, 3);
                    else if (nb == 2)
                        group_block(wrow, (size_t)cols, b1, level2, G / 4, dx, xs, sg + q, bg + q, a, 2);
                    else
                        group_block(wrow, (size_t)cols, b1, level2, G / 4, dx, xs, sg + q, bg + q, a, 1);
                }
            }
            for (int j = 0; j < nb; j++)
                panel_store(y, ldy, r, nr, acc + (size_t)j * 16, NBX * 16, (tb + j) * 16, n_tok);
        }
    }
}
