/*
 * The store under bad input: wrong keys, damaged and truncated files, a
 * newer schema, a full disk, malformed messages; and the on-disk format
 * itself (SQLCipher settings a 4.x build needs, encryption of the file and
 * of the WAL). The rule pinned here is store.h's: a clear error code, never
 * a crash, never success followed by wrong data.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eng_error.h"
#include "keys.h"
#include "store.h"
#include "store_private.h"
#include "teststore.h"
#include "testutil.h"

#define PAGE 4096
#define N_MSGS 6

/*
 * The SQLCipher settings the engine writes with, copied here on purpose:
 * if store.c ever changes them, existing files stop opening, and this
 * test should be the first to say so.
 */
static const char *const cipher_4x_pragmas[] = {
	"PRAGMA cipher_page_size = 4096",
	"PRAGMA kdf_iter = 64000",
	"PRAGMA fast_kdf_iter = 2",
	"PRAGMA cipher_hmac_algorithm = HMAC_SHA1",
	"PRAGMA cipher_kdf_algorithm = PBKDF2_HMAC_SHA1",
	"PRAGMA cipher_plaintext_header_size = 0",
};

static char *dir;
static uint8_t key[ENG_DBKEY_BYTES];
static uint8_t *msgs[N_MSGS];
static size_t msg_len[N_MSGS];

