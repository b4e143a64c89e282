/*
 * MAILBOX_VIEW answered on sqlited's loop thread (srv_ops_view.c, "Answered
 * on the loop"), end to end on the opcode fixture (testsrv.c): the loop's
 * answer is byte for byte the pool's; a write through another session
 * (APPEND, STORE of flags or a new keyword, EXPUNGE, RENAME, DELETE then
 * CREATE of the name, SUBSCRIBE) is in the next view, which the pool
 * answers; a view sent while another item of the alias is queued takes
 * the pool; and a locked alias is never answered from what was kept.
 * Which path answered is read from srv_view_cache_stats. VIEW_HELD (a
 * view the client holds) gets VIEW_UNCHANGED on every path exactly when
 * its row is the mailbox's, and the whole view after any write.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "eng_error.h"
#include "rpc_codec.h"
#include "rpc_sync.h"
#include "srv_alias.h"
#include "srv_ops_view.h"
#include "testutil.h"
#include "testsrv.h"

static const char msg[] = "Subject: l\r\n\r\nl\r\n";

/* How a view was answered: 'l' on the loop, 'p' on the pool. */
struct view_res {
	eng_buf payload;
	unsigned parts;
	uint64_t messages, uidnext, highestmodseq;
	size_t keywords;
	bool subscribed;
};

static void res_free(struct view_res *r)
{
	eng_buf_free(&r->payload);
	memset(r, 0, sizeof(*r));
}

/* MAILBOX_VIEW of the request b: the error and the answer in *resp;
 * asserts it took path how ('l', 'p'). The counters before and after
 * into *a and *z. */
static int view_call(struct fx *f, rpc_sync *c, eng_buf *b, char how,
		     rpc_sync_resp *resp, struct srv_view_stats *a,
		     struct srv_view_stats *z)
{
	int err;

	srv_view_cache_stats(f->alias_id, a);
	err = call(c, RPC_OP_MAILBOX_VIEW, b, resp);
	srv_view_cache_stats(f->alias_id, z);
	assert_int_equal(z->loop_hits - a->loop_hits, how == 'l');
	assert_int_equal(z->loop_misses - a->loop_misses, how == 'p');
	/* The loop reads nothing: the pool's counters stay. */
	if (how == 'l')
		assert_int_equal(z->hits + z->patched + z->scanned,
				 a->hits + a->patched + a->scanned);
	return err;
}

/* MAILBOX_VIEW of mailbox (UIDVALIDITY uv if not 0): the error, and on
 * success the answer in *r; asserts it took path how ('l', 'p'). */
static int view(struct fx *f, rpc_sync *c, const uint8_t *s,
		const char *mailbox, uint32_t uv, char how,
		struct view_res *r)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	struct srv_view_stats a, z;
	eng_buf b = ENG_BUF_INIT;
	rpc_view info;
	int err;

	begin(&b, s, mailbox);
	if (uv != 0)
		rpc_put_u64(&b, RPC_T_UIDVALIDITY, uv);
	err = view_call(f, c, &b, how, &resp, &a, &z);
	if (err == 0) {
		memset(r, 0, sizeof(*r));
		eng_buf_append(&r->payload, resp.payload.data,
			       resp.payload.len);
		r->parts = resp.parts;
		r->messages = get_u(&resp.view, RPC_T_MESSAGES);
		r->keywords = rpc_count(&resp.view, RPC_T_KEYWORD);
		assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO,
					       &info), 0);
		r->uidnext = get_u(&info, RPC_T_UIDNEXT);
		r->highestmodseq = get_u(&info, RPC_T_HIGHESTMODSEQ);
		assert_int_equal(rpc_get_bool(&info, RPC_T_SUBSCRIBED,
					      &r->subscribed), 0);
		assert_int_equal(get_u(&info, RPC_T_MESSAGES), r->messages);
	}
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	return err;
}

static void same_bytes(const struct view_res *x, const struct view_res *y)
{
	assert_int_equal(x->parts, y->parts);
	assert_int_equal(x->payload.len, y->payload.len);
	assert_memory_equal(x->payload.data, y->payload.data, x->payload.len);
}

