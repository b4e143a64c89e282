/*
 * The RPC client's body streams. Uploads: DATA frames of a request's body
 * (from memory or from the caller's source), sent round-robin over the
 * uploading requests while they have window credit and libuv's write
 * queue is short. Downloads: DATA frames handed to the data callback,
 * and the credit granted back as the caller consumes them.
 *
 * Rules: memory is bounded both ways: an upload produces a chunk only
 * while less than WRITE_QUEUE_BOUND waits in libuv, and a download's
 * server may send only what its window allows (more is a protocol error).
 */
#include "rpc_client_private.h"
#include "eng_error.h"

#include <string.h>

/* Uploads produce chunks only while less than this waits in libuv. */
#define WRITE_QUEUE_BOUND (1024u * 1024)
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
	if (r->source != NULL && r->source_size != NULL) {
		size_t have = r->source_size(r->source_ctx);

		if (have < max)
			max = have;
	}
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
			rpcc_req_abort(r, n < 0 ? (int)n : ENG_EINVAL);
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
		rpcc_req_abort(r, ENG_EINVAL);
		return true;
	}
	r->send_window -= (uint64_t)n;
	rpcc_conn_send(c->conn, &b);
	if (end) {
		r->body_sent = true;
		rpcc_uploads_remove(r);
	}
	return true;
}

size_t rpcc_write_queue_bytes(const rpc_client *c)
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
void rpcc_pump(rpc_client *c)
{
	bool progress = true;

	if (c->pumping)
		return;
	c->pumping = true;
	while (progress && rpcc_live(c) && !c->closing) {
		rpc_req *r = c->up_head;

		progress = false;
		while (r != NULL && rpcc_live(c)) {
			rpc_req *next = r->up_next;

			if (rpcc_write_queue_bytes(c) >= WRITE_QUEUE_BOUND)
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

/* Sends credit for n more bytes of r's download. */
void rpcc_send_credit(rpc_req *r, uint64_t n)
{
	eng_buf p = ENG_BUF_INIT;

	rpc_put_u64(&p, RPC_T_CREDIT, n);
	rpcc_conn_send_frame(r->c->conn, RPC_K_WINDOW, 0, 0, r->id, p.data, p.len);
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
void rpcc_grant(rpc_req *r)
{
	uint64_t unit = r->window_goal / 2;
	uint64_t n = r->unacked - r->unacked % unit;

	if (n == 0 || !rpcc_live(r->c))
		return;
	rpcc_send_credit(r, n);
	r->unacked -= n;
}

void rpcc_on_data(rpc_conn *conn, rpc_req *r, const rpc_frame *f)
{
	bool end = (f->flags & RPC_F_END) != 0;
	int rc = 0;

	if (f->payload_len > r->recv_window) {
		rpcc_proto_fail(conn, RPC_EWINDOW);
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
			rpcc_req_release(r);
			return;
		}
		if (f->payload_len != 0)
			r->delivered = true;
		if (rc < 0 && r->state != RQ_ZOMBIE)
			rpcc_req_abort(r, rc);
	}
	/* A zombie (or a body nobody wants) consumes at once. */
	if (rc != RPC_CLIENT_HOLD || r->state == RQ_ZOMBIE)
		r->unacked += f->payload_len;
	if (end) {
		if (r->state == RQ_ZOMBIE)
			rpcc_req_free(r);
		else
			rpcc_req_finish(r, 0, &r->head);
		return;
	}
	rpcc_grant(r);
}
