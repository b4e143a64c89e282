/*
 * The backup opcodes (docs/rpc.md): BACKUP_PREPARE and RESTORE_ALIAS, so
 * that `sealmail backup` and `sealmail restore --alias` work while sqlited
 * serves.
 *
 * BACKUP_PREPARE makes a consistent staging copy of the data dir's files
 * under data_dir/tmp/backup-<16 hex>/, laid out as the data dir itself
 * (directory.db, mailboxes/<id>.db[-wal], spool/<id>/<entry>), so that the
 * CLI's manifest paths are those of an offline backup:
 *
 *   directory.db ─▶ copied with SQLite's backup API (pool, srv_blocking)
 *   each mailboxes/<id>.db, one at a time, ON ITS ALIAS'S QUEUE:
 *       open  ─▶ eng_store_checkpoint (TRUNCATE), copy the .db
 *       locked ─▶ copy the closed .db and its -wal if there is one
 *       spool/<id>/ ─▶ hard link every committed entry (never "tmp-*":
 *       those are being written; a committed entry is renamed into
 *       place whole and never rewritten, only removed by the drain,
 *       which runs on the same queue)
 *
 * The queue is exclusive, so nothing writes the .db while it is copied.
 * srv_backup_stage() is this copy; BACKUP_PREPARE and the schedule
 * (srv_backup.c) both use it, one job at a time (srv.backup_busy: a
 * BACKUP_PREPARE while another job runs is refused with EBUSY). A copy
 * that failed is removed here; one handed to the CLI is the CLI's.
 * The staging copy is scratch: its files are not fsynced (a crash loses
 * only the copy; the CLI removes the directory when done).
 *
 * RESTORE_ALIAS takes a staging directory under data_dir/tmp/ that the
 * CLI has filled with VERIFIED files of one alias (bk_restore_fetch) and
 * the snapshot's directory.db. On the pool it reads the alias's row from
 * that copy and checks that the live alias has the same id; then it ends
 * the alias's sessions and, on the alias's queue (so no unlock or request
 * can open it meanwhile), closes it, renames the staged database over the
 * live one (removing the live -wal and -shm first, which a checkpointed
 * close leaves empty), renames the staged spool entries in, fsyncs the
 * directories, and rewrites the directory row: keyring (compare-and-swap),
 * kind and forwards, quota. Mail still sealed in the live spool (delivered
 * after the snapshot, never drained) is kept and arrives at the next
 * unlock.
 */
#include "srv.h"
#include "bk.h"
#include "eng_error.h"
#include "eng_fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

srv_handler_fn srv_op_backup_prepare;
srv_handler_fn srv_op_restore_alias;

#define COPY_CHUNK (64u * 1024)
#define SUBMIT_RETRY_MS 20

static int io_err(int e)
{
	return e == ENOSPC || e == EDQUOT ? ENG_ENOSPC : ENG_EIO;
}

static char *path_fmt2(const char *a, const char *b, const char *c)
{
	char *p;

	if (asprintf(&p, "%s/%s%s", a, b, c != NULL ? c : "") < 0)
		eng_oom(0);
	return p;
}

/* Copies src to dst (created 0600); ENG_ENOTFOUND if src is missing. */
static int copy_file(const char *src, const char *dst)
{
	unsigned char *buf = eng_malloc(COPY_CHUNK);
	int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, err = 0;
	ssize_t n;

	if (in < 0) {
		free(buf);
		return errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO;
	}
	out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out < 0)
		err = io_err(errno);
	while (err == 0 && (n = read(in, buf, COPY_CHUNK)) != 0) {
		if (n < 0) {
			if (errno != EINTR)
				err = ENG_EIO;
			continue;
		}
		for (ssize_t off = 0; err == 0 && off < n;) {
			ssize_t w = write(out, buf + off, (size_t)(n - off));

			if (w < 0 && errno != EINTR)
				err = io_err(errno);
			else if (w > 0)
				off += w;
		}
	}
	if (out >= 0 && close(out) != 0 && err == 0)
		err = io_err(errno);
	close(in);
	free(buf);
	return err;
}

static int mkdir_0700(const char *path)
{
	if (mkdir(path, 0700) != 0 && errno != EEXIST)
		return io_err(errno);
	return 0;
}

/* ---- BACKUP_PREPARE ---- */

