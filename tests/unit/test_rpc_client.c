/*
 * The libuv RPC client (sqlite-server/rpc_client.h) against the fake
 * server of testrpc.c: the handshake (right and wrong secrets, a wrong
 * server proof), pipelined calls answered out of order, the in-flight
 * limit, timeouts, CANCEL, a dropped connection and the reconnect, calls
 * queued while down, and the configuration checks. Uploads and downloads
 * are test_rpc_client_stream.c, the real sqlited test_rpc_client_real.c.
 *
 * Every test runs its own loop and closes the client; uv_loop_close()
 * returning 0 checks that every handle was closed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include <sys/stat.h>

#include "config.h"
#include "dir.h"
#include "eng_error.h"
#include "keys.h"
#include "rpc_auth.h"
#include "rpc_client.h"
#include "rpc_codec.h"
#include "rpc_proto.h"
#include "srv.h"
#include "srv_alias.h"
#include "srv_net.h"
#include "testutil.h"
#include "testrpc.h"

/* ------------------------------------------------------------------ */
/* Tests                                                               */
/* ------------------------------------------------------------------ */

static void test_handshake_ok(void **state)
{
	fake f;
	env e;
	result r = { 0 };

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	/* Made before the connection is up: queued, then sent. */
	assert_int_equal(ping(&e, "hello", 0, &r, NULL), 0);
	assert_false(rpc_client_connected(e.c));
	RUN_UNTIL(&e, r.calls == 1, 5000);
	assert_int_equal(r.err, 0);
	assert_int_equal(r.echo_len, 5);
	assert_memory_equal(r.echo, "hello", 5);
	assert_true(rpc_client_connected(e.c));
	assert_int_equal(e.ups, 1);
	assert_int_equal(e.downs, 0);
	assert_int_equal(rpc_client_in_flight(e.c), 0);
	env_close(&e);
	assert_int_equal(r.calls, 1);
	fake_stop(&f);
}

static void test_wrong_secret(void **state)
{
	fake f;
	env e;
	result r = { 0 };

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_b, NULL);
	assert_int_equal(ping(&e, "x", 5000, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 5000);
	/* Waiting cannot help: the queued request fails at once. */
	assert_int_equal(r.err, RPC_ENOTAUTH);
	assert_true(e.downs >= 1);
	assert_int_equal(e.last_down_err, RPC_ENOTAUTH);
	assert_int_equal(e.ups, 0);
	assert_false(rpc_client_connected(e.c));
	assert_int_equal(atomic_load(&f.requests), 0);
	env_close(&e);
	fake_stop(&f);
}

