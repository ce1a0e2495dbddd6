/* The sampler against mlx-lm semantics (spec/engine.md §8). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/sampler.h"
#include "util/fs.h"

#include "../lib/test_util.h"


static int sample_once(const sampler_params *p, const float *logits, int n, int n_valid, const int32_t *hist,
                       int n_hist)
{
    float buf[64];
    memcpy(buf, logits, (size_t)n * sizeof *buf);
    sampler *s = sampler_new(p, n_valid);
    int id = sampler_sample(s, buf, n, hist, n_hist, NULL);
    sampler_free(s);
    return id;
}

/* Frequencies of each id over many draws. */
static void histogram(const sampler_params *p, const float *logits, int n, double *freq, int draws)
{
    sampler *s = sampler_new(p, n);
    float buf[64];
    memset(freq, 0, (size_t)n * sizeof *freq);
    for (int i = 0; i < draws; i++) {
        memcpy(buf, logits, (size_t)n * sizeof *buf);
        freq[sampler_sample(s, buf, n, NULL, 0, NULL)] += 1.0 / draws;
    }
    sampler_free(s);
}

static int cmp_desc(const void *a, const void *b, void *l_)
{
    const float *l = l_;
    const int x = *(const int *)a, y = *(const int *)b;
    if (l[x] != l[y])
        return l[x] > l[y] ? -1 : 1;
    return x - y;
}

/* The ids mlx-lm's filters keep, by a full sort: the prefix of ids by descending logit (ties by id)
 * ended by top_p (mass of the ids above below top_p), min_p and top_k, whichever is shortest. */
static int kept_by_full_sort(const sampler_params *p, const float *l, int n, int *order)
{
    for (int i = 0; i < n; i++)
        order[i] = i;
    qsort_r(order, (size_t)n, sizeof *order, cmp_desc, (void *)l);
    double mx = l[order[0]], sum = 0;
    for (int i = 0; i < n; i++)
        sum += exp(l[i] - mx);
    const double lse = mx + log(sum);
    int keep = n;
    if (p->top_p > 0 && p->top_p < 1) {
        double above = 0;
        int k = 0;
        while (k < n && above < p->top_p)
            above += exp(l[order[k++]] - lse);
        keep = k < keep ? k : keep;
    }
    if (p->min_p > 0) {
        int k = 0;
        while (k < n && l[order[k]] >= mx + log((double)p->min_p))
            k++;
        k = k < 1 ? 1 : k;
        keep = k < keep ? k : keep;
    }
    if (p->top_k > 0 && p->top_k < keep)
        keep = p->top_k;
    return keep;
}

/* A vocabulary of Qwen's size, where the sampler sorts only as much of it as the filters keep: for
 * logits flat (~10^5 ids within 30 of the best), peaked and with ties, under top_p, min_p, top_k and
 * their combinations, the kept ids are exactly a full sort's prefix, in its order; and where they are
 * few, draws at a temperature high enough to weigh them about evenly hit every one and nothing else. */
