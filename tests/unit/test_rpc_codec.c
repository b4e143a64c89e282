/*
 * The RPC wire codec (sqlite-server/rpc_codec.h): varints, fields and
 * groups in round trips, UID sets and thread trees, the decoder's
 * malformations, limits and mutations, and the protocol tables. Frames
 * and the incremental reader are in test_rpc_codec_frames.c, peer
 * authentication (rpc_auth.h) in test_rpc_auth.c.
 *
 * With SEALMAIL_WRITE_RPC_CORPUS=<dir> set, test_write_corpus also writes
 * the seed frames of fuzz/corpus/rpc/ into <dir>.
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

/* ---- varints ---- */

static void test_varint_roundtrip(void **state)
{
	static const uint64_t values[] = {
		0, 1, 127, 128, 255, 300, 16383, 16384, UINT32_MAX,
		(uint64_t)UINT32_MAX + 1, (1ull << 56) - 1, 1ull << 63,
		UINT64_MAX - 1, UINT64_MAX,
	};
	(void)state;

	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		eng_buf b = ENG_BUF_INIT;
		uint64_t v = 12345;
		uint8_t *c;
		int n;

		rpc_put_varint(&b, values[i]);
		assert_int_equal(b.len, rpc_varint_len(values[i]));
		c = exact_copy(b.data, b.len);
		n = rpc_get_varint(c, b.len, &v);
		assert_int_equal(n, (int)b.len);
		assert_true(v == values[i]);
		/* Every proper prefix is truncated. */
		for (size_t k = 0; k < b.len; k++)
			assert_int_equal(rpc_get_varint(c, k, &v), RPC_ETRUNCATED);
		free(c);
		eng_buf_free(&b);
	}
	assert_int_equal(rpc_varint_len(UINT64_MAX), 10);
	assert_int_equal(rpc_varint_len(127), 1);
	assert_int_equal(rpc_varint_len(128), 2);
}

static void test_varint_noncanonical(void **state)
{
	static const uint8_t zero2[] = { 0x80, 0x00 };
	static const uint8_t one3[] = { 0x81, 0x80, 0x00 };
	static const uint8_t ten_big[] = { 0xff, 0xff, 0xff, 0xff, 0xff,
					   0xff, 0xff, 0xff, 0xff, 0x02 };
	static const uint8_t eleven[] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
					  0xff, 0xff, 0xff, 0x81, 0x01 };
	static const uint8_t max[] = { 0xff, 0xff, 0xff, 0xff, 0xff,
				       0xff, 0xff, 0xff, 0xff, 0x01 };
	uint64_t v = 0;
	(void)state;

	assert_int_equal(rpc_get_varint(zero2, 2, &v), RPC_EVARINT);
	assert_int_equal(rpc_get_varint(one3, 3, &v), RPC_EVARINT);
	assert_int_equal(rpc_get_varint(ten_big, 10, &v), RPC_EVARINT);
	assert_int_equal(rpc_get_varint(eleven, 11, &v), RPC_EVARINT);
	assert_int_equal(rpc_get_varint(max, 10, &v), 10);
	assert_true(v == UINT64_MAX);
	assert_int_equal(rpc_get_varint(max, 0, &v), RPC_ETRUNCATED);
}

static void test_zigzag(void **state)
{
	static const int64_t values[] = {
		0, -1, 1, -2, 2, INT32_MIN, INT32_MAX, INT64_MIN, INT64_MAX,
		INT64_MIN + 1, INT64_MAX - 1,
	};
	(void)state;

	assert_true(rpc_zigzag(0) == 0);
	assert_true(rpc_zigzag(-1) == 1);
	assert_true(rpc_zigzag(1) == 2);
	assert_true(rpc_zigzag(INT64_MIN) == UINT64_MAX);
	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++)
		assert_true(rpc_unzigzag(rpc_zigzag(values[i])) == values[i]);
}

/* ---- fields ---- */

