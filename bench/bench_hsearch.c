/*
 * bench-hsearch [N=10000] [REPEAT=9]: what HEADER From "Kowalski"
 * (IMAP SEARCH FROM) costs in an encrypted store of N msggen messages
 * (bench-engine's and bench-imap's seed: the same messages), five ways:
 *
 *   join+scan    the query before 2026-11-26 session 2: message joined
 *                with content, the decoded header text of fts_content
 *                scanned per message (sm_header_has);
 *   scan         the same scan without the join of content (whose rows
 *                are wide: mime and raw header), eng_search with
 *                eng_search_header_fields(false);
 *   join+fields  the folded From values of header_field, with the join;
 *   fields       what eng_search runs now: header_field, no join;
 *   fields, IN   the same values as one scan of the field's rows for the
 *                whole store (m.content_id IN (SELECT ...)), not run by
 *                eng_search: it costs the alias's size, not the mailbox's.
 *
 * For each: the first search after the store is opened again (SQLite's
 * page cache empty, the OS cache warm) and the median of REPEAT repeated
 * searches (each timed right after one of the same way), the ways taking
 * turns so that the machine's load falls on all alike.
 * Then the migration from schema version 1 (header_field taken away,
 * filled again at open) is timed. Only the searches and the open are
 * timed, not the fill. The store is in a new directory under /tmp,
 * removed at the end.
 */
#include <ftw.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "eng_error.h"
#include "keys.h"
#include "search.h"
#include "store.h"
#include "store_private.h"
#include "msggen.h"
#include "bench_util.h"

#define SEED 0x5ea1u
#define MAX_REPEAT 101

enum way { JOIN_SCAN, SCAN, JOIN_FIELDS, FIELDS, FIELDS_IN, N_WAYS };

static const char *const way_names[N_WAYS] = {
	"join+scan (before)", "scan, no join", "join+fields", "fields (now)",
	"fields, IN (subquery)",
};

/* The raw SQL of the two ways eng_search does not generate any more. */
static const char *const raw_sql[N_WAYS] = {
	[JOIN_SCAN] = "SELECT m.uid, m.modseq FROM message m JOIN content c "
		"ON c.id = m.content_id WHERE m.mailbox_id = ? AND "
		"sm_header_has((SELECT c0header FROM fts_content WHERE docid = "
		"m.content_id), 'From', 'Kowalski') ORDER BY m.uid",
	[JOIN_FIELDS] = "SELECT m.uid, m.modseq FROM message m JOIN content c "
		"ON c.id = m.content_id WHERE m.mailbox_id = ? AND EXISTS "
		"(SELECT 1 FROM header_field h WHERE h.name = 'from' AND "
		"h.content_id = m.content_id AND sm_folded_has(h.value, "
		"'kowalski')) ORDER BY m.uid",
	[FIELDS_IN] = "SELECT m.uid, m.modseq FROM message m WHERE "
		"m.mailbox_id = ? AND m.content_id IN (SELECT content_id FROM "
		"header_field WHERE name = 'from' AND sm_folded_has(value, "
		"'kowalski')) ORDER BY m.uid",
};

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void check(int err, const char *what)
{
	if (err != 0) {
		fprintf(stderr, "bench-hsearch: %s: %s\n", what,
			eng_strerror(err));
		exit(1);
	}
}

static void check_sql(int rc, const char *what)
{
	if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
		fprintf(stderr, "bench-hsearch: %s: %s\n", what,
			sqlite3_errstr(rc));
		exit(1);
	}
}

static size_t run_raw(eng_store *st, int64_t mbox, const char *sql)
{
	sqlite3_stmt *stmt;
	size_t n = 0;
	int rc;

	check_sql(sqlite3_prepare_v2(st->db, sql, -1, &stmt, NULL), "prepare");
	sqlite3_bind_int64(stmt, 1, mbox);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW)
		n++;
	check_sql(rc, "step");
	sqlite3_finalize(stmt);
	return n;
}

/* One search the given way; its hit count. */
static size_t search(eng_store *st, int64_t mbox, enum way w)
{
	eng_query *q;
	uint32_t *uids = NULL;
	size_t n = 0;

	if (raw_sql[w] != NULL)
		return run_raw(st, mbox, raw_sql[w]);
	q = eng_query_new_header("From", "Kowalski");
	eng_search_header_fields(w == FIELDS);
	check(eng_search(st, mbox, q, NULL, 0, NULL, 0, &uids, &n, NULL),
	      "search");
	eng_search_header_fields(true);
	eng_query_free(&q);
	free(uids);
	return n;
}

