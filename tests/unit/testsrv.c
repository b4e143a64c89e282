/*
 * The sqlited fixture of the opcode tests (testsrv.h says what it is):
 * set-up and tear-down of the server, and the client helpers. Moved
 * verbatim from test_srv_ops.c (setup_net added for test_rpc_client_real); its functions assert (cmocka) rather than
 * return errors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "dir.h"
#include "eng_error.h"
#include "keys.h"
#include "rpc_bodies.h"
#include "rpc_codec.h"
#include "rpc_sync.h"
#include "srv.h"
#include "srv_alias.h"
#include "srv_net.h"
#include "srv_ops_view.h"
#include "testutil.h"
#include "testsrv.h"

static const eng_kdf_params fast = { 1, 8192 };
const char password[] = "correct horse";

/* ---- the server: set up on the test thread, run on its own ---- */

static void db_created(void *ctx, int result)
{
	*(int *)ctx = result;
}

static void add_alias(struct fx *f, const char *address, const char *pw,
		      char id_r[DIR_ID_HEX_LEN + 1])
{
	dir_alias_spec spec = { 0 };
	eng_keyring *kr;
	uint8_t *mk, *blob;
	size_t blob_len;
	int result = 1;

	assert_int_equal(eng_keyring_create(pw, strlen(pw), fast, &kr, &mk), 0);
	assert_int_equal(eng_keyring_encode(kr, &blob, &blob_len), 0);
	spec.kind = DIR_MAILBOX;
	spec.keyring = blob;
	spec.keyring_len = blob_len;
	assert_int_equal(dir_alias_add(f->s.dir, address, &spec, id_r), 0);
	assert_int_equal(srv_alias_create_db(f->s.aliases, id_r, mk,
					     db_created, &result), 0);
	while (result == 1)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(result, 0);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
	free(blob);
}

static void aliases_closed(void *ctx)
{
	struct fx *f = ctx;

	srv_events_free(&f->s.events);
	uv_close((uv_handle_t *)&f->stop, NULL);
	f->stopped = 1;
}

static void net_stopped(void *ctx)
{
	struct fx *f = ctx;

	srv_aliases_shutdown(f->s.aliases, aliases_closed, f);
}

static void stop_cb(uv_async_t *a)
{
	struct fx *f = a->data;

	srv_net_stop(&f->s, net_stopped, f);
}

static void loop_thread(void *arg)
{
	struct fx *f = arg;

	uv_run(&f->loop, UV_RUN_DEFAULT);
}

/* idle_seconds < 0: the default (300), else an alias without sessions
 * is closed at the next tick after that long (srv_alias.c); net_opt NULL:
 * srv_net's defaults. */
int setup_net(void **state, int idle_seconds, const srv_net_options *net_opt)
{
	struct fx *f = calloc(1, sizeof(*f));
	srv_alias_config acfg;
	srv_net_options opt;
	char *text, tmp[4096];

	assert_int_equal(eng_crypto_init(), 0);
	f->dir = tu_tmpdir();
	text = malloc(strlen(f->dir) + 64);
	sprintf(text, "data_dir = %s\n", f->dir);
	assert_int_equal(sm_config_parse(text, strlen(text), "t.conf", &f->cfg,
					 NULL), 0);
	free(text);
	f->cfg->sqlited_port = 0;
	snprintf(tmp, sizeof(tmp), "%s/tmp", f->dir);
	assert_int_equal(mkdir(tmp, 0700), 0);
	assert_int_equal(uv_loop_init(&f->loop), 0);

	f->s.loop = &f->loop;
	f->s.cfg = f->cfg;
	f->s.kdf = fast;
	f->s.tmp_dir = strdup(tmp);
	f->s.rpc_secret = eng_secret_new(32);
	randombytes_buf(f->s.rpc_secret, 32);
	srv_alias_config_default(&acfg);
	if (idle_seconds >= 0)
		acfg.idle_seconds = (unsigned)idle_seconds;
	acfg.data_dir = f->dir;
	acfg.kdf_params = fast;
	assert_int_equal(srv_aliases_new(&f->loop, &acfg, &f->s.aliases), 0);
	assert_int_equal(dir_open(NULL, f->dir, &f->s.dir), 0);
	/* Nothing listens on port 1: events and throttle stay in memory. */
	assert_int_equal(srv_events_new(&f->s, "redis://127.0.0.1:1",
					&f->s.events), 0);
	assert_int_equal(dir_domain_add(f->s.dir, "example.org"), 0);
	add_alias(f, "alice@example.org", password, f->alias_id);

	if (net_opt != NULL)
		opt = *net_opt;
	else
		srv_net_options_default(&opt);
	assert_int_equal(srv_net_start(&f->s, &opt), 0);
	assert_int_equal(uv_async_init(&f->loop, &f->stop, stop_cb), 0);
	f->stop.data = f;
	assert_int_equal(uv_thread_create(&f->thread, loop_thread, f), 0);
	*state = f;
	return 0;
}

int setup_cfg(void **state, int idle_seconds)
{
	return setup_net(state, idle_seconds, NULL);
}

