/* The Qwen2 forward pass (spec/engine.md §5), in float32 with packed 4/8-bit weights.
 * Prompts run in chunks of up to CHUNK tokens as matrix x matrix products; decode is the n = 1 case.
 * Every matmul and the attention are split across the model's thread pool. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/attention_impl.h"
#include "model/model_internal.h"
#include "model/vector_isa.h"

static void attend_queries_generic(const float *q, size_t q_stride, int nq, int ng, const uint16_t *kt,
                                   const uint16_t *vc, int n_keys0, int key_cap, int D, float scale, float *scores,
                                   float *out, size_t out_stride, float *lse)
{
    attend_queries(q, q_stride, nq, ng, kt, vc, n_keys0, key_cap, D, scale, scores, out, out_stride, lse);
}

static void silu_mul_generic(float *g, const float *u, int n) { v16_silu_mul_span(g, u, n); }

/* The widest build of the vector code the CPU runs; PUNIE_VECTOR=portable forces the portable build
 * (tests). */
void qwen2_setup(model *m)
{
    m->attend = attend_queries_generic;
    m->silu_mul = silu_mul_generic;
#if defined(__x86_64__)
    const char *want = getenv("PUNIE_VECTOR");
    if (want && strcmp(want, "portable") == 0)
        return;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !cpu_has_f16c())
        return;
    if (__builtin_cpu_supports("avx512f")) {
        m->attend = attend_queries_avx512;
        m->silu_mul = silu_mul_avx512;
    } else {
        m->attend = attend_queries_avx2;
        m->silu_mul = silu_mul_avx2;
    }
#endif
}

#define CHUNK 256
#define ROW_ALIGN 16 /* thread row ranges start on multiples of this (kernel-friendly) */

struct model_ctx {
    model *m;
    int n_ctx, pos, chunk;
    int n_ctx_pad;            /* n_ctx rounded up to whole key blocks */
    /* the KV cache, in half precision (half the memory and the bandwidth of float; keys and values
     * are rounded once, to 11 significant bits) */
    uint16_t *k_cache;        /* [layer][kv_head][n_ctx_pad / ATT_KB][head_dim][ATT_KB] (transposed blocks) */
    uint16_t *v_cache;        /* [layer][kv_head][n_ctx][head_dim] */
    /* per-chunk activations */
    float *x;            /* [chunk][H] residual stream */
    float *xn;           /* [chunk][H] normalised input of a block */
    float *q, *k, *v;    /* [chunk][nh*D], [chunk][nkv*D] */
    float *att;          /* [chunk][nh*D] attention output */
    float *proj;         /* [chunk][H] output of o_proj / down_proj */
    float *gate, *up;    /* [chunk][I] */
    float *rope_cos, *rope_sin; /* [chunk][D/2] */
    float *scores;       /* [n_threads][ATT_QUERIES][heads per kv head][n_ctx_pad] */
    float *att_part;     /* [ATT_SPLIT_MAX][ATT_QUERIES][nh*D] attention of each slice of the keys */
    float *att_lse;      /* [ATT_SPLIT_MAX][nkv][ATT_QUERIES][heads per kv head] log of each slice's softmax sum */
    float *last_norm;    /* [H] */
};

/* ---- parallel matmul over up to three weights sharing one input ---- */

struct mm_job {
    const qweight *w;
    const float *x;
    float *y;
    int ldy;
};

struct mm_task {
    struct mm_job jobs[3];
    int n_jobs, n_tok;
    int chunk_rows[3]; /* rows per work item of each job */
    int first_item[4]; /* job j owns items [first_item[j], first_item[j + 1]) */
    /* when set, the jobs are gate and up: an item does the same rows of both, then this SwiGLU */
    silu_mul_fn swiglu;
    qact *act; /* when set: activations quantized once for all threads */
};

/* Rows per work item: about this many weight bytes, so items are many and small enough that a
 * delayed thread holds back little, yet large against the cost of claiming one. */
#define ITEM_BYTES (96 * 1024)

static void mm_rows(const struct mm_task *task, const struct mm_job *job, int r0, int r1)
{
    if (task->act)
        qmatmul_prepared(job->w, task->act, job->y, job->ldy, r0, r1);
    else
        qmatmul(job->w, job->x, task->n_tok, job->y, job->ldy, r0, r1);
}