static void check_large_vocab(void)
{
    enum { N = 151665, DRAWS = 600, DRAWN_MAX = 20 };
    float *l = malloc(N * sizeof *l), *buf = malloc(N * sizeof *buf);
    int *order = malloc(N * sizeof *order), *hits = calloc(N, sizeof *hits);
    uint64_t x = 88172645463325252ull;
    int checked = 0, drawn_cases = 0;
    static const struct {
        float top_p, min_p;
        int top_k;
    } cases[] = {{0.8f, 0, 20}, {0.8f, 0, 0}, {0.3f, 0, 0}, {1, 0.9f, 0}, {1, 0, 100}, {0.5f, 0.5f, 0},
                 {1, 0, 1},     {0.2f, 0, 150}, {1, 0.97f, 40}, {0.999f, 0, 0}, {0.95f, 0.2f, 3000}};
    for (int shape = 0; shape < 3; shape++) {
        for (int i = 0; i < N; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            const double u = (double)(x >> 11) / 9007199254740992.0;
            l[i] = shape == 0 ? (float)(u * 10) : shape == 1 ? (float)(pow(u, 400) * 40) : (float)(int)(u * 8);
        }
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            sampler_params p;
            sampler_params_init(&p);
            p.temperature = 100; /* weights within e^-0.3 of each other */
            p.top_p = cases[c].top_p;
            p.min_p = cases[c].min_p;
            p.top_k = cases[c].top_k;
            p.has_seed = true;
            p.seed = 11;
            const int keep = kept_by_full_sort(&p, l, N, order);
            sampler *s = sampler_new(&p, N);
            const int *ids;
            memcpy(buf, l, N * sizeof *buf);
            const int got = sampler_kept(s, buf, N, NULL, 0, &ids);
            /* the same ids in the same order; where the counts differ, only by ids whose mass is at
             * the level of float rounding (the sampler sums e^x in float, as mlx-lm does; the
             * reference in double), which ties of ~10^5 tiny logits can put at top_p's boundary */
            const int lo = got < keep ? got : keep, hi = got < keep ? keep : got;
            int same = got >= 1;
            for (int k = 0; same && k < lo; k++)
                same = ids[k] == order[k];
            double mx = l[order[0]], z = 0, between = 0;
            for (int i = 0; i < N; i++)
                z += exp(l[i] - mx);
            for (int k = lo; k < hi; k++)
                between += exp(l[order[k]] - mx) / z;
            CHECK(same && between < 1e-6,
                  "shape %d, top_p %g min_p %g top_k %d: kept %d ids, a full sort keeps %d (mass between %g)", shape,
                  cases[c].top_p, cases[c].min_p, cases[c].top_k, got, keep, between);
            checked++;
            if (keep <= DRAWN_MAX) {
                memset(hits, 0, N * sizeof *hits);
                for (int d = 0; d < DRAWS; d++) {
                    memcpy(buf, l, N * sizeof *buf);
                    hits[sampler_sample(s, buf, N, NULL, 0, NULL)]++;
                }
                int inside = 0, drawn = 0;
                for (int k = 0; k < keep; k++)
                    inside += hits[order[k]] > 0;
                for (int i = 0; i < N; i++)
                    drawn += hits[i] > 0;
                CHECK(inside == keep && drawn == keep, "shape %d case %zu: %d ids kept, %d of them drawn, %d in all",
                      shape, c, keep, inside, drawn);
                drawn_cases++;
            }
            sampler_free(s);
        }
    }
    printf("large vocabulary: %d cases against a full sort, %d of them drawn\n", checked, drawn_cases);
    free(l);
    free(buf);
    free(order);
    free(hits);
}

