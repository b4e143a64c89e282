/*
 * The session, mailbox, message and search opcodes of sqlited, driven
 * end to end: a real server (srv_net) on a unix socket in a temporary
 * directory, its loop on a thread of its own, a real directory and alias
 * database, Redis absent (events and the throttle fall back to memory),
 * and the blocking client rpc_sync on the test's thread.
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

static const eng_kdf_params fast = { 1, 8192 };
static const char password[] = "correct horse";

struct fx {
	char *dir;
	sm_config *cfg;
	uv_loop_t loop;
	uv_thread_t thread;
	uv_async_t stop;
	srv s;
	char alias_id[DIR_ID_HEX_LEN + 1];
	int stopped;
};

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
 * is closed at the next tick after that long (srv_alias.c). */
static int setup_cfg(void **state, int idle_seconds)
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

	srv_net_options_default(&opt);
	assert_int_equal(srv_net_start(&f->s, &opt), 0);
	assert_int_equal(uv_async_init(&f->loop, &f->stop, stop_cb), 0);
	f->stop.data = f;
	assert_int_equal(uv_thread_create(&f->thread, loop_thread, f), 0);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_cfg(state, -1);
}

/* An alias closes (keys wiped) about a second after its last LOCK. */
static int setup_closing(void **state)
{
	return setup_cfg(state, 0);
}

static int teardown(void **state)
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

static rpc_sync *connect_client(struct fx *f)
{
	rpc_sync *c = NULL;

	assert_int_equal(rpc_sync_connect_unix(f->cfg->sqlited_socket,
					       f->s.rpc_secret, "imap@test",
					       20000, &c), 0);
	return c;
}

static int call(rpc_sync *c, uint16_t op, eng_buf *req, rpc_sync_resp *resp)
{
	int err = rpc_sync_call(c, op, req->data, req->len, resp);

	eng_buf_reset(req);
	return err;
}

static int unlock(rpc_sync *c, const char *alias, const char *pw,
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
static void begin(eng_buf *b, const uint8_t *session, const char *mailbox)
{
	eng_buf_reset(b);
	rpc_put_bytes(b, RPC_T_SESSION, session, SRV_SESSION_BYTES);
	if (mailbox != NULL)
		rpc_put_str(b, RPC_T_MAILBOX, mailbox);
}

static uint64_t get_u(const rpc_view *v, uint32_t tag)
{
	uint64_t val = 0;

	assert_int_equal(rpc_get_u64(v, tag, &val), 0);
	return val;
}

/* All the UIDs of a packed list field, over every part. */
static size_t get_uids(const rpc_view *v, uint32_t tag, uint32_t *out,
		       size_t max)
{
	const rpc_field *fld;
	rpc_iter it;
	size_t n = 0;

	rpc_iter_init(&it, v);
	while ((fld = rpc_iter_next(&it, tag)) != NULL) {
		assert_int_equal(fld->type, RPC_W_BYTES);
		assert_int_equal(fld->u % 4, 0);
		for (size_t i = 0; i < fld->u / 4; i++) {
			assert_true(n < max);
			out[n++] = rpc_uids_at(fld->data, i);
		}
	}
	return n;
}

static void put_uidset(eng_buf *b, uint32_t tag, uint32_t lo, uint32_t hi)
{
	eng_uidset set = { 0 };

	eng_uidset_add(&set, lo, hi);
	rpc_put_uidset(b, tag, &set);
	eng_uidset_free(&set);
}

/* APPEND of a message in memory; returns the error, UID in *uid_r. */
static int append(rpc_sync *c, const uint8_t *session, const char *mailbox,
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

static char *small_message(const char *subject, const char *msgid,
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

/* ---- tests ---- */

static void test_unlock_lock(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s1[SRV_SESSION_BYTES], s2[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);

	assert_int_equal(unlock(c, "alice@example.org", password, s1), 0);
	/* Case-insensitive address; a second session of the same alias. */
	assert_int_equal(unlock(c, "Alice@Example.ORG", password, s2), 0);
	assert_memory_not_equal(s1, s2, SRV_SESSION_BYTES);
	/* Wrong password, unknown alias, not an address: one answer. */
	assert_int_equal(unlock(c, "alice@example.org", "wrong", s2), ENG_EAUTH);
	assert_int_equal(unlock(c, "nobody@example.org", password, s2),
			 ENG_EAUTH);
	/* Field checks. */
	rpc_put_str(&b, RPC_T_ALIAS, "alice@example.org");
	assert_int_equal(call(c, RPC_OP_UNLOCK, &b, &resp), RPC_EMISSING);
	rpc_put_str(&b, RPC_T_ALIAS, "alice@example.org");
	rpc_put_u64(&b, RPC_T_PASSWORD, 7);
	assert_int_equal(call(c, RPC_OP_UNLOCK, &b, &resp), RPC_EFIELDTYPE);
	rpc_put_str(&b, RPC_T_ALIAS, "alice@example.org");
	rpc_put_bytes(&b, RPC_T_PASSWORD, "", 0);
	assert_int_equal(call(c, RPC_OP_UNLOCK, &b, &resp), ENG_EINVAL);

	/* The session works, LOCK ends it, and then it is stale. */
	begin(&b, s1, NULL);
	assert_int_equal(call(c, RPC_OP_QUOTA_GET, &b, &resp), 0);
	begin(&b, s1, NULL);
	assert_int_equal(call(c, RPC_OP_LOCK, &b, &resp), 0);
	begin(&b, s1, NULL);
	assert_int_equal(call(c, RPC_OP_MAILBOX_LIST, &b, &resp),
			 RPC_ENOSESSION);
	begin(&b, s1, NULL);
	assert_int_equal(call(c, RPC_OP_LOCK, &b, &resp), RPC_ENOSESSION);
	/* The other session still works. */
	begin(&b, s2, NULL);
	assert_int_equal(call(c, RPC_OP_QUOTA_GET, &b, &resp), 0);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

static bool list_has(const rpc_view *v, const char *name, bool *subscribed_r)
{
	const rpc_field *fld;
	rpc_iter it;

	rpc_iter_init(&it, v);
	while ((fld = rpc_iter_next(&it, RPC_T_MAILBOX_INFO)) != NULL) {
		rpc_view g = rpc_field_group(fld);
		const uint8_t *p;
		size_t len;

		assert_int_equal(rpc_get_bytes(&g, RPC_T_MAILBOX, &p, &len), 0);
		if (len == strlen(name) && memcmp(p, name, len) == 0) {
			if (subscribed_r != NULL)
				*subscribed_r = get_u(&g, RPC_T_SUBSCRIBED);
			return true;
		}
	}
	return false;
}

static void test_mailboxes(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	uint64_t uidvalidity, mailbox_id;
	rpc_view info;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	begin(&b, s, "Work/Projects");
	rpc_put_u64(&b, RPC_T_SPECIAL_USE, 16);
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), 0);
	uidvalidity = get_u(&resp.view, RPC_T_UIDVALIDITY);
	assert_true(uidvalidity > 0);
	/* MAILBOX_ID (IMAP MAILBOXID): the row id, STATUS and RENAME agree. */
	mailbox_id = get_u(&resp.view, RPC_T_MAILBOX_ID);
	assert_true(mailbox_id > 0);
	begin(&b, s, "Work/Projects");
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), ENG_EEXIST);
	begin(&b, s, "Bad");
	rpc_put_u64(&b, RPC_T_SPECIAL_USE, 0x80);
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), ENG_EINVAL);

	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_MAILBOX_LIST, &b, &resp), 0);
	assert_true(list_has(&resp.view, "INBOX", NULL));
	assert_true(list_has(&resp.view, "Work", NULL));
	assert_true(list_has(&resp.view, "Work/Projects", NULL));
	assert_false(list_has(&resp.view, "Bad", NULL));

	/* STATUS, with the right and a stale UIDVALIDITY. */
	begin(&b, s, "Work/Projects");
	rpc_put_u64(&b, RPC_T_UIDVALIDITY, uidvalidity);
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp), 0);
	assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO, &info), 0);
	assert_int_equal(get_u(&info, RPC_T_UIDVALIDITY), uidvalidity);
	assert_int_equal(get_u(&info, RPC_T_SPECIAL_USE), 16);
	assert_int_equal(get_u(&info, RPC_T_MAILBOX_ID), mailbox_id);
	assert_int_equal(get_u(&info, RPC_T_MESSAGES), 0);
	assert_int_equal(get_u(&info, RPC_T_UIDNEXT), 1);
	begin(&b, s, "Work/Projects");
	rpc_put_u64(&b, RPC_T_UIDVALIDITY, uidvalidity + 1);
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp),
			 ENG_EMODIFIED);

	/* RENAME: the old name is gone. */
	begin(&b, s, "Work/Projects");
	rpc_put_str(&b, RPC_T_NEW_NAME, "Work/Done");
	assert_int_equal(call(c, RPC_OP_MAILBOX_RENAME, &b, &resp), 0);
	begin(&b, s, "Work/Projects");
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp),
			 ENG_ENOTFOUND);
	begin(&b, s, "Work/Done");
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp), 0);
	assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO, &info), 0);
	assert_int_equal(get_u(&info, RPC_T_MAILBOX_ID), mailbox_id);
	assert_int_equal(get_u(&info, RPC_T_UIDVALIDITY), uidvalidity);

	/* SUBSCRIBE, and LIST of the subscribed only. */
	begin(&b, s, "Work/Done");
	rpc_put_u64(&b, RPC_T_SUBSCRIBED, 1);
	assert_int_equal(call(c, RPC_OP_MAILBOX_SUBSCRIBE, &b, &resp), 0);
	begin(&b, s, NULL);
	rpc_put_u64(&b, RPC_T_SUBSCRIBED, 1);
	assert_int_equal(call(c, RPC_OP_MAILBOX_LIST, &b, &resp), 0);
	{
		bool sub = false;

		assert_true(list_has(&resp.view, "Work/Done", &sub));
		assert_true(sub);
		assert_false(list_has(&resp.view, "Work", NULL));
	}
	begin(&b, s, "Work/Done");
	assert_int_equal(call(c, RPC_OP_MAILBOX_SUBSCRIBE, &b, &resp),
			 RPC_EMISSING);

	/* DELETE; INBOX cannot be. */
	begin(&b, s, "Work/Done");
	assert_int_equal(call(c, RPC_OP_MAILBOX_DELETE, &b, &resp), 0);
	begin(&b, s, "Work/Done");
	assert_int_equal(call(c, RPC_OP_MAILBOX_DELETE, &b, &resp),
			 ENG_ENOTFOUND);
	begin(&b, s, "inbox");
	assert_int_equal(call(c, RPC_OP_MAILBOX_DELETE, &b, &resp), ENG_EPERM);

	/* Field checks: missing, wrong type, bad name. */
	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp),
			 RPC_EMISSING);
	begin(&b, s, NULL);
	rpc_put_u64(&b, RPC_T_MAILBOX, 3);
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp),
			 RPC_EFIELDTYPE);
	begin(&b, s, "a//b");
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), ENG_EINVAL);

	/* QUOTA_GET of an empty alias. */
	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_QUOTA_GET, &b, &resp), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_QUOTA_USED), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_QUOTA_LIMIT), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), 0);

	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* A multipart message of about 3 MB: a text part and a large one. */
