/* Byte-level BPE tokenizer read from a Hugging Face tokenizer.json (spec/engine.md §6).
 *
 * Loading: the large "vocab" and "merges" sections are read by a small scanner (cJSON's tree for
 * 300k strings costs more than the load budget); every other section is handed to cJSON.
 * Only the structure Qwen2 uses is accepted; anything else is "unsupported tokenizer: ...". */
#include "tokenizer/tokenizer.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode.h"
#include "util/fs.h"
#include "util/grow.h"

#define MAX_JSON_BYTES (256u << 20)
#define MAX_CONFIG_BYTES (16u << 20)
#define MAX_VOCAB 4000000
#define MAX_TOKEN_BYTES 4096
#define MAX_JSON_DEPTH 64

size_t tokenizer_bpe_heap_min = 64;
bool tokenizer_cache_enabled = true;

typedef struct added_token {
    int32_t id;
    char *content;
    size_t len;
    bool special;
} added_token;

typedef struct merge_slot {
    uint64_t key; /* left id << 32 | right id; EMPTY_KEY when free */
    int32_t rank;
    int32_t id;   /* the merged token */
} merge_slot;
#define EMPTY_KEY UINT64_MAX

struct tokenizer {
    /* Token bytes (raw, after undoing the byte-level map) for ids 0..n_ids-1; len -1 = no token. */
    int32_t n_ids;
    struct tok {
        uint32_t off;
        int32_t len;
    } *tok;
    char *bytes;
    size_t bytes_len, bytes_cap;

    struct vocab_slot {
        int32_t id;   /* -1 free */
        uint8_t len;  /* token length, capped at 255 */
        char head[11]; /* first bytes of the token: most lookups never touch the byte arena */
    } *vocab_slots;   /* open addressing over BPE vocab ids, keyed by bytes */
    size_t vocab_mask;

    merge_slot *merges;
    size_t merge_mask;

    int32_t byte_id[256]; /* id of each single-byte symbol */

    added_token *added;
    size_t n_added;
    unsigned char added_first[32]; /* bitmap of first bytes of added tokens */
    bool *is_added_special;        /* per id (n_ids): special added token */
    bool *is_added;

    bool nfc;
    bool ignore_merges;

    char *chat_template;
    char *eos_token;
    char *bos_token;
};

/* ---- byte-level map (GPT-2 bytes_to_unicode) ---- */

static uint32_t byte_to_cp[256];
static int16_t cp_to_byte[0x144];

static void init_byte_map(void)
{
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool same = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_to_cp[b] = same ? (uint32_t)b : (uint32_t)(0x100 + extra++);
    }
    for (size_t i = 0; i < sizeof cp_to_byte / sizeof *cp_to_byte; i++)
        cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++)
        cp_to_byte[byte_to_cp[b]] = (int16_t)b;
}

