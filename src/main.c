/* punie: command dispatch. Each command lives in src/cli/<command>.c. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    {"download-model", cmd_download_model, "Download a model from the Hugging Face Hub (verified, resumable)"},
    {"models", cmd_models, "List downloaded models"},
    {"remove-model", cmd_remove_model, "Delete a downloaded model"},
    {"verify", cmd_verify, "Re-check the hashes of a downloaded model"},
    {"serve", cmd_serve, "Serve a model over an OpenAI-compatible HTTP API"},
    {"generate", cmd_generate, "Generate a reply to a prompt on the command line"},
    {"tokenize", cmd_tokenize, "Turn text into token ids, or ids into text (--decode)"},
};

static void usage(FILE *out)
{
    fprintf(out, "punie %s: run MLX 4-bit coding models locally, in one native binary\n\n", PUNIE_VERSION);
    fprintf(out, "Usage: punie COMMAND [OPTIONS]\n\nCommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(out, "  %-16s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nRun 'punie COMMAND --help' for a command's options.\n"
                 "Quick start:\n  punie download-model\n  punie serve --model local\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0 || strcmp(name, "version") == 0) {
        printf("punie %s\n", PUNIE_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(name, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "punie: unknown command '%s'\n\n", name);
    usage(stderr);
    return 2;
}
