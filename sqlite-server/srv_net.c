/*
 * sqlited's network core (srv_net.h, srv.h).
 *
 * Objects and who owns them:
 *   net_state   one per srv; owns the listeners, the TLS context, the list
 *               of connections and the table of peers.
 *   srv_conn    one per accepted stream. Holds two libuv handles (the
 *               stream and a timer) and is freed when both have closed.
 *   net_req     a srv_req and the core's state. Lives on its
 *               connection's list while the connection exists. Owned by
 *               the core until the handler is called; then by the handler
 *               until it answers (srv_reply, srv_fail, the last
 *               srv_send_data), even when the core has already answered
 *               ECANCELLED or the connection is gone (conn == NULL).
 *   net_upload  the body of an upload: held in memory while it is small
 *               (upload_keep_in_memory), else sealed into tmp_dir by pool
 *               threads; detached from its request when that goes away
 *               while a write runs, and then freed by the write's done.
 *   net_peer    in-flight count per peer name; refcounted by connections
 *               and requests, so req->peer_name stays valid.
 *
 * Connection states:
 *
 *   HANDSHAKE --AUTH ok--> READY --error/EOF/stop--> CLOSING --> (freed)
 *       |                                               ^
 *       +--bad AUTH: AUTH_DELAY (reads stopped) --------+
 *
 * Every byte read is fed to one rpc_reader; every frame is handled before
 * the next is read, so at most one read buffer (64 KiB) of frames is
 * handled per callback. Output is one uv_write per frame; when a
 * connection's queued output passes max_output_bytes its reads stop until
 * half of it has drained (and srv_window() answers 0 meanwhile), so a
 * client that does not read cannot make the server buffer without bound.
 */
#include "srv_net.h"

#include "eng_error.h"
#include "rpc_auth.h"
#include "spool.h"
#include "srv_bufpool.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define NET_READ_BYTES 65536
#define NET_CLOSE_GRACE_MS 5000
#define NET_MAX_LISTENERS 2
/* SO_SNDBUF of a unix socket connection (the kernel doubles it). */
#define NET_UNIX_SNDBUF (512 * 1024)

typedef struct net_peer net_peer;
typedef struct net_req net_req;
typedef struct net_upload net_upload;
typedef struct srv_net net_state;

struct net_peer {
	net_peer *next;
	unsigned refs;
	unsigned in_flight;
	char name[RPC_PEER_NAME_MAX + 1];
};

enum conn_state { C_HANDSHAKE, C_AUTH_DELAY, C_READY, C_CLOSING };

struct srv_conn {
	net_state *net;
	srv_conn *prev, *next;
	union {
		uv_tcp_t tcp;
		uv_pipe_t pipe;
		uv_stream_t stream;
		uv_handle_t handle;
	} h;
	uv_timer_t timer;
	uv_shutdown_t shutdown_req;
	unsigned handles_open;
	enum conn_state state;
	bool is_unix;
	bool reading;
	bool paused;                 /* reads stopped by backpressure */
	bool frame_timer_on;
	/* TLS: the stream carries records; plaintext goes through ssl. */
	SSL *ssl;
	BIO *rbio, *wbio;
	eng_buf tls_early;           /* plaintext queued before the handshake ended */
	rpc_reader *reader;
	rpc_limits lim;
	uint8_t nonce[RPC_NONCE_BYTES];
	net_peer *peer;
	char addr[64];
	net_req *reqs;               /* every request of this connection */
	unsigned n_reqs;
	size_t out_bytes;
	char rbuf[NET_READ_BYTES];
};

enum req_phase {
	R_NEW,                       /* core-owned: being checked */
	R_UPLOAD,                    /* core-owned: receiving the body */
	R_DRAIN,                     /* core-owned: answered, dropping its DATA */
	R_HANDLER,                   /* handler-owned */
};

struct net_req {
	srv_req pub;                 /* first: srv_req * <-> net_req * */
	net_req *prev, *next;
	enum req_phase phase;
	bool on_wire;                /* the id is not finished for the client */
	bool streaming;              /* RESPONSE with BODY sent */
	uint64_t send_window;        /* download credit left */
	uint64_t recv_window;        /* upload credit the client has left */
	uint32_t credit_min;         /* the smallest WINDOW credit, 0: none */
	uint8_t *payload;
	size_t payload_len;
	rpc_msg msg;
	net_peer *peer;
	char addr[64];
	net_upload *up;
	srv_handler_fn *handler;
};

