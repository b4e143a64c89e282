/*
 * bench-view: sqlited's MAILBOX_VIEW (what an IMAP SELECT reads) of a big
 * mailbox, right after a change and repeated.
 *
 *   bench-view [MESSAGES [ROUNDS]]     (default 100000 and 7)
 *   bench-view --fill DATA_DIR ADDRESS MESSAGES
 *       (password in BENCH_VIEW_PASSWORD: fills an alias of a real
 *       sqlited's data directory the same way, for an IMAP-level run)
 *
 * An sqlited runs in this process (its loop on a thread, a unix socket in
 * a temporary directory, Redis absent): tests/unit/testsrv_core.c, the
 * unit tests' in-process server, compiled in (bench/CMakeLists.txt).
 * The alias's INBOX is filled with MESSAGES tiny messages through the
 * engine directly (one transaction: minutes less than APPEND over RPC),
 * then an rpc_sync client (the blocking client) unlocks it and times, per
 * round: a repeated MAILBOX_VIEW (nothing changed), the first one after
 * one APPEND, and the first one after one STORE of a flag on a message in
 * the middle. Wall time of the call and this process's CPU (client and
 * server) around it; medians and min-max over the rounds. No assertions:
 * a figure, not a test.
 */
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "dir.h"
#include "eng_error.h"
#include "keys.h"
#include "rpc_codec.h"
#include "rpc_sync.h"
#include "srv.h"
#include "srv_alias.h"
#include "srv_net.h"
#include "store.h"
#include "testsrv_core.h"

#define MAX_ROUNDS 64

static const char password[] = "bench password";

static void die(const char *what, int err)
{
	fprintf(stderr, "bench-view: %s: %s\n", what, eng_strerror(err));
	exit(1);
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double cpu_ms(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
		(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

/* ---- the server ---- */

/* n tiny messages into the INBOX of the database at path (engine direct,
 * one transaction). */
static void fill(const char *path, const uint8_t *mk, unsigned n)
{
	eng_store_options opt = { .create = false };
	eng_store *st;
	eng_mailbox mb;
	uint8_t *dbkey;
	int err;
	double t0 = now_ms();

	if ((err = eng_derive_db_key(mk, &dbkey)) != 0 ||
	    (err = eng_store_open(path, dbkey, &opt, &st)) != 0 ||
	    (err = eng_mailbox_get(st, "INBOX", &mb)) != 0 ||
	    (err = eng_store_tx_begin(st)) != 0)
		die("open", err);
	for (unsigned i = 0; i < n; i++) {
		char msg[128];
		int len = snprintf(msg, sizeof(msg), "Subject: m%u\r\n\r\n"
				   "body %u\r\n", i, i);
		/* As a mailbox read but for its newest 1%, every 1000th
		 * message flagged: a few hundred runs, a view sqlited
		 * caches (at most 8192 ranges and runs). */
		eng_append_opts ao = {
			.flags = (i < n - n / 100 ? ENG_F_SEEN : 0) |
				 (i % 1000 == 0 ? ENG_F_FLAGGED : 0) };

		if ((err = eng_append_message(st, mb.id, msg, (size_t)len, &ao,
					      NULL, NULL)) != 0)
			die("append", err);
	}
	if ((err = eng_store_tx_commit(st)) != 0)
		die("commit", err);
	eng_mailbox_clear(&mb);
	eng_store_close(&st);
	eng_secret_free(&dbkey);
	fprintf(stderr, "filled %u messages in %.0f s\n", n,
		(now_ms() - t0) / 1e3);
}

/* --fill: an existing alias of a data directory (a real sqlited's, for
 * an IMAP-level run), its password in BENCH_VIEW_PASSWORD. */
static int fill_existing(const char *data_dir, const char *address,
			 unsigned n)
{
	const char *pw = getenv("BENCH_VIEW_PASSWORD");
	dir *d = NULL;
	dir_alias a;
	eng_keyring *kr = NULL;
	uint8_t *mk = NULL;
	char path[4096];
	int err;

	if (pw == NULL)
		die("BENCH_VIEW_PASSWORD", ENG_EINVAL);
	if ((err = eng_crypto_init()) != 0 ||
	    (err = dir_open(NULL, data_dir, &d)) != 0 ||
	    (err = dir_alias_get(d, address, &a)) != 0)
		die("alias", err);
	if ((err = eng_keyring_decode(a.keyring, a.keyring_len, &kr)) != 0 ||
	    (err = eng_keyring_unlock(kr, pw, strlen(pw), &mk, NULL)) != 0)
		die("unlock", err);
	snprintf(path, sizeof(path), "%s/mailboxes/%s.db", data_dir, a.id);
	fill(path, mk, n);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
	dir_alias_clear(&a);
	dir_close(&d);
	return 0;
}

/* The server (tests/unit/testsrv_core.c) with the alias big@example.org
 * and n messages in its INBOX, listening on its unix socket. */
static void server_start(struct tsrv *t, unsigned n)
{
	static char data_dir[] = "/tmp/bench-view-XXXXXX";
	char alias_id[DIR_ID_HEX_LEN + 1], path[256];
	uint8_t *mk = NULL;
	int err;

	if (mkdtemp(data_dir) == NULL)
		die("setup", ENG_EIO);
	if ((err = tsrv_init(t, data_dir, NULL)) != 0)
		die("server", err);
	if ((err = dir_domain_add(t->s.dir, "example.org")) != 0 ||
	    (err = tsrv_add_alias(t, "big@example.org", password, alias_id,
				  &mk)) != 0)
		die("alias", err);
	snprintf(path, sizeof(path), "%s/mailboxes/%s.db", data_dir,
		 alias_id);
	fill(path, mk, n);
	eng_secret_free(&mk);
	if ((err = tsrv_run(t, NULL)) != 0)
		die("listen", err);
}

static void server_stop(struct tsrv *t)
{
	char cmd[128];

	if (tsrv_stop(t) != 0)
		fprintf(stderr, "the server did not stop cleanly\n");
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", t->dir);
}

/* ---- the client ---- */

static void call(rpc_sync *c, uint16_t op, eng_buf *b, rpc_sync_resp *resp)
{
	int err = rpc_sync_call(c, op, b->data, b->len, resp);

	if (err != 0)
		die("call", err);
	eng_buf_reset(b);
}

/* One MAILBOX_VIEW of INBOX: wall into *wall, CPU into *cpu. */
static void view(rpc_sync *c, const uint8_t *s, unsigned expect, double *wall,
		 double *cpu)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;
	uint64_t n = 0;
	double w0, c0;

	begin(&b, s, "INBOX");
	c0 = cpu_ms();
	w0 = now_ms();
	call(c, RPC_OP_MAILBOX_VIEW, &b, &resp);
	*wall = now_ms() - w0;
	*cpu = cpu_ms() - c0;
	if (rpc_get_u64(&resp.view, RPC_T_MESSAGES, &n) != 0 || n != expect)
		die("view count", ENG_ECORRUPT);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
}

static void append_one(rpc_sync *c, const uint8_t *s)
{
	static const char msg[] = "Subject: new\r\n\r\nnew\r\n";
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	rpc_sync_call_opts opts = { .has_body = true, .body = msg,
				    .body_len = sizeof(msg) - 1 };
	eng_buf b = ENG_BUF_INIT;
	int err;

	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_SIZE, sizeof(msg) - 1);
	err = rpc_sync_call_ex(c, RPC_OP_APPEND, b.data, b.len, &opts, &resp);
	if (err != 0)
		die("append", err);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
}

/* STORE: \Flagged on or off (the round's parity) on UID uid. */
static void store_one(rpc_sync *c, const uint8_t *s, uint32_t uid, bool on)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;

	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, uid, uid);
	rpc_put_u64(&b, RPC_T_MODE, on ? RPC_MODE_ADD : RPC_MODE_REMOVE);
	rpc_put_u64(&b, RPC_T_FLAGS, ENG_F_FLAGGED);
	call(c, RPC_OP_STORE, &b, &resp);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void row(const char *name, double *v, double *cpu, unsigned n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	qsort(cpu, n, sizeof(*cpu), cmp_double);
	printf("| %s | %.3f | %.3f-%.3f | %.3f |\n", name, v[n / 2], v[0],
	       v[n - 1], cpu[n / 2]);
}

