/*
 * The frontends' network layer (net.h).
 *
 * Objects and who owns them:
 *   sm_net_listener  one listening TCP handle, the per-IP counts, the list
 *                    of its connections' count. Freed when its handle has
 *                    closed and its last connection is gone.
 *   sm_net_conn      two libuv handles (the stream, the timeout timer);
 *                    freed when both have closed, right after on_close.
 *   net_write        one uv_write: its bytes live until its callback.
 *
 * Output batching: sm_net_write appends the plaintext to the connection's
 * pending buffer (allocated on demand) and puts the connection on its
 * listener's dirty list; the listener's prepare and check handles (started
 * only while the list is not empty) flush every dirty connection once per
 * loop turn: before the loop waits (writes made in timers and other
 * callbacks that run before the poll) and after the poll (writes made in
 * I/O callbacks). A flush is one uv_write of the whole batch (under TLS,
 * one SSL_write, so full records, and one uv_write of the records); the
 * buffer is freed with it, so an idle connection holds none. A batch that
 * reaches NET_FLUSH_BYTES is flushed at once. Before STARTTLS switches the
 * stream, before close_notify and a graceful close's shutdown, the batch
 * is flushed first, so the order of the bytes is the order of the writes.
 * sm_net_write_direct (a streamed body's bytes) skips the copy into the
 * batch: in plaintext the batch and the bytes go out in one writev at
 * once, unless libuv still has writes queued, and only what the socket
 * does not take is copied onto the queue; under TLS both go through
 * SSL_write from where they are, their records in one write.
 *
 * Connection states:
 *
 *   OPEN --sm_net_close / EOF--> CLOSING (shutdown: queued output flushed,
 *     |                                   grace timer) --> handles closing
 *     +--error / timeout / flood / sm_net_abort --------> handles closing
 *                                                           --> on_close, freed
 *
 * Reading is on exactly when: not closing, no EOF yet, the output queue
 * is under its bound, and the input buffer has room. Under TLS the socket's
 * bytes go into tls_in (read by OpenSSL through the connection's BIO) and
 * SSL_read() fills the input buffer only up to its bound, so a held
 * connection buffers at most max_input_bytes of plaintext plus one read.
 *
 * Memory of an idle connection (IMAP IDLE keeps thousands open): the
 * struct, its two libuv handles and, under TLS, OpenSSL's objects (the SSL,
 * its session, cipher contexts, one BIO). Every buffer (input, pending
 * output, TLS records in either direction, OpenSSL's record buffers:
 * SSL_MODE_RELEASE_BUFFERS) is freed when it drains; the "kick" that
 * re-offers input from a later loop turn is a list on the listener with
 * one timer, and the shutdown request is allocated only at a graceful
 * close.
 */
#include "net.h"

#include "buf.h"
#include "eng_error.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NET_READ_BYTES 16384
#define NET_BACKLOG 128
#define NET_DEFAULT_IDLE_MS (10u * 60 * 1000)
#define NET_DEFAULT_TOTAL_MS (24u * 60 * 60 * 1000)
#define NET_DEFAULT_GRACE_MS 5000u
#define NET_DEFAULT_MAX_INPUT (64u * 1024)
#define NET_DEFAULT_MAX_OUTPUT (256u * 1024)
#define NET_DEFAULT_MAX_CONNS 1024u
#define NET_DEFAULT_MAX_PER_IP 20u
/* A pending batch of output this large is written at once. */
#define NET_FLUSH_BYTES (64u * 1024)
/* sm_net_write_direct: a batch and write this large go to the socket at
 * once from where they are; a smaller one is batched (copied). */
#define NET_DIRECT_BYTES (8u * 1024)
/* The plaintext of a full TLS record (OpenSSL's max_send_fragment). */
#define NET_TLS_RECORD 16384u

/*
 * Mozilla's "intermediate" configuration (ssl-config.mozilla.org, v5.7):
 * TLS 1.2 with ECDHE/DHE and AEAD only, the TLS 1.3 suites as they are.
 */
#define NET_TLS12_CIPHERS \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" \
	"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:" \
	"DHE-RSA-CHACHA20-POLY1305"
