/* One function per command, each in its own file under src/cli/. They return the process exit code. */
#ifndef PUNIE_CLI_CLI_H
#define PUNIE_CLI_CLI_H

int cmd_download_model(int argc, char **argv);
int cmd_models(int argc, char **argv);
int cmd_remove_model(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_serve(int argc, char **argv);

#endif
