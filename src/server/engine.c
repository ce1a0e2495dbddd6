#include "server/engine.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/lookup.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "util/clock.h"
#include "util/fs.h"
#include "util/log.h"

#define MAX_EOS 16
#define PREFILL_CHUNK 512
/* While other generations decode, a prompt is read in smaller chunks and waits (up to
 * PREFILL_YIELD_NS) for a decode step between two of them: the model's lock alone let a long prompt
 * hold the others' replies for its whole length (13 s for 1500 tokens of 3B on 2 cores). */
#define PREFILL_CHUNK_SHARED 128
#define PREFILL_YIELD_NS (500 * 1000 * 1000)

typedef struct slot {
    int index;
    model_ctx *ctx;
    int32_t *tokens; /* what the KV cache holds, n_tokens of n_ctx */
    int n_tokens;
    float *logits;
    bool busy;
    uint64_t last_used;
} slot;

typedef struct waiter {
    struct waiter *next;
} waiter;

struct engine {
    char name[512];
    char dir[4096];
    model *model;
    tokenizer *tok;
    chat_template *tmpl;
    cJSON *template_vars;
    sampler_params defaults;
    int vocab, n_valid, n_ctx;
    int32_t eos[MAX_EOS];
    int n_eos;
    int draft_max; /* prompt lookup draft tokens per step; 0: off */
    slot *slots;
    int n_slots;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    waiter *queue_head, *queue_tail;
    uint64_t clock;
    atomic_bool shutdown;
    /* Decode batching: generations that want their next token gather in `batch`; the first to find
     * no step running leads one for all gathered (model_batch_decode reads the weights once for
     * them all), after waiting up to BATCH_WAIT_NS for the others past their prompt to join. */
    pthread_mutex_t batch_lock;
    pthread_cond_t batch_cond;
    struct generation **batch;
    int n_batch, n_decoding;
    bool batch_running;
    uint64_t decode_steps; /* decode steps run so far: a prompt being read waits for the next */
    float *batch_logits; /* [n_slots][vocab] */
};

#define BATCH_WAIT_NS (2 * 1000 * 1000)

struct generation {
    engine *e;
    slot *s;
    int32_t *prompt;
    int n_prompt;
    int cached;
    bool prefilled;
    int prefill_pos;  /* next prompt position to evaluate; -1 before the cache was matched */
    int32_t pending; /* sampled, not yet evaluated; -1 when none */
    int n_generated;
    gen_params params;
    sampler *sampler;
    float *scratch; /* logits copy for log-probabilities */
    bool (*should_abort)(void *); /* polled between prefill chunks: a long prompt is not evaluated for nobody */
    void *abort_ud;
    bool decoding;   /* counted in e->n_decoding */
    uint64_t steps_seen;  /* e->decode_steps after its last prompt chunk */
    uint64_t steps_first; /* e->decode_steps when its prompt began to be read */
    int steps_beside;     /* other generations' decode steps while its prompt was read */
    bool step_done;  /* its batch step ran (under batch_lock) */
    int max_batch;   /* the most generations one of its steps ran with */
    /* prompt lookup (model/lookup.h): a drafted step's logits, one row per token, in rows */
    lookup_step ls;
    float *rows;
    int step_rc;
    perr step_err;
};

static void add_eos(engine *e, int32_t id)
{
    if (id < 0 || id >= e->vocab || e->n_eos >= MAX_EOS)
        return;
    for (int i = 0; i < e->n_eos; i++)
        if (e->eos[i] == id)
            return;
    e->eos[e->n_eos++] = id;
}

/* eos_token_id of generation_config.json (a number or a list), when the file is there. */
static void read_generation_eos(engine *e)
{
    char path[4200];
    char *text = NULL;
    size_t len = 0;
    if (path_join(path, sizeof path, e->dir, "generation_config.json", NULL) != 0 || !file_exists(path) ||
        read_file(path, 1 << 20, &text, &len, NULL) != 0)
        return;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (cJSON_IsNumber(ids)) {
        add_eos(e, (int32_t)ids->valuedouble);
    } else if (cJSON_IsArray(ids)) {
        const cJSON *v;
        cJSON_ArrayForEach(v, ids) if (cJSON_IsNumber(v)) add_eos(e, (int32_t)v->valuedouble);
    }
    cJSON_Delete(root);
}

