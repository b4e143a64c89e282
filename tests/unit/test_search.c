/*
 * SEARCH (engine/search.h) over a real encrypted store: every search key,
 * AND/OR/NOT, sequence sets through a map, MODSEQ after a STORE, the
 * header scan against the FTS index, on the FTS3 store and on one with the
 * older FTS4 table. SORT and THREAD are in test_search_sort.c; the corpus
 * and the checks are testsearch.c's.
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

static void test_all_and_flags(void **state)
{
	struct fixture *f = *state;

	CHECK(NULL, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
	CHECK(eng_query_new(ENG_Q_ALL), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
	CHECK(eng_query_new_flag(ENG_F_SEEN, true), 1, 2, 6, 8, 10);
	CHECK(eng_query_new_flag(ENG_F_SEEN, false), 3, 4, 5, 7, 9);
	CHECK(eng_query_new_flag(ENG_F_ANSWERED, true), 2);
	CHECK(eng_query_new_flag(ENG_F_ANSWERED, false),
	      1, 3, 4, 5, 6, 7, 8, 9, 10);
	CHECK(eng_query_new_flag(ENG_F_DELETED, true), 4);
	CHECK(eng_query_new_flag(ENG_F_DELETED, false),
	      1, 2, 3, 5, 6, 7, 8, 9, 10);
	CHECK(eng_query_new_flag(ENG_F_DRAFT, true), 4);
	CHECK(eng_query_new_flag(ENG_F_DRAFT, false),
	      1, 2, 3, 5, 6, 7, 8, 9, 10);
	CHECK(eng_query_new_flag(ENG_F_FLAGGED, true), 3, 8);
	CHECK(eng_query_new_flag(ENG_F_FLAGGED, false),
	      1, 2, 4, 5, 6, 7, 9, 10);
}

static void test_keywords(void **state)
{
	struct fixture *f = *state;

	/* Keywords ignore case. */
	CHECK(eng_query_new_keyword("$work", true), 1, 6);
	CHECK(eng_query_new_keyword("$WORK", false), 2, 3, 4, 5, 7, 8, 9, 10);
	CHECK(eng_query_new_keyword("$Important", true), 3);
	CHECK_NONE(eng_query_new_keyword("$Nothing", true));
	CHECK(eng_query_new_keyword("$Nothing", false),
	      1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
}

static void test_uid_and_seq_sets(void **state)
{
	struct fixture *f = *state;
	/* The session's view: UID 4 is not in it. */
	const uint32_t map[] = { 1, 2, 3, 5, 6, 7, 8, 9, 10 };
	eng_uidset set;
	uint32_t *uids = NULL;
	size_t n = 0;
	eng_query *q;

	CHECK(uidset("2:4,9:*"), 2, 3, 4, 9, 10);
	/* '*' is the highest UID, so 20:* is 10:20. */
	CHECK(uidset("20:*"), 10);
	CHECK_NONE(uidset("11:20"));
	CHECK(uidset("7,3,5:4"), 3, 4, 5, 7);

	assert_int_equal(eng_uidset_parse("2:4,*", &set), 0);
	q = eng_query_new_set(ENG_Q_SEQ, &set);
	{
		const uint32_t want[] = { 2, 3, 5, 10 };

		check_sorted(f, f->s.inbox, q, NULL, 0, map, 9, want, 4, __LINE__);
	}
	/* No map: a sequence set cannot be resolved. */
	q = eng_query_new_set(ENG_Q_SEQ, &set);
	assert_int_equal(eng_search(f->s.st, f->s.inbox, q, NULL, 0, NULL, 0,
				    &uids, &n, NULL), ENG_EINVAL);
	assert_null(uids);
	eng_query_free(&q);
	eng_uidset_free(&set);
	/* Sequence numbers past the view match nothing; '*' alone the last. */
	assert_int_equal(eng_uidset_parse("12:15", &set), 0);
	q = eng_query_new_set(ENG_Q_SEQ, &set);
	check_sorted(f, f->s.inbox, q, NULL, 0, map, 9, NULL, 0, __LINE__);
	eng_uidset_free(&set);
	/* NOT of a sequence set through the map. */
	assert_int_equal(eng_uidset_parse("1:8", &set), 0);
	q = eng_query_new_not(eng_query_new_set(ENG_Q_SEQ, &set));
	{
		const uint32_t want[] = { 4, 10 };

		check_sorted(f, f->s.inbox, q, NULL, 0, map, 9, want, 2, __LINE__);
	}
	eng_uidset_free(&set);
}

