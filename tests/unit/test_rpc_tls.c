/*
 * TLS between sqlited and its clients (docs/rpc.md, Transport): the real
 * network core (srv_net) runs in-process on its own loop thread with
 * sqlited_tls = always on 127.0.0.1 and `sealmail init`'s kind of
 * self-signed certificate; both clients talk to it through TLS:
 *  - rpc_sync and rpc_client: handshake, PING, a 5 MB upload (DELIVER,
 *    hashed by the test handler) and a 5 MB download (DIR_LOOKUP streams a
 *    pattern under WINDOW credit);
 *  - a client that trusts another certificate, or expects another name,
 *    is refused (RPC_ENOTAUTH) before it sends AUTH;
 *  - a plaintext client against the TLS port fails cleanly;
 *  - the server refuses TLS 1.1 and non-AEAD TLS 1.2 suites (raw OpenSSL
 *    clients, with the client's own security level lowered so that the
 *    refusal is the server's).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "eng_error.h"
#include "keys.h"
#include "rpc_client.h"
#include "rpc_sync.h"
#include "rpc_tls.h"
#include "srv.h"
#include "srv_net.h"
#include "testrpc.h"
#include "testutil.h"
#include "tls_selfsigned.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

srv_handler_fn srv_op_ping;

#define PEER "test@localhost"
#define BIG_BYTES (5u * 1024 * 1024 + 12345)

static char *tmp;
static char cert_a[512], key_a[512], cert_b[512], key_b[512];
static uint16_t port;
static uint8_t secret[32];
static sm_config *cfg;
static srv S;
static uv_loop_t loop;
static uv_thread_t loop_thread;
static uv_async_t stop_async;

/* ---- test handlers (server loop thread) ---- */

static void op_body(srv_req *req)
{
	uint8_t hash[32], buf[65536];
	crypto_generichash_state st;
	srv_body_reader *r = NULL;
	uint64_t total = 0;
	long n;

	if (req->body == NULL || srv_body_open(req->body, &r) != 0) {
		srv_fail(req, ENG_EINVAL);
		return;
	}
	crypto_generichash_init(&st, NULL, 0, sizeof(hash));
	while ((n = srv_body_read(r, buf, sizeof(buf))) > 0) {
		crypto_generichash_update(&st, buf, (size_t)n);
		total += (uint64_t)n;
	}
	srv_body_reader_free(&r);
	if (n < 0) {
		srv_fail(req, (int)n);
		return;
	}
	crypto_generichash_final(&st, hash, sizeof(hash));
	rpc_put_u64(&req->reply, RPC_T_SIZE, total);
	rpc_put_bytes(&req->reply, RPC_T_ECHO, hash, sizeof(hash));
	srv_reply(req);
}

typedef struct dl {
	uint64_t total, sent;
} dl;

static uint8_t pattern(uint64_t i)
{
	return (uint8_t)((i * 7) ^ (i >> 11));
}

static void dl_pump(srv_req *req)
{
	dl *d = req->data;
	uint8_t buf[100000];

	if (req->cancelled) {
		free(d);
		srv_fail(req, RPC_ECANCELLED);
		return;
	}
	for (;;) {
		size_t w = srv_window(req), n;

		if (w == 0 && d->sent < d->total) {
			req->on_window = dl_pump;
			return;
		}
		n = sizeof(buf);
		if (n > w)
			n = w;
		if (n > d->total - d->sent)
			n = (size_t)(d->total - d->sent);
		for (size_t i = 0; i < n; i++)
			buf[i] = pattern(d->sent + i);
		d->sent += n;
		if (d->sent == d->total) {
			free(d);
			srv_send_data(req, buf, n, true);
			return;
		}
		srv_send_data(req, buf, n, false);
	}
}

static void op_download(srv_req *req)
{
	dl *d = calloc(1, sizeof(*d));

	if (rpc_get_u64(&req->args, RPC_T_LENGTH, &d->total) != 0) {
		free(d);
		srv_fail(req, RPC_EMISSING);
		return;
	}
	req->data = d;
	rpc_put_u64(&req->reply, RPC_T_SIZE, d->total);
	srv_reply_body(req);
	dl_pump(req);
}

static srv_handler_fn *test_handler_for(uint16_t opcode)
{
	switch (opcode) {
	case RPC_OP_PING: return srv_op_ping;
	case RPC_OP_DELIVER: return op_body;
	case RPC_OP_DIR_LOOKUP: return op_download;
	default: return NULL;
	}
}

