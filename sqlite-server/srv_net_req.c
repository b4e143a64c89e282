/*
 * Requests of sqlited's network core and the handler side of srv.h: a
 * net_req from its REQUEST frame to its answer (srv_reply, srv_fail, the
 * last srv_send_data), body streams within the client's credit window
 * (srv_reply_body, srv_send_data, srv_window), and resuming them when the
 * connection's output drains.
 *
 * Rules: loop thread only. A request is the core's until its handler
 * runs, then the handler's until it answers, even when its connection is
 * gone (conn == NULL): the answer of a request that is no longer live is
 * dropped, not sent. Nothing is sent past the window. Requests and
 * answers carry passwords: they are wiped when freed.
 */
#include "srv_net_private.h"

#include "eng_error.h"
#include "srv_bufpool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static net_req *to_net(srv_req *req)
{
	return (net_req *)req;
}

/* ---- requests ---- */

static void req_unlink(net_req *r)
{
	srv_conn *c = r->pub.conn;

	if (c == NULL || (r->prev == NULL && c->reqs != r))
		return;
	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		c->reqs = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
	c->n_reqs--;
}

char *srv_req_client_addr(const srv_req *req)
{
	const uint8_t *p;
	size_t len;

	if (rpc_get_bytes(&req->args, RPC_T_CLIENT_ADDR, &p, &len) == 0 &&
	    len > 0 && len <= 64) {
		size_t i;

		for (i = 0; i < len && p[i] > 0x20 && p[i] < 0x7f; i++)
			;
		if (i == len)
			return eng_strndup((const char *)p, len);
	}
	if (req->peer_addr != NULL)
		return eng_strdup(req->peer_addr);
	return eng_strdup(req->peer_name != NULL ? req->peer_name : "local");
}

void net_req_free(net_req *r)
{
	net_state *n = r->pub.srv->net;
	srv_conn *c = r->pub.conn;

	req_unlink(r);
	net_upload_drop(r);
	net_body_free(&r->pub.body);
	if (r->peer != NULL)
		r->peer->in_flight--;
	net_peer_put(n, &r->peer);
	rpc_msg_clear(&r->msg);
	/* Requests and answers carry passwords (UNLOCK, ALIAS_ADD, ...):
	 * they are wiped, not just freed. */
	if (r->payload != NULL)
		sodium_memzero(r->payload, r->payload_len);
	free(r->payload);
	eng_buf_free_wipe(&r->pub.reply);
	free(r);
	n->in_flight--;
	/* While stopping, a connection closes once it has nothing in flight. */
	if (n->stopping && c != NULL && c->n_reqs == 0 && c->state == C_READY)
		net_conn_close(c, true);
	net_stop_progress(n);
}

net_req *net_req_find(srv_conn *c, uint32_t id)
{
	for (net_req *r = c->reqs; r != NULL; r = r->next) {
		if (r->on_wire && r->pub.id == id)
			return r;
	}
	return NULL;
}

net_req *net_req_new(srv_conn *c, const rpc_frame *f, const rpc_op *op)
{
	net_req *r = eng_calloc(1, sizeof(*r));
	net_state *n = c->net;

	r->pub.srv = n->srv;
	r->pub.conn = c;
	r->pub.id = f->request_id;
	r->pub.op = op;
	r->peer = c->peer;
	r->peer->refs++;
	r->peer->in_flight++;
	r->pub.peer_name = r->peer->name;
	snprintf(r->addr, sizeof(r->addr), "%s", c->addr);
	r->pub.peer_addr = r->addr;
	r->on_wire = true;
	r->next = c->reqs;
	if (c->reqs != NULL)
		c->reqs->prev = r;
	c->reqs = r;
	c->n_reqs++;
	n->in_flight++;
	return r;
}

/* Answers a request with an error before its handler runs; a body that
 * is still coming is dropped as it arrives. */
void net_req_refuse(net_req *r, int err, bool body_follows)
{
	srv_conn *c = r->pub.conn;

	net_conn_send_error(c, r->pub.id, r->pub.op != NULL ? r->pub.op->opcode : 0, err);
	net_upload_drop(r);
	if (body_follows) {
		/* The client may still send what its window allows. */
		if (r->phase == R_NEW)
			r->recv_window = RPC_INITIAL_WINDOW_BYTES;
		r->phase = R_DRAIN;
		return;
	}
	net_req_free(r);
}

