/* Internals of the tokenizer shared with its tests and benchmark; not for other modules. */
#ifndef PUNIE_TOKENIZER_INTERNAL_H
#define PUNIE_TOKENIZER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

/* Pieces with at least this many bytes use the heap-based merge loop (O(n log n)); shorter ones the
 * simple scan. Both give the same result; tests lower it to check that. */
extern size_t tokenizer_bpe_heap_min;

/* Whether encode keeps its per-call cache of piece -> ids (the benchmark turns it off for a baseline). */
extern bool tokenizer_cache_enabled;

/* Loads from explicit file paths; config_path may be NULL. */
#include "tokenizer/tokenizer.h"
int tokenizer_load_files(const char *json_path, const char *config_path, tokenizer **out, perr *err);

#endif