struct prep_op {
	const bool *cancelled;   /* may be NULL */
	srv_backup_stage_fn *done;
	void *ctx;
	srv *srv;
	char *stage;             /* data_dir/tmp/backup-<hex> */
	char **ids;              /* aliases with a database */
	size_t n_ids, next;
	uv_timer_t timer;        /* retry of a submit refused as busy */
	bool timer_init;
	int err;
};

static void prep_op_free(struct prep_op *op)
{
	for (size_t i = 0; i < op->n_ids; i++)
		free(op->ids[i]);
	free(op->ids);
	free(op->stage);
	free(op);
}

static void prep_timer_closed(uv_handle_t *h)
{
	prep_op_free(h->data);
}

static void prep_finish(struct prep_op *op)
{
	if (op->err != 0)
		eng_log(ENG_LOG_ERROR, "backup staging %s failed: %s",
			op->stage, eng_strerror(op->err));
	op->done(op->ctx, op->err, op->stage);
	if (op->timer_init)
		uv_close((uv_handle_t *)&op->timer, prep_timer_closed);
	else
		prep_op_free(op);
}

static int copy_sqlite(const char *src, const char *dst)
{
	sqlite3 *from = NULL, *to = NULL;
	sqlite3_backup *b;
	int rc;

	rc = sqlite3_open_v2(src, &from, SQLITE_OPEN_READONLY, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_open_v2(dst, &to, SQLITE_OPEN_READWRITE |
				     SQLITE_OPEN_CREATE, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_busy_timeout(from, 5000);
		b = sqlite3_backup_init(to, "main", from, "main");
		if (b == NULL) {
			rc = SQLITE_ERROR;
		} else {
			while ((rc = sqlite3_backup_step(b, -1)) == SQLITE_BUSY ||
			       rc == SQLITE_LOCKED)
				sqlite3_sleep(10);
			(void)sqlite3_backup_finish(b);
			if (rc == SQLITE_DONE)
				rc = SQLITE_OK;
		}
	}
	sqlite3_close(from);
	sqlite3_close(to);
	if (rc != SQLITE_OK)
		eng_log(ENG_LOG_ERROR, "cannot copy %s: %s", src,
			sqlite3_errstr(rc));
	return rc == SQLITE_OK ? 0 : ENG_EIO;
}

/* Pool: the staging dirs, the list of aliases, the directory copy. */
static int prep_start_work(void *ctx)
{
	struct prep_op *op = ctx;
	const char *data_dir = op->srv->cfg->data_dir;
	char *p, *q;
	DIR *d;
	struct dirent *e;
	size_t cap = 0;
	int err;

	if ((err = mkdir_0700(op->stage)) != 0)
		return err;
	p = path_fmt2(op->stage, "mailboxes", NULL);
	err = mkdir_0700(p);
	free(p);
	p = path_fmt2(op->stage, "spool", NULL);
	if (err == 0)
		err = mkdir_0700(p);
	free(p);
	if (err != 0)
		return err;
	p = path_fmt2(data_dir, "directory.db", NULL);
	q = path_fmt2(op->stage, "directory.db", NULL);
	if (access(p, F_OK) == 0)
		err = copy_sqlite(p, q);
	free(p);
	free(q);
	if (err != 0)
		return err;
	p = path_fmt2(data_dir, "mailboxes", NULL);
	d = opendir(p);
	free(p);
	if (d == NULL)
		return errno == ENOENT ? 0 : ENG_EIO;
	while ((e = readdir(d)) != NULL) {
		size_t len = strlen(e->d_name);

		if (len <= 3 || len > SRV_ALIAS_ID_MAX + 3 ||
		    strcmp(e->d_name + len - 3, ".db") != 0 ||
		    e->d_name[0] == '.')
			continue;
		if (op->n_ids == cap) {
			cap = cap ? 2 * cap : 16;
			op->ids = eng_realloc(op->ids, cap * sizeof(*op->ids));
		}
		op->ids[op->n_ids++] = eng_strndup(e->d_name, len - 3);
	}
	closedir(d);
	return 0;
}

/* The alias's queue: its database and spool, nothing writing them. */
static int prep_alias_work(srv_alias *a, void *ctx)
{
	struct prep_op *op = ctx;
	const char *data_dir = op->srv->cfg->data_dir;
	const char *id = srv_alias_id(a);
	eng_store *st = srv_alias_store(a);
	char *src, *dst, name[SRV_ALIAS_ID_MAX + 16];
	DIR *d;
	struct dirent *e;
	int err = 0;

	if (st != NULL && (err = eng_store_checkpoint(st)) != 0)
		return err;
	for (int wal = 0; wal < 2 && err == 0; wal++) {
		snprintf(name, sizeof(name), "mailboxes/%s.db%s", id,
			 wal ? "-wal" : "");
		src = path_fmt2(data_dir, name, NULL);
		dst = path_fmt2(op->stage, name, NULL);
		err = copy_file(src, dst);
		/* Removed since the listing (ALIAS_REMOVE), or no WAL. */
		if (err == ENG_ENOTFOUND)
			err = 0;
		free(src);
		free(dst);
	}
	if (err != 0)
		return err;
	snprintf(name, sizeof(name), "spool/%s", id);
	src = path_fmt2(data_dir, name, NULL);
	d = opendir(src);
	if (d == NULL) {
		free(src);
		return errno == ENOENT ? 0 : ENG_EIO;
	}
	dst = path_fmt2(op->stage, name, NULL);
	err = mkdir_0700(dst);
	while (err == 0 && (e = readdir(d)) != NULL) {
		char *from, *to;

		if (e->d_name[0] == '.' || strncmp(e->d_name, "tmp-", 4) == 0)
			continue;
		from = path_fmt2(src, e->d_name, NULL);
		to = path_fmt2(dst, e->d_name, NULL);
		if (link(from, to) != 0) {
			if (errno == ENOENT)
				err = 0;
			else if (errno == EXDEV || errno == EPERM)
				err = copy_file(from, to);
			else
				err = io_err(errno);
			if (err == ENG_ENOTFOUND)
				err = 0;
		}
		free(from);
		free(to);
	}
	closedir(d);
	free(src);
	free(dst);
	return err;
}

static void prep_next(struct prep_op *op);

static void prep_alias_done(void *ctx, int result)
{
	struct prep_op *op = ctx;

	if (result != 0) {
		op->err = result;
		prep_finish(op);
		return;
	}
	op->next++;
	prep_next(op);
}

static void prep_retry(uv_timer_t *t)
{
	prep_next(t->data);
}

/* One alias at a time: the copy costs one alias's queue, never all. */
static void prep_next(struct prep_op *op)
{
	int err;

	if (op->cancelled != NULL && *op->cancelled && op->err == 0)
		op->err = RPC_ECANCELLED;
	if (op->err != 0 || op->next == op->n_ids) {
		prep_finish(op);
		return;
	}
	err = srv_alias_submit(op->srv->aliases, op->ids[op->next],
			       prep_alias_work, prep_alias_done, op);
	if (err == ENG_EBUSY && !op->srv->shutting_down) {
		/* The alias's queue is full: try again shortly. */
		if (!op->timer_init) {
			uv_timer_init(op->srv->loop, &op->timer);
			op->timer.data = op;
			op->timer_init = true;
		}
		uv_timer_start(&op->timer, prep_retry, SUBMIT_RETRY_MS, 0);
		return;
	}
	if (err == ENG_EINVAL) {
		/* Not an alias id (a stray file): skip it. */
		op->next++;
		prep_next(op);
		return;
	}
	if (err != 0) {
		op->err = err;
		prep_finish(op);
	}
}

static void prep_start_done(void *ctx, int result)
{
	struct prep_op *op = ctx;

	op->err = result;
	prep_next(op);
}

void srv_backup_stage(srv *s, const bool *cancelled,
		      srv_backup_stage_fn *done, void *ctx)
{
	struct prep_op *op = eng_calloc(1, sizeof(*op));
	uint8_t rnd[8];
	char hex[17];
	int err;

	op->cancelled = cancelled;
	op->done = done;
	op->ctx = ctx;
	op->srv = s;
	randombytes_buf(rnd, sizeof(rnd));
	sodium_bin2hex(hex, sizeof(hex), rnd, sizeof(rnd));
	if (asprintf(&op->stage, "%s/tmp/backup-%s", s->cfg->data_dir,
		     hex) < 0)
		eng_oom(0);
	err = srv_blocking(s, prep_start_work, prep_start_done, op);
	if (err != 0) {
		op->err = err;
		prep_finish(op);
	}
}

static int remove_work(void *ctx)
{
	bk_remove_tree(ctx);
	return 0;
}

static void remove_done(void *ctx, int result)
{
	(void)result;
	free(ctx);
}

/* A failed copy is removed on the pool: it may be large. */
static void remove_stage(srv *s, const char *stage)
{
	char *p = eng_strdup(stage);

	if (srv_blocking(s, remove_work, remove_done, p) != 0) {
		eng_log(ENG_LOG_WARN, "cannot remove %s now; it goes at the "
			"next start", p);
		free(p);
	}
}

static void prepare_done(void *ctx, int result, const char *stage)
{
	srv_req *req = ctx;

	req->srv->backup_busy = false;
	if (result != 0) {
		remove_stage(req->srv, stage);
		srv_fail(req, result);
		return;
	}
	rpc_put_str(&req->reply, RPC_T_PATH, stage);
	srv_reply(req);
}

void srv_op_backup_prepare(srv_req *req)
{
	if (req->srv->backup_busy) {
		/* One backup job at a time: the CLI says to try again. */
		srv_fail(req, ENG_EBUSY);
		return;
	}
	req->srv->backup_busy = true;
	srv_backup_stage(req->srv, &req->cancelled, prepare_done, req);
}

/* ---- RESTORE_ALIAS ---- */

struct restore_op {
	srv_req *req;
	srv *srv;
	char *address;
	char *stage;
	dir_alias snap;          /* the row in the snapshot's directory */
};

static void restore_op_free(struct restore_op *op)
{
	dir_alias_clear(&op->snap);
	free(op->address);
	free(op->stage);
	free(op);
}

/* A staging directory directly under data_dir/tmp/, no "..". */
static bool stage_ok(const srv *s, const char *stage)
{
	size_t n = strlen(s->cfg->data_dir);
	const char *rest;

	if (strncmp(stage, s->cfg->data_dir, n) != 0 ||
	    strncmp(stage + n, "/tmp/", 5) != 0)
		return false;
	rest = stage + n + 5;
	return rest[0] != '\0' && rest[0] != '.' && strchr(rest, '/') == NULL;
}

/* Pool: the snapshot's row, and the live alias must be the same alias. */
static int restore_lookup_work(void *ctx)
{
	struct restore_op *op = ctx;
	char *uri;
	dir *snapdir = NULL;
	dir_alias live;
	int err;

	if (asprintf(&uri, "sqlite:%s/directory.db", op->stage) < 0)
		eng_oom(0);
	err = dir_open(uri, NULL, &snapdir);
	free(uri);
	if (err != 0)
		return err;
	err = dir_alias_get(snapdir, op->address, &op->snap);
	dir_close(&snapdir);
	if (err != 0)
		return err;
	if (!(op->snap.kind & DIR_MAILBOX) || op->snap.keyring == NULL)
		return ENG_EINVAL;
	if ((err = dir_alias_get(op->srv->dir, op->address, &live)) != 0)
		return err;
	/* A removed and re-added alias has a new id: its files are others. */
	if (strcmp(live.id, op->snap.id) != 0)
		err = ENG_EMODIFIED;
	dir_alias_clear(&live);
	return err;
}

static int rename_into(const char *from, const char *to)
{
	if (rename(from, to) != 0)
		return errno == ENOENT ? ENG_ENOTFOUND : io_err(errno);
	return 0;
}

/* The alias's queue: close it, move the verified files in, the row. */
static int restore_files_work(srv_alias *a, void *ctx)
{
	struct restore_op *op = ctx;
	const char *data_dir = op->srv->cfg->data_dir;
	const char *id = op->snap.id;
	static const char *const stale[] = { "-wal", "-shm", "-journal" };
	char name[SRV_ALIAS_ID_MAX + 32], *from, *to, *sdir, *ldir;
	DIR *d;
	struct dirent *e;
	dir_alias live;
	int err = 0;

	srv_alias_close_now(a);
	snprintf(name, sizeof(name), "mailboxes/%s.db", id);
	from = path_fmt2(op->stage, name, NULL);
	if (access(from, F_OK) != 0) {
		free(from);
		return ENG_ENOTFOUND;   /* the CLI staged no database */
	}
	/* The closed database's WAL is empty, but a stale one must never be
	 * applied to the restored file. */
	for (size_t i = 0; i < sizeof(stale) / sizeof(stale[0]); i++) {
		to = path_fmt2(data_dir, name, stale[i]);
		if (unlink(to) != 0 && errno != ENOENT)
			err = ENG_EIO;
		free(to);
	}
	to = path_fmt2(data_dir, name, NULL);
	if (err == 0)
		err = rename_into(from, to);
	free(from);
	free(to);
	if (err == 0) {
		from = path_fmt2(op->stage, name, "-wal");
		to = path_fmt2(data_dir, name, "-wal");
		err = rename_into(from, to);
		if (err == ENG_ENOTFOUND)
			err = 0;
		free(from);
		free(to);
	}
	ldir = path_fmt2(data_dir, "mailboxes", NULL);
	if (err == 0)
		err = eng_fsync_dir(ldir);
	free(ldir);
	if (err != 0)
		return err;

	snprintf(name, sizeof(name), "spool/%s", id);
	sdir = path_fmt2(op->stage, name, NULL);
	ldir = path_fmt2(data_dir, name, NULL);
	d = opendir(sdir);
	if (d != NULL) {
		err = mkdir_0700(ldir);
		while (err == 0 && (e = readdir(d)) != NULL) {
			if (e->d_name[0] == '.')
				continue;
			from = path_fmt2(sdir, e->d_name, NULL);
			to = path_fmt2(ldir, e->d_name, NULL);
			err = rename_into(from, to);
			free(from);
			free(to);
		}
		closedir(d);
		if (err == 0)
			err = eng_fsync_dir(ldir);
	}
	free(sdir);
	free(ldir);
	if (err != 0)
		return err;

	/* The row: the snapshot's keyring opens the restored database's MK. */
	err = ENG_EMODIFIED;
	for (int attempt = 0; attempt < 8 && err == ENG_EMODIFIED; attempt++) {
		if ((err = dir_alias_get_id(op->srv->dir, id, &live)) != 0)
			return err;
		err = dir_alias_set_keyring(op->srv->dir, id,
					    live.keyring_version,
					    op->snap.keyring,
					    op->snap.keyring_len, NULL);
		dir_alias_clear(&live);
	}
	if (err == 0)
		err = dir_alias_set_forwards(op->srv->dir, id, op->snap.kind,
					     (const char *const *)op->snap.forwards,
					     op->snap.n_forwards);
	if (err == 0)
		err = dir_alias_set_quota(op->srv->dir, id,
					  op->snap.quota_bytes);
	return err;
}

static void restore_files_done(void *ctx, int result)
{
	struct restore_op *op = ctx;

	if (result != 0) {
		eng_log(ENG_LOG_ERROR, "alias %s: restore from %s failed: %s",
			op->snap.id, op->stage, eng_strerror(result));
		srv_fail(op->req, result);
	} else {
		eng_log(ENG_LOG_INFO, "alias %s restored from a snapshot",
			op->snap.id);
		srv_reply(op->req);
	}
	restore_op_free(op);
}

static void restore_lookup_done(void *ctx, int result)
{
	struct restore_op *op = ctx;
	int err;

	if (result != 0) {
		srv_fail(op->req, result);
		restore_op_free(op);
		return;
	}
	/* Its sessions end now; work they queued earlier runs first. */
	(void)srv_sessions_end_alias(op->srv->aliases, op->snap.id);
	err = srv_alias_submit(op->srv->aliases, op->snap.id,
			       restore_files_work, restore_files_done, op);
	if (err != 0)
		restore_files_done(op, err);
}

void srv_op_restore_alias(srv_req *req)
{
	struct restore_op *op = eng_calloc(1, sizeof(*op));
	int err;

	op->req = req;
	op->srv = req->srv;
	err = rpc_get_str(&req->args, RPC_T_ALIAS, &op->address);
	if (err == 0)
		err = rpc_get_str(&req->args, RPC_T_PATH, &op->stage);
	if (err == 0 && !stage_ok(req->srv, op->stage))
		err = ENG_EINVAL;
	if (err == 0)
		err = srv_blocking(req->srv, restore_lookup_work,
				   restore_lookup_done, op);
	if (err != 0) {
		restore_op_free(op);
		srv_fail(req, err);
	}
}
