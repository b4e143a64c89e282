/*
 * frontends/common/net*.c over real loopback sockets (the fixture and its
 * line protocol: testnet.h), TLS: implicit TLS with a clean close
 * (close_notify), a STARTTLS upgrade whose pipelined plaintext is
 * discarded, an idle connection holding no buffer (TLS, after STARTTLS,
 * after big answers) and a certificate reload.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testnet.h"
#include "testutil.h"
#include "tls_selfsigned.h"

/* ---- implicit TLS, echo, clean close with close_notify ---- */

static void client_implicit(fixture *f)
{
	char buf[256];
	SSL_CTX *ctx;
	int fd = tn_tcp_connect(f->port);
	SSL *ssl;

	CHECK(fd >= 0);
	ssl = tn_tls_client(&ctx, fd);
	CHECK(ssl != NULL);
	CHECK(SSL_version(ssl) >= TLS1_2_VERSION);
	CHECK(tn_tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "HI\r\n") == 0);
	tn_ssl_wr(ssl, "hello\r\n", 7);
	CHECK(tn_tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "ECHO hello tls\r\n") == 0);
	tn_ssl_wr(ssl, "QUIT\r\n", 6);
	CHECK(tn_tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
	/* The server ends with close_notify, not a bare FIN. */
	CHECK(tn_ssl_rd(ssl, buf, 1) == 0 && SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	f->client_ok = true;
}

static void test_implicit_tls(void **state)
{
	fixture *f = *state;

	run(f, true, NULL, client_implicit);
	assert_true(f->client_ok);
	assert_int_equal(f->lines_hello, 1);
}

/* ---- STARTTLS: what was pipelined after it is discarded ---- */

static void client_starttls(fixture *f)
{
	char buf[256];
	SSL_CTX *ctx;
	int fd = tn_tcp_connect(f->port);
	SSL *ssl;
	const char inject[] = "STARTTLS\r\nEVIL\r\nEVIL\r\n";

	CHECK(fd >= 0);
	CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "HI\r\n") == 0);
	tn_wr(fd, "hello\r\n", 7);
	CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "ECHO hello\r\n") == 0);
	/* One segment: the command and the injected lines together. */
	CHECK(tn_wr(fd, inject, sizeof(inject) - 1) == (ssize_t)(sizeof(inject) - 1));
	CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "OK\r\n") == 0);
	ssl = tn_tls_client(&ctx, fd);
	CHECK(ssl != NULL);
	tn_ssl_wr(ssl, "hello\r\n", 7);
	CHECK(tn_tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "ECHO hello tls\r\n") == 0);
	tn_ssl_wr(ssl, "QUIT\r\n", 6);
	CHECK(tn_tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	f->client_ok = true;
}

static void test_starttls_discards_pipelined(void **state)
{
	fixture *f = *state;

	run(f, false, NULL, client_starttls);
	assert_true(f->client_ok);
	assert_int_equal(f->lines_evil, 0);
	assert_int_equal(f->lines_hello, 2);
}

/* ---- an idle connection holds no buffer ---- */


/* QUIT, BYE, and the client's side freed. */
static bool tls_quit(SSL *ssl, SSL_CTX *ctx, int fd)
{
	bool ok = tn_tls_ask(ssl, "QUIT\r\n", "BYE\r\n");

	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	return ok;
}

/* BIG n under TLS: n bytes of 'x', then "\r\n" and "END\r\n". */
static bool tls_big(SSL *ssl, size_t n)
{
	static char chunk[16384];
	char cmd[64], buf[64];
	size_t got = 0;
	int m = snprintf(cmd, sizeof(cmd), "BIG %zu\r\n", n);

	if (tn_ssl_wr(ssl, cmd, m) != m)
		return false;
	while (got < n) {
		int r = tn_ssl_rd(ssl, chunk, (int)(n - got < sizeof(chunk) ?
						   n - got : sizeof(chunk)));

		if (r <= 0)
			return false;
		for (int i = 0; i < r; i++)
			if (chunk[i] != 'x')
				return false;
		got += (size_t)r;
	}
	return tn_tls_line(ssl, buf, sizeof(buf)) == 2 && tn_tls_line(ssl, buf, sizeof(buf)) > 0 &&
	       strcmp(buf, "END\r\n") == 0;
}

/* 50 lines one by one, then 50 in one write: each echoed in order. */
static bool tls_echoes(SSL *ssl)
{
	char all[2048], buf[256], want[64];
	size_t len = 0;

	for (int i = 0; i < 50; i++) {
		int m = snprintf(want, sizeof(want), "line %d\r\n", i);

		if (tn_ssl_wr(ssl, want, m) != m || tn_tls_line(ssl, buf, sizeof(buf)) <= 0)
			return false;
		snprintf(want, sizeof(want), "ECHO line %d tls\r\n", i);
		if (strcmp(buf, want) != 0)
			return false;
	}
	for (int i = 0; i < 50; i++)
		len += (size_t)snprintf(all + len, sizeof(all) - len, "p%d\r\n", i);
	if (tn_ssl_wr(ssl, all, (int)len) != (int)len)
		return false;
	for (int i = 0; i < 50; i++) {
		snprintf(want, sizeof(want), "ECHO p%d tls\r\n", i);
		if (tn_tls_line(ssl, buf, sizeof(buf)) <= 0 || strcmp(buf, want) != 0)
			return false;
	}
	return true;
}