static void log_weights_read(void *ud, size_t bytes, double seconds)
{
    (void)ud;
    log_info("weights read into memory: %.2f GB in %.2f s", (double)bytes / 1e9, seconds);
}

int engine_load(const engine_options *o, engine **out, perr *err)
{
    *out = NULL;
    engine *e = calloc(1, sizeof *e);
    if (!e)
        return perr_set(err, "out of memory");
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->cond, NULL);
    pthread_mutex_init(&e->batch_lock, NULL);
    pthread_cond_init(&e->batch_cond, NULL);
    snprintf(e->name, sizeof e->name, "%s", o->model_name ? o->model_name : o->model_dir);
    snprintf(e->dir, sizeof e->dir, "%s", o->model_dir);
    if (model_load(o->model_dir, o->n_threads, &e->model, err) != 0)
        goto fail;
    /* without it, weights are read as the first request uses them */
    (void)model_warm_start(e->model, log_weights_read, NULL);
    if (tokenizer_load(o->model_dir, &e->tok, err) != 0)
        goto fail;
    const char *src = tokenizer_chat_template(e->tok);
    if (!src) {
        perr_set(err, "the model has no chat template (tokenizer_config.json lacks 'chat_template')");
        goto fail;
    }
    if (chat_template_compile(src, &e->tmpl, err) != 0) {
        perr_wrap(err, "unsupported chat template");
        goto fail;
    }
    e->template_vars = cJSON_CreateObject();
    if (tokenizer_bos_token(e->tok))
        cJSON_AddStringToObject(e->template_vars, "bos_token", tokenizer_bos_token(e->tok));
    if (tokenizer_eos_token(e->tok))
        cJSON_AddStringToObject(e->template_vars, "eos_token", tokenizer_eos_token(e->tok));

    const model_config *cfg = model_get_config(e->model);
    e->vocab = cfg->vocab_size;
    e->n_valid = tokenizer_size(e->tok);
    if (e->n_valid <= 0 || e->n_valid > e->vocab)
        e->n_valid = e->vocab;
    e->draft_max = o->draft_max < 0 ? 0 : o->draft_max > LOOKUP_DRAFT_MAX ? LOOKUP_DRAFT_MAX : o->draft_max;
    e->n_ctx = o->n_ctx > 0 ? o->n_ctx : 4096;
    if (cfg->max_position_embeddings > 0 && e->n_ctx > cfg->max_position_embeddings)
        e->n_ctx = cfg->max_position_embeddings;

    /* Stop tokens: the chat end markers, the tokenizer's eos and generation_config's list. */
    add_eos(e, tokenizer_token_id(e->tok, "<|im_end|>"));
    add_eos(e, tokenizer_token_id(e->tok, "<|endoftext|>"));
    if (tokenizer_eos_token(e->tok))
        add_eos(e, tokenizer_token_id(e->tok, tokenizer_eos_token(e->tok)));
    read_generation_eos(e);

    sampler_params_init(&e->defaults);
    sampler_params_from_generation_config(&e->defaults, o->model_dir);

    e->n_slots = o->n_parallel > 0 ? o->n_parallel : 1;
    e->slots = calloc((size_t)e->n_slots, sizeof *e->slots);
    if (!e->slots) {
        perr_set(err, "out of memory");
        goto fail;
    }
    e->batch = calloc((size_t)e->n_slots, sizeof *e->batch);
    e->batch_logits = e->n_slots > 1 ? malloc((size_t)e->n_slots * e->vocab * sizeof *e->batch_logits) : NULL;
    if (!e->batch || (e->n_slots > 1 && !e->batch_logits)) {
        perr_set(err, "out of memory");
        goto fail;
    }
    for (int i = 0; i < e->n_slots; i++) {
        slot *s = &e->slots[i];
        s->index = i;
        if (model_ctx_new(e->model, e->n_ctx, &s->ctx, err) != 0)
            goto fail;
        s->tokens = malloc((size_t)e->n_ctx * sizeof *s->tokens);
        s->logits = malloc((size_t)e->vocab * sizeof *s->logits);
        if (!s->tokens || !s->logits) {
            perr_set(err, "out of memory");
            goto fail;
        }
    }
    *out = e;
    return 0;
