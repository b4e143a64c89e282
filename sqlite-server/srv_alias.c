/*
 * The alias table, per-alias work queues, sessions and housekeeping (idle
 * close, release, the cache bound, shutdown). The unlock path (Argon2id,
 * the fast path, joins, the bounded waiting queue) is srv_unlock.c; what
 * the two share is srv_alias_private.h.
 *
 * State diagram of an alias (loop thread's view):
 *
 *   locked ──unlock──▶ open ◀──(more sessions / work)──┐
 *     ▲                 │  ▲                           │
 *     │      no work for│  │next request               │
 *     │  release_seconds▼  │(srv_alias_store)          │
 *     │               released (keys kept, db closed)  │
 *     └──close work─────┴── idle & no session ─────────┘
 *
 * "Unlocked" is a->mk != NULL (open or released); a->st != NULL only while
 * open. Release exists for memory (bench/README.md, "IMAP idle memory"):
 * an idle SQLCipher connection holds ~0.5 MB of page cache, statements and
 * cipher buffers; the keys cost a few pages.
 *
 * Invariants:
 *  - at most one work item of an alias is on the pool at a time
 *    (a->running), so a->st, a->mk and a->sk are only touched by that
 *    item; the loop thread reads a->st and a->mk only while !a->running;
 *  - a->sessions counts the live session handles that point at a;
 *  - an alias with sessions > 0 is never closed (its key would be lost);
 *  - an alias entry is freed only when it is locked, idle, has no
 *    sessions and nothing queued;
 *  - verifiers (the unlock fast path) exist only while MK is in memory
 *    and no close is pending: they are wiped, and a->closing set, when
 *    close work is submitted (idle/LRU close, shutdown, and
 *    srv_sessions_end_alias before ALIAS_REMOVE / RESTORE_ALIAS) and when
 *    a work item finds the alias closed after an I/O error; only a full
 *    unlock whose open ran after the last close (close_gen unchanged)
 *    records a verifier again and clears a->closing;
 *  - a->gen (the write generation) changes after every work item that
 *    did not declare itself read-only (srv_alias_work_read_only), before
 *    its done callback answers, and whenever a close is queued; values
 *    come from the table's clock, never reused by another alias entry.
 *    So while nothing of the alias is queued or running, an answer
 *    recorded by a read-only item that started at generation a->gen is
 *    of the store's current state (srv_alias_quiet_gen; the MAILBOX_VIEW
 *    loop path, srv_ops_view.c).
 */
#include "srv_alias_private.h"
#include "srv_keyslab.h"
#include "srv_ops_view.h"
#include "eng_error.h"

#include <errno.h>
#include <malloc.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define QUEUE_MAX 1024

static atomic_uint_fast64_t tables_made;

struct work_item {
	struct work_item *next;
	uv_work_t req;
	srv_alias *alias;
	srv_work_fn *work;
	srv_done_fn *done;
	void *ctx;
	int result;
};

struct session {
	struct session *next;
	uint8_t handle[SRV_SESSION_BYTES];
	srv_alias *alias;
	uint64_t last_used_ms;
};

void srv_alias_config_default(srv_alias_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->cache_size = 128;
	cfg->idle_seconds = 300;
	cfg->session_idle_seconds = 1800;
	cfg->release_seconds = 10;
	cfg->max_concurrent_unlocks = 2;
	cfg->max_waiting_unlocks = UNLOCK_WAITING_DEFAULT;
	cfg->kdf_params = eng_kdf_default();
	eng_store_options_default(&cfg->store_opt);
}

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ull;

	while (*s != '\0')
		h = (h ^ (unsigned char)*s++) * 1099511628211ull;
	return h;
}

bool alias_id_ok(const char *id)
{
	size_t len = strlen(id);

	if (len == 0 || len > SRV_ALIAS_ID_MAX)
		return false;
	/* It becomes a file name: hex and '-' only. */
	for (const char *p = id; *p != '\0'; p++) {
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
		      *p == '-'))
			return false;
	}
	return true;
}

srv_alias *alias_find(srv_aliases *as, const char *id)
{
	srv_alias *a = as->buckets[hash_str(id) % ALIAS_BUCKETS];

	while (a != NULL && strcmp(a->id, id) != 0)
		a = a->hash_next;
	return a;
}

