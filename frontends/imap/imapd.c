/*
 * sealmail-imapd: the IMAP frontend. `sealmail-imapd --config FILE` (which
 * is how `sealmail up` runs it).
 *
 * Start: configuration, RPC secret, TLS certificate, an rpc_client to
 * sqlited (its unix socket, else loopback TCP), the Redis subscriber, and
 * listeners on imaps_port and imaps_alt_port (implicit TLS) and imap_port (plaintext +
 * STARTTLS; LOGIN only on loopback before TLS); one line on stdout per
 * listener. A port of 0 is off. Without a usable certificate imaps is off
 * and STARTTLS is not offered (logged).
 *
 * Start-up and signals are common/daemon.h's. Signals: SIGHUP reloads
 * the certificate (new connections get it);
 * SIGINT/SIGTERM stop accepting, send "* BYE" to every session and close
 * it, and exit 0 once the last one is gone. A second signal exits at once
 * with 1.
 *
 * Memory: the heap is trimmed (malloc_trim gives the free pages inside it
 * back) when the process goes quiet: IMAP_QUIET_MS after the last command
 * ended or session closed, if at least IMAP_QUIET_TRIM_BYTES of it are
 * free; and every IMAP_IDLE_SYNC_MS when over 8 MiB are (a burst of
 * connections ended). Under load no trim runs (the timer is pushed back).
 *
 * Events (docs/rpc.md, Events): one Redis connection in subscribe mode.
 * A channel sealmail:alias:<id> is subscribed while at least one session
 * of that alias is logged in here (reference counted); each message
 * "<kind> <mailbox> <uid> <modseq>" goes to imap_session_event() of each
 * such session. The connection (common/redis_conn.h) is retried with a
 * backoff from 250 ms doubling to 10 s; when it is back, every channel is
 * subscribed again
 * and every session's view is marked stale (events were lost meanwhile).
 * Redis is an optimisation: without it, IDLE still sees changes through
 * its periodic sync (IMAP_IDLE_SYNC_MS) and other commands at their end.
 *
 * hiredis 0.14 and subscribe mode: SUBSCRIBE registers the callback per
 * channel when it is sent; the answer to UNSUBSCRIBE deletes it when it
 * arrives. An UNSUBSCRIBE followed by a SUBSCRIBE of the same channel
 * before the first answer would therefore lose the callback, so the
 * unsubscribe answer re-subscribes a channel that is wanted again.
 */
#include "imap_daemon.h"

#include "daemon.h"
#include "eng_error.h"
#include "redis_conn.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define EV_BACKOFF_MIN_MS 250u
#define EV_BACKOFF_MAX_MS 10000u
#define EV_CHANNEL_PREFIX "sealmail:alias:"
/* An IMAP listener's connection bounds (net.h). IMAP clients keep
 * connections open (IDLE), so the total is high; 31 minutes without
 * traffic ends one (RFC 3501 5.4: at least 30; IDLE clients re-issue
 * IDLE within 29). */
#define IMAP_MAX_CONNS 10000u
#define IMAP_IDLE_TIMEOUT_MS (31u * 60 * 1000)
/* Free heap memory past which the idle tick gives it back (heap_trim). */
#define IMAP_TRIM_FREE_BYTES (8u * 1024 * 1024)
/* No command ended and no session closed for this long: the process is
 * quiet, and the heap is trimmed when this much of it is free. */
#define IMAP_QUIET_MS 2000u
#define IMAP_QUIET_TRIM_BYTES (1u * 1024 * 1024)

typedef struct ev_sub {
	struct ev_sub *next;
	unsigned refs;
	char id[sizeof(((imap_session *)0)->alias_id)];
} ev_sub;

struct imap_events {
	imapd *d;
	sm_redis_conn *conn;         /* NULL: redis_url unusable */
	ev_sub *subs;
	char lost_msg[160];
};

