/* Tool-call extraction and stop strings over streamed text, fed whole and in every split. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "server/stop_filter.h"
#include "server/strbuf.h"
#include "server/tool_calls.h"

#include "../lib/test_util.h"

typedef struct result {
    strbuf content;
    strbuf calls; /* "name|args\n" per call */
    int n_calls;
} result;

static int on_content(void *ud, const char *t, size_t n)
{
    result *r = ud;
    /* No delta may carry tool-call markup. */
    return sb_append(&r->content, t, n);
}

static int on_call(void *ud, const char *name, const char *args)
{
    result *r = ud;
    r->n_calls++;
    return sb_printf(&r->calls, "%s|%s\n", name, args);
}

static const char *TOOLS_JSON =
    "[{\"type\":\"function\",\"function\":{\"name\":\"read_file\",\"parameters\":{}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"run\",\"parameters\":{}}}]";

/* Feeds text in pieces of `step` bytes (0 = all at once). */
static void parse(const cJSON *tools, const char *text, size_t step, result *r)
{
    sb_init(&r->content);
    sb_init(&r->calls);
    r->n_calls = 0;
    tool_parser *p = tool_parser_new(tools);
    tool_parser_sink sink = {on_content, on_call, r};
    size_t n = strlen(text);
    if (step == 0)
        step = n ? n : 1;
    for (size_t i = 0; i < n; i += step) {
        size_t k = n - i < step ? n - i : step;
        CHECK(tool_parser_feed(p, text + i, k, &sink) == 0, "feed");
    }
    CHECK(tool_parser_finish(p, &sink) == 0, "finish");
    CHECK(tool_parser_n_calls(p) == r->n_calls, "count");
    tool_parser_free(p);
}

static void free_result(result *r)
{
    sb_free(&r->content);
    sb_free(&r->calls);
}

static void expect(const cJSON *tools, const char *text, const char *content, const char *calls)
{
    for (size_t step = 0; step <= 13; step++) {
        result r;
        parse(tools, text, step, &r);
        CHECK(strcmp(sb_str(&r.content), content) == 0, "text %s step %zu: content '%s', expected '%s'", text,
              step, sb_str(&r.content), content);
        CHECK(strcmp(sb_str(&r.calls), calls) == 0, "text %s step %zu: calls '%s', expected '%s'", text, step,
              sb_str(&r.calls), calls);
        free_result(&r);
    }
}

/* While streaming, no prefix of the content that was passed on may hold markup. */
static void expect_no_leak(const cJSON *tools, const char *text)
{
    result r;
    parse(tools, text, 1, &r);
    CHECK(!strstr(sb_str(&r.content), "<tool_call"), "leak: %s", sb_str(&r.content));
    CHECK(!strstr(sb_str(&r.content), "</tool_call"), "leak: %s", sb_str(&r.content));
    CHECK(!strstr(sb_str(&r.content), "```json"), "leak: %s", sb_str(&r.content));
    free_result(&r);
}

