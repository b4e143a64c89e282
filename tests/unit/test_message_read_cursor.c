/*
 * eng_message_cursor (engine/message_read.c): opening the messages of one
 * mailbox UID after UID inside one read snapshot gives what
 * eng_message_open gives for each UID (the same content, size and bytes,
 * ENG_ENOTFOUND for the same UIDs) whatever the order and the gaps: UIDs
 * expunged singly and in runs longer than the cursor steps over, UIDs
 * asked twice or going back, past the mailbox's last UID (another
 * mailbox's rows must not show), messages of several chunks, copies in
 * another mailbox, and a new cursor in the next snapshot after an expunge
 * between the two. Neither reads the content row to open a message (its
 * leaf page was one page to read and decrypt per message): only the MIME
 * tree and the header need it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "store.h"
#include "store_private.h"
#include "teststore.h"

/* Message i's bytes: sizes from a line to several chunks. */
static char *message_text(unsigned i, size_t *len_r)
{
	size_t size = i % 40 == 3 ? ENG_CHUNK_BYTES * 2 + 1000 + i :
		      200 + (size_t)i * 37 % 5000;
	char *msg = malloc(size + 200);
	size_t len = (size_t)sprintf(msg, "Subject: cursor %u\r\n\r\n", i);
	uint32_t x = i * 2654435761u;

	while (len < size) {
		x = x * 1103515245 + 12345;
		/* Random letters (raw chunks) and runs (zstd ones). */
		msg[len] = i % 2 ? (char)('a' + (x >> 16) % 26) :
			   (char)('a' + len / 64 % 26);
		len++;
	}
	*len_r = len;
	return msg;
}

/* What eng_message_open gives for uid: 0 or the error, and the bytes. */
struct opened {
	int err;
	int64_t content_id;
	uint64_t size;
	char *bytes;
};

static int open_both(eng_store *st, int64_t mbox, eng_message_cursor *cur,
		     uint32_t uid)
{
	struct opened o[2] = { { 0 }, { 0 } };
	eng_message *m[2] = { NULL, NULL };

	o[0].err = eng_message_open(st, mbox, uid, &m[0]);
	o[1].err = eng_message_cursor_open_uid(cur, uid, &m[1]);
	assert_int_equal(o[1].err, o[0].err);
	for (int k = 0; k < 2; k++) {
		if (o[k].err != 0) {
			assert_null(m[k]);
			continue;
		}
		o[k].content_id = eng_message_content_id(m[k]);
		o[k].size = eng_message_size(m[k]);
		o[k].bytes = malloc(o[k].size + 1);
		assert_int_equal(eng_message_read(m[k], 0, o[k].bytes,
						  o[k].size), (long)o[k].size);
		eng_message_close(&m[k]);
	}
	if (o[0].err == 0) {
		assert_int_equal(o[1].content_id, o[0].content_id);
		assert_int_equal(o[1].size, o[0].size);
		assert_memory_equal(o[1].bytes, o[0].bytes, o[0].size);
	}
	free(o[0].bytes);
	free(o[1].bytes);
	return o[0].err;
}

enum { N = 300 };

/* Which of INBOX's UIDs fill() expunges. */
static bool expunged(unsigned i)
{
	return i % 7 == 0 || (i >= 100 && i < 220);
}

static size_t expunged_count(void)
{
	size_t n = 0;

	for (unsigned i = 1; i <= N; i++)
		n += expunged(i);
	return n;
}

/* Appends N messages to INBOX (UIDs 1..N) and N/3 to another mailbox
 * (its UIDs overlap INBOX's); expunges every seventh INBOX message and
 * the run 100..219 (longer than the cursor steps over). Returns the
 * other mailbox's id. */
static int64_t fill(tu_store *f)
{
	int64_t other;
	uint32_t *gone;
	size_t n_gone;

	assert_int_equal(eng_mailbox_create(f->st, "Other", 0, &other), 0);
	for (unsigned i = 1; i <= N; i++) {
		size_t len;
		char *msg = message_text(i, &len);
		eng_append_opts o = { .flags = expunged(i) ? ENG_F_DELETED : 0 };
		uint32_t uid;
		uint64_t ms;

		assert_int_equal(eng_append_message(f->st, f->inbox, msg, len,
						    &o, &uid, &ms), 0);
		assert_int_equal(uid, i);
		if (i % 3 == 0) {
			o.flags = 0;
			assert_int_equal(eng_append_message(f->st, other, msg,
							    len, &o, &uid, &ms), 0);
		}
		free(msg);
	}
	assert_int_equal(eng_expunge(f->st, f->inbox, NULL, &gone, &n_gone), 0);
	assert_int_equal(n_gone, expunged_count());
	free(gone);
	return other;
}

/* Every UID 1..N+5 in ascending order, in one snapshot. */
static void test_ascending(void **state)
{
	tu_store *f = *state;
	eng_message_cursor *cur;
	size_t found = 0;

	fill(f);
	assert_int_equal(eng_store_read_begin(f->st), 0);
	cur = eng_message_cursor_new(f->st, f->inbox);
	for (uint32_t uid = 1; uid <= N + 5; uid++) {
		int err = open_both(f->st, f->inbox, cur, uid);

		assert_int_equal(err, uid <= N && !expunged(uid) ? 0 :
				 ENG_ENOTFOUND);
		found += err == 0;
	}
	assert_int_equal(found, N - expunged_count());
	eng_message_cursor_close(&cur);
	assert_null(cur);
	eng_store_read_end(f->st);
}

/* Sparse, repeated and backward UIDs, and one past the end then one
 * before it; the other mailbox through its own cursor. */
