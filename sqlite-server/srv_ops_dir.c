/*
 * The directory, delivery and administration opcodes (docs/rpc.md):
 * DIR_LOOKUP, DELIVER, DOMAIN_ADD/LIST/REMOVE, ALIAS_ADD/LIST/REMOVE,
 * ALIAS_PASSWD, APP_PASSWORD_ADD/REVOKE.
 *
 * Threads. Handlers parse their fields on the loop and copy what the pool
 * needs; every directory call, Argon2id run and fsync happens on the pool
 * (srv_blocking), or on the alias's own queue when it needs the alias's
 * open state (MK for APP_PASSWORD_ADD, the store for the drain and for
 * ALIAS_REMOVE's close). The answer is always sent from a done callback on
 * the loop.
 *
 * This file: the helpers the directory opcodes share (srv_ops_dir.h maps
 * the other files), DIR_LOOKUP and DOMAIN_ADD/LIST/REMOVE.
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

srv_handler_fn srv_op_dir_lookup;
srv_handler_fn srv_op_domain_add;
srv_handler_fn srv_op_domain_list;
srv_handler_fn srv_op_domain_remove;

/* A RESPONSE part is sent once it passes either bound (limits: 1 MiB
 * frames, 4096 fields). */
#define PART_MAX_BYTES (512u * 1024)
#define PART_MAX_FIELDS 2048u

/* ---- helpers ---- */

/* A required or optional string field; answers the request on error. */
int srv_dir_arg_str(srv_req *req, uint32_t tag, bool required, char **s_r)
{
	int err = rpc_get_str(&req->args, tag, s_r);

	if (err == RPC_EMISSING && !required) {
		*s_r = NULL;
		return 0;
	}
	return err;
}

/* A password field copied into secret memory (1..ENG_PASSWORD_MAX). */
int srv_dir_arg_password(srv_req *req, uint32_t tag, bool required,
			 uint8_t **pw_r, size_t *len_r)
{
	const uint8_t *p;
	size_t len;
	int err = rpc_get_bytes(&req->args, tag, &p, &len);

	*pw_r = NULL;
	*len_r = 0;
	if (err == RPC_EMISSING && !required)
		return 0;
	if (err != 0)
		return err;
	if (len == 0 || len > ENG_PASSWORD_MAX)
		return ENG_EINVAL;
	*pw_r = eng_secret_new(len);
	memcpy(*pw_r, p, len);
	*len_r = len;
	return 0;
}

/* 24 letters and digits into secret memory; pw_r needs GEN_PASSWORD_LEN. */
void srv_dir_gen_password(uint8_t **pw_r, size_t *len_r)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	uint8_t *pw = eng_secret_new(GEN_PASSWORD_LEN);

	for (size_t i = 0; i < GEN_PASSWORD_LEN; i++)
		pw[i] = (uint8_t)alphabet[randombytes_uniform(sizeof(alphabet) - 1)];
	*pw_r = pw;
	*len_r = GEN_PASSWORD_LEN;
}

/* Sends the current part when it is large; *fields counts its fields. */
void srv_dir_part_maybe_flush(srv_req *req, unsigned *fields)
{
	if (req->reply.len >= PART_MAX_BYTES || *fields >= PART_MAX_FIELDS) {
		srv_reply_more(req);
		*fields = 0;
	}
}

/* ---- DIR_LOOKUP ---- */

struct lookup_op {
	srv_req *req;
	char *address;
	dir_resolved r;
};

static int lookup_work(void *ctx)
{
	struct lookup_op *op = ctx;

	return dir_resolve(op->req->srv->dir, op->address, &op->r);
}

static void lookup_done(void *ctx, int result)
{
	struct lookup_op *op = ctx;
	srv_req *req = op->req;
	eng_buf *b = &req->reply;

	if (result == 0) {
		rpc_put_bool(b, RPC_T_EXISTS, true);
		rpc_put_u64(b, RPC_T_KIND, op->r.kind);
		rpc_put_str(b, RPC_T_ALIAS, op->r.address);
		for (size_t i = 0; i < op->r.n_forwards; i++)
			rpc_put_str(b, RPC_T_FORWARD, op->r.forwards[i]);
		rpc_put_bool(b, RPC_T_CATCH_ALL,
			     op->r.match == DIR_MATCH_CATCHALL);
		if (op->r.detail != NULL)
			rpc_put_str(b, RPC_T_DETAIL, op->r.detail);
		srv_reply(req);
	} else if (result == ENG_ENOTFOUND) {
		rpc_put_bool(b, RPC_T_EXISTS, false);
		srv_reply(req);
	} else {
		srv_fail(req, result);
	}
	dir_resolved_clear(&op->r);
	free(op->address);
	free(op);
}

void srv_op_dir_lookup(srv_req *req)
{
	struct lookup_op *op = eng_calloc(1, sizeof(*op));
	int err;

	op->req = req;
	if ((err = srv_dir_arg_str(req, RPC_T_ADDRESS, true, &op->address)) == 0)
		err = srv_blocking(req->srv, lookup_work, lookup_done, op);
	if (err != 0) {
		free(op->address);
		free(op);
		srv_fail(req, err);
	}
}

/* ---- DOMAIN_ADD, DOMAIN_LIST, DOMAIN_REMOVE ---- */

struct domain_op {
	srv_req *req;
	int opcode;
	char *domain;
	char **list;
	size_t n;
};

static int domain_work(void *ctx)
{
	struct domain_op *op = ctx;
	dir *d = op->req->srv->dir;

	switch (op->opcode) {
	case RPC_OP_DOMAIN_ADD:
		return dir_domain_add(d, op->domain);
	case RPC_OP_DOMAIN_REMOVE:
		/* Never with force: removing aliases is ALIAS_REMOVE's job,
		 * which also deletes their data. */
		return dir_domain_remove(d, op->domain, false);
	default:
		return dir_domain_list(d, &op->list, &op->n);
	}
}

static void domain_done(void *ctx, int result)
{
	struct domain_op *op = ctx;
	srv_req *req = op->req;
	unsigned fields = 0;

	if (result != 0) {
		srv_fail(req, result);
	} else {
		for (size_t i = 0; i < op->n; i++) {
			rpc_put_str(&req->reply, RPC_T_DOMAIN, op->list[i]);
			fields++;
			srv_dir_part_maybe_flush(req, &fields);
		}
		srv_reply(req);
	}
	dir_strv_free(&op->list, op->n);
	free(op->domain);
	free(op);
}

static void domain_op_start(srv_req *req, int opcode)
{
	struct domain_op *op = eng_calloc(1, sizeof(*op));
	int err = 0;

	op->req = req;
	op->opcode = opcode;
	if (opcode != RPC_OP_DOMAIN_LIST)
		err = srv_dir_arg_str(req, RPC_T_DOMAIN, true, &op->domain);
	if (err == 0)
		err = srv_blocking(req->srv, domain_work, domain_done, op);
	if (err != 0) {
		free(op->domain);
		free(op);
		srv_fail(req, err);
	}
}

void srv_op_domain_add(srv_req *req)
{
	domain_op_start(req, RPC_OP_DOMAIN_ADD);
}

void srv_op_domain_list(srv_req *req)
{
	domain_op_start(req, RPC_OP_DOMAIN_LIST);
}

void srv_op_domain_remove(srv_req *req)
{
	domain_op_start(req, RPC_OP_DOMAIN_REMOVE);
}
