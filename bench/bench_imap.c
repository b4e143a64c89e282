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
 *
 * Files: this one (options, the server trees' CPU and memory, the
 * measured window and its report, main), imap_conn.c (connections,
 * sending and receiving), imap_scripts.c (the modes' scripts);
 * bench_imap.h declares what they share.
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

#include "bench_imap.h"
#include "msggen.h"
#include "bench_util.h"

struct bench_opt opt = {
	.host = "127.0.0.1", .user_fmt = NULL, .pass = NULL, .mailbox = "INBOX",
	.query = "FROM \"Kowalski\"", .users = 1, .user_base = 1, .conns = 1,
	.count = 1000, .repeat = 3, .setup_limit = 100, .seconds = 10,
	.settle = 3, .max_seconds = 60, .settle_max = 60,
};


struct bench_state g;

/* ---- time, CPU and memory of the server process trees ---- */

double now_s(void)
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

double server_pss_kib(int *nprocs)
{
	return tree_pss_kib(opt.pids != NULL ? opt.pids : "", nprocs);
}

/* "pid:KiB,pid:KiB": the PSS of each --pids root with its descendants. */
void pss_by_root(char *out, size_t size)
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

/* ---- the measured window ---- */

void print_result(const char *name, double value, const char *unit, const char *extra)
{
	double wall = g.t1 - g.t0;

	printf("RESULT %s value=%.3f unit=%s wall=%.3f ops=%" PRIu64 " bytes=%" PRIu64
	       " srv_cpu=%.3f gen_cpu=%.3f errors=%" PRIu64 "%s%s\n", name, value, unit, wall,
	       g.ops, g.bytes, g.srv_cpu1 - g.srv_cpu0, g.gen_cpu1 - g.gen_cpu0, g.errors,
	       extra ? " " : "", extra ? extra : "");
	fflush(stdout);
}

void window_start(void)
{
	g.started = true;
	g.bytes = 0;
	g.srv_cpu0 = server_cpu();
	g.gen_cpu0 = gen_cpu();
	g.t0 = now_s();
}

void window_end(void)
{
	g.t1 = now_s();
	g.srv_cpu1 = server_cpu();
	g.gen_cpu1 = gen_cpu();
}

static double median_times(void)
{
	qsort(g.times, (size_t)g.n_times, sizeof(double), bench_cmp_double);
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

void finish(void)
{
	if (!g.started)
		die("nothing was measured");
	if (g.t1 == 0)
		window_end();
	report();
	uv_stop(g.loop);
}

void on_time_up(uv_timer_t *t)
{
	(void)t;
	window_end();
	g.stopping = true;
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
