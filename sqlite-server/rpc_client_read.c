/*
 * The RPC client's input: bytes from the socket (TLS records first when
 * the connection has TLS), frames out of them, the handshake (HELLO,
 * AUTH, AUTH_OK) and the frames of a ready connection: RESPONSE, ERROR,
 * DATA, WINDOW.
 *
 * Rules: a frame the connection's state does not allow closes it with
 * ERROR id 0 (rpcc_proto_fail). A server that cannot prove the shared
 * secret gets no request. The read loop stops as soon as its connection
 * is torn down (a callback may close the client). A large DATA frame for
 * a body the caller takes goes to it in pieces as they arrive, without
 * being put together first.
 */
#include "rpc_client_private.h"
#include "eng_error.h"
#include "rpc_tls.h"

#include <openssl/ssl.h>
#include <sodium.h>
#include <string.h>
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
void rpcc_proto_fail(rpc_conn *conn, int err)
{
	rpcc_conn_send_error(conn, 0, err);
	rpcc_conn_fail(conn, err);
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
			rpcc_req_abort(r, rc);
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
			rpcc_req_abort(r, rc);
	}
	if (f->flags & RPC_F_BODY) {
		/* An upload the server answers before END (it should not):
		 * stop sending. */
		rpcc_uploads_remove(r);
		r->in_body = true;
		r->recv_window = RPC_INITIAL_WINDOW_BYTES;
		r->unacked = 0;
		/* A larger window asked for: the rest of it at once. */
		if (r->window_goal > RPC_INITIAL_WINDOW_BYTES && rpcc_live(c) &&
		    r->state != RQ_ZOMBIE)
			rpcc_send_credit(r, r->window_goal - RPC_INITIAL_WINDOW_BYTES);
		return;
	}
	if (r->state == RQ_ZOMBIE)
		rpcc_req_free(r);
	else
		rpcc_req_finish(r, 0, &r->head);
}

static void on_ready_frame(rpc_conn *conn, const rpc_frame *f)
{
	rpc_client *c = conn->c;
	rpc_req *r = f->request_id != 0 ? rpcc_req_lookup(c, f->request_id) : NULL;
	rpc_msg m = RPC_MSG_INIT;
	rpc_view v;
	uint64_t credit;

	if (r != NULL && r->state == RQ_QUEUED)
		r = NULL;
	switch (f->kind) {
	case RPC_K_RESPONSE:
		if (r == NULL || r->in_body) {
			rpcc_proto_fail(conn, RPC_EPROTO);
			return;
		}
		on_response(conn, r, f);
		break;
	case RPC_K_ERROR:
		if (f->request_id == 0) {
			rpcc_conn_fail(conn, frame_error_code(f));
			return;
		}
		if (r == NULL)
			break;          /* already finished: nothing to fail */
		if (r->state == RQ_ZOMBIE)
			rpcc_req_free(r);
		else
			rpcc_req_finish(r, frame_error_code(f), NULL);
		break;
	case RPC_K_DATA:
		if (r == NULL || !r->in_body) {
			rpcc_proto_fail(conn, RPC_EWINDOW);
			return;
		}
		rpcc_on_data(conn, r, f);
		break;
	case RPC_K_WINDOW:
		if (rpc_decode(f->payload, f->payload_len, NULL, &m, &v) != 0 ||
		    rpc_get_u64(&v, RPC_T_CREDIT, &credit) != 0) {
			rpc_msg_clear(&m);
			rpcc_proto_fail(conn, RPC_EWINDOW);
			return;
		}
		rpc_msg_clear(&m);
		/* Credit for a stream that is over (END sent, or the request
		 * was given up) crossed our frames: nothing to do. */
		if (r == NULL || !r->on_uploads)
			break;
		if (r->send_window + credit > UINT32_MAX) {
			rpcc_proto_fail(conn, RPC_EWINDOW);
			return;
		}
		r->send_window += credit;
		rpcc_pump(c);
		break;
	case RPC_K_EVENT:
		break;              /* reserved in version 1: ignored */
	default:
		rpcc_proto_fail(conn, RPC_EPROTO);
		return;
	}
	/* A finished request freed a slot. */
	rpcc_flush_queue(c);
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
		rpcc_proto_fail(conn, RPC_EMISSING);
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
		rpcc_conn_fail(conn, RPC_EVERSION);
		return;
	}
	if (rpc_auth_nonce(conn->client_nonce) != 0 ||
	    rpc_auth_client_proof(c->secret, conn->server_nonce,
				  conn->client_nonce,
				  (const uint8_t *)c->peer_name, name_len,
				  proof) != 0) {
		rpcc_conn_fail(conn, ENG_EIO);
		return;
	}
	rpc_put_u64(&p, RPC_T_VERSION, RPC_VERSION);
	rpc_put_bytes(&p, RPC_T_NONCE, conn->client_nonce, RPC_NONCE_BYTES);
	rpc_put_bytes(&p, RPC_T_PEER_NAME, c->peer_name, name_len);
	rpc_put_bytes(&p, RPC_T_PROOF, proof, RPC_PROOF_BYTES);
	rpcc_conn_send_frame(conn, RPC_K_AUTH, 0, 0, 0, p.data, p.len);
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
		rpcc_conn_fail(conn, RPC_ENOTAUTH);
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
		rpcc_flush_queue(c);
}

static void on_frame(rpc_conn *conn, const rpc_frame *f)
{
	switch (conn->state) {
	case CS_WAIT_HELLO:
	case CS_WAIT_AUTH_OK:
		if (f->kind == RPC_K_ERROR) {
			int err = frame_error_code(f);

			rpcc_conn_fail(conn, err == ENG_EIO ? RPC_EPROTO : err);
		} else if (f->kind == RPC_K_HELLO && conn->state == CS_WAIT_HELLO) {
			on_hello(conn, f);
		} else if (f->kind == RPC_K_AUTH_OK &&
			   conn->state == CS_WAIT_AUTH_OK) {
			on_auth_ok(conn, f);
		} else {
			rpcc_proto_fail(conn, RPC_EPROTO);
		}
		break;
	case CS_READY:
		on_ready_frame(conn, f);
		break;
	default:
		break;
	}
}

void rpcc_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
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
	r = f.request_id != 0 ? rpcc_req_lookup(conn->c, f.request_id) : NULL;
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
			rpcc_proto_fail(conn, rc);
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
		rpcc_conn_fail(conn, ENG_EIO);
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
		rpcc_tls_flush(conn);
		if (e == SSL_ERROR_WANT_READ)
			break;
		if (e == SSL_ERROR_ZERO_RETURN)
			rpcc_conn_fail(conn, RPC_EUNAVAILABLE);
		else
			rpcc_conn_fail(conn, rpc_tls_failure(conn->ssl, "rpc client"));
		return;
	}
	if (conn->state == CS_CLOSED)
		return;
	rpcc_tls_flush(conn);
	if (conn->tls_early.len > 0 && SSL_is_init_finished(conn->ssl)) {
		eng_buf early = conn->tls_early;

		conn->tls_early = (eng_buf)ENG_BUF_INIT;
		rpcc_conn_send(conn, &early);
	}
}

void rpcc_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	rpc_conn *conn = s->data;

	if (nread < 0) {
		rpcc_conn_fail(conn, nread == UV_EOF && conn->ssl != NULL &&
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
