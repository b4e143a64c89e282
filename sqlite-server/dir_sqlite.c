/*
 * The embedded directory backend: one SQLite file (directory.db), plain
 * SQLite (no key: the directory holds no secret in the clear; keyrings are
 * wrapped by their passwords), mode 0600, WAL, synchronous=FULL.
 *
 * Schema (version 1):
 *   domain (name PK, created)
 *   alias  (id PK, address UNIQUE, domain, kind, forwards, keyring,
 *           keyring_version, public_key, quota_bytes, created, updated)
 *   schema_version (version PK, applied)
 *
 * Invariants, kept by every writer:
 *  - alias.domain is a row of domain (alias insert checks it and domain
 *    remove deletes or refuses in the same IMMEDIATE transaction);
 *  - alias.address is lower-case, unique, and ends in "@" || alias.domain;
 *  - forwards is NULL or the targets joined by '\n' (an address cannot
 *    hold '\n'), 1..DIR_MAX_FORWARDS of them;
 *  - keyring IS NULL exactly when keyring_version = 0, and then
 *    public_key IS NULL too; kind & DIR_MAILBOX implies a keyring.
 * Every write runs in BEGIN IMMEDIATE ... COMMIT, so two processes never
 * deadlock upgrading a read lock, and COMMIT returns after the WAL is
 * synced.
 */
#include "dir_private.h"
#include "eng_error.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BUSY_TIMEOUT_MS 5000

typedef struct dsql {
	sqlite3 *db;
	char *path;
} dsql;

/* Schema version 1: SQL that SQLite 3.15 runs (no UPSERT, no RETURNING). */
static const char schema_v1[] =
	"CREATE TABLE domain (name TEXT PRIMARY KEY NOT NULL,"
	" created INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE alias ("
	" id TEXT PRIMARY KEY NOT NULL,"
	" address TEXT NOT NULL UNIQUE,"
	" domain TEXT NOT NULL,"
	" kind INTEGER NOT NULL,"
	" forwards TEXT,"
	" keyring BLOB,"
	" keyring_version INTEGER NOT NULL,"
	" public_key BLOB,"
	" quota_bytes INTEGER NOT NULL,"
	" created INTEGER NOT NULL,"
	" updated INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE INDEX alias_domain ON alias (domain, address);";

/*
 * Forward migrations: migrations[i] takes the file from version i to
 * i + 1. A file above DIR_SCHEMA_VERSION is refused (ENG_ENEWER).
 */
static const char *const migrations[] = {
	schema_v1,
};

static const char alias_columns[] =
	"id, address, domain, kind, forwards, keyring, keyring_version,"
	" public_key, quota_bytes, created";

static inline dsql *impl(dir *d)
{
	return d->impl;
}