/* ---- hashing ---- */

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* 64x64->128 multiply folded to 64 bits: a fast, well-mixing step for short keys. */
static inline uint64_t mum(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t load32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t hash_bytes(const void *data, size_t len)
{
    const unsigned char *p = data;
    const uint64_t k1 = 0xa0761d6478bd642fULL, k2 = 0xe7037ed1a0b428dbULL, k3 = 0x8ebc6af09c88c6e3ULL;
    uint64_t a, b, seed = len * k3;
    if (len <= 8) {
        if (len >= 4) {
            a = load32(p);
            b = load32(p + len - 4);
        } else if (len > 0) {
            a = (uint64_t)p[0] << 16 | (uint64_t)p[len >> 1] << 8 | p[len - 1];
            b = 0;
        } else {
            a = b = 0;
        }
    } else {
        size_t i = 0;
        for (; i + 8 < len; i += 8)
            seed = mum(load64(p + i) ^ k1, seed ^ k2);
        a = load64(p + len - 8);
        b = i;
    }
    return mum(a ^ k1, b ^ seed ^ k2) * k3 ^ seed;
}

static size_t pow2_at_least(size_t n)
{
    size_t s = 16;
    while (s < n)
        s *= 2;
    return s;
}

static int32_t vocab_find_hashed(const tokenizer *t, const void *bytes, size_t len, uint64_t h)
{
    size_t i = h & t->vocab_mask;
    uint8_t l8 = len > 255 ? 255 : (uint8_t)len;
    size_t head = len < 11 ? len : 11;
    for (;;) {
        const struct vocab_slot *s = &t->vocab_slots[i];
        if (s->id < 0)
            return -1;
        if (s->len == l8 && memcmp(s->head, bytes, head) == 0 &&
            (len <= 11 || ((size_t)t->tok[s->id].len == len && memcmp(t->bytes + t->tok[s->id].off, bytes, len) == 0)))
            return s->id;
        i = (i + 1) & t->vocab_mask;
    }
}

static int32_t vocab_find(const tokenizer *t, const void *bytes, size_t len)
{
    return vocab_find_hashed(t, bytes, len, hash_bytes(bytes, len));
}

static inline const merge_slot *merge_find(const tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = mix64(key) & t->merge_mask;
    for (;;) {
        const merge_slot *s = &t->merges[i];
        if (s->key == key)
            return s;
        if (s->key == EMPTY_KEY)
            return NULL;
        i = (i + 1) & t->merge_mask;
    }
}

/* ---- growable buffers ---- */

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static int buf_reserve(buf *b, size_t extra)
{
    char *np = grow_array(b->p, &b->cap, b->len + extra, 1, 256);
    if (!np)
        return -1;
    b->p = np;
    return 0;
}

static int buf_add(buf *b, const void *data, size_t n)
{
    if (buf_reserve(b, n + 1) != 0)
        return -1;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* ---- JSON scanning for the big sections ---- */

typedef struct jscan {
    const char *p, *end;
} jscan;

static void ws(jscan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static int hex4(const char *p, uint32_t *v)
{
    uint32_t r = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        r <<= 4;
        if (c >= '0' && c <= '9')
            r |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            r |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            r |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *v = r;
    return 0;
}

/* Reads a JSON string at s->p into out (unescaped UTF-8, not NUL-terminated). */
static int scan_string(jscan *s, buf *out, perr *err)
{
    out->len = 0;
    if (s->p >= s->end || *s->p != '"')
        return perr_set(err, "expected a string");
    s->p++;
    for (;;) {
        const char *start = s->p;
        while (s->p < s->end && *s->p != '"' && *s->p != '\\' && (unsigned char)*s->p >= 0x20)
            s->p++;
        if (s->p > start && buf_add(out, start, (size_t)(s->p - start)) != 0)
            return perr_set(err, "out of memory");
        if (s->p >= s->end)
            return perr_set(err, "unterminated string");
        char c = *s->p++;
        if (c == '"')
            return 0;
        if (c != '\\')
            return perr_set(err, "control character in string");
        if (s->p >= s->end)
            return perr_set(err, "unterminated string");
        char e = *s->p++;
        char one;
        switch (e) {
        case '"': one = '"'; break;
        case '\\': one = '\\'; break;
        case '/': one = '/'; break;
        case 'b': one = '\b'; break;
        case 'f': one = '\f'; break;
        case 'n': one = '\n'; break;
        case 'r': one = '\r'; break;
        case 't': one = '\t'; break;
        case 'u': {
            uint32_t v;
            if (s->end - s->p < 4 || hex4(s->p, &v) != 0)
                return perr_set(err, "bad \\u escape");
            s->p += 4;
            if (v >= 0xD800 && v <= 0xDBFF) {
                uint32_t lo;
                if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u' || hex4(s->p + 2, &lo) != 0 ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return perr_set(err, "unpaired surrogate in \\u escape");
                s->p += 6;
                v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
            } else if (v >= 0xDC00 && v <= 0xDFFF) {
                return perr_set(err, "unpaired surrogate in \\u escape");
            }
            unsigned char u[4];
            size_t n = utf8_encode(v, u);
            if (buf_add(out, u, n) != 0)
                return perr_set(err, "out of memory");
            continue;
        }
        default:
            return perr_set(err, "bad escape in string");
        }
        if (buf_add(out, &one, 1) != 0)
            return perr_set(err, "out of memory");
    }
}

/* Skips any JSON value (checked later by cJSON when it is used). */
static int skip_value_counting(jscan *s, size_t *strings, perr *err)
{
    ws(s);
    if (s->p >= s->end)
        return perr_set(err, "unexpected end of JSON");
    int depth = 0;
    do {
        if (s->p >= s->end)
            return perr_set(err, "unexpected end of JSON");
        char c = *s->p;
        if (c == '"') {
            s->p++;
            (*strings)++;
            while (s->p < s->end && *s->p != '"') {
                if (*s->p == '\\' && s->end - s->p < 2)
                    return perr_set(err, "unterminated string");
                s->p += *s->p == '\\' ? 2 : 1;
            }
            if (s->p >= s->end)
                return perr_set(err, "unterminated string");
            s->p++;
        } else if (c == '{' || c == '[') {
            if (++depth > MAX_JSON_DEPTH)
                return perr_set(err, "JSON nested too deeply");
            s->p++;
        } else if (c == '}' || c == ']') {
            if (--depth < 0)
                return perr_set(err, "unbalanced JSON");
            s->p++;
        } else {
            s->p++;
            if (depth == 0) {
                /* scalar: read to the next delimiter */
                while (s->p < s->end && !strchr(",}] \n\r\t", *s->p))
                    s->p++;
            }
        }
    } while (depth > 0);
    return 0;
}

static int skip_value(jscan *s, perr *err)
{
    size_t strings = 0;
    return skip_value_counting(s, &strings, err);
}

static int expect(jscan *s, char c, perr *err)
{
    ws(s);
    if (s->p >= s->end || *s->p != c)
        return perr_set(err, "expected '%c'", c);
    s->p++;
    return 0;
}

/* Iterates an object's members: on entry after '{' or ','. Returns 1 with the key read, 0 at '}'. */
static int next_member(jscan *s, bool first, buf *key, perr *err)
{
    ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    if (!first) {
        if (expect(s, ',', err) != 0)
            return -1;
        ws(s);
    }
    if (scan_string(s, key, err) != 0)
        return -1;
    if (expect(s, ':', err) != 0)
        return -1;
    ws(s);
    return 1;
}

/* Undoes the byte-level map of a vocab string. Characters outside the map keep their UTF-8 bytes. */
static void bytelevel_decode(const buf *in, buf *out)
{
    out->len = 0;
    const unsigned char *p = (const unsigned char *)in->p;
    size_t i = 0;
    while (i < in->len) {
        unsigned c = p[i];
        if (c >= 0x21 && c <= 0x7E) { /* printable ASCII maps to itself */
            out->p[out->len++] = (char)c;
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0 && i + 1 < in->len && (p[i + 1] & 0xC0) == 0x80 && c >= 0xC2) {
            uint32_t cp2 = (c & 0x1F) << 6 | (p[i + 1] & 0x3F);
            if (cp2 < 0x144 && cp_to_byte[cp2] >= 0) {
                out->p[out->len++] = (char)cp_to_byte[cp2];
                i += 2;
                continue;
            }
        }
        uint32_t cp;
        size_t k = utf8_decode(p + i, in->len - i, &cp);
        if (cp < 0x144 && cp_to_byte[cp] >= 0) {
            out->p[out->len++] = (char)cp_to_byte[cp];
        } else {
            memcpy(out->p + out->len, p + i, k);
            out->len += k;
        }
        i += k;
    }
}

/* ---- loading ---- */

typedef struct vocab_entry {
    uint32_t off, len;
    int32_t id;
} vocab_entry;

static int store_bytes(tokenizer *t, const char *p, size_t n, uint32_t *off)
{
    if (t->bytes_len + n > UINT32_MAX)
        return -1;
    if (t->bytes_len + n > t->bytes_cap) {
        size_t nc = t->bytes_cap ? t->bytes_cap * 2 : 1 << 20;
        while (nc < t->bytes_len + n)
            nc *= 2;
        char *nb = realloc(t->bytes, nc);
        if (!nb)
            return -1;
        t->bytes = nb;
        t->bytes_cap = nc;
    }
    memcpy(t->bytes + t->bytes_len, p, n);
    *off = (uint32_t)t->bytes_len;
    t->bytes_len += n;
    return 0;
}

static int parse_vocab(tokenizer *t, jscan *s, vocab_entry **out, size_t *n_out, perr *err)
{
    buf key = {0}, raw = {0};
    vocab_entry *v = NULL;
    size_t n = 0, cap = 0;
    int rc = -1;
    if (expect(s, '{', err) != 0)
        goto done;
    if (buf_reserve(&raw, MAX_TOKEN_BYTES * 4) != 0) {
        perr_set(err, "out of memory");
        goto done;
    }
    for (bool first = true;; first = false) {
        int m = next_member(s, first, &key, err);
        if (m < 0)
            goto done;
        if (m == 0)
            break;
        if (key.len > MAX_TOKEN_BYTES) {
            perr_set(err, "vocab token too long");
            goto done;
        }
        /* the id: a non-negative integer */
        long id = 0;
        const char *start = s->p;
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9' && id <= MAX_VOCAB)
            id = id * 10 + (*s->p++ - '0');
        if (s->p == start || id >= MAX_VOCAB || (s->p < s->end && (*s->p == '.' || *s->p == 'e'))) {
            perr_set(err, "vocab id of \"%.40s\" is not an integer in range", key.p ? key.p : "");
            goto done;
        }
        bytelevel_decode(&key, &raw);
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            vocab_entry *nv = realloc(v, cap * sizeof *v);
            if (!nv) {
                perr_set(err, "out of memory");
                goto done;
            }
            v = nv;
        }
        if (store_bytes(t, raw.p, raw.len, &v[n].off) != 0) {
            perr_set(err, "out of memory");
            goto done;
        }
        v[n].len = (uint32_t)raw.len;
        v[n].id = (int32_t)id;
        n++;
    }
    rc = 0;
done:
    free(key.p);
    free(raw.p);
    if (rc != 0)
        free(v);
    else {
        *out = v;
        *n_out = n;
    }
    return rc;
}

/* Merges are resolved in batches: hashing a batch first and prefetching its table slots lets the
 * memory fetches overlap instead of paying one cache miss after another. */
#define MERGE_BATCH 64

typedef struct merge_batch {
    size_t n;
    int32_t first_rank;
    buf bytes; /* left then right token bytes of each merge */
    struct {
        uint32_t off, la, lb;
        uint64_t ha, hb;
    } m[MERGE_BATCH];
} merge_batch;

static int batch_flush(tokenizer *t, merge_batch *mb, perr *err)
{
    char cat[2 * MAX_TOKEN_BYTES];
    int32_t ids[MERGE_BATCH][3];
    for (size_t k = 0; k < mb->n; k++) {
        const char *pa = mb->bytes.p + mb->m[k].off, *pb = pa + mb->m[k].la;
        size_t la = mb->m[k].la, lb = mb->m[k].lb;
        int32_t rank = mb->first_rank + (int32_t)k;
        int32_t ia = vocab_find_hashed(t, pa, la, mb->m[k].ha);
        int32_t ib = vocab_find_hashed(t, pb, lb, mb->m[k].hb);
        memcpy(cat, pa, la);
        memcpy(cat + la, pb, lb);
        /* In files built the usual way merge r created token 256 + r: check that before hashing. */
        int32_t ic, guess = 256 + rank;
        size_t lc = la + lb;
        if (guess < t->n_ids && (size_t)t->tok[guess].len == lc && !t->is_added[guess] &&
            memcmp(t->bytes + t->tok[guess].off, cat, lc) == 0)
            ic = guess;
        else
            ic = vocab_find(t, cat, lc);
        if (ia < 0 || ib < 0 || ic < 0)
            return perr_set(err, "merge %d (\"%.*s\" \"%.*s\") refers to a token missing from the vocab", rank,
                            (int)(la > 40 ? 40 : la), pa, (int)(lb > 40 ? 40 : lb), pb);
        ids[k][0] = ia;
        ids[k][1] = ib;
        ids[k][2] = ic;
        uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
        __builtin_prefetch(&t->merges[mix64(key) & t->merge_mask], 1);
    }
    for (size_t k = 0; k < mb->n; k++) {
        uint64_t key = (uint64_t)(uint32_t)ids[k][0] << 32 | (uint32_t)ids[k][1];
        size_t i = mix64(key) & t->merge_mask;
        while (t->merges[i].key != EMPTY_KEY && t->merges[i].key != key)
            i = (i + 1) & t->merge_mask;
        /* A repeated pair keeps its later rank, as the Hugging Face loader does. */
        t->merges[i].key = key;
        t->merges[i].rank = mb->first_rank + (int32_t)k;
        t->merges[i].id = ids[k][2];
    }
    mb->first_rank += (int32_t)mb->n;
    mb->n = 0;
    mb->bytes.len = 0;
    return 0;
}

/* a and b are byte-level strings; stores their bytes and hashes, flushing when the batch is full. */
static int batch_add(tokenizer *t, merge_batch *mb, const buf *a, const buf *b, buf *tmp, perr *err)
{
    size_t k = mb->n;
    mb->m[k].off = (uint32_t)mb->bytes.len;
    bytelevel_decode(a, tmp);
    mb->m[k].la = (uint32_t)tmp->len;
    mb->m[k].ha = hash_bytes(tmp->p, tmp->len);
    if (buf_add(&mb->bytes, tmp->p, tmp->len) != 0)
        return perr_set(err, "out of memory");
    bytelevel_decode(b, tmp);
    mb->m[k].lb = (uint32_t)tmp->len;
    mb->m[k].hb = hash_bytes(tmp->p, tmp->len);
    if (buf_add(&mb->bytes, tmp->p, tmp->len) != 0)
        return perr_set(err, "out of memory");
    __builtin_prefetch(&t->vocab_slots[mb->m[k].ha & t->vocab_mask]);
    __builtin_prefetch(&t->vocab_slots[mb->m[k].hb & t->vocab_mask]);
    if (++mb->n == MERGE_BATCH)
        return batch_flush(t, mb, err);
    return 0;
}

/* strings: how many JSON strings the merges value holds (one or two per merge). */
static int parse_merges(tokenizer *t, jscan *s, size_t strings, perr *err)
{
    size_t slots = pow2_at_least(strings * 3 / 2 + 16); /* load <= 2/3 */
    t->merges = malloc(slots * sizeof *t->merges);
    if (!t->merges)
        return perr_set(err, "out of memory");
    for (size_t i = 0; i < slots; i++)
        t->merges[i].key = EMPTY_KEY;
    t->merge_mask = slots - 1;

    buf a = {0}, b = {0}, tmp = {0};
    merge_batch *mb = calloc(1, sizeof *mb);
    int rc = -1;
    if (!mb || buf_reserve(&tmp, MAX_TOKEN_BYTES * 4 + 8) != 0) {
        perr_set(err, "out of memory");
        goto done;
    }
    if (expect(s, '[', err) != 0)
        goto done;
    ws(s);
    int32_t rank = 0;
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        rc = 0;
        goto done;
    }
    for (;;) {
        ws(s);
        if (s->p < s->end && *s->p == '"') {
            if (scan_string(s, &a, err) != 0)
                goto done;
            /* "left right": exactly one space */
            char *sp = memchr(a.p, ' ', a.len);
            if (!sp || memchr(sp + 1, ' ', a.len - (size_t)(sp + 1 - a.p))) {
                perr_set(err, "merge %d is not two tokens separated by one space", rank);
                goto done;
            }
            size_t left = (size_t)(sp - a.p);
            b.len = 0;
            if (buf_add(&b, sp + 1, a.len - left - 1) != 0) {
                perr_set(err, "out of memory");
                goto done;
            }
            a.len = left;
        } else if (s->p < s->end && *s->p == '[') {
            s->p++;
            ws(s);
            if (scan_string(s, &a, err) != 0 || expect(s, ',', err) != 0)
                goto done;
            ws(s);
            if (scan_string(s, &b, err) != 0 || expect(s, ']', err) != 0) {
                perr_set(err, "merge %d is not a pair of strings", rank);
                goto done;
            }
        } else {
            perr_set(err, "merge %d is neither a string nor a pair", rank);
            goto done;
        }
        if (a.len > MAX_TOKEN_BYTES || b.len > MAX_TOKEN_BYTES) {
            perr_set(err, "merge %d: token too long", rank);
            goto done;
        }
        if (batch_add(t, mb, &a, &b, &tmp, err) != 0)
            goto done;
        if (rank == INT32_MAX - 1) {
            perr_set(err, "too many merges");
            goto done;
        }
        rank++;
        ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (expect(s, ']', err) != 0)
            goto done;
        break;
    }
    if (batch_flush(t, mb, err) != 0)
        goto done;
    rc = 0;
done:
    if (mb)
        free(mb->bytes.p);
    free(mb);
    free(a.p);
    free(b.p);
    free(tmp.p);
    return rc;
}

static bool json_is(const cJSON *o, const char *key, const char *str)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) && strcmp(v->valuestring, str) == 0;
}

