/*
 * sealmail-pop3d: the POP3 frontend. `sealmail-pop3d --config FILE` (which
 * is how `sealmail up` runs it).
 *
 * Start: configuration, RPC secret, TLS certificate, an rpc_client to
 * sqlited (its unix socket, else loopback TCP), Redis for the [IN-USE]
 * lock, listeners on pop3s_port (implicit TLS) and pop3_port (plaintext +
 * STLS); one line on stdout per listener. A port of 0 is off. Without a
 * usable certificate pop3s is off and STLS is not offered (logged).
 *
 * Signals: SIGHUP reloads the certificate (new connections get it);
 * SIGINT/SIGTERM stop accepting, tell idle sessions "-ERR [SYS/TEMP]" and
 * close them (a session in TRANSACTION deletes nothing; one in UPDATE
 * finishes its QUIT), then exit 0. A second signal exits at once with 1.
 *
 * The [IN-USE] lock: Redis key sealmail:pop3:inuse:<BLAKE2b-128 of the
 * lower-cased alias> set with SET NX PX (lock_ttl_ms) to a random token,
 * refreshed every third of that while held, deleted (only if it still
 * holds our token) at logout. Locks are also kept in this process, which
 * is what counts while Redis is unreachable.
 */
#include "pop3_private.h"

#include "eng_error.h"
#include "redis_url.h"
#include "secrets.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POP3_LOCK_TTL_MS 60000u
#define POP3_REDIS_RETRY_MS 2000u
#define POP3_LOCK_PREFIX "sealmail:pop3:inuse:"

struct pop3_lock {
	pop3_lock *next;
	char id[POP3_LOCK_ID_CHARS + 1];
	char token[33];
};

typedef struct lock_req {
	pop3d *d;
	pop3_lock_cb *cb;
	void *ctx;
	char id[POP3_LOCK_ID_CHARS + 1];
	char token[33];
} lock_req;

static const char lua_release[] =
	"if redis.call('get', KEYS[1]) == ARGV[1] then "
	"return redis.call('del', KEYS[1]) else return 0 end";
static const char lua_refresh[] =
	"if redis.call('get', KEYS[1]) == ARGV[1] then "
	"return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

typedef struct pop3_main {
	pop3d d;
	uv_signal_t sigint, sigterm, sighup;
	uv_timer_t redis_timer;      /* reconnect, and refresh held locks */
	sm_redis_target redis;
	bool redis_ok;               /* redis_url is usable */
	bool redis_connecting;
	bool done;
} pop3_main;

static pop3_main *g_main;

/* ---- Redis ---- */

static void redis_connect(pop3_main *m);

static int parse_redis_url(pop3_main *m, const sm_config *cfg)
{
	return sm_redis_target_parse(cfg->redis_url, cfg->data_dir, &m->redis);
}

static void on_redis_connected(const redisAsyncContext *ac, int status)
{
	pop3_main *m = ac->data;

	m->redis_connecting = false;
	if (status != REDIS_OK) {
		/* hiredis frees ac after this callback. */
		m->d.redis = NULL;
		return;
	}
	eng_log(ENG_LOG_INFO, "pop3d: connected to Redis");
}

static void on_redis_disconnected(const redisAsyncContext *ac, int status)
{
	pop3_main *m = ac->data;

	(void)status;
	m->redis_connecting = false;
	if (m->d.redis == ac)
		m->d.redis = NULL;
	if (!m->d.stopping)
		eng_log(ENG_LOG_WARN, "pop3d: Redis connection lost; [IN-USE] locks "
			"are local to this process until it is back");
}

static void redis_connect(pop3_main *m)
{
	redisAsyncContext *ac;

	if (!m->redis_ok || m->d.redis != NULL || m->d.stopping)
		return;
	ac = m->redis.unix_path != NULL ? redisAsyncConnectUnix(m->redis.unix_path) :
	     redisAsyncConnect(m->redis.host, m->redis.port);
	if (ac == NULL)
		eng_oom(sizeof(redisAsyncContext));
	if (ac->err != 0 || redisLibuvAttach(ac, m->d.loop) != REDIS_OK) {
		redisAsyncFree(ac);
		return;
	}
	ac->data = m;
	redisAsyncSetConnectCallback(ac, on_redis_connected);
	redisAsyncSetDisconnectCallback(ac, on_redis_disconnected);
	if (m->redis.password != NULL)
		redisAsyncCommand(ac, NULL, NULL, "AUTH %s", m->redis.password);
	if (m->redis.db != 0)
		redisAsyncCommand(ac, NULL, NULL, "SELECT %d", m->redis.db);
	m->d.redis = ac;
	m->redis_connecting = true;
}