typedef struct imap_main {
	sm_daemon dm;
	imapd d;
	imap_events ev;
	uv_timer_t kick;             /* imapd_kick_later */
	uv_timer_t idle_tick;        /* IMAP_IDLE_SYNC_MS */
	unsigned idle_ticks;
	uv_timer_t quiet;            /* IMAP_QUIET_MS after the last activity */
	uint64_t last_activity;      /* uv_now of the last imapd_activity */
	unsigned long heap_trims;    /* quiet trims run (for the debug log) */
	bool kick_pending;
} imap_main;

static imap_main *g_main;

/* ---- events: parsing and delivery ---- */

static int kind_of(const char *s, size_t n)
{
	static const struct { const char *name; int kind; } kinds[] = {
		{ "exists", IMAP_EVT_EXISTS }, { "flags", IMAP_EVT_FLAGS },
		{ "expunge", IMAP_EVT_EXPUNGE }, { "mailbox", IMAP_EVT_MAILBOX },
	};

	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (strlen(kinds[i].name) == n && memcmp(kinds[i].name, s, n) == 0)
			return kinds[i].kind;
	return 0;
}

static bool parse_decimal(const char *s, size_t n, uint64_t max, uint64_t *v_r)
{
	uint64_t v = 0;

	if (n == 0 || n > 20)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > max)
		return false;
	*v_r = v;
	return true;
}

/* "<kind> <mailbox> <uid> <modseq>": uid and modseq from the right, since
 * the mailbox may hold spaces. Delivered to the alias's sessions. */
static void deliver_event(imapd *d, const char *alias_id, const char *msg, size_t len)
{
	const char *sp1, *sp_uid = NULL, *sp_mod = NULL;
	uint64_t uid, modseq;
	char *mailbox;
	int kind;

	for (size_t i = len; i-- > 0;) {
		if (msg[i] != ' ')
			continue;
		if (sp_mod == NULL)
			sp_mod = msg + i;
		else {
			sp_uid = msg + i;
			break;
		}
	}
	sp1 = memchr(msg, ' ', len);
	if (sp1 == NULL || sp_uid == NULL || sp1 > sp_uid ||
	    (kind = kind_of(msg, (size_t)(sp1 - msg))) == 0 ||
	    !parse_decimal(sp_uid + 1, (size_t)(sp_mod - sp_uid - 1), UINT32_MAX, &uid) ||
	    !parse_decimal(sp_mod + 1, (size_t)(msg + len - sp_mod - 1), UINT64_MAX,
			   &modseq)) {
		eng_log(ENG_LOG_WARN, "imapd: an event that does not parse was ignored");
		return;
	}
	/* sp1 == sp_uid: "kind <uid> <modseq>" with no mailbox at all. */
	mailbox = sp1 == sp_uid ? eng_strdup("") :
		  eng_strndup(sp1 + 1, (size_t)(sp_uid - sp1 - 1));
	for (imap_session *s = d->sessions, *next; s != NULL; s = next) {
		next = s->next;     /* a session may end inside its event */
		if (s->c != NULL && s->state != IMAP_S_NOTAUTH &&
		    strcmp(s->alias_id, alias_id) == 0)
			imap_session_event(s, (enum imap_evt_kind)kind, mailbox,
					   (uint32_t)uid, modseq);
	}
	free(mailbox);
}

static ev_sub *sub_find(imap_events *ev, const char *id)
{
	for (ev_sub *s = ev->subs; s != NULL; s = s->next)
		if (strcmp(s->id, id) == 0)
			return s;
	return NULL;
}

static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata);

static void send_subscribe(imap_events *ev, const char *id, bool on)
{
	redisAsyncContext *ac = sm_redis_conn_ready(ev->conn);

	if (ac == NULL)
		return;      /* done for every channel when it connects */
	redisAsyncCommand(ac, on ? on_sub_reply : NULL, ev,
			  on ? "SUBSCRIBE " EV_CHANNEL_PREFIX "%s" :
			  "UNSUBSCRIBE " EV_CHANNEL_PREFIX "%s", id);
}

/* Every reply of subscribe mode: ["subscribe"|"unsubscribe"|"message",
 * channel, count|payload]. */