#define NET_TLS13_SUITES \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

struct sm_net_tls {
	SSL_CTX *ctx;
	char *cert_path;
	char *key_path;
};

typedef struct net_ip {
	struct net_ip *next;
	unsigned n;
	char addr[INET6_ADDRSTRLEN];
} net_ip;

struct sm_net_listener {
	uv_loop_t *loop;
	uv_tcp_t tcp;
	sm_net_listener_config cfg;
	char *address;
	char *name;
	char *limit_reply;           /* copy of cfg.limit_reply, or NULL */
	uint16_t port;
	unsigned n_conns;            /* allocated connections, counted or not */
	unsigned n_counted;          /* connections past the limits */
	net_ip *ips;
	/* Output batching: connections with pending output, and the
	 * handles that flush them once per loop turn. */
	sm_net_conn *dirty;
	uv_prepare_t flush_prep;
	uv_check_t flush_check;
	bool flush_active;
	bool flush_closing;
	unsigned flush_closed;       /* of the three handles */
	/* Kicks (input re-offered from a later loop turn): connections
	 * waiting for the timer, and those of the turn being run. */
	sm_net_conn *kicks, *kicking;
	uv_timer_t kick_timer;
	bool closing;
	bool tcp_closed;
	void (*done)(void *ctx);
	void *done_ctx;
};

struct sm_net_conn {
	sm_net_listener *l;
	uv_tcp_t tcp;
	uv_timer_t timer;
	unsigned handles_open;
	void *ctx;
	SSL *ssl;                    /* its one BIO reads tls_in, writes tls_out */
	eng_buf tls_in;              /* ciphertext from the socket ... */
	size_t tls_in_off;           /* ... OpenSSL has read this much of */
	eng_buf tls_out;             /* records for the socket */
	eng_buf tls_early;           /* plaintext written before the handshake ended */
	eng_buf in;                  /* plaintext input not yet consumed */
	eng_buf pend;                /* output of this loop turn, not sent yet */
	sm_net_conn *dirty_next, *dirty_prev;
	sm_net_conn *kick_next, *kick_prev;
	bool dirty;                  /* on the listener's dirty list */
	size_t out_bytes;
	unsigned gen;                /* bumped when the input is discarded */
	enum sm_net_reason why;
	uint64_t accepted_ms, last_ms;
	bool accepted;               /* on_accept was called: on_close is owed */
	bool counted;                /* in the listener's per-IP counts */
	bool loopback;
	bool reading;
	bool held;
	bool out_paused;
	bool peer_eof;
	bool tls_done;
	bool closing;                /* no more input or writes */
	bool handles_closing;
	uint8_t kick_list;           /* 0, or on l->kicks (1) / l->kicking (2) */
	bool in_deliver;
	bool starttls_pending;       /* asked for inside on_data */
	char addr[INET6_ADDRSTRLEN];
};

/*
 * One read buffer per loop thread, not per connection: libuv calls on_read
 * right after on_alloc, and on_read copies the bytes out (into c->in, or
 * the TLS BIO) and wipes them before it returns. A per-connection buffer
 * cost NET_READ_BYTES of resident memory for every idle connection.
 */
static _Thread_local char net_rbuf[NET_READ_BYTES];

typedef struct net_write {
	uv_write_t w;
	sm_net_conn *c;
	size_t len;
	char *owned;                 /* the bytes, when not in data[] */
	char data[];
} net_write;

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

/* ---- TLS: the connection's BIO ---- */

/*
 * One BIO per TLS connection for both directions (SSL_set_bio with the
 * same BIO twice takes one reference): it reads the ciphertext on_read put
 * in c->tls_in and appends the records OpenSSL writes to c->tls_out, which
 * tls_flush hands to the socket as they are (no copy). Both buffers are
 * freed when drained. Two memory BIOs cost two BIOs, their locks and
 * BUF_MEMs per connection, and each kept its largest buffer.
 */
static BIO_METHOD *net_bio_method;
static CRYPTO_ONCE net_bio_once = CRYPTO_ONCE_STATIC_INIT;

