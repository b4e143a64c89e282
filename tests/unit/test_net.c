/*
 * frontends/common/net.c over real loopback sockets: a small line protocol
 * served on the test's loop (main thread), and clients in a second thread
 * with blocking sockets and OpenSSL: implicit TLS with a clean close
 * (close_notify), a STARTTLS upgrade whose pipelined plaintext is
 * discarded, backpressure on a client that does not read (plain and TLS,
 * written by sm_net_write and by sm_net_write_direct),
 * the per-IP limit (with and without a limit_reply), the idle timeout, a
 * certificate reload, an idle connection holding no buffer (plain, TLS,
 * after STARTTLS, after big answers) and held input re-offered after
 * sm_net_resume on several connections at once.
 *
 * Rules: correct under any scheduling (the machine may be loaded 10x):
 * the client waits for what the server reports (a semaphore), never for a
 * sleep; a failed client check aborts the server's connections so the
 * test ends at once; a watchdog (SIGALRM, TEST_GUARD_S) turns a hang into
 * a failure that names the stuck client.
 *
 * The protocol: greeting "HI"; "STARTTLS" -> "OK" then TLS; "BIG n" -> n
 * bytes of 'x' then "\r\nEND", written while sm_net_write_blocked() is
 * false and resumed from on_drained; "QUIT" -> "BYE" and a graceful
 * close; "MEMLATER" -> 100 ms later, "MEM <bytes of buffers the
 * connection holds>"; "HOLD" -> sm_net_hold, sm_net_resume 30 ms later;
 * anything else -> "ECHO <line>".
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "eng_error.h"
#include "net.h"
#include "testutil.h"
#include "tls_selfsigned.h"

#define MAX_OUT (64u * 1024)
/* A test that has not ended after this long hangs (normal: < 1 s). */
#define TEST_GUARD_S 120
/* How long a client waits for the server before its check fails: a
 * guard against a hang, not a timing assumption. */
#define CLIENT_WAIT_S 60

typedef struct srv_conn_state {
	size_t big_left;
	bool tls_asked;
	sm_net_conn *c;
	uv_timer_t *later;           /* MEMLATER, HOLD */
	bool held;
	bool big_told;               /* blocked_sem posted for this BIG */
	struct srv_conn_state *next; /* the fixture's open connections */
} srv_conn_state;

/* net.c's test hook: the bytes of buffers a connection holds. */
extern size_t sm_net_test_buffered(const sm_net_conn *c);

typedef struct fixture {
	uv_loop_t loop;
	uv_async_t done_async;
	char *dir;
	char cert[512], key[512];
	sm_net_tls *tls;
	sm_net_listener *l;
	uint16_t port;
	pthread_t th;
	void (*client)(struct fixture *f);
	int listen_sndbuf;           /* SO_SNDBUF of accepted sockets, 0: default */
	srv_conn_state *conns;       /* open on the server */
	sem_t blocked_sem;           /* a BIG answer blocked (or ended) */
	/* what the server saw */
	atomic_int lines_evil;
	atomic_int lines_hello;
	atomic_int blocked_seen;
	atomic_size_t produced;      /* bytes of BIG answers written so far */
	atomic_int drained;
	atomic_int accepted;
	atomic_int closed;
	atomic_int close_idle;
	atomic_size_t max_queued;
	atomic_bool client_ok;
	bool direct;                 /* BIG writes with sm_net_write_direct */
} fixture;

static fixture *g_f;

/* ---- the server side ---- */

/* The i-th byte of a BIG answer written with sm_net_write_direct: where
 * it is in the answer shows (a byte lost, repeated or out of order). */
static char bp_byte(size_t i)
{
	return (char)('a' + (i * 7 + i / 4099) % 26);
}

/* n bytes of a direct BIG answer (g_f->produced of it written): the
 * first 100 batched by sm_net_write, the rest given to
 * sm_net_write_direct from a buffer overwritten at once (what the socket
 * did not take must have been copied). */