/* A payload with every wire type, extremes, empty values and nesting. */
static void build_sample(eng_buf *b)
{
	size_t g1, g2, g3;

	rpc_put_u64(b, RPC_T_UID, 0);
	rpc_put_u64(b, RPC_T_MODSEQ, UINT64_MAX);
	rpc_put_s64(b, RPC_T_INTERNAL_DATE, INT64_MIN);
	rpc_put_s64(b, RPC_T_SAVE_DATE, INT64_MAX);
	rpc_put_s64(b, RPC_T_NUMBER, -1);
	rpc_put_bytes(b, RPC_T_MAILBOX, "INBOX/Sub", 9);
	rpc_put_bytes(b, RPC_T_SECTION, "", 0);
	rpc_put_str(b, RPC_T_KEYWORD, "$Junk");
	rpc_put_str(b, RPC_T_KEYWORD, "$Forwarded");
	rpc_put_str(b, RPC_T_KEYWORD, "custom");
	rpc_put_bool(b, RPC_T_SUBSCRIBED, true);
	g1 = rpc_group_begin(b, RPC_T_MESSAGE);
	rpc_put_u64(b, RPC_T_UID, 42);
	g2 = rpc_group_begin(b, RPC_T_QUERY);
	rpc_put_u64(b, RPC_T_Q_KIND, RPC_Q_NOT);
	g3 = rpc_group_begin(b, RPC_T_QUERY);
	rpc_group_end(b, g3);        /* empty group */
	rpc_group_end(b, g2);
	rpc_put_u64(b, RPC_T_FLAGS, ENG_F_SEEN | ENG_F_FLAGGED);
	rpc_group_end(b, g1);
	rpc_put_u64(b, RPC_TAG_MAX, 7);
}

static void test_fields_roundtrip(void **state)
{
	eng_buf b = ENG_BUF_INIT, out = ENG_BUF_INIT;
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root, g, q, q2;
	uint64_t u = 0;
	uint32_t u32 = 0;
	int64_t s = 0;
	bool flag = false;
	const uint8_t *p = NULL;
	size_t len = 0;
	char *str = NULL;
	uint8_t *c;
	(void)state;

	build_sample(&b);
	c = exact_copy(b.data, b.len);
	assert_int_equal(rpc_decode(c, b.len, NULL, &msg, &root), 0);
	/* 11 scalars, the group and its 5 descendants, the last scalar */
	assert_int_equal(root.n, 18);

	assert_int_equal(rpc_get_u64(&root, RPC_T_UID, &u), 0);
	assert_true(u == 0);
	assert_int_equal(rpc_get_u64(&root, RPC_T_MODSEQ, &u), 0);
	assert_true(u == UINT64_MAX);
	assert_int_equal(rpc_get_s64(&root, RPC_T_INTERNAL_DATE, &s), 0);
	assert_true(s == INT64_MIN);
	assert_int_equal(rpc_get_s64(&root, RPC_T_SAVE_DATE, &s), 0);
	assert_true(s == INT64_MAX);
	assert_int_equal(rpc_get_s64(&root, RPC_T_NUMBER, &s), 0);
	assert_true(s == -1);
	assert_int_equal(rpc_get_bytes(&root, RPC_T_MAILBOX, &p, &len), 0);
	assert_int_equal(len, 9);
	assert_memory_equal(p, "INBOX/Sub", 9);
	/* Zero-copy: the bytes are a slice of the input. */
	assert_true(p >= c && p + len <= c + b.len);
	assert_int_equal(rpc_get_bytes(&root, RPC_T_SECTION, &p, &len), 0);
	assert_int_equal(len, 0);
	assert_int_equal(rpc_get_str(&root, RPC_T_KEYWORD, &str), 0);
	assert_string_equal(str, "$Junk");   /* the first of the repeated */
	free(str);
	assert_int_equal(rpc_get_bool(&root, RPC_T_SUBSCRIBED, &flag), 0);
	assert_true(flag);
	assert_int_equal(rpc_get_u64(&root, RPC_TAG_MAX, &u), 0);
	assert_true(u == 7);

	assert_int_equal(rpc_get_group(&root, RPC_T_MESSAGE, &g), 0);
	assert_int_equal(rpc_get_u32(&g, RPC_T_UID, &u32), 0);
	assert_int_equal(u32, 42);
	assert_int_equal(rpc_get_u32(&g, RPC_T_FLAGS, &u32), 0);
	assert_int_equal(u32, ENG_F_SEEN | ENG_F_FLAGGED);
	/* Fields of a group are not seen from the level above and back. */
	assert_int_equal(rpc_get_u64(&root, RPC_T_FLAGS, &u), RPC_EMISSING);
	assert_int_equal(rpc_get_u64(&g, RPC_T_MODSEQ, &u), RPC_EMISSING);
	assert_int_equal(rpc_get_group(&g, RPC_T_QUERY, &q), 0);
	assert_int_equal(rpc_get_u64(&q, RPC_T_Q_KIND, &u), 0);
	assert_true(u == RPC_Q_NOT);
	assert_int_equal(rpc_get_group(&q, RPC_T_QUERY, &q2), 0);
	assert_int_equal(q2.n, 0);

	/* encode(decode(x)) == x */
	rpc_encode_view(&out, &root);
	assert_int_equal(out.len, b.len);
	assert_memory_equal(out.data, b.data, b.len);

	rpc_msg_clear(&msg);
	rpc_msg_clear(&msg);   /* a cleared msg is accepted again */
	free(c);
	eng_buf_free(&b);
	eng_buf_free(&out);
}