static int net_bio_write(BIO *b, const char *data, int len)
{
	sm_net_conn *c = BIO_get_data(b);

	BIO_clear_retry_flags(b);
	if (len <= 0)
		return 0;
	eng_buf_append(&c->tls_out, data, (size_t)len);
	return len;
}

static int net_bio_read(BIO *b, char *out, int len)
{
	sm_net_conn *c = BIO_get_data(b);
	size_t avail = c->tls_in.len - c->tls_in_off;
	size_t n;

	BIO_clear_retry_flags(b);
	if (len <= 0)
		return 0;
	if (avail == 0) {
		BIO_set_retry_read(b);
		return -1;
	}
	n = avail < (size_t)len ? avail : (size_t)len;
	memcpy(out, c->tls_in.data + c->tls_in_off, n);
	c->tls_in_off += n;
	return (int)n;
}

static long net_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	sm_net_conn *c = BIO_get_data(b);

	(void)num;
	(void)ptr;
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1;
	case BIO_CTRL_PENDING:
		return (long)(c->tls_in.len - c->tls_in_off);
	case BIO_CTRL_WPENDING:
		return (long)c->tls_out.len;
	default:
		return 0;
	}
}

static int net_bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static void net_bio_method_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
				     "sealmail net");

	if (m == NULL || BIO_meth_set_write(m, net_bio_write) != 1 ||
	    BIO_meth_set_read(m, net_bio_read) != 1 ||
	    BIO_meth_set_ctrl(m, net_bio_ctrl) != 1 ||
	    BIO_meth_set_create(m, net_bio_create) != 1) {
		BIO_meth_free(m);
		return;
	}
	net_bio_method = m;
}

/* ---- TLS context ---- */

static char *ssl_err_sentence(const char *what, const char *path)
{
	char reason[256] = "unknown reason";
	unsigned long e = ERR_peek_last_error();
	eng_buf b = ENG_BUF_INIT;

	if (e != 0)
		ERR_error_string_n(e, reason, sizeof(reason));
	ERR_clear_error();
	eng_buf_printf(&b, "cannot load the TLS %s %s: %s", what, path, reason);
	return eng_buf_steal(&b, NULL);
}

static SSL_CTX *tls_ctx_load(const char *cert, const char *key, char **err_r)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (ctx == NULL) {
		*err_r = ssl_err_sentence("context", "");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
			    SSL_OP_NO_TICKET);
	/* An idle connection (IMAP IDLE) keeps no record buffers (~34 KiB). */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	/* No resumption: TLS 1.3 would send 2 stateful tickets per
	 * connection (SSL_OP_NO_TICKET) and keep each session in the
	 * context's cache for 2 hours, up to 20,480 of them (~1 KiB each);
	 * TLS 1.2 would cache every session ID. A full handshake costs a
	 * fraction of a millisecond (bench/README.md, "IMAP idle memory"). */
	SSL_CTX_set_num_tickets(ctx, 0);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	/* Intermediate: the client chooses among suites that are all good. */
	SSL_CTX_clear_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_dh_auto(ctx, 1);
	if (SSL_CTX_set_cipher_list(ctx, NET_TLS12_CIPHERS) != 1 ||
	    SSL_CTX_set_ciphersuites(ctx, NET_TLS13_SUITES) != 1) {
		*err_r = ssl_err_sentence("cipher list", "");
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		*err_r = ssl_err_sentence("certificate", cert);
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		*err_r = ssl_err_sentence("key", key);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

int sm_net_tls_new(const char *cert_path, const char *key_path,
		   sm_net_tls **tls_r, char **err_r)
{
	sm_net_tls *t;
	char *err = NULL;
	SSL_CTX *ctx;

	*tls_r = NULL;
	if (cert_path == NULL || key_path == NULL)
		return ENG_EINVAL;
	ctx = tls_ctx_load(cert_path, key_path, &err);
	if (ctx == NULL) {
		if (err_r != NULL)
			*err_r = err;
		else
			free(err);
		return ENG_EIO;
	}
	t = eng_calloc(1, sizeof(*t));
	t->ctx = ctx;
	t->cert_path = eng_strdup(cert_path);
	t->key_path = eng_strdup(key_path);
	*tls_r = t;
	return 0;
}

int sm_net_tls_reload(sm_net_tls *t, char **err_r)
{
	char *err = NULL;
	SSL_CTX *ctx = tls_ctx_load(t->cert_path, t->key_path, &err);

	if (ctx == NULL) {
		if (err_r != NULL)
			*err_r = err;
		else
			free(err);
		return ENG_EIO;
	}
	/* SSL_new took a reference: open connections keep the old one. */
	SSL_CTX_free(t->ctx);
	t->ctx = ctx;
	return 0;
}

void sm_net_tls_free(sm_net_tls **tls)
{
	sm_net_tls *t = tls != NULL ? *tls : NULL;

	if (t == NULL)
		return;
	SSL_CTX_free(t->ctx);
	free(t->cert_path);
	free(t->key_path);
	free(t);
	*tls = NULL;
}

/* ---- per-IP counts ---- */

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

static void ip_release(sm_net_listener *l, const char *addr)
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

/* ---- listener lifetime ---- */

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
static void listener_maybe_free(sm_net_listener *l)
{
	if (!l->closing || !l->tcp_closed || l->n_conns != 0 || l->flush_closing)
		return;
	l->flush_closing = true;
	uv_close((uv_handle_t *)&l->flush_prep, on_flush_handle_closed);
	uv_close((uv_handle_t *)&l->flush_check, on_flush_handle_closed);
	uv_close((uv_handle_t *)&l->kick_timer, on_flush_handle_closed);
}

/* ---- connections: reading state, closing ---- */

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);