struct net_upload {
	net_state *net;
	net_req *req;                /* NULL when the request went away */
	uv_work_t work;
	bool busy;                   /* work queued or running */
	bool end;                    /* END received */
	bool committed;
	bool commit_now;             /* the running work commits after writing */
	int err;
	uint64_t received;
	eng_buf pending;             /* received, not yet handed to a write */
	eng_buf writing;             /* being written by the pool */
	eng_spool_writer *w;
	srv_body *body;
	/* Still held in memory only (pending): no file, no key pair yet. */
	bool in_memory;
	uint8_t pk[crypto_box_PUBLICKEYBYTES];
};

struct srv_body {
	net_state *net;
	char *dir;
	char id[ENG_SPOOL_ID_LEN + 1];
	uint8_t *sk;                 /* eng_secret_new: the only key to the file */
	uint64_t size;
	bool exists;
	/* A small body kept in memory instead of a file (see on_data); its
	 * bytes count against net->memory_bodies until it is freed. */
	bool in_memory;
	eng_buf mem;
	size_t reserved;
};

struct srv_body_reader {
	eng_spool_reader *r;
	const srv_body *mem;         /* or reading a body held in memory */
	size_t off;
};

struct srv_net {
	srv *srv;
	srv_net_options opt;
	uv_tcp_t *tcp;
	uv_pipe_t *pipe;
	char *sock_path;
	uint16_t tcp_port;
	char listeners[NET_MAX_LISTENERS][300];
	size_t n_listeners;
	unsigned listeners_open;
	SSL_CTX *ssl_ctx;
	srv_conn *conns;
	unsigned n_conns;
	net_peer *peers;
	uint64_t start_ms;
	unsigned in_flight;          /* requests alive, all connections */
	unsigned uploads;            /* net_upload alive (detached included) */
	size_t memory_bodies;        /* bytes of bodies held in memory */
	bool stopping;
	bool stop_finished;
	uv_timer_t *drain_timer;
	void (*stop_done)(void *ctx);
	void *stop_ctx;
};

static void conn_close(srv_conn *c, bool flush);
static void conn_send_error(srv_conn *c, uint32_t id, uint16_t opcode, int err);
static void req_free(net_req *r);
static void stop_progress(net_state *n);
static void upload_kick(net_upload *up);

static net_req *to_net(srv_req *req)
{
	return (net_req *)req;
}

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

/* ---- peers ---- */

static net_peer *peer_get(net_state *n, const uint8_t *name, size_t len)
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

static void peer_put(net_state *n, net_peer **pp)
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

/* ---- output ---- */

/* Whose bytes a write sends: a copy in the write itself, a block it
 * frees, or a piece buffer it gives back to srv_pieces (srv_bufpool.h). */
enum wire_own { W_COPY, W_OWNED, W_POOLED };

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

static void resume_streams(srv_conn *c);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

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
			uv_read_start(&c->h.stream, on_alloc, on_read);
		resume_streams(c);
	}
}

static void read_start(srv_conn *c)
{
	c->reading = true;
	if (!c->paused)
		uv_read_start(&c->h.stream, on_alloc, on_read);
}

static void read_stop(srv_conn *c)
{
	c->reading = false;
	uv_read_stop(&c->h.stream);
}

/*
 * Queues bytes for the socket: a copy of data (W_COPY), or data itself,
 * which the write then frees (W_OWNED) or gives back to the piece pool
 * (W_POOLED) when done, wiped like the copy.
 */
static void wire_queue(srv_conn *c, const void *data, size_t len,
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
		conn_close(c, false);
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
	wire_queue(c, data, len, W_COPY);
}

/* Moves what TLS produced to the socket. */
static void tls_flush(srv_conn *c)
{
	char buf[16384];
	int n;

	while ((n = BIO_read(c->wbio, buf, sizeof(buf))) > 0)
		wire_write(c, buf, (size_t)n);
}

/* Sends plaintext: through TLS when the connection has it. */
static void conn_write(srv_conn *c, const void *data, size_t len)
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
			conn_close(c, false);
			return;
		}
		data = (const char *)data + n;
		len -= (size_t)n;
		tls_flush(c);
	}
}

