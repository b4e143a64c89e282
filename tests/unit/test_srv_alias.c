/*
 * sqlited's alias table: unlock (right, wrong and unknown), the Argon2id
 * cap, the unlock queue (FIFO, identical logins joined, bounded),
 * per-alias serialised work, spool drain at unlock, idle close,
 * release of idle connections (keys kept, reopened on the next request; the
 * appends' zstd context freed on the tick after) and graceful shutdown.
 * A real libuv loop and thread pool, real databases.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "eng_error.h"
#include "keys.h"
#include "spool.h"
#include "srv_alias.h"
#include "store.h"
#include "testutil.h"

static const eng_kdf_params fast = { 1, 8192 };

struct fx {
	char *dir;
	uv_loop_t loop;
	srv_aliases *as;
	uint8_t *keyring;
	size_t keyring_len;
	uint8_t pk[ENG_PK_BYTES];
};

static void make_aliases_cfg(struct fx *f, unsigned idle_seconds,
			     unsigned release_seconds, unsigned max_waiting)
{
	srv_alias_config cfg;

	srv_alias_config_default(&cfg);
	cfg.data_dir = f->dir;
	cfg.kdf_params = fast;
	cfg.idle_seconds = idle_seconds;
	cfg.release_seconds = release_seconds;
	cfg.max_concurrent_unlocks = 1;
	if (max_waiting > 0)
		cfg.max_waiting_unlocks = max_waiting;
	assert_int_equal(srv_aliases_new(&f->loop, &cfg, &f->as), 0);
}

static void make_aliases_release(struct fx *f, unsigned idle_seconds,
				 unsigned release_seconds)
{
	make_aliases_cfg(f, idle_seconds, release_seconds, 0);
}

static void make_aliases(struct fx *f, unsigned idle_seconds)
{
	make_aliases_release(f, idle_seconds, 10);
}

static void created(void *ctx, int result)
{
	*(int *)ctx = result;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	eng_keyring *kr;
	uint8_t *mk;
	int result = 1;

	assert_int_equal(eng_crypto_init(), 0);
	f->dir = tu_tmpdir();
	uv_loop_init(&f->loop);
	make_aliases(f, 300);
	assert_int_equal(eng_keyring_create("secret pw", 9, fast, &kr, &mk), 0);
	memcpy(f->pk, eng_keyring_public_key(kr), ENG_PK_BYTES);
	assert_int_equal(eng_keyring_encode(kr, &f->keyring, &f->keyring_len), 0);
	assert_int_equal(srv_alias_create_db(f->as, "a1", mk, created, &result), 0);
	while (result == 1)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(result, 0);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
	*state = f;
	return 0;
}

static void shutdown_done(void *ctx)
{
	*(int *)ctx = 1;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	int done = 0;

	srv_aliases_shutdown(f->as, shutdown_done, &done);
	while (!done)
		uv_run(&f->loop, UV_RUN_ONCE);
	srv_aliases_free(&f->as);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	free(f->keyring);
	tu_rmrf(f->dir);
	free(f->dir);
	free(f);
	return 0;
}

struct unlock_result {
	int done;
	int result;
	uint8_t session[SRV_SESSION_BYTES];
};

static void unlock_cb(void *ctx, int result, const uint8_t *session)
{
	struct unlock_result *r = ctx;

	r->done = 1;
	r->result = result;
	if (session != NULL)
		memcpy(r->session, session, SRV_SESSION_BYTES);
}

static int unlock(struct fx *f, const char *id, const uint8_t *kr,
		  size_t kr_len, const char *pw, uint8_t *session_r)
{
	struct unlock_result r = { 0 };

	assert_int_equal(srv_unlock(f->as, id, kr, kr_len, pw, strlen(pw),
				    unlock_cb, &r), 0);
	while (!r.done)
		uv_run(&f->loop, UV_RUN_ONCE);
	if (session_r != NULL)
		memcpy(session_r, r.session, SRV_SESSION_BYTES);
	return r.result;
}

static void test_unlock(void **state)
{
	struct fx *f = *state;
	uint8_t s1[SRV_SESSION_BYTES], s2[SRV_SESSION_BYTES];
	char id[SRV_ALIAS_ID_MAX + 1];
	srv_alias_stats st;

	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len, "wrong",
				NULL), ENG_EAUTH);
	assert_int_equal(unlock(f, "zz", NULL, 0, "whatever", NULL), ENG_EAUTH);
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", s1), 0);
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", s2), 0);
	assert_memory_not_equal(s1, s2, SRV_SESSION_BYTES);
	assert_int_equal(srv_session_alias(f->as, s1, id), 0);
	assert_string_equal(id, "a1");
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.sessions, 2);
	assert_int_equal(st.open, 1);
	/* Argon2id ran for the wrong password, the unknown alias and the
	 * first right one; the repeated login took the fast path. */
	assert_int_equal(st.kdf_unlocks, 3);
	assert_int_equal(st.fast_unlocks, 1);
	assert_int_equal(srv_session_end(f->as, s1), 0);
	assert_int_equal(srv_session_end(f->as, s1), ENG_ENOTFOUND);
	assert_int_equal(srv_session_alias(f->as, s1, id), ENG_ENOTFOUND);
	assert_int_equal(srv_session_alias(f->as, s2, id), 0);
	/* Bad ids never reach the file system. */
	assert_int_equal(srv_unlock(f->as, "../x", f->keyring, f->keyring_len,
				    "pw", 2, unlock_cb, NULL), ENG_EINVAL);
	assert_int_equal(srv_alias_submit(f->as, "A/B", NULL, NULL, NULL),
			 ENG_EINVAL);
}

