/*
 * The folded header field values of engine/search_fields.c (table
 * header_field, schema version 2): what append writes, that they go with
 * their content, that HEADER search of From/To/Cc/Bcc/Subject answers from
 * them, and the migration of a version 1 database, which must fill them
 * exactly as append would have. test_search.c's equivalence test compares
 * the answers of this path with the header scan over a larger corpus.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "keys.h"
#include "search.h"
#include "store.h"
#include "store_private.h"
#include "teststore.h"
#include "testutil.h"

static const char *const msgs[] = {
	/* 1: two From fields, an encoded word, white space to fold */
	"From: Anna <anna@x.example>\r\n"
	"From: =?UTF-8?Q?J=C3=9CRGEN_M=C3=BCller?= <JM@Y.example>\r\n"
	"To: \"Team\"  <team@x.example>\r\n"
	"Subject: Hello    WORLD\r\n"
	"\r\nbody one\r\n",
	/* 2: no To, no Cc, a Bcc, an empty Subject */
	"From: bob@z.example\r\n"
	"Bcc: hidden@z.example\r\n"
	"Subject:\r\n"
	"\r\nbody two\r\n",
	/* 3: no From at all */
	"To: carol@x.example\r\n"
	"Cc: Dave <dave@x.example>, erin@x.example\r\n"
	"Subject: Kowalski report\r\n"
	"\r\nbody three\r\n",
};
#define N_MSGS (sizeof(msgs) / sizeof(msgs[0]))

static void open_store(tu_store *f, bool create)
{
	eng_store_options opt;

	eng_store_options_default(&opt);
	opt.create = create;
	assert_int_equal(eng_store_open(f->path, f->key, &opt, &f->st), 0);
}

static int setup(void **state)
{
	tu_store *f = calloc(1, sizeof(*f));

	eng_set_log(tu_log_silent);
	tu_store_open(f);
	for (size_t i = 0; i < N_MSGS; i++) {
		eng_append_opts ao;
		uint32_t uid;

		memset(&ao, 0, sizeof(ao));
		assert_int_equal(eng_append_message(f->st, f->inbox, msgs[i],
						    strlen(msgs[i]), &ao, &uid,
						    NULL), 0);
		assert_int_equal(uid, (uint32_t)i + 1);
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	tu_store *f = *state;

	tu_store_close(f);
	free(f);
	return 0;
}

static void sql_exec(eng_store *st, const char *sql)
{
	assert_int_equal(sqlite3_exec(st->db, sql, NULL, NULL, NULL),
			 SQLITE_OK);
}

/* The stored value of field name for the content of INBOX's uid, or
 * NULL without a row (free() it). */
static char *field_value(tu_store *f, uint32_t uid, const char *name)
{
	sqlite3_stmt *stmt;
	char *v = NULL;

	assert_int_equal(sqlite3_prepare_v2(f->st->db,
		"SELECT h.value FROM header_field h JOIN message m ON "
		"m.content_id = h.content_id WHERE m.mailbox_id = ? AND "
		"m.uid = ? AND h.name = ?", -1, &stmt, NULL), SQLITE_OK);
	sqlite3_bind_int64(stmt, 1, f->inbox);
	sqlite3_bind_int64(stmt, 2, uid);
	sqlite3_bind_text(stmt, 3, name, -1, SQLITE_STATIC);
	if (sqlite3_step(stmt) == SQLITE_ROW) {
		size_t n = (size_t)sqlite3_column_bytes(stmt, 0);

		v = calloc(1, n + 1);
		if (n > 0)
			memcpy(v, sqlite3_column_blob(stmt, 0), n);
	}
	sqlite3_finalize(stmt);
	return v;
}

static void assert_field(tu_store *f, uint32_t uid, const char *name,
			 const char *want)
{
	char *v = field_value(f, uid, name);

	if (want == NULL) {
		if (v != NULL)
			fail_msg("uid %u %s: want no row, have \"%s\"", uid,
				 name, v);
		return;
	}
	if (v == NULL || strcmp(v, want) != 0)
		fail_msg("uid %u %s: want \"%s\", have \"%s\"", uid, name,
			 want, v != NULL ? v : "(no row)");
	free(v);
}

/* The UIDs of HEADER field text in INBOX, as "1,3" ("" for none). */
static char *header_uids(tu_store *f, const char *field,
			 const char *text, bool use_fields)
{
	eng_query *q = eng_query_new_header(field, text);
	uint32_t *uids = NULL;
	size_t n = 0;
	char *out = calloc(1, 128);

	eng_search_header_fields(use_fields);
	assert_int_equal(eng_search(f->st, f->inbox, q, NULL, 0, NULL, 0,
				    &uids, &n, NULL), 0);
	eng_search_header_fields(true);
	eng_query_free(&q);
	for (size_t i = 0; i < n; i++)
		snprintf(out + strlen(out), 128 - strlen(out), "%s%u",
			 i > 0 ? "," : "", uids[i]);
	free(uids);
	return out;
}

static void assert_search(tu_store *f, const char *field,
			  const char *text, const char *want)
{
	char *fields = header_uids(f, field, text, true);
	char *scan = header_uids(f, field, text, false);

	if (strcmp(fields, want) != 0 || strcmp(scan, want) != 0)
		fail_msg("HEADER %s \"%s\": want %s, header_field %s, scan %s",
			 field, text, want, fields, scan);
	free(fields);
	free(scan);
}

static void test_values_written_at_append(void **state)
{
	tu_store *f = *state;

	/* Every line of the field, folded, one per line. */
	assert_field(f, 1, "from", "anna <anna@x.example>\n"
		     "j\xc3\xbcrgen m\xc3\xbcller <jm@y.example>");
	assert_field(f, 1, "to", "\"team\" <team@x.example>");
	assert_field(f, 1, "subject", "hello world");
	assert_field(f, 1, "cc", NULL);
	assert_field(f, 1, "bcc", NULL);
	/* A present but empty field has a row with an empty value. */
	assert_field(f, 2, "subject", "");
	assert_field(f, 2, "bcc", "hidden@z.example");
	assert_field(f, 2, "to", NULL);
	assert_field(f, 3, "from", NULL);
	assert_field(f, 3, "cc", "dave <dave@x.example>, erin@x.example");
	/* Only the five search fields are stored. */
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM header_field "
				 "WHERE name NOT IN ('from', 'to', 'cc', "
				 "'bcc', 'subject')"), 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM header_field"),
			 9);
}

