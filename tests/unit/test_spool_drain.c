/*
 * The drain's record of applied entries (spool_applied) is bounded: a row
 * goes once it is older than ENG_IDEMPOTENCY_TTL_SECONDS and its entry is
 * no longer in the spool, never sooner, so that no entry is delivered
 * twice (engine/message.c, "the spool").
 *
 * Every test drains an entry whose row is then aged past the TTL with no
 * file left (an "orphan"), lets a day pass (the prune runs at most once a
 * day per open store: st->spool_pruned moves back) and checks the orphan
 * is gone; so each fails if the prune does not run. What else each keeps
 * is the point of the test.
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
#include <unistd.h>

#include "keys.h"
#include "spool.h"
#include "store.h"
#include "store_private.h"
#include "teststore.h"
#include "testutil.h"

typedef char spool_id[ENG_SPOOL_ID_LEN + 1];

struct fx {
	tu_store s;
	char *spool;
	uint8_t pk[crypto_box_PUBLICKEYBYTES];
	uint8_t sk[crypto_box_SECRETKEYBYTES];
	spool_id orphan;
};

/* A keyed DELIVER's entry name (srv_key_id): the same on every resend. */
static const char keyed_id[] = "00112233445566778899aabbccddeeff";

static int setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));

	assert_non_null(fx);
	tu_store_open(&fx->s);
	assert_true(asprintf(&fx->spool, "%s/spool", fx->s.dir) > 0);
	crypto_box_keypair(fx->pk, fx->sk);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;

	tu_store_close(&fx->s);
	free(fx->spool);
	free(fx);
	return 0;
}

/* Spools a message as entry id (NULL: a random id, into id_r). */
static void put(struct fx *fx, const char *id, spool_id id_r)
{
	static const char msg[] = "Subject: spooled\r\n\r\nbody\r\n";
	eng_spool_writer *w;
	spool_id got;

	assert_int_equal(eng_spool_writer_open_id(fx->spool, fx->pk, 0, 0, id,
						  &w), 0);
	assert_int_equal(eng_spool_write(w, msg, sizeof(msg) - 1), 0);
	assert_int_equal(eng_spool_commit(&w, got), 0);
	if (id_r != NULL)
		memcpy(id_r, got, sizeof(got));
}

/* Drains the spool; the count delivered. It must leave it empty. */
static size_t drain(struct fx *fx)
{
	spool_id *left = NULL;
	size_t n = 99, n_left = 99;

	assert_int_equal(eng_store_drain_spool(fx->s.st, fx->spool, fx->sk,
					       NULL, NULL, &n), 0);
	assert_int_equal(eng_spool_list(fx->spool, &left, &n_left), 0);
	assert_int_equal(n_left, 0);
	free(left);
	return n;
}

