/*
 * sqlited's network core (srv_net.h): the listeners, start and stop, the
 * counters STATS reads, and srv_blocking (srv.h). The rest of the core is
 * in srv_net_*.c; srv_net_private.h lists those files and the objects
 * they share.
 *
 * Rules: loop thread only. A listener and the drain timer are freed in
 * their close callbacks; whatever stopping waits for calls
 * net_stop_progress() when it goes away, and done runs once listeners,
 * connections, requests and uploads are all gone.
 */
#include "srv_net_private.h"

#include "eng_error.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- listeners ---- */

static void on_listener_closed(uv_handle_t *h)
{
	net_state *n = h->data;

	free(h);
	n->listeners_open--;
	net_stop_progress(n);
}

static SSL_CTX *tls_ctx_new(const sm_config *cfg)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (ctx == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
			    SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* TLS 1.2: ECDHE with AEAD only; TLS 1.3 suites are all AEAD. */
	if (SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20") != 1 ||
	    SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		ERR_clear_error();
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

void srv_net_options_default(srv_net_options *o)
{
	memset(o, 0, sizeof(*o));
	o->handshake_timeout_ms = 10000;
	o->frame_timeout_ms = 30000;
	o->auth_fail_delay_ms = 1000;
	o->drain_timeout_ms = 30000;
	o->max_in_flight = 256;
	o->max_in_flight_peer = 1024;
	o->max_output_bytes = 4u * 1024 * 1024;
	o->max_memory_body_bytes = RPC_INITIAL_WINDOW_BYTES;
	o->memory_bodies_budget = 64u * 1024 * 1024;
}

void srv_net_clean_tmp(const char *path_dir)
{
	DIR *d = opendir(path_dir);
	struct dirent *de;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		char *path;

		if (de->d_name[0] == '.')
			continue;
		path = eng_malloc(strlen(path_dir) + strlen(de->d_name) + 2);
		sprintf(path, "%s/%s", path_dir, de->d_name);
		unlink(path);
		free(path);
	}
	closedir(d);
}

static int listen_tcp(net_state *n, const sm_config *cfg)
{
	struct sockaddr_storage ss;
	int len = sizeof(ss), rc;
	uint16_t port = n->opt.tcp_ephemeral ? 0 : cfg->sqlited_port;
	char name[64];

	memset(&ss, 0, sizeof(ss));
	if (strchr(cfg->listen_address, ':') != NULL)
		rc = uv_ip6_addr(cfg->listen_address, port, (struct sockaddr_in6 *)&ss);
	else
		rc = uv_ip4_addr(cfg->listen_address, port, (struct sockaddr_in *)&ss);
	if (rc != 0) {
		eng_log(ENG_LOG_ERROR, "sqlited: listen_address %s is not an IP address",
			cfg->listen_address);
		return ENG_EINVAL;
	}
	n->tcp = eng_calloc(1, sizeof(*n->tcp));
	uv_tcp_init(n->srv->loop, n->tcp);
	n->tcp->data = n;
	n->listeners_open++;
	rc = uv_tcp_bind(n->tcp, (struct sockaddr *)&ss, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)n->tcp, 512, net_on_connection);
	if (rc != 0) {
		eng_log(ENG_LOG_ERROR, "sqlited: cannot listen on %s port %u: %s",
			cfg->listen_address, (unsigned)port, uv_strerror(rc));
		return ENG_EIO;
	}
	memset(&ss, 0, sizeof(ss));
	uv_tcp_getsockname(n->tcp, (struct sockaddr *)&ss, &len);
	if (ss.ss_family == AF_INET6) {
		n->tcp_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
		uv_ip6_name((struct sockaddr_in6 *)&ss, name, sizeof(name));
	} else {
		n->tcp_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		uv_ip4_name((struct sockaddr_in *)&ss, name, sizeof(name));
	}
	n->ssl_ctx = tls_ctx_new(cfg);
	if (n->ssl_ctx == NULL && n->opt.tls_always) {
		/* Closing every peer would look like a network fault. */
		eng_log(ENG_LOG_ERROR, "sqlited: sqlited_tls = always but the TLS "
			"certificate %s / key %s does not load", cfg->tls_cert,
			cfg->tls_key);
		return ENG_EINVAL;
	}
	snprintf(n->listeners[n->n_listeners++], sizeof(n->listeners[0]),
		 "tcp %s%s%s:%u (%s)", strchr(name, ':') ? "[" : "", name,
		 strchr(name, ':') ? "]" : "", (unsigned)n->tcp_port,
		 n->ssl_ctx == NULL ? "loopback only: no TLS certificate" :
		 n->opt.tls_always ? "TLS always" : "TLS unless loopback");
	return 0;
}