static int sql_err(dsql *s, int rc, const char *what)
{
	int primary = rc & 0xff;

	if (primary == SQLITE_OK || primary == SQLITE_DONE ||
	    primary == SQLITE_ROW)
		return 0;
	/* A taken name is an answer, not a fault: only debug-log it. */
	eng_log(primary == SQLITE_CONSTRAINT ? ENG_LOG_DEBUG : ENG_LOG_WARN, "%s: %s: %s", s->path, what,
		s->db != NULL ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
	switch (primary) {
	case SQLITE_FULL:
		return ENG_ENOSPC;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return ENG_EBUSY;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
	case SQLITE_FORMAT:
		return ENG_ECORRUPT;
	case SQLITE_NOMEM:
		eng_oom(0);
	case SQLITE_CONSTRAINT:
		return ENG_EEXIST;
	case SQLITE_TOOBIG:
		return ENG_ELIMIT;
	default:
		return ENG_EIO;
	}
}

static sqlite3_stmt *prepare(dsql *s, const char *sql, int *err_r)
{
	sqlite3_stmt *stmt = NULL;
	int rc = sqlite3_prepare_v2(s->db, sql, -1, &stmt, NULL);

	if (rc != SQLITE_OK) {
		*err_r = sql_err(s, rc, "prepare");
		if (*err_r == 0)
			*err_r = ENG_EIO;
		return NULL;
	}
	*err_r = 0;
	return stmt;
}

static int exec(dsql *s, const char *sql)
{
	int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : sql_err(s, rc, "exec");
}

/* Steps a write statement to its end and finalises it. */
static int step_done(dsql *s, sqlite3_stmt *stmt)
{
	int rc = sqlite3_step(stmt);

	sqlite3_finalize(stmt);
	if (rc == SQLITE_DONE || rc == SQLITE_ROW)
		return 0;
	return sql_err(s, rc, "step");
}

static int tx_begin(dsql *s)
{
	return exec(s, "BEGIN IMMEDIATE");
}

static int tx_commit(dsql *s)
{
	return exec(s, "COMMIT");
}

static void tx_rollback(dsql *s)
{
	/* After a failed COMMIT SQLite may have rolled back already. */
	if (!sqlite3_get_autocommit(s->db))
		(void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

/* Ends a transaction: commit if err is 0, else roll back. */
static int tx_end(dsql *s, int err)
{
	if (err == 0 && (err = tx_commit(s)) == 0)
		return 0;
	tx_rollback(s);
	return err;
}

/* ---- schema ---- */

static int schema_version(dsql *s, int *version_r)
{
	sqlite3_stmt *stmt;
	int err, rc;

	stmt = prepare(s, "SELECT count(*) FROM sqlite_master WHERE "
		       "type = 'table' AND name = 'schema_version'", &err);
	if (stmt == NULL)
		return err;
	rc = sqlite3_step(stmt);
	if (rc != SQLITE_ROW) {
		sqlite3_finalize(stmt);
		return sql_err(s, rc, "read schema");
	}
	*version_r = sqlite3_column_int(stmt, 0);
	sqlite3_finalize(stmt);
	if (*version_r == 0) {
		/* A fresh file has no table at all; anything else without a
		 * schema_version table is not ours. */
		stmt = prepare(s, "SELECT count(*) FROM sqlite_master", &err);
		if (stmt == NULL)
			return err;
		rc = sqlite3_step(stmt);
		err = rc == SQLITE_ROW && sqlite3_column_int(stmt, 0) == 0 ?
		      0 : ENG_ECORRUPT;
		sqlite3_finalize(stmt);
		return err;
	}
	stmt = prepare(s, "SELECT max(version) FROM schema_version", &err);
	if (stmt == NULL)
		return err;
	rc = sqlite3_step(stmt);
	*version_r = rc == SQLITE_ROW ? sqlite3_column_int(stmt, 0) : -1;
	sqlite3_finalize(stmt);
	if (rc != SQLITE_ROW)
		return sql_err(s, rc, "read schema version");
	return *version_r > 0 ? 0 : ENG_ECORRUPT;
}

static int migrate(dsql *s, int from)
{
	int to = (int)(sizeof(migrations) / sizeof(migrations[0]));
	sqlite3_stmt *stmt;
	int err;

	if ((err = tx_begin(s)) != 0)
		return err;
	/* Re-read inside the write lock: another process may have created
	 * or migrated the file since we looked. */
	if ((err = schema_version(s, &from)) != 0)
		return tx_end(s, err);
	if (from > to)
		return tx_end(s, ENG_ENEWER);
	if (from == 0)
		err = exec(s, "CREATE TABLE schema_version (version INTEGER "
			   "PRIMARY KEY NOT NULL, applied INTEGER NOT NULL)");
	for (int v = from; err == 0 && v < to; v++) {
		if ((err = exec(s, migrations[v])) != 0)
			break;
		stmt = prepare(s, "INSERT INTO schema_version (version, applied)"
			       " VALUES (?, ?)", &err);
		if (stmt == NULL)
			break;
		sqlite3_bind_int(stmt, 1, v + 1);
		sqlite3_bind_int64(stmt, 2, (int64_t)time(NULL));
		err = step_done(s, stmt);
	}
	err = tx_end(s, err);
	if (err == 0 && from != 0 && from < to)
		eng_log(ENG_LOG_INFO, "%s: directory schema migrated from %d "
			"to %d", s->path, from, to);
	return err;
}

static int set_pragmas(dsql *s)
{
	sqlite3_stmt *stmt;
	int err, rc;

	/* journal_mode answers with the mode it is in: check it took. */
	stmt = prepare(s, "PRAGMA journal_mode = WAL", &err);
	if (stmt == NULL)
		return err;
	rc = sqlite3_step(stmt);
	if (rc != SQLITE_ROW || strcmp((const char *)
			sqlite3_column_text(stmt, 0), "wal") != 0) {
		err = rc != SQLITE_ROW ? sql_err(s, rc, "journal_mode") : 0;
		sqlite3_finalize(stmt);
		eng_log(ENG_LOG_ERROR, "%s: cannot enter WAL mode", s->path);
		return err != 0 ? err : ENG_EIO;
	}
	sqlite3_finalize(stmt);
	return exec(s, "PRAGMA synchronous = FULL");
}

/*
 * Creates the file with mode 0600 before SQLite sees it, whatever the
 * umask: SQLite gives the -wal and -shm files the mode of the database
 * file, so they inherit it. An existing file with a looser mode is
 * tightened (with a warning): the directory lists every address.
 */
static int prepare_file(const char *path)
{
	struct stat sb;
	int fd;

	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		eng_log(ENG_LOG_ERROR, "%s: cannot open: %s", path,
			strerror(errno));
		return errno == ENOENT ? ENG_ENOTFOUND :
		       errno == ENOSPC ? ENG_ENOSPC : ENG_EIO;
	}
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		return ENG_EIO;
	}
	if ((sb.st_mode & 0777) != 0600) {
		if (sb.st_size != 0)
			eng_log(ENG_LOG_WARN, "%s: mode %03o tightened to 0600",
				path, (unsigned)(sb.st_mode & 0777));
		if (fchmod(fd, 0600) != 0) {
			close(fd);
			return ENG_EIO;
		}
	}
	close(fd);
	return 0;
}

static void dsql_close(dir *d)
{
	dsql *s = impl(d);

	if (s == NULL)
		return;
	/* Fold the WAL back so a closed directory is one file (backups). */
	(void)sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE,
					NULL, NULL);
	sqlite3_close(s->db);
	free(s->path);
	free(s);
	d->impl = NULL;
}

