/* Sampling with mlx-lm semantics (spec/engine.md §8): penalties on the raw logits over the last
 * repetition_context tokens, then log-softmax, top_p (before temperature), min_p, top_k, and a
 * categorical draw from logprobs / temperature. The padding ids >= n_valid are never chosen. */
#include "model/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "model/vec16.h"
#include "util/fs.h"

struct sampler {
    sampler_params p;
    int n_valid;
    uint64_t rng[4];
    int *cand;       /* candidate ids, sorted by logit */
    int cap;
    int32_t *seen;   /* unique ids in the penalty window */
    int *counts;
};

void sampler_params_init(sampler_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 0.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->repetition_context = 20;
}

void sampler_params_from_generation_config(sampler_params *p, const char *model_dir)
{
    char path[4096];
    char *text = NULL;
    size_t len = 0;
    if (path_join(path, sizeof path, model_dir, "generation_config.json", NULL) != 0 || !file_exists(path) ||
        read_file(path, 1 << 20, &text, &len, NULL) != 0)
        return;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return;
    }
    const cJSON *v;
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(root, "temperature")) && v->valuedouble >= 0)
        p->temperature = (float)v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(root, "top_p")) && v->valuedouble > 0 && v->valuedouble <= 1)
        p->top_p = (float)v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(root, "top_k")) && v->valuedouble >= 0 && v->valuedouble < 1e9)
        p->top_k = (int)v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(root, "min_p")) && v->valuedouble >= 0 && v->valuedouble <= 1)
        p->min_p = (float)v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(root, "repetition_penalty")) && v->valuedouble > 0)
        p->repetition_penalty = (float)v->valuedouble;
    if (cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(root, "do_sample")))
        p->temperature = 0.0f;
    cJSON_Delete(root);
}

/* xoshiro256** seeded through splitmix64 */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static double rng_uniform(uint64_t *s) { return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

sampler *sampler_new(const sampler_params *p, int n_valid)
{
    sampler *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->p = *p;
    if (s->p.repetition_context <= 0)
        s->p.repetition_context = 20;
    s->n_valid = n_valid;
    uint64_t seed = p->seed;
    if (!p->has_seed && getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
        seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)s;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix(&seed);
    return s;
}

void sampler_free(sampler *s)
{
    if (!s)
        return;
    free(s->cand);
    free(s->seen);
    free(s->counts);
    free(s);
}

/* room for n candidates (or n float weights) in s->cand */
static int sampler_reserve(sampler *s, int n)
{
    _Static_assert(sizeof(int) == sizeof(float), "candidates and weights share a buffer");
    if (s->cap >= n)
        return 0;
    int *c = realloc(s->cand, (size_t)n * sizeof *c);
    if (!c)
        return -1;
    s->cand = c;
    s->cap = n;
    return 0;
}

static void apply_penalties(sampler *s, float *logits, int vocab, const int32_t *history, int n_history)
{
    const sampler_params *p = &s->p;
    bool rep = p->repetition_penalty > 0 && p->repetition_penalty != 1.0f;
    if (!rep && p->presence_penalty == 0 && p->frequency_penalty == 0)
        return;
    int start = n_history > p->repetition_context ? n_history - p->repetition_context : 0;
    int w = n_history - start;
    if (w <= 0)
        return;
    int32_t *seen = realloc(s->seen, (size_t)w * sizeof *seen);
    int *counts = realloc(s->counts, (size_t)w * sizeof *counts);
    if (seen)
        s->seen = seen;
    if (counts)
        s->counts = counts;
    if (!seen || !counts)
        return;
    int n_seen = 0;
    for (int i = start; i < n_history; i++) {
        int32_t id = history[i];
        if (id < 0 || id >= vocab)
            continue;
        int k = 0;
        while (k < n_seen && seen[k] != id)
            k++;
        if (k == n_seen) {
            seen[n_seen] = id;
            counts[n_seen++] = 0;
        }
        counts[k]++;
    }
    for (int k = 0; k < n_seen; k++) {
        float *l = &logits[seen[k]];
        if (rep)
            *l = *l < 0 ? *l * p->repetition_penalty : *l / p->repetition_penalty;
        *l -= p->presence_penalty;
        *l -= p->frequency_penalty * (float)counts[k];
    }
}

/* qsort has no context argument */
static _Thread_local float *tl_sort_logits;

static int cand_cmp(const void *a, const void *b)
{
    float x = tl_sort_logits[*(const int *)a], y = tl_sort_logits[*(const int *)b];
    if (x != y)
        return x > y ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

/* a before b in the candidates' order: higher logit first, then lower id (a total order, so any
 * partial sort yields the same prefix as a full one) */
static inline bool cand_before(const float *l, int a, int b) { return l[a] > l[b] || (l[a] == l[b] && a < b); }

/* Moves the m first of c[0, n) in candidate order into c[0, m) (in no particular order among
 * themselves; the others go to c[m, n)): c[0, m) is kept as a heap whose root is the last of them,
 * and each later id that comes before the root replaces it. One comparison for most ids; O(n log m)
 * at worst. */
static void heap_sift(int *h, int m, int i, const float *l)
{
    for (;;) {
        int worst = i;
        const int a = 2 * i + 1, b = a + 1;
        if (a < m && cand_before(l, h[worst], h[a]))
            worst = a;
        if (b < m && cand_before(l, h[worst], h[b]))
            worst = b;
        if (worst == i)
            return;
        const int t = h[i];
        h[i] = h[worst];
        h[worst] = t;
        i = worst;
    }
}

static void cand_select(int *c, int n, int m, const float *l)
{
    if (m <= 0 || m >= n)
        return;
    for (int i = m / 2 - 1; i >= 0; i--)
        heap_sift(c, m, i, l);
    for (int i = m; i < n; i++)
        if (cand_before(l, c[i], c[0])) {
            const int t = c[0];
            c[0] = c[i];
            c[i] = t;
            heap_sift(c, m, 0, l);
        }
}

static int argmax(const float *l, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best])
            best = i;
    return best;
}

