/*
 * Connections of sqlited's network core: the table of peers (in-flight
 * counts per peer name), accepting a connection (its two handles, plain
 * or TLS by the peer's address, the nonce and HELLO, the handshake timer)
 * and closing it.
 *
 * Rules: loop thread only. A srv_conn is freed only once both its handles
 * (the stream, the timer) have closed; closing first detaches every
 * request (core-owned ones are freed, handler-owned ones cancelled with
 * conn = NULL). A graceful close lets the queued output go, bounded by
 * NET_CLOSE_GRACE_MS. A peer lives while a connection or a request
 * refers to it.
 */
#include "srv_net_private.h"

#include "net_addr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NET_CLOSE_GRACE_MS 5000
/* SO_SNDBUF of a unix socket connection (the kernel doubles it). */
#define NET_UNIX_SNDBUF (512 * 1024)

/* ---- peers ---- */

net_peer *net_peer_get(net_state *n, const uint8_t *name, size_t len)
{
	net_peer *p;

	for (p = n->peers; p != NULL; p = p->next) {
		if (strlen(p->name) == len && memcmp(p->name, name, len) == 0) {
			p->refs++;
			return p;
		}
	}
	p = eng_calloc(1, sizeof(*p));
	memcpy(p->name, name, len);
	p->refs = 1;
	p->next = n->peers;
	n->peers = p;
	return p;
}

void net_peer_put(net_state *n, net_peer **pp)
{
	net_peer *p = *pp, **link;

	*pp = NULL;
	if (p == NULL || --p->refs > 0)
		return;
	for (link = &n->peers; *link != NULL; link = &(*link)->next) {
		if (*link == p) {
			*link = p->next;
			break;
		}
	}
	free(p);
}

/* ---- accepting ---- */

static void send_hello(srv_conn *c)
{
	eng_buf pl = ENG_BUF_INIT;

	rpc_put_u64(&pl, RPC_T_VERSION, RPC_VERSION);
	rpc_put_bytes(&pl, RPC_T_NONCE, c->nonce, sizeof(c->nonce));
	net_send_frame(c, RPC_K_HELLO, 0, 0, 0, pl.data, pl.len);
	eng_buf_free_wipe(&pl);
}

void net_on_connection(uv_stream_t *server, int status)
{
	net_state *n = server->data;
	srv_conn *c;
	bool is_unix = server->type == UV_NAMED_PIPE;
	bool need_tls = false;

	if (status != 0)
		return;
	c = eng_calloc(1, sizeof(*c));
	c->net = n;
	c->is_unix = is_unix;
	if (is_unix)
		uv_pipe_init(n->srv->loop, &c->h.pipe, 0);
	else
		uv_tcp_init(n->srv->loop, &c->h.tcp);
	uv_timer_init(n->srv->loop, &c->timer);
	c->h.handle.data = c;
	c->timer.data = c;
	c->handles_open = 2;
	c->next = n->conns;
	if (n->conns != NULL)
		n->conns->prev = c;
	n->conns = c;
	n->n_conns++;
	n->srv->connections++;
	rpc_limits_preauth(&c->lim);
	c->reader = rpc_reader_new(&c->lim);
	c->state = C_HANDSHAKE;
	if (uv_accept(server, &c->h.stream) != 0) {
		net_conn_close(c, false);
		return;
	}
	if (is_unix) {
		/* Room for a window of body stream plus frames in the kernel:
		 * a 128 KiB piece goes in one write, not a partial one and the
		 * rest after an EPOLLOUT wake-up (capped by net.core.wmem_max;
		 * a refusal keeps the default). */
		int sndbuf = NET_UNIX_SNDBUF;

		(void)uv_send_buffer_size(&c->h.handle, &sndbuf);
		snprintf(c->addr, sizeof(c->addr), "unix");
	} else {
		struct sockaddr_storage ss;
		int len = sizeof(ss);

		memset(&ss, 0, sizeof(ss));
		uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len);
		if (ss.ss_family == AF_INET6)
			uv_ip6_name((struct sockaddr_in6 *)&ss, c->addr, sizeof(c->addr));
		else
			uv_ip4_name((struct sockaddr_in *)&ss, c->addr, sizeof(c->addr));
		uv_tcp_nodelay(&c->h.tcp, 1);
		need_tls = n->opt.tls_always ||
			   !sm_net_addr_loopback((const struct sockaddr *)&ss);
	}
	if (n->stopping) {
		net_conn_close(c, false);
		return;
	}
	if (need_tls) {
		if (n->ssl_ctx == NULL) {
			eng_log(ENG_LOG_WARN, "sqlited: %s needs TLS but no certificate is "
				"loaded; closing", c->addr);
			net_conn_close(c, false);
			return;
		}
		c->ssl = SSL_new(n->ssl_ctx);
		c->rbio = BIO_new(BIO_s_mem());
		c->wbio = BIO_new(BIO_s_mem());
		SSL_set_bio(c->ssl, c->rbio, c->wbio);
		SSL_set_accept_state(c->ssl);
	}
	if (rpc_auth_nonce(c->nonce) != 0) {
		net_conn_close(c, false);
		return;
	}
	/* Under TLS, HELLO waits in tls_early until the handshake is done. */
	send_hello(c);
	uv_timer_start(&c->timer, net_on_frame_timeout, n->opt.handshake_timeout_ms, 0);
	net_read_start(c);
}