static char *big_message(size_t *len_r, size_t *text_off_r,
			 const char **text_r)
{
	static const char text[] = "Hello Alice, the report is attached.\r\n";
	eng_buf m = ENG_BUF_INIT;

	eng_buf_puts(&m, "From: Bob <bob@example.net>\r\n"
		     "To: alice@example.org\r\nSubject: big report\r\n"
		     "Message-ID: <big@example.net>\r\n"
		     "Date: Mon, 1 Jan 2024 09:00:00 +0000\r\n"
		     "MIME-Version: 1.0\r\n"
		     "Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
		     "--XX\r\nContent-Type: text/plain\r\n\r\n");
	*text_off_r = m.len;
	eng_buf_puts(&m, text);
	eng_buf_puts(&m, "--XX\r\nContent-Type: application/octet-stream\r\n"
		     "Content-Transfer-Encoding: base64\r\n\r\n");
	for (unsigned i = 0; m.len < 3 * 1024 * 1024; i++) {
		char line[80];

		for (int j = 0; j < 76; j++)
			line[j] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(i * 7 + (unsigned)j * 13) % 64];
		eng_buf_append(&m, line, 76);
		eng_buf_puts(&m, "\r\n");
	}
	eng_buf_puts(&m, "--XX--\r\n");
	*text_r = text;
	return eng_buf_steal(&m, len_r);
}

static void fetch_body(rpc_sync *c, const uint8_t *s, uint32_t uid,
		       uint32_t want, const char *section, uint64_t offset,
		       uint64_t length, rpc_sync_resp *resp)
{
	eng_buf b = ENG_BUF_INIT;

	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_UID, uid);
	rpc_put_u64(&b, RPC_T_WANT, want);
	if (section != NULL)
		rpc_put_str(&b, RPC_T_SECTION, section);
	if (offset != 0)
		rpc_put_u64(&b, RPC_T_OFFSET, offset);
	if (length != UINT64_MAX)
		rpc_put_u64(&b, RPC_T_LENGTH, length);
	assert_int_equal(call(c, RPC_OP_FETCH_BODY, &b, resp), 0);
	eng_buf_free(&b);
}

static void test_append_fetch(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	size_t len, text_off;
	const char *text;
	char *msg = big_message(&len, &text_off, &text);
	uint32_t uid = 0, uid2 = 0;
	const uint8_t *p;
	size_t plen;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	assert_int_equal(append(c, s, "INBOX", msg, len, 1, "key-1", &uid), 0);
	assert_int_equal(uid, 1);
	/* A retry with the same key stores nothing new. */
	assert_int_equal(append(c, s, "INBOX", msg, len, 1, "key-1", &uid2), 0);
	assert_int_equal(uid2, uid);
	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_QUOTA_GET, &b, &resp), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), 1);
	assert_true(get_u(&resp.view, RPC_T_QUOTA_USED) > 0);

	/* SIZE must be the body's length; no such mailbox; no body. */
	{
		rpc_sync_call_opts opts = { 0 };

		begin(&b, s, "INBOX");
		rpc_put_u64(&b, RPC_T_SIZE, 10);
		opts.has_body = true;
		opts.body = "0123456789X";
		opts.body_len = 11;
		assert_int_equal(rpc_sync_call_ex(c, RPC_OP_APPEND, b.data,
						  b.len, &opts, &resp),
				 ENG_EINVAL);
		assert_int_equal(append(c, s, "Nowhere", "x\r\n", 3, 0, NULL,
					&uid2), ENG_ENOTFOUND);
		begin(&b, s, "INBOX");
		rpc_put_u64(&b, RPC_T_SIZE, 0);
		assert_int_equal(call(c, RPC_OP_APPEND, &b, &resp), ENG_EINVAL);
	}

	/* The whole message back, byte for byte, with MIME and HEADER. */
	fetch_body(c, s, uid, 7, NULL, 0, UINT64_MAX, &resp);
	assert_true(resp.has_body);
	assert_int_equal(get_u(&resp.view, RPC_T_SIZE), len);
	assert_int_equal(resp.body.len, len);
	assert_memory_equal(resp.body.data, msg, len);
	assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_MIME, &p, &plen), 0);
	assert_true(plen > 0);
	assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_HEADER, &p, &plen), 0);
	assert_true(plen > 20 && plen < 400);
	assert_memory_equal(p, msg, plen);

	/* A byte range across the 256 KiB piece boundary. */
	fetch_body(c, s, uid, 1, NULL, 200000, 300000, &resp);
	assert_int_equal(get_u(&resp.view, RPC_T_SIZE), 300000);
	assert_int_equal(resp.body.len, 300000);
	assert_memory_equal(resp.body.data, msg + 200000, 300000);
	/* A range past the end, and one reaching over it. */
	fetch_body(c, s, uid, 1, NULL, len + 5, 10, &resp);
	assert_int_equal(get_u(&resp.view, RPC_T_SIZE), 0);
	assert_int_equal(resp.body.len, 0);
	fetch_body(c, s, uid, 1, NULL, len - 3, 10, &resp);
	assert_int_equal(resp.body.len, 3);
	assert_memory_equal(resp.body.data, msg + len - 3, 3);

	/* A section: part 1 is the text part's body. */
	fetch_body(c, s, uid, 1, "1", 0, UINT64_MAX, &resp);
	assert_true(resp.body.len >= strlen(text) - 2);
	assert_memory_equal(resp.body.data, msg + text_off, resp.body.len);
	assert_memory_equal(resp.body.data, text, strlen(text) - 2);
	/* A part the message does not have: SIZE 0, an empty body. */
	fetch_body(c, s, uid, 1, "9", 0, UINT64_MAX, &resp);
	assert_int_equal(get_u(&resp.view, RPC_T_SIZE), 0);
	assert_true(resp.has_body);
	assert_int_equal(resp.body.len, 0);
	/* Without WANT 1, no body at all. */
	fetch_body(c, s, uid, 4, NULL, 0, UINT64_MAX, &resp);
	assert_false(resp.has_body);
	assert_int_equal(get_u(&resp.view, RPC_T_SIZE), len);
	/* No such message. */
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_UID, 99);
	rpc_put_u64(&b, RPC_T_WANT, 1);
	assert_int_equal(call(c, RPC_OP_FETCH_BODY, &b, &resp), ENG_ENOTFOUND);
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_UID, 1);
	rpc_put_u64(&b, RPC_T_WANT, 8);
	assert_int_equal(call(c, RPC_OP_FETCH_BODY, &b, &resp), ENG_EINVAL);

	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	free(msg);
	rpc_sync_free(&c);
}

struct meta {
	uint32_t uid;
	uint64_t modseq;
	uint32_t flags;
	size_t n_keywords;
};

static size_t get_messages(const rpc_view *v, struct meta *out, size_t max)
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

