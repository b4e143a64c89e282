/*
 * The fake server of the libuv RPC client's tests (sqlite-server/
 * rpc_client.h), and the client side's helpers (testrpc.h): a thread with
 * blocking sockets on a unix socket that speaks the protocol with
 * rpc_codec and rpc_auth. It answers PINGs out of order (in batches,
 * shuffled), never answers a PING "noreply" (until CANCEL), drops the
 * connection on a PING "drop", stores APPEND bodies (checking that the
 * client never exceeds the window, hashing the body, honouring
 * idempotency keys), and streams FETCH_BODY downloads under the client's
 * WINDOW credit. Moved verbatim from test_rpc_client.c; its functions
 * assert (cmocka) rather than return errors.
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
#include "testrpc.h"

/* ------------------------------------------------------------------ */
/* The fake server                                                     */
/* ------------------------------------------------------------------ */

typedef struct pending_ping {
	uint32_t id;
	uint8_t echo[64];
	size_t echo_len;
} pending_ping;

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

uint8_t pattern_byte(uint64_t off)
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

void fake_init(fake *f, const uint8_t secret[32])
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

void fake_start(fake *f)
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

void fake_stop(fake *f)
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

const uint8_t secret_a[32] = "0123456789abcdef0123456789abcdef";
const uint8_t secret_b[32] = "fedcba9876543210fedcba9876543210";

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

void on_watchdog(uv_timer_t *t)
{
	env *e = t->data;

	e->expired = true;
}

/* Runs the loop for ms. */
void run_for(env *e, uint64_t ms)
{
	e->expired = false;
	uv_timer_start(&e->watchdog, on_watchdog, ms, 0);
	while (!e->expired)
		uv_run(&e->loop, UV_RUN_ONCE);
}

/* Opens e's loop and watchdog and a client with cfg, whose state
 * callback counts ups and downs in e; returns rpc_client_new's error
 * (test_rpc_tls's clients, over TCP and TLS, start here too). */
int env_open_cfg(env *e, rpc_client_config *cfg)
{
	memset(e, 0, sizeof(*e));
	assert_int_equal(uv_loop_init(&e->loop), 0);
	uv_timer_init(&e->loop, &e->watchdog);
	e->watchdog.data = e;
	cfg->on_state = on_state;
	cfg->state_ctx = e;
	return rpc_client_new(&e->loop, cfg, &e->c);
}

void env_open(env *e, const fake *f, const uint8_t *secret,
	      rpc_client_config *cfg_in)
{
	rpc_client_config cfg;

	if (cfg_in != NULL)
		cfg = *cfg_in;
	else
		memset(&cfg, 0, sizeof(cfg));
	cfg.unix_path = f->path;
	cfg.secret = secret;
	cfg.peer_name = "test@client";
	if (cfg.backoff_min_ms == 0)
		cfg.backoff_min_ms = 20;
	if (cfg.backoff_max_ms == 0)
		cfg.backoff_max_ms = 200;
	assert_int_equal(env_open_cfg(e, &cfg), 0);
}

void on_closed(void *ctx)
{
	env *e = ctx;

	e->closed = true;
}

void watchdog_closed(uv_handle_t *h)
{
	(void)h;
}

/* Closes the client (if one was made) and the loop. */
void env_close(env *e)
{
	if (e->c != NULL) {
		rpc_client_close(e->c, on_closed, e);
		e->c = NULL;
		RUN_UNTIL(e, e->closed, 5000);
	}
	uv_close((uv_handle_t *)&e->watchdog, watchdog_closed);
	uv_run(&e->loop, UV_RUN_DEFAULT);
	/* Every handle closed, nothing left behind. */
	assert_int_equal(uv_loop_close(&e->loop), 0);
}

/* ---- a download that holds its credit ---- */

static void hold_resume(uv_timer_t *t)
{
	hold_sink *h = t->data;
	uint64_t n = h->held;

	h->held = 0;
	/* After the last chunk the request is over: ENOTFOUND, harmless. */
	if (n != 0)
		assert_int_equal(rpc_client_consumed(h->e->c, h->id, (size_t)n),
				 h->end ? ENG_ENOTFOUND : 0);
}

void hold_sink_init(hold_sink *h, env *e, uint64_t threshold,
		    uint64_t delay_ms)
{
	memset(h, 0, sizeof(*h));
	h->e = e;
	h->threshold = threshold;
	h->delay_ms = delay_ms;
	uv_timer_init(&e->loop, &h->resume);
	h->resume.data = h;
}