/* A request of op with the session, mailbox and the fields given. */
static void op_call(rpc_sync *c, const uint8_t *s, uint16_t op,
		    const char *mailbox, uint32_t lo, uint32_t hi,
		    uint32_t flags, const char *kw, const char *new_name)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;

	begin(&b, s, mailbox);
	if (lo > 0)
		put_uidset(&b, RPC_T_UIDSET, lo, hi);
	if (op == RPC_OP_STORE) {
		rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
		rpc_put_u64(&b, RPC_T_FLAGS, flags);
		if (kw != NULL)
			rpc_put_str(&b, RPC_T_KEYWORD, kw);
	}
	if (new_name != NULL)
		rpc_put_str(&b, RPC_T_NEW_NAME, new_name);
	if (op == RPC_OP_MAILBOX_SUBSCRIBE)
		rpc_put_bool(&b, RPC_T_SUBSCRIBED, true);
	assert_int_equal(call(c, op, &b, &resp), 0);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
}

/* CHANGES of mailbox since MODSEQ 0. */
static void changes_call(rpc_sync *c, const uint8_t *s, const char *mailbox)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;

	begin(&b, s, mailbox);
	rpc_put_u64(&b, RPC_T_MODSEQ, 0);
	assert_int_equal(call(c, RPC_OP_CHANGES, &b, &resp), 0);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
}

static void append_n(rpc_sync *c, const uint8_t *s, const char *mailbox,
		     int n, uint32_t flags)
{
	uint32_t uid;

	for (int i = 0; i < n; i++)
		assert_int_equal(append(c, s, mailbox, msg, sizeof(msg) - 1,
					flags, NULL, &uid), 0);
}

/* A write (FETCH_META is not declared read-only) so the next view goes
 * to the pool. */
/* A work item of the alias not declared read-only that leaves every view
 * as it is (it subscribes a mailbox no test looks at): the next view
 * takes the pool. */
static void touch(rpc_sync *c, const uint8_t *s)
{
	op_call(c, s, RPC_OP_MAILBOX_CREATE, "Untouched", 0, 0, 0, NULL, NULL);
	op_call(c, s, RPC_OP_MAILBOX_SUBSCRIBE, "Untouched", 0, 0, 0, NULL,
		NULL);
}

/* The loop answers a repeated view with the pool's bytes, with or without
 * a matching UIDVALIDITY and for any spelling of INBOX; another
 * UIDVALIDITY is the pool's EMODIFIED. */
