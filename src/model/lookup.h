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

#endif
