/*
 * The start-up and stop skeleton every frontend daemon shares (pop3d,
 * imapd, the MX): `sealmail-X --config FILE`, the configuration, the RPC
 * secret, the event loop, the TLS certificate, the rpc_client to sqlited,
 * and the signals. The daemon's own parts (listeners, Redis, timers,
 * sessions) come in through sm_daemon_spec.
 *
 * Rules:
 *  - Every line it prints starts with spec->name ("pop3d: ...").
 *  - sqlited is reached where docs/configuration.md says: sqlited_host
 *    (resolved once at start) on sqlited_port over TLS unless it is
 *    loopback and sqlited_tls is auto, the certificate chaining to
 *    sqlited_ca and naming sqlited_host; else cfg->sqlited_socket; else
 *    loopback TCP on sqlited_port. The peer name is
 *    "<spec->peer>@<hostname>"; the secret is wiped as soon as the client
 *    has it.
 *  - Without a usable certificate dm->tls is NULL and a warning says that
 *    spec->tls_off is off.
 *  - SIGHUP reloads the certificate (sm_net_tls_reload); new connections
 *    get it, a failed reload keeps the old one.
 *  - SIGINT/SIGTERM: dm->stopping, then spec->stop (stop accepting, say
 *    goodbye to the sessions); when it reports no session left, or later
 *    when the daemon calls sm_daemon_finish (its last session is gone),
 *    the sqlited client, spec->finish's handles and the signals are
 *    closed, the loop runs dry and the process exits 0. A second signal
 *    exits at once with 1.
 *  - The loop, the configuration and the TLS context belong to dm; the
 *    daemon copies the pointers it needs and never frees them.
 *
 * Sequence: sm_daemon_open, the daemon's handles, sm_daemon_connect_rpc,
 * the rest of its start (sm_daemon_redis, sm_daemon_listen), sm_daemon_run (which also handles a failed start),
 * the daemon's own frees, sm_daemon_free.
 */
#ifndef SM_DAEMON_H
#define SM_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "net.h"
#include "redis_conn.h"
#include "rpc_client.h"

typedef struct sm_daemon_spec {
	const char *name;            /* "pop3d": the prefix of every line */
	const char *program;         /* "sealmail-pop3d", for the usage line */
	const char *peer;            /* "pop3": the rpc peer name's user part */
	const char *tls_off;         /* "TLS" or "STARTTLS": what a missing
				      * certificate turns off */
	/* The listener lines: "(implicit TLS)", "(<plain>, <starttls>)" or
	 * "(<plain>, no <starttls>)"; an implicit-TLS port without a
	 * certificate is logged as "<implicit_port> N is off". */
	const char *plain;           /* "plaintext", "ESMTP" */
	const char *starttls;        /* "STLS", "STARTTLS" */
	const char *implicit_port;   /* "pop3s_port" */
	/* NULL when cfg gives the daemon something to do, else why not
	 * ("pop3s_port and pop3_port are both 0"). */
	const char *(*idle_reason)(const sm_config *cfg);
	/* rpc_client tuning; 0: rpc_client's default. */
	uint32_t rpc_backoff_max_ms;
	uint32_t rpc_max_queued;
	/* The first SIGINT/SIGTERM: stop accepting, tell the sessions;
	 * returns how many sessions are left. */
	size_t (*stop)(void *ctx);
	/* Close the daemon's own handles (Redis, timers); called once. */
	void (*finish)(void *ctx);
} sm_daemon_spec;

typedef struct sm_daemon {
	const sm_daemon_spec *spec;
	void *ctx;
	uv_loop_t loop;
	sm_config *cfg;
	sm_net_tls *tls;             /* NULL: no usable certificate */
	rpc_client *rpc;             /* set by sm_daemon_connect_rpc */
	uint8_t *secret;             /* until the rpc_client has it */
	uv_signal_t sigint, sigterm, sighup;
	bool stopping;
	bool done;
} sm_daemon;

/* Arguments, libsodium, configuration, secret, loop, certificate, the
 * signal handles (not yet started). 0, or -1 with the reason printed and
 * nothing left to free (exit 1). ctx goes to spec's callbacks. */
int sm_daemon_open(sm_daemon *dm, const sm_daemon_spec *spec, void *ctx,
		   int argc, char **argv);

/* The rpc_client to sqlited (dm->rpc); wipes the secret. 0, or an
 * ENG_E* code with a line printed. */
int sm_daemon_connect_rpc(sm_daemon *dm);

/*
 * start_rc 0: starts the signals and runs the loop until the daemon has
 * stopped ("<name>: stopped"), status 0. Otherwise the start failed:
 * prints "<name>: <fail_msg> (see the log above)" when fail_msg is not
 * NULL, stops (dm->stopping) and finishes, status 1. Either way the loop
 * then runs dry and is closed. Returns the exit status.
 */
int sm_daemon_run(sm_daemon *dm, int start_rc, const char *fail_msg);

/*
 * A listener on lc->port from cfg->listen_address with dm->tls (the
 * caller sets port, implicit_tls, name, callbacks and limits); prints its
 * line on stdout. A port of 0, or an implicit-TLS port without a
 * certificate (logged), is off: 0 with *l_r NULL. Else sm_net_listen's
 * result.
 */
int sm_daemon_listen(sm_daemon *dm, sm_net_listener_config *lc,
		     sm_net_listener **l_r);

/*
 * The daemon's Redis connection (redis_conn.h) to cfg->redis_url, held
 * while the daemon stops: rc gives the backoff, log lines and on_connect.
 * Without a usable redis_url: a warning "<name>: redis_url is not usable
 * by this build: <without>" and *c_r NULL.
 */
void sm_daemon_redis(sm_daemon *dm, sm_redis_conn_config *rc, const char *without,
		     sm_redis_conn **c_r);

/* Closes the sqlited client, spec->finish, the signals; once. */
void sm_daemon_finish(sm_daemon *dm);

/* After sm_daemon_run: the certificate, the secret, the configuration. */
void sm_daemon_free(sm_daemon *dm);

#endif
