#include <stdio.h>

#include "cli/cli.h"

int cmd_download_model(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "punie download-model: not implemented yet\n");
    return 2;
}
