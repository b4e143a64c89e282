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
 * Start-up and signals are common/daemon.h's; Redis is
 * common/redis_conn.h's, retried every MX_REDIS_RETRY_MS.
 *
 * Signals: SIGHUP reloads the certificate; SIGINT/SIGTERM stop accepting,
 * idle sessions get "421 4.3.2" and close, a session whose message is
 * being delivered gets its reply first (nothing accepted is dropped), then
 * the process exits 0. A second signal exits at once with 1 (a message
 * not yet answered 250 is the sender's to retry).
 */
#include "mx_private.h"

#include "daemon.h"
#include "eng_error.h"
#include "redis_conn.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MX_REDIS_RETRY_MS 2000u
/* Sender authentication blocks on DNS on libuv's pool (4 threads by default):
 * with slow resolvers the pool, not the CPU, bounds the message rate. */
#define MX_THREADPOOL_SIZE "32"
/* RFC 5321 4.5.3.2: 5 minutes for a command, 10 for a DATA block. */
#define MX_IDLE_TIMEOUT_MS (10u * 60 * 1000)

typedef struct mx_main {
	sm_daemon dm;
	mxd d;
} mx_main;

static mx_main *g_main;

void mxd_queue_id(mxd *d, char out[MX_QUEUE_ID_CHARS + 1])
{
	snprintf(out, MX_QUEUE_ID_CHARS + 1, "%s%08X", d->id_prefix, ++d->id_counter);
}

/* ---- Redis (rate limits) ---- */

static void redis_start(mx_main *m)
{
	sm_redis_conn_config rc = {
		.backoff_min_ms = MX_REDIS_RETRY_MS,
		.backoff_max_ms = MX_REDIS_RETRY_MS,
		.connected_msg = "mx: connected to Redis",
		.lost_msg = "mx: Redis connection lost; rate limits count in this "
			    "process until it is back",
	};

	sm_daemon_redis(&m->dm, &rc, "rate limits count in this process only",
			&m->d.redis);
}

/* ---- stopping (common/daemon.h calls these) ---- */

static size_t mx_stop(void *ctx)
{
	mx_main *m = ctx;

	m->d.stopping = true;
	if (m->d.listener != NULL) {
		sm_net_listener_close(m->d.listener, NULL, NULL);
		m->d.listener = NULL;
	}
	mx_sessions_shutdown(&m->d);
	return m->d.n_sessions;
}

static void mx_finish(void *ctx)
{
	mx_main *m = ctx;

	m->d.rpc = NULL;            /* closed by the daemon skeleton */
	sm_redis_conn_close(&m->d.redis, true);
}

void mxd_sessions_gone(mxd *d)
{
	(void)d;
	sm_daemon_finish(&g_main->dm);
}

/* ---- start ---- */

static const char *mx_idle_reason(const sm_config *cfg)
{
	return cfg->mx_port == 0 ? "mx_port is 0" : NULL;
}

static const sm_daemon_spec mx_spec = {
	.name = "mx",
	.program = "sealmail-mx",
	.peer = "mx",
	.tls_off = "STARTTLS",
	.plain = "ESMTP",
	.starttls = "STARTTLS",
	.idle_reason = mx_idle_reason,
	/* Reconnect quickly after a sqlited restart: senders are waiting. */
	.rpc_backoff_max_ms = 1000,
	.rpc_max_queued = 8192,
	.stop = mx_stop,
	.finish = mx_finish,
};

static int start_listener(mx_main *m)
{
	const sm_config *cfg = m->d.cfg;
	sm_net_listener_config lc = {
		.port = cfg->mx_port,
		.name = "mx",
		.limit_reply = "421 4.7.0 Too many connections from your address\r\n",
		.idle_timeout_ms = MX_IDLE_TIMEOUT_MS,
		/* A full command line and what a client pipelines after it. */
		.max_input_bytes = 2 * (size_t)cfg->mx_max_line_bytes + 256 * 1024,
		.max_conns_per_ip = (unsigned)cfg->mx_max_conns_per_ip,
		.cb = &mx_net_callbacks,
		.ctx = &m->d,
	};

	return sm_daemon_listen(&m->dm, &lc, &m->d.listener);
}

static int start_services(mx_main *m)
{
	const sm_config *cfg = m->d.cfg;
	mx_auth_config ac;
	uint8_t rnd[8];
	int rc;

	rc = sm_daemon_connect_rpc(&m->dm);
	if (rc != 0)
		return rc;
	m->d.rpc = m->dm.rpc;
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
	redis_start(m);
	rc = start_listener(m);
	if (rc != 0)
		m->d.stopping = true;
	return rc;
}

int main(int argc, char **argv)
{
	mx_main m;
	int status;

	/* Read by libuv at the first uv_queue_work; the environment may override. */
	setenv("UV_THREADPOOL_SIZE", MX_THREADPOOL_SIZE, 0);
	memset(&m, 0, sizeof(m));
	g_main = &m;
	if (sm_daemon_open(&m.dm, &mx_spec, &m, argc, argv) != 0)
		return 1;
	m.d.loop = &m.dm.loop;
	m.d.cfg = m.dm.cfg;
	m.d.tls = m.dm.tls;
	status = sm_daemon_run(&m.dm, start_services(&m), "cannot start");
	mx_auth_free(&m.d.auth);
	mx_rate_mem_free(&m.d.rate_mem);
	sm_daemon_free(&m.dm);
	return status;
}
