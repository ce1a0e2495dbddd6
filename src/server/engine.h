/* The model behind the server: loaded once, shared by --parallel generation slots, each owning a
 * model context (KV cache) that is kept between requests so that a prompt extending the previous one
 * only evaluates its new tokens. Requests beyond the slots wait in a first-come queue. */
#ifndef PUNIE_SERVER_ENGINE_H
#define PUNIE_SERVER_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "model/sampler.h"
#include "tokenizer/tokenizer.h"
#include "util/err.h"

#define ENGINE_MAX_TOP_LOGPROBS 20

typedef struct engine_options {
    const char *model_dir;
    const char *model_name;
    int n_threads;  /* <= 0: all cores */
    int n_ctx;      /* per slot; <= 0: 4096, never more than the model's max_position_embeddings */
    int n_parallel; /* generation slots; <= 0: 1 */
    int draft_max;  /* prompt lookup draft tokens per step (model/lookup.h); 0: off */
} engine_options;

typedef struct engine engine;

int engine_load(const engine_options *o, engine **out, perr *err);
void engine_free(engine *e);
const char *engine_model_name(const engine *e);
int engine_n_ctx(const engine *e);
int engine_n_parallel(const engine *e);
const tokenizer *engine_tokenizer(const engine *e);
/* Sampling defaults: neutral values overridden by the model's generation_config.json. */
void engine_default_sampler(const engine *e, sampler_params *p);

/* Stops new work: queued requests give up, running generations end at their next token. */
void engine_shutdown(engine *e);
bool engine_shutting_down(const engine *e);

/* Prompt token ids (malloc'd) for a chat (rendered with the model's template) or a raw text. */
int engine_chat_prompt(engine *e, const cJSON *messages, const cJSON *tools, int32_t **ids, size_t *n, perr *err);
int engine_text_prompt(engine *e, const char *text, int32_t **ids, size_t *n, perr *err);

typedef struct gen_params {
    sampler_params sampling;
    int max_tokens;   /* generated tokens at most (the context may end it sooner) */
    bool logprobs;    /* compute each token's log-probability */
    int top_logprobs; /* alternatives to report per token, 0..ENGINE_MAX_TOP_LOGPROBS */
} gen_params;

typedef struct gen_token {
    int32_t id;
    float logprob;
    int n_top;
    int32_t top_ids[ENGINE_MAX_TOP_LOGPROBS];
    float top_logprobs[ENGINE_MAX_TOP_LOGPROBS];
} gen_token;

enum gen_finish { GEN_STOP, GEN_LENGTH, GEN_CANCELLED };

typedef struct generation generation;

/* Waits in the queue for a free slot. should_abort (may be NULL) is polled while waiting (and later
 * between prefill chunks, so it must stay valid until generation_end): when it
 * returns true, or on shutdown, this returns NULL with a message in err. */
generation *engine_begin(engine *e, const int32_t *prompt, size_t n, const gen_params *p,
                         bool (*should_abort)(void *), void *ud, perr *err);
/* Evaluates what is pending and samples the next token. A long prompt is evaluated in chunks, one
 * per call: 2 means a chunk was done and nothing sampled yet (see generation_prefill_progress).
 * Returns 1 with *tok set, 0 when the generation ended (*finish says why), -1 on error. */
int generation_next(generation *g, gen_token *tok, enum gen_finish *finish, perr *err);
void generation_prefill_progress(const generation *g, int *done, int *total);
int generation_prompt_tokens(const generation *g);
int generation_cached_tokens(const generation *g); /* prompt tokens reused from the slot's cache */
/* The most generations (this one included) that one of its decode steps ran together with. */
int generation_max_batch(const generation *g);
/* Decode steps of other generations that ran while its prompt was read (between its chunks). */
int generation_steps_beside(const generation *g);
/* Prompt lookup: draft tokens evaluated and accepted so far. */
void generation_lookup_stats(const generation *g, int *drafted, int *accepted);
/* Releases the slot (its cache stays for the next request). */
void generation_end(generation *g);

#endif
