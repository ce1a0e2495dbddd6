/* Finding tool calls in a model's streamed reply (spec/engine.md §7.3).
 *
 * Recognised forms: <tool_call>{"name": ..., "arguments": {...}}</tool_call> (the Hermes form of the
 * Qwen2.5 template), and, when tools were offered, the forms Qwen2.5-Coder models tend to emit instead:
 * a ```json fenced block or a bare JSON object at the start of a line, holding an object with "name"
 * (one of the offered tools) and "arguments". Text is fed as it is decoded; content is passed on as
 * soon as it can no longer be the start of a tool call, so no markup leaks into content. Anything that
 * turns out not to be a valid call is passed on as content, unchanged. */
#ifndef PUNIE_SERVER_TOOL_CALLS_H
#define PUNIE_SERVER_TOOL_CALLS_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

typedef struct tool_parser_sink {
    /* Reply text that is not part of a tool call. */
    int (*content)(void *ud, const char *text, size_t len);
    /* A complete call; arguments is a JSON text (an object unless the model wrote another JSON string). */
    int (*tool_call)(void *ud, const char *name, const char *arguments);
    void *ud;
} tool_parser_sink;

typedef struct tool_parser tool_parser;

/* tools: the request's OpenAI "tools" array, or NULL when no tools are offered (then all text is
 * content). The parser keeps its own copy of the tool names. */
tool_parser *tool_parser_new(const cJSON *tools);
void tool_parser_free(tool_parser *p);

/* Returns 0, or the first non-zero value a sink callback returned (or -1 on allocation failure). */
int tool_parser_feed(tool_parser *p, const char *text, size_t len, const tool_parser_sink *sink);
/* End of the reply: everything still held back is resolved and passed on. */
int tool_parser_finish(tool_parser *p, const tool_parser_sink *sink);
int tool_parser_n_calls(const tool_parser *p);

/* Parses one call object's text; on success *name and *arguments are malloc'd. require_known:
 * only accept a name from the offered tools and require "arguments". Exposed for tests. */
int tool_call_parse(const tool_parser *p, const char *text, size_t len, bool require_known, char **name,
                    char **arguments);

#endif