/* ---- the server ---- */

static void on_stopped(void *ctx)
{
	(void)ctx;
	uv_close((uv_handle_t *)&stop_async, NULL);
}

static void on_stop_async(uv_async_t *a)
{
	(void)a;
	srv_net_stop(&S, on_stopped, NULL);
}

static void run_loop(void *arg)
{
	(void)arg;
	uv_run(&loop, UV_RUN_DEFAULT);
}

static void make_cert(const char *name, char *cert, char *key, size_t cap)
{
	char *err = NULL;
	bool created = false;

	snprintf(cert, cap, "%s/%s-cert.pem", tmp, name);
	snprintf(key, cap, "%s/%s-key.pem", tmp, name);
	if (sm_tls_selfsigned_ensure(cert, key, "localhost", &created, &err) != 0)
		fail_msg("certificate: %s", err != NULL ? err : "?");
	assert_true(created);
}

static int setup(void **state)
{
	char text[2048];
	srv_net_options opt;
	char *err = NULL;

	(void)state;
	signal(SIGPIPE, SIG_IGN);
	assert_int_equal(eng_crypto_init(), 0);
	tmp = tu_tmpdir();
	make_cert("a", cert_a, key_a, sizeof(cert_a));
	make_cert("b", cert_b, key_b, sizeof(cert_b));
	snprintf(text, sizeof(text),
		 "data_dir = %s\nlisten_address = 127.0.0.1\nsqlited_port = 0\n"
		 "sqlited_socket =\nmax_message_bytes = 8388608\n"
		 "tls_cert = %s\ntls_key = %s\nsqlited_tls = always\n",
		 tmp, cert_a, key_a);
	assert_int_equal(sm_config_parse(text, strlen(text), "test.conf", &cfg, &err), 0);
	assert_true(cfg->sqlited_tls_always);
	assert_string_equal(cfg->sqlited_ca, cert_a);   /* defaults to tls_cert */
	randombytes_buf(secret, sizeof(secret));
	memset(&S, 0, sizeof(S));
	assert_int_equal(uv_loop_init(&loop), 0);
	S.loop = &loop;
	S.cfg = cfg;
	S.rpc_secret = eng_secret_new(32);
	memcpy(S.rpc_secret, secret, 32);
	S.tmp_dir = malloc(strlen(tmp) + 8);
	sprintf(S.tmp_dir, "%s/tmp", tmp);
	srv_net_options_default(&opt);
	opt.tcp_ephemeral = true;
	opt.handshake_timeout_ms = 1000;
	opt.frame_timeout_ms = 2000;
	opt.auth_fail_delay_ms = 100;
	opt.drain_timeout_ms = 5000;
	opt.handler_for = test_handler_for;
	/* not opt.tls_always: sqlited_tls = always in the file turns it on */
	assert_int_equal(srv_net_start(&S, &opt), 0);
	port = srv_net_tcp_port(&S);
	assert_true(port != 0);
	assert_non_null(strstr(srv_net_listener(&S, 0), "TLS always"));
	uv_async_init(&loop, &stop_async, on_stop_async);
	assert_int_equal(uv_thread_create(&loop_thread, run_loop, NULL), 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	uv_async_send(&stop_async);
	uv_thread_join(&loop_thread);
	srv_net_free(&S);
	assert_int_equal(uv_loop_close(&loop), 0);
	eng_secret_free(&S.rpc_secret);
	free(S.tmp_dir);
	sm_config_free(&cfg);
	tu_rmrf(tmp);
	free(tmp);
	return 0;
}

/* ---- rpc_sync ---- */

static rpc_tls_config tls_a(void)
{
	rpc_tls_config t = { .ca_file = cert_a, .always = true };

	return t;
}

static uint8_t *big_body(void)
{
	uint8_t *b = malloc(BIG_BYTES);

	for (size_t i = 0; i < BIG_BYTES; i++)
		b[i] = (uint8_t)(i * 31 + (i >> 9));
	return b;
}

static void sync_ping(rpc_sync *c, const char *text)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf pl = ENG_BUF_INIT;
	const uint8_t *p;
	size_t len;

	rpc_put_str(&pl, RPC_T_ECHO, text);
	assert_int_equal(rpc_sync_call(c, RPC_OP_PING, pl.data, pl.len, &resp), 0);
	assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_ECHO, &p, &len), 0);
	assert_int_equal(len, strlen(text));
	assert_memory_equal(p, text, len);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&pl);
}

