/*
 * SORT and THREAD (engine/search.h) over the store of testsearch.c: every
 * sort key both ways, both RFC 5256 thread algorithms against trees worked
 * out by hand, and the THREAD writer.
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

static void test_sort(void **state)
{
	struct fixture *f = *state;
	eng_sort_key arrival[] = { { ENG_SORT_ARRIVAL, false } };
	eng_sort_key rarrival[] = { { ENG_SORT_ARRIVAL, true } };
	eng_sort_key date[] = { { ENG_SORT_DATE, false } };
	eng_sort_key rdate[] = { { ENG_SORT_DATE, true } };
	eng_sort_key from[] = { { ENG_SORT_FROM, false } };
	eng_sort_key rfrom[] = { { ENG_SORT_FROM, true } };
	eng_sort_key to[] = { { ENG_SORT_TO, false } };
	eng_sort_key rto[] = { { ENG_SORT_TO, true } };
	eng_sort_key cc[] = { { ENG_SORT_CC, false } };
	eng_sort_key rcc[] = { { ENG_SORT_CC, true } };
	eng_sort_key subject[] = { { ENG_SORT_SUBJECT, false } };
	eng_sort_key rsubject[] = { { ENG_SORT_SUBJECT, true } };
	eng_sort_key dfrom[] = { { ENG_SORT_DISPLAYFROM, false } };
	eng_sort_key rdfrom[] = { { ENG_SORT_DISPLAYFROM, true } };
	eng_sort_key dto[] = { { ENG_SORT_DISPLAYTO, false } };
	eng_sort_key rdto[] = { { ENG_SORT_DISPLAYTO, true } };
	eng_sort_key subj_rdate[] = { { ENG_SORT_SUBJECT, false },
				      { ENG_SORT_DATE, true } };

	CHECK_SORT(arrival, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
	CHECK_SORT(rarrival, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1);
	/* 7 has no Date: its internal date (Jan 16) stands in. */
	CHECK_SORT(date, 1, 2, 3, 4, 5, 6, 8, 9, 10, 7);
	CHECK_SORT(rdate, 7, 10, 9, 8, 6, 5, 4, 3, 2, 1);
	/* Local parts: alice (1, 10), bob, dave, erin, frank, gina,
	 * juergen, yvonne, zach. Ties stay in UID order both ways. */
	CHECK_SORT(from, 1, 10, 2, 4, 5, 6, 7, 3, 9, 8);
	CHECK_SORT(rfrom, 8, 9, 3, 7, 6, 5, 4, 2, 1, 10);
	CHECK_SORT(to, 2, 3, 5, 7, 1, 10, 6, 8, 9, 4);
	CHECK_SORT(rto, 4, 8, 9, 6, 1, 10, 2, 3, 5, 7);
	/* No Cc is the empty string: first. */
	CHECK_SORT(cc, 2, 3, 5, 6, 7, 8, 9, 10, 4, 1);
	CHECK_SORT(rcc, 1, 4, 2, 3, 5, 6, 7, 8, 9, 10);
	/* Base subjects: "Grüße aus Köln", "Lunch?" (5, 6, "re: lunch?"
	 * 7), "Project plan" (1, 2, 4, 10), "Random note" (8, 9). */
	CHECK_SORT(subject, 3, 5, 6, 7, 1, 2, 4, 10, 8, 9);
	CHECK_SORT(rsubject, 8, 9, 1, 2, 4, 10, 5, 6, 7, 3);
	/* Display names, the address where there is none (4). */
	CHECK_SORT(dfrom, 8, 1, 10, 2, 4, 5, 6, 7, 3, 9);
	CHECK_SORT(rdfrom, 9, 3, 7, 6, 5, 4, 2, 1, 10, 8);
	CHECK_SORT(dto, 2, 3, 5, 7, 10, 1, 6, 8, 9, 4);
	CHECK_SORT(rdto, 4, 9, 8, 6, 1, 10, 3, 5, 7, 2);
	CHECK_SORT(subj_rdate, 3, 7, 6, 5, 10, 4, 2, 1, 9, 8);

	/* SIZE: worked out from the corpus lengths, ties by UID. */
	{
		eng_sort_key size[] = { { ENG_SORT_SIZE, false } };
		eng_sort_key rsize[] = { { ENG_SORT_SIZE, true } };
		uint32_t want[N_MSGS], rwant[N_MSGS];

		for (int i = 0; i < N_MSGS; i++)
			want[i] = (uint32_t)i + 1;
		/* Insertion sort by (size, uid). */
		for (int i = 1; i < N_MSGS; i++) {
			for (int j = i; j > 0 &&
			     strlen(msgs[want[j - 1] - 1]) >
			     strlen(msgs[want[j] - 1]); j--) {
				uint32_t t = want[j];

				want[j] = want[j - 1];
				want[j - 1] = t;
			}
		}
		/* REVERSE turns the sizes round, not the UID tie-break. */
		for (int i = 0; i < N_MSGS; i++)
			rwant[i] = (uint32_t)i + 1;
		for (int i = 1; i < N_MSGS; i++) {
			for (int j = i; j > 0 &&
			     strlen(msgs[rwant[j - 1] - 1]) <
			     strlen(msgs[rwant[j] - 1]); j--) {
				uint32_t t = rwant[j];

				rwant[j] = rwant[j - 1];
				rwant[j - 1] = t;
			}
		}
		check_sorted(f, f->s.inbox, NULL, size, 1, NULL, 0, want, N_MSGS,
			     __LINE__);
		check_sorted(f, f->s.inbox, NULL, rsize, 1, NULL, 0, rwant,
			     N_MSGS, __LINE__);
	}
	/* Sorting a search result. */
	check_sorted(f, f->s.inbox, eng_query_new_flag(ENG_F_SEEN, true),
		     rarrival, 1, NULL, 0, (const uint32_t[]){ 10, 8, 6, 2, 1 },
		     5, __LINE__);
}

