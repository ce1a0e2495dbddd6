/* Prompt lookup decoding: draft tokens copied from earlier in the text, checked in one batch.
 *
 * Code edits, refactors and answers that quote their input repeat long runs of the prompt. When the
 * last few tokens occurred before, the tokens that followed them then are a likely continuation: the
 * next token and such a draft are evaluated together (decode reads every weight once per step, so a
 * few more tokens cost little), and each position's token is then sampled as usual, the draft being
 * kept for as long as the samples agree with it. Every token is drawn from the distribution
 * one-at-a-time decoding gives it (a draft token is kept only when it is the one drawn), with the
 * same random numbers, so the output is the same (bit for bit while the logits are: past 512 keys
 * attention splits its sums differently for a step of several tokens); only how many tokens one
 * step yields changes. */
#ifndef PUNIE_MODEL_LOOKUP_H
#define PUNIE_MODEL_LOOKUP_H

#include <stdint.h>

#define LOOKUP_DRAFT_MAX 16 /* most draft tokens per step */

/* Up to max (<= LOOKUP_DRAFT_MAX) tokens that followed the most recent earlier occurrence of the
 * last n tokens of hist[0, n_hist), for the longest n from 4 down to 2 that occurs, into draft.
 * Returns how many (0: no match). */
int lookup_draft(const int32_t *hist, int n_hist, int32_t *draft, int max);

/* How long the next draft may be: full acceptance doubles it (up to limit), a miss shrinks it to one
 * more than was accepted. And whether drafting pays on this machine: where a step of several tokens
 * costs much more than a step of one (the kernels compute-bound, e.g. AVX2 on few cores with fast
 * memory: 1.7x for two tokens), a drafted step whose tokens came slower than single steps' stops
 * drafting for a while (4 steps, doubling while it keeps not paying, up to 256). */
typedef struct lookup_budget {
    int next, limit;
    double single_s;   /* running mean of a one-token step's time; 0 until one was seen */
    int skip, backoff; /* steps left without drafting; the length of the last such pause */
} lookup_budget;

void lookup_budget_init(lookup_budget *b, int limit);
/* The draft length for the coming step (0: do not draft now); call once per step. */
int lookup_budget_take(lookup_budget *b);
/* A step without a draft took seconds. */
void lookup_budget_single(lookup_budget *b, double seconds);
/* A step with `drafted` draft tokens, of which `accepted` were kept, took seconds. */
void lookup_budget_update(lookup_budget *b, int drafted, int accepted, double seconds);

/* The draft for the coming step (into draft; returns its length, 0 for none): as long as the budget
 * allows (lookup_budget_take), the cache has room for after the next token (ctx_room) and tokens are
 * still wanted after it (tokens_left), found in hist[0, n_hist) by lookup_draft. */
int lookup_plan(lookup_budget *b, const int32_t *hist, int n_hist, int ctx_room, int tokens_left, int32_t *draft);

/* One step of decoding with its draft, and what came of it. A step evaluates `tokens` (the token to
 * decode, then k draft tokens) from cache length base, one row of logits for each; the token sampled
 * from row r follows tokens[r], and while it equals tokens[r + 1] (a draft token, already in the
 * cache) row r + 1 is next. The first token that differs ends the step: the rest of the draft is cut
 * from the cache. Totals of drafted and kept tokens are kept for the figures. */
typedef struct lookup_step {
    lookup_budget budget;
    int32_t tokens[LOOKUP_DRAFT_MAX + 1];
    int k, row, base;
    double seconds; /* how long the drafted step took */
    int drafted, accepted;
} lookup_step;

void lookup_step_init(lookup_step *ls, int limit);
/* The coming step decodes `first` from cache length base, with a draft planned by lookup_plan when
 * ctx_room allows (0: a step without one). Returns k; the step's tokens are ls->tokens[0, k + 1). */
int lookup_step_plan(lookup_step *ls, int32_t first, int base, const int32_t *hist, int n_hist, int ctx_room,
                     int tokens_left);
/* The planned step took seconds: a drafted step's time weighs it when it ends, a plain step's is what
 * drafted steps are weighed against (call it only for steps the generation ran alone). */
void lookup_step_ran(lookup_step *ls, double seconds);
/* Sampled token id, from row ls->row: 1 when it is the next draft token (in the cache already; its
 * successor's logits are in the next row), else 0. */
int lookup_step_keep(lookup_step *ls, int32_t id);
/* After a token that was not kept: ends the step and returns the cache length that drops the rest of
 * its draft, or -1 when the step had no draft (nothing to cut). */
int lookup_step_cut(lookup_step *ls);

#endif
