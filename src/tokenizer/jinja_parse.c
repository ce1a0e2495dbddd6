/* Jinja subset lexer and parser.
 *
 * Whitespace follows the Hugging Face transformers environment: trim_blocks (one newline after a
 * block or comment tag is dropped), lstrip_blocks (spaces/tabs before a block or comment tag at
 * the start of a line are dropped), `-` on a tag strips all whitespace on that side, `+` disables
 * lstrip/trim, newlines are normalised to "\n" and one trailing newline is dropped
 * (keep_trailing_newline=False). */
#include "tokenizer/jinja_parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    T_EOF,
    T_TEXT,
    T_VAR_BEGIN,
    T_VAR_END,
    T_BLOCK_BEGIN,
    T_BLOCK_END,
    T_NAME,
    T_STRING,
    T_INT,
    T_FLOAT,
    T_OP,
} tkind;

typedef struct tok {
    tkind k;
    int line;
    const char *p; /* text, name, op or decoded string (NUL-terminated) */
    size_t n;
    int64_t i;
    double f;
} tok;

typedef struct lexer {
    jctx *c;
    const char *s;
    size_t n, pos;
    int line;
    tok *toks;
    size_t nt, cap;
} lexer;

static void emit(lexer *L, tkind k, int line, const char *p, size_t n)
{
    if (L->nt == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        tok *t = jalloc(L->c, cap * sizeof *t);
        if (L->nt)
            memcpy(t, L->toks, L->nt * sizeof *t);
        L->toks = t;
        L->cap = cap;
    }
    tok *t = &L->toks[L->nt++];
    memset(t, 0, sizeof *t);
    t->k = k;
    t->line = line;
    t->p = p;
    t->n = n;
}

static bool is_ws(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

static bool is_name_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static int count_lines(const char *s, size_t a, size_t b)
{
    int n = 0;
    for (size_t i = a; i < b; i++)
        n += s[i] == '\n';
    return n;
}

/* Emits a text token for s[a..b) after applying the strip flags of the tag that follows. */
static void emit_text(lexer *L, size_t a, size_t b, int line)
{
    if (b > a)
        emit(L, T_TEXT, line, L->s + a, b - a);
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Decodes a string literal body with Python's unicode-escape rules. */
static void lex_string(lexer *L, char quote)
{
    jctx *c = L->c;
    int line = L->line;
    size_t start = ++L->pos;
    while (L->pos < L->n && L->s[L->pos] != quote) {
        if (L->s[L->pos] == '\\' && L->pos + 1 < L->n)
            L->pos++;
        L->pos++;
    }
    if (L->pos >= L->n)
        jinja_fail(c, "line %d: unterminated string literal", line);
    size_t end = L->pos++;
    L->line += count_lines(L->s, start, end);
    jbuf b = {0};
    for (size_t i = start; i < end; i++) {
        char ch = L->s[i];
        if (ch != '\\' || i + 1 >= end) {
            jbuf_putc(c, &b, ch);
            continue;
        }
        char e = L->s[++i];
        uint32_t cp = 0;
        int digits = 0;
        switch (e) {
        case '\n': break;
        case '\\': jbuf_putc(c, &b, '\\'); break;
        case '\'': jbuf_putc(c, &b, '\''); break;
        case '"': jbuf_putc(c, &b, '"'); break;
        case 'a': jbuf_putc(c, &b, '\a'); break;
        case 'b': jbuf_putc(c, &b, '\b'); break;
        case 'f': jbuf_putc(c, &b, '\f'); break;
        case 'n': jbuf_putc(c, &b, '\n'); break;
        case 'r': jbuf_putc(c, &b, '\r'); break;
        case 't': jbuf_putc(c, &b, '\t'); break;
        case 'v': jbuf_putc(c, &b, '\v'); break;
        case 'x': digits = 2; break;
        case 'u': digits = 4; break;
        case 'U': digits = 8; break;
        case 'N': jinja_fail(c, "line %d: \\N{...} escapes are not supported", line);
        default:
            if (e >= '0' && e <= '7') {
                cp = (uint32_t)(e - '0');
                for (int k = 0; k < 2 && i + 1 < end && L->s[i + 1] >= '0' && L->s[i + 1] <= '7'; k++)
                    cp = cp * 8 + (uint32_t)(L->s[++i] - '0');
                char u[4];
                jbuf_put(c, &b, u, utf8_put(cp, u));
            } else {
                jbuf_putc(c, &b, '\\');
                jbuf_putc(c, &b, e);
            }
        }
        if (digits) {
            for (int k = 0; k < digits; k++) {
                int h = i + 1 < end ? hexval(L->s[i + 1]) : -1;
                if (h < 0)
                    jinja_fail(c, "line %d: truncated \\%c escape in string literal", line, e);
                cp = cp * 16 + (uint32_t)h;
                i++;
            }
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                jinja_fail(c, "line %d: invalid code point in string literal escape", line);
            char u[4];
            jbuf_put(c, &b, u, utf8_put(cp, u));
        }
    }
    jv v = jbuf_value(c, &b);
    emit(L, T_STRING, line, jstrdup(c, v.u.s.p, v.u.s.n), v.u.s.n);
}

static void lex_number(lexer *L)
{
    jctx *c = L->c;
    size_t start = L->pos;
    bool is_float = false;
    while (L->pos < L->n && (is_digit(L->s[L->pos]) || L->s[L->pos] == '_'))
        L->pos++;
    if (L->pos + 1 < L->n && L->s[L->pos] == '.' && is_digit(L->s[L->pos + 1])) {
        is_float = true;
        L->pos++;
        while (L->pos < L->n && (is_digit(L->s[L->pos]) || L->s[L->pos] == '_'))
            L->pos++;
    }
    if (L->pos < L->n && (L->s[L->pos] == 'e' || L->s[L->pos] == 'E')) {
        size_t save = L->pos++;
        if (L->pos < L->n && (L->s[L->pos] == '+' || L->s[L->pos] == '-'))
            L->pos++;
        if (L->pos < L->n && is_digit(L->s[L->pos])) {
            is_float = true;
            while (L->pos < L->n && is_digit(L->s[L->pos]))
                L->pos++;
        } else {
            L->pos = save;
        }
    }
    char tmp[64];
    size_t k = 0;
    for (size_t i = start; i < L->pos; i++) {
        if (L->s[i] == '_')
            continue;
        if (k + 1 >= sizeof tmp)
            jinja_fail(c, "line %d: number literal too long", L->line);
        tmp[k++] = L->s[i];
    }
    tmp[k] = 0;
    emit(L, is_float ? T_FLOAT : T_INT, L->line, L->s + start, L->pos - start);
    tok *t = &L->toks[L->nt - 1];
    if (is_float) {
        t->f = strtod(tmp, NULL);
    } else {
        int64_t v = 0;
        for (size_t i = 0; i < k; i++) {
            if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, tmp[i] - '0', &v))
                jinja_fail(c, "line %d: integer literal too large", L->line);
        }
        t->i = v;
    }
}

