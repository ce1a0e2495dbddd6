/* Run-time choice of the kernel implementation: the best instruction set the CPU and the OS support,
 * capped by PUNIE_ISA=scalar|avx2|avx2vnni|avx512|amx (for tests and benchmarks). "avx2vnni",
 * "avx512vnni" and "amx" hand batches of 16 tokens or more (prefill) to a panel kernel: AVX-VNNI,
 * AVX-512 VNNI or AMX tiles. Also the per-thread scratch memory the SIMD kernels use for quantized
 * activations. */
#include "kernels/qmatmul.h"
#include "kernels/qmatmul_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <pthread.h>
#include <stdbool.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

typedef void (*qmatmul_fn)(const qweight *, const float *, int, float *, int, int, int);

/* Batches at least this large go to a panel kernel (AMX, AVX-512 VNNI or AVX-VNNI). */
#include <stdint.h>
#define PANEL_MIN_TOKENS 16

/* In order of preference; "avx2vnni" is AVX2 with AVX-VNNI (CPUs without AVX-512). */
enum { ISA_SCALAR, ISA_AVX2, ISA_AVX2VNNI, ISA_AVX512, ISA_AVX512VNNI, ISA_AMX, ISA_COUNT };
static const char *const isa_names[ISA_COUNT] = {"scalar", "avx2", "avx2vnni", "avx512", "avx512vnni", "amx"};
/* the kernel for up to PANEL_MIN_TOKENS - 1 tokens (decode), and for more where there is no panel kernel */
static const qmatmul_fn isa_fns[ISA_COUNT] = {qmatmul_scalar, qmatmul_avx2, qmatmul_avx2_vnni, qmatmul_avx512,
                                              qmatmul_avx512vnni, qmatmul_avx512vnni};
/* the panel kernel for batches of PANEL_MIN_TOKENS or more, on activations laid out for it */
static const panel_kernel_fn isa_panel_fns[ISA_COUNT] = {NULL, NULL, qmatmul_avxvnni_panel_prepared, NULL,
                                                         qmatmul_vnni_panel_prepared, qmatmul_amx_prepared};

static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static bool isa_ok[ISA_COUNT]; /* supported by this CPU and OS */
static int isa_best;           /* best supported */
static int isa_current;        /* in use */

#if defined(__x86_64__) || defined(__i386__)
/* clang 14 rejects __builtin_cpu_supports("f16c"), ("amx-tile") and ("amx-int8"): read those CPUID bits
 * directly (leaf 1 ECX for F16C, leaf 7 EDX for AMX). The OS-state checks are covered by the avx2 test
 * and, for AMX, by the arch_prctl request below. */
static bool cpuid_bit(unsigned leaf, bool edx, unsigned bit)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(leaf, 0, &a, &b, &c, &d))
        return false;
    return ((edx ? d : c) >> bit) & 1u;
}
#endif

bool cpu_has_f16c(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return cpuid_bit(1, false, 29);
#else
    return false;
#endif
}

/* AVX-VNNI: CPUID leaf 7 subleaf 1, EAX bit 4 */
static bool cpu_has_avxvnni(void)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d))
        return false;
    return (a >> 4) & 1u;
#else
    return false;
#endif
}

/* The best of the linear levels scalar < avx2 < avx512 < avx512vnni < amx (avx2vnni aside). */
static int cpu_level(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    /* __builtin_cpu_supports also checks that the OS saves the vector state (XGETBV). */
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c()))
        return ISA_SCALAR;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")))
        return ISA_AVX2;
    if (!__builtin_cpu_supports("avx512vnni"))
        return ISA_AVX512;
#if defined(__x86_64__) && defined(SYS_arch_prctl)
    if (cpuid_bit(7, true, 24) && cpuid_bit(7, true, 25)) {
        /* Linux hands out the large AMX register state only on request (ARCH_REQ_XCOMP_PERM for
         * XFEATURE_XTILEDATA); the permission covers every thread of the process. */
        if (syscall(SYS_arch_prctl, 0x1023, 18) == 0)
            return ISA_AMX;
    }
#endif
    return ISA_AVX512VNNI;
#else
    return ISA_SCALAR;
#endif
}

