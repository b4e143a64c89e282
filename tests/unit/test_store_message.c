/*
 * Messages in the mailbox store: append, fetch, flags, copy/move and dedup,
 * expunge and changes since MODSEQ, FETCH_META with the header and MIME
 * blobs inline, sections (embedded messages too), the header and MIME tree
 * read lazily, thread ids, and the mailbox row's UIDNEXT, HIGHESTMODSEQ
 * and counts after each kind of change. The fixture and the invariants of
 * engine/store.c are teststore.c's; the chunk tests are test_store_chunks.c.
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
#include "testmsgs.h"
#include "testutil.h"

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

	assert_int_equal(eng_append_message(f->st, f->inbox, TU_SIMPLE_MSG,
					    strlen(TU_SIMPLE_MSG), &o, &uid1,
					    &ms1), 0);
	uid2 = tu_store_append(f, f->inbox, "Subject: two\r\n\r\nbody two\r\n", ENG_F_SEEN);
	uid3 = tu_store_append(f, f->inbox, "Subject: three\r\n\r\nbody three\r\n", 0);
	assert_int_equal(uid1, 1);
	assert_int_equal(uid2, 2);
	assert_int_equal(uid3, 3);

	assert_int_equal(eng_fetch_meta(f->st, f->inbox, NULL, 0, collect_cb,
					&c), 0);
	assert_int_equal(c.n, 3);
	assert_int_equal(c.msgs[0].flags, ENG_F_FLAGGED);
	assert_int_equal(c.msgs[0].internal_date, 1700000000);
	assert_int_equal(c.msgs[0].size, strlen(TU_SIMPLE_MSG));
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
	tu_store_check(f->st);
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
		tu_store_append(f, f->inbox, msg, i % 2 == 0 ? ENG_F_DELETED : 0);
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
	assert_int_equal(tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0), 6);
	tu_store_check(f->st);
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

	tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	tu_store_append(f, f->inbox, TU_SIMPLE_MSG, ENG_F_SEEN);   /* same content */
	tu_store_append(f, f->inbox, "Subject: other\r\n\r\nx\r\n", 0);
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
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM body_chunk"), 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM fts"), 0);
	eng_mailbox_clear(&arch);
	tu_store_check(f->st);
}

/* The mailbox row after each change: UIDNEXT, HIGHESTMODSEQ and the counts
 * (tu_store_check recounts them from the message rows). */
static void expect_mailbox(tu_store *f, const char *name, uint32_t uidnext,
			   uint64_t highestmodseq, uint32_t messages,
			   uint32_t unseen, uint32_t deleted)
{
	eng_mailbox mb;

	assert_int_equal(eng_mailbox_get(f->st, name, &mb), 0);
	assert_int_equal(mb.uidnext, uidnext);
	assert_int_equal(mb.highestmodseq, highestmodseq);
	assert_int_equal(mb.messages, messages);
	assert_int_equal(mb.unseen, unseen);
	assert_int_equal(mb.deleted, deleted);
	eng_mailbox_clear(&mb);
	tu_store_check(f->st);
}

static uint64_t append_modseq(tu_store *f, const char *msg, uint32_t flags,
			      uint32_t want_uid)
{
	eng_append_opts o = { .flags = flags };
	uint32_t uid = 0;
	uint64_t modseq = 0;

	assert_int_equal(eng_append_message(f->st, f->inbox, msg, strlen(msg),
					    &o, &uid, &modseq), 0);
	assert_int_equal(uid, want_uid);
	return modseq;
}

