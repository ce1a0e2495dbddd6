/* Jinja subset evaluator.
 *
 * Semantics follow Jinja2's ImmutableSandboxedEnvironment with the default Undefined, as used by
 * Hugging Face transformers: undefined values print as "", are falsy and iterate as empty, but
 * attribute/item access on them, arithmetic with them and calling them are errors; attribute
 * access on a defined value that lacks it gives undefined; lists and dicts cannot be modified
 * (namespace() objects can, through `set ns.attr = ...`). */
#include "tokenizer/jinja_eval.h"

#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wctype.h>

typedef struct scope scope;
struct scope {
    scope *parent;
    jv vars;       /* dict */
    bool captured; /* a macro closes over it, so it must not be reused */
};

typedef struct ev {
    jctx *c;
    jbuf *out;
    jv globals;
    const jinja_limits *lim;
    uint64_t steps;
    int depth;
    int call_depth;
    jv body_value; /* the captured body inside a filter block */
    locale_t utf8;
} ev;

enum { FLOW_NONE, FLOW_BREAK, FLOW_CONTINUE };

#define C (e->c)

static jv eval(ev *e, scope *s, const jnode *n);
static int exec_body(ev *e, scope *s, const jnodes *body);
static jv apply_filter(ev *e, scope *s, const char *name, jv v, jv *args, size_t nargs, const char **kwn,
                       jv *kwv, size_t nkw, int line);
static bool apply_test(ev *e, const char *name, jv v, jv *args, size_t nargs, int line);

static void step(ev *e, int line)
{
    if (++e->steps > e->lim->max_steps)
        jinja_fail(C, "line %d: template exceeded %llu evaluation steps", line,
                   (unsigned long long)e->lim->max_steps);
}

static _Noreturn void fail_undefined(ev *e, jv v, int line)
{
    if (v.u.s.p)
        jinja_fail(C, "line %d: %s", line, v.u.s.p);
    jinja_fail(C, "line %d: value is undefined", line);
}

static jv undef_msg(ev *e, const char *fmt, const char *a, const char *b)
{
    char tmp[512];
    snprintf(tmp, sizeof tmp, fmt, a, b);
    return jv_undef(jstrdup(C, tmp, strlen(tmp)));
}

static const char *obj_desc(jv v)
{
    switch (v.k) {
    case JV_DICT: return "dict object";
    case JV_LIST: return "list object";
    case JV_STR: return "str object";
    case JV_INT: return "int object";
    case JV_FLOAT: return "float object";
    case JV_BOOL: return "bool object";
    case JV_NONE: return "None";
    default: return "object";
    }
}

static char *cstr(ev *e, jv s)
{
    return jstrdup(C, s.u.s.p, s.u.s.n);
}

/* ---- scopes ---- */

static scope *scope_new(ev *e, scope *parent)
{
    scope *s = jalloc(C, sizeof *s);
    s->parent = parent;
    s->vars = jv_dict_new(C);
    return s;
}

static void scope_set(ev *e, scope *s, const char *name, jv v)
{
    jv_dict_set(C, s->vars, jv_strn(name, strlen(name)), v);
}

static jv make_func(ev *e, jfunc_kind kind, const char *name, jv self)
{
    jv v = {.k = JV_FUNC};
    v.u.fn = jalloc(C, sizeof *v.u.fn);
    v.u.fn->kind = kind;
    v.u.fn->name = name;
    v.u.fn->self = self;
    return v;
}

static const char *const GLOBAL_FUNCS[] = {"range", "namespace", "dict", "raise_exception", "strftime_now", NULL};

static jv lookup(ev *e, scope *s, const char *name, size_t len)
{
    jv key = jv_strn(name, len), v;
    for (; s; s = s->parent)
        if (jv_dict_get(s->vars, key, &v))
            return v;
    if (jv_dict_get(e->globals, key, &v))
        return v;
    for (int i = 0; GLOBAL_FUNCS[i]; i++)
        if (!strcmp(name, GLOBAL_FUNCS[i]))
            return make_func(e, JF_GLOBAL, GLOBAL_FUNCS[i], jv_none());
    return undef_msg(e, "'%s' is undefined", name, "");
}

/* ---- attribute and item access ---- */

static const char *const DICT_METHODS[] = {"get", "keys", "values", "items", "copy", "pop", "popitem",
                                           "setdefault", "update", "clear", "fromkeys", NULL};
static const char *const STR_METHODS[] = {
    "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format",
    "format_map", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier",
    "islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower",
    "lstrip", "maketrans", "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex",
    "rjust", "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase",
    "title", "translate", "upper", "zfill", NULL};
static const char *const LIST_METHODS[] = {"append", "clear", "copy", "count", "extend", "index", "insert",
                                           "pop", "remove", "reverse", "sort", NULL};

static int find_name(const char *const *list, const char *name, size_t len)
{
    for (int i = 0; list[i]; i++)
        if (strlen(list[i]) == len && !memcmp(list[i], name, len))
            return i;
    return -1;
}

static jv method_of(ev *e, jv obj, const char *name, size_t len, bool *found)
{
    const char *const *list = obj.k == JV_DICT && !obj.u.d->is_namespace ? DICT_METHODS
                            : obj.k == JV_STR ? STR_METHODS
                            : obj.k == JV_LIST && obj.u.l->kind <= JL_TUPLE ? LIST_METHODS : NULL;
    int i = list ? find_name(list, name, len) : -1;
    *found = i >= 0;
    if (i < 0)
        return jv_undef(NULL);
    return make_func(e, JF_METHOD, list[i], obj);
}

static jv get_attr(ev *e, jv obj, const char *name, size_t len, int line)
{
    if (obj.k == JV_UNDEF)
        fail_undefined(e, obj, line);
    bool found;
    jv m = method_of(e, obj, name, len, &found);
    if (found)
        return m;
    jv v;
    if (obj.k == JV_DICT && jv_dict_get(obj, jv_strn(name, len), &v))
        return v;
    return undef_msg(e, "'%s' has no attribute '%s'", obj_desc(obj), jstrdup(C, name, len));
}

static bool as_index(jv k, int64_t *i)
{
    if (k.k == JV_INT) {
        *i = k.u.i;
        return true;
    }
    if (k.k == JV_BOOL) {
        *i = k.u.b;
        return true;
    }
    return false;
}

/* Byte offset of code point index i in s (i <= count). */
static size_t cp_offset(jv s, size_t i)
{
    size_t off = 0;
    uint32_t cp;
    while (i-- > 0 && off < s.u.s.n)
        off += utf8_next(s.u.s.p + off, s.u.s.n - off, &cp);
    return off;
}

static jv get_item(ev *e, jv obj, jv key, int line)
{
    if (obj.k == JV_UNDEF)
        fail_undefined(e, obj, line);
    int64_t i;
    jv v;
    switch (obj.k) {
    case JV_DICT:
        if (jv_dict_get(obj, key, &v))
            return v;
        break;
    case JV_LIST:
        if (obj.u.l->kind <= JL_TUPLE && as_index(key, &i)) {
            int64_t n = (int64_t)obj.u.l->n;
            if (i < 0)
                i += n;
            if (i >= 0 && i < n)
                return obj.u.l->items[i];
            return undef_msg(e, "%s: list index out of range%s", "list object", "");
        }
        break;
    case JV_STR:
        if (as_index(key, &i)) {
            int64_t n = (int64_t)utf8_count(obj.u.s.p, obj.u.s.n);
            if (i < 0)
                i += n;
            if (i >= 0 && i < n) {
                size_t a = cp_offset(obj, (size_t)i);
                uint32_t cp;
                size_t len = utf8_next(obj.u.s.p + a, obj.u.s.n - a, &cp);
                return jv_strn(obj.u.s.p + a, len);
            }
            return undef_msg(e, "%s: string index out of range%s", "str object", "");
        }
        break;
    default: break;
    }
    if (key.k == JV_STR) {
        bool found;
        jv m = method_of(e, obj, key.u.s.p, key.u.s.n, &found);
        if (found)
            return m;
        return undef_msg(e, "'%s' has no attribute '%s'", obj_desc(obj), cstr(e, key));
    }
    jbuf b = {0};
    jv_write_repr(C, &b, key, 0);
    return undef_msg(e, "'%s' has no item %s", obj_desc(obj), b.p ? b.p : "");
}

/* Python slice index normalisation. */
static void slice_indices(ev *e, jv jstart, jv jstop, jv jstep, int64_t len, int64_t *start, int64_t *stop,
                          int64_t *stepv, int line)
{
    int64_t st = 1;
    if (jstep.k != JV_NONE && jstep.k != JV_UNDEF && !as_index(jstep, &st))
        jinja_fail(C, "line %d: slice indices must be integers or None", line);
    if (st == 0)
        jinja_fail(C, "line %d: slice step cannot be zero", line);
    int64_t lo, hi;
    if (st > 0) {
        lo = 0;
        hi = len;
    } else {
        lo = -1;
        hi = len - 1;
    }
    int64_t a = st > 0 ? lo : hi, b = st > 0 ? hi : lo;
    if (jstart.k != JV_NONE && jstart.k != JV_UNDEF) {
        if (!as_index(jstart, &a))
            jinja_fail(C, "line %d: slice indices must be integers or None", line);
        if (a < 0) {
            a += len;
            if (a < lo)
                a = lo;
        } else if (a > hi) {
            a = hi;
        }
    }
    if (jstop.k != JV_NONE && jstop.k != JV_UNDEF) {
        if (!as_index(jstop, &b))
            jinja_fail(C, "line %d: slice indices must be integers or None", line);
        if (b < 0) {
            b += len;
            if (b < lo)
                b = lo;
        } else if (b > hi) {
            b = hi;
        }
    }
    *start = a;
    *stop = b;
    *stepv = st;
}

static jv do_slice(ev *e, jv obj, jv a, jv b, jv st, int line)
{
    if (obj.k == JV_UNDEF)
        fail_undefined(e, obj, line);
    if (obj.k == JV_LIST && obj.u.l->kind <= JL_TUPLE) {
        int64_t start, stop, stp;
        slice_indices(e, a, b, st, (int64_t)obj.u.l->n, &start, &stop, &stp, line);
        jv out = jv_list_new(C, 0);
        out.u.l->kind = obj.u.l->kind;
        for (int64_t i = start; stp > 0 ? i < stop : i > stop; i += stp)
            jv_list_push(C, out, obj.u.l->items[i]);
        return out;
    }
    if (obj.k == JV_STR) {
        /* Code point offsets, so that slicing never splits a character. */
        size_t n = utf8_count(obj.u.s.p, obj.u.s.n);
        size_t *off = jalloc(C, (n + 1) * sizeof *off);
        size_t o = 0;
        uint32_t cp;
        for (size_t i = 0; i < n; i++) {
            off[i] = o;
            o += utf8_next(obj.u.s.p + o, obj.u.s.n - o, &cp);
        }
        off[n] = o;
        int64_t start, stop, stp;
        slice_indices(e, a, b, st, (int64_t)n, &start, &stop, &stp, line);
        if (stp == 1)
            return start < stop ? jv_strn(obj.u.s.p + off[start], off[stop] - off[start]) : jv_strn("", 0);
        jbuf out = {0};
        for (int64_t i = start; stp > 0 ? i < stop : i > stop; i += stp)
            jbuf_put(C, &out, obj.u.s.p + off[i], off[i + 1] - off[i]);
        return jbuf_value(C, &out);
    }
    return undef_msg(e, "'%s' is not sliceable%s", obj_desc(obj), "");
}