/* One query node of kind with a nested node, to build trees. */
static void put_query_flag(eng_buf *b, uint32_t kind, uint32_t flag)
{
	size_t m = rpc_group_begin(b, RPC_T_QUERY);

	rpc_put_u64(b, RPC_T_Q_KIND, kind);
	rpc_put_u64(b, RPC_T_FLAGS, flag);
	rpc_group_end(b, m);
}

static void test_messages(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	struct meta m[16];
	uint32_t uids[16], dest[16], uid;
	uint64_t modseq_before_move;
	char *msg;
	size_t n;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	msg = small_message("hello", "<1@x>", NULL, "first body words");
	assert_int_equal(append(c, s, "INBOX", msg, strlen(msg), 0, NULL, &uid), 0);
	free(msg);
	msg = small_message("Re: hello", "<2@x>", "<1@x>", "second reply");
	assert_int_equal(append(c, s, "INBOX", msg, strlen(msg), 0, NULL, &uid), 0);
	free(msg);
	msg = small_message("another topic", "<3@x>", NULL, "third");
	assert_int_equal(append(c, s, "INBOX", msg, strlen(msg), 0, NULL, &uid), 0);
	free(msg);
	assert_int_equal(uid, 3);

	/* FETCH_META of all, then of a set. */
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	n = get_messages(&resp.view, m, 16);
	assert_int_equal(n, 3);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(m[i].uid, i + 1);
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 2, 3);
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	assert_int_equal(get_messages(&resp.view, m, 16), 2);
	assert_int_equal(m[0].uid, 2);

	/* STORE: add \Flagged and a keyword to 2. */
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 2, 2);
	rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&b, RPC_T_FLAGS, 4);
	rpc_put_str(&b, RPC_T_KEYWORD, "$Work");
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
	assert_int_equal(get_messages(&resp.view, m, 16), 1);
	assert_int_equal(m[0].uid, 2);
	assert_int_equal(m[0].flags, 4);
	assert_int_equal(m[0].n_keywords, 1);
	assert_int_equal(rpc_count(&resp.view, RPC_T_FAILED), 0);
	/* UNCHANGEDSINCE below the message's MODSEQ: refused, in FAILED. */
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 2, 3);
	rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&b, RPC_T_FLAGS, 1);
	rpc_put_u64(&b, RPC_T_UNCHANGEDSINCE, m[0].modseq - 1);
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
	{
		eng_uidset failed = { 0 };

		assert_int_equal(rpc_get_uidset(&resp.view, RPC_T_FAILED, 16,
						&failed), 0);
		assert_true(eng_uidset_contains(&failed, 2));
		eng_uidset_free(&failed);
	}
	/* Bad MODE, bad keyword. */
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 1, 1);
	rpc_put_u64(&b, RPC_T_MODE, 3);
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), ENG_EINVAL);
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 1, 1);
	rpc_put_u64(&b, RPC_T_MODE, 1);
	rpc_put_str(&b, RPC_T_KEYWORD, "bad word");
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), ENG_EINVAL);

	/* SEARCH FLAGGED; SEARCH OR(HEADER Subject hello, UID 3). */
	begin(&b, s, "INBOX");
	put_query_flag(&b, RPC_Q_FLAG, 4);
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), 0);
	n = get_uids(&resp.view, RPC_T_UIDS, uids, 16);
	assert_int_equal(n, 1);
	assert_int_equal(uids[0], 2);
	assert_true(get_u(&resp.view, RPC_T_MODSEQ) > 0);
	begin(&b, s, "INBOX");
	{
		size_t q = rpc_group_begin(&b, RPC_T_QUERY), q1;

		rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_NOT);
		q1 = rpc_group_begin(&b, RPC_T_QUERY);
		rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_HEADER);
		rpc_put_str(&b, RPC_T_FIELD, "Subject");
		rpc_put_str(&b, RPC_T_TEXT, "hello");
		rpc_group_end(&b, q1);
		rpc_group_end(&b, q);
	}
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), 0);
	n = get_uids(&resp.view, RPC_T_UIDS, uids, 16);
	assert_int_equal(n, 1);
	assert_int_equal(uids[0], 3);
	/* SEQ without SEQ_MAP; a bad kind; NOT with two children. */
	begin(&b, s, "INBOX");
	{
		size_t q = rpc_group_begin(&b, RPC_T_QUERY);

		rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_SEQ);
		put_uidset(&b, RPC_T_UIDSET, 1, 1);
		rpc_group_end(&b, q);
	}
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), RPC_EMISSING);
	begin(&b, s, "INBOX");
	put_query_flag(&b, 99, 1);
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), ENG_EINVAL);
	begin(&b, s, "INBOX");
	put_query_flag(&b, RPC_Q_FLAG, 3);
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), ENG_EINVAL);
	/* SEQ through a map: sequence 2 is UID 3 in this view. */
	begin(&b, s, "INBOX");
	{
		const uint32_t map[] = { 1, 3 };
		size_t q = rpc_group_begin(&b, RPC_T_QUERY);

		rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_SEQ);
		put_uidset(&b, RPC_T_UIDSET, 2, 2);
		rpc_group_end(&b, q);
		rpc_put_uids(&b, RPC_T_SEQ_MAP, map, 2);
	}
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), 0);
	n = get_uids(&resp.view, RPC_T_UIDS, uids, 16);
	assert_int_equal(n, 1);
	assert_int_equal(uids[0], 3);

	/* SORT SUBJECT reversed: "hello"/"Re: hello" tie, then "another". */
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_SORT_KEY, RPC_SORT_SUBJECT | RPC_SORT_REVERSE);
	assert_int_equal(call(c, RPC_OP_SORT, &b, &resp), 0);
	n = get_uids(&resp.view, RPC_T_UIDS, uids, 16);
	assert_int_equal(n, 3);
	assert_int_equal(uids[0], 1);
	assert_int_equal(uids[1], 2);
	assert_int_equal(uids[2], 3);
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_SORT, &b, &resp), RPC_EMISSING);
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_SORT_KEY, 9);
	assert_int_equal(call(c, RPC_OP_SORT, &b, &resp), ENG_EINVAL);

	/* THREAD REFERENCES: (1 2)(3). */
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_ALGORITHM, RPC_THREAD_REFERENCES);
	assert_int_equal(call(c, RPC_OP_THREAD, &b, &resp), 0);
	{
		const uint8_t *p;
		size_t len, nn;
		rpc_tnode *nodes;

		assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_THREAD_TREE,
					       &p, &len), 0);
		assert_int_equal(rpc_thread_tree_parse(p, len, &nodes, &nn), 0);
		assert_int_equal(nn, 4);
		assert_int_equal(nodes[0].uid, 0);
		assert_int_equal(nodes[0].n_children, 2);
		assert_int_equal(nodes[1].uid, 1);
		assert_int_equal(nodes[1].n_children, 1);
		assert_int_equal(nodes[2].uid, 2);
		assert_int_equal(nodes[3].uid, 3);
		free(nodes);
	}
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_ALGORITHM, 2);
	assert_int_equal(call(c, RPC_OP_THREAD, &b, &resp), ENG_EINVAL);

	/* COPY 1:3 to Saved: the UID pairs. */
	begin(&b, s, "Saved");
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), 0);
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 1, UINT32_MAX);
	rpc_put_str(&b, RPC_T_DEST_MAILBOX, "Saved");
	assert_int_equal(call(c, RPC_OP_COPY, &b, &resp), 0);
	assert_true(get_u(&resp.view, RPC_T_UIDVALIDITY) > 0);
	assert_int_equal(get_uids(&resp.view, RPC_T_UIDS, uids, 16), 3);
	assert_int_equal(get_uids(&resp.view, RPC_T_DEST_UIDS, dest, 16), 3);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(uids[i], i + 1);
		assert_int_equal(dest[i], i + 1);
	}

	/* MOVE 2 to Saved; then CHANGES on INBOX shows it vanished. */
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp), 0);
	{
		rpc_view info;

		assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO,
					       &info), 0);
		modseq_before_move = get_u(&info, RPC_T_HIGHESTMODSEQ);
	}
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 2, 2);
	rpc_put_str(&b, RPC_T_DEST_MAILBOX, "Saved");
	assert_int_equal(call(c, RPC_OP_MOVE, &b, &resp), 0);
	assert_int_equal(get_uids(&resp.view, RPC_T_UIDS, uids, 16), 1);
	assert_int_equal(get_uids(&resp.view, RPC_T_DEST_UIDS, dest, 16), 1);
	assert_int_equal(uids[0], 2);
	assert_int_equal(dest[0], 4);
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 1, 1);
	rpc_put_str(&b, RPC_T_DEST_MAILBOX, "Nowhere");
	assert_int_equal(call(c, RPC_OP_COPY, &b, &resp), ENG_ENOTFOUND);

	/* STORE \Deleted on 3, EXPUNGE, CHANGES since before the move. */
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, 3, 3);
	rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&b, RPC_T_FLAGS, 8);
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_EXPUNGE, &b, &resp), 0);
	assert_int_equal(get_uids(&resp.view, RPC_T_UIDS, uids, 16), 1);
	assert_int_equal(uids[0], 3);
	assert_true(get_u(&resp.view, RPC_T_HIGHESTMODSEQ) > modseq_before_move);
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_MODSEQ, modseq_before_move);
	assert_int_equal(call(c, RPC_OP_CHANGES, &b, &resp), 0);
	{
		eng_uidset vanished = { 0 };

		assert_int_equal(rpc_get_uidset(&resp.view, RPC_T_VANISHED, 16,
						&vanished), 0);
		assert_true(eng_uidset_contains(&vanished, 2));
		assert_true(eng_uidset_contains(&vanished, 3));
		assert_false(eng_uidset_contains(&vanished, 1));
		eng_uidset_free(&vanished);
		assert_true(get_u(&resp.view, RPC_T_HIGHESTMODSEQ) >
			    modseq_before_move);
	}
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	assert_int_equal(get_messages(&resp.view, m, 16), 1);
	assert_int_equal(m[0].uid, 1);
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_CHANGES, &b, &resp), RPC_EMISSING);

	/* QUOTA counts the messages of every mailbox. */
	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_QUOTA_GET, &b, &resp), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), 5);

	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* A query nested deeper than the protocol allows is refused, whatever
 * layer refuses it, and the connection goes on. */