/* Sum over i < n of e^((l[i] - mx) * inv_t), l[i] <= mx, 16 at a time (the whole vocabulary each
 * token: in double-precision exp() this took milliseconds); each term also goes to w[i] when w is
 * not NULL. Partial sums go to double every 1024 ids. */
static double sum_exp(const float *l, int n, float mx, float inv_t, float *w)
{
    double total = 0.0;
    int i = 0;
    while (i + 16 <= n) {
        v16 acc = (v16){0};
        for (int end = i + 1024 < n ? i + 1024 : n; i + 16 <= end; i += 16) {
            const v16 e = v16_exp((v16_load(l + i) - mx) * inv_t);
            if (w)
                v16_store(w + i, e);
            acc += e;
        }
        for (int k = 0; k < 16; k++)
            total += acc[k];
    }
    for (; i < n; i++) {
        const float e = v16_exp((v16){0} + (l[i] - mx) * inv_t)[0];
        if (w)
            w[i] = e;
        total += e;
    }
    return total;
}

static double logsumexp(const float *l, int n, float mx) { return mx + log(sum_exp(l, n, mx, 1.0f, NULL)); }

/* The ids the filters keep, in order, into s->cand[0, keep); returns keep (at least 1), or -1 when
 * out of memory. Every filter keeps a prefix of the ids sorted by logit, so only plausible candidates
 * are sorted: those within 30 nats (times T) of the best carry all the probability that matters. Of
 * them only the first `sorted` are put in order: at most top_k, and fewer when top_p or min_p end the
 * kept prefix sooner; the count grows eightfold until one of them does (all of them once it passes a
 * sixteenth of the candidates). Sorting all ~10^5 candidates of a flat distribution took longer than
 * the forward pass, where top_k = 20 (Qwen's generation_config) needs 20. */
