/* The sampler against mlx-lm semantics (spec/engine.md §8). */
#include <math.h>
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

    return test_result("ok");
}