static void test_tool_calls(void)
{
    cJSON *tools = cJSON_Parse(TOOLS_JSON);
    /* Hermes tags. */
    expect(tools, "<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a.c\"}}\n</tool_call>", "",
           "read_file|{\"path\":\"a.c\"}\n");
    expect(tools, "Let me look.\n<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a.c\"}}\n</tool_call>",
           "Let me look.", "read_file|{\"path\":\"a.c\"}\n");
    /* Two calls, text after. */
    expect(tools,
           "<tool_call>{\"name\":\"run\",\"arguments\":{\"cmd\":\"make\"}}</tool_call>\n"
           "<tool_call>{\"name\":\"read_file\",\"arguments\":\"{\\\"path\\\":\\\"x\\\"}\"}</tool_call> done",
           "done", "run|{\"cmd\":\"make\"}\nread_file|{\"path\":\"x\"}\n");
    /* Tags accept any name; unknown names are the client's business. */
    expect(tools, "<tool_call>{\"name\":\"other\",\"arguments\":{}}</tool_call>", "", "other|{}\n");
    /* Broken JSON inside tags stays as content, unchanged. */
    expect(tools, "a <tool_call>{\"name\": \"run\", \"arguments\": {</tool_call> b",
           "a <tool_call>{\"name\": \"run\", \"arguments\": {</tool_call> b", "");
    /* Unterminated tag at the end: parsed if the body is complete, else content. */
    expect(tools, "<tool_call>{\"name\":\"run\",\"arguments\":{\"x\":1}}", "", "run|{\"x\":1}\n");
    expect(tools, "<tool_call>{\"name\":\"run\",\"argu", "<tool_call>{\"name\":\"run\",\"argu", "");
    /* Fenced JSON (the Qwen2.5-Coder habit). */
    expect(tools, "```json\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"src/ring.c\"}}\n```",
           "", "read_file|{\"path\":\"src/ring.c\"}\n");
    expect(tools, "I will read it.\n\n```json\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"r.c\"}}\n```\n",
           "I will read it.", "read_file|{\"path\":\"r.c\"}\n");
    /* A fenced JSON block that is not a call stays content, byte for byte. */
    expect(tools, "Config:\n```json\n{\"a\": 1}\n```\n", "Config:\n```json\n{\"a\": 1}\n```\n", "");
    expect(tools, "```json\n[1, 2]\n```", "```json\n[1, 2]\n```", "");
    expect(tools, "```json\n{\"name\": \"nope\", \"arguments\": {}}\n```",
           "```json\n{\"name\": \"nope\", \"arguments\": {}}\n```", "");
    /* Other fences are content right away. */
    expect(tools, "```c\nint x = {0};\n```", "```c\nint x = {0};\n```", "");
    /* Bare JSON object at the start of a line. */
    expect(tools, "{\"name\": \"run\", \"arguments\": {\"cmd\": \"make test\"}}", "", "run|{\"cmd\":\"make test\"}\n");
    expect(tools, "  {\"name\": \"run\", \"parameters\": {\"cmd\": \"}\"}}\nok", "ok", "run|{\"cmd\":\"}\"}\n");
    /* A brace in the middle of a line is plain text; so is a non-call object. */
    expect(tools, "int a[] = {1, 2};", "int a[] = {1, 2};", "");
    expect(tools, "{\"a\": {\"b\": 2}} tail", "{\"a\": {\"b\": 2}} tail", "");
    expect(tools, "{ not json }", "{ not json }", "");
    expect(tools, "{\"name\": \"run\", \"arguments\": {", "{\"name\": \"run\", \"arguments\": {", "");
    /* Unicode survives. */
    expect(tools, "héllo ✓ <tool_call>{\"name\":\"run\",\"arguments\":{\"s\":\"é\"}}</tool_call>", "héllo ✓",
           "run|{\"s\":\"é\"}\n");
    /* A partial opener that never completes is content. */
    expect(tools, "a <tool_ca", "a <tool_ca", "");
    expect(tools, "a ``", "a ``", "");
    expect(tools, "x < y and z", "x < y and z", "");

    expect_no_leak(tools, "text <tool_call>{\"name\":\"run\",\"arguments\":{}}</tool_call> more");
    expect_no_leak(tools, "text\n```json\n{\"name\":\"run\",\"arguments\":{}}\n``` more");

    /* Without tools everything is content, tags included. */
    expect(NULL, "<tool_call>{\"name\":\"run\",\"arguments\":{}}</tool_call>",
           "<tool_call>{\"name\":\"run\",\"arguments\":{}}</tool_call>", "");
    expect(NULL, "{\"name\": \"run\", \"arguments\": {}}", "{\"name\": \"run\", \"arguments\": {}}", "");
    expect(NULL, "  spaced  \n", "  spaced  \n", "");

    /* Garbage of every kind never crashes and is never lost. */
    const char *junk[] = {"<tool_call><tool_call></tool_call>", "```json```json```", "{{{{}}}}}", "\"{\\\"", "{\"\\",
                          "<tool_call>\n```json\n{\"name\":\"run\",\"arguments\":{}}\n```\n</tool_call>"};
    for (size_t i = 0; i < sizeof junk / sizeof *junk; i++) {
        for (size_t step = 0; step < 5; step++) {
            result r;
            parse(tools, junk[i], step, &r);
            CHECK(r.n_calls > 0 || strlen(sb_str(&r.content)) >= strlen(junk[i]) - 2, "lost text for %s: '%s'",
                  junk[i], sb_str(&r.content));
            free_result(&r);
        }
    }
    result r;
    parse(tools, junk[5], 1, &r);
    CHECK(strcmp(sb_str(&r.calls), "run|{}\n") == 0, "fenced inside tags: %s", sb_str(&r.calls));
    free_result(&r);
    cJSON_Delete(tools);
}

