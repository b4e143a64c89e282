/*
 * FETCH_BODIES' record stream (sqlite-server/rpc_bodies.h): the head's
 * round trip and every malformation, and the splitter fed a stream of
 * records whole, byte by byte and at every split point (the same records
 * and bytes each time), checked against the UIDs expected, with a bound on
 * the bytes per DATA event. With SEALMAIL_WRITE_RPC_BODIES_CORPUS=<dir>
 * set, it also writes the seeds of fuzz/corpus/rpc_bodies/ into <dir>.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "rpc_bodies.h"
#include "rpc_codec.h"

static void test_head_round_trip(void **state)
{
	static const rpc_bodies_head cases[] = {
		{ 1, false, 0 }, { 7, false, 27000 },
		{ UINT32_MAX, false, UINT64_MAX }, { 42, true, 0 },
	};
	uint8_t b[RPC_BODIES_HEAD_BYTES];
	rpc_bodies_head h;
	(void)state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		rpc_bodies_head_put(b, &cases[i]);
		assert_int_equal(rpc_bodies_head_parse(b, &h), 0);
		assert_int_equal(h.uid, cases[i].uid);
		assert_int_equal(h.gone, cases[i].gone);
		assert_true(h.size == cases[i].size);
	}
	/* The wire layout: big-endian UID, status, size. */
	rpc_bodies_head_put(b, &(rpc_bodies_head){ 0x01020304, false,
						   0x05060708090a0b0cull });
	assert_memory_equal(b, "\x01\x02\x03\x04\0\0\0\0\x05\x06\x07\x08"
			    "\x09\x0a\x0b\x0c", 16);
	/* A GONE head never carries a size, whatever the struct says. */
	rpc_bodies_head_put(b, &(rpc_bodies_head){ 9, true, 500 });
	assert_int_equal(rpc_bodies_head_parse(b, &h), 0);
	assert_true(h.gone && h.size == 0);
}

static void test_head_malformed(void **state)
{
	uint8_t b[RPC_BODIES_HEAD_BYTES];
	rpc_bodies_head h;
	(void)state;

	rpc_bodies_head_put(b, &(rpc_bodies_head){ 0, false, 10 });
	assert_int_equal(rpc_bodies_head_parse(b, &h), ENG_EMALFORMED);
	rpc_bodies_head_put(b, &(rpc_bodies_head){ 3, false, 10 });
	for (uint32_t st = 2; st < 300; st += 37) {
		b[7] = (uint8_t)st;
		b[6] = (uint8_t)(st >> 8);
		assert_int_equal(rpc_bodies_head_parse(b, &h), ENG_EMALFORMED);
	}
	b[4] = 0x80;                 /* a high status bit */
	b[6] = b[7] = 0;
	assert_int_equal(rpc_bodies_head_parse(b, &h), ENG_EMALFORMED);
	rpc_bodies_head_put(b, &(rpc_bodies_head){ 3, true, 0 });
	b[15] = 1;                   /* GONE with a byte */
	assert_int_equal(rpc_bodies_head_parse(b, &h), ENG_EMALFORMED);
}

#define N_REC 6
static const uint32_t rec_uids[N_REC] = { 4, 5, 9, 10, 4, 70000 };
static const size_t rec_sizes[N_REC] = { 0, 1, 37, 0, 300, 5 };
static const bool rec_gone[N_REC] = { false, false, false, true, false, false };

static uint8_t rec_byte(size_t rec, size_t k)
{
	return (uint8_t)(rec * 31 + k * 7);
}

/* The table's records; with seq_uids, UIDs 1, 2, 3... (the fuzzer's). */
static void build_records_as(eng_buf *s, bool seq_uids)
{
	for (size_t i = 0; i < N_REC; i++) {
		uint8_t h[RPC_BODIES_HEAD_BYTES];
		size_t size = rec_gone[i] ? 0 : rec_sizes[i];
		uint32_t uid = seq_uids ? (uint32_t)i + 1 : rec_uids[i];

		rpc_bodies_head_put(h, &(rpc_bodies_head){ uid, rec_gone[i],
							   size });
		eng_buf_append(s, h, sizeof(h));
		for (size_t k = 0; k < size; k++)
			eng_buf_putc(s, (char)rec_byte(i, k));
	}
}

static void build_records(eng_buf *s)
{
	build_records_as(s, false);
}

/* Feeds s in pieces cut at cut1 and cut2 (max_data per DATA event) and
 * checks every record and byte against the table. */
