/*
 * sqlited's APPEND and FETCH opcodes end to end (the fixture is
 * testsrv.c: a real server on a unix socket, rpc_sync on the test's
 * thread): APPEND then FETCH_BODY (whole, parts, ranges, cancelled),
 * FETCH_BODIES (batches, the stream cut into bodies), FETCH_META with
 * WANT (headers and MIME structures inline) and its parts.
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
#include <sys/stat.h>
#include <uv.h>

#include "config.h"
#include "dir.h"
#include "eng_error.h"
#include "keys.h"
#include "rpc_bodies.h"
#include "rpc_codec.h"
#include "rpc_sync.h"
#include "srv.h"
#include "srv_alias.h"
#include "srv_net.h"
#include "srv_ops_view.h"
#include "testutil.h"
#include "testsrv.h"

/* A multipart message of about 3 MB: a text part and a large one. */
static char *big_message(size_t *len_r, size_t *text_off_r,
			 const char **text_r)
{
	static const char text[] = "Hello Alice, the report is attached.\r\n";
	eng_buf m = ENG_BUF_INIT;

	eng_buf_puts(&m, "From: Bob <bob@example.net>\r\n"
		     "To: alice@example.org\r\nSubject: big report\r\n"
		     "Message-ID: <big@example.net>\r\n"
		     "Date: Mon, 1 Jan 2024 09:00:00 +0000\r\n"
		     "MIME-Version: 1.0\r\n"
		     "Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
		     "--XX\r\nContent-Type: text/plain\r\n\r\n");
	*text_off_r = m.len;
	eng_buf_puts(&m, text);
	eng_buf_puts(&m, "--XX\r\nContent-Type: application/octet-stream\r\n"
		     "Content-Transfer-Encoding: base64\r\n\r\n");
	for (unsigned i = 0; m.len < 3 * 1024 * 1024; i++) {
		char line[80];

		for (int j = 0; j < 76; j++)
			line[j] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(i * 7 + (unsigned)j * 13) % 64];
		eng_buf_append(&m, line, 76);
		eng_buf_puts(&m, "\r\n");
	}
	eng_buf_puts(&m, "--XX--\r\n");
	*text_r = text;
	return eng_buf_steal(&m, len_r);
}

static void fetch_body(rpc_sync *c, const uint8_t *s, uint32_t uid,
		       uint32_t want, const char *section, uint64_t offset,
		       uint64_t length, rpc_sync_resp *resp)
{
	eng_buf b = ENG_BUF_INIT;

	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_UID, uid);
	rpc_put_u64(&b, RPC_T_WANT, want);
	if (section != NULL)
		rpc_put_str(&b, RPC_T_SECTION, section);
	if (offset != 0)
		rpc_put_u64(&b, RPC_T_OFFSET, offset);
	if (length != UINT64_MAX)
		rpc_put_u64(&b, RPC_T_LENGTH, length);
	assert_int_equal(call(c, RPC_OP_FETCH_BODY, &b, resp), 0);
	eng_buf_free(&b);
}

