#include "cli/options.h"

#include <stdio.h>
#include <string.h>

const char *cli_opt_value(const char *cmd, int argc, char **argv, int *i, const char *name, bool *bad)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        fprintf(stderr, "punie %s: %s needs a value\n", cmd, name);
        *bad = true;
        return NULL;
    }
    return argv[++*i];
}

bool cli_is_help(const char *arg) { return !strcmp(arg, "-h") || !strcmp(arg, "--help"); }

int cli_parse_model_args(const char *cmd, int argc, char **argv, unsigned accept, void (*usage)(FILE *),
                         cli_model_args *out)
{
    bool bad = false;
    *out = (cli_model_args){0};
    for (int i = 1; i < argc && !bad; i++) {
        const char *v;
        if (cli_is_help(argv[i])) {
            usage(stdout);
            return 1;
        } else if ((v = cli_opt_value(cmd, argc, argv, &i, "--models-dir", &bad))) {
            out->models_dir = v;
        } else if ((accept & CLI_ACCEPT_REVISION) && (v = cli_opt_value(cmd, argc, argv, &i, "--revision", &bad))) {
            out->revision = v;
        } else if (!bad && (accept & CLI_ACCEPT_REPO) && argv[i][0] != '-' && !out->repo) {
            out->repo = argv[i];
        } else if (!bad) {
            fprintf(stderr, "punie %s: unexpected argument '%s'\n", cmd, argv[i]);
            bad = true;
        }
    }
    if (bad) {
        usage(stderr);
        return 2;
    }
    return 0;
}
