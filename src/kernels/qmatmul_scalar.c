/* Portable reference kernels. They use the per-group identity of spec/engine.md §3.1:
 * y = sum_g (s_g * sum_{j in g} x_j q_j + b_g * sum_{j in g} x_j). */
#include "kernels/qmatmul.h"

#include <math.h>
#include <string.h>

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400));
            mant &= 0x3ff;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return sign | 0x7e00u; /* NaN */
    if (ax >= 0x477ff000u)
        return sign | 0x7c00u; /* at or past 65520: rounds to infinity */
    if (ax < 0x38800000u) {
        /* below the smallest normal half (2^-14): a multiple of 2^-24, rounded to nearest even by
         * the float addition (2^-24 * 2^23 = 0.5 puts the unit in the last mantissa bit) */
        float a, t;
        memcpy(&a, &ax, 4);
        t = a + 0.5f;
        uint32_t tb;
        memcpy(&tb, &t, 4);
        return sign | (uint16_t)(tb - 0x3f000000u);
    }
    /* normal: drop 13 mantissa bits with round to nearest even; a carry moves into the exponent */
    const uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

float bf16_to_f32(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float load_float(const uint8_t *p, enum float_dtype dt, size_t index)
{
    if (dt == DT_F32) {
        float f;
        memcpy(&f, p + index * 4, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p + index * 2, 2);
    return dt == DT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

static inline unsigned quant_at(const uint8_t *row, int bits, int j)
{
    if (bits == 8)
        return row[j];
    /* 4-bit: element j is in byte j/2, low nibble first (LSB-first words, little-endian). */
    uint8_t byte = row[j >> 1];
    return (j & 1) ? (byte >> 4) : (byte & 0xf);
}

/* Dot product of one group with x and the plain sum of x over it. Four partial sums keep the
 * dependency chains short (the order is fixed, so results are deterministic). */
static inline void group_dot4(const uint8_t *row, const float *x, int j0, int G, float *dot, float *sum)
{
    float d0 = 0, d1 = 0, d2 = 0, d3 = 0, s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    const uint8_t *p = row + (j0 >> 1);
    for (int j = 0; j < G; j += 4, p += 2) {
        const float x0 = x[j], x1 = x[j + 1], x2 = x[j + 2], x3 = x[j + 3];
        d0 += x0 * (float)(p[0] & 0xf);
        d1 += x1 * (float)(p[0] >> 4);
        d2 += x2 * (float)(p[1] & 0xf);
        d3 += x3 * (float)(p[1] >> 4);
        s0 += x0;
        s1 += x1;
        s2 += x2;
        s3 += x3;
    }
    *dot = (d0 + d1) + (d2 + d3);
    *sum = (s0 + s1) + (s2 + s3);
}

static inline void group_dot8(const uint8_t *row, const float *x, int j0, int G, float *dot, float *sum)
{
    float d0 = 0, d1 = 0, d2 = 0, d3 = 0, s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    const uint8_t *p = row + j0;
    for (int j = 0; j < G; j += 4) {
        const float x0 = x[j], x1 = x[j + 1], x2 = x[j + 2], x3 = x[j + 3];
        d0 += x0 * (float)p[j];
        d1 += x1 * (float)p[j + 1];
        d2 += x2 * (float)p[j + 2];
        d3 += x3 * (float)p[j + 3];
        s0 += x0;
        s1 += x1;
        s2 += x2;
        s3 += x3;
    }
    *dot = (d0 + d1) + (d2 + d3);
    *sum = (s0 + s1) + (s2 + s3);
}

void qmatmul_scalar(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1)
{
    const int G = w->group_size, groups = w->cols / G;
    const size_t row_bytes = qweight_row_bytes(w);
    const int fast = (w->bits == 4 || w->bits == 8) && G % 4 == 0;
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = w->packed + (size_t)r * row_bytes;
        for (int t = 0; t < n_tok; t++) {
            const float *xt = x + (size_t)t * w->cols;
            float acc = 0.0f;
            for (int g = 0; g < groups; g++) {
                float s = load_float(w->scales, w->sdtype, (size_t)r * groups + g);
                float b = load_float(w->biases, w->sdtype, (size_t)r * groups + g);
                float dot = 0.0f, sum = 0.0f;
                const int j0 = g * G;
                if (fast && w->bits == 4) {
                    group_dot4(row, xt + j0, j0, G, &dot, &sum);
                } else if (fast) {
                    group_dot8(row, xt + j0, j0, G, &dot, &sum);
                } else {
                    for (int j = j0; j < j0 + G; j++) {
                        dot += xt[j] * (float)quant_at(row, w->bits, j);
                        sum += xt[j];
                    }
                }
                acc += s * dot + b * sum;
            }
            y[(size_t)t * ldy + r] = acc;
        }
    }
}

void qweight_dequant_row(const qweight *w, int row, float *out)
{
    const int groups = w->cols / w->group_size;
    const uint8_t *packed = w->packed + (size_t)row * qweight_row_bytes(w);
    for (int g = 0; g < groups; g++) {
        float s = load_float(w->scales, w->sdtype, (size_t)row * groups + g);
        float b = load_float(w->biases, w->sdtype, (size_t)row * groups + g);
        for (int j = g * w->group_size; j < (g + 1) * w->group_size; j++)
            out[j] = s * (float)quant_at(packed, w->bits, j) + b;
    }
}