fail:
    engine_free(e);
    return -1;
}

void engine_free(engine *e)
{
    if (!e)
        return;
    if (e->slots)
        for (int i = 0; i < e->n_slots; i++) {
            model_ctx_free(e->slots[i].ctx);
            free(e->slots[i].tokens);
            free(e->slots[i].logits);
        }
    free(e->slots);
    free(e->batch);
    free(e->batch_logits);
    cJSON_Delete(e->template_vars);
    if (e->tmpl)
        chat_template_free(e->tmpl);
    if (e->tok)
        tokenizer_free(e->tok);
    if (e->model)
        model_free(e->model);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->cond);
    pthread_mutex_destroy(&e->batch_lock);
    pthread_cond_destroy(&e->batch_cond);
    free(e);
}

const char *engine_model_name(const engine *e) { return e->name; }
int engine_n_ctx(const engine *e) { return e->n_ctx; }
int engine_n_parallel(const engine *e) { return e->n_slots; }
const tokenizer *engine_tokenizer(const engine *e) { return e->tok; }
void engine_default_sampler(const engine *e, sampler_params *p) { *p = e->defaults; }

void engine_shutdown(engine *e)
{
    atomic_store(&e->shutdown, true);
    pthread_mutex_lock(&e->lock);
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
}

bool engine_shutting_down(const engine *e) { return atomic_load(&((engine *)e)->shutdown); }

int engine_text_prompt(engine *e, const char *text, int32_t **ids, size_t *n, perr *err)
{
    return tokenizer_encode(e->tok, text, strlen(text), ids, n, err);
}

int engine_chat_prompt(engine *e, const cJSON *messages, const cJSON *tools, int32_t **ids, size_t *n, perr *err)
{
    char *text = NULL;
    size_t len = 0;
    if (chat_template_render(e->tmpl, messages, tools, true, e->template_vars, &text, &len, err) != 0)
        return perr_wrap(err, "cannot render the chat template");
    int rc = tokenizer_encode(e->tok, text, len, ids, n, err);
    free(text);
    return rc;
}

