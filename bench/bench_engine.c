/* bench_engine: engine speed on one model folder, against this machine's memory read bandwidth
 * measured in the same run (the decode roofline).
 *
 *   bench_engine --model DIR [--threads N] [--prompt-tokens 512] [--gen-tokens 32] [--bandwidth-mib 1024]
 *
 * Reports load time (warm page cache), prefill tokens/s, time to first token, decode tokens/s,
 * peak RSS and the ratios: decode / (bandwidth / weight bytes per token), prefill / decode,
 * peak RSS / (weights + KV cache). The bandwidth is read 20 times (before and after the model
 * runs); besides the mean decode rate against the best pass, the ratios pair the median token with
 * the median pass and the fastest token with the best pass, since on a shared host both drift; and
 * a paired ratio times short decode steps each right after its own bandwidth passes. Then: decode
 * steps of 2 and 4 contexts together against one (serve --parallel), and the time sampling takes per
 * token with Qwen's generation_config against greedy. With AVX-512 VNNI kernels, prefill is also set
 * against its compute bound: the int8 dot-product peak measured in the same run over the multiply-adds
 * a prompt token needs, and that bound against the decode roofline (the most prefill / decode this
 * machine allows). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "int8_peak.h"
#include "kernels/qmatmul.h"
#include "model/model.h"
#include "model/sampler.h"
#include "util/clock.h"
#include "util/threadpool.h"

struct bw_task {
    const uint64_t *buf;
    size_t n, per_item;
    int prefetch; /* read 8 KB ahead in software as the matmul kernels do */
    uint64_t sink[256];
};

/* vectorised at O3 so one core can approach its share of the memory bandwidth; the buffer is
 * handed out in items like the model's matmuls, so a thread delayed by other processes does not
 * make the measurement (or the decode it is compared with) wait for it */
__attribute__((optimize("O3"))) static void bw_item(void *arg, int item, int t)
{
    struct bw_task *b = arg;
    size_t lo = b->per_item * (size_t)item, hi = lo + b->per_item < b->n ? lo + b->per_item : b->n;
    uint64_t acc = 0;
    if (b->prefetch) {
        size_t i = lo;
        for (; i + 8 <= hi; i += 8) {
            __builtin_prefetch(b->buf + i + 1024);
            for (int j = 0; j < 8; j++)
                acc += b->buf[i + j];
        }
        for (; i < hi; i++)
            acc += b->buf[i];
    } else {
        for (size_t i = lo; i < hi; i++)
            acc += b->buf[i];
    }
    b->sink[t & 255] += acc;
}

/* Read bandwidth in GB/s, measured by a child process that holds the buffer (so that it does not
 * count in this process's peak RSS) and runs one pass over it, with the same thread count, each time
 * it is asked; passes alternate with and without software prefetch (so that the roofline is not
 * below what the kernels reach). */
struct bw_child {
    pid_t pid;
    int req, resp; /* pipes: a request byte (prefetch 0/1) out, a double back */
};

static void bw_child_main(int req, int resp, int threads, size_t mib)
{
    size_t n = mib * 1024 * 1024 / 8;
    uint64_t *buf = malloc(n * 8);
    threadpool *p = buf ? threadpool_new(threads) : NULL;
    if (buf)
        for (size_t i = 0; i < n; i++)
            buf[i] = i;
    struct bw_task task = {.buf = buf, .n = n, .per_item = 512 * 1024 / 8};
    const int items = (int)((n + task.per_item - 1) / task.per_item);
    unsigned char cmd;
    while (read(req, &cmd, 1) == 1) {
        double rate = 0;
        if (p) {
            task.prefetch = cmd & 1;
            double t0 = monotonic_s();
            threadpool_for(p, bw_item, &task, items);
            rate = (double)n * 8 / (monotonic_s() - t0) / 1e9;
        }
        if (write(resp, &rate, sizeof rate) != (ssize_t)sizeof rate)
            break;
    }
    _exit(0);
}

static int bw_start(struct bw_child *b, int threads, size_t mib)
{
    int req[2], resp[2];
    b->pid = -1;
    if (pipe(req) != 0)
        return -1;
    if (pipe(resp) != 0) {
        close(req[0]);
        close(req[1]);
        return -1;
    }
    b->pid = fork();
    if (b->pid == 0) {
        close(req[1]);
        close(resp[0]);
        bw_child_main(req[0], resp[1], threads, mib);
    }
    close(req[0]);
    close(resp[1]);
    b->req = req[1];
    b->resp = resp[0];
    return b->pid > 0 ? 0 : -1;
}

