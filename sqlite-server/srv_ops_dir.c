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
 * Delivery (DELIVER) to a mailbox alias:
 *
 *   resolve ─▶ [idempotency record exists? ─yes─▶ answer, store nothing]
 *           ─▶ seal the body into data_dir/spool/<id>/ (eng_spool_commit:
 *              fsync file and directory) ─▶ write the idempotency record
 *              (fsync) ─▶ answer DELIVERED ─▶ drain on the alias's queue
 *              (moves it into INBOX if the alias is open; else it waits
 *              for the next unlock) ─▶ publish EXISTS events
 *
 * The answer follows the spool commit, never the drain: sealed in the
 * spool is durable. A retry with the same IDEMPOTENCY_KEY finds the
 * record and stores nothing. The record is written after the commit; a
 * crash between the two leaves no record, but a keyed delivery's spool
 * entry is named by a hash of the alias id and the key (srv_key_id),
 * so the retry writes the same entry again: it replaces the entry if it
 * is still in the spool, and the drain skips it if it was already moved
 * into INBOX (spool_applied): exactly once. Records are
 * data_dir/delivered/<alias id>/<BLAKE2b-256 of the key, hex>, and are
 * pruned after DELIVER_KEY_TTL_SECONDS (longer than any MX retries).
 *
 * Forwarding (kind forward, or both): after the mailbox copy (if any),
 * one entry for all the alias's targets goes into the sealed outbound
 * queue (srv_outbound.h: SRS-rewritten sender, tmp + fsync + rename +
 * directory fsync), then the idempotency record: the answer (QUEUED n,
 * n = the targets) follows both commits. A keyed forward's entry is named
 * by the alias id and the key, so a retry replaces it: queued once.
 * Without a queue (s->outbound NULL: unit fixtures) a forward-only
 * recipient is RPC_EUNAVAILABLE and a both alias gets QUEUED 0.
 *
 * Passwords. Generated passwords and the passwords of requests live in
 * secret memory (eng_secret_new) and are wiped when the request is done;
 * they never reach the log.
 */
#include "srv.h"
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
srv_handler_fn srv_op_deliver;
srv_handler_fn srv_op_domain_add;
srv_handler_fn srv_op_domain_list;
srv_handler_fn srv_op_domain_remove;
srv_handler_fn srv_op_alias_add;
srv_handler_fn srv_op_alias_list;
srv_handler_fn srv_op_alias_remove;
srv_handler_fn srv_op_alias_passwd;
srv_handler_fn srv_op_app_password_add;
srv_handler_fn srv_op_app_password_revoke;

/* Generated passwords: 24 characters of 62, about 143 bits. */
#define GEN_PASSWORD_LEN 24
/* Passwords chosen by a person, for ALIAS_ADD and ALIAS_PASSWD. */
#define MIN_PASSWORD_LEN 8
#define IDEMPOTENCY_KEY_MAX 128
/* An envelope sender: RFC 5321's path is at most 256 octets. */
#define SENDER_MAX 512
#define DELIVER_KEY_TTL_SECONDS (14 * 24 * 3600)
/* Compare-and-swap retries of a keyring change before giving up. */
#define KEYRING_CAS_TRIES 8
/* A RESPONSE part is sent once it passes either bound (limits: 1 MiB
 * frames, 4096 fields). */
#define PART_MAX_BYTES (512u * 1024)
#define PART_MAX_FIELDS 2048u
#define BODY_CHUNK (64u * 1024)
/* The slot eng_keyring_create() makes for the main password. */
#define MAIN_SLOT_ID 1u

/* ---- helpers ---- */

/* A required or optional string field; answers the request on error. */
static int arg_str(srv_req *req, uint32_t tag, bool required, char **s_r)
{
	int err = rpc_get_str(&req->args, tag, s_r);

	if (err == RPC_EMISSING && !required) {
		*s_r = NULL;
		return 0;
	}
	return err;
}

