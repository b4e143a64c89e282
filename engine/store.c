/*
 * Opening, creating and migrating an alias database; transactions; error
 * mapping. docs/storage.md describes the schema.
 *
 * Invariants kept by every writer (checked by tests/unit/test_store.c):
 *  - mailbox.messages/unseen/deleted/size equal the aggregates over its
 *    message rows, and meta 'modseq' >= every MODSEQ stored anywhere;
 *  - mailbox.uidnext > every UID the mailbox has had;
 *  - content.refs equals the number of message rows that point at it;
 *    a content row with refs == 0 exists only while a body stream pins
 *    it, or until the next open after a crash (content_pin.c);
 *  - a spool id in spool_applied has its message committed.
 */
#include "store_private.h"
#include "sqlite_mem.h"
#include "cipher_provider.h"
#include "eng_error.h"
#include "keys.h"
#include "search_private.h"
#include "wal_vfs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/*
 * Every SQLCipher setting is stated, so that the file does not depend on a
 * build's defaults: SQLCipher 3.4.1 (Debian 12) has page size 1024 and
 * HMAC-SHA1 fixed; 4.x defaults to 4096 and HMAC-SHA512. A raw key skips
 * the password KDF; the HMAC key is still derived with fast_kdf_iter
 * rounds. The 4.x-only pragmas are no-ops on 3.4.1 (it ignores unknown
 * pragmas) and make 4.x read the file exactly as 3.4.1 wrote it.
 */
static const char *const cipher_settings[] = {
	"PRAGMA cipher_page_size = 4096",
	"PRAGMA kdf_iter = 64000",
	"PRAGMA fast_kdf_iter = 2",
	"PRAGMA cipher_use_hmac = ON",
	"PRAGMA cipher_hmac_algorithm = HMAC_SHA1",
	"PRAGMA cipher_kdf_algorithm = PBKDF2_HMAC_SHA1",
	"PRAGMA cipher_plaintext_header_size = 0",
};

/* Schema version 1. SQL that SQLite 3.15 runs: no UPSERT, no RETURNING,
 * no window functions, no generated columns. */
