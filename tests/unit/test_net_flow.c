/*
 * frontends/common/net*.c over real loopback sockets (the fixture and its
 * line protocol: testnet.h), flow: held input re-offered after
 * sm_net_resume on several connections at once, and backpressure on a
 * client that does not read (plain and TLS, written by sm_net_write and by
 * sm_net_write_direct).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testnet.h"

/* ---- held input, re-offered after sm_net_resume ---- */

static void client_hold(fixture *f)
{
	SSL_CTX *ctx[3];
	SSL *ssl[3];
	int fd[3];
	const char req[] = "HOLD\r\nhello\r\nHOLD\r\nHOLD\r\nmore\r\nQUIT\r\n";

	for (int i = 0; i < 3; i++) {
		fd[i] = tn_tcp_connect(f->port);
		CHECK(fd[i] >= 0);
		ssl[i] = tn_tls_client(&ctx[i], fd[i]);
		CHECK(ssl[i] != NULL);
		CHECK(tn_tls_ask(ssl[i], NULL, "HI\r\n"));
	}
	/* All three held at once: each resume is a kick of its own. */
	for (int i = 0; i < 3; i++)
		CHECK(tn_ssl_wr(ssl[i], req, (int)sizeof(req) - 1) == (int)sizeof(req) - 1);
	for (int i = 0; i < 3; i++) {
		CHECK(tn_tls_ask(ssl[i], NULL, "ECHO hello tls\r\n"));
		CHECK(tn_tls_ask(ssl[i], NULL, "ECHO more tls\r\n"));
		CHECK(tn_tls_ask(ssl[i], NULL, "BYE\r\n"));
		SSL_free(ssl[i]);
		SSL_CTX_free(ctx[i]);
		close(fd[i]);
	}
	f->client_ok = true;
}

static void test_hold_resume(void **state)
{
	fixture *f = *state;

	run(f, true, NULL, client_hold);
	assert_true(f->client_ok);
	assert_int_equal(f->lines_hello, 3);
}

/* ---- backpressure ---- */

/*
 * A client that does not read, then reads slowly (4 KiB at a time), with
 * small kernel buffers at both ends (its receive buffer and, inherited
 * from the listener, the server's send buffer: 16 KiB each, doubled by
 * Linux), so that the BIG answer (BP_BYTES) is far larger than what the
 * sockets hold: the server must stop, and be woken up again each time the
 * socket drains (on_write, on_drained) until the END line.
 *
 * Before it reads anything, the client waits for the server to say it is
 * blocked (blocked_sem) and then takes what the server produced so far:
 * at that point every produced byte is either in net's queue (at most
 * MAX_OUT plus one chunk, and over TLS the records' overhead) or in the
 * two kernel buffers, whatever the scheduling. A server without
 * backpressure would have produced the whole answer at once.
 */
#define BP_BYTES (2u * 1024 * 1024)
#define BP_SOCKBUF 16384
#define BP_PRODUCED_MAX (512u * 1024)

/* Waits (bounded by CLIENT_WAIT_S: a guard, not a timing) for the server
 * to block (or to end the answer); what it produced by then, or
 * SIZE_MAX. */
static size_t bp_wait_blocked(fixture *f)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += CLIENT_WAIT_S;
	while (sem_timedwait(&f->blocked_sem, &until) != 0)
		if (errno != EINTR)
			return SIZE_MAX;
	return f->produced;
}

/* Reads n bytes of 'x' (f->direct: tn_bp_byte's) in 4 KiB reads, over
 * plain (ssl NULL) or TLS. */
static bool bp_read_all(int fd, SSL *ssl, size_t n)
{
	char buf[4096];
	size_t got = 0;

	while (got < n) {
		size_t want = n - got < sizeof(buf) ? n - got : sizeof(buf);
		ssize_t r = ssl != NULL ? tn_ssl_rd(ssl, buf, (int)want) :
					  tn_rd(fd, buf, want);

		if (r <= 0)
			return false;
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != (tn_g_f->direct ? tn_bp_byte(got + (size_t)i) : 'x'))
				return false;
		got += (size_t)r;
	}
	return true;
}

