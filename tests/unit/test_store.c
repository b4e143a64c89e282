/*
 * The mailbox store itself: mailboxes (defaults, names, hierarchy, renaming
 * INBOX), transactions (idempotency keys, a transaction SQLite ended inside
 * a nested one, read snapshots), quota and limits, reopening with the wrong
 * key, UID sets, the statement cache, content ids reserved by appends, and
 * the work an APPEND does (no statement journal, no SQLite memory
 * statistics). Messages (append, fetch, flags, copy/move, expunge,
 * sections) are in test_store_message.c; both check the invariants at the
 * top of engine/store.c (tu_store_check, teststore.c).
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
#include <time.h>

#include "cipher_provider.h"
#include "eng_error.h"
#include "keys.h"
#include "mime.h"
#include "store.h"
#include "store_private.h"
#include "teststore.h"
#include "testutil.h"

/* The statement cache (store_stmt.c): one statement per SQL text, reset
 * and unbound on release; a nested user of a busy one gets its own. */
static void test_stmt_cache(void **state)
{
	tu_store *f = *state;
	const char *sql = "SELECT ?";
	sqlite3_stmt *a, *b, *c;
	int err;

	a = store_prepare(f->st, sql, &err);
	assert_non_null(a);
	sqlite3_bind_int64(a, 1, 42);
	assert_int_equal(sqlite3_step(a), SQLITE_ROW);
	assert_false(store_stmts_idle(f->st));
	b = store_prepare(f->st, sql, &err);    /* nested: a is stepping */
	assert_non_null(b);
	assert_ptr_not_equal(a, b);
	sqlite3_bind_int64(b, 1, 7);
	assert_int_equal(sqlite3_step(b), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int64(b, 0), 7);
	assert_int_equal(sqlite3_column_int64(a, 0), 42);
	store_release(f->st, b);
	store_release(f->st, a);
	assert_true(store_stmts_idle(f->st));
	c = store_prepare(f->st, sql, &err);    /* the cached one again */
	assert_ptr_equal(c, a);
	assert_int_equal(sqlite3_stmt_busy(c), 0);
	assert_int_equal(sqlite3_step(c), SQLITE_ROW);
	assert_int_equal(sqlite3_column_type(c, 0), SQLITE_NULL);
	store_release(f->st, c);
	/* Same text from another buffer: the same statement. */
	{
		char copy[16];

		snprintf(copy, sizeof(copy), "%s", sql);
		c = store_prepare(f->st, copy, &err);
		assert_ptr_equal(c, a);
		store_release(f->st, c);
	}
	assert_null(store_prepare(f->st, "SELECT FROM nothing", &err));
	assert_int_not_equal(err, 0);
	assert_true(store_stmts_idle(f->st));
}

static void test_defaults(void **state)
{
	tu_store *f = *state;
	eng_mailbox *list;
	size_t n;
	uint32_t su = 0;

	assert_int_equal(eng_mailbox_list(f->st, &list, &n), 0);
	assert_int_equal(n, 6);
	for (size_t i = 0; i < n; i++) {
		assert_true(list[i].subscribed);
		assert_false(list[i].noselect);
		assert_int_equal(list[i].uidnext, 1);
		assert_true(list[i].uidvalidity > 0);
		su |= list[i].special_use;
		for (size_t j = 0; j < i; j++)
			assert_int_not_equal(list[i].uidvalidity,
					     list[j].uidvalidity);
	}
	assert_int_equal(su, ENG_SU_DRAFTS | ENG_SU_SENT | ENG_SU_TRASH |
			 ENG_SU_JUNK | ENG_SU_ARCHIVE);
	eng_mailbox_list_free(&list, n);
	assert_int_equal(eng_store_schema_version(f->st), ENG_SCHEMA_VERSION);
	tu_store_check(f->st);
}

