/*
 * MAILBOX_VIEW: what an IMAP SELECT needs of every message, and nothing
 * more: the UIDs as packed ranges (a mailbox whose UIDs run without gaps
 * is one range whatever its size), the flags as runs of equal flags, the
 * message count, and the keywords set in the mailbox (docs/rpc.md). For
 * 100,000 messages that is a few bytes where FETCH_META sends a MESSAGE
 * group of nine fields each; the imapd expands it into its sequence map.
 * The answer carries the mailbox's MAILBOX_INFO too (the row read for the
 * view), so a SELECT is this one request.
 *
 * Rules: read only; runs on the alias's queue like every mailbox opcode
 * (srv_ops_mbox.h), so the count, the ranges and the runs are of one
 * state. Packed fields are split so that none passes SRV_PART_MAX_UIDS
 * entries and every part stays under the frame limits.
 *
 * The ranges and runs of the last VIEW_CACHE_SLOTS views (each at most
 * VIEW_CACHE_MAX_BYTES: a 100,000-message mailbox where every message is
 * its own range and run fits; the buffers of all at most
 * VIEW_CACHE_BUDGET bytes, whatever the number of aliases, the least
 * recently used dropped first; UIDs and flag bits only: no names,
 * keywords are read each time) are kept, keyed by the alias id, the mailbox id and the mailbox
 * row's UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and MESSAGES: every change of
 * a message (APPEND, STORE of flags or keywords, EXPUNGE, COPY/MOVE in)
 * raises HIGHESTMODSEQ in the same transaction (engine/flags.c,
 * store_mailbox_account), and a mailbox emptied without one (DELETE of a
 * mailbox with children, then CREATE) has another MESSAGES; so a key that
 * matches is the same state, and a repeated SELECT of an unchanged
 * mailbox reads no message row.
 *
 * After a change the mailbox's older entry (same alias, mailbox id and
 * UIDVALIDITY, a lower HIGHESTMODSEQ M) is patched instead of reading
 * every row: the messages with a MODSEQ above M (new UIDs and new flag
 * bits) and the UIDs expunged since M (eng_mailbox_view_since, two
 * index range scans) are merged into its ranges and runs. The runs hold
 * the flags column as stored (system flag bits; keywords are not in it,
 * and neither is \Recent: RECENT is 0), so a row's current flags replace
 * the old ones. MODSEQs only grow, so a message not listed as changed
 * existed at M with the flags it has; hence the patched list holds every
 * message of the mailbox, plus any UID whose expunge was not logged (none
 * while the UIDVALIDITY stays: a DELETE that clears the log of a parent
 * it keeps as \Noselect gives it a new one). The patch is kept only if
 * its count equals MESSAGES, which rules those out; otherwise, or if the
 * changes pass VIEW_PATCH_MAX_CHANGES or the result VIEW_CACHE_MAX_BYTES,
 * every row is read as before. The entries of an alias are dropped when it is
 * closed (srv_view_cache_forget from srv_alias.c): they must not outlive
 * its keys.
 *
 * Answered on the loop. A repeated SELECT of an unchanged mailbox needs
 * no read at all, so it need not go to the pool (two thread wakeups of
 * its ~0.25 ms). Each entry also keeps, of the last view made or hit on
 * the pool, the name asked for, the mailbox row (MAILBOX_INFO), the
 * keywords, and the alias's write generation when that work item
 * started (srv_alias_work_gen). srv_op_mailbox_view answers from the
 * entry on the loop thread, with the bytes the pool would send, when
 * srv_alias_quiet_gen says the alias is open, nothing of it is queued or
 * running, and its generation is still the entry's: every work item that
 * may write (anything but read-only mbops: APPEND, STORE, EXPUNGE,
 * COPY/MOVE, CREATE/RENAME/DELETE, SUBSCRIBE, deliveries, opens and
 * closes...) moves the generation on the loop before its answer is
 * sent. Otherwise (or for another UIDVALIDITY) the request takes the
 * pool as before. Rule kept: a change answered to any client before a
 * MAILBOX_VIEW is sent is in that view's answer.
 *
 * A view the client holds. A re-SELECT sends VIEW_HELD: the mailbox row
 * (MAILBOX_ID, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, MESSAGES) of a view
 * it still has exactly as it was built. When the row this answer is made
 * of is that row, the answer is MESSAGES, MAILBOX_INFO, the keywords and
 * VIEW_UNCHANGED, without ranges or runs: by the cache key's argument
 * above (and MAILBOX_ID with UIDVALIDITY naming one mailbox for good)
 * the same row is the same UIDs and flags. The row compared is the one
 * the answer carries, so the rule above holds as it does for the full
 * answer; whichever path answers (loop, cache, patch, read).
 */