static void test_search_answers_from_fields(void **state)
{
	tu_store *f = *state;

	assert_search(f, "From", "J\xc3\x9cRGEN", "1");
	assert_search(f, "FROM", "anna@x", "1");
	assert_search(f, "from", "", "1,2");
	assert_search(f, "Subject", "", "1,2,3");
	assert_search(f, "Subject", "hello world", "1");
	assert_search(f, "Subject", "HELLO  world", "1");
	assert_search(f, "Bcc", "HIDDEN", "2");
	assert_search(f, "Cc", "", "3");
	assert_search(f, "To", "x.example", "1,3");
	/* Two From lines are not one string: no match across them. */
	assert_search(f, "From", "example j\xc3\xbcrgen", "");
	assert_search(f, "From", "x.example>\nj", "");
	/* The answer really comes from header_field: without the row of
	 * message 3's Subject the fields path misses it, the scan not. */
	sql_exec(f->st, "DELETE FROM header_field WHERE name = 'subject' AND "
		 "content_id = (SELECT content_id FROM message WHERE uid = 3)");
	{
		char *fields = header_uids(f, "Subject", "kowalski", true);
		char *scan = header_uids(f, "Subject", "kowalski", false);

		assert_string_equal(fields, "");
		assert_string_equal(scan, "3");
		free(fields);
		free(scan);
	}
}

/* STORE +FLAGS \Deleted and EXPUNGE of INBOX's UIDs lo..hi. */
static void expunge_uids(tu_store *f, uint32_t lo, uint32_t hi)
{
	eng_uidset set = { NULL, 0, 0 };
	uint32_t *gone = NULL;
	size_t n = 0;

	eng_uidset_add(&set, lo, hi);
	assert_int_equal(eng_store_flags(f->st, f->inbox, &set, ENG_STORE_ADD,
					 ENG_F_DELETED, NULL, 0, 0, NULL, NULL,
					 NULL), 0);
	assert_int_equal(eng_expunge(f->st, f->inbox, &set, &gone, &n), 0);
	free(gone);
	eng_uidset_free(&set);
}

static void test_rows_go_with_the_content(void **state)
{
	tu_store *f = *state;
	eng_append_opts ao;
	uint32_t uid;

	/* A second copy shares the content: no second set of rows. */
	memset(&ao, 0, sizeof(ao));
	assert_int_equal(eng_append_message(f->st, f->inbox, msgs[0],
					    strlen(msgs[0]), &ao, &uid, NULL), 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM header_field"),
			 9);
	expunge_uids(f, 1, 1);
	/* The copy (uid 4) still holds the content. */
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM header_field"),
			 9);
	assert_search(f, "From", "anna", "4");
	expunge_uids(f, 2, 4);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM content"), 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM header_field"),
			 0);
}

