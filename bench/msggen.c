/*
 * msggen.c: the benchmarks' realistic messages (bench-engine, bench-imap).
 *
 * A fixed-seed generator: msggen_seed(s) and then msggen_message(g, 0),
 * msggen_message(g, 1), ... in that order give the same bytes on every
 * run and in every program. Sizes 2 KB to 200 KB (55% 2-8 KB, 25% 8-30 KB,
 * 15% 30-100 KB, 5% 100-200 KB); headers with varied From/To/Cc/Subject/
 * Date/Message-ID and References; above 12 KB multipart/mixed with a
 * text/plain part and a base64 attachment of random bytes. One message
 * in 50 has the word "zeppelin" in its body; "Kowalski" is one of the
 * surnames in From/To/Cc. Not thread-safe (one generator state).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "msggen.h"

static uint64_t rng_state;

void msggen_seed(uint64_t seed)
{
	rng_state = seed;
}


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

static void put(struct msggen *g, const void *data, size_t len)
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

static void putf(struct msggen *g, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void putf(struct msggen *g, const char *fmt, ...)
{
	char tmp[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	put(g, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void address(struct msggen *g, uint32_t person)
{
	const char *fn = first_names[person % COUNT(first_names)];
	const char *ln = last_names[(person / 7) % COUNT(last_names)];

	putf(g, "%s %s <%c.%s@%s>", fn, ln, fn[0] | 0x20, ln,
	     domains[(person / 3) % COUNT(domains)]);
}

/* Text of random words with sentence-ish lines, about len bytes. */
static void text(struct msggen *g, size_t len)
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

static void base64_attachment(struct msggen *g, size_t raw_len)
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

void msggen_message(struct msggen *g, uint64_t i)
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
