/*
 * Events and login throttling on Redis (srv.h), with hiredis's async API
 * on sqlited's libuv loop.
 *
 * Redis is an optimisation here, never a dependency: while it is down,
 * events are lost (clients see changes at their next command) and the
 * throttle counts in this process's memory only. The connection
 * (frontends/common/redis_conn.h) is retried with a backoff from 250 ms
 * doubling to 10 s.
 *
 * Keys (docs/rpc.md, Events):
 *   PUBLISH sealmail:alias:<alias id> "<kind> <mailbox> <uid> <modseq>"
 *   sealmail:authfail:ip:<address>        INCR + EXPIRE 900 per failure
 *   sealmail:authfail:alias:<hex>         the same; <hex> is BLAKE2b-128
 *                                         of the lower-cased alias, so no
 *                                         address is written to Redis
 *
 * Memory fallback: a table of at most EV_MEM_MAX counters, each expiring
 * 15 minutes after its last failure; when full, the entry closest to
 * expiry is replaced (an attacker filling it only shortens its own
 * penalties, and Redis is the real store).
 */
#include "redis_conn.h"
#include "srv.h"
#include "srv_private.h"

#include "eng_error.h"

#include <ctype.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EV_EXPIRE_SECONDS 900
#define EV_MEM_MAX 4096
#define EV_KEY_MAX 160
#define EV_BACKOFF_MIN_MS 250
#define EV_BACKOFF_MAX_MS 10000

typedef struct mem_counter {
	char key[EV_KEY_MAX];
	unsigned count;
	uint64_t expires_ms;
} mem_counter;

struct srv_events {
	srv *srv;
	sm_redis_conn *conn;         /* NULL: unsupported URL, memory only */
	mem_counter *mem;
	size_t n_mem;
};

bool srv_events_connected(const srv_events *ev)
{
	return ev != NULL && sm_redis_conn_ready(ev->conn) != NULL;
}

/* ---- the connection ---- */

int srv_events_new(srv *s, const char *redis_url, srv_events **ev_r)
{
	srv_events *ev = eng_calloc(1, sizeof(*ev));
	sm_redis_conn_config rc;

	ev->srv = s;
	memset(&rc, 0, sizeof(rc));
	rc.redis_url = redis_url;
	rc.data_dir = s->cfg != NULL ? s->cfg->data_dir : ".";
	rc.backoff_min_ms = EV_BACKOFF_MIN_MS;
	rc.backoff_max_ms = EV_BACKOFF_MAX_MS;
	rc.connected_msg = "sqlited: connected to Redis";
	rc.lost_msg = "sqlited: lost the Redis connection; events are dropped and "
		      "throttling is local until it is back";
	if (sm_redis_conn_new(s->loop, &rc, &ev->conn) != 0) {
		/* The configuration parser checked the form; what is left is a
		 * scheme this build cannot speak. */
		eng_log(ENG_LOG_WARN, "sqlited: redis_url is not usable by this build "
			"(unix:, redis://): events are off, throttling is local");
	}
	ev->mem = eng_calloc(EV_MEM_MAX, sizeof(*ev->mem));
	*ev_r = ev;
	return 0;
}

void srv_events_free(srv_events **evp)
{
	srv_events *ev;

	if (evp == NULL || *evp == NULL)
		return;
	ev = *evp;
	*evp = NULL;
	/* Pending callbacks run now with no reply; ours fall back to memory. */
	sm_redis_conn_close(&ev->conn, false);
	free(ev->mem);
	free(ev);
}

/* ---- events ---- */

static const char *kind_name(enum srv_event_kind kind)
{
	switch (kind) {
	case SRV_EV_EXISTS: return "exists";
	case SRV_EV_FLAGS: return "flags";
	case SRV_EV_EXPUNGE: return "expunge";
	case SRV_EV_MAILBOX: return "mailbox";
	}
	return "unknown";
}

void srv_event_publish(srv *s, const char *alias_id, enum srv_event_kind kind,
		       const char *mailbox, uint32_t uid, uint64_t modseq)
{
	srv_events *ev = s->events;
	char channel[sizeof("sealmail:alias:") + SRV_ALIAS_ID_MAX];
	eng_buf msg = ENG_BUF_INIT;
	redisAsyncContext *ac = ev != NULL ? sm_redis_conn_ready(ev->conn) : NULL;

	if (ac == NULL)
		return;
	snprintf(channel, sizeof(channel), "sealmail:alias:%s", alias_id);
	eng_buf_printf(&msg, "%s %s %u %llu", kind_name(kind),
		       mailbox != NULL ? mailbox : "", (unsigned)uid,
		       (unsigned long long)modseq);
	/* %b: the mailbox name may hold any UTF-8, spaces included. */
	redisAsyncCommand(ac, NULL, NULL, "PUBLISH %s %b", channel, msg.data,
			  msg.len);
	eng_buf_free(&msg);
}

/* ---- throttling ---- */

static uint64_t delay_for(unsigned failures)
{
	if (failures < 3)
		return 0;
	if (failures - 3 >= 4)
		return 15000;
	uint64_t d = 1000ull << (failures - 3);

	return d > 15000 ? 15000 : d;
}

static void key_ip(char key[EV_KEY_MAX], const char *addr)
{
	snprintf(key, EV_KEY_MAX, "sealmail:authfail:ip:%.100s",
		 addr != NULL ? addr : "");
}