static int common_prefix(const int32_t *a, int na, const int32_t *b, int nb)
{
    int n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

/* The free slot whose cache shares the longest prefix with the prompt; the least recently used
 * one among equals, so that other conversations' caches survive. Caller holds the lock. */
static slot *pick_slot(engine *e, const int32_t *prompt, int n)
{
    slot *best = NULL;
    int best_len = -1;
    for (int i = 0; i < e->n_slots; i++) {
        slot *s = &e->slots[i];
        if (s->busy)
            continue;
        int len = common_prefix(s->tokens, s->n_tokens, prompt, n);
        if (len > best_len || (len == best_len && s->last_used < best->last_used)) {
            best = s;
            best_len = len;
        }
    }
    return best;
}

static bool has_free_slot(const engine *e)
{
    for (int i = 0; i < e->n_slots; i++)
        if (!e->slots[i].busy)
            return true;
    return false;
}

generation *engine_begin(engine *e, const int32_t *prompt, size_t n, const gen_params *p,
                         bool (*should_abort)(void *), void *ud, perr *err)
{
    if (n == 0 || n > (size_t)e->n_ctx) {
        perr_set(err, "the prompt has %zu tokens, the context holds %d", n, e->n_ctx);
        return NULL;
    }
    generation *g = calloc(1, sizeof *g);
    if (!g) {
        perr_set(err, "out of memory");
        return NULL;
    }
    g->e = e;
    g->params = *p;
    g->should_abort = should_abort;
    g->abort_ud = ud;
    if (g->params.top_logprobs > ENGINE_MAX_TOP_LOGPROBS)
        g->params.top_logprobs = ENGINE_MAX_TOP_LOGPROBS;
    g->pending = -1;
    g->prefill_pos = -1;
    g->n_prompt = (int)n;
    g->prompt = malloc(n * sizeof *prompt);
    g->sampler = sampler_new(&p->sampling, e->n_valid);
    g->scratch = malloc((size_t)e->vocab * sizeof *g->scratch);
    lookup_step_init(&g->ls, e->draft_max);
    g->rows = e->draft_max > 0 ? malloc((size_t)(e->draft_max + 1) * e->vocab * sizeof *g->rows) : NULL;
    if (!g->prompt || !g->sampler || !g->scratch || (e->draft_max > 0 && !g->rows)) {
        perr_set(err, "out of memory");
        goto fail;
    }
    memcpy(g->prompt, prompt, n * sizeof *prompt);

    /* First come, first served: wait until we head the queue and a slot is free. */
    waiter me = {NULL};
    pthread_mutex_lock(&e->lock);
    if (e->queue_tail)
        e->queue_tail->next = &me;
    else
        e->queue_head = &me;
    e->queue_tail = &me;
    bool gave_up = false;
    while (!(e->queue_head == &me && has_free_slot(e))) {
        if (atomic_load(&e->shutdown) || (should_abort && should_abort(ud))) {
            gave_up = true;
            break;
        }
        const struct timespec until = deadline_after(100 * 1000 * 1000);
        pthread_cond_timedwait(&e->cond, &e->lock, &until);
    }
    /* Leave the queue. */
    waiter **pp = &e->queue_head;
    waiter *prev = NULL;
    while (*pp && *pp != &me) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp)
        *pp = me.next;
    if (e->queue_tail == &me)
        e->queue_tail = prev;
    if (!gave_up) {
        g->s = pick_slot(e, prompt, (int)n);
        g->s->busy = true;
        g->s->last_used = ++e->clock;
    }
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
    if (gave_up) {
        perr_set(err, atomic_load(&e->shutdown) ? "the server is shutting down" : "the client went away");
        goto fail;
    }
    return g;
fail:
    free(g->prompt);
    if (g->sampler)
        sampler_free(g->sampler);
    free(g->scratch);
    free(g->rows);
    free(g);
    return NULL;
}

int generation_prompt_tokens(const generation *g) { return g->n_prompt; }
void generation_lookup_stats(const generation *g, int *drafted, int *accepted)
{
    *drafted = g->ls.drafted;
    *accepted = g->ls.accepted;
}
int generation_max_batch(const generation *g) { return g->max_batch; }
int generation_steps_beside(const generation *g) { return g->steps_beside; }
int generation_cached_tokens(const generation *g) { return g->cached; }

/* Counts g among the generations whose next step is a decode (or no longer): a batch leader waits
 * for those. */
static void set_decoding(generation *g, bool on)
{
    engine *e = g->e;
    if (g->decoding == on)
        return;
    pthread_mutex_lock(&e->batch_lock);
    g->decoding = on;
    e->n_decoding += on ? 1 : -1;
    pthread_cond_broadcast(&e->batch_cond);
    pthread_mutex_unlock(&e->batch_lock);
}

void generation_end(generation *g)
{
    if (!g)
        return;
    engine *e = g->e;
    set_decoding(g, false);
    pthread_mutex_lock(&e->lock);
    g->s->busy = false;
    g->s->last_used = ++e->clock;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
    free(g->prompt);
    sampler_free(g->sampler);
    free(g->scratch);
    free(g->rows);
    free(g);
}