/* gate = silu(gate) * up on the item's rows, right after computing them (still in cache) */
static void swiglu_item(const struct mm_task *task, int item)
{
    const struct mm_job *g = &task->jobs[0], *u = &task->jobs[1];
    int r0 = item * task->chunk_rows[0];
    int r1 = r0 + task->chunk_rows[0] < g->w->rows ? r0 + task->chunk_rows[0] : g->w->rows;
    mm_rows(task, g, r0, r1);
    mm_rows(task, u, r0, r1);
    for (int t = 0; t < task->n_tok; t++)
        task->swiglu(g->y + (size_t)t * g->ldy + r0, u->y + (size_t)t * u->ldy + r0, r1 - r0);
}

static void mm_item(void *arg, int item, int thread)
{
    (void)thread;
    const struct mm_task *task = arg;
    if (task->swiglu) {
        swiglu_item(task, item);
        return;
    }
    int j = 0;
    while (j + 1 < task->n_jobs && item >= task->first_item[j + 1])
        j++;
    const struct mm_job *job = &task->jobs[j];
    int r0 = (item - task->first_item[j]) * task->chunk_rows[j];
    int r1 = r0 + task->chunk_rows[j] < job->w->rows ? r0 + task->chunk_rows[j] : job->w->rows;
    mm_rows(task, job, r0, r1);
}

static void act_fill_worker(void *arg, int t, int nt) { qact_fill(arg, t, nt); }

/* All jobs of a task share one input x (same columns), so it is quantized once: by the caller for
 * a single token (a few microseconds, cheaper than a dispatch), by all threads for a batch. */
static void run_matmul(model *m, struct mm_task *task)
{
    int items = 0;
    for (int j = 0; j < task->n_jobs; j++) {
        const qweight *w = task->jobs[j].w;
        size_t row_bytes = qweight_row_bytes(w) + 1;
        if (task->swiglu)
            row_bytes *= 2; /* an item covers its rows in both matrices */
        size_t rows = ITEM_BYTES / row_bytes;
        if (task->n_tok > 1)
            rows *= 2; /* prefill: compute-bound, fewer and larger items */
        rows = (rows + ROW_ALIGN - 1) / ROW_ALIGN * ROW_ALIGN;
        if (rows < ROW_ALIGN)
            rows = ROW_ALIGN;
        task->chunk_rows[j] = (int)rows;
        task->first_item[j] = items;
        items += (int)(((size_t)w->rows + rows - 1) / rows);
        if (task->swiglu)
            break;
    }
    task->first_item[task->swiglu ? 1 : task->n_jobs] = items;
    task->act = NULL;
    if (m->act && qact_reserve(m->act, task->jobs[0].w, task->jobs[0].x, task->n_tok) == 0) {
        if (task->n_tok == 1)
            qact_fill(m->act, 0, 1);
        else
            threadpool_run(m->pool, act_fill_worker, m->act);
        task->act = m->act;
    }
    threadpool_for(m->pool, mm_item, task, items);
}

static void matmul1(model *m, const qweight *w, const float *x, int n_tok, float *y, int ldy)
{
    struct mm_task task = {.jobs = {{w, x, y, ldy}}, .n_jobs = 1, .n_tok = n_tok};
    run_matmul(m, &task);
}

/* ---- element-wise pieces ---- */

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++)
        out[i] = w[i] * (x[i] * inv);
}

/* rotate-half RoPE on one head vector: pairs (i, i + D/2) */
static void rope_apply(float *v, const float *cs, const float *sn, int half)
{
    for (int i = 0; i < half; i++) {
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cs[i] - x2 * sn[i];
        v[i + half] = x1 * sn[i] + x2 * cs[i];
    }
}

/* ---- attention, parallel over (kv head, run of ATT_QUERIES queries) pairs ---- */

/* Queries attended together: each key block and value chunk is read once for all of them. */
#define ATT_QUERIES 8
/* Decode (a single run of queries) has only one item per key/value head, e.g. 2 for the 3B model,
 * which leaves most cores of a larger machine idle while the cache is read. Its keys are then cut
 * into slices, each attended on its own and joined by att_combine, for about ATT_SPLIT_ITEMS items
 * per thread; a slice holds at least ATT_SPLIT_MIN_KEYS keys (a multiple of the value chunk), so
 * that joining costs little against reading it, and there are at most ATT_SPLIT_MAX. */
#define ATT_SPLIT_ITEMS 2
#define ATT_SPLIT_MIN_KEYS 256
#define ATT_SPLIT_MAX 32

