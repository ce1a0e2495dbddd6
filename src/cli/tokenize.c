/* punie tokenize: text on stdin -> token ids on stdout (or ids -> text with --decode). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "hub/local.h"
#include "tokenizer/tokenizer.h"
#include "util/fs.h"

#define MAX_INPUT (1u << 30)

static void usage(FILE *out)
{
    fprintf(out, "Usage: punie tokenize [--model M] [--models-dir DIR] [--decode]\n\n"
                 "Reads text on stdin and prints its token ids, space-separated on one line.\n"
                 "With --decode, reads token ids (separated by spaces, commas or new lines) and prints the text.\n\n"
                 "  --model M         local (default), local:REPO, or a path to a model folder\n"
                 "  --models-dir DIR  where downloaded models live\n"
                 "  --decode          turn ids back into text\n");
}

static int read_stdin(char **out, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf)
        return -1;
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_INPUT) {
                free(buf);
                errno = EFBIG;
                return -1;
            }
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                return -1;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, stdin);
        n += r;
        if (r == 0) {
            if (ferror(stdin)) {
                free(buf);
                return -1;
            }
            break;
        }
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

static int parse_ids(const char *text, int32_t **ids, size_t *n, int max_id)
{
    size_t cap = 64, k = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v)
        return -1;
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ',')
            p++;
        if (!*p)
            break;
        char *end;
        errno = 0;
        long id = (*p >= '0' && *p <= '9') ? strtol(p, &end, 10) : -1;
        if (id < 0 || errno || id >= max_id || (*end && !strchr(" \t\r\n,", *end))) {
            size_t w = strcspn(p, " \t\r\n,");
            fprintf(stderr, "Error: '%.*s' is not a token id (0..%d)\n", (int)(w > 40 ? 40 : w), p, max_id - 1);
            free(v);
            return -1;
        }
        if (k == cap) {
            cap *= 2;
            int32_t *nv = realloc(v, cap * sizeof *nv);
            if (!nv) {
                free(v);
                return -1;
            }
            v = nv;
        }
        v[k++] = (int32_t)id;
        p = end;
    }
    *ids = v;
    *n = k;
    return 0;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *models_dir = NULL;
    bool decode = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--decode") == 0) {
            decode = true;
        } else if ((strcmp(a, "--model") == 0 || strcmp(a, "--models-dir") == 0) && i + 1 < argc) {
            if (strcmp(a, "--model") == 0)
                model = argv[++i];
            else
                models_dir = argv[++i];
        } else if (strncmp(a, "--model=", 8) == 0) {
            model = a + 8;
        } else if (strncmp(a, "--models-dir=", 13) == 0) {
            models_dir = a + 13;
        } else {
            fprintf(stderr, "punie tokenize: unknown or incomplete option '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
    }

    perr err = {0};
    resolved_model rm;
    char tj[PUNIE_PATH_MAX + 32];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", model ? model : "");
    if (model && dir_exists(model) && file_exists(tj)) {
        /* Only the tokenizer is needed: a folder with tokenizer.json is enough. */
        snprintf(rm.dir, sizeof rm.dir, "%s", model);
    } else if (model_resolve(model, models_dir, &rm, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    tokenizer *t;
    if (tokenizer_load(rm.dir, &t, &err) != 0) {
        fprintf(stderr, "Error: %s\n", err.msg);
        return 1;
    }
    char *text;
    size_t len;
    if (read_stdin(&text, &len) != 0) {
        fprintf(stderr, "Error: cannot read stdin: %s\n", strerror(errno));
        tokenizer_free(t);
        return 1;
    }
    int rc = 1;
    if (decode) {
        int32_t *ids;
        size_t n;
        if (parse_ids(text, &ids, &n, tokenizer_size(t)) == 0) {
            char *out;
            size_t olen;
            if (tokenizer_decode(t, ids, n, false, &out, &olen, &err) == 0) {
                fwrite(out, 1, olen, stdout);
                free(out);
                rc = 0;
            } else {
                fprintf(stderr, "Error: %s\n", err.msg);
            }
            free(ids);
        }
    } else {
        int32_t *ids;
        size_t n;
        if (tokenizer_encode(t, text, len, &ids, &n, &err) == 0) {
            for (size_t i = 0; i < n; i++)
                printf(i ? " %d" : "%d", ids[i]);
            putchar('\n');
            free(ids);
            rc = 0;
        } else {
            fprintf(stderr, "Error: %s\n", err.msg);
        }
    }
    free(text);
    tokenizer_free(t);
    if (fflush(stdout) != 0 && rc == 0) {
        fprintf(stderr, "Error: cannot write output: %s\n", strerror(errno));
        rc = 1;
    }
    return rc;
}
