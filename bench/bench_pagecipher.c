/*
 * bench-pagecipher: SQLCipher's per-page cost with the built-in OpenSSL
 * provider and with engine/cipher_provider.c, alternated in one process.
 *
 *   bench-pagecipher [pages] [rounds]
 *
 * 1. Provider calls as SQLCipher makes them for one 4 KiB page (4048 bytes
 *    of data, 48 reserve): a write is random(48) + encrypt + HMAC, a read
 *    is HMAC + decrypt. ns per page, thread CPU time.
 * 2. Through SQLite: a WAL file of random blobs written (commit + checkpoint)
 *    and read back by a fresh connection (every page through the codec
 *    once). CPU µs per 4 KiB page.
 * Prints medians of the rounds; no assertions.
 */
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

#include "cipher_provider.h"
#include "keys.h"

enum { SZ = 4096 - 48, RESERVE = 48 };

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), bench_cmp_double);
	return v[n / 2];
}

/* ns per page for writes (random + encrypt + hmac) and reads. */
static void provider_round(const eng_sqlcipher_provider *p, int pages,
			   double *write_ns, double *read_ns)
{
	static unsigned char in[4096], out[4096], back[4096];
	unsigned char key[32], hkey[32], pgno[4] = { 7, 0, 0, 0 };
	void *ctx = NULL;
	double t0;

	randombytes_buf(key, sizeof(key));
	randombytes_buf(hkey, sizeof(hkey));
	randombytes_buf(in, sizeof(in));
	if (p->ctx_init(&ctx) != SQLITE_OK ||
	    p->set_cipher(ctx, "aes-256-cbc") != SQLITE_OK) {
		fprintf(stderr, "provider context failed\n");
		exit(1);
	}
	t0 = bench_thread_cpu();
	for (int i = 0; i < pages; i++) {
		p->random(ctx, out + SZ, RESERVE);
		p->cipher(ctx, 1, key, 32, out + SZ, in, SZ, out);
		p->hmac(ctx, hkey, 32, out, SZ + 16, pgno, 4, out + SZ + 16);
	}
	*write_ns = (bench_thread_cpu() - t0) / pages * 1e9;
	t0 = bench_thread_cpu();
	for (int i = 0; i < pages; i++) {
		unsigned char mac[20];

		p->hmac(ctx, hkey, 32, out, SZ + 16, pgno, 4, mac);
		p->cipher(ctx, 0, key, 32, out + SZ, out, SZ, back);
	}
	*read_ns = (bench_thread_cpu() - t0) / pages * 1e9;
	if (memcmp(in, back, SZ) != 0) {
		fprintf(stderr, "round trip differs\n");
		exit(1);
	}
	p->ctx_free(&ctx);
	sodium_memzero(key, sizeof(key));
	sodium_memzero(hkey, sizeof(hkey));
}

static sqlite3 *open_keyed(const char *path, const unsigned char *key)
{
	char hex[65], sql[128];
	sqlite3 *db = NULL;

	if (sqlite3_open(path, &db) != SQLITE_OK)
		exit(1);
	sodium_bin2hex(hex, sizeof(hex), key, 32);
	snprintf(sql, sizeof(sql), "PRAGMA key = \"x'%s'\"", hex);
	if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(db, "PRAGMA cipher_page_size = 4096;"
			 "PRAGMA journal_mode = WAL", NULL, NULL, NULL) !=
		    SQLITE_OK)
		exit(1);
	sodium_memzero(sql, sizeof(sql));
	return db;
}

/* CPU µs per page written (WAL + checkpoint) and read (full scan). */
static void sqlite_round(const char *dir, int pages, double *write_us,
			 double *read_us)
{
	char path[512];
	unsigned char key[32], blob[3000];
	sqlite3 *db;
	sqlite3_stmt *st;
	double t0;
	long long npages = 0;
	int rows = pages * 4 / 3;

	snprintf(path, sizeof(path), "%s/pc.db", dir);
	unlink(path);
	randombytes_buf(key, sizeof(key));
	randombytes_buf(blob, sizeof(blob));
	db = open_keyed(path, key);
	sqlite3_exec(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)",
		     NULL, NULL, NULL);
	sqlite3_prepare_v2(db, "INSERT INTO t (b) VALUES (?)", -1, &st, NULL);
	t0 = bench_thread_cpu();
	for (int i = 0; i < rows; i += 100) {
		sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
		for (int j = 0; j < 100; j++) {
			sqlite3_bind_blob(st, 1, blob, sizeof(blob),
					  SQLITE_STATIC);
			sqlite3_step(st);
			sqlite3_reset(st);
		}
		sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	}
	sqlite3_finalize(st);
	sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
	*write_us = bench_thread_cpu() - t0;
	sqlite3_close(db);

	db = open_keyed(path, key);
	sqlite3_prepare_v2(db, "PRAGMA page_count", -1, &st, NULL);
	if (sqlite3_step(st) == SQLITE_ROW)
		npages = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	t0 = bench_thread_cpu();
	sqlite3_prepare_v2(db, "SELECT sum(length(b)) FROM t", -1, &st, NULL);
	sqlite3_step(st);
	sqlite3_finalize(st);
	*read_us = (bench_thread_cpu() - t0) / (double)npages * 1e6;
	*write_us = *write_us / (double)npages * 1e6;
	sqlite3_close(db);
	unlink(path);
	sodium_memzero(key, sizeof(key));
}

int main(int argc, char **argv)
{
	int pages = argc > 1 ? atoi(argv[1]) : 20000;
	int rounds = argc > 2 ? atoi(argv[2]) : 5;
	double v[4][2][64];
	char dir[] = "/tmp/bench-pagecipher-XXXXXX";

	if (pages < 100 || rounds < 1 || rounds > 64 ||
	    eng_crypto_init() != 0 || mkdtemp(dir) == NULL)
		return 2;
	if (eng_cipher_provider_install() != 0) {
		fprintf(stderr, "provider not installed\n");
		return 1;
	}
	for (int r = 0; r < rounds; r++) {
		for (int fast = 0; fast < 2; fast++) {
			const eng_sqlcipher_provider *p =
				fast ? eng_cipher_provider_fast() :
				       eng_cipher_provider_builtin();

			provider_round(p, pages, &v[0][fast][r],
				       &v[1][fast][r]);
			eng_cipher_provider_use_builtin(!fast);
			sqlite_round(dir, pages / 4, &v[2][fast][r],
				     &v[3][fast][r]);
		}
	}
	rmdir(dir);
	printf("median of %d rounds, %d pages (provider calls), %d (SQLite)\n",
	       rounds, pages, pages / 4);
	printf("%-34s %10s %10s\n", "", "built-in", "cached");
	printf("%-34s %10.0f %10.0f\n", "provider write ns/page",
	       median(v[0][0], rounds), median(v[0][1], rounds));
	printf("%-34s %10.0f %10.0f\n", "provider read ns/page",
	       median(v[1][0], rounds), median(v[1][1], rounds));
	printf("%-34s %10.2f %10.2f\n", "SQLite write CPU us/page",
	       median(v[2][0], rounds), median(v[2][1], rounds));
	printf("%-34s %10.2f %10.2f\n", "SQLite read CPU us/page",
	       median(v[3][0], rounds), median(v[3][1], rounds));
	return 0;
}