/* Evaluates tokens and appends them to the slot's record of its cache; the last token's logits go to
 * the slot when want_logits, every token's to all_logits when not NULL. */
/* Records what evaluating toks (rc: the evaluation's result) did to the slot's cache. */
static int record_eval(slot *s, int rc, const int32_t *toks, int n)
{
    if (rc != 0) {
        /* The cache may now hold part of the batch: forget it all rather than guess. */
        model_ctx_truncate(s->ctx, 0);
        s->n_tokens = 0;
        return -1;
    }
    memcpy(s->tokens + s->n_tokens, toks, (size_t)n * sizeof *toks);
    s->n_tokens += n;
    return 0;
}

static int eval(generation *g, const int32_t *toks, int n, bool want_logits, float *all_logits, perr *err)
{
    slot *s = g->s;
    return record_eval(s, model_ctx_eval(s->ctx, toks, n, want_logits ? s->logits : NULL, all_logits, err), toks, n);
}

/* Evaluates the next chunk of the prompt (after matching the slot's cache, the first time).
 * Returns 0 (g->prefilled tells whether the prompt is done), 1 when cancelled, -1 on error. */
static int prefill_chunk(generation *g, perr *err)
{
    slot *s = g->s;
    if (g->prefill_pos < 0) {
        int keep = common_prefix(s->tokens, s->n_tokens, g->prompt, g->n_prompt);
        if (keep >= g->n_prompt)
            keep = g->n_prompt - 1; /* the last prompt token is evaluated again for its logits */
        model_ctx_truncate(s->ctx, keep);
        s->n_tokens = keep;
        g->cached = keep;
        g->prefill_pos = keep;
        pthread_mutex_lock(&g->e->batch_lock);
        g->steps_first = g->e->decode_steps;
        pthread_mutex_unlock(&g->e->batch_lock);
    } else if (g->should_abort && g->should_abort(g->abort_ud)) {
        return 1;
    }
    engine *e = g->e;
    pthread_mutex_lock(&e->batch_lock);
    const bool shared = e->n_decoding > 0;
    if (shared && g->prefill_pos > g->cached) { /* not the first chunk: let the others step first */
        const struct timespec until = deadline_after(PREFILL_YIELD_NS);
        while (e->decode_steps == g->steps_seen && e->n_decoding > 0 &&
               pthread_cond_timedwait(&e->batch_cond, &e->batch_lock, &until) == 0) {
        }
    }
    pthread_mutex_unlock(&e->batch_lock);
    const int chunk = shared ? PREFILL_CHUNK_SHARED : PREFILL_CHUNK;
    int pos = g->prefill_pos;
    int n = g->n_prompt - pos < chunk ? g->n_prompt - pos : chunk;
    if (eval(g, g->prompt + pos, n, pos + n == g->n_prompt, NULL, err) != 0)
        return -1;
    pthread_mutex_lock(&e->batch_lock);
    g->steps_seen = e->decode_steps;
    g->steps_beside = (int)(e->decode_steps - g->steps_first);
    pthread_mutex_unlock(&e->batch_lock);
    g->prefill_pos = pos + n;
    g->prefilled = g->prefill_pos == g->n_prompt;
    if (g->prefilled)
        set_decoding(g, true);
    return 0;
}

/* Runs one decode step for the members of a batch (their pending tokens): together when several,
 * through eval() when alone (which keeps single-stream decode exactly as it was). */
static void run_step(engine *e, generation **members, int n)
{
    for (int j = 0; j < n; j++)
        members[j]->max_batch = n > members[j]->max_batch ? n : members[j]->max_batch;
    if (n == 1) {
        generation *g = members[0];
        g->step_rc = eval(g, &g->pending, 1, true, NULL, &g->step_err);
        return;
    }
    model_ctx *ctxs[64];
    int32_t toks[64];
    for (int j = 0; j < n; j++) {
        ctxs[j] = members[j]->s->ctx;
        toks[j] = members[j]->pending;
    }
    perr err = {0};
    const int rc = model_batch_decode(ctxs, toks, n, e->batch_logits, &err);
    for (int j = 0; j < n; j++) {
        generation *g = members[j];
        slot *s = g->s;
        g->step_rc = record_eval(s, rc, &g->pending, 1);
        if (rc != 0)
            g->step_err = err;
        else
            memcpy(s->logits, e->batch_logits + (size_t)j * e->vocab, (size_t)e->vocab * sizeof *s->logits);
    }
}

