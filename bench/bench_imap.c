/*
 * bench-imap: the IMAP load generator of bench/imap.sh (Sealmail against
 * Dovecot). One libuv loop in one thread drives many connections, each a
 * small state machine (a "script") that sends one command at a time and
 * reacts to the server's lines; literals in responses are counted and
 * skipped without copying, so one core can read hundreds of MB/s.
 *
 *   bench-imap MODE --port P [--tls] --user U --pass W [options]
 *
 * MODE: append, select, fetchhdr, fetchbody, search, mixed, login, idle
 * (see usage()); and mbox, which talks to no server: it writes the same
 * messages append would send into an mbox file (bench/imap.sh fills
 * Dovecot's big mailbox from it with doveadm import). --user may hold one %d (replaced by 1..--users, conn i
 * using user i % users + 1). Every run prints one line
 *
 *   RESULT mode value=V unit=U wall=S ops=N srv_cpu=S gen_cpu=S ...
 *
 * srv_cpu is the CPU (utime+stime, with children's) of the server
 * process trees given by --pids in the measured window; gen_cpu is this
 * program's own, so a reader sees whether the generator was the limit.
 * idle prints the summed PSS (/proc/PID/smaps_rollup) of the same trees,
 * read --settle seconds after the last connection went IDLE, and then
 * (with --settle-cmd) only once that command exits 0, run every 0.5 s up
 * to --settle-max seconds: the server says it is at rest (imap.sh: sqlited
 * has released every alias's database), so the figure does not depend on
 * how fast a loaded machine got there. settled_s= and settle_ok= say when
 * and whether it did.
 *
 * Rules: a benchmark, not a test: it exits non-zero on the first
 * unexpected answer (a NO where OK was expected, a closed connection) and
 * says which, so a broken server cannot produce a figure. Messages come
 * from msggen.c (fixed seed): the same bytes for every server; append
 * generates them all before its window opens, up to PREGEN_MAX messages,
 * and above that (a fill, not a figure: 100,000 messages are ~2.5 GB)
 * each message when its APPEND is sent, in the same order. Source
 * addresses are spread over 127.1.0.0/16 (8 connections each) because
 * servers cap connections per client address.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "msggen.h"

#define SEED 0x5ea1u            /* bench-engine's: the same messages */
#define SMALL_SEED 0x51a11u     /* the mixed workload's appended messages */
#define N_SMALL 64
/*
 * Connections per source address: under Sealmail's default per-address
 * cap (imap_max_conns_per_ip 20) with room for the mixed workload's
 * reconnects, whose old connection the server may not have closed yet
 * when the new one arrives (16 left 4 of room: a loaded run saw a BYE).
 */
#define PER_SOURCE_IP 8
#define MAX_TREE 65536
#define READ_BUF (256 * 1024)
#define LINE_MAX_BYTES (64u << 20)
#define PREGEN_MAX 20000

enum ev { EV_GREETING, EV_UNTAGGED, EV_CONT, EV_TAGGED };
enum mode { M_APPEND, M_SELECT, M_FETCHHDR, M_FETCHBODY, M_SEARCH, M_MIXED,
	    M_LOGIN, M_IDLE, M_MBOX };

struct conn;
typedef void script_fn(struct conn *c, enum ev ev, const char *line, bool ok);

struct conn {
	uv_tcp_t tcp;
	uv_connect_t creq;
	int id;
	bool open, greeted, counted_ready, logging_out, reopen;
	SSL *ssl;
	BIO *rbio, *wbio;
	char *line;
	size_t line_len, line_cap;
	uint64_t lit_left, lit_bytes;
	char tag[16];
	unsigned tagn;
	int step, user;
	double t_cmd;
	script_fn *script;
	/* mixed: the mailbox's size at SELECT, the appended message's UID */
	unsigned exists, appended_uid;
	struct msggen own;      /* append above PREGEN_MAX: its message */
};

static struct {
	enum mode mode;
	const char *host, *user_fmt, *pass, *mailbox, *query, *pids, *out, *settle_cmd;
	int port, users, user_base, conns, count, first, repeat, setup_limit;
	bool tls, hold;
	double seconds, settle, max_seconds, settle_max;
} opt = {
	.host = "127.0.0.1", .user_fmt = NULL, .pass = NULL, .mailbox = "INBOX",
	.query = "FROM \"Kowalski\"", .users = 1, .user_base = 1, .conns = 1,
	.count = 1000, .repeat = 3, .setup_limit = 100, .seconds = 10,
	.settle = 3, .max_seconds = 60, .settle_max = 60,
};

static struct {
	uv_loop_t *loop;
	SSL_CTX *ssl_ctx;
	struct conn *conns;
	struct conn *holders;
	int n_ready, n_done, n_setting_up, next_to_open, next_user;
	bool started, stopping;
	double t0, t1;
	double srv_cpu0, srv_cpu1, gen_cpu0, gen_cpu1;
	uint64_t ops, bytes, items, errors, next_msg, hits;
	double *times;
	int n_times;
	struct msggen *msgs;    /* append: pre-generated, indices first.. */
	bool lazy;              /* append: generated as sent (count > PREGEN_MAX) */
	struct msggen small[N_SMALL];
	double pss_before_kib;
	double t_all_idle;      /* idle: when the last connection went IDLE */
	char pss_roots_before[256];
	uv_timer_t timer;
	char readbuf[READ_BUF];
} g;

static void conn_open(struct conn *c);
static script_fn script_append, script_select, script_fetch, script_search,
	script_mixed, script_login, script_idle, script_hold;