static void check_thread(struct fixture *f, enum eng_thread_algorithm alg,
			 eng_query *q, const char *want, int line)
{
	eng_thread_node *tree = NULL;
	eng_buf out = ENG_BUF_INIT;
	int err = eng_thread(f->s.st, f->s.inbox, alg, q, NULL, 0, &tree);

	eng_query_free(&q);
	if (err != 0)
		fail_msg("line %d: eng_thread: %d", line, err);
	eng_thread_write(tree, &out);
	eng_thread_free(&tree);
	assert_null(tree);
	if (strcmp(out.data != NULL ? out.data : "", want) != 0) {
		char got[512];

		snprintf(got, sizeof(got), "%s", out.data != NULL ?
			 out.data : "");
		eng_buf_free(&out);
		fail_msg("line %d: got %s want %s", line, got, want);
	}
	eng_buf_free(&out);
}

static void test_thread_orderedsubject(void **state)
{
	struct fixture *f = *state;

	/* Grouped by base subject ("re: lunch?" with "Lunch?", "Fwd:" and
	 * "Re:" with "Project plan"), threads by the date of their first
	 * message, the rest children of the first in date order. */
	check_thread(f, ENG_THREAD_ORDEREDSUBJECT, NULL,
		     "(1 (2)(4)(10))(3)(5 (6)(7))(8 9)", __LINE__);
	check_thread(f, ENG_THREAD_ORDEREDSUBJECT,
		     eng_query_new_flag(ENG_F_SEEN, false),
		     "(3)(4)(5 7)(9)", __LINE__);
	check_thread(f, ENG_THREAD_ORDEREDSUBJECT,
		     eng_query_new_keyword("$Nothing", true), "", __LINE__);
}

