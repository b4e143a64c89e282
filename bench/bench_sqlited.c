/*
 * bench-sqlited: the load generator of bench/sqlited.sh, which sets up a
 * data directory, redis-server, sqlited and three aliases, runs this and
 * stops everything again. Run the script, not this, by hand.
 *
 *   bench-sqlited --unix PATH --tcp-port N --secret FILE --sqlited-pid PID
 *                 --open ALIAS --locked ALIAS --unlock ALIAS [--seconds N]
 *   passwords in the environment: BENCH_PW_OPEN, BENCH_PW_UNLOCK
 *
 * Throughput figures come from rpc_client (the frontends' library) on one
 * libuv loop in one thread: C connections, each with D requests in flight,
 * every answer followed at once by the next request on that connection.
 * A figure counts the answers received in a window of N seconds, after
 * every connection is up. The CPU time of this process and of sqlited
 * (utime + stime from /proc/PID/stat) over the same window is printed
 * beside it, so that one can see which side is saturated.
 *
 * Each figure is measured 3 times: the median and the spread (min-max)
 * are printed.
 *
 * Latency figures (UNLOCK) use rpc_sync, one request at a time.
 *
 * The order matters and is fixed: unlock latency first (nothing else
 * runs), then APPEND (which fills the open alias's INBOX to well over 100
 * messages), then PING, MAILBOX_STATUS and FETCH_META over both
 * transports, then DELIVER to the locked and to the open alias.
 */
#include <inttypes.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "buf.h"
#include "eng_error.h"
#include "rpc_client.h"
#include "rpc_codec.h"
#include "rpc_proto.h"
#include "rpc_sync.h"

#define REPEATS 3
#define N_MESSAGES 64
#define PEER_NAME "bench@localhost"
#define COLD_UNLOCKS 10
#define WARM_UNLOCKS 30
#define FETCH_UIDS 100

/* ---- command line and shared state ---- */

static struct {
	const char *unix_path;
	uint16_t tcp_port;
	uint8_t secret[32];
	int sqlited_pid;
	const char *open_alias;
	const char *locked_alias;
	const char *unlock_alias;
	const char *pw_open;
	const char *pw_unlock;
	double seconds;
	uint8_t session[64];
	size_t session_len;
	long clk_tck;
} g;

/* The generated messages and, per message, the request payloads. */
static struct {
	eng_buf body;
	eng_buf append_req;
	eng_buf deliver_locked_req;
	eng_buf deliver_open_req;
} msgs[N_MESSAGES];
static size_t msgs_total_bytes;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "bench-sqlited: %s: %s (%d)\n", what,
		err < 0 ? rpc_strerror(err) : "failed", err);
	exit(1);
}

/* ---- CPU time of this process and of sqlited, in seconds ---- */

typedef struct cpu_snap {
	double self_s;
	double server_s;
} cpu_snap;