/* ---- time, CPU and memory of the server process trees ---- */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double gen_cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ppid and utime+stime+cutime+cstime (ticks) of a process; false if gone. */
static bool proc_stat(long pid, long *ppid, double *ticks)
{
	char path[64], buf[2048], *p;
	FILE *f;
	size_t n;
	unsigned long long ut, st;
	long long cut, cst;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	f = fopen(path, "r");
	if (f == NULL)
		return false;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')');      /* the command name may hold spaces */
	if (p == NULL)
		return false;
	/* ") S ppid pgrp sess tty tpgid flags minflt cminflt majflt cmajflt ut st cut cst" */
	if (sscanf(p + 2, "%*c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld",
		   ppid, &ut, &st, &cut, &cst) != 5)
		return false;
	*ticks = (double)(ut + st) + (double)(cut + cst);
	return true;
}

/* The roots in list ("pid,pid") and all their descendants, at this moment. */
static int process_tree(const char *roots, long *out, int max)
{
	static long pids[MAX_TREE], ppids[MAX_TREE];
	int n = 0, m = 0;
	DIR *d = opendir("/proc");
	struct dirent *e;
	char *list, *tok, *save = NULL;
	double ticks;

	while (d != NULL && (e = readdir(d)) != NULL && n < MAX_TREE) {
		long pid = strtol(e->d_name, NULL, 10);

		if (pid > 0 && proc_stat(pid, &ppids[n], &ticks))
			pids[n++] = pid;
	}
	if (d != NULL)
		closedir(d);
	list = strdup(roots);
	for (tok = strtok_r(list, ",", &save); tok && m < max; tok = strtok_r(NULL, ",", &save))
		out[m++] = strtol(tok, NULL, 10);
	free(list);
	for (int i = 0; i < m; i++)        /* breadth first: children of out[i] */
		for (int j = 0; j < n && m < max; j++)
			if (ppids[j] == out[i])
				out[m++] = pids[j];
	return m;
}

static int server_tree(long *out, int max)
{
	return process_tree(opt.pids != NULL ? opt.pids : "", out, max);
}

static double server_cpu(void)
{
	static long tree[MAX_TREE];
	int n = server_tree(tree, MAX_TREE);
	double sum = 0, ticks;
	long ppid;

	for (int i = 0; i < n; i++)
		if (proc_stat(tree[i], &ppid, &ticks))
			sum += ticks;
	return sum / (double)sysconf(_SC_CLK_TCK);
}

static double tree_pss_kib(const char *roots, int *nprocs)
{
	static long tree[MAX_TREE];
	int n = process_tree(roots, tree, MAX_TREE);
	double sum = 0;

	*nprocs = n;
	for (int i = 0; i < n; i++) {
		char path[64], line[256];
		FILE *f;
		long kib;

		snprintf(path, sizeof(path), "/proc/%ld/smaps_rollup", tree[i]);
		f = fopen(path, "r");
		if (f == NULL)
			continue;
		while (fgets(line, sizeof(line), f) != NULL)
			if (sscanf(line, "Pss: %ld kB", &kib) == 1)
				sum += (double)kib;
		fclose(f);
	}
	return sum;
}

static double server_pss_kib(int *nprocs)
{
	return tree_pss_kib(opt.pids != NULL ? opt.pids : "", nprocs);
}

/* "pid:KiB,pid:KiB": the PSS of each --pids root with its descendants. */
static void pss_by_root(char *out, size_t size)
{
	char *list = strdup(opt.pids != NULL ? opt.pids : ""), *tok, *save = NULL;
	size_t used = 0;
	int nprocs;

	out[0] = '\0';
	for (tok = strtok_r(list, ",", &save); tok && used < size;
	     tok = strtok_r(NULL, ",", &save)) {
		int n = snprintf(out + used, size - used, "%s%s:%.0f", used ? "," : "", tok,
				 tree_pss_kib(tok, &nprocs));

		used += n > 0 ? (size_t)n : 0;
	}
	free(list);
}

/* ---- failing loudly ---- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("bench-imap: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static void fail(struct conn *c, const char *what, const char *line)
	__attribute__((noreturn));
static void fail(struct conn *c, const char *what, const char *line)
{
	die("conn %d (user %d): %s: %.300s", c->id, c->user, what, line ? line : "");
}

/* ---- sending ---- */

struct wreq {
	uv_write_t req;
	char *owned;
};

static void on_written(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;

	if (status < 0 && !g.stopping)
		die("write: %s", uv_strerror(status));
	free(w->owned);
	free(w);
}

/* data stays valid until written (owned: freed then). */
static void wire_write(struct conn *c, char *data, size_t len, bool owned)
{
	struct wreq *w = malloc(sizeof(*w));
	uv_buf_t b = uv_buf_init(data, (unsigned)len);

	if (w == NULL)
		abort();
	w->owned = owned ? data : NULL;
	if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
		fail(c, "uv_write failed", NULL);
}

static void tls_flush(struct conn *c)
{
	int pending;

	while ((pending = (int)BIO_ctrl_pending(c->wbio)) > 0) {
		char *buf = malloc((size_t)pending);

		if (buf == NULL)
			abort();
		BIO_read(c->wbio, buf, pending);
		wire_write(c, buf, (size_t)pending, true);
	}
}

/* Sends len bytes of data that stays valid until the write completes. */
static void send_static(struct conn *c, const char *data, size_t len)
{
	if (c->ssl == NULL) {
		wire_write(c, (char *)data, len, false);
		return;
	}
	if (SSL_write(c->ssl, data, (int)len) != (int)len)
		fail(c, "SSL_write failed", NULL);
	tls_flush(c);
}

static void send_copy(struct conn *c, const char *data, size_t len)
{
	char *copy;

	if (c->ssl != NULL) {
		send_static(c, data, len);      /* SSL_write copies */
		return;
	}
	copy = malloc(len);
	if (copy == NULL)
		abort();
	memcpy(copy, data, len);
	wire_write(c, copy, len, true);
}

