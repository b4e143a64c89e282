/*
 * ALIAS_ADD, ALIAS_LIST and ALIAS_REMOVE (docs/rpc.md): an alias's
 * directory row, keyring and files. Threads and passwords: srv_ops_dir.h.
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

srv_handler_fn srv_op_alias_add;
srv_handler_fn srv_op_alias_list;
srv_handler_fn srv_op_alias_remove;

/* Removes every file in path, then path itself; a missing path is fine. */
static int remove_tree_flat(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int err = 0;

	if (d == NULL)
		return errno == ENOENT ? 0 : ENG_EIO;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (unlinkat(dirfd(d), e->d_name, 0) != 0 && errno != ENOENT) {
			eng_log(ENG_LOG_WARN, "cannot remove %s/%s: %s", path,
				e->d_name, strerror(errno));
			err = ENG_EIO;
		}
	}
	closedir(d);
	if (rmdir(path) != 0 && errno != ENOENT)
		err = ENG_EIO;
	return err;
}

/* ---- ALIAS_ADD ---- */

struct add_op {
	srv_req *req;
	srv *srv;
	char *address;
	char **forwards;
	size_t n_forwards;
	unsigned kind;
	uint64_t quota;
	uint8_t *password;       /* secret: given or generated */
	size_t password_len;
	bool generated;
	/* Results. */
	char id[DIR_ID_HEX_LEN + 1];
	uint8_t *mk;             /* secret: for the database */
	int err;
};

static void add_op_free(struct add_op *op)
{
	free(op->address);
	for (size_t i = 0; i < op->n_forwards; i++)
		free(op->forwards[i]);
	free(op->forwards);
	eng_secret_free(&op->password);
	eng_secret_free(&op->mk);
	free(op);
}

static int add_work(void *ctx)
{
	struct add_op *op = ctx;
	dir *d = op->srv->dir;
	char norm[DIR_ADDRESS_MAX + 1];
	dir_alias_spec spec;
	dir_alias existing;
	eng_keyring *kr = NULL;
	uint8_t *blob = NULL;
	size_t blob_len = 0, at;
	int err;

	/* The cheap refusals first, before an Argon2id run. */
	if ((err = dir_normalize_address(op->address, true, norm, &at)) != 0)
		return err;
	if ((err = dir_domain_exists(d, norm + at + 1)) < 0)
		return err;
	if (err == 0)
		return ENG_ENOTFOUND;
	err = dir_alias_get(d, norm, &existing);
	dir_alias_clear(&existing);
	if (err == 0)
		return ENG_EEXIST;
	if (err != ENG_ENOTFOUND)
		return err;
	memset(&spec, 0, sizeof(spec));
	spec.kind = op->kind;
	spec.forwards = (const char *const *)op->forwards;
	spec.n_forwards = op->n_forwards;
	spec.quota_bytes = op->quota;
	if (op->kind & DIR_MAILBOX) {
		if (op->password == NULL) {
			srv_dir_gen_password(&op->password, &op->password_len);
			op->generated = true;
		}
		if ((err = eng_keyring_create((const char *)op->password,
					      op->password_len, op->srv->kdf,
					      &kr, &op->mk)) != 0)
			return err;
		err = eng_keyring_encode(kr, &blob, &blob_len);
		eng_keyring_free(&kr);
		if (err != 0)
			return err;
		spec.keyring = blob;
		spec.keyring_len = blob_len;
	}
	err = dir_alias_add(d, norm, &spec, op->id);
	free(blob);
	return err;
}

static void add_answer(struct add_op *op)
{
	srv_req *req = op->req;

	if (op->generated)
		rpc_put_bytes(&req->reply, RPC_T_PASSWORD, op->password,
			      op->password_len);
	srv_reply(req);
	add_op_free(op);
}

/* After a failed database creation: the alias goes again. */
static int add_rollback_work(void *ctx)
{
	struct add_op *op = ctx;

	return dir_alias_remove(op->srv->dir, op->id);
}

static void add_rollback_done(void *ctx, int result)
{
	struct add_op *op = ctx;

	if (result != 0)
		eng_log(ENG_LOG_ERROR, "alias %s: rollback after a failed "
			"database creation failed: %s", op->id,
			eng_strerror(result));
	srv_fail(op->req, op->err);
	add_op_free(op);
}

