/* The model's own Jinja chat template, rendered by punie's Jinja subset (spec/engine.md §7). */
#ifndef PUNIE_TOKENIZER_CHAT_TEMPLATE_H
#define PUNIE_TOKENIZER_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "util/err.h"

typedef struct chat_template chat_template;

/* Parses template source; an unsupported construct is an error that names it ("unsupported
 * construct: ...", "unsupported filter 'x'", ...), as is a malformed template (with its line).
 * A compiled template is immutable: several threads may render it at once. */
int chat_template_compile(const char *source, chat_template **out, perr *err);
void chat_template_free(chat_template *t);

/* Renders with Hugging Face semantics (trim_blocks, lstrip_blocks, tojson like json.dumps).
 * messages: OpenAI-style array (content may be a string, null or a list of text parts; assistant
 * tool_calls arguments may be a JSON string or an object). tools: array or NULL.
 * Messages are normalised as mlx-lm's server does: text parts are concatenated (other part types
 * are an error), null content becomes "", string arguments are parsed into objects.
 * extra: object of further variables or NULL. Hugging Face passes the tokenizer's special tokens
 * (bos_token, eos_token, ...) to every template; callers should put them here.
 * The template sees messages, tools (none when NULL), documents (none), add_generation_prompt.
 * Numbers from cJSON: an integral value below 2^53 is an int, others floats (cJSON keeps no
 * source text, so "1.0" in input JSON renders as 1 through tojson).
 * Errors: a raise_exception(msg) in the template leaves exactly msg in err; anything else is
 * "chat template: ...". Output is capped at 16 MiB, work at 5M steps, memory at 256 MiB.
 * The result is malloc'd and NUL-terminated. */
int chat_template_render(const chat_template *t, const cJSON *messages, const cJSON *tools,
                         bool add_generation_prompt, const cJSON *extra, char **out, size_t *len, perr *err);

#endif