static const char schema_v1[] =
	"CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID;"
	"CREATE TABLE mailbox ("
	" id INTEGER PRIMARY KEY,"
	" name TEXT NOT NULL UNIQUE,"
	" uidvalidity INTEGER NOT NULL,"
	" uidnext INTEGER NOT NULL DEFAULT 1,"
	" highestmodseq INTEGER NOT NULL DEFAULT 1,"
	" special_use INTEGER NOT NULL DEFAULT 0,"
	" noselect INTEGER NOT NULL DEFAULT 0,"
	" messages INTEGER NOT NULL DEFAULT 0,"
	" unseen INTEGER NOT NULL DEFAULT 0,"
	" deleted INTEGER NOT NULL DEFAULT 0,"
	" size INTEGER NOT NULL DEFAULT 0,"
	" created INTEGER NOT NULL);"
	"CREATE TABLE subscription (name TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE content ("
	" id INTEGER PRIMARY KEY,"
	" sha256 BLOB NOT NULL UNIQUE,"
	" size INTEGER NOT NULL,"
	" refs INTEGER NOT NULL,"
	" chunks INTEGER NOT NULL,"
	" mime BLOB NOT NULL,"
	" header BLOB NOT NULL,"
	" subject TEXT, base_subject TEXT,"
	" from_addr TEXT, from_display TEXT,"
	" to_addr TEXT, to_display TEXT, cc_addr TEXT,"
	" sent_date INTEGER, message_id TEXT, preview TEXT);"
	"CREATE TABLE chunk ("
	" content_id INTEGER NOT NULL,"
	" seq INTEGER NOT NULL,"
	" raw_len INTEGER NOT NULL,"
	" data BLOB NOT NULL,"
	" PRIMARY KEY (content_id, seq)) WITHOUT ROWID;"
	"CREATE TABLE message ("
	" id INTEGER PRIMARY KEY,"
	" mailbox_id INTEGER NOT NULL,"
	" uid INTEGER NOT NULL,"
	" modseq INTEGER NOT NULL,"
	" flags INTEGER NOT NULL,"
	" internal_date INTEGER NOT NULL,"
	" save_date INTEGER NOT NULL,"
	" size INTEGER NOT NULL,"
	" content_id INTEGER NOT NULL,"
	" thread_id INTEGER NOT NULL,"
	" UNIQUE (mailbox_id, uid));"
	"CREATE INDEX message_modseq ON message (mailbox_id, modseq);"
	"CREATE INDEX message_content ON message (content_id);"
	"CREATE INDEX content_base_subject ON content (base_subject COLLATE NOCASE);"
	"CREATE TABLE keyword (id INTEGER PRIMARY KEY,"
	" name TEXT NOT NULL UNIQUE COLLATE NOCASE);"
	"CREATE TABLE message_keyword (message_id INTEGER NOT NULL,"
	" keyword_id INTEGER NOT NULL,"
	" PRIMARY KEY (message_id, keyword_id)) WITHOUT ROWID;"
	"CREATE INDEX message_keyword_kw ON message_keyword (keyword_id);"
	"CREATE TABLE expunged (mailbox_id INTEGER NOT NULL,"
	" uid INTEGER NOT NULL, modseq INTEGER NOT NULL,"
	" PRIMARY KEY (mailbox_id, uid)) WITHOUT ROWID;"
	"CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);"
	"CREATE TABLE thread_ref (msgid TEXT PRIMARY KEY NOT NULL,"
	" thread_id INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE spool_applied (id TEXT PRIMARY KEY NOT NULL,"
	" applied INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE idempotency (key TEXT PRIMARY KEY NOT NULL,"
	" mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL,"
	" modseq INTEGER NOT NULL, created INTEGER NOT NULL) WITHOUT ROWID;"
	/* FTS3, not FTS4: the same index, queries and fts_content, without
	 * FTS4's fts_docsize row and fts_stat totals, which only matchinfo
	 * ranking and deferred tokens read (nothing here does): two pages
	 * fewer per APPEND. Stores made before 2026-11-26 have the FTS4
	 * table (same columns, same answers); both are kept as they are. */
	"CREATE VIRTUAL TABLE fts USING fts3(header, body, tokenize=unicode61);"
	"CREATE TABLE schema_version (version INTEGER PRIMARY KEY NOT NULL,"
	" applied INTEGER NOT NULL);";

/* Schema version 2: the folded values of the header fields IMAP searches
 * by name (engine/search_fields.c), filled from the fts rows. */
static const char schema_v2[] =
	"CREATE TABLE header_field (name TEXT NOT NULL,"
	" content_id INTEGER NOT NULL, value BLOB NOT NULL,"
	" PRIMARY KEY (name, content_id)) WITHOUT ROWID;";

/* Schema version 3: header_field keyed by (content_id, name), so that a
 * message's rows sit side by side in one leaf page: keyed by name first,
 * an append wrote up to five leaf pages far apart (one per field name),
 * each a page to encrypt, to log in the WAL and to checkpoint. */
static const char schema_v3[] =
	"CREATE TABLE header_field_v3 (name TEXT NOT NULL,"
	" content_id INTEGER NOT NULL, value BLOB NOT NULL,"
	" PRIMARY KEY (content_id, name)) WITHOUT ROWID;"
	"INSERT INTO header_field_v3 (name, content_id, value)"
	" SELECT name, content_id, value FROM header_field"
	" ORDER BY content_id, name;"
	"DROP TABLE header_field;"
	"ALTER TABLE header_field_v3 RENAME TO header_field;";

/* Schema version 4: chunks written from now on go to body_chunk, a rowid
 * table keyed content id << 16 | seq (eng_chunk_rowid), each either a
 * zstd frame or, where zstd would not save an eighth, the raw bytes.
 * Raw ones are read in place with sqlite3_blob_read, straight into the
 * caller's buffer (one copy, no decompression: a chunk of the WITHOUT
 * ROWID chunk table went through SQLite's copy of its overflow pages
 * and then zstd). Chunks written before stay where they are and read as
 * before (message_read.c): nothing is rewritten. */
static const char schema_v4[] =
	"CREATE TABLE body_chunk (id INTEGER PRIMARY KEY, data BLOB NOT NULL);";