void net_run_handler(net_req *r)
{
	r->phase = R_HANDLER;
	r->handler(&r->pub);
}

/* ---- the handler side (srv.h) ---- */

/* True when an answer of this request still goes to the client. */
bool net_req_live(const net_req *r)
{
	return r->pub.conn != NULL && r->on_wire && r->pub.conn->state == C_READY;
}

void srv_reply(srv_req *req)
{
	net_req *r = to_net(req);

	if (net_req_live(r)) {
		int rc = net_send_frame(req->conn, RPC_K_RESPONSE, 0, req->op->opcode,
					req->id, req->reply.data, req->reply.len);
		if (rc != 0) {
			eng_log(ENG_LOG_ERROR, "sqlited: %s answer too large for one frame",
				req->op->name);
			net_conn_send_error(req->conn, req->id, req->op->opcode, ENG_ELIMIT);
		}
	}
	net_req_free(r);
}

void srv_reply_more(srv_req *req)
{
	net_req *r = to_net(req);

	if (net_req_live(r) &&
	    net_send_frame(req->conn, RPC_K_RESPONSE, RPC_F_MORE, req->op->opcode,
			   req->id, req->reply.data, req->reply.len) != 0)
		eng_log(ENG_LOG_ERROR, "sqlited: %s part too large for one frame",
			req->op->name);
	eng_buf_reset(&req->reply);
}

void srv_fail(srv_req *req, int err)
{
	net_req *r = to_net(req);

	if (err >= 0 || err < RPC_ERR_MIN)
		err = ENG_EIO;
	if (net_req_live(r))
		net_conn_send_error(req->conn, req->id, req->op->opcode, err);
	net_req_free(r);
}

void srv_reply_body(srv_req *req)
{
	net_req *r = to_net(req);

	r->streaming = true;
	r->send_window = RPC_INITIAL_WINDOW_BYTES;
	if (net_req_live(r))
		net_send_frame(req->conn, RPC_K_RESPONSE, RPC_F_BODY, req->op->opcode,
			       req->id, req->reply.data, req->reply.len);
	eng_buf_reset(&req->reply);
}

size_t srv_window(const srv_req *req)
{
	const net_req *r = (const net_req *)req;

	if (!net_req_live(r))
		return RPC_MAX_CHUNK_BYTES;   /* dropped anyway: let it finish */
	if (req->conn->paused)
		return 0;
	return r->send_window > SIZE_MAX ? SIZE_MAX : (size_t)r->send_window;
}

size_t srv_credit_min(const srv_req *req)
{
	return ((const net_req *)req)->credit_min;
}

void srv_send_data(srv_req *req, const void *data, size_t len, bool end)
{
	net_req *r = to_net(req);
	const uint8_t *p = data;

	if (net_req_live(r)) {
		if (len > r->send_window) {
			/* A handler bug: never more than the window. */
			eng_log(ENG_LOG_ERROR, "sqlited: %s sent past the window",
				req->op->name);
			len = (size_t)r->send_window;
			end = false;
			net_conn_send_error(req->conn, req->id, req->op->opcode, ENG_EIO);
			r->on_wire = false;
		}
		r->send_window -= len;
		do {
			size_t n = len > RPC_MAX_CHUNK_BYTES ? RPC_MAX_CHUNK_BYTES : len;
			bool last = end && n == len;

			net_send_frame(req->conn, RPC_K_DATA, last ? RPC_F_END : 0, 0,
				       req->id, p, n);
			p += n;
			len -= n;
		} while (len > 0);
	}
	if (end)
		net_req_free(r);
}

void srv_send_data_buf(srv_req *req, uint8_t *buf, size_t len, bool end)
{
	net_req *r = to_net(req);
	uint8_t flags = end ? RPC_F_END : 0;

	/* Over TLS each frame is its own SSL_write (a copy anyway); what
	 * srv_send_data drops or refuses it drops or refuses the same way. */
	if (!net_req_live(r) || len > r->send_window || req->conn->ssl != NULL ||
	    rpc_frame_header(buf, RPC_K_DATA, flags, 0, req->id, len) != 0) {
		srv_send_data(req, buf + RPC_HEADER_BYTES, len, end);
		srv_bufpool_put(&srv_pieces, buf, RPC_HEADER_BYTES + len);
		return;
	}
	r->send_window -= len;
	net_wire_queue(req->conn, buf, RPC_HEADER_BYTES + len, W_POOLED);
	if (end)
		net_req_free(r);
}