/* ---- conversions ---- */

static bool is_num(jv v)
{
    return v.k == JV_INT || v.k == JV_FLOAT || v.k == JV_BOOL;
}

static double num_f(jv v)
{
    return v.k == JV_FLOAT ? v.u.f : v.k == JV_INT ? (double)v.u.i : (double)v.u.b;
}

static int64_t num_i(jv v)
{
    return v.k == JV_INT ? v.u.i : (int64_t)v.u.b;
}

/* The items of an iterable value, as a Python for loop sees them. */
static jv iter_list(ev *e, jv v, int line)
{
    switch (v.k) {
    case JV_LIST: return v;
    case JV_UNDEF: return jv_list_new(C, 0);
    case JV_DICT: {
        if (v.u.d->is_namespace)
            jinja_fail(C, "line %d: 'Namespace' object is not iterable", line);
        jv out = jv_list_new(C, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++)
            jv_list_push(C, out, v.u.d->keys[i]);
        return out;
    }
    case JV_STR: {
        jv out = jv_list_new(C, 0);
        size_t o = 0;
        uint32_t cp;
        while (o < v.u.s.n) {
            size_t len = utf8_next(v.u.s.p + o, v.u.s.n - o, &cp);
            jv_list_push(C, out, jv_strn(v.u.s.p + o, len));
            o += len;
        }
        return out;
    }
    default: jinja_fail(C, "line %d: '%s' object is not iterable", line, jv_type_name(v));
    }
}

static void check_defined(ev *e, jv v, int line)
{
    if (v.k == JV_UNDEF)
        fail_undefined(e, v, line);
}

/* ---- arithmetic and comparison ---- */

static _Noreturn void bad_operands(ev *e, const char *op, jv a, jv b, int line)
{
    check_defined(e, a, line);
    check_defined(e, b, line);
    jinja_fail(C, "line %d: unsupported operand type(s) for %s: '%s' and '%s'", line, op, jv_type_name(a),
               jv_type_name(b));
}

static jv repeat(ev *e, jv seq, int64_t times, int line)
{
    if (times <= 0)
        return seq.k == JV_STR ? jv_strn("", 0) : jv_list_new(C, 0);
    size_t unit = seq.k == JV_STR ? seq.u.s.n : seq.u.l->n;
    if (unit && (uint64_t)times > (uint64_t)(e->lim->max_output / unit + 1))
        jinja_fail(C, "line %d: repetition result too large", line);
    if (seq.k == JV_STR) {
        jbuf b = {0};
        for (int64_t i = 0; i < times; i++)
            jbuf_put(C, &b, seq.u.s.p, seq.u.s.n);
        return jbuf_value(C, &b);
    }
    jv out = jv_list_new(C, 0);
    out.u.l->kind = seq.u.l->kind;
    for (int64_t i = 0; i < times; i++)
        for (size_t k = 0; k < seq.u.l->n; k++)
            jv_list_push(C, out, seq.u.l->items[k]);
    return out;
}

static jv binop(ev *e, int op, jv a, jv b, int line)
{
    static const char *const names[] = {"", "+", "-", "*", "/", "//", "%", "**", "~"};
    if (op == OP_CONCAT) {
        jbuf buf = {0};
        jv_write_str(C, &buf, a);
        jv_write_str(C, &buf, b);
        return jbuf_value(C, &buf);
    }
    if (op == OP_ADD) {
        if (a.k == JV_STR && b.k == JV_STR) {
            jbuf buf = {0};
            jbuf_put(C, &buf, a.u.s.p, a.u.s.n);
            jbuf_put(C, &buf, b.u.s.p, b.u.s.n);
            return jbuf_value(C, &buf);
        }
        if (a.k == JV_LIST && b.k == JV_LIST && a.u.l->kind == b.u.l->kind && a.u.l->kind <= JL_TUPLE) {
            jv out = jv_list_new(C, a.u.l->n + b.u.l->n);
            out.u.l->kind = a.u.l->kind;
            for (size_t i = 0; i < a.u.l->n; i++)
                jv_list_push(C, out, a.u.l->items[i]);
            for (size_t i = 0; i < b.u.l->n; i++)
                jv_list_push(C, out, b.u.l->items[i]);
            return out;
        }
    }
    if (op == OP_MUL) {
        if ((a.k == JV_STR || (a.k == JV_LIST && a.u.l->kind <= JL_TUPLE)) && (b.k == JV_INT || b.k == JV_BOOL))
            return repeat(e, a, num_i(b), line);
        if ((b.k == JV_STR || (b.k == JV_LIST && b.u.l->kind <= JL_TUPLE)) && (a.k == JV_INT || a.k == JV_BOOL))
            return repeat(e, b, num_i(a), line);
    }
    if (op == OP_MOD && a.k == JV_STR)
        jinja_fail(C, "line %d: unsupported construct: %%-formatting of strings", line);
    if (!is_num(a) || !is_num(b))
        bad_operands(e, names[op], a, b, line);
    bool ints = a.k != JV_FLOAT && b.k != JV_FLOAT;
    if (ints) {
        int64_t x = num_i(a), y = num_i(b), r;
        switch (op) {
        case OP_ADD:
            if (__builtin_add_overflow(x, y, &r))
                goto overflow;
            return jv_int(r);
        case OP_SUB:
            if (__builtin_sub_overflow(x, y, &r))
                goto overflow;
            return jv_int(r);
        case OP_MUL:
            if (__builtin_mul_overflow(x, y, &r))
                goto overflow;
            return jv_int(r);
        case OP_DIV:
            if (y == 0)
                jinja_fail(C, "line %d: division by zero", line);
            return jv_float((double)x / (double)y);
        case OP_FLOORDIV:
        case OP_MOD: {
            if (y == 0)
                jinja_fail(C, "line %d: integer division or modulo by zero", line);
            if (x == INT64_MIN && y == -1)
                goto overflow;
            int64_t q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) {
                q--;
                m += y;
            }
            return jv_int(op == OP_FLOORDIV ? q : m);
        }
        case OP_POW:
            if (y < 0)
                return jv_float(pow((double)x, (double)y));
            r = 1;
            for (int64_t k = 0; k < y; k++) {
                if (__builtin_mul_overflow(r, x, &r))
                    goto overflow;
                if (r == 0 || r == 1)
                    break;
            }
            if (r == 1 && x == -1 && (y & 1))
                r = -1;
            return jv_int(r);
        }
    }
    double x = num_f(a), y = num_f(b);
    switch (op) {
    case OP_ADD: return jv_float(x + y);
    case OP_SUB: return jv_float(x - y);
    case OP_MUL: return jv_float(x * y);
    case OP_DIV:
        if (y == 0)
            jinja_fail(C, "line %d: float division by zero", line);
        return jv_float(x / y);
    case OP_FLOORDIV:
        if (y == 0)
            jinja_fail(C, "line %d: float floor division by zero", line);
        return jv_float(floor(x / y));
    case OP_MOD: {
        if (y == 0)
            jinja_fail(C, "line %d: float modulo", line);
        double m = fmod(x, y);
        if (m != 0 && ((m < 0) != (y < 0)))
            m += y;
        return jv_float(m);
    }
    case OP_POW: return jv_float(pow(x, y));
    }
overflow:
    jinja_fail(C, "line %d: integer overflow in '%s'", line, names[op]);
}

/* Ordering for <, sort, min and max; fails on mixed types like Python. */
static int compare_order(ev *e, jv a, jv b, const char *op, int line)
{
    if (is_num(a) && is_num(b)) {
        if (a.k != JV_FLOAT && b.k != JV_FLOAT) {
            int64_t x = num_i(a), y = num_i(b);
            return x < y ? -1 : x > y;
        }
        double x = num_f(a), y = num_f(b);
        return x < y ? -1 : x > y;
    }
    if (a.k == JV_STR && b.k == JV_STR) {
        size_t n = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int r = n ? memcmp(a.u.s.p, b.u.s.p, n) : 0;
        if (r)
            return r < 0 ? -1 : 1;
        return a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n;
    }
    if (a.k == JV_LIST && b.k == JV_LIST && a.u.l->kind == b.u.l->kind && a.u.l->kind <= JL_TUPLE) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++) {
            if (!jv_equal(a.u.l->items[i], b.u.l->items[i]))
                return compare_order(e, a.u.l->items[i], b.u.l->items[i], op, line);
        }
        return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    }
    check_defined(e, a, line);
    check_defined(e, b, line);
    jinja_fail(C, "line %d: '%s' not supported between instances of '%s' and '%s'", line, op, jv_type_name(a),
               jv_type_name(b));
}

static bool contains(ev *e, jv container, jv item, int line)
{
    switch (container.k) {
    case JV_STR:
        if (item.k != JV_STR) {
            check_defined(e, item, line);
            jinja_fail(C, "line %d: 'in <string>' requires string as left operand, not %s", line,
                       jv_type_name(item));
        }
        if (item.u.s.n == 0)
            return true;
        return memmem(container.u.s.p, container.u.s.n, item.u.s.p, item.u.s.n) != NULL;
    case JV_LIST:
        for (size_t i = 0; i < container.u.l->n; i++)
            if (jv_equal(container.u.l->items[i], item))
                return true;
        return false;
    case JV_DICT: {
        jv v;
        if (item.k == JV_LIST || item.k == JV_DICT)
            jinja_fail(C, "line %d: unhashable type: '%s'", line, jv_type_name(item));
        return jv_dict_get(container, item, &v);
    }
    case JV_UNDEF: return false;
    default:
        jinja_fail(C, "line %d: argument of type '%s' is not iterable", line, jv_type_name(container));
    }
}

static bool cmpop(ev *e, int op, jv a, jv b, int line)
{
    switch (op) {
    case OP_EQ: return jv_equal(a, b);
    case OP_NE: return !jv_equal(a, b);
    case OP_LT: return compare_order(e, a, b, "<", line) < 0;
    case OP_LE: return compare_order(e, a, b, "<=", line) <= 0;
    case OP_GT: return compare_order(e, a, b, ">", line) > 0;
    case OP_GE: return compare_order(e, a, b, ">=", line) >= 0;
    case OP_IN: return contains(e, b, a, line);
    case OP_NOTIN: return !contains(e, b, a, line);
    }
    return false;
}

/* ---- string helpers ---- */

static bool py_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680
        || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F
        || cp == 0x3000;
}

static uint32_t case_map(ev *e, uint32_t cp, bool upper)
{
    if (cp < 0x80) {
        if (upper && cp >= 'a' && cp <= 'z')
            return cp - 32;
        if (!upper && cp >= 'A' && cp <= 'Z')
            return cp + 32;
        return cp;
    }
    if (e->utf8 != (locale_t)0)
        return (uint32_t)(upper ? towupper_l((wint_t)cp, e->utf8) : towlower_l((wint_t)cp, e->utf8));
    return cp;
}