static void test_thread_references(void **state)
{
	struct fixture *f = *state;

	/*
	 * By hand (RFC 5256 REFERENCES):
	 *  - 2 replies to 1; 4 references <m0> (absent) then <m1>: the
	 *    dummy <m0> becomes 1's parent and is pruned away at the top
	 *    (one child), so 1 has children 2 and 4.
	 *  - 6 replies to 5 by In-Reply-To alone.
	 *  - 7's parent <m99> is absent: the dummy is pruned, 7 is a root;
	 *    then subject merging makes "re: lunch?" a child of "Lunch?".
	 *  - 8 and 9 share the absent parent <mx>: a dummy with two
	 *    children stays at the top.
	 *  - 10 and 1 are both "Project plan" and neither a reply: a new
	 *    dummy holds both.
	 *  - Roots by date: the dummy of 1 (Jan 2 07:30 UTC), 3 (Jan 2
	 *    23:30), 5 (Jan 5), the dummy of 8 (Jan 6).
	 */
	check_thread(f, ENG_THREAD_REFERENCES, NULL,
		     "((1 (2)(4))(10))(3)(5 (6)(7))((8)(9))", __LINE__);
	/*
	 * Only the unseen 3, 4, 5, 7, 9: 4's parents <m0> and <m1> are both
	 * dummies, promoted away; 9 alone under <mx> is promoted; 7 joins 5
	 * by subject.
	 */
	check_thread(f, ENG_THREAD_REFERENCES,
		     eng_query_new_flag(ENG_F_SEEN, false),
		     "(3)(4)(5 7)(9)", __LINE__);
	/* 1 and 2 only: a plain chain. */
	check_thread(f, ENG_THREAD_REFERENCES, uidset("1:2"), "(1 2)",
		     __LINE__);
	/* 2 and 4 without 1: siblings under the dummy <m1>, which is pruned
	 * (not at the top) so they move up under the dummy <m0>, which stays
	 * at the top because it has two children. */
	check_thread(f, ENG_THREAD_REFERENCES, uidset("2,4"), "((2)(4))",
		     __LINE__);
}