static double proc_cpu_s(int pid)
{
	char path[64], line[1024];
	unsigned long long ut = 0, st = 0;
	FILE *f;
	char *p;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (f == NULL)
		return 0;
	if (fgets(line, sizeof(line), f) == NULL) {
		fclose(f);
		return 0;
	}
	fclose(f);
	/* Skip "pid (comm) ": comm may hold spaces, so from the last ')'. */
	p = strrchr(line, ')');
	if (p == NULL ||
	    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
		   &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / (double)g.clk_tck;
}

static void cpu_take(cpu_snap *s)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	s->self_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
		    (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
	s->server_s = proc_cpu_s(g.sqlited_pid);
}

/* ---- message generation (fixed seed) ---- */

static uint64_t rng_state = 0x5ea15ea1u;

static uint64_t rng(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static const char *const words[] = {
	"the", "meeting", "invoice", "project", "report", "tomorrow", "please",
	"attached", "review", "budget", "draft", "thanks", "regards", "update",
	"schedule", "quarterly", "server", "release", "customer", "question",
};

/*
 * A message of 4-50 KB: a realistic header block and, below 12 KB, a
 * text/plain body of words; above, multipart/mixed with a text part and
 * a base64 attachment of random bytes.
 */
static void gen_message(eng_buf *b, unsigned i)
{
	size_t target = 4096 + (size_t)(rng() % (46 * 1024));
	size_t n_words = sizeof(words) / sizeof(words[0]);
	bool multi = target > 12 * 1024;

	eng_buf_printf(b, "Return-Path: <sender%u@example.net>\r\n"
		       "Received: from mx.example.net (mx.example.net [192.0.2.%u])\r\n"
		       "\tby mail.example.org with ESMTPS; Tue, 24 Nov 2026 10:%02u:00 +0000\r\n"
		       "From: Sender %u <sender%u@example.net>\r\n"
		       "To: Open Bench <open@bench.test>\r\n"
		       "Subject: %s %s %s\r\n"
		       "Date: Tue, 24 Nov 2026 10:%02u:00 +0000\r\n"
		       "Message-ID: <bench-%u-%016" PRIx64 "@example.net>\r\n"
		       "MIME-Version: 1.0\r\n",
		       i % 50, i % 250, i % 60, i % 50, i % 50,
		       words[rng() % n_words], words[rng() % n_words],
		       words[rng() % n_words], i % 60, i, rng());
	if (multi)
		eng_buf_puts(b, "Content-Type: multipart/mixed; boundary=\"b0undary\"\r\n\r\n"
			     "--b0undary\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
	else
		eng_buf_puts(b, "Content-Type: text/plain; charset=utf-8\r\n\r\n");
	{
		size_t text_end = multi ? b->len + 3000 : target;
		size_t col = 0;

		while (b->len < text_end) {
			const char *w = words[rng() % n_words];

			eng_buf_puts(b, w);
			col += strlen(w) + 1;
			if (col > 70) {
				eng_buf_puts(b, "\r\n");
				col = 0;
			} else {
				eng_buf_putc(b, ' ');
			}
		}
	}
	if (multi) {
		static const char b64[] =
			"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

		eng_buf_puts(b, "\r\n--b0undary\r\nContent-Type: application/octet-stream\r\n"
			     "Content-Disposition: attachment; filename=\"data.bin\"\r\n"
			     "Content-Transfer-Encoding: base64\r\n\r\n");
		while (b->len + 20 < target) {
			char line[78];

			for (int k = 0; k < 76; k++)
				line[k] = b64[rng() % 64];
			line[76] = '\r';
			line[77] = '\n';
			eng_buf_append(b, line, sizeof(line));
		}
		eng_buf_puts(b, "--b0undary--\r\n");
	}
}

static void gen_messages(void)
{
	for (unsigned i = 0; i < N_MESSAGES; i++) {
		size_t len;

		gen_message(&msgs[i].body, i);
		len = msgs[i].body.len;
		msgs_total_bytes += len;
		rpc_put_bytes(&msgs[i].append_req, RPC_T_SESSION, g.session,
			      g.session_len);
		rpc_put_str(&msgs[i].append_req, RPC_T_MAILBOX, "INBOX");
		rpc_put_u64(&msgs[i].append_req, RPC_T_SIZE, len);
		rpc_put_str(&msgs[i].deliver_locked_req, RPC_T_ADDRESS,
			    g.locked_alias);
		rpc_put_u64(&msgs[i].deliver_locked_req, RPC_T_SIZE, len);
		rpc_put_str(&msgs[i].deliver_open_req, RPC_T_ADDRESS,
			    g.open_alias);
		rpc_put_u64(&msgs[i].deliver_open_req, RPC_T_SIZE, len);
	}
}

/* ---- the load: C rpc_clients on one loop, D requests in flight each ---- */

enum load_kind {
	LOAD_PING,
	LOAD_STATUS,
	LOAD_FETCH_META,
	LOAD_APPEND,
	LOAD_DELIVER_LOCKED,
	LOAD_DELIVER_OPEN,
};

typedef struct load load;

typedef struct slot {
	load *l;
	rpc_client *c;
	size_t body_len;             /* of the upload in flight */
} slot;

struct load {
	uv_loop_t loop;
	uv_timer_t timer;
	enum load_kind kind;
	bool tcp;
	int n_conns;
	int depth;
	rpc_client **clients;
	slot *slots;
	int up;
	bool started;
	bool stopped;
	bool failed;
	unsigned next_msg;
	uint64_t done;
	uint64_t bytes;
	uint64_t errors;
	int first_err;
	uint64_t in_flight;
	int closing;
	eng_buf simple_req;          /* PING, STATUS, FETCH_META payload */
	double t0, t1;
	cpu_snap c0, c1;
};

static void issue(slot *s);

static void call_cb(void *ctx, int err, const rpc_view *resp)
{
	slot *s = ctx;
	load *l = s->l;

	l->in_flight--;
	if (l->stopped)
		return;
	if (err != 0) {
		if (l->errors++ == 0)
			l->first_err = err;
	} else {
		if (l->kind == LOAD_FETCH_META && resp != NULL &&
		    rpc_count(resp, RPC_T_MESSAGE) != FETCH_UIDS) {
			if (l->errors++ == 0)
				l->first_err = ENG_ENOTFOUND;
		}
		l->done++;
		l->bytes += s->body_len;
	}
	issue(s);
}

static void issue(slot *s)
{
	load *l = s->l;
	rpc_client_opts o;
	const eng_buf *req = &l->simple_req;
	uint16_t op = 0;
	int rc;

	memset(&o, 0, sizeof(o));
	switch (l->kind) {
	case LOAD_PING: op = RPC_OP_PING; break;
	case LOAD_STATUS: op = RPC_OP_MAILBOX_STATUS; break;
	case LOAD_FETCH_META: op = RPC_OP_FETCH_META; break;
	case LOAD_APPEND:
	case LOAD_DELIVER_LOCKED:
	case LOAD_DELIVER_OPEN: {
		unsigned m = l->next_msg++ % N_MESSAGES;

		op = l->kind == LOAD_APPEND ? RPC_OP_APPEND : RPC_OP_DELIVER;
		req = l->kind == LOAD_APPEND ? &msgs[m].append_req :
		      l->kind == LOAD_DELIVER_LOCKED ? &msgs[m].deliver_locked_req :
		      &msgs[m].deliver_open_req;
		o.has_body = true;
		o.body = msgs[m].body.data;
		o.body_len = msgs[m].body.len;
		s->body_len = o.body_len;
		break;
	}
	}
	rc = rpc_client_call_ex(s->c, op, req->data, req->len, &o, call_cb, s,
				NULL);
	if (rc != 0) {
		if (l->errors++ == 0)
			l->first_err = rc;
		return;
	}
	l->in_flight++;
}

static void window_end_cb(uv_timer_t *t)
{
	load *l = t->data;

	if (!l->started) {
		/* The connections did not come up in time. */
		l->failed = true;
	} else {
		l->t1 = now_s();
		cpu_take(&l->c1);
	}
	l->stopped = true;
	for (int i = 0; i < l->n_conns; i++) {
		l->closing++;
		rpc_client_close(l->clients[i], NULL, NULL);
	}
	uv_close((uv_handle_t *)&l->timer, NULL);
}

static void state_cb(void *ctx, bool up, int err)
{
	load *l = ctx;

	(void)err;
	if (!up || l->started || l->stopped)
		return;
	if (++l->up < l->n_conns)
		return;
	l->started = true;
	uv_timer_stop(&l->timer);
	uv_timer_start(&l->timer, window_end_cb, (uint64_t)(g.seconds * 1000), 0);
	cpu_take(&l->c0);
	l->t0 = now_s();
	for (int i = 0; i < l->n_conns * l->depth; i++)
		issue(&l->slots[i]);
}

typedef struct result {
	double rate;                 /* answers per second */
	double mb_s;                 /* body MB/s for uploads */
	double self_cpu;             /* fraction of one core */
	double server_cpu;
	uint64_t done;
	uint64_t errors;
	int first_err;
} result;

static result run_load(enum load_kind kind, bool tcp, int n_conns, int depth)
{
	load *l = eng_calloc(1, sizeof(*l));
	rpc_client_config cfg;
	result r;

	memset(&r, 0, sizeof(r));
	l->kind = kind;
	l->tcp = tcp;
	l->n_conns = n_conns;
	l->depth = depth;
	l->clients = eng_calloc((size_t)n_conns, sizeof(*l->clients));
	l->slots = eng_calloc((size_t)(n_conns * depth), sizeof(*l->slots));
	if (kind == LOAD_PING) {
		rpc_put_bytes(&l->simple_req, RPC_T_ECHO, "bench", 5);
	} else if (kind == LOAD_STATUS || kind == LOAD_FETCH_META) {
		rpc_put_bytes(&l->simple_req, RPC_T_SESSION, g.session,
			      g.session_len);
		rpc_put_str(&l->simple_req, RPC_T_MAILBOX, "INBOX");
		if (kind == LOAD_FETCH_META) {
			uint8_t set[8] = { 0, 0, 0, 1, 0, 0, 0, FETCH_UIDS };

			rpc_put_bytes(&l->simple_req, RPC_T_UIDSET, set,
				      sizeof(set));
		}
	}
	uv_loop_init(&l->loop);
	uv_timer_init(&l->loop, &l->timer);
	l->timer.data = l;
	memset(&cfg, 0, sizeof(cfg));
	if (tcp) {
		cfg.host = "127.0.0.1";
		cfg.port = g.tcp_port;
	} else {
		cfg.unix_path = g.unix_path;
	}
	cfg.secret = g.secret;
	cfg.peer_name = PEER_NAME;
	cfg.timeout_ms = 60000;
	cfg.on_state = state_cb;
	cfg.state_ctx = l;
	for (int i = 0; i < n_conns; i++) {
		int rc = rpc_client_new(&l->loop, &cfg, &l->clients[i]);

		if (rc != 0)
			die("rpc_client_new", rc);
		for (int k = 0; k < depth; k++) {
			l->slots[i * depth + k].l = l;
			l->slots[i * depth + k].c = l->clients[i];
		}
	}
	/* Until all are up; then the same timer ends the window. */
	uv_timer_start(&l->timer, window_end_cb, 15000, 0);
	uv_run(&l->loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&l->loop) != 0)
		fprintf(stderr, "bench-sqlited: a handle was left open\n");
	if (l->failed)
		die("connections did not come up", RPC_EUNAVAILABLE);
	{
		double dt = l->t1 - l->t0;

		r.done = l->done;
		r.rate = (double)l->done / dt;
		r.mb_s = (double)l->bytes / dt / 1e6;
		r.self_cpu = (l->c1.self_s - l->c0.self_s) / dt;
		r.server_cpu = (l->c1.server_s - l->c0.server_s) / dt;
		r.errors = l->errors;
		r.first_err = l->first_err;
	}
	eng_buf_free(&l->simple_req);
	free(l->slots);
	free(l->clients);
	free(l);
	return r;
}

/* ---- statistics ---- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
	size_t i;

	qsort(v, n, sizeof(*v), cmp_double);
	i = (size_t)(p * (double)(n - 1) + 0.5);
	return v[i < n ? i : n - 1];
}

/* Runs a load REPEATS times and prints one table row. */
static void row(const char *name, enum load_kind kind, bool tcp, int n_conns,
		int depth, bool upload)
{
	double rate[REPEATS], mb[REPEATS], self[REPEATS], srv[REPEATS];
	uint64_t errors = 0;
	int first_err = 0;
	char who[32];

	for (int i = 0; i < REPEATS; i++) {
		result r = run_load(kind, tcp, n_conns, depth);

		rate[i] = r.rate;
		mb[i] = r.mb_s;
		self[i] = r.self_cpu;
		srv[i] = r.server_cpu;
		if (r.errors > 0 && errors == 0)
			first_err = r.first_err;
		errors += r.errors;
	}
	snprintf(who, sizeof(who), "%d x %d", n_conns, depth);
	{
		double med = pct(rate, REPEATS, 0.5);

		printf("| %-26s | %-4s | %-7s | %9.0f | %6.0f-%-6.0f |", name,
		       tcp ? "tcp" : "unix", who, med, rate[0],
		       rate[REPEATS - 1]);
	}
	if (upload)
		printf(" %5.1f |", pct(mb, REPEATS, 0.5));
	else
		printf("     - |");
	printf(" %3.0f%% | %3.0f%% |", 100 * pct(self, REPEATS, 0.5),
	       100 * pct(srv, REPEATS, 0.5));
	if (errors > 0)
		printf(" %" PRIu64 " errors, first: %s", errors,
		       rpc_strerror(first_err));
	printf("\n");
	fflush(stdout);
}

static void table_head(void)
{
	printf("| %-26s | %-4s | %-7s | %9s | %-13s | %5s | %4s | %4s |\n",
	       "request", "via", "conns x depth", "median/s", "min-max",
	       "MB/s", "gen", "sqlited");
	printf("|---|---|---|---:|---|---:|---:|---:|\n");
}

/* ---- blocking helpers (rpc_sync) ---- */

static rpc_sync *sync_connect(void)
{
	rpc_sync *c = NULL;
	int rc = rpc_sync_connect_unix(g.unix_path, g.secret, PEER_NAME,
				       120000, &c);

	if (rc != 0)
		die("connect", rc);
	return c;
}

/* UNLOCK; the session into sess (may be NULL). Returns the seconds taken. */
static double unlock(rpc_sync *c, const char *alias, const char *pw,
		     uint8_t *sess, size_t *sess_len)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	const uint8_t *p;
	size_t n;
	double t0, t;
	int rc;

	rpc_put_str(&req, RPC_T_ALIAS, alias);
	rpc_put_str(&req, RPC_T_PASSWORD, pw);
	t0 = now_s();
	rc = rpc_sync_call(c, RPC_OP_UNLOCK, req.data, req.len, &resp);
	t = now_s() - t0;
	if (rc != 0)
		die("UNLOCK", rc);
	if (rpc_get_bytes(&resp.view, RPC_T_SESSION, &p, &n) != 0 || n > 64)
		die("UNLOCK answer", RPC_EMISSING);
	if (sess != NULL) {
		memcpy(sess, p, n);
		*sess_len = n;
	}
	eng_buf_free_wipe(&req);
	rpc_sync_resp_clear(&resp);
	return t;
}

static void lock(rpc_sync *c, const uint8_t *sess, size_t sess_len)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	int rc;

	rpc_put_bytes(&req, RPC_T_SESSION, sess, sess_len);
	rc = rpc_sync_call(c, RPC_OP_LOCK, req.data, req.len, &resp);
	if (rc != 0)
		die("LOCK", rc);
	eng_buf_free(&req);
	rpc_sync_resp_clear(&resp);
}