static void big_direct(sm_net_conn *c, size_t n)
{
	char buf[16384];
	size_t k = n < 100 ? n : 100;

	for (size_t i = 0; i < n; i++)
		buf[i] = bp_byte(g_f->produced + i);
	sm_net_write(c, buf, k);
	sm_net_write_direct(c, buf + k, n - k);
	memset(buf, '?', n);
}

static void big_pump(sm_net_conn *c, srv_conn_state *st)
{
	static char chunk[16384];

	memset(chunk, 'x', sizeof(chunk));
	while (st->big_left > 0 && !sm_net_write_blocked(c)) {
		size_t n = st->big_left < sizeof(chunk) ? st->big_left : sizeof(chunk);

		if (g_f->direct) {
			/* uneven sizes: the bytes start anywhere in a TLS
			 * record, and end anywhere */
			n -= n > 9000 ? (g_f->produced / 1000) % 7 * 1100 : 0;
			big_direct(c, n);
		} else {
			sm_net_write(c, chunk, n);
		}
		st->big_left -= n;
		g_f->produced += n;
		if (sm_net_write_queued(c) > g_f->max_queued)
			g_f->max_queued = sm_net_write_queued(c);
	}
	if (st->big_left == 0)
		sm_net_write(c, "\r\nEND\r\n", 7);
	else
		g_f->blocked_seen++;
	/* The client waits for the first of the two: an answer written
	 * whole at once (no backpressure) wakes it up too. */
	if (!st->big_told) {
		st->big_told = true;
		sem_post(&g_f->blocked_sem);
	}
}

static void on_later(uv_timer_t *t)
{
	srv_conn_state *st = t->data;
	char out[64];
	int m;

	if (st->held) {
		st->held = false;
		sm_net_resume(st->c);
		return;
	}
	m = snprintf(out, sizeof(out), "MEM %zu\r\n", sm_net_test_buffered(st->c));
	sm_net_write(st->c, out, (size_t)m);
}

static void later(srv_conn_state *st, uint64_t ms)
{
	if (st->later == NULL) {
		st->later = calloc(1, sizeof(*st->later));
		uv_timer_init(&g_f->loop, st->later);
		st->later->data = st;
	}
	uv_timer_start(st->later, on_later, ms, 0);
}

static void s_accept(sm_net_conn *c, void *lctx)
{
	srv_conn_state *st = calloc(1, sizeof(*st));

	(void)lctx;
	st->c = c;
	st->next = g_f->conns;
	g_f->conns = st;
	sm_net_set_ctx(c, st);
	g_f->accepted++;
	sm_net_write(c, "HI\r\n", 4);
}

static size_t s_data(sm_net_conn *c, void *ctx, const uint8_t *p, size_t len)
{
	srv_conn_state *st = ctx;
	size_t off = 0;

	while (off < len && st->big_left == 0) {
		const uint8_t *nl = memchr(p + off, '\n', len - off);
		char line[256];
		size_t n;

		if (nl == NULL)
			break;
		n = (size_t)(nl - (p + off));
		if (n > 0 && p[off + n - 1] == '\r')
			n--;
		if (n >= sizeof(line))
			n = sizeof(line) - 1;
		memcpy(line, p + off, n);
		line[n] = '\0';
		off = (size_t)(nl - p) + 1;
		if (strcmp(line, "STARTTLS") == 0) {
			sm_net_write(c, "OK\r\n", 4);
			assert_int_equal(sm_net_starttls(c), 0);
			return off;
		}
		if (strcmp(line, "EVIL") == 0)
			g_f->lines_evil++;
		if (strcmp(line, "hello") == 0)
			g_f->lines_hello++;
		if (strncmp(line, "BIG ", 4) == 0) {
			st->big_left = strtoul(line + 4, NULL, 10);
			st->big_told = false;
			big_pump(c, st);
			continue;
		}
		if (strcmp(line, "MEMLATER") == 0) {
			later(st, 100);
			continue;
		}
		if (strcmp(line, "HOLD") == 0) {
			sm_net_hold(c);
			st->held = true;
			later(st, 30);
			return off;
		}
		if (strcmp(line, "QUIT") == 0) {
			sm_net_write(c, "BYE\r\n", 5);
			sm_net_close(c);
			return off;
		}
		char out[300];
		int m = snprintf(out, sizeof(out), "ECHO %s%s\r\n", line,
				 sm_net_is_tls(c) ? " tls" : "");

		sm_net_write(c, out, (size_t)m);
	}
	return off;
}

