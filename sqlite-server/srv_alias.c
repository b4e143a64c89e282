/*
 * The alias table, per-alias work queues, sessions and the unlock path.
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
 *    records a verifier again and clears a->closing.
 */
#include "srv_alias.h"
#include "srv_keyslab.h"
#include "srv_ops_view.h"
#include "eng_error.h"

#include <errno.h>
#include <malloc.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ALIAS_BUCKETS 1024
#define SESSION_BUCKETS 1024
#define QUEUE_MAX 1024
/* Passwords remembered per open alias (main + a few app passwords). */
#define SRV_VERIFIERS 4
/* Full unlocks (Argon2id) waiting for a slot at most, by default. */
#define UNLOCK_WAITING_DEFAULT 256

struct work_item {
	struct work_item *next;
	uv_work_t req;
	srv_alias *alias;
	srv_work_fn *work;
	srv_done_fn *done;
	void *ctx;
	int result;
};

struct srv_alias {
	srv_alias *hash_next;
	srv_aliases *owner;
	char id[SRV_ALIAS_ID_MAX + 1];
	char *db_path;
	char *spool_dir;
	/* Touched only by this alias's running work item. MK and the X25519
	 * key share one slot of the guarded key pages (alias_keys_set,
	 * srv_keyslab.h): sk is mk + ENG_MK_BYTES, given back with it (a
	 * sodium_malloc of its own costs 2 resident pages and 4 mappings;
	 * a slot is 64 bytes of a shared guarded page). */
	eng_store *st;
	uint8_t *mk;
	uint8_t *sk;
	bool reopened;                 /* srv_alias_store reopened it */
	/* Loop thread. */
	struct work_item *head, *tail;
	unsigned queued;
	bool running;
	unsigned sessions;
	uint64_t last_used_ms;
	/* Verifiers of passwords that opened this alias while it is open (see
	 * srv_unlock's fast path); cleared whenever a close is queued. */
	uint8_t verifiers[SRV_VERIFIERS][crypto_generichash_BYTES];
	unsigned n_verifiers, next_verifier;
	/* A close is queued or done: no fast unlock until a full one reopens. */
	bool closing;
	/* Bumped at every close submitted: an open queued before it must not
	 * re-arm the fast path (its verifier would outlive MK). */
	uint64_t close_gen;
};

struct session {
	struct session *next;
	uint8_t handle[SRV_SESSION_BYTES];
	srv_alias *alias;
	uint64_t last_used_ms;
};

/* A login that waits for the result of an identical one (see srv_unlock). */
struct unlock_join {
	struct unlock_join *next;
	srv_unlock_done *done;
	void *ctx;
};

struct unlock_req {
	struct unlock_req *next;
	/* In as->pending from srv_unlock until its result is handed out. */
	struct unlock_req *pend_prev, *pend_next;
	uint8_t join_key[crypto_generichash_BYTES];
	struct unlock_join *joined, *joined_tail;
	uv_work_t req;
	srv_aliases *owner;
	char alias_id[SRV_ALIAS_ID_MAX + 1];
	eng_keyring *keyring;          /* NULL: unknown alias, burn the time */
	uint8_t *blob;                 /* the encoded keyring, for the verifier */
	size_t blob_len;
	uint8_t *password;             /* secret memory */
	size_t password_len;
	uint8_t *mk;                   /* result of the KDF step */
	uint8_t verifier[crypto_generichash_BYTES];
	uint64_t close_gen;            /* the alias's, when open_work was queued */
	int result;
	srv_unlock_done *done;
	void *ctx;
};

