/* Jinja values: arena, containers, equality, str/repr and Python-compatible json.dumps. */
#include "tokenizer/jinja_value.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors and arena ---- */

void jinja_fail(jctx *c, const char *fmt, ...)
{
    if (c->err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err->msg, sizeof c->err->msg, fmt, ap);
        va_end(ap);
    }
    longjmp(*c->jump, 1);
}

void jinja_rethrow(jctx *c)
{
    longjmp(*c->jump, 1);
}

struct jarena_block {
    jarena_block *next;
    size_t used, size;
    _Alignas(16) unsigned char data[];
};

void jarena_init(jarena *a, size_t cap)
{
    a->head = NULL;
    a->used_total = 0;
    a->cap = cap;
}

void jarena_free(jarena *a)
{
    jarena_block *b = a->head;
    while (b) {
        jarena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
    a->used_total = 0;
}

static void *jalloc_raw(jctx *c, size_t n)
{
    jarena *a = c->arena;
    n = (n + 15) & ~(size_t)15;
    if (n == 0)
        n = 16;
    if (n > a->cap || a->used_total > a->cap - n)
        jinja_fail(c, "template needs more than %zu MB of memory", a->cap >> 20);
    jarena_block *b = a->head;
    if (!b || b->size - b->used < n) {
        size_t size = n > 65536 ? n : 65536;
        b = malloc(sizeof *b + size);
        if (!b)
            jinja_fail(c, "out of memory");
        b->size = size;
        b->used = 0;
        /* A big one-off block goes behind the current one so the current keeps filling. */
        if (a->head && size > 65536) {
            b->next = a->head->next;
            a->head->next = b;
        } else {
            b->next = a->head;
            a->head = b;
        }
    }
    void *p = b->data + b->used;
    b->used += n;
    a->used_total += n;
    return p;
}

void *jalloc(jctx *c, size_t n)
{
    void *p = jalloc_raw(c, n);
    memset(p, 0, n);
    return p;
}

char *jstrdup(jctx *c, const char *s, size_t n)
{
    char *p = jalloc_raw(c, n + 1);
    if (n)
        memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ---- UTF-8 ---- */

size_t utf8_next(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0) {
        *cp = 0;
        return 0;
    }
    unsigned c0 = u[0];
    size_t len;
    uint32_t v;
    if (c0 < 0x80) {
        *cp = c0;
        return 1;
    } else if (c0 >= 0xC2 && c0 <= 0xDF) {
        len = 2;
        v = c0 & 0x1F;
    } else if (c0 >= 0xE0 && c0 <= 0xEF) {
        len = 3;
        v = c0 & 0x0F;
    } else if (c0 >= 0xF0 && c0 <= 0xF4) {
        len = 4;
        v = c0 & 0x07;
    } else {
        *cp = c0;
        return 1;
    }
    if (n < len) {
        *cp = c0;
        return 1;
    }
    for (size_t i = 1; i < len; i++) {
        if ((u[i] & 0xC0) != 0x80) {
            *cp = c0;
            return 1;
        }
        v = (v << 6) | (u[i] & 0x3F);
    }
    if ((len == 3 && v < 0x800) || (len == 4 && (v < 0x10000 || v > 0x10FFFF))) {
        *cp = c0;
        return 1;
    }
    *cp = v;
    return len;
}

size_t utf8_put(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t utf8_count(const char *s, size_t n)
{
    size_t count = 0, i = 0;
    uint32_t cp;
    while (i < n) {
        i += utf8_next(s + i, n - i, &cp);
        count++;
    }
    return count;
}

/* ---- containers ---- */

jv jv_str(jctx *c, const char *s)
{
    size_t n = strlen(s);
    return jv_strn(jstrdup(c, s, n), n);
}

jv jv_list_new(jctx *c, size_t cap_hint)
{
    jv v = {.k = JV_LIST};
    v.u.l = jalloc(c, sizeof *v.u.l);
    if (cap_hint) {
        v.u.l->items = jalloc(c, cap_hint * sizeof(jv));
        v.u.l->cap = cap_hint;
    }
    return v;
}

static int value_depth(jv v)
{
    if (v.k == JV_LIST)
        return v.u.l->depth;
    if (v.k == JV_DICT && !v.u.d->is_namespace)
        return v.u.d->depth;
    return 0;
}

static void note_child(jctx *c, int *depth, jv child)
{
    int d = value_depth(child) + 1;
    if (d > JINJA_MAX_DEPTH)
        jinja_fail(c, "value nested deeper than %d levels", JINJA_MAX_DEPTH);
    if (d > *depth)
        *depth = d;
}

void jv_list_push(jctx *c, jv list, jv item)
{
    jlist *l = list.u.l;
    note_child(c, &l->depth, item);
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        jv *items = jalloc(c, cap * sizeof(jv));
        if (l->n)
            memcpy(items, l->items, l->n * sizeof(jv));
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n++] = item;
}

jv jv_dict_new(jctx *c)
{
    jv v = {.k = JV_DICT};
    v.u.d = jalloc(c, sizeof *v.u.d);
    return v;
}

static uint64_t jv_hash(jv v)
{
    switch (v.k) {
    case JV_STR: {
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < v.u.s.n; i++)
            h = (h ^ (unsigned char)v.u.s.p[i]) * 1099511628211ull;
        return h;
    }
    case JV_BOOL: return (uint64_t)v.u.b * 0x9E3779B97F4A7C15ull;
    case JV_INT: return (uint64_t)v.u.i * 0x9E3779B97F4A7C15ull;
    case JV_FLOAT:
        if (v.u.f == floor(v.u.f) && fabs(v.u.f) < 9.2e18)
            return (uint64_t)(int64_t)v.u.f * 0x9E3779B97F4A7C15ull;
        return 7;
    default: return 0;
    }
}

