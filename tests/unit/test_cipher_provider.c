/*
 * The SQLCipher page-cipher provider (engine/cipher_provider.c): same
 * cipher text and HMAC as SQLCipher's built-in OpenSSL provider, files
 * that either provider reads from the other, tampering still detected,
 * idempotent install.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sodium.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cipher_provider.h"
#include "eng_error.h"
#include "keys.h"
#include "store.h"
#include "testutil.h"

eng_sqlcipher_provider *sqlcipher_get_provider(void);

#define ENCRYPT 1
#define DECRYPT 0
#define MAXPAGE (65536)

static const eng_sqlcipher_provider *B, *F;

static int group_setup(void **state)
{
	(void)state;
	assert_int_equal(eng_crypto_init(), 0);
	assert_int_equal(eng_cipher_provider_install(), 0);
	B = eng_cipher_provider_builtin();
	F = eng_cipher_provider_fast();
	assert_non_null(B);
	assert_non_null(F);
	return 0;
}

/* A context of each provider with the named cipher set. */
static void ctx_pair(const char *cipher, void **b, void **f)
{
	*b = NULL;
	*f = NULL;
	assert_int_equal(B->ctx_init(b), SQLITE_OK);
	assert_int_equal(F->ctx_init(f), SQLITE_OK);
	assert_int_equal(B->set_cipher(*b, cipher), SQLITE_OK);
	assert_int_equal(F->set_cipher(*f, cipher), SQLITE_OK);
}

static void ctx_pair_free(void **b, void **f)
{
	B->ctx_free(b);
	F->ctx_free(f);
}

/* One page in both directions and its HMAC, through both providers. */
static void same_page(void *b, void *f, const unsigned char *key, int key_sz,
		      const unsigned char *hkey, int hkey_sz, int size)
{
	static unsigned char in[MAXPAGE], o1[MAXPAGE], o2[MAXPAGE];
	unsigned char iv[16], pgno[4], h1[20], h2[20];

	randombytes_buf(in, (size_t)size);
	randombytes_buf(iv, sizeof(iv));
	randombytes_buf(pgno, sizeof(pgno));
	for (int mode = DECRYPT; mode <= ENCRYPT; mode++) {
		memset(o1, 0, (size_t)size);
		memset(o2, 0xee, (size_t)size);
		assert_int_equal(B->cipher(b, mode, (unsigned char *)key, key_sz,
					   iv, in, size, o1), SQLITE_OK);
		assert_int_equal(F->cipher(f, mode, (unsigned char *)key, key_sz,
					   iv, in, size, o2), SQLITE_OK);
		assert_memory_equal(o1, o2, (size_t)size);
	}
	/* Decrypting the fast cipher text gives the page back. */
	assert_int_equal(F->cipher(f, ENCRYPT, (unsigned char *)key, key_sz, iv,
				   in, size, o1), SQLITE_OK);
	assert_int_equal(F->cipher(f, DECRYPT, (unsigned char *)key, key_sz, iv,
				   o1, size, o2), SQLITE_OK);
	assert_memory_equal(in, o2, (size_t)size);

	memset(h2, 0, sizeof(h2));
	assert_int_equal(B->hmac(b, (unsigned char *)hkey, hkey_sz, in, size,
				 pgno, 4, h1), SQLITE_OK);
	assert_int_equal(F->hmac(f, (unsigned char *)hkey, hkey_sz, in, size,
				 pgno, 4, h2), SQLITE_OK);
	assert_memory_equal(h1, h2, sizeof(h1));
	/* One flipped bit anywhere changes it. */
	in[randombytes_uniform((uint32_t)size)] ^= 1;
	assert_int_equal(F->hmac(f, (unsigned char *)hkey, hkey_sz, in, size,
				 pgno, 4, h2), SQLITE_OK);
	assert_memory_not_equal(h1, h2, sizeof(h1));
}

/* (a) Random keys, IVs and pages of the sizes SQLCipher uses (page size
 * minus the 48-byte reserve), keys switching on one context. */
