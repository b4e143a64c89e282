/*
 * frontends/common/net*.c over real loopback sockets (the fixture and its
 * line protocol: testnet.h), limits: the per-IP connection limit (with
 * and without a limit_reply, which implicit TLS never sends) and the idle
 * timeout.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testnet.h"

/* ---- per-IP limit, idle timeout ---- */

/*
 * Two connections admitted, the third refused (closed without a
 * greeting), then the two end with QUIT. No idle timeout here: however
 * late the third one arrives, the first two are still open (with a short
 * idle timeout, a client descheduled for longer than it saw them closed
 * and the third admitted).
 */
static void client_limits(fixture *f)
{
	char buf[256];
	int a = tn_tcp_connect(f->port), b = tn_tcp_connect(f->port), c;

	CHECK(a >= 0 && b >= 0);
	CHECK(tn_plain_line(a, buf, sizeof(buf)) > 0);
	CHECK(tn_plain_line(b, buf, sizeof(buf)) > 0);
	c = tn_tcp_connect(f->port);
	CHECK(c >= 0);
	CHECK(tn_rd(c, buf, 1) <= 0);     /* refused: closed without a greeting */
	close(c);
	for (int i = 0; i < 2; i++) {
		int fd = i == 0 ? a : b;

		CHECK(tn_wr(fd, "QUIT\r\n", 6) == 6);
		CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
		CHECK(tn_rd(fd, buf, 1) == 0);
		close(fd);
	}
	f->client_ok = true;
}

static void test_limits(void **state)
{
	fixture *f = *state;
	sm_net_listener_config lc;

	memset(&lc, 0, sizeof(lc));
	lc.max_conns_per_ip = 2;
	run(f, false, &lc, client_limits);
	assert_true(f->client_ok);
	assert_int_equal(f->accepted, 2);   /* the refused one never reached on_accept */
}

/* The idle timeout (300 ms) closes both connections of a silent client. */
static void client_idle(fixture *f)
{
	char buf[256];
	int a = tn_tcp_connect(f->port), b = tn_tcp_connect(f->port);

	CHECK(a >= 0 && b >= 0);
	CHECK(tn_plain_line(a, buf, sizeof(buf)) > 0);
	CHECK(tn_plain_line(b, buf, sizeof(buf)) > 0);
	CHECK(tn_rd(a, buf, 1) == 0);
	CHECK(tn_rd(b, buf, 1) == 0);
	close(a);
	close(b);
	f->client_ok = true;
}

static void test_idle_timeout(void **state)
{
	fixture *f = *state;
	sm_net_listener_config lc;

	memset(&lc, 0, sizeof(lc));
	lc.idle_timeout_ms = 300;
	run(f, false, &lc, client_idle);
	assert_true(f->client_ok);
	assert_int_equal(f->close_idle, 2);
}

/* ---- limit_reply: a refused plaintext client is told why ---- */

#define LIMIT_REPLY "421 4.7.0 Too many connections from your address\r\n"

/* Reads until EOF (at most cap - 1 bytes); the count, or -1 on error. */
static int read_to_eof(int fd, char *buf, size_t cap)
{
	size_t n = 0;
	ssize_t r;

	while (n + 1 < cap && (r = tn_rd(fd, buf + n, cap - 1 - n)) > 0)
		n += (size_t)r;
	buf[n] = '\0';
	return r < 0 ? -1 : (int)n;
}

static void client_limit_reply(fixture *f)
{
	char buf[256];
	int a = tn_tcp_connect(f->port), b;

	CHECK(a >= 0);
	CHECK(tn_plain_line(a, buf, sizeof(buf)) > 0 && strcmp(buf, "HI\r\n") == 0);
	b = tn_tcp_connect(f->port);
	CHECK(b >= 0);
	/* Exactly the reply, then EOF: no greeting, nothing else. */
	CHECK(read_to_eof(b, buf, sizeof(buf)) == (int)strlen(LIMIT_REPLY));
	CHECK(strcmp(buf, LIMIT_REPLY) == 0);
	close(b);
	/* The first connection is untouched. */
	tn_wr(a, "hello\r\n", 7);
	CHECK(tn_plain_line(a, buf, sizeof(buf)) > 0 && strcmp(buf, "ECHO hello\r\n") == 0);
	tn_wr(a, "QUIT\r\n", 6);
	CHECK(tn_plain_line(a, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
	close(a);
	f->client_ok = true;
}

static void test_limit_reply(void **state)
{
	fixture *f = *state;
	sm_net_listener_config lc;
	char reply[] = LIMIT_REPLY;

	memset(&lc, 0, sizeof(lc));
	lc.max_conns_per_ip = 1;
	lc.limit_reply = reply;
	run(f, false, &lc, client_limit_reply);
	assert_true(f->client_ok);
	assert_int_equal(f->accepted, 1);   /* the refused one never reached on_accept */
}

/* Implicit TLS: the refused client gets no handshake and no reply. */
static void client_limit_tls(fixture *f)
{
	char buf[256];
	SSL_CTX *ctx, *ctx2;
	int a = tn_tcp_connect(f->port), b;
	SSL *ssl, *ssl2;

	CHECK(a >= 0);
	ssl = tn_tls_client(&ctx, a);
	CHECK(ssl != NULL);
	CHECK(tn_tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "HI\r\n") == 0);
	b = tn_tcp_connect(f->port);
	CHECK(b >= 0);
	ssl2 = tn_tls_client(&ctx2, b);
	CHECK(ssl2 == NULL);
	ERR_clear_error();
	tn_ssl_wr(ssl, "QUIT\r\n", 6);
	CHECK(tn_tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(a);
	close(b);
	f->client_ok = true;
}

static void test_limit_reply_not_under_tls(void **state)
{
	fixture *f = *state;
	sm_net_listener_config lc;

	memset(&lc, 0, sizeof(lc));
	lc.max_conns_per_ip = 1;
	lc.limit_reply = LIMIT_REPLY;
	run(f, true, &lc, client_limit_tls);
	assert_true(f->client_ok);
	assert_int_equal(f->accepted, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_limits, tn_setup, tn_teardown),
		cmocka_unit_test_setup_teardown(test_idle_timeout, tn_setup, tn_teardown),
		cmocka_unit_test_setup_teardown(test_limit_reply, tn_setup, tn_teardown),
		cmocka_unit_test_setup_teardown(test_limit_reply_not_under_tls, tn_setup, tn_teardown),
	};

	tn_signals();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
