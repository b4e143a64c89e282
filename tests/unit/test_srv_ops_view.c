/*
 * sqlited's MAILBOX_VIEW (the sequence map of a SELECT) end to end (the
 * fixture is testsrv.c): the view against FETCH_META, a cached view
 * patched after each change, the cache after LOCK closes the alias, and
 * the cache's memory budget.
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
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "dir.h"
#include "eng_error.h"
#include "keys.h"
#include "rpc_bodies.h"
#include "rpc_codec.h"
#include "rpc_sync.h"
#include "srv.h"
#include "srv_alias.h"
#include "srv_net.h"
#include "srv_ops_view.h"
#include "testutil.h"
#include "testsrv.h"

/* An alias closes (keys wiped) about a second after its last LOCK. */
static int setup_closing(void **state)
{
	return setup_cfg(state, 0);
}

/* ---- MAILBOX_VIEW: the sequence map of a SELECT ---- */

/* A STORE of flags (and keyword kw, if any) on lo..hi, mode ADD. */
static void store_flags(rpc_sync *c, const uint8_t *s, const char *mailbox,
			uint32_t lo, uint32_t hi, uint32_t flags, const char *kw)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;

	begin(&b, s, mailbox);
	put_uidset(&b, RPC_T_UIDSET, lo, hi);
	rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&b, RPC_T_FLAGS, flags);
	if (kw != NULL)
		rpc_put_str(&b, RPC_T_KEYWORD, kw);
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
}

/* Expands MAILBOX_VIEW's UIDSET ranges and FLAG_RUNS into m (uid, flags);
 * checks that both cover MESSAGES messages. Returns that count. */
static size_t expand_view(const rpc_view *v, struct meta *m, size_t max)
{
	size_t n = 0, nf = 0, count = (size_t)get_u(v, RPC_T_MESSAGES);
	const rpc_field *fld;
	rpc_iter it;

	rpc_iter_init(&it, v);
	while ((fld = rpc_iter_next(&it, RPC_T_UIDSET)) != NULL) {
		assert_int_equal(fld->u % 8, 0);
		for (size_t i = 0; i < fld->u / 4; i += 2) {
			uint32_t lo = rpc_uids_at(fld->data, i);
			uint32_t hi = rpc_uids_at(fld->data, i + 1);

			assert_true(lo >= 1 && lo <= hi);
			for (uint32_t u = lo; u <= hi; u++) {
				assert_true(n < max);
				m[n++].uid = u;
			}
		}
	}
	rpc_iter_init(&it, v);
	while ((fld = rpc_iter_next(&it, RPC_T_FLAG_RUNS)) != NULL) {
		assert_int_equal(fld->u % 8, 0);
		for (size_t i = 0; i < fld->u / 4; i += 2) {
			uint32_t len = rpc_uids_at(fld->data, i);

			assert_true(len >= 1 && nf + len <= n);
			for (uint32_t k = 0; k < len; k++)
				m[nf++].flags = rpc_uids_at(fld->data, i + 1);
		}
	}
	assert_int_equal(n, count);
	assert_int_equal(nf, count);
	return n;
}

/* MAILBOX_VIEW of mailbox against FETCH_META: the same UIDs and flags.
 * Returns the count; resp keeps the view's answer. */
static size_t view_matches_meta(rpc_sync *c, const uint8_t *s,
				const char *mailbox, rpc_sync_resp *resp)
{
	struct meta meta[32], view[32];
	eng_buf b = ENG_BUF_INIT;
	size_t n;

	begin(&b, s, mailbox);
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, resp), 0);
	n = get_messages(&resp->view, meta, 32);
	begin(&b, s, mailbox);
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, resp), 0);
	assert_int_equal(expand_view(&resp->view, view, 32), n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(view[i].uid, meta[i].uid);
		assert_int_equal(view[i].flags, meta[i].flags);
	}
	eng_buf_free(&b);
	return n;
}