static bool is_alpha_cp(ev *e, uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
    if (e->utf8 != (locale_t)0)
        return iswalpha_l((wint_t)cp, e->utf8);
    return false;
}

/* mode: 0 lower, 1 upper, 2 capitalize, 3 Jinja title filter, 4 Python str.title() */
static jv str_case(ev *e, jv s, int mode)
{
    jbuf b = {0};
    size_t o = 0;
    bool word_start = true, first = true;
    uint32_t cp;
    while (o < s.u.s.n) {
        size_t len = utf8_next(s.u.s.p + o, s.u.s.n - o, &cp);
        bool up;
        if (mode == 1)
            up = true;
        else if (mode == 0)
            up = false;
        else if (mode == 2)
            up = first;
        else
            up = word_start;
        uint32_t m = case_map(e, cp, up);
        if (mode == 3)
            word_start = py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
        else if (mode == 4)
            word_start = !is_alpha_cp(e, cp);
        first = false;
        if (m == cp || (len == 1 && cp >= 0x80)) {
            jbuf_put(C, &b, s.u.s.p + o, len);
        } else {
            char u[4];
            jbuf_put(C, &b, u, utf8_put(m, u));
        }
        o += len;
    }
    return jbuf_value(C, &b);
}

/* which: 1 left, 2 right, 3 both. chars: NULL for whitespace. */
static jv str_strip(jv s, const jv *chars, int which)
{
    size_t a = 0, b = s.u.s.n;
    uint32_t cp;
    while (a < b && (which & 1)) {
        size_t len = utf8_next(s.u.s.p + a, b - a, &cp);
        bool strip = chars ? memmem(chars->u.s.p, chars->u.s.n, s.u.s.p + a, len) != NULL : py_space(cp);
        if (!strip)
            break;
        a += len;
    }
    while (b > a && (which & 2)) {
        size_t start = b - 1;
        while (start > a && ((unsigned char)s.u.s.p[start] & 0xC0) == 0x80)
            start--;
        size_t len = utf8_next(s.u.s.p + start, b - start, &cp);
        if (start + len != b) { /* invalid tail byte: treat it alone */
            start = b - 1;
            len = 1;
            cp = (unsigned char)s.u.s.p[start];
        }
        bool strip = chars ? memmem(chars->u.s.p, chars->u.s.n, s.u.s.p + start, len) != NULL : py_space(cp);
        if (!strip)
            break;
        b = start;
    }
    return jv_strn(s.u.s.p + a, b - a);
}

static jv str_replace(ev *e, jv s, jv old, jv new, int64_t count)
{
    jbuf b = {0};
    if (old.u.s.n == 0) {
        /* Python inserts `new` before every character and at the end. */
        size_t o = 0;
        uint32_t cp;
        int64_t done = 0;
        while (o <= s.u.s.n) {
            if (count < 0 || done < count) {
                jbuf_put(C, &b, new.u.s.p, new.u.s.n);
                done++;
            }
            if (o == s.u.s.n)
                break;
            size_t len = utf8_next(s.u.s.p + o, s.u.s.n - o, &cp);
            jbuf_put(C, &b, s.u.s.p + o, len);
            o += len;
        }
        return jbuf_value(C, &b);
    }
    size_t o = 0;
    int64_t done = 0;
    while (o < s.u.s.n && (count < 0 || done < count)) {
        const char *hit = memmem(s.u.s.p + o, s.u.s.n - o, old.u.s.p, old.u.s.n);
        if (!hit)
            break;
        size_t at = (size_t)(hit - s.u.s.p);
        jbuf_put(C, &b, s.u.s.p + o, at - o);
        jbuf_put(C, &b, new.u.s.p, new.u.s.n);
        o = at + old.u.s.n;
        done++;
    }
    jbuf_put(C, &b, s.u.s.p + o, s.u.s.n - o);
    return jbuf_value(C, &b);
}

static jv str_split(ev *e, jv s, jv sep, int64_t maxsplit, int line)
{
    jv out = jv_list_new(C, 0);
    if (sep.k == JV_NONE || sep.k == JV_UNDEF) {
        size_t o = 0;
        uint32_t cp;
        int64_t splits = 0;
        for (;;) {
            while (o < s.u.s.n) {
                size_t len = utf8_next(s.u.s.p + o, s.u.s.n - o, &cp);
                if (!py_space(cp))
                    break;
                o += len;
            }
            if (o >= s.u.s.n)
                break;
            if (maxsplit >= 0 && splits >= maxsplit) {
                jv rest = str_strip(jv_strn(s.u.s.p + o, s.u.s.n - o), NULL, 2);
                jv_list_push(C, out, rest);
                break;
            }
            size_t start = o;
            while (o < s.u.s.n) {
                size_t len = utf8_next(s.u.s.p + o, s.u.s.n - o, &cp);
                if (py_space(cp))
                    break;
                o += len;
            }
            jv_list_push(C, out, jv_strn(s.u.s.p + start, o - start));
            splits++;
        }
        return out;
    }
    if (sep.k != JV_STR)
        jinja_fail(C, "line %d: split() separator must be a string or None", line);
    if (sep.u.s.n == 0)
        jinja_fail(C, "line %d: split(): empty separator", line);
    size_t o = 0;
    int64_t splits = 0;
    for (;;) {
        const char *hit = (maxsplit < 0 || splits < maxsplit)
                              ? memmem(s.u.s.p + o, s.u.s.n - o, sep.u.s.p, sep.u.s.n) : NULL;
        if (!hit) {
            jv_list_push(C, out, jv_strn(s.u.s.p + o, s.u.s.n - o));
            return out;
        }
        size_t at = (size_t)(hit - s.u.s.p);
        jv_list_push(C, out, jv_strn(s.u.s.p + o, at - o));
        o = at + sep.u.s.n;
        splits++;
    }
}

/* str.splitlines() boundaries; returns the lines (without ends). */
static jv str_splitlines(ev *e, jv s)
{
    jv out = jv_list_new(C, 0);
    size_t o = 0, start = 0;
    uint32_t cp;
    while (o < s.u.s.n) {
        size_t len = utf8_next(s.u.s.p + o, s.u.s.n - o, &cp);
        bool nl = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C || cp == 0x1D || cp == 0x1E
               || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
        if (nl) {
            jv_list_push(C, out, jv_strn(s.u.s.p + start, o - start));
            if (cp == '\r' && o + 1 < s.u.s.n && s.u.s.p[o + 1] == '\n')
                len = 2;
            start = o + len;
        }
        o += len;
    }
    if (start < s.u.s.n)
        jv_list_push(C, out, jv_strn(s.u.s.p + start, s.u.s.n - start));
    return out;
}

static bool str_affix(jv s, jv affix, bool prefix)
{
    if (affix.u.s.n > s.u.s.n)
        return false;
    const char *at = prefix ? s.u.s.p : s.u.s.p + s.u.s.n - affix.u.s.n;
    return affix.u.s.n == 0 || memcmp(at, affix.u.s.p, affix.u.s.n) == 0;
}

/* ---- argument helpers ---- */

typedef struct args {
    jv *pos;
    size_t npos;
    const char **kwn;
    jv *kwv;
    size_t nkw;
    const char *fname;
    int line;
} args;

/* Positional index i or keyword name; def when absent. */
static jv arg(ev *e, const args *a, size_t i, const char *name, jv def)
{
    if (i < a->npos)
        return a->pos[i];
    for (size_t k = 0; k < a->nkw; k++)
        if (name && !strcmp(a->kwn[k], name))
            return a->kwv[k];
    return def;
}

static void check_args(ev *e, const args *a, size_t max_pos, const char *const *names)
{
    if (a->npos > max_pos)
        jinja_fail(C, "line %d: %s() takes at most %zu positional argument(s), got %zu", a->line, a->fname, max_pos,
                   a->npos);
    for (size_t k = 0; k < a->nkw; k++) {
        bool ok = false;
        for (size_t i = 0; names && names[i]; i++)
            if (!strcmp(names[i], a->kwn[k]))
                ok = true;
        if (!ok)
            jinja_fail(C, "line %d: %s() got an unexpected keyword argument '%s'", a->line, a->fname, a->kwn[k]);
    }
}

static jv need_str(ev *e, const args *a, jv v, const char *what)
{
    if (v.k != JV_STR) {
        check_defined(e, v, a->line);
        jinja_fail(C, "line %d: %s(): %s must be a string, not %s", a->line, a->fname, what, jv_type_name(v));
    }
    return v;
}

static int64_t need_int(ev *e, const args *a, jv v, const char *what)
{
    int64_t i;
    if (!as_index(v, &i)) {
        check_defined(e, v, a->line);
        jinja_fail(C, "line %d: %s(): %s must be an integer, not %s", a->line, a->fname, what, jv_type_name(v));
    }
    return i;
}

/* ---- methods of str and dict ---- */

