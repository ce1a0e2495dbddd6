/* Byte-level BPE tokenizer (spec/engine.md §6). Interim: every entry point is defined so that callers
 * link; loading reports that the tokenizer is not available yet. */
#include "tokenizer/tokenizer.h"

#include <stdlib.h>

struct tokenizer {
    int unused;
};

struct detokenizer {
    const tokenizer *t;
};

int tokenizer_load(const char *dir, tokenizer **out, perr *err)
{
    *out = NULL;
    return perr_set(err, "tokenizer: loading %s/tokenizer.json is not implemented yet", dir);
}

void tokenizer_free(tokenizer *t) { free(t); }

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n_ids, perr *err)
{
    *ids = NULL;
    *n_ids = 0;
    return perr_set(err, "tokenizer: encode is not implemented yet");
}

int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **out,
                     size_t *len, perr *err)
{
    *out = NULL;
    *len = 0;
    return perr_set(err, "tokenizer: decode is not implemented yet");
}

int tokenizer_size(const tokenizer *t) { return 0; }
int tokenizer_token_id(const tokenizer *t, const char *s) { return -1; }
const char *tokenizer_chat_template(const tokenizer *t) { return NULL; }
const char *tokenizer_eos_token(const tokenizer *t) { return NULL; }
const char *tokenizer_bos_token(const tokenizer *t) { return NULL; }

detokenizer *detokenizer_new(const tokenizer *t, bool skip_special) { return NULL; }
void detokenizer_free(detokenizer *d) { free(d); }
int detokenizer_push(detokenizer *d, int32_t id, char **out, size_t *len) { return -1; }
int detokenizer_flush(detokenizer *d, char **out, size_t *len) { return -1; }
