/* Panel kernels for batches of 16 tokens or more (prefill): the activation layout they share, and
 * the AVX-512 VNNI panel kernel (the AMX one is in qmatmul_amx_avx512.c).
 *
 * Same arithmetic as the tile kernels: activations quantized per group to two int8 levels, weights as
 * unsigned bytes, exact int32 dot products per group, then y += s * dx * dot + b * sum(x) in float.
 * The tile kernels put 8 weights of one row in each int32 lane, so every 8 weights need a float
 * scale-and-add; here each lane is one token (16 tokens per vector, the activation layout below) and
 * a weight dword is broadcast, so a lane sums a whole group in int32 before the float step. A panel
 * of weight rows is unpacked to bytes once and reused for every token block. */
#include "kernels/qmatmul_quant.h"

#include <immintrin.h>

/* Scalar conversions: runs once per row panel. */
void panel_row_floats(const uint8_t *src, enum float_dtype dt, size_t i0, int n, float *dst,
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

void panel_unpack_row(const uint8_t *src, int bits, int cols, uint8_t *dst)
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

void panel_load(const qweight *w, int r, int nr, int n, int stride, uint8_t *wp, float *sp, float *bp)
{
    const int cols = w->cols, groups = cols / w->group_size;
    const size_t row_bytes = (size_t)cols * (size_t)w->bits / 8;
    for (int i = 0; i < n; i++) {
        uint8_t *dst = wp + (size_t)i * (size_t)cols;
        if (i < nr) {
            panel_unpack_row(w->packed + (size_t)(r + i) * row_bytes, w->bits, cols, dst);
            panel_row_floats(w->scales, w->sdtype, (size_t)(r + i) * (size_t)groups, groups, sp + i, stride);
            panel_row_floats(w->biases, w->sdtype, (size_t)(r + i) * (size_t)groups, groups, bp + i, stride);
        } else {
            memset(dst, 0, (size_t)cols);
            for (int g = 0; g < groups; g++)
                sp[(size_t)g * (size_t)stride + (size_t)i] = bp[(size_t)g * (size_t)stride + (size_t)i] = 0.0f;
        }
    }
}

size_t panel_bytes(panel_prep *a, const qweight *w, int n_tok)
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

void panel_assign(panel_prep *a, void *mem)
{
    /* the sizes below repeat panel_bytes; ksteps * K == cols */
    const size_t cols = (size_t)a->ksteps * (size_t)a->K;
    a->xb = mem;
    a->dxv = (float *)((uint8_t *)mem + qx_align64(2 * (size_t)a->ntb * 16 * cols));
    a->xsv = a->dxv + qx_align64((size_t)a->ntb * (size_t)a->groups * 16 * sizeof(float)) / sizeof(float);
}

/* Quantizes tokens [t0, t1) (t0 a multiple of 16) into the tile layout. The B tile of (token block
 * tb, k-step s) has K/4 rows of 64 bytes; row kk holds, for each of the 16 tokens, the 4 activation
 * bytes k = s*K + 4kk .. +3. Tokens from n_tok up to the block's end are zero. */
void panel_fill(const panel_prep *ap, const qweight *w, const float *x, int n_tok, int t0, int t1)
{
    const int cols = w->cols, G = w->group_size, groups = ap->groups, K = ap->K;
    int8_t *xb = ap->xb;
    float *dxv = ap->dxv, *xsv = ap->xsv;
    const size_t level2 = (size_t)ap->ntb * 16 * (size_t)cols; /* second int8 level after the first */
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
                const float amax = group_absmax_sum(xg, G, &xsg[n]);
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

/* ---- AVX-512 VNNI panel kernel ---- */

/* acc += dot(u8 a, s8 b) in place. GCC 12 keeps vpdpbusd accumulators of an unrolled loop in
 * registers only after copying each of them every iteration (a third of the instructions); the asm
 * form with a read-write operand keeps them where they are. */
#if defined(__GNUC__) && !defined(__clang__)
#define DPBUSD(acc, a, b) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))
#else
#define DPBUSD(acc, a, b) ((acc) = _mm512_dpbusd_epi32((acc), (a), (b)))
#endif

#define PR 32 /* weight rows per panel: unpacked once, reused for every token block */
#define QR 4  /* rows per register block */

/* int32 dot products of QR rows x NB token blocks (16 tokens each) over one group, both levels,
 * added into the float accumulators acc[row][block][16] (row stride 2 * 16). */
static inline __attribute__((always_inline)) void
group_block(const uint8_t *wrow, size_t wstride, const int8_t *const b1[2], const int8_t *const b2[2],
            int ksteps4, const __m512 dx[2], const __m512 xs[2], const float *sg, const float *bg,
            float *acc, const int NB)
{
    __m512i h[QR][2], l[QR][2];
#pragma GCC unroll 4
    for (int i = 0; i < QR; i++)
#pragma GCC unroll 2
        for (int j = 0; j < NB; j++)
            h[i][j] = l[i][j] = _mm512_setzero_si512();
    for (int kk = 0; kk < ksteps4; kk++) {
        __m512i v1[2], v2[2];
#pragma GCC unroll 2
        for (int j = 0; j < NB; j++) {
            v1[j] = _mm512_load_si512((const void *)(b1[j] + (size_t)kk * 64));
            v2[j] = _mm512_load_si512((const void *)(b2[j] + (size_t)kk * 64));
        }
#pragma GCC unroll 4
        for (int i = 0; i < QR; i++) {
            int32_t wd;
            memcpy(&wd, wrow + (size_t)i * wstride + (size_t)kk * 4, 4);
            const __m512i wv = _mm512_set1_epi32(wd);
#pragma GCC unroll 2
            for (int j = 0; j < NB; j++) {
                DPBUSD(h[i][j], wv, v1[j]);
                DPBUSD(l[i][j], wv, v2[j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < QR; i++) {
        const __m512 s = _mm512_set1_ps(sg[i]), b = _mm512_set1_ps(bg[i]);
#pragma GCC unroll 2
        for (int j = 0; j < NB; j++) {
            /* 256 * level 1 + level 2; at most 128 * 255 * 127 * 257 < 2^31 */
            const __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(h[i][j], 8), l[i][j]);
            float *a = acc + ((size_t)i * 2 + (size_t)j) * 16;
            __m512 v = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), dx[j]), s, _mm512_load_ps(a));
            _mm512_store_ps(a, _mm512_fmadd_ps(xs[j], b, v));
        }
    }
}

void qmatmul_vnni_panel_prepared(const qweight *w, const panel_prep *ap, int n_tok, float *y, int ldy,
                                 int r0, int r1)
{
    const int cols = w->cols, groups = ap->groups, G = w->group_size;
    const int K = ap->K, ksteps = ap->ksteps, kpg = ap->kpg, ntb = ap->ntb;
    const size_t level2 = (size_t)ntb * 16 * (size_t)cols;
    if (r0 >= r1 || n_tok <= 0)
        return;
    uint8_t *wp = kernels_scratch(4, (size_t)PR * (size_t)cols);
    float *sp = kernels_scratch(5, (size_t)groups * PR * 2 * sizeof(float));
    float *acc = kernels_scratch(6, (size_t)PR * 2 * 16 * sizeof(float));
    if (!wp || !sp || !acc)
        return; /* a few hundred KB at most; unreachable in practice */
    float *bp = sp + (size_t)groups * PR;

    for (int r = r0; r < r1; r += PR) {
        const int nr = r1 - r < PR ? r1 - r : PR;
        const int nq = (nr + QR - 1) / QR * QR; /* rows computed: padding rows are zero weights */
        panel_load(w, r, nr, nq, PR, wp, sp, bp);
        for (int tb = 0; tb < ntb; tb += 2) {
            const int nb = ntb - tb < 2 ? 1 : 2;
            memset(acc, 0, (size_t)PR * 2 * 16 * sizeof(float));
            for (int g = 0; g < groups; g++) {
                const int8_t *b1[2], *b2[2];
                __m512 dx[2], xs[2];
                for (int j = 0; j < 2; j++) {
                    const int t = tb + (j < nb ? j : 0);
                    b1[j] = ap->xb + ((size_t)t * (size_t)ksteps + (size_t)g * (size_t)kpg) * (size_t)K * 16;
                    b2[j] = b1[j] + level2;
                    const size_t gi = ((size_t)t * (size_t)groups + (size_t)g) * 16;
                    dx[j] = _mm512_loadu_ps(ap->dxv + gi);
                    xs[j] = _mm512_loadu_ps(ap->xsv + gi);
                }
                const float *sg = sp + (size_t)g * PR, *bg = bp + (size_t)g * PR;
                for (int q = 0; q < nq; q += QR) {
                    const uint8_t *wrow = wp + (size_t)q * (size_t)cols + (size_t)g * (size_t)G;
                    float *a = acc + (size_t)q * 2 * 16;
                    if (nb == 2)
                        group_block(wrow, (size_t)cols, b1, b2, G / 4, dx, xs, sg + q, bg + q, a, 2);
                    else
                        group_block(wrow, (size_t)cols, b1, b2, G / 4, dx, xs, sg + q, bg + q, a, 1);
                }
            }
            /* y is token-major: write each token's run of rows contiguously */
            for (int j = 0; j < nb; j++)
                for (int tt = 0; tt < 16 && (tb + j) * 16 + tt < n_tok; tt++) {
                    float *yt = y + (size_t)((tb + j) * 16 + tt) * (size_t)ldy + (size_t)r;
                    for (int i = 0; i < nr; i++)
                        yt[i] = acc[((size_t)i * 2 + (size_t)j) * 16 + (size_t)tt];
                }
        }
    }
}

void panel_run(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1,
               panel_kernel_fn kernel)
{
    panel_prep ap;
    size_t bytes = panel_bytes(&ap, w, n_tok);
    void *mem = kernels_scratch(1, bytes);
    if (!mem) {
        qmatmul_avx512vnni(w, x, n_tok, y, ldy, r0, r1);
        return;
    }
    panel_assign(&ap, mem);
    panel_fill(&ap, w, x, n_tok, 0, n_tok);
    kernel(w, &ap, n_tok, y, ldy, r0, r1);
}

void qmatmul_vnni_panel(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1)
{
    panel_run(w, x, n_tok, y, ldy, r0, r1, qmatmul_vnni_panel_prepared);
}
