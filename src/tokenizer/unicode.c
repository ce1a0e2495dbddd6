/* Lookups in the generated Unicode tables, UTF-8 helpers and NFC normalisation
 * (decomposition, canonical ordering, canonical composition; Hangul by formula). */
#include "tokenizer/unicode.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static bool in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* Classes of the first 256 code points, filled once. */
static unsigned char latin1_class[256];
static pthread_once_t latin1_once = PTHREAD_ONCE_INIT;

static unsigned class_slow(uint32_t cp)
{
    unsigned c = 0;
    if (in_ranges(uni_letter, uni_letter_count, cp))
        c |= UNI_LETTER;
    else if (in_ranges(uni_number, uni_number_count, cp))
        c |= UNI_NUMBER;
    else if (in_ranges(uni_space, uni_space_count, cp))
        c |= UNI_SPACE;
    if (cp == '\r' || cp == '\n')
        c |= UNI_NEWLINE;
    if (cp >= 0x300 && in_ranges(uni_nfc_maybe, uni_nfc_maybe_count, cp))
        c |= UNI_NFC_MAYBE;
    return c;
}

static void init_latin1(void)
{
    for (uint32_t i = 0; i < 256; i++)
        latin1_class[i] = (unsigned char)class_slow(i);
}

const unsigned char *uni_latin1_classes(void)
{
    pthread_once(&latin1_once, init_latin1);
    return latin1_class;
}

unsigned uni_class(uint32_t cp)
{
    if (cp < 256) {
        pthread_once(&latin1_once, init_latin1);
        return latin1_class[cp];
    }
    return class_slow(cp);
}

int uni_combining_class(uint32_t cp)
{
    if (cp < 0x300)
        return 0;
    size_t lo = 0, hi = uni_ccc_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < uni_ccc[mid][0])
            hi = mid;
        else if (cp > uni_ccc[mid][1])
            lo = mid + 1;
        else
            return (int)uni_ccc[mid][2];
    }
    return 0;
}

size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned b0 = s[0];
    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    }
    size_t need;
    uint32_t v;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        v = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        v = b0 & 0x0F;
        if (b0 == 0xE0)
            lo = 0xA0;
        else if (b0 == 0xED)
            hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        v = b0 & 0x07;
        if (b0 == 0xF0)
            lo = 0x90;
        else if (b0 == 0xF4)
            hi = 0x8F;
    } else {
        *cp = 0xFFFD;
        return 1;
    }
    size_t i = 1;
    for (; i <= need; i++) {
        if (i >= len) {
            *cp = 0xFFFD;
            return i;
        }
        unsigned b = s[i];
        unsigned l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) {
            *cp = 0xFFFD;
            return i;
        }
        v = (v << 6) | (b & 0x3F);
    }
    *cp = v;
    return i;
}

size_t utf8_encode(uint32_t cp, unsigned char *out)
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t utf8_complete_prefix(const unsigned char *s, size_t len)
{
    /* Only the last few bytes can form a cut-short sequence: find the last lead byte. */
    size_t start = len > 4 ? len - 4 : 0;
    for (size_t i = len; i-- > start;) {
        unsigned b = s[i];
        if ((b & 0xC0) == 0x80)
            continue;
        if (b < 0xC2 || b > 0xF4)
            return len;
        size_t total = b <= 0xDF ? 2 : b <= 0xEF ? 3 : 4;
        if (len - i >= total)
            return len;
        /* Cut short if every byte present is a valid continuation so far. */
        uint32_t cp;
        size_t k = utf8_decode(s + i, len - i, &cp);
        return k == len - i ? i : len;
    }
    return len;
}

/* ---- NFC ---- */

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21,
       TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static const uint32_t *decomposition(uint32_t cp, size_t *len)
{
    size_t lo = 0, hi = uni_decomp_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < uni_decomp[mid][0])
            hi = mid;
        else if (cp > uni_decomp[mid][0])
            lo = mid + 1;
        else {
            *len = uni_decomp[mid][2];
            return uni_decomp_pool + uni_decomp[mid][1];
        }
    }
    return NULL;
}

static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = uni_compose_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *e = uni_compose[mid];
        if (a < e[0] || (a == e[0] && b < e[1]))
            hi = mid;
        else if (a > e[0] || b > e[1])
            lo = mid + 1;
        else
            return e[2];
    }
    return 0;
}

static bool reserve(uint32_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return true;
    size_t nc = *cap ? *cap : 64;
    while (nc < need)
        nc *= 2;
    uint32_t *nb = realloc(*buf, nc * sizeof **buf);
    if (!nb)
        return false;
    *buf = nb;
    *cap = nc;
    return true;
}

size_t nfc_normalize(const uint32_t *in, size_t n, uint32_t **out, size_t *cap)
{
    /* 1. Full canonical decomposition (at most 4 code points per input after recursion in current
     *    Unicode data; grow as needed anyway). */
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = in[i];
        if (!reserve(out, cap, len + 8))
            return (size_t)-1;
        uint32_t *o = *out;
        if (cp >= SBASE && cp < SBASE + SCOUNT) {
            uint32_t s = cp - SBASE;
            o[len++] = LBASE + s / NCOUNT;
            o[len++] = VBASE + (s % NCOUNT) / TCOUNT;
            if (s % TCOUNT)
                o[len++] = TBASE + s % TCOUNT;
            continue;
        }
        size_t dl;
        const uint32_t *d = cp >= 0xC0 ? decomposition(cp, &dl) : NULL;
        if (d) {
            if (!reserve(out, cap, len + dl))
                return (size_t)-1;
            memcpy(*out + len, d, dl * sizeof *d);
            len += dl;
        } else {
            o[len++] = cp;
        }
    }
    uint32_t *o = *out;
    /* 2. Canonical ordering: stable sort of each run of non-starters by combining class. */
    for (size_t i = 1; i < len; i++) {
        int c = uni_combining_class(o[i]);
        if (c == 0)
            continue;
        size_t j = i;
        uint32_t cp = o[i];
        while (j > 0) {
            int pc = uni_combining_class(o[j - 1]);
            if (pc == 0 || pc <= c)
                break;
            o[j] = o[j - 1];
            j--;
        }
        o[j] = cp;
    }
    /* 3. Canonical composition. */
    if (len == 0)
        return 0;
    size_t starter = (size_t)-1, w = 0;
    int last_cc = 0;
    for (size_t i = 0; i < len; i++) {
        uint32_t cp = o[i];
        int cc = uni_combining_class(cp);
        if (starter != (size_t)-1) {
            bool adjacent = w == starter + 1;
            if (adjacent || (last_cc != 0 && last_cc < cc)) {
                uint32_t comp = compose_pair(o[starter], cp);
                if (comp) {
                    o[starter] = comp;
                    continue;
                }
            }
        }
        o[w] = cp;
        if (cc == 0) {
            starter = w;
            last_cc = 0;
        } else {
            last_cc = cc;
        }
        w++;
    }
    return w;
}
