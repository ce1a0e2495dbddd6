/* Exactness tests for the Qwen2 tokenizer against the real Qwen2.5 tokenizer files and the shared
 * vectors (PUNIE_SHARED_DIR), plus loader robustness. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode.h"
#include "util/fs.h"

#include "../lib/test_util.h"

static char shared[4096], tok_dir[4096], tmp_dir[4096];

/* Fixtures must exist: a missing one ends the run. */
static char *slurp(const char *path, size_t *len)
{
    char *text = test_slurp(path, len);
    if (!text)
        exit(2);
    return text;
}

static cJSON *load_json(const char *path)
{
    cJSON *j = test_load_json(path);
    if (!j)
        exit(2);
    return j;
}

static void print_ids(const char *label, const int32_t *ids, size_t n)
{
    fprintf(stderr, "  %s:", label);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

/* Encodes text and compares with the expected ids (a cJSON array); checks decode gives the text back. */
static void check_encode(const tokenizer *t, const char *name, const char *text, size_t len, const int32_t *want,
                         size_t n_want, bool roundtrip)
{
    int32_t *ids;
    size_t n;
    perr err;
    int rc = tokenizer_encode(t, text, len, &ids, &n, &err);
    CHECK(rc == 0, "%s: encode failed: %s", name, err.msg);
    if (rc != 0)
        return;
    bool same = n == n_want && memcmp(ids, want, n * sizeof *ids) == 0;
    CHECK(same, "%s: ids differ", name);
    if (!same) {
        print_ids("want", want, n_want);
        print_ids("got ", ids, n);
    }
    if (roundtrip) {
        char *back;
        size_t blen;
        rc = tokenizer_decode(t, want, n_want, false, &back, &blen, &err);
        CHECK(rc == 0 && blen == len && memcmp(back, text, len) == 0, "%s: decode does not give the text back",
              name);
        if (rc == 0)
            free(back);
    }
    free(ids);
}

static int32_t *ids_from_json(const cJSON *arr, size_t *n)
{
    *n = (size_t)cJSON_GetArraySize(arr);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) ids[i++] = (int32_t)e->valuedouble;
    return ids;
}

/* A case's text. cJSON stops strings at U+0000, so the full text is taken from decoding the ids,
 * after checking that it agrees with the JSON string up to its first NUL. */
static char *case_text(const tokenizer *t, const cJSON *c, const int32_t *ids, size_t n, size_t *len)
{
    const char *json_text = cJSON_GetObjectItem(c, "text")->valuestring;
    size_t jl = strlen(json_text);
    char *dec;
    perr err;
    if (tokenizer_decode(t, ids, n, false, &dec, len, &err) != 0) {
        CHECK(0, "decode failed: %s", err.msg);
        *len = jl;
        return strdup(json_text);
    }
    bool ok = *len >= jl && memcmp(dec, json_text, jl) == 0 && (*len == jl || dec[jl] == '\0');
    CHECK(ok, "%s: decoded ids do not match the text", cJSON_GetObjectItem(c, "name")->valuestring);
    return dec;
}

static void check_str(const tokenizer *t, const char *text, const char *want_ids)
{
    int32_t want[256];
    size_t n = 0;
    for (const char *p = want_ids; *p;) {
        char *end;
        want[n++] = (int32_t)strtol(p, &end, 10);
        p = end;
        while (*p == ' ')
            p++;
    }
    check_encode(t, text, text, strlen(text), want, n, true);
}

