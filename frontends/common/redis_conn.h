/*
 * One asynchronous Redis connection (hiredis on a libuv loop) that keeps
 * itself up: what every process that talks to Redis shares (sqlited's
 * events and throttle, pop3d's [IN-USE] lock, imapd's event subscriber,
 * the MX's rate limits).
 *
 * Rules:
 *  - Where: the config's redis_url (redis_url.h). A URL this build cannot
 *    use makes sm_redis_conn_new fail; the caller logs what that costs it
 *    and works without Redis.
 *  - It connects at once; AUTH and SELECT are queued right after the
 *    connect, so they go out before anything the caller sends.
 *  - A failed attempt or a lost connection is retried after backoff_min_ms,
 *    doubling up to backoff_max_ms (equal values: a fixed period); a
 *    successful connection resets the delay. The retry timer never keeps
 *    the loop alive by itself.
 *  - on_connect runs on each successful connection (re-SUBSCRIBE there).
 *  - While *hold is true (the daemon is stopping) no attempt is made and a
 *    loss is not logged.
 *  - Redis is an optimisation: sm_redis_conn_ready gives the context only
 *    while connected; NULL means "do it locally".
 *  - Single-threaded: every function runs on the loop's thread.
 */
#ifndef SM_REDIS_CONN_H
#define SM_REDIS_CONN_H

#include <stdbool.h>

#include <hiredis/async.h>
#include <uv.h>

typedef struct sm_redis_conn sm_redis_conn;

typedef void sm_redis_conn_fn(void *ctx, redisAsyncContext *ac);

typedef struct sm_redis_conn_config {
	const char *redis_url;
	const char *data_dir;        /* for "" / "embedded" (redis_url.h) */
	unsigned backoff_min_ms;
	unsigned backoff_max_ms;
	/* Log lines (INFO on each connection, WARN when one is lost); the
	 * strings must outlive the connection. */
	const char *connected_msg;
	const char *lost_msg;
	const bool *hold;            /* optional */
	sm_redis_conn_fn *on_connect; /* optional */
	void *ctx;
} sm_redis_conn_config;

/* 0, or ENG_EINVAL when redis_url is not usable by this build (*c_r is
 * then NULL). The strings of cfg are copied, except the log lines. */
int sm_redis_conn_new(uv_loop_t *loop, const sm_redis_conn_config *cfg,
		      sm_redis_conn **c_r);

/* The context while connected, else NULL (c may be NULL). */
redisAsyncContext *sm_redis_conn_ready(const sm_redis_conn *c);

/*
 * Ends it and sets *c to NULL (accepts NULL). graceful: what is queued is
 * still sent and its replies read (redisAsyncDisconnect); else pending
 * callbacks run now with a NULL reply (redisAsyncFree). Either way no
 * callback of this module runs afterwards; the memory goes in a later
 * loop turn.
 */
void sm_redis_conn_close(sm_redis_conn **c, bool graceful);

#endif