struct att_task {
    model_ctx *c;
    int layer, n_tok, pos0;
    int slices, slice_keys; /* slices of the keys (1: not split) */
    model_ctx *const *owners; /* a batch of single tokens of these contexts (model_batch_decode) */
};

/* Token j of a batch of contexts: one query against its own context's cache. */
static void att_batch_item(void *arg, int it, int t)
{
    const struct att_task *a = arg;
    model_ctx *c = a->c;
    const model_config *cfg = &c->m->cfg;
    const int D = cfg->head_dim, nh = cfg->n_heads, nkv = cfg->n_kv_heads, group = nh / nkv;
    const int j = it / nkv, g = it % nkv;
    model_ctx *o = a->owners[j];
    const size_t head_kv = (size_t)a->layer * nkv + (size_t)g;
    float *scores = o->scores + (size_t)t * ATT_QUERIES * (size_t)group * (size_t)o->n_ctx_pad;
    const size_t at = (size_t)j * nh * D + (size_t)g * group * D;
    c->m->attend(c->q + at, (size_t)nh * D, 1, group, o->k_cache + head_kv * (size_t)o->n_ctx_pad * D,
                 o->v_cache + head_kv * (size_t)o->n_ctx * D, o->pos + 1, INT_MAX, D, 1.0f / sqrtf((float)D), scores,
                 c->att + at, (size_t)nh * D, NULL);
}

static void att_item(void *arg, int it, int t)
{
    const struct att_task *a = arg;
    model_ctx *c = a->c;
    const model_config *cfg = &c->m->cfg;
    const int D = cfg->head_dim, nh = cfg->n_heads, nkv = cfg->n_kv_heads;
    const int group = nh / nkv;
    const float scale = 1.0f / sqrtf((float)D);
    float *scores = c->scores + (size_t)t * ATT_QUERIES * (size_t)group * (size_t)c->n_ctx_pad;
    const int g = it % nkv;
    const size_t head_kv = (size_t)a->layer * nkv + (size_t)g;
    const uint16_t *kt = c->k_cache + head_kv * (size_t)c->n_ctx_pad * D;
    const uint16_t *vc = c->v_cache + head_kv * (size_t)c->n_ctx * D;
    if (a->slices > 1) {
        /* slice sl of the keys of the only run: partial outputs and log-sums into the slice's rows */
        const int sl = it / nkv, k0 = sl * a->slice_keys;
        const int cap = sl + 1 < a->slices ? a->slice_keys : INT_MAX;
        c->m->attend(c->q + (size_t)g * group * D, (size_t)nh * D, a->n_tok, group,
                     kt + (size_t)(k0 / ATT_KB) * ATT_KB * D, vc + (size_t)k0 * D, a->pos0 + 1 - k0, cap, D, scale,
                     scores, c->att_part + (size_t)sl * ATT_QUERIES * nh * D + (size_t)g * group * D, (size_t)nh * D,
                     c->att_lse + ((size_t)sl * nkv + (size_t)g) * ATT_QUERIES * group);
        return;
    }
    /* later queries see more keys: hand them out first so the last items are the short ones */
    const int runs = (a->n_tok + ATT_QUERIES - 1) / ATT_QUERIES;
    const int j0 = (runs - 1 - it / nkv) * ATT_QUERIES;
    const int nq = a->n_tok - j0 < ATT_QUERIES ? a->n_tok - j0 : ATT_QUERIES;
    const float *q = c->q + (size_t)j0 * nh * D + (size_t)g * group * D;
    float *out = c->att + (size_t)j0 * nh * D + (size_t)g * group * D;
    /* causal: query j0 + j sees keys 0 .. pos0 + j0 + j */
    c->m->attend(q, (size_t)nh * D, nq, group, kt, vc, a->pos0 + j0 + 1, INT_MAX, D, scale, scores, out,
                 (size_t)nh * D, NULL);
}

/* Attention of a chunk's n_tok queries for one layer, its output in c->att; with owners, of one
 * token of each of those contexts. */
