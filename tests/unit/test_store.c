/*
 * The mailbox store: mailboxes, append, fetch, flags, copy/move, expunge,
 * changes since MODSEQ, quota, dedup, sections and the invariants listed
 * at the top of engine/store.c.
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

#include "cipher_provider.h"
#include "eng_error.h"
#include "keys.h"
#include "mime.h"
#include "store.h"
#include "store_private.h"
#include "teststore.h"
#include "testutil.h"

static int setup(void **state)
{
	tu_store *f = calloc(1, sizeof(*f));

	tu_store_open(f);
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

/* The invariants at the top of engine/store.c, checked with plain SQL. */
static void check_invariants(eng_store *st)
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

static const char simple_msg[] =
	"From: Alice <alice@example.org>\r\n"
	"To: bob@example.net\r\n"
	"Subject: Hello\r\n"
	"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
	"Message-ID: <m1@example.org>\r\n"
	"\r\n"
	"Hi Bob,\r\nhow are you?\r\n";

static uint32_t append(tu_store *f, int64_t mbox, const char *msg,
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
	check_invariants(f->st);
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
	append(f, id, simple_msg, 0);
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
	append(f, mb.id, simple_msg, 0);
	uidvalidity = mb.uidvalidity;
	eng_mailbox_clear(&mb);
	assert_int_equal(eng_mailbox_delete(f->st, "Keep"), 0);
	assert_int_equal(eng_mailbox_create(f->st, "Keep", 0, NULL), 0);
	assert_int_equal(eng_mailbox_get(f->st, "Keep", &mb), 0);
	assert_false(mb.noselect);
	assert_true(mb.uidvalidity > uidvalidity);
	assert_int_equal(mb.messages, 0);
	eng_mailbox_clear(&mb);
	check_invariants(f->st);
}

static void test_rename_inbox(void **state)
{
	tu_store *f = *state;
	eng_mailbox mb;

	append(f, f->inbox, simple_msg, 0);
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
	check_invariants(f->st);
}

struct collect {
	eng_msg msgs[64];
	size_t n;
};

static int collect_cb(void *ctx, const eng_msg *msg)
{
	struct collect *c = ctx;
	eng_msg *m = &c->msgs[c->n++];
	size_t n = 0;

	*m = *msg;
	m->keywords = NULL;
	while (msg->keywords != NULL && msg->keywords[n] != NULL)
		n++;
	if (n > 0) {
		m->keywords = calloc(n + 1, sizeof(char *));
		for (size_t i = 0; i < n; i++)
			m->keywords[i] = strdup(msg->keywords[i]);
	}
	return 0;
}

static void collect_clear(struct collect *c)
{
	for (size_t i = 0; i < c->n; i++)
		eng_msg_clear(&c->msgs[i]);
	c->n = 0;
}

