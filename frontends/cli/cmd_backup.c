/*
 * The backup commands. They work on the data directory's files in this
 * process, which is only safe while nothing else writes them: so each
 * first checks that sqlited is not running (its unix socket answers no
 * connect) and that no `sealmail up` holds data_dir/sealmail.lock, and
 * holds that lock itself while it works, so neither can start meanwhile.
 *
 * The backup key (backup_key_file) is read into guarded memory and wiped
 * at exit; it is never printed.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "bk.h"
#include "cli.h"
#include "cli_backup.h"
#include "eng_error.h"
#include "secrets.h"

struct bk_cli {
	sm_config *cfg;
	char *config_path;
	uint8_t *key;
	bk_target *t;
	int lock_fd;
	const char *target_uri, *snapshot, *alias;
	int tty;
};

static void cli_close(struct bk_cli *c)
{
	bk_target_close(&c->t);
	sm_secret_free(&c->key);
	sm_config_free(&c->cfg);
	free(c->config_path);
	if (c->lock_fd >= 0)
		close(c->lock_fd);
}

/* 1 if something listens on the unix socket. */
static int socket_alive(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, alive;

	if (path == NULL || strlen(path) >= sizeof(sa.sun_path))
		return 0;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	alive = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return alive;
}

/* Takes data_dir/sealmail.lock (as `sealmail up` does) and checks sqlited. */
static int quiesced(struct bk_cli *c, const char *what)
{
	char *path;

	if (socket_alive(c->cfg->sqlited_socket)) {
		cli_error("sqlited is running (%s answers): %s needs it stopped "
			  "(online backups through sqlited are not built yet)",
			  c->cfg->sqlited_socket, what);
		return -1;
	}
	if (asprintf(&path, "%s/sealmail.lock", c->cfg->data_dir) < 0)
		abort();
	c->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (c->lock_fd < 0 || flock(c->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		cli_error("%s is held: `sealmail up` is running; stop it first",
			  path);
		free(path);
		return -1;
	}
	free(path);
	return 0;
}

static int cli_open(struct bk_cli *c, int argc, char **argv, int need_key)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "target", required_argument, NULL, 't' },
		{ "snapshot", required_argument, NULL, 's' },
		{ "alias", required_argument, NULL, 'a' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config = NULL, *why = NULL;
	char *err = NULL;
	int o;

	memset(c, 0, sizeof(*c));
	c->lock_fd = -1;
	c->tty = isatty(STDERR_FILENO);
	optind = 1;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'c': config = optarg; break;
		case 't': c->target_uri = optarg; break;
		case 's': c->snapshot = optarg; break;
		case 'a': c->alias = optarg; break;
		default: return cli_usage(argv[0]);
		}
	}
	if (config == NULL || optind != argc)
		return cli_usage(argv[0]);
	c->config_path = cli_abspath(config);
	if (sm_config_load(c->config_path, &c->cfg, &err) < 0) {
		cli_error("%s", err);
		free(err);
		return CLI_EXIT_FAIL;
	}
	if (need_key && sm_secret_load(c->cfg->backup_key_file, &c->key, &err) < 0) {
		cli_error("%s", err);
		free(err);
		return CLI_EXIT_FAIL;
	}
	if (bk_target_open(c->target_uri, c->cfg, &c->t, &why) < 0) {
		cli_error("backup target: %s", why != NULL ? why : "cannot be opened");
		return CLI_EXIT_FAIL;
	}
	return 0;
}

static void progress(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
	struct bk_cli *c = ctx;
	static time_t last;
	time_t now = time(NULL);

	if (!c->tty || (now == last && done != total))
		return;
	last = now;
	fprintf(stderr, "\r%s: %llu of %llu MiB (%u%%)   ", phase,
		(unsigned long long)(done >> 20), (unsigned long long)(total >> 20),
		total ? (unsigned)(done * 100 / total) : 100);
	if (done == total)
		fputc('\n', stderr);
}