static void test_bad_server_proof(void **state)
{
	fake f;
	env e;
	result r = { 0 };

	(void)state;
	fake_init(&f, secret_a);
	f.lie_in_auth_ok = true;
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	assert_int_equal(ping(&e, "x", 5000, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 5000);
	assert_int_equal(r.err, RPC_ENOTAUTH);
	assert_int_equal(e.ups, 0);
	/* A server that cannot prove the secret gets no request. */
	run_for(&e, 100);
	assert_int_equal(atomic_load(&f.requests), 0);
	env_close(&e);
	fake_stop(&f);
}

#define N_PIPE 200

static void test_pipelined_out_of_order(void **state)
{
	fake f;
	env e;
	result *r = calloc(N_PIPE, sizeof(*r));
	int done = 0;

	(void)state;
	fake_init(&f, secret_a);
	f.ping_batch = N_PIPE;
	/* A client descheduled for 20 ms while it sends must not split the
	 * batch (max_pending would be less than N_PIPE). */
	f.batch_only = true;
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	for (int i = 0; i < N_PIPE; i++) {
		char echo[32];

		snprintf(echo, sizeof(echo), "ping-%d", i);
		assert_int_equal(ping(&e, echo, 0, &r[i], NULL), 0);
	}
	RUN_UNTIL(&e, (done = total_calls(r, N_PIPE)) == N_PIPE, 10000);
	for (int i = 0; i < N_PIPE; i++) {
		char echo[32];

		snprintf(echo, sizeof(echo), "ping-%d", i);
		assert_int_equal(r[i].calls, 1);
		assert_int_equal(r[i].err, 0);
		assert_int_equal(r[i].echo_len, strlen(echo));
		assert_memory_equal(r[i].echo, echo, strlen(echo));
	}
	/* All 200 were in flight at once, and answered out of order. */
	assert_int_equal(atomic_load(&f.max_pending), N_PIPE);
	assert_true(atomic_load(&f.out_of_order) > 0);
	assert_int_equal(rpc_client_in_flight(e.c), 0);
	env_close(&e);
	fake_stop(&f);
	free(r);
}

static void test_in_flight_limit(void **state)
{
	fake f;
	env e;
	rpc_client_config cfg;
	result r[10];
	int done;

	(void)state;
	memset(r, 0, sizeof(r));
	memset(&cfg, 0, sizeof(cfg));
	cfg.max_in_flight = 3;
	cfg.max_queued = 7;
	fake_init(&f, secret_a);
	f.ping_batch = 1000;         /* answered when the server is idle */
	fake_start(&f);
	env_open(&e, &f, secret_a, &cfg);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	for (int i = 0; i < 10; i++)
		assert_int_equal(ping(&e, "q", 0, &r[i], NULL), 0);
	assert_int_equal(rpc_client_in_flight(e.c), 3);
	assert_int_equal(rpc_client_queued(e.c), 7);
	/* The queue is full: fail fast, no callback. */
	{
		result extra = { 0 };

		assert_int_equal(ping(&e, "q", 0, &extra, NULL), RPC_EUNAVAILABLE);
		run_for(&e, 10);
		assert_int_equal(extra.calls, 0);
	}
	RUN_UNTIL(&e, (done = total_calls(r, 10)) == 10, 10000);
	assert_true(atomic_load(&f.max_pending) <= 3);
	for (int i = 0; i < 10; i++)
		assert_int_equal(r[i].err, 0);
	env_close(&e);
	fake_stop(&f);
}

/* A PING that may wait long at the server (as a login's UNLOCK). */
static int ping_may_wait(env *e, const char *echo, result *r)
{
	rpc_client_opts o;
	eng_buf p = ENG_BUF_INIT;
	int rc;

	memset(&o, 0, sizeof(o));
	o.may_wait = true;
	rpc_put_str(&p, RPC_T_ECHO, echo);
	rc = rpc_client_call_ex(e->c, RPC_OP_PING, p.data, p.len, &o, on_result,
				r, NULL);
	eng_buf_free(&p);
	return rc;
}

/*
 * may_wait requests hold at most half of the in-flight slots: the others
 * are sent past the ones queued, and the held ones go, in order, as slots
 * free up.
 */
static void test_may_wait_half_of_in_flight(void **state)
{
	fake f;
	env e;
	rpc_client_config cfg;
	result w[4], n[2];

	(void)state;
	memset(w, 0, sizeof(w));
	memset(n, 0, sizeof(n));
	memset(&cfg, 0, sizeof(cfg));
	cfg.max_in_flight = 4;
	fake_init(&f, secret_a);
	f.ping_batch = 3;            /* answered when three wait at the server */
	fake_start(&f);
	env_open(&e, &f, secret_a, &cfg);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	for (int i = 0; i < 4; i++)
		assert_int_equal(ping_may_wait(&e, "login", &w[i]), 0);
	/* Two sent (half of 4), two held. */
	assert_int_equal(rpc_client_in_flight(e.c), 2);
	assert_int_equal(rpc_client_queued(e.c), 2);
	/* An ordinary request is sent past the held ones: the server then
	 * has three and answers them. */
	assert_int_equal(ping(&e, "other", 0, &n[0], NULL), 0);
	assert_int_equal(rpc_client_queued(e.c), 2);
	RUN_UNTIL(&e, n[0].calls == 1 && w[0].calls == 1 && w[1].calls == 1, 5000);
	assert_int_equal(n[0].err, 0);
	/* The two held ones went next; one more ordinary request and the
	 * server answers those three too. */
	RUN_UNTIL(&e, rpc_client_queued(e.c) == 0, 5000);
	assert_int_equal(w[2].calls + w[3].calls, 0);
	assert_int_equal(ping(&e, "other", 0, &n[1], NULL), 0);
	RUN_UNTIL(&e, total_calls(w, 4) == 4 && n[1].calls == 1, 5000);
	for (int i = 0; i < 4; i++)
		assert_int_equal(w[i].err, 0);
	assert_true(atomic_load(&f.max_pending) <= 3);
	assert_int_equal(rpc_client_in_flight(e.c), 0);
	env_close(&e);
	fake_stop(&f);
}

static void test_timeout(void **state)
{
	fake f;
	env e;
	result r = { 0 }, r2 = { 0 };

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	assert_int_equal(ping(&e, "noreply", 150, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 3000);
	assert_int_equal(r.err, RPC_ETIMEOUT);
	/* CANCEL went out; the server's late ECANCELLED is dropped. */
	RUN_UNTIL(&e, rpc_client_in_flight(e.c) == 0, 3000);
	assert_int_equal(atomic_load(&f.cancels), 1);
	run_for(&e, 100);
	assert_int_equal(r.calls, 1);
	/* The connection is still good. */
	assert_int_equal(ping(&e, "after", 0, &r2, NULL), 0);
	RUN_UNTIL(&e, r2.calls == 1, 3000);
	assert_int_equal(r2.err, 0);
	assert_int_equal(e.downs, 0);
	env_close(&e);
	fake_stop(&f);
}

static void test_cancel(void **state)
{
	fake f;
	env e;
	result r = { 0 }, r2 = { 0 };
	uint32_t id = 0;

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	assert_int_equal(ping(&e, "noreply", 0, &r, &id), 0);
	assert_true(id != 0);
	run_for(&e, 30);
	assert_int_equal(r.calls, 0);
	assert_int_equal(rpc_client_cancel(e.c, id), 0);
	/* The callback fired before cancel returned, exactly once. */
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, RPC_ECANCELLED);
	assert_int_equal(rpc_client_cancel(e.c, id), ENG_ENOTFOUND);
	RUN_UNTIL(&e, rpc_client_in_flight(e.c) == 0, 3000);
	assert_int_equal(atomic_load(&f.cancels), 1);
	assert_int_equal(r.calls, 1);
	/* A queued request (not yet sent) cancels locally. */
	rpc_client_close(e.c, on_closed, &e);
	e.c = NULL;
	RUN_UNTIL(&e, e.closed, 5000);
	uv_close((uv_handle_t *)&e.watchdog, watchdog_closed);
	uv_run(&e.loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&e.loop), 0);

	env_open(&e, &f, secret_a, NULL);
	assert_int_equal(ping(&e, "q", 0, &r2, &id), 0);
	assert_int_equal(rpc_client_cancel(e.c, id), 0);
	assert_int_equal(r2.calls, 1);
	assert_int_equal(r2.err, RPC_ECANCELLED);
	env_close(&e);
	fake_stop(&f);
}

