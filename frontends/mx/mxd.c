/*
 * sealmail-mx: the MX frontend, inbound SMTP for the installation's
 * domains (docs/mx.md). `sealmail-mx --config FILE` (which is how
 * `sealmail up` runs it). A stateless client of sqlited: several MX
 * processes may run at once and share their rate limits through Redis.
 *
 * Start: configuration, RPC secret, TLS certificate (without one STARTTLS
 * is not offered, logged), an rpc_client to sqlited, sender authentication
 * (mx_auth.h), Redis (rate limits; optional: counters stay in this process
 * while it is down), the listener on mx_port; one line on stdout.
 *
 * Signals: SIGHUP reloads the certificate; SIGINT/SIGTERM stop accepting,
 * idle sessions get "421 4.3.2" and close, a session whose message is
 * being delivered gets its reply first (nothing accepted is dropped), then
 * the process exits 0. A second signal exits at once with 1 (a message
 * not yet answered 250 is the sender's to retry).
 */
#include "mx_private.h"

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

#define MX_REDIS_RETRY_MS 2000u
/* Sender authentication blocks on DNS on libuv's pool (4 threads by default):
 * with slow resolvers the pool, not the CPU, bounds the message rate. */
#define MX_THREADPOOL_SIZE "32"
/* RFC 5321 4.5.3.2: 5 minutes for a command, 10 for a DATA block. */
#define MX_IDLE_TIMEOUT_MS (10u * 60 * 1000)

typedef struct mx_main {
	mxd d;
	uv_signal_t sigint, sigterm, sighup;
	uv_timer_t redis_timer;
	sm_redis_target redis;
	bool redis_ok;
	bool done;
} mx_main;

static mx_main *g_main;

void mxd_queue_id(mxd *d, char out[MX_QUEUE_ID_CHARS + 1])
{
	snprintf(out, MX_QUEUE_ID_CHARS + 1, "%s%08X", d->id_prefix, ++d->id_counter);
}

/* ---- Redis (rate limits) ---- */

static void on_redis_connected(const redisAsyncContext *ac, int status)
{
	mx_main *m = ac->data;

	if (status != REDIS_OK) {
		m->d.redis = NULL;       /* hiredis frees ac after this callback */
		return;
	}
	eng_log(ENG_LOG_INFO, "mx: connected to Redis");
}

static void on_redis_disconnected(const redisAsyncContext *ac, int status)
{
	mx_main *m = ac->data;

	(void)status;
	if (m->d.redis == ac)
		m->d.redis = NULL;
	if (!m->d.stopping)
		eng_log(ENG_LOG_WARN, "mx: Redis connection lost; rate limits count in "
			"this process until it is back");
}

static void on_redis_timer(uv_timer_t *t)
{
	mx_main *m = t->data;
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
}

/* ---- stopping ---- */

static void finish(mx_main *m)
{
	if (m->done)
		return;
	m->done = true;
	if (m->d.rpc != NULL)
		rpc_client_close(m->d.rpc, NULL, NULL);
	m->d.rpc = NULL;
	if (m->d.redis != NULL)
		redisAsyncDisconnect(m->d.redis);
	uv_close((uv_handle_t *)&m->redis_timer, NULL);
	uv_close((uv_handle_t *)&m->sigint, NULL);
	uv_close((uv_handle_t *)&m->sigterm, NULL);
	uv_close((uv_handle_t *)&m->sighup, NULL);
}

void mxd_sessions_gone(mxd *d)
{
	(void)d;
	finish(g_main);
}

static void reload_tls(mx_main *m)
{
	char *err = NULL;

	if (m->d.tls == NULL) {
		eng_log(ENG_LOG_WARN, "mx: SIGHUP: no TLS context to reload");
	} else if (sm_net_tls_reload(m->d.tls, &err) != 0) {
		eng_log(ENG_LOG_ERROR, "mx: SIGHUP: %s; keeping the old certificate",
			err != NULL ? err : "reload failed");
		free(err);
	} else {
		eng_log(ENG_LOG_INFO, "mx: SIGHUP: certificate reloaded");
	}
}