/* Small dicts are scanned; bigger ones keep an open-addressing index of positions + 1. */
static void dict_reindex(jctx *c, jdict *d)
{
    size_t cap = 64;
    while (cap < d->n * 2 + 2)
        cap *= 2;
    d->index = jalloc(c, cap * sizeof *d->index);
    d->index_cap = cap;
    for (size_t i = 0; i < d->n; i++) {
        size_t h = (size_t)jv_hash(d->keys[i]) & (cap - 1);
        while (d->index[h])
            h = (h + 1) & (cap - 1);
        d->index[h] = (uint32_t)(i + 1);
    }
}

static bool dict_find(const jdict *d, jv key, size_t *at)
{
    if (d->index) {
        size_t h = (size_t)jv_hash(key) & (d->index_cap - 1);
        while (d->index[h]) {
            size_t i = d->index[h] - 1;
            if (jv_equal(d->keys[i], key)) {
                *at = i;
                return true;
            }
            h = (h + 1) & (d->index_cap - 1);
        }
        return false;
    }
    for (size_t i = 0; i < d->n; i++) {
        if (jv_equal(d->keys[i], key)) {
            *at = i;
            return true;
        }
    }
    return false;
}

void jv_dict_set(jctx *c, jv dict, jv key, jv val)
{
    jdict *d = dict.u.d;
    size_t at;
    if (!d->is_namespace) {
        note_child(c, &d->depth, key);
        note_child(c, &d->depth, val);
    }
    if (dict_find(d, key, &at)) {
        d->vals[at] = val;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        jv *keys = jalloc(c, cap * sizeof(jv)), *vals = jalloc(c, cap * sizeof(jv));
        if (d->n) {
            memcpy(keys, d->keys, d->n * sizeof(jv));
            memcpy(vals, d->vals, d->n * sizeof(jv));
        }
        d->keys = keys;
        d->vals = vals;
        d->cap = cap;
    }
    if (d->n >= UINT32_MAX - 1)
        jinja_fail(c, "dict too large");
    d->keys[d->n] = key;
    d->vals[d->n] = val;
    d->n++;
    if (d->index && d->n * 2 + 2 <= d->index_cap) {
        size_t h = (size_t)jv_hash(key) & (d->index_cap - 1);
        while (d->index[h])
            h = (h + 1) & (d->index_cap - 1);
        d->index[h] = (uint32_t)d->n;
    } else if (d->n >= 16) {
        dict_reindex(c, d);
    }
}

void jv_dict_set_str(jctx *c, jv dict, const char *key, jv val)
{
    size_t at;
    if (dict_find(dict.u.d, jv_strn(key, strlen(key)), &at)) {
        if (!dict.u.d->is_namespace)
            note_child(c, &dict.u.d->depth, val);
        dict.u.d->vals[at] = val; /* no key copy when replacing (loop variables) */
        return;
    }
    jv_dict_set(c, dict, jv_str(c, key), val);
}