/* Sends one frame; returns the codec's error if it does not fit. */
static int send_frame(srv_conn *c, uint8_t kind, uint8_t flags, uint16_t opcode,
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

		wire_queue(c, data, n, W_OWNED);
		return 0;
	}
	if (rc == 0)
		conn_write(c, b.data, b.len);
	eng_buf_free_wipe(&b);
	return rc;
}

static void conn_send_error(srv_conn *c, uint32_t id, uint16_t opcode, int err)
{
	eng_buf pl = ENG_BUF_INIT;

	rpc_put_u64(&pl, RPC_T_CODE, rpc_err_to_wire(err));
	rpc_put_str(&pl, RPC_T_ERROR_TEXT, rpc_strerror(err));
	send_frame(c, RPC_K_ERROR, 0, opcode, id, pl.data, pl.len);
	eng_buf_free_wipe(&pl);
	c->net->srv->errors++;
}

/* A violation of the framing: ERROR with id 0, then close. */
static void conn_fatal(srv_conn *c, int err)
{
	if (c->state == C_CLOSING)
		return;
	conn_send_error(c, 0, 0, err);
	conn_close(c, true);
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
	peer_put(n, &c->peer);
	sodium_memzero(c->nonce, sizeof(c->nonce));
	free(c);
	stop_progress(n);
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
			req_free(r);
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
static void conn_close(srv_conn *c, bool flush)
{
	if (c->state == C_CLOSING) {
		if (!flush)
			conn_close_now(c);
		return;
	}
	c->state = C_CLOSING;
	read_stop(c);
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

/* ---- requests ---- */

static void body_free(srv_body **bp)
{
	srv_body *b = *bp;

	*bp = NULL;
	if (b == NULL)
		return;
	if (b->exists) {
		char *path = eng_malloc(strlen(b->dir) + ENG_SPOOL_ID_LEN + 8);

		sprintf(path, "%s/%s.msg", b->dir, b->id);
		unlink(path);
		free(path);
	}
	b->net->memory_bodies -= b->reserved;
	eng_buf_free_wipe(&b->mem);
	eng_secret_free(&b->sk);
	free(b->dir);
	free(b);
}

static void upload_free(net_upload *up)
{
	net_state *n = up->net;

	eng_spool_abort(&up->w);
	body_free(&up->body);
	eng_buf_free(&up->pending);
	eng_buf_free(&up->writing);
	sodium_memzero(up->pk, sizeof(up->pk));
	free(up);
	n->uploads--;
	stop_progress(n);
}

/* The request no longer wants its upload; a running write finishes first. */
static void upload_drop(net_req *r)
{
	net_upload *up = r->up;

	r->up = NULL;
	if (up == NULL)
		return;
	up->req = NULL;
	if (!up->busy)
		upload_free(up);
}

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

static void req_free(net_req *r)
{
	net_state *n = r->pub.srv->net;
	srv_conn *c = r->pub.conn;

	req_unlink(r);
	upload_drop(r);
	body_free(&r->pub.body);
	if (r->peer != NULL)
		r->peer->in_flight--;
	peer_put(n, &r->peer);
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
		conn_close(c, true);
	stop_progress(n);
}

static net_req *req_find(srv_conn *c, uint32_t id)
{
	for (net_req *r = c->reqs; r != NULL; r = r->next) {
		if (r->on_wire && r->pub.id == id)
			return r;
	}
	return NULL;
}

static net_req *req_new(srv_conn *c, const rpc_frame *f, const rpc_op *op)
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
static void req_refuse(net_req *r, int err, bool body_follows)
{
	srv_conn *c = r->pub.conn;

	conn_send_error(c, r->pub.id, r->pub.op != NULL ? r->pub.op->opcode : 0, err);
	upload_drop(r);
	if (body_follows) {
		/* The client may still send what its window allows. */
		if (r->phase == R_NEW)
			r->recv_window = RPC_INITIAL_WINDOW_BYTES;
		r->phase = R_DRAIN;
		return;
	}
	req_free(r);
}

static void run_handler(net_req *r)
{
	r->phase = R_HANDLER;
	r->handler(&r->pub);
}

/* ---- the handler side (srv.h) ---- */

/* True when an answer of this request still goes to the client. */
static bool req_live(const net_req *r)
{
	return r->pub.conn != NULL && r->on_wire && r->pub.conn->state == C_READY;
}

void srv_reply(srv_req *req)
{
	net_req *r = to_net(req);

	if (req_live(r)) {
		int rc = send_frame(req->conn, RPC_K_RESPONSE, 0, req->op->opcode,
				    req->id, req->reply.data, req->reply.len);
		if (rc != 0) {
			eng_log(ENG_LOG_ERROR, "sqlited: %s answer too large for one frame",
				req->op->name);
			conn_send_error(req->conn, req->id, req->op->opcode, ENG_ELIMIT);
		}
	}
	req_free(r);
}

void srv_reply_more(srv_req *req)
{
	net_req *r = to_net(req);

	if (req_live(r) &&
	    send_frame(req->conn, RPC_K_RESPONSE, RPC_F_MORE, req->op->opcode,
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
	if (req_live(r))
		conn_send_error(req->conn, req->id, req->op->opcode, err);
	req_free(r);
}

void srv_reply_body(srv_req *req)
{
	net_req *r = to_net(req);

	r->streaming = true;
	r->send_window = RPC_INITIAL_WINDOW_BYTES;
	if (req_live(r))
		send_frame(req->conn, RPC_K_RESPONSE, RPC_F_BODY, req->op->opcode,
			   req->id, req->reply.data, req->reply.len);
	eng_buf_reset(&req->reply);
}

size_t srv_window(const srv_req *req)
{
	const net_req *r = (const net_req *)req;

	if (!req_live(r))
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

	if (req_live(r)) {
		if (len > r->send_window) {
			/* A handler bug: never more than the window. */
			eng_log(ENG_LOG_ERROR, "sqlited: %s sent past the window",
				req->op->name);
			len = (size_t)r->send_window;
			end = false;
			conn_send_error(req->conn, req->id, req->op->opcode, ENG_EIO);
			r->on_wire = false;
		}
		r->send_window -= len;
		do {
			size_t n = len > RPC_MAX_CHUNK_BYTES ? RPC_MAX_CHUNK_BYTES : len;
			bool last = end && n == len;

			send_frame(req->conn, RPC_K_DATA, last ? RPC_F_END : 0, 0,
				   req->id, p, n);
			p += n;
			len -= n;
		} while (len > 0);
	}
	if (end)
		req_free(r);
}

void srv_send_data_buf(srv_req *req, uint8_t *buf, size_t len, bool end)
{
	net_req *r = to_net(req);
	uint8_t flags = end ? RPC_F_END : 0;

	/* Over TLS each frame is its own SSL_write (a copy anyway); what
	 * srv_send_data drops or refuses it drops or refuses the same way. */
	if (!req_live(r) || len > r->send_window || req->conn->ssl != NULL ||
	    rpc_frame_header(buf, RPC_K_DATA, flags, 0, req->id, len) != 0) {
		srv_send_data(req, buf + RPC_HEADER_BYTES, len, end);
		srv_bufpool_put(&srv_pieces, buf, RPC_HEADER_BYTES + len);
		return;
	}
	r->send_window -= len;
	wire_queue(req->conn, buf, RPC_HEADER_BYTES + len, W_POOLED);
	if (end)
		req_free(r);
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
	    (req_live(r) && (req->conn->paused || req->conn->ssl != NULL))) {
		srv_reply_body(req);
		return false;
	}
	r->streaming = true;
	r->send_window = RPC_INITIAL_WINDOW_BYTES - len;
	if (req_live(r)) {
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
		wire_queue(req->conn, bytes, n, W_OWNED);
	}
	eng_buf_free_wipe(&b);
	eng_buf_reset(&req->reply);
	req_free(r);
	return true;
}

/* Output drained below the bound: streams with credit may go on. */
static void resume_streams(srv_conn *c)
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
		r = req_find(c, ids[i]);
		if (r != NULL && r->streaming && r->pub.on_window != NULL &&
		    r->send_window > 0) {
			void (*cb)(srv_req *) = r->pub.on_window;

			r->pub.on_window = NULL;
			cb(&r->pub);
		}
	}
	free(ids);
}

/* ---- bodies ---- */

uint64_t srv_body_size(const srv_body *b)
{
	return b->size;
}

int srv_body_open(srv_body *b, srv_body_reader **r_r)
{
	srv_body_reader *br = eng_calloc(1, sizeof(*br));
	int rc;

	if (b->in_memory) {
		br->mem = b;
		*r_r = br;
		return 0;
	}
	rc = eng_spool_reader_open(b->dir, b->id, b->sk, &br->r);

	if (rc != 0) {
		free(br);
		*r_r = NULL;
		return rc;
	}
	*r_r = br;
	return 0;
}

long srv_body_read(srv_body_reader *r, void *buf, size_t len)
{
	if (r->mem != NULL) {
		size_t left = r->mem->mem.len - r->off;

		if (len > left)
			len = left;
		if (len > LONG_MAX)
			len = LONG_MAX;
		if (len > 0)
			memcpy(buf, r->mem->mem.data + r->off, len);
		r->off += len;
		return (long)len;
	}
	return eng_spool_read(r->r, buf, len);
}

void srv_body_reader_free(srv_body_reader **r)
{
	if (r == NULL || *r == NULL)
		return;
	eng_spool_reader_free(&(*r)->r);
	free(*r);
	*r = NULL;
}

/* Pool thread: writes one batch, opening the file first and committing
 * after the last batch. */
static void upload_work(uv_work_t *w)
{
	net_upload *up = w->data;
	int rc = 0;

	if (up->w == NULL) {
		rc = eng_spool_writer_open(up->body->dir, up->pk, 0, 0, &up->w);
		/* A staging copy: every consumer (APPEND into the database,
		 * DELIVER into the database or the alias's spool, the outbound
		 * queue) makes its own durable copy before answering, and the
		 * file is deleted with the request. Its syncs buy nothing. */
		if (rc == 0)
			eng_spool_writer_no_sync(up->w);
	}
	if (rc == 0 && up->writing.len > 0)
		rc = eng_spool_write(up->w, up->writing.data, up->writing.len);
	if (rc == 0 && up->commit_now) {
		rc = eng_spool_commit(&up->w, up->body->id);
		if (rc == 0)
			up->body->exists = true;
	}
	up->err = rc;
}

static void upload_done(uv_work_t *w, int status)
{
	net_upload *up = w->data;
	net_req *r = up->req;
	uint64_t written = up->writing.len;

	up->busy = false;
	if (status != 0 && up->err == 0)
		up->err = ENG_EIO;
	if (up->commit_now && up->err == 0)
		up->committed = true;
	eng_buf_reset(&up->writing);
	if (r == NULL) {
		upload_free(up);
		return;
	}
	if (up->err != 0) {
		eng_log(ENG_LOG_WARN, "sqlited: sealing a request body failed: %s",
			eng_strerror(up->err));
		req_refuse(r, up->err, !up->end);
		return;
	}
	if (up->committed) {
		/* The whole body is sealed on disk: the handler takes over. */
		r->pub.body = up->body;
		up->body = NULL;
		r->up = NULL;
		up->req = NULL;
		upload_free(up);
		run_handler(r);
		return;
	}
	/* Credit for what is now on disk, so memory holds at most a window. */
	if (written > 0 && !up->end && req_live(r)) {
		eng_buf pl = ENG_BUF_INIT;

		rpc_put_u64(&pl, RPC_T_CREDIT, written);
		send_frame(r->pub.conn, RPC_K_WINDOW, 0, 0, r->pub.id, pl.data, pl.len);
		eng_buf_free_wipe(&pl);
		r->recv_window += written;
	}
	upload_kick(up);
}

/* Starts a write of what is pending (or the commit), unless one runs. */
static void upload_kick(net_upload *up)
{
	if (up->busy || (up->pending.len == 0 && !up->end) || up->committed)
		return;
	if (up->body->sk == NULL) {
		/* A key pair that exists only in this process: the sealed
		 * file is useless to anyone who reads the disk. */
		up->body->sk = eng_secret_new(crypto_box_SECRETKEYBYTES);
		crypto_box_keypair(up->pk, up->body->sk);
	}
	/* Swap: the pool writes `writing` while DATA fills `pending`. */
	eng_buf tmp = up->writing;

	up->writing = up->pending;
	up->pending = tmp;
	up->commit_now = up->end;
	up->body->size = up->received;
	up->work.data = up;
	if (uv_queue_work(up->net->srv->loop, &up->work, upload_work,
			  upload_done) != 0) {
		up->err = ENG_EIO;
		if (up->req != NULL)
			req_refuse(up->req, ENG_EIO, !up->end);
		return;
	}
	up->busy = true;
}

/*
 * A body of at most max_memory_body_bytes (no more than the initial
 * window: no credit is sent for it, so it must end within the window) is
 * kept in memory while
 * all bodies so kept stay within memory_bodies_budget: no staging file,
 * no key pair, no thread-pool round trip; the handler runs at its END.
 * A body that outgrows either limit goes to a staging file from then on
 * (what is pending is its first write), its reservation given back.
 * Returns true while the body stays in memory.
 */
static bool upload_keep_in_memory(net_req *r, size_t added)
{
	net_upload *up = r->up;
	net_state *n = up->net;
	srv_body *b = up->body;
	uint64_t max = n->opt.max_memory_body_bytes < RPC_INITIAL_WINDOW_BYTES ?
		n->opt.max_memory_body_bytes : RPC_INITIAL_WINDOW_BYTES;

	/* A body that used up the whole window without ending goes to a
	 * file now: only credit for written bytes lets the client go on. */
	if ((up->end ? up->received <= max : up->received < max) &&
	    n->memory_bodies + added <= n->opt.memory_bodies_budget) {
		n->memory_bodies += added;
		b->reserved += added;
		if (!up->end)
			return true;
		b->in_memory = true;
		b->size = up->received;
		b->mem = up->pending;
		up->pending = (eng_buf)ENG_BUF_INIT;
		r->pub.body = b;
		up->body = NULL;
		r->up = NULL;
		up->req = NULL;
		upload_free(up);
		run_handler(r);
		return true;
	}
	up->in_memory = false;
	n->memory_bodies -= b->reserved;
	b->reserved = 0;
	return false;
}

static int upload_start(net_req *r)
{
	net_state *n = r->pub.srv->net;
	net_upload *up = eng_calloc(1, sizeof(*up));
	srv_body *b = eng_calloc(1, sizeof(*b));

	b->net = n;
	b->dir = eng_strdup(n->srv->tmp_dir);
	up->in_memory = true;
	up->net = n;
	up->req = r;
	up->body = b;
	r->up = up;
	r->recv_window = RPC_INITIAL_WINDOW_BYTES;
	r->phase = R_UPLOAD;
	n->uploads++;
	return 0;
}

static void on_data(srv_conn *c, const rpc_frame *f)
{
	net_req *r = req_find(c, f->request_id);
	uint64_t max = c->net->srv->cfg->max_message_bytes;

	if (r == NULL || r->phase == R_HANDLER ||
	    f->payload_len > r->recv_window) {
		conn_fatal(c, RPC_EWINDOW);
		return;
	}
	r->recv_window -= f->payload_len;
	if (r->phase == R_DRAIN) {
		if (f->flags & RPC_F_END)
			req_free(r);
		return;
	}
	r->up->received += f->payload_len;
	if (r->up->received > max) {
		req_refuse(r, ENG_ELIMIT, !(f->flags & RPC_F_END));
		return;
	}
	eng_buf_append(&r->up->pending, f->payload, f->payload_len);
	if (f->flags & RPC_F_END)
		r->up->end = true;
	if (r->up->in_memory && upload_keep_in_memory(r, f->payload_len))
		return;
	upload_kick(r->up);
}

/* ---- frames ---- */

static void on_request(srv_conn *c, const rpc_frame *f)
{
	net_state *n = c->net;
	bool body = (f->flags & RPC_F_BODY) != 0;
	const rpc_op *op = rpc_op_lookup(f->opcode);
	srv_handler_fn *h = op == NULL ? NULL :
			    n->opt.handler_for != NULL ? n->opt.handler_for(f->opcode) :
			    srv_handler(f->opcode);
	net_req *r = req_find(c, f->request_id);
	int rc;

	if (r != NULL) {
		if (r->phase != R_DRAIN) {
			conn_fatal(c, RPC_EPROTO);
			return;
		}
		/* The client reused the id of an answered upload: its
		 * leftover DATA is over. */
		req_free(r);
	}
	n->srv->requests++;
	r = req_new(c, f, op);
	if (h == NULL) {
		/* Not in the table, or its family not linked in. */
		r->pub.op = NULL;
		req_refuse(r, RPC_EOPCODE, body);
		return;
	}
	r->handler = h;
	if (n->stopping) {
		req_refuse(r, RPC_EUNAVAILABLE, body);
		return;
	}
	if (c->n_reqs > n->opt.max_in_flight ||
	    r->peer->in_flight > n->opt.max_in_flight_peer) {
		req_refuse(r, RPC_ETOOMANY, body);
		return;
	}
	if (body && !(op->flags & RPC_OPF_BODY_IN)) {
		req_refuse(r, RPC_EPROTO, body);
		return;
	}
	if ((op->flags & RPC_OPF_ADMIN) && !is_admin_peer(c)) {
		req_refuse(r, ENG_EPERM, body);
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
		req_refuse(r, rc, body);
		return;
	}
	if (op->flags & RPC_OPF_SESSION) {
		const uint8_t *sess;
		size_t len;

		if (rpc_get_bytes(&r->pub.args, RPC_T_SESSION, &sess, &len) != 0 ||
		    len != SRV_SESSION_BYTES || n->srv->aliases == NULL ||
		    srv_session_alias(n->srv->aliases, sess, r->pub.alias_id) != 0) {
			req_refuse(r, RPC_ENOSESSION, body);
			return;
		}
		memcpy(r->pub.session, sess, SRV_SESSION_BYTES);
	}
	if (body) {
		upload_start(r);
		return;
	}
	run_handler(r);
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
		conn_fatal(c, RPC_EWINDOW);
		return;
	}
	rpc_msg_clear(&msg);
	r = req_find(c, f->request_id);
	/* Credit for a stream that has just ended crosses its END: ignored. */
	if (r == NULL || !r->streaming)
		return;
	if (credit > UINT32_MAX || r->send_window + credit > UINT32_MAX) {
		conn_fatal(c, RPC_EWINDOW);
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
	net_req *r = req_find(c, id);

	if (r == NULL || r->phase == R_DRAIN)
		return;
	if (answer)
		conn_send_error(c, id, r->pub.op != NULL ? r->pub.op->opcode : 0,
				RPC_ECANCELLED);
	if (r->phase == R_UPLOAD) {
		/* Nothing is stored; DATA still in flight is dropped. */
		bool end = r->up != NULL && r->up->end;

		upload_drop(r);
		if (!end) {
			r->phase = R_DRAIN;
			return;
		}
		req_free(r);
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
	send_frame(c, RPC_K_AUTH_OK, 0, 0, 0, pl.data, pl.len);
	sodium_memzero(proof, sizeof(proof));
	eng_buf_free_wipe(&pl);
}

static void on_auth_delay(uv_timer_t *t)
{
	srv_conn *c = t->data;

	conn_fatal(c, RPC_ENOTAUTH);
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
		conn_fatal(c, RPC_EPROTO);
		return;
	}
	rc = rpc_decode(f->payload, f->payload_len, &c->lim, &msg, &root);
	if (rc == 0 && rpc_get_u64(&root, RPC_T_VERSION, &version) == 0 &&
	    version != RPC_VERSION)
		rc = RPC_EVERSION;
	if (rc != 0) {
		rpc_msg_clear(&msg);
		conn_fatal(c, rc);
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
		read_stop(c);
		uv_timer_stop(&c->timer);
		c->frame_timer_on = false;
		uv_timer_start(&c->timer, on_auth_delay, c->net->opt.auth_fail_delay_ms, 0);
		return;
	}
	c->peer = peer_get(c->net, name, name_len);
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
		on_data(c, f);
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
			conn_close(c, true);
		else
			on_cancel(c, f->request_id, false);
		break;
	default:
		conn_fatal(c, RPC_EPROTO);
		break;
	}
}