int cli_cmd_backup(int argc, char **argv)
{
	struct bk_cli c;
	bk_fileset *fs = NULL;
	bk_stats st = { 0 }, pst = { 0 };
	char id[BK_SNAPSHOT_ID_MAX + 1], *stage = NULL, *err = NULL;
	int r = cli_open(&c, argc, argv, 1);

	if (r != 0)
		goto out;
	r = CLI_EXIT_FAIL;
	if (quiesced(&c, "a backup") < 0)
		goto out;
	if (asprintf(&stage, "%s/tmp/backup-%ld", c.cfg->data_dir,
		     (long)getpid()) < 0)
		abort();
	if (bk_collect_offline(c.cfg->data_dir, c.config_path, stage, &fs,
			       &err) < 0) {
		cli_error("%s", err != NULL ? err : "cannot collect the files");
		goto out;
	}
	if (bk_backup(c.t, c.key, fs, time(NULL), id, &st, progress, &c) < 0) {
		cli_error("the backup failed (the target holds no new snapshot)");
		goto out;
	}
	if (bk_prune(c.t, c.key, (unsigned)c.cfg->backup_keep_daily,
		     (unsigned)c.cfg->backup_keep_weekly, id, &pst) < 0)
		cli_error("snapshot %s is stored, but pruning old ones failed", id);
	printf("snapshot %s: %u files, %u objects uploaded (%llu bytes), "
	       "%u already there; pruned %u snapshots, %u objects\n", id,
	       st.files, st.objects_uploaded,
	       (unsigned long long)st.bytes_uploaded, st.objects_present,
	       pst.snapshots_pruned, pst.objects_pruned);
	r = CLI_EXIT_OK;
out:
	if (stage != NULL)
		bk_remove_tree(stage);
	free(stage);
	free(err);
	bk_fileset_free(&fs);
	cli_close(&c);
	return r;
}

int cli_cmd_snapshots(int argc, char **argv)
{
	struct bk_cli c;
	char **ids = NULL;
	size_t n = 0;
	int r = cli_open(&c, argc, argv, 1);

	if (r != 0)
		goto out;
	if (bk_snapshots(c.t, &ids, &n) < 0) {
		cli_error("cannot list the target's snapshots");
		r = CLI_EXIT_FAIL;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		bk_manifest *m = NULL;
		int e = bk_manifest_load(c.t, c.key, ids[i], &m);

		if (e == 0) {
			uint64_t bytes = 0;

			for (size_t k = 0; k < m->n_files; k++)
				bytes += m->files[k].size;
			printf("%s  %zu files  %llu bytes\n", ids[i], m->n_files,
			       (unsigned long long)bytes);
		} else {
			printf("%s  (%s)\n", ids[i], e == ENG_EAUTH ?
			       "the backup key does not open this snapshot" :
			       eng_strerror(e));
		}
		bk_manifest_free(&m);
	}
out:
	bk_strv_free(ids, n);
	cli_close(&c);
	return r;
}

int cli_cmd_restore(int argc, char **argv)
{
	struct bk_cli c;
	bk_manifest *m = NULL;
	const char *bad = NULL;
	char *stage = NULL;
	int r = cli_open(&c, argc, argv, 1), e;

	if (r != 0)
		goto out;
	r = CLI_EXIT_FAIL;
	if (c.alias != NULL) {
		cli_error("--alias: restoring one alias is not built yet; "
			  "restore the whole snapshot into a spare data directory "
			  "instead");
		goto out;
	}
	if (quiesced(&c, "a whole restore") < 0)
		goto out;
	e = bk_manifest_load(c.t, c.key, c.snapshot, &m);
	if (e == ENG_EAUTH) {
		cli_error("the backup key does not open this snapshot (%s): is "
			  "%s the key of the installation that made it?",
			  c.snapshot ? c.snapshot : "the newest",
			  c.cfg->backup_key_file);
		goto out;
	} else if (e == ENG_ENEWER) {
		cli_error("the snapshot was made by a newer Sealmail (format above "
			  "%d); upgrade before restoring it", BK_FORMAT_VERSION);
		goto out;
	} else if (e == ENG_ENOTFOUND) {
		cli_error("no snapshot %s at the target (`sealmail snapshots` lists "
			  "them)", c.snapshot ? c.snapshot : "at all");
		goto out;
	} else if (e < 0) {
		cli_error("the snapshot's manifest cannot be read: %s",
			  eng_strerror(e));
		goto out;
	}
	if (asprintf(&stage, "%s/tmp/restore-%ld", c.cfg->data_dir,
		     (long)getpid()) < 0)
		abort();
	e = bk_restore_fetch(c.t, c.key, m, NULL, NULL, stage, &bad, progress, &c);
	if (e < 0) {
		cli_error("snapshot %s: %s fails verification (%s); nothing in %s "
			  "was changed", m->id, bad ? bad : "a file",
			  eng_strerror(e), c.cfg->data_dir);
		goto out;
	}
	if (bk_restore_install(m, NULL, NULL, stage, c.cfg->data_dir) < 0) {
		cli_error("installing the verified files into %s failed part way; "
			  "run the restore again", c.cfg->data_dir);
		goto out;
	}
	printf("restored snapshot %s (%zu files) into %s\n", m->id, m->n_files,
	       c.cfg->data_dir);
	r = CLI_EXIT_OK;
out:
	if (stage != NULL)
		bk_remove_tree(stage);
	free(stage);
	bk_manifest_free(&m);
	cli_close(&c);
	return r;
}
