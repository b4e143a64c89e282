/*
 * Content pins (engine/content_pin.c): a message of several chunks read in
 * pieces while it is expunged reads back exact when its content is
 * pinned, the orphan is counted nowhere and goes with the last unpin, the
 * pin outlives a close and reopen of the store (eng_message_rebind), an
 * orphan left by a crash goes at the next open, and a delivery of the
 * same bytes takes an orphan back.
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
#include "store.h"
#include "store_private.h"
#include "teststore.h"
#include "testutil.h"

#define MSG_BYTES (1200u * 1024)   /* 5 chunks of 256 KiB */
#define FIRST_PIECE (300u * 1024)  /* ends inside the second chunk */

/* A message of about MSG_BYTES: a header, then random base64 lines (stored
 * raw: zstd does not shrink them). */
static char *random_message(size_t *len_r)
{
	static const char b64[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char *msg = malloc(MSG_BYTES + 256);
	size_t len = (size_t)sprintf(msg, "From: a@example.org\r\n"
				     "Subject: pinned\r\n\r\n");

	while (len + 78 <= MSG_BYTES) {
		for (int i = 0; i < 76; i++)
			msg[len++] = b64[randombytes_uniform(64)];
		msg[len++] = '\r';
		msg[len++] = '\n';
	}
	msg[len] = '\0';
	*len_r = len;
	return msg;
}

static int64_t count_rows(tu_store *f, const char *table)
{
	char sql[96];

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
	return tu_sql_int(f->st, sql);
}

/* Expunges everything marked \Deleted in INBOX; asserts n went. */
static void expunge(tu_store *f, size_t want)
{
	uint32_t *uids = NULL;
	size_t n = 0;

	assert_int_equal(eng_expunge(f->st, f->inbox, NULL, &uids, &n), 0);
	assert_int_equal(n, want);
	free(uids);
}

static void reopen(tu_store *f)
{
	eng_store_options opt;

	eng_store_options_default(&opt);
	eng_store_close(&f->st);
	assert_int_equal(eng_store_open(f->path, f->key, &opt, &f->st), 0);
}

/* Opens uid, reads the first piece, pins: the stream's first work item. */
static eng_message *open_pinned(tu_store *f, uint32_t uid, char *back,
				eng_content_pin **pin_r)
{
	eng_message *m;

	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	assert_int_equal(eng_message_read(m, 0, back, FIRST_PIECE),
			 (long)FIRST_PIECE);
	*pin_r = eng_message_pin(m);
	assert_int_equal(eng_content_pin_id(*pin_r),
			 eng_message_content_id(m));
	return m;
}

/* The rest of the message, in pieces of 100 KiB as a stream reads it. */
static void read_rest(eng_message *m, char *back, size_t len)
{
	for (size_t pos = FIRST_PIECE; pos < len;) {
		size_t want = len - pos < 100 * 1024 ? len - pos : 100 * 1024;

		assert_int_equal(eng_message_read(m, pos, back + pos, want),
				 (long)want);
		pos += want;
	}
}

/* What a stream holds when an EXPUNGE comes between its pieces: a message
 * of MSG_BYTES marked \Deleted, open and pinned after its first piece. */
struct stream {
	char *msg, *back;
	size_t len;
	uint32_t uid;
	eng_content_pin *pin;
	eng_message *m;
};

static void stream_begin(tu_store *f, struct stream *s)
{
	s->msg = random_message(&s->len);
	s->back = malloc(s->len);
	s->uid = tu_store_append(f, f->inbox, s->msg, ENG_F_DELETED);
	s->m = open_pinned(f, s->uid, s->back, &s->pin);
}

/* Reads the rest, checks every byte, closes the message (pin kept). */
static void stream_read_rest(struct stream *s)
{
	read_rest(s->m, s->back, s->len);
	assert_memory_equal(s->back, s->msg, s->len);
	eng_message_close(&s->m);
}

static void stream_free(struct stream *s)
{
	eng_message_close(&s->m);
	assert_null(s->pin);
	free(s->back);
	free(s->msg);
}

static void test_pin_keeps_expunged_content(void **state)
{
	tu_store *f = *state;
	struct stream s;
	uint64_t used = 1;

	stream_begin(f, &s);
	assert_true(count_rows(f, "body_chunk") >= 5);
	expunge(f, 1);
	/* Kept, but counted nowhere. */
	assert_int_equal(tu_sql_int(f->st, "SELECT refs FROM content"), 0);
	assert_int_equal(eng_quota_get(f->st, &used, NULL, NULL), 0);
	assert_int_equal(used, 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT value FROM meta "
				    "WHERE key = 'content_orphans'"), 1);
	stream_read_rest(&s);
	/* The last unpin deletes it, with every row of it. */
	assert_int_equal(eng_content_unpin(&s.pin, f->st), 0);
	assert_int_equal(count_rows(f, "content"), 0);
	assert_int_equal(count_rows(f, "body_chunk"), 0);
	assert_int_equal(count_rows(f, "fts"), 0);
	tu_store_check(f->st);
	stream_free(&s);
}

