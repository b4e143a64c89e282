/*
 * The private header of the frontends' network layer (net.h): the objects
 * the net*.c files share and the functions they call across files. Only
 * those files include it; the daemons and the tests use net.h.
 *
 * The layer, one file per concern:
 *   net.c        listeners (sm_net_listen, per-IP counts, their lifetime),
 *                accepting a connection, the connection accessors
 *   net_conn.c   a connection's life: reading, delivering input to the
 *                protocol, STARTTLS, kicks, timeouts, closing
 *   net_write.c  output: batches flushed once per loop turn, direct
 *                writes, the socket writes and their backpressure
 *   net_tls.c    TLS: the server context, the connection's BIO, records
 *                in and out
 *   net_addr.c   the loopback check (net_addr.h), shared with sqlited and
 *                the RPC clients
 * What one file calls in another carries the prefix smnet_ (sm_net_ is the
 * public API); everything else is static in its file.
 *
 * Objects and who owns them:
 *   sm_net_listener  one listening TCP handle, the per-IP counts, the list
 *                    of its connections' count. Freed when its handle has
 *                    closed and its last connection is gone.
 *   sm_net_conn      two libuv handles (the stream, the timeout timer);
 *                    freed when both have closed, right after on_close.
 *   net_write        one uv_write: its bytes live until its callback.
 *
 * Output batching: sm_net_write appends the plaintext to the connection's
 * pending buffer (allocated on demand) and puts the connection on its
 * listener's dirty list; the listener's prepare and check handles (started
 * only while the list is not empty) flush every dirty connection once per
 * loop turn: before the loop waits (writes made in timers and other
 * callbacks that run before the poll) and after the poll (writes made in
 * I/O callbacks). A flush is one uv_write of the whole batch (under TLS,
 * one SSL_write, so full records, and one uv_write of the records); the
 * buffer is freed with it, so an idle connection holds none. A batch that
 * reaches NET_FLUSH_BYTES is flushed at once. Before STARTTLS switches the
 * stream, before close_notify and a graceful close's shutdown, the batch
 * is flushed first, so the order of the bytes is the order of the writes.
 * sm_net_write_direct (a streamed body's bytes) skips the copy into the
 * batch: in plaintext the batch and the bytes go out in one writev at
 * once, unless libuv still has writes queued, and only what the socket
 * does not take is copied onto the queue; under TLS both go through
 * SSL_write from where they are, their records in one write.
 *
 * Connection states:
 *
 *   OPEN --sm_net_close / EOF--> CLOSING (shutdown: queued output flushed,
 *     |                                   grace timer) --> handles closing
 *     +--error / timeout / flood / sm_net_abort --------> handles closing
 *                                                           --> on_close, freed
 *
 * Reading is on exactly when: not closing, no EOF yet, the output queue
 * is under its bound, and the input buffer has room. Under TLS the socket's
 * bytes go into tls_in (read by OpenSSL through the connection's BIO) and
 * SSL_read() fills the input buffer only up to its bound, so a held
 * connection buffers at most max_input_bytes of plaintext plus one read.
 *
 * Memory of an idle connection (IMAP IDLE keeps thousands open): the
 * struct, its two libuv handles and, under TLS, OpenSSL's objects (the SSL,
 * its session, cipher contexts, one BIO). Every buffer (input, pending
 * output, TLS records in either direction, OpenSSL's record buffers:
 * SSL_MODE_RELEASE_BUFFERS) is freed when it drains; the "kick" that
 * re-offers input from a later loop turn is a list on the listener with
 * one timer, and the shutdown request is allocated only at a graceful
 * close.
 */
#ifndef NET_PRIVATE_H
#define NET_PRIVATE_H

#include "net.h"

#include "buf.h"

#include <netinet/in.h>
#include <openssl/ssl.h>

#define NET_READ_BYTES 16384
/* A pending batch of output this large is written at once. */
#define NET_FLUSH_BYTES (64u * 1024)