static void test_query_bounds(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	size_t marks[20];
	int err;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	begin(&b, s, "INBOX");
	for (int i = 0; i < 17; i++) {
		marks[i] = rpc_group_begin(&b, RPC_T_QUERY);
		rpc_put_u64(&b, RPC_T_Q_KIND, i < 16 ? RPC_Q_NOT : RPC_Q_ALL);
	}
	for (int i = 16; i >= 0; i--)
		rpc_group_end(&b, marks[i]);
	err = call(c, RPC_OP_SEARCH, &b, &resp);
	assert_true(err == RPC_EDEPTH || err == ENG_ELIMIT);
	/* 16 levels are fine: NOT^15 ALL = nothing (15 is odd). */
	begin(&b, s, "INBOX");
	for (int i = 0; i < 16; i++) {
		marks[i] = rpc_group_begin(&b, RPC_T_QUERY);
		rpc_put_u64(&b, RPC_T_Q_KIND, i < 15 ? RPC_Q_NOT : RPC_Q_ALL);
	}
	for (int i = 15; i >= 0; i--)
		rpc_group_end(&b, marks[i]);
	assert_int_equal(call(c, RPC_OP_SEARCH, &b, &resp), 0);
	/* More nodes than the engine takes. */
	begin(&b, s, "INBOX");
	{
		size_t q = rpc_group_begin(&b, RPC_T_QUERY);

		rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_OR);
		for (int i = 0; i < 2100; i++) {
			size_t k = rpc_group_begin(&b, RPC_T_QUERY);

			rpc_put_u64(&b, RPC_T_Q_KIND, RPC_Q_ALL);
			rpc_group_end(&b, k);
		}
		rpc_group_end(&b, q);
	}
	err = call(c, RPC_OP_SEARCH, &b, &resp);
	assert_true(err == ENG_ELIMIT || err == RPC_EFIELDS);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* Two connections append to one alias at once: every append gets its
 * own UID, none is lost. */
struct appender {
	struct fx *f;
	const uint8_t *session;
	int who;
	uint32_t uids[20];
	int err;
};

static void appender_thread(void *arg)
{
	struct appender *a = arg;
	rpc_sync *c = NULL;

	a->err = rpc_sync_connect_unix(a->f->cfg->sqlited_socket,
				       a->f->s.rpc_secret, "imap@test", 20000,
				       &c);
	for (int i = 0; i < 20 && a->err == 0; i++) {
		char *msg, subject[32];

		snprintf(subject, sizeof(subject), "from %d number %d", a->who,
			 i);
		msg = small_message(subject, "<c@x>", NULL, "body");
		a->err = append(c, a->session, "INBOX", msg, strlen(msg), 0,
				NULL, &a->uids[i]);
		free(msg);
	}
	rpc_sync_free(&c);
}

static void test_concurrent_appends(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	struct appender a[2] = { { f, s, 0, { 0 }, 0 }, { f, s, 1, { 0 }, 0 } };
	uv_thread_t t[2];
	bool seen[41] = { false };
	rpc_view info;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(uv_thread_create(&t[i], appender_thread,
						  &a[i]), 0);
	for (int i = 0; i < 2; i++)
		uv_thread_join(&t[i]);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(a[i].err, 0);
		for (int j = 0; j < 20; j++) {
			uint32_t uid = a[i].uids[j];

			assert_true(uid >= 1 && uid <= 40);
			assert_false(seen[uid]);
			seen[uid] = true;
			/* One connection's UIDs increase. */
			if (j > 0)
				assert_true(uid > a[i].uids[j - 1]);
		}
	}
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_MAILBOX_STATUS, &b, &resp), 0);
	assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO, &info), 0);
	assert_int_equal(get_u(&info, RPC_T_MESSAGES), 40);
	assert_int_equal(get_u(&info, RPC_T_UIDNEXT), 41);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* After 3 failed unlocks the throttle makes the next one wait about 1 s
 * (a uv timer on the server), and a right password still works after. */
static void test_unlock_throttle(void **state)
{
	struct fx *f = *state;
	uint8_t s[SRV_SESSION_BYTES];
	rpc_sync *c = connect_client(f);
	uint64_t t0;

	for (int i = 0; i < 3; i++) {
		t0 = uv_hrtime();
		assert_int_equal(unlock(c, "ghost@example.org", "x", s),
				 ENG_EAUTH);
		assert_true(uv_hrtime() - t0 < 900000000ull);
	}
	t0 = uv_hrtime();
	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	assert_true(uv_hrtime() - t0 >= 900000000ull);
	rpc_sync_free(&c);
}

/* A FETCH_META answer larger than one frame's field limit comes in MORE
 * parts that together hold every message once, in UID order. */
static void test_fetch_meta_parts(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	struct meta *m = calloc(600, sizeof(*m));
	uint32_t uid;
	size_t n;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	for (int i = 0; i < 450; i++)
		assert_int_equal(append(c, s, "INBOX", "Subject: x\r\n\r\nx\r\n",
					17, 0, NULL, &uid), 0);
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	assert_true(resp.parts >= 2);
	n = get_messages(&resp.view, m, 600);
	assert_int_equal(n, 450);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(m[i].uid, i + 1);
	/* CHANGEDSINCE above every MODSEQ: nothing. */
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_CHANGEDSINCE, m[n - 1].modseq);
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	assert_int_equal(rpc_count(&resp.view, RPC_T_MESSAGE), 0);
	free(m);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* ---- MAILBOX_VIEW: the sequence map of a SELECT ---- */

/* A STORE of flags (and keyword kw, if any) on lo..hi, mode ADD. */
static void store_flags(rpc_sync *c, const uint8_t *s, const char *mailbox,
			uint32_t lo, uint32_t hi, uint32_t flags, const char *kw)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;

	begin(&b, s, mailbox);
	put_uidset(&b, RPC_T_UIDSET, lo, hi);
	rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&b, RPC_T_FLAGS, flags);
	if (kw != NULL)
		rpc_put_str(&b, RPC_T_KEYWORD, kw);
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
}

/* Expands MAILBOX_VIEW's UIDSET ranges and FLAG_RUNS into m (uid, flags);
 * checks that both cover MESSAGES messages. Returns that count. */
static size_t expand_view(const rpc_view *v, struct meta *m, size_t max)
{
	size_t n = 0, nf = 0, count = (size_t)get_u(v, RPC_T_MESSAGES);
	const rpc_field *fld;
	rpc_iter it;

	rpc_iter_init(&it, v);
	while ((fld = rpc_iter_next(&it, RPC_T_UIDSET)) != NULL) {
		assert_int_equal(fld->u % 8, 0);
		for (size_t i = 0; i < fld->u / 4; i += 2) {
			uint32_t lo = rpc_uids_at(fld->data, i);
			uint32_t hi = rpc_uids_at(fld->data, i + 1);

			assert_true(lo >= 1 && lo <= hi);
			for (uint32_t u = lo; u <= hi; u++) {
				assert_true(n < max);
				m[n++].uid = u;
			}
		}
	}
	rpc_iter_init(&it, v);
	while ((fld = rpc_iter_next(&it, RPC_T_FLAG_RUNS)) != NULL) {
		assert_int_equal(fld->u % 8, 0);
		for (size_t i = 0; i < fld->u / 4; i += 2) {
			uint32_t len = rpc_uids_at(fld->data, i);

			assert_true(len >= 1 && nf + len <= n);
			for (uint32_t k = 0; k < len; k++)
				m[nf++].flags = rpc_uids_at(fld->data, i + 1);
		}
	}
	assert_int_equal(n, count);
	assert_int_equal(nf, count);
	return n;
}

/* MAILBOX_VIEW of mailbox against FETCH_META: the same UIDs and flags.
 * Returns the count; resp keeps the view's answer. */