static void test_mailbox_accounting(void **state)
{
	tu_store *f = *state;
	eng_uidset set = { 0 };
	eng_mailbox arch;
	uint32_t *src, *dst, *gone;
	size_t n;
	uint64_t m;

	m = append_modseq(f, TU_SIMPLE_MSG, 0, 1);
	expect_mailbox(f, "INBOX", 2, m, 1, 1, 0);
	m = append_modseq(f, TU_SIMPLE_MSG, ENG_F_SEEN, 2);   /* same content */
	expect_mailbox(f, "INBOX", 3, m, 2, 1, 0);
	m = append_modseq(f, "Subject: d\r\n\r\nd\r\n",
			  ENG_F_SEEN | ENG_F_DELETED, 3);
	expect_mailbox(f, "INBOX", 4, m, 3, 1, 1);
	m = append_modseq(f, "Subject: e\r\n\r\ne\r\n", ENG_F_DELETED, 4);
	expect_mailbox(f, "INBOX", 5, m, 4, 2, 2);

	/* COPY 1:4 to Archive: UIDs 1..4 there, the counts as in INBOX. */
	assert_int_equal(eng_mailbox_get(f->st, "Archive", &arch), 0);
	eng_uidset_add(&set, 1, 4);
	assert_int_equal(eng_message_copy(f->st, f->inbox, &set, arch.id, false,
					  &src, &dst, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(dst[3], 4);
	free(src);
	free(dst);
	m = (uint64_t)tu_sql_int(f->st, "SELECT max(modseq) FROM message");
	expect_mailbox(f, "Archive", 5, m, 4, 2, 2);
	expect_mailbox(f, "INBOX", 5, m - 1, 4, 2, 2);

	/* MOVE Archive 1:2 back to INBOX: UIDs 5 and 6. */
	eng_uidset_free(&set);
	eng_uidset_add(&set, 1, 2);
	assert_int_equal(eng_message_copy(f->st, arch.id, &set, f->inbox, true,
					  &src, &dst, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(dst[0], 5);
	assert_int_equal(dst[1], 6);
	free(src);
	free(dst);
	m = (uint64_t)tu_sql_int(f->st, "SELECT value FROM meta "
				 "WHERE key = 'modseq'");
	expect_mailbox(f, "INBOX", 7, m, 6, 3, 2);
	expect_mailbox(f, "Archive", 5, m, 2, 1, 2);

	/* EXPUNGE INBOX: UIDs 3 and 4 (\Deleted) go, UIDNEXT stays. */
	assert_int_equal(eng_expunge(f->st, f->inbox, NULL, &gone, &n), 0);
	assert_int_equal(n, 2);
	free(gone);
	m = (uint64_t)tu_sql_int(f->st, "SELECT value FROM meta "
				 "WHERE key = 'modseq'");
	expect_mailbox(f, "INBOX", 7, m, 4, 2, 0);

	/* The next APPEND takes UIDNEXT, never an expunged UID. */
	m = append_modseq(f, "Subject: f\r\n\r\nf\r\n", 0, 7);
	expect_mailbox(f, "INBOX", 8, m, 5, 3, 0);
	eng_uidset_free(&set);
	eng_mailbox_clear(&arch);
}

/* eng_append_begin_name: the mailbox as eng_mailbox_get finds it, its id
 * and UIDVALIDITY out, the same refusals as by id. */
static void test_append_by_name(void **state)
{
	tu_store *f = *state;
	eng_append *ap = NULL;
	eng_mailbox mb;
	int64_t id = 0;
	uint32_t uidvalidity = 0, uid = 0;
	uint64_t modseq = 0;

	assert_int_equal(eng_mailbox_get(f->st, "INBOX", &mb), 0);
	assert_int_equal(eng_append_begin_name(f->st, "inbox", NULL, &ap, &id,
					       &uidvalidity), 0);
	assert_int_equal(id, f->inbox);
	assert_int_equal(uidvalidity, mb.uidvalidity);
	eng_mailbox_clear(&mb);
	assert_int_equal(eng_append_write(ap, TU_SIMPLE_MSG,
					  strlen(TU_SIMPLE_MSG)), 0);
	assert_int_equal(eng_append_commit(&ap, &uid, &modseq), 0);
	assert_int_equal(uid, 1);
	expect_mailbox(f, "INBOX", 2, modseq, 1, 1, 0);

	assert_int_equal(eng_append_begin_name(f->st, "Nowhere", NULL, &ap,
					       NULL, NULL), ENG_ENOTFOUND);
	assert_null(ap);
	assert_int_equal(eng_append_begin_name(f->st, "a//b", NULL, &ap, NULL,
					       NULL), ENG_EINVAL);
	assert_null(ap);
	/* A parent left as \Noselect by the deletion of it. */
	assert_int_equal(eng_mailbox_create(f->st, "P/C", 0, NULL), 0);
	assert_int_equal(eng_mailbox_delete(f->st, "P"), 0);
	assert_int_equal(eng_append_begin_name(f->st, "P", NULL, &ap, NULL,
					       NULL), ENG_EPERM);
	assert_null(ap);
	/* Nothing was left open: the next append commits. */
	tu_store_append(f, f->inbox, "Subject: g\r\n\r\ng\r\n", 0);
	tu_store_check(f->st);
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

	tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	tu_store_append(f, f->inbox, big, 0);
	tu_store_append(f, f->inbox, "Subject: three\r\n\r\nbody three\r\n", 0);
	tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);      /* shares uid 1's content */
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
	tu_store_check(f->st);
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
	tu_store_check(f->st);
}

/* A chunk read keeps one zstd context for the next (not one per thread
 * for the thread's life), and eng_message_free_cached gives it back. */
static void test_zstd_contexts_freed(void **state)
{
	tu_store *f = *state;
	char *msg = text_message(700 * 1024);
	size_t len = strlen(msg);
	char *back = malloc(len);
	eng_message *m;
	uint32_t uid;

	uid = tu_store_append(f, f->inbox, msg, 0);
	(void)eng_message_free_cached();
	assert_int_equal(eng_message_free_cached(), 0);
	for (int round = 0; round < 2; round++) {
		assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
		memset(back, 0, len);
		/* Three chunks, read one after another: one context. */
		assert_int_equal(eng_message_read(m, 0, back, len), (long)len);
		assert_memory_equal(back, msg, len);
		eng_message_close(&m);
		assert_int_equal(eng_message_free_cached(), 1);
		assert_int_equal(eng_message_free_cached(), 0);
	}
	free(back);
	free(msg);
	tu_store_check(f->st);
}

/* Reads in pieces of every size that matters (a chunk wanted whole goes
 * straight into the caller's buffer, any other through the handle's
 * one-chunk cache), and ranges at random offsets after reads that left
 * another chunk cached: always the message's bytes, never more. */
static void test_read_splits(void **state)
{
	static const size_t pieces[] = { 1, 4095, 4096, 27 * 1024,
					 ENG_CHUNK_BYTES - 1, ENG_CHUNK_BYTES,
					 ENG_CHUNK_BYTES + 1, 2 * ENG_CHUNK_BYTES,
					 700 * 1024 };
	tu_store *f = *state;
	char *msg = big_message(600 * 1024);
	size_t len = strlen(msg);
	unsigned char *back = malloc(len + 64);
	eng_message *m;
	uint32_t uid = tu_store_append(f, f->inbox, msg, 0);

	for (size_t p = 0; p < sizeof(pieces) / sizeof(pieces[0]); p++) {
		uint64_t off = 0;
		long n;

		assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
		memset(back, 0xa5, len + 64);
		while ((n = eng_message_read(m, off, back + off, pieces[p])) > 0)
			off += (uint64_t)n;
		assert_int_equal(n, 0);
		assert_int_equal(off, len);
		assert_memory_equal(back, msg, len);
		assert_int_equal(back[len], 0xa5);   /* nothing past the end */
		eng_message_close(&m);
	}
	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	for (int i = 0; i < 300; i++) {
		uint64_t off = randombytes_uniform((uint32_t)len + 10);
		size_t want = i % 3 == 0 ? ENG_CHUNK_BYTES :
			      randombytes_uniform(ENG_CHUNK_BYTES + 5000);
		size_t expect;

		if (i % 5 == 0)       /* a chunk's first byte: maybe direct */
			off = (uint64_t)randombytes_uniform(3) * ENG_CHUNK_BYTES;
		expect = off >= len ? 0 : len - off < want ? len - off : want;
		memset(back, 0xa5, want + 1);
		assert_int_equal(eng_message_read(m, off, back, want),
				 (long)expect);
		assert_memory_equal(back, msg + (off < len ? off : len), expect);
		assert_int_equal(back[expect], 0xa5);
	}
	eng_message_close(&m);
	free(back);
	free(msg);
	tu_store_check(f->st);
}

static void test_embedded_message_sections(void **state)
{
	tu_store *f = *state;
	static const char msg[] =
		"Subject: fwd\r\nContent-Type: message/rfc822\r\n\r\n"
		"Subject: inner\r\nFrom: x@y\r\n\r\ninner body\r\n";
	uint32_t uid = tu_store_append(f, f->inbox, msg, 0);
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

/* eng_message_open reads the size only; the header and MIME tree come at
 * first use, from the content row (gone once the message is expunged). */
static void test_message_lazy_meta(void **state)
{
	tu_store *f = *state;
	uint32_t uid = tu_store_append(f, f->inbox, TU_SIMPLE_MSG, ENG_F_DELETED);
	size_t len = strlen(TU_SIMPLE_MSG), hlen;
	eng_uidset set = { 0 };
	const eng_mime_part *root;
	eng_message *m, *gone;
	char back[sizeof(TU_SIMPLE_MSG)];
	const void *hdr;
	uint32_t *uids;
	size_t n;

	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	assert_int_equal(eng_message_size(m), len);
	assert_int_equal(eng_message_read(m, 0, back, sizeof(back)), (long)len);
	assert_memory_equal(back, TU_SIMPLE_MSG, len);
	assert_int_equal(eng_message_header(m, &hdr, &hlen), 0);
	assert_int_equal(hlen, strstr(TU_SIMPLE_MSG, "\r\n\r\n") + 4 - TU_SIMPLE_MSG);
	assert_memory_equal(hdr, TU_SIMPLE_MSG, hlen);
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
	assert_memory_equal(hdr, TU_SIMPLE_MSG, hlen);
	/* Never read before the expunge: the content row is gone. */
	assert_int_equal(eng_message_header(gone, &hdr, &hlen), ENG_ENOTFOUND);
	assert_null(hdr);
	assert_int_equal(hlen, 0);
	assert_int_equal(eng_message_mime(gone, &root), ENG_ENOTFOUND);
	eng_message_close(&gone);
	eng_message_close(&m);
	tu_store_check(f->st);
}

/* Thread ids: by References/In-Reply-To, else by base subject for replies. */
static void test_thread_ids(void **state)
{
	tu_store *f = *state;
	struct collect c = { .n = 0 };

	tu_store_append(f, f->inbox, "Message-ID: <p@x>\r\nSubject: Lunch?\r\n\r\na\r\n", 0);
	tu_store_append(f, f->inbox, "Message-ID: <q@x>\r\nIn-Reply-To: <p@x>\r\n"
	       "Subject: whatever\r\n\r\nb\r\n", 0);
	tu_store_append(f, f->inbox, "Message-ID: <r@x>\r\nSubject: re: LUNCH?\r\n\r\nc\r\n", 0);
	tu_store_append(f, f->inbox, "Message-ID: <s@x>\r\nSubject: Lunch?\r\n\r\nd\r\n", 0);
	/* A reply that arrives before its parent joins it later. */
	tu_store_append(f, f->inbox, "Message-ID: <u@x>\r\nReferences: <t@x>\r\n"
	       "Subject: x\r\n\r\ne\r\n", 0);
	tu_store_append(f, f->inbox, "Message-ID: <t@x>\r\nSubject: y\r\n\r\nf\r\n", 0);
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_append_fetch_flags,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_expunge_changes,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_copy_move_dedup,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_fetch_meta_inline,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_read_sections,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_zstd_contexts_freed,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_read_splits,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_embedded_message_sections,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_thread_ids,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_message_lazy_meta,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_mailbox_accounting,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_append_by_name,
						tu_store_setup, tu_store_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