static void client_idle_tls(fixture *f)
{
	char buf[256];
	SSL_CTX *ctx;
	int fd = tn_tcp_connect(f->port);
	SSL *ssl;

	CHECK(fd >= 0);
	ssl = tn_tls_client(&ctx, fd);
	CHECK(ssl != NULL);
	CHECK(tn_tls_ask(ssl, NULL, "HI\r\n"));
	/* Right after the handshake and the greeting: nothing kept. */
	CHECK(tn_tls_ask(ssl, "MEMLATER\r\n", "MEM 0\r\n"));
	/* After a big answer (records of several SSL_writes) and echoes. */
	CHECK(tls_big(ssl, 300000));
	CHECK(tls_echoes(ssl));
	CHECK(tn_tls_ask(ssl, "MEMLATER\r\n", "MEM 0\r\n"));
	/* Idle, then used again: small and big. */
	usleep(200 * 1000);
	CHECK(tls_echoes(ssl));
	CHECK(tls_big(ssl, 1000000));
	CHECK(tn_tls_ask(ssl, "MEMLATER\r\n", "MEM 0\r\n"));
	CHECK(tn_tls_ask(ssl, "QUIT\r\n", "BYE\r\n"));
	CHECK(tn_ssl_rd(ssl, buf, 1) == 0 && SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	f->client_ok = true;
}

static void test_idle_tls_holds_nothing(void **state)
{
	fixture *f = *state;

	run(f, true, NULL, client_idle_tls);
	assert_true(f->client_ok);
}

static void client_idle_starttls(fixture *f)
{
	char buf[256];
	SSL_CTX *ctx;
	int fd = tn_tcp_connect(f->port);
	SSL *ssl;

	CHECK(fd >= 0);
	CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "HI\r\n") == 0);
	CHECK(tn_wr(fd, "hello\r\nMEMLATER\r\n", 17) == 17);
	CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "ECHO hello\r\n") == 0);
	CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "MEM 0\r\n") == 0);
	CHECK(tn_wr(fd, "STARTTLS\r\n", 10) == 10);
	CHECK(tn_plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "OK\r\n") == 0);
	ssl = tn_tls_client(&ctx, fd);
	CHECK(ssl != NULL);
	CHECK(tls_echoes(ssl));
	CHECK(tn_tls_ask(ssl, "MEMLATER\r\n", "MEM 0\r\n"));
	CHECK(tls_big(ssl, 200000));
	CHECK(tls_quit(ssl, ctx, fd));
	f->client_ok = true;
}

static void test_idle_starttls_holds_nothing(void **state)
{
	fixture *f = *state;

	run(f, false, NULL, client_idle_starttls);
	assert_true(f->client_ok);
}

/* ---- reload: a new certificate for new connections ---- */

static void client_two_tls(fixture *f)
{
	char buf[256];

	for (int i = 0; i < 2; i++) {
		SSL_CTX *ctx;
		int fd = tn_tcp_connect(f->port);
		SSL *ssl;

		CHECK(fd >= 0);
		ssl = tn_tls_client(&ctx, fd);
		CHECK(ssl != NULL);
		CHECK(tn_tls_line(ssl, buf, sizeof(buf)) > 0);
		tn_ssl_wr(ssl, "QUIT\r\n", 6);
		CHECK(tn_tls_line(ssl, buf, sizeof(buf)) > 0);
		SSL_free(ssl);
		SSL_CTX_free(ctx);
		close(fd);
	}
	f->client_ok = true;
}

static void test_reload(void **state)
{
	fixture *f = *state;
	char *err = NULL;
	bool created;

	unlink(f->cert);
	unlink(f->key);
	assert_int_equal(sm_tls_selfsigned_ensure(f->cert, f->key, "other.example",
						  &created, &err), 0);
	assert_int_equal(sm_net_tls_reload(f->tls, &err), 0);
	run(f, true, NULL, client_two_tls);
	assert_true(f->client_ok);
	/* A broken file keeps the old context. */
	assert_int_equal(tu_write_file(f->key, "junk", 4), 0);
	assert_int_not_equal(sm_net_tls_reload(f->tls, &err), 0);
	assert_non_null(err);
	free(err);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_implicit_tls, tn_setup, tn_teardown),
		cmocka_unit_test_setup_teardown(test_starttls_discards_pipelined, tn_setup, tn_teardown),
		cmocka_unit_test_setup_teardown(test_idle_tls_holds_nothing, tn_setup, tn_teardown),
		cmocka_unit_test_setup_teardown(test_idle_starttls_holds_nothing, tn_setup, tn_teardown),
		cmocka_unit_test_setup_teardown(test_reload, tn_setup, tn_teardown),
	};

	tn_signals();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