static void update_reading(sm_net_conn *c)
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
		ip_release(l, c->addr);
	if (c->ssl != NULL)
		SSL_free(c->ssl);
	eng_buf_free(&c->tls_in);
	eng_buf_free(&c->tls_out);
	eng_buf_free_wipe(&c->in);
	eng_buf_free_wipe(&c->tls_early);
	eng_buf_free(&c->pend);
	free(c);
	l->n_conns--;
	listener_maybe_free(l);
}

static void dirty_remove(sm_net_conn *c);
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
	dirty_remove(c);
	kick_remove(c);
	eng_buf_free(&c->pend);
	uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
	uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void conn_abort(sm_net_conn *c, enum sm_net_reason why)
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

static void on_timer(uv_timer_t *t);

static void wire_write(sm_net_conn *c, const void *data, size_t len);
static void tls_flush(sm_net_conn *c);
static void out_flush(sm_net_conn *c);

/* Lets queued output (and TLS close_notify) reach the client, then closes. */
static void conn_close_graceful(sm_net_conn *c, enum sm_net_reason why)
{
	uv_shutdown_t *req;

	if (c->closing)
		return;
	c->why = why;
	out_flush(c);                /* before close_notify and the FIN */
	if (c->handles_closing)
		return;
	if (c->ssl != NULL && c->tls_done) {
		SSL_shutdown(c->ssl);
		tls_flush(c);
	}
	c->closing = true;
	update_reading(c);
	kick_remove(c);
	req = eng_calloc(1, sizeof(*req));
	req->data = c;
	if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
		free(req);
		conn_close_handles(c);
		return;
	}
	/* A client that never reads must not keep the connection forever. */
	uv_timer_start(&c->timer, on_timer, c->l->cfg.close_grace_ms, 0);
}

/* ---- output ---- */

static void kick_later(sm_net_conn *c);

static void on_write(uv_write_t *w, int status)
{
	net_write *nw = (net_write *)w;
	sm_net_conn *c = nw->c;
	size_t max_out = c->l->cfg.max_output_bytes;

	c->out_bytes -= nw->len;
	free(nw->owned);
	free(nw);
	if (status < 0) {
		conn_abort(c, SM_NET_ERROR);
		return;
	}
	if (c->closing)
		return;
	c->last_ms = uv_now(c->l->loop);
	if (c->out_paused && c->out_bytes <= max_out / 2) {
		c->out_paused = false;
		update_reading(c);
		kick_later(c);
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
		conn_abort(c, SM_NET_ERROR);
		return;
	}
	if (!c->out_paused && c->out_bytes > c->l->cfg.max_output_bytes) {
		c->out_paused = true;
		update_reading(c);
	}
}