/* Sends "TAG command\r\n" with a fresh tag and starts its clock. */
static void cmd(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cmd(struct conn *c, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	snprintf(c->tag, sizeof(c->tag), "a%u", ++c->tagn);
	n = snprintf(buf, sizeof(buf), "%s ", c->tag);
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n - 2, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 3)
		fail(c, "command too long", NULL);
	buf[n++] = '\r';
	buf[n++] = '\n';
	c->t_cmd = now_s();
	c->logging_out = strcmp(fmt, "LOGOUT") == 0;
	send_copy(c, buf, (size_t)n);
}

/* --user with its "%d" or "%0Nd" replaced by the connection's user number. */
static void user_name(char *out, size_t size, int n)
{
	const char *f = opt.user_fmt, *pct = strchr(f, '%');
	int width = 0;

	if (pct == NULL) {
		snprintf(out, size, "%s", f);
		return;
	}
	if (pct[1] == '0')
		width = pct[2] - '0';
	snprintf(out, size, "%.*s%0*d%s", (int)(pct - f), f, width, n,
		 strchr(pct, 'd') + 1);
}

static void send_login(struct conn *c)
{
	char user[256];

	user_name(user, sizeof(user), c->user);
	cmd(c, "LOGIN \"%s\" \"%s\"", user, opt.pass);
}

/* ---- receiving: logical lines, literals counted and skipped ---- */

static void line_put(struct conn *c, const char *data, size_t len)
{
	if (c->line_len + len + 1 > c->line_cap) {
		size_t cap = (c->line_len + len + 1) * 2;

		if (cap > LINE_MAX_BYTES)
			fail(c, "response line too long", NULL);
		c->line = realloc(c->line, cap);
		if (c->line == NULL)
			abort();
		c->line_cap = cap;
	}
	memcpy(c->line + c->line_len, data, len);
	c->line_len += len;
	c->line[c->line_len] = '\0';
}

/* The logical line ends in "{N}" or "{N+}" (CRLF stripped): N, or -1. */
static int64_t literal_at_end(const struct conn *c)
{
	size_t i = c->line_len;
	uint64_t n = 0, mul = 1;

	if (i < 3 || c->line[i - 1] != '}')
		return -1;
	i--;
	if (c->line[i - 1] == '+')
		i--;
	if (i == 0 || c->line[i - 1] < '0' || c->line[i - 1] > '9')
		return -1;
	while (i > 0 && c->line[i - 1] >= '0' && c->line[i - 1] <= '9') {
		n += (uint64_t)(c->line[i - 1] - '0') * mul;
		mul *= 10;
		i--;
	}
	return (i > 0 && c->line[i - 1] == '{') ? (int64_t)n : -1;
}

static void dispatch(struct conn *c)
{
	const char *l = c->line;
	size_t tl = strlen(c->tag);

	if (!c->greeted) {
		c->greeted = true;
		if (strncmp(l, "* OK", 4) != 0)
			fail(c, "greeting", l);
		c->script(c, EV_GREETING, l, true);
	} else if (l[0] == '+') {
		c->script(c, EV_CONT, l, true);
	} else if (l[0] == '*') {
		c->script(c, EV_UNTAGGED, l, true);
	} else if (strncmp(l, c->tag, tl) == 0 && l[tl] == ' ') {
		c->script(c, EV_TAGGED, l, strncmp(l + tl + 1, "OK", 2) == 0);
	} else {
		fail(c, "unexpected line", l);
	}
}

static void feed(struct conn *c, const char *data, size_t n)
{
	while (n > 0 && c->open) {
		const char *nl;
		size_t k;

		if (c->lit_left > 0) {
			k = n < c->lit_left ? n : (size_t)c->lit_left;
			c->lit_left -= k;
			c->lit_bytes += k;
			g.bytes += k;
			data += k;
			n -= k;
			continue;
		}
		nl = memchr(data, '\n', n);
		k = nl ? (size_t)(nl - data) + 1 : n;
		line_put(c, data, k);
		data += k;
		n -= k;
		if (nl == NULL)
			break;
		c->line_len -= (c->line_len >= 2 && c->line[c->line_len - 2] == '\r') ? 2 : 1;
		c->line[c->line_len] = '\0';
		{
			int64_t lit = literal_at_end(c);

			if (lit >= 0) {
				c->lit_left = (uint64_t)lit;
				continue;      /* the line goes on after the literal */
			}
		}
		dispatch(c);
		c->line_len = 0;
		c->lit_bytes = 0;
	}
}

/* ---- connections ---- */

static void on_closed(uv_handle_t *h)
{
	struct conn *c = h->data;

	if (c->ssl != NULL)
		SSL_free(c->ssl);     /* frees the BIOs */
	c->ssl = NULL;
	if (c->reopen)
		conn_open(c);
}

static void conn_close(struct conn *c)
{
	if (!c->open)
		return;
	c->open = false;
	uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	*buf = uv_buf_init(g.readbuf, sizeof(g.readbuf));
}

static void tls_feed(struct conn *c, const char *data, size_t n)
{
	static char plain[READ_BUF];
	int r;

	BIO_write(c->rbio, data, (int)n);
	if (!SSL_is_init_finished(c->ssl)) {
		r = SSL_do_handshake(c->ssl);
		tls_flush(c);
		if (r != 1) {
			int e = SSL_get_error(c->ssl, r);

			if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
				fail(c, "TLS handshake failed", NULL);
			return;
		}
	}
	while (c->open && (r = SSL_read(c->ssl, plain, sizeof(plain))) > 0)
		feed(c, plain, (size_t)r);
	if (c->open)
		tls_flush(c);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;

	if (n < 0) {
		if (c->open && !c->logging_out && c->step != -2)
			fail(c, "connection closed by the server", uv_strerror((int)n));
		conn_close(c);
		return;
	}
	if (c->ssl != NULL)
		tls_feed(c, buf->base, (size_t)n);
	else
		feed(c, buf->base, (size_t)n);
}