static jv call_method(ev *e, jfunc *fn, const args *a)
{
    jv self = fn->self;
    const char *m = fn->name;
    int line = a->line;
    if (self.k == JV_DICT) {
        if (!strcmp(m, "get")) {
            check_args(e, a, 2, NULL);
            if (a->npos < 1)
                jinja_fail(C, "line %d: get() expected at least 1 argument", line);
            jv v;
            return jv_dict_get(self, a->pos[0], &v) ? v : (a->npos > 1 ? a->pos[1] : jv_none());
        }
        check_args(e, a, 0, NULL);
        if (!strcmp(m, "keys") || !strcmp(m, "values") || !strcmp(m, "items")) {
            jv out = jv_list_new(C, self.u.d->n);
            out.u.l->kind = m[0] == 'k' ? JL_KEYS : m[0] == 'v' ? JL_VALUES : JL_ITEMS;
            for (size_t i = 0; i < self.u.d->n; i++) {
                if (m[0] == 'k') {
                    jv_list_push(C, out, self.u.d->keys[i]);
                } else if (m[0] == 'v') {
                    jv_list_push(C, out, self.u.d->vals[i]);
                } else {
                    jv pair = jv_list_new(C, 2);
                    pair.u.l->kind = JL_TUPLE;
                    jv_list_push(C, pair, self.u.d->keys[i]);
                    jv_list_push(C, pair, self.u.d->vals[i]);
                    jv_list_push(C, out, pair);
                }
            }
            return out;
        }
        if (!strcmp(m, "copy"))
            return self;
        jinja_fail(C, "line %d: access to dict.%s() is unsafe: the sandbox does not allow modifying a dict", line,
                   m);
    }
    if (self.k == JV_LIST) {
        if (!strcmp(m, "copy"))
            return self;
        if (!strcmp(m, "count")) {
            check_args(e, a, 1, NULL);
            int64_t k = 0;
            for (size_t i = 0; a->npos == 1 && i < self.u.l->n; i++)
                k += jv_equal(self.u.l->items[i], a->pos[0]);
            return jv_int(k);
        }
        if (!strcmp(m, "index")) {
            check_args(e, a, 1, NULL);
            for (size_t i = 0; a->npos == 1 && i < self.u.l->n; i++)
                if (jv_equal(self.u.l->items[i], a->pos[0]))
                    return jv_int((int64_t)i);
            jinja_fail(C, "line %d: list.index(): value is not in list", line);
        }
        jinja_fail(C, "line %d: access to list.%s() is unsafe: the sandbox does not allow modifying a list", line,
                   m);
    }
    /* strings */
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        check_args(e, a, 1, NULL);
        if (a->npos != 1)
            jinja_fail(C, "line %d: %s() takes exactly one argument", line, m);
        jv x = a->pos[0];
        bool prefix = m[0] == 's';
        if (x.k == JV_LIST) {
            for (size_t i = 0; i < x.u.l->n; i++)
                if (str_affix(self, need_str(e, a, x.u.l->items[i], "prefix"), prefix))
                    return jv_bool(true);
            return jv_bool(false);
        }
        return jv_bool(str_affix(self, need_str(e, a, x, "argument"), prefix));
    }
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
        check_args(e, a, 1, NULL);
        jv chars = arg(e, a, 0, NULL, jv_none());
        int which = m[0] == 'l' ? 1 : m[0] == 'r' ? 2 : 3;
        if (chars.k == JV_NONE)
            return str_strip(self, NULL, which);
        need_str(e, a, chars, "chars");
        return str_strip(self, &chars, which);
    }
    if (!strcmp(m, "split")) {
        static const char *const kw[] = {"sep", "maxsplit", NULL};
        check_args(e, a, 2, kw);
        jv sep = arg(e, a, 0, "sep", jv_none());
        int64_t maxsplit = need_int(e, a, arg(e, a, 1, "maxsplit", jv_int(-1)), "maxsplit");
        return str_split(e, self, sep, maxsplit, line);
    }
    if (!strcmp(m, "splitlines")) {
        check_args(e, a, 0, NULL);
        return str_splitlines(e, self);
    }
    if (!strcmp(m, "upper") || !strcmp(m, "lower") || !strcmp(m, "capitalize") || !strcmp(m, "title")) {
        check_args(e, a, 0, NULL);
        int mode = m[0] == 'u' ? 1 : m[0] == 'l' ? 0 : m[0] == 'c' ? 2 : 4;
        if (mode == 2)
            return str_case(e, str_case(e, self, 0), 2);
        if (mode == 4)
            return str_case(e, str_case(e, self, 0), 4);
        return str_case(e, self, mode);
    }
    if (!strcmp(m, "replace")) {
        check_args(e, a, 3, NULL);
        if (a->npos < 2)
            jinja_fail(C, "line %d: replace() takes at least 2 arguments", line);
        int64_t count = a->npos > 2 ? need_int(e, a, a->pos[2], "count") : -1;
        return str_replace(e, self, need_str(e, a, a->pos[0], "old"), need_str(e, a, a->pos[1], "new"), count);
    }
    if (!strcmp(m, "find") || !strcmp(m, "count")) {
        check_args(e, a, 1, NULL);
        if (a->npos != 1)
            jinja_fail(C, "line %d: %s() takes exactly one argument here", line, m);
        jv sub = need_str(e, a, a->pos[0], "argument");
        if (m[0] == 'f') {
            const char *hit = sub.u.s.n ? memmem(self.u.s.p, self.u.s.n, sub.u.s.p, sub.u.s.n) : self.u.s.p;
            return jv_int(hit ? (int64_t)utf8_count(self.u.s.p, (size_t)(hit - self.u.s.p)) : -1);
        }
        if (sub.u.s.n == 0)
            return jv_int((int64_t)utf8_count(self.u.s.p, self.u.s.n) + 1);
        int64_t k = 0;
        size_t o = 0;
        const char *hit;
        while ((hit = memmem(self.u.s.p + o, self.u.s.n - o, sub.u.s.p, sub.u.s.n))) {
            k++;
            o = (size_t)(hit - self.u.s.p) + sub.u.s.n;
        }
        return jv_int(k);
    }
    if (!strcmp(m, "removeprefix") || !strcmp(m, "removesuffix")) {
        check_args(e, a, 1, NULL);
        if (a->npos != 1)
            jinja_fail(C, "line %d: %s() takes exactly one argument", line, m);
        jv x = need_str(e, a, a->pos[0], "argument");
        bool prefix = m[6] == 'p';
        if (!str_affix(self, x, prefix))
            return self;
        return prefix ? jv_strn(self.u.s.p + x.u.s.n, self.u.s.n - x.u.s.n) : jv_strn(self.u.s.p, self.u.s.n - x.u.s.n);
    }
    if (!strcmp(m, "join")) {
        check_args(e, a, 1, NULL);
        if (a->npos != 1)
            jinja_fail(C, "line %d: join() takes exactly one argument", line);
        jv items = iter_list(e, a->pos[0], line);
        jbuf b = {0};
        for (size_t i = 0; i < items.u.l->n; i++) {
            if (i)
                jbuf_put(C, &b, self.u.s.p, self.u.s.n);
            jbuf_put(C, &b, need_str(e, a, items.u.l->items[i], "item").u.s.p, items.u.l->items[i].u.s.n);
        }
        return jbuf_value(C, &b);
    }
    if (!strcmp(m, "isdigit") || !strcmp(m, "isspace") || !strcmp(m, "isalpha") || !strcmp(m, "isalnum")) {
        check_args(e, a, 0, NULL);
        if (self.u.s.n == 0)
            return jv_bool(false);
        size_t o = 0;
        uint32_t cp;
        while (o < self.u.s.n) {
            o += utf8_next(self.u.s.p + o, self.u.s.n - o, &cp);
            bool ok;
            if (m[2] == 'd')
                ok = cp >= '0' && cp <= '9';
            else if (m[2] == 's')
                ok = py_space(cp);
            else if (!strcmp(m, "isalpha"))
                ok = is_alpha_cp(e, cp);
            else
                ok = is_alpha_cp(e, cp) || (cp >= '0' && cp <= '9');
            if (!ok)
                return jv_bool(false);
        }
        return jv_bool(true);
    }
    jinja_fail(C, "line %d: unsupported construct: str.%s()", line, m);
}

/* ---- global functions ---- */

static jv call_global(ev *e, jfunc *fn, const args *a)
{
    const char *g = fn->name;
    int line = a->line;
    if (!strcmp(g, "raise_exception")) {
        jv msg = arg(e, a, 0, "message", jv_strn("", 0));
        jbuf b = {0};
        jv_write_str(C, &b, msg);
        C->raised = true;
        jinja_fail(C, "%s", b.p ? b.p : "");
    }
    if (!strcmp(g, "range")) {
        check_args(e, a, 3, NULL);
        int64_t start = 0, stop, stp = 1;
        if (a->npos == 0)
            jinja_fail(C, "line %d: range expected at least 1 argument", line);
        if (a->npos == 1) {
            stop = need_int(e, a, a->pos[0], "stop");
        } else {
            start = need_int(e, a, a->pos[0], "start");
            stop = need_int(e, a, a->pos[1], "stop");
            if (a->npos == 3)
                stp = need_int(e, a, a->pos[2], "step");
        }
        if (stp == 0)
            jinja_fail(C, "line %d: range() arg 3 must not be zero", line);
        double count = ceil(((double)stop - (double)start) / (double)stp);
        if (count > 100000)
            jinja_fail(C, "line %d: range too big: the sandbox blocks ranges larger than 100000", line);
        jv out = jv_list_new(C, count > 0 ? (size_t)count : 0);
        for (int64_t i = start; stp > 0 ? i < stop : i > stop; i += stp)
            jv_list_push(C, out, jv_int(i));
        return out;
    }
    if (!strcmp(g, "namespace") || !strcmp(g, "dict")) {
        jv d = jv_dict_new(C);
        if (a->npos > 1)
            jinja_fail(C, "line %d: %s() takes at most 1 positional argument", line, g);
        if (a->npos == 1) {
            jv init = a->pos[0];
            if (init.k != JV_DICT)
                jinja_fail(C, "line %d: %s() positional argument must be a mapping", line, g);
            for (size_t i = 0; i < init.u.d->n; i++)
                jv_dict_set(C, d, init.u.d->keys[i], init.u.d->vals[i]);
        }
        for (size_t k = 0; k < a->nkw; k++)
            jv_dict_set(C, d, jv_str(C, a->kwn[k]), a->kwv[k]);
        d.u.d->is_namespace = g[0] == 'n';
        return d;
    }
    if (!strcmp(g, "strftime_now")) {
        check_args(e, a, 1, NULL);
        jv fmt = need_str(e, a, arg(e, a, 0, NULL, jv_undef(NULL)), "format");
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        char buf[512];
        size_t n = strftime(buf, sizeof buf, cstr(e, fmt), &tm);
        return jv_strn(jstrdup(C, buf, n), n);
    }
    jinja_fail(C, "line %d: unsupported function '%s'", line, g);
}

/* ---- macros ---- */

static jv call_macro(ev *e, jfunc *fn, const args *a)
{
    const jnode *m = fn->macro;
    if (++e->call_depth > e->lim->max_call_depth)
        jinja_fail(C, "line %d: macro calls nested deeper than %d", a->line, e->lim->max_call_depth);
    scope *s = scope_new(e, fn->closure);
    if (a->npos > m->args.n)
        jinja_fail(C, "line %d: macro '%s' takes not more than %zu argument(s)", a->line, m->name, m->args.n);
    for (size_t k = 0; k < a->nkw; k++) {
        bool ok = false;
        for (size_t i = 0; i < m->args.n; i++)
            if (!strcmp(m->args.v[i]->name, a->kwn[k]))
                ok = true;
        if (!ok)
            jinja_fail(C, "line %d: macro '%s' takes no keyword argument '%s'", a->line, m->name, a->kwn[k]);
    }
    for (size_t i = 0; i < m->args.n; i++) {
        const jnode *p = m->args.v[i];
        jv v = jv_undef(NULL);
        bool have = false;
        if (i < a->npos) {
            v = a->pos[i];
            have = true;
        }
        for (size_t k = 0; k < a->nkw; k++) {
            if (!strcmp(p->name, a->kwn[k])) {
                if (have)
                    jinja_fail(C, "line %d: macro '%s' got multiple values for argument '%s'", a->line, m->name,
                               p->name);
                v = a->kwv[k];
                have = true;
            }
        }
        if (!have) {
            if (p->kind == N_KWARG)
                v = eval(e, s, p->a);
            else
                v = undef_msg(e, "parameter '%s' was not provided%s", p->name, "");
        }
        scope_set(e, s, p->name, v);
    }
    jbuf *saved = e->out;
    jbuf buf = {.limit = e->lim->max_output};
    e->out = &buf;
    exec_body(e, s, &m->body);
    e->out = saved;
    e->call_depth--;
    return jbuf_value(C, &buf);
}

static jv call_value(ev *e, jv callee, const args *a)
{
    if (callee.k == JV_UNDEF)
        fail_undefined(e, callee, a->line);
    if (callee.k != JV_FUNC)
        jinja_fail(C, "line %d: '%s' object is not callable", a->line, jv_type_name(callee));
    jfunc *fn = callee.u.fn;
    step(e, a->line);
    switch (fn->kind) {
    case JF_MACRO: return call_macro(e, fn, a);
    case JF_METHOD:
        if (fn->self.k == JV_DICT && fn->name && !strcmp(fn->name, "cycle") && fn->macro == NULL) {
            /* loop.cycle(...) */
            if (a->npos == 0)
                jinja_fail(C, "line %d: no items for cycling given", a->line);
            jv idx;
            jv_dict_get_str(fn->self, "index0", &idx);
            return a->pos[idx.u.i % (int64_t)a->npos];
        }
        return call_method(e, fn, a);
    case JF_GLOBAL: return call_global(e, fn, a);
    }
    jinja_fail(C, "line %d: object is not callable", a->line);
}