static void test_differential(void **state)
{
	static const int sizes[] = { 16, 1024 - 48, 4096 - 48, 8192 - 48,
				     MAXPAGE - 48 };
	unsigned char keys[3][2][32];
	uint64_t fast0, builtin0, fast1, builtin1;
	void *b, *f;

	(void)state;
	randombytes_buf(keys, sizeof(keys));
	ctx_pair("aes-256-cbc", &b, &f);
	eng_cipher_provider_thread_pages(&fast0, &builtin0);
	for (int round = 0; round < 40; round++) {
		int k = (int)randombytes_uniform(3);
		int size = sizes[randombytes_uniform(sizeof(sizes) /
						     sizeof(sizes[0]))];

		same_page(b, f, keys[k][0], 32, keys[k][1], 32, size);
	}
	/* HMAC keys of other lengths (SQLCipher allows up to 64). */
	same_page(b, f, keys[0][0], 32, (unsigned char *)keys, 64, 4048);
	same_page(b, f, keys[0][0], 32, keys[2][1], 7, 4048);
	eng_cipher_provider_thread_pages(&fast1, &builtin1);
	assert_true(fast1 - fast0 >= 40 * 3);
	assert_int_equal(builtin1, builtin0);
	assert_string_equal(F->get_cipher(f), B->get_cipher(b));
	assert_int_equal(F->get_key_sz(f), 32);
	assert_int_equal(F->get_iv_sz(f), 16);
	assert_int_equal(F->get_hmac_sz(f), 20);
	ctx_pair_free(&b, &f);
	sodium_memzero(keys, sizeof(keys));
}

/* (a') The fast cipher runs each direction as one CBC stream and puts
 * each page's IV in by hand: pages in a row with their own IVs, the two
 * directions interleaved, in place (out == in) and out of place, with the
 * IV in the output's reserve bytes as SQLCipher lays a page out, all
 * equal to the built-in provider's; a key change restarts the stream. */
static void test_stream_pages(void **state)
{
	enum { SZ = 4096 - 48 };
	static unsigned char in[SZ + 16], o1[SZ + 16], o2[SZ + 16];
	unsigned char keys[2][32];
	void *b, *f;

	(void)state;
	randombytes_buf(keys, sizeof(keys));
	ctx_pair("aes-256-cbc", &b, &f);
	for (int page = 0; page < 200; page++) {
		int mode = (int)randombytes_uniform(2);
		unsigned char *key = keys[page / 50 % 2];
		bool in_place = randombytes_uniform(2) == 0;

		randombytes_buf(in, sizeof(in));
		memcpy(o1 + SZ, in + SZ, 16);   /* the IV, as SQLCipher copies it */
		memcpy(o2 + SZ, in + SZ, 16);
		assert_int_equal(B->cipher(b, mode, key, 32, o1 + SZ, in, SZ,
					   o1), SQLITE_OK);
		if (in_place) {
			memcpy(o2, in, SZ);
			assert_int_equal(F->cipher(f, mode, key, 32, o2 + SZ,
						   o2, SZ, o2), SQLITE_OK);
		} else {
			assert_int_equal(F->cipher(f, mode, key, 32, o2 + SZ,
						   in, SZ, o2), SQLITE_OK);
		}
		assert_memory_equal(o1, o2, sizeof(o1));
		/* And back: the other direction gives the page again. */
		assert_int_equal(F->cipher(f, !mode, key, 32, in + SZ, o2, SZ,
					   o2), SQLITE_OK);
		assert_memory_equal(o2, in, SZ);
	}
	ctx_pair_free(&b, &f);
	sodium_memzero(keys, sizeof(keys));
}

/* Another cipher goes to the built-in function and still matches. */
static void test_other_cipher_falls_back(void **state)
{
	unsigned char key[32], hkey[32];
	uint64_t fast0, builtin0, fast1, builtin1;
	void *b, *f;

	(void)state;
	randombytes_buf(key, sizeof(key));
	randombytes_buf(hkey, sizeof(hkey));
	ctx_pair("aes-128-cbc", &b, &f);
	assert_int_equal(F->get_key_sz(f), 16);
	eng_cipher_provider_thread_pages(&fast0, &builtin0);
	same_page(b, f, key, 16, hkey, 16, 4048);
	eng_cipher_provider_thread_pages(&fast1, &builtin1);
	assert_int_equal(fast1, fast0);
	assert_int_equal(builtin1 - builtin0, 4);
	/* ctx_copy carries the cipher choice; ctx_cmp sees it. */
	{
		void *g = NULL;

		assert_int_equal(F->ctx_init(&g), SQLITE_OK);
		assert_int_equal(F->set_cipher(g, "aes-256-cbc"), SQLITE_OK);
		assert_int_equal(F->ctx_cmp(f, g), 0);
		assert_int_equal(F->ctx_copy(g, f), SQLITE_OK);
		assert_int_equal(F->ctx_cmp(f, g), 1);
		assert_int_equal(F->get_key_sz(g), 16);
		F->ctx_free(&g);
	}
	ctx_pair_free(&b, &f);
}