static void on_signal(uv_signal_t *h, int signum)
{
	mx_main *m = h->data;

	if (signum == SIGHUP) {
		reload_tls(m);
		return;
	}
	if (m->d.stopping) {
		fprintf(stderr, "mx: second signal %d while stopping: exiting now\n",
			signum);
		_exit(1);
	}
	m->d.stopping = true;
	fprintf(stderr, "mx: signal %d: stopping\n", signum);
	if (m->d.listener != NULL) {
		sm_net_listener_close(m->d.listener, NULL, NULL);
		m->d.listener = NULL;
	}
	mx_sessions_shutdown(&m->d);
	if (m->d.n_sessions == 0)
		finish(m);
}

/* ---- start ---- */

static int start_listener(mx_main *m)
{
	const sm_config *cfg = m->d.cfg;
	sm_net_listener_config lc;
	int rc;

	memset(&lc, 0, sizeof(lc));
	lc.address = cfg->listen_address;
	lc.port = cfg->mx_port;
	lc.tls = m->d.tls;
	lc.name = "mx";
	lc.idle_timeout_ms = MX_IDLE_TIMEOUT_MS;
	/* A full command line and what a client pipelines after it. */
	lc.max_input_bytes = 2 * (size_t)cfg->mx_max_line_bytes + 256 * 1024;
	lc.max_conns_per_ip = (unsigned)cfg->mx_max_conns_per_ip;
	lc.cb = &mx_net_callbacks;
	lc.ctx = &m->d;
	rc = sm_net_listen(m->d.loop, &lc, &m->d.listener);
	if (rc != 0)
		return rc;
	printf("mx: listening on %s port %u (%s)\n", lc.address,
	       (unsigned)sm_net_listener_port(m->d.listener),
	       m->d.tls != NULL ? "ESMTP, STARTTLS" : "ESMTP, no STARTTLS");
	fflush(stdout);
	return 0;
}

static int start_rpc(mx_main *m, const uint8_t *secret)
{
	const sm_config *cfg = m->d.cfg;
	rpc_client_config rc_cfg;
	char peer[300];

	memset(&rc_cfg, 0, sizeof(rc_cfg));
	if (cfg->sqlited_socket != NULL) {
		rc_cfg.unix_path = cfg->sqlited_socket;
	} else {
		rc_cfg.host = "127.0.0.1";
		rc_cfg.port = cfg->sqlited_port;
	}
	rc_cfg.secret = secret;
	snprintf(peer, sizeof(peer), "mx@%s", cfg->hostname);
	peer[255] = '\0';
	rc_cfg.peer_name = peer;
	/* Reconnect quickly after a sqlited restart: senders are waiting. */
	rc_cfg.backoff_max_ms = 1000;
	rc_cfg.max_queued = 8192;
	return rpc_client_new(m->d.loop, &rc_cfg, &m->d.rpc);
}

static int start_services(mx_main *m, const uint8_t *secret)
{
	const sm_config *cfg = m->d.cfg;
	mx_auth_config ac;
	uint8_t rnd[8];
	char *err = NULL;
	int rc;

	if (sm_net_tls_new(cfg->tls_cert, cfg->tls_key, &m->d.tls, &err) != 0) {
		eng_log(ENG_LOG_WARN, "mx: %s: STARTTLS is off",
			err != NULL ? err : "cannot load the certificate");
		free(err);
	}
	rc = start_rpc(m, secret);
	if (rc != 0) {
		fprintf(stderr, "mx: cannot set up the sqlited client: %s\n",
			eng_strerror(rc));
		return rc;
	}
	memset(&ac, 0, sizeof(ac));
	ac.authserv_id = cfg->hostname;
	rc = mx_auth_new(m->d.loop, &ac, &m->d.auth);
	if (rc != 0) {
		fprintf(stderr, "mx: cannot set up sender authentication: %s\n",
			eng_strerror(rc));
		return rc;
	}
	randombytes_buf(rnd, sizeof(rnd));
	sodium_bin2hex(m->d.id_prefix, sizeof(m->d.id_prefix), rnd, sizeof(rnd));
	for (char *p = m->d.id_prefix; *p != '\0'; p++)
		if (*p >= 'a' && *p <= 'f')
			*p = (char)(*p - 'a' + 'A');
	m->d.rate_mem = mx_rate_mem_new();
	m->d.max_buffered = cfg->mx_max_buffered_mib * 1024 * 1024;
	m->redis_ok = sm_redis_target_parse(cfg->redis_url, cfg->data_dir, &m->redis) == 0;
	if (!m->redis_ok)
		eng_log(ENG_LOG_WARN, "mx: redis_url is not usable by this build: rate "
			"limits count in this process only");
	on_redis_timer(&m->redis_timer);
	uv_timer_start(&m->redis_timer, on_redis_timer, MX_REDIS_RETRY_MS,
		       MX_REDIS_RETRY_MS);
	return start_listener(m);
}

