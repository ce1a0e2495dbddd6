/* The panel kernel on AVX-VNNI (256-bit vpdpbusd, VEX-encoded), for CPUs that have it without
 * AVX-512: Intel cores since Alder Lake. Same arithmetic and layout as the AVX-512 VNNI panel kernel
 * (qmatmul_panel_avx512.c): one token per int32 lane, weight dwords broadcast, so a lane sums a whole
 * group before the float scale step; a 16-token block row of the layout is two vectors here. */
#include "kernels/qmatmul_internal.h"

#include <immintrin.h>
#include <string.h>

/* acc += dot(u8 a, s8 b) in place: GCC 12 otherwise copies every accumulator each iteration (see
 * qmatmul_panel_avx512.c); {vex} asks for the AVX-VNNI encoding, "x" for registers it can name. */
#if defined(__GNUC__) && !defined(__clang__)
#define DPBUSD(acc, a, b) __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(b))
#else
#define DPBUSD(acc, a, b) ((acc) = _mm256_dpbusd_avx_epi32((acc), (a), (b)))
#endif

#define PR PANEL_ROWS /* weight rows per panel */
#define QR 2  /* rows per register block: 2 rows x 2 halves x 2 levels of int32 accumulators */

/* QR rows x one 16-token block over one group, both levels, added into acc[row][16]. */
static inline __attribute__((always_inline)) void group_block(const uint8_t *wrow, size_t wstride,
                                                              const int8_t *b1, const int8_t *b2,
                                                              int ksteps4, const __m256 dx[2],
                                                              const __m256 xs[2], const float *sg,
                                                              const float *bg, float *acc)
{
    __m256i h[QR][2], l[QR][2];
#pragma GCC unroll 2
    for (int i = 0; i < QR; i++)
        h[i][0] = h[i][1] = l[i][0] = l[i][1] = _mm256_setzero_si256();
    for (int kk = 0; kk < ksteps4; kk++) {
        const int8_t *r1 = b1 + (size_t)kk * 64, *r2 = b2 + (size_t)kk * 64;
        const __m256i v1a = _mm256_load_si256((const __m256i *)r1), v1b = _mm256_load_si256((const __m256i *)(r1 + 32));
        const __m256i v2a = _mm256_load_si256((const __m256i *)r2), v2b = _mm256_load_si256((const __m256i *)(r2 + 32));
#pragma GCC unroll 2
        for (int i = 0; i < QR; i++) {
            int32_t wd;
            memcpy(&wd, wrow + (size_t)i * wstride + (size_t)kk * 4, 4);
            const __m256i wv = _mm256_set1_epi32(wd);
            DPBUSD(h[i][0], wv, v1a);
            DPBUSD(h[i][1], wv, v1b);
            DPBUSD(l[i][0], wv, v2a);
            DPBUSD(l[i][1], wv, v2b);
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < QR; i++) {
        const __m256 s = _mm256_set1_ps(sg[i]), b = _mm256_set1_ps(bg[i]);
#pragma GCC unroll 2
        for (int half = 0; half < 2; half++) {
            /* 256 * level 1 + level 2; at most 128 * 255 * 127 * 257 < 2^31 */
            const __m256i dot = _mm256_add_epi32(_mm256_slli_epi32(h[i][half], 8), l[i][half]);
            float *a = acc + (size_t)i * 16 + (size_t)half * 8;
            __m256 v = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), dx[half]), s, _mm256_load_ps(a));
            _mm256_store_ps(a, _mm256_fmadd_ps(xs[half], b, v));
        }
    }
}

void qmatmul_avxvnni_panel_prepared(const qweight *w, const panel_prep *ap, int n_tok, float *y, int ldy,
                                    int r0, int r1)
{
    const int cols = w->cols, groups = ap->groups, G = w->group_size;
    const int ntb = ap->ntb;
    const size_t level2 = panel_level2(ap, cols);
    uint8_t *wp;
    float *sp, *bp, *acc;
    if (r0 >= r1 || n_tok <= 0 || panel_scratch(w, ap, (size_t)PR * 16, &wp, &sp, &bp, &acc) != 0)
        return; /* a few hundred KB at most; unreachable in practice */

    for (int r = r0; r < r1; r += PR) {
        const int nr = r1 - r < PR ? r1 - r : PR;
        const int nq = (nr + QR - 1) / QR * QR; /* rows computed: padding rows are zero weights */
        panel_load(w, r, nr, nq, PR, wp, sp, bp);
        for (int tb = 0; tb < ntb; tb++) {
            memset(acc, 0, (size_t)PR * 16 * sizeof(float));
            for (int g = 0; g < groups; g++) {
                const int8_t *b1 = panel_group_rows(ap, tb, g);
                const size_t gi = ((size_t)tb * (size_t)groups + (size_t)g) * 16;
                const __m256 dx[2] = {_mm256_loadu_ps(ap->dxv + gi), _mm256_loadu_ps(ap->dxv + gi + 8)};
                const __m256 xs[2] = {_mm256_loadu_ps(ap->xsv + gi), _mm256_loadu_ps(ap->xsv + gi + 8)};
                const float *sg = sp + (size_t)g * PR, *bg = bp + (size_t)g * PR;
                for (int q = 0; q < nq; q += QR)
                    group_block(wp + (size_t)q * (size_t)cols + (size_t)g * (size_t)G, (size_t)cols, b1,
                                b1 + level2, G / 4, dx, xs, sg + q, bg + q, acc + (size_t)q * 16);
            }
            panel_store(y, ldy, r, nr, acc, 16, tb * 16, n_tok);
        }
    }
}