#include "srv_ops_mbox.h"
#include "srv_ops_view.h"

#include "eng_error.h"
#include "rpc_codec.h"
#include "rpc_proto.h"

#include "srv_alias.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

srv_handler_fn srv_op_mailbox_view;

/* Keywords listed at most (the imapd's FLAGS list has the same bound). */
#define VIEW_KEYWORDS_MAX 1000

#define VIEW_CACHE_SLOTS 16
#define VIEW_CACHE_MAX_BYTES (2u * 1024 * 1024)
#define VIEW_CACHE_BUDGET (8u * 1024 * 1024)
/* Changed messages (and, apart, expunged UIDs) a patch takes at most:
 * 512 KiB and 256 KiB transiently; past that, the rows are read. */
#define VIEW_PATCH_MAX_CHANGES 65536u

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

/* Appends the UIDs lo..hi (above every UID so far), all with flags. */
static void view_add(struct view_ctx *c, uint32_t lo, uint32_t hi,
		     uint32_t flags)
{
	uint64_t count = (uint64_t)hi - lo + 1;

	if (c->n > 0 && lo == (uint64_t)c->hi + 1) {
		c->hi = hi;
	} else {
		if (c->n > 0)
			put_pair(&c->ranges, c->lo, c->hi);
		c->lo = lo;
		c->hi = hi;
	}
	if (c->n > 0 && flags == c->run_flags &&
	    c->run_len + count <= UINT32_MAX) {
		c->run_len += (uint32_t)count;
	} else {
		if (c->n > 0)
			put_pair(&c->runs, c->run_len, c->run_flags);
		c->run_flags = flags;
		c->run_len = (uint32_t)count;
	}
	c->n += count;
}

/* The last range and run, once every UID is in. */
static void view_finish(struct view_ctx *c)
{
	if (c->n > 0) {
		put_pair(&c->ranges, c->lo, c->hi);
		put_pair(&c->runs, c->run_len, c->run_flags);
	}
}

static int view_cb(void *ctx, uint32_t uid, uint32_t flags)
{
	view_add(ctx, uid, uid, flags);
	return 0;
}

static int keyword_cb(void *ctx, const char *name)
{
	struct view_ctx *c = ctx;

	eng_buf_append(&c->keywords, name, strlen(name) + 1);
	return 0;
}

/* ---- the cache of answers ---- */

/* VIEW_HELD of the request (op->ctx), NULL if none or incomplete. */
struct view_held {
	uint64_t mailbox_id, highestmodseq;
	uint32_t uidvalidity, uidnext, messages;
};

static struct view_held *held_parse(const rpc_view *args)
{
	struct view_held h, *copy;
	rpc_view g;

	if (rpc_get_group(args, RPC_T_VIEW_HELD, &g) != 0 ||
	    rpc_get_u64(&g, RPC_T_MAILBOX_ID, &h.mailbox_id) != 0 ||
	    rpc_get_u32(&g, RPC_T_UIDVALIDITY, &h.uidvalidity) != 0 ||
	    rpc_get_u32(&g, RPC_T_UIDNEXT, &h.uidnext) != 0 ||
	    rpc_get_u64(&g, RPC_T_HIGHESTMODSEQ, &h.highestmodseq) != 0 ||
	    rpc_get_u32(&g, RPC_T_MESSAGES, &h.messages) != 0)
		return NULL;
	copy = eng_malloc(sizeof(*copy));
	*copy = h;
	return copy;
}