static int setup(void **state)
{
	(void)state;
	eng_set_log(tu_log_silent);
	if (eng_crypto_init() != 0)
		return -1;
	randombytes_buf(key, sizeof(key));
	/* Messages of 1 KB .. 600 KB: the larger ones span 3 chunks. */
	for (int i = 0; i < N_MSGS; i++) {
		size_t body = (size_t)1024 << (i * 2);
		size_t cap = body + 512, n;

		if (body > 600 * 1024)
			body = 600 * 1024;
		cap = body + 512;
		msgs[i] = malloc(cap);
		assert_non_null(msgs[i]);
		n = (size_t)snprintf((char *)msgs[i], cap,
				     "From: a@example.org\r\nSubject: test %d\r\n"
				     "\r\n", i);
		randombytes_buf_deterministic(msgs[i] + n, body,
					      (const uint8_t[32]){ (uint8_t)i });
		/* Even ones printable, so compression does something; odd
		 * ones left random, so zstd stores them as raw blocks, where
		 * a page read back zeroed would decompress "successfully". */
		for (size_t j = n; i % 2 == 0 && j < n + body; j++)
			msgs[i][j] = (uint8_t)('a' + msgs[i][j] % 16);
		msg_len[i] = n + body;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	for (int i = 0; i < N_MSGS; i++)
		free(msgs[i]);
	return 0;
}

static int setup_dir(void **state)
{
	(void)state;
	dir = tu_tmpdir();
	return 0;
}

static int teardown_dir(void **state)
{
	char *mnt;

	(void)state;
	/* A failed disk-full test may have left its tmpfs mounted. */
	if (asprintf(&mnt, "%s/small", dir) < 0)
		abort();
	(void)umount2(mnt, MNT_DETACH);
	free(mnt);
	tu_rmrf(dir);
	free(dir);
	dir = NULL;
	return 0;
}

static char *path_in(const char *d, const char *name)
{
	char *p;

	if (asprintf(&p, "%s/%s", d, name) < 0)
		abort();
	return p;
}

static int open_with(const char *path, const uint8_t *k, bool create,
		     bool plaintext, eng_store **st_r)
{
	eng_store_options opt;

	eng_store_options_default(&opt);
	opt.create = create;
	opt.plaintext = plaintext;
	return eng_store_open(path, k, &opt, st_r);
}

/* A closed (checkpointed) database holding msgs[] as UIDs 1..N_MSGS. */
static char *make_db(const char *name)
{
	char *path = path_in(dir, name);
	eng_store *st;
	int64_t inbox;

	assert_int_equal(open_with(path, key, true, false, &st), 0);
	inbox = tu_inbox_id(st);
	for (int i = 0; i < N_MSGS; i++) {
		uint32_t uid;

		assert_int_equal(eng_append_message(st, inbox, msgs[i],
						    msg_len[i], NULL, &uid,
						    NULL), 0);
		assert_int_equal(uid, (uint32_t)i + 1);
	}
	eng_store_close(&st);
	return path;
}

/* Reads a whole message; 0 and the bytes, or the first error. */
static int read_all(eng_store *st, int64_t mbox, uint32_t uid, uint8_t **out_r,
		    size_t *len_r)
{
	eng_message *m = NULL;
	uint8_t *buf;
	uint64_t size, off = 0;
	long n;
	int err = eng_message_open(st, mbox, uid, &m);

	*out_r = NULL;
	if (err != 0)
		return err;
	size = eng_message_size(m);
	buf = malloc(size + 1);
	assert_non_null(buf);
	while ((n = eng_message_read(m, off, buf + off, 100000)) > 0)
		off += (uint64_t)n;
	eng_message_close(&m);
	if (n < 0) {
		free(buf);
		return (int)n;
	}
	if (off != size) {
		free(buf);
		return ENG_ECORRUPT;
	}
	*out_r = buf;
	*len_r = size;
	return 0;
}

/*
 * Opens a possibly damaged copy of make_db()'s database and reads
 * everything: returns the first error (open, any read, eng_store_check),
 * or 0 if all of it worked. Anything read successfully must be exactly
 * what was stored: wrong bytes with a 0 are the one failure that matters
 * most, and fail the test here.
 */
static int probe(const char *path)
{
	eng_store *st = NULL;
	int err = open_with(path, key, false, false, &st), first = 0;
	int64_t inbox;
	eng_mailbox mb;

	if (err != 0)
		return err;
	err = eng_mailbox_get(st, "INBOX", &mb);
	if (err != 0) {
		eng_store_close(&st);
		return err;
	}
	inbox = mb.id;
	eng_mailbox_clear(&mb);
	for (uint32_t uid = 1; uid <= N_MSGS; uid++) {
		uint8_t *data;
		size_t len;

		err = read_all(st, inbox, uid, &data, &len);
		if (err != 0) {
			if (first == 0)
				first = err;
			continue;
		}
		if (len != msg_len[uid - 1] || memcmp(data, msgs[uid - 1], len) != 0)
			fail_msg("%s: UID %u read back wrong bytes with success",
				 path, uid);
		free(data);
	}
	err = eng_store_check(st, NULL);
	if (first == 0)
		first = err;
	eng_store_close(&st);
	return first;
}

static void copy_file(const char *from, const char *to, off_t len)
{
	size_t n;
	uint8_t *data = tu_read_file(from, &n);

	assert_non_null(data);
	if (len >= 0 && (size_t)len < n)
		n = (size_t)len;
	assert_int_equal(tu_write_file(to, data, n), 0);
	free(data);
}

static off_t file_size(const char *path)
{
	struct stat sb;

	if (stat(path, &sb) != 0)
		return -1;
	return sb.st_size;
}

/* ---- keys ---- */

static void test_wrong_key(void **state)
{
	char *path = make_db("a.db");
	uint8_t other[ENG_DBKEY_BYTES];
	eng_store *st = NULL;

	(void)state;
	memcpy(other, key, sizeof(other));
	other[31] ^= 1;          /* one bit off */
	assert_int_equal(open_with(path, other, false, false, &st), ENG_EAUTH);
	assert_null(st);
	/* An encrypted file opened as plain SQLite is not a database to it. */
	assert_int_equal(open_with(path, NULL, false, true, &st), ENG_ECORRUPT);
	assert_null(st);
	/* The right key still works: a failed open changed nothing. */
	assert_int_equal(probe(path), 0);
	free(path);
}

static void test_missing_file(void **state)
{
	char *path = path_in(dir, "none.db");
	eng_store *st = NULL;

	(void)state;
	assert_int_equal(open_with(path, key, false, false, &st), ENG_ENOTFOUND);
	assert_int_equal(access(path, F_OK), -1);
	free(path);
}

/* ---- damage ---- */

static void test_truncated(void **state)
{
	char *path = make_db("a.db"), *cut = path_in(dir, "cut.db");
	off_t size = file_size(path);
	const off_t cuts[] = {
		0, 100, size / 2 + 1000, (size / 2) / PAGE * PAGE, size - PAGE,
	};

	(void)state;
	assert_true(size > 8 * PAGE);
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		int err;

		copy_file(path, cut, cuts[i]);
		err = probe(cut);
		print_message("truncated to %lld of %lld bytes: %s\n",
			      (long long)cuts[i], (long long)size,
			      eng_strerror(err));
		/* Damage, never "wrong password": page 1 still opens. */
		if (err != ENG_ECORRUPT)
			fail_msg("truncated to %lld bytes: got %d (%s), want "
				 "ENG_ECORRUPT", (long long)cuts[i],
				 err, eng_strerror(err));
		unlink(cut);
	}
	free(cut);
	free(path);
}