static void test_repeated_and_iter(void **state)
{
	eng_buf b = ENG_BUF_INIT;
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root;
	rpc_iter it;
	const rpc_field *f;
	static const char *const kw[] = { "$Junk", "$Forwarded", "custom" };
	size_t i = 0, all = 0;
	(void)state;

	build_sample(&b);
	assert_int_equal(rpc_decode((const uint8_t *)b.data, b.len, NULL, &msg,
				    &root), 0);
	assert_int_equal(rpc_count(&root, RPC_T_KEYWORD), 3);
	assert_int_equal(rpc_count(&root, RPC_T_QUERY), 0);
	rpc_iter_init(&it, &root);
	while ((f = rpc_iter_next(&it, RPC_T_KEYWORD)) != NULL) {
		assert_true(i < 3);
		assert_int_equal(f->type, RPC_W_BYTES);
		assert_int_equal(f->u, strlen(kw[i]));
		assert_memory_equal(f->data, kw[i], f->u);
		i++;
	}
	assert_int_equal(i, 3);
	/* tag 0 visits each top-level field once, groups as one. */
	rpc_iter_init(&it, &root);
	while ((f = rpc_iter_next(&it, 0)) != NULL)
		all++;
	assert_int_equal(all, 13);
	rpc_msg_clear(&msg);
	eng_buf_free(&b);
}

static void test_getter_errors(void **state)
{
	eng_buf b = ENG_BUF_INIT;
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root, g;
	uint64_t u = 99;
	uint32_t u32 = 99;
	int64_t s = 99;
	bool flag = false;
	const uint8_t *p;
	size_t len;
	char *str = NULL;
	(void)state;

	rpc_put_u64(&b, RPC_T_UID, (uint64_t)UINT32_MAX + 1);
	rpc_put_u64(&b, RPC_T_EXISTS, 2);
	rpc_put_bytes(&b, RPC_T_ALIAS, "a\0b", 3);
	rpc_put_s64(&b, RPC_T_NUMBER, 5);
	assert_int_equal(rpc_decode((const uint8_t *)b.data, b.len, NULL, &msg,
				    &root), 0);
	assert_int_equal(rpc_get_u64(&root, RPC_T_MODSEQ, &u), RPC_EMISSING);
	assert_true(u == 99);
	assert_int_equal(rpc_get_u32(&root, RPC_T_UID, &u32), RPC_EFIELDTYPE);
	assert_int_equal(u32, 99);
	assert_int_equal(rpc_get_bool(&root, RPC_T_EXISTS, &flag), RPC_EFIELDTYPE);
	assert_int_equal(rpc_get_str(&root, RPC_T_ALIAS, &str), RPC_EFIELDTYPE);
	assert_null(str);
	assert_int_equal(rpc_get_bytes(&root, RPC_T_ALIAS, &p, &len), 0);
	assert_int_equal(len, 3);
	/* Wrong wire type for the tag. */
	assert_int_equal(rpc_get_u64(&root, RPC_T_NUMBER, &u), RPC_EFIELDTYPE);
	assert_int_equal(rpc_get_s64(&root, RPC_T_UID, &s), RPC_EFIELDTYPE);
	assert_true(s == 99);
	assert_int_equal(rpc_get_bytes(&root, RPC_T_UID, &p, &len),
			 RPC_EFIELDTYPE);
	assert_int_equal(rpc_get_group(&root, RPC_T_ALIAS, &g), RPC_EFIELDTYPE);
	rpc_msg_clear(&msg);
	eng_buf_free(&b);
}

