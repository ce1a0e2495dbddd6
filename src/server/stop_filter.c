#include "server/stop_filter.h"

#include <stdlib.h>
#include <string.h>

struct stop_filter {
    char **stops;
    size_t *lens;
    int n;
    strbuf held;
};

stop_filter *stop_filter_new(char *const *stops, int n)
{
    stop_filter *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    sb_init(&f->held);
    if (n > 0) {
        f->stops = calloc((size_t)n, sizeof *f->stops);
        f->lens = calloc((size_t)n, sizeof *f->lens);
        if (!f->stops || !f->lens) {
            stop_filter_free(f);
            return NULL;
        }
        for (int i = 0; i < n; i++) {
            if (!stops[i] || !*stops[i])
                continue;
            f->stops[f->n] = strdup(stops[i]);
            if (!f->stops[f->n]) {
                stop_filter_free(f);
                return NULL;
            }
            f->lens[f->n] = strlen(stops[i]);
            f->n++;
        }
    }
    return f;
}

void stop_filter_free(stop_filter *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n; i++)
        free(f->stops[i]);
    free(f->stops);
    free(f->lens);
    sb_free(&f->held);
    free(f);
}

/* Finds needle in hay[0..n) (the text may hold NUL bytes in theory, so no strstr). */
static const char *find(const char *hay, size_t n, const char *needle, size_t m)
{
    if (m == 0 || m > n)
        return NULL;
    return memmem(hay, n, needle, m);
}

int stop_filter_feed(stop_filter *f, const char *text, size_t len, strbuf *out)
{
    if (f->n == 0)
        return sb_append(out, text, len);
    if (sb_append(&f->held, text, len) != 0)
        return -1;
    const char *s = sb_str(&f->held);
    size_t n = f->held.len;
    size_t first = n;
    for (int i = 0; i < f->n; i++) {
        const char *hit = find(s, n, f->stops[i], f->lens[i]);
        if (hit && (size_t)(hit - s) < first)
            first = (size_t)(hit - s);
    }
    if (first < n) {
        if (sb_append(out, s, first) != 0)
            return -1;
        sb_clear(&f->held);
        return 1;
    }
    /* Hold back the longest tail that is a proper prefix of some stop string. */
    size_t hold = 0;
    for (int i = 0; i < f->n; i++) {
        size_t maxk = f->lens[i] - 1 < n ? f->lens[i] - 1 : n;
        for (size_t k = maxk; k > hold; k--)
            if (memcmp(s + n - k, f->stops[i], k) == 0) {
                hold = k;
                break;
            }
    }
    if (sb_append(out, s, n - hold) != 0)
        return -1;
    sb_consume(&f->held, n - hold);
    return 0;
}

int stop_filter_flush(stop_filter *f, strbuf *out)
{
    int rc = sb_append(out, sb_str(&f->held), f->held.len);
    sb_clear(&f->held);
    return rc;
}