/*
 * Forward migrations: migrations[i] takes a database from version i to
 * i + 1: its SQL, then its fill function (NULL: none) for what SQL alone
 * cannot compute. A database with a version above ENG_SCHEMA_VERSION is
 * refused (ENG_ENEWER); one below is migrated at open in one transaction.
 */
static const struct {
	const char *sql;
	int (*fill)(eng_store *st);
} migrations[] = {
	{ schema_v1, NULL },
	{ schema_v2, search_fields_backfill },
	{ schema_v3, NULL },
	{ schema_v4, NULL },
};

static const struct {
	const char *name;
	uint32_t special_use;
} default_mailboxes[] = {
	{ "INBOX", 0 },
	{ "Drafts", ENG_SU_DRAFTS },
	{ "Sent", ENG_SU_SENT },
	{ "Trash", ENG_SU_TRASH },
	{ "Junk", ENG_SU_JUNK },
	{ "Archive", ENG_SU_ARCHIVE },
};

void eng_store_options_default(eng_store_options *opt)
{
	memset(opt, 0, sizeof(*opt));
	opt->busy_timeout_ms = 5000;
	opt->zstd_level = 3;
	opt->max_message_bytes = 256u * 1024 * 1024;
	eng_mime_limits_default(&opt->mime_limits);
}

int store_err(eng_store *st, int rc, const char *what)
{
	int primary = rc & 0xff;

	if (primary == SQLITE_OK || primary == SQLITE_DONE ||
	    primary == SQLITE_ROW)
		return 0;
	eng_log(ENG_LOG_WARN, "%s: %s: %s", st != NULL && st->path != NULL ?
		st->path : "store", what, sqlite3_errstr(rc));
	switch (primary) {
	case SQLITE_FULL:
		if (st != NULL)
			st->broken = true;
		return ENG_ENOSPC;
	case SQLITE_IOERR:
	case SQLITE_CANTOPEN:
		if (st != NULL)
			st->broken = true;
		return (rc == SQLITE_IOERR_NOMEM) ? ENG_EIO : ENG_EIO;
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

int store_exec(eng_store *st, const char *sql)
{
	int rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : store_err(st, rc, "exec");
}

/* store_exec for the few fixed statements every write transaction runs
 * (BEGIN, COMMIT, savepoints): from the statement cache, not parsed and
 * compiled again each time as sqlite3_exec does. */
static int store_exec_cached(eng_store *st, const char *sql)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st, sql, &err);

	return stmt != NULL ? store_step_done(st, stmt) : err;
}

int store_step_done(eng_store *st, sqlite3_stmt *stmt)
{
	int rc = sqlite3_step(stmt);

	store_release(st, stmt);
	if (rc == SQLITE_DONE || rc == SQLITE_ROW)
		return 0;
	return store_err(st, rc, "step");
}

int store_meta_get_int(eng_store *st, const char *key, int64_t *value_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT value FROM meta WHERE key = ?", &err);
	int rc;

	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		*value_r = sqlite3_column_int64(stmt, 0);
	store_release(st, stmt);
	if (rc == SQLITE_ROW)
		return 0;
	return rc == SQLITE_DONE ? ENG_ENOTFOUND : store_err(st, rc, "meta");
}

/*
 * An UPDATE of the one row, and an INSERT only when there was none. Not
 * INSERT OR REPLACE: a REPLACE may delete rows, so inside a transaction
 * SQLite runs it in a statement journal, which copies (and SQLCipher
 * encrypts) every page the statement touches, and it makes FTS flush its
 * pending terms under that savepoint: with the two meta writes of each
 * APPEND (next_thread, modseq) that was ~4 page encryptions per APPEND
 * on top of the ~28 pages it writes. Outside a transaction (no other
 * statement can come between the two in one) the REPLACE stays.
 */
int store_meta_set_int(eng_store *st, const char *key, int64_t value)
{
	int err;
	sqlite3_stmt *stmt;

	if (!sqlite3_get_autocommit(st->db)) {
		stmt = store_prepare(st, "UPDATE meta SET value = ? WHERE key = ?",
				     &err);
		if (stmt == NULL)
			return err;
		sqlite3_bind_int64(stmt, 1, value);
		sqlite3_bind_text(stmt, 2, key, -1, SQLITE_STATIC);
		if ((err = store_step_done(st, stmt)) != 0 ||
		    sqlite3_changes(st->db) > 0)
			return err;
		stmt = store_prepare(st, "INSERT INTO meta (key, value) "
				     "VALUES (?, ?)", &err);
	} else {
		stmt = store_prepare(st, "INSERT OR REPLACE INTO meta (key, "
				     "value) VALUES (?, ?)", &err);
	}
	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, value);
	return store_step_done(st, stmt);
}

