/*
 * FETCH_BODY's pieces in the piece pool (srv_ops_body.c): the first piece
 * read behind room for the RESPONSE and DATA heads and sent in its own
 * buffer, later pieces sent whole in theirs or by copy when the window
 * cuts them. Byte for byte at every size around the first piece's bound,
 * under credit that cuts the pieces, with a large reply in front of the
 * body, over byte ranges, across an EXPUNGE in the middle of the stream;
 * pipelined requests of several mailboxes in one batch; writes between
 * reads that look a mailbox up once. Every piece buffer comes back to the
 * pool.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "rpc_codec.h"
#include "rpc_sync.h"
#include "srv.h"
#include "srv_bufpool.h"
#include "testutil.h"
#include "testsrv.h"

/* A message of exactly len bytes (len >= 1): a header when it fits, then
 * letters that differ by seed. */
static char *message(size_t len, unsigned seed)
{
	char *m = malloc(len);
	int h = snprintf(m, len, "Subject: body %u\r\n\r\n", seed);

	if (h < 0 || (size_t)h >= len)
		h = 0;
	for (size_t k = (size_t)h; k < len; k++)
		m[k] = (char)('a' + (k * 7 + seed) % 26);
	return m;
}

static void send_fetch(rpc_sync *c, const uint8_t *s, const char *mailbox,
		       uint32_t uid, uint32_t want, uint64_t offset,
		       uint64_t length, uint32_t id)
{
	eng_buf b = ENG_BUF_INIT;

	begin(&b, s, mailbox);
	rpc_put_u64(&b, RPC_T_UID, uid);
	rpc_put_u64(&b, RPC_T_WANT, want);
	if (offset != 0)
		rpc_put_u64(&b, RPC_T_OFFSET, offset);
	if (length != UINT64_MAX)
		rpc_put_u64(&b, RPC_T_LENGTH, length);
	assert_int_equal(rpc_sync_send(c, RPC_K_REQUEST, 0, RPC_OP_FETCH_BODY,
				       id, b.data, b.len), 0);
	eng_buf_free(&b);
}

static void grant(rpc_sync *c, uint32_t id, uint64_t credit)
{
	eng_buf pl = ENG_BUF_INIT;

	rpc_put_u64(&pl, RPC_T_CREDIT, credit);
	assert_int_equal(rpc_sync_send(c, RPC_K_WINDOW, 0, 0, id, pl.data,
				       pl.len), 0);
	eng_buf_free(&pl);
}

/*
 * Reads request id's answer into *body: RESPONSE (its SIZE in *size_r),
 * then DATA until END, granting `step` bytes of credit each time that
 * many more arrived; stops early (false) once `stop` bytes are in
 * (0: never). Returns true at END.
 */
static bool read_body(rpc_sync *c, uint32_t id, size_t step, size_t stop,
		      uint64_t *size_r, eng_buf *body)
{
	size_t ungranted = 0;

	for (;;) {
		rpc_frame fr;

		if (stop != 0 && body->len >= stop)
			return false;
		assert_int_equal(rpc_sync_recv(c, 10000, &fr), 0);
		assert_int_equal(fr.request_id, id);
		if (fr.kind == RPC_K_RESPONSE) {
			rpc_msg msg = RPC_MSG_INIT;
			rpc_view v;

			assert_true(fr.flags & RPC_F_BODY);
			assert_int_equal(rpc_decode(fr.payload, fr.payload_len,
						    NULL, &msg, &v), 0);
			*size_r = get_u(&v, RPC_T_SIZE);
			rpc_msg_clear(&msg);
			continue;
		}
		assert_int_equal(fr.kind, RPC_K_DATA);
		eng_buf_append(body, fr.payload, fr.payload_len);
		if (fr.flags & RPC_F_END)
			return true;
		ungranted += fr.payload_len;
		while (ungranted >= step) {
			grant(c, id, step);
			ungranted -= step;
		}
	}
}

/* FETCH_BODY of [offset, offset + length) of uid, read with credit in
 * steps of step: byte for byte msg's range. */
static void check_range(rpc_sync *c, const uint8_t *s, uint32_t uid,
			const char *msg, size_t len, uint64_t offset,
			uint64_t length, size_t step)
{
	uint32_t id = rpc_sync_next_id(c);
	eng_buf body = ENG_BUF_INIT;
	uint64_t size = UINT64_MAX, want = 0;

	if (offset < len)
		want = len - offset < length ? len - offset : length;
	send_fetch(c, s, "INBOX", uid, RPC_WANT_BODY, offset, length, id);
	assert_true(read_body(c, id, step, 0, &size, &body));
	assert_int_equal(size, want);
	assert_int_equal(body.len, want);
	if (want > 0)
		assert_memory_equal(body.data, msg + offset, want);
	eng_buf_free(&body);
}

