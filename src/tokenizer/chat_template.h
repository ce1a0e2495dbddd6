/* The model's own Jinja chat template, rendered by punie's Jinja subset (spec/engine.md §7). */
#ifndef PUNIE_TOKENIZER_CHAT_TEMPLATE_H
#define PUNIE_TOKENIZER_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "util/err.h"

typedef struct chat_template chat_template;

/* Parses template source; an unsupported construct is an error that names it. */
int chat_template_compile(const char *source, chat_template **out, perr *err);
void chat_template_free(chat_template *t);

/* Renders with Hugging Face semantics (trim_blocks, lstrip_blocks, tojson like json.dumps).
 * messages: OpenAI-style array (content may be a string, null or a list of text parts; assistant
 * tool_calls arguments may be a JSON string or an object). tools: array or NULL.
 * extra: object of further variables (bos_token, eos_token, ...) or NULL.
 * The result is malloc'd and NUL-terminated. */
int chat_template_render(const chat_template *t, const cJSON *messages, const cJSON *tools,
                         bool add_generation_prompt, const cJSON *extra, char **out, size_t *len, perr *err);

#endif
