/*
 * DELIVER (docs/rpc.md), the opcode the MX and LMTP frontends deliver with.
 * Threads: as every directory opcode (srv_ops_dir.h).
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
 * into INBOX (spool_applied, whose row lives ENG_IDEMPOTENCY_TTL_SECONDS
 * and while the entry is in the spool: engine/spool_drain.c): exactly
 * once.
 * Records are data_dir/delivered/<alias id>/<BLAKE2b-256 of the key,
 * hex>, and are pruned after ENG_IDEMPOTENCY_TTL_SECONDS (store.h: 14
 * days, against about 6 minutes of MX resends) by the record writes whose
 * hash starts with a zero byte (1 in 256: the directory is read that
 * often).
 *
 * Forwarding (kind forward, or both): after the mailbox copy (if any),
 * one entry for all the alias's targets goes into the sealed outbound
 * queue (srv_outbound.h: SRS-rewritten sender, tmp + fsync + rename +
 * directory fsync), then the idempotency record: the answer (QUEUED n,
 * n = the targets) follows both commits. A keyed forward's entry is named
 * by the alias id and the key, so a retry replaces it: queued once.
 * Without a queue (s->outbound NULL: unit fixtures) a forward-only
 * recipient is RPC_EUNAVAILABLE and a both alias gets QUEUED 0.
 */
#include "srv.h"
#include "srv_ops_dir.h"
#include "eng_error.h"
#include "eng_fs.h"
#include "keys.h"
#include "spool.h"
#include "store.h"
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

srv_handler_fn srv_op_deliver;

#define IDEMPOTENCY_KEY_MAX 128
/* An envelope sender: RFC 5321's path is at most 256 octets. */
#define SENDER_MAX 512
#define BODY_CHUNK (64u * 1024)

static int mkdir_0700(const char *path)
{
	if (mkdir(path, 0700) != 0 && errno != EEXIST)
		return errno == ENOSPC ? ENG_ENOSPC : ENG_EIO;
	return 0;
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
char *srv_dir_key_path(const char *data_dir, const char *alias_id,
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

/* Removes the records older than the TTL by their mtime; never an error. */
static void key_prune(const char *dir_path)
{
	DIR *d;
	struct dirent *e;
	struct stat st;
	time_t cutoff = time(NULL) - ENG_IDEMPOTENCY_TTL_SECONDS;

	if ((d = opendir(dir_path)) == NULL)
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
	dir_path = srv_dir_key_path(data_dir, alias_id, NULL, 0);
	path = srv_dir_key_path(data_dir, alias_id, key, key_len);
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
	else if (strncmp(strrchr(path, '/') + 1, "00", 2) == 0)
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
		path = srv_dir_key_path(data_dir, r.id, op->key, op->key_len);
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
	if ((err = srv_dir_arg_str(req, RPC_T_ADDRESS, true, &op->address)) != 0)
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
	if ((err = srv_dir_arg_str(req, RPC_T_SENDER, false, &op->sender)) != 0)
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