static void test_sync_tls(void **state)
{
	rpc_tls_config t = tls_a();
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	rpc_sync_call_opts o;
	eng_buf pl = ENG_BUF_INIT;
	uint8_t *body = big_body(), hash[32];
	const uint8_t *p;
	size_t len;
	uint64_t v;
	rpc_sync *c = NULL;

	(void)state;
	assert_int_equal(rpc_sync_connect_tls("127.0.0.1", port, &t, secret, PEER,
					      10000, &c), 0);
	assert_true(rpc_sync_tls(c));
	sync_ping(c, "through TLS");

	/* 5 MB up: the server hashes what it stored. */
	memset(&o, 0, sizeof(o));
	o.has_body = true;
	o.body = body;
	o.body_len = BIG_BYTES;
	assert_int_equal(rpc_sync_call_ex(c, RPC_OP_DELIVER, NULL, 0, &o, &resp), 0);
	assert_int_equal(rpc_get_u64(&resp.view, RPC_T_SIZE, &v), 0);
	assert_int_equal(v, BIG_BYTES);
	crypto_generichash(hash, sizeof(hash), body, BIG_BYTES, NULL, 0);
	assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_ECHO, &p, &len), 0);
	assert_int_equal(len, 32);
	assert_memory_equal(p, hash, 32);
	rpc_sync_resp_clear(&resp);

	/* 5 MB down. */
	rpc_put_u64(&pl, RPC_T_LENGTH, BIG_BYTES);
	assert_int_equal(rpc_sync_call(c, RPC_OP_DIR_LOOKUP, pl.data, pl.len, &resp), 0);
	assert_true(resp.has_body);
	assert_int_equal(resp.body.len, BIG_BYTES);
	for (size_t i = 0; i < BIG_BYTES; i++) {
		if ((uint8_t)resp.body.data[i] != pattern(i))
			fail_msg("download byte %zu differs", i);
	}
	rpc_sync_resp_clear(&resp);
	sync_ping(c, "still there");
	eng_buf_free(&pl);
	free(body);
	rpc_sync_free(&c);

	/* The host name in the certificate works as well as its IP. */
	t.server_name = "localhost";
	assert_int_equal(rpc_sync_connect_tls("127.0.0.1", port, &t, secret, PEER,
					      10000, &c), 0);
	sync_ping(c, "by name");
	rpc_sync_free(&c);
}

static void test_sync_untrusted(void **state)
{
	rpc_tls_config t = tls_a();
	rpc_sync *c = NULL;

	(void)state;
	/* Another installation's certificate. */
	t.ca_file = cert_b;
	assert_int_equal(rpc_sync_open_tls("127.0.0.1", port, &t, 5000, &c),
			 RPC_ENOTAUTH);
	assert_null(c);
	/* The right certificate, but it does not name what we asked for. */
	t.ca_file = cert_a;
	t.server_name = "mail.example.org";
	assert_int_equal(rpc_sync_open_tls("127.0.0.1", port, &t, 5000, &c),
			 RPC_ENOTAUTH);
	t.server_name = "127.0.0.9";
	assert_int_equal(rpc_sync_open_tls("127.0.0.1", port, &t, 5000, &c),
			 RPC_ENOTAUTH);
	/* No CA file: nothing to verify against. */
	t.ca_file = NULL;
	assert_int_equal(rpc_sync_open_tls("127.0.0.1", port, &t, 5000, &c),
			 ENG_EINVAL);
	/* Without TLS nothing but loopback is even tried. */
	assert_int_equal(rpc_sync_open_tcp("192.0.2.1", port, 1000, &c), ENG_EPERM);
}

static void test_sync_plain_refused(void **state)
{
	rpc_sync *c = NULL;
	rpc_frame f;
	int rc;

	(void)state;
	/* Waiting for a HELLO that never comes in the clear: the server's
	 * handshake timeout closes the connection. */
	assert_int_equal(rpc_sync_open_tcp("127.0.0.1", port, 5000, &c), 0);
	rc = rpc_sync_handshake(c, secret, PEER);
	assert_true(rc == ENG_EIO || rc == RPC_ETIMEOUT);
	rpc_sync_free(&c);

	/* A plaintext frame where a ClientHello belongs: closed at once. */
	assert_int_equal(rpc_sync_open_tcp("127.0.0.1", port, 5000, &c), 0);
	assert_int_equal(rpc_sync_send(c, RPC_K_AUTH, 0, 0, 0, "xxxxxxxx", 8), 0);
	rc = rpc_sync_recv(c, 900, &f);   /* before the handshake timeout */
	assert_int_equal(rc, ENG_EIO);
	rpc_sync_free(&c);

	/* A TLS client against a plain server is the mirror image: it fails
	 * with RPC_EPROTO, never by speaking plain (checked in
	 * test_client_tls_errors via a port that closes). */
}

