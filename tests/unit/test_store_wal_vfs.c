/*
 * The "sealmail-wal" VFS (engine/wal_vfs.c) under the store: an APPEND's
 * WAL frames reach the file in one write system call instead of two per
 * frame; a commit is in the file when COMMIT returns (a second handle on
 * the same store, not closing the first, reads it); a transaction larger
 * than the gathering buffer (a 700 KB incompressible message: several
 * gathered writes and a chunk across two 256 KiB chunks) reads back byte
 * for byte; the VFS is registered. The store, encrypted, is on
 * "sealmail-sealed", the same VFS with pages of zeroes refused
 * (test_store_zeropage).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "store.h"
#include "store_private.h"
#include "teststore.h"
#include "wal_vfs.h"

static int frames_in_wal;

static int on_wal(void *ctx, sqlite3 *db, const char *name, int frames)
{
	(void)ctx;
	(void)db;
	(void)name;
	frames_in_wal = frames;
	return SQLITE_OK;
}

/* Reads message uid of st whole and compares it with want. */
static void assert_message(eng_store *st, int64_t mbox, uint32_t uid,
			   const unsigned char *want, size_t len)
{
	eng_message *m = NULL;
	unsigned char *got = malloc(len + 1);
	size_t off = 0;
	long n;

	assert_non_null(got);
	assert_int_equal(eng_message_open(st, mbox, uid, &m), 0);
	assert_int_equal(eng_message_size(m), len);
	while ((n = eng_message_read(m, off, got + off, len + 1 - off)) > 0)
		off += (size_t)n;
	assert_int_equal(n, 0);
	assert_int_equal(off, len);
	assert_memory_equal(got, want, len);
	eng_message_close(&m);
	free(got);
}

static void test_store_on_wal_vfs(void **state)
{
	tu_store *f = *state;
	const char *vfs = eng_wal_vfs_name();

	assert_non_null(vfs);
	assert_string_equal(vfs, "sealmail-wal");
	assert_non_null(sqlite3_vfs_find(vfs));
	/* Not the default: other SQLite users of the process keep theirs. */
	assert_ptr_not_equal(sqlite3_vfs_find(NULL), sqlite3_vfs_find(vfs));
	assert_int_equal(tu_sql_int(f->st, "PRAGMA synchronous"), 2); /* FULL */
}

static void test_append_one_write(void **state)
{
	tu_store *f = *state;
	unsigned long long w0, s0, w1, s1;
	int frames0;

	sqlite3_wal_autocheckpoint(f->st->db, 0);
	sqlite3_wal_hook(f->st->db, on_wal, NULL);
	(void)tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	frames0 = frames_in_wal;
	eng_wal_vfs_counts(&w0, &s0);
	(void)tu_store_append(f, f->inbox, "Subject: two\r\n\r\nbody\r\n", 0);
	eng_wal_vfs_counts(&w1, &s1);
	assert_true(frames_in_wal > frames0 + 5);
	/* Each frame is two writes by SQLite (header, page) ... */
	assert_int_equal(w1 - w0, 2ull * (unsigned)(frames_in_wal - frames0));
	/* ... and all of them one write system call here. */
	assert_int_equal(s1 - s0, 1);
}

static void test_commit_visible_to_other_handle(void **state)
{
	tu_store *f = *state;
	eng_store_options opt;
	eng_store *other = NULL;
	uint32_t uid;

	sqlite3_wal_autocheckpoint(f->st->db, 0);
	uid = tu_store_append(f, f->inbox, TU_SIMPLE_MSG, 0);
	eng_store_options_default(&opt);
	assert_int_equal(eng_store_open(f->path, f->key, &opt, &other), 0);
	assert_message(other, f->inbox, uid, (const unsigned char *)TU_SIMPLE_MSG,
		       sizeof(TU_SIMPLE_MSG) - 1);
	eng_store_close(&other);
}

static void test_large_transaction(void **state)
{
	tu_store *f = *state;
	static const char head[] = "Subject: big\r\nContent-Type: "
		"application/octet-stream\r\n\r\n";
	size_t len = 700 * 1024;
	unsigned char *msg = malloc(len);
	unsigned long long w0, s0, w1, s1;
	eng_store_options opt;
	eng_store *other = NULL;
	uint32_t uid;

	assert_non_null(msg);
	memcpy(msg, head, sizeof(head) - 1);
	for (size_t i = sizeof(head) - 1; i < len; i++)   /* incompressible text */
		msg[i] = (i % 78 == 77) ? '\n' : (unsigned char)('!' + randombytes_uniform(90));
	sqlite3_wal_autocheckpoint(f->st->db, 0);
	eng_wal_vfs_counts(&w0, &s0);
	assert_int_equal(eng_append_message(f->st, f->inbox, msg, len, NULL,
					    &uid, NULL), 0);
	eng_wal_vfs_counts(&w1, &s1);
	/* ~150+ pages: more than one gathered write, still far fewer. */
	assert_true(w1 - w0 > 300);
	assert_true(s1 - s0 >= 4);
	assert_true((s1 - s0) * 10 < w1 - w0);
	assert_message(f->st, f->inbox, uid, msg, len);
	eng_store_options_default(&opt);
	assert_int_equal(eng_store_open(f->path, f->key, &opt, &other), 0);
	assert_message(other, f->inbox, uid, msg, len);
	eng_store_close(&other);
	/* Checkpointed and reopened: the database file alone holds it. */
	eng_store_close(&f->st);
	assert_int_equal(eng_store_open(f->path, f->key, &opt, &f->st), 0);
	assert_message(f->st, f->inbox, uid, msg, len);
	tu_store_check(f->st);
	free(msg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_store_on_wal_vfs,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_append_one_write,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_commit_visible_to_other_handle,
						tu_store_setup, tu_store_teardown),
		cmocka_unit_test_setup_teardown(test_large_transaction,
						tu_store_setup, tu_store_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