static bool json_false_or_missing(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return !v || cJSON_IsFalse(v) || cJSON_IsNull(v);
}

static bool json_empty_string_or_missing(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return !v || cJSON_IsNull(v) || (cJSON_IsString(v) && v->valuestring[0] == '\0');
}

static int check_bytelevel(const cJSON *o, const char *what, perr *err)
{
    if (!cJSON_IsObject(o) || !json_is(o, "type", "ByteLevel"))
        return perr_set(err, "unsupported tokenizer: %s must be ByteLevel", what);
    if (!json_false_or_missing(o, "add_prefix_space"))
        return perr_set(err, "unsupported tokenizer: %s with add_prefix_space", what);
    return 0;
}

static int check_pre_tokenizer(const cJSON *pt, perr *err)
{
    if (!cJSON_IsObject(pt) || !json_is(pt, "type", "Sequence"))
        return perr_set(err, "unsupported tokenizer: pre_tokenizer must be a Sequence of Split and ByteLevel");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != 2)
        return perr_set(err, "unsupported tokenizer: pre_tokenizer must be a Sequence of Split and ByteLevel");
    const cJSON *split = cJSON_GetArrayItem(list, 0), *bl = cJSON_GetArrayItem(list, 1);
    if (!cJSON_IsObject(split) || !json_is(split, "type", "Split"))
        return perr_set(err, "unsupported tokenizer: first pre_tokenizer must be Split");
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(split, "pattern");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    if (!cJSON_IsString(re) || strcmp(re->valuestring, qwen2_split_pattern) != 0)
        return perr_set(err, "unsupported tokenizer: Split pattern is not the Qwen2 regex");
    if (!json_is(split, "behavior", "Isolated") || !json_false_or_missing(split, "invert"))
        return perr_set(err, "unsupported tokenizer: Split must be Isolated and not inverted");
    if (check_bytelevel(bl, "second pre_tokenizer", err) != 0)
        return -1;
    const cJSON *use_regex = cJSON_GetObjectItemCaseSensitive(bl, "use_regex");
    if (!cJSON_IsFalse(use_regex))
        return perr_set(err, "unsupported tokenizer: ByteLevel pre_tokenizer must have use_regex false");
    return 0;
}