static void s_drained(sm_net_conn *c, void *ctx)
{
	srv_conn_state *st = ctx;

	g_f->drained++;
	if (st->big_left > 0)
		big_pump(c, st);
}

static void s_close(sm_net_conn *c, void *ctx, enum sm_net_reason why)
{
	srv_conn_state *st = ctx;

	(void)c;
	for (srv_conn_state **pp = &g_f->conns; *pp != NULL; pp = &(*pp)->next)
		if (*pp == st) {
			*pp = st->next;
			break;
		}
	if (st->later != NULL) {
		uv_timer_stop(st->later);
		uv_close((uv_handle_t *)st->later, (uv_close_cb)free);
	}
	free(st);
	g_f->closed++;
	if (why == SM_NET_IDLE)
		g_f->close_idle++;
}

static const sm_net_callbacks s_cb = {
	.on_accept = s_accept,
	.on_data = s_data,
	.on_drained = s_drained,
	.on_close = s_close,
};

/* ---- client helpers (second thread, blocking) ---- */

/*
 * rcvbuf > 0: a slow reader's socket, its receive buffer that small and
 * segments of at most 1 KiB, both set BEFORE connect. A receive buffer
 * shrunk after connect leaves the window under the loopback MSS (64 KiB):
 * the sender then moves data only on zero-window probes (40 KB/s), whose
 * backoff grows to seconds whenever the reader is descheduled.
 */
static int tcp_connect_rcvbuf(uint16_t port, int rcvbuf)
{
	struct sockaddr_in a;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct timeval tv = { CLIENT_WAIT_S, 0 };
	int mss = 1024;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0)
		return -1;
	if (rcvbuf > 0 &&
	    (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) != 0 ||
	     setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss)) != 0)) {
		close(fd);
		return -1;
	}
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		close(fd);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static int tcp_connect(uint16_t port)
{
	return tcp_connect_rcvbuf(port, 0);
}

/*
 * The client's blocking calls, retried when a stop signal interrupted
 * them (a debugger attaching, job control on a loaded machine): with
 * SO_RCVTIMEO set, Linux fails such a call with EINTR after SIGCONT. A
 * real timeout (EAGAIN) is not retried.
 */
static ssize_t rd(int fd, void *buf, size_t n)
{
	ssize_t r;

	do
		r = read(fd, buf, n);
	while (r < 0 && errno == EINTR);
	return r;
}

static ssize_t wr(int fd, const void *buf, size_t n)
{
	ssize_t r;

	do
		r = write(fd, buf, n);
	while (r < 0 && errno == EINTR);
	return r;
}

static bool ssl_again(SSL *ssl, int r)
{
	int e = SSL_get_error(ssl, r);

	return errno == EINTR && (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ||
				  e == SSL_ERROR_SYSCALL);
}

static int ssl_rd(SSL *ssl, void *buf, int n)
{
	int r;

	do {
		errno = 0;
		r = SSL_read(ssl, buf, n);
	} while (r <= 0 && ssl_again(ssl, r));
	return r;
}

static int ssl_wr(SSL *ssl, const void *buf, int n)
{
	int r;

	do {
		errno = 0;
		r = SSL_write(ssl, buf, n);
	} while (r <= 0 && ssl_again(ssl, r));
	return r;
}