static void attention(model_ctx *c, model_ctx *const *owners, int layer, int n_tok, int pos0)
{
    model *m = c->m;
    const int nh = m->cfg.n_heads, nkv = m->cfg.n_kv_heads, D = m->cfg.head_dim;
    const int runs = (n_tok + ATT_QUERIES - 1) / ATT_QUERIES, n_keys = pos0 + 1;
    struct att_task at = {.c = c, .layer = layer, .n_tok = n_tok, .pos0 = pos0, .slices = 1, .owners = owners};
    if (owners) {
        threadpool_for(m->pool, att_batch_item, &at, n_tok * nkv);
        return;
    }
    const int want = ATT_SPLIT_ITEMS * threadpool_size(m->pool);
    if (runs == 1 && nkv < want && n_keys >= 2 * ATT_SPLIT_MIN_KEYS) {
        int slices = (want + nkv - 1) / nkv;
        if (slices > ATT_SPLIT_MAX)
            slices = ATT_SPLIT_MAX;
        if (slices > n_keys / ATT_SPLIT_MIN_KEYS)
            slices = n_keys / ATT_SPLIT_MIN_KEYS;
        /* whole value chunks per slice; the last slice takes the rest */
        at.slice_keys = (n_keys + slices - 1) / slices;
        at.slice_keys = (at.slice_keys + ATT_VCHUNK - 1) / ATT_VCHUNK * ATT_VCHUNK;
        at.slices = (n_keys + at.slice_keys - 1) / at.slice_keys;
    }
    threadpool_for(m->pool, att_item, &at, nkv * (at.slices > 1 ? at.slices : runs));
    if (at.slices == 1)
        return;
    const int group = nh / nkv;
    for (int j = 0; j < n_tok; j++)
        for (int h = 0; h < nh; h++)
            att_combine(c->att_part + ((size_t)j * nh + (size_t)h) * D, (size_t)ATT_QUERIES * nh * D,
                        c->att_lse + ((size_t)(h / group) * ATT_QUERIES + (size_t)j) * group + (size_t)(h % group),
                        (size_t)ATT_QUERIES * nh, at.slices, D, c->att + ((size_t)j * nh + (size_t)h) * D);
}

/* ---- context ---- */

int model_ctx_new(model *m, int n_ctx, model_ctx **out, perr *err)
{
    const model_config *cfg = &m->cfg;
    /* n_ctx <= 0 means the model's full context */
    if (n_ctx <= 0 || n_ctx > cfg->max_position_embeddings)
        n_ctx = cfg->max_position_embeddings;
    model_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return perr_set(err, "out of memory");
    c->m = m;
    c->n_ctx = n_ctx;
    c->chunk = n_ctx < CHUNK ? n_ctx : CHUNK;
    const size_t H = cfg->hidden_size, I = cfg->intermediate_size, D = cfg->head_dim;
    const size_t qd = cfg->n_heads * D, kvd = cfg->n_kv_heads * D, ch = c->chunk;
    c->n_ctx_pad = (n_ctx + ATT_KB - 1) / ATT_KB * ATT_KB;
    const size_t kv = (size_t)cfg->n_layers * kvd * (size_t)n_ctx;
    /* zeroed: the lanes of a key block past the last position are read (and their scores dropped) */
    c->k_cache = calloc((size_t)cfg->n_layers * kvd * (size_t)c->n_ctx_pad, sizeof *c->k_cache);
    c->v_cache = malloc(kv * sizeof *c->v_cache);
    c->x = malloc(ch * H * sizeof(float));
    c->xn = malloc(ch * H * sizeof(float));
    c->q = malloc(ch * qd * sizeof(float));
    c->k = malloc(ch * kvd * sizeof(float));
    c->v = malloc(ch * kvd * sizeof(float));
    c->att = malloc(ch * qd * sizeof(float));
    c->proj = malloc(ch * H * sizeof(float));
    c->gate = malloc(ch * I * sizeof(float));
    c->up = malloc(ch * I * sizeof(float));
    c->rope_cos = malloc(ch * (D / 2) * sizeof(float));
    c->rope_sin = malloc(ch * (D / 2) * sizeof(float));
    c->scores = malloc((size_t)threadpool_size(m->pool) * ATT_QUERIES * (size_t)(cfg->n_heads / cfg->n_kv_heads) *
                       (size_t)c->n_ctx_pad * sizeof(float));
    c->last_norm = malloc(H * sizeof(float));
    c->att_part = malloc((size_t)ATT_SPLIT_MAX * ATT_QUERIES * qd * sizeof(float));
    c->att_lse = malloc((size_t)ATT_SPLIT_MAX * ATT_QUERIES * (size_t)cfg->n_heads * sizeof(float));
    if (!c->k_cache || !c->v_cache || !c->x || !c->xn || !c->q || !c->k || !c->v || !c->att || !c->proj ||
        !c->att_part || !c->att_lse || !c->gate || !c->up || !c->rope_cos || !c->rope_sin || !c->scores ||
        !c->last_norm) {
        model_ctx_free(c);
        return perr_set(err, "out of memory for a context of %d tokens", n_ctx);
    }
    *out = c;
    return 0;
}

