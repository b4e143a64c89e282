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

#define SEED 0x5ea1u
#define SEARCH_REPEAT 10

static uint64_t rng_state;

static uint64_t rng(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t below(uint32_t n)
{
	return (uint32_t)(rng() % n);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *const first_names[] = {
	"Alice", "Bob", "Carol", "David", "Erin", "Frank", "Grace", "Heidi",
	"Ivan", "Judy", "Mallory", "Niaj", "Olivia", "Peggy", "Rupert",
	"Sybil", "Trent", "Victor", "Walter", "Zoe", "Ana", "Bruno", "Chen",
	"Dmitri", "Elif", "Fatima", "Gustavo", "Hiro", "Ingrid", "Jamal",
};
static const char *const last_names[] = {
	"Smith", "Jones", "Garcia", "Miller", "Davis", "Martin", "Novak",
	"Kowalski", "Rossi", "Muller", "Dubois", "Tanaka", "Okafor", "Silva",
	"Larsen", "Nguyen", "Haddad", "Petrov", "Schmidt", "Moreau",
};
static const char *const domains[] = {
	"example.org", "example.com", "mail.example.net", "corp.example",
	"lists.example.org", "university.example.edu",
};
static const char *const words[] = {
	"the", "of", "and", "to", "in", "is", "that", "for", "it", "as",
	"with", "was", "on", "be", "at", "by", "this", "had", "not", "are",
	"but", "from", "or", "have", "an", "they", "which", "you", "were",
	"her", "all", "she", "there", "would", "their", "we", "him", "been",
	"meeting", "report", "budget", "quarter", "release", "server",
	"invoice", "schedule", "project", "review", "draft", "deadline",
	"customer", "support", "update", "question", "proposal", "contract",
	"travel", "conference", "agenda", "minutes", "feedback", "design",
	"migration", "database", "backup", "security", "password", "account",
	"holiday", "lunch", "coffee", "weekend", "family", "garden", "photos",
	"kernel", "compiler", "benchmark", "latency", "throughput", "cache",
	"encryption", "mailbox", "folder", "calendar", "contact", "reminder",
};
#define N_WORDS (sizeof(words) / sizeof(words[0]))
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

struct gen {
	char *buf;
	size_t len, cap;
	uint64_t index;
};

static void put(struct gen *g, const void *data, size_t len)
{
	if (g->len + len + 1 > g->cap) {
		g->cap = (g->len + len + 1) * 2;
		g->buf = realloc(g->buf, g->cap);
		if (g->buf == NULL)
			abort();
	}
	memcpy(g->buf + g->len, data, len);
	g->len += len;
}

static void putf(struct gen *g, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void putf(struct gen *g, const char *fmt, ...)
{
	char tmp[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	put(g, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void address(struct gen *g, uint32_t person)
{
	const char *fn = first_names[person % COUNT(first_names)];
	const char *ln = last_names[(person / 7) % COUNT(last_names)];

	putf(g, "%s %s <%c.%s@%s>", fn, ln, fn[0] | 0x20, ln,
	     domains[(person / 3) % COUNT(domains)]);
}

/* Text of random words with sentence-ish lines, about len bytes. */
static void text(struct gen *g, size_t len)
{
	size_t start = g->len, col = 0;

	/* One message in 50 has the word the body search looks for. */
	if (below(50) == 0)
		putf(g, "Please find the zeppelin figures attached.\r\n");

	while (g->len - start < len) {
		const char *w = words[below(N_WORDS)];
		size_t wl = strlen(w);

		if (col + wl + 1 > 72) {
			put(g, "\r\n", 2);
			col = 0;
			if (below(6) == 0)
				put(g, "\r\n", 2);
		}
		put(g, w, wl);
		put(g, " ", 1);
		col += wl + 1;
	}
	put(g, "\r\n", 2);
}

static void base64_attachment(struct gen *g, size_t raw_len)
{
	static const char b64[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char line[80];

	/* Random bytes: attachments (images, PDFs, zips) hardly compress. */
	for (size_t done = 0; done < raw_len; done += 57) {
		size_t n = 0;

		for (int i = 0; i < 19; i++) {
			uint32_t v = (uint32_t)rng() & 0xffffff;

			line[n++] = b64[v >> 18];
			line[n++] = b64[(v >> 12) & 63];
			line[n++] = b64[(v >> 6) & 63];
			line[n++] = b64[v & 63];
		}
		line[n++] = '\r';
		line[n++] = '\n';
		put(g, line, n);
	}
}

/*
 * Sizes: 55% 2-8 KB, 25% 8-30 KB, 15% 30-100 KB, 5% 100-200 KB (roughly
 * what a mailbox of human mail looks like: mostly short text, a tail of
 * attachments).
 */
static size_t pick_size(void)
{
	uint32_t r = below(100);

	if (r < 55)
		return 2048 + below(6 * 1024);
	if (r < 80)
		return 8 * 1024 + below(22 * 1024);
	if (r < 95)
		return 30 * 1024 + below(70 * 1024);
	return 100 * 1024 + below(100 * 1024);
}

static void make_message(struct gen *g, uint64_t i)
{
	size_t size = pick_size();
	uint32_t from = below(200), to = below(200);
	time_t date = (time_t)1700000000 + (time_t)(i * 317) + below(300);
	struct tm tm;
	char datebuf[64];
	bool reply = i > 10 && below(3) == 0;
	bool multipart = size > 12 * 1024;

	g->len = 0;
	gmtime_r(&date, &tm);
	strftime(datebuf, sizeof(datebuf), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	putf(g, "Return-Path: <bounce-%" PRIu64 "@%s>\r\n", i,
	     domains[from % COUNT(domains)]);
	putf(g, "Received: from mx%u.%s (mx%u.%s [192.0.2.%u])\r\n\tby "
	     "mail.example.net with ESMTPS id %016" PRIx64 "\r\n\tfor "
	     "<alias@example.net>; %s\r\n", below(9), domains[below(6)],
	     below(9), domains[below(6)], below(250), rng(), datebuf);
	put(g, "From: ", 6);
	address(g, from);
	put(g, "\r\nTo: ", 6);
	address(g, to);
	if (below(4) == 0) {
		put(g, "\r\nCc: ", 6);
		address(g, below(200));
		put(g, ", ", 2);
		address(g, below(200));
	}
	put(g, "\r\nSubject: ", 11);
	if (reply)
		put(g, "Re: ", 4);
	for (uint32_t w = 0, n = 2 + below(6); w < n; w++)
		putf(g, "%s%s", w ? " " : "", words[below(N_WORDS)]);
	putf(g, "\r\nDate: %s\r\n", datebuf);
	putf(g, "Message-ID: <%" PRIu64 ".%08x@%s>\r\n", i, (unsigned)rng(),
	     domains[from % COUNT(domains)]);
	if (reply) {
		uint64_t parent = i - 1 - below(10);

		putf(g, "In-Reply-To: <%" PRIu64 ".ref@%s>\r\n", parent,
		     domains[0]);
		putf(g, "References: <%" PRIu64 ".ref@%s> <%" PRIu64
		     ".ref@%s>\r\n", parent / 2, domains[0], parent, domains[0]);
	}
	putf(g, "MIME-Version: 1.0\r\n");
	if (!multipart) {
		putf(g, "Content-Type: text/plain; charset=utf-8\r\n"
		     "Content-Transfer-Encoding: 8bit\r\n\r\n");
		text(g, size > g->len ? size - g->len : 200);
		return;
	}
	putf(g, "Content-Type: multipart/mixed; boundary=\"b-%" PRIu64
	     "\"\r\n\r\nThis is a multi-part message in MIME format.\r\n"
	     "\r\n--b-%" PRIu64 "\r\nContent-Type: text/plain; charset=utf-8"
	     "\r\nContent-Transfer-Encoding: 8bit\r\n\r\n", i, i);
	text(g, 1000 + below(4000));
	putf(g, "\r\n--b-%" PRIu64 "\r\nContent-Type: application/pdf; "
	     "name=\"doc%" PRIu64 ".pdf\"\r\nContent-Disposition: attachment; "
	     "filename=\"doc%" PRIu64 ".pdf\"\r\nContent-Transfer-Encoding: "
	     "base64\r\n\r\n", i, i, i);
	base64_attachment(g, size > g->len ? (size - g->len) * 3 / 4 : 1024);
	putf(g, "\r\n--b-%" PRIu64 "--\r\n", i);
}

struct result {
	double append_s, append_mb;
	double headers_s;
	double bodies_s, bodies_mb;
	double hsearch_ms, bsearch_ms;
	size_t hsearch_hits, bsearch_hits;
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
	struct gen g = { NULL, 0, 0, 0 };
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

	rng_state = SEED;
	for (uint64_t i = 0; i < n_msgs; i++) {
		make_message(&g, i);
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
		eng_message_header(m, &h, &hl);
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
	row("body search ms", e.bsearch_ms, p.bsearch_ms, 2);
	row("database MB", e.db_mb, p.db_mb, 1);
	printf("\nraw message bytes: %.1f MB; header search (From contains "
	       "\"Kowalski\") hits %zu/%zu, body search (\"zeppelin\") hits "
	       "%zu/%zu (encrypted/plain)\n", e.append_mb, e.hsearch_hits,
	       p.hsearch_hits, e.bsearch_hits, p.bsearch_hits);
	if (e.hsearch_hits != p.hsearch_hits || e.bsearch_hits != p.bsearch_hits) {
		fprintf(stderr, "bench-engine: encrypted and plain searches "
			"disagree\n");
		return 1;
	}
	if (own_dir)
		nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	return 0;
}