static size_t view_matches_meta(rpc_sync *c, const uint8_t *s,
				const char *mailbox, rpc_sync_resp *resp)
{
	struct meta meta[32], view[32];
	eng_buf b = ENG_BUF_INIT;
	size_t n;

	begin(&b, s, mailbox);
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, resp), 0);
	n = get_messages(&resp->view, meta, 32);
	begin(&b, s, mailbox);
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, resp), 0);
	assert_int_equal(expand_view(&resp->view, view, 32), n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(view[i].uid, meta[i].uid);
		assert_int_equal(view[i].flags, meta[i].flags);
	}
	eng_buf_free(&b);
	return n;
}

/* MAILBOX_VIEW holds exactly FETCH_META's UIDs and flags (gaps, runs of
 * flags), the mailbox's keywords once each, and checks UIDVALIDITY; a
 * repeated view (sqlited's cache) follows every change. */
static void test_mailbox_view(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	uint32_t uid, uidvalidity;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	begin(&b, s, "V");
	assert_int_equal(call(c, RPC_OP_MAILBOX_CREATE, &b, &resp), 0);
	uidvalidity = (uint32_t)get_u(&resp.view, RPC_T_UIDVALIDITY);
	/* Empty: MESSAGES 0, no ranges, no runs. */
	begin(&b, s, "V");
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), 0);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), 0);
	assert_int_equal(rpc_count(&resp.view, RPC_T_UIDSET), 0);
	assert_int_equal(rpc_count(&resp.view, RPC_T_FLAG_RUNS), 0);
	for (int i = 0; i < 20; i++)
		assert_int_equal(append(c, s, "V", "Subject: v\r\n\r\nv\r\n",
					17, 0, NULL, &uid), 0);
	store_flags(c, s, "V", 1, 6, ENG_F_SEEN, NULL);
	store_flags(c, s, "V", 9, 9, ENG_F_FLAGGED, "$Work");
	store_flags(c, s, "V", 12, 12, 0, "$Later");
	store_flags(c, s, "V", 13, 13, 0, "$work");     /* the same, any case */
	/* Gaps: 7, 8 and 15 go. */
	store_flags(c, s, "V", 7, 8, ENG_F_DELETED, NULL);
	store_flags(c, s, "V", 15, 15, ENG_F_DELETED, NULL);
	begin(&b, s, "V");
	assert_int_equal(call(c, RPC_OP_EXPUNGE, &b, &resp), 0);

	begin(&b, s, "V");
	rpc_put_u64(&b, RPC_T_UIDVALIDITY, uidvalidity);
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), 0);
	assert_int_equal(view_matches_meta(c, s, "V", &resp), 17);
	/* 1-6, 9-14, 16-20: three ranges; \Seen x6, \Flagged, none x10:
	 * three runs, not one pair per message. */
	assert_int_equal(rpc_count(&resp.view, RPC_T_UIDSET), 1);
	{
		const uint8_t *p;
		size_t len;

		assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_UIDSET, &p,
					       &len), 0);
		assert_int_equal(len, 3 * 8);
		assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_FLAG_RUNS, &p,
					       &len), 0);
		assert_int_equal(len, 3 * 8);
	}
	assert_int_equal(rpc_count(&resp.view, RPC_T_KEYWORD), 2);
	/* Each change shows in the next view: a flag, an expunge, an append,
	 * and the same answer again without a change. */
	store_flags(c, s, "V", 10, 10, ENG_F_ANSWERED, NULL);
	assert_int_equal(view_matches_meta(c, s, "V", &resp), 17);
	assert_int_equal(view_matches_meta(c, s, "V", &resp), 17);
	store_flags(c, s, "V", 20, 20, ENG_F_DELETED, NULL);
	begin(&b, s, "V");
	assert_int_equal(call(c, RPC_OP_EXPUNGE, &b, &resp), 0);
	assert_int_equal(view_matches_meta(c, s, "V", &resp), 16);
	assert_int_equal(append(c, s, "V", "Subject: v\r\n\r\nv\r\n", 17, 0,
				NULL, &uid), 0);
	assert_int_equal(view_matches_meta(c, s, "V", &resp), 17);
	/* Another UIDVALIDITY: EMODIFIED; a missing mailbox: ENOTFOUND. */
	begin(&b, s, "V");
	rpc_put_u64(&b, RPC_T_UIDVALIDITY, uidvalidity + 1);
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), ENG_EMODIFIED);
	begin(&b, s, "Nope");
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), ENG_ENOTFOUND);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* ---- MAILBOX_VIEW: a cached view patched after each change ---- */

#define PATCH_MAX 256

/* One request with just the session and mailbox (and dest, if any). */
static void simple_call(rpc_sync *c, const uint8_t *s, uint16_t op,
			const char *mailbox, const char *dest, uint32_t lo,
			uint32_t hi)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;

	begin(&b, s, mailbox);
	if (lo > 0)
		put_uidset(&b, RPC_T_UIDSET, lo, hi);
	if (dest != NULL)
		rpc_put_str(&b, RPC_T_DEST_MAILBOX, dest);
	assert_int_equal(call(c, op, &b, &resp), 0);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
}

static void expunge_uid(rpc_sync *c, const uint8_t *s, const char *mailbox,
			uint32_t uid)
{
	store_flags(c, s, mailbox, uid, uid, ENG_F_DELETED, NULL);
	simple_call(c, s, RPC_OP_EXPUNGE, mailbox, NULL, uid, uid);
}

/*
 * MAILBOX_VIEW of mailbox against FETCH_META (every row read afresh): the
 * same UIDs and flags, count and keywords; and which way sqlited made it
 * (how: 'h' the same state cached, 'p' an older one patched, 's' every
 * row read). Returns the count.
 */
static size_t view_check(struct fx *f, rpc_sync *c, const uint8_t *s,
			 const char *mailbox, char how, size_t keywords)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	struct meta *meta = calloc(PATCH_MAX, sizeof(*meta));
	struct meta *view = calloc(PATCH_MAX, sizeof(*view));
	struct srv_view_stats a, z;
	eng_buf b = ENG_BUF_INIT;
	size_t n;

	begin(&b, s, mailbox);
	assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
	n = get_messages(&resp.view, meta, PATCH_MAX);
	srv_view_cache_stats(f->alias_id, &a);
	begin(&b, s, mailbox);
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), 0);
	srv_view_cache_stats(f->alias_id, &z);
	assert_int_equal(expand_view(&resp.view, view, PATCH_MAX), n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(view[i].uid, meta[i].uid);
		assert_int_equal(view[i].flags, meta[i].flags);
	}
	assert_int_equal(rpc_count(&resp.view, RPC_T_KEYWORD), keywords);
	assert_int_equal(z.hits - a.hits, how == 'h');
	assert_int_equal(z.patched - a.patched, how == 'p');
	assert_int_equal(z.scanned - a.scanned, how == 's');
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	free(meta);
	free(view);
	return n;
}

static void append_n(rpc_sync *c, const uint8_t *s, const char *mailbox,
		     int n, uint32_t flags)
{
	uint32_t uid;

	for (int i = 0; i < n; i++)
		assert_int_equal(append(c, s, mailbox, "Subject: p\r\n\r\np\r\n",
					17, flags, NULL, &uid), 0);
}

/* After every kind of change, the patched view is what reading every row
 * gives; a mailbox re-created (new UIDVALIDITY, or the same row emptied
 * by a DELETE that left it \Noselect) is read afresh. */