static void split_and_check(const eng_buf *s, size_t cut1, size_t cut2,
			    size_t max_data)
{
	size_t cuts[3] = { cut1, cut2, s->len }, from = 0;
	size_t got[N_REC] = { 0 }, rec = 0;
	bool begun[N_REC] = { false };
	rpc_bodies_reader rd;

	rpc_bodies_reader_init(&rd);
	for (int c = 0; c < 3; c++) {
		const uint8_t *p = (const uint8_t *)s->data + from;
		size_t n = cuts[c] - from, off = 0;

		while (off < n) {
			rpc_bodies_ev ev;
			size_t used;

			assert_int_equal(rpc_bodies_step(&rd, p + off, n - off,
							 max_data,
							 rec_uids[rd.records < N_REC ?
								  rd.records : 0],
							 &used, &ev), 0);
			assert_true(used > 0);
			off += used;
			if (ev.kind == RPC_BODIES_HEAD) {
				rec = rd.records - 1;
				assert_false(begun[rec]);
				begun[rec] = true;
				assert_int_equal(ev.head.uid, rec_uids[rec]);
				assert_int_equal(ev.head.gone, rec_gone[rec]);
				assert_int_equal(ev.rec_end,
						 rec_gone[rec] || rec_sizes[rec] == 0);
			} else if (ev.kind == RPC_BODIES_DATA) {
				assert_true(ev.len > 0);
				if (max_data > 0)
					assert_true(ev.len <= max_data);
				for (size_t k = 0; k < ev.len; k++)
					assert_int_equal(ev.data[k],
							 rec_byte(rec, got[rec] + k));
				got[rec] += ev.len;
				assert_int_equal(ev.rec_end,
						 got[rec] == rec_sizes[rec]);
			} else {
				assert_int_equal(off, n);
				assert_false(rpc_bodies_at_boundary(&rd));
			}
		}
		from = cuts[c];
	}
	assert_int_equal(rd.records, N_REC);
	assert_true(rpc_bodies_at_boundary(&rd));
	for (size_t i = 0; i < N_REC; i++)
		assert_int_equal(got[i], rec_gone[i] ? 0 : rec_sizes[i]);
}

static void test_split_everywhere(void **state)
{
	eng_buf s = ENG_BUF_INIT;
	(void)state;

	build_records(&s);
	for (size_t a = 0; a <= s.len; a++) {
		split_and_check(&s, a, a, 0);
		split_and_check(&s, a, s.len, 7);
		for (size_t b = a; b <= s.len; b += 13)
			split_and_check(&s, a, b, 0);
	}
	eng_buf_free(&s);
}

/* A head of another UID than expected, or a bad one, stops the reader
 * before any of its bytes is passed on. */
static void test_unexpected(void **state)
{
	eng_buf s = ENG_BUF_INIT;
	rpc_bodies_reader rd;
	rpc_bodies_ev ev;
	size_t used;
	(void)state;

	build_records(&s);
	rpc_bodies_reader_init(&rd);
	assert_int_equal(rpc_bodies_step(&rd, (const uint8_t *)s.data, s.len,
					 0, 5, &used, &ev), ENG_EMALFORMED);
	assert_int_equal(rd.records, 0);
	/* A half head then the rest: the UID check runs at completion. */
	rpc_bodies_reader_init(&rd);
	assert_int_equal(rpc_bodies_step(&rd, (const uint8_t *)s.data, 9, 0, 5,
					 &used, &ev), 0);
	assert_int_equal(used, 9);
	assert_int_equal(ev.kind, RPC_BODIES_NEED);
	assert_int_equal(rpc_bodies_step(&rd, (const uint8_t *)s.data + 9,
					 s.len - 9, 0, 5, &used, &ev),
			 ENG_EMALFORMED);
	/* A status the protocol does not define. */
	rpc_bodies_reader_init(&rd);
	((uint8_t *)s.data)[7] = 2;
	assert_int_equal(rpc_bodies_step(&rd, (const uint8_t *)s.data, s.len,
					 0, 4, &used, &ev), ENG_EMALFORMED);
	eng_buf_free(&s);
}

static void write_seed(const char *dir, const char *name, const eng_buf *b)
{
	char path[1024];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	assert_non_null(f = fopen(path, "wb"));
	assert_int_equal(fwrite(b->data, 1, b->len, f), b->len);
	fclose(f);
}

/* The fuzzer's seeds: a control byte (the cut), then a stream whose
 * records have UIDs 1, 2, 3... */
static void test_write_corpus(void **state)
{
	const char *dir = getenv("SEALMAIL_WRITE_RPC_BODIES_CORPUS");
	eng_buf b = ENG_BUF_INIT;
	(void)state;

	if (dir == NULL)
		skip();
	eng_buf_putc(&b, 0x23);
	build_records_as(&b, true);
	write_seed(dir, "records", &b);
	eng_buf_reset(&b);
	eng_buf_putc(&b, 0x05);
	{
		uint8_t h[RPC_BODIES_HEAD_BYTES];

		rpc_bodies_head_put(h, &(rpc_bodies_head){ 1, true, 0 });
		eng_buf_append(&b, h, sizeof(h));
		rpc_bodies_head_put(h, &(rpc_bodies_head){ 2, false, 3 });
		eng_buf_append(&b, h, sizeof(h));
		eng_buf_puts(&b, "abc");
	}
	write_seed(dir, "gone-then-short", &b);
	eng_buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_head_round_trip),
		cmocka_unit_test(test_head_malformed),
		cmocka_unit_test(test_split_everywhere),
		cmocka_unit_test(test_unexpected),
		cmocka_unit_test(test_write_corpus),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
