/*
 * The read side of sqlited's network core: bytes from the socket (through
 * TLS when the connection has it) go to the connection's rpc_reader, and
 * each frame is handled before the next is read: AUTH during the
 * handshake, then REQUEST (the pre-dispatch checks: opcode, stopping,
 * in-flight limits, admin peers, arguments, session, body), DATA (the
 * upload's, srv_net_upload.c), WINDOW and CANCEL.
 *
 * Rules: loop thread only. A frame begun must end within
 * frame_timeout_ms; reads stop while the connection's output is over its
 * bound (srv_net_write.c) and after a failed AUTH; a framing violation is
 * answered with ERROR id 0 and closes the connection.
 */
#include "srv_net_private.h"

#include "eng_error.h"

#include <stdlib.h>
#include <string.h>

static bool is_admin_peer(const srv_conn *c)
{
	/* The unix socket is mode 0600: only the sealmail user (the CLI,
	 * the local frontends) reaches it. Over TCP, the peer names the
	 * installation gives its administration clients. */
	if (c->is_unix)
		return true;
	return strncmp(c->peer->name, "admin@", 6) == 0 ||
	       strncmp(c->peer->name, "api@", 4) == 0 ||
	       strncmp(c->peer->name, "cli@", 4) == 0;
}

void net_read_start(srv_conn *c)
{
	c->reading = true;
	if (!c->paused)
		uv_read_start(&c->h.stream, net_on_alloc, net_on_read);
}

void net_read_stop(srv_conn *c)
{
	c->reading = false;
	uv_read_stop(&c->h.stream);
}

static void on_request(srv_conn *c, const rpc_frame *f)
{
	net_state *n = c->net;
	bool body = (f->flags & RPC_F_BODY) != 0;
	const rpc_op *op = rpc_op_lookup(f->opcode);
	srv_handler_fn *h = op == NULL ? NULL :
			    n->opt.handler_for != NULL ? n->opt.handler_for(f->opcode) :
			    srv_handler(f->opcode);
	net_req *r = net_req_find(c, f->request_id);
	int rc;

	if (r != NULL) {
		if (r->phase != R_DRAIN) {
			net_conn_fatal(c, RPC_EPROTO);
			return;
		}
		/* The client reused the id of an answered upload: its
		 * leftover DATA is over. */
		net_req_free(r);
	}
	n->srv->requests++;
	r = net_req_new(c, f, op);
	if (h == NULL) {
		/* Not in the table, or its family not linked in. */
		r->pub.op = NULL;
		net_req_refuse(r, RPC_EOPCODE, body);
		return;
	}
	r->handler = h;
	if (n->stopping) {
		net_req_refuse(r, RPC_EUNAVAILABLE, body);
		return;
	}
	if (c->n_reqs > n->opt.max_in_flight ||
	    r->peer->in_flight > n->opt.max_in_flight_peer) {
		net_req_refuse(r, RPC_ETOOMANY, body);
		return;
	}
	if (body && !(op->flags & RPC_OPF_BODY_IN)) {
		net_req_refuse(r, RPC_EPROTO, body);
		return;
	}
	if ((op->flags & RPC_OPF_ADMIN) && !is_admin_peer(c)) {
		net_req_refuse(r, ENG_EPERM, body);
		return;
	}
	/* The request keeps its own copy: handlers answer long after this
	 * read buffer has been reused. */
	if (f->payload_len > 0) {
		r->payload = eng_malloc(f->payload_len);
		r->payload_len = f->payload_len;
		memcpy(r->payload, f->payload, f->payload_len);
	}
	rc = rpc_decode(r->payload, f->payload_len, &c->lim, &r->msg, &r->pub.args);
	if (rc != 0) {
		net_req_refuse(r, rc, body);
		return;
	}
	if (op->flags & RPC_OPF_SESSION) {
		const uint8_t *sess;
		size_t len;

		if (rpc_get_bytes(&r->pub.args, RPC_T_SESSION, &sess, &len) != 0 ||
		    len != SRV_SESSION_BYTES || n->srv->aliases == NULL ||
		    srv_session_alias(n->srv->aliases, sess, r->pub.alias_id) != 0) {
			net_req_refuse(r, RPC_ENOSESSION, body);
			return;
		}
		memcpy(r->pub.session, sess, SRV_SESSION_BYTES);
	}
	if (body) {
		net_upload_start(r);
		return;
	}
	net_run_handler(r);
}