static int load(const char *path, sm_config **cfg, uint8_t **secret)
{
	char *err = NULL;
	int rc = sm_config_load(path, cfg, &err);

	if (rc != 0) {
		fprintf(stderr, "mx: %s\n", err != NULL ? err : "cannot read the configuration");
		free(err);
		return rc;
	}
	if ((*cfg)->mx_port == 0) {
		fprintf(stderr, "mx: mx_port is 0: nothing to do\n");
		sm_config_free(cfg);
		return ENG_EINVAL;
	}
	rc = sm_secret_load((*cfg)->rpc_secret_file, secret, &err);
	if (rc != 0) {
		fprintf(stderr, "mx: cannot load the RPC secret (%s): %s (run `sealmail "
			"init` to create it)\n", (*cfg)->rpc_secret_file,
			err != NULL ? err : eng_strerror(rc));
		free(err);
		sm_config_free(cfg);
	}
	return rc;
}

static const char *parse_args(int argc, char **argv)
{
	const char *path = NULL;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			path = argv[++i];
		else if (strncmp(argv[i], "--config=", 9) == 0)
			path = argv[i] + 9;
		else
			return NULL;
	}
	return path;
}

int main(int argc, char **argv)
{
	const char *config_path = parse_args(argc, argv);
	sm_config *cfg = NULL;
	uint8_t *secret = NULL;
	uv_loop_t loop;
	mx_main m;
	int rc, status = 1;

	if (config_path == NULL) {
		fprintf(stderr, "usage: sealmail-mx --config FILE\n");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	/* Read by libuv at the first uv_queue_work; the environment may override. */
	setenv("UV_THREADPOOL_SIZE", MX_THREADPOOL_SIZE, 0);
	if (sodium_init() < 0) {
		fprintf(stderr, "mx: libsodium failed to initialise\n");
		return 1;
	}
	if (load(config_path, &cfg, &secret) != 0)
		return 1;
	memset(&m, 0, sizeof(m));
	g_main = &m;
	if (uv_loop_init(&loop) != 0) {
		fprintf(stderr, "mx: cannot create the event loop\n");
		sm_secret_free(&secret);
		sm_config_free(&cfg);
		return 1;
	}
	m.d.loop = &loop;
	m.d.cfg = cfg;
	uv_signal_init(&loop, &m.sigint);
	uv_signal_init(&loop, &m.sigterm);
	uv_signal_init(&loop, &m.sighup);
	uv_timer_init(&loop, &m.redis_timer);
	m.sigint.data = m.sigterm.data = m.sighup.data = m.redis_timer.data = &m;
	rc = start_services(&m, secret);
	sm_secret_free(&secret);
	if (rc == 0) {
		uv_signal_start(&m.sigint, on_signal, SIGINT);
		uv_signal_start(&m.sigterm, on_signal, SIGTERM);
		uv_signal_start(&m.sighup, on_signal, SIGHUP);
		uv_run(&loop, UV_RUN_DEFAULT);
		fprintf(stderr, "mx: stopped\n");
		status = 0;
	} else {
		fprintf(stderr, "mx: cannot start (see the log above)\n");
		if (m.d.listener != NULL)
			sm_net_listener_close(m.d.listener, NULL, NULL);
		m.d.stopping = true;
		finish(&m);
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&loop) != 0)
		eng_log(ENG_LOG_WARN, "mx: handles still open at exit");
	mx_auth_free(&m.d.auth);
	mx_rate_mem_free(&m.d.rate_mem);
	sm_net_tls_free(&m.d.tls);
	sm_redis_target_clear(&m.redis);
	sm_config_free(&cfg);
	return status;
}