static void test_append_fetch_flags(void **state)
{
	tu_store *f = *state;
	const char *kws[] = { "$Label1", "work" };
	eng_append_opts o = { .flags = ENG_F_FLAGGED, .keywords = kws,
			      .n_keywords = 2, .internal_date = 1700000000 };
	uint32_t uid1, uid2, uid3;
	uint64_t ms1, ms2;
	struct collect c = { .n = 0 };
	eng_uidset set = { 0 };
	eng_uidset failed = { 0 };
	eng_mailbox mb;

	assert_int_equal(eng_append_message(f->st, f->inbox, simple_msg,
					    strlen(simple_msg), &o, &uid1,
					    &ms1), 0);
	uid2 = append(f, f->inbox, "Subject: two\r\n\r\nbody two\r\n", ENG_F_SEEN);
	uid3 = append(f, f->inbox, "Subject: three\r\n\r\nbody three\r\n", 0);
	assert_int_equal(uid1, 1);
	assert_int_equal(uid2, 2);
	assert_int_equal(uid3, 3);

	assert_int_equal(eng_fetch_meta(f->st, f->inbox, NULL, 0, collect_cb,
					&c), 0);
	assert_int_equal(c.n, 3);
	assert_int_equal(c.msgs[0].flags, ENG_F_FLAGGED);
	assert_int_equal(c.msgs[0].internal_date, 1700000000);
	assert_int_equal(c.msgs[0].size, strlen(simple_msg));
	assert_non_null(c.msgs[0].keywords);
	assert_string_equal(c.msgs[0].keywords[0], "$Label1");
	assert_string_equal(c.msgs[0].keywords[1], "work");
	assert_null(c.msgs[0].keywords[2]);
	assert_int_equal(c.msgs[1].flags, ENG_F_SEEN);
	collect_clear(&c);

	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 3);
	assert_int_equal(mb.unseen, 2);
	assert_int_equal(mb.uidnext, 4);
	ms2 = mb.highestmodseq;
	eng_mailbox_clear(&mb);

	/* STORE +FLAGS (\Seen \Deleted) on 1:2 changes both, bumps MODSEQ. */
	eng_uidset_add(&set, 1, 2);
	assert_int_equal(eng_store_flags(f->st, f->inbox, &set, ENG_STORE_ADD,
					 ENG_F_SEEN | ENG_F_DELETED, NULL, 0, 0,
					 NULL, collect_cb, &c), 0);
	assert_int_equal(c.n, 2);
	assert_true(c.msgs[0].modseq > ms2);
	assert_int_equal(c.msgs[0].flags, ENG_F_FLAGGED | ENG_F_SEEN |
			 ENG_F_DELETED);
	assert_string_equal(c.msgs[0].keywords[1], "work");
	collect_clear(&c);
	/* The same again changes nothing and reports nothing. */
	assert_int_equal(eng_store_flags(f->st, f->inbox, &set, ENG_STORE_ADD,
					 ENG_F_SEEN, NULL, 0, 0, NULL,
					 collect_cb, &c), 0);
	assert_int_equal(c.n, 0);

	/* UNCHANGEDSINCE: message 1 changed after ms1, so it fails. */
	assert_int_equal(eng_store_flags(f->st, f->inbox, &set,
					 ENG_STORE_REMOVE, ENG_F_FLAGGED, NULL,
					 0, ms1, &failed, collect_cb, &c), 0);
	assert_int_equal(c.n, 0);
	assert_true(eng_uidset_contains(&failed, 1));
	assert_true(eng_uidset_contains(&failed, 2));
	eng_uidset_free(&failed);

	/* Keywords: remove one (case-insensitive), add one. */
	{
		const char *rm[] = { "WORK" };
		const char *add[] = { "$Junk", "$junk" };

		assert_int_equal(eng_store_flags(f->st, f->inbox, &set,
			ENG_STORE_REMOVE, 0, rm, 1, 0, NULL, NULL, NULL), 0);
		assert_int_equal(eng_store_flags(f->st, f->inbox, &set,
			ENG_STORE_ADD, 0, add, 2, 0, NULL, NULL, NULL), 0);
		assert_int_equal(eng_fetch_meta(f->st, f->inbox, &set, 0,
						collect_cb, &c), 0);
		assert_int_equal(c.n, 2);
		assert_string_equal(c.msgs[0].keywords[0], "$Label1");
		assert_string_equal(c.msgs[0].keywords[1], "$Junk");
		assert_null(c.msgs[0].keywords[2]);
		assert_string_equal(c.msgs[1].keywords[0], "$Junk");
		collect_clear(&c);
	}
	{
		const char *badkw[] = { "bad word" };

		assert_int_equal(eng_store_flags(f->st, f->inbox, &set,
			ENG_STORE_ADD, 0, badkw, 1, 0, NULL, NULL, NULL),
			ENG_EINVAL);
		assert_int_equal(eng_store_flags(f->st, f->inbox, &set,
			ENG_STORE_ADD, 1u << 9, NULL, 0, 0, NULL, NULL, NULL),
			ENG_EINVAL);
	}
	eng_uidset_free(&set);

	/* changedsince filter. */
	assert_int_equal(eng_fetch_meta(f->st, f->inbox, NULL, ms2, collect_cb,
					&c), 0);
	assert_int_equal(c.n, 2);
	collect_clear(&c);
	check_invariants(f->st);
}

