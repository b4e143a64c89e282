/*
 * The frontends' network layer (net.h): listeners and accepting.
 * sm_net_listen binds one TCP listener; on_connection accepts a
 * connection, counts it per IP (or refuses it over the limits), starts
 * its timer and TLS when the listener is implicit TLS, and hands it to the
 * protocol (on_accept). Also the connection's accessors and the calls that
 * start STARTTLS, hold, resume, close and abort it.
 *
 * Rules: a listener is freed only once its handle has closed and its last
 * connection is gone (smnet_listener_maybe_free), then done() runs. A
 * connection over a limit never reaches the protocol. The objects, their
 * owners and the connection states are in net_private.h.
 */
#include "net_private.h"

#include "eng_error.h"
#include "net_addr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NET_BACKLOG 128
#define NET_DEFAULT_IDLE_MS (10u * 60 * 1000)
#define NET_DEFAULT_TOTAL_MS (24u * 60 * 60 * 1000)
#define NET_DEFAULT_GRACE_MS 5000u
#define NET_DEFAULT_MAX_INPUT (64u * 1024)
#define NET_DEFAULT_MAX_OUTPUT (256u * 1024)
#define NET_DEFAULT_MAX_CONNS 1024u
#define NET_DEFAULT_MAX_PER_IP 20u
static net_ip *ip_find(sm_net_listener *l, const char *addr)
{
	for (net_ip *p = l->ips; p != NULL; p = p->next)
		if (strcmp(p->addr, addr) == 0)
			return p;
	return NULL;
}

static bool ip_admit(sm_net_listener *l, const char *addr)
{
	net_ip *p = ip_find(l, addr);

	if (l->n_counted >= l->cfg.max_conns)
		return false;
	if (p != NULL && p->n >= l->cfg.max_conns_per_ip)
		return false;
	if (p == NULL) {
		p = eng_calloc(1, sizeof(*p));
		snprintf(p->addr, sizeof(p->addr), "%s", addr);
		p->next = l->ips;
		l->ips = p;
	}
	p->n++;
	l->n_counted++;
	return true;
}

void smnet_ip_release(sm_net_listener *l, const char *addr)
{
	net_ip **pp = &l->ips;

	for (; *pp != NULL; pp = &(*pp)->next) {
		net_ip *p = *pp;

		if (strcmp(p->addr, addr) != 0)
			continue;
		if (--p->n == 0) {
			*pp = p->next;
			free(p);
		}
		break;
	}
	l->n_counted--;
}

static void listener_free(sm_net_listener *l)
{
	void (*done)(void *) = l->done;
	void *done_ctx = l->done_ctx;

	while (l->ips != NULL) {
		net_ip *p = l->ips;

		l->ips = p->next;
		free(p);
	}
	free(l->address);
	free(l->name);
	free(l->limit_reply);
	free(l);
	if (done != NULL)
		done(done_ctx);
}

static void on_flush_handle_closed(uv_handle_t *h)
{
	sm_net_listener *l = h->data;

	l->flush_closed++;
	if (l->flush_closed == 3)
		listener_free(l);
}

/* Once closed and without connections: the flush handles close, then the
 * listener is freed. */
void smnet_listener_maybe_free(sm_net_listener *l)
{
	if (!l->closing || !l->tcp_closed || l->n_conns != 0 || l->flush_closing)
		return;
	l->flush_closing = true;
	uv_close((uv_handle_t *)&l->flush_prep, on_flush_handle_closed);
	uv_close((uv_handle_t *)&l->flush_check, on_flush_handle_closed);
	uv_close((uv_handle_t *)&l->kick_timer, on_flush_handle_closed);
}

/*
 * A connection over a limit: a plaintext listener with a limit_reply
 * writes it and closes gracefully (the line reaches the client before the
 * FIN, within close_grace_ms); otherwise the socket is closed at once.
 * Implicit TLS never gets the reply: no handshake for a refused client.
 */