static int check_model_field(const char *key, const cJSON *v, tokenizer *t, perr *err)
{
    if (strcmp(key, "type") == 0) {
        if (!cJSON_IsString(v) || strcmp(v->valuestring, "BPE") != 0)
            return perr_set(err, "unsupported tokenizer: model type %s (only BPE)",
                            cJSON_IsString(v) ? v->valuestring : "(not a string)");
    } else if (strcmp(key, "dropout") == 0) {
        if (!cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
            return perr_set(err, "unsupported tokenizer: BPE dropout");
    } else if (strcmp(key, "continuing_subword_prefix") == 0 || strcmp(key, "end_of_word_suffix") == 0) {
        if (!(cJSON_IsNull(v) || (cJSON_IsString(v) && v->valuestring[0] == '\0')))
            return perr_set(err, "unsupported tokenizer: BPE %s", key);
    } else if (strcmp(key, "byte_fallback") == 0) {
        if (!cJSON_IsFalse(v) && !cJSON_IsNull(v))
            return perr_set(err, "unsupported tokenizer: BPE byte_fallback");
    } else if (strcmp(key, "ignore_merges") == 0) {
        t->ignore_merges = cJSON_IsTrue(v);
    }
    (void)json_empty_string_or_missing;
    return 0;
}

static int parse_model(tokenizer *t, jscan *s, vocab_entry **vocab, size_t *n_vocab, jscan *merges_span,
                       size_t *n_merge_strings, bool *have_type, perr *err)
{
    buf key = {0};
    int rc = -1;
    if (expect(s, '{', err) != 0)
        goto done;
    for (bool first = true;; first = false) {
        int m = next_member(s, first, &key, err);
        if (m < 0)
            goto done;
        if (m == 0)
            break;
        if (key.len == 5 && memcmp(key.p, "vocab", 5) == 0) {
            if (*vocab) {
                perr_set(err, "model.vocab appears twice");
                goto done;
            }
            if (parse_vocab(t, s, vocab, n_vocab, err) != 0) {
                perr_wrap(err, "model.vocab");
                goto done;
            }
        } else if (key.len == 6 && memcmp(key.p, "merges", 6) == 0) {
            *merges_span = *s;
            if (skip_value_counting(s, n_merge_strings, err) != 0)
                goto done;
            merges_span->end = s->p;
        } else {
            const char *start = s->p;
            if (skip_value(s, err) != 0)
                goto done;
            cJSON *v = cJSON_ParseWithLength(start, (size_t)(s->p - start));
            if (!v) {
                perr_set(err, "model.%.*s is not valid JSON", (int)key.len, key.p);
                goto done;
            }
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)key.len, key.p);
            if (strcmp(name, "type") == 0)
                *have_type = true;
            int r = check_model_field(name, v, t, err);
            cJSON_Delete(v);
            if (r != 0)
                goto done;
        }
    }
    rc = 0;
done:
    free(key.p);
    return rc;
}

static int add_added_token(tokenizer *t, int32_t id, const char *content, bool special, perr *err)
{
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].id == id)
            return 0; /* already known (tokenizer.json wins over tokenizer_config.json) */
    if (id < 0 || id >= MAX_VOCAB)
        return perr_set(err, "added token id %d out of range", id);
    size_t len = strlen(content);
    if (len == 0 || len > MAX_TOKEN_BYTES)
        return perr_set(err, "added token %d has an empty or too long content", id);
    added_token *na = realloc(t->added, (t->n_added + 1) * sizeof *na);
    if (!na)
        return perr_set(err, "out of memory");
    t->added = na;
    char *c = strdup(content);
    if (!c)
        return perr_set(err, "out of memory");
    t->added[t->n_added++] = (added_token){id, c, len, special};
    return 0;
}

static int parse_added_token_object(tokenizer *t, const cJSON *o, int32_t id, perr *err)
{
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(o, "content");
    if (!cJSON_IsString(content))
        return perr_set(err, "added token %d has no content string", id);
    if (!json_false_or_missing(o, "lstrip") || !json_false_or_missing(o, "rstrip") ||
        !json_false_or_missing(o, "single_word"))
        return perr_set(err, "unsupported tokenizer: added token %s uses lstrip/rstrip/single_word",
                        content->valuestring);
    const cJSON *normalized = cJSON_GetObjectItemCaseSensitive(o, "normalized");
    if (cJSON_IsTrue(normalized)) {
        for (const char *p = content->valuestring; *p; p++)
            if ((unsigned char)*p >= 0x80)
                return perr_set(err, "unsupported tokenizer: normalized non-ASCII added token");
    }
    return add_added_token(t, id, content->valuestring, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "special")),
                           err);
}

static int parse_added_tokens(tokenizer *t, const cJSON *arr, perr *err)
{
    if (cJSON_IsNull(arr))
        return 0;
    if (!cJSON_IsArray(arr))
        return perr_set(err, "added_tokens is not an array");
    const cJSON *o;
    cJSON_ArrayForEach(o, arr)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        if (!cJSON_IsObject(o) || !cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= MAX_VOCAB ||
            id->valuedouble != (double)(int32_t)id->valuedouble)
            return perr_set(err, "added_tokens entry without a valid id");
        if (parse_added_token_object(t, o, (int32_t)id->valuedouble, err) != 0)
            return -1;
    }
    return 0;
}

static char *token_string(const cJSON *v)
{
    if (cJSON_IsString(v))
        return strdup(v->valuestring);
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c))
            return strdup(c->valuestring);
    }
    return NULL;
}