int eng_store_tx_begin(eng_store *st)
{
	char sql[32];
	int err;

	if (st->read_tx)
		return ENG_EINVAL;
	if (st->tx_depth == 0) {
		/* IMMEDIATE: take the write lock now, so two writers never
		 * deadlock upgrading read locks. */
		err = store_exec_cached(st, "BEGIN IMMEDIATE");
		if (err != 0)
			return err;
		st->tx_modseq = 0;
		st->tx_content_next = 0;
	} else {
		snprintf(sql, sizeof(sql), "SAVEPOINT sp%d", st->tx_depth);
		if ((err = store_exec_cached(st, sql)) != 0)
			return err;
	}
	st->tx_depth++;
	return 0;
}

int eng_store_tx_commit(eng_store *st)
{
	char sql[32];
	int err;

	if (st->tx_depth <= 0)
		return ENG_EINVAL;
	if (st->tx_depth > 1) {
		snprintf(sql, sizeof(sql), "RELEASE sp%d", st->tx_depth - 1);
		err = store_exec_cached(st, sql);
		if (err == 0)
			st->tx_depth--;
		return err;
	}
	if (st->tx_modseq != 0) {
		err = store_meta_set_int(st, "modseq", (int64_t)st->tx_modseq);
		if (err != 0)
			return err;
	}
	/* synchronous=FULL: COMMIT returns after the WAL is fsynced. */
	err = store_exec_cached(st, "COMMIT");
	if (err != 0)
		return err;
	st->tx_depth = 0;
	st->tx_modseq = 0;
	st->tx_content_next = 0;
	return 0;
}

void eng_store_tx_rollback(eng_store *st)
{
	char sql[64];

	if (st->tx_depth <= 0)
		return;
	if (st->tx_depth > 1) {
		/* When SQLite has already rolled back the whole transaction
		 * there is no savepoint left: the outer levels' statements and
		 * commit then fail (store_prepare) until they roll back too. */
		if (!sqlite3_get_autocommit(st->db)) {
			snprintf(sql, sizeof(sql), "ROLLBACK TO sp%d; "
				 "RELEASE sp%d", st->tx_depth - 1,
				 st->tx_depth - 1);
			(void)sqlite3_exec(st->db, sql, NULL, NULL, NULL);
		}
		st->tx_depth--;
		return;
	}
	/* After a failed COMMIT SQLite may have rolled back already. */
	if (!sqlite3_get_autocommit(st->db))
		(void)sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	st->tx_depth = 0;
	st->tx_modseq = 0;
	st->tx_content_next = 0;
}

int eng_store_read_begin(eng_store *st)
{
	int err;
	sqlite3_stmt *stmt;

	if (st->read_depth++ > 0 || st->tx_depth > 0 ||
	    !sqlite3_get_autocommit(st->db))
		return 0;
	/* DEFERRED: the snapshot is taken by the first read, no write lock. */
	if ((stmt = store_prepare(st, "BEGIN", &err)) == NULL ||
	    (err = store_step_done(st, stmt)) != 0) {
		st->read_depth--;
		return err;
	}
	st->read_tx = true;
	return 0;
}

void eng_store_read_end(eng_store *st)
{
	int err;
	sqlite3_stmt *stmt;

	if (st->read_depth <= 0 || --st->read_depth > 0 || !st->read_tx)
		return;
	st->read_tx = false;
	store_chunk_blob_close(st);
	/* Ending a read-only transaction only drops its locks; should it
	 * fail, ROLLBACK does the same. */
	if ((stmt = store_prepare(st, "COMMIT", &err)) == NULL ||
	    store_step_done(st, stmt) != 0) {
		if (!sqlite3_get_autocommit(st->db))
			(void)sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	}
}

