/* Jinja subset evaluator (semantics of Jinja2's sandbox as Hugging Face transformers sets it up). */
#ifndef PUNIE_TOKENIZER_JINJA_EVAL_H
#define PUNIE_TOKENIZER_JINJA_EVAL_H

#include "tokenizer/jinja_parse.h"

typedef struct jinja_limits {
    size_t max_output;  /* bytes of rendered text (and of any captured block) */
    uint64_t max_steps; /* statements + loop iterations + calls, bounds run time */
    int max_call_depth; /* nested macro calls */
} jinja_limits;

/* Renders body with the variables of globals (a dict) into out. Fails through c. */
void jinja_render(jctx *c, const jnodes *body, jv globals, const jinja_limits *limits, jbuf *out);

#endif
