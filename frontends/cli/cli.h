/*
 * The `sealmail` command: one static table of sub-commands in main.c, one
 * handler per sub-command. A handler gets argv with argv[0] = its own name
 * and returns the process exit code: CLI_EXIT_OK, CLI_EXIT_FAIL for an
 * operational failure (the message is printed already), CLI_EXIT_USAGE for
 * bad arguments.
 */
#ifndef SM_CLI_H
#define SM_CLI_H

#include <stdbool.h>

#include "config.h"

#define SEALMAIL_VERSION "0.1.0-dev"

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

int cli_cmd_init(int argc, char **argv);
int cli_cmd_up(int argc, char **argv);

/* Prints "sealmail: <msg>" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints the usage of one command (or all when name is NULL); returns CLI_EXIT_USAGE. */
int cli_usage(const char *name);

/*
 * Parses "--config FILE [--data-dir DIR]" (data_dir_r NULL: --data-dir is not
 * accepted). Returns 0, or CLI_EXIT_USAGE after printing the usage.
 */
int cli_parse_options(int argc, char **argv, const char **config_r, const char **data_dir_r);

/* An absolute form of path (cwd-relative paths joined to the cwd). malloc'd. */
char *cli_abspath(const char *path);

/*
 * The checks `sealmail init` makes, and `sealmail up` repeats: the data
 * directory (mode 0700), the secrets, the TLS key pair. With create, what is
 * missing is made (and the backup key is shown once); without, anything
 * missing is an error that says to run init. 0 or -1 (message printed).
 */
int cli_prepare(const sm_config *cfg, bool create);

#endif