/* Work items of one alias never overlap; they run in order. */
struct order {
	int next;
	int seen[32];
	int n;
	int running;
	int overlap;
};

struct order_item {
	struct order *o;
	int i;
};

static int order_work(srv_alias *a, void *ctx)
{
	struct order_item *it = ctx;

	(void)a;
	if (__atomic_add_fetch(&it->o->running, 1, __ATOMIC_SEQ_CST) > 1)
		it->o->overlap = 1;
	uv_sleep(2);
	__atomic_sub_fetch(&it->o->running, 1, __ATOMIC_SEQ_CST);
	return it->i;
}

static int order_work_noop(srv_alias *a, void *ctx)
{
	(void)a;
	(void)ctx;
	return 0;
}

static void order_done(void *ctx, int result)
{
	struct order_item *it = ctx;

	it->o->seen[it->o->n++] = result;
	free(it);
}

static void test_serialised(void **state)
{
	struct fx *f = *state;
	struct order o = { 0 };

	for (int i = 0; i < 20; i++) {
		struct order_item *it = malloc(sizeof(*it));

		it->o = &o;
		it->i = i;
		assert_int_equal(srv_alias_submit(f->as, "a1", order_work,
						  order_done, it), 0);
	}
	while (o.n < 20)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(o.overlap, 0);
	for (int i = 0; i < 20; i++)
		assert_int_equal(o.seen[i], i);
}

struct append_ctx {
	const char *msg;
	uint32_t uid;
	int locked;
};

static int append_work(srv_alias *a, void *ctx)
{
	struct append_ctx *c = ctx;
	eng_store *st = srv_alias_store(a);
	eng_mailbox mb;
	int err;

	if (st == NULL) {
		c->locked = 1;
		return ENG_EPERM;
	}
	if ((err = eng_mailbox_get(st, "INBOX", &mb)) != 0)
		return err;
	err = eng_append_message(st, mb.id, c->msg, strlen(c->msg), NULL,
				 &c->uid, NULL);
	eng_mailbox_clear(&mb);
	return err;
}

struct run {
	srv_work_fn *fn;
	void *ctx;
	int result;
};

static int run_tramp(srv_alias *a, void *p)
{
	struct run *r = p;

	return r->fn(a, r->ctx);
}

static void run_done(void *p, int result)
{
	((struct run *)p)->result = result;
}

/* Runs fn(ctx) on the alias's queue and waits for it. */
static int run_work(struct fx *f, srv_work_fn *fn, void *ctx)
{
	struct run r = { fn, ctx, 1000 };

	assert_int_equal(srv_alias_submit(f->as, "a1", run_tramp, run_done, &r),
			 0);
	while (r.result == 1000)
		uv_run(&f->loop, UV_RUN_ONCE);
	return r.result;
}

static int count_work(srv_alias *a, void *ctx)
{
	eng_mailbox mb;
	int err;

	if (srv_alias_store(a) == NULL)
		return ENG_EPERM;
	if ((err = eng_mailbox_get(srv_alias_store(a), "INBOX", &mb)) != 0)
		return err;
	*(uint32_t *)ctx = mb.messages;
	eng_mailbox_clear(&mb);
	return 0;
}

