/*
 * The private header of the non-blocking, pipelined client of the sqlited
 * protocol (rpc_client.h): the objects the rpc_client*.c files share and
 * the functions they call across files. Only those files include it;
 * everyone else uses rpc_client.h.
 *
 * The client, one file per concern:
 *   rpc_client.c       the public API (rpc_client.h): new, calls, cancel,
 *                      flow control from the caller, close
 *   rpc_client_req.c   requests: the lists and the id hash, finishing and
 *                      aborting, sending REQUEST frames, deadlines
 *   rpc_client_conn.c  connections: writes (plain and TLS), connecting,
 *                      TLS set-up, teardown and reconnecting
 *   rpc_client_read.c  reading: TLS records, frames (a large DATA frame
 *                      passed on in pieces), the handshake, answers
 *   rpc_client_body.c  body streams: upload chunks and their window,
 *                      download DATA frames and the credit granted back
 * What one file calls in another carries the prefix rpcc_; everything
 * else is static in its file.
 *
 * Objects and their lifetimes:
 *  - rpc_client: freed only after rpc_client_close, once every handle it
 *    owns (two timers, every connection it ever opened) has run its close
 *    callback (c->handles counts them).
 *  - rpc_conn: one connection attempt. Freed in its handle's close
 *    callback, never earlier, so a libuv callback that still arrives for
 *    it (connect, write) finds it; c->conn points only at the live one.
 *  - rpc_req: one request. It is in the id hash and in exactly one of two
 *    lists: c->queue (QUEUED: not sent) or c->active (SENT, or ZOMBIE: its
 *    callback has fired - timeout, cancel, a local error - but the server
 *    has not finished it, so its id stays taken and its frames are read
 *    and dropped). An uploading request is also on c->uploads.
 *
 * Request state machine:
 *
 *   call ──► QUEUED ──(room, connection ready)──► SENT ──(last answer)──► freed, cb(0)
 *              │  timeout / cancel: cb, freed       │ ERROR: cb(code), freed
 *              │                                    │ timeout / cancel / local error:
 *              │                                    ▼ cb(err), CANCEL sent
 *              │                                  ZOMBIE ──(server finishes it)──► freed
 *              ▲                                    │
 *              └──── connection drop with retries ──┘  (otherwise cb(EUNAVAILABLE))
 *
 * Reentrancy: user callbacks run from inside frame processing and may call
 * anything, rpc_client_close included. So a request is unlinked before its
 * completion callback runs; a request whose data callback is running is
 * pinned (freeing it then only marks it dead); the read loop stops as soon
 * as its connection is torn down; lists are drained by popping heads.
 */
#ifndef RPC_CLIENT_PRIVATE_H
#define RPC_CLIENT_PRIVATE_H

#include "rpc_client.h"

#include <openssl/ssl.h>
#include <sys/socket.h>

#define DEFAULT_SERVER_IN_FLIGHT 256u
#define READ_BUF_BYTES (64u * 1024)
#define HASH_BUCKETS 1024u

enum req_state { RQ_QUEUED, RQ_SENT, RQ_ZOMBIE };
enum conn_state { CS_CONNECTING, CS_WAIT_HELLO, CS_WAIT_AUTH_OK, CS_READY, CS_CLOSED };

typedef struct rpc_req rpc_req;

typedef struct req_list {
	rpc_req *head;
	rpc_req *tail;
	size_t n;
} req_list;

struct rpc_req {
	rpc_client *c;
	uint32_t id;
	uint16_t opcode;
	uint8_t state;               /* enum req_state */
	bool may_wait;               /* opts.may_wait: see rpcc_flush_queue */
	bool pinned;                 /* its data callback is running */
	bool dead;                   /* freed while pinned */
	rpc_req *prev, *next;        /* c->queue or c->active */
	rpc_req *up_prev, *up_next;  /* c->uploads */
	bool on_uploads;
	rpc_req *hnext;
	eng_buf payload;             /* the request's fields, kept for a resend */
	uint64_t deadline_ms;        /* uv_now() scale */
	rpc_client_cb *cb;
	void *ctx;
	unsigned retries;
	/* upload */
	bool has_body;
	const uint8_t *body;
	size_t body_len;
	size_t body_off;
	rpc_client_source_fn *source;
	rpc_client_rewind_fn *rewind;
	rpc_client_source_size_fn *source_size;
	void *source_ctx;
	uint64_t send_window;
	bool source_waiting;         /* the source said RPC_CLIENT_WAIT */
	bool body_sent;              /* DATA with END is out */
	/* answer */
	eng_buf resp;                /* RESPONSE parts back to back */
	unsigned parts;
	rpc_msg msg;
	rpc_view head;
	bool in_body;
	uint64_t recv_window;        /* DATA bytes the server may still send */
	uint64_t unacked;            /* consumed, not yet granted back */
	uint64_t window_goal;        /* the window kept open (opts) */
	bool delivered;              /* a chunk reached the data callback */
	rpc_client_data_fn *data;
	void *data_ctx;
};