/* INBOX's MESSAGES; ENG_EBUSY (the alias's queue is full) is retried. */
static uint64_t inbox_messages(rpc_sync *c)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	rpc_view info;
	uint64_t n = 0;
	int rc;

	rpc_put_bytes(&req, RPC_T_SESSION, g.session, g.session_len);
	rpc_put_str(&req, RPC_T_MAILBOX, "INBOX");
	for (int tries = 0;; tries++) {
		rc = rpc_sync_call(c, RPC_OP_MAILBOX_STATUS, req.data, req.len,
				   &resp);
		if (rc != ENG_EBUSY || tries > 3000)
			break;
		usleep(20 * 1000);
	}
	if (rc != 0)
		die("MAILBOX_STATUS", rc);
	if (rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO, &info) != 0 ||
	    rpc_get_u64(&info, RPC_T_MESSAGES, &n) != 0)
		die("MAILBOX_STATUS answer", RPC_EMISSING);
	eng_buf_free(&req);
	rpc_sync_resp_clear(&resp);
	return n;
}

/* A counter of STATS by name (0 if absent). */
static uint64_t stat_value(rpc_sync *c, const char *name)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	const rpc_field *f;
	rpc_iter it;
	uint64_t v = 0;
	int rc = rpc_sync_call(c, RPC_OP_STATS, NULL, 0, &resp);

	if (rc != 0)
		die("STATS", rc);
	rpc_iter_init(&it, &resp.view);
	while ((f = rpc_iter_next(&it, RPC_T_STAT)) != NULL) {
		rpc_view st = rpc_field_group(f);
		const uint8_t *p;
		size_t n;

		if (rpc_get_bytes(&st, RPC_T_NAME, &p, &n) == 0 &&
		    n == strlen(name) && memcmp(p, name, n) == 0) {
			rpc_get_u64(&st, RPC_T_VALUE, &v);
			break;
		}
	}
	rpc_sync_resp_clear(&resp);
	return v;
}