static void eval_args(ev *e, scope *s, const jnode *n, args *a, const char *fname)
{
    a->npos = n->args.n;
    a->pos = a->npos ? jalloc(C, a->npos * sizeof(jv)) : NULL;
    for (size_t i = 0; i < a->npos; i++)
        a->pos[i] = eval(e, s, n->args.v[i]);
    a->nkw = n->kwargs.n;
    a->kwn = a->nkw ? jalloc(C, a->nkw * sizeof(char *)) : NULL;
    a->kwv = a->nkw ? jalloc(C, a->nkw * sizeof(jv)) : NULL;
    for (size_t k = 0; k < a->nkw; k++) {
        a->kwn[k] = n->kwargs.v[k]->name;
        a->kwv[k] = eval(e, s, n->kwargs.v[k]->a);
    }
    a->fname = fname;
    a->line = n->line;
}

/* ---- filters ---- */

static jv attr_path(ev *e, jv item, jv path, int line)
{
    /* "a.b" looks up a then b; numeric parts index lists (Jinja's make_attrgetter). */
    if (path.k == JV_INT)
        return get_item(e, item, path, line);
    if (path.k != JV_STR)
        jinja_fail(C, "line %d: attribute name must be a string", line);
    size_t o = 0;
    jv v = item;
    while (o <= path.u.s.n) {
        const char *dot = memchr(path.u.s.p + o, '.', path.u.s.n - o);
        size_t end = dot ? (size_t)(dot - path.u.s.p) : path.u.s.n;
        jv part = jv_strn(path.u.s.p + o, end - o);
        bool numeric = part.u.s.n > 0;
        int64_t idx = 0;
        for (size_t i = 0; i < part.u.s.n; i++) {
            if (part.u.s.p[i] < '0' || part.u.s.p[i] > '9' || i > 17)
                numeric = false;
            else
                idx = idx * 10 + (part.u.s.p[i] - '0');
        }
        v = get_item(e, v, numeric ? jv_int(idx) : part, line);
        if (!dot)
            break;
        o = end + 1;
    }
    return v;
}

static jv escape_html(ev *e, jv s)
{
    jbuf b = {0};
    for (size_t i = 0; i < s.u.s.n; i++) {
        char ch = s.u.s.p[i];
        switch (ch) {
        case '&': jbuf_puts(C, &b, "&amp;"); break;
        case '<': jbuf_puts(C, &b, "&lt;"); break;
        case '>': jbuf_puts(C, &b, "&gt;"); break;
        case '"': jbuf_puts(C, &b, "&#34;"); break;
        case '\'': jbuf_puts(C, &b, "&#39;"); break;
        default: jbuf_putc(C, &b, ch);
        }
    }
    return jbuf_value(C, &b);
}

typedef struct sort_ctx {
    ev *e;
    bool case_sensitive;
    jv attribute;
    int line;
} sort_ctx;

static jv sort_key(sort_ctx *sc, jv v)
{
    ev *e = sc->e;
    if (sc->attribute.k != JV_NONE && sc->attribute.k != JV_UNDEF)
        v = attr_path(e, v, sc->attribute, sc->line);
    if (!sc->case_sensitive && v.k == JV_STR)
        v = str_case(e, v, 0);
    return v;
}

/* Stable merge sort on precomputed keys (compare may fail through the context). */
static void merge_sort(sort_ctx *sc, jv *keys, jv *vals, jv *tk, jv *tv, size_t n)
{
    if (n < 2)
        return;
    size_t h = n / 2;
    merge_sort(sc, keys, vals, tk, tv, h);
    merge_sort(sc, keys + h, vals + h, tk, tv, n - h);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        if (compare_order(sc->e, keys[j], keys[i], "<", sc->line) < 0) {
            tk[k] = keys[j];
            tv[k++] = vals[j++];
        } else {
            tk[k] = keys[i];
            tv[k++] = vals[i++];
        }
    }
    while (i < h) {
        tk[k] = keys[i];
        tv[k++] = vals[i++];
    }
    while (j < n) {
        tk[k] = keys[j];
        tv[k++] = vals[j++];
    }
    memcpy(keys, tk, n * sizeof(jv));
    memcpy(vals, tv, n * sizeof(jv));
}

static jv filter_tojson(ev *e, jv v, const args *a)
{
    static const char *const kw[] = {"indent", "ensure_ascii", "sort_keys", "separators", NULL};
    check_args(e, a, 1, kw);
    jjson_opts o = {.indent = -1};
    jv indent = arg(e, a, 0, "indent", jv_none());
    if (indent.k == JV_STR) {
        o.indent_str = cstr(e, indent);
    } else if (indent.k != JV_NONE) {
        int64_t n = need_int(e, a, indent, "indent");
        o.indent = n < 0 ? 0 : n > 64 ? 64 : (int)n;
    }
    jv sep = arg(e, a, 99, "separators", jv_none());
    if (sep.k != JV_NONE)
        jinja_fail(C, "line %d: unsupported construct: tojson(separators=...)", a->line);
    o.ensure_ascii = jv_truthy(arg(e, a, 99, "ensure_ascii", jv_bool(false)));
    o.sort_keys = jv_truthy(arg(e, a, 99, "sort_keys", jv_bool(false)));
    jbuf b = {0};
    jv_write_json(C, &b, v, &o, 0);
    return jbuf_value(C, &b);
}

static jv filter_indent(ev *e, jv v, const args *a)
{
    static const char *const kw[] = {"width", "first", "blank", NULL};
    check_args(e, a, 3, kw);
    jv width = arg(e, a, 0, "width", jv_int(4));
    bool first = jv_truthy(arg(e, a, 1, "first", jv_bool(false)));
    bool blank = jv_truthy(arg(e, a, 2, "blank", jv_bool(false)));
    jv ind;
    if (width.k == JV_STR) {
        ind = width;
    } else {
        int64_t w = need_int(e, a, width, "width");
        if (w > 1024)
            jinja_fail(C, "line %d: indent width too large", a->line);
        ind = repeat(e, jv_strn(" ", 1), w, a->line);
    }
    if (v.k != JV_STR) {
        check_defined(e, v, a->line);
        jinja_fail(C, "line %d: indent filter needs a string, not %s", a->line, jv_type_name(v));
    }
    jbuf src = {0};
    jv_write_str(C, &src, v);
    jbuf_putc(C, &src, '\n');
    jv lines = str_splitlines(e, jbuf_value(C, &src));
    jbuf b = {0};
    for (size_t i = 0; i < lines.u.l->n; i++) {
        jv line = lines.u.l->items[i];
        if (i)
            jbuf_putc(C, &b, '\n');
        if (i > 0 && (blank || line.u.s.n))
            jbuf_put(C, &b, ind.u.s.p, ind.u.s.n);
        jbuf_put(C, &b, line.u.s.p, line.u.s.n);
    }
    jv out = jbuf_value(C, &b);
    if (first)
        out = binop(e, OP_CONCAT, ind, out, a->line);
    return out;
}

static jv filter_select(ev *e, jv seq, const args *a, bool by_attr, bool keep)
{
    /* Jinja only iterates a truthy value here: select on 0 or none gives nothing. */
    jv items = jv_truthy(seq) ? iter_list(e, seq, a->line) : jv_list_new(C, 0);
    jv out = jv_list_new(C, 0);
    size_t first_test = by_attr ? 1 : 0;
    if (by_attr && a->npos < 1)
        jinja_fail(C, "line %d: %s() needs an attribute name", a->line, a->fname);
    for (size_t i = 0; i < items.u.l->n; i++) {
        jv item = items.u.l->items[i];
        jv v = by_attr ? attr_path(e, item, a->pos[0], a->line) : item;
        bool r;
        if (a->npos <= first_test) {
            r = jv_truthy(v);
        } else {
            jv tname = need_str(e, a, a->pos[first_test], "test name");
            r = apply_test(e, cstr(e, tname), v, a->pos + first_test + 1, a->npos - first_test - 1, a->line);
        }
        if (r == keep)
            jv_list_push(C, out, item);
    }
    out.u.l->kind = JL_GENERATOR;
    return out;
}

static jv filter_map(ev *e, scope *s, jv seq, const args *a)
{
    jv items = jv_truthy(seq) ? iter_list(e, seq, a->line) : jv_list_new(C, 0);
    jv out = jv_list_new(C, items.u.l->n);
    jv attribute = arg(e, a, 99, "attribute", jv_undef(NULL));
    if (attribute.k != JV_UNDEF) {
        jv def = arg(e, a, 99, "default", jv_undef(NULL));
        for (size_t i = 0; i < items.u.l->n; i++) {
            jv v = attr_path(e, items.u.l->items[i], attribute, a->line);
            jv_list_push(C, out, v.k == JV_UNDEF && def.k != JV_UNDEF ? def : v);
        }
        out.u.l->kind = JL_GENERATOR;
        return out;
    }
    if (a->npos < 1)
        jinja_fail(C, "line %d: map() needs a filter name or attribute=", a->line);
    jv fname = need_str(e, a, a->pos[0], "filter name");
    for (size_t i = 0; i < items.u.l->n; i++)
        jv_list_push(C, out, apply_filter(e, s, cstr(e, fname), items.u.l->items[i], a->pos + 1, a->npos - 1, a->kwn,
                                          a->kwv, a->nkw, a->line));
    out.u.l->kind = JL_GENERATOR;
    return out;
}

static bool parse_py_int(jv s, int64_t *out)
{
    jv t = str_strip(s, NULL, 3);
    size_t i = 0;
    bool neg = false;
    if (i < t.u.s.n && (t.u.s.p[i] == '+' || t.u.s.p[i] == '-'))
        neg = t.u.s.p[i++] == '-';
    if (i >= t.u.s.n)
        return false;
    int64_t v = 0;
    bool prev_us = true;
    for (; i < t.u.s.n; i++) {
        char ch = t.u.s.p[i];
        if (ch == '_' && !prev_us) {
            prev_us = true;
            continue;
        }
        if (ch < '0' || ch > '9')
            return false;
        prev_us = false;
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, ch - '0', &v))
            return false;
    }
    if (prev_us)
        return false;
    *out = neg ? -v : v;
    return true;
}

static bool parse_py_float(ev *e, jv s, double *out)
{
    jv t = str_strip(s, NULL, 3);
    if (t.u.s.n == 0 || t.u.s.n > 300)
        return false;
    char *tmp = jstrdup(C, t.u.s.p, t.u.s.n), *w = tmp;
    for (char *r = tmp; *r; r++)
        if (*r != '_')
            *w++ = *r;
    *w = 0;
    if (strpbrk(tmp, "xXpP"))
        return false; /* hex floats are not Python float() syntax */
    char *end;
    double d = strtod(tmp, &end);
    if (end == tmp || *end)
        return false;
    *out = d;
    return true;
}