int setup(void **state)
{
	return setup_cfg(state, -1);
}

int teardown(void **state)
{
	struct fx *f = *state;

	uv_async_send(&f->stop);
	uv_thread_join(&f->thread);
	assert_int_equal(f->stopped, 1);
	srv_net_free(&f->s);
	srv_aliases_free(&f->s.aliases);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	dir_close(&f->s.dir);
	eng_secret_free(&f->s.rpc_secret);
	free(f->s.tmp_dir);
	sm_config_free(&f->cfg);
	tu_rmrf(f->dir);
	free(f->dir);
	free(f);
	return 0;
}

/* ---- the client ---- */

rpc_sync *connect_client(struct fx *f)
{
	rpc_sync *c = NULL;

	assert_int_equal(rpc_sync_connect_unix(f->cfg->sqlited_socket,
					       f->s.rpc_secret, "imap@test",
					       20000, &c), 0);
	return c;
}

int call(rpc_sync *c, uint16_t op, eng_buf *req, rpc_sync_resp *resp)
{
	int err = rpc_sync_call(c, op, req->data, req->len, resp);

	eng_buf_reset(req);
	return err;
}

int unlock(rpc_sync *c, const char *alias, const char *pw,
	   uint8_t session[SRV_SESSION_BYTES])
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;
	const uint8_t *p;
	size_t len;
	int err;

	rpc_put_str(&b, RPC_T_ALIAS, alias);
	rpc_put_str(&b, RPC_T_PASSWORD, pw);
	err = call(c, RPC_OP_UNLOCK, &b, &resp);
	if (err == 0) {
		assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_SESSION, &p,
					       &len), 0);
		assert_int_equal(len, SRV_SESSION_BYTES);
		memcpy(session, p, len);
	}
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	return err;
}

/* Starts a request payload with the session (and a mailbox). */
void begin(eng_buf *b, const uint8_t *session, const char *mailbox)
{
	eng_buf_reset(b);
	rpc_put_bytes(b, RPC_T_SESSION, session, SRV_SESSION_BYTES);
	if (mailbox != NULL)
		rpc_put_str(b, RPC_T_MAILBOX, mailbox);
}

uint64_t get_u(const rpc_view *v, uint32_t tag)
{
	uint64_t val = 0;

	assert_int_equal(rpc_get_u64(v, tag, &val), 0);
	return val;
}

void put_uidset(eng_buf *b, uint32_t tag, uint32_t lo, uint32_t hi)
{
	eng_uidset set = { 0 };

	eng_uidset_add(&set, lo, hi);
	rpc_put_uidset(b, tag, &set);
	eng_uidset_free(&set);
}

/* APPEND of a message in memory; returns the error, UID in *uid_r. */
int append(rpc_sync *c, const uint8_t *session, const char *mailbox,
	   const void *msg, size_t len, uint32_t flags, const char *key,
	   uint32_t *uid_r)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	rpc_sync_call_opts opts = { 0 };
	eng_buf b = ENG_BUF_INIT;
	int err;

	begin(&b, session, mailbox);
	rpc_put_u64(&b, RPC_T_SIZE, len);
	if (flags != 0)
		rpc_put_u64(&b, RPC_T_FLAGS, flags);
	if (key != NULL)
		rpc_put_str(&b, RPC_T_IDEMPOTENCY_KEY, key);
	opts.has_body = true;
	opts.body = msg;
	opts.body_len = len;
	err = rpc_sync_call_ex(c, RPC_OP_APPEND, b.data, b.len, &opts, &resp);
	if (err == 0) {
		*uid_r = (uint32_t)get_u(&resp.view, RPC_T_UID);
		assert_true(get_u(&resp.view, RPC_T_MODSEQ) > 0);
		assert_true(get_u(&resp.view, RPC_T_UIDVALIDITY) > 0);
	}
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	return err;
}

char *small_message(const char *subject, const char *msgid,
		    const char *references, const char *body)
{
	char *m = malloc(1024);

	snprintf(m, 1024,
		 "From: Bob <bob@example.net>\r\nTo: alice@example.org\r\n"
		 "Subject: %s\r\nMessage-ID: %s\r\n%s%s%s"
		 "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n%s\r\n",
		 subject, msgid, references ? "References: " : "",
		 references ? references : "", references ? "\r\n" : "", body);
	return m;
}

size_t get_messages(const rpc_view *v, struct meta *out, size_t max)
{
	const rpc_field *fld;
	rpc_iter it;
	size_t n = 0;

	rpc_iter_init(&it, v);
	while ((fld = rpc_iter_next(&it, RPC_T_MESSAGE)) != NULL) {
		rpc_view g = rpc_field_group(fld);

		assert_true(n < max);
		out[n].uid = (uint32_t)get_u(&g, RPC_T_UID);
		out[n].modseq = get_u(&g, RPC_T_MODSEQ);
		out[n].flags = (uint32_t)get_u(&g, RPC_T_FLAGS);
		out[n].n_keywords = rpc_count(&g, RPC_T_KEYWORD);
		assert_true(get_u(&g, RPC_T_SIZE) > 0);
		n++;
	}
	return n;
}
