/*
 * RPC frames (sqlite-server/rpc_codec.h): one stream of every kind of
 * frame read whole, byte by byte and in random splits (the same frames),
 * payloads without copies, every header error and the reader's limits
 * switched after authentication.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "eng_error.h"
#include "keys.h"
#include "rpc_auth.h"
#include "rpc_codec.h"
#include "rpc_proto.h"
#include "testrpc.h"
#include "testutil.h"

/* ---- frames ---- */

typedef struct seen_frame {
	uint8_t kind, flags;
	uint16_t opcode;
	uint32_t id;
	uint8_t *payload;
	size_t len;
} seen_frame;

/* Feeds in pieces given by next_piece; returns the frames seen. */
static size_t read_stream(const uint8_t *data, size_t len,
			  size_t (*next_piece)(size_t left),
			  seen_frame *out, size_t max_out, const uint8_t **last_payload_r)
{
	rpc_limits lim;
	rpc_reader *r;
	size_t off = 0, n = 0;

	rpc_limits_default(&lim);
	r = rpc_reader_new(&lim);
	while (off < len) {
		size_t piece = next_piece(len - off);
		/* Each piece in its own allocation: a payload pointer into it
		 * that outlived it would show up under ASan. */
		uint8_t *c = exact_copy(data + off, piece);
		size_t used = 0, poff = 0;

		do {
			rpc_frame f;
			size_t consumed;
			int ret = rpc_reader_feed(r, c + poff, piece - poff,
						  &consumed, &f);

			assert_true(ret >= 0);
			assert_true(consumed <= piece - poff);
			poff += consumed;
			used += consumed;
			if (ret == 1) {
				assert_true(n < max_out);
				out[n].kind = f.kind;
				out[n].flags = f.flags;
				out[n].opcode = f.opcode;
				out[n].id = f.request_id;
				out[n].len = f.payload_len;
				out[n].payload = exact_copy(f.payload, f.payload_len);
				if (last_payload_r != NULL)
					*last_payload_r = f.payload;
				n++;
			} else {
				assert_int_equal(poff, piece);
			}
		} while (poff < piece);
		assert_int_equal(used, piece);
		free(c);
		off += piece;
	}
	assert_int_equal(rpc_reader_pending(r), 0);
	rpc_reader_free(&r);
	assert_null(r);
	rpc_reader_free(&r);
	return n;
}

static size_t piece_all(size_t left) { return left; }
static size_t piece_one(size_t left) { (void)left; return 1; }
static size_t piece_random(size_t left)
{
	size_t p = 1 + (size_t)(tu_rng() % 700);

	return p < left ? p : left;
}

static void free_seen(seen_frame *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(s[i].payload);
}

static void test_reader_splits(void **state)
{
	eng_buf b = ENG_BUF_INIT;
	seen_frame ref[32], got[32];
	size_t nref, ngot;
	(void)state;

	build_stream(&b);
	nref = read_stream((const uint8_t *)b.data, b.len, piece_all, ref, 32,
			   NULL);
	assert_int_equal(nref, 12);
	assert_int_equal(ref[0].kind, RPC_K_HELLO);
	assert_int_equal(ref[3].kind, RPC_K_REQUEST);
	assert_int_equal(ref[3].flags, RPC_F_BODY);
	assert_int_equal(ref[3].opcode, RPC_OP_APPEND);
	assert_int_equal(ref[3].id, 7);
	assert_int_equal(ref[4].kind, RPC_K_DATA);
	assert_int_equal(ref[4].len, 1000);
	assert_int_equal(ref[5].flags, RPC_F_END);
	assert_int_equal(ref[5].len, 2000);
	assert_int_equal(ref[8].len, 0);
	assert_int_equal(ref[11].kind, RPC_K_EVENT);

	for (int round = 0; round < 41; round++) {
		ngot = read_stream((const uint8_t *)b.data, b.len,
				   round == 0 ? piece_one : piece_random, got,
				   32, NULL);
		assert_int_equal(ngot, nref);
		for (size_t i = 0; i < nref; i++) {
			assert_int_equal(got[i].kind, ref[i].kind);
			assert_int_equal(got[i].flags, ref[i].flags);
			assert_int_equal(got[i].opcode, ref[i].opcode);
			assert_int_equal(got[i].id, ref[i].id);
			assert_int_equal(got[i].len, ref[i].len);
			assert_memory_equal(got[i].payload, ref[i].payload,
					    ref[i].len);
		}
		free_seen(got, ngot);
	}

	/* Each frame written back with rpc_frame_write gives the stream. */
	{
		eng_buf out = ENG_BUF_INIT;

		for (size_t i = 0; i < nref; i++) {
			rpc_frame f = { RPC_VERSION, ref[i].kind, ref[i].flags,
					ref[i].opcode, ref[i].id,
					ref[i].payload, ref[i].len };

			assert_int_equal(rpc_frame_write(&out, &f, NULL), 0);
		}
		assert_int_equal(out.len, b.len);
		assert_memory_equal(out.data, b.data, b.len);
		eng_buf_free(&out);
	}
	free_seen(ref, nref);
	eng_buf_free(&b);
}

