/*
 * The libuv RPC client (sqlite-server/rpc_client.h) against a fake server
 * written here: a thread with blocking sockets on a unix socket that
 * speaks the protocol with rpc_codec and rpc_auth. It answers PINGs out of
 * order (in batches, shuffled), never answers a PING "noreply" (until
 * CANCEL), drops the connection on a PING "drop", stores APPEND bodies
 * (checking that the client never exceeds the window, hashing the body,
 * honouring idempotency keys), and streams FETCH_BODY downloads under the
 * client's WINDOW credit.
 *
 * Every test runs its own loop and closes the client; uv_loop_close()
 * returning 0 checks that every handle was closed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include <sys/stat.h>

#include "config.h"
#include "dir.h"
#include "eng_error.h"
#include "keys.h"
#include "rpc_auth.h"
#include "rpc_client.h"
#include "rpc_codec.h"
#include "rpc_proto.h"
#include "srv.h"
#include "srv_alias.h"
#include "srv_net.h"
#include "testutil.h"

#define MIB (1024u * 1024)
#define BIG_BODY (20u * MIB)

/* ------------------------------------------------------------------ */
/* The fake server                                                     */
/* ------------------------------------------------------------------ */

typedef struct pending_ping {
	uint32_t id;
	uint8_t echo[64];
	size_t echo_len;
} pending_ping;

typedef struct fake {
	char dir[256];
	char path[108];
	int lfd;
	pthread_t th;
	bool started;
	atomic_bool stop;
	uint8_t secret[RPC_SECRET_BYTES];
	/* behaviour, set before start */
	int ping_batch;              /* answer PINGs once this many wait */
	bool batch_only;             /* ... and never when quiet for 20 ms */
	bool lie_in_auth_ok;         /* send a wrong server proof */
	atomic_bool drop_after_store_once;
	/* what happened */
	atomic_int conns;
	atomic_int requests;
	atomic_int cancels;
	atomic_int max_pending;      /* most PINGs waiting at once */
	atomic_int out_of_order;     /* answers sent not in id order */
	atomic_int window_violations;
	atomic_int stored;
	atomic_int dedup;            /* APPENDs answered from the key table */
	atomic_int download_stalls;  /* times the download ran out of credit */
	atomic_int max_chunk;        /* largest upload DATA payload */
	char keys[8][129];
	int n_keys;
} fake;

typedef struct fconn {
	fake *f;
	int fd;
	rpc_reader *rd;
	pending_ping pend[512];
	int n_pend;
	uint32_t noreply[64];
	int n_noreply;
	/* one upload at a time */
	uint32_t up_id;
	uint64_t up_window;
	uint64_t up_bytes;
	uint64_t up_unacked;
	char up_key[129];
	crypto_hash_sha256_state up_hash;
	/* one download at a time */
	uint32_t dl_id;
	uint64_t dl_total;
	uint64_t dl_sent;
	uint64_t dl_window;
	unsigned rng;
} fconn;

