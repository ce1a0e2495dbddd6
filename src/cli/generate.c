/* punie generate: one reply to a prompt, streamed to stdout; statistics on stderr like mlx_lm.generate. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "cli/cli.h"
#include "hub/local.h"
#include "model/lookup.h"
#include "model/model.h"
#include "model/sampler.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "util/clock.h"
#include "util/fs.h"

#define PROMPT_FILE_MAX (64u << 20)

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: punie generate [--model M] [--models-dir D] (--prompt TEXT | --prompt-file F) [--system TEXT]\n"
            "                      [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--min-p P]\n"
            "                      [--repetition-penalty R] [--seed S] [--threads N] [--draft N] [--raw]\n\n"
            "  --model M             local (default), local:REPO, or a model folder\n"
            "  --models-dir D        where downloaded models live\n"
            "  --prompt TEXT         the user message ('-' reads stdin)\n"
            "  --prompt-file F       read the user message from a file\n"
            "  --system TEXT         system message (default: the template's own)\n"
            "  --max-tokens N        at most N generated tokens (default 256)\n"
            "  --temperature T       0 = greedy; sampling defaults come from generation_config.json\n"
            "  --top-p P, --top-k K, --min-p P, --repetition-penalty R, --seed S\n"
            "  --threads N           worker threads (default: all cores)\n"
            "  --draft N             prompt lookup: up to N tokens copied from earlier in the text are\n"
            "                        checked per step (0: off; default 8); the output is the same\n"
            "  --raw                 feed the prompt as is, without the chat template\n");
}

static int parse_num(const char *flag, const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double d = v ? strtod(v, &end) : 0;
    if (!v || errno || end == v || *end || !(d >= lo && d <= hi)) {
        fprintf(stderr, "punie generate: %s needs a number between %g and %g\n", flag, lo, hi);
        return -1;
    }
    *out = d;
    return 0;
}

/* Renders the model's chat template for [system?, user] with the generation prompt. */
static int render_chat(const tokenizer *tok, const char *system, const char *user, char **out, perr *err)
{
    const char *src = tokenizer_chat_template(tok);
    if (!src)
        return perr_set(err, "the model has no chat template (use --raw)");
    chat_template *tpl;
    if (chat_template_compile(src, &tpl, err) != 0)
        return perr_wrap(err, "chat template");
    cJSON *msgs = cJSON_CreateArray();
    if (system) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", system);
        cJSON_AddItemToArray(msgs, m);
    }
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "user");
    cJSON_AddStringToObject(m, "content", user);
    cJSON_AddItemToArray(msgs, m);
    cJSON *extra = cJSON_CreateObject();
    if (tokenizer_eos_token(tok))
        cJSON_AddStringToObject(extra, "eos_token", tokenizer_eos_token(tok));
    if (tokenizer_bos_token(tok))
        cJSON_AddStringToObject(extra, "bos_token", tokenizer_bos_token(tok));
    size_t len;
    int rc = chat_template_render(tpl, msgs, NULL, true, extra, out, &len, err);
    cJSON_Delete(msgs);
    cJSON_Delete(extra);
    chat_template_free(tpl);
    return rc;
}

/* Stop ids: the tokenizer's eos, <|im_end|>, <|endoftext|> and generation_config's eos_token_id. */
static int stop_ids(const tokenizer *tok, const char *dir, int32_t *ids, int max)
{
    int n = 0;
    const char *names[] = {tokenizer_eos_token(tok), "<|im_end|>", "<|endoftext|>"};
    for (int i = 0; i < 3 && n < max; i++) {
        int id = names[i] ? tokenizer_token_id(tok, names[i]) : -1;
        if (id >= 0)
            ids[n++] = id;
    }
    char path[4096], *text;
    size_t len;
    if (path_join(path, sizeof path, dir, "generation_config.json", NULL) == 0 && file_exists(path) &&
        read_file(path, 1 << 20, &text, &len, NULL) == 0) {
        cJSON *root = cJSON_ParseWithLength(text, len);
        free(text);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id"), *it;
        if (cJSON_IsNumber(e) && n < max)
            ids[n++] = (int32_t)e->valuedouble;
        else if (cJSON_IsArray(e))
            cJSON_ArrayForEach(it, e) if (cJSON_IsNumber(it) && n < max) ids[n++] = (int32_t)it->valuedouble;
        cJSON_Delete(root);
    }
    return n;
}