static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
	imap_events *ev = privdata;
	redisReply *r = reply;
	const char *kind, *chan;
	size_t plen = strlen(EV_CHANNEL_PREFIX);

	(void)ac;
	if (r == NULL || ev == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
	    r->element[0]->type != REDIS_REPLY_STRING ||
	    r->element[1]->type != REDIS_REPLY_STRING)
		return;
	kind = r->element[0]->str;
	chan = r->element[1]->str;
	if (r->element[1]->len <= plen || strncmp(chan, EV_CHANNEL_PREFIX, plen) != 0)
		return;
	chan += plen;
	if (strcasecmp(kind, "unsubscribe") == 0) {
		ev_sub *s = sub_find(ev, chan);

		if (s != NULL && s->refs > 0)
			send_subscribe(ev, s->id, true);
		return;
	}
	if (strcasecmp(kind, "message") == 0 && r->element[2]->type == REDIS_REPLY_STRING)
		deliver_event(ev->d, chan, r->element[2]->str, r->element[2]->len);
}

void imap_events_subscribe(imapd *d, const char *alias_id)
{
	imap_events *ev = d->events;
	ev_sub *s;

	if (ev == NULL || alias_id[0] == '\0')
		return;
	s = sub_find(ev, alias_id);
	if (s == NULL) {
		s = eng_calloc(1, sizeof(*s));
		snprintf(s->id, sizeof(s->id), "%s", alias_id);
		s->next = ev->subs;
		ev->subs = s;
	}
	if (s->refs++ == 0)
		send_subscribe(ev, s->id, true);
}

void imap_events_unsubscribe(imapd *d, const char *alias_id)
{
	imap_events *ev = d->events;

	if (ev == NULL || alias_id[0] == '\0')
		return;
	for (ev_sub **pp = &ev->subs; *pp != NULL; pp = &(*pp)->next) {
		ev_sub *s = *pp;

		if (strcmp(s->id, alias_id) != 0)
			continue;
		if (s->refs > 0 && --s->refs == 0) {
			send_subscribe(ev, s->id, false);
			*pp = s->next;
			free(s);
		}
		return;
	}
}

/* ---- events: the connection ---- */

static void on_redis_connect(void *ctx, redisAsyncContext *ac)
{
	imap_events *ev = ctx;

	(void)ac;
	for (ev_sub *s = ev->subs; s != NULL; s = s->next)
		send_subscribe(ev, s->id, true);
	/* Whatever happened while it was down was not heard. */
	imap_sessions_all_dirty(ev->d);
}

static void events_start(imap_main *m)
{
	imap_events *ev = &m->ev;
	sm_redis_conn_config rc = {
		.backoff_min_ms = EV_BACKOFF_MIN_MS,
		.backoff_max_ms = EV_BACKOFF_MAX_MS,
		.connected_msg = "imapd: connected to Redis (events)",
		.lost_msg = ev->lost_msg,
		.on_connect = on_redis_connect,
		.ctx = ev,
	};

	ev->d = &m->d;
	m->d.events = ev;
	snprintf(ev->lost_msg, sizeof(ev->lost_msg), "imapd: lost the Redis "
		 "connection; IDLE falls back to a sync every %u s until it is back",
		 IMAP_IDLE_SYNC_MS / 1000);
	sm_daemon_redis(&m->dm, &rc, "IDLE hears of changes only through its "
			"periodic sync", &ev->conn);
}

static void events_stop(imap_events *ev)
{
	sm_redis_conn_close(&ev->conn, false);
	while (ev->subs != NULL) {
		ev_sub *s = ev->subs;

		ev->subs = s->next;
		free(s);
	}
}

/* ---- timers ---- */

static void on_kick(uv_timer_t *t)
{
	imap_main *m = t->data;

	m->kick_pending = false;
	imap_sessions_kick(&m->d);
}

void imapd_kick_later(imapd *d)
{
	imap_main *m = g_main;

	(void)d;
	if (m->kick_pending || m->dm.done)
		return;
	m->kick_pending = true;
	uv_timer_start(&m->kick, on_kick, 0, 0);
}