/* Opens the store and registers the search functions (an ALL search). */
static eng_store *open_store(const char *path, const uint8_t *key,
			     int64_t *mbox_r)
{
	eng_store_options opt;
	eng_store *st;
	eng_mailbox mb;
	eng_query *q = eng_query_new(ENG_Q_ALL);
	uint32_t *uids = NULL;
	size_t n = 0;

	eng_store_options_default(&opt);
	opt.create = true;
	check(eng_store_open(path, key, &opt, &st), "open");
	check(eng_mailbox_get(st, "INBOX", &mb), "INBOX");
	*mbox_r = mb.id;
	eng_mailbox_clear(&mb);
	check(eng_search(st, *mbox_r, q, NULL, 0, NULL, 0, &uids, &n, NULL),
	      "search all");
	eng_query_free(&q);
	free(uids);
	return st;
}

static void fill(const char *path, const uint8_t *key, unsigned long n)
{
	struct msggen g = { NULL, 0, 0, 0 };
	int64_t mbox;
	eng_store *st = open_store(path, key, &mbox);

	msggen_seed(SEED);
	/* One transaction: the fill is not what is measured. */
	check(eng_store_tx_begin(st), "begin");
	for (unsigned long i = 0; i < n; i++) {
		msggen_message(&g, i);
		check(eng_append_message(st, mbox, g.buf, g.len, NULL, NULL,
					 NULL), "append");
	}
	check(eng_store_tx_commit(st), "commit");
	free(g.buf);
	eng_store_close(&st);
}

static void quiet_log(enum eng_log_level level, const char *msg)
{
	(void)level;
	(void)msg;
}

static int rm_entry(const char *p, const struct stat *sb, int flag,
		    struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

int main(int argc, char **argv)
{
	unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 10) : 10000;
	int repeat = argc > 2 ? atoi(argv[2]) : 9;
	char dir[] = "/tmp/bench-hsearch.XXXXXX", path[64];
	uint8_t key[ENG_DBKEY_BYTES];
	double first[N_WAYS], t[N_WAYS][MAX_REPEAT], t0;
	size_t hits[N_WAYS];
	eng_store *st;
	int64_t mbox;

	if (n == 0 || repeat < 1 || repeat > MAX_REPEAT) {
		fprintf(stderr, "usage: bench-hsearch [N] [REPEAT<=%d]\n",
			MAX_REPEAT);
		return 2;
	}
	eng_set_log(quiet_log);
	check(eng_crypto_init(), "crypto init");
	randombytes_buf(key, sizeof(key));
	if (mkdtemp(dir) == NULL)
		return 1;
	snprintf(path, sizeof(path), "%s/alias.db", dir);
	fill(path, key, n);
	for (int w = 0; w < N_WAYS; w++) {
		st = open_store(path, key, &mbox);
		t0 = now_ms();
		hits[w] = search(st, mbox, (enum way)w);
		first[w] = now_ms() - t0;
		eng_store_close(&st);
	}
	st = open_store(path, key, &mbox);
	for (int r = 0; r < repeat; r++) {
		for (int w = 0; w < N_WAYS; w++) {
			/* A repeated search: the one before warms the page
			 * cache for this way, the other ways' turns do not
			 * count against it. */
			(void)search(st, mbox, (enum way)w);
			t0 = now_ms();
			if (search(st, mbox, (enum way)w) != hits[w])
				check(ENG_ECORRUPT, "hit count changed");
			t[w][r] = now_ms() - t0;
		}
	}
	check_sql(sqlite3_exec(st->db, "DROP TABLE header_field; DELETE FROM "
			       "schema_version WHERE version > 1", NULL, NULL,
			       NULL), "downgrade");
	eng_store_close(&st);
	t0 = now_ms();
	st = open_store(path, key, &mbox);
	t0 = now_ms() - t0;
	eng_store_close(&st);

	printf("HEADER From \"Kowalski\", %lu messages, encrypted, "
	       "median of %d\n", n, repeat);
	printf("%-22s %8s %12s %10s\n", "way", "hits", "first ms",
	       "median ms");
	for (int w = 0; w < N_WAYS; w++) {
		qsort(t[w], (size_t)repeat, sizeof(double), bench_cmp_double);
		printf("%-22s %8zu %12.2f %10.2f\n", way_names[w], hits[w],
		       first[w], t[w][repeat / 2]);
	}
	printf("open with the migration from version 1: %.1f ms\n", t0);
	nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	return 0;
}