static void test_vectors(const tokenizer *t)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/fixtures/tokenizer/qwen2-bpe-vectors.json", shared);
    cJSON *j = load_json(path);
    const cJSON *c;
    int count = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases"))
    {
        size_t n, len;
        int32_t *want = ids_from_json(cJSON_GetObjectItem(c, "ids"), &n);
        char *text = case_text(t, c, want, n, &len);
        check_encode(t, cJSON_GetObjectItem(c, "name")->valuestring, text, len, want, n, true);
        free(text);
        free(want);
        count++;
    }
    CHECK(count >= 28, "expected at least 28 vector cases, found %d", count);
    cJSON_Delete(j);

    /* Anchors from the fixture README and spec §6.2. */
    check_str(t, "Hello world", "9707 1879");
    check_str(t, " Hello world", "21927 1879");
    check_str(t, "ied 4 \xc2\xbd months", "1122 220 19 220 26062 3951");
    check_str(t, " ", "220");
    check_str(t, "  ", "256");
    check_str(t, "\t", "197");
    check_str(t, "\n", "198");
    check_str(t, "\n\n", "271");
    check_str(t, "<|im_start|>hello<|im_end|>", "151644 14990 151645");
    check_str(t, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n",
              "151644 8948 198 2610 525 1207 16948 11 3465 553 54364 14817 13 1446 525 264 10950 17847 13 151645 198");
    check_str(t, "what is the balance for this account 1234567890?",
              "12555 374 279 8172 369 419 2692 220 16 17 18 19 20 21 22 23 24 15 30");
    check_str(t, "write a quick sort algorithm.", "4934 264 3974 3378 12111 13");
    check_str(t, "Here is the code:", "8420 374 279 2038 25");
    check_str(t, "<|im_start|>assistant\n", "151644 77091 198");
    check_str(t, "", "");
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Every NAME<text_suffix> in dir must encode to the ids in NAME<ids_suffix> (key: NULL = whole array). */
static int check_dir(const tokenizer *t, const char *dir, const char *text_suffix, const char *ids_suffix,
                     const char *key)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "cannot open %s\n", dir);
        exit(2);
    }
    int count = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!has_suffix(de->d_name, text_suffix))
            continue;
        char base[1024], tp[8192], ip[8192];
        snprintf(base, sizeof base, "%.*s", (int)(strlen(de->d_name) - strlen(text_suffix)), de->d_name);
        snprintf(tp, sizeof tp, "%s/%s", dir, de->d_name);
        snprintf(ip, sizeof ip, "%s/%s%s", dir, base, ids_suffix);
        size_t len;
        char *text = slurp(tp, &len);
        cJSON *j = load_json(ip);
        const cJSON *arr = key ? cJSON_GetObjectItem(j, key) : j;
        size_t n;
        int32_t *want = ids_from_json(arr, &n);
        check_encode(t, de->d_name, text, len, want, n, true);
        free(want);
        free(text);
        cJSON_Delete(j);
        count++;
    }
    closedir(d);
    return count;
}

static void test_goldens(const tokenizer *t)
{
    char dir[8192];
    snprintf(dir, sizeof dir, "%s/fixtures/chat-template", shared);
    int n = check_dir(t, dir, ".rendered.txt", ".ids.json", NULL);
    CHECK(n >= 4, "expected chat-template goldens, found %d", n);
    snprintf(dir, sizeof dir, "%s/fixtures/reference/tiny-random-qwen2-4bit", shared);
    n = check_dir(t, dir, ".prompt.txt", ".json", "prompt_ids");
    CHECK(n >= 2, "expected reference prompts, found %d", n);
}