static void test_uidset_and_uids(void **state)
{
	eng_buf b = ENG_BUF_INIT;
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root;
	eng_uidset set = { 0 }, back = { 0 };
	static const uint32_t list[] = { 9, 3, UINT32_MAX, 1 };
	const uint8_t *p;
	size_t n;
	(void)state;

	eng_uidset_add(&set, 1, 5);
	eng_uidset_add(&set, 7, 7);
	eng_uidset_add(&set, 100, UINT32_MAX);
	rpc_put_uidset(&b, RPC_T_UIDSET, &set);
	rpc_put_uids(&b, RPC_T_UIDS, list, 4);
	rpc_put_bytes(&b, RPC_T_VANISHED, "\0\0\0\0\0\0\0\1", 8); /* lo 0 */
	rpc_put_bytes(&b, RPC_T_FAILED, "\0\0\0\5\0\0\0\1", 8);   /* lo > hi */
	rpc_put_bytes(&b, RPC_T_DEST_UIDS, "\0\0\0", 3);
	rpc_put_bytes(&b, RPC_T_SEQ_MAP, "\0\0\0\1\0\0\0\2\0\0", 10);
	assert_int_equal(rpc_decode((const uint8_t *)b.data, b.len, NULL, &msg,
				    &root), 0);
	assert_int_equal(rpc_get_uidset(&root, RPC_T_UIDSET, 16, &back), 0);
	assert_int_equal(back.count, 3);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(back.ranges[i].lo, set.ranges[i].lo);
		assert_int_equal(back.ranges[i].hi, set.ranges[i].hi);
	}
	eng_uidset_free(&back);
	assert_int_equal(rpc_get_uidset(&root, RPC_T_UIDSET, 2, &back),
			 RPC_EFIELDTYPE);
	assert_int_equal(back.count, 0);
	assert_int_equal(rpc_get_uidset(&root, RPC_T_VANISHED, 16, &back),
			 RPC_EFIELDTYPE);
	assert_int_equal(rpc_get_uidset(&root, RPC_T_FAILED, 16, &back),
			 RPC_EFIELDTYPE);
	assert_int_equal(rpc_get_uidset(&root, RPC_T_SEQ_MAP, 16, &back),
			 RPC_EFIELDTYPE);
	assert_int_equal(back.count, 0);
	assert_int_equal(rpc_get_uids(&root, RPC_T_UIDS, &p, &n), 0);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(rpc_uids_at(p, i), list[i]);
	assert_int_equal(rpc_get_uids(&root, RPC_T_DEST_UIDS, &p, &n),
			 RPC_EFIELDTYPE);
	assert_int_equal(rpc_get_uids(&root, RPC_T_SEQ_MAP, &p, &n),
			 RPC_EFIELDTYPE);
	eng_uidset_free(&set);
	rpc_msg_clear(&msg);

	/* An answer in MORE parts carries the set as several fields: all of
	 * them count, in order, under one range limit; a bad one anywhere
	 * adds nothing. */
	eng_buf_reset(&b);
	rpc_put_bytes(&b, RPC_T_VANISHED, "\0\0\0\1\0\0\0\2", 8);
	rpc_put_u64(&b, RPC_T_HIGHESTMODSEQ, 5);
	rpc_put_bytes(&b, RPC_T_VANISHED, "\0\0\0\11\0\0\0\11", 8);
	rpc_put_bytes(&b, RPC_T_FAILED, "\0\0\0\1\0\0\0\1", 8);
	rpc_put_bytes(&b, RPC_T_FAILED, "\0\0\0\0\0\0\0\1", 8);
	assert_int_equal(rpc_decode((const uint8_t *)b.data, b.len, NULL, &msg,
				    &root), 0);
	assert_int_equal(rpc_get_uidset(&root, RPC_T_VANISHED, 16, &back), 0);
	assert_int_equal(back.count, 2);
	assert_true(eng_uidset_contains(&back, 2));
	assert_true(eng_uidset_contains(&back, 9));
	assert_false(eng_uidset_contains(&back, 3));
	eng_uidset_free(&back);
	assert_int_equal(rpc_get_uidset(&root, RPC_T_VANISHED, 1, &back),
			 RPC_EFIELDTYPE);
	assert_int_equal(rpc_get_uidset(&root, RPC_T_FAILED, 16, &back),
			 RPC_EFIELDTYPE);
	assert_int_equal(back.count, 0);
	assert_int_equal(rpc_get_uidset(&root, RPC_T_UIDSET, 16, &back),
			 RPC_EMISSING);
	rpc_msg_clear(&msg);
	eng_buf_free(&b);
}

static int parse_tree(const eng_buf *b, size_t *n_r, rpc_tnode **nodes_r)
{
	uint8_t *c = exact_copy(b->data, b->len);
	int ret = rpc_thread_tree_parse(c, b->len, nodes_r, n_r);

	free(c);
	return ret;
}