/*
 * After a burst of connections ended (thousands of IDLE clients gone at
 * once), their memory is free inside the heap, between live blocks:
 * glibc's free() only gives back the top of the heap, so it stayed
 * resident (~2 KiB per plain and ~16 KiB per TLS connection that was
 * open). malloc_trim returns the free pages inside it too; it walks the
 * free lists, so only when at least min_free bytes are free. Returns the
 * free bytes it trimmed, 0 when it did not run.
 */
static size_t heap_trim(size_t min_free)
{
	struct mallinfo2 mi = mallinfo2();

	if (mi.fordblks < min_free)
		return 0;
	malloc_trim(0);
	return mi.fordblks;
}

/*
 * After the loads (a body FETCH's output batches, APPEND literals, SELECTs
 * of big mailboxes, many sessions ending) several MB of the heap are free
 * between live blocks, under the idle tick's 8 MiB: glibc keeps them
 * resident for good (bench/README.md, "imapd memory after the loads").
 * Once nothing has happened for IMAP_QUIET_MS they go back; while
 * commands keep ending, the timer is only pushed back (imapd_activity
 * costs a clock read per command).
 */
static void on_quiet(uv_timer_t *t)
{
	imap_main *m = t->data;
	uint64_t since = uv_now(m->d.loop) - m->last_activity;
	size_t freed;

	if (since < IMAP_QUIET_MS) {
		uv_timer_start(t, on_quiet, IMAP_QUIET_MS - since, 0);
		return;
	}
	/* The RPC connection's frame buffer (up to 1 MiB, the last body
	 * fetched) and field array go first, then the heap. */
	if (m->d.rpc != NULL)
		rpc_client_trim(m->d.rpc);
	freed = heap_trim(IMAP_QUIET_TRIM_BYTES);
	if (freed > 0)
		eng_log(ENG_LOG_DEBUG, "imap: heap trim %lu after %lu ms quiet: "
			"%zu KiB were free", ++m->heap_trims,
			(unsigned long)since, freed / 1024);
}

void imapd_activity(imapd *d)
{
	imap_main *m = g_main;

	(void)d;
	if (m->dm.done || m->d.stopping)
		return;
	m->last_activity = uv_now(m->d.loop);
	if (!uv_is_active((uv_handle_t *)&m->quiet))
		uv_timer_start(&m->quiet, on_quiet, IMAP_QUIET_MS, 0);
}

/*
 * While the Redis subscriber is up, events tell idlers when to sync and a
 * reconnect marks every view dirty: the safety-net sync runs only every
 * IMAP_IDLE_EVENTS_TICKS ticks, so sqlited can release idle mailboxes
 * (db_release_seconds) between them. Without Redis, every tick.
 */
static void on_idle_tick(uv_timer_t *t)
{
	imap_main *m = t->data;
	bool events_up = m->ev.conn != NULL &&
		sm_redis_conn_ready(m->ev.conn) != NULL;

	heap_trim(IMAP_TRIM_FREE_BYTES);
	if (events_up && ++m->idle_ticks % IMAP_IDLE_EVENTS_TICKS != 0) {
		imap_idle_keepalive(&m->d);
		return;
	}
	imap_sessions_idle_tick(&m->d);
}

/* ---- stopping (common/daemon.h calls these) ---- */

static size_t imap_stop(void *ctx)
{
	imap_main *m = ctx;

	m->d.stopping = true;
	for (size_t i = 0; i < IMAP_LISTENERS; i++)
		if (m->d.listeners[i] != NULL) {
			sm_net_listener_close(m->d.listeners[i], NULL, NULL);
			m->d.listeners[i] = NULL;
		}
	imap_sessions_shutdown(&m->d);
	return m->d.n_sessions;
}

static void imap_finish(void *ctx)
{
	imap_main *m = ctx;

	m->d.rpc = NULL;            /* closed by the daemon skeleton */
	events_stop(&m->ev);
	uv_close((uv_handle_t *)&m->kick, NULL);
	uv_close((uv_handle_t *)&m->idle_tick, NULL);
	uv_close((uv_handle_t *)&m->quiet, NULL);
}