/* ---- domains ---- */

static int dsql_domain_add(dir *d, const char *domain, int64_t now)
{
	dsql *s = impl(d);
	sqlite3_stmt *stmt;
	int err;

	stmt = prepare(s, "INSERT INTO domain (name, created) VALUES (?, ?)",
		       &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, domain, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, now);
	return step_done(s, stmt);
}

/* Runs a one-row, one-integer query with one text parameter. */
static int query_int(dsql *s, const char *sql, const char *param,
		     int64_t *value_r)
{
	sqlite3_stmt *stmt;
	int err, rc;

	stmt = prepare(s, sql, &err);
	if (stmt == NULL)
		return err;
	if (param != NULL)
		sqlite3_bind_text(stmt, 1, param, -1, SQLITE_STATIC);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		*value_r = sqlite3_column_int64(stmt, 0);
	sqlite3_finalize(stmt);
	if (rc == SQLITE_ROW)
		return 0;
	return rc == SQLITE_DONE ? ENG_ENOTFOUND : sql_err(s, rc, "query");
}

static int dsql_domain_exists(dir *d, const char *domain)
{
	int64_t n = 0;
	int err = query_int(impl(d), "SELECT count(*) FROM domain WHERE "
			    "name = ?", domain, &n);

	return err != 0 ? err : n > 0;
}