bool jv_dict_get(jv dict, jv key, jv *out)
{
    size_t at;
    if (dict.k != JV_DICT || !dict_find(dict.u.d, key, &at))
        return false;
    *out = dict.u.d->vals[at];
    return true;
}

bool jv_dict_get_str(jv dict, const char *key, jv *out)
{
    return jv_dict_get(dict, jv_strn(key, strlen(key)), out);
}

const char *jv_type_name(jv v)
{
    switch (v.k) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: {
        static const char *const names[] = {"list", "tuple", "generator", "dict_keys", "dict_values", "dict_items"};
        return names[v.u.l->kind];
    }
    case JV_DICT: return v.u.d->is_namespace ? "Namespace" : "dict";
    case JV_FUNC: return v.u.fn->kind == JF_MACRO ? "Macro" : "function";
    }
    return "?";
}

bool jv_truthy(jv v)
{
    switch (v.k) {
    case JV_UNDEF:
    case JV_NONE: return false;
    case JV_BOOL: return v.u.b;
    case JV_INT: return v.u.i != 0;
    case JV_FLOAT: return v.u.f != 0.0;
    case JV_STR: return v.u.s.n != 0;
    case JV_LIST: return v.u.l->kind == JL_GENERATOR || v.u.l->n != 0; /* a generator is always true */
    case JV_DICT: return v.u.d->is_namespace || v.u.d->n != 0;
    case JV_FUNC: return true;
    }
    return false;
}

static bool is_numeric(jv v)
{
    return v.k == JV_BOOL || v.k == JV_INT || v.k == JV_FLOAT;
}

bool jv_equal(jv a, jv b)
{
    if (is_numeric(a) && is_numeric(b)) {
        if (a.k == JV_FLOAT || b.k == JV_FLOAT) {
            double x = a.k == JV_FLOAT ? a.u.f : a.k == JV_INT ? (double)a.u.i : (double)a.u.b;
            double y = b.k == JV_FLOAT ? b.u.f : b.k == JV_INT ? (double)b.u.i : (double)b.u.b;
            return x == y;
        }
        int64_t x = a.k == JV_INT ? a.u.i : a.u.b, y = b.k == JV_INT ? b.u.i : b.u.b;
        return x == y;
    }
    if (a.k != b.k)
        return false;
    switch (a.k) {
    case JV_UNDEF:
    case JV_NONE: return true;
    case JV_STR: return a.u.s.n == b.u.s.n && (a.u.s.n == 0 || memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0);
    case JV_LIST:
        if (a.u.l == b.u.l)
            return true;
        if (a.u.l->n != b.u.l->n || a.u.l->kind != b.u.l->kind || a.u.l->kind == JL_GENERATOR
            || a.u.l->kind == JL_VALUES)
            return false;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!jv_equal(a.u.l->items[i], b.u.l->items[i]))
                return false;
        return true;
    case JV_DICT:
        if (a.u.d == b.u.d)
            return true;
        if (a.u.d->is_namespace || b.u.d->is_namespace || a.u.d->n != b.u.d->n)
            return false;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jv other;
            if (!jv_dict_get(b, a.u.d->keys[i], &other) || !jv_equal(a.u.d->vals[i], other))
                return false;
        }
        return true;
    case JV_FUNC: return a.u.fn == b.u.fn;
    default: return false;
    }
}

/* ---- buffers ---- */

