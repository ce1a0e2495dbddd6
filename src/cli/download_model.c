/* punie download-model: fetch a model repository from the Hugging Face Hub into the models directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "hub/download.h"
#include "hub/local.h"

static const struct {
    const char *repo, *size, *desc;
} catalog[] = {
    {"mlx-community/Qwen2.5-Coder-7B-Instruct-4bit", "~4GB", "Default (best balance)"},
    {"mlx-community/Qwen2.5-Coder-3B-Instruct-4bit", "~2GB", "Faster, simpler tasks"},
    {"mlx-community/Qwen2.5-Coder-14B-Instruct-4bit", "~8GB", "Highest quality"},
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: punie download-model [REPO] [OPTIONS]\n"
            "       punie download-model --list\n\n"
            "Downloads a model from the Hugging Face Hub (default: %s) into the models directory,\n"
            "using the Hugging Face cache layout. Every file is verified against its sha256 / git hash;\n"
            "an interrupted download continues where it stopped when the command is run again.\n\n"
            "Options:\n"
            "  --models-dir DIR   where models live (default: $PUNIE_MODELS_DIR, else\n"
            "                     $XDG_CACHE_HOME/punie/models, else ~/.cache/punie/models)\n"
            "  --revision REV     branch, tag or commit to download (default: main)\n"
            "  --jobs N           at most N parallel connections (default: 8); a big file gets extra\n"
            "                     ones while they add speed\n"
            "  --include PAT      only fetch files matching PAT (fnmatch; repeatable; replaces the default\n"
            "                     selection of config, tokenizer, chat template and weight files)\n"
            "  --exclude PAT      skip files matching PAT (repeatable)\n"
            "  --quiet            no progress output\n"
            "  --list             show the recommended models and which are downloaded\n"
            "  -h, --help         show this help\n\n"
            "Environment: HF_ENDPOINT, HF_TOKEN (or $HF_HOME/token), HF_HUB_OFFLINE,\n"
            "HF_HUB_DISABLE_PROGRESS_BARS, SSL_CERT_FILE / SSL_CERT_DIR, HTTPS_PROXY / NO_PROXY.\n",
            PUNIE_DEFAULT_REPO);
}

static int list_catalog(const char *models_dir_flag)
{
    char dir[PUNIE_PATH_MAX];
    perr err = {{0}};
    bool have_dir = models_dir_resolve(models_dir_flag, dir, sizeof dir, NULL, &err) == 0;
    printf("Available models:\n\n");
    printf("%-48s%-8s%-24s%s\n", "Name", "Size", "Description", "Downloaded");
    printf("──────────────────────────────────────────────────────────────────────\n");
    for (size_t i = 0; i < sizeof catalog / sizeof *catalog; i++) {
        enum local_state st = LOCAL_MISSING;
        if (have_dir)
            local_model_state(dir, catalog[i].repo, NULL, &st, NULL, 0, &err);
        const char *mark = st == LOCAL_COMPLETE ? "yes" : st == LOCAL_PARTIAL ? "partial" : "no";
        printf("%-47s%-8s%-25s%s\n", catalog[i].repo, catalog[i].size, catalog[i].desc, mark);
    }
    printf("\nDownload with: punie download-model <model-name>\n");
    return 0;
}

int cmd_download_model(int argc, char **argv)
{
    const char *repo = NULL, *models_dir_flag = NULL, *revision = NULL;
    int jobs = 8;
    bool quiet = false, list = false, bad = false;
    const char **inc = calloc((size_t)argc + 1, sizeof *inc), **exc = calloc((size_t)argc + 1, sizeof *exc);
    int ninc = 0, nexc = 0;
    if (!inc || !exc) {
        fprintf(stderr, "punie download-model: out of memory\n");
        return 1;
    }
    for (int i = 1; i < argc && !bad; i++) {
        const char *v;
        if (cli_is_help(argv[i])) {
            usage(stdout);
            free(inc);
            free(exc);
            return 0;
        } else if (!strcmp(argv[i], "--list")) {
            list = true;
        } else if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q")) {
            quiet = true;
        } else if ((v = cli_opt_value("download-model", argc, argv, &i, "--models-dir", &bad))) {
            models_dir_flag = v;
        } else if ((v = cli_opt_value("download-model", argc, argv, &i, "--revision", &bad))) {
            revision = v;
        } else if ((v = cli_opt_value("download-model", argc, argv, &i, "--include", &bad))) {
            inc[ninc++] = v;
        } else if ((v = cli_opt_value("download-model", argc, argv, &i, "--exclude", &bad))) {
            exc[nexc++] = v;
        } else if ((v = cli_opt_value("download-model", argc, argv, &i, "--jobs", &bad))) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > 64) {
                fprintf(stderr, "punie download-model: --jobs must be a number from 1 to 64\n");
                bad = true;
            }
            jobs = (int)n;
        } else if (!bad && argv[i][0] == '-') {
            fprintf(stderr, "punie download-model: unknown option '%s'\n", argv[i]);
            bad = true;
        } else if (!bad && !repo) {
            repo = argv[i];
        } else if (!bad) {
            fprintf(stderr, "punie download-model: unexpected argument '%s'\n", argv[i]);
            bad = true;
        }
    }
    if (bad) {
        fprintf(stderr, "Run 'punie download-model --help' for usage.\n");
        free(inc);
        free(exc);
        return 2;
    }
    if (list) {
        free(inc);
        free(exc);
        return list_catalog(models_dir_flag);
    }
    if (!repo)
        repo = PUNIE_DEFAULT_REPO;
    if (!repo_id_valid(repo)) {
        fprintf(stderr, "Error: invalid repository id '%s' (expected NAMESPACE/NAME, e.g. %s)\n", repo,
                PUNIE_DEFAULT_REPO);
        free(inc);
        free(exc);
        return 2;
    }
    char models_dir[PUNIE_PATH_MAX], folder[512];
    bool is_default = true;
    perr err = {{0}};
    if (models_dir_resolve(models_dir_flag, models_dir, sizeof models_dir, &is_default, &err) != 0 ||
        repo_folder_name(repo, folder, sizeof folder, &err) != 0) {
        fprintf(stderr, "Error: %s\n", err.msg);
        free(inc);
        free(exc);
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    printf("Downloading %s...\n", repo);
    printf("Target directory: %s/%s\n", models_dir, folder);
    fflush(stdout);

    download_opts o = {.repo = repo, .revision = revision, .models_dir = models_dir, .jobs = jobs, .quiet = quiet,
                       .include = inc, .n_include = ninc, .exclude = exc, .n_exclude = nexc};
    download_result res;
    int rc = hub_download(&o, &res, &err);
    free(inc);
    free(exc);
    curl_global_cleanup();
    if (rc != 0) {
        fprintf(stderr, "Error downloading model: %s\n", err.msg);
        return 1;
    }
    if (res.hub_unreachable)
        fprintf(stderr, "Warning: the hub could not be reached; using the complete copy already downloaded.\n");
    else if (res.from_cache_offline)
        printf("Offline mode: using the copy already in the models directory.\n");
    else if (res.files_fetched == 0)
        printf("All %d files were already downloaded and verified.\n", res.files_total);
    printf("Model downloaded successfully to %s\n", res.snapshot_dir);
    char dir_hint[PUNIE_PATH_MAX + 32] = "";
    if (!is_default)
        snprintf(dir_hint, sizeof dir_hint, " --models-dir %s", models_dir);
    if (strcmp(repo, PUNIE_DEFAULT_REPO) == 0)
        printf("\nUse it with:\n  punie serve --model local%s\n", dir_hint);
    else
        printf("\nUse it with:\n  punie serve --model local:%s%s\n", repo, dir_hint);
    if (revision && strcmp(revision, "main") != 0)
        printf("(revision %s; punie serve uses the 'main' revision)\n", revision);
    return 0;
}