/* Reserve bytes: never repeated, not across contexts, not after a copy. */
static void test_random(void **state)
{
	enum { N = 200, R = 48 };
	static unsigned char out[2 * N][R];
	unsigned char zero[R] = { 0 };
	void *f = NULL, *g = NULL;

	(void)state;
	assert_int_equal(F->ctx_init(&f), SQLITE_OK);
	assert_int_equal(F->ctx_init(&g), SQLITE_OK);
	assert_int_equal(F->set_cipher(f, "aes-256-cbc"), SQLITE_OK);
	assert_int_equal(F->ctx_copy(g, f), SQLITE_OK);
	for (int i = 0; i < N; i++) {
		assert_int_equal(F->random(f, out[2 * i], R), SQLITE_OK);
		assert_int_equal(F->random(g, out[2 * i + 1], R), SQLITE_OK);
	}
	for (int i = 0; i < 2 * N; i++) {
		assert_memory_not_equal(out[i], zero, R);
		for (int j = i + 1; j < 2 * N; j++)
			assert_memory_not_equal(out[i], out[j], R);
	}
	/* Requests longer than the pool and of zero bytes. */
	{
		static unsigned char big[5000];

		assert_int_equal(F->random(f, big, sizeof(big)), SQLITE_OK);
		assert_memory_not_equal(big, big + 2500, 2500);
		assert_int_equal(F->random(f, big, 0), SQLITE_OK);
		assert_int_equal(F->random(f, big, -1), SQLITE_ERROR);
	}
	F->ctx_free(&f);
	F->ctx_free(&g);
	assert_null(f);
}

/* After fork the child's contexts reseed: parent and child never hand out
 * the same reserve bytes from a context they both inherited. */