/* After BIG: the server blocks with a bounded part of the answer
 * produced (nothing read yet), then the whole answer arrives. */
static bool bp_receive(fixture *f, int fd, SSL *ssl)
{
	size_t produced = bp_wait_blocked(f);

	if (produced == SIZE_MAX || produced > BP_PRODUCED_MAX) {
		fprintf(stderr, "produced before the client read: %zu\n", produced);
		return false;
	}
	return bp_read_all(fd, ssl, BP_BYTES);
}

static void client_backpressure(fixture *f)
{
	char buf[256];
	int fd = tn_tcp_connect_rcvbuf(f->port, BP_SOCKBUF);

	CHECK(fd >= 0);
	CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0);
	snprintf(buf, sizeof(buf), "BIG %u\r\n", BP_BYTES);
	CHECK(tn_wr(fd, buf, strlen(buf)) == (ssize_t)strlen(buf));
	CHECK(bp_receive(f, fd, NULL));
	CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "\r\n") == 0);
	CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "END\r\n") == 0);
	CHECK(tn_wr(fd, "QUIT\r\n", 6) == 6);
	CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
	CHECK(tn_rd(fd, buf, 1) == 0);
	close(fd);
	f->client_ok = true;
}

static void client_backpressure_tls(fixture *f)
{
	char buf[256];
	SSL_CTX *ctx;
	int fd = tn_tcp_connect_rcvbuf(f->port, BP_SOCKBUF);
	SSL *ssl;

	CHECK(fd >= 0);
	ssl = tn_tls_client(&ctx, fd);
	CHECK(ssl != NULL);
	CHECK(tn_tls_ask(ssl, NULL, "HI\r\n"));
	snprintf(buf, sizeof(buf), "BIG %u\r\n", BP_BYTES);
	CHECK(tn_ssl_wr(ssl, buf, (int)strlen(buf)) == (int)strlen(buf));
	CHECK(bp_receive(f, fd, ssl));
	CHECK(tn_tls_ask(ssl, NULL, "\r\n"));
	CHECK(tn_tls_ask(ssl, NULL, "END\r\n"));
	CHECK(tn_tls_ask(ssl, "QUIT\r\n", "BYE\r\n"));
	CHECK(tn_ssl_rd(ssl, buf, 1) == 0 && SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	f->client_ok = true;
}

/* What the server did for a backpressure client (plain or TLS). */
static void bp_test(fixture *f, bool tls)
{
	f->listen_sndbuf = BP_SOCKBUF;
	if (tls)
		run(f, true, NULL, client_backpressure_tls);
	else
		run(f, false, NULL, client_backpressure);
	assert_true(f->client_ok);
	assert_int_equal(f->produced, BP_BYTES);
	/* Woken up again many times: the sockets hold a small part of it. */
	assert_true(f->blocked_seen > 1);
	assert_true(f->drained > 1);
	/* Never more than the bound plus one chunk queued; under TLS also
	 * the records' headers and tags (at most 29 bytes per 16 KiB
	 * record under TLS 1.2, 22 under 1.3). */
	assert_true(f->max_queued <= MAX_OUT + 16384 + (tls ? 6 * 32 : 0));
}

static void test_backpressure(void **state)
{
	bp_test(*state, false);
}

static void test_backpressure_tls(void **state)
{
	bp_test(*state, true);
}

/* The same with sm_net_write_direct (partial writes of the batch and the
 * bytes, writes while libuv has some queued; TLS: sm_net_write's path). */
static void test_backpressure_direct(void **state)
{
	fixture *f = *state;

	f->direct = true;
	bp_test(f, false);
}

static void test_backpressure_direct_tls(void **state)
{
	fixture *f = *state;

	f->direct = true;
	bp_test(f, true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_hold_resume, tn_setup, tn_teardown),
		cmocka_unit_test_setup_teardown(test_backpressure, tn_setup, tn_teardown),
		cmocka_unit_test_setup_teardown(test_backpressure_tls, tn_setup, tn_teardown),
		cmocka_unit_test_setup_teardown(test_backpressure_direct, tn_setup, tn_teardown),
		cmocka_unit_test_setup_teardown(test_backpressure_direct_tls, tn_setup, tn_teardown),
	};

	tn_signals();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