/* A password field copied into secret memory (1..ENG_PASSWORD_MAX). */
static int arg_password(srv_req *req, uint32_t tag, bool required,
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
static void gen_password(uint8_t **pw_r, size_t *len_r)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	uint8_t *pw = eng_secret_new(GEN_PASSWORD_LEN);

	for (size_t i = 0; i < GEN_PASSWORD_LEN; i++)
		pw[i] = (uint8_t)alphabet[randombytes_uniform(sizeof(alphabet) - 1)];
	*pw_r = pw;
	*len_r = GEN_PASSWORD_LEN;
}

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

/* Sends the current part when it is large; *fields counts its fields. */
static void part_maybe_flush(srv_req *req, unsigned *fields)
{
	if (req->reply.len >= PART_MAX_BYTES || *fields >= PART_MAX_FIELDS) {
		srv_reply_more(req);
		*fields = 0;
	}
}

static int mkdir_0700(const char *path)
{
	if (mkdir(path, 0700) != 0 && errno != EEXIST)
		return errno == ENOSPC ? ENG_ENOSPC : ENG_EIO;
	return 0;
}

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
	if ((err = arg_str(req, RPC_T_ADDRESS, true, &op->address)) == 0)
		err = srv_blocking(req->srv, lookup_work, lookup_done, op);
	if (err != 0) {
		free(op->address);
		free(op);
		srv_fail(req, err);
	}
}

/* ---- DELIVER ---- */

/*
 * Keyed deliveries to one alias are serialised by a striped lock, so that
 * a retry that arrives while the first attempt is still writing waits for
 * its record instead of storing a second copy.
 */
#define KEY_STRIPES 32
static pthread_mutex_t key_locks[KEY_STRIPES];
static pthread_once_t key_locks_once = PTHREAD_ONCE_INIT;

static void key_locks_init(void)
{
	for (size_t i = 0; i < KEY_STRIPES; i++)
		pthread_mutex_init(&key_locks[i], NULL);
}

struct deliver_op {
	srv_req *req;
	srv *srv;
	char *address;
	uint8_t *key;            /* idempotency key, or NULL */
	size_t key_len;
	int64_t internal_date;
	char *sender;            /* SENDER, "" = the null sender */
	/* Results. */
	char alias_id[DIR_ID_HEX_LEN + 1];
	char *alias_address;
	bool duplicate;
	bool mailbox;            /* a mailbox copy was (or had been) stored */
	uint64_t queued;         /* forward copies queued */
};

/* data_dir/delivered/<alias id>[/<key hash>] */
static char *key_path(const char *data_dir, const char *alias_id,
		      const uint8_t *key, size_t key_len)
{
	uint8_t h[32];
	char hex[2 * sizeof(h) + 1];
	char *path;
	int n;

	if (key == NULL) {
		n = asprintf(&path, "%s/delivered/%s", data_dir, alias_id);
	} else {
		crypto_generichash(h, sizeof(h), key, key_len, NULL, 0);
		sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
		n = asprintf(&path, "%s/delivered/%s/%s", data_dir, alias_id,
			     hex);
	}
	if (n < 0)
		eng_oom(0);
	return path;
}

/* Removes records older than the TTL; once in a while, never an error. */
static void key_prune(const char *dir_path)
{
	DIR *d;
	struct dirent *e;
	struct stat st;
	time_t cutoff = time(NULL) - DELIVER_KEY_TTL_SECONDS;

	if (randombytes_uniform(256) != 0 || (d = opendir(dir_path)) == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    S_ISREG(st.st_mode) && st.st_mtime < cutoff)
			(void)unlinkat(dirfd(d), e->d_name, 0);
	}
	closedir(d);
}

