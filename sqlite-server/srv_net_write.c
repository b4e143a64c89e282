/*
 * The write side of sqlited's network core: frames (net_send_frame),
 * errors to the client, TLS writes, and the send queue: one uv_write per
 * frame (over TLS, per 16 KiB of records), from a copy or from the
 * caller's own buffer.
 *
 * Rules: loop thread only. A write's bytes live until its callback and
 * are wiped there (answers carry passwords). When a connection's queued
 * output passes max_output_bytes its reads stop until half of it has
 * drained; then streams with credit resume. A closing connection sends
 * only what was queued before.
 */
#include "srv_net_private.h"

#include "srv_bufpool.h"

#include <stdlib.h>
#include <string.h>

typedef struct net_write {
	uv_write_t w;
	srv_conn *c;
	size_t len;
	char *owned;                 /* the bytes, if not in data[] */
	bool pooled;                 /* owned is a srv_pieces buffer */
	char data[];
} net_write;

/* Owned bytes of a write, done with: wiped, then freed or given back to
 * the piece pool (which wipes them itself). */
static void owned_release(char *p, size_t len, bool pooled)
{
	if (pooled) {
		srv_bufpool_put(&srv_pieces, (uint8_t *)p, len);
		return;
	}
	sodium_memzero(p, len);
	free(p);
}

static void on_write(uv_write_t *w, int status)
{
	net_write *nw = (net_write *)w;
	srv_conn *c = nw->c;

	(void)status;
	c->out_bytes -= nw->len;
	if (nw->owned != NULL)
		owned_release(nw->owned, nw->len, nw->pooled);
	else
		sodium_memzero(nw->data, nw->len);
	free(nw);
	if (c->state == C_CLOSING)
		return;
	if (c->paused && c->out_bytes <= c->net->opt.max_output_bytes / 2) {
		c->paused = false;
		if (c->reading)
			uv_read_start(&c->h.stream, net_on_alloc, net_on_read);
		net_resume_streams(c);
	}
}

/*
 * Queues bytes for the socket: a copy of data (W_COPY), or data itself,
 * which the write then frees (W_OWNED) or gives back to the piece pool
 * (W_POOLED) when done, wiped like the copy.
 */
void net_wire_queue(srv_conn *c, const void *data, size_t len,
		    enum wire_own own)
{
	bool owned = own != W_COPY;
	net_write *nw;
	uv_buf_t b;

	if (len == 0 || uv_is_closing(&c->h.handle)) {
		if (owned)
			owned_release((char *)data, len, own == W_POOLED);
		return;
	}
	nw = eng_malloc(sizeof(*nw) + (owned ? 0 : len));
	nw->c = c;
	nw->len = len;
	nw->owned = owned ? (char *)data : NULL;
	nw->pooled = own == W_POOLED;
	if (!owned)
		memcpy(nw->data, data, len);
	b = uv_buf_init(owned ? nw->owned : nw->data, (unsigned)len);
	c->out_bytes += len;
	c->net->srv->bytes_out += len;
	if (uv_write(&nw->w, &c->h.stream, &b, 1, on_write) != 0) {
		c->out_bytes -= len;
		if (owned)
			owned_release(nw->owned, len, nw->pooled);
		else
			sodium_memzero(nw->data, len);
		free(nw);
		net_conn_close(c, false);
		return;
	}
	if (!c->paused && c->out_bytes > c->net->opt.max_output_bytes) {
		c->paused = true;
		uv_read_stop(&c->h.stream);
		if (c->frame_timer_on) {
			/* The client is not to blame for a frame we do not read. */
			uv_timer_stop(&c->timer);
			c->frame_timer_on = false;
		}
	}
}

static void wire_write(srv_conn *c, const void *data, size_t len)
{
	net_wire_queue(c, data, len, W_COPY);
}

/* Moves what TLS produced to the socket. */
void net_tls_flush(srv_conn *c)
{
	char buf[16384];
	int n;

	while ((n = BIO_read(c->wbio, buf, sizeof(buf))) > 0)
		wire_write(c, buf, (size_t)n);
}

/* Sends plaintext: through TLS when the connection has it. */
void net_conn_write(srv_conn *c, const void *data, size_t len)
{
	/* Closing: only what was queued before goes out. */
	if (c->state == C_CLOSING)
		return;
	if (c->ssl == NULL) {
		wire_write(c, data, len);
		return;
	}
	if (!SSL_is_init_finished(c->ssl)) {
		eng_buf_append(&c->tls_early, data, len);
		return;
	}
	while (len > 0) {
		int n = SSL_write(c->ssl, data, len > INT32_MAX ? INT32_MAX : (int)len);

		if (n <= 0) {
			net_conn_close(c, false);
			return;
		}
		data = (const char *)data + n;
		len -= (size_t)n;
		net_tls_flush(c);
	}
}

/* Sends one frame; returns the codec's error if it does not fit. */
int net_send_frame(srv_conn *c, uint8_t kind, uint8_t flags, uint16_t opcode,
		   uint32_t id, const void *payload, size_t len)
{
	eng_buf b = ENG_BUF_INIT;
	size_t mark;
	int rc;

	/* Room for all of it at once: no realloc leaves a copy behind. */
	eng_buf_reserve(&b, RPC_HEADER_BYTES + len);
	mark = rpc_frame_begin(&b, kind, flags, opcode, id);
	if (len > 0)
		eng_buf_append(&b, payload, len);
	rc = rpc_frame_end(&b, mark, NULL);
	if (rc == 0 && c->ssl == NULL && c->state != C_CLOSING) {
		/* Plaintext: the frame's buffer itself goes to the socket (one
		 * copy of the payload and one wipe, not two of each). */
		size_t n;
		char *data = eng_buf_steal(&b, &n);

		net_wire_queue(c, data, n, W_OWNED);
		return 0;
	}
	if (rc == 0)
		net_conn_write(c, b.data, b.len);
	eng_buf_free_wipe(&b);
	return rc;
}

void net_conn_send_error(srv_conn *c, uint32_t id, uint16_t opcode, int err)
{
	eng_buf pl = ENG_BUF_INIT;

	rpc_put_u64(&pl, RPC_T_CODE, rpc_err_to_wire(err));
	rpc_put_str(&pl, RPC_T_ERROR_TEXT, rpc_strerror(err));
	net_send_frame(c, RPC_K_ERROR, 0, opcode, id, pl.data, pl.len);
	eng_buf_free_wipe(&pl);
	c->net->srv->errors++;
}

/* A violation of the framing: ERROR with id 0, then close. */
void net_conn_fatal(srv_conn *c, int err)
{
	if (c->state == C_CLOSING)
		return;
	net_conn_send_error(c, 0, 0, err);
	net_conn_close(c, true);
}
