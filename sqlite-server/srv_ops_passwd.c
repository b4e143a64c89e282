/*
 * Password changes: ALIAS_PASSWD, APP_PASSWORD_ADD and APP_PASSWORD_REVOKE
 * (docs/rpc.md). Each is a change of the alias's keyring, written back by
 * compare-and-swap on the directory (keyring_update). Threads and
 * passwords: srv_ops_dir.h.
 */
#include "srv.h"
#include "srv_ops_dir.h"
#include "eng_error.h"
#include "eng_fs.h"
#include "keys.h"
#include "spool.h"
#include "srv_outbound.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

srv_handler_fn srv_op_alias_passwd;
srv_handler_fn srv_op_app_password_add;
srv_handler_fn srv_op_app_password_revoke;

/* Compare-and-swap retries of a keyring change before giving up. */
#define KEYRING_CAS_TRIES 8
/* The slot eng_keyring_create() makes for the main password. */
#define MAIN_SLOT_ID 1u

static bool label_valid(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > ENG_SLOT_LABEL_MAX)
		return false;
	for (; *s != '\0'; s++) {
		if (*s < 0x20 || *s > 0x7e)
			return false;
	}
	return true;
}

/*
 * An Argon2id run with the configured cost on a throw-away keyring, so
 * that a password check for an unknown alias takes as long as one for a
 * known alias with a wrong password (and answers the same EAUTH).
 */
static void burn_kdf(eng_kdf_params kdf)
{
	uint8_t pw[32];
	eng_keyring *kr = NULL;
	uint8_t *mk = NULL;

	randombytes_buf(pw, sizeof(pw));
	(void)eng_keyring_create((const char *)pw, sizeof(pw), kdf, &kr, &mk);
	sodium_memzero(pw, sizeof(pw));
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
}

/* ---- keyring changes (compare-and-swap on the directory) ---- */

/*
 * Reads the alias's keyring (by address or id), lets change() alter it,
 * and stores it with dir_alias_set_keyring; on ENG_EMODIFIED (someone
 * else changed it meanwhile) it starts again from a fresh read.
 */
typedef int keyring_change_fn(eng_keyring *kr, void *ctx, int attempt);

static int keyring_update(srv *s, const char *address, const char *id,
			  keyring_change_fn *change, void *ctx)
{
	int err = ENG_EMODIFIED;

	for (int attempt = 0; attempt < KEYRING_CAS_TRIES &&
	     err == ENG_EMODIFIED; attempt++) {
		dir_alias a;
		eng_keyring *kr = NULL;
		uint8_t *blob = NULL;
		size_t blob_len;

		err = address != NULL ? dir_alias_get(s->dir, address, &a) :
			dir_alias_get_id(s->dir, id, &a);
		if (err != 0)
			return err;
		if (a.keyring == NULL) {
			dir_alias_clear(&a);
			return ENG_ENOTFOUND;
		}
		err = eng_keyring_decode(a.keyring, a.keyring_len, &kr);
		if (err == 0) {
			eng_keyring_set_params(kr, s->kdf);
			err = change(kr, ctx, attempt);
		}
		if (err == 0)
			err = eng_keyring_encode(kr, &blob, &blob_len);
		if (err == 0)
			err = dir_alias_set_keyring(s->dir, a.id,
						    a.keyring_version, blob,
						    blob_len, NULL);
		free(blob);
		eng_keyring_free(&kr);
		dir_alias_clear(&a);
	}
	return err;
}

/* ---- ALIAS_PASSWD ---- */

struct passwd_op {
	srv_req *req;
	srv *srv;
	char *address;
	char *client_addr;
	uint8_t *password;       /* secret: current */
	size_t password_len;
	uint8_t *new_password;   /* secret: given or generated */
	size_t new_password_len;
	bool generated;
	uint8_t *mk;             /* secret: opened by the current password */
	uint32_t slot;
	uv_timer_t timer;        /* the throttle's delay */
};

static void passwd_op_free(struct passwd_op *op)
{
	free(op->address);
	free(op->client_addr);
	eng_secret_free(&op->password);
	eng_secret_free(&op->new_password);
	eng_secret_free(&op->mk);
	free(op);
}