static int write_all(int fd, const void *p, size_t len)
{
	const uint8_t *b = p;

	while (len > 0) {
		ssize_t n = send(fd, b, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		b += n;
		len -= (size_t)n;
	}
	return 0;
}

static int fsend(fconn *fc, uint8_t kind, uint8_t flags, uint16_t op,
		 uint32_t id, const void *payload, size_t len)
{
	eng_buf b = ENG_BUF_INIT;
	size_t mark = rpc_frame_begin(&b, kind, flags, op, id);
	int rc;

	eng_buf_append(&b, payload, len);
	rc = rpc_frame_end(&b, mark, NULL);
	if (rc == 0)
		rc = write_all(fc->fd, b.data, b.len);
	eng_buf_free(&b);
	return rc;
}

static int fsend_error(fconn *fc, uint32_t id, int err)
{
	eng_buf p = ENG_BUF_INIT;
	int rc;

	rpc_put_u64(&p, RPC_T_CODE, rpc_err_to_wire(err));
	rpc_put_str(&p, RPC_T_ERROR_TEXT, rpc_strerror(err));
	rc = fsend(fc, RPC_K_ERROR, 0, 0, id, p.data, p.len);
	eng_buf_free(&p);
	return rc;
}

/* Reads one frame with a bounded wait (handshake only). */
static int fread_frame(fconn *fc, rpc_frame *fr, uint8_t *buf, size_t cap,
		       size_t *have, size_t *off)
{
	for (;;) {
		size_t used = 0;
		int rc;

		if (*off < *have) {
			rc = rpc_reader_feed(fc->rd, buf + *off, *have - *off,
					     &used, fr);
			*off += used;
			if (rc != 0)
				return rc;
		}
		struct pollfd pfd = { fc->fd, POLLIN, 0 };
		if (poll(&pfd, 1, 5000) <= 0)
			return -1;
		ssize_t n = recv(fc->fd, buf, cap, 0);
		if (n <= 0)
			return -1;
		*have = (size_t)n;
		*off = 0;
	}
}

static void answer_pings(fconn *fc)
{
	/* Shuffle, then answer: the client must match by id. */
	for (int i = fc->n_pend - 1; i > 0; i--) {
		int j = (int)(rand_r(&fc->rng) % (unsigned)(i + 1));
		pending_ping t = fc->pend[i];

		fc->pend[i] = fc->pend[j];
		fc->pend[j] = t;
	}
	for (int i = 0; i < fc->n_pend; i++) {
		eng_buf p = ENG_BUF_INIT;

		if (i > 0 && fc->pend[i].id < fc->pend[i - 1].id)
			atomic_fetch_add(&fc->f->out_of_order, 1);
		rpc_put_bytes(&p, RPC_T_ECHO, fc->pend[i].echo, fc->pend[i].echo_len);
		fsend(fc, RPC_K_RESPONSE, 0, RPC_OP_PING, fc->pend[i].id, p.data, p.len);
		eng_buf_free(&p);
	}
	fc->n_pend = 0;
}

static uint8_t pattern_byte(uint64_t off)
{
	return (uint8_t)((off * 7) ^ (off >> 11));
}

/* 1: close the connection now. */
static int on_fake_frame(fconn *fc, const rpc_frame *fr)
{
	fake *f = fc->f;
	rpc_msg m = RPC_MSG_INIT;
	rpc_view v;
	const uint8_t *p;
	size_t n;
	uint64_t u;
	int ret = 0;

	if (fr->kind != RPC_K_DATA &&
	    rpc_decode(fr->payload, fr->payload_len, NULL, &m, &v) != 0) {
		rpc_msg_clear(&m);
		return 1;
	}
	switch (fr->kind) {
	case RPC_K_REQUEST:
		atomic_fetch_add(&f->requests, 1);
		if (fr->opcode == RPC_OP_PING) {
			if (rpc_get_bytes(&v, RPC_T_ECHO, &p, &n) != 0)
				n = 0;
			if (n == 4 && memcmp(p, "drop", 4) == 0) {
				ret = 1;
			} else if (n == 7 && memcmp(p, "noreply", 7) == 0) {
				fc->noreply[fc->n_noreply++] = fr->request_id;
			} else {
				pending_ping *pp = &fc->pend[fc->n_pend++];

				pp->id = fr->request_id;
				pp->echo_len = n < sizeof(pp->echo) ? n : sizeof(pp->echo);
				memcpy(pp->echo, p, pp->echo_len);
				if (fc->n_pend > atomic_load(&f->max_pending))
					atomic_store(&f->max_pending, fc->n_pend);
				if (fc->n_pend >= f->ping_batch)
					answer_pings(fc);
			}
		} else if (fr->opcode == RPC_OP_APPEND && (fr->flags & RPC_F_BODY)) {
			fc->up_id = fr->request_id;
			fc->up_window = RPC_INITIAL_WINDOW_BYTES;
			fc->up_bytes = 0;
			fc->up_unacked = 0;
			fc->up_key[0] = '\0';
			if (rpc_get_bytes(&v, RPC_T_IDEMPOTENCY_KEY, &p, &n) == 0 && n < 129) {
				memcpy(fc->up_key, p, n);
				fc->up_key[n] = '\0';
			}
			crypto_hash_sha256_init(&fc->up_hash);
		} else if (fr->opcode == RPC_OP_FETCH_BODY) {
			eng_buf out = ENG_BUF_INIT;

			if (rpc_get_u64(&v, RPC_T_LENGTH, &u) != 0)
				u = 0;
			fc->dl_id = fr->request_id;
			fc->dl_total = u;
			fc->dl_sent = 0;
			fc->dl_window = RPC_INITIAL_WINDOW_BYTES;
			rpc_put_u64(&out, RPC_T_SIZE, u);
			fsend(fc, RPC_K_RESPONSE, RPC_F_BODY, RPC_OP_FETCH_BODY,
			      fr->request_id, out.data, out.len);
			eng_buf_free(&out);
		} else {
			fsend_error(fc, fr->request_id, RPC_EOPCODE);
		}
		break;
	case RPC_K_DATA:
		if (fr->request_id != fc->up_id || fc->up_id == 0) {
			atomic_fetch_add(&f->window_violations, 1);
			ret = 1;
			break;
		}
		if (fr->payload_len > fc->up_window)
			atomic_fetch_add(&f->window_violations, 1);
		if ((int)fr->payload_len > atomic_load(&f->max_chunk))
			atomic_store(&f->max_chunk, (int)fr->payload_len);
		fc->up_window -= fr->payload_len < fc->up_window ?
			fr->payload_len : fc->up_window;
		fc->up_bytes += fr->payload_len;
		fc->up_unacked += fr->payload_len;
		crypto_hash_sha256_update(&fc->up_hash, fr->payload, fr->payload_len);
		if (fr->flags & RPC_F_END) {
			uint8_t h[32];
			eng_buf out = ENG_BUF_INIT;
			bool seen = false;
			uint32_t id = fc->up_id;

			crypto_hash_sha256_final(&fc->up_hash, h);
			fc->up_id = 0;
			for (int i = 0; i < f->n_keys && fc->up_key[0]; i++)
				seen = seen || strcmp(f->keys[i], fc->up_key) == 0;
			if (seen) {
				atomic_fetch_add(&f->dedup, 1);
			} else {
				atomic_fetch_add(&f->stored, 1);
				if (fc->up_key[0] && f->n_keys < 8)
					strcpy(f->keys[f->n_keys++], fc->up_key);
				if (atomic_exchange(&f->drop_after_store_once, false)) {
					/* Stored, answer lost. */
					ret = 1;
					break;
				}
			}
			rpc_put_u64(&out, RPC_T_SIZE, fc->up_bytes);
			rpc_put_bytes(&out, RPC_T_ECHO, h, sizeof(h));
			rpc_put_u64(&out, RPC_T_UID, 1);
			fsend(fc, RPC_K_RESPONSE, 0, RPC_OP_APPEND, id, out.data, out.len);
			eng_buf_free(&out);
		} else if (fc->up_unacked >= RPC_INITIAL_WINDOW_BYTES / 2) {
			eng_buf out = ENG_BUF_INIT;

			rpc_put_u64(&out, RPC_T_CREDIT, fc->up_unacked);
			fsend(fc, RPC_K_WINDOW, 0, 0, fc->up_id, out.data, out.len);
			eng_buf_free(&out);
			fc->up_window += fc->up_unacked;
			fc->up_unacked = 0;
		}
		break;
	case RPC_K_WINDOW:
		if (rpc_get_u64(&v, RPC_T_CREDIT, &u) == 0 && fr->request_id == fc->dl_id)
			fc->dl_window += u;
		break;
	case RPC_K_CANCEL:
		atomic_fetch_add(&f->cancels, 1);
		for (int i = 0; i < fc->n_noreply; i++) {
			if (fc->noreply[i] == fr->request_id) {
				fc->noreply[i] = fc->noreply[--fc->n_noreply];
				fsend_error(fc, fr->request_id, RPC_ECANCELLED);
			}
		}
		if (fr->request_id == fc->up_id) {
			fc->up_id = 0;
			fsend_error(fc, fr->request_id, RPC_ECANCELLED);
		}
		if (fr->request_id == fc->dl_id) {
			fc->dl_id = 0;
			fsend_error(fc, fr->request_id, RPC_ECANCELLED);
		}
		break;
	default:
		ret = 1;
		break;
	}
	rpc_msg_clear(&m);
	return ret;
}

/* Sends one chunk of the current download if the window allows. */
static void fake_download_step(fconn *fc)
{
	uint8_t chunk[64 * 1024];
	uint64_t n = fc->dl_total - fc->dl_sent;
	bool end;

	if (fc->dl_id == 0)
		return;
	if (n > sizeof(chunk))
		n = sizeof(chunk);
	if (n > fc->dl_window)
		n = fc->dl_window;
	end = fc->dl_sent + n == fc->dl_total;
	if (n == 0 && !end)
		return;             /* out of window: wait for WINDOW */
	for (uint64_t i = 0; i < n; i++)
		chunk[i] = pattern_byte(fc->dl_sent + i);
	fsend(fc, RPC_K_DATA, end ? RPC_F_END : 0, 0, fc->dl_id, chunk, n);
	fc->dl_sent += n;
	fc->dl_window -= n;
	if (end)
		fc->dl_id = 0;
	else if (fc->dl_window == 0)
		atomic_fetch_add(&fc->f->download_stalls, 1);
}

static void fake_serve(fake *f, int fd)
{
	fconn *fc = calloc(1, sizeof(*fc));
	uint8_t *buf = malloc(256 * 1024);
	size_t have = 0, off = 0;
	rpc_frame fr;
	rpc_msg m = RPC_MSG_INIT;
	rpc_view v;
	eng_buf p = ENG_BUF_INIT;
	uint8_t sn[32], proof[32];
	const uint8_t *cn, *name, *cp;
	size_t cn_len, name_len, cp_len;
	rpc_limits lim;

	fc->f = f;
	fc->fd = fd;
	fc->rd = rpc_reader_new(NULL);
	fc->rng = 12345;
	/* HELLO */
	rpc_auth_nonce(sn);
	rpc_put_u64(&p, RPC_T_VERSION, 1);
	rpc_put_bytes(&p, RPC_T_NONCE, sn, 32);
	fsend(fc, RPC_K_HELLO, 0, 0, 0, p.data, p.len);
	eng_buf_reset(&p);
	/* AUTH */
	if (fread_frame(fc, &fr, buf, 256 * 1024, &have, &off) != 1 ||
	    fr.kind != RPC_K_AUTH ||
	    rpc_decode(fr.payload, fr.payload_len, NULL, &m, &v) != 0 ||
	    rpc_get_bytes(&v, RPC_T_NONCE, &cn, &cn_len) != 0 || cn_len != 32 ||
	    rpc_get_bytes(&v, RPC_T_PEER_NAME, &name, &name_len) != 0 ||
	    rpc_get_bytes(&v, RPC_T_PROOF, &cp, &cp_len) != 0)
		goto out;
	if (rpc_auth_verify_client(f->secret, sn, cn, name, name_len, cp, cp_len) != 0) {
		fsend_error(fc, 0, RPC_ENOTAUTH);
		goto out;
	}
	rpc_auth_server_proof(f->secret, sn, cn, name, name_len, proof);
	if (f->lie_in_auth_ok)
		proof[0] ^= 1;
	rpc_put_bytes(&p, RPC_T_PROOF, proof, 32);
	rpc_put_u64(&p, RPC_T_MAX_FRAME, RPC_MAX_FRAME_BYTES);
	rpc_put_u64(&p, RPC_T_MAX_IN_FLIGHT, 256);
	fsend(fc, RPC_K_AUTH_OK, 0, 0, 0, p.data, p.len);
	rpc_limits_default(&lim);
	rpc_reader_set_limits(fc->rd, &lim);

	for (;;) {
		struct pollfd pfd = { fd, POLLIN, 0 };
		bool can_send = fc->dl_id != 0 && fc->dl_window > 0;
		int pr;

		if (atomic_load(&f->stop))
			break;
		pr = poll(&pfd, 1, can_send ? 0 : 20);
		if (pr < 0)
			break;
		if (pr == 0) {
			/* Quiet: answer what waits. */
			if (fc->n_pend > 0 && !f->batch_only)
				answer_pings(fc);
			fake_download_step(fc);
			continue;
		}
		ssize_t n = recv(fd, buf, 256 * 1024, 0);
		if (n <= 0)
			break;
		off = 0;
		while (off < (size_t)n) {
			size_t used = 0;
			int rc = rpc_reader_feed(fc->rd, buf + off, (size_t)n - off,
						 &used, &fr);

			off += used;
			if (rc < 0)
				goto out;
			if (rc == 0)
				break;
			if (on_fake_frame(fc, &fr) != 0)
				goto out;
		}
		fake_download_step(fc);
	}
out:
	rpc_msg_clear(&m);
	eng_buf_free(&p);
	rpc_reader_free(&fc->rd);
	close(fd);
	free(buf);
	free(fc);
}

static void *fake_thread(void *arg)
{
	fake *f = arg;

	while (!atomic_load(&f->stop)) {
		struct pollfd pfd = { f->lfd, POLLIN, 0 };

		if (poll(&pfd, 1, 20) <= 0)
			continue;
		int fd = accept(f->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		atomic_fetch_add(&f->conns, 1);
		fake_serve(f, fd);
	}
	return NULL;
}

static void fake_init(fake *f, const uint8_t secret[32])
{
	char *tdir = tu_tmpdir();

	memset(f, 0, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "%s", tdir);
	snprintf(f->path, sizeof(f->path), "%s/s", tdir);
	free(tdir);
	memcpy(f->secret, secret, 32);
	f->ping_batch = 1;
	f->lfd = -1;
}

static void fake_start(fake *f)
{
	struct sockaddr_un sa;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->path);
	f->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(f->lfd >= 0);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(f->lfd, 8), 0);
	assert_int_equal(pthread_create(&f->th, NULL, fake_thread, f), 0);
	f->started = true;
}

