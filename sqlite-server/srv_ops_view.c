/*
 * MAILBOX_VIEW: what an IMAP SELECT needs of every message, and nothing
 * more: the UIDs as packed ranges (a mailbox whose UIDs run without gaps
 * is one range whatever its size), the flags as runs of equal flags, the
 * message count, and the keywords set in the mailbox (docs/rpc.md). For
 * 100,000 messages that is a few bytes where FETCH_META sends a MESSAGE
 * group of nine fields each; the imapd expands it into its sequence map.
 *
 * Rules: read only; runs on the alias's queue like every mailbox opcode
 * (srv_ops_mbox.h), so the count, the ranges and the runs are of one
 * state. Packed fields are split so that none passes SRV_PART_MAX_UIDS
 * entries and every part stays under the frame limits.
 *
 * The ranges and runs of the last VIEW_CACHE_SLOTS views (each at most
 * VIEW_CACHE_MAX_BYTES, so at most 1 MiB in all, whatever the number of
 * aliases; UIDs and flag bits only: no names, keywords are read each
 * time) are kept, keyed by the alias id, the mailbox id and the mailbox
 * row's UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and MESSAGES: every change of
 * a message (APPEND, STORE of flags or keywords, EXPUNGE, COPY/MOVE in)
 * raises HIGHESTMODSEQ in the same transaction (engine/flags.c,
 * store_mailbox_account), and a mailbox emptied without one (DELETE of a
 * mailbox with children, then CREATE) has another MESSAGES; so a key that
 * matches is the same state, and a repeated SELECT of an unchanged
 * mailbox reads no message row.
 */
#include "srv_ops_mbox.h"

#include "eng_error.h"
#include "rpc_codec.h"
#include "rpc_proto.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

srv_handler_fn srv_op_mailbox_view;

/* Keywords listed at most (the imapd's FLAGS list has the same bound). */
#define VIEW_KEYWORDS_MAX 1000

#define VIEW_CACHE_SLOTS 16
#define VIEW_CACHE_MAX_BYTES (64u * 1024)

struct view_key {
	char alias_id[SRV_ALIAS_ID_MAX + 1];
	int64_t mailbox_id;
	uint32_t uidvalidity, uidnext;
	uint64_t highestmodseq, messages;
};

struct view_ctx {
	eng_buf ranges;              /* packed (lo, hi) big-endian u32 pairs */
	eng_buf runs;                /* packed (count, flags) pairs */
	eng_buf keywords;            /* NUL-terminated names, one after another */
	uint64_t n;                  /* messages */
	uint32_t lo, hi;             /* the range being built (n > 0) */
	uint32_t run_flags, run_len; /* the run being built (n > 0) */
};

static void put_pair(eng_buf *b, uint32_t a, uint32_t z)
{
	uint8_t p[8] = {
		(uint8_t)(a >> 24), (uint8_t)(a >> 16), (uint8_t)(a >> 8), (uint8_t)a,
		(uint8_t)(z >> 24), (uint8_t)(z >> 16), (uint8_t)(z >> 8), (uint8_t)z,
	};

	eng_buf_append(b, p, sizeof(p));
}

static int view_cb(void *ctx, uint32_t uid, uint32_t flags)
{
	struct view_ctx *c = ctx;

	if (c->n > 0 && uid == c->hi + 1) {
		c->hi = uid;
	} else {
		if (c->n > 0)
			put_pair(&c->ranges, c->lo, c->hi);
		c->lo = c->hi = uid;
	}
	if (c->n > 0 && flags == c->run_flags && c->run_len < UINT32_MAX) {
		c->run_len++;
	} else {
		if (c->n > 0)
			put_pair(&c->runs, c->run_len, c->run_flags);
		c->run_flags = flags;
		c->run_len = 1;
	}
	c->n++;
	return 0;
}

static int keyword_cb(void *ctx, const char *name)
{
	struct view_ctx *c = ctx;

	eng_buf_append(&c->keywords, name, strlen(name) + 1);
	return 0;
}

/* ---- the cache of answers ---- */

static struct view_entry {
	bool used;
	uint64_t last_use;
	struct view_key key;
	uint64_t n;
	eng_buf ranges, runs;
} view_cache[VIEW_CACHE_SLOTS];
static uint64_t view_clock;
static pthread_mutex_t view_lock = PTHREAD_MUTEX_INITIALIZER;

static void view_key_of(const srv_mbop *op, const eng_mailbox *mb,
			struct view_key *k)
{
	memset(k, 0, sizeof(*k));
	snprintf(k->alias_id, sizeof(k->alias_id), "%s", op->alias_id);
	k->mailbox_id = mb->id;
	k->uidvalidity = mb->uidvalidity;
	k->uidnext = mb->uidnext;
	k->highestmodseq = mb->highestmodseq;
	k->messages = mb->messages;
}