/* The caller holds the view of mb's row. */
static bool held_is(const srv_mbop *op, const eng_mailbox *mb)
{
	const struct view_held *h = op->ctx;

	return h != NULL && h->mailbox_id == (uint64_t)mb->id &&
		h->uidvalidity == mb->uidvalidity &&
		h->uidnext == mb->uidnext &&
		h->highestmodseq == mb->highestmodseq &&
		h->messages == mb->messages;
}

static struct view_entry {
	bool used;
	uint64_t last_use;
	struct view_key key;
	uint64_t n;
	eng_buf ranges, runs;
	/* For the loop (view_loop_answer): the last answer made of it on
	 * the pool, at the alias's write generation gen (0: none). */
	uint64_t gen;
	char *asked;                 /* the canonical name asked for */
	eng_mailbox info;            /* the row, info.name owned */
	eng_buf keywords;            /* as in struct view_ctx */
} view_cache[VIEW_CACHE_SLOTS];
static uint64_t view_clock;
static size_t view_cache_bytes;     /* capacity of every entry's buffers */
static size_t view_entry_max = VIEW_CACHE_MAX_BYTES;
static size_t view_budget = VIEW_CACHE_BUDGET;
static struct srv_view_stats view_stats;
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

/* An older state of k's mailbox (same UIDVALIDITY, lower HIGHESTMODSEQ)
 * into c, its HIGHESTMODSEQ into *modseq_r; false if none is kept. */
static bool view_cache_base(const struct view_key *k, struct view_ctx *c,
			    uint64_t *modseq_r)
{
	bool found = false;

	pthread_mutex_lock(&view_lock);
	for (size_t i = 0; i < VIEW_CACHE_SLOTS && !found; i++) {
		struct view_entry *e = &view_cache[i];

		if (!e->used || strcmp(e->key.alias_id, k->alias_id) != 0 ||
		    e->key.mailbox_id != k->mailbox_id ||
		    e->key.uidvalidity != k->uidvalidity ||
		    e->key.highestmodseq >= k->highestmodseq)
			continue;
		buf_copy(&c->ranges, &e->ranges);
		buf_copy(&c->runs, &e->runs);
		c->n = e->n;
		*modseq_r = e->key.highestmodseq;
		found = true;
	}
	pthread_mutex_unlock(&view_lock);
	return found;
}

/* What the loop's copy of an answer holds (counted in view_cache_bytes). */
static size_t loop_bytes(const struct view_entry *e)
{
	return e->keywords.cap + (e->asked != NULL ? strlen(e->asked) + 1 : 0) +
		(e->info.name != NULL ? strlen(e->info.name) + 1 : 0);
}

/* Drops the loop's copy of e's answer (the lock held). */
static void loop_forget(struct view_entry *e)
{
	view_cache_bytes -= loop_bytes(e);
	eng_buf_free(&e->keywords);
	free(e->asked);
	eng_mailbox_clear(&e->info);
	e->asked = NULL;
	e->gen = 0;
}

/* Empties a slot (the lock held). */
static void view_entry_drop(struct view_entry *e)
{
	loop_forget(e);
	view_cache_bytes -= e->ranges.cap + e->runs.cap;
	/* UIDs and flags: not secrets, but not left behind either. */
	eng_buf_free(&e->ranges);
	eng_buf_free(&e->runs);
	memset(e, 0, sizeof(*e));
}

/* Keeps with e what the loop needs to give op's answer again while the
 * alias's generation stays op->alias_gen (the lock held). */