int hold_sink_chunk(hold_sink *h, uint32_t id, size_t len, bool end)
{
	h->id = id;
	h->got += len;
	h->end = end;
	h->held += len;
	if (h->held > h->max_held)
		h->max_held = h->held;
	if (h->held >= h->threshold &&
	    !uv_is_active((uv_handle_t *)&h->resume)) {
		h->pauses++;
		uv_timer_start(&h->resume, hold_resume, h->delay_ms, 0);
	}
	return RPC_CLIENT_HOLD;
}

void hold_sink_close(hold_sink *h)
{
	uv_close((uv_handle_t *)&h->resume, watchdog_closed);
}

void on_result(void *ctx, int err, const rpc_view *resp)
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

int total_calls(const result *r, int n)
{
	int sum = 0;

	for (int i = 0; i < n; i++)
		sum += r[i].calls;
	return sum;
}

int ping(env *e, const char *echo, uint32_t timeout_ms, result *r,
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
/* Codec helpers (test_rpc_codec, test_rpc_codec_frames)               */
/* ------------------------------------------------------------------ */

/* Copies into an exact-size allocation so that ASan sees any overread. */
uint8_t *exact_copy(const void *p, size_t len)
{
	uint8_t *c = malloc(len != 0 ? len : 1);

	assert_non_null(c);
	if (len != 0)
		memcpy(c, p, len);
	return c;
}

/* One frame of every kind, and some with bodies. */
void build_stream(eng_buf *b)
{
	rpc_limits lim;
	size_t m, g;
	uint8_t nonce[32], chunk[3000];

	rpc_limits_default(&lim);
	memset(nonce, 0xa5, sizeof(nonce));
	for (size_t i = 0; i < sizeof(chunk); i++)
		chunk[i] = (uint8_t)(i * 7);

	m = rpc_frame_begin(b, RPC_K_HELLO, 0, 0, 0);
	rpc_put_u64(b, RPC_T_VERSION, 1);
	rpc_put_bytes(b, RPC_T_NONCE, nonce, 32);
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);

	m = rpc_frame_begin(b, RPC_K_AUTH, 0, 0, 0);
	rpc_put_u64(b, RPC_T_VERSION, 1);
	rpc_put_bytes(b, RPC_T_NONCE, nonce, 32);
	rpc_put_str(b, RPC_T_PEER_NAME, "imap@host1");
	rpc_put_bytes(b, RPC_T_PROOF, nonce, 32);
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);

	m = rpc_frame_begin(b, RPC_K_AUTH_OK, 0, 0, 0);
	rpc_put_bytes(b, RPC_T_PROOF, nonce, 32);
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);

	m = rpc_frame_begin(b, RPC_K_REQUEST, RPC_F_BODY, RPC_OP_APPEND, 7);
	rpc_put_bytes(b, RPC_T_SESSION, nonce, 16);
	rpc_put_str(b, RPC_T_MAILBOX, "INBOX");
	rpc_put_u64(b, RPC_T_SIZE, sizeof(chunk));
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);

	m = rpc_frame_begin(b, RPC_K_DATA, 0, 0, 7);
	eng_buf_append(b, chunk, 1000);
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);
	m = rpc_frame_begin(b, RPC_K_DATA, RPC_F_END, 0, 7);
	eng_buf_append(b, chunk + 1000, 2000);
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);

	m = rpc_frame_begin(b, RPC_K_WINDOW, 0, 0, 7);
	rpc_put_u64(b, RPC_T_CREDIT, 262144);
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);

	m = rpc_frame_begin(b, RPC_K_RESPONSE, RPC_F_MORE, RPC_OP_FETCH_META, 8);
	g = rpc_group_begin(b, RPC_T_MESSAGE);
	rpc_put_u64(b, RPC_T_UID, 1);
	rpc_put_s64(b, RPC_T_INTERNAL_DATE, -5);
	rpc_group_end(b, g);
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);

	/* an empty payload */
	m = rpc_frame_begin(b, RPC_K_RESPONSE, 0, RPC_OP_FETCH_META, 8);
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);

	m = rpc_frame_begin(b, RPC_K_CANCEL, 0, 0, 9);
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);

	m = rpc_frame_begin(b, RPC_K_ERROR, 0, RPC_OP_SEARCH, 9);
	rpc_put_u64(b, RPC_T_CODE, rpc_err_to_wire(RPC_ECANCELLED));
	rpc_put_str(b, RPC_T_ERROR_TEXT, rpc_strerror(RPC_ECANCELLED));
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);

	m = rpc_frame_begin(b, RPC_K_EVENT, 0, 1, 0);
	assert_int_equal(rpc_frame_end(b, m, &lim), 0);
}

