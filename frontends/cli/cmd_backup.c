/*
 * The backup commands.
 *
 * While sqlited runs (its unix socket answers), it owns the files:
 *  - `backup` asks it for a consistent staging copy (BACKUP_PREPARE: each
 *    alias copied on its own queue, docs/rpc.md), backs that up with the
 *    same manifest paths as an offline backup, and removes the copy;
 *  - `restore --alias A` downloads and verifies A's files and the
 *    snapshot's directory.db into data_dir/tmp/restore-<pid>/ first, and
 *    only then asks sqlited to swap them in (RESTORE_ALIAS);
 *  - a whole restore is refused.
 * While it is stopped, each command works on the files in this process,
 * after checking that no `sealmail up` holds data_dir/sealmail.lock, and
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
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "bk.h"
#include "cli.h"
#include "cli_backup.h"
#include "eng_error.h"
#include "rpc_sync.h"
#include "secrets.h"

#define BK_PEER_NAME "cli@sealmail"
/* A staging copy of a large installation takes a while. */
#define BK_RPC_TIMEOUT_MS (3600 * 1000)

struct bk_cli {
	sm_config *cfg;
	char *config_path;
	uint8_t *key;
	bk_target *t;
	int lock_fd;
	const char *target_uri, *snapshot, *alias;
	int tty;
	rpc_sync *rpc;           /* to a running sqlited, or NULL */
};