static void loop_note(struct view_entry *e, const srv_mbop *op,
		      const eng_mailbox *mb, const eng_buf *kw)
{
	loop_forget(e);
	if (op->alias_gen == 0)
		return;
	e->gen = op->alias_gen;
	e->asked = eng_strdup(op->mailbox);
	e->info = *mb;
	e->info.name = eng_strdup(mb->name);
	memset(&e->keywords, 0, sizeof(e->keywords));
	buf_copy(&e->keywords, kw);
	view_cache_bytes += loop_bytes(e);
}

void srv_view_cache_forget(const char *alias_id)
{
	pthread_mutex_lock(&view_lock);
	for (size_t i = 0; i < VIEW_CACHE_SLOTS; i++) {
		struct view_entry *e = &view_cache[i];

		if (e->used && (alias_id == NULL ||
				strcmp(e->key.alias_id, alias_id) == 0))
			view_entry_drop(e);
	}
	pthread_mutex_unlock(&view_lock);
}

void srv_view_cache_stats(const char *alias_id, struct srv_view_stats *out)
{
	pthread_mutex_lock(&view_lock);
	*out = view_stats;
	out->entries = 0;
	for (size_t i = 0; i < VIEW_CACHE_SLOTS; i++)
		out->entries += view_cache[i].used &&
			(alias_id == NULL ||
			 strcmp(view_cache[i].key.alias_id, alias_id) == 0);
	pthread_mutex_unlock(&view_lock);
}

void srv_view_cache_limits(size_t entry_max, size_t budget)
{
	pthread_mutex_lock(&view_lock);
	view_entry_max = entry_max > 0 && entry_max < VIEW_CACHE_MAX_BYTES ?
		entry_max : VIEW_CACHE_MAX_BYTES;
	view_budget = budget > 0 ? budget : VIEW_CACHE_BUDGET;
	pthread_mutex_unlock(&view_lock);
}

/* The capacity eng_buf gives a copy of len bytes (64, doubled until
 * len + 1 fit). */
static size_t buf_cap_for(size_t len)
{
	size_t cap = 64;

	while (cap < len + 1)
		cap *= 2;
	return cap;
}

/* Drops the least recently used entries but keep until need more bytes
 * fit in view_budget (the lock held). */
static void view_cache_make_room(const struct view_entry *keep, size_t need)
{
	while (view_cache_bytes + need > view_budget) {
		struct view_entry *lru = NULL;

		for (size_t i = 0; i < VIEW_CACHE_SLOTS; i++) {
			struct view_entry *x = &view_cache[i];

			if (x->used && x != keep &&
			    (lru == NULL || x->last_use < lru->last_use))
				lru = x;
		}
		if (lru == NULL)
			return;
		view_entry_drop(lru);
	}
}

/* Keeps c's answer for k (op's, of mb) in this mailbox's slot, else a
 * free one, else the least recently used one (if it is not too big). */
static void view_cache_put(const struct view_key *k, const struct view_ctx *c,
			   const srv_mbop *op, const eng_mailbox *mb)
{
	struct view_entry *e = NULL;
	size_t need = buf_cap_for(c->ranges.len) + buf_cap_for(c->runs.len) +
		(c->keywords.len > 0 ? buf_cap_for(c->keywords.len) : 0);

	pthread_mutex_lock(&view_lock);
	if (c->ranges.len + c->runs.len > view_entry_max || need > view_budget) {
		pthread_mutex_unlock(&view_lock);
		return;
	}
	for (size_t i = 0; i < VIEW_CACHE_SLOTS; i++) {
		struct view_entry *x = &view_cache[i];

		if (x->used && strcmp(x->key.alias_id, k->alias_id) == 0 &&
		    x->key.mailbox_id == k->mailbox_id) {
			e = x;     /* this mailbox's older state */
			break;
		}
		if (e == NULL || (e->used && (!x->used ||
					      x->last_use < e->last_use)))
			e = x;
	}
	if (e->used)
		view_entry_drop(e);
	view_cache_make_room(e, need);     /* the buffers are made afresh */
	e->used = true;
	e->key = *k;
	e->n = c->n;
	e->last_use = ++view_clock;
	buf_copy(&e->ranges, &c->ranges);
	buf_copy(&e->runs, &c->runs);
	view_cache_bytes += e->ranges.cap + e->runs.cap;
	loop_note(e, op, mb, &c->keywords);
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

	if (err == 0)
		view_finish(c);
	pthread_mutex_lock(&view_lock);
	view_stats.scanned++;
	pthread_mutex_unlock(&view_lock);
	return err;
}

