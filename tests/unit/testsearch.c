/*
 * The search fixture (testsearch.h says what it is): the corpus, the
 * store set-up (FTS3, or the FTS4 table of an older store) and the
 * checks. Moved verbatim from test_search.c; its functions assert
 * (cmocka) rather than return errors.
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
#include <time.h>

#include "eng_error.h"
#include "keys.h"
#include "search.h"
#include "store.h"
#include "teststore.h"
#include "testsearch.h"
#include "testutil.h"

/*
 * The corpus. Dates (UTC) of the Date headers, for the hand-worked
 * expectations below: 1 Jan 2 07:30 (written Jan 1 -0800), 2 Jan 2 09:00,
 * 3 Jan 2 23:30 (written Jan 3 00:30 +0100), 4 Jan 4 12:00, 5 Jan 5 17:00,
 * 6 Jan 5 18:00, 7 none (internal Jan 16), 8 Jan 6, 9 Jan 7, 10 Jan 8.
 */
const char *const msgs[N_MSGS] = {
	/* 1 */
	"From: \"Alice Example\" <alice@example.com>\r\n"
	"To: bob@example.org\r\n"
	"Cc: Carol <carol@example.net>\r\n"
	"Subject: Project plan\r\n"
	"Date: Mon, 1 Jan 2024 23:30:00 -0800\r\n"
	"Message-ID: <m1@example.com>\r\n"
	"\r\n"
	"The wonderful project plan is attached.\r\n",
	/* 2 */
	"From: Bob <bob@example.org>\r\n"
	"To: Alice <alice@example.com>\r\n"
	"Subject: Re: Project plan\r\n"
	"Date: Tue, 2 Jan 2024 09:00:00 +0000\r\n"
	"Message-ID: <m2@example.org>\r\n"
	"In-Reply-To: <m1@example.com>\r\n"
	"References: <m1@example.com>\r\n"
	"\r\n"
	"Looks good to me.\r\n",
	/* 3: encoded words, multipart/alternative, QP and base64 HTML */
	"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>\r\n"
	"To: alice@example.com\r\n"
	"Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n"
	"Date: Wed, 3 Jan 2024 00:30:00 +0100\r\n"
	"Message-ID: <m3@example.de>\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: multipart/alternative; boundary=\"b3\"\r\n"
	"\r\n"
	"--b3\r\n"
	"Content-Type: text/plain; charset=utf-8\r\n"
	"Content-Transfer-Encoding: quoted-printable\r\n"
	"\r\n"
	"Sch=C3=B6ne Gr=C3=BC=C3=9Fe vom Rhein\r\n"
	"--b3\r\n"
	"Content-Type: text/html; charset=utf-8\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"PHA+S8O2bHNjaCB1bmQgPGI+RG9tPC9iPjwvcD4=\r\n"
	"--b3--\r\n",
	/* 4: a forward, a missing first reference, base64 text, attachment */
	"From: dave@example.com\r\n"
	"To: \"Zed\" <zed@example.com>\r\n"
	"Cc: \"Bob\" <bob@example.org>\r\n"
	"Bcc: secret@example.com\r\n"
	"Subject: Fwd: Project plan\r\n"
	"Date: Thu, 4 Jan 2024 12:00:00 +0000\r\n"
	"Message-ID: <m4@example.com>\r\n"
	"References: <m0@example.com> <m1@example.com>\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: multipart/mixed; boundary=\"b4\"\r\n"
	"\r\n"
	"--b4\r\n"
	"Content-Type: text/plain\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"Rm9yd2FyZGluZyB0aGUgYnVkZ2V0IHNwcmVhZHNoZWV0Lg==\r\n"
	"--b4\r\n"
	"Content-Type: application/octet-stream; name=\"budget.bin\"\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v\r\n"
	"MDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5f\r\n"
	"--b4--\r\n",
	/* 5 */
	"From: Erin <erin@example.com>\r\n"
	"To: alice@example.com\r\n"
	"Subject: Lunch?\r\n"
	"Date: 5 Jan 2024 12:00:00 -0500\r\n"
	"Message-ID: <m5@example.com>\r\n"
	"\r\n"
	"Pizza or sushi today\r\n",
	/* 6: In-Reply-To only */
	"From: Frank <frank@example.com>\r\n"
	"To: erin@example.com\r\n"
	"Subject: Re: Lunch?\r\n"
	"Date: Fri, 5 Jan 2024 13:00:00 -0500\r\n"
	"Message-ID: <m6@example.com>\r\n"
	"In-Reply-To: <m5@example.com>\r\n"
	"\r\n"
	"Sushi please\r\n",
	/* 7: no Date, parent missing, lower-case "re:" */
	"From: Gina <gina@example.com>\r\n"
	"To: alice@example.com\r\n"
	"Subject: re: lunch?\r\n"
	"Message-ID: <m7@example.com>\r\n"
	"References: <m99@nowhere.example>\r\n"
	"\r\n"
	"Count me in\r\n",
	/* 8 and 9: siblings under a parent we never got */
	"From: Aaron Zach <zach@example.com>\r\n"
	"To: \"Team\" <team@example.com>\r\n"
	"Subject: Random note\r\n"
	"Date: Sat, 6 Jan 2024 10:00:00 +0000\r\n"
	"Message-ID: <m8@example.com>\r\n"
	"References: <mx@missing.example>\r\n"
	"\r\n"
	"First note\r\n",
	"From: \"Yvonne\" <yvonne@example.com>\r\n"
	"To: team@example.com\r\n"
	"Subject: Re: Random note\r\n"
	"Date: Sun, 7 Jan 2024 10:00:00 +0000\r\n"
	"Message-ID: <m9@example.com>\r\n"
	"References: <mx@missing.example>\r\n"
	"\r\n"
	"Second note, a much longer text than the first one, so that the\r\n"
	"sizes differ by more than a few bytes.\r\n",
	/* 10: same subject as 1, not a reply: subject merge */
	"From: \"Alice Example\" <alice@example.com>\r\n"
	"To: \"Bob\" <bob@example.org>\r\n"
	"Subject: Project plan\r\n"
	"Date: Mon, 8 Jan 2024 10:00:00 +0000\r\n"
	"Message-ID: <m10@example.com>\r\n"
	"\r\n"
	"Here is the plan again.\r\n",
};