/* Two pins of one content: the first unpin keeps it. */
static void test_two_pins(void **state)
{
	tu_store *f = *state;
	struct stream s;
	eng_content_pin *pin2;
	eng_message *m2;

	stream_begin(f, &s);
	m2 = open_pinned(f, s.uid, s.back, &pin2);
	expunge(f, 1);
	eng_message_close(&m2);
	assert_int_equal(eng_content_unpin(&pin2, f->st), 0);
	assert_int_equal(count_rows(f, "content"), 1);
	stream_read_rest(&s);
	assert_int_equal(eng_content_unpin(&s.pin, f->st), 0);
	assert_int_equal(count_rows(f, "content"), 0);
	stream_free(&s);
}

/* The store is closed and reopened between pieces (sqlited's release):
 * the open's sweep leaves the pinned orphan, the message reads on through
 * the new handle, and the unpin there deletes it. */
static void test_pin_outlives_reopen(void **state)
{
	tu_store *f = *state;
	struct stream s;

	stream_begin(f, &s);
	expunge(f, 1);
	reopen(f);
	assert_int_equal(count_rows(f, "content"), 1);
	eng_message_rebind(s.m, f->st);
	stream_read_rest(&s);
	assert_int_equal(eng_content_unpin(&s.pin, f->st), 0);
	assert_int_equal(count_rows(f, "content"), 0);
	assert_int_equal(count_rows(f, "body_chunk"), 0);
	tu_store_check(f->st);
	stream_free(&s);
}

/* An orphan whose pin went without the store (a crash, a stream ended
 * off the store's thread) is deleted by the next open, which also clears
 * the meta key. */
static void test_sweep_at_open(void **state)
{
	tu_store *f = *state;
	struct stream s;

	stream_begin(f, &s);
	expunge(f, 1);
	assert_int_equal(eng_content_unpin(&s.pin, NULL), 0);
	assert_int_equal(count_rows(f, "content"), 1);
	reopen(f);
	assert_int_equal(count_rows(f, "content"), 0);
	assert_int_equal(count_rows(f, "body_chunk"), 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT value FROM meta "
				    "WHERE key = 'content_orphans'"), 0);
	tu_store_check(f->st);
	stream_free(&s);
}

/* A delivery of the same bytes while the orphan is pinned takes it back
 * (dedup by sha256): the unpin then keeps it, and it reads whole. */
static void test_dedup_takes_orphan_back(void **state)
{
	tu_store *f = *state;
	struct stream s;
	int64_t id;
	uint32_t uid2;
	eng_message *m2;

	stream_begin(f, &s);
	id = eng_content_pin_id(s.pin);
	expunge(f, 1);
	uid2 = tu_store_append(f, f->inbox, s.msg, 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT id FROM content"), id);
	assert_int_equal(tu_sql_int(f->st, "SELECT refs FROM content"), 1);
	eng_message_close(&s.m);
	assert_int_equal(eng_content_unpin(&s.pin, f->st), 0);
	assert_int_equal(count_rows(f, "content"), 1);
	memset(s.back, 0, s.len);
	assert_int_equal(eng_message_open(f->st, f->inbox, uid2, &m2), 0);
	assert_int_equal(eng_message_read(m2, 0, s.back, s.len), (long)s.len);
	assert_memory_equal(s.back, s.msg, s.len);
	eng_message_close(&m2);
	tu_store_check(f->st);
	stream_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_pin_keeps_expunged_content,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_two_pins,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_pin_outlives_reopen,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_sweep_at_open,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_dedup_takes_orphan_back,
						tu_store_setup, tu_store_teardown),
	};

	if (sodium_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
