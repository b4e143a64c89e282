/*
 * The libuv RPC client against the real sqlited core (srv_net), with the
 * fixture of test_srv_ops (testsrv.c): the server's loop on a thread of
 * its own, the client on the test's; big uploads and downloads compared
 * byte for byte.
 *
 * Every test runs its own loop and closes the client; uv_loop_close()
 * returning 0 checks that every handle was closed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "eng_error.h"
#include "keys.h"
#include "rpc_client.h"
#include "rpc_codec.h"
#include "rpc_proto.h"
#include "srv_net.h"
#include "testrpc.h"
#include "testsrv.h"

/* The server is testsrv.c's (alice@example.org, password "correct
 * horse"), with a short delay before ENOTAUTH for the wrong secret. */
static int setup_real(void **state)
{
	srv_net_options opt;

	srv_net_options_default(&opt);
	opt.auth_fail_delay_ms = 50;
	return setup_net(state, -1, &opt);
}

static void env_open_real(env *e, struct fx *f, const uint8_t *secret)
{
	fake path_only;

	memset(&path_only, 0, sizeof(path_only));
	snprintf(path_only.path, sizeof(path_only.path), "%s",
		 f->srv.cfg->sqlited_socket);
	env_open(e, &path_only, secret, NULL);
}

/* The answer of an UNLOCK or APPEND, kept for the test. */
typedef struct real_result {
	int calls;
	int err;
	uint8_t session[64];
	size_t session_len;
	uint64_t uid;
	uint64_t size;
} real_result;

static void on_real(void *ctx, int err, const rpc_view *resp)
{
	real_result *r = ctx;
	const uint8_t *p;
	size_t n;

	r->calls++;
	r->err = err;
	if (err != 0)
		return;
	if (rpc_get_bytes(resp, RPC_T_SESSION, &p, &n) == 0 &&
	    n <= sizeof(r->session)) {
		memcpy(r->session, p, n);
		r->session_len = n;
	}
	(void)rpc_get_u64(resp, RPC_T_UID, &r->uid);
	(void)rpc_get_u64(resp, RPC_T_SIZE, &r->size);
}

typedef struct mem_src {
	const uint8_t *p;
	size_t len;
	size_t off;
	int rewinds;
} mem_src;

static long mem_read(void *ctx, uint8_t *buf, size_t len)
{
	mem_src *m = ctx;
	size_t n = m->len - m->off < len ? m->len - m->off : len;

	memcpy(buf, m->p + m->off, n);
	m->off += n;
	return (long)n;
}

static int mem_rewind(void *ctx)
{
	mem_src *m = ctx;

	m->off = 0;
	m->rewinds++;
	return 0;
}

/* Compares a download with the expected bytes, holding every chunk
 * (hold_sink: consumed 1 ms later). */
typedef struct cmp_sink {
	hold_sink h;
	const uint8_t *want;
	size_t want_len;
	bool mismatch;
} cmp_sink;

static int cmp_data(void *ctx, uint32_t id, const rpc_view *head,
		    const uint8_t *data, size_t len, bool end)
{
	cmp_sink *s = ctx;

	(void)head;
	if (s->h.got + len > s->want_len ||
	    memcmp(s->want + s->h.got, data, len) != 0)
		s->mismatch = true;
	return hold_sink_chunk(&s->h, id, len, end);
}

static uint8_t *make_message(size_t target, size_t *len_r)
{
	eng_buf m = ENG_BUF_INIT;

	eng_buf_puts(&m, "From: bob@example.net\r\nTo: alice@example.org\r\n"
		     "Subject: client library test\r\n"
		     "Message-ID: <client@example.net>\r\n"
		     "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
		     "Content-Type: text/plain\r\n\r\n");
	for (unsigned i = 0; m.len < target; i++)
		eng_buf_printf(&m, "line %08u of a long message, to stream in chunks\r\n", i);
	return (uint8_t *)eng_buf_steal(&m, len_r);
}

