#include <stdio.h>

#include "cli/cli.h"

int cmd_remove_model(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "punie remove-model: not implemented yet\n");
    return 2;
}