static const char *const OPS2[] = {"//", "**", "==", "!=", "<=", ">=", NULL};
static const char OPS1[] = "+-*/%~<>=()[]{}.,:|";

/* Lexes the inside of {{ }} or {% %} up to and including the end marker. Returns the index
 * just after the marker and sets *strip_after / *plus. */
static void lex_tag_body(lexer *L, bool block, bool *strip_after, bool *keep)
{
    jctx *c = L->c;
    int depth = 0; /* brackets, so that `}}` inside a dict literal is not the end */
    int open_line = L->line;
    *strip_after = false;
    *keep = false;
    for (;;) {
        while (L->pos < L->n && is_ws(L->s[L->pos])) {
            if (L->s[L->pos] == '\n')
                L->line++;
            L->pos++;
        }
        if (L->pos >= L->n)
            jinja_fail(c, "line %d: unclosed %s tag (missing '%s')", open_line, block ? "block" : "variable",
                       block ? "%}" : "}}");
        const char *p = L->s + L->pos;
        size_t left = L->n - L->pos;
        if (block) {
            if (left >= 3 && (p[0] == '-' || p[0] == '+') && p[1] == '%' && p[2] == '}') {
                *strip_after = p[0] == '-';
                *keep = p[0] == '+';
                L->pos += 3;
                emit(L, T_BLOCK_END, L->line, NULL, 0);
                return;
            }
            if (left >= 2 && p[0] == '%' && p[1] == '}') {
                L->pos += 2;
                emit(L, T_BLOCK_END, L->line, NULL, 0);
                return;
            }
        } else if (depth == 0) {
            if (left >= 3 && p[0] == '-' && p[1] == '}' && p[2] == '}') {
                *strip_after = true;
                L->pos += 3;
                emit(L, T_VAR_END, L->line, NULL, 0);
                return;
            }
            if (left >= 2 && p[0] == '}' && p[1] == '}') {
                L->pos += 2;
                emit(L, T_VAR_END, L->line, NULL, 0);
                return;
            }
        }
        char ch = p[0];
        if (ch == '\'' || ch == '"') {
            lex_string(L, ch);
        } else if (is_digit(ch)) {
            lex_number(L);
        } else if (is_name_start(ch)) {
            size_t start = L->pos;
            while (L->pos < L->n && (is_name_start(L->s[L->pos]) || is_digit(L->s[L->pos])))
                L->pos++;
            emit(L, T_NAME, L->line, jstrdup(c, L->s + start, L->pos - start), L->pos - start);
        } else {
            size_t len = 0;
            for (int k = 0; OPS2[k]; k++)
                if (left >= 2 && p[0] == OPS2[k][0] && p[1] == OPS2[k][1])
                    len = 2;
            if (!len && strchr(OPS1, ch))
                len = 1;
            if (!len)
                jinja_fail(c, "line %d: unexpected character '%c' in tag", L->line, ch);
            if (ch == '(' || ch == '[' || ch == '{')
                depth++;
            else if ((ch == ')' || ch == ']' || ch == '}') && depth > 0)
                depth--;
            emit(L, T_OP, L->line, jstrdup(c, p, len), len);
            L->pos += len;
        }
    }
}

/* After a tag end: `-` strips all following whitespace; trim_blocks drops one newline after a
 * block or comment tag unless `+` was given. Returns whether what was consumed ended a line. */