static void wire_write(sm_net_conn *c, const void *data, size_t len)
{
	net_write *nw;

	if (len == 0 || c->handles_closing)
		return;
	nw = eng_calloc(1, sizeof(*nw) + len);
	memcpy(nw->data, data, len);
	nw_send(c, nw, nw->data, len);
}

/* Queues a buffer on the socket without copying it (taken over). */
static void wire_write_owned(sm_net_conn *c, eng_buf *b)
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

/* After OpenSSL read: the ciphertext it took is dropped, all of it freed. */
static void tls_in_compact(sm_net_conn *c)
{
	if (c->tls_in_off == 0)
		return;
	if (c->tls_in_off >= c->tls_in.len) {
		eng_buf_free(&c->tls_in);
	} else {
		memmove(c->tls_in.data, c->tls_in.data + c->tls_in_off,
			c->tls_in.len - c->tls_in_off);
		c->tls_in.len -= c->tls_in_off;
	}
	c->tls_in_off = 0;
}

/* Moves the records TLS produced to the socket, in one write (the buffer
 * itself: the next record starts a new one). */
static void tls_flush(sm_net_conn *c)
{
	if (c->tls_out.len > 0)
		wire_write_owned(c, &c->tls_out);
}

/* Plaintext through TLS (after the handshake) into records, left in
 * tls_out (written once it holds 64 KiB, before more). false: the
 * connection failed. */
static bool tls_put(sm_net_conn *c, const void *data, size_t len)
{
	while (len > 0 && !c->handles_closing) {
		int chunk = len > 65536 ? 65536 : (int)len;
		int n;

		if (c->tls_out.len >= 65536)
			tls_flush(c);
		/* the records: the plaintext and 22 bytes per 16 KiB record */
		eng_buf_reserve(&c->tls_out, (size_t)chunk + 256);
		n = SSL_write(c->ssl, data, chunk);

		if (n <= 0) {
			ERR_clear_error();
			conn_abort(c, SM_NET_TLS_ERROR);
			return false;
		}
		data = (const char *)data + n;
		len -= (size_t)n;
	}
	return !c->handles_closing;
}

/* Plaintext through TLS (after the handshake) to the socket. */
static void tls_send(sm_net_conn *c, const void *data, size_t len)
{
	if (tls_put(c, data, len))
		tls_flush(c);
}

static void dirty_add(sm_net_conn *c);

/*
 * sm_net_write_direct under TLS: the records are those of one batch of
 * everything (full ones, no small record per write), but most of the
 * bytes go through SSL_write from where they are: the batch takes the
 * first of them up to a record's end and goes, then the whole records
 * of the bytes, and their tail becomes the batch (to be followed by
 * what is written next). The records wait in tls_out, like a batch, for
 * 64 KiB or the loop turn.
 */
