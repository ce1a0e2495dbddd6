#include <stdio.h>

#include "cli/cli.h"

int cmd_generate(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "punie generate: not implemented yet\n");
    return 2;
}