static void test_append_fetch(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	size_t len, text_off;
	const char *text;
	char *msg = big_message(&len, &text_off, &text);
	uint32_t uid = 0, uid2 = 0;
	const uint8_t *p;
	size_t plen;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	assert_int_equal(append(c, s, "INBOX", msg, len, 1, "key-1", &uid), 0);
	assert_int_equal(uid, 1);
	/* A retry with the same key stores nothing new. */
	assert_int_equal(append(c, s, "INBOX", msg, len, 1, "key-1", &uid2), 0);
	assert_int_equal(uid2, uid);
	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_QUOTA_GET, &b, &resp), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), 1);
	assert_true(get_u(&resp.view, RPC_T_QUOTA_USED) > 0);

	/* SIZE must be the body's length; no such mailbox; no body. */
	{
		rpc_sync_call_opts opts = { 0 };

		begin(&b, s, "INBOX");
		rpc_put_u64(&b, RPC_T_SIZE, 10);
		opts.has_body = true;
		opts.body = "0123456789X";
		opts.body_len = 11;
		assert_int_equal(rpc_sync_call_ex(c, RPC_OP_APPEND, b.data,
						  b.len, &opts, &resp),
				 ENG_EINVAL);
		assert_int_equal(append(c, s, "Nowhere", "x\r\n", 3, 0, NULL,
					&uid2), ENG_ENOTFOUND);
	}

	/* The append looks the mailbox up itself (the name as any lookup
	 * takes it) and checks a UIDVALIDITY sent with it. */
	{
		rpc_sync_call_opts opts = { .has_body = true, .body = "y\r\n",
					    .body_len = 3 };
		uint64_t uidvalidity;

		begin(&b, s, "inbox");
		rpc_put_u64(&b, RPC_T_SIZE, 3);
		assert_int_equal(rpc_sync_call_ex(c, RPC_OP_APPEND, b.data,
						  b.len, &opts, &resp), 0);
		uidvalidity = get_u(&resp.view, RPC_T_UIDVALIDITY);
		assert_int_equal(get_u(&resp.view, RPC_T_UID), uid + 1);
		rpc_sync_resp_clear(&resp);
		begin(&b, s, "INBOX");
		rpc_put_u64(&b, RPC_T_SIZE, 3);
		rpc_put_u64(&b, RPC_T_UIDVALIDITY, uidvalidity + 1);
		assert_int_equal(rpc_sync_call_ex(c, RPC_OP_APPEND, b.data,
						  b.len, &opts, &resp),
				 ENG_EMODIFIED);
		begin(&b, s, "INBOX");
		rpc_put_u64(&b, RPC_T_SIZE, 3);
		rpc_put_u64(&b, RPC_T_UIDVALIDITY, uidvalidity);
		assert_int_equal(rpc_sync_call_ex(c, RPC_OP_APPEND, b.data,
						  b.len, &opts, &resp), 0);
		assert_int_equal(get_u(&resp.view, RPC_T_UID), uid + 2);
		assert_int_equal(get_u(&resp.view, RPC_T_UIDVALIDITY),
				 uidvalidity);
		rpc_sync_resp_clear(&resp);
		begin(&b, s, "INBOX");
		rpc_put_u64(&b, RPC_T_SIZE, 0);
		assert_int_equal(call(c, RPC_OP_APPEND, &b, &resp), ENG_EINVAL);
	}

	/* The whole message back, byte for byte, with MIME and HEADER. */
	fetch_body(c, s, uid, 7, NULL, 0, UINT64_MAX, &resp);
	assert_true(resp.has_body);
	assert_int_equal(get_u(&resp.view, RPC_T_SIZE), len);
	assert_int_equal(resp.body.len, len);
	assert_memory_equal(resp.body.data, msg, len);
	assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_MIME, &p, &plen), 0);
	assert_true(plen > 0);
	assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_HEADER, &p, &plen), 0);
	assert_true(plen > 20 && plen < 400);
	assert_memory_equal(p, msg, plen);

	/* A byte range across the 256 KiB piece boundary. */
	fetch_body(c, s, uid, 1, NULL, 200000, 300000, &resp);
	assert_int_equal(get_u(&resp.view, RPC_T_SIZE), 300000);
	assert_int_equal(resp.body.len, 300000);
	assert_memory_equal(resp.body.data, msg + 200000, 300000);
	/* A range past the end, and one reaching over it. */
	fetch_body(c, s, uid, 1, NULL, len + 5, 10, &resp);
	assert_int_equal(get_u(&resp.view, RPC_T_SIZE), 0);
	assert_int_equal(resp.body.len, 0);
	fetch_body(c, s, uid, 1, NULL, len - 3, 10, &resp);
	assert_int_equal(resp.body.len, 3);
	assert_memory_equal(resp.body.data, msg + len - 3, 3);

	/* A section: part 1 is the text part's body. */
	fetch_body(c, s, uid, 1, "1", 0, UINT64_MAX, &resp);
	assert_true(resp.body.len >= strlen(text) - 2);
	assert_memory_equal(resp.body.data, msg + text_off, resp.body.len);
	assert_memory_equal(resp.body.data, text, strlen(text) - 2);
	/* A part the message does not have: SIZE 0, an empty body. */
	fetch_body(c, s, uid, 1, "9", 0, UINT64_MAX, &resp);
	assert_int_equal(get_u(&resp.view, RPC_T_SIZE), 0);
	assert_true(resp.has_body);
	assert_int_equal(resp.body.len, 0);
	/* Without WANT 1, no body at all. */
	fetch_body(c, s, uid, 4, NULL, 0, UINT64_MAX, &resp);
	assert_false(resp.has_body);
	assert_int_equal(get_u(&resp.view, RPC_T_SIZE), len);
	/* No such message. */
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_UID, 99);
	rpc_put_u64(&b, RPC_T_WANT, 1);
	assert_int_equal(call(c, RPC_OP_FETCH_BODY, &b, &resp), ENG_ENOTFOUND);
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_UID, 1);
	rpc_put_u64(&b, RPC_T_WANT, 8);
	assert_int_equal(call(c, RPC_OP_FETCH_BODY, &b, &resp), ENG_EINVAL);

	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	free(msg);
	rpc_sync_free(&c);
}