void jbuf_put(jctx *c, jbuf *b, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (b->limit && (n > b->limit || b->n > b->limit - n))
        jinja_fail(c, "template output exceeds %zu bytes", b->limit);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = jalloc_raw(c, cap); /* text buffers need no zeroing */
        if (b->n)
            memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void jbuf_putc(jctx *c, jbuf *b, char ch)
{
    jbuf_put(c, b, &ch, 1);
}

jv jbuf_value(jctx *c, jbuf *b)
{
    if (b->n == 0)
        return jv_strn("", 0);
    return jv_strn(b->p, b->n);
}

/* ---- text forms ---- */

void jv_format_float(double f, char *out, size_t outsz)
{
    if (isnan(f)) {
        snprintf(out, outsz, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(out, outsz, f < 0 ? "-inf" : "inf");
        return;
    }
    if (f == 0.0) {
        snprintf(out, outsz, signbit(f) ? "-0.0" : "0.0");
        return;
    }
    /* Shortest digits that read back to the same double. */
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f)
            break;
    }
    /* tmp = [-]d[.ddd]e[+-]XX */
    const char *p = tmp;
    bool neg = false;
    if (*p == '-') {
        neg = true;
        p++;
    }
    char digits[24];
    size_t nd = 0;
    while (*p && *p != 'e') {
        if (*p != '.' && nd < sizeof digits - 1)
            digits[nd++] = *p;
        p++;
    }
    digits[nd] = 0;
    while (nd > 1 && digits[nd - 1] == '0')
        digits[--nd] = 0;
    int exp10 = *p == 'e' ? atoi(p + 1) : 0;
    int decpt = exp10 + 1; /* value = 0.DIGITS * 10^decpt */
    char res[64];
    size_t r = 0;
    if (neg)
        res[r++] = '-';
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            res[r++] = '0';
            res[r++] = '.';
            for (int i = 0; i < -decpt; i++)
                res[r++] = '0';
            for (size_t i = 0; i < nd; i++)
                res[r++] = digits[i];
        } else {
            for (int i = 0; i < decpt; i++)
                res[r++] = (size_t)i < nd ? digits[i] : '0';
            res[r++] = '.';
            if ((size_t)decpt < nd)
                for (size_t i = (size_t)decpt; i < nd; i++)
                    res[r++] = digits[i];
            else
                res[r++] = '0';
        }
        res[r] = 0;
    } else {
        res[r++] = digits[0];
        if (nd > 1) {
            res[r++] = '.';
            for (size_t i = 1; i < nd; i++)
                res[r++] = digits[i];
        }
        int e = decpt - 1;
        r += (size_t)snprintf(res + r, sizeof res - r, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
    snprintf(out, outsz, "%s", res);
}

static void write_int(jctx *c, jbuf *b, int64_t i)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%" PRId64, i);
    jbuf_put(c, b, tmp, (size_t)n);
}

static void write_float(jctx *c, jbuf *b, double f)
{
    char tmp[64];
    jv_format_float(f, tmp, sizeof tmp);
    jbuf_puts(c, b, tmp);
}

void jv_write_str(jctx *c, jbuf *b, jv v)
{
    switch (v.k) {
    case JV_UNDEF: return;
    case JV_STR: jbuf_put(c, b, v.u.s.p, v.u.s.n); return;
    default: jv_write_repr(c, b, v, 0); return;
    }
}

jv jv_to_str(jctx *c, jv v)
{
    if (v.k == JV_STR)
        return v;
    jbuf b = {0};
    jv_write_str(c, &b, v);
    return jbuf_value(c, &b);
}

static void write_str_repr(jctx *c, jbuf *b, const char *s, size_t n)
{
    bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    jbuf_putc(c, b, q);
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t len = utf8_next(s + i, n - i, &cp);
        char tmp[12];
        if (cp == (uint32_t)q || cp == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)cp;
            jbuf_put(c, b, tmp, 2);
        } else if (cp == '\n') {
            jbuf_put(c, b, "\\n", 2);
        } else if (cp == '\r') {
            jbuf_put(c, b, "\\r", 2);
        } else if (cp == '\t') {
            jbuf_put(c, b, "\\t", 2);
        } else if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) {
            snprintf(tmp, sizeof tmp, "\\x%02x", cp);
            jbuf_puts(c, b, tmp);
        } else {
            jbuf_put(c, b, s + i, len);
        }
        i += len;
    }
    jbuf_putc(c, b, q);
}