static void test_names(void **state)
{
	tu_store *f = *state;
	static const char *const bad[] = {
		"", "/a", "a/", "a//b", "a/../b", "..", ".", "tab\there",
		"\xc3", "\xc0\x80", "\xed\xa0\x80", "bad\x7f",
	};
	char *canon;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(eng_mailbox_name_check(bad[i], &canon),
				 ENG_EINVAL);
		assert_int_equal(eng_mailbox_create(f->st, bad[i], 0, NULL),
				 ENG_EINVAL);
	}
	assert_int_equal(eng_mailbox_name_check("inbox/Sub", &canon), 0);
	assert_string_equal(canon, "INBOX/Sub");
	free(canon);
	assert_int_equal(eng_mailbox_create(f->st, "Inbox", 0, NULL), ENG_EEXIST);
	assert_int_equal(eng_mailbox_create(f->st, "Ünïcødé/日本", 0, NULL), 0);
	{
		eng_mailbox mb;

		assert_int_equal(eng_mailbox_get(f->st, "Ünïcødé", &mb), 0);
		eng_mailbox_clear(&mb);
		assert_int_equal(eng_mailbox_get(f->st, "Ünïcødé/日本", &mb), 0);
		eng_mailbox_clear(&mb);
	}
}

static void test_hierarchy(void **state)
{
	tu_store *f = *state;
	eng_mailbox mb;
	int64_t id;
	uint32_t uidvalidity;

	assert_int_equal(eng_mailbox_create(f->st, "Work/Projects/A", 0, &id), 0);
	tu_store_append(f, id, TU_SIMPLE_MSG, 0);
	assert_int_equal(eng_mailbox_get(f->st, "Work/Projects/A", &mb), 0);
	uidvalidity = mb.uidvalidity;
	assert_int_equal(mb.messages, 1);
	eng_mailbox_clear(&mb);

	/* Rename moves children along and keeps UIDVALIDITY and messages. */
	assert_int_equal(eng_mailbox_rename(f->st, "Work", "Job"), 0);
	assert_int_equal(eng_mailbox_get(f->st, "Work", &mb), ENG_ENOTFOUND);
	assert_int_equal(eng_mailbox_get(f->st, "Job/Projects/A", &mb), 0);
	assert_int_equal(mb.uidvalidity, uidvalidity);
	assert_int_equal(mb.messages, 1);
	eng_mailbox_clear(&mb);
	assert_int_equal(eng_mailbox_rename(f->st, "Job", "Job/Sub"), ENG_EINVAL);
	assert_int_equal(eng_mailbox_rename(f->st, "Job", "Sent"), ENG_EEXIST);
	assert_int_equal(eng_mailbox_rename(f->st, "Nope", "X"), ENG_ENOTFOUND);

	/* Delete of a parent leaves a \Noselect placeholder. */
	assert_int_equal(eng_mailbox_delete(f->st, "Job/Projects"), 0);
	assert_int_equal(eng_mailbox_get(f->st, "Job/Projects", &mb), 0);
	assert_true(mb.noselect);
	eng_mailbox_clear(&mb);
	assert_int_equal(eng_mailbox_delete(f->st, "Job/Projects"), ENG_EPERM);
	assert_int_equal(eng_mailbox_delete(f->st, "Job/Projects/A"), 0);
	assert_int_equal(eng_mailbox_delete(f->st, "Job/Projects"), 0);
	assert_int_equal(eng_mailbox_get(f->st, "Job/Projects", &mb),
			 ENG_ENOTFOUND);
	assert_int_equal(eng_mailbox_delete(f->st, "INBOX"), ENG_EPERM);
	/* Re-created name gets a new UIDVALIDITY. */
	assert_int_equal(eng_mailbox_create(f->st, "Job/Projects/A", 0, NULL), 0);
	assert_int_equal(eng_mailbox_get(f->st, "Job/Projects/A", &mb), 0);
	assert_true(mb.uidvalidity > uidvalidity);
	assert_int_equal(mb.messages, 0);
	eng_mailbox_clear(&mb);
	/* So does a parent that kept its row: its messages and expunge log
	 * went without a MODSEQ, QRESYNC state of the old one must not hold. */
	assert_int_equal(eng_mailbox_create(f->st, "Keep/Sub", 0, NULL), 0);
	assert_int_equal(eng_mailbox_get(f->st, "Keep", &mb), 0);
	tu_store_append(f, mb.id, TU_SIMPLE_MSG, 0);
	uidvalidity = mb.uidvalidity;
	eng_mailbox_clear(&mb);
	assert_int_equal(eng_mailbox_delete(f->st, "Keep"), 0);
	assert_int_equal(eng_mailbox_create(f->st, "Keep", 0, NULL), 0);
	assert_int_equal(eng_mailbox_get(f->st, "Keep", &mb), 0);
	assert_false(mb.noselect);
	assert_true(mb.uidvalidity > uidvalidity);
	assert_int_equal(mb.messages, 0);
	eng_mailbox_clear(&mb);
	tu_store_check(f->st);
}

