/*
 * The non-blocking, pipelined client of the sqlited protocol (rpc_client.h).
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
#include "rpc_client.h"
#include "eng_error.h"
#include "keys.h"
#include "rpc_tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#define DEFAULT_TIMEOUT_MS 30000u
#define DEFAULT_CONNECT_TIMEOUT_MS 10000u
#define DEFAULT_BACKOFF_MIN_MS 100u
#define DEFAULT_BACKOFF_MAX_MS 10000u
#define DEFAULT_MAX_QUEUED 1024u
#define DEFAULT_MAX_RESPONSE_BYTES (64u * 1024 * 1024)
#define DEFAULT_SERVER_IN_FLIGHT 256u
/* Uploads produce chunks only while less than this waits in libuv. */
#define WRITE_QUEUE_BOUND (1024u * 1024)
/* A download's window at most (rpc_client_opts.recv_window). */
#define MAX_RECV_WINDOW (16u * 1024 * 1024)
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
	bool may_wait;               /* opts.may_wait: see flush_queue */
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

static void conn_fail(rpc_conn *conn, int err);
static void pump(rpc_client *c);
static void flush_queue(rpc_client *c);
static void arm_req_timer(rpc_client *c, uint64_t due);
static void on_conn_timer(uv_timer_t *t);
static void on_req_timer(uv_timer_t *t);

/*
 * Buffers that may hold a password (an UNLOCK request, an ALIAS_ADD
 * answer) are wiped before they go back to the allocator.
 */
static void buf_wipe_free(eng_buf *b)
{
	if (b->data != NULL)
		sodium_memzero(b->data, b->cap);
	eng_buf_free(b);
}

/*
 * A frame handed to the socket was written once, from its start up to
 * len (and the NUL after it), never reset and refilled: only that part
 * can hold anything. send_chunk's buffer has room for a whole window
 * (256 KiB) and an APPEND's data is often a tenth of it: wiping the whole
 * capacity faulted in and zeroed pages nothing ever wrote (most of the
 * imapd's CPU during APPENDs).
 */
static void frame_wipe_free(eng_buf *b)
{
	if (b->data != NULL)
		sodium_memzero(b->data, b->len + 1 <= b->cap ? b->len + 1 : b->cap);
	eng_buf_free(b);
}

/* ---- lists and the id hash ---- */

/* Keeps c->active_may_wait: r enters (d 1) or leaves (d -1) list l. */
static void count_may_wait(req_list *l, rpc_req *r, int d)
{
	if (r->may_wait && l == &r->c->active)
		r->c->active_may_wait = (uint32_t)((int)r->c->active_may_wait + d);
}

static void list_push_back(req_list *l, rpc_req *r)
{
	count_may_wait(l, r, 1);
	r->prev = l->tail;
	r->next = NULL;
	if (l->tail != NULL)
		l->tail->next = r;
	else
		l->head = r;
	l->tail = r;
	l->n++;
}

static void list_push_front(req_list *l, rpc_req *r)
{
	count_may_wait(l, r, 1);
	r->prev = NULL;
	r->next = l->head;
	if (l->head != NULL)
		l->head->prev = r;
	else
		l->tail = r;
	l->head = r;
	l->n++;
}

static void list_remove(req_list *l, rpc_req *r)
{
	count_may_wait(l, r, -1);
	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		l->head = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	else
		l->tail = r->prev;
	r->prev = r->next = NULL;
	l->n--;
}

static req_list *list_of(rpc_req *r)
{
	return r->state == RQ_QUEUED ? &r->c->queue : &r->c->active;
}

static void uploads_add(rpc_req *r)
{
	rpc_client *c = r->c;

	if (r->on_uploads)
		return;
	r->up_prev = c->up_tail;
	r->up_next = NULL;
	if (c->up_tail != NULL)
		c->up_tail->up_next = r;
	else
		c->up_head = r;
	c->up_tail = r;
	r->on_uploads = true;
}

static void uploads_remove(rpc_req *r)
{
	rpc_client *c = r->c;

	if (!r->on_uploads)
		return;
	if (r->up_prev != NULL)
		r->up_prev->up_next = r->up_next;
	else
		c->up_head = r->up_next;
	if (r->up_next != NULL)
		r->up_next->up_prev = r->up_prev;
	else
		c->up_tail = r->up_prev;
	r->up_prev = r->up_next = NULL;
	r->on_uploads = false;
}

static rpc_req *req_lookup(rpc_client *c, uint32_t id)
{
	rpc_req *r = c->buckets[id % HASH_BUCKETS];

	while (r != NULL && r->id != id)
		r = r->hnext;
	return r;
}

static void hash_remove(rpc_req *r)
{
	rpc_req **pp = &r->c->buckets[r->id % HASH_BUCKETS];

	while (*pp != NULL && *pp != r)
		pp = &(*pp)->hnext;
	if (*pp == r)
		*pp = r->hnext;
	r->hnext = NULL;
}

static void req_reset_answer(rpc_req *r)
{
	eng_buf_reset(&r->resp);
	r->parts = 0;
	r->head.f = NULL;
	r->head.n = 0;
	r->in_body = false;
	r->recv_window = 0;
	r->unacked = 0;
}

/* Frees an unlinked request, or marks it dead while it is pinned. */
static void req_release(rpc_req *r)
{
	if (r->pinned) {
		r->dead = true;
		return;
	}
	buf_wipe_free(&r->payload);
	buf_wipe_free(&r->resp);
	rpc_msg_clear(&r->msg);
	free(r);
}

/* Takes r out of every list and the hash; frees it unless pinned. */
static void req_free(rpc_req *r)
{
	if (r->dead)
		return;
	uploads_remove(r);
	list_remove(list_of(r), r);
	hash_remove(r);
	req_release(r);
}

/* Unlinks r, runs its callback, frees it. */
static void req_finish(rpc_req *r, int err, const rpc_view *resp)
{
	rpc_client_cb *cb = r->cb;
	void *ctx = r->ctx;

	uploads_remove(r);
	list_remove(list_of(r), r);
	hash_remove(r);
	/* Unlinked: a cancel of this id from inside cb finds nothing. */
	if (cb != NULL)
		cb(ctx, err, err == 0 ? resp : NULL);
	req_release(r);
}

/* ---- writing ---- */

static void sock_send(rpc_conn *conn, eng_buf *b);

static void on_write(uv_write_t *w, int status)
{
	wreq *wr = w->data;
	rpc_conn *conn = wr->conn;
	rpc_client *c = conn->c;

	frame_wipe_free(&wr->b);
	free(wr);
	if (status < 0 && status != UV_ECANCELED && conn->state != CS_CLOSED) {
		conn_fail(conn, RPC_EUNAVAILABLE);
		return;
	}
	if (conn == c->conn && c->ready)
		pump(c);
}

