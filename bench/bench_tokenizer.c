/* Tokenizer speed: load time of tokenizer.json, encode and decode throughput on one core.
 *
 *   bench_tokenizer TOKENIZER_DIR FILE...
 *   e.g. ./build/bench_tokenizer ../shared/fixtures/qwen2.5-tokenizer \
 *            $(find src -name '*.[ch]' ! -name unicode_tables.c | sort) ../shared/spec/engine.md
 *
 * The files are concatenated and repeated to about 10 MB. Baselines measured in the same run:
 * load vs cJSON_Parse of the same file (a tree only, no tables), and encode vs encode without the
 * per-piece cache. Times are CPU time of this thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"
#include "util/fs.h"

#define TARGET_BYTES (10u << 20)

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR FILE...\n", argv[0]);
        return 2;
    }
    perr err;
    const char *dir = argv[1];
    char json_path[4096];
    snprintf(json_path, sizeof json_path, "%s/tokenizer.json", dir);

    /* load */
    enum { RUNS = 5 };
    double t_load[RUNS], t_cjson[RUNS];
    tokenizer *t = NULL;
    for (int i = 0; i < RUNS; i++) {
        if (t)
            tokenizer_free(t);
        double t0 = cpu_now();
        if (tokenizer_load(dir, &t, &err) != 0) {
            fprintf(stderr, "load: %s\n", err.msg);
            return 1;
        }
        t_load[i] = cpu_now() - t0;
        t0 = cpu_now();
        char *text;
        size_t len;
        if (read_file(json_path, 256u << 20, &text, &len, &err) != 0)
            return 1;
        cJSON *j = cJSON_ParseWithLength(text, len);
        cJSON_Delete(j);
        free(text);
        t_cjson[i] = cpu_now() - t0;
    }
    double load = median(t_load, RUNS), cjson = median(t_cjson, RUNS);
    printf("load tokenizer.json:     %7.1f ms  (cJSON_Parse+free of the same file: %.1f ms, ratio %.2fx)\n",
           load * 1e3, cjson * 1e3, cjson / load);

    /* corpus */
    size_t cap = TARGET_BYTES + (1u << 20), len = 0;
    char *corpus = malloc(cap);
    size_t one_len = 0;
    for (int i = 2; i < argc; i++) {
        char *text;
        size_t n;
        if (read_file(argv[i], 64u << 20, &text, &n, &err) != 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        if (len + n > cap) {
            free(text);
            break;
        }
        memcpy(corpus + len, text, n);
        len += n;
        free(text);
    }
    one_len = len;
    if (one_len == 0) {
        fprintf(stderr, "empty corpus\n");
        return 1;
    }
    while (len + one_len <= TARGET_BYTES) {
        memcpy(corpus + len, corpus, one_len);
        len += one_len;
    }
    double mb = (double)len / (1 << 20);
    printf("corpus: %zu bytes of source (%.1f MB, %zu distinct bytes repeated)\n", len, mb, one_len);

    int32_t *ids;
    size_t n_ids;
    double t0 = cpu_now();
    if (tokenizer_encode(t, corpus, len, &ids, &n_ids, &err) != 0) {
        fprintf(stderr, "encode: %s\n", err.msg);
        return 1;
    }
    double enc = cpu_now() - t0;

    /* baseline: no cache, on one copy of the corpus (scaled) */
    tokenizer_cache_enabled = false;
    int32_t *ids2;
    size_t n2;
    t0 = cpu_now();
    if (tokenizer_encode(t, corpus, one_len, &ids2, &n2, &err) != 0)
        return 1;
    double enc_nocache = (cpu_now() - t0) * ((double)len / (double)one_len);
    tokenizer_cache_enabled = true;
    free(ids2);

    printf("encode:                  %7.1f MB/s  (%zu ids, %.2f bytes/id; without piece cache %.1f MB/s, ratio %.2fx)\n",
           mb / enc, n_ids, (double)len / (double)n_ids, mb / enc_nocache, enc_nocache / enc);

    char *text;
    size_t tlen;
    t0 = cpu_now();
    if (tokenizer_decode(t, ids, n_ids, false, &text, &tlen, &err) != 0) {
        fprintf(stderr, "decode: %s\n", err.msg);
        return 1;
    }
    double dec = cpu_now() - t0;
    printf("decode:                  %7.1f MB/s  (round trip %s)\n", mb / dec,
           tlen == len && memcmp(text, corpus, len) == 0 ? "exact" : "DIFFERS (input not NFC?)");

    detokenizer *d = detokenizer_new(t, false);
    size_t streamed = 0;
    t0 = cpu_now();
    for (size_t i = 0; i < n_ids; i++) {
        char *out;
        size_t olen;
        if (detokenizer_push(d, ids[i], &out, &olen) != 0)
            return 1;
        streamed += olen;
        free(out);
    }
    double st = cpu_now() - t0;
    printf("streaming decode:        %7.1f MB/s  (%.0f ns/token)\n", (double)streamed / (1 << 20) / st,
           st * 1e9 / (double)n_ids);
    detokenizer_free(d);
    free(text);
    free(ids);
    free(corpus);
    tokenizer_free(t);
    return 0;
}
