/*
 * The in-process sqlited without cmocka (testsrv_core.h says what it is):
 * moved from testsrv.c (the tests' fixture, which asserts on these
 * functions' results) and bench/bench_view.c (which had its own copy).
 * Callbacks of the loop's thread: stop_cb -> net_stopped ->
 * aliases_closed, which marks the server stopped.
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "eng_error.h"
#include "keys.h"
#include "rpc_codec.h"
#include "srv_alias.h"
#include "store.h"
#include "testsrv_core.h"

static const eng_kdf_params fast = { 1, 8192 };

/* ---- start ---- */

int tsrv_init(struct tsrv *t, char *data_dir, const tsrv_options *o)
{
	srv_alias_config acfg;
	char *text, *tmp;
	int err;

	memset(t, 0, sizeof(*t));
	t->dir = data_dir;
	if ((err = eng_crypto_init()) != 0)
		return err;
	if (asprintf(&text, "data_dir = %s\n", data_dir) < 0)
		return ENG_EIO;
	err = sm_config_parse(text, strlen(text), "t.conf", &t->cfg, NULL);
	free(text);
	if (err != 0)
		return err;
	t->cfg->sqlited_port = 0;
	if (asprintf(&tmp, "%s/tmp", data_dir) < 0)
		return ENG_EIO;
	t->s.tmp_dir = tmp;
	if (mkdir(tmp, 0700) != 0 || uv_loop_init(&t->loop) != 0)
		return ENG_EIO;
	t->s.loop = &t->loop;
	t->s.cfg = t->cfg;
	t->s.kdf = fast;
	t->s.rpc_secret = eng_secret_new(32);
	randombytes_buf(t->s.rpc_secret, 32);
	srv_alias_config_default(&acfg);
	if (o != NULL && o->idle_seconds >= 0)
		acfg.idle_seconds = (unsigned)o->idle_seconds;
	acfg.data_dir = data_dir;
	acfg.kdf_params = fast;
	if ((err = srv_aliases_new(&t->loop, &acfg, &t->s.aliases)) != 0 ||
	    (err = dir_open(NULL, data_dir, &t->s.dir)) != 0)
		return err;
	/* Nothing listens on port 1: events and throttle stay in memory. */
	if (o != NULL && o->no_events)
		return 0;
	return srv_events_new(&t->s, "redis://127.0.0.1:1", &t->s.events);
}

static void db_created(void *ctx, int result)
{
	*(int *)ctx = result;
}

int tsrv_add_alias(struct tsrv *t, const char *address, const char *pw,
		   char id_r[DIR_ID_HEX_LEN + 1], uint8_t **mk_r)
{
	dir_alias_spec spec = { 0 };
	eng_keyring *kr = NULL;
	uint8_t *mk = NULL, *blob = NULL;
	size_t blob_len;
	int result = 1, err;

	if ((err = eng_keyring_create(pw, strlen(pw), fast, &kr, &mk)) != 0 ||
	    (err = eng_keyring_encode(kr, &blob, &blob_len)) != 0)
		goto out;
	spec.kind = DIR_MAILBOX;
	spec.keyring = blob;
	spec.keyring_len = blob_len;
	if ((err = dir_alias_add(t->s.dir, address, &spec, id_r)) != 0 ||
	    (err = srv_alias_create_db(t->s.aliases, id_r, mk, db_created,
				       &result)) != 0)
		goto out;
	while (result == 1)
		uv_run(&t->loop, UV_RUN_ONCE);
	err = result;
	if (err == 0 && mk_r != NULL) {
		*mk_r = mk;
		mk = NULL;
	}
out:
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
	free(blob);
	return err;
}

/* ---- the loop's thread ---- */

static void aliases_closed(void *ctx)
{
	struct tsrv *t = ctx;

	srv_events_free(&t->s.events);
	uv_close((uv_handle_t *)&t->stop, NULL);
	t->stopped = 1;
}

static void net_stopped(void *ctx)
{
	struct tsrv *t = ctx;

	srv_aliases_shutdown(t->s.aliases, aliases_closed, t);
}

static void stop_cb(uv_async_t *a)
{
	struct tsrv *t = a->data;

	srv_net_stop(&t->s, net_stopped, t);
}

static void loop_thread(void *arg)
{
	struct tsrv *t = arg;

	uv_run(&t->loop, UV_RUN_DEFAULT);
}

int tsrv_run(struct tsrv *t, const srv_net_options *net_opt)
{
	srv_net_options opt;
	int err;

	if (net_opt != NULL)
		opt = *net_opt;
	else
		srv_net_options_default(&opt);
	if ((err = srv_net_start(&t->s, &opt)) != 0)
		return err;
	if (uv_async_init(&t->loop, &t->stop, stop_cb) != 0)
		return ENG_EIO;
	t->stop.data = t;
	if (uv_thread_create(&t->thread, loop_thread, t) != 0)
		return ENG_EIO;
	return 0;
}

/* ---- stop ---- */

int tsrv_stop(struct tsrv *t)
{
	int err = 0;

	uv_async_send(&t->stop);
	uv_thread_join(&t->thread);
	if (t->stopped != 1)
		err = ENG_EBUSY;
	/* Stopped: nothing runs any more; free, then run the closes. */
	srv_net_free(&t->s);
	srv_aliases_free(&t->s.aliases);
	uv_run(&t->loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&t->loop) != 0)
		err = ENG_EBUSY;
	dir_close(&t->s.dir);
	eng_secret_free(&t->s.rpc_secret);
	free(t->s.tmp_dir);
	t->s.tmp_dir = NULL;
	sm_config_free(&t->cfg);
	return err;
}

/* ---- request helpers ---- */

void begin(eng_buf *b, const uint8_t *session, const char *mailbox)
{
	eng_buf_reset(b);
	rpc_put_bytes(b, RPC_T_SESSION, session, SRV_SESSION_BYTES);
	if (mailbox != NULL)
		rpc_put_str(b, RPC_T_MAILBOX, mailbox);
}

void put_uidset(eng_buf *b, uint32_t tag, uint32_t lo, uint32_t hi)
{
	eng_uidset set = { 0 };

	eng_uidset_add(&set, lo, hi);
	rpc_put_uidset(b, tag, &set);
	eng_uidset_free(&set);
}
