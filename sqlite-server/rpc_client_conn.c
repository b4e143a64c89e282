/*
 * The RPC client's connections: writing bytes (a frame through TLS when
 * the connection has it), connecting (unix socket or TCP, TLS set-up),
 * the connection timer (connect timeout, a failed write, the reconnect
 * delay with back-off) and the one teardown path.
 *
 * Rules: an rpc_conn is freed only in its handle's close callback; a
 * write buffer lives until its write callback and is wiped before it is
 * freed. A failure found while writing is not acted on in place (the
 * caller may be in the middle of anything) but from the connection timer.
 * Everything that takes a connection down goes through
 * rpcc_conn_teardown, which resends or fails its requests.
 */
#include "rpc_client_private.h"
#include "eng_error.h"
#include "rpc_tls.h"

#include <openssl/ssl.h>
#include <sodium.h>
#include <stdlib.h>
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

static void sock_send(rpc_conn *conn, eng_buf *b);

static void on_write(uv_write_t *w, int status)
{
	wreq *wr = w->data;
	rpc_conn *conn = wr->conn;
	rpc_client *c = conn->c;

	frame_wipe_free(&wr->b);
	free(wr);
	if (status < 0 && status != UV_ECANCELED && conn->state != CS_CLOSED) {
		rpcc_conn_fail(conn, RPC_EUNAVAILABLE);
		return;
	}
	if (conn == c->conn && c->ready)
		rpcc_pump(c);
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
		rpcc_buf_wipe_free(b);
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
		rpcc_buf_wipe_free(&wr->b);
		free(wr);
		conn->dead_err = RPC_EUNAVAILABLE;
		uv_timer_start(&conn->c->conn_timer, rpcc_on_conn_timer, 0, 0);
	}
}

/* Moves what TLS produced to the socket. */
void rpcc_tls_flush(rpc_conn *conn)
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
void rpcc_conn_send(rpc_conn *conn, eng_buf *b)
{
	size_t off = 0;

	if (conn == NULL || conn->ssl == NULL) {
		sock_send(conn, b);
		return;
	}
	if (conn->state == CS_CLOSED || conn->dead_err != 0) {
		rpcc_buf_wipe_free(b);
		return;
	}
	if (!SSL_is_init_finished(conn->ssl)) {
		eng_buf_append(&conn->tls_early, b->data, b->len);
		rpcc_buf_wipe_free(b);
		return;
	}
	while (off < b->len) {
		size_t left = b->len - off;
		/* wbio is a memory BIO: SSL_write takes all it is given. */
		int n = SSL_write(conn->ssl, b->data + off,
				  left > (1u << 30) ? 1 << 30 : (int)left);

		if (n <= 0) {
			conn->dead_err = rpc_tls_failure(conn->ssl, "rpc client");
			uv_timer_start(&conn->c->conn_timer, rpcc_on_conn_timer, 0, 0);
			break;
		}
		off += (size_t)n;
	}
	rpcc_buf_wipe_free(b);
	rpcc_tls_flush(conn);
}

void rpcc_conn_send_frame(rpc_conn *conn, uint8_t kind, uint8_t flags,
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
	rpcc_conn_send(conn, &b);
}

void rpcc_conn_send_error(rpc_conn *conn, uint32_t id, int err)
{
	eng_buf p = ENG_BUF_INIT;

	rpc_put_u64(&p, RPC_T_CODE, rpc_err_to_wire(err));
	rpc_put_str(&p, RPC_T_ERROR_TEXT, rpc_strerror(err));
	rpcc_conn_send_frame(conn, RPC_K_ERROR, 0, 0, id, p.data, p.len);
	eng_buf_free(&p);
}

bool rpcc_live(const rpc_client *c)
{
	return c->conn != NULL && c->ready;
}