typedef struct net_ip {
	struct net_ip *next;
	unsigned n;
	char addr[INET6_ADDRSTRLEN];
} net_ip;

struct sm_net_listener {
	uv_loop_t *loop;
	uv_tcp_t tcp;
	sm_net_listener_config cfg;
	char *address;
	char *name;
	char *limit_reply;           /* copy of cfg.limit_reply, or NULL */
	uint16_t port;
	unsigned n_conns;            /* allocated connections, counted or not */
	unsigned n_counted;          /* connections past the limits */
	net_ip *ips;
	/* Output batching: connections with pending output, and the
	 * handles that flush them once per loop turn. */
	sm_net_conn *dirty;
	uv_prepare_t flush_prep;
	uv_check_t flush_check;
	bool flush_active;
	bool flush_closing;
	unsigned flush_closed;       /* of the three handles */
	/* Kicks (input re-offered from a later loop turn): connections
	 * waiting for the timer, and those of the turn being run. */
	sm_net_conn *kicks, *kicking;
	uv_timer_t kick_timer;
	bool closing;
	bool tcp_closed;
	void (*done)(void *ctx);
	void *done_ctx;
};

struct sm_net_conn {
	sm_net_listener *l;
	uv_tcp_t tcp;
	uv_timer_t timer;
	unsigned handles_open;
	void *ctx;
	SSL *ssl;                    /* its one BIO reads tls_in, writes tls_out */
	eng_buf tls_in;              /* ciphertext from the socket ... */
	size_t tls_in_off;           /* ... OpenSSL has read this much of */
	eng_buf tls_out;             /* records for the socket */
	eng_buf tls_early;           /* plaintext written before the handshake ended */
	eng_buf in;                  /* plaintext input not yet consumed */
	eng_buf pend;                /* output of this loop turn, not sent yet */
	sm_net_conn *dirty_next, *dirty_prev;
	sm_net_conn *kick_next, *kick_prev;
	bool dirty;                  /* on the listener's dirty list */
	size_t out_bytes;
	unsigned gen;                /* bumped when the input is discarded */
	enum sm_net_reason why;
	uint64_t accepted_ms, last_ms;
	bool accepted;               /* on_accept was called: on_close is owed */
	bool counted;                /* in the listener's per-IP counts */
	bool loopback;
	bool reading;
	bool held;
	bool out_paused;
	bool peer_eof;
	bool tls_done;
	bool closing;                /* no more input or writes */
	bool handles_closing;
	uint8_t kick_list;           /* 0, or on l->kicks (1) / l->kicking (2) */
	bool in_deliver;
	bool starttls_pending;       /* asked for inside on_data */
	char addr[INET6_ADDRSTRLEN];
};

/* net.c */
void smnet_ip_release(sm_net_listener *l, const char *addr);
void smnet_listener_maybe_free(sm_net_listener *l);

/* net_conn.c */
void smnet_update_reading(sm_net_conn *c);
void smnet_conn_abort(sm_net_conn *c, enum sm_net_reason why);
void smnet_conn_close_graceful(sm_net_conn *c, enum sm_net_reason why);
void smnet_starttls_now(sm_net_conn *c);
void smnet_kick_later(sm_net_conn *c);
void smnet_on_timer(uv_timer_t *t);

/* net_write.c */
void smnet_wire_write(sm_net_conn *c, const void *data, size_t len);
void smnet_wire_write_owned(sm_net_conn *c, eng_buf *b);
void smnet_dirty_add(sm_net_conn *c);
void smnet_dirty_remove(sm_net_conn *c);
void smnet_out_flush(sm_net_conn *c);

/* net_tls.c */
void smnet_tls_flush(sm_net_conn *c);
void smnet_tls_send(sm_net_conn *c, const void *data, size_t len);
void smnet_tls_direct(sm_net_conn *c, const void *data, size_t len);
void smnet_tls_pump(sm_net_conn *c);
void smnet_ssl_start(sm_net_conn *c);

#endif