static int dsql_domain_remove(dir *d, const char *domain, bool force)
{
	dsql *s = impl(d);
	sqlite3_stmt *stmt;
	int64_t n = 0;
	int err;

	if ((err = tx_begin(s)) != 0)
		return err;
	if ((err = query_int(s, "SELECT count(*) FROM domain WHERE name = ?",
			     domain, &n)) != 0)
		return tx_end(s, err);
	if (n == 0)
		return tx_end(s, ENG_ENOTFOUND);
	if ((err = query_int(s, "SELECT count(*) FROM alias WHERE domain = ?",
			     domain, &n)) != 0)
		return tx_end(s, err);
	if (n > 0 && !force)
		return tx_end(s, ENG_EPERM);
	stmt = prepare(s, "DELETE FROM alias WHERE domain = ?", &err);
	if (stmt == NULL)
		return tx_end(s, err);
	sqlite3_bind_text(stmt, 1, domain, -1, SQLITE_STATIC);
	if ((err = step_done(s, stmt)) != 0)
		return tx_end(s, err);
	stmt = prepare(s, "DELETE FROM domain WHERE name = ?", &err);
	if (stmt == NULL)
		return tx_end(s, err);
	sqlite3_bind_text(stmt, 1, domain, -1, SQLITE_STATIC);
	return tx_end(s, step_done(s, stmt));
}

static int dsql_domain_list(dir *d, char ***domains_r, size_t *n_r)
{
	dsql *s = impl(d);
	sqlite3_stmt *stmt;
	char **v = NULL;
	size_t n = 0, cap = 0;
	int err, rc;

	stmt = prepare(s, "SELECT name FROM domain ORDER BY name", &err);
	if (stmt == NULL)
		return err;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap == 0 ? 8 : cap * 2;
			v = eng_realloc(v, cap * sizeof(*v));
		}
		v[n++] = eng_strdup((const char *)sqlite3_column_text(stmt, 0));
	}
	sqlite3_finalize(stmt);
	if (rc != SQLITE_DONE) {
		dir_strv_free(&v, n);
		return sql_err(s, rc, "list domains");
	}
	*domains_r = v;
	*n_r = n;
	return 0;
}

/* ---- aliases ---- */

static char *join_forwards(char *const *forwards, size_t n)
{
	size_t len = 0;
	char *out, *p;

	if (n == 0)
		return NULL;
	for (size_t i = 0; i < n; i++)
		len += strlen(forwards[i]) + 1;
	out = p = eng_malloc(len);
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(forwards[i]);

		memcpy(p, forwards[i], l);
		p += l;
		*p++ = i + 1 < n ? '\n' : '\0';
	}
	return out;
}

static int split_forwards(const char *joined, char ***v_r, size_t *n_r)
{
	char **v = NULL;
	size_t n = 0;
	const char *p = joined;

	*v_r = NULL;
	*n_r = 0;
	if (joined == NULL)
		return 0;
	for (;;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);

		if (n == DIR_MAX_FORWARDS) {
			dir_strv_free(&v, n);
			return ENG_ECORRUPT;
		}
		v = eng_realloc(v, (n + 1) * sizeof(*v));
		v[n++] = eng_strndup(p, len);
		if (nl == NULL)
			break;
		p = nl + 1;
	}
	if (dir_forwards_check(v, n) != 0) {
		dir_strv_free(&v, n);
		return ENG_ECORRUPT;
	}
	*v_r = v;
	*n_r = n;
	return 0;
}