void rpcc_maybe_finish_close(rpc_client *c)
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
	rpcc_buf_wipe_free(&conn->tls_early);
	free(conn);
	c->handles--;
	rpcc_maybe_finish_close(c);
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
void rpcc_fail_active(rpc_client *c, int req_err)
{
	rpc_req *r;

	while ((r = c->active.tail) != NULL) {
		if (r->state == RQ_ZOMBIE) {
			rpcc_req_free(r);
		} else if (req_err == RPC_EUNAVAILABLE && can_resend(r)) {
			rpcc_uploads_remove(r);
			rpcc_list_remove(&c->active, r);
			r->state = RQ_QUEUED;
			rpcc_req_reset_answer(r);
			rpcc_list_push_front(&c->queue, r);
		} else {
			rpcc_req_finish(r, req_err, NULL);
		}
	}
}

void rpcc_fail_queue(rpc_client *c, int err)
{
	rpc_req *r;

	while ((r = c->queue.head) != NULL)
		rpcc_req_finish(r, err, NULL);
}

/* The one place a connection goes down (or an attempt fails). */
void rpcc_conn_teardown(rpc_conn *conn, int err, int req_err)
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
	rpcc_fail_active(c, req_err);
	if (err == RPC_ENOTAUTH)
		rpcc_fail_queue(c, RPC_ENOTAUTH);
	if (c->on_state != NULL && !c->closing)
		c->on_state(c->state_ctx, false, err);
	if (!c->closing && c->conn == NULL) {
		uv_timer_start(&c->conn_timer, rpcc_on_conn_timer, c->backoff_ms, 0);
		c->backoff_ms = c->backoff_ms * 2 > c->backoff_max_ms ?
			c->backoff_max_ms : c->backoff_ms * 2;
	}
}

void rpcc_conn_fail(rpc_conn *conn, int err)
{
	if (err != RPC_ENOTAUTH && err != RPC_EVERSION)
		eng_log(ENG_LOG_INFO, "rpc client: connection lost (%s)",
			rpc_strerror(err));
	else
		eng_log(ENG_LOG_WARN, "rpc client: handshake failed (%s)",
			rpc_strerror(err));
	rpcc_conn_teardown(conn, err, RPC_EUNAVAILABLE);
}

static void on_connect(uv_connect_t *req, int status)
{
	rpc_conn *conn = req->data;

	if (conn->state == CS_CLOSED)
		return;
	if (status < 0) {
		rpcc_conn_fail(conn, RPC_EUNAVAILABLE);
		return;
	}
	conn->state = CS_WAIT_HELLO;
	if (conn->c->ssl_ctx != NULL) {
		/* The server sends HELLO once the handshake is done. */
		if (rpc_tls_ssl_new(conn->c->ssl_ctx, conn->c->tls_name,
				    &conn->ssl) != 0) {
			rpcc_conn_fail(conn, ENG_EIO);
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
		rpcc_tls_flush(conn);
	}
	if (uv_read_start(&conn->u.s, rpcc_on_alloc, rpcc_on_read) != 0)
		rpcc_conn_fail(conn, RPC_EUNAVAILABLE);
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
		uv_timer_start(&c->conn_timer, rpcc_on_conn_timer, c->backoff_ms, 0);
		return;
	}
	conn->u.h.data = conn;
	conn->creq.data = conn;
	c->handles++;
	c->conn = conn;
	c->server_max_frame = RPC_MAX_FRAME_BYTES;
	uv_timer_start(&c->conn_timer, rpcc_on_conn_timer, c->connect_timeout_ms, 0);
	if (c->is_unix) {
		uv_pipe_connect(&conn->creq, &conn->u.pipe, c->unix_path, on_connect);
	} else {
		rc = uv_tcp_connect(&conn->creq, &conn->u.tcp,
				    (const struct sockaddr *)&c->addr, on_connect);
		if (rc != 0)
			rpcc_conn_fail(conn, RPC_EUNAVAILABLE);
	}
}

/* Connect timeout, a failed write to act on, or the reconnect delay. */
void rpcc_on_conn_timer(uv_timer_t *t)
{
	rpc_client *c = t->data;
	rpc_conn *conn = c->conn;

	if (c->closing)
		return;
	if (conn != NULL) {
		if (conn->dead_err != 0)
			rpcc_conn_fail(conn, conn->dead_err);
		else if (!c->ready)
			rpcc_conn_fail(conn, RPC_ETIMEOUT);
		return;
	}
	start_connect(c);
}
