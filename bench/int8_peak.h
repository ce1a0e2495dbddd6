/* The int8 dot-product peak (AVX-512 VNNI vpdpbusd) that prefill is bounded by when compute-bound,
 * shared by the benchmarks: each thread of the caller's pool runs int8_peak_loop. */
#ifndef PUNIE_BENCH_INT8_PEAK_H
#define PUNIE_BENCH_INT8_PEAK_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define INT8_PEAK_ITERS 4000000L

/* Ten independent vpdpbusd chains (more than latency x throughput), in asm so the compiler keeps them
 * in registers; returns the multiply-adds done. */
__attribute__((target("avx512f,avx512vnni"))) static double int8_peak_loop(void)
{
    __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(5);
    __m512i c0 = x, c1 = x, c2 = x, c3 = x, c4 = x, c5 = x, c6 = x, c7 = x, c8 = x, c9 = x;
    for (long i = 0; i < INT8_PEAK_ITERS; i++) {
#define DP(c) __asm__ volatile("vpdpbusd %2, %1, %0" : "+v"(c) : "v"(x), "v"(y))
        DP(c0); DP(c1); DP(c2); DP(c3); DP(c4); DP(c5); DP(c6); DP(c7); DP(c8); DP(c9);
#undef DP
    }
    __asm__ volatile("" ::"v"(c0), "v"(c1), "v"(c2), "v"(c3), "v"(c4), "v"(c5), "v"(c6), "v"(c7), "v"(c8), "v"(c9));
    return (double)INT8_PEAK_ITERS * 10 * 64;
}

/* Whether this CPU has the instructions int8_peak_loop uses. */
static int int8_peak_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni");
}
#else
static double int8_peak_loop(void) { return 0; }
static int int8_peak_supported(void) { return 0; }
#endif

#endif
