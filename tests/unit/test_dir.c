/*
 * The directory with the embedded SQLite backend: the shared behaviour
 * (dir_behaviour.h) plus what only a file has: mode 0600, WAL, the schema
 * version guard, URIs, and concurrent keyring swaps from several threads
 * and handles.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dir.h"
#include "eng_error.h"
#include "testutil.h"

struct sqlite_be {
	char *tmp;
};

static int be_open(void **be_r, dir **d_r)
{
	struct sqlite_be *be = calloc(1, sizeof(*be));

	be->tmp = tu_tmpdir();
	*be_r = be;
	return dir_open(NULL, be->tmp, d_r);
}

static int be_reopen(void *be_v, dir **d_r)
{
	struct sqlite_be *be = be_v;

	return dir_open("embedded", be->tmp, d_r);
}

static void be_destroy(void *be_v)
{
	struct sqlite_be *be = be_v;

	tu_rmrf(be->tmp);
	free(be->tmp);
	free(be);
}

#include "dir_behaviour.h"

static char *path_in(const char *dir_path, const char *name)
{
	char *p;

	assert_true(asprintf(&p, "%s/%s", dir_path, name) > 0);
	return p;
}

static void test_file_mode_and_wal(void **state)
{
	char *tmp = tu_tmpdir();
	char *db = path_in(tmp, "directory.db");
	char *wal = path_in(tmp, "directory.db-wal");
	struct stat sb;
	mode_t old = umask(0);
	dir *d = NULL;
	sqlite3 *raw;
	sqlite3_stmt *stmt;

	(void)state;
	assert_int_equal(dir_open("", tmp, &d), 0);
	assert_string_equal(dir_backend_name(d), "embedded");
	assert_int_equal(dir_domain_add(d, "example.org"), 0);
	/* Open: the WAL exists and has the file's mode, whatever the umask. */
	assert_int_equal(stat(db, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	assert_int_equal(stat(wal, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	dir_close(&d);
	umask(old);

	/* WAL mode is persistent in the file. */
	assert_int_equal(sqlite3_open(db, &raw), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &stmt,
					    NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(stmt, 0), "wal");
	sqlite3_finalize(stmt);
	sqlite3_close(raw);

	/* A loosened mode is tightened again at open. */
	assert_int_equal(chmod(db, 0644), 0);
	assert_int_equal(dir_open(NULL, tmp, &d), 0);
	assert_int_equal(stat(db, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	assert_int_equal(dir_domain_exists(d, "example.org"), 1);
	dir_close(&d);

	tu_rmrf(tmp);
	free(db);
	free(wal);
	free(tmp);
}

static void exec_raw(const char *db, const char *sql)
{
	sqlite3 *raw;

	assert_int_equal(sqlite3_open(db, &raw), SQLITE_OK);
	assert_int_equal(sqlite3_exec(raw, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(raw);
}

static void test_schema_versions(void **state)
{
	char *tmp = tu_tmpdir();
	char *db = path_in(tmp, "directory.db");
	char *other = path_in(tmp, "other.db");
	char *uri;
	dir *d = NULL;
	sqlite3 *raw;
	sqlite3_stmt *stmt;

	(void)state;
	assert_true(asprintf(&uri, "sqlite:%s", db) > 0);
	assert_int_equal(dir_open(uri, NULL, &d), 0);
	assert_int_equal(dir_domain_add(d, "example.org"), 0);
	dir_close(&d);
	/* The schema version table says 1. */
	assert_int_equal(sqlite3_open(db, &raw), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(raw, "SELECT max(version) FROM "
					    "schema_version", -1, &stmt, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(stmt, 0), DIR_SCHEMA_VERSION);
	sqlite3_finalize(stmt);
	sqlite3_close(raw);

	/* Written by a newer Sealmail: refused, and left untouched. */
	exec_raw(db, "INSERT INTO schema_version (version, applied) VALUES (99, 0)");
	d = (dir *)1;
	assert_int_equal(dir_open(uri, NULL, &d), ENG_ENEWER);
	assert_null(d);
	exec_raw(db, "DELETE FROM schema_version WHERE version = 99");
	assert_int_equal(dir_open(uri, NULL, &d), 0);
	assert_int_equal(dir_domain_exists(d, "example.org"), 1);
	dir_close(&d);

	/* A SQLite file that is not a directory, and a file that is not
	 * SQLite at all. */
	exec_raw(other, "CREATE TABLE unrelated (x)");
	free(uri);
	assert_true(asprintf(&uri, "sqlite:%s", other) > 0);
	assert_int_equal(dir_open(uri, NULL, &d), ENG_ECORRUPT);
	assert_int_equal(tu_write_file(other, "this is not a database file, not at all"
				       " and it is long enough to have a header.....",
				       84), 0);
	assert_int_equal(dir_open(uri, NULL, &d), ENG_ECORRUPT);
	assert_null(d);

	free(uri);
	free(db);
	free(other);
	tu_rmrf(tmp);
	free(tmp);
}

static void test_open_arguments(void **state)
{
	char *tmp = tu_tmpdir();
	char *missing = path_in(tmp, "no/such/dir");
	dir *d = NULL;

	(void)state;
	assert_int_equal(dir_open(NULL, NULL, &d), ENG_EINVAL);
	assert_int_equal(dir_open("embedded", "", &d), ENG_EINVAL);
	assert_int_equal(dir_open("sqlite:", NULL, &d), ENG_EINVAL);
	assert_int_equal(dir_open("postgres://x", tmp, &d), ENG_EINVAL);
	assert_int_equal(dir_open("ldap://x", tmp, &d), ENG_EINVAL);
	assert_int_equal(dir_open(NULL, missing, &d), ENG_ENOTFOUND);
	assert_null(d);
	/* MongoDB: a malformed URI, and a server that is not there (refused
	 * connection, short server selection timeout). */
	assert_int_equal(dir_open("mongodb://", NULL, &d), ENG_EINVAL);
	assert_int_equal(dir_open("mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=300"
				  "&connectTimeoutMS=300", NULL, &d), ENG_EIO);
	assert_null(d);
	assert_int_equal(dir_open(NULL, tmp, NULL), ENG_EINVAL);
	free(missing);
	tu_rmrf(tmp);
	free(tmp);
}

static void test_normalize_helpers(void **state)
{
	char out[DIR_ADDRESS_MAX + 1];
	size_t at = 0;

	(void)state;
	assert_int_equal(dir_normalize_address("Bob.Smith@Example.ORG", false, out, &at), 0);
	assert_string_equal(out, "bob.smith@example.org");
	assert_int_equal(at, 9);
	assert_int_equal(dir_normalize_address("@Example.org", true, out, &at), 0);
	assert_string_equal(out, "*@example.org");
	assert_int_equal(at, 1);
	assert_int_equal(dir_normalize_address("*@Example.org", true, out, NULL), 0);
	assert_string_equal(out, "*@example.org");
	assert_int_equal(dir_normalize_address("@example.org", false, out, NULL), ENG_EINVAL);
	assert_int_equal(dir_normalize_address("*@example.org", false, out, NULL), ENG_EINVAL);
	assert_int_equal(dir_normalize_domain("A-1.B2.Example", out), 0);
	assert_string_equal(out, "a-1.b2.example");
	assert_int_equal(dir_normalize_domain("a.123", out), ENG_EINVAL);
	assert_int_equal(dir_normalize_domain("123.a", out), 0);
	assert_true(dir_valid_id("0123456789abcdef0123456789abcdef"));
	assert_false(dir_valid_id("0123456789ABCDEF0123456789abcdef"));
	assert_false(dir_valid_id("0123456789abcdef0123456789abcde"));
	assert_false(dir_valid_id(NULL));
}

/*
 * Lost-update check: threads on one handle and on a second handle each
 * add their own app password with read-modify-CAS-retry. Every add must
 * survive: the final keyring has 1 + all slots, and its version is 1 +
 * the number of successful swaps.
 */
#define CAS_THREADS 4
#define CAS_ADDS 3

struct cas_arg {
	dir *d;
	const char *id;
	uint8_t *mk;
	int thread;
	int retries;
};

static void *cas_worker(void *p)
{
	struct cas_arg *arg = p;

	for (int i = 0; i < CAS_ADDS; i++) {
		for (;;) {
			dir_alias a;
			eng_keyring *kr = NULL;
			uint8_t *blob = NULL;
			size_t len = 0;
			uint32_t slot;
			char pw[32];
			int rc;

			if (dir_alias_get_id(arg->d, arg->id, &a) != 0)
				return (void *)1;
			if (eng_keyring_decode(a.keyring, a.keyring_len, &kr) != 0)
				return (void *)2;
			snprintf(pw, sizeof(pw), "t%d-%d", arg->thread, i);
			if (eng_keyring_add_slot(kr, arg->mk, pw, strlen(pw), pw,
						 &slot) != 0 ||
			    eng_keyring_encode(kr, &blob, &len) != 0)
				return (void *)3;
			rc = dir_alias_set_keyring(arg->d, arg->id, a.keyring_version,
						   blob, len, NULL);
			free(blob);
			eng_keyring_free(&kr);
			dir_alias_clear(&a);
			if (rc == 0)
				break;
			if (rc != ENG_EMODIFIED && rc != ENG_EBUSY)
				return (void *)4;
			arg->retries++;
		}
	}
	return NULL;
}

static void test_concurrent_cas(void **state)
{
	char *tmp = tu_tmpdir();
	struct test_keyring tk;
	dir *d1 = NULL, *d2 = NULL;
	dir_alias_spec spec = { 0 };
	char id[DIR_ID_HEX_LEN + 1];
	pthread_t th[CAS_THREADS];
	struct cas_arg args[CAS_THREADS];
	dir_alias a;
	int retries = 0;

	(void)state;
	assert_int_equal(dir_open(NULL, tmp, &d1), 0);
	assert_int_equal(dir_open(NULL, tmp, &d2), 0);
	assert_int_equal(dir_domain_add(d1, "example.org"), 0);
	tk_make(&tk, "main");
	spec.kind = DIR_MAILBOX;
	spec.keyring = tk.blob;
	spec.keyring_len = tk.len;
	assert_int_equal(dir_alias_add(d1, "alice@example.org", &spec, id), 0);
	for (int t = 0; t < CAS_THREADS; t++) {
		args[t] = (struct cas_arg){ t % 2 ? d2 : d1, id, tk.mk, t, 0 };
		assert_int_equal(pthread_create(&th[t], NULL, cas_worker, &args[t]), 0);
	}
	for (int t = 0; t < CAS_THREADS; t++) {
		void *res = (void *)99;

		assert_int_equal(pthread_join(th[t], &res), 0);
		assert_null(res);
		retries += args[t].retries;
	}
	assert_int_equal(dir_alias_get_id(d2, id, &a), 0);
	assert_int_equal(a.keyring_version, 1 + CAS_THREADS * CAS_ADDS);
	assert_int_equal(blob_slots(a.keyring, a.keyring_len), 1 + CAS_THREADS * CAS_ADDS);
	dir_alias_clear(&a);
	print_message("concurrent keyring swaps: %d retries\n", retries);
	dir_close(&d1);
	dir_close(&d2);
	tk_free(&tk);
	tu_rmrf(tmp);
	free(tmp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		DIR_BEHAVIOUR_TESTS,
		cmocka_unit_test(test_file_mode_and_wal),
		cmocka_unit_test(test_schema_versions),
		cmocka_unit_test(test_open_arguments),
		cmocka_unit_test(test_normalize_helpers),
		cmocka_unit_test(test_concurrent_cas),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