static int load_config(tokenizer *t, const char *path, perr *err)
{
    char *text;
    size_t len;
    if (read_file(path, MAX_CONFIG_BYTES, &text, &len, err) != 0)
        return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return perr_set(err, "%s is not a JSON object", path);
    }
    int rc = -1;
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (cJSON_IsString(ct)) {
        t->chat_template = strdup(ct->valuestring);
    } else if (cJSON_IsArray(ct)) {
        /* A list of named templates: take "default", else the first. */
        const cJSON *e, *pick = NULL;
        cJSON_ArrayForEach(e, ct)
        {
            const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(e, "template");
            if (!cJSON_IsString(tmpl))
                continue;
            if (!pick || json_is(e, "name", "default"))
                pick = tmpl;
            if (json_is(e, "name", "default"))
                break;
        }
        if (pick)
            t->chat_template = strdup(pick->valuestring);
    }
    t->eos_token = token_string(cJSON_GetObjectItemCaseSensitive(root, "eos_token"));
    t->bos_token = token_string(cJSON_GetObjectItemCaseSensitive(root, "bos_token"));
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "added_tokens_decoder");
    if (dec && !cJSON_IsNull(dec)) {
        if (!cJSON_IsObject(dec)) {
            perr_set(err, "%s: added_tokens_decoder is not an object", path);
            goto done;
        }
        const cJSON *e;
        cJSON_ArrayForEach(e, dec)
        {
            char *endp;
            long id = strtol(e->string, &endp, 10);
            if (*e->string == '\0' || *endp != '\0' || id < 0 || id >= MAX_VOCAB || !cJSON_IsObject(e)) {
                perr_set(err, "%s: bad added_tokens_decoder entry", path);
                goto done;
            }
            bool known = false;
            for (size_t k = 0; k < t->n_added && !known; k++)
                known = t->added[k].id == (int32_t)id;
            if (known)
                continue; /* tokenizer.json already describes it */
            if (parse_added_token_object(t, e, (int32_t)id, err) != 0) {
                perr_wrap(err, "%s", path);
                goto done;
            }
        }
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

static int finish_tables(tokenizer *t, vocab_entry *v, size_t n, perr *err)
{
    int32_t max_id = -1;
    for (size_t i = 0; i < n; i++)
        if (v[i].id > max_id)
            max_id = v[i].id;
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].id > max_id)
            max_id = t->added[i].id;
    t->n_ids = max_id + 1;
    t->tok = malloc((size_t)t->n_ids * sizeof *t->tok);
    t->is_added = calloc((size_t)t->n_ids, sizeof *t->is_added);
    t->is_added_special = calloc((size_t)t->n_ids, sizeof *t->is_added_special);
    size_t slots = pow2_at_least(n * 3 / 2 + 16);
    t->vocab_slots = malloc(slots * sizeof *t->vocab_slots);
    if (!t->tok || !t->is_added || !t->is_added_special || !t->vocab_slots)
        return perr_set(err, "out of memory");
    t->vocab_mask = slots - 1;
    for (int32_t i = 0; i < t->n_ids; i++)
        t->tok[i].len = -1;
    memset(t->vocab_slots, 0xff, slots * sizeof *t->vocab_slots);
    uint64_t *hashes = malloc((n + 1) * sizeof *hashes);
    if (!hashes)
        return perr_set(err, "out of memory");
    for (size_t i = 0; i < n; i++)
        hashes[i] = hash_bytes(t->bytes + v[i].off, v[i].len);
    for (size_t i = 0; i < n; i++) {
        if (i + 16 < n)
            __builtin_prefetch(&t->vocab_slots[hashes[i + 16] & t->vocab_mask], 1);
        if (t->tok[v[i].id].len >= 0) {
            free(hashes);
            return perr_set(err, "vocab id %d appears twice", v[i].id);
        }
        t->tok[v[i].id].off = v[i].off;
        t->tok[v[i].id].len = (int32_t)v[i].len;
        const char *tb = t->bytes + v[i].off;
        if (vocab_find_hashed(t, tb, v[i].len, hashes[i]) >= 0)
            continue; /* same bytes as an earlier token: the first one wins */
        size_t h = hashes[i] & t->vocab_mask;
        while (t->vocab_slots[h].id >= 0)
            h = (h + 1) & t->vocab_mask;
        struct vocab_slot *slot = &t->vocab_slots[h];
        slot->id = v[i].id;
        slot->len = v[i].len > 255 ? 255 : (uint8_t)v[i].len;
        memcpy(slot->head, tb, v[i].len < 11 ? v[i].len : 11);
    }
    free(hashes);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = vocab_find(t, &c, 1);
        if (t->byte_id[b] < 0)
            return perr_set(err, "unsupported tokenizer: vocab lacks the byte-level symbol for byte 0x%02X", b);
    }
    /* Added tokens: decoded as their content. */
    for (size_t i = 0; i < t->n_added; i++) {
        added_token *a = &t->added[i];
        uint32_t off;
        if (store_bytes(t, a->content, a->len, &off) != 0)
            return perr_set(err, "out of memory");
        t->tok[a->id].off = off;
        t->tok[a->id].len = (int32_t)a->len;
        t->is_added[a->id] = true;
        t->is_added_special[a->id] = a->special;
        t->added_first[(unsigned char)a->content[0] >> 3] |= (unsigned char)(1u << (a->content[0] & 7));
    }
    return 0;
}

int tokenizer_load_files(const char *json_path, const char *config_path, tokenizer **out, perr *err)
{
    static pthread_once_t map_once = PTHREAD_ONCE_INIT;
    pthread_once(&map_once, init_byte_map);
    *out = NULL;
    char *text;
    size_t len;
    if (read_file(json_path, MAX_JSON_BYTES, &text, &len, err) != 0)
        return -1;
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        free(text);
        return perr_set(err, "out of memory");
    }
    vocab_entry *vocab = NULL;
    size_t n_vocab = 0;
    jscan merges = {0};
    size_t n_merge_strings = 0;
    bool have_model = false, have_type = false, have_normalizer = false, have_pre = false, have_decoder = false;
    cJSON *added_json = NULL;
    buf key = {0};
    int rc = -1;

    jscan s = {text, text + len};
    if (expect(&s, '{', err) != 0)
        goto fail;
    for (bool first = true;; first = false) {
        int m = next_member(&s, first, &key, err);
        if (m < 0)
            goto fail;
        if (m == 0)
            break;
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(key.len < 63 ? key.len : 63), key.p ? key.p : "");
        if (strcmp(name, "model") == 0) {
            have_model = true;
            if (parse_model(t, &s, &vocab, &n_vocab, &merges, &n_merge_strings, &have_type, err) != 0)
                goto fail;
            continue;
        }
        const char *start = s.p;
        if (skip_value(&s, err) != 0)
            goto fail;
        if (strcmp(name, "added_tokens") != 0 && strcmp(name, "normalizer") != 0 &&
            strcmp(name, "pre_tokenizer") != 0 && strcmp(name, "decoder") != 0)
            continue;
        cJSON *v = cJSON_ParseWithLength(start, (size_t)(s.p - start));
        if (!v) {
            perr_set(err, "%s is not valid JSON", name);
            goto fail;
        }
        int r = 0;
        if (strcmp(name, "added_tokens") == 0) {
            cJSON_Delete(added_json); /* a repeated key: the last one counts */
            added_json = v;
            continue;
        } else if (strcmp(name, "normalizer") == 0) {
            have_normalizer = true;
            if (cJSON_IsNull(v))
                t->nfc = false;
            else if (cJSON_IsObject(v) && json_is(v, "type", "NFC"))
                t->nfc = true;
            else
                r = perr_set(err, "unsupported tokenizer: normalizer %s (only NFC)",
                             cJSON_IsString(cJSON_GetObjectItemCaseSensitive(v, "type"))
                                 ? cJSON_GetObjectItemCaseSensitive(v, "type")->valuestring
                                 : "?");
        } else if (strcmp(name, "pre_tokenizer") == 0) {
            have_pre = true;
            r = check_pre_tokenizer(v, err);
        } else {
            have_decoder = true;
            r = check_bytelevel(v, "decoder", err);
        }
        cJSON_Delete(v);
        if (r != 0)
            goto fail;
    }
    ws(&s);
    if (s.p != s.end) {
        perr_set(err, "trailing data after the JSON object");
        goto fail;
    }
    if (!have_model || !vocab || !merges.p) {
        perr_set(err, "no model with vocab and merges");
        goto fail;
    }
    if (!have_type) {
        perr_set(err, "unsupported tokenizer: model has no type (only BPE)");
        goto fail;
    }
    if (!have_normalizer || !have_pre || !have_decoder) {
        perr_set(err, "unsupported tokenizer: missing %s", !have_normalizer ? "normalizer"
                                                            : !have_pre       ? "pre_tokenizer"
                                                                              : "decoder");
        goto fail;
    }
    if (parse_added_tokens(t, added_json, err) != 0)
        goto fail;
    if (config_path && file_exists(config_path) && load_config(t, config_path, err) != 0)
        goto fail;
    if (finish_tables(t, vocab, n_vocab, err) != 0)
        goto fail;
    if (parse_merges(t, &merges, n_merge_strings, err) != 0) {
        perr_wrap(err, "model.merges");
        goto fail;
    }
    rc = 0;
