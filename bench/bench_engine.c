/*
 * bench-engine [N=10000] [DIR]: what the mailbox store costs, and what
 * encryption adds to it.
 *
 * Generates N realistic messages from a fixed seed (so every run stores
 * the same bytes): 2 KB to 200 KB, most of them small; headers with
 * varied From/To/Cc/Subject/Date/Message-ID and References to earlier
 * messages; the larger ones multipart/mixed with a text/plain body of
 * random words and a base64 attachment. It appends them one by one (one
 * transaction and one fsync each, as IMAP APPEND and delivery do) to a
 * store in DIR (default: a new directory under /tmp, removed at the end),
 * then measures reading them back and searching, first encrypted
 * (SQLCipher) and then plain (opt.plaintext), and prints both with the
 * ratio encrypted/plain. Only the store calls are timed, not generating
 * the messages. The page cache is warm for the reads: this measures the
 * engine, not the disk.
 */
#include <ftw.h>
#include <inttypes.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "eng_error.h"
#include "keys.h"
#include "search.h"
#include "store.h"
#include "msggen.h"

#define SEED 0x5ea1u
#define SEARCH_REPEAT 10

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct result {
	double append_s, append_mb;
	double headers_s;
	double bodies_s, bodies_mb;
	double hsearch_ms, bsearch_ms, hsearch_old_ms;
	size_t hsearch_hits, bsearch_hits, hsearch_old_hits;
	double db_mb;
};

struct uid_list {
	uint32_t *v;
	size_t n;
};

static int collect(void *ctx, const eng_msg *msg)
{
	struct uid_list *l = ctx;

	l->v = realloc(l->v, (l->n + 1) * sizeof(uint32_t));
	if (l->v == NULL)
		abort();
	l->v[l->n++] = msg->uid;
	return 0;
}

static void check(int err, const char *what)
{
	if (err != 0) {
		fprintf(stderr, "bench-engine: %s: %s\n", what, eng_strerror(err));
		exit(1);
	}
}

static double search_ms(eng_store *st, int64_t mbox, eng_query *q,
			size_t *hits_r)
{
	double t0 = now_s();

	for (int r = 0; r < SEARCH_REPEAT; r++) {
		uint32_t *uids = NULL;
		size_t n = 0;

		check(eng_search(st, mbox, q, NULL, 0, NULL, 0, &uids, &n, NULL),
		      "search");
		free(uids);
		*hits_r = n;
	}
	return (now_s() - t0) * 1000.0 / SEARCH_REPEAT;
}

static void run(const char *path, bool plaintext, const uint8_t *key,
		uint64_t n_msgs, struct result *res)
{
	eng_store_options opt;
	eng_store *st;
	eng_mailbox mb;
	struct msggen g = { NULL, 0, 0, 0 };
	struct uid_list uids = { NULL, 0 };
	static unsigned char buf[256 * 1024];
	double t0, t;
	uint64_t bytes = 0;
	struct stat sb;
	eng_query *q;

	memset(res, 0, sizeof(*res));
	eng_store_options_default(&opt);
	opt.create = true;
	opt.plaintext = plaintext;
	check(eng_store_open(path, key, &opt, &st), "open");
	check(eng_mailbox_get(st, "INBOX", &mb), "INBOX");

	msggen_seed(SEED);
	for (uint64_t i = 0; i < n_msgs; i++) {
		msggen_message(&g, i);
		t = now_s();
		check(eng_append_message(st, mb.id, g.buf, g.len, NULL, NULL,
					 NULL), "append");
		res->append_s += now_s() - t;
		bytes += g.len;
		if ((i + 1) % 1000 == 0)
			fprintf(stderr, "  %s: %" PRIu64 " appended\r",
				plaintext ? "plain" : "encrypted", i + 1);
	}
	fprintf(stderr, "\n");
	res->append_mb = (double)bytes / 1e6;
	free(g.buf);

	/* Headers: the metadata walk, then each message's stored header. */
	t0 = now_s();
	check(eng_fetch_meta(st, mb.id, NULL, 0, collect, &uids), "fetch meta");
	for (size_t i = 0; i < uids.n; i++) {
		eng_message *m;
		const void *h;
		size_t hl;

		check(eng_message_open(st, mb.id, uids.v[i], &m), "open message");
		check(eng_message_header(m, &h, &hl), "header");
		if (hl == 0)
			check(ENG_ECORRUPT, "empty header");
		eng_message_close(&m);
	}
	res->headers_s = now_s() - t0;

	t0 = now_s();
	bytes = 0;
	for (size_t i = 0; i < uids.n; i++) {
		eng_message *m;
		uint64_t off = 0;
		long n;

		check(eng_message_open(st, mb.id, uids.v[i], &m), "open message");
		while ((n = eng_message_read(m, off, buf, sizeof(buf))) > 0)
			off += (uint64_t)n;
		check(n < 0 ? (int)n : 0, "read");
		bytes += off;
		eng_message_close(&m);
	}
	res->bodies_s = now_s() - t0;
	res->bodies_mb = (double)bytes / 1e6;

	/* A FROM search (substring over the decoded header) and a BODY
	 * search (FTS4 prefix, then substring check). */
	q = eng_query_new_header("From", "Kowalski");
	res->hsearch_ms = search_ms(st, mb.id, q, &res->hsearch_hits);
	/* The same through the FTS4 module (the read before the direct
	 * one of its shadow table), for comparison. */
	eng_search_legacy_header_scan(true);
	res->hsearch_old_ms = search_ms(st, mb.id, q, &res->hsearch_old_hits);
	eng_search_legacy_header_scan(false);
	eng_query_free(&q);
	q = eng_query_new_text(ENG_Q_BODY, "zeppelin");
	res->bsearch_ms = search_ms(st, mb.id, q, &res->bsearch_hits);
	eng_query_free(&q);

	eng_mailbox_clear(&mb);
	free(uids.v);
	eng_store_close(&st);
	if (stat(path, &sb) == 0)
		res->db_mb = (double)sb.st_size / 1e6;
}

