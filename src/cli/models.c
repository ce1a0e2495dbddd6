#include <stdio.h>

#include "cli/cli.h"

int cmd_models(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "punie models: not implemented yet\n");
    return 2;
}