static int ssl_conn(SSL *ssl)
{
	int r;

	do {
		errno = 0;
		r = SSL_connect(ssl);
	} while (r <= 0 && ssl_again(ssl, r));
	return r;
}

/* Reads one line (plain) into buf; length or -1 at EOF/error. */
static int plain_line(int fd, char *buf, size_t cap)
{
	size_t n = 0;

	while (n + 1 < cap) {
		char ch;

		if (rd(fd, &ch, 1) != 1)
			return -1;
		buf[n++] = ch;
		if (ch == '\n')
			break;
	}
	buf[n] = '\0';
	return (int)n;
}

static int tls_line(SSL *ssl, char *buf, size_t cap)
{
	size_t n = 0;

	while (n + 1 < cap) {
		char ch;

		if (ssl_rd(ssl, &ch, 1) != 1)
			return -1;
		buf[n++] = ch;
		if (ch == '\n')
			break;
	}
	buf[n] = '\0';
	return (int)n;
}

static SSL *tls_client(SSL_CTX **ctx_r, int fd)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl;

	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	*ctx_r = ctx;
	if (ssl_conn(ssl) != 1) {
		SSL_free(ssl);
		SSL_CTX_free(ctx);
		*ctx_r = NULL;
		return NULL;
	}
	return ssl;
}

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "client check failed: %s (line %d)\n", \
				#x, __LINE__); return; } } while (0)

/* ---- the fixture ---- */

static void on_done(uv_async_t *a)
{
	fixture *f = a->data;

	/* A client that failed a check left its sockets open: without this
	 * the loop would wait for the idle timeout (10 minutes). */
	if (!f->client_ok)
		for (srv_conn_state *st = f->conns; st != NULL; st = st->next)
			sm_net_abort(st->c);
	sm_net_listener_close(f->l, NULL, NULL);
	uv_close((uv_handle_t *)&f->done_async, NULL);
}

static void *client_main(void *arg)
{
	fixture *f = arg;

	f->client(f);
	uv_async_send(&f->done_async);
	return NULL;
}

/* The client running, for the watchdog's message. */
static const char *volatile g_running = "setup";

static void guard_write(const char *s)
{
	ssize_t r = write(STDERR_FILENO, s, strlen(s));

	(void)r;
}

#define GUARD_TEXT_(n) #n
#define GUARD_TEXT(n) GUARD_TEXT_(n)

/* SIGALRM: a test ran for TEST_GUARD_S (async-signal-safe calls only). */
static void on_guard(int sig)
{
	(void)sig;
	guard_write("test_net: HANG: the test running ");
	guard_write(g_running);
	guard_write(" did not finish within " GUARD_TEXT(TEST_GUARD_S) " s\n");
	_exit(1);
}

/* The listening socket of port (net.h does not expose it), found among
 * the process's descriptors; -1 if none. */
static int listener_fd(uint16_t port)
{
	for (int fd = 3; fd < 1024; fd++) {
		struct sockaddr_in a;
		socklen_t len = sizeof(a);
		int on = 0;
		socklen_t olen = sizeof(on);

		if (getsockname(fd, (struct sockaddr *)&a, &len) != 0 ||
		    a.sin_family != AF_INET || ntohs(a.sin_port) != port)
			continue;
		if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &olen) == 0 && on)
			return fd;
	}
	return -1;
}

#define run(f, implicit, tweak, client) run_client(f, implicit, tweak, client, #client)

