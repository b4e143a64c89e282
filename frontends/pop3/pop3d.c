/*
 * sealmail-pop3d: the POP3 frontend. `sealmail-pop3d --config FILE` (which
 * is how `sealmail up` runs it).
 *
 * Start: configuration, RPC secret, TLS certificate, an rpc_client to
 * sqlited (its unix socket, else loopback TCP), Redis for the [IN-USE]
 * lock, listeners on pop3s_port (implicit TLS) and pop3_port (plaintext +
 * STLS); one line on stdout per listener. A port of 0 is off. Without a
 * usable certificate pop3s is off and STLS is not offered (logged).
 *
 * Start-up and signals are common/daemon.h's. Signals: SIGHUP reloads the
 * certificate (new connections get it); SIGINT/SIGTERM stop accepting,
 * tell idle sessions "-ERR [SYS/TEMP]" and close them (a session in
 * TRANSACTION deletes nothing; one in UPDATE finishes its QUIT), then exit
 * 0. A second signal exits at once with 1.
 *
 * The [IN-USE] lock: Redis key sealmail:pop3:inuse:<BLAKE2b-128 of the
 * lower-cased alias> set with SET NX PX (lock_ttl_ms) to a random token,
 * refreshed every third of that while held, deleted (only if it still
 * holds our token) at logout. Locks are also kept in this process, which
 * is what counts while Redis is unreachable. The connection is
 * common/redis_conn.h's, retried every POP3_REDIS_RETRY_MS.
 */
#include "pop3_private.h"

#include "daemon.h"
#include "eng_error.h"
#include "redis_conn.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POP3_LOCK_TTL_MS 60000u
#define POP3_REDIS_RETRY_MS 2000u
#define POP3_LOCK_PREFIX "sealmail:pop3:inuse:"

struct pop3_lock {
	pop3_lock *next;
	char id[POP3_LOCK_ID_CHARS + 1];
	char token[33];
};

typedef struct lock_req {
	pop3d *d;
	pop3_lock_cb *cb;
	void *ctx;
	char id[POP3_LOCK_ID_CHARS + 1];
	char token[33];
} lock_req;

static const char lua_release[] =
	"if redis.call('get', KEYS[1]) == ARGV[1] then "
	"return redis.call('del', KEYS[1]) else return 0 end";
static const char lua_refresh[] =
	"if redis.call('get', KEYS[1]) == ARGV[1] then "
	"return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

typedef struct pop3_main {
	sm_daemon dm;
	pop3d d;
	uv_timer_t refresh_timer;    /* refresh held locks */
} pop3_main;

static pop3_main *g_main;

/* ---- Redis ---- */

static void redis_start(pop3_main *m)
{
	sm_redis_conn_config rc = {
		.backoff_min_ms = POP3_REDIS_RETRY_MS,
		.backoff_max_ms = POP3_REDIS_RETRY_MS,
		.connected_msg = "pop3d: connected to Redis",
		.lost_msg = "pop3d: Redis connection lost; [IN-USE] locks are local "
			    "to this process until it is back",
	};

	sm_daemon_redis(&m->dm, &rc, "[IN-USE] locks are local to this process",
			&m->d.redis);
}

static void on_refresh_timer(uv_timer_t *t)
{
	pop3_main *m = t->data;
	redisAsyncContext *ac = sm_redis_conn_ready(m->d.redis);

	if (ac == NULL)
		return;
	for (pop3_lock *l = m->d.locks; l != NULL; l = l->next)
		redisAsyncCommand(ac, NULL, NULL, "EVAL %s 1 %s%s %s %u", lua_refresh,
				  POP3_LOCK_PREFIX, l->id, l->token,
				  (unsigned)m->d.lock_ttl_ms);
}

/* ---- the [IN-USE] lock ---- */

static pop3_lock *lock_find(pop3d *d, const char *id)
{
	for (pop3_lock *l = d->locks; l != NULL; l = l->next)
		if (strcmp(l->id, id) == 0)
			return l;
	return NULL;
}

static void lock_add(pop3d *d, const char *id, const char *token)
{
	pop3_lock *l = eng_calloc(1, sizeof(*l));

	snprintf(l->id, sizeof(l->id), "%s", id);
	snprintf(l->token, sizeof(l->token), "%s", token);
	l->next = d->locks;
	d->locks = l;
}

static void on_set_nx(redisAsyncContext *ac, void *reply, void *privdata)
{
	lock_req *r = privdata;
	redisReply *rep = reply;
	bool got;

	(void)ac;
	if (lock_find(r->d, r->id) != NULL) {
		got = false;     /* another session of this process got it meanwhile */
	} else if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
		/* Redis went away mid-request: the local lock decides. */
		got = true;
	} else {
		got = rep->type == REDIS_REPLY_STATUS;
	}
	if (got)
		lock_add(r->d, r->id, r->token);
	r->cb(r->ctx, got);
	free(r);
}