static void key_alias(char key[EV_KEY_MAX], const char *alias)
{
	unsigned char h[16];
	char hex[33];
	size_t n = alias != NULL ? strlen(alias) : 0;
	char *low = eng_malloc(n + 1);

	for (size_t i = 0; i < n; i++)
		low[i] = (char)tolower((unsigned char)alias[i]);
	crypto_generichash(h, sizeof(h), (const unsigned char *)low, n, NULL, 0);
	free(low);
	sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
	snprintf(key, EV_KEY_MAX, "sealmail:authfail:alias:%s", hex);
}

static mem_counter *mem_find(srv_events *ev, const char *key, bool create)
{
	uint64_t now = uv_now(ev->srv->loop);
	mem_counter *victim = NULL;

	for (size_t i = 0; i < ev->n_mem; i++) {
		mem_counter *m = &ev->mem[i];

		if (m->expires_ms <= now) {
			if (victim == NULL || victim->expires_ms > m->expires_ms)
				victim = m;
			continue;
		}
		if (strcmp(m->key, key) == 0)
			return m;
		if (victim == NULL || (victim->expires_ms > now &&
				       m->expires_ms < victim->expires_ms))
			victim = m;
	}
	if (!create)
		return NULL;
	if (ev->n_mem < EV_MEM_MAX)
		victim = &ev->mem[ev->n_mem++];
	memset(victim, 0, sizeof(*victim));
	snprintf(victim->key, sizeof(victim->key), "%s", key);
	return victim;
}

static unsigned mem_count(srv_events *ev, const char *key)
{
	mem_counter *m = mem_find(ev, key, false);

	return m != NULL ? m->count : 0;
}

typedef struct delay_req {
	srv_events *ev;
	srv_delay_cb *cb;
	void *ctx;
	char kip[EV_KEY_MAX];
	char kalias[EV_KEY_MAX];
} delay_req;

static unsigned reply_count(const redisReply *r)
{
	if (r == NULL)
		return 0;
	if (r->type == REDIS_REPLY_STRING)
		return (unsigned)strtoul(r->str, NULL, 10);
	if (r->type == REDIS_REPLY_INTEGER)
		return (unsigned)r->integer;
	return 0;
}

static void on_mget(redisAsyncContext *ac, void *reply, void *privdata)
{
	delay_req *d = privdata;
	redisReply *r = reply;
	unsigned ip, al;

	(void)ac;
	if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
		ip = reply_count(r->element[0]);
		al = reply_count(r->element[1]);
	} else {
		/* No answer (Redis went away, or shutdown): use memory. */
		ip = mem_count(d->ev, d->kip);
		al = mem_count(d->ev, d->kalias);
	}
	uint64_t delay = delay_for(ip > al ? ip : al);

	d->cb(d->ctx, delay);
	free(d);
}

void srv_throttle_delay(srv *s, const char *client_addr, const char *alias,
			srv_delay_cb *cb, void *ctx)
{
	srv_events *ev = s->events;
	redisAsyncContext *ac;
	delay_req *d;
	unsigned ip, al;

	if (ev == NULL) {
		cb(ctx, 0);
		return;
	}
	d = eng_calloc(1, sizeof(*d));
	d->ev = ev;
	d->cb = cb;
	d->ctx = ctx;
	key_ip(d->kip, client_addr);
	key_alias(d->kalias, alias);
	ac = sm_redis_conn_ready(ev->conn);
	if (ac != NULL &&
	    redisAsyncCommand(ac, on_mget, d, "MGET %s %s", d->kip,
			      d->kalias) == REDIS_OK)
		return;
	/* Redis is down: this process's counters. cb runs before we return. */
	ip = mem_count(ev, d->kip);
	al = mem_count(ev, d->kalias);
	free(d);
	cb(ctx, delay_for(ip > al ? ip : al));
}

static void count_failure(srv_events *ev, const char *key)
{
	mem_counter *m = mem_find(ev, key, true);
	redisAsyncContext *ac = sm_redis_conn_ready(ev->conn);

	m->count++;
	m->expires_ms = uv_now(ev->srv->loop) + EV_EXPIRE_SECONDS * 1000ull;
	if (ac != NULL) {
		redisAsyncCommand(ac, NULL, NULL, "INCR %s", key);
		redisAsyncCommand(ac, NULL, NULL, "EXPIRE %s %d", key,
				  EV_EXPIRE_SECONDS);
	}
}

void srv_throttle_failed(srv *s, const char *client_addr, const char *alias)
{
	char key[EV_KEY_MAX];

	if (s->events == NULL)
		return;
	key_ip(key, client_addr);
	count_failure(s->events, key);
	key_alias(key, alias);
	count_failure(s->events, key);
}

static void clear_counter(srv_events *ev, const char *key)
{
	mem_counter *m = mem_find(ev, key, false);
	redisAsyncContext *ac = sm_redis_conn_ready(ev->conn);

	if (m != NULL)
		m->expires_ms = 0;
	if (ac != NULL)
		redisAsyncCommand(ac, NULL, NULL, "DEL %s", key);
}

void srv_throttle_succeeded(srv *s, const char *client_addr, const char *alias)
{
	char key[EV_KEY_MAX];

	if (s->events == NULL)
		return;
	key_ip(key, client_addr);
	clear_counter(s->events, key);
	key_alias(key, alias);
	clear_counter(s->events, key);
}
