/*
 * The self-reconnecting async Redis connection (redis_conn.h).
 *
 * hiredis frees a context itself after a failed connect (once the connect
 * callback returns) and after a disconnect, so c->ac is cleared in those
 * callbacks. Closing clears ac->data first: a callback that still comes
 * finds NULL and does nothing.
 */
#include "redis_conn.h"

#include "eng_error.h"
#include "redis_url.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>

struct sm_redis_conn {
	uv_loop_t *loop;
	sm_redis_conn_config cfg;
	sm_redis_target target;
	redisAsyncContext *ac;
	bool connected;
	uv_timer_t retry;
	unsigned backoff_ms;
};

static void conn_connect(sm_redis_conn *c);

static bool held(const sm_redis_conn *c)
{
	return c->cfg.hold != NULL && *c->cfg.hold;
}

static void on_retry(uv_timer_t *t)
{
	conn_connect(t->data);
}

static void schedule_retry(sm_redis_conn *c)
{
	if (held(c))
		return;
	uv_timer_start(&c->retry, on_retry, c->backoff_ms, 0);
	c->backoff_ms = c->backoff_ms * 2 > c->cfg.backoff_max_ms ?
			c->cfg.backoff_max_ms : c->backoff_ms * 2;
}

static void on_connected(const redisAsyncContext *ac, int status)
{
	sm_redis_conn *c = ac->data;

	if (c == NULL)
		return;
	if (status != REDIS_OK) {
		c->ac = NULL;
		c->connected = false;
		schedule_retry(c);
		return;
	}
	c->connected = true;
	c->backoff_ms = c->cfg.backoff_min_ms;
	eng_log(ENG_LOG_INFO, "%s", c->cfg.connected_msg);
	if (c->cfg.on_connect != NULL)
		c->cfg.on_connect(c->cfg.ctx, c->ac);
}

static void on_disconnected(const redisAsyncContext *ac, int status)
{
	sm_redis_conn *c = ac->data;

	(void)status;
	if (c == NULL)
		return;
	if (c->connected && !held(c))
		eng_log(ENG_LOG_WARN, "%s", c->cfg.lost_msg);
	c->ac = NULL;
	c->connected = false;
	schedule_retry(c);
}

static void conn_connect(sm_redis_conn *c)
{
	redisAsyncContext *ac;

	if (c->ac != NULL || held(c))
		return;
	ac = c->target.unix_path != NULL ? redisAsyncConnectUnix(c->target.unix_path) :
	     redisAsyncConnect(c->target.host, c->target.port);
	if (ac == NULL)
		eng_oom(sizeof(redisAsyncContext));
	if (ac->err != 0 || redisLibuvAttach(ac, c->loop) != REDIS_OK) {
		redisAsyncFree(ac);
		schedule_retry(c);
		return;
	}
	ac->data = c;
	redisAsyncSetConnectCallback(ac, on_connected);
	redisAsyncSetDisconnectCallback(ac, on_disconnected);
	c->ac = ac;
	/* Queued now, sent once connected, before anything else. */
	if (c->target.password != NULL)
		redisAsyncCommand(ac, NULL, NULL, "AUTH %s", c->target.password);
	if (c->target.db != 0)
		redisAsyncCommand(ac, NULL, NULL, "SELECT %d", c->target.db);
}

int sm_redis_conn_new(uv_loop_t *loop, const sm_redis_conn_config *cfg,
		      sm_redis_conn **c_r)
{
	sm_redis_conn *c = eng_calloc(1, sizeof(*c));

	*c_r = NULL;
	if (sm_redis_target_parse(cfg->redis_url, cfg->data_dir, &c->target) != 0) {
		free(c);
		return ENG_EINVAL;
	}
	c->loop = loop;
	c->cfg = *cfg;
	c->cfg.redis_url = c->cfg.data_dir = NULL;   /* not kept */
	c->backoff_ms = cfg->backoff_min_ms;
	uv_timer_init(loop, &c->retry);
	c->retry.data = c;
	uv_unref((uv_handle_t *)&c->retry);
	conn_connect(c);
	*c_r = c;
	return 0;
}

redisAsyncContext *sm_redis_conn_ready(const sm_redis_conn *c)
{
	return c != NULL && c->connected ? c->ac : NULL;
}

static void on_retry_closed(uv_handle_t *h)
{
	sm_redis_conn *c = h->data;

	sm_redis_target_clear(&c->target);
	free(c);
}

void sm_redis_conn_close(sm_redis_conn **cp, bool graceful)
{
	sm_redis_conn *c;

	if (cp == NULL || *cp == NULL)
		return;
	c = *cp;
	*cp = NULL;
	if (c->ac != NULL) {
		redisAsyncContext *ac = c->ac;

		c->ac = NULL;
		c->connected = false;
		ac->data = NULL;
		if (graceful)
			redisAsyncDisconnect(ac);
		else
			redisAsyncFree(ac);
	}
	uv_close((uv_handle_t *)&c->retry, on_retry_closed);
}
