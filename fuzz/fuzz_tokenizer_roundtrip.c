/* Encode/decode round trips on the real Qwen2.5 tokenizer (loaded once from the shared fixtures) for any
 * text a client may send: ids stay in range; decode(encode(x)) is stable under a second round trip (NFC is
 * idempotent) and equals x exactly for ASCII text (which NFC leaves alone).
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

static char *round_trip(const char *text, size_t len, size_t *out_len)
{
    int32_t *ids = NULL;
    size_t n = 0;
    perr err;
    if (tokenizer_encode(tok, text, len, &ids, &n, &err) != 0) {
        fprintf(stderr, "encode failed: %s\n", err.msg);
        abort(); /* any text can be encoded */
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= tokenizer_size(tok))
            abort();
    char *back = NULL;
    if (tokenizer_decode(tok, ids, n, false, &back, out_len, &err) != 0) {
        fprintf(stderr, "decode failed: %s\n", err.msg);
        abort(); /* what encode made, decode takes */
    }
    free(ids);
    return back;
}

static bool valid_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n)
            return false;
        uint32_t cp = k == 1 ? c : (uint32_t)(c & (0x7f >> k));
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000))
            return false;
        i += k;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16 * 1024)
        return 0;
    size_t len1, len2;
    char *once = round_trip((const char *)data, size, &len1);
    bool ascii = true;
    for (size_t i = 0; i < size; i++)
        ascii = ascii && data[i] < 0x80;
    if (ascii && (len1 != size || memcmp(once, data, size) != 0))
        abort(); /* ASCII text must come back byte for byte */
    if (valid_utf8(data, size)) {
        char *twice = round_trip(once, len1, &len2);
        if (len2 != len1 || memcmp(once, twice, len1) != 0)
            abort(); /* a second round trip changed the text */
        free(twice);
    }
    free(once);
    return 0;
}