bool srv_reply_body_end(srv_req *req, const void *data, size_t len)
{
	net_req *r = to_net(req);
	eng_buf b = ENG_BUF_INIT;
	size_t mark, n;
	char *bytes;

	/* Plaintext (a unix socket, loopback TCP) only: over TLS each frame
	 * stays its own SSL_write, as before. */
	if (len > RPC_INITIAL_WINDOW_BYTES || len > RPC_MAX_CHUNK_BYTES ||
	    (net_req_live(r) && (req->conn->paused || req->conn->ssl != NULL))) {
		srv_reply_body(req);
		return false;
	}
	r->streaming = true;
	r->send_window = RPC_INITIAL_WINDOW_BYTES - len;
	if (net_req_live(r)) {
		/* Room for both frames: no realloc leaves a copy behind. */
		eng_buf_reserve(&b, 2 * RPC_HEADER_BYTES + req->reply.len + len);
		mark = rpc_frame_begin(&b, RPC_K_RESPONSE, RPC_F_BODY,
				       req->op->opcode, req->id);
		eng_buf_append(&b, req->reply.data, req->reply.len);
		if (rpc_frame_end(&b, mark, NULL) != 0) {
			eng_buf_free_wipe(&b);
			srv_reply_body(req);
			return false;
		}
		mark = rpc_frame_begin(&b, RPC_K_DATA, RPC_F_END, 0, req->id);
		if (len > 0)
			eng_buf_append(&b, data, len);
		/* Cannot fail: len is within the chunk bound checked above. */
		(void)rpc_frame_end(&b, mark, NULL);
		bytes = eng_buf_steal(&b, &n);
		net_wire_queue(req->conn, bytes, n, W_OWNED);
	}
	eng_buf_free_wipe(&b);
	eng_buf_reset(&req->reply);
	net_req_free(r);
	return true;
}

bool srv_reply_body_end_buf(srv_req *req, uint8_t *buf, size_t at,
			    size_t len)
{
	net_req *r = to_net(req);
	size_t head = RPC_HEADER_BYTES + req->reply.len;

	if (at != head + RPC_HEADER_BYTES || at + len > SRV_BUFPOOL_BYTES ||
	    !net_req_live(r) || req->conn->ssl != NULL ||
	    req->conn->paused || len > RPC_INITIAL_WINDOW_BYTES ||
	    rpc_frame_header(buf, RPC_K_RESPONSE, RPC_F_BODY,
			     req->op->opcode, req->id, req->reply.len) != 0 ||
	    rpc_frame_header(buf + head, RPC_K_DATA, RPC_F_END, 0, req->id,
			     len) != 0) {
		if (!srv_reply_body_end(req, buf + at, len))
			return false;
		srv_bufpool_put(&srv_pieces, buf, at + len);
		return true;
	}
	memcpy(buf + RPC_HEADER_BYTES, req->reply.data, req->reply.len);
	r->streaming = true;
	r->send_window = RPC_INITIAL_WINDOW_BYTES - len;
	net_wire_queue(req->conn, buf, at + len, W_POOLED);
	eng_buf_reset(&req->reply);
	net_req_free(r);
	return true;
}

/* Output drained below the bound: streams with credit may go on. */
void net_resume_streams(srv_conn *c)
{
	uint32_t *ids;
	size_t n = 0;
	net_req *r;

	if (c->n_reqs == 0)
		return;
	/* By id, not by pointer: a callback may free any request. */
	ids = eng_malloc(c->n_reqs * sizeof(*ids));
	for (r = c->reqs; r != NULL; r = r->next) {
		if (r->streaming && r->pub.on_window != NULL && r->on_wire)
			ids[n++] = r->pub.id;
	}
	for (size_t i = 0; i < n; i++) {
		if (c->state != C_READY || c->paused)
			break;
		r = net_req_find(c, ids[i]);
		if (r != NULL && r->streaming && r->pub.on_window != NULL &&
		    r->send_window > 0) {
			void (*cb)(srv_req *) = r->pub.on_window;

			r->pub.on_window = NULL;
			cb(&r->pub);
		}
	}
	free(ids);
}