static void test_reader_zero_copy(void **state)
{
	eng_buf b = ENG_BUF_INIT;
	rpc_reader *r = rpc_reader_new(NULL);
	rpc_frame f;
	size_t consumed, m;
	(void)state;

	m = rpc_frame_begin(&b, RPC_K_HELLO, 0, 0, 0);
	rpc_put_u64(&b, RPC_T_VERSION, 1);
	assert_int_equal(rpc_frame_end(&b, m, NULL), 0);
	assert_int_equal(rpc_reader_feed(r, (const uint8_t *)b.data, b.len,
					 &consumed, &f), 1);
	assert_int_equal(consumed, b.len);
	assert_ptr_equal(f.payload, (const uint8_t *)b.data + RPC_HEADER_BYTES);
	assert_int_equal(f.payload_len, 2);
	rpc_reader_free(&r);
	eng_buf_free(&b);
}

/* A frame split over two feeds is put together in the reader's buffer;
 * rpc_reader_trim frees it between frames, keeps it with part of a
 * frame held, and the reader goes on whole either way. */
static void test_reader_trim(void **state)
{
	eng_buf b = ENG_BUF_INIT;
	rpc_reader *r = rpc_reader_new(NULL);
	uint8_t big[3000];
	rpc_frame f;
	size_t consumed, m, half;
	rpc_view v;
	rpc_msg msg = RPC_MSG_INIT;
	const uint8_t *p;
	size_t n;
	(void)state;

	memset(big, 0x5a, sizeof(big));
	m = rpc_frame_begin(&b, RPC_K_HELLO, 0, 0, 0);
	rpc_put_bytes(&b, RPC_T_VERSION, big, sizeof(big));
	assert_int_equal(rpc_frame_end(&b, m, NULL), 0);
	half = b.len / 2;
	for (int round = 0; round < 2; round++) {
		assert_int_equal(rpc_reader_feed(r, (const uint8_t *)b.data,
						 half, &consumed, &f), 0);
		assert_int_equal(consumed, half);
		assert_true(rpc_reader_capacity(r) >= b.len - RPC_HEADER_BYTES);
		rpc_reader_trim(r);         /* part of a frame held: kept */
		assert_true(rpc_reader_capacity(r) >= b.len - RPC_HEADER_BYTES);
		assert_int_equal(rpc_reader_feed(r, (const uint8_t *)b.data +
						 half, b.len - half, &consumed,
						 &f), 1);
		assert_int_equal(consumed, b.len - half);
		assert_int_equal(rpc_decode(f.payload, f.payload_len, NULL,
					    &msg, &v), 0);
		assert_int_equal(rpc_get_bytes(&v, RPC_T_VERSION, &p, &n), 0);
		assert_int_equal(n, sizeof(big));
		assert_memory_equal(p, big, sizeof(big));
		rpc_reader_trim(r);         /* between frames: freed */
		assert_int_equal(rpc_reader_capacity(r), 0);
		assert_int_equal(rpc_reader_pending(r), 0);
	}
	rpc_msg_clear(&msg);
	rpc_reader_free(&r);
	eng_buf_free(&b);
}

/* Feeds one header (and optional payload bytes); returns the result. */
static int feed_header(const uint8_t hdr[16], const rpc_limits *lim,
		       bool bytewise)
{
	rpc_reader *r = rpc_reader_new(lim);
	rpc_frame f;
	size_t consumed;
	int ret = 0;

	if (bytewise) {
		for (size_t i = 0; i < 16 && ret == 0; i++) {
			uint8_t *c = exact_copy(hdr + i, 1);

			ret = rpc_reader_feed(r, c, 1, &consumed, &f);
			free(c);
		}
	} else {
		uint8_t *c = exact_copy(hdr, 16);

		ret = rpc_reader_feed(r, c, 16, &consumed, &f);
		free(c);
	}
	if (ret < 0) {
		/* sticky, and nothing of the payload was buffered */
		assert_int_equal(rpc_reader_feed(r, hdr, 16, &consumed, &f), ret);
		assert_int_equal(consumed, 0);
		assert_true(rpc_reader_pending(r) <= 16);
	}
	rpc_reader_free(&r);
	return ret;
}