static void test_flipped_bytes(void **state)
{
	char *path = make_db("a.db"), *bad = path_in(dir, "bad.db");
	off_t size = file_size(path);
	uint32_t rnd = 12345;

	(void)state;
	/* A few bytes in one page at a time, in several places of the file
	 * (never page 1, which test_wrong_key and test_truncated cover). */
	for (int round = 0; round < 8; round++) {
		size_t len;
		uint8_t *data;
		off_t page;
		int err;

		copy_file(path, bad, -1);
		data = tu_read_file(bad, &len);
		assert_non_null(data);
		rnd = rnd * 1103515245u + 12345u;
		page = 1 + (off_t)((rnd >> 8) % (uint32_t)(size / PAGE - 1));
		for (int k = 0; k < 3; k++) {
			rnd = rnd * 1103515245u + 12345u;
			data[page * PAGE + (rnd >> 8) % PAGE] ^=
				(uint8_t)(1 + (rnd >> 24) % 255);
		}
		assert_int_equal(tu_write_file(bad, data, len), 0);
		free(data);
		err = probe(bad);
		print_message("bytes flipped in page %lld of %lld: %s\n",
			      (long long)page, (long long)(size / PAGE),
			      eng_strerror(err));
		assert_int_equal(err, ENG_ECORRUPT);
		unlink(bad);
	}
	free(bad);
	free(path);
}

/*
 * One byte flipped in each page of the file in turn (page 1 aside, as
 * above): every one is found, and no read returns wrong bytes with
 * success (probe fails the test on that), whatever the page held: a
 * table's B-tree, an index, a compressed chunk's overflow page, or a raw
 * zstd block, whose damage only SQLCipher's HMAC can tell.
 */
static sqlite3 *raw_open(const char *path, bool page_size_pragmas);

/* PRAGMA freelist_count of an undamaged file. */
static long free_pages(const char *path)
{
	sqlite3 *db = raw_open(path, true);
	sqlite3_stmt *stmt;
	long n;

	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA freelist_count", -1,
					    &stmt, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
	n = (long)sqlite3_column_int64(stmt, 0);
	sqlite3_finalize(stmt);
	sqlite3_close(db);
	return n;
}

/*
 * Damages each page but the first in turn, one copy of the file per page:
 * one byte flipped, or (zero) the whole page zeroed, which SQLCipher
 * takes for a short read and decrypts to zeroes without an error
 * (sqlcipher_page_cipher); either must read as damage or not be read.
 */