static void stop_case(const char *text, char *const *stops, int n, size_t step, const char *want, int want_stop)
{
    stop_filter *f = stop_filter_new(stops, n);
    strbuf out;
    sb_init(&out);
    size_t len = strlen(text);
    if (step == 0)
        step = len ? len : 1;
    int stopped = 0;
    for (size_t i = 0; i < len && !stopped; i += step) {
        size_t k = len - i < step ? len - i : step;
        int rc = stop_filter_feed(f, text + i, k, &out);
        CHECK(rc >= 0, "feed");
        /* Nothing passed on may contain the start of a stop string that later completes. */
        stopped = rc == 1;
    }
    if (!stopped)
        stop_filter_flush(f, &out);
    CHECK(strcmp(sb_str(&out), want) == 0 && stopped == want_stop, "stop '%s' step %zu: got '%s' (%d), want '%s' (%d)",
          text, step, sb_str(&out), stopped, want, want_stop);
    sb_free(&out);
    stop_filter_free(f);
}

static void test_stop_filter(void)
{
    char *s1[] = {"END"};
    char *s2[] = {"\n\n", "###", "xyzzy"};
    for (size_t step = 0; step < 6; step++) {
        stop_case("hello END world", s1, 1, step, "hello ", 1);
        stop_case("hello EN", s1, 1, step, "hello EN", 0);
        stop_case("ENENDX", s1, 1, step, "EN", 1);
        stop_case("no stop here", s1, 1, step, "no stop here", 0);
        stop_case("a\nb##c###d", s2, 3, step, "a\nb##c", 1);
        stop_case("xyzzxyzzy", s2, 3, step, "xyzz", 1);
        stop_case("first\n\nsecond", s2, 3, step, "first", 1);
        stop_case("plain", NULL, 0, step, "plain", 0);
    }
    /* A partial match is held back, and released when it turns out not to be one. */
    stop_filter *f = stop_filter_new(s1, 1);
    strbuf out;
    sb_init(&out);
    CHECK(stop_filter_feed(f, "abcE", 4, &out) == 0 && strcmp(sb_str(&out), "abc") == 0, "held: %s", sb_str(&out));
    CHECK(stop_filter_feed(f, "N", 1, &out) == 0 && strcmp(sb_str(&out), "abc") == 0, "held: %s", sb_str(&out));
    CHECK(stop_filter_feed(f, "x", 1, &out) == 0 && strcmp(sb_str(&out), "abcENx") == 0, "released: %s", sb_str(&out));
    sb_free(&out);
    stop_filter_free(f);
}

/* Random texts built from marker fragments: never a crash; without calls the content is the input,
 * byte for byte; and the result never depends on how the text was split. */
static void test_fuzz(void)
{
    static const char *frags[] = {"<tool_call>", "</tool_call>", "```json", "```", "{", "}", "\"name\"", ":",
                                  "\"run\"", ",", "\"arguments\"", "{}", "\n", " ", "x", "\xc3\xa9", "\"", "\\",
                                  "<tool", "[", "]"};
    cJSON *tools = cJSON_Parse(TOOLS_JSON);
    unsigned seed = 12345;
    char text[512];
    for (int iter = 0; iter < 3000; iter++) {
        size_t len = 0;
        int nf = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 24;
        for (int k = 0; k < nf; k++) {
            const char *f = frags[((seed = seed * 1103515245u + 12345u) >> 16) % (sizeof frags / sizeof *frags)];
            size_t fl = strlen(f);
            if (len + fl >= sizeof text)
                break;
            memcpy(text + len, f, fl);
            len += fl;
        }
        text[len] = '\0';
        result whole, split;
        parse(tools, text, 0, &whole);
        size_t step = 1 + ((seed = seed * 1103515245u + 12345u) >> 16) % 5;
        parse(tools, text, step, &split);
        CHECK(strcmp(sb_str(&whole.content), sb_str(&split.content)) == 0 &&
                  strcmp(sb_str(&whole.calls), sb_str(&split.calls)) == 0,
              "split %zu changes the result for '%s': '%s' vs '%s'", step, text, sb_str(&whole.content),
              sb_str(&split.content));
        if (whole.n_calls == 0)
            CHECK(strcmp(sb_str(&whole.content), text) == 0, "text lost: '%s' became '%s'", text,
                  sb_str(&whole.content));
        free_result(&whole);
        free_result(&split);
    }
    cJSON_Delete(tools);
}

int main(void)
{
    test_tool_calls();
    test_fuzz();
    test_stop_filter();
    return test_result("text pipeline: all checks passed");
}