static void make_header(uint8_t h[16], uint32_t length, uint8_t kind,
			uint8_t flags, uint16_t opcode, uint32_t id)
{
	memset(h, 0, 16);
	h[0] = (uint8_t)(length >> 24);
	h[1] = (uint8_t)(length >> 16);
	h[2] = (uint8_t)(length >> 8);
	h[3] = (uint8_t)length;
	h[4] = RPC_VERSION;
	h[5] = kind;
	h[6] = flags;
	h[8] = (uint8_t)(opcode >> 8);
	h[9] = (uint8_t)opcode;
	h[12] = (uint8_t)(id >> 24);
	h[13] = (uint8_t)(id >> 16);
	h[14] = (uint8_t)(id >> 8);
	h[15] = (uint8_t)id;
}

static void test_header_errors(void **state)
{
	rpc_limits def, pre;
	uint8_t h[16];
	(void)state;

	rpc_limits_default(&def);
	rpc_limits_preauth(&pre);
	for (int bytewise = 0; bytewise < 2; bytewise++) {
		bool bw = bytewise != 0;

		/* a good header needs more (its payload) */
		make_header(h, 12 + 5, RPC_K_REQUEST, 0, RPC_OP_PING, 1);
		assert_int_equal(feed_header(h, &def, bw), 0);
		make_header(h, 11, RPC_K_REQUEST, 0, RPC_OP_PING, 1);
		assert_int_equal(feed_header(h, &def, bw), RPC_EMALFORMED);
		make_header(h, 0, RPC_K_REQUEST, 0, RPC_OP_PING, 1);
		assert_int_equal(feed_header(h, &def, bw), RPC_EMALFORMED);
		/* frame size: exactly the limit passes, one more fails */
		make_header(h, RPC_MAX_FRAME_BYTES - 4, RPC_K_REQUEST, 0,
			    RPC_OP_PING, 1);
		assert_int_equal(feed_header(h, &def, bw), 0);
		make_header(h, RPC_MAX_FRAME_BYTES - 3, RPC_K_REQUEST, 0,
			    RPC_OP_PING, 1);
		assert_int_equal(feed_header(h, &def, bw), RPC_EFRAMESIZE);
		make_header(h, UINT32_MAX, RPC_K_REQUEST, 0, RPC_OP_PING, 1);
		assert_int_equal(feed_header(h, &def, bw), RPC_EFRAMESIZE);
		make_header(h, RPC_MAX_FRAME_BYTES_PREAUTH - 3, RPC_K_AUTH, 0,
			    0, 0);
		assert_int_equal(feed_header(h, &pre, bw), RPC_EFRAMESIZE);
		/* DATA chunk */
		make_header(h, 12 + RPC_MAX_CHUNK_BYTES, RPC_K_DATA, 0, 0, 1);
		assert_int_equal(feed_header(h, &def, bw), 0);
		make_header(h, 12 + RPC_MAX_CHUNK_BYTES + 1, RPC_K_DATA, 0, 0, 1);
		assert_int_equal(feed_header(h, &def, bw), RPC_ECHUNKSIZE);
		make_header(h, 12 + 1, RPC_K_DATA, 0, 0, 1);
		assert_int_equal(feed_header(h, &pre, bw), RPC_ECHUNKSIZE);
		/* version */
		make_header(h, 12, RPC_K_HELLO, 0, 0, 0);
		h[4] = 2;
		assert_int_equal(feed_header(h, &def, bw), RPC_EVERSION);
		h[4] = 0;
		assert_int_equal(feed_header(h, &def, bw), RPC_EVERSION);
		/* reserved bytes and bits */
		make_header(h, 12, RPC_K_HELLO, 0, 0, 0);
		h[7] = 1;
		assert_int_equal(feed_header(h, &def, bw), RPC_ERESERVED);
		make_header(h, 12, RPC_K_HELLO, 0, 0, 0);
		h[10] = 0x80;
		assert_int_equal(feed_header(h, &def, bw), RPC_ERESERVED);
		make_header(h, 12, RPC_K_HELLO, 0, 0, 0);
		h[11] = 1;
		assert_int_equal(feed_header(h, &def, bw), RPC_ERESERVED);
		make_header(h, 12, RPC_K_DATA, 0x08, 0, 1);
		assert_int_equal(feed_header(h, &def, bw), RPC_ERESERVED);
		/* kinds and what they allow */
		make_header(h, 12, 0, 0, 0, 0);
		assert_int_equal(feed_header(h, &def, bw), RPC_EKIND);
		make_header(h, 12, RPC_K_MAX + 1, 0, 0, 0);
		assert_int_equal(feed_header(h, &def, bw), RPC_EKIND);
		make_header(h, 12, RPC_K_REQUEST, 0, RPC_OP_PING, 0);
		assert_int_equal(feed_header(h, &def, bw), RPC_EKIND);
		make_header(h, 12, RPC_K_REQUEST, 0, 0, 1);
		assert_int_equal(feed_header(h, &def, bw), RPC_EKIND);
		make_header(h, 12, RPC_K_REQUEST, RPC_F_MORE, RPC_OP_PING, 1);
		assert_int_equal(feed_header(h, &def, bw), RPC_EKIND);
		make_header(h, 12, RPC_K_DATA, RPC_F_BODY, 0, 1);
		assert_int_equal(feed_header(h, &def, bw), RPC_EKIND);
		make_header(h, 12, RPC_K_DATA, 0, RPC_OP_PING, 1);
		assert_int_equal(feed_header(h, &def, bw), RPC_EKIND);
		make_header(h, 12, RPC_K_HELLO, 0, 0, 5);
		assert_int_equal(feed_header(h, &def, bw), RPC_EKIND);
		make_header(h, 12, RPC_K_WINDOW, 0, 0, 0);
		assert_int_equal(feed_header(h, &def, bw), RPC_EKIND);
		make_header(h, 12, RPC_K_EVENT, 0, 3, 4);
		assert_int_equal(feed_header(h, &def, bw), RPC_EKIND);
	}
}