/* ---- patching an older view with the changes since its MODSEQ ---- */

struct view_change {
	uint32_t uid, flags;
};

struct view_changes {
	struct view_change *changed;
	uint32_t *vanished;
	size_t n_changed, n_vanished;
};

/* Returned by the callbacks past VIEW_PATCH_MAX_CHANGES: not an error. */
#define VIEW_TOO_MANY 1

static int changed_cb(void *ctx, uint32_t uid, uint32_t flags)
{
	struct view_changes *ch = ctx;

	if (ch->n_changed >= VIEW_PATCH_MAX_CHANGES)
		return VIEW_TOO_MANY;
	if (ch->n_changed % 256 == 0)
		ch->changed = eng_realloc(ch->changed, (ch->n_changed + 256) *
					  sizeof(*ch->changed));
	ch->changed[ch->n_changed].uid = uid;
	ch->changed[ch->n_changed++].flags = flags;
	return 0;
}

static int vanished_cb(void *ctx, uint32_t uid, uint32_t flags)
{
	struct view_changes *ch = ctx;

	(void)flags;
	if (ch->n_vanished >= VIEW_PATCH_MAX_CHANGES)
		return VIEW_TOO_MANY;
	if (ch->n_vanished % 256 == 0)
		ch->vanished = eng_realloc(ch->vanished, (ch->n_vanished + 256) *
					   sizeof(*ch->vanished));
	ch->vanished[ch->n_vanished++] = uid;
	return 0;
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
		(uint32_t)p[2] << 8 | p[3];
}

/* A walk over a cached view's UIDs, a block at a time. */
struct view_walk {
	const uint8_t *ranges, *runs;
	size_t n_ranges, n_runs;
	size_t ri, fi;               /* the current range, the next run */
	uint64_t uid, hi;            /* the next UID, its range's end */
	uint32_t left, flags;        /* UIDs left in the run, its flags */
	bool done;
};

/* The next run once the current one is used up; false if there is none. */
static bool walk_run(struct view_walk *w)
{
	if (w->left > 0)
		return true;
	if (w->fi >= w->n_runs)
		return false;
	w->left = get_u32(w->runs + 8 * w->fi);
	w->flags = get_u32(w->runs + 8 * w->fi + 4);
	w->fi++;
	return w->left > 0;
}

/* Loads range ri; false if the ranges and the runs do not match. */
static bool walk_load(struct view_walk *w)
{
	if (w->ri >= w->n_ranges) {
		w->done = true;
		return w->left == 0 && w->fi == w->n_runs;
	}
	w->uid = get_u32(w->ranges + 8 * w->ri);
	w->hi = get_u32(w->ranges + 8 * w->ri + 4);
	return w->uid >= 1 && w->uid <= w->hi && walk_run(w);
}

/* Moves k UIDs on (k within the range and the run). */
static bool walk_skip(struct view_walk *w, uint64_t k)
{
	w->uid += k;
	w->left -= (uint32_t)k;
	if (w->uid > w->hi) {
		w->ri++;
		return walk_load(w);
	}
	return walk_run(w);
}

/* base's UIDs and flags with ch applied, into out (empty); false if base
 * is malformed or out would pass VIEW_CACHE_MAX_BYTES. */
