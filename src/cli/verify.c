#include <stdio.h>

#include "cli/cli.h"

int cmd_verify(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "punie verify: not implemented yet\n");
    return 2;
}