static void cli_close(struct bk_cli *c)
{
	rpc_sync_free(&c->rpc);
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

/*
 * 1: sqlited runs and c->rpc is connected to it; 0: it does not run;
 * -1: it runs but cannot be reached (printed).
 */
static int online(struct bk_cli *c)
{
	uint8_t *secret = NULL;
	char *msg = NULL;
	int err;

	if (!socket_alive(c->cfg->sqlited_socket))
		return 0;
	if (sm_secret_load(c->cfg->rpc_secret_file, &secret, &msg) != 0) {
		cli_error("%s", msg != NULL ? msg : "cannot read the RPC secret");
		free(msg);
		return -1;
	}
	err = rpc_sync_connect_unix(c->cfg->sqlited_socket, secret,
				    BK_PEER_NAME, BK_RPC_TIMEOUT_MS, &c->rpc);
	sm_secret_free(&secret);
	if (err != 0) {
		cli_error("sqlited runs (%s answers) but refused this client: %s",
			  c->cfg->sqlited_socket, rpc_strerror(err));
		return -1;
	}
	return 1;
}

/* Takes data_dir/sealmail.lock (as `sealmail up` does) and checks sqlited. */
static int quiesced(struct bk_cli *c, const char *what)
{
	char *path;

	if (socket_alive(c->cfg->sqlited_socket)) {
		cli_error("sqlited is running (%s answers): %s needs it stopped "
			  "(or restore one alias with --alias)",
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

/* BACKUP_PREPARE: *stage_r gets the staging copy's path. 0 or -1. */
static int stage_online(struct bk_cli *c, char **stage_r)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	size_t n = strlen(c->cfg->data_dir);
	int err;

	*stage_r = NULL;
	err = rpc_sync_call(c->rpc, RPC_OP_BACKUP_PREPARE, NULL, 0, &resp);
	if (err == 0)
		err = rpc_get_str(&resp.view, RPC_T_PATH, stage_r);
	rpc_sync_resp_clear(&resp);
	if (err == 0 && (strncmp(*stage_r, c->cfg->data_dir, n) != 0 ||
			 strncmp(*stage_r + n, "/tmp/", 5) != 0)) {
		free(*stage_r);
		*stage_r = NULL;
		err = ENG_EINVAL;
	}
	if (err == ENG_EBUSY) {
		cli_error("sqlited runs another backup job now (a scheduled "
			  "backup or another `sealmail backup`): try again when "
			  "it ends");
		return -1;
	}
	if (err != 0) {
		cli_error("sqlited could not make a consistent copy for the "
			  "backup: %s%s", rpc_strerror(err), err == RPC_EOPCODE ?
			  " (an older sqlited: stop it and back up offline)" : "");
		return -1;
	}
	return 0;
}

int cli_cmd_backup(int argc, char **argv)
{
	struct bk_cli c;
	bk_fileset *fs = NULL;
	bk_stats st = { 0 }, pst = { 0 };
	char id[BK_SNAPSHOT_ID_MAX + 1], *stage = NULL, *err = NULL;
	int r = cli_open(&c, argc, argv, 1), on, e;

	if (r != 0)
		goto out;
	r = CLI_EXIT_FAIL;
	if ((on = online(&c)) < 0)
		goto out;
	if (on) {
		if (stage_online(&c, &stage) < 0)
			goto out;
		e = bk_collect_staged(stage, c.config_path, &fs, &err);
	} else {
		if (quiesced(&c, "a backup") < 0)
			goto out;
		if (asprintf(&stage, "%s/tmp/backup-%ld", c.cfg->data_dir,
			     (long)getpid()) < 0)
			abort();
		e = bk_collect_offline(c.cfg->data_dir, c.config_path, stage,
				       &fs, &err);
	}
	if (e < 0) {
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

/* Loads the snapshot's manifest with a clear message for each failure. */
static int load_manifest(struct bk_cli *c, bk_manifest **m_r)
{
	int e = bk_manifest_load(c->t, c->key, c->snapshot, m_r);

	if (e == ENG_EAUTH)
		cli_error("the backup key does not open this snapshot (%s): is "
			  "%s the key of the installation that made it?",
			  c->snapshot ? c->snapshot : "the newest",
			  c->cfg->backup_key_file);
	else if (e == ENG_ENEWER)
		cli_error("the snapshot was made by a newer Sealmail (format above "
			  "%d); upgrade before restoring it", BK_FORMAT_VERSION);
	else if (e == ENG_ENOTFOUND)
		cli_error("no snapshot %s at the target (`sealmail snapshots` lists "
			  "them)", c->snapshot ? c->snapshot : "at all");
	else if (e < 0)
		cli_error("the snapshot's manifest cannot be read: %s",
			  eng_strerror(e));
	return e < 0 ? -1 : 0;
}

struct alias_sel {
	const char *path;        /* one exact path, or NULL */
	char db[96], wal[96], spool[96];
	unsigned files;
};

static bool select_alias(void *ctx, const bk_file *f)
{
	struct alias_sel *s = ctx;
	bool yes;

	if (s->path != NULL)
		yes = strcmp(f->path, s->path) == 0;
	else
		yes = strcmp(f->path, s->db) == 0 || strcmp(f->path, s->wal) == 0 ||
		      strncmp(f->path, s->spool, strlen(s->spool)) == 0;
	if (yes)
		s->files++;
	return yes;
}

/* The alias id of address in the snapshot's directory copy. 0 or -1. */
static int snapshot_alias_id(const char *db_path, const char *address,
			     char id_r[65])
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int rc, found = 0;

	rc = sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(db, "SELECT id FROM alias WHERE address = "
					"lower(?1) AND keyring IS NOT NULL", -1,
					&st, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_text(st, 1, address, -1, SQLITE_TRANSIENT);
	if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
		const unsigned char *id = sqlite3_column_text(st, 0);

		if (id != NULL && strlen((const char *)id) < 65 &&
		    strspn((const char *)id, "0123456789abcdef") ==
		    strlen((const char *)id)) {
			strcpy(id_r, (const char *)id);
			found = 1;
		}
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return found ? 0 : -1;
}

/*
 * restore --alias: everything downloaded and verified into the stage
 * first; then sqlited swaps it in on the alias's queue (RESTORE_ALIAS).
 */
static int restore_alias(struct bk_cli *c)
{
	bk_manifest *m = NULL;
	struct alias_sel sel = { .path = "directory.db" };
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf req = ENG_BUF_INIT;
	const char *bad = NULL;
	char *stage = NULL, *dbp = NULL, id[65];
	int r = CLI_EXIT_FAIL, on, e;

	if ((on = online(c)) < 0)
		return CLI_EXIT_FAIL;
	if (!on) {
		cli_error("restoring one alias goes through sqlited, which is "
			  "not running: start it (`sealmail up --config %s`) and "
			  "run this again", c->config_path);
		return CLI_EXIT_FAIL;
	}
	if (load_manifest(c, &m) < 0)
		return CLI_EXIT_FAIL;
	if (asprintf(&stage, "%s/tmp/restore-%ld", c->cfg->data_dir,
		     (long)getpid()) < 0 ||
	    asprintf(&dbp, "%s/directory.db", stage) < 0)
		abort();
	bk_remove_tree(stage);
	e = bk_restore_fetch(c->t, c->key, m, select_alias, &sel, stage, &bad,
			     progress, c);
	if (e == 0 && sel.files == 0)
		e = ENG_ENOTFOUND, bad = "directory.db";
	if (e == 0 && snapshot_alias_id(dbp, c->alias, id) < 0) {
		cli_error("snapshot %s has no mailbox alias %s; nothing was "
			  "changed", m->id, c->alias);
		goto out;
	}
	if (e == 0) {
		sel = (struct alias_sel){ 0 };
		snprintf(sel.db, sizeof(sel.db), "mailboxes/%s.db", id);
		snprintf(sel.wal, sizeof(sel.wal), "mailboxes/%s.db-wal", id);
		snprintf(sel.spool, sizeof(sel.spool), "spool/%s/", id);
		e = bk_restore_fetch(c->t, c->key, m, select_alias, &sel, stage,
				     &bad, progress, c);
	}
	if (e < 0) {
		cli_error("snapshot %s: %s fails verification (%s); nothing in %s "
			  "was changed", m->id, bad ? bad : "a file",
			  eng_strerror(e), c->cfg->data_dir);
		goto out;
	}
	rpc_put_str(&req, RPC_T_ALIAS, c->alias);
	rpc_put_str(&req, RPC_T_PATH, stage);
	e = rpc_sync_call(c->rpc, RPC_OP_RESTORE_ALIAS, req.data, req.len, &resp);
	rpc_sync_resp_clear(&resp);
	if (e == ENG_ENOTFOUND || e == ENG_EINVAL)
		cli_error("there is no alias %s now (restore the whole snapshot "
			  "into a spare data directory instead)", c->alias);
	else if (e == ENG_EMODIFIED)
		cli_error("alias %s was removed and added again since snapshot %s: "
			  "its mail is another mailbox's; nothing was changed",
			  c->alias, m->id);
	else if (e != 0)
		cli_error("sqlited could not restore alias %s: %s (its log says "
			  "more)", c->alias, rpc_strerror(e));
	if (e != 0)
		goto out;
	printf("restored alias %s from snapshot %s (%u files)\n", c->alias,
	       m->id, sel.files);
	r = CLI_EXIT_OK;
out:
	eng_buf_free(&req);
	bk_remove_tree(stage);
	free(stage);
	free(dbp);
	bk_manifest_free(&m);
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
		r = restore_alias(&c);
		goto out;
	}
	if (quiesced(&c, "a whole restore") < 0)
		goto out;
	if (load_manifest(&c, &m) < 0)
		goto out;
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