/* MAILBOX_VIEW holds exactly FETCH_META's UIDs and flags (gaps, runs of
 * flags), the mailbox's keywords once each, and checks UIDVALIDITY; a
 * repeated view (sqlited's cache) follows every change. */
static void test_mailbox_view(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	uint32_t uid, uidvalidity;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	begin(&b, s, "V");
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), 0);
	uidvalidity = (uint32_t)get_u(&resp.view, RPC_T_UIDVALIDITY);
	/* Empty: MESSAGES 0, no ranges, no runs. */
	begin(&b, s, "V");
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), 0);
	assert_int_equal(rpc_count(&resp.view, RPC_T_UIDSET), 0);
	assert_int_equal(rpc_count(&resp.view, RPC_T_FLAG_RUNS), 0);
	for (int i = 0; i < 20; i++)
		assert_int_equal(append(c, s, "V", "Subject: v\r\n\r\nv\r\n",
					17, 0, NULL, &uid), 0);
	store_flags(c, s, "V", 1, 6, ENG_F_SEEN, NULL);
	store_flags(c, s, "V", 9, 9, ENG_F_FLAGGED, "$Work");
	store_flags(c, s, "V", 12, 12, 0, "$Later");
	store_flags(c, s, "V", 13, 13, 0, "$work");     /* the same, any case */
	/* Gaps: 7, 8 and 15 go. */
	store_flags(c, s, "V", 7, 8, ENG_F_DELETED, NULL);
	store_flags(c, s, "V", 15, 15, ENG_F_DELETED, NULL);
	begin(&b, s, "V");
	assert_int_equal(call(c, RPC_OP_EXPUNGE, &b, &resp), 0);

	begin(&b, s, "V");
	rpc_put_u64(&b, RPC_T_UIDVALIDITY, uidvalidity);
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), 0);
	assert_int_equal(view_matches_meta(c, s, "V", &resp), 17);
	/* 1-6, 9-14, 16-20: three ranges; \Seen x6, \Flagged, none x10:
	 * three runs, not one pair per message. */
	assert_int_equal(rpc_count(&resp.view, RPC_T_UIDSET), 1);
	{
		const uint8_t *p;
		size_t len;

		assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_UIDSET, &p,
					       &len), 0);
		assert_int_equal(len, 3 * 8);
		assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_FLAG_RUNS, &p,
					       &len), 0);
		assert_int_equal(len, 3 * 8);
	}
	assert_int_equal(rpc_count(&resp.view, RPC_T_KEYWORD), 2);
	/* Each change shows in the next view: a flag, an expunge, an append,
	 * and the same answer again without a change. */
	store_flags(c, s, "V", 10, 10, ENG_F_ANSWERED, NULL);
	assert_int_equal(view_matches_meta(c, s, "V", &resp), 17);
	assert_int_equal(view_matches_meta(c, s, "V", &resp), 17);
	store_flags(c, s, "V", 20, 20, ENG_F_DELETED, NULL);
	begin(&b, s, "V");
	assert_int_equal(call(c, RPC_OP_EXPUNGE, &b, &resp), 0);
	assert_int_equal(view_matches_meta(c, s, "V", &resp), 16);
	assert_int_equal(append(c, s, "V", "Subject: v\r\n\r\nv\r\n", 17, 0,
				NULL, &uid), 0);
	assert_int_equal(view_matches_meta(c, s, "V", &resp), 17);
	/* Another UIDVALIDITY: EMODIFIED; a missing mailbox: ENOTFOUND. */
	begin(&b, s, "V");
	rpc_put_u64(&b, RPC_T_UIDVALIDITY, uidvalidity + 1);
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), ENG_EMODIFIED);
	begin(&b, s, "Nope");
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), ENG_ENOTFOUND);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* ---- MAILBOX_VIEW: a cached view patched after each change ---- */

#define PATCH_MAX 256