static bool after_tag(lexer *L, bool block_like, bool strip, bool keep)
{
    bool ended_line = false;
    if (strip) {
        while (L->pos < L->n && is_ws(L->s[L->pos])) {
            ended_line = L->s[L->pos] == '\n';
            if (ended_line)
                L->line++;
            L->pos++;
        }
    } else if (block_like && !keep && L->pos < L->n && L->s[L->pos] == '\n') {
        L->pos++;
        L->line++;
        ended_line = true;
    }
    return ended_line;
}

/* {% raw %} ... {% endraw %}: returns true when the block tag at L->pos (just after `{%` and its
 * modifier) is a raw block, having consumed it all. */
static bool try_raw(lexer *L, bool *line_starting)
{
    size_t p = L->pos;
    while (p < L->n && is_ws(L->s[p]))
        p++;
    if (L->n - p < 3 || memcmp(L->s + p, "raw", 3) != 0)
        return false;
    p += 3;
    while (p < L->n && is_ws(L->s[p]))
        p++;
    bool strip = false;
    if (p < L->n && (L->s[p] == '-' || L->s[p] == '+')) {
        strip = L->s[p] == '-';
        p++;
    }
    if (L->n - p < 2 || L->s[p] != '%' || L->s[p + 1] != '}')
        return false;
    int line = L->line;
    L->line += count_lines(L->s, L->pos, p + 2);
    L->pos = p + 2;
    /* Jinja applies no trim_blocks after `{% raw %}`, only `-` stripping. */
    bool body_line_start = after_tag(L, false, strip, false);
    size_t body = L->pos;
    for (size_t i = body; i + 1 < L->n; i++) {
        if (L->s[i] != '{' || L->s[i + 1] != '%')
            continue;
        size_t q = i + 2;
        bool strip_before = false, plus_before = false;
        if (q < L->n && (L->s[q] == '-' || L->s[q] == '+')) {
            strip_before = L->s[q] == '-';
            plus_before = L->s[q] == '+';
            q++;
        }
        while (q < L->n && is_ws(L->s[q]))
            q++;
        if (L->n - q < 6 || memcmp(L->s + q, "endraw", 6) != 0)
            continue;
        q += 6;
        while (q < L->n && is_ws(L->s[q]))
            q++;
        bool strip_after = false, keep = false;
        if (q < L->n && (L->s[q] == '-' || L->s[q] == '+')) {
            strip_after = L->s[q] == '-';
            keep = L->s[q] == '+';
            q++;
        }
        if (L->n - q < 2 || L->s[q] != '%' || L->s[q + 1] != '}')
            continue;
        size_t end = i;
        if (strip_before) {
            while (end > body && is_ws(L->s[end - 1]))
                end--;
        } else if (!plus_before) {
            /* lstrip_blocks applies to {% endraw %} at the start of a line. */
            size_t l = end;
            while (l > body && (L->s[l - 1] == ' ' || L->s[l - 1] == '\t'))
                l--;
            if ((l > body && L->s[l - 1] == '\n') || (l == body && body_line_start))
                end = l;
        }
        emit_text(L, body, end, L->line);
        L->line += count_lines(L->s, body, q + 2);
        L->pos = q + 2;
        *line_starting = after_tag(L, true, strip_after, keep);
        return true;
    }
    jinja_fail(L->c, "line %d: missing {%% endraw %%} for 'raw'", line);
}

static void lex(lexer *L)
{
    jctx *c = L->c;
    bool line_starting = true;
    while (L->pos < L->n) {
        size_t i = L->pos;
        while (i + 1 < L->n && !(L->s[i] == '{' && (L->s[i + 1] == '{' || L->s[i + 1] == '%' || L->s[i + 1] == '#')))
            i++;
        if (i + 1 >= L->n) {
            emit_text(L, L->pos, L->n, L->line);
            L->line += count_lines(L->s, L->pos, L->n);
            L->pos = L->n;
            break;
        }
        char kind = L->s[i + 1];
        char mod = i + 2 < L->n ? L->s[i + 2] : 0;
        size_t te = i;
        if (mod == '-') {
            while (te > L->pos && is_ws(L->s[te - 1]))
                te--;
        } else if (kind != '{' && mod != '+') {
            size_t l = te;
            while (l > L->pos && (L->s[l - 1] == ' ' || L->s[l - 1] == '\t'))
                l--;
            bool at_line_start = (l > L->pos && L->s[l - 1] == '\n') || (l == L->pos && line_starting);
            if (at_line_start)
                te = l;
        }
        int text_line = L->line;
        emit_text(L, L->pos, te, text_line);
        L->line += count_lines(L->s, L->pos, i);
        L->pos = i + 2 + ((mod == '-' || mod == '+') ? 1 : 0);
        if (kind == '#') {
            int open_line = L->line;
            size_t j = L->pos;
            while (j + 1 < L->n && !(L->s[j] == '#' && L->s[j + 1] == '}'))
                j++;
            if (j + 1 >= L->n)
                jinja_fail(c, "line %d: unclosed comment (missing '#}')", open_line);
            bool strip = j > L->pos && L->s[j - 1] == '-';
            bool keep = j > L->pos && L->s[j - 1] == '+';
            L->line += count_lines(L->s, L->pos, j);
            L->pos = j + 2;
            line_starting = after_tag(L, true, strip, keep);
            continue;
        }
        if (kind == '%' && try_raw(L, &line_starting))
            continue;
        emit(L, kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, L->line, NULL, 0);
        bool strip, keep;
        lex_tag_body(L, kind == '%', &strip, &keep);
        line_starting = after_tag(L, kind == '%', strip, keep);
    }
    emit(L, T_EOF, L->line, NULL, 0);
}