/* One pass; 0 when the child cannot run it. */
static double bw_pass(struct bw_child *b, int prefetch)
{
    unsigned char cmd = (unsigned char)prefetch;
    double rate = 0;
    if (b->pid <= 0 || write(b->req, &cmd, 1) != 1 || read(b->resp, &rate, sizeof rate) != (ssize_t)sizeof rate)
        return 0;
    return rate;
}

static void bw_stop(struct bw_child *b)
{
    if (b->pid <= 0)
        return;
    close(b->req);
    close(b->resp);
    waitpid(b->pid, NULL, 0);
}

#define BW_PASSES 10
static void measure_bandwidth(struct bw_child *b, double out[BW_PASSES])
{
    for (int i = 0; i < BW_PASSES; i++)
        out[i] = bw_pass(b, i & 1);
}

static size_t file_bytes_in(const char *dir)
{
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "du -cb '%s'/*.safetensors 2>/dev/null | tail -1", dir);
    FILE *f = popen(cmd, "r");
    unsigned long long n = 0;
    if (f) {
        if (fscanf(f, "%llu", &n) != 1)
            n = 0;
        pclose(f);
    }
    return (size_t)n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int argmax(const float *l, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[b])
            b = i;
    return b;
}

#define PAIR_TOKENS 2

static double median_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

#define BATCH_ROUNDS 8

typedef struct { double macs; } peak_arg;

static void peak_part(void *arg, int part, int n_parts)
{
    const double macs = int8_peak_loop();
    if (part == 0)
        ((peak_arg *)arg)->macs = macs * n_parts;
}

/* int8 multiply-adds per second on `threads` threads (best of 3); 0 where not measurable. */
static double int8_peak(int threads)
{
    if (!int8_peak_supported())
        return 0;
    threadpool *p = threadpool_new(threads);
    if (!p)
        return 0;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        peak_arg a = {0};
        const double t0 = monotonic_s();
        threadpool_run(p, peak_part, &a);
        const double r = a.macs / (monotonic_s() - t0);
        best = r > best ? r : best;
    }
    threadpool_free(p);
    return best;
}

/* Decode steps of b contexts together (model_batch_decode, what `serve --parallel` does for
 * concurrent requests) against steps of one context, alternated; returns the median time of a
 * batched step divided by that of a single step, and the batched tokens/s in *tps. */
static double batched_decode(model *m, int b, double *tps)
{
    enum { PROMPT = 16 };
    model_ctx *ctxs[8] = {0};
    int32_t toks[8], prompt[PROMPT];
    perr err = {0};
    const int V = model_get_config(m)->vocab_size;
    float *logits = malloc((size_t)b * V * sizeof *logits);
    double one[BATCH_ROUNDS], many[BATCH_ROUNDS];
    int rounds = 0, ok = logits != NULL;
    for (int i = 0; i < PROMPT; i++)
        prompt[i] = (i * 7919 + 11) % 151000;
    for (int j = 0; j < b && ok; j++)
        ok = model_ctx_new(m, PROMPT + 2 * BATCH_ROUNDS + 2, &ctxs[j], &err) == 0 &&
             model_ctx_eval(ctxs[j], prompt, PROMPT, NULL, NULL, &err) == 0;
    for (; ok && rounds < BATCH_ROUNDS; rounds++) {
        for (int j = 0; j < b; j++)
            toks[j] = (rounds * 31 + j * 97 + 5) % 151000;
        double t0 = monotonic_s();
        ok = model_ctx_eval(ctxs[0], toks, 1, logits, NULL, &err) == 0;
        one[rounds] = monotonic_s() - t0;
        t0 = monotonic_s();
        ok = ok && model_batch_decode(ctxs, toks, b, logits, &err) == 0;
        many[rounds] = monotonic_s() - t0;
    }
    if (!ok)
        fprintf(stderr, "batched decode: %s\n", logits ? err.msg : "out of memory");
    for (int j = 0; j < b; j++)
        model_ctx_free(ctxs[j]);
    free(logits);
    if (!ok)
        return 0;
    const double t_many = median_of(many, BATCH_ROUNDS);
    *tps = b / t_many;
    return t_many / median_of(one, BATCH_ROUNDS);
}

