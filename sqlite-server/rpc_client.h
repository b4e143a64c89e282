/*
 * The client library of the sqlited protocol (docs/rpc.md) that frontends
 * use: non-blocking on a libuv loop, pipelined (many requests in flight
 * on one connection, answered in any order, matched by request id),
 * streaming bodies both ways under the protocol's WINDOW flow control.
 *
 * One rpc_client owns one connection to sqlited at a time and keeps it up:
 * it connects at rpc_client_new, does HELLO -> AUTH -> AUTH_OK with the
 * shared secret (checking the server's proof before any request goes out),
 * and after a drop reconnects with exponential backoff (backoff_min_ms
 * doubling up to backoff_max_ms, reset by a successful handshake).
 *
 * Requests and their callback. Every accepted request (rpc_client_call*
 * returned 0) gets its callback exactly once: the result, an error from
 * the server, RPC_ETIMEOUT, RPC_ECANCELLED, RPC_EUNAVAILABLE or
 * RPC_ENOTAUTH. A call that returns an error never fires it.
 *
 *  - Answers in MORE parts are concatenated: the callback sees one view of
 *    the fields of all parts in order (as docs/rpc.md defines the answer),
 *    bounded by cfg->max_response_bytes (ENG_ELIMIT past it).
 *  - The view and everything it points into are valid only during the
 *    callback.
 *  - A timed-out request gets RPC_ETIMEOUT once; the library sends CANCEL
 *    and silently drops whatever the server still sends for it. Its id
 *    stays in use (and counts as in flight) until the server finishes it.
 *
 * Queueing: a request made while the connection is down, or while the
 * server's MAX_IN_FLIGHT is reached (or half of it by may_wait requests,
 * for one of those), waits in a FIFO queue bounded by
 * cfg->max_queued (past it, rpc_client_call returns RPC_EUNAVAILABLE at
 * once, without a callback). A queued request is sent when there is room;
 * its timeout runs from the call, waiting included. After a failed
 * handshake with a wrong secret (the server's ENOTAUTH, or a server proof
 * that does not verify) every queued request gets RPC_ENOTAUTH, since
 * waiting cannot help.
 *
 * A dropped connection: every request that had been sent gets
 * RPC_EUNAVAILABLE (never a silent loss) unless it was made with retries
 * (see rpc_client_opts.retries), in which case it is put back at the head
 * of the queue and sent again, with the same payload, on the next
 * connection.
 *
 * Idempotency: APPEND and DELIVER store a message, so resending one after a
 * drop (the server may have stored it and the answer was lost) is safe only
 * with an IDEMPOTENCY_KEY in the payload: the server then stores it once.
 * Generate one with rpc_client_idem_key(); retries > 0 on APPEND/DELIVER
 * without a T_IDEMPOTENCY_KEY field is refused (ENG_EINVAL). Other opcodes
 * are resent only if the caller asks (it knows whether they are
 * idempotent: PING, FETCH_*, SEARCH are; COPY is not).
 *
 * Transport: a unix socket, or TCP to a numeric address (no name
 * resolution). With cfg->tls set, TCP uses TLS under rpc_tls.h's policy
 * whenever the address is not loopback, or always with tls->always: the
 * handshake (memory BIOs on the libuv stream) comes first, then every
 * frame goes through it, and the server certificate must chain to
 * tls->ca_file and name tls->server_name (NULL: host). A certificate that
 * does not verify fails the connection with RPC_ENOTAUTH, like a wrong
 * secret (queued requests fail too); other TLS failures with RPC_EPROTO,
 * and the client keeps reconnecting. Without cfg->tls a non-loopback
 * address is refused with ENG_EPERM (the protocol forbids AUTH in the
 * clear there).
 *
 * Single-threaded: every function is called on the loop's thread.
 */
#ifndef RPC_CLIENT_H
#define RPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "rpc_auth.h"
#include "rpc_codec.h"
#include "rpc_tls.h"

typedef struct rpc_client rpc_client;

/*
 * The timeout frontends give UNLOCK (a login), instead of the per-request
 * default: a first login runs Argon2id in sqlited, under a concurrency cap,
 * so after a restart of sqlited (every alias locked again) a burst of
 * logins queues there for a while. sqlited bounds that queue and answers
 * at once with ENG_EBUSY when it is full (docs/rpc.md, UNLOCK), so a login
 * that waits is one that will be served: it may take minutes, not fail
 * after the default 30 s. A dropped connection still fails it at once
 * (RPC_EUNAVAILABLE). Shorter than the frontends' idle timeouts (POP3 10
 * minutes, IMAP 31), so a waiting login is never cut by them.
 */
#define RPC_CLIENT_LOGIN_TIMEOUT_MS (5u * 60 * 1000)
/* The options of a login's UNLOCK: that timeout, and may_wait. */
#define RPC_CLIENT_LOGIN_OPTS { .timeout_ms = RPC_CLIENT_LOGIN_TIMEOUT_MS, \
				.may_wait = true }