static void add_db_done(void *ctx, int result)
{
	struct add_op *op = ctx;

	if (result == 0) {
		eng_log(ENG_LOG_INFO, "alias %s added (mailbox)", op->id);
		add_answer(op);
		return;
	}
	eng_log(ENG_LOG_ERROR, "alias %s: creating its database failed: %s",
		op->id, eng_strerror(result));
	op->err = result;
	if (srv_blocking(op->srv, add_rollback_work, add_rollback_done,
			 op) != 0)
		add_rollback_done(op, ENG_EBUSY);
}

static void add_done(void *ctx, int result)
{
	struct add_op *op = ctx;
	int err;

	if (result != 0) {
		srv_fail(op->req, result);
		add_op_free(op);
		return;
	}
	if ((op->kind & DIR_MAILBOX) == 0) {
		eng_log(ENG_LOG_INFO, "alias %s added (forward)", op->id);
		add_answer(op);
		return;
	}
	/* srv_alias_create_db copies MK; ours is wiped now. */
	err = srv_alias_create_db(op->srv->aliases, op->id, op->mk,
				  add_db_done, op);
	eng_secret_free(&op->mk);
	if (err != 0)
		add_db_done(op, err);
}

void srv_op_alias_add(srv_req *req)
{
	struct add_op *op = eng_calloc(1, sizeof(*op));
	const rpc_field *f;
	rpc_iter it;
	int err;

	op->req = req;
	op->srv = req->srv;
	if ((err = srv_dir_arg_str(req, RPC_T_ALIAS, true, &op->address)) != 0)
		goto fail;
	op->n_forwards = rpc_count(&req->args, RPC_T_FORWARD);
	if (op->n_forwards > DIR_MAX_FORWARDS) {
		op->n_forwards = 0;
		err = ENG_ELIMIT;
		goto fail;
	}
	op->forwards = eng_calloc(op->n_forwards + 1, sizeof(char *));
	rpc_iter_init(&it, &req->args);
	for (size_t i = 0; (f = rpc_iter_next(&it, RPC_T_FORWARD)) != NULL;
	     i++) {
		if (f->type != RPC_W_BYTES || memchr(f->data, 0, f->u) != NULL) {
			err = RPC_EFIELDTYPE;
			goto fail;
		}
		op->forwards[i] = eng_strndup((const char *)f->data, f->u);
	}
	err = rpc_get_u32(&req->args, RPC_T_KIND, &op->kind);
	if (err == RPC_EMISSING)
		op->kind = DIR_MAILBOX | (op->n_forwards > 0 ? DIR_FORWARD : 0);
	else if (err != 0)
		goto fail;
	if (op->kind == 0 || (op->kind & ~(DIR_MAILBOX | DIR_FORWARD)) != 0) {
		err = ENG_EINVAL;
		goto fail;
	}
	err = rpc_get_u64(&req->args, RPC_T_QUOTA_LIMIT, &op->quota);
	if (err != 0 && err != RPC_EMISSING)
		goto fail;
	if ((err = srv_dir_arg_password(req, RPC_T_PASSWORD, false, &op->password,
					&op->password_len)) != 0)
		goto fail;
	if (op->password != NULL &&
	    ((op->kind & DIR_MAILBOX) == 0 ||
	     op->password_len < MIN_PASSWORD_LEN)) {
		err = ENG_EINVAL;
		goto fail;
	}
	if ((err = srv_blocking(req->srv, add_work, add_done, op)) != 0)
		goto fail;
	return;
fail:
	add_op_free(op);
	srv_fail(req, err);
}

/* ---- ALIAS_LIST ---- */

struct list_op {
	srv_req *req;
	char *domain;            /* NULL: every domain */
	dir_alias *aliases;
	size_t n;
};

static int list_work(void *ctx)
{
	struct list_op *op = ctx;

	return dir_alias_list(op->req->srv->dir, op->domain, &op->aliases,
			      &op->n);
}

static void list_done(void *ctx, int result)
{
	struct list_op *op = ctx;
	srv_req *req = op->req;
	unsigned fields = 0;

	if (result != 0) {
		srv_fail(req, result);
	} else {
		for (size_t i = 0; i < op->n; i++) {
			const dir_alias *a = &op->aliases[i];
			size_t mark = rpc_group_begin(&req->reply,
						      RPC_T_ALIAS_INFO);

			rpc_put_str(&req->reply, RPC_T_ALIAS, a->address);
			rpc_put_u64(&req->reply, RPC_T_KIND, a->kind);
			for (size_t j = 0; j < a->n_forwards; j++)
				rpc_put_str(&req->reply, RPC_T_FORWARD,
					    a->forwards[j]);
			rpc_put_u64(&req->reply, RPC_T_QUOTA_LIMIT,
				    a->quota_bytes);
			rpc_put_s64(&req->reply, RPC_T_CREATED, a->created);
			rpc_group_end(&req->reply, mark);
			fields += 5 + (unsigned)a->n_forwards;
			srv_dir_part_maybe_flush(req, &fields);
		}
		srv_reply(req);
	}
	dir_alias_array_free(&op->aliases, op->n);
	free(op->domain);
	free(op);
}