static void test_reader_limits_switch(void **state)
{
	eng_buf b = ENG_BUF_INIT;
	rpc_reader *r = rpc_reader_new(NULL);   /* pre-auth */
	rpc_limits def;
	rpc_frame f;
	size_t consumed, m;
	uint8_t *big = calloc(1, 100000);
	(void)state;

	assert_non_null(big);
	m = rpc_frame_begin(&b, RPC_K_REQUEST, 0, RPC_OP_PING, 1);
	rpc_put_bytes(&b, RPC_T_ECHO, big, 100000);
	/* the writer refuses it under the pre-auth limits too */
	{
		eng_buf c = ENG_BUF_INIT;
		rpc_limits pre;
		size_t mc;

		rpc_limits_preauth(&pre);
		eng_buf_puts(&c, "x");
		mc = rpc_frame_begin(&c, RPC_K_REQUEST, 0, RPC_OP_PING, 1);
		rpc_put_bytes(&c, RPC_T_ECHO, big, 100000);
		assert_int_equal(rpc_frame_end(&c, mc, &pre), RPC_EFRAMESIZE);
		assert_int_equal(c.len, 1);
		assert_string_equal(c.data, "x");
		eng_buf_free(&c);
	}
	assert_int_equal(rpc_frame_end(&b, m, NULL), 0);
	rpc_limits_default(&def);
	rpc_reader_set_limits(r, &def);
	assert_int_equal(rpc_reader_feed(r, (const uint8_t *)b.data, b.len,
					 &consumed, &f), 1);
	assert_int_equal(f.payload_len, b.len - 16);
	rpc_reader_free(&r);
	r = rpc_reader_new(NULL);
	assert_int_equal(rpc_reader_feed(r, (const uint8_t *)b.data, b.len,
					 &consumed, &f), RPC_EFRAMESIZE);
	rpc_reader_free(&r);

	/* the writer checks DATA chunks */
	{
		uint8_t *chunk = calloc(1, RPC_MAX_CHUNK_BYTES + 1);

		assert_non_null(chunk);
		eng_buf_reset(&b);
		m = rpc_frame_begin(&b, RPC_K_DATA, 0, 0, 1);
		eng_buf_append(&b, chunk, RPC_MAX_CHUNK_BYTES + 1);
		assert_int_equal(rpc_frame_end(&b, m, NULL), RPC_ECHUNKSIZE);
		assert_int_equal(b.len, 0);
		free(chunk);
	}
	free(big);
	eng_buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reader_splits),
		cmocka_unit_test(test_reader_zero_copy),
		cmocka_unit_test(test_reader_trim),
		cmocka_unit_test(test_header_errors),
		cmocka_unit_test(test_reader_limits_switch),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