/*
 * Hands b (taken over, reset) to libuv. A synchronous failure is not
 * acted on here - the caller may be in the middle of anything - but from
 * the connection timer in a moment.
 */
static void sock_send(rpc_conn *conn, eng_buf *b)
{
	wreq *wr;
	uv_buf_t ub;
	int rc;

	if (conn == NULL || conn->state == CS_CLOSED || conn->dead_err != 0) {
		buf_wipe_free(b);
		return;
	}
	wr = eng_calloc(1, sizeof(*wr));
	wr->conn = conn;
	wr->b = *b;
	*b = (eng_buf)ENG_BUF_INIT;
	wr->w.data = wr;
	ub = uv_buf_init(wr->b.data, (unsigned)wr->b.len);
	rc = uv_write(&wr->w, &conn->u.s, &ub, 1, on_write);
	if (rc < 0) {
		buf_wipe_free(&wr->b);
		free(wr);
		conn->dead_err = RPC_EUNAVAILABLE;
		uv_timer_start(&conn->c->conn_timer, on_conn_timer, 0, 0);
	}
}

/* Moves what TLS produced to the socket. */
static void tls_flush(rpc_conn *conn)
{
	size_t pending;

	while ((pending = BIO_ctrl_pending(conn->wbio)) > 0) {
		eng_buf b = ENG_BUF_INIT;
		int n;

		eng_buf_reserve(&b, pending);
		n = BIO_read(conn->wbio, b.data, (int)pending);
		if (n <= 0) {
			eng_buf_free(&b);
			break;
		}
		b.len = (size_t)n;
		sock_send(conn, &b);
	}
}

/* Sends b (taken over, reset): through TLS when the connection has it. */
static void conn_send(rpc_conn *conn, eng_buf *b)
{
	size_t off = 0;

	if (conn == NULL || conn->ssl == NULL) {
		sock_send(conn, b);
		return;
	}
	if (conn->state == CS_CLOSED || conn->dead_err != 0) {
		buf_wipe_free(b);
		return;
	}
	if (!SSL_is_init_finished(conn->ssl)) {
		eng_buf_append(&conn->tls_early, b->data, b->len);
		buf_wipe_free(b);
		return;
	}
	while (off < b->len) {
		size_t left = b->len - off;
		/* wbio is a memory BIO: SSL_write takes all it is given. */
		int n = SSL_write(conn->ssl, b->data + off,
				  left > (1u << 30) ? 1 << 30 : (int)left);

		if (n <= 0) {
			conn->dead_err = rpc_tls_failure(conn->ssl, "rpc client");
			uv_timer_start(&conn->c->conn_timer, on_conn_timer, 0, 0);
			break;
		}
		off += (size_t)n;
	}
	buf_wipe_free(b);
	tls_flush(conn);
}

static void conn_send_frame(rpc_conn *conn, uint8_t kind, uint8_t flags,
			    uint16_t opcode, uint32_t id, const void *payload,
			    size_t len)
{
	eng_buf b = ENG_BUF_INIT;
	size_t mark = rpc_frame_begin(&b, kind, flags, opcode, id);

	if (len != 0)
		eng_buf_append(&b, payload, len);
	if (rpc_frame_end(&b, mark, NULL) != 0) {
		eng_buf_free(&b);
		return;
	}
	conn_send(conn, &b);
}

static void conn_send_error(rpc_conn *conn, uint32_t id, int err)
{
	eng_buf p = ENG_BUF_INIT;

	rpc_put_u64(&p, RPC_T_CODE, rpc_err_to_wire(err));
	rpc_put_str(&p, RPC_T_ERROR_TEXT, rpc_strerror(err));
	conn_send_frame(conn, RPC_K_ERROR, 0, 0, id, p.data, p.len);
	eng_buf_free(&p);
}

static bool live(const rpc_client *c)
{
	return c->conn != NULL && c->ready;
}

/* ---- requests ---- */

static uint32_t in_flight_limit(const rpc_client *c)
{
	uint32_t lim = c->server_in_flight;

	if (c->max_in_flight != 0 && c->max_in_flight < lim)
		lim = c->max_in_flight;
	return lim;
}

/*
 * The callback has fired (or is about to): the request now only waits for
 * the server to finish it. CANCEL tells the server to stop early.
 */
static void req_zombify(rpc_req *r)
{
	rpc_client *c = r->c;

	uploads_remove(r);
	r->cb = NULL;
	r->data = NULL;
	r->state = RQ_ZOMBIE;
	if (live(c))
		conn_send_frame(c->conn, RPC_K_CANCEL, 0, 0, r->id, NULL, 0);
}

/* A sent request fails locally: cb(err) now, the id freed later. */
static void req_abort(rpc_req *r, int err)
{
	rpc_client_cb *cb = r->cb;
	void *ctx = r->ctx;

	req_zombify(r);
	if (cb != NULL)
		cb(ctx, err, NULL);
}

static void send_request(rpc_req *r)
{
	rpc_client *c = r->c;
	eng_buf b = ENG_BUF_INIT;
	size_t mark;

	list_remove(&c->queue, r);
	r->state = RQ_SENT;
	list_push_back(&c->active, r);
	req_reset_answer(r);
	mark = rpc_frame_begin(&b, RPC_K_REQUEST, r->has_body ? RPC_F_BODY : 0,
			       r->opcode, r->id);
	eng_buf_append(&b, r->payload.data, r->payload.len);
	if (b.len > c->server_max_frame ||
	    rpc_frame_end(&b, mark, NULL) != 0) {
		/* The server's frame limit is below what the call accepted. */
		eng_buf_free(&b);
		r->state = RQ_ZOMBIE;
		req_finish(r, RPC_EFRAMESIZE, NULL);
		return;
	}
	conn_send(c->conn, &b);
	if (r->has_body) {
		r->send_window = RPC_INITIAL_WINDOW_BYTES;
		r->body_sent = false;
		r->body_off = 0;
		uploads_add(r);
	}
}

/*
 * The next queued request to send: the oldest, except that requests that
 * may wait long at the server (may_wait: logins in sqlited's Argon2id
 * queue) hold at most half of the in-flight slots (at least one), so a
 * burst of them never holds up the others; they keep their FIFO order
 * among themselves. NULL: nothing may go now.
 */
static rpc_req *next_to_send(const rpc_client *c)
{
	uint32_t lim = in_flight_limit(c);
	uint32_t wait_lim = lim > 1 ? lim / 2 : 1;
	rpc_req *r = c->queue.head;

	if (c->active_may_wait < wait_lim)
		return r;
	while (r != NULL && r->may_wait)
		r = r->next;
	return r;
}

static void flush_queue(rpc_client *c)
{
	rpc_req *r;

	/* The queue is read again after each send: a callback (a request
	 * that failed to send) may have changed it. */
	while (live(c) && !c->closing && c->active.n < in_flight_limit(c) &&
	       (r = next_to_send(c)) != NULL)
		send_request(r);
	if (live(c))
		pump(c);
}