static void test_expunge_changes(void **state)
{
	tu_store *f = *state;
	eng_uidset set = { 0 };
	uint32_t *uids, *vanished;
	size_t n, nv;
	uint64_t before;
	struct collect c = { .n = 0 };
	eng_mailbox mb;

	for (int i = 0; i < 5; i++) {
		char msg[128];

		snprintf(msg, sizeof(msg), "Subject: m%d\r\n\r\nbody %d\r\n", i, i);
		append(f, f->inbox, msg, i % 2 == 0 ? ENG_F_DELETED : 0);
	}
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	before = mb.highestmodseq;
	assert_int_equal(mb.deleted, 3);
	eng_mailbox_clear(&mb);

	/* UID EXPUNGE 1:3 removes only 1 and 3 (flagged \Deleted). */
	eng_uidset_add(&set, 1, 3);
	assert_int_equal(eng_expunge(f->st, f->inbox, &set, &uids, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(uids[0], 1);
	assert_int_equal(uids[1], 3);
	free(uids);
	eng_uidset_free(&set);
	/* EXPUNGE removes the rest of the \Deleted ones. */
	assert_int_equal(eng_expunge(f->st, f->inbox, NULL, &uids, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(uids[0], 5);
	free(uids);

	assert_int_equal(eng_changes_since(f->st, f->inbox, before, collect_cb,
					   &c, &vanished, &nv), 0);
	assert_int_equal(c.n, 0);
	assert_int_equal(nv, 3);
	assert_int_equal(vanished[0], 1);
	assert_int_equal(vanished[1], 3);
	assert_int_equal(vanished[2], 5);
	free(vanished);

	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 2);
	assert_int_equal(mb.deleted, 0);
	assert_true(mb.highestmodseq > before);
	assert_int_equal(mb.uidnext, 6);
	eng_mailbox_clear(&mb);
	/* UIDs are never reused. */
	assert_int_equal(append(f, f->inbox, simple_msg, 0), 6);
	check_invariants(f->st);
}

static void test_copy_move_dedup(void **state)
{
	tu_store *f = *state;
	eng_mailbox arch;
	eng_uidset set = { 0 };
	uint32_t *src, *dst;
	size_t n;
	struct collect c = { .n = 0 };
	int64_t trash;

	append(f, f->inbox, simple_msg, 0);
	append(f, f->inbox, simple_msg, ENG_F_SEEN);   /* same content */
	append(f, f->inbox, "Subject: other\r\n\r\nx\r\n", 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM content"), 2);
	assert_int_equal(tu_sql_int(f->st, "SELECT max(refs) FROM content"), 2);

	assert_int_equal(eng_mailbox_get(f->st, "Archive", &arch), 0);
	eng_uidset_add(&set, 1, 3);
	assert_int_equal(eng_message_copy(f->st, f->inbox, &set, arch.id, false,
					  &src, &dst, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(src[0], 1);
	assert_int_equal(dst[0], 1);
	assert_int_equal(dst[2], 3);
	free(src);
	free(dst);
	/* Copies share content. */
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM content"), 2);
	assert_int_equal(tu_sql_int(f->st, "SELECT max(refs) FROM content"), 4);

	assert_int_equal(eng_fetch_meta(f->st, arch.id, NULL, 0, collect_cb,
					&c), 0);
	assert_int_equal(c.n, 3);
	assert_int_equal(c.msgs[1].flags, ENG_F_SEEN);
	assert_int_equal(c.msgs[0].content_id, c.msgs[1].content_id);
	collect_clear(&c);

	/* MOVE to Trash: gone from INBOX, logged as expunged there. */
	{
		eng_mailbox mb;

		assert_int_equal(eng_mailbox_get(f->st, "Trash", &mb), 0);
		trash = mb.id;
		eng_mailbox_clear(&mb);
	}
	assert_int_equal(eng_message_copy(f->st, f->inbox, &set, trash, true,
					  NULL, NULL, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM message WHERE "
				 "mailbox_id = (SELECT id FROM mailbox WHERE "
				 "name = 'INBOX')"), 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM expunged"), 3);
	assert_int_equal(eng_message_copy(f->st, trash, &set, trash, true,
					  NULL, NULL, &n), ENG_EINVAL);

	/* Deleting Archive and Trash drops every content row. */
	eng_uidset_free(&set);
	assert_int_equal(eng_mailbox_delete(f->st, "Archive"), 0);
	assert_int_equal(eng_mailbox_delete(f->st, "Trash"), 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM content"), 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM chunk"), 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM fts"), 0);
	eng_mailbox_clear(&arch);
	check_invariants(f->st);
}

/* A deterministic message of about size bytes, multipart with a large
 * base64 attachment so that it spans several chunks. */
static char *big_message(size_t size)
{
	char *msg = malloc(size + 1024);
	size_t len;
	uint32_t x = 12345;

	len = (size_t)sprintf(msg,
		"From: a@example.org\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
		"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
		"--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
		"--XX\r\nContent-Type: application/octet-stream\r\n"
		"Content-Transfer-Encoding: base64\r\n\r\n");
	while (len < size) {
		for (int i = 0; i < 76; i++) {
			x = x * 1103515245 + 12345;
			msg[len++] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(x >> 16) & 63];
		}
		msg[len++] = '\r';
		msg[len++] = '\n';
	}
	len += (size_t)sprintf(msg + len, "--XX--\r\n");
	msg[len] = '\0';
	return msg;
}

/* ---- FETCH_META with the header and MIME blob inline ---- */

struct inline_row {
	uint32_t uid;
	uint64_t size;
	eng_buf header, mime;
	bool has_header, has_mime;
};

struct inline_collect {
	struct inline_row rows[16];
	size_t n;
};

static int inline_cb(void *ctx, const eng_msg *msg)
{
	struct inline_collect *c = ctx;
	struct inline_row *r = &c->rows[c->n++];

	memset(r, 0, sizeof(*r));
	r->uid = msg->uid;
	r->size = msg->size;
	r->has_header = msg->header != NULL;
	r->has_mime = msg->mime != NULL;
	if (msg->header != NULL)
		eng_buf_append(&r->header, msg->header, msg->header_len);
	if (msg->mime != NULL)
		eng_buf_append(&r->mime, msg->mime, msg->mime_len);
	else
		assert_int_equal(msg->mime_len, 0);
	return 0;
}

static void inline_clear(struct inline_collect *c)
{
	for (size_t i = 0; i < c->n; i++) {
		eng_buf_free(&c->rows[i].header);
		eng_buf_free(&c->rows[i].mime);
	}
	c->n = 0;
}

/* The row's blobs are those eng_message_open gives for the same UID. */
static void inline_check(tu_store *f, const struct inline_row *r,
			 unsigned want)
{
	eng_message *m;
	const eng_mime_part *root;
	const void *hdr;
	size_t hlen;
	eng_buf enc = ENG_BUF_INIT;

	assert_int_equal(r->has_header, (want & ENG_FETCH_WANT_HEADER) != 0);
	assert_int_equal(r->has_mime, (want & ENG_FETCH_WANT_MIME) != 0);
	assert_int_equal(eng_message_open(f->st, f->inbox, r->uid, &m), 0);
	assert_int_equal(eng_message_size(m), r->size);
	if (want & ENG_FETCH_WANT_HEADER) {
		assert_int_equal(eng_message_header(m, &hdr, &hlen), 0);
		assert_true(hlen > 0);
		assert_int_equal(r->header.len, hlen);
		assert_memory_equal(r->header.data, hdr, hlen);
	}
	if (want & ENG_FETCH_WANT_MIME) {
		assert_int_equal(eng_message_mime(m, &root), 0);
		eng_mime_encode(root, &enc);
		assert_int_equal(r->mime.len, enc.len);
		assert_memory_equal(r->mime.data, enc.data, enc.len);
		eng_buf_free(&enc);
	}
	eng_message_close(&m);
}

static void test_fetch_meta_inline(void **state)
{
	tu_store *f = *state;
	char *big = big_message(40 * 1024);
	const unsigned wants[] = { 0, ENG_FETCH_WANT_HEADER, ENG_FETCH_WANT_MIME,
				   ENG_FETCH_WANT_HEADER | ENG_FETCH_WANT_MIME };
	struct inline_collect c = { .n = 0 };
	eng_uidset set = { 0 }, failed = { 0 };
	eng_mailbox mb;
	uint64_t before;

	append(f, f->inbox, simple_msg, 0);
	append(f, f->inbox, big, 0);
	append(f, f->inbox, "Subject: three\r\n\r\nbody three\r\n", 0);
	append(f, f->inbox, simple_msg, 0);      /* shares uid 1's content */
	free(big);
	for (size_t w = 0; w < sizeof(wants) / sizeof(wants[0]); w++) {
		assert_int_equal(eng_fetch_meta_want(f->st, f->inbox, NULL, 0,
						     wants[w], inline_cb, &c), 0);
		assert_int_equal(c.n, 4);
		for (size_t i = 0; i < c.n; i++) {
			assert_int_equal(c.rows[i].uid, i + 1);
			inline_check(f, &c.rows[i], wants[w]);
		}
		/* Different messages, different blobs; shared content, same. */
		if (wants[w] & ENG_FETCH_WANT_HEADER) {
			assert_int_not_equal(c.rows[0].header.len,
					     c.rows[2].header.len);
			assert_int_equal(c.rows[0].header.len,
					 c.rows[3].header.len);
		}
		if (wants[w] & ENG_FETCH_WANT_MIME)
			assert_int_not_equal(c.rows[0].mime.len,
					     c.rows[1].mime.len);
		inline_clear(&c);
	}
	/* eng_fetch_meta is want 0. */
	assert_int_equal(eng_fetch_meta(f->st, f->inbox, NULL, 0, inline_cb,
					&c), 0);
	assert_int_equal(c.n, 4);
	inline_check(f, &c.rows[1], 0);
	inline_clear(&c);

	/* A UID set and CHANGEDSINCE filter the joined query too. */
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	before = mb.highestmodseq;
	eng_mailbox_clear(&mb);
	eng_uidset_add(&set, 3, 3);
	assert_int_equal(eng_store_flags(f->st, f->inbox, &set, ENG_STORE_ADD,
					 ENG_F_SEEN, NULL, 0, 0, &failed, NULL,
					 NULL), 0);
	eng_uidset_free(&set);
	eng_uidset_add(&set, 2, 3);
	assert_int_equal(eng_fetch_meta_want(f->st, f->inbox, &set, 0,
					     wants[3], inline_cb, &c), 0);
	assert_int_equal(c.n, 2);
	assert_int_equal(c.rows[0].uid, 2);
	inline_check(f, &c.rows[0], wants[3]);
	inline_check(f, &c.rows[1], wants[3]);
	inline_clear(&c);
	assert_int_equal(eng_fetch_meta_want(f->st, f->inbox, NULL, before,
					     ENG_FETCH_WANT_HEADER, inline_cb,
					     &c), 0);
	assert_int_equal(c.n, 1);
	assert_int_equal(c.rows[0].uid, 3);
	inline_check(f, &c.rows[0], ENG_FETCH_WANT_HEADER);
	assert_non_null(memmem(c.rows[0].header.data, c.rows[0].header.len,
			       "Subject: three", 14));
	inline_clear(&c);
	eng_uidset_free(&set);
	eng_uidset_free(&failed);
	check_invariants(f->st);
}

static void test_read_sections(void **state)
{
	tu_store *f = *state;
	char *msg = big_message(700 * 1024);
	size_t len = strlen(msg);
	eng_append *ap;
	uint32_t uid;
	eng_message *m;
	char *back = malloc(len + 1);
	uint64_t off, slen;
	const void *hdr;
	size_t hlen;

	/* Streamed in odd pieces. */
	assert_int_equal(eng_append_begin(f->st, f->inbox, NULL, &ap), 0);
	for (size_t i = 0; i < len; i += 7777) {
		size_t n = len - i < 7777 ? len - i : 7777;

		assert_int_equal(eng_append_write(ap, msg + i, n), 0);
	}
	assert_int_equal(eng_append_commit(&ap, &uid, NULL), 0);
	assert_null(ap);

	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	assert_int_equal(eng_message_size(m), len);
	assert_int_equal(eng_message_read(m, 0, back, len + 100), (long)len);
	assert_memory_equal(back, msg, len);
	/* A range across the first chunk boundary. */
	assert_int_equal(eng_message_read(m, ENG_CHUNK_BYTES - 10, back, 20), 20);
	assert_memory_equal(back, msg + ENG_CHUNK_BYTES - 10, 20);
	assert_int_equal(eng_message_read(m, len, back, 10), 0);

	assert_int_equal(eng_message_header(m, &hdr, &hlen), 0);
	assert_true(hlen > 0);
	assert_memory_equal(hdr, msg, hlen);
	assert_memory_equal((const char *)hdr + hlen - 4, "\r\n\r\n", 4);

	assert_int_equal(eng_message_section(m, "HEADER", &off, &slen), 0);
	assert_int_equal(off, 0);
	assert_int_equal(slen, hlen);
	assert_int_equal(eng_message_section(m, "1", &off, &slen), 0);
	assert_int_equal(eng_message_read(m, off, back, slen), (long)slen);
	assert_memory_equal(back, "see attached", 12);
	assert_int_equal(eng_message_section(m, "1.MIME", &off, &slen), 0);
	assert_int_equal(eng_message_read(m, off, back, slen), (long)slen);
	assert_memory_equal(back, "Content-Type: text/plain\r\n\r\n", slen);
	assert_int_equal(eng_message_section(m, "2", &off, &slen), 0);
	assert_true(slen > 600 * 1024);
	assert_int_equal(eng_message_section(m, "3", &off, &slen), ENG_ENOTFOUND);
	assert_int_equal(eng_message_section(m, "2.HEADER", &off, &slen),
			 ENG_ENOTFOUND);
	assert_int_equal(eng_message_section(m, "BOGUS", &off, &slen), ENG_EINVAL);
	eng_message_close(&m);
	assert_null(m);
	assert_int_equal(eng_message_open(f->st, f->inbox, 999, &m),
			 ENG_ENOTFOUND);
	free(back);
	free(msg);
	check_invariants(f->st);
}

static void test_embedded_message_sections(void **state)
{
	tu_store *f = *state;
	static const char msg[] =
		"Subject: fwd\r\nContent-Type: message/rfc822\r\n\r\n"
		"Subject: inner\r\nFrom: x@y\r\n\r\ninner body\r\n";
	uint32_t uid = append(f, f->inbox, msg, 0);
	eng_message *m;
	uint64_t off, len;
	char buf[256];

	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	assert_int_equal(eng_message_section(m, "1.HEADER", &off, &len), 0);
	assert_int_equal(eng_message_read(m, off, buf, len), (long)len);
	assert_memory_equal(buf, "Subject: inner\r\nFrom: x@y\r\n\r\n", len);
	assert_int_equal(eng_message_section(m, "1.TEXT", &off, &len), 0);
	assert_int_equal(eng_message_read(m, off, buf, len), (long)len);
	assert_memory_equal(buf, "inner body\r\n", len);
	assert_int_equal(eng_message_section(m, "TEXT", &off, &len), 0);
	assert_int_equal(len, strlen(msg) - (sizeof("Subject: fwd\r\nContent-Type: message/rfc822\r\n\r\n") - 1));
	eng_message_close(&m);
}

static void test_idempotency_and_tx(void **state)
{
	tu_store *f = *state;
	eng_append_opts o = { .idempotency_key = "delivery-42" };
	uint32_t uid1, uid2;
	eng_mailbox mb;

	assert_int_equal(eng_append_message(f->st, f->inbox, simple_msg,
					    strlen(simple_msg), &o, &uid1, NULL), 0);
	assert_int_equal(eng_append_message(f->st, f->inbox, simple_msg,
					    strlen(simple_msg), &o, &uid2, NULL), 0);
	assert_int_equal(uid1, uid2);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 1);
	eng_mailbox_clear(&mb);

	/* A batch that is rolled back leaves nothing. */
	assert_int_equal(eng_store_tx_begin(f->st), 0);
	append(f, f->inbox, "Subject: a\r\n\r\na\r\n", 0);
	append(f, f->inbox, "Subject: b\r\n\r\nb\r\n", 0);
	eng_store_tx_rollback(f->st);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 1);
	assert_int_equal(mb.uidnext, 2);
	eng_mailbox_clear(&mb);
	/* A committed batch keeps both. */
	assert_int_equal(eng_store_tx_begin(f->st), 0);
	append(f, f->inbox, "Subject: a\r\n\r\na\r\n", 0);
	append(f, f->inbox, "Subject: b\r\n\r\nb\r\n", 0);
	assert_int_equal(eng_store_tx_commit(f->st), 0);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 3);
	eng_mailbox_clear(&mb);

	/* An aborted streaming append leaves nothing either. */
	{
		eng_append *ap;

		assert_int_equal(eng_append_begin(f->st, f->inbox, NULL, &ap), 0);
		assert_int_equal(eng_append_write(ap, simple_msg, 20), 0);
		eng_append_abort(&ap);
		assert_null(ap);
	}
	assert_int_equal(eng_append_message(f->st, 99999, simple_msg, 10, NULL,
					    &uid1, NULL), ENG_ENOTFOUND);
	check_invariants(f->st);
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
	append(f, f->inbox, "Subject: a\r\n\r\na\r\n", 0);
	assert_int_equal(eng_store_tx_begin(f->st), 0);
	append(f, f->inbox, "Subject: b\r\n\r\nb\r\n", 0);
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
	append(f, f->inbox, "Subject: d\r\n\r\nd\r\n", 0);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 1);
	eng_mailbox_clear(&mb);
	check_invariants(f->st);
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
	char back[sizeof(simple_msg)];
	uint32_t uid = append(f, f->inbox, simple_msg, 0);

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
	assert_int_equal(eng_append_message(other, f->inbox, simple_msg,
					    strlen(simple_msg), NULL, NULL,
					    NULL), 0);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 1);
	eng_mailbox_clear(&mb);
	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	assert_int_equal(eng_message_read(m, 0, back, sizeof(back)),
			 (long)strlen(simple_msg));
	assert_memory_equal(back, simple_msg, strlen(simple_msg));
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
	append(f, f->inbox, "Subject: c\r\n\r\nc\r\n", 0);
	assert_int_equal(eng_store_read_begin(f->st), 0);
	eng_store_read_end(f->st);
	assert_false(sqlite3_get_autocommit(f->st->db));
	assert_int_equal(eng_store_tx_commit(f->st), 0);
	assert_true(sqlite3_get_autocommit(f->st->db));
	eng_store_close(&other);
	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 3);
	eng_mailbox_clear(&mb);
	check_invariants(f->st);
}