/* A new write generation for a (loop thread). */
static void alias_bump(srv_alias *a)
{
	a->gen = ++a->owner->gen_clock;
}

srv_alias *alias_get(srv_aliases *as, const char *id)
{
	srv_alias *a = alias_find(as, id);
	size_t b;

	if (a != NULL)
		return a;
	a = eng_calloc(1, sizeof(*a));
	a->owner = as;
	snprintf(a->id, sizeof(a->id), "%s", id);
	if (asprintf(&a->db_path, "%s/mailboxes/%s.db", as->data_dir, id) < 0 ||
	    asprintf(&a->spool_dir, "%s/spool/%s", as->data_dir, id) < 0)
		eng_oom(0);
	a->last_used_ms = uv_now(as->loop);
	alias_bump(a);
	b = hash_str(id) % ALIAS_BUCKETS;
	a->hash_next = as->buckets[b];
	as->buckets[b] = a;
	as->n_aliases++;
	return a;
}

static void mailbox_forget(srv_alias *a);

static void alias_unlink_free(srv_aliases *as, srv_alias *a)
{
	srv_alias **pp = &as->buckets[hash_str(a->id) % ALIAS_BUCKETS];

	while (*pp != a)
		pp = &(*pp)->hash_next;
	*pp = a->hash_next;
	as->n_aliases--;
	mailbox_forget(a);
	free(a->db_path);
	free(a->spool_dir);
	free(a);
}

/* ---- the per-alias queue ---- */

static void queue_start(srv_alias *a);
static void verifiers_clear(srv_alias *a);

static int release_work(srv_alias *a, void *ctx);

/* Takes MK and the secret key into one slot of the guarded key pages
 * (their own allocations are wiped and freed). */
void alias_keys_set(srv_alias *a, uint8_t **mk, uint8_t **sk)
{
	uint8_t *keys = srv_keyslab_get(a->owner->keys);

	memcpy(keys, *mk, ENG_MK_BYTES);
	memcpy(keys + ENG_MK_BYTES, *sk, ENG_SK_BYTES);
	eng_secret_free(mk);
	eng_secret_free(sk);
	a->mk = keys;
	a->sk = keys + ENG_MK_BYTES;
}

static void alias_keys_free(srv_alias *a)
{
	srv_keyslab_put(a->owner->keys, &a->mk);   /* sk with it */
	a->sk = NULL;
}

static void work_cb(uv_work_t *req)
{
	struct work_item *w = req->data;
	srv_alias *a = w->alias;

	w->result = w->work(a, w->ctx);
	/* After a full disk or an I/O error the connection must not be used
	 * again (store.h): reopen it now, with the key we still hold, so the
	 * next request finds a working store (or a locked alias). */
	if (a->st != NULL && eng_store_needs_reopen(a->st)) {
		a->run_read_only = false;
		eng_store_close(&a->st);
		if (a->mk != NULL && alias_open(a, a->mk, false) != 0) {
			eng_log(ENG_LOG_ERROR, "alias %s: cannot reopen its "
				"database after an I/O error", a->id);
			srv_view_cache_forget(a->id);
			alias_keys_free(a);
		}
	}
}

static void after_work_cb(uv_work_t *req, int status)
{
	struct work_item *w = req->data;
	srv_alias *a = w->alias;

	a->running = false;
	a->owner->work_done++;
	/* Before the answer: a request sent after it sees the change. */
	if (!a->run_read_only || status == UV_ECANCELED)
		alias_bump(a);
	/* The item may have closed it (an I/O error it could not reopen
	 * from, srv_alias_close_now): MK is gone, so are the verifiers. An
	 * open queued earlier that runs later reopens it and re-arms them. */
	if (a->mk == NULL && a->n_verifiers > 0)
		verifiers_clear(a);
	if (a->reopened) {
		a->reopened = false;
		a->owner->reopens++;
	}
	/* A release is not a use: the idle close still counts from the
	 * last real one. */
	if (w->work != release_work)
		a->last_used_ms = uv_now(a->owner->loop);
	if (w->done != NULL)
		w->done(w->ctx, status == UV_ECANCELED ? ENG_EBUSY : w->result);
	free(w);
	queue_start(a);
}

