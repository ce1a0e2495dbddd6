/* Helpers shared by the model tests: generating models with the gen_model tool, copying folders and
 * rewriting safetensors headers. */
#ifndef PUNIE_TESTS_MODEL_TEST_UTIL_H
#define PUNIE_TESTS_MODEL_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "util/err.h"
#include "util/fs.h"

#include "../lib/test_util.h"


/* Runs gen_model (path in $GEN_MODEL) writing into dir (emptied first) with extra flags. */
static inline int gen_model(const char *dir, const char *flags)
{
    const char *bin = getenv("GEN_MODEL");
    if (!bin) {
        fprintf(stderr, "GEN_MODEL is not set\n");
        exit(1);
    }
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && '%s' --out '%s' %s", dir, bin, dir, flags);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "command failed: %s\n", cmd);
    return rc;
}

static inline char *slurp(const char *path, size_t *len)
{
    char *data = NULL;
    perr err;
    if (read_file(path, 1u << 30, &data, len, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    return data;
}

static inline void spit(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

/* Parses a safetensors header (caller frees with cJSON_Delete); *data_off = start of the data section. */
static inline cJSON *st_header(const char *data, size_t len, size_t *data_off)
{
    unsigned long long n = 0;
    for (int i = 0; i < 8; i++)
        n |= (unsigned long long)(unsigned char)data[i] << (8 * i);
    *data_off = 8 + (size_t)n;
    return cJSON_ParseWithLength(data + 8, (size_t)n);
}

/* Rewrites path with a new header and the original data section. */
static inline void st_rewrite(const char *path, const cJSON *hdr)
{
    size_t len, off;
    char *data = slurp(path, &len);
    cJSON *old = st_header(data, len, &off);
    cJSON_Delete(old);
    char *text = cJSON_PrintUnformatted(hdr);
    size_t hl = strlen(text);
    char *out = malloc(8 + hl + (len - off));
    for (int i = 0; i < 8; i++)
        out[i] = (char)((unsigned long long)hl >> (8 * i));
    memcpy(out + 8, text, hl);
    memcpy(out + 8 + hl, data + off, len - off);
    spit(path, out, 8 + hl + (len - off));
    free(out);
    free(text);
    free(data);
}

#endif