static jv py_round(double x, int64_t ndigits)
{
    if (!isfinite(x) || ndigits > 300)
        return jv_float(x);
    if (ndigits >= 0) {
        char buf[400];
        snprintf(buf, sizeof buf, "%.*f", (int)ndigits, x);
        return jv_float(strtod(buf, NULL));
    }
    double p = pow(10.0, (double)-ndigits);
    double y = x / p, r = nearbyint(y);
    return jv_float(r * p);
}

static jv apply_filter(ev *e, scope *s, const char *f, jv v, jv *pos, size_t npos, const char **kwn, jv *kwv,
                       size_t nkw, int line)
{
    args a = {.pos = pos, .npos = npos, .kwn = kwn, .kwv = kwv, .nkw = nkw, .fname = f, .line = line};
    step(e, line);
    if (!strcmp(f, "tojson"))
        return filter_tojson(e, v, &a);
    if (!strcmp(f, "safe")) {
        check_args(e, &a, 0, NULL);
        return jv_to_str(C, v); /* Markup(value) is a string */
    }
    if (!strcmp(f, "string")) {
        check_args(e, &a, 0, NULL);
        return jv_to_str(C, v);
    }
    if (!strcmp(f, "escape") || !strcmp(f, "e")) {
        check_args(e, &a, 0, NULL);
        return escape_html(e, jv_to_str(C, v));
    }
    if (!strcmp(f, "trim")) {
        static const char *const kw[] = {"chars", NULL};
        check_args(e, &a, 1, kw);
        jv chars = arg(e, &a, 0, "chars", jv_none());
        jv str = jv_to_str(C, v);
        if (chars.k == JV_NONE)
            return str_strip(str, NULL, 3);
        need_str(e, &a, chars, "chars");
        return str_strip(str, &chars, 3);
    }
    if (!strcmp(f, "upper") || !strcmp(f, "lower") || !strcmp(f, "capitalize") || !strcmp(f, "title")) {
        check_args(e, &a, 0, NULL);
        jv str = jv_to_str(C, v);
        if (f[0] == 'u')
            return str_case(e, str, 1);
        if (f[0] == 'l')
            return str_case(e, str, 0);
        return str_case(e, str_case(e, str, 0), f[0] == 'c' ? 2 : 3);
    }
    if (!strcmp(f, "replace")) {
        static const char *const kw[] = {"old", "new", "count", NULL};
        check_args(e, &a, 3, kw);
        jv old = need_str(e, &a, arg(e, &a, 0, "old", jv_undef(NULL)), "old");
        jv new = need_str(e, &a, arg(e, &a, 1, "new", jv_undef(NULL)), "new");
        jv count = arg(e, &a, 2, "count", jv_none());
        return str_replace(e, jv_to_str(C, v), old, new, count.k == JV_NONE ? -1 : need_int(e, &a, count, "count"));
    }
    if (!strcmp(f, "indent"))
        return filter_indent(e, v, &a);
    if (!strcmp(f, "length") || !strcmp(f, "count")) {
        check_args(e, &a, 0, NULL);
        switch (v.k) {
        case JV_STR: return jv_int((int64_t)utf8_count(v.u.s.p, v.u.s.n));
        case JV_LIST:
            if (v.u.l->kind == JL_GENERATOR)
                jinja_fail(C, "line %d: object of type 'generator' has no len() (apply | list first)", line);
            return jv_int((int64_t)v.u.l->n);
        case JV_DICT: return jv_int((int64_t)v.u.d->n);
        case JV_UNDEF: return jv_int(0);
        default: jinja_fail(C, "line %d: object of type '%s' has no len()", line, jv_type_name(v));
        }
    }
    if (!strcmp(f, "default") || !strcmp(f, "d")) {
        static const char *const kw[] = {"default_value", "boolean", NULL};
        check_args(e, &a, 2, kw);
        jv def = arg(e, &a, 0, "default_value", jv_strn("", 0));
        bool boolean = jv_truthy(arg(e, &a, 1, "boolean", jv_bool(false)));
        if (v.k == JV_UNDEF || (boolean && !jv_truthy(v)))
            return def;
        return v;
    }
    if (!strcmp(f, "join")) {
        static const char *const kw[] = {"d", "attribute", NULL};
        check_args(e, &a, 2, kw);
        jv sep = jv_to_str(C, arg(e, &a, 0, "d", jv_strn("", 0)));
        jv attribute = arg(e, &a, 1, "attribute", jv_none());
        jv items = iter_list(e, v, line);
        jbuf b = {0};
        for (size_t i = 0; i < items.u.l->n; i++) {
            if (i)
                jbuf_put(C, &b, sep.u.s.p, sep.u.s.n);
            jv item = items.u.l->items[i];
            if (attribute.k != JV_NONE)
                item = attr_path(e, item, attribute, line);
            jv_write_str(C, &b, item);
        }
        return jbuf_value(C, &b);
    }
    if (!strcmp(f, "items")) {
        check_args(e, &a, 0, NULL);
        if (v.k == JV_UNDEF)
            return jv_list_new(C, 0);
        if (v.k != JV_DICT || v.u.d->is_namespace)
            jinja_fail(C, "line %d: items filter: can only get item pairs from a mapping, not %s", line,
                       jv_type_name(v));
        jfunc fn = {.kind = JF_METHOD, .name = "items", .self = v};
        jv out = call_method(e, &fn, &a);
        out.u.l->kind = JL_GENERATOR;
        return out;
    }
    if (!strcmp(f, "list")) {
        check_args(e, &a, 0, NULL);
        jv items = iter_list(e, v, line);
        if (v.k != JV_LIST)
            return items;
        jv out = jv_list_new(C, items.u.l->n);
        for (size_t i = 0; i < items.u.l->n; i++)
            jv_list_push(C, out, items.u.l->items[i]);
        return out;
    }
    if (!strcmp(f, "first") || !strcmp(f, "last")) {
        check_args(e, &a, 0, NULL);
        jv items = iter_list(e, v, line);
        if (f[0] == 'l' && items.u.l->kind == JL_GENERATOR)
            jinja_fail(C, "line %d: 'generator' object is not reversible (apply | list before | last)", line);
        if (items.u.l->n == 0)
            return undef_msg(e, "No %s item, sequence was empty.%s", f, "");
        return items.u.l->items[f[0] == 'f' ? 0 : items.u.l->n - 1];
    }
    if (!strcmp(f, "reverse")) {
        check_args(e, &a, 0, NULL);
        if (v.k == JV_STR) {
            jv empty = jv_none(), minus = jv_int(-1);
            return do_slice(e, v, empty, empty, minus, line);
        }
        jv items = iter_list(e, v, line);
        jv out = jv_list_new(C, items.u.l->n);
        for (size_t i = items.u.l->n; i-- > 0;)
            jv_list_push(C, out, items.u.l->items[i]);
        /* reversed() of a list or view is an iterator; a generator is first made a list. */
        if (v.k != JV_LIST || v.u.l->kind != JL_GENERATOR)
            out.u.l->kind = JL_GENERATOR;
        return out;
    }
    if (!strcmp(f, "sort")) {
        static const char *const kw[] = {"reverse", "case_sensitive", "attribute", NULL};
        check_args(e, &a, 3, kw);
        bool rev = jv_truthy(arg(e, &a, 0, "reverse", jv_bool(false)));
        sort_ctx sc = {e, jv_truthy(arg(e, &a, 1, "case_sensitive", jv_bool(false))),
                       arg(e, &a, 2, "attribute", jv_none()), line};
        jv items = iter_list(e, v, line);
        size_t n = items.u.l->n;
        jv *keys = jalloc(C, (n + 1) * sizeof(jv)), *vals = jalloc(C, (n + 1) * sizeof(jv));
        jv *tk = jalloc(C, (n + 1) * sizeof(jv)), *tv = jalloc(C, (n + 1) * sizeof(jv));
        for (size_t i = 0; i < n; i++) {
            vals[i] = items.u.l->items[i];
            keys[i] = sort_key(&sc, vals[i]);
        }
        if (rev) {
            /* Python's reverse=True keeps equal items in their original order. */
            for (size_t i = 0; i < n / 2; i++) {
                jv t = keys[i];
                keys[i] = keys[n - 1 - i];
                keys[n - 1 - i] = t;
                t = vals[i];
                vals[i] = vals[n - 1 - i];
                vals[n - 1 - i] = t;
            }
        }
        merge_sort(&sc, keys, vals, tk, tv, n);
        jv out = jv_list_new(C, n);
        if (rev)
            for (size_t i = n; i-- > 0;)
                jv_list_push(C, out, vals[i]);
        else
            for (size_t i = 0; i < n; i++)
                jv_list_push(C, out, vals[i]);
        return out;
    }
    if (!strcmp(f, "min") || !strcmp(f, "max")) {
        static const char *const kw[] = {"case_sensitive", "attribute", NULL};
        check_args(e, &a, 2, kw);
        sort_ctx sc = {e, jv_truthy(arg(e, &a, 0, "case_sensitive", jv_bool(false))),
                       arg(e, &a, 1, "attribute", jv_none()), line};
        jv items = iter_list(e, v, line);
        if (items.u.l->n == 0)
            return undef_msg(e, "No aggregated item, sequence was empty.%s%s", "", "");
        jv best = items.u.l->items[0], bk = sort_key(&sc, best);
        for (size_t i = 1; i < items.u.l->n; i++) {
            jv k = sort_key(&sc, items.u.l->items[i]);
            int c = compare_order(e, k, bk, "<", line);
            if (f[1] == 'i' ? c < 0 : c > 0) {
                best = items.u.l->items[i];
                bk = k;
            }
        }
        return best;
    }
    if (!strcmp(f, "sum")) {
        static const char *const kw[] = {"attribute", "start", NULL};
        check_args(e, &a, 2, kw);
        jv attribute = arg(e, &a, 0, "attribute", jv_none());
        jv total = arg(e, &a, 1, "start", jv_int(0));
        jv items = iter_list(e, v, line);
        for (size_t i = 0; i < items.u.l->n; i++) {
            jv item = items.u.l->items[i];
            if (attribute.k != JV_NONE)
                item = attr_path(e, item, attribute, line);
            total = binop(e, OP_ADD, total, item, line);
        }
        return total;
    }
    if (!strcmp(f, "unique")) {
        static const char *const kw[] = {"case_sensitive", "attribute", NULL};
        check_args(e, &a, 2, kw);
        sort_ctx sc = {e, jv_truthy(arg(e, &a, 0, "case_sensitive", jv_bool(false))),
                       arg(e, &a, 1, "attribute", jv_none()), line};
        jv items = iter_list(e, v, line);
        jv seen = jv_dict_new(C), out = jv_list_new(C, 0);
        for (size_t i = 0; i < items.u.l->n; i++) {
            jv k = sort_key(&sc, items.u.l->items[i]), dummy;
            if (k.k == JV_LIST || k.k == JV_DICT)
                jinja_fail(C, "line %d: unique(): unhashable type '%s'", line, jv_type_name(k));
            if (jv_dict_get(seen, k, &dummy))
                continue;
            jv_dict_set(C, seen, k, jv_none());
            jv_list_push(C, out, items.u.l->items[i]);
        }
        out.u.l->kind = JL_GENERATOR;
        return out;
    }
    if (!strcmp(f, "int")) {
        static const char *const kw[] = {"default", "base", NULL};
        check_args(e, &a, 2, kw);
        jv def = arg(e, &a, 0, "default", jv_int(0));
        jv base = arg(e, &a, 1, "base", jv_int(10));
        if (!(base.k == JV_INT && base.u.i == 10))
            jinja_fail(C, "line %d: unsupported construct: int filter with base other than 10", line);
        int64_t i;
        double d;
        check_defined(e, v, line); /* Undefined.__int__ raises */
        if (v.k == JV_INT || v.k == JV_BOOL)
            return jv_int(num_i(v));
        if (v.k == JV_FLOAT) {
            if (!isfinite(v.u.f) || fabs(v.u.f) >= 9.2e18)
                jinja_fail(C, "line %d: int filter: cannot convert %s float to integer", line,
                           isnan(v.u.f) ? "NaN" : "infinite or huge");
            return jv_int((int64_t)v.u.f);
        }
        if (v.k == JV_STR) {
            if (parse_py_int(v, &i))
                return jv_int(i);
            if (parse_py_float(e, v, &d)) {
                if (!isfinite(d) || fabs(d) >= 9.2e18)
                    jinja_fail(C, "line %d: int filter: cannot convert %s to integer", line, cstr(e, v));
                return jv_int((int64_t)d);
            }
        }
        return def;
    }
    if (!strcmp(f, "float")) {
        static const char *const kw[] = {"default", NULL};
        check_args(e, &a, 1, kw);
        jv def = arg(e, &a, 0, "default", jv_float(0.0));
        double d;
        check_defined(e, v, line); /* Undefined.__float__ raises */
        if (is_num(v))
            return jv_float(num_f(v));
        if (v.k == JV_STR && parse_py_float(e, v, &d))
            return jv_float(d);
        return def;
    }
    if (!strcmp(f, "abs")) {
        check_args(e, &a, 0, NULL);
        if (v.k == JV_FLOAT)
            return jv_float(fabs(v.u.f));
        if (v.k == JV_INT || v.k == JV_BOOL) {
            int64_t i = num_i(v);
            if (i == INT64_MIN)
                jinja_fail(C, "line %d: integer overflow in abs", line);
            return jv_int(i < 0 ? -i : i);
        }
        check_defined(e, v, line);
        jinja_fail(C, "line %d: bad operand type for abs(): '%s'", line, jv_type_name(v));
    }
    if (!strcmp(f, "round")) {
        static const char *const kw[] = {"precision", "method", NULL};
        check_args(e, &a, 2, kw);
        int64_t prec = need_int(e, &a, arg(e, &a, 0, "precision", jv_int(0)), "precision");
        jv method = arg(e, &a, 1, "method", jv_strn("common", 6));
        need_str(e, &a, method, "method");
        if (!is_num(v)) {
            check_defined(e, v, line);
            jinja_fail(C, "line %d: round filter needs a number, not %s", line, jv_type_name(v));
        }
        bool common = method.u.s.n == 6 && !memcmp(method.u.s.p, "common", 6);
        bool fl = method.u.s.n == 5 && !memcmp(method.u.s.p, "floor", 5);
        bool ce = method.u.s.n == 4 && !memcmp(method.u.s.p, "ceil", 4);
        if (!common && !fl && !ce)
            jinja_fail(C, "line %d: round: method must be 'common', 'ceil' or 'floor'", line);
        if (common) {
            if (v.k != JV_FLOAT)
                return jv_int(num_i(v)); /* round(int, n) stays an int for n >= 0 */
            return py_round(v.u.f, prec);
        }
        if (prec > 300 || prec < -300)
            jinja_fail(C, "line %d: round precision out of range", line);
        double p = pow(10.0, (double)prec), x = num_f(v) * p;
        return jv_float((fl ? floor(x) : ceil(x)) / p);
    }
    if (!strcmp(f, "selectattr") || !strcmp(f, "rejectattr"))
        return filter_select(e, v, &a, true, f[0] == 's');
    if (!strcmp(f, "select") || !strcmp(f, "reject"))
        return filter_select(e, v, &a, false, f[0] == 's');
    if (!strcmp(f, "map"))
        return filter_map(e, s, v, &a);
    if (!strcmp(f, "attr")) {
        check_args(e, &a, 1, NULL);
        jv name = need_str(e, &a, arg(e, &a, 0, NULL, jv_undef(NULL)), "name");
        return get_attr(e, v, name.u.s.p, name.u.s.n, line);
    }
    if (!strcmp(f, "wordcount")) {
        check_args(e, &a, 0, NULL);
        /* Runs of word characters, like Python's \w+. */
        jv str = jv_to_str(C, v);
        int64_t words = 0;
        bool in_word = false;
        size_t o = 0;
        uint32_t cp;
        while (o < str.u.s.n) {
            o += utf8_next(str.u.s.p + o, str.u.s.n - o, &cp);
            bool w = cp == '_' || (cp >= '0' && cp <= '9') || is_alpha_cp(e, cp)
                  || (cp >= 0x80 && e->utf8 != (locale_t)0 && iswalnum_l((wint_t)cp, e->utf8));
            if (w && !in_word)
                words++;
            in_word = w;
        }
        return jv_int(words);
    }
    jinja_fail(C, "line %d: unsupported filter '%s'", line, f);
}

