/*
 * sqlited: the storage service. `sqlited --config FILE` (which is how
 * `sealmail up` runs it).
 *
 * Start: configuration, RPC secret, staging copies left in data_dir/tmp
 * removed, directory, alias table, Redis events, listeners (one line on
 * stdout per listener, then it serves), the backup schedule (srv.h). A bad
 * configuration or a missing secret is one sentence on stderr and exit 1.
 *
 * Stop (SIGINT or SIGTERM): stop accepting; let the requests in flight
 * finish and their answers be written; then checkpoint, close and wipe
 * every open mailbox (srv_aliases_shutdown); close Redis; exit 0. A
 * second signal while stopping exits at once with status 1 (the
 * databases are WAL: nothing acknowledged is lost, only time).
 */
#include "config.h"
#include "dir.h"
#include "eng_error.h"
#include "keys.h"
#include "secrets.h"
#include "srv_outbound.h"
#include "srv.h"
#include "srv_alias.h"
#include "srv_net.h"
#include "srv_malloc.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

typedef struct sqlited {
	srv s;
	uv_signal_t sigint, sigterm;
	srv_backup_sched *backups;   /* NULL: backup_schedule off */
	bool stopping;
} sqlited;

static void usage(void)
{
	fprintf(stderr, "usage: sqlited --config FILE\n");
}

static void on_aliases_down(void *ctx)
{
	sqlited *d = ctx;

	srv_events_free(&d->s.events);
	uv_close((uv_handle_t *)&d->sigint, NULL);
	uv_close((uv_handle_t *)&d->sigterm, NULL);
}

static void on_net_stopped(void *ctx)
{
	sqlited *d = ctx;

	srv_aliases_shutdown(d->s.aliases, on_aliases_down, d);
}

static void on_signal(uv_signal_t *h, int signum)
{
	sqlited *d = h->data;

	if (d->stopping) {
		fprintf(stderr, "sqlited: second signal %d while stopping: exiting now\n",
			signum);
		_exit(1);
	}
	d->stopping = true;
	fprintf(stderr, "sqlited: signal %d: stopping\n", signum);
	srv_backup_sched_stop(&d->backups);
	srv_net_stop(&d->s, on_net_stopped, d);
}