static void damage_every_page(bool zero)
{
	char *path = make_db("a.db"), *bad = path_in(dir, "bad.db");
	size_t len, unnoticed = 0;
	uint8_t *orig = tu_read_file(path, &len);
	uint8_t *copy = malloc(PAGE);
	size_t pages = len / PAGE;

	assert_non_null(orig);
	assert_true(pages > 100);
	for (size_t page = 1; page < pages; page++) {
		/* Anywhere in the page but its last 12 bytes: the 48-byte
		 * reserve is IV (16), HMAC (20) and 12 bytes of filler that
		 * nothing reads. */
		size_t at = page * PAGE + (page * 977) % (PAGE - 12);
		int err;

		memcpy(copy, orig + page * PAGE, PAGE);
		if (zero)
			memset(orig + page * PAGE, 0, PAGE);
		else
			orig[at] ^= 0x5a;
		assert_int_equal(tu_write_file(bad, orig, len), 0);
		memcpy(orig + page * PAGE, copy, PAGE);
		err = probe(bad);
		/* 0 only for a page nothing reads (a free page): everything
		 * read was right, probe checked it. */
		if (err == 0)
			unnoticed++;
		else if (err != ENG_ECORRUPT)
			fail_msg("page %zu of %zu damaged: %s", page, pages,
				 eng_strerror(err));
		unlink(bad);
	}
	print_message("%zu of %zu damaged pages unread, %ld free pages\n",
		      unnoticed, pages - 1, free_pages(path));
	/* A flipped byte fails the page's HMAC, which eng_store_check's
	 * cipher_integrity_check finds on any page. A zeroed page passes
	 * it: one that holds no message bytes (the search index's text,
	 * in overflow pages that integrity_check does not read) goes
	 * unnoticed, and probe has checked that every message read is
	 * exact. */
	if (!zero)
		assert_true((long)unnoticed <= free_pages(path));
	free(copy);
	free(orig);
	free(bad);
	free(path);
}

static void test_every_page_flipped(void **state)
{
	(void)state;
	damage_every_page(false);
}

static void test_every_page_zeroed(void **state)
{
	(void)state;
	damage_every_page(true);
}

/* ---- schema version ---- */

static sqlite3 *raw_open(const char *path, bool page_size_pragmas)
{
	sqlite3 *db = NULL;
	char sql[128];
	char hex[ENG_DBKEY_BYTES * 2 + 1];

	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE,
					 NULL), SQLITE_OK);
	sodium_bin2hex(hex, sizeof(hex), key, sizeof(key));
	snprintf(sql, sizeof(sql), "PRAGMA key = \"x'%s'\"", hex);
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sodium_memzero(sql, sizeof(sql));
	sodium_memzero(hex, sizeof(hex));
	for (size_t i = 0; page_size_pragmas && i < sizeof(cipher_4x_pragmas) /
		     sizeof(cipher_4x_pragmas[0]); i++)
		assert_int_equal(sqlite3_exec(db, cipher_4x_pragmas[i], NULL,
					      NULL, NULL), SQLITE_OK);
	return db;
}

