/*
 * UNLOCK and LOCK (docs/rpc.md, Sessions).
 *
 * UNLOCK runs in four steps, each on the thread it belongs to:
 *   1. loop: check ALIAS and PASSWORD, copy the password into secret
 *      memory;
 *   2. pool (srv_blocking): look the address up in the directory and take
 *      the keyring of a mailbox alias;
 *   3. loop: wait for the login throttle's delay (a uv timer);
 *   4. srv_unlock_login(): Argon2id under the cap, then the database and
 *      spool on the alias's queue; the answer goes back on the loop. A
 *      login identical to one in progress waits for its result; when too
 *      many wait for Argon2id already, ENG_EBUSY at once (temporary).
 * An unknown address, a forward-only alias, an address that is not one
 * at all, or a keyring that does not decode all go through step 4 with no
 * keyring: the same Argon2id work and the same EAUTH as a wrong password,
 * so that neither the answer nor its timing says whether an alias exists.
 * The password is wiped as soon as srv_unlock() has taken its copy.
 */
#include "srv.h"
#include "eng_error.h"

#include <stdlib.h>
#include <string.h>

srv_handler_fn srv_op_unlock, srv_op_lock;

/* Longer than any address (DIR_ADDRESS_MAX) is simply not found; longer
 * than this is a bad argument. */
#define UNLOCK_ALIAS_MAX 1024

struct unlock_op {
	srv_req *req;
	srv *srv;
	char *address;
	/* For the throttle: the normalised address, else the bytes given. */
	char *throttle_key;
	char *client_addr;
	uint8_t *password;           /* secret memory */
	size_t password_len;
	/* From the directory (step 2); keyring NULL: no such mailbox. */
	char alias_id[DIR_ID_HEX_LEN + 1];
	uint8_t *keyring;
	size_t keyring_len;
	uint64_t quota_bytes;        /* the directory's limit, 0 = none */
	uv_timer_t timer;
};

static void unlock_op_free(struct unlock_op *u)
{
	eng_secret_free(&u->password);
	free(u->address);
	free(u->throttle_key);
	free(u->client_addr);
	free(u->keyring);
	free(u);
}

static void unlock_finish(struct unlock_op *u, int err)
{
	if (err != 0)
		srv_fail(u->req, err);
	else
		srv_reply(u->req);
	unlock_op_free(u);
}

/*
 * The directory holds an alias's quota (ALIAS_ADD's QUOTA_LIMIT); the
 * engine enforces the limit stored in the alias's own database. The two
 * are made equal at every unlock, on the alias's queue, before the answer,
 * so the session's first APPEND already meets the directory's limit.
 */
static int quota_sync_work(srv_alias *a, void *ctx)
{
	struct unlock_op *u = ctx;
	eng_store *st = srv_alias_store(a);
	uint64_t used, limit, messages;
	int err;

	if (st == NULL)
		return ENG_ENOTFOUND;
	if ((err = eng_quota_get(st, &used, &limit, &messages)) != 0)
		return err;
	return limit == u->quota_bytes ? 0 : eng_quota_set(st, u->quota_bytes);
}

static void quota_sync_done(void *ctx, int result)
{
	struct unlock_op *u = ctx;

	if (result != 0)
		eng_log(ENG_LOG_WARN, "unlock: alias %s: quota not updated: %s",
			u->alias_id, eng_strerror(result));
	unlock_finish(u, 0);
}

static void unlock_done(void *ctx, int result,
			const uint8_t session[SRV_SESSION_BYTES])
{
	struct unlock_op *u = ctx;

	if (result == 0) {
		srv_throttle_succeeded(u->srv, u->client_addr, u->throttle_key);
		rpc_put_bytes(&u->req->reply, RPC_T_SESSION, session,
			      SRV_SESSION_BYTES);
		/* The channel of the alias's events (docs/rpc.md, Events):
		 * frontends subscribe to it for IDLE. */
		rpc_put_str(&u->req->reply, RPC_T_ALIAS_ID, u->alias_id);
		if (srv_alias_submit(u->srv->aliases, u->alias_id,
				     quota_sync_work, quota_sync_done, u) == 0)
			return;
	} else if (result == ENG_EAUTH) {
		srv_throttle_failed(u->srv, u->client_addr, u->throttle_key);
	}
	unlock_finish(u, result);
}