static void test_rename_inbox(void **state)
{
	tu_store *f = *state;
	eng_mailbox mb;

	tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	assert_int_equal(eng_mailbox_create(f->st, "INBOX/Child", 0, NULL), 0);
	assert_int_equal(eng_mailbox_rename(f->st, "INBOX", "Old"), 0);
	assert_int_equal(eng_mailbox_get(f->st, "Old", &mb), 0);
	assert_int_equal(mb.messages, 1);
	eng_mailbox_clear(&mb);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 0);
	assert_int_equal(mb.uidnext, 1);
	eng_mailbox_clear(&mb);
	/* Children of INBOX stay. */
	assert_int_equal(eng_mailbox_get(f->st, "INBOX/Child", &mb), 0);
	eng_mailbox_clear(&mb);
	tu_store_check(f->st);
}

static void test_idempotency_and_tx(void **state)
{
	tu_store *f = *state;
	eng_append_opts o = { .idempotency_key = "delivery-42" };
	uint32_t uid1, uid2;
	eng_mailbox mb;

	assert_int_equal(eng_append_message(f->st, f->inbox, TU_SIMPLE_MSG,
					    strlen(TU_SIMPLE_MSG), &o, &uid1, NULL), 0);
	assert_int_equal(eng_append_message(f->st, f->inbox, TU_SIMPLE_MSG,
					    strlen(TU_SIMPLE_MSG), &o, &uid2, NULL), 0);
	assert_int_equal(uid1, uid2);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 1);
	eng_mailbox_clear(&mb);

	/* A batch that is rolled back leaves nothing. */
	assert_int_equal(eng_store_tx_begin(f->st), 0);
	tu_store_append(f, f->inbox, "Subject: a\r\n\r\na\r\n", 0);
	tu_store_append(f, f->inbox, "Subject: b\r\n\r\nb\r\n", 0);
	eng_store_tx_rollback(f->st);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 1);
	assert_int_equal(mb.uidnext, 2);
	eng_mailbox_clear(&mb);
	/* A committed batch keeps both. */
	assert_int_equal(eng_store_tx_begin(f->st), 0);
	tu_store_append(f, f->inbox, "Subject: a\r\n\r\na\r\n", 0);
	tu_store_append(f, f->inbox, "Subject: b\r\n\r\nb\r\n", 0);
	assert_int_equal(eng_store_tx_commit(f->st), 0);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 3);
	eng_mailbox_clear(&mb);

	/* An aborted streaming append leaves nothing either. */
	{
		eng_append *ap;

		assert_int_equal(eng_append_begin(f->st, f->inbox, NULL, &ap), 0);
		assert_int_equal(eng_append_write(ap, TU_SIMPLE_MSG, 20), 0);
		eng_append_abort(&ap);
		assert_null(ap);
	}
	assert_int_equal(eng_append_message(f->st, 99999, TU_SIMPLE_MSG, 10, NULL,
					    &uid1, NULL), ENG_ENOTFOUND);
	tu_store_check(f->st);
}