/* One request with just the session and mailbox (and dest, if any). */
static void simple_call(rpc_sync *c, const uint8_t *s, uint16_t op,
			const char *mailbox, const char *dest, uint32_t lo,
			uint32_t hi)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;

	begin(&b, s, mailbox);
	if (lo > 0)
		put_uidset(&b, RPC_T_UIDSET, lo, hi);
	if (dest != NULL)
		rpc_put_str(&b, RPC_T_DEST_MAILBOX, dest);
	assert_int_equal(call(c, op, &b, &resp), 0);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
}

static void expunge_uid(rpc_sync *c, const uint8_t *s, const char *mailbox,
			uint32_t uid)
{
	store_flags(c, s, mailbox, uid, uid, ENG_F_DELETED, NULL);
	simple_call(c, s, RPC_OP_EXPUNGE, mailbox, NULL, uid, uid);
}

/*
 * MAILBOX_VIEW of mailbox against FETCH_META (every row read afresh): the
 * same UIDs and flags, count and keywords; and which way sqlited made it
 * (how: 'h' the same state cached, 'p' an older one patched, 's' every
 * row read). Returns the count.
 */
static size_t view_check(struct fx *f, rpc_sync *c, const uint8_t *s,
			 const char *mailbox, char how, size_t keywords)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	struct meta *meta = calloc(PATCH_MAX, sizeof(*meta));
	struct meta *view = calloc(PATCH_MAX, sizeof(*view));
	struct srv_view_stats a, z;
	eng_buf b = ENG_BUF_INIT;
	size_t n;

	begin(&b, s, mailbox);
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	n = get_messages(&resp.view, meta, PATCH_MAX);
	srv_view_cache_stats(f->alias_id, &a);
	begin(&b, s, mailbox);
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), 0);
	srv_view_cache_stats(f->alias_id, &z);
	assert_int_equal(expand_view(&resp.view, view, PATCH_MAX), n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(view[i].uid, meta[i].uid);
		assert_int_equal(view[i].flags, meta[i].flags);
	}
	assert_int_equal(rpc_count(&resp.view, RPC_T_KEYWORD), keywords);
	/* The same state cached: on the pool, or on the loop when nothing
	 * but reads ran since (FETCH_META above is one; srv_ops_view.c). */
	assert_int_equal((z.hits - a.hits) + (z.loop_hits - a.loop_hits),
			 how == 'h');
	assert_int_equal(z.patched - a.patched, how == 'p');
	assert_int_equal(z.scanned - a.scanned, how == 's');
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	free(meta);
	free(view);
	return n;
}

static void append_n(rpc_sync *c, const uint8_t *s, const char *mailbox,
		     int n, uint32_t flags)
{
	uint32_t uid;

	for (int i = 0; i < n; i++)
		assert_int_equal(append(c, s, mailbox, "Subject: p\r\n\r\np\r\n",
					17, flags, NULL, &uid), 0);
}

/* After every kind of change, the patched view is what reading every row
 * gives; a mailbox re-created (new UIDVALIDITY, or the same row emptied
 * by a DELETE that left it \Noselect) is read afresh. */