fail:
    free(key.p);
    free(vocab);
    cJSON_Delete(added_json);
    free(text);
    if (rc != 0) {
        perr_wrap(err, "%s", json_path);
        tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

int tokenizer_load(const char *dir, tokenizer **out, perr *err)
{
    char jp[4096], cp[4096];
    if (path_join(jp, sizeof jp, dir, "tokenizer.json", err) != 0 ||
        path_join(cp, sizeof cp, dir, "tokenizer_config.json", err) != 0)
        return -1;
    return tokenizer_load_files(jp, cp, out, err);
}

void tokenizer_free(tokenizer *t)
{
    if (!t)
        return;
    free(t->tok);
    free(t->bytes);
    free(t->vocab_slots);
    free(t->merges);
    for (size_t i = 0; i < t->n_added; i++)
        free(t->added[i].content);
    free(t->added);
    free(t->is_added);
    free(t->is_added_special);
    free(t->chat_template);
    free(t->eos_token);
    free(t->bos_token);
    free(t);
}

/* ---- encoding ---- */

typedef struct ids_vec {
    int32_t *p;
    size_t len, cap;
} ids_vec;

static int ids_reserve(ids_vec *v, size_t extra)
{
    int32_t *np = grow_array(v->p, &v->cap, v->len + extra, sizeof *np, 64);
    if (!np)
        return -1;
    v->p = np;
    return 0;
}

/* Per-call cache of piece -> ids. */
typedef struct cache_slot {
    uint64_t hash;
    uint32_t key_off, key_len; /* in cache bytes; key_len 0 = free */
    uint32_t ids_off, n_ids;   /* in cache ids */
} cache_slot;

typedef struct encoder {
    const tokenizer *t;
    /* scratch for one piece */
    int32_t *sym, *rank, *res, *prev, *next;
    struct heap_entry *heap;
    size_t scratch_cap, heap_cap;
    /* cache */
    cache_slot *slots;
    size_t mask, used;
    buf keys;
    ids_vec cids;
    /* segment buffers */
    uint32_t *cps, *nfc;
    size_t cps_cap, nfc_cap;
    unsigned char *cls;
    uint32_t *off;
    size_t cls_cap;
    buf u8;
} encoder;

/* A candidate merge of the pair starting at node pos. A merge rank names exactly one pair, so an
 * entry is current iff the node's pair still has that rank (kept in the per-node rank array). */
typedef struct heap_entry {
    int32_t rank, pos;
} heap_entry;

static bool heap_less(const heap_entry *a, const heap_entry *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(heap_entry *h, size_t *n, heap_entry e)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static heap_entry heap_pop(heap_entry *h, size_t *n)
{
    heap_entry top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c]))
            c++;
        if (!heap_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0)
        h[i] = last;
    return top;
}

static int scratch_reserve(encoder *e, size_t n)
{
    if (n <= e->scratch_cap)
        return 0;
    size_t nc = e->scratch_cap ? e->scratch_cap : 64;
    while (nc < n)
        nc *= 2;
    int32_t **arrs[] = {&e->sym, &e->rank, &e->res, &e->prev, &e->next};
    for (size_t i = 0; i < 5; i++) {
        int32_t *np = realloc(*arrs[i], nc * sizeof *np);
        if (!np)
            return -1;
        *arrs[i] = np;
    }
    e->scratch_cap = nc;
    return 0;
}