/* A FETCH_META answer larger than one frame's field limit comes in MORE
 * parts that together hold every message once, in UID order. */
static void test_fetch_meta_parts(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	struct meta *m = calloc(600, sizeof(*m));
	uint32_t uid;
	size_t n;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	for (int i = 0; i < 450; i++)
		assert_int_equal(append(c, s, "INBOX", "Subject: x\r\n\r\nx\r\n",
					17, 0, NULL, &uid), 0);
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	assert_true(resp.parts >= 2);
	n = get_messages(&resp.view, m, 600);
	assert_int_equal(n, 450);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(m[i].uid, i + 1);
	/* CHANGEDSINCE above every MODSEQ: nothing. */
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_CHANGEDSINCE, m[n - 1].modseq);
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	assert_int_equal(rpc_count(&resp.view, RPC_T_MESSAGE), 0);
	free(m);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* ---- FETCH_META WANT: headers and MIME structures inline ---- */

/* The MESSAGE groups of resp, in order (at most max). */
static size_t meta_groups(const rpc_view *v, rpc_view *out, size_t max)
{
	const rpc_field *fld;
	rpc_iter it;
	size_t n = 0;

	rpc_iter_init(&it, v);
	while ((fld = rpc_iter_next(&it, RPC_T_MESSAGE)) != NULL) {
		assert_true(n < max);
		out[n++] = rpc_field_group(fld);
	}
	return n;
}

static int fetch_meta_want(rpc_sync *c, const uint8_t *s, uint32_t lo,
			   uint32_t hi, uint64_t want, rpc_sync_resp *resp)
{
	eng_buf b = ENG_BUF_INIT;
	int err;

	begin(&b, s, "INBOX");
	if (lo > 0)
		put_uidset(&b, RPC_T_UIDSET, lo, hi);
	rpc_put_u64(&b, RPC_T_WANT, want);
	err = call(c, RPC_OP_FETCH_META, &b, resp);
	eng_buf_free(&b);
	return err;
}

/* The group's tag is the blob FETCH_BODY WANT gives for its UID. */
static void same_as_fetch_body(rpc_sync *c, const uint8_t *s,
			       const rpc_view *g, uint32_t tag)
{
	rpc_sync_resp body = RPC_SYNC_RESP_INIT;
	const uint8_t *p, *q;
	size_t plen, qlen;

	fetch_body(c, s, (uint32_t)get_u(g, RPC_T_UID),
		   tag == RPC_T_MIME ? RPC_WANT_MIME : RPC_WANT_HEADER, NULL, 0,
		   UINT64_MAX, &body);
	assert_int_equal(rpc_get_bytes(g, tag, &p, &plen), 0);
	assert_int_equal(rpc_get_bytes(&body.view, tag, &q, &qlen), 0);
	assert_true(plen > 0);
	assert_int_equal(plen, qlen);
	assert_memory_equal(p, q, plen);
	rpc_sync_resp_clear(&body);
}

