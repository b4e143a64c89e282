/*
 * The non-blocking, pipelined client of the sqlited protocol: its public
 * API (rpc_client.h). Creating a client, queueing calls (with or without
 * a body), cancelling one, the caller's side of flow control (consumed,
 * source_ready), the counters, and closing.
 *
 * Rules: the objects, their lifetimes and the request state machine are
 * in rpc_client_private.h. A call that fails returns its error and never
 * fires its callback; once accepted, its callback fires exactly once.
 * rpc_client_close may be called from inside any callback.
 */
#include "rpc_client_private.h"
#include "eng_error.h"
#include "keys.h"
#include "net_addr.h"
#include "rpc_tls.h"

#include <netinet/in.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#define DEFAULT_TIMEOUT_MS 30000u
#define DEFAULT_CONNECT_TIMEOUT_MS 10000u
#define DEFAULT_BACKOFF_MIN_MS 100u
#define DEFAULT_BACKOFF_MAX_MS 10000u
#define DEFAULT_MAX_QUEUED 1024u
#define DEFAULT_MAX_RESPONSE_BYTES (64u * 1024 * 1024)
/* A download's window at most (rpc_client_opts.recv_window). */
#define MAX_RECV_WINDOW (16u * 1024 * 1024)
int rpc_client_new(uv_loop_t *loop, const rpc_client_config *cfg,
		   rpc_client **c_r)
{
	rpc_client *c;
	struct sockaddr_storage ss;
	SSL_CTX *ssl_ctx = NULL;
	int rc;

	*c_r = NULL;
	if (loop == NULL || cfg == NULL || cfg->secret == NULL ||
	    cfg->peer_name == NULL ||
	    rpc_auth_peer_name_check((const uint8_t *)cfg->peer_name,
				     strlen(cfg->peer_name)) != 0)
		return ENG_EINVAL;
	if ((cfg->unix_path == NULL) == (cfg->host == NULL))
		return ENG_EINVAL;
	memset(&ss, 0, sizeof(ss));
	if (cfg->host != NULL) {
		if (uv_ip4_addr(cfg->host, cfg->port, (struct sockaddr_in *)&ss) != 0 &&
		    uv_ip6_addr(cfg->host, cfg->port, (struct sockaddr_in6 *)&ss) != 0)
			return ENG_EINVAL;
		/* AUTH in the clear is for loopback only. */
		if (!sm_net_addr_loopback((struct sockaddr *)&ss) &&
		    cfg->tls == NULL)
			return ENG_EPERM;
	} else if (cfg->unix_path[0] == '\0' ||
		   strlen(cfg->unix_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		return ENG_EINVAL;
	}
	if (eng_crypto_init() != 0)
		return ENG_EIO;
	if (cfg->host != NULL && cfg->tls != NULL &&
	    (cfg->tls->always || !sm_net_addr_loopback((struct sockaddr *)&ss))) {
		rc = rpc_tls_ctx_new(cfg->tls, &ssl_ctx);
		if (rc != 0)
			return rc;
	}
	c = eng_calloc(1, sizeof(*c));
	c->ssl_ctx = ssl_ctx;
	if (ssl_ctx != NULL)
		c->tls_name = eng_strdup(cfg->tls->server_name != NULL ?
					 cfg->tls->server_name : cfg->host);
	c->secret = sodium_malloc(RPC_SECRET_BYTES);
	if (c->secret == NULL)
		eng_oom(RPC_SECRET_BYTES);
	memcpy(c->secret, cfg->secret, RPC_SECRET_BYTES);
	c->loop = loop;
	c->is_unix = cfg->unix_path != NULL;
	c->unix_path = c->is_unix ? eng_strdup(cfg->unix_path) : NULL;
	c->addr = ss;
	c->peer_name = eng_strdup(cfg->peer_name);
	c->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
	c->connect_timeout_ms = cfg->connect_timeout_ms ?
		cfg->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
	c->backoff_min_ms = cfg->backoff_min_ms ?
		cfg->backoff_min_ms : DEFAULT_BACKOFF_MIN_MS;
	c->backoff_max_ms = cfg->backoff_max_ms ?
		cfg->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
	if (c->backoff_max_ms < c->backoff_min_ms)
		c->backoff_max_ms = c->backoff_min_ms;
	c->backoff_ms = c->backoff_min_ms;
	c->max_in_flight = cfg->max_in_flight;
	c->max_queued = cfg->max_queued ? cfg->max_queued : DEFAULT_MAX_QUEUED;
	c->max_response_bytes = cfg->max_response_bytes ?
		cfg->max_response_bytes : DEFAULT_MAX_RESPONSE_BYTES;
	c->on_state = cfg->on_state;
	c->state_ctx = cfg->state_ctx;
	c->server_max_frame = RPC_MAX_FRAME_BYTES;
	c->server_in_flight = DEFAULT_SERVER_IN_FLIGHT;
	c->next_id = 1;
	uv_timer_init(loop, &c->req_timer);
	uv_timer_init(loop, &c->conn_timer);
	c->req_timer.data = c;
	c->conn_timer.data = c;
	c->handles = 2;
	uv_timer_start(&c->conn_timer, rpcc_on_conn_timer, 0, 0);  /* connect from the loop */
	*c_r = c;
	return 0;
}

static bool payload_has_key(const void *payload, size_t len)
{
	rpc_msg m = RPC_MSG_INIT;
	rpc_view v;
	const uint8_t *p;
	size_t n;
	bool ok;

	ok = rpc_decode(payload, len, NULL, &m, &v) == 0 &&
		rpc_get_bytes(&v, RPC_T_IDEMPOTENCY_KEY, &p, &n) == 0 &&
		n != 0 && n <= 128;
	rpc_msg_clear(&m);
	return ok;
}

int rpc_client_call_ex(rpc_client *c, uint16_t opcode, const void *payload,
		       size_t len, const rpc_client_opts *opts,
		       rpc_client_cb *cb, void *ctx, uint32_t *id_r)
{
	rpc_client_opts none;
	rpc_req *r;
	uint32_t timeout_ms;

	if (opts == NULL) {
		memset(&none, 0, sizeof(none));
		opts = &none;
	}
	if (c == NULL || opcode == 0 || cb == NULL || (len != 0 && payload == NULL))
		return ENG_EINVAL;
	if (c->closing)
		return RPC_EUNAVAILABLE;
	if (RPC_HEADER_BYTES + len > c->server_max_frame)
		return RPC_EFRAMESIZE;
	if (opts->has_body && opts->source == NULL && opts->body == NULL &&
	    opts->body_len != 0)
		return ENG_EINVAL;
	if (opts->retries != 0 && opts->has_body &&
	    (opcode == RPC_OP_APPEND || opcode == RPC_OP_DELIVER) &&
	    !payload_has_key(payload, len))
		return ENG_EINVAL;
	if (opts->retries != 0 && opts->has_body && opts->source != NULL &&
	    opts->rewind == NULL)
		return ENG_EINVAL;
	if (c->queue.n >= c->max_queued)
		return RPC_EUNAVAILABLE;

	r = eng_calloc(1, sizeof(*r));
	r->c = c;
	r->opcode = opcode;
	r->state = RQ_QUEUED;
	if (len != 0)
		eng_buf_append(&r->payload, payload, len);
	timeout_ms = opts->timeout_ms ? opts->timeout_ms : c->timeout_ms;
	r->deadline_ms = uv_now(c->loop) + timeout_ms;
	r->cb = cb;
	r->ctx = ctx;
	r->retries = opts->retries;
	r->may_wait = opts->may_wait;
	r->has_body = opts->has_body;
	r->body = opts->body;
	r->body_len = opts->body_len;
	r->source = opts->source;
	r->rewind = opts->rewind;
	r->source_size = opts->source_size;
	r->source_ctx = opts->source_ctx;
	r->data = opts->data;
	r->data_ctx = opts->data_ctx;
	r->window_goal = opts->recv_window > RPC_INITIAL_WINDOW_BYTES ?
		(opts->recv_window < MAX_RECV_WINDOW ? opts->recv_window :
		 MAX_RECV_WINDOW) : RPC_INITIAL_WINDOW_BYTES;
	/* Ids in use are skipped; 0 is never an id. */
	do {
		r->id = c->next_id++;
		if (c->next_id == 0)
			c->next_id = 1;
	} while (rpcc_req_lookup(c, r->id) != NULL);
	r->hnext = c->buckets[r->id % HASH_BUCKETS];
	c->buckets[r->id % HASH_BUCKETS] = r;
	rpcc_list_push_back(&c->queue, r);
	if (id_r != NULL)
		*id_r = r->id;
	rpcc_arm_req_timer(c, r->deadline_ms);
	rpcc_flush_queue(c);
	return 0;
}

int rpc_client_call(rpc_client *c, uint16_t opcode, const void *payload,
		    size_t len, uint32_t timeout_ms, rpc_client_cb *cb,
		    void *ctx, uint32_t *id_r)
{
	rpc_client_opts o;

	memset(&o, 0, sizeof(o));
	o.timeout_ms = timeout_ms;
	return rpc_client_call_ex(c, opcode, payload, len, &o, cb, ctx, id_r);
}

int rpc_client_call_retry(rpc_client *c, uint16_t opcode,
			  const void *payload, size_t len, const void *body,
			  size_t body_len, unsigned retries, rpc_client_cb *cb,
			  void *ctx, uint32_t *id_r)
{
	rpc_client_opts o;

	memset(&o, 0, sizeof(o));
	o.has_body = true;
	o.body = body;
	o.body_len = body_len;
	o.retries = retries;
	return rpc_client_call_ex(c, opcode, payload, len, &o, cb, ctx, id_r);
}

int rpc_client_cancel(rpc_client *c, uint32_t id)
{
	rpc_req *r = id != 0 ? rpcc_req_lookup(c, id) : NULL;

	if (r == NULL || r->state == RQ_ZOMBIE || r->dead)
		return ENG_ENOTFOUND;
	if (r->state == RQ_QUEUED)
		rpcc_req_finish(r, RPC_ECANCELLED, NULL);
	else
		rpcc_req_abort(r, RPC_ECANCELLED);
	return 0;
}

int rpc_client_consumed(rpc_client *c, uint32_t id, size_t n)
{
	rpc_req *r = id != 0 ? rpcc_req_lookup(c, id) : NULL;

	if (r == NULL || r->state != RQ_SENT || !r->in_body)
		return ENG_ENOTFOUND;
	r->unacked += n;
	rpcc_grant(r);
	return 0;
}

int rpc_client_source_ready(rpc_client *c, uint32_t id)
{
	rpc_req *r = id != 0 ? rpcc_req_lookup(c, id) : NULL;

	if (r == NULL || !r->has_body || r->source == NULL)
		return ENG_ENOTFOUND;
	if (r->source_waiting) {
		r->source_waiting = false;
		if (rpcc_live(c))
			rpcc_pump(c);
	}
	return 0;
}

int rpc_client_idem_key(char key[RPC_IDEM_KEY_CHARS + 1])
{
	uint8_t raw[RPC_IDEM_KEY_CHARS / 2];

	if (eng_crypto_init() != 0)
		return ENG_EIO;
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2hex(key, RPC_IDEM_KEY_CHARS + 1, raw, sizeof(raw));
	return 0;
}

bool rpc_client_connected(const rpc_client *c)
{
	return rpcc_live(c);
}

void rpc_client_trim(rpc_client *c)
{
	if (c->conn != NULL && c->conn->rd != NULL)
		rpc_reader_trim(c->conn->rd);
	rpc_msg_clear(&c->scratch);
}

size_t rpc_client_in_flight(const rpc_client *c)
{
	return c->active.n;
}

size_t rpc_client_queued(const rpc_client *c)
{
	return c->queue.n;
}

size_t rpc_client_write_queue_bytes(const rpc_client *c)
{
	return rpcc_write_queue_bytes(c);
}

static void on_timer_close(uv_handle_t *h)
{
	rpc_client *c = h->data;

	c->handles--;
	rpcc_maybe_finish_close(c);
}

void rpc_client_close(rpc_client *c, rpc_client_close_fn *cb, void *ctx)
{
	if (c == NULL || c->closing)
		return;
	c->closing = true;
	c->close_cb = cb;
	c->close_ctx = ctx;
	uv_timer_stop(&c->req_timer);
	uv_timer_stop(&c->conn_timer);
	if (c->conn != NULL)
		rpcc_conn_teardown(c->conn, RPC_ECANCELLED, RPC_ECANCELLED);
	rpcc_fail_active(c, RPC_ECANCELLED);
	rpcc_fail_queue(c, RPC_ECANCELLED);
	uv_close((uv_handle_t *)&c->req_timer, on_timer_close);
	uv_close((uv_handle_t *)&c->conn_timer, on_timer_close);
}
