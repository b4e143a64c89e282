/*
 * The fixture the libuv RPC client's tests share (test_rpc_client,
 * test_rpc_client_stream, test_rpc_client_real): a fake server (testrpc.c)
 * and the client side's loop, watchdog and result helpers (test_rpc_tls
 * uses those too, with clients of its own made by env_open_cfg), a
 * download sink that holds credit (hold_sink), and the codec tests'
 * exact_copy and build_stream. Built into
 * sm_testutil, so only tests that use it pull it in (they link sm_rpc:
 * their names start with test_rpc).
 */
#ifndef TESTRPC_H
#define TESTRPC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "rpc_auth.h"
#include "rpc_client.h"
#include "rpc_codec.h"

#define MIB (1024u * 1024)

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

typedef struct env {
	uv_loop_t loop;
	uv_timer_t watchdog;
	bool expired;
	rpc_client *c;
	int ups, downs;
	int last_down_err;
	bool closed;
} env;

/* Runs the loop until cond holds; fails the test after ms. */
#define RUN_UNTIL(e, cond, ms) do { \
	(e)->expired = false; \
	uv_timer_start(&(e)->watchdog, on_watchdog, (ms), 0); \
	while (!(cond) && !(e)->expired) \
		uv_run(&(e)->loop, UV_RUN_ONCE); \
	uv_timer_stop(&(e)->watchdog); \
	assert_true(cond); \
} while (0)

typedef struct result {
	int calls;
	int err;
	uint8_t echo[64];
	size_t echo_len;
	uint64_t size;
	uint8_t hash[32];
	bool has_hash;
} result;

uint8_t pattern_byte(uint64_t off);
void fake_init(fake *f, const uint8_t secret[32]);
void fake_start(fake *f);
void fake_stop(fake *f);
extern const uint8_t secret_a[32];
extern const uint8_t secret_b[32];
void on_watchdog(uv_timer_t *t);
void run_for(env *e, uint64_t ms);
int env_open_cfg(env *e, rpc_client_config *cfg);
void env_open(env *e, const fake *f, const uint8_t *secret,
	      rpc_client_config *cfg_in);
void on_closed(void *ctx);
void watchdog_closed(uv_handle_t *h);
void env_close(env *e);
void on_result(void *ctx, int err, const rpc_view *resp);
int total_calls(const result *r, int n);
int ping(env *e, const char *echo, uint32_t timeout_ms, result *r,
	 uint32_t *id_r);

/* A download's data callback that holds every chunk (RPC_CLIENT_HOLD) and
 * gives the credit back a little later (rpc_client_consumed from a timer
 * of delay_ms, armed once threshold bytes are held; ENOTFOUND after the
 * last chunk, when the request is over): what test_rpc_client_stream
 * (against the fake) and test_rpc_client_real (against sqlited) check the
 * window with. A checker embeds it, calls hold_sink_init, and returns
 * hold_sink_chunk(...) from its callback after looking at the bytes (got
 * is the offset of the chunk until then); hold_sink_close before
 * env_close. */
typedef struct hold_sink {
	env *e;
	uint32_t id;
	uint64_t got;           /* bytes received */
	uint64_t held;          /* not yet consumed */
	uint64_t max_held;
	uint64_t threshold;
	uint64_t delay_ms;
	int pauses;             /* times the timer was armed */
	bool end;               /* the last chunk arrived */
	uv_timer_t resume;
} hold_sink;

void hold_sink_init(hold_sink *h, env *e, uint64_t threshold,
		    uint64_t delay_ms);
int hold_sink_chunk(hold_sink *h, uint32_t id, size_t len, bool end);
void hold_sink_close(hold_sink *h);

/* The codec tests' helpers: an exact-size copy of p (so that ASan sees
 * any overread), and a stream of one frame of every kind appended to b. */
uint8_t *exact_copy(const void *p, size_t len);
void build_stream(eng_buf *b);

#endif