static void test_drop_and_reconnect(void **state)
{
	fake f;
	env e;
	result r[5], rd = { 0 }, after = { 0 };

	(void)state;
	memset(r, 0, sizeof(r));
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	for (int i = 0; i < 5; i++)
		assert_int_equal(ping(&e, "noreply", 0, &r[i], NULL), 0);
	assert_int_equal(ping(&e, "drop", 0, &rd, NULL), 0);
	RUN_UNTIL(&e, rd.calls == 1, 5000);
	/* Every request in flight is told, none is lost. */
	assert_int_equal(rd.err, RPC_EUNAVAILABLE);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(r[i].calls, 1);
		assert_int_equal(r[i].err, RPC_EUNAVAILABLE);
	}
	assert_int_equal(e.downs, 1);
	assert_int_equal(e.last_down_err, RPC_EUNAVAILABLE);
	/* Reconnects by itself; calls work again. */
	RUN_UNTIL(&e, e.ups == 2, 5000);
	assert_int_equal(atomic_load(&f.conns), 2);
	assert_int_equal(ping(&e, "again", 0, &after, NULL), 0);
	RUN_UNTIL(&e, after.calls == 1, 5000);
	assert_int_equal(after.err, 0);
	assert_memory_equal(after.echo, "again", 5);
	env_close(&e);
	fake_stop(&f);
}

static void test_queue_while_down(void **state)
{
	fake f;
	env e;
	result r = { 0 }, late = { 0 };

	(void)state;
	fake_init(&f, secret_a);
	/* No server yet: connects fail, the client backs off and retries. */
	env_open(&e, &f, secret_a, NULL);
	assert_int_equal(ping(&e, "waited", 5000, &r, NULL), 0);
	assert_int_equal(ping(&e, "late", 100, &late, NULL), 0);
	run_for(&e, 300);
	assert_true(e.downs >= 2);
	assert_int_equal(r.calls, 0);
	/* The short one timed out in the queue. */
	assert_int_equal(late.calls, 1);
	assert_int_equal(late.err, RPC_ETIMEOUT);
	fake_start(&f);
	RUN_UNTIL(&e, r.calls == 1, 5000);
	assert_int_equal(r.err, 0);
	assert_memory_equal(r.echo, "waited", 6);
	env_close(&e);
	fake_stop(&f);
}

static void test_config_checks(void **state)
{
	uv_loop_t loop;
	rpc_client_config cfg;
	rpc_client *c = NULL;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	memset(&cfg, 0, sizeof(cfg));
	cfg.secret = secret_a;
	cfg.peer_name = "test@client";
	/* No target, two targets, a bad peer name. */
	assert_int_equal(rpc_client_new(&loop, &cfg, &c), ENG_EINVAL);
	cfg.unix_path = "/tmp/x";
	cfg.host = "127.0.0.1";
	assert_int_equal(rpc_client_new(&loop, &cfg, &c), ENG_EINVAL);
	cfg.host = NULL;
	cfg.peer_name = "has space";
	assert_int_equal(rpc_client_new(&loop, &cfg, &c), ENG_EINVAL);
	cfg.peer_name = "test@client";
	/* Plain TCP to a non-loopback address: AUTH in the clear, refused. */
	cfg.unix_path = NULL;
	cfg.host = "192.0.2.1";
	cfg.port = 3456;
	assert_int_equal(rpc_client_new(&loop, &cfg, &c), ENG_EPERM);
	cfg.host = "example.org";
	assert_int_equal(rpc_client_new(&loop, &cfg, &c), ENG_EINVAL);
	assert_null(c);
	assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_checks),
		cmocka_unit_test(test_handshake_ok),
		cmocka_unit_test(test_wrong_secret),
		cmocka_unit_test(test_bad_server_proof),
		cmocka_unit_test(test_pipelined_out_of_order),
		cmocka_unit_test(test_in_flight_limit),
		cmocka_unit_test(test_may_wait_half_of_in_flight),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_drop_and_reconnect),
		cmocka_unit_test(test_queue_while_down),
	};

	if (eng_crypto_init() != 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