static void test_mailbox_view_patch(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	uint8_t s[SRV_SESSION_BYTES];

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "P", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "Q", NULL, 0, 0);
	append_n(c, s, "P", 30, ENG_F_SEEN);
	append_n(c, s, "Q", 5, 0);
	assert_int_equal(view_check(f, c, s, "P", 's', 0), 30);
	assert_int_equal(view_check(f, c, s, "P", 'h', 0), 30);
	append_n(c, s, "P", 1, 0);                      /* append one */
	assert_int_equal(view_check(f, c, s, "P", 'p', 0), 31);
	append_n(c, s, "P", 20, ENG_F_SEEN);            /* append many */
	assert_int_equal(view_check(f, c, s, "P", 'p', 0), 51);
	/* A flag in the middle of the run of \Seen 1..30, then off again. */
	store_flags(c, s, "P", 15, 15, ENG_F_FLAGGED, NULL);
	assert_int_equal(view_check(f, c, s, "P", 'p', 0), 51);
	store_flags(c, s, "P", 16, 17, ENG_F_ANSWERED, NULL);
	assert_int_equal(view_check(f, c, s, "P", 'p', 0), 51);
	{
		rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
		eng_buf b = ENG_BUF_INIT;

		begin(&b, s, "P");
		put_uidset(&b, RPC_T_UIDSET, 15, 15);
		rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_REMOVE);
		rpc_put_u64(&b, RPC_T_FLAGS, ENG_F_FLAGGED);
		assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
		rpc_sync_resp_clear(&resp);
		eng_buf_free(&b);
	}
	assert_int_equal(view_check(f, c, s, "P", 'p', 0), 51);
	/* A keyword alone: the MODSEQ moves, the flag bits do not. */
	store_flags(c, s, "P", 20, 20, 0, "$Later");
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 51);
	/* Expunge the first, one in the middle, the last. */
	expunge_uid(c, s, "P", 1);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 50);
	expunge_uid(c, s, "P", 25);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 49);
	expunge_uid(c, s, "P", 51);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 48);
	/* Several changes at once: expunge two, flag one, append two. */
	store_flags(c, s, "P", 2, 3, ENG_F_DELETED, NULL);
	simple_call(c, s, RPC_OP_EXPUNGE, "P", NULL, 0, 0);
	store_flags(c, s, "P", 40, 40, ENG_F_DRAFT, NULL);
	append_n(c, s, "P", 2, ENG_F_SEEN);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 48);
	/* Moved in from Q, copied in, moved out to Q (both sides). */
	assert_int_equal(view_check(f, c, s, "Q", 's', 0), 5);
	simple_call(c, s, RPC_OP_MOVE, "Q", "P", 2, 3);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 50);
	assert_int_equal(view_check(f, c, s, "Q", 'p', 0), 3);
	simple_call(c, s, RPC_OP_COPY, "Q", "P", 1, 1);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 51);
	simple_call(c, s, RPC_OP_MOVE, "P", "Q", 10, 12);
	assert_int_equal(view_check(f, c, s, "P", 'p', 1), 48);
	assert_int_equal(view_check(f, c, s, "Q", 'p', 0), 6);
	/* Everything expunged: an empty view, then one message again. */
	store_flags(c, s, "Q", 1, UINT32_MAX, ENG_F_DELETED, NULL);
	simple_call(c, s, RPC_OP_EXPUNGE, "Q", NULL, 0, 0);
	assert_int_equal(view_check(f, c, s, "Q", 'p', 0), 0);
	append_n(c, s, "Q", 1, 0);
	assert_int_equal(view_check(f, c, s, "Q", 'p', 0), 1);

	/* Deleted and re-created: another UIDVALIDITY (and row). */
	simple_call(c, s, RPC_OP_MAILBOX_DELETE, "Q", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "Q", NULL, 0, 0);
	append_n(c, s, "Q", 2, 0);
	assert_int_equal(view_check(f, c, s, "Q", 's', 0), 2);
	/* A parent deleted keeps its row (\Noselect) but loses its
	 * messages and expunge log: a patch would keep the old UIDs; the
	 * DELETE gave it a new UIDVALIDITY, and every row is read. */
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "Q/Child", NULL, 0, 0);
	append_n(c, s, "Q", 1, ENG_F_SEEN);
	assert_int_equal(view_check(f, c, s, "Q", 'p', 0), 3);
	simple_call(c, s, RPC_OP_MAILBOX_DELETE, "Q", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "Q", NULL, 0, 0);
	append_n(c, s, "Q", 1, 0);
	assert_int_equal(view_check(f, c, s, "Q", 's', 0), 1);
	assert_int_equal(view_check(f, c, s, "Q", 'h', 0), 1);
	rpc_sync_free(&c);
}

/* The alias's views go when it is closed after its last LOCK (keys
 * wiped); the next view after a new UNLOCK reads every row. */
static void test_mailbox_view_lock(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	struct srv_view_stats st;
	int waited = 0;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	append_n(c, s, "INBOX", 3, 0);
	assert_int_equal(view_check(f, c, s, "INBOX", 's', 0), 3);
	srv_view_cache_stats(f->alias_id, &st);
	assert_int_equal(st.entries, 1);
	begin(&b, s, NULL);
	assert_int_equal(call(c, RPC_OP_LOCK, &b, &resp), 0);
	do {
		usleep(100 * 1000);
		srv_view_cache_stats(f->alias_id, &st);
	} while (st.entries > 0 && ++waited < 100);
	assert_int_equal(st.entries, 0);
	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	assert_int_equal(view_check(f, c, s, "INBOX", 's', 0), 3);
	assert_int_equal(view_check(f, c, s, "INBOX", 'h', 0), 3);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* Appends n messages whose flags alternate (\Seen on the odd ones): n
 * flag runs in the view. */
static void append_alternating(rpc_sync *c, const uint8_t *s,
			       const char *mailbox, int n)
{
	for (int i = 0; i < n; i++)
		append_n(c, s, mailbox, 1, i % 2 ? ENG_F_SEEN : 0);
}

/* The cache's limits: a view over the per-entry bound is never kept (every
 * row read each time), and the least recently used views go when the
 * buffers of all would pass the budget. MAILBOX_VIEW's answer carries the
 * mailbox's MAILBOX_INFO of the same state. */
static void test_mailbox_view_budget(void **state)
{
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	eng_buf b = ENG_BUF_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	struct srv_view_stats st;
	rpc_view info;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "M1", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "M2", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "M3", NULL, 0, 0);
	simple_call(c, s, RPC_OP_MAILBOX_CREATE, "Big", NULL, 0, 0);
	append_alternating(c, s, "M1", 6);    /* 8 + 48 bytes: 2 x 64 kept */
	append_alternating(c, s, "M2", 6);
	append_alternating(c, s, "M3", 6);
	append_alternating(c, s, "Big", 12);  /* 8 + 96 bytes */
	srv_view_cache_limits(100, 300);      /* two small views fit */
	assert_int_equal(view_check(f, c, s, "M1", 's', 0), 6);
	assert_int_equal(view_check(f, c, s, "M1", 'h', 0), 6);
	assert_int_equal(view_check(f, c, s, "Big", 's', 0), 12);
	assert_int_equal(view_check(f, c, s, "Big", 's', 0), 12);
	assert_int_equal(view_check(f, c, s, "M2", 's', 0), 6);
	assert_int_equal(view_check(f, c, s, "M1", 'h', 0), 6);
	assert_int_equal(view_check(f, c, s, "M3", 's', 0), 6); /* M2 goes */
	srv_view_cache_stats(f->alias_id, &st);
	assert_int_equal(st.entries, 2);
	assert_int_equal(view_check(f, c, s, "M1", 'h', 0), 6);
	assert_int_equal(view_check(f, c, s, "M3", 'h', 0), 6);
	assert_int_equal(view_check(f, c, s, "M2", 's', 0), 6); /* M1 goes */
	assert_int_equal(view_check(f, c, s, "M3", 'h', 0), 6);
	assert_int_equal(view_check(f, c, s, "M1", 's', 0), 6);
	append_n(c, s, "M1", 1, 0);
	assert_int_equal(view_check(f, c, s, "M1", 'p', 0), 7);
	/* The MAILBOX_INFO in the answer: the state the view is of. */
	begin(&b, s, "M1");
	assert_int_equal(call(c, RPC_OP_MAILBOX_VIEW, &b, &resp), 0);
	assert_int_equal(rpc_get_group(&resp.view, RPC_T_MAILBOX_INFO, &info), 0);
	assert_int_equal(get_u(&info, RPC_T_MESSAGES), 7);
	assert_int_equal(get_u(&info, RPC_T_UIDNEXT), 8);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), 7);
	srv_view_cache_limits(0, 0);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* ---- FETCH_META WANT: headers and MIME structures inline ---- */

/* The MESSAGE groups of resp, in order (at most max). */
static size_t meta_groups(const rpc_view *v, rpc_view *out, size_t max)
{
	const rpc_field *fld;
	rpc_iter it;
	size_t n = 0;

	rpc_iter_init(&it, v);
	while ((fld = rpc_iter_next(&it, RPC_T_MESSAGE)) != NULL) {
		assert_true(n < max);
		out[n++] = rpc_field_group(fld);
	}
	return n;
}

static int fetch_meta_want(rpc_sync *c, const uint8_t *s, uint32_t lo,
			   uint32_t hi, uint64_t want, rpc_sync_resp *resp)
{
	eng_buf b = ENG_BUF_INIT;
	int err;

	begin(&b, s, "INBOX");
	if (lo > 0)
		put_uidset(&b, RPC_T_UIDSET, lo, hi);
	rpc_put_u64(&b, RPC_T_WANT, want);
	err = call(c, RPC_OP_FETCH_META, &b, resp);
	eng_buf_free(&b);
	return err;
}

/* The group's tag is the blob FETCH_BODY WANT gives for its UID. */
static void same_as_fetch_body(rpc_sync *c, const uint8_t *s,
			       const rpc_view *g, uint32_t tag)
{
	rpc_sync_resp body = RPC_SYNC_RESP_INIT;
	const uint8_t *p, *q;
	size_t plen, qlen;

	fetch_body(c, s, (uint32_t)get_u(g, RPC_T_UID),
		   tag == RPC_T_MIME ? RPC_WANT_MIME : RPC_WANT_HEADER, NULL, 0,
		   UINT64_MAX, &body);
	assert_int_equal(rpc_get_bytes(g, tag, &p, &plen), 0);
	assert_int_equal(rpc_get_bytes(&body.view, tag, &q, &qlen), 0);
	assert_true(plen > 0);
	assert_int_equal(plen, qlen);
	assert_memory_equal(p, q, plen);
	rpc_sync_resp_clear(&body);
}

