#include "model/lookup.h"

#include <string.h>

#define NGRAM_MAX 4
#define NGRAM_MIN 2
#define SEARCH_WINDOW 65536 /* tokens looked back: keeps a step's search well under a millisecond */

int lookup_draft(const int32_t *hist, int n_hist, int32_t *draft, int max)
{
    if (max > LOOKUP_DRAFT_MAX)
        max = LOOKUP_DRAFT_MAX;
    if (max <= 0)
        return 0;
    const int lo = n_hist > SEARCH_WINDOW ? n_hist - SEARCH_WINDOW : 0;
    for (int n = NGRAM_MAX; n >= NGRAM_MIN; n--) {
        if (n_hist < n + 1)
            continue;
        const int32_t *tail = hist + n_hist - n;
        /* the most recent earlier occurrence: it starts at s, and something follows it */
        for (int s = n_hist - n - 1; s >= lo; s--) {
            if (hist[s] != tail[0] || memcmp(hist + s, tail, (size_t)n * sizeof *tail) != 0)
                continue;
            const int from = s + n, avail = n_hist - from;
            const int k = avail < max ? avail : max;
            memcpy(draft, hist + from, (size_t)k * sizeof *draft);
            return k;
        }
    }
    return 0;
}

void lookup_budget_init(lookup_budget *b, int limit)
{
    b->limit = limit < 0 ? 0 : limit > LOOKUP_DRAFT_MAX ? LOOKUP_DRAFT_MAX : limit;
    b->next = b->limit < 4 ? b->limit : 4;
    b->single_s = 0;
    b->skip = b->backoff = 0;
}

int lookup_budget_take(lookup_budget *b)
{
    if (b->skip > 0) {
        b->skip--;
        return 0;
    }
    return b->next;
}

void lookup_budget_single(lookup_budget *b, double seconds)
{
    b->single_s = b->single_s > 0 ? 0.8 * b->single_s + 0.2 * seconds : seconds;
}

/* a drafted step pays when its tokens came at least this fast against single steps (below 1: the
 * timing noise of steps that cost the same) */
#define PAYS 0.9

void lookup_budget_update(lookup_budget *b, int drafted, int accepted, double seconds)
{
    if (drafted <= 0 || b->limit == 0)
        return;
    if (accepted >= drafted)
        b->next = 2 * b->next < b->limit ? 2 * b->next : b->limit;
    else
        b->next = accepted + 1 < b->limit ? accepted + 1 : b->limit;
    if (b->single_s > 0 && seconds > 0 && (accepted + 1) * b->single_s < PAYS * seconds) {
        b->backoff = b->backoff ? (2 * b->backoff < 256 ? 2 * b->backoff : 256) : 4;
        b->skip = b->backoff;
    } else {
        b->backoff = 0;
    }
}

int lookup_plan(lookup_budget *b, const int32_t *hist, int n_hist, int ctx_room, int tokens_left, int32_t *draft)
{
    int max = lookup_budget_take(b);
    max = ctx_room < max ? ctx_room : max;
    max = tokens_left < max ? tokens_left : max;
    return max > 0 ? lookup_draft(hist, n_hist, draft, max) : 0;
}

void lookup_step_init(lookup_step *ls, int limit)
{
    memset(ls, 0, sizeof *ls);
    lookup_budget_init(&ls->budget, limit);
}

int lookup_step_plan(lookup_step *ls, int32_t first, int base, const int32_t *hist, int n_hist, int ctx_room,
                     int tokens_left)
{
    ls->tokens[0] = first;
    ls->k = ctx_room > 0 ? lookup_plan(&ls->budget, hist, n_hist, ctx_room, tokens_left, ls->tokens + 1) : 0;
    ls->row = 0;
    ls->base = base;
    ls->seconds = 0;
    ls->drafted += ls->k;
    return ls->k;
}

void lookup_step_ran(lookup_step *ls, double seconds)
{
    if (ls->k > 0)
        ls->seconds = seconds;
    else
        lookup_budget_single(&ls->budget, seconds);
}

int lookup_step_keep(lookup_step *ls, int32_t id)
{
    if (ls->row >= ls->k || id != ls->tokens[1 + ls->row])
        return 0;
    ls->row++;
    ls->accepted++;
    return 1;
}

int lookup_step_cut(lookup_step *ls)
{
    if (ls->k == 0)
        return -1;
    lookup_budget_update(&ls->budget, ls->k, ls->row, ls->seconds);
    ls->k = 0;
    return ls->base + 1 + ls->row;
}
