/* Chat templates are files from the Hub and messages come from HTTP clients: the Jinja subset must compile
 * or refuse any template text, and render any messages without crashing, hanging or unbounded output.
 * Input: template text, then "\n----\n", then a JSON object {"messages", "tools", "add_generation_prompt"}.
 * Needs: src/tokenizer/chat_template.c src/tokenizer/jinja_eval.c */
#include "fuzz.h"

#include "tokenizer/chat_template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    char *source, *json;
    fuzz_split(data, size, &source, &json);
    chat_template *t = NULL;
    perr err;
    if (chat_template_compile(source, &t, &err) == 0) {
        cJSON *in = cJSON_Parse(json);
        const cJSON *messages = cJSON_GetObjectItemCaseSensitive(in, "messages");
        const cJSON *tools = cJSON_GetObjectItemCaseSensitive(in, "tools");
        bool agp = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(in, "add_generation_prompt"));
        cJSON *extra = cJSON_Parse("{\"bos_token\": null, \"eos_token\": \"<|im_end|>\"}");
        cJSON *empty = cJSON_CreateArray();
        char *out = NULL;
        size_t len = 0;
        if (chat_template_render(t, messages ? messages : empty, tools, agp, extra, &out, &len, &err) == 0) {
            if (!out || strlen(out) > len)
                abort();
            free(out);
        }
        cJSON_Delete(empty);
        cJSON_Delete(extra);
        cJSON_Delete(in);
        chat_template_free(t);
    }
    free(source);
    free(json);
    return 0;
}