static void test_api(const tokenizer *t)
{
    CHECK(tokenizer_size(t) == 151665, "size %d", tokenizer_size(t));
    CHECK(tokenizer_token_id(t, "<|im_end|>") == 151645, "im_end id");
    CHECK(tokenizer_token_id(t, "<tool_call>") == 151657, "tool_call id");
    CHECK(tokenizer_token_id(t, " ") == 220, "space id");
    CHECK(tokenizer_token_id(t, "Hello") == 9707, "Hello id");
    CHECK(tokenizer_token_id(t, "Hello world, not one token") == -1, "not a token");
    CHECK(tokenizer_eos_token(t) && strcmp(tokenizer_eos_token(t), "<|im_end|>") == 0, "eos token");
    CHECK(tokenizer_bos_token(t) == NULL, "no bos token");
    CHECK(tokenizer_chat_template(t) && strstr(tokenizer_chat_template(t), "<|im_start|>"), "chat template");

    /* skip_special drops special added tokens but keeps non-special ones such as <tool_call>. */
    int32_t ids[] = {151644, 9707, 151657, 151645};
    char *s;
    size_t len;
    perr err;
    CHECK(tokenizer_decode(t, ids, 4, true, &s, &len, &err) == 0 && strcmp(s, "Hello<tool_call>") == 0,
          "skip_special decode");
    free(s);
    CHECK(tokenizer_decode(t, ids, 4, false, &s, &len, &err) == 0 &&
              strcmp(s, "<|im_start|>Hello<tool_call><|im_end|>") == 0,
          "full decode");
    free(s);
    int32_t bad[] = {9707, 151665};
    CHECK(tokenizer_decode(t, bad, 2, false, &s, &len, &err) != 0, "out-of-range id is an error");
    int32_t neg[] = {-1};
    CHECK(tokenizer_decode(t, neg, 1, false, &s, &len, &err) != 0, "negative id is an error");

    /* Invalid UTF-8 from lone byte tokens becomes U+FFFD. */
    int32_t lone[] = {tokenizer_token_id(t, "\xE4"), tokenizer_token_id(t, "a")};
    CHECK(lone[0] >= 0, "byte token for 0xE4");
    CHECK(tokenizer_decode(t, lone, 2, false, &s, &len, &err) == 0 && strcmp(s, "\xEF\xBF\xBD" "a") == 0,
          "invalid UTF-8 -> U+FFFD, got '%s'", s);
    free(s);

    /* Invalid UTF-8 input is encoded as U+FFFD rather than failing. */
    int32_t *out;
    size_t n;
    CHECK(tokenizer_encode(t, "a\xff" "b", 3, &out, &n, &err) == 0, "encode invalid UTF-8");
    free(out);
}

/* Text split at every byte: feeding one byte-token at a time never yields a broken character. */
static void test_streaming(const tokenizer *t)
{
    const char *text = "h\xC3\xA9llo \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\xA4\x97 \xE2\x9C\xA8 done\n";
    size_t len = strlen(text);
    detokenizer *d = detokenizer_new(t, false);
    char all[256] = "";
    for (size_t i = 0; i < len; i++) {
        char one[2] = {text[i], 0};
        int32_t id = tokenizer_token_id(t, one);
        CHECK(id >= 0, "byte token for 0x%02X", (unsigned char)text[i]);
        char *out;
        size_t olen;
        CHECK(detokenizer_push(d, id, &out, &olen) == 0, "push");
        /* each chunk must be complete UTF-8 on its own */
        for (size_t k = 0; k < olen;) {
            uint32_t cp;
            size_t step = utf8_decode((unsigned char *)out + k, olen - k, &cp);
            CHECK(cp != 0xFFFD, "chunk after byte %zu has a broken sequence", i);
            k += step;
        }
        strncat(all, out, sizeof all - strlen(all) - 1);
        free(out);
    }
    char *out;
    size_t olen;
    CHECK(detokenizer_flush(d, &out, &olen) == 0 && olen == 0, "nothing left to flush");
    free(out);
    CHECK(strcmp(all, text) == 0, "streamed text differs");
    detokenizer_free(d);

    /* Real token ids of multibyte text, one at a time. */
    const char *cjk = "生活的真谛是 🤗 👨🏻‍🌾 ❤️ naïve café";
    int32_t *ids;
    size_t n;
    perr err;
    CHECK(tokenizer_encode(t, cjk, strlen(cjk), &ids, &n, &err) == 0, "encode cjk");
    d = detokenizer_new(t, true);
    all[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        CHECK(detokenizer_push(d, ids[i], &out, &olen) == 0, "push");
        CHECK(strstr(out, "\xEF\xBF\xBD") == NULL, "no replacement character mid-stream");
        strncat(all, out, sizeof all - strlen(all) - 1);
        free(out);
    }
    CHECK(detokenizer_flush(d, &out, &olen) == 0, "flush");
    free(out);
    CHECK(strcmp(all, cjk) == 0, "streamed ids give the text");
    free(ids);

    /* An unfinished sequence at the end becomes U+FFFD on flush; invalid bytes are emitted at once. */
    int32_t e4 = tokenizer_token_id(t, "\xE4"), b8 = tokenizer_token_id(t, "\xB8");
    CHECK(detokenizer_push(d, e4, &out, &olen) == 0 && olen == 0, "lead byte held back");
    free(out);
    CHECK(detokenizer_push(d, b8, &out, &olen) == 0 && olen == 0, "second byte held back");
    free(out);
    CHECK(detokenizer_flush(d, &out, &olen) == 0 && strcmp(out, "\xEF\xBF\xBD") == 0, "flush gives U+FFFD");
    free(out);
    int32_t ff = tokenizer_token_id(t, "\xFF");
    CHECK(detokenizer_push(d, ff, &out, &olen) == 0 && strcmp(out, "\xEF\xBF\xBD") == 0, "invalid byte at once");
    free(out);
    CHECK(detokenizer_push(d, 151665, &out, &olen) != 0, "bad id is an error");
    CHECK(detokenizer_push(d, 151645, &out, &olen) == 0 && olen == 0, "special skipped");
    free(out);
    detokenizer_free(d);
}

