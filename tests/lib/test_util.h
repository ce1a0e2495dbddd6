/* Helpers shared by the C tests: a non-fatal CHECK that counts checks and failures, main's exit
 * status, and fixture reading through punie's own read_file. Included by relative path; every
 * function is static. */
#ifndef PUNIE_TESTS_TEST_UTIL_H
#define PUNIE_TESTS_TEST_UTIL_H

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "util/err.h"
#include "util/fs.h"

static int failures, checks;

/* CHECK prints every failure unless a test defines CHECK_REPORT_MAX before including this file: where
 * one wrong kernel or logit row fails thousands of checks, the first few tell the story. */
#ifndef CHECK_REPORT_MAX
#define CHECK_REPORT_MAX INT_MAX
#endif

#define CHECK(cond, ...)                                                                                   \
    do {                                                                                                   \
        checks++;                                                                                          \
        if (!(cond) && ++failures <= CHECK_REPORT_MAX) {                                                   \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                          \
            fprintf(stderr, __VA_ARGS__);                                                                  \
            fputc('\n', stderr);                                                                           \
        }                                                                                                  \
    } while (0)

/* main's exit status: 1 after the number of failures on stderr, else 0 after `passed` on stdout. */
static inline int test_result(const char *passed)
{
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("%s\n", passed);
    return 0;
}

/* A whole fixture file, NUL-terminated; NULL (with a message on stderr) when it cannot be read. */
static inline char *test_slurp(const char *path, size_t *len)
{
    char *text;
    perr err;
    if (read_file(path, 512u << 20, &text, len, &err) != 0) {
        fprintf(stderr, "cannot read fixture: %s\n", err.msg);
        return NULL;
    }
    return text;
}

/* A fixture parsed as JSON, or NULL (with a message) when it cannot be read or parsed. */
static inline cJSON *test_load_json(const char *path)
{
    size_t len;
    char *text = test_slurp(path, &len);
    if (!text)
        return NULL;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j)
        fprintf(stderr, "bad fixture JSON: %s\n", path);
    return j;
}

#endif