/* One DATA frame of r's body; false if nothing could be sent. */
static bool send_chunk(rpc_req *r)
{
	rpc_client *c = r->c;
	size_t max = RPC_MAX_CHUNK_BYTES;
	size_t mark;
	long n;
	bool end;
	eng_buf b = ENG_BUF_INIT;

	if (c->server_max_frame - RPC_HEADER_BYTES < max)
		max = c->server_max_frame - RPC_HEADER_BYTES;
	if (r->send_window < max)
		max = (size_t)r->send_window;
	if (max == 0 || r->source_waiting)
		return false;
	/* Exactly the frame's size: eng_buf would round up to a power of 2. */
	b.cap = RPC_HEADER_BYTES + max + 1;
	b.data = eng_malloc(b.cap);
	mark = rpc_frame_begin(&b, RPC_K_DATA, 0, 0, r->id);
	if (r->source == NULL) {
		n = (long)(r->body_len - r->body_off < max ?
			   r->body_len - r->body_off : max);
		if (n > 0)
			memcpy(b.data + b.len, r->body + r->body_off, (size_t)n);
		r->body_off += (size_t)n;
		end = r->body_off == r->body_len;
	} else {
		n = r->source(r->source_ctx, (uint8_t *)b.data + b.len, max);
		if (n == RPC_CLIENT_WAIT) {
			/* Nothing yet: rpc_client_source_ready() restarts. */
			eng_buf_free(&b);
			r->source_waiting = true;
			return false;
		}
		if (n < 0 || (size_t)n > max) {
			eng_buf_free(&b);
			req_abort(r, n < 0 ? (int)n : ENG_EINVAL);
			return true;
		}
		end = n == 0;
	}
	b.len += (size_t)n;
	b.data[b.len] = '\0';
	if (end)
		b.data[mark + 6] |= RPC_F_END;
	if (rpc_frame_end(&b, mark, NULL) != 0) {
		eng_buf_free(&b);
		req_abort(r, ENG_EINVAL);
		return true;
	}
	r->send_window -= (uint64_t)n;
	conn_send(c->conn, &b);
	if (end) {
		r->body_sent = true;
		uploads_remove(r);
	}
	return true;
}

static size_t write_queue_bytes(const rpc_client *c)
{
	if (c->conn == NULL || c->conn->state == CS_CONNECTING ||
	    c->conn->state == CS_CLOSED)
		return 0;
	return uv_stream_get_write_queue_size(&c->conn->u.s);
}

/*
 * Sends body chunks round-robin over the uploading requests while they
 * have window credit and libuv's write queue is short; on_write calls it
 * again as the queue drains, WINDOW frames as credit comes.
 */
static void pump(rpc_client *c)
{
	bool progress = true;

	if (c->pumping)
		return;
	c->pumping = true;
	while (progress && live(c) && !c->closing) {
		rpc_req *r = c->up_head;

		progress = false;
		while (r != NULL && live(c)) {
			rpc_req *next = r->up_next;

			if (write_queue_bytes(c) >= WRITE_QUEUE_BOUND)
				goto out;
			if (send_chunk(r))
				progress = true;
			/* r may have left the list (END, abort): next was
			 * taken before; an abort's callback may have
			 * changed the list, so restart from the head. */
			if (next != NULL && !next->on_uploads)
				break;
			r = next;
		}
	}
out:
	c->pumping = false;
}

/* ---- frames from the server ---- */

/* Sends credit for n more bytes of r's download. */
static void send_credit(rpc_req *r, uint64_t n)
{
	eng_buf p = ENG_BUF_INIT;

	rpc_put_u64(&p, RPC_T_CREDIT, n);
	conn_send_frame(r->c->conn, RPC_K_WINDOW, 0, 0, r->id, p.data, p.len);
	eng_buf_free(&p);
	r->recv_window += n;
}

/* Grants the server credit for what was consumed, in whole halves of the
 * window (the rest waits for more): sqlited reads FETCH_BODIES ahead in
 * pieces of the size of the credit it gets, so each grant lets whole
 * pieces go, each one DATA frame sent from its buffer without a copy
 * (srv_ops_body.c). Never a stall: what is kept back is under half the
 * window, so the server's window is at least the other half once
 * everything is consumed. */
static void grant(rpc_req *r)
{
	uint64_t unit = r->window_goal / 2;
	uint64_t n = r->unacked - r->unacked % unit;

	if (n == 0 || !live(r->c))
		return;
	send_credit(r, n);
	r->unacked -= n;
}

static int frame_error_code(const rpc_frame *f)
{
	rpc_msg m = RPC_MSG_INIT;
	rpc_view v;
	uint64_t code;
	int err = ENG_EIO;

	if (rpc_decode(f->payload, f->payload_len, NULL, &m, &v) == 0 &&
	    rpc_get_u64(&v, RPC_T_CODE, &code) == 0) {
		err = rpc_err_from_wire(code);
		if (err == 0)
			err = ENG_EIO;
	}
	rpc_msg_clear(&m);
	return err;
}

/* A frame the state does not allow: ERROR id 0 and close. */
static void proto_fail(rpc_conn *conn, int err)
{
	conn_send_error(conn, 0, err);
	conn_fail(conn, err);
}

static void on_response(rpc_conn *conn, rpc_req *r, const rpc_frame *f)
{
	rpc_client *c = conn->c;
	rpc_view v;
	rpc_limits lim;
	int rc;

	if (r->state != RQ_ZOMBIE) {
		rc = rpc_decode(f->payload, f->payload_len, NULL, &c->scratch, &v);
		if (rc == 0 && r->resp.len + f->payload_len > c->max_response_bytes)
			rc = ENG_ELIMIT;
		if (rc != 0) {
			req_abort(r, rc);
		} else {
			eng_buf_append(&r->resp, f->payload, f->payload_len);
			r->parts++;
		}
	}
	if (f->flags & RPC_F_MORE)
		return;
	if (r->state != RQ_ZOMBIE) {
		rpc_limits_default(&lim);
		lim.max_fields = RPC_MAX_FIELDS * r->parts;
		lim.max_bytes_field = c->max_response_bytes;
		rc = rpc_decode((const uint8_t *)r->resp.data, r->resp.len, &lim,
				&r->msg, &r->head);
		if (rc != 0)
			req_abort(r, rc);
	}
	if (f->flags & RPC_F_BODY) {
		/* An upload the server answers before END (it should not):
		 * stop sending. */
		uploads_remove(r);
		r->in_body = true;
		r->recv_window = RPC_INITIAL_WINDOW_BYTES;
		r->unacked = 0;
		/* A larger window asked for: the rest of it at once. */
		if (r->window_goal > RPC_INITIAL_WINDOW_BYTES && live(c) &&
		    r->state != RQ_ZOMBIE)
			send_credit(r, r->window_goal - RPC_INITIAL_WINDOW_BYTES);
		return;
	}
	if (r->state == RQ_ZOMBIE)
		req_free(r);
	else
		req_finish(r, 0, &r->head);
}