static void test_view_loop_same_bytes(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	struct view_res p, l, x;
	uint8_t s[SRV_SESSION_BYTES];
	uint32_t uv;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	op_call(c, s, RPC_OP_MAILBOX_CREATE, "L", 0, 0, 0, NULL, NULL);
	append_n(c, s, "L", 12, ENG_F_SEEN);
	append_n(c, s, "L", 8, 0);
	op_call(c, s, RPC_OP_STORE, "L", 3, 3, ENG_F_FLAGGED, "$Work", NULL);
	op_call(c, s, RPC_OP_STORE, "L", 5, 6, ENG_F_DELETED, NULL, NULL);
	op_call(c, s, RPC_OP_EXPUNGE, "L", 0, 0, 0, NULL, NULL);
	op_call(c, s, RPC_OP_STORE, "L", 9, 9, 0, "$Later", NULL);
	assert_int_equal(view(f, c, s, "L", 0, 'p', &p), 0);
	assert_int_equal(p.messages, 18);
	assert_int_equal(p.keywords, 2);
	assert_int_equal(view(f, c, s, "L", 0, 'l', &l), 0);
	same_bytes(&p, &l);
	res_free(&l);
	assert_int_equal(view(f, c, s, "L", 0, 'l', &l), 0);
	same_bytes(&p, &l);
	res_free(&l);
	/* The pool again (its cache hit), the same bytes as the loop's. */
	touch(c, s);
	assert_int_equal(view(f, c, s, "L", 0, 'p', &x), 0);
	same_bytes(&p, &x);
	res_free(&x);
	/* UIDVALIDITY?: the same answer when it matches. */
	{
		rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
		eng_buf b = ENG_BUF_INIT;
		rpc_view info;

		begin(&b, s, "L");
		assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), 0);
		assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO,
					       &info), 0);
		uv = (uint32_t)get_u(&info, RPC_T_UIDVALIDITY);
		rpc_sync_resp_clear(&resp);
		eng_buf_free(&b);
	}
	assert_int_equal(view(f, c, s, "L", uv, 'l', &l), 0);
	same_bytes(&p, &l);
	res_free(&l);
	assert_int_equal(view(f, c, s, "L", uv + 1, 'p', &x), ENG_EMODIFIED);
	/* A failed view changes nothing: the loop again. */
	assert_int_equal(view(f, c, s, "L", 0, 'l', &l), 0);
	same_bytes(&p, &l);
	res_free(&l);
	/* Reads declared read-only (MAILBOX_STATUS, MAILBOX_LIST, QUOTA_GET,
	 * FETCH_META, CHANGES) leave the generation: the loop still answers. */
	op_call(c, s, RPC_OP_MAILBOX_STATUS, "L", 0, 0, 0, NULL, NULL);
	op_call(c, s, RPC_OP_MAILBOX_LIST, NULL, 0, 0, 0, NULL, NULL);
	op_call(c, s, RPC_OP_QUOTA_GET, NULL, 0, 0, 0, NULL, NULL);
	op_call(c, s, RPC_OP_FETCH_META, "L", 0, 0, 0, NULL, NULL);
	changes_call(c, s, "L");
	assert_int_equal(view(f, c, s, "L", 0, 'l', &l), 0);
	same_bytes(&p, &l);
	res_free(&l);
	res_free(&p);
	/* INBOX asked as "inbox": the canonical name is the entry's. */
	append_n(c, s, "INBOX", 2, 0);
	assert_int_equal(view(f, c, s, "INBOX", 0, 'p', &p), 0);
	assert_int_equal(view(f, c, s, "inbox", 0, 'l', &l), 0);
	same_bytes(&p, &l);
	res_free(&l);
	res_free(&p);
	/* A missing mailbox is never the loop's. */
	assert_int_equal(view(f, c, s, "Nope", 0, 'p', &x), ENG_ENOTFOUND);
	assert_int_equal(view(f, c, s, "Nope", 0, 'p', &x), ENG_ENOTFOUND);
	rpc_sync_free(&c);
}

/*
 * Brings mailbox to a view the loop answers (one on the pool, then one
 * on the loop), in r (the loop's answer).
 */
static void settle(struct fx *f, rpc_sync *c, const uint8_t *s,
		   const char *mailbox, struct view_res *r)
{
	struct view_res p;

	assert_int_equal(view(f, c, s, mailbox, 0, 'p', &p), 0);
	assert_int_equal(view(f, c, s, mailbox, 0, 'l', r), 0);
	same_bytes(&p, r);
	res_free(&p);
}

/* After a write by another session, the pool answers the next view with
 * the change, and then the loop again with those bytes. */
static void after_write(struct fx *f, rpc_sync *c, const uint8_t *s,
			const char *mailbox, struct view_res *r)
{
	struct view_res l;

	assert_int_equal(view(f, c, s, mailbox, 0, 'p', r), 0);
	assert_int_equal(view(f, c, s, mailbox, 0, 'l', &l), 0);
	same_bytes(r, &l);
	res_free(&l);
}

/* Every kind of write made through a second session (its own connection
 * and UNLOCK) is seen by the first session's next view. */
