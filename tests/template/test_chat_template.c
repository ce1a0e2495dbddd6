/* Chat template tests: the Qwen2.5 template on the shared goldens, Jinja semantics cases whose
 * expected output comes from Jinja2 configured like Hugging Face transformers (jinja_cases.json,
 * see gen_cases.py), request normalisation, and limits on hostile templates and inputs. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

#include "../lib/test_util.h"

static const char *shared_dir(void)
{
    const char *d = getenv("PUNIE_SHARED_DIR");
    return d ? d : "../shared";
}

/* Renders source with the given inputs; returns the text (caller frees) or NULL with err set. */
static char *render_src(const char *source, const cJSON *messages, const cJSON *tools, bool agp, const cJSON *extra,
                        perr *err)
{
    chat_template *t;
    if (chat_template_compile(source, &t, err) != 0)
        return NULL;
    cJSON *empty = cJSON_CreateArray();
    char *out = NULL;
    size_t len;
    int rc = chat_template_render(t, messages ? messages : empty, tools, agp, extra, &out, &len, err);
    cJSON_Delete(empty);
    chat_template_free(t);
    if (rc != 0)
        return NULL;
    if (strlen(out) != len)
        fprintf(stderr, "note: rendered text contains NUL bytes\n");
    return out;
}

static char *render_vars(const char *source, const char *vars_json, perr *err)
{
    cJSON *vars = cJSON_Parse(vars_json);
    char *out = render_src(source, NULL, NULL, false, vars, err);
    cJSON_Delete(vars);
    return out;
}

static char *qwen_template(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/fixtures/qwen2.5-tokenizer/tokenizer_config.json", shared_dir());
    cJSON *cfg = test_load_json(path);
    if (!cfg)
        return NULL;
    const cJSON *tpl = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    char *s = cJSON_IsString(tpl) ? strdup(tpl->valuestring) : NULL;
    cJSON_Delete(cfg);
    return s;
}

static tokenizer *qwen_tok;

/* ids_json: a JSON array of ids, or an object whose "prompt_ids" is one. */
static void check_ids(const char *text, size_t len, const char *ids_path)
{
    cJSON *j = test_load_json(ids_path);
    const cJSON *arr = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, "prompt_ids") : j;
    CHECK(cJSON_IsArray(arr), "cannot read ids from %s", ids_path);
    int32_t *ids = NULL;
    size_t n = 0;
    perr err = {0};
    if (cJSON_IsArray(arr) && qwen_tok) {
        CHECK(tokenizer_encode(qwen_tok, text, len, &ids, &n, &err) == 0, "encode: %s", err.msg);
        bool same = (size_t)cJSON_GetArraySize(arr) == n;
        size_t i = 0;
        const cJSON *id;
        cJSON_ArrayForEach(id, arr)
        {
            if (i >= n || ids[i] != (int32_t)id->valuedouble)
                same = false;
            i++;
        }
        CHECK(same, "%s: token ids of the rendered prompt differ (%zu ids, expected %d)", ids_path, n,
              cJSON_GetArraySize(arr));
    }
    free(ids);
    cJSON_Delete(j);
}

/* Renders one request file ({messages, tools?, add_generation_prompt?}) and compares to a text file
 * and, through the tokenizer, to the expected ids.
 * The goldens' generator defaults add_generation_prompt to true when absent. */
static void check_golden(const chat_template *t, const char *request_path, const char *expect_path,
                         const char *ids_path)
{
    cJSON *req = test_load_json(request_path);
    size_t expect_len;
    char *expect = test_slurp(expect_path, &expect_len);
    CHECK(req && expect, "cannot read %s / %s", request_path, expect_path);
    if (!req || !expect) {
        cJSON_Delete(req);
        free(expect);
        return;
    }
    const cJSON *agp = cJSON_GetObjectItemCaseSensitive(req, "add_generation_prompt");
    perr err = {0};
    char *out = NULL;
    size_t len = 0;
    int rc = chat_template_render(t, cJSON_GetObjectItemCaseSensitive(req, "messages"),
                                  cJSON_GetObjectItemCaseSensitive(req, "tools"), agp ? cJSON_IsTrue(agp) : true, NULL,
                                  &out, &len, &err);
    CHECK(rc == 0, "%s: render failed: %s", request_path, err.msg);
    if (rc == 0) {
        CHECK(len == expect_len && memcmp(out, expect, len) == 0, "%s: rendered text differs from %s\n--- got:\n%s",
              request_path, expect_path, out);
        check_ids(out, len, ids_path);
    }
    free(out);
    free(expect);
    cJSON_Delete(req);
}