static void test_nfc(const tokenizer *t)
{
    struct {
        const char *in, *out;
    } cases[] = {
        {"e\xCC\x81", "\xC3\xA9"},                                   /* e + acute -> é */
        {"A\xCC\x8A", "\xC3\x85"},                                   /* A + ring -> Å */
        {"\xE2\x84\xAB", "\xC3\x85"},                                /* Angstrom sign (singleton) -> Å */
        {"q\xCC\x87\xCC\xA3", "q\xCC\xA3\xCC\x87"},                  /* reordered, no composite */
        {"\xE1\xB8\x8B\xCC\xA3", "\xE1\xB8\x8D\xCC\x87"},            /* ḋ + dot below -> ḍ + dot above */
        {"\xE1\x84\x80\xE1\x85\xA1", "\xEA\xB0\x80"},                /* Hangul L V -> 가 */
        {"\xEA\xB0\x80\xE1\x86\xA8", "\xEA\xB0\x81"},                /* LV + T -> 각 */
        {"\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", "\xEA\xB0\x81"},    /* L V T -> 각 */
        {"\xC3\xA9\xCC\x81", "\xC3\xA9\xCC\x81"},                    /* é + acute stays */
        {"\xCD\x84", "\xCC\x88\xCC\x81"},                            /* U+0344 excluded: decomposes */
        {"\xE0\xA4\x95\xE0\xA4\xBC", "\xE0\xA4\x95\xE0\xA4\xBC"},    /* excluded Devanagari qa stays split */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int32_t *a, *b;
        size_t na, nb;
        perr err;
        CHECK(tokenizer_encode(t, cases[i].in, strlen(cases[i].in), &a, &na, &err) == 0, "encode");
        CHECK(tokenizer_encode(t, cases[i].out, strlen(cases[i].out), &b, &nb, &err) == 0, "encode");
        CHECK(na == nb && memcmp(a, b, na * sizeof *a) == 0, "NFC case %zu: ids differ", i);
        char *back;
        size_t blen;
        CHECK(tokenizer_decode(t, a, na, false, &back, &blen, &err) == 0 && strcmp(back, cases[i].out) == 0,
              "NFC case %zu: decoded text is not the NFC form", i);
        free(back);
        free(a);
        free(b);
    }
}

