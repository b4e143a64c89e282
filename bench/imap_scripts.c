/*
 * bench-imap's scripts (bench_imap.c says what the program is,
 * bench_imap.h what its files share): one state machine per mode, called
 * with each event of its connection (greeting, untagged, continuation,
 * tagged), and the helpers they share (ready, done, reopening). Moved
 * from bench_imap.c as it was.
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

void script_append(struct conn *c, enum ev ev, const char *line, bool ok)
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

void script_select(struct conn *c, enum ev ev, const char *line, bool ok)
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

void script_fetch(struct conn *c, enum ev ev, const char *line, bool ok)
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

void script_search(struct conn *c, enum ev ev, const char *line, bool ok)
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
void script_mixed(struct conn *c, enum ev ev, const char *line, bool ok)
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
void script_login(struct conn *c, enum ev ev, const char *line, bool ok)
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

void script_hold(struct conn *c, enum ev ev, const char *line, bool ok)
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

void start_login_conns(void)
{
	window_start();
	if (opt.count == 0)
		uv_timer_start(&g.timer, on_time_up, (uint64_t)(opt.seconds * 1000), 0);
	for (int i = 0; i < opt.conns; i++)
		conn_open(&g.conns[i]);
}

/* idle: LOGIN, SELECT INBOX, IDLE; when all idle, wait, measure PSS. */

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

void script_idle(struct conn *c, enum ev ev, const char *line, bool ok)
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

void open_more(void)
{
	while (g.next_to_open < opt.conns && g.n_setting_up < opt.setup_limit) {
		g.n_setting_up++;
		conn_open(&g.conns[g.next_to_open++]);
	}
}