static void test_newer_schema(void **state)
{
	char *path = make_db("a.db");
	sqlite3 *db = raw_open(path, true);
	eng_store *st = NULL;

	(void)state;
	assert_int_equal(sqlite3_exec(db, "INSERT INTO schema_version "
				      "(version, applied) VALUES (99, 0)", NULL,
				      NULL, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
	assert_int_equal(open_with(path, key, false, false, &st), ENG_ENEWER);
	assert_null(st);
	/* Refused, not touched: the row is still there, nothing migrated. */
	db = raw_open(path, true);
	{
		sqlite3_stmt *stmt;

		assert_int_equal(sqlite3_prepare_v2(db, "SELECT max(version), "
			"count(*) FROM schema_version", -1, &stmt, NULL), SQLITE_OK);
		assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
		assert_int_equal(sqlite3_column_int(stmt, 0), 99);
		/* One row per migration of a new file, and the 99. */
		assert_int_equal(sqlite3_column_int(stmt, 1),
				 ENG_SCHEMA_VERSION + 1);
		sqlite3_finalize(stmt);
	}
	sqlite3_close(db);
	free(path);
}

/* ---- the on-disk format ---- */

static void test_sqlcipher4_settings(void **state)
{
	char *path = make_db("a.db");
	sqlite3 *db;
	sqlite3_stmt *stmt;
	int rc, n = 0;
	bool inbox = false;

	(void)state;
	/* Whole pages of 4096, which is what cipher_page_size says. */
	assert_int_equal(file_size(path) % PAGE, 0);

	/* Exactly the pragma list docs/storage.md gives for SQLCipher 4.x. */
	db = raw_open(path, true);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT name, uidvalidity, "
		"messages FROM mailbox ORDER BY id", -1, &stmt, NULL), SQLITE_OK);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(stmt, 0);

		n++;
		if (strcmp(name, "INBOX") == 0) {
			inbox = true;
			assert_int_equal(sqlite3_column_int(stmt, 2), N_MSGS);
		}
		assert_true(sqlite3_column_int64(stmt, 1) > 0);
	}
	assert_int_equal(rc, SQLITE_DONE);
	sqlite3_finalize(stmt);
	assert_true(inbox);
	assert_true(n >= 6);
	assert_int_equal(sqlite3_exec(db, "PRAGMA quick_check", NULL, NULL,
				      NULL), SQLITE_OK);
	sqlite3_close(db);

	/*
	 * With SQLCipher 3's defaults (page size 1024) the same key does not
	 * open the file: the explicit settings are what the file depends on.
	 */
	db = raw_open(path, false);
	rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM mailbox", -1, &stmt,
				NULL);
	if (rc == SQLITE_OK) {
		rc = sqlite3_step(stmt);
		sqlite3_finalize(stmt);
	}
	print_message("SQLCipher 3 defaults: %s\n", sqlite3_errstr(rc));
	assert_int_equal(rc, SQLITE_NOTADB);
	sqlite3_close(db);
	/* The failed attempt did not damage the file. */
	assert_int_equal(probe(path), 0);
	free(path);
}

/* Does the file at path contain needle anywhere (what strings|grep sees)? */
static bool file_contains(const char *path, const char *needle)
{
	size_t len;
	uint8_t *data = tu_read_file(path, &len);
	bool found;

	assert_non_null(data);
	found = memmem(data, len, needle, strlen(needle)) != NULL;
	free(data);
	return found;
}

static bool strings_finds(const char *path, const char *needle)
{
	char *cmd;
	FILE *p;
	char line[4096];
	bool found = false;

	if (asprintf(&cmd, "strings -a -n 6 '%s' 2>/dev/null", path) < 0)
		abort();
	p = popen(cmd, "r");
	free(cmd);
	if (p == NULL)
		return false;
	while (fgets(line, sizeof(line), p) != NULL)
		found |= strstr(line, needle) != NULL;
	pclose(p);
	return found;
}

/*
 * The canary word appears in the header (stored uncompressed in its own
 * column) and in the FTS index, so a plain file shows it; the encrypted
 * file and its WAL must not. The plaintext run proves the check can fail.
 */
static void check_canary(bool plaintext)
{
	static const char canary[] = "Quixotically7Sealmail";
	char *path = path_in(dir, plaintext ? "plain.db" : "enc.db");
	char *wal, msg[512];
	eng_store *st;
	int len;
	bool in_db, in_wal;

	len = snprintf(msg, sizeof(msg), "From: x@example.org\r\nSubject: the "
		       "%s plan\r\n\r\nThe word is %s, said twice.\r\n",
		       canary, canary);
	assert_int_equal(open_with(path, key, true, plaintext, &st), 0);
	assert_int_equal(eng_append_message(st, tu_inbox_id(st), msg, (size_t)len,
					    NULL, NULL, NULL), 0);
	/* Still open: the message is in the WAL only. */
	if (asprintf(&wal, "%s-wal", path) < 0)
		abort();
	assert_true(file_size(wal) > 0);
	in_wal = file_contains(wal, canary) || strings_finds(wal, canary);
	eng_store_close(&st);
	/* Closed: checkpointed into the database file. */
	in_db = file_contains(path, canary) || strings_finds(path, canary);
	if (plaintext) {
		assert_true(in_wal);
		assert_true(in_db);
	} else {
		assert_false(in_wal);
		assert_false(in_db);
	}
	free(wal);
	free(path);
}