struct srv_aliases {
	uv_loop_t *loop;
	srv_alias_config cfg;
	char *data_dir;
	srv_alias *buckets[ALIAS_BUCKETS];
	struct session *sessions[SESSION_BUCKETS];
	unsigned n_aliases, n_sessions;
	struct unlock_req *wait_head, *wait_tail;
	struct unlock_req *pending;    /* every full unlock not yet answered */
	unsigned unlocks_running, unlocks_waiting, unlocks_joined;
	uint64_t unlocks_refused, unlocks_joins;
	uint64_t refused_logged_ms;    /* last "queue full" log line */
	uint64_t work_done;
	uint64_t fast_unlocks;
	uint64_t releases, reopens;
	bool trim_pending;             /* a release freed memory: malloc_trim */
	eng_keyring *dummy;            /* same cost as real ones: see srv_unlock */
	uint8_t *verifier_key;         /* secret memory; random per process */
	srv_keyslab *keys;             /* the aliases' MK + sk slots */
	uv_timer_t timer;
	bool shutting_down;
	void (*shutdown_done)(void *ctx);
	void *shutdown_ctx;
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

static bool alias_id_ok(const char *id)
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

static srv_alias *alias_find(srv_aliases *as, const char *id)
{
	srv_alias *a = as->buckets[hash_str(id) % ALIAS_BUCKETS];

	while (a != NULL && strcmp(a->id, id) != 0)
		a = a->hash_next;
	return a;
}

static srv_alias *alias_get(srv_aliases *as, const char *id)
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
	b = hash_str(id) % ALIAS_BUCKETS;
	a->hash_next = as->buckets[b];
	as->buckets[b] = a;
	as->n_aliases++;
	return a;
}

static void alias_unlink_free(srv_aliases *as, srv_alias *a)
{
	srv_alias **pp = &as->buckets[hash_str(a->id) % ALIAS_BUCKETS];

	while (*pp != a)
		pp = &(*pp)->hash_next;
	*pp = a->hash_next;
	as->n_aliases--;
	free(a->db_path);
	free(a->spool_dir);
	free(a);
}

/* ---- the per-alias queue ---- */

static void queue_start(srv_alias *a);
static void verifiers_clear(srv_alias *a);

static int alias_open(srv_alias *a, const uint8_t *mk, bool create);
static int release_work(srv_alias *a, void *ctx);

/* Takes MK and the secret key into one slot of the guarded key pages
 * (their own allocations are wiped and freed). */