static void on_data(rpc_conn *conn, rpc_req *r, const rpc_frame *f)
{
	bool end = (f->flags & RPC_F_END) != 0;
	int rc = 0;

	if (f->payload_len > r->recv_window) {
		proto_fail(conn, RPC_EWINDOW);
		return;
	}
	r->recv_window -= f->payload_len;
	if (r->state != RQ_ZOMBIE && r->data != NULL) {
		r->pinned = true;
		rc = r->data(r->data_ctx, r->id, &r->head, f->payload,
			     f->payload_len, end);
		r->pinned = false;
		if (r->dead) {
			/* Finished from inside the callback (close). */
			req_release(r);
			return;
		}
		if (f->payload_len != 0)
			r->delivered = true;
		if (rc < 0 && r->state != RQ_ZOMBIE)
			req_abort(r, rc);
	}
	/* A zombie (or a body nobody wants) consumes at once. */
	if (rc != RPC_CLIENT_HOLD || r->state == RQ_ZOMBIE)
		r->unacked += f->payload_len;
	if (end) {
		if (r->state == RQ_ZOMBIE)
			req_free(r);
		else
			req_finish(r, 0, &r->head);
		return;
	}
	grant(r);
}

static void on_ready_frame(rpc_conn *conn, const rpc_frame *f)
{
	rpc_client *c = conn->c;
	rpc_req *r = f->request_id != 0 ? req_lookup(c, f->request_id) : NULL;
	rpc_msg m = RPC_MSG_INIT;
	rpc_view v;
	uint64_t credit;

	if (r != NULL && r->state == RQ_QUEUED)
		r = NULL;
	switch (f->kind) {
	case RPC_K_RESPONSE:
		if (r == NULL || r->in_body) {
			proto_fail(conn, RPC_EPROTO);
			return;
		}
		on_response(conn, r, f);
		break;
	case RPC_K_ERROR:
		if (f->request_id == 0) {
			conn_fail(conn, frame_error_code(f));
			return;
		}
		if (r == NULL)
			break;          /* already finished: nothing to fail */
		if (r->state == RQ_ZOMBIE)
			req_free(r);
		else
			req_finish(r, frame_error_code(f), NULL);
		break;
	case RPC_K_DATA:
		if (r == NULL || !r->in_body) {
			proto_fail(conn, RPC_EWINDOW);
			return;
		}
		on_data(conn, r, f);
		break;
	case RPC_K_WINDOW:
		if (rpc_decode(f->payload, f->payload_len, NULL, &m, &v) != 0 ||
		    rpc_get_u64(&v, RPC_T_CREDIT, &credit) != 0) {
			rpc_msg_clear(&m);
			proto_fail(conn, RPC_EWINDOW);
			return;
		}
		rpc_msg_clear(&m);
		/* Credit for a stream that is over (END sent, or the request
		 * was given up) crossed our frames: nothing to do. */
		if (r == NULL || !r->on_uploads)
			break;
		if (r->send_window + credit > UINT32_MAX) {
			proto_fail(conn, RPC_EWINDOW);
			return;
		}
		r->send_window += credit;
		pump(c);
		break;
	case RPC_K_EVENT:
		break;              /* reserved in version 1: ignored */
	default:
		proto_fail(conn, RPC_EPROTO);
		return;
	}
	/* A finished request freed a slot. */
	flush_queue(c);
}

static void on_hello(rpc_conn *conn, const rpc_frame *f)
{
	rpc_client *c = conn->c;
	rpc_limits lim;
	rpc_msg m = RPC_MSG_INIT;
	rpc_view v;
	rpc_iter it;
	const rpc_field *fl;
	const uint8_t *nonce;
	size_t nonce_len;
	bool v1 = false;
	uint8_t proof[RPC_PROOF_BYTES];
	eng_buf p = ENG_BUF_INIT;
	size_t name_len = strlen(c->peer_name);

	rpc_limits_preauth(&lim);
	if (rpc_decode(f->payload, f->payload_len, &lim, &m, &v) != 0 ||
	    rpc_get_bytes(&v, RPC_T_NONCE, &nonce, &nonce_len) != 0 ||
	    nonce_len != RPC_NONCE_BYTES) {
		rpc_msg_clear(&m);
		proto_fail(conn, RPC_EMISSING);
		return;
	}
	rpc_iter_init(&it, &v);
	while ((fl = rpc_iter_next(&it, RPC_T_VERSION)) != NULL) {
		if (fl->type == RPC_W_VARINT && fl->u == RPC_VERSION)
			v1 = true;
	}
	memcpy(conn->server_nonce, nonce, RPC_NONCE_BYTES);
	rpc_msg_clear(&m);
	if (!v1) {
		eng_log(ENG_LOG_WARN, "rpc client: server offers no version 1");
		conn_fail(conn, RPC_EVERSION);
		return;
	}
	if (rpc_auth_nonce(conn->client_nonce) != 0 ||
	    rpc_auth_client_proof(c->secret, conn->server_nonce,
				  conn->client_nonce,
				  (const uint8_t *)c->peer_name, name_len,
				  proof) != 0) {
		conn_fail(conn, ENG_EIO);
		return;
	}
	rpc_put_u64(&p, RPC_T_VERSION, RPC_VERSION);
	rpc_put_bytes(&p, RPC_T_NONCE, conn->client_nonce, RPC_NONCE_BYTES);
	rpc_put_bytes(&p, RPC_T_PEER_NAME, c->peer_name, name_len);
	rpc_put_bytes(&p, RPC_T_PROOF, proof, RPC_PROOF_BYTES);
	conn_send_frame(conn, RPC_K_AUTH, 0, 0, 0, p.data, p.len);
	eng_buf_free(&p);
	sodium_memzero(proof, sizeof(proof));
	conn->state = CS_WAIT_AUTH_OK;
}