/* Sets the created time of idempotency key to now - age. */
static void idem_age(tu_store *f, const char *key, int64_t age)
{
	char *sql = sqlite3_mprintf("UPDATE idempotency SET created = %lld "
				    "WHERE key = %Q", (long long)(time(NULL) -
				    age), key);

	assert_int_equal(sqlite3_exec(f->st->db, sql, NULL, NULL, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_changes(f->st->db), 1);
	sqlite3_free(sql);
}

static int64_t count_rows(tu_store *f, const char *sql)
{
	sqlite3_stmt *stmt;
	int64_t n;

	assert_int_equal(sqlite3_prepare_v2(f->st->db, sql, -1, &stmt, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
	n = sqlite3_column_int64(stmt, 0);
	sqlite3_finalize(stmt);
	return n;
}

/* Keyed append with key; its UID. */
static uint32_t keyed(tu_store *f, const char *key)
{
	eng_append_opts o = { .idempotency_key = key };
	uint32_t uid;

	assert_int_equal(eng_append_message(f->st, f->inbox, TU_SIMPLE_MSG,
					    strlen(TU_SIMPLE_MSG), &o, &uid,
					    NULL), 0);
	return uid;
}

/* Records older than ENG_IDEMPOTENCY_TTL_SECONDS go with the first keyed
 * append of a day; a younger one still answers a retry; nothing else goes. */
static void test_idempotency_prune(void **state)
{
	tu_store *f = *state;
	uint32_t old_uid, young_uid, uid;

	old_uid = keyed(f, "old");
	young_uid = keyed(f, "young");
	tu_store_append(f, f->inbox, "Subject: plain\r\n\r\nx\r\n", 0);
	idem_age(f, "old", ENG_IDEMPOTENCY_TTL_SECONDS + 60);
	idem_age(f, "young", ENG_IDEMPOTENCY_TTL_SECONDS - 3600);
	/* Pruned already today (the first keyed append): both stay. */
	keyed(f, "new1");
	assert_int_equal(count_rows(f, "SELECT count(*) FROM idempotency"), 3);
	/* A day later (the last prune moved back): the old one goes. */
	f->st->idem_pruned -= 24 * 3600;
	keyed(f, "new2");
	assert_int_equal(count_rows(f, "SELECT count(*) FROM idempotency "
				    "WHERE key = 'old'"), 0);
	assert_int_equal(count_rows(f, "SELECT count(*) FROM idempotency"), 3);
	assert_int_equal(count_rows(f, "SELECT count(*) FROM message"), 5);
	/* The young key still dedups: the first UID, nothing stored. */
	assert_int_equal(keyed(f, "young"), young_uid);
	assert_int_equal(count_rows(f, "SELECT count(*) FROM message"), 5);
	/* The pruned key is new again. */
	uid = keyed(f, "old");
	assert_true(uid > old_uid);
	assert_int_equal(count_rows(f, "SELECT count(*) FROM message"), 6);
	tu_store_check(f->st);
}

/* SQLite may end the whole transaction itself on an error inside a nested
 * level (a full disk in a statement without a statement journal): the
 * outer level must then fail, never go on in autocommit mode. Simulated by
 * a ROLLBACK behind the engine's back. */
static void test_tx_lost_inside_nested(void **state)
{
	tu_store *f = *state;
	eng_append_opts o = { 0 };
	eng_mailbox mb;
	uint32_t uid;

	assert_int_equal(eng_store_tx_begin(f->st), 0);
	tu_store_append(f, f->inbox, "Subject: a\r\n\r\na\r\n", 0);
	assert_int_equal(eng_store_tx_begin(f->st), 0);
	tu_store_append(f, f->inbox, "Subject: b\r\n\r\nb\r\n", 0);
	assert_int_equal(sqlite3_exec(f->st->db, "ROLLBACK", NULL, NULL, NULL),
			 SQLITE_OK);
	eng_store_tx_rollback(f->st);
	/* The outer level's next write and its commit fail... */
	assert_int_not_equal(eng_append_message(f->st, f->inbox,
			     "Subject: c\r\n\r\nc\r\n", 18, &o, &uid, NULL),
			     0);
	assert_int_not_equal(eng_store_tx_commit(f->st), 0);
	eng_store_tx_rollback(f->st);
	/* ...and nothing of the three is stored. */
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 0);
	eng_mailbox_clear(&mb);
	/* The store works again afterwards. */
	tu_store_append(f, f->inbox, "Subject: d\r\n\r\nd\r\n", 0);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 1);
	eng_mailbox_clear(&mb);
	tu_store_check(f->st);
}

/* eng_store_read_begin/end: one snapshot for the reads between them (a
 * write from another connection is seen only after the end), nesting,
 * no write transaction inside, a no-op inside a write transaction. */
static void test_read_snapshot(void **state)
{
	tu_store *f = *state;
	eng_store_options opt;
	eng_store *other;
	eng_mailbox mb;
	eng_message *m;
	char back[sizeof(TU_SIMPLE_MSG)];
	uint32_t uid = tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);

	eng_store_options_default(&opt);
	assert_int_equal(eng_store_open(f->path, f->key, &opt, &other), 0);

	assert_int_equal(eng_store_read_begin(f->st), 0);
	assert_int_equal(eng_store_read_begin(f->st), 0);      /* nested */
	assert_false(sqlite3_get_autocommit(f->st->db));
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 1);
	eng_mailbox_clear(&mb);
	/* Another connection writes meanwhile (WAL: readers do not block
	 * it); this snapshot does not see it. */
	assert_int_equal(eng_append_message(other, f->inbox, TU_SIMPLE_MSG,
					    strlen(TU_SIMPLE_MSG), NULL, NULL,
					    NULL), 0);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 1);
	eng_mailbox_clear(&mb);
	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	assert_int_equal(eng_message_read(m, 0, back, sizeof(back)),
			 (long)strlen(TU_SIMPLE_MSG));
	assert_memory_equal(back, TU_SIMPLE_MSG, strlen(TU_SIMPLE_MSG));
	eng_message_close(&m);
	/* No write inside a read snapshot. */
	assert_int_equal(eng_store_tx_begin(f->st), ENG_EINVAL);
	eng_store_read_end(f->st);
	assert_false(sqlite3_get_autocommit(f->st->db));      /* still open */
	eng_store_read_end(f->st);
	assert_true(sqlite3_get_autocommit(f->st->db));
	eng_store_read_end(f->st);                            /* unmatched: no-op */
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 2);
	eng_mailbox_clear(&mb);

	/* Inside a write transaction it does nothing: the end does not
	 * commit the writer's work, whose own commit still does. */
	assert_int_equal(eng_store_tx_begin(f->st), 0);
	tu_store_append(f, f->inbox, "Subject: c\r\n\r\nc\r\n", 0);
	assert_int_equal(eng_store_read_begin(f->st), 0);
	eng_store_read_end(f->st);
	assert_false(sqlite3_get_autocommit(f->st->db));
	assert_int_equal(eng_store_tx_commit(f->st), 0);
	assert_true(sqlite3_get_autocommit(f->st->db));
	eng_store_close(&other);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 3);
	eng_mailbox_clear(&mb);
	tu_store_check(f->st);
}