/* A message of about hdr_bytes of header (one folded X-Pad field). */
static char *padded_header_message(int i, size_t hdr_bytes)
{
	eng_buf m = ENG_BUF_INIT;

	eng_buf_printf(&m, "From: a@example.org\r\nSubject: padded %04d\r\n"
		       "X-Pad: start", i);
	while (m.len < hdr_bytes) {
		eng_buf_puts(&m, "\r\n ");
		for (int k = 0; k < 70; k++)
			eng_buf_putc(&m, (char)('a' + (i + k) % 26));
	}
	eng_buf_puts(&m, "\r\n\r\nbody\r\n");
	return eng_buf_steal(&m, NULL);
}

static void test_fetch_meta_want(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	rpc_sync *c = connect_client(f);
	rpc_view *g = calloc(128, sizeof(*g));
	const uint8_t *p;
	size_t len, text_off, plen, n, with = 0, hdr_len = 0;
	const char *text;
	char *msg = big_message(&len, &text_off, &text);
	uint32_t uid;
	eng_buf m = ENG_BUF_INIT;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	assert_int_equal(append(c, s, "INBOX", msg, len, 0, NULL, &uid), 0);
	free(msg);
	msg = small_message("hello", "<1@x>", NULL, "first body words");
	assert_int_equal(append(c, s, "INBOX", msg, strlen(msg), 0, NULL, &uid),
			 0);
	free(msg);

	/* Every WANT: exactly the blobs asked for, as FETCH_BODY has them. */
	for (uint64_t want = 0; want <= 6; want += 2) {
		assert_int_equal(fetch_meta_want(c, s, 0, 0, want, &resp), 0);
		assert_int_equal(meta_groups(&resp.view, g, 128), 2);
		for (size_t i = 0; i < 2; i++) {
			assert_int_equal(get_u(&g[i], RPC_T_UID), i + 1);
			assert_int_equal(rpc_count(&g[i], RPC_T_MIME),
					 (want & RPC_WANT_MIME) ? 1 : 0);
			assert_int_equal(rpc_count(&g[i], RPC_T_HEADER),
					 (want & RPC_WANT_HEADER) ? 1 : 0);
			if (want & RPC_WANT_MIME)
				same_as_fetch_body(c, s, &g[i], RPC_T_MIME);
			if (want & RPC_WANT_HEADER)
				same_as_fetch_body(c, s, &g[i], RPC_T_HEADER);
		}
	}
	/* The body bit, or an unknown one: EINVAL. */
	assert_int_equal(fetch_meta_want(c, s, 0, 0, 1, &resp), ENG_EINVAL);
	assert_int_equal(fetch_meta_want(c, s, 0, 0, 7, &resp), ENG_EINVAL);
	assert_int_equal(fetch_meta_want(c, s, 0, 0, 8, &resp), ENG_EINVAL);

	/* A MIME structure above 256 KiB (4,000 named parts) is left out,
	 * the header of the same message is not. */
	eng_buf_puts(&m, "Subject: parts\r\nContent-Type: multipart/mixed; "
		     "boundary=b\r\n\r\n");
	for (int i = 0; i < 4000; i++)
		eng_buf_printf(&m, "--b\r\nContent-Type: text/plain; name=\""
			       "a-rather-long-attachment-file-name-%04d.txt\""
			       "\r\n\r\nx\r\n", i);
	eng_buf_puts(&m, "--b--\r\n");
	assert_int_equal(append(c, s, "INBOX", m.data, m.len, 0, NULL, &uid),
			 0);
	assert_int_equal(uid, 3);
	fetch_body(c, s, uid, RPC_WANT_MIME, NULL, 0, UINT64_MAX, &resp);
	assert_int_equal(rpc_get_bytes(&resp.view, RPC_T_MIME, &p, &plen), 0);
	assert_true(plen > 256 * 1024 && plen < 768 * 1024);
	assert_int_equal(fetch_meta_want(c, s, 2, 3, 6, &resp), 0);
	assert_int_equal(meta_groups(&resp.view, g, 128), 2);
	assert_int_equal(rpc_count(&g[0], RPC_T_MIME), 1);
	assert_int_equal(rpc_count(&g[1], RPC_T_MIME), 0);
	same_as_fetch_body(c, s, &g[1], RPC_T_HEADER);

	/* 70 headers of 250 KiB: groups split over parts (each under the
	 * frame limit, or the client would have failed), and past 16 MiB
	 * of blobs the groups come without them. The answer is queued at
	 * once, above max_output_bytes (4 MiB): the connection stops reading
	 * until it drains and must then read again (the FETCH_BODY after). */
	for (int i = 0; i < 70; i++) {
		msg = padded_header_message(i, 250 * 1024);
		assert_int_equal(append(c, s, "INBOX", msg, strlen(msg), 0,
					NULL, &uid), 0);
		free(msg);
	}
	assert_int_equal(fetch_meta_want(c, s, 4, 73, RPC_WANT_HEADER, &resp),
			 0);
	n = meta_groups(&resp.view, g, 128);
	assert_int_equal(n, 70);
	assert_true(resp.parts >= 20);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(get_u(&g[i], RPC_T_UID), i + 4);
		if (rpc_get_bytes(&g[i], RPC_T_HEADER, &p, &plen) != 0)
			continue;
		assert_int_equal(with, i);       /* a prefix has them */
		assert_true(plen > 250 * 1024 && plen < 251 * 1024);
		hdr_len = plen;
		with++;
	}
	assert_int_equal(with, (16u * 1024 * 1024) / hdr_len);
	same_as_fetch_body(c, s, &g[0], RPC_T_HEADER);

	eng_buf_free(&m);
	free(g);
	rpc_sync_resp_clear(&resp);
	rpc_sync_free(&c);
}

static int take_some(void *ctx, const void *data, size_t len)
{
	size_t *got = ctx;

	(void)data;
	*got += len;
	return *got >= 300000 ? ENG_ELIMIT : 0;
}

struct upload_src {
	const char *p;
	size_t len, off;
};

static long give_some(void *ctx, void *buf, size_t len)
{
	struct upload_src *u = ctx;

	if (u->off >= 1000000)
		return ENG_ELIMIT;
	if (len > u->len - u->off)
		len = u->len - u->off;
	memcpy(buf, u->p + u->off, len);
	u->off += len;
	return (long)len;
}

/* A download abandoned midway ends in ECANCELLED, and the connection and
 * the alias go on. */
