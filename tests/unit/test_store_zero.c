/*
 * Zeroed pages under content.header and the search text (engine/
 * zero_check.c). SQLCipher 3.4.1 decrypts a page that is all zeroes on
 * disk to zeroes without an error (test_storefaults' test_every_page_zeroed
 * does it to the file); here the value is overwritten in SQL with what such
 * a page reads as (zeroes from a 1 KiB multiple on), so each read path is
 * aimed at directly: the reads must fail with ENG_ECORRUPT instead of
 * answering zeroes. And a message whose own header or text holds a block of
 * NULs (legal input, if pathological) reads back and searches as before.
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
#include "search.h"
#include "store.h"
#include "store_private.h"
#include "teststore.h"
#include "testutil.h"

/* A message with a header of about 6 KiB (it spills into overflow pages)
 * and a text body that holds the word "needle"; nul_bytes NULs in the
 * header (an X-Nul field) and in the body's decoded text when > 0. */
static char *long_message(size_t nul_bytes, size_t *len_r)
{
	char *msg = malloc(64 * 1024);
	size_t len = (size_t)sprintf(msg, "From: a@example.org\r\n"
				     "Subject: zeroes\r\n");

	for (int i = 0; i < 60; i++)
		len += (size_t)sprintf(msg + len, "X-Filler-%02d: %090d\r\n",
				       i, i);
	if (nul_bytes > 0) {
		len += (size_t)sprintf(msg + len, "X-Nul: ");
		memset(msg + len, 0, nul_bytes);
		len += nul_bytes;
		len += (size_t)sprintf(msg + len, "\r\n");
	}
	len += (size_t)sprintf(msg + len, "Content-Type: text/plain\r\n\r\n");
	for (int i = 0; i < 80; i++)
		len += (size_t)sprintf(msg + len, "line %02d of the body, a "
				       "needle in the hay of it all\r\n", i);
	if (nul_bytes > 0) {
		memset(msg + len, 0, nul_bytes);
		len += nul_bytes;
		len += (size_t)sprintf(msg + len, "\r\nafter the NULs\r\n");
	}
	*len_r = len;
	return msg;
}

static uint32_t append_raw(tu_store *f, const char *msg, size_t len)
{
	uint32_t uid;
	uint64_t modseq;

	assert_int_equal(eng_append_message(f->st, f->inbox, msg, len, NULL,
					    &uid, &modseq), 0);
	return uid;
}

static void exec_sql(tu_store *f, const char *sql)
{
	assert_int_equal(sqlite3_exec(f->st->db, sql, NULL, NULL, NULL),
			 SQLITE_OK);
}

static int header_of(tu_store *f, uint32_t uid, const void **hdr_r,
		     size_t *len_r, eng_message **m_r)
{
	assert_int_equal(eng_message_open(f->st, f->inbox, uid, m_r), 0);
	return eng_message_header(*m_r, hdr_r, len_r);
}

static int meta_cb(void *ctx, const eng_msg *msg)
{
	size_t *len = ctx;

	*len = msg->header_len;
	return 0;
}

/* FETCH_META with the header inline (sqlited's FETCH_META WANT 4). */
static int fetch_meta_header(tu_store *f, size_t *len_r)
{
	return eng_fetch_meta_want(f->st, f->inbox, NULL, 0,
				   ENG_FETCH_WANT_HEADER, meta_cb, len_r);
}

static int search_n(tu_store *f, eng_query *q, size_t *n_r)
{
	uint32_t *uids = NULL;
	int err = eng_search(f->st, f->inbox, q, NULL, 0, NULL, 0, &uids,
			     n_r, NULL);

	free(uids);
	eng_query_free(&q);
	return err;
}

static void test_zeroed_header(void **state)
{
	tu_store *f = *state;
	size_t len, hlen = 0, mlen = 0;
	char *msg = long_message(0, &len);
	uint32_t uid = append_raw(f, msg, len);
	const void *hdr;
	eng_message *m;

	assert_int_equal(header_of(f, uid, &hdr, &hlen, &m), 0);
	assert_true(hlen > 5000);
	assert_memory_equal(hdr, msg, hlen);
	eng_message_close(&m);
	/* Bytes [2048, 4096) of the column zeroed, as a zeroed page is. */
	exec_sql(f, "UPDATE content SET header = substr(header, 1, 2048) || "
		 "zeroblob(2048) || substr(header, 4097)");
	assert_int_equal(header_of(f, uid, &hdr, &hlen, &m), ENG_ECORRUPT);
	eng_message_close(&m);
	assert_int_equal(fetch_meta_header(f, &mlen), ENG_ECORRUPT);
	free(msg);
}

/* NULs in the message's own header: the check reads the chunks and finds
 * the same bytes; no false alarm. */
static void test_header_with_nuls(void **state)
{
	tu_store *f = *state;
	size_t len, hlen = 0, mlen = 0;
	char *msg = long_message(3000, &len);
	uint32_t uid = append_raw(f, msg, len);
	const void *hdr;
	eng_message *m;

	assert_int_equal(header_of(f, uid, &hdr, &hlen, &m), 0);
	assert_true(store_zero_block(hdr, hlen, 0));
	assert_memory_equal(hdr, msg, hlen);
	eng_message_close(&m);
	assert_int_equal(fetch_meta_header(f, &mlen), 0);
	assert_int_equal(mlen, hlen);
	free(msg);
}

static void test_zeroed_search_text(void **state)
{
	tu_store *f = *state;
	size_t len, n = 0;
	char *msg = long_message(0, &len);

	append_raw(f, msg, len);
	assert_int_equal(search_n(f, eng_query_new_text(ENG_Q_BODY, "needle"),
				  &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(search_n(f, eng_query_new_header("X-Filler-50",
							   "50"), &n), 0);
	assert_int_equal(n, 1);
	exec_sql(f, "UPDATE fts_content SET "
		 "c0header = substr(c0header, 1, 1024) || zeroblob(3072) || "
		 "substr(c0header, 4097), "
		 "c1body = substr(c1body, 1, 1024) || zeroblob(2048)");
	assert_int_equal(search_n(f, eng_query_new_text(ENG_Q_BODY, "needle"),
				  &n), ENG_ECORRUPT);
	assert_int_equal(search_n(f, eng_query_new_header("X-Filler-50",
							   "50"), &n),
			 ENG_ECORRUPT);
	free(msg);
}

/* NULs in the decoded text are indexed as spaces: searches still work. */
static void test_search_text_with_nuls(void **state)
{
	tu_store *f = *state;
	size_t len, n = 0;
	char *msg = long_message(3000, &len);

	append_raw(f, msg, len);
	assert_int_equal(tu_sql_int(f->st, "SELECT instr(c1body, "
				    "zeroblob(1)) FROM fts_content"), 0);
	assert_int_equal(search_n(f, eng_query_new_text(ENG_Q_BODY, "needle"),
				  &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(search_n(f, eng_query_new_text(ENG_Q_TEXT,
							"after the NULs"),
				  &n), 0);
	assert_int_equal(n, 1);
	free(msg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_zeroed_header,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_header_with_nuls,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_zeroed_search_text,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_search_text_with_nuls,
						tu_store_setup, tu_store_teardown),
	};

	if (sodium_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