static void test_any_order(void **state)
{
	static const uint32_t order[] = {
		5, 5, 6, 8, 2, 1, 99, 220, 221, 150, 98, 300, 301, 299,
		1000, 4, 64, 66, 67, 250, 7, 14, 15, 3000000000u, 9,
		10, 12, 11, 230, 240, 301, 235, 236,
	};
	tu_store *f = *state;
	int64_t other = fill(f);
	eng_message_cursor *cur;

	assert_int_equal(eng_store_read_begin(f->st), 0);
	cur = eng_message_cursor_new(f->st, f->inbox);
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
		open_both(f->st, f->inbox, cur, order[i]);
	eng_message_cursor_close(&cur);
	cur = eng_message_cursor_new(f->st, other);
	for (uint32_t uid = 1; uid <= N / 3 + 2; uid += 1 + uid % 3)
		open_both(f->st, other, cur, uid);
	eng_message_cursor_close(&cur);
	eng_store_read_end(f->st);
	/* A cursor never used holds nothing. */
	cur = eng_message_cursor_new(f->st, f->inbox);
	eng_message_cursor_close(&cur);
}

/* COPY puts the source rows' size on the new ones: messages copied from
 * INBOX (the several-chunk ones among them) open the same through the
 * cursor in the destination, at their new UIDs. */
static void test_copied(void **state)
{
	tu_store *f = *state;
	eng_uidset set = { 0 };
	uint32_t *src, *dst;
	size_t n;
	int64_t copies;
	eng_message_cursor *cur;

	fill(f);
	assert_int_equal(eng_mailbox_create(f->st, "Copies", 0, &copies), 0);
	eng_uidset_add(&set, 1, N);
	assert_int_equal(eng_message_copy(f->st, f->inbox, &set, copies, false,
					  &src, &dst, &n), 0);
	assert_int_equal(n, N - expunged_count());
	assert_int_equal(eng_store_read_begin(f->st), 0);
	cur = eng_message_cursor_new(f->st, copies);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(open_both(f->st, copies, cur, dst[i]), 0);
	eng_message_cursor_close(&cur);
	eng_store_read_end(f->st);
	free(src);
	free(dst);
	eng_uidset_free(&set);
}

/*
 * The way FETCH_BODIES uses it: a cursor per snapshot. Messages expunged
 * between two snapshots are found in the first and not in the second;
 * one appended in between is found in the second.
 */
static void test_snapshots(void **state)
{
	tu_store *f = *state;
	eng_message_cursor *cur;
	eng_message *m;
	eng_uidset set = { 0 };
	uint32_t *gone, uid;
	size_t n_gone;

	fill(f);
	assert_int_equal(eng_store_read_begin(f->st), 0);
	cur = eng_message_cursor_new(f->st, f->inbox);
	for (uid = 1; uid <= 50; uid++)
		open_both(f->st, f->inbox, cur, uid);
	eng_message_cursor_close(&cur);
	eng_store_read_end(f->st);

	eng_uidset_add(&set, 51, 60);
	assert_int_equal(eng_store_flags(f->st, f->inbox, &set, ENG_STORE_ADD,
					 ENG_F_DELETED, NULL, 0, 0, NULL,
					 NULL, NULL), 0);
	assert_int_equal(eng_expunge(f->st, f->inbox, NULL, &gone, &n_gone), 0);
	assert_true(n_gone > 0);
	free(gone);
	eng_uidset_free(&set);
	uid = tu_store_append(f, f->inbox, "Subject: late\r\n\r\nlate\r\n", 0);

	assert_int_equal(eng_store_read_begin(f->st), 0);
	cur = eng_message_cursor_new(f->st, f->inbox);
	for (uint32_t u = 51; u <= 61; u++) {
		assert_int_equal(eng_message_cursor_open_uid(cur, u, &m),
				 u == 61 ? 0 : ENG_ENOTFOUND);
		eng_message_close(&m);
	}
	open_both(f->st, f->inbox, cur, uid);
	eng_message_cursor_close(&cur);
	eng_store_read_end(f->st);
}

/* A message whose content row is gone (a test-only damage) opens, with
 * the message row's size, and reads its bytes from the chunks, through
 * eng_message_open and the cursor alike; its header does not. */
static void test_open_without_content_row(void **state)
{
	static const char msg[] = "Subject: row\r\n\r\nbody bytes\r\n";
	tu_store *f = *state;
	uint32_t uid = tu_store_append(f, f->inbox, msg, 0);
	eng_message_cursor *cur;
	eng_message *m;
	char sql[96], buf[sizeof(msg)];
	const void *hdr;
	size_t hdr_len;

	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	snprintf(sql, sizeof(sql), "DELETE FROM content WHERE id = %lld",
		 (long long)eng_message_content_id(m));
	eng_message_close(&m);
	assert_int_equal(sqlite3_exec(f->st->db, sql, NULL, NULL, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_changes(f->st->db), 1);

	assert_int_equal(eng_store_read_begin(f->st), 0);
	cur = eng_message_cursor_new(f->st, f->inbox);
	assert_int_equal(open_both(f->st, f->inbox, cur, uid), 0);
	eng_message_cursor_close(&cur);
	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	assert_int_equal(eng_message_size(m), sizeof(msg) - 1);
	assert_int_equal(eng_message_read(m, 0, buf, sizeof(buf)),
			 (long)sizeof(msg) - 1);
	assert_memory_equal(buf, msg, sizeof(msg) - 1);
	assert_int_equal(eng_message_header(m, &hdr, &hdr_len), ENG_ENOTFOUND);
	eng_message_close(&m);
	eng_store_read_end(f->st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_ascending,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_any_order,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_copied,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_snapshots,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_open_without_content_row,
						tu_store_setup, tu_store_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
