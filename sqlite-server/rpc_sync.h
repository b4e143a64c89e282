/*
 * A small blocking client of the sqlited protocol (docs/rpc.md), for tests
 * and for the `sealmail` admin CLI. Plain sockets and poll() with a
 * timeout on every wait; no event loop, no threads.
 *
 * Transport: a unix socket; TCP in the clear to loopback only
 * (rpc_sync_open_tcp refuses other addresses with ENG_EPERM: the protocol
 * forbids AUTH in the clear anywhere else); or, with rpc_sync_open_tls,
 * TLS under the policy of rpc_tls.h (any address; loopback in the clear
 * unless tls->always). TLS runs over memory BIOs on the same
 * non-blocking socket, so every wait has the same timeout.
 *
 * Two levels:
 *  - rpc_sync_call() and rpc_sync_call_ex(): one request at a time, waits
 *    for its whole answer (every RESPONSE part and any streamed body),
 *    uploads a body under the server's WINDOW credit and grants credit for
 *    a body it downloads. Frames for other request ids that arrive
 *    meanwhile are dropped.
 *  - rpc_sync_send() / rpc_sync_send_raw() / rpc_sync_recv(): single
 *    frames, for tests that pipeline requests or send malformed input.
 *
 * Errors: 0, or a negative rpc_err / eng_err. An ERROR frame from the
 * server for the request gives its code (an unknown code gives ENG_EIO);
 * RPC_ETIMEOUT when a wait passes the timeout; ENG_EIO when the
 * connection is closed or broken (rpc_sync_closed() then says true). After
 * a connection-level error (an ERROR with request id 0, a broken frame
 * from the server, a close) every later call fails.
 *
 * Not thread-safe: one thread uses one connection at a time.
 */
#ifndef RPC_SYNC_H
#define RPC_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "rpc_codec.h"
#include "rpc_tls.h"

typedef struct rpc_sync rpc_sync;

#define RPC_SYNC_DEFAULT_TIMEOUT_MS 30000

/*
 * Connects without the handshake (the next frame to read is the server's
 * HELLO). timeout_ms bounds every later wait (0: the default).
 */
int rpc_sync_open_unix(const char *path, int timeout_ms, rpc_sync **c_r);
/* host is a numeric address or a name that resolves to loopback. */
int rpc_sync_open_tcp(const char *host, uint16_t port, int timeout_ms,
		      rpc_sync **c_r);

/*
 * TCP with TLS where tls's rules want it (see rpc_tls.h): connects,
 * then does the TLS handshake and checks the server certificate against
 * tls->ca_file and tls->server_name (NULL: host). Errors: ENG_EINVAL
 * (no ca_file), ENG_EIO (a file does not load, or the connection broke),
 * RPC_ENOTAUTH (the certificate does not verify or name the host),
 * RPC_EPROTO (the TLS handshake failed otherwise: a plain server, a
 * protocol version or cipher it refuses), RPC_ETIMEOUT.
 */
int rpc_sync_open_tls(const char *host, uint16_t port,
		      const rpc_tls_config *tls, int timeout_ms, rpc_sync **c_r);
/* True when the connection is under TLS. */
bool rpc_sync_tls(const rpc_sync *c);

/*
 * HELLO -> AUTH -> AUTH_OK with the shared secret: checks the server's
 * proof before returning 0. An ERROR from the server gives its code
 * (RPC_ENOTAUTH for a wrong secret); a wrong server proof gives
 * RPC_ENOTAUTH too.
 */
int rpc_sync_handshake(rpc_sync *c, const uint8_t secret[32],
		       const char *peer_name);

/* rpc_sync_open_unix / _tcp followed by rpc_sync_handshake. */
int rpc_sync_connect_unix(const char *path, const uint8_t secret[32],
			  const char *peer_name, int timeout_ms,
			  rpc_sync **c_r);
int rpc_sync_connect_tcp(const char *host, uint16_t port,
			 const uint8_t secret[32], const char *peer_name,
			 int timeout_ms, rpc_sync **c_r);
int rpc_sync_connect_tls(const char *host, uint16_t port,
			 const rpc_tls_config *tls, const uint8_t secret[32],
			 const char *peer_name, int timeout_ms, rpc_sync **c_r);