static void queue_start(srv_alias *a)
{
	struct work_item *w = a->head;

	if (a->running || w == NULL)
		return;
	a->head = w->next;
	if (a->head == NULL)
		a->tail = NULL;
	a->queued--;
	a->running = true;
	a->run_gen = a->gen;
	a->run_read_only = false;
	w->req.data = w;
	if (uv_queue_work(a->owner->loop, &w->req, work_cb, after_work_cb) != 0) {
		/* Cannot happen with a valid loop; fail the item, not the loop. */
		a->running = false;
		if (w->done != NULL)
			w->done(w->ctx, ENG_EIO);
		free(w);
	}
}

static int submit(srv_aliases *as, const char *alias_id, srv_work_fn *work,
		  srv_done_fn *done, void *ctx, bool during_shutdown)
{
	srv_alias *a;
	struct work_item *w;

	if (!alias_id_ok(alias_id))
		return ENG_EINVAL;
	if (as->shutting_down && !during_shutdown)
		return ENG_EBUSY;
	a = alias_get(as, alias_id);
	if (a->queued >= QUEUE_MAX)
		return ENG_EBUSY;
	w = eng_calloc(1, sizeof(*w));
	w->alias = a;
	w->work = work;
	w->done = done;
	w->ctx = ctx;
	if (a->tail != NULL)
		a->tail->next = w;
	else
		a->head = w;
	a->tail = w;
	a->queued++;
	queue_start(a);
	return 0;
}

int srv_alias_submit(srv_aliases *as, const char *alias_id, srv_work_fn *work,
		     srv_done_fn *done, void *ctx)
{
	return submit(as, alias_id, work, done, ctx, false);
}

/* ---- accessors for work functions ---- */

eng_store *srv_alias_store(srv_alias *a)
{
	int err;

	/* Released (keys kept, connection closed): reopen with the raw key. */
	if (a->st == NULL && a->mk != NULL) {
		if ((err = alias_open(a, a->mk, false)) != 0)
			eng_log(ENG_LOG_ERROR, "alias %s: cannot reopen its "
				"released database: %s", a->id,
				eng_strerror(err));
		else
			a->reopened = true;
	}
	return a->st;
}

bool srv_alias_quiet_gen(srv_aliases *as, const char *alias_id,
			 uint64_t *gen_r)
{
	srv_alias *a = alias_find(as, alias_id);

	/* The loop may read a->st and a->mk: nothing of a runs. */
	if (a == NULL || as->shutting_down || a->running || a->queued > 0 ||
	    a->closing || a->st == NULL || a->mk == NULL)
		return false;
	*gen_r = a->gen;
	return true;
}

uint64_t srv_alias_work_gen(const srv_alias *a)
{
	return a->run_gen;
}

void srv_alias_work_read_only(srv_alias *a)
{
	a->run_read_only = true;
}

static void mailbox_forget(srv_alias *a)
{
	eng_mailbox_clear(&a->mb);
	free(a->mb_key);
	a->mb_key = NULL;
	a->mb_gen = 0;
}

int srv_alias_mailbox_get(srv_alias *a, const char *name, eng_mailbox *mb_r)
{
	int err;

	if (a->mb_gen != 0 && a->mb_gen == a->run_gen &&
	    strcmp(a->mb_key, name) == 0) {
		*mb_r = a->mb;
		mb_r->name = eng_strdup(a->mb.name);
		return 0;
	}
	mailbox_forget(a);
	if ((err = eng_mailbox_get(a->st, name, mb_r)) != 0)
		return err;
	a->mb = *mb_r;
	a->mb.name = eng_strdup(mb_r->name);
	a->mb_key = eng_strdup(name);
	a->mb_gen = a->run_gen;
	return 0;
}

const char *srv_alias_id(const srv_alias *a)
{
	return a->id;
}

const char *srv_alias_spool_dir(const srv_alias *a)
{
	return a->spool_dir;
}

int srv_alias_drain(srv_alias *a, eng_drain_cb *cb, void *ctx, size_t *n_r)
{
	eng_store *st;

	if (n_r != NULL)
		*n_r = 0;
	if (a->sk == NULL || (st = srv_alias_store(a)) == NULL)
		return 0;
	return eng_store_drain_spool(st, a->spool_dir, a->sk, cb, ctx, n_r);
}

const uint8_t *srv_alias_mk(srv_alias *a)
{
	return a->mk;
}

