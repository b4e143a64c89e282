/*
 * The session, mailbox, message and search opcodes of sqlited, driven
 * end to end: a real server (srv_net) on a unix socket in a temporary
 * directory, its loop on a thread of its own, a real directory and alias
 * database, Redis absent (events and the throttle fall back to memory),
 * and the blocking client rpc_sync on the test's thread (the fixture is
 * testsrv.c). Here: UNLOCK/LOCK and the throttle, mailboxes, message
 * metadata, flags, search bounds, concurrent APPENDs. FETCH and the
 * bodies are test_srv_ops_fetch.c, MAILBOX_VIEW test_srv_ops_view.c.
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

/* All the UIDs of a packed list field, over every part. */
static size_t get_uids(const rpc_view *v, uint32_t tag, uint32_t *out,
		       size_t max)
{
	const rpc_field *fld;
	rpc_iter it;
	size_t n = 0;

	rpc_iter_init(&it, v);
	while ((fld = rpc_iter_next(&it, tag)) != NULL) {
		assert_int_equal(fld->type, RPC_W_BYTES);
		assert_int_equal(fld->u % 4, 0);
		for (size_t i = 0; i < fld->u / 4; i++) {
			assert_true(n < max);
			out[n++] = rpc_uids_at(fld->data, i);
		}
	}
	return n;
}

/* ---- tests ---- */