static void test_mailbox_view_patch(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	uint8_t s[SRV_SESSION_BYTES];

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "P", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "Q", NULL, 0, 0);
	append_n(c, s, "P", 30, ENG_F_SEEN);
	append_n(c, s, "Q", 5, 0);
	assert_int_equal(view_check(f, c, s, "P", 's', 0), 30);
	assert_int_equal(view_check(f, c, s, "P", 'h', 0), 30);
	append_n(c, s, "P", 1, 0);                      /* append one */
	assert_int_equal(view_check(f, c, s, "P", 'p', 0), 31);
	append_n(c, s, "P", 20, ENG_F_SEEN);            /* append many */
	assert_int_equal(view_check(f, c, s, "P", 'p', 0), 51);
	/* A flag in the middle of the run of \Seen 1..30, then off again. */
	store_flags(c, s, "P", 15, 15, ENG_F_FLAGGED, NULL);
	assert_int_equal(view_check(f, c, s, "P", 'p', 0), 51);
	store_flags(c, s, "P", 16, 17, ENG_F_ANSWERED, NULL);
	assert_int_equal(view_check(f, c, s, "P", 'p', 0), 51);
	{
		rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
		eng_buf b = ENG_BUF_INIT;

		begin(&b, s, "P");
		put_uidset(&b, RPC_T_UIDSET, 15, 15);
		rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_REMOVE);
		rpc_put_u64(&b, RPC_T_FLAGS, ENG_F_FLAGGED);
		assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
		rpc_sync_resp_clear(&resp);
		eng_buf_free(&b);
	}
	assert_int_equal(view_check(f, c, s, "P", 'p', 0), 51);
	/* A keyword alone: the MODSEQ moves, the flag bits do not. */
	store_flags(c, s, "P", 20, 20, 0, "$Later");
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 51);
	/* Expunge the first, one in the middle, the last. */
	expunge_uid(c, s, "P", 1);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 50);
	expunge_uid(c, s, "P", 25);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 49);
	expunge_uid(c, s, "P", 51);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 48);
	/* Several changes at once: expunge two, flag one, append two. */
	store_flags(c, s, "P", 2, 3, ENG_F_DELETED, NULL);
	simple_call(c, s, RPC_OP_EXPUNGE, "P", NULL, 0, 0);
	store_flags(c, s, "P", 40, 40, ENG_F_DRAFT, NULL);
	append_n(c, s, "P", 2, ENG_F_SEEN);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 48);
	/* Moved in from Q, copied in, moved out to Q (both sides). */
	assert_int_equal(view_check(f, c, s, "Q", 's', 0), 5);
	simple_call(c, s, RPC_OP_MOVE, "Q", "P", 2, 3);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 50);
	assert_int_equal(view_check(f, c, s, "Q", 'p', 0), 3);
	simple_call(c, s, RPC_OP_COPY, "Q", "P", 1, 1);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 51);
	simple_call(c, s, RPC_OP_MOVE, "P", "Q", 10, 12);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 48);
	assert_int_equal(view_check(f, c, s, "Q", 'p', 0), 6);
	/* Everything expunged: an empty view, then one message again. */
	store_flags(c, s, "Q", 1, UINT32_MAX, ENG_F_DELETED, NULL);
	simple_call(c, s, RPC_OP_EXPUNGE, "Q", NULL, 0, 0);
	assert_int_equal(view_check(f, c, s, "Q", 'p', 0), 0);
	append_n(c, s, "Q", 1, 0);
	assert_int_equal(view_check(f, c, s, "Q", 'p', 0), 1);

	/* Deleted and re-created: another UIDVALIDITY (and row). */
	simple_call(c, s, RPC_OP_MAILBOX_DELETE, "Q", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "Q", NULL, 0, 0);
	append_n(c, s, "Q", 2, 0);
	assert_int_equal(view_check(f, c, s, "Q", 's', 0), 2);
	/* A parent deleted keeps its row (\Noselect) but loses its
	 * messages and expunge log: a patch would keep the old UIDs; the
	 * DELETE gave it a new UIDVALIDITY, and every row is read. */
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "Q/Child", NULL, 0, 0);
	append_n(c, s, "Q", 1, ENG_F_SEEN);
	assert_int_equal(view_check(f, c, s, "Q", 'p', 0), 3);
	simple_call(c, s, RPC_OP_MAILBOX_DELETE, "Q", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "Q", NULL, 0, 0);
	append_n(c, s, "Q", 1, 0);
	assert_int_equal(view_check(f, c, s, "Q", 's', 0), 1);
	assert_int_equal(view_check(f, c, s, "Q", 'h', 0), 1);
	rpc_sync_free(&c);
}

/* The alias's views go when it is closed after its last LOCK (keys
 * wiped); the next view after a new UNLOCK reads every row. */