/* eng_message_open reads the size only; the header and MIME tree come at
 * first use, from the content row (gone once the message is expunged). */
static void test_message_lazy_meta(void **state)
{
	tu_store *f = *state;
	uint32_t uid = append(f, f->inbox, simple_msg, ENG_F_DELETED);
	size_t len = strlen(simple_msg), hlen;
	eng_uidset set = { 0 };
	const eng_mime_part *root;
	eng_message *m, *gone;
	char back[sizeof(simple_msg)];
	const void *hdr;
	uint32_t *uids;
	size_t n;

	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	assert_int_equal(eng_message_size(m), len);
	assert_int_equal(eng_message_read(m, 0, back, sizeof(back)), (long)len);
	assert_memory_equal(back, simple_msg, len);
	assert_int_equal(eng_message_header(m, &hdr, &hlen), 0);
	assert_int_equal(hlen, strstr(simple_msg, "\r\n\r\n") + 4 - simple_msg);
	assert_memory_equal(hdr, simple_msg, hlen);
	assert_int_equal(eng_message_mime(m, &root), 0);
	assert_int_equal(eng_message_size(m), len);
	/* Read once: the same again, without the row. */
	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &gone), 0);
	eng_uidset_add(&set, uid, uid);
	assert_int_equal(eng_expunge(f->st, f->inbox, &set, &uids, &n), 0);
	assert_int_equal(n, 1);
	free(uids);
	eng_uidset_free(&set);
	assert_int_equal(eng_message_header(m, &hdr, &hlen), 0);
	assert_memory_equal(hdr, simple_msg, hlen);
	/* Never read before the expunge: the content row is gone. */
	assert_int_equal(eng_message_header(gone, &hdr, &hlen), ENG_ENOTFOUND);
	assert_null(hdr);
	assert_int_equal(hlen, 0);
	assert_int_equal(eng_message_mime(gone, &root), ENG_ENOTFOUND);
	eng_message_close(&gone);
	eng_message_close(&m);
	check_invariants(f->st);
}