static int listen_unix(net_state *n, const char *path)
{
	char tmp[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct stat st;
	mode_t old;
	int rc;

	/* A socket file left by a crash would make bind fail. Anything
	 * that is not a socket is left alone. */
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	n->pipe = eng_calloc(1, sizeof(*n->pipe));
	uv_pipe_init(n->srv->loop, n->pipe, 0);
	n->pipe->data = n;
	n->listeners_open++;
	/* Bound and listening under a temporary name, then renamed: a
	 * client that sees the path never finds a socket that refuses
	 * (bind creates the file before listen). Created 0600 from the
	 * start, not chmod'ed after a window. */
	if (snprintf(tmp, sizeof(tmp), "%s.new", path) >= (int)sizeof(tmp))
		snprintf(tmp, sizeof(tmp), "%s", path);
	if (strcmp(tmp, path) != 0 && lstat(tmp, &st) == 0 &&
	    S_ISSOCK(st.st_mode))
		unlink(tmp);
	old = umask(0177);
	rc = uv_pipe_bind(n->pipe, tmp);
	umask(old);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)n->pipe, 512, net_on_connection);
	if (rc == 0 && strcmp(tmp, path) != 0 && rename(tmp, path) != 0)
		rc = uv_translate_sys_error(errno);
	if (rc != 0) {
		eng_log(ENG_LOG_ERROR, "sqlited: cannot listen on %s: %s", path,
			uv_strerror(rc));
		return ENG_EIO;
	}
	chmod(path, 0600);
	n->sock_path = eng_strdup(path);
	snprintf(n->listeners[n->n_listeners++], sizeof(n->listeners[0]),
		 "unix %s (0600)", path);
	return 0;
}

static void close_listeners(net_state *n)
{
	if (n->tcp != NULL) {
		uv_close((uv_handle_t *)n->tcp, on_listener_closed);
		n->tcp = NULL;
	}
	if (n->pipe != NULL) {
		uv_close((uv_handle_t *)n->pipe, on_listener_closed);
		n->pipe = NULL;
		if (n->sock_path != NULL)
			unlink(n->sock_path);
	}
}

int srv_net_start(srv *s, const srv_net_options *opt)
{
	net_state *n = eng_calloc(1, sizeof(*n));
	int rc = 0;

	n->srv = s;
	if (opt != NULL)
		n->opt = *opt;
	else
		srv_net_options_default(&n->opt);
	if (s->cfg->sqlited_tls_always)
		n->opt.tls_always = true;
	n->start_ms = uv_now(s->loop);
	s->net = n;
	if (s->tmp_dir != NULL) {
		mkdir(s->tmp_dir, 0700);
		srv_net_clean_tmp(s->tmp_dir);
	}
	if (s->cfg->sqlited_port != 0 || n->opt.tcp_ephemeral)
		rc = listen_tcp(n, s->cfg);
	if (rc == 0 && s->cfg->sqlited_socket != NULL)
		rc = listen_unix(n, s->cfg->sqlited_socket);
	if (rc == 0 && n->n_listeners == 0) {
		eng_log(ENG_LOG_ERROR, "sqlited: no listener: sqlited_port is 0 and "
			"sqlited_socket is empty");
		rc = ENG_EINVAL;
	}
	if (rc != 0)
		close_listeners(n);
	return rc;
}

/* ---- stopping ---- */

static void on_drain_timer_closed(uv_handle_t *h)
{
	net_state *n = h->data;

	free(h);
	n->drain_timer = NULL;
	net_stop_progress(n);
}

