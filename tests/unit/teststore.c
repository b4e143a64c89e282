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
#include <zstd.h>

#include "keys.h"
#include "store.h"
#include "store_private.h"
#include "teststore.h"
#include "testutil.h"

void tu_store_open(tu_store *f)
{
	eng_store_options opt;

	assert_int_equal(eng_crypto_init(), 0);
	f->dir = tu_tmpdir();
	assert_true(asprintf(&f->path, "%s/alias.db", f->dir) > 0);
	randombytes_buf(f->key, sizeof(f->key));
	eng_store_options_default(&opt);
	opt.create = true;
	assert_int_equal(eng_store_open(f->path, f->key, &opt, &f->st), 0);
	f->inbox = tu_inbox_id(f->st);
}

void tu_store_close(tu_store *f)
{
	eng_store_close(&f->st);
	tu_rmrf(f->dir);
	free(f->dir);
	free(f->path);
}

int64_t tu_inbox_id(eng_store *st)
{
	eng_mailbox mb;
	int64_t id;

	assert_int_equal(eng_mailbox_get(st, "INBOX", &mb), 0);
	id = mb.id;
	eng_mailbox_clear(&mb);
	return id;
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

void tu_store_chunks_to_v3(eng_store *st)
{
	sqlite3_stmt *sel, *ins;
	size_t cap = ZSTD_compressBound(ENG_CHUNK_BYTES);
	void *z = malloc(cap);

	assert_non_null(z);
	assert_int_equal(sqlite3_prepare_v2(st->db,
		"SELECT b.id, b.data, c.size FROM body_chunk b "
		"JOIN content c ON c.id = b.id >> 16", -1, &sel, NULL),
		SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(st->db,
		"INSERT INTO chunk (content_id, seq, raw_len, data) "
		"VALUES (?, ?, ?, ?)", -1, &ins, NULL), SQLITE_OK);
	while (sqlite3_step(sel) == SQLITE_ROW) {
		int64_t id = sqlite3_column_int64(sel, 0);
		int64_t seq = id & (ENG_CHUNK_SEQ_MAX - 1);
		int64_t left = sqlite3_column_int64(sel, 2) -
			       seq * ENG_CHUNK_BYTES;
		size_t raw = left < ENG_CHUNK_BYTES ? (size_t)left :
			     ENG_CHUNK_BYTES;
		const void *data = sqlite3_column_blob(sel, 1);
		size_t len = (size_t)sqlite3_column_bytes(sel, 1);

		if (len == raw) {       /* stored raw: compress it */
			len = ZSTD_compress(z, cap, data, raw, 3);
			assert_false(ZSTD_isError(len));
			data = z;
		}
		sqlite3_bind_int64(ins, 1, id >> ENG_CHUNK_SEQ_BITS);
		sqlite3_bind_int64(ins, 2, seq);
		sqlite3_bind_int64(ins, 3, (int64_t)raw);
		sqlite3_bind_blob(ins, 4, data, (int)len, SQLITE_TRANSIENT);
		assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
		sqlite3_reset(ins);
	}
	sqlite3_finalize(sel);
	sqlite3_finalize(ins);
	free(z);
	assert_int_equal(sqlite3_exec(st->db, "DROP TABLE body_chunk", NULL,
				      NULL, NULL), SQLITE_OK);
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
		"m.mailbox_id = b.id) OR b.uidnext <= "
		"(SELECT coalesce(max(uid), 0) FROM expunged e WHERE "
		"e.mailbox_id = b.id)"), 0);
	/* HIGHESTMODSEQ covers every change the mailbox logged. */
	assert_int_equal(tu_sql_int(st,
		"SELECT count(*) FROM mailbox b WHERE b.highestmodseq < "
		"(SELECT coalesce(max(modseq), 0) FROM message m WHERE "
		"m.mailbox_id = b.id) OR b.highestmodseq < "
		"(SELECT coalesce(max(modseq), 0) FROM expunged e WHERE "
		"e.mailbox_id = b.id)"), 0);
	assert_int_equal(tu_sql_int(st,
		"SELECT count(*) FROM message WHERE modseq > "
		"(SELECT value FROM meta WHERE key = 'modseq')"), 0);
	assert_int_equal(tu_sql_int(st,
		"SELECT count(*) FROM chunk WHERE content_id NOT IN "
		"(SELECT id FROM content)"), 0);
	assert_int_equal(tu_sql_int(st,
		"SELECT count(*) FROM body_chunk WHERE id >> 16 NOT IN "
		"(SELECT id FROM content)"), 0);
	/* Every content's chunks are all there, in one table or the other. */
	assert_int_equal(tu_sql_int(st,
		"SELECT count(*) FROM content c WHERE c.chunks != "
		"(SELECT count(*) FROM body_chunk b WHERE b.id BETWEEN "
		"c.id << 16 AND (c.id << 16) + 65535) + "
		"(SELECT count(*) FROM chunk k WHERE k.content_id = c.id)"), 0);
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