static void test_goldens(void)
{
    char tokdir[4096];
    snprintf(tokdir, sizeof tokdir, "%s/fixtures/qwen2.5-tokenizer", shared_dir());
    perr terr = {0};
    CHECK(tokenizer_load(tokdir, &qwen_tok, &terr) == 0, "load tokenizer: %s", terr.msg);
    char *src = qwen_template();
    /* The tokenizer exposes the same template text. */
    CHECK(src && qwen_tok && tokenizer_chat_template(qwen_tok) && !strcmp(src, tokenizer_chat_template(qwen_tok)),
          "tokenizer_chat_template() matches tokenizer_config.json");
    CHECK(src != NULL, "cannot read the Qwen2.5 chat_template");
    if (!src)
        return;
    chat_template *t;
    perr err = {0};
    CHECK(chat_template_compile(src, &t, &err) == 0, "compile Qwen template: %s", err.msg);
    free(src);
    static const char *const goldens[] = {"01_simple", "02_system_multiturn", "03_tools_roundtrip",
                                          "04_tools_with_system"};
    char req[4096], exp[4096], ids[4096];
    for (size_t i = 0; i < sizeof goldens / sizeof *goldens; i++) {
        snprintf(req, sizeof req, "%s/fixtures/chat-template/%s.json", shared_dir(), goldens[i]);
        snprintf(exp, sizeof exp, "%s/fixtures/chat-template/%s.rendered.txt", shared_dir(), goldens[i]);
        snprintf(ids, sizeof ids, "%s/fixtures/chat-template/%s.ids.json", shared_dir(), goldens[i]);
        check_golden(t, req, exp, ids);
    }
    static const char *const refs[] = {"agent-tools", "chat-short"};
    for (size_t i = 0; i < sizeof refs / sizeof *refs; i++) {
        snprintf(req, sizeof req, "%s/fixtures/reference/tiny-random-qwen2-4bit/%s.request.json", shared_dir(),
                 refs[i]);
        snprintf(exp, sizeof exp, "%s/fixtures/reference/tiny-random-qwen2-4bit/%s.prompt.txt", shared_dir(), refs[i]);
        snprintf(ids, sizeof ids, "%s/fixtures/reference/tiny-random-qwen2-4bit/%s.json", shared_dir(), refs[i]);
        check_golden(t, req, exp, ids);
    }
    chat_template_free(t);
    tokenizer_free(qwen_tok);
    qwen_tok = NULL;
}

static void test_jinja_cases(void)
{
    const char *path = getenv("PUNIE_TEMPLATE_CASES");
    cJSON *cases = path ? test_load_json(path) : NULL;
    CHECK(cases != NULL, "cannot read jinja cases (PUNIE_TEMPLATE_CASES)");
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cases)
    {
        const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
        const char *tpl = cJSON_GetObjectItemCaseSensitive(c, "template")->valuestring;
        const cJSON *vars = cJSON_GetObjectItemCaseSensitive(c, "vars");
        const cJSON *expect = cJSON_GetObjectItemCaseSensitive(c, "expect");
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(c, "error");
        perr err = {0};
        char *out = render_src(tpl, NULL, NULL, false, vars, &err);
        if (expect) {
            CHECK(out && strcmp(out, expect->valuestring) == 0, "case %s: expected [%s] got [%s] (error: %s)", name,
                  expect->valuestring, out ? out : "", out ? "" : err.msg);
        } else {
            CHECK(!out && strstr(err.msg, error->valuestring), "case %s: expected error containing [%s], got %s%s%s",
                  name, error->valuestring, out ? "output [" : "error: ", out ? out : err.msg, out ? "]" : "");
        }
        free(out);
        n++;
    }
    CHECK(n > 100, "only %d jinja cases", n);
    cJSON_Delete(cases);
}

static void test_raise_exception_message(void)
{
    perr err = {0};
    char *out = render_vars("{{ raise_exception('Conversation roles must alternate user/assistant') }}", "{}", &err);
    CHECK(!out && strcmp(err.msg, "Conversation roles must alternate user/assistant") == 0,
          "raise_exception message is passed through unchanged, got [%s]", err.msg);
    free(out);
}

