/* Prompt lookup's draft search and draft budget (src/model/lookup.h). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "model/lookup.h"

#include "../lib/test_util.h"

static void expect_draft(const int32_t *hist, int n, int max, const int32_t *want, int n_want, const char *what)
{
    int32_t draft[LOOKUP_DRAFT_MAX + 1] = {0};
    const int k = lookup_draft(hist, n, draft, max);
    CHECK(k == n_want && memcmp(draft, want, (size_t)n_want * sizeof *want) == 0, "%s: %d tokens (want %d)", what,
          k, n_want);
}

int main(void)
{
    /* the last 3 tokens occurred at the start: what followed them, up to max */
    const int32_t a[] = {1, 2, 3, 4, 5, 9, 1, 2, 3};
    expect_draft(a, 9, 4, (const int32_t[]){4, 5, 9, 1}, 4, "3-gram");
    expect_draft(a, 9, 16, (const int32_t[]){4, 5, 9, 1, 2, 3}, 6, "up to the end of the text");
    expect_draft(a, 9, 0, (const int32_t[]){0}, 0, "max 0");
    /* the most recent earlier occurrence wins */
    const int32_t b[] = {7, 8, 1, 7, 8, 2, 7, 8};
    expect_draft(b, 8, 8, (const int32_t[]){2, 7, 8}, 3, "most recent");
    /* a longer match wins over a more recent shorter one */
    const int32_t c[] = {1, 2, 3, 10, 2, 3, 11, 1, 2, 3};
    expect_draft(c, 10, 2, (const int32_t[]){10, 2}, 2, "longest n-gram");
    /* no repeat, too short, a single repeated token (n-grams start at 2) */
    const int32_t d[] = {1, 2, 3, 4, 5, 6};
    expect_draft(d, 6, 8, (const int32_t[]){0}, 0, "no repeat");
    expect_draft(d, 1, 8, (const int32_t[]){0}, 0, "one token");
    const int32_t e[] = {5, 1, 2, 5};
    expect_draft(e, 4, 8, (const int32_t[]){0}, 0, "unigram");
    /* never more than LOOKUP_DRAFT_MAX */
    int32_t f[64];
    for (int i = 0; i < 64; i++)
        f[i] = i % 20;
    int32_t out[LOOKUP_DRAFT_MAX + 8];
    CHECK(lookup_draft(f, 64, out, LOOKUP_DRAFT_MAX + 8) == LOOKUP_DRAFT_MAX, "draft capped");

    lookup_budget bg;
    lookup_budget_init(&bg, 8);
    CHECK(bg.next == 4, "starts at 4: %d", bg.next);
    lookup_budget_update(&bg, 4, 4, 0);
    CHECK(bg.next == 8, "doubles on full acceptance: %d", bg.next);
    lookup_budget_update(&bg, 8, 8, 0);
    CHECK(bg.next == 8, "capped at the limit: %d", bg.next);
    lookup_budget_update(&bg, 8, 2, 0);
    CHECK(bg.next == 3, "one more than accepted: %d", bg.next);
    lookup_budget_update(&bg, 3, 0, 0);
    CHECK(bg.next == 1, "at least one: %d", bg.next);
    lookup_budget_update(&bg, 0, 0, 0);
    CHECK(bg.next == 1, "no draft, no change: %d", bg.next);
    CHECK(lookup_budget_take(&bg) == 1, "drafts while nothing says it does not pay");

    /* single steps of 10 ms; a 2-token step of 17 ms that kept nothing does not pay: 4 steps
     * without drafts, then 8 after another such step; one that pays ends the pauses */
    for (int i = 0; i < 5; i++)
        lookup_budget_single(&bg, 0.010);
    lookup_budget_update(&bg, 1, 0, 0.017);
    int skipped = 0;
    while (lookup_budget_take(&bg) == 0)
        skipped++;
    CHECK(skipped == 4, "first pause %d steps", skipped);
    lookup_budget_update(&bg, 1, 0, 0.017);
    for (skipped = 0; lookup_budget_take(&bg) == 0;)
        skipped++;
    CHECK(skipped == 8, "second pause %d steps", skipped);
    lookup_budget_update(&bg, 1, 1, 0.017); /* 2 tokens in 17 ms: pays */
    CHECK(lookup_budget_take(&bg) > 0 && bg.backoff == 0, "pays: no pause");
    lookup_budget_update(&bg, 1, 0, 0.0102); /* costs what a single step does: noise, no pause */
    CHECK(lookup_budget_take(&bg) > 0, "a step that costs the same does not pause drafting");
    for (int i = 0; i < 12; i++)
        lookup_budget_update(&bg, 7, 0, 0.06);
    CHECK(bg.backoff == 256, "pauses capped: %d", bg.backoff);

    /* the plan: budget (4 to start), context room and tokens still wanted, whichever is least */
    lookup_budget_init(&bg, 8);
    CHECK(lookup_plan(&bg, a, 9, 100, 100, out) == 4, "plan: the budget");
    CHECK(lookup_plan(&bg, a, 9, 2, 100, out) == 2, "plan: the context's room");
    CHECK(lookup_plan(&bg, a, 9, 100, 1, out) == 1 && out[0] == 4, "plan: the tokens still wanted");
    CHECK(lookup_plan(&bg, a, 9, 0, 100, out) == 0, "plan: a full context");
    CHECK(lookup_plan(&bg, d, 6, 100, 100, out) == 0, "plan: nothing repeats");

    /* a step: the next token and a draft; samples kept while they equal it, the rest cut */
    lookup_step ls;
    lookup_step_init(&ls, 8);
    CHECK(lookup_step_plan(&ls, 9, 50, a, 9, 100, 100) == 4 && ls.tokens[0] == 9 && ls.base == 50,
          "step: planned from the budget");
    lookup_step_ran(&ls, 0.02);
    CHECK(lookup_step_keep(&ls, ls.tokens[1]) && ls.row == 1, "step: a draft token kept");
    CHECK(!lookup_step_keep(&ls, ls.tokens[2] + 1) && ls.row == 1, "step: a different token is not");
    CHECK(lookup_step_cut(&ls) == 52 && ls.k == 0, "step: the cache keeps the token and the draft token kept");
    CHECK(ls.budget.next == 2, "step: a miss after one kept shrinks the next draft: %d", ls.budget.next);
    CHECK(lookup_step_cut(&ls) == -1, "step: nothing more to cut");
    CHECK(lookup_step_plan(&ls, 9, 52, a, 9, 0, 100) == 0 && ls.budget.skip == 0, "step: no room, no draft");
    lookup_step_ran(&ls, 0.01);
    CHECK(ls.budget.single_s == 0.01, "step: a plain step's time is the baseline");
    CHECK(!lookup_step_keep(&ls, 5) && lookup_step_cut(&ls) == -1, "step without a draft keeps nothing");
    CHECK(ls.drafted == 4 && ls.accepted == 1, "step totals: %d %d", ls.drafted, ls.accepted);

    lookup_budget_init(&bg, 0);
    CHECK(bg.next == 0 && lookup_budget_take(&bg) == 0, "off");
    lookup_budget_init(&bg, 2);
    CHECK(bg.next == 2, "small limit: %d", bg.next);
    return test_result("lookup ok");
}