/* ---- parser ---- */

typedef struct parser {
    jctx *c;
    tok *t;
    size_t pos, n;
    int depth;
    int loop_depth;
} parser;

static tok *peek(parser *P)
{
    return &P->t[P->pos];
}

static tok *peek_at(parser *P, size_t k)
{
    size_t i = P->pos + k < P->n ? P->pos + k : P->n - 1;
    return &P->t[i];
}

static tok *next_tok(parser *P)
{
    tok *t = &P->t[P->pos];
    if (P->pos + 1 < P->n)
        P->pos++;
    return t;
}

static bool is_op(const tok *t, const char *op)
{
    return t->k == T_OP && strcmp(t->p, op) == 0;
}

static bool is_name(const tok *t, const char *name)
{
    return t->k == T_NAME && strcmp(t->p, name) == 0;
}

static const char *tok_desc(const tok *t)
{
    switch (t->k) {
    case T_EOF: return "end of template";
    case T_TEXT: return "template text";
    case T_VAR_BEGIN: return "'{{'";
    case T_VAR_END: return "'}}'";
    case T_BLOCK_BEGIN: return "'{%'";
    case T_BLOCK_END: return "'%}'";
    case T_STRING: return "a string";
    case T_INT: return "an integer";
    case T_FLOAT: return "a number";
    default: return t->p;
    }
}

static _Noreturn void syntax(parser *P, const tok *t, const char *what)
{
    jinja_fail(P->c, "line %d: expected %s, got %s", t->line, what, tok_desc(t));
}

static void expect_op(parser *P, const char *op)
{
    tok *t = peek(P);
    if (!is_op(t, op)) {
        char what[16];
        snprintf(what, sizeof what, "'%s'", op);
        syntax(P, t, what);
    }
    next_tok(P);
}

static const char *expect_name(parser *P)
{
    tok *t = peek(P);
    if (t->k != T_NAME)
        syntax(P, t, "a name");
    next_tok(P);
    return t->p;
}

static void expect_block_end(parser *P)
{
    tok *t = peek(P);
    if (t->k != T_BLOCK_END)
        syntax(P, t, "end of block tag '%}'");
    next_tok(P);
}

static jnode *node(parser *P, jnode_kind k, int line)
{
    jnode *n = jalloc(P->c, sizeof *n);
    n->kind = k;
    n->line = line;
    return n;
}

static void push(parser *P, jnodes *l, jnode *n)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        jnode **v = jalloc(P->c, cap * sizeof *v);
        if (l->n)
            memcpy(v, l->v, l->n * sizeof *v);
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = n;
}

static void enter(parser *P, int line)
{
    if (++P->depth > JINJA_MAX_DEPTH)
        jinja_fail(P->c, "line %d: template nested deeper than %d levels", line, JINJA_MAX_DEPTH);
}

static jnode *parse_expr(parser *P);
static jnode *parse_or(parser *P);
static jnode *parse_unary(parser *P, bool with_filter);
static jnode *parse_primary(parser *P);
static jnode *parse_postfix(parser *P, jnode *n);