static void test_spool_and_idle_close(void **state)
{
	struct fx *f = *state;
	struct append_ctx c = { .msg = "Subject: x\r\n\r\nhello\r\n" };
	eng_spool_writer *w;
	char spool_dir[4096], id[ENG_SPOOL_ID_LEN + 1];
	uint8_t s[SRV_SESSION_BYTES];
	uint32_t count = 0;
	srv_alias_stats st;

	/* Locked: work sees no store. */
	assert_int_equal(run_work(f, append_work, &c), ENG_EPERM);
	assert_int_equal(c.locked, 1);

	/* Mail sealed while locked is drained at unlock, once. */
	snprintf(spool_dir, sizeof(spool_dir), "%s/spool/a1", f->dir);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(eng_spool_writer_open(spool_dir, f->pk, 0, 0,
						       &w), 0);
		assert_int_equal(eng_spool_write(w, c.msg, strlen(c.msg)), 0);
		assert_int_equal(eng_spool_commit(&w, id), 0);
	}
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", s), 0);
	assert_int_equal(run_work(f, count_work, &count), 0);
	assert_int_equal(count, 3);
	assert_int_equal(run_work(f, append_work, &c), 0);
	assert_int_equal(c.uid, 4);

	/* With sessions the alias stays open; without, it closes when idle. */
	{
		int done = 0;

		srv_aliases_shutdown(f->as, shutdown_done, &done);
		while (!done)
			uv_run(&f->loop, UV_RUN_ONCE);
	}
	srv_aliases_free(&f->as);
	make_aliases(f, 1);
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", s), 0);
	assert_int_equal(run_work(f, count_work, &count), 0);
	assert_int_equal(count, 4);
	assert_int_equal(srv_session_end(f->as, s), 0);
	{
		uint64_t start = uv_now(&f->loop);

		do {
			uv_run(&f->loop, UV_RUN_ONCE);
			srv_aliases_stats(f->as, &st);
		} while (st.open > 0 && uv_now(&f->loop) - start < 10000);
	}
	assert_int_equal(st.open, 0);
	assert_int_equal(run_work(f, count_work, &count), ENG_EPERM);
}

static void remake_aliases(struct fx *f, unsigned idle_seconds,
			   unsigned release_seconds)
{
	int done = 0;

	srv_aliases_shutdown(f->as, shutdown_done, &done);
	while (!done)
		uv_run(&f->loop, UV_RUN_ONCE);
	srv_aliases_free(&f->as);
	make_aliases_release(f, idle_seconds, release_seconds);
}

/* Runs the loop until the stats say stop(st) or 10 s have passed. */
static void wait_stats(struct fx *f, bool (*stop)(const srv_alias_stats *),
		       srv_alias_stats *st)
{
	uint64_t start = uv_now(&f->loop);

	do {
		uv_run(&f->loop, UV_RUN_ONCE);
		srv_aliases_stats(f->as, st);
	} while (!stop(st) && uv_now(&f->loop) - start < 10000);
}

static bool is_released(const srv_alias_stats *st)
{
	return st->released > 0;
}

static bool is_locked(const srv_alias_stats *st)
{
	return st->open == 0;
}

static int drain_work(srv_alias *a, void *ctx)
{
	return srv_alias_drain(a, NULL, NULL, ctx);
}

static void spool_one(struct fx *f, const char *msg)
{
	char spool_dir[4096], id[ENG_SPOOL_ID_LEN + 1];
	eng_spool_writer *w;

	snprintf(spool_dir, sizeof(spool_dir), "%s/spool/a1", f->dir);
	assert_int_equal(eng_spool_writer_open(spool_dir, f->pk, 0, 0, &w), 0);
	assert_int_equal(eng_spool_write(w, msg, strlen(msg)), 0);
	assert_int_equal(eng_spool_commit(&w, id), 0);
}

/*
 * An alias idle for release_seconds keeps its keys and sessions but not
 * its database connection; the next request (a read, a spool drain)
 * reopens it and sees everything; a repeated login still skips Argon2id;
 * ending the last session still closes it and wipes the keys.
 */