/* Writes the record of a delivered key durably (file and directory). */
static int key_record(const char *data_dir, const char *alias_id,
		      const uint8_t *key, size_t key_len,
		      const char spool_id[ENG_SPOOL_ID_LEN + 1])
{
	char *top, *dir_path, *path;
	int fd, err;

	if (asprintf(&top, "%s/delivered", data_dir) < 0)
		eng_oom(0);
	dir_path = key_path(data_dir, alias_id, NULL, 0);
	path = key_path(data_dir, alias_id, key, key_len);
	if ((err = mkdir_0700(top)) != 0 || (err = mkdir_0700(dir_path)) != 0)
		goto out;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		err = errno == ENOSPC ? ENG_ENOSPC : ENG_EIO;
		goto out;
	}
	if (write(fd, spool_id, ENG_SPOOL_ID_LEN) != ENG_SPOOL_ID_LEN ||
	    fsync(fd) != 0)
		err = errno == ENOSPC ? ENG_ENOSPC : ENG_EIO;
	close(fd);
	if (err == 0)
		err = eng_fsync_dir(dir_path);
	if (err != 0)
		(void)unlink(path);
	else
		key_prune(dir_path);
out:
	free(top);
	free(dir_path);
	free(path);
	return err;
}

/* Seals the request body into a spool entry and commits it. */
static int spool_body(struct deliver_op *op, const dir_resolved *r,
		      char spool_id_r[ENG_SPOOL_ID_LEN + 1])
{
	eng_spool_writer *w = NULL;
	char *spool_dir;
	char id[ENG_SPOOL_ID_LEN + 1];
	int err;

	if (asprintf(&spool_dir, "%s/spool/%s", op->srv->cfg->data_dir,
		     r->id) < 0)
		eng_oom(0);
	if (op->key != NULL)
		srv_key_id("sealmail-deliver-spool-id", r->id, op->key,
			   op->key_len, id);
	if ((err = eng_spool_writer_open_id(spool_dir, r->public_key,
					    op->internal_date, 0,
					    op->key != NULL ? id : NULL,
					    &w)) != 0 ||
	    (err = srv_body_copy(op->req->body, w)) != 0)
		goto out;
	err = eng_spool_commit(&w, spool_id_r);
out:
	eng_spool_abort(&w);
	free(spool_dir);
	return err;
}

/* One outbound entry for the alias's forward targets. */
static int queue_forward(struct deliver_op *op, const dir_resolved *r)
{
	const char *at = strrchr(r->address, '@');
	srv_outbound_req q = {
		.sender = op->sender,
		.recipient = op->address,
		.alias_id = r->id,
		.alias_domain = at != NULL ? at + 1 : "",
		.targets = (const char *const *)r->forwards,
		.n_targets = r->n_forwards,
		.internal_date = op->internal_date,
		.key = op->key,
		.key_len = op->key_len,
	};

	return srv_outbound_queue(op->srv->outbound, &q, op->req->body);
}

static int deliver_work(void *ctx)
{
	struct deliver_op *op = ctx;
	const char *data_dir = op->srv->cfg->data_dir;
	dir_resolved r;
	char spool_id[ENG_SPOOL_ID_LEN + 1];
	pthread_mutex_t *lock = NULL;
	char *path = NULL;
	bool forward;
	int err;

	memset(spool_id, '0', ENG_SPOOL_ID_LEN);
	spool_id[ENG_SPOOL_ID_LEN] = '\0';
	if ((err = dir_resolve(op->srv->dir, op->address, &r)) != 0)
		return err;
	forward = (r.kind & DIR_FORWARD) != 0 && r.n_forwards > 0 &&
		  op->srv->outbound != NULL;
	op->mailbox = (r.kind & DIR_MAILBOX) != 0;
	if (!op->mailbox && !forward) {
		eng_log(ENG_LOG_WARN, "deliver to alias %s: no outbound queue; "
			"answered as a temporary failure", r.id);
		err = RPC_EUNAVAILABLE;
		goto out;
	}
	if (op->mailbox && !r.has_public_key) {
		eng_log(ENG_LOG_ERROR, "deliver to alias %s: mailbox without "
			"a public key", r.id);
		err = ENG_ECORRUPT;
		goto out;
	}
	memcpy(op->alias_id, r.id, sizeof(op->alias_id));
	op->alias_address = eng_strdup(r.address);
	if (op->key != NULL) {
		pthread_once(&key_locks_once, key_locks_init);
		path = key_path(data_dir, r.id, op->key, op->key_len);
		/* The path ends in hex digits of the key's hash. */
		lock = &key_locks[strtoul(path + strlen(path) - 2, NULL, 16) %
				  KEY_STRIPES];
		pthread_mutex_lock(lock);
		if (access(path, F_OK) == 0) {
			op->duplicate = true;
			op->queued = forward ? r.n_forwards : 0;
			goto out;
		}
	}
	if (op->mailbox && (err = spool_body(op, &r, spool_id)) != 0)
		goto out;
	if (forward) {
		if ((err = queue_forward(op, &r)) != 0) {
			eng_log(ENG_LOG_WARN, "deliver to alias %s: forward not "
				"queued: %s", r.id, eng_strerror(err));
			goto out;
		}
		op->queued = r.n_forwards;
	}
	if (op->key != NULL &&
	    (err = key_record(data_dir, r.id, op->key, op->key_len,
			      spool_id)) != 0) {
		/* The message is durable but unrecorded: a retry rewrites the
		 * same spool entry (stored once). Answer the delivery, which
		 * did happen. */
		eng_log(ENG_LOG_WARN, "deliver to alias %s: idempotency record "
			"not written: %s", r.id, eng_strerror(err));
		err = 0;
	}
out:
	if (lock != NULL)
		pthread_mutex_unlock(lock);
	free(path);
	dir_resolved_clear(&r);
	return err;
}