static void on_window_frame(srv_conn *c, const rpc_frame *f)
{
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root;
	uint64_t credit;
	net_req *r;

	if (rpc_decode(f->payload, f->payload_len, &c->lim, &msg, &root) != 0 ||
	    rpc_get_u64(&root, RPC_T_CREDIT, &credit) != 0) {
		rpc_msg_clear(&msg);
		net_conn_fatal(c, RPC_EWINDOW);
		return;
	}
	rpc_msg_clear(&msg);
	r = net_req_find(c, f->request_id);
	/* Credit for a stream that has just ended crosses its END: ignored. */
	if (r == NULL || !r->streaming)
		return;
	if (credit > UINT32_MAX || r->send_window + credit > UINT32_MAX) {
		net_conn_fatal(c, RPC_EWINDOW);
		return;
	}
	r->send_window += credit;
	if (credit > 0 && (r->credit_min == 0 || credit < r->credit_min))
		r->credit_min = (uint32_t)credit;
	if (r->pub.on_window != NULL && !c->paused) {
		void (*cb)(srv_req *) = r->pub.on_window;

		r->pub.on_window = NULL;
		cb(&r->pub);
	}
}

static void on_cancel(srv_conn *c, uint32_t id, bool answer)
{
	net_req *r = net_req_find(c, id);

	if (r == NULL || r->phase == R_DRAIN)
		return;
	if (answer)
		net_conn_send_error(c, id, r->pub.op != NULL ? r->pub.op->opcode : 0,
				    RPC_ECANCELLED);
	if (r->phase == R_UPLOAD) {
		/* Nothing is stored; DATA still in flight is dropped. */
		bool end = r->up != NULL && r->up->end;

		net_upload_drop(r);
		if (!end) {
			r->phase = R_DRAIN;
			return;
		}
		net_req_free(r);
		return;
	}
	r->on_wire = false;
	r->pub.cancelled = true;
	if (r->pub.on_window != NULL) {
		void (*cb)(srv_req *) = r->pub.on_window;

		r->pub.on_window = NULL;
		cb(&r->pub);
	}
}

static void send_auth_ok(srv_conn *c, const uint8_t cn[RPC_NONCE_BYTES])
{
	uint8_t proof[RPC_PROOF_BYTES];
	eng_buf pl = ENG_BUF_INIT;

	rpc_auth_server_proof(c->net->srv->rpc_secret, c->nonce, cn,
			      (const uint8_t *)c->peer->name, strlen(c->peer->name),
			      proof);
	rpc_put_bytes(&pl, RPC_T_PROOF, proof, sizeof(proof));
	rpc_put_u64(&pl, RPC_T_MAX_FRAME, RPC_MAX_FRAME_BYTES);
	rpc_put_u64(&pl, RPC_T_MAX_IN_FLIGHT, c->net->opt.max_in_flight);
	net_send_frame(c, RPC_K_AUTH_OK, 0, 0, 0, pl.data, pl.len);
	sodium_memzero(proof, sizeof(proof));
	eng_buf_free_wipe(&pl);
}

static void on_auth_delay(uv_timer_t *t)
{
	srv_conn *c = t->data;

	net_conn_fatal(c, RPC_ENOTAUTH);
}

static void on_auth(srv_conn *c, const rpc_frame *f)
{
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root;
	const uint8_t *cn, *name, *proof;
	size_t cn_len, name_len, proof_len;
	uint64_t version;
	int rc;

	if (f->kind != RPC_K_AUTH) {
		net_conn_fatal(c, RPC_EPROTO);
		return;
	}
	rc = rpc_decode(f->payload, f->payload_len, &c->lim, &msg, &root);
	if (rc == 0 && rpc_get_u64(&root, RPC_T_VERSION, &version) == 0 &&
	    version != RPC_VERSION)
		rc = RPC_EVERSION;
	if (rc != 0) {
		rpc_msg_clear(&msg);
		net_conn_fatal(c, rc);
		return;
	}
	if (rpc_get_bytes(&root, RPC_T_NONCE, &cn, &cn_len) != 0 ||
	    cn_len != RPC_NONCE_BYTES ||
	    rpc_get_bytes(&root, RPC_T_PEER_NAME, &name, &name_len) != 0 ||
	    rpc_auth_peer_name_check(name, name_len) != 0 ||
	    rpc_get_bytes(&root, RPC_T_PROOF, &proof, &proof_len) != 0 ||
	    rpc_auth_verify_client(c->net->srv->rpc_secret, c->nonce, cn, name,
				   name_len, proof, proof_len) != 0) {
		rpc_msg_clear(&msg);
		eng_log(ENG_LOG_WARN, "sqlited: peer authentication failed from %s",
			c->addr);
		/* Slow down guessing: answer after a delay, reading nothing. */
		c->state = C_AUTH_DELAY;
		net_read_stop(c);
		uv_timer_stop(&c->timer);
		c->frame_timer_on = false;
		uv_timer_start(&c->timer, on_auth_delay, c->net->opt.auth_fail_delay_ms, 0);
		return;
	}
	c->peer = net_peer_get(c->net, name, name_len);
	send_auth_ok(c, cn);
	rpc_msg_clear(&msg);
	c->state = C_READY;
	uv_timer_stop(&c->timer);
	c->frame_timer_on = false;
	rpc_limits_default(&c->lim);
	rpc_reader_set_limits(c->reader, &c->lim);
}