/* Reads the row at stmt's cursor (columns as in alias_columns). */
static int read_alias(dsql *s, sqlite3_stmt *stmt, dir_alias *a)
{
	const char *id = (const char *)sqlite3_column_text(stmt, 0);
	const char *address = (const char *)sqlite3_column_text(stmt, 1);
	const char *domain = (const char *)sqlite3_column_text(stmt, 2);
	const void *keyring = sqlite3_column_blob(stmt, 5);
	int keyring_len = sqlite3_column_bytes(stmt, 5);
	const void *pk;
	int err;

	memset(a, 0, sizeof(*a));
	if (id == NULL || !dir_valid_id(id) || address == NULL ||
	    domain == NULL)
		goto corrupt;
	memcpy(a->id, id, DIR_ID_HEX_LEN + 1);
	a->address = eng_strdup(address);
	a->domain = eng_strdup(domain);
	a->kind = (unsigned)sqlite3_column_int(stmt, 3);
	err = split_forwards((const char *)sqlite3_column_text(stmt, 4),
			     &a->forwards, &a->n_forwards);
	if (err != 0)
		goto corrupt;
	if (keyring != NULL && keyring_len > 0) {
		a->keyring = eng_malloc((size_t)keyring_len);
		memcpy(a->keyring, keyring, (size_t)keyring_len);
		a->keyring_len = (size_t)keyring_len;
	}
	a->keyring_version = (uint64_t)sqlite3_column_int64(stmt, 6);
	pk = sqlite3_column_blob(stmt, 7);
	if (pk != NULL) {
		if (sqlite3_column_bytes(stmt, 7) != ENG_PK_BYTES)
			goto corrupt;
		memcpy(a->public_key, pk, ENG_PK_BYTES);
		a->has_public_key = true;
	}
	a->quota_bytes = (uint64_t)sqlite3_column_int64(stmt, 8);
	a->created = sqlite3_column_int64(stmt, 9);
	if ((a->kind & DIR_MAILBOX) && a->keyring == NULL)
		goto corrupt;
	return 0;
corrupt:
	eng_log(ENG_LOG_ERROR, "%s: malformed alias row", s->path);
	dir_alias_clear(a);
	return ENG_ECORRUPT;
}

static int get_one(dsql *s, const char *where, const char *param,
		   dir_alias *a_r)
{
	char sql[256];
	sqlite3_stmt *stmt;
	int err, rc;

	snprintf(sql, sizeof(sql), "SELECT %s FROM alias WHERE %s = ?",
		 alias_columns, where);
	stmt = prepare(s, sql, &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, param, -1, SQLITE_STATIC);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		err = read_alias(s, stmt, a_r);
	else
		err = rc == SQLITE_DONE ? ENG_ENOTFOUND : sql_err(s, rc, "get");
	sqlite3_finalize(stmt);
	return err;
}

static int dsql_alias_get(dir *d, const char *address, dir_alias *a_r)
{
	return get_one(impl(d), "address", address, a_r);
}

static int dsql_alias_get_id(dir *d, const char *id, dir_alias *a_r)
{
	return get_one(impl(d), "id", id, a_r);
}