/* The drain after a delivery: its events, collected on the pool. */
struct drain_op {
	srv *srv;
	char alias_id[DIR_ID_HEX_LEN + 1];
	struct drain_ev {
		char *mailbox;
		uint32_t uid;
		uint64_t modseq;
	} *ev;
	size_t n, cap;
};

static void drain_cb(void *ctx, const char *mailbox, uint32_t uid,
		     uint64_t modseq)
{
	struct drain_op *d = ctx;

	if (d->n == d->cap) {
		d->cap = d->cap == 0 ? 4 : 2 * d->cap;
		d->ev = eng_realloc(d->ev, d->cap * sizeof(*d->ev));
	}
	d->ev[d->n].mailbox = eng_strdup(mailbox);
	d->ev[d->n].uid = uid;
	d->ev[d->n].modseq = modseq;
	d->n++;
}

static int drain_work(srv_alias *a, void *ctx)
{
	return srv_alias_drain(a, drain_cb, ctx, NULL);
}

static void drain_done(void *ctx, int result)
{
	struct drain_op *d = ctx;

	if (result != 0)
		eng_log(ENG_LOG_WARN, "alias %s: drain after delivery failed: "
			"%s (the mail stays sealed in the spool)", d->alias_id,
			eng_strerror(result));
	for (size_t i = 0; i < d->n; i++) {
		srv_event_publish(d->srv, d->alias_id, SRV_EV_EXISTS,
				  d->ev[i].mailbox, d->ev[i].uid,
				  d->ev[i].modseq);
		free(d->ev[i].mailbox);
	}
	free(d->ev);
	free(d);
}

static void deliver_op_free(struct deliver_op *op)
{
	free(op->address);
	free(op->key);
	free(op->alias_address);
	free(op->sender);
	free(op);
}

static void deliver_done(void *ctx, int result)
{
	struct deliver_op *op = ctx;
	srv_req *req = op->req;
	struct drain_op *d;
	int err;

	if (result != 0) {
		srv_fail(req, result);
		deliver_op_free(op);
		return;
	}
	if (op->mailbox)
		rpc_put_str(&req->reply, RPC_T_DELIVERED, op->alias_address);
	rpc_put_u64(&req->reply, RPC_T_QUEUED, op->queued);
	srv_reply(req);
	if (!op->duplicate && op->mailbox) {
		/* Into INBOX now if the alias is open; a locked alias keeps it
		 * sealed until its next unlock drains the spool. */
		d = eng_calloc(1, sizeof(*d));
		d->srv = op->srv;
		memcpy(d->alias_id, op->alias_id, sizeof(d->alias_id));
		if ((err = srv_alias_submit(op->srv->aliases, op->alias_id,
					    drain_work, drain_done, d)) != 0) {
			free(d);
			eng_log(ENG_LOG_INFO, "alias %s: drain not queued: %s",
				op->alias_id, eng_strerror(err));
		}
	}
	deliver_op_free(op);
}