void imapd_sessions_gone(imapd *d)
{
	(void)d;
	sm_daemon_finish(&g_main->dm);
}

/* ---- main ---- */

static const char *imap_idle_reason(const sm_config *cfg)
{
	return cfg->imaps_port == 0 && cfg->imaps_alt_port == 0 && cfg->imap_port == 0 ?
	       "imaps_port, imaps_alt_port and imap_port are all 0" : NULL;
}

static const sm_daemon_spec imap_spec = {
	.name = "imapd",
	.program = "sealmail-imapd",
	.peer = "imap",
	.tls_off = "TLS",
	.plain = "plaintext",
	.starttls = "STARTTLS",
	.implicit_port = "implicit-TLS port",
	.idle_reason = imap_idle_reason,
	/* Fail fast while sqlited is down: NO [UNAVAILABLE] at once. */
	.rpc_backoff_max_ms = 2000,
	.stop = imap_stop,
	.finish = imap_finish,
};

static int start_listener(imap_main *m, size_t i, uint16_t port, bool implicit)
{
	sm_net_listener_config lc = {
		.port = port,
		.implicit_tls = implicit,
		.name = implicit ? "imaps" : "imap",
		.limit_reply = "* BYE Too many connections from your address\r\n",
		.idle_timeout_ms = IMAP_IDLE_TIMEOUT_MS,
		.max_conns = IMAP_MAX_CONNS,
		.max_conns_per_ip = (unsigned)m->d.cfg->imap_max_conns_per_ip,
		.cb = &imap_net_callbacks,
		.ctx = &m->d,
	};

	return sm_daemon_listen(&m->dm, &lc, &m->d.listeners[i]);
}

static int start_listeners(imap_main *m)
{
	const sm_config *cfg = m->d.cfg;

	if (start_listener(m, 0, cfg->imaps_port, true) == 0 &&
	    start_listener(m, 1, cfg->imap_port, false) == 0 &&
	    start_listener(m, 2, cfg->imaps_alt_port, true) == 0 &&
	    (m->d.listeners[0] != NULL || m->d.listeners[1] != NULL ||
	     m->d.listeners[2] != NULL))
		return 0;
	for (size_t i = 0; i < IMAP_LISTENERS; i++)
		if (m->d.listeners[i] != NULL)
			sm_net_listener_close(m->d.listeners[i], NULL, NULL);
	m->d.stopping = true;
	return ENG_EIO;
}

static void start_handles(imap_main *m)
{
	uv_loop_t *loop = m->d.loop;

	uv_timer_init(loop, &m->kick);
	m->kick.data = m;
	uv_timer_init(loop, &m->idle_tick);
	m->idle_tick.data = m;
	uv_timer_init(loop, &m->quiet);
	m->quiet.data = m;
}

int main(int argc, char **argv)
{
	imap_main m;
	int status;

	memset(&m, 0, sizeof(m));
	g_main = &m;
	if (sm_daemon_open(&m.dm, &imap_spec, &m, argc, argv) != 0)
		return 1;
	m.d.loop = &m.dm.loop;
	m.d.cfg = m.dm.cfg;
	m.d.tls = m.dm.tls;
	m.d.hostname = m.d.cfg->hostname;
	m.d.append_max = m.d.cfg->max_message_bytes;
	start_handles(&m);
	if (sm_daemon_connect_rpc(&m.dm) != 0) {
		status = sm_daemon_run(&m.dm, -1, NULL);
	} else {
		m.d.rpc = m.dm.rpc;
		uv_timer_start(&m.idle_tick, on_idle_tick, IMAP_IDLE_SYNC_MS,
			       IMAP_IDLE_SYNC_MS);
		events_start(&m);
		status = sm_daemon_run(&m.dm, start_listeners(&m), "cannot listen");
	}
	sm_daemon_free(&m.dm);
	return status;
}