void srv_alias_close_now(srv_alias *a)
{
	alias_close(a);
}

/* ---- opening and closing (on the alias's queue) ---- */

static int mkdir_p(const char *path)
{
	char *copy = eng_strdup(path);
	int ret = 0;

	for (char *p = copy + 1; ; p++) {
		if (*p == '/' || *p == '\0') {
			char c = *p;

			*p = '\0';
			if (mkdir(copy, 0700) != 0 && errno != EEXIST) {
				ret = errno == ENOSPC ? ENG_ENOSPC : ENG_EIO;
				break;
			}
			*p = c;
			if (c == '\0')
				break;
		}
	}
	free(copy);
	return ret;
}

/* Opens (creating when asked) the alias's database with MK: the raw key
 * (BLAKE2b of MK) costs no Argon2id, so a released alias reopens cheaply. */
int alias_open(srv_alias *a, const uint8_t *mk, bool create)
{
	eng_store_options opt = a->owner->cfg.store_opt;
	uint8_t *dbkey = NULL;
	char *parent;
	int err;

	parent = eng_strdup(a->db_path);
	*strrchr(parent, '/') = '\0';
	err = mkdir_p(parent);
	free(parent);
	if (err != 0)
		return err;
	opt.create = create;
	if ((err = eng_derive_db_key(mk, &dbkey)) != 0)
		return err;
	err = eng_store_open(a->db_path, dbkey, &opt, &a->st);
	eng_secret_free(&dbkey);
	return err;
}

void alias_close(srv_alias *a)
{
	srv_view_cache_forget(a->id);   /* no UIDs/flags after the keys go */
	mailbox_forget(a);              /* nor a mailbox name */
	eng_store_close(&a->st);
	alias_keys_free(a);
}

static int close_work(srv_alias *a, void *ctx)
{
	(void)ctx;
	/* A session may have arrived after the close was queued: the loop
	 * only queues closes for aliases without sessions, and unlock work
	 * queued after this one reopens. */
	alias_close(a);
	return 0;
}

/*
 * Release: the connection goes (checkpointed: nothing of it stays in the
 * WAL), the keys stay; srv_alias_store reopens. Queued by the timer only
 * when nothing of the alias is queued or running; anything queued after
 * it finds a->st NULL and reopens.
 */
static int release_work(srv_alias *a, void *ctx)
{
	(void)ctx;
	if (a->st == NULL || a->mk == NULL)
		return 0;
	eng_store_close(&a->st);
	return 0;
}

static void release_done(void *ctx, int result)
{
	srv_aliases *as = ctx;

	(void)result;
	as->releases++;
	as->trim_pending = true;
}

struct create_ctx {
	srv_aliases *as;
	uint8_t *mk;
	srv_done_fn *done;
	void *ctx;
};

static int create_work(srv_alias *a, void *ctx)
{
	struct create_ctx *c = ctx;
	int err;

	if (a->st != NULL || a->mk != NULL)
		return ENG_EEXIST;
	err = alias_open(a, c->mk, true);
	if (err == 0)
		eng_store_close(&a->st);
	a->st = NULL;
	return err;
}

static void create_done(void *ctx, int result)
{
	struct create_ctx *c = ctx;

	/* The new database was opened and closed on a pool thread: what its
	 * creation allocated is free in that thread's arena, trimmed on the
	 * next tick like a release's (541 creations left ~2 MB). */
	c->as->trim_pending = true;
	eng_secret_free(&c->mk);
	if (c->done != NULL)
		c->done(c->ctx, result);
	free(c);
}

int srv_alias_create_db(srv_aliases *as, const char *alias_id,
			const uint8_t *mk, srv_done_fn *done, void *ctx)
{
	struct create_ctx *c = eng_calloc(1, sizeof(*c));
	int err;

	c->as = as;
	c->mk = eng_secret_new(ENG_MK_BYTES);
	memcpy(c->mk, mk, ENG_MK_BYTES);
	c->done = done;
	c->ctx = ctx;
	if ((err = srv_alias_submit(as, alias_id, create_work, create_done,
				    c)) != 0) {
		eng_secret_free(&c->mk);
		free(c);
	}
	return err;
}

/* ---- closing: the unlock fast path goes off ---- */

static void verifiers_clear(srv_alias *a)
{
	sodium_memzero(a->verifiers, sizeof(a->verifiers));
	a->n_verifiers = a->next_verifier = 0;
}