/* The bytes the first piece holds at most: its buffer after the two frame
 * heads and the RESPONSE payload (SIZE alone) of a body of len bytes. */
static size_t first_piece_bound(size_t len)
{
	eng_buf pl = ENG_BUF_INIT;
	size_t n;

	rpc_put_u64(&pl, RPC_T_SIZE, len);
	n = SRV_BUFPOOL_BYTES - 2 * RPC_HEADER_BYTES - pl.len;
	eng_buf_free(&pl);
	return n < RPC_INITIAL_WINDOW_BYTES ? n : RPC_INITIAL_WINDOW_BYTES;
}

/*
 * Whole bodies of 1 byte, a few, the first piece's bound -1/0/+1, the
 * window -1/0/+1 and several chunks, each read with generous credit (the
 * pieces go whole) and with credit of 10,000 bytes (the window cuts
 * them); byte ranges within the first piece, across the piece boundary
 * and past the end, and of length 0.
 */
static void test_body_sizes(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	uint8_t s[SRV_SESSION_BYTES];
	size_t bound = first_piece_bound(RPC_INITIAL_WINDOW_BYTES);
	size_t lens[] = { 1, 2, 37, 26000, bound - 1, bound, bound + 1,
			  RPC_INITIAL_WINDOW_BYTES - 1, RPC_INITIAL_WINDOW_BYTES,
			  RPC_INITIAL_WINDOW_BYTES + 1,
			  3 * RPC_MAX_CHUNK_BYTES + 12345 };
	enum { N = sizeof(lens) / sizeof(lens[0]) };
	char *msgs[N];
	uint32_t uids[N];

	/* The bound of every size here is the same (SIZE's encoding). */
	assert_int_equal(first_piece_bound(bound - 1), bound);
	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	for (size_t i = 0; i < N; i++) {
		msgs[i] = message(lens[i], (unsigned)i);
		assert_int_equal(append(c, s, "INBOX", msgs[i], lens[i], 0, NULL,
					&uids[i]), 0);
	}
	for (size_t i = 0; i < N; i++) {
		check_range(c, s, uids[i], msgs[i], lens[i], 0, UINT64_MAX,
			    RPC_INITIAL_WINDOW_BYTES);
		check_range(c, s, uids[i], msgs[i], lens[i], 0, UINT64_MAX,
			    10000);
	}
	pieces_wait_idle();
	for (size_t i = 0; i < N; i++) {
		size_t len = lens[i];

		check_range(c, s, uids[i], msgs[i], len, 0, 0, 10000);
		check_range(c, s, uids[i], msgs[i], len, len, 10, 10000);
		check_range(c, s, uids[i], msgs[i], len, len - 1, 10, 10000);
		check_range(c, s, uids[i], msgs[i], len, len / 2, len, 10000);
		if (len > bound + 100) {
			check_range(c, s, uids[i], msgs[i], len, 1, bound,
				    RPC_INITIAL_WINDOW_BYTES);
			check_range(c, s, uids[i], msgs[i], len, 100,
				    bound + 1, RPC_INITIAL_WINDOW_BYTES);
			check_range(c, s, uids[i], msgs[i], len, bound - 3,
				    len, 77777);
		}
		free(msgs[i]);
	}
	pieces_wait_idle();
	rpc_sync_free(&c);
}

/* WANT MIME and HEADER put the reply in front of the body: a small one
 * in the first piece's buffer, one larger than the room for it (a 6 KB
 * header) by copy; both byte for byte. */
static void test_body_with_reply(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT, m = ENG_BUF_INIT;
	const uint8_t *hdr;
	size_t hdr_len;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	for (int big = 0; big < 2; big++) {
		size_t len;
		char *msg;
		uint32_t uid;

		eng_buf_reset(&m);
		eng_buf_puts(&m, "Subject: reply in front\r\n");
		for (int k = 0; big && k < 80; k++)
			eng_buf_printf(&m, "X-Filler-%02d: %070d\r\n", k, k);
		eng_buf_puts(&m, "\r\n");
		while (m.len < 40000)
			eng_buf_putc(&m, (char)('a' + m.len % 23));
		len = m.len;
		msg = m.data;
		assert_int_equal(append(c, s, "INBOX", msg, len, 0, NULL, &uid),
				 0);
		begin(&b, s, "INBOX");
		rpc_put_u64(&b, RPC_T_UID, uid);
		rpc_put_u64(&b, RPC_T_WANT, RPC_WANT_BODY | RPC_WANT_MIME |
			    RPC_WANT_HEADER);
		assert_int_equal(call(c, RPC_OP_FETCH_BODY, &b, &resp), 0);
		assert_int_equal(get_u(&resp.view, RPC_T_SIZE), len);
		assert_int_equal(resp.body.len, len);
		assert_memory_equal(resp.body.data, msg, len);
		assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_HEADER, &hdr,
					       &hdr_len), 0);
		assert_true(big ? hdr_len > 4096 : hdr_len < 100);
		assert_memory_equal(hdr, msg, hdr_len);
	}
	pieces_wait_idle();
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	eng_buf_free(&m);
	rpc_sync_free(&c);
}