static void test_unlock_lock(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s1[SRV_SESSION_BYTES], s2[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);

	assert_int_equal(unlock(c, "alice@example.org", password, s1), 0);
	/* Case-insensitive address; a second session of the same alias. */
	assert_int_equal(unlock(c, "Alice@Example.ORG", password, s2), 0);
	assert_memory_not_equal(s1, s2, SRV_SESSION_BYTES);
	/* Wrong password, unknown alias, not an address: one answer. */
	assert_int_equal(unlock(c, "alice@example.org", "wrong", s2), ENG_EAUTH);
	assert_int_equal(unlock(c, "nobody@example.org", password, s2),
			 ENG_EAUTH);
	/* Field checks. */
	rpc_put_str(&b, RPC_T_ALIAS, "alice@example.org");
	assert_int_equal(call(c, RPC_OP_UNLOCK, &b, &resp), RPC_EMISSING);
	rpc_put_str(&b, RPC_T_ALIAS, "alice@example.org");
	rpc_put_u64(&b, RPC_T_PASSWORD, 7);
	assert_int_equal(call(c, RPC_OP_UNLOCK, &b, &resp), RPC_EFIELDTYPE);
	rpc_put_str(&b, RPC_T_ALIAS, "alice@example.org");
	rpc_put_bytes(&b, RPC_T_PASSWORD, "", 0);
	assert_int_equal(call(c, RPC_OP_UNLOCK, &b, &resp), ENG_EINVAL);

	/* The session works, LOCK ends it, and then it is stale. */
	begin(&b, s1, NULL);
	assert_int_equal(call(c, RPC_OP_QUOTA_GET, &b, &resp), 0);
	begin(&b, s1, NULL);
	assert_int_equal(call(c, RPC_OP_LOCK, &b, &resp), 0);
	begin(&b, s1, NULL);
	assert_int_equal(call(c, RPC_OP_MAILBOX_LIST, &b, &resp),
			 RPC_ENOSESSION);
	begin(&b, s1, NULL);
	assert_int_equal(call(c, RPC_OP_LOCK, &b, &resp), RPC_ENOSESSION);
	/* The other session still works. */
	begin(&b, s2, NULL);
	assert_int_equal(call(c, RPC_OP_QUOTA_GET, &b, &resp), 0);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

static bool list_has(const rpc_view *v, const char *name, bool *subscribed_r)
{
	const rpc_field *fld;
	rpc_iter it;

	rpc_iter_init(&it, v);
	while ((fld = rpc_iter_next(&it, RPC_T_MAILBOX_INFO)) != NULL) {
		rpc_view g = rpc_field_group(fld);
		const uint8_t *p;
		size_t len;

		assert_int_equal(rpc_get_bytes(&g, RPC_T_MAILBOX, &p, &len), 0);
		if (len == strlen(name) && memcmp(p, name, len) == 0) {
			if (subscribed_r != NULL)
				*subscribed_r = get_u(&g, RPC_T_SUBSCRIBED);
			return true;
		}
	}
	return false;
}

static void test_mailboxes(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	uint64_t uidvalidity, mailbox_id;
	rpc_view info;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	begin(&b, s, "Work/Projects");
	rpc_put_u64(&b, RPC_T_SPECIAL_USE, 16);
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), 0);
	uidvalidity = get_u(&resp.view, RPC_T_UIDVALIDITY);
	assert_true(uidvalidity > 0);
	/* MAILBOX_ID (IMAP MAILBOXID): the row id, STATUS and RENAME agree. */
	mailbox_id = get_u(&resp.view, RPC_T_MAILBOX_ID);
	assert_true(mailbox_id > 0);
	begin(&b, s, "Work/Projects");
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), ENG_EEXIST);
	begin(&b, s, "Bad");
	rpc_put_u64(&b, RPC_T_SPECIAL_USE, 0x80);
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), ENG_EINVAL);

	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_MAILBOX_LIST, &b, &resp), 0);
	assert_true(list_has(&resp.view, "INBOX", NULL));
	assert_true(list_has(&resp.view, "Work", NULL));
	assert_true(list_has(&resp.view, "Work/Projects", NULL));
	assert_false(list_has(&resp.view, "Bad", NULL));

	/* STATUS, with the right and a stale UIDVALIDITY. */
	begin(&b, s, "Work/Projects");
	rpc_put_u64(&b, RPC_T_UIDVALIDITY, uidvalidity);
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp), 0);
	assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO, &info), 0);
	assert_int_equal(get_u(&info, RPC_T_UIDVALIDITY), uidvalidity);
	assert_int_equal(get_u(&info, RPC_T_SPECIAL_USE), 16);
	assert_int_equal(get_u(&info, RPC_T_MAILBOX_ID), mailbox_id);
	assert_int_equal(get_u(&info, RPC_T_MESSAGES), 0);
	assert_int_equal(get_u(&info, RPC_T_UIDNEXT), 1);
	begin(&b, s, "Work/Projects");
	rpc_put_u64(&b, RPC_T_UIDVALIDITY, uidvalidity + 1);
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp),
			 ENG_EMODIFIED);

	/* RENAME: the old name is gone. */
	begin(&b, s, "Work/Projects");
	rpc_put_str(&b, RPC_T_NEW_NAME, "Work/Done");
	assert_int_equal(call(c, RPC_OP_MAILBOX_RENAME, &b, &resp), 0);
	begin(&b, s, "Work/Projects");
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp),
			 ENG_ENOTFOUND);
	begin(&b, s, "Work/Done");
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp), 0);
	assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO, &info), 0);
	assert_int_equal(get_u(&info, RPC_T_MAILBOX_ID), mailbox_id);
	assert_int_equal(get_u(&info, RPC_T_UIDVALIDITY), uidvalidity);

	/* SUBSCRIBE, and LIST of the subscribed only. */
	begin(&b, s, "Work/Done");
	rpc_put_u64(&b, RPC_T_SUBSCRIBED, 1);
	assert_int_equal(call(c, RPC_OP_MAILBOX_SUBSCRIBE, &b, &resp), 0);
	begin(&b, s, NULL);
	rpc_put_u64(&b, RPC_T_SUBSCRIBED, 1);
	assert_int_equal(call(c, RPC_OP_MAILBOX_LIST, &b, &resp), 0);
	{
		bool sub = false;

		assert_true(list_has(&resp.view, "Work/Done", &sub));
		assert_true(sub);
		assert_false(list_has(&resp.view, "Work", NULL));
	}
	begin(&b, s, "Work/Done");
	assert_int_equal(call(c, RPC_OP_MAILBOX_SUBSCRIBE, &b, &resp),
			 RPC_EMISSING);

	/* DELETE; INBOX cannot be. */
	begin(&b, s, "Work/Done");
	assert_int_equal(call(c, RPC_OP_MAILBOX_DELETE, &b, &resp), 0);
	begin(&b, s, "Work/Done");
	assert_int_equal(call(c, RPC_OP_MAILBOX_DELETE, &b, &resp),
			 ENG_ENOTFOUND);
	begin(&b, s, "inbox");
	assert_int_equal(call(c, RPC_OP_MAILBOX_DELETE, &b, &resp), ENG_EPERM);

	/* Field checks: missing, wrong type, bad name. */
	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp),
			 RPC_EMISSING);
	begin(&b, s, NULL);
	rpc_put_u64(&b, RPC_T_MAILBOX, 3);
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp),
			 RPC_EFIELDTYPE);
	begin(&b, s, "a//b");
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), ENG_EINVAL);

	/* QUOTA_GET of an empty alias. */
	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_QUOTA_GET, &b, &resp), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_QUOTA_USED), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_QUOTA_LIMIT), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), 0);

	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* One query node of kind with a nested node, to build trees. */