void pop3_lock_acquire(pop3d *d, const char *id, pop3_lock_cb *cb, void *ctx)
{
	redisAsyncContext *ac = sm_redis_conn_ready(d->redis);
	uint8_t rnd[16];
	lock_req *r;

	if (lock_find(d, id) != NULL) {
		cb(ctx, false);
		return;
	}
	r = eng_calloc(1, sizeof(*r));
	r->d = d;
	r->cb = cb;
	r->ctx = ctx;
	snprintf(r->id, sizeof(r->id), "%s", id);
	randombytes_buf(rnd, sizeof(rnd));
	sodium_bin2hex(r->token, sizeof(r->token), rnd, sizeof(rnd));
	if (ac != NULL &&
	    redisAsyncCommand(ac, on_set_nx, r, "SET %s%s %s NX PX %u",
			      POP3_LOCK_PREFIX, id, r->token,
			      (unsigned)d->lock_ttl_ms) == REDIS_OK)
		return;
	lock_add(d, id, r->token);
	free(r);
	cb(ctx, true);
}

void pop3_lock_release(pop3d *d, const char *id)
{
	redisAsyncContext *ac = sm_redis_conn_ready(d->redis);

	for (pop3_lock **pp = &d->locks; *pp != NULL; pp = &(*pp)->next) {
		pop3_lock *l = *pp;

		if (strcmp(l->id, id) != 0)
			continue;
		if (ac != NULL)
			redisAsyncCommand(ac, NULL, NULL, "EVAL %s 1 %s%s %s", lua_release,
					  POP3_LOCK_PREFIX, l->id, l->token);
		*pp = l->next;
		free(l);
		return;
	}
}

/* ---- stopping (common/daemon.h calls these) ---- */

static size_t pop3_stop(void *ctx)
{
	pop3_main *m = ctx;

	m->d.stopping = true;
	for (size_t i = 0; i < 2; i++)
		if (m->d.listeners[i] != NULL) {
			sm_net_listener_close(m->d.listeners[i], NULL, NULL);
			m->d.listeners[i] = NULL;
		}
	pop3_sessions_shutdown(&m->d);
	return m->d.n_sessions;
}

static void pop3_finish(void *ctx)
{
	pop3_main *m = ctx;

	m->d.rpc = NULL;            /* closed by the daemon skeleton */
	sm_redis_conn_close(&m->d.redis, true);
	uv_close((uv_handle_t *)&m->refresh_timer, NULL);
}

void pop3d_sessions_gone(pop3d *d)
{
	(void)d;
	sm_daemon_finish(&g_main->dm);
}

/* ---- main ---- */

static const char *pop3_idle_reason(const sm_config *cfg)
{
	return cfg->pop3s_port == 0 && cfg->pop3_port == 0 ?
	       "pop3s_port and pop3_port are both 0" : NULL;
}

static const sm_daemon_spec pop3_spec = {
	.name = "pop3d",
	.program = "sealmail-pop3d",
	.peer = "pop3",
	.tls_off = "TLS",
	.plain = "plaintext",
	.starttls = "STLS",
	.implicit_port = "pop3s_port",
	.idle_reason = pop3_idle_reason,
	.stop = pop3_stop,
	.finish = pop3_finish,
};

static int start_listener(pop3_main *m, size_t i, uint16_t port, bool implicit)
{
	sm_net_listener_config lc = {
		.port = port,
		.implicit_tls = implicit,
		.name = implicit ? "pop3s" : "pop3",
		.limit_reply = "-ERR [SYS/TEMP] Too many connections from your address\r\n",
		.cb = &pop3_net_callbacks,
		.ctx = &m->d,
	};

	return sm_daemon_listen(&m->dm, &lc, &m->d.listeners[i]);
}

static int start_listeners(pop3_main *m)
{
	if (start_listener(m, 0, m->d.cfg->pop3s_port, true) == 0 &&
	    start_listener(m, 1, m->d.cfg->pop3_port, false) == 0 &&
	    (m->d.listeners[0] != NULL || m->d.listeners[1] != NULL))
		return 0;
	for (size_t i = 0; i < 2; i++)
		if (m->d.listeners[i] != NULL)
			sm_net_listener_close(m->d.listeners[i], NULL, NULL);
	m->d.stopping = true;
	return ENG_EIO;
}

int main(int argc, char **argv)
{
	pop3_main m;
	int status;

	memset(&m, 0, sizeof(m));
	g_main = &m;
	if (sm_daemon_open(&m.dm, &pop3_spec, &m, argc, argv) != 0)
		return 1;
	m.d.loop = &m.dm.loop;
	m.d.cfg = m.dm.cfg;
	m.d.tls = m.dm.tls;
	m.d.lock_ttl_ms = POP3_LOCK_TTL_MS;
	uv_timer_init(m.d.loop, &m.refresh_timer);
	m.refresh_timer.data = &m;
	if (sm_daemon_connect_rpc(&m.dm) != 0) {
		status = sm_daemon_run(&m.dm, -1, NULL);
	} else {
		m.d.rpc = m.dm.rpc;
		redis_start(&m);
		uv_timer_start(&m.refresh_timer, on_refresh_timer, POP3_REDIS_RETRY_MS,
			       POP3_LOCK_TTL_MS / 3 < POP3_REDIS_RETRY_MS ?
			       POP3_LOCK_TTL_MS / 3 : POP3_REDIS_RETRY_MS);
		status = sm_daemon_run(&m.dm, start_listeners(&m), "cannot listen");
	}
	while (m.d.locks != NULL) {
		pop3_lock *l = m.d.locks;

		m.d.locks = l->next;
		free(l);
	}
	sm_daemon_free(&m.dm);
	return status;
}