/* A message of about hdr_bytes of header (one folded X-Pad field). */
static char *padded_header_message(int i, size_t hdr_bytes)
{
	eng_buf m = ENG_BUF_INIT;

	eng_buf_printf(&m, "From: a@example.org\r\nSubject: padded %04d\r\n"
		       "X-Pad: start", i);
	while (m.len < hdr_bytes) {
		eng_buf_puts(&m, "\r\n ");
		for (int k = 0; k < 70; k++)
			eng_buf_putc(&m, (char)('a' + (i + k) % 26));
	}
	eng_buf_puts(&m, "\r\n\r\nbody\r\n");
	return eng_buf_steal(&m, NULL);
}

static void test_fetch_meta_want(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	rpc_sync *c = connect_client(f);
	rpc_view *g = calloc(128, sizeof(*g));
	const uint8_t *p;
	size_t len, text_off, plen, n, with = 0, hdr_len = 0;
	const char *text;
	char *msg = big_message(&len, &text_off, &text);
	uint32_t uid;
	eng_buf m = ENG_BUF_INIT;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	assert_int_equal(append(c, s, "INBOX", msg, len, 0, NULL, &uid), 0);
	free(msg);
	msg = small_message("hello", "<1@x>", NULL, "first body words");
	assert_int_equal(append(c, s, "INBOX", msg, strlen(msg), 0, NULL, &uid),
			 0);
	free(msg);

	/* Every WANT: exactly the blobs asked for, as FETCH_BODY has them. */
	for (uint64_t want = 0; want <= 6; want += 2) {
		assert_int_equal(fetch_meta_want(c, s, 0, 0, want, &resp), 0);
		assert_int_equal(meta_groups(&resp.view, g, 128), 2);
		for (size_t i = 0; i < 2; i++) {
			assert_int_equal(get_u(&g[i], RPC_T_UID), i + 1);
			assert_int_equal(rpc_count(&g[i], RPC_T_MIME),
					 (want & RPC_WANT_MIME) ? 1 : 0);
			assert_int_equal(rpc_count(&g[i], RPC_T_HEADER),
					 (want & RPC_WANT_HEADER) ? 1 : 0);
			if (want & RPC_WANT_MIME)
				same_as_fetch_body(c, s, &g[i], RPC_T_MIME);
			if (want & RPC_WANT_HEADER)
				same_as_fetch_body(c, s, &g[i], RPC_T_HEADER);
		}
	}
	/* The body bit, or an unknown one: EINVAL. */
	assert_int_equal(fetch_meta_want(c, s, 0, 0, 1, &resp), ENG_EINVAL);
	assert_int_equal(fetch_meta_want(c, s, 0, 0, 7, &resp), ENG_EINVAL);
	assert_int_equal(fetch_meta_want(c, s, 0, 0, 8, &resp), ENG_EINVAL);

	/* A MIME structure above 256 KiB (4,000 named parts) is left out,
	 * the header of the same message is not. */
	eng_buf_puts(&m, "Subject: parts\r\nContent-Type: multipart/mixed; "
		     "boundary=b\r\n\r\n");
	for (int i = 0; i < 4000; i++)
		eng_buf_printf(&m, "--b\r\nContent-Type: text/plain; name=\""
			       "a-rather-long-attachment-file-name-%04d.txt\""
			       "\r\n\r\nx\r\n", i);
	eng_buf_puts(&m, "--b--\r\n");
	assert_int_equal(append(c, s, "INBOX", m.data, m.len, 0, NULL, &uid),
			 0);
	assert_int_equal(uid, 3);
	fetch_body(c, s, uid, RPC_WANT_MIME, NULL, 0, UINT64_MAX, &resp);
	assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_MIME, &p, &plen), 0);
	assert_true(plen > 256 * 1024 && plen < 768 * 1024);
	assert_int_equal(fetch_meta_want(c, s, 2, 3, 6, &resp), 0);
	assert_int_equal(meta_groups(&resp.view, g, 128), 2);
	assert_int_equal(rpc_count(&g[0], RPC_T_MIME), 1);
	assert_int_equal(rpc_count(&g[1], RPC_T_MIME), 0);
	same_as_fetch_body(c, s, &g[1], RPC_T_HEADER);

	/* 70 headers of 250 KiB: groups split over parts (each under the
	 * frame limit, or the client would have failed), and past 16 MiB
	 * of blobs the groups come without them. The answer is queued at
	 * once, above max_output_bytes (4 MiB): the connection stops reading
	 * until it drains and must then read again (the FETCH_BODY after). */
	for (int i = 0; i < 70; i++) {
		msg = padded_header_message(i, 250 * 1024);
		assert_int_equal(append(c, s, "INBOX", msg, strlen(msg), 0,
					NULL, &uid), 0);
		free(msg);
	}
	assert_int_equal(fetch_meta_want(c, s, 4, 73, RPC_WANT_HEADER, &resp),
			 0);
	n = meta_groups(&resp.view, g, 128);
	assert_int_equal(n, 70);
	assert_true(resp.parts >= 20);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(get_u(&g[i], RPC_T_UID), i + 4);
		if (rpc_get_bytes(&g[i], RPC_T_HEADER, &p, &plen) != 0)
			continue;
		assert_int_equal(with, i);       /* a prefix has them */
		assert_true(plen > 250 * 1024 && plen < 251 * 1024);
		hdr_len = plen;
		with++;
	}
	assert_int_equal(with, (16u * 1024 * 1024) / hdr_len);
	same_as_fetch_body(c, s, &g[0], RPC_T_HEADER);

	eng_buf_free(&m);
	free(g);
	rpc_sync_resp_clear(&resp);
	rpc_sync_free(&c);
}