static void tls_direct(sm_net_conn *c, const void *data, size_t len)
{
	const char *p = data;
	size_t k = (NET_TLS_RECORD - c->pend.len % NET_TLS_RECORD) %
		NET_TLS_RECORD;
	size_t whole;
	eng_buf b;
	bool ok;

	if (k >= len) {
		sm_net_write(c, data, len);
		return;
	}
	eng_buf_append(&c->pend, p, k);
	p += k;
	len -= k;
	whole = len - len % NET_TLS_RECORD;
	b = c->pend;
	c->pend = (eng_buf)ENG_BUF_INIT;
	ok = tls_put(c, b.data, b.len) && tls_put(c, p, whole);
	eng_buf_free(&b);
	if (!ok)
		return;
	eng_buf_append(&c->pend, p + whole, len - whole);
	if (c->tls_out.len >= NET_FLUSH_BYTES ||
	    c->out_bytes + c->tls_out.len > c->l->cfg.max_output_bytes)
		tls_flush(c);
	dirty_add(c);
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

static void dirty_add(sm_net_conn *c)
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

static void dirty_remove(sm_net_conn *c)
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
static void out_flush(sm_net_conn *c)
{
	eng_buf b;

	dirty_remove(c);
	if (c->pend.len == 0) {
		/* emptied by sm_net_write_direct; under TLS its records */
		eng_buf_free(&c->pend);
		if (c->ssl != NULL)
			tls_flush(c);
		return;
	}
	b = c->pend;
	c->pend = (eng_buf)ENG_BUF_INIT;
	if (c->ssl == NULL) {
		wire_write_owned(c, &b);
		return;
	}
	tls_send(c, b.data, b.len);
	eng_buf_free(&b);
}

/* Once per loop turn: every connection's batch goes out. */
static void on_flush_turn(sm_net_listener *l)
{
	while (l->dirty != NULL)
		out_flush(l->dirty);
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
		out_flush(c);
	else
		dirty_add(c);
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
		tls_direct(c, data, len);
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

/* ---- input ---- */

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

/* Pulls plaintext out of TLS into the input buffer, up to its bound. */
static void tls_pump(sm_net_conn *c)
{
	uint8_t plain[NET_READ_BYTES];
	size_t max_in = c->l->cfg.max_input_bytes;

	while (!c->handles_closing && !c->peer_eof && c->in.len < max_in) {
		size_t room = max_in - c->in.len;
		int n = SSL_read(c->ssl, plain, (int)(room < sizeof(plain) ?
						      room : sizeof(plain)));

		if (n > 0) {
			eng_buf_append(&c->in, plain, (size_t)n);
			continue;
		}
		int e = SSL_get_error(c->ssl, n);

		if (e == SSL_ERROR_WANT_READ)
			break;
		if (e == SSL_ERROR_ZERO_RETURN) {
			c->peer_eof = true;
			break;
		}
		ERR_clear_error();
		tls_flush(c);
		sodium_memzero(plain, sizeof(plain));
		conn_abort(c, SM_NET_TLS_ERROR);
		return;
	}
	sodium_memzero(plain, sizeof(plain));
	tls_flush(c);
	tls_in_compact(c);
	if (!c->tls_done && SSL_is_init_finished(c->ssl)) {
		c->tls_done = true;
		if (c->tls_early.len > 0) {
			eng_buf early = c->tls_early;

			c->tls_early = (eng_buf)ENG_BUF_INIT;
			tls_send(c, early.data, early.len);
			eng_buf_free_wipe(&early);
		}
	}
}

static void ssl_start(sm_net_conn *c);

/* Drops the buffered plaintext (what the client pipelined after its
 * STARTTLS command) and switches the stream to TLS. */
static void starttls_now(sm_net_conn *c)
{
	size_t discarded = c->in.len;

	out_flush(c);                /* the answer goes out in the clear */
	c->starttls_pending = false;
	in_consume(c, c->in.len);
	c->gen++;
	if (discarded > 0)
		eng_log(ENG_LOG_WARN, "%s: %s: %zu plaintext bytes sent after STARTTLS "
			"discarded", c->l->name, c->addr, discarded);
	ssl_start(c);
	update_reading(c);
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
			starttls_now(c);
			continue;
		}
		if (c->ssl != NULL)
			tls_pump(c);
		if (n == 0) {
			if (c->in.len >= max_in) {
				c->in_deliver = false;
				conn_abort(c, SM_NET_FLOOD);
				return;
			}
			break;
		}
	}
	c->in_deliver = false;
	if (c->closing)
		return;
	if (c->peer_eof && !c->held && !c->out_paused) {
		conn_close_graceful(c, SM_NET_EOF);
		return;
	}
	update_reading(c);
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
			tls_pump(c);
		deliver(c);
	}
}

static void kick_later(sm_net_conn *c)
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
		update_reading(c);
		deliver(c);
		return;
	}
	if (nread < 0) {
		conn_abort(c, SM_NET_ERROR);
		return;
	}
	if (nread == 0 || c->closing)
		return;
	c->last_ms = uv_now(c->l->loop);
	if (c->ssl != NULL) {
		eng_buf_append(&c->tls_in, buf->base, (size_t)nread);
		tls_pump(c);
		if (c->handles_closing)
			return;
	} else {
		eng_buf_append(&c->in, buf->base, (size_t)nread);
	}
	sodium_memzero(buf->base, (size_t)nread);
	deliver(c);
}

