/* punie verify: re-hash an installed model against the content hashes its files are stored under. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "hub/cache.h"

static void usage(FILE *out)
{
    fprintf(out, "Usage: punie verify [REPO] [--revision REV] [--models-dir DIR]\n\n"
                 "Re-computes the sha256 (weights) or git hash (other files) of every file of a downloaded\n"
                 "model (default: %s) and compares it with the Hub's. Exits non-zero on any problem.\n",
            PUNIE_DEFAULT_REPO);
}

static void report(const char *path, const char *status, void *user)
{
    (void)user;
    printf("  %-10s %s\n", status, path);
}

int cmd_verify(int argc, char **argv)
{
    const char *flag = NULL, *repo = NULL, *rev = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--models-dir") && i + 1 < argc) {
            flag = argv[++i];
        } else if (!strncmp(argv[i], "--models-dir=", 13)) {
            flag = argv[i] + 13;
        } else if (!strcmp(argv[i], "--revision") && i + 1 < argc) {
            rev = argv[++i];
        } else if (argv[i][0] != '-' && !repo) {
            repo = argv[i];
        } else {
            fprintf(stderr, "punie verify: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!repo)
        repo = PUNIE_DEFAULT_REPO;
    if (!repo_id_valid(repo)) {
        fprintf(stderr, "Error: invalid repository id '%s' (expected NAMESPACE/NAME)\n", repo);
        return 2;
    }
    char dir[PUNIE_PATH_MAX], snap[PUNIE_PATH_MAX];
    perr err = {{0}};
    int checked = 0, bad = 0;
    if (models_dir_resolve(flag, dir, sizeof dir, NULL, &err) != 0) {
        fprintf(stderr, "Error: %s\n", err.msg);
        return 1;
    }
    printf("Verifying %s...\n", repo);
    if (cache_verify(dir, repo, rev, report, NULL, &checked, &bad, snap, sizeof snap, &err) != 0) {
        fprintf(stderr, "Error: %s\n", err.msg);
        return 1;
    }
    enum local_state st = LOCAL_MISSING;
    local_model_state(dir, repo, rev, &st, NULL, 0, &err);
    if (bad > 0) {
        fprintf(stderr, "Error: %d of %d files of %s failed verification. Re-download with:\n"
                        "  punie remove-model %s && punie download-model %s\n",
                bad, checked, repo, repo, repo);
        return 1;
    }
    if (st != LOCAL_COMPLETE) {
        fprintf(stderr, "Error: %s is missing files a model needs (partial download?)\n", repo);
        return 1;
    }
    printf("All %d files of %s verified OK (%s)\n", checked, repo, snap);
    return 0;
}