static void on_frame(srv_conn *c, const rpc_frame *f)
{
	if (c->state == C_HANDSHAKE) {
		on_auth(c, f);
		return;
	}
	switch (f->kind) {
	case RPC_K_REQUEST:
		on_request(c, f);
		break;
	case RPC_K_DATA:
		net_on_data(c, f);
		break;
	case RPC_K_WINDOW:
		on_window_frame(c, f);
		break;
	case RPC_K_CANCEL:
		on_cancel(c, f->request_id, true);
		break;
	case RPC_K_ERROR:
		/* The client gives up a request (a download it cannot take):
		 * as CANCEL without an answer; id 0 ends the connection. */
		if (f->request_id == 0)
			net_conn_close(c, true);
		else
			on_cancel(c, f->request_id, false);
		break;
	default:
		net_conn_fatal(c, RPC_EPROTO);
		break;
	}
}

void net_on_frame_timeout(uv_timer_t *t)
{
	srv_conn *c = t->data;

	eng_log(ENG_LOG_INFO, "sqlited: %s: %s timed out, closing", c->addr,
		c->state == C_HANDSHAKE ? "handshake" : "frame");
	net_conn_close(c, false);
}

/* Plaintext from the peer. */
static void on_plain(srv_conn *c, const uint8_t *p, size_t len)
{
	while (len > 0 && (c->state == C_HANDSHAKE || c->state == C_READY)) {
		rpc_frame f;
		size_t used = 0;
		int rc = rpc_reader_feed(c->reader, p, len, &used, &f);

		p += used;
		len -= used;
		if (rc < 0) {
			net_conn_fatal(c, rc);
			return;
		}
		if (rc == 1)
			on_frame(c, &f);
	}
	if (c->state != C_READY)
		return;
	/* A frame begun must end within frame_timeout_ms (slow loris). */
	if (rpc_reader_pending(c->reader) > 0 && !c->frame_timer_on && !c->paused) {
		c->frame_timer_on = true;
		uv_timer_start(&c->timer, net_on_frame_timeout, c->net->opt.frame_timeout_ms, 0);
	} else if (rpc_reader_pending(c->reader) == 0 && c->frame_timer_on) {
		c->frame_timer_on = false;
		uv_timer_stop(&c->timer);
	}
}

static void on_tls_bytes(srv_conn *c, const char *p, size_t len)
{
	uint8_t plain[16384];

	if (BIO_write(c->rbio, p, (int)len) != (int)len) {
		net_conn_close(c, false);
		return;
	}
	for (;;) {
		int n = SSL_read(c->ssl, plain, sizeof(plain));

		if (n > 0) {
			on_plain(c, plain, (size_t)n);
			if (c->state == C_CLOSING || c->state == C_AUTH_DELAY)
				break;
			continue;
		}
		int e = SSL_get_error(c->ssl, n);

		net_tls_flush(c);
		if (e == SSL_ERROR_WANT_READ)
			break;
		eng_log(ENG_LOG_INFO, "sqlited: %s: TLS failed, closing", c->addr);
		net_conn_close(c, false);
		return;
	}
	net_tls_flush(c);
	if (c->tls_early.len > 0 && SSL_is_init_finished(c->ssl)) {
		eng_buf early = c->tls_early;

		c->tls_early = (eng_buf)ENG_BUF_INIT;
		net_conn_write(c, early.data, early.len);
		eng_buf_free_wipe(&early);
	}
}

void net_on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	srv_conn *c = h->data;

	(void)hint;
	*buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

void net_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	srv_conn *c = s->data;

	if (nread < 0) {
		net_conn_close(c, false);
		return;
	}
	if (nread == 0 || c->state == C_CLOSING || c->state == C_AUTH_DELAY)
		return;
	c->net->srv->bytes_in += (uint64_t)nread;
	if (c->ssl != NULL)
		on_tls_bytes(c, buf->base, (size_t)nread);
	else
		on_plain(c, (const uint8_t *)buf->base, (size_t)nread);
}