static void passwd_timer_closed(uv_handle_t *h)
{
	passwd_op_free(h->data);
}

static int passwd_change(eng_keyring *kr, void *ctx, int attempt)
{
	struct passwd_op *op = ctx;
	int err;

	if (attempt == 0) {
		/* MK does not change, so a retry needs no second Argon2id. */
		err = eng_keyring_unlock(kr, (const char *)op->password,
					 op->password_len, &op->mk, &op->slot);
		if (err != 0)
			return err;
	}
	err = eng_keyring_change_password(kr, op->mk, op->slot,
					  (const char *)op->new_password,
					  op->new_password_len);
	/* The slot was revoked meanwhile: the password opens nothing now. */
	return err == ENG_ENOTFOUND ? ENG_EAUTH : err;
}

static int passwd_work(void *ctx)
{
	struct passwd_op *op = ctx;
	int err;

	err = keyring_update(op->srv, op->address, NULL, passwd_change, op);
	if (err == ENG_ENOTFOUND || err == ENG_EINVAL) {
		/* Unknown alias (or one without a mailbox key): the same
		 * Argon2id cost and the same answer as a wrong password. */
		burn_kdf(op->srv->kdf);
		err = ENG_EAUTH;
	}
	return err;
}

static void passwd_done(void *ctx, int result)
{
	struct passwd_op *op = ctx;
	srv_req *req = op->req;

	if (result == ENG_EAUTH)
		srv_throttle_failed(op->srv, op->client_addr, op->address);
	else if (result == 0)
		srv_throttle_succeeded(op->srv, op->client_addr, op->address);
	if (result != 0) {
		srv_fail(req, result);
	} else {
		eng_log(ENG_LOG_INFO, "password of slot %u changed",
			(unsigned)op->slot);
		if (op->generated)
			rpc_put_bytes(&req->reply, RPC_T_PASSWORD,
				      op->new_password, op->new_password_len);
		srv_reply(req);
	}
	uv_close((uv_handle_t *)&op->timer, passwd_timer_closed);
}

static void passwd_start(uv_timer_t *t)
{
	struct passwd_op *op = t->data;
	int err;

	if ((err = srv_blocking(op->srv, passwd_work, passwd_done, op)) != 0) {
		srv_fail(op->req, err);
		uv_close((uv_handle_t *)&op->timer, passwd_timer_closed);
	}
}

static void passwd_delay(void *ctx, uint64_t delay_ms)
{
	struct passwd_op *op = ctx;

	uv_timer_start(&op->timer, passwd_start, delay_ms, 0);
}

void srv_op_alias_passwd(srv_req *req)
{
	struct passwd_op *op = eng_calloc(1, sizeof(*op));
	int err;

	op->req = req;
	op->srv = req->srv;
	if ((err = srv_dir_arg_str(req, RPC_T_ALIAS, true, &op->address)) != 0 ||
	    (err = srv_dir_arg_password(req, RPC_T_PASSWORD, true, &op->password,
					&op->password_len)) != 0 ||
	    (err = srv_dir_arg_password(req, RPC_T_NEW_PASSWORD, false,
					&op->new_password,
					&op->new_password_len)) != 0) {
		passwd_op_free(op);
		srv_fail(req, err);
		return;
	}
	if (op->new_password == NULL) {
		srv_dir_gen_password(&op->new_password, &op->new_password_len);
		op->generated = true;
	} else if (op->new_password_len < MIN_PASSWORD_LEN) {
		passwd_op_free(op);
		srv_fail(req, ENG_EINVAL);
		return;
	}
	op->client_addr = srv_req_client_addr(req);
	uv_timer_init(req->srv->loop, &op->timer);
	op->timer.data = op;
	/* Throttled like UNLOCK: the same guesses, the same penalty. */
	srv_throttle_delay(req->srv, op->client_addr, op->address,
			   passwd_delay, op);
}

/* ---- APP_PASSWORD_ADD ---- */

struct app_op {
	srv_req *req;
	srv *srv;
	char alias_id[SRV_ALIAS_ID_MAX + 1];
	char *label;
	const uint8_t *mk;       /* the alias's, valid during its work only */
	uint8_t *password;       /* secret: generated */
	size_t password_len;
	uint32_t slot;
	int64_t created;
};