static void test_real_server(void **state)
{
	struct fx *f = *state;
	env e, bad;
	result pr = { 0 }, pipes[100];
	real_result un = { 0 }, ap = { 0 }, ap2 = { 0 }, fb = { 0 }, wrong = { 0 };
	eng_buf p = ENG_BUF_INIT;
	char key[RPC_IDEM_KEY_CHARS + 1];
	size_t len;
	uint8_t *msg = make_message(3 * MIB, &len);
	mem_src ms = { msg, len, 0, 0 };
	rpc_client_opts o;
	cmp_sink snk;
	int done;

	memset(pipes, 0, sizeof(pipes));
	env_open_real(&e, f, f->srv.s.rpc_secret);

	/* PING, then 100 pipelined. */
	assert_int_equal(ping(&e, "real", 0, &pr, NULL), 0);
	RUN_UNTIL(&e, pr.calls == 1, 10000);
	assert_int_equal(pr.err, 0);
	assert_int_equal(pr.echo_len, 4);
	assert_memory_equal(pr.echo, "real", 4);
	for (int i = 0; i < 100; i++)
		assert_int_equal(ping(&e, i % 2 ? "odd" : "even", 0, &pipes[i], NULL), 0);
	RUN_UNTIL(&e, (done = total_calls(pipes, 100)) == 100, 10000);
	for (int i = 0; i < 100; i++) {
		assert_int_equal(pipes[i].err, 0);
		assert_memory_equal(pipes[i].echo, i % 2 ? "odd" : "even",
				    i % 2 ? 3 : 4);
	}

	/* UNLOCK. */
	rpc_put_str(&p, RPC_T_ALIAS, "alice@example.org");
	rpc_put_str(&p, RPC_T_PASSWORD, password);
	assert_int_equal(rpc_client_call(e.c, RPC_OP_UNLOCK, p.data, p.len, 20000,
					 on_real, &un, NULL), 0);
	eng_buf_reset(&p);
	RUN_UNTIL(&e, un.calls == 1, 20000);
	assert_int_equal(un.err, 0);
	assert_true(un.session_len > 0);

	/* APPEND of 3 MB through a source, with a key; then the same key
	 * again (a retry after a lost answer): the server stores it once. */
	assert_int_equal(rpc_client_idem_key(key), 0);
	rpc_put_bytes(&p, RPC_T_SESSION, un.session, un.session_len);
	rpc_put_str(&p, RPC_T_MAILBOX, "INBOX");
	rpc_put_u64(&p, RPC_T_SIZE, len);
	rpc_put_str(&p, RPC_T_IDEMPOTENCY_KEY, key);
	memset(&o, 0, sizeof(o));
	o.has_body = true;
	o.source = mem_read;
	o.rewind = mem_rewind;
	o.source_ctx = &ms;
	o.retries = 1;
	/* A guard, not a figure: 3 MB through a real sqlited under ASan on a
	 * starved CPU took over 30 s (RPC_ETIMEOUT) in a loop under load. */
	o.timeout_ms = 120000;
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_APPEND, p.data, p.len,
					    &o, on_real, &ap, NULL), 0);
	RUN_UNTIL(&e, ap.calls == 1, 120000);
	assert_int_equal(ap.err, 0);
	assert_true(ap.uid >= 1);
	assert_int_equal(rpc_client_call_retry(e.c, RPC_OP_APPEND, p.data, p.len,
					       msg, len, 1, on_real, &ap2,
					       NULL), 0);
	RUN_UNTIL(&e, ap2.calls == 1, 30000);
	assert_int_equal(ap2.err, 0);
	assert_int_equal(ap2.uid, ap.uid);
	eng_buf_reset(&p);

	/* FETCH_BODY back, byte for byte, with the snk holding credit. */
	memset(&snk, 0, sizeof(snk));
	hold_sink_init(&snk.h, &e, 0, 1);
	snk.want = msg;
	snk.want_len = len;
	rpc_put_bytes(&p, RPC_T_SESSION, un.session, un.session_len);
	rpc_put_str(&p, RPC_T_MAILBOX, "INBOX");
	rpc_put_u64(&p, RPC_T_UID, ap.uid);
	rpc_put_u64(&p, RPC_T_WANT, RPC_WANT_BODY);
	memset(&o, 0, sizeof(o));
	o.data = cmp_data;
	o.data_ctx = &snk;
	o.timeout_ms = 30000;
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_FETCH_BODY, p.data, p.len,
					    &o, on_real, &fb, NULL), 0);
	eng_buf_reset(&p);
	RUN_UNTIL(&e, fb.calls == 1, 30000);
	assert_int_equal(fb.err, 0);
	assert_int_equal(fb.size, len);
	assert_true(snk.h.end);
	assert_int_equal(snk.h.got, len);
	assert_false(snk.mismatch);
	assert_true(snk.h.max_held <= RPC_INITIAL_WINDOW_BYTES);
	hold_sink_close(&snk.h);

	/* A wrong secret is refused by the real server too. */
	env_open_real(&bad, f, secret_b);
	rpc_put_str(&p, RPC_T_ECHO, "x");
	assert_int_equal(rpc_client_call(bad.c, RPC_OP_PING, p.data, p.len, 10000,
					 on_real, &wrong, NULL), 0);
	RUN_UNTIL(&bad, wrong.calls == 1, 10000);
	assert_int_equal(wrong.err, RPC_ENOTAUTH);
	env_close(&bad);

	env_close(&e);
	eng_buf_free(&p);
	free(msg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_real_server, setup_real,
						teardown),
	};

	if (eng_crypto_init() != 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
