/* Values of punie's Jinja subset: arena-allocated, immutable except namespace objects.
 * Errors inside the interpreter are raised with jinja_fail(), which long-jumps to the
 * entry point (compile or render) that owns the arena; nothing else needs freeing. */
#ifndef PUNIE_TOKENIZER_JINJA_VALUE_H
#define PUNIE_TOKENIZER_JINJA_VALUE_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "util/err.h"

/* ---- arena and error context ---- */

typedef struct jarena_block jarena_block;
typedef struct jarena {
    jarena_block *head;
    size_t used_total; /* bytes handed out, checked against cap */
    size_t cap;
} jarena;

typedef struct jctx {
    jarena *arena;
    perr *err;
    jmp_buf *jump;
    bool raised; /* the error came from the template's raise_exception() */
} jctx;

/* Sets err (printf-style) and jumps back to the entry point. */
_Noreturn void jinja_fail(jctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Like jinja_fail but the message is already in c->err. */
_Noreturn void jinja_rethrow(jctx *c);

void jarena_init(jarena *a, size_t cap);
void jarena_free(jarena *a);
void *jalloc(jctx *c, size_t n);                /* zeroed; fails the context when over the cap */
char *jstrdup(jctx *c, const char *s, size_t n); /* NUL-terminated copy */

/* ---- values ---- */

typedef enum {
    JV_UNDEF,
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST,
    JV_DICT,
    JV_FUNC,
} jv_kind;

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jfunc jfunc;

typedef struct jv {
    jv_kind k;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const char *p; /* not necessarily NUL-terminated; for JV_UNDEF: the missing name or NULL */
            size_t n;
        } s;
        jlist *l;
        jdict *d;
        jfunc *fn;
    } u;
} jv;

/* What Python type a list value stands for. Filters such as map/select return generators and
 * dict.items() returns a view; they iterate like lists but print, index, test and serialise
 * differently, which matters for byte-exact output. */
typedef enum { JL_LIST, JL_TUPLE, JL_GENERATOR, JL_KEYS, JL_VALUES, JL_ITEMS } jlist_kind;

struct jlist {
    jv *items;
    size_t n, cap;
    jlist_kind kind;
    int depth; /* nesting below this list, bounded so that equality and ordering cannot recurse deeply */
};

struct jdict {
    jv *keys;
    jv *vals;
    size_t n, cap;
    uint32_t *index; /* hash index for bigger dicts, or NULL */
    size_t index_cap;
    int depth;         /* as for lists (namespaces, compared by identity, do not count) */
    bool is_namespace; /* namespace() objects accept `set ns.attr = ...` */
};

/* Callables: macros, bound methods of strings/dicts, and global functions. */
typedef enum { JF_MACRO, JF_METHOD, JF_GLOBAL } jfunc_kind;
struct jfunc {
    jfunc_kind kind;
    const char *name;
    jv self;                  /* JF_METHOD: the receiver */
    const void *macro;        /* JF_MACRO: the definition node */
    void *closure;            /* JF_MACRO: scope the macro was defined in */
};

static inline jv jv_undef(const char *hint) { jv v = {.k = JV_UNDEF}; v.u.s.p = hint; return v; }
static inline jv jv_none(void) { return (jv){.k = JV_NONE}; }
static inline jv jv_bool(bool b) { jv v = {.k = JV_BOOL}; v.u.b = b; return v; }
static inline jv jv_int(int64_t i) { jv v = {.k = JV_INT}; v.u.i = i; return v; }
static inline jv jv_float(double f) { jv v = {.k = JV_FLOAT}; v.u.f = f; return v; }
static inline jv jv_strn(const char *p, size_t n) { jv v = {.k = JV_STR}; v.u.s.p = p; v.u.s.n = n; return v; }

jv jv_str(jctx *c, const char *s); /* copies */
jv jv_list_new(jctx *c, size_t cap_hint);
void jv_list_push(jctx *c, jv list, jv item);
jv jv_dict_new(jctx *c);
/* Inserts or replaces (insertion order kept). */
void jv_dict_set(jctx *c, jv dict, jv key, jv val);
void jv_dict_set_str(jctx *c, jv dict, const char *key, jv val);
/* Returns true and fills *out when found. */
bool jv_dict_get(jv dict, jv key, jv *out);
bool jv_dict_get_str(jv dict, const char *key, jv *out);

const char *jv_type_name(jv v); /* Python-style: 'str', 'int', 'NoneType', ... */
bool jv_truthy(jv v);
bool jv_equal(jv a, jv b);

/* ---- growable byte buffer (arena-backed) ---- */

typedef struct jbuf {
    char *p;
    size_t n, cap;
    size_t limit; /* fail when n would exceed it */
} jbuf;

void jbuf_put(jctx *c, jbuf *b, const char *s, size_t n);
static inline void jbuf_puts(jctx *c, jbuf *b, const char *s);
void jbuf_putc(jctx *c, jbuf *b, char ch);
jv jbuf_value(jctx *c, jbuf *b); /* the contents as a string value */

/* ---- text forms ---- */

/* str(v) as Python/Jinja prints it (Undefined -> "", None -> "None", lists as repr). */
void jv_write_str(jctx *c, jbuf *b, jv v);
jv jv_to_str(jctx *c, jv v);
/* repr(v) as Python prints it. */
void jv_write_repr(jctx *c, jbuf *b, jv v, int depth);
/* Python float repr: shortest round-trip digits, "1.0", "1e-06", "inf". */
void jv_format_float(double f, char *out, size_t outsz);

typedef struct jjson_opts {
    int indent;        /* < 0: none */
    const char *indent_str; /* when not NULL, used instead of indent spaces */
    bool ensure_ascii;
    bool sort_keys;
} jjson_opts;
/* json.dumps(v, ...) with Python's default separators. */
void jv_write_json(jctx *c, jbuf *b, jv v, const jjson_opts *o, int depth);

/* cJSON -> value. Numbers: a finite double with no fractional part and |x| < 2^53 becomes an
 * int (cJSON does not keep the source text, so "1.0" in input JSON reads as the int 1). */
jv jv_from_cjson(jctx *c, const cJSON *j, int depth);

#define JINJA_MAX_DEPTH 256 /* nesting of values, expressions, statements and calls */

static inline void jbuf_puts(jctx *c, jbuf *b, const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    jbuf_put(c, b, s, n);
}

/* ---- UTF-8 helpers ---- */

/* Decodes one code point at s[0..n); returns its byte length (invalid bytes count as 1 byte
 * holding the byte value). */
size_t utf8_next(const char *s, size_t n, uint32_t *cp);
size_t utf8_put(uint32_t cp, char out[4]);
size_t utf8_count(const char *s, size_t n);

#endif