/* Loop thread: a close of a is queued (or happened): the fast path is off
 * from now on, until a full unlock queued after this reopens it. */
static void alias_mark_closing(srv_alias *a)
{
	verifiers_clear(a);
	a->closing = true;
	a->close_gen++;
	alias_bump(a);
}

static int close_submit(srv_aliases *as, srv_alias *a, srv_done_fn *done,
			void *ctx)
{
	alias_mark_closing(a);
	return submit(as, a->id, close_work, done, ctx, true);
}

/* ---- sessions ---- */

void session_add(srv_aliases *as, srv_alias *a,
		 uint8_t handle[SRV_SESSION_BYTES])
{
	struct session *s = eng_calloc(1, sizeof(*s));
	size_t b;

	randombytes_buf(s->handle, sizeof(s->handle));
	s->alias = a;
	s->last_used_ms = uv_now(as->loop);
	b = s->handle[0] | (size_t)s->handle[1] << 8;
	b %= SESSION_BUCKETS;
	s->next = as->sessions[b];
	as->sessions[b] = s;
	as->n_sessions++;
	a->sessions++;
	memcpy(handle, s->handle, SRV_SESSION_BYTES);
}

static struct session **session_slot(srv_aliases *as,
				     const uint8_t handle[SRV_SESSION_BYTES])
{
	size_t b = (handle[0] | (size_t)handle[1] << 8) % SESSION_BUCKETS;
	struct session **pp = &as->sessions[b];

	while (*pp != NULL &&
	       sodium_memcmp((*pp)->handle, handle, SRV_SESSION_BYTES) != 0)
		pp = &(*pp)->next;
	return pp;
}

int srv_session_alias(srv_aliases *as, const uint8_t session[SRV_SESSION_BYTES],
		      char alias_id_r[SRV_ALIAS_ID_MAX + 1])
{
	struct session *s = *session_slot(as, session);

	if (s == NULL)
		return ENG_ENOTFOUND;
	s->last_used_ms = uv_now(as->loop);
	s->alias->last_used_ms = s->last_used_ms;
	memcpy(alias_id_r, s->alias->id, SRV_ALIAS_ID_MAX + 1);
	return 0;
}

static void session_remove(srv_aliases *as, struct session **pp)
{
	struct session *s = *pp;

	*pp = s->next;
	s->alias->sessions--;
	as->n_sessions--;
	sodium_memzero(s->handle, sizeof(s->handle));
	free(s);
}

int srv_session_end(srv_aliases *as, const uint8_t session[SRV_SESSION_BYTES])
{
	struct session **pp = session_slot(as, session);

	if (*pp == NULL)
		return ENG_ENOTFOUND;
	session_remove(as, pp);
	return 0;
}

unsigned srv_sessions_end_alias(srv_aliases *as, const char *alias_id)
{
	srv_alias *a = alias_find(as, alias_id);
	unsigned n = 0;

	/* The caller is about to close it (ALIAS_REMOVE, RESTORE_ALIAS). */
	if (a != NULL)
		alias_mark_closing(a);
	for (size_t b = 0; b < SESSION_BUCKETS; b++) {
		struct session **pp = &as->sessions[b];

		while (*pp != NULL) {
			if (strcmp((*pp)->alias->id, alias_id) == 0) {
				session_remove(as, pp);
				n++;
			} else {
				pp = &(*pp)->next;
			}
		}
	}
	return n;
}

/* ---- housekeeping: expiry, the cache bound, shutdown ---- */

static void closed_cb(void *ctx, int result)
{
	srv_aliases *as = ctx;

	(void)result;
	if (as->shutting_down)
		check_shutdown_done(as);
}

/*
 * SQLite's page cache and statements are many small blocks in the pool
 * threads' malloc arenas: freed, they stay in the process until trimmed.
 * Once per timer tick after releases, free the engine's kept zstd
 * contexts (the reads' ~95 KiB ones, and the appends' ~1 MiB ones: 776
 * KiB of them stayed resident after the loads) and give the free pages
 * back. A load still running makes a context again at its next chunk.
 */