int store_tx_modseq(eng_store *st, uint64_t *modseq_r)
{
	int64_t cur;
	int err;

	if (st->tx_depth <= 0)
		return ENG_EINVAL;
	if (st->tx_modseq == 0) {
		err = store_meta_get_int(st, "modseq", &cur);
		if (err != 0)
			return err == ENG_ENOTFOUND ? ENG_ECORRUPT : err;
		st->tx_modseq = (uint64_t)cur + 1;
	}
	*modseq_r = st->tx_modseq;
	return 0;
}

/*
 * max(id) + 1 is the id SQLite itself would give the next content row (no
 * AUTOINCREMENT); the write lock is held, so only this transaction can
 * insert, and ids handed out but not inserted yet are skipped.
 */
int store_content_id_reserve(eng_store *st, int64_t *id_r)
{
	int err;
	sqlite3_stmt *stmt;
	int rc;
	int64_t next;

	if (st->tx_depth <= 0)
		return ENG_EINVAL;
	stmt = store_prepare(st, "SELECT coalesce(max(id), 0) + 1 FROM content",
			     &err);
	if (stmt == NULL)
		return err;
	rc = sqlite3_step(stmt);
	next = rc == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : 0;
	store_release(st, stmt);
	if (rc != SQLITE_ROW)
		return store_err(st, rc, "content id");
	if (next < st->tx_content_next)
		next = st->tx_content_next;
	st->tx_content_next = next + 1;
	*id_r = next;
	return 0;
}

static int schema_version(eng_store *st, int *version_r)
{
	int err;
	sqlite3_stmt *stmt;
	int rc;

	/* sqlite_master is the first read: a wrong key fails here. */
	stmt = store_prepare(st, "SELECT count(*) FROM sqlite_master WHERE "
			     "type = 'table' AND name = 'schema_version'", &err);
	if (stmt == NULL)
		return err;
	rc = sqlite3_step(stmt);
	if (rc != SQLITE_ROW) {
		store_release(st, stmt);
		return store_err(st, rc, "read schema");
	}
	if (sqlite3_column_int(stmt, 0) == 0) {
		store_release(st, stmt);
		*version_r = 0;
		return 0;
	}
	store_release(st, stmt);
	stmt = store_prepare(st, "SELECT max(version) FROM schema_version", &err);
	if (stmt == NULL)
		return err;
	rc = sqlite3_step(stmt);
	*version_r = rc == SQLITE_ROW ? sqlite3_column_int(stmt, 0) : -1;
	store_release(st, stmt);
	if (rc != SQLITE_ROW)
		return store_err(st, rc, "read schema version");
	return 0;
}

int eng_store_schema_version(eng_store *st)
{
	int v;

	return schema_version(st, &v) == 0 ? v : -1;
}

static int create_defaults(eng_store *st)
{
	int64_t now = (int64_t)time(NULL);
	int err;

	if ((err = store_meta_set_int(st, "modseq", 1)) != 0 ||
	    (err = store_meta_set_int(st, "uidvalidity", now)) != 0 ||
	    (err = store_meta_set_int(st, "quota_bytes", 0)) != 0 ||
	    (err = store_meta_set_int(st, "next_thread", 1)) != 0 ||
	    (err = store_meta_set_int(st, "created", now)) != 0)
		return err;
	for (size_t i = 0; i < sizeof(default_mailboxes) /
			       sizeof(default_mailboxes[0]); i++) {
		err = eng_mailbox_create(st, default_mailboxes[i].name,
					 default_mailboxes[i].special_use, NULL);
		if (err != 0)
			return err;
		err = eng_mailbox_subscribe(st, default_mailboxes[i].name, true);
		if (err != 0)
			return err;
	}
	return 0;
}

static int migrate(eng_store *st, int from)
{
	int to = (int)(sizeof(migrations) / sizeof(migrations[0]));
	int err;
	sqlite3_stmt *stmt;

	if ((err = eng_store_tx_begin(st)) != 0)
		return err;
	for (int v = from; v < to; v++) {
		if ((err = store_exec(st, migrations[v].sql)) != 0 ||
		    (migrations[v].fill != NULL &&
		     (err = migrations[v].fill(st)) != 0))
			goto fail;
		stmt = store_prepare(st, "INSERT INTO schema_version "
				     "(version, applied) VALUES (?, ?)", &err);
		if (stmt == NULL)
			goto fail;
		sqlite3_bind_int(stmt, 1, v + 1);
		sqlite3_bind_int64(stmt, 2, (int64_t)time(NULL));
		if ((err = store_step_done(st, stmt)) != 0)
			goto fail;
	}
	if (from == 0 && (err = create_defaults(st)) != 0)
		goto fail;
	if ((err = eng_store_tx_commit(st)) != 0)
		goto fail;
	if (from != 0)
		eng_log(ENG_LOG_INFO, "%s: schema migrated from %d to %d",
			st->path, from, to);
	return 0;
fail:
	eng_store_tx_rollback(st);
	return err;
}