void srv_op_deliver(srv_req *req)
{
	struct deliver_op *op = eng_calloc(1, sizeof(*op));
	const uint8_t *key;
	uint64_t size;
	int err;

	op->req = req;
	op->srv = req->srv;
	if ((err = arg_str(req, RPC_T_ADDRESS, true, &op->address)) != 0)
		goto fail;
	if ((err = rpc_get_u64(&req->args, RPC_T_SIZE, &size)) != 0)
		goto fail;
	err = rpc_get_s64(&req->args, RPC_T_INTERNAL_DATE, &op->internal_date);
	if (err == RPC_EMISSING)
		op->internal_date = 0;
	else if (err != 0)
		goto fail;
	if (op->internal_date <= 0)
		op->internal_date = (int64_t)time(NULL);
	/* SENDER: absent = the null sender; no control characters. */
	if ((err = arg_str(req, RPC_T_SENDER, false, &op->sender)) != 0)
		goto fail;
	if (op->sender == NULL)
		op->sender = eng_strdup("");
	for (const char *c = op->sender; *c != '\0'; c++) {
		if ((unsigned char)*c < 0x20 || *c == 0x7f) {
			err = ENG_EINVAL;
			goto fail;
		}
	}
	if (strlen(op->sender) > SENDER_MAX) {
		err = ENG_EINVAL;
		goto fail;
	}
	err = rpc_get_bytes(&req->args, RPC_T_IDEMPOTENCY_KEY, &key,
			    &op->key_len);
	if (err == 0) {
		if (op->key_len == 0 || op->key_len > IDEMPOTENCY_KEY_MAX) {
			err = ENG_EINVAL;
			goto fail;
		}
		op->key = eng_malloc(op->key_len);
		memcpy(op->key, key, op->key_len);
	} else if (err != RPC_EMISSING) {
		goto fail;
	}
	/* The body is required, and SIZE must say how long it is. */
	if (req->body == NULL || srv_body_size(req->body) != size) {
		err = ENG_EINVAL;
		goto fail;
	}
	if ((err = srv_blocking(req->srv, deliver_work, deliver_done, op)) != 0)
		goto fail;
	return;
fail:
	deliver_op_free(op);
	srv_fail(req, err);
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
			part_maybe_flush(req, &fields);
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
		err = arg_str(req, RPC_T_DOMAIN, true, &op->domain);
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
			gen_password(&op->password, &op->password_len);
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
	if ((err = arg_str(req, RPC_T_ALIAS, true, &op->address)) != 0)
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
	if ((err = arg_password(req, RPC_T_PASSWORD, false, &op->password,
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
			part_maybe_flush(req, &fields);
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
	if ((err = arg_str(req, RPC_T_DOMAIN, false, &op->domain)) == 0)
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
	path = key_path(data_dir, op->id, NULL, 0);
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
	if ((err = arg_str(req, RPC_T_ALIAS, true, &op->address)) == 0)
		err = srv_blocking(req->srv, remove_work, remove_done, op);
	if (err != 0) {
		free(op->address);
		free(op);
		srv_fail(req, err);
	}
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
	if ((err = arg_str(req, RPC_T_ALIAS, true, &op->address)) != 0 ||
	    (err = arg_password(req, RPC_T_PASSWORD, true, &op->password,
				&op->password_len)) != 0 ||
	    (err = arg_password(req, RPC_T_NEW_PASSWORD, false,
				&op->new_password,
				&op->new_password_len)) != 0) {
		passwd_op_free(op);
		srv_fail(req, err);
		return;
	}
	if (op->new_password == NULL) {
		gen_password(&op->new_password, &op->new_password_len);
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
	if ((err = arg_str(req, RPC_T_LABEL, true, &op->label)) == 0 &&
	    !label_valid(op->label))
		err = ENG_EINVAL;
	if (err == 0) {
		gen_password(&op->password, &op->password_len);
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
