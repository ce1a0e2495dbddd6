/* The activation layout of the panel kernels (AMX tiles, AVX-512 VNNI and AVX-VNNI, for batches of
 * 16 tokens or more), and the unpacking of weight rows into panels. AVX2 only, so that every panel
 * kernel can use it. See qmatmul_internal.h (panel_prep) for the layout. */
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
    const __m256i lo = _mm256_set1_epi16(0x000f), hi = _mm256_set1_epi16(0x0f00);
    const int bytes = cols / 2;
    int i = 0;
    for (; i + 16 <= bytes; i += 16) {
        __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(src + i)));
        /* byte 2i = low nibble (element 2i), byte 2i+1 = high nibble */
        __m256i e = _mm256_or_si256(_mm256_and_si256(v, lo), _mm256_and_si256(_mm256_slli_epi16(v, 4), hi));
        _mm256_storeu_si256((__m256i *)(dst + 2 * i), e);
    }
    for (; i < bytes; i++) { /* cols is a multiple of the group size (>= 32), so this never runs */
        dst[2 * i] = src[i] & 15;
        dst[2 * i + 1] = src[i] >> 4;
    }
}

void panel_load(const qweight *w, int r, int nr, int n, int stride, uint8_t *wp, float *sp, float *bp)
{
    const int cols = w->cols, groups = cols / w->group_size;
    const size_t row_bytes = qweight_row_bytes(w);
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
    const size_t level2 = panel_level2(ap, cols); /* second int8 level after the first */
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
                    int32_t d1[8], d2[8];
                    _mm256_storeu_si256((__m256i *)d1, q1);
                    _mm256_storeu_si256((__m256i *)d2, q2);
                    for (int r = 0; r < 8; r++) { /* dword r goes to tile row r (64 bytes apart) */
                        memcpy(dst + 64 * r, &d1[r], 4);
                        memcpy(dst + level2 + 64 * r, &d2[r], 4);
                    }
                }
            }
        }
    }
}


int panel_scratch(const qweight *w, const panel_prep *ap, size_t acc_floats, uint8_t **wp, float **sp,
                  float **bp, float **acc)
{
    const size_t groups = (size_t)ap->groups;
    *wp = kernels_scratch(4, PANEL_ROWS * (size_t)w->cols);
    *sp = kernels_scratch(5, groups * PANEL_ROWS * 2 * sizeof(float));
    *acc = kernels_scratch(6, acc_floats * sizeof(float));
    if (!*wp || !*sp || !*acc)
        return -1;
    *bp = *sp + groups * PANEL_ROWS;
    return 0;
}

void panel_store(float *y, int ldy, int r, int nr, const float *acc, size_t row_stride, int t0, int n_tok)
{
    /* y is token-major: write each token's run of rows contiguously */
    for (int tt = 0; tt < 16 && t0 + tt < n_tok; tt++) {
        float *yt = y + (size_t)(t0 + tt) * (size_t)ldy + (size_t)r;
        for (int i = 0; i < nr; i++)
            yt[i] = acc[(size_t)i * row_stride + (size_t)tt];
    }
}

int panel_run(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1,
              panel_kernel_fn kernel)
{
    panel_prep ap;
    size_t bytes = panel_bytes(&ap, w, n_tok);
    void *mem = kernels_scratch(1, bytes);
    if (!mem)
        return -1;
    panel_assign(&ap, mem);
    panel_fill(&ap, w, x, n_tok, 0, n_tok);
    kernel(w, &ap, n_tok, y, ldy, r0, r1);
    return 0;
}
