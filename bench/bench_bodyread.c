/*
 * bench-bodyread: the CPU of reading whole message bodies from an
 * encrypted store (eng_message_open + eng_message_read + close), without
 * sqlited, RPC or IMAP around it: the storage read path alone (page reads,
 * SQLCipher page cipher, SQLite's overflow copy, zstd).
 *
 *   bench-bodyread DIR load [N=3000] [LEVEL=the store's default]
 *                                      append N msggen messages (the fixed
 *                                      seed of bench-engine) to DIR/bench.db,
 *                                      chunks compressed at zstd LEVEL
 *   bench-bodyread DIR read [ROUNDS=9] read every body ROUNDS times
 *
 * Each read round opens the store afresh (SQLite's page cache cold, the
 * kernel's warm: every page is read and decrypted, as sqlited does for a
 * FETCH of more than its cache) and reads each message into a 256 KiB
 * buffer inside read snapshots of about 256 KiB of output each, as
 * FETCH_BODIES fills its pieces. Prints the thread CPU time
 * of each round and the median, in ms and in us per message. Two builds
 * on one DIR, run in turn, are an A/B of the read path; the database's
 * size is printed with the load. A benchmark: no assertions.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "eng_error.h"
#include "keys.h"
#include "store.h"
#include "msggen.h"
#include "bench_util.h"

#define SEED 0x5ea1u
#define MAX_ROUNDS 101

static void check(int err, const char *what)
{
	if (err != 0) {
		fprintf(stderr, "bench-bodyread: %s: %s\n", what,
			eng_strerror(err));
		exit(1);
	}
}

static eng_store *open_store(const char *dir, bool create, const int *level,
			     int64_t *inbox_r)
{
	/* A fixed key: the bench's data is not secret. */
	static const uint8_t key[32] = { 0x5e, 0xa1, 0x6d, 0x41, 0x1c };
	char path[4096];
	eng_store_options opt;
	eng_store *st;
	eng_mailbox mb;

	snprintf(path, sizeof(path), "%s/bench.db", dir);
	eng_store_options_default(&opt);
	opt.create = create;
	if (level != NULL)
		opt.zstd_level = *level;
	check(eng_store_open(path, key, &opt, &st), "open");
	check(eng_mailbox_get(st, "INBOX", &mb), "INBOX");
	*inbox_r = mb.id;
	return st;
}

static void load(const char *dir, uint64_t n, const int *level)
{
	struct msggen g = { NULL, 0, 0, 0 };
	int64_t inbox;
	eng_store *st = open_store(dir, true, level, &inbox);
	double cpu = 0, t;
	uint64_t bytes = 0;
	char path[4096];
	struct stat sb;

	msggen_seed(SEED);
	for (uint64_t i = 0; i < n; i++) {
		msggen_message(&g, i);
		t = bench_thread_cpu();
		check(eng_append_message(st, inbox, g.buf, g.len, NULL, NULL,
					 NULL), "append");
		cpu += bench_thread_cpu() - t;
		bytes += g.len;
	}
	free(g.buf);
	eng_store_close(&st);
	snprintf(path, sizeof(path), "%s/bench.db", dir);
	printf("loaded %" PRIu64 " messages, %.1f MB raw, database %.1f MB, "
	       "append %.1f us CPU per message (this thread)\n", n,
	       (double)bytes / 1e6,
	       stat(path, &sb) == 0 ? (double)sb.st_size / 1e6 : -1.0,
	       cpu * 1e6 / (double)(n ? n : 1));
}

/* One round: every message read whole; returns thread CPU seconds. */
static double read_round(const char *dir, uint64_t *msgs_r, uint64_t *bytes_r)
{
	static unsigned char buf[256 * 1024];
	int64_t inbox;
	eng_store *st = open_store(dir, false, NULL, &inbox);
	double t0 = bench_thread_cpu();
	uint64_t in_snapshot = 0;

	*msgs_r = 0;
	*bytes_r = 0;
	check(eng_store_read_begin(st), "read snapshot");
	for (uint32_t uid = 1;; uid++) {
		eng_message *m;
		uint64_t off = 0;
		long n;
		int err;

		if (in_snapshot >= sizeof(buf)) {
			eng_store_read_end(st);
			check(eng_store_read_begin(st), "read snapshot");
			in_snapshot = 0;
		}
		if ((err = eng_message_open(st, inbox, uid, &m)) == ENG_ENOTFOUND)
			break;
		check(err, "open message");
		while ((n = eng_message_read(m, off, buf, sizeof(buf))) > 0)
			off += (uint64_t)n;
		check(n < 0 ? (int)n : 0, "read");
		eng_message_close(&m);
		*bytes_r += off;
		in_snapshot += off;
		(*msgs_r)++;
	}
	eng_store_read_end(st);
	t0 = bench_thread_cpu() - t0;
	eng_store_close(&st);
	return t0;
}

static void read_rounds(const char *dir, int rounds)
{
	double t[MAX_ROUNDS];
	uint64_t msgs = 0, bytes = 0;

	for (int r = 0; r < rounds; r++) {
		t[r] = read_round(dir, &msgs, &bytes);
		printf("round %d: %.1f ms CPU\n", r, t[r] * 1e3);
	}
	qsort(t, (size_t)rounds, sizeof(t[0]), bench_cmp_double);
	printf("median of %d rounds: %.1f ms CPU for %" PRIu64 " messages "
	       "(%.1f MB): %.2f us per message, %.0f MB/s\n", rounds,
	       t[rounds / 2] * 1e3, msgs, (double)bytes / 1e6,
	       t[rounds / 2] * 1e6 / (double)(msgs ? msgs : 1),
	       (double)bytes / 1e6 / t[rounds / 2]);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: bench-bodyread DIR load [N] | "
			"DIR read [ROUNDS]\n");
		return 2;
	}
	check(eng_crypto_init(), "crypto init");
	if (strcmp(argv[2], "load") == 0) {
		int level = argc > 4 ? atoi(argv[4]) : 0;

		load(argv[1], argc > 3 ? strtoull(argv[3], NULL, 10) : 3000,
		     argc > 4 ? &level : NULL);
	} else if (strcmp(argv[2], "read") == 0) {
		int rounds = argc > 3 ? atoi(argv[3]) : 9;

		if (rounds < 1 || rounds > MAX_ROUNDS)
			rounds = 9;
		read_rounds(argv[1], rounds);
	} else {
		fprintf(stderr, "bench-bodyread: unknown command %s\n", argv[2]);
		return 2;
	}
	return 0;
}