/* Hex of a raw key inside a SQL string; lives in secret memory. */
static uint8_t *key_pragma(const uint8_t *key)
{
	static const char prefix[] = "PRAGMA key = \"x'";
	static const char suffix[] = "'\"";
	size_t len = sizeof(prefix) - 1 + ENG_DBKEY_BYTES * 2 + sizeof(suffix);
	uint8_t *sql = eng_secret_new(len);
	char *p = (char *)sql;

	memcpy(p, prefix, sizeof(prefix) - 1);
	p += sizeof(prefix) - 1;
	for (size_t i = 0; i < ENG_DBKEY_BYTES; i++) {
		static const char hex[] = "0123456789abcdef";

		*p++ = hex[key[i] >> 4];
		*p++ = hex[key[i] & 15];
	}
	memcpy(p, suffix, sizeof(suffix));
	return sql;
}

static int apply_settings(eng_store *st, const uint8_t *db_key);

/*
 * SQLCipher answers SQLITE_NOTADB both for a wrong key and for damage, and
 * after a page fails its HMAC the connection stays failed. So a second,
 * fresh connection reads page 1 alone (PRAGMA user_version reads only the
 * header there): if that works, the key is right and a later page is
 * damaged or missing (SQLite may then say SQLITE_CORRUPT for page 1 too,
 * when its header promises more pages than there are). Only when page 1
 * fails its HMAC (SQLITE_NOTADB) is a file that is a whole number of pages
 * taken to be a wrong key; anything else is damage.
 */
static int classify_notadb(eng_store *st, const uint8_t *db_key)
{
	eng_store probe = *st;
	struct stat sb;
	int rc = SQLITE_NOTADB;

	probe.db = NULL;
	if (sqlite3_open_v2(st->path, &probe.db, SQLITE_OPEN_READWRITE,
			    eng_sealed_vfs_name()) == SQLITE_OK &&
	    apply_settings(&probe, db_key) == 0)
		rc = sqlite3_exec(probe.db, "PRAGMA user_version", NULL, NULL,
				  NULL) & 0xff;
	sqlite3_close(probe.db);
	if (rc != SQLITE_NOTADB)
		return ENG_ECORRUPT;
	if (stat(st->path, &sb) != 0 || sb.st_size == 0 ||
	    sb.st_size % 4096 != 0)
		return ENG_ECORRUPT;
	return ENG_EAUTH;
}

static int apply_settings(eng_store *st, const uint8_t *db_key)
{
	int err = 0;

	if (!st->opt.plaintext) {
		uint8_t *sql = key_pragma(db_key);
		int rc = sqlite3_exec(st->db, (const char *)sql, NULL, NULL, NULL);

		eng_secret_free(&sql);
		if (rc != SQLITE_OK)
			return store_err(st, rc, "key");
		for (size_t i = 0; i < sizeof(cipher_settings) /
				       sizeof(cipher_settings[0]); i++) {
			if ((err = store_exec(st, cipher_settings[i])) != 0)
				return err;
		}
	}
	sqlite3_busy_timeout(st->db, st->opt.busy_timeout_ms);
	return 0;
}

static int apply_pragmas(eng_store *st)
{
	int err;
	sqlite3_stmt *stmt;
	int rc;

	/* journal_mode answers with the mode it is in: check it took. */
	stmt = store_prepare_once(st, "PRAGMA journal_mode = WAL", &err);
	if (stmt == NULL)
		return err;
	rc = sqlite3_step(stmt);
	if (rc != SQLITE_ROW) {
		err = store_err(st, rc, "journal_mode");
		store_release(st, stmt);
		return err != 0 ? err : ENG_EIO;
	}
	if (strcmp((const char *)sqlite3_column_text(stmt, 0), "wal") != 0) {
		store_release(st, stmt);
		eng_log(ENG_LOG_ERROR, "%s: cannot enter WAL mode", st->path);
		return ENG_EIO;
	}
	store_release(st, stmt);
	if ((err = store_exec(st, "PRAGMA synchronous = FULL")) != 0 ||
	    (err = store_exec(st, "PRAGMA temp_store = MEMORY")) != 0 ||
	    (err = store_exec(st, "PRAGMA foreign_keys = OFF")) != 0)
		return err;
	return 0;
}

