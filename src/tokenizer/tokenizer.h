/* Byte-level BPE tokenizer read from a Hugging Face tokenizer.json (spec/engine.md §6). */
#ifndef PUNIE_TOKENIZER_TOKENIZER_H
#define PUNIE_TOKENIZER_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef struct tokenizer tokenizer;

/* Loads dir/tokenizer.json and dir/tokenizer_config.json. */
int tokenizer_load(const char *dir, tokenizer **out, perr *err);
void tokenizer_free(tokenizer *t);

/* Encodes UTF-8 text (added tokens recognised, no BOS/EOS) into a malloc'd array. */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n_ids, perr *err);

/* Decodes ids into malloc'd, NUL-terminated UTF-8 (invalid sequences become U+FFFD). */
int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **out,
                     size_t *len, perr *err);

int tokenizer_size(const tokenizer *t);                 /* number of ids with a string (151665) */
int tokenizer_token_id(const tokenizer *t, const char *s); /* -1 if s is not one token */
const char *tokenizer_chat_template(const tokenizer *t); /* from tokenizer_config.json, or NULL */
const char *tokenizer_eos_token(const tokenizer *t);     /* e.g. "<|im_end|>", or NULL */
const char *tokenizer_bos_token(const tokenizer *t);     /* or NULL */

/* Incremental decoding for streaming: push ids, get back only complete UTF-8 text. */
typedef struct detokenizer detokenizer;
detokenizer *detokenizer_new(const tokenizer *t, bool skip_special);
void detokenizer_free(detokenizer *d);
/* Appends the text made complete by id to *out (malloc'd, NUL-terminated; may be empty). */
int detokenizer_push(detokenizer *d, int32_t id, char **out, size_t *len);
/* Whatever is still buffered (an incomplete sequence becomes U+FFFD). */
int detokenizer_flush(detokenizer *d, char **out, size_t *len);

#endif