static void print_latency(const char *name, double *v, size_t n)
{
	double lo, hi, med, p95;

	med = pct(v, n, 0.5);
	p95 = pct(v, n, 0.95);
	lo = v[0];
	hi = v[n - 1];
	printf("| %-44s | %3zu | %7.1f | %7.1f | %7.1f-%-7.1f |\n", name, n,
	       med * 1e3, p95 * 1e3, lo * 1e3, hi * 1e3);
}

/*
 * First unlock: the alias's database is closed (db_idle_seconds = 0 and
 * LOCK before; the housekeeping timer closes it within a second, and we
 * wait until STATS says so): Argon2id, then opening the SQLCipher
 * database.
 * Repeated unlock: a second session of an alias whose database is open
 * (the open alias, which holds our main session): Argon2id only.
 */
static void bench_unlock(rpc_sync *c)
{
	double cold[COLD_UNLOCKS], warm[WARM_UNLOCKS], kdf[5];
	uint8_t sess[64];
	size_t sess_len;

	for (int i = 0; i < COLD_UNLOCKS; i++) {
		/* Only the open alias may be open: wait for the close. */
		for (int w = 0; stat_value(c, "aliases_open") > 1; w++) {
			if (w > 100)
				die("the unlock alias stays open", ENG_EBUSY);
			usleep(100 * 1000);
		}
		cold[i] = unlock(c, g.unlock_alias, g.pw_unlock, sess, &sess_len);
		lock(c, sess, sess_len);
	}
	for (int i = 0; i < WARM_UNLOCKS; i++) {
		warm[i] = unlock(c, g.open_alias, g.pw_open, sess, &sess_len);
		lock(c, sess, sess_len);
	}
	/* The bare KDF at the default cost, in this process, for reference. */
	for (int i = 0; i < 5; i++) {
		uint8_t out[32], salt[crypto_pwhash_SALTBYTES] = { 0 };
		double t0 = now_s();

		if (crypto_pwhash(out, sizeof(out), "password", 8, salt, 3,
				  64u << 20, crypto_pwhash_ALG_ARGON2ID13) != 0)
			die("crypto_pwhash", ENG_EIO);
		kdf[i] = now_s() - t0;
	}
	printf("| %-44s | %3s | %7s | %7s | %-15s |\n", "unlock (one at a time, unix socket)",
	       "n", "med ms", "p95 ms", "min-max ms");
	printf("|---|---:|---:|---:|---|\n");
	print_latency("first unlock (database closed)", cold, COLD_UNLOCKS);
	print_latency("repeated unlock (database open)", warm, WARM_UNLOCKS);
	print_latency("bare crypto_pwhash, ops 3, 64 MiB (this process)", kdf, 5);
	printf("\n");
	fflush(stdout);
}

