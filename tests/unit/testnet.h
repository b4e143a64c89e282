/*
 * The fixture of the test_net_*.c tests (frontends/common/net*.c over
 * real loopback sockets), in testnet.c: a small line protocol served on
 * the test's loop (main thread), and clients in a second thread with
 * blocking sockets and OpenSSL.
 *
 * Rules: correct under any scheduling (the machine may be loaded 10x):
 * the client waits for what the server reports (a semaphore), never for a
 * sleep; a failed client check (CHECK) aborts the server's connections so
 * the test ends at once; a watchdog (SIGALRM, tn_signals) turns a hang
 * into a failure that names the stuck client.
 *
 * The protocol: greeting "HI"; "STARTTLS" -> "OK" then TLS; "BIG n" -> n
 * bytes of 'x' then "\r\nEND", written while sm_net_write_blocked() is
 * false and resumed from on_drained; "QUIT" -> "BYE" and a graceful
 * close; "MEMLATER" -> 100 ms later, "MEM <bytes of buffers the
 * connection holds>"; "HOLD" -> sm_net_hold, sm_net_resume 30 ms later;
 * anything else -> "ECHO <line>". With f->direct, a BIG answer is written
 * by sm_net_write_direct, its bytes tn_bp_byte(i).
 */
#ifndef TESTNET_H
#define TESTNET_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/types.h>
#include <uv.h>

#include "net.h"

#define MAX_OUT (64u * 1024)
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

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "client check failed: %s (line %d)\n", \
				#x, __LINE__); return; } } while (0)

#define run(f, implicit, tweak, client) tn_run_client(f, implicit, tweak, client, #client)

/* The server side: the i-th byte of a BIG answer written with
 * sm_net_write_direct. */
char tn_bp_byte(size_t i);

/* The client side (second thread, blocking): connecting, reading and
 * writing plain and TLS, one line at a time. */
int tn_tcp_connect_rcvbuf(uint16_t port, int rcvbuf);
int tn_tcp_connect(uint16_t port);
ssize_t tn_rd(int fd, void *buf, size_t n);
ssize_t tn_wr(int fd, const void *buf, size_t n);
int tn_ssl_rd(SSL *ssl, void *buf, int n);
int tn_ssl_wr(SSL *ssl, const void *buf, int n);
int tn_plain_line(int fd, char *buf, size_t cap);
int tn_tls_line(SSL *ssl, char *buf, size_t cap);
SSL *tn_tls_client(SSL_CTX **ctx_r, int fd);
/* Sends cmd (unless NULL) and reads one line: is it want? */
bool tn_tls_ask(SSL *ssl, const char *cmd, const char *want);

/* Listens with the protocol (tweak: the listener's limits; NULL: the
 * defaults, MAX_OUT of output), runs client in a second thread and the
 * loop until it is done; every accepted connection has closed by then.
 * Use run(): it names the client for the watchdog. */
void tn_run_client(fixture *f, bool implicit, const sm_net_listener_config *tweak,
		   void (*client)(fixture *f), const char *client_name);

/* The fixture of the test running (the client thread reads f->direct). */
extern fixture *tn_g_f;

/* cmocka setup and teardown of every test: a self-signed certificate in
 * a temporary directory, the TLS context, the loop, the watchdog. */
int tn_setup(void **state);
int tn_teardown(void **state);

/* SIGPIPE ignored, SIGALRM the watchdog: first thing in main(). */
void tn_signals(void);

#endif