/*
 * SQLite's process-wide settings, before its first use: no memory
 * statistics. With them (the default) every sqlite3_malloc and free takes
 * one global mutex, and Debian's SQLCipher is built without lookaside, so
 * an APPEND's thousands of small allocations (FTS tokens, cells) had its
 * pool threads queueing on that mutex (futex waits in the profile of 20
 * mailboxes appending at once). Nothing here reads the statistics.
 */
static pthread_once_t sqlite_global_once = PTHREAD_ONCE_INIT;

static void sqlite_global_config(void)
{
	/* SQLITE_MISUSE if SQLite is in use already: the default stays. */
	(void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
	(void)eng_sqlite_mem_install();    /* sqlite_mem.c: SQLCipher's lock */
}

void eng_store_global_init(void)
{
	(void)pthread_once(&sqlite_global_once, sqlite_global_config);
}

int eng_store_open(const char *path, const uint8_t *db_key,
		   const eng_store_options *opt, eng_store **st_r)
{
	eng_store *st;
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
	int rc, err, version;
	struct stat sb;

	*st_r = NULL;
	if (path == NULL || (db_key == NULL && (opt == NULL || !opt->plaintext)))
		return ENG_EINVAL;
	eng_store_global_init();
	(void)eng_cipher_provider_install(); /* once, before any keyed open */
	st = eng_calloc(1, sizeof(*st));
	st->path = eng_strdup(path);
	if (opt != NULL)
		st->opt = *opt;
	else
		eng_store_options_default(&st->opt);
	if (st->opt.busy_timeout_ms <= 0)
		st->opt.busy_timeout_ms = 5000;
	if (st->opt.max_message_bytes == 0)
		st->opt.max_message_bytes = 256u * 1024 * 1024;
	if (st->opt.mime_limits.max_depth == 0)
		eng_mime_limits_default(&st->opt.mime_limits);

	if (stat(path, &sb) != 0) {
		if (errno != ENOENT || !st->opt.create) {
			err = errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO;
			goto fail_nodb;
		}
		flags |= SQLITE_OPEN_CREATE;
	}
	/* WAL writes gathered per commit, and for an encrypted store pages
	 * of zeroes refused: engine/wal_vfs.c (needs the synchronous = FULL
	 * that apply_pragmas sets). */
	rc = sqlite3_open_v2(path, &st->db, flags, st->opt.plaintext ?
			     eng_wal_vfs_name() : eng_sealed_vfs_name());
	if (rc != SQLITE_OK) {
		err = store_err(st, rc, "open");
		goto fail;
	}
	sqlite3_extended_result_codes(st->db, 1);
	if ((err = apply_settings(st, db_key)) != 0)
		goto fail;
	err = schema_version(st, &version);
	if (err == ENG_ECORRUPT && !st->opt.plaintext)
		err = classify_notadb(st, db_key);
	if (err != 0)
		goto fail;
	/* An existing file with no schema (emptied, or truncated to 0
	 * bytes) is damage unless the caller asked to create: never answer
	 * it with a fresh, empty mailbox. */
	if (version == 0 && !st->opt.create) {
		eng_log(ENG_LOG_ERROR, "%s: no schema in an existing file", path);
		err = ENG_ECORRUPT;
		goto fail;
	}
	if (version > ENG_SCHEMA_VERSION) {
		eng_log(ENG_LOG_ERROR, "%s: schema version %d is newer than %d",
			path, version, ENG_SCHEMA_VERSION);
		err = ENG_ENEWER;
		goto fail;
	}
	if ((err = apply_pragmas(st)) != 0)
		goto fail;
	if (version < ENG_SCHEMA_VERSION && (err = migrate(st, version)) != 0)
		goto fail;
	/* Contents a body stream pinned when a crash came (content_pin.c);
	 * a failure (a full disk) leaves them for the next open. */
	if ((err = store_content_sweep(st)) != 0)
		eng_log(ENG_LOG_WARN, "%s: orphaned contents left: %s", path,
			eng_strerror(err));
	*st_r = st;
	return 0;
fail:
	store_stmts_free(st);
	sqlite3_close(st->db);
fail_nodb:
	free(st->path);
	free(st);
	return err;
}

int eng_store_checkpoint(eng_store *st)
{
	int rc = sqlite3_wal_checkpoint_v2(st->db, NULL,
					   SQLITE_CHECKPOINT_TRUNCATE,
					   NULL, NULL);

	return rc == SQLITE_OK ? 0 : store_err(st, rc, "checkpoint");
}

void eng_store_close(eng_store **stp)
{
	eng_store *st = *stp;

	if (st == NULL)
		return;
	*stp = NULL;
	if (st->tx_depth > 0)
		eng_store_tx_rollback(st);
	store_chunk_blob_close(st);
	store_stmts_free(st);
	if (!st->broken)
		(void)eng_store_checkpoint(st);
	if (sqlite3_close(st->db) != SQLITE_OK) {
		eng_log(ENG_LOG_ERROR, "%s: statements left open at close",
			st->path);
		sqlite3_close_v2(st->db);
	}
	free(st->path);
	free(st);
}

bool eng_store_needs_reopen(const eng_store *st)
{
	return st->broken;
}

static int run_check(eng_store *st, const char *pragma, eng_buf *report,
		     bool *ok_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare_once(st, pragma, &err);
	int rc;

	if (stmt == NULL)
		return err;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		const char *line = (const char *)sqlite3_column_text(stmt, 0);

		if (line == NULL || strcmp(line, "ok") == 0)
			continue;
		*ok_r = false;
		if (report != NULL)
			eng_buf_printf(report, "%s\n", line);
	}
	store_release(st, stmt);
	if (rc != SQLITE_DONE) {
		*ok_r = false;
		if (report != NULL)
			eng_buf_printf(report, "%s: %s\n", pragma,
				       sqlite3_errstr(rc));
	}
	return 0;
}