static void on_auth_ok(rpc_conn *conn, const rpc_frame *f)
{
	rpc_client *c = conn->c;
	rpc_limits lim;
	rpc_msg m = RPC_MSG_INIT;
	rpc_view v;
	const uint8_t *proof;
	size_t proof_len;
	uint64_t max_frame = RPC_MAX_FRAME_BYTES;
	uint64_t max_in_flight = DEFAULT_SERVER_IN_FLIGHT;
	int rc;

	rpc_limits_preauth(&lim);
	rc = rpc_decode(f->payload, f->payload_len, &lim, &m, &v);
	if (rc == 0)
		rc = rpc_get_bytes(&v, RPC_T_PROOF, &proof, &proof_len);
	if (rc == 0)
		rc = rpc_auth_verify_server(c->secret, conn->server_nonce,
					    conn->client_nonce,
					    (const uint8_t *)c->peer_name,
					    strlen(c->peer_name), proof,
					    proof_len);
	if (rc == 0) {
		(void)rpc_get_u64(&v, RPC_T_MAX_FRAME, &max_frame);
		(void)rpc_get_u64(&v, RPC_T_MAX_IN_FLIGHT, &max_in_flight);
	}
	rpc_msg_clear(&m);
	if (rc != 0) {
		/* A server that cannot prove the secret gets no request. */
		eng_log(ENG_LOG_WARN, "rpc client: the server's proof does not verify");
		conn_fail(conn, RPC_ENOTAUTH);
		return;
	}
	if (max_frame < 64 * 1024 || max_frame > RPC_MAX_FRAME_BYTES)
		max_frame = RPC_MAX_FRAME_BYTES;
	if (max_in_flight == 0 || max_in_flight > 65536)
		max_in_flight = DEFAULT_SERVER_IN_FLIGHT;
	c->server_max_frame = (uint32_t)max_frame;
	c->server_in_flight = (uint32_t)max_in_flight;
	rpc_limits_default(&lim);
	rpc_reader_set_limits(conn->rd, &lim);
	conn->state = CS_READY;
	c->ready = true;
	c->backoff_ms = c->backoff_min_ms;
	uv_timer_stop(&c->conn_timer);
	if (c->on_state != NULL)
		c->on_state(c->state_ctx, true, 0);
	if (conn->state == CS_READY)
		flush_queue(c);
}

static void on_frame(rpc_conn *conn, const rpc_frame *f)
{
	switch (conn->state) {
	case CS_WAIT_HELLO:
	case CS_WAIT_AUTH_OK:
		if (f->kind == RPC_K_ERROR) {
			int err = frame_error_code(f);

			conn_fail(conn, err == ENG_EIO ? RPC_EPROTO : err);
		} else if (f->kind == RPC_K_HELLO && conn->state == CS_WAIT_HELLO) {
			on_hello(conn, f);
		} else if (f->kind == RPC_K_AUTH_OK &&
			   conn->state == CS_WAIT_AUTH_OK) {
			on_auth_ok(conn, f);
		} else {
			proto_fail(conn, RPC_EPROTO);
		}
		break;
	case CS_READY:
		on_ready_frame(conn, f);
		break;
	default:
		break;
	}
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	rpc_conn *conn = h->data;

	(void)suggested;
	*buf = uv_buf_init((char *)conn->rbuf, sizeof(conn->rbuf));
}

/*
 * A DATA frame whose payload is not all in the n bytes at p (its header
 * is), for a request that takes its body: rather than put together in
 * the reader (a copy of every byte of a streamed body), its payload goes
 * to the data callback in pieces as they arrive, each delivered as a DATA
 * frame of its own (END on the last), which the callback's contract
 * allows (any split). Its window is checked here for the whole frame.
 * Anything else (a header in pieces, another kind, an error, a zombie)
 * is left to the reader. true: the header is taken (pass_left set).
 */
static bool pass_begin(rpc_conn *conn, const uint8_t *p, size_t n)
{
	rpc_limits lim;
	rpc_frame f;
	rpc_req *r;
	size_t plen;

	if (conn->state != CS_READY || n < RPC_HEADER_BYTES ||
	    rpc_reader_pending(conn->rd) != 0)
		return false;
	rpc_limits_default(&lim);    /* the reader's since AUTH_OK */
	if (rpc_header_parse(p, &lim, &f, &plen) != 0 ||
	    f.kind != RPC_K_DATA || plen <= n - RPC_HEADER_BYTES)
		return false;
	r = f.request_id != 0 ? req_lookup(conn->c, f.request_id) : NULL;
	if (r == NULL || r->state != RQ_SENT || !r->in_body ||
	    r->data == NULL || plen > r->recv_window)
		return false;
	conn->pass = f;
	conn->pass_left = plen;
	return true;
}

/* The next piece of the frame pass_begin took: n bytes at p at most. */
static size_t pass_piece(rpc_conn *conn, const uint8_t *p, size_t n)
{
	rpc_frame f = conn->pass;

	if (n > conn->pass_left)
		n = conn->pass_left;
	conn->pass_left -= n;
	f.payload = p;
	f.payload_len = n;
	if (conn->pass_left > 0)
		f.flags &= (uint8_t)~RPC_F_END;
	on_frame(conn, &f);
	return n;
}

/* Frames from the plaintext stream. */
static void on_plain(rpc_conn *conn, const uint8_t *p, size_t len)
{
	size_t off = 0;

	while (off < len && conn->state != CS_CLOSED) {
		rpc_frame f;
		size_t used = 0;
		int rc;

		if (conn->pass_left > 0) {
			off += pass_piece(conn, p + off, len - off);
			continue;
		}
		if (pass_begin(conn, p + off, len - off)) {
			off += RPC_HEADER_BYTES;
			continue;
		}
		rc = rpc_reader_feed(conn->rd, p + off, len - off, &used, &f);
		off += used;
		if (rc < 0) {
			proto_fail(conn, rc);
			return;
		}
		if (rc == 0)
			break;
		on_frame(conn, &f);
	}
}

/* Records from the socket: the handshake, then frames. */
static void on_tls_bytes(rpc_conn *conn, const uint8_t *p, size_t len)
{
	if (BIO_write(conn->rbio, p, (int)len) != (int)len) {
		conn_fail(conn, ENG_EIO);
		return;
	}
	while (conn->state != CS_CLOSED) {
		int n = SSL_read(conn->ssl, conn->pbuf, sizeof(conn->pbuf));
		int e;

		if (n > 0) {
			on_plain(conn, conn->pbuf, (size_t)n);
			continue;
		}
		e = SSL_get_error(conn->ssl, n);
		tls_flush(conn);
		if (e == SSL_ERROR_WANT_READ)
			break;
		if (e == SSL_ERROR_ZERO_RETURN)
			conn_fail(conn, RPC_EUNAVAILABLE);
		else
			conn_fail(conn, rpc_tls_failure(conn->ssl, "rpc client"));
		return;
	}
	if (conn->state == CS_CLOSED)
		return;
	tls_flush(conn);
	if (conn->tls_early.len > 0 && SSL_is_init_finished(conn->ssl)) {
		eng_buf early = conn->tls_early;

		conn->tls_early = (eng_buf)ENG_BUF_INIT;
		conn_send(conn, &early);
	}
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	rpc_conn *conn = s->data;

	if (nread < 0) {
		conn_fail(conn, nread == UV_EOF && conn->ssl != NULL &&
			  !SSL_is_init_finished(conn->ssl) ?
			  rpc_tls_failure(conn->ssl, "rpc client") :
			  RPC_EUNAVAILABLE);
		return;
	}
	if (conn->ssl != NULL)
		on_tls_bytes(conn, (const uint8_t *)buf->base, (size_t)nread);
	else
		on_plain(conn, (const uint8_t *)buf->base, (size_t)nread);
}

