/*
 * Output of the frontends' network layer (net.h): sm_net_write batches a
 * loop turn's writes per connection and the listener's prepare and check
 * handles flush every dirty connection once per turn (the batching is
 * described in net_private.h); sm_net_write_direct sends a large write
 * from where it is; the socket writes (one uv_write each) and the output
 * bound that stops reading until half of it has drained.
 *
 * Rules: the bytes of a uv_write live until its callback. Bytes go out in
 * the order they were written: before STARTTLS, close_notify and a
 * graceful shutdown the batch is flushed first. A pending batch is freed
 * with its flush, so an idle connection holds no output buffer.
 */
#include "net_private.h"

#include "eng_error.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* sm_net_write_direct: a batch and write this large go to the socket at
 * once from where they are; a smaller one is batched (copied). */
#define NET_DIRECT_BYTES (8u * 1024)

typedef struct net_write {
	uv_write_t w;
	sm_net_conn *c;
	size_t len;
	char *owned;                 /* the bytes, when not in data[] */
	char data[];
} net_write;
static void on_write(uv_write_t *w, int status)
{
	net_write *nw = (net_write *)w;
	sm_net_conn *c = nw->c;
	size_t max_out = c->l->cfg.max_output_bytes;

	c->out_bytes -= nw->len;
	free(nw->owned);
	free(nw);
	if (status < 0) {
		smnet_conn_abort(c, SM_NET_ERROR);
		return;
	}
	if (c->closing)
		return;
	c->last_ms = uv_now(c->l->loop);
	if (c->out_paused && c->out_bytes <= max_out / 2) {
		c->out_paused = false;
		smnet_update_reading(c);
		smnet_kick_later(c);
		if (c->l->cfg.cb->on_drained != NULL)
			c->l->cfg.cb->on_drained(c, c->ctx);
	}
}