static void fake_stop(fake *f)
{
	if (f->started) {
		atomic_store(&f->stop, true);
		pthread_join(f->th, NULL);
		close(f->lfd);
		f->started = false;
	}
	tu_rmrf(f->dir);
}

/* ------------------------------------------------------------------ */
/* Client side helpers                                                 */
/* ------------------------------------------------------------------ */

static const uint8_t secret_a[32] = "0123456789abcdef0123456789abcdef";
static const uint8_t secret_b[32] = "fedcba9876543210fedcba9876543210";

typedef struct env {
	uv_loop_t loop;
	uv_timer_t watchdog;
	bool expired;
	rpc_client *c;
	int ups, downs;
	int last_down_err;
	bool closed;
} env;

static void on_state(void *ctx, bool up, int err)
{
	env *e = ctx;

	if (up) {
		e->ups++;
	} else {
		e->downs++;
		e->last_down_err = err;
	}
}

static void on_watchdog(uv_timer_t *t)
{
	env *e = t->data;

	e->expired = true;
}

/* Runs the loop until cond holds; fails the test after ms. */
#define RUN_UNTIL(e, cond, ms) do { \
	(e)->expired = false; \
	uv_timer_start(&(e)->watchdog, on_watchdog, (ms), 0); \
	while (!(cond) && !(e)->expired) \
		uv_run(&(e)->loop, UV_RUN_ONCE); \
	uv_timer_stop(&(e)->watchdog); \
	assert_true(cond); \
} while (0)

/* Runs the loop for ms. */
static void run_for(env *e, uint64_t ms)
{
	e->expired = false;
	uv_timer_start(&e->watchdog, on_watchdog, ms, 0);
	while (!e->expired)
		uv_run(&e->loop, UV_RUN_ONCE);
}

static void env_open(env *e, const fake *f, const uint8_t *secret,
		     rpc_client_config *cfg_in)
{
	rpc_client_config cfg;

	memset(e, 0, sizeof(*e));
	assert_int_equal(uv_loop_init(&e->loop), 0);
	uv_timer_init(&e->loop, &e->watchdog);
	e->watchdog.data = e;
	if (cfg_in != NULL)
		cfg = *cfg_in;
	else
		memset(&cfg, 0, sizeof(cfg));
	cfg.unix_path = f->path;
	cfg.secret = secret;
	cfg.peer_name = "test@client";
	cfg.on_state = on_state;
	cfg.state_ctx = e;
	if (cfg.backoff_min_ms == 0)
		cfg.backoff_min_ms = 20;
	if (cfg.backoff_max_ms == 0)
		cfg.backoff_max_ms = 200;
	assert_int_equal(rpc_client_new(&e->loop, &cfg, &e->c), 0);
}

static void on_closed(void *ctx)
{
	env *e = ctx;

	e->closed = true;
}

static void watchdog_closed(uv_handle_t *h)
{
	(void)h;
}

static void env_close(env *e)
{
	rpc_client_close(e->c, on_closed, e);
	e->c = NULL;
	RUN_UNTIL(e, e->closed, 5000);
	uv_close((uv_handle_t *)&e->watchdog, watchdog_closed);
	uv_run(&e->loop, UV_RUN_DEFAULT);
	/* Every handle closed, nothing left behind. */
	assert_int_equal(uv_loop_close(&e->loop), 0);
}

typedef struct result {
	int calls;
	int err;
	uint8_t echo[64];
	size_t echo_len;
	uint64_t size;
	uint8_t hash[32];
	bool has_hash;
} result;

static void on_result(void *ctx, int err, const rpc_view *resp)
{
	result *r = ctx;
	const uint8_t *p;
	size_t n;

	r->calls++;
	r->err = err;
	if (err != 0) {
		assert_null(resp);
		return;
	}
	assert_non_null(resp);
	if (rpc_get_bytes(resp, RPC_T_ECHO, &p, &n) == 0) {
		r->echo_len = n < sizeof(r->echo) ? n : sizeof(r->echo);
		memcpy(r->echo, p, r->echo_len);
		if (n == 32) {
			memcpy(r->hash, p, 32);
			r->has_hash = true;
		}
	}
	(void)rpc_get_u64(resp, RPC_T_SIZE, &r->size);
}

static int total_calls(const result *r, int n)
{
	int sum = 0;

	for (int i = 0; i < n; i++)
		sum += r[i].calls;
	return sum;
}