static void test_thread_tree(void **state)
{
	eng_buf b = ENG_BUF_INIT;
	rpc_tnode *nodes = NULL;
	size_t n = 0;
	(void)state;

	/* root(2): (1 (2)) and (3); uids 1 and 3 are threads */
	rpc_thread_tree_put(&b, 0, 2);
	rpc_thread_tree_put(&b, 1, 1);
	rpc_thread_tree_put(&b, 2, 0);
	rpc_thread_tree_put(&b, UINT32_MAX, 0);
	assert_int_equal(parse_tree(&b, &n, &nodes), 0);
	assert_int_equal(n, 4);
	assert_int_equal(nodes[0].uid, 0);
	assert_int_equal(nodes[0].n_children, 2);
	assert_int_equal(nodes[1].uid, 1);
	assert_int_equal(nodes[2].uid, 2);
	assert_int_equal(nodes[3].uid, UINT32_MAX);
	free(nodes);
	/* trailing bytes, a missing node, a root with a uid */
	rpc_thread_tree_put(&b, 4, 0);
	assert_int_equal(parse_tree(&b, &n, &nodes), RPC_EFIELDTYPE);
	assert_null(nodes);
	eng_buf_reset(&b);
	rpc_thread_tree_put(&b, 0, 2);
	rpc_thread_tree_put(&b, 1, 0);
	assert_int_equal(parse_tree(&b, &n, &nodes), RPC_EFIELDTYPE);
	eng_buf_reset(&b);
	rpc_thread_tree_put(&b, 5, 0);
	assert_int_equal(parse_tree(&b, &n, &nodes), RPC_EFIELDTYPE);
	eng_buf_reset(&b);
	/* a child count that the bytes cannot hold */
	rpc_thread_tree_put(&b, 0, UINT32_MAX);
	assert_int_equal(parse_tree(&b, &n, &nodes), RPC_EFIELDTYPE);
	eng_buf_reset(&b);
	/* an empty tree is a root without children */
	rpc_thread_tree_put(&b, 0, 0);
	assert_int_equal(parse_tree(&b, &n, &nodes), 0);
	assert_int_equal(n, 1);
	free(nodes);
	eng_buf_reset(&b);
	assert_int_equal(parse_tree(&b, &n, &nodes), RPC_EFIELDTYPE);
	/* a chain 10000 deep: no recursion, no limit on depth */
	rpc_thread_tree_put(&b, 0, 1);
	for (uint32_t i = 1; i <= 10000; i++)
		rpc_thread_tree_put(&b, i, i < 10000 ? 1 : 0);
	assert_int_equal(parse_tree(&b, &n, &nodes), 0);
	assert_int_equal(n, 10001);
	assert_int_equal(nodes[10000].uid, 10000);
	free(nodes);
	eng_buf_free(&b);
}

/* ---- decoder errors ---- */

static int decode_bytes(const void *p, size_t len, const rpc_limits *lim)
{
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root;
	uint8_t *c = exact_copy(p, len);
	int ret = rpc_decode(c, len, lim, &msg, &root);

	if (ret != 0) {
		assert_null(root.f);
		assert_int_equal(root.n, 0);
	}
	rpc_msg_clear(&msg);
	free(c);
	return ret;
}

static void test_decode_malformed(void **state)
{
	(void)state;
	/* tag 0 */
	assert_int_equal(decode_bytes("\x00\x01", 2, NULL), RPC_EWIRETYPE);
	/* wire types 4..7 */
	for (uint8_t t = 4; t < 8; t++) {
		uint8_t key[2] = { (uint8_t)((1 << 3) | t), 0 };

		assert_int_equal(decode_bytes(key, 2, NULL), RPC_EWIRETYPE);
	}
	/* a tag past RPC_TAG_MAX: key 2^32 | 0 */
	assert_int_equal(decode_bytes("\x80\x80\x80\x80\x10\x00", 6, NULL),
			 RPC_EWIRETYPE);
	/* non-minimal key and value varints */
	assert_int_equal(decode_bytes("\x88\x00\x01", 3, NULL), RPC_EVARINT);
	assert_int_equal(decode_bytes("\x08\x80\x00", 3, NULL), RPC_EVARINT);
	/* truncated key, value, length */
	assert_int_equal(decode_bytes("\x88", 1, NULL), RPC_ETRUNCATED);
	assert_int_equal(decode_bytes("\x08", 1, NULL), RPC_ETRUNCATED);
	assert_int_equal(decode_bytes("\x08\xff", 2, NULL), RPC_ETRUNCATED);
	/* lengths past the end: bytes and group */
	assert_int_equal(decode_bytes("\x0a\x05" "abcd", 6, NULL), RPC_ETRUNCATED);
	assert_int_equal(decode_bytes("\x0b\x03\x08\x01", 4, NULL), RPC_ETRUNCATED);
	assert_int_equal(decode_bytes("\x0b\xff\xff\xff\xff\x0f", 6, NULL),
			 RPC_ETRUNCATED);
	/* a bytes length over the limit is that, before it is truncation */
	assert_int_equal(decode_bytes("\x0a\xff\xff\xff\xff\x0f", 6, NULL),
			 RPC_EFIELDSIZE);
	/* a group whose content ends inside a field */
	assert_int_equal(decode_bytes("\x0b\x02\x0a\x05" "abcde", 9, NULL),
			 RPC_ETRUNCATED);
	/* empty payload is fine */
	assert_int_equal(decode_bytes("", 0, NULL), 0);
}