static void test_random_after_fork(void **state)
{
	unsigned char mine[48], theirs[48];
	void *f = NULL;
	int fds[2], status;
	pid_t pid;

	(void)state;
	assert_int_equal(F->ctx_init(&f), SQLITE_OK);
	assert_int_equal(F->random(f, mine, sizeof(mine)), SQLITE_OK);
	assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		unsigned char out[48];
		int ok = F->random(f, out, sizeof(out)) == SQLITE_OK &&
			 write(fds[1], out, sizeof(out)) == (ssize_t)sizeof(out);

		_exit(ok ? 0 : 1);
	}
	close(fds[1]);
	assert_int_equal(read(fds[0], theirs, sizeof(theirs)),
			 (ssize_t)sizeof(theirs));
	close(fds[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_int_equal(F->random(f, mine, sizeof(mine)), SQLITE_OK);
	assert_memory_not_equal(mine, theirs, sizeof(mine));
	F->ctx_free(&f);
}

/* ---- whole files ---- */

struct rawdb {
	char *dir;
	char *path;
	unsigned char key[32];
};

static sqlite3 *raw_open(const struct rawdb *r)
{
	sqlite3 *db = NULL;
	char hex[65], sql[128];

	assert_int_equal(sqlite3_open(r->path, &db), SQLITE_OK);
	sodium_bin2hex(hex, sizeof(hex), r->key, sizeof(r->key));
	snprintf(sql, sizeof(sql), "PRAGMA key = \"x'%s'\"", hex);
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sodium_memzero(sql, sizeof(sql));
	sodium_memzero(hex, sizeof(hex));
	assert_int_equal(sqlite3_exec(db, "PRAGMA cipher_page_size = 4096",
				      NULL, NULL, NULL), SQLITE_OK);
	return db;
}

/* Rows of random blobs (several pages each); the same seed gives the same
 * rows, so a reader can check them without a copy. */
static void raw_write(const struct rawdb *r, int first, int n)
{
	sqlite3 *db = raw_open(r);
	sqlite3_stmt *st;
	unsigned char blob[9000], seed[randombytes_SEEDBYTES] = { 0 };

	assert_int_equal(sqlite3_exec(db, "PRAGMA journal_mode = WAL;"
		"CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, b BLOB)",
		NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO t VALUES (?, ?)",
					    -1, &st, NULL), SQLITE_OK);
	for (int i = first; i < first + n; i++) {
		memcpy(seed, &i, sizeof(i));
		randombytes_buf_deterministic(blob, sizeof(blob), seed);
		sqlite3_bind_int(st, 1, i);
		sqlite3_bind_blob(st, 2, blob, sizeof(blob), SQLITE_STATIC);
		assert_int_equal(sqlite3_step(st), SQLITE_DONE);
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/*
 * SQLITE_OK with every row as written; else the error code the reading
 * ended with, or SQLITE_MISMATCH for a wrong row with no error at all.
 * (SQLCipher 3.4.1 hands out a page that fails its HMAC zeroed and puts
 * the connection in error: the row in hand may come back with zeros, the
 * next step fails.)
 */
static int raw_check(const struct rawdb *r, int n)
{
	sqlite3 *db = raw_open(r);
	sqlite3_stmt *st = NULL;
	unsigned char blob[9000], seed[randombytes_SEEDBYTES] = { 0 };
	int rc, rows = 0;
	bool wrong = false;

	rc = sqlite3_prepare_v2(db, "SELECT id, b FROM t ORDER BY id", -1, &st,
				NULL);
	while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		int id = sqlite3_column_int(st, 0);

		memcpy(seed, &id, sizeof(id));
		randombytes_buf_deterministic(blob, sizeof(blob), seed);
		wrong = wrong ||
			sqlite3_column_bytes(st, 1) != (int)sizeof(blob) ||
			memcmp(sqlite3_column_blob(st, 1), blob,
			       sizeof(blob)) != 0;
		rows++;
		rc = SQLITE_OK;
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	if (rc != SQLITE_DONE)
		return rc;
	return wrong || rows != n ? SQLITE_MISMATCH : SQLITE_OK;
}

static struct rawdb *rawdb_new(void)
{
	struct rawdb *r = calloc(1, sizeof(*r));

	r->dir = tu_tmpdir();
	assert_true(asprintf(&r->path, "%s/raw.db", r->dir) > 0);
	randombytes_buf(r->key, sizeof(r->key));
	return r;
}

static void rawdb_free(struct rawdb *r)
{
	tu_rmrf(r->dir);
	free(r->dir);
	free(r->path);
	sodium_memzero(r->key, sizeof(r->key));
	free(r);
}

/* (b) raw SQLCipher files: built-in writes, fast reads and appends,
 * built-in reads it all; and the fast path really ran. */
static void test_files_cross_read(void **state)
{
	struct rawdb *r = rawdb_new();
	uint64_t fast0, builtin0, fast1, builtin1;

	(void)state;
	eng_cipher_provider_use_builtin(true);
	assert_false(eng_cipher_provider_active());
	assert_int_equal(eng_cipher_provider_install(), ENG_EPERM);
	eng_cipher_provider_thread_pages(&fast0, &builtin0);
	raw_write(r, 0, 20);
	eng_cipher_provider_thread_pages(&fast1, &builtin1);
	assert_int_equal(fast1, fast0);
	assert_int_equal(builtin1, builtin0);

	eng_cipher_provider_use_builtin(false);
	assert_true(eng_cipher_provider_active());
	assert_int_equal(raw_check(r, 20), SQLITE_OK);
	raw_write(r, 20, 20);
	assert_int_equal(raw_check(r, 40), SQLITE_OK);
	eng_cipher_provider_thread_pages(&fast1, &builtin1);
	assert_true(fast1 - fast0 > 40 * 3);
	assert_int_equal(builtin1, builtin0);

	eng_cipher_provider_use_builtin(true);
	assert_int_equal(raw_check(r, 40), SQLITE_OK);
	eng_cipher_provider_use_builtin(false);
	rawdb_free(r);
}

/* Connections on several threads at once, one file each: every thread's
 * pages go through its own contexts and read back right. (An assert that
 * fails inside a thread takes the whole binary down: still a failure.) */
static void *thread_main(void *arg)
{
	struct rawdb *r = arg;
	uint64_t fast0, builtin0, fast1, builtin1;
	intptr_t ok;

	eng_cipher_provider_thread_pages(&fast0, &builtin0);
	for (int i = 0; i < 4; i++)
		raw_write(r, i * 5, 5);
	ok = raw_check(r, 20) == SQLITE_OK;
	eng_cipher_provider_thread_pages(&fast1, &builtin1);
	return (void *)(intptr_t)(ok && fast1 - fast0 > 20 * 3 &&
				  builtin1 == builtin0);
}

static void test_threads(void **state)
{
	enum { N = 4 };
	pthread_t t[N];
	struct rawdb *r[N];

	(void)state;
	for (int i = 0; i < N; i++) {
		r[i] = rawdb_new();
		assert_int_equal(pthread_create(&t[i], NULL, thread_main, r[i]),
				 0);
	}
	for (int i = 0; i < N; i++) {
		void *ok = NULL;

		assert_int_equal(pthread_join(t[i], &ok), 0);
		assert_true(ok != NULL);
		rawdb_free(r[i]);
	}
}

/* Flips one byte of the file at off. */
static void flip(const char *path, long off)
{
	FILE *fp = fopen(path, "r+b");
	int c;

	assert_non_null(fp);
	assert_int_equal(fseek(fp, off, SEEK_SET), 0);
	c = fgetc(fp);
	assert_true(c != EOF);
	assert_int_equal(fseek(fp, off, SEEK_SET), 0);
	fputc(c ^ 0x20, fp);
	assert_int_equal(fclose(fp), 0);
}

/* (c) A flipped byte in a page's data, IV or HMAC fails the read under the
 * fast provider, whichever provider wrote the file. */
static void test_tamper_detected(void **state)
{
	static const long offsets[] = { 3 * 4096 + 100, 3 * 4096 + 4048 + 3,
					3 * 4096 + 4064 + 5 };

	(void)state;
	for (int writer = 0; writer < 2; writer++) {
		for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]);
		     i++) {
			struct rawdb *r = rawdb_new();
			sqlite3 *db;
			int rc;

			eng_cipher_provider_use_builtin(writer == 0);
			raw_write(r, 0, 10);
			/* Move the WAL into the file. */
			db = raw_open(r);
			assert_int_equal(sqlite3_exec(db,
				"PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL,
				NULL), SQLITE_OK);
			sqlite3_close(db);
			eng_cipher_provider_use_builtin(false);
			assert_int_equal(raw_check(r, 10), SQLITE_OK);
			flip(r->path, offsets[i]);
			rc = raw_check(r, 10);
			/* an error, not a wrong answer */
			assert_int_not_equal(rc, SQLITE_OK);
			assert_int_not_equal(rc, SQLITE_MISMATCH);
			rawdb_free(r);
		}
	}
}