/*
 * A 3 MB body read up to its first window, then the message is expunged
 * (another connection), then the rest read: byte for byte, the content
 * pinned meanwhile; afterwards the UID is gone and no buffer is out.
 */
static void test_body_expunge_mid_stream(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f), *c2 = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES], s2[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT, body = ENG_BUF_INIT;
	size_t len = 3 * 1024 * 1024 + 17;
	char *msg = message(len, 99);
	uint64_t size = 0;
	uint32_t uid, id;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	assert_int_equal(unlock(c2, "alice@example.org", password, s2), 0);
	assert_int_equal(append(c, s, "INBOX", msg, len, 0, NULL, &uid), 0);
	id = rpc_sync_next_id(c);
	send_fetch(c, s, "INBOX", uid, RPC_WANT_BODY, 0, UINT64_MAX, id);
	/* The first window, and no credit yet. */
	assert_false(read_body(c, id, SIZE_MAX, RPC_INITIAL_WINDOW_BYTES,
			       &size, &body));
	assert_int_equal(size, len);
	begin(&b, s2, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, uid, uid);
	rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&b, RPC_T_FLAGS, 8);
	assert_int_equal(call(c2, RPC_OP_STORE, &b, &resp), 0);
	begin(&b, s2, "INBOX");
	assert_int_equal(call(c2, RPC_OP_EXPUNGE, &b, &resp), 0);
	grant(c, id, body.len);
	assert_true(read_body(c, id, 100000, 0, &size, &body));
	assert_int_equal(body.len, len);
	assert_memory_equal(body.data, msg, len);
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_UID, uid);
	rpc_put_u64(&b, RPC_T_WANT, RPC_WANT_BODY);
	assert_int_equal(call(c, RPC_OP_FETCH_BODY, &b, &resp), ENG_ENOTFOUND);
	pieces_wait_idle();
	free(msg);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	eng_buf_free(&body);
	rpc_sync_free(&c2);
	rpc_sync_free(&c);
}

/*
 * Pipelined FETCH_BODY of two mailboxes interleaved (body batches), one
 * with the mailbox's
 * UIDVALIDITY, one with a wrong one, one of a mailbox that does not
 * exist: each answered on its own, in order, byte for byte.
 */
static void test_body_batch_mailboxes(void **state)
{
	enum { N = 12 };
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	const char *boxes[2] = { "INBOX", "Other" };
	char *msgs[2];
	size_t lens[2] = { 5000, 7000 };
	uint32_t uids[2], ids[N];
	uint64_t uidvalidity;
	int expect[N];

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	begin(&b, s, "Other");
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), 0);
	uidvalidity = get_u(&resp.view, RPC_T_UIDVALIDITY);
	for (int k = 0; k < 2; k++) {
		msgs[k] = message(lens[k], (unsigned)k + 40);
		assert_int_equal(append(c, s, boxes[k], msgs[k], lens[k], 0,
					NULL, &uids[k]), 0);
	}
	for (int i = 0; i < N; i++) {
		const char *box = boxes[i % 2];

		expect[i] = 0;
		begin(&b, s, i == 7 ? "Nowhere" : box);
		if (i == 7)
			expect[i] = ENG_ENOTFOUND;
		rpc_put_u64(&b, RPC_T_UID, uids[i % 2]);
		rpc_put_u64(&b, RPC_T_WANT, RPC_WANT_BODY);
		if (i == 5 || i == 9) {
			rpc_put_u64(&b, RPC_T_UIDVALIDITY,
				    i == 5 ? uidvalidity : uidvalidity + 1);
			expect[i] = i == 5 ? 0 : ENG_EMODIFIED;
		}
		ids[i] = rpc_sync_next_id(c);
		assert_int_equal(rpc_sync_send(c, RPC_K_REQUEST, 0,
					       RPC_OP_FETCH_BODY, ids[i], b.data,
					       b.len), 0);
	}
	for (int i = 0; i < N; i++) {
		eng_buf body = ENG_BUF_INIT;
		uint64_t size = 0;
		rpc_frame fr;

		if (expect[i] != 0) {
			assert_int_equal(rpc_sync_recv(c, 10000, &fr), 0);
			assert_int_equal(fr.request_id, ids[i]);
			assert_int_equal(fr.kind, RPC_K_ERROR);
			assert_int_equal(rpc_sync_error_code(&fr), expect[i]);
			continue;
		}
		assert_true(read_body(c, ids[i], SIZE_MAX, 0, &size, &body));
		assert_int_equal(body.len, lens[i % 2]);
		assert_memory_equal(body.data, msgs[i % 2], lens[i % 2]);
		eng_buf_free(&body);
	}
	pieces_wait_idle();
	free(msgs[0]);
	free(msgs[1]);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* FETCH_BODY of uid in mailbox (UIDVALIDITY uv unless 0): 0 and its
 * bytes equal to msg, or the error. */