static int ping(env *e, const char *echo, uint32_t timeout_ms, result *r,
		uint32_t *id_r)
{
	eng_buf p = ENG_BUF_INIT;
	int rc;

	rpc_put_str(&p, RPC_T_ECHO, echo);
	rc = rpc_client_call(e->c, RPC_OP_PING, p.data, p.len, timeout_ms,
			     on_result, r, id_r);
	eng_buf_free(&p);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */
/* ------------------------------------------------------------------ */

static void test_handshake_ok(void **state)
{
	fake f;
	env e;
	result r = { 0 };

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	/* Made before the connection is up: queued, then sent. */
	assert_int_equal(ping(&e, "hello", 0, &r, NULL), 0);
	assert_false(rpc_client_connected(e.c));
	RUN_UNTIL(&e, r.calls == 1, 5000);
	assert_int_equal(r.err, 0);
	assert_int_equal(r.echo_len, 5);
	assert_memory_equal(r.echo, "hello", 5);
	assert_true(rpc_client_connected(e.c));
	assert_int_equal(e.ups, 1);
	assert_int_equal(e.downs, 0);
	assert_int_equal(rpc_client_in_flight(e.c), 0);
	env_close(&e);
	assert_int_equal(r.calls, 1);
	fake_stop(&f);
}

static void test_wrong_secret(void **state)
{
	fake f;
	env e;
	result r = { 0 };

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_b, NULL);
	assert_int_equal(ping(&e, "x", 5000, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 5000);
	/* Waiting cannot help: the queued request fails at once. */
	assert_int_equal(r.err, RPC_ENOTAUTH);
	assert_true(e.downs >= 1);
	assert_int_equal(e.last_down_err, RPC_ENOTAUTH);
	assert_int_equal(e.ups, 0);
	assert_false(rpc_client_connected(e.c));
	assert_int_equal(atomic_load(&f.requests), 0);
	env_close(&e);
	fake_stop(&f);
}

static void test_bad_server_proof(void **state)
{
	fake f;
	env e;
	result r = { 0 };

	(void)state;
	fake_init(&f, secret_a);
	f.lie_in_auth_ok = true;
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	assert_int_equal(ping(&e, "x", 5000, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 5000);
	assert_int_equal(r.err, RPC_ENOTAUTH);
	assert_int_equal(e.ups, 0);
	/* A server that cannot prove the secret gets no request. */
	run_for(&e, 100);
	assert_int_equal(atomic_load(&f.requests), 0);
	env_close(&e);
	fake_stop(&f);
}

#define N_PIPE 200

static void test_pipelined_out_of_order(void **state)
{
	fake f;
	env e;
	result *r = calloc(N_PIPE, sizeof(*r));
	int done = 0;

	(void)state;
	fake_init(&f, secret_a);
	f.ping_batch = N_PIPE;
	/* A client descheduled for 20 ms while it sends must not split the
	 * batch (max_pending would be less than N_PIPE). */
	f.batch_only = true;
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	for (int i = 0; i < N_PIPE; i++) {
		char echo[32];

		snprintf(echo, sizeof(echo), "ping-%d", i);
		assert_int_equal(ping(&e, echo, 0, &r[i], NULL), 0);
	}
	RUN_UNTIL(&e, (done = total_calls(r, N_PIPE)) == N_PIPE, 10000);
	for (int i = 0; i < N_PIPE; i++) {
		char echo[32];

		snprintf(echo, sizeof(echo), "ping-%d", i);
		assert_int_equal(r[i].calls, 1);
		assert_int_equal(r[i].err, 0);
		assert_int_equal(r[i].echo_len, strlen(echo));
		assert_memory_equal(r[i].echo, echo, strlen(echo));
	}
	/* All 200 were in flight at once, and answered out of order. */
	assert_int_equal(atomic_load(&f.max_pending), N_PIPE);
	assert_true(atomic_load(&f.out_of_order) > 0);
	assert_int_equal(rpc_client_in_flight(e.c), 0);
	env_close(&e);
	fake_stop(&f);
	free(r);
}

static void test_in_flight_limit(void **state)
{
	fake f;
	env e;
	rpc_client_config cfg;
	result r[10];
	int done;

	(void)state;
	memset(r, 0, sizeof(r));
	memset(&cfg, 0, sizeof(cfg));
	cfg.max_in_flight = 3;
	cfg.max_queued = 7;
	fake_init(&f, secret_a);
	f.ping_batch = 1000;         /* answered when the server is idle */
	fake_start(&f);
	env_open(&e, &f, secret_a, &cfg);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	for (int i = 0; i < 10; i++)
		assert_int_equal(ping(&e, "q", 0, &r[i], NULL), 0);
	assert_int_equal(rpc_client_in_flight(e.c), 3);
	assert_int_equal(rpc_client_queued(e.c), 7);
	/* The queue is full: fail fast, no callback. */
	{
		result extra = { 0 };

		assert_int_equal(ping(&e, "q", 0, &extra, NULL), RPC_EUNAVAILABLE);
		run_for(&e, 10);
		assert_int_equal(extra.calls, 0);
	}
	RUN_UNTIL(&e, (done = total_calls(r, 10)) == 10, 10000);
	assert_true(atomic_load(&f.max_pending) <= 3);
	for (int i = 0; i < 10; i++)
		assert_int_equal(r[i].err, 0);
	env_close(&e);
	fake_stop(&f);
}

/* A PING that may wait long at the server (as a login's UNLOCK). */
static int ping_may_wait(env *e, const char *echo, result *r)
{
	rpc_client_opts o;
	eng_buf p = ENG_BUF_INIT;
	int rc;

	memset(&o, 0, sizeof(o));
	o.may_wait = true;
	rpc_put_str(&p, RPC_T_ECHO, echo);
	rc = rpc_client_call_ex(e->c, RPC_OP_PING, p.data, p.len, &o, on_result,
				r, NULL);
	eng_buf_free(&p);
	return rc;
}

/*
 * may_wait requests hold at most half of the in-flight slots: the others
 * are sent past the ones queued, and the held ones go, in order, as slots
 * free up.
 */
static void test_may_wait_half_of_in_flight(void **state)
{
	fake f;
	env e;
	rpc_client_config cfg;
	result w[4], n[2];

	(void)state;
	memset(w, 0, sizeof(w));
	memset(n, 0, sizeof(n));
	memset(&cfg, 0, sizeof(cfg));
	cfg.max_in_flight = 4;
	fake_init(&f, secret_a);
	f.ping_batch = 3;            /* answered when three wait at the server */
	fake_start(&f);
	env_open(&e, &f, secret_a, &cfg);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	for (int i = 0; i < 4; i++)
		assert_int_equal(ping_may_wait(&e, "login", &w[i]), 0);
	/* Two sent (half of 4), two held. */
	assert_int_equal(rpc_client_in_flight(e.c), 2);
	assert_int_equal(rpc_client_queued(e.c), 2);
	/* An ordinary request is sent past the held ones: the server then
	 * has three and answers them. */
	assert_int_equal(ping(&e, "other", 0, &n[0], NULL), 0);
	assert_int_equal(rpc_client_queued(e.c), 2);
	RUN_UNTIL(&e, n[0].calls == 1 && w[0].calls == 1 && w[1].calls == 1, 5000);
	assert_int_equal(n[0].err, 0);
	/* The two held ones went next; one more ordinary request and the
	 * server answers those three too. */
	RUN_UNTIL(&e, rpc_client_queued(e.c) == 0, 5000);
	assert_int_equal(w[2].calls + w[3].calls, 0);
	assert_int_equal(ping(&e, "other", 0, &n[1], NULL), 0);
	RUN_UNTIL(&e, total_calls(w, 4) == 4 && n[1].calls == 1, 5000);
	for (int i = 0; i < 4; i++)
		assert_int_equal(w[i].err, 0);
	assert_true(atomic_load(&f.max_pending) <= 3);
	assert_int_equal(rpc_client_in_flight(e.c), 0);
	env_close(&e);
	fake_stop(&f);
}

static void test_timeout(void **state)
{
	fake f;
	env e;
	result r = { 0 }, r2 = { 0 };

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	assert_int_equal(ping(&e, "noreply", 150, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 3000);
	assert_int_equal(r.err, RPC_ETIMEOUT);
	/* CANCEL went out; the server's late ECANCELLED is dropped. */
	RUN_UNTIL(&e, rpc_client_in_flight(e.c) == 0, 3000);
	assert_int_equal(atomic_load(&f.cancels), 1);
	run_for(&e, 100);
	assert_int_equal(r.calls, 1);
	/* The connection is still good. */
	assert_int_equal(ping(&e, "after", 0, &r2, NULL), 0);
	RUN_UNTIL(&e, r2.calls == 1, 3000);
	assert_int_equal(r2.err, 0);
	assert_int_equal(e.downs, 0);
	env_close(&e);
	fake_stop(&f);
}

static void test_cancel(void **state)
{
	fake f;
	env e;
	result r = { 0 }, r2 = { 0 };
	uint32_t id = 0;

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	assert_int_equal(ping(&e, "noreply", 0, &r, &id), 0);
	assert_true(id != 0);
	run_for(&e, 30);
	assert_int_equal(r.calls, 0);
	assert_int_equal(rpc_client_cancel(e.c, id), 0);
	/* The callback fired before cancel returned, exactly once. */
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, RPC_ECANCELLED);
	assert_int_equal(rpc_client_cancel(e.c, id), ENG_ENOTFOUND);
	RUN_UNTIL(&e, rpc_client_in_flight(e.c) == 0, 3000);
	assert_int_equal(atomic_load(&f.cancels), 1);
	assert_int_equal(r.calls, 1);
	/* A queued request (not yet sent) cancels locally. */
	rpc_client_close(e.c, on_closed, &e);
	e.c = NULL;
	RUN_UNTIL(&e, e.closed, 5000);
	uv_close((uv_handle_t *)&e.watchdog, watchdog_closed);
	uv_run(&e.loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&e.loop), 0);

	env_open(&e, &f, secret_a, NULL);
	assert_int_equal(ping(&e, "q", 0, &r2, &id), 0);
	assert_int_equal(rpc_client_cancel(e.c, id), 0);
	assert_int_equal(r2.calls, 1);
	assert_int_equal(r2.err, RPC_ECANCELLED);
	env_close(&e);
	fake_stop(&f);
}

static void test_drop_and_reconnect(void **state)
{
	fake f;
	env e;
	result r[5], rd = { 0 }, after = { 0 };

	(void)state;
	memset(r, 0, sizeof(r));
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	for (int i = 0; i < 5; i++)
		assert_int_equal(ping(&e, "noreply", 0, &r[i], NULL), 0);
	assert_int_equal(ping(&e, "drop", 0, &rd, NULL), 0);
	RUN_UNTIL(&e, rd.calls == 1, 5000);
	/* Every request in flight is told, none is lost. */
	assert_int_equal(rd.err, RPC_EUNAVAILABLE);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(r[i].calls, 1);
		assert_int_equal(r[i].err, RPC_EUNAVAILABLE);
	}
	assert_int_equal(e.downs, 1);
	assert_int_equal(e.last_down_err, RPC_EUNAVAILABLE);
	/* Reconnects by itself; calls work again. */
	RUN_UNTIL(&e, e.ups == 2, 5000);
	assert_int_equal(atomic_load(&f.conns), 2);
	assert_int_equal(ping(&e, "again", 0, &after, NULL), 0);
	RUN_UNTIL(&e, after.calls == 1, 5000);
	assert_int_equal(after.err, 0);
	assert_memory_equal(after.echo, "again", 5);
	env_close(&e);
	fake_stop(&f);
}