static void test_encrypted_on_disk(void **state)
{
	(void)state;
	check_canary(true);
	check_canary(false);
}

/* ---- malformed messages ---- */

static void test_malformed_messages(void **state)
{
	char *path = path_in(dir, "m.db");
	eng_store *st;
	int64_t inbox;
	struct { const char *what; uint8_t *data; size_t len; } cases[6];
	size_t n = 0;

	(void)state;
	cases[n].what = "NULs in header and body";
	cases[n].len = 64;
	cases[n].data = malloc(64);
	memcpy(cases[n].data, "Subject: a\0b\r\n\r\nbody\0\0\0with NULs\r\n", 35);
	memset(cases[n].data + 35, 0, 29);
	n++;
	cases[n].what = "no header at all";
	cases[n].data = (uint8_t *)strdup("just a body line, no colon\r\nmore\r\n");
	cases[n].len = strlen((char *)cases[n].data);
	n++;
	cases[n].what = "binary garbage";
	cases[n].len = 300 * 1024;
	cases[n].data = malloc(cases[n].len);
	randombytes_buf(cases[n].data, cases[n].len);
	n++;
	cases[n].what = "1 MB single line";
	cases[n].len = 1024 * 1024;
	cases[n].data = malloc(cases[n].len);
	memset(cases[n].data, 'x', cases[n].len);
	memcpy(cases[n].data, "Subject: ", 9);
	n++;
	cases[n].what = "one byte";
	cases[n].data = (uint8_t *)strdup("\n");
	cases[n].len = 1;
	n++;
	cases[n].what = "bare CRs and a header that never ends";
	cases[n].data = (uint8_t *)strdup("From: a\rTo: b\r\rX-Long: \x80\xff\xfe");
	cases[n].len = strlen((char *)cases[n].data);
	n++;

	assert_int_equal(open_with(path, key, true, false, &st), 0);
	inbox = tu_inbox_id(st);
	for (size_t i = 0; i < n; i++) {
		uint32_t uid = 0;
		int err;

		assert_non_null(cases[i].data);
		err = eng_append_message(st, inbox, cases[i].data, cases[i].len,
					 NULL, &uid, NULL);
		if (err != 0)
			fail_msg("%s: append: %s", cases[i].what, eng_strerror(err));
		assert_int_equal(uid, (uint32_t)i + 1);
	}
	/* Read back after a reopen, from the file rather than any cache. */
	eng_store_close(&st);
	assert_int_equal(open_with(path, key, false, false, &st), 0);
	for (size_t i = 0; i < n; i++) {
		uint8_t *data;
		size_t len;
		eng_message *m;
		const eng_mime_part *root;

		assert_int_equal(read_all(st, inbox, (uint32_t)i + 1, &data,
					  &len), 0);
		if (len != cases[i].len || memcmp(data, cases[i].data, len) != 0)
			fail_msg("%s: read back differs", cases[i].what);
		free(data);
		/* The stored structure decodes too. */
		assert_int_equal(eng_message_open(st, inbox, (uint32_t)i + 1, &m),
				 0);
		assert_int_equal(eng_message_mime(m, &root), 0);
		assert_true(root->body_end <= cases[i].len);
		eng_message_close(&m);
		free(cases[i].data);
	}
	assert_int_equal(eng_store_check(st, NULL), 0);
	eng_store_close(&st);
	free(path);
}

