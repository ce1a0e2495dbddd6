/* Jinja subset: lexer (HF whitespace rules) and parser to an AST. */
#ifndef PUNIE_TOKENIZER_JINJA_PARSE_H
#define PUNIE_TOKENIZER_JINJA_PARSE_H

#include "tokenizer/jinja_value.h"

typedef enum {
    /* statements */
    N_TEXT,     /* name/name_len: literal output */
    N_OUTPUT,   /* a: expression to print */
    N_IF,       /* a: cond, body, body2: else (an elif is an N_IF alone in body2) */
    N_FOR,      /* targets, a: iterable, b: filter cond or NULL, body, body2: else */
    N_SET,      /* targets (or a: N_ATTR target), b: value */
    N_SETBLOCK, /* targets[0], body */
    N_MACRO,    /* name, params (N_NAME or N_KWARG with default), body */
    N_BREAK,
    N_CONTINUE,
    N_FILTERBLOCK, /* a: N_FILTER chain applied to N_BODYVALUE, body */
    N_PASSBLOCK,   /* body rendered as is ({% generation %}) */
    /* expressions */
    N_LIT,    /* lit */
    N_NAME,   /* name */
    N_LIST,   /* args: items (tuples are lists) */
    N_DICT,   /* args: keys, args2: values */
    N_ATTR,   /* a.name */
    N_ITEM,   /* a[b] */
    N_SLICE,  /* a[b:c:d], NULL parts absent */
    N_CALL,   /* a(args, kwargs) */
    N_FILTER, /* a | name(args, kwargs); a may be NULL inside a filter block */
    N_TEST,   /* a is [not] name(args); op = 1 when negated */
    N_NEG,    /* -a */
    N_POS,    /* +a */
    N_NOT,    /* not a */
    N_BIN,    /* a op b: op is one of + - * / // % ** ~ */
    N_CMP,    /* a op b: == != < <= > >= in notin */
    N_AND,
    N_OR,
    N_COND,   /* b if a else c */
    N_KWARG,  /* name = a */
    N_BODYVALUE, /* placeholder for the captured body in a filter block */
} jnode_kind;

enum { OP_ADD = 1, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_CONCAT,
       OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN };

typedef struct jnode jnode;
typedef struct jnodes {
    jnode **v;
    size_t n, cap;
} jnodes;

struct jnode {
    jnode_kind kind;
    int line;
    int op;
    const char *name; /* NUL-terminated */
    size_t name_len;
    jv lit;
    jnode *a, *b, *c, *d;
    jnodes body, body2;
    jnodes args, args2, kwargs; /* kwargs: N_KWARG nodes */
    jnodes targets;             /* N_NAME nodes */
};

/* Parses source into a statement list allocated in c's arena. Fails through c. */
jnodes jinja_parse(jctx *c, const char *source, size_t len);

#endif