/* PRAGMA cipher_version of the SQLCipher linked in. */
static const char *cipher_version(void)
{
	static char version[64] = "unknown";
	sqlite3 *db;
	sqlite3_stmt *stmt;

	if (sqlite3_open(":memory:", &db) != SQLITE_OK)
		return version;
	if (sqlite3_prepare_v2(db, "PRAGMA cipher_version", -1, &stmt,
			       NULL) == SQLITE_OK) {
		if (sqlite3_step(stmt) == SQLITE_ROW)
			snprintf(version, sizeof(version), "%s",
				 (const char *)sqlite3_column_text(stmt, 0));
		sqlite3_finalize(stmt);
	}
	sqlite3_close(db);
	return version;
}

static int rm_one(const char *p, const struct stat *sb, int flag,
		  struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* One table row; decimals digits after the point. */
static void row(const char *what, double enc, double plain, int decimals)
{
	char a[32], b[32];

	snprintf(a, sizeof(a), "%.*f", decimals, enc);
	snprintf(b, sizeof(b), "%.*f", decimals, plain);
	printf("| %-26s | %12s | %12s | %6.2f |\n", what, a, b,
	       plain > 0 ? enc / plain : 0.0);
}

int main(int argc, char **argv)
{
	uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 10000;
	char tmpl[] = "/tmp/bench-engine-XXXXXX";
	const char *dir = argc > 2 ? argv[2] : NULL;
	bool own_dir = dir == NULL;
	char enc_path[4096], plain_path[4096];
	uint8_t mk[ENG_MK_BYTES], *key = NULL;
	struct result e, p;

	if (n == 0) {
		fprintf(stderr, "usage: bench-engine [N=10000] [DIR]\n");
		return 2;
	}
	check(eng_crypto_init(), "crypto init");
	if (own_dir) {
		dir = mkdtemp(tmpl);
		if (dir == NULL) {
			perror("mkdtemp");
			return 1;
		}
	}
	snprintf(enc_path, sizeof(enc_path), "%s/bench-encrypted.db", dir);
	snprintf(plain_path, sizeof(plain_path), "%s/bench-plain.db", dir);
	unlink(enc_path);
	unlink(plain_path);
	randombytes_buf(mk, sizeof(mk));
	check(eng_derive_db_key(mk, &key), "derive key");
	sodium_memzero(mk, sizeof(mk));

	printf("bench-engine: %" PRIu64 " messages, seed %#x, SQLCipher %s "
	       "(SQLite %s), in %s\n", n, SEED, cipher_version(),
	       sqlite3_libversion(), dir);
	run(enc_path, false, key, n, &e);
	run(plain_path, true, NULL, n, &p);
	eng_secret_free(&key);

	printf("\n| %-26s | %12s | %12s | %6s |\n", "", "encrypted", "plain",
	       "ratio");
	printf("|%.28s|%.14s|%.14s|%.8s|\n", "----------------------------",
	       "--------------", "--------------", "--------");
	row("append msgs/s", (double)n / e.append_s, (double)n / p.append_s,
	    0);
	row("append MB/s", e.append_mb / e.append_s, p.append_mb / p.append_s,
	    2);
	row("fetch headers msgs/s", (double)n / e.headers_s,
	    (double)n / p.headers_s, 0);
	row("fetch bodies msgs/s", (double)n / e.bodies_s,
	    (double)n / p.bodies_s, 0);
	row("fetch bodies MB/s", e.bodies_mb / e.bodies_s,
	    p.bodies_mb / p.bodies_s, 1);
	row("header search ms", e.hsearch_ms, p.hsearch_ms, 2);
	row("header search, old read ms", e.hsearch_old_ms, p.hsearch_old_ms,
	    2);
	row("body search ms", e.bsearch_ms, p.bsearch_ms, 2);
	row("database MB", e.db_mb, p.db_mb, 1);
	printf("\nraw message bytes: %.1f MB; header search (From contains "
	       "\"Kowalski\") hits %zu/%zu, body search (\"zeppelin\") hits "
	       "%zu/%zu (encrypted/plain)\n", e.append_mb, e.hsearch_hits,
	       p.hsearch_hits, e.bsearch_hits, p.bsearch_hits);
	if (e.hsearch_hits != p.hsearch_hits || e.bsearch_hits != p.bsearch_hits ||
	    e.hsearch_old_hits != e.hsearch_hits ||
	    p.hsearch_old_hits != p.hsearch_hits) {
		fprintf(stderr, "bench-engine: encrypted and plain searches "
			"disagree\n");
		return 1;
	}
	if (own_dir)
		nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	return 0;
}
