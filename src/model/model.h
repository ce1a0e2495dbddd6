/* A loaded Qwen2 model (MLX affine-quantized safetensors) and evaluation contexts over it. */
#ifndef PUNIE_MODEL_MODEL_H
#define PUNIE_MODEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef struct model_config {
    int hidden_size, intermediate_size, n_layers, n_heads, n_kv_heads, head_dim;
    int vocab_size;            /* rows of the embedding / width of the logits */
    int max_position_embeddings;
    float rope_theta, rms_norm_eps;
    bool tied_embeddings;      /* no lm_head: the embedding is the output matrix */
} model_config;

typedef struct model model;

/* Maps dir/config.json and its safetensors files; validates every tensor against the config.
 * n_threads <= 0 means all cores. Errors name the file and tensor. */
int model_load(const char *dir, int n_threads, model **out, perr *err);
void model_free(model *m);
/* Starts reading the weight files into memory in the background (see st_warm), so that a first
 * request does not wait for the disk; model_free stops it. done (may be NULL) is called on that thread
 * once every page was read, with the bytes and the seconds it took. 0, or -1 if no thread could be
 * started (the model works the same, reading weights as they are first used). */
typedef void (*model_warm_done_fn)(void *ud, size_t bytes, double seconds);
int model_warm_start(model *m, model_warm_done_fn done, void *ud);
const model_config *model_get_config(const model *m);
size_t model_weight_bytes(const model *m); /* bytes of weights read per generated token */

/* One sequence: its KV cache and scratch buffers. Contexts of one model may run concurrently
 * (each uses the model's thread pool in turn). */
typedef struct model_ctx model_ctx;

/* n_ctx <= 0 or beyond max_position_embeddings: max_position_embeddings. The KV cache holds IEEE
 * half floats, allocated up front (layers * 2 * kv_heads * head_dim * 2 bytes per token). */
int model_ctx_new(model *m, int n_ctx, model_ctx **out, perr *err);
void model_ctx_free(model_ctx *c);
int model_ctx_n_ctx(const model_ctx *c);
int model_ctx_pos(const model_ctx *c);           /* tokens held in the KV cache */
void model_ctx_truncate(model_ctx *c, int n);    /* keep the first n (prompt-cache reuse) */

/* Runs n tokens at positions pos..pos+n-1 (prefill as a batch; n == 1 is decode) and appends them to
 * the cache. logits_last (vocab_size floats) receives the last token's logits when not NULL;
 * all_logits (n * vocab_size) every token's when not NULL. Fails if the context would overflow. */
int model_ctx_eval(model_ctx *c, const int32_t *tokens, int n, float *logits_last, float *all_logits, perr *err);

/* One decode step of n distinct contexts of one model together: tokens[j] is appended to ctxs[j] and
 * logits + j * vocab_size receives its next-token logits. Each weight is read once for all n (decode
 * is bound by reading them), so n concurrent generations take about the time of one. n is at most
 * the first context's batch size (256, or its n_ctx if smaller). */
int model_batch_decode(model_ctx *const *ctxs, const int32_t *tokens, int n, float *logits, perr *err);

#endif
