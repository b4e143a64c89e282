/*
 * The network layer every protocol frontend shares (POP3 now; IMAP, MX and
 * submission later): a TCP listener, connections with implicit TLS or a
 * later STARTTLS upgrade, raw bytes in, a bounded output queue out, idle and
 * total timeouts, and a per-IP connection limit (a refused plaintext client
 * may be told why: limit_reply). One libuv loop per
 * process; every function is called on the loop's thread.
 *
 * Input. Bytes read from the socket (decrypted under TLS) go into the
 * connection's input buffer (at most max_input_bytes) and are handed to the
 * protocol's on_data callback, which returns how many it consumed (a
 * protocol parser decides what a line is; net knows nothing of lines):
 *
 *  - consumed < len: the rest stays buffered and is offered again, with
 *    more bytes, when more arrive. A protocol must consume (or reject) a
 *    line prefix before the buffer is full: a full buffer of which nothing
 *    is consumed is closed as a flood.
 *  - sm_net_hold(c) (typically while a command waits for sqlited): no more
 *    on_data calls until sm_net_resume(c), which offers the buffered bytes
 *    again from a later loop turn (never from inside the call). Meanwhile
 *    the socket is still read until the buffer is full (pipelining).
 *
 * Output. sm_net_write() copies the bytes (through TLS when it is on) onto
 * the output queue. When the queue passes max_output_bytes, reading and
 * on_data stop; when it has drained to half of it, they restart and
 * on_drained (if set) is called, so a producer that streams (a POP3 RETR)
 * writes while sm_net_write_blocked() is false and waits for on_drained
 * otherwise. A client that does not read therefore never makes the
 * server buffer without bound.
 *
 * STARTTLS (POP3 STLS, IMAP STARTTLS, SMTP STARTTLS). The protocol writes
 * its "go ahead" answer, then calls sm_net_starttls(c): every plaintext
 * byte the client sent after the command and that is still buffered is
 * DISCARDED, never executed (CVE-2011-0411: commands injected in plaintext
 * before the handshake must not run inside the TLS session). From then on
 * the socket carries TLS.
 *
 * Closing. Whatever the cause (the protocol's sm_net_close, EOF, a
 * socket or TLS error, a timeout, a flood), on_close is called exactly
 * once, from a later loop turn, when the connection's handles are closed;
 * the connection is freed right after it returns, so the protocol drops
 * its pointer there. Between the start of a close and on_close,
 * sm_net_closing() is true, writes are ignored and on_data is not called.
 * A graceful close (sm_net_close) sends TLS close_notify and lets the
 * queued output reach the client first (bounded by a grace timer).
 *
 * Logging: addresses and reasons only, never payload bytes.
 */
#ifndef SM_NET_H
#define SM_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct sm_net_tls sm_net_tls;
typedef struct sm_net_listener sm_net_listener;
typedef struct sm_net_conn sm_net_conn;

/* Why a connection ended (given to on_close, also logged). */
enum sm_net_reason {
	SM_NET_CLOSED = 0,       /* the protocol closed it */
	SM_NET_EOF = 1,          /* the client closed it */
	SM_NET_ERROR = 2,        /* socket error */
	SM_NET_TLS_ERROR = 3,    /* handshake or record failure */
	SM_NET_IDLE = 4,         /* idle_timeout_ms without traffic */
	SM_NET_TOTAL = 5,        /* total_timeout_ms since accept */
	SM_NET_FLOOD = 6,        /* input buffer full and nothing consumed */
	SM_NET_LIMIT = 7,        /* per-IP or total connection limit */
	SM_NET_SHUTDOWN = 8,     /* the listener is being closed */
};

/* ---- TLS server context ---- */

/*
 * Loads a certificate chain and key (PEM) into a server context: TLS 1.2
 * and 1.3 only, Mozilla "intermediate" cipher list, no compression, no
 * renegotiation, session tickets off. 0, or ENG_EIO with a malloc'd
 * sentence in *err_r (paths and OpenSSL's reason; never key material).
 */
int sm_net_tls_new(const char *cert_path, const char *key_path,
		   sm_net_tls **tls_r, char **err_r);
/*
 * Reloads the files it was made from (SIGHUP). On success new connections
 * use the new certificate, connections already open keep theirs. On
 * failure the old certificate stays in use and the error is returned.
 */
int sm_net_tls_reload(sm_net_tls *tls, char **err_r);
/* Frees; sets *tls to NULL; accepts NULL. Connections keep their own
 * reference to the OpenSSL context, so this is safe while they live. */
void sm_net_tls_free(sm_net_tls **tls);

/* ---- Listener ---- */

typedef struct sm_net_callbacks {
	/* A new connection (required). Set its context with sm_net_set_ctx;
	 * the greeting may be written here (under implicit TLS it is sent
	 * when the handshake is done). */
	void (*on_accept)(sm_net_conn *c, void *listener_ctx);
	/* Buffered input (required); returns the bytes consumed (<= len). */
	size_t (*on_data)(sm_net_conn *c, void *ctx, const uint8_t *p, size_t len);
	/* The output queue drained below half of max_output_bytes (optional). */
	void (*on_drained)(sm_net_conn *c, void *ctx);
	/* The connection is gone (required); see "Closing" above. */
	void (*on_close)(sm_net_conn *c, void *ctx, enum sm_net_reason why);
} sm_net_callbacks;

