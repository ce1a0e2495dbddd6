/* punie remove-model: delete a downloaded model (or one revision of it). */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "hub/cache.h"
#include "util/progress.h"

static void usage(FILE *out)
{
    fprintf(out, "Usage: punie remove-model REPO [--revision REV] [--models-dir DIR]\n\n"
                 "Deletes a downloaded model. With --revision only that revision's snapshot goes; files that\n"
                 "another snapshot of the model still uses are kept.\n");
}

int cmd_remove_model(int argc, char **argv)
{
    cli_model_args args;
    int rc = cli_parse_model_args("remove-model", argc, argv, CLI_ACCEPT_REPO | CLI_ACCEPT_REVISION, usage, &args);
    if (rc != 0)
        return rc == 1 ? 0 : rc;
    const char *flag = args.models_dir, *repo = args.repo, *rev = args.revision;
    if (!repo) {
        fprintf(stderr, "punie remove-model: which model? Give its repository id (see 'punie models').\n");
        usage(stderr);
        return 2;
    }
    if (!repo_id_valid(repo)) {
        fprintf(stderr, "Error: invalid repository id '%s' (expected NAMESPACE/NAME)\n", repo);
        return 2;
    }
    char dir[PUNIE_PATH_MAX];
    perr err = {{0}};
    long long freed = 0;
    if (models_dir_resolve(flag, dir, sizeof dir, NULL, &err) != 0 ||
        cache_remove(dir, repo, rev, &freed, &err) != 0) {
        fprintf(stderr, "Error: %s\n", err.msg);
        return 1;
    }
    char size[32];
    if (rev)
        printf("Removed revision %s of %s (freed %s)\n", rev, repo, format_bytes(freed, size, sizeof size));
    else
        printf("Removed %s (freed %s)\n", repo, format_bytes(freed, size, sizeof size));
    return 0;
}