/* ---- tests ---- */

static const char *const UNARY_TESTS[] = {"defined", "undefined", "none", "string", "number", "integer", "float",
                                          "boolean", "true", "false", "mapping", "iterable", "sequence", "callable",
                                          "odd", "even", "lower", "upper", NULL};
static const char *const BINARY_TESTS[] = {"divisibleby", "sameas", "eq", "equalto", "==", "ne", "!=", "lt", "lessthan",
                                           "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=", "in", NULL};

static bool apply_test(ev *e, const char *t, jv v, jv *args, size_t nargs, int line)
{
    jv x = nargs ? args[0] : jv_undef(NULL);
    bool unary = find_name(UNARY_TESTS, t, strlen(t)) >= 0;
    if (unary && nargs != 0)
        jinja_fail(C, "line %d: test '%s' takes no arguments, %zu given", line, t, nargs);
    if (find_name(BINARY_TESTS, t, strlen(t)) >= 0 && nargs != 1)
        jinja_fail(C, "line %d: test '%s' takes exactly one argument, %zu given", line, t, nargs);
    if (!strcmp(t, "defined"))
        return v.k != JV_UNDEF;
    if (!strcmp(t, "undefined"))
        return v.k == JV_UNDEF;
    if (!strcmp(t, "none"))
        return v.k == JV_NONE;
    if (!strcmp(t, "string"))
        return v.k == JV_STR;
    if (!strcmp(t, "number"))
        return is_num(v);
    if (!strcmp(t, "integer"))
        return v.k == JV_INT;
    if (!strcmp(t, "float"))
        return v.k == JV_FLOAT;
    if (!strcmp(t, "boolean"))
        return v.k == JV_BOOL;
    if (!strcmp(t, "true"))
        return v.k == JV_BOOL && v.u.b;
    if (!strcmp(t, "false"))
        return v.k == JV_BOOL && !v.u.b;
    if (!strcmp(t, "mapping"))
        return v.k == JV_DICT && !v.u.d->is_namespace;
    if (!strcmp(t, "iterable"))
        return v.k == JV_STR || v.k == JV_LIST || v.k == JV_UNDEF || (v.k == JV_DICT && !v.u.d->is_namespace);
    if (!strcmp(t, "sequence"))
        return v.k == JV_STR || (v.k == JV_LIST && v.u.l->kind <= JL_TUPLE) || v.k == JV_UNDEF
            || (v.k == JV_DICT && !v.u.d->is_namespace);
    if (!strcmp(t, "callable"))
        return v.k == JV_FUNC;
    if (!strcmp(t, "odd") || !strcmp(t, "even")) {
        /* value % 2 == 1 (odd) or == 0 (even), floats included. */
        jv r = binop(e, OP_MOD, v, jv_int(2), line);
        return jv_equal(r, jv_int(t[0] == 'o' ? 1 : 0));
    }
    if (!strcmp(t, "divisibleby")) {
        jv r = binop(e, OP_MOD, v, x, line);
        return !jv_truthy(r);
    }
    if (!strcmp(t, "lower") || !strcmp(t, "upper")) {
        jv s = jv_to_str(C, v);
        bool cased = false;
        size_t o = 0;
        uint32_t cp;
        while (o < s.u.s.n) {
            o += utf8_next(s.u.s.p + o, s.u.s.n - o, &cp);
            uint32_t lo = case_map(e, cp, false), up = case_map(e, cp, true);
            if (lo != up) {
                cased = true;
                if (t[0] == 'l' ? cp != lo : cp != up)
                    return false;
            }
        }
        return cased;
    }
    if (!strcmp(t, "sameas")) {
        if (v.k != x.k)
            return false;
        switch (v.k) {
        case JV_NONE:
        case JV_UNDEF: return true;
        case JV_BOOL: return v.u.b == x.u.b;
        case JV_LIST: return v.u.l == x.u.l;
        case JV_DICT: return v.u.d == x.u.d;
        default: return jv_equal(v, x);
        }
    }
    if (!strcmp(t, "eq") || !strcmp(t, "equalto") || !strcmp(t, "=="))
        return cmpop(e, OP_EQ, v, x, line);
    if (!strcmp(t, "ne") || !strcmp(t, "!="))
        return cmpop(e, OP_NE, v, x, line);
    if (!strcmp(t, "lt") || !strcmp(t, "lessthan") || !strcmp(t, "<"))
        return cmpop(e, OP_LT, v, x, line);
    if (!strcmp(t, "le") || !strcmp(t, "<="))
        return cmpop(e, OP_LE, v, x, line);
    if (!strcmp(t, "gt") || !strcmp(t, "greaterthan") || !strcmp(t, ">"))
        return cmpop(e, OP_GT, v, x, line);
    if (!strcmp(t, "ge") || !strcmp(t, ">="))
        return cmpop(e, OP_GE, v, x, line);
    if (!strcmp(t, "in"))
        return contains(e, x, v, line);
    jinja_fail(C, "line %d: unsupported test '%s'", line, t);
}

/* ---- expressions ---- */