static void test_dates(void **state)
{
	struct fixture *f = *state;
	int64_t jan12 = JAN1 + 11 * DAY, jan18 = JAN1 + 17 * DAY;

	/* Internal dates: message i arrived on Jan 9 + i. */
	CHECK(eng_query_new_number(ENG_Q_BEFORE, jan12), 1, 2);
	CHECK(eng_query_new_number(ENG_Q_ON, jan12), 3);
	CHECK(eng_query_new_number(ENG_Q_SINCE, jan18), 9, 10);
	CHECK_NONE(eng_query_new_number(ENG_Q_ON, JAN1));

	/* Date header, on the day as written in its own zone: 1 is Jan 1
	 * (-0800) though Jan 2 in UTC; 3 is Jan 3 (+0100), Jan 2 in UTC. */
	CHECK(eng_query_new_number(ENG_Q_SENTON, JAN1), 1);
	CHECK(eng_query_new_number(ENG_Q_SENTON, JAN1 + DAY), 2);
	CHECK(eng_query_new_number(ENG_Q_SENTON, JAN1 + 2 * DAY), 3);
	CHECK(eng_query_new_number(ENG_Q_SENTON, JAN1 + 4 * DAY), 5, 6);
	CHECK(eng_query_new_number(ENG_Q_SENTBEFORE, JAN1 + 2 * DAY), 1, 2);
	CHECK(eng_query_new_number(ENG_Q_SENTSINCE, JAN1 + 5 * DAY), 8, 9, 10);
	/* 7 has no Date: it is in no SENT* set, so in every NOT of one. */
	CHECK(eng_query_new_not(eng_query_new_number(ENG_Q_SENTBEFORE,
						     JAN1 + 2 * DAY)),
	      3, 4, 5, 6, 7, 8, 9, 10);

	/* Save dates are the time of the append: today. */
	{
		int64_t today = (int64_t)time(NULL) / DAY * DAY;

		CHECK(eng_query_new(ENG_Q_SAVEDATESUPPORTED),
		      1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
		CHECK_NONE(eng_query_new_number(ENG_Q_SAVEDBEFORE, JAN1));
		CHECK(eng_query_new_number(ENG_Q_SAVEDSINCE, today - DAY),
		      1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
		CHECK_NONE(eng_query_new_number(ENG_Q_SAVEDSINCE,
						today + 2 * DAY));
	}
}

static void test_within(void **state)
{
	struct fixture *f = *state;
	eng_append_opts ao;
	uint32_t uid;
	const uint32_t want[] = { 2 };

	memset(&ao, 0, sizeof(ao));
	ao.internal_date = (int64_t)time(NULL) - 30 * DAY;
	assert_int_equal(eng_append_message(f->s.st, f->archive, msgs[0],
					    strlen(msgs[0]), &ao, &uid, NULL), 0);
	assert_int_equal(uid, 1);
	ao.internal_date = (int64_t)time(NULL) - 100;
	assert_int_equal(eng_append_message(f->s.st, f->archive, msgs[4],
					    strlen(msgs[4]), &ao, &uid, NULL), 0);
	assert_int_equal(uid, 2);

	CHECK(eng_query_new_number(ENG_Q_OLDER, 3600),
	      1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
	CHECK_NONE(eng_query_new_number(ENG_Q_YOUNGER, 3600));
	check_sorted(f, f->archive, eng_query_new_number(ENG_Q_YOUNGER, 3600),
		     NULL, 0, NULL, 0, want, 1, __LINE__);
	{
		const uint32_t w1[] = { 1 };

		check_sorted(f, f->archive,
			     eng_query_new_number(ENG_Q_OLDER, 3600),
			     NULL, 0, NULL, 0, w1, 1, __LINE__);
	}
	/* Searches stay in their mailbox. */
	check_sorted(f, f->archive, eng_query_new_header("Subject", "Lunch"),
		     NULL, 0, NULL, 0, want, 1, __LINE__);
}

static void test_sizes(void **state)
{
	struct fixture *f = *state;
	size_t pivot = strlen(msgs[4]);   /* message 5 */
	uint32_t want[N_MSGS];
	size_t n = 0;

	for (int i = 0; i < N_MSGS; i++) {
		if (strlen(msgs[i]) > pivot)
			want[n++] = (uint32_t)i + 1;
	}
	assert_true(n > 0 && n < N_MSGS - 1);
	check_sorted(f, f->s.inbox, eng_query_new_number(ENG_Q_LARGER,
		     (int64_t)pivot), NULL, 0, NULL, 0, want, n, __LINE__);
	n = 0;
	for (int i = 0; i < N_MSGS; i++) {
		if (strlen(msgs[i]) < pivot)
			want[n++] = (uint32_t)i + 1;
	}
	assert_true(n > 0);
	check_sorted(f, f->s.inbox, eng_query_new_number(ENG_Q_SMALLER,
		     (int64_t)pivot), NULL, 0, NULL, 0, want, n, __LINE__);
	/* Neither larger nor smaller than itself. */
	check_sorted(f, f->s.inbox, eng_query_new_and(
		     eng_query_new_not(eng_query_new_number(ENG_Q_LARGER,
							    (int64_t)pivot)),
		     eng_query_new_not(eng_query_new_number(ENG_Q_SMALLER,
							    (int64_t)pivot))),
		     NULL, 0, NULL, 0, (const uint32_t[]){ 5 }, 1, __LINE__);
}

static void test_headers(void **state)
{
	struct fixture *f = *state;

	/* Decoded encoded words, case folded beyond ASCII. */
	CHECK(eng_query_new_header("Subject", "grüße aus"), 3);
	CHECK(eng_query_new_header("SUBJECT", "KÖLN"), 3);
	CHECK(eng_query_new_header("From", "MÜLLER"), 3);
	CHECK(eng_query_new_header("Subject", "project"), 1, 2, 4, 10);
	CHECK(eng_query_new_header("Subject", "re: "), 2, 6, 7, 9);
	CHECK(eng_query_new_header("From", "example.org"), 2);
	CHECK(eng_query_new_header("From", "alice"), 1, 10);
	CHECK(eng_query_new_header("To", "zed"), 4);
	CHECK(eng_query_new_header("Cc", "bob@"), 4);
	CHECK(eng_query_new_header("Cc", "carol"), 1);
	CHECK(eng_query_new_header("Bcc", "SECRET"), 4);
	CHECK(eng_query_new_header("Message-ID", "m5@"), 5);
	/* An empty string: every message with the field. */
	CHECK(eng_query_new_header("In-Reply-To", ""), 2, 6);
	CHECK(eng_query_new_header("Cc", ""), 1, 4);
	CHECK_NONE(eng_query_new_header("X-Nothing", ""));
	/* A field name is matched whole, not as a prefix. */
	CHECK_NONE(eng_query_new_header("Subj", "project"));
	CHECK_NONE(eng_query_new_header("Subject", "plan project"));
	/* White space runs match each other. */
	CHECK(eng_query_new_header("Subject", "project   plan"), 1, 2, 4, 10);
}

/*
 * The equivalence corpus: what the header scan must read the same through
 * the FTS4 module and through its shadow table. Encoded words (Q and B,
 * adjacent, in display names), several addresses, groups, quoted display
 * names with commas and escapes, raw UTF-8, folded lines, missing and
 * duplicated fields, a body big enough for overflow pages.
 */
static const char *const eq_msgs[] = {
	"From: =?UTF-8?Q?Jan_Kowalski?= <jan@kowalski.pl>\r\n"
	"To: a@example.com, \"Kowalski, Anna\" <anna@example.com>\r\n"
	"Subject: =?UTF-8?B?WmHFvMOzxYLEhyBnxJnFm2zEhQ==?= =?UTF-8?Q?_ja=C5=BA=C5=84?=\r\n"
	"\r\nbody\r\n",
	"From: first@example.org, second@kowalski.example\r\n"
	"To: Team: x@example.net, y@example.net;, z@example.net\r\n"
	"Cc: undisclosed-recipients:;\r\n"
	"Subject: plain subject\r\n"
	"\r\nbody\r\n",
	"From: \"O'Brien \\\"Bob\\\" Smith\" <bob@example.ie>\r\n"
	"To: (comment) carol@example.com (Carol Jones)\r\n"
	"Subject: folded\r\n"
	" over   two\r\n"
	"\tlines\r\n"
	"\r\nbody\r\n",
	"From: \xc4\xb0stanbul Ofis <ofis@example.com.tr>\r\n"
	"To: \xce\xa3\xce\xbf\xcf\x86\xce\xaf\xce\xb1 <sofia@example.gr>\r\n"
	"Cc: \xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd <ivan@example.ru>\r\n"
	"Subject: \xc3\x84rger mit \xc3\x9f und \xf0\x9f\x98\x80\r\n"
	"\r\nbody\r\n",
	"Subject: first subject\r\n"
	"Subject: SECOND Subject\r\n"
	"From: one@example.com\r\n"
	"From: Two Kowalski <two@example.com>\r\n"
	"To: t1@example.com\r\n"
	"To: t2@example.com\r\n"
	"Cc: c1@example.com\r\n"
	"Cc: C2 <c2@example.com>\r\n"
	"\r\nbody\r\n",
	/* No From, To, Cc or Subject at all. */
	"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
	"X-From: kowalski@example.com\r\n"
	"\r\nFrom: kowalski in the body\r\n",
	"From: =?ISO-8859-1?Q?Andr=E9?= =?ISO-8859-1?Q?_Pr=E9vost?= <andre@example.fr>\r\n"
	"To: <bare@example.com>\r\n"
	"Cc: a@b.example, c@d.example, \"E, F\" <e@f.example>\r\n"
	"Subject: =?utf-8?q?Re=3A_=C3=A9t=C3=A9?= and more\r\n"
	"\r\nbody\r\n",
	"From: Broken =?UTF-8?Q?=FF=FE?= <x@example.com>\r\n"
	"To: \"%_like_chars\" <pct@example.com>\r\n"
	"Subject: 100% [sale] _now_ \\ back\\slash\r\n"
	"\r\nbody\r\n",
	/* Empty and blank fields, names in odd case, a name that only
	 * starts like a field, a blank before the colon. */
	"From:\r\n"
	"To:   \r\n"
	"FROM: Upper <up@example.com>\r\n"
	"fRoM: mixed@example.com\r\n"
	"Fromage: cheese@example.com\r\n"
	"Subject :spaced\r\n"
	"Bcc: hidden@example.com\r\n"
	"\r\nbody\r\n",
};

static const char *const eq_fields[] = {
	"From", "To", "Cc", "Subject", "from", "SUBJECT", "Bcc", "X-From",
};

static const char *const eq_needles[] = {
	"", "kowalski", "KOWALSKI", "kowal", "@", "example", "example.com",
	"jan kowalski", "kowalski, anna", "anna@", "team:", "undisclosed",
	";", "o'brien", "\"bob\"", "\\", "comment", "carol jones",
	"over two", "over   two", "two lines", "folded over",
	"\xc4\xb0stanbul", "istanbul", "\xc4\xb1stanbul",
	"\xcf\x83\xce\xbf\xcf\x86\xce\xaf\xce\xb1",
	"\xce\xa3\xce\x9f\xce\xa6\xce\x8a\xce\x91", "\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd",
	"\xc3\xa4rger", "\xc3\x84RGER", "\xc3\x9f", "\xf0\x9f\x98\x80",
	"za\xc5\xbc\xc3\xb3\xc5\x82\xc4\x87", "ZA\xc5\xbb\xc3\x93\xc5\x81\xc4\x86",
	"g\xc4\x99\xc5\x9bl\xc4\x85 ja\xc5\xba\xc5\x84", "=?utf-8?",
	"first", "second subject", "two", "t2@", "c2",
	"andr\xc3\xa9 pr\xc3\xa9vost", "andr\xc3\xa9pr", "re: \xc3\xa9t\xc3\xa9",
	"\xc3\x89T\xc3\x89", "bare", "<bare", "e, f",
	"%", "_", "%_like", "100% [sale]", "[sale]", "back\\slash",
	"broken", "\xff", "x@example.com", "nothing-matches-this",
	"com mixed", "com fromage", "cheese", "hidden", "spaced", " ",
};

/* How HEADER reads the header: through the FTS4 module, from its shadow
 * table, or (From/To/Cc/Bcc/Subject) from the folded values in
 * header_field. */
enum header_read { READ_MODULE, READ_SHADOW, READ_FIELDS, N_READS };

static void search_uids(struct fixture *f, eng_query *q, enum header_read how,
			uint32_t **uids, size_t *n)
{
	eng_search_legacy_header_scan(how == READ_MODULE);
	eng_search_header_fields(how == READ_FIELDS);
	assert_int_equal(eng_search(f->s.st, f->archive, q, NULL, 0, NULL, 0,
				    uids, n, NULL), 0);
	eng_search_legacy_header_scan(false);
	eng_search_header_fields(true);
}

/* Runs q every way; fails unless the UID lists are identical. */
static size_t check_same(struct fixture *f, eng_query *q, const char *what,
			 const char *needle)
{
	static const char *const names[N_READS] = {
		"through fts", "from fts_content", "from header_field",
	};
	uint32_t *u[N_READS] = { NULL };
	size_t n[N_READS] = { 0 };

	for (int i = 0; i < N_READS; i++)
		search_uids(f, q, (enum header_read)i, &u[i], &n[i]);
	eng_query_free(&q);
	int bad = 0;

	for (int i = 1; i < N_READS && bad == 0; i++) {
		if (n[i] != n[0] ||
		    (n[0] > 0 && memcmp(u[0], u[i], n[0] * sizeof(**u)) != 0))
			bad = i;
	}
	for (int i = 0; i < N_READS; i++)
		free(u[i]);
	if (bad != 0)
		fail_msg("%s \"%s\": %zu hits %s, %zu %s", what, needle,
			 n[0], names[0], n[bad], names[bad]);
	return n[0];
}

static void test_header_scan_equivalence(void **state)
{
	struct fixture *f = *state;
	const size_t n_msgs = sizeof(eq_msgs) / sizeof(eq_msgs[0]);
	size_t hits = 0, checks = 0, partial = 0;
	eng_buf big = ENG_BUF_INIT;

	for (size_t i = 0; i < n_msgs; i++) {
		eng_append_opts ao;
		uint32_t uid;

		/* Every message also with a ~40 KB body (overflow pages). */
		for (int copy = 0; copy < 2; copy++) {
			eng_buf_reset(&big);
			eng_buf_puts(&big, eq_msgs[i]);
			for (int k = 0; copy == 1 && k < 800; k++)
				eng_buf_puts(&big, "filler text kowalski line\r\n");
			memset(&ao, 0, sizeof(ao));
			ao.internal_date = JAN1;
			assert_int_equal(eng_append_message(f->s.st, f->archive,
				big.data, big.len, &ao, &uid, NULL), 0);
		}
	}
	eng_buf_free(&big);
	for (size_t fi = 0; fi < sizeof(eq_fields) / sizeof(eq_fields[0]); fi++) {
		for (size_t ni = 0;
		     ni < sizeof(eq_needles) / sizeof(eq_needles[0]); ni++) {
			size_t n = check_same(f, eng_query_new_header(
				eq_fields[fi], eq_needles[ni]), eq_fields[fi],
				eq_needles[ni]);

			hits += n;
			partial += n > 0 && n < 2 * n_msgs;
			checks++;
		}
	}
	for (size_t ni = 0; ni < sizeof(eq_needles) / sizeof(eq_needles[0]);
	     ni++) {
		hits += check_same(f, eng_query_new_text(ENG_Q_TEXT,
					eq_needles[ni]), "TEXT", eq_needles[ni]);
		checks++;
	}
	hits += check_same(f, eng_query_new_number(ENG_Q_SENTON,
						   JAN1), "SENTON", "");
	/* The comparison is not vacuous: many searches split the corpus. */
	assert_true(partial > 40);
	assert_true(hits > 0 && checks > 400);
	/* And the direct read finds what the header holds. */
	f->s.inbox = f->archive;
	CHECK(eng_query_new_header("From", "KOWALSKI"), 1, 2, 3, 4, 9, 10);
	CHECK(eng_query_new_header("Subject", "second subject"), 9, 10);
	CHECK(eng_query_new_header("To", "istanbul"));
	CHECK(eng_query_new_header("From", "istanbul"), 7, 8);
	CHECK(eng_query_new_header("Subject", "over two lines"), 5, 6);
	CHECK(eng_query_new_header("Subject", "%_"));
	CHECK(eng_query_new_header("Subject", "% [sale] _now_"), 15, 16);
}

static void test_body_and_text(void **state)
{
	struct fixture *f = *state;

	CHECK(eng_query_new_text(ENG_Q_BODY, "wonderful"), 1);
	/* Prefixes of tokens are found (the FTS index)... */
	CHECK(eng_query_new_text(ENG_Q_BODY, "wonder"), 1);
	/* ...the middle of a token is not: the documented deviation. */
	CHECK_NONE(eng_query_new_text(ENG_Q_BODY, "onderful"));
	/* Quoted-printable and base64 HTML of message 3, decoded. */
	CHECK(eng_query_new_text(ENG_Q_BODY, "schöne grüße"), 3);
	CHECK(eng_query_new_text(ENG_Q_BODY, "KÖLSCH und dom"), 3);
	/* base64 text/plain beside an attachment. */
	CHECK(eng_query_new_text(ENG_Q_BODY, "budget spreadsheet"), 4);
	/* Every word is there, but not as this substring. */
	CHECK_NONE(eng_query_new_text(ENG_Q_BODY, "spreadsheet budget"));
	CHECK(eng_query_new_text(ENG_Q_BODY, "sushi"), 5, 6);
	/* Only in headers: TEXT finds it, BODY does not. */
	CHECK_NONE(eng_query_new_text(ENG_Q_BODY, "erin"));
	CHECK(eng_query_new_text(ENG_Q_TEXT, "erin"), 5, 6);
	CHECK(eng_query_new_text(ENG_Q_TEXT, "sushi"), 5, 6);
	CHECK(eng_query_new_text(ENG_Q_TEXT, "Köln"), 3);
	/* FTS syntax in the string is only text. */
	CHECK_NONE(eng_query_new_text(ENG_Q_BODY, "sushi OR pizza\" NEAR"));
	/* Quotes the client sent inside the string are text too. */
	CHECK_NONE(eng_query_new_text(ENG_Q_BODY, "\"sushi\""));
	/* Punctuation only: no FTS word, the substring check alone. */
	CHECK(eng_query_new_text(ENG_Q_BODY, "."), 1, 2, 4, 9, 10);
	CHECK(eng_query_new_text(ENG_Q_BODY, ""), 1, 2, 3, 4, 5, 6, 7, 8, 9,
	      10);
}

struct meta {
	uint32_t uid;
	eng_msg msg;
};

static int keep_meta(void *ctx, const eng_msg *msg)
{
	struct meta *m = ctx;

	if (msg->uid == m->uid) {
		m->msg = *msg;
		m->msg.keywords = NULL;
	}
	return 0;
}

static int keep_modseq(void *ctx, const eng_msg *msg)
{
	*(uint64_t *)ctx = msg->modseq;
	return 0;
}

static void test_modseq_and_ids(void **state)
{
	struct fixture *f = *state;
	eng_uidset set = { NULL, 0, 0 };
	uint64_t modseq = 0, highest = 0;
	uint32_t *uids = NULL;
	size_t n = 0;
	eng_query *q;
	struct meta m2 = { 2, { 0 } };
	struct meta m5 = { 5, { 0 } };

	eng_uidset_add(&set, 5, 5);
	assert_int_equal(eng_store_flags(f->s.st, f->s.inbox, &set, ENG_STORE_ADD,
					 ENG_F_FLAGGED, NULL, 0, 0, NULL,
					 keep_modseq, &modseq), 0);
	eng_uidset_free(&set);
	assert_true(modseq > 0);
	CHECK(eng_query_new_number(ENG_Q_MODSEQ, (int64_t)modseq), 5);
	CHECK(eng_query_new_flag(ENG_F_FLAGGED, true), 3, 5, 8);
	q = eng_query_new_number(ENG_Q_MODSEQ, 1);
	assert_int_equal(eng_search(f->s.st, f->s.inbox, q, NULL, 0, NULL, 0,
				    &uids, &n, &highest), 0);
	assert_int_equal(n, 10);
	assert_int_equal(highest, modseq);
	free(uids);
	eng_query_free(&q);
	/* highest MODSEQ of the matches only. */
	q = uidset("1:3");
	assert_int_equal(eng_search(f->s.st, f->s.inbox, q, NULL, 0, NULL, 0,
				    &uids, &n, &highest), 0);
	assert_int_equal(n, 3);
	assert_true(highest > 0 && highest < modseq);
	free(uids);
	eng_query_free(&q);

	/* EMAILID and THREADID come from the message metadata. */
	assert_int_equal(eng_fetch_meta(f->s.st, f->s.inbox, NULL, 0, keep_meta,
					&m2), 0);
	assert_int_equal(eng_fetch_meta(f->s.st, f->s.inbox, NULL, 0, keep_meta,
					&m5), 0);
	CHECK(eng_query_new_number(ENG_Q_EMAILID, m2.msg.content_id), 2);
	/* 2 replies to 1, 6 to 5: same threads; 1 and 5 differ. */
	{
		uint32_t *t2 = NULL, *t5 = NULL;
		size_t n2 = 0, n5 = 0;

		q = eng_query_new_number(ENG_Q_THREADID, m2.msg.thread_id);
		assert_int_equal(eng_search(f->s.st, f->s.inbox, q, NULL, 0, NULL,
					    0, &t2, &n2, NULL), 0);
		eng_query_free(&q);
		q = eng_query_new_number(ENG_Q_THREADID, m5.msg.thread_id);
		assert_int_equal(eng_search(f->s.st, f->s.inbox, q, NULL, 0, NULL,
					    0, &t5, &n5, NULL), 0);
		eng_query_free(&q);
		assert_true(n2 >= 2 && t2[0] == 1 && t2[1] == 2);
		assert_true(n5 >= 2 && t5[0] == 5 && t5[1] == 6);
		for (size_t i = 0; i < n2; i++) {
			for (size_t j = 0; j < n5; j++)
				assert_int_not_equal(t2[i], t5[j]);
		}
		free(t2);
		free(t5);
	}
	CHECK_NONE(eng_query_new_number(ENG_Q_THREADID, -1));
}

static void test_boolean(void **state)
{
	struct fixture *f = *state;
	eng_query *q;

	CHECK(eng_query_new_or(eng_query_new_flag(ENG_F_SEEN, true),
			       eng_query_new_flag(ENG_F_FLAGGED, true)),
	      1, 2, 3, 6, 8, 10);
	CHECK(eng_query_new_and(eng_query_new_flag(ENG_F_SEEN, true),
				eng_query_new_not(
					eng_query_new_keyword("$Work", true))),
	      2, 8, 10);
	CHECK(eng_query_new_not(eng_query_new_or(
		      eng_query_new_header("From", "alice"),
		      eng_query_new_header("From", "bob"))),
	      3, 4, 5, 6, 7, 8, 9);
	CHECK(eng_query_new_not(eng_query_new_not(
		      eng_query_new_flag(ENG_F_DRAFT, true))), 4);
	/* Empty AND is ALL, empty OR nothing. */
	CHECK(eng_query_new(ENG_Q_AND), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
	CHECK_NONE(eng_query_new(ENG_Q_OR));
	/* UID sets under OR merge, other keys stay beside them. */
	CHECK(eng_query_new_or(uidset("1"), eng_query_new_or(uidset("9"),
			       eng_query_new_header("Subject", "lunch"))),
	      1, 5, 6, 7, 9);
	/* AND of OR and text keys. */
	CHECK(eng_query_new_and(eng_query_new_or(
		      eng_query_new_text(ENG_Q_BODY, "sushi"),
		      eng_query_new_text(ENG_Q_BODY, "plan")),
		      eng_query_new_flag(ENG_F_SEEN, true)), 1, 6, 10);

	/* IMAP's binary OR nests: OR UID 1 OR UID 2 ... of 1500 terms
	 * stays within SQLite's limits (flattened, sets merged). */
	q = uidset("3");
	for (uint32_t i = 1; i <= 1500; i++) {
		char s[16];

		snprintf(s, sizeof(s), "%u", i % 2 == 0 ? 100 + i : 7);
		q = eng_query_new_or(uidset(s), q);
	}
	CHECK(q, 3, 7);
	/* A deep AND chain of many different keys: balanced in SQL. */
	q = eng_query_new(ENG_Q_ALL);
	for (int i = 0; i < 300; i++)
		q = eng_query_new_and(eng_query_new_flag(ENG_F_DELETED, false),
				      q);
	CHECK(q, 1, 2, 3, 5, 6, 7, 8, 9, 10);
	/* Too deep alternation is refused, not crashed on. */
	{
		uint32_t *uids = NULL;
		size_t n = 0;

		q = eng_query_new(ENG_Q_ALL);
		for (int i = 0; i < ENG_QUERY_MAX_DEPTH + 5; i++)
			q = eng_query_new_not(q);
		assert_int_equal(eng_search(f->s.st, f->s.inbox, q, NULL, 0, NULL,
					    0, &uids, &n, NULL), ENG_ELIMIT);
		eng_query_free(&q);
		/* Bad queries. */
		q = eng_query_new_flag(ENG_F_SEEN | ENG_F_DRAFT, true);
		assert_int_equal(eng_search(f->s.st, f->s.inbox, q, NULL, 0, NULL,
					    0, &uids, &n, NULL), ENG_EINVAL);
		eng_query_free(&q);
		q = eng_query_new(ENG_Q_NOT);
		assert_int_equal(eng_search(f->s.st, f->s.inbox, q, NULL, 0, NULL,
					    0, &uids, &n, NULL), ENG_EINVAL);
		eng_query_free(&q);
		q = eng_query_new_header("Bad:Name", "x");
		assert_int_equal(eng_search(f->s.st, f->s.inbox, q, NULL, 0, NULL,
					    0, &uids, &n, NULL), ENG_EINVAL);
		eng_query_free(&q);
		assert_null(uids);
		eng_query_free(&q);     /* NULL is fine */
	}
}

/*
 * A store with the FTS4 table, closed and opened again: it keeps its table
 * (no migration), finds what it held, and indexes what is appended now.
 */
static void test_fts4_store_reopened(void **state)
{
	struct fixture *f = *state;
	eng_store_options opt;
	uint32_t uid;
	static const char more[] =
		"From: quentin@example.com\r\nSubject: later\r\n\r\n"
		"Zanzibar marmalade recipe\r\n";

	eng_store_close(&f->s.st);
	eng_store_options_default(&opt);
	assert_int_equal(eng_store_open(f->s.path, f->s.key, &opt, &f->s.st), 0);
	assert_int_equal(fts_shadow_tables(f->s.st), 2);
	CHECK(eng_query_new_text(ENG_Q_BODY, "wonderful"), 1);
	CHECK(eng_query_new_text(ENG_Q_TEXT, "erin"), 5, 6);
	assert_int_equal(eng_append_message(f->s.st, f->s.inbox, more,
					    strlen(more), NULL, &uid, NULL), 0);
	assert_int_equal(uid, N_MSGS + 1);
	CHECK(eng_query_new_text(ENG_Q_BODY, "marmalade"), N_MSGS + 1);
	CHECK(eng_query_new_text(ENG_Q_TEXT, "quentin"), N_MSGS + 1);
	assert_int_equal(tu_sql_int(f->s.st, "SELECT count(*) FROM fts_docsize"),
			 N_MSGS + 1);
}

/* An expunged message's FTS row goes with it, in either FTS table. */
static void test_expunged_leave_fts(void **state)
{
	struct fixture *f = *state;
	eng_uidset set = { NULL, 0, 0 };
	uint32_t *gone = NULL;
	size_t n_gone = 0;

	eng_uidset_add(&set, 1, 1);
	assert_int_equal(eng_store_flags(f->s.st, f->s.inbox, &set,
					 ENG_STORE_ADD, ENG_F_DELETED, NULL, 0,
					 0, NULL, NULL, NULL), 0);
	assert_int_equal(eng_expunge(f->s.st, f->s.inbox, &set, &gone,
				     &n_gone), 0);
	assert_int_equal(n_gone, 1);
	free(gone);
	eng_uidset_free(&set);
	CHECK_NONE(eng_query_new_text(ENG_Q_BODY, "wonderful"));
	CHECK(eng_query_new_text(ENG_Q_BODY, "sushi"), 5, 6);
	assert_int_equal(tu_sql_int(f->s.st, "SELECT count(*) FROM fts"),
			 N_MSGS - 1);
	assert_int_equal(tu_sql_int(f->s.st, "SELECT count(*) FROM fts_content"),
			 N_MSGS - 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_all_and_flags,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_keywords,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_uid_and_seq_sets,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_dates,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_within,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_sizes,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_headers,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_header_scan_equivalence,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_body_and_text,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_modseq_and_ids,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_boolean,
						search_setup, search_teardown),
		/* The same searches on a store with the FTS4 table. */
		cmocka_unit_test_setup_teardown(test_headers,
						search_setup_fts4, search_teardown),
		cmocka_unit_test_setup_teardown(test_header_scan_equivalence,
						search_setup_fts4, search_teardown),
		cmocka_unit_test_setup_teardown(test_body_and_text,
						search_setup_fts4, search_teardown),
		cmocka_unit_test_setup_teardown(test_boolean,
						search_setup_fts4, search_teardown),
		cmocka_unit_test_setup_teardown(test_fts4_store_reopened,
						search_setup_fts4, search_teardown),
		cmocka_unit_test_setup_teardown(test_expunged_leave_fts,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_expunged_leave_fts,
						search_setup_fts4, search_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
