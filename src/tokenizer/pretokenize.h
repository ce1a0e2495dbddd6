/* The Qwen2 pre-tokenizer: the Split regex of tokenizer.json, written out by hand (spec/engine.md §6.2)
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 */
#ifndef PUNIE_TOKENIZER_PRETOKENIZE_H
#define PUNIE_TOKENIZER_PRETOKENIZE_H

#include <stddef.h>
#include <stdint.h>

/* The pattern exactly as tokenizer.json stores it (after JSON unescaping). */
extern const char qwen2_split_pattern[];

/* cp: n code points; cls: their uni_class() bits. Returns the end (exclusive) of the piece that starts
 * at i < n. The pieces cover the text without gaps. */
size_t pretok_piece_end(const uint32_t *cp, const unsigned char *cls, size_t n, size_t i);

#endif