/* ---- connections ---- */

static void maybe_finish_close(rpc_client *c)
{
	rpc_client_close_fn *cb;
	void *ctx;

	if (!c->closing || c->handles != 0)
		return;
	cb = c->close_cb;
	ctx = c->close_ctx;
	sodium_free(c->secret);
	if (c->ssl_ctx != NULL)
		SSL_CTX_free(c->ssl_ctx);
	free(c->tls_name);
	free(c->unix_path);
	free(c->peer_name);
	rpc_msg_clear(&c->scratch);
	free(c);
	if (cb != NULL)
		cb(ctx);
}

static void on_conn_close(uv_handle_t *h)
{
	rpc_conn *conn = h->data;
	rpc_client *c = conn->c;

	rpc_reader_free(&conn->rd);
	sodium_memzero(conn->rbuf, sizeof(conn->rbuf));
	sodium_memzero(conn->pbuf, sizeof(conn->pbuf));
	if (conn->ssl != NULL)
		SSL_free(conn->ssl);   /* frees both BIOs */
	buf_wipe_free(&conn->tls_early);
	free(conn);
	c->handles--;
	maybe_finish_close(c);
}

static bool can_resend(rpc_req *r)
{
	if (r->c->closing || r->retries == 0 || r->delivered)
		return false;
	if (r->has_body && r->source != NULL) {
		if (r->rewind == NULL || r->rewind(r->source_ctx) != 0)
			return false;
		r->source_waiting = false;
	}
	r->retries--;
	return true;
}

/*
 * Every request on a connection that has gone: resent later, or failed
 * with req_err. Zombies just go.
 */
static void fail_active(rpc_client *c, int req_err)
{
	rpc_req *r;

	while ((r = c->active.tail) != NULL) {
		if (r->state == RQ_ZOMBIE) {
			req_free(r);
		} else if (req_err == RPC_EUNAVAILABLE && can_resend(r)) {
			uploads_remove(r);
			list_remove(&c->active, r);
			r->state = RQ_QUEUED;
			req_reset_answer(r);
			list_push_front(&c->queue, r);
		} else {
			req_finish(r, req_err, NULL);
		}
	}
}

static void fail_queue(rpc_client *c, int err)
{
	rpc_req *r;

	while ((r = c->queue.head) != NULL)
		req_finish(r, err, NULL);
}

/* The one place a connection goes down (or an attempt fails). */
static void conn_teardown(rpc_conn *conn, int err, int req_err)
{
	rpc_client *c = conn->c;
	bool was_current = c->conn == conn;

	if (conn->state == CS_CLOSED)
		return;
	if (conn->state != CS_CONNECTING)
		uv_read_stop(&conn->u.s);
	conn->state = CS_CLOSED;
	uv_close(&conn->u.h, on_conn_close);
	if (!was_current)
		return;
	c->conn = NULL;
	c->ready = false;
	if (!c->closing)
		uv_timer_stop(&c->conn_timer);
	fail_active(c, req_err);
	if (err == RPC_ENOTAUTH)
		fail_queue(c, RPC_ENOTAUTH);
	if (c->on_state != NULL && !c->closing)
		c->on_state(c->state_ctx, false, err);
	if (!c->closing && c->conn == NULL) {
		uv_timer_start(&c->conn_timer, on_conn_timer, c->backoff_ms, 0);
		c->backoff_ms = c->backoff_ms * 2 > c->backoff_max_ms ?
			c->backoff_max_ms : c->backoff_ms * 2;
	}
}

static void conn_fail(rpc_conn *conn, int err)
{
	if (err != RPC_ENOTAUTH && err != RPC_EVERSION)
		eng_log(ENG_LOG_INFO, "rpc client: connection lost (%s)",
			rpc_strerror(err));
	else
		eng_log(ENG_LOG_WARN, "rpc client: handshake failed (%s)",
			rpc_strerror(err));
	conn_teardown(conn, err, RPC_EUNAVAILABLE);
}

static void on_connect(uv_connect_t *req, int status)
{
	rpc_conn *conn = req->data;

	if (conn->state == CS_CLOSED)
		return;
	if (status < 0) {
		conn_fail(conn, RPC_EUNAVAILABLE);
		return;
	}
	conn->state = CS_WAIT_HELLO;
	if (conn->c->ssl_ctx != NULL) {
		/* The server sends HELLO once the handshake is done. */
		if (rpc_tls_ssl_new(conn->c->ssl_ctx, conn->c->tls_name,
				    &conn->ssl) != 0) {
			conn_fail(conn, ENG_EIO);
			return;
		}
		conn->rbio = BIO_new(BIO_s_mem());
		conn->wbio = BIO_new(BIO_s_mem());
		if (conn->rbio == NULL || conn->wbio == NULL)
			eng_oom(sizeof(void *));
		BIO_set_mem_eof_return(conn->rbio, -1);
		SSL_set_bio(conn->ssl, conn->rbio, conn->wbio);
		SSL_set_connect_state(conn->ssl);
		(void)SSL_do_handshake(conn->ssl);   /* WANT_READ: the ClientHello is out */
		tls_flush(conn);
	}
	if (uv_read_start(&conn->u.s, on_alloc, on_read) != 0)
		conn_fail(conn, RPC_EUNAVAILABLE);
}

static void start_connect(rpc_client *c)
{
	rpc_conn *conn = eng_calloc(1, sizeof(*conn));
	int rc;

	conn->c = c;
	conn->state = CS_CONNECTING;
	conn->rd = rpc_reader_new(NULL);
	if (c->is_unix)
		rc = uv_pipe_init(c->loop, &conn->u.pipe, 0);
	else
		rc = uv_tcp_init(c->loop, &conn->u.tcp);
	if (rc != 0) {
		eng_log(ENG_LOG_ERROR, "rpc client: handle init: %s", uv_strerror(rc));
		rpc_reader_free(&conn->rd);
		free(conn);
		uv_timer_start(&c->conn_timer, on_conn_timer, c->backoff_ms, 0);
		return;
	}
	conn->u.h.data = conn;
	conn->creq.data = conn;
	c->handles++;
	c->conn = conn;
	c->server_max_frame = RPC_MAX_FRAME_BYTES;
	uv_timer_start(&c->conn_timer, on_conn_timer, c->connect_timeout_ms, 0);
	if (c->is_unix) {
		uv_pipe_connect(&conn->creq, &conn->u.pipe, c->unix_path, on_connect);
	} else {
		rc = uv_tcp_connect(&conn->creq, &conn->u.tcp,
				    (const struct sockaddr *)&c->addr, on_connect);
		if (rc != 0)
			conn_fail(conn, RPC_EUNAVAILABLE);
	}
}