void jv_write_repr(jctx *c, jbuf *b, jv v, int depth)
{
    if (depth > JINJA_MAX_DEPTH)
        jinja_fail(c, "value nested deeper than %d levels", JINJA_MAX_DEPTH);
    switch (v.k) {
    case JV_UNDEF: return;
    case JV_NONE: jbuf_puts(c, b, "None"); return;
    case JV_BOOL: jbuf_puts(c, b, v.u.b ? "True" : "False"); return;
    case JV_INT: write_int(c, b, v.u.i); return;
    case JV_FLOAT: write_float(c, b, v.u.f); return;
    case JV_STR: write_str_repr(c, b, v.u.s.p, v.u.s.n); return;
    case JV_LIST: {
        jlist_kind kind = v.u.l->kind;
        if (kind == JL_GENERATOR)
            jinja_fail(c, "unsupported construct: printing a generator (Jinja would print its address; "
                          "apply | list first)");
        bool tuple = kind == JL_TUPLE;
        if (kind >= JL_KEYS) {
            jbuf_puts(c, b, jv_type_name(v));
            jbuf_putc(c, b, '(');
        }
        jbuf_putc(c, b, tuple ? '(' : '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i)
                jbuf_put(c, b, ", ", 2);
            jv_write_repr(c, b, v.u.l->items[i], depth + 1);
        }
        if (tuple && v.u.l->n == 1)
            jbuf_putc(c, b, ',');
        jbuf_putc(c, b, tuple ? ')' : ']');
        if (kind >= JL_KEYS)
            jbuf_putc(c, b, ')');
        return;
    }
    case JV_DICT:
        if (v.u.d->is_namespace) {
            jbuf_puts(c, b, "<Namespace {");
        } else {
            jbuf_putc(c, b, '{');
        }
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i)
                jbuf_put(c, b, ", ", 2);
            jv_write_repr(c, b, v.u.d->keys[i], depth + 1);
            jbuf_put(c, b, ": ", 2);
            jv_write_repr(c, b, v.u.d->vals[i], depth + 1);
        }
        jbuf_puts(c, b, v.u.d->is_namespace ? "}>" : "}");
        return;
    case JV_FUNC:
        jinja_fail(c, "unsupported construct: printing %s '%s' (Jinja would print its address)",
                   v.u.fn->kind == JF_MACRO ? "macro" : "function", v.u.fn->name ? v.u.fn->name : "?");
    }
}

static void write_json_str(jctx *c, jbuf *b, const char *s, size_t n, bool ensure_ascii)
{
    jbuf_putc(c, b, '"');
    size_t i = 0;
    while (i < n) {
        unsigned char ch = (unsigned char)s[i];
        char tmp[16];
        if (ch == '"' || ch == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)ch;
            jbuf_put(c, b, tmp, 2);
        } else if (ch == '\n') {
            jbuf_put(c, b, "\\n", 2);
        } else if (ch == '\r') {
            jbuf_put(c, b, "\\r", 2);
        } else if (ch == '\t') {
            jbuf_put(c, b, "\\t", 2);
        } else if (ch == '\b') {
            jbuf_put(c, b, "\\b", 2);
        } else if (ch == '\f') {
            jbuf_put(c, b, "\\f", 2);
        } else if (ch < 0x20 || (ensure_ascii && ch == 0x7F)) {
            snprintf(tmp, sizeof tmp, "\\u%04x", ch);
            jbuf_puts(c, b, tmp);
        } else if (ch >= 0x80 && ensure_ascii) {
            uint32_t cp;
            size_t len = utf8_next(s + i, n - i, &cp);
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
            } else {
                snprintf(tmp, sizeof tmp, "\\u%04x", cp);
            }
            jbuf_puts(c, b, tmp);
            i += len;
            continue;
        } else {
            jbuf_put(c, b, s + i, 1);
        }
        i++;
    }
    jbuf_putc(c, b, '"');
}

static void json_newline(jctx *c, jbuf *b, const jjson_opts *o, int level)
{
    jbuf_putc(c, b, '\n');
    for (int i = 0; i < level; i++) {
        if (o->indent_str)
            jbuf_puts(c, b, o->indent_str);
        else
            for (int k = 0; k < o->indent; k++)
                jbuf_putc(c, b, ' ');
    }
}

static int cmp_str_keys(const void *a, const void *b)
{
    const jv *x = *(const jv *const *)a, *y = *(const jv *const *)b;
    size_t n = x->u.s.n < y->u.s.n ? x->u.s.n : y->u.s.n;
    int r = n ? memcmp(x->u.s.p, y->u.s.p, n) : 0;
    if (r)
        return r;
    return x->u.s.n < y->u.s.n ? -1 : x->u.s.n > y->u.s.n;
}

static jv json_key(jctx *c, jv k)
{
    switch (k.k) {
    case JV_STR: return k;
    case JV_NONE: return jv_strn("null", 4);
    case JV_BOOL: return k.u.b ? jv_strn("true", 4) : jv_strn("false", 5);
    case JV_INT:
    case JV_FLOAT: {
        jbuf b = {0};
        if (k.k == JV_INT)
            write_int(c, &b, k.u.i);
        else
            write_float(c, &b, k.u.f);
        return jbuf_value(c, &b);
    }
    default: jinja_fail(c, "tojson: keys must be str, int, float, bool or None, not %s", jv_type_name(k));
    }
}