static void test_decode_limits(void **state)
{
	rpc_limits lim;
	eng_buf b = ENG_BUF_INIT;
	size_t marks[20];
	(void)state;

	/* fields */
	rpc_limits_default(&lim);
	lim.max_fields = 4;
	for (int i = 0; i < 4; i++)
		rpc_put_u64(&b, RPC_T_UID, (uint64_t)i);
	assert_int_equal(decode_bytes(b.data, b.len, &lim), 0);
	rpc_put_u64(&b, RPC_T_UID, 5);
	assert_int_equal(decode_bytes(b.data, b.len, &lim), RPC_EFIELDS);
	eng_buf_reset(&b);
	/* groups count: 2 groups with 2 fields each = 6 entries */
	for (int i = 0; i < 2; i++) {
		size_t m = rpc_group_begin(&b, RPC_T_MESSAGE);

		rpc_put_u64(&b, RPC_T_UID, 1);
		rpc_put_u64(&b, RPC_T_MODSEQ, 1);
		rpc_group_end(&b, m);
	}
	lim.max_fields = 5;
	assert_int_equal(decode_bytes(b.data, b.len, &lim), RPC_EFIELDS);
	lim.max_fields = 6;
	assert_int_equal(decode_bytes(b.data, b.len, &lim), 0);
	eng_buf_reset(&b);

	/* depth: 16 nested groups pass, 17 do not */
	rpc_limits_default(&lim);
	for (int i = 0; i < 16; i++)
		marks[i] = rpc_group_begin(&b, RPC_T_QUERY);
	for (int i = 15; i >= 0; i--)
		rpc_group_end(&b, marks[i]);
	assert_int_equal(decode_bytes(b.data, b.len, &lim), 0);
	eng_buf_reset(&b);
	for (int i = 0; i < 17; i++)
		marks[i] = rpc_group_begin(&b, RPC_T_QUERY);
	for (int i = 16; i >= 0; i--)
		rpc_group_end(&b, marks[i]);
	assert_int_equal(decode_bytes(b.data, b.len, &lim), RPC_EDEPTH);
	/* before auth: depth 2 */
	rpc_limits_preauth(&lim);
	assert_int_equal(decode_bytes(b.data, b.len, &lim), RPC_EDEPTH);
	eng_buf_reset(&b);

	/* a bytes field longer than the limit */
	rpc_limits_default(&lim);
	lim.max_bytes_field = 8;
	rpc_put_bytes(&b, RPC_T_ALIAS, "12345678", 8);
	assert_int_equal(decode_bytes(b.data, b.len, &lim), 0);
	rpc_put_bytes(&b, RPC_T_ALIAS, "123456789", 9);
	assert_int_equal(decode_bytes(b.data, b.len, &lim), RPC_EFIELDSIZE);
	eng_buf_free(&b);
}

/*
 * Every prefix and every one-byte change of a valid payload decodes or
 * fails cleanly; what decodes re-encodes to the same bytes. Run under ASan
 * this also shows there is no read outside the input.
 */
static void test_decode_mutations(void **state)
{
	eng_buf b = ENG_BUF_INIT, out = ENG_BUF_INIT;
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root;
	size_t ok = 0, bad = 0;
	(void)state;

	build_sample(&b);
	for (size_t k = 0; k <= b.len; k++) {
		uint8_t *c = exact_copy(b.data, k);
		int ret = rpc_decode(c, k, NULL, &msg, &root);

		if (ret == 0) {
			eng_buf_reset(&out);
			rpc_encode_view(&out, &root);
			assert_int_equal(out.len, k);
			assert_memory_equal(out.data, c, k);
			ok++;
		} else {
			assert_true(ret <= RPC_EMALFORMED && ret >= RPC_ERR_MIN);
			bad++;
		}
		free(c);
	}
	assert_true(ok >= 2 && bad >= 2);
	for (size_t i = 0; i < b.len; i++) {
		for (int bit = 0; bit < 8; bit++) {
			uint8_t *c = exact_copy(b.data, b.len);
			int ret;

			c[i] ^= (uint8_t)(1u << bit);
			ret = rpc_decode(c, b.len, NULL, &msg, &root);
			if (ret == 0) {
				eng_buf_reset(&out);
				rpc_encode_view(&out, &root);
				assert_int_equal(out.len, b.len);
				assert_memory_equal(out.data, c, b.len);
			}
			free(c);
		}
	}
	rpc_msg_clear(&msg);
	eng_buf_free(&b);
	eng_buf_free(&out);
}