static void on_connect(uv_connect_t *req, int status)
{
	struct conn *c = req->data;

	if (status < 0)
		fail(c, "connect", uv_strerror(status));
	uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
	if (opt.tls) {
		c->ssl = SSL_new(g.ssl_ctx);
		c->rbio = BIO_new(BIO_s_mem());
		c->wbio = BIO_new(BIO_s_mem());
		if (c->ssl == NULL || c->rbio == NULL || c->wbio == NULL)
			abort();
		SSL_set_bio(c->ssl, c->rbio, c->wbio);
		SSL_set_connect_state(c->ssl);
		SSL_do_handshake(c->ssl);
		tls_flush(c);
	}
}

/* Opens connection c (again): greeting, then its script runs. */
static void conn_open(struct conn *c)
{
	struct sockaddr_in src, dst;
	int ip = c->id / PER_SOURCE_IP + 1;
	char srcs[32];

	snprintf(srcs, sizeof(srcs), "127.1.%d.%d", (ip >> 8) & 255, ip & 255);
	uv_ip4_addr(srcs, 0, &src);
	uv_ip4_addr(opt.host, opt.port, &dst);
	c->open = true;
	c->reopen = false;
	c->logging_out = false;
	c->greeted = false;
	c->step = 0;
	c->line_len = 0;
	c->lit_left = c->lit_bytes = 0;
	uv_tcp_init(g.loop, &c->tcp);
	c->tcp.data = c;
	c->creq.data = c;
	uv_tcp_nodelay(&c->tcp, 1);
	if (uv_tcp_bind(&c->tcp, (struct sockaddr *)&src, 0) != 0)
		fail(c, "bind to the source address", srcs);
	if (uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&dst, on_connect) != 0)
		fail(c, "uv_tcp_connect", NULL);
}

/* ---- the measured window ---- */

static void print_result(const char *name, double value, const char *unit, const char *extra)
{
	double wall = g.t1 - g.t0;

	printf("RESULT %s value=%.3f unit=%s wall=%.3f ops=%" PRIu64 " bytes=%" PRIu64
	       " srv_cpu=%.3f gen_cpu=%.3f errors=%" PRIu64 "%s%s\n", name, value, unit, wall,
	       g.ops, g.bytes, g.srv_cpu1 - g.srv_cpu0, g.gen_cpu1 - g.gen_cpu0, g.errors,
	       extra ? " " : "", extra ? extra : "");
	fflush(stdout);
}

static void window_start(void)
{
	g.started = true;
	g.bytes = 0;
	g.srv_cpu0 = server_cpu();
	g.gen_cpu0 = gen_cpu();
	g.t0 = now_s();
}