static const uint32_t msg_flags[N_MSGS] = {
	ENG_F_SEEN, ENG_F_ANSWERED | ENG_F_SEEN, ENG_F_FLAGGED,
	ENG_F_DRAFT | ENG_F_DELETED, 0, ENG_F_SEEN, 0,
	ENG_F_SEEN | ENG_F_FLAGGED, 0, ENG_F_SEEN,
};

/*
 * The FTS table of a store made before 2026-11-26: FTS4, with its
 * fts_docsize and fts_stat (stores are now made with FTS3, engine/store.c;
 * the old ones are left as they are and must answer the same).
 */
static const char legacy_fts4[] =
	"CREATE VIRTUAL TABLE fts USING fts4(header, body, tokenize=unicode61)";

int fts_shadow_tables(eng_store *st)
{
	return (int)tu_sql_int(st, "SELECT count(*) FROM sqlite_master WHERE "
			       "name IN ('fts_docsize', 'fts_stat')");
}

static int setup_store(void **state, bool legacy)
{
	struct fixture *f = calloc(1, sizeof(*f));
	eng_mailbox mb;

	eng_set_log(tu_log_silent);
	tu_store_open(&f->s);
	assert_int_equal(fts_shadow_tables(f->s.st), 0);
	if (legacy) {
		/* Statements, not rows: one step each, no row to answer. */
		assert_int_equal(tu_sql_int(f->s.st, "DROP TABLE fts"), -1);
		assert_int_equal(tu_sql_int(f->s.st, legacy_fts4), -1);
		assert_int_equal(fts_shadow_tables(f->s.st), 2);
	}
	assert_int_equal(eng_mailbox_get(f->s.st, "Archive", &mb), 0);
	f->archive = mb.id;
	eng_mailbox_clear(&mb);
	for (int i = 0; i < N_MSGS; i++) {
		eng_append_opts ao;
		const char *work[] = { "$Work" };
		const char *imp[] = { "$Important" };
		uint32_t uid;

		memset(&ao, 0, sizeof(ao));
		ao.flags = msg_flags[i];
		ao.internal_date = IDATE(i + 1);
		if (i == 0 || i == 5) {
			ao.keywords = work;
			ao.n_keywords = 1;
		} else if (i == 2) {
			ao.keywords = imp;
			ao.n_keywords = 1;
		}
		assert_int_equal(eng_append_message(f->s.st, f->s.inbox, msgs[i],
						    strlen(msgs[i]), &ao, &uid,
						    NULL), 0);
		assert_int_equal(uid, (uint32_t)i + 1);
	}
	*state = f;
	return 0;
}

int search_setup(void **state)
{
	return setup_store(state, false);
}

int search_setup_fts4(void **state)
{
	return setup_store(state, true);
}

int search_teardown(void **state)
{
	struct fixture *f = *state;

	tu_store_close(&f->s);
	free(f);
	return 0;
}

/* Runs a search and compares the result with the expected UIDs, in order. */
void check_sorted(struct fixture *f, int64_t mailbox, eng_query *q,
		  const eng_sort_key *sort, size_t n_sort,
		  const uint32_t *seq_map, size_t n_seq_map,
		  const uint32_t *want, size_t n_want, int line)
{
	uint32_t *uids = NULL;
	size_t n = 0;
	int err = eng_search(f->s.st, mailbox, q, sort, n_sort, seq_map,
			     n_seq_map, &uids, &n, NULL);

	if (err != 0)
		fail_msg("line %d: eng_search: %d", line, err);
	if (n != n_want || (n > 0 && memcmp(uids, want, n * 4) != 0)) {
		char got[512] = "", exp[512] = "";

		for (size_t i = 0; i < n && strlen(got) < 480; i++)
			snprintf(got + strlen(got), sizeof(got) - strlen(got),
				 " %u", uids[i]);
		for (size_t i = 0; i < n_want && strlen(exp) < 480; i++)
			snprintf(exp + strlen(exp), sizeof(exp) - strlen(exp),
				 " %u", want[i]);
		free(uids);
		eng_query_free(&q);
		fail_msg("line %d: got [%s ] want [%s ]", line, got, exp);
	}
	free(uids);
	eng_query_free(&q);
}

eng_query *uidset(const char *text)
{
	eng_uidset set;
	eng_query *q;

	assert_int_equal(eng_uidset_parse(text, &set), 0);
	q = eng_query_new_set(ENG_Q_UID, &set);
	eng_uidset_free(&set);
	return q;
}