static int take_some(void *ctx, const void *data, size_t len)
{
	size_t *got = ctx;

	(void)data;
	*got += len;
	return *got >= 300000 ? ENG_ELIMIT : 0;
}

struct upload_src {
	const char *p;
	size_t len, off;
};

static long give_some(void *ctx, void *buf, size_t len)
{
	struct upload_src *u = ctx;

	if (u->off >= 1000000)
		return ENG_ELIMIT;
	if (len > u->len - u->off)
		len = u->len - u->off;
	memcpy(buf, u->p + u->off, len);
	u->off += len;
	return (long)len;
}

/* A download abandoned midway ends in ECANCELLED, and the connection and
 * the alias go on. */
static void test_fetch_body_cancel(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	rpc_sync_call_opts opts = { 0 };
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	size_t len, text_off, got = 0;
	const char *text;
	char *msg = big_message(&len, &text_off, &text);
	uint32_t uid;
	int err;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	assert_int_equal(append(c, s, "INBOX", msg, len, 0, NULL, &uid), 0);
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_UID, uid);
	rpc_put_u64(&b, RPC_T_WANT, 1);
	opts.body_write = take_some;
	opts.body_write_ctx = &got;
	err = rpc_sync_call_ex(c, RPC_OP_FETCH_BODY, b.data, b.len, &opts,
			       &resp);
	assert_int_equal(err, ENG_ELIMIT);
	assert_true(got >= 300000 && got < len);
	fetch_body(c, s, uid, 1, NULL, 0, 100, &resp);
	assert_int_equal(resp.body.len, 100);
	assert_memory_equal(resp.body.data, msg, 100);
	/* An upload abandoned midway stores nothing. */
	{
		struct upload_src src = { msg, len, 0 };

		begin(&b, s, "INBOX");
		rpc_put_u64(&b, RPC_T_SIZE, len);
		memset(&opts, 0, sizeof(opts));
		opts.has_body = true;
		opts.body_read = give_some;
		opts.body_read_ctx = &src;
		err = rpc_sync_call_ex(c, RPC_OP_APPEND, b.data, b.len, &opts,
				       &resp);
		assert_true(err == ENG_ELIMIT || err == RPC_ECANCELLED);
		begin(&b, s, "INBOX");
		assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
		assert_int_equal(rpc_count(&resp.view, RPC_T_MESSAGE), 1);
	}
	free(msg);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/*
 * FETCH_BODY requests pipelined for one alias share work items (body
 * batches, srv_ops_body.c): each is still answered on its own, in the
 * order sent, byte for byte, a missing UID among them with its own ERROR;
 * and fewer work items ran than requests were sent.
 */