/* BPE of one piece's bytes; appends ids to out. */
static int bpe_piece(encoder *e, const unsigned char *b, size_t len, ids_vec *out)
{
    const tokenizer *t = e->t;
    if (len == 1) {
        if (ids_reserve(out, 1) != 0)
            return -1;
        out->p[out->len++] = t->byte_id[b[0]];
        return 0;
    }
    if (t->ignore_merges) {
        int32_t id = vocab_find(t, b, len);
        if (id >= 0) {
            if (ids_reserve(out, 1) != 0)
                return -1;
            out->p[out->len++] = id;
            return 0;
        }
    }
    if (scratch_reserve(e, len) != 0 || ids_reserve(out, len) != 0)
        return -1;
    int32_t *sym = e->sym;
    for (size_t i = 0; i < len; i++)
        sym[i] = t->byte_id[b[i]];

    if (len < tokenizer_bpe_heap_min) {
        /* Simple loop: rank[k] is the rank of pair (k, k+1). */
        int32_t *rank = e->rank, *res = e->res;
        size_t m = len;
        for (size_t k = 0; k + 1 < m; k++) {
            const merge_slot *s = merge_find(t, sym[k], sym[k + 1]);
            rank[k] = s ? s->rank : INT32_MAX;
            res[k] = s ? s->id : -1;
        }
        for (;;) {
            int32_t best = INT32_MAX;
            size_t bk = 0;
            for (size_t k = 0; k + 1 < m; k++)
                if (rank[k] < best) {
                    best = rank[k];
                    bk = k;
                }
            if (best == INT32_MAX)
                break;
            sym[bk] = res[bk];
            size_t tail = m - bk - 2;
            memmove(sym + bk + 1, sym + bk + 2, tail * sizeof *sym);
            memmove(rank + bk + 1, rank + bk + 2, (tail > 0 ? tail - 1 : 0) * sizeof *rank);
            memmove(res + bk + 1, res + bk + 2, (tail > 0 ? tail - 1 : 0) * sizeof *res);
            m--;
            if (bk + 1 < m) {
                const merge_slot *s = merge_find(t, sym[bk], sym[bk + 1]);
                rank[bk] = s ? s->rank : INT32_MAX;
                res[bk] = s ? s->id : -1;
            }
            if (bk > 0) {
                const merge_slot *s = merge_find(t, sym[bk - 1], sym[bk]);
                rank[bk - 1] = s ? s->rank : INT32_MAX;
                res[bk - 1] = s ? s->id : -1;
            }
        }
        memcpy(out->p + out->len, sym, m * sizeof *sym);
        out->len += m;
        return 0;
    }

    /* Heap of candidate merges ordered by (rank, position); stale entries are skipped on pop. */
    if (len * 3 > e->heap_cap) {
        heap_entry *nh = realloc(e->heap, len * 3 * sizeof *nh);
        if (!nh)
            return -1;
        e->heap = nh;
        e->heap_cap = len * 3;
    }
    int32_t *prev = e->prev, *next = e->next, *rank = e->rank, *res = e->res;
    heap_entry *h = e->heap;
    size_t hn = 0;
    for (size_t i = 0; i < len; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < len ? (int32_t)i + 1 : -1;
        rank[i] = INT32_MAX;
    }
    for (size_t i = 0; i + 1 < len; i++) {
        const merge_slot *s = merge_find(t, sym[i], sym[i + 1]);
        if (s) {
            rank[i] = s->rank;
            res[i] = s->id;
            heap_push(h, &hn, (heap_entry){s->rank, (int32_t)i});
        }
    }
    while (hn > 0) {
        heap_entry top = heap_pop(h, &hn);
        int32_t p = top.pos;
        if (sym[p] < 0 || rank[p] != top.rank)
            continue; /* stale */
        int32_t q = next[p];
        sym[p] = res[p];
        sym[q] = -1;
        rank[q] = INT32_MAX;
        next[p] = next[q];
        if (next[q] >= 0)
            prev[next[q]] = p;
        /* Each merge removes one symbol and adds at most two entries; the heap never outgrows 3*len. */
        if (hn + 2 > e->heap_cap)
            return -1;
        rank[p] = INT32_MAX;
        if (next[p] >= 0) {
            const merge_slot *s = merge_find(t, sym[p], sym[next[p]]);
            if (s) {
                rank[p] = s->rank;
                res[p] = s->id;
                heap_push(h, &hn, (heap_entry){s->rank, p});
            }
        }
        if (prev[p] >= 0) {
            int32_t pp = prev[p];
            const merge_slot *s = merge_find(t, sym[pp], sym[p]);
            rank[pp] = s ? s->rank : INT32_MAX;
            if (s) {
                res[pp] = s->id;
                heap_push(h, &hn, (heap_entry){s->rank, pp});
            }
        }
    }
    for (int32_t i = 0; i >= 0; i = next[i])
        out->p[out->len++] = sym[i];
    return 0;
}

#define CACHE_MAX_KEY 256
#define CACHE_MAX_BYTES (64u << 20)

static int cache_grow(encoder *e)
{
    size_t n = e->mask ? (e->mask + 1) * 2 : 1024;
    cache_slot *ns = calloc(n, sizeof *ns);
    if (!ns)
        return -1;
    for (size_t i = 0; e->slots && i <= e->mask; i++) {
        if (!e->slots[i].key_len)
            continue;
        size_t j = e->slots[i].hash & (n - 1);
        while (ns[j].key_len)
            j = (j + 1) & (n - 1);
        ns[j] = e->slots[i];
    }
    free(e->slots);
    e->slots = ns;
    e->mask = n - 1;
    return 0;
}

static int encode_piece(encoder *e, const unsigned char *b, size_t len, ids_vec *out)
{
    if (len == 1 || len > CACHE_MAX_KEY || !tokenizer_cache_enabled)
        return bpe_piece(e, b, len, out);
    uint64_t h = hash_bytes(b, len);
    if (e->slots) {
        size_t i = h & e->mask;
        while (e->slots[i].key_len) {
            cache_slot *s = &e->slots[i];
            if (s->hash == h && s->key_len == len && memcmp(e->keys.p + s->key_off, b, len) == 0) {
                if (ids_reserve(out, s->n_ids) != 0)
                    return -1;
                memcpy(out->p + out->len, e->cids.p + s->ids_off, s->n_ids * sizeof(int32_t));
                out->len += s->n_ids;
                return 0;
            }
            i = (i + 1) & e->mask;
        }
    }
    size_t start = out->len;
    if (bpe_piece(e, b, len, out) != 0)
        return -1;
    if (e->keys.len + e->cids.len * 4 > CACHE_MAX_BYTES)
        return 0; /* cache full: keep working uncached */
    if ((e->used + 1) * 2 > (e->slots ? e->mask + 1 : 0) && cache_grow(e) != 0)
        return -1;
    size_t n = out->len - start;
    size_t key_off = e->keys.len, ids_off = e->cids.len;
    if (buf_add(&e->keys, b, len) != 0 || ids_reserve(&e->cids, n) != 0)
        return -1;
    memcpy(e->cids.p + ids_off, out->p + start, n * sizeof(int32_t));
    e->cids.len += n;
    size_t i = h & e->mask;
    while (e->slots[i].key_len)
        i = (i + 1) & e->mask;
    e->slots[i] = (cache_slot){h, (uint32_t)key_off, (uint32_t)len, (uint32_t)ids_off, (uint32_t)n};
    e->used++;
    return 0;
}

/* Normalises, pre-tokenizes and BPE-encodes one stretch of text between added tokens. */
static int encode_segment(encoder *e, const unsigned char *s, size_t len, ids_vec *out)
{
    if (len == 0)
        return 0;
    /* Decode to code points (at most len of them). */
    if (len > e->cps_cap) {
        uint32_t *np = realloc(e->cps, len * sizeof *np);
        if (!np)
            return -1;
        e->cps = np;
        e->cps_cap = len;
    }
    size_t n = 0;
    bool clean = true, maybe = false;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        if (s[i] < 0x80) {
            cp = s[i++];
        } else {
            size_t k = utf8_decode(s + i, len - i, &cp);
            if (cp == 0xFFFD && !(k == 3 && s[i] == 0xEF && s[i + 1] == 0xBF && s[i + 2] == 0xBD))
                clean = false;
            i += k;
            if (cp >= 0x300)
                maybe = true;
        }
        e->cps[n++] = cp;
    }
    const uint32_t *cps = e->cps;
    if (e->t->nfc && maybe) {
        bool need = false;
        for (size_t i = 0; i < n && !need; i++)
            need = cps[i] >= 0x300 && (uni_class(cps[i]) & UNI_NFC_MAYBE);
        if (need) {
            size_t m = nfc_normalize(cps, n, &e->nfc, &e->nfc_cap);
            if (m == (size_t)-1)
                return -1;
            cps = e->nfc;
            n = m;
            clean = false;
        }
    }
    if (n + 1 > e->cls_cap) {
        unsigned char *nc = realloc(e->cls, n + 1);
        if (!nc)
            return -1;
        e->cls = nc;
        uint32_t *no = realloc(e->off, (n + 1) * sizeof *no);
        if (!no)
            return -1;
        e->off = no;
        e->cls_cap = n + 1;
    }
    /* Bytes of the (normalised) text and the byte offset of each code point. */
    const unsigned char *bytes = s;
    if (clean) {
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            e->off[i] = (uint32_t)o;
            uint32_t c = cps[i];
            o += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
        }
        e->off[n] = (uint32_t)o;
    } else {
        e->u8.len = 0;
        if (buf_reserve(&e->u8, n * 4 + 1) != 0)
            return -1;
        for (size_t i = 0; i < n; i++) {
            e->off[i] = (uint32_t)e->u8.len;
            e->u8.len += utf8_encode(cps[i], (unsigned char *)e->u8.p + e->u8.len);
        }
        e->off[n] = (uint32_t)e->u8.len;
        bytes = (const unsigned char *)e->u8.p;
    }
    const unsigned char *latin1 = uni_latin1_classes();
    for (size_t i = 0; i < n; i++)
        e->cls[i] = cps[i] < 256 ? latin1[cps[i]] : (unsigned char)uni_class(cps[i]);
    for (size_t i = 0; i < n;) {
        size_t j = pretok_piece_end(cps, e->cls, n, i);
        if (encode_piece(e, bytes + e->off[i], e->off[j] - e->off[i], out) != 0)
            return -1;
        i = j;
    }
    return 0;
}