static void test_release(void **state)
{
	struct fx *f = *state;
	struct append_ctx c = { .msg = "Subject: r\r\n\r\nreleased\r\n" };
	uint8_t s1[SRV_SESSION_BYTES], s2[SRV_SESSION_BYTES];
	char id[SRV_ALIAS_ID_MAX + 1];
	uint32_t count = 0;
	size_t drained = 0;
	srv_alias_stats st;

	remake_aliases(f, 1, 1);
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", s1), 0);
	assert_int_equal(run_work(f, append_work, &c), 0);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.released, 0);
	wait_stats(f, is_released, &st);
	assert_int_equal(st.released, 1);
	assert_int_equal(st.open, 1);
	assert_int_equal(st.sessions, 1);
	assert_int_equal(st.releases, 1);
	assert_int_equal(st.reopens, 0);

	/* The session's next request reopens it, with the data. */
	assert_int_equal(srv_session_alias(f->as, s1, id), 0);
	assert_int_equal(run_work(f, count_work, &count), 0);
	assert_int_equal(count, 1);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.released, 0);
	assert_int_equal(st.reopens, 1);

	/* Released again: a delivery's drain reopens it too. */
	wait_stats(f, is_released, &st);
	assert_int_equal(st.released, 1);
	spool_one(f, c.msg);
	assert_int_equal(run_work(f, drain_work, &drained), 0);
	assert_int_equal(drained, 1);
	assert_int_equal(run_work(f, count_work, &count), 0);
	assert_int_equal(count, 2);

	/* Released: a repeated login is still a fast one: no Argon2id (the
	 * session 5 look at the memory harness: its repeated logins reopen
	 * released databases, which costs memory until the next release,
	 * never an Argon2id run). */
	wait_stats(f, is_released, &st);
	assert_int_equal(st.released, 1);
	assert_int_equal(st.kdf_unlocks, 1);
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", s2), 0);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.fast_unlocks, 1);
	assert_int_equal(st.kdf_unlocks, 1);
	assert_int_equal(st.sessions, 2);

	/* LOCK of both: closed and wiped after idle_seconds, released or
	 * not; later work finds it locked (no reopen without keys). */
	wait_stats(f, is_released, &st);
	assert_int_equal(srv_session_end(f->as, s1), 0);
	assert_int_equal(srv_session_end(f->as, s2), 0);
	wait_stats(f, is_locked, &st);
	assert_int_equal(st.open, 0);
	assert_int_equal(st.released, 0);
	assert_int_equal(run_work(f, count_work, &count), ENG_EPERM);
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", s1), 0);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.fast_unlocks, 1);
	assert_int_equal(run_work(f, count_work, &count), 0);
	assert_int_equal(count, 2);
}

/* Runs the loop for ms milliseconds (timer ticks included). */
static void run_for(struct fx *f, uint64_t ms)
{
	uint64_t start = uv_now(&f->loop);

	while (uv_now(&f->loop) - start < ms)
		uv_run(&f->loop, UV_RUN_ONCE);
}

/*
 * At rest nothing an append kept stays: the zstd compression context
 * (~1 MiB once used; 776 KiB of it resident after the loads) is freed on
 * the tick after the release, with the reads' ones.
 */
static void test_release_frees_append_context(void **state)
{
	struct fx *f = *state;
	struct append_ctx c = { .msg = "Subject: z\r\n\r\ncompressed\r\n" };
	uint8_t s1[SRV_SESSION_BYTES];
	srv_alias_stats st;

	remake_aliases(f, 60, 1);
	(void)eng_append_free_cached();
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", s1), 0);
	/* An append keeps its context for the next one... */
	assert_int_equal(run_work(f, append_work, &c), 0);
	assert_int_equal(eng_append_free_cached(), 1);
	assert_int_equal(run_work(f, append_work, &c), 0);
	/* ...until the alias is released: the next tick frees it. */
	wait_stats(f, is_released, &st);
	assert_int_equal(st.released, 1);
	run_for(f, 1500);
	assert_int_equal(eng_append_free_cached(), 0);
	assert_int_equal(eng_message_free_cached(), 0);
}