static int decode_step(generation *g, perr *err);

/* Evaluates g's pending token: with a draft from prompt lookup when g decodes alone and one is
 * found (logits of every token into g->rows), else through decode_step. */
static int step_pending(generation *g, perr *err)
{
    engine *e = g->e;
    slot *s = g->s;
    pthread_mutex_lock(&e->batch_lock);
    const bool alone = e->n_decoding <= 1;
    pthread_mutex_unlock(&e->batch_lock);
    s->tokens[s->n_tokens] = g->pending; /* the text so far ends with it */
    const int k = lookup_step_plan(&g->ls, g->pending, s->n_tokens, s->tokens, s->n_tokens + 1,
                                   alone ? e->n_ctx - s->n_tokens - 1 : 0,
                                   g->params.max_tokens - g->n_generated - 1);
    const double t0 = monotonic_s();
    if (k == 0) {
        if (decode_step(g, err) != 0)
            return -1;
        g->pending = -1;
        if (alone) /* a step of its own: what drafted steps are weighed against */
            lookup_step_ran(&g->ls, monotonic_s() - t0);
        return 0;
    }
    if (eval(g, g->ls.tokens, k + 1, false, g->rows, err) != 0) {
        (void)lookup_step_cut(&g->ls); /* no rows to sample from; eval() forgot the cache */
        return -1;
    }
    lookup_step_ran(&g->ls, monotonic_s() - t0);
    pthread_mutex_lock(&e->batch_lock);
    e->decode_steps++;
    pthread_cond_broadcast(&e->batch_cond);
    pthread_mutex_unlock(&e->batch_lock);
    g->pending = -1;
    return 0;
}

/* Evaluates g's pending token, batched with the other generations that decode at the same time. */
static int decode_step(generation *g, perr *err)
{
    engine *e = g->e;
    const int max_members = e->n_ctx < 64 ? e->n_ctx : 64; /* model_batch_decode's limit */
    pthread_mutex_lock(&e->batch_lock);
    g->step_done = false;
    e->batch[e->n_batch++] = g;
    pthread_cond_broadcast(&e->batch_cond);
    while (!g->step_done) {
        if (e->batch_running) {
            pthread_cond_wait(&e->batch_cond, &e->batch_lock);
            continue;
        }
        /* lead a step: first give the others that decode a moment to join */
        e->batch_running = true;
        const struct timespec until = deadline_after(BATCH_WAIT_NS);
        while (e->n_batch < e->n_decoding && e->n_batch < max_members &&
               pthread_cond_timedwait(&e->batch_cond, &e->batch_lock, &until) == 0) {
        }
        generation *members[64];
        const int n = e->n_batch < max_members ? e->n_batch : max_members;
        memcpy(members, e->batch, (size_t)n * sizeof *members);
        memmove(e->batch, e->batch + n, (size_t)(e->n_batch - n) * sizeof *e->batch);
        e->n_batch -= n;
        pthread_mutex_unlock(&e->batch_lock);
        run_step(e, members, n);
        pthread_mutex_lock(&e->batch_lock);
        for (int j = 0; j < n; j++)
            members[j]->step_done = true;
        e->batch_running = false;
        e->decode_steps++;
        pthread_cond_broadcast(&e->batch_cond);
    }
    pthread_mutex_unlock(&e->batch_lock);
    if (g->step_rc != 0)
        *err = g->step_err;
    return g->step_rc;
}