static void test_fetch_body_batch(void **state)
{
	enum { N = 14, MISSING = 6 };
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT, got[N];
	char *msgs[N];
	size_t lens[N];
	uint32_t uids[N], ids[N];
	srv_alias_stats before, after;
	size_t next_first = 0, done = 0;

	memset(got, 0, sizeof(got));
	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	for (int i = 0; i < N; i++) {
		/* 60 bytes to 200 KB: all within the first window. */
		size_t fill = (size_t)60 << (i % 12);
		eng_buf m = ENG_BUF_INIT;

		eng_buf_printf(&m, "Subject: batch %d\r\n\r\n", i);
		for (size_t k = 0; k < fill; k++)
			eng_buf_putc(&m, (char)('a' + (k * 7 + (size_t)i) % 26));
		msgs[i] = eng_buf_steal(&m, &lens[i]);
		if (i == MISSING) {
			uids[i] = 999999;
			continue;
		}
		assert_int_equal(append(c, s, "INBOX", msgs[i], lens[i], 0, NULL,
					&uids[i]), 0);
	}
	srv_aliases_stats(f->srv.s.aliases, &before);
	for (int i = 0; i < N; i++) {
		begin(&b, s, "INBOX");
		rpc_put_u64(&b, RPC_T_UID, uids[i]);
		rpc_put_u64(&b, RPC_T_WANT, RPC_WANT_BODY);
		ids[i] = rpc_sync_next_id(c);
		assert_int_equal(rpc_sync_send(c, RPC_K_REQUEST, 0,
					       RPC_OP_FETCH_BODY, ids[i], b.data,
					       b.len), 0);
	}
	while (done < N) {
		rpc_frame fr;
		int i = -1;

		assert_int_equal(rpc_sync_recv(c, 10000, &fr), 0);
		for (int k = 0; k < N; k++)
			if (ids[k] == fr.request_id)
				i = k;
		assert_true(i >= 0);
		if (fr.kind == RPC_K_RESPONSE || fr.kind == RPC_K_ERROR) {
			/* Answers begin in the order the requests were sent. */
			assert_int_equal(i, (int)next_first);
			next_first++;
		}
		if (fr.kind == RPC_K_ERROR) {
			assert_int_equal(i, MISSING);
			assert_int_equal(rpc_sync_error_code(&fr), ENG_ENOTFOUND);
			done++;
		} else if (fr.kind == RPC_K_DATA) {
			eng_buf_append(&got[i], fr.payload, fr.payload_len);
			if (fr.flags & RPC_F_END)
				done++;
		} else {
			assert_int_equal(fr.kind, RPC_K_RESPONSE);
			assert_true(fr.flags & RPC_F_BODY);
		}
	}
	srv_aliases_stats(f->srv.s.aliases, &after);
	for (int i = 0; i < N; i++) {
		if (i != MISSING) {
			assert_int_equal(got[i].len, lens[i]);
			assert_memory_equal(got[i].data, msgs[i], lens[i]);
		}
		eng_buf_free(&got[i]);
		free(msgs[i]);
	}
	/* One work item per request would be N; batches take several. */
	assert_true(after.work_done - before.work_done < N);
	/* The connection goes on as usual afterwards. */
	{
		rpc_sync_resp resp = RPC_SYNC_RESP_INIT;

		fetch_body(c, s, uids[0], RPC_WANT_BODY, NULL, 0, UINT64_MAX,
			   &resp);
		assert_int_equal(resp.body.len, lens[0]);
		rpc_sync_resp_clear(&resp);
	}
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* The records of a FETCH_BODIES stream, checked against the UIDs asked:
 * each present one's bytes into got[i] (gone[i] set for a GONE head). */
static void split_bodies(const eng_buf *stream, const uint32_t *uids,
			 size_t n, eng_buf *got, bool *gone)
{
	rpc_bodies_reader rd;
	size_t off = 0, rec = 0;

	rpc_bodies_reader_init(&rd);
	while (off < stream->len) {
		rpc_bodies_ev ev;
		size_t used;

		assert_true(rd.records < n || rd.in_body);
		assert_int_equal(rpc_bodies_step(&rd, (const uint8_t *)stream->data + off,
						 stream->len - off, 0,
						 uids[rd.records < n ? rd.records : 0],
						 &used, &ev), 0);
		off += used;
		if (ev.kind == RPC_BODIES_HEAD) {
			rec = rd.records - 1;
			gone[rec] = ev.head.gone;
		} else if (ev.kind == RPC_BODIES_DATA) {
			eng_buf_append(&got[rec], ev.data, ev.len);
		}
	}
	assert_int_equal(rd.records, n);
	assert_true(rpc_bodies_at_boundary(&rd));
}

/*
 * FETCH_BODIES: one request, one body stream of a record per UID in the
 * order asked: small bodies, a 3 MB one (many windows), an expunged UID
 * and one that never was (GONE heads), a repeated UID; byte for byte, in
 * fewer work items than messages. And its field checks.
 */
static void test_fetch_bodies(void **state)
{
	enum { N = 9, BIG = 4, EXPUNGED = 2 };
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT, got[N + 2];
	bool gone[N + 2];
	char *msgs[N];
	size_t lens[N], text_off;
	uint32_t uids[N + 2], zero[2] = { 5, 0 };
	srv_alias_stats before, after;
	const char *text;

	memset(got, 0, sizeof(got));
	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	for (int i = 0; i < N; i++) {
		eng_buf m = ENG_BUF_INIT;

		if (i == BIG) {
			msgs[i] = big_message(&lens[i], &text_off, &text);
		} else {
			eng_buf_printf(&m, "Subject: bodies %d\r\n\r\n", i);
			for (size_t k = 0; k < (size_t)100 << i; k++)
				eng_buf_putc(&m, (char)('a' + (k * 5 + (size_t)i) % 26));
			msgs[i] = eng_buf_steal(&m, &lens[i]);
		}
		assert_int_equal(append(c, s, "INBOX", msgs[i], lens[i], 0, NULL,
					&uids[i]), 0);
	}
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, uids[EXPUNGED], uids[EXPUNGED]);
	rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&b, RPC_T_FLAGS, 8);
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_EXPUNGE, &b, &resp), 0);
	uids[N] = 999999;            /* never was */
	uids[N + 1] = uids[1];       /* asked twice */

	srv_aliases_stats(f->srv.s.aliases, &before);
	begin(&b, s, "INBOX");
	rpc_put_uids(&b, RPC_T_UIDS, uids, N + 2);
	assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp), 0);
	srv_aliases_stats(f->srv.s.aliases, &after);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), N + 2);
	split_bodies(&resp.body, uids, N + 2, got, gone);
	for (int i = 0; i < N + 2; i++) {
		int src = i == N + 1 ? 1 : i;

		assert_int_equal(gone[i], i == EXPUNGED || i == N);
		if (gone[i]) {
			assert_int_equal(got[i].len, 0);
		} else {
			assert_int_equal(got[i].len, lens[src]);
			assert_memory_equal(got[i].data, msgs[src], lens[src]);
		}
		eng_buf_free(&got[i]);
	}
	/* 3 MB in 128 KiB pieces read ahead (srv_ops_body.c) is at most
	 * 24 work items; the ten others share the first pieces. */
	assert_true(after.work_done - before.work_done <
		    3u * 1024 * 1024 / (RPC_MAX_CHUNK_BYTES / 2) + 3);

	/* Field checks: no UIDS, an empty or too long list, a UID 0. */
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp), RPC_EMISSING);
	begin(&b, s, "INBOX");
	rpc_put_uids(&b, RPC_T_UIDS, uids, 0);
	assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp), ENG_EINVAL);
	begin(&b, s, "INBOX");
	rpc_put_uids(&b, RPC_T_UIDS, zero, 2);
	assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp), ENG_EINVAL);
	{
		uint32_t *many = calloc(RPC_BODIES_MAX_UIDS + 1, sizeof(*many));

		for (size_t i = 0; i <= RPC_BODIES_MAX_UIDS; i++)
			many[i] = (uint32_t)i + 1;
		begin(&b, s, "INBOX");
		rpc_put_uids(&b, RPC_T_UIDS, many, RPC_BODIES_MAX_UIDS + 1);
		assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp),
				 ENG_EINVAL);
		free(many);
	}
	begin(&b, s, "Nowhere");
	rpc_put_uids(&b, RPC_T_UIDS, uids, 1);
	assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp), ENG_ENOTFOUND);

	for (int i = 0; i < N; i++)
		free(msgs[i]);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/*
 * FETCH_BODIES given up by the client after 300 KB, three times in a row,
 * while sqlited has pieces read ahead and waiting for credit: each stream
 * ends, every piece buffer comes back to the pool (and the pool lets them
 * go), and the next FETCH_BODIES on the same connection is byte for byte.
 */