/* ---- the server's protocol and suite policy (raw OpenSSL) ---- */

/* 1 if a handshake with these settings succeeds, else 0 (reason in *why). */
static int raw_handshake(int max_version, const char *ciphers, unsigned long *why)
{
	struct sockaddr_in sa;
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl;
	int fd, rc;

	assert_non_null(ctx);
	SSL_CTX_set_security_level(ctx, 0);
	SSL_CTX_set_min_proto_version(ctx, 0);
	SSL_CTX_set_max_proto_version(ctx, max_version);
	assert_int_equal(SSL_CTX_set_cipher_list(ctx, ciphers), 1);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	ERR_clear_error();
	rc = SSL_connect(ssl) == 1;
	*why = ERR_peek_error();
	ERR_clear_error();
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	return rc;
}

static void test_server_policy(void **state)
{
	unsigned long why = 0;

	(void)state;
	/* Control: TLS 1.2 with an ECDHE AEAD suite works. */
	assert_int_equal(raw_handshake(TLS1_2_VERSION,
				       "ECDHE-ECDSA-AES128-GCM-SHA256:@SECLEVEL=0",
				       &why), 1);
	assert_int_equal(raw_handshake(TLS1_3_VERSION, "ALL:@SECLEVEL=0", &why), 1);
	/* TLS 1.1 (and 1.0): the server answers protocol_version. */
	assert_int_equal(raw_handshake(TLS1_1_VERSION, "ALL:@SECLEVEL=0", &why), 0);
	assert_int_equal(ERR_GET_REASON(why), SSL_R_TLSV1_ALERT_PROTOCOL_VERSION);
	/* TLS 1.2 with CBC suites only: the server has no suite in common. */
	assert_int_equal(raw_handshake(TLS1_2_VERSION,
				       "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
				       "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:"
				       "@SECLEVEL=0", &why), 0);
	assert_int_equal(ERR_GET_REASON(why), SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE);
	/* AEAD without ECDHE (static RSA / plain DHE key exchange) is refused too. */
	assert_int_equal(raw_handshake(TLS1_2_VERSION,
				       "AES128-GCM-SHA256:DHE-RSA-AES128-GCM-SHA256:"
				       "@SECLEVEL=0", &why), 0);
}

/* ---- rpc_client ---- */

/* A download checked against pattern(), beside the call's result. */
typedef struct download {
	result r;
	uint64_t got, bad_at;
	bool bad;
} download;

/* A client of testrpc.c's env (loop, watchdog, state counts) on TCP. */
static int tls_env_open(env *e, const char *host, const rpc_tls_config *tls)
{
	rpc_client_config cc;

	memset(&cc, 0, sizeof(cc));
	cc.host = host;
	cc.port = port;
	cc.tls = tls;
	cc.secret = secret;
	cc.peer_name = PEER;
	cc.backoff_min_ms = 50;
	cc.backoff_max_ms = 200;
	return env_open_cfg(e, &cc);
}

static int on_chunk(void *ctx, uint32_t id, const rpc_view *head,
		    const uint8_t *data, size_t len, bool end)
{
	download *r = ctx;

	(void)id;
	(void)head;
	(void)end;
	for (size_t i = 0; i < len; i++) {
		if (!r->bad && data[i] != pattern(r->got + i)) {
			r->bad = true;
			r->bad_at = r->got + i;
		}
	}
	r->got += len;
	return 0;
}

static void client_ping(env *e, const char *text)
{
	eng_buf pl = ENG_BUF_INIT;
	result r = { 0 };

	rpc_put_str(&pl, RPC_T_ECHO, text);
	assert_int_equal(rpc_client_call(e->c, RPC_OP_PING, pl.data, pl.len, 0,
					 on_result, &r, NULL), 0);
	RUN_UNTIL(e, r.calls == 1, 10000);
	assert_int_equal(r.err, 0);
	assert_int_equal(r.echo_len, strlen(text));
	assert_memory_equal(r.echo, text, r.echo_len);
	eng_buf_free(&pl);
}