/* The heap merge loop must agree with the simple one on every vector and on long pieces. */
static void test_heap_bpe(const tokenizer *t)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/fixtures/tokenizer/qwen2-bpe-vectors.json", shared);
    cJSON *j = load_json(path);
    size_t saved = tokenizer_bpe_heap_min;
    tokenizer_bpe_heap_min = 2;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases"))
    {
        size_t n, len;
        int32_t *want = ids_from_json(cJSON_GetObjectItem(c, "ids"), &n);
        char *text = case_text(t, c, want, n, &len);
        check_encode(t, cJSON_GetObjectItem(c, "name")->valuestring, text, len, want, n, false);
        free(text);
        free(want);
    }
    cJSON_Delete(j);
    /* long pieces: compare heap and simple results */
    char *text = malloc(20001);
    for (int pass = 0; pass < 3; pass++) {
        for (int i = 0; i < 20000; i++)
            text[i] = pass == 0 ? 'a' : pass == 1 ? "abcdefghij"[(i * 7 + i / 3) % 10] : "=-+*"[(i / 5) % 4];
        text[20000] = 0;
        int32_t *a, *b;
        size_t na, nb;
        perr err;
        tokenizer_bpe_heap_min = 2;
        CHECK(tokenizer_encode(t, text, 20000, &a, &na, &err) == 0, "heap encode");
        tokenizer_bpe_heap_min = (size_t)1 << 30;
        CHECK(tokenizer_encode(t, text, 20000, &b, &nb, &err) == 0, "simple encode");
        CHECK(na == nb && memcmp(a, b, na * sizeof *a) == 0, "heap and simple BPE differ on pass %d", pass);
        free(a);
        free(b);
    }
    free(text);
    tokenizer_bpe_heap_min = saved;
}

/* Random text built from awkward fragments: encode never fails, and for text that is valid UTF-8 and
 * already NFC, decode(encode(s)) == s. Invalid bytes come back as U+FFFD. */
static void test_random(const tokenizer *t)
{
    static const char *clean[] = {"<|im_", "end|>", "<|im_end|>", "<|im_start|>", "<tool_call>", "<", "|", " ",
                                  "  ", "\n", "\r\n", "\t", "a", "Z", "1", "'s", "'LL", "'", "\xC2\xA0",
                                  "\xE3\x80\x80", "\xC3\xA9", "\xE4\xB8\x96", "\xF0\x9F\xA4\x97", "\xC2\xBD",
                                  "()", "==", "x_y", "\xEA\xB0\x80", "\xE2\x80\xA8", "\xC5\xBF"};
    static const char *dirty[] = {"\xE4", "\xB8", "\xFF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xC0\xAF"};
    unsigned seed = 12345;
    char text[512];
    for (int iter = 0; iter < 3000; iter++) {
        size_t len = 0;
        bool is_clean = iter % 3 != 0;
        int parts = (int)((seed = seed * 1103515245u + 12345u) >> 16) % 24;
        for (int k = 0; k < parts; k++) {
            seed = seed * 1103515245u + 12345u;
            unsigned r = seed >> 16;
            const char *f = (!is_clean && r % 5 == 0) ? dirty[r / 5 % 6] : clean[r % (sizeof clean / sizeof *clean)];
            size_t fl = strlen(f);
            if (len + fl >= sizeof text)
                break;
            memcpy(text + len, f, fl);
            len += fl;
        }
        tokenizer_bpe_heap_min = iter % 2 ? 2 : 64;
        int32_t *ids;
        size_t n;
        perr err;
        CHECK(tokenizer_encode(t, text, len, &ids, &n, &err) == 0, "random encode failed");
        char *back;
        size_t blen;
        CHECK(tokenizer_decode(t, ids, n, false, &back, &blen, &err) == 0, "random decode failed");
        if (is_clean)
            CHECK(blen == len && memcmp(back, text, len) == 0, "random round trip %d differs", iter);
        else
            for (size_t k = 0; k < blen;) {
                uint32_t cp;
                size_t step = utf8_decode((unsigned char *)back + k, blen - k, &cp);
                CHECK(!(cp == 0xFFFD && step != 3), "decode produced invalid UTF-8");
                k += step;
            }
        free(back);
        free(ids);
    }
    tokenizer_bpe_heap_min = 64;
}

static void write_json(const char *dir, const char *name, const cJSON *j)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *s = cJSON_PrintUnformatted(j);
    perr err;
    if (!s || write_file_atomic(path, s, strlen(s), &err) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    free(s);
}

