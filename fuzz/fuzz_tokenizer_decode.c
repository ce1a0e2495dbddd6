/* Token ids come from clients (logit_bias, `punie tokenize --decode`) and from the sampler. For any ids:
 * decode fails cleanly or succeeds, and streaming them one by one through the detokenizer gives exactly
 * the text decode gives, never splitting a UTF-8 sequence. Input: little-endian int32 ids; the first byte
 * also picks skip_special. Uses the real Qwen2.5 tokenizer from the shared fixtures.
 * Needs: src/tokenizer/tokenizer.c */
#include "fuzz.h"

#include "tokenizer/tokenizer.h"

static tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *shared = getenv("PUNIE_SHARED_DIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/fixtures/qwen2.5-tokenizer", shared ? shared : "../shared");
    perr err;
    if (tokenizer_load(dir, &tok, &err) != 0) {
        fprintf(stderr, "cannot load %s: %s (set PUNIE_SHARED_DIR)\n", dir, err.msg);
        abort();
    }
    return 0;
}

static size_t utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16 * 1024)
        return 0;
    size_t n = size / 4;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    memcpy(ids, data, n * 4);
    bool skip = size && (data[0] & 1);
    /* Make most ids valid so the decode paths are reached, keeping some out of range. */
    int vocab = tokenizer_size(tok);
    for (size_t i = 0; i < n; i++)
        if ((data[i * 4 + 3] & 0x80) == 0)
            ids[i] = (int32_t)((uint32_t)ids[i] % (uint32_t)vocab);
    char *text = NULL;
    size_t len = 0;
    perr err;
    bool ok = tokenizer_decode(tok, ids, n, skip, &text, &len, &err) == 0;
    if (ok && strlen(text) > len)
        abort();

    detokenizer *d = detokenizer_new(tok, skip);
    if (!d)
        abort();
    char *streamed = malloc(1), *piece;
    size_t streamed_len = 0, piece_len;
    bool stream_ok = true;
    for (size_t i = 0; i <= n && stream_ok; i++) {
        int rc = i < n ? detokenizer_push(d, ids[i], &piece, &piece_len) : detokenizer_flush(d, &piece, &piece_len);
        if (rc != 0) {
            stream_ok = false;
            break;
        }
        /* Each piece holds whole UTF-8 sequences only. */
        for (size_t j = 0; j < piece_len;) {
            size_t k = utf8_len((unsigned char)piece[j]);
            if (j + k > piece_len)
                abort();
            for (size_t m = 1; m < k; m++)
                if (((unsigned char)piece[j + m] & 0xc0) != 0x80)
                    abort();
            j += k;
        }
        streamed = realloc(streamed, streamed_len + piece_len + 1);
        memcpy(streamed + streamed_len, piece, piece_len);
        streamed_len += piece_len;
        free(piece);
    }
    if (ok != stream_ok)
        abort(); /* both reject exactly the invalid ids */
    if (ok && (streamed_len != len || memcmp(streamed, text, len) != 0)) {
        fprintf(stderr, "streamed [%.*s]\ndecoded  [%.*s]\n", (int)streamed_len, streamed, (int)len, text);
        abort();
    }
    detokenizer_free(d);
    free(streamed);
    free(text);
    free(ids);
    return 0;
}
