/* The model's real chat template (Qwen2.5, from the shared fixtures) rendered over whatever messages and
 * tools a client sends: any JSON renders or fails cleanly. Input: a JSON object {"messages", "tools",
 * "add_generation_prompt"} (the chat-template fixtures are the seeds).
 * Needs: src/tokenizer/chat_template.c src/tokenizer/jinja_eval.c */
#include "fuzz.h"

#include "tokenizer/chat_template.h"
#include "util/fs.h"

static chat_template *qwen;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *shared = getenv("PUNIE_SHARED_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/fixtures/qwen2.5-tokenizer/tokenizer_config.json", shared ? shared : "../shared");
    char *text = NULL;
    perr err;
    if (read_file(path, 1 << 20, &text, NULL, &err) != 0) {
        fprintf(stderr, "%s (set PUNIE_SHARED_DIR)\n", err.msg);
        abort();
    }
    cJSON *cfg = cJSON_Parse(text);
    const char *source = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"));
    if (!source || chat_template_compile(source, &qwen, &err) != 0) {
        fprintf(stderr, "cannot compile the Qwen2.5 template: %s\n", source ? err.msg : "no chat_template");
        abort();
    }
    cJSON_Delete(cfg);
    free(text);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    cJSON *in = cJSON_ParseWithLength((const char *)data, size);
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(in, "messages");
    if (!messages)
        messages = in; /* a bare array of messages */
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(in, "tools");
    bool agp = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(in, "add_generation_prompt"));
    char *out = NULL;
    size_t len = 0;
    perr err;
    if (messages && chat_template_render(qwen, messages, tools, agp, NULL, &out, &len, &err) == 0) {
        if (!out || strlen(out) > len)
            abort();
        free(out);
    }
    cJSON_Delete(in);
    return 0;
}
