/* Helpers shared by the fuzz targets: turning the fuzzer's bytes into what punie's parsers take. */
#ifndef PUNIE_FUZZ_FUZZ_H
#define PUNIE_FUZZ_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A NUL-terminated copy of data (embedded NULs stay: parsers must cope with a shorter string). */
static inline char *fuzz_strdup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* Splits data at the first occurrence of the separator line "\n----\n" into two NUL-terminated copies
 * (the second is empty when there is no separator). */
static inline void fuzz_split(const uint8_t *data, size_t size, char **a, char **b)
{
    static const char sep[] = "\n----\n";
    const uint8_t *cut = size >= sizeof sep - 1 ? memmem(data, size, sep, sizeof sep - 1) : NULL;
    size_t la = cut ? (size_t)(cut - data) : size;
    *a = fuzz_strdup(data, la);
    *b = cut ? fuzz_strdup(cut + sizeof sep - 1, size - la - (sizeof sep - 1)) : fuzz_strdup(data, 0);
}

/* A private folder for the whole run (files in it are rewritten by each input). */
static inline const char *fuzz_tmpdir(void)
{
    static char dir[64];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/punie-fuzz-XXXXXX");
        if (!mkdtemp(dir))
            abort();
    }
    return dir;
}

/* Writes len bytes to dir/name, aborting on failure (that is the harness failing, not punie). */
static inline void fuzz_write(const char *dir, const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f) != 0)
        abort();
}

#endif