/* DELIVER to the open alias, then the time until INBOX has them all. */
static void bench_deliver_open_drain(rpc_sync *c)
{
	uint64_t before = inbox_messages(c), sent = 0, have;
	double t0 = now_s(), t;
	result r = run_load(LOAD_DELIVER_OPEN, false, 10, 1);

	sent = r.done;
	/* Answers that came after the window also delivered a message. */
	for (;;) {
		have = inbox_messages(c);
		t = now_s() - t0;
		if (have >= before + sent || t > 300)
			break;
		usleep(20 * 1000);
	}
	printf("DELIVER to the open alias, 10 x 1, one run: %.0f answers/s; "
	       "%" PRIu64 " new messages in INBOX %.1f s after the first DELIVER: "
	       "drained at >= %.0f msgs/s\n",
	       r.rate, have - before, t, (double)(have - before) / t);
}

static void usage(void)
{
	fprintf(stderr, "usage: bench-sqlited --unix PATH --tcp-port N --secret FILE "
		"--sqlited-pid PID --open ALIAS --locked ALIAS --unlock ALIAS "
		"[--seconds N]\n(run bench/sqlited.sh)\n");
	exit(2);
}

static void read_secret(const char *path)
{
	char hex[130];
	size_t n;
	FILE *f = fopen(path, "r");

	if (f == NULL)
		die(path, ENG_EIO);
	n = fread(hex, 1, sizeof(hex) - 1, f);
	fclose(f);
	hex[n] = '\0';
	if (sodium_hex2bin(g.secret, sizeof(g.secret), hex, n, "\r\n", &n,
			   NULL) != 0 || n != sizeof(g.secret))
		die("rpc secret file", ENG_EMALFORMED);
	sodium_memzero(hex, sizeof(hex));
}

