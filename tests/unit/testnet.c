/*
 * The fixture of the test_net_*.c tests (testnet.h): the line protocol's
 * server side on the test's loop, the blocking client helpers, running a
 * client thread against a listener, and the watchdog.
 *
 * Rules: see testnet.h. Only the test_net_* tests link it (it needs
 * sm_common's net.h and tls_selfsigned.h).
 */
#include "testnet.h"

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
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "eng_error.h"
#include "testutil.h"
#include "tls_selfsigned.h"

/* A test that has not ended after this long hangs (normal: < 1 s). */
#define TEST_GUARD_S 120

/* net.c's test hook: the bytes of buffers a connection holds. */
extern size_t sm_net_test_buffered(const sm_net_conn *c);

fixture *tn_g_f;

/* ---- the server side ---- */

/* The i-th byte of a BIG answer written with sm_net_write_direct: where
 * it is in the answer shows (a byte lost, repeated or out of order). */
char tn_bp_byte(size_t i)
{
	return (char)('a' + (i * 7 + i / 4099) % 26);
}

/* n bytes of a direct BIG answer (tn_g_f->produced of it written): the
 * first 100 batched by sm_net_write, the rest given to
 * sm_net_write_direct from a buffer overwritten at once (what the socket
 * did not take must have been copied). */
static void big_direct(sm_net_conn *c, size_t n)
{
	char buf[16384];
	size_t k = n < 100 ? n : 100;

	for (size_t i = 0; i < n; i++)
		buf[i] = tn_bp_byte(tn_g_f->produced + i);
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

		if (tn_g_f->direct) {
			/* uneven sizes: the bytes start anywhere in a TLS
			 * record, and end anywhere */
			n -= n > 9000 ? (tn_g_f->produced / 1000) % 7 * 1100 : 0;
			big_direct(c, n);
		} else {
			sm_net_write(c, chunk, n);
		}
		st->big_left -= n;
		tn_g_f->produced += n;
		if (sm_net_write_queued(c) > tn_g_f->max_queued)
			tn_g_f->max_queued = sm_net_write_queued(c);
	}
	if (st->big_left == 0)
		sm_net_write(c, "\r\nEND\r\n", 7);
	else
		tn_g_f->blocked_seen++;
	/* The client waits for the first of the two: an answer written
	 * whole at once (no backpressure) wakes it up too. */
	if (!st->big_told) {
		st->big_told = true;
		sem_post(&tn_g_f->blocked_sem);
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
		uv_timer_init(&tn_g_f->loop, st->later);
		st->later->data = st;
	}
	uv_timer_start(st->later, on_later, ms, 0);
}

static void s_accept(sm_net_conn *c, void *lctx)
{
	srv_conn_state *st = calloc(1, sizeof(*st));

	(void)lctx;
	st->c = c;
	st->next = tn_g_f->conns;
	tn_g_f->conns = st;
	sm_net_set_ctx(c, st);
	tn_g_f->accepted++;
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
			tn_g_f->lines_evil++;
		if (strcmp(line, "hello") == 0)
			tn_g_f->lines_hello++;
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

	tn_g_f->drained++;
	if (st->big_left > 0)
		big_pump(c, st);
}

static void s_close(sm_net_conn *c, void *ctx, enum sm_net_reason why)
{
	srv_conn_state *st = ctx;

	(void)c;
	for (srv_conn_state **pp = &tn_g_f->conns; *pp != NULL; pp = &(*pp)->next)
		if (*pp == st) {
			*pp = st->next;
			break;
		}
	if (st->later != NULL) {
		uv_timer_stop(st->later);
		uv_close((uv_handle_t *)st->later, (uv_close_cb)free);
	}
	free(st);
	tn_g_f->closed++;
	if (why == SM_NET_IDLE)
		tn_g_f->close_idle++;
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
int tn_tcp_connect_rcvbuf(uint16_t port, int rcvbuf)
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

int tn_tcp_connect(uint16_t port)
{
	return tn_tcp_connect_rcvbuf(port, 0);
}

/*
 * The client's blocking calls, retried when a stop signal interrupted
 * them (a debugger attaching, job control on a loaded machine): with
 * SO_RCVTIMEO set, Linux fails such a call with EINTR after SIGCONT. A
 * real timeout (EAGAIN) is not retried.
 */
ssize_t tn_rd(int fd, void *buf, size_t n)
{
	ssize_t r;

	do
		r = read(fd, buf, n);
	while (r < 0 && errno == EINTR);
	return r;
}

ssize_t tn_wr(int fd, const void *buf, size_t n)
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

int tn_ssl_rd(SSL *ssl, void *buf, int n)
{
	int r;

	do {
		errno = 0;
		r = SSL_read(ssl, buf, n);
	} while (r <= 0 && ssl_again(ssl, r));
	return r;
}

int tn_ssl_wr(SSL *ssl, const void *buf, int n)
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
int tn_plain_line(int fd, char *buf, size_t cap)
{
	size_t n = 0;

	while (n + 1 < cap) {
		char ch;

		if (tn_rd(fd, &ch, 1) != 1)
			return -1;
		buf[n++] = ch;
		if (ch == '\n')
			break;
	}
	buf[n] = '\0';
	return (int)n;
}

int tn_tls_line(SSL *ssl, char *buf, size_t cap)
{
	size_t n = 0;

	while (n + 1 < cap) {
		char ch;

		if (tn_ssl_rd(ssl, &ch, 1) != 1)
			return -1;
		buf[n++] = ch;
		if (ch == '\n')
			break;
	}
	buf[n] = '\0';
	return (int)n;
}

SSL *tn_tls_client(SSL_CTX **ctx_r, int fd)
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


/* Sends cmd (unless NULL) and reads one line: is it want? */
bool tn_tls_ask(SSL *ssl, const char *cmd, const char *want)
{
	char buf[256];

	if (cmd != NULL && tn_ssl_wr(ssl, cmd, (int)strlen(cmd)) != (int)strlen(cmd))
		return false;
	return tn_tls_line(ssl, buf, sizeof(buf)) > 0 && strcmp(buf, want) == 0;
}

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

#define run(f, implicit, tweak, client) tn_run_client(f, implicit, tweak, client, #client)

void tn_run_client(fixture *f, bool implicit, const sm_net_listener_config *tweak,
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

int tn_setup(void **state)
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
	tn_g_f = f;
	*state = f;
	g_running = "setup";
	alarm(TEST_GUARD_S);
	return 0;
}

int tn_teardown(void **state)
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

void tn_signals(void)
{
	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, on_guard);
}
