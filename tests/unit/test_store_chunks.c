/*
 * The chunks of a message in the store: chunk storage (zstd frames or raw
 * bytes by a sample), reads across chunk boundaries and after an expunge,
 * the header captured in pieces, blocks of zeroes, damaged chunks and
 * version 3 chunks. Split from test_store_message.c. The fixture and the
 * invariants of engine/store.c are teststore.c's.
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

/* Reads m at many offsets and lengths, across chunk boundaries, and
 * compares with msg. */
static void check_ranges(eng_message *m, const char *msg, size_t len)
{
	static const size_t lens[] = { 1, 10, 4095, 4096, 70000,
				       ENG_CHUNK_BYTES, ENG_CHUNK_BYTES + 3 };
	char *back = malloc(ENG_CHUNK_BYTES + 3);

	for (size_t off = 0; off < len; off += 48611) {
		for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
			size_t want = len - off < lens[i] ? len - off : lens[i];

			assert_int_equal(eng_message_read(m, off, back, lens[i]),
					 (long)want);
			assert_memory_equal(back, msg + off, want);
		}
	}
	/* The last bytes of each chunk and the first of the next. */
	for (size_t b = ENG_CHUNK_BYTES; b < len; b += ENG_CHUNK_BYTES) {
		assert_int_equal(eng_message_read(m, b - 3, back, 6), 6);
		assert_memory_equal(back, msg + b - 3, 6);
	}
	free(back);
}

/* Message uid reads back as msg: whole, then in ranges. */
static void check_message(tu_store *f, uint32_t uid, const char *msg,
			  size_t len)
{
	char *back = malloc(len);
	eng_message *m;

	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	assert_int_equal(eng_message_read(m, 0, back, len), (long)len);
	assert_memory_equal(back, msg, len);
	check_ranges(m, msg, len);
	eng_message_close(&m);
	free(back);
}

static int64_t stored_bytes(tu_store *f)
{
	return tu_sql_int(f->st, "SELECT coalesce(sum(length(data)), 0) "
			  "FROM body_chunk");
}

/*
 * How chunks are stored (message.c, flush_chunk): a base64 attachment of
 * random bytes, which zstd cannot shrink by an eighth, is stored raw (its
 * rows hold exactly its bytes); repeated text is a zstd frame of almost
 * nothing. Both read back byte for byte, whole and in any range.
 */
static void test_chunk_storage(void **state)
{
	tu_store *f = *state;
	char *msg = big_message(600 * 1024), *text = text_message(300 * 1024);
	size_t len = strlen(msg), tlen = strlen(text);
	uint32_t uid, tuid;
	int64_t stored;

	uid = tu_store_append(f, f->inbox, msg, 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM body_chunk"),
			 3);
	assert_int_equal(stored_bytes(f), (int64_t)len);
	stored = stored_bytes(f);
	tuid = tu_store_append(f, f->inbox, text, 0);
	stored = stored_bytes(f) - stored;
	assert_true(stored > 0 && stored * 20 < (int64_t)tlen);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM chunk"), 0);
	check_message(f, uid, msg, len);
	check_message(f, tuid, text, tlen);
	/* In one read snapshot, where one blob handle goes from row to row. */
	assert_int_equal(eng_store_read_begin(f->st), 0);
	check_message(f, tuid, text, tlen);
	check_message(f, uid, msg, len);
	check_message(f, tuid, text, tlen);
	eng_store_read_end(f->st);
	free(text);
	free(msg);
	tu_store_check(f->st);
}

/*
 * The sample that spares a chunk the trial compression (message.c,
 * sample_says_raw): random base64 is judged raw, text is not, a chunk
 * below 16 KiB is always tried; a chunk that is half text (the header and
 * a text part) and half random base64 saves more than an eighth with
 * zstd, so the sample must not judge it raw: it is stored as a frame and
 * reads back exact, as does a message of random base64 stored untried.
 */