static void isa_init(void)
{
    const int level = cpu_level();
    for (int i = 0; i < ISA_COUNT; i++)
        isa_ok[i] = i == ISA_AVX2VNNI ? level >= ISA_AVX2 && cpu_has_avxvnni() : level >= i;
    /* with AVX-512 VNNI the 512-bit kernels are preferred to AVX-VNNI */
    isa_best = level >= ISA_AVX512 ? level : isa_ok[ISA_AVX2VNNI] ? ISA_AVX2VNNI : level;
    isa_current = isa_best;
    const char *cap = getenv("PUNIE_ISA");
    if (cap && *cap) {
        int lim = ISA_COUNT - 1;
        if (strcmp(cap, "scalar") == 0)
            lim = ISA_SCALAR;
        else if (strcmp(cap, "avx2") == 0)
            lim = ISA_AVX2;
        else if (strcmp(cap, "avx2vnni") == 0)
            lim = ISA_AVX2VNNI;
        else if (strcmp(cap, "avx512") == 0)
            lim = ISA_AVX512VNNI; /* AVX-512, with VNNI where present */
        else if (strcmp(cap, "amx") == 0)
            lim = ISA_AMX;
        else if (strcmp(cap, "avx512novnni") == 0)
            lim = ISA_AVX512;
        if (isa_current > lim)
            isa_current = lim;
        while (!isa_ok[isa_current]) /* e.g. avx2vnni asked on a CPU with AVX-512 but no AVX-VNNI */
            isa_current--;
    }
}

/* Long batches go through in slices so that the per-thread scratch for quantized activations
 * stays small (about 1.5 bytes per activation, so ~7 MB for 256 x 18944); 256 tokens per slice
 * already amortise the per-slice weight unpacking. */
#define MAX_TOKENS_PER_CALL 256

void qmatmul(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1)
{
    pthread_once(&isa_once, isa_init);
    qmatmul_fn fn = isa_fns[isa_current];
    /* The SIMD kernels handle exactly what MLX affine 4/8-bit files contain; anything else (the
     * loader should have refused it) takes the generic scalar path rather than misbehaving. */
    const int G = w->group_size;
    if ((w->bits != 4 && w->bits != 8) || (G != 32 && G != 64 && G != 128) || w->cols <= 0 ||
        w->cols % G != 0)
        fn = qmatmul_scalar;
    for (int t0 = 0; t0 < n_tok; t0 += MAX_TOKENS_PER_CALL) {
        const int n = n_tok - t0 < MAX_TOKENS_PER_CALL ? n_tok - t0 : MAX_TOKENS_PER_CALL;
        const float *xt = x + (size_t)t0 * (size_t)w->cols;
        float *yt = y + (size_t)t0 * (size_t)ldy;
        const panel_kernel_fn panel = fn != qmatmul_scalar ? isa_panel_fns[isa_current] : NULL;
        if (r1 <= r0)
            continue;
        /* a panel kernel where there is one (the tile kernel if its scratch cannot be had) */
        if (!(panel && n >= PANEL_MIN_TOKENS && panel_run(w, xt, n, yt, ldy, r0, r1, panel) == 0))
            fn(w, xt, n, yt, ldy, r0, r1);
    }
}

const char *kernels_isa(void)
{
    pthread_once(&isa_once, isa_init);
    return isa_names[isa_current];
}

int kernels_select_isa(const char *name)
{
    pthread_once(&isa_once, isa_init);
    for (int i = 0; i < ISA_COUNT; i++)
        if (strcmp(name, isa_names[i]) == 0 && isa_ok[i]) {
            isa_current = i;
            return 0;
        }
    return -1;
}

static _Thread_local struct {
    void *ptr;
    size_t cap;
} scratch[KSCRATCH_SLOTS];

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *unused)
{
    for (int i = 0; i < KSCRATCH_SLOTS; i++) {
        free(scratch[i].ptr);
        scratch[i].ptr = NULL;
        scratch[i].cap = 0;
    }
}

static void scratch_key_init(void) { (void)pthread_key_create(&scratch_key, scratch_free); }

void *kernels_scratch(int slot, size_t bytes)
{
    if (slot < 0 || slot >= KSCRATCH_SLOTS)
        return NULL;
    if (scratch[slot].cap >= bytes)
        return scratch[slot].ptr;
    pthread_once(&scratch_once, scratch_key_init);
    /* A non-NULL value makes the destructor run at thread exit. */
    (void)pthread_setspecific(scratch_key, (void *)1);
    size_t cap = bytes + bytes / 4 + 4096;
    void *p = NULL;
    if (posix_memalign(&p, 64, cap) != 0)
        return NULL;
    free(scratch[slot].ptr);
    scratch[slot].ptr = p;
    scratch[slot].cap = cap;
    return p;
}

/* ---- activations prepared once for a thread pool ---- */

qact *qact_new(void) { return calloc(1, sizeof(qact)); }

