/*
 * The folded values of the header fields IMAP names as search keys (FROM,
 * TO, CC, BCC, SUBJECT), kept per content in table header_field (schema
 * version 2, docs/storage.md), so that SEARCH FROM reads a few narrow
 * rows instead of each message's decoded header in fts_content, whose
 * rows (body text included) fill SQLCipher pages that must each be read
 * and decrypted (bench/README.md, "IMAP header SEARCH (2026-11-26 session
 * 2)").
 *
 * Rules (checked by tests/unit/test_search.c, test_header_scan_equivalence,
 * and tests/unit/test_header_fields.c):
 *  - a row (name, content_id, value) exists iff the decoded header text
 *    (the fts header column) has at least one line for the field; value
 *    is every such line's value folded (search_fold_append) and joined
 *    with '\n', which no folded string holds, so a folded needle occurs in
 *    value iff it occurs in one line: exactly what the scan of the header
 *    text answers, an empty needle matching every message with the field;
 *  - the rows are written in the transaction that writes the fts row
 *    (search_fields_put from the append) and deleted with it
 *    (search_fields_delete when the content goes);
 *  - name is the lower-case field name; the key (content_id, name) (schema
 *    version 3; (name, content_id) in version 2) keeps a message's rows in
 *    one leaf page, so an append writes one page of this table, not one
 *    per field name; a search reads a message's row by its key either way.
 */
#include "search_private.h"
#include "store_private.h"
#include "eng_error.h"

#include <string.h>
#include <strings.h>

/* The fields stored; adding one needs a migration that fills it. */
static const char *const stored_fields[] = {
	"from", "to", "cc", "bcc", "subject",
};

#define N_STORED_FIELDS (sizeof(stored_fields) / sizeof(stored_fields[0]))

const char *search_field_stored(const char *field)
{
	for (size_t i = 0; i < N_STORED_FIELDS; i++) {
		if (strcasecmp(field, stored_fields[i]) == 0)
			return stored_fields[i];
	}
	return NULL;
}

struct collect {
	eng_buf *value;
	bool any;
};

static bool collect_cb(void *arg, const char *v, size_t len)
{
	struct collect *c = arg;

	if (c->any)
		eng_buf_putc(c->value, '\n');
	c->any = true;
	search_fold_append(c->value, v, len);
	return false;              /* every line of the field */
}

static int put_one(eng_store *st, int64_t content_id, const char *name,
		   const eng_buf *value)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st, "INSERT INTO header_field "
		"(name, content_id, value) VALUES (?, ?, ?)", &err);

	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, content_id);
	sqlite3_bind_blob(stmt, 3, value->data != NULL ? value->data : "",
			  (int)value->len, SQLITE_STATIC);
	return store_step_done(st, stmt);
}

int search_fields_put(eng_store *st, int64_t content_id, const char *text,
		      size_t len)
{
	eng_buf value = ENG_BUF_INIT;
	int err = 0;

	if (text == NULL)
		text = "";
	for (size_t i = 0; i < N_STORED_FIELDS && err == 0; i++) {
		struct collect c = { &value, false };

		eng_buf_reset(&value);
		(void)search_header_find(text, len, stored_fields[i],
					 collect_cb, &c);
		if (c.any)
			err = put_one(st, content_id, stored_fields[i], &value);
	}
	eng_buf_free(&value);
	return err;
}

int search_fields_delete(eng_store *st, int64_t content_id)
{
	int err = 0;

	for (size_t i = 0; i < N_STORED_FIELDS && err == 0; i++) {
		sqlite3_stmt *stmt = store_prepare(st, "DELETE FROM header_field "
			"WHERE content_id = ? AND name = ?", &err);

		if (stmt == NULL)
			return err;
		sqlite3_bind_int64(stmt, 1, content_id);
		sqlite3_bind_text(stmt, 2, stored_fields[i], -1, SQLITE_STATIC);
		err = store_step_done(st, stmt);
	}
	return err;
}

int search_fields_backfill(eng_store *st)
{
	int err, rc;
	int64_t rows = 0;
	sqlite3_stmt *stmt = store_prepare_once(st,
		"SELECT docid, c0header FROM fts_content", &err);

	if (stmt == NULL)
		return err;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		const char *text = (const char *)sqlite3_column_text(stmt, 1);
		size_t len = (size_t)sqlite3_column_bytes(stmt, 1);

		err = search_fields_put(st, sqlite3_column_int64(stmt, 0), text,
					len);
		if (err != 0) {
			store_release(st, stmt);
			return err;
		}
		rows++;
	}
	store_release(st, stmt);
	if (rc != SQLITE_DONE)
		return store_err(st, rc, "header_field backfill");
	if (rows > 0)
		eng_log(ENG_LOG_INFO, "%s: header_field filled for %lld "
			"messages", st->path, (long long)rows);
	return 0;
}