static void test_chunk_sample(void **state)
{
	tu_store *f = *state;
	char *rnd = big_message(ENG_CHUNK_BYTES + 4096);
	char *text = text_message(ENG_CHUNK_BYTES + 4096);
	char *mixed = malloc(ENG_CHUNK_BYTES + 8192);
	size_t half = ENG_CHUNK_BYTES / 2, len;
	int64_t stored;
	uint32_t uid;

	assert_true(store_chunk_sample_raw(rnd + 512, ENG_CHUNK_BYTES, 3));
	assert_true(store_chunk_sample_raw(rnd + 512, 16 * 1024, 3));
	assert_false(store_chunk_sample_raw(rnd + 512, 16 * 1024 - 1, 3));
	assert_false(store_chunk_sample_raw(text, ENG_CHUNK_BYTES, 3));

	/* Text for the first half of the chunk, random base64 after. */
	memcpy(mixed, text, half);
	memcpy(mixed + half, rnd + 512, ENG_CHUNK_BYTES - half);
	assert_false(store_chunk_sample_raw(mixed, ENG_CHUNK_BYTES, 3));
	len = ENG_CHUNK_BYTES;
	mixed[len] = '\0';
	assert_int_equal(eng_append_message(f->st, f->inbox, mixed, len, NULL,
					    &uid, NULL), 0);
	stored = stored_bytes(f);
	assert_true(stored < (int64_t)(len - len / 8));
	check_message(f, uid, mixed, len);

	/* Random base64 over two chunks: both raw, exact. */
	len = strlen(rnd);
	uid = tu_store_append(f, f->inbox, rnd, 0);
	assert_int_equal(stored_bytes(f) - stored, (int64_t)len);
	check_message(f, uid, rnd, len);
	free(mixed);
	free(text);
	free(rnd);
	tu_store_check(f->st);
}

/* Appends msg through eng_append_write in pieces of step bytes (0:
 * pieces of 1 to 97 bytes by turns); returns the UID. */
static uint32_t append_in_pieces(tu_store *f, const char *msg, size_t len,
				 size_t step)
{
	eng_append *ap;
	uint32_t uid;
	size_t n;

	assert_int_equal(eng_append_begin(f->st, f->inbox, NULL, &ap), 0);
	for (size_t off = 0, i = 0; off < len; off += n, i++) {
		n = step != 0 ? step : 1 + (i * 37) % 97;
		if (n > len - off)
			n = len - off;
		assert_int_equal(eng_append_write(ap, msg + off, n), 0);
	}
	assert_int_equal(eng_append_commit(&ap, &uid, NULL), 0);
	return uid;
}

/*
 * content.header is the top-level header with its blank line, however
 * the bytes arrive (message.c captures them only until the parser saw the
 * header end): CRLF and LF messages, a blank line split across pieces, a
 * message that is all header, one whose header ends in its last byte.
 */
static void test_header_capture(void **state)
{
	/* hlen 0: all of it is header (then a line goes in front to make
	 * each copy unique, else a suffix to the body does). */
	static const struct {
		const char *msg;
		size_t hlen;
	} cases[] = {
		{ "From: a@example.org\r\nSubject: s\r\n\r\nbody\r\n", 35 },
		{ "From: a@example.org\nSubject: s\n\nbody\nmore\n", 32 },
		{ "From: a@example.org\r\nSubject: only a header\r\n", 0 },
		{ "Subject: x\r\n\r\n", 14 },
		{ "Subject: x\r\n\r\n\r\n\r\nbody after blank lines", 14 },
	};
	static const size_t steps[] = { 1, 2, 3, 7, 4096, 0 };
	tu_store *f = *state;
	char *big = big_message(300 * 1024);

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
			char *msg = malloc(strlen(cases[c].msg) + 32);
			size_t hlen, len = (size_t)(cases[c].hlen == 0 ?
				sprintf(msg, "X-N: %zu\r\n%s", s, cases[c].msg) :
				sprintf(msg, "%s%zu", cases[c].msg, s));
			uint32_t uid = append_in_pieces(f, msg, len, steps[s]);
			eng_message *m;
			const void *hdr;

			assert_int_equal(eng_message_open(f->st, f->inbox, uid,
							  &m), 0);
			assert_int_equal(eng_message_header(m, &hdr, &hlen), 0);
			assert_int_equal(hlen, cases[c].hlen == 0 ? len :
					 cases[c].hlen);
			assert_memory_equal(hdr, msg, hlen);
			eng_message_close(&m);
			free(msg);
		}
	}
	/* A big message in 1,000-byte pieces: the header alone, exact. */
	{
		uint32_t uid = append_in_pieces(f, big, strlen(big), 1000);
		const char *end = strstr(big, "\r\n\r\n") + 4;
		eng_message *m;
		const void *hdr;
		size_t hlen;

		assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
		assert_int_equal(eng_message_header(m, &hdr, &hlen), 0);
		assert_int_equal(hlen, (size_t)(end - big));
		assert_memory_equal(hdr, big, hlen);
		check_message(f, uid, big, strlen(big));
		eng_message_close(&m);
	}
	free(big);
	tu_store_check(f->st);
}

