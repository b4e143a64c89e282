/*
 * `sealmail init`: everything a server needs before its first start, made
 * idempotently. What exists is checked and kept, never replaced: the
 * secrets and the key cannot be regenerated without losing what they protect.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "eng_error.h"
#include "fsutil.h"
#include "secrets.h"
#include "tls_selfsigned.h"

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	if (slash == NULL)
		return eng_strdup(".");
	if (slash == path)
		return eng_strdup("/");
	return eng_strndup(path, (size_t)(slash - path));
}

static int mkdir_for(const char *file, mode_t mode)
{
	char *dir = dir_of(file), *err = NULL;
	int ret = sm_fs_mkdir_p(dir, mode, &err);

	if (ret != 0)
		cli_error("%s", err);
	free(err);
	free(dir);
	return ret == 0 ? 0 : -1;
}

/*
 * The data directory holds every mailbox and the server secrets: it must
 * exist, be a directory and be closed to group and others.
 */
static int check_data_dir(const char *dir, bool create)
{
	struct stat st;
	char *err = NULL;

	if (create && sm_fs_mkdir_p(dir, 0700, &err) != 0) {
		cli_error("%s", err);
		free(err);
		return -1;
	}
	if (stat(dir, &st) != 0) {
		cli_error("%s: the data directory is missing (%s); run `sealmail init` first",
			  dir, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		cli_error("%s: data_dir is not a directory", dir);
		return -1;
	}
	if ((st.st_mode & 077) != 0) {
		if (!create) {
			cli_error("%s: the data directory is open to group or others "
				  "(mode %03o); run: chmod 700 %s", dir,
				  (unsigned)(st.st_mode & 0777), dir);
			return -1;
		}
		if (chmod(dir, 0700) != 0) {
			cli_error("%s: cannot chmod 700: %s", dir, strerror(errno));
			return -1;
		}
		printf("data_dir %s: mode was %03o, now 0700\n", dir, (unsigned)(st.st_mode & 0777));
	}
	return 0;
}

/* Writes the backup key straight to fd 1 so that no stdio buffer keeps a copy. */
static void show_backup_key_once(const char *path, const char *hex)
{
	printf("\n"
	       "==================================================================\n"
	       " BACKUP KEY - shown this once only. Store a copy apart from this\n"
	       " server (a password manager, paper in a safe): without it no backup\n"
	       " can be restored if this machine is lost. It is also kept in\n"
	       " %s\n"
	       "\n   ", path);
	fflush(stdout);
	if (write(STDOUT_FILENO, hex, SM_SECRET_HEX_CHARS) != SM_SECRET_HEX_CHARS)
		cli_error("could not print the backup key; read it from %s", path);
	printf("\n"
	       "==================================================================\n\n");
}

static int prepare_secret(const char *label, const char *path, bool create, bool show)
{
	char *err = NULL, *hex = NULL;
	uint8_t *key = NULL;
	bool created = false;
	int ret;

	if (!create) {
		ret = sm_secret_load(path, &key, &err);
		sm_secret_free(&key);
		if (ret == ENG_ENOTFOUND)
			cli_error("%s: the %s is missing; run `sealmail init` first", path, label);
		else if (ret != 0)
			cli_error("%s", err);
		free(err);
		return ret == 0 ? 0 : -1;
	}
	if (mkdir_for(path, 0700) != 0)
		return -1;
	ret = sm_secret_ensure(path, &created, show ? &hex : NULL, &err);
	if (ret != 0) {
		cli_error("%s", err);
		free(err);
		return -1;
	}
	if (created) {
		printf("created  %s %s (mode 0600)\n", label, path);
		if (hex != NULL)
			show_backup_key_once(path, hex);
	} else {
		printf("kept     %s %s\n", label, path);
	}
	sm_secret_hex_free(&hex);
	return 0;
}

static int prepare_tls(const sm_config *cfg, bool create)
{
	char *err = NULL;
	bool created = false;
	int ret;

	if (!create) {
		ret = sm_tls_check_pair(cfg->tls_cert, cfg->tls_key, &err);
		if (ret != 0)
			cli_error("%s%s", err, ret == ENG_ENOTFOUND ?
				  " Run `sealmail init` first." : "");
		free(err);
		return ret == 0 ? 0 : -1;
	}
	if (mkdir_for(cfg->tls_key, 0700) != 0 || mkdir_for(cfg->tls_cert, 0755) != 0)
		return -1;
	ret = sm_tls_selfsigned_ensure(cfg->tls_cert, cfg->tls_key, cfg->hostname,
				       &created, &err);
	if (ret != 0) {
		cli_error("%s", err);
		free(err);
		return -1;
	}
	if (created)
		printf("created  self-signed certificate %s (localhost, 127.0.0.1, %s; %d days)\n"
		       "created  its key %s (mode 0600)\n", cfg->tls_cert, cfg->hostname,
		       SM_TLS_SELFSIGNED_DAYS, cfg->tls_key);
	else
		printf("kept     TLS certificate %s and key %s\n", cfg->tls_cert, cfg->tls_key);
	return 0;
}

int cli_prepare(const sm_config *cfg, bool create)
{
	if (check_data_dir(cfg->data_dir, create) != 0)
		return -1;
	if (prepare_secret("RPC secret", cfg->rpc_secret_file, create, false) != 0)
		return -1;
	if (prepare_secret("backup key", cfg->backup_key_file, create, true) != 0)
		return -1;
	return prepare_tls(cfg, create);
}

static char *default_hostname(void)
{
	char name[HOST_NAME_MAX + 1];

	if (gethostname(name, sizeof(name)) != 0)
		return eng_strdup(SM_CONFIG_DEFAULT_HOSTNAME);
	name[HOST_NAME_MAX] = '\0';
	return eng_strdup(sm_config_hostname_valid(name) ? name : SM_CONFIG_DEFAULT_HOSTNAME);
}

static int write_default_config(const char *config_path, const char *data_dir)
{
	char *host = default_hostname(), *text, *err = NULL;
	int ret;

	if (check_data_dir(data_dir, true) != 0 || mkdir_for(config_path, 0755) != 0) {
		free(host);
		return -1;
	}
	text = sm_config_default_text(data_dir, host);
	ret = sm_fs_create_file(config_path, text, strlen(text), 0640, &err);
	if (ret == 0)
		printf("created  configuration %s (data_dir %s, hostname %s)\n",
		       config_path, data_dir, host);
	else if (ret != ENG_EEXIST)  /* another init won the race: use its file */
		cli_error("%s", err);
	free(err);
	free(text);
	free(host);
	return ret == 0 || ret == ENG_EEXIST ? 0 : -1;
}

static void strip_trailing_slashes(char *p)
{
	size_t len = strlen(p);

	while (len > 1 && p[len - 1] == '/')
		p[--len] = '\0';
}

int cli_cmd_init(int argc, char **argv)
{
	const char *config_opt, *data_dir_opt;
	char *config_path, *data_dir = NULL, *err = NULL;
	sm_config *cfg = NULL;
	int ret, exists;

	if ((ret = cli_parse_options(argc, argv, &config_opt, &data_dir_opt)) != 0)
		return ret;
	config_path = cli_abspath(config_opt);
	if (data_dir_opt != NULL) {
		data_dir = cli_abspath(data_dir_opt);
		strip_trailing_slashes(data_dir);
	}

	exists = sm_fs_exists(config_path);
	if (exists < 0) {
		cli_error("%s: cannot look at the configuration file", config_path);
		ret = CLI_EXIT_FAIL;
		goto out;
	}
	if (!exists) {
		char *dd = data_dir != NULL ? eng_strdup(data_dir) : NULL;

		if (dd == NULL) {
			const char *slash = strrchr(config_path, '/');

			dd = slash == config_path ? eng_strdup("/") :
			     eng_strndup(config_path, (size_t)(slash - config_path));
		}
		ret = write_default_config(config_path, dd);
		free(dd);
		if (ret != 0) {
			ret = CLI_EXIT_FAIL;
			goto out;
		}
	} else {
		printf("kept     configuration %s\n", config_path);
	}

	if (sm_config_load(config_path, &cfg, &err) != 0) {
		cli_error("%s", err);
		ret = CLI_EXIT_FAIL;
		goto out;
	}
	if (data_dir != NULL) {
		char *have = eng_strdup(cfg->data_dir);

		strip_trailing_slashes(have);
		ret = strcmp(have, data_dir) != 0;
		free(have);
		if (ret) {
			cli_error("--data-dir %s differs from data_dir = %s in %s; "
				  "edit the file or drop --data-dir", data_dir, cfg->data_dir,
				  config_path);
			ret = CLI_EXIT_FAIL;
			goto out;
		}
	}
	if (cli_prepare(cfg, true) != 0) {
		ret = CLI_EXIT_FAIL;
		goto out;
	}
	printf("ready    start the server with: sealmail up --config %s\n", config_path);
	ret = CLI_EXIT_OK;
out:
	sm_config_free(&cfg);
	free(err);
	free(data_dir);
	free(config_path);
	return ret;
}