static int fetch_in(rpc_sync *c, const uint8_t *s, const char *mailbox,
		    uint32_t uid, uint64_t uv, const char *msg, size_t len)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;
	int err;

	begin(&b, s, mailbox);
	rpc_put_u64(&b, RPC_T_UID, uid);
	rpc_put_u64(&b, RPC_T_WANT, RPC_WANT_BODY);
	if (uv != 0)
		rpc_put_u64(&b, RPC_T_UIDVALIDITY, uv);
	err = call(c, RPC_OP_FETCH_BODY, &b, &resp);
	if (err == 0) {
		assert_int_equal(resp.body.len, len);
		assert_memory_equal(resp.body.data, msg, len);
	}
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	return err;
}

static uint64_t status_messages(rpc_sync *c, const uint8_t *s,
				const char *mailbox)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;
	rpc_view info;
	uint64_t n;

	begin(&b, s, mailbox);
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp), 0);
	assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO, &info),
			 0);
	n = get_u(&info, RPC_T_MESSAGES);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	return n;
}

/*
 * Reads look their mailbox up once while nothing writes (srv_alias.h,
 * srv_alias_mailbox_get): every write between them is seen. STATUS after
 * an APPEND counts it; after a RENAME the old name is gone and the new
 * one serves; after DELETE and CREATE of the same name the old
 * UIDVALIDITY is refused and the old UID is gone.
 */
static void test_body_mailbox_changes(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	char *msg = message(3000, 7);
	uint64_t uv, uv2;
	uint32_t uid, uid2;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	begin(&b, s, "Other");
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), 0);
	uv = get_u(&resp.view, RPC_T_UIDVALIDITY);
	assert_int_equal(append(c, s, "Other", msg, 3000, 0, NULL, &uid), 0);
	assert_int_equal(fetch_in(c, s, "Other", uid, uv, msg, 3000), 0);
	assert_int_equal(status_messages(c, s, "Other"), 1);
	assert_int_equal(append(c, s, "Other", msg, 3000, 0, NULL, &uid2), 0);
	assert_int_equal(status_messages(c, s, "Other"), 2);
	assert_int_equal(fetch_in(c, s, "Other", uid2, uv, msg, 3000), 0);

	begin(&b, s, "Other");
	rpc_put_str(&b, RPC_T_NEW_NAME, "Moved");
	assert_int_equal(call(c, RPC_OP_MAILBOX_RENAME, &b, &resp), 0);
	assert_int_equal(fetch_in(c, s, "Other", uid, 0, msg, 3000),
			 ENG_ENOTFOUND);
	assert_int_equal(fetch_in(c, s, "Moved", uid, uv, msg, 3000), 0);

	begin(&b, s, "Moved");
	assert_int_equal(call(c, RPC_OP_MAILBOX_DELETE, &b, &resp), 0);
	assert_int_equal(fetch_in(c, s, "Moved", uid, 0, msg, 3000),
			 ENG_ENOTFOUND);
	begin(&b, s, "Moved");
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), 0);
	uv2 = get_u(&resp.view, RPC_T_UIDVALIDITY);
	assert_true(uv2 != uv);
	assert_int_equal(fetch_in(c, s, "Moved", uid, uv, msg, 3000),
			 ENG_EMODIFIED);
	assert_int_equal(fetch_in(c, s, "Moved", uid, 0, msg, 3000),
			 ENG_ENOTFOUND);
	assert_int_equal(status_messages(c, s, "Moved"), 0);
	free(msg);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_body_sizes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_body_with_reply, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_body_expunge_mid_stream,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_body_batch_mailboxes, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_body_mailbox_changes, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, 0, NULL);
}