/* ---- protocol tables ---- */

static void test_tables(void **state)
{
	size_t n;
	const rpc_op *t = rpc_op_table(&n);
	(void)state;

	assert_true(n >= 34);
	for (size_t i = 0; i < n; i++) {
		assert_ptr_equal(rpc_op_lookup(t[i].opcode), &t[i]);
		assert_true(t[i].opcode != 0);
		if (i > 0)
			assert_true(t[i].opcode > t[i - 1].opcode);
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(t[i].name, t[j].name);
	}
	assert_null(rpc_op_lookup(0));
	assert_null(rpc_op_lookup(3));
	assert_null(rpc_op_lookup(UINT16_MAX));
	assert_true(rpc_op_lookup(RPC_OP_APPEND)->flags & RPC_OPF_BODY_IN);
	assert_true(rpc_op_lookup(RPC_OP_FETCH_BODY)->flags & RPC_OPF_BODY_OUT);
	assert_true(rpc_op_lookup(RPC_OP_FETCH_BODIES)->flags & RPC_OPF_BODY_OUT);
	assert_true(rpc_op_lookup(RPC_OP_DELIVER)->flags & RPC_OPF_BODY_IN);
	assert_false(rpc_op_lookup(RPC_OP_UNLOCK)->flags & RPC_OPF_SESSION);
	assert_true(rpc_op_lookup(RPC_OP_DOMAIN_ADD)->flags & RPC_OPF_ADMIN);

	for (int e = -1; e >= ENG_EPERM; e--) {
		assert_int_equal(rpc_err_from_wire(rpc_err_to_wire(e)), e);
		assert_non_null(rpc_strerror(e));
	}
	for (int e = RPC_EMALFORMED; e >= RPC_ERR_MIN; e--) {
		assert_int_equal(rpc_err_from_wire(rpc_err_to_wire(e)), e);
		assert_non_null(rpc_strerror(e));
		assert_true(strlen(rpc_strerror(e)) > 0);
	}
	assert_int_equal(rpc_err_to_wire(-50), (uint32_t)-ENG_EIO);
	assert_int_equal(rpc_err_to_wire(0), (uint32_t)-ENG_EIO);
	assert_int_equal(rpc_err_from_wire(0), 0);
	assert_int_equal(rpc_err_from_wire(50), 0);
	assert_int_equal(rpc_err_from_wire(1000), 0);
	assert_int_equal(rpc_err_from_wire(UINT64_MAX), 0);
	assert_string_equal(rpc_strerror(RPC_ENOTAUTH), "Not authenticated");
}

/* ---- seed corpus for fuzz/fuzz_rpc.c ---- */

/*
 * fuzz_rpc reads its first byte as a control byte (bit 7: pre-auth limits,
 * bits 5-6 both set: small limits, bits 0-4: where to split the stream).
 */
static void write_seed(const char *dir, const char *name, uint8_t control,
		       const eng_buf *b)
{
	char path[4096];
	eng_buf seed = ENG_BUF_INIT;

	eng_buf_putc(&seed, (char)control);
	eng_buf_append(&seed, b->data, b->len);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	assert_int_equal(tu_write_file(path, seed.data, seed.len), 0);
	eng_buf_free(&seed);
}