static void test_view_loop_other_session(void **state)
{
	struct fx *f = *state;
	rpc_sync *c1 = connect_client(f), *c2 = connect_client(f);
	uint8_t s1[SRV_SESSION_BYTES], s2[SRV_SESSION_BYTES];
	struct view_res r, old;

	assert_int_equal(unlock(c1, "alice@example.org", password, s1), 0);
	assert_int_equal(unlock(c2, "alice@example.org", password, s2), 0);
	op_call(c2, s2, RPC_OP_MAILBOX_CREATE, "W", 0, 0, 0, NULL, NULL);
	append_n(c2, s2, "W", 10, 0);
	settle(f, c1, s1, "W", &old);
	assert_int_equal(old.messages, 10);

	append_n(c2, s2, "W", 1, 0);                          /* APPEND */
	after_write(f, c1, s1, "W", &r);
	assert_int_equal(r.messages, 11);
	assert_int_equal(r.uidnext, old.uidnext + 1);
	res_free(&old);
	old = r;
	op_call(c2, s2, RPC_OP_STORE, "W", 4, 4, ENG_F_SEEN, NULL, NULL);
	after_write(f, c1, s1, "W", &r);                      /* STORE */
	assert_true(r.highestmodseq > old.highestmodseq);
	assert_int_equal(r.messages, 11);
	assert_true(r.payload.len != old.payload.len ||
		    memcmp(r.payload.data, old.payload.data,
			   r.payload.len) != 0);
	res_free(&old);
	old = r;
	op_call(c2, s2, RPC_OP_STORE, "W", 2, 2, 0, "$New", NULL);
	after_write(f, c1, s1, "W", &r);                      /* a keyword */
	assert_int_equal(r.keywords, old.keywords + 1);
	res_free(&old);
	old = r;
	op_call(c2, s2, RPC_OP_STORE, "W", 7, 8, ENG_F_DELETED, NULL, NULL);
	op_call(c2, s2, RPC_OP_EXPUNGE, "W", 0, 0, 0, NULL, NULL);
	after_write(f, c1, s1, "W", &r);                      /* EXPUNGE */
	assert_int_equal(r.messages, 9);
	res_free(&old);
	old = r;
	op_call(c2, s2, RPC_OP_MAILBOX_SUBSCRIBE, "W", 0, 0, 0, NULL, NULL);
	after_write(f, c1, s1, "W", &r);                      /* SUBSCRIBE */
	assert_true(r.subscribed && !old.subscribed);
	res_free(&r);
	/* RENAME: the old name is gone, the new one has the messages. */
	op_call(c2, s2, RPC_OP_MAILBOX_RENAME, "W", 0, 0, 0, NULL, "W2");
	assert_int_equal(view(f, c1, s1, "W", 0, 'p', &r), ENG_ENOTFOUND);
	after_write(f, c1, s1, "W2", &r);
	assert_int_equal(r.messages, 9);
	res_free(&r);
	/* Renamed back over the kept entry of "W": still the pool first. */
	op_call(c2, s2, RPC_OP_MAILBOX_RENAME, "W2", 0, 0, 0, NULL, "W");
	after_write(f, c1, s1, "W", &r);
	assert_int_equal(r.messages, 9);
	res_free(&r);
	/* DELETE and CREATE of the same name: an empty mailbox. */
	op_call(c2, s2, RPC_OP_MAILBOX_DELETE, "W", 0, 0, 0, NULL, NULL);
	op_call(c2, s2, RPC_OP_MAILBOX_CREATE, "W", 0, 0, 0, NULL, NULL);
	after_write(f, c1, s1, "W", &r);
	assert_int_equal(r.messages, 0);
	assert_int_equal(r.keywords, 0);
	res_free(&r);
	/* Many rounds of append, then view, alternating sessions. */
	for (int i = 0; i < 20; i++) {
		append_n(i % 2 ? c1 : c2, i % 2 ? s1 : s2, "W", 1,
			 i % 3 ? 0 : ENG_F_FLAGGED);
		after_write(f, c1, s1, "W", &r);
		assert_int_equal(r.messages, (uint64_t)i + 1);
		res_free(&r);
	}
	res_free(&old);
	rpc_sync_free(&c1);
	rpc_sync_free(&c2);
}

/* ---- a view while another item of the alias is queued ---- */