static void put_query_flag(eng_buf *b, uint32_t kind, uint32_t flag)
{
	size_t m = rpc_group_begin(b, RPC_T_QUERY);

	rpc_put_u64(b, RPC_T_Q_KIND, kind);
	rpc_put_u64(b, RPC_T_FLAGS, flag);
	rpc_group_end(b, m);
}

static void test_messages(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	struct meta m[16];
	uint32_t uids[16], dest[16], uid;
	uint64_t modseq_before_move, stored_modseq;
	char *msg;
	size_t n;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	msg = small_message("hello", "<1@x>", NULL, "first body words");
	assert_int_equal(append(c, s, "INBOX", msg, strlen(msg), 0, NULL, &uid), 0);
	free(msg);
	msg = small_message("Re: hello", "<2@x>", "<1@x>", "second reply");
	assert_int_equal(append(c, s, "INBOX", msg, strlen(msg), 0, NULL, &uid), 0);
	free(msg);
	msg = small_message("another topic", "<3@x>", NULL, "third");
	assert_int_equal(append(c, s, "INBOX", msg, strlen(msg), 0, NULL, &uid), 0);
	free(msg);
	assert_int_equal(uid, 3);

	/* FETCH_META of all, then of a set. */
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	n = get_messages(&resp.view, m, 16);
	assert_int_equal(n, 3);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(m[i].uid, i + 1);
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 2, 3);
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	assert_int_equal(get_messages(&resp.view, m, 16), 2);
	assert_int_equal(m[0].uid, 2);

	/* STORE: add \Flagged and a keyword to 2. */
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 2, 2);
	rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&b, RPC_T_FLAGS, 4);
	rpc_put_str(&b, RPC_T_KEYWORD, "$Work");
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
	assert_int_equal(get_messages(&resp.view, m, 16), 1);
	assert_int_equal(m[0].uid, 2);
	assert_int_equal(m[0].flags, 4);
	assert_int_equal(m[0].n_keywords, 1);
	assert_int_equal(rpc_count(&resp.view, RPC_T_FAILED), 0);
	/* UNCHANGEDSINCE below the message's MODSEQ: refused, in FAILED. */
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 2, 3);
	rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&b, RPC_T_FLAGS, 1);
	rpc_put_u64(&b, RPC_T_UNCHANGEDSINCE, m[0].modseq - 1);
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
	{
		eng_uidset failed = { 0 };

		assert_int_equal(rpc_get_uidset(&resp.view, RPC_T_FAILED, 16,
						&failed), 0);
		assert_true(eng_uidset_contains(&failed, 2));
		eng_uidset_free(&failed);
	}
	/* Bad MODE, bad keyword. */
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 1, 1);
	rpc_put_u64(&b, RPC_T_MODE, 3);
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), ENG_EINVAL);
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 1, 1);
	rpc_put_u64(&b, RPC_T_MODE, 1);
	rpc_put_str(&b, RPC_T_KEYWORD, "bad word");
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), ENG_EINVAL);

	/* SEARCH FLAGGED; SEARCH OR(HEADER Subject hello, UID 3). */
	begin(&b, s, "INBOX");
	put_query_flag(&b, RPC_Q_FLAG, 4);
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), 0);
	n = get_uids(&resp.view, RPC_T_UIDS, uids, 16);
	assert_int_equal(n, 1);
	assert_int_equal(uids[0], 2);
	assert_true(get_u(&resp.view, RPC_T_MODSEQ) > 0);
	begin(&b, s, "INBOX");
	{
		size_t q = rpc_group_begin(&b, RPC_T_QUERY), q1;

		rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_NOT);
		q1 = rpc_group_begin(&b, RPC_T_QUERY);
		rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_HEADER);
		rpc_put_str(&b, RPC_T_FIELD, "Subject");
		rpc_put_str(&b, RPC_T_TEXT, "hello");
		rpc_group_end(&b, q1);
		rpc_group_end(&b, q);
	}
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), 0);
	n = get_uids(&resp.view, RPC_T_UIDS, uids, 16);
	assert_int_equal(n, 1);
	assert_int_equal(uids[0], 3);
	/* SEQ without SEQ_MAP; a bad kind; NOT with two children. */
	begin(&b, s, "INBOX");
	{
		size_t q = rpc_group_begin(&b, RPC_T_QUERY);

		rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_SEQ);
		put_uidset(&b, RPC_T_UIDSET, 1, 1);
		rpc_group_end(&b, q);
	}
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), RPC_EMISSING);
	begin(&b, s, "INBOX");
	put_query_flag(&b, 99, 1);
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), ENG_EINVAL);
	begin(&b, s, "INBOX");
	put_query_flag(&b, RPC_Q_FLAG, 3);
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), ENG_EINVAL);
	/* SEQ through a map: sequence 2 is UID 3 in this view. */
	begin(&b, s, "INBOX");
	{
		const uint32_t map[] = { 1, 3 };
		size_t q = rpc_group_begin(&b, RPC_T_QUERY);

		rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_SEQ);
		put_uidset(&b, RPC_T_UIDSET, 2, 2);
		rpc_group_end(&b, q);
		rpc_put_uids(&b, RPC_T_SEQ_MAP, map, 2);
	}
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), 0);
	n = get_uids(&resp.view, RPC_T_UIDS, uids, 16);
	assert_int_equal(n, 1);
	assert_int_equal(uids[0], 3);

	/* SORT SUBJECT reversed: "hello"/"Re: hello" tie, then "another". */
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_SORT_KEY, RPC_SORT_SUBJECT | RPC_SORT_REVERSE);
	assert_int_equal(call(c, RPC_OP_SORT, &b, &resp), 0);
	n = get_uids(&resp.view, RPC_T_UIDS, uids, 16);
	assert_int_equal(n, 3);
	assert_int_equal(uids[0], 1);
	assert_int_equal(uids[1], 2);
	assert_int_equal(uids[2], 3);
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_SORT, &b, &resp), RPC_EMISSING);
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_SORT_KEY, 9);
	assert_int_equal(call(c, RPC_OP_SORT, &b, &resp), ENG_EINVAL);

	/* THREAD REFERENCES: (1 2)(3). */
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_ALGORITHM, RPC_THREAD_REFERENCES);
	assert_int_equal(call(c, RPC_OP_THREAD, &b, &resp), 0);
	{
		const uint8_t *p;
		size_t len, nn;
		rpc_tnode *nodes;

		assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_THREAD_TREE,
					       &p, &len), 0);
		assert_int_equal(rpc_thread_tree_parse(p, len, &nodes, &nn), 0);
		assert_int_equal(nn, 4);
		assert_int_equal(nodes[0].uid, 0);
		assert_int_equal(nodes[0].n_children, 2);
		assert_int_equal(nodes[1].uid, 1);
		assert_int_equal(nodes[1].n_children, 1);
		assert_int_equal(nodes[2].uid, 2);
		assert_int_equal(nodes[3].uid, 3);
		free(nodes);
	}
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_ALGORITHM, 2);
	assert_int_equal(call(c, RPC_OP_THREAD, &b, &resp), ENG_EINVAL);

	/* COPY 1:3 to Saved: the UID pairs. */
	begin(&b, s, "Saved");
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), 0);
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 1, UINT32_MAX);
	rpc_put_str(&b, RPC_T_DEST_MAILBOX, "Saved");
	assert_int_equal(call(c, RPC_OP_COPY, &b, &resp), 0);
	assert_true(get_u(&resp.view, RPC_T_UIDVALIDITY) > 0);
	assert_int_equal(get_uids(&resp.view, RPC_T_UIDS, uids, 16), 3);
	assert_int_equal(get_uids(&resp.view, RPC_T_DEST_UIDS, dest, 16), 3);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(uids[i], i + 1);
		assert_int_equal(dest[i], i + 1);
	}

	/* MOVE 2 to Saved; then CHANGES on INBOX shows it vanished. */
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp), 0);
	{
		rpc_view info;

		assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO,
					       &info), 0);
		modseq_before_move = get_u(&info, RPC_T_HIGHESTMODSEQ);
	}
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 2, 2);
	rpc_put_str(&b, RPC_T_DEST_MAILBOX, "Saved");
	assert_int_equal(call(c, RPC_OP_MOVE, &b, &resp), 0);
	assert_int_equal(get_uids(&resp.view, RPC_T_UIDS, uids, 16), 1);
	assert_int_equal(get_uids(&resp.view, RPC_T_DEST_UIDS, dest, 16), 1);
	assert_int_equal(uids[0], 2);
	assert_int_equal(dest[0], 4);
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 1, 1);
	rpc_put_str(&b, RPC_T_DEST_MAILBOX, "Nowhere");
	assert_int_equal(call(c, RPC_OP_COPY, &b, &resp), ENG_ENOTFOUND);

	/* STORE \Deleted on 3, EXPUNGE, CHANGES since before the move. */
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 3, 3);
	rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&b, RPC_T_FLAGS, 8);
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
	{
		/* The STORE's MODSEQ is the EXPUNGE's PRIOR_MODSEQ: nothing
		 * wrote between them (the imapd's view moves on it). */
		rpc_iter it;
		const rpc_field *msg_f;
		rpc_view g;

		rpc_iter_init(&it, &resp.view);
		assert_non_null(msg_f = rpc_iter_next(&it, RPC_T_MESSAGE));
		g = rpc_field_group(msg_f);
		stored_modseq = get_u(&g, RPC_T_MODSEQ);
	}
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_EXPUNGE, &b, &resp), 0);
	assert_int_equal(get_uids(&resp.view, RPC_T_UIDS, uids, 16), 1);
	assert_int_equal(uids[0], 3);
	assert_true(get_u(&resp.view, RPC_T_HIGHESTMODSEQ) > modseq_before_move);
	assert_int_equal(get_u(&resp.view, RPC_T_PRIOR_MODSEQ), stored_modseq);
	assert_true(get_u(&resp.view, RPC_T_HIGHESTMODSEQ) > stored_modseq);
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_MODSEQ, modseq_before_move);
	assert_int_equal(call(c, RPC_OP_CHANGES, &b, &resp), 0);
	{
		eng_uidset vanished = { 0 };

		assert_int_equal(rpc_get_uidset(&resp.view, RPC_T_VANISHED, 16,
						&vanished), 0);
		assert_true(eng_uidset_contains(&vanished, 2));
		assert_true(eng_uidset_contains(&vanished, 3));
		assert_false(eng_uidset_contains(&vanished, 1));
		eng_uidset_free(&vanished);
		assert_true(get_u(&resp.view, RPC_T_HIGHESTMODSEQ) >
			    modseq_before_move);
	}
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	assert_int_equal(get_messages(&resp.view, m, 16), 1);
	assert_int_equal(m[0].uid, 1);
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_CHANGES, &b, &resp), RPC_EMISSING);

	/* QUOTA counts the messages of every mailbox. */
	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_QUOTA_GET, &b, &resp), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), 5);

	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* A query nested deeper than the protocol allows is refused, whatever
 * layer refuses it, and the connection goes on. */