/* Closes and frees; sets *c to NULL; accepts NULL. */
void rpc_sync_free(rpc_sync **c);

void rpc_sync_set_timeout(rpc_sync *c, int timeout_ms);
bool rpc_sync_closed(const rpc_sync *c);
/* The limits the server gave in AUTH_OK (0 before). */
uint32_t rpc_sync_max_frame(const rpc_sync *c);
uint32_t rpc_sync_max_in_flight(const rpc_sync *c);
/* A fresh request id (1, 2, ...; never 0). */
uint32_t rpc_sync_next_id(rpc_sync *c);

/* ---- one request, its whole answer ---- */

/*
 * The answer to a request. payload holds the payloads of every RESPONSE
 * part back to back, decoded into msg/view: repeated fields of all parts
 * appear in order (a packed list split over parts appears as several
 * fields of its tag, in order). body holds a downloaded body unless a
 * body_write callback took it.
 */
typedef struct rpc_sync_resp {
	eng_buf payload;
	rpc_msg msg;
	rpc_view view;
	unsigned parts;              /* RESPONSE frames received */
	bool has_body;               /* the RESPONSE had flag BODY */
	eng_buf body;
	uint64_t body_bytes;         /* bytes of body received */
} rpc_sync_resp;

#define RPC_SYNC_RESP_INIT { ENG_BUF_INIT, RPC_MSG_INIT, { NULL, 0 }, 0, false, ENG_BUF_INIT, 0 }

/* Frees the buffers; the struct is then as RPC_SYNC_RESP_INIT. */
void rpc_sync_resp_clear(rpc_sync_resp *resp);

/* Supplies upload bytes: count (> 0), 0 at the end, or < 0 to abort. */
typedef long rpc_sync_read_fn(void *ctx, void *buf, size_t len);
/* Takes download bytes: 0 or < 0 to abort (the request is cancelled). */
typedef int rpc_sync_write_fn(void *ctx, const void *data, size_t len);

typedef struct rpc_sync_call_opts {
	/* Upload (APPEND, DELIVER): set has_body; the body is body[0..body_len)
	 * or, if body_read is set, what it supplies. */
	bool has_body;
	const void *body;
	size_t body_len;
	rpc_sync_read_fn *body_read;
	void *body_read_ctx;
	/* Download: if set, body bytes go here instead of resp->body. */
	rpc_sync_write_fn *body_write;
	void *body_write_ctx;
	/* Download: more than this many body bytes aborts with ENG_ELIMIT
	 * (0: no bound besides memory). */
	uint64_t max_body_bytes;
} rpc_sync_call_opts;

/*
 * Sends REQUEST(opcode, payload) and waits for its answer. resp is
 * cleared first and filled on success; after an error it holds whatever
 * arrived before it. opts may be NULL.
 */
int rpc_sync_call_ex(rpc_sync *c, uint16_t opcode, const void *payload,
		     size_t payload_len, const rpc_sync_call_opts *opts,
		     rpc_sync_resp *resp);
int rpc_sync_call(rpc_sync *c, uint16_t opcode, const void *payload,
		  size_t payload_len, rpc_sync_resp *resp);

/* ---- single frames ---- */

/* Sends one frame (header built here). */
int rpc_sync_send(rpc_sync *c, uint8_t kind, uint8_t flags, uint16_t opcode,
		  uint32_t request_id, const void *payload, size_t payload_len);
/* Sends bytes as they are (tests: garbage, half frames). */
int rpc_sync_send_raw(rpc_sync *c, const void *data, size_t len);
/*
 * Waits up to timeout_ms (< 0: the connection's timeout) for the next
 * frame. *f_r's payload is valid until the next call on c. 0,
 * RPC_ETIMEOUT, ENG_EIO (closed), or the codec's error for a broken frame.
 */
int rpc_sync_recv(rpc_sync *c, int timeout_ms, rpc_frame *f_r);
/* Decodes an ERROR payload's CODE into a negative error (ENG_EIO if absent). */
int rpc_sync_error_code(const rpc_frame *f);

#endif