static void on_redis_timer(uv_timer_t *t)
{
	pop3_main *m = t->data;
	redisAsyncContext *ac = m->d.redis;

	if (ac == NULL) {
		redis_connect(m);
		return;
	}
	for (pop3_lock *l = m->d.locks; l != NULL; l = l->next)
		redisAsyncCommand(ac, NULL, NULL, "EVAL %s 1 %s%s %s %u", lua_refresh,
				  POP3_LOCK_PREFIX, l->id, l->token,
				  (unsigned)m->d.lock_ttl_ms);
}

/* ---- the [IN-USE] lock ---- */

static pop3_lock *lock_find(pop3d *d, const char *id)
{
	for (pop3_lock *l = d->locks; l != NULL; l = l->next)
		if (strcmp(l->id, id) == 0)
			return l;
	return NULL;
}

static void lock_add(pop3d *d, const char *id, const char *token)
{
	pop3_lock *l = eng_calloc(1, sizeof(*l));

	snprintf(l->id, sizeof(l->id), "%s", id);
	snprintf(l->token, sizeof(l->token), "%s", token);
	l->next = d->locks;
	d->locks = l;
}

static void on_set_nx(redisAsyncContext *ac, void *reply, void *privdata)
{
	lock_req *r = privdata;
	redisReply *rep = reply;
	bool got;

	(void)ac;
	if (lock_find(r->d, r->id) != NULL) {
		got = false;     /* another session of this process got it meanwhile */
	} else if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
		/* Redis went away mid-request: the local lock decides. */
		got = true;
	} else {
		got = rep->type == REDIS_REPLY_STATUS;
	}
	if (got)
		lock_add(r->d, r->id, r->token);
	r->cb(r->ctx, got);
	free(r);
}

void pop3_lock_acquire(pop3d *d, const char *id, pop3_lock_cb *cb, void *ctx)
{
	redisAsyncContext *ac = d->redis;
	uint8_t rnd[16];
	lock_req *r;

	if (lock_find(d, id) != NULL) {
		cb(ctx, false);
		return;
	}
	r = eng_calloc(1, sizeof(*r));
	r->d = d;
	r->cb = cb;
	r->ctx = ctx;
	snprintf(r->id, sizeof(r->id), "%s", id);
	randombytes_buf(rnd, sizeof(rnd));
	sodium_bin2hex(r->token, sizeof(r->token), rnd, sizeof(rnd));
	if (ac != NULL && (ac->c.flags & REDIS_CONNECTED) &&
	    redisAsyncCommand(ac, on_set_nx, r, "SET %s%s %s NX PX %u",
			      POP3_LOCK_PREFIX, id, r->token,
			      (unsigned)d->lock_ttl_ms) == REDIS_OK)
		return;
	lock_add(d, id, r->token);
	free(r);
	cb(ctx, true);
}

void pop3_lock_release(pop3d *d, const char *id)
{
	redisAsyncContext *ac = d->redis;

	for (pop3_lock **pp = &d->locks; *pp != NULL; pp = &(*pp)->next) {
		pop3_lock *l = *pp;

		if (strcmp(l->id, id) != 0)
			continue;
		if (ac != NULL && (ac->c.flags & REDIS_CONNECTED))
			redisAsyncCommand(ac, NULL, NULL, "EVAL %s 1 %s%s %s", lua_release,
					  POP3_LOCK_PREFIX, l->id, l->token);
		*pp = l->next;
		free(l);
		return;
	}
}

/* ---- stopping ---- */

static void on_rpc_closed(void *ctx)
{
	(void)ctx;
}

static void finish(pop3_main *m)
{
	if (m->done)
		return;
	m->done = true;
	if (m->d.rpc != NULL)
		rpc_client_close(m->d.rpc, on_rpc_closed, m);
	m->d.rpc = NULL;
	if (m->d.redis != NULL)
		redisAsyncDisconnect(m->d.redis);
	uv_close((uv_handle_t *)&m->redis_timer, NULL);
	uv_close((uv_handle_t *)&m->sigint, NULL);
	uv_close((uv_handle_t *)&m->sigterm, NULL);
	uv_close((uv_handle_t *)&m->sighup, NULL);
}

