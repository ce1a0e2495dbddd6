/* Chat template rendering speed: the Qwen2.5 template on the agent-tools reference request and on a
 * long synthetic conversation. Baseline in the same run: copying the rendered bytes once (memcpy),
 * so the ratio says how much slower than a plain copy of the output rendering is.
 * Usage: bench_chat_template [shared_dir] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "tokenizer/chat_template.h"
#include "util/clock.h"
#include "util/fs.h"

/* A whole file through punie's read_file, or NULL. */
static char *slurp(const char *path)
{
    char *text = NULL;
    return read_file(path, 64u << 20, &text, NULL, NULL) == 0 ? text : NULL;
}

static void run(const char *name, const chat_template *t, const cJSON *msgs, const cJSON *tools, int iters)
{
    perr err = {0};
    char *out = NULL;
    size_t len = 0;
    double t0 = monotonic_s();
    for (int i = 0; i < iters; i++) {
        free(out);
        if (chat_template_render(t, msgs, tools, true, NULL, &out, &len, &err) != 0) {
            fprintf(stderr, "%s: %s\n", name, err.msg);
            return;
        }
    }
    double render = (monotonic_s() - t0) / iters;
    char *copy = malloc(len + 1);
    t0 = monotonic_s();
    for (int i = 0; i < iters; i++) {
        memcpy(copy, out, len);
        __asm__ volatile("" ::"r"(copy) : "memory");
    }
    double base = (monotonic_s() - t0) / iters;
    printf("%-22s %9zu bytes  render %9.1f us  %7.1f MB/s  memcpy baseline ratio %.0fx\n", name, len, render * 1e6,
           (double)len / render / 1e6, base > 0 ? render / base : 0.0);
    free(copy);
    free(out);
}

int main(int argc, char **argv)
{
    const char *shared = argc > 1 ? argv[1] : getenv("PUNIE_SHARED_DIR");
    if (!shared)
        shared = "../shared";
    char path[4096];
    snprintf(path, sizeof path, "%s/fixtures/qwen2.5-tokenizer/tokenizer_config.json", shared);
    char *cfg_text = slurp(path);
    cJSON *cfg = cfg_text ? cJSON_Parse(cfg_text) : NULL;
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    if (!cJSON_IsString(src)) {
        fprintf(stderr, "cannot read %s\n", path);
        return 1;
    }
    perr err = {0};
    chat_template *t;
    double t0 = monotonic_s();
    if (chat_template_compile(src->valuestring, &t, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("compile Qwen2.5 template: %.1f us\n", (monotonic_s() - t0) * 1e6);

    snprintf(path, sizeof path, "%s/fixtures/reference/tiny-random-qwen2-4bit/agent-tools.request.json", shared);
    char *req_text = slurp(path);
    cJSON *req = req_text ? cJSON_Parse(req_text) : NULL;
    if (req)
        run("agent-tools request", t, cJSON_GetObjectItemCaseSensitive(req, "messages"),
            cJSON_GetObjectItemCaseSensitive(req, "tools"), 2000);

    /* 400 turns of ~4 KB each, with tool calls and tool results. */
    cJSON *msgs = cJSON_CreateArray();
    char *body = malloc(4097);
    for (int i = 0; i < 4096; i++)
        body[i] = (char)('a' + i % 26);
    body[4096] = 0;
    for (int i = 0; i < 400; i++) {
        cJSON *m = cJSON_CreateObject();
        static const char *const roles[] = {"user", "assistant", "tool", "assistant"};
        cJSON_AddStringToObject(m, "role", roles[i % 4]);
        cJSON_AddStringToObject(m, "content", body);
        if (i % 4 == 1)
            cJSON_AddItemToObject(m, "tool_calls",
                                  cJSON_Parse("[{\"type\":\"function\",\"function\":{\"name\":\"read_file\","
                                              "\"arguments\":\"{\\\"path\\\": \\\"src/main.c\\\"}\"}}]"));
        cJSON_AddItemToArray(msgs, m);
    }
    run("400-turn conversation", t, msgs, req ? cJSON_GetObjectItemCaseSensitive(req, "tools") : NULL, 20);

    free(body);
    cJSON_Delete(msgs);
    cJSON_Delete(req);
    free(req_text);
    cJSON_Delete(cfg);
    free(cfg_text);
    chat_template_free(t);
    return 0;
}