int eng_store_check(eng_store *st, eng_buf *report)
{
	bool ok = true;
	int err;

	if ((err = run_check(st, "PRAGMA integrity_check", report, &ok)) != 0)
		return err;
	/* cipher_integrity_check came with SQLCipher 4.0 (3.4.1 ignores
	 * the unknown pragma and returns no rows). */
	if (!st->opt.plaintext &&
	    (err = run_check(st, "PRAGMA cipher_integrity_check", report,
			     &ok)) != 0)
		return err;
	return ok ? 0 : ENG_ECORRUPT;
}

int eng_quota_get(eng_store *st, uint64_t *used_bytes_r,
		  uint64_t *limit_bytes_r, uint64_t *messages_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT coalesce(sum(size), 0), coalesce(sum(messages), 0) "
		"FROM mailbox", &err);
	int64_t limit = 0;
	int rc;

	if (stmt == NULL)
		return err;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW) {
		if (used_bytes_r != NULL)
			*used_bytes_r = (uint64_t)sqlite3_column_int64(stmt, 0);
		if (messages_r != NULL)
			*messages_r = (uint64_t)sqlite3_column_int64(stmt, 1);
	}
	store_release(st, stmt);
	if (rc != SQLITE_ROW)
		return store_err(st, rc, "quota");
	if ((err = store_meta_get_int(st, "quota_bytes", &limit)) != 0)
		return err;
	if (limit_bytes_r != NULL)
		*limit_bytes_r = (uint64_t)limit;
	return 0;
}

int eng_quota_set(eng_store *st, uint64_t limit_bytes)
{
	int err;

	if (limit_bytes > INT64_MAX)
		return ENG_EINVAL;
	if ((err = eng_store_tx_begin(st)) != 0)
		return err;
	if ((err = store_meta_set_int(st, "quota_bytes", (int64_t)limit_bytes)) != 0 ||
	    (err = eng_store_tx_commit(st)) != 0) {
		eng_store_tx_rollback(st);
		return err;
	}
	return 0;
}