static jnode *bin(parser *P, jnode_kind k, int op, jnode *a, jnode *b, int line)
{
    jnode *n = node(P, k, line);
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

/* Expression with an optional trailing tuple: `a, b` becomes a list. */
static jnode *parse_tuple(parser *P)
{
    int line = peek(P)->line;
    jnode *first = parse_expr(P);
    if (!is_op(peek(P), ","))
        return first;
    jnode *list = node(P, N_LIST, line);
    list->op = 1; /* tuple */
    push(P, &list->args, first);
    while (is_op(peek(P), ",")) {
        next_tok(P);
        tok *t = peek(P);
        if (t->k == T_VAR_END || t->k == T_BLOCK_END || is_op(t, ")"))
            break;
        push(P, &list->args, parse_expr(P));
    }
    return list;
}

static jnode *parse_condexpr(parser *P)
{
    jnode *a = parse_or(P);
    while (is_name(peek(P), "if")) {
        int line = next_tok(P)->line;
        jnode *cond = parse_or(P);
        jnode *n = node(P, N_COND, line);
        n->a = cond;
        n->b = a;
        if (is_name(peek(P), "else")) {
            next_tok(P);
            n->c = parse_condexpr(P);
        }
        a = n;
    }
    return a;
}

static jnode *parse_expr(parser *P)
{
    enter(P, peek(P)->line);
    jnode *n = parse_condexpr(P);
    P->depth--;
    return n;
}

static jnode *parse_not(parser *P);

static jnode *parse_and(parser *P)
{
    jnode *a = parse_not(P);
    while (is_name(peek(P), "and")) {
        int line = next_tok(P)->line;
        a = bin(P, N_AND, 0, a, parse_not(P), line);
    }
    return a;
}

static jnode *parse_or(parser *P)
{
    jnode *a = parse_and(P);
    while (is_name(peek(P), "or")) {
        int line = next_tok(P)->line;
        a = bin(P, N_OR, 0, a, parse_and(P), line);
    }
    return a;
}

static jnode *parse_math1(parser *P);

static jnode *parse_compare(parser *P)
{
    jnode *a = parse_math1(P);
    jnode *result = NULL;
    for (;;) {
        tok *t = peek(P);
        int op = 0;
        if (t->k == T_OP) {
            if (!strcmp(t->p, "=="))
                op = OP_EQ;
            else if (!strcmp(t->p, "!="))
                op = OP_NE;
            else if (!strcmp(t->p, "<"))
                op = OP_LT;
            else if (!strcmp(t->p, "<="))
                op = OP_LE;
            else if (!strcmp(t->p, ">"))
                op = OP_GT;
            else if (!strcmp(t->p, ">="))
                op = OP_GE;
        } else if (is_name(t, "in")) {
            op = OP_IN;
        } else if (is_name(t, "not") && is_name(peek_at(P, 1), "in")) {
            next_tok(P);
            op = OP_NOTIN;
        }
        if (!op)
            break;
        int line = next_tok(P)->line;
        jnode *b = parse_math1(P);
        jnode *cmp = bin(P, N_CMP, op, a, b, line);
        /* Chained comparisons: a < b < c means a < b and b < c. */
        result = result ? bin(P, N_AND, 0, result, cmp, line) : cmp;
        a = b;
    }
    return result ? result : a;
}

static jnode *parse_not(parser *P)
{
    if (is_name(peek(P), "not")) {
        int line = next_tok(P)->line;
        enter(P, line);
        jnode *n = node(P, N_NOT, line);
        n->a = parse_not(P);
        P->depth--;
        return n;
    }
    return parse_compare(P);
}

static jnode *parse_pow(parser *P)
{
    jnode *a = parse_unary(P, true);
    while (is_op(peek(P), "**")) {
        int line = next_tok(P)->line;
        a = bin(P, N_BIN, OP_POW, a, parse_unary(P, true), line);
    }
    return a;
}

static jnode *parse_math2(parser *P)
{
    jnode *a = parse_pow(P);
    for (;;) {
        tok *t = peek(P);
        int op = is_op(t, "*") ? OP_MUL : is_op(t, "/") ? OP_DIV : is_op(t, "//") ? OP_FLOORDIV
               : is_op(t, "%") ? OP_MOD : 0;
        if (!op)
            return a;
        int line = next_tok(P)->line;
        a = bin(P, N_BIN, op, a, parse_pow(P), line);
    }
}

static jnode *parse_concat(parser *P)
{
    jnode *a = parse_math2(P);
    while (is_op(peek(P), "~")) {
        int line = next_tok(P)->line;
        a = bin(P, N_BIN, OP_CONCAT, a, parse_math2(P), line);
    }
    return a;
}

static jnode *parse_math1(parser *P)
{
    jnode *a = parse_concat(P);
    for (;;) {
        tok *t = peek(P);
        int op = is_op(t, "+") ? OP_ADD : is_op(t, "-") ? OP_SUB : 0;
        if (!op)
            return a;
        int line = next_tok(P)->line;
        a = bin(P, N_BIN, op, a, parse_concat(P), line);
    }
}

/* Call arguments after '(' up to and including ')'. */
static void parse_args(parser *P, jnode *n)
{
    expect_op(P, "(");
    while (!is_op(peek(P), ")")) {
        if (n->args.n || n->kwargs.n)
            expect_op(P, ",");
        if (is_op(peek(P), ")"))
            break;
        tok *t = peek(P);
        if (is_op(t, "*") || is_op(t, "**"))
            jinja_fail(P->c, "line %d: unsupported construct: *args / **kwargs in a call", t->line);
        if (t->k == T_NAME && is_op(peek_at(P, 1), "=")) {
            next_tok(P);
            next_tok(P);
            jnode *kw = node(P, N_KWARG, t->line);
            kw->name = t->p;
            kw->a = parse_expr(P);
            push(P, &n->kwargs, kw);
        } else {
            if (n->kwargs.n)
                jinja_fail(P->c, "line %d: positional argument follows keyword argument", t->line);
            push(P, &n->args, parse_expr(P));
        }
    }
    expect_op(P, ")");
}

static const char *parse_dotted_name(parser *P)
{
    const char *name = expect_name(P);
    if (is_op(peek(P), ".")) {
        jinja_fail(P->c, "line %d: unsupported construct: dotted filter or test name '%s.'", peek(P)->line, name);
    }
    return name;
}

static jnode *parse_filter_expr(parser *P, jnode *n)
{
    for (;;) {
        tok *t = peek(P);
        if (is_op(t, "|")) {
            next_tok(P);
            jnode *f = node(P, N_FILTER, t->line);
            f->a = n;
            f->name = parse_dotted_name(P);
            if (is_op(peek(P), "("))
                parse_args(P, f);
            n = f;
        } else if (is_name(t, "is")) {
            next_tok(P);
            jnode *f = node(P, N_TEST, t->line);
            if (is_name(peek(P), "not")) {
                next_tok(P);
                f->op = 1;
            }
            f->a = n;
            f->name = parse_dotted_name(P);
            tok *u = peek(P);
            if (is_op(u, "(")) {
                parse_args(P, f);
            } else if ((u->k == T_NAME || u->k == T_STRING || u->k == T_INT || u->k == T_FLOAT || is_op(u, "[")
                        || is_op(u, "{")) && !is_name(u, "else") && !is_name(u, "or") && !is_name(u, "and")) {
                /* As in Jinja, any other name here is the test's argument (so `x is none if c`
                 * is a syntax error there too). */
                if (is_name(u, "is"))
                    jinja_fail(P->c, "line %d: you cannot chain multiple tests with 'is'", u->line);
                jnode *arg = parse_postfix(P, parse_primary(P));
                push(P, &f->args, arg);
            }
            n = f;
        } else if (is_op(t, "(")) {
            jnode *call = node(P, N_CALL, t->line);
            call->a = n;
            parse_args(P, call);
            n = call;
        } else {
            return n;
        }
    }
}

static jnode *parse_unary(parser *P, bool with_filter)
{
    tok *t = peek(P);
    enter(P, t->line);
    jnode *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        next_tok(P);
        n = node(P, is_op(t, "-") ? N_NEG : N_POS, t->line);
        n->a = parse_unary(P, false);
    } else {
        n = parse_primary(P);
    }
    n = parse_postfix(P, n);
    if (with_filter)
        n = parse_filter_expr(P, n);
    P->depth--;
    return n;
}