/* (b) through the engine: a store created under one provider is opened,
 * read and appended to under the other, both ways. */
static void append_read(eng_store *st, int64_t inbox, const char *body,
			uint32_t *uid_r)
{
	eng_append_opts o = { 0 };
	uint64_t modseq;

	assert_int_equal(eng_append_message(st, inbox, body, strlen(body), &o,
					    uid_r, &modseq), 0);
}

static void check_read(eng_store *st, int64_t inbox, uint32_t uid,
		       const char *body)
{
	eng_message *m = NULL;
	size_t len = strlen(body);
	char *buf = malloc(len + 1);

	assert_int_equal(eng_message_open(st, inbox, uid, &m), 0);
	assert_int_equal(eng_message_size(m), len);
	assert_int_equal(eng_message_read(m, 0, buf, len + 1), (long)len);
	assert_memory_equal(buf, body, len);
	eng_message_close(&m);
	free(buf);
}

static char *make_body(int n)
{
	size_t len = 40000;
	char *b = malloc(len + 1);
	unsigned char raw[3];
	size_t at = (size_t)snprintf(b, len, "From: a@example.org\r\n"
				     "Subject: page cipher %d\r\n\r\n", n);

	/* base64-looking random text: many pages even after zstd */
	while (at + 80 < len) {
		for (int i = 0; i < 76; i += 4) {
			randombytes_buf(raw, sizeof(raw));
			sodium_bin2base64(b + at + (size_t)i, 5, raw, 3,
					  sodium_base64_VARIANT_ORIGINAL);
		}
		memcpy(b + at + 76, "\r\n", 2);
		at += 78;
	}
	b[at] = '\0';
	return b;
}