/* A work item that holds the alias's queue until released; injected on
 * the loop thread through an async handle made before the loop runs. */
static struct {
	uv_async_t async;
	uv_sem_t started, release, done;
	srv_aliases *aliases;
	char alias_id[SRV_ALIAS_ID_MAX + 1];
	int submit_err;
	uint64_t misses;             /* loop_misses before the view */
} blk;

static int block_work(srv_alias *a, void *ctx)
{
	(void)a;
	(void)ctx;
	uv_sem_post(&blk.started);
	uv_sem_wait(&blk.release);
	return 0;
}

static void block_done(void *ctx, int result)
{
	(void)ctx;
	(void)result;
	uv_sem_post(&blk.done);
}

static void block_submit(uv_async_t *h)
{
	blk.submit_err = srv_alias_submit(blk.aliases, blk.alias_id,
					  block_work, block_done, NULL);
	if (blk.submit_err != 0)
		uv_sem_post(&blk.started);
	uv_close((uv_handle_t *)h, NULL);     /* one use */
}

/* setup's server, with blk's async handle on its loop. */
static int setup_blocker(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_int_equal(tsrv_init(&f->srv, tu_tmpdir(), NULL), 0);
	assert_int_equal(dir_domain_add(f->srv.s.dir, "example.org"), 0);
	assert_int_equal(tsrv_add_alias(&f->srv, "alice@example.org",
					password, f->alias_id, NULL), 0);
	assert_int_equal(uv_async_init(&f->srv.loop, &blk.async,
				       block_submit), 0);
	assert_int_equal(uv_sem_init(&blk.started, 0), 0);
	assert_int_equal(uv_sem_init(&blk.release, 0), 0);
	assert_int_equal(uv_sem_init(&blk.done, 0), 0);
	blk.aliases = f->srv.s.aliases;
	memcpy(blk.alias_id, f->alias_id, sizeof(f->alias_id));
	assert_int_equal(tsrv_run(&f->srv, NULL), 0);
	*state = f;
	return 0;
}

static int teardown_blocker(void **state)
{
	teardown(state);
	uv_sem_destroy(&blk.started);
	uv_sem_destroy(&blk.release);
	uv_sem_destroy(&blk.done);
	return 0;
}

/* Releases the blocker once the view has reached sqlited and missed the
 * loop (it then waits behind the blocker on the alias's queue). */
static void release_after_miss(void *arg)
{
	struct fx *f = arg;
	struct srv_view_stats st;
	int waited = 0;

	do {
		usleep(10 * 1000);
		srv_view_cache_stats(f->alias_id, &st);
	} while (st.loop_misses == blk.misses && ++waited < 1000);
	uv_sem_post(&blk.release);
}

/* A view sent while another item of the alias runs (or is queued) takes
 * the pool, behind it; once the queue is empty again the loop answers. */
static void test_view_loop_queued(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	uint8_t s[SRV_SESSION_BYTES];
	struct srv_view_stats st;
	struct view_res l, q;
	uv_thread_t t;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	append_n(c, s, "INBOX", 5, 0);
	settle(f, c, s, "INBOX", &l);
	assert_int_equal(uv_async_send(&blk.async), 0);
	uv_sem_wait(&blk.started);
	assert_int_equal(blk.submit_err, 0);
	srv_view_cache_stats(f->alias_id, &st);
	blk.misses = st.loop_misses;
	assert_int_equal(uv_thread_create(&t, release_after_miss, f), 0);
	assert_int_equal(view(f, c, s, "INBOX", 0, 'p', &q), 0);
	uv_thread_join(&t);
	uv_sem_wait(&blk.done);
	same_bytes(&l, &q);
	res_free(&q);
	/* The view started after the blocker ended (and moved the
	 * generation): what it recorded is current, the loop answers. */
	assert_int_equal(view(f, c, s, "INBOX", 0, 'l', &q), 0);
	same_bytes(&l, &q);
	res_free(&q);
	res_free(&l);
	rpc_sync_free(&c);
}