static void test_queue_while_down(void **state)
{
	fake f;
	env e;
	result r = { 0 }, late = { 0 };

	(void)state;
	fake_init(&f, secret_a);
	/* No server yet: connects fail, the client backs off and retries. */
	env_open(&e, &f, secret_a, NULL);
	assert_int_equal(ping(&e, "waited", 5000, &r, NULL), 0);
	assert_int_equal(ping(&e, "late", 100, &late, NULL), 0);
	run_for(&e, 300);
	assert_true(e.downs >= 2);
	assert_int_equal(r.calls, 0);
	/* The short one timed out in the queue. */
	assert_int_equal(late.calls, 1);
	assert_int_equal(late.err, RPC_ETIMEOUT);
	fake_start(&f);
	RUN_UNTIL(&e, r.calls == 1, 5000);
	assert_int_equal(r.err, 0);
	assert_memory_equal(r.echo, "waited", 6);
	env_close(&e);
	fake_stop(&f);
}

/* ---- upload ---- */

typedef struct src {
	uint64_t total;
	uint64_t off;
	crypto_hash_sha256_state h;
	size_t max_len;
	size_t max_wq;
	int calls;
	rpc_client *c;
	bool fail;
} src;

static long src_read(void *ctx, uint8_t *buf, size_t len)
{
	src *s = ctx;
	size_t n = len;
	size_t wq = rpc_client_write_queue_bytes(s->c);

	s->calls++;
	if (len > s->max_len)
		s->max_len = len;
	if (wq > s->max_wq)
		s->max_wq = wq;
	if (s->fail && s->off > MIB)
		return ENG_EIO;
	if (n > s->total - s->off)
		n = (size_t)(s->total - s->off);
	for (size_t i = 0; i < n; i++)
		buf[i] = pattern_byte(s->off + i);
	crypto_hash_sha256_update(&s->h, buf, n);
	s->off += n;
	return (long)n;
}

static void test_upload_source(void **state)
{
	fake f;
	env e;
	result r = { 0 };
	src s;
	rpc_client_opts o;
	eng_buf p = ENG_BUF_INIT;
	uint8_t h[32];

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	memset(&s, 0, sizeof(s));
	s.total = BIG_BODY;
	s.c = e.c;
	crypto_hash_sha256_init(&s.h);
	memset(&o, 0, sizeof(o));
	o.has_body = true;
	o.source = src_read;
	o.source_ctx = &s;
	o.timeout_ms = 50000;
	rpc_put_str(&p, RPC_T_MAILBOX, "INBOX");
	rpc_put_u64(&p, RPC_T_SIZE, BIG_BODY);
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_APPEND, p.data, p.len,
					    &o, on_result, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 50000);
	assert_int_equal(r.err, 0);
	assert_int_equal(r.size, BIG_BODY);
	crypto_hash_sha256_final(&s.h, h);
	assert_true(r.has_hash);
	assert_memory_equal(r.hash, h, 32);
	/* Never past the window, never more than a chunk asked for, and
	 * libuv's queue stays bounded: the body was never in memory. */
	assert_int_equal(atomic_load(&f.window_violations), 0);
	assert_true(s.max_len <= RPC_MAX_CHUNK_BYTES);
	assert_true(atomic_load(&f.max_chunk) <= (int)RPC_MAX_CHUNK_BYTES);
	assert_true(s.max_wq <= 2 * MIB);
	assert_true(s.calls >= (int)(BIG_BODY / RPC_MAX_CHUNK_BYTES));
	assert_int_equal(atomic_load(&f.stored), 1);
	eng_buf_free(&p);
	env_close(&e);
	fake_stop(&f);
}

/* A source relaying bytes as they "arrive" (an IMAP APPEND literal): it
 * answers RPC_CLIENT_WAIT until a timer says more came, and must not be
 * asked again before rpc_client_source_ready(). */
typedef struct gated_src {
	src inner;
	bool open;                   /* bytes are available */
	int waits;
	int asked_while_waiting;
	bool waiting;
	uint32_t id;
	uv_timer_t timer;
} gated_src;

static long gated_read(void *ctx, uint8_t *buf, size_t len)
{
	gated_src *g = ctx;
	long n;

	if (g->waiting)
		g->asked_while_waiting++;
	if (g->inner.off == g->inner.total)
		return 0;                    /* the end needs no arrival */
	if (!g->open) {
		g->waits++;
		g->waiting = true;
		return RPC_CLIENT_WAIT;
	}
	/* At most 64 KiB per arrival, then wait for the next one. */
	n = src_read(&g->inner, buf, len < 65536 ? len : 65536);
	if (n > 0)
		g->open = false;
	return n;
}

static void on_gate_timer(uv_timer_t *t)
{
	gated_src *g = t->data;

	g->open = true;
	g->waiting = false;
	/* Known while the body is being sent; once all of it went out, the
	 * answer may already have finished the request in this loop turn. */
	if (g->id != 0 && g->inner.off < g->inner.total)
		assert_int_equal(rpc_client_source_ready(g->inner.c, g->id), 0);
}

static void test_upload_source_wait(void **state)
{
	fake f;
	env e;
	result r = { 0 };
	gated_src g;
	rpc_client_opts o;
	eng_buf p = ENG_BUF_INIT;
	uint8_t h[32];
	const uint64_t total = 2 * MIB + 12345;

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	memset(&g, 0, sizeof(g));
	g.inner.total = total;
	g.inner.c = e.c;
	crypto_hash_sha256_init(&g.inner.h);
	uv_timer_init(&e.loop, &g.timer);
	g.timer.data = &g;
	memset(&o, 0, sizeof(o));
	o.has_body = true;
	o.source = gated_read;
	o.source_ctx = &g;
	o.timeout_ms = 50000;
	rpc_put_str(&p, RPC_T_MAILBOX, "INBOX");
	rpc_put_u64(&p, RPC_T_SIZE, total);
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_APPEND, p.data, p.len,
					    &o, on_result, &r, &g.id), 0);
	uv_timer_start(&g.timer, on_gate_timer, 1, 1);
	RUN_UNTIL(&e, r.calls == 1, 50000);
	uv_timer_stop(&g.timer);
	assert_int_equal(r.err, 0);
	assert_int_equal(r.size, total);
	crypto_hash_sha256_final(&g.inner.h, h);
	assert_true(r.has_hash);
	assert_memory_equal(r.hash, h, 32);
	/* It waited between arrivals and was never asked while waiting. */
	assert_true(g.waits > 0);
	assert_int_equal(g.asked_while_waiting, 0);
	/* A finished id is not an upload any more. */
	assert_int_equal(rpc_client_source_ready(e.c, g.id), ENG_ENOTFOUND);
	uv_close((uv_handle_t *)&g.timer, NULL);
	eng_buf_free(&p);
	env_close(&e);
	fake_stop(&f);
}

static void test_upload_source_abort(void **state)
{
	fake f;
	env e;
	result r = { 0 }, r2 = { 0 };
	src s;
	rpc_client_opts o;
	eng_buf p = ENG_BUF_INIT;

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	memset(&s, 0, sizeof(s));
	s.total = 4 * MIB;
	s.c = e.c;
	s.fail = true;
	crypto_hash_sha256_init(&s.h);
	memset(&o, 0, sizeof(o));
	o.has_body = true;
	o.source = src_read;
	o.source_ctx = &s;
	rpc_put_u64(&p, RPC_T_SIZE, s.total);
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_APPEND, p.data, p.len,
					    &o, on_result, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 10000);
	assert_int_equal(r.err, ENG_EIO);
	/* Cancelled on the server: nothing stored, the id is released. */
	RUN_UNTIL(&e, rpc_client_in_flight(e.c) == 0, 5000);
	assert_int_equal(atomic_load(&f.cancels), 1);
	assert_int_equal(atomic_load(&f.stored), 0);
	assert_int_equal(ping(&e, "ok", 0, &r2, NULL), 0);
	RUN_UNTIL(&e, r2.calls == 1, 5000);
	assert_int_equal(r2.err, 0);
	eng_buf_free(&p);
	env_close(&e);
	fake_stop(&f);
}