void jv_write_json(jctx *c, jbuf *b, jv v, const jjson_opts *o, int depth)
{
    if (depth > JINJA_MAX_DEPTH)
        jinja_fail(c, "tojson: value nested deeper than %d levels", JINJA_MAX_DEPTH);
    bool pretty = o->indent >= 0 || o->indent_str;
    switch (v.k) {
    case JV_NONE: jbuf_puts(c, b, "null"); return;
    case JV_BOOL: jbuf_puts(c, b, v.u.b ? "true" : "false"); return;
    case JV_INT: write_int(c, b, v.u.i); return;
    case JV_FLOAT:
        if (isnan(v.u.f))
            jbuf_puts(c, b, "NaN");
        else if (isinf(v.u.f))
            jbuf_puts(c, b, v.u.f < 0 ? "-Infinity" : "Infinity");
        else
            write_float(c, b, v.u.f);
        return;
    case JV_STR: write_json_str(c, b, v.u.s.p, v.u.s.n, o->ensure_ascii); return;
    case JV_LIST:
        if (v.u.l->kind != JL_LIST && v.u.l->kind != JL_TUPLE)
            jinja_fail(c, "tojson: Object of type %s is not JSON serializable", jv_type_name(v));
        if (v.u.l->n == 0) {
            jbuf_put(c, b, "[]", 2);
            return;
        }
        jbuf_putc(c, b, '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i)
                jbuf_puts(c, b, pretty ? "," : ", ");
            if (pretty)
                json_newline(c, b, o, depth + 1);
            jv_write_json(c, b, v.u.l->items[i], o, depth + 1);
        }
        if (pretty)
            json_newline(c, b, o, depth);
        jbuf_putc(c, b, ']');
        return;
    case JV_DICT: {
        jdict *d = v.u.d;
        if (d->is_namespace)
            jinja_fail(c, "tojson: Object of type Namespace is not JSON serializable");
        if (d->n == 0) {
            jbuf_put(c, b, "{}", 2);
            return;
        }
        /* Keys converted once; order is insertion order unless sort_keys. */
        jv *keys = jalloc(c, d->n * sizeof(jv));
        const jv **order = jalloc(c, d->n * sizeof(jv *));
        for (size_t i = 0; i < d->n; i++) {
            keys[i] = json_key(c, d->keys[i]);
            order[i] = &keys[i];
        }
        if (o->sort_keys)
            qsort(order, d->n, sizeof *order, cmp_str_keys);
        jbuf_putc(c, b, '{');
        for (size_t k = 0; k < d->n; k++) {
            size_t i = (size_t)(order[k] - keys);
            if (k)
                jbuf_puts(c, b, pretty ? "," : ", ");
            if (pretty)
                json_newline(c, b, o, depth + 1);
            write_json_str(c, b, keys[i].u.s.p, keys[i].u.s.n, o->ensure_ascii);
            jbuf_put(c, b, ": ", 2);
            jv_write_json(c, b, d->vals[i], o, depth + 1);
        }
        if (pretty)
            json_newline(c, b, o, depth);
        jbuf_putc(c, b, '}');
        return;
    }
    case JV_UNDEF: jinja_fail(c, "tojson: Object of type Undefined is not JSON serializable");
    case JV_FUNC: jinja_fail(c, "tojson: Object of type function is not JSON serializable");
    }
}

jv jv_from_cjson(jctx *c, const cJSON *j, int depth)
{
    if (depth > JINJA_MAX_DEPTH)
        jinja_fail(c, "input JSON nested deeper than %d levels", JINJA_MAX_DEPTH);
    if (!j || cJSON_IsNull(j))
        return jv_none();
    if (cJSON_IsBool(j))
        return jv_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (isfinite(d) && d == floor(d) && fabs(d) < 9007199254740992.0)
            return jv_int((int64_t)d);
        return jv_float(d);
    }
    if (cJSON_IsString(j))
        return jv_str(c, j->valuestring ? j->valuestring : "");
    if (cJSON_IsArray(j)) {
        jv list = jv_list_new(c, 0);
        for (const cJSON *it = j->child; it; it = it->next)
            jv_list_push(c, list, jv_from_cjson(c, it, depth + 1));
        return list;
    }
    if (cJSON_IsObject(j)) {
        jv dict = jv_dict_new(c);
        for (const cJSON *it = j->child; it; it = it->next)
            jv_dict_set(c, dict, jv_str(c, it->string ? it->string : ""), jv_from_cjson(c, it, depth + 1));
        return dict;
    }
    jinja_fail(c, "unsupported JSON value");
}