/*
 * Zero blocks (store_private.h): a run of 2,047 zeroes holds an aligned
 * block wherever it starts, a shorter one may not; the offset of p in its
 * chunk counts. A chunk holding one is stored as a zstd frame, however
 * badly the rest compresses, and reads back exact.
 */
static void test_zero_blocks(void **state)
{
	tu_store *f = *state;
	unsigned char *buf = calloc(1, 8192);
	char *msg = big_message(200 * 1024);
	size_t len = strlen(msg);
	uint32_t uid;

	memset(buf, 'x', 8192);
	memset(buf + 1000, 0, 2047);
	assert_true(store_zero_block(buf, 8192, 0));
	assert_true(store_zero_block(buf + 1000, 2047, 1000));
	assert_true(store_zero_block(buf + 1000, 2047, 1025));
	/* 2,046 zeroes from chunk byte 1,025 to 3,070: no whole block. */
	assert_false(store_zero_block(buf + 1000, 2046, 1025));
	memset(buf + 1000, 'x', 2047);
	memset(buf + 1025, 0, 1023);
	assert_false(store_zero_block(buf, 8192, 0));
	buf[1024] = 0;
	assert_true(store_zero_block(buf, 8192, 0));
	/* The same bytes one further into their chunk: not aligned. */
	assert_false(store_zero_block(buf + 1, 8191, 0));
	free(buf);

	memset(msg + 100 * 1024, 0, 3000);
	assert_int_equal(eng_append_message(f->st, f->inbox, msg, len, NULL,
					    &uid, NULL), 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM body_chunk"),
			 1);
	assert_true(stored_bytes(f) < (int64_t)len);
	check_message(f, uid, msg, len);
	free(msg);
	tu_store_check(f->st);
}

/*
 * A read that stops inside a raw chunk takes the whole chunk into the
 * handle's cache: the rest of it reads back exact after the message is
 * expunged (a body stream reads each piece in its own snapshot).
 */
static void test_read_rest_after_expunge(void **state)
{
	tu_store *f = *state;
	char *msg = big_message(200 * 1024);
	size_t len = strlen(msg);
	char *back = malloc(len);
	uint32_t uid = tu_store_append(f, f->inbox, msg, ENG_F_DELETED);
	uint32_t *uids;
	size_t n;
	eng_message *m;

	assert_int_equal(stored_bytes(f), (int64_t)len);       /* raw */
	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	assert_int_equal(eng_message_read(m, 0, back, 1000), 1000);
	assert_int_equal(eng_expunge(f->st, f->inbox, NULL, &uids, &n), 0);
	assert_int_equal(n, 1);
	free(uids);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM body_chunk"),
			 0);
	assert_int_equal(eng_message_read(m, 1000, back + 1000, len),
			 (long)(len - 1000));
	assert_memory_equal(back, msg, len);
	eng_message_close(&m);
	free(back);
	free(msg);
}

/* Reads the whole message uid: 0 or the error. */
static long read_whole(tu_store *f, uint32_t uid, char *back, size_t len)
{
	eng_message *m;
	long n;

	assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
	n = eng_message_read(m, 0, back, len);
	eng_message_close(&m);
	return n;
}

/* A body_chunk row of the wrong length is damage, never other bytes: one
 * longer than its raw length, and a raw one cut short (it then reads as a
 * zstd frame, which it is not). */