/* ---- VIEW_HELD: a view the client holds ---- */

/* A mailbox row as VIEW_HELD carries it (in the order of held_tags). */
struct row {
	uint64_t v[5];
};

static const uint32_t held_tags[5] = {
	RPC_T_MAILBOX_ID, RPC_T_UIDVALIDITY, RPC_T_UIDNEXT,
	RPC_T_HIGHESTMODSEQ, RPC_T_MESSAGES,
};

/*
 * MAILBOX_VIEW of mailbox holding h (NULL: no VIEW_HELD; drop: a tag
 * left out of the group, 0 none), asserted to take path how ('l', 'p'):
 * 1 if the answer is VIEW_UNCHANGED (then without a range or a run), 0
 * if it is the whole view; the answer's row into *r.
 */
static int view_held(struct fx *f, rpc_sync *c, const uint8_t *s,
		     const char *mailbox, const struct row *h, uint32_t drop,
		     char how, struct row *r)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	struct srv_view_stats a, z;
	eng_buf b = ENG_BUF_INIT;
	rpc_view info;
	int unchanged;

	begin(&b, s, mailbox);
	if (h != NULL) {
		size_t mark = rpc_group_begin(&b, RPC_T_VIEW_HELD);

		for (size_t i = 0; i < 5; i++)
			if (held_tags[i] != drop)
				rpc_put_u64(&b, held_tags[i], h->v[i]);
		rpc_group_end(&b, mark);
	}
	assert_int_equal(view_call(f, c, &b, how, &resp, &a, &z), 0);
	assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO, &info),
			 0);
	for (size_t i = 0; i < 5; i++)
		r->v[i] = get_u(&info, held_tags[i]);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), r->v[4]);
	unchanged = rpc_count(&resp.view, RPC_T_VIEW_UNCHANGED) > 0;
	assert_int_equal(z.unchanged - a.unchanged, unchanged);
	if (unchanged) {
		assert_int_equal(get_u(&resp.view, RPC_T_VIEW_UNCHANGED), 1);
		assert_int_equal(rpc_count(&resp.view, RPC_T_UIDSET), 0);
		assert_int_equal(rpc_count(&resp.view, RPC_T_FLAG_RUNS), 0);
	} else {
		assert_true(rpc_count(&resp.view, RPC_T_UIDSET) > 0);
		assert_true(rpc_count(&resp.view, RPC_T_FLAG_RUNS) > 0);
	}
	/* The keywords come either way. */
	assert_true(rpc_count(&resp.view, RPC_T_KEYWORD) > 0);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	return unchanged;
}

static void same_row(const struct row *x, const struct row *y)
{
	assert_memory_equal(x->v, y->v, sizeof(x->v));
}

/* VIEW_UNCHANGED on the loop, from the pool's cache and from a read of
 * every row when the row held is the mailbox's; the whole view when any
 * of its fields differs or is missing, and after each write of another
 * session (then VIEW_UNCHANGED again for the new row). */