void model_ctx_free(model_ctx *c)
{
    if (!c)
        return;
    free(c->k_cache);
    free(c->v_cache);
    free(c->x);
    free(c->xn);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->att);
    free(c->proj);
    free(c->gate);
    free(c->up);
    free(c->rope_cos);
    free(c->rope_sin);
    free(c->scores);
    free(c->last_norm);
    free(c->att_part);
    free(c->att_lse);
    free(c);
}

int model_ctx_n_ctx(const model_ctx *c) { return c->n_ctx; }
int model_ctx_pos(const model_ctx *c) { return c->pos; }

void model_ctx_truncate(model_ctx *c, int n)
{
    if (n >= 0 && n < c->pos)
        c->pos = n;
}

/* Runs n <= c->chunk tokens through all layers in c's buffers; leaves the final residual in c->x.
 * Without owners they are the next n tokens of c; with owners, token j is the next of owners[j]
 * (its position, its cache). */
static void forward(model_ctx *c, model_ctx *const *owners, const int32_t *tokens, int n)
{
    model *m = c->m;
    const model_config *cfg = &m->cfg;
    const int H = cfg->hidden_size, I = cfg->intermediate_size, D = cfg->head_dim, half = D / 2;
    const int nh = cfg->n_heads, nkv = cfg->n_kv_heads, qd = nh * D, kvd = nkv * D;
    const int pos0 = c->pos;

    for (int j = 0; j < n; j++)
        qweight_dequant_row(&m->embed, tokens[j], c->x + (size_t)j * H);
    for (int j = 0; j < n; j++) {
        const int p = owners ? owners[j]->pos : pos0 + j;
        for (int i = 0; i < half; i++) {
            double angle = (double)p * m->rope_inv_freq[i];
            c->rope_cos[(size_t)j * half + i] = (float)cos(angle);
            c->rope_sin[(size_t)j * half + i] = (float)sin(angle);
        }
    }

    for (int l = 0; l < cfg->n_layers; l++) {
        const layer_weights *L = &m->layers[l];
        for (int j = 0; j < n; j++)
            rmsnorm(c->xn + (size_t)j * H, c->x + (size_t)j * H, L->attn_norm, H, cfg->rms_norm_eps);

        struct mm_task qkv = {
            .jobs = {{&L->wq, c->xn, c->q, qd}, {&L->wk, c->xn, c->k, kvd}, {&L->wv, c->xn, c->v, kvd}},
            .n_jobs = 3, .n_tok = n,
        };
        run_matmul(m, &qkv);

        for (int j = 0; j < n; j++) {
            float *q = c->q + (size_t)j * qd, *k = c->k + (size_t)j * kvd, *v = c->v + (size_t)j * kvd;
            const float *cs = c->rope_cos + (size_t)j * half, *sn = c->rope_sin + (size_t)j * half;
            for (int i = 0; i < qd; i++)
                q[i] += L->bq[i];
            for (int i = 0; i < kvd; i++) {
                k[i] += L->bk[i];
                v[i] += L->bv[i];
            }
            for (int h = 0; h < nh; h++)
                rope_apply(q + (size_t)h * D, cs, sn, half);
            model_ctx *o = owners ? owners[j] : c; /* whose cache */
            const int p = owners ? o->pos : pos0 + j;
            for (int g = 0; g < nkv; g++) {
                rope_apply(k + (size_t)g * D, cs, sn, half);
                const size_t head_kv = (size_t)l * nkv + (size_t)g;
                uint16_t *kb = o->k_cache + (head_kv * (size_t)o->n_ctx_pad + (size_t)(p / ATT_KB) * ATT_KB) * D +
                               (size_t)(p % ATT_KB);
                uint16_t *vb = o->v_cache + (head_kv * (size_t)o->n_ctx + (size_t)p) * D;
                for (int d = 0; d < D; d++) {
                    kb[(size_t)d * ATT_KB] = f32_to_f16(k[(size_t)g * D + d]);
                    vb[d] = f32_to_f16(v[(size_t)g * D + d]);
                }
            }
        }

        attention(c, owners, l, n, pos0);

        matmul1(m, &L->wo, c->att, n, c->proj, H);
        for (size_t i = 0; i < (size_t)n * H; i++)
            c->x[i] += c->proj[i];

        for (int j = 0; j < n; j++)
            rmsnorm(c->xn + (size_t)j * H, c->x + (size_t)j * H, L->mlp_norm, H, cfg->rms_norm_eps);
        struct mm_task gu = {
            .jobs = {{&L->w_gate, c->xn, c->gate, I}, {&L->w_up, c->xn, c->up, I}},
            .n_jobs = 2, .n_tok = n, .swiglu = m->silu_mul,
        };
        run_matmul(m, &gu);
        matmul1(m, &L->w_down, c->gate, n, c->proj, H);
        for (size_t i = 0; i < (size_t)n * H; i++)
            c->x[i] += c->proj[i];
    }
    if (!owners)
        c->pos += n;
    else
        for (int j = 0; j < n; j++)
            owners[j]->pos++;
}