typedef struct sm_net_listener_config {
	const char *address;         /* IPv4 or IPv6 literal */
	uint16_t port;               /* 0: an ephemeral port (tests) */
	bool implicit_tls;           /* TLS from the first byte (needs tls) */
	sm_net_tls *tls;             /* may be NULL: no TLS, no STARTTLS */
	const char *name;            /* for the log: "pop3s" */
	uint32_t idle_timeout_ms;    /* 0: 10 minutes */
	uint32_t total_timeout_ms;   /* 0: 24 hours */
	uint32_t close_grace_ms;     /* 0: 5 s to flush output at a close */
	size_t max_input_bytes;      /* 0: 64 KiB */
	size_t max_output_bytes;     /* 0: 256 KiB */
	unsigned max_conns;          /* 0: 1024 */
	unsigned max_conns_per_ip;   /* 0: 20 */
	/* Written to a plaintext connection refused for max_conns or
	 * max_conns_per_ip (SM_NET_LIMIT) before it is closed, e.g.
	 * "421 4.7.0 Too many connections from your address\r\n"; NULL:
	 * closed silently (copied, like address and name). Never
	 * sent on an implicit-TLS listener: a refused client gets no
	 * handshake (no CPU spent on it), only the close. */
	const char *limit_reply;
	const sm_net_callbacks *cb;
	void *ctx;                   /* given to on_accept */
} sm_net_listener_config;

/*
 * Binds and listens. cfg is copied (not the tls object, which must outlive
 * the listener). ENG_EINVAL (bad address; implicit_tls without tls),
 * ENG_EIO (bind/listen failed; logged with the reason).
 */
int sm_net_listen(uv_loop_t *loop, const sm_net_listener_config *cfg,
		  sm_net_listener **l_r);
/* The bound port (useful with port 0). */
uint16_t sm_net_listener_port(const sm_net_listener *l);
/* Open connections of this listener. */
unsigned sm_net_listener_conns(const sm_net_listener *l);
/*
 * Stops accepting and frees the listener once its last connection is gone
 * (connections are not closed by this: the protocol says goodbye and
 * closes them, or they end by themselves). done (may be NULL) is called
 * then, from a later loop turn.
 */
void sm_net_listener_close(sm_net_listener *l, void (*done)(void *ctx),
			   void *ctx);

/* ---- Connections ---- */

void sm_net_set_ctx(sm_net_conn *c, void *ctx);
void *sm_net_get_ctx(const sm_net_conn *c);

/* The peer's IP address as text ("192.0.2.1", "::1"). */
const char *sm_net_peer_addr(const sm_net_conn *c);
/* The peer's address is 127.0.0.0/8 or ::1 (or v4-mapped loopback). */
bool sm_net_is_loopback(const sm_net_conn *c);
/* TLS is on and its handshake has finished. */
bool sm_net_is_tls(const sm_net_conn *c);
/*
 * The negotiated protocol and cipher, as Received headers give them:
 * "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"; "" when
 * TLS is not on. Returns buf.
 */
const char *sm_net_tls_describe(const sm_net_conn *c, char *buf, size_t len);
/* STARTTLS is possible: a context is configured and TLS is not on yet. */
bool sm_net_can_starttls(const sm_net_conn *c);
bool sm_net_closing(const sm_net_conn *c);

/* Queues bytes for the client (copied). Ignored while closing. */
void sm_net_write(sm_net_conn *c, const void *data, size_t len);
/*
 * The same as sm_net_write (the same order, bound and accounting), for
 * large bytes in memory the caller reuses at once (a body streamed from
 * sqlited): on a plaintext connection with no write waiting in libuv,
 * the pending batch and these bytes (8 KiB together at least) go to the
 * socket in one writev from where they are, and only what the socket
 * does not take is copied onto the queue (while libuv has writes queued,
 * it is sm_net_write). Under TLS the batch and the bytes go through
 * SSL_write from where they are, their records in one write. Small
 * bytes, and before the TLS handshake ends: sm_net_write.
 */
void sm_net_write_direct(sm_net_conn *c, const void *data, size_t len);
/* Bytes queued and not yet written to the socket. */
size_t sm_net_write_queued(const sm_net_conn *c);
/* The output queue is over max_output_bytes: stop producing until
 * on_drained. */
bool sm_net_write_blocked(const sm_net_conn *c);

/* Stops on_data calls until sm_net_resume. */
void sm_net_hold(sm_net_conn *c);
/* Offers buffered input again (from a later loop turn). */
void sm_net_resume(sm_net_conn *c);

/*
 * Starts TLS on a plaintext connection after the protocol's answer to its
 * STARTTLS command was written. Called from on_data (the usual case), it
 * takes effect when on_data returns: the bytes it consumed (the command
 * line) are dropped as usual, every byte after them is discarded (and
 * logged with its count), and no further on_data call sees them. Called
 * elsewhere, the whole buffered input is discarded at once. 0, or
 * ENG_EPERM when TLS is already on (or asked for) or no context is
 * configured.
 */
int sm_net_starttls(sm_net_conn *c);

/* Closes gracefully (output flushed, TLS close_notify). Idempotent. */
void sm_net_close(sm_net_conn *c);
/* Closes at once, dropping queued output. Idempotent. */
void sm_net_abort(sm_net_conn *c);

#endif