static void test_unlock_cap(void **state)
{
	struct fx *f = *state;
	struct unlock_result r[6];
	srv_alias_stats st;
	int done = 0;

	memset(r, 0, sizeof(r));
	/* Distinct login names: six full unlocks, none joins another. */
	for (int i = 0; i < 6; i++) {
		char login[16];

		snprintf(login, sizeof(login), "login%d", i);
		assert_int_equal(srv_unlock_login(f->as, login, "a1", f->keyring,
						  f->keyring_len, i % 2 ?
						  "secret pw" : "nope",
						  i % 2 ? 9 : 4, unlock_cb,
						  &r[i]), 0);
	}
	srv_aliases_stats(f->as, &st);
	assert_true(st.unlocks_running <= 1);
	assert_int_equal(st.unlocks_running + st.unlocks_waiting, 6);
	assert_int_equal(st.unlocks_joined, 0);
	while (done < 6) {
		uv_run(&f->loop, UV_RUN_ONCE);
		srv_aliases_stats(f->as, &st);
		assert_true(st.unlocks_running <= 1);
		done = 0;
		for (int i = 0; i < 6; i++)
			done += r[i].done;
	}
	for (int i = 0; i < 6; i++)
		assert_int_equal(r[i].result, i % 2 ? 0 : ENG_EAUTH);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.kdf_unlocks, 6);
}

/*
 * A repeated login of an open alias skips Argon2id; a wrong password, a
 * changed keyring and a closed alias never do.
 */
static void test_fast_unlock(void **state)
{
	struct fx *f = *state;
	uint8_t s1[SRV_SESSION_BYTES], s2[SRV_SESSION_BYTES];
	srv_alias_stats st;
	eng_keyring *kr;
	uint8_t *mk, *blob2;
	size_t blob2_len;

	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", s1), 0);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.fast_unlocks, 0);
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", s2), 0);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.fast_unlocks, 1);
	assert_int_equal(st.sessions, 2);
	assert_memory_not_equal(s1, s2, SRV_SESSION_BYTES);
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pX", NULL), ENG_EAUTH);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.fast_unlocks, 1);
	assert_int_equal(st.kdf_unlocks, 2);    /* the first and the wrong one */

	/* A changed keyring (an app password added) invalidates it. */
	assert_int_equal(eng_keyring_decode(f->keyring, f->keyring_len, &kr), 0);
	assert_int_equal(eng_keyring_unlock(kr, "secret pw", 9, &mk, NULL), 0);
	assert_int_equal(eng_keyring_add_slot(kr, mk, "app pw 1", 8, "phone",
					      NULL), 0);
	assert_int_equal(eng_keyring_encode(kr, &blob2, &blob2_len), 0);
	assert_int_equal(unlock(f, "a1", blob2, blob2_len, "secret pw", NULL), 0);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.fast_unlocks, 1);
	/* ... and the new one is remembered again. */
	assert_int_equal(unlock(f, "a1", blob2, blob2_len, "secret pw", NULL), 0);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.fast_unlocks, 2);
	assert_int_equal(st.kdf_unlocks, 3);
	/* A revoked app password: it opened the alias before (remembered),
	 * but with the keyring that no longer has its slot it fails. */
	{
		uint32_t slot = 0;
		uint8_t *blob3, *mk2;
		size_t blob3_len;

		assert_int_equal(unlock(f, "a1", blob2, blob2_len, "app pw 1",
					NULL), 0);
		assert_int_equal(eng_keyring_unlock(kr, "app pw 1", 8, &mk2,
						    &slot), 0);
		eng_secret_free(&mk2);
		assert_int_equal(eng_keyring_remove_slot(kr, slot), 0);
		assert_int_equal(eng_keyring_encode(kr, &blob3, &blob3_len), 0);
		assert_int_equal(unlock(f, "a1", blob3, blob3_len, "app pw 1",
					NULL), ENG_EAUTH);
		free(blob3);
	}
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.fast_unlocks, 2);
	assert_int_equal(st.kdf_unlocks, 5);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
	free(blob2);
}


/* A work item that holds the alias's queue until the test lets it go. */
static int block_work(srv_alias *a, void *ctx)
{
	int *release = ctx;

	(void)a;
	while (!__atomic_load_n(release, __ATOMIC_SEQ_CST))
		uv_sleep(1);
	return 0;
}

static int close_now_work(srv_alias *a, void *ctx)
{
	(void)ctx;
	srv_alias_close_now(a);
	return 0;
}

static void count_done(void *ctx, int result)
{
	assert_int_equal(result, 0);
	(*(int *)ctx)++;
}