static void test_client_tls(void **state)
{
	rpc_tls_config t = tls_a();
	rpc_client_opts o;
	eng_buf pl = ENG_BUF_INIT;
	uint8_t *body = big_body(), hash[32];
	result up = { 0 };
	download down = { 0 };
	env e;

	(void)state;
	assert_int_equal(tls_env_open(&e, "127.0.0.1", &t), 0);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 10000);
	client_ping(&e, "libuv through TLS");

	/* Up and down at once, on one connection. */
	memset(&o, 0, sizeof(o));
	o.has_body = true;
	o.body = body;
	o.body_len = BIG_BYTES;
	o.timeout_ms = 60000;
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_DELIVER, NULL, 0, &o,
					    on_result, &up, NULL), 0);
	rpc_put_u64(&pl, RPC_T_LENGTH, BIG_BYTES);
	memset(&o, 0, sizeof(o));
	o.data = on_chunk;
	o.data_ctx = &down;
	o.timeout_ms = 60000;
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_DIR_LOOKUP, pl.data, pl.len,
					    &o, on_result, &down.r, NULL), 0);
	RUN_UNTIL(&e, up.calls == 1 && down.r.calls == 1, 60000);
	assert_int_equal(up.err, 0);
	assert_int_equal(up.size, BIG_BYTES);
	crypto_generichash(hash, sizeof(hash), body, BIG_BYTES, NULL, 0);
	assert_int_equal(up.echo_len, 32);
	assert_memory_equal(up.echo, hash, 32);
	assert_int_equal(down.r.err, 0);
	assert_int_equal(down.got, BIG_BYTES);
	if (down.bad)
		fail_msg("download byte %llu differs", (unsigned long long)down.bad_at);
	client_ping(&e, "after the bulk");
	assert_int_equal(e.downs, 0);
	env_close(&e);
	eng_buf_free(&pl);
	free(body);
}

static void test_client_tls_errors(void **state)
{
	rpc_tls_config t = tls_a();
	eng_buf pl = ENG_BUF_INIT;
	result r = { 0 };
	env e;

	(void)state;
	/* A client trusting another certificate: refused, the queued request
	 * fails with ENOTAUTH (waiting cannot help). */
	t.ca_file = cert_b;
	assert_int_equal(tls_env_open(&e, "127.0.0.1", &t), 0);
	rpc_put_str(&pl, RPC_T_ECHO, "never");
	assert_int_equal(rpc_client_call(e.c, RPC_OP_PING, pl.data, pl.len, 5000,
					 on_result, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 10000);
	assert_int_equal(r.err, RPC_ENOTAUTH);
	assert_int_equal(e.ups, 0);
	assert_int_equal(e.last_down_err, RPC_ENOTAUTH);
	env_close(&e);

	/* A name the certificate does not carry. */
	t.ca_file = cert_a;
	t.server_name = "other.example";
	memset(&r, 0, sizeof(r));
	assert_int_equal(tls_env_open(&e, "127.0.0.1", &t), 0);
	assert_int_equal(rpc_client_call(e.c, RPC_OP_PING, pl.data, pl.len, 5000,
					 on_result, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 10000);
	assert_int_equal(r.err, RPC_ENOTAUTH);
	env_close(&e);

	/* A plaintext rpc_client against the TLS port never comes up. */
	memset(&r, 0, sizeof(r));
	assert_int_equal(tls_env_open(&e, "127.0.0.1", NULL), 0);
	assert_int_equal(rpc_client_call(e.c, RPC_OP_PING, pl.data, pl.len, 1500,
					 on_result, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 10000);
	assert_int_equal(r.err, RPC_ETIMEOUT);
	assert_int_equal(e.ups, 0);
	env_close(&e);

	/* Configuration: no TLS to a non-loopback address; TLS needs a CA;
	 * a CA file that does not load. */
	assert_int_equal(tls_env_open(&e, "192.0.2.1", NULL), ENG_EPERM);
	env_close(&e);
	t.ca_file = NULL;
	assert_int_equal(tls_env_open(&e, "192.0.2.1", &t), ENG_EINVAL);
	env_close(&e);
	t.ca_file = "/nonexistent/ca.pem";
	assert_int_equal(tls_env_open(&e, "127.0.0.1", &t), ENG_EIO);
	env_close(&e);
	eng_buf_free(&pl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sync_tls),
		cmocka_unit_test(test_sync_untrusted),
		cmocka_unit_test(test_sync_plain_refused),
		cmocka_unit_test(test_server_policy),
		cmocka_unit_test(test_client_tls),
		cmocka_unit_test(test_client_tls_errors),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
