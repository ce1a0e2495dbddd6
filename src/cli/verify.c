/* punie verify: re-hash an installed model against the content hashes its files are stored under. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/options.h"
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
    cli_model_args args;
    int rc = cli_parse_model_args("verify", argc, argv, CLI_ACCEPT_REPO | CLI_ACCEPT_REVISION, usage, &args);
    if (rc != 0)
        return rc == 1 ? 0 : rc;
    const char *flag = args.models_dir, *repo = args.repo, *rev = args.revision;
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
