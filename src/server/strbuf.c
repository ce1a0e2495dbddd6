#include "server/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/grow.h"

void sb_init(strbuf *b) { memset(b, 0, sizeof *b); }

void sb_free(strbuf *b)
{
    free(b->data);
    sb_init(b);
}

void sb_clear(strbuf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

static int sb_reserve(strbuf *b, size_t extra)
{
    if (extra > ((size_t)1 << 40))
        return -1;
    char *p = grow_array(b->data, &b->cap, b->len + extra + 1, 1, 64);
    if (!p)
        return -1;
    b->data = p;
    return 0;
}

int sb_append(strbuf *b, const char *s, size_t n)
{
    if (sb_reserve(b, n) != 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int sb_appends(strbuf *b, const char *s) { return sb_append(b, s, strlen(s)); }

int sb_printf(strbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || sb_reserve(b, (size_t)n) != 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void sb_consume(strbuf *b, size_t n)
{
    if (n >= b->len) {
        sb_clear(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

const char *sb_str(const strbuf *b) { return b->data ? b->data : ""; }

char *sb_take(strbuf *b)
{
    char *p = b->data;
    sb_init(b);
    return p;
}