typedef struct rpc_conn {
	union {
		uv_handle_t h;
		uv_stream_t s;
		uv_pipe_t pipe;
		uv_tcp_t tcp;
	} u;
	uv_connect_t creq;
	rpc_client *c;
	rpc_reader *rd;
	int state;                   /* enum conn_state */
	int dead_err;                /* a write failed: tear down from the timer */
	uint8_t server_nonce[RPC_NONCE_BYTES];
	uint8_t client_nonce[RPC_NONCE_BYTES];
	uint8_t rbuf[READ_BUF_BYTES];
	/* TLS: the stream carries records; frames go through ssl (memory
	 * BIOs: rbio gets what the socket read, wbio what it must write). */
	SSL *ssl;
	BIO *rbio, *wbio;
	eng_buf tls_early;           /* frames queued before the handshake ended */
	uint8_t pbuf[16384];         /* decrypted bytes */
	/* A DATA frame larger than what one read brought, passed on in
	 * pieces as they arrive (on_plain): its header, and its payload
	 * bytes still to come. */
	rpc_frame pass;
	size_t pass_left;
} rpc_conn;

typedef struct wreq {
	uv_write_t w;
	rpc_conn *conn;
	eng_buf b;
} wreq;

struct rpc_client {
	uv_loop_t *loop;
	bool is_unix;
	char *unix_path;
	struct sockaddr_storage addr;
	SSL_CTX *ssl_ctx;            /* set: TCP connections use TLS */
	char *tls_name;              /* what the server certificate must name */
	uint8_t *secret;             /* sodium_malloc'd, RPC_SECRET_BYTES */
	char *peer_name;
	uint32_t timeout_ms;
	uint32_t connect_timeout_ms;
	uint32_t backoff_min_ms;
	uint32_t backoff_max_ms;
	uint32_t backoff_ms;         /* the next delay */
	uint32_t max_in_flight;
	uint32_t max_queued;
	uint32_t max_response_bytes;
	rpc_client_state_fn *on_state;
	void *state_ctx;

	uv_timer_t req_timer;        /* the earliest request deadline */
	uv_timer_t conn_timer;       /* connect timeout, or reconnect delay */
	unsigned handles;            /* handles not yet through their close cb */
	rpc_conn *conn;              /* the live connection, or NULL */
	bool ready;
	uint32_t server_max_frame;
	uint32_t server_in_flight;

	req_list queue;
	req_list active;
	uint32_t active_may_wait;    /* of active, requests with may_wait */
	rpc_req *up_head, *up_tail;
	rpc_req *buckets[HASH_BUCKETS];
	uint32_t next_id;
	uint64_t timer_due;          /* 0: not armed */
	bool pumping;

	bool closing;
	rpc_client_close_fn *close_cb;
	void *close_ctx;

	rpc_msg scratch;             /* decoding one part to check it */
};

/* rpc_client_req.c */
void rpcc_buf_wipe_free(eng_buf *b);
void rpcc_list_push_back(req_list *l, rpc_req *r);
void rpcc_list_push_front(req_list *l, rpc_req *r);
void rpcc_list_remove(req_list *l, rpc_req *r);
void rpcc_uploads_remove(rpc_req *r);
rpc_req *rpcc_req_lookup(rpc_client *c, uint32_t id);
void rpcc_req_reset_answer(rpc_req *r);
void rpcc_req_release(rpc_req *r);
void rpcc_req_free(rpc_req *r);
void rpcc_req_finish(rpc_req *r, int err, const rpc_view *resp);
void rpcc_req_abort(rpc_req *r, int err);
void rpcc_flush_queue(rpc_client *c);
void rpcc_arm_req_timer(rpc_client *c, uint64_t due);

/* rpc_client_conn.c */
void rpcc_tls_flush(rpc_conn *conn);
void rpcc_conn_send(rpc_conn *conn, eng_buf *b);
void rpcc_conn_send_frame(rpc_conn *conn, uint8_t kind, uint8_t flags,
			  uint16_t opcode, uint32_t id, const void *payload,
			  size_t len);
void rpcc_conn_send_error(rpc_conn *conn, uint32_t id, int err);
bool rpcc_live(const rpc_client *c);
void rpcc_maybe_finish_close(rpc_client *c);
void rpcc_fail_active(rpc_client *c, int req_err);
void rpcc_fail_queue(rpc_client *c, int err);
void rpcc_conn_teardown(rpc_conn *conn, int err, int req_err);
void rpcc_conn_fail(rpc_conn *conn, int err);
void rpcc_on_conn_timer(uv_timer_t *t);

/* rpc_client_read.c */
void rpcc_proto_fail(rpc_conn *conn, int err);
void rpcc_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
void rpcc_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* rpc_client_body.c */
size_t rpcc_write_queue_bytes(const rpc_client *c);
void rpcc_pump(rpc_client *c);
void rpcc_send_credit(rpc_req *r, uint64_t n);
void rpcc_grant(rpc_req *r);
void rpcc_on_data(rpc_conn *conn, rpc_req *r, const rpc_frame *f);

#endif