/* The connection came up (err 0) or went down / failed (err < 0). */
typedef void rpc_client_state_fn(void *ctx, bool up, int err);

typedef struct rpc_client_config {
	/* Target: unix_path, or host (numeric, loopback) and port. */
	const char *unix_path;
	const char *host;
	uint16_t port;
	/* TLS for TCP (see above); NULL: loopback in the clear only. The
	 * files are read at rpc_client_new; the struct need not outlive it. */
	const rpc_tls_config *tls;
	/* The 32-byte shared secret; copied into guarded memory. */
	const uint8_t *secret;
	/* Our name in the server's log and access rules ("imap@mx1"). */
	const char *peer_name;
	/* Per-request default timeout (0: 30 s). */
	uint32_t timeout_ms;
	/* Connect + handshake must finish within this (0: 10 s). */
	uint32_t connect_timeout_ms;
	/* Reconnect delay: starts at min, doubles up to max (0: 100 ms, 10 s). */
	uint32_t backoff_min_ms;
	uint32_t backoff_max_ms;
	/* Requests in flight at most (0 or above the server's: the server's
	 * MAX_IN_FLIGHT). */
	uint32_t max_in_flight;
	/* Requests waiting to be sent at most (0: 1024). */
	uint32_t max_queued;
	/* Bound on one answer's concatenated RESPONSE parts (0: 64 MiB). */
	uint32_t max_response_bytes;
	/* Optional: told of every connection up / down. */
	rpc_client_state_fn *on_state;
	void *state_ctx;
} rpc_client_config;

/*
 * The completion callback. err is 0 and resp the response fields (all
 * MORE parts concatenated), or err < 0 and resp NULL. For a download, it
 * comes after the last chunk went to the data callback.
 */
typedef void rpc_client_cb(void *ctx, int err, const rpc_view *resp);

/*
 * Upload source: writes up to len (> 0) bytes of the body to buf and
 * returns the count, 0 at the end of the body, or < 0 to abort (the
 * request is cancelled and its callback gets that error). Called only
 * while the server's window has credit and the library's write queue is
 * short, so it is asked for at most 256 KiB at a time and never for more
 * than the window allows: a 50 MB body is never in memory.
 */
typedef long rpc_client_source_fn(void *ctx, uint8_t *buf, size_t len);
/*
 * What a source returns when it has no byte yet but the body is not over
 * (a frontend relaying a client's upload as it arrives): nothing is sent
 * and the source is not asked again until rpc_client_source_ready(id).
 */
#define RPC_CLIENT_WAIT (-1000000L)
/* Restarts the source from the first byte (for a retry); 0 or < 0. */
typedef int rpc_client_rewind_fn(void *ctx);
/* Optional: at most how many bytes the source gives now. The DATA frame is
 * allocated for that many, not for the most allowed (256 KiB per frame
 * made the imapd's heap grow and shrink each APPEND); when it says 0, the
 * source is asked for 0 bytes and must end (0) or wait. */
typedef size_t rpc_client_source_size_fn(void *ctx);

/* What a data callback returns to keep the bytes' credit (see below). */
#define RPC_CLIENT_HOLD 1

/*
 * Download sink: called for each chunk of a streamed body (FETCH_BODY) as
 * it arrives, with the response fields in head (SIZE, MIME, ...). data is
 * valid during the call only; end is true on the last call (len may be 0).
 * Returns:
 *   0                 the bytes are consumed: the library may grant the
 *                     server credit for them;
 *   RPC_CLIENT_HOLD   the caller took them but is still busy with them
 *                     (its own output is full): no credit is granted until
 *                     it calls rpc_client_consumed(), so the server stops
 *                     after at most one window (256 KiB) of unconsumed
 *                     bytes: backpressure;
 *   < 0               abort: the request is cancelled, and its callback
 *                     gets this error.
 */
typedef int rpc_client_data_fn(void *ctx, uint32_t id, const rpc_view *head,
			       const uint8_t *data, size_t len, bool end);

typedef struct rpc_client_opts {
	/* 0: the client's default. */
	uint32_t timeout_ms;
	/* Upload (flag BODY): set has_body, and either body/body_len (not
	 * copied: it must stay valid until the callback) or source. */
	bool has_body;
	const void *body;
	size_t body_len;
	rpc_client_source_fn *source;
	rpc_client_rewind_fn *rewind;   /* needed for retries with a source */
	rpc_client_source_size_fn *source_size;     /* optional */
	void *source_ctx;
	/* Download: where the body goes. Without it a body is discarded. */
	rpc_client_data_fn *data;
	void *data_ctx;
	/* Resend this many times after a dropped connection instead of
	 * failing with RPC_EUNAVAILABLE (see the idempotency note above). A
	 * download is not resent once a chunk reached the data callback. */
	unsigned retries;
	/* The server may keep it long (UNLOCK: a login in sqlited's Argon2id
	 * queue). Such requests hold at most half of the in-flight slots (at
	 * least one): past that they stay queued, in order, while other
	 * requests are sent past them, so a burst of logins never holds up
	 * the requests of users already logged in. */
	bool may_wait;
	/* Download: the window to keep open, 0 or at most the initial one
	 * (256 KiB) for that; more (at most 16 MiB) is granted when the
	 * RESPONSE with BODY arrives, and credit then goes back in halves of
	 * it. A long stream then comes in larger pieces (FETCH_BODIES). */
	uint32_t recv_window;
} rpc_client_opts;

