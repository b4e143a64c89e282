/*
 * The frontend daemons' shared skeleton (daemon.h): start-up, the sqlited
 * client, signals, stop. Protocol work stays in each daemon; this file
 * knows no protocol.
 */
#include "daemon.h"

#include "eng_error.h"
#include "secrets.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* The configuration and the RPC secret; 0 or -1 (printed, freed). */
static int load_config(sm_daemon *dm, const char *path)
{
	const char *name = dm->spec->name, *idle;
	char *err = NULL;
	int rc = sm_config_load(path, &dm->cfg, &err);

	if (rc != 0) {
		fprintf(stderr, "%s: %s\n", name,
			err != NULL ? err : "cannot read the configuration");
		free(err);
		return -1;
	}
	idle = dm->spec->idle_reason(dm->cfg);
	if (idle != NULL) {
		fprintf(stderr, "%s: %s: nothing to do\n", name, idle);
		sm_config_free(&dm->cfg);
		return -1;
	}
	rc = sm_secret_load(dm->cfg->rpc_secret_file, &dm->secret, &err);
	if (rc != 0) {
		fprintf(stderr, "%s: cannot load the RPC secret (%s): %s "
			"(run `sealmail init` to create it)\n", name,
			dm->cfg->rpc_secret_file, err != NULL ? err : eng_strerror(rc));
		free(err);
		sm_config_free(&dm->cfg);
		return -1;
	}
	return 0;
}

static void load_tls(sm_daemon *dm)
{
	char *err = NULL;

	if (sm_net_tls_new(dm->cfg->tls_cert, dm->cfg->tls_key, &dm->tls, &err) != 0) {
		eng_log(ENG_LOG_WARN, "%s: %s: %s is off", dm->spec->name,
			err != NULL ? err : "cannot load the certificate",
			dm->spec->tls_off);
		free(err);
	}
}

int sm_daemon_open(sm_daemon *dm, const sm_daemon_spec *spec, void *ctx,
		   int argc, char **argv)
{
	const char *config_path = parse_args(argc, argv);

	memset(dm, 0, sizeof(*dm));
	dm->spec = spec;
	dm->ctx = ctx;
	if (config_path == NULL) {
		fprintf(stderr, "usage: %s --config FILE\n", spec->program);
		return -1;
	}
	signal(SIGPIPE, SIG_IGN);
	if (sodium_init() < 0) {
		fprintf(stderr, "%s: libsodium failed to initialise\n", spec->name);
		return -1;
	}
	if (load_config(dm, config_path) != 0)
		return -1;
	if (uv_loop_init(&dm->loop) != 0) {
		fprintf(stderr, "%s: cannot create the event loop\n", spec->name);
		sm_secret_free(&dm->secret);
		sm_config_free(&dm->cfg);
		return -1;
	}
	load_tls(dm);
	uv_signal_init(&dm->loop, &dm->sigint);
	uv_signal_init(&dm->loop, &dm->sigterm);
	uv_signal_init(&dm->loop, &dm->sighup);
	dm->sigint.data = dm->sigterm.data = dm->sighup.data = dm;
	return 0;
}

/* host (a name or an address) as a numeric address: rpc_client does no
 * name resolution. ENG_ENOTFOUND when it does not resolve. */
static int resolve_numeric(const char *host, char *out, size_t size)
{
	struct addrinfo hints, *res = NULL;
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
		return ENG_ENOTFOUND;
	rc = getnameinfo(res->ai_addr, res->ai_addrlen, out, (socklen_t)size,
			 NULL, 0, NI_NUMERICHOST);
	freeaddrinfo(res);
	return rc == 0 ? 0 : ENG_ENOTFOUND;
}

int sm_daemon_connect_rpc(sm_daemon *dm)
{
	const sm_config *cfg = dm->cfg;
	rpc_client_config rc_cfg;
	rpc_tls_config tls;
	char numeric[INET6_ADDRSTRLEN];
	char peer[300];
	int rc;

	memset(&rc_cfg, 0, sizeof(rc_cfg));
	memset(&tls, 0, sizeof(tls));
	if (cfg->sqlited_host != NULL) {
		/* Another machine (or a TCP port here): docs/configuration.md,
		 * sqlited_host. The name is resolved once, at start; the
		 * certificate must name sqlited_host and chain to sqlited_ca. */
		if (cfg->sqlited_port == 0) {
			fprintf(stderr, "%s: sqlited_host is set but sqlited_port "
				"is 0\n", dm->spec->name);
			sm_secret_free(&dm->secret);
			return ENG_EINVAL;
		}
		if ((rc = resolve_numeric(cfg->sqlited_host, numeric,
					  sizeof(numeric))) != 0) {
			fprintf(stderr, "%s: cannot resolve sqlited_host %s\n",
				dm->spec->name, cfg->sqlited_host);
			sm_secret_free(&dm->secret);
			return rc;
		}
		tls.ca_file = cfg->sqlited_ca;
		tls.server_name = cfg->sqlited_host;
		tls.always = cfg->sqlited_tls_always;
		rc_cfg.host = numeric;
		rc_cfg.port = cfg->sqlited_port;
		rc_cfg.tls = &tls;
	} else if (cfg->sqlited_socket != NULL) {
		rc_cfg.unix_path = cfg->sqlited_socket;
	} else {
		rc_cfg.host = "127.0.0.1";
		rc_cfg.port = cfg->sqlited_port;
	}
	rc_cfg.secret = dm->secret;
	snprintf(peer, sizeof(peer), "%s@%s", dm->spec->peer, cfg->hostname);
	peer[255] = '\0';
	rc_cfg.peer_name = peer;
	rc_cfg.backoff_max_ms = dm->spec->rpc_backoff_max_ms;
	rc_cfg.max_queued = dm->spec->rpc_max_queued;
	/* Test hook: a short default request timeout (tests of requests that
	 * must not depend on it, e.g. logins: tests/integration/
	 * test_login_burst.py). Not a configuration key. */
	{
		const char *e = getenv("SEALMAIL_RPC_TEST_TIMEOUT_MS");

		if (e != NULL && atoi(e) > 0)
			rc_cfg.timeout_ms = (uint32_t)atoi(e);
	}
	rc = rpc_client_new(&dm->loop, &rc_cfg, &dm->rpc);
	sm_secret_free(&dm->secret);
	if (rc != 0)
		fprintf(stderr, "%s: cannot set up the sqlited client: %s\n",
			dm->spec->name, eng_strerror(rc));
	return rc;
}