static int run(unsigned n, unsigned rounds)
{
	double rep[MAX_ROUNDS], app[MAX_ROUNDS], sto[MAX_ROUNDS];
	double rep_c[MAX_ROUNDS], app_c[MAX_ROUNDS], sto_c[MAX_ROUNDS];
	double first, first_c;
	struct tsrv f;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	const uint8_t *p;
	size_t len;
	rpc_sync *c = NULL;
	unsigned count = n;

	if (n < 2 || rounds < 1 || rounds > MAX_ROUNDS) {
		fprintf(stderr, "usage: bench-view [MESSAGES [ROUNDS<=64]]\n");
		return 2;
	}
	server_start(&f, n);
	if (rpc_sync_connect_unix(f.cfg->sqlited_socket, f.s.rpc_secret,
				  "bench@view", 60000, &c) != 0)
		die("connect", ENG_EIO);
	rpc_put_str(&b, RPC_T_ALIAS, "big@example.org");
	rpc_put_str(&b, RPC_T_PASSWORD, password);
	call(c, RPC_OP_UNLOCK, &b, &resp);
	if (rpc_get_bytes(&resp.view, RPC_T_SESSION, &p, &len) != 0 ||
	    len != SRV_SESSION_BYTES)
		die("unlock", ENG_EAUTH);
	memcpy(s, p, len);
	view(c, s, count, &first, &first_c);
	for (unsigned r = 0; r < rounds; r++) {
		view(c, s, count, &rep[r], &rep_c[r]);
		append_one(c, s);
		view(c, s, ++count, &app[r], &app_c[r]);
		store_one(c, s, n / 2 + 2 + r / 2, r % 2 == 0);
		view(c, s, count, &sto[r], &sto_c[r]);
	}
	printf("MAILBOX_VIEW of %u messages, %u rounds: ms wall (median, "
	       "min-max), ms CPU of this process (median)\n\n", n, rounds);
	printf("| view | wall ms | min-max | CPU ms |\n|---|---:|---:|---:|\n");
	printf("| first (full scan, cold) | %.3f | | %.3f |\n", first, first_c);
	row("repeated, unchanged", rep, rep_c, rounds);
	row("first after one APPEND", app, app_c, rounds);
	row("first after one STORE", sto, sto_c, rounds);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
	server_stop(&f);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned n = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 100000;

	if (argc == 5 && strcmp(argv[1], "--fill") == 0)
		return fill_existing(argv[2], argv[3],
				     (unsigned)strtoul(argv[4], NULL, 10));
	return run(n, argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 7);
}