static void test_quota_and_limits(void **state)
{
	tu_store *f = *state;
	uint64_t used, limit, count;
	uint32_t uid;

	tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	assert_int_equal(eng_quota_get(f->st, &used, &limit, &count), 0);
	assert_int_equal(used, strlen(TU_SIMPLE_MSG));
	assert_int_equal(limit, 0);
	assert_int_equal(count, 1);
	assert_int_equal(eng_quota_set(f->st, used + 10), 0);
	assert_int_equal(eng_append_message(f->st, f->inbox, TU_SIMPLE_MSG,
					    strlen(TU_SIMPLE_MSG), NULL, &uid,
					    NULL), ENG_EQUOTA);
	assert_int_equal(eng_quota_set(f->st, 0), 0);
	tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);

	/* Past max_message_bytes. */
	{
		eng_store *st2;
		eng_store_options opt;
		eng_append *ap;
		char buf[4096];

		eng_store_close(&f->st);
		eng_store_options_default(&opt);
		opt.max_message_bytes = 10000;
		assert_int_equal(eng_store_open(f->path, f->key, &opt, &st2), 0);
		f->st = st2;
		memset(buf, 'a', sizeof(buf));
		assert_int_equal(eng_append_begin(st2, f->inbox, NULL, &ap), 0);
		assert_int_equal(eng_append_write(ap, buf, sizeof(buf)), 0);
		assert_int_equal(eng_append_write(ap, buf, sizeof(buf)), 0);
		assert_int_equal(eng_append_write(ap, buf, sizeof(buf)), ENG_ELIMIT);
		assert_int_equal(eng_append_commit(&ap, &uid, NULL), ENG_ELIMIT);
	}
	tu_store_check(f->st);
}