static void run_client(fixture *f, bool implicit, const sm_net_listener_config *tweak,
		       void (*client)(fixture *f), const char *client_name)
{
	sm_net_listener_config lc;

	memset(&lc, 0, sizeof(lc));
	if (tweak != NULL)
		lc = *tweak;
	lc.address = "127.0.0.1";
	lc.port = 0;
	lc.implicit_tls = implicit;
	lc.tls = f->tls;
	lc.name = "test";
	lc.cb = &s_cb;
	if (lc.max_output_bytes == 0)
		lc.max_output_bytes = MAX_OUT;
	assert_int_equal(sm_net_listen(&f->loop, &lc, &f->l), 0);
	f->port = sm_net_listener_port(f->l);
	assert_true(f->port != 0);
	/* Accepted sockets inherit the listener's SO_SNDBUF (Linux). */
	if (f->listen_sndbuf > 0) {
		int fd = listener_fd(f->port);

		assert_true(fd >= 0);
		assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &f->listen_sndbuf,
					    sizeof(f->listen_sndbuf)), 0);
	}
	g_running = client_name;
	uv_async_init(&f->loop, &f->done_async, on_done);
	f->done_async.data = f;
	f->client = client;
	assert_int_equal(pthread_create(&f->th, NULL, client_main, f), 0);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	pthread_join(f->th, NULL);
	assert_int_equal(f->accepted, f->closed);
}

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof(*f));
	bool created;
	char *err = NULL;

	f->dir = tu_tmpdir();
	snprintf(f->cert, sizeof(f->cert), "%s/cert.pem", f->dir);
	snprintf(f->key, sizeof(f->key), "%s/key.pem", f->dir);
	assert_int_equal(sm_tls_selfsigned_ensure(f->cert, f->key, "localhost",
						  &created, &err), 0);
	assert_int_equal(sm_net_tls_new(f->cert, f->key, &f->tls, &err), 0);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	assert_int_equal(sem_init(&f->blocked_sem, 0, 0), 0);
	g_f = f;
	*state = f;
	g_running = "setup";
	alarm(TEST_GUARD_S);
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;

	g_running = "teardown";
	uv_run(&f->loop, UV_RUN_DEFAULT);
	alarm(0);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	sem_destroy(&f->blocked_sem);
	sm_net_tls_free(&f->tls);
	tu_rmrf(f->dir);
	free(f->dir);
	free(f);
	return 0;
}

/* ---- implicit TLS, echo, clean close with close_notify ---- */

static void client_implicit(fixture *f)
{
	char buf[256];
	SSL_CTX *ctx;
	int fd = tcp_connect(f->port);
	SSL *ssl;

	CHECK(fd >= 0);
	ssl = tls_client(&ctx, fd);
	CHECK(ssl != NULL);
	CHECK(SSL_version(ssl) >= TLS1_2_VERSION);
	CHECK(tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "HI\r\n") == 0);
	ssl_wr(ssl, "hello\r\n", 7);
	CHECK(tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "ECHO hello tls\r\n") == 0);
	ssl_wr(ssl, "QUIT\r\n", 6);
	CHECK(tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
	/* The server ends with close_notify, not a bare FIN. */
	CHECK(ssl_rd(ssl, buf, 1) == 0 && SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN);
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
	int fd = tcp_connect(f->port);
	SSL *ssl;
	const char inject[] = "STARTTLS\r\nEVIL\r\nEVIL\r\n";

	CHECK(fd >= 0);
	CHECK(plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "HI\r\n") == 0);
	wr(fd, "hello\r\n", 7);
	CHECK(plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "ECHO hello\r\n") == 0);
	/* One segment: the command and the injected lines together. */
	CHECK(wr(fd, inject, sizeof(inject) - 1) == (ssize_t)(sizeof(inject) - 1));
	CHECK(plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "OK\r\n") == 0);
	ssl = tls_client(&ctx, fd);
	CHECK(ssl != NULL);
	ssl_wr(ssl, "hello\r\n", 7);
	CHECK(tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "ECHO hello tls\r\n") == 0);
	ssl_wr(ssl, "QUIT\r\n", 6);
	CHECK(tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
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

/* Sends cmd (unless NULL) and reads one line: is it want? */
static bool tls_ask(SSL *ssl, const char *cmd, const char *want)
{
	char buf[256];

	if (cmd != NULL && ssl_wr(ssl, cmd, (int)strlen(cmd)) != (int)strlen(cmd))
		return false;
	return tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, want) == 0;
}