static jv eval(ev *e, scope *s, const jnode *n)
{
    if (++e->depth > JINJA_MAX_DEPTH * 4)
        jinja_fail(C, "line %d: evaluation nested too deeply", n->line);
    jv r;
    switch (n->kind) {
    case N_LIT: r = n->lit; break;
    case N_NAME: r = lookup(e, s, n->name, n->name_len); break;
    case N_LIST:
        r = jv_list_new(C, n->args.n);
        r.u.l->kind = n->op == 1 ? JL_TUPLE : JL_LIST;
        for (size_t i = 0; i < n->args.n; i++)
            jv_list_push(C, r, eval(e, s, n->args.v[i]));
        break;
    case N_DICT:
        r = jv_dict_new(C);
        for (size_t i = 0; i < n->args.n; i++) {
            jv k = eval(e, s, n->args.v[i]);
            if (k.k == JV_LIST || k.k == JV_DICT || k.k == JV_UNDEF)
                jinja_fail(C, "line %d: unhashable dict key of type '%s'", n->line, jv_type_name(k));
            jv_dict_set(C, r, k, eval(e, s, n->args2.v[i]));
        }
        break;
    case N_ATTR: r = get_attr(e, eval(e, s, n->a), n->name, strlen(n->name), n->line); break;
    case N_ITEM: {
        jv obj = eval(e, s, n->a);
        r = get_item(e, obj, eval(e, s, n->b), n->line);
        break;
    }
    case N_SLICE: {
        jv obj = eval(e, s, n->a);
        jv a = n->b ? eval(e, s, n->b) : jv_none();
        jv b = n->c ? eval(e, s, n->c) : jv_none();
        jv st = n->d ? eval(e, s, n->d) : jv_none();
        r = do_slice(e, obj, a, b, st, n->line);
        break;
    }
    case N_CALL: {
        jv callee = eval(e, s, n->a);
        args a;
        eval_args(e, s, n, &a, callee.k == JV_FUNC && callee.u.fn->name ? callee.u.fn->name : "call");
        r = call_value(e, callee, &a);
        break;
    }
    case N_FILTER: {
        jv v = eval(e, s, n->a);
        args a;
        eval_args(e, s, n, &a, n->name);
        r = apply_filter(e, s, n->name, v, a.pos, a.npos, a.kwn, a.kwv, a.nkw, n->line);
        break;
    }
    case N_TEST: {
        jv v = eval(e, s, n->a);
        args a;
        eval_args(e, s, n, &a, n->name);
        if (a.nkw)
            jinja_fail(C, "line %d: test '%s' takes no keyword arguments", n->line, n->name);
        bool t = apply_test(e, n->name, v, a.pos, a.npos, n->line);
        r = jv_bool(n->op ? !t : t);
        break;
    }
    case N_NEG:
    case N_POS: {
        jv v = eval(e, s, n->a);
        if (v.k == JV_FLOAT) {
            r = jv_float(n->kind == N_NEG ? -v.u.f : v.u.f);
        } else if (v.k == JV_INT || v.k == JV_BOOL) {
            int64_t i = num_i(v);
            if (n->kind == N_NEG && i == INT64_MIN)
                jinja_fail(C, "line %d: integer overflow in unary '-'", n->line);
            r = jv_int(n->kind == N_NEG ? -i : i);
        } else {
            check_defined(e, v, n->line);
            jinja_fail(C, "line %d: bad operand type for unary %c: '%s'", n->line, n->kind == N_NEG ? '-' : '+',
                       jv_type_name(v));
        }
        break;
    }
    case N_NOT: r = jv_bool(!jv_truthy(eval(e, s, n->a))); break;
    case N_BIN: {
        jv a = eval(e, s, n->a);
        r = binop(e, n->op, a, eval(e, s, n->b), n->line);
        break;
    }
    case N_CMP: {
        jv a = eval(e, s, n->a);
        r = jv_bool(cmpop(e, n->op, a, eval(e, s, n->b), n->line));
        break;
    }
    case N_AND: {
        jv a = eval(e, s, n->a);
        r = jv_truthy(a) ? eval(e, s, n->b) : a;
        break;
    }
    case N_OR: {
        jv a = eval(e, s, n->a);
        r = jv_truthy(a) ? a : eval(e, s, n->b);
        break;
    }
    case N_COND:
        if (jv_truthy(eval(e, s, n->a)))
            r = eval(e, s, n->b);
        else
            r = n->c ? eval(e, s, n->c) : undef_msg(e, "the inline if-expression evaluated to false and no else "
                                                       "section was defined.%s%s", "", "");
        break;
    case N_BODYVALUE: r = e->body_value; break;
    default: jinja_fail(C, "line %d: unsupported expression", n->line);
    }
    e->depth--;
    return r;
}

/* ---- statements ---- */

static void assign_targets(ev *e, scope *s, const jnodes *targets, jv v, int line)
{
    if (targets->n == 1) {
        scope_set(e, s, targets->v[0]->name, v);
        return;
    }
    jv items = iter_list(e, v, line);
    if (items.u.l->n != targets->n)
        jinja_fail(C, "line %d: cannot unpack %zu value(s) into %zu name(s)", line, items.u.l->n, targets->n);
    for (size_t i = 0; i < targets->n; i++)
        scope_set(e, s, targets->v[i]->name, items.u.l->items[i]);
}

static int exec_for(ev *e, scope *s, const jnode *n)
{
    jv items = iter_list(e, eval(e, s, n->a), n->line);
    scope *ls = scope_new(e, s);
    if (n->b) {
        jv kept = jv_list_new(C, 0);
        for (size_t i = 0; i < items.u.l->n; i++) {
            step(e, n->line);
            assign_targets(e, ls, &n->targets, items.u.l->items[i], n->line);
            if (jv_truthy(eval(e, ls, n->b)))
                jv_list_push(C, kept, items.u.l->items[i]);
        }
        items = kept;
    }
    size_t len = items.u.l->n;
    /* One loop object per loop, updated in place (like Jinja's LoopContext); fixed key order
     * lets each iteration write the values directly. */
    static const char *const keys[] = {"index0", "index", "revindex0", "revindex", "first", "last", "length",
                                       "depth", "depth0", "previtem", "nextitem", "cycle"};
    enum { K_INDEX0, K_INDEX, K_REVINDEX0, K_REVINDEX, K_FIRST, K_LAST, K_LENGTH, K_DEPTH, K_DEPTH0, K_PREV,
           K_NEXT, K_CYCLE, K_COUNT };
    jv loop = jv_dict_new(C);
    for (int k = 0; k < K_COUNT; k++)
        jv_dict_set_str(C, loop, keys[k], jv_none());
    jv *lv = loop.u.d->vals;
    lv[K_LENGTH] = jv_int((int64_t)len);
    lv[K_DEPTH] = jv_int(1);
    lv[K_DEPTH0] = jv_int(0);
    lv[K_CYCLE] = make_func(e, JF_METHOD, "cycle", loop);
    jv no_prev = undef_msg(e, "there is no previous item%s%s", "", "");
    jv no_next = undef_msg(e, "there is no next item%s%s", "", "");
    bool completed = false;
    for (size_t i = 0; i < len; i++) {
        step(e, n->line);
        lv = loop.u.d->vals;
        lv[K_INDEX0] = jv_int((int64_t)i);
        lv[K_INDEX] = jv_int((int64_t)i + 1);
        lv[K_REVINDEX0] = jv_int((int64_t)(len - i - 1));
        lv[K_REVINDEX] = jv_int((int64_t)(len - i));
        lv[K_FIRST] = jv_bool(i == 0);
        lv[K_LAST] = jv_bool(i + 1 == len);
        lv[K_PREV] = i > 0 ? items.u.l->items[i - 1] : no_prev;
        lv[K_NEXT] = i + 1 < len ? items.u.l->items[i + 1] : no_next;
        /* Assignments in the body last for one iteration only, as in Jinja. */
        if (ls->captured) {
            ls = scope_new(e, s);
        } else {
            jdict *d = ls->vars.u.d;
            d->n = 0;
            d->index = NULL;
            d->index_cap = 0;
            d->depth = 0;
        }
        assign_targets(e, ls, &n->targets, items.u.l->items[i], n->line);
        scope_set(e, ls, "loop", loop);
        int flow = exec_body(e, ls, &n->body);
        if (flow == FLOW_BREAK)
            break;
        /* Jinja's else runs unless some iteration reached the end of the body: an iteration
         * left through break or continue does not count. */
        if (flow == FLOW_NONE)
            completed = true;
    }
    if (!completed && n->body2.n)
        return exec_body(e, s, &n->body2);
    return FLOW_NONE;
}

static int exec_stmt(ev *e, scope *s, const jnode *n)
{
    step(e, n->line);
    switch (n->kind) {
    case N_TEXT: jbuf_put(C, e->out, n->name, n->name_len); return FLOW_NONE;
    case N_OUTPUT: jv_write_str(C, e->out, eval(e, s, n->a)); return FLOW_NONE;
    case N_IF:
        if (jv_truthy(eval(e, s, n->a)))
            return exec_body(e, s, &n->body);
        return exec_body(e, s, &n->body2);
    case N_FOR: return exec_for(e, s, n);
    case N_SET: {
        jv v = eval(e, s, n->b);
        if (n->a) {
            jv ns = eval(e, s, n->a->a);
            if (ns.k != JV_DICT || !ns.u.d->is_namespace)
                jinja_fail(C, "line %d: cannot assign attribute on non-namespace object", n->line);
            jv_dict_set(C, ns, jv_str(C, n->a->name), v);
        } else {
            assign_targets(e, s, &n->targets, v, n->line);
        }
        return FLOW_NONE;
    }
    case N_SETBLOCK:
    case N_FILTERBLOCK: {
        jbuf *saved = e->out;
        jbuf buf = {.limit = e->lim->max_output};
        e->out = &buf;
        exec_body(e, s, &n->body);
        e->out = saved;
        jv text = jbuf_value(C, &buf);
        if (n->kind == N_SETBLOCK) {
            scope_set(e, s, n->targets.v[0]->name, text);
        } else {
            jv saved_body = e->body_value;
            e->body_value = text;
            jv r = eval(e, s, n->a);
            e->body_value = saved_body;
            jv_write_str(C, e->out, r);
        }
        return FLOW_NONE;
    }
    case N_MACRO: {
        jv f = make_func(e, JF_MACRO, n->name, jv_none());
        f.u.fn->macro = n;
        f.u.fn->closure = s;
        s->captured = true;
        scope_set(e, s, n->name, f);
        return FLOW_NONE;
    }
    case N_BREAK: return FLOW_BREAK;
    case N_CONTINUE: return FLOW_CONTINUE;
    case N_PASSBLOCK: return exec_body(e, s, &n->body);
    default: jinja_fail(C, "line %d: unsupported statement", n->line);
    }
}

static int exec_body(ev *e, scope *s, const jnodes *body)
{
    if (++e->depth > JINJA_MAX_DEPTH * 4)
        jinja_fail(C, "template execution nested too deeply");
    for (size_t i = 0; i < body->n; i++) {
        int flow = exec_stmt(e, s, body->v[i]);
        if (flow != FLOW_NONE) {
            e->depth--;
            return flow;
        }
    }
    e->depth--;
    return FLOW_NONE;
}

/* Case mapping beyond ASCII without touching the process locale. */
static locale_t utf8_locale;
static pthread_once_t utf8_once = PTHREAD_ONCE_INIT;

static void init_utf8_locale(void)
{
    utf8_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
}

void jinja_render(jctx *c, const jnodes *body, jv globals, const jinja_limits *limits, jbuf *out)
{
    pthread_once(&utf8_once, init_utf8_locale);
    ev e = {.c = c, .out = out, .globals = globals, .lim = limits, .utf8 = utf8_locale};
    out->limit = limits->max_output;
    scope *top = scope_new(&e, NULL);
    exec_body(&e, top, body);
}