void pop3d_sessions_gone(pop3d *d)
{
	pop3_main *m = g_main;

	(void)d;
	finish(m);
}

static void on_signal(uv_signal_t *h, int signum)
{
	pop3_main *m = h->data;

	if (signum == SIGHUP) {
		char *err = NULL;

		if (m->d.tls == NULL) {
			eng_log(ENG_LOG_WARN, "pop3d: SIGHUP: no TLS context to reload");
		} else if (sm_net_tls_reload(m->d.tls, &err) != 0) {
			eng_log(ENG_LOG_ERROR, "pop3d: SIGHUP: %s; keeping the old "
				"certificate", err != NULL ? err : "reload failed");
			free(err);
		} else {
			eng_log(ENG_LOG_INFO, "pop3d: SIGHUP: certificate reloaded");
		}
		return;
	}
	if (m->d.stopping) {
		fprintf(stderr, "pop3d: second signal %d while stopping: exiting now\n",
			signum);
		_exit(1);
	}
	m->d.stopping = true;
	fprintf(stderr, "pop3d: signal %d: stopping\n", signum);
	for (size_t i = 0; i < 2; i++)
		if (m->d.listeners[i] != NULL) {
			sm_net_listener_close(m->d.listeners[i], NULL, NULL);
			m->d.listeners[i] = NULL;
		}
	pop3_sessions_shutdown(&m->d);
	if (m->d.n_sessions == 0)
		finish(m);
}

/* ---- main ---- */

static void usage(void)
{
	fprintf(stderr, "usage: sealmail-pop3d --config FILE\n");
}

static int start_listener(pop3_main *m, size_t i, uint16_t port, bool implicit)
{
	sm_net_listener_config lc;
	int rc;

	if (port == 0)
		return 0;
	if (implicit && m->d.tls == NULL) {
		eng_log(ENG_LOG_WARN, "pop3d: pop3s_port %u is off: no usable TLS "
			"certificate", (unsigned)port);
		return 0;
	}
	memset(&lc, 0, sizeof(lc));
	lc.address = m->d.cfg->listen_address;
	lc.port = port;
	lc.implicit_tls = implicit;
	lc.tls = m->d.tls;
	lc.name = implicit ? "pop3s" : "pop3";
	lc.cb = &pop3_net_callbacks;
	lc.ctx = &m->d;
	rc = sm_net_listen(m->d.loop, &lc, &m->d.listeners[i]);
	if (rc != 0)
		return rc;
	printf("pop3d: listening on %s port %u (%s)\n", lc.address,
	       (unsigned)sm_net_listener_port(m->d.listeners[i]),
	       implicit ? "implicit TLS" : m->d.tls != NULL ? "plaintext, STLS" :
	       "plaintext, no STLS");
	return 0;
}