static void test_quota_and_limits(void **state)
{
	tu_store *f = *state;
	uint64_t used, limit, count;
	uint32_t uid;

	append(f, f->inbox, simple_msg, 0);
	assert_int_equal(eng_quota_get(f->st, &used, &limit, &count), 0);
	assert_int_equal(used, strlen(simple_msg));
	assert_int_equal(limit, 0);
	assert_int_equal(count, 1);
	assert_int_equal(eng_quota_set(f->st, used + 10), 0);
	assert_int_equal(eng_append_message(f->st, f->inbox, simple_msg,
					    strlen(simple_msg), NULL, &uid,
					    NULL), ENG_EQUOTA);
	assert_int_equal(eng_quota_set(f->st, 0), 0);
	append(f, f->inbox, simple_msg, 0);

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
	check_invariants(f->st);
}

static void test_reopen_and_wrong_key(void **state)
{
	tu_store *f = *state;
	uint8_t wrong[32];
	eng_store *st;
	eng_store_options opt;
	eng_message *m;
	char buf[512];

	append(f, f->inbox, simple_msg, 0);
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
			 (long)strlen(simple_msg));
	assert_memory_equal(buf, simple_msg, strlen(simple_msg));
	eng_message_close(&m);
}

/* Thread ids: by References/In-Reply-To, else by base subject for replies. */
static void test_thread_ids(void **state)
{
	tu_store *f = *state;
	struct collect c = { .n = 0 };

	append(f, f->inbox, "Message-ID: <p@x>\r\nSubject: Lunch?\r\n\r\na\r\n", 0);
	append(f, f->inbox, "Message-ID: <q@x>\r\nIn-Reply-To: <p@x>\r\n"
	       "Subject: whatever\r\n\r\nb\r\n", 0);
	append(f, f->inbox, "Message-ID: <r@x>\r\nSubject: re: LUNCH?\r\n\r\nc\r\n", 0);
	append(f, f->inbox, "Message-ID: <s@x>\r\nSubject: Lunch?\r\n\r\nd\r\n", 0);
	/* A reply that arrives before its parent joins it later. */
	append(f, f->inbox, "Message-ID: <u@x>\r\nReferences: <t@x>\r\n"
	       "Subject: x\r\n\r\ne\r\n", 0);
	append(f, f->inbox, "Message-ID: <t@x>\r\nSubject: y\r\n\r\nf\r\n", 0);
	assert_int_equal(eng_fetch_meta(f->st, f->inbox, NULL, 0, collect_cb,
					&c), 0);
	assert_int_equal(c.n, 6);
	assert_int_equal(c.msgs[1].thread_id, c.msgs[0].thread_id);
	assert_int_equal(c.msgs[2].thread_id, c.msgs[0].thread_id);
	/* Not a reply: a new thread even with the same subject. */
	assert_int_not_equal(c.msgs[3].thread_id, c.msgs[0].thread_id);
	assert_int_equal(c.msgs[5].thread_id, c.msgs[4].thread_id);
	assert_int_not_equal(c.msgs[4].thread_id, c.msgs[0].thread_id);
	collect_clear(&c);
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
	(void)append(f, f->inbox, simple_msg, 0);
	(void)append(f, f->inbox, other, 0);
	(void)append(f, f->inbox, simple_msg, 0);       /* shares the first */
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
				 "c.chunks != (SELECT count(*) FROM chunk k "
				 "WHERE k.content_id = c.id)"), 0);
	/* The next transaction's id follows the highest one. */
	(void)append(f, f->inbox, "Subject: third\r\n\r\nz\r\n", 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT max(id) FROM content"),
			 tu_sql_int(f->st, "SELECT id FROM content WHERE "
				 "subject = 'third'"));
	check_invariants(f->st);
}