/* QUIT, BYE, and the client's side freed. */
static bool tls_quit(SSL *ssl, SSL_CTX *ctx, int fd)
{
	bool ok = tls_ask(ssl, "QUIT\r\n", "BYE\r\n");

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

	if (ssl_wr(ssl, cmd, m) != m)
		return false;
	while (got < n) {
		int r = ssl_rd(ssl, chunk, (int)(n - got < sizeof(chunk) ?
						   n - got : sizeof(chunk)));

		if (r <= 0)
			return false;
		for (int i = 0; i < r; i++)
			if (chunk[i] != 'x')
				return false;
		got += (size_t)r;
	}
	return tls_line(ssl, buf, sizeof(buf)) == 2 && tls_line(ssl, buf, sizeof(buf)) > 0 &&
	       strcmp(buf, "END\r\n") == 0;
}

/* 50 lines one by one, then 50 in one write: each echoed in order. */
static bool tls_echoes(SSL *ssl)
{
	char all[2048], buf[256], want[64];
	size_t len = 0;

	for (int i = 0; i < 50; i++) {
		int m = snprintf(want, sizeof(want), "line %d\r\n", i);

		if (ssl_wr(ssl, want, m) != m || tls_line(ssl, buf, sizeof(buf)) <= 0)
			return false;
		snprintf(want, sizeof(want), "ECHO line %d tls\r\n", i);
		if (strcmp(buf, want) != 0)
			return false;
	}
	for (int i = 0; i < 50; i++)
		len += (size_t)snprintf(all + len, sizeof(all) - len, "p%d\r\n", i);
	if (ssl_wr(ssl, all, (int)len) != (int)len)
		return false;
	for (int i = 0; i < 50; i++) {
		snprintf(want, sizeof(want), "ECHO p%d tls\r\n", i);
		if (tls_line(ssl, buf, sizeof(buf)) <= 0 || strcmp(buf, want) != 0)
			return false;
	}
	return true;
}

static void client_idle_tls(fixture *f)
{
	char buf[256];
	SSL_CTX *ctx;
	int fd = tcp_connect(f->port);
	SSL *ssl;

	CHECK(fd >= 0);
	ssl = tls_client(&ctx, fd);
	CHECK(ssl != NULL);
	CHECK(tls_ask(ssl, NULL, "HI\r\n"));
	/* Right after the handshake and the greeting: nothing kept. */
	CHECK(tls_ask(ssl, "MEMLATER\r\n", "MEM 0\r\n"));
	/* After a big answer (records of several SSL_writes) and echoes. */
	CHECK(tls_big(ssl, 300000));
	CHECK(tls_echoes(ssl));
	CHECK(tls_ask(ssl, "MEMLATER\r\n", "MEM 0\r\n"));
	/* Idle, then used again: small and big. */
	usleep(200 * 1000);
	CHECK(tls_echoes(ssl));
	CHECK(tls_big(ssl, 1000000));
	CHECK(tls_ask(ssl, "MEMLATER\r\n", "MEM 0\r\n"));
	CHECK(tls_ask(ssl, "QUIT\r\n", "BYE\r\n"));
	CHECK(ssl_rd(ssl, buf, 1) == 0 && SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN);
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
	int fd = tcp_connect(f->port);
	SSL *ssl;

	CHECK(fd >= 0);
	CHECK(plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "HI\r\n") == 0);
	CHECK(wr(fd, "hello\r\nMEMLATER\r\n", 17) == 17);
	CHECK(plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "ECHO hello\r\n") == 0);
	CHECK(plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "MEM 0\r\n") == 0);
	CHECK(wr(fd, "STARTTLS\r\n", 10) == 10);
	CHECK(plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "OK\r\n") == 0);
	ssl = tls_client(&ctx, fd);
	CHECK(ssl != NULL);
	CHECK(tls_echoes(ssl));
	CHECK(tls_ask(ssl, "MEMLATER\r\n", "MEM 0\r\n"));
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

