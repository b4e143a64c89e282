/*
 * `sealmail`: the operator's command. New sub-commands (domain, alias,
 * backup, restore) are one handler and one line in the table below.
 */
#include <getopt.h>
#include <openssl/crypto.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "cli_admin.h"
#include "cli_backup.h"
#include "cli_queue.h"
#include "eng_error.h"

struct cli_command {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *args;
	const char *help;
};

static int cmd_version(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const struct cli_command commands[] = {
	{ "init", cli_cmd_init, "--config FILE [--data-dir DIR]",
	  "create the configuration (if missing), the data directory, the server\n"
	  "secrets and a self-signed TLS certificate; safe to run again" },
	{ "up", cli_cmd_up, "--config FILE",
	  "start every configured service in the foreground until Ctrl-C/SIGTERM" },
	{ "domain", cli_cmd_domain, "add|list|remove [NAME] --config FILE",
	  "add a mail domain, list them, or remove one (only once it has no\n"
	  "aliases); talks to the running sqlited" },
	{ "alias", cli_cmd_alias,
	  "add ADDRESS [--forward TARGET]... [--no-mailbox] [--password-stdin]\n"
	  "        [--quota BYTES] --config FILE\n"
	  "    | list [DOMAIN] | remove ADDRESS | passwd ADDRESS  --config FILE",
	  "add: create an alias (a mailbox, and/or forwards; @DOMAIN is the\n"
	  "catch-all). Its password is generated unless --password-stdin gives\n"
	  "one; a generated password is printed once, alone on the last line.\n"
	  "list: the aliases of one domain, or of all.\n"
	  "remove: delete the alias AND ALL ITS MAIL (database and spool are\n"
	  "deleted; this cannot be undone).\n"
	  "passwd: change a password; standard input gives the current password\n"
	  "(or an app password, which then changes itself) and, on the next\n"
	  "line, the new one (none: a new one is generated and printed last).\n"
	  "No one, not even the operator, can reset a forgotten password: the\n"
	  "mail is encrypted with it." },
	{ "app-password", cli_cmd_app_password,
	  "add ADDRESS [--label NAME] | revoke ADDRESS SLOT  --config FILE",
	  "add: a new app password (a key slot) for a mail client; the alias's\n"
	  "password is read from standard input; the new app password is\n"
	  "printed once, alone on the last line, after its slot number.\n"
	  "revoke: remove the app password of a slot (password on standard\n"
	  "input; slot 1, the main password, cannot be revoked)" },
	{ "status", cli_cmd_status, "--config FILE",
	  "show whether sqlited runs, and its counters" },
	{ "backup", cli_cmd_backup, "[--target URI] --config FILE",
	  "make an encrypted snapshot of the data directory now (default target:\n"
	  "backup_target, else DATA_DIR/backups), then prune by backup_keep_daily\n"
	  "and backup_keep_weekly. Only while sqlited is stopped, for now" },
	{ "snapshots", cli_cmd_snapshots, "[--target URI] --config FILE",
	  "list the snapshots at the target, oldest first" },
	{ "restore", cli_cmd_restore,
	  "[--target URI] [--snapshot ID] --config FILE",
	  "restore a snapshot (default: the newest) into the configured data\n"
	  "directory, with sqlited stopped. Every file is verified before\n"
	  "anything is replaced. Needs the same backup_key_file as the backup" },
	{ "queue", cli_cmd_queue, "list | show ID  --config FILE",
	  "the outbound queue (forwards waiting to be sent), read from the data\n"
	  "directory with the queue key: list its entries (sender, targets,\n"
	  "size), or show one entry's envelope and message" },
	{ "version", cmd_version, "", "print the version of sealmail and its libraries" },
	{ "help", cmd_help, "[COMMAND]", "show this help, or the help of one command" },
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static const struct cli_command *find_command(const char *name)
{
	for (size_t i = 0; i < N_COMMANDS; i++) {
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	}
	return NULL;
}

void cli_error(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs("sealmail: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void print_command(FILE *out, const struct cli_command *c)
{
	const char *h = c->help;

	fprintf(out, "  sealmail %s %s\n", c->name, c->args);
	while (*h != '\0') {
		size_t n = strcspn(h, "\n");

		fprintf(out, "      %.*s\n", (int)n, h);
		h += n + (h[n] == '\n');
	}
}

int cli_usage(const char *name)
{
	const struct cli_command *c = name != NULL ? find_command(name) : NULL;

	fprintf(stderr, "usage:\n");
	if (c != NULL) {
		print_command(stderr, c);
	} else {
		for (size_t i = 0; i < N_COMMANDS; i++)
			print_command(stderr, &commands[i]);
	}
	return CLI_EXIT_USAGE;
}

int cli_parse_options(int argc, char **argv, const char **config_r, const char **data_dir_r)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "data-dir", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	*config_r = NULL;
	if (data_dir_r != NULL)
		*data_dir_r = NULL;
	optind = 1;
	opterr = 1;
	while ((c = getopt_long(argc, argv, "c:d:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			*config_r = optarg;
			break;
		case 'd':
			if (data_dir_r == NULL) {
				cli_error("%s does not take --data-dir", argv[0]);
				return cli_usage(argv[0]);
			}
			*data_dir_r = optarg;
			break;
		default:
			return cli_usage(argv[0]);
		}
	}
	if (optind < argc) {
		cli_error("unexpected argument \"%s\"", argv[optind]);
		return cli_usage(argv[0]);
	}
	if (*config_r == NULL || **config_r == '\0') {
		cli_error("%s needs --config FILE", argv[0]);
		return cli_usage(argv[0]);
	}
	if (data_dir_r != NULL && *data_dir_r != NULL && **data_dir_r == '\0') {
		cli_error("--data-dir needs a directory");
		return cli_usage(argv[0]);
	}
	return 0;
}

char *cli_abspath(const char *path)
{
	char *cwd, *out;

	if (path[0] == '/')
		return eng_strdup(path);
	if ((cwd = getcwd(NULL, 0)) == NULL)
		eng_oom(4096);
	if (asprintf(&out, "%s%s%s", cwd, strcmp(cwd, "/") == 0 ? "" : "/", path) < 0)
		eng_oom(strlen(cwd) + strlen(path));
	free(cwd);
	return out;
}

static int cmd_version(int argc, char **argv)
{
	(void)argv;
	if (argc > 1)
		return cli_usage("version");
	printf("sealmail %s\n", SEALMAIL_VERSION);
	printf("  libsodium %s, %s, SQLCipher on SQLite %s\n", sodium_version_string(),
	       OpenSSL_version(OPENSSL_VERSION), sqlite3_libversion());
	return CLI_EXIT_OK;
}

static int cmd_help(int argc, char **argv)
{
	if (argc > 2)
		return cli_usage("help");
	if (argc == 2 && find_command(argv[1]) == NULL) {
		cli_error("unknown command \"%s\"", argv[1]);
		return cli_usage(NULL);
	}
	printf("sealmail %s: a self-hosted mail server with encrypted mailboxes\n\n", SEALMAIL_VERSION);
	printf("usage:\n");
	for (size_t i = 0; i < N_COMMANDS; i++) {
		if (argc == 2 && strcmp(argv[1], commands[i].name) != 0)
			continue;
		print_command(stdout, &commands[i]);
	}
	printf("\ndocs/configuration.md describes the configuration file.\n");
	return CLI_EXIT_OK;
}

int main(int argc, char **argv)
{
	const struct cli_command *c;

	/* everything sealmail creates is private unless it says otherwise */
	umask(077);
	/* lines appear as they happen even when stdout is a pipe (tests, journald) */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (sodium_init() < 0) {
		cli_error("libsodium failed to initialise");
		return CLI_EXIT_FAIL;
	}
	if (argc < 2)
		return cli_usage(NULL);
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
		return cmd_help(1, argv + 1);
	if (strcmp(argv[1], "--version") == 0)
		return cmd_version(1, argv + 1);
	if ((c = find_command(argv[1])) == NULL) {
		cli_error("unknown command \"%s\"", argv[1]);
		return cli_usage(NULL);
	}
	return c->run(argc - 1, argv + 1);
}