static void test_fetch_bodies_cancel_read_ahead(void **state)
{
	enum { N = 4 };
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	rpc_sync_call_opts opts = { 0 };
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT, got[N];
	bool gone[N];
	char *msgs[N];
	size_t lens[N], text_off, taken;
	uint32_t uids[N];
	const char *text;

	memset(got, 0, sizeof(got));
	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	for (int i = 0; i < N; i++) {
		msgs[i] = big_message(&lens[i], &text_off, &text);
		msgs[i][0] = (char)('A' + i);  /* four different messages */
		assert_int_equal(append(c, s, "INBOX", msgs[i], lens[i], 0, NULL,
					&uids[i]), 0);
	}
	for (int round = 0; round < 3; round++) {
		taken = 0;
		opts.body_write = take_some;
		opts.body_write_ctx = &taken;
		begin(&b, s, "INBOX");
		rpc_put_uids(&b, RPC_T_UIDS, uids, N);
		assert_int_equal(rpc_sync_call_ex(c, RPC_OP_FETCH_BODIES, b.data,
						  b.len, &opts, &resp),
				 ENG_ELIMIT);
		assert_true(taken >= 300000 && taken < lens[0]);
		pieces_wait_idle();
	}
	begin(&b, s, "INBOX");
	rpc_put_uids(&b, RPC_T_UIDS, uids, N);
	assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp), 0);
	split_bodies(&resp.body, uids, N, got, gone);
	for (int i = 0; i < N; i++) {
		assert_false(gone[i]);
		assert_int_equal(got[i].len, lens[i]);
		assert_memory_equal(got[i].data, msgs[i], lens[i]);
		eng_buf_free(&got[i]);
		free(msgs[i]);
	}
	pieces_wait_idle();
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_append_fetch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fetch_body_batch, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_fetch_bodies, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_fetch_bodies_cancel_read_ahead,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_fetch_meta_want, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_fetch_meta_parts, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_fetch_body_cancel, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, 0, NULL);
}
