/*
 * A connection of the frontends' network layer (net.h) from accept to
 * free: reading (on only while there is room for input and output is under
 * its bound), delivering the buffered input to the protocol's on_data,
 * switching to TLS at STARTTLS, kicks (input re-offered from a later loop
 * turn after a hold or a drained output), the idle and total timeouts, and
 * closing: gracefully (output flushed, then shutdown with a grace timer)
 * or at once.
 *
 * Rules: a connection is freed only when both its handles have closed,
 * right after on_close. Input holds passwords (PASS, AUTH): every byte read
 * is wiped from the read buffer, consumed input is wiped, and an idle
 * connection keeps no input buffer. A protocol that consumes nothing from
 * a full input buffer is a flood: the connection is aborted.
 */
#include "net_private.h"

#include "eng_error.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/*
 * One read buffer per loop thread, not per connection: libuv calls on_read
 * right after on_alloc, and on_read copies the bytes out (into c->in, or
 * the TLS BIO) and wipes them before it returns. A per-connection buffer
 * cost NET_READ_BYTES of resident memory for every idle connection.
 */
static _Thread_local char net_rbuf[NET_READ_BYTES];
static const char *reason_name(enum sm_net_reason why)
{
	switch (why) {
	case SM_NET_CLOSED: return "closed";
	case SM_NET_EOF: return "client closed";
	case SM_NET_ERROR: return "socket error";
	case SM_NET_TLS_ERROR: return "TLS error";
	case SM_NET_IDLE: return "idle timeout";
	case SM_NET_TOTAL: return "session time limit";
	case SM_NET_FLOOD: return "input flood";
	case SM_NET_LIMIT: return "connection limit";
	case SM_NET_SHUTDOWN: return "shutdown";
	}
	return "?";
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);

void smnet_update_reading(sm_net_conn *c)
{
	bool want = !c->closing && !c->peer_eof && !c->out_paused &&
		    c->in.len < c->l->cfg.max_input_bytes;

	if (want && !c->reading) {
		if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
			c->reading = true;
	} else if (!want && c->reading) {
		uv_read_stop((uv_stream_t *)&c->tcp);
		c->reading = false;
	}
}

static void conn_free(sm_net_conn *c)
{
	sm_net_listener *l = c->l;

	if (c->accepted && l->cfg.cb->on_close != NULL)
		l->cfg.cb->on_close(c, c->ctx, c->why);
	if (c->counted)
		smnet_ip_release(l, c->addr);
	if (c->ssl != NULL)
		SSL_free(c->ssl);
	eng_buf_free(&c->tls_in);
	eng_buf_free(&c->tls_out);
	eng_buf_free_wipe(&c->in);
	eng_buf_free_wipe(&c->tls_early);
	eng_buf_free(&c->pend);
	free(c);
	l->n_conns--;
	smnet_listener_maybe_free(l);
}

static void kick_remove(sm_net_conn *c);

static void on_conn_handle_closed(uv_handle_t *h)
{
	sm_net_conn *c = h->data;

	if (--c->handles_open == 0)
		conn_free(c);
}

/* Closes the handles: queued output is dropped. */
static void conn_close_handles(sm_net_conn *c)
{
	if (c->handles_closing)
		return;
	c->handles_closing = true;
	c->closing = true;
	c->reading = false;
	smnet_dirty_remove(c);
	kick_remove(c);
	eng_buf_free(&c->pend);
	uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
	uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

void smnet_conn_abort(sm_net_conn *c, enum sm_net_reason why)
{
	if (c->handles_closing)
		return;
	if (!c->closing)
		c->why = why;
	if (why != SM_NET_CLOSED && why != SM_NET_EOF)
		eng_log(ENG_LOG_INFO, "%s: %s: %s", c->l->name, c->addr,
			reason_name(why));
	conn_close_handles(c);
}

/* libuv calls it before the stream's close callback (with UV_ECANCELED
 * when the handles closed first), so c is still there. */
static void on_shutdown(uv_shutdown_t *req, int status)
{
	sm_net_conn *c = req->data;

	(void)status;
	free(req);
	conn_close_handles(c);
}

/* Lets queued output (and TLS close_notify) reach the client, then closes. */
void smnet_conn_close_graceful(sm_net_conn *c, enum sm_net_reason why)
{
	uv_shutdown_t *req;

	if (c->closing)
		return;
	c->why = why;
	smnet_out_flush(c);                /* before close_notify and the FIN */
	if (c->handles_closing)
		return;
	if (c->ssl != NULL && c->tls_done) {
		SSL_shutdown(c->ssl);
		smnet_tls_flush(c);
	}
	c->closing = true;
	smnet_update_reading(c);
	kick_remove(c);
	req = eng_calloc(1, sizeof(*req));
	req->data = c;
	if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
		free(req);
		conn_close_handles(c);
		return;
	}
	/* A client that never reads must not keep the connection forever. */
	uv_timer_start(&c->timer, smnet_on_timer, c->l->cfg.close_grace_ms, 0);
}

static void in_consume(sm_net_conn *c, size_t n)
{
	if (n == 0)
		return;
	if (n >= c->in.len) {
		eng_buf_free_wipe(&c->in);   /* an idle connection keeps none */
		return;
	}
	memmove(c->in.data, c->in.data + n, c->in.len - n);
	c->in.len -= n;
	/* Input holds passwords (PASS, AUTH): no stale copy in the tail. */
	sodium_memzero(c->in.data + c->in.len, n);
}