static void release_trim(srv_aliases *as)
{
	if (!as->trim_pending)
		return;
	as->trim_pending = false;
	/* The zstd contexts the body reads kept (message_read.c) go first. */
	(void)eng_message_free_cached();
	(void)eng_append_free_cached();
#ifdef __GLIBC__
	(void)malloc_trim(0);
#endif
}

static void timer_cb(uv_timer_t *t)
{
	srv_aliases *as = t->data;
	uint64_t now = uv_now(as->loop);
	uint64_t session_idle_ms = (uint64_t)as->cfg.session_idle_seconds * 1000;
	uint64_t idle_ms = (uint64_t)as->cfg.idle_seconds * 1000;
	uint64_t release_ms = (uint64_t)as->cfg.release_seconds * 1000;
	unsigned open = 0;

	for (size_t b = 0; b < SESSION_BUCKETS; b++) {
		struct session **pp = &as->sessions[b];

		while (*pp != NULL) {
			if (now - (*pp)->last_used_ms > session_idle_ms)
				session_remove(as, pp);
			else
				pp = &(*pp)->next;
		}
	}
	for (size_t b = 0; b < ALIAS_BUCKETS; b++) {
		srv_alias *a = as->buckets[b], *next;

		for (; a != NULL; a = next) {
			next = a->hash_next;
			if (a->running || a->queued > 0)
				continue;
			if (a->mk != NULL && a->sessions == 0 &&
			    now - a->last_used_ms > idle_ms) {
				(void)close_submit(as, a, NULL, NULL);
			} else if (a->mk != NULL) {
				open++;
				if (a->st != NULL && release_ms > 0 &&
				    now - a->last_used_ms > release_ms)
					(void)submit(as, a->id, release_work,
						     release_done, as, false);
			} else if (a->sessions == 0) {
				alias_unlink_free(as, a);
			}
		}
	}
	release_trim(as);
	/* Over the cache bound: close the least recently used idle ones. */
	while (open > as->cfg.cache_size) {
		srv_alias *lru = NULL;

		for (size_t b = 0; b < ALIAS_BUCKETS; b++) {
			for (srv_alias *a = as->buckets[b]; a != NULL;
			     a = a->hash_next) {
				if (a->mk != NULL && a->sessions == 0 &&
				    !a->running && a->queued == 0 &&
				    (lru == NULL ||
				     a->last_used_ms < lru->last_used_ms))
					lru = a;
			}
		}
		if (lru == NULL)
			break;
		(void)close_submit(as, lru, NULL, NULL);
		open--;
	}
}

int srv_aliases_new(uv_loop_t *loop, const srv_alias_config *cfg,
		    srv_aliases **aliases_r)
{
	srv_aliases *as;
	uint8_t *mk = NULL;
	int err;

	*aliases_r = NULL;
	if (cfg == NULL || cfg->data_dir == NULL)
		return ENG_EINVAL;
	if ((err = eng_crypto_init()) != 0)
		return err;
	{
		char *mb, *sp;

		if (asprintf(&mb, "%s/mailboxes", cfg->data_dir) < 0 ||
		    asprintf(&sp, "%s/spool", cfg->data_dir) < 0)
			eng_oom(0);
		err = mkdir_p(mb);
		if (err == 0)
			err = mkdir_p(sp);
		free(mb);
		free(sp);
		if (err != 0)
			return err;
	}
	as = eng_calloc(1, sizeof(*as));
	as->loop = loop;
	/* Generations unique in the process (the view cache is shared by
	 * every table: tests make several). */
	as->gen_clock = (uint64_t)atomic_fetch_add(&tables_made, 1) << 40;
	as->cfg = *cfg;
	as->data_dir = eng_strdup(cfg->data_dir);
	as->verifier_key = eng_secret_new(32);
	randombytes_buf(as->verifier_key, 32);
	as->keys = srv_keyslab_new(ENG_MK_BYTES + ENG_SK_BYTES);
	as->cfg.data_dir = as->data_dir;
	if (as->cfg.max_concurrent_unlocks == 0)
		as->cfg.max_concurrent_unlocks = 1;
	/* A keyring nobody can open, with the configured cost: unlocks of
	 * unknown aliases run Argon2id on it, so they take as long as a
	 * wrong password. */
	{
		uint8_t pw[32];

		randombytes_buf(pw, sizeof(pw));
		err = eng_keyring_create((const char *)pw, sizeof(pw),
					 cfg->kdf_params, &as->dummy, &mk);
		sodium_memzero(pw, sizeof(pw));
		eng_secret_free(&mk);
	}
	if (err != 0) {
		eng_secret_free(&as->verifier_key);
		srv_keyslab_free(&as->keys);
		free(as->data_dir);
		free(as);
		return err;
	}
	uv_timer_init(loop, &as->timer);
	as->timer.data = as;
	uv_timer_start(&as->timer, timer_cb, 1000, 1000);
	*aliases_r = as;
	return 0;
}