static unsigned fast_count(struct fx *f)
{
	srv_alias_stats st;

	srv_aliases_stats(f->as, &st);
	return (unsigned)st.fast_unlocks;
}

/* Waits until no Argon2id run is running or waiting. */
static void wait_kdf_idle(struct fx *f)
{
	srv_alias_stats st;

	for (;;) {
		srv_aliases_stats(f->as, &st);
		if (st.unlocks_running == 0 && st.unlocks_waiting == 0)
			return;
		uv_run(&f->loop, UV_RUN_NOWAIT);
		uv_sleep(1);
	}
}

/*
 * The fast path does not wait for the alias's queue: a repeated login is
 * answered while other work of the alias runs and more is queued; a wrong
 * password still runs Argon2id.
 */
static void test_fast_unlock_busy(void **state)
{
	struct fx *f = *state;
	struct unlock_result r = { 0 };
	int release = 0, done = 0;

	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", NULL), 0);
	assert_int_equal(fast_count(f), 0);
	assert_int_equal(srv_alias_submit(f->as, "a1", block_work, count_done,
					  &release), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(srv_alias_submit(f->as, "a1", order_work_noop,
						  count_done, &done), 0);
	assert_int_equal(srv_unlock(f->as, "a1", f->keyring, f->keyring_len,
				    "secret pw", 9, unlock_cb, &r), 0);
	/* Bounded: a slow path would wait behind the blocker for ever. */
	for (int i = 0; i < 5000 && !r.done; i++) {
		uv_run(&f->loop, UV_RUN_NOWAIT);
		uv_sleep(1);
	}
	assert_true(r.done);
	assert_int_equal(r.result, 0);
	assert_int_equal(fast_count(f), 1);
	assert_int_equal(done, 0);            /* the queue is still held */
	/* A wrong password while it is busy: the full Argon2id run, no match. */
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pX", NULL), ENG_EAUTH);
	assert_int_equal(fast_count(f), 1);
	assert_int_equal(done, 0);
	__atomic_store_n(&release, 1, __ATOMIC_SEQ_CST);
	while (done < 3)
		uv_run(&f->loop, UV_RUN_ONCE);
}

/*
 * Unlocks racing a close: once the close is submitted (here as ALIAS_REMOVE
 * does it: srv_sessions_end_alias, then work that closes), an unlock no
 * longer takes the fast path; it queues behind the close and reopens. An
 * open queued before a close does not re-arm the fast path after it.
 */
static void test_fast_unlock_vs_close(void **state)
{
	struct fx *f = *state;
	struct unlock_result r = { 0 };
	uint32_t n = 0;
	int release = 0, closed = 0;

	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", NULL), 0);
	assert_int_equal(srv_alias_submit(f->as, "a1", block_work, NULL,
					  &release), 0);
	(void)srv_sessions_end_alias(f->as, "a1");
	assert_int_equal(srv_alias_submit(f->as, "a1", close_now_work,
					  count_done, &closed), 0);
	assert_int_equal(srv_unlock(f->as, "a1", f->keyring, f->keyring_len,
				    "secret pw", 9, unlock_cb, &r), 0);
	wait_kdf_idle(f);
	uv_run(&f->loop, UV_RUN_NOWAIT);
	assert_int_equal(r.done, 0);          /* behind the close */
	assert_int_equal(fast_count(f), 0);
	__atomic_store_n(&release, 1, __ATOMIC_SEQ_CST);
	while (!r.done)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(r.result, 0);
	assert_int_equal(closed, 1);
	/* It reopened after the close: the data is there, and the fast path
	 * is armed again. */
	assert_int_equal(run_work(f, count_work, &n), 0);
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", NULL), 0);
	assert_int_equal(fast_count(f), 1);

	/* An open queued before a close: its verifier is not kept. */
	(void)srv_sessions_end_alias(f->as, "a1");
	assert_int_equal(run_work(f, close_now_work, NULL), 0);
	release = 0;
	assert_int_equal(srv_alias_submit(f->as, "a1", block_work, NULL,
					  &release), 0);
	memset(&r, 0, sizeof(r));
	assert_int_equal(srv_unlock(f->as, "a1", f->keyring, f->keyring_len,
				    "secret pw", 9, unlock_cb, &r), 0);
	wait_kdf_idle(f);                     /* its open is queued now */
	(void)srv_sessions_end_alias(f->as, "a1");
	assert_int_equal(srv_alias_submit(f->as, "a1", close_now_work,
					  count_done, &closed), 0);
	__atomic_store_n(&release, 1, __ATOMIC_SEQ_CST);
	while (!r.done || closed < 2)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(r.result, 0);
	/* The alias is locked again and the next unlock pays Argon2id. */
	assert_int_equal(run_work(f, count_work, &n), ENG_EPERM);
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len,
				"secret pw", NULL), 0);
	assert_int_equal(fast_count(f), 1);
	assert_int_equal(run_work(f, count_work, &n), 0);
}

