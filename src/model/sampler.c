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

static int argmax(const float *l, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best])
            best = i;
    return best;
}

static double logsumexp(const float *l, int n, float mx)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += exp((double)l[i] - mx);
    return mx + log(sum);
}

int sampler_sample(sampler *s, float *logits, int vocab, const int32_t *history, int n_history, float *logprob)
{
    const sampler_params *p = &s->p;
    int n = vocab < s->n_valid || s->n_valid <= 0 ? vocab : s->n_valid; /* ids >= n are never sampled */

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
    float mx = logits[argmax(logits, n)];
    bool filters = (p->top_p > 0 && p->top_p < 1) || p->min_p > 0 || (p->top_k > 0 && p->top_k < n);
    if (p->temperature <= 0) {
        chosen = argmax(logits, n);
    } else if (!filters) {
        /* categorical over softmax(logits / T) */
        double total = 0.0;
        for (int i = 0; i < n; i++)
            total += exp(((double)logits[i] - mx) / p->temperature);
        double r = rng_uniform(s->rng) * total, acc = 0.0;
        chosen = n - 1;
        for (int i = 0; i < n; i++) {
            acc += exp(((double)logits[i] - mx) / p->temperature);
            if (acc > r) {
                chosen = i;
                break;
            }
        }
    } else {
        /* Every filter keeps a prefix of the ids sorted by logit, so only plausible candidates are
         * sorted: those within 30 nats (times T) of the best carry all the probability that matters. */
        double cut = mx - 30.0 * (p->temperature > 1 ? p->temperature : 1.0);
        if (s->cap < n) {
            int *nc = realloc(s->cand, (size_t)n * sizeof *nc);
            if (!nc)
                return argmax(logits, n);
            s->cand = nc;
            s->cap = n;
        }
        int nc = 0;
        for (int i = 0; i < n; i++)
            if (logits[i] >= cut)
                s->cand[nc++] = i;
        tl_sort_logits = logits;
        qsort(s->cand, (size_t)nc, sizeof *s->cand, cand_cmp);
        double lse = logsumexp(logits, n, mx);
        int keep = nc;
        if (p->top_p > 0 && p->top_p < 1) {
            /* keep an id while the mass of the ids above it is below top_p */
            double above = 0.0;
            int k = 0;
            while (k < nc && above < p->top_p) {
                above += exp((double)logits[s->cand[k]] - lse);
                k++;
            }
            if (k < keep)
                keep = k;
        }
        if (p->min_p > 0) {
            double floor_lp = (double)mx + log((double)p->min_p);
            int k = 0;
            while (k < nc && logits[s->cand[k]] >= floor_lp)
                k++;
            if (k < 1)
                k = 1;
            if (k < keep)
                keep = k;
        }
        if (p->top_k > 0 && p->top_k < keep)
            keep = p->top_k;
        if (keep < 1)
            keep = 1;
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