static jnode *lit(parser *P, jv v, int line)
{
    jnode *n = node(P, N_LIT, line);
    n->lit = v;
    return n;
}

static jnode *parse_primary(parser *P)
{
    tok *t = next_tok(P);
    switch (t->k) {
    case T_NAME:
        if (!strcmp(t->p, "true") || !strcmp(t->p, "True"))
            return lit(P, jv_bool(true), t->line);
        if (!strcmp(t->p, "false") || !strcmp(t->p, "False"))
            return lit(P, jv_bool(false), t->line);
        if (!strcmp(t->p, "none") || !strcmp(t->p, "None"))
            return lit(P, jv_none(), t->line);
        {
            jnode *n = node(P, N_NAME, t->line);
            n->name = t->p;
            n->name_len = t->n;
            return n;
        }
    case T_STRING: {
        /* Adjacent literals concatenate. */
        if (peek(P)->k != T_STRING)
            return lit(P, jv_strn(t->p, t->n), t->line);
        jbuf b = {0};
        jbuf_put(P->c, &b, t->p, t->n);
        while (peek(P)->k == T_STRING) {
            tok *u = next_tok(P);
            jbuf_put(P->c, &b, u->p, u->n);
        }
        return lit(P, jbuf_value(P->c, &b), t->line);
    }
    case T_INT: return lit(P, jv_int(t->i), t->line);
    case T_FLOAT: return lit(P, jv_float(t->f), t->line);
    case T_OP:
        if (!strcmp(t->p, "(")) {
            if (is_op(peek(P), ")")) {
                next_tok(P);
                jnode *empty = node(P, N_LIST, t->line);
                empty->op = 1;
                return empty;
            }
            jnode *n = parse_tuple(P);
            expect_op(P, ")");
            return n;
        }
        if (!strcmp(t->p, "[")) {
            jnode *n = node(P, N_LIST, t->line);
            while (!is_op(peek(P), "]")) {
                if (n->args.n)
                    expect_op(P, ",");
                if (is_op(peek(P), "]"))
                    break;
                push(P, &n->args, parse_expr(P));
            }
            expect_op(P, "]");
            return n;
        }
        if (!strcmp(t->p, "{")) {
            jnode *n = node(P, N_DICT, t->line);
            while (!is_op(peek(P), "}")) {
                if (n->args.n)
                    expect_op(P, ",");
                if (is_op(peek(P), "}"))
                    break;
                push(P, &n->args, parse_expr(P));
                expect_op(P, ":");
                push(P, &n->args2, parse_expr(P));
            }
            expect_op(P, "}");
            return n;
        }
        break;
    default: break;
    }
    syntax(P, t, "an expression");
}

static jnode *parse_subscript_part(parser *P)
{
    tok *t = peek(P);
    if (is_op(t, ":") || is_op(t, "]"))
        return NULL;
    return parse_expr(P);
}

static jnode *parse_postfix(parser *P, jnode *n)
{
    for (;;) {
        tok *t = peek(P);
        if (is_op(t, ".")) {
            next_tok(P);
            tok *u = next_tok(P);
            if (u->k == T_NAME) {
                jnode *a = node(P, N_ATTR, t->line);
                a->a = n;
                a->name = u->p;
                n = a;
            } else if (u->k == T_INT) {
                jnode *a = node(P, N_ITEM, t->line);
                a->a = n;
                a->b = lit(P, jv_int(u->i), u->line);
                n = a;
            } else {
                syntax(P, u, "an attribute name");
            }
        } else if (is_op(t, "[")) {
            next_tok(P);
            jnode *start = parse_subscript_part(P);
            if (is_op(peek(P), ":")) {
                next_tok(P);
                jnode *s = node(P, N_SLICE, t->line);
                s->a = n;
                s->b = start;
                s->c = parse_subscript_part(P);
                if (is_op(peek(P), ":")) {
                    next_tok(P);
                    s->d = parse_subscript_part(P);
                }
                n = s;
            } else {
                if (!start)
                    syntax(P, peek(P), "a subscript");
                if (is_op(peek(P), ","))
                    jinja_fail(P->c, "line %d: unsupported construct: tuple subscript", t->line);
                jnode *it = node(P, N_ITEM, t->line);
                it->a = n;
                it->b = start;
                n = it;
            }
            expect_op(P, "]");
        } else if (is_op(t, "(")) {
            jnode *call = node(P, N_CALL, t->line);
            call->a = n;
            parse_args(P, call);
            n = call;
        } else {
            return n;
        }
    }
}