/* Every header_field row as "name content_id value" lines, in key order. */
static char *dump_fields(eng_store *st)
{
	sqlite3_stmt *stmt;
	eng_buf out = ENG_BUF_INIT;

	assert_int_equal(sqlite3_prepare_v2(st->db, "SELECT name, content_id, "
		"value FROM header_field ORDER BY name, content_id", -1, &stmt,
		NULL), SQLITE_OK);
	while (sqlite3_step(stmt) == SQLITE_ROW) {
		eng_buf_printf(&out, "%s %lld ", sqlite3_column_text(stmt, 0),
			       (long long)sqlite3_column_int64(stmt, 1));
		eng_buf_append(&out, sqlite3_column_blob(stmt, 2),
			       (size_t)sqlite3_column_bytes(stmt, 2));
		eng_buf_putc(&out, '\n');
	}
	sqlite3_finalize(stmt);
	eng_buf_puts(&out, "");
	return eng_buf_steal(&out, NULL);
}

/*
 * A version 1 database: what version 2 adds (header_field and its
 * schema_version row) taken away, which leaves exactly the schema and
 * rows version 1 wrote. Opening it migrates it: version 2, the same rows
 * append writes, the same answers.
 */
static void test_migration_from_version_1(void **state)
{
	tu_store *f = *state;
	char *before = dump_fields(f->st), *after;

	assert_int_equal(eng_store_schema_version(f->st), ENG_SCHEMA_VERSION);
	assert_true(strlen(before) > 0);
	tu_store_chunks_to_v3(f->st);
	sql_exec(f->st, "DROP TABLE header_field; "
		 "DELETE FROM schema_version WHERE version > 1");
	assert_int_equal(eng_store_schema_version(f->st), 1);
	eng_store_close(&f->st);

	open_store(f, false);
	assert_int_equal(eng_store_schema_version(f->st), ENG_SCHEMA_VERSION);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM schema_version "
				 "WHERE version = 2"), 1);
	after = dump_fields(f->st);
	assert_string_equal(after, before);
	free(before);
	free(after);
	assert_search(f, "From", "m\xc3\xbcller", "1");
	assert_search(f, "Subject", "kowalski", "3");
	assert_search(f, "Cc", "", "3");
	assert_int_equal(eng_store_check(f->st, NULL), 0);

	/* Opening again migrates nothing more. */
	eng_store_close(&f->st);
	open_store(f, false);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM schema_version"),
			 ENG_SCHEMA_VERSION);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM header_field"),
			 9);
}

/*
 * A version 2 database: header_field keyed (name, content_id). Opening it
 * rebuilds the table keyed (content_id, name) (version 3): the same rows,
 * the same answers.
 */
static void test_migration_from_version_2(void **state)
{
	tu_store *f = *state;
	char *before = dump_fields(f->st), *after;

	sql_exec(f->st, "CREATE TABLE hf2 (name TEXT NOT NULL, content_id "
		 "INTEGER NOT NULL, value BLOB NOT NULL, PRIMARY KEY (name, "
		 "content_id)) WITHOUT ROWID; INSERT INTO hf2 SELECT name, "
		 "content_id, value FROM header_field; DROP TABLE header_field; "
		 "ALTER TABLE hf2 RENAME TO header_field; "
		 "DELETE FROM schema_version WHERE version > 2");
	tu_store_chunks_to_v3(f->st);
	assert_int_equal(eng_store_schema_version(f->st), 2);
	eng_store_close(&f->st);

	open_store(f, false);
	assert_int_equal(eng_store_schema_version(f->st), ENG_SCHEMA_VERSION);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM sqlite_master "
				 "WHERE name = 'header_field' AND sql LIKE "
				 "'%PRIMARY KEY (content_id, name)%'"), 1);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM sqlite_master "
				 "WHERE name LIKE 'h%f%' AND type = 'table'"), 1);
	after = dump_fields(f->st);
	assert_string_equal(after, before);
	free(before);
	free(after);
	assert_search(f, "From", "m\xc3\xbcller", "1");
	assert_search(f, "Subject", "kowalski", "3");
	assert_search(f, "Cc", "", "3");
	assert_int_equal(eng_store_check(f->st, NULL), 0);
}

/* A version 1 database with no message at all migrates too. */
static void test_migration_of_an_empty_store(void **state)
{
	tu_store *f = *state;

	expunge_uids(f, 1, 3);
	tu_store_chunks_to_v3(f->st);
	sql_exec(f->st, "DROP TABLE header_field; "
		 "DELETE FROM schema_version WHERE version > 1");
	eng_store_close(&f->st);
	open_store(f, false);
	assert_int_equal(eng_store_schema_version(f->st), ENG_SCHEMA_VERSION);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM header_field"),
			 0);
	assert_search(f, "From", "", "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_values_written_at_append,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_search_answers_from_fields,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_rows_go_with_the_content,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_migration_from_version_1,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_migration_from_version_2,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_migration_of_an_empty_store,
						setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
