/* The model's reply is parsed for tool calls as it streams (src/server/tool_calls.c). Whatever the model
 * writes: no crash, the same result however the text is split into chunks (streaming and non-streaming
 * replies must agree), and without tools the text passes unchanged. (Arguments the model wrote as a JSON
 * string are passed on as that string, JSON or not, as OpenAI clients expect.)
 * Input: one byte of options (bit 0: tools offered; the rest seeds the chunk sizes), then the reply text.
 * Needs: src/server/tool_calls.c */
#include "fuzz.h"

#include <cjson/cJSON.h>

#include "server/strbuf.h"
#include "server/tool_calls.h"

typedef struct result {
    strbuf content;
    strbuf calls; /* "name\0arguments\0" per call */
} result;

static int on_content(void *ud, const char *text, size_t len)
{
    return sb_append(&((result *)ud)->content, text, len);
}

static int on_call(void *ud, const char *name, const char *arguments)
{
    result *r = ud;
    if (sb_append(&r->calls, name, strlen(name) + 1) != 0 || sb_append(&r->calls, arguments, strlen(arguments) + 1))
        return -1;
    return 0;
}

static void parse(const cJSON *tools, const char *text, size_t len, unsigned seed, result *r)
{
    sb_init(&r->content);
    sb_init(&r->calls);
    tool_parser *p = tool_parser_new(tools);
    if (!p)
        abort();
    tool_parser_sink sink = {on_content, on_call, r};
    size_t pos = 0;
    while (pos < len) {
        size_t n = len - pos;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            size_t k = 1 + (seed >> 16) % 8;
            n = k < n ? k : n;
        }
        if (tool_parser_feed(p, text + pos, n, &sink) != 0)
            abort();
        pos += n;
    }
    if (tool_parser_finish(p, &sink) != 0)
        abort();
    tool_parser_free(p);
}

static bool same(const strbuf *a, const strbuf *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 64 * 1024)
        return 0;
    static cJSON *tools;
    if (!tools)
        tools = cJSON_Parse("[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "
                            "{\"type\": \"object\"}}}, {\"type\": \"function\", \"function\": {\"name\": \"run\"}}]");
    const cJSON *offered = (data[0] & 1) ? tools : NULL;
    unsigned seed = data[0] | 0x100u;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    result whole, chunked;
    parse(offered, text, len, 0, &whole);
    parse(offered, text, len, seed, &chunked);
    if (!same(&whole.content, &chunked.content) || !same(&whole.calls, &chunked.calls)) {
        fprintf(stderr, "chunking changed the result:\nwhole:   [%.*s]\nchunked: [%.*s]\n", (int)whole.content.len,
                sb_str(&whole.content), (int)chunked.content.len, sb_str(&chunked.content));
        abort();
    }
    if (!offered && (whole.calls.len != 0 || whole.content.len != len ||
                     (len && memcmp(whole.content.data, text, len) != 0)))
        abort(); /* without tools the reply is content, byte for byte */
    sb_free(&whole.content);
    sb_free(&whole.calls);
    sb_free(&chunked.content);
    sb_free(&chunked.calls);
    return 0;
}