static void on_frame_timeout(uv_timer_t *t)
{
	srv_conn *c = t->data;

	eng_log(ENG_LOG_INFO, "sqlited: %s: %s timed out, closing", c->addr,
		c->state == C_HANDSHAKE ? "handshake" : "frame");
	conn_close(c, false);
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
			conn_fatal(c, rc);
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
		uv_timer_start(&c->timer, on_frame_timeout, c->net->opt.frame_timeout_ms, 0);
	} else if (rpc_reader_pending(c->reader) == 0 && c->frame_timer_on) {
		c->frame_timer_on = false;
		uv_timer_stop(&c->timer);
	}
}

static void on_tls_bytes(srv_conn *c, const char *p, size_t len)
{
	uint8_t plain[16384];

	if (BIO_write(c->rbio, p, (int)len) != (int)len) {
		conn_close(c, false);
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

		tls_flush(c);
		if (e == SSL_ERROR_WANT_READ)
			break;
		eng_log(ENG_LOG_INFO, "sqlited: %s: TLS failed, closing", c->addr);
		conn_close(c, false);
		return;
	}
	tls_flush(c);
	if (c->tls_early.len > 0 && SSL_is_init_finished(c->ssl)) {
		eng_buf early = c->tls_early;

		c->tls_early = (eng_buf)ENG_BUF_INIT;
		conn_write(c, early.data, early.len);
		eng_buf_free_wipe(&early);
	}
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	srv_conn *c = h->data;

	(void)hint;
	*buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	srv_conn *c = s->data;

	if (nread < 0) {
		conn_close(c, false);
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

/* ---- accepting ---- */

static bool sockaddr_loopback(const struct sockaddr_storage *ss)
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

static void send_hello(srv_conn *c)
{
	eng_buf pl = ENG_BUF_INIT;

	rpc_put_u64(&pl, RPC_T_VERSION, RPC_VERSION);
	rpc_put_bytes(&pl, RPC_T_NONCE, c->nonce, sizeof(c->nonce));
	send_frame(c, RPC_K_HELLO, 0, 0, 0, pl.data, pl.len);
	eng_buf_free_wipe(&pl);
}

static void on_connection(uv_stream_t *server, int status)
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
		conn_close(c, false);
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
		need_tls = n->opt.tls_always || !sockaddr_loopback(&ss);
	}
	if (n->stopping) {
		conn_close(c, false);
		return;
	}
	if (need_tls) {
		if (n->ssl_ctx == NULL) {
			eng_log(ENG_LOG_WARN, "sqlited: %s needs TLS but no certificate is "
				"loaded; closing", c->addr);
			conn_close(c, false);
			return;
		}
		c->ssl = SSL_new(n->ssl_ctx);
		c->rbio = BIO_new(BIO_s_mem());
		c->wbio = BIO_new(BIO_s_mem());
		SSL_set_bio(c->ssl, c->rbio, c->wbio);
		SSL_set_accept_state(c->ssl);
	}
	if (rpc_auth_nonce(c->nonce) != 0) {
		conn_close(c, false);
		return;
	}
	/* Under TLS, HELLO waits in tls_early until the handshake is done. */
	send_hello(c);
	uv_timer_start(&c->timer, on_frame_timeout, n->opt.handshake_timeout_ms, 0);
	read_start(c);
}