static void test_reopen_and_wrong_key(void **state)
{
	tu_store *f = *state;
	uint8_t wrong[32];
	eng_store *st;
	eng_store_options opt;
	eng_message *m;
	char buf[512];

	tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	eng_store_close(&f->st);
	eng_store_options_default(&opt);
	memcpy(wrong, f->key, 32);
	wrong[0] ^= 1;
	assert_int_equal(eng_store_open(f->path, wrong, &opt, &st), ENG_EAUTH);
	assert_null(st);
	assert_int_equal(eng_store_open("/nonexistent/x.db", f->key, &opt, &st),
			 ENG_ENOTFOUND);
	assert_int_equal(eng_store_open(f->path, f->key, &opt, &f->st), 0);
	assert_int_equal(eng_message_open(f->st, f->inbox, 1, &m), 0);
	assert_int_equal(eng_message_read(m, 0, buf, sizeof(buf)),
			 (long)strlen(TU_SIMPLE_MSG));
	assert_memory_equal(buf, TU_SIMPLE_MSG, strlen(TU_SIMPLE_MSG));
	eng_message_close(&m);
}

static void test_uidset_parse(void **state)
{
	eng_uidset s;

	(void)state;
	assert_int_equal(eng_uidset_parse("1:3,7,10:*", &s), 0);
	assert_int_equal(s.count, 3);
	assert_true(eng_uidset_contains(&s, 2));
	assert_false(eng_uidset_contains(&s, 5));
	assert_true(eng_uidset_contains(&s, 4000000000u));
	eng_uidset_free(&s);
	assert_int_equal(eng_uidset_parse("5:2", &s), 0);
	assert_true(eng_uidset_contains(&s, 3));
	eng_uidset_free(&s);
	assert_int_equal(eng_uidset_parse("", &s), ENG_EINVAL);
	assert_int_equal(eng_uidset_parse("0", &s), ENG_EINVAL);
	assert_int_equal(eng_uidset_parse("1,", &s), ENG_EINVAL);
	assert_int_equal(eng_uidset_parse("4294967296", &s), ENG_EINVAL);
	assert_int_equal(eng_uidset_parse("1:2:3", &s), ENG_EINVAL);
}

/*
 * An append writes its chunks under a content id reserved at begin and
 * inserts the content row at commit (engine/message.c): appends in one
 * outer transaction get distinct ids, a duplicate drops its chunks, an
 * aborted one leaves nothing, and the rows are what a lone append writes.
 */
static void test_content_id_reserved(void **state)
{
	tu_store *f = *state;
	static const char other[] = "Subject: other\r\n\r\nsecond body\r\n";
	eng_append *ap;

	assert_int_equal(eng_store_tx_begin(f->st), 0);
	(void)tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	(void)tu_store_append(f, f->inbox, other, 0);
	(void)tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);       /* shares the first */
	assert_int_equal(eng_append_begin(f->st, f->inbox, NULL, &ap), 0);
	assert_int_equal(eng_append_write(ap, "Subject: x\r\n\r\ny", 16), 0);
	eng_append_abort(&ap);
	assert_int_equal(eng_store_tx_commit(f->st), 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM content"), 2);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(DISTINCT content_id) "
				 "FROM message"), 2);
	assert_int_equal(tu_sql_int(f->st, "SELECT refs FROM content WHERE "
				 "subject = 'Hello'"), 2);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM fts"), 2);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM content c WHERE "
				 "c.chunks != (SELECT count(*) FROM body_chunk "
				 "k WHERE k.id >> 16 = c.id)"), 0);
	/* The next transaction's id follows the highest one. */
	(void)tu_store_append(f, f->inbox, "Subject: third\r\n\r\nz\r\n", 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT max(id) FROM content"),
			 tu_sql_int(f->st, "SELECT id FROM content WHERE "
				 "subject = 'third'"));
	tu_store_check(f->st);
}

