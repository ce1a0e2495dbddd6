/* Hand-written matcher for the Qwen2 pre-tokenizer regex. At each position the regex alternatives are
 * tried in order and the first that matches wins (Oniguruma semantics); each function below mirrors
 * one alternative. */
#include "tokenizer/pretokenize.h"

#include "tokenizer/unicode.h"

const char qwen2_split_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Simple case folding onto ASCII lower case for the contraction letters; U+017F (long s) folds to s. */
static uint32_t fold(uint32_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    if (c == 0x17F)
        return 's';
    return c;
}

size_t pretok_piece_end(const uint32_t *cp, const unsigned char *cls, size_t n, size_t i)
{
    unsigned c = cls[i];

    /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
    if (cp[i] == '\'' && i + 1 < n) {
        uint32_t a = fold(cp[i + 1]);
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return i + 2;
        if (i + 2 < n) {
            uint32_t b = fold(cp[i + 2]);
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
                return i + 3;
        }
    }

    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (c & UNI_LETTER) {
        size_t j = i + 1;
        while (j < n && (cls[j] & UNI_LETTER))
            j++;
        return j;
    }
    if (!(c & (UNI_NEWLINE | UNI_NUMBER)) && i + 1 < n && (cls[i + 1] & UNI_LETTER)) {
        size_t j = i + 2;
        while (j < n && (cls[j] & UNI_LETTER))
            j++;
        return j;
    }

    /* \p{N} */
    if (c & UNI_NUMBER)
        return i + 1;

    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
    {
        const unsigned other = UNI_SPACE | UNI_LETTER | UNI_NUMBER;
        size_t j = i;
        if (cp[j] == ' ' && j + 1 < n && !(cls[j + 1] & other))
            j++;
        if (!(cls[j] & other)) {
            while (j < n && !(cls[j] & other))
                j++;
            while (j < n && (cp[j] == '\r' || cp[j] == '\n'))
                j++;
            return j;
        }
    }

    /* Here cp[i] is white space. \s*[\r\n]+ ends after the last \r or \n of the run. */
    size_t end = i, last_nl = (size_t)-1;
    while (end < n && (cls[end] & UNI_SPACE)) {
        if (cls[end] & UNI_NEWLINE)
            last_nl = end;
        end++;
    }
    if (last_nl != (size_t)-1)
        return last_nl + 1;
    /* \s+(?!\S): leave the last white space to prefix the next word, unless at the end. */
    if (end - i > 1 && end < n)
        return end - 1;
    /* \s+ */
    return end;
}