static bool view_merge(const struct view_ctx *base,
		       const struct view_changes *ch, struct view_ctx *out)
{
	struct view_walk w = {
		.ranges = (const uint8_t *)base->ranges.data,
		.runs = (const uint8_t *)base->runs.data,
		.n_ranges = base->ranges.len / 8, .n_runs = base->runs.len / 8,
	};
	size_t ci = 0, vi = 0;

	if (!walk_load(&w))
		return false;
	for (;;) {
		uint64_t cu = ci < ch->n_changed ? ch->changed[ci].uid : UINT64_MAX;
		uint64_t vu = vi < ch->n_vanished ? ch->vanished[vi] :
			UINT64_MAX;
		uint64_t next = cu < vu ? cu : vu;

		if (out->ranges.len + out->runs.len > VIEW_CACHE_MAX_BYTES)
			return false;
		if (w.done && next == UINT64_MAX)
			break;
		if (!w.done && w.uid < next) {
			/* An unchanged block: up to the range's or the run's
			 * end, or the next change. */
			uint64_t k = w.hi - w.uid + 1;

			if (k > w.left)
				k = w.left;
			if (k > next - w.uid)
				k = next - w.uid;
			view_add(out, (uint32_t)w.uid,
				 (uint32_t)(w.uid + k - 1), w.flags);
			if (!walk_skip(&w, k))
				return false;
			continue;
		}
		if (!w.done && w.uid == next && !walk_skip(&w, 1))
			return false;
		if (cu == next) {    /* the row is there: its flags now */
			view_add(out, ch->changed[ci].uid, ch->changed[ci].uid,
				 ch->changed[ci].flags);
			ci++;
		}
		if (vu == next)
			vi++;
	}
	view_finish(out);
	return true;
}

/*
 * The view of mb from an older cached one and the changes since: 1 and
 * the view in c, 0 if there is no older view or the patch does not hold
 * (c is then empty and the rows must be read), or an engine error.
 */
static int view_patch(eng_store *st, const eng_mailbox *mb,
		      const struct view_key *key, struct view_ctx *c)
{
	struct view_ctx base = { .ranges = ENG_BUF_INIT, .runs = ENG_BUF_INIT };
	struct view_changes ch = { 0 };
	uint64_t since = 0;
	int err, ok = 0;

	if (!view_cache_base(key, &base, &since))
		return 0;
	err = eng_mailbox_view_since(st, mb->id, since, changed_cb,
				     vanished_cb, &ch);
	if (err == 0 && view_merge(&base, &ch, c) && c->n == mb->messages)
		ok = 1;
	if (err == VIEW_TOO_MANY)
		err = 0;
	if (ok == 0) {
		eng_buf_reset(&c->ranges);
		eng_buf_reset(&c->runs);
		c->n = 0;
		c->lo = c->hi = c->run_flags = c->run_len = 0;
	} else {
		pthread_mutex_lock(&view_lock);
		view_stats.patched++;
		pthread_mutex_unlock(&view_lock);
	}
	eng_buf_free(&base.ranges);
	eng_buf_free(&base.runs);
	free(ch.changed);
	free(ch.vanished);
	return err != 0 ? err : ok;
}

/* The answer: MESSAGES and MAILBOX_INFO first (the scalars belong in the
 * first part), the keywords (NUL-terminated names in kw), the ranges and
 * the runs; VIEW_UNCHANGED instead of these if the caller holds them
 * (then true). */
static bool view_answer(srv_mbop *op, const eng_mailbox *mb, uint64_t n,
			const eng_buf *kw, const eng_buf *ranges,
			const eng_buf *runs)
{
	rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_MESSAGES, n);
	srv_mbop_put_mailbox_info(op, mb);
	for (size_t off = 0; off < kw->len;) {
		const char *k = kw->data + off;
		size_t len = strlen(k);

		rpc_put_str(srv_mbop_part(op, 1, len + 8), RPC_T_KEYWORD, k);
		off += len + 1;
	}
	if (held_is(op, mb)) {
		rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_VIEW_UNCHANGED, 1);
		return true;
	}
	put_packed(op, RPC_T_UIDSET, ranges);
	put_packed(op, RPC_T_FLAG_RUNS, runs);
	return false;
}

/* The answer from the cached view of k's state, written from the entry
 * itself (no copy of its ranges and runs first); false if there is none. */