static void on_drain_timeout(uv_timer_t *t)
{
	net_state *n = t->data;
	srv_conn *c, *next;

	eng_log(ENG_LOG_WARN, "sqlited: %u requests still in flight at shutdown; "
		"closing their connections", n->in_flight);
	for (c = n->conns; c != NULL; c = next) {
		next = c->next;
		net_conn_close(c, true);
	}
}

/*
 * Called whenever something that stopping waits for goes away: once
 * listeners, connections, requests and uploads are all gone, done runs.
 */
void net_stop_progress(net_state *n)
{
	void (*done)(void *);

	if (!n->stopping || n->stop_finished)
		return;
	if (n->listeners_open > 0 || n->n_conns > 0 || n->in_flight > 0 ||
	    n->uploads > 0)
		return;
	if (n->drain_timer != NULL) {
		if (!uv_is_closing((uv_handle_t *)n->drain_timer))
			uv_close((uv_handle_t *)n->drain_timer, on_drain_timer_closed);
		return;
	}
	n->stop_finished = true;
	done = n->stop_done;
	n->stop_done = NULL;
	if (done != NULL)
		done(n->stop_ctx);
}

void srv_net_stop(srv *s, void (*done)(void *ctx), void *ctx)
{
	net_state *n = s->net;
	srv_conn *c, *next;

	if (n == NULL || n->stopping) {
		if (done != NULL)
			done(ctx);
		return;
	}
	n->stopping = true;
	s->shutting_down = true;
	n->stop_done = done;
	n->stop_ctx = ctx;
	close_listeners(n);
	for (c = n->conns; c != NULL; c = next) {
		next = c->next;
		if (c->state != C_READY || c->n_reqs == 0)
			net_conn_close(c, true);
	}
	n->drain_timer = eng_calloc(1, sizeof(*n->drain_timer));
	uv_timer_init(s->loop, n->drain_timer);
	n->drain_timer->data = n;
	uv_timer_start(n->drain_timer, on_drain_timeout, n->opt.drain_timeout_ms, 0);
	uv_unref((uv_handle_t *)n->drain_timer);
	net_stop_progress(n);
}

void srv_net_free(srv *s)
{
	net_state *n = s->net;

	if (n == NULL)
		return;
	if (n->ssl_ctx != NULL)
		SSL_CTX_free(n->ssl_ctx);
	free(n->sock_path);
	while (n->peers != NULL) {
		net_peer *p = n->peers;

		n->peers = p->next;
		free(p);
	}
	free(n);
	s->net = NULL;
}

uint16_t srv_net_tcp_port(const srv *s)
{
	return s->net != NULL ? s->net->tcp_port : 0;
}

const char *srv_net_listener(const srv *s, size_t i)
{
	if (s->net == NULL || i >= s->net->n_listeners)
		return NULL;
	return s->net->listeners[i];
}

uint64_t srv_net_uptime_ms(const srv *s)
{
	return s->net != NULL ? uv_now(s->loop) - s->net->start_ms : 0;
}

unsigned srv_net_open_connections(const srv *s)
{
	return s->net != NULL ? s->net->n_conns : 0;
}

unsigned srv_net_in_flight(const srv *s)
{
	return s->net != NULL ? s->net->in_flight : 0;
}

/* ---- blocking work ---- */

typedef struct blocking_work {
	uv_work_t w;
	srv_blocking_fn *fn;
	srv_done_fn *done;
	void *ctx;
	int result;
} blocking_work;

static void blocking_run(uv_work_t *w)
{
	blocking_work *bw = w->data;

	bw->result = bw->fn(bw->ctx);
}

static void blocking_done(uv_work_t *w, int status)
{
	blocking_work *bw = w->data;
	int result = status != 0 ? ENG_EIO : bw->result;
	srv_done_fn *done = bw->done;
	void *ctx = bw->ctx;

	free(bw);
	if (done != NULL)
		done(ctx, result);
}

int srv_blocking(srv *s, srv_blocking_fn *fn, srv_done_fn *done, void *ctx)
{
	blocking_work *bw = eng_calloc(1, sizeof(*bw));

	bw->fn = fn;
	bw->done = done;
	bw->ctx = ctx;
	bw->w.data = bw;
	if (uv_queue_work(s->loop, &bw->w, blocking_run, blocking_done) != 0) {
		free(bw);
		return ENG_EIO;
	}
	return 0;
}