static void test_write_corpus(void **state)
{
	const char *dir = getenv("SEALMAIL_WRITE_RPC_CORPUS");
	eng_buf b = ENG_BUF_INIT;
	size_t m, g, g2;
	uint8_t nonce[32];
	eng_uidset set = { 0 };
	static const uint32_t uids[] = { 3, 1, 2 };
	(void)state;

	if (dir == NULL)
		skip();
	memset(nonce, 0x5a, sizeof(nonce));

	build_stream(&b);
	write_seed(dir, "stream-every-kind", 0x0d, &b);

	eng_buf_reset(&b);
	m = rpc_frame_begin(&b, RPC_K_HELLO, 0, 0, 0);
	rpc_put_u64(&b, RPC_T_VERSION, 1);
	rpc_put_bytes(&b, RPC_T_NONCE, nonce, 32);
	rpc_frame_end(&b, m, NULL);
	write_seed(dir, "hello", 0x90, &b);

	eng_buf_reset(&b);
	m = rpc_frame_begin(&b, RPC_K_REQUEST, 0, RPC_OP_UNLOCK, 1);
	rpc_put_str(&b, RPC_T_ALIAS, "alice@example.org");
	rpc_put_str(&b, RPC_T_PASSWORD, "correct horse");
	rpc_frame_end(&b, m, NULL);
	write_seed(dir, "unlock", 0x83, &b);

	eng_buf_reset(&b);
	m = rpc_frame_begin(&b, RPC_K_REQUEST, 0, RPC_OP_SEARCH, 2);
	rpc_put_bytes(&b, RPC_T_SESSION, nonce, 32);
	rpc_put_str(&b, RPC_T_MAILBOX, "INBOX");
	g = rpc_group_begin(&b, RPC_T_QUERY);
	rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_OR);
	g2 = rpc_group_begin(&b, RPC_T_QUERY);
	rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_HEADER);
	rpc_put_str(&b, RPC_T_FIELD, "Subject");
	rpc_put_str(&b, RPC_T_TEXT, "hello");
	rpc_group_end(&b, g2);
	g2 = rpc_group_begin(&b, RPC_T_QUERY);
	rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_SINCE);
	rpc_put_s64(&b, RPC_T_NUMBER, -86400);
	rpc_group_end(&b, g2);
	rpc_group_end(&b, g);
	rpc_put_u64(&b, RPC_T_SORT_KEY, RPC_SORT_DATE | RPC_SORT_REVERSE);
	rpc_frame_end(&b, m, NULL);
	write_seed(dir, "search", 0x11, &b);

	eng_buf_reset(&b);
	eng_uidset_add(&set, 1, 10);
	eng_uidset_add(&set, 20, UINT32_MAX);
	m = rpc_frame_begin(&b, RPC_K_RESPONSE, 0, RPC_OP_COPY, 3);
	rpc_put_u64(&b, RPC_T_UIDVALIDITY, 1700000000);
	rpc_put_uids(&b, RPC_T_UIDS, uids, 3);
	rpc_put_uids(&b, RPC_T_DEST_UIDS, uids, 3);
	rpc_put_uidset(&b, RPC_T_FAILED, &set);
	rpc_frame_end(&b, m, NULL);
	write_seed(dir, "copy-response", 0x05, &b);
	eng_uidset_free(&set);

	eng_buf_reset(&b);
	m = rpc_frame_begin(&b, RPC_K_REQUEST, 0, RPC_OP_FETCH_BODIES, 5);
	rpc_put_bytes(&b, RPC_T_SESSION, nonce, 32);
	rpc_put_str(&b, RPC_T_MAILBOX, "INBOX");
	rpc_put_uids(&b, RPC_T_UIDS, uids, 3);
	rpc_frame_end(&b, m, NULL);
	write_seed(dir, "fetch-bodies", 0x21, &b);

	eng_buf_reset(&b);
	m = rpc_frame_begin(&b, RPC_K_ERROR, 0, 0, 0);
	rpc_put_u64(&b, RPC_T_CODE, rpc_err_to_wire(RPC_EFRAMESIZE));
	rpc_put_str(&b, RPC_T_ERROR_TEXT, rpc_strerror(RPC_EFRAMESIZE));
	rpc_frame_end(&b, m, NULL);
	write_seed(dir, "error", 0x9f, &b);

	eng_buf_reset(&b);
	{
		eng_buf tree = ENG_BUF_INIT;

		rpc_thread_tree_put(&tree, 0, 2);
		rpc_thread_tree_put(&tree, 1, 1);
		rpc_thread_tree_put(&tree, 0, 1);
		rpc_thread_tree_put(&tree, 4, 0);
		rpc_thread_tree_put(&tree, 3, 0);
		m = rpc_frame_begin(&b, RPC_K_RESPONSE, 0, RPC_OP_THREAD, 4);
		rpc_put_bytes(&b, RPC_T_THREAD_TREE, tree.data, tree.len);
		rpc_frame_end(&b, m, NULL);
		write_seed(dir, "thread-response", 0x07, &b);
		eng_buf_free(&tree);
	}

	/* a bare payload (the target also decodes its input as one) */
	eng_buf_reset(&b);
	build_sample(&b);
	write_seed(dir, "payload-sample", 0x60, &b);
	eng_buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_varint_roundtrip),
		cmocka_unit_test(test_varint_noncanonical),
		cmocka_unit_test(test_zigzag),
		cmocka_unit_test(test_fields_roundtrip),
		cmocka_unit_test(test_repeated_and_iter),
		cmocka_unit_test(test_getter_errors),
		cmocka_unit_test(test_uidset_and_uids),
		cmocka_unit_test(test_thread_tree),
		cmocka_unit_test(test_decode_malformed),
		cmocka_unit_test(test_decode_limits),
		cmocka_unit_test(test_decode_mutations),
		cmocka_unit_test(test_tables),
		cmocka_unit_test(test_write_corpus),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