static void test_retry_idempotent(void **state)
{
	fake f;
	env e;
	result r = { 0 };
	eng_buf p = ENG_BUF_INIT, nokey = ENG_BUF_INIT;
	char key[RPC_IDEM_KEY_CHARS + 1], key2[RPC_IDEM_KEY_CHARS + 1];
	size_t body_len = 3 * MIB + 17;
	uint8_t *body = malloc(body_len);
	uint8_t h[32];

	(void)state;
	for (size_t i = 0; i < body_len; i++)
		body[i] = pattern_byte(i * 3);
	crypto_hash_sha256(h, body, body_len);
	assert_int_equal(rpc_client_idem_key(key), 0);
	assert_int_equal(rpc_client_idem_key(key2), 0);
	assert_int_equal(strlen(key), RPC_IDEM_KEY_CHARS);
	assert_true(strcmp(key, key2) != 0);
	for (size_t i = 0; i < RPC_IDEM_KEY_CHARS; i++)
		assert_non_null(strchr("0123456789abcdef", key[i]));

	fake_init(&f, secret_a);
	atomic_store(&f.drop_after_store_once, true);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	/* Retries of an APPEND without a key could store twice: refused. */
	rpc_put_u64(&nokey, RPC_T_SIZE, body_len);
	assert_int_equal(rpc_client_call_retry(e.c, RPC_OP_APPEND, nokey.data,
					       nokey.len, body, body_len, 2,
					       on_result, &r, NULL), ENG_EINVAL);
	rpc_put_u64(&p, RPC_T_SIZE, body_len);
	rpc_put_str(&p, RPC_T_IDEMPOTENCY_KEY, key);
	assert_int_equal(rpc_client_call_retry(e.c, RPC_OP_APPEND, p.data, p.len,
					       body, body_len, 2, on_result, &r,
					       NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 20000);
	/* The first attempt was stored and its answer lost with the
	 * connection; the resend with the same key stored nothing new. */
	assert_int_equal(r.err, 0);
	assert_true(r.has_hash);
	assert_memory_equal(r.hash, h, 32);
	assert_int_equal(atomic_load(&f.conns), 2);
	assert_int_equal(atomic_load(&f.stored), 1);
	assert_int_equal(atomic_load(&f.dedup), 1);
	assert_int_equal(e.downs, 1);
	run_for(&e, 50);
	assert_int_equal(r.calls, 1);
	eng_buf_free(&p);
	eng_buf_free(&nokey);
	env_close(&e);
	fake_stop(&f);
	free(body);
}

/* ---- download ---- */

typedef struct sink {
	env *e;
	uint32_t id;
	uint64_t got;
	uint64_t held;
	uint64_t max_held;
	uint64_t size_head;
	int pauses;
	bool end;
	bool bad_byte;
	int after_end_calls;
	uv_timer_t resume;
} sink;

static void on_resume(uv_timer_t *t)
{
	sink *s = t->data;
	uint64_t n = s->held;

	s->held = 0;
	/* After the last chunk the request is over: ENOTFOUND, harmless. */
	if (n != 0)
		assert_int_equal(rpc_client_consumed(s->e->c, s->id, (size_t)n),
				 s->end ? ENG_ENOTFOUND : 0);
}

static int sink_data(void *ctx, uint32_t id, const rpc_view *head,
		     const uint8_t *data, size_t len, bool end)
{
	sink *s = ctx;
	uint64_t size = 0;

	if (s->end)
		s->after_end_calls++;
	s->id = id;
	if (rpc_get_u64(head, RPC_T_SIZE, &size) == 0)
		s->size_head = size;
	for (size_t i = 0; i < len; i++) {
		if (data[i] != pattern_byte(s->got + i))
			s->bad_byte = true;
	}
	s->got += len;
	s->end = end;
	/* Every chunk is held; a timer consumes them a little later, so
	 * the server runs out of window again and again. */
	s->held += len;
	if (s->held > s->max_held)
		s->max_held = s->held;
	if (s->held >= 192 * 1024 && !uv_is_active((uv_handle_t *)&s->resume)) {
		s->pauses++;
		uv_timer_start(&s->resume, on_resume, 2, 0);
	}
	return RPC_CLIENT_HOLD;
}

static void test_download_backpressure(void **state)
{
	fake f;
	env e;
	result r = { 0 };
	sink s;
	rpc_client_opts o;
	eng_buf p = ENG_BUF_INIT;

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	memset(&s, 0, sizeof(s));
	s.e = &e;
	uv_timer_init(&e.loop, &s.resume);
	s.resume.data = &s;
	memset(&o, 0, sizeof(o));
	o.data = sink_data;
	o.data_ctx = &s;
	o.timeout_ms = 50000;
	rpc_put_u64(&p, RPC_T_UID, 1);
	rpc_put_u64(&p, RPC_T_WANT, RPC_WANT_BODY);
	rpc_put_u64(&p, RPC_T_LENGTH, BIG_BODY);
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_FETCH_BODY, p.data, p.len,
					    &o, on_result, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 50000);
	assert_int_equal(r.err, 0);
	assert_true(s.end);
	assert_int_equal(s.got, BIG_BODY);
	assert_int_equal(s.size_head, BIG_BODY);
	assert_int_equal(r.size, BIG_BODY);
	assert_false(s.bad_byte);
	assert_int_equal(s.after_end_calls, 0);
	/* Unconsumed bytes never passed one window: the server waited. */
	assert_true(s.max_held <= RPC_INITIAL_WINDOW_BYTES);
	assert_true(s.pauses > 10);
	assert_true(atomic_load(&f.download_stalls) > 10);
	uv_close((uv_handle_t *)&s.resume, watchdog_closed);
	eng_buf_free(&p);
	env_close(&e);
	fake_stop(&f);
}

/* A data callback that gives up: the request is cancelled. */
static int sink_abort(void *ctx, uint32_t id, const rpc_view *head,
		      const uint8_t *data, size_t len, bool end)
{
	int *calls = ctx;

	(void)id;
	(void)head;
	(void)data;
	(void)len;
	(void)end;
	(*calls)++;
	return ENG_ELIMIT;
}

static void test_download_abort(void **state)
{
	fake f;
	env e;
	result r = { 0 }, r2 = { 0 };
	int calls = 0;
	rpc_client_opts o;
	eng_buf p = ENG_BUF_INIT;

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	memset(&o, 0, sizeof(o));
	o.data = sink_abort;
	o.data_ctx = &calls;
	rpc_put_u64(&p, RPC_T_LENGTH, 4 * MIB);
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_FETCH_BODY, p.data, p.len,
					    &o, on_result, &r, NULL), 0);
	RUN_UNTIL(&e, r.calls == 1, 10000);
	assert_int_equal(r.err, ENG_ELIMIT);
	assert_int_equal(calls, 1);
	RUN_UNTIL(&e, rpc_client_in_flight(e.c) == 0, 5000);
	assert_int_equal(atomic_load(&f.cancels), 1);
	assert_int_equal(calls, 1);
	/* The connection survived. */
	assert_int_equal(ping(&e, "ok", 0, &r2, NULL), 0);
	RUN_UNTIL(&e, r2.calls == 1, 5000);
	assert_int_equal(r2.err, 0);
	assert_int_equal(e.downs, 0);
	eng_buf_free(&p);
	env_close(&e);
	fake_stop(&f);
}

/* Closing from inside a callback, with other requests still waiting. */
typedef struct closer {
	env *e;
	int calls;
	int err;
} closer;

static void on_result_close(void *ctx, int err, const rpc_view *resp)
{
	closer *cl = ctx;

	(void)resp;
	cl->calls++;
	cl->err = err;
	rpc_client_close(cl->e->c, on_closed, cl->e);
}

static void test_close_in_callback(void **state)
{
	fake f;
	env e;
	closer cl;
	result r[3];
	eng_buf p = ENG_BUF_INIT;

	(void)state;
	memset(r, 0, sizeof(r));
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	cl.e = &e;
	cl.calls = 0;
	RUN_UNTIL(&e, rpc_client_connected(e.c), 5000);
	for (int i = 0; i < 3; i++)
		assert_int_equal(ping(&e, "noreply", 0, &r[i], NULL), 0);
	rpc_put_str(&p, RPC_T_ECHO, "x");
	assert_int_equal(rpc_client_call(e.c, RPC_OP_PING, p.data, p.len, 0,
					 on_result_close, &cl, NULL), 0);
	RUN_UNTIL(&e, e.closed, 5000);
	assert_int_equal(cl.calls, 1);
	assert_int_equal(cl.err, 0);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(r[i].calls, 1);
		assert_int_equal(r[i].err, RPC_ECANCELLED);
	}
	uv_close((uv_handle_t *)&e.watchdog, watchdog_closed);
	uv_run(&e.loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&e.loop), 0);
	eng_buf_free(&p);
	fake_stop(&f);
}