void srv_op_alias_list(srv_req *req)
{
	struct list_op *op = eng_calloc(1, sizeof(*op));
	int err;

	op->req = req;
	if ((err = srv_dir_arg_str(req, RPC_T_DOMAIN, false, &op->domain)) == 0)
		err = srv_blocking(req->srv, list_work, list_done, op);
	if (err != 0) {
		free(op->domain);
		free(op);
		srv_fail(req, err);
	}
}

/* ---- ALIAS_REMOVE ---- */

struct remove_op {
	srv_req *req;
	srv *srv;
	char *address;
	char id[DIR_ID_HEX_LEN + 1];
};

static int remove_work(void *ctx)
{
	struct remove_op *op = ctx;
	dir_alias a;
	int err;

	if ((err = dir_alias_get(op->srv->dir, op->address, &a)) != 0)
		return err;
	memcpy(op->id, a.id, sizeof(op->id));
	dir_alias_clear(&a);
	/* From here on no unlock or delivery finds the alias. */
	return dir_alias_remove(op->srv->dir, op->id);
}

/*
 * On the alias's queue, so that no other work of it runs meanwhile: close
 * the database (wiping MK), then delete the database, its WAL, the spool
 * and the idempotency records. The keyring is gone with the directory
 * entry, so even a file that could not be deleted can no longer be read.
 */
static int remove_files_work(srv_alias *a, void *ctx)
{
	struct remove_op *op = ctx;
	const char *data_dir = op->srv->cfg->data_dir;
	static const char *const suffixes[] = { "", "-wal", "-shm", "-journal" };
	char *path;
	int err = 0;

	srv_alias_close_now(a);
	for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
		if (asprintf(&path, "%s/mailboxes/%s.db%s", data_dir, op->id,
			     suffixes[i]) < 0)
			eng_oom(0);
		if (unlink(path) != 0 && errno != ENOENT) {
			eng_log(ENG_LOG_WARN, "cannot remove %s: %s", path,
				strerror(errno));
			err = ENG_EIO;
		}
		free(path);
	}
	if (asprintf(&path, "%s/spool/%s", data_dir, op->id) < 0)
		eng_oom(0);
	if (remove_tree_flat(path) != 0)
		err = ENG_EIO;
	free(path);
	path = srv_dir_key_path(data_dir, op->id, NULL, 0);
	if (remove_tree_flat(path) != 0)
		err = ENG_EIO;
	free(path);
	return err;
}

static void remove_files_done(void *ctx, int result)
{
	struct remove_op *op = ctx;

	if (result != 0)
		eng_log(ENG_LOG_ERROR, "alias %s: removed from the directory, "
			"but some of its files remain (see above)", op->id);
	else
		eng_log(ENG_LOG_INFO, "alias %s removed with its data", op->id);
	if (result != 0)
		srv_fail(op->req, result);
	else
		srv_reply(op->req);
	free(op->address);
	free(op);
}

static void remove_done(void *ctx, int result)
{
	struct remove_op *op = ctx;
	int err;

	if (result != 0) {
		srv_fail(op->req, result);
		free(op->address);
		free(op);
		return;
	}
	/* Its sessions end now; work they queued earlier runs first. */
	(void)srv_sessions_end_alias(op->srv->aliases, op->id);
	err = srv_alias_submit(op->srv->aliases, op->id, remove_files_work,
			       remove_files_done, op);
	if (err != 0)
		remove_files_done(op, err);
}

void srv_op_alias_remove(srv_req *req)
{
	struct remove_op *op = eng_calloc(1, sizeof(*op));
	int err;

	op->req = req;
	op->srv = req->srv;
	if ((err = srv_dir_arg_str(req, RPC_T_ALIAS, true, &op->address)) == 0)
		err = srv_blocking(req->srv, remove_work, remove_done, op);
	if (err != 0) {
		free(op->address);
		free(op);
		srv_fail(req, err);
	}
}