static void unlock_start(struct unlock_op *u)
{
	int err;

	err = srv_unlock_login(u->srv->aliases, u->throttle_key, u->alias_id,
			       u->keyring, u->keyring_len,
			       (const char *)u->password, u->password_len,
			       unlock_done, u);
	if (err != 0 && err != ENG_EBUSY && u->keyring != NULL) {
		/* A keyring in the directory that does not decode: log it,
		 * and answer as for any failed login. */
		eng_log(ENG_LOG_ERROR, "unlock: alias %s: keyring unusable: %s",
			u->alias_id, eng_strerror(err));
		free(u->keyring);
		u->keyring = NULL;
		u->keyring_len = 0;
		err = srv_unlock_login(u->srv->aliases, u->throttle_key, "",
				       NULL, 0, (const char *)u->password,
				       u->password_len, unlock_done, u);
	}
	eng_secret_free(&u->password);
	if (err != 0)
		unlock_finish(u, err);
}

static void timer_closed(uv_handle_t *h)
{
	unlock_start(h->data);
}

static void timer_fired(uv_timer_t *t)
{
	uv_close((uv_handle_t *)t, timer_closed);
}

static void throttle_delay_cb(void *ctx, uint64_t delay_ms)
{
	struct unlock_op *u = ctx;

	if (delay_ms == 0) {
		unlock_start(u);
		return;
	}
	uv_timer_init(u->srv->loop, &u->timer);
	u->timer.data = u;
	uv_timer_start(&u->timer, timer_fired, delay_ms, 0);
}

static int lookup_work(void *ctx)
{
	struct unlock_op *u = ctx;
	char norm[DIR_ADDRESS_MAX + 1];
	dir_alias a;
	int err;

	if (dir_normalize_address(u->address, false, norm, NULL) == 0)
		u->throttle_key = eng_strdup(norm);
	else
		u->throttle_key = eng_strdup(u->address);
	err = dir_alias_get(u->srv->dir, u->address, &a);
	if (err == ENG_ENOTFOUND || err == ENG_EINVAL)
		return 0;
	if (err != 0)
		return err;
	if ((a.kind & DIR_MAILBOX) && a.keyring != NULL) {
		memcpy(u->alias_id, a.id, sizeof(u->alias_id));
		u->keyring = eng_malloc(a.keyring_len);
		memcpy(u->keyring, a.keyring, a.keyring_len);
		u->keyring_len = a.keyring_len;
		u->quota_bytes = a.quota_bytes;
	}
	dir_alias_clear(&a);
	return 0;
}

static void lookup_done(void *ctx, int result)
{
	struct unlock_op *u = ctx;

	if (result != 0) {
		/* The directory is unreachable: temporary, and the same for
		 * every address. */
		eng_log(ENG_LOG_ERROR, "unlock: directory look-up failed: %s",
			eng_strerror(result));
		unlock_finish(u, result);
		return;
	}
	srv_throttle_delay(u->srv, u->client_addr, u->throttle_key,
			   throttle_delay_cb, u);
}

void srv_op_unlock(srv_req *req)
{
	const uint8_t *alias, *password;
	size_t alias_len, password_len;
	struct unlock_op *u;
	int err;

	if ((err = rpc_get_bytes(&req->args, RPC_T_ALIAS, &alias,
				 &alias_len)) != 0 ||
	    (err = rpc_get_bytes(&req->args, RPC_T_PASSWORD, &password,
				 &password_len)) != 0) {
		srv_fail(req, err);
		return;
	}
	if (memchr(alias, '\0', alias_len) != NULL) {
		srv_fail(req, RPC_EFIELDTYPE);
		return;
	}
	if (alias_len == 0 || alias_len > UNLOCK_ALIAS_MAX ||
	    password_len == 0 || password_len > ENG_PASSWORD_MAX) {
		srv_fail(req, ENG_EINVAL);
		return;
	}
	u = eng_calloc(1, sizeof(*u));
	u->req = req;
	u->srv = req->srv;
	u->address = eng_strndup((const char *)alias, alias_len);
	u->client_addr = srv_req_client_addr(req);
	u->password = eng_secret_new(password_len);
	memcpy(u->password, password, password_len);
	u->password_len = password_len;
	if ((err = srv_blocking(req->srv, lookup_work, lookup_done, u)) != 0)
		unlock_finish(u, err);
}

void srv_op_lock(srv_req *req)
{
	if (srv_session_end(req->srv->aliases, req->session) != 0) {
		srv_fail(req, RPC_ENOSESSION);
		return;
	}
	srv_reply(req);
}