/* Queues nw (len bytes at base) on the socket. */
static void nw_send(sm_net_conn *c, net_write *nw, char *base, size_t len)
{
	uv_buf_t b = uv_buf_init(base, (unsigned)len);

	nw->c = c;
	nw->len = len;
	c->out_bytes += len;
	if (uv_write(&nw->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
		c->out_bytes -= len;
		free(nw->owned);
		free(nw);
		smnet_conn_abort(c, SM_NET_ERROR);
		return;
	}
	if (!c->out_paused && c->out_bytes > c->l->cfg.max_output_bytes) {
		c->out_paused = true;
		smnet_update_reading(c);
	}
}

void smnet_wire_write(sm_net_conn *c, const void *data, size_t len)
{
	net_write *nw;

	if (len == 0 || c->handles_closing)
		return;
	nw = eng_calloc(1, sizeof(*nw) + len);
	memcpy(nw->data, data, len);
	nw_send(c, nw, nw->data, len);
}

/* Queues a buffer on the socket without copying it (taken over). */
void smnet_wire_write_owned(sm_net_conn *c, eng_buf *b)
{
	net_write *nw;
	size_t len;

	if (b->len == 0 || c->handles_closing) {
		eng_buf_free(b);
		return;
	}
	nw = eng_calloc(1, sizeof(*nw));
	nw->owned = eng_buf_steal(b, &len);
	nw_send(c, nw, nw->owned, len);
}

static void on_flush_turn(sm_net_listener *l);

static void on_flush_prep(uv_prepare_t *h)
{
	on_flush_turn(h->data);
}

static void on_flush_check(uv_check_t *h)
{
	on_flush_turn(h->data);
}

void smnet_dirty_add(sm_net_conn *c)
{
	sm_net_listener *l = c->l;

	if (c->dirty)
		return;
	c->dirty = true;
	c->dirty_prev = NULL;
	c->dirty_next = l->dirty;
	if (l->dirty != NULL)
		l->dirty->dirty_prev = c;
	l->dirty = c;
	if (!l->flush_active && !l->flush_closing) {
		uv_prepare_start(&l->flush_prep, on_flush_prep);
		uv_check_start(&l->flush_check, on_flush_check);
		l->flush_active = true;
	}
}

void smnet_dirty_remove(sm_net_conn *c)
{
	if (!c->dirty)
		return;
	if (c->dirty_prev != NULL)
		c->dirty_prev->dirty_next = c->dirty_next;
	else
		c->l->dirty = c->dirty_next;
	if (c->dirty_next != NULL)
		c->dirty_next->dirty_prev = c->dirty_prev;
	c->dirty = false;
	c->dirty_next = c->dirty_prev = NULL;
}

/* Sends the pending batch: one write (plaintext) or one SSL_write. */
void smnet_out_flush(sm_net_conn *c)
{
	eng_buf b;

	smnet_dirty_remove(c);
	if (c->pend.len == 0) {
		/* emptied by sm_net_write_direct; under TLS its records */
		eng_buf_free(&c->pend);
		if (c->ssl != NULL)
			smnet_tls_flush(c);
		return;
	}
	b = c->pend;
	c->pend = (eng_buf)ENG_BUF_INIT;
	if (c->ssl == NULL) {
		smnet_wire_write_owned(c, &b);
		return;
	}
	smnet_tls_send(c, b.data, b.len);
	eng_buf_free(&b);
}

/* Once per loop turn: every connection's batch goes out. */
static void on_flush_turn(sm_net_listener *l)
{
	while (l->dirty != NULL)
		smnet_out_flush(l->dirty);
	if (l->flush_active) {
		uv_prepare_stop(&l->flush_prep);
		uv_check_stop(&l->flush_check);
		l->flush_active = false;
	}
}

void sm_net_write(sm_net_conn *c, const void *data, size_t len)
{
	if (c->closing || len == 0)
		return;
	if (c->ssl != NULL && !c->tls_done) {
		eng_buf_append(&c->tls_early, data, len);
		return;
	}
	eng_buf_append(&c->pend, data, len);
	/* A full batch, or one that fills the queue (the producer is told
	 * to stop: sm_net_write_blocked), goes out now. */
	if (c->pend.len >= NET_FLUSH_BYTES ||
	    c->out_bytes + c->tls_out.len + c->pend.len >
	    c->l->cfg.max_output_bytes)
		smnet_out_flush(c);
	else
		smnet_dirty_add(c);
}

/* What the socket did not take of the pending batch and data (done
 * bytes of both went out) is copied onto the queue. The batch is empty
 * after it (its buffer is kept for the next bytes; the flush turn frees
 * it if none come). */
static void direct_rest(sm_net_conn *c, const void *data, size_t len,
			size_t done)
{
	size_t plen = c->pend.len, rest = plen + len - done;
	net_write *nw;

	if (rest > 0) {
		nw = eng_malloc(sizeof(*nw) + rest);
		nw->owned = NULL;
		if (done < plen) {
			memcpy(nw->data, c->pend.data + done, plen - done);
			memcpy(nw->data + (plen - done), data, len);
		} else {
			memcpy(nw->data, (const char *)data + (done - plen),
			       rest);
		}
		nw_send(c, nw, nw->data, rest);
	}
	eng_buf_reset(&c->pend);
}

void sm_net_write_direct(sm_net_conn *c, const void *data, size_t len)
{
	uv_buf_t b[2];
	unsigned nb = 0;
	int n;

	if (c->closing || c->handles_closing || len > UINT_MAX ||
	    c->pend.len + len < NET_DIRECT_BYTES ||
	    (c->ssl != NULL && !c->tls_done)) {
		sm_net_write(c, data, len);
		return;
	}
	if (c->ssl != NULL) {
		smnet_tls_direct(c, data, len);
		return;
	}
	if (c->pend.len > 0)
		b[nb++] = uv_buf_init(c->pend.data, (unsigned)c->pend.len);
	b[nb++] = uv_buf_init((char *)data, (unsigned)len);
	/* UV_EAGAIN at once while libuv has writes queued: then it goes
	 * after them, batched like any write. */
	n = uv_try_write((uv_stream_t *)&c->tcp, b, nb);
	if (n <= 0) {
		sm_net_write(c, data, len);
		return;
	}
	c->last_ms = uv_now(c->l->loop);
	direct_rest(c, data, len, (size_t)n);
}

size_t sm_net_write_queued(const sm_net_conn *c)
{
	return c->out_bytes + c->tls_out.len + c->tls_early.len + c->pend.len;
}

bool sm_net_write_blocked(const sm_net_conn *c)
{
	return c->out_paused;
}