static void window_end(void)
{
	g.t1 = now_s();
	g.srv_cpu1 = server_cpu();
	g.gen_cpu1 = gen_cpu();
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median_times(void)
{
	qsort(g.times, (size_t)g.n_times, sizeof(double), cmp_double);
	return g.n_times ? g.times[g.n_times / 2] : 0;
}

static void report(void)
{
	char extra[256];
	double wall = g.t1 - g.t0;

	switch (opt.mode) {
	case M_APPEND:
		print_result("append", (double)g.ops / wall, "msgs/s", NULL);
		break;
	case M_SELECT:
		snprintf(extra, sizeof(extra), "first_ms=%.3f exists=%" PRIu64,
			 g.n_times ? g.times[0] * 1000 : 0, g.items);
		print_result("select", median_times() * 1000, "ms", extra);
		break;
	case M_FETCHHDR:
	case M_FETCHBODY:
		snprintf(extra, sizeof(extra), "msgs_per_s=%.1f mb_per_s=%.2f median_s=%.3f"
			 " fetched=%" PRIu64, (double)g.items / wall, (double)g.bytes / 1e6 / wall,
			 median_times(), g.n_times ? g.items / (uint64_t)g.n_times : 0);
		print_result(opt.mode == M_FETCHHDR ? "fetchhdr" : "fetchbody",
			     opt.mode == M_FETCHHDR ? (double)g.items / wall
						    : (double)g.bytes / 1e6 / wall,
			     opt.mode == M_FETCHHDR ? "msgs/s" : "MB/s", extra);
		break;
	case M_SEARCH:
		snprintf(extra, sizeof(extra), "hits=%" PRIu64 " first_ms=%.3f", g.hits,
			 g.n_times ? g.times[0] * 1000 : 0);
		print_result("search", median_times() * 1000, "ms", extra);   /* of the runs made (ops) */
		break;
	case M_MIXED:
		snprintf(extra, sizeof(extra), "sessions=%" PRIu64, g.items);
		print_result("mixed", (double)g.ops / wall, "ops/s", extra);
		break;
	case M_LOGIN:
		print_result("login", (double)g.ops / wall, "logins/s", NULL);
		break;
	case M_IDLE:
	case M_MBOX:
		break;
	}
}

static void finish(void)
{
	if (!g.started)
		die("nothing was measured");
	if (g.t1 == 0)
		window_end();
	report();
	uv_stop(g.loop);
}

static void on_time_up(uv_timer_t *t)
{
	(void)t;
	window_end();
	g.stopping = true;
}

/* Closes c and opens it again once closed (the next session). */
static void conn_reopen(struct conn *c)
{
	conn_close(c);
	c->reopen = true;
}

/* A connection is ready (logged in...): the window opens when all are. */
static void ready(struct conn *c)
{
	if (c->counted_ready)
		return;
	c->counted_ready = true;
	if (++g.n_ready < opt.conns)
		return;
	window_start();
	if (opt.mode == M_MIXED)
		uv_timer_start(&g.timer, on_time_up, (uint64_t)(opt.seconds * 1000), 0);
	for (int i = 0; i < opt.conns; i++)
		g.conns[i].script(&g.conns[i], EV_TAGGED, "", true);
}

/* A connection has nothing more to do. */
static void done(struct conn *c)
{
	c->step = -1;
	if (c->open)
		cmd(c, "LOGOUT");
	if (++g.n_done == opt.conns)
		finish();
}

/* "* N WORD": true and *n = N (sscanf alone cannot check the word). */
static bool untagged_num(const char *line, const char *word, unsigned *n)
{
	int end = 0;

	if (sscanf(line, "* %u %n", n, &end) != 1 || end == 0)
		return false;
	return strncmp(line + end, word, strlen(word)) == 0 && line[end + (int)strlen(word)] == '\0';
}

static void expect_ok(struct conn *c, const char *line, bool ok, const char *what)
{
	if (!ok)
		fail(c, what, line);
}

/* ---- the scripts ---- */

/* Greeting → LOGIN → ready; returns true once ready (and called again). */
static bool logged_in(struct conn *c, enum ev ev, const char *line, bool ok)
{
	if (c->counted_ready)
		return true;
	if (ev == EV_GREETING)
		send_login(c);
	else if (ev == EV_TAGGED) {
		expect_ok(c, line, ok, "LOGIN");
		if (opt.mode == M_APPEND || opt.mode == M_LOGIN) {
			ready(c);
		} else {
			c->step = 1;
			cmd(c, "SELECT \"%s\"", opt.mailbox);
			return false;
		}
	}
	return false;
}

/* The message c is appending (c->exists: its number from --first). */
static struct msggen *append_msg(struct conn *c)
{
	return g.lazy ? &c->own : &g.msgs[c->exists];
}

static void script_append(struct conn *c, enum ev ev, const char *line, bool ok)
{
	if (ev == EV_UNTAGGED || c->step < 0)
		return;
	if (!logged_in(c, ev, line, ok))
		return;
	if (ev == EV_CONT) {
		struct msggen *m = append_msg(c);

		send_static(c, m->buf, m->len);
		send_static(c, "\r\n", 2);
		return;
	}
	if (c->step == 1) {
		expect_ok(c, line, ok, "APPEND");
		g.ops++;
		g.bytes += append_msg(c)->len;
	}
	if (g.next_msg >= (uint64_t)opt.count) {
		done(c);
		return;
	}
	c->exists = (unsigned)g.next_msg++;
	if (g.lazy)      /* in sequence order: the generator is sequential */
		msggen_message(&c->own, (uint64_t)opt.first + c->exists);
	c->step = 1;
	cmd(c, "APPEND \"%s\" {%zu}", opt.mailbox, append_msg(c)->len);
}

/* Greeting → LOGIN → SELECT (untimed) → ready; true once ready. */
static bool selected(struct conn *c, enum ev ev, const char *line, bool ok)
{
	if (c->counted_ready)
		return true;
	if (c->step == 1 && ev == EV_TAGGED) {
		expect_ok(c, line, ok, "SELECT");
		ready(c);
		return false;
	}
	logged_in(c, ev, line, ok);
	return false;
}

static void timed_repeat(struct conn *c, const char *line, bool ok, const char *what,
			 void (*send)(struct conn *c))
{
	if (c->step == 2) {
		expect_ok(c, line, ok, what);
		g.times[g.n_times++] = now_s() - c->t_cmd;
		g.ops++;
	}
	/* --repeat times, but not past --max-seconds once one run is done */
	if (g.n_times >= opt.repeat || (g.n_times > 0 && now_s() - g.t0 > opt.max_seconds)) {
		window_end();
		done(c);
		return;
	}
	c->step = 2;
	send(c);
}

static void send_select(struct conn *c)
{
	cmd(c, "SELECT \"%s\"", opt.mailbox);
}

static void script_select(struct conn *c, enum ev ev, const char *line, bool ok)
{
	if (c->step < 0 || !selected(c, ev, line, ok))
		return;
	if (ev == EV_UNTAGGED) {
		unsigned n;

		if (untagged_num(line, "EXISTS", &n))
			g.items = n;
		return;
	}
	if (ev == EV_TAGGED)
		timed_repeat(c, line, ok, "SELECT", send_select);
}

static void send_fetch(struct conn *c)
{
	cmd(c, "UID FETCH 1:* %s", opt.mode == M_FETCHHDR ? "(FLAGS BODY.PEEK[HEADER])"
							   : "(BODY.PEEK[])");
}

static void script_fetch(struct conn *c, enum ev ev, const char *line, bool ok)
{
	if (c->step < 0 || !selected(c, ev, line, ok))
		return;
	if (ev == EV_UNTAGGED) {
		if (strstr(line, " FETCH ") != NULL && c->lit_bytes > 0)
			g.items++;
		return;
	}
	if (ev == EV_TAGGED)
		timed_repeat(c, line, ok, "UID FETCH", send_fetch);
}

static void send_search(struct conn *c)
{
	cmd(c, "SEARCH %s", opt.query);
}

static void script_search(struct conn *c, enum ev ev, const char *line, bool ok)
{
	if (c->step < 0 || !selected(c, ev, line, ok))
		return;
	if (ev == EV_UNTAGGED) {
		if (strncmp(line, "* SEARCH", 8) == 0) {
			uint64_t hits = 0;

			for (const char *p = line + 8; *p; p++)
				hits += (*p == ' ' && p[1] >= '0' && p[1] <= '9');
			g.hits = hits;
		}
		return;
	}
	if (ev == EV_TAGGED)
		timed_repeat(c, line, ok, "SEARCH", send_search);
}

/*
 * One mixed session per connection, again and again until the time is up:
 * LOGIN, SELECT INBOX, FETCH the newest 10 headers, FETCH one whole
 * message, STORE \Seen on it, APPEND a small message, UID STORE \Deleted
 * on that one, EXPUNGE, LOGOUT: 9 operations, the mailbox size unchanged.
 */
static void script_mixed(struct conn *c, enum ev ev, const char *line, bool ok)
{
	unsigned n, v, u, lo;

	if (ev == EV_UNTAGGED) {
		if (untagged_num(line, "EXISTS", &n))
			c->exists = n;
		else if (untagged_num(line, "EXPUNGE", &n) && c->exists > 0)
			c->exists--;
		return;
	}
	if (ev == EV_CONT) {
		const struct msggen *m = &g.small[(c->tagn + (unsigned)c->id) % N_SMALL];

		send_static(c, m->buf, m->len);
		send_static(c, "\r\n", 2);
		return;
	}
	if (ev == EV_GREETING) {
		c->step = 10;
		send_login(c);
		return;
	}
	if (c->step < 0)
		return;
	if (!ok && c->step == 10)
		fail(c, "LOGIN", line);
	if (!ok && g.errors++ < 5)
		fprintf(stderr, "bench-imap: mixed, conn %d step %d: %.200s\n", c->id, c->step,
			line);
	if (c->step != 11 && g.started && !g.stopping)
		g.ops++;
	lo = c->exists > 10 ? c->exists - 9 : 1;
	switch (c->step) {
	case 10:        /* LOGIN done */
		if (!c->counted_ready) {
			c->step = 11;
			ready(c);     /* the window opens once all are logged in */
			return;
		}
		/* fall through */
	case 11:
		if (g.stopping) {
			done(c);
			return;
		}
		c->step = 12;
		cmd(c, "SELECT INBOX");
		break;
	case 12:
		c->step = 13;
		cmd(c, "FETCH %u:%u (FLAGS BODY.PEEK[HEADER])", lo, c->exists ? c->exists : 1);
		break;
	case 13:
		c->step = 14;
		c->appended_uid = lo + (unsigned)((c->tagn * 7u) % 10u);
		if (c->appended_uid > c->exists)
			c->appended_uid = c->exists;
		cmd(c, "FETCH %u BODY.PEEK[]", c->appended_uid);
		break;
	case 14:
		c->step = 15;
		cmd(c, "STORE %u +FLAGS (\\Seen)", c->appended_uid);
		break;
	case 15:
		c->step = 16;
		cmd(c, "APPEND INBOX {%zu}", g.small[(c->tagn + 1 + (unsigned)c->id) % N_SMALL].len);
		break;
	case 16:
		if (sscanf(strstr(line, "[APPENDUID") ? strstr(line, "[APPENDUID") : "",
			   "[APPENDUID %u %u]", &v, &u) != 2) {
			if (ok)
				fail(c, "APPEND without APPENDUID", line);
			u = 0;
		}
		c->step = 17;
		if (u == 0)
			cmd(c, "NOOP");
		else
			cmd(c, "UID STORE %u +FLAGS.SILENT (\\Deleted)", u);
		break;
	case 17:
		c->step = 18;
		cmd(c, "EXPUNGE");
		break;
	case 18:
		c->step = 19;
		cmd(c, "LOGOUT");
		break;
	case 19:
		g.items++;
		conn_reopen(c);   /* the next session: greeting → step 10 */
		break;
	default:
		break;
	}
}

/* login: connect, LOGIN, LOGOUT, again; each LOGIN OK counts. */
static void script_login(struct conn *c, enum ev ev, const char *line, bool ok)
{
	if (ev == EV_UNTAGGED || c->step < 0)
		return;
	if (ev == EV_GREETING) {
		if (g.stopping || (opt.count > 0 && g.next_user >= opt.count)) {
			done(c);
			return;
		}
		c->user = opt.user_base + (g.next_user++ % opt.users);
		c->step = 1;
		send_login(c);
		return;
	}
	if (c->step == 1) {
		expect_ok(c, line, ok, "LOGIN");
		if (!g.stopping)
			g.ops++;
		c->step = 2;
		cmd(c, "LOGOUT");
		return;
	}
	if (c->step == 2)
		conn_reopen(c);
}

/* The holder of --hold: LOGIN, SELECT, stays; the window opens after. */
static int n_holding;
static void start_login_conns(void);

static void script_hold(struct conn *c, enum ev ev, const char *line, bool ok)
{
	if (ev == EV_GREETING) {
		send_login(c);
		return;
	}
	if (ev != EV_TAGGED || c->step < 0)
		return;
	expect_ok(c, line, ok, c->step == 0 ? "LOGIN (holder)" : "SELECT (holder)");
	if (c->step == 0) {
		c->step = 1;
		cmd(c, "SELECT INBOX");
		return;
	}
	c->step = -2;
	if (++n_holding == opt.users)
		start_login_conns();
}

static void start_login_conns(void)
{
	window_start();
	if (opt.count == 0)
		uv_timer_start(&g.timer, on_time_up, (uint64_t)(opt.seconds * 1000), 0);
	for (int i = 0; i < opt.conns; i++)
		conn_open(&g.conns[i]);
}

/* idle: LOGIN, SELECT INBOX, IDLE; when all idle, wait, measure PSS. */
static void open_more(void);

static void measure_idle(bool settle_ok)
{
	int nprocs;
	double pss = server_pss_kib(&nprocs);
	char extra[1024], by_root[256];

	window_end();
	pss_by_root(by_root, sizeof(by_root));
	snprintf(extra, sizeof(extra), "conns=%d pss_total_kib=%.0f pss_before_kib=%.0f "
		 "per_conn_growth_kib=%.2f procs=%d pss_by_root=%s pss_by_root_before=%s "
		 "settled_s=%.1f settle_ok=%d",
		 opt.conns, pss, g.pss_before_kib, (pss - g.pss_before_kib) / opt.conns, nprocs,
		 by_root, g.pss_roots_before, now_s() - g.t_all_idle, settle_ok ? 1 : 0);
	print_result("idle", pss / opt.conns, "KiB/conn", extra);
	uv_stop(g.loop);
}

/* --settle-cmd: run every 0.5 s (the connections stay IDLE meanwhile; the
 * loop waits for the command, a few ms) until it exits 0 or --settle-max
 * seconds have passed since the last connection went IDLE. */
static void on_settled(uv_timer_t *t)
{
	int rc;

	if (opt.settle_cmd == NULL) {
		measure_idle(true);
		return;
	}
	rc = system(opt.settle_cmd);
	if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0) {
		measure_idle(true);
		return;
	}
	if (now_s() - g.t_all_idle >= opt.settle_max) {
		fprintf(stderr, "bench-imap: --settle-cmd did not succeed within %.0f s: "
			"measured anyway (settle_ok=0)\n", opt.settle_max);
		measure_idle(false);
		return;
	}
	uv_timer_start(t, on_settled, 500, 0);
}

