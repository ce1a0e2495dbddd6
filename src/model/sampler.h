/* Turning logits into the next token (spec/engine.md §8, mlx-lm order). */
#ifndef PUNIE_MODEL_SAMPLER_H
#define PUNIE_MODEL_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

typedef struct sampler_params {
    float temperature;        /* 0 = greedy */
    float top_p;              /* 1 = off */
    int top_k;                /* 0 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off (0 is treated as off too) */
    int repetition_context;   /* last N tokens the penalty looks at (20) */
    float presence_penalty, frequency_penalty; /* 0 = off */
    uint64_t seed;
    bool has_seed;
} sampler_params;

/* Greedy and neutral: temperature 0, no filters, no penalties. */
void sampler_params_init(sampler_params *p);

/* Overrides p with the sampling fields of model_dir/generation_config.json when present. */
void sampler_params_from_generation_config(sampler_params *p, const char *model_dir);

typedef struct sampler sampler;

/* n_valid: ids >= n_valid (padding rows beyond the tokenizer) are never sampled. */
sampler *sampler_new(const sampler_params *p, int n_valid);
void sampler_free(sampler *s);

/* Picks the next id from logits[0..vocab) (modified in place). history: tokens so far, for penalties.
 * If logprob is not NULL it receives log P(chosen) under the unpenalised distribution. */
int sampler_sample(sampler *s, float *logits, int vocab, const int32_t *history, int n_history, float *logprob);

/* The ids the filters (top_p, min_p, top_k, after the penalties) keep from logits[0..vocab)
 * (modified in place), best first: their count (at least 1; -1 when out of memory) and, in *ids, the
 * sampler's own array, valid until its next call. */
int sampler_kept(sampler *s, float *logits, int vocab, const int32_t *history, int n_history, const int **ids);

#endif