void generation_prefill_progress(const generation *g, int *done, int *total)
{
    *done = g->prefill_pos < 0 ? 0 : g->prefill_pos;
    *total = g->n_prompt;
}

static bool is_eos(const engine *e, int32_t id)
{
    for (int i = 0; i < e->n_eos; i++)
        if (e->eos[i] == id)
            return true;
    return false;
}

/* Log-softmax of the raw logits (before penalties and filters): the chosen token's log-probability
 * and the k most likely alternatives, as OpenAI reports them. Returns the log-sum-exp. */
static float log_softmax_top(const generation *g, const float *logits, gen_token *tok)
{
    int nv = g->e->n_valid;
    float mx = -INFINITY;
    for (int i = 0; i < nv; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = 0;
    for (int i = 0; i < nv; i++)
        sum += exp((double)logits[i] - mx);
    float lse = mx + (float)log(sum);
    int k = g->params.top_logprobs;
    tok->n_top = 0;
    for (int i = 0; i < nv && k > 0; i++) {
        float v = logits[i];
        if (tok->n_top == k && v <= logits[tok->top_ids[k - 1]])
            continue;
        int j = tok->n_top < k ? tok->n_top++ : k - 1;
        while (j > 0 && logits[tok->top_ids[j - 1]] < v) {
            tok->top_ids[j] = tok->top_ids[j - 1];
            j--;
        }
        tok->top_ids[j] = i;
    }
    for (int i = 0; i < tok->n_top; i++)
        tok->top_logprobs[i] = logits[tok->top_ids[i]] - lse;
    return lse;
}

int generation_next(generation *g, gen_token *tok, enum gen_finish *finish, perr *err)
{
    engine *e = g->e;
    slot *s = g->s;
    memset(tok, 0, sizeof *tok);
    if (atomic_load(&e->shutdown)) {
        *finish = GEN_CANCELLED;
        return 0;
    }
    if (!g->prefilled) {
        int rc = prefill_chunk(g, err);
        if (rc < 0)
            return -1;
        if (rc > 0) {
            *finish = GEN_CANCELLED;
            return 0;
        }
        if (!g->prefilled)
            return 2;
    } else {
        if (g->n_generated >= g->params.max_tokens || (g->pending >= 0 && s->n_tokens >= e->n_ctx)) {
            *finish = GEN_LENGTH;
            return 0;
        }
        if (g->pending >= 0 && step_pending(g, err) != 0)
            return -1;
    }
    if (g->n_generated >= g->params.max_tokens) {
        *finish = GEN_LENGTH;
        return 0;
    }
    /* this token's logits, and the tokens before it (a drafted step's cache holds the draft too) */
    const lookup_step *ls = &g->ls;
    float *logits = ls->k > 0 ? g->rows + (size_t)ls->row * e->vocab : s->logits;
    const int n_before = ls->k > 0 ? ls->base + 1 + ls->row : s->n_tokens;
    float lse = 0;
    if (g->params.logprobs) {
        memcpy(g->scratch, logits, (size_t)e->vocab * sizeof *g->scratch);
        lse = log_softmax_top(g, g->scratch, tok);
    }
    int id = sampler_sample(g->sampler, logits, e->vocab, s->tokens, n_before, NULL);
    if (id < 0 || id >= e->vocab) {
        perr_set(err, "the sampler returned an invalid token id %d", id);
        return -1;
    }
    if (is_eos(e, id)) {
        *finish = GEN_STOP;
        return 0;
    }
    tok->id = id;
    tok->logprob = g->params.logprobs ? g->scratch[id] - lse : 0;
    g->n_generated++;
    if (lookup_step_keep(&g->ls, id))
        return 1; /* the draft was right: this token is in the cache, its logits in the next row */
    const int cut = lookup_step_cut(&g->ls);
    if (cut >= 0) { /* drop the rest of the draft from the cache */
        model_ctx_truncate(s->ctx, cut);
        s->n_tokens = cut;
    }
    g->pending = id;
    return 1;
}