/* A decode step of 1 + k tokens of one context (prompt lookup's step: the next token and k draft
 * tokens, model/lookup.h) against a step of one token, alternated and rolled back each time; returns
 * the median time ratio: a step that keeps a drafts gives 1 + a tokens for that price. */
static double draft_step_ratio(model_ctx *c, int k, float *logits)
{
    int32_t toks[17];
    perr err;
    double one[BATCH_ROUNDS], many[BATCH_ROUNDS];
    const int pos = model_ctx_pos(c);
    for (int i = 0; i <= k; i++)
        toks[i] = (i * 4099 + 17) % 151000;
    for (int r = 0; r < BATCH_ROUNDS; r++) {
        double t0 = monotonic_s();
        if (model_ctx_eval(c, toks, 1, logits, NULL, &err) != 0)
            return 0;
        one[r] = monotonic_s() - t0;
        model_ctx_truncate(c, pos);
        t0 = monotonic_s();
        if (model_ctx_eval(c, toks, k + 1, NULL, logits, &err) != 0)
            return 0;
        many[r] = monotonic_s() - t0;
        model_ctx_truncate(c, pos);
    }
    return median_of(many, BATCH_ROUNDS) / median_of(one, BATCH_ROUNDS);
}

/* Median time of sampler_sample on the given logits with parameters p (what every generated token
 * costs besides the forward pass). */
