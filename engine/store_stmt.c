/*
 * The prepared-statement cache of an open store (bench/README.md, "Engine:
 * prepared-statement cache"): store_prepare hands out one prepared statement
 * per SQL text and store_release resets it for the next caller, instead of
 * a prepare and a finalize per engine call.
 *
 * Rules:
 *  - keyed by the SQL text (FNV-1a, then strcmp with sqlite3_sql()), so two
 *    literals with the same text share one statement and a text built in a
 *    buffer (a bounded set, e.g. one per table) finds its own;
 *  - SQL built from input (uid sets, search queries) uses store_prepare_once:
 *    never cached. The cache holds at most STMT_CACHE_MAX statements; past
 *    that, store_prepare falls back to prepare-once (nothing is evicted);
 *  - a cached statement handed out and not yet released is "in use": a
 *    nested caller asking for the same SQL (a callback run while the outer
 *    one steps) gets a fresh statement, which store_release finalizes;
 *  - every store_prepare / store_prepare_once is paired with store_release
 *    (or store_step_done) on every path: a statement left stepping keeps a
 *    read transaction open and blocks WAL checkpoints. Debug builds assert
 *    at eng_store_close that no statement is handed out or left stepping.
 * SQLCipher 3.4.1 (Debian 12) is SQLite 3.15: no sqlite3_prepare_v3, so no
 * SQLITE_PREPARE_PERSISTENT; prepare_v2 is used and the statement kept.
 */
#include "store_private.h"
#include "eng_error.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define STMT_CACHE_SLOTS 256u           /* a power of two */
#define STMT_CACHE_MAX 160u             /* < SLOTS: probes always end */

struct stmt_slot {
	sqlite3_stmt *stmt;             /* NULL: empty */
	uint32_t hash;
	bool in_use;
};

struct store_stmt_cache {
	unsigned count;
	struct stmt_slot slots[STMT_CACHE_SLOTS];
};

static uint32_t sql_hash(const char *sql)
{
	uint32_t h = 2166136261u;

	for (const unsigned char *p = (const unsigned char *)sql; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h;
}

/* The slot holding sql, or the empty slot where it would go. */
static struct stmt_slot *cache_find(struct store_stmt_cache *c,
				    const char *sql, uint32_t hash)
{
	unsigned i = hash & (STMT_CACHE_SLOTS - 1);

	for (;;) {
		struct stmt_slot *s = &c->slots[i];

		if (s->stmt == NULL || (s->hash == hash &&
		    strcmp(sqlite3_sql(s->stmt), sql) == 0))
			return s;
		i = (i + 1) & (STMT_CACHE_SLOTS - 1);
	}
}

sqlite3_stmt *store_prepare_once(eng_store *st, const char *sql, int *err_r)
{
	sqlite3_stmt *stmt = NULL;
	int rc = sqlite3_prepare_v2(st->db, sql, -1, &stmt, NULL);

	if (rc != SQLITE_OK) {
		eng_log(ENG_LOG_ERROR, "prepare failed: %s: %s",
			sqlite3_errmsg(st->db), sql);
		sqlite3_finalize(stmt);
		*err_r = store_err(st, rc, "prepare");
		if (*err_r == 0)
			*err_r = ENG_EIO;
		return NULL;
	}
	*err_r = 0;
	return stmt;
}

sqlite3_stmt *store_prepare(eng_store *st, const char *sql, int *err_r)
{
	uint32_t hash = sql_hash(sql);
	struct stmt_slot *s;
	sqlite3_stmt *stmt;

	/* SQLite ends the whole transaction itself on some errors (a full
	 * disk or an I/O error in a statement without a statement journal).
	 * A caller that still thinks it is inside one must not go on in
	 * autocommit mode, where each statement would commit on its own:
	 * every statement fails until the transaction is rolled back. */
	if (st->tx_depth > 0 && sqlite3_get_autocommit(st->db)) {
		eng_log(ENG_LOG_ERROR, "statement refused: the transaction "
			"was rolled back by SQLite after an error");
		*err_r = ENG_EIO;
		return NULL;
	}
	if (st->stmts == NULL)
		st->stmts = eng_calloc(1, sizeof(*st->stmts));
	s = cache_find(st->stmts, sql, hash);
	if (s->stmt != NULL) {
		if (s->in_use)          /* nested use of the same SQL */
			return store_prepare_once(st, sql, err_r);
		s->in_use = true;
		*err_r = 0;
		return s->stmt;
	}
	stmt = store_prepare_once(st, sql, err_r);
	if (stmt == NULL || st->stmts->count >= STMT_CACHE_MAX)
		return stmt;
	s->stmt = stmt;
	s->hash = hash;
	s->in_use = true;
	st->stmts->count++;
	return stmt;
}

void store_release(eng_store *st, sqlite3_stmt *stmt)
{
	struct stmt_slot *s;
	const char *sql;

	if (stmt == NULL)
		return;
	sql = sqlite3_sql(stmt);
	if (st->stmts != NULL && sql != NULL) {
		s = cache_find(st->stmts, sql, sql_hash(sql));
		if (s->stmt == stmt) {
			assert(s->in_use);
			sqlite3_reset(stmt);
			sqlite3_clear_bindings(stmt);
			s->in_use = false;
			return;
		}
	}
	sqlite3_finalize(stmt);
}

/* Logs a statement that should not be open, for the Debug asserts. */
static bool stmt_idle(const sqlite3_stmt *stmt, bool in_use)
{
	sqlite3_stmt *p = (sqlite3_stmt *)stmt;

	if (!in_use && !sqlite3_stmt_busy(p))
		return true;
	eng_log(ENG_LOG_ERROR, "statement %s: %s", in_use ? "not released" :
		"left stepping", sqlite3_sql(p));
	return false;
}

bool store_stmts_idle(const eng_store *st)
{
	bool idle = true;

	for (unsigned i = 0; st->stmts != NULL && i < STMT_CACHE_SLOTS; i++) {
		const struct stmt_slot *s = &st->stmts->slots[i];

		if (s->stmt != NULL && !stmt_idle(s->stmt, s->in_use))
			idle = false;
	}
	/* Prepare-once statements (and SQLite's own, e.g. FTS4's, which
	 * live until close) must not be left stepping either. */
	for (sqlite3_stmt *p = sqlite3_next_stmt(st->db, NULL); p != NULL;
	     p = sqlite3_next_stmt(st->db, p))
		if (!stmt_idle(p, false))
			idle = false;
	return idle;
}

void store_stmts_free(eng_store *st)
{
	/* A statement still handed out or stepping here was never released
	 * (a leak in an engine path): caught in Debug builds. */
	assert(store_stmts_idle(st));
	if (st->stmts == NULL)
		return;
	for (unsigned i = 0; i < STMT_CACHE_SLOTS; i++)
		sqlite3_finalize(st->stmts->slots[i].stmt);
	free(st->stmts);
	st->stmts = NULL;
}