static void test_chunk_damage(void **state)
{
	tu_store *f = *state;
	char *msg = big_message(300 * 1024), *text = text_message(1000);
	size_t len = strlen(msg);
	char *back = malloc(len);
	uint32_t uid = tu_store_append(f, f->inbox, msg, 0);
	uint32_t tuid = tu_store_append(f, f->inbox, text, 0);

	assert_int_equal(read_whole(f, uid, back, len), (long)len);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM body_chunk"),
			 3);
	assert_int_equal(sqlite3_exec(f->st->db, "UPDATE body_chunk SET data "
		"= data || x'00' WHERE id & 65535 = 0", NULL, NULL, NULL),
		SQLITE_OK);
	assert_int_equal(read_whole(f, uid, back, len), ENG_ECORRUPT);
	assert_int_equal(read_whole(f, tuid, back, len), ENG_ECORRUPT);
	assert_int_equal(sqlite3_exec(f->st->db, "UPDATE body_chunk SET data "
		"= substr(data, 1, 1000) WHERE id & 65535 = 1", NULL, NULL,
		NULL), SQLITE_OK);
	assert_int_equal(sqlite3_exec(f->st->db, "DELETE FROM body_chunk "
		"WHERE id & 65535 = 0", NULL, NULL, NULL), SQLITE_OK);
	/* The first chunk missing; the second damaged. */
	assert_int_equal(read_whole(f, uid, back, len), ENG_ECORRUPT);
	{
		eng_message *m;

		assert_int_equal(eng_message_open(f->st, f->inbox, uid, &m), 0);
		assert_int_equal(eng_message_read(m, ENG_CHUNK_BYTES, back, 10),
				 ENG_ECORRUPT);
		eng_message_close(&m);
	}
	free(back);
	free(text);
	free(msg);
}

/*
 * A version 3 store: its chunks in the chunk table, zstd frames all.
 * Opening it migrates it to version 4 (body_chunk, empty) without moving
 * anything; its messages read byte for byte, whole and in ranges; a new
 * append goes to body_chunk; dropping an old message drops its chunks.
 */
static void test_version3_chunks(void **state)
{
	tu_store *f = *state;
	char *msg = big_message(600 * 1024), *text = text_message(300 * 1024);
	size_t len = strlen(msg), tlen = strlen(text);
	char *back = malloc(len);
	uint32_t uid = tu_store_append(f, f->inbox, msg, ENG_F_DELETED);
	uint32_t tuid = tu_store_append(f, f->inbox, text, 0), nuid;
	eng_store_options opt;
	uint32_t *uids;
	size_t n;

	tu_store_chunks_to_v3(f->st);
	assert_int_equal(sqlite3_exec(f->st->db, "DELETE FROM schema_version "
		"WHERE version > 3", NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM chunk"), 5);
	eng_store_close(&f->st);
	eng_store_options_default(&opt);
	assert_int_equal(eng_store_open(f->path, f->key, &opt, &f->st), 0);
	assert_int_equal(eng_store_schema_version(f->st), ENG_SCHEMA_VERSION);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM body_chunk"),
			 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM chunk"), 5);
	check_message(f, uid, msg, len);
	check_message(f, tuid, text, tlen);
	tu_store_check(f->st);

	/* New mail goes to body_chunk, next to the old. */
	nuid = tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM body_chunk"),
			 1);
	assert_int_equal(read_whole(f, nuid, back, len),
			 (long)sizeof(TU_SIMPLE_MSG) - 1);
	assert_memory_equal(back, TU_SIMPLE_MSG, sizeof(TU_SIMPLE_MSG) - 1);
	/* In one read snapshot (the store keeps its blob handle and moves
	 * it from row to row; a miss closes it): new, old, new, old. */
	assert_int_equal(eng_store_read_begin(f->st), 0);
	for (int round = 0; round < 2; round++) {
		assert_int_equal(read_whole(f, nuid, back, len),
				 (long)sizeof(TU_SIMPLE_MSG) - 1);
		assert_memory_equal(back, TU_SIMPLE_MSG,
				    sizeof(TU_SIMPLE_MSG) - 1);
		check_message(f, round == 0 ? uid : tuid, round == 0 ? msg :
			      text, round == 0 ? len : tlen);
	}
	eng_store_read_end(f->st);

	/* Expunging the old big message drops its three chunk rows. */
	assert_int_equal(eng_expunge(f->st, f->inbox, NULL, &uids, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(uids[0], uid);
	free(uids);
	assert_int_equal(tu_sql_int(f->st, "SELECT count(*) FROM chunk"), 2);
	assert_int_equal(read_whole(f, tuid, back, len), (long)tlen);
	assert_memory_equal(back, text, tlen);
	tu_store_check(f->st);
	free(back);
	free(text);
	free(msg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_chunk_storage,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_read_rest_after_expunge,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_chunk_sample,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_header_capture,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_zero_blocks,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_chunk_damage,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_version3_chunks,
						tu_store_setup, tu_store_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