/* SQLite keeps no memory statistics (eng_store_global_init): with them,
 * every allocation of every pool thread took one global mutex. */
static void test_sqlite_memstatus_off(void **state)
{
	tu_store *f = *state;
	sqlite3_int64 cur = -1, hi = -1;

	(void)append(f, f->inbox, simple_msg, 0);
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

	(void)append(f, f->inbox, simple_msg, 0);
	assert_int_equal(store_meta_get_int(f->st, "modseq", &modseq0), 0);
	sqlite3_wal_hook(db, count_wal, NULL);
	(void)append(f, f->inbox, simple_msg, 0);
	frames0 = last_wal_frames;
	assert_int_equal(sqlite3_db_status(db, SQLITE_DBSTATUS_CACHE_MISS,
					   &miss0, &hi, 0), SQLITE_OK);
	ops0 = cipher_ops();
	(void)append(f, f->inbox, "Subject: another\r\n\r\nbody\r\n", 0);
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
	check_invariants(f->st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_names, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hierarchy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rename_inbox, setup, teardown),
		cmocka_unit_test_setup_teardown(test_append_fetch_flags, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_expunge_changes, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_copy_move_dedup, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_fetch_meta_inline, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_read_sections, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_embedded_message_sections,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_tx_lost_inside_nested,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_idempotency_and_tx, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_quota_and_limits, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_reopen_and_wrong_key, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_thread_ids, setup, teardown),
		cmocka_unit_test(test_uidset_parse),
		cmocka_unit_test_setup_teardown(test_stmt_cache, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_snapshot, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_message_lazy_meta, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_content_id_reserved, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_append_no_statement_journal,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_sqlite_memstatus_off, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