/* ---- timeouts ---- */

static void on_timer(uv_timer_t *t)
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
		conn_abort(c, SM_NET_TOTAL);
		return;
	}
	if (now >= idle_at) {
		conn_abort(c, SM_NET_IDLE);
		return;
	}
	next = idle_at < total_at ? idle_at : total_at;
	uv_timer_start(&c->timer, on_timer, next - now, 0);
}

/* ---- accepting ---- */

static bool addr_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;

		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return true;
		return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) &&
		       in6->sin6_addr.s6_addr[12] == 127;
	}
	return false;
}

static void ssl_start(sm_net_conn *c)
{
	BIO *b;

	if (CRYPTO_THREAD_run_once(&net_bio_once, net_bio_method_init) != 1 ||
	    net_bio_method == NULL)
		eng_oom(sizeof(BIO_METHOD *));
	c->ssl = SSL_new(c->l->cfg.tls->ctx);
	if (c->ssl == NULL)
		eng_oom(sizeof(SSL *));
	if ((b = BIO_new(net_bio_method)) == NULL)
		eng_oom(sizeof(BIO *));
	BIO_set_data(b, c);
	SSL_set_bio(c->ssl, b, b);   /* one reference, owned by ssl */
	SSL_set_accept_state(c->ssl);
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
		conn_abort(c, SM_NET_LIMIT);
		return;
	}
	wire_write(c, text, strlen(text));
	conn_close_graceful(c, SM_NET_LIMIT);
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
		conn_abort(c, SM_NET_ERROR);
		return;
	}
	memset(&ss, 0, sizeof(ss));
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) {
		conn_abort(c, SM_NET_ERROR);
		return;
	}
	if (ss.ss_family == AF_INET6)
		uv_ip6_name((struct sockaddr_in6 *)&ss, c->addr, sizeof(c->addr));
	else
		uv_ip4_name((struct sockaddr_in *)&ss, c->addr, sizeof(c->addr));
	c->loopback = addr_loopback(&ss);
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
		ssl_start(c);
	uv_timer_start(&c->timer, on_timer,
		       l->cfg.idle_timeout_ms < l->cfg.total_timeout_ms ?
		       l->cfg.idle_timeout_ms : l->cfg.total_timeout_ms, 0);
	c->accepted = true;
	l->cfg.cb->on_accept(c, l->cfg.ctx);
	if (!c->closing)
		update_reading(c);
}

/* ---- listener API ---- */

static void on_listener_closed(uv_handle_t *h)
{
	sm_net_listener *l = h->data;

	l->tcp_closed = true;
	listener_maybe_free(l);
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

/* ---- connection API ---- */

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

const char *sm_net_tls_describe(const sm_net_conn *c, char *buf, size_t len)
{
	const SSL_CIPHER *cipher;
	int alg_bits = 0, bits;

	if (len == 0)
		return buf;
	buf[0] = '\0';
	if (!sm_net_is_tls(c) || (cipher = SSL_get_current_cipher(c->ssl)) == NULL)
		return buf;
	bits = SSL_CIPHER_get_bits(cipher, &alg_bits);
	snprintf(buf, len, "%s with cipher %s (%d/%d bits)", SSL_get_version(c->ssl),
		 SSL_CIPHER_get_name(cipher), bits, alg_bits);
	return buf;
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
	kick_later(c);
}

int sm_net_starttls(sm_net_conn *c)
{
	if (c->ssl != NULL || c->l->cfg.tls == NULL || c->closing ||
	    c->starttls_pending)
		return ENG_EPERM;
	if (c->in_deliver)
		c->starttls_pending = true;   /* after on_data says what it used */
	else
		starttls_now(c);
	return 0;
}

void sm_net_close(sm_net_conn *c)
{
	conn_close_graceful(c, SM_NET_CLOSED);
}

void sm_net_abort(sm_net_conn *c)
{
	conn_abort(c, SM_NET_CLOSED);
}