/* ---- statements ---- */

static const char *parse_body(parser *P, jnodes *out, const char *const *ends, const char *opener, int open_line);

static const char *const ENDS_IF[] = {"elif", "else", "endif", NULL};
static const char *const ENDS_ENDIF[] = {"endif", NULL};
static const char *const ENDS_FOR[] = {"else", "endfor", NULL};
static const char *const ENDS_ENDFOR[] = {"endfor", NULL};
static const char *const ENDS_SET[] = {"endset", NULL};
static const char *const ENDS_MACRO[] = {"endmacro", NULL};
static const char *const ENDS_FILTER[] = {"endfilter", NULL};
static const char *const ENDS_GENERATION[] = {"endgeneration", NULL};

static jnode *parse_if(parser *P, int line)
{
    jnode *n = node(P, N_IF, line);
    n->a = parse_tuple(P);
    expect_block_end(P);
    const char *end = parse_body(P, &n->body, ENDS_IF, "if", line);
    if (!strcmp(end, "elif")) {
        push(P, &n->body2, parse_if(P, P->t[P->pos - 1].line));
    } else if (!strcmp(end, "else")) {
        expect_block_end(P);
        parse_body(P, &n->body2, ENDS_ENDIF, "if", line);
        expect_block_end(P);
    } else {
        expect_block_end(P);
    }
    return n;
}

static jnode *name_node(parser *P, const char *name, int line)
{
    jnode *n = node(P, N_NAME, line);
    n->name = name;
    n->name_len = strlen(name);
    return n;
}

static void parse_targets(parser *P, jnodes *targets)
{
    bool paren = is_op(peek(P), "(");
    if (paren)
        next_tok(P);
    for (;;) {
        int line = peek(P)->line;
        push(P, targets, name_node(P, expect_name(P), line));
        if (!is_op(peek(P), ","))
            break;
        next_tok(P);
    }
    if (paren)
        expect_op(P, ")");
}

static jnode *parse_for(parser *P, int line)
{
    jnode *n = node(P, N_FOR, line);
    parse_targets(P, &n->targets);
    if (!is_name(peek(P), "in"))
        syntax(P, peek(P), "'in'");
    next_tok(P);
    /* The iterable has no inline if: a trailing `if` filters the loop. */
    n->a = parse_or(P);
    if (is_op(peek(P), ",")) {
        jnode *list = node(P, N_LIST, line);
        list->op = 1;
        push(P, &list->args, n->a);
        while (is_op(peek(P), ",")) {
            next_tok(P);
            push(P, &list->args, parse_or(P));
        }
        n->a = list;
    }
    if (is_name(peek(P), "if")) {
        next_tok(P);
        n->b = parse_expr(P);
    }
    if (is_name(peek(P), "recursive"))
        jinja_fail(P->c, "line %d: unsupported construct: recursive for loop", line);
    expect_block_end(P);
    P->loop_depth++;
    const char *end = parse_body(P, &n->body, ENDS_FOR, "for", line);
    P->loop_depth--;
    if (!strcmp(end, "else")) {
        expect_block_end(P);
        parse_body(P, &n->body2, ENDS_ENDFOR, "for", line);
    }
    expect_block_end(P);
    return n;
}

static jnode *parse_set(parser *P, int line)
{
    int name_line = peek(P)->line;
    const char *name = expect_name(P);
    if (is_op(peek(P), ".")) {
        next_tok(P);
        jnode *target = node(P, N_ATTR, name_line);
        target->a = name_node(P, name, name_line);
        target->name = expect_name(P);
        expect_op(P, "=");
        jnode *n = node(P, N_SET, line);
        n->a = target;
        n->b = parse_tuple(P);
        expect_block_end(P);
        return n;
    }
    jnode *n = node(P, N_SET, line);
    push(P, &n->targets, name_node(P, name, name_line));
    while (is_op(peek(P), ",")) {
        next_tok(P);
        int l2 = peek(P)->line;
        push(P, &n->targets, name_node(P, expect_name(P), l2));
    }
    if (is_op(peek(P), "=")) {
        next_tok(P);
        n->b = parse_tuple(P);
        expect_block_end(P);
        return n;
    }
    if (n->targets.n == 1 && peek(P)->k == T_BLOCK_END) {
        next_tok(P);
        n->kind = N_SETBLOCK;
        parse_body(P, &n->body, ENDS_SET, "set", line);
        expect_block_end(P);
        return n;
    }
    if (is_op(peek(P), "|"))
        jinja_fail(P->c, "line %d: unsupported construct: filtered set block", line);
    syntax(P, peek(P), "'='");
}

static jnode *parse_macro(parser *P, int line)
{
    jnode *n = node(P, N_MACRO, line);
    n->name = expect_name(P);
    expect_op(P, "(");
    while (!is_op(peek(P), ")")) {
        if (n->args.n)
            expect_op(P, ",");
        if (is_op(peek(P), ")"))
            break;
        int pl = peek(P)->line;
        const char *pname = expect_name(P);
        if (is_op(peek(P), "=")) {
            next_tok(P);
            jnode *kw = node(P, N_KWARG, pl);
            kw->name = pname;
            kw->a = parse_expr(P);
            push(P, &n->args, kw);
        } else {
            push(P, &n->args, name_node(P, pname, pl));
        }
    }
    expect_op(P, ")");
    expect_block_end(P);
    int saved = P->loop_depth;
    P->loop_depth = 0;
    parse_body(P, &n->body, ENDS_MACRO, "macro", line);
    P->loop_depth = saved;
    expect_block_end(P);
    return n;
}