void check_shutdown_done(srv_aliases *as)
{
	void (*done)(void *ctx);

	for (size_t b = 0; b < ALIAS_BUCKETS; b++) {
		for (srv_alias *a = as->buckets[b]; a != NULL; a = a->hash_next) {
			if (a->running || a->queued > 0 || a->mk != NULL ||
			    a->st != NULL)
				return;
		}
	}
	if (as->unlocks_running > 0)
		return;
	done = as->shutdown_done;
	as->shutdown_done = NULL;
	if (done != NULL)
		done(as->shutdown_ctx);
}

void srv_aliases_shutdown(srv_aliases *as, void (*done)(void *ctx), void *ctx)
{
	as->shutting_down = true;
	as->shutdown_done = done;
	as->shutdown_ctx = ctx;
	uv_timer_stop(&as->timer);
	/* Waiting unlocks never start. */
	while (as->wait_head != NULL) {
		struct unlock_req *u = as->wait_head;

		as->wait_head = u->next;
		unlock_answer(as, u, ENG_EBUSY, NULL);
	}
	as->wait_tail = NULL;
	as->unlocks_waiting = 0;
	for (size_t b = 0; b < SESSION_BUCKETS; b++) {
		while (as->sessions[b] != NULL)
			session_remove(as, &as->sessions[b]);
	}
	for (size_t b = 0; b < ALIAS_BUCKETS; b++) {
		for (srv_alias *a = as->buckets[b]; a != NULL; a = a->hash_next) {
			alias_mark_closing(a);
			if (a->mk != NULL || a->st != NULL || a->running ||
			    a->queued > 0)
				(void)close_submit(as, a, closed_cb, as);
		}
	}
	check_shutdown_done(as);
}

static void timer_closed(uv_handle_t *h)
{
	srv_aliases *as = h->data;

	free(as->data_dir);
	free(as);
}

void srv_aliases_free(srv_aliases **asp)
{
	srv_aliases *as = *asp;

	if (as == NULL)
		return;
	*asp = NULL;
	for (size_t b = 0; b < SESSION_BUCKETS; b++) {
		while (as->sessions[b] != NULL)
			session_remove(as, &as->sessions[b]);
	}
	for (size_t b = 0; b < ALIAS_BUCKETS; b++) {
		while (as->buckets[b] != NULL) {
			srv_alias *a = as->buckets[b];

			/* Only reached after shutdown: nothing runs. */
			alias_close(a);
			alias_unlink_free(as, a);
		}
	}
	eng_keyring_free(&as->dummy);
	eng_secret_free(&as->verifier_key);
	srv_keyslab_free(&as->keys);
	/* The timer handle is freed in its close callback. */
	uv_close((uv_handle_t *)&as->timer, timer_closed);
}

void srv_aliases_stats(const srv_aliases *as, srv_alias_stats *stats)
{
	memset(stats, 0, sizeof(*stats));
	stats->aliases = as->n_aliases;
	stats->sessions = as->n_sessions;
	stats->unlocks_running = as->unlocks_running;
	stats->unlocks_waiting = as->unlocks_waiting;
	stats->unlocks_joined = as->unlocks_joined;
	stats->unlocks_refused = as->unlocks_refused;
	stats->unlocks_joins = as->unlocks_joins;
	stats->work_done = as->work_done;
	stats->fast_unlocks = as->fast_unlocks;
	stats->kdf_unlocks = as->kdf_unlocks;
	stats->releases = as->releases;
	stats->reopens = as->reopens;
	for (size_t b = 0; b < ALIAS_BUCKETS; b++) {
		for (srv_alias *a = as->buckets[b]; a != NULL; a = a->hash_next) {
			if (a->running || a->mk == NULL)
				continue;
			stats->open++;
			stats->released += a->st == NULL;
		}
	}
}