static void conn_refuse(sm_net_conn *c)
{
	const char *text = c->l->cfg.limit_reply;

	if (text == NULL || text[0] == '\0' || c->l->cfg.implicit_tls) {
		smnet_conn_abort(c, SM_NET_LIMIT);
		return;
	}
	smnet_wire_write(c, text, strlen(text));
	smnet_conn_close_graceful(c, SM_NET_LIMIT);
}

static void on_connection(uv_stream_t *server, int status)
{
	sm_net_listener *l = server->data;
	sm_net_conn *c;
	struct sockaddr_storage ss;
	int len = sizeof(ss);

	if (status != 0 || l->closing)
		return;
	c = eng_calloc(1, sizeof(*c));
	c->l = l;
	l->n_conns++;
	uv_tcp_init(l->loop, &c->tcp);
	uv_timer_init(l->loop, &c->timer);
	c->tcp.data = c;
	c->timer.data = c;
	c->handles_open = 2;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
		smnet_conn_abort(c, SM_NET_ERROR);
		return;
	}
	memset(&ss, 0, sizeof(ss));
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) {
		smnet_conn_abort(c, SM_NET_ERROR);
		return;
	}
	if (ss.ss_family == AF_INET6)
		uv_ip6_name((struct sockaddr_in6 *)&ss, c->addr, sizeof(c->addr));
	else
		uv_ip4_name((struct sockaddr_in *)&ss, c->addr, sizeof(c->addr));
	c->loopback = sm_net_addr_loopback((const struct sockaddr *)&ss);
	if (!ip_admit(l, c->addr)) {
		eng_log(ENG_LOG_WARN, "%s: %s: too many connections, refused",
			l->name, c->addr);
		conn_refuse(c);
		return;
	}
	c->counted = true;
	uv_tcp_nodelay(&c->tcp, 1);
	c->accepted_ms = c->last_ms = uv_now(l->loop);
	if (l->cfg.implicit_tls)
		smnet_ssl_start(c);
	uv_timer_start(&c->timer, smnet_on_timer,
		       l->cfg.idle_timeout_ms < l->cfg.total_timeout_ms ?
		       l->cfg.idle_timeout_ms : l->cfg.total_timeout_ms, 0);
	c->accepted = true;
	l->cfg.cb->on_accept(c, l->cfg.ctx);
	if (!c->closing)
		smnet_update_reading(c);
}

static void on_listener_closed(uv_handle_t *h)
{
	sm_net_listener *l = h->data;

	l->tcp_closed = true;
	smnet_listener_maybe_free(l);
}