static void test_query_bounds(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	size_t marks[20];
	int err;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	begin(&b, s, "INBOX");
	for (int i = 0; i < 17; i++) {
		marks[i] = rpc_group_begin(&b, RPC_T_QUERY);
		rpc_put_u64(&b, RPC_T_Q_KIND, i < 16 ? RPC_Q_NOT : RPC_Q_ALL);
	}
	for (int i = 16; i >= 0; i--)
		rpc_group_end(&b, marks[i]);
	err = call(c, RPC_OP_SEARCH, &b, &resp);
	assert_true(err == RPC_EDEPTH || err == ENG_ELIMIT);
	/* 16 levels are fine: NOT^15 ALL = nothing (15 is odd). */
	begin(&b, s, "INBOX");
	for (int i = 0; i < 16; i++) {
		marks[i] = rpc_group_begin(&b, RPC_T_QUERY);
		rpc_put_u64(&b, RPC_T_Q_KIND, i < 15 ? RPC_Q_NOT : RPC_Q_ALL);
	}
	for (int i = 15; i >= 0; i--)
		rpc_group_end(&b, marks[i]);
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), 0);
	/* More nodes than the engine takes. */
	begin(&b, s, "INBOX");
	{
		size_t q = rpc_group_begin(&b, RPC_T_QUERY);

		rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_OR);
		for (int i = 0; i < 2100; i++) {
			size_t k = rpc_group_begin(&b, RPC_T_QUERY);

			rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_ALL);
			rpc_group_end(&b, k);
		}
		rpc_group_end(&b, q);
	}
	err = call(c, RPC_OP_SEARCH, &b, &resp);
	assert_true(err == ENG_ELIMIT || err == RPC_EFIELDS);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* Two connections append to one alias at once: every append gets its
 * own UID, none is lost. */