/* Closing the client from inside a data callback (the request is pinned). */
static int sink_close(void *ctx, uint32_t id, const rpc_view *head,
		      const uint8_t *data, size_t len, bool end)
{
	env *e = ctx;

	(void)id;
	(void)head;
	(void)data;
	(void)len;
	(void)end;
	rpc_client_close(e->c, on_closed, e);
	return 0;
}

static void test_close_in_data_callback(void **state)
{
	fake f;
	env e;
	result r = { 0 };
	rpc_client_opts o;
	eng_buf p = ENG_BUF_INIT;

	(void)state;
	fake_init(&f, secret_a);
	fake_start(&f);
	env_open(&e, &f, secret_a, NULL);
	memset(&o, 0, sizeof(o));
	o.data = sink_close;
	o.data_ctx = &e;
	rpc_put_u64(&p, RPC_T_LENGTH, 2 * MIB);
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_FETCH_BODY, p.data, p.len,
					    &o, on_result, &r, NULL), 0);
	RUN_UNTIL(&e, e.closed, 10000);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, RPC_ECANCELLED);
	uv_close((uv_handle_t *)&e.watchdog, watchdog_closed);
	uv_run(&e.loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&e.loop), 0);
	eng_buf_free(&p);
	fake_stop(&f);
}

static void test_config_checks(void **state)
{
	uv_loop_t loop;
	rpc_client_config cfg;
	rpc_client *c = NULL;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	memset(&cfg, 0, sizeof(cfg));
	cfg.secret = secret_a;
	cfg.peer_name = "test@client";
	/* No target, two targets, a bad peer name. */
	assert_int_equal(rpc_client_new(&loop, &cfg, &c), ENG_EINVAL);
	cfg.unix_path = "/tmp/x";
	cfg.host = "127.0.0.1";
	assert_int_equal(rpc_client_new(&loop, &cfg, &c), ENG_EINVAL);
	cfg.host = NULL;
	cfg.peer_name = "has space";
	assert_int_equal(rpc_client_new(&loop, &cfg, &c), ENG_EINVAL);
	cfg.peer_name = "test@client";
	/* Plain TCP to a non-loopback address: AUTH in the clear, refused. */
	cfg.unix_path = NULL;
	cfg.host = "192.0.2.1";
	cfg.port = 3456;
	assert_int_equal(rpc_client_new(&loop, &cfg, &c), ENG_EPERM);
	cfg.host = "example.org";
	assert_int_equal(rpc_client_new(&loop, &cfg, &c), ENG_EINVAL);
	assert_null(c);
	assert_int_equal(uv_loop_close(&loop), 0);
}


/* ------------------------------------------------------------------ */
/* Against the real sqlited core (srv_net), as in test_srv_ops.c: the  */
/* server's loop on a thread of its own, the client on the test's.     */
/* ------------------------------------------------------------------ */

static const eng_kdf_params fast_kdf = { 1, 8192 };
static const char alice_pw[] = "correct horse";

typedef struct real {
	char *dir;
	sm_config *cfg;
	uv_loop_t loop;
	uv_thread_t thread;
	uv_async_t stop;
	srv s;
	int stopped;
} real;

static void real_db_created(void *ctx, int rc)
{
	*(int *)ctx = rc;
}

static void real_aliases_closed(void *ctx)
{
	real *f = ctx;

	srv_events_free(&f->s.events);
	uv_close((uv_handle_t *)&f->stop, NULL);
	f->stopped = 1;
}

static void real_net_stopped(void *ctx)
{
	real *f = ctx;

	srv_aliases_shutdown(f->s.aliases, real_aliases_closed, f);
}

static void real_stop_cb(uv_async_t *a)
{
	real *f = a->data;

	srv_net_stop(&f->s, real_net_stopped, f);
}

static void real_thread(void *arg)
{
	real *f = arg;

	uv_run(&f->loop, UV_RUN_DEFAULT);
}

static real *real_start(void)
{
	real *f = calloc(1, sizeof(*f));
	srv_alias_config acfg;
	srv_net_options opt;
	dir_alias_spec spec = { 0 };
	eng_keyring *kr;
	uint8_t *mk, *blob;
	size_t blob_len;
	char id[DIR_ID_HEX_LEN + 1];
	char *text, tmp[4096];
	int db_rc = 1;

	f->dir = tu_tmpdir();
	text = malloc(strlen(f->dir) + 64);
	sprintf(text, "data_dir = %s\n", f->dir);
	assert_int_equal(sm_config_parse(text, strlen(text), "t.conf", &f->cfg,
					 NULL), 0);
	free(text);
	f->cfg->sqlited_port = 0;
	snprintf(tmp, sizeof(tmp), "%s/tmp", f->dir);
	assert_int_equal(mkdir(tmp, 0700), 0);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	f->s.loop = &f->loop;
	f->s.cfg = f->cfg;
	f->s.kdf = fast_kdf;
	f->s.tmp_dir = strdup(tmp);
	f->s.rpc_secret = eng_secret_new(32);
	randombytes_buf(f->s.rpc_secret, 32);
	srv_alias_config_default(&acfg);
	acfg.data_dir = f->dir;
	acfg.kdf_params = fast_kdf;
	assert_int_equal(srv_aliases_new(&f->loop, &acfg, &f->s.aliases), 0);
	assert_int_equal(dir_open(NULL, f->dir, &f->s.dir), 0);
	/* Nothing listens on port 1: events stay in memory. */
	assert_int_equal(srv_events_new(&f->s, "redis://127.0.0.1:1",
					&f->s.events), 0);
	assert_int_equal(dir_domain_add(f->s.dir, "example.org"), 0);
	assert_int_equal(eng_keyring_create(alice_pw, strlen(alice_pw), fast_kdf,
					    &kr, &mk), 0);
	assert_int_equal(eng_keyring_encode(kr, &blob, &blob_len), 0);
	spec.kind = DIR_MAILBOX;
	spec.keyring = blob;
	spec.keyring_len = blob_len;
	assert_int_equal(dir_alias_add(f->s.dir, "alice@example.org", &spec, id), 0);
	assert_int_equal(srv_alias_create_db(f->s.aliases, id, mk,
					     real_db_created, &db_rc), 0);
	while (db_rc == 1)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(db_rc, 0);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
	free(blob);
	srv_net_options_default(&opt);
	opt.auth_fail_delay_ms = 50;
	assert_int_equal(srv_net_start(&f->s, &opt), 0);
	assert_int_equal(uv_async_init(&f->loop, &f->stop, real_stop_cb), 0);
	f->stop.data = f;
	assert_int_equal(uv_thread_create(&f->thread, real_thread, f), 0);
	return f;
}

static void real_stop(real *f)
{
	uv_async_send(&f->stop);
	uv_thread_join(&f->thread);
	assert_int_equal(f->stopped, 1);
	srv_net_free(&f->s);
	srv_aliases_free(&f->s.aliases);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	dir_close(&f->s.dir);
	eng_secret_free(&f->s.rpc_secret);
	free(f->s.tmp_dir);
	sm_config_free(&f->cfg);
	tu_rmrf(f->dir);
	free(f->dir);
	free(f);
}

static void env_open_real(env *e, real *f, const uint8_t *secret)
{
	fake path_only;

	memset(&path_only, 0, sizeof(path_only));
	snprintf(path_only.path, sizeof(path_only.path), "%s",
		 f->cfg->sqlited_socket);
	env_open(e, &path_only, secret, NULL);
}

/* The answer of an UNLOCK or APPEND, kept for the test. */
typedef struct real_result {
	int calls;
	int err;
	uint8_t session[64];
	size_t session_len;
	uint64_t uid;
	uint64_t size;
} real_result;

static void on_real(void *ctx, int err, const rpc_view *resp)
{
	real_result *r = ctx;
	const uint8_t *p;
	size_t n;

	r->calls++;
	r->err = err;
	if (err != 0)
		return;
	if (rpc_get_bytes(resp, RPC_T_SESSION, &p, &n) == 0 &&
	    n <= sizeof(r->session)) {
		memcpy(r->session, p, n);
		r->session_len = n;
	}
	(void)rpc_get_u64(resp, RPC_T_UID, &r->uid);
	(void)rpc_get_u64(resp, RPC_T_SIZE, &r->size);
}

typedef struct mem_src {
	const uint8_t *p;
	size_t len;
	size_t off;
	int rewinds;
} mem_src;

static long mem_read(void *ctx, uint8_t *buf, size_t len)
{
	mem_src *m = ctx;
	size_t n = m->len - m->off < len ? m->len - m->off : len;

	memcpy(buf, m->p + m->off, n);
	m->off += n;
	return (long)n;
}

static int mem_rewind(void *ctx)
{
	mem_src *m = ctx;

	m->off = 0;
	m->rewinds++;
	return 0;
}

