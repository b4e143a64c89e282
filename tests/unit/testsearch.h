/*
 * The fixture of the SEARCH, SORT and THREAD tests (test_search,
 * test_search_sort): a real encrypted store (teststore.h) with ten
 * messages in INBOX whose dates, flags, keywords, headers and bodies the
 * tests' expectations were worked out from by hand (the corpus is in
 * testsearch.c), and the check of a search's UIDs. Built into sm_testutil.
 */
#ifndef TESTSEARCH_H
#define TESTSEARCH_H

#include <stdint.h>

#include "search.h"
#include "store.h"
#include "teststore.h"

/* 2024-01-01 00:00:00 UTC */
#define JAN1 INT64_C(1704067200)
#define DAY INT64_C(86400)
/* Internal date of message i (1-based): 2024-01-10 10:00 UTC + i - 1 days. */
#define IDATE(i) (JAN1 + 9 * DAY + 10 * 3600 + ((i) - 1) * DAY)

#define N_MSGS 10

extern const char *const msgs[N_MSGS];

struct fixture {
	tu_store s;             /* the store, INBOX (teststore.h) */
	int64_t archive;
};

/* search_setup: the store with the corpus; search_setup_fts4: the same on
 * a store with the FTS4 table of stores made before 2026-11-26. (Not
 * setup/teardown: testsrv.c has those, in the same sm_testutil.) */
int search_setup(void **state);
int search_setup_fts4(void **state);
int search_teardown(void **state);
/* fts_docsize and fts_stat found (2 with FTS4, 0 with FTS3). */
int fts_shadow_tables(eng_store *st);
/* Runs a search and compares the result with the expected UIDs, in order
 * (line: the caller's, for the message); frees q. */
void check_sorted(struct fixture *f, int64_t mailbox, eng_query *q,
		  const eng_sort_key *sort, size_t n_sort,
		  const uint32_t *seq_map, size_t n_seq_map,
		  const uint32_t *want, size_t n_want, int line);
/* A UID-set query from its IMAP text. */
eng_query *uidset(const char *text);

/* In a test whose fixture is f: the search q finds these UIDs, nothing,
 * or (CHECK_SORT) all of INBOX sorted by keys gives these. */
#define CHECK(q, ...) do { \
	const uint32_t want_[] = { 0, __VA_ARGS__ }; \
	check_sorted(f, f->s.inbox, (q), NULL, 0, NULL, 0, want_ + 1, \
		     sizeof(want_) / 4 - 1, __LINE__); \
} while (0)
#define CHECK_NONE(q) \
	check_sorted(f, f->s.inbox, (q), NULL, 0, NULL, 0, NULL, 0, __LINE__)
#define CHECK_SORT(keys, ...) do { \
	const uint32_t want_[] = { __VA_ARGS__ }; \
	check_sorted(f, f->s.inbox, NULL, (keys), sizeof(keys) / \
		     sizeof((keys)[0]), NULL, 0, want_, \
		     sizeof(want_) / 4, __LINE__); \
} while (0)

#endif
