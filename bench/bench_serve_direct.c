/* Baseline for bench_serve.py: the server's engine driven directly, without HTTP, on one chat prompt.
 * usage: bench_serve_direct MODEL_DIR THREADS MAX_TOKENS PROMPT
 * Prints "Prompt: N tokens, X tokens-per-sec" and "Generation: N tokens, X tokens-per-sec". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "server/engine.h"
#include "util/clock.h"

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL_DIR THREADS MAX_TOKENS PROMPT\n", argv[0]);
        return 2;
    }
    int max_tokens = atoi(argv[3]);
    engine_options o = {.model_dir = argv[1], .model_name = argv[1], .n_threads = atoi(argv[2]), .n_ctx = 4096,
                        .n_parallel = 1};
    engine *e = NULL;
    perr err = {{0}};
    if (engine_load(&o, &e, &err) != 0) {
        fprintf(stderr, "Error: %s\n", err.msg);
        return 1;
    }
    cJSON *msgs = cJSON_CreateArray();
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "user");
    cJSON_AddStringToObject(m, "content", argv[4]);
    cJSON_AddItemToArray(msgs, m);
    int32_t *ids = NULL;
    size_t n = 0;
    if (engine_chat_prompt(e, msgs, NULL, &ids, &n, &err) != 0) {
        fprintf(stderr, "Error: %s\n", err.msg);
        return 1;
    }
    gen_params p = {.max_tokens = max_tokens};
    sampler_params_init(&p.sampling);
    double t0 = monotonic_s();
    generation *g = engine_begin(e, ids, n, &p, NULL, NULL, &err);
    if (!g) {
        fprintf(stderr, "Error: %s\n", err.msg);
        return 1;
    }
    gen_token tok;
    enum gen_finish why;
    int count = 0;
    double t_first = 0, t_last = 0;
    int rc;
    while ((rc = generation_next(g, &tok, &why, &err)) > 0) {
        if (rc == 2)
            continue; /* a prompt chunk */
        t_last = monotonic_s();
        if (count++ == 0)
            t_first = t_last;
    }
    if (rc < 0) {
        fprintf(stderr, "Error: %s\n", err.msg);
        return 1;
    }
    generation_end(g);
    printf("Prompt: %zu tokens, %.3f tokens-per-sec\n", n, (double)n / (t_first - t0));
    printf("Generation: %d tokens, %.3f tokens-per-sec\n", count, count > 1 ? (count - 1) / (t_last - t_first) : 0.0);
    free(ids);
    cJSON_Delete(msgs);
    engine_free(e);
    return 0;
}