/* SQLite keeps no memory statistics (eng_store_global_init): with them,
 * every allocation of every pool thread took one global mutex. */
static void test_sqlite_memstatus_off(void **state)
{
	tu_store *f = *state;
	sqlite3_int64 cur = -1, hi = -1;

	(void)tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	assert_int_equal(sqlite3_status64(SQLITE_STATUS_MEMORY_USED, &cur, &hi,
					  0), SQLITE_OK);
	assert_int_equal(cur, 0);
}

/* The WAL frames of the last commit (a wal hook: no autocheckpoint). */
static int last_wal_frames;

static int count_wal(void *ctx, sqlite3 *db, const char *name, int frames)
{
	(void)ctx;
	(void)db;
	(void)name;
	last_wal_frames = frames;
	return SQLITE_OK;
}

static uint64_t cipher_ops(void)
{
	uint64_t fast, builtin;

	eng_cipher_provider_thread_pages(&fast, &builtin);
	return fast + builtin;
}

/*
 * An APPEND encrypts the pages it writes to the WAL and the pages it reads
 * from disk, nothing else: no statement journal (SQLCipher encrypts every
 * page copied into one). store_meta_set_int's INSERT OR REPLACE ran one
 * for each of an APPEND's two meta writes (~4 extra page encryptions).
 * And the meta values it writes are right, inside a transaction and out.
 */
static void test_append_no_statement_journal(void **state)
{
	tu_store *f = *state;
	sqlite3 *db = f->st->db;
	int64_t v = 0, modseq0 = 0, modseq1 = 0;
	int miss0, miss1, hi;
	uint64_t ops0, ops1;
	int frames0;

	(void)tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	assert_int_equal(store_meta_get_int(f->st, "modseq", &modseq0), 0);
	sqlite3_wal_hook(db, count_wal, NULL);
	(void)tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	frames0 = last_wal_frames;
	assert_int_equal(sqlite3_db_status(db, SQLITE_DBSTATUS_CACHE_MISS,
					   &miss0, &hi, 0), SQLITE_OK);
	ops0 = cipher_ops();
	(void)tu_store_append(f, f->inbox, "Subject: another\r\n\r\nbody\r\n", 0);
	ops1 = cipher_ops();
	assert_int_equal(sqlite3_db_status(db, SQLITE_DBSTATUS_CACHE_MISS,
					   &miss1, &hi, 0), SQLITE_OK);
	assert_true(last_wal_frames > frames0 + 5);
	assert_int_equal(ops1 - ops0,
			 (uint64_t)(last_wal_frames - frames0 + miss1 - miss0));
	sqlite3_wal_autocheckpoint(db, 1000);
	assert_int_equal(store_meta_get_int(f->st, "modseq", &modseq1), 0);
	assert_true(modseq1 > modseq0);

	/* Both ways of store_meta_set_int: a new key and an existing one. */
	assert_int_equal(eng_store_tx_begin(f->st), 0);
	assert_int_equal(store_meta_set_int(f->st, "test_key", 7), 0);
	assert_int_equal(store_meta_set_int(f->st, "test_key", 8), 0);
	assert_int_equal(eng_store_tx_commit(f->st), 0);
	assert_int_equal(store_meta_get_int(f->st, "test_key", &v), 0);
	assert_int_equal(v, 8);
	assert_int_equal(store_meta_set_int(f->st, "test_key2", 9), 0);
	assert_int_equal(store_meta_set_int(f->st, "test_key2", 10), 0);
	assert_int_equal(store_meta_get_int(f->st, "test_key2", &v), 0);
	assert_int_equal(v, 10);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM meta WHERE "
				    "key LIKE 'test_key%'"), 2);
	tu_store_check(f->st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_defaults,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_names,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_hierarchy,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_rename_inbox,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_tx_lost_inside_nested,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_idempotency_and_tx,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_idempotency_prune,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_quota_and_limits,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_reopen_and_wrong_key,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test(test_uidset_parse),
		cmocka_unit_test_setup_teardown(test_stmt_cache,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_read_snapshot,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_content_id_reserved,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_append_no_statement_journal,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_sqlite_memstatus_off,
						tu_store_setup, tu_store_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