/* ---- held input, re-offered after sm_net_resume ---- */

static void client_hold(fixture *f)
{
	SSL_CTX *ctx[3];
	SSL *ssl[3];
	int fd[3];
	const char req[] = "HOLD\r\nhello\r\nHOLD\r\nHOLD\r\nmore\r\nQUIT\r\n";

	for (int i = 0; i < 3; i++) {
		fd[i] = tcp_connect(f->port);
		CHECK(fd[i] >= 0);
		ssl[i] = tls_client(&ctx[i], fd[i]);
		CHECK(ssl[i] != NULL);
		CHECK(tls_ask(ssl[i], NULL, "HI\r\n"));
	}
	/* All three held at once: each resume is a kick of its own. */
	for (int i = 0; i < 3; i++)
		CHECK(ssl_wr(ssl[i], req, (int)sizeof(req) - 1) == (int)sizeof(req) - 1);
	for (int i = 0; i < 3; i++) {
		CHECK(tls_ask(ssl[i], NULL, "ECHO hello tls\r\n"));
		CHECK(tls_ask(ssl[i], NULL, "ECHO more tls\r\n"));
		CHECK(tls_ask(ssl[i], NULL, "BYE\r\n"));
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

/* Reads n bytes of 'x' (f->direct: bp_byte's) in 4 KiB reads, over
 * plain (ssl NULL) or TLS. */
static bool bp_read_all(int fd, SSL *ssl, size_t n)
{
	char buf[4096];
	size_t got = 0;

	while (got < n) {
		size_t want = n - got < sizeof(buf) ? n - got : sizeof(buf);
		ssize_t r = ssl != NULL ? ssl_rd(ssl, buf, (int)want) :
					  rd(fd, buf, want);

		if (r <= 0)
			return false;
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != (g_f->direct ? bp_byte(got + (size_t)i) : 'x'))
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
	int fd = tcp_connect_rcvbuf(f->port, BP_SOCKBUF);

	CHECK(fd >= 0);
	CHECK(plain_line(fd, buf, sizeof(buf)) > 0);
	snprintf(buf, sizeof(buf), "BIG %u\r\n", BP_BYTES);
	CHECK(wr(fd, buf, strlen(buf)) == (ssize_t)strlen(buf));
	CHECK(bp_receive(f, fd, NULL));
	CHECK(plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "\r\n") == 0);
	CHECK(plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "END\r\n") == 0);
	CHECK(wr(fd, "QUIT\r\n", 6) == 6);
	CHECK(plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
	CHECK(rd(fd, buf, 1) == 0);
	close(fd);
	f->client_ok = true;
}

static void client_backpressure_tls(fixture *f)
{
	char buf[256];
	SSL_CTX *ctx;
	int fd = tcp_connect_rcvbuf(f->port, BP_SOCKBUF);
	SSL *ssl;

	CHECK(fd >= 0);
	ssl = tls_client(&ctx, fd);
	CHECK(ssl != NULL);
	CHECK(tls_ask(ssl, NULL, "HI\r\n"));
	snprintf(buf, sizeof(buf), "BIG %u\r\n", BP_BYTES);
	CHECK(ssl_wr(ssl, buf, (int)strlen(buf)) == (int)strlen(buf));
	CHECK(bp_receive(f, fd, ssl));
	CHECK(tls_ask(ssl, NULL, "\r\n"));
	CHECK(tls_ask(ssl, NULL, "END\r\n"));
	CHECK(tls_ask(ssl, "QUIT\r\n", "BYE\r\n"));
	CHECK(ssl_rd(ssl, buf, 1) == 0 && SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN);
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
	int a = tcp_connect(f->port), b = tcp_connect(f->port), c;

	CHECK(a >= 0 && b >= 0);
	CHECK(plain_line(a, buf, sizeof(buf)) > 0);
	CHECK(plain_line(b, buf, sizeof(buf)) > 0);
	c = tcp_connect(f->port);
	CHECK(c >= 0);
	CHECK(rd(c, buf, 1) <= 0);     /* refused: closed without a greeting */
	close(c);
	for (int i = 0; i < 2; i++) {
		int fd = i == 0 ? a : b;

		CHECK(wr(fd, "QUIT\r\n", 6) == 6);
		CHECK(plain_line(fd, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
		CHECK(rd(fd, buf, 1) == 0);
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
	int a = tcp_connect(f->port), b = tcp_connect(f->port);

	CHECK(a >= 0 && b >= 0);
	CHECK(plain_line(a, buf, sizeof(buf)) > 0);
	CHECK(plain_line(b, buf, sizeof(buf)) > 0);
	CHECK(rd(a, buf, 1) == 0);
	CHECK(rd(b, buf, 1) == 0);
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

	while (n + 1 < cap && (r = rd(fd, buf + n, cap - 1 - n)) > 0)
		n += (size_t)r;
	buf[n] = '\0';
	return r < 0 ? -1 : (int)n;
}

static void client_limit_reply(fixture *f)
{
	char buf[256];
	int a = tcp_connect(f->port), b;

	CHECK(a >= 0);
	CHECK(plain_line(a, buf, sizeof(buf)) > 0 && strcmp(buf, "HI\r\n") == 0);
	b = tcp_connect(f->port);
	CHECK(b >= 0);
	/* Exactly the reply, then EOF: no greeting, nothing else. */
	CHECK(read_to_eof(b, buf, sizeof(buf)) == (int)strlen(LIMIT_REPLY));
	CHECK(strcmp(buf, LIMIT_REPLY) == 0);
	close(b);
	/* The first connection is untouched. */
	wr(a, "hello\r\n", 7);
	CHECK(plain_line(a, buf, sizeof(buf)) > 0 && strcmp(buf, "ECHO hello\r\n") == 0);
	wr(a, "QUIT\r\n", 6);
	CHECK(plain_line(a, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
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
	int a = tcp_connect(f->port), b;
	SSL *ssl, *ssl2;

	CHECK(a >= 0);
	ssl = tls_client(&ctx, a);
	CHECK(ssl != NULL);
	CHECK(tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "HI\r\n") == 0);
	b = tcp_connect(f->port);
	CHECK(b >= 0);
	ssl2 = tls_client(&ctx2, b);
	CHECK(ssl2 == NULL);
	ERR_clear_error();
	ssl_wr(ssl, "QUIT\r\n", 6);
	CHECK(tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, "BYE\r\n") == 0);
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

/* ---- reload: a new certificate for new connections ---- */

static void client_two_tls(fixture *f)
{
	char buf[256];

	for (int i = 0; i < 2; i++) {
		SSL_CTX *ctx;
		int fd = tcp_connect(f->port);
		SSL *ssl;

		CHECK(fd >= 0);
		ssl = tls_client(&ctx, fd);
		CHECK(ssl != NULL);
		CHECK(tls_line(ssl, buf, sizeof(buf)) > 0);
		ssl_wr(ssl, "QUIT\r\n", 6);
		CHECK(tls_line(ssl, buf, sizeof(buf)) > 0);
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
		cmocka_unit_test_setup_teardown(test_implicit_tls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_starttls_discards_pipelined, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idle_tls_holds_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idle_starttls_holds_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hold_resume, setup, teardown),
		cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
		cmocka_unit_test_setup_teardown(test_backpressure_tls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_backpressure_direct, setup, teardown),
		cmocka_unit_test_setup_teardown(test_backpressure_direct_tls, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_limit_reply, setup, teardown),
		cmocka_unit_test_setup_teardown(test_limit_reply_not_under_tls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, on_guard);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
