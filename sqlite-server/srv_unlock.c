/*
 * sqlited's unlock path (srv_unlock, srv_unlock_login): a login's password
 * opens an alias's keyring (Argon2id on a pool thread), then the alias's
 * database on its queue, and the login gets a session.
 *
 *  - Fast path (unlock_fast): a password that opened this open alias with
 *    this keyring before (a keyed BLAKE2b verifier, never the password)
 *    skips Argon2id; the verifiers live in struct srv_alias and are wiped
 *    whenever a close is queued (srv_alias.c's invariants).
 *  - Joins: a login identical to a pending one waits for its result.
 *  - The waiting queue: full unlocks start in FIFO order under
 *    max_concurrent_unlocks; at most max_waiting_unlocks wait, one more is
 *    refused at once with ENG_EBUSY.
 *  - Unknown aliases run Argon2id on a dummy keyring and answer like a
 *    wrong password: nothing here tells a client whether a user exists.
 *
 * Threads: kdf_work_cb runs on a pool thread and touches only its
 * unlock_req; open_work runs on the alias's queue; the rest on the loop
 * thread. Passwords and MK live in secret memory and are wiped when done.
 */
#include "srv_alias_private.h"
#include "eng_error.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
void unlock_answer(srv_aliases *as, struct unlock_req *u, int result,
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
		} else {
			as->kdf_unlocks++;
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