static void encoder_free(encoder *e)
{
    free(e->sym);
    free(e->rank);
    free(e->res);
    free(e->prev);
    free(e->next);
    free(e->heap);
    free(e->slots);
    free(e->keys.p);
    free(e->cids.p);
    free(e->cps);
    free(e->nfc);
    free(e->cls);
    free(e->off);
    free(e->u8.p);
}

/* Leftmost-longest added token at or after position i; returns its index or -1, *at its position. */
static long find_added(const tokenizer *t, const unsigned char *s, size_t len, size_t from, size_t *at)
{
    for (size_t i = from; i < len; i++) {
        unsigned char c = s[i];
        if (!(t->added_first[c >> 3] & (1u << (c & 7))))
            continue;
        long best = -1;
        for (size_t k = 0; k < t->n_added; k++) {
            const added_token *a = &t->added[k];
            if (a->len <= len - i && (best < 0 || a->len > t->added[best].len) &&
                memcmp(s + i, a->content, a->len) == 0)
                best = (long)k;
        }
        if (best >= 0) {
            *at = i;
            return best;
        }
    }
    return -1;
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n_ids, perr *err)
{
    *ids = NULL;
    *n_ids = 0;
    if (len > UINT32_MAX / 4)
        return perr_set(err, "text too long to tokenize (%zu bytes)", len);
    const unsigned char *s = (const unsigned char *)text;
    encoder e = {.t = t};
    ids_vec out = {0};
    size_t pos = 0;
    int rc = -1;
    if (ids_reserve(&out, len / 3 + 16) != 0)
        goto oom;
    while (pos < len) {
        size_t at;
        long k = t->n_added ? find_added(t, s, len, pos, &at) : -1;
        size_t seg_end = k >= 0 ? at : len;
        if (encode_segment(&e, s + pos, seg_end - pos, &out) != 0)
            goto oom;
        if (k < 0)
            break;
        if (ids_reserve(&out, 1) != 0)
            goto oom;
        out.p[out.len++] = t->added[k].id;
        pos = at + t->added[k].len;
    }
    rc = 0;
    *ids = out.p;
    *n_ids = out.len;
    out.p = NULL;
    goto done;
oom:
    perr_set(err, "out of memory while tokenizing");
done:
    encoder_free(&e);
    free(out.p);
    return rc;
}

/* ---- decoding ---- */

/* Appends s with invalid UTF-8 replaced by U+FFFD. */
static int append_sanitized(buf *out, const unsigned char *s, size_t len)
{
    if (buf_reserve(out, len * 3 + 1) != 0)
        return -1;
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            out->p[out->len++] = (char)s[i++];
            continue;
        }
        uint32_t cp;
        size_t k = utf8_decode(s + i, len - i, &cp);
        if (cp == 0xFFFD) {
            memcpy(out->p + out->len, "\xEF\xBF\xBD", 3);
            out->len += 3;
        } else {
            memcpy(out->p + out->len, s + i, k);
            out->len += k;
        }
        i += k;
    }
    out->p[out->len] = '\0';
    return 0;
}

static bool id_valid(const tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_ids && t->tok[id].len >= 0;
}

int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **out,
                     size_t *len, perr *err)
{
    *out = NULL;
    *len = 0;
    buf raw = {0}, res = {0};
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (!id_valid(t, id)) {
            free(raw.p);
            return perr_set(err, "invalid token id %d (tokenizer has %d ids)", id, t->n_ids);
        }
        if (skip_special && t->is_added_special[id])
            continue;
        if (buf_add(&raw, t->bytes + t->tok[id].off, (size_t)t->tok[id].len) != 0) {
            free(raw.p);
            return perr_set(err, "out of memory");
        }
    }
    if (append_sanitized(&res, (const unsigned char *)raw.p, raw.len) != 0) {
        free(raw.p);
        free(res.p);
        return perr_set(err, "out of memory");
    }
    free(raw.p);
    *out = res.p;
    *len = res.len;
    return 0;
}

int tokenizer_size(const tokenizer *t) { return t->n_ids; }

int tokenizer_token_id(const tokenizer *t, const char *s)
{
    size_t len = strlen(s);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == len && memcmp(t->added[i].content, s, len) == 0)
            return t->added[i].id;
    return vocab_find(t, s, len);
}

const char *tokenizer_chat_template(const tokenizer *t) { return t->chat_template; }
const char *tokenizer_eos_token(const tokenizer *t) { return t->eos_token; }
const char *tokenizer_bos_token(const tokenizer *t) { return t->bos_token; }

/* ---- streaming ---- */

struct detokenizer {
    const tokenizer *t;
    bool skip_special;
    buf pending;
};

detokenizer *detokenizer_new(const tokenizer *t, bool skip_special)
{
    detokenizer *d = calloc(1, sizeof *d);
    if (d) {
        d->t = t;
        d->skip_special = skip_special;
    }
    return d;
}

void detokenizer_free(detokenizer *d)
{
    if (!d)
        return;
    free(d->pending.p);
    free(d);
}

static int emit(detokenizer *d, size_t upto, char **out, size_t *len)
{
    buf res = {0};
    if (append_sanitized(&res, (const unsigned char *)d->pending.p, upto) != 0) {
        free(res.p);
        return -1;
    }
    if (upto > 0) {
        memmove(d->pending.p, d->pending.p + upto, d->pending.len - upto);
        d->pending.len -= upto;
    }
    *out = res.p;
    *len = res.len;
    return 0;
}

int detokenizer_push(detokenizer *d, int32_t id, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    const tokenizer *t = d->t;
    if (!id_valid(t, id))
        return -1;
    if (!(d->skip_special && t->is_added_special[id]) &&
        buf_add(&d->pending, t->bytes + t->tok[id].off, (size_t)t->tok[id].len) != 0)
        return -1;
    size_t upto = utf8_complete_prefix((const unsigned char *)d->pending.p, d->pending.len);
    return emit(d, upto, out, len);
}

int detokenizer_flush(detokenizer *d, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    return emit(d, d->pending.len, out, len);
}
