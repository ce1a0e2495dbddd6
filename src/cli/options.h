/* Option parsing shared by the commands. */
#ifndef PUNIE_CLI_OPTIONS_H
#define PUNIE_CLI_OPTIONS_H

#include <stdbool.h>
#include <stdio.h>

/* Matches argv[*i] against "--name value" or "--name=value" and returns the value, advancing *i past a
 * separate value. Returns NULL when argv[*i] is another option; when the value is missing it prints
 * "punie CMD: --name needs a value", sets *bad and returns NULL. */
const char *cli_opt_value(const char *cmd, int argc, char **argv, int *i, const char *name, bool *bad);

bool cli_is_help(const char *arg); /* -h or --help */

/* The arguments of the model-management commands: [REPO] [--revision REV] [--models-dir DIR]. */
enum { CLI_ACCEPT_REPO = 1, CLI_ACCEPT_REVISION = 2 };
typedef struct cli_model_args {
    const char *repo, *revision, *models_dir; /* NULL when not given */
} cli_model_args;

/* Returns 0 to go on, 1 after -h/--help (usage printed to stdout), 2 on a bad argument (message and
 * usage printed to stderr). accept: which of CLI_ACCEPT_* the command takes besides --models-dir. */
int cli_parse_model_args(const char *cmd, int argc, char **argv, unsigned accept, void (*usage)(FILE *),
                         cli_model_args *out);

#endif