int sm_net_listen(uv_loop_t *loop, const sm_net_listener_config *cfg,
		  sm_net_listener **l_r)
{
	sm_net_listener *l;
	struct sockaddr_storage ss;
	int len = sizeof(ss);
	int rc;

	*l_r = NULL;
	if (cfg->address == NULL || cfg->cb == NULL || cfg->cb->on_accept == NULL ||
	    cfg->cb->on_data == NULL || cfg->cb->on_close == NULL ||
	    (cfg->implicit_tls && cfg->tls == NULL))
		return ENG_EINVAL;
	memset(&ss, 0, sizeof(ss));
	if (uv_ip4_addr(cfg->address, cfg->port, (struct sockaddr_in *)&ss) != 0 &&
	    uv_ip6_addr(cfg->address, cfg->port, (struct sockaddr_in6 *)&ss) != 0)
		return ENG_EINVAL;
	l = eng_calloc(1, sizeof(*l));
	l->loop = loop;
	uv_prepare_init(loop, &l->flush_prep);
	uv_check_init(loop, &l->flush_check);
	uv_timer_init(loop, &l->kick_timer);
	l->flush_prep.data = l;
	l->flush_check.data = l;
	l->kick_timer.data = l;
	l->cfg = *cfg;
	l->address = eng_strdup(cfg->address);
	l->name = eng_strdup(cfg->name != NULL ? cfg->name : "net");
	l->limit_reply = cfg->limit_reply != NULL ? eng_strdup(cfg->limit_reply) : NULL;
	l->cfg.limit_reply = l->limit_reply;
	l->cfg.address = l->address;
	l->cfg.name = l->name;
	if (l->cfg.idle_timeout_ms == 0)
		l->cfg.idle_timeout_ms = NET_DEFAULT_IDLE_MS;
	if (l->cfg.total_timeout_ms == 0)
		l->cfg.total_timeout_ms = NET_DEFAULT_TOTAL_MS;
	if (l->cfg.close_grace_ms == 0)
		l->cfg.close_grace_ms = NET_DEFAULT_GRACE_MS;
	if (l->cfg.max_input_bytes == 0)
		l->cfg.max_input_bytes = NET_DEFAULT_MAX_INPUT;
	if (l->cfg.max_output_bytes == 0)
		l->cfg.max_output_bytes = NET_DEFAULT_MAX_OUTPUT;
	if (l->cfg.max_conns == 0)
		l->cfg.max_conns = NET_DEFAULT_MAX_CONNS;
	if (l->cfg.max_conns_per_ip == 0)
		l->cfg.max_conns_per_ip = NET_DEFAULT_MAX_PER_IP;
	uv_tcp_init(loop, &l->tcp);
	l->tcp.data = l;
	rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&ss, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&l->tcp, NET_BACKLOG, on_connection);
	if (rc == 0)
		rc = uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &len);
	if (rc != 0) {
		eng_log(ENG_LOG_ERROR, "%s: cannot listen on %s port %u: %s",
			l->name, cfg->address, (unsigned)cfg->port, uv_strerror(rc));
		l->closing = true;
		uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
		return ENG_EIO;
	}
	l->port = ntohs(ss.ss_family == AF_INET6 ?
			((struct sockaddr_in6 *)&ss)->sin6_port :
			((struct sockaddr_in *)&ss)->sin_port);
	*l_r = l;
	return 0;
}

uint16_t sm_net_listener_port(const sm_net_listener *l)
{
	return l->port;
}

unsigned sm_net_listener_conns(const sm_net_listener *l)
{
	return l->n_counted;
}

void sm_net_listener_close(sm_net_listener *l, void (*done)(void *ctx), void *ctx)
{
	if (l->closing)
		return;
	l->closing = true;
	l->done = done;
	l->done_ctx = ctx;
	uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
}

/* The tests check that an idle connection holds no buffer; nothing else
 * uses this. */
size_t sm_net_test_buffered(const sm_net_conn *c);

size_t sm_net_test_buffered(const sm_net_conn *c)
{
	return c->in.cap + c->pend.cap + c->tls_early.cap + c->tls_in.cap +
	       c->tls_out.cap;
}

void sm_net_set_ctx(sm_net_conn *c, void *ctx)
{
	c->ctx = ctx;
}

void *sm_net_get_ctx(const sm_net_conn *c)
{
	return c->ctx;
}

const char *sm_net_peer_addr(const sm_net_conn *c)
{
	return c->addr;
}

bool sm_net_is_loopback(const sm_net_conn *c)
{
	return c->loopback;
}

bool sm_net_is_tls(const sm_net_conn *c)
{
	return c->ssl != NULL && c->tls_done;
}

bool sm_net_can_starttls(const sm_net_conn *c)
{
	return c->ssl == NULL && c->l->cfg.tls != NULL && !c->starttls_pending;
}

bool sm_net_closing(const sm_net_conn *c)
{
	return c->closing;
}

void sm_net_hold(sm_net_conn *c)
{
	c->held = true;
}

void sm_net_resume(sm_net_conn *c)
{
	c->held = false;
	smnet_kick_later(c);
}

int sm_net_starttls(sm_net_conn *c)
{
	if (c->ssl != NULL || c->l->cfg.tls == NULL || c->closing ||
	    c->starttls_pending)
		return ENG_EPERM;
	if (c->in_deliver)
		c->starttls_pending = true;   /* after on_data says what it used */
	else
		smnet_starttls_now(c);
	return 0;
}

void sm_net_close(sm_net_conn *c)
{
	smnet_conn_close_graceful(c, SM_NET_CLOSED);
}

void sm_net_abort(sm_net_conn *c)
{
	smnet_conn_abort(c, SM_NET_CLOSED);
}