/* Connect timeout, a failed write to act on, or the reconnect delay. */
static void on_conn_timer(uv_timer_t *t)
{
	rpc_client *c = t->data;
	rpc_conn *conn = c->conn;

	if (c->closing)
		return;
	if (conn != NULL) {
		if (conn->dead_err != 0)
			conn_fail(conn, conn->dead_err);
		else if (!c->ready)
			conn_fail(conn, RPC_ETIMEOUT);
		return;
	}
	start_connect(c);
}

/* ---- timeouts ---- */

static rpc_req *first_expired(req_list *l, uint64_t now)
{
	for (rpc_req *r = l->head; r != NULL; r = r->next) {
		if (r->state != RQ_ZOMBIE && r->deadline_ms <= now)
			return r;
	}
	return NULL;
}

static void on_req_timer(uv_timer_t *t)
{
	rpc_client *c = t->data;
	uint64_t now = uv_now(c->loop);
	uint64_t due = 0;
	rpc_req *r;

	c->timer_due = 0;
	if (c->closing)
		return;
	/* One at a time: each callback may change the lists. */
	for (;;) {
		if ((r = first_expired(&c->queue, now)) != NULL) {
			req_finish(r, RPC_ETIMEOUT, NULL);
		} else if ((r = first_expired(&c->active, now)) != NULL) {
			req_abort(r, RPC_ETIMEOUT);
		} else {
			break;
		}
		if (c->closing)
			return;
	}
	for (r = c->queue.head; r != NULL; r = r->next) {
		if (due == 0 || r->deadline_ms < due)
			due = r->deadline_ms;
	}
	for (r = c->active.head; r != NULL; r = r->next) {
		if (r->state != RQ_ZOMBIE && (due == 0 || r->deadline_ms < due))
			due = r->deadline_ms;
	}
	if (due != 0)
		arm_req_timer(c, due);
}

static void arm_req_timer(rpc_client *c, uint64_t due)
{
	uint64_t now = uv_now(c->loop);

	if (c->timer_due != 0 && c->timer_due <= due)
		return;
	c->timer_due = due;
	uv_timer_start(&c->req_timer, on_req_timer, due > now ? due - now : 0, 0);
}

/* ---- public API ---- */

