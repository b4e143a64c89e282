/*
 * Keywords (IMAP's user flags) of messages: the keyword table (a row per
 * distinct name, created on first use) and the rows that tie a message to
 * its keywords. Used by the append (message.c) and by STORE (flags.c).
 */
#include "store_private.h"
#include "eng_error.h"

#include <stdlib.h>
#include <string.h>

bool store_keyword_ok(const char *kw)
{
	size_t len = strlen(kw);

	if (len == 0 || len > ENG_KEYWORD_MAX || kw[0] == '\\')
		return false;
	/* IMAP atom characters only: no specials, no controls, no 8-bit. */
	for (const unsigned char *p = (const unsigned char *)kw; *p; p++) {
		if (*p <= 0x20 || *p >= 0x7f || strchr("(){%*\"\\]", *p) != NULL)
			return false;
	}
	return true;
}

int store_keyword_id(eng_store *st, const char *name, bool create,
		     int64_t *id_r)
{
	int err;
	sqlite3_stmt *stmt;
	int rc;

	if (!store_keyword_ok(name))
		return ENG_EINVAL;
	stmt = store_prepare(st, "SELECT id FROM keyword WHERE name = ?", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		*id_r = sqlite3_column_int64(stmt, 0);
	store_release(st, stmt);
	if (rc == SQLITE_ROW)
		return 0;
	if (rc != SQLITE_DONE)
		return store_err(st, rc, "keyword");
	if (!create)
		return ENG_ENOTFOUND;
	stmt = store_prepare(st, "INSERT INTO keyword (name) VALUES (?)", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	*id_r = sqlite3_last_insert_rowid(st->db);
	return 0;
}

int store_set_keywords(eng_store *st, int64_t message_rowid,
		       const char *const *keywords, size_t n)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"DELETE FROM message_keyword WHERE message_id = ?", &err);

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, message_rowid);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	for (size_t i = 0; i < n; i++) {
		int64_t kw;

		if ((err = store_keyword_id(st, keywords[i], true, &kw)) != 0)
			return err;
		stmt = store_prepare(st, "INSERT OR IGNORE INTO message_keyword "
				     "(message_id, keyword_id) VALUES (?, ?)",
				     &err);
		if (stmt == NULL)
			return err;
		sqlite3_bind_int64(stmt, 1, message_rowid);
		sqlite3_bind_int64(stmt, 2, kw);
		if ((err = store_step_done(st, stmt)) != 0)
			return err;
	}
	return 0;
}

int store_load_keywords(eng_store *st, int64_t message_rowid, eng_msg *msg)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT k.name FROM message_keyword mk JOIN keyword k "
		"ON k.id = mk.keyword_id WHERE mk.message_id = ? ORDER BY k.id",
		&err);
	size_t n = 0;
	int rc;

	msg->keywords = NULL;
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, message_rowid);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		msg->keywords = eng_realloc(msg->keywords,
					    (n + 2) * sizeof(char *));
		msg->keywords[n++] = eng_strdup(
			(const char *)sqlite3_column_text(stmt, 0));
		msg->keywords[n] = NULL;
	}
	store_release(st, stmt);
	return rc == SQLITE_DONE ? 0 : store_err(st, rc, "keywords");
}