void qact_free(qact *a)
{
    if (!a)
        return;
    free(a->mem);
    free(a);
}

static int supported_layout(const qweight *w)
{
    const int G = w->group_size;
    return (w->bits == 4 || w->bits == 8) && (G == 32 || G == 64 || G == 128) && w->cols > 0 &&
           w->cols % G == 0;
}

int qact_reserve(qact *a, const qweight *w, const float *x, int n_tok)
{
    pthread_once(&isa_once, isa_init);
    a->n_tok = n_tok > 0 ? n_tok : 0;
    a->cols = w->cols;
    a->group_size = w->group_size;
    a->bits = w->bits;
    a->x = x;
    a->w = *w;
    a->kind = QACT_SCALAR;
    if (!supported_layout(w) || a->n_tok == 0)
        return 0;
    size_t bytes;
    int kind;
    a->panel_kernel = isa_panel_fns[isa_current];
    if (a->panel_kernel && a->n_tok >= PANEL_MIN_TOKENS) {
        kind = QACT_PANEL;
        bytes = panel_bytes(&a->panel, w, a->n_tok);
    } else {
        switch (isa_current) {
        case ISA_AVX2:
        case ISA_AVX2VNNI:
            kind = isa_current == ISA_AVX2VNNI ? QACT_AVX2VNNI : QACT_AVX2;
            bytes = qx_avx2_bytes(&a->qx, w, a->n_tok);
            break;
        case ISA_AVX512:
            kind = QACT_AVX512;
            bytes = qx_avx512_bytes(&a->qx, w, a->n_tok);
            break;
        case ISA_AVX512VNNI:
        case ISA_AMX:
            kind = QACT_AVX512VNNI;
            bytes = qx_avx512_bytes(&a->qx, w, a->n_tok);
            break;
        default:
            return 0;
        }
    }
    if (a->cap < bytes) {
        void *p = NULL;
        if (posix_memalign(&p, 64, bytes) != 0)
            return -1; /* a stays a valid scalar qact */
        free(a->mem);
        a->mem = p;
        a->cap = bytes;
    }
    if (kind == QACT_PANEL) {
        panel_assign(&a->panel, a->mem);
    } else {
        uint8_t *m = a->mem;
        a->qx.qx = (int8_t *)m;
        a->qx.dxl = (float *)(m + qx_part_bytes(&a->qx, a->n_tok, 0));
        a->qx.xs = (float *)(m + qx_part_bytes(&a->qx, a->n_tok, 0) + qx_part_bytes(&a->qx, a->n_tok, 1));
    }
    a->kind = kind;
    return 0;
}

void qact_fill(qact *a, int part, int nparts)
{
    if (a->kind == QACT_SCALAR || nparts < 1 || part < 0 || part >= nparts)
        return;
    /* slices of whole 16-token blocks, as the tile layout needs */
    const int blocks = (a->n_tok + 15) / 16;
    const int t0 = (int)((long)blocks * part / nparts) * 16;
    int t1 = (int)((long)blocks * (part + 1) / nparts) * 16;
    if (t1 > a->n_tok)
        t1 = a->n_tok;
    if (t0 >= t1)
        return;
    if (a->kind == QACT_PANEL)
        panel_fill(&a->panel, &a->w, a->x, a->n_tok, t0, t1);
    else if (a->kind == QACT_AVX2 || a->kind == QACT_AVX2VNNI)
        qx_avx2_fill(&a->qx, &a->w, a->x, t0, t1);
    else
        qx_avx512_fill(&a->qx, &a->w, a->x, t0, t1);
}

void qmatmul_prepared(const qweight *w, const qact *a, float *y, int ldy, int r0, int r1)
{
    if (a->kind == QACT_SCALAR || w->cols != a->cols || w->group_size != a->group_size ||
        w->bits != a->bits) {
        qmatmul(w, a->x, a->n_tok, y, ldy, r0, r1);
        return;
    }
    switch (a->kind) {
    case QACT_PANEL:
        a->panel_kernel(w, &a->panel, a->n_tok, y, ldy, r0, r1);
        break;
    case QACT_AVX2:
        qmatmul_avx2_prepared(w, &a->qx, a->n_tok, y, ldy, r0, r1);
        break;
    case QACT_AVX2VNNI:
        qmatmul_avx2_prepared_vnni(w, &a->qx, a->n_tok, y, ldy, r0, r1);
        break;
    default:
        qmatmul_avx512_prepared(w, &a->qx, a->n_tok, y, ldy, r0, r1, a->kind == QACT_AVX512VNNI);
        break;
    }
}