struct appender {
	struct fx *f;
	const uint8_t *session;
	int who;
	uint32_t uids[20];
	int err;
};

static void appender_thread(void *arg)
{
	struct appender *a = arg;
	rpc_sync *c = NULL;

	a->err = rpc_sync_connect_unix(a->f->srv.cfg->sqlited_socket,
				       a->f->srv.s.rpc_secret, "imap@test",
				       20000, &c);
	for (int i = 0; i < 20 && a->err == 0; i++) {
		char *msg, subject[32];

		snprintf(subject, sizeof(subject), "from %d number %d", a->who,
			 i);
		msg = small_message(subject, "<c@x>", NULL, "body");
		a->err = append(c, a->session, "INBOX", msg, strlen(msg), 0,
				NULL, &a->uids[i]);
		free(msg);
	}
	rpc_sync_free(&c);
}

static void test_concurrent_appends(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	struct appender a[2] = { { f, s, 0, { 0 }, 0 }, { f, s, 1, { 0 }, 0 } };
	uv_thread_t t[2];
	bool seen[41] = { false };
	rpc_view info;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(uv_thread_create(&t[i], appender_thread,
						  &a[i]), 0);
	for (int i = 0; i < 2; i++)
		uv_thread_join(&t[i]);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(a[i].err, 0);
		for (int j = 0; j < 20; j++) {
			uint32_t uid = a[i].uids[j];

			assert_true(uid >= 1 && uid <= 40);
			assert_false(seen[uid]);
			seen[uid] = true;
			/* One connection's UIDs increase. */
			if (j > 0)
				assert_true(uid > a[i].uids[j - 1]);
		}
	}
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp), 0);
	assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO, &info), 0);
	assert_int_equal(get_u(&info, RPC_T_MESSAGES), 40);
	assert_int_equal(get_u(&info, RPC_T_UIDNEXT), 41);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* After 3 failed unlocks the throttle makes the next one wait about 1 s
 * (a uv timer on the server), and a right password still works after. */
static void test_unlock_throttle(void **state)
{
	struct fx *f = *state;
	uint8_t s[SRV_SESSION_BYTES];
	rpc_sync *c = connect_client(f);
	uint64_t t0;

	for (int i = 0; i < 3; i++) {
		t0 = uv_hrtime();
		assert_int_equal(unlock(c, "ghost@example.org", "x", s),
				 ENG_EAUTH);
		assert_true(uv_hrtime() - t0 < 900000000ull);
	}
	t0 = uv_hrtime();
	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	assert_true(uv_hrtime() - t0 >= 900000000ull);
	rpc_sync_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_unlock_lock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mailboxes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_messages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_query_bounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_appends, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_unlock_throttle, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, 0, NULL);
}