/* ---- full disk ---- */

static void test_disk_full(void **state)
{
	char *mnt = path_in(dir, "small"), *path, *copy, *wal, *copy_wal;
	eng_store *st;
	int64_t inbox;
	uint8_t *acked[64];
	size_t acked_len[64], n_acked = 0;
	int err = 0;

	(void)state;
	assert_int_equal(mkdir(mnt, 0700), 0);
	if (mount("tmpfs", mnt, "tmpfs", 0, "size=2m") != 0) {
		print_message("SKIP disk full: cannot mount a tmpfs (%s)\n",
			      strerror(errno));
		free(mnt);
		skip();
	}
	path = path_in(mnt, "full.db");
	assert_int_equal(open_with(path, key, true, false, &st), 0);
	inbox = tu_inbox_id(st);
	/* Incompressible 100 KB messages until the disk says no. */
	while (n_acked < 64) {
		uint8_t *m = malloc(100 * 1024);
		int hl = snprintf((char *)m, 160, "Subject: fill %zu\r\n"
				  "Content-Type: application/octet-stream\r\n"
				  "Content-Transfer-Encoding: binary\r\n\r\n",
				  n_acked);

		randombytes_buf(m + hl, 100 * 1024 - (size_t)hl);
		err = eng_append_message(st, inbox, m, 100 * 1024, NULL, NULL,
					 NULL);
		if (err != 0) {
			free(m);
			break;
		}
		acked[n_acked] = m;
		acked_len[n_acked++] = 100 * 1024;
	}
	print_message("disk full after %zu acknowledged appends: %s\n",
		      n_acked, eng_strerror(err));
	assert_int_equal(err, ENG_ENOSPC);
	assert_true(n_acked >= 3);
	assert_true(eng_store_needs_reopen(st));
	eng_store_close(&st);

	/* Reopen a copy on a disk with room: database + WAL, as left. */
	copy = path_in(dir, "copy.db");
	if (asprintf(&wal, "%s-wal", path) < 0 ||
	    asprintf(&copy_wal, "%s-wal", copy) < 0)
		abort();
	copy_file(path, copy, -1);
	if (file_size(wal) > 0)
		copy_file(wal, copy_wal, -1);
	assert_int_equal(umount2(mnt, MNT_DETACH), 0);
	assert_int_equal(open_with(copy, key, false, false, &st), 0);
	inbox = tu_inbox_id(st);
	{
		eng_mailbox mb;

		assert_int_equal(eng_mailbox_get(st, "INBOX", &mb), 0);
		/* Every acknowledged one, and not the one that failed. */
		assert_int_equal(mb.messages, n_acked);
		assert_int_equal(mb.uidnext, n_acked + 1);
		eng_mailbox_clear(&mb);
	}
	for (size_t i = 0; i < n_acked; i++) {
		uint8_t *data;
		size_t len;

		assert_int_equal(read_all(st, inbox, (uint32_t)i + 1, &data,
					  &len), 0);
		assert_int_equal(len, acked_len[i]);
		assert_memory_equal(data, acked[i], len);
		free(data);
		free(acked[i]);
	}
	assert_int_equal(eng_store_check(st, NULL), 0);
	/* And it takes new mail again. */
	assert_int_equal(eng_append_message(st, inbox, "Subject: after\r\n\r\nok\r\n",
					    22, NULL, NULL, NULL), 0);
	eng_store_close(&st);
	free(copy);
	free(wal);
	free(copy_wal);
	free(path);
	free(mnt);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_wrong_key, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_missing_file, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_truncated, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_flipped_bytes, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_every_page_flipped, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_every_page_zeroed, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_newer_schema, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_sqlcipher4_settings, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_encrypted_on_disk, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_malformed_messages, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_disk_full, setup_dir, teardown_dir),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