int sm_daemon_listen(sm_daemon *dm, sm_net_listener_config *lc,
		     sm_net_listener **l_r)
{
	const sm_daemon_spec *spec = dm->spec;
	int rc;

	*l_r = NULL;
	if (lc->port == 0)
		return 0;
	if (lc->implicit_tls && dm->tls == NULL) {
		eng_log(ENG_LOG_WARN, "%s: %s %u is off: no usable TLS certificate",
			spec->name, spec->implicit_port, (unsigned)lc->port);
		return 0;
	}
	lc->address = dm->cfg->listen_address;
	lc->tls = dm->tls;
	rc = sm_net_listen(&dm->loop, lc, l_r);
	if (rc != 0)
		return rc;
	if (lc->implicit_tls)
		printf("%s: listening on %s port %u (implicit TLS)\n", spec->name,
		       lc->address, (unsigned)sm_net_listener_port(*l_r));
	else
		printf("%s: listening on %s port %u (%s, %s%s)\n", spec->name,
		       lc->address, (unsigned)sm_net_listener_port(*l_r), spec->plain,
		       dm->tls != NULL ? "" : "no ", spec->starttls);
	fflush(stdout);
	return 0;
}

void sm_daemon_redis(sm_daemon *dm, sm_redis_conn_config *rc, const char *without,
		     sm_redis_conn **c_r)
{
	rc->redis_url = dm->cfg->redis_url;
	rc->data_dir = dm->cfg->data_dir;
	rc->hold = &dm->stopping;
	if (sm_redis_conn_new(&dm->loop, rc, c_r) != 0)
		eng_log(ENG_LOG_WARN, "%s: redis_url is not usable by this build: %s",
			dm->spec->name, without);
}

void sm_daemon_finish(sm_daemon *dm)
{
	if (dm->done)
		return;
	dm->done = true;
	if (dm->rpc != NULL)
		rpc_client_close(dm->rpc, NULL, NULL);
	dm->rpc = NULL;
	dm->spec->finish(dm->ctx);
	uv_close((uv_handle_t *)&dm->sigint, NULL);
	uv_close((uv_handle_t *)&dm->sigterm, NULL);
	uv_close((uv_handle_t *)&dm->sighup, NULL);
}

static void reload_tls(sm_daemon *dm)
{
	const char *name = dm->spec->name;
	char *err = NULL;

	if (dm->tls == NULL) {
		eng_log(ENG_LOG_WARN, "%s: SIGHUP: no TLS context to reload", name);
	} else if (sm_net_tls_reload(dm->tls, &err) != 0) {
		eng_log(ENG_LOG_ERROR, "%s: SIGHUP: %s; keeping the old certificate",
			name, err != NULL ? err : "reload failed");
		free(err);
	} else {
		eng_log(ENG_LOG_INFO, "%s: SIGHUP: certificate reloaded", name);
	}
}

static void on_signal(uv_signal_t *h, int signum)
{
	sm_daemon *dm = h->data;

	if (signum == SIGHUP) {
		reload_tls(dm);
		return;
	}
	if (dm->stopping) {
		fprintf(stderr, "%s: second signal %d while stopping: exiting now\n",
			dm->spec->name, signum);
		_exit(1);
	}
	dm->stopping = true;
	fprintf(stderr, "%s: signal %d: stopping\n", dm->spec->name, signum);
	if (dm->spec->stop(dm->ctx) == 0)
		sm_daemon_finish(dm);
}

int sm_daemon_run(sm_daemon *dm, int start_rc, const char *fail_msg)
{
	int status = 1;

	if (start_rc == 0) {
		fflush(stdout);
		uv_signal_start(&dm->sigint, on_signal, SIGINT);
		uv_signal_start(&dm->sigterm, on_signal, SIGTERM);
		uv_signal_start(&dm->sighup, on_signal, SIGHUP);
		uv_run(&dm->loop, UV_RUN_DEFAULT);
		fprintf(stderr, "%s: stopped\n", dm->spec->name);
		status = 0;
	} else {
		if (fail_msg != NULL)
			fprintf(stderr, "%s: %s (see the log above)\n", dm->spec->name,
				fail_msg);
		dm->stopping = true;
		sm_daemon_finish(dm);
	}
	uv_run(&dm->loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&dm->loop) != 0)
		eng_log(ENG_LOG_WARN, "%s: handles still open at exit", dm->spec->name);
	return status;
}

void sm_daemon_free(sm_daemon *dm)
{
	sm_net_tls_free(&dm->tls);
	sm_secret_free(&dm->secret);
	sm_config_free(&dm->cfg);
}
