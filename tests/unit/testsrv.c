/*
 * The sqlited fixture of the opcode tests (testsrv.h says what it is):
 * set-up and tear-down of the server (testsrv_core.c's), and the client
 * helpers. Moved verbatim from test_srv_ops.c (setup_net added for
 * test_rpc_client_real, setup_opts for test_srv_dir_ops); its functions
 * assert (cmocka) rather than return errors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
#include "srv_bufpool.h"
#include "srv_net.h"
#include "srv_ops_view.h"
#include "testutil.h"
#include "testsrv.h"

const char password[] = "correct horse";

/* ---- the server (testsrv_core.c), asserted on ---- */

static rpc_sync *connect_as(struct fx *f, const char *name)
{
	rpc_sync *c = NULL;

	assert_int_equal(rpc_sync_connect_unix(f->srv.cfg->sqlited_socket,
					       f->srv.s.rpc_secret, name,
					       20000, &c), 0);
	return c;
}

int setup_opts(void **state, const struct fx_options *o)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_int_equal(tsrv_init(&f->srv, tu_tmpdir(), &o->srv), 0);
	if (!o->empty) {
		assert_int_equal(dir_domain_add(f->srv.s.dir, "example.org"), 0);
		assert_int_equal(tsrv_add_alias(&f->srv, "alice@example.org",
						password, f->alias_id, NULL), 0);
	}
	assert_int_equal(tsrv_run(&f->srv, o->net), 0);
	if (o->client != NULL)
		f->c = connect_as(f, o->client);
	*state = f;
	return 0;
}

/* idle_seconds < 0: the default (300), else an alias without sessions
 * is closed at the next tick after that long (srv_alias.c); net_opt NULL:
 * srv_net's defaults. */
int setup_net(void **state, int idle_seconds, const srv_net_options *net_opt)
{
	struct fx_options o = { .srv = { .idle_seconds = idle_seconds },
				.net = net_opt };

	return setup_opts(state, &o);
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

	rpc_sync_free(&f->c);
	assert_int_equal(tsrv_stop(&f->srv), 0);
	tu_rmrf(f->srv.dir);
	free(f->srv.dir);
	free(f);
	return 0;
}

/* ---- the client ---- */

rpc_sync *connect_client(struct fx *f)
{
	return connect_as(f, "imap@test");
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

uint64_t get_u(const rpc_view *v, uint32_t tag)
{
	uint64_t val = 0;

	assert_int_equal(rpc_get_u64(v, tag, &val), 0);
	return val;
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

void pieces_wait_idle(void)
{
	size_t kept = 1, out = 1;

	for (int i = 0; i < 500 && (kept != 0 || out != 0); i++) {
		srv_bufpool_counts(&srv_pieces, &kept, &out);
		if (kept != 0 || out != 0)
			usleep(10000);
	}
	assert_int_equal(out, 0);
	assert_int_equal(kept, 0);
}
