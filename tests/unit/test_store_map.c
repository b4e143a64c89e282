/*
 * Database pages read through a map of the file (engine/wal_vfs.c,
 * "sealmail-sealed"): the bodies read back byte-exact through the map; a
 * reader whose file grows under it (another connection writes and
 * checkpoints) maps it again and reads the new pages from the map too;
 * and a file shrunk under a reader's map, which faults the copy with
 * SIGBUS, fails the reads or answers the right bytes, never kills the
 * process, and is counted as a fault.
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

#include "eng_error.h"
#include "keys.h"
#include "store.h"
#include "testmsgs.h"
#include "teststore.h"
#include "testutil.h"
#include "wal_vfs.h"

#define N_MSGS 24
#define MSG_BYTES (48 * 1024)

static char *dir, *path;
static uint8_t key[ENG_DBKEY_BYTES];

/* Message i: big_message with i written into its attachment, so that no
 * two share a content. */
static char *message(int i, size_t *len_r)
{
	char *msg = big_message(MSG_BYTES);
	char tag[16];
	int n = snprintf(tag, sizeof(tag), "N%06dN", i);

	memcpy(msg + 400, tag, (size_t)n);
	*len_r = strlen(msg);
	return msg;
}

static eng_store *open_store(bool create)
{
	eng_store_options opt;
	eng_store *st = NULL;

	eng_store_options_default(&opt);
	opt.create = create;
	assert_int_equal(eng_store_open(path, key, &opt, &st), 0);
	return st;
}

static void append_range(eng_store *st, int first, int n)
{
	int64_t inbox = tu_inbox_id(st);

	for (int i = first; i < first + n; i++) {
		size_t len;
		char *msg = message(i, &len);
		uint32_t uid;

		assert_int_equal(eng_append_message(st, inbox, msg, len, NULL,
						    &uid, NULL), 0);
		assert_int_equal(uid, (uint32_t)i + 1);
		free(msg);
	}
}

/* Reads message uid whole: 0 and the bytes compared, or the error. */
static int read_and_compare(eng_store *st, int64_t inbox, uint32_t uid)
{
	eng_message *m = NULL;
	size_t want_len, at = 0;
	char *want = message((int)uid - 1, &want_len);
	char buf[16384];
	long n = 0;
	int err;

	if ((err = eng_message_open(st, inbox, uid, &m)) != 0)
		goto out;
	assert_int_equal(eng_message_size(m), want_len);
	while (at < want_len &&
	       (n = eng_message_read(m, at, buf, sizeof(buf))) > 0) {
		assert_true(at + (size_t)n <= want_len);
		assert_memory_equal(buf, want + at, (size_t)n);
		at += (size_t)n;
	}
	err = n < 0 ? (int)n : 0;
	if (err == 0)
		assert_int_equal(at, want_len);
out:
	eng_message_close(&m);
	free(want);
	return err;
}

static unsigned long long map_reads(void)
{
	unsigned long long reads, faults;

	eng_wal_vfs_map_counts(&reads, &faults);
	return reads;
}

static unsigned long long map_faults(void)
{
	unsigned long long reads, faults;

	eng_wal_vfs_map_counts(&reads, &faults);
	return faults;
}

static off_t file_size(void)
{
	struct stat sb;

	assert_int_equal(stat(path, &sb), 0);
	return sb.st_size;
}

/* A store written and closed (its WAL checkpointed into the file). */
static void make_store(int n)
{
	eng_store *st = open_store(true);

	append_range(st, 0, n);
	eng_store_close(&st);
	assert_true(file_size() > (off_t)n * MSG_BYTES);
}

static void test_bodies_read_from_the_map(void **state)
{
	unsigned long long reads0, faults0 = map_faults();
	eng_store *st;

	(void)state;
	make_store(N_MSGS);
	reads0 = map_reads();
	st = open_store(false);
	for (uint32_t uid = 1; uid <= N_MSGS; uid++)
		assert_int_equal(read_and_compare(st, tu_inbox_id(st), uid), 0);
	eng_store_close(&st);
	/* Every body page came through the map: 12+ pages a message. */
	assert_true(map_reads() - reads0 >= (unsigned long long)N_MSGS *
					     (MSG_BYTES / 4096));
	assert_int_equal(map_faults(), faults0);
}

static void test_map_follows_the_file_growing(void **state)
{
	unsigned long long reads0;
	eng_store *reader, *writer;
	int64_t inbox;
	off_t before;

	(void)state;
	make_store(4);
	reader = open_store(false);
	inbox = tu_inbox_id(reader);
	assert_int_equal(read_and_compare(reader, inbox, 1), 0);  /* mapped now */
	before = file_size();
	writer = open_store(false);
	append_range(writer, 4, N_MSGS);
	assert_int_equal(eng_store_checkpoint(writer), 0);
	eng_store_close(&writer);
	assert_true(file_size() >= before + (off_t)N_MSGS * MSG_BYTES);
	/* The new pages lie past the reader's map: it maps the file again
	 * and reads them from it. */
	reads0 = map_reads();
	for (uint32_t uid = 5; uid <= 4 + N_MSGS; uid++)
		assert_int_equal(read_and_compare(reader, inbox, uid), 0);
	assert_true(map_reads() - reads0 >= (unsigned long long)N_MSGS *
					     (MSG_BYTES / 4096));
	eng_store_close(&reader);
}

static void test_shrunk_file_faults_without_a_crash(void **state)
{
	unsigned long long faults0 = map_faults();
	int failed = 0;
	eng_store *st;
	int64_t inbox;

	(void)state;
	make_store(N_MSGS);
	st = open_store(false);
	inbox = tu_inbox_id(st);
	/* One read snapshot: SQLite keeps the database's size it began with,
	 * so it reads the pages that are gone below. */
	assert_int_equal(eng_store_read_begin(st), 0);
	assert_int_equal(read_and_compare(st, inbox, 1), 0); /* maps it all */
	/* Behind SQLite's back: the pages past the first quarter go. The
	 * map still spans them, so copying one faults (SIGBUS). */
	assert_int_equal(truncate(path, (file_size() / 4) & ~(off_t)4095), 0);
	for (uint32_t uid = 2; uid <= N_MSGS; uid++) {
		int err = read_and_compare(st, inbox, uid);

		if (err != 0)
			failed++;
	}
	eng_store_read_end(st);
	assert_true(failed > 0);
	assert_true(map_faults() > faults0);
	eng_store_close(&st);
}

static int setup_dir(void **state)
{
	(void)state;
	dir = tu_tmpdir();
	if (asprintf(&path, "%s/alias.db", dir) < 0)
		return -1;
	return 0;
}

static int teardown_dir(void **state)
{
	(void)state;
	tu_rmrf(dir);
	free(dir);
	free(path);
	dir = path = NULL;
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_bodies_read_from_the_map,
						setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(
			test_map_follows_the_file_growing, setup_dir,
			teardown_dir),
		cmocka_unit_test_setup_teardown(
			test_shrunk_file_faults_without_a_crash, setup_dir,
			teardown_dir),
	};

	eng_set_log(tu_log_silent);
	if (eng_crypto_init() != 0)
		return 1;
	randombytes_buf(key, sizeof(key));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
