/* tokenizer.json and tokenizer_config.json are files from the Hub: loading any bytes must fail cleanly
 * or give a tokenizer that then encodes and decodes without crashing.
 * Input: tokenizer.json, then "\n----\n", then tokenizer_config.json (seeds are small real tokenizers).
 * Needs: src/tokenizer/tokenizer.c */
#include "fuzz.h"

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 256 * 1024)
        return 0;
    char *json, *config;
    fuzz_split(data, size, &json, &config);
    const char *dir = fuzz_tmpdir();
    fuzz_write(dir, "tokenizer.json", json, strlen(json));
    fuzz_write(dir, "tokenizer_config.json", config, strlen(config));
    tokenizer *t = NULL;
    perr err;
    if (tokenizer_load(dir, &t, &err) == 0) {
        static const char sample[] = "Hello world<|im_start|>user\n def f(x):\n\treturn x  # ünï 天 \xf0\x9f\x98\x80";
        int32_t *ids = NULL;
        size_t n = 0;
        if (tokenizer_encode(t, sample, sizeof sample - 1, &ids, &n, &err) == 0) {
            int size_ids = tokenizer_size(t);
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= size_ids)
                    abort(); /* encode produced an id the tokenizer does not have */
            char *text = NULL;
            size_t len = 0;
            if (tokenizer_decode(t, ids, n, false, &text, &len, &err) == 0)
                free(text);
            free(ids);
        }
        (void)tokenizer_chat_template(t);
        (void)tokenizer_eos_token(t);
        (void)tokenizer_token_id(t, "<|im_end|>");
        tokenizer_free(t);
    }
    free(json);
    free(config);
    return 0;
}