/* The head on each of the n final residuals in c->x, into logits (n rows of vocab_size). */
static void head_all(model_ctx *c, int n, float *logits)
{
    model *m = c->m;
    const int H = m->cfg.hidden_size;
    for (int j = 0; j < n; j++)
        rmsnorm(c->xn + (size_t)j * H, c->x + (size_t)j * H, m->final_norm, H, m->cfg.rms_norm_eps);
    matmul1(m, &m->head, c->xn, n, logits, m->cfg.vocab_size);
}

/* Whether n tokens may be appended to c: room in its cache, ids in the vocabulary. */
static int check_append(const model_ctx *c, const int32_t *tokens, int n, perr *err)
{
    const int V = c->m->cfg.vocab_size;
    if (n <= 0)
        return perr_set(err, "no tokens to evaluate");
    if (n > c->n_ctx - c->pos)
        return perr_set(err, "context overflow: %d tokens held, %d more requested, context size %d", c->pos, n,
                        c->n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return perr_set(err, "token id %d is outside the vocabulary (0..%d)", tokens[i], V - 1);
    return 0;
}

int model_ctx_eval(model_ctx *c, const int32_t *tokens, int n, float *logits_last, float *all_logits, perr *err)
{
    model *m = c->m;
    const model_config *cfg = &m->cfg;
    const int H = cfg->hidden_size, V = cfg->vocab_size;
    if (check_append(c, tokens, n, err) != 0)
        return -1;

    pthread_mutex_lock(&m->pool_lock);
    for (int done = 0; done < n;) {
        int cn = n - done < c->chunk ? n - done : c->chunk;
        forward(c, NULL, tokens + done, cn);
        if (all_logits) /* written straight into the caller's array */
            head_all(c, cn, all_logits + (size_t)done * V);
        done += cn;
        if (done == n && logits_last) {
            if (all_logits) {
                memcpy(logits_last, all_logits + (size_t)(n - 1) * V, (size_t)V * sizeof(float));
            } else {
                rmsnorm(c->last_norm, c->x + (size_t)(cn - 1) * H, m->final_norm, H, cfg->rms_norm_eps);
                matmul1(m, &m->head, c->last_norm, 1, logits_last, V);
            }
        }
    }
    pthread_mutex_unlock(&m->pool_lock);
    return 0;
}

int model_batch_decode(model_ctx *const *ctxs, const int32_t *tokens, int n, float *logits, perr *err)
{
    if (n <= 0)
        return perr_set(err, "no tokens to evaluate");
    model_ctx *c = ctxs[0];
    model *m = c->m;
    if (n > c->chunk)
        return perr_set(err, "a batch of %d contexts, at most %d", n, c->chunk);
    for (int j = 0; j < n; j++) {
        if (ctxs[j]->m != m)
            return perr_set(err, "the contexts of a batch belong to different models");
        for (int i = 0; i < j; i++)
            if (ctxs[i] == ctxs[j])
                return perr_set(err, "a context appears twice in one batch");
        if (check_append(ctxs[j], &tokens[j], 1, err) != 0)
            return -1;
    }
    pthread_mutex_lock(&m->pool_lock);
    forward(c, ctxs, tokens, n);
    head_all(c, n, logits);
    pthread_mutex_unlock(&m->pool_lock);
    return 0;
}
