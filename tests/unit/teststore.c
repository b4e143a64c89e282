/* The store fixture of the store tests (teststore.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "store.h"
#include "store_private.h"
#include "teststore.h"
#include "testutil.h"

void tu_store_open(tu_store *f)
{
	eng_store_options opt;
	eng_mailbox mb;

	assert_int_equal(eng_crypto_init(), 0);
	f->dir = tu_tmpdir();
	assert_true(asprintf(&f->path, "%s/alias.db", f->dir) > 0);
	randombytes_buf(f->key, sizeof(f->key));
	eng_store_options_default(&opt);
	opt.create = true;
	assert_int_equal(eng_store_open(f->path, f->key, &opt, &f->st), 0);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	f->inbox = mb.id;
	eng_mailbox_clear(&mb);
}

void tu_store_close(tu_store *f)
{
	eng_store_close(&f->st);
	tu_rmrf(f->dir);
	free(f->dir);
	free(f->path);
}

int64_t tu_sql_int(eng_store *st, const char *sql)
{
	sqlite3_stmt *stmt;
	int64_t v = -1;

	assert_int_equal(sqlite3_prepare_v2(st->db, sql, -1, &stmt, NULL),
			 SQLITE_OK);
	if (sqlite3_step(stmt) == SQLITE_ROW)
		v = sqlite3_column_int64(stmt, 0);
	sqlite3_finalize(stmt);
	return v;
}

/* Moved from test_store.c (setup, teardown, check_invariants, append). */

int tu_store_setup(void **state)
{
	tu_store *f = calloc(1, sizeof(*f));

	tu_store_open(f);
	*state = f;
	return 0;
}

int tu_store_teardown(void **state)
{
	tu_store *f = *state;

	tu_store_close(f);
	free(f);
	return 0;
}

/* The invariants at the top of engine/store.c, checked with plain SQL. */
void tu_store_check(eng_store *st)
{
	assert_int_equal(tu_sql_int(st,
		"SELECT count(*) FROM mailbox b WHERE b.messages != "
		"(SELECT count(*) FROM message m WHERE m.mailbox_id = b.id) "
		"OR b.unseen != (SELECT count(*) FROM message m WHERE "
		"m.mailbox_id = b.id AND (m.flags & 1) = 0) "
		"OR b.deleted != (SELECT count(*) FROM message m WHERE "
		"m.mailbox_id = b.id AND (m.flags & 8) != 0) "
		"OR b.size != (SELECT coalesce(sum(size), 0) FROM message m "
		"WHERE m.mailbox_id = b.id)"), 0);
	assert_int_equal(tu_sql_int(st,
		"SELECT count(*) FROM content c WHERE c.refs != "
		"(SELECT count(*) FROM message m WHERE m.content_id = c.id) "
		"OR c.refs <= 0"), 0);
	assert_int_equal(tu_sql_int(st,
		"SELECT count(*) FROM mailbox b WHERE b.uidnext <= "
		"(SELECT coalesce(max(uid), 0) FROM message m WHERE "
		"m.mailbox_id = b.id)"), 0);
	assert_int_equal(tu_sql_int(st,
		"SELECT count(*) FROM message WHERE modseq > "
		"(SELECT value FROM meta WHERE key = 'modseq')"), 0);
	assert_int_equal(tu_sql_int(st,
		"SELECT count(*) FROM chunk WHERE content_id NOT IN "
		"(SELECT id FROM content)"), 0);
	assert_int_equal(eng_store_check(st, NULL), 0);
}

uint32_t tu_store_append(tu_store *f, int64_t mbox, const char *msg,
			 uint32_t flags)
{
	eng_append_opts o = { .flags = flags };
	uint32_t uid = 0;
	uint64_t modseq = 0;

	assert_int_equal(eng_append_message(f->st, mbox, msg, strlen(msg), &o,
					    &uid, &modseq), 0);
	assert_true(uid > 0);
	assert_true(modseq > 1);
	return uid;
}