/* mlx-lm's request normalisation: text parts joined, null content -> "", JSON-string arguments parsed. */
static void test_message_normalisation(void)
{
    const char *tpl = "{% for m in messages %}[{{ m.role }}:{{ m.content }}]"
                      "{% for c in m.tool_calls %}{{ c.function.arguments | tojson }}{{ c.function.arguments is mapping }}"
                      "{% endfor %}{% endfor %}";
    cJSON *msgs = cJSON_Parse(
        "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":\"function\",\"function\":"
        "{\"name\":\"f\",\"arguments\":\"{\\\"x\\\": 1, \\\"y\\\": [\\\"é\\\"]}\"}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":{\"z\":true}}}]}]");
    perr err = {0};
    char *out = render_src(tpl, msgs, NULL, false, NULL, &err);
    const char *expect = "[user:ab][assistant:]{\"x\": 1, \"y\": [\"é\"]}True{\"z\": true}True";
    CHECK(out && strcmp(out, expect) == 0, "normalisation: got [%s] %s", out ? out : "", err.msg);
    free(out);
    cJSON_Delete(msgs);

    msgs = cJSON_Parse("[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]");
    out = render_src(tpl, msgs, NULL, false, NULL, &err);
    CHECK(!out && strstr(err.msg, "only 'text' content parts are supported"), "image part rejected: %s", err.msg);
    free(out);
    cJSON_Delete(msgs);

    msgs = cJSON_Parse("[{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":\"f\","
                       "\"arguments\":\"{not json\"}}]}]");
    out = render_src(tpl, msgs, NULL, false, NULL, &err);
    CHECK(!out && strstr(err.msg, "not valid JSON"), "bad arguments rejected: %s", err.msg);
    free(out);
    cJSON_Delete(msgs);

    msgs = cJSON_Parse("{\"role\":\"user\"}");
    out = render_src(tpl, msgs, NULL, false, NULL, &err);
    CHECK(!out && strstr(err.msg, "messages must be an array"), "messages not an array: %s", err.msg);
    free(out);
    cJSON_Delete(msgs);

    /* Extra variables such as bos_token reach the template; tools default to none. */
    cJSON *extra = cJSON_Parse("{\"bos_token\":\"<s>\",\"eos_token\":\"</s>\"}");
    out = render_src("{{ bos_token }}{{ tools is none }}{{ add_generation_prompt }}{{ eos_token }}", NULL, NULL, true,
                     extra, &err);
    CHECK(out && strcmp(out, "<s>TrueTrue</s>") == 0, "extra vars: got [%s] %s", out ? out : "", err.msg);
    free(out);
    cJSON_Delete(extra);
}

static char *repeat_str(const char *unit, int times, const char *middle, const char *end_unit)
{
    size_t a = strlen(unit), m = strlen(middle), b = strlen(end_unit);
    char *s = malloc((a + b) * (size_t)times + m + 1), *p = s;
    for (int i = 0; i < times; i++, p += a)
        memcpy(p, unit, a);
    memcpy(p, middle, m);
    p += m;
    for (int i = 0; i < times; i++, p += b)
        memcpy(p, end_unit, b);
    *p = 0;
    return s;
}

static void expect_error(const char *tpl, const char *vars, const char *needle, const char *what)
{
    perr err = {0};
    char *out = render_vars(tpl, vars, &err);
    CHECK(!out && strstr(err.msg, needle), "%s: expected error containing [%s], got %s", what, needle,
          out ? "output" : err.msg);
    free(out);
}

static void test_limits(void)
{
    char *deep_if = repeat_str("{% if true %}", 5000, "x", "{% endif %}");
    expect_error(deep_if, "{}", "nested deeper", "deeply nested if blocks");
    free(deep_if);
    char *deep_paren = repeat_str("(", 100000, "1", ")");
    char *tpl = malloc(strlen(deep_paren) + 8);
    sprintf(tpl, "{{ %s }}", deep_paren);
    expect_error(tpl, "{}", "nested deeper", "deeply nested parentheses");
    free(tpl);
    free(deep_paren);
    char *deep_not = repeat_str("not ", 100000, "1", "");
    tpl = malloc(strlen(deep_not) + 8);
    sprintf(tpl, "{{ %s }}", deep_not);
    expect_error(tpl, "{}", "nested deeper", "long not chain");
    free(tpl);
    free(deep_not);

    expect_error("{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}", "{}", "macro calls nested deeper",
                 "infinite macro recursion");
    expect_error("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "{}", "output exceeds",
                 "output size limit");
    expect_error("{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}", "{}",
                 "evaluation steps", "step limit");
    expect_error("{% set ns = namespace(s='x') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                 "{}", "", "exponential string growth");
    expect_error("{{ 'x' * 100000000000 }}", "{}", "too large", "huge repetition");
    expect_error("{% set ns = namespace(a=[], b=[]) %}{% for i in range(5000) %}{% set ns.a = [ns.a] %}"
                 "{% set ns.b = [ns.b] %}{% endfor %}{{ ns.a == ns.b }}",
                 "{}", "nested deeper", "deeply nested values built by the template");

    /* Value nesting from JSON input. */
    char *deep_json = repeat_str("[", 600, "1", "]");
    char *vars = malloc(strlen(deep_json) + 16);
    sprintf(vars, "{\"v\": %s}", deep_json);
    expect_error("{{ v | tojson }}", vars, "nested deeper", "deeply nested input value");
    free(vars);
    free(deep_json);
}

/* Every prefix of the real template either fails to compile with a message or renders: no crash. */
static void test_truncated_templates(void)
{
    char *src = qwen_template();
    if (!src)
        return;
    size_t n = strlen(src);
    cJSON *msgs = cJSON_Parse("[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"tool\",\"content\":\"r\"}]");
    cJSON *tools = cJSON_Parse("[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]");
    int compiled = 0;
    for (size_t cut = 0; cut <= n; cut++) {
        char saved = src[cut];
        src[cut] = 0;
        perr err = {0};
        chat_template *t;
        if (chat_template_compile(src, &t, &err) == 0) {
            compiled++;
            char *out = NULL;
            size_t len;
            if (chat_template_render(t, msgs, tools, true, NULL, &out, &len, &err) == 0)
                free(out);
            else
                CHECK(err.msg[0] != 0, "render error without message at cut %zu", cut);
            chat_template_free(t);
        } else {
            CHECK(err.msg[0] != 0, "compile error without message at cut %zu", cut);
        }
        src[cut] = saved;
    }
    CHECK(compiled > 0, "no prefix compiled");
    cJSON_Delete(msgs);
    cJSON_Delete(tools);
    free(src);
}

/* Random token soup from a fixed-seed generator: every template compiles or fails with a message,
 * and every compiled one renders or fails with a message (run under PUNIE_SANITIZE to catch memory
 * errors). */
static void test_token_soup(void)
{
    static const char *const toks[] = {
        "{{", "}}", "{%", "%}", "{#", "#}", "-", "+", " ", "\n", "if", "elif", "else", "endif", "for", "in",
        "endfor", "set", "=", "macro", "endmacro", "(", ")", "[", "]", "{", "}", ":", ",", ".", "|", "is", "not",
        "and", "or", "x", "m", "messages", "tools", "loop", "'a'", "\"b\\n\"", "'", "\"", "\\", "1", "-1",
        "2.5", "tojson", "trim", "length", "default", "join", "items", "map", "selectattr", "namespace", "ns",
        "raise_exception", "range", "break", "continue", "raw", "endraw", "upper", "~", "*", "//", "%", "**",
        "==", "<", "none", "true", "defined", "[::-1]", "[1:]", "\xc3\xa9", "\xff", "content", "role"};
    const size_t ntoks = sizeof toks / sizeof *toks;
    cJSON *msgs = cJSON_Parse("[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":null,"
                              "\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}}]}]");
    uint64_t state = 12345;
    char tpl[2048];
    int compiled = 0, rendered = 0;
    for (int i = 0; i < 4000; i++) {
        size_t len = 0;
        int mode = i % 3;
        const char *head = mode == 0 ? "{{ " : mode == 1 ? "{% for x in " : "";
        len += (size_t)snprintf(tpl, sizeof tpl, "%s", head);
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        int count = 1 + (int)((state >> 33) % 40);
        for (int k = 0; k < count; k++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            const char *tok = toks[(state >> 33) % ntoks];
            len += (size_t)snprintf(tpl + len, sizeof tpl - len, "%s ", tok);
        }
        snprintf(tpl + len, sizeof tpl - len, "%s", mode == 0 ? " }}" : mode == 1 ? " %}[{{ x }}]{% endfor %}" : "");
        chat_template *t;
        perr err = {0};
        if (chat_template_compile(tpl, &t, &err) != 0) {
            CHECK(err.msg[0] != 0, "soup %d: compile error without message", i);
            continue;
        }
        compiled++;
        char *out = NULL;
        size_t olen;
        if (chat_template_render(t, msgs, NULL, true, NULL, &out, &olen, &err) == 0)
            rendered++;
        else
            CHECK(err.msg[0] != 0, "soup %d: render error without message", i);
        free(out);
        chat_template_free(t);
    }
    CHECK(compiled > 100 && rendered > 100, "soup exercised too little: %d compiled, %d rendered", compiled, rendered);
    cJSON_Delete(msgs);
}

int main(void)
{
    test_goldens();
    test_jinja_cases();
    test_raise_exception_message();
    test_message_normalisation();
    test_limits();
    test_truncated_templates();
    test_token_soup();
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