int main(int argc, char **argv)
{
	const char *config_path = NULL;
	sm_config *cfg = NULL;
	srv_alias_config acfg;
	uv_loop_t loop;
	sqlited d;
	char *err = NULL;
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
	/* The thread cache off (a re-exec), fastbins off, fixed thresholds:
	 * what released aliases used goes back to the system (srv_malloc.h). */
	srv_malloc_tune(argv);
	/* Database work runs on libuv's pool, sized before its first use. A
	 * commit holds its thread through the WAL fdatasync (5-25 ms on a
	 * loaded disk), so the pool, not the CPU, capped how many aliases
	 * commit at once: 32 lets 20 mailboxes' APPENDs overlap their syncs
	 * (bench/README.md, "IMAP APPEND (2026-11-26 session 2)"). */
	if (getenv("UV_THREADPOOL_SIZE") == NULL)
		setenv("UV_THREADPOOL_SIZE", "32", 1);
	signal(SIGPIPE, SIG_IGN);
	if (eng_crypto_init() != 0) {
		fprintf(stderr, "sqlited: libsodium failed to initialise\n");
		return 1;
	}
	rc = sm_config_load(config_path, &cfg, &err);
	if (rc != 0) {
		fprintf(stderr, "sqlited: %s\n", err != NULL ? err : "cannot read the configuration");
		free(err);
		return 1;
	}
	memset(&d, 0, sizeof(d));
	d.s.cfg = cfg;
	rc = sm_secret_load(cfg->rpc_secret_file, &d.s.rpc_secret, &err);
	if (rc != 0) {
		fprintf(stderr, "sqlited: cannot load the RPC secret (%s): %s "
			"(run `sealmail init` to create it)\n", cfg->rpc_secret_file,
			err != NULL ? err : eng_strerror(rc));
		free(err);
		sm_config_free(&cfg);
		return 1;
	}
	if (uv_loop_init(&loop) != 0) {
		fprintf(stderr, "sqlited: cannot create the event loop\n");
		goto out_secret;
	}
	d.s.loop = &loop;
	d.s.tmp_dir = eng_malloc(strlen(cfg->data_dir) + sizeof("/tmp"));
	sprintf(d.s.tmp_dir, "%s/tmp", cfg->data_dir);
	if (mkdir(d.s.tmp_dir, 0700) != 0 && access(d.s.tmp_dir, W_OK) != 0) {
		fprintf(stderr, "sqlited: cannot create %s\n", d.s.tmp_dir);
		goto out_loop;
	}
	/* No backup job runs yet: staging copies here are leftovers. */
	srv_backup_clean_tmp(cfg->data_dir);
	rc = dir_open(NULL, cfg->data_dir, &d.s.dir);
	if (rc != 0) {
		fprintf(stderr, "sqlited: cannot open the directory in %s: %s\n",
			cfg->data_dir, eng_strerror(rc));
		goto out_loop;
	}
	/* The forward queue: counts what is queued; keys at first use. */
	srv_outbound_new(cfg->data_dir, &d.s.outbound);
	srv_alias_config_default(&acfg);
	acfg.data_dir = cfg->data_dir;
	acfg.cache_size = (unsigned)cfg->db_cache_size;
	acfg.idle_seconds = (unsigned)cfg->db_idle_seconds;
	acfg.release_seconds = (unsigned)cfg->db_release_seconds;
	acfg.kdf_params.opslimit = cfg->argon2_opslimit;
	acfg.kdf_params.memlimit_bytes = cfg->argon2_memlimit_mib * 1024 * 1024;
	d.s.kdf = acfg.kdf_params;
	srv_alias_config_test_env(&acfg);
	rc = srv_aliases_new(&loop, &acfg, &d.s.aliases);
	if (rc != 0) {
		fprintf(stderr, "sqlited: cannot set up the mailbox table: %s\n",
			eng_strerror(rc));
		goto out_dir;
	}
	srv_events_new(&d.s, cfg->redis_url, &d.s.events);
	rc = srv_net_start(&d.s, NULL);
	if (rc != 0) {
		fprintf(stderr, "sqlited: cannot listen (see the log above)\n");
		srv_net_stop(&d.s, NULL, NULL);
		srv_events_free(&d.s.events);
		srv_aliases_shutdown(d.s.aliases, NULL, NULL);
		uv_run(&loop, UV_RUN_DEFAULT);
		goto out_net;
	}
	for (size_t i = 0; srv_net_listener(&d.s, i) != NULL; i++)
		printf("sqlited: listening on %s\n", srv_net_listener(&d.s, i));
	fflush(stdout);
	uv_signal_init(&loop, &d.sigint);
	uv_signal_init(&loop, &d.sigterm);
	d.sigint.data = &d;
	d.sigterm.data = &d;
	uv_signal_start(&d.sigint, on_signal, SIGINT);
	uv_signal_start(&d.sigterm, on_signal, SIGTERM);
	if (srv_backup_sched_start(&d.s, config_path, &d.backups) != 0)
		fprintf(stderr, "sqlited: backup_schedule is not \"off\" or "
			"\"daily HH:MM\": no scheduled backups\n");
	uv_run(&loop, UV_RUN_DEFAULT);
	fprintf(stderr, "sqlited: stopped\n");
	status = 0;
out_net:
	srv_net_free(&d.s);
	srv_aliases_free(&d.s.aliases);
out_dir:
	srv_outbound_free(&d.s.outbound);
	dir_close(&d.s.dir);
out_loop:
	free(d.s.tmp_dir);
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_loop_close(&loop);
out_secret:
	sm_secret_free(&d.s.rpc_secret);
	sm_config_free(&cfg);
	return status;
}