static void script_idle(struct conn *c, enum ev ev, const char *line, bool ok)
{
	if (ev == EV_UNTAGGED || c->step < 0)
		return;
	if (ev == EV_CONT && c->step == 2) {
		c->step = -2;
		g.n_setting_up--;
		if (++g.n_ready == opt.conns) {
			g.t_all_idle = now_s();
			uv_timer_start(&g.timer, on_settled, (uint64_t)(opt.settle * 1000), 0);
		}
		open_more();
		return;
	}
	if (ev == EV_GREETING) {
		send_login(c);
		return;
	}
	if (ev != EV_TAGGED)
		return;
	expect_ok(c, line, ok, c->step == 0 ? "LOGIN" : "SELECT");
	if (c->step == 0) {
		c->step = 1;
		cmd(c, "SELECT INBOX");
	} else {
		c->step = 2;
		cmd(c, "IDLE");
	}
}

static void open_more(void)
{
	while (g.next_to_open < opt.conns && g.n_setting_up < opt.setup_limit) {
		g.n_setting_up++;
		conn_open(&g.conns[g.next_to_open++]);
	}
}

/* ---- main ---- */

static void usage(void)
{
	fputs("usage: bench-imap MODE --port P --user U --pass W [options]\n"
	      "  append     --conns C --count N [--first F]: APPEND messages F..F+N-1 of\n"
	      "             msggen's sequence over C conns (conn i: user i mod users + base)\n"
	      "  select     --repeat R: SELECT --mailbox R times (median; first too)\n"
	      "  fetchhdr   --repeat R: UID FETCH 1:* (FLAGS BODY.PEEK[HEADER])\n"
	      "  fetchbody  --repeat R: UID FETCH 1:* (BODY.PEEK[])\n"
	      "  search     --query Q --repeat R: SEARCH Q (median ms, hits)\n"
	      "  mixed      --conns C --users U --seconds T: sessions of 9 commands\n"
	      "  login      --conns C --users U (--count N | --seconds T [--hold])\n"
	      "  idle       --conns C --users U --settle S: PSS per IDLE connection\n"
	      "             [--settle-cmd CMD [--settle-max S2]]: then also wait until\n"
	      "             CMD (sh -c, every 0.5 s) exits 0, S2 [60] s at most\n"
	      "  mbox       --out FILE --count N [--first F]: append's messages into\n"
	      "             an mbox file (no server)\n"
	      "  (select, fetch*, search: no new run after --max-seconds [60])\n"
	      "options: --tls --host H --user-base B --pids P1,P2 (server roots)\n"
	      "         --setup-limit N (idle: connections being set up at once)\n", stderr);
	exit(2);
}

