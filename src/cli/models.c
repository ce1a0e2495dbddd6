/* punie models: what is in the models directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "hub/cache.h"
#include "util/progress.h"

static void usage(FILE *out)
{
    fprintf(out, "Usage: punie models [--models-dir DIR]\n\n"
                 "Lists the downloaded models: repository, revision and commit, size on disk, and whether the\n"
                 "download is complete (only complete models can be served).\n");
}

int cmd_models(int argc, char **argv)
{
    cli_model_args args;
    int rc = cli_parse_model_args("models", argc, argv, 0, usage, &args);
    if (rc != 0)
        return rc == 1 ? 0 : rc;
    const char *flag = args.models_dir;
    char dir[PUNIE_PATH_MAX];
    perr err = {{0}};
    if (models_dir_resolve(flag, dir, sizeof dir, NULL, &err) != 0) {
        fprintf(stderr, "Error: %s\n", err.msg);
        return 1;
    }
    cached_model *models = NULL;
    int n = 0;
    if (cache_scan(dir, &models, &n, &err) != 0) {
        fprintf(stderr, "Error: %s\n", err.msg);
        return 1;
    }
    printf("Models in %s:\n\n", dir);
    if (n == 0) {
        printf("  (none)\n\nDownload one with: punie download-model\n");
        free(models);
        return 0;
    }
    printf("%-47s %-12s %-12s %10s  %s\n", "Repository", "Revision", "Commit", "Size", "Status");
    for (int i = 0; i < n; i++) {
        cached_model *m = &models[i];
        char size[32];
        format_bytes(m->size_on_disk, size, sizeof size);
        if (m->nrevs == 0)
            printf("%-47s %-12s %-12s %10s  %s\n", m->repo, "-", "-", size, "partial");
        for (int r = 0; r < m->nrevs; r++) {
            cached_rev *v = &m->revs[r];
            const char *st = v->state == LOCAL_COMPLETE ? "complete" : "partial";
            printf("%-47s %-12s %-12.12s %10s  %s\n", r == 0 ? m->repo : "", v->rev[0] ? v->rev : "(no ref)",
                   v->commit, r == 0 ? size : "", st);
        }
        if (m->has_incomplete)
            printf("%-47s (an interrupted download can be resumed with: punie download-model %s)\n", "", m->repo);
    }
    free(models);
    return 0;
}