int main(int argc, char **argv)
{
	rpc_sync *c;

	g.seconds = 3;
	g.clk_tck = sysconf(_SC_CLK_TCK);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (v == NULL)
			usage();
		if (strcmp(a, "--unix") == 0)
			g.unix_path = v;
		else if (strcmp(a, "--tcp-port") == 0)
			g.tcp_port = (uint16_t)atoi(v);
		else if (strcmp(a, "--secret") == 0)
			read_secret(v);
		else if (strcmp(a, "--sqlited-pid") == 0)
			g.sqlited_pid = atoi(v);
		else if (strcmp(a, "--open") == 0)
			g.open_alias = v;
		else if (strcmp(a, "--locked") == 0)
			g.locked_alias = v;
		else if (strcmp(a, "--unlock") == 0)
			g.unlock_alias = v;
		else if (strcmp(a, "--seconds") == 0)
			g.seconds = atof(v);
		else
			usage();
		i++;
	}
	g.pw_open = getenv("BENCH_PW_OPEN");
	g.pw_unlock = getenv("BENCH_PW_UNLOCK");
	if (g.unix_path == NULL || g.tcp_port == 0 || g.sqlited_pid <= 0 ||
	    g.open_alias == NULL || g.locked_alias == NULL ||
	    g.unlock_alias == NULL || g.pw_open == NULL || g.pw_unlock == NULL ||
	    g.seconds <= 0)
		usage();
	if (sodium_init() < 0)
		die("sodium_init", ENG_EIO);

	c = sync_connect();
	unlock(c, g.open_alias, g.pw_open, g.session, &g.session_len);
	gen_messages();
	printf("%d messages, %.1f KB on average (4-50 KB); %g s per run, "
	       "%d runs per figure\n\n", N_MESSAGES,
	       (double)msgs_total_bytes / N_MESSAGES / 1024, g.seconds, REPEATS);

	/* BENCH_ONLY_APPEND=1: the two APPEND rows, then the number of
	 * messages stored (to divide strace's counts by). */
	if (getenv("BENCH_ONLY_APPEND") == NULL)
		bench_unlock(c);

	table_head();
	row("APPEND", LOAD_APPEND, false, 1, 1, true);
	row("APPEND", LOAD_APPEND, false, 10, 1, true);
	if (getenv("BENCH_ONLY_APPEND") != NULL) {
		printf("INBOX messages: %u\n", (unsigned)inbox_messages(c));
		rpc_sync_free(&c);
		return 0;
	}
	if (inbox_messages(c) < FETCH_UIDS)
		die("INBOX has fewer than 100 messages", ENG_ENOTFOUND);
	for (int tcp = 0; tcp < 2; tcp++) {
		row("PING", LOAD_PING, tcp, 1, 1, false);
		row("PING", LOAD_PING, tcp, 50, 1, false);
		row("PING", LOAD_PING, tcp, 1, 50, false);
		row("MAILBOX_STATUS", LOAD_STATUS, tcp, 1, 1, false);
		row("MAILBOX_STATUS", LOAD_STATUS, tcp, 50, 1, false);
		row("FETCH_META 100 msgs", LOAD_FETCH_META, tcp, 1, 1, false);
		row("FETCH_META 100 msgs", LOAD_FETCH_META, tcp, 50, 1, false);
	}
	row("DELIVER to locked alias", LOAD_DELIVER_LOCKED, false, 1, 1, true);
	row("DELIVER to locked alias", LOAD_DELIVER_LOCKED, false, 10, 1, true);
	row("DELIVER to open alias", LOAD_DELIVER_OPEN, false, 1, 1, true);
	row("DELIVER to open alias", LOAD_DELIVER_OPEN, false, 10, 1, true);
	printf("\n");
	bench_deliver_open_drain(c);

	rpc_sync_free(&c);
	for (unsigned i = 0; i < N_MESSAGES; i++) {
		eng_buf_free(&msgs[i].body);
		eng_buf_free_wipe(&msgs[i].append_req);
		eng_buf_free(&msgs[i].deliver_locked_req);
		eng_buf_free(&msgs[i].deliver_open_req);
	}
	sodium_memzero(&g, sizeof(g));
	return 0;
}