int main(void)
{
    sampler_params p;
    sampler_params_init(&p);
    CHECK(p.temperature == 0 && p.top_p == 1 && p.top_k == 0 && p.min_p == 0 && p.repetition_penalty == 1 &&
              p.repetition_context == 20,
          "neutral defaults");

    /* greedy, and padding ids are never chosen */
    float l1[5] = {0.1f, 3.0f, 0.2f, 1.0f, 9.0f};
    CHECK(sample_once(&p, l1, 5, 5, NULL, 0) == 4, "argmax");
    CHECK(sample_once(&p, l1, 5, 4, NULL, 0) == 1, "ids >= n_valid are masked");
    p.temperature = 5.0f;
    for (int i = 0; i < 200; i++)
        CHECK(sample_once(&p, l1, 5, 4, NULL, 0) != 4, "masked id sampled");
    p.temperature = 0;

    /* repetition penalty: positive logits divided, negative multiplied, last 20 tokens only */
    float l2[3] = {2.0f, 1.5f, -1.0f};
    int32_t h[21] = {0};
    p.repetition_penalty = 2.0f;
    CHECK(sample_once(&p, l2, 3, 3, h, 1) == 1, "penalised 2.0 -> 1.0 < 1.5");
    for (int i = 1; i < 21; i++)
        h[i] = 2;
    CHECK(sample_once(&p, l2, 3, 3, h, 21) == 0, "token 0 is outside the 20-token window");
    float l3[2] = {-0.5f, -0.8f};
    int32_t h3[1] = {0};
    CHECK(sample_once(&p, l3, 2, 2, h3, 1) == 1, "negative logit multiplied: -1.0 < -0.8");
    p.repetition_penalty = 1.0f;

    /* presence (once) and frequency (per occurrence) penalties */
    float l4[2] = {1.0f, 0.5f};
    int32_t h4[3] = {0, 0, 0};
    p.presence_penalty = 0.6f;
    CHECK(sample_once(&p, l4, 2, 2, h4, 3) == 1, "presence");
    p.presence_penalty = 0.3f;
    CHECK(sample_once(&p, l4, 2, 2, h4, 3) == 0, "presence applies once");
    p.presence_penalty = 0;
    p.frequency_penalty = 0.2f;
    CHECK(sample_once(&p, l4, 2, 2, h4, 3) == 1, "frequency: 1.0 - 3 * 0.2 < 0.5");
    p.frequency_penalty = 0;

    /* categorical sampling: p(1) = 3/4 at T = 1, 9/10 at T = 0.5 */
    float l5[2] = {0.0f, logf(3.0f)};
    double f[8];
    p.temperature = 1.0f;
    p.has_seed = true;
    p.seed = 7;
    histogram(&p, l5, 2, f, 20000);
    CHECK(fabs(f[1] - 0.75) < 0.02, "T=1: p(1) = %f", f[1]);
    p.temperature = 0.5f;
    histogram(&p, l5, 2, f, 20000);
    CHECK(fabs(f[1] - 0.9) < 0.02, "T=0.5: p(1) = %f", f[1]);

    /* top_p before temperature: probs .5 .3 .2, top_p .6 keeps {0, 1} in ratio 5:3 */
    float l6[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    p.temperature = 1.0f;
    p.top_p = 0.6f;
    histogram(&p, l6, 3, f, 20000);
    CHECK(f[2] == 0 && fabs(f[0] - 0.625) < 0.02, "top_p: %f %f %f", f[0], f[1], f[2]);
    p.top_p = 0.4f;
    histogram(&p, l6, 3, f, 2000);
    CHECK(f[1] == 0 && f[2] == 0, "top_p 0.4 keeps only the best");
    p.top_p = 1.0f;

    /* top_k and min_p */
    p.top_k = 2;
    histogram(&p, l6, 3, f, 5000);
    CHECK(f[2] == 0 && f[0] > 0 && f[1] > 0, "top_k 2");
    p.top_k = 0;
    p.min_p = 0.5f; /* keeps ids with p >= 0.5 * 0.5 */
    histogram(&p, l6, 3, f, 5000);
    CHECK(f[2] == 0 && f[1] > 0, "min_p 0.5: %f %f %f", f[0], f[1], f[2]);
    p.min_p = 0;

    /* the same seed gives the same draws */
    float l7[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    int a[16], b[16];
    for (int r = 0; r < 2; r++) {
        sampler *s = sampler_new(&p, 8);
        for (int i = 0; i < 16; i++) {
            float buf[8];
            memcpy(buf, l7, sizeof buf);
            (r ? b : a)[i] = sampler_sample(s, buf, 8, NULL, 0, NULL);
        }
        sampler_free(s);
    }
    CHECK(memcmp(a, b, sizeof a) == 0, "seeded draws repeat");

    /* logprob of the chosen id under the unpenalised distribution */
    float lp, l8[2] = {0.0f, 0.0f};
    p.temperature = 0;
    sampler *s = sampler_new(&p, 2);
    sampler_sample(s, l8, 2, NULL, 0, &lp);
    CHECK(fabsf(lp - logf(0.5f)) < 1e-5f, "logprob %f", lp);
    sampler_free(s);

    /* generation_config.json supplies defaults */
    char dir[] = "/tmp/punie-sampler-XXXXXX";
    if (mkdtemp(dir)) {
        char path[256];
        snprintf(path, sizeof path, "%s/generation_config.json", dir);
        const char *js = "{\"do_sample\": true, \"repetition_penalty\": 1.05, \"temperature\": 0.7, \"top_k\": 20, "
                         "\"top_p\": 0.8}";
        FILE *fp = fopen(path, "w");
        fputs(js, fp);
        fclose(fp);
        sampler_params g;
        sampler_params_init(&g);
        sampler_params_from_generation_config(&g, dir);
        CHECK(fabsf(g.temperature - 0.7f) < 1e-6f && fabsf(g.top_p - 0.8f) < 1e-6f && g.top_k == 20 &&
                  fabsf(g.repetition_penalty - 1.05f) < 1e-6f,
              "generation_config");
        unlink(path);
        rmdir(dir);
    }

    check_large_vocab();
    return test_result("ok");
}