/* ---- closing ---- */

static void conn_free(srv_conn *c)
{
	net_state *n = c->net;

	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		n->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	n->n_conns--;
	rpc_reader_free(&c->reader);
	if (c->ssl != NULL)
		SSL_free(c->ssl);   /* frees both BIOs */
	eng_buf_free(&c->tls_early);
	net_peer_put(n, &c->peer);
	sodium_memzero(c->nonce, sizeof(c->nonce));
	free(c);
	net_stop_progress(n);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
	srv_conn *c = h->data;

	if (--c->handles_open == 0)
		conn_free(c);
}

static void conn_close_now(srv_conn *c)
{
	if (!uv_is_closing(&c->h.handle))
		uv_close(&c->h.handle, on_conn_handle_closed);
	if (!uv_is_closing((uv_handle_t *)&c->timer))
		uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void on_shutdown(uv_shutdown_t *sr, int status)
{
	(void)status;
	conn_close_now(sr->data);
}

static void on_close_grace(uv_timer_t *t)
{
	conn_close_now(t->data);
}

/*
 * Detaches every request: core-owned ones are freed, handler-owned ones
 * are marked cancelled with conn = NULL (their answers are dropped), and
 * a handler waiting for window credit hears of it through on_window.
 */
static void conn_detach_requests(srv_conn *c)
{
	net_req *waiting = NULL, *r, *next;

	for (r = c->reqs; r != NULL; r = next) {
		next = r->next;
		r->prev = r->next = NULL;
		c->n_reqs--;
		r->on_wire = false;
		r->pub.conn = NULL;
		r->pub.cancelled = true;
		if (r->phase != R_HANDLER) {
			net_req_free(r);
		} else if (r->pub.on_window != NULL) {
			r->next = waiting;
			waiting = r;
		}
	}
	c->reqs = NULL;
	for (r = waiting; r != NULL; r = next) {
		void (*cb)(srv_req *) = r->pub.on_window;

		next = r->next;
		r->next = NULL;
		r->pub.on_window = NULL;
		cb(&r->pub);
	}
}

/*
 * Closes a connection. flush: after what is queued has been written
 * (bounded by NET_CLOSE_GRACE_MS); else at once.
 */
void net_conn_close(srv_conn *c, bool flush)
{
	if (c->state == C_CLOSING) {
		if (!flush)
			conn_close_now(c);
		return;
	}
	c->state = C_CLOSING;
	net_read_stop(c);
	uv_timer_stop(&c->timer);
	c->frame_timer_on = false;
	conn_detach_requests(c);
	if (!flush || uv_is_closing(&c->h.handle)) {
		conn_close_now(c);
		return;
	}
	c->shutdown_req.data = c;
	if (uv_shutdown(&c->shutdown_req, &c->h.stream, on_shutdown) != 0) {
		conn_close_now(c);
		return;
	}
	uv_timer_start(&c->timer, on_close_grace, NET_CLOSE_GRACE_MS, 0);
}