static void test_mailbox_view_lock(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	struct srv_view_stats st;
	int waited = 0;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	append_n(c, s, "INBOX", 3, 0);
	assert_int_equal(view_check(f, c, s, "INBOX", 's', 0), 3);
	srv_view_cache_stats(f->alias_id, &st);
	assert_int_equal(st.entries, 1);
	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_LOCK, &b, &resp), 0);
	do {
		usleep(100 * 1000);
		srv_view_cache_stats(f->alias_id, &st);
	} while (st.entries > 0 && ++waited < 100);
	assert_int_equal(st.entries, 0);
	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	assert_int_equal(view_check(f, c, s, "INBOX", 's', 0), 3);
	assert_int_equal(view_check(f, c, s, "INBOX", 'h', 0), 3);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* Appends n messages whose flags alternate (\Seen on the odd ones): n
 * flag runs in the view. */
static void append_alternating(rpc_sync *c, const uint8_t *s,
			       const char *mailbox, int n)
{
	for (int i = 0; i < n; i++)
		append_n(c, s, mailbox, 1, i % 2 ? ENG_F_SEEN : 0);
}

/* The cache's limits: a view over the per-entry bound is never kept (every
 * row read each time), and the least recently used views go when the
 * buffers of all would pass the budget. MAILBOX_VIEW's answer carries the
 * mailbox's MAILBOX_INFO of the same state. */
static void test_mailbox_view_budget(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	struct srv_view_stats st;
	rpc_view info;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "M1", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "M2", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "M3", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "Big", NULL, 0, 0);
	append_alternating(c, s, "M1", 6);    /* 8 + 48 bytes: 2 x 64 kept */
	append_alternating(c, s, "M2", 6);
	append_alternating(c, s, "M3", 6);
	append_alternating(c, s, "Big", 12);  /* 8 + 96 bytes */
	srv_view_cache_limits(100, 300);      /* two small views fit */
	assert_int_equal(view_check(f, c, s, "M1", 's', 0), 6);
	assert_int_equal(view_check(f, c, s, "M1", 'h', 0), 6);
	assert_int_equal(view_check(f, c, s, "Big", 's', 0), 12);
	assert_int_equal(view_check(f, c, s, "Big", 's', 0), 12);
	assert_int_equal(view_check(f, c, s, "M2", 's', 0), 6);
	assert_int_equal(view_check(f, c, s, "M1", 'h', 0), 6);
	assert_int_equal(view_check(f, c, s, "M3", 's', 0), 6); /* M2 goes */
	srv_view_cache_stats(f->alias_id, &st);
	assert_int_equal(st.entries, 2);
	assert_int_equal(view_check(f, c, s, "M1", 'h', 0), 6);
	assert_int_equal(view_check(f, c, s, "M3", 'h', 0), 6);
	assert_int_equal(view_check(f, c, s, "M2", 's', 0), 6); /* M1 goes */
	assert_int_equal(view_check(f, c, s, "M3", 'h', 0), 6);
	assert_int_equal(view_check(f, c, s, "M1", 's', 0), 6);
	append_n(c, s, "M1", 1, 0);
	assert_int_equal(view_check(f, c, s, "M1", 'p', 0), 7);
	/* The MAILBOX_INFO in the answer: the state the view is of. */
	begin(&b, s, "M1");
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), 0);
	assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO, &info), 0);
	assert_int_equal(get_u(&info, RPC_T_MESSAGES), 7);
	assert_int_equal(get_u(&info, RPC_T_UIDNEXT), 8);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), 7);
	srv_view_cache_limits(0, 0);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_mailbox_view, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_mailbox_view_patch, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_mailbox_view_lock,
						setup_closing, teardown),
		cmocka_unit_test_setup_teardown(test_mailbox_view_budget,
						setup, teardown),
	};

	return cmocka_run_group_tests(tests, 0, NULL);
}