static bool view_cache_answer(srv_mbop *op, const eng_mailbox *mb,
			      const struct view_key *k, const eng_buf *kw)
{
	bool hit = false;

	pthread_mutex_lock(&view_lock);
	for (size_t i = 0; i < VIEW_CACHE_SLOTS && !hit; i++) {
		struct view_entry *e = &view_cache[i];

		if (!e->used || memcmp(&e->key, k, sizeof(*k)) != 0)
			continue;
		view_stats.unchanged += view_answer(op, mb, e->n, kw,
						    &e->ranges, &e->runs);
		e->last_use = ++view_clock;
		hit = true;
		view_stats.hits++;
		loop_note(e, op, mb, kw);
	}
	pthread_mutex_unlock(&view_lock);
	return hit;
}

static int view_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct view_ctx c = { .ranges = ENG_BUF_INIT, .runs = ENG_BUF_INIT,
			      .keywords = ENG_BUF_INIT };
	struct view_key key;
	int err, patched;

	/* The keywords first: no statement runs under the cache's lock. */
	if ((err = eng_mailbox_keywords(st, mb->id, VIEW_KEYWORDS_MAX,
					keyword_cb, &c)) != 0)
		goto out;
	view_key_of(op, mb, &key);
	if (view_cache_answer(op, mb, &key, &c.keywords))
		goto out;
	if ((patched = view_patch(st, mb, &key, &c)) < 0)
		err = patched;
	else if (patched == 0)
		err = view_read(st, mb, &c);
	if (err == 0) {
		view_cache_put(&key, &c, op, mb);
		if (view_answer(op, mb, c.n, &c.keywords, &c.ranges, &c.runs)) {
			pthread_mutex_lock(&view_lock);
			view_stats.unchanged++;
			pthread_mutex_unlock(&view_lock);
		}
	}
out:
	eng_buf_free(&c.ranges);
	eng_buf_free(&c.runs);
	eng_buf_free(&c.keywords);
	return err;
}

/* Loop thread: op answered from the entry a read-only item recorded at
 * the alias's current generation, if the alias is quiet (see the top);
 * false: it takes the pool. */
static bool view_loop_answer(srv_mbop *op)
{
	uint64_t gen;
	bool hit = false;

	if (!srv_alias_quiet_gen(op->srv->aliases, op->alias_id, &gen)) {
		pthread_mutex_lock(&view_lock);
		view_stats.loop_misses++;
		pthread_mutex_unlock(&view_lock);
		return false;
	}
	pthread_mutex_lock(&view_lock);
	for (size_t i = 0; i < VIEW_CACHE_SLOTS && !hit; i++) {
		struct view_entry *e = &view_cache[i];

		if (!e->used || e->gen != gen || e->asked == NULL ||
		    strcmp(e->key.alias_id, op->alias_id) != 0 ||
		    strcmp(e->asked, op->mailbox) != 0)
			continue;
		/* Another UIDVALIDITY: the pool answers EMODIFIED. */
		if (op->check_uidvalidity &&
		    e->info.uidvalidity != op->uidvalidity)
			break;
		view_stats.unchanged += view_answer(op, &e->info, e->n,
						    &e->keywords, &e->ranges,
						    &e->runs);
		e->last_use = ++view_clock;
		hit = true;
	}
	if (hit)
		view_stats.loop_hits++;
	else
		view_stats.loop_misses++;
	pthread_mutex_unlock(&view_lock);
	return hit;
}

void srv_op_mailbox_view(srv_req *req)
{
	srv_mbop *op;
	int err;

	if ((op = srv_mbop_new(req, true, &err)) == NULL) {
		srv_fail(req, err);
		return;
	}
	/* One read snapshot on the pool, and the alias's write generation
	 * stays after it (what view_loop_answer relies on). */
	op->read_only = true;
	op->ctx = held_parse(&req->args);
	op->free_fn = free;
	if (view_loop_answer(op)) {
		srv_mbop_done(op, 0);
		return;
	}
	srv_mbop_submit(op, view_run);
}