static void test_store_cross_open(void **state)
{
	char *dir = tu_tmpdir(), *path;
	uint8_t key[ENG_DBKEY_BYTES];
	eng_store_options opt;
	eng_store *st = NULL;
	eng_mailbox mb;
	char *body[3];
	uint32_t uid[3];

	(void)state;
	assert_true(asprintf(&path, "%s/alias.db", dir) > 0);
	randombytes_buf(key, sizeof(key));
	for (int i = 0; i < 3; i++)
		body[i] = make_body(i);
	eng_store_options_default(&opt);
	opt.create = true;

	for (int step = 0; step < 3; step++) {
		/* built-in creates, fast opens, built-in opens again */
		eng_cipher_provider_use_builtin(step != 1);
		assert_int_equal(eng_store_open(path, key, &opt, &st), 0);
		assert_int_equal(eng_mailbox_get(st, "INBOX", &mb), 0);
		for (int j = 0; j < step; j++)
			check_read(st, mb.id, uid[j], body[j]);
		append_read(st, mb.id, body[step], &uid[step]);
		check_read(st, mb.id, uid[step], body[step]);
		assert_int_equal(eng_store_checkpoint(st), 0);
		eng_mailbox_clear(&mb);
		eng_store_close(&st);
	}
	eng_cipher_provider_use_builtin(false);
	assert_int_equal(eng_store_open(path, key, &opt, &st), 0);
	assert_int_equal(eng_mailbox_get(st, "INBOX", &mb), 0);
	for (int j = 0; j < 3; j++)
		check_read(st, mb.id, uid[j], body[j]);
	eng_mailbox_clear(&mb);
	eng_store_close(&st);
	/* A wrong key is still a wrong key. */
	key[0] ^= 1;
	assert_int_equal(eng_store_open(path, key, &opt, &st), ENG_EAUTH);
	for (int i = 0; i < 3; i++)
		free(body[i]);
	tu_rmrf(dir);
	free(dir);
	free(path);
	sodium_memzero(key, sizeof(key));
}

/* (d) install is idempotent: the registered table stays the same one. */
static void test_install_idempotent(void **state)
{
	eng_sqlcipher_provider *p;

	(void)state;
	assert_int_equal(eng_cipher_provider_install(), 0);
	p = sqlcipher_get_provider();
	assert_non_null(p);
	assert_ptr_equal(p->hmac, F->hmac);
	assert_ptr_equal(p->cipher, F->cipher);
	assert_ptr_not_equal(p->cipher, B->cipher);
	for (int i = 0; i < 3; i++)
		assert_int_equal(eng_cipher_provider_install(), 0);
	assert_ptr_equal(sqlcipher_get_provider(), p);
	assert_true(eng_cipher_provider_active());
	/* Built-in and back: a new table each time, the right functions. */
	eng_cipher_provider_use_builtin(true);
	assert_ptr_equal(sqlcipher_get_provider()->cipher, B->cipher);
	eng_cipher_provider_use_builtin(false);
	assert_ptr_equal(sqlcipher_get_provider()->cipher, F->cipher);
	/* The fast table keeps the built-in key derivation's answers. */
	{
		unsigned char k1[32], k2[32], salt[16] = { 1, 2, 3 };
		void *b = NULL, *f = NULL;

		ctx_pair("aes-256-cbc", &b, &f);
		assert_int_equal(B->kdf(b, (const unsigned char *)"pw", 2, salt,
					16, 2, 32, k1), SQLITE_OK);
		assert_int_equal(F->kdf(f, (const unsigned char *)"pw", 2, salt,
					16, 2, 32, k2), SQLITE_OK);
		assert_memory_equal(k1, k2, sizeof(k1));
		ctx_pair_free(&b, &f);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_differential),
		cmocka_unit_test(test_stream_pages),
		cmocka_unit_test(test_other_cipher_falls_back),
		cmocka_unit_test(test_random),
		cmocka_unit_test(test_random_after_fork),
		cmocka_unit_test(test_files_cross_read),
		cmocka_unit_test(test_threads),
		cmocka_unit_test(test_tamper_detected),
		cmocka_unit_test(test_store_cross_open),
		cmocka_unit_test(test_install_idempotent),
	};

	return cmocka_run_group_tests(tests, group_setup, NULL);
}