static void write_text(const char *s, size_t len)
{
    if (len) {
        fwrite(s, 1, len, stdout);
        fflush(stdout);
    }
}

int cmd_generate(int argc, char **argv)
{
    const char *model_spec = NULL, *models_dir = NULL, *prompt = NULL, *prompt_file = NULL, *system = NULL;
    int max_tokens = 256, threads = 0, draft_max = 8;
    bool raw = false, print_ids = false;
    sampler_params cli;
    sampler_params_init(&cli);
    bool set_temp = false, set_top_p = false, set_top_k = false, set_min_p = false, set_rep = false;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double d;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--raw") == 0) {
            raw = true;
            continue;
        } else if (strcmp(a, "--print-ids") == 0) { /* for tests: the generated ids on stderr */
            print_ids = true;
            continue;
        }
        if (!v || strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "punie generate: %s\n\n", v ? "unexpected argument" : "missing value");
            usage(stderr);
            return 2;
        }
        i++;
        if (strcmp(a, "--model") == 0) {
            model_spec = v;
        } else if (strcmp(a, "--models-dir") == 0) {
            models_dir = v;
        } else if (strcmp(a, "--prompt") == 0 || strcmp(a, "-p") == 0) {
            prompt = v;
        } else if (strcmp(a, "--prompt-file") == 0) {
            prompt_file = v;
        } else if (strcmp(a, "--system") == 0) {
            system = v;
        } else if (strcmp(a, "--max-tokens") == 0) {
            if (parse_num(a, v, 0, 1e7, &d))
                return 2;
            max_tokens = (int)d;
        } else if (strcmp(a, "--threads") == 0) {
            if (parse_num(a, v, 0, 4096, &d))
                return 2;
            threads = (int)d;
        } else if (strcmp(a, "--draft") == 0) {
            if (parse_num(a, v, 0, LOOKUP_DRAFT_MAX, &d))
                return 2;
            draft_max = (int)d;
        } else if (strcmp(a, "--temperature") == 0 || strcmp(a, "--temp") == 0) {
            if (parse_num(a, v, 0, 100, &d))
                return 2;
            cli.temperature = (float)d;
            set_temp = true;
        } else if (strcmp(a, "--top-p") == 0) {
            if (parse_num(a, v, 0, 1, &d))
                return 2;
            cli.top_p = (float)d;
            set_top_p = true;
        } else if (strcmp(a, "--top-k") == 0) {
            if (parse_num(a, v, 0, 1e9, &d))
                return 2;
            cli.top_k = (int)d;
            set_top_k = true;
        } else if (strcmp(a, "--min-p") == 0) {
            if (parse_num(a, v, 0, 1, &d))
                return 2;
            cli.min_p = (float)d;
            set_min_p = true;
        } else if (strcmp(a, "--repetition-penalty") == 0) {
            if (parse_num(a, v, 0, 100, &d))
                return 2;
            cli.repetition_penalty = (float)d;
            set_rep = true;
        } else if (strcmp(a, "--seed") == 0) {
            if (parse_num(a, v, 0, 1.8e19, &d))
                return 2;
            cli.seed = strtoull(v, NULL, 10);
            cli.has_seed = true;
        } else {
            fprintf(stderr, "punie generate: unknown option %s\n\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!!prompt == !!prompt_file) {
        fprintf(stderr, "punie generate: give exactly one of --prompt or --prompt-file\n\n");
        usage(stderr);
        return 2;
    }

    perr err = {{0}};
    resolved_model rm;
    if (model_resolve(model_spec, models_dir, &rm, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }

    char *user_text = NULL;
    size_t user_len = 0;
    if (prompt_file || strcmp(prompt, "-") == 0) {
        const char *path = prompt_file ? prompt_file : "/dev/stdin";
        if (prompt_file) {
            if (read_file(path, PROMPT_FILE_MAX, &user_text, &user_len, &err) != 0) {
                fprintf(stderr, "punie generate: %s\n", err.msg);
                return 1;
            }
        } else {
            size_t cap = 4096;
            user_text = malloc(cap);
            size_t r;
            while (user_text && (r = fread(user_text + user_len, 1, cap - user_len - 1, stdin)) > 0) {
                user_len += r;
                if (cap - user_len < 2 && cap < PROMPT_FILE_MAX) {
                    char *n = realloc(user_text, cap * 2);
                    if (!n)
                        break;
                    user_text = n;
                    cap *= 2;
                }
            }
            if (user_text)
                user_text[user_len] = '\0';
        }
    } else {
        user_text = strdup(prompt);
        user_len = strlen(prompt);
    }
    if (!user_text) {
        fprintf(stderr, "punie generate: out of memory\n");
        return 1;
    }

    int rc = 1;
    tokenizer *tok = NULL;
    model *m = NULL;
    model_ctx *ctx = NULL;
    sampler *smp = NULL;
    char *prompt_text = NULL;
    int32_t *ids = NULL, *hist = NULL;
    float *logits = NULL;
    detokenizer *detok = NULL;

    if (tokenizer_load(rm.dir, &tok, &err) != 0) {
        fprintf(stderr, "punie generate: %s\n", err.msg);
        goto out;
    }
    if (raw) {
        prompt_text = user_text;
        user_text = NULL;
    } else if (render_chat(tok, system, user_text, &prompt_text, &err) != 0) {
        fprintf(stderr, "punie generate: %s\n", err.msg);
        goto out;
    }
    size_t n_prompt = 0;
    if (tokenizer_encode(tok, prompt_text, strlen(prompt_text), &ids, &n_prompt, &err) != 0) {
        fprintf(stderr, "punie generate: %s\n", err.msg);
        goto out;
    }
    if (n_prompt == 0) {
        fprintf(stderr, "punie generate: the prompt is empty\n");
        goto out;
    }

    double t_load = monotonic_s();
    if (model_load(rm.dir, threads, &m, &err) != 0) {
        fprintf(stderr, "punie generate: %s: %s\n", rm.dir, err.msg);
        goto out;
    }
    t_load = monotonic_s() - t_load;
    const model_config *cfg = model_get_config(m);
    if (n_prompt >= (size_t)cfg->max_position_embeddings) {
        fprintf(stderr, "punie generate: the prompt has %zu tokens; the model takes at most %d\n", n_prompt,
                cfg->max_position_embeddings);
        goto out;
    }
    long n_ctx = (long)n_prompt + max_tokens;
    if (n_ctx > cfg->max_position_embeddings)
        n_ctx = cfg->max_position_embeddings;
    if (model_ctx_new(m, (int)n_ctx, &ctx, &err) != 0) {
        fprintf(stderr, "punie generate: %s\n", err.msg);
        goto out;
    }

    /* sampling: neutral, then generation_config.json, then the command line */
    sampler_params sp;
    sampler_params_init(&sp);
    sampler_params_from_generation_config(&sp, rm.dir);
    if (set_temp)
        sp.temperature = cli.temperature;
    if (set_top_p)
        sp.top_p = cli.top_p;
    if (set_top_k)
        sp.top_k = cli.top_k;
    if (set_min_p)
        sp.min_p = cli.min_p;
    if (set_rep)
        sp.repetition_penalty = cli.repetition_penalty;
    sp.seed = cli.seed;
    sp.has_seed = cli.has_seed;
    int n_valid = tokenizer_size(tok);
    smp = sampler_new(&sp, n_valid < cfg->vocab_size ? n_valid : cfg->vocab_size);
    int32_t stops[8];
    int n_stops = stop_ids(tok, rm.dir, stops, 8);

    /* one row of logits per token of a step: the next token and its draft */
    const int V = cfg->vocab_size;
    logits = malloc((size_t)(draft_max + 1) * V * sizeof *logits);
    hist = malloc(((size_t)n_ctx + 1) * sizeof *hist);
    detok = detokenizer_new(tok, true);
    if (!smp || !logits || !hist || !detok) {
        fprintf(stderr, "punie generate: out of memory\n");
        goto out;
    }
    memcpy(hist, ids, n_prompt * sizeof *hist);
    int n_hist = (int)n_prompt;

    double t0 = monotonic_s();
    if (model_ctx_eval(ctx, ids, (int)n_prompt, logits, NULL, &err) != 0) {
        fprintf(stderr, "punie generate: %s\n", err.msg);
        goto out;
    }
    double t_prompt = monotonic_s() - t0;

    int n_gen = 0;
    double t1 = monotonic_s();
    if (print_ids)
        fprintf(stderr, "ids:");
    /* The step just evaluated put the logits of each of its tokens in rows 0..k (model/lookup.h). */
    lookup_step ls;
    lookup_step_init(&ls, draft_max);
    while (n_gen < max_tokens) {
        int id = sampler_sample(smp, logits + (size_t)ls.row * V, V, hist, n_hist, NULL);
        n_gen++;
        bool stop = false;
        for (int i = 0; i < n_stops; i++)
            stop |= id == stops[i];
        if (print_ids)
            fprintf(stderr, " %d", id);
        if (stop)
            break;
        hist[n_hist++] = id;
        char *piece = NULL;
        size_t plen = 0;
        if (detokenizer_push(detok, id, &piece, &plen) == 0)
            write_text(piece, plen);
        free(piece);
        if (n_gen >= max_tokens)
            break;
        if (lookup_step_keep(&ls, id))
            continue;
        const int cut = lookup_step_cut(&ls);
        if (cut >= 0)
            model_ctx_truncate(ctx, cut);
        if (model_ctx_pos(ctx) >= model_ctx_n_ctx(ctx))
            break;
        /* next step: id and a draft that fits the context and the tokens still wanted */
        const int k = lookup_step_plan(&ls, id, model_ctx_pos(ctx), hist, n_hist,
                                       model_ctx_n_ctx(ctx) - model_ctx_pos(ctx) - 1, max_tokens - n_gen - 1);
        const double t_step = monotonic_s();
        if (model_ctx_eval(ctx, ls.tokens, k + 1, k ? NULL : logits, k ? logits : NULL, &err) != 0) {
            fprintf(stderr, "\npunie generate: %s\n", err.msg);
            goto out;
        }
        lookup_step_ran(&ls, monotonic_s() - t_step);
    }
    double t_gen = monotonic_s() - t1;
    char *piece = NULL;
    size_t plen = 0;
    if (detokenizer_flush(detok, &piece, &plen) == 0)
        write_text(piece, plen);
    free(piece);
    printf("\n");
    fflush(stdout);
    if (print_ids)
        fprintf(stderr, "\n");

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(stderr, "==========\n");
    fprintf(stderr, "Prompt: %zu tokens, %.3f tokens-per-sec\n", n_prompt, t_prompt > 0 ? n_prompt / t_prompt : 0.0);
    fprintf(stderr, "Generation: %d tokens, %.3f tokens-per-sec\n", n_gen, t_gen > 0 ? n_gen / t_gen : 0.0);
    if (ls.drafted > 0)
        fprintf(stderr, "Lookup: %d of %d draft tokens accepted\n", ls.accepted, ls.drafted);
    fprintf(stderr, "Peak memory: %.3f GB\n", ru.ru_maxrss / 1e6);
    fprintf(stderr, "Load: %.3f s\n", t_load);
    rc = 0;
out:
    detokenizer_free(detok);
    free(logits);
    free(hist);
    free(ids);
    free(prompt_text);
    free(user_text);
    sampler_free(smp);
    model_ctx_free(ctx);
    model_free(m);
    tokenizer_free(tok);
    return rc;
}