static void alias_keys_set(srv_alias *a, uint8_t **mk, uint8_t **sk)
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
		eng_store_close(&a->st);
		if (a->mk != NULL && alias_open(a, a->mk, false) != 0) {
			eng_log(ENG_LOG_ERROR, "alias %s: cannot reopen its "
				"database after an I/O error", a->id);
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

static void alias_close(srv_alias *a);

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
static int alias_open(srv_alias *a, const uint8_t *mk, bool create)
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

static void alias_close(srv_alias *a)
{
	srv_view_cache_forget(a->id);   /* no UIDs/flags after the keys go */
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

/* ---- unlock ---- */

static void unlock_req_free(struct unlock_req *u)
{
	sodium_memzero(u->join_key, sizeof(u->join_key));
	eng_keyring_free(&u->keyring);
	free(u->blob);
	sodium_memzero(u->verifier, sizeof(u->verifier));
	eng_secret_free(&u->password);
	eng_secret_free(&u->mk);
	free(u);
}

/*
 * A verifier of (alias, keyring, password): BLAKE2b keyed with a random
 * per-process key. It lets a repeated login to an open alias skip
 * Argon2id (srv_unlock). The keyring is part of it, so any password
 * change or revocation (which rewrites the keyring) invalidates it.
 */
static void compute_verifier(const srv_aliases *as, const char *alias_id,
			     const uint8_t *keyring, size_t keyring_len,
			     const uint8_t *password, size_t password_len,
			     uint8_t out[crypto_generichash_BYTES])
{
	crypto_generichash_state st;
	uint8_t len_le[8];

	crypto_generichash_init(&st, as->verifier_key, 32, crypto_generichash_BYTES);
	crypto_generichash_update(&st, (const uint8_t *)alias_id,
				  strlen(alias_id) + 1);
	for (int i = 0; i < 8; i++)
		len_le[i] = (uint8_t)((uint64_t)keyring_len >> (8 * i));
	crypto_generichash_update(&st, len_le, sizeof(len_le));
	crypto_generichash_update(&st, keyring, keyring_len);
	crypto_generichash_update(&st, password, password_len);
	crypto_generichash_final(&st, out, crypto_generichash_BYTES);
	sodium_memzero(&st, sizeof(st));
}

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
}

static int close_submit(srv_aliases *as, srv_alias *a, srv_done_fn *done,
			void *ctx)
{
	alias_mark_closing(a);
	return submit(as, a->id, close_work, done, ctx, true);
}

static void kdf_work_cb(uv_work_t *req)
{
	struct unlock_req *u = req->data;
	const eng_keyring *kr = u->keyring != NULL ? u->keyring :
		u->owner->dummy;
	int err;

	err = eng_keyring_unlock(kr, (const char *)u->password,
				 u->password_len, &u->mk, NULL);
	/* An unknown alias costs the same Argon2id run and answers the same. */
	if (u->keyring == NULL) {
		eng_secret_free(&u->mk);
		err = ENG_EAUTH;
	}
	if (err == 0)
		compute_verifier(u->owner, u->alias_id, u->blob, u->blob_len,
				 u->password, u->password_len, u->verifier);
	u->result = err;
	eng_secret_free(&u->password);
}

static void unlock_start_next(srv_aliases *as);
static void check_shutdown_done(srv_aliases *as);

static int open_work(srv_alias *a, void *ctx)
{
	struct unlock_req *u = ctx;
	uint8_t *sk = NULL;
	int err;

	if (a->mk != NULL) {
		/* Already unlocked (maybe released): the password opened the
		 * same MK, or the keyring is not this alias's. */
		if (sodium_memcmp(a->mk, u->mk, ENG_MK_BYTES) != 0)
			return ENG_EAUTH;
		return 0;
	}
	if ((err = alias_open(a, u->mk, true)) != 0)
		return err;
	if ((err = eng_keyring_secret_key(u->keyring, u->mk, &sk)) != 0) {
		alias_close(a);
		return err;
	}
	alias_keys_set(a, &u->mk, &sk);
	/* Mail sealed while it was locked goes in now, exactly once. */
	err = srv_alias_drain(a, NULL, NULL, NULL);
	if (err != 0)
		eng_log(ENG_LOG_WARN, "alias %s: spool drain failed: %s", a->id,
			eng_strerror(err));
	return 0;
}

/*
 * The unlock queue. A full unlock (Argon2id, then the open on the alias's
 * queue) is "pending" from srv_unlock until its result is handed out; a
 * login identical to a pending one (same login name as asked, same alias
 * and keyring, same password: a keyed BLAKE2b join key, never the password
 * itself) joins it instead of running Argon2id again, and gets the same
 * result when it comes (its own session on success). Known and unknown
 * aliases, right and wrong passwords join alike, so joining says nothing
 * the client did not know. Full unlocks start in FIFO order under
 * max_concurrent_unlocks; at most max_waiting_unlocks wait for a slot, and
 * one more is refused at once with ENG_EBUSY (a prompt "try again later"
 * rather than a wait longer than the frontends' login timeout).
 */
static void compute_join_key(const srv_aliases *as, const char *login,
			     const char *alias_id, const uint8_t *keyring,
			     size_t keyring_len, const uint8_t *password,
			     size_t password_len,
			     uint8_t out[crypto_generichash_BYTES])
{
	static const char domain[] = "sealmail unlock join";
	crypto_generichash_state st;
	uint8_t len_le[8];

	crypto_generichash_init(&st, as->verifier_key, 32, crypto_generichash_BYTES);
	crypto_generichash_update(&st, (const uint8_t *)domain, sizeof(domain));
	crypto_generichash_update(&st, (const uint8_t *)login, strlen(login) + 1);
	crypto_generichash_update(&st, (const uint8_t *)alias_id,
				  strlen(alias_id) + 1);
	for (int i = 0; i < 8; i++)
		len_le[i] = (uint8_t)((uint64_t)keyring_len >> (8 * i));
	crypto_generichash_update(&st, len_le, sizeof(len_le));
	if (keyring_len > 0)
		crypto_generichash_update(&st, keyring, keyring_len);
	crypto_generichash_update(&st, password, password_len);
	crypto_generichash_final(&st, out, crypto_generichash_BYTES);
	sodium_memzero(&st, sizeof(st));
}

static void pending_add(srv_aliases *as, struct unlock_req *u)
{
	u->pend_prev = NULL;
	u->pend_next = as->pending;
	if (as->pending != NULL)
		as->pending->pend_prev = u;
	as->pending = u;
}

static void pending_remove(srv_aliases *as, struct unlock_req *u)
{
	if (u->pend_prev != NULL)
		u->pend_prev->pend_next = u->pend_next;
	else if (as->pending == u)
		as->pending = u->pend_next;
	if (u->pend_next != NULL)
		u->pend_next->pend_prev = u->pend_prev;
	u->pend_prev = u->pend_next = NULL;
}

/* Bounded by max_waiting_unlocks + max_concurrent_unlocks + the opens
 * queued on aliases: a linear scan of 32-byte keys. */
static struct unlock_req *pending_find(srv_aliases *as,
				       const uint8_t key[crypto_generichash_BYTES])
{
	for (struct unlock_req *u = as->pending; u != NULL; u = u->pend_next) {
		if (sodium_memcmp(u->join_key, key, crypto_generichash_BYTES) == 0)
			return u;
	}
	return NULL;
}

static void pending_join(srv_aliases *as, struct unlock_req *lead,
			 srv_unlock_done *done, void *ctx)
{
	struct unlock_join *j = eng_calloc(1, sizeof(*j));

	j->done = done;
	j->ctx = ctx;
	if (lead->joined_tail != NULL)
		lead->joined_tail->next = j;
	else
		lead->joined = j;
	lead->joined_tail = j;
	as->unlocks_joined++;
	as->unlocks_joins++;
}

static void session_add(srv_aliases *as, srv_alias *a,
			uint8_t handle[SRV_SESSION_BYTES]);

/* One login's answer: a session of a on success (result 0). */
static void unlock_answer_one(srv_aliases *as, srv_unlock_done *done,
			      void *ctx, int result, srv_alias *a)
{
	uint8_t handle[SRV_SESSION_BYTES];

	if (result != 0) {
		done(ctx, result, NULL);
		return;
	}
	session_add(as, a, handle);
	done(ctx, 0, handle);
	sodium_memzero(handle, sizeof(handle));
}

/*
 * Hands the result of the full unlock u to its login and to every login
 * that joined it, in arrival order, then frees u. u leaves the pending list
 * first, so a callback that unlocks again starts a new one. a: the alias,
 * when result is 0.
 */
static void unlock_answer(srv_aliases *as, struct unlock_req *u, int result,
			  srv_alias *a)
{
	struct unlock_join *j = u->joined;

	pending_remove(as, u);
	u->joined = u->joined_tail = NULL;
	unlock_answer_one(as, u->done, u->ctx, result, a);
	while (j != NULL) {
		struct unlock_join *next = j->next;

		as->unlocks_joined--;
		unlock_answer_one(as, j->done, j->ctx, result, a);
		free(j);
		j = next;
	}
	unlock_req_free(u);
}

/* A refused login is logged at most once a second (no name, no secret). */
static void unlock_refused(srv_aliases *as)
{
	uint64_t now = uv_now(as->loop);

	as->unlocks_refused++;
	if (as->refused_logged_ms != 0 && now - as->refused_logged_ms < 1000)
		return;
	as->refused_logged_ms = now;
	eng_log(ENG_LOG_WARN, "unlock: %u logins already wait for Argon2id "
		"(%u at once): login refused as temporarily unavailable "
		"(%llu refused so far)", as->unlocks_waiting,
		as->cfg.max_concurrent_unlocks,
		(unsigned long long)as->unlocks_refused);
}

void srv_alias_config_test_env(srv_alias_config *cfg)
{
	const char *e = getenv("SEALMAIL_SQLITED_TEST_UNLOCKS");
	unsigned running, waiting;

	if (e != NULL && sscanf(e, "%u,%u", &running, &waiting) == 2 &&
	    running > 0 && waiting > 0) {
		cfg->max_concurrent_unlocks = running;
		cfg->max_waiting_unlocks = waiting;
	}
}

static void session_add(srv_aliases *as, srv_alias *a,
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

static void open_done(void *ctx, int result)
{
	struct unlock_req *u = ctx;
	srv_aliases *as = u->owner;
	srv_alias *a = NULL;

	if (result == 0) {
		a = alias_get(as, u->alias_id);
		/* A close queued after this open runs after it: remember
		 * nothing, the key is about to go. */
		bool stale = a->close_gen != u->close_gen;
		bool known = stale;

		if (!stale)
			a->closing = false;
		for (unsigned i = 0; i < a->n_verifiers; i++)
			known |= sodium_memcmp(a->verifiers[i], u->verifier,
					       sizeof(u->verifier)) == 0;
		if (!known) {
			memcpy(a->verifiers[a->next_verifier], u->verifier,
			       sizeof(u->verifier));
			a->next_verifier = (a->next_verifier + 1) % SRV_VERIFIERS;
			if (a->n_verifiers < SRV_VERIFIERS)
				a->n_verifiers++;
		}
	}
	unlock_answer(as, u, result, a);
}

static void kdf_after_cb(uv_work_t *req, int status)
{
	struct unlock_req *u = req->data;
	srv_aliases *as = u->owner;
	int err = status == UV_ECANCELED ? ENG_EBUSY : u->result;

	as->unlocks_running--;
	unlock_start_next(as);
	if (err == 0) {
		srv_alias *a = alias_id_ok(u->alias_id) && !as->shutting_down ?
			alias_get(as, u->alias_id) : NULL;

		u->close_gen = a != NULL ? a->close_gen : 0;
		err = srv_alias_submit(as, u->alias_id, open_work, open_done, u);
	}
	if (err != 0)
		unlock_answer(as, u, err, NULL);
	/* A shutdown that found this run going waits for it (and may end
	 * here when no alias was open). */
	if (as->shutting_down)
		check_shutdown_done(as);
}

static void unlock_start_next(srv_aliases *as)
{
	while (as->wait_head != NULL &&
	       as->unlocks_running < as->cfg.max_concurrent_unlocks) {
		struct unlock_req *u = as->wait_head;

		as->wait_head = u->next;
		if (as->wait_head == NULL)
			as->wait_tail = NULL;
		as->unlocks_waiting--;
		as->unlocks_running++;
		u->req.data = u;
		if (uv_queue_work(as->loop, &u->req, kdf_work_cb,
				  kdf_after_cb) != 0) {
			as->unlocks_running--;
			unlock_answer(as, u, ENG_EIO, NULL);
		}
	}
}

/* A fast unlock answers on the next loop turn, never inside srv_unlock. */
struct fast_unlock {
	uv_timer_t timer;
	srv_unlock_done *done;
	void *ctx;
	uint8_t handle[SRV_SESSION_BYTES];
};

static void fast_closed(uv_handle_t *h)
{
	struct fast_unlock *f = h->data;

	sodium_memzero(f->handle, sizeof(f->handle));
	free(f);
}

static void fast_fire(uv_timer_t *t)
{
	struct fast_unlock *f = t->data;

	f->done(f->ctx, 0, f->handle);
	uv_close((uv_handle_t *)&f->timer, fast_closed);
}

/*
 * The fast path: the alias is open, no close of it is pending, and this
 * exact password opened it with this exact keyring before (a verifier
 * matches), so MK is in memory and Argon2id would only prove it again.
 * Whatever else is queued or running for the alias does not matter: the
 * session is added on the loop thread at once, so it is ordered before
 * any close submitted later (an idle close needs sessions == 0; ALIAS_REMOVE
 * and RESTORE_ALIAS end the alias's sessions, this one included, when they
 * submit their close), and a close already submitted turned the fast path
 * off (a->closing). Wrong passwords and unknown aliases never get here:
 * they still pay the full Argon2id cost, so the timing comparison between
 * them is unchanged.
 */
static bool unlock_fast(srv_aliases *as, const char *alias_id,
			const uint8_t *keyring, size_t keyring_len,
			const char *password, size_t password_len,
			srv_unlock_done *done, void *ctx)
{
	srv_alias *a = alias_find(as, alias_id);
	uint8_t v[crypto_generichash_BYTES];
	struct fast_unlock *f;
	bool match = false;

	/* a->st may be read only while nothing of a runs. */
	if (a == NULL || a->closing || a->n_verifiers == 0 ||
	    (!a->running && a->mk == NULL))
		return false;
	compute_verifier(as, alias_id, keyring, keyring_len,
			 (const uint8_t *)password, password_len, v);
	for (unsigned i = 0; i < a->n_verifiers; i++)
		match |= sodium_memcmp(a->verifiers[i], v, sizeof(v)) == 0;
	sodium_memzero(v, sizeof(v));
	if (!match)
		return false;
	f = eng_calloc(1, sizeof(*f));
	f->done = done;
	f->ctx = ctx;
	session_add(as, a, f->handle);
	uv_timer_init(as->loop, &f->timer);
	f->timer.data = f;
	uv_timer_start(&f->timer, fast_fire, 0, 0);
	as->fast_unlocks++;
	return true;
}

int srv_unlock(srv_aliases *as, const char *alias_id,
	       const uint8_t *keyring, size_t keyring_len,
	       const char *password, size_t password_len,
	       srv_unlock_done *done, void *ctx)
{
	return srv_unlock_login(as, alias_id, alias_id, keyring, keyring_len,
				password, password_len, done, ctx);
}

int srv_unlock_login(srv_aliases *as, const char *login, const char *alias_id,
		     const uint8_t *keyring, size_t keyring_len,
		     const char *password, size_t password_len,
		     srv_unlock_done *done, void *ctx)
{
	uint8_t key[crypto_generichash_BYTES];
	unsigned max_waiting = as->cfg.max_waiting_unlocks > 0 ?
		as->cfg.max_waiting_unlocks : UNLOCK_WAITING_DEFAULT;
	struct unlock_req *u;
	int err;

	if (as->shutting_down)
		return ENG_EBUSY;
	if (password_len == 0 || password_len > 4096 ||
	    (keyring != NULL && !alias_id_ok(alias_id)))
		return ENG_EINVAL;
	if (keyring != NULL && unlock_fast(as, alias_id, keyring, keyring_len,
					   password, password_len, done, ctx))
		return 0;
	compute_join_key(as, login != NULL ? login : "",
			 keyring != NULL ? alias_id : "", keyring,
			 keyring != NULL ? keyring_len : 0,
			 (const uint8_t *)password, password_len, key);
	if ((u = pending_find(as, key)) != NULL) {
		sodium_memzero(key, sizeof(key));
		pending_join(as, u, done, ctx);
		return 0;
	}
	if (as->unlocks_waiting >= max_waiting) {
		sodium_memzero(key, sizeof(key));
		unlock_refused(as);
		return ENG_EBUSY;
	}
	u = eng_calloc(1, sizeof(*u));
	u->owner = as;
	memcpy(u->join_key, key, sizeof(key));
	sodium_memzero(key, sizeof(key));
	snprintf(u->alias_id, sizeof(u->alias_id), "%s",
		 keyring != NULL ? alias_id : "");
	if (keyring != NULL &&
	    (err = eng_keyring_decode(keyring, keyring_len, &u->keyring)) != 0) {
		unlock_req_free(u);
		return err;
	}
	if (keyring != NULL) {
		u->blob = eng_malloc(keyring_len);
		memcpy(u->blob, keyring, keyring_len);
		u->blob_len = keyring_len;
	}
	u->password = eng_secret_new(password_len);
	memcpy(u->password, password, password_len);
	u->password_len = password_len;
	u->done = done;
	u->ctx = ctx;
	if (as->wait_tail != NULL)
		as->wait_tail->next = u;
	else
		as->wait_head = u;
	as->wait_tail = u;
	as->unlocks_waiting++;
	pending_add(as, u);
	unlock_start_next(as);
	return 0;
}

/* ---- sessions ---- */

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

static void check_shutdown_done(srv_aliases *as);

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
 * Once per timer tick after releases, give the free pages back.
 */
static void release_trim(srv_aliases *as)
{
	if (!as->trim_pending)
		return;
	as->trim_pending = false;
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

static void check_shutdown_done(srv_aliases *as)
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
