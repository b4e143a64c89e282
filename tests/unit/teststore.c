/* The store fixture of the store tests (teststore.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>

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