static void test_view_held(void **state)
{
	struct fx *f = *state;
	rpc_sync *c1 = connect_client(f), *c2 = connect_client(f);
	uint8_t s1[SRV_SESSION_BYTES], s2[SRV_SESSION_BYTES];
	struct row r0, r, x;

	assert_int_equal(unlock(c1, "alice@example.org", password, s1), 0);
	assert_int_equal(unlock(c2, "alice@example.org", password, s2), 0);
	op_call(c2, s2, RPC_OP_MAILBOX_CREATE, "H", 0, 0, 0, NULL, NULL);
	append_n(c2, s2, "H", 6, ENG_F_SEEN);
	append_n(c2, s2, "H", 4, 0);
	op_call(c2, s2, RPC_OP_STORE, "H", 2, 2, ENG_F_FLAGGED, "$Kw", NULL);
	assert_int_equal(view_held(f, c1, s1, "H", NULL, 0, 'p', &r0), 0);
	assert_int_equal(r0.v[4], 10);
	assert_int_equal(view_held(f, c1, s1, "H", &r0, 0, 'l', &r), 1);
	same_row(&r, &r0);
	touch(c1, s1);                                    /* the pool's cache */
	assert_int_equal(view_held(f, c1, s1, "H", &r0, 0, 'p', &r), 1);
	srv_view_cache_forget(f->alias_id);               /* every row read */
	assert_int_equal(view_held(f, c1, s1, "H", &r0, 0, 'p', &r), 1);
	same_row(&r, &r0);
	for (size_t i = 0; i < 5; i++) {
		x = r0;
		x.v[i]++;
		assert_int_equal(view_held(f, c1, s1, "H", &x, 0, 'l', &r), 0);
		x.v[i] -= 2;
		assert_int_equal(view_held(f, c1, s1, "H", &x, 0, 'l', &r), 0);
		assert_int_equal(view_held(f, c1, s1, "H", &r0, held_tags[i],
					   'l', &r), 0);
		same_row(&r, &r0);
	}
	for (int w = 0; w < 5; w++) {
		if (w == 0)
			op_call(c2, s2, RPC_OP_STORE, "H", 7, 7, ENG_F_SEEN,
				NULL, NULL);
		else if (w == 1)
			append_n(c2, s2, "H", 1, ENG_F_SEEN);
		else if (w == 2)
			op_call(c2, s2, RPC_OP_STORE, "H", 3, 3, 0, "$Other",
				NULL);
		else if (w == 3)
			op_call(c2, s2, RPC_OP_STORE, "H", 9, 9, ENG_F_DELETED,
				NULL, NULL);
		else
			op_call(c2, s2, RPC_OP_EXPUNGE, "H", 0, 0, 0, NULL,
				NULL);
		assert_int_equal(view_held(f, c1, s1, "H", &r0, 0, 'p', &r), 0);
		assert_true(r.v[3] > r0.v[3]);
		assert_int_equal(view_held(f, c1, s1, "H", &r, 0, 'l', &x), 1);
		same_row(&x, &r);
		r0 = r;
	}
	assert_int_equal(r0.v[4], 10);
	rpc_sync_free(&c1);
	rpc_sync_free(&c2);
}

/* ---- a locked alias ---- */

/* After the last LOCK the alias is closed (keys wiped, its views
 * dropped); after a new UNLOCK the first view reads every row on the
 * pool, never what the loop had. */
static void test_view_loop_locked(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	struct srv_view_stats a, z;
	struct view_res l, r;
	int waited = 0;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	append_n(c, s, "INBOX", 3, 0);
	settle(f, c, s, "INBOX", &l);
	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_LOCK, &b, &resp), 0);
	/* The ended session is refused before any cache is looked at. */
	srv_view_cache_stats(f->alias_id, &a);
	begin(&b, s, "INBOX");
	assert_int_not_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), 0);
	srv_view_cache_stats(f->alias_id, &z);
	assert_int_equal(z.loop_hits, a.loop_hits);
	do {
		usleep(100 * 1000);
		srv_view_cache_stats(f->alias_id, &z);
	} while (z.entries > 0 && ++waited < 100);
	assert_int_equal(z.entries, 0);
	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	srv_view_cache_stats(f->alias_id, &a);
	assert_int_equal(view(f, c, s, "INBOX", 0, 'p', &r), 0);
	srv_view_cache_stats(f->alias_id, &z);
	assert_int_equal(z.scanned - a.scanned, 1);
	same_bytes(&l, &r);
	res_free(&r);
	assert_int_equal(view(f, c, s, "INBOX", 0, 'l', &r), 0);
	res_free(&r);
	res_free(&l);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* An alias closed after its last session: setup_cfg(0). */
static int setup_closing(void **state)
{
	return setup_cfg(state, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_view_loop_same_bytes,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_view_loop_other_session,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_view_loop_queued,
						setup_blocker,
						teardown_blocker),
		cmocka_unit_test_setup_teardown(test_view_loop_locked,
						setup_closing, teardown),
		cmocka_unit_test_setup_teardown(test_view_held, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, 0, NULL);
}