int main(int argc, char **argv)
{
	const char *config_path = NULL;
	sm_config *cfg = NULL;
	uint8_t *secret = NULL;
	uv_loop_t loop;
	pop3_main m;
	rpc_client_config rc_cfg;
	char *err = NULL;
	char peer[300];
	int rc, status = 1;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			config_path = argv[++i];
		else if (strncmp(argv[i], "--config=", 9) == 0)
			config_path = argv[i] + 9;
		else {
			usage();
			return 1;
		}
	}
	if (config_path == NULL) {
		usage();
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	if (sodium_init() < 0) {
		fprintf(stderr, "pop3d: libsodium failed to initialise\n");
		return 1;
	}
	rc = sm_config_load(config_path, &cfg, &err);
	if (rc != 0) {
		fprintf(stderr, "pop3d: %s\n", err != NULL ? err : "cannot read the configuration");
		free(err);
		return 1;
	}
	if (cfg->pop3s_port == 0 && cfg->pop3_port == 0) {
		fprintf(stderr, "pop3d: pop3s_port and pop3_port are both 0: nothing to do\n");
		sm_config_free(&cfg);
		return 1;
	}
	rc = sm_secret_load(cfg->rpc_secret_file, &secret, &err);
	if (rc != 0) {
		fprintf(stderr, "pop3d: cannot load the RPC secret (%s): %s "
			"(run `sealmail init` to create it)\n", cfg->rpc_secret_file,
			err != NULL ? err : eng_strerror(rc));
		free(err);
		sm_config_free(&cfg);
		return 1;
	}
	memset(&m, 0, sizeof(m));
	g_main = &m;
	if (uv_loop_init(&loop) != 0) {
		fprintf(stderr, "pop3d: cannot create the event loop\n");
		goto out_secret;
	}
	m.d.loop = &loop;
	m.d.cfg = cfg;
	m.d.lock_ttl_ms = POP3_LOCK_TTL_MS;
	if (sm_net_tls_new(cfg->tls_cert, cfg->tls_key, &m.d.tls, &err) != 0) {
		eng_log(ENG_LOG_WARN, "pop3d: %s: TLS is off",
			err != NULL ? err : "cannot load the certificate");
		free(err);
		err = NULL;
	}
	memset(&rc_cfg, 0, sizeof(rc_cfg));
	if (cfg->sqlited_socket != NULL) {
		rc_cfg.unix_path = cfg->sqlited_socket;
	} else {
		rc_cfg.host = "127.0.0.1";
		rc_cfg.port = cfg->sqlited_port;
	}
	rc_cfg.secret = secret;
	snprintf(peer, sizeof(peer), "pop3@%s", cfg->hostname);
	if (strlen(peer) > 255)
		peer[255] = '\0';
	rc_cfg.peer_name = peer;
	rc = rpc_client_new(&loop, &rc_cfg, &m.d.rpc);
	sm_secret_free(&secret);
	if (rc != 0) {
		fprintf(stderr, "pop3d: cannot set up the sqlited client: %s\n",
			eng_strerror(rc));
		goto out_loop;
	}
	m.redis_ok = parse_redis_url(&m, cfg) == 0;
	if (!m.redis_ok)
		eng_log(ENG_LOG_WARN, "pop3d: redis_url is not usable by this build: "
			"[IN-USE] locks are local to this process");
	uv_timer_init(&loop, &m.redis_timer);
	m.redis_timer.data = &m;
	redis_connect(&m);
	uv_timer_start(&m.redis_timer, on_redis_timer, POP3_REDIS_RETRY_MS,
		       POP3_LOCK_TTL_MS / 3 < POP3_REDIS_RETRY_MS ? POP3_LOCK_TTL_MS / 3 :
		       POP3_REDIS_RETRY_MS);
	uv_signal_init(&loop, &m.sigint);
	uv_signal_init(&loop, &m.sigterm);
	uv_signal_init(&loop, &m.sighup);
	m.sigint.data = m.sigterm.data = m.sighup.data = &m;
	if (start_listener(&m, 0, cfg->pop3s_port, true) != 0 ||
	    start_listener(&m, 1, cfg->pop3_port, false) != 0 ||
	    (m.d.listeners[0] == NULL && m.d.listeners[1] == NULL)) {
		fprintf(stderr, "pop3d: cannot listen (see the log above)\n");
		for (size_t i = 0; i < 2; i++)
			if (m.d.listeners[i] != NULL)
				sm_net_listener_close(m.d.listeners[i], NULL, NULL);
		m.d.stopping = true;
		finish(&m);
		uv_run(&loop, UV_RUN_DEFAULT);
		goto out_loop;
	}
	fflush(stdout);
	uv_signal_start(&m.sigint, on_signal, SIGINT);
	uv_signal_start(&m.sigterm, on_signal, SIGTERM);
	uv_signal_start(&m.sighup, on_signal, SIGHUP);
	uv_run(&loop, UV_RUN_DEFAULT);
	fprintf(stderr, "pop3d: stopped\n");
	status = 0;
out_loop:
	uv_run(&loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&loop) != 0)
		eng_log(ENG_LOG_WARN, "pop3d: handles still open at exit");
	while (m.d.locks != NULL) {
		pop3_lock *l = m.d.locks;

		m.d.locks = l->next;
		free(l);
	}
	sm_net_tls_free(&m.d.tls);
	sm_redis_target_clear(&m.redis);
out_secret:
	sm_secret_free(&secret);
	sm_config_free(&cfg);
	return status;
}