static void write_raw(const char *dir, const char *name, const char *data, size_t len)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    perr err;
    if (write_file_atomic(path, data, len, &err) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

/* Loads dir; expects failure with a message containing want (NULL: any message). */
static void expect_load_error(const char *what, const char *want)
{
    tokenizer *t = NULL;
    perr err = {0};
    int rc = tokenizer_load(tmp_dir, &t, &err);
    CHECK(rc != 0 && t == NULL, "%s: load should fail", what);
    CHECK(err.msg[0] != '\0', "%s: error message expected", what);
    if (want)
        CHECK(strstr(err.msg, want) != NULL, "%s: message '%s' lacks '%s'", what, err.msg, want);
    tokenizer_free(t);
}

static void test_variants(const tokenizer *ref)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/tokenizer.json", tok_dir);
    size_t jlen;
    char *jtext = slurp(path, &jlen);
    cJSON *root = cJSON_ParseWithLength(jtext, jlen);
    cJSON *model = cJSON_GetObjectItem(root, "model");

    /* merges as [a, b] pairs (the format newer transformers write) */
    cJSON *merges = cJSON_GetObjectItem(model, "merges");
    cJSON *pairs = cJSON_CreateArray();
    const cJSON *m;
    cJSON_ArrayForEach(m, merges)
    {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        char left[1024];
        snprintf(left, sizeof left, "%.*s", (int)(sp - s), s);
        cJSON *p = cJSON_CreateArray();
        cJSON_AddItemToArray(p, cJSON_CreateString(left));
        cJSON_AddItemToArray(p, cJSON_CreateString(sp + 1));
        cJSON_AddItemToArray(pairs, p);
    }
    cJSON_ReplaceItemInObject(model, "merges", pairs);
    write_json(tmp_dir, "tokenizer.json", root);
    tokenizer *t;
    perr err;
    int rc = tokenizer_load(tmp_dir, &t, &err);
    CHECK(rc == 0, "pair merges: load failed: %s", err.msg);
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/fixtures/tokenizer/qwen2-bpe-vectors.json", shared);
        cJSON *j = load_json(path);
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases"))
        {
            const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
            int32_t *a, *b;
            size_t na, nb;
            tokenizer_encode(ref, text, strlen(text), &a, &na, &err);
            CHECK(tokenizer_encode(t, text, strlen(text), &b, &nb, &err) == 0, "pair merges encode");
            CHECK(na == nb && memcmp(a, b, na * sizeof *a) == 0, "pair merges: ids differ on %s",
                  cJSON_GetObjectItem(c, "name")->valuestring);
            free(a);
            free(b);
        }
        cJSON_Delete(j);
        CHECK(tokenizer_chat_template(t) == NULL, "no tokenizer_config.json: no template");
        tokenizer_free(t);
    }

    /* Unsupported structures are clear errors. */
    cJSON *type = cJSON_GetObjectItem(model, "type");
    cJSON_SetValuestring(type, "WordPiece");
    write_json(tmp_dir, "tokenizer.json", root);
    expect_load_error("WordPiece model", "unsupported tokenizer: model type WordPiece");
    cJSON_SetValuestring(type, "BPE");

    cJSON *norm = cJSON_GetObjectItem(root, "normalizer");
    cJSON_SetValuestring(cJSON_GetObjectItem(norm, "type"), "NFKC");
    write_json(tmp_dir, "tokenizer.json", root);
    expect_load_error("NFKC normalizer", "unsupported tokenizer: normalizer NFKC");
    cJSON_SetValuestring(cJSON_GetObjectItem(norm, "type"), "NFC");

    cJSON *split = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "pre_tokenizer"), "pretokenizers"), 0);
    cJSON *regex = cJSON_GetObjectItem(cJSON_GetObjectItem(split, "pattern"), "Regex");
    char *saved = strdup(regex->valuestring);
    cJSON_SetValuestring(regex, "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}");
    write_json(tmp_dir, "tokenizer.json", root);
    expect_load_error("Llama-3 regex", "unsupported tokenizer: Split pattern");
    cJSON_SetValuestring(regex, saved);
    free(saved);

    cJSON *dec = cJSON_GetObjectItem(root, "decoder");
    cJSON_SetValuestring(cJSON_GetObjectItem(dec, "type"), "Metaspace");
    write_json(tmp_dir, "tokenizer.json", root);
    expect_load_error("Metaspace decoder", "unsupported tokenizer: decoder");
    cJSON_SetValuestring(cJSON_GetObjectItem(dec, "type"), "ByteLevel");

    /* Wrong types. */
    cJSON *vocab = cJSON_DetachItemFromObject(model, "vocab");
    cJSON_AddItemToObject(model, "vocab", cJSON_CreateArray());
    write_json(tmp_dir, "tokenizer.json", root);
    expect_load_error("vocab as array", NULL);
    cJSON_ReplaceItemInObject(model, "vocab", cJSON_CreateString("x"));
    write_json(tmp_dir, "tokenizer.json", root);
    expect_load_error("vocab as string", NULL);
    cJSON *small = cJSON_CreateObject();
    cJSON_AddStringToObject(small, "a", "1");
    cJSON_ReplaceItemInObject(model, "vocab", small);
    write_json(tmp_dir, "tokenizer.json", root);
    expect_load_error("vocab id as string", NULL);
    cJSON_ReplaceItemInObject(model, "vocab", vocab);
    cJSON_ReplaceItemInObject(model, "merges", cJSON_CreateNumber(3));
    write_json(tmp_dir, "tokenizer.json", root);
    expect_load_error("merges as number", NULL);
    cJSON *bad = cJSON_CreateArray();
    cJSON_AddItemToArray(bad, cJSON_CreateString("NotAToken Other"));
    cJSON_ReplaceItemInObject(model, "merges", bad);
    write_json(tmp_dir, "tokenizer.json", root);
    expect_load_error("merge with unknown tokens", "missing from the vocab");
    cJSON_ReplaceItemInObject(root, "added_tokens", cJSON_CreateNumber(1));
    write_json(tmp_dir, "tokenizer.json", root);
    expect_load_error("added_tokens as number", NULL);
    cJSON_Delete(root);

    /* Truncated files at many points (header, vocab, merges, end) and other garbage. */
    size_t cuts[] = {0, 1, 10, 100, 1000, 5000, 100000, 1000000, 3000000, 5000000, 6000000, jlen - 100, jlen - 2, jlen - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        if (cuts[i] >= jlen)
            continue;
        write_raw(tmp_dir, "tokenizer.json", jtext, cuts[i]);
        char what[64];
        snprintf(what, sizeof what, "truncated at %zu", cuts[i]);
        expect_load_error(what, NULL);
    }
    write_raw(tmp_dir, "tokenizer.json", "[1,2,3]", 7);
    expect_load_error("array document", NULL);
    write_raw(tmp_dir, "tokenizer.json", "{\"model\": {\"vocab\": {\"\\ud800\": 1}}}", 35);
    expect_load_error("lone surrogate", NULL);
    free(jtext);
    snprintf(path, sizeof path, "%s/tokenizer.json", tmp_dir);
    unlink(path);
    expect_load_error("missing tokenizer.json", "tokenizer.json");
}

int main(void)
{
    const char *env = getenv("PUNIE_SHARED_DIR");
    if (!env) {
        fprintf(stderr, "PUNIE_SHARED_DIR is not set\n");
        return 2;
    }
    snprintf(shared, sizeof shared, "%s", env);
    snprintf(tok_dir, sizeof tok_dir, "%s/fixtures/qwen2.5-tokenizer", shared);
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/punie-tok-test-XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 2;
    }

    tokenizer *t;
    perr err;
    if (tokenizer_load(tok_dir, &t, &err) != 0) {
        fprintf(stderr, "FAIL: load: %s\n", err.msg);
        return 1;
    }
    test_vectors(t);
    test_goldens(t);
    test_api(t);
    test_streaming(t);
    test_nfc(t);
    test_heap_bpe(t);
    test_random(t);
    test_variants(t);
    tokenizer_free(t);
    rmdir(tmp_dir);

    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