/* Compares a download with the expected bytes, holding every chunk. */
typedef struct cmp_sink {
	env *e;
	const uint8_t *want;
	size_t want_len;
	size_t got;
	size_t held;
	size_t max_held;
	uint32_t id;
	bool mismatch;
	bool end;
	uv_timer_t resume;
} cmp_sink;

static void cmp_resume(uv_timer_t *t)
{
	cmp_sink *s = t->data;
	size_t n = s->held;

	s->held = 0;
	if (n != 0)
		assert_int_equal(rpc_client_consumed(s->e->c, s->id, n),
				 s->end ? ENG_ENOTFOUND : 0);
}

static int cmp_data(void *ctx, uint32_t id, const rpc_view *head,
		    const uint8_t *data, size_t len, bool end)
{
	cmp_sink *s = ctx;

	(void)head;
	s->id = id;
	if (s->got + len > s->want_len ||
	    memcmp(s->want + s->got, data, len) != 0)
		s->mismatch = true;
	s->got += len;
	s->end = end;
	s->held += len;
	if (s->held > s->max_held)
		s->max_held = s->held;
	if (!uv_is_active((uv_handle_t *)&s->resume))
		uv_timer_start(&s->resume, cmp_resume, 1, 0);
	return RPC_CLIENT_HOLD;
}

static uint8_t *make_message(size_t target, size_t *len_r)
{
	eng_buf m = ENG_BUF_INIT;

	eng_buf_puts(&m, "From: bob@example.net\r\nTo: alice@example.org\r\n"
		     "Subject: client library test\r\n"
		     "Message-ID: <client@example.net>\r\n"
		     "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
		     "Content-Type: text/plain\r\n\r\n");
	for (unsigned i = 0; m.len < target; i++)
		eng_buf_printf(&m, "line %08u of a long message, to stream in chunks\r\n", i);
	return (uint8_t *)eng_buf_steal(&m, len_r);
}

static void test_real_server(void **state)
{
	real *f;
	env e, bad;
	result pr = { 0 }, pipes[100];
	real_result un = { 0 }, ap = { 0 }, ap2 = { 0 }, fb = { 0 }, wrong = { 0 };
	eng_buf p = ENG_BUF_INIT;
	char key[RPC_IDEM_KEY_CHARS + 1];
	size_t len;
	uint8_t *msg = make_message(3 * MIB, &len);
	mem_src ms = { msg, len, 0, 0 };
	rpc_client_opts o;
	cmp_sink snk;
	int done;

	(void)state;
	memset(pipes, 0, sizeof(pipes));
	f = real_start();
	env_open_real(&e, f, f->s.rpc_secret);

	/* PING, then 100 pipelined. */
	assert_int_equal(ping(&e, "real", 0, &pr, NULL), 0);
	RUN_UNTIL(&e, pr.calls == 1, 10000);
	assert_int_equal(pr.err, 0);
	assert_int_equal(pr.echo_len, 4);
	assert_memory_equal(pr.echo, "real", 4);
	for (int i = 0; i < 100; i++)
		assert_int_equal(ping(&e, i % 2 ? "odd" : "even", 0, &pipes[i], NULL), 0);
	RUN_UNTIL(&e, (done = total_calls(pipes, 100)) == 100, 10000);
	for (int i = 0; i < 100; i++) {
		assert_int_equal(pipes[i].err, 0);
		assert_memory_equal(pipes[i].echo, i % 2 ? "odd" : "even",
				    i % 2 ? 3 : 4);
	}

	/* UNLOCK. */
	rpc_put_str(&p, RPC_T_ALIAS, "alice@example.org");
	rpc_put_str(&p, RPC_T_PASSWORD, alice_pw);
	assert_int_equal(rpc_client_call(e.c, RPC_OP_UNLOCK, p.data, p.len, 20000,
					 on_real, &un, NULL), 0);
	eng_buf_reset(&p);
	RUN_UNTIL(&e, un.calls == 1, 20000);
	assert_int_equal(un.err, 0);
	assert_true(un.session_len > 0);

	/* APPEND of 3 MB through a source, with a key; then the same key
	 * again (a retry after a lost answer): the server stores it once. */
	assert_int_equal(rpc_client_idem_key(key), 0);
	rpc_put_bytes(&p, RPC_T_SESSION, un.session, un.session_len);
	rpc_put_str(&p, RPC_T_MAILBOX, "INBOX");
	rpc_put_u64(&p, RPC_T_SIZE, len);
	rpc_put_str(&p, RPC_T_IDEMPOTENCY_KEY, key);
	memset(&o, 0, sizeof(o));
	o.has_body = true;
	o.source = mem_read;
	o.rewind = mem_rewind;
	o.source_ctx = &ms;
	o.retries = 1;
	/* A guard, not a figure: 3 MB through a real sqlited under ASan on a
	 * starved CPU took over 30 s (RPC_ETIMEOUT) in a loop under load. */
	o.timeout_ms = 120000;
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_APPEND, p.data, p.len,
					    &o, on_real, &ap, NULL), 0);
	RUN_UNTIL(&e, ap.calls == 1, 120000);
	assert_int_equal(ap.err, 0);
	assert_true(ap.uid >= 1);
	assert_int_equal(rpc_client_call_retry(e.c, RPC_OP_APPEND, p.data, p.len,
					       msg, len, 1, on_real, &ap2,
					       NULL), 0);
	RUN_UNTIL(&e, ap2.calls == 1, 30000);
	assert_int_equal(ap2.err, 0);
	assert_int_equal(ap2.uid, ap.uid);
	eng_buf_reset(&p);

	/* FETCH_BODY back, byte for byte, with the snk holding credit. */
	memset(&snk, 0, sizeof(snk));
	snk.e = &e;
	snk.want = msg;
	snk.want_len = len;
	uv_timer_init(&e.loop, &snk.resume);
	snk.resume.data = &snk;
	rpc_put_bytes(&p, RPC_T_SESSION, un.session, un.session_len);
	rpc_put_str(&p, RPC_T_MAILBOX, "INBOX");
	rpc_put_u64(&p, RPC_T_UID, ap.uid);
	rpc_put_u64(&p, RPC_T_WANT, RPC_WANT_BODY);
	memset(&o, 0, sizeof(o));
	o.data = cmp_data;
	o.data_ctx = &snk;
	o.timeout_ms = 30000;
	assert_int_equal(rpc_client_call_ex(e.c, RPC_OP_FETCH_BODY, p.data, p.len,
					    &o, on_real, &fb, NULL), 0);
	eng_buf_reset(&p);
	RUN_UNTIL(&e, fb.calls == 1, 30000);
	assert_int_equal(fb.err, 0);
	assert_int_equal(fb.size, len);
	assert_true(snk.end);
	assert_int_equal(snk.got, len);
	assert_false(snk.mismatch);
	assert_true(snk.max_held <= RPC_INITIAL_WINDOW_BYTES);
	uv_close((uv_handle_t *)&snk.resume, watchdog_closed);

	/* A wrong secret is refused by the real server too. */
	env_open_real(&bad, f, secret_b);
	rpc_put_str(&p, RPC_T_ECHO, "x");
	assert_int_equal(rpc_client_call(bad.c, RPC_OP_PING, p.data, p.len, 10000,
					 on_real, &wrong, NULL), 0);
	RUN_UNTIL(&bad, wrong.calls == 1, 10000);
	assert_int_equal(wrong.err, RPC_ENOTAUTH);
	env_close(&bad);

	env_close(&e);
	real_stop(f);
	eng_buf_free(&p);
	free(msg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_checks),
		cmocka_unit_test(test_handshake_ok),
		cmocka_unit_test(test_wrong_secret),
		cmocka_unit_test(test_bad_server_proof),
		cmocka_unit_test(test_pipelined_out_of_order),
		cmocka_unit_test(test_in_flight_limit),
		cmocka_unit_test(test_may_wait_half_of_in_flight),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_drop_and_reconnect),
		cmocka_unit_test(test_queue_while_down),
		cmocka_unit_test(test_upload_source),
		cmocka_unit_test(test_upload_source_wait),
		cmocka_unit_test(test_upload_source_abort),
		cmocka_unit_test(test_retry_idempotent),
		cmocka_unit_test(test_download_backpressure),
		cmocka_unit_test(test_download_abort),
		cmocka_unit_test(test_close_in_callback),
		cmocka_unit_test(test_close_in_data_callback),
		cmocka_unit_test(test_real_server),
	};

	if (eng_crypto_init() != 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