/*
 * Creates a client on loop and starts connecting. cfg is copied (strings
 * included, the secret into sodium_malloc'd memory). ENG_EINVAL for a
 * bad configuration, ENG_EPERM for a non-loopback TCP address without
 * cfg->tls, ENG_EIO when a TLS file does not load (logged).
 */
int rpc_client_new(uv_loop_t *loop, const rpc_client_config *cfg,
		   rpc_client **c_r);

/*
 * Sends a request (or queues it, see above). payload is the request's
 * fields, copied. timeout_ms 0: the default. *id_r (may be NULL) gets the
 * request id, for rpc_client_cancel. Errors (no callback then):
 * RPC_EFRAMESIZE (payload too large for one frame), RPC_EUNAVAILABLE
 * (queue full, or the client is closing), ENG_EINVAL.
 */
int rpc_client_call(rpc_client *c, uint16_t opcode, const void *payload,
		    size_t len, uint32_t timeout_ms, rpc_client_cb *cb,
		    void *ctx, uint32_t *id_r);
/* The same with a body to upload, a data sink, or retries (opts may be NULL). */
int rpc_client_call_ex(rpc_client *c, uint16_t opcode, const void *payload,
		       size_t len, const rpc_client_opts *opts,
		       rpc_client_cb *cb, void *ctx, uint32_t *id_r);
/*
 * An upload of a body in memory (not copied; valid until the callback),
 * resent up to retries times after a dropped connection. For APPEND and
 * DELIVER the payload must carry T_IDEMPOTENCY_KEY when retries > 0.
 */
int rpc_client_call_retry(rpc_client *c, uint16_t opcode,
			  const void *payload, size_t len, const void *body,
			  size_t body_len, unsigned retries, rpc_client_cb *cb,
			  void *ctx, uint32_t *id_r);

/*
 * Abandons a request: its callback fires with RPC_ECANCELLED before this
 * returns; if it had been sent, CANCEL goes to the server and whatever the
 * server still sends for it is dropped. ENG_ENOTFOUND if id is not a
 * request waiting for its callback (then nothing happens).
 */
int rpc_client_cancel(rpc_client *c, uint32_t id);

/*
 * Reports that n bytes a data callback returned RPC_CLIENT_HOLD for are
 * consumed; the library grants the server credit for them (in whole
 * multiples of half a window; the rest waits for more). ENG_ENOTFOUND for an unknown or finished id (harmless).
 */
int rpc_client_consumed(rpc_client *c, uint32_t id, size_t n);

/* The source of upload id has bytes again (after RPC_CLIENT_WAIT): sending
 * resumes. ENG_ENOTFOUND for an unknown or finished id (harmless). */
int rpc_client_source_ready(rpc_client *c, uint32_t id);

/*
 * A fresh idempotency key: 16 random bytes as 32 lowercase hex digits and
 * a NUL. Attach it as T_IDEMPOTENCY_KEY to APPEND / DELIVER. 0 or ENG_EIO.
 */
#define RPC_IDEM_KEY_CHARS 32
int rpc_client_idem_key(char key[RPC_IDEM_KEY_CHARS + 1]);

/* True while a connection is authenticated and usable. */
bool rpc_client_connected(const rpc_client *c);
/* Requests sent and not finished (timed-out ones included), and queued. */
size_t rpc_client_in_flight(const rpc_client *c);
/*
 * Gives back what the connection's reading grew to fit the largest frame
 * and response seen (the frame buffer, wiped: it held the last body
 * fetched; the field array of the largest response part), for a caller
 * that has gone quiet. Between frames only; safe at any time from the
 * loop outside the client's callbacks.
 */
void rpc_client_trim(rpc_client *c);
size_t rpc_client_queued(const rpc_client *c);
/* Bytes handed to libuv and not yet written (bounded while uploading). */
size_t rpc_client_write_queue_bytes(const rpc_client *c);

typedef void rpc_client_close_fn(void *ctx);

/*
 * Closes: every request still waiting gets RPC_ECANCELLED (before this
 * returns), the connection and the timers are closed, and when the last
 * handle's close callback has run, cb (may be NULL) is called and the
 * client freed. No call may be made on c after this. Safe inside a
 * request's callback.
 */
void rpc_client_close(rpc_client *c, rpc_client_close_fn *cb, void *ctx);

#endif