/* A reply that arrives before its parent, a loop, duplicate Message-IDs. */
static void test_thread_edge_cases(void **state)
{
	struct fixture *f = *state;
	static const char *const extra[] = {
		/* Archive 1: references 2, which references 1: a loop. */
		"From: a@example.com\r\nSubject: Loop\r\n"
		"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
		"Message-ID: <l1@x>\r\nReferences: <l2@x>\r\n\r\nx\r\n",
		"From: b@example.com\r\nSubject: Re: Loop\r\n"
		"Date: Mon, 1 Jan 2024 11:00:00 +0000\r\n"
		"Message-ID: <l2@x>\r\nReferences: <l1@x>\r\n\r\ny\r\n",
		/* 3 and 4: the same Message-ID twice; 5 replies to it. */
		"From: c@example.com\r\nSubject: Dup\r\n"
		"Date: Tue, 2 Jan 2024 10:00:00 +0000\r\n"
		"Message-ID: <d@x>\r\n\r\nfirst\r\n",
		"From: c@example.com\r\nSubject: Dup\r\n"
		"Date: Tue, 2 Jan 2024 10:00:00 +0000\r\n"
		"Message-ID: <d@x>\r\n\r\nsecond copy\r\n",
		"From: d@example.com\r\nSubject: Something else\r\n"
		"Date: Wed, 3 Jan 2024 10:00:00 +0000\r\n"
		"Message-ID: <e@x>\r\nIn-Reply-To: <d@x> (the first)\r\n"
		"\r\nreply\r\n",
		/* 6: no Message-ID, no subject. */
		"From: e@example.com\r\n"
		"Date: Thu, 4 Jan 2024 10:00:00 +0000\r\n\r\nbare\r\n",
		/* 7: [list] blob and a folded References header. */
		"From: f@example.com\r\nSubject: [list] Re: Something else\r\n"
		"Date: Fri, 5 Jan 2024 10:00:00 +0000\r\n"
		"Message-ID: <g@x>\r\nReferences: <d@x>\r\n <e@x>\r\n"
		"\r\nfolded\r\n",
	};
	eng_thread_node *tree = NULL;
	eng_buf out = ENG_BUF_INIT;

	for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
		eng_append_opts ao;
		uint32_t uid;

		memset(&ao, 0, sizeof(ao));
		ao.internal_date = IDATE(1);
		assert_int_equal(eng_append_message(f->s.st, f->archive, extra[i],
						    strlen(extra[i]), &ao, &uid,
						    NULL), 0);
		assert_int_equal(uid, (uint32_t)i + 1);
	}
	/*
	 * 1 and 2: 1 names <l2@x> as its parent, so the dummy <l2@x> gets
	 * child 1; then 2 is <l2@x> and names 1 as parent: a loop, refused;
	 * so 2 is the root and 1 its child.
	 * 3 owns <d@x>; 4 is a copy with an id of its own; 5 replies to 3,
	 * 7 to 5 (its last reference). 4 "Dup" merges with 3 "Dup": both
	 * non-replies, a new dummy. 6 has no subject: alone.
	 */
	assert_int_equal(eng_thread(f->s.st, f->archive, ENG_THREAD_REFERENCES,
				    NULL, NULL, 0, &tree), 0);
	eng_thread_write(tree, &out);
	assert_string_equal(out.data, "(2 1)((3 5 7)(4))(6)");
	eng_buf_reset(&out);
	/* The same tree in sequence numbers of a view without UID 4. */
	{
		const uint32_t map[] = { 1, 2, 3, 5, 6, 7 };

		eng_thread_write_seq(tree, map, 6, &out);
		/* 4 is out of the view: the dummy keeps one visible child. */
		assert_string_equal(out.data, "(2 1)(3 4 6)(5)");
	}
	eng_thread_free(&tree);
	eng_thread_free(&tree);
	eng_buf_free(&out);
}

static eng_thread_node *tn(uint32_t uid, size_t n, ...)
{
	eng_thread_node *t = calloc(1, sizeof(*t));
	va_list ap;

	t->uid = uid;
	t->n_children = n;
	t->children = n > 0 ? calloc(n, sizeof(*t->children)) : NULL;
	va_start(ap, n);
	for (size_t i = 0; i < n; i++)
		t->children[i] = va_arg(ap, eng_thread_node *);
	va_end(ap);
	return t;
}

static void test_thread_writer(void **state)
{
	eng_thread_node *tree;
	eng_buf out = ENG_BUF_INIT;

	(void)state;
	/* RFC 5256 section 4's example. */
	tree = tn(0, 2, tn(2, 0),
		  tn(3, 1, tn(6, 2, tn(4, 1, tn(23, 0)),
			      tn(44, 1, tn(7, 1, tn(96, 0))))));
	eng_thread_write(tree, &out);
	assert_string_equal(out.data, "(2)(3 6 (4 23)(44 7 96))");
	eng_thread_free(&tree);
	/* A dummy at the top: "((3)(5))". */
	eng_buf_reset(&out);
	tree = tn(0, 1, tn(0, 2, tn(3, 0), tn(5, 0)));
	eng_thread_write(tree, &out);
	assert_string_equal(out.data, "((3)(5))");
	eng_thread_free(&tree);
	/* Empty. */
	eng_buf_reset(&out);
	tree = tn(0, 0);
	eng_thread_write(tree, &out);
	assert_int_equal(out.len, 0);
	eng_thread_free(&tree);
	eng_thread_write(NULL, &out);
	assert_int_equal(out.len, 0);
	eng_buf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_sort,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_thread_orderedsubject,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_thread_references,
						search_setup, search_teardown),
		cmocka_unit_test_setup_teardown(test_thread_edge_cases,
						search_setup, search_teardown),
		cmocka_unit_test(test_thread_writer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