static int dsql_alias_insert(dir *d, const dir_alias *a)
{
	dsql *s = impl(d);
	sqlite3_stmt *stmt;
	char *fw;
	int64_t n = 0;
	int err;

	if ((err = tx_begin(s)) != 0)
		return err;
	if ((err = query_int(s, "SELECT count(*) FROM domain WHERE name = ?",
			     a->domain, &n)) != 0)
		return tx_end(s, err);
	if (n == 0)
		return tx_end(s, ENG_ENOTFOUND);
	stmt = prepare(s, "INSERT INTO alias (id, address, domain, kind,"
		       " forwards, keyring, keyring_version, public_key,"
		       " quota_bytes, created, updated)"
		       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", &err);
	if (stmt == NULL)
		return tx_end(s, err);
	fw = join_forwards(a->forwards, a->n_forwards);
	sqlite3_bind_text(stmt, 1, a->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(stmt, 2, a->address, -1, SQLITE_STATIC);
	sqlite3_bind_text(stmt, 3, a->domain, -1, SQLITE_STATIC);
	sqlite3_bind_int(stmt, 4, (int)a->kind);
	if (fw != NULL)
		sqlite3_bind_text(stmt, 5, fw, -1, SQLITE_TRANSIENT);
	if (a->keyring != NULL)
		sqlite3_bind_blob(stmt, 6, a->keyring, (int)a->keyring_len,
				  SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 7, (int64_t)a->keyring_version);
	if (a->has_public_key)
		sqlite3_bind_blob(stmt, 8, a->public_key, ENG_PK_BYTES,
				  SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 9, (int64_t)a->quota_bytes);
	sqlite3_bind_int64(stmt, 10, a->created);
	sqlite3_bind_int64(stmt, 11, a->created);
	free(fw);
	return tx_end(s, step_done(s, stmt));
}

static int dsql_alias_list(dir *d, const char *domain, dir_alias **v_r,
			   size_t *n_r)
{
	dsql *s = impl(d);
	char sql[256];
	sqlite3_stmt *stmt;
	dir_alias *v = NULL;
	size_t n = 0, cap = 0;
	int64_t exists = 0;
	int err = 0, rc;

	/* One read transaction, so the domain check and the rows agree. */
	if ((err = exec(s, "BEGIN")) != 0)
		return err;
	if (domain != NULL) {
		err = query_int(s, "SELECT count(*) FROM domain WHERE name = ?",
				domain, &exists);
		if (err == 0 && exists == 0)
			err = ENG_ENOTFOUND;
		if (err != 0)
			goto out;
	}
	snprintf(sql, sizeof(sql), "SELECT %s FROM alias %s ORDER BY address",
		 alias_columns, domain != NULL ? "WHERE domain = ?" : "");
	if ((stmt = prepare(s, sql, &err)) == NULL)
		goto out;
	if (domain != NULL)
		sqlite3_bind_text(stmt, 1, domain, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap == 0 ? 8 : cap * 2;
			v = eng_realloc(v, cap * sizeof(*v));
		}
		if ((err = read_alias(s, stmt, &v[n])) != 0)
			break;
		n++;
	}
	if (err == 0 && rc != SQLITE_DONE)
		err = sql_err(s, rc, "list aliases");
	sqlite3_finalize(stmt);
out:
	tx_rollback(s);
	if (err != 0) {
		dir_alias_array_free(&v, n);
		return err;
	}
	*v_r = v;
	*n_r = n;
	return 0;
}

/* Binds the id to a prepared write whose other parameters the caller
 * bound, runs it; ENG_ENOTFOUND if no row changed. */
static int update_by_id(dsql *s, sqlite3_stmt *stmt, int id_index,
			const char *id)
{
	int err;

	sqlite3_bind_text(stmt, id_index, id, -1, SQLITE_STATIC);
	if ((err = step_done(s, stmt)) != 0)
		return err;
	return sqlite3_changes(s->db) > 0 ? 0 : ENG_ENOTFOUND;
}

static int dsql_alias_remove(dir *d, const char *id)
{
	dsql *s = impl(d);
	sqlite3_stmt *stmt;
	int err;

	stmt = prepare(s, "DELETE FROM alias WHERE id = ?", &err);
	if (stmt == NULL)
		return err;
	return update_by_id(s, stmt, 1, id);
}

static int dsql_alias_set_keyring(dir *d, const char *id, uint64_t expected,
				  const uint8_t *keyring, size_t len,
				  const uint8_t *public_key)
{
	dsql *s = impl(d);
	sqlite3_stmt *stmt;
	int64_t n = 0;
	int err;

	/* The version test is part of the UPDATE, so the compare and the
	 * swap are one atomic statement even across processes. */
	stmt = prepare(s, "UPDATE alias SET keyring = ?, public_key = ?,"
		       " keyring_version = keyring_version + 1, updated = ?"
		       " WHERE keyring_version = ? AND id = ?", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_blob(stmt, 1, keyring, (int)len, SQLITE_STATIC);
	sqlite3_bind_blob(stmt, 2, public_key, ENG_PK_BYTES, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 3, (int64_t)time(NULL));
	sqlite3_bind_int64(stmt, 4, (int64_t)expected);
	err = update_by_id(s, stmt, 5, id);
	if (err != ENG_ENOTFOUND)
		return err;
	err = query_int(s, "SELECT count(*) FROM alias WHERE id = ?", id, &n);
	if (err != 0)
		return err;
	return n > 0 ? ENG_EMODIFIED : ENG_ENOTFOUND;
}

static int dsql_alias_set_forwards(dir *d, const char *id, unsigned kind,
				   char *const *forwards, size_t n)
{
	dsql *s = impl(d);
	sqlite3_stmt *stmt;
	char *fw = join_forwards(forwards, n);
	int64_t exists = 0;
	int err;

	/* The keyring condition is in the WHERE: a mailbox kind is only
	 * stored on a row that has a keyring. */
	stmt = prepare(s, "UPDATE alias SET kind = ?, forwards = ?,"
		       " updated = ? WHERE (? = 0 OR keyring IS NOT NULL)"
		       " AND id = ?", &err);
	if (stmt == NULL) {
		free(fw);
		return err;
	}
	sqlite3_bind_int(stmt, 1, (int)kind);
	if (fw != NULL)
		sqlite3_bind_text(stmt, 2, fw, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(stmt, 3, (int64_t)time(NULL));
	sqlite3_bind_int(stmt, 4, (int)(kind & DIR_MAILBOX));
	free(fw);
	err = update_by_id(s, stmt, 5, id);
	if (err != ENG_ENOTFOUND)
		return err;
	err = query_int(s, "SELECT count(*) FROM alias WHERE id = ?", id,
			&exists);
	if (err != 0)
		return err;
	return exists > 0 ? ENG_EINVAL : ENG_ENOTFOUND;
}

static int dsql_alias_set_quota(dir *d, const char *id, uint64_t quota_bytes)
{
	dsql *s = impl(d);
	sqlite3_stmt *stmt;
	int err;

	stmt = prepare(s, "UPDATE alias SET quota_bytes = ?, updated = ?"
		       " WHERE id = ?", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, (int64_t)quota_bytes);
	sqlite3_bind_int64(stmt, 2, (int64_t)time(NULL));
	return update_by_id(s, stmt, 3, id);
}

static const struct dir_ops dsql_ops = {
	.name = "embedded",
	.close = dsql_close,
	.domain_add = dsql_domain_add,
	.domain_remove = dsql_domain_remove,
	.domain_exists = dsql_domain_exists,
	.domain_list = dsql_domain_list,
	.alias_insert = dsql_alias_insert,
	.alias_get = dsql_alias_get,
	.alias_get_id = dsql_alias_get_id,
	.alias_list = dsql_alias_list,
	.alias_remove = dsql_alias_remove,
	.alias_set_keyring = dsql_alias_set_keyring,
	.alias_set_forwards = dsql_alias_set_forwards,
	.alias_set_quota = dsql_alias_set_quota,
};

int dir_sqlite_open(dir *d, const char *path)
{
	dsql *s;
	int rc, err, version;

	if ((err = prepare_file(path)) != 0)
		return err;
	s = eng_calloc(1, sizeof(*s));
	s->path = eng_strdup(path);
	/* NOMUTEX: the handle's own mutex serialises every call. */
	rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE |
			     SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		err = sql_err(s, rc, "open");
		goto fail;
	}
	sqlite3_extended_result_codes(s->db, 1);
	sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
	if ((err = schema_version(s, &version)) != 0)
		goto fail;
	if (version > DIR_SCHEMA_VERSION) {
		eng_log(ENG_LOG_ERROR, "%s: directory schema version %d is "
			"newer than %d", path, version, DIR_SCHEMA_VERSION);
		err = ENG_ENEWER;
		goto fail;
	}
	if ((err = set_pragmas(s)) != 0)
		goto fail;
	if (version < DIR_SCHEMA_VERSION && (err = migrate(s, version)) != 0)
		goto fail;
	d->ops = &dsql_ops;
	d->impl = s;
	return 0;
fail:
	sqlite3_close(s->db);
	free(s->path);
	free(s);
	return err;
}