static void parse_args(int argc, char **argv)
{
	static const char *const modes[] = { "append", "select", "fetchhdr", "fetchbody",
					     "search", "mixed", "login", "idle", "mbox" };
	static const struct option lo[] = {
		{ "port", 1, NULL, 'p' }, { "tls", 0, NULL, 't' }, { "user", 1, NULL, 'u' },
		{ "pass", 1, NULL, 'w' }, { "users", 1, NULL, 'U' }, { "conns", 1, NULL, 'c' },
		{ "count", 1, NULL, 'n' }, { "repeat", 1, NULL, 'r' },
		{ "seconds", 1, NULL, 's' }, { "mailbox", 1, NULL, 'm' },
		{ "query", 1, NULL, 'q' }, { "pids", 1, NULL, 'P' }, { "hold", 0, NULL, 'H' },
		{ "settle", 1, NULL, 'S' }, { "host", 1, NULL, 'h' },
		{ "user-base", 1, NULL, 'b' }, { "first", 1, NULL, 'f' },
		{ "max-seconds", 1, NULL, 'M' }, { "setup-limit", 1, NULL, 'L' },
		{ "out", 1, NULL, 'o' }, { "settle-cmd", 1, NULL, 'C' },
		{ "settle-max", 1, NULL, 'X' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	size_t i;

	if (argc < 2)
		usage();
	for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		if (strcmp(argv[1], modes[i]) == 0)
			break;
	if (i == sizeof(modes) / sizeof(modes[0]))
		usage();
	opt.mode = (enum mode)i;
	optind = 2;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'p': opt.port = atoi(optarg); break;
		case 't': opt.tls = true; break;
		case 'u': opt.user_fmt = optarg; break;
		case 'w': opt.pass = optarg; break;
		case 'U': opt.users = atoi(optarg); break;
		case 'c': opt.conns = atoi(optarg); break;
		case 'n': opt.count = atoi(optarg); break;
		case 'r': opt.repeat = atoi(optarg); break;
		case 's': opt.seconds = atof(optarg); break;
		case 'm': opt.mailbox = optarg; break;
		case 'q': opt.query = optarg; break;
		case 'P': opt.pids = optarg; break;
		case 'H': opt.hold = true; break;
		case 'S': opt.settle = atof(optarg); break;
		case 'h': opt.host = optarg; break;
		case 'b': opt.user_base = atoi(optarg); break;
		case 'f': opt.first = atoi(optarg); break;
		case 'M': opt.max_seconds = atof(optarg); break;
		case 'L': opt.setup_limit = atoi(optarg); break;
		case 'o': opt.out = optarg; break;
		case 'C': opt.settle_cmd = optarg; break;
		case 'X': opt.settle_max = atof(optarg); break;
		default: usage();
		}
	}
	if (opt.mode == M_MBOX) {
		if (opt.out == NULL || opt.count < 0 || opt.first < 0)
			usage();
		return;
	}
	if (opt.port <= 0 || opt.user_fmt == NULL || opt.pass == NULL || opt.conns < 1 ||
	    opt.users < 1 || opt.repeat < 1)
		usage();
	if (strchr(opt.user_fmt, '%') != NULL &&
	    (strstr(opt.user_fmt, "%d") == NULL && strstr(opt.user_fmt, "%02d") == NULL &&
	     strstr(opt.user_fmt, "%03d") == NULL && strstr(opt.user_fmt, "%05d") == NULL))
		die("--user: only %%d, %%02d, %%03d or %%05d may be used");
}