/* Sets the applied time of id's row to now - age. */
static void age(struct fx *fx, const char *id, int64_t age)
{
	char *sql = sqlite3_mprintf("UPDATE spool_applied SET applied = %lld "
				    "WHERE id = %Q", (long long)(time(NULL) -
				    age), id);

	assert_int_equal(sqlite3_exec(fx->s.st->db, sql, NULL, NULL, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_changes(fx->s.st->db), 1);
	sqlite3_free(sql);
}

static bool has_row(struct fx *fx, const char *id)
{
	char *sql = sqlite3_mprintf("SELECT count(*) FROM spool_applied "
				    "WHERE id = %Q", id);
	int64_t n = tu_sql_int(fx->s.st, sql);

	sqlite3_free(sql);
	return n == 1;
}

static int64_t messages(struct fx *fx)
{
	return tu_sql_int(fx->s.st, "SELECT count(*) FROM message");
}

/* Spools entry id (NULL: random, into id_r) and drains it. */
static void drained(struct fx *fx, const char *id, spool_id id_r)
{
	put(fx, id, id_r);
	assert_int_equal(drain(fx), 1);
}

/* Drains an entry (row "orphan") and ages it past the TTL; the next
 * prune must delete it. The store's first drain prunes: a day passes. */
static void orphan(struct fx *fx)
{
	drained(fx, NULL, fx->orphan);
	age(fx, fx->orphan, ENG_IDEMPOTENCY_TTL_SECONDS + 60);
	fx->s.st->spool_pruned -= 24 * 3600;
}

/* The row under test: drains entry id (NULL: random, into id_r), then
 * the orphan, and sets the row's age. */
static void row(struct fx *fx, const char *id, spool_id id_r, int64_t secs)
{
	drained(fx, id, id_r);
	orphan(fx);
	age(fx, id != NULL ? id : id_r, secs);
}

/* Drains one new entry: the prune runs first, in its own transaction. */
static void drain_new(struct fx *fx)
{
	drained(fx, NULL, NULL);
	assert_false(has_row(fx, fx->orphan));
}

/* How every test ends: id's row kept, three messages, the invariants. */
static void kept(struct fx *fx, const char *id)
{
	assert_true(has_row(fx, id));
	assert_int_equal(messages(fx), 3);
	tu_store_check(fx->s.st);
}

/* An old row without a file goes, with the first drain of a day. */
static void test_old_row_pruned(void **state)
{
	struct fx *fx = *state;
	spool_id same_day;

	orphan(fx);
	/* Pruned within the day: no pass, the orphan stays. */
	fx->s.st->spool_pruned += 24 * 3600;
	drained(fx, NULL, same_day);
	assert_true(has_row(fx, fx->orphan));
	fx->s.st->spool_pruned -= 24 * 3600;
	drain_new(fx);
	kept(fx, same_day);
}

/*
 * A crash between the drain's commit and the file's removal leaves an
 * entry already delivered; if the next drain comes after the TTL, its row
 * is old but must stay (the file is in the listing the prune keeps), and
 * the entry is removed, not delivered again.
 */
static void test_old_row_with_file_kept(void **state)
{
	struct fx *fx = *state;
	spool_id left;

	row(fx, NULL, left, ENG_IDEMPOTENCY_TTL_SECONDS + 60);
	put(fx, NULL, NULL);
	put(fx, left, NULL);        /* the file the crash left */
	assert_int_equal(drain(fx), 1);
	assert_false(has_row(fx, fx->orphan));
	kept(fx, left);
}

/* A row younger than the TTL stays, though its file is gone. */
static void test_young_row_kept(void **state)
{
	struct fx *fx = *state;
	spool_id young;

	row(fx, NULL, young, ENG_IDEMPOTENCY_TTL_SECONDS - 3600);
	drain_new(fx);
	kept(fx, young);
}

/*
 * A keyed DELIVER whose record was lost is resent by the MX within
 * minutes and rewrites the same entry name, after its first copy was
 * drained and its file removed, and after a prune ran: only the row
 * stops a second delivery.
 */
static void test_keyed_resend_after_prune(void **state)
{
	struct fx *fx = *state;

	row(fx, keyed_id, NULL, 6 * 60);
	drain_new(fx);
	put(fx, keyed_id, NULL);    /* the resend */
	assert_int_equal(drain(fx), 0);
	kept(fx, keyed_id);
}

/*
 * A prune that fails is logged and skipped: every entry is delivered all
 * the same, and the next day's drain prunes. Here its DELETE, which lists
 * the spool's 40 ids, is longer than the connection's SQL length limit.
 */
static void test_failed_prune_still_delivers(void **state)
{
	struct fx *fx = *state;
	int limit;

	orphan(fx);
	for (int i = 0; i < 40; i++)
		put(fx, NULL, NULL);
	limit = sqlite3_limit(fx->s.st->db, SQLITE_LIMIT_SQL_LENGTH, 1200);
	assert_int_equal(drain(fx), 40);
	sqlite3_limit(fx->s.st->db, SQLITE_LIMIT_SQL_LENGTH, limit);
	assert_true(has_row(fx, fx->orphan));
	fx->s.st->spool_pruned -= 24 * 3600;
	drain_new(fx);
	assert_int_equal(messages(fx), 42);
	tu_store_check(fx->s.st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_old_row_pruned, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_old_row_with_file_kept,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_young_row_kept, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_keyed_resend_after_prune,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_failed_prune_still_delivers, setup, teardown),
	};

	eng_set_log(tu_log_silent);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
