/*
 * MX rate limits (mx_private.h, docs/mx.md): fixed-window counters in Redis
 * so that every MX process of an installation shares them, and a bounded
 * table in this process's memory while Redis is unreachable.
 *
 * Keys: sealmail:mx:rate:<kind>:<BLAKE2b-128 hex of the lower-cased
 * subject>:<window number>, so no address or IP is written to Redis in the
 * clear. One EVAL does INCR and, on the first hit, EXPIRE (the window
 * length plus a minute), so a key never outlives its window by much.
 *
 * Memory fallback: MX_RATE_MEM_SLOTS counters in an open-addressed table
 * (4-way probing); a slot of an older window is reused, and when the four
 * are all current the one with the smallest count is replaced (an
 * attacker filling the table only resets counters, and Redis is the real
 * store).
 */
#include "mx_private.h"

#include "eng_error.h"
#include "redis_conn.h"

#include <ctype.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MX_RATE_MEM_SLOTS 4096u
#define MX_RATE_PROBES 4u
#define MX_RATE_PREFIX "sealmail:mx:rate:"
#define MX_RATE_HASH_CHARS 32

typedef struct rate_slot {
	uint8_t hash[16];            /* of kind + subject */
	uint64_t window;
	uint64_t count;
	bool used;
} rate_slot;

struct mx_rate_mem {
	rate_slot slots[MX_RATE_MEM_SLOTS];
};

typedef struct rate_req {
	mxd *d;
	mx_rate_cb *cb;
	void *ctx;
	uint64_t limit;
	uint64_t window;
	uint8_t hash[16];
} rate_req;

static const char lua_hit[] =
	"local n = redis.call('INCR', KEYS[1]) "
	"if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end "
	"return n";

static const char *const kind_names[] = { "conn", "msg", "rcpt" };
static const uint64_t kind_seconds[] = { 60, 86400, 3600 };

mx_rate_mem *mx_rate_mem_new(void)
{
	return eng_calloc(1, sizeof(mx_rate_mem));
}

void mx_rate_mem_free(mx_rate_mem **m)
{
	free(*m);
	*m = NULL;
}

static void subject_hash(mx_rate_kind kind, const char *subject, uint8_t out[16])
{
	crypto_generichash_state st;
	uint8_t k = (uint8_t)kind;

	crypto_generichash_init(&st, NULL, 0, 16);
	crypto_generichash_update(&st, &k, 1);
	for (const char *p = subject; *p != '\0'; p++) {
		uint8_t c = (uint8_t)tolower((unsigned char)*p);

		crypto_generichash_update(&st, &c, 1);
	}
	crypto_generichash_final(&st, out, 16);
}

/* Counts in the process's table; returns the new count. */
static uint64_t mem_hit(mx_rate_mem *m, const uint8_t hash[16], uint64_t window)
{
	uint32_t h = (uint32_t)hash[0] | (uint32_t)hash[1] << 8 |
		     (uint32_t)hash[2] << 16 | (uint32_t)hash[3] << 24;
	rate_slot *victim = NULL;

	for (uint32_t i = 0; i < MX_RATE_PROBES; i++) {
		rate_slot *s = &m->slots[(h + i) % MX_RATE_MEM_SLOTS];

		if (s->used && memcmp(s->hash, hash, 16) == 0) {
			if (s->window != window) {
				s->window = window;
				s->count = 0;
			}
			return ++s->count;
		}
		if (!s->used || s->window != window)
			victim = victim != NULL && !victim->used ? victim : s;
		else if (victim == NULL || (victim->used && victim->window == window &&
					    s->count < victim->count))
			victim = s;
	}
	memcpy(victim->hash, hash, 16);
	victim->used = true;
	victim->window = window;
	victim->count = 1;
	return 1;
}

static void on_hit(redisAsyncContext *ac, void *reply, void *privdata)
{
	rate_req *r = privdata;
	redisReply *rep = reply;
	uint64_t n;

	(void)ac;
	if (rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer >= 0)
		n = (uint64_t)rep->integer;
	else
		n = mem_hit(r->d->rate_mem, r->hash, r->window);
	r->cb(r->ctx, n <= r->limit);
	free(r);
}

void mx_rate_hit(mxd *d, mx_rate_kind kind, const char *subject,
		 uint64_t limit, mx_rate_cb *cb, void *ctx)
{
	redisAsyncContext *ac = sm_redis_conn_ready(d->redis);
	uint64_t secs = kind_seconds[kind];
	char hex[MX_RATE_HASH_CHARS + 1];
	rate_req *r;

	if (limit == 0) {
		cb(ctx, true);
		return;
	}
	r = eng_calloc(1, sizeof(*r));
	r->d = d;
	r->cb = cb;
	r->ctx = ctx;
	r->limit = limit;
	r->window = (uint64_t)time(NULL) / secs;
	subject_hash(kind, subject, r->hash);
	sodium_bin2hex(hex, sizeof(hex), r->hash, sizeof(r->hash));
	if (ac != NULL &&
	    redisAsyncCommand(ac, on_hit, r, "EVAL %s 1 %s%s:%s:%llu %llu", lua_hit,
			      MX_RATE_PREFIX, kind_names[kind], hex,
			      (unsigned long long)r->window,
			      (unsigned long long)(secs + 60)) == REDIS_OK)
		return;
	cb(ctx, mem_hit(d->rate_mem, r->hash, r->window) <= limit);
	free(r);
}