/* ---- the unlock queue: FIFO, joins, bound ---- */

struct ordered_result {
	struct unlock_result r;
	int *seq;
	int order;
};

static void ordered_cb(void *ctx, int result, const uint8_t *session)
{
	struct ordered_result *o = ctx;

	o->order = (*o->seq)++;
	unlock_cb(&o->r, result, session);
}

static void run_until(struct fx *f, struct ordered_result *o, int n)
{
	for (;;) {
		int done = 0;

		for (int i = 0; i < n; i++)
			done += o[i].r.done;
		if (done == n)
			break;
		uv_run(&f->loop, UV_RUN_ONCE);
	}
}

static int start_login(struct fx *f, const char *login, const uint8_t *kr,
		       size_t kr_len, const char *pw, struct ordered_result *o,
		       int *seq)
{
	memset(o, 0, sizeof(*o));
	o->seq = seq;
	o->order = -1;
	return srv_unlock_login(f->as, login, kr != NULL ? "a1" : "", kr, kr_len,
				pw, strlen(pw), ordered_cb, o);
}

/*
 * Identical logins (same name, alias, keyring, password) made while one
 * of them is pending run Argon2id once: the others join it and get the
 * same answer, each its own session on success. Wrong passwords and
 * unknown aliases join alike; another name or password does not join.
 * Full unlocks are answered in arrival order.
 */
static void test_unlock_join(void **state)
{
	struct fx *f = *state;
	struct ordered_result o[12];
	srv_alias_stats st;
	int seq = 0;

	/* 0: full; 1-3: join it; 4: wrong pw, full; 5: joins 4; 6: other
	 * name, full; 7, 8: unknown alias, 8 joins 7; 9: unknown with another
	 * password, full. */
	for (int i = 0; i < 4; i++)
		assert_int_equal(start_login(f, "u@x", f->keyring, f->keyring_len,
					     "secret pw", &o[i], &seq), 0);
	for (int i = 4; i < 6; i++)
		assert_int_equal(start_login(f, "u@x", f->keyring, f->keyring_len,
					     "wrong", &o[i], &seq), 0);
	assert_int_equal(start_login(f, "U2@x", f->keyring, f->keyring_len,
				     "secret pw", &o[6], &seq), 0);
	for (int i = 7; i < 9; i++)
		assert_int_equal(start_login(f, "nobody@x", NULL, 0, "secret pw",
					     &o[i], &seq), 0);
	assert_int_equal(start_login(f, "nobody@x", NULL, 0, "other pw", &o[9],
				     &seq), 0);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.unlocks_joined, 5);
	assert_int_equal(st.unlocks_joins, 5);
	assert_int_equal(st.unlocks_running, 1);
	assert_int_equal(st.unlocks_waiting, 4);
	run_until(f, o, 10);
	for (int i = 0; i < 10; i++) {
		bool ok = i < 4 || i == 6;

		assert_int_equal(o[i].r.result, ok ? 0 : ENG_EAUTH);
	}
	/* Each joined login has its own session. */
	for (int i = 1; i < 4; i++)
		assert_memory_not_equal(o[0].r.session, o[i].r.session,
					SRV_SESSION_BYTES);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.sessions, 5);
	assert_int_equal(st.unlocks_joined, 0);
	assert_int_equal(st.kdf_unlocks, 5);    /* 0, 4, 6, 7 and 9 */
	/* FIFO: full unlocks start in arrival order (one at a time here). A
	 * failed one is answered right after its Argon2id run, a successful
	 * one after its open on the alias's queue: compare within each kind.
	 * Joiners are answered right after their full unlock. */
	assert_true(o[4].order < o[7].order && o[7].order < o[9].order);
	assert_true(o[0].order < o[6].order);
	for (int i = 1; i < 4; i++)
		assert_int_equal(o[i].order, o[0].order + i);
	assert_int_equal(o[5].order, o[4].order + 1);
	assert_int_equal(o[8].order, o[7].order + 1);
	/* Once answered, the same login is a new unlock (here the fast path,
	 * the alias being open). */
	assert_int_equal(unlock(f, "a1", f->keyring, f->keyring_len, "wrong",
				NULL), ENG_EAUTH);
}