static void app_op_free(struct app_op *op)
{
	free(op->label);
	eng_secret_free(&op->password);
	free(op);
}

static int app_add_change(eng_keyring *kr, void *ctx, int attempt)
{
	struct app_op *op = ctx;
	eng_slot_info *slots = NULL;
	size_t n = 0;
	int err;

	(void)attempt;
	err = eng_keyring_add_slot(kr, op->mk, (const char *)op->password,
				   op->password_len, op->label, &op->slot);
	if (err == 0 && (err = eng_keyring_slots(kr, &slots, &n)) == 0) {
		for (size_t i = 0; i < n; i++) {
			if (slots[i].id == op->slot)
				op->created = slots[i].created;
		}
		free(slots);
	}
	return err;
}

/* On the alias's queue: MK is there while a session holds it open. */
static int app_add_work(srv_alias *a, void *ctx)
{
	struct app_op *op = ctx;
	int err;

	if ((op->mk = srv_alias_mk(a)) == NULL)
		return RPC_ENOSESSION;
	err = keyring_update(op->srv, NULL, op->alias_id, app_add_change, op);
	op->mk = NULL;
	return err;
}

static void app_add_done(void *ctx, int result)
{
	struct app_op *op = ctx;
	srv_req *req = op->req;

	if (result != 0) {
		srv_fail(req, result);
	} else {
		eng_log(ENG_LOG_INFO, "alias %s: app password slot %u added",
			op->alias_id, (unsigned)op->slot);
		rpc_put_bytes(&req->reply, RPC_T_PASSWORD, op->password,
			      op->password_len);
		rpc_put_u64(&req->reply, RPC_T_SLOT, op->slot);
		rpc_put_s64(&req->reply, RPC_T_CREATED, op->created);
		srv_reply(req);
	}
	app_op_free(op);
}

void srv_op_app_password_add(srv_req *req)
{
	struct app_op *op = eng_calloc(1, sizeof(*op));
	int err;

	op->req = req;
	op->srv = req->srv;
	memcpy(op->alias_id, req->alias_id, sizeof(op->alias_id));
	if ((err = srv_dir_arg_str(req, RPC_T_LABEL, true, &op->label)) == 0 &&
	    !label_valid(op->label))
		err = ENG_EINVAL;
	if (err == 0) {
		srv_dir_gen_password(&op->password, &op->password_len);
		err = srv_alias_submit(req->srv->aliases, op->alias_id,
				       app_add_work, app_add_done, op);
	}
	if (err != 0) {
		app_op_free(op);
		srv_fail(req, err);
	}
}

/* ---- APP_PASSWORD_REVOKE ---- */

static int app_revoke_change(eng_keyring *kr, void *ctx, int attempt)
{
	struct app_op *op = ctx;

	(void)attempt;
	return eng_keyring_remove_slot(kr, op->slot);
}

static int app_revoke_work(void *ctx)
{
	struct app_op *op = ctx;

	return keyring_update(op->srv, NULL, op->alias_id, app_revoke_change,
			      op);
}

static void app_revoke_done(void *ctx, int result)
{
	struct app_op *op = ctx;

	if (result != 0) {
		srv_fail(op->req, result);
	} else {
		eng_log(ENG_LOG_INFO, "alias %s: key slot %u revoked",
			op->alias_id, (unsigned)op->slot);
		srv_reply(op->req);
	}
	app_op_free(op);
}

void srv_op_app_password_revoke(srv_req *req)
{
	struct app_op *op = eng_calloc(1, sizeof(*op));
	int err;

	op->req = req;
	op->srv = req->srv;
	memcpy(op->alias_id, req->alias_id, sizeof(op->alias_id));
	err = rpc_get_u32(&req->args, RPC_T_SLOT, &op->slot);
	/* The main password is changed (ALIAS_PASSWD), never revoked here:
	 * an app password must not be able to lock its owner out. */
	if (err == 0 && op->slot == MAIN_SLOT_ID)
		err = ENG_EPERM;
	if (err == 0)
		err = srv_blocking(req->srv, app_revoke_work, app_revoke_done,
				   op);
	if (err != 0) {
		app_op_free(op);
		srv_fail(req, err);
	}
}