static jnode *parse_filter_block(parser *P, int line)
{
    jnode *n = node(P, N_FILTERBLOCK, line);
    jnode *chain = node(P, N_BODYVALUE, line);
    for (;;) {
        jnode *f = node(P, N_FILTER, peek(P)->line);
        f->a = chain;
        f->name = parse_dotted_name(P);
        if (is_op(peek(P), "("))
            parse_args(P, f);
        chain = f;
        if (!is_op(peek(P), "|"))
            break;
        next_tok(P);
    }
    n->a = chain;
    expect_block_end(P);
    parse_body(P, &n->body, ENDS_FILTER, "filter", line);
    expect_block_end(P);
    return n;
}

static bool in_list(const char *s, const char *const *list)
{
    for (; list && *list; list++)
        if (!strcmp(s, *list))
            return true;
    return false;
}

/* Parses statements until one of ends (returned, with the position after its name) or EOF
 * (only allowed when ends is NULL). */
static const char *parse_body(parser *P, jnodes *out, const char *const *ends, const char *opener, int open_line)
{
    enter(P, open_line);
    for (;;) {
        tok *t = next_tok(P);
        switch (t->k) {
        case T_EOF:
            if (ends)
                jinja_fail(P->c, "line %d: unclosed '%s' block (missing {%% end%s %%})", open_line, opener, opener);
            P->depth--;
            return NULL;
        case T_TEXT: {
            jnode *n = node(P, N_TEXT, t->line);
            n->name = t->p;
            n->name_len = t->n;
            push(P, out, n);
            break;
        }
        case T_VAR_BEGIN: {
            jnode *n = node(P, N_OUTPUT, t->line);
            n->a = parse_tuple(P);
            tok *e = peek(P);
            if (e->k != T_VAR_END)
                syntax(P, e, "end of print statement '}}'");
            next_tok(P);
            push(P, out, n);
            break;
        }
        case T_BLOCK_BEGIN: {
            tok *k = next_tok(P);
            if (k->k != T_NAME)
                syntax(P, k, "a statement name");
            const char *kw = k->p;
            if (in_list(kw, ends)) {
                P->depth--;
                return kw;
            }
            int line = k->line;
            if (!strcmp(kw, "if")) {
                push(P, out, parse_if(P, line));
            } else if (!strcmp(kw, "for")) {
                push(P, out, parse_for(P, line));
            } else if (!strcmp(kw, "set")) {
                push(P, out, parse_set(P, line));
            } else if (!strcmp(kw, "macro")) {
                push(P, out, parse_macro(P, line));
            } else if (!strcmp(kw, "break") || !strcmp(kw, "continue")) {
                if (P->loop_depth == 0)
                    jinja_fail(P->c, "line %d: '%s' outside of a for loop", line, kw);
                push(P, out, node(P, kw[0] == 'b' ? N_BREAK : N_CONTINUE, line));
                expect_block_end(P);
            } else if (!strcmp(kw, "filter")) {
                push(P, out, parse_filter_block(P, line));
            } else if (!strcmp(kw, "generation")) {
                jnode *n = node(P, N_PASSBLOCK, line);
                expect_block_end(P);
                parse_body(P, &n->body, ENDS_GENERATION, "generation", line);
                expect_block_end(P);
                push(P, out, n);
            } else if (!strcmp(kw, "elif") || !strcmp(kw, "else") || !strncmp(kw, "end", 3)) {
                jinja_fail(P->c, "line %d: unexpected '%s'%s%s", line, kw, opener ? " inside '" : "",
                           opener ? opener : "");
            } else if (!strcmp(kw, "call") || !strcmp(kw, "include") || !strcmp(kw, "import")
                       || !strcmp(kw, "from") || !strcmp(kw, "extends") || !strcmp(kw, "block")
                       || !strcmp(kw, "with") || !strcmp(kw, "do") || !strcmp(kw, "autoescape")
                       || !strcmp(kw, "trans")) {
                jinja_fail(P->c, "line %d: unsupported construct: '%s' statement", line, kw);
            } else {
                jinja_fail(P->c, "line %d: unknown statement '%s'", line, kw);
            }
            break;
        }
        default: syntax(P, t, "template text or a tag");
        }
    }
}

jnodes jinja_parse(jctx *c, const char *source, size_t len)
{
    /* Newlines normalised to \n; one trailing newline dropped. */
    char *s = jalloc(c, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (source[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && source[i + 1] == '\n')
                i++;
        } else {
            s[n++] = source[i];
        }
    }
    if (n > 0 && s[n - 1] == '\n')
        n--;
    s[n] = 0;
    lexer L = {.c = c, .s = s, .n = n, .line = 1};
    lex(&L);
    parser P = {.c = c, .t = L.toks, .n = L.nt};
    jnodes body = {0};
    parse_body(&P, &body, NULL, NULL, 1);
    return body;
}