static void test_fetch_body_cancel(void **state)
{
	struct fx *f = *state;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	rpc_sync_call_opts opts = { 0 };
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT;
	rpc_sync *c = connect_client(f);
	size_t len, text_off, got = 0;
	const char *text;
	char *msg = big_message(&len, &text_off, &text);
	uint32_t uid;
	int err;

	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	assert_int_equal(append(c, s, "INBOX", msg, len, 0, NULL, &uid), 0);
	begin(&b, s, "INBOX");
	rpc_put_u64(&b, RPC_T_UID, uid);
	rpc_put_u64(&b, RPC_T_WANT, 1);
	opts.body_write = take_some;
	opts.body_write_ctx = &got;
	err = rpc_sync_call_ex(c, RPC_OP_FETCH_BODY, b.data, b.len, &opts,
			       &resp);
	assert_int_equal(err, ENG_ELIMIT);
	assert_true(got >= 300000 && got < len);
	fetch_body(c, s, uid, 1, NULL, 0, 100, &resp);
	assert_int_equal(resp.body.len, 100);
	assert_memory_equal(resp.body.data, msg, 100);
	/* An upload abandoned midway stores nothing. */
	{
		struct upload_src src = { msg, len, 0 };

		begin(&b, s, "INBOX");
		rpc_put_u64(&b, RPC_T_SIZE, len);
		memset(&opts, 0, sizeof(opts));
		opts.has_body = true;
		opts.body_read = give_some;
		opts.body_read_ctx = &src;
		err = rpc_sync_call_ex(c, RPC_OP_APPEND, b.data, b.len, &opts,
				       &resp);
		assert_true(err == ENG_ELIMIT || err == RPC_ECANCELLED);
		begin(&b, s, "INBOX");
		assert_int_equal(call(c, RPC_OP_FETCH_META, &b, &resp), 0);
		assert_int_equal(rpc_count(&resp.view, RPC_T_MESSAGE), 1);
	}
	free(msg);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/*
 * FETCH_BODY requests pipelined for one alias share work items (body
 * batches, srv_ops_message.c): each is still answered on its own, in the
 * order sent, byte for byte, a missing UID among them with its own ERROR;
 * and fewer work items ran than requests were sent.
 */
static void test_fetch_body_batch(void **state)
{
	enum { N = 14, MISSING = 6 };
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT, got[N];
	char *msgs[N];
	size_t lens[N];
	uint32_t uids[N], ids[N];
	srv_alias_stats before, after;
	size_t next_first = 0, done = 0;

	memset(got, 0, sizeof(got));
	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	for (int i = 0; i < N; i++) {
		/* 60 bytes to 200 KB: all within the first window. */
		size_t fill = (size_t)60 << (i % 12);
		eng_buf m = ENG_BUF_INIT;

		eng_buf_printf(&m, "Subject: batch %d\r\n\r\n", i);
		for (size_t k = 0; k < fill; k++)
			eng_buf_putc(&m, (char)('a' + (k * 7 + (size_t)i) % 26));
		msgs[i] = eng_buf_steal(&m, &lens[i]);
		if (i == MISSING) {
			uids[i] = 999999;
			continue;
		}
		assert_int_equal(append(c, s, "INBOX", msgs[i], lens[i], 0, NULL,
					&uids[i]), 0);
	}
	srv_aliases_stats(f->s.aliases, &before);
	for (int i = 0; i < N; i++) {
		begin(&b, s, "INBOX");
		rpc_put_u64(&b, RPC_T_UID, uids[i]);
		rpc_put_u64(&b, RPC_T_WANT, RPC_WANT_BODY);
		ids[i] = rpc_sync_next_id(c);
		assert_int_equal(rpc_sync_send(c, RPC_K_REQUEST, 0,
					       RPC_OP_FETCH_BODY, ids[i], b.data,
					       b.len), 0);
	}
	while (done < N) {
		rpc_frame fr;
		int i = -1;

		assert_int_equal(rpc_sync_recv(c, 10000, &fr), 0);
		for (int k = 0; k < N; k++)
			if (ids[k] == fr.request_id)
				i = k;
		assert_true(i >= 0);
		if (fr.kind == RPC_K_RESPONSE || fr.kind == RPC_K_ERROR) {
			/* Answers begin in the order the requests were sent. */
			assert_int_equal(i, (int)next_first);
			next_first++;
		}
		if (fr.kind == RPC_K_ERROR) {
			assert_int_equal(i, MISSING);
			assert_int_equal(rpc_sync_error_code(&fr), ENG_ENOTFOUND);
			done++;
		} else if (fr.kind == RPC_K_DATA) {
			eng_buf_append(&got[i], fr.payload, fr.payload_len);
			if (fr.flags & RPC_F_END)
				done++;
		} else {
			assert_int_equal(fr.kind, RPC_K_RESPONSE);
			assert_true(fr.flags & RPC_F_BODY);
		}
	}
	srv_aliases_stats(f->s.aliases, &after);
	for (int i = 0; i < N; i++) {
		if (i != MISSING) {
			assert_int_equal(got[i].len, lens[i]);
			assert_memory_equal(got[i].data, msgs[i], lens[i]);
		}
		eng_buf_free(&got[i]);
		free(msgs[i]);
	}
	/* One work item per request would be N; batches take several. */
	assert_true(after.work_done - before.work_done < N);
	/* The connection goes on as usual afterwards. */
	{
		rpc_sync_resp resp = RPC_SYNC_RESP_INIT;

		fetch_body(c, s, uids[0], RPC_WANT_BODY, NULL, 0, UINT64_MAX,
			   &resp);
		assert_int_equal(resp.body.len, lens[0]);
		rpc_sync_resp_clear(&resp);
	}
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

/* The records of a FETCH_BODIES stream, checked against the UIDs asked:
 * each present one's bytes into got[i] (gone[i] set for a GONE head). */
static void split_bodies(const eng_buf *stream, const uint32_t *uids,
			 size_t n, eng_buf *got, bool *gone)
{
	rpc_bodies_reader rd;
	size_t off = 0, rec = 0;

	rpc_bodies_reader_init(&rd);
	while (off < stream->len) {
		rpc_bodies_ev ev;
		size_t used;

		assert_true(rd.records < n || rd.in_body);
		assert_int_equal(rpc_bodies_step(&rd, (const uint8_t *)stream->data + off,
						 stream->len - off, 0,
						 uids[rd.records < n ? rd.records : 0],
						 &used, &ev), 0);
		off += used;
		if (ev.kind == RPC_BODIES_HEAD) {
			rec = rd.records - 1;
			gone[rec] = ev.head.gone;
		} else if (ev.kind == RPC_BODIES_DATA) {
			eng_buf_append(&got[rec], ev.data, ev.len);
		}
	}
	assert_int_equal(rd.records, n);
	assert_true(rpc_bodies_at_boundary(&rd));
}

/*
 * FETCH_BODIES: one request, one body stream of a record per UID in the
 * order asked: small bodies, a 3 MB one (many windows), an expunged UID
 * and one that never was (GONE heads), a repeated UID; byte for byte, in
 * fewer work items than messages. And its field checks.
 */
static void test_fetch_bodies(void **state)
{
	enum { N = 9, BIG = 4, EXPUNGED = 2 };
	struct fx *f = *state;
	rpc_sync *c = connect_client(f);
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t s[SRV_SESSION_BYTES];
	eng_buf b = ENG_BUF_INIT, got[N + 2];
	bool gone[N + 2];
	char *msgs[N];
	size_t lens[N], text_off;
	uint32_t uids[N + 2], zero[2] = { 5, 0 };
	srv_alias_stats before, after;
	const char *text;

	memset(got, 0, sizeof(got));
	assert_int_equal(unlock(c, "alice@example.org", password, s), 0);
	for (int i = 0; i < N; i++) {
		eng_buf m = ENG_BUF_INIT;

		if (i == BIG) {
			msgs[i] = big_message(&lens[i], &text_off, &text);
		} else {
			eng_buf_printf(&m, "Subject: bodies %d\r\n\r\n", i);
			for (size_t k = 0; k < (size_t)100 << i; k++)
				eng_buf_putc(&m, (char)('a' + (k * 5 + (size_t)i) % 26));
			msgs[i] = eng_buf_steal(&m, &lens[i]);
		}
		assert_int_equal(append(c, s, "INBOX", msgs[i], lens[i], 0, NULL,
					&uids[i]), 0);
	}
	begin(&b, s, "INBOX");
	put_uidset(&b, RPC_T_UIDSET, uids[EXPUNGED], uids[EXPUNGED]);
	rpc_put_u64(&b, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&b, RPC_T_FLAGS, 8);
	assert_int_equal(call(c, RPC_OP_STORE, &b, &resp), 0);
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_EXPUNGE, &b, &resp), 0);
	uids[N] = 999999;            /* never was */
	uids[N + 1] = uids[1];       /* asked twice */

	srv_aliases_stats(f->s.aliases, &before);
	begin(&b, s, "INBOX");
	rpc_put_uids(&b, RPC_T_UIDS, uids, N + 2);
	assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp), 0);
	srv_aliases_stats(f->s.aliases, &after);
	assert_int_equal(get_u(&resp.view, RPC_T_MESSAGES), N + 2);
	split_bodies(&resp.body, uids, N + 2, got, gone);
	for (int i = 0; i < N + 2; i++) {
		int src = i == N + 1 ? 1 : i;

		assert_int_equal(gone[i], i == EXPUNGED || i == N);
		if (gone[i]) {
			assert_int_equal(got[i].len, 0);
		} else {
			assert_int_equal(got[i].len, lens[src]);
			assert_memory_equal(got[i].data, msgs[src], lens[src]);
		}
		eng_buf_free(&got[i]);
	}
	/* 3 MB in 256 KiB pieces is 12 or 13 work items; the ten others
	 * share the first pieces. */
	assert_true(after.work_done - before.work_done <
		    3u * 1024 * 1024 / RPC_MAX_CHUNK_BYTES + 3);

	/* Field checks: no UIDS, an empty or too long list, a UID 0. */
	begin(&b, s, "INBOX");
	assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp), RPC_EMISSING);
	begin(&b, s, "INBOX");
	rpc_put_uids(&b, RPC_T_UIDS, uids, 0);
	assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp), ENG_EINVAL);
	begin(&b, s, "INBOX");
	rpc_put_uids(&b, RPC_T_UIDS, zero, 2);
	assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp), ENG_EINVAL);
	{
		uint32_t *many = calloc(RPC_BODIES_MAX_UIDS + 1, sizeof(*many));

		for (size_t i = 0; i <= RPC_BODIES_MAX_UIDS; i++)
			many[i] = (uint32_t)i + 1;
		begin(&b, s, "INBOX");
		rpc_put_uids(&b, RPC_T_UIDS, many, RPC_BODIES_MAX_UIDS + 1);
		assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp),
				 ENG_EINVAL);
		free(many);
	}
	begin(&b, s, "Nowhere");
	rpc_put_uids(&b, RPC_T_UIDS, uids, 1);
	assert_int_equal(call(c, RPC_OP_FETCH_BODIES, &b, &resp), ENG_ENOTFOUND);

	for (int i = 0; i < N; i++)
		free(msgs[i]);
	rpc_sync_resp_clear(&resp);
	eng_buf_free(&b);
	rpc_sync_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_unlock_lock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mailboxes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_append_fetch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fetch_body_batch, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_fetch_bodies, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_messages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_query_bounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_appends, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_unlock_throttle, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_fetch_meta_want, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_mailbox_view, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_mailbox_view_patch, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_mailbox_view_lock,
						setup_closing, teardown),
		cmocka_unit_test_setup_teardown(test_mailbox_view_budget,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_fetch_meta_parts, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_fetch_body_cancel, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, 0, NULL);
}