/* ---- listeners ---- */

static void on_listener_closed(uv_handle_t *h)
{
	net_state *n = h->data;

	free(h);
	n->listeners_open--;
	stop_progress(n);
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
		rc = uv_listen((uv_stream_t *)n->tcp, 512, on_connection);
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
		rc = uv_listen((uv_stream_t *)n->pipe, 512, on_connection);
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
	stop_progress(n);
}

static void on_drain_timeout(uv_timer_t *t)
{
	net_state *n = t->data;
	srv_conn *c, *next;

	eng_log(ENG_LOG_WARN, "sqlited: %u requests still in flight at shutdown; "
		"closing their connections", n->in_flight);
	for (c = n->conns; c != NULL; c = next) {
		next = c->next;
		conn_close(c, true);
	}
}

/*
 * Called whenever something that stopping waits for goes away: once
 * listeners, connections, requests and uploads are all gone, done runs.
 */
static void stop_progress(net_state *n)
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
			conn_close(c, true);
	}
	n->drain_timer = eng_calloc(1, sizeof(*n->drain_timer));
	uv_timer_init(s->loop, n->drain_timer);
	n->drain_timer->data = n;
	uv_timer_start(n->drain_timer, on_drain_timeout, n->opt.drain_timeout_ms, 0);
	uv_unref((uv_handle_t *)n->drain_timer);
	stop_progress(n);
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