static void buf_copy(eng_buf *to, const eng_buf *from)
{
	eng_buf_reset(to);
	if (from->len > 0)
		eng_buf_append(to, from->data, from->len);
}

/* The cached answer for k into c; false if there is none. */
static bool view_cache_get(const struct view_key *k, struct view_ctx *c)
{
	bool hit = false;

	pthread_mutex_lock(&view_lock);
	for (size_t i = 0; i < VIEW_CACHE_SLOTS && !hit; i++) {
		struct view_entry *e = &view_cache[i];

		if (!e->used || memcmp(&e->key, k, sizeof(*k)) != 0)
			continue;
		buf_copy(&c->ranges, &e->ranges);
		buf_copy(&c->runs, &e->runs);
		c->n = e->n;
		e->last_use = ++view_clock;
		hit = true;
	}
	pthread_mutex_unlock(&view_lock);
	return hit;
}

/* Keeps c's answer for k in the least recently used slot (if small). */
static void view_cache_put(const struct view_key *k, const struct view_ctx *c)
{
	struct view_entry *e = &view_cache[0];

	if (c->ranges.len + c->runs.len > VIEW_CACHE_MAX_BYTES)
		return;
	pthread_mutex_lock(&view_lock);
	for (size_t i = 0; i < VIEW_CACHE_SLOTS; i++) {
		struct view_entry *x = &view_cache[i];

		if (!x->used || (strcmp(x->key.alias_id, k->alias_id) == 0 &&
				 x->key.mailbox_id == k->mailbox_id)) {
			e = x;     /* a free slot, or this mailbox's older state */
			break;
		}
		if (x->last_use < e->last_use)
			e = x;
	}
	e->used = true;
	e->key = *k;
	e->n = c->n;
	e->last_use = ++view_clock;
	buf_copy(&e->ranges, &c->ranges);
	buf_copy(&e->runs, &c->runs);
	pthread_mutex_unlock(&view_lock);
}

/* The packed pairs of b as fields of tag, SRV_PART_MAX_UIDS pairs each. */
static void put_packed(srv_mbop *op, uint32_t tag, const eng_buf *b)
{
	size_t max = 8 * (size_t)SRV_PART_MAX_UIDS;

	for (size_t off = 0; off < b->len; off += max) {
		size_t k = b->len - off < max ? b->len - off : max;

		rpc_put_bytes(srv_mbop_part(op, 1, k + 16), tag,
			      (const uint8_t *)b->data + off, k);
	}
}

/* The ranges and runs read from the store into c. */
static int view_read(eng_store *st, const eng_mailbox *mb, struct view_ctx *c)
{
	int err = eng_mailbox_view(st, mb->id, view_cb, c);

	if (err == 0 && c->n > 0) {
		put_pair(&c->ranges, c->lo, c->hi);
		put_pair(&c->runs, c->run_len, c->run_flags);
	}
	return err;
}

static int view_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct view_ctx c = { .ranges = ENG_BUF_INIT, .runs = ENG_BUF_INIT,
			      .keywords = ENG_BUF_INIT };
	struct view_key key;
	int err = 0;

	view_key_of(op, mb, &key);
	if (!view_cache_get(&key, &c) && (err = view_read(st, mb, &c)) == 0)
		view_cache_put(&key, &c);
	if (err == 0)
		err = eng_mailbox_keywords(st, mb->id, VIEW_KEYWORDS_MAX,
					   keyword_cb, &c);
	if (err == 0) {
		/* The scalars first: they belong in the first part. */
		rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_MESSAGES, c.n);
		for (size_t off = 0; off < c.keywords.len;) {
			const char *k = c.keywords.data + off;
			size_t len = strlen(k);

			rpc_put_str(srv_mbop_part(op, 1, len + 8), RPC_T_KEYWORD, k);
			off += len + 1;
		}
		put_packed(op, RPC_T_UIDSET, &c.ranges);
		put_packed(op, RPC_T_FLAG_RUNS, &c.runs);
	}
	eng_buf_free(&c.ranges);
	eng_buf_free(&c.runs);
	eng_buf_free(&c.keywords);
	return err;
}

void srv_op_mailbox_view(srv_req *req)
{
	srv_mbop *op;
	int err;

	if ((op = srv_mbop_new(req, true, &err)) == NULL) {
		srv_fail(req, err);
		return;
	}
	srv_mbop_submit(op, view_run);
}