static int kept_prefix(sampler *s, const float *logits, int n, float mx)
{
    const sampler_params *p = &s->p;
    const double cut = mx - 30.0 * (p->temperature > 1 ? p->temperature : 1.0);
    if (sampler_reserve(s, n) != 0)
        return -1;
    int nc = 0;
    for (int i = 0; i < n; i++)
        if (logits[i] >= cut)
            s->cand[nc++] = i;
    if (nc == 0) /* no logit compares (all NaN): the first id, as argmax gives */
        s->cand[nc++] = argmax(logits, n);
    const double lse = logsumexp(logits, n, mx);
    const int limit = p->top_k > 0 && p->top_k < nc ? p->top_k : nc;
    const bool top_p = p->top_p > 0 && p->top_p < 1, min_p = p->min_p > 0;
    const double floor_lp = min_p ? (double)mx + log((double)p->min_p) : 0.0;
    double above = 0.0;      /* top_p: mass of the ids before kp */
    int kp = 0, km = 0;      /* how far top_p and min_p have looked */
    int keep = limit, sorted = 0;
    for (int want = limit < 64 ? limit : 64;; want = want * 8 < limit ? want * 8 : limit) {
        if (want > nc / 16)
            want = limit; /* most of them: one sort costs less than more rounds */
        cand_select(s->cand + sorted, nc - sorted, want - sorted, logits);
        tl_sort_logits = (float *)logits;
        qsort(s->cand + sorted, (size_t)(want - sorted), sizeof *s->cand, cand_cmp);
        sorted = want;
        bool ended = sorted == limit;
        if (top_p) {
            /* keep an id while the mass of the ids above it is below top_p */
            while (kp < sorted && above < p->top_p)
                above += exp((double)logits[s->cand[kp++]] - lse);
            if (above >= p->top_p || kp == nc) {
                ended = true;
                keep = kp < keep ? kp : keep;
            }
        }
        if (min_p) {
            while (km < sorted && logits[s->cand[km]] >= floor_lp)
                km++;
            if (km < sorted || km == nc) {
                ended = true;
                keep = (km < 1 ? 1 : km) < keep ? (km < 1 ? 1 : km) : keep;
            }
        }
        if (ended) {
            keep = sorted < keep ? sorted : keep;
            break;
        }
    }
    return keep < 1 ? 1 : keep;
}

/* ids >= n_valid are never sampled */
static int sampled_ids(const sampler *s, int vocab)
{
    return vocab < s->n_valid || s->n_valid <= 0 ? vocab : s->n_valid;
}

int sampler_kept(sampler *s, float *logits, int vocab, const int32_t *history, int n_history, const int **ids)
{
    const int n = sampled_ids(s, vocab);
    apply_penalties(s, logits, n, history, n_history);
    const int keep = kept_prefix(s, logits, n, logits[argmax(logits, n)]);
    *ids = s->cand;
    return keep;
}

int sampler_sample(sampler *s, float *logits, int vocab, const int32_t *history, int n_history, float *logprob)
{
    const sampler_params *p = &s->p;
    const int n = sampled_ids(s, vocab);

    double raw_lse = 0.0;
    if (logprob) {
        float mx = logits[argmax(logits, n)];
        raw_lse = logsumexp(logits, n, mx);
    }
    float *raw = NULL;
    if (logprob) {
        raw = malloc((size_t)n * sizeof *raw);
        if (raw)
            memcpy(raw, logits, (size_t)n * sizeof *raw);
    }

    apply_penalties(s, logits, n, history, n_history);
    int chosen;
    const int best = argmax(logits, n);
    const float mx = logits[best];
    bool filters = (p->top_p > 0 && p->top_p < 1) || p->min_p > 0 || (p->top_k > 0 && p->top_k < n);
    int keep;
    if (p->temperature <= 0) {
        chosen = best;
    } else if (!filters) {
        /* categorical over softmax(logits / T); the weights go to the candidates' buffer */
        float *w = sampler_reserve(s, n) == 0 ? (float *)s->cand : NULL;
        double total = sum_exp(logits, n, mx, 1.0f / p->temperature, w);
        double r = rng_uniform(s->rng) * total, acc = 0.0;
        chosen = n - 1;
        for (int i = 0; i < n; i++) {
            acc += w ? w[i] : exp(((double)logits[i] - mx) / p->temperature);
            if (acc > r) {
                chosen = i;
                break;
            }
        }
    } else if ((keep = kept_prefix(s, logits, n, mx)) < 0) {
        chosen = best;
    } else {
        double total = 0.0;
        for (int k = 0; k < keep; k++)
            total += exp(((double)logits[s->cand[k]] - mx) / p->temperature);
        double r = rng_uniform(s->rng) * total, acc = 0.0;
        chosen = s->cand[keep - 1];
        for (int k = 0; k < keep; k++) {
            acc += exp(((double)logits[s->cand[k]] - mx) / p->temperature);
            if (acc > r) {
                chosen = s->cand[k];
                break;
            }
        }
    }
    if (logprob)
        *logprob = raw ? (float)((double)raw[chosen] - raw_lse) : 0.0f;
    free(raw);
    return chosen;
}