/* Drops the buffered plaintext (what the client pipelined after its
 * STARTTLS command) and switches the stream to TLS. */
void smnet_starttls_now(sm_net_conn *c)
{
	size_t discarded = c->in.len;

	smnet_out_flush(c);                /* the answer goes out in the clear */
	c->starttls_pending = false;
	in_consume(c, c->in.len);
	c->gen++;
	if (discarded > 0)
		eng_log(ENG_LOG_WARN, "%s: %s: %zu plaintext bytes sent after STARTTLS "
			"discarded", c->l->name, c->addr, discarded);
	smnet_ssl_start(c);
	smnet_update_reading(c);
}

/* Offers the buffered input to the protocol while it consumes some. */
static void deliver(sm_net_conn *c)
{
	size_t max_in = c->l->cfg.max_input_bytes;

	if (c->in_deliver)
		return;
	c->in_deliver = true;
	while (!c->closing && !c->held && !c->out_paused && c->in.len > 0) {
		unsigned gen = c->gen;
		size_t n = c->l->cfg.cb->on_data(c, c->ctx, (const uint8_t *)c->in.data,
						  c->in.len);

		if (c->closing)
			break;
		if (gen != c->gen)       /* STARTTLS: the input was discarded */
			continue;
		if (n > c->in.len)
			n = c->in.len;
		in_consume(c, n);
		if (c->starttls_pending) {
			smnet_starttls_now(c);
			continue;
		}
		if (c->ssl != NULL)
			smnet_tls_pump(c);
		if (n == 0) {
			if (c->in.len >= max_in) {
				c->in_deliver = false;
				smnet_conn_abort(c, SM_NET_FLOOD);
				return;
			}
			break;
		}
	}
	c->in_deliver = false;
	if (c->closing)
		return;
	if (c->peer_eof && !c->held && !c->out_paused) {
		smnet_conn_close_graceful(c, SM_NET_EOF);
		return;
	}
	smnet_update_reading(c);
}

/* The list a kicked connection is on. */
static sm_net_conn **kick_head(sm_net_conn *c)
{
	return c->kick_list == 1 ? &c->l->kicks : &c->l->kicking;
}

static void kick_remove(sm_net_conn *c)
{
	sm_net_conn **head;

	if (c->kick_list == 0)
		return;
	head = kick_head(c);
	if (c->kick_prev != NULL)
		c->kick_prev->kick_next = c->kick_next;
	else
		*head = c->kick_next;
	if (c->kick_next != NULL)
		c->kick_next->kick_prev = c->kick_prev;
	c->kick_list = 0;
	c->kick_next = c->kick_prev = NULL;
}

static void kick_push(sm_net_conn *c, uint8_t list)
{
	sm_net_conn **head;

	c->kick_list = list;
	head = kick_head(c);
	c->kick_prev = NULL;
	c->kick_next = *head;
	if (*head != NULL)
		(*head)->kick_prev = c;
	*head = c;
}

/* The kicks of a loop turn; those made while they run wait for the next. */
static void on_kick_timer(uv_timer_t *t)
{
	sm_net_listener *l = t->data;

	while (l->kicks != NULL) {
		sm_net_conn *c = l->kicks;

		kick_remove(c);
		kick_push(c, 2);
	}
	while (l->kicking != NULL) {
		sm_net_conn *c = l->kicking;

		kick_remove(c);
		if (c->closing)
			continue;
		if (c->ssl != NULL)
			smnet_tls_pump(c);
		deliver(c);
	}
}

void smnet_kick_later(sm_net_conn *c)
{
	sm_net_listener *l = c->l;

	if (c->kick_list != 0 || c->closing)
		return;
	if (l->kicks == NULL && !l->flush_closing)
		uv_timer_start(&l->kick_timer, on_kick_timer, 0, 0);
	kick_push(c, 1);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	(void)h;
	(void)hint;
	*buf = uv_buf_init(net_rbuf, sizeof(net_rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	sm_net_conn *c = s->data;

	if (nread == UV_EOF) {
		c->peer_eof = true;
		smnet_update_reading(c);
		deliver(c);
		return;
	}
	if (nread < 0) {
		smnet_conn_abort(c, SM_NET_ERROR);
		return;
	}
	if (nread == 0 || c->closing)
		return;
	c->last_ms = uv_now(c->l->loop);
	if (c->ssl != NULL) {
		eng_buf_append(&c->tls_in, buf->base, (size_t)nread);
		smnet_tls_pump(c);
		if (c->handles_closing)
			return;
	} else {
		eng_buf_append(&c->in, buf->base, (size_t)nread);
	}
	sodium_memzero(buf->base, (size_t)nread);
	deliver(c);
}

void smnet_on_timer(uv_timer_t *t)
{
	sm_net_conn *c = t->data;
	const sm_net_listener_config *cfg = &c->l->cfg;
	uint64_t now = uv_now(c->l->loop);
	uint64_t idle_at, total_at, next;

	if (c->closing) {            /* the close grace ran out */
		conn_close_handles(c);
		return;
	}
	total_at = c->accepted_ms + cfg->total_timeout_ms;
	idle_at = c->last_ms + cfg->idle_timeout_ms;
	if (now >= total_at) {
		smnet_conn_abort(c, SM_NET_TOTAL);
		return;
	}
	if (now >= idle_at) {
		smnet_conn_abort(c, SM_NET_IDLE);
		return;
	}
	next = idle_at < total_at ? idle_at : total_at;
	uv_timer_start(&c->timer, smnet_on_timer, next - now, 0);
}