/*
 * At most max_waiting_unlocks wait for a slot: one more is refused at once
 * with ENG_EBUSY (and no callback); a login joining a pending one is still
 * taken; once the queue drains, logins are taken again.
 */
static void test_unlock_bound(void **state)
{
	struct fx *f = *state;
	struct ordered_result o[5], late;
	srv_alias_stats st;
	int seq = 0, done = 0;

	srv_aliases_shutdown(f->as, shutdown_done, &done);
	while (!done)
		uv_run(&f->loop, UV_RUN_ONCE);
	srv_aliases_free(&f->as);
	make_aliases_cfg(f, 300, 10, 2);
	/* 0 runs, 1 and 2 wait; 3 is refused; 4 joins 1. */
	for (int i = 0; i < 3; i++) {
		char login[16];

		snprintf(login, sizeof(login), "l%d@x", i);
		assert_int_equal(start_login(f, login, f->keyring, f->keyring_len,
					     "secret pw", &o[i], &seq), 0);
	}
	assert_int_equal(start_login(f, "l3@x", f->keyring, f->keyring_len,
				     "secret pw", &o[3], &seq), ENG_EBUSY);
	assert_int_equal(start_login(f, "l1@x", f->keyring, f->keyring_len,
				     "secret pw", &o[4], &seq), 0);
	/* Refused whatever the password or alias: no oracle in the refusal. */
	assert_int_equal(start_login(f, "nobody@x", NULL, 0, "x", &late, &seq),
			 ENG_EBUSY);
	srv_aliases_stats(f->as, &st);
	assert_int_equal(st.unlocks_running, 1);
	assert_int_equal(st.unlocks_waiting, 2);
	assert_int_equal(st.unlocks_joined, 1);
	assert_int_equal(st.unlocks_refused, 2);
	uv_run(&f->loop, UV_RUN_NOWAIT);
	assert_int_equal(o[3].r.done, 0);
	assert_int_equal(late.r.done, 0);
	o[3].r.done = 1;                      /* refused: no callback to wait for */
	run_until(f, o, 5);
	for (int i = 0; i < 5; i++) {
		if (i != 3)
			assert_int_equal(o[i].r.result, 0);
	}
	assert_int_equal(start_login(f, "l3@x", f->keyring, f->keyring_len,
				     "wrong", &late, &seq), 0);
	run_until(f, &late, 1);
	assert_int_equal(late.r.result, ENG_EAUTH);
}

/* Shutdown: logins waiting for a slot, and those that joined them, get
 * ENG_EBUSY at once; the running one finishes. */
static void test_unlock_join_shutdown(void **state)
{
	struct fx *f = *state;
	struct ordered_result o[4];
	int seq = 0, done = 0;

	assert_int_equal(start_login(f, "a@x", f->keyring, f->keyring_len,
				     "secret pw", &o[0], &seq), 0);
	for (int i = 1; i < 4; i++)
		assert_int_equal(start_login(f, "b@x", f->keyring, f->keyring_len,
					     "secret pw", &o[i], &seq), 0);
	srv_aliases_shutdown(f->as, shutdown_done, &done);
	for (int i = 1; i < 4; i++) {
		assert_int_equal(o[i].r.done, 1);
		assert_int_equal(o[i].r.result, ENG_EBUSY);
	}
	while (!done || !o[0].r.done)
		uv_run(&f->loop, UV_RUN_ONCE);
	srv_aliases_free(&f->as);
	make_aliases(f, 300);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_unlock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_serialised, setup, teardown),
		cmocka_unit_test_setup_teardown(test_spool_and_idle_close, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_unlock_cap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_release, setup, teardown),
		cmocka_unit_test_setup_teardown(test_release_frees_append_context,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_fast_unlock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fast_unlock_busy, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_fast_unlock_vs_close, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_unlock_join, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unlock_bound, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unlock_join_shutdown, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