static double sample_time(const sampler_params *p, const float *logits, int vocab, const int32_t *hist, int n_hist)
{
    enum { REPS = 21 };
    float *buf = malloc((size_t)vocab * sizeof *buf);
    sampler *sm = sampler_new(p, 151665 < vocab ? 151665 : vocab);
    double t[REPS];
    for (int r = 0; r < REPS; r++) {
        memcpy(buf, logits, (size_t)vocab * sizeof *buf);
        const double t0 = monotonic_s();
        sampler_sample(sm, buf, vocab, hist, n_hist, NULL);
        t[r] = monotonic_s() - t0;
    }
    sampler_free(sm);
    free(buf);
    return median_of(t, REPS);
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int threads = 0, n_prompt = 512, n_gen = 32;
    size_t bw_mib = 1024;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "missing value for %s\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--model") == 0)
            dir = v;
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(v);
        else if (strcmp(argv[i], "--prompt-tokens") == 0)
            n_prompt = atoi(v);
        else if (strcmp(argv[i], "--gen-tokens") == 0)
            n_gen = atoi(v);
        else if (strcmp(argv[i], "--bandwidth-mib") == 0)
            bw_mib = (size_t)atol(v);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
        i++;
    }
    if (!dir || n_prompt < 1 || n_gen < 1) {
        fprintf(stderr, "usage: bench_engine --model DIR [--threads N] [--prompt-tokens N] [--gen-tokens N]\n");
        return 2;
    }
    if (threads <= 0)
        threads = cpu_count();

    struct bw_child bwc;
    if (bw_start(&bwc, threads, bw_mib) != 0)
        fprintf(stderr, "warning: cannot start the bandwidth measurement\n");
    double bw_passes[2 * BW_PASSES];
    measure_bandwidth(&bwc, bw_passes);

    perr err;
    model *m;
    /* first load warms the page cache (and the files were just written); the second one is timed */
    if (model_load(dir, threads, &m, &err) != 0) {
        fprintf(stderr, "model_load: %s\n", err.msg);
        return 1;
    }
    model_free(m);
    double t0 = monotonic_s();
    if (model_load(dir, threads, &m, &err) != 0) {
        fprintf(stderr, "model_load: %s\n", err.msg);
        return 1;
    }
    double t_load = monotonic_s() - t0;
    const model_config *c = model_get_config(m);
    const int n_pairs = n_gen < 8 ? 8 : n_gen; /* paired steps of PAIR_TOKENS tokens (below) */
    int n_ctx = n_prompt + n_gen + n_pairs * PAIR_TOKENS + 1 + 8; /* + room for the lookup steps */
    model_ctx *ctx;
    if (model_ctx_new(m, n_ctx, &ctx, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    int32_t *toks = malloc((size_t)n_ctx * sizeof *toks);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    uint64_t s = 12345;
    for (int i = 0; i < n_ctx; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((s >> 33) % 151000);
    }

    /* time to first token: the whole prompt as a batch, head, argmax (first touch of the weights
     * happened in a short warm-up so page faults are not counted) */
    if (model_ctx_eval(ctx, toks, 1, logits, NULL, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    model_ctx_truncate(ctx, 0);
    t0 = monotonic_s();
    if (model_ctx_eval(ctx, toks, n_prompt, logits, NULL, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    int next = argmax(logits, c->vocab_size);
    double t_prefill = monotonic_s() - t0;

    double *tok_s = malloc((size_t)n_gen * sizeof *tok_s);
    t0 = monotonic_s();
    for (int i = 0; i < n_gen; i++) {
        double ti = monotonic_s();
        if (model_ctx_eval(ctx, &next, 1, logits, NULL, &err) != 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        next = argmax(logits, c->vocab_size);
        tok_s[i] = monotonic_s() - ti;
    }
    double t_decode = monotonic_s() - t0;
    qsort(tok_s, (size_t)n_gen, sizeof *tok_s, cmp_double);
    double median_tps = 1.0 / tok_s[n_gen / 2], best_tps = 1.0 / tok_s[0];
    free(tok_s);
    /* measured again after the model ran: other processes on the cores (and, on a shared host, its
     * memory traffic) make single figures noisy, so the ratios compare like with like: the best
     * bandwidth pass with the fastest token, the median pass with the median token */
    measure_bandwidth(&bwc, bw_passes + BW_PASSES);
    qsort(bw_passes, 2 * BW_PASSES, sizeof *bw_passes, cmp_double);
    double bw = bw_passes[2 * BW_PASSES - 1], bw_median = bw_passes[BW_PASSES];

    /* Paired: a bandwidth pass of each kind right before every PAIR_TOKENS decode tokens, each step
     * against its own roofline. The host's bandwidth drifts by 2x within minutes; pairs taken a
     * tenth of a second apart see the same conditions. */
    const double wbytes = (double)model_weight_bytes(m);
    double *pair_ratio = malloc((size_t)n_pairs * sizeof *pair_ratio);
    int pairs = 0;
    for (int i = 0; i < n_pairs && pair_ratio; i++) {
        const double a = bw_pass(&bwc, 1), b = bw_pass(&bwc, 0), pass = a > b ? a : b;
        double ti = monotonic_s();
        for (int k = 0; k < PAIR_TOKENS; k++) {
            if (model_ctx_eval(ctx, &next, 1, logits, NULL, &err) != 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
            next = argmax(logits, c->vocab_size);
        }
        const double tps = PAIR_TOKENS / (monotonic_s() - ti);
        if (pass > 0)
            pair_ratio[pairs++] = tps / (pass * 1e9 / wbytes);
    }
    bw_stop(&bwc);
    double paired = 0, paired_lo = 0, paired_hi = 0;
    if (pairs > 0) {
        qsort(pair_ratio, (size_t)pairs, sizeof *pair_ratio, cmp_double);
        paired = pair_ratio[pairs / 2];
        paired_lo = pair_ratio[pairs / 4];
        paired_hi = pair_ratio[(3 * pairs) / 4];
    }
    free(pair_ratio);

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss = (double)ru.ru_maxrss * 1024.0;
    double files = (double)file_bytes_in(dir);
    double kv = (double)c->n_layers * 2.0 * c->n_kv_heads * c->head_dim * 2.0 * n_ctx; /* half floats */
    double decode_tps = n_gen / t_decode, prefill_tps = n_prompt / t_prefill;
    double roofline = bw * 1e9 / wbytes;

    printf("model            %s\n", dir);
    printf("dims             hidden %d, intermediate %d, layers %d, heads %d/%d, vocab %d, %s head\n",
           c->hidden_size, c->intermediate_size, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size,
           c->tied_embeddings ? "tied" : "untied");
    printf("threads          %d (kernels: %s)\n", threads, kernels_isa());
    printf("bandwidth        %.2f GB/s best, %.2f GB/s median (read, %zu MiB buffer, %d passes before and "
           "after the model ran)\n", bw, bw_median, bw_mib, BW_PASSES);
    printf("weights/token    %.3f GB (files %.3f GB)\n", wbytes / 1e9, files / 1e9);
    printf("load             %.3f s (warm page cache)\n", t_load);
    printf("prefill          %.2f tokens/s (%d tokens, %.3f s)\n", prefill_tps, n_prompt, t_prefill);
    printf("time to 1st tok  %.3f s\n", t_prefill);
    printf("decode           %.3f tokens/s (%d tokens after a %d-token prompt)\n", decode_tps, n_gen, n_prompt);
    printf("decode median    %.3f tokens/s (median token time)\n", median_tps);
    printf("decode best      %.3f tokens/s (fastest token)\n", best_tps);
    printf("roofline         %.3f tokens/s (bandwidth / weight bytes per token)\n", roofline);
    printf("peak RSS         %.3f GB (weights %.3f GB + KV %.3f GB = %.3f GB)\n", rss / 1e9, files / 1e9, kv / 1e9,
           (files + kv) / 1e9);
    printf("RATIO decode/roofline   %.2f\n", decode_tps / roofline);
    printf("RATIO decode median/roofline %.2f\n", median_tps / roofline);
    printf("RATIO decode median/median-bandwidth roofline %.2f\n", median_tps / (bw_median * 1e9 / wbytes));
    printf("RATIO decode best/roofline %.2f\n", best_tps / roofline);
    printf("RATIO decode/roofline paired %.2f (median of %d steps of %d tokens, each against bandwidth "
           "passes right before it; quartiles %.2f-%.2f)\n", paired, pairs, PAIR_TOKENS, paired_lo, paired_hi);
    printf("RATIO prefill/decode    %.2f\n", prefill_tps / decode_tps);
    printf("RATIO rss/(weights+kv)  %.3f\n", rss / (files + kv));
    if (strcmp(kernels_isa(), "avx512vnni") == 0) {
        /* a prompt token: both int8 activation levels against every weight of every layer (the head
         * runs for the last token only; attention's float work is left out) */
        const double H = c->hidden_size, I = c->intermediate_size, qd = (double)c->n_heads * c->head_dim,
                     kvd = (double)c->n_kv_heads * c->head_dim;
        const double macs = 2.0 * c->n_layers * (H * qd + 2.0 * H * kvd + qd * H + 3.0 * H * I);
        const double peak = int8_peak(threads), bound = peak / macs;
        if (peak > 0) {
            printf("prefill bound    %.2f tokens/s (int8 peak %.1f G multiply-adds/s on %d threads, %.2f G per "
                   "token)\n", bound, peak / 1e9, threads, macs / 1e9);
            printf("RATIO prefill/int8 bound %.2f\n", prefill_tps / bound);
            printf("RATIO int8 bound/roofline %.2f (the most prefill/decode this machine allows)\n", bound / roofline);
        }
    }

    /* after the peak RSS was read: these add contexts of their own */
    for (int b = 2; b <= 4; b *= 2) {
        double tps = 0;
        const double r = batched_decode(m, b, &tps);
        printf("batched decode   %d contexts: %.2f tokens/s in all; RATIO step time / single step %.2f\n", b, tps, r);
    }
    float *rows = malloc((size_t)8 * c->vocab_size * sizeof *rows);
    if (rows && model_ctx_pos(ctx) + 8 <= model_ctx_n_ctx(ctx))
        for (int k = 1; k <= 7; k = 2 * k + 1)
            printf("lookup step      1 + %d draft tokens: RATIO step time / single step %.2f\n", k,
                   draft_step_ratio(ctx, k, rows));
    free(rows);
    sampler_params qwen; /* Qwen2.5's generation_config.json */
    sampler_params_init(&qwen);
    qwen.temperature = 0.7f;
    qwen.top_p = 0.8f;
    qwen.top_k = 20;
    qwen.repetition_penalty = 1.05f;
    qwen.has_seed = true;
    sampler_params greedy;
    sampler_params_init(&greedy);
    const double t_qwen = sample_time(&qwen, logits, c->vocab_size, toks, n_prompt);
    const double t_greedy = sample_time(&greedy, logits, c->vocab_size, toks, n_prompt);
    printf("sampling         %.3f ms per token (temperature 0.7, top_p 0.8, top_k 20, penalty 1.05), greedy %.3f ms; "
           "RATIO sampling/decode token %.3f\n", t_qwen * 1e3, t_greedy * 1e3, t_qwen * median_tps);
    free(toks);
    free(logits);
    model_ctx_free(ctx);
    model_free(m);
    return 0;
}