int rpc_client_new(uv_loop_t *loop, const rpc_client_config *cfg,
		   rpc_client **c_r)
{
	rpc_client *c;
	struct sockaddr_storage ss;
	SSL_CTX *ssl_ctx = NULL;
	int rc;

	*c_r = NULL;
	if (loop == NULL || cfg == NULL || cfg->secret == NULL ||
	    cfg->peer_name == NULL ||
	    rpc_auth_peer_name_check((const uint8_t *)cfg->peer_name,
				     strlen(cfg->peer_name)) != 0)
		return ENG_EINVAL;
	if ((cfg->unix_path == NULL) == (cfg->host == NULL))
		return ENG_EINVAL;
	memset(&ss, 0, sizeof(ss));
	if (cfg->host != NULL) {
		if (uv_ip4_addr(cfg->host, cfg->port, (struct sockaddr_in *)&ss) != 0 &&
		    uv_ip6_addr(cfg->host, cfg->port, (struct sockaddr_in6 *)&ss) != 0)
			return ENG_EINVAL;
		/* AUTH in the clear is for loopback only. */
		if (!rpc_tls_addr_loopback((struct sockaddr *)&ss) &&
		    cfg->tls == NULL)
			return ENG_EPERM;
	} else if (cfg->unix_path[0] == '\0' ||
		   strlen(cfg->unix_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		return ENG_EINVAL;
	}
	if (eng_crypto_init() != 0)
		return ENG_EIO;
	if (cfg->host != NULL && cfg->tls != NULL &&
	    (cfg->tls->always || !rpc_tls_addr_loopback((struct sockaddr *)&ss))) {
		rc = rpc_tls_ctx_new(cfg->tls, &ssl_ctx);
		if (rc != 0)
			return rc;
	}
	c = eng_calloc(1, sizeof(*c));
	c->ssl_ctx = ssl_ctx;
	if (ssl_ctx != NULL)
		c->tls_name = eng_strdup(cfg->tls->server_name != NULL ?
					 cfg->tls->server_name : cfg->host);
	c->secret = sodium_malloc(RPC_SECRET_BYTES);
	if (c->secret == NULL)
		eng_oom(RPC_SECRET_BYTES);
	memcpy(c->secret, cfg->secret, RPC_SECRET_BYTES);
	c->loop = loop;
	c->is_unix = cfg->unix_path != NULL;
	c->unix_path = c->is_unix ? eng_strdup(cfg->unix_path) : NULL;
	c->addr = ss;
	c->peer_name = eng_strdup(cfg->peer_name);
	c->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
	c->connect_timeout_ms = cfg->connect_timeout_ms ?
		cfg->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
	c->backoff_min_ms = cfg->backoff_min_ms ?
		cfg->backoff_min_ms : DEFAULT_BACKOFF_MIN_MS;
	c->backoff_max_ms = cfg->backoff_max_ms ?
		cfg->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
	if (c->backoff_max_ms < c->backoff_min_ms)
		c->backoff_max_ms = c->backoff_min_ms;
	c->backoff_ms = c->backoff_min_ms;
	c->max_in_flight = cfg->max_in_flight;
	c->max_queued = cfg->max_queued ? cfg->max_queued : DEFAULT_MAX_QUEUED;
	c->max_response_bytes = cfg->max_response_bytes ?
		cfg->max_response_bytes : DEFAULT_MAX_RESPONSE_BYTES;
	c->on_state = cfg->on_state;
	c->state_ctx = cfg->state_ctx;
	c->server_max_frame = RPC_MAX_FRAME_BYTES;
	c->server_in_flight = DEFAULT_SERVER_IN_FLIGHT;
	c->next_id = 1;
	uv_timer_init(loop, &c->req_timer);
	uv_timer_init(loop, &c->conn_timer);
	c->req_timer.data = c;
	c->conn_timer.data = c;
	c->handles = 2;
	uv_timer_start(&c->conn_timer, on_conn_timer, 0, 0);  /* connect from the loop */
	*c_r = c;
	return 0;
}

static bool payload_has_key(const void *payload, size_t len)
{
	rpc_msg m = RPC_MSG_INIT;
	rpc_view v;
	const uint8_t *p;
	size_t n;
	bool ok;

	ok = rpc_decode(payload, len, NULL, &m, &v) == 0 &&
		rpc_get_bytes(&v, RPC_T_IDEMPOTENCY_KEY, &p, &n) == 0 &&
		n != 0 && n <= 128;
	rpc_msg_clear(&m);
	return ok;
}

int rpc_client_call_ex(rpc_client *c, uint16_t opcode, const void *payload,
		       size_t len, const rpc_client_opts *opts,
		       rpc_client_cb *cb, void *ctx, uint32_t *id_r)
{
	rpc_client_opts none;
	rpc_req *r;
	uint32_t timeout_ms;

	if (opts == NULL) {
		memset(&none, 0, sizeof(none));
		opts = &none;
	}
	if (c == NULL || opcode == 0 || cb == NULL || (len != 0 && payload == NULL))
		return ENG_EINVAL;
	if (c->closing)
		return RPC_EUNAVAILABLE;
	if (RPC_HEADER_BYTES + len > c->server_max_frame)
		return RPC_EFRAMESIZE;
	if (opts->has_body && opts->source == NULL && opts->body == NULL &&
	    opts->body_len != 0)
		return ENG_EINVAL;
	if (opts->retries != 0 && opts->has_body &&
	    (opcode == RPC_OP_APPEND || opcode == RPC_OP_DELIVER) &&
	    !payload_has_key(payload, len))
		return ENG_EINVAL;
	if (opts->retries != 0 && opts->has_body && opts->source != NULL &&
	    opts->rewind == NULL)
		return ENG_EINVAL;
	if (c->queue.n >= c->max_queued)
		return RPC_EUNAVAILABLE;

	r = eng_calloc(1, sizeof(*r));
	r->c = c;
	r->opcode = opcode;
	r->state = RQ_QUEUED;
	if (len != 0)
		eng_buf_append(&r->payload, payload, len);
	timeout_ms = opts->timeout_ms ? opts->timeout_ms : c->timeout_ms;
	r->deadline_ms = uv_now(c->loop) + timeout_ms;
	r->cb = cb;
	r->ctx = ctx;
	r->retries = opts->retries;
	r->may_wait = opts->may_wait;
	r->has_body = opts->has_body;
	r->body = opts->body;
	r->body_len = opts->body_len;
	r->source = opts->source;
	r->rewind = opts->rewind;
	r->source_ctx = opts->source_ctx;
	r->data = opts->data;
	r->data_ctx = opts->data_ctx;
	r->window_goal = opts->recv_window > RPC_INITIAL_WINDOW_BYTES ?
		(opts->recv_window < MAX_RECV_WINDOW ? opts->recv_window :
		 MAX_RECV_WINDOW) : RPC_INITIAL_WINDOW_BYTES;
	/* Ids in use are skipped; 0 is never an id. */
	do {
		r->id = c->next_id++;
		if (c->next_id == 0)
			c->next_id = 1;
	} while (req_lookup(c, r->id) != NULL);
	r->hnext = c->buckets[r->id % HASH_BUCKETS];
	c->buckets[r->id % HASH_BUCKETS] = r;
	list_push_back(&c->queue, r);
	if (id_r != NULL)
		*id_r = r->id;
	arm_req_timer(c, r->deadline_ms);
	flush_queue(c);
	return 0;
}

int rpc_client_call(rpc_client *c, uint16_t opcode, const void *payload,
		    size_t len, uint32_t timeout_ms, rpc_client_cb *cb,
		    void *ctx, uint32_t *id_r)
{
	rpc_client_opts o;

	memset(&o, 0, sizeof(o));
	o.timeout_ms = timeout_ms;
	return rpc_client_call_ex(c, opcode, payload, len, &o, cb, ctx, id_r);
}

int rpc_client_call_retry(rpc_client *c, uint16_t opcode,
			  const void *payload, size_t len, const void *body,
			  size_t body_len, unsigned retries, rpc_client_cb *cb,
			  void *ctx, uint32_t *id_r)
{
	rpc_client_opts o;

	memset(&o, 0, sizeof(o));
	o.has_body = true;
	o.body = body;
	o.body_len = body_len;
	o.retries = retries;
	return rpc_client_call_ex(c, opcode, payload, len, &o, cb, ctx, id_r);
}

int rpc_client_cancel(rpc_client *c, uint32_t id)
{
	rpc_req *r = id != 0 ? req_lookup(c, id) : NULL;

	if (r == NULL || r->state == RQ_ZOMBIE || r->dead)
		return ENG_ENOTFOUND;
	if (r->state == RQ_QUEUED)
		req_finish(r, RPC_ECANCELLED, NULL);
	else
		req_abort(r, RPC_ECANCELLED);
	return 0;
}

int rpc_client_consumed(rpc_client *c, uint32_t id, size_t n)
{
	rpc_req *r = id != 0 ? req_lookup(c, id) : NULL;

	if (r == NULL || r->state != RQ_SENT || !r->in_body)
		return ENG_ENOTFOUND;
	r->unacked += n;
	grant(r);
	return 0;
}

int rpc_client_source_ready(rpc_client *c, uint32_t id)
{
	rpc_req *r = id != 0 ? req_lookup(c, id) : NULL;

	if (r == NULL || !r->has_body || r->source == NULL)
		return ENG_ENOTFOUND;
	if (r->source_waiting) {
		r->source_waiting = false;
		if (live(c))
			pump(c);
	}
	return 0;
}

int rpc_client_idem_key(char key[RPC_IDEM_KEY_CHARS + 1])
{
	uint8_t raw[RPC_IDEM_KEY_CHARS / 2];

	if (eng_crypto_init() != 0)
		return ENG_EIO;
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2hex(key, RPC_IDEM_KEY_CHARS + 1, raw, sizeof(raw));
	return 0;
}

bool rpc_client_connected(const rpc_client *c)
{
	return live(c);
}

void rpc_client_trim(rpc_client *c)
{
	if (c->conn != NULL && c->conn->rd != NULL)
		rpc_reader_trim(c->conn->rd);
	rpc_msg_clear(&c->scratch);
}

size_t rpc_client_in_flight(const rpc_client *c)
{
	return c->active.n;
}

size_t rpc_client_queued(const rpc_client *c)
{
	return c->queue.n;
}

size_t rpc_client_write_queue_bytes(const rpc_client *c)
{
	return write_queue_bytes(c);
}

static void on_timer_close(uv_handle_t *h)
{
	rpc_client *c = h->data;

	c->handles--;
	maybe_finish_close(c);
}

void rpc_client_close(rpc_client *c, rpc_client_close_fn *cb, void *ctx)
{
	if (c == NULL || c->closing)
		return;
	c->closing = true;
	c->close_cb = cb;
	c->close_ctx = ctx;
	uv_timer_stop(&c->req_timer);
	uv_timer_stop(&c->conn_timer);
	if (c->conn != NULL)
		conn_teardown(c->conn, RPC_ECANCELLED, RPC_ECANCELLED);
	fail_active(c, RPC_ECANCELLED);
	fail_queue(c, RPC_ECANCELLED);
	uv_close((uv_handle_t *)&c->req_timer, on_timer_close);
	uv_close((uv_handle_t *)&c->conn_timer, on_timer_close);
}