/* mbox: the messages append would send, "From " lines between them
 * (msggen never starts a line of a body with "From "). */
static void write_mbox(void)
{
	struct msggen m = { 0 };
	FILE *f = fopen(opt.out, "w");

	if (f == NULL)
		die("%s: %s", opt.out, strerror(errno));
	msggen_seed(SEED);
	for (int i = 0; i < opt.first + opt.count; i++) {
		msggen_message(&m, (uint64_t)i);
		if (i < opt.first)
			continue;
		fputs("From bench@example.org Thu Nov 26 00:00:00 2026\n", f);
		fwrite(m.buf, 1, m.len, f);
		fputs("\n", f);
	}
	free(m.buf);
	if (fclose(f) != 0)
		die("%s: %s", opt.out, strerror(errno));
}

static void generate(void)
{
	if (opt.mode == M_APPEND && opt.count > PREGEN_MAX) {
		struct msggen skip = { 0 };

		g.lazy = true;
		msggen_seed(SEED);
		for (int i = 0; i < opt.first; i++)
			msggen_message(&skip, (uint64_t)i);
		free(skip.buf);
	} else if (opt.mode == M_APPEND) {
		g.msgs = calloc((size_t)opt.count, sizeof(*g.msgs));
		if (g.msgs == NULL)
			abort();
		msggen_seed(SEED);
		for (int i = 0; i < opt.first + opt.count; i++) {
			struct msggen *m = &g.msgs[i < opt.first ? 0 : i - opt.first];

			msggen_message(m, (uint64_t)i);   /* the sequence from 0 */
		}
	}
	if (opt.mode == M_MIXED) {
		msggen_seed(SMALL_SEED);
		for (int i = 0; i < N_SMALL; i++) {
			do       /* small ones only: the mixed workload's appends */
				msggen_message(&g.small[i], (uint64_t)i);
			while (g.small[i].len > 8192);
		}
	}
}

static void setup_conns(void)
{
	static script_fn *const scripts[] = {
		script_append, script_select, script_fetch, script_fetch, script_search,
		script_mixed, script_login, script_idle,
	};

	g.conns = calloc((size_t)opt.conns, sizeof(*g.conns));
	g.times = calloc((size_t)opt.repeat + 1, sizeof(double));
	if (g.conns == NULL || g.times == NULL)
		abort();
	for (int i = 0; i < opt.conns; i++) {
		g.conns[i].id = i;
		g.conns[i].user = opt.user_base + i % opt.users;
		g.conns[i].script = scripts[opt.mode];
	}
	if (opt.mode == M_LOGIN && opt.hold) {
		g.holders = calloc((size_t)opt.users, sizeof(*g.holders));
		if (g.holders == NULL)
			abort();
		for (int i = 0; i < opt.users; i++) {
			g.holders[i].id = opt.conns + i;
			g.holders[i].user = opt.user_base + i;
			g.holders[i].script = script_hold;
			conn_open(&g.holders[i]);
		}
	} else if (opt.mode == M_LOGIN) {
		start_login_conns();
	} else if (opt.mode == M_IDLE) {
		int nprocs;

		g.pss_before_kib = server_pss_kib(&nprocs);
		pss_by_root(g.pss_roots_before, sizeof(g.pss_roots_before));
		window_start();
		open_more();
	} else {
		for (int i = 0; i < opt.conns; i++)
			conn_open(&g.conns[i]);
	}
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	if (opt.mode == M_MBOX) {
		write_mbox();
		return 0;
	}
	signal(SIGPIPE, SIG_IGN);
	generate();
	g.loop = uv_default_loop();
	uv_timer_init(g.loop, &g.timer);
	if (opt.tls) {
		g.ssl_ctx = SSL_CTX_new(TLS_client_method());
		if (g.ssl_ctx == NULL)
			die("SSL_CTX_new failed");
		SSL_CTX_set_verify(g.ssl_ctx, SSL_VERIFY_NONE, NULL);   /* loopback, own cert */
	}
	setup_conns();
	uv_run(g.loop, UV_RUN_DEFAULT);
	return 0;
}
